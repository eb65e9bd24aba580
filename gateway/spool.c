/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The durable spool (see spool.h for the layout and the group commit).
 *
 * A message file is a text envelope header followed by the message data:
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
 * left out. The size field is written as dashes when the file is created
 * and filled with the real data size by spool_writer_commit() just before
 * the rename into msg/: a file whose size field is not "file size minus
 * header length" was never sealed and never acknowledged, so recovery may
 * delete it.
 *
 * This module does not decide what happens to a message (queue.c does),
 * does not interpret the message data and never logs: every function
 * returns a negative errno on failure, 0 or positive on success.
 */

#include <dirent.h>
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
        Mailbox *reply_to;
        spool_commit_fn_t done;
        void *userdata;
        int error;
} SpoolCommit;

struct Spool {
        char *dir;
        int dir_fd;
        int tmp_fd;
        int msg_fd;

        pthread_mutex_t id_lock;
        uint64_t id_next[_SPOOL_ID_MAX];
        uint64_t id_limit[_SPOOL_ID_MAX];       /* persisted: IDs < limit may be in use */

        pthread_mutex_t lock;                   /* protects the fields below */
        pthread_cond_t cond;
        SpoolCommit *pending_head, *pending_tail;
        bool stop;
        bool thread_started;
        pthread_t thread;
};

struct SpoolWriter {
        Spool *spool;
        int fd;
        uint64_t mid;
        uint64_t data_offset;
        uint64_t size_offset;
        uint64_t data_size;
        bool broken;                            /* a write failed: commit refuses */
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

/* ---- flusher ---- */

static void commit_dispatch(void *userdata) {
        SpoolCommit *c = userdata;

        c->done(c->userdata, c->error);
        free(c);
}

static void *flusher_thread(void *userdata) {
        Spool *s = userdata;

        for (;;) {
                SpoolCommit *batch;
                int r = 0;

                pthread_mutex_lock(&s->lock);
                while (!s->pending_head && !s->stop)
                        pthread_cond_wait(&s->cond, &s->lock);
                batch = s->pending_head;
                s->pending_head = s->pending_tail = NULL;
                pthread_mutex_unlock(&s->lock);

                if (!batch)
                        break;          /* stopping and nothing left */

                /* One syncfs(2) writes back the data of every file in the
                 * batch, their renames into msg/ and the directories: all
                 * of them live on the spool's file system. */
                if (syncfs(s->dir_fd) < 0)
                        r = -errno;

                while (batch) {
                        SpoolCommit *c = batch;

                        batch = c->next;
                        c->next = NULL;
                        c->error = r;
                        if (r < 0) {
                                /* Not durable, so not acknowledged: the
                                 * client gets 451 and retries; remove it so
                                 * it is not delivered twice either. */
                                char name[SPOOL_NAME_MAX];

                                mid_name(c->mid, name);
                                (void) unlinkat(s->msg_fd, name, 0);
                        }
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
        s->dir_fd = s->tmp_fd = s->msg_fd = -EBADF;
        pthread_mutex_init(&s->id_lock, NULL);
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
        if (!s)
                return NULL;

        if (s->thread_started) {
                pthread_mutex_lock(&s->lock);
                s->stop = true;
                pthread_cond_signal(&s->cond);
                pthread_mutex_unlock(&s->lock);
                pthread_join(s->thread, NULL);
        }

        safe_close(s->msg_fd);
        safe_close(s->tmp_fd);
        safe_close(s->dir_fd);
        pthread_cond_destroy(&s->cond);
        pthread_mutex_destroy(&s->lock);
        pthread_mutex_destroy(&s->id_lock);
        free(s->dir);
        free(s);
        return NULL;
}

const char *spool_dir(const Spool *s) {
        return s->dir;
}

/* ---- writers ---- */

int spool_writer_new(Spool *s, const Envelope *env, SpoolWriter **ret) {
        _cleanup_free_ SpoolWriter *w = NULL;
        _cleanup_free_ char *header = NULL;
        size_t hlen, size_offset;
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
        w->data_offset = hlen;
        w->size_offset = size_offset;
        mid_name(env->mid, w->name);

        /* O_EXCL: a MID is never reused, so an existing file is a bug. */
        w->fd = openat(s->tmp_fd, w->name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (w->fd < 0)
                return -errno;

        r = write_all(w->fd, header, hlen);
        if (r < 0) {
                (void) unlinkat(s->tmp_fd, w->name, 0);
                safe_close(w->fd);
                return r;
        }

        *ret = TAKE_PTR(w);
        return 0;
}

int spool_writer_write(SpoolWriter *w, const void *p, size_t n) {
        int r;

        if (w->broken)
                return -EIO;
        r = write_all(w->fd, p, n);
        if (r < 0) {
                /* Part of the chunk may be on disk; the file is no longer
                 * trustworthy. */
                w->broken = true;
                return r;
        }
        w->data_size += n;
        return 0;
}

uint64_t spool_writer_size(const SpoolWriter *w) {
        return w->data_size;
}

void spool_writer_abort(SpoolWriter *w) {
        if (!w)
                return;
        (void) unlinkat(w->spool->tmp_fd, w->name, 0);
        safe_close(w->fd);
        free(w);
}

/* Always consumes the writer: on failure the tmp file is gone and done()
 * is never called. */
int spool_writer_commit(SpoolWriter *w, Mailbox *reply_to, spool_commit_fn_t done, void *userdata) {
        Spool *s = w->spool;
        SpoolCommit *c = NULL;
        char field[SPOOL_SIZE_WIDTH + 1];
        int r;

        if (!reply_to || !done) {
                r = -EINVAL;
                goto fail;
        }
        if (w->broken) {
                r = -EIO;
                goto fail;
        }

        /* Allocate before the rename so that a message in msg/ is always
         * one that will be answered. */
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

        (void) snprintf(field, sizeof field, "%0*" PRIu64, SPOOL_SIZE_WIDTH, w->data_size);
        r = pwrite_all(w->fd, field, SPOOL_SIZE_WIDTH, (off_t) w->size_offset);
        if (r < 0)
                goto fail;
        if (close(TAKE_FD(w->fd)) < 0 && errno != EINTR) {
                r = -errno;
                goto fail;
        }
        /* RENAME_NOREPLACE is not needed: MIDs never repeat. */
        if (renameat(s->tmp_fd, w->name, s->msg_fd, w->name) < 0) {
                r = -errno;
                goto fail;
        }
        free(w);

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

/* ---- recovery and per-message operations ---- */

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

/* Parses "<digits>" or "<digits>.state" names; others are not ours. */
static int name_to_mid(const char *name, uint64_t *ret, bool *ret_state) {
        char buf[SPOOL_NAME_MAX];
        const char *dot = strchr(name, '.');
        size_t n = dot ? (size_t) (dot - name) : strlen(name);
        uint64_t mid;

        if (dot && !streq(dot, ".state"))
                return -EINVAL;
        if (n == 0 || n >= sizeof buf)
                return -EINVAL;
        memcpy(buf, name, n);
        buf[n] = '\0';
        if (buf[0] == '0' || parse_uint64(buf, &mid) < 0)
                return -EINVAL;
        *ret = mid;
        *ret_state = !!dot;
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

/* Lists msg/: message MIDs (sorted) and state-file MIDs (sorted). */
static int msg_list(Spool *s, uint64_t **ret_mids, size_t *ret_n, uint64_t **ret_states, size_t *ret_ns) {
        _cleanup_free_ uint64_t *mids = NULL, *states = NULL;
        size_t n = 0, ns = 0, cap = 0, caps = 0;
        int dfd;
        DIR *d;
        struct dirent *de;

        dfd = openat(s->msg_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0)
                return -errno;
        d = fdopendir(dfd);
        if (!d) {
                safe_close(dfd);
                return -errno;
        }

        while ((de = readdir(d))) {
                uint64_t mid, **l;
                size_t *len, *c;
                bool is_state;

                if (name_to_mid(de->d_name, &mid, &is_state) < 0)
                        continue;
                l = is_state ? &states : &mids;
                len = is_state ? &ns : &n;
                c = is_state ? &caps : &cap;
                if (*len >= *c) {
                        size_t nc = MAX(*c * 2, (size_t) 64);
                        uint64_t *nl = realloc(*l, nc * sizeof(uint64_t));

                        if (!nl) {
                                closedir(d);
                                return -ENOMEM;
                        }
                        *l = nl;
                        *c = nc;
                }
                (*l)[(*len)++] = mid;
        }
        closedir(d);

        if (n > 0)
                qsort(mids, n, sizeof(uint64_t), cmp_u64);
        if (ns > 0)
                qsort(states, ns, sizeof(uint64_t), cmp_u64);
        *ret_mids = TAKE_PTR(mids);
        *ret_n = n;
        *ret_states = TAKE_PTR(states);
        *ret_ns = ns;
        return 0;
}

int spool_recover(Spool *s, int (*cb)(SpoolMessage *m, void *userdata), void *userdata) {
        _cleanup_free_ uint64_t *mids = NULL, *states = NULL;
        size_t n = 0, ns = 0, j = 0;
        int r;

        if (!s || !cb)
                return -EINVAL;

        /* Files in tmp/ were never committed, hence never acknowledged. */
        r = dir_clear(s->tmp_fd);
        if (r < 0)
                return r;

        r = msg_list(s, &mids, &n, &states, &ns);
        if (r < 0)
                return r;

        /* A state file without its message: spool_remove() was interrupted
         * between its two unlinks. */
        for (size_t i = 0; i < ns; i++) {
                if (!bsearch(&states[i], mids, n, sizeof(uint64_t), cmp_u64)) {
                        char name[SPOOL_NAME_MAX];

                        state_name(states[i], name);
                        (void) unlinkat(s->msg_fd, name, 0);
                }
        }

        for (size_t i = 0; i < n; i++) {
                _cleanup_(spool_message_freep) SpoolMessage *m = NULL;
                _cleanup_close_ int fd = -EBADF;
                char name[SPOOL_NAME_MAX];
                bool all_done = true;

                ids_bump(s, SPOOL_ID_MID, mids[i]);

                mid_name(mids[i], name);
                fd = openat(s->msg_fd, name, O_RDONLY | O_CLOEXEC);
                if (fd < 0)
                        return -errno;
                r = message_read(fd, mids[i], &m);
                if (r == -EBADMSG) {
                        /* Torn or unsealed: never acknowledged. */
                        (void) spool_remove(s, mids[i]);
                        continue;
                }
                if (r < 0)
                        return r;

                ids_bump(s, SPOOL_ID_ICID, m->env.icid);

                r = state_apply(s, m);
                if (r < 0)
                        return r;
                for (size_t k = 0; k < m->env.n_rcpts; k++)
                        if (m->rcpt_state[k] == SPOOL_RCPT_PENDING)
                                all_done = false;
                if (all_done) {
                        (void) spool_remove(s, mids[i]);
                        continue;
                }

                r = cb(TAKE_PTR(m), userdata);
                if (r < 0)
                        return r;
                j++;
        }

        return (int) MIN(j, (size_t) INT32_MAX);
}

int spool_record(Spool *s, uint64_t mid, uint32_t rid, SpoolRcptState state) {
        _cleanup_close_ int fd = -EBADF;
        char name[SPOOL_NAME_MAX], rec[SPOOL_RECORD_MAX];
        ssize_t k;
        int n;

        if (!s || mid == 0 || state < 0 || state >= _SPOOL_RCPT_STATE_MAX)
                return -EINVAL;

        n = snprintf(rec, sizeof rec, "%" PRIu32 " %s\n", rid, rcpt_state_table[state]);
        if (n < 0 || (size_t) n >= sizeof rec)
                return -EINVAL;

        state_name(mid, name);
        fd = openat(s->msg_fd, name, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
        if (fd < 0)
                return -errno;
        /* One write per record: concurrent appenders never interleave
         * inside a line, and a crash tears at most the last line, which
         * state_apply() ignores. */
        do
                k = write(fd, rec, (size_t) n);
        while (k < 0 && errno == EINTR);
        if (k < 0)
                return -errno;
        if (k != n)
                return -EIO;
        return 0;
}

int spool_remove(Spool *s, uint64_t mid) {
        char name[SPOOL_NAME_MAX];
        int r = 0;

        if (!s || mid == 0)
                return -EINVAL;

        /* Message first: a crash in between leaves only an orphan state
         * file, which recovery deletes, never a message without its
         * delivery record. */
        mid_name(mid, name);
        if (unlinkat(s->msg_fd, name, 0) < 0)
                r = -errno;
        state_name(mid, name);
        if (unlinkat(s->msg_fd, name, 0) < 0 && errno != ENOENT && r == 0)
                r = -errno;
        return r;
}

int spool_open_data(Spool *s, uint64_t mid, int *ret_fd, uint64_t *ret_offset, uint64_t *ret_size) {
        _cleanup_(spool_message_freep) SpoolMessage *m = NULL;
        _cleanup_close_ int fd = -EBADF;
        char name[SPOOL_NAME_MAX];
        int r;

        if (!s || mid == 0 || !ret_fd)
                return -EINVAL;

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
