/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The durable spool (see spool.h for the layout and the group commit).
 *
 * Every message is an envelope header (spool-format.c) followed by its data
 * in wire form.
 *
 * Where it is stored depends on its size. Most mail is small: a writer keeps
 * header and data in memory, and the commit appends them as one record to
 * the current segment file (seg/<N>), a binary RecordHead in front carrying
 * the lengths and CRC-32s of itself and of the rest. Per-recipient outcomes
 * and "message done" go to seg/<N>.log, one line per write. A segment is
 * deleted when its last message is done; recovery reads the records up to
 * the first one that does not check (a tail torn by a crash, written after
 * the last acknowledged message) and never appends to an old segment. No
 * file is created, renamed or unlinked per message, which on ext4 and most
 * file systems is the dominant cost of a file-per-message spool (inode
 * allocation and the directory lock).
 *
 * A message that outgrows the inline limit (SPOOL_INLINE_MAX_DEFAULT) while
 * arriving moves to its own file, tmp/<MID>, renamed into msg/<MID> at
 * commit, with outcomes in msg/<MID>.state. A file whose size field is not
 * "file size minus header length" was never sealed and never acknowledged,
 * so recovery deletes it.
 *
 * Recovery after a restart is spool-recover.c.
 *
 * This module does not decide what happens to a message (queue.c does),
 * does not interpret the message data and never logs: every function
 * returns a negative errno on failure, 0 or positive on success.
 */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <zlib.h>

#include "spool-internal.h"
#include "util/macro.h"
#include "util/parse.h"

static const char * const id_kind_table[_SPOOL_ID_MAX] = {
        [SPOOL_ID_ICID] = "icid",
        [SPOOL_ID_MID]  = "mid",
        [SPOOL_ID_DCID] = "dcid",
};

const char * const spool_rcpt_state_table[_SPOOL_RCPT_STATE_MAX] = {
        [SPOOL_RCPT_PENDING]   = "pending",
        [SPOOL_RCPT_DELIVERED] = "delivered",
        [SPOOL_RCPT_BOUNCED]   = "bounced",
};

void spool_mid_name(uint64_t mid, char buf[static SPOOL_NAME_MAX]) {
        (void) snprintf(buf, SPOOL_NAME_MAX, "%" PRIu64, mid);
}

void spool_state_name(uint64_t mid, char buf[static SPOOL_NAME_MAX]) {
        (void) snprintf(buf, SPOOL_NAME_MAX, "%" PRIu64 ".state", mid);
}

/* ---- I/O helpers ---- */

static int write_all(int fd, const void *p, size_t n) {
        const uint8_t *q = p;

        while (n > 0) {
                ssize_t k = write(fd, q, n);

                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (k == 0)
                        return -EIO;
                q += k;
                n -= (size_t) k;
        }
        return 0;
}

static int pwrite_all(int fd, const void *p, size_t n, off_t off) {
        const uint8_t *q = p;

        while (n > 0) {
                ssize_t k = pwrite(fd, q, n, off);

                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (k == 0)
                        return -EIO;
                q += k;
                n -= (size_t) k;
                off += k;
        }
        return 0;
}

static int mkdir_p(const char *path, mode_t mode) {
        _cleanup_free_ char *p = strdup(path);

        if (!p)
                return -ENOMEM;
        for (char *s = p + 1; ; s++) {
                if (*s != '/' && *s != '\0')
                        continue;
                char c = *s;
                *s = '\0';
                if (mkdir(p, mode) < 0 && errno != EEXIST)
                        return -errno;
                *s = c;
                if (c == '\0')
                        break;
        }
        return 0;
}

static int subdir_open(int dir_fd, const char *name) {
        int fd;

        if (mkdirat(dir_fd, name, 0700) < 0 && errno != EEXIST)
                return -errno;
        fd = openat(dir_fd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        return fd < 0 ? -errno : fd;
}

int spool_fopen_at(int dir_fd, const char *name, FILE **ret) {
        FILE *f;
        int fd;

        fd = openat(dir_fd, name, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
                if (errno != ENOENT)
                        return -errno;
                *ret = NULL;
                return 0;
        }
        f = fdopen(fd, "r");
        if (!f) {
                safe_close(fd);
                return -errno;
        }
        *ret = f;
        return 0;
}

/* ---- ID counters ---- */

static int ids_load(Spool *s) {
        _cleanup_fclose_ FILE *f = NULL;
        _cleanup_free_ char *line = NULL;
        size_t cap = 0;
        bool first = true;
        int r;

        r = spool_fopen_at(s->dir_fd, SPOOL_IDS_FILE, &f);
        if (r < 0 || !f)
                return r;

        for (;;) {
                ssize_t n = getline(&line, &cap, f);
                char *sp;
                uint64_t v;
                int k;

                if (n < 0)
                        break;
                if (n == 0 || line[n - 1] != '\n')
                        return -EBADMSG;
                line[n - 1] = '\0';
                if (first) {
                        if (!streq(line, SPOOL_IDS_MAGIC))
                                return -EBADMSG;
                        first = false;
                        continue;
                }
                sp = strchr(line, ' ');
                if (!sp)
                        return -EBADMSG;
                *sp = '\0';
                for (k = 0; k < _SPOOL_ID_MAX; k++)
                        if (streq(line, id_kind_table[k]))
                                break;
                if (k >= _SPOOL_ID_MAX || parse_uint64(sp + 1, &v) < 0)
                        return -EBADMSG;
                s->id_next[k] = MAX(v, UINT64_C(1));
                s->id_limit[k] = s->id_next[k];
        }
        if (ferror(f))
                return -EIO;
        if (first)
                return -EBADMSG;
        return 0;
}

/* Writes the new limits through a temporary file and rename, fsyncing the
 * file and the directory, so the ids file is always either the old or the
 * new version, never torn. Called with id_lock held. */
static int ids_save(Spool *s, const uint64_t limit[static _SPOOL_ID_MAX]) {
        _cleanup_close_ int fd = -EBADF;
        char buf[256];
        int n, r;

        n = snprintf(buf, sizeof buf, SPOOL_IDS_MAGIC "\n%s %" PRIu64 "\n%s %" PRIu64 "\n%s %" PRIu64 "\n",
                     id_kind_table[SPOOL_ID_ICID], limit[SPOOL_ID_ICID],
                     id_kind_table[SPOOL_ID_MID], limit[SPOOL_ID_MID],
                     id_kind_table[SPOOL_ID_DCID], limit[SPOOL_ID_DCID]);
        if (n < 0 || (size_t) n >= sizeof buf)
                return -EINVAL;

        fd = openat(s->dir_fd, SPOOL_IDS_TMP, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0)
                return -errno;
        r = write_all(fd, buf, (size_t) n);
        if (r < 0)
                return r;
        if (fsync(fd) < 0)
                return -errno;
        if (renameat(s->dir_fd, SPOOL_IDS_TMP, s->dir_fd, SPOOL_IDS_FILE) < 0)
                return -errno;
        if (fsync(s->dir_fd) < 0)
                return -errno;
        return 0;
}

/* Returns 0 when the new block cannot be made durable: handing out IDs
 * that might repeat after a crash would be worse than refusing. */
uint64_t spool_next_id(Spool *s, SpoolIdKind kind) {
        uint64_t id = 0;

        if (kind < 0 || kind >= _SPOOL_ID_MAX)
                return 0;

        pthread_mutex_lock(&s->id_lock);
        if (s->id_next[kind] >= s->id_limit[kind]) {
                uint64_t limit[_SPOOL_ID_MAX];

                if (s->id_next[kind] > UINT64_MAX - SPOOL_ID_BLOCK)
                        goto unlock;
                memcpy(limit, s->id_limit, sizeof limit);
                limit[kind] = s->id_next[kind] + SPOOL_ID_BLOCK;
                if (ids_save(s, limit) < 0)
                        goto unlock;
                s->id_limit[kind] = limit[kind];
        }
        id = s->id_next[kind]++;
unlock:
        pthread_mutex_unlock(&s->id_lock);
        return id;
}

/* Makes sure IDs handed out later are above `seen` (found on disk). */
void spool_ids_bump(Spool *s, SpoolIdKind kind, uint64_t seen) {
        pthread_mutex_lock(&s->id_lock);
        if (seen != UINT64_MAX && seen >= s->id_next[kind]) {
                s->id_next[kind] = seen + 1;
                /* The limit stays below next, so the next ID reserves and
                 * persists a new block first. */
                s->id_limit[kind] = MIN(s->id_limit[kind], s->id_next[kind]);
        }
        pthread_mutex_unlock(&s->id_lock);
}

/* ---- segments (callers hold index_lock) ---- */

void spool_number_name(uint64_t number, const char *suffix, char buf[static SPOOL_NAME_MAX]) {
        (void) snprintf(buf, SPOOL_NAME_MAX, "%" PRIu64 "%s", number, suffix);
}

static void segment_free(Spool *s, Segment *seg) {
        if (seg->prev)
                seg->prev->next = seg->next;
        else
                s->segments = seg->next;
        if (seg->next)
                seg->next->prev = seg->prev;
        if (s->current == seg)
                s->current = NULL;
        safe_close(seg->fd);
        safe_close(seg->log_fd);
        free(seg);
}

/* All its messages are done: the segment first, then its log, so that a
 * crash in between leaves only an orphan log (removed by recovery), never
 * messages without their outcomes. */
void spool_segment_drop(Spool *s, Segment *seg) {
        char name[SPOOL_NAME_MAX];

        spool_number_name(seg->number, "", name);
        (void) unlinkat(s->seg_fd, name, 0);
        spool_number_name(seg->number, SPOOL_LOG_SUFFIX, name);
        (void) unlinkat(s->seg_fd, name, 0);
        segment_free(s, seg);
}

Segment *spool_segment_link(Spool *s, uint64_t number, int fd, uint64_t size) {
        Segment *seg = calloc(1, sizeof *seg);

        if (!seg)
                return NULL;
        *seg = (Segment) {
                .number = number,
                .fd = fd,
                .log_fd = -EBADF,
                .size = size,
                .next = s->segments,
        };
        if (s->segments)
                s->segments->prev = seg;
        s->segments = seg;
        return seg;
}

/* Stops appending to the current segment; it goes once it is empty. */
static void segment_close_current(Spool *s) {
        Segment *seg = s->current;

        s->current = NULL;
        if (seg && seg->live == 0)
                spool_segment_drop(s, seg);
}

/* The segment a record of `len` octets goes to: the current one while it
 * has room (an empty segment takes any record), else a new one. */
static int segment_for_append(Spool *s, size_t len, Segment **ret) {
        char name[SPOOL_NAME_MAX];
        Segment *seg;
        int fd;

        if (s->current && (s->current->size == 0 || s->current->size + len <= s->segment_max)) {
                *ret = s->current;
                return 0;
        }
        segment_close_current(s);

        spool_number_name(s->segment_next, "", name);
        /* O_EXCL: numbers only grow, so an existing file is not ours to
         * append to. */
        fd = openat(s->seg_fd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0)
                return -errno;
        seg = spool_segment_link(s, s->segment_next, fd, 0);
        if (!seg) {
                (void) unlinkat(s->seg_fd, name, 0);
                safe_close(fd);
                return -ENOMEM;
        }
        s->segment_next++;
        s->current = seg;
        *ret = seg;
        return 0;
}

/* One write per line: concurrent appenders never interleave inside a line,
 * and a crash tears at most the last line, which recovery ignores. No
 * fsync: at worst a recipient is delivered twice after a crash, never
 * lost. */
static int segment_log(Spool *s, Segment *seg, const char *line, size_t len) {
        ssize_t k;

        if (seg->log_fd < 0) {
                char name[SPOOL_NAME_MAX];

                spool_number_name(seg->number, SPOOL_LOG_SUFFIX, name);
                seg->log_fd = openat(s->seg_fd, name, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
                if (seg->log_fd < 0) {
                        int r = -errno;

                        seg->log_fd = -EBADF;
                        return r;
                }
        }
        do
                k = write(seg->log_fd, line, len);
        while (k < 0 && errno == EINTR);
        if (k < 0)
                return -errno;
        return (size_t) k == len ? 0 : -EIO;
}

SegmentEntry *spool_entry_find(Spool *s, uint64_t mid) {
        SegmentEntry *e = NULL;

        HASH_FIND(hh, s->entries, &mid, sizeof(uint64_t), e);
        return e;
}

int spool_entry_add(Spool *s, Segment *seg, uint64_t mid, uint64_t data_offset, uint64_t data_size) {
        SegmentEntry *e = calloc(1, sizeof *e);

        if (!e)
                return -ENOMEM;
        *e = (SegmentEntry) {
                .mid = mid,
                .segment = seg,
                .data_offset = data_offset,
                .data_size = data_size,
        };
        HASH_ADD(hh, s->entries, mid, sizeof(uint64_t), e);
        if (e->oom) {
                free(e);
                return -ENOMEM;
        }
        seg->live++;
        return 0;
}

/* The message is done (or was never safe): forget it, and the segment with
 * it when it was the last one there. */
static void entry_remove(Spool *s, SegmentEntry *e) {
        Segment *seg = e->segment;

        HASH_DEL(s->entries, e);
        free(e);
        if (--seg->live == 0 && seg != s->current)
                spool_segment_drop(s, seg);
}

/* Appends the writer's in-memory record to the current segment and indexes
 * it. The write happens under index_lock, so a segment is always a run of
 * complete records followed at most by a torn tail that no commit has
 * covered yet: every record before an acknowledged one was written before
 * it, hence made durable by the same sync. */
static int segment_append(Spool *s, SpoolWriter *w, Segment **ret) {
        RecordHead *head = (RecordHead *) w->mem;
        Segment *seg = NULL;
        int r;

        *head = (RecordHead) {
                .mid = w->mid,
                .data_size = w->data_size,
                .header_size = (uint32_t) w->header_size,
                .crc = (uint32_t) crc32(0, w->mem + sizeof(RecordHead), (uInt) (w->mem_len - sizeof(RecordHead))),
        };
        memcpy(head->magic, SPOOL_RECORD_MAGIC, sizeof head->magic);
        head->head_crc = (uint32_t) crc32(0, (const Bytef *) head, offsetof(RecordHead, head_crc));

        pthread_mutex_lock(&s->index_lock);
        r = segment_for_append(s, w->mem_len, &seg);
        if (r < 0)
                goto unlock;
        r = pwrite_all(seg->fd, w->mem, w->mem_len, (off_t) seg->size);
        if (r < 0) {
                /* Cut the partial record off; if even that fails, no later
                 * record may follow it. */
                if (ftruncate(seg->fd, (off_t) seg->size) < 0)
                        segment_close_current(s);
                goto unlock;
        }
        r = spool_entry_add(s, seg, w->mid, seg->size + sizeof(RecordHead) + w->header_size, w->data_size);
        if (r < 0) {
                /* Unindexed, so it must not come back either. */
                if (ftruncate(seg->fd, (off_t) seg->size) < 0)
                        segment_close_current(s);
                goto unlock;
        }
        seg->size += w->mem_len;
        /* Stays valid until the commit completes: the message keeps its
         * segment alive, and nothing removes it before it is acknowledged
         * except the flusher itself. */
        *ret = seg;
unlock:
        pthread_mutex_unlock(&s->index_lock);
        return r;
}

/* ---- flusher ---- */

static void commit_dispatch(void *userdata) {
        SpoolCommit *c = userdata;

        c->done(c->userdata, c->error);
        free(c);
}

/* Makes a batch durable. Segment records need only their segments' data
 * (fdatasync) and, once per segment, its name in seg/; a message file
 * needs its data, its rename and msg/, for which one syncfs(2) of the
 * spool's file system serves the whole batch. fdatasync is preferred
 * where it suffices: syncfs also writes back everything else on the file
 * system. */
static int flush_batch(Spool *s, SpoolCommit *batch) {
        Segment *done[SPOOL_FLUSH_SEGMENTS_MAX];
        size_t n_done = 0;

        for (SpoolCommit *c = batch; c; c = c->next)
                if (!c->segment)
                        return syncfs(s->dir_fd) < 0 ? -errno : 0;

        for (SpoolCommit *c = batch; c; c = c->next) {
                Segment *seg = c->segment;
                bool seen = false;

                for (size_t i = 0; i < n_done; i++)
                        if (done[i] == seg)
                                seen = true;
                if (seen)
                        continue;
                if (n_done >= ELEMENTSOF(done))
                        return syncfs(s->dir_fd) < 0 ? -errno : 0;
                if (fdatasync(seg->fd) < 0)
                        return -errno;
                if (!seg->dir_synced) {
                        if (fsync(s->seg_fd) < 0)
                                return -errno;
                        seg->dir_synced = true;
                }
                done[n_done++] = seg;
        }
        return 0;
}

static void *flusher_thread(void *userdata) {
        Spool *s = userdata;

        for (;;) {
                SpoolCommit *batch;
                int r;

                pthread_mutex_lock(&s->lock);
                while (!s->pending_head && !s->stop)
                        pthread_cond_wait(&s->cond, &s->lock);
                batch = s->pending_head;
                s->pending_head = s->pending_tail = NULL;
                pthread_mutex_unlock(&s->lock);

                if (!batch)
                        break;          /* stopping and nothing left */

                r = flush_batch(s, batch);

                while (batch) {
                        SpoolCommit *c = batch;

                        batch = c->next;
                        c->next = NULL;
                        c->error = r;
                        if (r < 0)
                                /* Not durable, so not acknowledged: the
                                 * client gets 451 and retries; remove it so
                                 * it is not delivered twice either. */
                                (void) spool_remove(s, c->mid);
                        if (mailbox_post(c->reply_to, commit_dispatch, c) < 0)
                                /* Only -ENOMEM; nothing left to tell. */
                                free(c);
                }
        }
        return NULL;
}

/* ---- open/free ---- */

int spool_open(const char *dir, Spool **ret) {
        Spool *s;
        sigset_t all, old;
        int r;

        if (!dir || !ret)
                return -EINVAL;

        s = calloc(1, sizeof *s);
        if (!s)
                return -ENOMEM;
        s->dir_fd = s->tmp_fd = s->msg_fd = s->seg_fd = -EBADF;
        s->inline_max = SPOOL_INLINE_MAX_DEFAULT;
        s->segment_max = SPOOL_SEGMENT_MAX_DEFAULT;
        s->segment_next = 1;
        pthread_mutex_init(&s->id_lock, NULL);
        pthread_mutex_init(&s->index_lock, NULL);
        pthread_mutex_init(&s->lock, NULL);
        pthread_cond_init(&s->cond, NULL);
        for (int k = 0; k < _SPOOL_ID_MAX; k++)
                s->id_next[k] = s->id_limit[k] = 1;

        s->dir = strdup(dir);
        if (!s->dir) {
                r = -ENOMEM;
                goto fail;
        }
        r = mkdir_p(dir, 0700);
        if (r < 0)
                goto fail;
        s->dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (s->dir_fd < 0) {
                r = -errno;
                goto fail;
        }
        s->tmp_fd = subdir_open(s->dir_fd, "tmp");
        if (s->tmp_fd < 0) {
                r = s->tmp_fd;
                goto fail;
        }
        s->msg_fd = subdir_open(s->dir_fd, "msg");
        if (s->msg_fd < 0) {
                r = s->msg_fd;
                goto fail;
        }
        s->seg_fd = subdir_open(s->dir_fd, "seg");
        if (s->seg_fd < 0) {
                r = s->seg_fd;
                goto fail;
        }
        r = ids_load(s);
        if (r < 0)
                goto fail;

        /* The flusher must never take the process's signals: sd-event
         * handles them on the main thread with signalfd. */
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        r = -pthread_create(&s->thread, NULL, flusher_thread, s);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (r < 0)
                goto fail;
        s->thread_started = true;

        *ret = s;
        return 0;
fail:
        spool_free(s);
        return r;
}

Spool *spool_free(Spool *s) {
        SegmentEntry *e, *etmp;

        if (!s)
                return NULL;

        if (s->thread_started) {
                pthread_mutex_lock(&s->lock);
                s->stop = true;
                pthread_cond_signal(&s->cond);
                pthread_mutex_unlock(&s->lock);
                pthread_join(s->thread, NULL);
        }

        HASH_ITER(hh, s->entries, e, etmp) {
                HASH_DEL(s->entries, e);
                free(e);
        }
        while (s->segments)
                segment_free(s, s->segments);

        safe_close(s->seg_fd);
        safe_close(s->msg_fd);
        safe_close(s->tmp_fd);
        safe_close(s->dir_fd);
        pthread_cond_destroy(&s->cond);
        pthread_mutex_destroy(&s->lock);
        pthread_mutex_destroy(&s->index_lock);
        pthread_mutex_destroy(&s->id_lock);
        free(s->dir);
        free(s);
        return NULL;
}

const char *spool_dir(const Spool *s) {
        return s->dir;
}

int spool_set_limits(Spool *s, size_t inline_max, size_t segment_max) {
        if (!s || segment_max == 0)
                return -EINVAL;
        pthread_mutex_lock(&s->index_lock);
        s->inline_max = inline_max;
        s->segment_max = segment_max;
        pthread_mutex_unlock(&s->index_lock);
        return 0;
}

size_t spool_n_messages(Spool *s) {
        size_t n;

        pthread_mutex_lock(&s->index_lock);
        n = HASH_COUNT(s->entries) + s->n_files;
        pthread_mutex_unlock(&s->index_lock);
        return n;
}

/* ---- writers ---- */

/* Moves an in-memory message to tmp/<MID> and continues there. */
static int writer_spill(SpoolWriter *w) {
        Spool *s = w->spool;
        int r;

        /* O_EXCL: a MID is never reused, so an existing file is a bug. */
        w->fd = openat(s->tmp_fd, w->name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (w->fd < 0) {
                r = -errno;
                w->fd = -EBADF;
                return r;
        }
        r = write_all(w->fd, w->mem + sizeof(RecordHead), w->mem_len - sizeof(RecordHead));
        if (r < 0) {
                (void) unlinkat(s->tmp_fd, w->name, 0);
                w->fd = safe_close(w->fd);
                return r;
        }
        w->mem = mfree(w->mem);
        w->mem_len = w->mem_cap = 0;
        return 0;
}

static int writer_reserve(SpoolWriter *w, size_t n) {
        size_t cap;
        uint8_t *m;

        if (w->mem_cap - w->mem_len >= n)
                return 0;
        cap = MAX(w->mem_cap, (size_t) SPOOL_WRITER_CHUNK);
        while (cap - w->mem_len < n)
                cap *= 2;
        m = realloc(w->mem, cap);
        if (!m)
                return -ENOMEM;
        w->mem = m;
        w->mem_cap = cap;
        return 0;
}

int spool_writer_new(Spool *s, const Envelope *env, SpoolWriter **ret) {
        _cleanup_free_ SpoolWriter *w = NULL;
        _cleanup_free_ char *header = NULL;
        size_t hlen, size_offset;
        int r;

        if (!s || !env || !ret || env->mid == 0 || env->n_rcpts == 0 || !env->rcpts)
                return -EINVAL;

        r = spool_header_build(env, &header, &hlen, &size_offset);
        if (r < 0)
                return r;

        w = calloc(1, sizeof *w);
        if (!w)
                return -ENOMEM;
        w->spool = s;
        w->mid = env->mid;
        w->header_size = hlen;
        w->size_offset = size_offset;
        w->fd = -EBADF;
        spool_mid_name(env->mid, w->name);

        r = writer_reserve(w, sizeof(RecordHead) + hlen);
        if (r < 0)
                return r;
        memset(w->mem, 0, sizeof(RecordHead));
        memcpy(w->mem + sizeof(RecordHead), header, hlen);
        w->mem_len = sizeof(RecordHead) + hlen;

        /* Read once: every chunk of DATA would take the lock otherwise. */
        pthread_mutex_lock(&s->index_lock);
        w->inline_max = s->inline_max;
        pthread_mutex_unlock(&s->index_lock);
        if (hlen > w->inline_max) {
                r = writer_spill(w);
                if (r < 0) {
                        free(w->mem);
                        return r;
                }
        }

        *ret = TAKE_PTR(w);
        return 0;
}

int spool_writer_write(SpoolWriter *w, const void *p, size_t n) {
        int r;

        if (w->broken)
                return -EIO;

        if (w->fd < 0) {
                if (w->mem_len - sizeof(RecordHead) + n <= w->inline_max) {
                        r = writer_reserve(w, n);
                        if (r < 0)
                                goto fail;
                        memcpy(w->mem + w->mem_len, p, n);
                        w->mem_len += n;
                        w->data_size += n;
                        return 0;
                }
                r = writer_spill(w);
                if (r < 0)
                        goto fail;
        }

        r = write_all(w->fd, p, n);
        if (r < 0)
                /* Part of the chunk may be on disk; the file is no longer
                 * trustworthy. */
                goto fail;
        w->data_size += n;
        return 0;
fail:
        w->broken = true;
        return r;
}

uint64_t spool_writer_size(const SpoolWriter *w) {
        return w->data_size;
}

static void writer_free(SpoolWriter *w) {
        safe_close(w->fd);
        free(w->mem);
        free(w);
}

void spool_writer_abort(SpoolWriter *w) {
        if (!w)
                return;
        if (w->fd >= 0)
                (void) unlinkat(w->spool->tmp_fd, w->name, 0);
        writer_free(w);
}

/* Seals a spilled file and renames it into msg/. */
static int writer_commit_file(SpoolWriter *w) {
        Spool *s = w->spool;
        char field[SPOOL_SIZE_WIDTH + 1];
        int r;

        (void) snprintf(field, sizeof field, "%0*" PRIu64, SPOOL_SIZE_WIDTH, w->data_size);
        r = pwrite_all(w->fd, field, SPOOL_SIZE_WIDTH, (off_t) w->size_offset);
        if (r < 0)
                return r;
        if (close(TAKE_FD(w->fd)) < 0 && errno != EINTR) {
                /* The tmp file stays for spool_writer_abort(). */
                w->fd = -EBADF;
                return -errno;
        }
        w->fd = -EBADF;
        /* RENAME_NOREPLACE is not needed: MIDs never repeat. */
        if (renameat(s->tmp_fd, w->name, s->msg_fd, w->name) < 0)
                return -errno;

        pthread_mutex_lock(&s->index_lock);
        s->n_files++;
        pthread_mutex_unlock(&s->index_lock);
        return 0;
}

/* Always consumes the writer: on failure nothing of the message is left
 * and done() is never called. */
int spool_writer_commit(SpoolWriter *w, Mailbox *reply_to, spool_commit_fn_t done, void *userdata) {
        Spool *s = w->spool;
        SpoolCommit *c = NULL;
        int r;

        if (!reply_to || !done) {
                r = -EINVAL;
                goto fail;
        }
        if (w->broken) {
                r = -EIO;
                goto fail;
        }

        /* Allocate before the message becomes visible, so that a stored
         * message is always one that will be answered. */
        c = calloc(1, sizeof *c);
        if (!c) {
                r = -ENOMEM;
                goto fail;
        }
        *c = (SpoolCommit) {
                .mid = w->mid,
                .reply_to = reply_to,
                .done = done,
                .userdata = userdata,
        };

        if (w->fd >= 0) {
                r = writer_commit_file(w);
                if (r < 0) {
                        if (w->fd < 0)
                                /* Closed but not renamed: drop the tmp file
                                 * ourselves, abort only frees. */
                                (void) unlinkat(s->tmp_fd, w->name, 0);
                        goto fail;
                }
        } else {
                char field[SPOOL_SIZE_WIDTH + 1];

                (void) snprintf(field, sizeof field, "%0*" PRIu64, SPOOL_SIZE_WIDTH, w->data_size);
                memcpy(w->mem + sizeof(RecordHead) + w->size_offset, field, SPOOL_SIZE_WIDTH);
                r = segment_append(s, w, &c->segment);
                if (r < 0)
                        goto fail;
        }
        writer_free(w);

        pthread_mutex_lock(&s->lock);
        if (s->pending_tail)
                s->pending_tail->next = c;
        else
                s->pending_head = c;
        s->pending_tail = c;
        pthread_cond_signal(&s->cond);
        pthread_mutex_unlock(&s->lock);
        return 0;

fail:
        free(c);
        spool_writer_abort(w);
        return r;
}

/* ---- per-message operations ---- */

int spool_record(Spool *s, uint64_t mid, uint32_t rid, SpoolRcptState state) {
        _cleanup_close_ int fd = -EBADF;
        char name[SPOOL_NAME_MAX], rec[SPOOL_LOG_LINE_MAX];
        SegmentEntry *e;
        ssize_t k;
        int n;

        if (!s || mid == 0 || state < 0 || state >= _SPOOL_RCPT_STATE_MAX)
                return -EINVAL;

        pthread_mutex_lock(&s->index_lock);
        e = spool_entry_find(s, mid);
        if (e) {
                int r;

                n = snprintf(rec, sizeof rec, "%" PRIu64 " %" PRIu32 " %s\n", mid, rid, spool_rcpt_state_table[state]);
                r = n < 0 || (size_t) n >= sizeof rec ? -EINVAL : segment_log(s, e->segment, rec, (size_t) n);
                pthread_mutex_unlock(&s->index_lock);
                return r;
        }
        pthread_mutex_unlock(&s->index_lock);

        n = snprintf(rec, sizeof rec, "%" PRIu32 " %s\n", rid, spool_rcpt_state_table[state]);
        if (n < 0 || (size_t) n >= sizeof rec)
                return -EINVAL;

        /* Not a segment message: its own file, which must exist (no state
         * file for a message that is gone). */
        spool_mid_name(mid, name);
        if (faccessat(s->msg_fd, name, F_OK, AT_SYMLINK_NOFOLLOW) < 0)
                return -errno;
        spool_state_name(mid, name);
        fd = openat(s->msg_fd, name, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
        if (fd < 0)
                return -errno;
        /* One write per record, as for segment logs. */
        do
                k = write(fd, rec, (size_t) n);
        while (k < 0 && errno == EINTR);
        if (k < 0)
                return -errno;
        if (k != n)
                return -EIO;
        return 0;
}

/* Called with index_lock held. */
int spool_remove_locked(Spool *s, uint64_t mid) {
        char name[SPOOL_NAME_MAX];
        SegmentEntry *e;
        int r = 0;

        e = spool_entry_find(s, mid);
        if (e) {
                char line[SPOOL_LOG_LINE_MAX];
                int n = snprintf(line, sizeof line, "%" PRIu64 " done\n", mid);

                r = n < 0 || (size_t) n >= sizeof line ? -EINVAL : segment_log(s, e->segment, line, (size_t) n);
                entry_remove(s, e);
                return r;
        }

        /* Message first: a crash in between leaves only an orphan state
         * file, which recovery deletes, never a message without its
         * delivery record. */
        spool_mid_name(mid, name);
        if (unlinkat(s->msg_fd, name, 0) < 0)
                r = -errno;
        else if (s->n_files > 0)
                s->n_files--;
        spool_state_name(mid, name);
        if (unlinkat(s->msg_fd, name, 0) < 0 && errno != ENOENT && r == 0)
                r = -errno;
        return r;
}

int spool_remove(Spool *s, uint64_t mid) {
        int r;

        if (!s || mid == 0)
                return -EINVAL;

        pthread_mutex_lock(&s->index_lock);
        r = spool_remove_locked(s, mid);
        pthread_mutex_unlock(&s->index_lock);
        return r;
}

int spool_open_data(Spool *s, uint64_t mid, int *ret_fd, uint64_t *ret_offset, uint64_t *ret_size) {
        _cleanup_(spool_message_freep) SpoolMessage *m = NULL;
        _cleanup_close_ int fd = -EBADF;
        char name[SPOOL_NAME_MAX];
        SegmentEntry *e;
        int r;

        if (!s || mid == 0 || !ret_fd)
                return -EINVAL;

        pthread_mutex_lock(&s->index_lock);
        e = spool_entry_find(s, mid);
        if (e) {
                uint64_t off = e->data_offset, size = e->data_size;

                /* Readers use pread()/sendfile() with explicit offsets, so
                 * a duplicate of the segment's descriptor serves them all. */
                fd = fcntl(e->segment->fd, F_DUPFD_CLOEXEC, 3);
                pthread_mutex_unlock(&s->index_lock);
                if (fd < 0)
                        return -errno;
                *ret_fd = TAKE_FD(fd);
                if (ret_offset)
                        *ret_offset = off;
                if (ret_size)
                        *ret_size = size;
                return 0;
        }
        pthread_mutex_unlock(&s->index_lock);

        spool_mid_name(mid, name);
        fd = openat(s->msg_fd, name, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        r = spool_message_read(fd, mid, &m);
        if (r < 0)
                return r;

        *ret_fd = TAKE_FD(fd);
        if (ret_offset)
                *ret_offset = m->data_offset;
        if (ret_size)
                *ret_size = m->data_size;
        return 0;
}
