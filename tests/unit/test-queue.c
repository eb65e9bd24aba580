/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Unit tests for the delivery queue: the real Queue on a real sd-event
 * loop with a real Spool in a temporary directory, a real Resolver (static
 * routes only, so no DNS answer is ever needed) and the real DSN builder.
 * The dispatch function stands in for the worker pool: it scripts each
 * recipient's outcome from its local part, and a thread posts the job back
 * through the Mailbox after a short delay, as a worker would. The
 * administration calls (list, show, delete, flush) run against the same
 * queue and spool.
 */

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-event.h>

#include "config.h"
#include "log.h"
#include "queue.h"
#include "resolver.h"
#include "smtp-client.h"
#include "spool.h"
#include "util/macro.h"
#include "util/mailbox.h"
#include "util/parse.h"

#include "tap.h"

/* How long a fake worker holds a job before reporting back: long enough
 * that a queue ignoring the connection limit would start a second job. */
#define FAKE_WORKER_DELAY_USEC (20 * USEC_PER_MSEC)
#define TEST_RETRY_MIN (100 * USEC_PER_MSEC)
#define TEST_RETRY_MAX (400 * USEC_PER_MSEC)
#define TEST_LIFETIME (3600 * USEC_PER_SEC)
#define WAIT_DEFAULT_USEC (3 * USEC_PER_SEC)

#define SEEN_JOBS_MAX 64
#define SEEN_MSGS_MAX 8
#define SEEN_RCPTS_MAX 8
#define ADDR_MAX 64
#define ATTEMPT_TABLE_MAX 32
#define ATTEMPTS_MAX 8

typedef struct SeenMessage {
        uint64_t mid;
        char sender[ADDR_MAX];
        size_t n_rcpts;
        uint32_t rids[SEEN_RCPTS_MAX];
        char rcpts[SEEN_RCPTS_MAX][ADDR_MAX];
        bool data_ok;                   /* fd open, size matches */
        char *data;                     /* the spooled data (first 8 KiB) */
} SeenMessage;

typedef struct SeenJob {
        uint64_t dcid;
        char domain[ADDR_MAX];
        bool maildir;
        size_t n_targets;
        uint16_t port0;
        char helo[ADDR_MAX];
        size_t n_messages;
        SeenMessage messages[SEEN_MSGS_MAX];
} SeenJob;

typedef struct Attempts {
        char address[ADDR_MAX];
        unsigned n;
        uint64_t when[ATTEMPTS_MAX];    /* CLOCK_MONOTONIC usec */
} Attempts;

static sd_event *event;
static Mailbox *mailbox;
static Spool *spool;
static Resolver *resolver;
static Queue *queue;
static Config *config;
static char tmpdir[] = "/tmp/test-queue-XXXXXX";
static char spooldir[PATH_MAX];
static char maildir_a[PATH_MAX];

static SeenJob seen[SEEN_JOBS_MAX];
static size_t n_seen;
static Attempts attempts[ATTEMPT_TABLE_MAX];
static size_t n_attempts;
static unsigned active_b, max_active_b, active_all;
static unsigned later_fail_until = 3;   /* "later" fails this many times */
static bool dsn_fail;                   /* 5xx for messages from <> */
static bool hold_ok;                    /* "hold" recipients succeed */

static uint64_t now_mono(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / 1000;
}

static uint64_t now_real(void) {
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        return (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / 1000;
}

static Attempts *attempts_get(const char *address) {
        for (size_t i = 0; i < n_attempts; i++)
                if (streq(attempts[i].address, address))
                        return &attempts[i];
        if (n_attempts >= ATTEMPT_TABLE_MAX)
                return NULL;
        snprintf(attempts[n_attempts].address, ADDR_MAX, "%s", address);
        return &attempts[n_attempts++];
}

static void reset_seen(void) {
        for (size_t i = 0; i < n_seen; i++)
                for (size_t j = 0; j < seen[i].n_messages && j < SEEN_MSGS_MAX; j++)
                        free(seen[i].messages[j].data);
        memset(seen, 0, sizeof seen);
        n_seen = 0;
        memset(attempts, 0, sizeof attempts);
        n_attempts = 0;
        max_active_b = 0;
}

/* The scripted outcome of one recipient, by local part. */
static void script(const char *sender, const char *address, DeliveryRcpt *r) {
        Attempts *a = attempts_get(address);
        unsigned n = 0;
        const char *reply = "250 2.0.0 Ok";
        DeliveryStatus st = DELIVERY_DELIVERED;

        if (a) {
                if (a->n < ATTEMPTS_MAX)
                        a->when[a->n] = now_mono();
                n = ++a->n;
        }

        if (isempty(sender)) {
                if (dsn_fail) {
                        st = DELIVERY_FAILED;
                        reply = "550 5.1.1 mailbox unavailable";
                }
        } else if (strncmp(address, "bad", 3) == 0) {
                st = DELIVERY_FAILED;
                reply = "550 5.1.1 no such user";
        } else if (strncmp(address, "later", 5) == 0) {
                if (n <= later_fail_until) {
                        st = DELIVERY_DEFERRED;
                        reply = "451 4.7.1 try later";
                }
        } else if (strncmp(address, "once", 4) == 0) {
                if (n <= 1) {
                        st = DELIVERY_DEFERRED;
                        reply = "451 4.3.2 busy";
                }
        } else if (strncmp(address, "hold", 4) == 0) {
                if (!hold_ok) {
                        st = DELIVERY_DEFERRED;
                        reply = "421 4.4.2 connection dropped";
                }
        }
        r->status = st;
        r->reply = strdup(reply);
}

static void fake_worker_done(void *userdata) {
        DeliveryJob *job = userdata;

        if (streq(job->domain, "b.test"))
                active_b--;
        active_all--;
        queue_job_done(queue, job);
}

static void *fake_worker_thread(void *userdata) {
        DeliveryJob *job = userdata;

        usleep(FAKE_WORKER_DELAY_USEC);
        if (mailbox_post(mailbox, fake_worker_done, job) < 0)
                abort();
        return NULL;
}

static void record_message(SeenMessage *s, const DeliveryMessage *m) {
        char *data;
        size_t want;
        ssize_t n;
        struct stat st;

        s->mid = m->mid;
        snprintf(s->sender, ADDR_MAX, "%s", m->sender);
        s->n_rcpts = m->n_rcpts;
        for (size_t k = 0; k < m->n_rcpts && k < SEEN_RCPTS_MAX; k++) {
                s->rids[k] = m->rcpts[k].rid;
                snprintf(s->rcpts[k], ADDR_MAX, "%s", m->rcpts[k].address);
        }
        s->data_ok = m->data_fd >= 0 && fstat(m->data_fd, &st) >= 0 &&
                     (uint64_t) st.st_size >= m->data_offset + m->data_size;

        want = (size_t) MIN(m->data_size, (uint64_t) 8192);
        data = calloc(1, want + 1);
        if (!data)
                return;
        n = pread(m->data_fd, data, want, (off_t) m->data_offset);
        if (n < 0)
                n = 0;
        data[n] = '\0';
        s->data = data;
}

static void test_dispatch(DeliveryJob *job, void *userdata) {
        SeenJob *s = n_seen < SEEN_JOBS_MAX ? &seen[n_seen++] : NULL;
        pthread_t t;

        if (s) {
                s->dcid = job->dcid;
                snprintf(s->domain, ADDR_MAX, "%s", job->domain);
                snprintf(s->helo, ADDR_MAX, "%s", job->helo_name ?: "");
                s->maildir = job->maildir != NULL;
                s->n_targets = job->n_targets;
                if (job->n_targets > 0)
                        s->port0 = sockaddr_port((const struct sockaddr *) &job->targets[0].addr);
                s->n_messages = job->n_messages;
                for (size_t i = 0; i < job->n_messages && i < SEEN_MSGS_MAX; i++)
                        record_message(&s->messages[i], &job->messages[i]);
        }

        for (size_t i = 0; i < job->n_messages; i++)
                for (size_t k = 0; k < job->messages[i].n_rcpts; k++)
                        script(job->messages[i].sender, job->messages[i].rcpts[k].address,
                               &job->messages[i].rcpts[k]);

        if (streq(job->domain, "b.test")) {
                active_b++;
                max_active_b = MAX(max_active_b, active_b);
        }
        active_all++;

        if (pthread_create(&t, NULL, fake_worker_thread, job) != 0)
                abort();
        pthread_detach(t);
}

/* Runs the loop until pred() holds or the time is up. */
static bool run_until(bool (*pred)(void), uint64_t timeout) {
        uint64_t end = now_mono() + timeout;

        while (!pred()) {
                if (now_mono() > end)
                        return false;
                if (sd_event_run(event, 10 * USEC_PER_MSEC) < 0)
                        return false;
        }
        return true;
}

static void run_for(uint64_t usec) {
        uint64_t end = now_mono() + usec;

        while (now_mono() < end)
                (void) sd_event_run(event, 10 * USEC_PER_MSEC);
}

static bool queue_idle(void) {
        return queue_n_messages(queue) == 0 && queue_n_active(queue) == 0 && active_all == 0;
}

static bool no_active(void) {
        return queue_n_active(queue) == 0 && active_all == 0;
}

static size_t spool_files(void) {
        return spool_n_messages(spool);
}

/* Files a closed spool left on disk (segments, logs, message files). */
static size_t spool_disk_entries(void) {
        static const char * const subdirs[] = { "seg", "msg" };
        size_t n = 0;

        for (size_t i = 0; i < ELEMENTSOF(subdirs); i++) {
                char path[PATH_MAX + 8];
                struct dirent *de;
                DIR *d;

                snprintf(path, sizeof path, "%s/%s", spooldir, subdirs[i]);
                d = opendir(path);
                if (!d)
                        continue;
                while ((de = readdir(d)))
                        if (de->d_name[0] != '.')
                                n++;
                closedir(d);
        }
        return n;
}

static bool committed;
static int commit_error;

static void on_commit(void *userdata, int error) {
        committed = true;
        commit_error = error;
}

static bool is_committed(void) {
        return committed;
}

/* Spools a message like a session would, then hands it to the queue. */
static uint64_t spool_message(const char *sender, const char * const *rcpts, uint64_t arrival) {
        static const char body[] =
                "From: Sender <sender@s.test>\r\n"
                "To: rcpt@example.test\r\n"
                "Subject: queue test\r\n"
                "Message-ID: <queue-test@s.test>\r\n"
                "\r\n"
                "Hello.\r\n"
                "..leading dot\r\n";
        _cleanup_strv_free_ char **list = NULL;
        SpoolWriter *w = NULL;
        Envelope env = {};
        size_t n = 0;
        uint64_t size;

        while (rcpts[n])
                n++;
        list = calloc(n + 1, sizeof(char *));
        if (!list)
                return 0;
        for (size_t i = 0; i < n; i++)
                if (!(list[i] = strdup(rcpts[i])))
                        return 0;

        env = (Envelope) {
                .mid = spool_next_id(spool, SPOOL_ID_MID),
                .icid = 1,
                .arrival_usec = arrival ?: now_real(),
                .sender = (char *) sender,
                .rcpts = list,
                .n_rcpts = n,
                .listener = (char *) "inbound",
                .client_ip = (char *) "127.0.0.1",
                .helo = (char *) "client.test",
        };
        if (spool_writer_new(spool, &env, &w) < 0)
                return 0;
        if (spool_writer_write(w, body, sizeof body - 1) < 0) {
                spool_writer_abort(w);
                return 0;
        }
        size = spool_writer_size(w);
        committed = false;
        if (spool_writer_commit(w, mailbox, on_commit, NULL) < 0)
                return 0;
        if (!run_until(is_committed, WAIT_DEFAULT_USEC) || commit_error < 0)
                return 0;
        if (queue_add(queue, &env, size) < 0)
                return 0;
        return env.mid;
}

static const SeenJob *find_job(const char *domain, size_t nth) {
        for (size_t i = 0; i < n_seen; i++)
                if (streq(seen[i].domain, domain) && nth-- == 0)
                        return &seen[i];
        return NULL;
}

static size_t count_jobs(const char *domain) {
        size_t n = 0;

        for (size_t i = 0; i < n_seen; i++)
                if (streq(seen[i].domain, domain))
                        n++;
        return n;
}

/* ---- configuration ---- */

static int add_route(Config *c, const char *domain, RouteKind kind, const char *host,
                     uint16_t port, const char *dir) {
        RouteConfig *routes, *rc;

        routes = realloc(c->routes, (c->n_routes + 1) * sizeof *routes);
        if (!routes)
                return -ENOMEM;
        c->routes = routes;
        rc = &routes[c->n_routes];
        *rc = (RouteConfig) { .kind = kind };
        rc->domain = strdup(domain);
        if (!rc->domain)
                return -ENOMEM;
        if (kind == ROUTE_MAILDIR) {
                rc->directory = strdup(dir);
                if (!rc->directory)
                        return -ENOMEM;
        } else {
                rc->hosts = calloc(1, sizeof *rc->hosts);
                if (!rc->hosts)
                        return -ENOMEM;
                rc->hosts[0].host = strdup(host);
                rc->hosts[0].port = port;
                if (!rc->hosts[0].host)
                        return -ENOMEM;
                rc->n_hosts = 1;
        }
        c->n_routes++;
        return 0;
}

static int add_destination(Config *c, const char *domain, uint32_t conns, uint32_t msgs, uint32_t rcpts) {
        DestinationConfig *d;

        d = realloc(c->destinations, (c->n_destinations + 1) * sizeof *d);
        if (!d)
                return -ENOMEM;
        c->destinations = d;
        d[c->n_destinations] = (DestinationConfig) {
                .domain = strdup(domain),
                .max_connections = conns,
                .max_messages_per_connection = msgs,
                .max_recipients_per_message = rcpts,
        };
        if (!d[c->n_destinations].domain)
                return -ENOMEM;
        c->n_destinations++;
        return 0;
}

/* The built-in defaults, plus: a.test and s.test (the senders' domain) to
 * maildir, b.test and c.test to a literal address; b.test limited to one
 * connection of at most 3 transactions of at most 2 recipients. */
static int make_config(Config **ret) {
        Config *c = NULL;
        int r;

        r = config_new_default(tmpdir, &c);
        if (r < 0)
                return r;
        c->queue.retry_min = TEST_RETRY_MIN;
        c->queue.retry_max = TEST_RETRY_MAX;
        c->queue.lifetime = TEST_LIFETIME;
        c->queue.max_connections = 20;
        c->destinations[0].max_connections = 5;
        c->destinations[0].max_messages_per_connection = 10;
        c->destinations[0].max_recipients_per_message = 100;
        if ((r = add_route(c, "a.test", ROUTE_MAILDIR, NULL, 0, maildir_a)) < 0 ||
            (r = add_route(c, "s.test", ROUTE_MAILDIR, NULL, 0, maildir_a)) < 0 ||
            (r = add_route(c, "b.test", ROUTE_SMTP, "127.0.0.1", 1, NULL)) < 0 ||
            (r = add_route(c, "c.test", ROUTE_SMTP, "127.0.0.1", 1, NULL)) < 0 ||
            (r = add_destination(c, "b.test", 1, 3, 2)) < 0) {
                config_unref(c);
                return r;
        }
        *ret = c;
        return 0;
}

static int start_queue(void) {
        int r;

        r = queue_new(event, mailbox, spool, resolver, test_dispatch, NULL, &queue);
        if (r < 0)
                return r;
        queue_set_config(queue, config);
        return 0;
}

/* ---- cases ---- */

static void test_grouping(void) {
        const char *rcpts[] = { "ok1@a.test", "ok2@B.test", "ok3@a.test", NULL };
        const SeenJob *ja, *jb;
        uint64_t mid;

        reset_seen();
        mid = spool_message("sender@s.test", rcpts, 0);
        ok(mid > 0, "grouping: message spooled and queued");
        is_int(queue_n_messages(queue), 1, "grouping: one message queued");
        ok(run_until(queue_idle, WAIT_DEFAULT_USEC), "grouping: all recipients delivered");
        is_int(n_seen, 2, "grouping: two jobs for two domains");

        ja = find_job("a.test", 0);
        jb = find_job("b.test", 0);
        ok(ja && jb, "grouping: one job per domain (domain lowercased)");
        if (!ja || !jb)
                return;
        ok(ja->maildir && ja->n_targets == 0, "grouping: a.test job goes to the maildir route");
        ok(!jb->maildir && jb->n_targets >= 1 && jb->port0 == 1,
           "grouping: b.test job targets the static route 127.0.0.1:1");
        is_str(ja->helo, config->hostname, "grouping: helo name is the configured hostname");
        ok(ja->dcid != jb->dcid && ja->dcid > 0 && jb->dcid > 0, "grouping: distinct DCIDs");
        is_int(ja->n_messages, 1, "grouping: a.test job carries one transaction");
        is_int(ja->messages[0].mid, mid, "grouping: a.test transaction is the MID");
        is_int(ja->messages[0].n_rcpts, 2, "grouping: a.test gets both of its recipients");
        ok(ja->messages[0].rids[0] == 0 && ja->messages[0].rids[1] == 2,
           "grouping: a.test RIDs are 0 and 2");
        is_str(ja->messages[0].rcpts[1], "ok3@a.test", "grouping: RID 2 address");
        is_int(jb->messages[0].n_rcpts, 1, "grouping: b.test gets one recipient");
        is_int(jb->messages[0].rids[0], 1, "grouping: b.test RID is 1");
        is_str(jb->messages[0].sender, "sender@s.test", "grouping: sender passed on");
        ok(ja->messages[0].data_ok && ja->messages[0].data &&
           strstr(ja->messages[0].data, "Subject: queue test\r\n"),
           "grouping: the job's data fd reads the spooled message");
        is_int(spool_files(), 0, "grouping: message removed from the spool when done");
}

static void test_concurrency_batching(void) {
        const char *one[] = { "ok@b.test", NULL };
        const char *five[] = { "ok1@b.test", "ok2@b.test", "ok3@b.test", "ok4@b.test", "ok5@b.test", NULL };
        size_t total = 0, max_batch = 0, splits = 0, rcpts_five = 0;
        uint64_t mid5 = 0;
        bool all_ok = true, limits_ok = true;

        reset_seen();
        for (unsigned i = 0; i < 7; i++)
                all_ok = all_ok && spool_message("sender@s.test", one, 0) > 0;
        mid5 = spool_message("sender@s.test", five, 0);
        ok(all_ok && mid5 > 0, "limits: 8 messages spooled for b.test");
        ok(run_until(queue_idle, 2 * WAIT_DEFAULT_USEC), "limits: all delivered");
        is_int(max_active_b, 1, "limits: never more than max_connections=1 job for b.test");
        ok(count_jobs("b.test") >= 4, "limits: 8 messages (10 transactions) need >= 4 connections (got %zu)",
           count_jobs("b.test"));

        for (size_t i = 0; i < n_seen; i++) {
                const SeenJob *j = &seen[i];

                max_batch = MAX(max_batch, j->n_messages);
                if (j->n_messages > 3)
                        limits_ok = false;
                for (size_t k = 0; k < j->n_messages && k < SEEN_MSGS_MAX; k++) {
                        const SeenMessage *m = &j->messages[k];

                        total += m->n_rcpts;
                        if (m->n_rcpts > 2)
                                limits_ok = false;
                        if (m->mid == mid5) {
                                splits++;
                                rcpts_five += m->n_rcpts;
                        }
                }
        }
        ok(limits_ok, "limits: no job over 3 transactions, no transaction over 2 recipients");
        is_int(max_batch, 3, "limits: batches fill up to max_messages_per_connection=3");
        is_int(splits, 3, "limits: 5 recipients split into 3 transactions of the same MID");
        is_int(rcpts_five, 5, "limits: the split transactions carry all 5 recipients");
        is_int(total, 12, "limits: every recipient delivered exactly once");
        is_int(spool_files(), 0, "limits: spool empty afterwards");
}

static void test_retry_backoff(void) {
        const char *once[] = { "once@c.test", NULL };
        const char *later[] = { "later@c.test", NULL };
        const Attempts *a;
        uint64_t gap1, gap2, gap3;

        reset_seen();
        later_fail_until = 3;
        ok(spool_message("sender@s.test", once, 0) > 0, "retry: message spooled");
        ok(run_until(queue_idle, WAIT_DEFAULT_USEC), "retry: delivered after a 4xx");
        a = attempts_get("once@c.test");
        is_int(a->n, 2, "retry: two attempts");
        ok(a->when[1] - a->when[0] >= TEST_RETRY_MIN - 5 * USEC_PER_MSEC,
           "retry: second attempt after retry_min (%" PRIu64 " ms)",
           (a->when[1] - a->when[0]) / USEC_PER_MSEC);
        ok(a->when[1] - a->when[0] < TEST_RETRY_MIN * 2,
           "retry: second attempt not much later than retry_min");

        reset_seen();
        ok(spool_message("sender@s.test", later, 0) > 0, "backoff: message spooled");
        ok(run_until(queue_idle, 2 * WAIT_DEFAULT_USEC), "backoff: delivered after three 4xx");
        a = attempts_get("later@c.test");
        is_int(a->n, 4, "backoff: four attempts");
        gap1 = a->when[1] - a->when[0];
        gap2 = a->when[2] - a->when[1];
        gap3 = a->when[3] - a->when[2];
        printf("# gaps %" PRIu64 " %" PRIu64 " %" PRIu64 " ms\n",
               gap1 / USEC_PER_MSEC, gap2 / USEC_PER_MSEC, gap3 / USEC_PER_MSEC);
        ok(gap1 >= TEST_RETRY_MIN - 5 * USEC_PER_MSEC && gap1 < 2 * TEST_RETRY_MIN,
           "backoff: first retry after ~retry_min");
        ok(gap2 >= 2 * TEST_RETRY_MIN - 5 * USEC_PER_MSEC && gap2 < 3 * TEST_RETRY_MIN,
           "backoff: second retry after ~2 x retry_min");
        ok(gap3 >= TEST_RETRY_MAX - 5 * USEC_PER_MSEC && gap3 < TEST_RETRY_MAX + TEST_RETRY_MIN,
           "backoff: third retry capped at retry_max");
        is_int(spool_files(), 0, "backoff: spool empty afterwards");
}

static const SeenMessage *find_from_null(size_t nth) {
        for (size_t i = 0; i < n_seen; i++)
                for (size_t k = 0; k < seen[i].n_messages && k < SEEN_MSGS_MAX; k++)
                        if (seen[i].messages[k].sender[0] == '\0' && nth-- == 0)
                                return &seen[i].messages[k];
        return NULL;
}

/* The DSN goes through the spool's group commit before the queue sees it:
 * wait until it was dispatched and everything settled. */
static bool dsn_settled(void) {
        return find_from_null(0) != NULL && queue_idle();
}

static void test_bounce(void) {
        const char *rcpts[] = { "bad@c.test", "ok@c.test", NULL };
        const SeenMessage *dsn;
        uint64_t mid;

        reset_seen();
        dsn_fail = true;
        mid = spool_message("alice@s.test", rcpts, 0);
        ok(mid > 0, "bounce: message spooled");
        ok(run_until(dsn_settled, WAIT_DEFAULT_USEC), "bounce: queue drained, DSN delivered");
        /* A second DSN would need another group commit round: give it time. */
        run_for(300 * USEC_PER_MSEC);

        dsn = find_from_null(0);
        ok(dsn != NULL, "bounce: a DSN was generated and dispatched");
        if (dsn) {
                ok(dsn->mid > mid, "bounce: DSN has a new MID");
                is_int(dsn->n_rcpts, 1, "bounce: DSN has one recipient");
                is_str(dsn->rcpts[0], "alice@s.test", "bounce: DSN goes to the original sender");
                ok(dsn->data && strstr(dsn->data, "Status: 5.1.1"), "bounce: DSN reports Status 5.1.1");
                ok(dsn->data && strstr(dsn->data, "bad@c.test"), "bounce: DSN names the failed recipient");
                ok(dsn->data && !strstr(dsn->data, "Final-Recipient: rfc822;ok@c.test") &&
                   !strstr(dsn->data, "Final-Recipient: rfc822; ok@c.test"),
                   "bounce: the delivered recipient is not in the DSN");
                ok(dsn->data && strstr(dsn->data, "Subject: queue test"),
                   "bounce: DSN returns the original headers");
        }
        ok(find_from_null(1) == NULL, "bounce: a 5xx on the DSN produces no second DSN");
        is_int(count_jobs("s.test"), 1, "bounce: exactly one delivery attempt of the DSN");
        is_int(spool_files(), 0, "bounce: original and DSN removed from the spool");
        dsn_fail = false;
}

static void test_expiry(void) {
        const char *rcpts[] = { "later-x@c.test", NULL };
        const SeenMessage *dsn;
        const Attempts *a;

        reset_seen();
        later_fail_until = 1000;
        /* Arrived two lifetimes ago (a message recovered after downtime). */
        ok(spool_message("bob@s.test", rcpts, now_real() - 2 * TEST_LIFETIME) > 0,
           "expiry: old message spooled");
        ok(run_until(dsn_settled, WAIT_DEFAULT_USEC), "expiry: queue drained, DSN delivered");
        a = attempts_get("later-x@c.test");
        is_int(a->n, 1, "expiry: no retry after the lifetime has passed");
        dsn = find_from_null(0);
        ok(dsn != NULL, "expiry: a DSN was generated");
        if (dsn) {
                is_str(dsn->rcpts[0], "bob@s.test", "expiry: DSN goes to the sender");
                ok(dsn->data && strstr(dsn->data, "Status: 4.4.7"), "expiry: DSN Status 4.4.7");
                ok(dsn->data && strstr(dsn->data, "Action: failed"), "expiry: DSN Action failed");
        }
        is_int(spool_files(), 0, "expiry: spool empty afterwards");
        later_fail_until = 3;
}

static bool hold_deferred(void) {
        Attempts *a = attempts_get("hold@c.test");

        return a && a->n >= 1 && no_active();
}

static void test_recover(void) {
        const char *rcpts[] = { "ok@a.test", "hold@c.test", NULL };
        const SeenJob *j;
        uint64_t mid;
        bool rid0_again = false;
        int r;

        reset_seen();
        hold_ok = false;
        mid = spool_message("sender@s.test", rcpts, 0);
        ok(mid > 0, "recover: message spooled");
        ok(run_until(hold_deferred, WAIT_DEFAULT_USEC), "recover: RID 0 delivered, RID 1 deferred");
        is_int(queue_n_messages(queue), 1, "recover: message still queued");

        /* Restart: queue and spool go away, the files stay. */
        queue_stop(queue);
        run_for(50 * USEC_PER_MSEC);
        is_int(queue_n_active(queue), 0, "recover: no job in flight after stop");
        queue = queue_free(queue);
        spool = spool_free(spool);
        ok(spool_disk_entries() > 0, "recover: message still in the spool directory");

        r = spool_open(spooldir, &spool);
        ok(r >= 0, "recover: spool reopened");
        if (r < 0)
                return;
        r = start_queue();
        ok(r >= 0, "recover: queue recreated");
        if (r < 0)
                return;

        reset_seen();
        hold_ok = true;
        r = queue_recover(queue);
        ok(r >= 0, "recover: queue_recover() succeeded");
        is_int(queue_n_messages(queue), 1, "recover: the message is back in the queue");
        ok(run_until(queue_idle, WAIT_DEFAULT_USEC), "recover: pending recipient delivered");
        is_int(n_seen, 1, "recover: one job after recovery");
        j = find_job("c.test", 0);
        ok(j && j->n_messages == 1 && j->messages[0].mid == mid && j->messages[0].n_rcpts == 1 &&
           j->messages[0].rids[0] == 1, "recover: only the pending RID 1 is delivered");
        for (size_t i = 0; i < n_seen; i++)
                if (streq(seen[i].domain, "a.test"))
                        rid0_again = true;
        ok(!rid0_again, "recover: the delivered RID 0 is skipped");
        is_int(spool_files(), 0, "recover: spool empty afterwards");
}

static void test_flush(void) {
        const char *rcpts[] = { "once-f@c.test", NULL };
        Attempts *a;

        reset_seen();
        /* Default: the retry would come after retry_min; a flush makes it
         * due at once. Use a long retry_min to tell the two apart. */
        config->queue.retry_min = 10 * USEC_PER_SEC;
        config->queue.retry_max = 10 * USEC_PER_SEC;
        ok(spool_message("sender@s.test", rcpts, 0) > 0, "flush: message spooled");
        run_for(100 * USEC_PER_MSEC);
        a = attempts_get("once-f@c.test");
        is_int(a->n, 1, "flush: one attempt, retry scheduled far away");
        is_int(queue_n_messages(queue), 1, "flush: still queued");
        queue_flush(queue);
        ok(run_until(queue_idle, WAIT_DEFAULT_USEC), "flush: delivered right after queue_flush()");
        config->queue.retry_min = TEST_RETRY_MIN;
        config->queue.retry_max = TEST_RETRY_MAX;
}

/* Delivery order: with one connection of at most 3 transactions, b.test
 * takes its due recipients in the order their messages arrived. */
static void test_due_order(void) {
        const char *one[] = { "ok-order@b.test", NULL };
        uint64_t mids[7], prev = 0;
        size_t n_txn = 0;
        bool all_ok = true, ascending = true;

        reset_seen();
        for (unsigned i = 0; i < 7; i++) {
                mids[i] = spool_message("sender@s.test", one, 0);
                all_ok = all_ok && mids[i] > 0;
        }
        ok(all_ok, "order: 7 messages spooled for b.test");
        ok(run_until(queue_idle, 2 * WAIT_DEFAULT_USEC), "order: all delivered");
        for (size_t i = 0; i < n_seen; i++)
                for (size_t k = 0; k < seen[i].n_messages && k < SEEN_MSGS_MAX; k++) {
                        if (!streq(seen[i].domain, "b.test"))
                                continue;
                        if (seen[i].messages[k].mid <= prev)
                                ascending = false;
                        prev = seen[i].messages[k].mid;
                        n_txn++;
                }
        is_int(n_txn, 7, "order: one transaction per message");
        ok(ascending, "order: transactions go out in arrival (MID) order across jobs");
        is_int(max_active_b, 1, "order: still one connection at a time");
}

/* Counts recipients waiting for a retry time after now. */
static int count_waiting(const QueueMessageInfo *info, void *userdata) {
        size_t *n = userdata;
        uint64_t now = now_real();

        for (size_t i = 0; i < info->n_rcpts; i++)
                if (streq(info->rcpts[i].state, "pending") && info->rcpts[i].next_attempt > now)
                        (*n)++;
        return 0;
}

static size_t n_waiting(void) {
        size_t n = 0;

        if (queue_foreach(queue, count_waiting, &n) < 0)
                return SIZE_MAX;
        return n;
}

static bool backlog_deferred(void) {
        return no_active() && n_waiting() == 1000;
}

static uint64_t fresh_mid;

static const SeenJob *find_job_with(uint64_t mid) {
        for (size_t i = 0; i < n_seen; i++)
                for (size_t k = 0; k < seen[i].n_messages && k < SEEN_MSGS_MAX; k++)
                        if (seen[i].messages[k].mid == mid)
                                return &seen[i];
        return NULL;
}

static bool fresh_dispatched(void) {
        return find_job_with(fresh_mid) != NULL;
}

/* A backlog of 1,000 recipients waiting for a far retry does not hold up
 * a new message for the same destination, deleting some of the backlog
 * takes them out of the retry schedule, and a flush makes the rest due. */
static void test_backlog(void) {
        enum { BACKLOG_MSGS = 20, BACKLOG_RCPTS = 50 };
        static char addr[BACKLOG_MSGS][BACKLOG_RCPTS][ADDR_MAX];
        const char *list[BACKLOG_RCPTS + 1];
        const char *fresh[] = { "ok-fresh@c.test", NULL };
        uint64_t mids[BACKLOG_MSGS], t0, dt;
        const SeenJob *j;
        size_t jobs;
        bool all_ok = true;

        reset_seen();
        hold_ok = false;
        config->queue.retry_min = 30 * USEC_PER_SEC;
        config->queue.retry_max = 30 * USEC_PER_SEC;
        for (unsigned m = 0; m < BACKLOG_MSGS; m++) {
                for (unsigned r = 0; r < BACKLOG_RCPTS; r++) {
                        snprintf(addr[m][r], ADDR_MAX, "hold-%u-%u@c.test", m, r);
                        list[r] = addr[m][r];
                }
                list[BACKLOG_RCPTS] = NULL;
                mids[m] = spool_message("sender@s.test", list, 0);
                all_ok = all_ok && mids[m] > 0;
        }
        ok(all_ok, "backlog: 20 messages of 50 recipients spooled");
        ok(run_until(backlog_deferred, 2 * WAIT_DEFAULT_USEC), "backlog: all 1000 recipients tried and deferred");
        is_int(queue_n_messages(queue), BACKLOG_MSGS, "backlog: all 20 messages still queued");

        t0 = now_mono();
        fresh_mid = spool_message("sender@s.test", fresh, 0);
        ok(fresh_mid > 0 && run_until(fresh_dispatched, WAIT_DEFAULT_USEC), "backlog: new message dispatched");
        dt = now_mono() - t0;
        ok(dt < 500 * USEC_PER_MSEC, "backlog: new message dispatched at once (%" PRIu64 " ms)",
           dt / USEC_PER_MSEC);
        j = find_job_with(fresh_mid);
        ok(j && streq(j->domain, "c.test") && j->n_messages == 1 && j->messages[0].n_rcpts == 1,
           "backlog: that job carries only the new message");
        ok(run_until(no_active, WAIT_DEFAULT_USEC), "backlog: new message delivered");
        is_int(queue_n_messages(queue), BACKLOG_MSGS, "backlog: the backlog is still queued");

        /* Deleting takes recipients out of the middle of the schedule. */
        all_ok = true;
        for (unsigned m = 0; m < BACKLOG_MSGS; m += 2)
                all_ok = all_ok && queue_delete(queue, mids[m]) == 0;
        ok(all_ok, "backlog: every other message deleted");
        is_int(n_waiting(), 500, "backlog: 500 recipients still wait");
        jobs = n_seen;
        run_for(100 * USEC_PER_MSEC);
        is_int(n_seen, jobs, "backlog: nothing retried before its time");

        hold_ok = true;
        is_int(queue_flush_count(queue), 500, "backlog: flush makes the 500 waiting recipients due");
        ok(run_until(queue_idle, 2 * WAIT_DEFAULT_USEC), "backlog: flushed backlog delivered");
        is_int(spool_files(), 0, "backlog: spool empty afterwards");
        hold_ok = false;
        config->queue.retry_min = TEST_RETRY_MIN;
        config->queue.retry_max = TEST_RETRY_MAX;
}

static bool slow_deferred(void) {
        return attempts_get("hold-w@c.test")->n >= 1 && no_active();
}

static bool retry_done_wait_pending(void) {
        return queue_n_messages(queue) == 1 && no_active() && attempts_get("once-r@c.test")->n >= 2;
}

/* A retry whose time comes is taken while another recipient of the same
 * destination keeps waiting for a later one. */
static void test_retry_while_waiting(void) {
        const char *slow[] = { "hold-w@c.test", NULL };
        const char *quick[] = { "once-r@c.test", NULL };
        const Attempts *a;

        reset_seen();
        hold_ok = false;
        config->queue.retry_min = 30 * USEC_PER_SEC;
        config->queue.retry_max = 30 * USEC_PER_SEC;
        ok(spool_message("sender@s.test", slow, 0) > 0, "retry-wait: slow message spooled");
        ok(run_until(slow_deferred, WAIT_DEFAULT_USEC) && attempts_get("hold-w@c.test")->n == 1,
           "retry-wait: slow recipient deferred for 30 s");

        config->queue.retry_min = TEST_RETRY_MIN;
        config->queue.retry_max = TEST_RETRY_MAX;
        ok(spool_message("sender@s.test", quick, 0) > 0, "retry-wait: quick message spooled");
        ok(run_until(retry_done_wait_pending, WAIT_DEFAULT_USEC),
           "retry-wait: quick recipient retried and delivered");
        a = attempts_get("once-r@c.test");
        ok(a->n == 2 && a->when[1] - a->when[0] >= TEST_RETRY_MIN - 5 * USEC_PER_MSEC &&
           a->when[1] - a->when[0] < 2 * TEST_RETRY_MIN,
           "retry-wait: retried after retry_min (%" PRIu64 " ms)", (a->when[1] - a->when[0]) / USEC_PER_MSEC);
        is_int(attempts_get("hold-w@c.test")->n, 1, "retry-wait: the slow recipient was not tried again");

        hold_ok = true;
        is_int(queue_flush_count(queue), 1, "retry-wait: the slow recipient still waited");
        ok(run_until(queue_idle, WAIT_DEFAULT_USEC), "retry-wait: delivered after the flush");
        is_int(attempts_get("hold-w@c.test")->n, 2, "retry-wait: exactly one more attempt");
        hold_ok = false;
}

/* ---- administration ---- */

#define ADMIN_SEEN_MAX 8

typedef struct AdminSeen {
        size_t n;
        uint64_t mids[ADMIN_SEEN_MAX];
        char sender[ADDR_MAX];
        uint64_t arrival, size;
        size_t n_rcpts;
        char state[2][16];
        unsigned attempts[2];
        uint64_t next_attempt[2];
        char reply[2][ADDR_MAX];
        int stop_after;                 /* return -ECANCELED after this many */
} AdminSeen;

static int admin_collect(const QueueMessageInfo *info, void *userdata) {
        AdminSeen *a = userdata;

        if (a->n < ADMIN_SEEN_MAX)
                a->mids[a->n] = info->mid;
        if (a->n == 0) {
                snprintf(a->sender, ADDR_MAX, "%s", info->sender);
                a->arrival = info->arrival;
                a->size = info->size;
                a->n_rcpts = info->n_rcpts;
                for (size_t i = 0; i < info->n_rcpts && i < 2; i++) {
                        snprintf(a->state[i], sizeof a->state[i], "%s", info->rcpts[i].state);
                        a->attempts[i] = info->rcpts[i].attempts;
                        a->next_attempt[i] = info->rcpts[i].next_attempt;
                        snprintf(a->reply[i], ADDR_MAX, "%s", info->rcpts[i].last_reply ?: "(null)");
                }
        }
        a->n++;
        if (a->stop_after > 0 && a->n >= (size_t) a->stop_after)
                return -ECANCELED;
        return 0;
}

static bool hold_a_deferred(void) {
        Attempts *a = attempts_get("hold-a@c.test");
        Attempts *b = attempts_get("hold-b@c.test");

        return a && a->n >= 1 && b && b->n >= 1 && no_active();
}

static bool something_active(void) {
        return queue_n_active(queue) > 0;
}

static void test_admin(void) {
        const char *r1[] = { "hold-a@c.test", "ok-a@a.test", NULL };
        const char *r2[] = { "hold-b@c.test", NULL };
        const char *r3[] = { "ok-busy@b.test", NULL };
        AdminSeen seen_all = {}, seen_one = {}, seen_stop = { .stop_after = 1 };
        uint64_t m1, m2, m3, before = now_real();
        size_t files;
        int r;

        reset_seen();
        hold_ok = false;
        config->queue.retry_min = 10 * USEC_PER_SEC;
        config->queue.retry_max = 10 * USEC_PER_SEC;
        is_int(queue_flush_count(queue), 0, "admin: flushing an empty queue makes nothing due");
        r = queue_foreach(queue, admin_collect, &seen_all);
        ok(r == 0 && seen_all.n == 0, "admin: an empty queue lists nothing");

        m1 = spool_message("carol@s.test", r1, 0);
        m2 = spool_message("dave@s.test", r2, 0);
        ok(m1 > 0 && m2 > m1, "admin: two messages spooled");
        ok(run_until(hold_a_deferred, WAIT_DEFAULT_USEC), "admin: hold recipients deferred, ok-a delivered");
        is_int(queue_n_messages(queue), 2, "admin: both messages still queued");

        r = queue_foreach(queue, admin_collect, &seen_all);
        is_int(r, 0, "admin: queue_foreach succeeds");
        is_int(seen_all.n, 2, "admin: both messages listed");
        ok(seen_all.mids[0] == m1 && seen_all.mids[1] == m2, "admin: listed in MID order");
        is_str(seen_all.sender, "carol@s.test", "admin: sender");
        ok(seen_all.arrival >= before - USEC_PER_SEC && seen_all.arrival <= now_real(), "admin: arrival time");
        ok(seen_all.size > 100, "admin: size is the spooled data size (%" PRIu64 ")", seen_all.size);
        is_int(seen_all.n_rcpts, 2, "admin: every recipient listed");
        is_str(seen_all.state[0], "pending", "admin: deferred recipient is pending");
        is_int(seen_all.attempts[0], 1, "admin: one failed attempt counted");
        ok(seen_all.next_attempt[0] > now_real() + 5 * USEC_PER_SEC, "admin: next attempt after retry_min");
        is_str(seen_all.reply[0], "421 4.4.2 connection dropped", "admin: last reply of the pending recipient");
        is_str(seen_all.state[1], "delivered", "admin: delivered recipient");
        ok(seen_all.next_attempt[1] == 0, "admin: a final recipient has no next attempt");
        is_str(seen_all.reply[1], "250 2.0.0 Ok", "admin: last reply of the delivered recipient");

        r = queue_foreach(queue, admin_collect, &seen_stop);
        ok(r == -ECANCELED && seen_stop.n == 1, "admin: a negative callback return stops the walk and is returned");

        r = queue_get(queue, m2, admin_collect, &seen_one);
        ok(r == 0 && seen_one.n == 1 && seen_one.mids[0] == m2, "admin: queue_get finds one message");
        is_str(seen_one.sender, "dave@s.test", "admin: queue_get sender");
        is_int(queue_get(queue, m2 + 1000, admin_collect, &seen_one), -ENOENT, "admin: queue_get unknown MID");

        /* Delete: gone from the queue and the spool, and no DSN. */
        files = spool_files();
        r = queue_delete(queue, m2);
        is_int(r, 0, "admin: queue_delete");
        is_int(queue_n_messages(queue), 1, "admin: one message left");
        is_int(spool_files(), files - 1, "admin: spool file removed");
        is_int(queue_get(queue, m2, admin_collect, &seen_one), -ENOENT, "admin: deleted message not found");
        is_int(queue_delete(queue, m2), -ENOENT, "admin: deleting twice says not found");
        run_for(300 * USEC_PER_MSEC);
        ok(find_from_null(0) == NULL, "admin: no bounce for a deleted message");
        is_int(attempts_get("hold-b@c.test")->n, 1, "admin: the deleted recipient is never tried again");

        /* A message out with a worker cannot be deleted. */
        m3 = spool_message("erin@s.test", r3, 0);
        ok(m3 > 0 && run_until(something_active, WAIT_DEFAULT_USEC), "admin: a delivery in progress");
        is_int(queue_delete(queue, m3), -EBUSY, "admin: deleting a message in delivery is refused");
        ok(run_until(no_active, WAIT_DEFAULT_USEC), "admin: that delivery completes");
        is_int(queue_get(queue, m3, admin_collect, &seen_one), -ENOENT, "admin: and the message is done");

        /* Flush: the one deferred recipient becomes due at once. */
        hold_ok = true;
        is_int(queue_flush_count(queue), 1, "admin: flush makes the one deferred recipient due");
        ok(run_until(queue_idle, WAIT_DEFAULT_USEC), "admin: flushed message delivered");
        is_int(attempts_get("hold-a@c.test")->n, 2, "admin: exactly one more attempt");
        is_int(spool_files(), 0, "admin: spool empty afterwards");
        hold_ok = false;
        config->queue.retry_min = TEST_RETRY_MIN;
        config->queue.retry_max = TEST_RETRY_MAX;
}

int main(void) {
        char *servers[] = { (char *) "127.0.0.1:9", NULL };
        int r;

        log_open();
        if (!mkdtemp(tmpdir)) {
                tap_skip("queue tests", "cannot create a temporary directory");
                return tap_done();
        }
        snprintf(spooldir, sizeof spooldir, "%s/spool", tmpdir);
        snprintf(maildir_a, sizeof maildir_a, "%s/maildir", tmpdir);

        r = sd_event_new(&event);
        ok(r >= 0, "sd_event_new");
        r = mailbox_new(event, &mailbox);
        ok(r >= 0, "mailbox_new");
        r = spool_open(spooldir, &spool);
        ok(r >= 0, "spool_open");
        r = resolver_new(event, servers, 500 * USEC_PER_MSEC, &resolver);
        ok(r >= 0, "resolver_new");
        r = make_config(&config);
        ok(r >= 0, "test configuration built");
        if (!event || !mailbox || !spool || !resolver || !config)
                return tap_done();
        r = start_queue();
        ok(r >= 0, "queue_new");
        if (r < 0)
                return tap_done();

        test_grouping();
        test_concurrency_batching();
        test_retry_backoff();
        test_bounce();
        test_expiry();
        test_flush();
        test_due_order();
        test_backlog();
        test_retry_while_waiting();
        test_admin();
        test_recover();

        queue_stop(queue);
        run_for(50 * USEC_PER_MSEC);
        queue = queue_free(queue);
        resolver = resolver_free(resolver);
        spool = spool_free(spool);
        mailbox = mailbox_free(mailbox);
        config = config_unref(config);
        event = sd_event_unref(event);
        reset_seen();

        {
                char cmd[PATH_MAX + 16];

                snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
                if (system(cmd) != 0)
                        printf("# could not remove %s\n", tmpdir);
        }
        return tap_done();
}
