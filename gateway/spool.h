/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * The durable spool: every message is made durable before the 250 reply.
 *
 * Layout under DIR: seg/<N> (segments: messages appended one after the
 * other, each a binary record head, a text envelope header, then the
 * message in SMTP wire form, dot-stuffed with CRLF), seg/<N>.log (appended
 * per-recipient outcomes and "done" lines of that segment's messages);
 * messages larger than the inline limit get their own file instead:
 * tmp/<MID> (being received; removed on recovery), msg/<MID> (committed:
 * envelope header, then the data to EOF), msg/<MID>.state (outcomes);
 * ids (persistent ID counters, reserved in blocks). spool.c explains why.
 *
 * Group commit: spool_writer_commit() appends the message to the current
 * segment (or renames its file into msg/) and hands it to one flusher
 * thread, which makes every message handed to it since its last round
 * durable with a single syncfs(2) of the spool file system, then completes
 * each commit on the caller's loop through its Mailbox. One sync serves all
 * concurrent sessions instead of one fsync per message.
 *
 * Thread-safety: every function may be called from any thread, except
 * spool_recover() (once, before any other use) and spool_free(). Returns
 * negative errno; never logs.
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
/* Messages whose envelope header plus data fit in inline_max octets go to
 * segments, larger ones to their own files (0: every message gets a file);
 * a segment takes appends until it reaches segment_max octets. Defaults
 * suit mail; tests use this to drive both paths. */
int spool_set_limits(Spool *s, size_t inline_max, size_t segment_max);
/* Messages stored and not yet removed. */
size_t spool_n_messages(Spool *s);

/* Unique across restarts and strictly increasing, from 1. */
uint64_t spool_next_id(Spool *s, SpoolIdKind kind);

typedef struct SpoolWriter SpoolWriter;

/* Starts a message with its envelope header (env->mid must be set): in
 * memory while it fits the inline limit, else in tmp/<MID>. */
int spool_writer_new(Spool *s, const Envelope *env, SpoolWriter **ret);
int spool_writer_write(SpoolWriter *w, const void *p, size_t n);
uint64_t spool_writer_size(const SpoolWriter *w);       /* data octets so far */
/* Drops what was written (and the tmp file) and frees the writer. */
void spool_writer_abort(SpoolWriter *w);
/* Seals the message (data size into the header), appends it to a segment
 * or renames its file into msg/, and queues it for the next group commit;
 * frees the writer. `done(userdata,
 * error)` later runs on reply_to's loop: error 0 means durable (now send
 * 250), <0 means the message is not safe (it was removed; send 451). */
typedef void (*spool_commit_fn_t)(void *userdata, int error);
int spool_writer_commit(SpoolWriter *w, Mailbox *reply_to, spool_commit_fn_t done, void *userdata);

/* Calls cb for every committed message not done, sorted by MID (ownership
 * passes to cb, which must spool_message_free() it eventually); removes
 * leftovers in tmp/, message files whose size field does not match the
 * file, and segments with nothing pending. A segment is read up to its
 * first record that does not check (a tail no commit covered). */
int spool_recover(Spool *s, int (*cb)(SpoolMessage *m, void *userdata), void *userdata);
/* Records a recipient's outcome in the message's log (no fsync: at worst a
 * recipient is delivered twice after a crash, never lost). */
int spool_record(Spool *s, uint64_t mid, uint32_t rid, SpoolRcptState state);
/* The message is done (all recipients final): removes its file, or marks
 * it done in its segment, which goes with its last message. */
int spool_remove(Spool *s, uint64_t mid);
/* A descriptor of the file holding the message, for delivery: data is
 * [offset, offset+size). Read it with pread()/sendfile() and an explicit
 * offset only: a segment's descriptor is shared. */
int spool_open_data(Spool *s, uint64_t mid, int *ret_fd, uint64_t *ret_offset, uint64_t *ret_size);
