/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The delivery queue (see queue.h).
 *
 * Model: every Message holds one QueueRcpt per RID, and every recipient
 * domain (lowercased) one Destination. A recipient that is waiting
 * (PENDING) is either due, on its Destination's due list in the order it
 * became due (arrival for new messages, retry time for retries), or
 * waiting for a retry time, in the queue-wide min-heap ordered by
 * next_attempt; while a worker carries it (ACTIVE) it is on neither;
 * DELIVERED and BOUNCED are final. A message leaves the spool once every
 * recipient is final.
 *
 * Scheduling: one CLOCK_REALTIME timer (retry times are wall-clock, like
 * the arrival time they are measured against). Every event that may let a
 * job start (queue_add, queue_job_done, route results, flush, config)
 * re-arms it to "now", so bursts of events are coalesced into one pass and
 * no job is ever started from inside a caller's stack. The pass moves the
 * recipients whose retry time came from the heap to their due lists, then
 * looks only at the Destinations with due recipients (the ready list),
 * starting at most one route lookup per Destination; each lookup result
 * starts one job, taken from the head of the due list. Its cost grows with
 * what it starts and with the number of ready Destinations, never with the
 * number of recipients waiting for a retry: a large backlog does not slow
 * down the scheduling of new mail. Destinations left with nothing to do
 * are put on an idle list and freed by the next pass.
 *
 * What it does not do: any network or file I/O of its own beyond reading
 * the original header section for a DSN and writing the DSN to the spool.
 * The queue lives on the main loop only and is not thread-safe.
 *
 * Returns negative errno. Mail events are logged through log.h (Delayed,
 * Bounced, Message done, Message finished, bounce generated); other
 * problems are logged once here, since there is no caller to hand them to.
 */

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "dsn.h"
#include "log.h"
#include "queue.h"
#include "route.h"
#include "util/macro.h"
#include "util/parse.h"

/* Recipients without a domain part (RFC 5321 4.5.1 "postmaster") are
 * routed as this domain. */
#define QUEUE_LOCAL_DOMAIN "localhost"

/* How much of a bounced message is read to find its header section for
 * the DSN (RFC 3464 2.1: the returned headers are optional, a bounded
 * prefix is enough). */
#define QUEUE_DSN_HEADERS_MAX (64U * 1024U)

/* sd-event coalesces timers within their accuracy; retries are scheduled
 * in the 100 ms range in tests, so ask for 1 ms instead of the 250 ms
 * default. */
#define QUEUE_TIMER_ACCURACY_USEC (1 * USEC_PER_MSEC)

/* Used when a destination entry says 0 (meaning "no limit" makes no sense
 * for a batch: at least one message per connection). */
#define QUEUE_BATCH_MIN 1U

/* RFC 3463: a 5xx reply without an enhanced code is reported as a
 * permanent failure of unspecified kind. */
#define QUEUE_STATUS_PERM_DEFAULT "5.0.0"
/* RFC 3463 4.4.7: delivery time expired. */
#define QUEUE_STATUS_EXPIRED "4.4.7"

typedef enum QueueRcptState {
        QUEUE_RCPT_PENDING,
        QUEUE_RCPT_ACTIVE,
        QUEUE_RCPT_DELIVERED,
        QUEUE_RCPT_BOUNCED,
} QueueRcptState;

typedef struct Message Message;
typedef struct Destination Destination;

typedef struct QueueRcpt {
        Message *message;
        uint32_t rid;
        QueueRcptState state;
        uint64_t next_attempt;          /* CLOCK_REALTIME usec */
        unsigned attempts;              /* failed attempts so far */
        char *last_reply;

        Destination *dest;
        struct QueueRcpt *dest_prev, *dest_next;        /* Destination due list */

        /* In Queue.waiting (the retry heap) at wait_idx; wait_seq orders
         * recipients with the same next_attempt by when they were put
         * there, so that those of one job stay together. */
        bool waiting;
        size_t wait_idx;
        uint64_t wait_seq;

        /* Set while a bounce round collects this recipient for the DSN. */
        bool dsn_pending;
        char *dsn_status;
        char *dsn_diagnostic;
} QueueRcpt;

struct Message {
        Queue *queue;
        Envelope env;
        uint64_t data_size;
        QueueRcpt *rcpts;               /* env.n_rcpts */
        size_t n_final;

        Message *prev, *next;           /* Queue.messages */

        bool touched;                   /* on the current round's list */
        Message *touched_next;
};

struct Destination {
        Queue *queue;
        char *domain;
        QueueRcpt *due_head, *due_tail; /* due now, in the order they became due */
        size_t n_due;
        size_t n_waiting;               /* in the retry heap */
        unsigned n_active;              /* jobs out with workers */

        bool resolving;
        ResolverQuery *query;
        Config *query_config;           /* the config the lookup runs under */

        Destination *prev, *next;       /* Queue.destinations */
        Destination *ready_prev, *ready_next;   /* Queue.ready: n_due > 0 */
        bool ready;
        Destination *idle_next;         /* Queue.idle: to be freed if still idle */
        bool idle;
};

/* A DSN on its way through the spool's group commit. */
typedef struct BounceCommit {
        Queue *queue;                   /* NULL once the queue is gone */
        Envelope env;
        uint64_t data_size;
        uint64_t orig_mid;
        const char *generated_by;       /* "bounce", "alert" */
        struct BounceCommit *prev, *next;
} BounceCommit;

/* What the queue keeps about a dispatched job (DeliveryJob.userdata). */
typedef struct JobContext {
        Queue *queue;
        Destination *dest;
        Message **messages;             /* parallel to DeliveryJob.messages */
} JobContext;

struct Queue {
        sd_event *event;
        Mailbox *mailbox;
        Spool *spool;
        Resolver *resolver;
        queue_dispatch_fn_t dispatch;
        void *userdata;
        Config *config;

        sd_event_source *timer;

        Message *messages_head, *messages_tail;
        size_t n_messages;
        Destination *destinations;
        Destination *ready_head, *ready_tail;
        size_t n_ready;
        Destination *idle;
        size_t n_active;
        BounceCommit *bounces;

        /* Recipients waiting for a retry time: a binary min-heap by
         * (next_attempt, wait_seq). Its room is reserved for every
         * recipient not yet final (n_live), so that a deferral, which
         * cannot fail, never needs to allocate. */
        QueueRcpt **waiting;
        size_t n_waiting, n_waiting_alloc;
        size_t n_live;
        uint64_t wait_seq;

        bool stopped;
};

/* ---- small helpers ---- */

static uint64_t queue_now(Queue *q) {
        uint64_t now;

        if (sd_event_now(q->event, CLOCK_REALTIME, &now) < 0) {
                struct timespec ts;

                clock_gettime(CLOCK_REALTIME, &ts);
                now = (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / 1000;
        }
        return now;
}

static int free_and_strdup(char **p, const char *s) {
        char *c = NULL;

        if (s) {
                c = strdup(s);
                if (!c)
                        return -ENOMEM;
        }
        free(*p);
        *p = c;
        return 0;
}

static char *mfree_str(char *p) {
        free(p);
        return NULL;
}

static bool streq_ptr(const char *a, const char *b) {
        if (!a || !b)
                return a == b;
        return streq(a, b);
}

/* Exponential backoff: retry_min * 2^(attempts-1), capped at retry_max. */
static uint64_t queue_backoff(const QueueConfig *qc, unsigned attempts) {
        uint64_t d = qc->retry_min;

        if (d == 0)
                d = 1;
        for (unsigned i = 1; i < attempts && d < qc->retry_max; i++) {
                if (d > UINT64_MAX / 2)
                        return qc->retry_max;
                d *= 2;
        }
        if (qc->retry_max > 0 && d > qc->retry_max)
                d = qc->retry_max;
        return d;
}

static bool message_expired(const Queue *q, const Message *m, uint64_t now) {
        uint64_t lifetime = q->config->queue.lifetime;

        if (m->env.arrival_usec > now)
                return false;
        return now - m->env.arrival_usec >= lifetime;
}

/* The enhanced status code (RFC 3463) of an SMTP reply "550 5.1.1 text",
 * or the fallback. Writes into buf (>= 16). */
static const char *reply_status(const char *reply, const char *fallback, char *buf, size_t len) {
        const char *p;
        size_t n;

        if (!reply || strlen(reply) < 4)
                return fallback;
        p = reply + 4;
        if ((p[0] != '2' && p[0] != '4' && p[0] != '5') || p[1] != '.')
                return fallback;
        n = 2 + strspn(p + 2, "0123456789");
        if (n == 2 || p[n] != '.')
                return fallback;
        n += 1;
        if (strspn(p + n, "0123456789") == 0)
                return fallback;
        n += strspn(p + n, "0123456789");
        if (n >= len)
                return fallback;
        memcpy(buf, p, n);
        buf[n] = '\0';
        return buf;
}

/* ---- destinations ---- */

static Destination *destination_find(Queue *q, const char *domain) {
        for (Destination *d = q->destinations; d; d = d->next)
                if (streq(d->domain, domain))
                        return d;
        return NULL;
}

static int destination_get(Queue *q, const char *domain, Destination **ret) {
        _cleanup_free_ char *lower = NULL;
        Destination *d;

        lower = strdup(domain);
        if (!lower)
                return -ENOMEM;
        for (char *p = lower; *p; p++)
                if (*p >= 'A' && *p <= 'Z')
                        *p = (char) (*p - 'A' + 'a');

        d = destination_find(q, lower);
        if (!d) {
                d = calloc(1, sizeof *d);
                if (!d)
                        return -ENOMEM;
                d->queue = q;
                d->domain = TAKE_PTR(lower);
                d->next = q->destinations;
                if (q->destinations)
                        q->destinations->prev = d;
                q->destinations = d;
        }
        *ret = d;
        return 0;
}

static void destination_free(Destination *d) {
        Queue *q;

        if (!d)
                return;
        q = d->queue;
        /* Only idle destinations are freed (the pass, or queue_free() after
         * every message): nothing listed, nothing on the ready list. */
        assert(d->n_due == 0 && d->n_waiting == 0 && !d->ready);
        if (d->query)
                resolver_query_cancel(d->query);
        config_unref(d->query_config);
        if (d->prev)
                d->prev->next = d->next;
        else
                q->destinations = d->next;
        if (d->next)
                d->next->prev = d->prev;
        free(d->domain);
        free(d);
}

static bool destination_is_idle(const Destination *d) {
        return d->n_due == 0 && d->n_waiting == 0 && d->n_active == 0 && !d->resolving;
}

/* Remembers d for the next pass to free if it is still idle then; freeing
 * it here could pull it from under a caller that holds it. */
static void destination_check_idle(Destination *d) {
        Queue *q = d->queue;

        if (d->idle || !destination_is_idle(d))
                return;
        d->idle = true;
        d->idle_next = q->idle;
        q->idle = d;
}

static void queue_reap_idle(Queue *q) {
        while (q->idle) {
                Destination *d = q->idle;

                q->idle = d->idle_next;
                d->idle_next = NULL;
                d->idle = false;
                if (destination_is_idle(d))
                        destination_free(d);
        }
}

static void destination_due_append(Destination *d, QueueRcpt *r) {
        Queue *q = d->queue;

        r->dest_next = NULL;
        r->dest_prev = d->due_tail;
        if (d->due_tail)
                d->due_tail->dest_next = r;
        else
                d->due_head = r;
        d->due_tail = r;
        d->n_due++;

        if (!d->ready) {
                d->ready = true;
                d->ready_next = NULL;
                d->ready_prev = q->ready_tail;
                if (q->ready_tail)
                        q->ready_tail->ready_next = d;
                else
                        q->ready_head = d;
                q->ready_tail = d;
                q->n_ready++;
        }
}

static void destination_due_unlink(Destination *d, QueueRcpt *r) {
        Queue *q = d->queue;

        if (r->dest_prev)
                r->dest_prev->dest_next = r->dest_next;
        else
                d->due_head = r->dest_next;
        if (r->dest_next)
                r->dest_next->dest_prev = r->dest_prev;
        else
                d->due_tail = r->dest_prev;
        r->dest_prev = r->dest_next = NULL;
        assert(d->n_due > 0);
        d->n_due--;

        if (d->n_due == 0 && d->ready) {
                if (d->ready_prev)
                        d->ready_prev->ready_next = d->ready_next;
                else
                        q->ready_head = d->ready_next;
                if (d->ready_next)
                        d->ready_next->ready_prev = d->ready_prev;
                else
                        q->ready_tail = d->ready_prev;
                d->ready_prev = d->ready_next = NULL;
                d->ready = false;
                assert(q->n_ready > 0);
                q->n_ready--;
        }
}

/* ---- the retry heap ---- */

static bool rcpt_waits_less(const QueueRcpt *a, const QueueRcpt *b) {
        if (a->next_attempt != b->next_attempt)
                return a->next_attempt < b->next_attempt;
        return a->wait_seq < b->wait_seq;
}

static void waiting_put(Queue *q, size_t i, QueueRcpt *r) {
        q->waiting[i] = r;
        r->wait_idx = i;
}

static void waiting_sift_up(Queue *q, size_t i) {
        QueueRcpt *r = q->waiting[i];

        while (i > 0) {
                size_t parent = (i - 1) / 2;

                if (!rcpt_waits_less(r, q->waiting[parent]))
                        break;
                waiting_put(q, i, q->waiting[parent]);
                i = parent;
        }
        waiting_put(q, i, r);
}

static void waiting_sift_down(Queue *q, size_t i) {
        QueueRcpt *r = q->waiting[i];

        for (;;) {
                size_t c = 2 * i + 1;

                if (c >= q->n_waiting)
                        break;
                if (c + 1 < q->n_waiting && rcpt_waits_less(q->waiting[c + 1], q->waiting[c]))
                        c++;
                if (!rcpt_waits_less(q->waiting[c], r))
                        break;
                waiting_put(q, i, q->waiting[c]);
                i = c;
        }
        waiting_put(q, i, r);
}

/* Room for every recipient not yet final plus n more. */
static int waiting_reserve(Queue *q, size_t n) {
        size_t want = q->n_live + n, alloc;
        QueueRcpt **w;

        if (want <= q->n_waiting_alloc)
                return 0;
        alloc = MAX(want, 2 * q->n_waiting_alloc);
        alloc = MAX(alloc, (size_t) 64);
        w = reallocarray(q->waiting, alloc, sizeof *w);
        if (!w)
                return -ENOMEM;
        q->waiting = w;
        q->n_waiting_alloc = alloc;
        return 0;
}

static void waiting_push(Queue *q, QueueRcpt *r) {
        /* Reserved by waiting_reserve() when r was created. */
        assert(q->n_waiting < q->n_waiting_alloc);
        r->waiting = true;
        r->wait_seq = q->wait_seq++;
        waiting_put(q, q->n_waiting++, r);
        waiting_sift_up(q, r->wait_idx);
        r->dest->n_waiting++;
}

static void waiting_remove(Queue *q, QueueRcpt *r) {
        size_t i = r->wait_idx;
        QueueRcpt *last;

        assert(r->waiting && i < q->n_waiting && q->waiting[i] == r);
        last = q->waiting[--q->n_waiting];
        r->waiting = false;
        assert(r->dest->n_waiting > 0);
        r->dest->n_waiting--;
        if (last == r)
                return;
        waiting_put(q, i, last);
        waiting_sift_up(q, i);
        waiting_sift_down(q, last->wait_idx);
}

/* Lists a PENDING recipient: due now, or in the heap until next_attempt. */
static void rcpt_park(Queue *q, QueueRcpt *r, uint64_t now) {
        assert(r->state == QUEUE_RCPT_PENDING && r->dest);
        if (r->next_attempt > now)
                waiting_push(q, r);
        else
                destination_due_append(r->dest, r);
}

/* Takes a PENDING recipient off whichever list holds it. */
static void rcpt_unpark(Queue *q, QueueRcpt *r) {
        Destination *d = r->dest;

        assert(r->state == QUEUE_RCPT_PENDING && d);
        if (r->waiting)
                waiting_remove(q, r);
        else
                destination_due_unlink(d, r);
        destination_check_idle(d);
}

/* Moves every recipient whose retry time came (all of them with
 * USEC_INFINITY) to its due list, earliest first. Returns how many had a
 * retry time after now. */
static size_t queue_promote(Queue *q, uint64_t now, uint64_t until) {
        size_t n_future = 0;

        while (q->n_waiting > 0 && q->waiting[0]->next_attempt <= until) {
                QueueRcpt *r = q->waiting[0];

                if (r->next_attempt > now)
                        n_future++;
                waiting_remove(q, r);
                destination_due_append(r->dest, r);
        }
        return n_future;
}

/* ---- messages ---- */

static void rcpt_clear_dsn(QueueRcpt *r) {
        r->dsn_pending = false;
        r->dsn_status = mfree_str(r->dsn_status);
        r->dsn_diagnostic = mfree_str(r->dsn_diagnostic);
}

static void message_free(Message *m) {
        Queue *q;

        if (!m)
                return;
        q = m->queue;
        for (size_t i = 0; i < m->env.n_rcpts; i++) {
                QueueRcpt *r = &m->rcpts[i];

                if (r->state == QUEUE_RCPT_PENDING && r->dest)
                        rcpt_unpark(q, r);
                if (r->state == QUEUE_RCPT_PENDING || r->state == QUEUE_RCPT_ACTIVE) {
                        assert(q->n_live > 0);
                        q->n_live--;
                }
                free(r->last_reply);
                rcpt_clear_dsn(r);
        }
        free(m->rcpts);
        if (m->prev)
                m->prev->next = m->next;
        else if (q->messages_head == m)
                q->messages_head = m->next;
        if (m->next)
                m->next->prev = m->prev;
        else if (q->messages_tail == m)
                q->messages_tail = m->prev;
        assert(q->n_messages > 0);
        q->n_messages--;
        envelope_done(&m->env);
        free(m);
}

/* Takes over env (its fields are moved, env is zeroed). rcpt_state may be
 * NULL (all pending). */
static int message_new(Queue *q, Envelope *env, uint64_t data_size, const uint8_t *rcpt_state,
                       uint64_t due, Message **ret) {
        uint64_t now = queue_now(q);
        Message *m;
        int k;

        k = waiting_reserve(q, env->n_rcpts);
        if (k < 0)
                return k;
        m = calloc(1, sizeof *m);
        if (!m)
                return -ENOMEM;
        m->rcpts = calloc(env->n_rcpts ? env->n_rcpts : 1, sizeof *m->rcpts);
        if (!m->rcpts) {
                free(m);
                return -ENOMEM;
        }
        m->queue = q;
        m->env = *env;
        memset(env, 0, sizeof *env);
        m->data_size = data_size;

        /* Linked before the recipients so that message_free() can undo a
         * half-built message. */
        m->prev = q->messages_tail;
        if (q->messages_tail)
                q->messages_tail->next = m;
        else
                q->messages_head = m;
        q->messages_tail = m;
        q->n_messages++;

        for (size_t i = 0; i < m->env.n_rcpts; i++) {
                QueueRcpt *r = &m->rcpts[i];
                const char *domain;

                r->message = m;
                r->rid = (uint32_t) i;
                r->next_attempt = due;

                if (rcpt_state && rcpt_state[i] == SPOOL_RCPT_DELIVERED) {
                        r->state = QUEUE_RCPT_DELIVERED;
                        m->n_final++;
                        continue;
                }
                if (rcpt_state && rcpt_state[i] == SPOOL_RCPT_BOUNCED) {
                        r->state = QUEUE_RCPT_BOUNCED;
                        m->n_final++;
                        continue;
                }

                domain = m->env.rcpts[i] ? mailbox_domain(m->env.rcpts[i]) : NULL;
                if (isempty(domain))
                        domain = QUEUE_LOCAL_DOMAIN;
                k = destination_get(q, domain, &r->dest);
                if (k < 0) {
                        /* Not yet listed: make message_free() skip this one
                         * and the ones after it. */
                        for (size_t j = i; j < m->env.n_rcpts; j++)
                                m->rcpts[j].state = QUEUE_RCPT_DELIVERED;
                        message_free(m);
                        return k;
                }
                r->state = QUEUE_RCPT_PENDING;
                q->n_live++;
                rcpt_park(q, r, now);
        }

        *ret = m;
        return 0;
}

/* ---- scheduling ---- */

static void queue_kick(Queue *q) {
        int r;

        if (q->stopped || !q->timer)
                return;
        r = sd_event_source_set_time(q->timer, 1);
        if (r >= 0)
                r = sd_event_source_set_enabled(q->timer, SD_EVENT_ONESHOT);
        if (r < 0)
                log_error_errno(r, "Queue: failed to arm the scheduling timer: %m");
}

static void queue_arm(Queue *q, uint64_t when) {
        int r;

        if (when == USEC_INFINITY) {
                (void) sd_event_source_set_enabled(q->timer, SD_EVENT_OFF);
                return;
        }
        r = sd_event_source_set_time(q->timer, when);
        if (r >= 0)
                r = sd_event_source_set_enabled(q->timer, SD_EVENT_ONESHOT);
        if (r < 0)
                log_error_errno(r, "Queue: failed to arm the retry timer: %m");
}

static bool destination_has_slot(Queue *q, Destination *d) {
        const DestinationConfig *dc = config_find_destination(q->config, d->domain);
        uint32_t dmax = dc->max_connections ? dc->max_connections : 1;
        uint32_t qmax = q->config->queue.max_connections;

        if (d->n_active >= dmax)
                return false;
        if (qmax > 0 && q->n_active >= qmax)
                return false;
        return true;
}

static void queue_touch(Message **touched, Message *m) {
        if (m->touched)
                return;
        m->touched = true;
        m->touched_next = *touched;
        *touched = m;
}

/* Marks one recipient bounced: recorded, logged, and collected for the
 * DSN of this round unless the sender is <> (RFC 3464 2: no DSN for a
 * DSN; RFC 5321 6.1 the null reverse-path). */
static void queue_bounce_rcpt(Queue *q, Message **touched, uint64_t dcid, QueueRcpt *r,
                              const char *status, const char *diagnostic, const char *log_reply) {
        Message *m = r->message;
        int k;

        if (r->state == QUEUE_RCPT_PENDING && r->dest)
                rcpt_unpark(q, r);
        r->dest = NULL;
        r->state = QUEUE_RCPT_BOUNCED;
        m->n_final++;
        assert(q->n_live > 0);
        q->n_live--;

        k = spool_record(q->spool, m->env.mid, r->rid, SPOOL_RCPT_BOUNCED);
        if (k < 0)
                log_warning_errno(k, "MID %" PRIu64 ": failed to record RID %" PRIu32 " as bounced: %m",
                                  m->env.mid, r->rid);
        log_delivery_bounced(dcid, m->env.mid, r->rid, m->env.rcpts[r->rid], log_reply);

        if (!isempty(m->env.sender)) {
                rcpt_clear_dsn(r);
                r->dsn_status = strdup(status);
                r->dsn_diagnostic = diagnostic ? strdup(diagnostic) : NULL;
                if (!r->dsn_status || (diagnostic && !r->dsn_diagnostic))
                        log_warning("MID %" PRIu64 ": out of memory, RID %" PRIu32 " left out of the DSN",
                                    m->env.mid, r->rid);
                else
                        r->dsn_pending = true;
        }
        queue_touch(touched, m);
}

/* A temporary failure: retried after the backoff, or bounced with 4.4.7
 * once the message outlived the queue lifetime (RFC 3464 2.3.3 Action:
 * failed with status 4.4.7). Returns true when it bounced. */
static bool queue_defer_rcpt(Queue *q, Message **touched, uint64_t dcid, QueueRcpt *r,
                             const char *reply, uint64_t now) {
        Message *m = r->message;

        r->attempts++;
        if (reply)
                (void) free_and_strdup(&r->last_reply, reply);
        queue_touch(touched, m);

        if (message_expired(q, m, now)) {
                _cleanup_free_ char *text = NULL;

                if (asprintf(&text, "%s message expired: %s", QUEUE_STATUS_EXPIRED,
                             r->last_reply ?: "no delivery attempt succeeded") < 0)
                        text = NULL;
                queue_bounce_rcpt(q, touched, dcid, r, QUEUE_STATUS_EXPIRED,
                                  text ?: r->last_reply, text ?: r->last_reply);
                return true;
        }

        r->next_attempt = now + queue_backoff(&q->config->queue, r->attempts);
        if (r->state != QUEUE_RCPT_PENDING) {
                r->state = QUEUE_RCPT_PENDING;
                if (r->dest)
                        rcpt_park(q, r, now);
        }
        return false;
}

static void bounce_commit_free(BounceCommit *b) {
        if (!b)
                return;
        if (b->queue) {
                if (b->prev)
                        b->prev->next = b->next;
                else
                        b->queue->bounces = b->next;
                if (b->next)
                        b->next->prev = b->prev;
        }
        envelope_done(&b->env);
        free(b);
}

static void queue_bounce_committed(void *userdata, int error) {
        BounceCommit *b = userdata;
        Queue *q = b->queue;
        int k;

        if (!q) {
                bounce_commit_free(b);
                return;
        }
        if (error < 0) {
                log_error_errno(error, "MID %" PRIu64 ": failed to spool the generated %s: %m",
                                b->env.mid, b->generated_by);
                bounce_commit_free(b);
                return;
        }
        if (b->orig_mid > 0)
                log_bounce_generated(b->env.mid, b->orig_mid);
        k = queue_add(q, &b->env, b->data_size);
        if (k < 0)
                log_error_errno(k, "MID %" PRIu64 ": failed to queue the generated %s: %m",
                                b->env.mid, b->generated_by);
        bounce_commit_free(b);
}

/* The header section of the spooled message, up to the first empty line
 * (RFC 5322 2.1), bounded by QUEUE_DSN_HEADERS_MAX. */
static int queue_read_headers(Queue *q, uint64_t mid, char **ret, size_t *ret_len) {
        _cleanup_close_ int fd = -EBADF;
        _cleanup_free_ char *buf = NULL;
        uint64_t offset, size;
        size_t want, have = 0;
        char *end;
        int k;

        k = spool_open_data(q->spool, mid, &fd, &offset, &size);
        if (k < 0)
                return k;
        want = (size_t) MIN(size, (uint64_t) QUEUE_DSN_HEADERS_MAX);
        buf = malloc(want + 1);
        if (!buf)
                return -ENOMEM;
        while (have < want) {
                ssize_t n = pread(fd, buf + have, want - have, (off_t) (offset + have));

                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (n == 0)
                        break;
                have += (size_t) n;
        }
        buf[have] = '\0';

        end = memmem(buf, have, "\r\n\r\n", 4);
        if (end)
                have = (size_t) (end - buf) + 2;        /* keep the last header's CRLF */
        else {
                /* Cut at the last complete line so no header is truncated
                 * in the middle. */
                while (have > 0 && !(have >= 2 && buf[have - 2] == '\r' && buf[have - 1] == '\n'))
                        have--;
        }
        buf[have] = '\0';
        *ret = TAKE_PTR(buf);
        *ret_len = have;
        return 0;
}

int queue_submit(Queue *q, const char *sender, char * const *rcpts, const char *text, size_t len,
                 uint64_t orig_mid, const char *generated_by, uint64_t *ret_mid) {
        SpoolWriter *w = NULL;
        BounceCommit *b;
        uint64_t now = queue_now(q);
        int k;

        if (strv_length(rcpts) == 0)
                return -EINVAL;

        b = calloc(1, sizeof *b);
        if (!b)
                return -ENOMEM;
        b->orig_mid = orig_mid;
        b->generated_by = generated_by;
        b->env.mid = spool_next_id(q->spool, SPOOL_ID_MID);
        b->env.arrival_usec = now;
        b->env.sender = strdup(sender);
        b->env.n_rcpts = strv_length(rcpts);
        b->env.rcpts = calloc(b->env.n_rcpts + 1, sizeof(char *));
        if (b->env.mid == 0 || !b->env.sender || !b->env.rcpts) {
                k = b->env.mid == 0 ? -EIO : -ENOMEM;   /* no IDs can be persisted */
                bounce_commit_free(b);
                return k;
        }
        for (size_t i = 0; i < b->env.n_rcpts; i++) {
                b->env.rcpts[i] = strdup(rcpts[i]);
                if (!b->env.rcpts[i]) {
                        bounce_commit_free(b);
                        return -ENOMEM;
                }
        }

        k = spool_writer_new(q->spool, &b->env, &w);
        if (k < 0) {
                bounce_commit_free(b);
                return k;
        }
        k = spool_writer_write(w, text, len);
        if (k < 0) {
                spool_writer_abort(w);
                bounce_commit_free(b);
                return k;
        }
        b->data_size = spool_writer_size(w);

        /* Linked first: the completion may run only from the loop, but
         * queue_free() must find it to orphan it. */
        b->queue = q;
        b->next = q->bounces;
        if (q->bounces)
                q->bounces->prev = b;
        q->bounces = b;

        if (ret_mid)
                *ret_mid = b->env.mid;
        k = spool_writer_commit(w, q->mailbox, queue_bounce_committed, b);
        if (k < 0) {
                bounce_commit_free(b);
                return k;
        }
        return 0;
}

/* One DSN for every recipient of m collected in this round. */
static int queue_make_dsn(Queue *q, Message *m, uint64_t now) {
        _cleanup_free_ DsnRecipient *drcpts = NULL;
        _cleanup_free_ char *headers = NULL, *text = NULL;
        size_t n = 0, headers_len = 0, text_len = 0;
        DsnInfo info;
        int k;

        drcpts = calloc(m->env.n_rcpts, sizeof *drcpts);
        if (!drcpts)
                return -ENOMEM;
        for (size_t i = 0; i < m->env.n_rcpts; i++) {
                QueueRcpt *r = &m->rcpts[i];

                if (!r->dsn_pending)
                        continue;
                drcpts[n++] = (DsnRecipient) {
                        .address = m->env.rcpts[i],
                        .status = r->dsn_status,
                        .diagnostic = r->dsn_diagnostic,
                };
        }
        if (n == 0)
                return 0;

        k = queue_read_headers(q, m->env.mid, &headers, &headers_len);
        if (k < 0)
                log_debug_errno(k, "MID %" PRIu64 ": cannot read headers for the DSN: %m", m->env.mid);

        info = (DsnInfo) {
                .reporting_mta = q->config->hostname,
                .sender = m->env.sender,
                .mid = m->env.mid,
                .arrival_usec = m->env.arrival_usec,
                .rcpts = drcpts,
                .n_rcpts = n,
                .headers = headers,
                .headers_len = headers_len,
        };
        k = dsn_build(&info, now, &text, &text_len);
        if (k < 0)
                return k;

        return queue_submit(q, "", (char * const[]) { m->env.sender, NULL }, text, text_len,
                            m->env.mid, "bounce", NULL);
}

/* Ends a round of outcomes: DSNs for what bounced, and messages whose
 * recipients are all final leave the spool. */
static void queue_finish_round(Queue *q, Message *touched, uint64_t now) {
        while (touched) {
                Message *m = touched;
                bool any = false;
                int k;

                touched = m->touched_next;
                m->touched = false;
                m->touched_next = NULL;

                for (size_t i = 0; i < m->env.n_rcpts; i++)
                        if (m->rcpts[i].dsn_pending)
                                any = true;
                if (any) {
                        k = queue_make_dsn(q, m, now);
                        if (k < 0)
                                log_error_errno(k, "MID %" PRIu64 ": failed to generate a DSN: %m",
                                                m->env.mid);
                        for (size_t i = 0; i < m->env.n_rcpts; i++)
                                rcpt_clear_dsn(&m->rcpts[i]);
                }

                if (m->n_final < m->env.n_rcpts)
                        continue;
                k = spool_remove(q->spool, m->env.mid);
                if (k < 0)
                        log_warning_errno(k, "MID %" PRIu64 ": failed to remove from the spool: %m",
                                          m->env.mid);
                log_mid_finished(m->env.mid, "done");
                message_free(m);
        }
}

/* A route lookup that failed: -ENXIO bounces every due recipient with
 * 5.1.2 (RFC 3463: bad destination system address), anything else defers
 * them. */
static void destination_route_failed(Queue *q, Destination *d, int error, const char *errtext) {
        _cleanup_free_ char *reply = NULL;
        Message *touched = NULL;
        uint64_t now = queue_now(q);
        QueueRcpt *r, *next;
        uint32_t rid;

        if (error == -ENXIO) {
                if (asprintf(&reply, "550 5.1.2 %s", errtext ?: "Host or domain name not found") < 0)
                        reply = NULL;
        } else if (asprintf(&reply, "451 4.4.3 %s", errtext ?: "Route lookup failed") < 0)
                reply = NULL;

        /* Only r leaves the due list in each step (to the heap, or final),
         * so next stays valid. */
        for (r = d->due_head; r; r = next) {
                next = r->dest_next;
                rid = r->rid;
                if (error == -ENXIO)
                        queue_bounce_rcpt(q, &touched, 0, r, "5.1.2", reply, reply);
                else {
                        Message *m = r->message;

                        rcpt_unpark(q, r);
                        r->state = QUEUE_RCPT_ACTIVE;   /* re-listed by the defer */
                        if (!queue_defer_rcpt(q, &touched, 0, r, reply, now))
                                log_delivery_delayed(0, m->env.mid, &rid, 1, r->last_reply);
                }
        }
        queue_finish_round(q, touched, now);
}

typedef struct JobGroup {
        Message *message;
        QueueRcpt **rcpts;
        size_t n;
        bool unreadable;                /* spool_open_data() failed: deferred */
} JobGroup;

static void job_groups_free(JobGroup *g, size_t n) {
        for (size_t i = 0; i < n; i++)
                free(g[i].rcpts);
        free(g);
}

static void job_context_free(JobContext *c) {
        if (!c)
                return;
        free(c->messages);
        free(c);
}

/* Builds and dispatches one job for d from the route result (consumed). */
static int destination_start_job(Queue *q, Destination *d, RouteResult *res) {
        const DestinationConfig *dc = config_find_destination(q->config, d->domain);
        size_t max_msgs = MAX(dc->max_messages_per_connection, QUEUE_BATCH_MIN);
        size_t max_rcpts = MAX(dc->max_recipients_per_message, QUEUE_BATCH_MIN);
        DeliveryJob *job = NULL;
        JobContext *ctx = NULL;
        JobGroup *groups = NULL;
        Message *touched = NULL;
        size_t n_groups = 0;
        uint64_t now = queue_now(q);
        int k = 0;

        groups = calloc(max_msgs, sizeof *groups);
        if (!groups) {
                k = -ENOMEM;
                goto finish;
        }

        /* Take the due recipients from the head of the list (the order they
         * became due) and pack them per message; a message with more than
         * max_rcpts recipients becomes several transactions (RFC 5321
         * 4.5.3.1.8 lets a server limit recipients per transaction). The
         * recipients of one message for one destination become due
         * together (one arrival, or one deferral and so one retry time),
         * so they sit next to each other: stopping at the first one that
         * would need one transaction too many keeps them together and
         * looks at no more than one job's worth of the list. */
        for (QueueRcpt *r = d->due_head; r; r = r->dest_next) {
                JobGroup *g = NULL;

                for (size_t i = 0; i < n_groups; i++)
                        if (groups[i].message == r->message && groups[i].n < max_rcpts) {
                                g = &groups[i];
                                break;
                        }
                if (!g) {
                        if (n_groups >= max_msgs)
                                break;
                        g = &groups[n_groups];
                        g->rcpts = calloc(max_rcpts, sizeof *g->rcpts);
                        if (!g->rcpts) {
                                k = -ENOMEM;
                                goto finish;
                        }
                        g->message = r->message;
                        n_groups++;
                }
                g->rcpts[g->n++] = r;
        }
        if (n_groups == 0)
                goto finish;

        job = calloc(1, sizeof *job);
        ctx = calloc(1, sizeof *ctx);
        if (!job || !ctx) {
                k = -ENOMEM;
                goto finish;
        }
        job->messages = calloc(n_groups, sizeof *job->messages);
        ctx->messages = calloc(n_groups, sizeof *ctx->messages);
        job->domain = strdup(d->domain);
        job->helo_name = strdup(q->config->hostname ?: QUEUE_LOCAL_DOMAIN);
        if (!job->messages || !ctx->messages || !job->domain || !job->helo_name) {
                k = -ENOMEM;
                goto finish;
        }
        for (size_t i = 0; i < n_groups; i++)
                job->messages[i].data_fd = -EBADF;

        job->dcid = spool_next_id(q->spool, SPOOL_ID_DCID);
        if (res->kind == ROUTE_MAILDIR)
                job->maildir = TAKE_PTR(res->directory);
        else {
                job->targets = TAKE_PTR(res->targets);
                job->n_targets = res->n_targets;
                res->n_targets = 0;
        }
        job->connect_timeout = q->config->queue.connect_timeout;
        job->command_timeout = q->config->queue.command_timeout;
        job->data_timeout = q->config->queue.data_timeout;

        for (size_t i = 0; i < n_groups; i++) {
                JobGroup *g = &groups[i];
                Message *m = g->message;
                DeliveryMessage *dm = &job->messages[job->n_messages];
                int fd;
                uint64_t off, size;

                k = spool_open_data(q->spool, m->env.mid, &fd, &off, &size);
                if (k < 0) {
                        /* The spool file is unreadable: keep the recipients
                         * and try again later rather than lose them. */
                        log_warning_errno(k, "MID %" PRIu64 ": cannot open spooled data: %m", m->env.mid);
                        g->unreadable = true;
                        for (size_t j = 0; j < g->n; j++) {
                                uint32_t rid = g->rcpts[j]->rid;

                                rcpt_unpark(q, g->rcpts[j]);
                                g->rcpts[j]->state = QUEUE_RCPT_ACTIVE;
                                if (!queue_defer_rcpt(q, &touched, 0, g->rcpts[j],
                                                      "451 4.3.0 Local error reading the spool", now))
                                        log_delivery_delayed(0, m->env.mid, &rid, 1,
                                                             g->rcpts[j]->last_reply);
                        }
                        k = 0;
                        continue;
                }
                dm->data_fd = fd;
                dm->data_offset = off;
                dm->data_size = size;
                dm->mid = m->env.mid;
                dm->sender = strdup(m->env.sender ?: "");
                dm->rcpts = calloc(g->n, sizeof *dm->rcpts);
                ctx->messages[job->n_messages] = m;
                job->n_messages++;
                if (!dm->sender || !dm->rcpts) {
                        k = -ENOMEM;
                        goto finish;
                }
                for (size_t j = 0; j < g->n; j++) {
                        dm->rcpts[j].rid = g->rcpts[j]->rid;
                        dm->rcpts[j].address = strdup(m->env.rcpts[g->rcpts[j]->rid]);
                        dm->rcpts[j].status = DELIVERY_PENDING;
                        dm->n_rcpts++;
                        if (!dm->rcpts[j].address) {
                                k = -ENOMEM;
                                goto finish;
                        }
                }
        }
        if (job->n_messages == 0)
                goto finish;

        /* Everything allocated: from here nothing fails. */
        for (size_t i = 0; i < n_groups; i++) {
                if (groups[i].unreadable)
                        continue;
                for (size_t j = 0; j < groups[i].n; j++) {
                        QueueRcpt *r = groups[i].rcpts[j];

                        rcpt_unpark(q, r);
                        r->state = QUEUE_RCPT_ACTIVE;
                }
        }
        ctx->queue = q;
        ctx->dest = d;
        job->userdata = TAKE_PTR(ctx);
        d->n_active++;
        q->n_active++;
        q->dispatch(TAKE_PTR(job), q->userdata);

finish:
        if (job) {
                job->userdata = NULL;
                delivery_job_free(job);
        }
        job_context_free(ctx);
        job_groups_free(groups, n_groups);
        queue_finish_round(q, touched, now);
        return k;
}

static void destination_route_done(int error, const char *errtext, RouteResult *result, void *userdata) {
        Destination *d = userdata;
        Queue *q = d->queue;
        int k;

        d->resolving = false;
        d->query = NULL;
        d->query_config = config_unref(d->query_config);

        if (q->stopped || !q->config) {
                /* Recipients stay pending for the next start (recovery). */
        } else if (error < 0)
                destination_route_failed(q, d, error, errtext);
        else if (result && destination_has_slot(q, d)) {
                k = destination_start_job(q, d, result);
                if (k < 0)
                        log_error_errno(k, "Queue: failed to start a delivery to %s: %m", d->domain);
        }
        /* The struct is the caller's; what is left in it is ours. */
        if (result)
                route_result_done(result);
        destination_check_idle(d);
        queue_kick(q);
}

static void destination_start_route(Queue *q, Destination *d) {
        ResolverQuery *query = NULL;
        int k;

        d->resolving = true;
        d->query_config = config_ref(q->config);
        k = route_resolve(q->resolver, q->config, d->domain, destination_route_done, d, &query);
        if (k < 0) {
                d->resolving = false;
                d->query_config = config_unref(d->query_config);
                destination_route_failed(q, d, k, k == -ENXIO ? NULL : "Route lookup failed");
                destination_check_idle(d);
                return;
        }
        /* The callback may already have run (static routes need no DNS). */
        if (d->resolving)
                d->query = query;
}

/* Moves d, which is on the ready list, to its end: destinations that
 * just got their turn come after those still waiting for one when the
 * global connection limit leaves room for only some. */
static void queue_ready_rotate(Queue *q, Destination *d) {
        assert(d->ready);
        if (q->ready_tail == d)
                return;
        if (d->ready_prev)
                d->ready_prev->ready_next = d->ready_next;
        else
                q->ready_head = d->ready_next;
        d->ready_next->ready_prev = d->ready_prev;
        d->ready_prev = q->ready_tail;
        d->ready_next = NULL;
        q->ready_tail->ready_next = d;
        q->ready_tail = d;
}

static int queue_on_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Queue *q = userdata;
        uint64_t now, next = USEC_INFINITY;
        int enabled = SD_EVENT_OFF;
        Destination *d, *dnext;
        size_t budget;

        if (q->stopped || !q->config)
                return 0;

        now = queue_now(q);
        (void) queue_promote(q, now, now);

        /* Only destinations with due recipients. A lookup or job started
         * here may change the list (a static route answers at once and
         * starts the job, which can empty d's due list): d's successor is
         * taken first, no destination is freed before the end of the pass,
         * and the budget of one visit per destination ready at the start
         * bounds the walk whatever the list does meanwhile. */
        budget = q->n_ready;
        for (d = q->ready_head; d && budget > 0; d = dnext, budget--) {
                uint32_t qmax = q->config->queue.max_connections;

                dnext = d->ready_next;
                if (qmax > 0 && q->n_active >= qmax)
                        break;
                /* Left the list meanwhile (its ready_next is NULL now):
                 * the kick that came with that change brings another pass. */
                if (!d->ready)
                        break;
                if (d->resolving || !destination_has_slot(q, d))
                        continue;
                destination_start_route(q, d);
                if (d->ready)
                        queue_ready_rotate(q, d);
        }
        queue_reap_idle(q);

        if (q->n_waiting > 0)
                next = q->waiting[0]->next_attempt;
        /* A pass may itself make things due (a synchronous route result
         * re-kicks the timer); only arm for the future if nothing did. */
        (void) sd_event_source_get_enabled(q->timer, &enabled);
        if (enabled == SD_EVENT_OFF)
                queue_arm(q, next);
        else {
                uint64_t t;

                if (sd_event_source_get_time(q->timer, &t) >= 0 && t > next)
                        queue_arm(q, next);
        }
        return 0;
}

/* ---- public ---- */

int queue_new(sd_event *e, Mailbox *mailbox, Spool *spool, Resolver *resolver,
              queue_dispatch_fn_t dispatch, void *userdata, Queue **ret) {
        Queue *q;
        int k;

        assert(e);
        assert(spool);
        assert(dispatch);
        assert(ret);

        q = calloc(1, sizeof *q);
        if (!q)
                return -ENOMEM;
        q->event = sd_event_ref(e);
        q->mailbox = mailbox;
        q->spool = spool;
        q->resolver = resolver;
        q->dispatch = dispatch;
        q->userdata = userdata;

        k = sd_event_add_time(e, &q->timer, CLOCK_REALTIME, USEC_INFINITY, QUEUE_TIMER_ACCURACY_USEC,
                              queue_on_timer, q);
        if (k < 0) {
                queue_free(q);
                return k;
        }
        (void) sd_event_source_set_description(q->timer, "queue-timer");
        (void) sd_event_source_set_enabled(q->timer, SD_EVENT_OFF);

        *ret = q;
        return 0;
}

Queue *queue_free(Queue *q) {
        if (!q)
                return NULL;

        /* Commits still in the flusher complete later: orphan them so their
         * completion only frees its own memory. */
        while (q->bounces) {
                BounceCommit *b = q->bounces;

                q->bounces = b->next;
                b->queue = NULL;
                b->prev = b->next = NULL;
        }
        while (q->messages_head)
                message_free(q->messages_head);
        /* Every destination goes below, idle or not. */
        while (q->idle) {
                Destination *d = q->idle;

                q->idle = d->idle_next;
                d->idle_next = NULL;
                d->idle = false;
        }
        while (q->destinations)
                destination_free(q->destinations);
        free(q->waiting);
        sd_event_source_disable_unref(q->timer);
        config_unref(q->config);
        sd_event_unref(q->event);
        free(q);
        return NULL;
}

void queue_set_config(Queue *q, Config *c) {
        Config *old = q->config;

        q->config = c ? config_ref(c) : NULL;
        config_unref(old);
        queue_kick(q);
}

static int queue_recover_one(SpoolMessage *sm, void *userdata) {
        Queue *q = userdata;
        Message *m = NULL;
        int k;

        for (Message *i = q->messages_head; i; i = i->next)
                if (i->env.mid == sm->env.mid) {
                        spool_message_free(sm);
                        return 0;
                }

        k = message_new(q, &sm->env, sm->data_size, sm->rcpt_state, 0, &m);
        spool_message_free(sm);
        if (k < 0)
                return k;

        if (m->n_final == m->env.n_rcpts) {
                /* Crashed between the last outcome and the removal. */
                k = spool_remove(q->spool, m->env.mid);
                if (k < 0)
                        log_warning_errno(k, "MID %" PRIu64 ": failed to remove from the spool: %m",
                                          m->env.mid);
                log_mid_finished(m->env.mid, "done");
                message_free(m);
        }
        return 0;
}

int queue_recover(Queue *q) {
        int k;

        k = spool_recover(q->spool, queue_recover_one, q);
        queue_kick(q);
        return k;
}

int queue_add(Queue *q, const Envelope *env, uint64_t data_size) {
        Envelope copy = {};
        Message *m;
        int k;

        k = envelope_copy(env, &copy);
        if (k < 0)
                return k;
        k = message_new(q, &copy, data_size, NULL, 0, &m);
        envelope_done(&copy);
        if (k < 0)
                return k;
        if (m->env.n_rcpts == 0) {
                (void) spool_remove(q->spool, m->env.mid);
                log_mid_finished(m->env.mid, "done");
                message_free(m);
                return 0;
        }
        queue_kick(q);
        return 0;
}

typedef enum JobOutcome {
        JOB_OUTCOME_DELIVERED,
        JOB_OUTCOME_DELAYED,
        JOB_OUTCOME_BOUNCED,            /* logged one by one when it bounced */
} JobOutcome;

/* Logs the recipients of dm that share an outcome and reply in one line,
 * as the mail log groups them. */
static void queue_log_grouped(uint64_t dcid, uint64_t mid, size_t n, const JobOutcome *outcome,
                              const uint32_t *rid, char **reply, JobOutcome which,
                              bool *logged, uint32_t *rids, const char *via) {
        for (size_t i = 0; i < n; i++) {
                size_t k = 0;

                if (logged[i] || outcome[i] != which)
                        continue;
                for (size_t j = i; j < n; j++)
                        if (!logged[j] && outcome[j] == which && streq_ptr(reply[j], reply[i])) {
                                logged[j] = true;
                                rids[k++] = rid[j];
                        }
                if (which == JOB_OUTCOME_DELIVERED)
                        log_delivery_done(dcid, mid, rids, k, reply[i], via);
                else
                        log_delivery_delayed(dcid, mid, rids, k, reply[i]);
        }
}

/* Applies the outcomes of one transaction of a job. */
static void queue_message_done(Queue *q, Message **touched, uint64_t dcid, DeliveryMessage *dm,
                               Message *m, uint64_t now, const char *via) {
        _cleanup_free_ JobOutcome *outcome = NULL;
        _cleanup_free_ uint32_t *rid = NULL, *rids = NULL;
        _cleanup_free_ char **reply = NULL;
        _cleanup_free_ bool *logged = NULL;
        size_t n = dm->n_rcpts;
        bool can_log;

        outcome = calloc(n ?: 1, sizeof *outcome);
        rid = calloc(n ?: 1, sizeof *rid);
        rids = calloc(n ?: 1, sizeof *rids);
        reply = calloc(n ?: 1, sizeof *reply);
        logged = calloc(n ?: 1, sizeof *logged);
        can_log = outcome && rid && rids && reply && logged;

        for (size_t j = 0; j < n; j++) {
                DeliveryRcpt *dr = &dm->rcpts[j];
                QueueRcpt *r = &m->rcpts[dr->rid];
                JobOutcome o;
                char buf[16];
                int k;

                assert(dr->rid < m->env.n_rcpts);
                assert(r->state == QUEUE_RCPT_ACTIVE);
                if (dr->reply)
                        (void) free_and_strdup(&r->last_reply, dr->reply);

                switch (dr->status) {
                case DELIVERY_DELIVERED:
                        r->state = QUEUE_RCPT_DELIVERED;
                        r->dest = NULL;
                        m->n_final++;
                        assert(q->n_live > 0);
                        q->n_live--;
                        /* The last recipient needs no record: the message
                         * leaves the spool at the end of this round, which
                         * says the same with one file operation instead of
                         * a create, a write and an unlink. (Records are not
                         * synced either way: a crash in between delivers
                         * again, never loses.) */
                        k = m->n_final < m->env.n_rcpts ?
                                spool_record(q->spool, m->env.mid, r->rid, SPOOL_RCPT_DELIVERED) : 0;
                        if (k < 0)
                                log_warning_errno(k, "MID %" PRIu64 ": failed to record RID %" PRIu32 " as delivered: %m",
                                                  m->env.mid, r->rid);
                        queue_touch(touched, m);
                        o = JOB_OUTCOME_DELIVERED;
                        break;
                case DELIVERY_FAILED:
                        queue_bounce_rcpt(q, touched, dcid, r,
                                          reply_status(dr->reply, QUEUE_STATUS_PERM_DEFAULT, buf, sizeof buf),
                                          dr->reply, dr->reply);
                        o = JOB_OUTCOME_BOUNCED;
                        break;
                case DELIVERY_DEFERRED:
                default:
                        /* PENDING here means the worker gave up before
                         * trying: a temporary failure like any other. */
                        if (!dr->reply)
                                (void) free_and_strdup(&r->last_reply, "451 4.3.0 Delivery not attempted");
                        o = queue_defer_rcpt(q, touched, dcid, r, NULL, now) ?
                                JOB_OUTCOME_BOUNCED : JOB_OUTCOME_DELAYED;
                        break;
                }
                if (can_log) {
                        outcome[j] = o;
                        rid[j] = dr->rid;
                        reply[j] = r->last_reply;
                }
        }

        if (!can_log)
                return;
        queue_log_grouped(dcid, m->env.mid, n, outcome, rid, reply, JOB_OUTCOME_DELIVERED, logged, rids, via);
        queue_log_grouped(dcid, m->env.mid, n, outcome, rid, reply, JOB_OUTCOME_DELAYED, logged, rids, via);
}

void queue_job_done(Queue *q, DeliveryJob *job) {
        JobContext *ctx = job->userdata;
        Message *touched = NULL;
        uint64_t now = queue_now(q);
        Destination *d;

        assert(ctx && ctx->queue == q);
        d = ctx->dest;
        assert(d->n_active > 0 && q->n_active > 0);
        d->n_active--;
        q->n_active--;

        /* How the bodies went out, for the mail log. */
        const char *via = job->maildir ? "maildir" :
                          job->sendfile_used ? "SSL_sendfile" :
                          job->tls_used ? "SSL_write" : "sendfile";
        for (size_t i = 0; i < job->n_messages; i++)
                queue_message_done(q, &touched, job->dcid, &job->messages[i], ctx->messages[i], now, via);

        queue_finish_round(q, touched, now);

        job_context_free(ctx);
        job->userdata = NULL;
        delivery_job_free(job);
        destination_check_idle(d);
        queue_kick(q);
}

/* Makes every pending recipient due now; returns how many were waiting for
 * a retry time after now. Those move to the due lists in the order of
 * their retry times. */
static size_t queue_flush_all(Queue *q) {
        size_t n;

        n = queue_promote(q, queue_now(q), USEC_INFINITY);
        for (Destination *d = q->ready_head; d; d = d->ready_next)
                for (QueueRcpt *r = d->due_head; r; r = r->dest_next)
                        r->next_attempt = 0;
        queue_kick(q);
        return n;
}

void queue_flush(Queue *q) {
        (void) queue_flush_all(q);
}

void queue_stop(Queue *q) {
        q->stopped = true;
        if (q->timer)
                (void) sd_event_source_set_enabled(q->timer, SD_EVENT_OFF);
}

size_t queue_n_messages(const Queue *q) {
        return q->n_messages;
}

size_t queue_n_active(const Queue *q) {
        return q->n_active;
}

/* ---- administration ---- */

static const char *rcpt_state_name(QueueRcptState s) {
        switch (s) {
        case QUEUE_RCPT_PENDING:
                return "pending";
        case QUEUE_RCPT_ACTIVE:
                return "active";
        case QUEUE_RCPT_DELIVERED:
                return "delivered";
        case QUEUE_RCPT_BOUNCED:
                return "bounced";
        }
        return "unknown";
}

static Message *queue_find_message(Queue *q, uint64_t mid) {
        for (Message *m = q->messages_head; m; m = m->next)
                if (m->env.mid == mid)
                        return m;
        return NULL;
}

/* One message in the public view; rcpts is scratch space for n_rcpts. */
static int queue_describe(const Message *m, QueueRcptInfo *rcpts,
                          int (*cb)(const QueueMessageInfo *info, void *userdata), void *userdata) {
        QueueMessageInfo info = {
                .mid = m->env.mid,
                .sender = m->env.sender ?: "",
                .arrival = m->env.arrival_usec,
                .size = m->data_size,
                .rcpts = rcpts,
                .n_rcpts = m->env.n_rcpts,
        };

        for (size_t i = 0; i < m->env.n_rcpts; i++) {
                const QueueRcpt *r = &m->rcpts[i];

                rcpts[i] = (QueueRcptInfo) {
                        .address = m->env.rcpts[i] ?: "",
                        .state = rcpt_state_name(r->state),
                        .attempts = r->attempts,
                        /* Only a waiting recipient has a next attempt; 0
                         * there means "due now". */
                        .next_attempt = r->state == QUEUE_RCPT_PENDING ? r->next_attempt : 0,
                        .last_reply = r->last_reply,
                };
        }
        return cb(&info, userdata);
}

static int message_cmp(const void *a, const void *b) {
        const Message *x = *(Message * const *) a, *y = *(Message * const *) b;

        return x->env.mid < y->env.mid ? -1 : x->env.mid > y->env.mid;
}

int queue_foreach(Queue *q, int (*cb)(const QueueMessageInfo *info, void *userdata), void *userdata) {
        _cleanup_free_ Message **list = NULL;
        _cleanup_free_ QueueRcptInfo *rcpts = NULL;
        size_t n = 0, max_rcpts = 1;
        int k;

        if (!q || !cb)
                return -EINVAL;
        if (q->n_messages == 0)
                return 0;

        /* A snapshot: the callback must not change the queue, but the
         * list is ordered by MID (recovery and DSNs append out of order). */
        list = calloc(q->n_messages, sizeof *list);
        if (!list)
                return -ENOMEM;
        for (Message *m = q->messages_head; m && n < q->n_messages; m = m->next) {
                list[n++] = m;
                max_rcpts = MAX(max_rcpts, m->env.n_rcpts);
        }
        qsort(list, n, sizeof *list, message_cmp);

        rcpts = calloc(max_rcpts, sizeof *rcpts);
        if (!rcpts)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                k = queue_describe(list[i], rcpts, cb, userdata);
                if (k < 0)
                        return k;
        }
        return 0;
}

int queue_get(Queue *q, uint64_t mid, int (*cb)(const QueueMessageInfo *info, void *userdata), void *userdata) {
        _cleanup_free_ QueueRcptInfo *rcpts = NULL;
        Message *m;

        if (!q || !cb)
                return -EINVAL;
        m = queue_find_message(q, mid);
        if (!m)
                return -ENOENT;
        rcpts = calloc(MAX(m->env.n_rcpts, (size_t) 1), sizeof *rcpts);
        if (!rcpts)
                return -ENOMEM;
        return queue_describe(m, rcpts, cb, userdata);
}

int queue_delete(Queue *q, uint64_t mid) {
        Message *m;
        int k;

        if (!q)
                return -EINVAL;
        m = queue_find_message(q, mid);
        if (!m)
                return -ENOENT;
        /* A worker holds the spool fd and will report outcomes for these
         * recipients: the message must outlive that job. */
        for (size_t i = 0; i < m->env.n_rcpts; i++)
                if (m->rcpts[i].state == QUEUE_RCPT_ACTIVE)
                        return -EBUSY;
        /* Still on a bounce round's list? Only during queue_finish_round(),
         * which never yields to the loop: cannot be the case here. */
        assert(!m->touched);

        k = spool_remove(q->spool, mid);
        if (k < 0 && k != -ENOENT)
                return k;
        log_mid_finished(mid, "deleted");
        message_free(m);        /* unlinks its pending recipients */
        queue_kick(q);          /* empty destinations are reaped by the pass */
        return 0;
}

size_t queue_flush_count(Queue *q) {
        if (!q)
                return 0;
        return queue_flush_all(q);
}
