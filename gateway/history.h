/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * The history of committed configurations: STATE/history/<version>.conf
 * (the committed text, secrets included, hence mode 0600) and
 * <version>.meta (time, uid, user, comment as key=value lines). Versions
 * are numbered from 1 and only grow; the newest is the running
 * configuration unless the file was edited by hand since.
 *
 * What it does not do: decide what is committed (staging.c) or apply
 * anything. It never logs above debug. Returns negative errno; -ENOENT for
 * a version that is not stored.
 */

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* A comment or user name longer than this is cut: it is a label shown in
 * listings, not a place for documents. */
#define HISTORY_FIELD_MAX 1024

typedef struct History History;

typedef struct HistoryEntry {
        uint32_t version;
        uint64_t time_usec;             /* CLOCK_REALTIME, usec since the epoch */
        uid_t uid;
        char *user;
        char *comment;
} HistoryEntry;

/* Creates the directory (0700) when missing and reads what is stored. */
int history_open(const char *dir, History **ret);
History *history_free(History *h);
static inline void history_freep(History **h) {
        if (*h)
                history_free(*h);
}

/* The newest version, 0 when nothing was ever committed. */
uint32_t history_latest(const History *h);

/* Stores text as the next version (files written to temporaries, fsynced,
 * renamed, directory fsynced). */
int history_add(History *h, const char *text, uid_t uid, const char *user, const char *comment,
                uint64_t time_usec, uint32_t *ret_version);

int history_get_text(const History *h, uint32_t version, char **ret_text);

/* Writes a file atomically: a temporary in the same directory with mode,
 * fsync, rename over path, fsync of the directory. Also used for the
 * configuration file itself. */
int history_write_file(const char *path, const void *data, size_t len, mode_t mode);

/* Oldest first. */
int history_list(const History *h, HistoryEntry **ret, size_t *ret_n);
void history_entries_free(HistoryEntry *e, size_t n);
