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

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
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
#include <openssl/pkcs12.h>
#include <openssl/provider.h>
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
         * a CA issues the certificate this one stands in for (none for a
         * renewed certificate that had no SAN). */
        if (sans) {
                if (X509V3_add1_i2d(&exts, NID_subject_alt_name, sans, 0, X509V3_ADD_DEFAULT) != 1)
                        return -EIO;
                if (X509_REQ_add_extensions(req, exts) != 1)
                        return -EIO;
        }
        if (X509_REQ_sign(req, key, EVP_sha256()) <= 0)
                return -EIO;

        *ret = TAKE_PTR(req);
        return 0;
}

typedef enum PemKind {
        PEM_KIND_KEY,
        PEM_KIND_CERT,
        PEM_KIND_CSR,
        PEM_KIND_CHAIN,                 /* a STACK_OF(X509), in stack order */
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
        case PEM_KIND_CHAIN:
                ok = 1;
                for (int i = 0; ok == 1 && i < sk_X509_num(obj); i++)
                        ok = PEM_write_bio_X509(b, sk_X509_value(obj, i));
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

/* Removes a flat directory of the store (a temporary or a retired
 * certificate directory) with every file in it. Best effort: what is left
 * is a dot-name the store never loads. */
static void remove_dir(int dir_fd, const char *dirname) {
        _cleanup_close_ int fd = -EBADF;
        DIR *d;

        fd = openat(dir_fd, dirname, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
        if (fd >= 0) {
                d = fdopendir(fd);
                if (d) {
                        struct dirent *de;

                        TAKE_FD(fd);            /* owned by d now */
                        while ((de = readdir(d)))
                                if (!streq(de->d_name, ".") && !streq(de->d_name, ".."))
                                        (void) unlinkat(dirfd(d), de->d_name, 0);
                        closedir(d);
                }
        }
        (void) unlinkat(dir_fd, dirname, AT_REMOVEDIR);
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

/* Builds a complete certificate directory ".tmp-NAME-XXXXXX" in the store
 * with key, cert, chain (when non-empty) and csr (when non-NULL), every
 * file and the directory fsynced. *ret_tmpname is its name in the store. */
static int write_tmp_entry(CertStore *cs, const char *name, EVP_PKEY *key, X509 *cert,
                           STACK_OF(X509) *chain, X509_REQ *req, char **ret_tmpname, char **ret_error) {
        _cleanup_free_ char *tmppath = NULL, *tmpname = NULL;
        _cleanup_close_ int tfd = -EBADF;
        int r;

        if (asprintf(&tmppath, "%s/.tmp-%s-XXXXXX", cs->dir, name) < 0)
                return -ENOMEM;
        if (!mkdtemp(tmppath)) {
                r = -errno;
                set_error(ret_error, "%s: %s", cs->dir, strerror(-r));
                return r;
        }
        tmpname = strdup(strrchr(tmppath, '/') + 1);
        if (!tmpname) {
                (void) rmdir(tmppath);
                return -ENOMEM;
        }

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
        if (chain && sk_X509_num(chain) > 0) {
                r = write_pem_atomic(tfd, CERTSTORE_CHAIN_FILE, 0644, PEM_KIND_CHAIN, chain, ret_error);
                if (r < 0)
                        goto fail;
        }
        if (req) {
                r = write_pem_atomic(tfd, CERTSTORE_CSR_FILE, 0644, PEM_KIND_CSR, req, ret_error);
                if (r < 0)
                        goto fail;
        }
        if (fsync(tfd) < 0) {
                r = -errno;
                set_error(ret_error, "%s: fsync: %s", tmppath, strerror(-r));
                goto fail;
        }

        *ret_tmpname = TAKE_PTR(tmpname);
        return 0;

fail:
        remove_dir(cs->dir_fd, tmpname);
        return r;
}

static int certstore_write_new(CertStore *cs, const char *name, EVP_PKEY *key, X509 *cert,
                               STACK_OF(X509) *chain, X509_REQ *req, char **ret_error) {
        _cleanup_free_ char *tmpname = NULL;
        int r;

        r = write_tmp_entry(cs, name, key, cert, chain, req, &tmpname, ret_error);
        if (r < 0)
                return r;

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
                        remove_dir(cs->dir_fd, tmpname);
                        return r;
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

        return certstore_write_new(cs, name, key, cert, NULL, req, ret_error);
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

/* ------------------------------------------------------------------------
 * Administration: listing, upload, PKCS#12, renewal, deletion, inspection
 */

/* PBKDF2 iterations of an exported PKCS#12 (key bag, certificate bag and
 * MAC). OpenSSL's own default (PKCS12_DEFAULT_ITER) is 2048, the floor the
 * control plane promises; 100000 of HMAC-SHA256 cost tens of milliseconds
 * per export and make guessing a weak password far slower. */
#define CERTSTORE_PKCS12_ITER 100000
/* A password longer than this is not a password but a mistake (a file
 * passed by name). */
#define CERTSTORE_PASSWORD_MAX 1024
/* Seconds per day, for validity arithmetic. */
#define CERTSTORE_SEC_PER_DAY 86400
/* "2026-03-01 12:00:00 UTC" */
#define CERTSTORE_DATE_MAX 32

DEFINE_TRIVIAL_CLEANUP_FUNC(PKCS12 *, PKCS12_free);
DEFINE_TRIVIAL_CLEANUP_FUNC(X509_STORE *, X509_STORE_free);
DEFINE_TRIVIAL_CLEANUP_FUNC(X509_STORE_CTX *, X509_STORE_CTX_free);

static int strcmp_ptr(const void *a, const void *b) {
        return strcmp(*(char * const *) a, *(char * const *) b);
}

int certstore_list(CertStore *cs, char ***ret_names) {
        _cleanup_strv_free_ char **names = NULL;
        _cleanup_close_ int fd = -EBADF;
        size_t n = 0, allocated = 0;
        struct dirent *de;
        DIR *d;

        if (!cs || !ret_names)
                return -EINVAL;

        /* A fresh descriptor: readdir position must not be shared. */
        fd = openat(cs->dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        d = fdopendir(fd);
        if (!d)
                return -errno;
        TAKE_FD(fd);

        names = calloc(1, sizeof(char *));
        if (!names) {
                closedir(d);
                return -ENOMEM;
        }
        allocated = 1;

        while ((de = readdir(d))) {
                /* Dot names are temporaries and retired directories. */
                if (!certstore_name_is_valid(de->d_name) || !certstore_exists(cs, de->d_name))
                        continue;
                if (n + 2 > allocated) {
                        size_t na = allocated * 2 + 8;
                        char **nn = reallocarray(names, na, sizeof(char *));

                        if (!nn) {
                                closedir(d);
                                return -ENOMEM;
                        }
                        names = nn;
                        allocated = na;
                }
                names[n] = strdup(de->d_name);
                if (!names[n]) {
                        closedir(d);
                        return -ENOMEM;
                }
                names[++n] = NULL;
        }
        closedir(d);

        qsort(names, n, sizeof(char *), strcmp_ptr);
        *ret_names = TAKE_PTR(names);
        return 0;
}

/* D-Bus strings must be UTF-8 and messages must not carry control
 * characters: anything from a certificate is passed through this. */
static void sanitize_text(char *s) {
        for (unsigned char *p = (unsigned char *) s; p && *p; p++)
                if (*p < 0x20 || *p == 0x7f)
                        *p = '?';
}

/* "CN=mx.example.com, O=Example": RFC 4514 order (most specific first),
 * UTF-8 kept, control characters replaced. */
static char *name_to_string(const X509_NAME *n) {
        _cleanup_(BIO_freep) BIO *b = NULL;
        unsigned long flags = XN_FLAG_SEP_CPLUS_SPC | XN_FLAG_DN_REV | XN_FLAG_FN_SN |
                (ASN1_STRFLGS_RFC2253 & ~ASN1_STRFLGS_ESC_MSB);
        char *data, *s;
        long len;

        b = BIO_new(BIO_s_mem());
        if (!b)
                return NULL;
        if (X509_NAME_print_ex(b, n, 0, flags) < 0) {
                ERR_clear_error();
                return strdup("?");
        }
        len = BIO_get_mem_data(b, &data);
        s = strndup(data ?: "", len > 0 ? (size_t) len : 0);
        if (!s)
                return NULL;
        sanitize_text(s);
        return s;
}

/* The label used in messages: the subject, or "?" when it cannot be had. */
static char *cert_label(const X509 *x) {
        char *s = name_to_string(X509_get_subject_name(x));

        return s ?: strdup("?");
}

static int asn1_time_to_usec(const ASN1_TIME *t, uint64_t *ret) {
        struct tm tm = {};
        time_t sec;

        if (ASN1_TIME_to_tm(t, &tm) != 1)
                return -EINVAL;
        sec = timegm(&tm);
        *ret = sec > 0 ? (uint64_t) sec * USEC_PER_SEC : 0;
        return 0;
}

static const char *asn1_time_to_date(const ASN1_TIME *t, char buf[static CERTSTORE_DATE_MAX]) {
        struct tm tm = {};

        if (ASN1_TIME_to_tm(t, &tm) != 1 ||
            strftime(buf, CERTSTORE_DATE_MAX, "%Y-%m-%d %H:%M:%S UTC", &tm) == 0)
                snprintf(buf, CERTSTORE_DATE_MAX, "an unreadable date");
        return buf;
}

/* Did ISSUER issue SUBJECT: names, key identifiers and key usage agree
 * (RFC 5280 6.1.3) and the issuer's key verifies the signature. */
static bool cert_issued(X509 *issuer, X509 *subject) {
        bool r;

        r = X509_check_issued(issuer, subject) == X509_V_OK &&
                X509_verify(subject, X509_get0_pubkey(issuer)) == 1;
        ERR_clear_error();
        return r;
}

static bool cert_is_self_signed(X509 *x) {
        return cert_issued(x, x);
}

static bool cert_time_valid(X509 *x, time_t now) {
        return X509_cmp_time(X509_get0_notAfter(x), &now) > 0 &&
                X509_cmp_time(X509_get0_notBefore(x), &now) <= 0;
}

/* What is wrong with a set of intermediates for a leaf. All stacks hold
 * their own references. */
typedef struct ChainReport {
        STACK_OF(X509) *path;           /* issuer of the leaf first, each issuing the one before */
        STACK_OF(X509) *duplicates;     /* further copies of a certificate, dropped */
        STACK_OF(X509) *unrelated;      /* issued none of the certificates on the path */
        STACK_OF(X509) *expired;        /* outside their validity now */
        X509 *not_issuer;               /* the first intermediate, when none issued the leaf */
        bool reordered;                 /* the path is not the input order */
} ChainReport;

static void chain_report_done(ChainReport *r) {
        sk_X509_pop_free(r->path, X509_free);
        sk_X509_pop_free(r->duplicates, X509_free);
        sk_X509_pop_free(r->unrelated, X509_free);
        sk_X509_pop_free(r->expired, X509_free);
        X509_free(r->not_issuer);
        *r = (ChainReport) {};
}

static int push_ref(STACK_OF(X509) *sk, X509 *x) {
        if (X509_up_ref(x) != 1)
                return -ENOMEM;
        if (sk_X509_push(sk, x) <= 0) {
                X509_free(x);
                return -ENOMEM;
        }
        return 0;
}

/* Orders IN from the leaf upwards: the path follows issuers (each
 * intermediate must have issued the certificate before it) and stops at a
 * self-signed certificate or when no further issuer is in the set. */
static int chain_analyze(X509 *leaf, STACK_OF(X509) *in, ChainReport *ret) {
        _cleanup_(x509_stack_freep) STACK_OF(X509) *uniq = NULL;
        ChainReport rep = {};
        bool used[CERTSTORE_CHAIN_MAX * 2] = {};
        time_t now = time(NULL);
        X509 *cur = leaf;
        int n, r;

        uniq = sk_X509_new_null();
        rep.path = sk_X509_new_null();
        rep.duplicates = sk_X509_new_null();
        rep.unrelated = sk_X509_new_null();
        rep.expired = sk_X509_new_null();
        if (!uniq || !rep.path || !rep.duplicates || !rep.unrelated || !rep.expired) {
                r = -ENOMEM;
                goto fail;
        }

        for (int i = 0; i < sk_X509_num(in); i++) {
                X509 *x = sk_X509_value(in, i);
                bool dup = false;

                for (int j = 0; j < sk_X509_num(uniq) && !dup; j++)
                        dup = X509_cmp(sk_X509_value(uniq, j), x) == 0;
                r = push_ref(dup ? rep.duplicates : uniq, x);
                if (r < 0)
                        goto fail;
        }
        n = sk_X509_num(uniq);
        if ((size_t) n > ELEMENTSOF(used)) {
                r = -E2BIG;
                goto fail;
        }

        /* Bounded: every step takes an unused certificate. */
        while (!cert_is_self_signed(cur)) {
                int found = -1;

                for (int i = 0; i < n && found < 0; i++)
                        if (!used[i] && cert_issued(sk_X509_value(uniq, i), cur))
                                found = i;
                if (found < 0)
                        break;
                used[found] = true;
                cur = sk_X509_value(uniq, found);
                r = push_ref(rep.path, cur);
                if (r < 0)
                        goto fail;
                if (sk_X509_value(uniq, sk_X509_num(rep.path) - 1) != cur)
                        rep.reordered = true;
        }

        if (n > 0 && sk_X509_num(rep.path) == 0) {
                if (X509_up_ref(sk_X509_value(uniq, 0)) != 1) {
                        r = -ENOMEM;
                        goto fail;
                }
                rep.not_issuer = sk_X509_value(uniq, 0);
        }
        for (int i = 0; i < n; i++) {
                X509 *x = sk_X509_value(uniq, i);

                if (!used[i] && !rep.not_issuer) {
                        r = push_ref(rep.unrelated, x);
                        if (r < 0)
                                goto fail;
                }
                if (!cert_time_valid(x, now)) {
                        r = push_ref(rep.expired, x);
                        if (r < 0)
                                goto fail;
                }
        }

        *ret = rep;
        return 0;

fail:
        chain_report_done(&rep);
        return r;
}

/* The refusal for a report, or 0: refusals are the ones a TLS client
 * would fail on; duplicates and order are repaired, not refused. */
static int chain_report_refuse(const ChainReport *rep, char **ret_error) {
        _cleanup_free_ char *label = NULL;
        char date[CERTSTORE_DATE_MAX];

        if (rep->not_issuer) {
                label = cert_label(rep->not_issuer);
                set_error(ret_error, "intermediate %s did not issue the certificate", label ?: "?");
                return -EINVAL;
        }
        if (sk_X509_num(rep->unrelated) > 0) {
                label = cert_label(sk_X509_value(rep->unrelated, 0));
                set_error(ret_error, "intermediate %s is unrelated: it issued no certificate of the chain",
                          label ?: "?");
                return -EINVAL;
        }
        if (sk_X509_num(rep->expired) > 0) {
                X509 *x = sk_X509_value(rep->expired, 0);
                time_t now = time(NULL);

                label = cert_label(x);
                if (X509_cmp_time(X509_get0_notAfter(x), &now) <= 0)
                        set_error(ret_error, "intermediate %s is expired (since %s)", label ?: "?",
                                  asn1_time_to_date(X509_get0_notAfter(x), date));
                else
                        set_error(ret_error, "intermediate %s is not valid before %s", label ?: "?",
                                  asn1_time_to_date(X509_get0_notBefore(x), date));
                return -EINVAL;
        }
        return 0;
}

static int strv_push_printf(char ***l, size_t *n, const char *fmt, ...) _printf_(3, 4);
static int strv_push_printf(char ***l, size_t *n, const char *fmt, ...) {
        va_list ap;
        char **nl, *s;
        int k;

        va_start(ap, fmt);
        k = vasprintf(&s, fmt, ap);
        va_end(ap);
        if (k < 0)
                return -ENOMEM;
        nl = reallocarray(*l, *n + 2, sizeof(char *));
        if (!nl) {
                free(s);
                return -ENOMEM;
        }
        nl[(*n)++] = s;
        nl[*n] = NULL;
        *l = nl;
        return 0;
}

/* Parses all certificates of PEM text (NULL or empty: none) onto OUT. */
static int parse_pem_certificates(const char *pem, STACK_OF(X509) *out, const char *what, char **ret_error) {
        _cleanup_(BIO_freep) BIO *b = NULL;
        size_t len;

        if (isempty(pem))
                return 0;
        len = strlen(pem);
        if (len > CERTSTORE_FILE_MAX) {
                set_error(ret_error, "%s: PEM text larger than %d bytes", what, CERTSTORE_FILE_MAX);
                return -EFBIG;
        }
        b = BIO_new_mem_buf(pem, (int) len);
        if (!b)
                return -ENOMEM;
        return read_certificates(b, out, what, ret_error);
}

/* Replaces NAME by a complete new directory in one step: the new one is
 * built beside it and swapped in with RENAME_EXCHANGE, so a reader (a
 * reload, a TLS context build) sees the old or the new set of files. */
static int certstore_replace(CertStore *cs, const char *name, EVP_PKEY *key, X509 *cert,
                             STACK_OF(X509) *chain, X509_REQ *req, char **ret_error) {
        _cleanup_free_ char *tmpname = NULL;
        int r;

        r = write_tmp_entry(cs, name, key, cert, chain, req, &tmpname, ret_error);
        if (r < 0)
                return r;

        if (renameat2(cs->dir_fd, tmpname, cs->dir_fd, name, RENAME_EXCHANGE) < 0) {
                r = -errno;
                set_error(ret_error, "%s: replacing the certificate: %s", name, strerror(-r));
                remove_dir(cs->dir_fd, tmpname);
                return r;
        }
        /* tmpname now holds the previous files. */
        if (fsync(cs->dir_fd) < 0) {
                r = -errno;
                /* The exchange happened; the old files remain as a dot
                 * directory nothing loads, which is harmless. */
                set_error(ret_error, "%s: fsync: %s", cs->dir, strerror(-r));
                return r;
        }
        remove_dir(cs->dir_fd, tmpname);
        return 0;
}

static int load_existing(CertStore *cs, const char *name, Certificate **ret, char **ret_error) {
        int r;

        if (!certstore_name_is_valid(name)) {
                set_error(ret_error, "invalid certificate name: 1..%d characters of A-Z a-z 0-9 . _ -, "
                          "not starting with a dot", CERTSTORE_NAME_MAX);
                return -EINVAL;
        }
        if (!certstore_exists(cs, name)) {
                set_error(ret_error, "certificate '%s' does not exist", name);
                return -ENOENT;
        }
        r = certstore_load(cs, name, ret, ret_error);
        if (r == -ENOENT)
                /* Half a directory counts as a broken certificate, not a
                 * missing one. */
                r = -EBADMSG;
        return r;
}

int certstore_upload(CertStore *cs, const char *name, const char *cert_pem, const char *chain_pem,
                     char ***ret_notes, char **ret_error) {
        _cleanup_(certificate_unrefp) Certificate *c = NULL;
        _cleanup_(x509_stack_freep) STACK_OF(X509) *certs = NULL;
        _cleanup_(X509_freep) X509 *leaf = NULL;
        _cleanup_strv_free_ char **notes = NULL;
        _cleanup_free_ char *label = NULL;
        ChainReport rep = {};
        char date[CERTSTORE_DATE_MAX];
        time_t now = time(NULL);
        size_t n_notes = 0;
        int r;

        if (!cs)
                return -EINVAL;
        r = load_existing(cs, name, &c, ret_error);
        if (r < 0)
                return r;

        certs = sk_X509_new_null();
        if (!certs)
                return -ENOMEM;
        r = parse_pem_certificates(cert_pem, certs, "certificate", ret_error);
        if (r < 0)
                return r;
        if (sk_X509_num(certs) == 0) {
                set_error(ret_error, "no PEM certificate in the uploaded certificate text");
                return -EBADMSG;
        }
        /* A full-chain file: the certificates after the leaf are
         * intermediates like those of chain_pem. */
        leaf = sk_X509_shift(certs);
        r = parse_pem_certificates(chain_pem, certs, "chain", ret_error);
        if (r < 0)
                return r;

        if (X509_check_private_key(leaf, c->key) != 1) {
                ERR_clear_error();
                set_error(ret_error, "the certificate does not match the private key of '%s'", name);
                return -EBADMSG;
        }
        if (!cert_time_valid(leaf, now)) {
                label = cert_label(leaf);
                if (X509_cmp_time(X509_get0_notAfter(leaf), &now) <= 0)
                        set_error(ret_error, "the certificate %s is expired (since %s)", label ?: "?",
                                  asn1_time_to_date(X509_get0_notAfter(leaf), date));
                else
                        set_error(ret_error, "the certificate %s is not valid before %s", label ?: "?",
                                  asn1_time_to_date(X509_get0_notBefore(leaf), date));
                return -EINVAL;
        }

        r = chain_analyze(leaf, certs, &rep);
        if (r < 0) {
                if (r == -E2BIG)
                        set_error(ret_error, "more than %d chain certificates", CERTSTORE_CHAIN_MAX);
                return r;
        }
        r = chain_report_refuse(&rep, ret_error);
        if (r < 0)
                goto finish;

        for (int i = 0; i < sk_X509_num(rep.duplicates); i++) {
                free(label);
                label = cert_label(sk_X509_value(rep.duplicates, i));
                r = strv_push_printf(&notes, &n_notes, "removed duplicate intermediate %s", label ?: "?");
                if (r < 0)
                        goto finish;
        }
        if (rep.reordered) {
                r = strv_push_printf(&notes, &n_notes, "reordered chain: the issuer of each certificate "
                                     "now follows it, starting with the issuer of the certificate");
                if (r < 0)
                        goto finish;
        }
        if (!notes) {
                notes = calloc(1, sizeof(char *));
                if (!notes) {
                        r = -ENOMEM;
                        goto finish;
                }
        }

        /* The stored CSR stays: it is for the same key and still what a CA
         * would need for the next certificate. */
        r = certstore_replace(cs, name, c->key, leaf, rep.path, c->csr, ret_error);
        if (r < 0)
                goto finish;

        if (ret_notes)
                *ret_notes = TAKE_PTR(notes);
        r = 0;
finish:
        chain_report_done(&rep);
        return r;
}

static pthread_once_t providers_once = PTHREAD_ONCE_INIT;
/* Kept until exit: other threads may use their algorithms at any time. */
static OSSL_PROVIDER *provider_default, *provider_legacy;

static void providers_unload(void) {
        /* Registered after OpenSSL's own exit handler, so it runs before
         * it: the legacy provider's child library context is only freed
         * when the last reference is dropped, otherwise it outlives
         * OpenSSL's cleanup as a leak. */
        if (provider_legacy)
                (void) OSSL_PROVIDER_unload(provider_legacy);
        if (provider_default)
                (void) OSSL_PROVIDER_unload(provider_default);
        provider_legacy = provider_default = NULL;
}

static void providers_load(void) {
        /* Files made with "openssl pkcs12 -export -legacy" (and by older
         * tools) encrypt with RC2-40 or 3DES and PKCS#12 KDFs, which only
         * the legacy provider has. Loading a provider explicitly stops
         * OpenSSL from loading the default one implicitly, so both. They
         * stay loaded for the life of the process; a missing legacy
         * provider only means such files cannot be read. */
        provider_default = OSSL_PROVIDER_load(NULL, "default");
        provider_legacy = OSSL_PROVIDER_load(NULL, "legacy");
        ERR_clear_error();
        (void) atexit(providers_unload);
}

static CertKeyType key_type_of(EVP_PKEY *key) {
        char group[64];
        size_t glen = 0;

        switch (EVP_PKEY_get_base_id(key)) {
        case EVP_PKEY_RSA:
                switch (EVP_PKEY_get_bits(key)) {
                case 2048:
                        return CERT_KEY_RSA_2048;
                case 3072:
                        return CERT_KEY_RSA_3072;
                case 4096:
                        return CERT_KEY_RSA_4096;
                }
                break;
        case EVP_PKEY_EC:
                if (EVP_PKEY_get_utf8_string_param(key, "group", group, sizeof(group), &glen) != 1)
                        break;
                if (streq(group, "prime256v1") || streq(group, "P-256"))
                        return CERT_KEY_EC_P256;
                if (streq(group, "secp384r1") || streq(group, "P-384"))
                        return CERT_KEY_EC_P384;
                break;
        }
        ERR_clear_error();
        return _CERT_KEY_TYPE_INVALID;
}

static bool password_is_valid(const char *password) {
        return password && strnlen(password, CERTSTORE_PASSWORD_MAX + 1) <= CERTSTORE_PASSWORD_MAX;
}

int certstore_import_pkcs12(CertStore *cs, const char *name, const void *data, size_t len,
                            const char *password, char **ret_error) {
        _cleanup_(PKCS12_freep) PKCS12 *p12 = NULL;
        _cleanup_(EVP_PKEY_freep) EVP_PKEY *key = NULL;
        _cleanup_(X509_freep) X509 *cert = NULL;
        _cleanup_(x509_stack_freep) STACK_OF(X509) *ca = NULL;
        _cleanup_(BIO_freep) BIO *b = NULL;
        const char *pass;
        ChainReport rep = {};
        int r;

        if (!cs)
                return -EINVAL;
        if (!certstore_name_is_valid(name)) {
                set_error(ret_error, "invalid certificate name: 1..%d characters of A-Z a-z 0-9 . _ -, "
                          "not starting with a dot", CERTSTORE_NAME_MAX);
                return -EINVAL;
        }
        if (!password_is_valid(password)) {
                set_error(ret_error, "the PKCS#12 password must be at most %d characters",
                          CERTSTORE_PASSWORD_MAX);
                return -EINVAL;
        }
        if (!data || len == 0 || len > CERTSTORE_FILE_MAX) {
                set_error(ret_error, "the PKCS#12 data must be 1..%d bytes", CERTSTORE_FILE_MAX);
                return -EINVAL;
        }
        if (faccessat(cs->dir_fd, name, F_OK, AT_SYMLINK_NOFOLLOW) >= 0) {
                set_error(ret_error, "certificate '%s' exists", name);
                return -EEXIST;
        }

        (void) pthread_once(&providers_once, providers_load);

        ERR_clear_error();
        b = BIO_new_mem_buf(data, (int) len);
        if (!b)
                return -ENOMEM;
        p12 = d2i_PKCS12_bio(b, NULL);
        if (!p12) {
                ERR_clear_error();
                set_error(ret_error, "the data is not a PKCS#12 file");
                return -EBADMSG;
        }

        /* RFC 7292 5.1 and Appendix B.1: an empty password may be encoded
         * as no password or as an empty BMPString; tools differ, so an
         * empty one is tried both ways, as openssl pkcs12 does. */
        pass = password;
        if (PKCS12_mac_present(p12)) {
                if (PKCS12_verify_mac(p12, pass, -1) != 1) {
                        if (isempty(password) && PKCS12_verify_mac(p12, NULL, 0) == 1)
                                pass = NULL;
                        else {
                                ERR_clear_error();
                                set_error(ret_error, "wrong PKCS#12 password");
                                return -EKEYREJECTED;
                        }
                }
        }
        if (PKCS12_parse(p12, pass, &key, &cert, &ca) != 1) {
                /* With the MAC verified, the password is right: what fails
                 * is an algorithm (no legacy provider) or the content. */
                set_openssl_error(ret_error, "cannot read the PKCS#12 file");
                return -EBADMSG;
        }
        ERR_clear_error();
        if (!key) {
                set_error(ret_error, "the PKCS#12 file holds no private key");
                return -EBADMSG;
        }
        if (!cert) {
                set_error(ret_error, "the PKCS#12 file holds no certificate for its private key");
                return -EBADMSG;
        }
        if (X509_check_private_key(cert, key) != 1) {
                ERR_clear_error();
                set_error(ret_error, "the certificate of the PKCS#12 file does not match its private key");
                return -EBADMSG;
        }
        if (key_type_of(key) < 0) {
                set_error(ret_error, "the private key of the PKCS#12 file is of an unsupported type "
                          "(supported: EC P-256, P-384, RSA 2048, 3072, 4096)");
                return -EINVAL;
        }
        if (!ca) {
                ca = sk_X509_new_null();
                if (!ca)
                        return -ENOMEM;
        }

        r = chain_analyze(cert, ca, &rep);
        if (r < 0) {
                if (r == -E2BIG)
                        set_error(ret_error, "more than %d chain certificates", CERTSTORE_CHAIN_MAX);
                return r;
        }
        r = chain_report_refuse(&rep, ret_error);
        if (r >= 0)
                /* The self-signed root, if the file has it, ends the path
                 * like any other issuer; duplicates are dropped. */
                r = certstore_write_new(cs, name, key, cert, rep.path, NULL, ret_error);
        chain_report_done(&rep);
        return r;
}

int certstore_export_pkcs12(CertStore *cs, const char *name, const char *password,
                            void **ret_data, size_t *ret_len, char **ret_error) {
        _cleanup_(certificate_unrefp) Certificate *c = NULL;
        _cleanup_(PKCS12_freep) PKCS12 *p12 = NULL;
        _cleanup_(BIO_freep) BIO *b = NULL;
        char *mem;
        void *out;
        long len;
        int r;

        if (!cs || !ret_data || !ret_len)
                return -EINVAL;
        if (isempty(password) || !password_is_valid(password)) {
                set_error(ret_error, "a PKCS#12 export needs a password of 1..%d characters",
                          CERTSTORE_PASSWORD_MAX);
                return -EINVAL;
        }
        r = load_existing(cs, name, &c, ret_error);
        if (r < 0)
                return r;

        ERR_clear_error();
        /* RFC 8018 PBES2 with PBKDF2 (HMAC-SHA256, OpenSSL's default PRF for
         * PBES2) and AES-256-CBC for both the key bag and the certificates;
         * mac_iter -1 leaves the MAC out here so it is set below with
         * SHA-256 instead of the SHA-1 default (RFC 7292 Appendix B). */
        p12 = PKCS12_create_ex((char *) password, c->name, c->key, c->leaf, c->chain,
                               NID_aes_256_cbc, NID_aes_256_cbc, CERTSTORE_PKCS12_ITER, -1, 0,
                               NULL, NULL);
        if (!p12) {
                set_openssl_error(ret_error, "building the PKCS#12 file");
                return -EIO;
        }
        if (PKCS12_set_mac(p12, password, -1, NULL, 0, CERTSTORE_PKCS12_ITER, EVP_sha256()) != 1) {
                set_openssl_error(ret_error, "adding the PKCS#12 MAC");
                return -EIO;
        }

        b = BIO_new(BIO_s_mem());
        if (!b)
                return -ENOMEM;
        if (i2d_PKCS12_bio(b, p12) != 1) {
                set_openssl_error(ret_error, "encoding the PKCS#12 file");
                return -EIO;
        }
        len = BIO_get_mem_data(b, &mem);
        if (len <= 0) {
                set_error(ret_error, "encoding the PKCS#12 file: no data");
                return -EIO;
        }
        out = malloc((size_t) len);
        if (!out)
                return -ENOMEM;
        memcpy(out, mem, (size_t) len);

        *ret_data = out;
        *ret_len = (size_t) len;
        return 0;
}

/* The digest to sign with: SHA-256 for RSA and EC (RFC 5758 3.2, RFC 4055),
 * none for keys that carry their own (Ed25519, RFC 8410). */
static const EVP_MD *sign_digest(EVP_PKEY *key) {
        int id = EVP_PKEY_get_base_id(key);

        return id == EVP_PKEY_RSA || id == EVP_PKEY_EC ? EVP_sha256() : NULL;
}

/* A new self-signed certificate for the key and subject of OLD with its
 * extensions, a new serial and DAYS of validity from now. The authority
 * key identifier is left out: it may name the old serial (RFC 5280
 * 4.2.1.1 authorityCertSerialNumber) and is optional when self-signed. */
static int resign_self_signed(X509 *old, EVP_PKEY *key, unsigned days, X509 **ret) {
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
            !X509_time_adj_ex(X509_getm_notAfter(x), (int) days, 0, NULL))
                return -EIO;
        if (X509_set_subject_name(x, X509_get_subject_name(old)) != 1 ||
            X509_set_issuer_name(x, X509_get_subject_name(old)) != 1 ||
            X509_set_pubkey(x, key) != 1)
                return -EIO;
        for (int i = 0; i < X509_get_ext_count(old); i++) {
                X509_EXTENSION *e = X509_get_ext(old, i);

                if (OBJ_obj2nid(X509_EXTENSION_get_object(e)) == NID_authority_key_identifier)
                        continue;
                if (X509_add_ext(x, e, -1) != 1)
                        return -EIO;
        }
        if (X509_sign(x, key, sign_digest(key)) <= 0)
                return -EIO;

        *ret = TAKE_PTR(x);
        return 0;
}

int certstore_renew(CertStore *cs, const char *name, unsigned days, char **ret_error) {
        _cleanup_(certificate_unrefp) Certificate *c = NULL;
        _cleanup_(general_names_freep) GENERAL_NAMES *sans = NULL;
        _cleanup_(X509_REQ_freep) X509_REQ *req = NULL;
        _cleanup_(X509_freep) X509 *x = NULL;
        int r;

        if (!cs)
                return -EINVAL;
        r = load_existing(cs, name, &c, ret_error);
        if (r < 0)
                return r;

        ERR_clear_error();
        if (c->self_signed) {
                if (days < CERTSTORE_DAYS_MIN || days > CERTSTORE_DAYS_MAX) {
                        set_error(ret_error, "validity must be %u..%u days", CERTSTORE_DAYS_MIN,
                                  CERTSTORE_DAYS_MAX);
                        return -EINVAL;
                }
                r = resign_self_signed(c->leaf, c->key, days, &x);
                if (r < 0) {
                        set_openssl_error(ret_error, "re-signing the certificate");
                        return r;
                }
                return certstore_replace(cs, name, c->key, x, c->chain, c->csr, ret_error);
        }

        /* CA-signed: only the CA can issue the next certificate; a new
         * request asks for the same subject and names with the same key,
         * and the current certificate serves until the new one is
         * uploaded. */
        sans = X509_get_ext_d2i(c->leaf, NID_subject_alt_name, NULL, NULL);
        ERR_clear_error();
        r = build_request(c->key, X509_get_subject_name(c->leaf), sans, &req);
        if (r < 0) {
                set_openssl_error(ret_error, "building the certificate signing request");
                return r;
        }
        return certstore_replace(cs, name, c->key, c->leaf, c->chain, req, ret_error);
}

int certstore_delete(CertStore *cs, const char *name) {
        _cleanup_free_ char *tmppath = NULL;
        const char *tmpname;

        if (!cs || !certstore_name_is_valid(name))
                return -EINVAL;
        if (faccessat(cs->dir_fd, name, F_OK, AT_SYMLINK_NOFOLLOW) < 0)
                return -errno;

        /* Retire the name in one step (a rename onto an empty directory
         * replaces it), then remove the files at leisure: a crash leaves
         * a dot directory that is never loaded, never half a certificate. */
        if (asprintf(&tmppath, "%s/.deleted-%s-XXXXXX", cs->dir, name) < 0)
                return -ENOMEM;
        if (!mkdtemp(tmppath))
                return -errno;
        tmpname = strrchr(tmppath, '/') + 1;
        if (renameat(cs->dir_fd, name, cs->dir_fd, tmpname) < 0) {
                int r = -errno;

                (void) unlinkat(cs->dir_fd, tmpname, AT_REMOVEDIR);
                return r;
        }
        if (fsync(cs->dir_fd) < 0)
                return -errno;
        remove_dir(cs->dir_fd, tmpname);
        return 0;
}

int certstore_get_csr(CertStore *cs, const char *name, char **ret_pem) {
        _cleanup_(certificate_unrefp) Certificate *c = NULL;
        _cleanup_(BIO_freep) BIO *b = NULL;
        char *data, *s;
        long len;
        int r;

        if (!cs || !ret_pem)
                return -EINVAL;
        r = load_existing(cs, name, &c, NULL);
        if (r < 0)
                return r;
        /* None stored (an imported or hand-installed certificate), or one
         * for another key that the load left out: a request is made for
         * the key, subject and names of the certificate, as a renewal
         * would, but not stored (this is a read). */
        if (!c->csr) {
                _cleanup_(general_names_freep) GENERAL_NAMES *sans = NULL;

                sans = X509_get_ext_d2i(c->leaf, NID_subject_alt_name, NULL, NULL);
                ERR_clear_error();
                r = build_request(c->key, X509_get_subject_name(c->leaf), sans, &c->csr);
                ERR_clear_error();
                if (r < 0)
                        return r;
        }

        b = BIO_new(BIO_s_mem());
        if (!b)
                return -ENOMEM;
        if (PEM_write_bio_X509_REQ(b, c->csr) != 1) {
                ERR_clear_error();
                return -EIO;
        }
        len = BIO_get_mem_data(b, &data);
        s = strndup(data, len > 0 ? (size_t) len : 0);
        if (!s)
                return -ENOMEM;
        *ret_pem = s;
        return 0;
}

static char *fingerprint_of(X509 *x) {
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned md_len = 0;
        char *s;

        if (X509_digest(x, EVP_sha256(), md, &md_len) != 1 || md_len == 0) {
                ERR_clear_error();
                return NULL;
        }
        s = malloc(md_len * 3);
        if (!s)
                return NULL;
        for (unsigned i = 0; i < md_len; i++)
                snprintf(s + i * 3, 4, "%02X%s", md[i], i + 1 < md_len ? ":" : "");
        return s;
}

static int sans_of(X509 *x, char ***ret) {
        _cleanup_(general_names_freep) GENERAL_NAMES *gens = NULL;
        _cleanup_strv_free_ char **l = NULL;
        size_t n = 0;

        l = calloc(1, sizeof(char *));
        if (!l)
                return -ENOMEM;
        gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
        ERR_clear_error();
        for (int i = 0; gens && i < sk_GENERAL_NAME_num(gens); i++) {
                const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
                char **nl, *s;

                if (g->type != GEN_DNS)
                        continue;
                s = strndup((const char *) ASN1_STRING_get0_data(g->d.dNSName),
                            (size_t) MAX(ASN1_STRING_length(g->d.dNSName), 0));
                if (!s)
                        return -ENOMEM;
                /* IA5String: ASCII; anything else would not be UTF-8. */
                for (unsigned char *p = (unsigned char *) s; *p; p++)
                        if (*p < 0x20 || *p >= 0x7f)
                                *p = '?';
                nl = reallocarray(l, n + 2, sizeof(char *));
                if (!nl) {
                        free(s);
                        return -ENOMEM;
                }
                l = nl;
                l[n++] = s;
                l[n] = NULL;
        }
        *ret = TAKE_PTR(l);
        return 0;
}

typedef enum ChainVerdict {
        CHAIN_COMPLETE,
        CHAIN_INCOMPLETE,
        CHAIN_BROKEN,
} ChainVerdict;

/* Verifies leaf + chain up to a trust anchor: the system store, or a
 * self-signed certificate in the chain (a private CA whose root is sent
 * along). Time is not checked here: expiry is its own finding.
 * *ret_reason is OpenSSL's reason when broken. */
static int chain_verify(X509 *leaf, STACK_OF(X509) *chain, ChainVerdict *ret, const char **ret_reason) {
        _cleanup_(X509_STORE_freep) X509_STORE *store = NULL;
        _cleanup_(X509_STORE_CTX_freep) X509_STORE_CTX *ctx = NULL;
        int n = sk_X509_num(chain), err;

        store = X509_STORE_new();
        ctx = X509_STORE_CTX_new();
        if (!store || !ctx)
                return -ENOMEM;
        if (X509_STORE_set_default_paths(store) != 1)
                ERR_clear_error();      /* no system store: chains end in the file */
        /* Wherever it is in the chain: order is a finding of its own. */
        for (int i = 0; i < n; i++)
                if (cert_is_self_signed(sk_X509_value(chain, i)) &&
                    X509_STORE_add_cert(store, sk_X509_value(chain, i)) != 1)
                        return -ENOMEM;
        if (X509_STORE_CTX_init(ctx, store, leaf, chain) != 1)
                return -ENOMEM;
        X509_STORE_CTX_set_flags(ctx, X509_V_FLAG_NO_CHECK_TIME);

        if (X509_verify_cert(ctx) == 1) {
                ERR_clear_error();
                *ret = CHAIN_COMPLETE;
                *ret_reason = NULL;
                return 0;
        }
        ERR_clear_error();
        err = X509_STORE_CTX_get_error(ctx);
        switch (err) {
        case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
        case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
        case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
                *ret = CHAIN_INCOMPLETE;
                *ret_reason = NULL;
                break;
        default:
                *ret = CHAIN_BROKEN;
                *ret_reason = X509_verify_cert_error_string(err);
        }
        return 0;
}

/* "self-signed", "complete", "incomplete" or "broken: <why>". */
static int chain_state_of(const Certificate *c, char **ret) {
        _cleanup_free_ char *label = NULL;
        ChainReport rep = {};
        ChainVerdict v;
        const char *reason;
        char *s = NULL;
        int r;

        if (c->self_signed)
                return (*ret = strdup("self-signed")) ? 0 : -ENOMEM;

        r = chain_analyze(c->leaf, c->chain, &rep);
        if (r < 0)
                return r;
        r = chain_report_refuse(&rep, &s);
        chain_report_done(&rep);
        if (r < 0) {
                if (!s)
                        return -ENOMEM;
                label = s;
                return asprintf(ret, "broken: %s", label) < 0 ? -ENOMEM : 0;
        }

        r = chain_verify(c->leaf, c->chain, &v, &reason);
        if (r < 0)
                return r;
        switch (v) {
        case CHAIN_COMPLETE:
                s = strdup("complete");
                break;
        case CHAIN_INCOMPLETE:
                s = strdup("incomplete");
                break;
        default:
                if (asprintf(&s, "broken: %s", reason ?: "verification failed") < 0)
                        s = NULL;
        }
        if (!s)
                return -ENOMEM;
        *ret = s;
        return 0;
}

void cert_info_done(CertInfo *i) {
        if (!i)
                return;
        free(i->subject);
        free(i->issuer);
        strv_free(i->sans);
        free(i->fingerprint);
        free(i->chain_state);
        *i = (CertInfo) {};
}

int certificate_info(const Certificate *c, CertInfo *ret) {
        _cleanup_(cert_info_done) CertInfo i = {};
        int r;

        if (!c || !c->leaf || !c->key || !ret)
                return -EINVAL;

        i.subject = name_to_string(X509_get_subject_name(c->leaf));
        i.issuer = name_to_string(X509_get_issuer_name(c->leaf));
        i.fingerprint = fingerprint_of(c->leaf);
        if (!i.subject || !i.issuer || !i.fingerprint)
                return -ENOMEM;
        r = sans_of(c->leaf, &i.sans);
        if (r < 0)
                return r;
        if (asn1_time_to_usec(X509_get0_notBefore(c->leaf), &i.not_before) < 0 ||
            asn1_time_to_usec(X509_get0_notAfter(c->leaf), &i.not_after) < 0)
                return -EBADMSG;
        i.key_type = key_type_of(c->key);
        r = chain_state_of(c, &i.chain_state);
        if (r < 0)
                return r;
        i.chain_length = (unsigned) sk_X509_num(c->chain);

        *ret = i;
        i = (CertInfo) {};
        return 0;
}

typedef struct FindingList {
        CertFinding *f;
        size_t n;
} FindingList;

static int finding_add(FindingList *l, const char *name, const char *severity, const char *check,
                       const char *fmt, ...) _printf_(5, 6);
static int finding_add(FindingList *l, const char *name, const char *severity, const char *check,
                       const char *fmt, ...) {
        CertFinding *nf, f = {};
        va_list ap;
        int k;

        va_start(ap, fmt);
        k = vasprintf(&f.message, fmt, ap);
        va_end(ap);
        if (k < 0)
                return -ENOMEM;
        f.name = strdup(name);
        f.severity = strdup(severity);
        f.check = strdup(check);
        nf = reallocarray(l->f, l->n + 1, sizeof(CertFinding));
        if (!f.name || !f.severity || !f.check || !nf) {
                if (nf)
                        l->f = nf;
                free(f.name);
                free(f.severity);
                free(f.check);
                free(f.message);
                return -ENOMEM;
        }
        l->f = nf;
        l->f[l->n++] = f;
        return 0;
}

static int check_expiry(FindingList *l, const char *name, X509 *leaf, unsigned warn_days) {
        char date[CERTSTORE_DATE_MAX];
        time_t now = time(NULL), warn;

        if (X509_cmp_time(X509_get0_notAfter(leaf), &now) <= 0)
                return finding_add(l, name, "error", "expiry", "the certificate expired on %s",
                                   asn1_time_to_date(X509_get0_notAfter(leaf), date));
        if (X509_cmp_time(X509_get0_notBefore(leaf), &now) > 0)
                return finding_add(l, name, "error", "expiry", "the certificate is not valid before %s",
                                   asn1_time_to_date(X509_get0_notBefore(leaf), date));

        warn = now + (time_t) warn_days * CERTSTORE_SEC_PER_DAY;
        if (X509_cmp_time(X509_get0_notAfter(leaf), &warn) <= 0) {
                int days = 0, secs = 0;

                if (ASN1_TIME_diff(&days, &secs, NULL, X509_get0_notAfter(leaf)) != 1)
                        days = 0;
                ERR_clear_error();
                return finding_add(l, name, "warning", "expiry", "the certificate expires in %d day%s, on %s",
                                   days, days == 1 ? "" : "s",
                                   asn1_time_to_date(X509_get0_notAfter(leaf), date));
        }
        return finding_add(l, name, "ok", "expiry", "valid until %s",
                           asn1_time_to_date(X509_get0_notAfter(leaf), date));
}

static int check_chain(FindingList *l, const Certificate *c) {
        char date[CERTSTORE_DATE_MAX];
        ChainReport rep = {};
        ChainVerdict v;
        const char *reason;
        size_t before = l->n;
        bool structural;
        time_t now = time(NULL);
        int r;

        if (c->self_signed)
                return finding_add(l, c->name, "ok", "chain", "self-signed: clients cannot verify it "
                                   "unless they pin it");

        r = chain_analyze(c->leaf, c->chain, &rep);
        if (r < 0)
                return r;

        for (int i = 0; r >= 0 && i < sk_X509_num(rep.duplicates); i++) {
                _cleanup_free_ char *label = cert_label(sk_X509_value(rep.duplicates, i));

                r = finding_add(l, c->name, "warning", "duplicates",
                                "intermediate %s appears more than once in the chain", label ?: "?");
        }
        if (r >= 0 && rep.not_issuer) {
                _cleanup_free_ char *label = cert_label(rep.not_issuer);

                r = finding_add(l, c->name, "error", "chain",
                                "intermediate %s did not issue the certificate", label ?: "?");
        }
        for (int i = 0; r >= 0 && i < sk_X509_num(rep.unrelated); i++) {
                _cleanup_free_ char *label = cert_label(sk_X509_value(rep.unrelated, i));

                r = finding_add(l, c->name, "error", "chain",
                                "intermediate %s is unrelated: it issued no certificate of the chain",
                                label ?: "?");
        }
        for (int i = 0; r >= 0 && i < sk_X509_num(rep.expired); i++) {
                X509 *x = sk_X509_value(rep.expired, i);
                _cleanup_free_ char *label = cert_label(x);

                if (X509_cmp_time(X509_get0_notAfter(x), &now) <= 0)
                        r = finding_add(l, c->name, "error", "chain", "intermediate %s is expired (since %s)",
                                        label ?: "?", asn1_time_to_date(X509_get0_notAfter(x), date));
                else
                        r = finding_add(l, c->name, "error", "chain", "intermediate %s is not valid before %s",
                                        label ?: "?", asn1_time_to_date(X509_get0_notBefore(x), date));
        }
        if (r >= 0 && rep.reordered)
                /* RFC 5246 7.4.2: each certificate must directly certify
                 * the one before it; TLS 1.2 clients may fail. */
                r = finding_add(l, c->name, "warning", "chain",
                                "chain out of order: each intermediate must follow the certificate it issued");
        structural = rep.not_issuer || sk_X509_num(rep.unrelated) > 0 || sk_X509_num(rep.expired) > 0;
        chain_report_done(&rep);
        if (r < 0)
                return r;
        if (structural)
                return 0;

        r = chain_verify(c->leaf, c->chain, &v, &reason);
        if (r < 0)
                return r;
        if (v == CHAIN_INCOMPLETE) {
                _cleanup_free_ char *label = NULL;
                int n = sk_X509_num(c->chain);

                /* No intermediates at all for a CA-signed certificate is
                 * the classic mistake (clients cannot build the path); a
                 * chain ending below a private root is normal: the peers
                 * have that root as their trust anchor. */
                if (n == 0) {
                        label = name_to_string(X509_get_issuer_name(c->leaf));
                        return finding_add(l, c->name, "warning", "chain",
                                           "no intermediates: the issuer %s of the certificate is neither in "
                                           "the chain nor in the system trust store; upload the chain",
                                           label ?: "?");
                }
                label = cert_label(sk_X509_value(c->chain, n - 1));
                if (l->n == before)
                        return finding_add(l, c->name, "ok", "chain",
                                           "chain ends at %s, whose issuer is not in the system trust store "
                                           "(a private CA: peers need its root)", label ?: "?");
                return 0;
        }
        if (v == CHAIN_BROKEN)
                return finding_add(l, c->name, "error", "chain", "chain does not verify: %s",
                                   reason ?: "verification failed");
        if (l->n == before)
                return finding_add(l, c->name, "ok", "chain", "chain complete (%d chain certificate%s)",
                                   sk_X509_num(c->chain), sk_X509_num(c->chain) == 1 ? "" : "s");
        return 0;
}

int certstore_check(CertStore *cs, unsigned warn_days, CertFinding **ret, size_t *ret_n) {
        _cleanup_strv_free_ char **names = NULL;
        FindingList l = {};
        int r;

        if (!cs || !ret || !ret_n)
                return -EINVAL;
        r = certstore_list(cs, &names);
        if (r < 0)
                return r;

        for (char **n = names; *n; n++) {
                _cleanup_(certificate_unrefp) Certificate *c = NULL;
                _cleanup_free_ char *err = NULL;

                r = certstore_load(cs, *n, &c, &err);
                if (r == -ENOMEM)
                        goto fail;
                if (r < 0) {
                        if (err)
                                sanitize_text(err);
                        r = finding_add(&l, *n, "error", "key", "the certificate does not load: %s",
                                        err ?: strerror(-r));
                        if (r < 0)
                                goto fail;
                        continue;
                }
                r = check_expiry(&l, *n, c->leaf, warn_days);
                if (r >= 0)
                        r = check_chain(&l, c);
                if (r < 0)
                        goto fail;
        }

        *ret = l.f;
        *ret_n = l.n;
        return 0;

fail:
        cert_findings_free(l.f, l.n);
        return r;
}

void cert_findings_free(CertFinding *f, size_t n) {
        if (!f)
                return;
        for (size_t i = 0; i < n; i++) {
                free(f[i].name);
                free(f[i].severity);
                free(f[i].check);
                free(f[i].message);
        }
        free(f);
}

bool certificate_matches_host(const Certificate *c, const char *host) {
        _cleanup_free_ char *h = NULL;
        size_t n;
        int r;

        if (!c || !c->leaf || isempty(host))
                return false;

        /* An IP address literal is matched against iPAddress SANs only
         * (RFC 6125 1.7.2 leaves IPs to RFC 5280). */
        r = X509_check_ip_asc(c->leaf, host, 0);
        ERR_clear_error();
        if (r >= 0)
                return r == 1;

        /* A fully qualified "mx.example." names the same host. */
        h = strdup(host);
        if (!h)
                return false;
        n = strlen(h);
        if (n > 1 && h[n - 1] == '.')
                h[--n] = '\0';

        /* RFC 6125 6.4.3: the wildcard is only a whole leftmost label
         * ("*.example.com", never "m*.example.com"); the CN is used when
         * there is no DNS SAN (6.4.4). */
        r = X509_check_host(c->leaf, h, n, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS, NULL);
        ERR_clear_error();
        return r == 1;
}
