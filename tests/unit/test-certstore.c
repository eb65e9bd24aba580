/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Certificate store tests on a real directory under /tmp: creation for
 * every key type and reload, the extensions and the CSR that come with a
 * new certificate, the key file mode, the demo certificate, name checks,
 * hand-made mismatching and encrypted material, and certificates from the
 * test PKI (tests/data/make-test-pki, found through TLSGW_SOURCE_ROOT)
 * whose chain must verify against the test root after a load.
 */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "certstore.h"
#include "tap.h"
#include "util/macro.h"

/* Concurrent ref/unref: threads x rounds. */
#define REF_THREADS 4
#define REF_ROUNDS 100000
/* Seconds of slack when comparing validity periods with "now". */
#define TIME_SLACK 300
#define SECONDS_PER_DAY 86400

static char tmpdir[] = "/tmp/test-certstore-XXXXXX";

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        (void) remove(path);
        return 0;
}

static void rm_rf(const char *path) {
        (void) nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static char *path_join(const char *a, const char *b) {
        char *p;

        if (asprintf(&p, "%s/%s", a, b) < 0)
                abort();
        return p;
}

static int copy_file(const char *src, const char *dst) {
        _cleanup_close_ int in = -EBADF, out = -EBADF;
        char buf[4096];
        ssize_t n;

        in = open(src, O_RDONLY | O_CLOEXEC);
        if (in < 0)
                return -errno;
        out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (out < 0)
                return -errno;
        while ((n = read(in, buf, sizeof(buf))) > 0)
                if (write(out, buf, (size_t) n) != n)
                        return -EIO;
        return n < 0 ? -errno : 0;
}

/* Concatenates SRC onto DST. */
static int append_file(const char *src, const char *dst) {
        _cleanup_free_ char *cmd = NULL;

        if (asprintf(&cmd, "cat '%s' >> '%s'", src, dst) < 0)
                return -ENOMEM;
        return system(cmd) == 0 ? 0 : -EIO;
}

static int run(const char *cmd) {
        int r = system(cmd);

        if (r < 0 || !WIFEXITED(r))
                return -1;
        return WEXITSTATUS(r);
}

static const char *subject_entry(X509_NAME *n, int nid, char *buf, size_t len) {
        if (X509_NAME_get_text_by_NID(n, nid, buf, (int) len) < 0)
                return NULL;
        return buf;
}

/* The DNS names of a GENERAL_NAMES, joined with ",". */
static char *dns_names(GENERAL_NAMES *gens) {
        char *s = NULL;
        size_t len = 0;
        FILE *f;

        f = open_memstream(&s, &len);
        if (!f)
                abort();
        for (int i = 0; i < sk_GENERAL_NAME_num(gens); i++) {
                const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);

                if (g->type != GEN_DNS)
                        continue;
                fprintf(f, "%s%.*s", ftell(f) > 0 ? "," : "",
                        ASN1_STRING_length(g->d.dNSName),
                        (const char *) ASN1_STRING_get0_data(g->d.dNSName));
        }
        fclose(f);
        return s;
}

static char *cert_sans(X509 *x) {
        GENERAL_NAMES *gens;
        char *s;

        gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
        if (!gens)
                return NULL;
        s = dns_names(gens);
        GENERAL_NAMES_free(gens);
        return s;
}

static char *req_sans(X509_REQ *req) {
        STACK_OF(X509_EXTENSION) *exts;
        GENERAL_NAMES *gens;
        char *s;

        exts = X509_REQ_get_extensions(req);
        if (!exts)
                return NULL;
        gens = X509V3_get_d2i(exts, NID_subject_alt_name, NULL, NULL);
        sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
        if (!gens)
                return NULL;
        s = dns_names(gens);
        GENERAL_NAMES_free(gens);
        return s;
}

/* Days from now until T, rounded to the nearest day. */
static long days_until(const ASN1_TIME *t) {
        int days = 0, secs = 0;

        if (ASN1_TIME_diff(&days, &secs, NULL, t) != 1)
                return -1;
        return days + (secs > SECONDS_PER_DAY / 2 ? 1 : 0);
}

static void test_key_type_strings(void) {
        for (CertKeyType t = 0; t < _CERT_KEY_TYPE_MAX; t++)
                is_int(cert_key_type_from_string(cert_key_type_to_string(t)), t,
                       "key type %s round-trips", cert_key_type_to_string(t));
        is_int(cert_key_type_from_string("ec-p521"), -EINVAL, "unknown key type refused");
        ok(!cert_key_type_to_string(_CERT_KEY_TYPE_MAX), "no string beyond the table");
}

static void test_create(CertStore *cs, CertKeyType type) {
        _cleanup_(certificate_unrefp) Certificate *c = NULL;
        _cleanup_free_ char *err = NULL, *name = NULL, *sans = NULL, *rsans = NULL, *keypath = NULL;
        char *extra[] = { (char *) "mail.example.test", (char *) "MX.Example.test", (char *) "*.mx.example.test", NULL };
        const char *ts = cert_key_type_to_string(type);
        bool rsa = type == CERT_KEY_RSA_2048 || type == CERT_KEY_RSA_3072 || type == CERT_KEY_RSA_4096;
        CertParams p = {
                .common_name = "mx.example.test",
                .sans = extra,
                .key_type = type,
                .days = 30,
                .organization = "Example Org",
        };
        char buf[256];
        struct stat st;
        int r;

        if (asprintf(&name, "t-%s", ts) < 0)
                abort();

        ok(!certstore_exists(cs, name), "%s: absent before creation", ts);
        r = certstore_create(cs, name, &p, &err);
        is_int(r, 0, "%s: created%s%s", ts, err ? ": " : "", err ?: "");
        if (r < 0)
                return;
        ok(certstore_exists(cs, name), "%s: exists after creation", ts);

        r = certstore_load(cs, name, &c, &err);
        is_int(r, 0, "%s: loaded", ts);
        if (r < 0)
                return;

        is_str(c->name, name, "%s: name kept", ts);
        is_int(certificate_key_id(c), rsa ? EVP_PKEY_RSA : EVP_PKEY_EC, "%s: key algorithm", ts);
        if (rsa) {
                int bits = type == CERT_KEY_RSA_2048 ? 2048 : type == CERT_KEY_RSA_3072 ? 3072 : 4096;

                is_int(EVP_PKEY_get_bits(c->key), bits, "%s: key size", ts);
        } else {
                char group[64];
                size_t glen = 0;

                ok(EVP_PKEY_get_utf8_string_param(c->key, OSSL_PKEY_PARAM_GROUP_NAME, group,
                                                  sizeof(group), &glen) == 1 &&
                   streq(group, type == CERT_KEY_EC_P256 ? "prime256v1" : "secp384r1"),
                   "%s: curve", ts);
        }
        is_int(X509_check_private_key(c->leaf, c->key), 1, "%s: key matches leaf", ts);
        ok(c->self_signed, "%s: self-signed", ts);
        is_int(sk_X509_num(c->chain), 0, "%s: empty chain", ts);
        is_int(X509_get_version(c->leaf), X509_VERSION_3, "%s: X.509 v3", ts);

        is_str(subject_entry(X509_get_subject_name(c->leaf), NID_commonName, buf, sizeof(buf)),
               "mx.example.test", "%s: subject CN", ts);
        is_str(subject_entry(X509_get_subject_name(c->leaf), NID_organizationName, buf, sizeof(buf)),
               "Example Org", "%s: subject O", ts);

        /* CN first, the case-insensitive duplicate dropped, the wildcard kept. */
        sans = cert_sans(c->leaf);
        is_str(sans, "mx.example.test,mail.example.test,*.mx.example.test", "%s: SAN DNS names", ts);

        ok(X509_check_ca(c->leaf) == 0, "%s: not a CA", ts);
        {
                int crit = -1;
                BASIC_CONSTRAINTS *bc = X509_get_ext_d2i(c->leaf, NID_basic_constraints, &crit, NULL);

                ok(bc && !bc->ca && crit == 1, "%s: basicConstraints critical CA:FALSE", ts);
                BASIC_CONSTRAINTS_free(bc);
        }
        is_int(X509_get_key_usage(c->leaf),
               KU_DIGITAL_SIGNATURE | (rsa ? KU_KEY_ENCIPHERMENT : 0), "%s: keyUsage", ts);
        is_int(X509_get_extended_key_usage(c->leaf), XKU_SSL_SERVER | XKU_SSL_CLIENT,
               "%s: extendedKeyUsage serverAuth, clientAuth", ts);
        ok(X509_get0_subject_key_id(c->leaf) && ASN1_STRING_length(X509_get0_subject_key_id(c->leaf)) == 20,
           "%s: subjectKeyIdentifier", ts);
        is_int(X509_get_signature_nid(c->leaf), rsa ? NID_sha256WithRSAEncryption : NID_ecdsa_with_SHA256,
               "%s: sha256 signature", ts);

        {
                BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(c->leaf), NULL);

                ok(bn && !BN_is_negative(bn) && !BN_is_zero(bn) && BN_num_bits(bn) > 64 && BN_num_bits(bn) <= 128,
                   "%s: random positive serial of at most 128 bits (%d bits)", ts, bn ? BN_num_bits(bn) : -1);
                BN_free(bn);
        }
        ok(labs(days_until(X509_get0_notBefore(c->leaf))) == 0, "%s: valid from now", ts);
        is_int(days_until(X509_get0_notAfter(c->leaf)), 30, "%s: valid for the requested days", ts);

        /* The CSR: own key, same subject, same names requested. */
        ok(c->csr, "%s: CSR loaded", ts);
        if (c->csr) {
                is_int(X509_REQ_verify(c->csr, c->key), 1, "%s: CSR signature verifies with the key", ts);
                ok(EVP_PKEY_eq(X509_REQ_get0_pubkey(c->csr), c->key) == 1, "%s: CSR carries the key", ts);
                is_int(X509_NAME_cmp(X509_REQ_get_subject_name(c->csr), X509_get_subject_name(c->leaf)), 0,
                       "%s: CSR subject", ts);
                rsans = req_sans(c->csr);
                is_str(rsans, sans, "%s: CSR requests the same SAN", ts);
        }

        if (asprintf(&keypath, "%s/%s/key.pem", certstore_dir(cs), name) < 0)
                abort();
        r = stat(keypath, &st);
        ok(r == 0 && (st.st_mode & 07777) == 0600, "%s: key.pem has mode 0600 (%o)", ts,
           r == 0 ? (unsigned) (st.st_mode & 07777) : 0U);
}

static void test_create_refusals(CertStore *cs) {
        _cleanup_free_ char *err = NULL;
        CertParams p = {
                .common_name = "mx.example.test",
                .key_type = CERT_KEY_EC_P256,
                .days = 10,
        };
        static const char * const bad_names[] = {
                "", ".", "..", ".hidden", "a/b", "bad name", "caf\xc3\xa9", "x\n",
                "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", /* 65 */
        };
        char long_ok[65];
        Certificate *c = NULL;
        DIR *d;
        int tmp_left = 0;

        for (size_t i = 0; i < ELEMENTSOF(bad_names); i++) {
                char *e = NULL;

                is_int(certstore_create(cs, bad_names[i], &p, &e), -EINVAL, "create refuses name #%zu", i);
                ok(e && strstr(e, "name"), "... with a reason (%s)", e ?: "(null)");
                free(e);
                e = NULL;
                is_int(certstore_load(cs, bad_names[i], &c, &e), -EINVAL, "load refuses name #%zu", i);
                free(e);
                ok(!certstore_exists(cs, bad_names[i]), "exists is false for name #%zu", i);
        }
        is_int(certstore_create(cs, NULL, &p, NULL), -EINVAL, "create refuses a NULL name");

        memset(long_ok, 'a', 64);
        long_ok[0] = 'Z';
        long_ok[10] = '_';
        long_ok[20] = '-';
        long_ok[30] = '.';
        long_ok[64] = '\0';
        is_int(certstore_create(cs, long_ok, &p, NULL), 0, "64-character name of every allowed class");
        ok(certstore_exists(cs, long_ok), "... and it exists");

        is_int(certstore_create(cs, long_ok, &p, &err), -EEXIST, "existing name refused");
        ok(err && strstr(err, "exists"), "... with a reason (%s)", err ?: "(null)");
        free(TAKE_PTR(err));

        p.common_name = "not a host";
        is_int(certstore_create(cs, "badcn", &p, &err), -EINVAL, "CN that is no DNS name refused");
        ok(err != NULL, "... with a reason (%s)", err ?: "(null)");
        free(TAKE_PTR(err));
        p.common_name = "mx.example.test";
        p.days = 0;
        is_int(certstore_create(cs, "baddays", &p, NULL), -EINVAL, "zero days refused");
        p.days = 10;
        p.key_type = _CERT_KEY_TYPE_MAX;
        is_int(certstore_create(cs, "badtype", &p, NULL), -EINVAL, "unknown key type refused");
        p.key_type = CERT_KEY_EC_P256;
        {
                char *sans[] = { (char *) "ok.example", (char *) "-bad-.example", NULL };

                p.sans = sans;
                is_int(certstore_create(cs, "badsan", &p, NULL), -EINVAL, "bad SAN refused");
                p.sans = NULL;
        }
        ok(!certstore_exists(cs, "badcn") && !certstore_exists(cs, "badsan"), "nothing left by refusals");

        /* No temporary directory survives a creation or a refusal. */
        d = opendir(certstore_dir(cs));
        if (d) {
                struct dirent *de;

                while ((de = readdir(d)))
                        if (strncmp(de->d_name, ".tmp-", 5) == 0)
                                tmp_left++;
                closedir(d);
        }
        is_int(tmp_left, 0, "no temporary directories left in the store");
}

static void test_demo(CertStore *cs) {
        _cleanup_(certificate_unrefp) Certificate *c1 = NULL, *c2 = NULL;
        _cleanup_free_ char *sans = NULL;
        bool created = false;
        char buf[256];
        int r;

        r = certstore_ensure_demo(cs, "gw.example.test", &created);
        is_int(r, 0, "demo: ensured");
        ok(created, "demo: created the first time");
        is_int(certstore_load(cs, CERTSTORE_DEMO_NAME, &c1, NULL), 0, "demo: loads");
        if (!c1)
                return;
        is_str(subject_entry(X509_get_subject_name(c1->leaf), NID_commonName, buf, sizeof(buf)),
               "gw.example.test", "demo: CN is the host name");
        is_str(subject_entry(X509_get_subject_name(c1->leaf), NID_organizationName, buf, sizeof(buf)),
               "tlsgw demo certificate", "demo: organization");
        sans = cert_sans(c1->leaf);
        is_str(sans, "gw.example.test", "demo: SAN is the host name");
        is_int(certificate_key_id(c1), EVP_PKEY_EC, "demo: EC key");
        is_int(EVP_PKEY_get_bits(c1->key), 256, "demo: P-256");
        is_int(days_until(X509_get0_notAfter(c1->leaf)), CERTSTORE_DEMO_DAYS, "demo: validity");
        ok(c1->self_signed, "demo: self-signed");

        created = true;
        r = certstore_ensure_demo(cs, "other.example.test", &created);
        is_int(r, 0, "demo: ensured again");
        ok(!created, "demo: not created the second time");
        is_int(certstore_load(cs, CERTSTORE_DEMO_NAME, &c2, NULL), 0, "demo: loads again");
        if (c2) {
                is_int(ASN1_INTEGER_cmp(X509_get0_serialNumber(c1->leaf), X509_get0_serialNumber(c2->leaf)), 0,
                       "demo: same serial, untouched");
                ok(EVP_PKEY_eq(c1->key, c2->key) == 1, "demo: same key");
                ok(c1 != c2, "demo: each load is a new snapshot");
        }
        is_int(certstore_ensure_demo(cs, "not a host", NULL), 0, "demo: existing one needs no valid host name");
}

static void *ref_thread(void *arg) {
        Certificate *c = arg;

        for (int i = 0; i < REF_ROUNDS; i++) {
                certificate_ref(c);
                certificate_unref(c);
        }
        return NULL;
}

static void test_refcount(CertStore *cs) {
        Certificate *c = NULL;
        pthread_t th[REF_THREADS];

        if (certstore_load(cs, CERTSTORE_DEMO_NAME, &c, NULL) < 0) {
                tap_skip("refcount", "demo certificate did not load");
                return;
        }
        is_int(c->n_ref, 1, "refcount: one reference after load");
        ok(certificate_ref(c) == c, "refcount: ref returns the object");
        is_int(c->n_ref, 2, "refcount: two references");
        ok(certificate_unref(c) == NULL, "refcount: unref returns NULL");
        for (int i = 0; i < REF_THREADS; i++)
                pthread_create(&th[i], NULL, ref_thread, c);
        for (int i = 0; i < REF_THREADS; i++)
                pthread_join(th[i], NULL);
        is_int(c->n_ref, 1, "refcount: balanced after %d threads", REF_THREADS);
        ok(certificate_ref(NULL) == NULL && certificate_unref(NULL) == NULL, "refcount: NULL is fine");
        certificate_unref(c);           /* frees; the sanitizer build checks it */
}

/* Builds STORE/NAME from existing files; NULL entries are left out. */
static void make_entry(CertStore *cs, const char *name, const char *key, const char *cert,
                       const char *chain, const char *csr) {
        _cleanup_free_ char *dir = path_join(certstore_dir(cs), name);
        const char *src[] = { key, cert, chain, csr };
        const char *dst[] = { "key.pem", "cert.pem", "chain.pem", "csr.pem" };

        rm_rf(dir);
        if (mkdir(dir, 0700) < 0)
                abort();
        for (size_t i = 0; i < ELEMENTSOF(src); i++) {
                _cleanup_free_ char *d = NULL;

                if (!src[i])
                        continue;
                d = path_join(dir, dst[i]);
                if (copy_file(src[i], d) < 0)
                        abort();
        }
}

static void test_bad_material(CertStore *cs) {
        _cleanup_free_ char *sd = path_join(certstore_dir(cs), "t-ec-p256");
        _cleanup_free_ char *od = path_join(certstore_dir(cs), "t-ec-p384");
        _cleanup_free_ char *k1 = path_join(sd, "key.pem"), *c2 = path_join(od, "cert.pem");
        _cleanup_free_ char *c1 = path_join(sd, "cert.pem"), *csr2 = path_join(od, "csr.pem");
        _cleanup_free_ char *enc = path_join(tmpdir, "enc.key"), *cmd = NULL, *junk = NULL;
        Certificate *c = NULL;
        char *err = NULL;
        int r;

        /* The key of one certificate with the leaf of another. */
        make_entry(cs, "mismatch", k1, c2, NULL, NULL);
        ok(certstore_exists(cs, "mismatch"), "mismatch: files present");
        r = certstore_load(cs, "mismatch", &c, &err);
        is_int(r, -EBADMSG, "mismatch: refused with EBADMSG");
        ok(!c, "mismatch: no certificate returned");
        ok(err && strstr(err, "key does not match certificate"), "mismatch: reason (%s)", err ?: "(null)");
        free(err);
        err = NULL;

        /* Matching pair with the CSR of another key: loads, CSR left out. */
        make_entry(cs, "stalecsr", k1, c1, NULL, csr2);
        r = certstore_load(cs, "stalecsr", &c, &err);
        is_int(r, 0, "stale CSR: certificate still loads");
        ok(c && !c->csr, "stale CSR: not part of the snapshot");
        c = certificate_unref(c);

        /* Missing cert.pem. */
        make_entry(cs, "nocert", k1, NULL, NULL, NULL);
        ok(!certstore_exists(cs, "nocert"), "no cert.pem: does not exist");
        is_int(certstore_load(cs, "nocert", &c, &err), -ENOENT, "no cert.pem: ENOENT");
        ok(err && strstr(err, "cert.pem"), "no cert.pem: reason names the file (%s)", err ?: "(null)");
        free(err);
        err = NULL;
        is_int(certstore_load(cs, "absent", &c, NULL), -ENOENT, "absent name: ENOENT");

        /* Garbage in chain.pem. */
        junk = path_join(tmpdir, "junk.pem");
        {
                FILE *f = fopen(junk, "we");

                if (f) {
                        fputs("-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n", f);
                        fclose(f);
                }
        }
        make_entry(cs, "badchain", k1, c1, junk, NULL);
        is_int(certstore_load(cs, "badchain", &c, &err), -EBADMSG, "broken chain.pem: EBADMSG");
        ok(err && strstr(err, "chain.pem"), "broken chain.pem: reason (%s)", err ?: "(null)");
        free(err);
        err = NULL;

        /* An encrypted key must fail at once, never prompt for a password. */
        if (asprintf(&cmd, "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 "
                     "-aes256 -pass pass:secret -out '%s' 2>/dev/null", enc) < 0)
                abort();
        if (run(cmd) != 0) {
                tap_skip("encrypted key refused", "openssl genpkey failed");
                return;
        }
        make_entry(cs, "encrypted", enc, c1, NULL, NULL);
        is_int(certstore_load(cs, "encrypted", &c, &err), -EBADMSG, "encrypted key: EBADMSG, no prompt");
        ok(err && strstr(err, "key.pem") && strstr(err, "encrypted"), "encrypted key: reason (%s)", err ?: "(null)");
        free(err);
}

static bool chain_verifies(X509 *leaf, STACK_OF(X509) *chain, const char *ca_file) {
        X509_STORE *store = X509_STORE_new();
        X509_STORE_CTX *ctx = X509_STORE_CTX_new();
        bool ok = false;

        if (store && ctx && X509_STORE_load_file(store, ca_file) == 1 &&
            X509_STORE_CTX_init(ctx, store, leaf, chain) == 1)
                ok = X509_verify_cert(ctx) == 1;
        X509_STORE_CTX_free(ctx);
        X509_STORE_free(store);
        ERR_clear_error();
        return ok;
}

static void test_pki(CertStore *cs) {
        _cleanup_free_ char *pki = path_join(tmpdir, "pki"), *cmd = NULL, *script = NULL;
        _cleanup_free_ char *key = NULL, *cert = NULL, *chain = NULL, *ca = NULL, *full = NULL;
        _cleanup_free_ char *rsakey = NULL, *rsacert = NULL, *chain2 = NULL;
        Certificate *c = NULL;
        const char *root = getenv("TLSGW_SOURCE_ROOT");
        char buf[256];
        struct timespec t0, t1;
        char *err = NULL;
        int r;

        if (isempty(root)) {
                tap_skip("test PKI", "TLSGW_SOURCE_ROOT is not set");
                return;
        }
        script = path_join(root, "tests/data/make-test-pki");
        if (access(script, X_OK) < 0) {
                tap_skip("test PKI", "tests/data/make-test-pki is missing");
                return;
        }

        if (asprintf(&cmd, "'%s' '%s' >/dev/null", script, pki) < 0)
                abort();
        clock_gettime(CLOCK_MONOTONIC, &t0);
        r = run(cmd);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        is_int(r, 0, "make-test-pki succeeds");
        if (r != 0)
                return;
        ok(t1.tv_sec - t0.tv_sec < 5, "make-test-pki takes under 5 s (%lds)", (long) (t1.tv_sec - t0.tv_sec));
        is_int(run(cmd), 0, "make-test-pki runs again over its own output");

        /* The PKI itself, with the openssl command line as the reference. */
        free(cmd);
        if (asprintf(&cmd, "cd '%s' && openssl verify -CAfile ca.pem -untrusted intermediate.pem "
                     "server-ec.pem server-rsa.pem wrongname.pem client.pem >/dev/null 2>&1", pki) < 0)
                abort();
        is_int(run(cmd), 0, "openssl verify: leaves chain to the root through the intermediate");
        free(cmd);
        if (asprintf(&cmd, "cd '%s' && openssl verify -CAfile ca.pem server-ec.pem >/dev/null 2>&1", pki) < 0)
                abort();
        ok(run(cmd) != 0, "openssl verify: not without the intermediate");
        free(cmd);
        if (asprintf(&cmd, "cd '%s' && openssl verify -CAfile ca.pem -untrusted intermediate.pem "
                     "expired.pem >/dev/null 2>&1", pki) < 0)
                abort();
        ok(run(cmd) != 0, "openssl verify: expired.pem refused");
        free(cmd);
        if (asprintf(&cmd, "cd '%s' && openssl verify -CAfile ca.pem -untrusted intermediate.pem "
                     "untrusted.pem >/dev/null 2>&1", pki) < 0)
                abort();
        ok(run(cmd) != 0, "openssl verify: untrusted.pem refused");
        free(cmd);
        if (asprintf(&cmd, "cd '%s' && openssl verify -CAfile untrusted-ca.pem untrusted.pem client-untrusted.pem "
                     ">/dev/null 2>&1", pki) < 0)
                abort();
        is_int(run(cmd), 0, "openssl verify: untrusted.pem chains to its own root");
        free(cmd);
        if (asprintf(&cmd, "cd '%s' && openssl x509 -in client.pem -noout -ext extendedKeyUsage 2>/dev/null "
                     "| grep -q 'TLS Web Client Authentication'", pki) < 0)
                abort();
        is_int(run(cmd), 0, "client.pem has extendedKeyUsage clientAuth");
        free(cmd);
        cmd = NULL;

        key = path_join(pki, "server-ec.key");
        cert = path_join(pki, "server-ec.pem");
        chain = path_join(pki, "server-chain.pem");
        ca = path_join(pki, "ca.pem");
        full = path_join(pki, "server-ec-fullchain.pem");
        rsakey = path_join(pki, "server-rsa.key");
        rsacert = path_join(pki, "server-rsa.pem");

        make_entry(cs, "mx", key, cert, chain, NULL);
        r = certstore_load(cs, "mx", &c, &err);
        is_int(r, 0, "PKI: server-ec loads with chain.pem%s%s", err ? ": " : "", err ?: "");
        free(err);
        err = NULL;
        if (c) {
                is_int(sk_X509_num(c->chain), 1, "PKI: chain of one");
                is_str(subject_entry(X509_get_subject_name(sk_X509_value(c->chain, 0)), NID_commonName,
                                     buf, sizeof(buf)), "tlsgw Test Intermediate", "PKI: chain is the intermediate");
                ok(!c->self_signed, "PKI: not self-signed");
                ok(!c->csr, "PKI: no CSR");
                ok(chain_verifies(c->leaf, c->chain, ca), "PKI: leaf + chain verify against ca.pem");
                ok(!chain_verifies(c->leaf, NULL, ca), "PKI: leaf alone does not verify");
                c = certificate_unref(c);
        }

        /* Order of a longer chain.pem is the file order. */
        chain2 = path_join(tmpdir, "chain2.pem");
        if (copy_file(chain, chain2) < 0 || append_file(ca, chain2) < 0)
                abort();
        make_entry(cs, "mx2", key, cert, chain2, NULL);
        r = certstore_load(cs, "mx2", &c, NULL);
        is_int(r, 0, "PKI: two-certificate chain loads");
        if (c) {
                is_int(sk_X509_num(c->chain), 2, "PKI: chain of two");
                is_str(subject_entry(X509_get_subject_name(sk_X509_value(c->chain, 0)), NID_commonName,
                                     buf, sizeof(buf)), "tlsgw Test Intermediate", "PKI: first is the intermediate");
                is_str(subject_entry(X509_get_subject_name(sk_X509_value(c->chain, 1)), NID_commonName,
                                     buf, sizeof(buf)), "tlsgw Test Root CA", "PKI: second is the root");
                c = certificate_unref(c);
        }

        /* A full-chain cert.pem: the further certificates start the chain. */
        make_entry(cs, "mxfull", key, full, NULL, NULL);
        r = certstore_load(cs, "mxfull", &c, NULL);
        is_int(r, 0, "PKI: full-chain cert.pem loads");
        if (c) {
                is_int(sk_X509_num(c->chain), 1, "PKI: intermediate of the full chain kept");
                ok(chain_verifies(c->leaf, c->chain, ca), "PKI: full chain verifies");
                c = certificate_unref(c);
        }

        /* RSA leaf, and the EC key against the RSA leaf. */
        make_entry(cs, "mxrsa", rsakey, rsacert, chain, NULL);
        r = certstore_load(cs, "mxrsa", &c, NULL);
        is_int(r, 0, "PKI: server-rsa loads");
        if (c) {
                is_int(certificate_key_id(c), EVP_PKEY_RSA, "PKI: RSA key");
                c = certificate_unref(c);
        }
        make_entry(cs, "mxmix", key, rsacert, chain, NULL);
        is_int(certstore_load(cs, "mxmix", &c, &err), -EBADMSG, "PKI: EC key with RSA leaf refused");
        ok(err && strstr(err, "key does not match certificate"), "PKI: reason (%s)", err ?: "(null)");
        free(err);
}

/* ------------------------------------------------------------------------
 * Administration: list, upload, PKCS#12, renew, delete, info, check
 */

/* Validity of the hand-made expired intermediate. */
#define EXPIRED_NOT_BEFORE "20200101000000Z"
#define EXPIRED_NOT_AFTER "20200601000000Z"
/* Warning window of the check tests, and a validity inside it. */
#define WARN_DAYS 30
#define SOON_DAYS 10

static char *read_text(const char *path) {
        char *s = NULL;
        size_t len = 0;
        FILE *f, *m;
        int c;

        f = fopen(path, "re");
        if (!f)
                return NULL;
        m = open_memstream(&s, &len);
        if (!m)
                abort();
        while ((c = fgetc(f)) != EOF)
                fputc(c, m);
        fclose(m);
        fclose(f);
        return s;
}

static int write_text(const char *path, const void *data, size_t len) {
        FILE *f = fopen(path, "we");

        if (!f)
                return -errno;
        if (fwrite(data, 1, len, f) != len) {
                fclose(f);
                return -EIO;
        }
        return fclose(f) == 0 ? 0 : -errno;
}

/* Every file of STORE/NAME, names and bytes, as one string: two snapshots
 * are equal when nothing in the directory changed. */
static char *dir_snapshot(CertStore *cs, const char *name) {
        _cleanup_free_ char *dir = path_join(certstore_dir(cs), name);
        struct dirent **list = NULL;
        char *s = NULL;
        size_t len = 0;
        FILE *m;
        int n;

        n = scandir(dir, &list, NULL, alphasort);
        if (n < 0)
                return strdup("(absent)");
        m = open_memstream(&s, &len);
        if (!m)
                abort();
        for (int i = 0; i < n; i++) {
                _cleanup_free_ char *f = path_join(dir, list[i]->d_name), *t = NULL;

                if (list[i]->d_name[0] != '.') {
                        t = read_text(f);
                        fprintf(m, "== %s\n%s", list[i]->d_name, t ?: "(unreadable)\n");
                }
                free(list[i]);
        }
        free(list);
        fclose(m);
        return s;
}

/* Entries of the store directory starting with PREFIX. */
static int count_prefixed(CertStore *cs, const char *prefix) {
        DIR *d = opendir(certstore_dir(cs));
        struct dirent *de;
        int n = 0;

        if (!d)
                return -1;
        while ((de = readdir(d)))
                if (strncmp(de->d_name, prefix, strlen(prefix)) == 0)
                        n++;
        closedir(d);
        return n;
}

static bool strv_contains_substr(char **l, const char *needle) {
        for (char **i = l; i && *i; i++)
                if (strstr(*i, needle))
                        return true;
        return false;
}

/* An intermediate CA "tlsgw Expired Intermediate" signed by the test root,
 * valid only in the first half of 2020 ("openssl x509 -req" cannot date a
 * certificate in the past, so it is made here). Writes DIR/expint.pem and
 * DIR/expint.key. */
static int make_expired_intermediate(const char *pki) {
        _cleanup_free_ char *cap = path_join(pki, "ca.pem"), *cak = path_join(pki, "ca.key");
        _cleanup_free_ char *outp = path_join(pki, "expint.pem"), *outk = path_join(pki, "expint.key");
        X509 *ca = NULL, *x = NULL;
        EVP_PKEY *cakey = NULL, *key = NULL;
        X509_EXTENSION *ext;
        X509V3_CTX v3;
        FILE *f;
        int r = -EIO;

        f = fopen(cap, "re");
        if (f) {
                ca = PEM_read_X509(f, NULL, NULL, NULL);
                fclose(f);
        }
        f = fopen(cak, "re");
        if (f) {
                cakey = PEM_read_PrivateKey(f, NULL, NULL, NULL);
                fclose(f);
        }
        key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
        x = X509_new();
        if (!ca || !cakey || !key || !x)
                goto finish;

        X509_set_version(x, X509_VERSION_3);
        ASN1_INTEGER_set(X509_get_serialNumber(x), 4242);
        if (ASN1_TIME_set_string(X509_getm_notBefore(x), EXPIRED_NOT_BEFORE) != 1 ||
            ASN1_TIME_set_string(X509_getm_notAfter(x), EXPIRED_NOT_AFTER) != 1)
                goto finish;
        X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
                                   (const unsigned char *) "tlsgw Expired Intermediate", -1, -1, 0);
        X509_set_issuer_name(x, X509_get_subject_name(ca));
        X509_set_pubkey(x, key);
        X509V3_set_ctx(&v3, ca, x, NULL, NULL, 0);
        ext = X509V3_EXT_conf_nid(NULL, &v3, NID_basic_constraints, "critical,CA:TRUE,pathlen:0");
        if (!ext || X509_add_ext(x, ext, -1) != 1)
                goto finish;
        X509_EXTENSION_free(ext);
        ext = X509V3_EXT_conf_nid(NULL, &v3, NID_key_usage, "critical,keyCertSign,cRLSign");
        if (!ext || X509_add_ext(x, ext, -1) != 1)
                goto finish;
        X509_EXTENSION_free(ext);
        if (X509_sign(x, cakey, EVP_sha256()) <= 0)
                goto finish;

        f = fopen(outp, "we");
        if (!f || PEM_write_X509(f, x) != 1)
                goto finish;
        fclose(f);
        f = fopen(outk, "we");
        if (!f || PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL) != 1)
                goto finish;
        fclose(f);
        f = NULL;
        r = 0;
finish:
        if (f)
                fclose(f);
        X509_free(ca);
        X509_free(x);
        EVP_PKEY_free(cakey);
        EVP_PKEY_free(key);
        ERR_clear_error();
        return r;
}

/* Signs STORE/NAME/csr.pem with the CA files in PKI into OUT. */
static int sign_csr(CertStore *cs, const char *name, const char *pki, const char *ca, const char *cakey,
                    const char *out) {
        _cleanup_free_ char *cmd = NULL;

        if (asprintf(&cmd, "cd '%s' && openssl x509 -req -in '%s/%s/csr.pem' -CA '%s' -CAkey '%s' "
                     "-days 30 -set_serial 0x$(openssl rand -hex 16) -copy_extensions copy -out '%s' "
                     ">/dev/null 2>&1", pki, certstore_dir(cs), name, ca, cakey, out) < 0)
                abort();
        return run(cmd);
}

static void test_list(CertStore *cs) {
        _cleanup_strv_free_ char **names = NULL;
        bool sorted = true, has_demo = false, has_mx = false, has_nocert = false;

        is_int(certstore_list(cs, &names), 0, "list: succeeds");
        if (!names)
                return;
        for (char **n = names; *n; n++) {
                if (n > names && strcmp(n[-1], *n) >= 0)
                        sorted = false;
                has_demo = has_demo || streq(*n, "demo");
                has_mx = has_mx || streq(*n, "mx");
                has_nocert = has_nocert || streq(*n, "nocert");
        }
        ok(sorted, "list: sorted");
        ok(has_demo && has_mx, "list: has demo and mx");
        ok(!has_nocert, "list: a directory without cert.pem is not listed");
}

static void test_upload(CertStore *cs, const char *pki) {
        _cleanup_free_ char *csrfile = path_join(tmpdir, "up.csr"), *signedp = path_join(tmpdir, "up.pem");
        _cleanup_free_ char *expsigned = path_join(tmpdir, "up-exp.pem"), *cmd = NULL;
        _cleanup_free_ char *inter = NULL, *root = NULL, *untrusted = NULL, *other = NULL, *expint = NULL;
        _cleanup_free_ char *leaf_pem = NULL, *exp_pem = NULL, *snap = NULL, *csr = NULL, *chain = NULL;
        _cleanup_free_ char *p_inter = path_join(pki, "intermediate.pem"), *p_root = path_join(pki, "ca.pem");
        _cleanup_free_ char *p_untr = path_join(pki, "untrusted-ca.pem"), *p_other = path_join(pki, "server-ec.pem");
        _cleanup_free_ char *p_expint = path_join(pki, "expint.pem");
        char *sans[] = { (char *) "mail.example.test", NULL };
        CertParams p = {
                .common_name = "mx.example.test",
                .sans = sans,
                .key_type = CERT_KEY_EC_P256,
                .days = 30,
        };
        Certificate *c = NULL;
        CertInfo info = {};
        char **notes = NULL;
        char *err = NULL, buf[256];
        int r;

        r = certstore_create(cs, "up", &p, NULL);
        is_int(r, 0, "upload: created 'up'");
        if (r < 0)
                return;

        /* The CSR: PEM, verified by openssl, signed by the intermediate. */
        is_int(certstore_get_csr(cs, "up", &csr), 0, "csr: returned");
        ok(csr && strstr(csr, "-----BEGIN CERTIFICATE REQUEST-----"), "csr: PEM");
        if (!csr || write_text(csrfile, csr, strlen(csr)) < 0)
                return;
        if (asprintf(&cmd, "openssl req -in '%s' -verify -noout >/dev/null 2>&1", csrfile) < 0)
                abort();
        is_int(run(cmd), 0, "csr: openssl req -verify accepts it");
        free(TAKE_PTR(cmd));
        is_int(certstore_get_csr(cs, "absent", &err), -ENOENT, "csr: unknown name is ENOENT");
        {
                /* "mx" has no csr.pem: one is made for its key and names. */
                _cleanup_free_ char *mxcsr = NULL, *mxfile = path_join(tmpdir, "mx.csr"), *mxcmd = NULL;

                is_int(certstore_get_csr(cs, "mx", &mxcsr), 0, "csr: made for a certificate without one");
                if (mxcsr && write_text(mxfile, mxcsr, strlen(mxcsr)) == 0 &&
                    asprintf(&mxcmd, "openssl req -in '%s' -verify -noout -subject 2>/dev/null | "
                             "grep -q 'CN *= *mx.test' && openssl req -in '%s' -noout -text | "
                             "grep -q 'DNS:mx.test, DNS:localhost, DNS:mail.example.test' && "
                             "test \"$(openssl req -in '%s' -noout -pubkey)\" = "
                             "\"$(openssl pkey -in '%s/server-ec.key' -pubout)\"",
                             mxfile, mxfile, mxfile, pki) >= 0)
                        is_int(run(mxcmd), 0, "csr: it verifies, names mx.test and its SANs, carries the key");
                free(mxcmd);
                if (asprintf(&mxcmd, "%s/mx/csr.pem", certstore_dir(cs)) < 0)
                        abort();
                ok(access(mxcmd, F_OK) < 0, "csr: nothing stored");
        }

        is_int(sign_csr(cs, "up", pki, "intermediate.pem", "intermediate.key", signedp), 0,
               "upload: openssl x509 -req signs the CSR with the intermediate");
        is_int(make_expired_intermediate(pki), 0, "upload: expired intermediate made");
        is_int(sign_csr(cs, "up", pki, "expint.pem", "expint.key", expsigned), 0,
               "upload: ... and the CSR signed with it");

        leaf_pem = read_text(signedp);
        exp_pem = read_text(expsigned);
        inter = read_text(p_inter);
        root = read_text(p_root);
        untrusted = read_text(p_untr);
        other = read_text(p_other);
        expint = read_text(p_expint);
        if (!leaf_pem || !exp_pem || !inter || !root || !untrusted || !other || !expint) {
                tap_skip("upload", "test material missing");
                return;
        }

        /* Refusals: each leaves the directory byte-identical. */
        snap = dir_snapshot(cs, "up");
#define REFUSED(cert, chainpem, expect_r, needle, what) do {                                    \
                _cleanup_free_ char *_after = NULL;                                             \
                char **_notes = NULL;                                                           \
                char *_err = NULL;                                                              \
                is_int(certstore_upload(cs, "up", (cert), (chainpem), &_notes, &_err), (expect_r), \
                       "upload refused: %s", what);                                             \
                ok(_err && strstr(_err, (needle)), "... reason names it (%s)", _err ?: "(null)"); \
                ok(!_notes, "... no notes");                                                    \
                _after = dir_snapshot(cs, "up");                                                \
                is_str(_after, snap, "... files byte-identical");                               \
                free(_err);                                                                     \
                strv_free(_notes);                                                              \
        } while (0)

        REFUSED(other, inter, -EBADMSG, "does not match the private key of 'up'", "certificate for another key");
        REFUSED(leaf_pem, untrusted, -EINVAL, "Untrusted Root did not issue the certificate",
                "intermediate that did not issue the certificate");
        {
                _cleanup_free_ char *two = NULL;

                if (asprintf(&two, "%s%s", inter, untrusted) < 0)
                        abort();
                REFUSED(leaf_pem, two, -EINVAL, "Untrusted Root is unrelated", "unrelated extra intermediate");
        }
        REFUSED(exp_pem, expint, -EINVAL, "Expired Intermediate is expired", "expired intermediate");
        REFUSED("-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n", inter,
                -EBADMSG, "certificate", "malformed PEM certificate");
        REFUSED("just text", inter, -EBADMSG, "no PEM certificate", "text without PEM");
        REFUSED(leaf_pem, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                -EBADMSG, "chain", "malformed PEM chain");
#undef REFUSED
        is_int(certstore_upload(cs, "absent", leaf_pem, inter, &notes, &err), -ENOENT, "upload: unknown name");
        ok(err && strstr(err, "'absent' does not exist"), "... reason (%s)", err ?: "(null)");
        free(TAKE_PTR(err));

        /* A duplicated intermediate: accepted, one copy kept, reported. */
        if (asprintf(&chain, "%s%s", inter, inter) < 0)
                abort();
        r = certstore_upload(cs, "up", leaf_pem, chain, &notes, &err);
        is_int(r, 0, "upload: duplicated intermediate accepted%s%s", err ? ": " : "", err ?: "");
        free(TAKE_PTR(err));
        ok(strv_contains_substr(notes, "removed duplicate intermediate CN=tlsgw Test Intermediate"),
           "upload: duplicate reported (%s)", notes && notes[0] ? notes[0] : "(none)");
        is_int(strv_length(notes), 1, "upload: one note");
        strv_free(TAKE_PTR(notes));
        if (certstore_load(cs, "up", &c, NULL) == 0) {
                is_int(sk_X509_num(c->chain), 1, "upload: one intermediate stored");
                ok(!c->self_signed, "upload: no longer self-signed");
                ok(c->csr != NULL, "upload: the CSR stays");
                is_int(certificate_info(c, &info), 0, "upload: info");
                is_str(info.chain_state, "incomplete", "upload: chain incomplete without the root");
                is_str(info.issuer, "CN=tlsgw Test Intermediate", "upload: issuer");
                cert_info_done(&info);
                c = certificate_unref(c);
        }
        free(TAKE_PTR(cmd));
        if (asprintf(&cmd, "openssl verify -CAfile '%s' -untrusted '%s/up/chain.pem' '%s/up/cert.pem' "
                     ">/dev/null 2>&1", p_root, certstore_dir(cs), certstore_dir(cs)) < 0)
                abort();
        is_int(run(cmd), 0, "upload: openssl verify accepts the stored cert + chain");

        /* Reversed chain (root, then intermediate): reordered. */
        free(chain);
        if (asprintf(&chain, "%s%s", root, inter) < 0)
                abort();
        r = certstore_upload(cs, "up", leaf_pem, chain, &notes, &err);
        is_int(r, 0, "upload: reversed chain accepted%s%s", err ? ": " : "", err ?: "");
        free(TAKE_PTR(err));
        ok(strv_contains_substr(notes, "reordered chain"), "upload: reordering reported (%s)",
           notes && notes[0] ? notes[0] : "(none)");
        strv_free(TAKE_PTR(notes));
        if (certstore_load(cs, "up", &c, NULL) == 0) {
                is_int(sk_X509_num(c->chain), 2, "upload: two chain certificates");
                if (sk_X509_num(c->chain) == 2) {
                        is_str(subject_entry(X509_get_subject_name(sk_X509_value(c->chain, 0)), NID_commonName,
                                             buf, sizeof(buf)), "tlsgw Test Intermediate", "upload: intermediate first");
                        is_str(subject_entry(X509_get_subject_name(sk_X509_value(c->chain, 1)), NID_commonName,
                                             buf, sizeof(buf)), "tlsgw Test Root CA", "upload: root last");
                }
                is_int(certificate_info(c, &info), 0, "upload: info");
                is_str(info.chain_state, "complete", "upload: complete with the root in the chain");
                is_int(info.chain_length, 2, "upload: chain length");
                cert_info_done(&info);
                c = certificate_unref(c);
        }
        /* A full-chain certificate text, no chain: the same. */
        free(chain);
        if (asprintf(&chain, "%s%s", leaf_pem, inter) < 0)
                abort();
        r = certstore_upload(cs, "up", chain, NULL, &notes, NULL);
        is_int(r, 0, "upload: full-chain text accepted");
        ok(notes && !notes[0], "upload: nothing to report");
        strv_free(TAKE_PTR(notes));
        ok(certificate_matches_host(NULL, "x") == false, "matches_host: NULL certificate");
        is_int(count_prefixed(cs, ".tmp-"), 0, "upload: no temporary directories left");

        /* Renewal of a CA-signed certificate: a new CSR, same key, same cert. */
        {
                _cleanup_free_ char *cert_before = NULL, *cert_after = NULL, *csr_before = NULL, *csr_after = NULL;
                _cleanup_free_ char *cp = NULL, *rp = NULL;

                if (asprintf(&cp, "%s/up/cert.pem", certstore_dir(cs)) < 0 ||
                    asprintf(&rp, "%s/up/csr.pem", certstore_dir(cs)) < 0)
                        abort();
                cert_before = read_text(cp);
                csr_before = read_text(rp);
                is_int(certstore_renew(cs, "up", 90, &err), 0, "renew CA-signed: succeeds");
                free(TAKE_PTR(err));
                cert_after = read_text(cp);
                csr_after = read_text(rp);
                is_str(cert_after, cert_before, "renew CA-signed: certificate unchanged");
                ok(csr_after && csr_before && !streq(csr_after, csr_before), "renew CA-signed: new CSR");
                free(TAKE_PTR(cmd));
                if (asprintf(&cmd, "openssl req -in '%s' -verify -noout >/dev/null 2>&1", rp) < 0)
                        abort();
                is_int(run(cmd), 0, "renew CA-signed: openssl req -verify accepts the new CSR");
                if (certstore_load(cs, "up", &c, NULL) == 0) {
                        _cleanup_free_ char *rs = c->csr ? req_sans(c->csr) : NULL;

                        ok(c->csr && EVP_PKEY_eq(X509_REQ_get0_pubkey(c->csr), c->key) == 1,
                           "renew CA-signed: CSR for the same key");
                        ok(c->csr && X509_NAME_cmp(X509_REQ_get_subject_name(c->csr),
                                                   X509_get_subject_name(c->leaf)) == 0,
                           "renew CA-signed: same subject");
                        is_str(rs, "mx.example.test,mail.example.test", "renew CA-signed: same names requested");
                        c = certificate_unref(c);
                }
        }
}

static void test_renew_self_signed(CertStore *cs) {
        _cleanup_(certificate_unrefp) Certificate *a = NULL, *b = NULL;
        _cleanup_free_ char *sa = NULL, *sb = NULL;
        CertParams p = {
                .common_name = "ss.example.test",
                .key_type = CERT_KEY_EC_P256,
                .days = 5,
                .organization = "Renew Org",
        };
        char *err = NULL;

        if (certstore_create(cs, "ss", &p, NULL) < 0 || certstore_load(cs, "ss", &a, NULL) < 0) {
                tap_skip("renew self-signed", "could not create it");
                return;
        }
        is_int(certstore_renew(cs, "ss", 0, &err), -EINVAL, "renew: zero days refused");
        ok(err && strstr(err, "days"), "... reason (%s)", err ?: "(null)");
        free(TAKE_PTR(err));
        is_int(certstore_renew(cs, "nosuch", 10, &err), -ENOENT, "renew: unknown name");
        free(TAKE_PTR(err));

        is_int(certstore_renew(cs, "ss", 90, &err), 0, "renew self-signed: succeeds%s%s", err ? ": " : "", err ?: "");
        free(TAKE_PTR(err));
        if (certstore_load(cs, "ss", &b, NULL) < 0)
                return;
        ok(b->self_signed, "renew self-signed: still self-signed");
        ok(EVP_PKEY_eq(a->key, b->key) == 1, "renew self-signed: same key");
        ok(ASN1_INTEGER_cmp(X509_get0_serialNumber(a->leaf), X509_get0_serialNumber(b->leaf)) != 0,
           "renew self-signed: new serial");
        is_int(X509_NAME_cmp(X509_get_subject_name(a->leaf), X509_get_subject_name(b->leaf)), 0,
               "renew self-signed: same subject");
        sa = cert_sans(a->leaf);
        sb = cert_sans(b->leaf);
        is_str(sb, sa, "renew self-signed: same names");
        is_int(days_until(X509_get0_notAfter(b->leaf)), 90, "renew self-signed: new validity");
        ok(b->csr && EVP_PKEY_eq(X509_REQ_get0_pubkey(b->csr), b->key) == 1, "renew self-signed: CSR kept");
}

static void test_pkcs12(CertStore *cs, const char *pki) {
        _cleanup_free_ char *cmd = NULL, *def = path_join(tmpdir, "default.p12"), *leg = path_join(tmpdir, "legacy.p12");
        _cleanup_free_ char *exp = path_join(tmpdir, "export.p12"), *info = path_join(tmpdir, "export.info");
        _cleanup_free_ char *d_def = NULL, *d_leg = NULL, *infotext = NULL, *legcheck = NULL;
        _cleanup_(certificate_unrefp) Certificate *c = NULL, *rt = NULL;
        void *data = NULL;
        size_t len = 0;
        char *err = NULL;
        int r;

        if (asprintf(&cmd, "cd '%s' && openssl pkcs12 -export -in server-ec.pem -inkey server-ec.key "
                     "-certfile intermediate.pem -name mx -passout pass:secret -out '%s' 2>/dev/null && "
                     "cat ca.pem intermediate.pem > '%s/both.pem' && "
                     "openssl pkcs12 -export -legacy -in server-rsa.pem -inkey server-rsa.key "
                     "-certfile '%s/both.pem' -passout pass:secret -out '%s' 2>/dev/null",
                     pki, def, tmpdir, tmpdir, leg) < 0)
                abort();
        r = run(cmd);
        is_int(r, 0, "pkcs12: openssl pkcs12 -export (default and -legacy)");
        if (r != 0)
                return;
        free(TAKE_PTR(cmd));
        if (asprintf(&cmd, "openssl pkcs12 -in '%s' -passin pass:secret -legacy -info -noout 2>&1", leg) < 0)
                abort();
        {
                FILE *f = popen(cmd, "re");
                char line[512];

                if (f) {
                        while (fgets(line, sizeof(line), f))
                                if (strstr(line, "RC2") || strstr(line, "3DES") || strstr(line, "TripleDES")) {
                                        legcheck = strdup(line);
                                        break;
                                }
                        pclose(f);
                }
        }
        ok(legcheck, "pkcs12: the -legacy file does use RC2/3DES (%s)", legcheck ? strtok(legcheck, "\n") : "no");

        d_def = read_text(def);
        d_leg = read_text(leg);
        {
                struct stat st1, st2;

                if (stat(def, &st1) < 0 || stat(leg, &st2) < 0)
                        return;

                /* Wrong password: refused, nothing created. */
                r = certstore_import_pkcs12(cs, "p12bad", d_def, (size_t) st1.st_size, "wrong", &err);
                is_int(r, -EKEYREJECTED, "pkcs12: wrong password refused");
                is_str(err, "wrong PKCS#12 password", "pkcs12: ... with that reason");
                free(TAKE_PTR(err));
                ok(!certstore_exists(cs, "p12bad") && count_prefixed(cs, "p12bad") == 0,
                   "pkcs12: nothing created");
                is_int(count_prefixed(cs, ".tmp-"), 0, "pkcs12: no temporary directory left");
                is_int(certstore_import_pkcs12(cs, "p12bad", "garbage", 7, "x", &err), -EBADMSG,
                       "pkcs12: not PKCS#12 refused");
                ok(err && strstr(err, "not a PKCS#12"), "... reason (%s)", err ?: "(null)");
                free(TAKE_PTR(err));

                r = certstore_import_pkcs12(cs, "p12def", d_def, (size_t) st1.st_size, "secret", &err);
                is_int(r, 0, "pkcs12: default file imports%s%s", err ? ": " : "", err ?: "");
                free(TAKE_PTR(err));
                r = certstore_import_pkcs12(cs, "p12leg", d_leg, (size_t) st2.st_size, "secret", &err);
                is_int(r, 0, "pkcs12: -legacy file imports%s%s", err ? ": " : "", err ?: "");
                free(TAKE_PTR(err));
                is_int(certstore_import_pkcs12(cs, "p12def", d_def, (size_t) st1.st_size, "secret", &err),
                       -EEXIST, "pkcs12: existing name refused");
                free(TAKE_PTR(err));
        }
        if (certstore_load(cs, "p12leg", &c, NULL) == 0) {
                CertInfo i = {};

                is_int(certificate_key_id(c), EVP_PKEY_RSA, "pkcs12: legacy RSA key");
                is_int(sk_X509_num(c->chain), 2, "pkcs12: root and intermediate imported");
                if (certificate_info(c, &i) == 0) {
                        is_str(i.chain_state, "complete", "pkcs12: chain ordered and complete");
                        is_int(i.key_type, CERT_KEY_RSA_2048, "pkcs12: key type");
                        cert_info_done(&i);
                }
                c = certificate_unref(c);
        }

        /* Export: AES-256-CBC + PBKDF2, SHA-256 MAC, opens with openssl. */
        is_int(certstore_export_pkcs12(cs, "p12def", "", &data, &len, &err), -EINVAL, "export: empty password refused");
        free(TAKE_PTR(err));
        r = certstore_export_pkcs12(cs, "p12def", "x", &data, &len, &err);
        is_int(r, 0, "export: succeeds%s%s", err ? ": " : "", err ?: "");
        free(TAKE_PTR(err));
        if (r < 0)
                return;
        ok(write_text(exp, data, len) == 0, "export: written");
        free(TAKE_PTR(cmd));
        if (asprintf(&cmd, "openssl pkcs12 -in '%s' -passin pass:x -nodes -info > '%s' 2>&1", exp, info) < 0)
                abort();
        is_int(run(cmd), 0, "export: openssl pkcs12 -nodes -info opens it (no -legacy)");
        infotext = read_text(info);
        ok(infotext && strstr(infotext, "PBKDF2") && strstr(infotext, "AES-256-CBC"),
           "export: PBES2, PBKDF2, AES-256-CBC");
        ok(infotext && strstr(infotext, "MAC: sha256"), "export: SHA-256 MAC");
        ok(infotext && !strstr(infotext, "RC2") && !strstr(infotext, "3DES") && !strstr(infotext, "TripleDES"),
           "export: no RC2/3DES");
        ok(infotext && strstr(infotext, "BEGIN PRIVATE KEY") && strstr(infotext, "tlsgw Test Intermediate"),
           "export: key and chain inside");
        free(TAKE_PTR(cmd));
        if (asprintf(&cmd, "openssl pkcs12 -in '%s' -passin pass:y -nodes -noout >/dev/null 2>&1", exp) < 0)
                abort();
        ok(run(cmd) != 0, "export: openssl refuses a wrong password");

        r = certstore_import_pkcs12(cs, "p12rt", data, len, "x", &err);
        is_int(r, 0, "export: our file imports again%s%s", err ? ": " : "", err ?: "");
        free(TAKE_PTR(err));
        free(data);
        if (certstore_load(cs, "p12rt", &rt, NULL) == 0 && certstore_load(cs, "p12def", &c, NULL) == 0) {
                ok(X509_cmp(rt->leaf, c->leaf) == 0 && EVP_PKEY_eq(rt->key, c->key) == 1,
                   "export: round trip keeps key and certificate");
                is_int(sk_X509_num(rt->chain), 1, "export: round trip keeps the chain");
        }
        is_int(certstore_export_pkcs12(cs, "nosuch", "x", &data, &len, &err), -ENOENT, "export: unknown name");
        free(TAKE_PTR(err));

        /* Delete. */
        is_int(certstore_delete(cs, "p12rt"), 0, "delete: succeeds");
        ok(!certstore_exists(cs, "p12rt") && count_prefixed(cs, "p12rt") == 0, "delete: gone");
        is_int(count_prefixed(cs, ".deleted-"), 0, "delete: nothing retired left behind");
        is_int(certstore_delete(cs, "p12rt"), -ENOENT, "delete: again is ENOENT");
        is_int(certstore_delete(cs, "../x"), -EINVAL, "delete: bad name");
}

static const CertFinding *find_finding(const CertFinding *f, size_t n, const char *name, const char *check,
                                       const char *severity) {
        for (size_t i = 0; i < n; i++)
                if (streq(f[i].name, name) && streq(f[i].check, check) && streq(f[i].severity, severity))
                        return &f[i];
        return NULL;
}

static void test_check(const char *pki) {
        _cleanup_free_ char *dir = path_join(tmpdir, "checkstore"), *chain2 = path_join(tmpdir, "dup.pem");
        _cleanup_free_ char *rev = path_join(tmpdir, "rev.pem");
        _cleanup_free_ char *k = path_join(pki, "server-ec.key"), *c = path_join(pki, "server-ec.pem");
        _cleanup_free_ char *inter = path_join(pki, "intermediate.pem"), *ca = path_join(pki, "ca.pem");
        _cleanup_free_ char *ek = path_join(pki, "expired.key"), *ec = path_join(pki, "expired.pem");
        _cleanup_free_ char *ut = path_join(pki, "untrusted-ca.pem");
        CertParams p = { .common_name = "soon.example.test", .key_type = CERT_KEY_EC_P256, .days = SOON_DAYS };
        CertFinding *f = NULL;
        CertStore *cs = NULL;
        const CertFinding *x;
        size_t n = 0;

        if (certstore_open(dir, &cs) < 0) {
                tap_skip("check", "store did not open");
                return;
        }
        if (copy_file(inter, chain2) < 0 || append_file(inter, chain2) < 0 ||
            copy_file(ca, rev) < 0 || append_file(inter, rev) < 0)
                abort();
        make_entry(cs, "expired", ek, ec, inter, NULL);
        make_entry(cs, "broken", k, c, ut, NULL);
        make_entry(cs, "dup", k, c, chain2, NULL);
        make_entry(cs, "ooo", k, c, rev, NULL);
        make_entry(cs, "incomplete", k, c, NULL, NULL);
        {
                _cleanup_free_ char *good = path_join(tmpdir, "good.pem");

                if (copy_file(inter, good) < 0 || append_file(ca, good) < 0)
                        abort();
                make_entry(cs, "good", k, c, good, NULL);
        }
        is_int(certstore_create(cs, "soon", &p, NULL), 0, "check: expiring certificate made");

        is_int(certstore_check(cs, WARN_DAYS, &f, &n), 0, "check: runs");
        for (size_t i = 0; i < n; i++)
                printf("# %s %s %s: %s\n", f[i].name, f[i].severity, f[i].check, f[i].message);

        x = find_finding(f, n, "expired", "expiry", "error");
        ok(x && strstr(x->message, "expired on 2020-02-01"), "check: expired certificate is an error");
        x = find_finding(f, n, "soon", "expiry", "warning");
        ok(x && strstr(x->message, "expires in"), "check: expiring soon is a warning");
        ok(find_finding(f, n, "soon", "chain", "ok"), "check: self-signed chain ok");
        x = find_finding(f, n, "broken", "chain", "error");
        ok(x && strstr(x->message, "Untrusted Root did not issue the certificate"),
           "check: intermediate that did not issue is an error");
        x = find_finding(f, n, "dup", "duplicates", "warning");
        ok(x && strstr(x->message, "tlsgw Test Intermediate"), "check: duplicated intermediate reported");
        x = find_finding(f, n, "ooo", "chain", "warning");
        ok(x && strstr(x->message, "out of order"), "check: chain out of order reported");
        ok(!find_finding(f, n, "ooo", "chain", "error"), "check: ... and it still verifies");
        x = find_finding(f, n, "incomplete", "chain", "warning");
        ok(x && strstr(x->message, "no intermediates"), "check: missing intermediates reported");
        ok(find_finding(f, n, "expired", "chain", "ok") && !find_finding(f, n, "expired", "chain", "warning"),
           "check: a chain ending below a private root is fine");
        ok(find_finding(f, n, "good", "expiry", "ok") && find_finding(f, n, "good", "chain", "ok") &&
           !find_finding(f, n, "good", "chain", "warning") && !find_finding(f, n, "good", "chain", "error"),
           "check: a good certificate has only ok findings");
        cert_findings_free(f, n);

        /* An expired intermediate. */
        {
                _cleanup_free_ char *expint = path_join(pki, "expint.pem");
                f = NULL;
                n = 0;
                make_entry(cs, "expint", ek, ec, expint, NULL);
                if (certstore_check(cs, WARN_DAYS, &f, &n) == 0) {
                        x = find_finding(f, n, "expint", "chain", "error");
                        /* expint did not issue expired.pem: reported as such. */
                        ok(x != NULL, "check: foreign expired intermediate is an error (%s)", x ? x->message : "none");
                        cert_findings_free(f, n);
                }
        }

        /* chain_state of each. */
        {
                static const struct {
                        const char *name, *state;
                } states[] = {
                        { "good", "complete" },
                        { "incomplete", "incomplete" },
                        { "soon", "self-signed" },
                        { "broken", "broken: intermediate CN=Untrusted Root did not issue the certificate" },
                        { "dup", "incomplete" },
                };

                for (size_t i = 0; i < ELEMENTSOF(states); i++) {
                        Certificate *cert = NULL;
                        CertInfo info = {};

                        if (certstore_load(cs, states[i].name, &cert, NULL) < 0 ||
                            certificate_info(cert, &info) < 0) {
                                ok(false, "info: %s loads", states[i].name);
                                certificate_unref(cert);
                                continue;
                        }
                        is_str(info.chain_state, states[i].state, "info: chain state of %s", states[i].name);
                        cert_info_done(&info);
                        certificate_unref(cert);
                }
        }
        certstore_free(cs);
}

static void test_info_and_hosts(CertStore *cs, const char *pki) {
        _cleanup_(certificate_unrefp) Certificate *c = NULL, *w = NULL, *pw = NULL;
        _cleanup_free_ char *cmd = NULL, *fp = NULL, *pwk = path_join(tmpdir, "pw.key"), *pwc = path_join(tmpdir, "pw.pem");
        char *wsans[] = { (char *) "*.wild.example.test", NULL };
        CertParams p = { .common_name = "wild.example.test", .sans = wsans, .key_type = CERT_KEY_EC_P384, .days = 10 };
        CertInfo i = {};
        FILE *f;

        if (certstore_load(cs, "mx", &c, NULL) < 0 || certificate_info(c, &i) < 0) {
                tap_skip("info", "mx did not load");
                return;
        }
        is_str(i.subject, "CN=mx.test", "info: subject");
        is_str(i.issuer, "CN=tlsgw Test Intermediate", "info: issuer");
        ok(i.sans && strv_length(i.sans) == 3 && streq(i.sans[0], "mx.test") && streq(i.sans[1], "localhost") &&
           streq(i.sans[2], "mail.example.test"), "info: DNS SANs in order");
        is_int(i.key_type, CERT_KEY_EC_P256, "info: key type");
        is_int(i.chain_length, 1, "info: chain length");
        ok(i.not_after > i.not_before && i.not_before > 0, "info: validity");
        if (asprintf(&cmd, "openssl x509 -in '%s/server-ec.pem' -noout -fingerprint -sha256", pki) < 0)
                abort();
        f = popen(cmd, "re");
        if (f) {
                char line[256];

                if (fgets(line, sizeof(line), f)) {
                        char *eq = strchr(line, '=');

                        if (eq)
                                fp = strndup(eq + 1, strcspn(eq + 1, "\n"));
                }
                pclose(f);
        }
        is_str(i.fingerprint, fp, "info: SHA-256 fingerprint as openssl prints it");
        cert_info_done(&i);

        ok(certificate_matches_host(c, "mx.test"), "host: CN/SAN name");
        ok(certificate_matches_host(c, "MAIL.example.TEST"), "host: case-insensitive");
        ok(certificate_matches_host(c, "mx.test."), "host: trailing dot");
        ok(!certificate_matches_host(c, "other.test"), "host: other name");
        ok(certificate_matches_host(c, "127.0.0.1"), "host: IP SAN");
        ok(!certificate_matches_host(c, "127.0.0.2"), "host: other IP");
        ok(!certificate_matches_host(c, ""), "host: empty");

        if (certstore_create(cs, "wild", &p, NULL) == 0 && certstore_load(cs, "wild", &w, NULL) == 0) {
                ok(certificate_matches_host(w, "a.wild.example.test"), "host: wildcard label");
                ok(!certificate_matches_host(w, "a.b.wild.example.test"), "host: wildcard is one label");
                ok(certificate_matches_host(w, "wild.example.test"), "host: the CN's own name");
                ok(!certificate_matches_host(w, "x.example.test"), "host: not a parent's sibling");
        }

        /* A partial wildcard ("m*.pw.test") made with openssl never matches. */
        free(cmd);
        if (asprintf(&cmd, "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout '%s' "
                     "-out '%s' -days 5 -subj /CN=pw.test -addext 'subjectAltName=DNS:m*.pw.test' "
                     ">/dev/null 2>&1", pwk, pwc) < 0)
                abort();
        if (run(cmd) == 0) {
                make_entry(cs, "pw", pwk, pwc, NULL, NULL);
                if (certstore_load(cs, "pw", &pw, NULL) == 0)
                        ok(!certificate_matches_host(pw, "mx.pw.test"), "host: partial wildcard refused");
        } else
                tap_skip("host: partial wildcard", "openssl req -x509 failed");
}

static void test_admin(CertStore *cs) {
        _cleanup_free_ char *pki = path_join(tmpdir, "pki"), *marker = path_join(pki, "ca.key");

        test_list(cs);
        if (access(marker, R_OK) < 0) {
                tap_skip("administration with the test PKI", "the test PKI was not made");
                return;
        }
        test_upload(cs, pki);
        test_renew_self_signed(cs);
        test_pkcs12(cs, pki);
        test_info_and_hosts(cs, pki);
        test_check(pki);
}

int main(void) {
        _cleanup_free_ char *storedir = NULL;
        CertStore *cs = NULL;
        struct stat st;
        int r;

        if (!mkdtemp(tmpdir)) {
                perror("mkdtemp");
                return EXIT_FAILURE;
        }
        /* Two levels that do not exist yet: open creates them. */
        storedir = path_join(tmpdir, "state/certs");

        test_key_type_strings();

        r = certstore_open(storedir, &cs);
        is_int(r, 0, "store opened");
        if (r < 0) {
                rm_rf(tmpdir);
                return tap_done();
        }
        is_str(certstore_dir(cs), storedir, "store directory kept");
        ok(stat(storedir, &st) == 0 && S_ISDIR(st.st_mode) && (st.st_mode & 07777) == 0700,
           "store directory created with mode 0700");

        for (CertKeyType t = 0; t < _CERT_KEY_TYPE_MAX; t++)
                test_create(cs, t);
        test_create_refusals(cs);
        test_demo(cs);
        test_refcount(cs);
        test_bad_material(cs);
        test_pki(cs);
        test_admin(cs);

        certstore_free(cs);
        rm_rf(tmpdir);
        return tap_done();
}
