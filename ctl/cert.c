/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * gwctl cert: the certificate store (org.tlsgw.Gateway1.Certificates on
 * the manager object, one org.tlsgw.Gateway1.Certificate object per
 * entry). Files are read and written here; keys are handled only by the
 * daemon and leave it only inside a password-protected PKCS#12. Returns
 * exit codes.
 */

#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "gwctl.h"
#include "output.h"
#include "util/parse.h"

/* Key types the store creates (docs/dbus-api.md CreateCertificate). */
static const char *const key_types[] = { "ec-p256", "rsa-2048", "rsa-3072", "rsa-4096" };

/* RFC 5280 4.1.2.5 allows any validity; a CA/Browser-style cap of ten
 * years keeps a typo from minting a certificate that never expires. */
#define CERT_DAYS_MAX 3650U

static int verb_cert_list(int argc, char *argv[]) {
        static const OutputColumn columns[] = {
                { "NAME",        OUTPUT_STRING,  0, 0 },
                { "KEY-TYPE",    OUTPUT_STRING,  0, 0 },
                { "SUBJECT",     OUTPUT_STRING,  0, OUTPUT_TRUNC },
                { "NOT-AFTER",   OUTPUT_TIME,    0, 0 },
                { "SELF-SIGNED", OUTPUT_BOOLEAN, 0, 0 },
        };
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_output_ Output *o = NULL;
        int r;

        if (argc > 1)
                return gw_usage("'cert list' takes no arguments");
        r = gw_call(GW_BUS_PATH, GW_IFACE_CERTIFICATES, "ListCertificates", &reply, NULL);
        if (r != 0)
                return r;
        r = output_new("certificates", columns, ELEMENTSOF(columns), &o);
        if (r >= 0)
                r = sd_bus_message_enter_container(reply, 'a', "(ssstb)");
        while (r >= 0) {
                const char *name, *key_type, *subject;
                uint64_t not_after;
                int self_signed;

                r = sd_bus_message_read(reply, "(ssstb)", &name, &key_type, &subject, &not_after, &self_signed);
                if (r <= 0)
                        break;
                r = output_row(o);
                if (r >= 0)
                        r = output_cell(o, 0, name);
                if (r >= 0)
                        r = output_cell(o, 1, key_type);
                if (r >= 0)
                        r = output_cell(o, 2, subject);
                if (r >= 0)
                        r = output_cell_time(o, 3, not_after);
                if (r >= 0)
                        r = output_cell_bool(o, 4, self_signed);
        }
        if (r >= 0)
                r = output_print(o);
        return r < 0 ? gw_bad_reply(r) : GWCTL_EXIT_OK;
}

static int verb_cert_show(int argc, char *argv[]) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_output_ Output *o = NULL;
        _cleanup_free_ char *path = NULL, *what = NULL;
        int r;

        if (argc != 2)
                return gw_usage("'cert show' needs one NAME");
        r = gw_object_path("certificate", argv[1], &path);
        if (r < 0 || asprintf(&what, "certificate '%s'", argv[1]) < 0)
                return gw_fail("out of memory");
        {
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;

                r = gw_new_method(path, "org.freedesktop.DBus.Properties", "GetAll", &m);
                if (r != 0)
                        return r;
                r = sd_bus_message_append(m, "s", GW_IFACE_CERTIFICATE);
                if (r < 0)
                        return gw_fail("cannot build the request: %s", strerror(-r));
                r = gw_call_message(m, &reply, what);
                if (r != 0)
                        return r;
        }
        r = output_record_new("certificate", &o);
        if (r >= 0)
                r = gw_record_add_dict(o, reply);
        if (r >= 0)
                r = output_print(o);
        return r < 0 ? gw_bad_reply(r) : GWCTL_EXIT_OK;
}

static int verb_cert_check(int argc, char *argv[]) {
        static const OutputColumn columns[] = {
                { "NAME",     OUTPUT_STRING, 0, 0 },
                { "SEVERITY", OUTPUT_STRING, 0, 0 },
                { "CHECK",    OUTPUT_STRING, 0, 0 },
                { "MESSAGE",  OUTPUT_STRING, 0, OUTPUT_WRAP },
        };
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_output_ Output *o = NULL;
        bool errors = false;
        int r;

        if (argc > 1)
                return gw_usage("'cert check' takes no arguments");
        r = gw_call(GW_BUS_PATH, GW_IFACE_CERTIFICATES, "CheckCertificates", &reply, NULL);
        if (r != 0)
                return r;
        r = output_new("findings", columns, ELEMENTSOF(columns), &o);
        if (r >= 0)
                r = sd_bus_message_enter_container(reply, 'a', "(ssss)");
        while (r >= 0) {
                const char *name, *severity, *check, *message;

                r = sd_bus_message_read(reply, "(ssss)", &name, &severity, &check, &message);
                if (r <= 0)
                        break;
                if (streq(severity, "error"))
                        errors = true;
                r = output_row(o);
                if (r >= 0)
                        r = output_cell(o, 0, name);
                if (r >= 0)
                        r = output_cell(o, 1, severity);
                if (r >= 0)
                        r = output_cell(o, 2, check);
                if (r >= 0)
                        r = output_cell(o, 3, message);
        }
        if (r >= 0)
                r = output_print(o);
        if (r < 0)
                return gw_bad_reply(r);
        /* Scripts can alert on the exit code alone. */
        return errors ? GWCTL_EXIT_FAILED : GWCTL_EXIT_OK;
}

static int parse_days(const char *s, uint32_t *ret) {
        uint32_t d;

        if (parse_uint32(s, &d) < 0 || d == 0 || d > CERT_DAYS_MAX)
                return gw_usage("--days must be a number of days from 1 to %u, not '%s'", CERT_DAYS_MAX, s);
        *ret = d;
        return 0;
}

static int verb_cert_create(int argc, char *argv[]) {
        enum { ARG_CN = 0x100, ARG_SAN, ARG_KEY, ARG_DAYS, ARG_ORG };
        static const struct option options[] = {
                { "cn",   required_argument, NULL, ARG_CN },
                { "san",  required_argument, NULL, ARG_SAN },
                { "key",  required_argument, NULL, ARG_KEY },
                { "days", required_argument, NULL, ARG_DAYS },
                { "org",  required_argument, NULL, ARG_ORG },
                {}
        };
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        _cleanup_strv_free_ char **sans = NULL;
        const char *cn = NULL, *key = NULL, *org = NULL;
        uint32_t days = 0;
        int c, r;

        gw_reset_getopt();
        while ((c = getopt_long(argc, argv, "", options, NULL)) >= 0)
                switch (c) {
                case ARG_CN:
                        cn = optarg;
                        break;
                case ARG_SAN:
                        if (gw_strv_add(&sans, optarg, true) < 0)
                                return gw_fail("out of memory");
                        break;
                case ARG_KEY: {
                        bool found = false;

                        for (size_t i = 0; i < ELEMENTSOF(key_types); i++)
                                found = found || streq(optarg, key_types[i]);
                        if (!found)
                                return gw_usage("--key must be ec-p256, rsa-2048, rsa-3072 or rsa-4096, not '%s'",
                                                optarg);
                        key = optarg;
                        break;
                }
                case ARG_DAYS:
                        r = parse_days(optarg, &days);
                        if (r != 0)
                                return r;
                        break;
                case ARG_ORG:
                        org = optarg;
                        break;
                default:
                        return GWCTL_EXIT_USAGE;
                }
        if (argc - optind != 1)
                return gw_usage("'cert create' needs one NAME");
        if (!cn)
                return gw_usage("'cert create' needs --cn COMMON-NAME");

        r = gw_new_method(GW_BUS_PATH, GW_IFACE_CERTIFICATES, "CreateCertificate", &m);
        if (r != 0)
                return r;
        r = sd_bus_message_append(m, "s", argv[optind]);
        if (r >= 0)
                r = sd_bus_message_open_container(m, 'a', "{sv}");
        if (r >= 0)
                r = sd_bus_message_append(m, "{sv}", "common_name", "s", cn);
        if (r >= 0 && sans) {
                r = sd_bus_message_open_container(m, 'e', "sv");
                if (r >= 0)
                        r = sd_bus_message_append(m, "s", "sans");
                if (r >= 0)
                        r = sd_bus_message_open_container(m, 'v', "as");
                if (r >= 0)
                        r = sd_bus_message_append_strv(m, sans);
                if (r >= 0)
                        r = sd_bus_message_close_container(m);
                if (r >= 0)
                        r = sd_bus_message_close_container(m);
        }
        if (r >= 0 && key)
                r = sd_bus_message_append(m, "{sv}", "key_type", "s", key);
        if (r >= 0 && days > 0)
                r = sd_bus_message_append(m, "{sv}", "days", "u", days);
        if (r >= 0 && org)
                r = sd_bus_message_append(m, "{sv}", "organization", "s", org);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        if (r < 0)
                return gw_fail("cannot build the request: %s", strerror(-r));
        r = gw_call_message(m, &reply, NULL);
        if (r != 0)
                return r;
        printf("Created certificate '%s' (self-signed); 'gwctl cert csr %s' prints its CSR.\n",
               argv[optind], argv[optind]);
        return GWCTL_EXIT_OK;
}

static int verb_cert_csr(int argc, char *argv[]) {
        static const struct option options[] = {
                { "output", required_argument, NULL, 'o' },
                {}
        };
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        const char *output = "-", *pem;
        int c, r;

        gw_reset_getopt();
        while ((c = getopt_long(argc, argv, "o:", options, NULL)) >= 0)
                switch (c) {
                case 'o':
                        output = optarg;
                        break;
                default:
                        return GWCTL_EXIT_USAGE;
                }
        if (argc - optind != 1)
                return gw_usage("'cert csr' needs one NAME");
        r = gw_call(GW_BUS_PATH, GW_IFACE_CERTIFICATES, "GetCSR", &reply, "s", argv[optind]);
        if (r != 0)
                return r;
        r = sd_bus_message_read(reply, "s", &pem);
        if (r < 0)
                return gw_bad_reply(r);
        /* A CSR is public: readable like any certificate. */
        return gw_write_file(output, pem, strlen(pem), 0644);
}

static int print_notes(sd_bus_message *reply) {
        _cleanup_strv_free_ char **notes = NULL;
        int r;

        r = sd_bus_message_read_strv(reply, &notes);
        if (r < 0)
                return gw_bad_reply(r);
        for (char **n = notes; n && *n; n++)
                printf("note: %s\n", *n);
        return 0;
}

static int verb_cert_upload(int argc, char *argv[]) {
        static const struct option options[] = {
                { "chain", required_argument, NULL, 'c' },
                {}
        };
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_free_ char *cert = NULL, *chain = NULL;
        const char *chain_file = NULL;
        int c, r;

        gw_reset_getopt();
        while ((c = getopt_long(argc, argv, "c:", options, NULL)) >= 0)
                switch (c) {
                case 'c':
                        chain_file = optarg;
                        break;
                default:
                        return GWCTL_EXIT_USAGE;
                }
        if (argc - optind != 2)
                return gw_usage("'cert upload' needs NAME and the signed certificate FILE");
        r = gw_read_file(argv[optind + 1], &cert, NULL);
        if (r == 0 && chain_file)
                r = gw_read_file(chain_file, &chain, NULL);
        if (r != 0)
                return r;
        r = gw_call(GW_BUS_PATH, GW_IFACE_CERTIFICATES, "UploadCertificate", &reply, "sss",
                    argv[optind], cert, chain ?: "");
        if (r != 0)
                return r;
        r = print_notes(reply);
        if (r != 0)
                return r;
        printf("Certificate '%s' replaced; new TLS handshakes use it.\n", argv[optind]);
        return GWCTL_EXIT_OK;
}

static int verb_cert_import(int argc, char *argv[]) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        _cleanup_free_ char *data = NULL, *password = NULL;
        const char *password_file;
        size_t len;
        int r;

        r = gw_parse_password_file(argc, argv, &password_file);
        if (r != 0)
                return r;
        if (argc - optind != 2)
                return gw_usage("'cert import' needs NAME and a PKCS#12 FILE");
        r = gw_read_file(argv[optind + 1], &data, &len);
        if (r != 0)
                return r;
        r = gw_read_password(password_file, "PKCS#12 password: ", false, &password);
        if (r != 0)
                return r;
        r = gw_new_method(GW_BUS_PATH, GW_IFACE_CERTIFICATES, "ImportPKCS12", &m);
        if (r != 0)
                return r;
        r = sd_bus_message_append(m, "s", argv[optind]);
        if (r >= 0)
                r = sd_bus_message_append_array(m, 'y', data, len);
        if (r >= 0)
                r = sd_bus_message_append(m, "s", password);
        if (r < 0)
                return gw_fail("cannot build the request: %s", strerror(-r));
        r = gw_call_message(m, &reply, NULL);
        if (r != 0)
                return r;
        printf("Imported certificate '%s'.\n", argv[optind]);
        return GWCTL_EXIT_OK;
}

static int verb_cert_export(int argc, char *argv[]) {
        enum { ARG_PASSWORD_FILE = 0x100 };
        static const struct option options[] = {
                { "output",        required_argument, NULL, 'o' },
                { "password-file", required_argument, NULL, ARG_PASSWORD_FILE },
                {}
        };
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_free_ char *password = NULL;
        const char *output = NULL, *password_file = NULL;
        const void *data;
        size_t len;
        int c, r;

        gw_reset_getopt();
        while ((c = getopt_long(argc, argv, "o:", options, NULL)) >= 0)
                switch (c) {
                case 'o':
                        output = optarg;
                        break;
                case ARG_PASSWORD_FILE:
                        password_file = optarg;
                        break;
                default:
                        return GWCTL_EXIT_USAGE;
                }
        if (argc - optind != 1)
                return gw_usage("'cert export' needs one NAME");
        if (!output)
                return gw_usage("'cert export' needs -o FILE.p12 (the file holds the private key)");
        r = gw_read_password(password_file, "Password to protect the PKCS#12 file: ", true, &password);
        if (r != 0)
                return r;
        /* An unprotected export would be the private key in the clear. */
        if (isempty(password))
                return gw_usage("the PKCS#12 password must not be empty");
        r = gw_call(GW_BUS_PATH, GW_IFACE_CERTIFICATES, "ExportPKCS12", &reply, "ss", argv[optind], password);
        if (r != 0)
                return r;
        r = sd_bus_message_read_array(reply, 'y', &data, &len);
        if (r < 0)
                return gw_bad_reply(r);
        r = gw_write_file(output, data, len, 0600);
        if (r != 0)
                return r;
        if (!streq(output, "-"))
                printf("Exported certificate '%s' with its key to '%s'.\n", argv[optind], output);
        return GWCTL_EXIT_OK;
}

static int verb_cert_renew(int argc, char *argv[]) {
        enum { ARG_DAYS = 0x100 };
        static const struct option options[] = {
                { "days", required_argument, NULL, ARG_DAYS },
                {}
        };
        uint32_t days = 0;
        int c, r;

        gw_reset_getopt();
        while ((c = getopt_long(argc, argv, "", options, NULL)) >= 0)
                switch (c) {
                case ARG_DAYS:
                        r = parse_days(optarg, &days);
                        if (r != 0)
                                return r;
                        break;
                default:
                        return GWCTL_EXIT_USAGE;
                }
        if (argc - optind != 1)
                return gw_usage("'cert renew' needs one NAME");
        r = gw_call(GW_BUS_PATH, GW_IFACE_CERTIFICATES, "RenewCertificate", NULL, "su", argv[optind], days);
        if (r != 0)
                return r;
        printf("Renewed certificate '%s' (a CA-signed one has a new CSR: 'gwctl cert csr %s').\n",
               argv[optind], argv[optind]);
        return GWCTL_EXIT_OK;
}

static int verb_cert_delete(int argc, char *argv[]) {
        int r;

        if (argc != 2)
                return gw_usage("'cert delete' needs one NAME");
        r = gw_call(GW_BUS_PATH, GW_IFACE_CERTIFICATES, "DeleteCertificate", NULL, "s", argv[1]);
        if (r != 0)
                return r;
        printf("Deleted certificate '%s'.\n", argv[1]);
        return GWCTL_EXIT_OK;
}

const Verb cert_verbs[] = {
        { "cert", "list",   verb_cert_list,   "\tCertificates in the store" },
        { "cert", "show",   verb_cert_show,   "NAME\tSubject, SANs, issuer, validity, chain state, where used" },
        { "cert", "check",  verb_cert_check,  "\tExpiry, chains, duplicates, listener host names (exit 1 on errors)" },
        { "cert", "create", verb_cert_create, "NAME --cn CN [--san NAME]... [--key TYPE] [--days N] [--org ORG]\tNew key, self-signed certificate and CSR" },
        { "cert", "csr",    verb_cert_csr,    "NAME [-o FILE]\tThe CSR in PEM, for a CA to sign" },
        { "cert", "upload", verb_cert_upload, "NAME FILE [--chain FILE]\tReplace with the CA-signed certificate" },
        { "cert", "import", verb_cert_import, "NAME FILE.p12 [--password-file FILE]\tNew entry from a PKCS#12 file" },
        { "cert", "export", verb_cert_export, "NAME -o FILE.p12 [--password-file FILE]\tKey and chain as PKCS#12 (AES-256)" },
        { "cert", "renew",  verb_cert_renew,  "NAME [--days N]\tRe-sign (self-signed) or new CSR (CA-signed), same key" },
        { "cert", "delete", verb_cert_delete, "NAME\tRemove an entry that nothing uses" },
        {}
};
