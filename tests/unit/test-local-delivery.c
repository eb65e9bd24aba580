/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * local_deliver() into a real directory: Maildir layout and modes, the
 * prepended Return-Path/Delivered-To, removal of dot-stuffing, CRLF kept,
 * unique names, and nothing left behind on failure.
 */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "local-delivery.h"
#include "tap.h"
#include "util/macro.h"

/* Formats a path; a cut-off path is a bug in the test. */
#define PATHF(buf, ...) do {                                                            \
                if ((size_t) snprintf((buf), sizeof(buf), __VA_ARGS__) >= sizeof(buf))  \
                        abort();                                                        \
        } while (0)

static char workdir[] = "/tmp/test-local-delivery.XXXXXX";

static int data_fd(const char *prefix, const char *wire) {
        char path[512];
        PATHF(path, "%s/spool", workdir);
        int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0 || write(fd, prefix, strlen(prefix)) < 0 || write(fd, wire, strlen(wire)) < 0)
                abort();
        (void) unlink(path);
        return fd;
}

static char *slurp(const char *path) {
        FILE *f = fopen(path, "re");
        if (!f)
                return NULL;
        char *p = calloc(1, 65536);
        size_t n = fread(p, 1, 65535, f);
        p[n] = '\0';
        fclose(f);
        return p;
}

static size_t count_entries(const char *path) {
        DIR *d = opendir(path);
        struct dirent *de;
        size_t n = 0;

        if (!d)
                return (size_t) -1;
        while ((de = readdir(d)))
                n += de->d_name[0] != '.';
        closedir(d);
        return n;
}

static void rm_rf_maildir(const char *dir) {
        static const char *const sub[] = { "tmp", "new", "cur" };
        char p[512], q[1024];

        for (size_t i = 0; i < ELEMENTSOF(sub); i++) {
                PATHF(p, "%s/%s", dir, sub[i]);
                DIR *d = opendir(p);
                struct dirent *de;
                if (!d)
                        continue;
                while ((de = readdir(d)))
                        if (de->d_name[0] != '.') {
                                PATHF(q, "%s/%s", p, de->d_name);
                                (void) unlink(q);
                        }
                closedir(d);
                (void) rmdir(p);
        }
        (void) rmdir(dir);
}

int main(void) {
        static const char prefix[] = "envelope lines\n";
        static const char wire[] =
                "Subject: dots\r\n"
                "\r\n"
                "..leading dot\r\n"
                "...two dots\r\n"
                "middle . dot\r\n"
                "..\r\n"
                "last\r\n";
        static const char unstuffed[] =
                "Subject: dots\r\n"
                "\r\n"
                ".leading dot\r\n"
                "..two dots\r\n"
                "middle . dot\r\n"
                ".\r\n"
                "last\r\n";
        char dir[512], path[1024];
        struct stat st;
        _cleanup_free_ char *name = NULL, *name2 = NULL, *content = NULL, *want = NULL;
        int r, fd;

        if (!mkdtemp(workdir))
                return 77;
        PATHF(dir, "%s/Maildir", workdir);

        fd = data_fd(prefix, wire);
        r = local_deliver(dir, 42, 3, "s@src.test", "u@local.test", fd, strlen(prefix), strlen(wire), &name);
        is_int(r, 0, "deliver returns 0");
        ok(name && strstr(name, "Q42R3.") && strchr(name, '/') == NULL, "unique name \"%s\"", name ?: "(null)");
        ok(name && strstr(name, ".M") && strstr(name, "P"), "name has time, usec and pid parts");

        PATHF(path, "%s/tmp", dir);
        ok(stat(path, &st) == 0 && S_ISDIR(st.st_mode) && (st.st_mode & 0777) == 0700, "tmp/ created 0700");
        PATHF(path, "%s/cur", dir);
        ok(stat(path, &st) == 0 && S_ISDIR(st.st_mode) && (st.st_mode & 0777) == 0700, "cur/ created 0700");
        PATHF(path, "%s/tmp", dir);
        is_int(count_entries(path), 0, "tmp/ empty after delivery");
        PATHF(path, "%s/new", dir);
        is_int(count_entries(path), 1, "one file in new/");

        PATHF(path, "%s/new/%s", dir, name ?: "");
        content = slurp(path);
        if (asprintf(&want, "Return-Path: <s@src.test>\r\nDelivered-To: u@local.test\r\n%s", unstuffed) < 0)
                abort();
        is_str(content, want, "headers prepended, dot-stuffing removed, CRLF kept");
        ok(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600, "message file 0600");

        /* Second recipient of the same message: a different name. */
        r = local_deliver(dir, 42, 4, "", "v@local.test", fd, strlen(prefix), strlen(wire), &name2);
        is_int(r, 0, "second delivery");
        ok(name && name2 && !streq(name, name2), "second name differs");
        free(content);
        PATHF(path, "%s/new/%s", dir, name2 ?: "");
        content = slurp(path);
        ok(content && strncmp(content, "Return-Path: <>\r\nDelivered-To: v@local.test\r\n", 45) == 0,
           "null sender as Return-Path: <>");

        /* Stuffing state is per line start, across read chunks too: a
         * large message with a dot line every 1000 octets. */
        {
                size_t n = 200 * 1000;
                char *big = malloc(n + 1), *exp = malloc(n + 1);
                size_t e = 0;
                for (size_t i = 0; i < n; i += 1000) {
                        memset(big + i, 'a', 1000);
                        big[i] = '.';
                        big[i + 1] = '.';
                        big[i + 998] = '\r';
                        big[i + 999] = '\n';
                        memcpy(exp + e, big + i + 1, 999);
                        e += 999;
                }
                big[n] = '\0';
                exp[e] = '\0';
                int bfd = data_fd("", big);
                _cleanup_free_ char *bname = NULL, *bcontent = NULL;
                is_int(local_deliver(dir, 43, 0, "s@src.test", "u@local.test", bfd, 0, n, &bname), 0,
                       "large message delivered");
                PATHF(path, "%s/new/%s", dir, bname ?: "");
                FILE *f = fopen(path, "re");
                bcontent = malloc(n + 200);
                size_t got = f ? fread(bcontent, 1, n + 199, f) : 0;
                if (f)
                        fclose(f);
                const char *hdr = "Return-Path: <s@src.test>\r\nDelivered-To: u@local.test\r\n";
                ok(got == strlen(hdr) + e && memcmp(bcontent + strlen(hdr), exp, e) == 0,
                   "large message unstuffed across chunk boundaries");
                close(bfd);
                free(big);
                free(exp);
        }

        /* Failures leave nothing behind. */
        r = local_deliver(dir, 44, 0, "s@src.test", "u@local.test", fd, strlen(prefix), strlen(wire) + 100, NULL);
        is_int(r, -EIO, "data shorter than its size: -EIO");
        r = local_deliver(dir, 45, 0, "s@src.test\r\nX-Evil: 1", "u@local.test", fd, 0, 1, NULL);
        is_int(r, -EINVAL, "CR/LF in sender refused");
        r = local_deliver(dir, 46, 0, "s@src.test", "", fd, 0, 1, NULL);
        is_int(r, -EINVAL, "empty recipient refused");
        PATHF(path, "%s/tmp", dir);
        is_int(count_entries(path), 0, "tmp/ still empty after failures");
        PATHF(path, "%s/new", dir);
        is_int(count_entries(path), 3, "new/ holds only the successful deliveries");

        /* Not a directory we can create. */
        PATHF(path, "%s/spoolfile", workdir);
        close(open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600));
        PATHF(dir, "%s/spoolfile/Maildir", workdir);
        r = local_deliver(dir, 47, 0, "s@src.test", "u@local.test", fd, strlen(prefix), strlen(wire), NULL);
        is_int(r, -ENOTDIR, "maildir under a file: -ENOTDIR");
        (void) unlink(path);

        close(fd);
        PATHF(dir, "%s/Maildir", workdir);
        rm_rf_maildir(dir);
        (void) rmdir(workdir);
        return tap_done();
}
