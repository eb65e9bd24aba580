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

        certstore_free(cs);
        rm_rf(tmpdir);
        return tap_done();
}
