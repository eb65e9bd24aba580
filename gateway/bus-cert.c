/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The certificate store on the bus (docs/dbus-api.md, "Certificates"):
 * the org.tlsgw.Gateway1.Certificates methods on BUS_PATH, and one object
 * BUS_PATH/certificate/<encoded name> per stored certificate with the
 * read-only org.tlsgw.Gateway1.Certificate properties, served by a fallback
 * vtable and a node enumerator so the objects follow the store on disk.
 *
 * Certificates are not staged: a change takes effect at once. After a
 * create, upload, import or renew of a certificate the running
 * configuration uses, the TLS contexts are rebuilt, so new handshakes use
 * it while sessions already open keep theirs. Every method that changes
 * the store or reveals a secret (the PKCS#12 export) checks the caller
 * with bus_check_admin(); listing, reading the CSR and checking are open.
 *
 * Not here: the store itself (certstore.c), which certificate a listener
 * uses (configuration, staged). Changes are logged at info level with the
 * caller, as an audit trail; handlers return negative errno with the bus
 * error set.
 */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <systemd/sd-bus.h>

#include "bus.h"
#include "certstore.h"
#include "config.h"
#include "log.h"
#include "manager.h"
#include "staging.h"
#include "util/macro.h"

#define BUS_CERT_PATH BUS_PATH "/certificate"
/* Validity of a created certificate when the caller gives none: a year,
 * within what public CAs issue (at most 398 days). */
#define BUS_CERT_DEFAULT_DAYS 365
/* CheckCertificates warns this long before expiry: the window in which
 * ACME clients renew, enough time to get a CA-signed one replaced. */
#define BUS_CERT_WARN_DAYS 30
/* A GetAll reads every property of one certificate; the parsed snapshot
 * is kept for the properties of that one call only (see cert_view_get). */

typedef enum CertEvent {
        CERT_EVENT_ADDED,
        CERT_EVENT_CHANGED,
        CERT_EVENT_REMOVED,
} CertEvent;

/* ------------------------------------------------------------------------
 * Errors
 */

static int cert_error(sd_bus_error *error, int r, const char *name, const char *text) {
        const char *e;

        switch (r) {
        case -EINVAL:
        case -EBADMSG:
        case -E2BIG:
        case -EFBIG:
                e = BUS_ERROR_INVALID;
                break;
        case -ENOENT:
                e = BUS_ERROR_NOT_FOUND;
                break;
        case -EEXIST:
                e = BUS_ERROR_EXISTS;
                break;
        case -EKEYREJECTED:
                e = BUS_ERROR_BAD_PASSWORD;
                break;
        default:
                e = BUS_ERROR_FAILED;
        }
        if (!isempty(text))
                return sd_bus_error_setf(error, e, "Certificate '%s': %s.", name, text);
        if (r == -ENOENT)
                return sd_bus_error_setf(error, e, "Certificate '%s' does not exist.", name);
        return sd_bus_error_setf(error, e, "Certificate '%s': %s.", name, strerror(-r));
}

/* ------------------------------------------------------------------------
 * Certificate objects
 */

static int cert_path(const char *name, char **ret) {
        return sd_bus_path_encode(BUS_CERT_PATH, name, ret);
}

/* One certificate as the properties show it. A certificate that does not
 * load is still an object: its ChainState says why. */
typedef struct CertView {
        char *name;
        bool loaded;
        CertInfo info;
        bool self_signed;
        bool has_csr;
        char *error;
        /* Which call it was read for (see cert_view_get). */
        char *caller;
        uint64_t call_cookie;
} CertView;

static void cert_view_done(CertView *v) {
        free(v->name);
        cert_info_done(&v->info);
        free(v->error);
        free(v->caller);
        *v = (CertView) {};
}

/* The last view read. Properties are computed from files (and a chain
 * verification): a GetAll would read them once per property. It is
 * reused only for the same certificate within the same method call
 * (caller and cookie of the call being answered), so a later call always
 * sees the store as it is then. */
static CertView cert_view_cache;

static int cert_view_get(Manager *m, const char *path, sd_bus_message *reply, const CertView **ret,
                         sd_bus_error *error) {
        _cleanup_(certificate_unrefp) Certificate *c = NULL;
        _cleanup_free_ char *name = NULL;
        const char *caller = reply ? sd_bus_message_get_destination(reply) : NULL;
        uint64_t cookie = 0;
        CertView v = {};
        int r;

        r = sd_bus_path_decode(path, BUS_CERT_PATH, &name);
        if (r < 0)
                return r;
        if (r == 0)
                return sd_bus_error_setf(error, BUS_ERROR_NOT_FOUND, "No certificate at %s.", path);
        if (reply)
                (void) sd_bus_message_get_reply_cookie(reply, &cookie);

        if (cert_view_cache.name && cookie != 0 && caller && cert_view_cache.caller &&
            cert_view_cache.call_cookie == cookie && streq(cert_view_cache.caller, caller) &&
            streq(cert_view_cache.name, name)) {
                *ret = &cert_view_cache;
                return 0;
        }

        v.name = TAKE_PTR(name);
        v.call_cookie = cookie;
        if (caller) {
                v.caller = strdup(caller);
                if (!v.caller) {
                        cert_view_done(&v);
                        return -ENOMEM;
                }
        }
        r = certstore_load(m->certstore, v.name, &c, &v.error);
        if (r >= 0) {
                r = certificate_info(c, &v.info);
                if (r < 0) {
                        cert_view_done(&v);
                        return r;
                }
                v.loaded = true;
                v.self_signed = c->self_signed;
                v.has_csr = c->csr != NULL;
        } else if (r == -ENOMEM) {
                cert_view_done(&v);
                return r;
        } else if (!v.error && asprintf(&v.error, "%s", strerror(-r)) < 0) {
                cert_view_done(&v);
                return -ENOMEM;
        }

        cert_view_done(&cert_view_cache);
        cert_view_cache = v;
        *ret = &cert_view_cache;
        return 0;
}

static void cert_view_invalidate(void) {
        cert_view_done(&cert_view_cache);
}

static int cert_object_find(sd_bus *bus, const char *path, const char *interface, void *userdata,
                            void **found, sd_bus_error *error) {
        _cleanup_free_ char *name = NULL;
        Manager *m = userdata;
        int r;

        r = sd_bus_path_decode(path, BUS_CERT_PATH, &name);
        if (r <= 0)
                return r;
        if (!m->certstore || !certstore_exists(m->certstore, name))
                return 0;
        *found = m;
        return 1;
}

static int cert_node_enumerator(sd_bus *bus, const char *path, void *userdata, char ***nodes,
                                sd_bus_error *error) {
        _cleanup_strv_free_ char **names = NULL, **paths = NULL;
        Manager *m = userdata;
        size_t n;
        int r;

        if (!m->certstore) {
                *nodes = NULL;
                return 0;
        }
        r = certstore_list(m->certstore, &names);
        if (r < 0)
                return r;
        n = strv_length(names);
        paths = calloc(n + 1, sizeof(char *));
        if (!paths)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                r = cert_path(names[i], &paths[i]);
                if (r < 0)
                        return r;
        }
        *nodes = TAKE_PTR(paths);
        return 0;
}

static int property_get_name(sd_bus *bus, const char *path, const char *interface, const char *property,
                             sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        _cleanup_free_ char *name = NULL;
        int r;

        r = sd_bus_path_decode(path, BUS_CERT_PATH, &name);
        if (r <= 0)
                return r < 0 ? r : -ENOENT;
        return sd_bus_message_append(reply, "s", name);
}

static int property_get_info(sd_bus *bus, const char *path, const char *interface, const char *property,
                             sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        _cleanup_free_ char *broken = NULL;
        Manager *m = userdata;
        const CertView *v;
        const CertInfo *i;
        int r;

        r = cert_view_get(m, path, reply, &v, error);
        if (r < 0)
                return r;
        i = &v->info;

        if (streq(property, "KeyType"))
                return sd_bus_message_append(reply, "s", v->loaded ? cert_key_type_to_string(i->key_type) ?: "" : "");
        if (streq(property, "Subject"))
                return sd_bus_message_append(reply, "s", i->subject ?: "");
        if (streq(property, "Issuer"))
                return sd_bus_message_append(reply, "s", i->issuer ?: "");
        if (streq(property, "SANs"))
                return sd_bus_message_append_strv(reply, i->sans);
        if (streq(property, "NotBefore"))
                return sd_bus_message_append(reply, "t", i->not_before);
        if (streq(property, "NotAfter"))
                return sd_bus_message_append(reply, "t", i->not_after);
        if (streq(property, "SelfSigned"))
                return sd_bus_message_append(reply, "b", v->self_signed);
        if (streq(property, "ChainLength"))
                return sd_bus_message_append(reply, "u", (uint32_t) i->chain_length);
        if (streq(property, "HasCSR"))
                return sd_bus_message_append(reply, "b", v->has_csr);
        if (streq(property, "Fingerprint"))
                return sd_bus_message_append(reply, "s", i->fingerprint ?: "");
        if (streq(property, "ChainState")) {
                if (v->loaded)
                        return sd_bus_message_append(reply, "s", i->chain_state);
                if (asprintf(&broken, "broken: %s", v->error ?: "it does not load") < 0)
                        return -ENOMEM;
                return sd_bus_message_append(reply, "s", broken);
        }
        return -ENOENT;
}

static int property_get_used_by(sd_bus *bus, const char *path, const char *interface, const char *property,
                                sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        _cleanup_strv_free_ char **places = NULL;
        _cleanup_free_ char *name = NULL;
        Manager *m = userdata;
        int r;

        r = sd_bus_path_decode(path, BUS_CERT_PATH, &name);
        if (r <= 0)
                return r < 0 ? r : -ENOENT;
        if (m->config) {
                r = config_certificate_users(m->config, name, &places);
                if (r < 0)
                        return r;
        }
        return sd_bus_message_append_strv(reply, places);
}

/* Everything but Name changes with an upload or renewal, UsedBy with a
 * commit: they are invalidated, not sent, since computing them costs file
 * reads and a chain verification nobody may be waiting for. */
#define CERT_PROPERTY(name, sig, getter) \
        SD_BUS_PROPERTY(name, sig, getter, 0, SD_BUS_VTABLE_PROPERTY_EMITS_INVALIDATION)

static const sd_bus_vtable certificate_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_PROPERTY("Name", "s", property_get_name, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        CERT_PROPERTY("KeyType", "s", property_get_info),
        CERT_PROPERTY("Subject", "s", property_get_info),
        CERT_PROPERTY("SANs", "as", property_get_info),
        CERT_PROPERTY("Issuer", "s", property_get_info),
        CERT_PROPERTY("NotBefore", "t", property_get_info),
        CERT_PROPERTY("NotAfter", "t", property_get_info),
        CERT_PROPERTY("SelfSigned", "b", property_get_info),
        CERT_PROPERTY("ChainLength", "u", property_get_info),
        CERT_PROPERTY("ChainState", "s", property_get_info),
        CERT_PROPERTY("HasCSR", "b", property_get_info),
        CERT_PROPERTY("UsedBy", "as", property_get_used_by),
        CERT_PROPERTY("Fingerprint", "s", property_get_info),
        SD_BUS_VTABLE_END
};

/* Everything an upload, renewal or commit may change. */
static const char * const cert_changing_properties[] = {
        "KeyType", "Subject", "SANs", "Issuer", "NotBefore", "NotAfter", "SelfSigned",
        "ChainLength", "ChainState", "HasCSR", "UsedBy", "Fingerprint", NULL,
};

static void cert_emit(sd_bus *bus, const char *name, CertEvent ev) {
        _cleanup_free_ char *path = NULL;
        int r;

        cert_view_invalidate();
        if (!bus)
                return;
        r = cert_path(name, &path);
        if (r < 0)
                return;

        switch (ev) {
        case CERT_EVENT_ADDED:
                r = sd_bus_emit_interfaces_added(bus, path, BUS_IFACE_CERTIFICATE, NULL);
                break;
        case CERT_EVENT_REMOVED:
                r = sd_bus_emit_interfaces_removed(bus, path, BUS_IFACE_CERTIFICATE, NULL);
                break;
        default:
                r = sd_bus_emit_properties_changed_strv(bus, path, BUS_IFACE_CERTIFICATE,
                                                        (char **) cert_changing_properties);
        }
        if (r < 0)
                log_debug_errno(r, "Cannot announce the change of certificate '%s' on the bus: %m", name);
}

void bus_cert_emit_changed(Manager *m, const char *name) {
        _cleanup_strv_free_ char **names = NULL;

        if (!m)
                return;
        cert_view_invalidate();
        if (!m->bus || !m->certstore)
                return;

        if (name) {
                cert_emit(m->bus, name, certstore_exists(m->certstore, name) ? CERT_EVENT_CHANGED : CERT_EVENT_REMOVED);
                return;
        }
        /* All of them: after a commit or reload UsedBy may have changed
         * for any certificate. */
        if (certstore_list(m->certstore, &names) < 0)
                return;
        for (char **n = names; *n; n++)
                cert_emit(m->bus, *n, CERT_EVENT_CHANGED);
}

/* ------------------------------------------------------------------------
 * Methods
 */

static int caller_name(sd_bus_message *msg, char **ret) {
        if (bus_caller(msg, NULL, ret) >= 0)
                return 0;
        *ret = strdup("an unidentified caller");
        return *ret ? 0 : -ENOMEM;
}

/* The certificate's contents changed on disk: new handshakes use it at
 * once when the running configuration uses it; sessions already open
 * keep the context they started with. Then the bus hears of it. */
static int cert_applied(Manager *m, sd_bus_message *msg, const char *name, CertEvent ev, const char *verb,
                        sd_bus_error *error) {
        _cleanup_strv_free_ char **places = NULL;
        _cleanup_free_ char *who = NULL, *err = NULL;
        int r, used = 0;

        (void) caller_name(msg, &who);
        log_info("Certificate '%s' %s by %s.", name, verb, who ?: "an unidentified caller");

        if (m->config && ev != CERT_EVENT_REMOVED) {
                used = config_certificate_users(m->config, name, &places);
                if (used < 0)
                        used = 0;
        }
        if (used > 0) {
                r = manager_refresh_tls(m, &err);
                if (r < 0) {
                        cert_emit(sd_bus_message_get_bus(msg), name, ev);
                        log_error_errno(r, "Certificate '%s' was %s, but the TLS contexts could not be rebuilt: %s",
                                        name, verb, err ?: "unknown reason");
                        return sd_bus_error_setf(error, BUS_ERROR_APPLY_FAILED,
                                                 "Certificate '%s' was %s, but the TLS contexts could not be "
                                                 "rebuilt (%s); new connections keep the previous certificates "
                                                 "until this is fixed.", name, verb, err ?: strerror(-r));
                }
        }
        cert_emit(sd_bus_message_get_bus(msg), name, ev);
        return 0;
}

static int reply_path(sd_bus_message *msg, const char *name) {
        _cleanup_free_ char *path = NULL;
        int r;

        r = cert_path(name, &path);
        if (r < 0)
                return r;
        return sd_bus_reply_method_return(msg, "o", path);
}

static int method_list_certificates(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_strv_free_ char **names = NULL;
        Manager *m = userdata;
        int r;

        r = certstore_list(m->certstore, &names);
        if (r < 0)
                return sd_bus_error_set_errnof(error, r, "Cannot list the certificate store: %m");

        r = sd_bus_message_new_method_return(msg, &reply);
        if (r < 0)
                return r;
        r = sd_bus_message_open_container(reply, 'a', "(ssstb)");
        if (r < 0)
                return r;
        for (char **n = names; *n; n++) {
                _cleanup_(certificate_unrefp) Certificate *c = NULL;
                _cleanup_(cert_info_done) CertInfo i = {};
                bool ok;

                /* One that does not load is listed with empty fields;
                 * CheckCertificates and its object say why. */
                ok = certstore_load(m->certstore, *n, &c, NULL) >= 0 && certificate_info(c, &i) >= 0;
                r = sd_bus_message_append(reply, "(ssstb)", *n,
                                          ok ? cert_key_type_to_string(i.key_type) ?: "" : "",
                                          ok ? i.subject : "",
                                          ok ? i.not_after : (uint64_t) 0,
                                          ok && c->self_signed);
                if (r < 0)
                        return r;
        }
        r = sd_bus_message_close_container(reply);
        if (r < 0)
                return r;
        return sd_bus_send(NULL, reply, NULL);
}

static int read_create_params(sd_bus_message *msg, CertParams *p, char ***ret_sans, sd_bus_error *error) {
        _cleanup_strv_free_ char **sans = NULL;
        bool seen_cn = false, seen_sans = false, seen_type = false, seen_days = false, seen_org = false;
        int r;

        r = sd_bus_message_enter_container(msg, 'a', "{sv}");
        if (r < 0)
                return r;
        for (;;) {
                const char *key, *contents;
                bool *seen;
                char want;

                r = sd_bus_message_enter_container(msg, 'e', "sv");
                if (r < 0)
                        return r;
                if (r == 0)
                        break;
                r = sd_bus_message_read(msg, "s", &key);
                if (r < 0)
                        return r;
                if (streq(key, "common_name")) {
                        seen = &seen_cn;
                        want = 's';
                } else if (streq(key, "sans")) {
                        seen = &seen_sans;
                        want = 'a';
                } else if (streq(key, "key_type")) {
                        seen = &seen_type;
                        want = 's';
                } else if (streq(key, "days")) {
                        seen = &seen_days;
                        want = 'u';
                } else if (streq(key, "organization")) {
                        seen = &seen_org;
                        want = 's';
                } else
                        return sd_bus_error_setf(error, BUS_ERROR_INVALID,
                                                 "Unknown certificate parameter '%s' (common_name, sans, key_type, "
                                                 "days, organization).", key);
                if (*seen)
                        return sd_bus_error_setf(error, BUS_ERROR_INVALID, "Parameter '%s' is given twice.", key);
                *seen = true;

                r = sd_bus_message_peek_type(msg, NULL, &contents);
                if (r < 0)
                        return r;
                if (!contents || contents[0] != want || (want == 'a' && !streq(contents, "as")) ||
                    (want != 'a' && contents[1] != '\0'))
                        return sd_bus_error_setf(error, BUS_ERROR_INVALID, "Parameter '%s' must be of type %s.",
                                                 key, want == 'a' ? "as" : want == 'u' ? "u" : "s");
                r = sd_bus_message_enter_container(msg, 'v', contents);
                if (r < 0)
                        return r;
                if (streq(key, "common_name"))
                        r = sd_bus_message_read(msg, "s", &p->common_name);
                else if (streq(key, "organization"))
                        r = sd_bus_message_read(msg, "s", &p->organization);
                else if (streq(key, "days"))
                        r = sd_bus_message_read(msg, "u", &p->days);
                else if (streq(key, "sans"))
                        r = sd_bus_message_read_strv(msg, &sans);
                else {
                        const char *t;

                        r = sd_bus_message_read(msg, "s", &t);
                        if (r >= 0) {
                                p->key_type = cert_key_type_from_string(t);
                                if (p->key_type < 0)
                                        return sd_bus_error_setf(error, BUS_ERROR_INVALID,
                                                                 "Unknown key type '%s' (ec-p256, ec-p384, rsa-2048, "
                                                                 "rsa-3072, rsa-4096).", t);
                        }
                }
                if (r < 0)
                        return r;
                r = sd_bus_message_exit_container(msg);
                if (r < 0)
                        return r;
                r = sd_bus_message_exit_container(msg);
                if (r < 0)
                        return r;
        }
        r = sd_bus_message_exit_container(msg);
        if (r < 0)
                return r;

        if (!seen_cn || isempty(p->common_name))
                return sd_bus_error_setf(error, BUS_ERROR_INVALID, "Parameter 'common_name' is required.");
        if (seen_org && isempty(p->organization))
                p->organization = NULL;
        p->sans = sans;
        *ret_sans = TAKE_PTR(sans);
        return 0;
}

static int method_create_certificate(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        _cleanup_strv_free_ char **sans = NULL;
        _cleanup_free_ char *err = NULL;
        Manager *m = userdata;
        CertParams p = {
                .key_type = CERT_KEY_EC_P256,
                .days = BUS_CERT_DEFAULT_DAYS,
        };
        const char *name;
        int r;

        r = bus_check_admin(m, msg, error);
        if (r < 0)
                return r;
        r = sd_bus_message_read(msg, "s", &name);
        if (r < 0)
                return r;
        r = read_create_params(msg, &p, &sans, error);
        if (r < 0)
                return r;

        r = certstore_create(m->certstore, name, &p, &err);
        if (r < 0)
                return cert_error(error, r, name, err);
        r = cert_applied(m, msg, name, CERT_EVENT_ADDED, "created", error);
        if (r < 0)
                return r;
        return reply_path(msg, name);
}

static int method_get_csr(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        _cleanup_free_ char *pem = NULL;
        Manager *m = userdata;
        const char *name;
        int r;

        r = sd_bus_message_read(msg, "s", &name);
        if (r < 0)
                return r;
        r = certstore_get_csr(m->certstore, name, &pem);
        if (r < 0)
                return cert_error(error, r, name, NULL);
        return sd_bus_reply_method_return(msg, "s", pem);
}

static int method_upload_certificate(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_strv_free_ char **notes = NULL;
        _cleanup_free_ char *err = NULL;
        Manager *m = userdata;
        const char *name, *cert_pem, *chain_pem;
        int r;

        r = bus_check_admin(m, msg, error);
        if (r < 0)
                return r;
        r = sd_bus_message_read(msg, "sss", &name, &cert_pem, &chain_pem);
        if (r < 0)
                return r;

        r = certstore_upload(m->certstore, name, cert_pem, chain_pem, &notes, &err);
        if (r < 0)
                return cert_error(error, r, name, err);
        r = cert_applied(m, msg, name, CERT_EVENT_CHANGED, "replaced by an uploaded certificate", error);
        if (r < 0)
                return r;

        r = sd_bus_message_new_method_return(msg, &reply);
        if (r < 0)
                return r;
        r = sd_bus_message_append_strv(reply, notes);
        if (r < 0)
                return r;
        return sd_bus_send(NULL, reply, NULL);
}

static int method_import_pkcs12(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        _cleanup_free_ char *err = NULL;
        Manager *m = userdata;
        const char *name, *password;
        const void *data;
        size_t len;
        int r;

        r = bus_check_admin(m, msg, error);
        if (r < 0)
                return r;
        r = sd_bus_message_read(msg, "s", &name);
        if (r < 0)
                return r;
        r = sd_bus_message_read_array(msg, 'y', &data, &len);
        if (r < 0)
                return r;
        r = sd_bus_message_read(msg, "s", &password);
        if (r < 0)
                return r;

        r = certstore_import_pkcs12(m->certstore, name, data, len, password, &err);
        if (r < 0)
                return cert_error(error, r, name, err);
        r = cert_applied(m, msg, name, CERT_EVENT_ADDED, "imported from PKCS#12", error);
        if (r < 0)
                return r;
        return reply_path(msg, name);
}

static int method_export_pkcs12(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_free_ char *err = NULL, *who = NULL;
        _cleanup_free_ void *data = NULL;
        Manager *m = userdata;
        const char *name, *password;
        size_t len = 0;
        int r;

        /* The private key leaves the daemon only this way. */
        r = bus_check_admin(m, msg, error);
        if (r < 0)
                return r;
        r = sd_bus_message_read(msg, "ss", &name, &password);
        if (r < 0)
                return r;

        r = certstore_export_pkcs12(m->certstore, name, password, &data, &len, &err);
        if (r < 0)
                return cert_error(error, r, name, err);
        (void) caller_name(msg, &who);
        log_info("Certificate '%s' with its private key exported as PKCS#12 by %s.", name,
                 who ?: "an unidentified caller");

        r = sd_bus_message_new_method_return(msg, &reply);
        if (r < 0)
                return r;
        /* The reply carries key material (encrypted, but still): erase it
         * from memory when freed. */
        (void) sd_bus_message_sensitive(reply);
        r = sd_bus_message_append_array(reply, 'y', data, len);
        if (r < 0)
                return r;
        return sd_bus_send(NULL, reply, NULL);
}

static int method_renew_certificate(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        _cleanup_free_ char *err = NULL;
        Manager *m = userdata;
        const char *name;
        uint32_t days;
        int r;

        r = bus_check_admin(m, msg, error);
        if (r < 0)
                return r;
        r = sd_bus_message_read(msg, "su", &name, &days);
        if (r < 0)
                return r;
        /* 0: the default validity, as for CreateCertificate. */
        if (days == 0)
                days = BUS_CERT_DEFAULT_DAYS;

        r = certstore_renew(m->certstore, name, days, &err);
        if (r < 0)
                return cert_error(error, r, name, err);
        r = cert_applied(m, msg, name, CERT_EVENT_CHANGED, "renewed", error);
        if (r < 0)
                return r;
        return sd_bus_reply_method_return(msg, NULL);
}

/* Where the running and the pending configuration use NAME, joined for a
 * message ("listener inbound, tls_client"); NULL when nowhere. */
static int cert_users_text(Manager *m, const char *name, char **ret) {
        _cleanup_strv_free_ char **running = NULL, **pending = NULL;
        _cleanup_(config_unrefp) Config *pc = NULL;
        char *s = NULL;
        size_t len = 0;
        FILE *f;
        int r;

        if (m->config) {
                r = config_certificate_users(m->config, name, &running);
                if (r < 0)
                        return r;
        }
        if (m->staging && staging_pending_config(m->staging, &pc) >= 0) {
                r = config_certificate_users(pc, name, &pending);
                if (r < 0)
                        return r;
        }
        if (strv_length(running) + strv_length(pending) == 0) {
                *ret = NULL;
                return 0;
        }

        f = open_memstream(&s, &len);
        if (!f)
                return -ENOMEM;
        for (char **p = running; p && *p; p++)
                fprintf(f, "%s%s", ftell(f) > 0 ? ", " : "", *p);
        for (char **p = pending; p && *p; p++) {
                bool dup = false;

                for (char **q = running; q && *q && !dup; q++)
                        dup = streq(*p, *q);
                if (!dup)
                        fprintf(f, "%s%s (pending)", ftell(f) > 0 ? ", " : "", *p);
        }
        if (fclose(f) != 0) {
                free(s);
                return -ENOMEM;
        }
        *ret = s;
        return 0;
}

static int method_delete_certificate(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        _cleanup_free_ char *users = NULL;
        Manager *m = userdata;
        const char *name;
        int r;

        r = bus_check_admin(m, msg, error);
        if (r < 0)
                return r;
        r = sd_bus_message_read(msg, "s", &name);
        if (r < 0)
                return r;

        if (!certstore_exists(m->certstore, name))
                return cert_error(error, -ENOENT, name, NULL);
        r = cert_users_text(m, name, &users);
        if (r < 0)
                return sd_bus_error_set_errnof(error, r, "Cannot tell where certificate '%s' is used: %m", name);
        if (users)
                return sd_bus_error_setf(error, BUS_ERROR_IN_USE,
                                         "Certificate '%s' is used by %s; change those first.", name, users);

        r = certstore_delete(m->certstore, name);
        if (r < 0)
                return cert_error(error, r, name, NULL);
        r = cert_applied(m, msg, name, CERT_EVENT_REMOVED, "deleted", error);
        if (r < 0)
                return r;
        return sd_bus_reply_method_return(msg, NULL);
}

/* For each listener with STARTTLS: does its certificate name its
 * hostname? A client that verifies (RFC 7672 DANE, RFC 8461 MTA-STS)
 * checks exactly that (RFC 6125 6.4). */
static int append_listener_findings(Manager *m, sd_bus_message *reply) {
        const Config *c = m->config;
        int r;

        if (!c)
                return 0;
        for (size_t i = 0; i < c->n_listeners; i++) {
                const ListenerConfig *l = &c->listeners[i];
                static char *const demo[] = { (char *) CERTSTORE_DEMO_NAME, NULL };
                char *const *certs = l->certificates ?: demo;
                const char *host = l->hostname ?: c->hostname;

                if (l->tls == TLS_IN_OFF || isempty(host))
                        continue;
                for (char *const *n = certs; *n; n++) {
                        _cleanup_(certificate_unrefp) Certificate *cert = NULL;
                        _cleanup_free_ char *msgtext = NULL;
                        const char *sev;

                        if (certstore_load(m->certstore, *n, &cert, NULL) < 0)
                                continue;       /* reported by the store check */
                        if (certificate_matches_host(cert, host)) {
                                sev = "ok";
                                r = asprintf(&msgtext, "listener %s: hostname %s is named by the certificate",
                                             l->name, host);
                        } else {
                                sev = "warning";
                                r = asprintf(&msgtext, "listener %s: hostname %s is not in the certificate's "
                                             "CN or DNS names; senders that verify will refuse it",
                                             l->name, host);
                        }
                        if (r < 0)
                                return -ENOMEM;
                        r = sd_bus_message_append(reply, "(ssss)", *n, sev, "hostname", msgtext);
                        if (r < 0)
                                return r;
                }
        }
        return 0;
}

static int method_check_certificates(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        CertFinding *f = NULL;
        Manager *m = userdata;
        size_t n = 0;
        int r;

        r = certstore_check(m->certstore, BUS_CERT_WARN_DAYS, &f, &n);
        if (r < 0)
                return sd_bus_error_set_errnof(error, r, "Cannot check the certificate store: %m");

        r = sd_bus_message_new_method_return(msg, &reply);
        if (r >= 0)
                r = sd_bus_message_open_container(reply, 'a', "(ssss)");
        for (size_t i = 0; r >= 0 && i < n; i++)
                r = sd_bus_message_append(reply, "(ssss)", f[i].name, f[i].severity, f[i].check, f[i].message);
        cert_findings_free(f, n);
        if (r >= 0)
                r = append_listener_findings(m, reply);
        if (r >= 0)
                r = sd_bus_message_close_container(reply);
        if (r < 0)
                return r;
        return sd_bus_send(NULL, reply, NULL);
}

static const sd_bus_vtable certificates_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_METHOD_WITH_ARGS("ListCertificates",
                                SD_BUS_NO_ARGS,
                                SD_BUS_RESULT("a(ssstb)", certificates),
                                method_list_certificates, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("CreateCertificate",
                                SD_BUS_ARGS("s", name, "a{sv}", params),
                                SD_BUS_RESULT("o", path),
                                method_create_certificate, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("GetCSR",
                                SD_BUS_ARGS("s", name),
                                SD_BUS_RESULT("s", pem),
                                method_get_csr, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("UploadCertificate",
                                SD_BUS_ARGS("s", name, "s", cert_pem, "s", chain_pem),
                                SD_BUS_RESULT("as", notes),
                                method_upload_certificate, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("ImportPKCS12",
                                SD_BUS_ARGS("s", name, "ay", data, "s", password),
                                SD_BUS_RESULT("o", path),
                                method_import_pkcs12, SD_BUS_VTABLE_UNPRIVILEGED | SD_BUS_VTABLE_SENSITIVE),
        SD_BUS_METHOD_WITH_ARGS("ExportPKCS12",
                                SD_BUS_ARGS("s", name, "s", password),
                                SD_BUS_RESULT("ay", data),
                                method_export_pkcs12, SD_BUS_VTABLE_UNPRIVILEGED | SD_BUS_VTABLE_SENSITIVE),
        SD_BUS_METHOD_WITH_ARGS("RenewCertificate",
                                SD_BUS_ARGS("s", name, "u", days),
                                SD_BUS_NO_RESULT,
                                method_renew_certificate, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("DeleteCertificate",
                                SD_BUS_ARGS("s", name),
                                SD_BUS_NO_RESULT,
                                method_delete_certificate, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("CheckCertificates",
                                SD_BUS_NO_ARGS,
                                SD_BUS_RESULT("a(ssss)", findings),
                                method_check_certificates, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_VTABLE_END
};

int bus_cert_register(Manager *m, sd_bus *bus) {
        int r;

        if (!m || !bus)
                return -EINVAL;

        r = sd_bus_add_object_vtable(bus, NULL, BUS_PATH, BUS_IFACE_CERTIFICATES, certificates_vtable, m);
        if (r < 0)
                return r;
        r = sd_bus_add_fallback_vtable(bus, NULL, BUS_CERT_PATH, BUS_IFACE_CERTIFICATE, certificate_vtable,
                                       cert_object_find, m);
        if (r < 0)
                return r;
        return sd_bus_add_node_enumerator(bus, NULL, BUS_CERT_PATH, cert_node_enumerator, m);
}
