/* SPDX-License-Identifier: GPL-2.0-or-later */

/*
 * TLS sessions over real loopback TCP connections: both ends run in this
 * process on non-blocking sockets, driven by one poll loop. Certificates
 * come from tests/data/make-test-pki. Peers that need knobs the gateway
 * does not offer (signature algorithms, saved sessions) are plain OpenSSL
 * SSL objects on contexts made by tls.c.
 */

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "certstore.h"
#include "ktls.h"
#include "tap.h"
#include "tls.h"
#include "util/macro.h"

/* One handshake or exchange must finish well within this on loopback. */
#define DRIVE_TIMEOUT_MS 5000
/* Ticket key period for the timed rotation cases: long against a loopback
 * handshake, short for the test's run time. */
#define TEST_ROTATION_USEC 300000

static char pki[256];

/* ---- fixtures ---- */

static char *pki_path(const char *name) {
        static char buf[4][512];
        static unsigned i;
        char *p = buf[i++ % ELEMENTSOF(buf)];

        snprintf(p, sizeof(buf[0]), "%s/%s", pki, name);
        return p;
}

static CertStore *store;

/* Loads NAME through the certificate store, as the daemon does: the store
 * directory gets NAME/{cert,key,chain}.pem as links to the PKI files. */
static Certificate *cert_load(const char *name, const char *leaf, const char *key, const char *chain) {
        char dir[600], link[700];
        Certificate *c = NULL;
        _cleanup_free_ char *err = NULL;
        int r;

        snprintf(dir, sizeof(dir), "%s/%s", certstore_dir(store), name);
        if (mkdir(dir, 0700) < 0)
                return NULL;
        snprintf(link, sizeof(link), "%s/cert.pem", dir);
        (void) !symlink(pki_path(leaf), link);
        snprintf(link, sizeof(link), "%s/key.pem", dir);
        (void) !symlink(pki_path(key), link);
        if (chain) {
                snprintf(link, sizeof(link), "%s/chain.pem", dir);
                (void) !symlink(pki_path(chain), link);
        }

        r = certstore_load(store, name, &c, &err);
        if (r < 0)
                printf("# certstore_load %s: %s (%s)\n", name, strerror(-r), err ?: "-");
        return c;
}

static int make_pki(void) {
        const char *root = getenv("TLSGW_SOURCE_ROOT");
        char script[512], tmpl[] = "/tmp/test-tls-XXXXXX";
        int status;
        pid_t pid;

        if (!root)
                root = ".";
        snprintf(script, sizeof(script), "%s/tests/data/make-test-pki", root);
        if (access(script, R_OK) < 0)
                return -ENOENT;
        if (!mkdtemp(tmpl))
                return -errno;
        snprintf(pki, sizeof(pki), "%s/pki", tmpl);

        pid = fork();
        if (pid < 0)
                return -errno;
        if (pid == 0) {
                int null = open("/dev/null", O_WRONLY);
                if (null >= 0)
                        dup2(null, STDOUT_FILENO);
                execlp("bash", "bash", script, pki, (char *) NULL);
                _exit(127);
        }
        if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
                return -EIO;
        return 0;
}

static void rm_pki(void) {
        char cmd[600];

        if (pki[0] && strncmp(pki, "/tmp/test-tls-", 14) == 0) {
                snprintf(cmd, sizeof(cmd), "rm -rf '%.*s'", (int) (strlen(pki) - 4), pki);
                (void) system(cmd);
        }
}

/* A connected, non-blocking TCP pair on 127.0.0.1. */
static int tcp_pair(int *ret_server, int *ret_client) {
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t len = sizeof(sa);
        int l, c, s;

        l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (l < 0)
                return -errno;
        if (bind(l, (struct sockaddr *) &sa, sizeof(sa)) < 0 || listen(l, 1) < 0 ||
            getsockname(l, (struct sockaddr *) &sa, &len) < 0) {
                close(l);
                return -errno;
        }
        c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (c < 0 || connect(c, (struct sockaddr *) &sa, len) < 0) {
                close(l);
                return -errno;
        }
        s = accept4(l, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        close(l);
        if (s < 0) {
                close(c);
                return -errno;
        }
        fcntl(c, F_SETFL, fcntl(c, F_GETFL) | O_NONBLOCK);
        *ret_server = s;
        *ret_client = c;
        return 0;
}

/* ---- one end of a connection: a TlsSession or a bare SSL ---- */

typedef struct Peer {
        TlsSession *t;
        SSL *ssl;
        int fd;
        int state;              /* 0 running, 1 done, <0 failed */
        uint32_t events;
        char error[256];
} Peer;

static int peer_step(Peer *p) {
        int r;

        if (p->state != 0)
                return p->state;
        if (p->t) {
                r = tls_session_handshake(p->t, &p->events);
                if (r == -EAGAIN)
                        return 0;
                p->state = r < 0 ? r : 1;
                if (r < 0)
                        snprintf(p->error, sizeof(p->error), "%s", tls_session_error(p->t) ?: "?");
                return p->state;
        }

        ERR_clear_error();
        r = SSL_do_handshake(p->ssl);
        if (r == 1)
                return p->state = 1;
        switch (SSL_get_error(p->ssl, r)) {
        case SSL_ERROR_WANT_READ:
                p->events = EPOLLIN;
                return 0;
        case SSL_ERROR_WANT_WRITE:
                p->events = EPOLLOUT;
                return 0;
        default:
                snprintf(p->error, sizeof(p->error), "%s",
                         ERR_peek_error() ? ERR_reason_error_string(ERR_peek_error()) : "syscall");
                ERR_clear_error();
                return p->state = -EPROTO;
        }
}

/* Runs both handshakes to completion or failure. A failed end shuts its
 * socket down so the other one sees EOF instead of waiting forever. */
static void drive(Peer *a, Peer *b) {
        Peer *ps[2] = { a, b };
        struct timespec start, now;

        clock_gettime(CLOCK_MONOTONIC, &start);
        for (;;) {
                struct pollfd pfd[2];
                nfds_t n = 0;

                for (int i = 0; i < 2; i++)
                        if (peer_step(ps[i]) < 0)
                                shutdown(ps[i]->fd, SHUT_RDWR);
                for (int i = 0; i < 2; i++)
                        if (ps[i]->state == 0)
                                pfd[n++] = (struct pollfd) {
                                        .fd = ps[i]->fd,
                                        .events = ps[i]->events & EPOLLOUT ? POLLOUT : POLLIN,
                                };
                if (n == 0)
                        return;

                clock_gettime(CLOCK_MONOTONIC, &now);
                long elapsed = (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
                if (elapsed > DRIVE_TIMEOUT_MS) {
                        for (int i = 0; i < 2; i++)
                                if (ps[i]->state == 0) {
                                        ps[i]->state = -ETIMEDOUT;
                                        snprintf(ps[i]->error, sizeof(ps[i]->error), "timeout");
                                }
                        return;
                }
                (void) poll(pfd, n, 100);
        }
}

static void peer_done(Peer *p) {
        /* Like a real client: without close_notify OpenSSL marks the
         * session not resumable. */
        if (p->ssl && p->state == 1)
                (void) SSL_shutdown(p->ssl);
        ERR_clear_error();
        tls_session_free(p->t);
        SSL_free(p->ssl);
        if (p->fd >= 0)
                close(p->fd);
        *p = (Peer) { .fd = -1 };
}

/* Writes buf through a TlsSession, retrying on -EAGAIN. */
static ssize_t session_write_all(TlsSession *t, const char *buf, size_t n) {
        size_t done = 0;

        for (unsigned tries = 0; done < n && tries < 1000; tries++) {
                uint32_t ev = 0;
                ssize_t r = tls_session_write(t, buf + done, n - done, &ev);
                if (r == -EAGAIN) {
                        usleep(1000);
                        continue;
                }
                if (r < 0)
                        return r;
                done += r;
        }
        return done;
}

/* Reads exactly n bytes (or fails) from a TlsSession. */
static ssize_t session_read_n(TlsSession *t, char *buf, size_t n) {
        size_t done = 0;

        for (unsigned tries = 0; done < n && tries < 2000; tries++) {
                uint32_t ev = 0;
                ssize_t r = tls_session_read(t, buf + done, n - done, &ev);
                if (r == -EAGAIN) {
                        usleep(1000);
                        continue;
                }
                if (r <= 0)
                        return r;
                done += r;
        }
        return done;
}

/* Reads n bytes from a bare SSL (processes TLS 1.3 tickets on the way). */
static ssize_t ssl_read_n(SSL *ssl, char *buf, size_t n) {
        size_t done = 0;

        for (unsigned tries = 0; done < n && tries < 2000; tries++) {
                size_t got = 0;
                ERR_clear_error();
                if (SSL_read_ex(ssl, buf + done, n - done, &got) == 1) {
                        done += got;
                        continue;
                }
                int e = SSL_get_error(ssl, 0);
                ERR_clear_error();
                if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
                        return -EPROTO;
                usleep(1000);
        }
        return done;
}

static const TlsSettings settings_default = {};

static SSL_CTX *server_ctx(const TlsSettings *s, Certificate **certs, size_t n, const char *client_ca) {
        SSL_CTX *ctx = NULL;
        _cleanup_free_ char *err = NULL;
        int r = tls_server_ctx_new(s, (Certificate * const *) certs, n, client_ca, &ctx, &err);

        if (r < 0)
                printf("# tls_server_ctx_new: %s (%s)\n", strerror(-r), err ?: "-");
        return ctx;
}

static SSL_CTX *client_ctx(const TlsSettings *s, const char *ca, Certificate *cert) {
        SSL_CTX *ctx = NULL;
        _cleanup_free_ char *err = NULL;
        int r = tls_client_ctx_new(s, ca, cert, &ctx, &err);

        if (r < 0)
                printf("# tls_client_ctx_new: %s (%s)\n", strerror(-r), err ?: "-");
        return ctx;
}

/* Sets up server and client ends on a fresh TCP pair. A NULL cctx_raw
 * means the client is a TlsSession on cctx; otherwise a bare SSL. */
static int connect_pair(SSL_CTX *sctx, TlsVerifyMode sverify, SSL_CTX *cctx, TlsVerifyMode cverify,
                        bool client_raw, SSL_SESSION *resume, Peer *ret_s, Peer *ret_c) {
        int sfd = -1, cfd = -1, r;

        *ret_s = (Peer) { .fd = -1 };
        *ret_c = (Peer) { .fd = -1 };
        r = tcp_pair(&sfd, &cfd);
        if (r < 0)
                return r;
        ret_s->fd = sfd;
        ret_c->fd = cfd;

        r = tls_session_new(sctx, sfd, true, NULL, sverify, &ret_s->t);
        if (r < 0)
                return r;
        if (!client_raw)
                return tls_session_new(cctx, cfd, false, "mx.test", cverify, &ret_c->t);

        ret_c->ssl = SSL_new(cctx);
        if (!ret_c->ssl)
                return -ENOMEM;
        SSL_set_fd(ret_c->ssl, cfd);
        SSL_set_connect_state(ret_c->ssl);
        SSL_set_tlsext_host_name(ret_c->ssl, "mx.test");
        if (resume) {
                /* OpenSSL's client marks a TLS 1.3 session used once as not
                 * resumable (single-use tickets); offer a copy so the test
                 * can replay the same ticket. */
                SSL_SESSION *copy = SSL_SESSION_dup(resume);
                SSL_set_session(ret_c->ssl, copy);
                SSL_SESSION_free(copy);
        }
        return 0;
}

/* ---- cases ---- */

static Certificate *ec, *rsa, *untrusted, *wrongname, *expired, *client_ok, *client_bad;

static void test_settings(void) {
        struct {
                TlsSettings s;
                const char *needle;
        } bad[] = {
                { { .min_version = "TLSv1.1" }, "invalid min_version 'TLSv1.1'" },
                { { .min_version = "tls1.3" }, "invalid min_version" },
                { { .ciphers = "NOT-A-CIPHER" }, "invalid ciphers 'NOT-A-CIPHER'" },
                { { .ciphersuites = "TLS_NOPE_SHA256" }, "invalid ciphersuites 'TLS_NOPE_SHA256'" },
                { { .groups = "P-999" }, "invalid groups 'P-999'" },
                { { .groups = "X25519:nonsense" }, "invalid groups" },
        };
        TlsSettings good[] = {
                {},
                { .min_version = "TLSv1.2" },
                { .min_version = "TLSv1.3", .ciphersuites = "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256" },
                { .ciphers = "ECDHE+AESGCM", .groups = "P-256", .ktls = true },
        };

        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                _cleanup_free_ char *err = NULL;
                int r = tls_settings_validate(&bad[i].s, &err);

                is_int(r, -EINVAL, "validate refuses bad setting %zu", i);
                ok(err && strstr(err, bad[i].needle), "error names it: %s", err ?: "(null)");
        }
        for (size_t i = 0; i < ELEMENTSOF(good); i++) {
                _cleanup_free_ char *err = NULL;
                is_int(tls_settings_validate(&good[i], &err), 0, "validate accepts good setting %zu", i);
        }

        /* The same check guards context creation. */
        SSL_CTX *ctx = NULL;
        _cleanup_free_ char *err = NULL;
        TlsSettings s = { .ciphers = "NOT-A-CIPHER" };
        is_int(tls_server_ctx_new(&s, &ec, 1, NULL, &ctx, &err), -EINVAL, "server ctx refuses bad ciphers");
        ok(!ctx, "no ctx on failure");

        /* A leaf with somebody else's key. */
        Certificate mixed = *ec;
        mixed.key = rsa->key;
        Certificate *m = &mixed;
        free(err);
        err = NULL;
        is_int(tls_server_ctx_new(&settings_default, &m, 1, NULL, &ctx, &err), -EINVAL,
               "server ctx refuses a key that does not match the leaf");
        ok(err != NULL, "mismatch reason: %s", err ?: "(null)");
}

static void test_versions(void) {
        SSL_CTX *sctx = server_ctx(&settings_default, &ec, 1, NULL);
        SSL_CTX *cctx = client_ctx(&settings_default, pki_path("ca-bundle.pem"), NULL);
        Peer s, c;
        char buf[64];

        /* TLS 1.3 */
        is_int(connect_pair(sctx, TLS_VERIFY_NONE, cctx, TLS_VERIFY_OPTIONAL, false, NULL, &s, &c), 0, "TLS 1.3 pair set up");
        drive(&s, &c);
        is_int(s.state, 1, "TLS 1.3 server handshake (%s)", s.error);
        is_int(c.state, 1, "TLS 1.3 client handshake (%s)", c.error);
        is_str(tls_session_protocol(s.t), "TLSv1.3", "server reports TLSv1.3");
        is_str(tls_session_protocol(c.t), "TLSv1.3", "client reports TLSv1.3");
        is_str(tls_session_cipher(s.t), "TLS_AES_256_GCM_SHA384", "TLS 1.3 cipher");
        is_int(tls_session_cipher_bits(s.t), 256, "256 bits");
        ok(!tls_session_resumed(s.t), "first connection is not resumed");
        ok(!tls_session_peer_cert(s.t), "server did not ask for a client certificate");

        /* Data both ways, then a clean close. */
        is_int(session_write_all(s.t, "220 mx.test ESMTP\r\n", 19), 19, "server writes");
        memset(buf, 0, sizeof(buf));
        is_int(session_read_n(c.t, buf, 19), 19, "client reads");
        is_str(buf, "220 mx.test ESMTP\r\n", "data arrives intact");
        is_int(session_write_all(c.t, "EHLO a\r\nNOOP\r\n", 14), 14, "client writes two commands");
        usleep(20000);
        memset(buf, 0, sizeof(buf));
        is_int(session_read_n(s.t, buf, 4), 4, "server reads part of it");
        is_int(tls_session_pending(s.t), 10, "the rest is pending in the TLS layer");
        is_int(session_read_n(s.t, buf + 4, 10), 10, "server reads the rest");
        is_str(buf, "EHLO a\r\nNOOP\r\n", "commands intact");
        tls_session_shutdown(c.t);
        uint32_t ev = 0;
        ssize_t r;
        for (unsigned i = 0; i < 1000 && (r = tls_session_read(s.t, buf, sizeof(buf), &ev)) == -EAGAIN; i++)
                usleep(1000);
        is_int(r, 0, "close_notify reads as end of stream");
        peer_done(&s);
        peer_done(&c);

        /* Truncation: TCP closed without close_notify. */
        connect_pair(sctx, TLS_VERIFY_NONE, cctx, TLS_VERIFY_NONE, false, NULL, &s, &c);
        drive(&s, &c);
        is_int(s.state, 1, "handshake for truncation case");
        close(c.fd);
        c.fd = -1;
        for (unsigned i = 0; i < 1000 && (r = tls_session_read(s.t, buf, sizeof(buf), &ev)) == -EAGAIN; i++)
                usleep(1000);
        is_int(r, -ECONNRESET, "EOF without close_notify is -ECONNRESET (%s)", tls_session_error(s.t) ?: "-");
        ok(tls_session_error(s.t) != NULL, "and has a reason");
        peer_done(&s);
        peer_done(&c);

        /* TLS 1.2: the client caps its version. */
        SSL_CTX_set_max_proto_version(cctx, TLS1_2_VERSION);
        connect_pair(sctx, TLS_VERIFY_NONE, cctx, TLS_VERIFY_OPTIONAL, false, NULL, &s, &c);
        drive(&s, &c);
        is_int(s.state, 1, "TLS 1.2 server handshake (%s)", s.error);
        is_int(c.state, 1, "TLS 1.2 client handshake (%s)", c.error);
        is_str(tls_session_protocol(s.t), "TLSv1.2", "server reports TLSv1.2");
        is_str(tls_session_protocol(c.t), "TLSv1.2", "client reports TLSv1.2");
        ok(tls_session_cipher(s.t) && strncmp(tls_session_cipher(s.t), "ECDHE-ECDSA-", 12) == 0 &&
           strstr(tls_session_cipher(s.t), "GCM"),
           "TLS 1.2 cipher is ECDHE-ECDSA AEAD: %s", tls_session_cipher(s.t) ?: "(null)");
        is_str(tls_session_cipher(c.t), tls_session_cipher(s.t), "both ends agree on the cipher");
        ok(tls_session_cipher_bits(s.t) >= 128, "at least 128 bits");
        peer_done(&s);
        peer_done(&c);
        SSL_CTX_free(sctx);

        /* min_version TLSv1.3 refuses the TLS 1.2-only client. */
        TlsSettings s13 = { .min_version = "TLSv1.3" };
        sctx = server_ctx(&s13, &ec, 1, NULL);
        connect_pair(sctx, TLS_VERIFY_NONE, cctx, TLS_VERIFY_NONE, false, NULL, &s, &c);
        drive(&s, &c);
        ok(s.state < 0, "TLSv1.3-only server refuses a TLS 1.2 client: %s", s.error);
        ok(c.state < 0, "client fails too: %s", c.error);
        ok(tls_session_error(s.t) && strstr(tls_session_error(s.t), "protocol"),
           "reason mentions the protocol");
        peer_done(&s);
        peer_done(&c);

        SSL_CTX_free(sctx);
        SSL_CTX_free(cctx);
}

static void test_cert_selection(void) {
        Certificate *both[] = { ec, rsa };
        SSL_CTX *sctx = server_ctx(&settings_default, both, 2, NULL);
        struct {
                const char *sigalgs;
                int max_version;
                int key_id;
                const char *what;
        } cases[] = {
                { NULL, 0, EVP_PKEY_EC, "default client, TLS 1.3: ECDSA" },
                { "RSA-PSS+SHA256:RSA+SHA256", 0, EVP_PKEY_RSA, "RSA-only client, TLS 1.3: RSA" },
                { NULL, TLS1_2_VERSION, EVP_PKEY_EC, "default client, TLS 1.2: ECDSA" },
                { "RSA+SHA256:RSA+SHA384", TLS1_2_VERSION, EVP_PKEY_RSA, "RSA-only client, TLS 1.2: RSA" },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                SSL_CTX *cctx = client_ctx(&settings_default, pki_path("ca-bundle.pem"), NULL);
                Peer s, c;

                if (cases[i].sigalgs)
                        SSL_CTX_set1_sigalgs_list(cctx, cases[i].sigalgs);
                if (cases[i].max_version)
                        SSL_CTX_set_max_proto_version(cctx, cases[i].max_version);
                connect_pair(sctx, TLS_VERIFY_NONE, cctx, TLS_VERIFY_NONE, true, NULL, &s, &c);
                drive(&s, &c);
                is_int(s.state, 1, "%s: handshake (%s/%s)", cases[i].what, s.error, c.error);

                X509 *leaf = c.ssl ? SSL_get0_peer_certificate(c.ssl) : NULL;
                EVP_PKEY *pk = leaf ? X509_get0_pubkey(leaf) : NULL;
                is_int(pk ? EVP_PKEY_get_base_id(pk) : -1, cases[i].key_id, "%s", cases[i].what);
                STACK_OF(X509) *chain = c.ssl ? SSL_get_peer_cert_chain(c.ssl) : NULL;
                is_int(chain ? sk_X509_num(chain) : -1, 2, "%s: leaf and intermediate served", cases[i].what);
                is_int(SSL_get_verify_result(c.ssl), X509_V_OK, "%s: chain verifies against the root only", cases[i].what);
                peer_done(&s);
                peer_done(&c);
                SSL_CTX_free(cctx);
        }
        SSL_CTX_free(sctx);
}

static void test_client_verification(void) {
        SSL_CTX *sctx = server_ctx(&settings_default, &ec, 1, pki_path("client-ca.pem"));
        SSL_CTX *c_ok = client_ctx(&settings_default, pki_path("ca-bundle.pem"), client_ok);
        SSL_CTX *c_bad = client_ctx(&settings_default, pki_path("ca-bundle.pem"), client_bad);
        SSL_CTX *c_none = client_ctx(&settings_default, pki_path("ca-bundle.pem"), NULL);
        Peer s, c;

        ok(sctx && c_ok && c_bad && c_none, "contexts with client certificates");

        connect_pair(sctx, TLS_VERIFY_OPTIONAL, c_ok, TLS_VERIFY_NONE, false, NULL, &s, &c);
        drive(&s, &c);
        is_int(s.state, 1, "OPTIONAL + valid client cert: handshake (%s)", s.error);
        ok(tls_session_peer_cert(s.t), "client certificate seen");
        ok(tls_session_peer_verified(s.t), "client chain verified (%s)", tls_session_verify_error(s.t) ?: "ok");
        is_str(tls_session_peer_cn(s.t), "client.test", "client CN");
        ok(!tls_session_verify_error(s.t), "no verify error");
        peer_done(&s);
        peer_done(&c);

        connect_pair(sctx, TLS_VERIFY_OPTIONAL, c_bad, TLS_VERIFY_NONE, false, NULL, &s, &c);
        drive(&s, &c);
        is_int(s.state, 1, "OPTIONAL + untrusted client cert: handshake still succeeds (%s)", s.error);
        is_int(c.state, 1, "client side too (%s)", c.error);
        ok(tls_session_peer_cert(s.t), "client certificate seen");
        ok(!tls_session_peer_verified(s.t), "not verified");
        ok(tls_session_verify_error(s.t) != NULL, "reason recorded: %s", tls_session_verify_error(s.t) ?: "(null)");
        peer_done(&s);
        peer_done(&c);

        connect_pair(sctx, TLS_VERIFY_OPTIONAL, c_none, TLS_VERIFY_NONE, false, NULL, &s, &c);
        drive(&s, &c);
        is_int(s.state, 1, "OPTIONAL without client cert: handshake");
        ok(!tls_session_peer_cert(s.t) && !tls_session_peer_verified(s.t), "no certificate, not verified");
        peer_done(&s);
        peer_done(&c);

        connect_pair(sctx, TLS_VERIFY_REQUIRED, c_ok, TLS_VERIFY_NONE, false, NULL, &s, &c);
        drive(&s, &c);
        is_int(s.state, 1, "REQUIRED + valid client cert: handshake (%s)", s.error);
        ok(tls_session_peer_verified(s.t), "verified");
        peer_done(&s);
        peer_done(&c);

        connect_pair(sctx, TLS_VERIFY_REQUIRED, c_none, TLS_VERIFY_NONE, false, NULL, &s, &c);
        drive(&s, &c);
        is_int(s.state, -EPROTO, "REQUIRED without client cert: server handshake fails");
        ok(tls_session_error(s.t) && strstr(tls_session_error(s.t), "peer did not return a certificate"),
           "server reason: %s", tls_session_error(s.t) ?: "(null)");
        peer_done(&s);
        peer_done(&c);

        connect_pair(sctx, TLS_VERIFY_REQUIRED, c_bad, TLS_VERIFY_NONE, false, NULL, &s, &c);
        drive(&s, &c);
        is_int(s.state, -EPROTO, "REQUIRED + untrusted client cert: server handshake fails");
        ok(tls_session_error(s.t) && strstr(tls_session_error(s.t), "certificate verify failed"),
           "server reason: %s", tls_session_error(s.t) ?: "(null)");
        ok(tls_session_verify_error(s.t) != NULL, "verify reason: %s", tls_session_verify_error(s.t) ?: "(null)");
        peer_done(&s);
        peer_done(&c);

        SSL_CTX_free(sctx);
        SSL_CTX_free(c_ok);
        SSL_CTX_free(c_bad);
        SSL_CTX_free(c_none);
}

static void test_server_verification(void) {
        SSL_CTX *cctx = client_ctx(&settings_default, pki_path("ca-bundle.pem"), NULL);
        SSL_CTX *good = server_ctx(&settings_default, &ec, 1, NULL);
        SSL_CTX *bad = server_ctx(&settings_default, &untrusted, 1, NULL);
        SSL_CTX *wrong = server_ctx(&settings_default, &wrongname, 1, NULL);
        SSL_CTX *old = server_ctx(&settings_default, &expired, 1, NULL);
        const char *mx[] = { "mx.test" }, *lh[] = { "localhost" }, *other[] = { "other.test" },
                   *list[] = { "other.test", "mail.example.test" }, *partial[] = { "m*.test" };
        Peer s, c;

        connect_pair(good, TLS_VERIFY_NONE, cctx, TLS_VERIFY_OPTIONAL, false, NULL, &s, &c);
        drive(&s, &c);
        is_int(c.state, 1, "client: trusted server handshake (%s)", c.error);
        ok(tls_session_peer_cert(c.t), "server certificate seen");
        ok(tls_session_peer_verified(c.t), "chain verified (%s)", tls_session_verify_error(c.t) ?: "ok");
        is_str(tls_session_peer_cn(c.t), "mx.test", "server CN");
        ok(tls_session_check_name(c.t, mx, 1), "name mx.test matches");
        ok(tls_session_check_name(c.t, lh, 1), "name localhost matches");
        ok(!tls_session_check_name(c.t, other, 1), "name other.test does not match");
        ok(tls_session_check_name(c.t, list, 2), "any of a list matches");
        ok(!tls_session_check_name(c.t, partial, 1), "a partial wildcard in the reference does not match");
        peer_done(&s);
        peer_done(&c);

        connect_pair(bad, TLS_VERIFY_NONE, cctx, TLS_VERIFY_OPTIONAL, false, NULL, &s, &c);
        drive(&s, &c);
        is_int(c.state, 1, "client OPTIONAL: untrusted server handshake goes on (%s)", c.error);
        ok(tls_session_peer_cert(c.t) && !tls_session_peer_verified(c.t), "not verified");
        ok(tls_session_verify_error(c.t) != NULL, "reason: %s", tls_session_verify_error(c.t) ?: "(null)");
        ok(tls_session_check_name(c.t, mx, 1), "name still matches (trust is separate)");
        peer_done(&s);
        peer_done(&c);

        connect_pair(bad, TLS_VERIFY_NONE, cctx, TLS_VERIFY_REQUIRED, false, NULL, &s, &c);
        drive(&s, &c);
        is_int(c.state, -EPROTO, "client REQUIRED: untrusted server fails the handshake");
        ok(tls_session_error(c.t) && strstr(tls_session_error(c.t), "certificate verify failed"),
           "reason: %s", tls_session_error(c.t) ?: "(null)");
        ok(s.state < 0, "server sees the alert: %s", s.error);
        ok(tls_session_error(s.t) && strstr(tls_session_error(s.t), "unknown ca"),
           "server reason: %s", tls_session_error(s.t) ?: "(null)");
        peer_done(&s);
        peer_done(&c);

        connect_pair(wrong, TLS_VERIFY_NONE, cctx, TLS_VERIFY_OPTIONAL, false, NULL, &s, &c);
        drive(&s, &c);
        is_int(c.state, 1, "wrongname handshake");
        ok(!tls_session_check_name(c.t, mx, 1), "wrongname does not match mx.test");
        ok(tls_session_check_name(c.t, other, 1), "wrongname matches other.test");
        peer_done(&s);
        peer_done(&c);

        connect_pair(old, TLS_VERIFY_NONE, cctx, TLS_VERIFY_OPTIONAL, false, NULL, &s, &c);
        drive(&s, &c);
        is_int(c.state, 1, "expired handshake (OPTIONAL)");
        ok(!tls_session_peer_verified(c.t), "expired not verified");
        ok(tls_session_verify_error(c.t) && strstr(tls_session_verify_error(c.t), "expired"),
           "reason: %s", tls_session_verify_error(c.t) ?: "(null)");
        peer_done(&s);
        peer_done(&c);

        SSL_CTX_free(cctx);
        SSL_CTX_free(good);
        SSL_CTX_free(bad);
        SSL_CTX_free(wrong);
        SSL_CTX_free(old);
}

static int concat_files(const char *out, const char *a, const char *b) {
        _cleanup_fclose_ FILE *o = fopen(out, "we");
        const char *in[] = { a, b };
        char buf[4096];
        size_t n;

        if (!o)
                return -errno;
        for (size_t i = 0; i < ELEMENTSOF(in); i++) {
                _cleanup_fclose_ FILE *f = fopen(in[i], "re");

                if (!f)
                        return -errno;
                while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
                        if (fwrite(buf, 1, n, o) != n)
                                return -EIO;
        }
        return fflush(o) == 0 ? 0 : -errno;
}

/* A certificate without a chain of its own is served with what its
 * context's verify store completes (built once with the context, not per
 * handshake): leaf, intermediate and root here, so a client that trusts
 * only the root verifies it. One whose issuer the store lacks goes out
 * alone, and the handshake still completes. */
static void test_built_chain(void) {
        char store_file[512];
        SSL_CTX *cctx = client_ctx(&settings_default, pki_path("ca-bundle.pem"), NULL);
        Certificate *bare = cert_load("server-ec-bare", "server-ec.pem", "server-ec.key", NULL);
        SSL_CTX *sctx = NULL, *alone = NULL;
        char **subjects = NULL;
        Peer s, c;

        /* pki_path() reuses its buffers: keep a copy. */
        snprintf(store_file, sizeof(store_file), "%s", pki_path("root-and-intermediate.pem"));
        ok(concat_files(store_file, pki_path("ca.pem"), pki_path("intermediate.pem")) >= 0,
           "root and intermediate in one verify file");
        ok(bare && sk_X509_num(bare->chain) <= 0, "leaf loaded without a chain");
        if (bare) {
                sctx = server_ctx(&settings_default, &bare, 1, store_file);
                alone = server_ctx(&settings_default, &untrusted, 1, store_file);
        }
        ok(sctx && alone, "server contexts");
        if (!sctx || !alone || !cctx)
                goto finish;

        STACK_OF(X509) *built = NULL;
        ok(SSL_CTX_select_current_cert(sctx, bare->leaf) == 1 &&
           SSL_CTX_get0_chain_certs(sctx, &built) == 1 && sk_X509_num(built) == 2,
           "the context holds the built chain (intermediate and root)");

        for (int round = 0; round < 2; round++) {
                connect_pair(sctx, TLS_VERIFY_NONE, cctx, TLS_VERIFY_OPTIONAL, false, NULL, &s, &c);
                drive(&s, &c);
                is_int(c.state, 1, "built chain, handshake %d (%s)", round + 1, c.error);
                ok(tls_session_peer_verified(c.t), "served chain verifies against the root alone (%s)",
                   tls_session_verify_error(c.t) ?: "ok");
                ok(tls_session_peer_chain(c.t, &subjects) >= 0 && strv_length(subjects) == 3,
                   "leaf, intermediate and root sent");
                strv_free(subjects);
                subjects = NULL;
                peer_done(&s);
                peer_done(&c);
        }

        connect_pair(alone, TLS_VERIFY_NONE, cctx, TLS_VERIFY_OPTIONAL, false, NULL, &s, &c);
        drive(&s, &c);
        is_int(c.state, 1, "issuer unknown to the store: handshake completes (%s)", c.error);
        ok(tls_session_peer_chain(c.t, &subjects) >= 0 && strv_length(subjects) == 1, "the leaf goes out alone");
        ok(!tls_session_peer_verified(c.t), "and does not verify");
        strv_free(subjects);
        peer_done(&s);
        peer_done(&c);

finish:
        SSL_CTX_free(cctx);
        SSL_CTX_free(sctx);
        SSL_CTX_free(alone);
        certificate_unref(bare);
}

/* One connection with a bare client: returns its session after reading
 * the server's first line (so a TLS 1.3 ticket has been processed). */
static SSL_SESSION *resume_once(SSL_CTX *sctx, SSL_CTX *cctx, SSL_SESSION *resume, bool *ret_resumed) {
        Peer s, c;
        char buf[8];
        SSL_SESSION *sess = NULL;

        *ret_resumed = false;
        connect_pair(sctx, TLS_VERIFY_NONE, cctx, TLS_VERIFY_NONE, true, resume, &s, &c);
        drive(&s, &c);
        if (s.state == 1 && c.state == 1 &&
            session_write_all(s.t, "220 ok\r\n", 8) == 8 &&
            ssl_read_n(c.ssl, buf, 8) == 8) {
                *ret_resumed = tls_session_resumed(s.t);
                if (*ret_resumed != (SSL_session_reused(c.ssl) == 1))
                        printf("# server and client disagree about resumption\n");
                sess = SSL_get1_session(c.ssl);
        } else
                printf("# resume_once: handshake %d/%d (%s/%s)\n", s.state, c.state, s.error, c.error);
        peer_done(&s);
        peer_done(&c);
        return sess;
}

static void test_resumption(int version) {
        const char *v = version == TLS1_3_VERSION ? "TLS 1.3" : "TLS 1.2";
        SSL_CTX *sctx = server_ctx(&settings_default, &ec, 1, NULL);
        SSL_CTX *other = server_ctx(&settings_default, &rsa, 1, NULL);
        SSL_CTX *cctx = client_ctx(&settings_default, pki_path("ca-bundle.pem"), NULL);
        SSL_SESSION *first, *second, *x;
        bool resumed;

        SSL_CTX_set_max_proto_version(cctx, version);
        SSL_CTX_set_session_cache_mode(cctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);

        first = resume_once(sctx, cctx, NULL, &resumed);
        ok(first && SSL_SESSION_is_resumable(first), "%s: ticket received", v);
        ok(!resumed, "%s: first connection is a full handshake", v);

        second = resume_once(sctx, cctx, first, &resumed);
        ok(resumed, "%s: second connection resumed with the ticket", v);
        x = resume_once(sctx, cctx, second, &resumed);
        ok(resumed, "%s: the resumed connection got a ticket that resumes again", v);
        SSL_SESSION_free(x);
        SSL_SESSION_free(second);

        x = resume_once(other, cctx, first, &resumed);
        ok(!resumed, "%s: a ticket does not resume on a context with other certificates", v);
        SSL_SESSION_free(x);

        tls_ticket_keys_rotate_for_test();
        second = resume_once(sctx, cctx, first, &resumed);
        ok(resumed, "%s: ticket from before one key rotation still resumes", v);

        tls_ticket_keys_rotate_for_test();
        x = resume_once(sctx, cctx, first, &resumed);
        ok(!resumed, "%s: ticket from two rotations ago does not resume", v);
        SSL_SESSION_free(x);
        /* The renewed ticket from the previous-key resumption is under the
         * key that is now previous: still good. */
        x = resume_once(sctx, cctx, second, &resumed);
        ok(resumed, "%s: ticket renewed after the first rotation resumes", v);
        SSL_SESSION_free(x);

        /* Rotation by time, with a short period. */
        tls_set_ticket_rotation(TEST_ROTATION_USEC);
        SSL_SESSION_free(first);
        first = resume_once(sctx, cctx, NULL, &resumed);
        usleep(TEST_ROTATION_USEC * 7 / 6);
        x = resume_once(sctx, cctx, first, &resumed);
        ok(resumed, "%s: ticket resumes one period later (previous key)", v);
        SSL_SESSION_free(x);
        usleep(TEST_ROTATION_USEC * 7 / 3);
        x = resume_once(sctx, cctx, first, &resumed);
        ok(!resumed, "%s: ticket refused after more than two periods", v);
        SSL_SESSION_free(x);
        SSL_SESSION_free(second);
        second = resume_once(sctx, cctx, NULL, &resumed);
        usleep(TEST_ROTATION_USEC * 7 / 3);
        x = resume_once(sctx, cctx, second, &resumed);
        ok(!resumed, "%s: idle for two periods: ticket refused (both keys replaced)", v);
        SSL_SESSION_free(x);
        tls_set_ticket_rotation(0);

        SSL_SESSION_free(first);
        SSL_SESSION_free(second);
        SSL_CTX_free(sctx);
        SSL_CTX_free(other);
        SSL_CTX_free(cctx);
}

/* Several worker threads share one server context and the process-wide
 * ticket keys while another thread rotates them. */
#define THREADS_N 4
#define THREAD_CONNECTIONS 15

typedef struct ThreadArgs {
        SSL_CTX *sctx, *cctx;
        unsigned ok, resumed;
} ThreadArgs;

static void *thread_run(void *userdata) {
        ThreadArgs *a = userdata;
        SSL_SESSION *sess = NULL;

        for (unsigned i = 0; i < THREAD_CONNECTIONS; i++) {
                bool resumed;
                SSL_SESSION *n = resume_once(a->sctx, a->cctx, sess, &resumed);

                if (n) {
                        a->ok++;
                        a->resumed += resumed;
                        SSL_SESSION_free(sess);
                        sess = n;
                }
        }
        SSL_SESSION_free(sess);
        return NULL;
}

static void test_threads(void) {
        SSL_CTX *sctx = server_ctx(&settings_default, &ec, 1, NULL);
        SSL_CTX *cctx = client_ctx(&settings_default, pki_path("ca-bundle.pem"), NULL);
        ThreadArgs args[THREADS_N];
        pthread_t th[THREADS_N];
        unsigned total = 0, resumed = 0;

        for (unsigned i = 0; i < THREADS_N; i++) {
                args[i] = (ThreadArgs) { .sctx = sctx, .cctx = cctx };
                if (pthread_create(&th[i], NULL, thread_run, &args[i]) != 0)
                        th[i] = 0;
        }
        for (unsigned i = 0; i < 10; i++) {
                usleep(5000);
                tls_ticket_keys_rotate_for_test();
        }
        for (unsigned i = 0; i < THREADS_N; i++) {
                if (th[i])
                        pthread_join(th[i], NULL);
                total += args[i].ok;
                resumed += args[i].resumed;
        }
        is_int(total, THREADS_N * THREAD_CONNECTIONS, "threads: every handshake and exchange succeeded");
        ok(resumed > 0, "threads: %u of %u connections resumed while keys rotated", resumed, total);
        SSL_CTX_free(sctx);
        SSL_CTX_free(cctx);
}

static void test_ktls(void) {
        bool avail = ktls_available();
        KtlsStats st;
        int r;

        is_int(ktls_available(), avail, "ktls_available() is stable");
        if (!avail)
                printf("# this kernel has no kTLS (no \"tls\" ULP): OpenSSL falls back to userspace records\n");
        r = ktls_read_stats(&st);
        if (avail)
                is_int(r, 0, "kTLS present: /proc/net/tls_stat readable");
        else
                is_int(r, -ENOENT, "kTLS absent: ktls_read_stats() is -ENOENT");

        TlsSettings k = { .ktls = true };
        SSL_CTX *sctx = server_ctx(&k, &ec, 1, NULL);
        SSL_CTX *cctx = client_ctx(&k, pki_path("ca-bundle.pem"), NULL);
        Peer s, c;

        /* TLS 1.2 AES-GCM is offloaded both ways where OpenSSL 3.0 and the
         * kernel can. */
        SSL_CTX_set_max_proto_version(cctx, TLS1_2_VERSION);
        connect_pair(sctx, TLS_VERIFY_NONE, cctx, TLS_VERIFY_NONE, false, NULL, &s, &c);
        drive(&s, &c);
        is_int(s.state, 1, "ktls=true TLS 1.2 handshake (%s)", s.error);
        is_int(tls_session_ktls_tx(s.t), avail, "server kTLS TX %s", avail ? "on" : "off (no kernel support)");
        is_int(tls_session_ktls_rx(s.t), avail, "server kTLS RX %s", avail ? "on" : "off (no kernel support)");
        is_int(tls_session_ktls_tx(c.t), avail, "client kTLS TX matches availability");
        is_int(tls_session_ktls_rx(c.t), avail, "client kTLS RX matches availability");

        char path[] = "/tmp/test-tls-sendfile-XXXXXX";
        int fd = mkstemp(path);
        char buf[32] = {};
        uint32_t ev = 0;
        if (fd >= 0) {
                unlink(path);
                (void) !write(fd, "0123456789MESSAGE\r\n", 19);
        }
        ssize_t n = tls_session_sendfile(s.t, fd, 10, 9, &ev);
        if (avail) {
                is_int(n, 9, "sendfile over kTLS");
                is_int(session_read_n(c.t, buf, 9), 9, "client reads the sendfile data");
                is_str(buf, "MESSAGE\r\n", "sendfile data intact");
        } else
                is_int(n, -EOPNOTSUPP, "sendfile without kTLS TX is -EOPNOTSUPP");
        if (fd >= 0)
                close(fd);
        peer_done(&s);
        peer_done(&c);

        /* Without the option nothing is offloaded even where possible. */
        SSL_CTX *plain = server_ctx(&settings_default, &ec, 1, NULL);
        connect_pair(plain, TLS_VERIFY_NONE, cctx, TLS_VERIFY_NONE, false, NULL, &s, &c);
        drive(&s, &c);
        ok(s.state == 1 && !tls_session_ktls_tx(s.t) && !tls_session_ktls_rx(s.t), "ktls=false: no offload");
        peer_done(&s);
        peer_done(&c);

        SSL_CTX_free(plain);
        SSL_CTX_free(sctx);
        SSL_CTX_free(cctx);
}

int main(void) {
        int r;

        r = make_pki();
        if (r < 0) {
                tap_skip("tls tests", "cannot generate the test PKI (tests/data/make-test-pki)");
                return tap_done();
        }

        char store_dir[300];
        snprintf(store_dir, sizeof(store_dir), "%.*s/certs", (int) (strlen(pki) - 4), pki);
        r = certstore_open(store_dir, &store);
        if (r < 0) {
                printf("# certstore_open: %s\n", strerror(-r));
                tap_skip("tls tests", "cannot open a certificate store");
                rm_pki();
                return tap_done();
        }
        ec = cert_load("server-ec", "server-ec.pem", "server-ec.key", "server-chain.pem");
        rsa = cert_load("server-rsa", "server-rsa.pem", "server-rsa.key", "server-chain.pem");
        untrusted = cert_load("untrusted", "untrusted.pem", "untrusted.key", NULL);
        wrongname = cert_load("wrongname", "wrongname.pem", "wrongname.key", "server-chain.pem");
        expired = cert_load("expired", "expired.pem", "expired.key", "server-chain.pem");
        client_ok = cert_load("client", "client.pem", "client.key", "server-chain.pem");
        client_bad = cert_load("client-untrusted", "client-untrusted.pem", "client-untrusted.key", NULL);
        if (!ec || !rsa || !untrusted || !wrongname || !expired || !client_ok || !client_bad) {
                ok(false, "test PKI loaded through the certificate store");
                rm_pki();
                return tap_done();
        }
        ok(sk_X509_num(ec->chain) == 1 && sk_X509_num(rsa->chain) == 1, "test PKI loaded through the certificate store");

        test_settings();
        test_versions();
        test_cert_selection();
        test_client_verification();
        test_server_verification();
        test_built_chain();
        test_resumption(TLS1_3_VERSION);
        test_resumption(TLS1_2_VERSION);
        test_threads();
        test_ktls();

        certificate_unref(ec);
        certificate_unref(rsa);
        certificate_unref(untrusted);
        certificate_unref(wrongname);
        certificate_unref(expired);
        certificate_unref(client_ok);
        certificate_unref(client_bad);
        certstore_free(store);
        rm_pki();
        return tap_done();
}
