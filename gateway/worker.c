/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Worker threads. Each runs an sd-event loop with its own Resolver and
 * Mailbox; sessions and delivery jobs arrive as closures and report back
 * to the main loop the same way. See worker.h for the protocol.
 */

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "manager.h"
#include "smtp-client.h"
#include "smtp-server.h"
#include "util/macro.h"
#include "worker.h"

/* How long a reverse lookup may hold up a greeting. */
#define WORKER_DNS_TIMEOUT (3 * USEC_PER_SEC)

/* One closure payload for every worker -> main and main -> worker call. */
typedef struct WorkerCall {
        Worker *worker;
        SessionSetup *setup;
        DeliveryJob *job;
        Envelope env;
        uint64_t size;
        char *listener;
        struct sockaddr_storage peer;
} WorkerCall;

static WorkerCall *worker_call_new(Worker *w) {
        WorkerCall *c = calloc(1, sizeof *c);
        if (c)
                c->worker = w;
        return c;
}

static void worker_call_free(WorkerCall *c) {
        envelope_done(&c->env);
        free(c->listener);
        free(c);
}

static void *worker_thread(void *userdata) {
        Worker *w = userdata;
        char name[16];
        int r;

        snprintf(name, sizeof name, "tlsgwd-w%u", w->index);
        (void) pthread_setname_np(pthread_self(), name);

        r = sd_event_loop(w->event);
        if (r < 0)
                log_error_errno(r, "Worker %u: event loop failed: %m", w->index);
        return NULL;
}

int worker_new(Manager *m, unsigned index, Mailbox *manager_mailbox, Spool *spool,
               char * const *dns_servers, Worker **ret) {
        Worker *w;
        int r;

        w = calloc(1, sizeof *w);
        if (!w)
                return -ENOMEM;
        w->index = index;
        w->manager = m;
        w->manager_mailbox = manager_mailbox;
        w->spool = spool;
        atomic_init(&w->n_sessions, 0);

        r = sd_event_new(&w->event);
        if (r < 0)
                goto fail;
        r = mailbox_new(w->event, &w->mailbox);
        if (r < 0)
                goto fail;
        r = resolver_new(w->event, dns_servers, WORKER_DNS_TIMEOUT, &w->resolver);
        if (r < 0)
                goto fail;

        *ret = w;
        return 0;
fail:
        worker_free(w);
        return r;
}

int worker_start(Worker *w) {
        int r = pthread_create(&w->thread, NULL, worker_thread, w);
        if (r != 0)
                return -r;
        w->started = true;
        return 0;
}

Worker *worker_free(Worker *w) {
        if (!w)
                return NULL;
        if (w->started)
                (void) pthread_join(w->thread, NULL);
        while (w->sessions)
                smtp_server_free(w->sessions);
        resolver_free(w->resolver);
        mailbox_free(w->mailbox);
        sd_event_unref(w->event);
        free(w);
        return NULL;
}

/* ---- worker -> main ---- */

static void call_worker_idle(void *userdata) {
        WorkerCall *c = userdata;
        manager_worker_idle(c->worker->manager, c->worker);
        worker_call_free(c);
}

static void worker_check_idle(Worker *w) {
        WorkerCall *c;

        if (!w->draining || w->sessions || w->n_jobs > 0)
                return;
        w->draining = false;
        c = worker_call_new(w);
        if (c && mailbox_post(w->manager_mailbox, call_worker_idle, c) < 0)
                worker_call_free(c);
}

static void call_session_closed(void *userdata) {
        WorkerCall *c = userdata;
        manager_session_closed(c->worker->manager, c->listener, &c->peer);
        worker_call_free(c);
}

static void worker_post_closed(Worker *w, const char *listener, const struct sockaddr_storage *peer) {
        WorkerCall *c = worker_call_new(w);

        atomic_fetch_sub(&w->n_sessions, 1);
        if (!c)
                return;
        c->listener = strdup(listener);
        c->peer = *peer;
        if (!c->listener || mailbox_post(w->manager_mailbox, call_session_closed, c) < 0)
                worker_call_free(c);
}

void worker_session_closed(Worker *w, SmtpServer *s) {
        worker_post_closed(w, smtp_server_listener(s), smtp_server_peer(s));
        /* The session unlinks itself after this returns; check idleness on
         * the next iteration. */
}

static void call_message_received(void *userdata) {
        WorkerCall *c = userdata;
        manager_message_received(c->worker->manager, &c->env, c->size);
        worker_call_free(c);
}

void worker_message_received(Worker *w, const Envelope *env, uint64_t size) {
        WorkerCall *c = worker_call_new(w);

        if (!c || envelope_copy(env, &c->env) < 0) {
                /* The message is durable in the spool; it will be picked up
                 * at the next start. Say so rather than lose track silently. */
                log_error("Worker %u: out of memory handing MID %" PRIu64 " to the queue; it stays in the spool",
                          w->index, env->mid);
                if (c)
                        free(c);
                return;
        }
        c->size = size;
        if (mailbox_post(w->manager_mailbox, call_message_received, c) < 0)
                worker_call_free(c);
}

static void call_job_done(void *userdata) {
        WorkerCall *c = userdata;

        /* A probe (TlsVerify) belongs to whoever started it, not the queue. */
        if (c->job->probe_done)
                c->job->probe_done(c->job);
        else
                manager_job_done(c->worker->manager, c->job);
        worker_call_free(c);
}

static void worker_job_finished(Worker *w, DeliveryJob *job) {
        WorkerCall *c = worker_call_new(w);

        assert(w->n_jobs > 0);
        w->n_jobs--;
        if (!c) {
                log_error("Worker %u: out of memory returning DCID %" PRIu64, w->index, job->dcid);
                delivery_job_free(job);
                return;
        }
        c->job = job;
        if (mailbox_post(w->manager_mailbox, call_job_done, c) < 0) {
                delivery_job_free(job);
                free(c);
        }
        worker_check_idle(w);
}

/* ---- main -> worker ---- */

static void call_add_session(void *userdata) {
        WorkerCall *c = userdata;
        Worker *w = c->worker;
        struct sockaddr_storage peer = c->setup->peer;
        char *listener = strdup(c->setup->listener->name);
        SmtpServer *s;
        int r;

        r = smtp_server_new(w, TAKE_PTR(c->setup), &s);
        if (r < 0) {
                log_warning_errno(r, "Worker %u: cannot start session: %m", w->index);
                worker_post_closed(w, listener ?: "", &peer);
        }
        free(listener);
        worker_call_free(c);
}

int worker_add_session(Worker *w, SessionSetup *setup) {
        WorkerCall *c = worker_call_new(w);
        int r = -ENOMEM;

        if (!c)
                goto fail;
        c->setup = setup;
        atomic_fetch_add(&w->n_sessions, 1);
        r = mailbox_post(w->mailbox, call_add_session, c);
        if (r < 0) {
                atomic_fetch_sub(&w->n_sessions, 1);
                free(c);
                goto fail;
        }
        return 0;
fail:
        safe_close(setup->fd);
        config_unref(setup->config);
        SSL_CTX_free(setup->tls_ctx);
        free(setup);
        return r;
}

static void job_smtp_done(DeliveryJob *job, void *userdata) {
        worker_job_finished(userdata, job);
}

static void job_fail_all(DeliveryJob *job, const char *reply) {
        for (size_t i = 0; i < job->n_messages; i++)
                for (size_t j = 0; j < job->messages[i].n_rcpts; j++) {
                        DeliveryRcpt *rc = &job->messages[i].rcpts[j];
                        if (rc->status != DELIVERY_PENDING)
                                continue;
                        rc->status = DELIVERY_DEFERRED;
                        free(rc->reply);
                        rc->reply = strdup(reply);
                }
}

static void call_add_job(void *userdata) {
        WorkerCall *c = userdata;
        Worker *w = c->worker;
        DeliveryJob *job = TAKE_PTR(c->job);
        int r;

        worker_call_free(c);
        w->n_jobs++;

        /* SMTP and maildir routes alike; maildir is blocking file I/O,
         * which is fine on a worker thread. */
        r = smtp_client_start(w->event, job, job_smtp_done, w);
        if (r < 0) {
                char buf[128];
                errno = -r;
                snprintf(buf, sizeof buf, "451 4.3.0 cannot start delivery: %m");
                job_fail_all(job, buf);
                worker_job_finished(w, job);
        }
}

int worker_add_job(Worker *w, DeliveryJob *job) {
        WorkerCall *c = worker_call_new(w);
        int r;

        if (!c)
                return -ENOMEM;
        c->job = job;
        r = mailbox_post(w->mailbox, call_add_job, c);
        if (r < 0) {
                free(c);
                return r;
        }
        return 0;
}

static void call_drain(void *userdata) {
        WorkerCall *c = userdata;
        Worker *w = c->worker;

        worker_call_free(c);
        w->draining = true;
        for (SmtpServer *s = w->sessions, *next; s; s = next) {
                next = smtp_server_next(s);
                smtp_server_drain(s);
        }
        worker_check_idle(w);
}

static void call_abort(void *userdata) {
        WorkerCall *c = userdata;
        Worker *w = c->worker;

        worker_call_free(c);
        while (w->sessions)
                smtp_server_abort(w->sessions);
        (void) sd_event_exit(w->event, 0);
}

static void call_exit(void *userdata) {
        WorkerCall *c = userdata;
        (void) sd_event_exit(c->worker->event, 0);
        worker_call_free(c);
}

static void worker_post_self(Worker *w, mailbox_fn_t fn) {
        WorkerCall *c = worker_call_new(w);
        if (c && mailbox_post(w->mailbox, fn, c) < 0)
                worker_call_free(c);
}

void worker_drain(Worker *w) {
        worker_post_self(w, call_drain);
}

void worker_abort(Worker *w) {
        worker_post_self(w, call_abort);
}

void worker_exit(Worker *w) {
        worker_post_self(w, call_exit);
}

void worker_session_gone(Worker *w) {
        worker_check_idle(w);
}

/* ---- session snapshots (Diagnostics) ---- */

/* One collection round; lives on the main thread (only its closures run
 * on workers, and they touch nothing of it but the pointer). */
typedef struct SessionCollect {
        worker_sessions_fn_t cb;
        void *userdata;
        size_t pending;                 /* workers yet to answer */
        SessionInfo *infos;
        size_t n_infos;
        bool failed;                    /* out of memory on the way: report what we have */
} SessionCollect;

typedef struct SessionAnswer {
        SessionCollect *collect;
        Worker *worker;
        SessionInfo *infos;
        size_t n;
        bool failed;
} SessionAnswer;

static void session_collect_finish(SessionCollect *sc) {
        if (sc->failed)
                log_debug("Session snapshot incomplete: out of memory");
        sc->cb(sc->infos, sc->n_infos, sc->userdata);
        free(sc->infos);
        free(sc);
}

/* Main thread: one worker's answer. */
static void call_sessions_answer(void *userdata) {
        SessionAnswer *a = userdata;
        SessionCollect *sc = a->collect;

        if (a->failed)
                sc->failed = true;
        if (a->n > 0) {
                SessionInfo *n = reallocarray(sc->infos, sc->n_infos + a->n, sizeof *n);

                if (n) {
                        memcpy(n + sc->n_infos, a->infos, a->n * sizeof *n);
                        sc->infos = n;
                        sc->n_infos += a->n;
                } else
                        sc->failed = true;
        }
        free(a->infos);
        free(a);

        assert(sc->pending > 0);
        if (--sc->pending == 0)
                session_collect_finish(sc);
}

/* Worker thread: snapshot of this loop's sessions, posted back. */
static void call_sessions_snapshot(void *userdata) {
        SessionAnswer *a = userdata;
        Worker *w = a->worker;
        size_t n = 0;

        for (SmtpServer *s = w->sessions; s; s = smtp_server_next(s))
                n++;
        if (n > 0) {
                a->infos = calloc(n, sizeof *a->infos);
                if (a->infos) {
                        for (SmtpServer *s = w->sessions; s && a->n < n; s = smtp_server_next(s))
                                smtp_server_info(s, &a->infos[a->n++]);
                } else
                        a->failed = true;
        }
        if (mailbox_post(w->manager_mailbox, call_sessions_answer, a) < 0) {
                /* The main loop is gone: nobody is waiting any more. */
                free(a->infos);
                free(a);
        }
}

int worker_collect_sessions(Worker * const *workers, size_t n_workers, worker_sessions_fn_t cb, void *userdata) {
        SessionCollect *sc;
        size_t asked = 0;

        if (!cb || (n_workers > 0 && !workers))
                return -EINVAL;
        sc = calloc(1, sizeof *sc);
        if (!sc)
                return -ENOMEM;
        sc->cb = cb;
        sc->userdata = userdata;
        /* Counted up front: an answer cannot arrive before this returns
         * (it comes through the main loop), but keep it obviously so. */
        sc->pending = n_workers + 1;

        for (size_t i = 0; i < n_workers; i++) {
                SessionAnswer *a = calloc(1, sizeof *a);

                if (a) {
                        a->collect = sc;
                        a->worker = workers[i];
                        if (mailbox_post(workers[i]->mailbox, call_sessions_snapshot, a) >= 0) {
                                asked++;
                                continue;
                        }
                        free(a);
                }
                sc->failed = true;
                sc->pending--;
        }
        if (asked == 0 && n_workers > 0) {
                free(sc);
                return -ENOMEM;
        }
        if (--sc->pending == 0)
                session_collect_finish(sc);
        return 0;
}
