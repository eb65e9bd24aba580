/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Unit tests for util/buf.c: the hard maximum, compaction, fd I/O. */

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "tap.h"
#include "util/buf.h"

static void test_limits(void) {
        Buf b;
        char big[300];

        buf_init(&b, 256);
        memset(big, 'x', sizeof big);
        is_int(buf_append(&b, big, 256), 0, "append up to max");
        is_int(buf_len(&b), 256, "length is max");
        is_int(buf_append(&b, "y", 1), -ENOBUFS, "one byte past max refused");
        is_int(buf_len(&b), 256, "refused append leaves the buffer unchanged");

        buf_consume(&b, 200);
        is_int(buf_len(&b), 56, "consume");
        is_int(buf_append(&b, big, 200), 0, "consumed space is reused (compaction)");
        is_int(buf_len(&b), 256, "full again");
        ok(b.cap <= b.max, "capacity never exceeds max");
        is_int(buf_append(&b, big, 300), -ENOBUFS, "more than max at once refused");
        buf_done(&b);
}

static void test_printf_consume(void) {
        Buf b;

        buf_init(&b, 64);
        is_int(buf_printf(&b, "%d %s", 250, "Ok"), 6, "printf returns the length");
        ok(buf_len(&b) == 6 && memcmp(buf_peek(&b), "250 Ok", 6) == 0, "printf content");
        is_int(buf_printf(&b, "%080d", 1), -ENOBUFS, "printf past max refused");
        is_int(buf_len(&b), 6, "refused printf leaves the buffer unchanged");
        buf_consume(&b, 100);
        ok(buf_empty(&b), "consuming more than there is empties");
        buf_shrink(&b, 0);
        ok(b.data == NULL && b.cap == 0, "shrink of an empty buffer frees it");
        is_str(buf_peek(&b), "", "peek of a freed buffer is empty text");
        buf_done(&b);
}

static void test_fd(void) {
        int p[2];
        Buf in, out;

        if (pipe2(p, O_NONBLOCK) < 0) {
                tap_skip("fd I/O", "no pipe");
                return;
        }
        buf_init(&out, 1024);
        buf_init(&in, 8);
        (void) buf_append(&out, "hello, world", 12);
        is_int(buf_write_fd(&out, p[1]), 12, "write_fd writes everything");
        ok(buf_empty(&out), "written bytes are consumed");
        is_int(buf_read_fd(&in, p[0], 100), 8, "read_fd is bounded by max");
        is_int(buf_read_fd(&in, p[0], 100), -ENOBUFS, "full buffer reads nothing");
        buf_consume(&in, 8);
        is_int(buf_read_fd(&in, p[0], 100), 4, "the rest after consuming");
        is_int(buf_read_fd(&in, p[0], 100), -EAGAIN, "empty non-blocking pipe: -EAGAIN");
        close(p[1]);
        is_int(buf_read_fd(&in, p[0], 100), 0, "EOF reads 0");
        close(p[0]);
        buf_done(&in);
        buf_done(&out);
}

int main(void) {
        test_limits();
        test_printf_consume();
        test_fd();
        return tap_done();
}
