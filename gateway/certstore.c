/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The certificate store (see certstore.h for the layout on disk).
 *
 * A new certificate is built in a private temporary directory inside the
 * store (".tmp-NAME-XXXXXX"; names never start with a dot, so it cannot
 * collide with a certificate): each file is written to a temporary name
 * created with O_EXCL, fsynced and renamed, the directory is fsynced, and
 * only then is the whole directory renamed to NAME without replacing
 * anything. A crash leaves either no NAME or a complete one.
 *
 * Loading reads key.pem and cert.pem (required), chain.pem and csr.pem
 * (optional) into an immutable, reference-counted Certificate. Further
 * certificates after the leaf in cert.pem (a "full chain" file) are taken
 * as the start of the chain, before those of chain.pem. A csr.pem for a
 * different key is left out of the snapshot: it cannot be used with this
 * key, and a stale request must not stop the certificate from serving.
 *
 * This module does not choose certificates for listeners or verify peers
 * (tls.c does), and never logs. Functions return a negative errno on
 * failure; those that handle certificate material also return a readable,
 * malloc'ed reason in *ret_error, including the OpenSSL reason when OpenSSL
 * failed.
 */

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "certstore.h"
#include "util/macro.h"
#include "util/parse.h"

/* Certificate names are directory names and appear in configuration and
 * on the bus: short, and from a set that needs no quoting anywhere. */
#define CERTSTORE_NAME_MAX 64
/* RFC 5280 Appendix A.1: ub-common-name and ub-organization-name are 64. */
#define CERTSTORE_CN_MAX 64
#define CERTSTORE_ORG_MAX 64
/* Subject alternative names beyond the CN. Certificates with hundreds of
 * names exist, but a gateway serves a handful of MX names. */
#define CERTSTORE_SANS_MAX 100
/* Validity: at least a day; at most 100 years, far below what the
 * GeneralizedTime encoding (RFC 5280 4.1.2.5) and an int day count hold. */
#define CERTSTORE_DAYS_MIN 1U
#define CERTSTORE_DAYS_MAX 36525U
/* RFC 5280 4.1.2.2: serials are positive and at most 20 octets; 128 random
 * bits (top bit cleared, so no sign octet is needed) make collisions and
 * guessing impossible in practice. */
#define CERTSTORE_SERIAL_BYTES 16
/* Largest PEM file read: a 4096-bit RSA key is about 3.3 KiB, a chain of
 * ten large certificates well under 100 KiB. Bounds what a bad file costs. */
#define CERTSTORE_FILE_MAX (1024 * 1024)
/* Certificates in cert.pem plus chain.pem after the leaf. OpenSSL's own
 * default verification depth is 100; real chains have one to three. */
#define CERTSTORE_CHAIN_MAX 16
/* Reason text buffer for ERR_error_string_n (OpenSSL asks for >= 256). */
#define CERTSTORE_ERRBUF 256

#define CERTSTORE_KEY_FILE "key.pem"
#define CERTSTORE_CERT_FILE "cert.pem"
#define CERTSTORE_CHAIN_FILE "chain.pem"
#define CERTSTORE_CSR_FILE "csr.pem"

#define CERTSTORE_DEMO_ORGANIZATION "tlsgw demo certificate"

struct CertStore {
        char *dir;
        int dir_fd;
};

static const char * const cert_key_type_table[_CERT_KEY_TYPE_MAX] = {
        [CERT_KEY_EC_P256]  = "ec-p256",
        [CERT_KEY_EC_P384]  = "ec-p384",
        [CERT_KEY_RSA_2048] = "rsa-2048",
        [CERT_KEY_RSA_3072] = "rsa-3072",
        [CERT_KEY_RSA_4096] = "rsa-4096",
};

const char *cert_key_type_to_string(CertKeyType t) {
        if (t < 0 || t >= _CERT_KEY_TYPE_MAX)
                return NULL;
        return cert_key_type_table[t];
}

CertKeyType cert_key_type_from_string(const char *s) {
        if (!s)
                return _CERT_KEY_TYPE_INVALID;
        for (CertKeyType t = 0; t < _CERT_KEY_TYPE_MAX; t++)
                if (streq(cert_key_type_table[t], s))
                        return t;
        return _CERT_KEY_TYPE_INVALID;
}

DEFINE_TRIVIAL_CLEANUP_FUNC(EVP_PKEY *, EVP_PKEY_free);
DEFINE_TRIVIAL_CLEANUP_FUNC(X509 *, X509_free);
DEFINE_TRIVIAL_CLEANUP_FUNC(X509_REQ *, X509_REQ_free);
DEFINE_TRIVIAL_CLEANUP_FUNC(X509_NAME *, X509_NAME_free);
DEFINE_TRIVIAL_CLEANUP_FUNC(BIO *, BIO_free);
DEFINE_TRIVIAL_CLEANUP_FUNC(BIGNUM *, BN_free);
DEFINE_TRIVIAL_CLEANUP_FUNC(ASN1_INTEGER *, ASN1_INTEGER_free);
DEFINE_TRIVIAL_CLEANUP_FUNC(ASN1_OCTET_STRING *, ASN1_OCTET_STRING_free);
DEFINE_TRIVIAL_CLEANUP_FUNC(ASN1_BIT_STRING *, ASN1_BIT_STRING_free);
DEFINE_TRIVIAL_CLEANUP_FUNC(BASIC_CONSTRAINTS *, BASIC_CONSTRAINTS_free);

static void general_names_freep(GENERAL_NAMES **p) {
        if (*p)
                sk_GENERAL_NAME_pop_free(*p, GENERAL_NAME_free);
}

static void eku_freep(EXTENDED_KEY_USAGE **p) {
        if (*p)
                sk_ASN1_OBJECT_pop_free(*p, ASN1_OBJECT_free);
}

static void extensions_freep(STACK_OF(X509_EXTENSION) **p) {
        if (*p)
                sk_X509_EXTENSION_pop_free(*p, X509_EXTENSION_free);
}

static void x509_stack_freep(STACK_OF(X509) **p) {
        if (*p)
                sk_X509_pop_free(*p, X509_free);
}

_printf_(2, 3)
static void set_error(char **ret_error, const char *fmt, ...) {
        va_list ap;
        char *s;

        if (!ret_error)
                return;

        va_start(ap, fmt);
        if (vasprintf(&s, fmt, ap) < 0)
                s = NULL;
        va_end(ap);

        /* Each failure path sets the reason once; the caller's initial
         * value is not looked at. */
        *ret_error = s;
}

/* Puts "WHAT: <OpenSSL reason>" into *ret_error and empties the OpenSSL
 * error queue of this thread, so the next operation starts clean. */
static void set_openssl_error(char **ret_error, const char *what) {
        char buf[CERTSTORE_ERRBUF];
        unsigned long e;

        e = ERR_get_error();
        if (e != 0)
                ERR_error_string_n(e, buf, sizeof(buf));
        else
                snprintf(buf, sizeof(buf), "unknown OpenSSL error");
        ERR_clear_error();

        set_error(ret_error, "%s: %s", what, buf);
}

static bool certstore_name_is_valid(const char *name) {
        size_t n;

        if (!name)
                return false;
        n = strlen(name);
        if (n == 0 || n > CERTSTORE_NAME_MAX)
                return false;
        /* "." and ".." would leave the store; a leading dot is reserved for
         * the temporary directories of certstore_create(). */
        if (name[0] == '.')
                return false;
        for (size_t i = 0; i < n; i++) {
                char c = name[i];

                if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                      (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-'))
                        return false;
        }
        return true;
}

/* A DNS name for subjectAltName: a host name, or "*." and a host name for
 * a wildcard in the leftmost label (RFC 6125 6.4.3). */
static bool san_name_is_valid(const char *s) {
        if (!s)
                return false;
        if (s[0] == '*' && s[1] == '.')
                s += 2;
        return domain_is_valid(s);
}

/* ------------------------------------------------------------------------
 * Certificate snapshots
 */

Certificate *certificate_ref(Certificate *c) {
        if (!c)
                return NULL;
        __atomic_add_fetch(&c->n_ref, 1, __ATOMIC_RELAXED);
        return c;
}

Certificate *certificate_unref(Certificate *c) {
        if (!c)
                return NULL;
        /* Release so that our uses happen before the free; acquire so that
         * the last owner sees everything the others did. */
        if (__atomic_sub_fetch(&c->n_ref, 1, __ATOMIC_ACQ_REL) > 0)
                return NULL;

        free(c->name);
        EVP_PKEY_free(c->key);
        X509_free(c->leaf);
        sk_X509_pop_free(c->chain, X509_free);
        X509_REQ_free(c->csr);
        free(c);
        return NULL;
}

int certificate_key_id(const Certificate *c) {
        if (!c || !c->key)
                return -EINVAL;
        return EVP_PKEY_get_base_id(c->key);
}

/* ------------------------------------------------------------------------
 * The store
 */

/* mkdir -p with mode 0700 for every directory created; existing ones keep
 * their mode (an administrator may have chosen a different one). */
static int mkdir_parents(const char *path) {
        _cleanup_free_ char *p = NULL;

        p = strdup(path);
        if (!p)
                return -ENOMEM;

        for (char *s = p + 1; ; s++) {
                if (*s != '/' && *s != '\0')
                        continue;

                char saved = *s;

                *s = '\0';
                if (mkdir(p, 0700) < 0 && errno != EEXIST)
                        return -errno;
                *s = saved;
                if (saved == '\0')
                        break;
        }
        return 0;
}

int certstore_open(const char *dir, CertStore **ret) {
        _cleanup_free_ CertStore *cs = NULL;
        _cleanup_free_ char *d = NULL;
        _cleanup_close_ int fd = -EBADF;
        int r;

        if (isempty(dir) || !ret)
                return -EINVAL;

        r = mkdir_parents(dir);
        if (r < 0)
                return r;

        fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return -errno;

        d = strdup(dir);
        cs = calloc(1, sizeof(*cs));
        if (!d || !cs)
                return -ENOMEM;

        cs->dir = TAKE_PTR(d);
        cs->dir_fd = TAKE_FD(fd);
        *ret = TAKE_PTR(cs);
        return 0;
}

CertStore *certstore_free(CertStore *cs) {
        if (!cs)
                return NULL;
        safe_close(cs->dir_fd);
        free(cs->dir);
        free(cs);
        return NULL;
}

const char *certstore_dir(const CertStore *cs) {
        return cs ? cs->dir : NULL;
}

static bool file_exists_at(int dir_fd, const char *path) {
        struct stat st;

        return fstatat(dir_fd, path, &st, 0) >= 0 && S_ISREG(st.st_mode);
}

bool certstore_exists(CertStore *cs, const char *name) {
        _cleanup_close_ int fd = -EBADF;

        if (!cs || !certstore_name_is_valid(name))
                return false;

        fd = openat(cs->dir_fd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return false;

        return file_exists_at(fd, CERTSTORE_KEY_FILE) && file_exists_at(fd, CERTSTORE_CERT_FILE);
}

/* ------------------------------------------------------------------------
 * Loading
 */

static int pem_no_password(char *buf, int size, int rwflag, void *userdata) {
        bool *asked = userdata;

        /* Keys in the store are unencrypted; never prompt on a terminal,
         * but remember why reading failed. */
        if (asked)
                *asked = true;
        return -1;
}

/* Opens DIR_FD/FILE as a memory BIO holding the whole file (bounded).
 * -ENOENT when absent, so callers can tell optional files apart. */
static int open_pem(int dir_fd, const char *file, BIO **ret) {
        _cleanup_close_ int fd = -EBADF;
        _cleanup_free_ char *data = NULL;
        struct stat st;
        size_t have = 0;
        BIO *b;

        /* Symlinks are followed: an administrator may point cert.pem and
         * chain.pem at files another tool renews. */
        fd = openat(dir_fd, file, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode))
                return -EBADMSG;
        if (st.st_size > CERTSTORE_FILE_MAX)
                return -EFBIG;

        data = malloc((size_t) st.st_size + 1);
        if (!data)
                return -ENOMEM;

        /* Read what fstat promised; a file growing meanwhile is cut there,
         * which the PEM parser then refuses if it matters. */
        while (have < (size_t) st.st_size) {
                ssize_t n = read(fd, data + have, (size_t) st.st_size - have);

                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (n == 0)
                        break;
                have += (size_t) n;
        }

        b = BIO_new(BIO_s_mem());
        if (!b)
                return -ENOMEM;
        /* An empty memory BIO reports "retry" by default; this is a file,
         * its end is the end. */
        BIO_set_mem_eof_return(b, 0);
        if (have > 0 && BIO_write(b, data, (int) have) != (int) have) {
                BIO_free(b);
                return -ENOMEM;
        }

        *ret = b;
        return 0;
}

/* Reads every certificate in B in file order into CHAIN (appending).
 * Stops cleanly at the end of the data. */
static int read_certificates(BIO *b, STACK_OF(X509) *chain, const char *what, char **ret_error) {
        for (;;) {
                _cleanup_(X509_freep) X509 *x = NULL;
                unsigned long e;

                ERR_clear_error();
                x = PEM_read_bio_X509(b, NULL, pem_no_password, NULL);
                if (!x) {
                        e = ERR_peek_last_error();
                        if (ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE) {
                                /* No further PEM block: end of file. */
                                ERR_clear_error();
                                return 0;
                        }
                        set_openssl_error(ret_error, what);
                        return -EBADMSG;
                }

                if (sk_X509_num(chain) >= CERTSTORE_CHAIN_MAX) {
                        set_error(ret_error, "%s: more than %d chain certificates", what, CERTSTORE_CHAIN_MAX);
                        return -E2BIG;
                }
                if (sk_X509_push(chain, x) <= 0)
                        return -ENOMEM;
                TAKE_PTR(x);
        }
}

static int open_required(int fd, const char *name, const char *file, BIO **ret, char **ret_error) {
        int r;

        r = open_pem(fd, file, ret);
        if (r < 0)
                set_error(ret_error, "%s/%s: %s", name, file, strerror(-r));
        return r;
}

int certstore_load(CertStore *cs, const char *name, Certificate **ret, char **ret_error) {
        _cleanup_(certificate_unrefp) Certificate *c = NULL;
        _cleanup_(x509_stack_freep) STACK_OF(X509) *certs = NULL;
        _cleanup_(BIO_freep) BIO *b = NULL;
        _cleanup_close_ int fd = -EBADF;
        char what[CERTSTORE_NAME_MAX + 32];
        bool encrypted = false;
        int r;

        if (!cs || !ret)
                return -EINVAL;
        if (!certstore_name_is_valid(name)) {
                set_error(ret_error, "invalid certificate name");
                return -EINVAL;
        }

        fd = openat(cs->dir_fd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0) {
                r = -errno;
                set_error(ret_error, "%s: %s", name, strerror(-r));
                return r;
        }

        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->n_ref = 1;
        c->name = strdup(name);
        c->chain = sk_X509_new_null();
        certs = sk_X509_new_null();
        if (!c->name || !c->chain || !certs)
                return -ENOMEM;

        /* Key. */
        r = open_required(fd, name, CERTSTORE_KEY_FILE, &b, ret_error);
        if (r < 0)
                return r;
        ERR_clear_error();
        c->key = PEM_read_bio_PrivateKey(b, NULL, pem_no_password, &encrypted);
        if (!c->key) {
                snprintf(what, sizeof(what), "%s/%s", name, CERTSTORE_KEY_FILE);
                if (encrypted) {
                        ERR_clear_error();
                        set_error(ret_error, "%s: encrypted private keys are not supported", what);
                } else
                        set_openssl_error(ret_error, what);
                return -EBADMSG;
        }
        BIO_free(TAKE_PTR(b));

        /* Leaf, and any further certificates of a full-chain file. */
        r = open_required(fd, name, CERTSTORE_CERT_FILE, &b, ret_error);
        if (r < 0)
                return r;
        snprintf(what, sizeof(what), "%s/%s", name, CERTSTORE_CERT_FILE);
        r = read_certificates(b, certs, what, ret_error);
        if (r < 0)
                return r;
        if (sk_X509_num(certs) == 0) {
                set_error(ret_error, "%s: no certificate", what);
                return -EBADMSG;
        }
        BIO_free(TAKE_PTR(b));
        c->leaf = sk_X509_shift(certs);
        while (sk_X509_num(certs) > 0) {
                X509 *x = sk_X509_shift(certs);

                if (sk_X509_push(c->chain, x) <= 0) {
                        X509_free(x);
                        return -ENOMEM;
                }
        }

        ERR_clear_error();
        if (X509_check_private_key(c->leaf, c->key) != 1) {
                ERR_clear_error();
                set_error(ret_error, "%s: key does not match certificate", name);
                return -EBADMSG;
        }

        /* Chain, optional. */
        r = open_pem(fd, CERTSTORE_CHAIN_FILE, &b);
        if (r >= 0) {
                snprintf(what, sizeof(what), "%s/%s", name, CERTSTORE_CHAIN_FILE);
                r = read_certificates(b, c->chain, what, ret_error);
                if (r < 0)
                        return r;
                BIO_free(TAKE_PTR(b));
        } else if (r != -ENOENT) {
                set_error(ret_error, "%s/%s: %s", name, CERTSTORE_CHAIN_FILE, strerror(-r));
                return r;
        }

        /* Request, optional; one for another key is of no use with this one. */
        r = open_pem(fd, CERTSTORE_CSR_FILE, &b);
        if (r >= 0) {
                ERR_clear_error();
                c->csr = PEM_read_bio_X509_REQ(b, NULL, pem_no_password, NULL);
                if (!c->csr) {
                        snprintf(what, sizeof(what), "%s/%s", name, CERTSTORE_CSR_FILE);
                        set_openssl_error(ret_error, what);
                        return -EBADMSG;
                }
                if (EVP_PKEY_eq(X509_REQ_get0_pubkey(c->csr), c->key) != 1)
                        X509_REQ_free(TAKE_PTR(c->csr));
                BIO_free(TAKE_PTR(b));
        } else if (r != -ENOENT) {
                set_error(ret_error, "%s/%s: %s", name, CERTSTORE_CSR_FILE, strerror(-r));
                return r;
        }

        /* Self-signed: names match and its own key verifies the signature
         * (a matching name alone may be a different CA of the same name). */
        c->self_signed =
                X509_NAME_cmp(X509_get_issuer_name(c->leaf), X509_get_subject_name(c->leaf)) == 0 &&
                X509_verify(c->leaf, X509_get0_pubkey(c->leaf)) == 1;
        ERR_clear_error();

        *ret = TAKE_PTR(c);
        return 0;
}

/* ------------------------------------------------------------------------
 * Creation
 */

static EVP_PKEY *key_generate(CertKeyType t) {
        switch (t) {
        case CERT_KEY_EC_P256:
                return EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
        case CERT_KEY_EC_P384:
                return EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
        case CERT_KEY_RSA_2048:
                return EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t) 2048);
        case CERT_KEY_RSA_3072:
                return EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t) 3072);
        case CERT_KEY_RSA_4096:
                return EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t) 4096);
        default:
                return NULL;
        }
}

static int add_dns_name(GENERAL_NAMES *gens, const char *name) {
        GENERAL_NAME *g;
        ASN1_IA5STRING *s;

        /* RFC 5280 4.2.1.6: one entry per name; DNS names compare without
         * regard to case. */
        for (int i = 0; i < sk_GENERAL_NAME_num(gens); i++) {
                const GENERAL_NAME *o = sk_GENERAL_NAME_value(gens, i);

                if (o->type == GEN_DNS &&
                    (size_t) ASN1_STRING_length(o->d.dNSName) == strlen(name) &&
                    strncasecmp((const char *) ASN1_STRING_get0_data(o->d.dNSName), name, strlen(name)) == 0)
                        return 0;
        }

        s = ASN1_IA5STRING_new();
        if (!s)
                return -ENOMEM;
        if (ASN1_STRING_set(s, name, (int) strlen(name)) != 1) {
                ASN1_IA5STRING_free(s);
                return -ENOMEM;
        }
        g = GENERAL_NAME_new();
        if (!g) {
                ASN1_IA5STRING_free(s);
                return -ENOMEM;
        }
        GENERAL_NAME_set0_value(g, GEN_DNS, s);
        if (sk_GENERAL_NAME_push(gens, g) <= 0) {
                GENERAL_NAME_free(g);
                return -ENOMEM;
        }
        return 0;
}

static int build_sans(const CertParams *p, GENERAL_NAMES **ret) {
        _cleanup_(general_names_freep) GENERAL_NAMES *gens = NULL;
        int r;

        gens = sk_GENERAL_NAME_new_null();
        if (!gens)
                return -ENOMEM;

        /* RFC 6125 6.4.4: clients look at the SAN and ignore the CN when a
         * SAN is present, so the CN must be in it too. */
        r = add_dns_name(gens, p->common_name);
        if (r < 0)
                return r;
        for (char * const *s = p->sans; s && *s; s++) {
                r = add_dns_name(gens, *s);
                if (r < 0)
                        return r;
        }

        *ret = TAKE_PTR(gens);
        return 0;
}

static int build_subject(const CertParams *p, X509_NAME **ret) {
        _cleanup_(X509_NAME_freep) X509_NAME *n = NULL;

        n = X509_NAME_new();
        if (!n)
                return -ENOMEM;
        if (p->organization &&
            X509_NAME_add_entry_by_NID(n, NID_organizationName, MBSTRING_UTF8,
                                       (const unsigned char *) p->organization, -1, -1, 0) != 1)
                return -EIO;
        if (X509_NAME_add_entry_by_NID(n, NID_commonName, MBSTRING_UTF8,
                                       (const unsigned char *) p->common_name, -1, -1, 0) != 1)
                return -EIO;

        *ret = TAKE_PTR(n);
        return 0;
}

static int set_random_serial(X509 *x) {
        _cleanup_(ASN1_INTEGER_freep) ASN1_INTEGER *ai = NULL;
        _cleanup_(BN_freep) BIGNUM *bn = NULL;
        unsigned char b[CERTSTORE_SERIAL_BYTES];

        if (RAND_bytes(b, sizeof(b)) != 1)
                return -EIO;
        b[0] &= 0x7f;
        /* Never zero (RFC 5280 4.1.2.2 wants a positive integer). */
        b[sizeof(b) - 1] |= 0x01;

        bn = BN_bin2bn(b, sizeof(b), NULL);
        if (!bn)
                return -ENOMEM;
        ai = BN_to_ASN1_INTEGER(bn, NULL);
        if (!ai)
                return -ENOMEM;
        if (X509_set_serialNumber(x, ai) != 1)
                return -EIO;
        return 0;
}

/* basicConstraints, keyUsage, extendedKeyUsage, subjectKeyIdentifier. */
static int add_leaf_extensions(X509 *x, EVP_PKEY *key) {
        _cleanup_(BASIC_CONSTRAINTS_freep) BASIC_CONSTRAINTS *bc = NULL;
        _cleanup_(ASN1_BIT_STRING_freep) ASN1_BIT_STRING *ku = NULL;
        _cleanup_(eku_freep) EXTENDED_KEY_USAGE *eku = NULL;
        _cleanup_(ASN1_OCTET_STRING_freep) ASN1_OCTET_STRING *ski = NULL;
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned md_len = 0;

        /* RFC 5280 4.2.1.9: critical, not a CA. */
        bc = BASIC_CONSTRAINTS_new();
        if (!bc)
                return -ENOMEM;
        bc->ca = 0;
        if (X509_add1_ext_i2d(x, NID_basic_constraints, bc, 1, X509V3_ADD_DEFAULT) != 1)
                return -EIO;

        /* RFC 5280 4.2.1.3 (critical) and RFC 5246 7.4.2: signatures for
         * (EC)DHE; RSA key transport in TLS 1.2 needs keyEncipherment. Bit
         * 0 digitalSignature, bit 2 keyEncipherment. */
        ku = ASN1_BIT_STRING_new();
        if (!ku)
                return -ENOMEM;
        if (ASN1_BIT_STRING_set_bit(ku, 0, 1) != 1)
                return -ENOMEM;
        if (EVP_PKEY_get_base_id(key) == EVP_PKEY_RSA &&
            ASN1_BIT_STRING_set_bit(ku, 2, 1) != 1)
                return -ENOMEM;
        if (X509_add1_ext_i2d(x, NID_key_usage, ku, 1, X509V3_ADD_DEFAULT) != 1)
                return -EIO;

        /* RFC 5280 4.2.1.12: the same certificate serves inbound STARTTLS
         * and outbound client authentication. */
        eku = sk_ASN1_OBJECT_new_null();
        if (!eku)
                return -ENOMEM;
        if (sk_ASN1_OBJECT_push(eku, OBJ_nid2obj(NID_server_auth)) <= 0 ||
            sk_ASN1_OBJECT_push(eku, OBJ_nid2obj(NID_client_auth)) <= 0)
                return -ENOMEM;
        if (X509_add1_ext_i2d(x, NID_ext_key_usage, eku, 0, X509V3_ADD_DEFAULT) != 1)
                return -EIO;

        /* RFC 5280 4.2.1.2 method (1): SHA-1 of the subjectPublicKey bits. */
        if (X509_pubkey_digest(x, EVP_sha1(), md, &md_len) != 1)
                return -EIO;
        ski = ASN1_OCTET_STRING_new();
        if (!ski)
                return -ENOMEM;
        if (ASN1_OCTET_STRING_set(ski, md, (int) md_len) != 1)
                return -ENOMEM;
        if (X509_add1_ext_i2d(x, NID_subject_key_identifier, ski, 0, X509V3_ADD_DEFAULT) != 1)
                return -EIO;

        return 0;
}

static int build_certificate(const CertParams *p, EVP_PKEY *key, X509_NAME *subject,
                             GENERAL_NAMES *sans, X509 **ret) {
        _cleanup_(X509_freep) X509 *x = NULL;
        int r;

        x = X509_new();
        if (!x)
                return -ENOMEM;
        if (X509_set_version(x, X509_VERSION_3) != 1)
                return -EIO;
        r = set_random_serial(x);
        if (r < 0)
                return r;
        if (!X509_gmtime_adj(X509_getm_notBefore(x), 0) ||
            !X509_time_adj_ex(X509_getm_notAfter(x), (int) p->days, 0, NULL))
                return -EIO;
        if (X509_set_subject_name(x, subject) != 1 ||
            X509_set_issuer_name(x, subject) != 1 ||
            X509_set_pubkey(x, key) != 1)
                return -EIO;
        if (X509_add1_ext_i2d(x, NID_subject_alt_name, sans, 0, X509V3_ADD_DEFAULT) != 1)
                return -EIO;
        r = add_leaf_extensions(x, key);
        if (r < 0)
                return r;
        if (X509_sign(x, key, EVP_sha256()) <= 0)
                return -EIO;

        *ret = TAKE_PTR(x);
        return 0;
}

static int build_request(EVP_PKEY *key, X509_NAME *subject, GENERAL_NAMES *sans, X509_REQ **ret) {
        _cleanup_(extensions_freep) STACK_OF(X509_EXTENSION) *exts = NULL;
        _cleanup_(X509_REQ_freep) X509_REQ *req = NULL;

        req = X509_REQ_new();
        if (!req)
                return -ENOMEM;
        if (X509_REQ_set_version(req, X509_REQ_VERSION_1) != 1 ||
            X509_REQ_set_subject_name(req, subject) != 1 ||
            X509_REQ_set_pubkey(req, key) != 1)
                return -EIO;

        /* RFC 2986 extensionRequest (RFC 2985 5.4.2) with the same names, so
         * a CA issues the certificate this one stands in for. */
        if (X509V3_add1_i2d(&exts, NID_subject_alt_name, sans, 0, X509V3_ADD_DEFAULT) != 1)
                return -EIO;
        if (X509_REQ_add_extensions(req, exts) != 1)
                return -EIO;
        if (X509_REQ_sign(req, key, EVP_sha256()) <= 0)
                return -EIO;

        *ret = TAKE_PTR(req);
        return 0;
}

typedef enum PemKind {
        PEM_KIND_KEY,
        PEM_KIND_CERT,
        PEM_KIND_CSR,
} PemKind;

/* Writes OBJ as PEM to DIR_FD/FILE through "FILE.tmp" (O_EXCL, MODE),
 * fsync and rename; the caller fsyncs the directory. */
static int write_pem_atomic(int dir_fd, const char *file, mode_t mode, PemKind kind, void *obj,
                            char **ret_error) {
        _cleanup_free_ char *tmp = NULL;
        _cleanup_(BIO_freep) BIO *b = NULL;
        _cleanup_close_ int fd = -EBADF;
        int ok, r;

        if (asprintf(&tmp, "%s.tmp", file) < 0)
                return -ENOMEM;

        fd = openat(dir_fd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
        if (fd < 0) {
                r = -errno;
                set_error(ret_error, "%s: %s", tmp, strerror(-r));
                return r;
        }

        b = BIO_new_fd(fd, BIO_NOCLOSE);
        if (!b) {
                r = -ENOMEM;
                goto fail;
        }

        ERR_clear_error();
        switch (kind) {
        case PEM_KIND_KEY:
                ok = PEM_write_bio_PrivateKey(b, obj, NULL, NULL, 0, NULL, NULL);
                break;
        case PEM_KIND_CERT:
                ok = PEM_write_bio_X509(b, obj);
                break;
        case PEM_KIND_CSR:
                ok = PEM_write_bio_X509_REQ(b, obj);
                break;
        default:
                ok = 0;
        }
        if (ok != 1 || BIO_flush(b) != 1) {
                set_openssl_error(ret_error, file);
                r = -EIO;
                goto fail;
        }

        if (fsync(fd) < 0) {
                r = -errno;
                set_error(ret_error, "%s: fsync: %s", file, strerror(-r));
                goto fail;
        }
        if (renameat(dir_fd, tmp, dir_fd, file) < 0) {
                r = -errno;
                set_error(ret_error, "%s: rename: %s", file, strerror(-r));
                goto fail;
        }
        return 0;

fail:
        (void) unlinkat(dir_fd, tmp, 0);
        return r;
}

/* Removes a temporary certificate directory and what create put in it. */
static void remove_tmpdir(int dir_fd, const char *tmpname) {
        static const char * const files[] = {
                CERTSTORE_KEY_FILE, CERTSTORE_KEY_FILE ".tmp",
                CERTSTORE_CERT_FILE, CERTSTORE_CERT_FILE ".tmp",
                CERTSTORE_CSR_FILE, CERTSTORE_CSR_FILE ".tmp",
        };
        _cleanup_close_ int fd = -EBADF;

        fd = openat(dir_fd, tmpname, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
        if (fd >= 0)
                for (size_t i = 0; i < ELEMENTSOF(files); i++)
                        (void) unlinkat(fd, files[i], 0);
        (void) unlinkat(dir_fd, tmpname, AT_REMOVEDIR);
}

static int check_params(const CertParams *p, char **ret_error) {
        size_t n;

        if (!p) {
                set_error(ret_error, "no certificate parameters");
                return -EINVAL;
        }
        if (isempty(p->common_name) || strlen(p->common_name) > CERTSTORE_CN_MAX ||
            !san_name_is_valid(p->common_name)) {
                set_error(ret_error, "common name must be a DNS name of at most %d characters",
                          CERTSTORE_CN_MAX);
                return -EINVAL;
        }
        n = strv_length(p->sans);
        if (n > CERTSTORE_SANS_MAX) {
                set_error(ret_error, "more than %d subject alternative names", CERTSTORE_SANS_MAX);
                return -EINVAL;
        }
        for (size_t i = 0; i < n; i++)
                if (!san_name_is_valid(p->sans[i])) {
                        set_error(ret_error, "subject alternative name is not a DNS name");
                        return -EINVAL;
                }
        if (!cert_key_type_to_string(p->key_type)) {
                set_error(ret_error, "unknown key type");
                return -EINVAL;
        }
        if (p->days < CERTSTORE_DAYS_MIN || p->days > CERTSTORE_DAYS_MAX) {
                set_error(ret_error, "validity must be %u..%u days", CERTSTORE_DAYS_MIN, CERTSTORE_DAYS_MAX);
                return -EINVAL;
        }
        if (p->organization &&
            (isempty(p->organization) || strlen(p->organization) > CERTSTORE_ORG_MAX)) {
                set_error(ret_error, "organization must be 1..%d characters", CERTSTORE_ORG_MAX);
                return -EINVAL;
        }
        return 0;
}

static int certstore_write_new(CertStore *cs, const char *name, EVP_PKEY *key, X509 *cert,
                               X509_REQ *req, char **ret_error) {
        _cleanup_free_ char *tmppath = NULL;
        _cleanup_close_ int tfd = -EBADF;
        const char *tmpname;
        int r;

        if (asprintf(&tmppath, "%s/.tmp-%s-XXXXXX", cs->dir, name) < 0)
                return -ENOMEM;
        if (!mkdtemp(tmppath)) {
                r = -errno;
                set_error(ret_error, "%s: %s", cs->dir, strerror(-r));
                return r;
        }
        tmpname = strrchr(tmppath, '/') + 1;

        tfd = openat(cs->dir_fd, tmpname, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
        if (tfd < 0) {
                r = -errno;
                set_error(ret_error, "%s: %s", tmppath, strerror(-r));
                goto fail;
        }

        r = write_pem_atomic(tfd, CERTSTORE_KEY_FILE, 0600, PEM_KIND_KEY, key, ret_error);
        if (r < 0)
                goto fail;
        r = write_pem_atomic(tfd, CERTSTORE_CERT_FILE, 0644, PEM_KIND_CERT, cert, ret_error);
        if (r < 0)
                goto fail;
        r = write_pem_atomic(tfd, CERTSTORE_CSR_FILE, 0644, PEM_KIND_CSR, req, ret_error);
        if (r < 0)
                goto fail;
        if (fsync(tfd) < 0) {
                r = -errno;
                set_error(ret_error, "%s: fsync: %s", tmppath, strerror(-r));
                goto fail;
        }

        /* Publish without replacing: a NAME made meanwhile wins. */
        if (renameat2(cs->dir_fd, tmpname, cs->dir_fd, name, RENAME_NOREPLACE) < 0) {
                r = -errno;
                if (r == -EINVAL) {
                        /* File system without RENAME_NOREPLACE: a plain
                         * rename still refuses a non-empty NAME. */
                        if (renameat(cs->dir_fd, tmpname, cs->dir_fd, name) >= 0)
                                r = 0;
                        else
                                r = errno == ENOTEMPTY ? -EEXIST : -errno;
                }
                if (r < 0) {
                        if (r == -EEXIST)
                                set_error(ret_error, "certificate %s exists", name);
                        else
                                set_error(ret_error, "%s: rename: %s", name, strerror(-r));
                        goto fail;
                }
        }
        /* The certificate is complete on disk; only the directory entry may
         * still be lost to a crash, which leaves no NAME at all. */
        if (fsync(cs->dir_fd) < 0) {
                r = -errno;
                set_error(ret_error, "%s: fsync: %s", cs->dir, strerror(-r));
                return r;
        }
        return 0;

fail:
        remove_tmpdir(cs->dir_fd, tmpname);
        return r;
}

int certstore_create(CertStore *cs, const char *name, const CertParams *p, char **ret_error) {
        _cleanup_(general_names_freep) GENERAL_NAMES *sans = NULL;
        _cleanup_(X509_NAME_freep) X509_NAME *subject = NULL;
        _cleanup_(EVP_PKEY_freep) EVP_PKEY *key = NULL;
        _cleanup_(X509_REQ_freep) X509_REQ *req = NULL;
        _cleanup_(X509_freep) X509 *cert = NULL;
        int r;

        if (!cs)
                return -EINVAL;
        if (!certstore_name_is_valid(name)) {
                set_error(ret_error, "invalid certificate name: 1..%d characters of A-Z a-z 0-9 . _ -, "
                          "not starting with a dot", CERTSTORE_NAME_MAX);
                return -EINVAL;
        }
        r = check_params(p, ret_error);
        if (r < 0)
                return r;

        /* Checked early so a taken name costs no key generation; the final
         * rename checks again. */
        if (faccessat(cs->dir_fd, name, F_OK, AT_SYMLINK_NOFOLLOW) >= 0) {
                set_error(ret_error, "certificate %s exists", name);
                return -EEXIST;
        }

        ERR_clear_error();
        key = key_generate(p->key_type);
        if (!key) {
                set_openssl_error(ret_error, "key generation");
                return -EIO;
        }

        r = build_subject(p, &subject);
        if (r >= 0)
                r = build_sans(p, &sans);
        if (r >= 0)
                r = build_certificate(p, key, subject, sans, &cert);
        if (r >= 0)
                r = build_request(key, subject, sans, &req);
        if (r < 0) {
                set_openssl_error(ret_error, "building certificate");
                return r;
        }

        return certstore_write_new(cs, name, key, cert, req, ret_error);
}

int certstore_ensure_demo(CertStore *cs, const char *hostname, bool *ret_created) {
        CertParams p = {
                .common_name = hostname,
                .sans = NULL,                   /* the CN is always in the SAN */
                .key_type = CERT_KEY_EC_P256,
                .days = CERTSTORE_DEMO_DAYS,
                .organization = CERTSTORE_DEMO_ORGANIZATION,
        };
        int r;

        if (!cs || isempty(hostname))
                return -EINVAL;

        if (certstore_exists(cs, CERTSTORE_DEMO_NAME)) {
                if (ret_created)
                        *ret_created = false;
                return 0;
        }

        r = certstore_create(cs, CERTSTORE_DEMO_NAME, &p, NULL);
        if (r == -EEXIST && certstore_exists(cs, CERTSTORE_DEMO_NAME)) {
                /* Another process made it meanwhile. */
                if (ret_created)
                        *ret_created = false;
                return 0;
        }
        if (r < 0)
                return r;

        if (ret_created)
                *ret_created = true;
        return 0;
}
