/* SPDX-License-Identifier: GPL-2.0-or-later */

/*
 * OpenSSL contexts, session ticket keys and non-blocking TLS sessions.
 *
 * This is the only file that calls SSL_get_error(): every OpenSSL failure
 * is turned into a negative errno here, and the OpenSSL reason string is
 * kept in the session (tls_session_error()) for the caller to log. The
 * OpenSSL error queue is cleared before and after each call, so a stale
 * entry of one session never shows up as the failure of another on the
 * same thread.
 *
 * It does not own sockets (the caller does), does not decide policy (which
 * certificate a listener uses, whether a name must match) and does not log.
 * Return convention: negative errno on failure, see tls.h.
 */

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "tls.h"
#include "util/macro.h"

DEFINE_TRIVIAL_CLEANUP_FUNC(SSL_CTX *, SSL_CTX_free);
DEFINE_TRIVIAL_CLEANUP_FUNC(SSL *, SSL_free);
DEFINE_TRIVIAL_CLEANUP_FUNC(EVP_MD_CTX *, EVP_MD_CTX_free);

/* Room for one OpenSSL reason or X509 verify string plus a short prefix;
 * longer text is cut, it only ever goes to logs. */
#define TLS_ERROR_MAX 256
/* RFC 5280 4.1.2.4 ub-common-name is 64 characters; UTF-8 may need up to
 * four bytes each. */
#define TLS_CN_MAX (64 * 4 + 1)

/* Ticket key material (RFC 5077 4, recommended construction): a 16-byte
 * key name, AES-256-CBC for the state, HMAC-SHA256 over it. */
#define TLS_TICKET_NAME_SIZE 16
#define TLS_TICKET_AES_KEY_SIZE 32
#define TLS_TICKET_HMAC_KEY_SIZE 32

/* TLS 1.3 servers send NewSessionTicket after the handshake (RFC 8446
 * 4.6.1); one is enough for a mail client that reconnects serially, and
 * each costs a record on every connection. */
#define TLS_TLS13_TICKETS 1

/* ---- ticket keys ---- */

typedef struct TicketKey {
        unsigned char name[TLS_TICKET_NAME_SIZE];
        unsigned char aes[TLS_TICKET_AES_KEY_SIZE];
        unsigned char hmac[TLS_TICKET_HMAC_KEY_SIZE];
        uint64_t created_usec;
        bool valid;
} TicketKey;

/* Process-wide, shared by every server context and every worker thread:
 * current encrypts and decrypts, previous only decrypts (so a ticket lives
 * at most two rotation periods). */
static struct {
        pthread_mutex_t lock;
        TicketKey current, previous;
        uint64_t rotation_usec;
} ticket_keys = {
        .lock = PTHREAD_MUTEX_INITIALIZER,
        .rotation_usec = TLS_TICKET_KEY_ROTATION_DEFAULT,
};

static uint64_t now_usec(void) {
        struct timespec ts;

        (void) clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / 1000;
}

/* Called with the lock held. */
static int ticket_keys_rotate_locked(uint64_t now) {
        TicketKey k = {};

        if (RAND_bytes(k.name, sizeof(k.name)) != 1 ||
            RAND_bytes(k.aes, sizeof(k.aes)) != 1 ||
            RAND_bytes(k.hmac, sizeof(k.hmac)) != 1) {
                ERR_clear_error();
                return -EIO;
        }
        k.created_usec = now;
        k.valid = true;

        ticket_keys.previous = ticket_keys.current;
        ticket_keys.current = k;
        OPENSSL_cleanse(&k, sizeof(k));
        return 0;
}

/* Called with the lock held: makes sure a current key exists and is not
 * older than the rotation period. */
static int ticket_keys_refresh_locked(void) {
        uint64_t now = now_usec(), age;
        int r;

        age = now - ticket_keys.current.created_usec;
        if (ticket_keys.current.valid && age < ticket_keys.rotation_usec)
                return 0;

        r = ticket_keys_rotate_locked(now);
        if (r < 0)
                return r;
        /* Rotation is lazy (on the next ticket operation): after an idle
         * spell of two periods or more the old current key must not live on
         * as the previous one, or its tickets would outlast two periods. */
        if (age >= 2 * ticket_keys.rotation_usec)
                OPENSSL_cleanse(&ticket_keys.previous, sizeof(ticket_keys.previous));
        return 0;
}

void tls_set_ticket_rotation(uint64_t usec) {
        pthread_mutex_lock(&ticket_keys.lock);
        ticket_keys.rotation_usec = usec > 0 ? usec : TLS_TICKET_KEY_ROTATION_DEFAULT;
        pthread_mutex_unlock(&ticket_keys.lock);
}

void tls_ticket_keys_rotate_for_test(void) {
        pthread_mutex_lock(&ticket_keys.lock);
        (void) ticket_keys_rotate_locked(now_usec());
        pthread_mutex_unlock(&ticket_keys.lock);
}

/* The ticket cipher, fetched once: handing OpenSSL 3 the legacy
 * EVP_aes_256_cbc() makes every EVP_EncryptInit_ex() fetch the provider
 * implementation again (a locked method-store lookup per ticket). The
 * fetched object is immutable and shared by all threads; it lives as long as
 * the process. NULL if the fetch failed: the callback then reports an error
 * and the handshake goes on without a ticket. */
static pthread_once_t ticket_cipher_once = PTHREAD_ONCE_INIT;
static EVP_CIPHER *ticket_cipher;

static void ticket_cipher_fetch(void) {
        ticket_cipher = EVP_CIPHER_fetch(NULL, "AES-256-CBC", NULL);
        ERR_clear_error();
}

static int ticket_mac_init(EVP_MAC_CTX *hctx, unsigned char *key) {
        OSSL_PARAM params[] = {
                OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, key, TLS_TICKET_HMAC_KEY_SIZE),
                OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *) "SHA256", 0),
                OSSL_PARAM_construct_end(),
        };

        return EVP_MAC_CTX_set_params(hctx, params) == 1 ? 0 : -EIO;
}

/* OpenSSL's ticket callback: returns 1 = key found (or ticket made), 2 =
 * found with the previous key, so OpenSSL issues a fresh ticket, 0 = not
 * ours (full handshake), -1 = error. */
static int ticket_key_cb(SSL *ssl, unsigned char key_name[16], unsigned char *iv,
                         EVP_CIPHER_CTX *cctx, EVP_MAC_CTX *hctx, int enc) {
        TicketKey k;
        int r = 1;

        (void) pthread_once(&ticket_cipher_once, ticket_cipher_fetch);
        if (!ticket_cipher)
                return -1;

        pthread_mutex_lock(&ticket_keys.lock);
        if (ticket_keys_refresh_locked() < 0) {
                pthread_mutex_unlock(&ticket_keys.lock);
                return -1;
        }
        if (enc)
                k = ticket_keys.current;
        else if (memcmp(key_name, ticket_keys.current.name, TLS_TICKET_NAME_SIZE) == 0)
                k = ticket_keys.current;
        else if (ticket_keys.previous.valid &&
                 memcmp(key_name, ticket_keys.previous.name, TLS_TICKET_NAME_SIZE) == 0) {
                k = ticket_keys.previous;
                r = 2;
        } else {
                pthread_mutex_unlock(&ticket_keys.lock);
                return 0;
        }
        pthread_mutex_unlock(&ticket_keys.lock);

        if (enc) {
                memcpy(key_name, k.name, TLS_TICKET_NAME_SIZE);
                if (RAND_bytes(iv, EVP_CIPHER_get_iv_length(ticket_cipher)) != 1 ||
                    EVP_EncryptInit_ex(cctx, ticket_cipher, NULL, k.aes, iv) != 1)
                        r = -1;
        } else if (EVP_DecryptInit_ex(cctx, ticket_cipher, NULL, k.aes, iv) != 1)
                r = -1;

        if (r > 0 && ticket_mac_init(hctx, k.hmac) < 0)
                r = -1;

        OPENSSL_cleanse(&k, sizeof(k));
        return r;
}

/* ---- settings and contexts ---- */

static int min_version_from_string(const char *s) {
        if (!s || streq(s, "TLSv1.2"))
                return TLS1_2_VERSION;
        if (streq(s, "TLSv1.3"))
                return TLS1_3_VERSION;
        return -EINVAL;
}

_printf_(2, 3)
static int set_error(char **ret_error, const char *fmt, ...) {
        if (ret_error) {
                char *e = NULL;
                va_list ap;
                int n;

                va_start(ap, fmt);
                n = vasprintf(&e, fmt, ap);
                va_end(ap);
                if (n < 0)
                        return -ENOMEM;
                free(*ret_error);
                *ret_error = e;
        }
        return -EINVAL;
}

/* Applies the version, cipher and group settings to ctx. On failure
 * returns -EINVAL and names the offending setting. */
static int ctx_apply_settings(SSL_CTX *ctx, const TlsSettings *s, char **ret_error) {
        int v;

        v = min_version_from_string(s->min_version);
        if (v < 0)
                return set_error(ret_error, "invalid min_version '%s' (TLSv1.2 or TLSv1.3)", s->min_version);
        if (SSL_CTX_set_min_proto_version(ctx, v) != 1)
                return set_error(ret_error, "cannot set min_version '%s'", s->min_version ?: "TLSv1.2");

        if (SSL_CTX_set_cipher_list(ctx, s->ciphers ?: TLS_CIPHERS_DEFAULT) != 1)
                return set_error(ret_error, "invalid ciphers '%s'", s->ciphers ?: TLS_CIPHERS_DEFAULT);

        if (s->ciphersuites) {
                /* OpenSSL 3.0 skips unknown names in the list, so an all-unknown
                 * list is only caught by the "nothing left" check. */
                if (SSL_CTX_set_ciphersuites(ctx, s->ciphersuites) != 1)
                        return set_error(ret_error, "invalid ciphersuites '%s'", s->ciphersuites);

                STACK_OF(SSL_CIPHER) *l = SSL_CTX_get_ciphers(ctx);
                bool any13 = false;
                for (int i = 0; l && i < sk_SSL_CIPHER_num(l); i++)
                        if (streq(SSL_CIPHER_get_version(sk_SSL_CIPHER_value(l, i)), "TLSv1.3"))
                                any13 = true;
                if (!any13)
                        return set_error(ret_error, "invalid ciphersuites '%s'", s->ciphersuites);
        }

        if (SSL_CTX_set1_groups_list(ctx, s->groups ?: TLS_GROUPS_DEFAULT) != 1)
                return set_error(ret_error, "invalid groups '%s'", s->groups ?: TLS_GROUPS_DEFAULT);

        return 0;
}

int tls_settings_validate(const TlsSettings *s, char **ret_error) {
        _cleanup_(SSL_CTX_freep) SSL_CTX *ctx = NULL;
        int r;

        if (!s)
                return -EINVAL;

        ctx = SSL_CTX_new(TLS_method());
        if (!ctx) {
                ERR_clear_error();
                return -ENOMEM;
        }

        r = ctx_apply_settings(ctx, s, ret_error);
        ERR_clear_error();
        return r;
}

/* Options common to both sides. */
static void ctx_set_common(SSL_CTX *ctx, const TlsSettings *s) {
        uint64_t opts = SSL_OP_NO_COMPRESSION |         /* CRIME; RFC 7525 3.3 */
                        SSL_OP_NO_RENEGOTIATION;        /* no mid-session renegotiation, RFC 9325 3.5 */

        if (s->ktls)
                opts |= SSL_OP_ENABLE_KTLS;
        SSL_CTX_set_options(ctx, opts);

        /* Non-blocking sockets: a write may complete partially and the buffer
         * may move between retries (we retry from our own output buffer).
         * SSL_MODE_RELEASE_BUFFERS is set per session once its handshake is
         * done (tls_session_handshake()): set here, the handshake's flights
         * would free and allocate the 2 x 16K record buffers several times
         * over. */
        SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
                              SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
}

/* With no chain of its own, OpenSSL builds a certificate's chain from the
 * verify store on every handshake that sends it (a full X509_verify_cert()
 * walk, the biggest cost of such a handshake after the signature). Built
 * once here, for each certificate slot that has none, the result is the
 * same: what the store can find, root included, or the leaf alone when it
 * finds nothing. A slot whose build fails (e.g. a CA below the security
 * level) keeps no chain, so OpenSSL still builds and checks it per
 * handshake as before. Call after the verify store is loaded. */
static void ctx_build_chains(SSL_CTX *ctx, Certificate * const *certs, size_t n_certs) {
        for (size_t i = 0; i < n_certs; i++) {
                STACK_OF(X509) *chain = NULL;

                if (!certs[i] || !certs[i]->leaf ||
                    SSL_CTX_select_current_cert(ctx, certs[i]->leaf) != 1 ||
                    SSL_CTX_get0_chain_certs(ctx, &chain) != 1 || chain)
                        continue;
                (void) SSL_CTX_build_cert_chain(ctx, SSL_BUILD_CHAIN_FLAG_IGNORE_ERROR |
                                                     SSL_BUILD_CHAIN_FLAG_CLEAR_ERROR);
        }
        ERR_clear_error();
}

static int ctx_use_certificate(SSL_CTX *ctx, Certificate *c, char **ret_error) {
        if (!c || !c->leaf || !c->key)
                return set_error(ret_error, "certificate '%s' is incomplete", c && c->name ? c->name : "?");

        /* use_certificate selects the slot for the key type (RSA, ECDSA, ...);
         * the chain set afterwards belongs to that slot only, so each key type
         * serves its own full chain. */
        if (SSL_CTX_use_certificate(ctx, c->leaf) != 1 ||
            SSL_CTX_use_PrivateKey(ctx, c->key) != 1 ||
            SSL_CTX_check_private_key(ctx) != 1)
                return set_error(ret_error, "certificate '%s' does not match its key", c->name ?: "?");

        if (c->chain && sk_X509_num(c->chain) > 0 &&
            SSL_CTX_set1_chain(ctx, c->chain) != 1)
                return set_error(ret_error, "cannot use the chain of certificate '%s'", c->name ?: "?");

        return 0;
}

/* The session ID context binds tickets to the configuration that issued
 * them: ticket keys are process-wide, so without it a ticket from one
 * listener would resume on another with different certificates or client
 * CAs. OpenSSL also refuses to resume at all when peer verification is on
 * and no context is set. */
static int ctx_set_sid_context(SSL_CTX *ctx, Certificate * const *certs, size_t n_certs,
                               const char *client_ca_file) {
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned mdlen = 0;
        _cleanup_(EVP_MD_CTX_freep) EVP_MD_CTX *mctx = NULL;

        mctx = EVP_MD_CTX_new();
        if (!mctx || EVP_DigestInit_ex(mctx, EVP_sha256(), NULL) != 1)
                return -ENOMEM;

        for (size_t i = 0; i < n_certs; i++) {
                unsigned char d[EVP_MAX_MD_SIZE];
                unsigned dlen = 0;

                if (X509_digest(certs[i]->leaf, EVP_sha256(), d, &dlen) != 1 ||
                    EVP_DigestUpdate(mctx, d, dlen) != 1)
                        return -EIO;
        }
        if (client_ca_file && EVP_DigestUpdate(mctx, client_ca_file, strlen(client_ca_file) + 1) != 1)
                return -EIO;
        if (EVP_DigestFinal_ex(mctx, md, &mdlen) != 1)
                return -EIO;

        if (SSL_CTX_set_session_id_context(ctx, md, MIN(mdlen, (unsigned) SSL_MAX_SID_CTX_LENGTH)) != 1)
                return -EIO;
        return 0;
}

int tls_server_ctx_new(const TlsSettings *s, Certificate * const *certs, size_t n_certs,
                       const char *client_ca_file, SSL_CTX **ret, char **ret_error) {
        _cleanup_(SSL_CTX_freep) SSL_CTX *ctx = NULL;
        int r;

        if (!s || !certs || n_certs == 0 || !ret)
                return -EINVAL;

        ctx = SSL_CTX_new(TLS_server_method());
        if (!ctx) {
                r = -ENOMEM;
                goto finish;
        }

        r = ctx_apply_settings(ctx, s, ret_error);
        if (r < 0)
                goto finish;

        ctx_set_common(ctx, s);
        /* Our order, not the client's: the list is ordered by strength. */
        SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);

        for (size_t i = 0; i < n_certs; i++) {
                r = ctx_use_certificate(ctx, certs[i], ret_error);
                if (r < 0)
                        goto finish;
        }

        if (client_ca_file) {
                STACK_OF(X509_NAME) *names;

                if (SSL_CTX_load_verify_file(ctx, client_ca_file) != 1) {
                        r = set_error(ret_error, "cannot load client CA file '%s'", client_ca_file);
                        goto finish;
                }
                /* The CA names sent in CertificateRequest (RFC 8446 4.2.4) help
                 * clients with several certificates pick the right one. */
                names = SSL_load_client_CA_file(client_ca_file);
                if (names)
                        SSL_CTX_set_client_CA_list(ctx, names);
        } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
                r = set_error(ret_error, "cannot load the system CA store");
                goto finish;
        }
        ctx_build_chains(ctx, certs, n_certs);

        /* Resumption by stateless tickets only: a server-side cache would be
         * per context and per process, and costs memory per client. */
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
        SSL_CTX_clear_options(ctx, SSL_OP_NO_TICKET);
        if (SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticket_key_cb) != 1 ||
            SSL_CTX_set_num_tickets(ctx, TLS_TLS13_TICKETS) != 1) {
                r = -EIO;
                goto finish;
        }
        r = ctx_set_sid_context(ctx, certs, n_certs, client_ca_file);
        if (r < 0)
                goto finish;

        *ret = TAKE_PTR(ctx);
        r = 0;
finish:
        ERR_clear_error();
        return r;
}

int tls_client_ctx_new(const TlsSettings *s, const char *ca_file, Certificate *client_cert,
                       SSL_CTX **ret, char **ret_error) {
        _cleanup_(SSL_CTX_freep) SSL_CTX *ctx = NULL;
        int r;

        if (!s || !ret)
                return -EINVAL;

        ctx = SSL_CTX_new(TLS_client_method());
        if (!ctx) {
                r = -ENOMEM;
                goto finish;
        }

        r = ctx_apply_settings(ctx, s, ret_error);
        if (r < 0)
                goto finish;
        ctx_set_common(ctx, s);

        if (ca_file) {
                if (SSL_CTX_load_verify_file(ctx, ca_file) != 1) {
                        r = set_error(ret_error, "cannot load CA file '%s'", ca_file);
                        goto finish;
                }
        } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
                r = set_error(ret_error, "cannot load the system CA store");
                goto finish;
        }

        if (client_cert) {
                r = ctx_use_certificate(ctx, client_cert, ret_error);
                if (r < 0)
                        goto finish;
                ctx_build_chains(ctx, &client_cert, 1);
        }

        /* Verification is decided per session (tls_session_new()); the chain
         * is still checked with VERIFY_NONE and SSL_get_verify_result() tells
         * the outcome. */
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);

        *ret = TAKE_PTR(ctx);
        r = 0;
finish:
        ERR_clear_error();
        return r;
}

/* ---- sessions ---- */

struct TlsSession {
        SSL *ssl;
        int fd;
        bool server;
        TlsVerifyMode verify;

        bool handshake_done;
        bool failed;            /* fatal error seen: no close_notify (OpenSSL forbids it) */

        bool resumed, ktls_tx, ktls_rx, peer_cert, peer_verified;
        int cipher_bits;
        const char *protocol;   /* static strings owned by OpenSSL */
        const char *cipher;
        const char *verify_error;

        char peer_cn[TLS_CN_MAX];
        char error[TLS_ERROR_MAX];
};

/* Keeps the chain result but lets the handshake go on (TLS_VERIFY_OPTIONAL);
 * SSL_get_verify_result() still returns the first error found. */
static int verify_accept_cb(int preverify_ok, X509_STORE_CTX *x) {
        return 1;
}

int tls_session_new(SSL_CTX *ctx, int fd, bool server, const char *sni, TlsVerifyMode verify,
                    TlsSession **ret) {
        _cleanup_(SSL_freep) SSL *ssl = NULL;
        TlsSession *t;
        int mode, one = 1, r;

        if (!ctx || fd < 0 || !ret || verify < TLS_VERIFY_NONE || verify > TLS_VERIFY_REQUIRED)
                return -EINVAL;

        ERR_clear_error();
        ssl = SSL_new(ctx);
        if (!ssl) {
                r = -ENOMEM;
                goto fail;
        }

        /* The socket BIO, not a memory BIO: OpenSSL can only hand keys to the
         * kernel (kTLS) when it writes to the socket itself. */
        if (SSL_set_fd(ssl, fd) != 1) {
                r = -EIO;
                goto fail;
        }

        if (server) {
                SSL_set_accept_state(ssl);
                switch (verify) {
                case TLS_VERIFY_NONE:
                        SSL_set_verify(ssl, SSL_VERIFY_NONE, NULL);
                        break;
                case TLS_VERIFY_OPTIONAL:
                        SSL_set_verify(ssl, SSL_VERIFY_PEER | SSL_VERIFY_CLIENT_ONCE, verify_accept_cb);
                        break;
                case TLS_VERIFY_REQUIRED:
                        SSL_set_verify(ssl, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT |
                                            SSL_VERIFY_CLIENT_ONCE, NULL);
                        break;
                }
        } else {
                SSL_set_connect_state(ssl);
                /* RFC 6066 3: SNI carries a host name, never an address literal. */
                if (sni && !isempty(sni) && SSL_set_tlsext_host_name(ssl, sni) != 1) {
                        r = -EINVAL;
                        goto fail;
                }
                mode = verify == TLS_VERIFY_NONE ? SSL_VERIFY_NONE : SSL_VERIFY_PEER;
                SSL_set_verify(ssl, mode, verify == TLS_VERIFY_OPTIONAL ? verify_accept_cb : NULL);
        }

        /* After the handshake a TLS 1.3 server sends NewSessionTicket, a small
         * segment, and then its first reply: with Nagle the reply waits for
         * the ACK of the ticket, which the client delays (delayed ACK, up to
         * 40 ms on Linux) since it has nothing to send yet. SMTP is strictly
         * request/reply and we write whole replies, so Nagle buys nothing.
         * Best effort: fd may not be TCP (tests, local sockets). */
        (void) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

        t = calloc(1, sizeof(TlsSession));
        if (!t) {
                r = -ENOMEM;
                goto fail;
        }
        t->ssl = TAKE_PTR(ssl);
        t->fd = fd;
        t->server = server;
        t->verify = verify;
        *ret = t;
        return 0;
fail:
        ERR_clear_error();
        return r;
}

TlsSession *tls_session_free(TlsSession *t) {
        if (!t)
                return NULL;
        SSL_free(t->ssl);
        free(t);
        return NULL;
}

_printf_(2, 3)
static void session_set_error(TlsSession *t, const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        (void) vsnprintf(t->error, sizeof(t->error), fmt, ap);
        va_end(ap);
}

/* Maps the result of an SSL call. r is its return value, saved_errno the
 * errno right after it. Returns -EAGAIN (with *ret_events), 0 for a clean
 * close by the peer, or a negative errno with t->error set. Clears the
 * error queue. */
static int session_map_error(TlsSession *t, int r, int saved_errno, uint32_t *ret_events) {
        unsigned long e;
        const char *reason = NULL;
        int ssl_error = SSL_get_error(t->ssl, r), ret;

        switch (ssl_error) {
        case SSL_ERROR_WANT_READ:
                if (ret_events)
                        *ret_events = EPOLLIN;
                ret = -EAGAIN;
                break;
        case SSL_ERROR_WANT_WRITE:
                if (ret_events)
                        *ret_events = EPOLLOUT;
                ret = -EAGAIN;
                break;
        case SSL_ERROR_ZERO_RETURN:
                /* close_notify: a clean end of the stream (RFC 8446 6.1). */
                ret = 0;
                break;
        case SSL_ERROR_SYSCALL:
                t->failed = true;
                if (saved_errno == 0 || saved_errno == ECONNRESET || saved_errno == EPIPE) {
                        session_set_error(t, "%s", saved_errno == 0 ? "unexpected EOF" : strerror(saved_errno));
                        ret = -ECONNRESET;
                } else {
                        session_set_error(t, "%s", strerror(saved_errno));
                        ret = -saved_errno;
                }
                break;
        case SSL_ERROR_SSL:
                t->failed = true;
                /* The first entry is the cause; later ones are the call chain. */
                e = ERR_peek_error();
                reason = e ? ERR_reason_error_string(e) : NULL;
                session_set_error(t, "%s", reason ?: "TLS protocol error");
                /* A peer that closes TCP without close_notify is a truncation
                 * (RFC 8446 6.1); report it as a reset, not as garbage. */
                ret = e && ERR_GET_LIB(e) == ERR_LIB_SSL &&
                      ERR_GET_REASON(e) == SSL_R_UNEXPECTED_EOF_WHILE_READING ? -ECONNRESET : -EPROTO;
                break;
        default:
                t->failed = true;
                session_set_error(t, "SSL error %s", ssl_error == SSL_ERROR_WANT_X509_LOOKUP ? "x509 lookup" : "other");
                ret = -EIO;
                break;
        }

        ERR_clear_error();
        return ret;
}

static void session_record(TlsSession *t) {
        X509 *peer;
        long v;

        t->protocol = SSL_get_version(t->ssl);
        t->cipher = SSL_get_cipher_name(t->ssl);
        t->cipher_bits = SSL_get_cipher_bits(t->ssl, NULL);
        t->resumed = SSL_session_reused(t->ssl) == 1;
#ifndef OPENSSL_NO_KTLS
        t->ktls_tx = BIO_get_ktls_send(SSL_get_wbio(t->ssl));
        t->ktls_rx = BIO_get_ktls_recv(SSL_get_rbio(t->ssl));
#endif

        peer = SSL_get0_peer_certificate(t->ssl);
        t->peer_cert = peer;
        t->peer_cn[0] = '\0';
        t->verify_error = NULL;
        t->peer_verified = false;
        if (!peer)
                return;

        v = SSL_get_verify_result(t->ssl);
        t->peer_verified = v == X509_V_OK;
        if (v != X509_V_OK)
                t->verify_error = X509_verify_cert_error_string(v);

        X509_NAME *subject = X509_get_subject_name(peer);
        int i = subject ? X509_NAME_get_index_by_NID(subject, NID_commonName, -1) : -1;
        if (i >= 0) {
                ASN1_STRING *d = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, i));
                unsigned char *u = NULL;
                int n = ASN1_STRING_to_UTF8(&u, d);

                /* An embedded NUL would hide the rest of the name from logs. */
                if (n > 0 && (size_t) n < sizeof(t->peer_cn) && !memchr(u, 0, n)) {
                        memcpy(t->peer_cn, u, n);
                        t->peer_cn[n] = '\0';
                }
                OPENSSL_free(u);
        }
}

int tls_session_handshake(TlsSession *t, uint32_t *ret_events) {
        int r, saved;

        if (!t)
                return -EINVAL;
        if (t->handshake_done)
                return 1;
        if (t->failed)
                return -EPROTO;

        ERR_clear_error();
        errno = 0;
        r = SSL_do_handshake(t->ssl);
        saved = errno;
        if (r == 1) {
                t->handshake_done = true;
                session_record(t);
                /* From now on the record buffers are freed whenever they run
                 * empty: an SMTP session is idle most of its life, and idle
                 * sessions must not pin 2 x 16K each. */
                SSL_set_mode(t->ssl, SSL_MODE_RELEASE_BUFFERS);
                /* Clients use a TLS 1.3 ticket once (RFC 8446 C.4) and OpenSSL
                 * sends none after a resumption unless the key was old: queue
                 * one anyway (it goes out with our next read or write), so a
                 * client that keeps coming back keeps resuming. */
                if (t->server && t->resumed && SSL_version(t->ssl) >= TLS1_3_VERSION)
                        (void) SSL_new_session_ticket(t->ssl);
                ERR_clear_error();
                return 1;
        }

        r = session_map_error(t, r, saved, ret_events);
        if (r == 0) {
                /* close_notify in the middle of a handshake. */
                t->failed = true;
                session_set_error(t, "%s", "connection closed during handshake");
                return -ECONNRESET;
        }
        /* A failed chain leaves no peer certificate in the session, but the
         * reason is still there (X509_V_OK when none was presented). */
        if (r != -EAGAIN && !t->verify_error) {
                long v = SSL_get_verify_result(t->ssl);
                if (v != X509_V_OK)
                        t->verify_error = X509_verify_cert_error_string(v);
        }
        return r;
}

ssize_t tls_session_read(TlsSession *t, void *p, size_t n, uint32_t *ret_events) {
        size_t done = 0;
        int r, saved;

        if (!t || (!p && n > 0))
                return -EINVAL;
        if (t->failed)
                return -EPROTO;
        if (n == 0)
                return 0;

        ERR_clear_error();
        errno = 0;
        r = SSL_read_ex(t->ssl, p, n, &done);
        saved = errno;
        if (r == 1) {
                ERR_clear_error();
                return (ssize_t) done;
        }
        return session_map_error(t, r, saved, ret_events);
}

ssize_t tls_session_write(TlsSession *t, const void *p, size_t n, uint32_t *ret_events) {
        size_t done = 0;
        int r, saved;

        if (!t || (!p && n > 0))
                return -EINVAL;
        if (t->failed)
                return -EPROTO;
        if (n == 0)
                return 0;

        ERR_clear_error();
        errno = 0;
        r = SSL_write_ex(t->ssl, p, n, &done);
        saved = errno;
        if (r == 1) {
                ERR_clear_error();
                return (ssize_t) done;
        }
        r = session_map_error(t, r, saved, ret_events);
        /* A write never sees a clean close; a 0 here is a peer gone away. */
        return r == 0 ? -EPIPE : r;
}

ssize_t tls_session_sendfile(TlsSession *t, int fd, off_t offset, size_t n, uint32_t *ret_events) {
        ossl_ssize_t r;
        int saved;

        if (!t || fd < 0 || offset < 0)
                return -EINVAL;
        if (t->failed)
                return -EPROTO;
        /* SSL_sendfile() is a kernel sendfile() on a kTLS socket; there is no
         * userspace fallback. */
        if (!t->handshake_done || !t->ktls_tx)
                return -EOPNOTSUPP;
        if (n == 0)
                return 0;

        ERR_clear_error();
        errno = 0;
        r = SSL_sendfile(t->ssl, fd, offset, n, 0);
        saved = errno;
        if (r >= 0) {
                ERR_clear_error();
                return (ssize_t) r;
        }
        r = session_map_error(t, (int) r, saved, ret_events);
        return r == 0 ? -EPIPE : (ssize_t) r;
}

void tls_session_shutdown(TlsSession *t) {
        if (!t)
                return;
        /* Not after a fatal error: OpenSSL must not send close_notify then. */
        if (t->handshake_done && !t->failed) {
                ERR_clear_error();
                (void) SSL_shutdown(t->ssl);
        }
        ERR_clear_error();
}

size_t tls_session_pending(TlsSession *t) {
        if (!t || !t->handshake_done)
                return 0;
        int n = SSL_pending(t->ssl);
        return n > 0 ? (size_t) n : 0;
}

const char *tls_session_error(const TlsSession *t) {
        return t && t->error[0] ? t->error : NULL;
}

const char *tls_session_protocol(const TlsSession *t) {
        return t ? t->protocol : NULL;
}

const char *tls_session_cipher(const TlsSession *t) {
        return t ? t->cipher : NULL;
}

int tls_session_cipher_bits(const TlsSession *t) {
        return t ? t->cipher_bits : 0;
}

bool tls_session_resumed(const TlsSession *t) {
        return t && t->resumed;
}

bool tls_session_ktls_tx(const TlsSession *t) {
        return t && t->ktls_tx;
}

bool tls_session_ktls_rx(const TlsSession *t) {
        return t && t->ktls_rx;
}

bool tls_session_peer_cert(const TlsSession *t) {
        return t && t->peer_cert;
}

bool tls_session_peer_verified(const TlsSession *t) {
        return t && t->peer_verified;
}

const char *tls_session_verify_error(const TlsSession *t) {
        return t ? t->verify_error : NULL;
}

const char *tls_session_peer_cn(const TlsSession *t) {
        return t && t->peer_cn[0] ? t->peer_cn : NULL;
}

bool tls_session_check_name(const TlsSession *t, const char * const *names, size_t n_names) {
        X509 *peer;
        bool match = false;

        if (!t || !t->handshake_done || !names)
                return false;
        peer = SSL_get0_peer_certificate(t->ssl);
        if (!peer)
                return false;

        /* RFC 6125 6.4.3: a wildcard only as the complete left-most label. */
        for (size_t i = 0; i < n_names && !match; i++)
                if (names[i] && !isempty(names[i]) &&
                    X509_check_host(peer, names[i], 0, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS, NULL) == 1)
                        match = true;

        ERR_clear_error();
        return match;
}

/* ---- peer details for diagnostics ---- */

/* A string list that grows by one; keeps the terminating NULL. */
static int strv_push(char ***l, size_t *n, char *s) {
        char **m;

        if (!s)
                return -ENOMEM;
        m = reallocarray(*l, *n + 2, sizeof *m);
        if (!m) {
                free(s);
                return -ENOMEM;
        }
        m[(*n)++] = s;
        m[*n] = NULL;
        *l = m;
        return 0;
}

/* Control characters from a certificate never reach a caller. */
static char *cert_text(const char *p, size_t n) {
        char *s = strndup(p, n);

        for (unsigned char *c = (unsigned char *) s; s && *c; c++)
                if (*c < 0x20 || *c == 0x7f)
                        *c = '?';
        return s;
}

/* "CN=mx.example.com, O=Example": RFC 4514 order, as the certificate
 * store prints subjects. */
static char *peer_name_string(const X509_NAME *name) {
        unsigned long flags = XN_FLAG_SEP_CPLUS_SPC | XN_FLAG_DN_REV | XN_FLAG_FN_SN |
                (ASN1_STRFLGS_RFC2253 & ~ASN1_STRFLGS_ESC_MSB);
        BIO *b = BIO_new(BIO_s_mem());
        char *data = NULL, *s;
        long len;

        if (!b)
                return NULL;
        if (X509_NAME_print_ex(b, name, 0, flags) < 0) {
                ERR_clear_error();
                BIO_free(b);
                return strdup("?");
        }
        len = BIO_get_mem_data(b, &data);
        s = cert_text(data ?: "", len > 0 ? (size_t) len : 0);
        BIO_free(b);
        return s;
}

int tls_session_peer_chain(const TlsSession *t, char ***ret_subjects) {
        STACK_OF(X509) *chain;
        char **l = NULL;
        size_t n = 0;
        int r;

        if (!t || !ret_subjects)
                return -EINVAL;
        l = calloc(1, sizeof *l);
        if (!l)
                return -ENOMEM;
        /* On the client side the stack includes the leaf (SSL_get_peer_cert_chain(3)). */
        chain = t->handshake_done ? SSL_get_peer_cert_chain(t->ssl) : NULL;
        if (chain && t->server) {
                X509 *leaf = SSL_get0_peer_certificate(t->ssl);

                if (leaf) {
                        r = strv_push(&l, &n, peer_name_string(X509_get_subject_name(leaf)));
                        if (r < 0)
                                goto fail;
                }
        }
        for (int i = 0; chain && i < sk_X509_num(chain); i++) {
                r = strv_push(&l, &n, peer_name_string(X509_get_subject_name(sk_X509_value(chain, i))));
                if (r < 0)
                        goto fail;
        }
        *ret_subjects = l;
        return 0;
fail:
        strv_free(l);
        return r;
}

int tls_session_peer_names(const TlsSession *t, char ***ret_names) {
        GENERAL_NAMES *sans = NULL;
        X509 *peer;
        char **l = NULL;
        size_t n = 0;
        int r = 0;

        if (!t || !ret_names)
                return -EINVAL;
        l = calloc(1, sizeof *l);
        if (!l)
                return -ENOMEM;
        peer = t->handshake_done ? SSL_get0_peer_certificate(t->ssl) : NULL;
        if (!peer)
                goto done;

        sans = X509_get_ext_d2i(peer, NID_subject_alt_name, NULL, NULL);
        for (int i = 0; sans && i < sk_GENERAL_NAME_num(sans); i++) {
                const GENERAL_NAME *g = sk_GENERAL_NAME_value(sans, i);
                const ASN1_IA5STRING *d;

                if (g->type != GEN_DNS)
                        continue;
                d = g->d.dNSName;
                r = strv_push(&l, &n, cert_text((const char *) ASN1_STRING_get0_data(d),
                                                (size_t) ASN1_STRING_length(d)));
                if (r < 0)
                        goto done;
        }
        /* RFC 6125 6.4.4: the CN counts only without DNS SANs. */
        if (n == 0 && t->peer_cn[0])
                r = strv_push(&l, &n, strdup(t->peer_cn));
done:
        GENERAL_NAMES_free(sans);
        ERR_clear_error();
        if (r < 0) {
                strv_free(l);
                return r;
        }
        *ret_names = l;
        return 0;
}
