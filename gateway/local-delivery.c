/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Maildir delivery: one file per message and recipient.
 *
 * The file is created under DIR/tmp with a name unique to this host,
 * written, fsynced, renamed into DIR/new and DIR/new is fsynced, so the
 * message is either absent or complete and durable in new/ (the Maildir
 * protocol). The spool keeps the SMTP wire form; a mail reader expects the
 * message itself, so the leading dot added by the sender's dot-stuffing is
 * removed here (RFC 5321 4.5.2). CRLF line ends are kept as sent.
 *
 * Does not: lock, deliver to mbox, expand aliases, or log (the caller
 * records the outcome). Blocking I/O: call it from a worker thread.
 * Returns 0 or a negative errno.
 */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include "local-delivery.h"
#include "util/macro.h"

/* Chunk for reading the spool and writing the mailbox file. */
#define LOCAL_IO_CHUNK (64 * 1024)
/* Host name part of a Maildir file name; POSIX HOST_NAME_MAX is 255 but
 * any host name we can get fits in a DNS name (RFC 1035 2.3.4). */
#define LOCAL_HOSTNAME_MAX 255
/* "/", ":" in the host name would break the Maildir name syntax; they are
 * replaced by their octal escapes as the Maildir convention asks. */
#define LOCAL_NAME_MAX (LOCAL_HOSTNAME_MAX * 4 + 128)
/* RFC 5321 4.5.3.1.3: a path is at most 256 octets. */
#define LOCAL_PATH_MAX 256

static int write_all(int fd, const char *p, size_t n) {
        while (n > 0) {
                ssize_t k = write(fd, p, n);
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                p += k;
                n -= (size_t) k;
        }
        return 0;
}

static int mkdir_if_missing(const char *path) {
        if (mkdir(path, 0700) < 0 && errno != EEXIST)
                return -errno;
        return 0;
}

static int ensure_maildir(const char *dir) {
        static const char *const subdirs[] = { "tmp", "new", "cur" };
        char path[PATH_MAX];
        int r;

        r = mkdir_if_missing(dir);
        if (r < 0)
                return r;
        for (size_t i = 0; i < ELEMENTSOF(subdirs); i++) {
                if ((size_t) snprintf(path, sizeof(path), "%s/%s", dir, subdirs[i]) >= sizeof(path))
                        return -ENAMETOOLONG;
                r = mkdir_if_missing(path);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* The host name with the two characters that have a meaning in Maildir
 * names escaped ("/" -> "\057", ":" -> "\072"). */
static void maildir_hostname(char *out, size_t len) {
        char host[LOCAL_HOSTNAME_MAX + 1] = "";
        size_t o = 0;

        if (gethostname(host, sizeof(host)) < 0 || host[0] == '\0')
                strcpy(host, "localhost");
        host[LOCAL_HOSTNAME_MAX] = '\0';

        for (const char *p = host; *p && o + 5 < len; p++) {
                if (*p == '/' || *p == ':') {
                        o += (size_t) snprintf(out + o, len - o, "\\%03o", (unsigned char) *p);
                } else
                        out[o++] = *p;
        }
        out[o] = '\0';
}

/* Header values go in verbatim: anything that would end the line or the
 * header section is refused (header injection). */
static bool address_is_safe(const char *s) {
        if (strlen(s) > LOCAL_PATH_MAX)
                return false;
        for (const char *p = s; *p; p++)
                if ((unsigned char) *p < 0x20 || *p == 0x7f)
                        return false;
        return true;
}

/* Copies size wire octets from fd at offset into out_fd, removing the
 * leading dot of each line (RFC 5321 4.5.2 transparency). */
static int copy_unstuffed(int fd, uint64_t offset, uint64_t size, int out_fd) {
        _cleanup_free_ char *in = NULL, *out = NULL;
        bool line_start = true;
        int r;

        in = malloc(LOCAL_IO_CHUNK);
        out = malloc(LOCAL_IO_CHUNK);
        if (!in || !out)
                return -ENOMEM;

        while (size > 0) {
                size_t want = (size_t) MIN(size, (uint64_t) LOCAL_IO_CHUNK), o = 0;
                ssize_t n = pread(fd, in, want, (off_t) offset);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (n == 0)
                        return -EIO;    /* the spool file is shorter than its envelope says */

                for (ssize_t i = 0; i < n; i++) {
                        char ch = in[i];
                        if (line_start && ch == '.') {
                                line_start = false;
                                continue;
                        }
                        line_start = ch == '\n';
                        out[o++] = ch;
                }
                r = write_all(out_fd, out, o);
                if (r < 0)
                        return r;

                offset += (uint64_t) n;
                size -= (uint64_t) n;
        }
        return 0;
}

int local_deliver(const char *dir, uint64_t mid, uint32_t rid, const char *sender,
                  const char *rcpt, int data_fd, uint64_t offset, uint64_t size, char **ret_name) {
        char host[LOCAL_HOSTNAME_MAX * 4 + 1], name[LOCAL_NAME_MAX], tmp_path[PATH_MAX], new_path[PATH_MAX];
        _cleanup_free_ char *header = NULL;
        _cleanup_close_ int fd = -EBADF, dfd = -EBADF;
        struct timeval tv;
        int r, n;

        if (isempty(dir) || !sender || isempty(rcpt) || data_fd < 0)
                return -EINVAL;
        if (!address_is_safe(sender) || !address_is_safe(rcpt))
                return -EINVAL;

        r = ensure_maildir(dir);
        if (r < 0)
                return r;

        /* Unique per host: time, PID, and our own message and recipient IDs,
         * which no other delivery shares. */
        (void) gettimeofday(&tv, NULL);
        maildir_hostname(host, sizeof(host));
        n = snprintf(name, sizeof(name), "%lld.M%ldP%dQ%" PRIu64 "R%" PRIu32 ".%s",
                     (long long) tv.tv_sec, (long) tv.tv_usec, (int) getpid(), mid, rid, host);
        if (n < 0 || (size_t) n >= sizeof(name))
                return -ENAMETOOLONG;
        if ((size_t) snprintf(tmp_path, sizeof(tmp_path), "%s/tmp/%s", dir, name) >= sizeof(tmp_path) ||
            (size_t) snprintf(new_path, sizeof(new_path), "%s/new/%s", dir, name) >= sizeof(new_path))
                return -ENAMETOOLONG;

        fd = open(tmp_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0)
                return -errno;

        n = asprintf(&header, "Return-Path: <%s>\r\nDelivered-To: %s\r\n", sender, rcpt);
        if (n < 0) {
                header = NULL;
                r = -ENOMEM;
                goto fail;
        }
        r = write_all(fd, header, (size_t) n);
        if (r < 0)
                goto fail;

        r = copy_unstuffed(data_fd, offset, size, fd);
        if (r < 0)
                goto fail;

        if (fsync(fd) < 0) {
                r = -errno;
                goto fail;
        }
        fd = safe_close(fd);

        if (rename(tmp_path, new_path) < 0) {
                r = -errno;
                goto fail;
        }

        /* The rename is durable only once the directory is (Maildir
         * delivery is complete when the name is in new/). */
        if ((size_t) snprintf(tmp_path, sizeof(tmp_path), "%s/new", dir) >= sizeof(tmp_path))
                return -ENAMETOOLONG;
        dfd = open(tmp_path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0 || fsync(dfd) < 0) {
                r = -errno;
                (void) unlink(new_path);
                return r;
        }

        if (ret_name) {
                char *s = strdup(name);
                if (!s)
                        return -ENOMEM;
                *ret_name = s;
        }
        return 0;

fail:
        (void) unlink(tmp_path);
        return r;
}
