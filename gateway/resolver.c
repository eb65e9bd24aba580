/* SPDX-License-Identifier: GPL-2.0-or-later */

/*
 * Asynchronous DNS on an sd-event loop, built on c-ares.
 *
 * c-ares tells us which sockets it wants watched (ARES_OPT_SOCK_STATE_CB);
 * each gets an sd-event io source, and one timer source follows
 * ares_timeout() and is re-armed after every call into c-ares. Events are
 * handed back with ares_process_fd().
 *
 * A lookup is a ResolverQuery that may need several c-ares calls (MX, then
 * the addresses of every exchanger; PTR, then the forward confirmation).
 * Each c-ares call holds a reference on its query (n_pending); c-ares calls
 * every callback exactly once, on completion or with ARES_EDESTRUCTION from
 * ares_destroy(), so a query is freed only when its last call has come back.
 * Results are delivered from a defer source, never from inside a c-ares
 * callback or from inside resolver_*(): c-ares answers /etc/hosts and
 * numeric names synchronously, and callers must not be re-entered.
 * Cancelling marks the query, switches the defer source off and drops the
 * userdata; late c-ares callbacks then only release their reference.
 *
 * timeout_usec is the timeout of one try; with RESOLVER_TRIES tries and
 * c-ares doubling the second, one question gives up after about three
 * times that. An MX lookup asks two rounds (MX, then addresses).
 *
 * This module does not log: errors are negative errno plus a short text for
 * the caller's log line. It does not connect anywhere itself. It caches
 * only the outcome of reverse lookups (see RESOLVER_REVERSE_CACHE_USEC);
 * everything else is left to the configured recursive resolver.
 */

#include <arpa/inet.h>
#include <ares.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>

/* The reverse cache does not grow when memory is short; the lookup result
 * is delivered all the same. */
#define HASH_NONFATAL_OOM 1
#define uthash_nonfatal_oom(e) ((e)->oom = true)
#include <uthash.h>

#include "config.h"
#include "resolver.h"
#include "util/macro.h"
#include "util/parse.h"

/* A client's reverse lookup (PTR, then the forward confirmation) is
 * remembered this long: a host sending mail reconnects again and again,
 * and each lookup is two DNS round trips (plus two reads of /etc/hosts for
 * names there) on every connection. Only found names are kept (verified or
 * not, with no step timed out or failed): c-ares reports a PTR question no
 * server answered as "not found", like a real NXDOMAIN, so "no PTR" is
 * never remembered. c-ares gives no TTL for PTR answers, so the time is
 * fixed and short: a changed PTR record is seen within a minute. */
#define RESOLVER_REVERSE_CACHE_USEC (60 * USEC_PER_SEC)
/* Entries per resolver (one resolver per thread); when full, the oldest
 * entry goes. */
#define RESOLVER_REVERSE_CACHE_MAX 4096

/* RFC 1035 2.3.4: names are at most 255 octets on the wire. */
#define RESOLVER_NAME_MAX 255
/* RFC 5321 5.1 asks clients to try at least two addresses and to give up
 * after a reasonable number; a hostile zone must not make us resolve or
 * connect to an unbounded list. These bound the work per delivery. */
#define RESOLVER_MX_HOSTS_MAX 10
#define RESOLVER_HOST_ADDRESSES_MAX 8
/* Attempts per server for each question: one retry covers a lost UDP
 * datagram; c-ares doubles the timeout for the second try. */
#define RESOLVER_TRIES 2
/* Per-try timeout when the caller passes 0: the resolv.conf(5) default. */
#define RESOLVER_TIMEOUT_DEFAULT_USEC (5 * USEC_PER_SEC)
/* Room for "MX lookup for <255-octet name> failed: <c-ares text>". */
#define RESOLVER_ERRTEXT_MAX 384
/* sd-event coalesces timers by default (250 ms); DNS timeouts are short. */
#define RESOLVER_TIMER_ACCURACY_USEC USEC_PER_MSEC
/* Configured servers: "ip" or "ip:port" / "[v6]:port" (RFC 1035 4.2). */
#define DNS_PORT 53
/* RFC 1035 3.2.2 and 3.2.4 (arpa/nameser.h would clash with util/macro.h). */
#define DNS_CLASS_IN 1
#define DNS_TYPE_MX 15

typedef struct ResolverSocket ResolverSocket;
struct ResolverSocket {
        ares_socket_t fd;
        sd_event_source *source;
        ResolverSocket *next;
};

struct Resolver {
        sd_event *event;
        ares_channel channel;
        bool channel_ok;
        sd_event_source *timer;
        ResolverSocket *sockets;
        ResolverQuery *queries;         /* all live queries, for resolver_free() */
        uint64_t rng;                   /* xorshift state for MX shuffling */
        struct ReverseEntry *reverse_cache;     /* by address, oldest first */
};

/* A remembered reverse lookup. The key is the normalized address (IPv4-
 * mapped IPv6 as IPv4), zero-padded. */
typedef struct ReverseKey {
        int family;
        uint8_t addr[16];
} ReverseKey;

typedef struct ReverseEntry {
        ReverseKey key;
        char *name;
        bool verified;
        uint64_t expires;               /* CLOCK_MONOTONIC */
        bool oom;                       /* set when the table could not grow */
        UT_hash_handle hh;
} ReverseEntry;

typedef enum QueryKind {
        QUERY_REVERSE,
        QUERY_TARGETS,
} QueryKind;

/* One exchanger (or route host) and the addresses found for it. */
typedef struct HostSlot {
        char *host;
        uint16_t port;
        uint16_t preference;
        uint32_t shuffle;               /* random key among equal preferences */
        ResolvedTarget *targets;
        size_t n_targets;
} HostSlot;

/* The argument of one c-ares call. */
typedef struct Pending {
        ResolverQuery *query;
        size_t slot;
} Pending;

struct ResolverQuery {
        Resolver *resolver;             /* NULL once detached by resolver_free() */
        ResolverQuery *prev, *next;
        QueryKind kind;

        unsigned n_pending;             /* c-ares calls not yet called back */
        bool cancelled;
        bool finished;                  /* result ready, defer source armed */
        bool dispatching;               /* inside the user callback */
        sd_event_source *defer;

        union {
                resolver_reverse_fn_t reverse;
                resolver_targets_fn_t targets;
        } cb;
        void *userdata;
        void (*destroy)(void *userdata);

        /* QUERY_REVERSE */
        struct sockaddr_storage client;
        ReverseKey key;
        char *name;
        bool verified;
        bool indefinite;                /* a step failed for a transient reason */
        bool cached;                    /* answered from the cache */

        /* QUERY_TARGETS */
        char *domain;                   /* MX lookups, for messages */
        uint16_t port;
        HostSlot *slots;
        size_t n_slots;
        bool temporary;                 /* a lookup failed for a transient reason */
        int error;
        char errtext[RESOLVER_ERRTEXT_MAX];
};

static void resolver_update_timer(Resolver *r);

void resolved_targets_free(ResolvedTarget *t, size_t n) {
        if (!t)
                return;
        for (size_t i = 0; i < n; i++)
                free(t[i].host);
        free(t);
}

/* ---- sd-event glue ---- */

static void resolver_process(Resolver *r, ares_socket_t rfd, ares_socket_t wfd) {
        ares_process_fd(r->channel, rfd, wfd);
        resolver_update_timer(r);
}

static int resolver_on_io(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Resolver *r = userdata;

        /* Errors and hangups are reported as readable so c-ares reads the
         * error and fails over to the next server. */
        resolver_process(r,
                         (revents & (EPOLLIN | EPOLLERR | EPOLLHUP)) ? fd : ARES_SOCKET_BAD,
                         (revents & EPOLLOUT) ? fd : ARES_SOCKET_BAD);
        return 0;
}

static int resolver_on_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        resolver_process(userdata, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
        return 0;
}

static void resolver_update_timer(Resolver *r) {
        struct timeval tv, *tvp;
        uint64_t now;

        if (!r->timer)
                return;

        tvp = ares_timeout(r->channel, NULL, &tv);
        if (!tvp) {
                (void) sd_event_source_set_enabled(r->timer, SD_EVENT_OFF);
                return;
        }
        if (sd_event_now(r->event, CLOCK_MONOTONIC, &now) < 0)
                return;
        (void) sd_event_source_set_time(r->timer,
                                        now + (uint64_t) tvp->tv_sec * USEC_PER_SEC + (uint64_t) tvp->tv_usec);
        (void) sd_event_source_set_enabled(r->timer, SD_EVENT_ONESHOT);
}

/* c-ares opens, closes and changes interest in its sockets through here.
 * Failures cannot be reported back; the query then times out. */
static void resolver_sock_state(void *data, ares_socket_t fd, int readable, int writable) {
        Resolver *r = data;
        ResolverSocket **p, *s;
        uint32_t events = (readable ? EPOLLIN : 0) | (writable ? EPOLLOUT : 0);

        for (p = &r->sockets; *p; p = &(*p)->next)
                if ((*p)->fd == fd)
                        break;
        s = *p;

        if (events == 0) {
                if (s) {
                        *p = s->next;
                        sd_event_source_disable_unref(s->source);
                        free(s);
                }
                return;
        }

        if (s) {
                (void) sd_event_source_set_io_events(s->source, events);
                return;
        }

        s = calloc(1, sizeof(*s));
        if (!s)
                return;
        s->fd = fd;
        if (sd_event_add_io(r->event, &s->source, fd, events, resolver_on_io, r) < 0) {
                free(s);
                return;
        }
        (void) sd_event_source_set_description(s->source, "resolver-io");
        s->next = r->sockets;
        r->sockets = s;
}

/* "1.2.3.4", "1.2.3.4:5353", "::1", "[::1]:5353" -> the form
 * ares_set_servers_ports_csv() reads unambiguously. */
static int resolver_server_entry(const char *s, char *buf, size_t len) {
        _cleanup_free_ char *host = NULL;
        struct sockaddr_storage ss;
        socklen_t sslen;
        uint16_t port;
        int r;

        r = hostport_parse(s, DNS_PORT, &host, &port);
        if (r < 0)
                return r;
        /* Servers are addresses: resolving their names would need DNS. */
        r = sockaddr_parse(host, port, &ss, &sslen);
        if (r < 0)
                return r;
        if (ss.ss_family == AF_INET6)
                r = snprintf(buf, len, "[%s]:%u", host, port);
        else
                r = snprintf(buf, len, "%s:%u", host, port);
        if (r < 0 || (size_t) r >= len)
                return -EINVAL;
        return 0;
}

static int resolver_set_servers(Resolver *r, char * const *servers) {
        _cleanup_free_ char *csv = NULL;
        size_t n = strv_length(servers), len = 0;
        char entry[INET6_ADDRSTRLEN + sizeof("[]:65535")];

        if (n == 0)
                return -EINVAL;

        csv = calloc(n, sizeof(entry) + 1);
        if (!csv)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                int k = resolver_server_entry(servers[i], entry, sizeof(entry));
                if (k < 0)
                        return k;
                len += (size_t) sprintf(csv + len, "%s%s", i > 0 ? "," : "", entry);
        }

        switch (ares_set_servers_ports_csv(r->channel, csv)) {
        case ARES_SUCCESS:
                return 0;
        case ARES_ENOMEM:
                return -ENOMEM;
        default:
                return -EINVAL;
        }
}

int resolver_new(sd_event *e, char * const *servers, uint64_t timeout_usec, Resolver **ret) {
        struct ares_options opts = {};
        Resolver *r;
        uint64_t ms;
        int k;

        if (!e || !ret)
                return -EINVAL;

        if (timeout_usec == 0)
                timeout_usec = RESOLVER_TIMEOUT_DEFAULT_USEC;
        ms = MAX(timeout_usec / USEC_PER_MSEC, (uint64_t) 1);
        if (ms > INT32_MAX)
                ms = INT32_MAX;

        k = ares_library_init(ARES_LIB_INIT_ALL);
        if (k != ARES_SUCCESS)
                return k == ARES_ENOMEM ? -ENOMEM : -EIO;

        r = calloc(1, sizeof(*r));
        if (!r) {
                ares_library_cleanup();
                return -ENOMEM;
        }
        r->event = sd_event_ref(e);
        if (getrandom(&r->rng, sizeof(r->rng), GRND_NONBLOCK) != (ssize_t) sizeof(r->rng))
                r->rng = (uint64_t) getpid() << 32 ^ (uint64_t) (uintptr_t) r;
        if (r->rng == 0)
                r->rng = 1;             /* xorshift's one fixed point */

        opts.sock_state_cb = resolver_sock_state;
        opts.sock_state_cb_data = r;
        opts.timeout = (int) ms;
        opts.tries = RESOLVER_TRIES;
        k = ares_init_options(&r->channel, &opts,
                              ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES);
        if (k != ARES_SUCCESS) {
                resolver_free(r);
                return k == ARES_ENOMEM ? -ENOMEM : -EIO;
        }
        r->channel_ok = true;

        if (servers) {
                k = resolver_set_servers(r, servers);
                if (k < 0) {
                        resolver_free(r);
                        return k;
                }
        }

        k = sd_event_add_time(e, &r->timer, CLOCK_MONOTONIC, USEC_INFINITY,
                              RESOLVER_TIMER_ACCURACY_USEC, resolver_on_timer, r);
        if (k < 0) {
                resolver_free(r);
                return k;
        }
        (void) sd_event_source_set_enabled(r->timer, SD_EVENT_OFF);
        (void) sd_event_source_set_description(r->timer, "resolver-timer");

        *ret = r;
        return 0;
}

/* ---- queries ---- */

static void query_release_userdata(ResolverQuery *q) {
        void (*destroy)(void *) = q->destroy;

        q->destroy = NULL;
        if (destroy)
                destroy(q->userdata);
        q->userdata = NULL;
}

static void query_detach(ResolverQuery *q) {
        Resolver *r = q->resolver;

        if (!r)
                return;
        if (q->prev)
                q->prev->next = q->next;
        else
                r->queries = q->next;
        if (q->next)
                q->next->prev = q->prev;
        q->prev = q->next = NULL;
        q->resolver = NULL;
}

static void query_free(ResolverQuery *q) {
        query_detach(q);
        query_release_userdata(q);
        sd_event_source_disable_unref(q->defer);
        free(q->name);
        free(q->domain);
        for (size_t i = 0; i < q->n_slots; i++) {
                free(q->slots[i].host);
                resolved_targets_free(q->slots[i].targets, q->slots[i].n_targets);
        }
        free(q->slots);
        free(q);
}

static int query_dispatch(sd_event_source *s, void *userdata);

static int query_new(Resolver *r, QueryKind kind, void *userdata, ResolverQuery **ret) {
        ResolverQuery *q;
        int k;

        q = calloc(1, sizeof(*q));
        if (!q)
                return -ENOMEM;
        q->kind = kind;

        /* Allocated now, so that finishing a query can never fail. */
        k = sd_event_add_defer(r->event, &q->defer, query_dispatch, q);
        if (k < 0) {
                free(q);
                return k;
        }
        (void) sd_event_source_set_enabled(q->defer, SD_EVENT_OFF);
        (void) sd_event_source_set_description(q->defer, "resolver-result");

        q->userdata = userdata;
        q->resolver = r;
        q->next = r->queries;
        if (r->queries)
                r->queries->prev = q;
        r->queries = q;

        *ret = q;
        return 0;
}

static Pending *query_pending_new(ResolverQuery *q, size_t slot) {
        Pending *p = malloc(sizeof(*p));

        if (!p)
                return NULL;
        *p = (Pending) { .query = q, .slot = slot };
        q->n_pending++;
        return p;
}

/* Called at the top of every c-ares callback. Returns the query if the
 * result should be processed, NULL if it was cancelled (and is freed here
 * once nothing else refers to it). */
static ResolverQuery *query_pending_done(Pending *p, int status) {
        ResolverQuery *q = p->query;

        free(p);
        if (q->n_pending > 0)
                q->n_pending--;

        /* Destruction of the channel: resolver_free() cancelled every query
         * first, so nothing may issue new calls now. */
        if (status == ARES_EDESTRUCTION)
                q->cancelled = true;

        if (q->cancelled) {
                if (q->n_pending == 0 && !q->dispatching)
                        query_free(q);
                return NULL;
        }
        return q;
}

static void query_set_error(ResolverQuery *q, int error, const char *fmt, ...) _printf_(3, 4);
static void query_set_error(ResolverQuery *q, int error, const char *fmt, ...) {
        va_list ap;

        q->error = error;
        va_start(ap, fmt);
        (void) vsnprintf(q->errtext, sizeof(q->errtext), fmt, ap);
        va_end(ap);
}

/* Permanent answers say the name or data does not exist; everything else
 * (timeouts, SERVFAIL, refused, no memory) may go away on retry. */
static bool ares_status_is_permanent(int status) {
        switch (status) {
        case ARES_ENOTFOUND:            /* NXDOMAIN */
        case ARES_ENODATA:              /* NOERROR, no records of the type */
        case ARES_ENONAME:
        case ARES_EBADNAME:
        case ARES_EBADFAMILY:
                return true;
        default:
                return false;
        }
}

/* Only spreads load among equal MX preferences (RFC 5321 5.1), so it needs
 * no cryptographic strength; per-resolver state keeps random() untouched. */
static uint32_t resolver_random(Resolver *r) {
        r->rng ^= r->rng << 13;
        r->rng ^= r->rng >> 7;
        r->rng ^= r->rng << 17;
        return (uint32_t) (r->rng >> 32);
}

static void query_maybe_finish(ResolverQuery *q) {
        if (q->n_pending > 0 || q->finished || q->cancelled)
                return;
        q->finished = true;
        (void) sd_event_source_set_enabled(q->defer, SD_EVENT_ONESHOT);
}

static void sockaddr_set_port(struct sockaddr_storage *ss, uint16_t port) {
        if (ss->ss_family == AF_INET)
                ((struct sockaddr_in *) ss)->sin_port = htons(port);
        else if (ss->ss_family == AF_INET6)
                ((struct sockaddr_in6 *) ss)->sin6_port = htons(port);
}

static int slot_add_target(HostSlot *slot, const struct sockaddr *sa, socklen_t salen) {
        ResolvedTarget *t;

        if (salen > sizeof(struct sockaddr_storage))
                return -EINVAL;
        if (sa->sa_family != AF_INET && sa->sa_family != AF_INET6)
                return 0;
        if (slot->n_targets >= RESOLVER_HOST_ADDRESSES_MAX)
                return 0;

        t = reallocarray(slot->targets, slot->n_targets + 1, sizeof(*t));
        if (!t)
                return -ENOMEM;
        slot->targets = t;
        t = &slot->targets[slot->n_targets];
        *t = (ResolvedTarget) {
                .addrlen = salen,
                .preference = slot->preference,
        };
        t->host = strdup(slot->host);
        if (!t->host)
                return -ENOMEM;
        memcpy(&t->addr, sa, salen);
        sockaddr_set_port(&t->addr, slot->port);
        slot->n_targets++;
        return 0;
}

static int query_add_slot(ResolverQuery *q, const char *host, uint16_t port, uint16_t preference) {
        HostSlot *s;
        size_t len = strlen(host);

        /* A route host may be written as an address literal "[::1]". */
        if (len >= 2 && host[0] == '[' && host[len - 1] == ']') {
                host++;
                len -= 2;
        }
        if (len == 0 || len > RESOLVER_NAME_MAX)
                return -EINVAL;

        s = reallocarray(q->slots, q->n_slots + 1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        q->slots = s;
        s = &q->slots[q->n_slots];
        *s = (HostSlot) {
                .port = port,
                .preference = preference,
                .shuffle = resolver_random(q->resolver),
        };
        s->host = strndup(host, len);
        if (!s->host)
                return -ENOMEM;
        q->n_slots++;
        return 0;
}

static int slot_compare(const void *a, const void *b) {
        const HostSlot *x = a, *y = b;

        if (x->preference != y->preference)
                return x->preference < y->preference ? -1 : 1;
        if (x->shuffle != y->shuffle)
                return x->shuffle < y->shuffle ? -1 : 1;
        return 0;
}

static void resolver_on_addrinfo(void *arg, int status, int timeouts, struct ares_addrinfo *res) {
        Pending *p = arg;
        size_t i = p->slot;
        ResolverQuery *q;
        HostSlot *slot;
        int k = 0;

        q = query_pending_done(p, status);
        if (!q)
                goto finish;
        slot = &q->slots[i];

        if (status == ARES_SUCCESS && res) {
                for (struct ares_addrinfo_node *n = res->nodes; n && k >= 0; n = n->ai_next)
                        if (n->ai_addr)
                                k = slot_add_target(slot, n->ai_addr, (socklen_t) n->ai_addrlen);
                if (k < 0) {
                        q->temporary = true;
                        query_set_error(q, 0, "%s: out of memory", slot->host);
                } else if (slot->n_targets == 0)
                        query_set_error(q, 0, "%s: no IPv4/IPv6 address", slot->host);
        } else {
                if (!ares_status_is_permanent(status))
                        q->temporary = true;
                query_set_error(q, 0, "%s: %s", slot->host, ares_strerror(status));
        }
        query_maybe_finish(q);
finish:
        if (res)
                ares_freeaddrinfo(res);
}

/* Starts the address lookups of all slots that have no targets yet. */
static void query_lookup_slots(ResolverQuery *q) {
        Resolver *r = q->resolver;
        struct ares_addrinfo_hints hints = {
                .ai_family = AF_UNSPEC,
                .ai_socktype = SOCK_STREAM,
        };

        /* c-ares may call back synchronously (/etc/hosts, numeric names);
         * hold a reference so the query cannot finish halfway through. */
        q->n_pending++;
        for (size_t i = 0; i < q->n_slots; i++) {
                Pending *p;

                if (q->slots[i].n_targets > 0)
                        continue;
                p = query_pending_new(q, i);
                if (!p) {
                        q->temporary = true;
                        query_set_error(q, 0, "%s: out of memory", q->slots[i].host);
                        continue;
                }
                ares_getaddrinfo(r->channel, q->slots[i].host, NULL, &hints, resolver_on_addrinfo, p);
        }
        q->n_pending--;
}

/* RFC 7505 3: a null MX is a single MX RR with preference 0 and exchange
 * "." (the root, which c-ares expands to ""). */
static bool mx_is_null(const struct ares_mx_reply *mx) {
        return isempty(mx->host) || streq(mx->host, ".");
}

static int query_add_mx(ResolverQuery *q, const struct ares_mx_reply *mx) {
        size_t n = 0;
        int k;

        for (const struct ares_mx_reply *i = mx; i; i = i->next)
                n++;
        if (n == 1 && mx_is_null(mx)) {
                query_set_error(q, -ENXIO, "%s accepts no mail (null MX, RFC 7505)", q->domain);
                return 0;
        }

        for (const struct ares_mx_reply *i = mx; i; i = i->next) {
                /* A null MX mixed with real ones violates RFC 7505 3; the
                 * real ones are still usable. */
                if (mx_is_null(i))
                        continue;
                k = query_add_slot(q, i->host, q->port, i->priority);
                if (k == -EINVAL)
                        continue;
                if (k < 0)
                        return k;
        }
        if (q->n_slots == 0) {
                query_set_error(q, -ENXIO, "%s has no usable MX host", q->domain);
                return 0;
        }

        /* RFC 5321 5.1: lowest preference first; among equal preferences
         * pick at random to spread the load. */
        qsort(q->slots, q->n_slots, sizeof(*q->slots), slot_compare);
        if (q->n_slots > RESOLVER_MX_HOSTS_MAX) {
                for (size_t i = RESOLVER_MX_HOSTS_MAX; i < q->n_slots; i++)
                        free(q->slots[i].host);
                q->n_slots = RESOLVER_MX_HOSTS_MAX;
        }
        return 0;
}

static void resolver_on_mx(void *arg, int status, int timeouts, unsigned char *abuf, int alen) {
        struct ares_mx_reply *mx = NULL;
        ResolverQuery *q;
        int k;

        q = query_pending_done(arg, status);
        if (!q)
                return;

        if (status == ARES_SUCCESS)
                status = ares_parse_mx_reply(abuf, alen, &mx);

        switch (status) {
        case ARES_SUCCESS:
                k = query_add_mx(q, mx);
                if (k < 0)
                        query_set_error(q, -EAGAIN, "MX lookup for %s: %s", q->domain, strerror(-k));
                break;
        case ARES_ENODATA:
                /* RFC 5321 5.1: no MX records, the domain itself is the
                 * implicit MX with preference 0. */
                k = query_add_slot(q, q->domain, q->port, 0);
                if (k < 0)
                        query_set_error(q, -EAGAIN, "MX lookup for %s: %s", q->domain, strerror(-k));
                break;
        case ARES_ENOTFOUND:
                query_set_error(q, -ENXIO, "%s: domain not found (NXDOMAIN)", q->domain);
                break;
        default:
                query_set_error(q, -EAGAIN, "MX lookup for %s failed: %s", q->domain, ares_strerror(status));
                break;
        }
        ares_free_data(mx);

        if (q->error == 0)
                query_lookup_slots(q);
        query_maybe_finish(q);
}

/* Concatenates the slots' addresses in slot order. */
static int query_collect(ResolverQuery *q, ResolvedTarget **ret, size_t *ret_n) {
        ResolvedTarget *t;
        size_t n = 0, j = 0;

        for (size_t i = 0; i < q->n_slots; i++)
                n += q->slots[i].n_targets;
        if (n == 0) {
                *ret = NULL;
                *ret_n = 0;
                return 0;
        }

        t = calloc(n, sizeof(*t));
        if (!t)
                return -ENOMEM;
        for (size_t i = 0; i < q->n_slots; i++) {
                HostSlot *s = &q->slots[i];

                if (s->n_targets == 0)
                        continue;
                memcpy(t + j, s->targets, s->n_targets * sizeof(*t));
                j += s->n_targets;
                free(s->targets);
                s->targets = NULL;
                s->n_targets = 0;
        }
        *ret = t;
        *ret_n = n;
        return 0;
}

static void query_dispatch_targets(ResolverQuery *q) {
        ResolvedTarget *t = NULL;
        size_t n = 0;
        int error = q->error, k;

        if (error == 0) {
                k = query_collect(q, &t, &n);
                if (k < 0) {
                        error = -EAGAIN;
                        query_set_error(q, error, "out of memory");
                } else if (n == 0 && q->n_slots > 0) {
                        char why[RESOLVER_ERRTEXT_MAX];

                        /* RFC 5321 5.1: a transient failure of any lookup
                         * makes the whole attempt transient. */
                        error = q->temporary ? -EAGAIN : -ENXIO;
                        (void) snprintf(why, sizeof(why), "%s", q->errtext);
                        if (q->domain)
                                query_set_error(q, error, "no address for the mail exchangers of %s (%s)",
                                                q->domain, why[0] == '\0' ? "none found" : why);
                        else
                                query_set_error(q, error, "no address for any route host (%s)",
                                                why[0] == '\0' ? "none found" : why);
                }
        }

        q->cb.targets(error, error < 0 ? q->errtext : NULL, t, n, q->userdata);
}

static void reverse_cache_store(ResolverQuery *q);

static int query_dispatch(sd_event_source *s, void *userdata) {
        ResolverQuery *q = userdata;

        q->dispatching = true;
        if (q->kind == QUERY_REVERSE) {
                reverse_cache_store(q);
                q->cb.reverse(q->name, q->name && q->verified, q->userdata);
        } else
                query_dispatch_targets(q);
        q->dispatching = false;

        query_free(q);
        return 0;
}

/* ---- reverse ---- */

/* The address family and bytes, IPv4-mapped IPv6 reduced to IPv4. */
static int sockaddr_normalize(const struct sockaddr *sa, int *ret_family, const void **ret_addr, size_t *ret_len) {
        if (sa->sa_family == AF_INET) {
                *ret_family = AF_INET;
                *ret_addr = &((const struct sockaddr_in *) sa)->sin_addr;
                *ret_len = sizeof(struct in_addr);
                return 0;
        }
        if (sa->sa_family == AF_INET6) {
                const struct in6_addr *a = &((const struct sockaddr_in6 *) sa)->sin6_addr;

                if (IN6_IS_ADDR_V4MAPPED(a)) {
                        *ret_family = AF_INET;
                        *ret_addr = a->s6_addr + 12;
                        *ret_len = sizeof(struct in_addr);
                } else {
                        *ret_family = AF_INET6;
                        *ret_addr = a;
                        *ret_len = sizeof(struct in6_addr);
                }
                return 0;
        }
        return -EAFNOSUPPORT;
}

static bool sockaddr_same_address(const struct sockaddr *a, const struct sockaddr *b) {
        const void *x, *y;
        size_t xl, yl;
        int xf, yf;

        if (sockaddr_normalize(a, &xf, &x, &xl) < 0 || sockaddr_normalize(b, &yf, &y, &yl) < 0)
                return false;
        return xf == yf && xl == yl && memcmp(x, y, xl) == 0;
}

static void resolver_on_forward(void *arg, int status, int timeouts, struct ares_addrinfo *res) {
        ResolverQuery *q;

        q = query_pending_done(arg, status);
        if (!q)
                goto finish;

        if ((status != ARES_SUCCESS && !ares_status_is_permanent(status)) || timeouts > 0)
                q->indefinite = true;
        if (status == ARES_SUCCESS && res)
                for (struct ares_addrinfo_node *n = res->nodes; n; n = n->ai_next)
                        if (n->ai_addr && sockaddr_same_address(n->ai_addr, (struct sockaddr *) &q->client)) {
                                q->verified = true;
                                break;
                        }
        query_maybe_finish(q);
finish:
        if (res)
                ares_freeaddrinfo(res);
}

static void resolver_on_ptr(void *arg, int status, int timeouts, struct hostent *h) {
        struct ares_addrinfo_hints hints = {
                .ai_family = AF_UNSPEC,
                .ai_socktype = SOCK_STREAM,
        };
        ResolverQuery *q;
        Pending *p;

        q = query_pending_done(arg, status);
        if (!q)
                return;

        /* c-ares ends a reverse lookup whose questions all failed with
         * ENOTFOUND, timeouts included: any timeout makes it indefinite. */
        if ((status != ARES_SUCCESS && !ares_status_is_permanent(status)) || timeouts > 0)
                q->indefinite = true;
        /* The PTR data is chosen by whoever controls the client's reverse
         * zone: only a well-formed host name is kept (RFC 1123 2.1). */
        if (status == ARES_SUCCESS && h && h->h_name && domain_is_valid(h->h_name)) {
                q->name = strdup(h->h_name);
                if (q->name) {
                        q->n_pending++;
                        p = query_pending_new(q, 0);
                        if (p)
                                ares_getaddrinfo(q->resolver->channel, q->name, NULL, &hints,
                                                 resolver_on_forward, p);
                        q->n_pending--;
                }
        }
        query_maybe_finish(q);
}

static void reverse_entry_free(Resolver *r, ReverseEntry *e) {
        HASH_DEL(r->reverse_cache, e);
        free(e->name);
        free(e);
}

static uint64_t resolver_now(Resolver *r) {
        uint64_t now = 0;

        (void) sd_event_now(r->event, CLOCK_MONOTONIC, &now);
        return now;
}

/* A fresh entry for the key, or NULL (an expired one is dropped). */
static ReverseEntry *reverse_cache_find(Resolver *r, const ReverseKey *key) {
        ReverseEntry *e = NULL;

        HASH_FIND(hh, r->reverse_cache, key, sizeof(*key), e);
        if (e && e->expires <= resolver_now(r)) {
                reverse_entry_free(r, e);
                e = NULL;
        }
        return e;
}

/* Remembers a reverse lookup that found a name, unless it came from the
 * cache or a step failed for a reason that may go away. */
static void reverse_cache_store(ResolverQuery *q) {
        Resolver *r = q->resolver;
        ReverseEntry *e, *old;

        if (!r || q->cached || q->indefinite || !q->name)
                return;
        old = reverse_cache_find(r, &q->key);
        if (old)
                reverse_entry_free(r, old);
        if (HASH_COUNT(r->reverse_cache) >= RESOLVER_REVERSE_CACHE_MAX)
                /* The head of the hash's list is the oldest entry. */
                reverse_entry_free(r, r->reverse_cache);

        e = calloc(1, sizeof(*e));
        if (!e)
                return;
        e->key = q->key;
        e->verified = q->verified;
        e->expires = resolver_now(r) + RESOLVER_REVERSE_CACHE_USEC;
        e->name = strdup(q->name);
        if (!e->name) {
                free(e);
                return;
        }
        HASH_ADD(hh, r->reverse_cache, key, sizeof(e->key), e);
        if (e->oom) {
                free(e->name);
                free(e);
        }
}

int resolver_reverse(Resolver *r, const struct sockaddr *sa, resolver_reverse_fn_t cb,
                     void *userdata, ResolverQuery **ret) {
        ResolverQuery *q;
        ReverseEntry *e;
        const void *addr;
        size_t len;
        Pending *p;
        int family, k;

        if (!r || !sa || !cb)
                return -EINVAL;
        k = sockaddr_normalize(sa, &family, &addr, &len);
        if (k < 0)
                return k;

        k = query_new(r, QUERY_REVERSE, userdata, &q);
        if (k < 0)
                return k;
        q->cb.reverse = cb;
        memcpy(&q->client, sa, sa->sa_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6));
        q->key.family = family;
        memcpy(q->key.addr, addr, len);

        e = reverse_cache_find(r, &q->key);
        if (e) {
                q->name = strdup(e->name);
                if (!q->name) {
                        query_free(q);
                        return -ENOMEM;
                }
                q->verified = e->verified;
                q->cached = true;
                query_maybe_finish(q);
                if (ret)
                        *ret = q;
                return 0;
        }

        p = query_pending_new(q, 0);
        if (!p) {
                query_free(q);
                return -ENOMEM;
        }
        /* Hold a reference across the call: c-ares answers from /etc/hosts
         * synchronously. */
        q->n_pending++;
        ares_gethostbyaddr(r->channel, addr, (int) len, family, resolver_on_ptr, p);
        q->n_pending--;
        query_maybe_finish(q);
        resolver_update_timer(r);

        if (ret)
                *ret = q;
        return 0;
}

/* ---- MX and hosts ---- */

int resolver_mx(Resolver *r, const char *domain, uint16_t port, resolver_targets_fn_t cb,
                void *userdata, ResolverQuery **ret) {
        ResolverQuery *q;
        Pending *p;
        int k;

        if (!r || !domain || !cb || port == 0)
                return -EINVAL;
        if (!domain_is_valid(domain))
                return -EINVAL;

        k = query_new(r, QUERY_TARGETS, userdata, &q);
        if (k < 0)
                return k;
        q->cb.targets = cb;
        q->port = port;
        q->domain = strdup(domain);
        p = q->domain ? query_pending_new(q, 0) : NULL;
        if (!p) {
                query_free(q);
                return -ENOMEM;
        }

        /* ares_query, not ares_search: a mail domain is fully qualified
         * (RFC 5321 2.3.5), search lists must not be appended. */
        q->n_pending++;
        ares_query(r->channel, domain, DNS_CLASS_IN, DNS_TYPE_MX, resolver_on_mx, p);
        q->n_pending--;
        query_maybe_finish(q);
        resolver_update_timer(r);

        if (ret)
                *ret = q;
        return 0;
}

int resolver_hosts(Resolver *r, const RouteHost *hosts, size_t n, resolver_targets_fn_t cb,
                   void *userdata, ResolverQuery **ret) {
        ResolverQuery *q;
        int k;

        if (!r || !cb || (n > 0 && !hosts))
                return -EINVAL;

        k = query_new(r, QUERY_TARGETS, userdata, &q);
        if (k < 0)
                return k;
        q->cb.targets = cb;

        for (size_t i = 0; i < n; i++) {
                struct sockaddr_storage ss;
                socklen_t sslen;
                HostSlot *s;

                if (!hosts[i].host || hosts[i].port == 0) {
                        query_free(q);
                        return -EINVAL;
                }
                k = query_add_slot(q, hosts[i].host, hosts[i].port, 0);
                if (k < 0) {
                        query_free(q);
                        return k;
                }
                s = &q->slots[q->n_slots - 1];

                /* Address literals need no DNS. */
                if (sockaddr_parse(s->host, s->port, &ss, &sslen) >= 0) {
                        k = slot_add_target(s, (struct sockaddr *) &ss, sslen);
                        if (k < 0) {
                                query_free(q);
                                return k;
                        }
                }
        }

        query_lookup_slots(q);
        query_maybe_finish(q);
        resolver_update_timer(r);

        if (ret)
                *ret = q;
        return 0;
}

/* ---- cancellation and teardown ---- */

void resolver_query_set_destroy(ResolverQuery *q, void (*destroy)(void *userdata)) {
        if (q)
                q->destroy = destroy;
}

void resolver_query_cancel(ResolverQuery *q) {
        /* From inside its own callback the query is already ending. */
        if (!q || q->cancelled || q->dispatching)
                return;

        q->cancelled = true;
        (void) sd_event_source_set_enabled(q->defer, SD_EVENT_OFF);
        query_release_userdata(q);
        /* Otherwise the outstanding c-ares callbacks free it. */
        if (q->n_pending == 0)
                query_free(q);
}

Resolver *resolver_free(Resolver *r) {
        ResolverQuery *q, *next;

        if (!r)
                return NULL;

        for (q = r->queries; q; q = next) {
                next = q->next;
                if (q->dispatching)
                        /* resolver_free() from inside a callback: the query
                         * frees itself when the callback returns. */
                        query_detach(q);
                else
                        resolver_query_cancel(q);
        }

        /* ares_destroy() calls every outstanding callback with
         * ARES_EDESTRUCTION; they free the cancelled queries, and closing
         * the sockets removes their io sources through sock_state_cb. */
        if (r->channel_ok)
                ares_destroy(r->channel);
        r->channel_ok = false;

        /* Cannot happen: c-ares called every callback. Never free memory
         * c-ares might still point to. */
        for (q = r->queries; q; q = next) {
                next = q->next;
                query_detach(q);
        }

        while (r->sockets) {
                ResolverSocket *s = r->sockets;

                r->sockets = s->next;
                sd_event_source_disable_unref(s->source);
                free(s);
        }
        while (r->reverse_cache)
                reverse_entry_free(r, r->reverse_cache);
        sd_event_source_disable_unref(r->timer);
        sd_event_unref(r->event);
        free(r);
        ares_library_cleanup();
        return NULL;
}
