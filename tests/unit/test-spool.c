/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Spool tests on a real directory under /tmp: header round trip with odd
 * addresses in segments and in message files, recovery of torn and
 * unsealed files, of damaged segment records and segment logs, segment
 * rotation and removal, recipient state records,
 * persistent IDs, group commit under concurrency (commit completions run
 * on real sd-event loops through Mailboxes), syncfs failure, and a child
 * process killed with SIGKILL while committing: every message it
 * acknowledged must come back byte for byte.
 *
 * syncfs() and fdatasync() are wrapped below (the definitions in this
 * program take precedence over libc's) to count group-commit rounds and to
 * inject a failure; they pass through to the real system calls otherwise.
 */

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-event.h>

#include "spool.h"
#include "tap.h"
#include "util/macro.h"
#include "util/mailbox.h"

/* Group commit load: threads x messages, and commits in flight per thread
 * (a worker thread has many sessions waiting for their 250 at once). */
#define GC_THREADS 4
#define GC_PER_THREAD 200
#define GC_WINDOW 16
/* Largest generated message body in the concurrency and crash tests. */
#define GEN_SIZE_MAX 65536
/* How long a commit may take before a test gives up on it. */
#define WAIT_USEC (10 * USEC_PER_SEC)
#define CRASH_ROUNDS 3

static atomic_uint sync_calls;
static atomic_int sync_fail;            /* errno to fail with, 0 = pass through */

static int sync_hook(void) {
        int e = atomic_load(&sync_fail);

        atomic_fetch_add(&sync_calls, 1);
        if (e != 0) {
                errno = e;
                return -1;
        }
        return 0;
}

int syncfs(int fd) {
        if (sync_hook() < 0)
                return -1;
        return (int) syscall(SYS_syncfs, fd);
}

int fdatasync(int fd) {
        if (sync_hook() < 0)
                return -1;
        return (int) syscall(SYS_fdatasync, fd);
}

static uint64_t now_usec(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / 1000;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        (void) remove(path);
        return 0;
}

static void rm_rf(const char *path) {
        (void) nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static char *make_dir(void) {
        char tmpl[] = "/tmp/test-spool-XXXXXX";
        char *d = mkdtemp(tmpl);
        char *s;

        if (!d)
                return NULL;
        /* The spool creates DIR itself: point it below the temp dir. */
        if (asprintf(&s, "%s/spool", d) < 0)
                return NULL;
        return s;
}

static void drop_dir(char *spool_dir) {
        char *slash = strrchr(spool_dir, '/');

        *slash = '\0';
        rm_rf(spool_dir);
        free(spool_dir);
}

_printf_(2, 3) static bool path_exists(const char *dir, const char *fmt, ...) {
        char path[512], name[64];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(name, sizeof name, fmt, ap);
        va_end(ap);
        snprintf(path, sizeof path, "%s/%s", dir, name);
        return access(path, F_OK) == 0;
}

static size_t dir_entries(const char *dir, const char *sub) {
        char path[512], cmd[600];
        FILE *p;
        size_t n = 0;
        int c;

        snprintf(path, sizeof path, "%s/%s", dir, sub);
        snprintf(cmd, sizeof cmd, "ls -A '%s'", path);
        p = popen(cmd, "r");
        if (!p)
                return SIZE_MAX;
        while ((c = fgetc(p)) != EOF)
                if (c == '\n')
                        n++;
        pclose(p);
        return n;
}

/* Deterministic message body for a MID, so any process can check it. */
static size_t gen_size(uint64_t mid) {
        if (mid % 17 == 0)
                return 0;
        return (size_t) ((mid * 7919) % GEN_SIZE_MAX) + 1;
}

static void gen_data(uint64_t mid, uint8_t *buf, size_t n) {
        uint64_t x = mid * 0x9E3779B97F4A7C15ULL + 1;

        for (size_t i = 0; i < n; i++) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                buf[i] = (uint8_t) x;
        }
}

static bool data_matches(Spool *s, uint64_t mid, const void *want, size_t want_len) {
        _cleanup_close_ int fd = -EBADF;
        _cleanup_free_ uint8_t *got = NULL;
        uint64_t off, size;
        ssize_t n;

        if (spool_open_data(s, mid, &fd, &off, &size) < 0)
                return false;
        if (size != want_len)
                return false;
        got = malloc(want_len + 1);
        if (!got)
                return false;
        /* Exactly the data: in a segment, the next record follows it. */
        n = pread(fd, got, want_len, (off_t) off);
        return n == (ssize_t) want_len && memcmp(got, want, want_len) == 0;
}

/* ---- commit helpers ---- */

typedef struct Wait {
        bool done;
        int error;
} Wait;

static void wait_done(void *userdata, int error) {
        Wait *w = userdata;

        w->done = true;
        w->error = error;
}

static int run_until(sd_event *e, const bool *flag) {
        uint64_t deadline = now_usec() + WAIT_USEC;

        while (!*flag) {
                if (now_usec() > deadline)
                        return -ETIMEDOUT;
                if (sd_event_run(e, 100 * USEC_PER_MSEC) < 0)
                        return -EIO;
        }
        return 0;
}

/* Writes env + data in chunks, commits, waits for the completion. Returns
 * the commit's error (0 = durable). */
static int store(Spool *s, sd_event *e, Mailbox *mb, const Envelope *env, const void *data, size_t len) {
        SpoolWriter *w;
        Wait wt = {};
        const uint8_t *p = data;
        int r;

        r = spool_writer_new(s, env, &w);
        if (r < 0)
                return r;
        while (len > 0) {
                size_t n = MIN(len, (size_t) 3000);

                r = spool_writer_write(w, p, n);
                if (r < 0) {
                        spool_writer_abort(w);
                        return r;
                }
                p += n;
                len -= n;
        }
        r = spool_writer_commit(w, mb, wait_done, &wt);
        if (r < 0)
                return r;
        r = run_until(e, &wt.done);
        if (r < 0)
                return r;
        return wt.error;
}

typedef struct Collected {
        SpoolMessage **m;
        size_t n;
} Collected;

static int collect(SpoolMessage *m, void *userdata) {
        Collected *c = userdata;
        SpoolMessage **l = realloc(c->m, (c->n + 1) * sizeof *l);

        if (!l) {
                spool_message_free(m);
                return -ENOMEM;
        }
        c->m = l;
        c->m[c->n++] = m;
        return 0;
}

static void collected_done(Collected *c) {
        for (size_t i = 0; i < c->n; i++)
                spool_message_free(c->m[i]);
        free(c->m);
        *c = (Collected) {};
}

static SpoolMessage *collected_find(const Collected *c, uint64_t mid) {
        for (size_t i = 0; i < c->n; i++)
                if (c->m[i]->env.mid == mid)
                        return c->m[i];
        return NULL;
}

static bool str_eq_null(const char *a, const char *b) {
        return (!a && !b) || (a && b && streq(a, b));
}

static bool envelope_eq(const Envelope *a, const Envelope *b) {
        if (a->mid != b->mid || a->icid != b->icid || a->arrival_usec != b->arrival_usec ||
            a->n_rcpts != b->n_rcpts || !str_eq_null(a->sender, b->sender) ||
            !str_eq_null(a->listener, b->listener) || !str_eq_null(a->client_ip, b->client_ip) ||
            !str_eq_null(a->helo, b->helo))
                return false;
        for (size_t i = 0; i < a->n_rcpts; i++)
                if (!streq(a->rcpts[i], b->rcpts[i]))
                        return false;
        return !a->rcpts[a->n_rcpts] && !b->rcpts[b->n_rcpts];
}

static int loop_new(sd_event **ret_e, Mailbox **ret_mb) {
        sd_event *e;
        Mailbox *mb;
        int r;

        r = sd_event_new(&e);
        if (r < 0)
                return r;
        r = mailbox_new(e, &mb);
        if (r < 0) {
                sd_event_unref(e);
                return r;
        }
        *ret_e = e;
        *ret_mb = mb;
        return 0;
}

static void loop_free(sd_event *e, Mailbox *mb) {
        mailbox_free(mb);
        sd_event_unref(e);
}

/* ---- tests ---- */

/* files: every message in its own file (inline limit 0), else small ones
 * in segments and the 1 MiB one in a file. */
static void test_roundtrip(bool files) {
        const char *mode = files ? "files" : "segments";
        char *dir = make_dir();
        Spool *s = NULL;
        sd_event *e;
        Mailbox *mb;
        Collected c = {};
        char *rcpts1[] = {
                "\"john smith\"@example.net",
                "\"100%\\\"sure\"@example.net",
                "\"line\r\nbreak\"@example.net",
                "tab\there@example.net",
                "x\x7f" "del@example.net",
                "m\xc3\xbcller@example.de",
                "user@[IPv6:2001:db8::1]",
                NULL,
        };
        char *rcpts2[] = { "postmaster@example.org", NULL };
        Envelope e1 = {
                .icid = 42,
                .arrival_usec = UINT64_C(1700000000123456),
                .sender = "\"odd %41 sender\"@example.org",
                .rcpts = rcpts1,
                .n_rcpts = 7,
                .listener = "inbound main",
                .client_ip = "2001:db8::1",
                .helo = "[192.0.2.1]",
        };
        Envelope e2 = {
                .icid = 0,
                .arrival_usec = 1,
                .sender = "",
                .rcpts = rcpts2,
                .n_rcpts = 1,
        };
        Envelope e3 = {};
        /* Data that looks like a header end and holds NULs and bare CRs. */
        static const uint8_t d1[] = "\n\nsize 0\r\nFrom: x\r\n\r\nbody\0with\0nul\r\r\n.\r\n";
        size_t big_len = 1024 * 1024 + 7;
        _cleanup_free_ uint8_t *big = malloc(big_len);
        _cleanup_strv_free_ char **many = calloc(1001, sizeof(char *));
        int r;

        ok(dir && big && many, "roundtrip: setup");
        if (!dir || !big || !many)
                return;
        gen_data(99, big, big_len);
        for (size_t i = 0; i < 1000; i++)
                if (asprintf(&many[i], "\"rcpt number %zu\"@host%zu.example", i, i) < 0)
                        return;
        e3 = (Envelope) { .sender = "bulk@example.org", .rcpts = many, .n_rcpts = 1000, .arrival_usec = 5 };

        is_int(spool_open(dir, &s), 0, "roundtrip: spool_open creates %s", dir);
        if (!s)
                return;
        if (files)
                is_int(spool_set_limits(s, 0, 1 << 20), 0, "roundtrip: %s: inline limit 0", mode);
        is_str(spool_dir(s), dir, "roundtrip: spool_dir");
        if (loop_new(&e, &mb) < 0)
                return;

        e1.mid = spool_next_id(s, SPOOL_ID_MID);
        e2.mid = spool_next_id(s, SPOOL_ID_MID);
        e3.mid = spool_next_id(s, SPOOL_ID_MID);
        is_int(e1.mid, 1, "roundtrip: first MID is 1");
        is_int(e2.mid, 2, "roundtrip: second MID is 2");

        is_int(store(s, e, mb, &e1, d1, sizeof d1), 0, "roundtrip: commit odd addresses");
        is_int(store(s, e, mb, &e2, "", 0), 0, "roundtrip: commit empty message, null sender");
        is_int(store(s, e, mb, &e3, big, big_len), 0, "roundtrip: commit 1 MiB, 1000 recipients");

        ok(data_matches(s, e1.mid, d1, sizeof d1), "roundtrip: %s: open_data returns the bytes written", mode);
        ok(data_matches(s, e2.mid, "", 0), "roundtrip: %s: open_data of an empty message", mode);
        ok(data_matches(s, e3.mid, big, big_len), "roundtrip: %s: open_data of 1 MiB", mode);
        is_int(spool_n_messages(s), 3, "roundtrip: %s: 3 messages stored", mode);
        ok(path_exists(dir, "msg/%" PRIu64, e3.mid), "roundtrip: %s: 1 MiB message in its own file", mode);
        ok(path_exists(dir, "msg/%" PRIu64, e1.mid) == files, "roundtrip: %s: small message %s", mode,
           files ? "in its own file" : "not in a file");
        ok(path_exists(dir, "seg/1") == !files, "roundtrip: %s: segment %s", mode, files ? "unused" : "written");
        {
                int fd = -1;
                is_int(spool_open_data(s, 12345, &fd, NULL, NULL), -ENOENT, "roundtrip: open_data of unknown MID");
        }

        /* Writer abort leaves nothing behind. */
        {
                Envelope ea = e2;
                SpoolWriter *w;

                ea.mid = spool_next_id(s, SPOOL_ID_MID);
                is_int(spool_writer_new(s, &ea, &w), 0, "roundtrip: writer for abort");
                is_int(spool_writer_write(w, "abc", 3), 0, "roundtrip: write");
                is_int(spool_writer_size(w), 3, "roundtrip: writer_size counts data octets");
                ok(path_exists(dir, "tmp/%" PRIu64, ea.mid) == files, "roundtrip: %s: tmp file %s while receiving",
                   mode, files ? "exists" : "not needed");
                spool_writer_abort(w);
                is_int(spool_n_messages(s), 3, "roundtrip: %s: aborted message not counted", mode);
                ok(!path_exists(dir, "tmp/%" PRIu64, ea.mid), "roundtrip: abort unlinks the tmp file");
                ok(!path_exists(dir, "msg/%" PRIu64, ea.mid), "roundtrip: aborted message not in msg/");
        }
        {
                Envelope bad = e2;
                SpoolWriter *w = NULL;

                bad.mid = 0;
                is_int(spool_writer_new(s, &bad, &w), -EINVAL, "roundtrip: writer refuses MID 0");
        }

        s = spool_free(s);
        is_int(spool_open(dir, &s), 0, "roundtrip: reopen");
        if (!s)
                goto out;
        r = spool_recover(s, collect, &c);
        is_int(r, 3, "roundtrip: %s: recover reports 3 messages", mode);
        is_int(spool_n_messages(s), 3, "roundtrip: %s: 3 messages after recovery", mode);
        if (c.n == 3) {
                ok(c.m[0]->env.mid < c.m[1]->env.mid && c.m[1]->env.mid < c.m[2]->env.mid,
                   "roundtrip: recovered in MID order");
                ok(envelope_eq(&c.m[0]->env, &e1), "roundtrip: envelope with odd addresses intact");
                ok(envelope_eq(&c.m[1]->env, &e2), "roundtrip: null sender and NULL fields intact");
                ok(envelope_eq(&c.m[2]->env, &e3), "roundtrip: 1000 recipients intact");
                is_int(c.m[0]->data_size, sizeof d1, "roundtrip: data_size");
                is_int(c.m[2]->data_size, big_len, "roundtrip: data_size of 1 MiB");
                ok(c.m[0]->rcpt_state[0] == SPOOL_RCPT_PENDING && c.m[0]->rcpt_state[6] == SPOOL_RCPT_PENDING,
                   "roundtrip: recipients pending");
                ok(data_matches(s, e1.mid, d1, sizeof d1), "roundtrip: %s: data intact after reopen", mode);
                ok(data_matches(s, e3.mid, big, big_len), "roundtrip: %s: 1 MiB intact after reopen", mode);

                Envelope copy;
                is_int(envelope_copy(&c.m[0]->env, &copy), 0, "roundtrip: envelope_copy");
                ok(envelope_eq(&copy, &e1), "roundtrip: copy equals original");
                envelope_done(&copy);
                ok(copy.sender == NULL && copy.rcpts == NULL, "roundtrip: envelope_done clears");
        }
        collected_done(&c);
        s = spool_free(s);
out:
        loop_free(e, mb);
        drop_dir(dir);
}

static int write_file(const char *dir, const char *name, const void *p, size_t n) {
        char path[512];
        int fd;
        ssize_t k;

        snprintf(path, sizeof path, "%s/%s", dir, name);
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0)
                return -errno;
        k = write(fd, p, n);
        close(fd);
        return k == (ssize_t) n ? 0 : -EIO;
}

static ssize_t read_file(const char *dir, const char *name, char *buf, size_t max) {
        char path[512];
        int fd;
        ssize_t k;

        snprintf(path, sizeof path, "%s/%s", dir, name);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        k = read(fd, buf, max);
        close(fd);
        return k;
}

static void test_recover_cleanup(void) {
        char *dir = make_dir();
        Spool *s = NULL;
        sd_event *e;
        Mailbox *mb;
        Collected c = {};
        char *rcpts[] = { "a@example.org", NULL };
        Envelope env = { .sender = "s@example.org", .rcpts = rcpts, .n_rcpts = 1 };
        char buf[8192], path[512];
        SpoolWriter *w;
        ssize_t n;
        uint64_t good, shortened, grown, unsealed, nover;

        /* Message files only: this is about damaged files in msg/. */
        if (!dir || spool_open(dir, &s) < 0 || spool_set_limits(s, 0, 1 << 20) < 0 || loop_new(&e, &mb) < 0) {
                ok(false, "recover: setup");
                return;
        }

        good = env.mid = spool_next_id(s, SPOOL_ID_MID);
        is_int(store(s, e, mb, &env, "hello\r\n", 7), 0, "recover: good message committed");
        shortened = env.mid = spool_next_id(s, SPOOL_ID_MID);
        is_int(store(s, e, mb, &env, "hello\r\n", 7), 0, "recover: message to be shortened");
        grown = env.mid = spool_next_id(s, SPOOL_ID_MID);
        is_int(store(s, e, mb, &env, "hello\r\n", 7), 0, "recover: message to be grown");

        /* Torn: the file is shorter or longer than its size field says. */
        snprintf(path, sizeof path, "%s/msg/%" PRIu64, dir, shortened);
        ok(truncate(path, 40) == 0, "recover: truncate a committed file");
        snprintf(path, sizeof path, "%s/msg/%" PRIu64, dir, grown);
        {
                int fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
                ok(fd >= 0 && write(fd, "x", 1) == 1, "recover: append to a committed file");
                safe_close(fd);
        }

        /* Unsealed: a complete file placed into msg/ without commit. */
        unsealed = env.mid = spool_next_id(s, SPOOL_ID_MID);
        is_int(spool_writer_new(s, &env, &w), 0, "recover: writer for unsealed file");
        is_int(spool_writer_write(w, "data\r\n", 6), 0, "recover: unsealed data");
        snprintf(path, sizeof path, "tmp/%" PRIu64, unsealed);
        n = read_file(dir, path, buf, sizeof buf);
        ok(n > 0 && memmem(buf, (size_t) n, "size -----", 10), "recover: unsealed header has no size yet");
        snprintf(path, sizeof path, "msg/%" PRIu64, unsealed);
        is_int(write_file(dir, path, buf, (size_t) MAX(n, 0)), 0, "recover: copy unsealed file into msg/");
        spool_writer_abort(w);

        /* Unknown header version, with a correct size field. */
        nover = env.mid = spool_next_id(s, SPOOL_ID_MID);
        {
                char hdr[256];
                int len = snprintf(hdr, sizeof hdr,
                                   "tlsgw-spool 9\nmid %" PRIu64 "\nsender x\nrcpt y\nsize 00000000000000000002\n\nab",
                                   nover);
                snprintf(path, sizeof path, "msg/%" PRIu64, nover);
                is_int(write_file(dir, path, hdr, (size_t) len), 0, "recover: file with unknown version");
        }
        is_int(write_file(dir, "msg/777", "garbage\n", 8), 0, "recover: garbage file");
        is_int(write_file(dir, "msg/778", "", 0), 0, "recover: empty file");
        is_int(write_file(dir, "msg/779.state", "0 delivered\n", 12), 0, "recover: orphan state file");
        is_int(write_file(dir, "tmp/780", "partial", 7), 0, "recover: tmp leftover");
        is_int(write_file(dir, "msg/README", "not ours", 8), 0, "recover: foreign file");

        s = spool_free(s);
        is_int(spool_open(dir, &s), 0, "recover: reopen");
        if (!s)
                goto out;
        is_int(spool_recover(s, collect, &c), 1, "recover: only the good message is reported");
        ok(c.n == 1 && c.m[0]->env.mid == good, "recover: it is the good one");
        is_int(dir_entries(dir, "tmp"), 0, "recover: tmp/ is empty");
        ok(!path_exists(dir, "msg/%" PRIu64, shortened), "recover: shortened file removed");
        ok(!path_exists(dir, "msg/%" PRIu64, grown), "recover: grown file removed");
        ok(!path_exists(dir, "msg/%" PRIu64, unsealed), "recover: unsealed file removed");
        ok(!path_exists(dir, "msg/%" PRIu64, nover), "recover: unknown version removed");
        ok(!path_exists(dir, "msg/777"), "recover: garbage removed");
        ok(!path_exists(dir, "msg/778"), "recover: empty file removed");
        ok(!path_exists(dir, "msg/779.state"), "recover: orphan state removed");
        ok(path_exists(dir, "msg/README"), "recover: foreign file left alone");
        ok(path_exists(dir, "msg/%" PRIu64, good), "recover: good message kept");
        ok(spool_next_id(s, SPOOL_ID_MID) > 779, "recover: next MID above every MID on disk");
        collected_done(&c);
        s = spool_free(s);
out:
        loop_free(e, mb);
        drop_dir(dir);
}

static void test_state(void) {
        char *dir = make_dir();
        Spool *s = NULL;
        sd_event *e;
        Mailbox *mb;
        Collected c = {};
        char *rcpts[] = { "a@example.org", "b@example.org", "c@example.org", NULL };
        Envelope env = { .sender = "s@example.org", .rcpts = rcpts, .n_rcpts = 3 };
        char path[512];
        uint64_t partial, finished, removed;

        /* Message files and their .state files; segments_recover() covers
         * the segment logs. */
        if (!dir || spool_open(dir, &s) < 0 || spool_set_limits(s, 0, 1 << 20) < 0 || loop_new(&e, &mb) < 0) {
                ok(false, "state: setup");
                return;
        }

        partial = env.mid = spool_next_id(s, SPOOL_ID_MID);
        is_int(store(s, e, mb, &env, "x\r\n", 3), 0, "state: message 1 committed");
        finished = env.mid = spool_next_id(s, SPOOL_ID_MID);
        is_int(store(s, e, mb, &env, "y\r\n", 3), 0, "state: message 2 committed");
        removed = env.mid = spool_next_id(s, SPOOL_ID_MID);
        is_int(store(s, e, mb, &env, "z\r\n", 3), 0, "state: message 3 committed");

        is_int(spool_record(s, partial, 0, SPOOL_RCPT_DELIVERED), 0, "state: record rid 0 delivered");
        is_int(spool_record(s, partial, 2, SPOOL_RCPT_BOUNCED), 0, "state: record rid 2 bounced");
        is_int(spool_record(s, partial, 7, SPOOL_RCPT_DELIVERED), 0, "state: unknown rid is recorded (ignored later)");
        is_int(spool_record(s, partial, 0, _SPOOL_RCPT_STATE_MAX), -EINVAL, "state: invalid state refused");
        /* A torn last record (crash mid-write) must be ignored. */
        snprintf(path, sizeof path, "%s/msg/%" PRIu64 ".state", dir, partial);
        {
                int fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
                ok(fd >= 0 && write(fd, "1 deliv", 7) == 7, "state: append a torn record");
                safe_close(fd);
        }
        for (uint32_t rid = 0; rid < 3; rid++)
                is_int(spool_record(s, finished, rid, rid == 1 ? SPOOL_RCPT_BOUNCED : SPOOL_RCPT_DELIVERED), 0,
                       "state: message 2 rid %u done", rid);

        is_int(spool_record(s, removed, 0, SPOOL_RCPT_DELIVERED), 0, "state: message 3 record");
        is_int(spool_remove(s, removed), 0, "state: spool_remove");
        ok(!path_exists(dir, "msg/%" PRIu64, removed) && !path_exists(dir, "msg/%" PRIu64 ".state", removed),
           "state: remove unlinks message and state file");
        is_int(spool_remove(s, removed), -ENOENT, "state: second remove reports ENOENT");

        s = spool_free(s);
        is_int(spool_open(dir, &s), 0, "state: reopen");
        if (!s)
                goto out;
        is_int(spool_recover(s, collect, &c), 1, "state: one message still has work");
        if (c.n == 1) {
                is_int(c.m[0]->env.mid, partial, "state: the partly delivered one");
                is_int(c.m[0]->rcpt_state[0], SPOOL_RCPT_DELIVERED, "state: rid 0 delivered");
                is_int(c.m[0]->rcpt_state[1], SPOOL_RCPT_PENDING, "state: rid 1 pending (torn record ignored)");
                is_int(c.m[0]->rcpt_state[2], SPOOL_RCPT_BOUNCED, "state: rid 2 bounced");
        }
        ok(!path_exists(dir, "msg/%" PRIu64, finished) && !path_exists(dir, "msg/%" PRIu64 ".state", finished),
           "state: fully done message removed by recovery");
        collected_done(&c);
        s = spool_free(s);
out:
        loop_free(e, mb);
        drop_dir(dir);
}

/* Segments: outcomes from the log (torn last line ignored), "done" lines,
 * a damaged last record and garbage after it, orphan logs, a new segment
 * after restart, and the segment's removal with its last message. */
static void test_segments_recover(void) {
        char *dir = make_dir();
        Spool *s = NULL;
        sd_event *e;
        Mailbox *mb;
        Collected c = {};
        char *rcpts[] = { "a@example.org", "b@example.org", "c@example.org", NULL };
        Envelope env = { .sender = "s@example.org", .rcpts = rcpts, .n_rcpts = 3 };
        uint64_t mid[6], fresh;
        char path[512], line[64];
        int fd, n;

        if (!dir || spool_open(dir, &s) < 0 || loop_new(&e, &mb) < 0) {
                ok(false, "segments: setup");
                return;
        }
        for (size_t i = 0; i < ELEMENTSOF(mid); i++) {
                char body[64];

                mid[i] = env.mid = spool_next_id(s, SPOOL_ID_MID);
                n = snprintf(body, sizeof body, "message %zu\r\n", i);
                is_int(store(s, e, mb, &env, body, (size_t) n), 0, "segments: message %zu committed", i);
        }
        is_int(dir_entries(dir, "msg"), 0, "segments: no message files");
        is_int(dir_entries(dir, "tmp"), 0, "segments: nothing in tmp/");
        ok(path_exists(dir, "seg/1"), "segments: all in segment 1");

        is_int(spool_record(s, mid[0], 0, SPOOL_RCPT_DELIVERED), 0, "segments: m0 rid 0 delivered");
        is_int(spool_record(s, mid[0], 2, SPOOL_RCPT_BOUNCED), 0, "segments: m0 rid 2 bounced");
        for (uint32_t rid = 0; rid < 3; rid++)
                is_int(spool_record(s, mid[1], rid, SPOOL_RCPT_DELIVERED), 0, "segments: m1 rid %u delivered", rid);
        is_int(spool_remove(s, mid[2]), 0, "segments: m2 removed");
        is_int(spool_remove(s, mid[2]), -ENOENT, "segments: second remove reports ENOENT");
        is_int(spool_record(s, mid[2], 0, SPOOL_RCPT_DELIVERED), -ENOENT, "segments: record for a removed message");
        is_int(spool_n_messages(s), 5, "segments: 5 messages left");

        /* A torn log line (crash mid-write) must be ignored. */
        n = snprintf(line, sizeof line, "%" PRIu64 " 1 deliv", mid[0]);
        snprintf(path, sizeof path, "%s/seg/1.log", dir);
        fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
        ok(fd >= 0 && write(fd, line, (size_t) n) == n, "segments: append a torn log line");
        safe_close(fd);

        /* The last record damaged (CRC) and garbage after it: a tail no
         * commit covered. */
        {
                _cleanup_close_ int dfd = -EBADF;
                uint64_t off, size;
                char x;

                is_int(spool_open_data(s, mid[5], &dfd, &off, &size), 0, "segments: open_data of m5");
                snprintf(path, sizeof path, "%s/seg/1", dir);
                fd = open(path, O_RDWR | O_CLOEXEC);
                ok(fd >= 0 && pread(fd, &x, 1, (off_t) off) == 1, "segments: read a byte of m5");
                x ^= 0x20;
                ok(pwrite(fd, &x, 1, (off_t) off) == 1, "segments: flip it");
                ok(lseek(fd, 0, SEEK_END) > 0 && write(fd, "tlsgwR1\ngarbage", 15) == 15,
                   "segments: garbage after the last record");
                safe_close(fd);
        }
        is_int(write_file(dir, "seg/99.log", "1 done\n", 7), 0, "segments: orphan log");
        is_int(write_file(dir, "seg/README", "not ours", 8), 0, "segments: foreign file");

        s = spool_free(s);
        is_int(spool_open(dir, &s), 0, "segments: reopen");
        if (!s)
                goto out;
        is_int(spool_recover(s, collect, &c), 3, "segments: m0, m3, m4 recovered");
        ok(c.n == 3 && c.m[0]->env.mid == mid[0] && c.m[1]->env.mid == mid[3] && c.m[2]->env.mid == mid[4],
           "segments: in MID order; done, removed and damaged ones left out");
        if (c.n == 3) {
                is_int(c.m[0]->rcpt_state[0], SPOOL_RCPT_DELIVERED, "segments: m0 rid 0 delivered");
                is_int(c.m[0]->rcpt_state[1], SPOOL_RCPT_PENDING, "segments: m0 rid 1 pending (torn line ignored)");
                is_int(c.m[0]->rcpt_state[2], SPOOL_RCPT_BOUNCED, "segments: m0 rid 2 bounced");
                is_int(c.m[1]->rcpt_state[0], SPOOL_RCPT_PENDING, "segments: m3 untouched");
        }
        ok(data_matches(s, mid[3], "message 3\r\n", 11), "segments: m3 data intact");
        ok(data_matches(s, mid[4], "message 4\r\n", 11), "segments: m4 data intact");
        is_int(spool_open_data(s, mid[5], &fd, NULL, NULL), -ENOENT, "segments: damaged m5 is gone");
        ok(!path_exists(dir, "seg/99.log"), "segments: orphan log removed");
        ok(path_exists(dir, "seg/README"), "segments: foreign file left alone");
        ok(spool_next_id(s, SPOOL_ID_MID) > mid[5], "segments: next MID above every MID on disk");

        fresh = env.mid = spool_next_id(s, SPOOL_ID_MID);
        is_int(store(s, e, mb, &env, "fresh\r\n", 7), 0, "segments: commit after recovery");
        ok(path_exists(dir, "seg/2"), "segments: new records go to a new segment");

        for (size_t i = 0; i < c.n; i++)
                is_int(spool_remove(s, c.m[i]->env.mid), 0, "segments: remove recovered %zu", i);
        ok(!path_exists(dir, "seg/1") && !path_exists(dir, "seg/1.log"),
           "segments: old segment and its log gone with the last message");
        ok(data_matches(s, fresh, "fresh\r\n", 7), "segments: new message intact");
        is_int(spool_n_messages(s), 1, "segments: 1 message left");
        collected_done(&c);
        s = spool_free(s);
out:
        loop_free(e, mb);
        drop_dir(dir);
}

/* Small segments: records spread over several, closed segments go once
 * empty, and a torn last record is dropped on recovery. */
static void test_segments_rotate(void) {
        char *dir = make_dir();
        Spool *s = NULL;
        sd_event *e;
        Mailbox *mb;
        Collected c = {};
        char *rcpts[] = { "a@example.org", NULL };
        Envelope env = { .sender = "s@example.org", .rcpts = rcpts, .n_rcpts = 1 };
        enum { N = 40, SIZE = 5000, KEEP = 3 };
        uint64_t mid[N];
        _cleanup_free_ uint8_t *buf = malloc(SIZE);
        bool intact = true;
        char path[512];
        struct stat st;

        if (!dir || !buf || spool_open(dir, &s) < 0 || loop_new(&e, &mb) < 0) {
                ok(false, "rotate: setup");
                return;
        }
        is_int(spool_set_limits(s, 1 << 20, 64 * 1024), 0, "rotate: 64 KiB segments");
        for (size_t i = 0; i < N; i++) {
                mid[i] = env.mid = spool_next_id(s, SPOOL_ID_MID);
                gen_data(mid[i], buf, SIZE);
                if (store(s, e, mb, &env, buf, SIZE) < 0)
                        intact = false;
        }
        ok(intact, "rotate: %d messages committed", N);
        ok(dir_entries(dir, "seg") >= 3, "rotate: spread over several segments (%zu)", dir_entries(dir, "seg"));
        for (size_t i = 0; i < N; i++) {
                gen_data(mid[i], buf, SIZE);
                if (!data_matches(s, mid[i], buf, SIZE))
                        intact = false;
        }
        ok(intact, "rotate: every message intact");

        for (size_t i = 0; i < N - KEEP; i++)
                if (spool_remove(s, mid[i]) < 0)
                        intact = false;
        ok(intact, "rotate: all but the last %d removed", KEEP);
        ok(dir_entries(dir, "seg") <= 2, "rotate: only the current segment and its log left (%zu)",
           dir_entries(dir, "seg"));

        /* A crash in the middle of writing the last record. */
        {
                uint64_t number = 0;

                for (uint64_t k = 1; k < 100; k++)
                        if (path_exists(dir, "seg/%" PRIu64, k))
                                number = k;
                snprintf(path, sizeof path, "%s/seg/%" PRIu64, dir, number);
                ok(number > 0 && stat(path, &st) == 0 && truncate(path, st.st_size - 100) == 0,
                   "rotate: tear the last record of segment %" PRIu64, number);
        }

        s = spool_free(s);
        is_int(spool_open(dir, &s), 0, "rotate: reopen");
        if (!s)
                goto out;
        is_int(spool_recover(s, collect, &c), KEEP - 1, "rotate: the torn record is dropped, the others recovered");
        for (size_t i = 0; i < c.n; i++) {
                gen_data(c.m[i]->env.mid, buf, SIZE);
                if (c.m[i]->env.mid != mid[N - KEEP + i] || !data_matches(s, c.m[i]->env.mid, buf, SIZE))
                        intact = false;
        }
        ok(intact, "rotate: recovered messages intact");
        collected_done(&c);
        s = spool_free(s);
out:
        loop_free(e, mb);
        drop_dir(dir);
}

#define ID_THREADS 4
#define ID_PER_THREAD 5000

typedef struct IdThread {
        Spool *spool;
        uint64_t ids[ID_PER_THREAD];
} IdThread;

static void *id_thread(void *userdata) {
        IdThread *t = userdata;

        for (size_t i = 0; i < ID_PER_THREAD; i++)
                t->ids[i] = spool_next_id(t->spool, SPOOL_ID_DCID);
        return NULL;
}

static int cmp_u64(const void *a, const void *b) {
        uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;

        return x < y ? -1 : x > y;
}

static void test_ids(void) {
        char *dir = make_dir();
        Spool *s = NULL;
        uint64_t m1, m2, i1, d1, m3, i2, prev;
        bool increasing = true;
        char buf[256];
        ssize_t n;

        if (!dir || spool_open(dir, &s) < 0) {
                ok(false, "ids: setup");
                return;
        }
        m1 = spool_next_id(s, SPOOL_ID_MID);
        m2 = spool_next_id(s, SPOOL_ID_MID);
        i1 = spool_next_id(s, SPOOL_ID_ICID);
        d1 = spool_next_id(s, SPOOL_ID_DCID);
        is_int(m1, 1, "ids: first MID 1");
        is_int(m2, 2, "ids: then 2");
        is_int(i1, 1, "ids: first ICID 1");
        is_int(d1, 1, "ids: first DCID 1");
        is_int(spool_next_id(s, _SPOOL_ID_MAX), 0, "ids: invalid kind gives 0");

        n = read_file(dir, "ids", buf, sizeof buf - 1);
        ok(n > 0, "ids: ids file written before IDs are used");
        if (n > 0) {
                buf[n] = '\0';
                ok(strstr(buf, "mid 1001\n") != NULL, "ids: high-water mark of the MID block persisted");
        }

        s = spool_free(s);
        is_int(spool_open(dir, &s), 0, "ids: reopen");
        if (!s)
                goto out;
        m3 = spool_next_id(s, SPOOL_ID_MID);
        i2 = spool_next_id(s, SPOOL_ID_ICID);
        ok(m3 > m2, "ids: MID after reopen (%" PRIu64 ") above the last one (%" PRIu64 ")", m3, m2);
        ok(i2 > i1, "ids: ICID after reopen above the last one");
        prev = m3;
        for (int i = 0; i < 2500; i++) {
                uint64_t id = spool_next_id(s, SPOOL_ID_MID);

                if (id <= prev)
                        increasing = false;
                prev = id;
        }
        ok(increasing, "ids: strictly increasing across block boundaries");
        s = spool_free(s);

        /* Reopen repeatedly without a clean shutdown of the blocks: no
         * repeats, only skips. */
        for (int i = 0; i < 3; i++) {
                uint64_t id;

                if (spool_open(dir, &s) < 0)
                        break;
                id = spool_next_id(s, SPOOL_ID_MID);
                if (id <= prev)
                        increasing = false;
                prev = id;
                s = spool_free(s);
        }
        ok(increasing, "ids: still increasing over repeated reopen");

        /* Concurrent users get distinct IDs. */
        if (spool_open(dir, &s) == 0) {
                static IdThread t[ID_THREADS];
                pthread_t th[ID_THREADS];
                _cleanup_free_ uint64_t *all = malloc(sizeof(uint64_t) * ID_THREADS * ID_PER_THREAD);
                bool unique = all != NULL;

                for (int i = 0; i < ID_THREADS; i++) {
                        t[i].spool = s;
                        pthread_create(&th[i], NULL, id_thread, &t[i]);
                }
                for (int i = 0; i < ID_THREADS; i++)
                        pthread_join(th[i], NULL);
                if (all) {
                        for (int i = 0; i < ID_THREADS; i++)
                                memcpy(all + i * ID_PER_THREAD, t[i].ids, sizeof t[i].ids);
                        qsort(all, ID_THREADS * ID_PER_THREAD, sizeof(uint64_t), cmp_u64);
                        for (size_t i = 0; i < ID_THREADS * ID_PER_THREAD; i++)
                                if (all[i] == 0 || (i > 0 && all[i] == all[i - 1]))
                                        unique = false;
                }
                ok(unique, "ids: %d threads x %d DCIDs all distinct and non-zero", ID_THREADS, ID_PER_THREAD);
                s = spool_free(s);
        }

        /* The next block cannot be persisted (ids.tmp is in the way as a
         * directory, which stops root too): no ID is handed out rather
         * than one that could repeat after a crash. */
        if (spool_open(dir, &s) == 0) {
                char path[512];
                uint64_t id;

                snprintf(path, sizeof path, "%s/ids.tmp", dir);
                ok(mkdir(path, 0700) == 0, "ids: block ids.tmp");
                is_int(spool_next_id(s, SPOOL_ID_ICID), 0, "ids: unpersistable block refused with 0");
                ok(rmdir(path) == 0, "ids: unblock ids.tmp");
                id = spool_next_id(s, SPOOL_ID_ICID);
                ok(id > i2, "ids: IDs flow again once the block is persisted");
                s = spool_free(s);
        }
out:
        drop_dir(dir);
}

/* ---- group commit ---- */

typedef struct GcThread {
        Spool *spool;
        unsigned started, completed, failed;
        unsigned inflight;
        uint64_t mids[GC_PER_THREAD];
        int error;
} GcThread;

static void gc_done(void *userdata, int error) {
        GcThread *t = userdata;

        t->completed++;
        t->inflight--;
        if (error != 0) {
                t->failed++;
                t->error = error;
        }
}

static void *gc_thread(void *userdata) {
        GcThread *t = userdata;
        _cleanup_free_ uint8_t *buf = malloc(GEN_SIZE_MAX + 1);
        sd_event *e;
        Mailbox *mb;
        uint64_t deadline = now_usec() + 4 * WAIT_USEC;

        if (!buf || loop_new(&e, &mb) < 0) {
                t->error = -ENOMEM;
                return NULL;
        }
        while (t->completed < GC_PER_THREAD && now_usec() < deadline) {
                while (t->inflight < GC_WINDOW && t->started < GC_PER_THREAD) {
                        char *rcpts[] = { "r@example.org", NULL };
                        Envelope env = {
                                .mid = spool_next_id(t->spool, SPOOL_ID_MID),
                                .icid = 7,
                                .sender = "s@example.org",
                                .rcpts = rcpts,
                                .n_rcpts = 1,
                        };
                        size_t n = gen_size(env.mid);
                        SpoolWriter *w;
                        int r;

                        gen_data(env.mid, buf, n);
                        r = spool_writer_new(t->spool, &env, &w);
                        if (r >= 0)
                                r = spool_writer_write(w, buf, n);
                        if (r >= 0)
                                r = spool_writer_commit(w, mb, gc_done, t);
                        else
                                spool_writer_abort(w);
                        if (r < 0) {
                                t->error = r;
                                goto done;
                        }
                        t->mids[t->started++] = env.mid;
                        t->inflight++;
                }
                (void) sd_event_run(e, 100 * USEC_PER_MSEC);
        }
done:
        /* Let the ones in flight land before the mailbox goes away. */
        while (t->inflight > 0 && now_usec() < deadline)
                (void) sd_event_run(e, 100 * USEC_PER_MSEC);
        loop_free(e, mb);
        return NULL;
}

static void test_group_commit(void) {
        char *dir = make_dir();
        Spool *s = NULL;
        static GcThread t[GC_THREADS];
        pthread_t th[GC_THREADS];
        unsigned completed = 0, failed = 0, rounds, total = GC_THREADS * GC_PER_THREAD;
        Collected c = {};
        _cleanup_free_ uint8_t *buf = malloc(GEN_SIZE_MAX + 1);
        bool intact = true;
        uint64_t t0;

        if (!dir || !buf || spool_open(dir, &s) < 0) {
                ok(false, "group: setup");
                return;
        }

        atomic_store(&sync_calls, 0);
        t0 = now_usec();
        for (int i = 0; i < GC_THREADS; i++) {
                t[i] = (GcThread) { .spool = s };
                pthread_create(&th[i], NULL, gc_thread, &t[i]);
        }
        for (int i = 0; i < GC_THREADS; i++) {
                pthread_join(th[i], NULL);
                completed += t[i].completed;
                failed += t[i].failed;
                if (t[i].error)
                        printf("# thread %d error %d\n", i, t[i].error);
        }
        rounds = atomic_load(&sync_calls);

        is_int(completed, total, "group: every commit completed on its loop");
        is_int(failed, 0, "group: every completion reported success");
        ok(rounds > 0 && rounds < total, "group: %u sync rounds for %u commits", rounds, total);
        printf("# group commit: %u commits from %d threads (window %d) in %u sync rounds, "
               "%.1f commits per round, %.0f ms\n",
               total, GC_THREADS, GC_WINDOW, rounds, rounds ? (double) total / rounds : 0.0,
               (double) (now_usec() - t0) / 1000.0);

        s = spool_free(s);
        if (spool_open(dir, &s) < 0) {
                ok(false, "group: reopen");
                goto out;
        }
        is_int(spool_recover(s, collect, &c), total, "group: all messages recovered");
        for (int i = 0; i < GC_THREADS; i++)
                for (unsigned j = 0; j < t[i].started; j++) {
                        uint64_t mid = t[i].mids[j];
                        size_t n = gen_size(mid);

                        gen_data(mid, buf, n);
                        if (!collected_find(&c, mid) || !data_matches(s, mid, buf, n))
                                intact = false;
                }
        ok(intact, "group: every message intact, byte for byte");
        collected_done(&c);
        s = spool_free(s);
out:
        drop_dir(dir);
}

/* A failed sync of a segment (fdatasync) or of a message file (syncfs). */
static void test_syncfs_failure(bool files) {
        const char *mode = files ? "files" : "segments";
        char *dir = make_dir();
        Spool *s = NULL;
        sd_event *e;
        Mailbox *mb;
        char *rcpts[] = { "a@example.org", NULL };
        Envelope env = { .sender = "s@example.org", .rcpts = rcpts, .n_rcpts = 1 };
        Collected c = {};

        if (!dir || spool_open(dir, &s) < 0 || spool_set_limits(s, files ? 0 : 1 << 20, 1 << 20) < 0 ||
            loop_new(&e, &mb) < 0) {
                ok(false, "sync %s: setup", mode);
                return;
        }
        env.mid = spool_next_id(s, SPOOL_ID_MID);
        atomic_store(&sync_fail, EIO);
        is_int(store(s, e, mb, &env, "x\r\n", 3), -EIO, "sync %s: failed sync reported to the committer", mode);
        atomic_store(&sync_fail, 0);
        is_int(spool_n_messages(s), 0, "sync %s: unsafe message removed", mode);
        ok(!path_exists(dir, "tmp/%" PRIu64, env.mid), "sync %s: no tmp leftover", mode);

        env.mid = spool_next_id(s, SPOOL_ID_MID);
        is_int(store(s, e, mb, &env, "y\r\n", 3), 0, "sync %s: next commit succeeds again", mode);
        s = spool_free(s);
        is_int(spool_open(dir, &s), 0, "sync %s: reopen", mode);
        if (!s)
                goto out;
        is_int(spool_recover(s, collect, &c), 1, "sync %s: only the durable message recovered", mode);
        ok(c.n == 1 && c.m[0]->env.mid == env.mid, "sync %s: it is the second one", mode);
        collected_done(&c);
        s = spool_free(s);
out:
        loop_free(e, mb);
        drop_dir(dir);
}

/* ---- crash ---- */

#define CRASH_WINDOW 4

typedef struct CrashChild {
        int pipe_fd;
        unsigned inflight;
        uint64_t mids[CRASH_WINDOW];
} CrashChild;

typedef struct CrashCommit {
        CrashChild *child;
        uint64_t mid;
} CrashCommit;

static void crash_done(void *userdata, int error) {
        CrashCommit *cc = userdata;

        if (error != 0)
                _exit(3);
        /* "250 sent": only now may the parent count on the message. */
        if (write(cc->child->pipe_fd, &cc->mid, sizeof cc->mid) != sizeof cc->mid)
                _exit(4);
        cc->child->inflight--;
        free(cc);
}

static _noreturn_ void crash_child(const char *dir, int pipe_fd) {
        CrashChild child = { .pipe_fd = pipe_fd };
        uint8_t *buf = malloc(GEN_SIZE_MAX + 1);
        Spool *s;
        sd_event *e;
        Mailbox *mb;

        /* Half the generated sizes go over 32 KiB: a mix of segment
         * records (in small segments, so some rotate) and message files. */
        if (!buf || spool_open(dir, &s) < 0 || spool_set_limits(s, GEN_SIZE_MAX / 2, 256 * 1024) < 0 ||
            loop_new(&e, &mb) < 0)
                _exit(2);
        for (;;) {
                while (child.inflight < CRASH_WINDOW) {
                        char *rcpts[] = { "\"crash test\"@example.org", "b@example.org", NULL };
                        Envelope env = {
                                .mid = spool_next_id(s, SPOOL_ID_MID),
                                .icid = 9,
                                .arrival_usec = 12345,
                                .sender = "s@example.org",
                                .rcpts = rcpts,
                                .n_rcpts = 2,
                                .helo = "child",
                        };
                        size_t n = gen_size(env.mid), off = 0;
                        CrashCommit *cc = malloc(sizeof *cc);
                        SpoolWriter *w;

                        if (!cc || env.mid == 0 || spool_writer_new(s, &env, &w) < 0)
                                _exit(2);
                        gen_data(env.mid, buf, n);
                        /* Small chunks: the kill often lands mid-message. */
                        while (off < n) {
                                size_t k = MIN(n - off, (size_t) 1024);

                                if (spool_writer_write(w, buf + off, k) < 0)
                                        _exit(2);
                                off += k;
                        }
                        *cc = (CrashCommit) { .child = &child, .mid = env.mid };
                        if (spool_writer_commit(w, mb, crash_done, cc) < 0)
                                _exit(2);
                        child.inflight++;
                }
                (void) sd_event_run(e, 100 * USEC_PER_MSEC);
        }
}

static void test_crash(void) {
        char *dir = make_dir();
        unsigned seed = (unsigned) (time(NULL) ^ getpid());
        uint64_t prev_max = 0;
        _cleanup_free_ uint8_t *buf = malloc(GEN_SIZE_MAX + 1);

        if (!dir || !buf) {
                ok(false, "crash: setup");
                return;
        }
        printf("# crash test seed %u\n", seed);
        srand(seed);

        for (int round = 0; round < CRASH_ROUNDS; round++) {
                _cleanup_free_ uint64_t *acked = NULL;
                size_t n_acked = 0, cap = 0;
                int pfd[2], status = 0;
                unsigned delay_ms = 100 + (unsigned) (rand() % 400);
                bool all_there = true, above = true;
                uint64_t min_acked = UINT64_MAX, max_acked = 0;
                Collected c = {};
                Spool *s = NULL;
                pid_t pid;

                if (pipe2(pfd, O_CLOEXEC) < 0) {
                        ok(false, "crash: pipe");
                        break;
                }
                fflush(stdout);
                pid = fork();
                if (pid < 0) {
                        ok(false, "crash: fork");
                        break;
                }
                if (pid == 0) {
                        close(pfd[0]);
                        crash_child(dir, pfd[1]);
                }
                close(pfd[1]);
                usleep(delay_ms * 1000);
                kill(pid, SIGKILL);
                waitpid(pid, &status, 0);
                ok(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
                   "crash %d: child killed after %u ms (still committing)", round, delay_ms);

                for (;;) {
                        uint64_t mid;
                        ssize_t k = read(pfd[0], &mid, sizeof mid);

                        if (k != sizeof mid)
                                break;
                        if (n_acked >= cap) {
                                cap = MAX(cap * 2, (size_t) 256);
                                acked = realloc(acked, cap * sizeof(uint64_t));
                                if (!acked)
                                        break;
                        }
                        acked[n_acked++] = mid;
                        min_acked = MIN(min_acked, mid);
                        max_acked = MAX(max_acked, mid);
                }
                close(pfd[0]);
                ok(n_acked > 0, "crash %d: child acknowledged %zu messages before the kill", round, n_acked);

                if (spool_open(dir, &s) < 0) {
                        ok(false, "crash %d: reopen", round);
                        break;
                }
                ok(spool_recover(s, collect, &c) >= 0, "crash %d: recover", round);
                printf("# crash %d: %zu acknowledged, %zu recovered\n", round, n_acked, c.n);
                for (size_t i = 0; i < n_acked; i++) {
                        SpoolMessage *m = collected_find(&c, acked[i]);
                        size_t n = gen_size(acked[i]);

                        gen_data(acked[i], buf, n);
                        if (!m || m->env.n_rcpts != 2 || !streq(m->env.rcpts[0], "\"crash test\"@example.org") ||
                            !str_eq_null(m->env.helo, "child") || m->data_size != n ||
                            !data_matches(s, acked[i], buf, n)) {
                                printf("# MID %" PRIu64 " acknowledged but not intact\n", acked[i]);
                                all_there = false;
                        }
                }
                ok(all_there, "crash %d: every acknowledged message present and byte-exact", round);
                is_int(dir_entries(dir, "tmp"), 0, "crash %d: tmp/ cleaned", round);
                /* MIDs of this round must not reuse any of the last round's,
                 * although that child died holding a reserved block. */
                if (n_acked > 0 && min_acked <= prev_max)
                        above = false;
                ok(above, "crash %d: MIDs continue above the previous run (%" PRIu64 " > %" PRIu64 ")",
                   round, min_acked, prev_max);
                prev_max = MAX(prev_max, max_acked);
                /* Deliver everything, so the next round starts clean. */
                for (size_t i = 0; i < c.n; i++)
                        (void) spool_remove(s, c.m[i]->env.mid);
                collected_done(&c);
                s = spool_free(s);
        }
        drop_dir(dir);
}

int main(void) {
        test_roundtrip(false);
        test_roundtrip(true);
        test_recover_cleanup();
        test_state();
        test_segments_recover();
        test_segments_rotate();
        test_ids();
        test_group_commit();
        test_syncfs_failure(false);
        test_syncfs_failure(true);
        test_crash();
        return tap_done();
}
