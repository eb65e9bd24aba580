/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Bounded byte buffer; see buf.h for the invariants. */

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "buf.h"
#include "macro.h"

#define BUF_MIN_ALLOC 256

void buf_init(Buf *b, size_t max) {
        *b = (Buf) { .max = max };
}

void buf_done(Buf *b) {
        free(b->data);
        *b = (Buf) { .max = b->max };
}

int buf_reserve(Buf *b, size_t n) {
        size_t len = buf_len(b);

        if (b->cap - b->end >= n)
                return 0;
        if (n > b->max || len > b->max - n)
                return -ENOBUFS;

        /* Reclaim consumed space first. */
        if (b->start > 0) {
                memmove(b->data, b->data + b->start, len);
                b->start = 0;
                b->end = len;
                if (b->cap - b->end >= n)
                        return 0;
        }

        /* The first allocation is BUF_MIN_ALLOC, or max if that is smaller. */
        size_t want = len + n;
        size_t newcap = MAX(b->cap, MIN((size_t) BUF_MIN_ALLOC, b->max));
        while (newcap < want)
                newcap = newcap > SIZE_MAX / 2 ? want : newcap * 2;
        newcap = MIN(newcap, b->max);
        if (newcap < want)
                return -ENOBUFS;

        char *p = realloc(b->data, newcap);
        if (!p)
                return -ENOMEM;
        b->data = p;
        b->cap = newcap;
        return 0;
}

void buf_commit(Buf *b, size_t n) {
        b->end += n;
}

int buf_append(Buf *b, const void *p, size_t n) {
        int r = buf_reserve(b, n);
        if (r < 0)
                return r;
        if (n > 0)
                memcpy(b->data + b->end, p, n);
        b->end += n;
        return 0;
}

int buf_printf(Buf *b, const char *fmt, ...) {
        va_list ap;
        int n;

        va_start(ap, fmt);
        n = vsnprintf(NULL, 0, fmt, ap);
        va_end(ap);
        if (n < 0)
                return -EINVAL;

        int r = buf_reserve(b, (size_t) n + 1);
        if (r < 0)
                return r;

        va_start(ap, fmt);
        (void) vsnprintf(b->data + b->end, (size_t) n + 1, fmt, ap);
        va_end(ap);
        b->end += (size_t) n;
        return n;
}

void buf_consume(Buf *b, size_t n) {
        n = MIN(n, buf_len(b));
        b->start += n;
        if (b->start == b->end)
                b->start = b->end = 0;
}

void buf_clear(Buf *b) {
        b->start = b->end = 0;
}

void buf_shrink(Buf *b, size_t keep) {
        if (!buf_empty(b) || b->cap <= keep)
                return;
        if (keep == 0) {
                free(b->data);
                b->data = NULL;
                b->cap = 0;
        } else {
                char *p = realloc(b->data, keep);
                if (!p)
                        return;
                b->data = p;
                b->cap = keep;
        }
        b->start = b->end = 0;
}

ssize_t buf_read_fd(Buf *b, int fd, size_t want) {
        size_t room = b->max - buf_len(b);
        if (room == 0)
                return -ENOBUFS;
        want = MIN(want, room);

        int r = buf_reserve(b, want);
        if (r < 0)
                return r;

        ssize_t n = read(fd, b->data + b->end, want);
        if (n < 0)
                return -errno;
        b->end += (size_t) n;
        return n;
}

ssize_t buf_write_fd(Buf *b, int fd) {
        if (buf_empty(b))
                return 0;
        ssize_t n = write(fd, buf_peek(b), buf_len(b));
        if (n < 0)
                return -errno;
        buf_consume(b, (size_t) n);
        return n;
}
