/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Corpus replay driver: runs every file of the corpus directories (or the
 * files) named on the command line through LLVMFuzzerTestOneInput() once
 * and prints TAP, one line per input. A crash, abort or sanitizer report
 * fails the test. Built only without libFuzzer, which brings its own main().
 *
 * Each input is copied into a buffer of exactly its size, so the address
 * sanitizer sees any read past the end. Returns EXIT_SUCCESS, or
 * EXIT_FAILURE when an input could not be read.
 */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/macro.h"

/* Replay inputs larger than this are refused: corpus files are seeds, not
 * data sets, and a mistake should not eat the machine. */
#define REPLAY_INPUT_MAX (16U * 1024U * 1024U)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static unsigned n_tests, n_failed;

static int read_file(const char *path, uint8_t **ret, size_t *ret_size) {
        _cleanup_close_ int fd = -EBADF;
        _cleanup_free_ uint8_t *data = NULL;
        struct stat st;
        size_t off = 0;

        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode))
                return -EISDIR;
        if ((uint64_t) st.st_size > REPLAY_INPUT_MAX)
                return -EFBIG;

        /* malloc(0) may return NULL; keep one byte but report size 0. */
        data = malloc(st.st_size > 0 ? (size_t) st.st_size : 1);
        if (!data)
                return -ENOMEM;

        while (off < (size_t) st.st_size) {
                ssize_t k = read(fd, data + off, (size_t) st.st_size - off);
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (k == 0)
                        break;
                off += (size_t) k;
        }

        *ret = TAKE_PTR(data);
        *ret_size = off;
        return 0;
}

static void run_file(const char *path, const char *name) {
        _cleanup_free_ uint8_t *data = NULL;
        size_t size = 0;
        int r;

        r = read_file(path, &data, &size);
        if (r < 0) {
                printf("not ok %u - %s # cannot read: %s\n", ++n_tests, name, strerror(-r));
                n_failed++;
                return;
        }

        (void) LLVMFuzzerTestOneInput(data, size);
        printf("ok %u - %s (%zu bytes)\n", ++n_tests, name, size);
        fflush(stdout);
}

static int select_entry(const struct dirent *de) {
        return de->d_name[0] != '.';
}

static int run_dir(const char *dir) {
        struct dirent **list = NULL;
        int n;

        n = scandir(dir, &list, select_entry, alphasort);
        if (n < 0)
                return -errno;

        for (int i = 0; i < n; i++) {
                char path[4096];

                if ((size_t) snprintf(path, sizeof(path), "%s/%s", dir, list[i]->d_name) < sizeof(path))
                        run_file(path, list[i]->d_name);
                else {
                        printf("not ok %u - %s # path too long\n", ++n_tests, list[i]->d_name);
                        n_failed++;
                }
                free(list[i]);
        }
        free(list);
        return 0;
}

int main(int argc, char *argv[]) {
        if (argc < 2) {
                fprintf(stderr, "Usage: %s CORPUS-DIR|FILE...\n", argv[0]);
                return EXIT_FAILURE;
        }

        for (int i = 1; i < argc; i++) {
                struct stat st;

                if (stat(argv[i], &st) < 0) {
                        printf("ok %u - %s # SKIP no such corpus: %s\n", ++n_tests, argv[i], strerror(errno));
                        continue;
                }
                if (S_ISDIR(st.st_mode)) {
                        int r = run_dir(argv[i]);
                        if (r < 0) {
                                printf("not ok %u - %s # cannot list: %s\n", ++n_tests, argv[i], strerror(-r));
                                n_failed++;
                        }
                } else
                        run_file(argv[i], argv[i]);
        }

        printf("1..%u\n", n_tests);
        return n_failed > 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
