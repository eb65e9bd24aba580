/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * Buf: the one byte buffer for untrusted input and for output queues.
 *
 * Invariants: data[start..end) holds the unconsumed bytes; end <= cap;
 * cap never grows beyond max (the hard limit for this use, set at init).
 * Appending past max fails with -ENOBUFS and leaves the buffer unchanged.
 * Consumed space is reclaimed by compacting (memmove) before growing.
 * Returns: 0 or positive on success, negative errno on failure. Never logs.
 */

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

typedef struct Buf {
        char *data;
        size_t start;
        size_t end;
        size_t cap;
        size_t max;
} Buf;

void buf_init(Buf *b, size_t max);
void buf_done(Buf *b);                  /* frees memory, keeps max */

static inline size_t buf_len(const Buf *b) {
        return b->end - b->start;
}
static inline const char *buf_peek(const Buf *b) {
        return b->data ? b->data + b->start : "";
}
static inline bool buf_empty(const Buf *b) {
        return b->end == b->start;
}

/* Makes room for at least n more bytes at the tail; returns -ENOBUFS when
 * that would exceed max. */
int buf_reserve(Buf *b, size_t n);
/* Tail space after buf_reserve(); write into it then buf_commit(). */
static inline char *buf_tail(Buf *b) {
        return b->data + b->end;
}
static inline size_t buf_avail(const Buf *b) {
        return b->cap - b->end;
}
void buf_commit(Buf *b, size_t n);

int buf_append(Buf *b, const void *p, size_t n);
int buf_printf(Buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void buf_consume(Buf *b, size_t n);
void buf_clear(Buf *b);
/* Drops memory beyond `keep` bytes of capacity when empty (idle sessions
 * should not pin large buffers). */
void buf_shrink(Buf *b, size_t keep);

/* read(2) up to `want` bytes into the tail (bounded by max). Returns bytes
 * read, 0 at EOF, -EAGAIN, -ENOBUFS when full, or another -errno. */
ssize_t buf_read_fd(Buf *b, int fd, size_t want);
/* write(2) from the head, consuming what was written. Returns bytes
 * written, -EAGAIN, or -errno. */
ssize_t buf_write_fd(Buf *b, int fd);
