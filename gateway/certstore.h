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
