/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Reading the spool back after a restart (spool_recover(), see spool.h):
 * message files in msg/ with their .state files, then every segment's
 * records up to the first that does not check, with its .log applied.
 * Leftovers that were never acknowledged (tmp/, unsealed or torn files,
 * orphan state files and logs) are removed; messages whose recipients are
 * all done, and segments with nothing pending, too. Never logs; negative
 * errno.
 */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
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

static int rcpt_state_from_string(const char *s) {
        for (int i = 0; i < _SPOOL_RCPT_STATE_MAX; i++)
                if (streq(s, spool_rcpt_state_table[i]))
                        return i;
        return -EINVAL;
}

/* Applies msg/<MID>.state. A last line without LF was torn by a crash and
 * is ignored, as are lines for unknown RIDs. Later lines win. */
static int state_apply(Spool *s, SpoolMessage *m) {
        _cleanup_fclose_ FILE *f = NULL;
        _cleanup_free_ char *line = NULL;
        char name[SPOOL_NAME_MAX];
        size_t cap = 0;
        int r;

        spool_state_name(m->env.mid, name);
        r = spool_fopen_at(s->msg_fd, name, &f);
        if (r < 0 || !f)
                return r;

        for (;;) {
                ssize_t n = getline(&line, &cap, f);
                uint32_t rid;
                char *sp;
                int st;

                if (n < 0)
                        break;
                if (line[n - 1] != '\n')
                        break;
                line[n - 1] = '\0';
                sp = strchr(line, ' ');
                if (!sp)
                        continue;
                *sp = '\0';
                st = rcpt_state_from_string(sp + 1);
                if (parse_uint32(line, &rid) < 0 || st < 0 || rid >= m->env.n_rcpts)
                        continue;
                m->rcpt_state[rid] = (uint8_t) st;
        }
        return ferror(f) ? -EIO : 0;
}

static int cmp_u64(const void *a, const void *b) {
        uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;

        return x < y ? -1 : x > y;
}

/* Parses "<digits>" or "<digits><suffix>" names; others are not ours. */
static int name_to_number(const char *name, const char *suffix, uint64_t *ret, bool *ret_suffix) {
        char buf[SPOOL_NAME_MAX];
        const char *dot = strchr(name, '.');
        size_t n = dot ? (size_t) (dot - name) : strlen(name);
        uint64_t v;

        if (dot && !streq(dot, suffix))
                return -EINVAL;
        if (n == 0 || n >= sizeof buf)
                return -EINVAL;
        memcpy(buf, name, n);
        buf[n] = '\0';
        if (buf[0] == '0' || parse_uint64(buf, &v) < 0)
                return -EINVAL;
        *ret = v;
        *ret_suffix = !!dot;
        return 0;
}

/* A stream over the directory fd refers to, which stays open and ours. */
static int dir_open(int fd, DIR **ret) {
        _cleanup_close_ int dfd = -EBADF;
        DIR *d;

        dfd = openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0)
                return -errno;
        d = fdopendir(dfd);
        if (!d)
                return -errno;
        TAKE_FD(dfd);
        *ret = d;
        return 0;
}

static int dir_clear(int fd) {
        DIR *d;
        struct dirent *de;
        int r;

        r = dir_open(fd, &d);
        if (r < 0)
                return r;

        while ((de = readdir(d))) {
                if (streq(de->d_name, ".") || streq(de->d_name, ".."))
                        continue;
                if (unlinkat(fd, de->d_name, 0) < 0 && errno != ENOENT && r == 0)
                        r = -errno;
        }
        closedir(d);
        return r;
}

typedef struct NumberList {
        uint64_t *v;
        size_t n, cap;
} NumberList;

static int number_list_push(NumberList *l, uint64_t v) {
        if (l->n >= l->cap) {
                size_t nc = MAX(l->cap * 2, (size_t) 64);
                uint64_t *nv = realloc(l->v, nc * sizeof(uint64_t));

                if (!nv)
                        return -ENOMEM;
                l->v = nv;
                l->cap = nc;
        }
        l->v[l->n++] = v;
        return 0;
}

static bool number_list_has(const NumberList *l, uint64_t v) {
        return l->n > 0 && bsearch(&v, l->v, l->n, sizeof(uint64_t), cmp_u64);
}

/* Lists a directory's numbered entries "<N>", sorted, and removes every
 * "<N><suffix>" whose "<N>" is gone: a removal interrupted between its two
 * unlinks (message file then .state, segment then .log). */
static int dir_scan(int fd, const char *suffix, NumberList *ret) {
        _cleanup_free_ uint64_t *orphans_v = NULL;
        NumberList plain = {}, suffixed = {};
        DIR *d;
        struct dirent *de;
        int r;

        r = dir_open(fd, &d);
        if (r < 0)
                return r;
        while ((de = readdir(d))) {
                uint64_t v;
                bool has_suffix;

                if (name_to_number(de->d_name, suffix, &v, &has_suffix) < 0)
                        continue;
                r = number_list_push(has_suffix ? &suffixed : &plain, v);
                if (r < 0)
                        break;
        }
        closedir(d);
        orphans_v = suffixed.v;
        if (r < 0) {
                free(plain.v);
                return r;
        }

        if (plain.n > 0)
                qsort(plain.v, plain.n, sizeof(uint64_t), cmp_u64);
        for (size_t i = 0; i < suffixed.n; i++)
                if (!number_list_has(&plain, suffixed.v[i])) {
                        char name[SPOOL_NAME_MAX];

                        spool_number_name(suffixed.v[i], suffix, name);
                        (void) unlinkat(fd, name, 0);
                }
        *ret = plain;
        return 0;
}

/* What recovery found, handed to the callback in MID order at the end. */
typedef struct Found {
        SpoolMessage **m;
        size_t n, cap;
} Found;

static int found_push(Found *f, SpoolMessage *m) {
        if (f->n >= f->cap) {
                size_t nc = MAX(f->cap * 2, (size_t) 64);
                SpoolMessage **nm = realloc(f->m, nc * sizeof(SpoolMessage *));

                if (!nm)
                        return -ENOMEM;
                f->m = nm;
                f->cap = nc;
        }
        f->m[f->n++] = m;
        return 0;
}

static void found_done(Found *f) {
        for (size_t i = 0; i < f->n; i++)
                spool_message_free(f->m[i]);
        free(f->m);
        *f = (Found) {};
}

static int found_cmp(const void *a, const void *b) {
        const SpoolMessage *x = *(SpoolMessage * const *) a, *y = *(SpoolMessage * const *) b;

        return cmp_u64(&x->env.mid, &y->env.mid);
}

static bool message_pending(const SpoolMessage *m) {
        for (size_t k = 0; k < m->env.n_rcpts; k++)
                if (m->rcpt_state[k] == SPOOL_RCPT_PENDING)
                        return true;
        return false;
}

/* Messages in their own files (msg/). */
static int recover_files(Spool *s, Found *found) {
        _cleanup_free_ uint64_t *mids_v = NULL;
        NumberList mids = {};
        int r;

        /* Files in tmp/ were never committed, hence never acknowledged. */
        r = dir_clear(s->tmp_fd);
        if (r < 0)
                return r;

        r = dir_scan(s->msg_fd, ".state", &mids);
        if (r < 0)
                return r;
        mids_v = mids.v;

        for (size_t i = 0; i < mids.n; i++) {
                _cleanup_(spool_message_freep) SpoolMessage *m = NULL;
                _cleanup_close_ int fd = -EBADF;
                char name[SPOOL_NAME_MAX];

                spool_ids_bump(s, SPOOL_ID_MID, mids.v[i]);

                spool_mid_name(mids.v[i], name);
                fd = openat(s->msg_fd, name, O_RDONLY | O_CLOEXEC);
                if (fd < 0)
                        return -errno;
                r = spool_message_read(fd, mids.v[i], &m);
                if (r == -EBADMSG) {
                        /* Torn or unsealed: never acknowledged. */
                        s->n_files++;
                        (void) spool_remove_locked(s, mids.v[i]);
                        continue;
                }
                if (r < 0)
                        return r;

                spool_ids_bump(s, SPOOL_ID_ICID, m->env.icid);

                r = state_apply(s, m);
                if (r < 0)
                        return r;
                s->n_files++;
                if (!message_pending(m)) {
                        (void) spool_remove_locked(s, mids.v[i]);
                        continue;
                }
                r = found_push(found, m);
                if (r < 0)
                        return r;
                TAKE_PTR(m);
        }
        return 0;
}

/* One line of a segment log, in file order (seq) so later lines win. */
typedef struct LogLine {
        uint64_t mid;
        uint64_t seq;
        int32_t rid;                    /* -1: the message is done */
        uint8_t state;
} LogLine;

static int log_line_cmp(const void *a, const void *b) {
        const LogLine *x = a, *y = b;

        if (x->mid != y->mid)
                return x->mid < y->mid ? -1 : 1;
        return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Reads <N>.log: complete lines only (a torn last line is ignored), lines
 * that do not parse are skipped. Sorted by MID, then file order. */
static int log_read(Spool *s, uint64_t number, LogLine **ret, size_t *ret_n) {
        _cleanup_fclose_ FILE *f = NULL;
        _cleanup_free_ char *line = NULL;
        _cleanup_free_ LogLine *v = NULL;
        char name[SPOOL_NAME_MAX];
        size_t n = 0, cap = 0, lcap = 0;
        int r;

        spool_number_name(number, SPOOL_LOG_SUFFIX, name);
        r = spool_fopen_at(s->seg_fd, name, &f);
        if (r < 0)
                return r;
        if (!f) {
                *ret = NULL;
                *ret_n = 0;
                return 0;
        }

        for (;;) {
                ssize_t len = getline(&line, &lcap, f);
                char *a, *b, *save = NULL;
                LogLine l = { .seq = n };
                uint32_t rid;

                if (len < 0)
                        break;
                if (line[len - 1] != '\n')
                        break;
                line[len - 1] = '\0';

                a = strtok_r(line, " ", &save);
                b = a ? strtok_r(NULL, " ", &save) : NULL;
                if (!b || parse_uint64(a, &l.mid) < 0)
                        continue;
                if (streq(b, "done")) {
                        if (strtok_r(NULL, " ", &save))
                                continue;
                        l.rid = -1;
                } else {
                        const char *st = strtok_r(NULL, " ", &save);
                        int k = st ? rcpt_state_from_string(st) : -EINVAL;

                        if (k < 0 || parse_uint32(b, &rid) < 0 || rid > INT32_MAX ||
                            strtok_r(NULL, " ", &save))
                                continue;
                        l.rid = (int32_t) rid;
                        l.state = (uint8_t) k;
                }

                if (n >= cap) {
                        size_t nc = MAX(cap * 2, (size_t) 64);
                        LogLine *nv = realloc(v, nc * sizeof(LogLine));

                        if (!nv)
                                return -ENOMEM;
                        v = nv;
                        cap = nc;
                }
                v[n++] = l;
        }
        if (ferror(f))
                return -EIO;

        if (n > 0)
                qsort(v, n, sizeof(LogLine), log_line_cmp);
        *ret = TAKE_PTR(v);
        *ret_n = n;
        return 0;
}

/* Applies the log lines of m; returns true if the message is done. */
static bool log_apply(const LogLine *lines, size_t n, SpoolMessage *m) {
        LogLine key = { .mid = m->env.mid };
        size_t lo = 0, hi = n;

        /* First line for this MID (lines are sorted by MID, then seq 0..). */
        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;

                if (log_line_cmp(&lines[mid], &key) < 0)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        for (size_t i = lo; i < n && lines[i].mid == m->env.mid; i++) {
                if (lines[i].rid < 0)
                        return true;
                if ((size_t) lines[i].rid < m->env.n_rcpts)
                        m->rcpt_state[lines[i].rid] = lines[i].state;
        }
        return !message_pending(m);
}

/* Reads and checks the record at off: its head, then header and data
 * against the CRC. -EBADMSG: no valid record here (end of the segment's
 * good part). */
static int record_read(int fd, uint64_t off, uint64_t file_size, SpoolMessage **ret, uint64_t *ret_len) {
        _cleanup_(spool_message_freep) SpoolMessage *m = NULL;
        _cleanup_free_ uint8_t *buf = NULL;
        RecordHead head;
        uint64_t len, done;
        uLong crc;
        ssize_t n;
        int r;

        if (file_size - off < sizeof head)
                return -EBADMSG;
        n = pread(fd, &head, sizeof head, (off_t) off);
        if (n < 0)
                return -errno;
        if ((size_t) n != sizeof head ||
            memcmp(head.magic, SPOOL_RECORD_MAGIC, sizeof head.magic) != 0 ||
            head.head_crc != (uint32_t) crc32(0, (const Bytef *) &head, offsetof(RecordHead, head_crc)) ||
            head.reserved != 0 || head.header_size < 2 || head.header_size > SPOOL_HEADER_MAX ||
            head.data_size > file_size)
                return -EBADMSG;
        len = (uint64_t) head.header_size + head.data_size;
        if (file_size - off - sizeof head < len)
                return -EBADMSG;

        buf = malloc(MAX((size_t) head.header_size, (size_t) SPOOL_SCAN_CHUNK));
        if (!buf)
                return -ENOMEM;
        n = pread(fd, buf, head.header_size, (off_t) (off + sizeof head));
        if (n < 0)
                return -errno;
        if ((size_t) n != head.header_size)
                return -EBADMSG;
        crc = crc32(0, buf, head.header_size);
        if (memcmp(buf + head.header_size - 2, "\n\n", 2) != 0)
                return -EBADMSG;
        r = spool_header_parse((const char *) buf, head.header_size, &m);
        if (r < 0)
                return r;

        for (done = 0; done < head.data_size; ) {
                size_t want = (size_t) MIN(head.data_size - done, (uint64_t) SPOOL_SCAN_CHUNK);

                n = pread(fd, buf, want, (off_t) (off + sizeof head + head.header_size + done));
                if (n < 0)
                        return -errno;
                if (n == 0)
                        return -EBADMSG;
                crc = crc32(crc, buf, (uInt) n);
                done += (uint64_t) n;
        }
        if ((uint32_t) crc != head.crc || m->env.mid != head.mid || m->data_size != head.data_size)
                return -EBADMSG;

        m->data_offset = off + sizeof head + head.header_size;
        *ret = TAKE_PTR(m);
        *ret_len = sizeof head + len;
        return 0;
}

/* Reads one segment: its records up to the first that does not check, with
 * the outcomes of its log applied; keeps it if any message is pending. */
static int recover_segment(Spool *s, uint64_t number, Found *found) {
        _cleanup_free_ LogLine *lines = NULL;
        _cleanup_close_ int fd = -EBADF;
        char name[SPOOL_NAME_MAX];
        size_t n_lines = 0;
        uint64_t off = 0;
        struct stat st;
        Segment *seg;
        int r;

        spool_number_name(number, "", name);
        fd = openat(s->seg_fd, name, O_RDWR | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0)
                return -errno;
        r = log_read(s, number, &lines, &n_lines);
        if (r < 0)
                return r;

        seg = spool_segment_link(s, number, TAKE_FD(fd), 0);
        if (!seg)
                return -ENOMEM;

        for (;;) {
                _cleanup_(spool_message_freep) SpoolMessage *m = NULL;
                uint64_t len = 0;

                r = record_read(seg->fd, off, (uint64_t) st.st_size, &m, &len);
                if (r == -EBADMSG)
                        break;          /* never acknowledged from here on */
                if (r < 0)
                        return r;
                off += len;

                spool_ids_bump(s, SPOOL_ID_MID, m->env.mid);
                spool_ids_bump(s, SPOOL_ID_ICID, m->env.icid);
                if (log_apply(lines, n_lines, m))
                        continue;
                /* A MID is in one place only; a second copy would be a
                 * bug, and delivering it twice is not the answer. */
                if (spool_entry_find(s, m->env.mid))
                        continue;
                r = spool_entry_add(s, seg, m->env.mid, m->data_offset, m->data_size);
                if (r < 0)
                        return r;
                r = found_push(found, m);
                if (r < 0)
                        return r;
                TAKE_PTR(m);
        }
        seg->size = off;

        if (seg->live == 0)
                spool_segment_drop(s, seg);
        return 0;
}

static int recover_segments(Spool *s, Found *found) {
        _cleanup_free_ uint64_t *segs_v = NULL;
        NumberList segs = {};
        int r;

        r = dir_scan(s->seg_fd, SPOOL_LOG_SUFFIX, &segs);
        if (r < 0)
                return r;
        segs_v = segs.v;

        for (size_t i = 0; i < segs.n; i++) {
                /* New records always go to a new segment: an old one may
                 * end in a torn tail. */
                s->segment_next = MAX(s->segment_next, segs.v[i] + 1);
                r = recover_segment(s, segs.v[i], found);
                if (r < 0)
                        return r;
        }
        return 0;
}

int spool_recover(Spool *s, int (*cb)(SpoolMessage *m, void *userdata), void *userdata) {
        _cleanup_(found_done) Found found = {};
        size_t n;
        int r;

        if (!s || !cb)
                return -EINVAL;

        pthread_mutex_lock(&s->index_lock);
        r = recover_files(s, &found);
        if (r >= 0)
                r = recover_segments(s, &found);
        pthread_mutex_unlock(&s->index_lock);
        if (r < 0)
                return r;

        if (found.n > 0)
                qsort(found.m, found.n, sizeof(SpoolMessage *), found_cmp);
        n = found.n;
        for (size_t i = 0; i < found.n; i++) {
                SpoolMessage *m = TAKE_PTR(found.m[i]);

                r = cb(m, userdata);
                if (r < 0)
                        return r;
        }
        return (int) MIN(n, (size_t) INT32_MAX);
}
