/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * The delivery queue: every spooled message's pending recipients, grouped
 * by destination domain, scheduled under the destination controls.
 *
 * Runs on the main loop. For a domain with due recipients and a free
 * connection slot it resolves the route (route.h), builds a DeliveryJob of
 * up to max_messages_per_connection messages and hands it to `dispatch`
 * (a worker thread runs it and the manager calls queue_job_done() back on
 * the main loop). Outcomes: delivered recipients are recorded and the
 * message removed when none is left; 4xx and connection failures are
 * retried with exponential backoff (retry_min doubling up to retry_max);
 * 5xx, permanent DNS failures and recipients older than the queue lifetime
 * bounce: a RFC 3464 DSN goes to the sender through the spool and this
 * queue (never for a <> sender). Logs Delayed/Bounced/Message done lines.
 */

#include <stddef.h>
#include <stdint.h>

#include <systemd/sd-event.h>

#include "config.h"
#include "resolver.h"
#include "smtp-client.h"
#include "spool.h"
#include "util/mailbox.h"

typedef struct Queue Queue;

/* Hands a job to a worker; the job comes back through queue_job_done(). */
typedef void (*queue_dispatch_fn_t)(DeliveryJob *job, void *userdata);

int queue_new(sd_event *e, Mailbox *mailbox, Spool *spool, Resolver *resolver,
              queue_dispatch_fn_t dispatch, void *userdata, Queue **ret);
/* Jobs still out with workers must have been completed or abandoned. */
Queue *queue_free(Queue *q);

/* Takes a reference; applies to scheduling decisions from now on. */
void queue_set_config(Queue *q, Config *c);

/* Loads every message from the spool (after a restart) and schedules them. */
int queue_recover(Queue *q);

/* A message that is now durable in the spool (envelope copied). */
int queue_add(Queue *q, const Envelope *env, uint64_t data_size);

/* Spools and queues a message the gateway writes itself (text in wire
 * form): DSNs, alerts. generated_by names it in the log; orig_mid (0 =
 * none) is the message it was made for. *ret_mid gets the new MID. */
int queue_submit(Queue *q, const char *sender, char * const *rcpts, const char *text, size_t len,
                 uint64_t orig_mid, const char *generated_by, uint64_t *ret_mid);

/* Results of a dispatched job (status/reply per recipient filled in);
 * frees the job. */
void queue_job_done(Queue *q, DeliveryJob *job);

/* Makes every deferred recipient due now. */
void queue_flush(Queue *q);
/* Stops starting new jobs (shutdown); jobs in flight still complete. */
void queue_stop(Queue *q);

/* ---- administration ---- */

typedef struct QueueRcptInfo {
        const char *address;
        const char *state;              /* "pending", "active", "delivered", "bounced" */
        unsigned attempts;
        uint64_t next_attempt;          /* usec since the epoch, 0 = none */
        const char *last_reply;         /* may be NULL */
} QueueRcptInfo;

typedef struct QueueMessageInfo {
        uint64_t mid;
        const char *sender;
        uint64_t arrival;               /* usec since the epoch */
        uint64_t size;
        const QueueRcptInfo *rcpts;
        size_t n_rcpts;
} QueueMessageInfo;

/* Calls cb for every queued message in MID order (the pointers are valid
 * during the call only). A negative return from cb stops and is returned. */
int queue_foreach(Queue *q, int (*cb)(const QueueMessageInfo *info, void *userdata), void *userdata);
/* One message; -ENOENT when it is not queued. */
int queue_get(Queue *q, uint64_t mid, int (*cb)(const QueueMessageInfo *info, void *userdata), void *userdata);
/* Removes a message from the queue and the spool without a bounce
 * (logged "Message finished MID n deleted").
 * -ENOENT unknown, -EBUSY while a delivery of it is in progress. */
int queue_delete(Queue *q, uint64_t mid);
/* queue_flush(), returning the number of recipients it made due (those
 * waiting for a retry time in the future). */
size_t queue_flush_count(Queue *q);

size_t queue_n_messages(const Queue *q);
size_t queue_n_active(const Queue *q);  /* jobs out with workers */
