/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * gwctl's configuration objects: listener, sendergroup, policy, dest,
 * route, https, ldap (add / set / delete / list / show), the global
 * settings (global, dest global) and alert recipients.
 *
 * Each kind is one table: its D-Bus kind and interface, the columns of
 * its listing, and its flags, each mapped to one key of the configuration
 * file (docs/configuration.md). Changes go to Manager.Add/Set/Delete/
 * SetGlobal and are staged; listings read the objects of the running
 * configuration through the ObjectManager. Values are checked here only
 * for form (a number is a number); what they mean is the daemon's to
 * judge. Returns exit codes.
 */

#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gwctl.h"
#include "output.h"
#include "util/parse.h"

/* Enough for the listener, the kind with the most keys (~25). */
#define OBJECT_FLAGS_MAX 48
#define OBJECT_COLUMNS_MAX 10

typedef enum FlagType {
        FLAG_STRING,
        FLAG_UINT,                      /* sent as u (or t beyond 32 bits) */
        FLAG_PORT,                      /* 1..65535, sent as u */
        FLAG_BOOL,                      /* on/off, yes/no, true/false */
        FLAG_STRV,                      /* repeatable, comma-separated */
        FLAG_SIZE,                      /* "10M": checked, sent as the text given */
        FLAG_DURATION,                  /* "5m": checked, sent as the text given */
        FLAG_SECRET_FILE,               /* the first line of a file, never the command line */
} FlagType;

typedef struct ObjectFlag {
        const char *flag;               /* long option without "--" */
        const char *key;                /* configuration key, dotted for groups */
        FlagType type;
} ObjectFlag;

typedef struct ObjectColumn {
        const char *property;           /* D-Bus property */
        const char *header;
        OutputType type;
} ObjectColumn;

typedef struct ObjectKind {
        const char *command;            /* gwctl's word */
        const char *kind;               /* Manager.Add kind and object path element */
        const char *interface;
        const char *listing;            /* JSON name of the listing */
        const char *what;               /* "listener", "sender group", ... in messages */
        const ObjectColumn *columns;    /* the first is the object's name */
        const ObjectFlag *flags;
} ObjectKind;

/* The limits keys shared by listeners and policies. */
#define LIMIT_FLAGS                                                             \
        { "max-line",         "limits.max_line",         FLAG_UINT },           \
        { "max-recipients",   "limits.max_recipients",   FLAG_UINT },           \
        { "max-message-size", "limits.max_message_size", FLAG_SIZE },           \
        { "max-errors",       "limits.max_errors",       FLAG_UINT },           \
        { "idle-timeout",     "limits.idle_timeout",     FLAG_DURATION },       \
        { "data-timeout",     "limits.data_timeout",     FLAG_DURATION },       \
        { "max-messages",     "limits.max_messages",     FLAG_UINT }

static const ObjectFlag listener_flags[] = {
        { "address",                "address",                FLAG_STRING },
        { "port",                   "port",                   FLAG_PORT },
        { "hostname",               "hostname",               FLAG_STRING },
        { "accepted-domain",        "accepted_domains",       FLAG_STRV },
        { "default-policy",         "default_policy",         FLAG_STRING },
        { "tls",                    "tls",                    FLAG_STRING },
        { "certificate",            "certificates",           FLAG_STRV },
        { "tls-min-version",        "tls_min_version",        FLAG_STRING },
        { "tls-ciphers",            "tls_ciphers",            FLAG_STRING },
        { "tls-ciphersuites",       "tls_ciphersuites",       FLAG_STRING },
        { "tls-groups",             "tls_groups",             FLAG_STRING },
        { "client-ca",              "client_ca",              FLAG_STRING },
        { "ktls",                   "ktls",                   FLAG_BOOL },
        { "max-connections",        "max_connections",        FLAG_UINT },
        { "max-connections-per-ip", "max_connections_per_ip", FLAG_UINT },
        LIMIT_FLAGS,
        {}
};

static const ObjectFlag policy_flags[] = {
        { "action",                 "action",                 FLAG_STRING },
        { "tls",                    "tls",                    FLAG_STRING },
        { "max-connections-per-ip", "max_connections_per_ip", FLAG_UINT },
        LIMIT_FLAGS,
        {}
};

static const ObjectFlag sendergroup_flags[] = {
        { "policy", "policy",  FLAG_STRING },
        { "source", "sources", FLAG_STRV },
        {}
};

static const ObjectFlag route_flags[] = {
        { "host",    "hosts",   FLAG_STRV },
        { "maildir", "maildir", FLAG_STRING },
        {}
};

static const ObjectFlag destination_flags[] = {
        { "tls",                         "tls",                         FLAG_STRING },
        { "ktls",                        "ktls",                        FLAG_BOOL },
        { "ca-file",                     "ca_file",                     FLAG_STRING },
        { "tls-min-version",             "tls_min_version",             FLAG_STRING },
        { "max-connections",             "max_connections",             FLAG_UINT },
        { "max-messages-per-connection", "max_messages_per_connection", FLAG_UINT },
        { "max-recipients-per-message",  "max_recipients_per_message",  FLAG_UINT },
        {}
};

static const ObjectFlag https_flags[] = {
        { "address",     "address",     FLAG_STRING },
        { "port",        "port",        FLAG_PORT },
        { "hostname",    "hostname",    FLAG_STRING },
        { "certificate", "certificate", FLAG_STRING },
        {}
};

static const ObjectFlag ldap_flags[] = {
        { "uri",                "uri",           FLAG_STRING },
        { "base",               "base",          FLAG_STRING },
        { "bind-dn",            "bind_dn",       FLAG_STRING },
        { "bind-password-file", "bind_password", FLAG_SECRET_FILE },
        { "ca-file",            "ca_file",       FLAG_STRING },
        { "certificate",        "certificate",   FLAG_STRING },
        {}
};

static const ObjectFlag dest_global_flags[] = {
        { "certificate",     "tls_client.certificate",  FLAG_STRING },
        { "ca-file",         "tls_client.ca_file",      FLAG_STRING },
        { "tls-min-version", "tls_client.min_version",  FLAG_STRING },
        { "ciphers",         "tls_client.ciphers",      FLAG_STRING },
        { "ciphersuites",    "tls_client.ciphersuites", FLAG_STRING },
        { "groups",          "tls_client.groups",       FLAG_STRING },
        { "alert",           "tls_alerts.enabled",      FLAG_BOOL },
        /* The appliance's name for the same switch. */
        { "alert-on-tls-failure", "tls_alerts.enabled", FLAG_BOOL },
        { "alert-interval",  "tls_alerts.interval",     FLAG_DURATION },
        {}
};

static const ObjectFlag global_flags[] = {
        { "hostname",                 "hostname",              FLAG_STRING },
        { "workers",                  "workers",               FLAG_UINT },
        { "shutdown-timeout",         "shutdown_timeout",      FLAG_DURATION },
        { "dns-server",               "dns_servers",           FLAG_STRV },
        { "admin-group",              "admin_group",           FLAG_STRING },
        { "ticket-rotation",          "tls_ticket_rotation",   FLAG_DURATION },
        { "retry-min",                "queue.retry_min",       FLAG_DURATION },
        { "retry-max",                "queue.retry_max",       FLAG_DURATION },
        { "queue-lifetime",           "queue.lifetime",        FLAG_DURATION },
        { "connect-timeout",          "queue.connect_timeout", FLAG_DURATION },
        { "command-timeout",          "queue.command_timeout", FLAG_DURATION },
        { "queue-data-timeout",       "queue.data_timeout",    FLAG_DURATION },
        { "smtp-port",                "queue.smtp_port",       FLAG_PORT },
        { "max-outbound-connections", "queue.max_connections", FLAG_UINT },
        {}
};

static const ObjectKind kinds[] = {
        {
                "listener", "listener", "org.tlsgw.Gateway1.Listener", "listeners", "listener",
                (const ObjectColumn[]) {
                        { "Name", "NAME", OUTPUT_STRING },
                        { "Address", "ADDRESS", OUTPUT_STRING },
                        { "Port", "PORT", OUTPUT_NUMBER },
                        { "Tls", "TLS", OUTPUT_STRING },
                        { "Certificates", "CERTIFICATES", OUTPUT_STRV },
                        { "DefaultPolicy", "DEFAULT-POLICY", OUTPUT_STRING },
                        { "Ktls", "KTLS", OUTPUT_BOOLEAN },
                        { "Sessions", "SESSIONS", OUTPUT_NUMBER },
                        {}
                },
                listener_flags,
        },
        {
                "sendergroup", "sendergroup", "org.tlsgw.Gateway1.SenderGroup", "sender_groups", "sender group",
                (const ObjectColumn[]) {
                        { "Name", "NAME", OUTPUT_STRING },
                        { "Order", "ORDER", OUTPUT_NUMBER },
                        { "Policy", "POLICY", OUTPUT_STRING },
                        { "Sources", "SOURCES", OUTPUT_STRV },
                        {}
                },
                sendergroup_flags,
        },
        {
                "policy", "policy", "org.tlsgw.Gateway1.MailFlowPolicy", "policies", "policy",
                (const ObjectColumn[]) {
                        { "Name", "NAME", OUTPUT_STRING },
                        { "Action", "ACTION", OUTPUT_STRING },
                        { "Tls", "TLS", OUTPUT_STRING },
                        { "MaxRecipients", "MAX-RECIPIENTS", OUTPUT_NUMBER },
                        { "MaxMessageSize", "MAX-MESSAGE-SIZE", OUTPUT_NUMBER },
                        { "MaxConnectionsPerIp", "MAX-CONN-PER-IP", OUTPUT_NUMBER },
                        {}
                },
                policy_flags,
        },
        {
                "dest", "destination", "org.tlsgw.Gateway1.Destination", "destinations", "destination",
                (const ObjectColumn[]) {
                        { "Domain", "DOMAIN", OUTPUT_STRING },
                        { "Tls", "TLS", OUTPUT_STRING },
                        { "Ktls", "KTLS", OUTPUT_BOOLEAN },
                        { "TlsMinVersion", "TLS-MIN", OUTPUT_STRING },
                        { "CaFile", "CA-FILE", OUTPUT_STRING },
                        { "MaxConnections", "MAX-CONN", OUTPUT_NUMBER },
                        {}
                },
                destination_flags,
        },
        {
                "route", "route", "org.tlsgw.Gateway1.Route", "routes", "route",
                (const ObjectColumn[]) {
                        { "Domain", "DOMAIN", OUTPUT_STRING },
                        { "Kind", "KIND", OUTPUT_STRING },
                        { "Hosts", "HOSTS", OUTPUT_STRV },
                        { "Directory", "DIRECTORY", OUTPUT_STRING },
                        {}
                },
                route_flags,
        },
        {
                "https", "https", "org.tlsgw.Gateway1.HttpsInterface", "https_interfaces", "HTTPS interface",
                (const ObjectColumn[]) {
                        { "Name", "NAME", OUTPUT_STRING },
                        { "Address", "ADDRESS", OUTPUT_STRING },
                        { "Port", "PORT", OUTPUT_NUMBER },
                        { "Hostname", "HOSTNAME", OUTPUT_STRING },
                        { "Certificate", "CERTIFICATE", OUTPUT_STRING },
                        {}
                },
                https_flags,
        },
        {
                "ldap", "ldap", "org.tlsgw.Gateway1.LdapProfile", "ldap_profiles", "LDAP profile",
                (const ObjectColumn[]) {
                        { "Name", "NAME", OUTPUT_STRING },
                        { "Uri", "URI", OUTPUT_STRING },
                        { "Base", "BASE", OUTPUT_STRING },
                        { "BindDn", "BIND-DN", OUTPUT_STRING },
                        { "HasBindPassword", "PASSWORD", OUTPUT_BOOLEAN },
                        { "Certificate", "CERTIFICATE", OUTPUT_STRING },
                        {}
                },
                ldap_flags,
        },
};

static const ObjectKind *kind_find(const char *command) {
        for (size_t i = 0; i < ELEMENTSOF(kinds); i++)
                if (streq(kinds[i].command, command))
                        return &kinds[i];
        return NULL;
}

/* The argv[0] main() gives a verb is "gwctl <command> <verb>". */
static const ObjectKind *kind_of(char *argv[]) {
        char command[64];

        if (sscanf(argv[0], "gwctl %63s", command) != 1)
                return NULL;
        return kind_find(command);
}

static size_t columns_count(const ObjectColumn *c) {
        size_t n = 0;

        while (c[n].property)
                n++;
        return n;
}

/* ---- add / set / global set: flags to a{sv} ---- */

/* Checks the form of a value before anything is sent (exit 2 on a typo). */
static int check_value(const ObjectFlag *f, const char *value) {
        uint64_t u;
        uint16_t port;
        bool b;

        if (f->type == FLAG_STRV || isempty(value))
                return 0;
        switch (f->type) {
        case FLAG_UINT:
                if (parse_uint64(value, &u) < 0)
                        return gw_usage("--%s needs a number, not '%s'", f->flag, value);
                break;
        case FLAG_PORT:
                if (parse_port(value, &port) < 0)
                        return gw_usage("--%s needs a port 1..65535, not '%s'", f->flag, value);
                break;
        case FLAG_BOOL:
                if (parse_bool(value, &b) < 0)
                        return gw_usage("--%s needs on or off, not '%s'", f->flag, value);
                break;
        case FLAG_SIZE:
                if (parse_size(value, &u) < 0)
                        return gw_usage("--%s needs a size like 10M, not '%s'", f->flag, value);
                break;
        case FLAG_DURATION:
                if (parse_duration(value, &u) < 0)
                        return gw_usage("--%s needs a duration like 30s or 5m, not '%s'", f->flag, value);
                break;
        default:
                break;
        }
        return 0;
}

/* Appends one {sv} entry; the value was checked by check_value(). */
static int append_value(sd_bus_message *m, const ObjectFlag *f, const char *value, char **strv) {
        int r;

        if (f->type == FLAG_STRV) {
                r = sd_bus_message_open_container(m, 'e', "sv");
                if (r >= 0)
                        r = sd_bus_message_append(m, "s", f->key);
                if (r >= 0)
                        r = sd_bus_message_open_container(m, 'v', "as");
                if (r >= 0)
                        r = sd_bus_message_append_strv(m, strv);
                if (r >= 0)
                        r = sd_bus_message_close_container(m);
                if (r >= 0)
                        r = sd_bus_message_close_container(m);
                return r < 0 ? gw_fail("cannot build the request: %s", strerror(-r)) : 0;
        }

        /* docs/dbus-api.md: an empty string removes the key (default).
         * Sizes and durations go as the text given ("10M"), so the file
         * keeps the administrator's spelling. */
        if (isempty(value))
                r = sd_bus_message_append(m, "{sv}", f->key, "s", "");
        else
                switch (f->type) {
                case FLAG_UINT:
                case FLAG_PORT: {
                        uint64_t u = 0;

                        (void) parse_uint64(value, &u);
                        if (u <= UINT32_MAX)
                                r = sd_bus_message_append(m, "{sv}", f->key, "u", (uint32_t) u);
                        else
                                r = sd_bus_message_append(m, "{sv}", f->key, "t", u);
                        break;
                }
                case FLAG_BOOL: {
                        bool b = false;

                        (void) parse_bool(value, &b);
                        r = sd_bus_message_append(m, "{sv}", f->key, "b", (int) b);
                        break;
                }
                case FLAG_SECRET_FILE: {
                        _cleanup_free_ char *secret = NULL;

                        r = gw_read_password(value, NULL, false, &secret);
                        if (r != 0)
                                return r;
                        r = sd_bus_message_append(m, "{sv}", f->key, "s", secret);
                        break;
                }
                default:
                        r = sd_bus_message_append(m, "{sv}", f->key, "s", value);
                        break;
                }
        return r < 0 ? gw_fail("cannot build the request: %s", strerror(-r)) : 0;
}

typedef struct Settings {
        const ObjectFlag *flags;
        size_t n_flags;
        const char *values[OBJECT_FLAGS_MAX];
        char **lists[OBJECT_FLAGS_MAX];
        bool seen[OBJECT_FLAGS_MAX];
        char **args;                    /* positional arguments (into argv) */
        int n_args;
} Settings;

static void settings_done(Settings *s) {
        for (size_t i = 0; i < s->n_flags; i++)
                strv_free(s->lists[i]);
}

static int settings_parse(Settings *s, const ObjectFlag *flags, int argc, char *argv[]) {
        struct option options[OBJECT_FLAGS_MAX + 1] = {};
        int c;

        s->flags = flags;
        for (s->n_flags = 0; flags[s->n_flags].flag && s->n_flags < OBJECT_FLAGS_MAX; s->n_flags++)
                options[s->n_flags] = (struct option) {
                        flags[s->n_flags].flag, required_argument, NULL, 0x100 + (int) s->n_flags
                };

        gw_reset_getopt();
        while ((c = getopt_long(argc, argv, "", options, NULL)) >= 0) {
                size_t i;

                if (c < 0x100 || (size_t) (c - 0x100) >= s->n_flags)
                        return GWCTL_EXIT_USAGE;
                i = (size_t) (c - 0x100);
                if (flags[i].type == FLAG_STRV) {
                        /* Repeat the flag or separate with commas; an
                         * empty value gives an empty list. */
                        if (gw_strv_add(&s->lists[i], optarg, true) < 0)
                                return gw_fail("out of memory");
                        if (!s->lists[i]) {
                                s->lists[i] = calloc(1, sizeof(char *));
                                if (!s->lists[i])
                                        return gw_fail("out of memory");
                        }
                } else if (s->seen[i])
                        return gw_usage("--%s given twice", flags[i].flag);
                else {
                        int r = check_value(&flags[i], optarg);

                        if (r != 0)
                                return r;
                }
                s->seen[i] = true;
                s->values[i] = optarg;
        }
        s->args = argv + optind;
        s->n_args = argc - optind;
        return 0;
}

static size_t settings_count(const Settings *s) {
        size_t n = 0;

        for (size_t i = 0; i < s->n_flags; i++)
                n += s->seen[i];
        return n;
}

static int settings_append(Settings *s, sd_bus_message *m, size_t *ret_n) {
        size_t n = 0;
        int r;

        r = sd_bus_message_open_container(m, 'a', "{sv}");
        if (r < 0)
                return gw_fail("cannot build the request: %s", strerror(-r));
        for (size_t i = 0; i < s->n_flags; i++) {
                if (!s->seen[i])
                        continue;
                r = append_value(m, &s->flags[i], s->values[i], s->lists[i]);
                if (r != 0)
                        return r;
                n++;
        }
        r = sd_bus_message_close_container(m);
        if (r < 0)
                return gw_fail("cannot build the request: %s", strerror(-r));
        *ret_n = n;
        return 0;
}

static int verb_object_stage(int argc, char *argv[], const char *member) {
        _cleanup_(settings_done) Settings s = {};
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        const ObjectKind *k = kind_of(argv);
        size_t n;
        int r;

        if (!k)
                return gw_usage("unknown object kind");
        r = settings_parse(&s, k->flags, argc, argv);
        if (r != 0)
                return r;
        if (s.n_args != 1)
                return gw_usage("'%s' needs one %s", argv[0] + strlen("gwctl "),
                                streq(k->columns[0].property, "Domain") ? "DOMAIN" : "NAME");
        if (settings_count(&s) == 0 && streq(member, "Set"))
                return gw_usage("'%s' needs at least one setting to change", argv[0] + strlen("gwctl "));
        r = gw_new_method(GW_BUS_PATH, GW_IFACE_MANAGER, member, &m);
        if (r != 0)
                return r;
        r = sd_bus_message_append(m, "ss", k->kind, s.args[0]);
        if (r < 0)
                return gw_fail("cannot build the request: %s", strerror(-r));
        r = settings_append(&s, m, &n);
        if (r != 0)
                return r;
        r = gw_call_message(m, NULL, NULL);
        if (r != 0)
                return r;
        printf("Staged: %s %s '%s'; apply with 'gwctl commit'.\n",
               streq(member, "Add") ? "new" : "changed", k->what, s.args[0]);
        return GWCTL_EXIT_OK;
}

static int verb_object_add(int argc, char *argv[]) {
        return verb_object_stage(argc, argv, "Add");
}

static int verb_object_set(int argc, char *argv[]) {
        return verb_object_stage(argc, argv, "Set");
}

static int verb_object_delete(int argc, char *argv[]) {
        const ObjectKind *k = kind_of(argv);
        int r;

        if (!k)
                return gw_usage("unknown object kind");
        if (argc != 2)
                return gw_usage("'%s' needs one NAME", argv[0] + strlen("gwctl "));
        r = gw_call(GW_BUS_PATH, GW_IFACE_MANAGER, "Delete", NULL, "ss", k->kind, argv[1]);
        if (r != 0)
                return r;
        printf("Staged: removal of %s '%s'; apply with 'gwctl commit'.\n", k->what, argv[1]);
        return GWCTL_EXIT_OK;
}

static int record_show(const char *path, const char *interface, const char *record, const char *what) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        _cleanup_output_ Output *o = NULL;
        int r;

        r = gw_new_method(path, "org.freedesktop.DBus.Properties", "GetAll", &m);
        if (r != 0)
                return r;
        r = sd_bus_message_append(m, "s", interface);
        if (r < 0)
                return gw_fail("cannot build the request: %s", strerror(-r));
        r = gw_call_message(m, &reply, what);
        if (r != 0)
                return r;
        r = output_record_new(record, &o);
        if (r >= 0)
                r = gw_record_add_dict(o, reply);
        if (r >= 0)
                r = output_print(o);
        return r < 0 ? gw_bad_reply(r) : GWCTL_EXIT_OK;
}

static int verb_object_show(int argc, char *argv[]) {
        const ObjectKind *k = kind_of(argv);
        _cleanup_free_ char *path = NULL, *what = NULL;

        if (!k)
                return gw_usage("unknown object kind");
        if (argc != 2)
                return gw_usage("'%s' needs one NAME", argv[0] + strlen("gwctl "));
        if (gw_object_path(k->kind, argv[1], &path) < 0 || asprintf(&what, "%s '%s'", k->what, argv[1]) < 0)
                return gw_fail("out of memory");
        return record_show(path, k->interface, k->command, what);
}

/* ---- list: the ObjectManager's view of the running configuration ---- */

typedef struct Row {
        char *cells[OBJECT_COLUMNS_MAX];
        char **lists[OBJECT_COLUMNS_MAX];
        uint64_t order;
} Row;

static int row_compare(const void *a, const void *b) {
        const Row *x = a, *y = b;

        if (x->order != y->order)
                return x->order < y->order ? -1 : 1;
        return strcmp(x->cells[0] ?: "", y->cells[0] ?: "");
}

static int read_row(sd_bus_message *reply, const ObjectKind *k, Row *row) {
        size_t n_columns = columns_count(k->columns);
        int r;

        r = sd_bus_message_enter_container(reply, 'a', "{sv}");
        if (r < 0)
                return r;
        for (;;) {
                const char *key, *contents;
                char type;
                size_t col;

                r = sd_bus_message_enter_container(reply, 'e', "sv");
                if (r <= 0)
                        break;
                r = sd_bus_message_read_basic(reply, 's', &key);
                if (r < 0)
                        return r;
                for (col = 0; col < n_columns; col++)
                        if (streq(k->columns[col].property, key))
                                break;
                r = sd_bus_message_peek_type(reply, &type, &contents);
                if (r < 0)
                        return r;
                if (col < n_columns && streq(contents, "as")) {
                        r = sd_bus_message_enter_container(reply, 'v', "as");
                        if (r >= 0)
                                r = sd_bus_message_read_strv(reply, &row->lists[col]);
                        if (r >= 0)
                                r = sd_bus_message_exit_container(reply);
                } else if (col < n_columns) {
                        r = gw_variant_to_string(reply, &row->cells[col]);
                        if (r >= 0 && streq(key, "Order"))
                                (void) parse_uint64(row->cells[col], &row->order);
                } else
                        r = sd_bus_message_skip(reply, "v");
                if (r < 0)
                        return r;
                r = sd_bus_message_exit_container(reply);
                if (r < 0)
                        return r;
        }
        if (r < 0)
                return r;
        return sd_bus_message_exit_container(reply);
}

static int verb_object_list(int argc, char *argv[]) {
        const ObjectKind *k = kind_of(argv);
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_output_ Output *o = NULL;
        _cleanup_free_ char *prefix = NULL;
        OutputColumn columns[OBJECT_COLUMNS_MAX];
        Row *rows = NULL;
        size_t n_rows = 0, n_columns;
        int r;

        if (!k)
                return gw_usage("unknown object kind");
        if (argc > 1)
                return gw_usage("'%s' takes no arguments", argv[0] + strlen("gwctl "));
        n_columns = MIN(columns_count(k->columns), (size_t) OBJECT_COLUMNS_MAX);
        for (size_t i = 0; i < n_columns; i++)
                columns[i] = (OutputColumn) { k->columns[i].header, k->columns[i].type, 0,
                                              k->columns[i].type == OUTPUT_NUMBER ? OUTPUT_RIGHT : 0 };
        if (asprintf(&prefix, "%s/%s/", GW_BUS_PATH, k->kind) < 0)
                return gw_fail("out of memory");

        r = gw_call(GW_BUS_PATH, "org.freedesktop.DBus.ObjectManager", "GetManagedObjects", &reply, NULL);
        if (r != 0)
                return r;
        r = sd_bus_message_enter_container(reply, 'a', "{oa{sa{sv}}}");
        while (r >= 0) {
                const char *path;

                r = sd_bus_message_enter_container(reply, 'e', "oa{sa{sv}}");
                if (r <= 0)
                        break;
                r = sd_bus_message_read_basic(reply, 'o', &path);
                if (r >= 0)
                        r = sd_bus_message_enter_container(reply, 'a', "{sa{sv}}");
                while (r >= 0) {
                        const char *iface;

                        r = sd_bus_message_enter_container(reply, 'e', "sa{sv}");
                        if (r <= 0)
                                break;
                        r = sd_bus_message_read_basic(reply, 's', &iface);
                        if (r < 0)
                                break;
                        if (strncmp(path, prefix, strlen(prefix)) == 0 && streq(iface, k->interface)) {
                                Row *nr = realloc(rows, (n_rows + 1) * sizeof(Row));

                                if (!nr) {
                                        r = -ENOMEM;
                                        break;
                                }
                                rows = nr;
                                rows[n_rows] = (Row) {};
                                r = read_row(reply, k, &rows[n_rows++]);
                        } else
                                r = sd_bus_message_skip(reply, "a{sv}");
                        if (r >= 0)
                                r = sd_bus_message_exit_container(reply);
                }
                if (r >= 0)
                        r = sd_bus_message_exit_container(reply);
                if (r >= 0)
                        r = sd_bus_message_exit_container(reply);
        }
        if (r >= 0) {
                /* Sender groups by match order, everything else by name. */
                if (n_rows > 0)
                        qsort(rows, n_rows, sizeof(Row), row_compare);
                r = output_new(k->listing, columns, n_columns, &o);
        }
        for (size_t i = 0; r >= 0 && i < n_rows; i++) {
                r = output_row(o);
                for (size_t c = 0; r >= 0 && c < n_columns; c++)
                        r = columns[c].type == OUTPUT_STRV ? output_cell_strv(o, c, rows[i].lists[c])
                                                           : output_cell(o, c, rows[i].cells[c]);
        }
        if (r >= 0)
                r = output_print(o);
        for (size_t i = 0; i < n_rows; i++)
                for (size_t c = 0; c < OBJECT_COLUMNS_MAX; c++) {
                        free(rows[i].cells[c]);
                        strv_free(rows[i].lists[c]);
                }
        free(rows);
        return r < 0 ? gw_bad_reply(r) : GWCTL_EXIT_OK;
}

/* ---- global settings ---- */

static int global_set(int argc, char *argv[], const ObjectFlag *flags) {
        _cleanup_(settings_done) Settings s = {};
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        size_t n;
        int r;

        r = settings_parse(&s, flags, argc, argv);
        if (r != 0)
                return r;
        if (s.n_args > 0)
                return gw_usage("unexpected argument '%s'", s.args[0]);
        if (settings_count(&s) == 0)
                return gw_usage("'%s' needs at least one setting to change", argv[0] + strlen("gwctl "));
        r = gw_new_method(GW_BUS_PATH, GW_IFACE_MANAGER, "SetGlobal", &m);
        if (r != 0)
                return r;
        r = settings_append(&s, m, &n);
        if (r != 0)
                return r;
        r = gw_call_message(m, NULL, NULL);
        if (r != 0)
                return r;
        printf("Staged: global settings; apply with 'gwctl commit'.\n");
        return GWCTL_EXIT_OK;
}

static int verb_global_show(int argc, char *argv[]) {
        if (argc > 1)
                return gw_usage("'%s' takes no arguments", argv[0] + strlen("gwctl "));
        return record_show(GW_PATH_GLOBAL, GW_IFACE_GLOBAL, "global", "the global settings");
}

static int verb_global_set(int argc, char *argv[]) {
        return global_set(argc, argv, global_flags);
}

/* "gwctl dest global show|set ...": a sub-group under dest. */
static int verb_dest_global(int argc, char *argv[]) {
        _cleanup_free_ char *name = NULL;

        if (argc < 2)
                return gw_usage("'dest global' needs a command: show, set");
        if (asprintf(&name, "gwctl dest global %s", argv[1]) < 0)
                return gw_fail("out of memory");
        argv[1] = name;
        if (streq(argv[1] + strlen("gwctl dest global "), "show"))
                return verb_global_show(argc - 1, argv + 1);
        if (streq(argv[1] + strlen("gwctl dest global "), "set"))
                return global_set(argc - 1, argv + 1, dest_global_flags);
        return gw_usage("unknown command 'dest global %s'; it takes: show, set",
                        argv[1] + strlen("gwctl dest global "));
}

/* ---- alert recipients: a global list edited one address at a time ---- */

/* The recipients the next commit would have: those of the pending set
 * when there is one, so that two additions in a row both stay. The
 * pending text is libconfig: alert_recipients = [ "a@b", "c@d" ]; */
static int alert_recipients_from_text(const char *text, char ***ret) {
        _cleanup_strv_free_ char **l = NULL;
        const char *p = text;

        for (;;) {
                p = strstr(p, "alert_recipients");
                if (!p)
                        break;
                if (p == text || p[-1] == '\n' || p[-1] == ' ' || p[-1] == '\t')
                        break;
                p++;
        }
        if (p) {
                p += strlen("alert_recipients");
                p += strspn(p, " \t\n");
                if (*p != '=' && *p != ':')
                        p = NULL;
        }
        while (p && *p && *p != ']' && *p != ')' && *p != ';') {
                const char *e;
                _cleanup_free_ char *s = NULL;

                if (*p != '"') {
                        p++;
                        continue;
                }
                e = strchr(p + 1, '"');
                if (!e)
                        break;
                s = strndup(p + 1, (size_t) (e - p - 1));
                if (!s || gw_strv_add(&l, s, false) < 0)
                        return -ENOMEM;
                p = e + 1;
        }
        *ret = TAKE_PTR(l);
        return 0;
}

static int alert_recipients_get(char ***ret) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        const char *owner, *text;
        int pending, r;

        r = gw_call(GW_BUS_PATH, GW_IFACE_MANAGER, "GetPending", &reply, NULL);
        if (r != 0)
                return r;
        r = sd_bus_message_read(reply, "bss", &pending, &owner, &text);
        if (r < 0)
                return gw_bad_reply(r);
        if (pending) {
                r = alert_recipients_from_text(text, ret);
                return r < 0 ? gw_fail("out of memory") : 0;
        }
        reply = sd_bus_message_unref(reply);
        r = gw_call(GW_PATH_GLOBAL, "org.freedesktop.DBus.Properties", "Get", &reply, "ss",
                    GW_IFACE_GLOBAL, "AlertRecipients");
        if (r != 0)
                return r;
        r = sd_bus_message_enter_container(reply, 'v', "as");
        if (r >= 0)
                r = sd_bus_message_read_strv(reply, ret);
        return r < 0 ? gw_bad_reply(r) : 0;
}

static int alert_recipients_set(char **l) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        static const ObjectFlag f = { "alert-recipient", "alert_recipients", FLAG_STRV };
        char *empty[] = { NULL };
        int r;

        r = gw_new_method(GW_BUS_PATH, GW_IFACE_MANAGER, "SetGlobal", &m);
        if (r != 0)
                return r;
        r = sd_bus_message_open_container(m, 'a', "{sv}");
        if (r < 0)
                return gw_fail("cannot build the request: %s", strerror(-r));
        r = append_value(m, &f, NULL, l ?: empty);
        if (r != 0)
                return r;
        r = sd_bus_message_close_container(m);
        if (r < 0)
                return gw_fail("cannot build the request: %s", strerror(-r));
        return gw_call_message(m, NULL, NULL);
}

static int verb_alert_list(int argc, char *argv[]) {
        static const OutputColumn columns[] = {
                { "RECIPIENT", OUTPUT_STRING, 0, 0 },
        };
        _cleanup_strv_free_ char **l = NULL;
        _cleanup_output_ Output *o = NULL;
        int r;

        if (argc > 1)
                return gw_usage("'alert list' takes no arguments");
        r = alert_recipients_get(&l);
        if (r != 0)
                return r;
        r = output_new("alert_recipients", columns, ELEMENTSOF(columns), &o);
        for (char **i = l; r >= 0 && i && *i; i++) {
                r = output_row(o);
                if (r >= 0)
                        r = output_cell(o, 0, *i);
        }
        if (r >= 0)
                r = output_print(o);
        return r < 0 ? gw_bad_reply(r) : GWCTL_EXIT_OK;
}

static bool strv_contains(char **l, const char *s) {
        for (char **i = l; i && *i; i++)
                if (strcasecmp(*i, s) == 0)
                        return true;
        return false;
}

static int verb_alert_add(int argc, char *argv[]) {
        _cleanup_strv_free_ char **l = NULL;
        int r;

        if (argc < 2)
                return gw_usage("'alert add' needs at least one ADDRESS");
        for (int i = 1; i < argc; i++)
                if (!mailbox_is_valid(argv[i], strlen(argv[i])))
                        return gw_usage("'%s' is not a mailbox (local@domain)", argv[i]);
        r = alert_recipients_get(&l);
        if (r != 0)
                return r;
        for (int i = 1; i < argc; i++) {
                if (strv_contains(l, argv[i]))
                        return gw_fail("'%s' is already an alert recipient", argv[i]);
                if (gw_strv_add(&l, argv[i], false) < 0)
                        return gw_fail("out of memory");
        }
        r = alert_recipients_set(l);
        if (r != 0)
                return r;
        printf("Staged: alert recipients changed; apply with 'gwctl commit'.\n");
        return GWCTL_EXIT_OK;
}

static int verb_alert_delete(int argc, char *argv[]) {
        _cleanup_strv_free_ char **l = NULL;
        int r;

        if (argc < 2)
                return gw_usage("'alert delete' needs at least one ADDRESS");
        r = alert_recipients_get(&l);
        if (r != 0)
                return r;
        for (int i = 1; i < argc; i++) {
                size_t n = 0;
                bool found = false;

                for (char **j = l; j && *j; j++) {
                        if (!found && strcasecmp(*j, argv[i]) == 0) {
                                free(*j);
                                found = true;
                                continue;
                        }
                        l[n++] = *j;
                }
                if (!found)
                        return gw_fail("'%s' is not an alert recipient", argv[i]);
                l[n] = NULL;
        }
        r = alert_recipients_set(l);
        if (r != 0)
                return r;
        printf("Staged: alert recipients changed; apply with 'gwctl commit'.\n");
        return GWCTL_EXIT_OK;
}

#define OBJECT_VERBS(cmd, name, flags)                                                                          \
        { cmd, "list",   verb_object_list,   "\tAll " name "s of the running configuration" },                \
        { cmd, "show",   verb_object_show,   "NAME\tOne " name " with every setting" },                       \
        { cmd, "add",    verb_object_add,    "NAME " flags "\tStage a new " name },                           \
        { cmd, "set",    verb_object_set,    "NAME FLAG...\tStage changes (an empty value restores the default)" }, \
        { cmd, "delete", verb_object_delete, "NAME\tStage the removal of a " name }

const Verb object_verbs[] = {
        OBJECT_VERBS("listener", "listener",
                     "--address ADDR --port N --default-policy P [--tls MODE] [--certificate C,...] ..."),
        OBJECT_VERBS("sendergroup", "sender group", "--policy P --source CIDR..."),
        OBJECT_VERBS("policy", "mail flow policy", "--action accept|relay|reject|tcp-refuse [--tls MODE] ..."),
        OBJECT_VERBS("dest", "destination control", "[--tls MODE] [--ktls on|off] [--ca-file F] ..."),
        { "dest", "global", verb_dest_global, "show|set [--certificate C] [--ca-file F] [--alert on|off] ...\tOutbound TLS client settings and TLS alerts" },
        OBJECT_VERBS("route", "route", "--host HOST[:PORT]... | --maildir DIR"),
        OBJECT_VERBS("https", "HTTPS interface", "--address ADDR --port N [--hostname H] [--certificate C]"),
        OBJECT_VERBS("ldap", "LDAP profile", "--uri URI --base DN [--bind-dn DN --bind-password-file F] ..."),
        { "alert",  "list",   verb_alert_list,   "\tRecipients of operational alerts" },
        { "alert",  "add",    verb_alert_add,    "ADDRESS...\tStage new alert recipients" },
        { "alert",  "delete", verb_alert_delete, "ADDRESS...\tStage the removal of alert recipients" },
        { "global", "show",   verb_global_show,  "\tTop-level settings of the running configuration" },
        { "global", "set",    verb_global_set,   "[--hostname H] [--admin-group G] [--dns-server IP]... ...\tStage top-level settings" },
        {}
};
