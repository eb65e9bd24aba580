/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * org.tlsgw.Gateway1.Manager on /org/tlsgw/Gateway1 (docs/dbus-api.md):
 * the daemon's status properties, reload, and the staged configuration
 * changes with commit, history and rollback. Handlers only convert
 * arguments, check the caller and call staging_*() / manager_*(); every
 * staging error becomes one org.tlsgw.Gateway1.Error.* with the sentence
 * staging wrote.
 *
 * Methods carry SD_BUS_VTABLE_UNPRIVILEGED: sd-bus would otherwise demand
 * CAP_SYS_ADMIN of every caller, which would shut out both readers and the
 * admin group; the check inside each changing method is what decides.
 * Returns negative errno (sd-bus handler convention).
 */

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "build-config.h"
#include "bus.h"
#include "ktls.h"
#include "log.h"
#include "manager.h"
#include "queue.h"
#include "staging.h"
#include "util/macro.h"

/* Settings in one call: the largest object (a listener) has about thirty
 * keys; anything near this is not a configuration edit. */
#define BUS_SETTINGS_MAX 256
/* A whole configuration passed to ImportConfig; the D-Bus limit on a
 * message (128 MiB) is far above any real configuration. */
#define BUS_CONFIG_TEXT_MAX (16U * 1024U * 1024U)
/* Object names and comments: labels, not documents. */
#define BUS_NAME_LEN_MAX 255
#define BUS_COMMENT_MAX 1024

/* ---- helpers ---- */

/* Maps a staging error (staging.h) to the API's errors. */
static int bus_staging_error(sd_bus_error *error, int r, const char *text, const char *what) {
        const char *name;

        switch (r) {
        case -ENOMEM:
                return r;
        case -EUSERS:
                name = BUS_ERROR_PENDING_BY_OTHER;
                break;
        case -ENODATA:
                name = BUS_ERROR_NOTHING_PENDING;
                break;
        case -EINVAL:
                name = BUS_ERROR_INVALID;
                break;
        case -ENOENT:
                name = BUS_ERROR_NOT_FOUND;
                break;
        case -EEXIST:
                name = BUS_ERROR_EXISTS;
                break;
        case -EBUSY:
                name = BUS_ERROR_IN_USE;
                break;
        case -EKEYREJECTED:
                name = BUS_ERROR_BAD_PASSWORD;
                break;
        case -EPERM:
                name = SD_BUS_ERROR_ACCESS_DENIED;
                break;
        case -ECANCELED:
                name = BUS_ERROR_APPLY_FAILED;
                break;
        default:
                name = BUS_ERROR_FAILED;
        }
        if (!isempty(text))
                return sd_bus_error_setf(error, name, "%s", text);
        return sd_bus_error_setf(error, name, "%s failed: %s.", what, strerror(-r));
}

static int bus_check_name(const char *kind, const char *name, sd_bus_error *error) {
        if (isempty(name))
                return sd_bus_error_setf(error, BUS_ERROR_INVALID, "The %s needs a name.", kind);
        if (strlen(name) > BUS_NAME_LEN_MAX)
                return sd_bus_error_setf(error, BUS_ERROR_INVALID, "The %s name is longer than %u characters.",
                                         kind, BUS_NAME_LEN_MAX);
        for (const char *p = name; *p; p++)
                if ((unsigned char) *p < 0x20 || *p == 0x7f)
                        return sd_bus_error_setf(error, BUS_ERROR_INVALID,
                                                 "The %s name contains a control character.", kind);
        return 0;
}

static int bus_parse_kind(const char *s, ConfigKind *ret, sd_bus_error *error) {
        ConfigKind k = config_kind_from_string(s);

        if (k < 0)
                return sd_bus_error_setf(error, BUS_ERROR_INVALID,
                                         "Unknown object kind '%s'; expected listener, policy, sendergroup, "
                                         "route, destination, https or ldap.", s);
        *ret = k;
        return 0;
}

typedef struct BusSettings {
        ConfigValue *values;
        size_t n;
} BusSettings;

static void bus_settings_done(BusSettings *s) {
        for (size_t i = 0; i < s->n; i++)
                if (s->values[i].type == CONFIG_VALUE_STRV)
                        strv_free((char **) s->values[i].strv);
        free(s->values);
        s->values = NULL;
        s->n = 0;
}

/* a{sv} -> ConfigValue[]; strings point into msg, which outlives the
 * call; string lists are owned by *ret. An empty string means "remove the
 * key" (docs/dbus-api.md). */
static int bus_read_settings(sd_bus_message *msg, BusSettings *ret, sd_bus_error *error) {
        _cleanup_(bus_settings_done) BusSettings s = {};
        int r;

        r = sd_bus_message_enter_container(msg, 'a', "{sv}");
        if (r < 0)
                return r;
        while ((r = sd_bus_message_enter_container(msg, 'e', "sv")) > 0) {
                const char *key, *contents;
                ConfigValue v = {};
                ConfigValue *n;
                char type;

                r = sd_bus_message_read(msg, "s", &key);
                if (r < 0)
                        return r;
                if (isempty(key))
                        return sd_bus_error_setf(error, BUS_ERROR_INVALID, "A setting has an empty name.");
                for (size_t i = 0; i < s.n; i++)
                        if (streq(s.values[i].key, key))
                                return sd_bus_error_setf(error, BUS_ERROR_INVALID, "Setting '%s' is given twice.", key);
                if (s.n >= BUS_SETTINGS_MAX)
                        return sd_bus_error_setf(error, BUS_ERROR_INVALID, "More than %u settings in one call.",
                                                 BUS_SETTINGS_MAX);
                r = sd_bus_message_peek_type(msg, &type, &contents);
                if (r < 0)
                        return r;
                r = sd_bus_message_enter_container(msg, 'v', contents);
                if (r < 0)
                        return r;
                v.key = key;
                if (streq(contents, "s")) {
                        r = sd_bus_message_read(msg, "s", &v.s);
                        v.type = isempty(v.s) ? CONFIG_VALUE_UNSET : CONFIG_VALUE_STRING;
                } else if (streq(contents, "b")) {
                        int b;
                        r = sd_bus_message_read(msg, "b", &b);
                        v.type = CONFIG_VALUE_BOOL;
                        v.b = b;
                } else if (streq(contents, "as")) {
                        char **l = NULL;
                        r = sd_bus_message_read_strv(msg, &l);
                        v.type = CONFIG_VALUE_STRV;
                        v.strv = l;
                } else if (strlen(contents) == 1 && strchr("yqnuixt", contents[0])) {
                        union { uint8_t y; uint16_t q; int16_t n; uint32_t u; int32_t i; int64_t x; uint64_t t; } u;
                        r = sd_bus_message_read_basic(msg, contents[0], &u);
                        v.type = CONFIG_VALUE_INT;
                        switch (contents[0]) {
                        case 'y': v.i = u.y; break;
                        case 'q': v.i = u.q; break;
                        case 'n': v.i = u.n; break;
                        case 'u': v.i = u.u; break;
                        case 'i': v.i = u.i; break;
                        case 'x': v.i = u.x; break;
                        default:
                                if (r >= 0 && u.t > INT64_MAX)
                                        return sd_bus_error_setf(error, BUS_ERROR_INVALID,
                                                                 "Setting '%s': %" PRIu64 " is out of range.", key, u.t);
                                v.i = (int64_t) u.t;
                        }
                } else
                        return sd_bus_error_setf(error, BUS_ERROR_INVALID,
                                                 "Setting '%s' has the D-Bus type '%s'; expected a string (s), "
                                                 "a boolean (b), an integer or a string list (as).", key, contents);
                if (r < 0) {
                        if (v.type == CONFIG_VALUE_STRV)
                                strv_free((char **) v.strv);
                        return r;
                }
                n = reallocarray(s.values, s.n + 1, sizeof *s.values);
                if (!n) {
                        if (v.type == CONFIG_VALUE_STRV)
                                strv_free((char **) v.strv);
                        return -ENOMEM;
                }
                s.values = n;
                s.values[s.n++] = v;

                r = sd_bus_message_exit_container(msg);          /* v */
                if (r >= 0)
                        r = sd_bus_message_exit_container(msg);  /* e */
                if (r < 0)
                        return r;
        }
        if (r < 0)
                return r;
        r = sd_bus_message_exit_container(msg);
        if (r < 0)
                return r;
        *ret = s;
        s = (BusSettings) {};
        return 0;
}

/* The caller, after the admin check. */
static int bus_admin_caller(Manager *m, sd_bus_message *msg, sd_bus_error *error, uid_t *ret_uid, char **ret_name) {
        int r;

        r = bus_check_admin(m, msg, error);
        if (r < 0)
                return r;
        r = bus_caller(msg, ret_uid, ret_name);
        if (r < 0)
                return sd_bus_error_set_errnof(error, r, "Cannot identify the caller: %m");
        return 0;
}

/* ---- properties ---- */

static const char *manager_state(const Manager *m) {
        if (m->stopping)
                return "stopping";
        if (m->reloading)
                return "reloading";
        return "running";
}

static int property_get_string(sd_bus *bus, const char *path, const char *interface, const char *property,
                               sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        const char *s = "";

        if (streq(property, "Version"))
                s = PACKAGE_VERSION;
        else if (streq(property, "State"))
                s = manager_state(m);
        else if (streq(property, "ConfigFile"))
                s = m->config_path ?: "";
        else if (streq(property, "PendingOwner"))
                s = staging_owner(m->staging);
        return sd_bus_message_append(reply, "s", s);
}

static int property_get_counter(sd_bus *bus, const char *path, const char *interface, const char *property,
                                sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        uint64_t v = 0;

        if (streq(property, "Sessions"))
                v = m->n_sessions;
        else if (streq(property, "QueuedMessages"))
                v = m->queue ? queue_n_messages(m->queue) : 0;
        else if (streq(property, "ActiveDeliveries"))
                v = m->queue ? queue_n_active(m->queue) : 0;
        else if (streq(property, "MessagesReceived"))
                v = m->n_messages_received;
        return sd_bus_message_append(reply, "t", v);
}

static int property_get_bool(sd_bus *bus, const char *path, const char *interface, const char *property,
                             sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        int v = 0;

        if (streq(property, "PendingChanges"))
                v = staging_has_pending(m->staging);
        else if (streq(property, "KtlsAvailable"))
                v = ktls_available();
        return sd_bus_message_append(reply, "b", v);
}

static int property_get_config_version(sd_bus *bus, const char *path, const char *interface,
                                       const char *property, sd_bus_message *reply, void *userdata,
                                       sd_bus_error *error) {
        Manager *m = userdata;
        return sd_bus_message_append(reply, "u", m->config_version);
}

static int property_get_listeners(sd_bus *bus, const char *path, const char *interface, const char *property,
                                  sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        int r;

        r = sd_bus_message_open_container(reply, 'a', "s");
        if (r < 0)
                return r;
        for (size_t i = 0; m->config && i < m->config->n_listeners; i++) {
                r = sd_bus_message_append(reply, "s", m->config->listeners[i].name);
                if (r < 0)
                        return r;
        }
        return sd_bus_message_close_container(reply);
}

/* ---- methods ---- */

static int method_reload(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        _cleanup_free_ char *text = NULL;
        int r;

        r = bus_check_admin(m, msg, error);
        if (r < 0)
                return r;
        r = manager_reload_config(m, &text);
        if (r < 0)
                return bus_staging_error(error, r == -ENOMEM ? r : -EINVAL, text, "Reload");
        return sd_bus_reply_method_return(msg, NULL);
}

typedef enum EditOp { EDIT_ADD, EDIT_SET, EDIT_DELETE, EDIT_GLOBAL } EditOp;

static int method_edit(sd_bus_message *msg, Manager *m, EditOp op, sd_bus_error *error) {
        _cleanup_(bus_settings_done) BusSettings settings = {};
        _cleanup_free_ char *user = NULL, *text = NULL;
        const char *kind_s = NULL, *name = NULL;
        ConfigKind kind = _CONFIG_KIND_INVALID;
        StagingCaller who;
        int r;

        /* The caller first: an unauthorized one learns nothing about
         * what would have been wrong with its arguments. */
        r = bus_admin_caller(m, msg, error, &who.uid, &user);
        if (r < 0)
                return r;
        who.name = user;
        if (op != EDIT_GLOBAL) {
                r = sd_bus_message_read(msg, "ss", &kind_s, &name);
                if (r < 0)
                        return r;
        }
        if (op != EDIT_DELETE) {
                r = bus_read_settings(msg, &settings, error);
                if (r < 0)
                        return r;
        }
        if (op != EDIT_GLOBAL) {
                r = bus_parse_kind(kind_s, &kind, error);
                if (r < 0)
                        return r;
                r = bus_check_name(kind_s, name, error);
                if (r < 0)
                        return r;
        }

        switch (op) {
        case EDIT_ADD:
                r = staging_add(m->staging, &who, kind, name, settings.values, settings.n, &text);
                break;
        case EDIT_SET:
                r = staging_set(m->staging, &who, kind, name, settings.values, settings.n, &text);
                break;
        case EDIT_DELETE:
                r = staging_delete(m->staging, &who, kind, name, &text);
                break;
        default:
                r = staging_set_global(m->staging, &who, settings.values, settings.n, &text);
        }
        if (r < 0)
                return bus_staging_error(error, r, text, "Staging the change");
        return sd_bus_reply_method_return(msg, NULL);
}

static int method_add(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        return method_edit(msg, userdata, EDIT_ADD, error);
}

static int method_set(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        return method_edit(msg, userdata, EDIT_SET, error);
}

static int method_delete(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        return method_edit(msg, userdata, EDIT_DELETE, error);
}

static int method_set_global(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        return method_edit(msg, userdata, EDIT_GLOBAL, error);
}

static int method_get_pending(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        _cleanup_free_ char *text = NULL;
        bool pending = staging_has_pending(m->staging);
        int r;

        if (pending) {
                r = staging_text(m->staging, true, CONFIG_SECRETS_REDACT, NULL, &text);
                if (r < 0)
                        return bus_staging_error(error, r, NULL, "Rendering the pending configuration");
        }
        return sd_bus_reply_method_return(msg, "bss", pending, staging_owner(m->staging), text ?: "");
}

static int method_get_config(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        _cleanup_free_ char *text = NULL;
        int pending, r;

        r = sd_bus_message_read(msg, "b", &pending);
        if (r < 0)
                return r;
        r = staging_text(m->staging, pending, CONFIG_SECRETS_REDACT, NULL, &text);
        if (r == -ENODATA)
                return sd_bus_error_setf(error, BUS_ERROR_NOTHING_PENDING, "There are no pending changes.");
        if (r < 0)
                return bus_staging_error(error, r, NULL, "Rendering the configuration");
        return sd_bus_reply_method_return(msg, "s", text);
}

static int method_diff(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        _cleanup_free_ char *diff = NULL;
        int r;

        r = staging_diff(m->staging, &diff);
        if (r < 0)
                return bus_staging_error(error, r, NULL, "Computing the difference");
        return sd_bus_reply_method_return(msg, "s", diff);
}

static int method_commit(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        _cleanup_free_ char *user = NULL, *text = NULL;
        const char *comment;
        StagingCaller who;
        uint32_t version = 0;
        int r;

        r = sd_bus_message_read(msg, "s", &comment);
        if (r < 0)
                return r;
        r = bus_admin_caller(m, msg, error, &who.uid, &user);
        if (r < 0)
                return r;
        who.name = user;
        if (strlen(comment) > BUS_COMMENT_MAX)
                return sd_bus_error_setf(error, BUS_ERROR_INVALID, "The comment is longer than %u characters.",
                                         BUS_COMMENT_MAX);
        r = staging_commit(m->staging, &who, comment, &version, &text);
        if (r < 0)
                return bus_staging_error(error, r, text, "Commit");
        return sd_bus_reply_method_return(msg, "u", version);
}

static int method_abandon(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        _cleanup_free_ char *user = NULL, *text = NULL;
        StagingCaller who;
        int force, r;

        r = sd_bus_message_read(msg, "b", &force);
        if (r < 0)
                return r;
        r = bus_admin_caller(m, msg, error, &who.uid, &user);
        if (r < 0)
                return r;
        who.name = user;
        r = staging_abandon(m->staging, &who, force, &text);
        if (r < 0)
                return bus_staging_error(error, r, text, "Abandon");
        return sd_bus_reply_method_return(msg, NULL);
}

static int method_history(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        HistoryEntry *e = NULL;
        size_t n = 0;
        int r;

        r = history_list(staging_history(m->staging), &e, &n);
        if (r < 0)
                return r;
        r = sd_bus_message_new_method_return(msg, &reply);
        if (r >= 0)
                r = sd_bus_message_open_container(reply, 'a', "(utss)");
        for (size_t i = 0; r >= 0 && i < n; i++)
                r = sd_bus_message_append(reply, "(utss)", e[i].version, e[i].time_usec, e[i].user, e[i].comment);
        if (r >= 0)
                r = sd_bus_message_close_container(reply);
        history_entries_free(e, n);
        if (r < 0)
                return r;
        return sd_bus_send(NULL, reply, NULL);
}

static int method_rollback(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        _cleanup_free_ char *user = NULL, *text = NULL;
        StagingCaller who;
        uint32_t version, new_version = 0;
        int r;

        r = sd_bus_message_read(msg, "u", &version);
        if (r < 0)
                return r;
        r = bus_admin_caller(m, msg, error, &who.uid, &user);
        if (r < 0)
                return r;
        who.name = user;
        r = staging_rollback(m->staging, &who, version, &new_version, &text);
        if (r < 0)
                return bus_staging_error(error, r, text, "Rollback");
        return sd_bus_reply_method_return(msg, "u", new_version);
}

static int method_export_config(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        _cleanup_free_ char *text = NULL;
        const char *password;
        int secrets, r;

        r = sd_bus_message_read(msg, "bs", &secrets, &password);
        if (r < 0)
                return r;
        if (secrets) {
                r = bus_check_admin(m, msg, error);
                if (r < 0)
                        return r;
                if (isempty(password))
                        return sd_bus_error_setf(error, BUS_ERROR_INVALID,
                                                 "Exporting the secrets needs a password to encrypt them with.");
        }
        r = staging_text(m->staging, false, secrets ? CONFIG_SECRETS_ENCRYPT : CONFIG_SECRETS_REDACT,
                         secrets ? password : NULL, &text);
        if (r < 0)
                return bus_staging_error(error, r, NULL, "Exporting the configuration");
        return sd_bus_reply_method_return(msg, "s", text);
}

static int method_import_config(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        _cleanup_free_ char *user = NULL, *err = NULL;
        const char *text, *password;
        StagingCaller who;
        int r;

        r = sd_bus_message_read(msg, "ss", &text, &password);
        if (r < 0)
                return r;
        r = bus_admin_caller(m, msg, error, &who.uid, &user);
        if (r < 0)
                return r;
        who.name = user;
        if (strlen(text) > BUS_CONFIG_TEXT_MAX)
                return sd_bus_error_setf(error, BUS_ERROR_INVALID, "The configuration is larger than %u bytes.",
                                         BUS_CONFIG_TEXT_MAX);
        r = staging_import(m->staging, &who, text, password, &err);
        if (r < 0)
                return bus_staging_error(error, r, err, "Import");
        return sd_bus_reply_method_return(msg, NULL);
}

static const sd_bus_vtable manager_vtable[] = {
        SD_BUS_VTABLE_START(0),

        SD_BUS_PROPERTY("Version", "s", property_get_string, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("State", "s", property_get_string, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        /* Changes once, when a daemon on built-in defaults commits. */
        SD_BUS_PROPERTY("ConfigFile", "s", property_get_string, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("ConfigVersion", "u", property_get_config_version, 0,
                        SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        /* Counters change with every session: read them, no signals. */
        SD_BUS_PROPERTY("Sessions", "t", property_get_counter, 0, 0),
        SD_BUS_PROPERTY("QueuedMessages", "t", property_get_counter, 0, 0),
        SD_BUS_PROPERTY("ActiveDeliveries", "t", property_get_counter, 0, 0),
        SD_BUS_PROPERTY("MessagesReceived", "t", property_get_counter, 0, 0),
        SD_BUS_PROPERTY("PendingChanges", "b", property_get_bool, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("PendingOwner", "s", property_get_string, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("KtlsAvailable", "b", property_get_bool, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("Listeners", "as", property_get_listeners, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),

        SD_BUS_METHOD_WITH_ARGS("Reload", SD_BUS_NO_ARGS, SD_BUS_NO_RESULT,
                                method_reload, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Add",
                                SD_BUS_ARGS("s", kind, "s", name, "a{sv}", settings),
                                SD_BUS_NO_RESULT,
                                method_add, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Set",
                                SD_BUS_ARGS("s", kind, "s", name, "a{sv}", settings),
                                SD_BUS_NO_RESULT,
                                method_set, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Delete",
                                SD_BUS_ARGS("s", kind, "s", name),
                                SD_BUS_NO_RESULT,
                                method_delete, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("SetGlobal",
                                SD_BUS_ARGS("a{sv}", settings),
                                SD_BUS_NO_RESULT,
                                method_set_global, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("GetPending",
                                SD_BUS_NO_ARGS,
                                SD_BUS_RESULT("b", pending, "s", owner, "s", text),
                                method_get_pending, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("GetConfig",
                                SD_BUS_ARGS("b", pending),
                                SD_BUS_RESULT("s", text),
                                method_get_config, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Diff",
                                SD_BUS_NO_ARGS,
                                SD_BUS_RESULT("s", diff),
                                method_diff, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Commit",
                                SD_BUS_ARGS("s", comment),
                                SD_BUS_RESULT("u", version),
                                method_commit, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Abandon",
                                SD_BUS_ARGS("b", force),
                                SD_BUS_NO_RESULT,
                                method_abandon, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("History",
                                SD_BUS_NO_ARGS,
                                SD_BUS_RESULT("a(utss)", history),
                                method_history, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Rollback",
                                SD_BUS_ARGS("u", version),
                                SD_BUS_RESULT("u", version),
                                method_rollback, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("ExportConfig",
                                SD_BUS_ARGS("b", secrets, "s", password),
                                SD_BUS_RESULT("s", text),
                                method_export_config, SD_BUS_VTABLE_UNPRIVILEGED | SD_BUS_VTABLE_SENSITIVE),
        SD_BUS_METHOD_WITH_ARGS("ImportConfig",
                                SD_BUS_ARGS("s", text, "s", password),
                                SD_BUS_NO_RESULT,
                                method_import_config, SD_BUS_VTABLE_UNPRIVILEGED | SD_BUS_VTABLE_SENSITIVE),

        SD_BUS_VTABLE_END
};

int bus_manager_register(Manager *m, sd_bus *bus) {
        return sd_bus_add_object_vtable(bus, NULL, BUS_PATH, BUS_IFACE_MANAGER, manager_vtable, m);
}

void bus_manager_emit_changed(Manager *m, const char *property) {
        int r;

        if (!m || !m->bus)
                return;
        r = sd_bus_emit_properties_changed(m->bus, BUS_PATH, BUS_IFACE_MANAGER, property, NULL);
        if (r < 0)
                log_debug_errno(r, "Cannot emit PropertiesChanged for %s: %m", property);
}
