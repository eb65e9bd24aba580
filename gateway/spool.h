/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * The durable spool: one file per message, written as it arrives and made
 * durable before the 250 reply.
 *
 * Layout under DIR: tmp/ (messages being received; removed on recovery),
 * msg/<MID> (committed messages: a text envelope header, then the message
 * in SMTP wire form, dot-stuffed with CRLF, from data_offset to EOF),
 * msg/<MID>.state (appended per-recipient outcomes), ids (persistent ID
 * counters, reserved in blocks).
 *
 * Group commit: spool_writer_commit() renames the file into msg/ and hands
 * it to one flusher thread, which makes every message handed to it since
 * its last round durable with a single syncfs(2) of the spool file system,
 * then completes each commit on the caller's loop through its Mailbox. One
 * sync serves all concurrent sessions instead of one fsync per message.
 *
 * Thread-safety: spool_next_id(), writers, spool_record(), spool_remove()
 * and spool_open_data() may be called from any thread. Returns negative
 * errno; never logs above debug.
 */

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "util/mailbox.h"

typedef enum SpoolIdKind {
        SPOOL_ID_ICID,          /* inbound connection */
        SPOOL_ID_MID,           /* message */
        SPOOL_ID_DCID,          /* delivery connection */
        _SPOOL_ID_MAX,
} SpoolIdKind;

typedef struct Envelope {
        uint64_t mid;
        uint64_t icid;                  /* 0 for generated messages (bounces) */
        uint64_t arrival_usec;          /* CLOCK_REALTIME */
        char *sender;                   /* "" for the null sender <> */
        char **rcpts;                   /* NULL-terminated, RID = index */
        size_t n_rcpts;
        char *listener;                 /* may be NULL */
        char *client_ip;                /* may be NULL */
        char *helo;                     /* may be NULL */
} Envelope;

void envelope_done(Envelope *e);
int envelope_copy(const Envelope *src, Envelope *dst);

typedef enum SpoolRcptState {
        SPOOL_RCPT_PENDING,
        SPOOL_RCPT_DELIVERED,
        SPOOL_RCPT_BOUNCED,             /* failed permanently, DSN made (or none owed) */
        _SPOOL_RCPT_STATE_MAX,
} SpoolRcptState;

typedef struct SpoolMessage {
        Envelope env;
        uint8_t *rcpt_state;            /* SpoolRcptState per RID */
        uint64_t data_offset;
        uint64_t data_size;             /* wire octets, without the final ".\r\n" */
} SpoolMessage;

void spool_message_free(SpoolMessage *m);

typedef struct Spool Spool;

/* Creates DIR and its subdirectories (0700) if needed, loads the ID
 * counters and starts the flusher thread. */
int spool_open(const char *dir, Spool **ret);
/* Stops the flusher after completing pending commits. */
Spool *spool_free(Spool *s);
const char *spool_dir(const Spool *s);

/* Unique across restarts and strictly increasing, from 1. */
uint64_t spool_next_id(Spool *s, SpoolIdKind kind);

typedef struct SpoolWriter SpoolWriter;

/* Starts tmp/<MID>: writes the envelope header (env->mid must be set). */
int spool_writer_new(Spool *s, const Envelope *env, SpoolWriter **ret);
int spool_writer_write(SpoolWriter *w, const void *p, size_t n);
uint64_t spool_writer_size(const SpoolWriter *w);       /* data octets so far */
/* Unlinks the tmp file and frees the writer. */
void spool_writer_abort(SpoolWriter *w);
/* Seals the file (data size into the header), renames it into msg/ and
 * queues it for the next group commit; frees the writer. `done(userdata,
 * error)` later runs on reply_to's loop: error 0 means durable (now send
 * 250), <0 means the message is not safe (it was removed; send 451). */
typedef void (*spool_commit_fn_t)(void *userdata, int error);
int spool_writer_commit(SpoolWriter *w, Mailbox *reply_to, spool_commit_fn_t done, void *userdata);

/* Calls cb for every committed message (ownership passes to cb, which must
 * spool_message_free() it eventually); removes leftovers in tmp/ and
 * messages whose size field does not match the file. Sorted by MID. */
int spool_recover(Spool *s, int (*cb)(SpoolMessage *m, void *userdata), void *userdata);
/* Appends "RID state" to msg/<MID>.state (no fsync: at worst a recipient
 * is delivered twice after a crash, never lost). */
int spool_record(Spool *s, uint64_t mid, uint32_t rid, SpoolRcptState state);
/* Removes msg/<MID> and its state file (all recipients done). */
int spool_remove(Spool *s, uint64_t mid);
/* Opens msg/<MID> read-only for delivery; data is [offset, offset+size). */
int spool_open_data(Spool *s, uint64_t mid, int *ret_fd, uint64_t *ret_offset, uint64_t *ret_size);
