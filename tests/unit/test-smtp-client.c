/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * smtp-client against real peers: a scripted SMTP server in a forked child
 * (exact replies, records every command line and the DATA bytes it
 * received) and Postfix's smtp-sink when it is installed. Checks the
 * recipient statuses, the reply texts, the command sequence (pipelining,
 * RSET, HELO fallback) and that the peer received the spooled bytes plus
 * ".\r\n" exactly.
 *
 * STARTTLS: the scripted peer runs the server side of TLS with OpenSSL in
 * the child (blocking I/O), with certificates from tests/data/make-test-pki.
 * Every outbound TLS mode meets every peer behaviour (trusted, untrusted and
 * wrong-name certificates, no STARTTLS, STARTTLS refused, a handshake that
 * fails after the 220, no ESMTP), each a real session.
 *
 * The connection cache is off for the cases above (each ends with QUIT, as
 * they check); the cache cases turn it on and run jobs one after another on
 * one loop against a peer that serves each connection in its own process
 * and records every accept.
 */

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-event.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>

#include "smtp-client.h"
#include "tap.h"
#include "tls.h"
#include "util/macro.h"

#define PEER_RCPTS_MAX 8
#define TEST_TIMEOUT_USEC (15 * USEC_PER_SEC)

static char workdir[] = "/tmp/test-smtp-client.XXXXXX";
/* The test PKI (make-test-pki output); empty when it could not be made. */
static char pkidir[512];

/* ---- scripted peer ---- */

/* What the peer does after answering STARTTLS with 220. */
typedef enum PeerTls {
        PEER_TLS_HANDSHAKE,             /* a real TLS server */
        PEER_TLS_CLOSE,                 /* hangs up */
        PEER_TLS_GARBAGE,               /* answers the ClientHello with clear text */
        PEER_TLS_INJECT,                /* "250" pipelined behind the 220 (CVE-2011-0411) */
} PeerTls;

typedef struct PeerScript {
        const char *greeting;           /* NULL: say nothing (timeout) */
        const char *ehlo;               /* full reply incl. CRLF */
        const char *helo;
        const char *mail;               /* "CLOSE": hang up instead */
        const char *rcpt[PEER_RCPTS_MAX]; /* by RCPT order over the session */
        const char *data;
        const char *dot;                /* NULL: never answer (timeout) */
        unsigned connections;
        const char *starttls;           /* reply to STARTTLS; NULL: 502 */
        PeerTls tls;
        const char *cert, *key;         /* in pkidir; the chain is cert_chain */
        const char *cert_chain;         /* NULL: send the leaf only */
        bool fork_sessions;             /* each connection in its own process, concurrently */
        bool close_after_dot;           /* hang up after the reply to "." */
} PeerScript;

static const char *EHLO_PIPE = "250-peer.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250 8BITMIME\r\n";
static const char *EHLO_PLAIN = "250-peer.test\r\n250 8BITMIME\r\n";
#define EHLO_STARTTLS_TEXT "250-peer.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-STARTTLS\r\n250 8BITMIME\r\n"
#define EHLO_PIPE_TEXT "250-peer.test\r\n250-PIPELINING\r\n250 SIZE 10240000\r\n"
static const char *EHLO_STARTTLS = EHLO_STARTTLS_TEXT;

/* Child only: the peer's TLS session once STARTTLS went through. */
static SSL *peer_ssl;

static int listen_any(uint16_t *ret_port) {
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t len = sizeof(sa);
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

        if (fd < 0 || bind(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0 || listen(fd, 8) < 0 ||
            getsockname(fd, (struct sockaddr *) &sa, &len) < 0)
                abort();
        *ret_port = ntohs(sa.sin_port);
        return fd;
}

static ssize_t peer_read(int fd, void *p, size_t n) {
        if (peer_ssl) {
                size_t k = 0;
                return SSL_read_ex(peer_ssl, p, n, &k) == 1 ? (ssize_t) k : 0;
        }
        return read(fd, p, n);
}

static void put(int fd, const char *s) {
        size_t n = strlen(s);
        while (n > 0) {
                size_t w = 0;
                ssize_t k = peer_ssl ? (SSL_write_ex(peer_ssl, s, n, &w) == 1 ? (ssize_t) w : -1) : write(fd, s, n);
                if (k <= 0)
                        _exit(0);
                s += k;
                n -= (size_t) k;
        }
}

static void append_file(const char *name, const char *p, size_t n) {
        char path[512];
        snprintf(path, sizeof(path), "%s/%s", workdir, name);
        int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        if (fd < 0)
                _exit(2);
        if (write(fd, p, n) != (ssize_t) n)
                _exit(2);
        close(fd);
}

static size_t count_lines(const char *p, size_t n) {
        size_t c = 0;
        for (size_t i = 0; i < n; i++)
                c += p[i] == '\n';
        return c;
}

static SSL_CTX *peer_tls_ctx(const PeerScript *s) {
        char cert[600], key[600], chain[600];
        SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());

        snprintf(cert, sizeof(cert), "%s/%s", pkidir, s->cert);
        snprintf(key, sizeof(key), "%s/%s", pkidir, s->key);
        if (!ctx || SSL_CTX_use_certificate_file(ctx, cert, SSL_FILETYPE_PEM) != 1 ||
            SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1)
                _exit(3);
        if (s->cert_chain) {
                snprintf(chain, sizeof(chain), "%s/%s", pkidir, s->cert_chain);
                FILE *f = fopen(chain, "re");
                X509 *x = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
                if (f)
                        fclose(f);
                if (!x || SSL_CTX_add0_chain_cert(ctx, x) != 1)
                        _exit(3);
        }
        return ctx;
}

/* STARTTLS answered with 220: do what the script says. Returns false when
 * the session is over. */
static bool peer_starttls(int fd, const PeerScript *s, SSL_CTX *ctx) {
        char b[512];

        switch (s->tls) {
        case PEER_TLS_CLOSE:
                return false;
        case PEER_TLS_GARBAGE:
                (void) read(fd, b, sizeof(b));          /* the ClientHello */
                put(fd, "this is not TLS\r\n");
                return false;
        default:
                break;
        }

        peer_ssl = SSL_new(ctx);
        if (!peer_ssl || SSL_set_fd(peer_ssl, fd) != 1)
                _exit(3);
        if (SSL_accept(peer_ssl) != 1) {
                append_file("cmds", "[tls] handshake failed\n", 23);
                SSL_free(peer_ssl);
                peer_ssl = NULL;
                return false;
        }
        const char *sni = SSL_get_servername(peer_ssl, TLSEXT_NAMETYPE_host_name);
        int m = snprintf(b, sizeof(b), "[sni] %s\n", sni ?: "(none)");
        append_file("cmds", b, (size_t) m);
        return true;
}

/* One session; returns when the client quits or hangs up. */
static void peer_session(int fd, const PeerScript *s, SSL_CTX *ctx, unsigned *rcpt_i, unsigned *data_i) {
        static char buf[4 * 1024 * 1024];
        size_t len = 0;
        bool in_data = false;
        unsigned accepted = 0;          /* RCPTs accepted in this transaction */

        if (!s->greeting) {
                char c;
                (void) read(fd, &c, 1);         /* until the client gives up */
                return;
        }
        put(fd, s->greeting);
        if (strncmp(s->greeting, "2", 1) != 0) {
                char c;
                (void) read(fd, &c, 1);
                return;
        }

        for (;;) {
                ssize_t n = peer_read(fd, buf + len, sizeof(buf) - len);
                if (n <= 0)
                        return;
                len += (size_t) n;

                for (;;) {
                        if (in_data) {
                                /* Data ends with CRLF "." CRLF, or is just "." CRLF. */
                                char *end = NULL;
                                size_t endlen = 0;
                                if (len >= 3 && memcmp(buf, ".\r\n", 3) == 0)
                                        end = buf, endlen = 3;
                                else {
                                        char *e = memmem(buf, len, "\r\n.\r\n", 5);
                                        if (e)
                                                end = e, endlen = 5;
                                }
                                if (!end)
                                        break;
                                size_t total = (size_t) (end - buf) + endlen;
                                char name[32];
                                snprintf(name, sizeof(name), "data.%u", (*data_i)++);
                                append_file(name, buf, total);
                                memmove(buf, buf + total, len - total);
                                len -= total;
                                in_data = false;
                                if (!s->dot) {
                                        char c;
                                        (void) read(fd, &c, 1);
                                        return;
                                }
                                put(fd, s->dot);
                                if (s->close_after_dot)
                                        return;
                                continue;
                        }

                        char *lf = memchr(buf, '\n', len);
                        if (!lf)
                                break;
                        size_t ll = (size_t) (lf - buf) + 1;
                        char line[1024], rec[1100];
                        snprintf(line, sizeof(line), "%.*s", (int) MIN(ll - 2, sizeof(line) - 1), buf);
                        memmove(buf, buf + ll, len - ll);
                        len -= ll;
                        /* Lines already waiting behind this one show pipelining. */
                        int m = snprintf(rec, sizeof(rec), "%s%s [+%zu]\n", peer_ssl ? "[tls] " : "", line,
                                         count_lines(buf, len));
                        append_file("cmds", rec, (size_t) m);

                        if (strncasecmp(line, "EHLO", 4) == 0)
                                /* RFC 3207 4.2: no STARTTLS offered inside TLS. */
                                put(fd, peer_ssl ? EHLO_PIPE : s->ehlo);
                        else if (strncasecmp(line, "STARTTLS", 8) == 0 && s->starttls && !peer_ssl) {
                                if (s->tls == PEER_TLS_INJECT) {
                                        /* Both in one segment, as an attacker in the path would. */
                                        char both[256];
                                        snprintf(both, sizeof(both), "%s250 2.0.0 injected\r\n", s->starttls);
                                        put(fd, both);
                                } else
                                        put(fd, s->starttls);
                                if (strncmp(s->starttls, "220", 3) != 0)
                                        continue;
                                /* RFC 3207 4: nothing may follow STARTTLS in the same batch. */
                                if (len > 0)
                                        append_file("cmds", "pipelined after STARTTLS\n", 25);
                                if (s->tls == PEER_TLS_INJECT)
                                        (void) read(fd, buf, sizeof(buf));
                                if (s->tls == PEER_TLS_INJECT || !peer_starttls(fd, s, ctx))
                                        return;
                                len = 0;
                        }
                        else if (strncasecmp(line, "HELO", 4) == 0)
                                put(fd, s->helo ?: "250 peer.test\r\n");
                        else if (strncasecmp(line, "MAIL", 4) == 0) {
                                if (s->mail && streq(s->mail, "CLOSE"))
                                        return;
                                accepted = 0;
                                put(fd, s->mail ?: "250 2.1.0 Ok\r\n");
                        } else if (strncasecmp(line, "RCPT", 4) == 0) {
                                unsigned i = (*rcpt_i)++;
                                const char *rr = i < PEER_RCPTS_MAX && s->rcpt[i] ? s->rcpt[i] : "250 2.1.5 Ok\r\n";
                                accepted += rr[0] == '2';
                                put(fd, rr);
                        } else if (strncasecmp(line, "DATA", 4) == 0) {
                                /* Like Postfix: no DATA without a recipient (RFC 2920 3.1). */
                                const char *d = s->data ?: accepted > 0 ? "354 End data with <CR><LF>.<CR><LF>\r\n" :
                                                "554 5.5.1 Error: no valid recipients\r\n";
                                put(fd, d);
                                in_data = strncmp(d, "354", 3) == 0;
                        } else if (strncasecmp(line, "RSET", 4) == 0)
                                put(fd, "250 2.0.0 Ok\r\n");
                        else if (strncasecmp(line, "QUIT", 4) == 0) {
                                put(fd, "221 2.0.0 Bye\r\n");
                                return;
                        } else
                                put(fd, "502 5.5.2 Error: command not recognized\r\n");
                }
        }
}

static pid_t peer_start(const PeerScript *s, uint16_t *ret_port) {
        int lfd = listen_any(ret_port);
        pid_t pid = fork();

        if (pid < 0)
                abort();
        if (pid == 0) {
                unsigned rcpt_i = 0, data_i = 0;
                SSL_CTX *ctx = s->starttls && s->cert ? peer_tls_ctx(s) : NULL;

                alarm(20);
                for (unsigned i = 0; i < MAX(s->connections, 1u); i++) {
                        int fd = accept(lfd, NULL, NULL);
                        if (fd < 0)
                                _exit(1);
                        append_file("accepts", "accept\n", 7);
                        if (s->fork_sessions) {
                                pid_t child = fork();

                                if (child < 0)
                                        _exit(1);
                                if (child > 0) {
                                        close(fd);
                                        continue;
                                }
                                close(lfd);
                                alarm(20);
                                peer_session(fd, s, ctx, &rcpt_i, &data_i);
                                if (peer_ssl)
                                        (void) SSL_shutdown(peer_ssl);
                                _exit(0);
                        }
                        peer_session(fd, s, ctx, &rcpt_i, &data_i);
                        if (peer_ssl) {
                                (void) SSL_shutdown(peer_ssl);
                                SSL_free(peer_ssl);
                                peer_ssl = NULL;
                        }
                        close(fd);
                }
                SSL_CTX_free(ctx);
                while (s->fork_sessions && wait(NULL) > 0)
                        ;
                _exit(0);
        }
        close(lfd);
        return pid;
}

static void peer_stop(pid_t pid) {
        (void) kill(pid, SIGTERM);
        (void) waitpid(pid, NULL, 0);
}

/* Lets the peer finish its sessions (a courtesy QUIT is not waited for by
 * the client, so it may still be on its way), then stops it. */
static void peer_wait(pid_t pid) {
        for (int i = 0; i < 300; i++) {
                if (waitpid(pid, NULL, WNOHANG) == pid)
                        return;
                usleep(10000);
        }
        peer_stop(pid);
}

static void clean_dir(const char *dir) {
        DIR *d = opendir(dir);
        struct dirent *de;

        if (!d)
                return;
        while ((de = readdir(d)))
                if (de->d_name[0] != '.') {
                        char p[512];
                        snprintf(p, sizeof(p), "%s/%s", dir, de->d_name);
                        (void) unlink(p);
                }
        closedir(d);
}

static void clean_workdir(void) {
        clean_dir(workdir);
}

static char *read_file(const char *name, size_t *ret_len) {
        char path[512];
        snprintf(path, sizeof(path), "%s/%s", workdir, name);
        FILE *f = fopen(path, "re");
        if (!f)
                return NULL;
        char *p = malloc(8 * 1024 * 1024);
        size_t n = fread(p, 1, 8 * 1024 * 1024 - 1, f);
        fclose(f);
        p[n] = '\0';
        if (ret_len)
                *ret_len = n;
        return p;
}

/* ---- jobs ---- */

static uint16_t closed_port(void) {
        uint16_t port;
        close(listen_any(&port));
        return port;
}

static void target_set(ResolvedTarget *t, uint16_t port) {
        struct sockaddr_in *sin = (struct sockaddr_in *) &t->addr;

        *t = (ResolvedTarget) { .host = strdup("peer.test"), .addrlen = sizeof(*sin) };
        sin->sin_family = AF_INET;
        sin->sin_port = htons(port);
        sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
}

/* A data fd as the spool would give it: some envelope bytes, then the
 * wire form from data_offset. */
static void message_set(DeliveryMessage *m, uint64_t mid, const char *sender, const char *data, size_t size,
                        const char *const *rcpts, size_t n) {
        static const char envelope[] = "ENVELOPE-NOT-TO-BE-SENT\n";
        char path[512];

        snprintf(path, sizeof(path), "%s/spool.%llu", workdir, (unsigned long long) mid);
        int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0 || write(fd, envelope, sizeof(envelope) - 1) < 0 || write(fd, data, size) != (ssize_t) size)
                abort();
        (void) unlink(path);

        *m = (DeliveryMessage) {
                .mid = mid,
                .sender = strdup(sender),
                .data_fd = fd,
                .data_offset = sizeof(envelope) - 1,
                .data_size = size,
                .rcpts = calloc(n, sizeof(DeliveryRcpt)),
                .n_rcpts = n,
        };
        for (size_t i = 0; i < n; i++)
                m->rcpts[i] = (DeliveryRcpt) { .rid = (uint32_t) i, .address = strdup(rcpts[i]) };
}

static DeliveryJob *job_new(const uint16_t *ports, size_t n_ports, size_t n_messages) {
        DeliveryJob *j = calloc(1, sizeof(*j));
        static uint64_t dcid = 1;

        j->dcid = dcid++;
        j->domain = strdup("peer.test");
        j->helo_name = strdup("gw.test");
        j->targets = calloc(n_ports, sizeof(ResolvedTarget));
        j->n_targets = n_ports;
        for (size_t i = 0; i < n_ports; i++)
                target_set(j->targets + i, ports[i]);
        j->messages = calloc(n_messages, sizeof(DeliveryMessage));
        j->n_messages = n_messages;
        j->connect_timeout = 2 * USEC_PER_SEC;
        j->command_timeout = 3 * USEC_PER_SEC;
        j->data_timeout = 3 * USEC_PER_SEC;
        return j;
}

static bool job_done_called;

static void on_done(DeliveryJob *job, void *userdata) {
        job_done_called = true;
        (void) sd_event_exit(userdata, 0);
}

static int on_guard(sd_event_source *s, uint64_t usec, void *userdata) {
        return sd_event_exit(sd_event_source_get_event(s), -ETIME);
}

/* Runs the job to completion; returns the loop's exit code. */
static int run_job(DeliveryJob *j) {
        sd_event *e = NULL;
        sd_event_source *guard = NULL;
        int r;

        if (sd_event_new(&e) < 0)
                abort();
        job_done_called = false;
        (void) sd_event_add_time_relative(e, &guard, CLOCK_MONOTONIC, TEST_TIMEOUT_USEC, 0, on_guard, NULL);
        r = smtp_client_start(e, j, on_done, e);
        if (r >= 0)
                r = sd_event_loop(e);
        sd_event_source_unref(guard);
        sd_event_unref(e);
        return r;
}

static const char *MSG1 =
        "From: <a@src.test>\r\n"
        "Subject: hello\r\n"
        "\r\n"
        "..a line that started with a dot\r\n"
        "body line\r\n";

/* ---- cases ---- */

static void test_pipelined_delivery(void) {
        PeerScript s = { .greeting = "220 peer.test ESMTP\r\n", .ehlo = EHLO_PIPE, .dot = "250 2.0.0 Ok: queued as X\r\n",
                         .connections = 1 };
        const char *rc[] = { "r1@peer.test", "r2@peer.test" };
        uint16_t port;
        pid_t pid = peer_start(&s, &port);
        DeliveryJob *j = job_new(&port, 1, 1);
        size_t len;

        message_set(j->messages, 7, "s@src.test", MSG1, strlen(MSG1), rc, 2);
        is_int(run_job(j), 0, "pipelined: loop ends");
        ok(job_done_called, "pipelined: done() called");
        is_int(j->messages[0].rcpts[0].status, DELIVERY_DELIVERED, "pipelined: rcpt 1 delivered");
        is_int(j->messages[0].rcpts[1].status, DELIVERY_DELIVERED, "pipelined: rcpt 2 delivered");
        is_str(j->messages[0].rcpts[0].reply, "250 2.0.0 Ok: queued as X", "pipelined: reply text");
        peer_stop(pid);

        _cleanup_free_ char *data = read_file("data.0", &len);
        _cleanup_free_ char *want = NULL;
        if (asprintf(&want, "%s.\r\n", MSG1) < 0)
                abort();
        ok(data && len == strlen(want) && memcmp(data, want, len) == 0, "pipelined: peer got data + \".\\r\\n\" exactly");

        _cleanup_free_ char *cmds = read_file("cmds", NULL);
        ok(cmds && strstr(cmds, "EHLO gw.test [+0]\n"), "pipelined: EHLO with helo name");
        ok(cmds && strstr(cmds, "MAIL FROM:<s@src.test> SIZE=" ) , "pipelined: MAIL with SIZE=");
        /* With one write, RCPT, RCPT and DATA are behind MAIL when it is read. */
        char batch[64];
        snprintf(batch, sizeof(batch), "SIZE=%zu [+3]\n", strlen(MSG1));
        ok(cmds && strstr(cmds, batch), "pipelined: MAIL+RCPTs+DATA in one batch");
        ok(cmds && strstr(cmds, "QUIT"), "pipelined: QUIT sent");
        ok(cmds && !strstr(cmds, "RSET"), "pipelined: no RSET needed");
        delivery_job_free(j);
        clean_workdir();
}

static void test_rcpt_statuses(void) {
        PeerScript s = { .greeting = "220 peer.test ESMTP\r\n", .ehlo = EHLO_PLAIN,
                         .rcpt = { "250 2.1.5 Ok\r\n", "450 4.2.0 <r2@peer.test>: mailbox busy\r\n",
                                   "550-5.1.1 <r3@peer.test>: no such user\r\n550 5.1.1 second line\r\n" },
                         .dot = "250 2.0.0 Ok\r\n", .connections = 1 };
        const char *rc[] = { "r1@peer.test", "r2@peer.test", "r3@peer.test" };
        uint16_t port;
        pid_t pid = peer_start(&s, &port);
        DeliveryJob *j = job_new(&port, 1, 1);

        message_set(j->messages, 8, "", MSG1, strlen(MSG1), rc, 3);
        is_int(run_job(j), 0, "rcpt: loop ends");
        is_int(j->messages[0].rcpts[0].status, DELIVERY_DELIVERED, "rcpt: 250 -> delivered");
        is_int(j->messages[0].rcpts[1].status, DELIVERY_DEFERRED, "rcpt: 450 -> deferred");
        is_str(j->messages[0].rcpts[1].reply, "450 4.2.0 <r2@peer.test>: mailbox busy", "rcpt: 450 text");
        is_int(j->messages[0].rcpts[2].status, DELIVERY_FAILED, "rcpt: 550 -> failed");
        is_str(j->messages[0].rcpts[2].reply, "550 5.1.1 <r3@peer.test>: no such user", "rcpt: 550 first line");
        peer_stop(pid);

        _cleanup_free_ char *cmds = read_file("cmds", NULL);
        ok(cmds && strstr(cmds, "MAIL FROM:<> [+0]\n"), "no pipelining: null sender, MAIL alone, no SIZE");
        ok(cmds && strstr(cmds, "RCPT TO:<r1@peer.test> [+0]\n") && strstr(cmds, "RCPT TO:<r3@peer.test> [+0]\n"),
           "no pipelining: one command at a time");
        _cleanup_free_ char *data = read_file("data.0", NULL);
        ok(data && strncmp(data, MSG1, strlen(MSG1)) == 0, "rcpt: message sent for the accepted one");
        delivery_job_free(j);
        clean_workdir();
}

static void test_dot_reply(const char *dot, DeliveryStatus want, const char *want_text, const char *name) {
        PeerScript s = { .greeting = "220 peer.test ESMTP\r\n", .ehlo = EHLO_PIPE, .dot = dot, .connections = 1 };
        const char *rc[] = { "r1@peer.test", "r2@peer.test" };
        uint16_t port;
        pid_t pid = peer_start(&s, &port);
        DeliveryJob *j = job_new(&port, 1, 1);

        message_set(j->messages, 9, "s@src.test", MSG1, strlen(MSG1), rc, 2);
        is_int(run_job(j), 0, "%s: loop ends", name);
        is_int(j->messages[0].rcpts[0].status, want, "%s: rcpt 1 status", name);
        is_int(j->messages[0].rcpts[1].status, want, "%s: rcpt 2 status", name);
        is_str(j->messages[0].rcpts[0].reply, want_text, "%s: reply text", name);
        peer_stop(pid);
        delivery_job_free(j);
        clean_workdir();
}

static void test_greeting_421(void) {
        PeerScript s = { .greeting = "421 4.3.2 peer.test busy\r\n", .connections = 1 };
        const char *rc[] = { "r1@peer.test" };
        uint16_t port;
        pid_t pid = peer_start(&s, &port);
        DeliveryJob *j = job_new(&port, 1, 1);

        message_set(j->messages, 10, "s@src.test", MSG1, strlen(MSG1), rc, 1);
        is_int(run_job(j), 0, "421 greeting: loop ends");
        is_int(j->messages[0].rcpts[0].status, DELIVERY_DEFERRED, "421 greeting: deferred");
        is_str(j->messages[0].rcpts[0].reply, "421 4.3.2 peer.test busy", "421 greeting: reason kept");
        peer_stop(pid);
        delivery_job_free(j);
        clean_workdir();
}

static void test_fallback_targets(void) {
        /* refused port, then a 554 greeting, then a working peer */
        PeerScript bad = { .greeting = "554 5.3.2 no service here\r\n", .connections = 1 };
        PeerScript good = { .greeting = "220 peer.test ESMTP\r\n", .ehlo = EHLO_PIPE, .dot = "250 2.0.0 Ok\r\n",
                            .connections = 1 };
        const char *rc[] = { "r1@peer.test" };
        uint16_t ports[3];
        ports[0] = closed_port();
        pid_t pid1 = peer_start(&bad, &ports[1]);
        pid_t pid2 = peer_start(&good, &ports[2]);
        DeliveryJob *j = job_new(ports, 3, 1);

        message_set(j->messages, 11, "s@src.test", MSG1, strlen(MSG1), rc, 1);
        is_int(run_job(j), 0, "fallback: loop ends");
        is_int(j->messages[0].rcpts[0].status, DELIVERY_DELIVERED, "fallback: refused + 554 greeting skipped, delivered");
        peer_stop(pid1);
        peer_stop(pid2);
        delivery_job_free(j);
        clean_workdir();

        /* All targets fail: deferred with the last reason. */
        ports[0] = closed_port();
        ports[1] = closed_port();
        j = job_new(ports, 2, 1);
        message_set(j->messages, 12, "s@src.test", MSG1, strlen(MSG1), rc, 1);
        is_int(run_job(j), 0, "all refused: loop ends");
        is_int(j->messages[0].rcpts[0].status, DELIVERY_DEFERRED, "all refused: deferred");
        ok(j->messages[0].rcpts[0].reply && strstr(j->messages[0].rcpts[0].reply, "Connection refused") &&
           strncmp(j->messages[0].rcpts[0].reply, "451 4.4.1 ", 10) == 0, "all refused: reason \"%s\"",
           j->messages[0].rcpts[0].reply ?: "(null)");
        delivery_job_free(j);

        /* No target at all. */
        j = job_new(ports, 0, 1);
        message_set(j->messages, 13, "s@src.test", MSG1, strlen(MSG1), rc, 1);
        is_int(run_job(j), 0, "no targets: loop ends");
        is_int(j->messages[0].rcpts[0].status, DELIVERY_DEFERRED, "no targets: deferred");
        delivery_job_free(j);
}

static void test_helo_fallback(void) {
        PeerScript s = { .greeting = "220 peer.test SMTP\r\n", .ehlo = "500 5.5.1 command unrecognized\r\n",
                         .dot = "250 Ok\r\n", .connections = 1 };
        const char *rc[] = { "r1@peer.test" };
        uint16_t port;
        pid_t pid = peer_start(&s, &port);
        DeliveryJob *j = job_new(&port, 1, 1);

        message_set(j->messages, 14, "s@src.test", MSG1, strlen(MSG1), rc, 1);
        is_int(run_job(j), 0, "helo: loop ends");
        is_int(j->messages[0].rcpts[0].status, DELIVERY_DELIVERED, "helo: delivered after EHLO 500");
        is_str(j->messages[0].rcpts[0].reply, "250 Ok", "helo: reply without enhanced code");
        peer_stop(pid);
        _cleanup_free_ char *cmds = read_file("cmds", NULL);
        ok(cmds && strstr(cmds, "HELO gw.test") && strstr(cmds, "MAIL FROM:<s@src.test> [+0]"),
           "helo: HELO sent, no SIZE, no pipelining");
        delivery_job_free(j);
        clean_workdir();
}

static void test_timeouts(void) {
        const char *rc[] = { "r1@peer.test" };
        uint16_t port;

        PeerScript silent = { .greeting = NULL, .connections = 1 };
        pid_t pid = peer_start(&silent, &port);
        DeliveryJob *j = job_new(&port, 1, 1);
        j->command_timeout = 300 * USEC_PER_MSEC;
        message_set(j->messages, 15, "s@src.test", MSG1, strlen(MSG1), rc, 1);
        uint64_t t0 = (uint64_t) time(NULL);
        is_int(run_job(j), 0, "greeting timeout: loop ends");
        ok((uint64_t) time(NULL) - t0 < 5, "greeting timeout: bounded by command_timeout");
        is_int(j->messages[0].rcpts[0].status, DELIVERY_DEFERRED, "greeting timeout: deferred");
        ok(j->messages[0].rcpts[0].reply && strstr(j->messages[0].rcpts[0].reply, "timeout"),
           "greeting timeout: reason \"%s\"", j->messages[0].rcpts[0].reply ?: "(null)");
        peer_stop(pid);
        delivery_job_free(j);
        clean_workdir();

        PeerScript nodot = { .greeting = "220 peer.test\r\n", .ehlo = EHLO_PIPE, .dot = NULL, .connections = 1 };
        pid = peer_start(&nodot, &port);
        j = job_new(&port, 1, 1);
        j->data_timeout = 300 * USEC_PER_MSEC;
        message_set(j->messages, 16, "s@src.test", MSG1, strlen(MSG1), rc, 1);
        is_int(run_job(j), 0, "dot timeout: loop ends");
        is_int(j->messages[0].rcpts[0].status, DELIVERY_DEFERRED, "dot timeout: deferred");
        peer_stop(pid);
        delivery_job_free(j);
        clean_workdir();

        PeerScript hangup = { .greeting = "220 peer.test\r\n", .ehlo = EHLO_PLAIN, .mail = "CLOSE", .connections = 1 };
        pid = peer_start(&hangup, &port);
        j = job_new(&port, 1, 1);
        message_set(j->messages, 17, "s@src.test", MSG1, strlen(MSG1), rc, 1);
        is_int(run_job(j), 0, "hangup: loop ends");
        is_int(j->messages[0].rcpts[0].status, DELIVERY_DEFERRED, "hangup after MAIL: deferred");
        ok(j->messages[0].rcpts[0].reply && strncmp(j->messages[0].rcpts[0].reply, "451 4.4.2 ", 10) == 0,
           "hangup: reason \"%s\"", j->messages[0].rcpts[0].reply ?: "(null)");
        peer_stop(pid);
        delivery_job_free(j);
        clean_workdir();
}

static void test_reuse_size_rset(void) {
        /* msg 1: every RCPT refused (DATA 554 -> RSET); msg 2: over SIZE,
         * refused locally; msg 3: big body, no final CRLF; one connection. */
        PeerScript s = { .greeting = "220 peer.test ESMTP\r\n",
                         .ehlo = "250-peer.test\r\n250-PIPELINING\r\n250 SIZE 5000000\r\n",
                         .rcpt = { "550 5.1.1 no\r\n" },
                         .data = NULL, .dot = "250 2.0.0 Ok\r\n", .connections = 1 };
        const char *rc[] = { "r1@peer.test" };
        uint16_t port;
        size_t big_len = 3 * 1024 * 1024 + 17, len;
        char *big = malloc(big_len), *huge = malloc(5000001);

        for (size_t i = 0; i < big_len; i++)
                big[i] = (i % 100 == 98) ? '\r' : (i % 100 == 99) ? '\n' : (char) ('a' + i % 26);
        big[big_len - 1] = 'z';         /* no CRLF at the end */
        memset(huge, 'x', 5000001);

        pid_t pid = peer_start(&s, &port);
        DeliveryJob *j = job_new(&port, 1, 3);
        message_set(j->messages + 0, 20, "s@src.test", MSG1, strlen(MSG1), rc, 1);
        message_set(j->messages + 1, 21, "s@src.test", huge, 5000001, rc, 1);
        message_set(j->messages + 2, 22, "s@src.test", big, big_len, rc, 1);
        is_int(run_job(j), 0, "reuse: loop ends");
        is_int(j->messages[0].rcpts[0].status, DELIVERY_FAILED, "reuse: msg 1 rcpt refused");
        is_int(j->messages[1].rcpts[0].status, DELIVERY_FAILED, "reuse: msg 2 over SIZE refused locally");
        ok(j->messages[1].rcpts[0].reply && strncmp(j->messages[1].rcpts[0].reply, "552 5.3.4 ", 10) == 0,
           "reuse: SIZE reason \"%s\"", j->messages[1].rcpts[0].reply ?: "(null)");
        is_int(j->messages[2].rcpts[0].status, DELIVERY_DELIVERED, "reuse: msg 3 delivered on the same connection");
        peer_stop(pid);

        _cleanup_free_ char *cmds = read_file("cmds", NULL);
        ok(cmds && strstr(cmds, "RSET"), "reuse: RSET after the refused transaction");
        ok(cmds && !strstr(cmds, "SIZE=5000001"), "reuse: oversized message never offered");
        _cleanup_free_ char *data = read_file("data.0", &len);
        ok(data && len == big_len + 5 && memcmp(data, big, big_len) == 0 && memcmp(data + big_len, "\r\n.\r\n", 5) == 0,
           "reuse: 3 MB body intact, CRLF added before \".\"");
        _cleanup_free_ char *none = read_file("data.1", NULL);
        ok(!none, "reuse: the refused transaction carried no data");
        free(big);
        free(huge);
        delivery_job_free(j);
        clean_workdir();
}

static void test_pipelined_no_rcpt(void) {
        /* A server that answers a pipelined DATA with 354 although every
         * RCPT was refused: the client ends it with a bare "." at once. */
        PeerScript s = { .greeting = "220 peer.test ESMTP\r\n", .ehlo = EHLO_PIPE,
                         .rcpt = { "550 5.1.1 no\r\n" }, .data = "354 go ahead\r\n",
                         .dot = "554 5.5.1 no valid recipients\r\n", .connections = 1 };
        const char *rc[] = { "r1@peer.test" };
        uint16_t port;
        size_t len;
        pid_t pid = peer_start(&s, &port);
        DeliveryJob *j = job_new(&port, 1, 1);

        message_set(j->messages, 23, "s@src.test", MSG1, strlen(MSG1), rc, 1);
        is_int(run_job(j), 0, "354 without rcpt: loop ends");
        is_int(j->messages[0].rcpts[0].status, DELIVERY_FAILED, "354 without rcpt: RCPT reply decides");
        is_str(j->messages[0].rcpts[0].reply, "550 5.1.1 no", "354 without rcpt: RCPT text kept");
        peer_stop(pid);
        _cleanup_free_ char *data = read_file("data.0", &len);
        ok(data && len == 3 && memcmp(data, ".\r\n", 3) == 0, "354 without rcpt: empty data, no body sent");
        _cleanup_free_ char *cmds = read_file("cmds", NULL);
        ok(cmds && strstr(cmds, "QUIT"), "354 without rcpt: session ends with QUIT");
        delivery_job_free(j);
        clean_workdir();
}

/* ---- STARTTLS ---- */

static SSL_CTX *client_ctx;     /* trusts pkidir/ca.pem only */

static bool pki_setup(void) {
        const char *root = getenv("TLSGW_SOURCE_ROOT");
        char cmd[1200], ca[600];
        _cleanup_free_ char *error = NULL;

        if (!root || !mkdtemp(strcpy(pkidir, "/tmp/test-smtp-client-pki.XXXXXX"))) {
                pkidir[0] = '\0';
                return false;
        }
        snprintf(cmd, sizeof(cmd), "'%s/tests/data/make-test-pki' '%s' >/dev/null 2>&1", root, pkidir);
        if (system(cmd) != 0)
                return false;
        snprintf(ca, sizeof(ca), "%s/ca.pem", pkidir);
        return tls_client_ctx_new(&(TlsSettings) {}, ca, NULL, &client_ctx, &error) >= 0;
}

static void pki_cleanup(void) {
        char cmd[600];

        SSL_CTX_free(client_ctx);
        if (pkidir[0]) {
                snprintf(cmd, sizeof(cmd), "rm -rf '%s'", pkidir);
                (void) system(cmd);
        }
}

static DeliveryJob *tls_job_new(const uint16_t *ports, size_t n_ports, TlsOutbound mode) {
        DeliveryJob *j = job_new(ports, n_ports, 1);

        /* The certificates name mx.test, not the domain: the name check
         * must look at the host connected to. */
        for (size_t i = 0; i < n_ports; i++) {
                free(j->targets[i].host);
                j->targets[i].host = strdup("mx.test");
        }
        j->tls_mode = mode;
        if (mode != TLS_OUT_NONE && SSL_CTX_up_ref(client_ctx) == 1)
                j->tls_ctx = client_ctx;
        return j;
}

typedef struct TlsExpect {
        bool delivered;
        bool tls;                       /* the transaction ran inside TLS */
        const char *failure;            /* job->tls_failure */
} TlsExpect;

#define DELIVERED_CLEAR { true, false, NULL }
#define DELIVERED_TLS   { true, true, NULL }
#define DEFERRED(why)   { false, false, why }

static const char *STARTTLS_GO = "220 2.0.0 Ready to start TLS\r\n";
static const char *STARTTLS_454 = "454 4.7.0 TLS not available due to temporary reason\r\n";

/* Modes in TlsOutbound order: none, preferred, required, preferred-verify,
 * required-verify. */
static const struct {
        const char *name;
        PeerScript peer;
        TlsExpect want[_TLS_OUT_MAX];
} tls_rows[] = {
        { "trusted certificate",
          { .ehlo = EHLO_STARTTLS_TEXT, .starttls = NULL, .cert = "server-ec.pem", .key = "server-ec.key",
            .cert_chain = "intermediate.pem" },
          { DELIVERED_CLEAR, DELIVERED_TLS, DELIVERED_TLS, DELIVERED_TLS, DELIVERED_TLS } },
        { "untrusted certificate",
          { .ehlo = EHLO_STARTTLS_TEXT, .cert = "untrusted.pem", .key = "untrusted.key" },
          { DELIVERED_CLEAR, DELIVERED_TLS, DELIVERED_TLS, DELIVERED_TLS, DEFERRED(DELIVERY_TLS_UNTRUSTED) } },
        { "wrong name",
          { .ehlo = EHLO_STARTTLS_TEXT, .cert = "wrongname.pem", .key = "wrongname.key", .cert_chain = "intermediate.pem" },
          { DELIVERED_CLEAR, DELIVERED_TLS, DELIVERED_TLS, DELIVERED_TLS, DEFERRED(DELIVERY_TLS_NAME_MISMATCH) } },
        { "no STARTTLS",
          { .ehlo = EHLO_PIPE_TEXT },
          { DELIVERED_CLEAR, DELIVERED_CLEAR, DEFERRED(DELIVERY_TLS_NOT_OFFERED), DELIVERED_CLEAR,
            DEFERRED(DELIVERY_TLS_NOT_OFFERED) } },
        { "STARTTLS 454",
          { .ehlo = EHLO_STARTTLS_TEXT, .cert = "server-ec.pem", .key = "server-ec.key" },
          { DELIVERED_CLEAR, DELIVERED_CLEAR, DEFERRED(DELIVERY_TLS_REFUSED), DELIVERED_CLEAR,
            DEFERRED(DELIVERY_TLS_REFUSED) } },
        { "peer closes after 220",
          { .ehlo = EHLO_STARTTLS_TEXT, .tls = PEER_TLS_CLOSE },
          { DELIVERED_CLEAR, DEFERRED(DELIVERY_TLS_HANDSHAKE), DEFERRED(DELIVERY_TLS_HANDSHAKE),
            DEFERRED(DELIVERY_TLS_HANDSHAKE), DEFERRED(DELIVERY_TLS_HANDSHAKE) } },
        { "garbage after 220",
          { .ehlo = EHLO_STARTTLS_TEXT, .tls = PEER_TLS_GARBAGE },
          { DELIVERED_CLEAR, DEFERRED(DELIVERY_TLS_HANDSHAKE), DEFERRED(DELIVERY_TLS_HANDSHAKE),
            DEFERRED(DELIVERY_TLS_HANDSHAKE), DEFERRED(DELIVERY_TLS_HANDSHAKE) } },
        { "no ESMTP",
          { .ehlo = "500 5.5.1 command unrecognized\r\n" },
          { DELIVERED_CLEAR, DELIVERED_CLEAR, DEFERRED(DELIVERY_TLS_NO_ESMTP), DELIVERED_CLEAR,
            DEFERRED(DELIVERY_TLS_NO_ESMTP) } },
};

static void test_tls_row(size_t row, TlsOutbound mode) {
        PeerScript s = tls_rows[row].peer;
        const TlsExpect *want = tls_rows[row].want + mode;
        const char *rc[] = { "r1@peer.test" };
        char name[128];
        uint16_t port;
        size_t len;

        snprintf(name, sizeof(name), "%s / %s", tls_rows[row].name, tls_outbound_to_string(mode));
        s.greeting = "220 peer.test ESMTP\r\n";
        s.dot = "250 2.0.0 Ok: queued\r\n";
        s.connections = 1;
        if (strstr(tls_rows[row].name, "454"))
                s.starttls = STARTTLS_454;
        else if (strstr(s.ehlo, "STARTTLS"))
                s.starttls = STARTTLS_GO;

        pid_t pid = peer_start(&s, &port);
        DeliveryJob *j = tls_job_new(&port, 1, mode);
        message_set(j->messages, 100 + row * 10 + (size_t) mode, "s@src.test", MSG1, strlen(MSG1), rc, 1);
        is_int(run_job(j), 0, "%s: loop ends", name);
        peer_wait(pid);

        DeliveryRcpt *r = j->messages[0].rcpts;
        _cleanup_free_ char *cmds = read_file("cmds", NULL);
        _cleanup_free_ char *data = read_file("data.0", &len);

        if (want->delivered) {
                is_int(r->status, DELIVERY_DELIVERED, "%s: delivered", name);
                ok(!j->tls_failure && !j->tls_failure_details, "%s: policy met (%s)", name, j->tls_failure ?: "");
                is_int(j->tls_used, want->tls, "%s: %s", name, want->tls ? "over TLS" : "in clear text");
                _cleanup_free_ char *expect = NULL;
                if (asprintf(&expect, "%s.\r\n", MSG1) < 0)
                        abort();
                ok(data && len == strlen(expect) && memcmp(data, expect, len) == 0,
                   "%s: peer got the bytes exactly", name);
                /* What the peer saw: the transaction inside TLS, EHLO sent
                 * again after the handshake (RFC 3207 4.2), SNI mx.test. */
                if (want->tls)
                        ok(cmds && strstr(cmds, "[sni] mx.test\n") && strstr(cmds, "[tls] EHLO gw.test") &&
                           strstr(cmds, "[tls] MAIL FROM:<s@src.test>") && strstr(cmds, "[tls] QUIT") &&
                           !strstr(cmds, "pipelined after STARTTLS"),
                           "%s: SNI, EHLO again, MAIL and QUIT inside TLS", name);
                else
                        ok(cmds && strstr(cmds, "MAIL FROM:<s@src.test>") && !strstr(cmds, "[tls]") &&
                           (mode != TLS_OUT_NONE || !strstr(cmds, "STARTTLS")),
                           "%s: clear-text transaction%s", name, mode == TLS_OUT_NONE ? ", no STARTTLS" : "");
        } else {
                is_int(r->status, DELIVERY_DEFERRED, "%s: deferred", name);
                ok(j->tls_failure && streq(j->tls_failure, want->failure), "%s: tls_failure \"%s\"", name,
                   j->tls_failure ?: "(null)");
                ok(r->reply && strncmp(r->reply, "451 4.7.5 ", 10) == 0 && strstr(r->reply, want->failure) &&
                   strstr(r->reply, "mx.test[127.0.0.1]"), "%s: reason \"%s\"", name, r->reply ?: "(null)");
                /* Never a transaction, in clear text or otherwise. */
                ok(!data && (!cmds || !strstr(cmds, "MAIL FROM")), "%s: no MAIL, no data", name);
                if (streq(want->failure, DELIVERY_TLS_REFUSED))
                        is_str(j->tls_failure_details, "454 4.7.0 TLS not available due to temporary reason",
                               "%s: details are the reply", name);
                else if (streq(want->failure, DELIVERY_TLS_HANDSHAKE) || streq(want->failure, DELIVERY_TLS_UNTRUSTED))
                        ok(!isempty(j->tls_failure_details), "%s: details \"%s\"", name,
                           j->tls_failure_details ?: "(null)");
                else if (streq(want->failure, DELIVERY_TLS_NAME_MISMATCH))
                        /* The session was up: QUIT went inside it. */
                        ok(j->tls_used && cmds && strstr(cmds, "[tls] QUIT"), "%s: QUIT inside TLS", name);
        }
        delivery_job_free(j);
        clean_workdir();
}

static void test_tls_matrix(void) {
        for (size_t row = 0; row < ELEMENTSOF(tls_rows); row++)
                for (TlsOutbound mode = 0; mode < _TLS_OUT_MAX; mode++)
                        test_tls_row(row, mode);
}

/* Clear text pipelined behind the 220 ends the target in every mode: it
 * would be taken for the first reply inside TLS (CVE-2011-0411). */
static void test_tls_injection(void) {
        const TlsOutbound modes[] = { TLS_OUT_PREFERRED, TLS_OUT_REQUIRED };

        for (size_t i = 0; i < ELEMENTSOF(modes); i++) {
                PeerScript s = { .greeting = "220 peer.test ESMTP\r\n", .ehlo = EHLO_STARTTLS, .starttls = STARTTLS_GO,
                                 .tls = PEER_TLS_INJECT, .dot = "250 2.0.0 Ok\r\n", .connections = 1 };
                const char *rc[] = { "r1@peer.test" };
                const char *mode = tls_outbound_to_string(modes[i]);
                uint16_t port;
                pid_t pid = peer_start(&s, &port);
                DeliveryJob *j = tls_job_new(&port, 1, modes[i]);

                message_set(j->messages, 200 + i, "s@src.test", MSG1, strlen(MSG1), rc, 1);
                is_int(run_job(j), 0, "injection / %s: loop ends", mode);
                peer_wait(pid);
                is_int(j->messages[0].rcpts[0].status, DELIVERY_DEFERRED, "injection / %s: deferred", mode);
                ok(j->tls_failure && streq(j->tls_failure, DELIVERY_TLS_HANDSHAKE) && j->tls_failure_details &&
                   strstr(j->tls_failure_details, "clear text"), "injection / %s: \"%s\"", mode,
                   j->tls_failure_details ?: "(null)");
                _cleanup_free_ char *cmds = read_file("cmds", NULL);
                ok(cmds && !strstr(cmds, "MAIL"), "injection / %s: nothing sent after STARTTLS", mode);
                delivery_job_free(j);
                clean_workdir();
        }
}

/* A 3 MB body through userspace TLS (64 KiB chunks, partial writes) with
 * several messages on the session, and the first target failing
 * required-verify before a good second one. */
static void test_tls_body_and_targets(void) {
        PeerScript bad = { .greeting = "220 peer.test ESMTP\r\n", .ehlo = EHLO_STARTTLS, .starttls = STARTTLS_GO,
                           .cert = "untrusted.pem", .key = "untrusted.key", .connections = 1 };
        PeerScript good = { .greeting = "220 peer.test ESMTP\r\n", .ehlo = EHLO_STARTTLS, .starttls = STARTTLS_GO,
                            .cert = "server-ec.pem", .key = "server-ec.key", .cert_chain = "intermediate.pem",
                            .dot = "250 2.0.0 Ok\r\n", .connections = 1 };
        const char *rc[] = { "r1@peer.test", "r2@peer.test" };
        size_t big_len = 3 * 1024 * 1024 + 5, len;
        char *big = malloc(big_len);
        uint16_t ports[2];

        for (size_t i = 0; i < big_len; i++)
                big[i] = (i % 80 == 78) ? '\r' : (i % 80 == 79) ? '\n' : (char) ('A' + i % 23);
        pid_t pid1 = peer_start(&bad, &ports[0]);
        pid_t pid2 = peer_start(&good, &ports[1]);
        DeliveryJob *j = tls_job_new(ports, 2, TLS_OUT_REQUIRED_VERIFY);
        j->messages = realloc(j->messages, 2 * sizeof(DeliveryMessage));
        j->n_messages = 2;
        message_set(j->messages + 0, 300, "s@src.test", big, big_len, rc, 2);
        message_set(j->messages + 1, 301, "s@src.test", MSG1, strlen(MSG1), rc, 1);
        is_int(run_job(j), 0, "TLS body: loop ends");
        peer_wait(pid1);
        peer_wait(pid2);
        is_int(j->messages[0].rcpts[0].status, DELIVERY_DELIVERED, "TLS body: message 1 delivered");
        is_int(j->messages[0].rcpts[1].status, DELIVERY_DELIVERED, "TLS body: message 1 rcpt 2 delivered");
        is_int(j->messages[1].rcpts[0].status, DELIVERY_DELIVERED, "TLS body: message 2 delivered");
        ok(!j->tls_failure, "TLS body: the second target met the policy");
        ok(j->tls_used && !j->ktls_tx && !j->sendfile_used,
           "TLS body: userspace TLS here (no kTLS on this kernel), no sendfile");
        _cleanup_free_ char *d0 = read_file("data.0", &len);
        ok(d0 && len == big_len + 5 && memcmp(d0, big, big_len) == 0 && memcmp(d0 + big_len, "\r\n.\r\n", 5) == 0,
           "TLS body: 3 MB arrived byte-exact through TLS");
        _cleanup_free_ char *d1 = read_file("data.1", &len);
        ok(d1 && len == strlen(MSG1) + 3 && memcmp(d1, MSG1, strlen(MSG1)) == 0,
           "TLS body: second message on the same TLS session");
        free(big);
        delivery_job_free(j);
        clean_workdir();
}

/* An address as the target host: SNI and the name check use the domain. */
static void test_tls_ip_host(void) {
        PeerScript s = { .greeting = "220 peer.test ESMTP\r\n", .ehlo = EHLO_STARTTLS, .starttls = STARTTLS_GO,
                         .cert = "server-ec.pem", .key = "server-ec.key", .cert_chain = "intermediate.pem",
                         .dot = "250 2.0.0 Ok\r\n", .connections = 1 };
        const char *rc[] = { "r1@peer.test" };
        uint16_t port;
        pid_t pid = peer_start(&s, &port);
        DeliveryJob *j = tls_job_new(&port, 1, TLS_OUT_REQUIRED_VERIFY);

        free(j->targets[0].host);
        j->targets[0].host = strdup("127.0.0.1");
        free(j->domain);
        j->domain = strdup("mail.example.test");
        message_set(j->messages, 310, "s@src.test", MSG1, strlen(MSG1), rc, 1);
        is_int(run_job(j), 0, "IP host: loop ends");
        peer_wait(pid);
        is_int(j->messages[0].rcpts[0].status, DELIVERY_DELIVERED, "IP host: verified by the domain name");
        _cleanup_free_ char *cmds = read_file("cmds", NULL);
        ok(cmds && strstr(cmds, "[sni] mail.example.test\n"), "IP host: SNI is the domain");
        delivery_job_free(j);
        clean_workdir();
}

/* kTLS asked for: where the kernel takes the records, the body goes out
 * with SSL_sendfile(); elsewhere OpenSSL stays in userspace silently and
 * the body is written in chunks. The bytes must arrive exactly either way. */
static void test_tls_ktls(void) {
        PeerScript s = { .greeting = "220 peer.test ESMTP\r\n", .ehlo = EHLO_STARTTLS, .starttls = STARTTLS_GO,
                         .cert = "server-ec.pem", .key = "server-ec.key", .cert_chain = "intermediate.pem",
                         .dot = "250 2.0.0 Ok\r\n", .connections = 1 };
        const char *rc[] = { "r1@peer.test" };
        _cleanup_free_ char *error = NULL;
        SSL_CTX *ctx = NULL;
        size_t body_len = 300 * 1024 + 3, len;
        char *body = malloc(body_len), ca[600];
        uint16_t port;

        for (size_t i = 0; i < body_len; i++)
                body[i] = (i % 64 == 62) ? '\r' : (i % 64 == 63) ? '\n' : (char) ('a' + i % 19);
        snprintf(ca, sizeof(ca), "%s/ca.pem", pkidir);
        if (tls_client_ctx_new(&(TlsSettings) { .ktls = true }, ca, NULL, &ctx, &error) < 0)
                abort();
        pid_t pid = peer_start(&s, &port);
        DeliveryJob *j = tls_job_new(&port, 1, TLS_OUT_REQUIRED);
        SSL_CTX_free(j->tls_ctx);
        j->tls_ctx = ctx;
        message_set(j->messages, 320, "s@src.test", body, body_len, rc, 1);
        is_int(run_job(j), 0, "kTLS: loop ends");
        peer_wait(pid);
        is_int(j->messages[0].rcpts[0].status, DELIVERY_DELIVERED, "kTLS: delivered");
        _cleanup_free_ char *data = read_file("data.0", &len);
        ok(data && len == body_len + 5 && memcmp(data, body, body_len) == 0, "kTLS: body byte-exact");
        if (j->ktls_tx)
                ok(j->sendfile_used, "kTLS: body sent with SSL_sendfile");
        else {
                ok(!j->sendfile_used, "kTLS: userspace TLS, no sendfile");
                tap_skip("kTLS: SSL_sendfile path", "the kernel offers no kTLS (tls ULP) here");
        }
        free(body);
        delivery_job_free(j);
        clean_workdir();
}

static void test_tls(void) {
        if (!pki_setup()) {
                tap_skip("STARTTLS", "cannot make the test PKI (TLSGW_SOURCE_ROOT unset or openssl missing)");
                return;
        }
        test_tls_matrix();
        test_tls_injection();
        test_tls_body_and_targets();
        test_tls_ip_host();
        test_tls_ktls();
}

/* ---- smtp-sink ---- */

static const char *SMTP_SINK = "/usr/sbin/smtp-sink";

static pid_t sink_start(const char *dir, const char *extra, uint16_t *ret_port) {
        char listen_arg[64], tmpl[512];
        *ret_port = closed_port();
        snprintf(listen_arg, sizeof(listen_arg), "127.0.0.1:%u", *ret_port);
        snprintf(tmpl, sizeof(tmpl), "%s/%%M.", dir);

        pid_t pid = fork();
        if (pid == 0) {
                int null = open("/dev/null", O_RDWR);
                dup2(null, 1);
                dup2(null, 2);
                if (extra)
                        execl(SMTP_SINK, "smtp-sink", "-u", "nobody", "-d", tmpl, extra, "RCPT", listen_arg, "10",
                              (char *) NULL);
                else
                        execl(SMTP_SINK, "smtp-sink", "-u", "nobody", "-d", tmpl, listen_arg, "10", (char *) NULL);
                _exit(127);
        }
        /* Wait until it listens. */
        for (int i = 0; i < 100; i++) {
                struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(*ret_port),
                                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
                int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
                int r = connect(fd, (struct sockaddr *) &sa, sizeof(sa));
                close(fd);
                if (r == 0)
                        break;
                usleep(20000);
        }
        return pid;
}

static char *sink_dump(const char *dir) {
        DIR *d = opendir(dir);
        struct dirent *de;
        char *content = NULL;

        if (!d)
                return NULL;
        while ((de = readdir(d)))
                if (de->d_name[0] != '.' && !content) {
                        char name[512];
                        snprintf(name, sizeof(name), "sink/%s", de->d_name);
                        content = read_file(name, NULL);
                }
        closedir(d);
        return content;
}

static void test_smtp_sink(void) {
        char dir[512];
        const char *rc[] = { "r1@peer.test", "r2@peer.test" };
        uint16_t port;

        if (access(SMTP_SINK, X_OK) < 0 || geteuid() != 0) {
                tap_skip("smtp-sink delivery", "needs /usr/sbin/smtp-sink and root (-u nobody)");
                return;
        }
        snprintf(dir, sizeof(dir), "%s/sink", workdir);
        /* smtp-sink writes as nobody. */
        (void) chmod(workdir, 0711);
        (void) mkdir(dir, 0777);
        (void) chmod(dir, 0777);

        pid_t pid = sink_start(dir, NULL, &port);
        DeliveryJob *j = job_new(&port, 1, 1);
        message_set(j->messages, 30, "s@src.test", MSG1, strlen(MSG1), rc, 2);
        is_int(run_job(j), 0, "smtp-sink: loop ends");
        is_int(j->messages[0].rcpts[0].status, DELIVERY_DELIVERED, "smtp-sink: rcpt 1 delivered");
        is_int(j->messages[0].rcpts[1].status, DELIVERY_DELIVERED, "smtp-sink: rcpt 2 delivered");
        is_str(j->messages[0].rcpts[0].reply, "250 2.0.0 Ok", "smtp-sink: reply");
        usleep(100000);
        _cleanup_free_ char *dump = sink_dump(dir);
        /* smtp-sink offers no SIZE, so none is sent. */
        ok(dump && strstr(dump, "X-Mail-Args: <s@src.test>\n"), "smtp-sink: MAIL args without SIZE");
        ok(dump && strstr(dump, "X-Rcpt-Args: <r1@peer.test>") && strstr(dump, "X-Rcpt-Args: <r2@peer.test>"),
           "smtp-sink: both recipients");
        /* smtp-sink removes the stuffing and stores LF line ends. */
        ok(dump && strstr(dump, "\nSubject: hello\n\n.a line that started with a dot\nbody line\n"),
           "smtp-sink: body arrived, stuffing undone by the peer");
        peer_stop(pid);
        delivery_job_free(j);
        clean_workdir();
        clean_dir(dir);

        pid = sink_start(dir, "-r", &port);
        j = job_new(&port, 1, 1);
        message_set(j->messages, 31, "s@src.test", MSG1, strlen(MSG1), rc, 2);
        is_int(run_job(j), 0, "smtp-sink -r RCPT: loop ends");
        is_int(j->messages[0].rcpts[0].status, DELIVERY_DEFERRED, "smtp-sink -r RCPT: deferred");
        is_int(j->messages[0].rcpts[1].status, DELIVERY_DEFERRED, "smtp-sink -r RCPT: deferred (2)");
        is_str(j->messages[0].rcpts[0].reply, "450 4.3.0 Error: command failed", "smtp-sink -r RCPT: reply");
        peer_stop(pid);
        delivery_job_free(j);
        clean_workdir();

        pid = sink_start(dir, "-f", &port);
        j = job_new(&port, 1, 1);
        message_set(j->messages, 32, "s@src.test", MSG1, strlen(MSG1), rc, 2);
        is_int(run_job(j), 0, "smtp-sink -f RCPT: loop ends");
        is_int(j->messages[0].rcpts[0].status, DELIVERY_FAILED, "smtp-sink -f RCPT: failed");
        is_str(j->messages[0].rcpts[1].reply, "500 5.3.0 Error: command failed", "smtp-sink -f RCPT: reply");
        peer_stop(pid);
        delivery_job_free(j);
        clean_workdir();
        clean_dir(dir);
        (void) rmdir(dir);
}

/* ---- connection cache ---- */

static bool cache_job_done;

static void on_cache_done(DeliveryJob *job, void *userdata) {
        cache_job_done = true;
}

/* Runs the job on a loop that lives on (the cache's timers are on it). */
static int run_job_on(sd_event *e, DeliveryJob *j) {
        uint64_t deadline = 0;
        int r;

        cache_job_done = false;
        r = smtp_client_start(e, j, on_cache_done, NULL);
        if (r < 0)
                return r;
        (void) sd_event_now(e, CLOCK_MONOTONIC, &deadline);
        deadline += TEST_TIMEOUT_USEC;
        while (!cache_job_done) {
                uint64_t now = 0;

                r = sd_event_run(e, 100 * USEC_PER_MSEC);
                if (r < 0)
                        return r;
                (void) sd_event_now(e, CLOCK_MONOTONIC, &now);
                if (now > deadline)
                        return -ETIME;
        }
        return 0;
}

/* Runs the loop for a while with no job: the cache's expiry timers fire. */
static void run_loop_for(sd_event *e, uint64_t usec) {
        struct timespec ts;
        uint64_t end, now;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        end = (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / 1000 + usec;
        do {
                (void) sd_event_run(e, 20 * USEC_PER_MSEC);
                clock_gettime(CLOCK_MONOTONIC, &ts);
                now = (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / 1000;
        } while (now < end);
}

static size_t peer_accepts(void) {
        _cleanup_free_ char *a = read_file("accepts", NULL);
        return a ? count_lines(a, strlen(a)) : 0;
}

static size_t count_str(const char *hay, const char *needle) {
        size_t n = 0;

        for (const char *p = hay; p && (p = strstr(p, needle)); p += strlen(needle))
                n++;
        return n;
}

/* The peer's sessions end on their own time: wait until `text` shows up
 * `n` times in the peer's command log. */
static bool peer_wait_cmds(const char *text, size_t n) {
        for (int i = 0; i < 300; i++) {
                _cleanup_free_ char *cmds = read_file("cmds", NULL);

                if (count_str(cmds, text) >= n)
                        return true;
                usleep(10000);
        }
        return false;
}

static bool job_delivered(const DeliveryJob *j) {
        for (size_t m = 0; m < j->n_messages; m++)
                for (size_t k = 0; k < j->messages[m].n_rcpts; k++)
                        if (j->messages[m].rcpts[k].status != DELIVERY_DELIVERED)
                                return false;
        return true;
}

static PeerScript cache_peer(void) {
        return (PeerScript) { .greeting = "220 peer.test ESMTP\r\n", .ehlo = EHLO_PIPE,
                              .dot = "250 2.0.0 Ok: queued\r\n", .connections = 8, .fork_sessions = true };
}

static DeliveryJob *cache_job(uint16_t port, uint64_t mid) {
        const char *rc[] = { "r1@peer.test" };
        DeliveryJob *j = job_new(&port, 1, 1);

        message_set(j->messages, mid, "s@src.test", MSG1, strlen(MSG1), rc, 1);
        return j;
}

static void test_cache_reuse(void) {
        PeerScript s = cache_peer();
        uint16_t port;
        pid_t pid = peer_start(&s, &port);
        sd_event *e = NULL;

        if (sd_event_new(&e) < 0)
                abort();
        DeliveryJob *j1 = cache_job(port, 100), *j2 = cache_job(port, 101);
        is_int(run_job_on(e, j1), 0, "cache: first job runs");
        ok(job_delivered(j1), "cache: first job delivered");
        is_int(run_job_on(e, j2), 0, "cache: second job runs");
        ok(job_delivered(j2), "cache: second job delivered");
        is_int((int) peer_accepts(), 1, "cache: one TCP connection for both jobs");
        _cleanup_free_ char *cmds = read_file("cmds", NULL);
        is_int((int) count_str(cmds, "EHLO"), 1, "cache: one EHLO");
        is_int((int) count_str(cmds, "MAIL FROM"), 2, "cache: two transactions");
        ok(cmds && strstr(cmds, "RSET") && strstr(cmds, "RSET") < strstr(strstr(cmds, "MAIL FROM") + 1, "MAIL FROM"),
           "cache: RSET before the second MAIL");
        ok(cmds && !strstr(cmds, "QUIT"), "cache: no QUIT while idle");
        /* Freeing the loop closes what it cached, with QUIT. */
        sd_event_unref(e);
        ok(peer_wait_cmds("QUIT", 1), "cache: QUIT when the loop goes away");
        peer_stop(pid);
        delivery_job_free(j1);
        delivery_job_free(j2);
        clean_workdir();
}

static void test_cache_tls(void) {
        PeerScript s = cache_peer();
        const char *rc[] = { "r1@peer.test" };
        uint16_t port;
        DeliveryJob *j[2];

        if (!client_ctx) {
                tap_skip("cache: STARTTLS", "no test PKI");
                return;
        }
        s.ehlo = EHLO_STARTTLS_TEXT;
        s.starttls = STARTTLS_GO;
        s.cert = "server-ec.pem";
        s.key = "server-ec.key";
        s.cert_chain = "intermediate.pem";
        pid_t pid = peer_start(&s, &port);
        sd_event *e = NULL;

        if (sd_event_new(&e) < 0)
                abort();
        for (size_t i = 0; i < 2; i++) {
                j[i] = tls_job_new(&port, 1, TLS_OUT_REQUIRED_VERIFY);
                message_set(j[i]->messages, 110 + i, "s@src.test", MSG1, strlen(MSG1), rc, 1);
                is_int(run_job_on(e, j[i]), 0, "cache TLS: job %zu runs", i);
                ok(job_delivered(j[i]), "cache TLS: job %zu delivered", i);
                ok(j[i]->tls_used && !j[i]->tls_failure, "cache TLS: job %zu reports TLS", i);
        }
        is_int((int) peer_accepts(), 1, "cache TLS: one TCP connection");
        _cleanup_free_ char *cmds = read_file("cmds", NULL);
        is_int((int) count_str(cmds, "STARTTLS"), 1, "cache TLS: one STARTTLS, one handshake");
        ok(cmds && strstr(cmds, "[tls] RSET"), "cache TLS: RSET inside TLS");
        is_int((int) count_str(cmds, "[tls] MAIL FROM"), 2, "cache TLS: both transactions inside TLS");
        sd_event_unref(e);
        ok(peer_wait_cmds("[tls] QUIT", 1), "cache TLS: QUIT inside TLS when the loop goes away");
        peer_stop(pid);
        for (size_t i = 0; i < 2; i++)
                delivery_job_free(j[i]);
        clean_workdir();
}

static void test_cache_peer_closed(void) {
        PeerScript s = cache_peer();
        uint16_t port;

        s.close_after_dot = true;
        pid_t pid = peer_start(&s, &port);
        sd_event *e = NULL;

        if (sd_event_new(&e) < 0)
                abort();
        DeliveryJob *j1 = cache_job(port, 120), *j2 = cache_job(port, 121);
        is_int(run_job_on(e, j1), 0, "cache closed: first job runs");
        ok(job_delivered(j1), "cache closed: first job delivered");
        usleep(50000);          /* the peer's FIN arrives */
        is_int(run_job_on(e, j2), 0, "cache closed: second job runs");
        ok(job_delivered(j2), "cache closed: second job delivered on a new connection");
        is_int((int) peer_accepts(), 2, "cache closed: two connections");
        sd_event_unref(e);
        peer_stop(pid);
        delivery_job_free(j1);
        delivery_job_free(j2);
        clean_workdir();
}

static void test_cache_no_match(void) {
        PeerScript s = cache_peer();
        uint16_t port;
        pid_t pid = peer_start(&s, &port);
        sd_event *e = NULL;
        SSL_CTX *other = SSL_CTX_new(TLS_client_method());

        if (sd_event_new(&e) < 0 || !other)
                abort();
        DeliveryJob *j1 = cache_job(port, 130), *j2 = cache_job(port, 131), *j3 = cache_job(port, 132);
        free(j2->domain);
        j2->domain = strdup("other.test");
        /* Same mode (none), another context: another destination's settings. */
        j3->tls_ctx = other;
        is_int(run_job_on(e, j1), 0, "cache no match: first job runs");
        is_int(run_job_on(e, j2), 0, "cache no match: other domain runs");
        is_int(run_job_on(e, j3), 0, "cache no match: other TLS context runs");
        ok(job_delivered(j1) && job_delivered(j2) && job_delivered(j3), "cache no match: all delivered");
        is_int((int) peer_accepts(), 3, "cache no match: a connection each");
        sd_event_unref(e);
        ok(peer_wait_cmds("QUIT", 3), "cache no match: every cached connection closed with QUIT");
        peer_stop(pid);
        delivery_job_free(j1);
        delivery_job_free(j2);
        delivery_job_free(j3);
        clean_workdir();
}

static void test_cache_expiry(void) {
        PeerScript s = cache_peer();
        uint16_t port;
        pid_t pid = peer_start(&s, &port);
        sd_event *e = NULL;

        if (sd_event_new(&e) < 0)
                abort();
        smtp_client_set_cache_time_limit(200 * USEC_PER_MSEC);
        DeliveryJob *j1 = cache_job(port, 140), *j2 = cache_job(port, 141);
        is_int(run_job_on(e, j1), 0, "cache expiry: first job runs");
        run_loop_for(e, 600 * USEC_PER_MSEC);
        ok(peer_wait_cmds("QUIT", 1), "cache expiry: idle connection closed with QUIT after the limit");
        is_int(run_job_on(e, j2), 0, "cache expiry: second job runs");
        ok(job_delivered(j1) && job_delivered(j2), "cache expiry: both delivered");
        is_int((int) peer_accepts(), 2, "cache expiry: the second job connected anew");
        sd_event_unref(e);
        peer_stop(pid);
        delivery_job_free(j1);
        delivery_job_free(j2);
        clean_workdir();
}

/* max_messages_per_connection counts every job on a connection: with a
 * limit of 2, the third single-message job opens a new one. */
static void test_cache_message_limit(void) {
        PeerScript s = cache_peer();
        uint16_t port;
        pid_t pid = peer_start(&s, &port);
        sd_event *e = NULL;
        DeliveryJob *j[3];
        bool delivered = true;

        if (sd_event_new(&e) < 0)
                abort();
        for (size_t i = 0; i < ELEMENTSOF(j); i++) {
                j[i] = cache_job(port, 150 + i);
                j[i]->connection_message_limit = 2;
                is_int(run_job_on(e, j[i]), 0, "cache limit: job %zu runs", i);
                delivered = delivered && job_delivered(j[i]);
        }
        ok(delivered, "cache limit: all delivered");
        is_int((int) peer_accepts(), 2, "cache limit: two messages on the first connection, then a new one");
        ok(peer_wait_cmds("QUIT", 1), "cache limit: the full connection ended with QUIT, not cached");
        sd_event_unref(e);
        peer_stop(pid);
        for (size_t i = 0; i < ELEMENTSOF(j); i++)
                delivery_job_free(j[i]);
        clean_workdir();
}

static void test_cache(void) {
        smtp_client_set_cache_time_limit(2 * USEC_PER_SEC);
        test_cache_reuse();
        test_cache_tls();
        test_cache_peer_closed();
        test_cache_no_match();
        test_cache_expiry();
        test_cache_message_limit();
        smtp_client_set_cache_time_limit(0);
}

int main(void) {
        /* The daemon ignores SIGPIPE; so must the test (sendfile(2)). */
        signal(SIGPIPE, SIG_IGN);
        if (!mkdtemp(workdir))
                return 77;
        smtp_client_set_cache_time_limit(0);

        test_pipelined_delivery();
        test_rcpt_statuses();
        test_dot_reply("451 4.3.0 try again later\r\n", DELIVERY_DEFERRED, "451 4.3.0 try again later", "dot 451");
        test_dot_reply("554 5.7.1 rejected for policy reasons\r\n", DELIVERY_FAILED,
                       "554 5.7.1 rejected for policy reasons", "dot 554");
        test_greeting_421();
        test_fallback_targets();
        test_helo_fallback();
        test_timeouts();
        test_reuse_size_rset();
        test_pipelined_no_rcpt();
        test_smtp_sink();
        test_tls();
        test_cache();
        pki_cleanup();

        clean_workdir();
        (void) rmdir(workdir);
        return tap_done();
}
