/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * History of committed configurations (real files in a temporary
 * directory: numbering, metadata with hostile comments, reopen, modes,
 * incomplete versions) and the unified line diff of staging.c (against
 * diff(1) when it is installed).
 */

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "history.h"
#include "staging.h"
#include "tap.h"
#include "util/macro.h"

static char *dir_path(const char *base, const char *name) {
        char *p;
        if (asprintf(&p, "%s/%s", base, name) < 0)
                abort();
        return p;
}

static void test_history(const char *tmp) {
        _cleanup_free_ char *dir = dir_path(tmp, "history"), *conf1 = NULL, *meta3 = NULL, *text = NULL;
        History *h = NULL;
        HistoryEntry *e = NULL;
        size_t n = 0;
        uint32_t v = 0;
        struct stat st;

        is_int(history_open(dir, &h), 0, "history_open creates the directory");
        ok(stat(dir, &st) == 0 && (st.st_mode & 0777) == 0700, "history directory is 0700");
        is_int(history_latest(h), 0, "empty history: latest 0");
        is_int(history_get_text(h, 1, &text), -ENOENT, "unknown version: -ENOENT");

        is_int(history_add(h, "a = 1;\n", 0, "root", "first", 1000, &v), 0, "add version");
        is_int(v, 1, "first version is 1");
        is_int(history_add(h, "a = 2;\n", 65534, "nobody", "line one\nversion=99\\x", 2000, &v), 0,
               "add with a comment that tries to forge keys");
        is_int(v, 2, "second version is 2");
        conf1 = dir_path(dir, "1.conf");
        ok(stat(conf1, &st) == 0 && (st.st_mode & 0777) == 0600, "1.conf is 0600");
        history_free(h);
        h = NULL;

        /* A version whose .meta never got written (crash in between) is not one. */
        meta3 = dir_path(dir, "3.conf");
        {
                int fd = open(meta3, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
                ok(fd >= 0 && write(fd, "x", 1) == 1, "write an orphan 3.conf");
                if (fd >= 0)
                        close(fd);
        }

        is_int(history_open(dir, &h), 0, "reopen");
        is_int(history_latest(h), 2, "reopened: latest 2 (orphan ignored)");
        is_int(history_list(h, &e, &n), 0, "list");
        is_int(n, 2, "two entries");
        if (n == 2) {
                is_int(e[0].version, 1, "oldest first");
                is_int(e[0].time_usec, 1000, "time kept");
                is_str(e[0].user, "root", "user kept");
                is_str(e[1].comment, "line one\nversion=99\\x", "comment survives escaping");
                is_int(e[1].uid, 65534, "uid kept");
                is_int(e[1].version, 2, "forged version= ignored");
        }
        history_entries_free(e, n);
        is_int(history_get_text(h, 2, &text), 0, "get text");
        is_str(text, "a = 2;\n", "text of version 2");
        is_int(history_add(h, "a = 3;\n", 0, "root", "", 3000, &v), 0, "add after reopen");
        is_int(v, 3, "numbering continues over the orphan");
        free(text);
        text = NULL;
        is_int(history_get_text(h, 3, &text), 0, "get text 3");
        is_str(text, "a = 3;\n", "orphan replaced");
        history_free(h);
}

static void check_diff(const char *name, const char *a, const char *b, const char *want) {
        _cleanup_free_ char *got = NULL;

        is_int(staging_unified_diff(a, b, "running", "pending", &got), 0, "%s: diff computed", name);
        is_str(got, want, "%s", name);
}

/* Our diff must equal GNU diff -u (labels aside) on the same input. */
static void check_against_diff1(const char *tmp, const char *a, const char *b) {
        _cleanup_free_ char *pa = dir_path(tmp, "a"), *pb = dir_path(tmp, "b"), *got = NULL, *cmd = NULL;
        char buf[65536];
        size_t len;
        FILE *f;

        if (access("/usr/bin/diff", X_OK) < 0) {
                tap_skip("matches diff -u", "diff(1) not installed");
                return;
        }
        f = fopen(pa, "we");
        fputs(a, f);
        fclose(f);
        f = fopen(pb, "we");
        fputs(b, f);
        fclose(f);
        if (asprintf(&cmd, "/usr/bin/diff -U3 --label running --label pending %s %s", pa, pb) < 0)
                abort();
        f = popen(cmd, "re");
        len = fread(buf, 1, sizeof buf - 1, f);
        buf[len] = '\0';
        pclose(f);
        staging_unified_diff(a, b, "running", "pending", &got);
        is_str(got, buf, "matches diff -u");
}

int main(void) {
        char tmp[] = "/tmp/test-history-XXXXXX";
        _cleanup_free_ char *big_a = NULL, *big_b = NULL, *cmd = NULL;

        if (!mkdtemp(tmp)) {
                tap_skip("history", "cannot create a temporary directory");
                return tap_done();
        }
        test_history(tmp);

        check_diff("equal texts", "a\nb\n", "a\nb\n", "");
        check_diff("one line changed",
                   "1\n2\n3\n4\n5\n6\n7\n8\n9\n",
                   "1\n2\n3\n4\nfive\n6\n7\n8\n9\n",
                   "--- running\n+++ pending\n@@ -2,7 +2,7 @@\n 2\n 3\n 4\n-5\n+five\n 6\n 7\n 8\n");
        check_diff("added at the end", "a\n", "a\nb\n", "--- running\n+++ pending\n@@ -1 +1,2 @@\n a\n+b\n");
        check_diff("from empty", "", "x\n", "--- running\n+++ pending\n@@ -0,0 +1 @@\n+x\n");

        /* Two changes far apart: two hunks; close together: one. */
        big_a = strdup("1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n11\n12\n13\n14\n15\n16\n17\n18\n19\n20\n");
        big_b = strdup("1\nTWO\n3\n4\n5\n6\n7\n8\n9\n10\n11\n12\n13\n14\n15\n16\n17\n18\nNINETEEN\n20\n");
        check_against_diff1(tmp, big_a, big_b);
        check_against_diff1(tmp, "a\nb\nc\nd\ne\nf\ng\n", "a\nc\nd\nX\ne\ng\nh\n");
        check_against_diff1(tmp, "listeners = (\n  {\n    name = \"a\";\n  } );\n",
                            "listeners = (\n  {\n    name = \"a\";\n  },\n  {\n    name = \"b\";\n  } );\n");

        if (asprintf(&cmd, "rm -rf %s", tmp) >= 0)
                (void) !system(cmd);
        return tap_done();
}
