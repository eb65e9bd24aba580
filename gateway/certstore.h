/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * The certificate store: certificates by name in STATE/certs/NAME/:
 *   key.pem    private key, mode 0600, owned by the daemon's user
 *   cert.pem   the leaf certificate
 *   chain.pem  intermediates in order (issuer of the leaf first); may be absent
 *   csr.pem    the certificate signing request for the key; may be absent
 * Files are replaced atomically (write to a temporary, fsync, rename) so a
 * reader sees the old or the new certificate, never half of one.
 *
 * A Certificate is an immutable, reference-counted snapshot (thread-safe
 * refcount): TLS contexts built from it keep it alive while sessions run.
 * Returns negative errno; functions that can fail on bad material also fill
 * *ret_error with a readable reason (malloc'ed) when ret_error is non-NULL.
 * Never logs.
 */

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#define CERTSTORE_DEMO_NAME "demo"
/* Demo certificate validity: long enough never to expire under a test
 * installation, short enough not to look like a real CA-issued one. */
#define CERTSTORE_DEMO_DAYS 3650

typedef enum CertKeyType {
        CERT_KEY_EC_P256,
        CERT_KEY_EC_P384,
        CERT_KEY_RSA_2048,
        CERT_KEY_RSA_3072,
        CERT_KEY_RSA_4096,
        _CERT_KEY_TYPE_MAX,
        _CERT_KEY_TYPE_INVALID = -EINVAL,
} CertKeyType;

const char *cert_key_type_to_string(CertKeyType t);      /* "ec-p256", "rsa-2048", ... */
CertKeyType cert_key_type_from_string(const char *s);

typedef struct Certificate {
        char *name;
        EVP_PKEY *key;
        X509 *leaf;
        STACK_OF(X509) *chain;          /* never NULL, possibly empty */
        X509_REQ *csr;                  /* NULL when none is stored */
        bool self_signed;
        unsigned n_ref;
} Certificate;

Certificate *certificate_ref(Certificate *c);
Certificate *certificate_unref(Certificate *c);
static inline void certificate_unrefp(Certificate **c) {
        if (*c)
                certificate_unref(*c);
}
/* EVP_PKEY_EC or EVP_PKEY_RSA of the key. */
int certificate_key_id(const Certificate *c);

typedef struct CertStore CertStore;

/* DIR is created (0700) if needed. */
int certstore_open(const char *dir, CertStore **ret);
CertStore *certstore_free(CertStore *cs);
const char *certstore_dir(const CertStore *cs);

bool certstore_exists(CertStore *cs, const char *name);
/* Loads NAME from disk: key and leaf must match (-EBADMSG otherwise),
 * chain optional. A new snapshot each call. */
int certstore_load(CertStore *cs, const char *name, Certificate **ret, char **ret_error);

typedef struct CertParams {
        const char *common_name;
        char * const *sans;             /* DNS names; NULL = just the CN */
        CertKeyType key_type;
        unsigned days;                  /* validity from now */
        const char *organization;       /* may be NULL */
} CertParams;

/* New key, self-signed certificate (serial random, SAN with the CN and
 * sans, basicConstraints CA:FALSE, keyUsage/extendedKeyUsage for TLS server
 * and client) and a CSR for the same key; refuses an existing name (-EEXIST). */
int certstore_create(CertStore *cs, const char *name, const CertParams *p, char **ret_error);

/* Creates the self-signed "demo" certificate (CN = hostname, EC P-256) if
 * it does not exist; *ret_created tells whether it did. */
int certstore_ensure_demo(CertStore *cs, const char *hostname, bool *ret_created);

/* ---- administration (the control plane) ----
 * Every operation below replaces files atomically and leaves the store
 * unchanged on any error, with *ret_error saying what was wrong in words an
 * administrator can act on ("the certificate does not match the private
 * key of 'mx'", "intermediate CN=X is expired", "wrong PKCS#12 password"). */

/* NULL-terminated sorted names. */
int certstore_list(CertStore *cs, char ***ret_names);

/* Replaces NAME's certificate by a CA-signed one for the same key (-EBADMSG
 * when the key does not match). chain_pem (may be NULL/empty): the
 * intermediates in any order; they are validated (each must sign the one
 * below it; expired or unrelated ones are refused), ordered leaf-issuer
 * first, and duplicates removed. *ret_notes (NULL-terminated, may be
 * empty) says what was changed ("removed duplicate intermediate CN=..."). */
int certstore_upload(CertStore *cs, const char *name, const char *cert_pem, const char *chain_pem,
                     char ***ret_notes, char **ret_error);

/* PKCS#12: import creates NAME (-EEXIST if it exists) from key, leaf and
 * chain; the legacy algorithms (RC2, 3DES) of old files are accepted
 * (the legacy provider is loaded for this). A wrong password is
 * -EKEYREJECTED. Export uses AES-256-CBC with PBKDF2 and a SHA-256 MAC. */
int certstore_import_pkcs12(CertStore *cs, const char *name, const void *data, size_t len,
                            const char *password, char **ret_error);
int certstore_export_pkcs12(CertStore *cs, const char *name, const char *password,
                            void **ret_data, size_t *ret_len, char **ret_error);

/* Self-signed: a new certificate for the same key and subject, valid for
 * days. CA-signed: a new CSR for the same key (the certificate stays). */
int certstore_renew(CertStore *cs, const char *name, unsigned days, char **ret_error);
int certstore_delete(CertStore *cs, const char *name);
/* The stored CSR in PEM; when none is stored for the key, a new one for
 * the key, subject and DNS names of the certificate (not stored). -ENOENT
 * when the certificate does not exist. */
int certstore_get_csr(CertStore *cs, const char *name, char **ret_pem);

typedef struct CertInfo {
        char *subject;                  /* "CN=mx.example.com, O=Example" */
        char *issuer;
        char **sans;                    /* DNS names, NULL-terminated */
        uint64_t not_before, not_after; /* usec since the epoch */
        CertKeyType key_type;
        char *fingerprint;              /* SHA-256, "AB:CD:..." */
        char *chain_state;              /* "self-signed", "complete", "incomplete", "broken: <why>" */
        unsigned chain_length;
} CertInfo;

int certificate_info(const Certificate *c, CertInfo *ret);
void cert_info_done(CertInfo *i);

typedef struct CertFinding {
        char *name;                     /* certificate */
        char *severity;                 /* "error", "warning", "ok" */
        char *check;                    /* "expiry", "chain", "duplicates", "key" */
        char *message;
} CertFinding;

/* Expiry (error when expired, warning within warn_days), chain problems
 * (missing, unrelated, expired or duplicated intermediates, wrong order)
 * for every certificate in the store. */
int certstore_check(CertStore *cs, unsigned warn_days, CertFinding **ret, size_t *ret_n);
void cert_findings_free(CertFinding *f, size_t n);
/* Does the certificate name this host (CN or DNS SAN, wildcards per
 * RFC 6125)? */
bool certificate_matches_host(const Certificate *c, const char *host);
