/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * OpenSSL contexts and sessions: the only module that calls SSL_get_error.
 *
 * Server contexts are built per listener (one or more certificates: OpenSSL
 * picks ECDSA or RSA by the client's signature algorithms; full chains are
 * always served), client contexts per outbound settings. Contexts whose
 * settings ask for kTLS (the default) have SSL_OP_ENABLE_KTLS so OpenSSL
 * hands record encryption to the kernel when it can (see ktls.h). Session
 * tickets are encrypted with process-wide keys that rotate (the previous
 * key still decrypts). TLS sockets get TCP_NODELAY: the TLS 1.3 ticket
 * that follows the handshake must not leave the next reply waiting for a
 * delayed ACK (Nagle).
 *
 * TlsSession wraps one SSL on a non-blocking socket. Calls return
 * 1/bytes on progress, -EAGAIN with *ret_events (EPOLLIN/EPOLLOUT) when the
 * socket must become ready, 0 from read at a clean close, other negative
 * errno on failure with tls_session_error() describing it in OpenSSL's
 * words (the OpenSSL error queue is always cleared).
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <openssl/ssl.h>

#include "certstore.h"

/* Ticket keys rotate this often; a ticket stays valid for two periods. */
#define TLS_TICKET_KEY_ROTATION_DEFAULT (12ULL * 3600ULL * 1000000ULL)

/* Sets the rotation period of the process-wide ticket keys (usec; 0 = the
 * default). Thread-safe; takes effect at the next rotation check. */
void tls_set_ticket_rotation(uint64_t usec);

typedef struct TlsSettings {
        const char *min_version;        /* "TLSv1.2" (default) or "TLSv1.3" */
        const char *ciphers;            /* TLS <= 1.2 list, NULL = our default */
        const char *ciphersuites;       /* TLS 1.3, NULL = OpenSSL's default */
        const char *groups;             /* NULL = "X25519:P-256:P-384" */
        bool ktls;
} TlsSettings;

/* Our defaults: ECDHE with AEAD only (RFC 9325 4.2). */
#define TLS_CIPHERS_DEFAULT "ECDHE+AESGCM:ECDHE+CHACHA20"
#define TLS_GROUPS_DEFAULT "X25519:P-256:P-384"

/* Checks settings without building anything (for config validation). */
int tls_settings_validate(const TlsSettings *s, char **ret_error);

/* certs: 1..N certificates (at most one per key type is useful).
 * client_ca_file: CA bundle for client certificate verification (NULL:
 * the system store). */
int tls_server_ctx_new(const TlsSettings *s, Certificate * const *certs, size_t n_certs,
                       const char *client_ca_file, SSL_CTX **ret, char **ret_error);
/* ca_file NULL: the system store. client_cert may be NULL. */
int tls_client_ctx_new(const TlsSettings *s, const char *ca_file, Certificate *client_cert,
                       SSL_CTX **ret, char **ret_error);

typedef enum TlsVerifyMode {
        TLS_VERIFY_NONE,                /* do not ask (server) / do not check (client) */
        TLS_VERIFY_OPTIONAL,            /* ask/check and record the result, never fail */
        TLS_VERIFY_REQUIRED,            /* fail the handshake without a valid peer chain */
} TlsVerifyMode;

typedef struct TlsSession TlsSession;

/* server: verify is about client certificates. client: sni is sent; the
 * chain result is recorded according to verify; names are checked with
 * tls_session_check_name() after the handshake. fd stays owned by the caller. */
int tls_session_new(SSL_CTX *ctx, int fd, bool server, const char *sni, TlsVerifyMode verify,
                    TlsSession **ret);
TlsSession *tls_session_free(TlsSession *t);

/* 1 = done; -EAGAIN = wait for *ret_events; <0 failure. */
int tls_session_handshake(TlsSession *t, uint32_t *ret_events);
ssize_t tls_session_read(TlsSession *t, void *p, size_t n, uint32_t *ret_events);
ssize_t tls_session_write(TlsSession *t, const void *p, size_t n, uint32_t *ret_events);
/* Only when tls_session_ktls_tx(): SSL_sendfile() of [offset, offset+n). */
ssize_t tls_session_sendfile(TlsSession *t, int fd, off_t offset, size_t n, uint32_t *ret_events);
/* Sends close_notify (best effort, non-blocking). */
void tls_session_shutdown(TlsSession *t);
/* Bytes decrypted but not yet read by us (after the handshake). */
size_t tls_session_pending(TlsSession *t);

const char *tls_session_error(const TlsSession *t);
const char *tls_session_protocol(const TlsSession *t);          /* "TLSv1.3" */
const char *tls_session_cipher(const TlsSession *t);            /* "TLS_AES_256_GCM_SHA384" */
int tls_session_cipher_bits(const TlsSession *t);
bool tls_session_resumed(const TlsSession *t);
bool tls_session_ktls_tx(const TlsSession *t);
bool tls_session_ktls_rx(const TlsSession *t);
/* Peer certificate presented, and whether its chain verified. */
bool tls_session_peer_cert(const TlsSession *t);
bool tls_session_peer_verified(const TlsSession *t);
const char *tls_session_verify_error(const TlsSession *t);      /* X509 reason or NULL */
/* Subject CN of the peer certificate, or NULL. */
const char *tls_session_peer_cn(const TlsSession *t);
/* RFC 6125 host name match of the peer certificate against any of names. */
bool tls_session_check_name(const TlsSession *t, const char * const *names, size_t n_names);
/* For diagnostics (TlsVerify): the subjects of the certificates the peer
 * sent, leaf first, as "CN=mx.example.com, O=Example"; and the names the
 * peer certificate is valid for (its DNS SANs, else its subject CN).
 * NULL-terminated lists, empty when there is no peer certificate. */
int tls_session_peer_chain(const TlsSession *t, char ***ret_subjects);
int tls_session_peer_names(const TlsSession *t, char ***ret_names);

/* Tests only: rotates the process-wide ticket keys now (the current key
 * becomes the previous one, the one before is forgotten). */
void tls_ticket_keys_rotate_for_test(void);
