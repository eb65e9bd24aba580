/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Committed configurations kept as numbered files: <N>.conf holds the text,
 * <N>.meta who committed it, when, and why. The .meta file is written
 * last, so a version without one (a crash between the two) is not listed
 * and its number is used again.
 *
 * It does not apply or validate configurations and never logs above
 * debug. Returns negative errno.
 */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "history.h"
#include "log.h"
#include "util/macro.h"
#include "util/parse.h"

/* A configuration text larger than this is not one of ours (the daemon
 * never renders anything near it); refuse it rather than read it all. */
#define HISTORY_TEXT_MAX (16U * 1024U * 1024U)
/* A .meta file is five short lines. */
#define HISTORY_META_MAX (16U * 1024U)

static inline void closedirp(DIR **d) {
        if (*d)
                (void) closedir(*d);
}

struct History {
        char *dir;
        HistoryEntry *entries;          /* sorted by version */
        size_t n_entries;
};

static void entry_done(HistoryEntry *e) {
        free(e->user);
        free(e->comment);
}

void history_entries_free(HistoryEntry *e, size_t n) {
        if (!e)
                return;
        for (size_t i = 0; i < n; i++)
                entry_done(&e[i]);
        free(e);
}

History *history_free(History *h) {
        if (!h)
                return NULL;
        history_entries_free(h->entries, h->n_entries);
        free(h->dir);
        free(h);
        return NULL;
}

/* One line of a .meta file: backslash, newline and other control bytes
 * escaped, so a comment cannot forge further keys. */
static char *escape_field(const char *s) {
        size_t n = strnlen(s, HISTORY_FIELD_MAX);
        char *out = malloc(n * 4 + 1), *p = out;

        if (!out)
                return NULL;
        for (size_t i = 0; i < n; i++) {
                unsigned char c = (unsigned char) s[i];
                if (c == '\\') {
                        *p++ = '\\';
                        *p++ = '\\';
                } else if (c == '\n') {
                        *p++ = '\\';
                        *p++ = 'n';
                } else if (c < 0x20 || c == 0x7f) {
                        p += sprintf(p, "\\x%02x", c);
                } else
                        *p++ = (char) c;
        }
        *p = '\0';
        return out;
}

static int hexval(char c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return -EINVAL;
}

static char *unescape_field(const char *s) {
        char *out = malloc(strlen(s) + 1), *p = out;

        if (!out)
                return NULL;
        for (; *s; s++) {
                if (*s != '\\') {
                        *p++ = *s;
                        continue;
                }
                s++;
                if (*s == 'n')
                        *p++ = '\n';
                else if (*s == '\\')
                        *p++ = '\\';
                else if (*s == 'x' && hexval(s[1]) >= 0 && hexval(s[2]) >= 0) {
                        *p++ = (char) (hexval(s[1]) * 16 + hexval(s[2]));
                        s += 2;
                } else if (*s == '\0')
                        break;
                else
                        *p++ = *s;
        }
        *p = '\0';
        return out;
}

static int fsync_directory_of(const char *path) {
        _cleanup_free_ char *dir = strdup(path);
        _cleanup_close_ int fd = -EBADF;
        char *slash;

        if (!dir)
                return -ENOMEM;
        slash = strrchr(dir, '/');
        if (!slash)
                return -EINVAL;
        if (slash == dir)
                slash[1] = '\0';
        else
                *slash = '\0';
        fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        if (fsync(fd) < 0)
                return -errno;
        return 0;
}

int history_write_file(const char *path, const void *data, size_t len, mode_t mode) {
        _cleanup_free_ char *tmp = NULL;
        _cleanup_close_ int fd = -EBADF;
        const char *p = data;
        int r;

        if (asprintf(&tmp, "%s.tmp.XXXXXX", path) < 0)
                return -ENOMEM;
        fd = mkostemp(tmp, O_CLOEXEC);
        if (fd < 0) {
                tmp = mfree(tmp);
                return -errno;
        }
        if (fchmod(fd, mode) < 0) {
                r = -errno;
                goto fail;
        }
        while (len > 0) {
                ssize_t n = write(fd, p, len);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        r = -errno;
                        goto fail;
                }
                p += n;
                len -= (size_t) n;
        }
        /* The data must be on disk before the name points at it, or a
         * crash could leave an empty file under the final name. */
        if (fsync(fd) < 0) {
                r = -errno;
                goto fail;
        }
        fd = safe_close(fd);
        if (rename(tmp, path) < 0) {
                r = -errno;
                goto fail;
        }
        return fsync_directory_of(path);
fail:
        (void) unlink(tmp);
        return r;
}

static int read_file(const char *path, size_t max, char **ret) {
        _cleanup_close_ int fd = -EBADF;
        _cleanup_free_ char *buf = NULL;
        struct stat st;
        size_t have = 0;

        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode))
                return -EBADF;
        if ((uint64_t) st.st_size > max)
                return -EFBIG;
        buf = malloc((size_t) st.st_size + 1);
        if (!buf)
                return -ENOMEM;
        while (have < (size_t) st.st_size) {
                ssize_t n = read(fd, buf + have, (size_t) st.st_size - have);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (n == 0)
                        break;
                have += (size_t) n;
        }
        buf[have] = '\0';
        *ret = TAKE_PTR(buf);
        return 0;
}

static int meta_parse(const char *text, uint32_t version, HistoryEntry *ret) {
        HistoryEntry e = { .version = version };
        _cleanup_free_ char *copy = strdup(text);
        char *save = NULL;
        bool have_time = false;

        if (!copy)
                return -ENOMEM;
        for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
                char *eq = strchr(line, '=');
                uint32_t u;

                if (!eq)
                        continue;
                *eq = '\0';
                const char *key = line, *value = eq + 1;
                if (streq(key, "time")) {
                        if (parse_uint64(value, &e.time_usec) < 0)
                                goto bad;
                        have_time = true;
                } else if (streq(key, "uid")) {
                        if (parse_uint32(value, &u) < 0)
                                goto bad;
                        e.uid = (uid_t) u;
                } else if (streq(key, "user")) {
                        free(e.user);
                        e.user = unescape_field(value);
                        if (!e.user)
                                goto oom;
                } else if (streq(key, "comment")) {
                        free(e.comment);
                        e.comment = unescape_field(value);
                        if (!e.comment)
                                goto oom;
                }
                /* "version" and unknown keys: the file name is the truth. */
        }
        if (!have_time)
                goto bad;
        if (!e.user && !(e.user = strdup("")))
                goto oom;
        if (!e.comment && !(e.comment = strdup("")))
                goto oom;
        *ret = e;
        return 0;
bad:
        entry_done(&e);
        return -EBADMSG;
oom:
        entry_done(&e);
        return -ENOMEM;
}

static int entry_cmp(const void *a, const void *b) {
        const HistoryEntry *x = a, *y = b;
        return x->version < y->version ? -1 : x->version > y->version;
}

static int history_scan(History *h) {
        _cleanup_(closedirp) DIR *d = NULL;
        struct dirent *de;
        int r;

        d = opendir(h->dir);
        if (!d)
                return -errno;
        while ((de = readdir(d))) {
                _cleanup_free_ char *num = NULL, *meta_path = NULL, *conf_path = NULL, *text = NULL;
                const char *dot = strrchr(de->d_name, '.');
                HistoryEntry e, *n;
                uint32_t v;

                if (!dot || !streq(dot, ".meta"))
                        continue;
                num = strndup(de->d_name, (size_t) (dot - de->d_name));
                if (!num)
                        return -ENOMEM;
                if (parse_uint32(num, &v) < 0 || v == 0)
                        continue;
                if (asprintf(&meta_path, "%s/%s", h->dir, de->d_name) < 0 ||
                    asprintf(&conf_path, "%s/%" PRIu32 ".conf", h->dir, v) < 0)
                        return -ENOMEM;
                if (access(conf_path, F_OK) < 0) {
                        log_debug("History %s has no configuration text; ignored.", meta_path);
                        continue;
                }
                r = read_file(meta_path, HISTORY_META_MAX, &text);
                if (r >= 0)
                        r = meta_parse(text, v, &e);
                if (r == -ENOMEM)
                        return r;
                if (r < 0) {
                        log_debug_errno(r, "History %s is not readable, ignored: %m", meta_path);
                        continue;
                }
                n = reallocarray(h->entries, h->n_entries + 1, sizeof *h->entries);
                if (!n) {
                        entry_done(&e);
                        return -ENOMEM;
                }
                h->entries = n;
                h->entries[h->n_entries++] = e;
        }
        if (h->n_entries > 0)
                qsort(h->entries, h->n_entries, sizeof *h->entries, entry_cmp);
        return 0;
}

int history_open(const char *dir, History **ret) {
        _cleanup_(history_freep) History *h = NULL;
        int r;

        h = calloc(1, sizeof *h);
        if (!h)
                return -ENOMEM;
        h->dir = strdup(dir);
        if (!h->dir)
                return -ENOMEM;
        /* Old versions may hold secrets (LDAP bind passwords). */
        if (mkdir(dir, 0700) < 0 && errno != EEXIST)
                return -errno;
        r = history_scan(h);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(h);
        return 0;
}

uint32_t history_latest(const History *h) {
        return h && h->n_entries > 0 ? h->entries[h->n_entries - 1].version : 0;
}

int history_add(History *h, const char *text, uid_t uid, const char *user, const char *comment,
                uint64_t time_usec, uint32_t *ret_version) {
        _cleanup_free_ char *conf_path = NULL, *meta_path = NULL, *meta = NULL, *u = NULL, *c = NULL;
        HistoryEntry e = {}, *n;
        uint32_t v;
        int r;

        if (history_latest(h) == UINT32_MAX)
                return -EOVERFLOW;
        v = history_latest(h) + 1;
        u = escape_field(user ?: "");
        c = escape_field(comment ?: "");
        if (!u || !c)
                return -ENOMEM;
        if (asprintf(&conf_path, "%s/%" PRIu32 ".conf", h->dir, v) < 0 ||
            asprintf(&meta_path, "%s/%" PRIu32 ".meta", h->dir, v) < 0 ||
            asprintf(&meta, "version=%" PRIu32 "\ntime=%" PRIu64 "\nuid=%u\nuser=%s\ncomment=%s\n",
                     v, time_usec, (unsigned) uid, u, c) < 0)
                return -ENOMEM;

        n = reallocarray(h->entries, h->n_entries + 1, sizeof *h->entries);
        if (!n)
                return -ENOMEM;
        h->entries = n;
        e.version = v;
        e.time_usec = time_usec;
        e.uid = uid;
        e.user = strndup(user ?: "", HISTORY_FIELD_MAX);
        e.comment = strndup(comment ?: "", HISTORY_FIELD_MAX);
        if (!e.user || !e.comment) {
                entry_done(&e);
                return -ENOMEM;
        }

        r = history_write_file(conf_path, text, strlen(text), 0600);
        if (r >= 0)
                r = history_write_file(meta_path, meta, strlen(meta), 0600);
        if (r < 0) {
                (void) unlink(conf_path);
                entry_done(&e);
                return r;
        }
        h->entries[h->n_entries++] = e;
        if (ret_version)
                *ret_version = v;
        return 0;
}

int history_get_text(const History *h, uint32_t version, char **ret_text) {
        _cleanup_free_ char *path = NULL;
        bool known = false;

        for (size_t i = 0; i < h->n_entries; i++)
                if (h->entries[i].version == version)
                        known = true;
        if (!known)
                return -ENOENT;
        if (asprintf(&path, "%s/%" PRIu32 ".conf", h->dir, version) < 0)
                return -ENOMEM;
        return read_file(path, HISTORY_TEXT_MAX, ret_text);
}

int history_list(const History *h, HistoryEntry **ret, size_t *ret_n) {
        HistoryEntry *l;

        l = calloc(MAX(h->n_entries, (size_t) 1), sizeof *l);
        if (!l)
                return -ENOMEM;
        for (size_t i = 0; i < h->n_entries; i++) {
                l[i].version = h->entries[i].version;
                l[i].time_usec = h->entries[i].time_usec;
                l[i].uid = h->entries[i].uid;
                l[i].user = strdup(h->entries[i].user);
                l[i].comment = strdup(h->entries[i].comment);
                if (!l[i].user || !l[i].comment) {
                        history_entries_free(l, i + 1);
                        return -ENOMEM;
                }
        }
        *ret = l;
        *ret_n = h->n_entries;
        return 0;
}
