/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * Inside the spool: shared by spool.c (writers, commits, the index,
 * per-message operations), spool-format.c (the envelope header) and
 * spool-recover.c (reading it all back after a restart). Nothing else
 * includes this file; the module's interface is spool.h.
 */

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdint.h>
#include <sys/types.h>

/* Allocation failures inside the hash table are reported on the entry
 * that could not be added, not fatal. */
#define HASH_NONFATAL_OOM 1
#define uthash_nonfatal_oom(e) ((e)->oom = true)
#include <uthash.h>

#include "spool.h"

/* Version line; bump when the header format changes incompatibly. */
#define SPOOL_MAGIC "tlsgw-spool 1"
/* Width of the size field: UINT64_MAX has 20 decimal digits, so the field
 * can be overwritten in place with pwrite() without moving the data. */
#define SPOOL_SIZE_WIDTH 20
/* A header is the envelope only. RFC 5321 4.5.3.1.8 requires accepting at
 * least 100 recipients, each path at most 256 octets (4.5.3.1.3), tripled
 * by escaping in the worst case; 4 MiB leaves room for far more recipients
 * than any listener allows and bounds what recovery reads for a damaged
 * file. */
#define SPOOL_HEADER_MAX (4U * 1024U * 1024U)
/* IDs are reserved in blocks: one fsynced write of the ids file per block
 * instead of per ID. A crash skips at most this many IDs per kind. */
#define SPOOL_ID_BLOCK UINT64_C(1000)
/* "<20 digits>" plus ".state" and NUL. */
#define SPOOL_NAME_MAX 32
/* Read size while looking for the end of a header. */
#define SPOOL_READ_CHUNK 4096

#define SPOOL_IDS_FILE "ids"
#define SPOOL_IDS_TMP "ids.tmp"
#define SPOOL_IDS_MAGIC "tlsgw-ids 1"

/* Messages whose header and data stay below this are held in memory while
 * they arrive and appended to a segment at commit; larger ones get their
 * own file. Most mail is a few tens of KiB; 256 KiB per session receiving
 * DATA bounds the memory this costs. */
#define SPOOL_INLINE_MAX_DEFAULT (256U * 1024U)
/* A segment is closed for appends at this size. Larger segments mean fewer
 * files; smaller ones free disk sooner when one old message is deferred
 * for days (a segment lives as long as its last message). */
#define SPOOL_SEGMENT_MAX_DEFAULT (8U * 1024U * 1024U)
/* First allocation for an in-memory message body; grows by doubling. */
#define SPOOL_WRITER_CHUNK (16U * 1024U)
/* Read size while checking a record on recovery. */
#define SPOOL_SCAN_CHUNK (64U * 1024U)
/* Distinct segments one flush syncs one by one; a batch spanning more
 * (only with tiny segment limits) is synced with syncfs(2) instead. */
#define SPOOL_FLUSH_SEGMENTS_MAX 8
/* One log line: "<MID> <RID> <state>\n" or "<MID> done\n". */
#define SPOOL_LOG_LINE_MAX 80

#define SPOOL_RECORD_MAGIC "tlsgwR1\n"
#define SPOOL_LOG_SUFFIX ".log"

extern const char * const spool_rcpt_state_table[_SPOOL_RCPT_STATE_MAX];

/* One commit waiting for the flusher, then the closure posted back to the
 * committer's loop. */
typedef struct SpoolCommit {
        struct SpoolCommit *next;
        uint64_t mid;
        struct Segment *segment;        /* NULL: a message file */
        Mailbox *reply_to;
        spool_commit_fn_t done;
        void *userdata;
        int error;
} SpoolCommit;

/* In front of every record of a segment, in native byte order (a spool is
 * read by the machine that wrote it). */
typedef struct RecordHead {
        char magic[8];                  /* SPOOL_RECORD_MAGIC */
        uint64_t mid;
        uint64_t data_size;
        uint32_t header_size;           /* envelope header, "\n\n" included */
        uint32_t crc;                   /* CRC-32 of header and data */
        uint32_t reserved;              /* zero */
        uint32_t head_crc;              /* CRC-32 of the fields above */
} RecordHead;

_Static_assert(sizeof(RecordHead) == 40, "RecordHead has no padding");

typedef struct Segment {
        uint64_t number;
        int fd;                         /* read-write; duplicated for delivery */
        int log_fd;                     /* <N>.log, opened on the first line */
        uint64_t size;                  /* end of the last complete record */
        size_t live;                    /* messages not done */
        bool dir_synced;                /* its name is durable in seg/ (flusher only) */
        struct Segment *prev, *next;
} Segment;

/* Where a segment message lives; the index is keyed by MID. */
typedef struct SegmentEntry {
        uint64_t mid;
        Segment *segment;
        uint64_t data_offset;
        uint64_t data_size;
        bool oom;                       /* set when the index could not grow */
        UT_hash_handle hh;
} SegmentEntry;

struct Spool {
        char *dir;
        int dir_fd;
        int tmp_fd;
        int msg_fd;
        int seg_fd;

        size_t inline_max;
        size_t segment_max;

        pthread_mutex_t id_lock;
        uint64_t id_next[_SPOOL_ID_MAX];
        uint64_t id_limit[_SPOOL_ID_MAX];       /* persisted: IDs < limit may be in use */

        pthread_mutex_t index_lock;             /* protects the fields below up to lock */
        Segment *segments;
        Segment *current;                       /* appended to; NULL until the first commit */
        uint64_t segment_next;
        SegmentEntry *entries;
        size_t n_files;                         /* messages in msg/ */

        pthread_mutex_t lock;                   /* protects the fields below */
        pthread_cond_t cond;
        SpoolCommit *pending_head, *pending_tail;
        bool stop;
        bool thread_started;
        pthread_t thread;
};

struct SpoolWriter {
        Spool *spool;
        uint64_t mid;
        uint64_t data_size;
        size_t header_size;
        size_t size_offset;                     /* of the size field, in the header */
        size_t inline_max;                      /* the spool's, when the writer started */
        bool broken;                            /* a write failed: commit refuses */

        /* In memory: a RecordHead, the header, the data so far. */
        uint8_t *mem;
        size_t mem_len, mem_cap;

        /* Spilled to tmp/<MID> (fd >= 0): header and data. */
        int fd;
        char name[SPOOL_NAME_MAX];
};

/* File names: "<MID>", "<MID>.state", "<N><suffix>" (suffix "" or ".log"). */
void spool_mid_name(uint64_t mid, char buf[static SPOOL_NAME_MAX]);
void spool_state_name(uint64_t mid, char buf[static SPOOL_NAME_MAX]);
void spool_number_name(uint64_t number, const char *suffix, char buf[static SPOOL_NAME_MAX]);
/* DIR_FD/NAME opened for reading as a stream; 0 and *ret NULL when it
 * does not exist. */
int spool_fopen_at(int dir_fd, const char *name, FILE **ret);

/* spool-format.c */
int spool_header_build(const Envelope *env, char **ret, size_t *ret_len, size_t *ret_size_offset);
int spool_header_parse(const char *h, size_t len, SpoolMessage **ret);
int spool_message_read(int fd, uint64_t mid, SpoolMessage **ret);
void spool_message_freep(SpoolMessage **m);

/* spool.c; the segment and index functions want index_lock held. */
void spool_ids_bump(Spool *s, SpoolIdKind kind, uint64_t seen);
Segment *spool_segment_link(Spool *s, uint64_t number, int fd, uint64_t size);
void spool_segment_drop(Spool *s, Segment *seg);
SegmentEntry *spool_entry_find(Spool *s, uint64_t mid);
int spool_entry_add(Spool *s, Segment *seg, uint64_t mid, uint64_t data_offset, uint64_t data_size);
int spool_remove_locked(Spool *s, uint64_t mid);
