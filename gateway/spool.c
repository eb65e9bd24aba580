/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The durable spool (see spool.h for the layout and the group commit).
 *
 * Every message starts with a text envelope header followed by the message
 * data:
 *
 *      tlsgw-spool 1
 *      mid 7
 *      icid 5
 *      arrival 1700000000000000
 *      listener inbound
 *      client-ip 192.0.2.1
 *      helo mx.example.org
 *      sender a@example.org
 *      rcpt "john smith"@example.net
 *      size 00000000000000004711
 *      <empty line>
 *      <data>
 *
 * Values are escaped (%XX for '%', control octets and DEL), so no value can
 * hold CR, LF or NUL and every header line is non-empty: the first "\n\n"
 * ends the header. Lines for NULL fields (listener, client-ip, helo) are
 * left out. The size field holds dashes until the message is sealed at
 * commit.
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
 * A message that outgrows SPOOL_INLINE_MAX while arriving moves to its own
 * file, tmp/<MID>, renamed into msg/<MID> at commit, with outcomes in
 * msg/<MID>.state. A file whose size field is not "file size minus header
 * length" was never sealed and never acknowledged, so recovery deletes it.
 *
 * This module does not decide what happens to a message (queue.c does),
 * does not interpret the message data and never logs: every function
 * returns a negative errno on failure, 0 or positive on success.
 */

#include <dirent.h>
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <zlib.h>

/* Allocation failures inside the hash table are reported on the entry
 * that could not be added, not fatal. */
#define HASH_NONFATAL_OOM 1
#define uthash_nonfatal_oom(e) ((e)->oom = true)
#include <uthash.h>

#include "spool.h"
#include "util/macro.h"
#include "util/parse.h"

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
/* One state record: "<RID> <state>\n". */
#define SPOOL_RECORD_MAX 64
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

static const char * const id_kind_table[_SPOOL_ID_MAX] = {
        [SPOOL_ID_ICID] = "icid",
        [SPOOL_ID_MID]  = "mid",
        [SPOOL_ID_DCID] = "dcid",
};

static const char * const rcpt_state_table[_SPOOL_RCPT_STATE_MAX] = {
        [SPOOL_RCPT_PENDING]   = "pending",
        [SPOOL_RCPT_DELIVERED] = "delivered",
        [SPOOL_RCPT_BOUNCED]   = "bounced",
};

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
        bool broken;                            /* a write failed: commit refuses */

        /* In memory: a RecordHead, the header, the data so far. */
        uint8_t *mem;
        size_t mem_len, mem_cap;

        /* Spilled to tmp/<MID> (fd >= 0): header and data. */
        int fd;
        char name[SPOOL_NAME_MAX];
};

static void mid_name(uint64_t mid, char buf[static SPOOL_NAME_MAX]) {
        (void) snprintf(buf, SPOOL_NAME_MAX, "%" PRIu64, mid);
}

static void state_name(uint64_t mid, char buf[static SPOOL_NAME_MAX]) {
        (void) snprintf(buf, SPOOL_NAME_MAX, "%" PRIu64 ".state", mid);
}

/* ---- envelopes ---- */

void envelope_done(Envelope *e) {
        if (!e)
                return;
        free(e->sender);
        strv_free(e->rcpts);
        free(e->listener);
        free(e->client_ip);
        free(e->helo);
        *e = (Envelope) {};
}

static int strdup_or_null(const char *s, char **ret) {
        char *c = NULL;

        if (s) {
                c = strdup(s);
                if (!c)
                        return -ENOMEM;
        }
        *ret = c;
        return 0;
}

int envelope_copy(const Envelope *src, Envelope *dst) {
        _cleanup_(envelope_done) Envelope e = {
                .mid = src->mid,
                .icid = src->icid,
                .arrival_usec = src->arrival_usec,
        };
        size_t n = src->rcpts ? src->n_rcpts : 0;

        if (strdup_or_null(src->sender ? src->sender : "", &e.sender) < 0 ||
            strdup_or_null(src->listener, &e.listener) < 0 ||
            strdup_or_null(src->client_ip, &e.client_ip) < 0 ||
            strdup_or_null(src->helo, &e.helo) < 0)
                return -ENOMEM;

        e.rcpts = calloc(n + 1, sizeof(char *));
        if (!e.rcpts)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                e.rcpts[i] = strdup(src->rcpts[i]);
                if (!e.rcpts[i])
                        return -ENOMEM;
                e.n_rcpts = i + 1;
        }

        *dst = e;
        e = (Envelope) {};
        return 0;
}

void spool_message_free(SpoolMessage *m) {
        if (!m)
                return;
        envelope_done(&m->env);
        free(m->rcpt_state);
        free(m);
}

static void spool_message_freep(SpoolMessage **m) {
        spool_message_free(*m);
}

/* ---- header encoding ---- */

static bool must_escape(unsigned char c) {
        return c == '%' || c < 0x20 || c == 0x7f;
}

static void put_escaped(FILE *f, const char *key, const char *value) {
        static const char hex[] = "0123456789ABCDEF";

        fputs(key, f);
        fputc(' ', f);
        for (const unsigned char *p = (const unsigned char *) value; *p; p++) {
                if (must_escape(*p)) {
                        fputc('%', f);
                        fputc(hex[*p >> 4], f);
                        fputc(hex[*p & 15], f);
                } else
                        fputc(*p, f);
        }
        fputc('\n', f);
}

static int unhex(char c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        return -1;
}

/* Decodes value[0..len) into a new string; refuses malformed escapes and
 * an escaped NUL, which put_escaped() never writes. */
static int unescape(const char *value, size_t len, char **ret) {
        _cleanup_free_ char *s = malloc(len + 1);
        size_t j = 0;

        if (!s)
                return -ENOMEM;
        for (size_t i = 0; i < len; i++) {
                unsigned char c = (unsigned char) value[i];

                if (c == '%') {
                        int hi, lo;

                        if (len - i < 3)
                                return -EBADMSG;
                        hi = unhex(value[i + 1]);
                        lo = unhex(value[i + 2]);
                        if (hi < 0 || lo < 0 || (hi | lo) == 0)
                                return -EBADMSG;
                        s[j++] = (char) (hi << 4 | lo);
                        i += 2;
                } else if (must_escape(c))
                        return -EBADMSG;
                else
                        s[j++] = (char) c;
        }
        s[j] = '\0';
        *ret = TAKE_PTR(s);
        return 0;
}

/* Builds the header of env; the size field holds dashes until sealed. */
static int header_build(const Envelope *env, char **ret, size_t *ret_len, size_t *ret_size_offset) {
        _cleanup_free_ char *buf = NULL;
        size_t len = 0;
        long size_offset;
        FILE *f;

        f = open_memstream(&buf, &len);
        if (!f)
                return -ENOMEM;

        fprintf(f, SPOOL_MAGIC "\n");
        fprintf(f, "mid %" PRIu64 "\n", env->mid);
        fprintf(f, "icid %" PRIu64 "\n", env->icid);
        fprintf(f, "arrival %" PRIu64 "\n", env->arrival_usec);
        if (env->listener)
                put_escaped(f, "listener", env->listener);
        if (env->client_ip)
                put_escaped(f, "client-ip", env->client_ip);
        if (env->helo)
                put_escaped(f, "helo", env->helo);
        put_escaped(f, "sender", env->sender ? env->sender : "");
        for (size_t i = 0; i < env->n_rcpts; i++)
                put_escaped(f, "rcpt", env->rcpts[i]);
        fputs("size ", f);
        size_offset = ftell(f);
        for (unsigned i = 0; i < SPOOL_SIZE_WIDTH; i++)
                fputc('-', f);
        fputs("\n\n", f);

        if (ferror(f) || size_offset < 0) {
                fclose(f);
                return -ENOMEM;
        }
        if (fclose(f) != 0)
                return -ENOMEM;
        if (len > SPOOL_HEADER_MAX)
                return -E2BIG;

        *ret = TAKE_PTR(buf);
        *ret_len = len;
        *ret_size_offset = (size_t) size_offset;
        return 0;
}

static int strv_push(char ***l, size_t *n, char *s) {
        char **nl = realloc(*l, (*n + 2) * sizeof(char *));

        if (!nl)
                return -ENOMEM;
        nl[*n] = s;
        nl[*n + 1] = NULL;
        *l = nl;
        (*n)++;
        return 0;
}

static int value_u64(const char *v, size_t len, uint64_t *ret) {
        char tmp[SPOOL_SIZE_WIDTH + 1];

        if (len == 0 || len > SPOOL_SIZE_WIDTH)
                return -EBADMSG;
        memcpy(tmp, v, len);
        tmp[len] = '\0';
        return parse_uint64(tmp, ret) < 0 ? -EBADMSG : 0;
}

/* Parses a complete header h[0..len), which ends with "\n\n". */
static int header_parse(const char *h, size_t len, SpoolMessage **ret) {
        _cleanup_(spool_message_freep) SpoolMessage *m = NULL;
        bool have_mid = false, have_sender = false, have_size = false, first = true;
        const char *p = h, *end = h + len - 1;  /* stop before the empty line */
        int r;

        m = calloc(1, sizeof *m);
        if (!m)
                return -ENOMEM;

        while (p < end) {
                const char *eol = memchr(p, '\n', (size_t) (end - p));
                const char *sp, *v;
                size_t klen, vlen;

                if (!eol)
                        return -EBADMSG;
                if (first) {
                        if ((size_t) (eol - p) != strlen(SPOOL_MAGIC) ||
                            memcmp(p, SPOOL_MAGIC, strlen(SPOOL_MAGIC)) != 0)
                                return -EBADMSG;
                        first = false;
                        p = eol + 1;
                        continue;
                }

                sp = memchr(p, ' ', (size_t) (eol - p));
                if (!sp)
                        return -EBADMSG;
                klen = (size_t) (sp - p);
                v = sp + 1;
                vlen = (size_t) (eol - v);

#define KEY(k) (klen == strlen(k) && memcmp(p, k, klen) == 0)
                if (KEY("mid")) {
                        r = value_u64(v, vlen, &m->env.mid);
                        have_mid = true;
                } else if (KEY("icid"))
                        r = value_u64(v, vlen, &m->env.icid);
                else if (KEY("arrival"))
                        r = value_u64(v, vlen, &m->env.arrival_usec);
                else if (KEY("size")) {
                        if (vlen != SPOOL_SIZE_WIDTH)
                                return -EBADMSG;
                        r = value_u64(v, vlen, &m->data_size);
                        have_size = true;
                } else if (KEY("listener") && !m->env.listener)
                        r = unescape(v, vlen, &m->env.listener);
                else if (KEY("client-ip") && !m->env.client_ip)
                        r = unescape(v, vlen, &m->env.client_ip);
                else if (KEY("helo") && !m->env.helo)
                        r = unescape(v, vlen, &m->env.helo);
                else if (KEY("sender") && !m->env.sender) {
                        r = unescape(v, vlen, &m->env.sender);
                        have_sender = true;
                } else if (KEY("rcpt")) {
                        char *s;

                        r = unescape(v, vlen, &s);
                        if (r >= 0) {
                                r = strv_push(&m->env.rcpts, &m->env.n_rcpts, s);
                                if (r < 0)
                                        free(s);
                        }
                } else
                        /* Unknown or repeated keys mean a format we do not
                         * understand: better to refuse than to guess. */
                        return -EBADMSG;
#undef KEY
                if (r < 0)
                        return r;
                p = eol + 1;
        }

        if (first || !have_mid || !have_sender || !have_size || m->env.n_rcpts == 0)
                return -EBADMSG;

        m->rcpt_state = calloc(m->env.n_rcpts, sizeof(uint8_t));
        if (!m->rcpt_state)
                return -ENOMEM;
        m->data_offset = len;

        *ret = TAKE_PTR(m);
        return 0;
}

/* Reads and parses the header of an open message file and checks that the
 * file was sealed: size field == file size - header length. */
static int message_read(int fd, uint64_t mid, SpoolMessage **ret) {
        _cleanup_(spool_message_freep) SpoolMessage *m = NULL;
        _cleanup_free_ char *buf = NULL;
        size_t len = 0, cap = 0;
        const char *hend = NULL;
        struct stat st;
        int r;

        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode))
                return -EBADMSG;

        while (!hend) {
                ssize_t n;

                if (len >= SPOOL_HEADER_MAX)
                        return -EBADMSG;
                if (cap - len < SPOOL_READ_CHUNK) {
                        size_t nc = MAX(cap * 2, (size_t) SPOOL_READ_CHUNK);
                        char *nb = realloc(buf, nc);

                        if (!nb)
                                return -ENOMEM;
                        buf = nb;
                        cap = nc;
                }
                n = pread(fd, buf + len, SPOOL_READ_CHUNK, (off_t) len);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (n == 0)
                        return -EBADMSG;        /* EOF inside the header: torn */
                /* Search from one octet back so a "\n\n" split across reads
                 * is found. */
                size_t from = len > 0 ? len - 1 : 0;
                len += (size_t) n;
                hend = memmem(buf + from, len - from, "\n\n", 2);
        }

        r = header_parse(buf, (size_t) (hend - buf) + 2, &m);
        if (r < 0)
                return r;
        if (m->env.mid != mid)
                return -EBADMSG;
        if ((uint64_t) st.st_size < m->data_offset ||
            (uint64_t) st.st_size - m->data_offset != m->data_size)
                return -EBADMSG;

        *ret = TAKE_PTR(m);
        return 0;
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

/* ---- ID counters ---- */

static int ids_load(Spool *s) {
        _cleanup_fclose_ FILE *f = NULL;
        _cleanup_free_ char *line = NULL;
        size_t cap = 0;
        bool first = true;
        int fd;

        fd = openat(s->dir_fd, SPOOL_IDS_FILE, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return errno == ENOENT ? 0 : -errno;
        f = fdopen(fd, "r");
        if (!f) {
                safe_close(fd);
                return -errno;
        }

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
static void ids_bump(Spool *s, SpoolIdKind kind, uint64_t seen) {
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

static void segment_name(uint64_t number, const char *suffix, char buf[static SPOOL_NAME_MAX]) {
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
static void segment_drop(Spool *s, Segment *seg) {
        char name[SPOOL_NAME_MAX];

        segment_name(seg->number, "", name);
        (void) unlinkat(s->seg_fd, name, 0);
        segment_name(seg->number, SPOOL_LOG_SUFFIX, name);
        (void) unlinkat(s->seg_fd, name, 0);
        segment_free(s, seg);
}

static Segment *segment_link(Spool *s, uint64_t number, int fd, uint64_t size) {
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
                segment_drop(s, seg);
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

        segment_name(s->segment_next, "", name);
        /* O_EXCL: numbers only grow, so an existing file is not ours to
         * append to. */
        fd = openat(s->seg_fd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0)
                return -errno;
        seg = segment_link(s, s->segment_next, fd, 0);
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

                segment_name(seg->number, SPOOL_LOG_SUFFIX, name);
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

static SegmentEntry *entry_find(Spool *s, uint64_t mid) {
        SegmentEntry *e = NULL;

        HASH_FIND(hh, s->entries, &mid, sizeof(uint64_t), e);
        return e;
}

static int entry_add(Spool *s, Segment *seg, uint64_t mid, uint64_t data_offset, uint64_t data_size) {
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
                segment_drop(s, seg);
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
        r = entry_add(s, seg, w->mid, seg->size + sizeof(RecordHead) + w->header_size, w->data_size);
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
        size_t hlen, size_offset, inline_max;
        int r;

        if (!s || !env || !ret || env->mid == 0 || env->n_rcpts == 0 || !env->rcpts)
                return -EINVAL;

        r = header_build(env, &header, &hlen, &size_offset);
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
        mid_name(env->mid, w->name);

        r = writer_reserve(w, sizeof(RecordHead) + hlen);
        if (r < 0)
                return r;
        memset(w->mem, 0, sizeof(RecordHead));
        memcpy(w->mem + sizeof(RecordHead), header, hlen);
        w->mem_len = sizeof(RecordHead) + hlen;

        pthread_mutex_lock(&s->index_lock);
        inline_max = s->inline_max;
        pthread_mutex_unlock(&s->index_lock);
        if (hlen > inline_max) {
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
        size_t inline_max;
        int r;

        if (w->broken)
                return -EIO;

        if (w->fd < 0) {
                pthread_mutex_lock(&w->spool->index_lock);
                inline_max = w->spool->inline_max;
                pthread_mutex_unlock(&w->spool->index_lock);

                if (w->mem_len - sizeof(RecordHead) + n <= inline_max) {
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

/* ---- recovery ---- */

static int remove_locked(Spool *s, uint64_t mid);

static int rcpt_state_from_string(const char *s) {
        for (int i = 0; i < _SPOOL_RCPT_STATE_MAX; i++)
                if (streq(s, rcpt_state_table[i]))
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
        int fd;

        state_name(m->env.mid, name);
        fd = openat(s->msg_fd, name, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return errno == ENOENT ? 0 : -errno;
        f = fdopen(fd, "r");
        if (!f) {
                safe_close(fd);
                return -errno;
        }

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

static int dir_clear(int fd) {
        _cleanup_close_ int dfd = -EBADF;
        DIR *d;
        struct dirent *de;
        int r = 0;

        dfd = openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0)
                return -errno;
        d = fdopendir(dfd);
        if (!d)
                return -errno;
        TAKE_FD(dfd);

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

/* Lists a directory's numbered entries: "<N>" into plain and "<N><suffix>"
 * into suffixed, both sorted. */
static int dir_list(int fd, const char *suffix, NumberList *plain, NumberList *suffixed) {
        int dfd;
        DIR *d;
        struct dirent *de;
        int r = 0;

        dfd = openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0)
                return -errno;
        d = fdopendir(dfd);
        if (!d) {
                safe_close(dfd);
                return -errno;
        }
        while ((de = readdir(d))) {
                uint64_t v;
                bool has_suffix;

                if (name_to_number(de->d_name, suffix, &v, &has_suffix) < 0)
                        continue;
                r = number_list_push(has_suffix ? suffixed : plain, v);
                if (r < 0)
                        break;
        }
        closedir(d);
        if (r < 0)
                return r;

        if (plain->n > 0)
                qsort(plain->v, plain->n, sizeof(uint64_t), cmp_u64);
        if (suffixed->n > 0)
                qsort(suffixed->v, suffixed->n, sizeof(uint64_t), cmp_u64);
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
        _cleanup_free_ uint64_t *mids_v = NULL, *states_v = NULL;
        NumberList mids = {}, states = {};
        int r;

        /* Files in tmp/ were never committed, hence never acknowledged. */
        r = dir_clear(s->tmp_fd);
        if (r < 0)
                return r;

        r = dir_list(s->msg_fd, ".state", &mids, &states);
        mids_v = mids.v;
        states_v = states.v;
        if (r < 0)
                return r;

        /* A state file without its message: spool_remove() was interrupted
         * between its two unlinks. */
        for (size_t i = 0; i < states.n; i++)
                if (!number_list_has(&mids, states.v[i])) {
                        char name[SPOOL_NAME_MAX];

                        state_name(states.v[i], name);
                        (void) unlinkat(s->msg_fd, name, 0);
                }

        for (size_t i = 0; i < mids.n; i++) {
                _cleanup_(spool_message_freep) SpoolMessage *m = NULL;
                _cleanup_close_ int fd = -EBADF;
                char name[SPOOL_NAME_MAX];

                ids_bump(s, SPOOL_ID_MID, mids.v[i]);

                mid_name(mids.v[i], name);
                fd = openat(s->msg_fd, name, O_RDONLY | O_CLOEXEC);
                if (fd < 0)
                        return -errno;
                r = message_read(fd, mids.v[i], &m);
                if (r == -EBADMSG) {
                        /* Torn or unsealed: never acknowledged. */
                        s->n_files++;
                        (void) remove_locked(s, mids.v[i]);
                        continue;
                }
                if (r < 0)
                        return r;

                ids_bump(s, SPOOL_ID_ICID, m->env.icid);

                r = state_apply(s, m);
                if (r < 0)
                        return r;
                s->n_files++;
                if (!message_pending(m)) {
                        (void) remove_locked(s, mids.v[i]);
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
        int fd;

        segment_name(number, SPOOL_LOG_SUFFIX, name);
        fd = openat(s->seg_fd, name, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
                if (errno != ENOENT)
                        return -errno;
                *ret = NULL;
                *ret_n = 0;
                return 0;
        }
        f = fdopen(fd, "r");
        if (!f) {
                safe_close(fd);
                return -errno;
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
        r = header_parse((const char *) buf, head.header_size, &m);
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

        segment_name(number, "", name);
        fd = openat(s->seg_fd, name, O_RDWR | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0)
                return -errno;
        r = log_read(s, number, &lines, &n_lines);
        if (r < 0)
                return r;

        seg = segment_link(s, number, TAKE_FD(fd), 0);
        if (!seg)
                return -ENOMEM;

        for (;;) {
                _cleanup_(spool_message_freep) SpoolMessage *m = NULL;
                uint64_t len;

                r = record_read(seg->fd, off, (uint64_t) st.st_size, &m, &len);
                if (r == -EBADMSG)
                        break;          /* never acknowledged from here on */
                if (r < 0)
                        return r;
                off += len;

                ids_bump(s, SPOOL_ID_MID, m->env.mid);
                ids_bump(s, SPOOL_ID_ICID, m->env.icid);
                if (log_apply(lines, n_lines, m))
                        continue;
                /* A MID is in one place only; a second copy would be a
                 * bug, and delivering it twice is not the answer. */
                if (entry_find(s, m->env.mid))
                        continue;
                r = entry_add(s, seg, m->env.mid, m->data_offset, m->data_size);
                if (r < 0)
                        return r;
                r = found_push(found, m);
                if (r < 0)
                        return r;
                TAKE_PTR(m);
        }
        seg->size = off;

        if (seg->live == 0)
                segment_drop(s, seg);
        return 0;
}

static int recover_segments(Spool *s, Found *found) {
        _cleanup_free_ uint64_t *segs_v = NULL, *logs_v = NULL;
        NumberList segs = {}, logs = {};
        int r;

        r = dir_list(s->seg_fd, SPOOL_LOG_SUFFIX, &segs, &logs);
        segs_v = segs.v;
        logs_v = logs.v;
        if (r < 0)
                return r;

        /* A log without its segment: segment_drop() was interrupted. */
        for (size_t i = 0; i < logs.n; i++)
                if (!number_list_has(&segs, logs.v[i])) {
                        char name[SPOOL_NAME_MAX];

                        segment_name(logs.v[i], SPOOL_LOG_SUFFIX, name);
                        (void) unlinkat(s->seg_fd, name, 0);
                }

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
        e = entry_find(s, mid);
        if (e) {
                int r;

                n = snprintf(rec, sizeof rec, "%" PRIu64 " %" PRIu32 " %s\n", mid, rid, rcpt_state_table[state]);
                r = n < 0 || (size_t) n >= sizeof rec ? -EINVAL : segment_log(s, e->segment, rec, (size_t) n);
                pthread_mutex_unlock(&s->index_lock);
                return r;
        }
        pthread_mutex_unlock(&s->index_lock);

        n = snprintf(rec, sizeof rec, "%" PRIu32 " %s\n", rid, rcpt_state_table[state]);
        if (n < 0 || (size_t) n >= sizeof rec)
                return -EINVAL;

        /* Not a segment message: its own file, which must exist (no state
         * file for a message that is gone). */
        mid_name(mid, name);
        if (faccessat(s->msg_fd, name, F_OK, AT_SYMLINK_NOFOLLOW) < 0)
                return -errno;
        state_name(mid, name);
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
static int remove_locked(Spool *s, uint64_t mid) {
        char name[SPOOL_NAME_MAX];
        SegmentEntry *e;
        int r = 0;

        e = entry_find(s, mid);
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
        mid_name(mid, name);
        if (unlinkat(s->msg_fd, name, 0) < 0)
                r = -errno;
        else if (s->n_files > 0)
                s->n_files--;
        state_name(mid, name);
        if (unlinkat(s->msg_fd, name, 0) < 0 && errno != ENOENT && r == 0)
                r = -errno;
        return r;
}

int spool_remove(Spool *s, uint64_t mid) {
        int r;

        if (!s || mid == 0)
                return -EINVAL;

        pthread_mutex_lock(&s->index_lock);
        r = remove_locked(s, mid);
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
        e = entry_find(s, mid);
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

        mid_name(mid, name);
        fd = openat(s->msg_fd, name, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        r = message_read(fd, mid, &m);
        if (r < 0)
                return r;

        *ret_fd = TAKE_FD(fd);
        if (ret_offset)
                *ret_offset = m->data_offset;
        if (ret_size)
                *ret_size = m->data_size;
        return 0;
}
