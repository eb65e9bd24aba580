/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * Minimal TAP producer for unit tests: each check prints "ok N - name" or
 * "not ok N - name # file:line"; tap_done() prints the plan and returns the
 * exit code. Skips print "ok N - name # SKIP reason".
 */

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static unsigned tap_n, tap_failed;

__attribute__((format(printf, 4, 5)))
static inline void tap_result(int ok, const char *file, int line, const char *fmt, ...) {
        va_list ap;
        printf("%sok %u - ", ok ? "" : "not ", ++tap_n);
        va_start(ap, fmt);
        vprintf(fmt, ap);
        va_end(ap);
        if (!ok) {
                printf(" # at %s:%d", file, line);
                tap_failed++;
        }
        printf("\n");
        fflush(stdout);
}

#define ok(cond, ...) tap_result(!!(cond), __FILE__, __LINE__, __VA_ARGS__)
#define is_int(a, b, ...) do {                                                  \
                long long _a = (long long) (a), _b = (long long) (b);           \
                if (_a != _b)                                                   \
                        printf("# got %lld, expected %lld\n", _a, _b);          \
                tap_result(_a == _b, __FILE__, __LINE__, __VA_ARGS__);          \
        } while (0)
#define is_str(a, b, ...) do {                                                  \
                const char *_a = (a), *_b = (b);                                \
                int _ok = _a && _b && strcmp(_a, _b) == 0;                      \
                if (!_ok)                                                       \
                        printf("# got \"%s\", expected \"%s\"\n",               \
                               _a ? _a : "(null)", _b ? _b : "(null)");         \
                tap_result(_ok, __FILE__, __LINE__, __VA_ARGS__);               \
        } while (0)

static inline void tap_skip(const char *name, const char *reason) {
        printf("ok %u - %s # SKIP %s\n", ++tap_n, name, reason);
        fflush(stdout);
}

static inline int tap_done(void) {
        printf("1..%u\n", tap_n);
        return tap_failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
