/* SPDX-License-Identifier: GPL-2.0-or-later */

/*
 * Reading, checking and querying the gateway configuration.
 *
 * The file is libconfig syntax (docs/configuration.md). Loading happens in
 * two steps: a parse step turns libconfig settings into the typed objects of
 * config.h, checking every key name, value type and range; then
 * config_validate() checks the objects against each other (duplicate names,
 * references to policies, addresses in use twice), fills derived defaults
 * and lowercases domains. Both steps collect every problem they find, each
 * as one "FILE:LINE: <object> '<name>': <problem>" line, so an operator
 * fixes a broken file in one round.
 *
 * The ConfigDocument at the end is the same file as an editable libconfig
 * tree for the control plane: every edit is made on a copy, validated by
 * rendering and loading it, and kept only if it loads. The one secret of
 * the file (an LDAP bind password) can be rendered redacted or encrypted
 * with a password (AES-256-GCM, PBKDF2-SHA256).
 *
 * This module does not log, open sockets, resolve names or touch the state
 * directory, CA files or the certificate store; it only describes (TLS
 * cipher strings are checked by tls.c without building anything), and it
 * writes no files. Functions return negative errno: -EINVAL for a
 * configuration with problems (text in *ret_error), -ENOMEM, or the errno
 * of reading the file; documents add -EEXIST, -ENOENT, -EBUSY and
 * -EKEYREJECTED (see config.h).
 */

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libconfig.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "build-config.h"
#include "certstore.h"
#include "config.h"
#include "tls.h"
#include "util/macro.h"
#include "util/parse.h"

/* A real configuration is a few kilobytes; the cap only stops a wrong path
 * (a log file, a device) from being read into memory whole. */
#define CONFIG_FILE_SIZE_MAX (1024U * 1024U)
/* libconfig records source lines in an unsigned short; beyond that the
 * line numbers in our messages would be wrong. */
#define CONFIG_LINES_MAX 65535U
/* One broken file should give a readable list, not megabytes of text. */
#define CONFIG_ERRORS_MAX 32U
/* Object names are also socket FileDescriptorName= values (systemd allows
 * 255 characters, no ':') and D-Bus object path components; a short
 * [A-Za-z0-9._-] name is valid in all of those places. */
#define CONFIG_NAME_MAX 64U

/* Upper bounds that keep values sane, not protocol limits. */
#define SMTP_LINE_MAX_CEILING 65536U            /* buffers are sized by it */
#define SMTP_RCPT_MAX_CEILING 100000U
/* SIZE values (RFC 1870) and spool files stay far from 32/64-bit edges. */
#define SMTP_MESSAGE_SIZE_CEILING (4ULL * 1024 * 1024 * 1024)
#define SMTP_ERRORS_MAX_CEILING 1000U
#define TIMEOUT_MIN (1 * USEC_PER_SEC)
#define TIMEOUT_MAX (86400 * USEC_PER_SEC)
#define CONNECTIONS_CEILING 1000000U
#define WORKERS_MAX 1024U

#define WORKERS_DEFAULT 0U                      /* one per online CPU */
#define SHUTDOWN_TIMEOUT_DEFAULT (30 * USEC_PER_SEC)
#define SHUTDOWN_TIMEOUT_MAX (3600 * USEC_PER_SEC)

/* Queue: first retry after a minute, backing off to an hour. */
#define QUEUE_RETRY_MIN_DEFAULT (60 * USEC_PER_SEC)
#define QUEUE_RETRY_MAX_DEFAULT (3600 * USEC_PER_SEC)
/* RFC 5321 4.5.4.1: give up only after at least 4-5 days. */
#define QUEUE_LIFETIME_DEFAULT (5 * 86400 * USEC_PER_SEC)
#define QUEUE_LIFETIME_MAX (30 * 86400 * USEC_PER_SEC)
#define QUEUE_CONNECT_TIMEOUT_DEFAULT (30 * USEC_PER_SEC)
/* RFC 5321 4.5.3.2.2-4: MAIL, RCPT and data block replies, 5 minutes. */
#define QUEUE_COMMAND_TIMEOUT_DEFAULT (300 * USEC_PER_SEC)
/* RFC 5321 4.5.3.2.6: DATA termination ("." reply), 10 minutes. */
#define QUEUE_DATA_TIMEOUT_DEFAULT (600 * USEC_PER_SEC)
/* RFC 5321 4.5.4.2: the SMTP port assigned by IANA. */
#define QUEUE_SMTP_PORT_DEFAULT 25
#define QUEUE_CONNECTIONS_MAX_DEFAULT 200U

#define DESTINATION_DEFAULT_NAME "default"
#define DESTINATION_CONNECTIONS_DEFAULT 20U
#define DESTINATION_MESSAGES_PER_CONNECTION_DEFAULT 50U
/* RFC 5321 4.5.3.1.8: a server must take at least 100 recipients, so a
 * batch of 100 never runs into a conforming server's limit. */
#define DESTINATION_RECIPIENTS_PER_MESSAGE_DEFAULT 100U
#define DESTINATION_TLS_DEFAULT TLS_OUT_PREFERRED
#define DESTINATION_KTLS_DEFAULT true

#define LISTENER_TLS_DEFAULT TLS_IN_PREFERRED
#define LISTENER_KTLS_DEFAULT true

/* RFC 8996 retires TLS 1.0 and 1.1 and RFC 9325 3.1.1 asks for TLS 1.2 at
 * least, so 1.2 is both the default and the lowest value allowed. */
#define TLS_MIN_VERSION_DEFAULT "TLSv1.2"
/* A server context holds one certificate per key type (RSA, RSA-PSS, EC,
 * Ed25519, Ed448); further names could never be served. */
#define LISTENER_CERTIFICATES_MAX 5U

#define TLS_ALERT_ENABLED_DEFAULT true
#define TLS_ALERT_INTERVAL_DEFAULT (3600 * USEC_PER_SEC)
/* Below a minute a flapping peer floods the alert recipients; beyond a
 * week a new failure goes unnoticed too long. */
#define TLS_ALERT_INTERVAL_MIN (60 * USEC_PER_SEC)
#define TLS_ALERT_INTERVAL_MAX (7 * 86400 * USEC_PER_SEC)
/* A ticket stays valid for two rotation periods and RFC 8446 4.6.1 caps
 * ticket lifetimes at 7 days: at most 84 hours per period. Rotating more
 * often than once a minute only defeats resumption. */
#define TLS_TICKET_ROTATION_MIN (60 * USEC_PER_SEC)
#define TLS_TICKET_ROTATION_MAX (84 * 3600 * USEC_PER_SEC)

#define ROUTE_PORT_DEFAULT 25                   /* RFC 5321 4.5.4.2 */
#define ROUTE_WILDCARD "*"
#define DNS_PORT_DEFAULT 53                     /* RFC 1035 4.2 */

/* config_new_default(): a loopback-only gateway delivering to a maildir. */
#define BUILTIN_LISTENER_NAME "inbound"
#define BUILTIN_LISTENER_ADDRESS "127.0.0.1"
#define BUILTIN_LISTENER_PORT 2525
#define BUILTIN_ACCEPTED_DOMAIN "localhost"
#define BUILTIN_POLICY_ACCEPTED "ACCEPTED"
#define BUILTIN_POLICY_RELAYED "RELAYED"
#define BUILTIN_SENDER_GROUP "RELAYLIST"
#define BUILTIN_MAILDIR_SUBDIR "mail"

/* groupadd(8) refuses group names longer than 32 characters
 * (GROUP_NAME_MAX_LENGTH); the portable name set is [a-z_][a-z0-9_-]*. */
#define ADMIN_GROUP_NAME_MAX 32U
/* RFC 4516 2: an LDAP URL is "ldap://" hostport; RFC 4516 leaves
 * "ldaps://" to common practice (LDAP over TLS, port 636). Profiles name
 * the server only: base, scope and filter are separate keys. */
#define LDAP_SCHEME "ldap://"
#define LDAPS_SCHEME "ldaps://"
#define LDAP_PORT_DEFAULT 389                   /* RFC 4511 5 (IANA) */
#define LDAPS_PORT_DEFAULT 636
/* Marks a secret that config_document_to_text() encrypted; a file with
 * such a value must be imported with its password, never loaded as is. */
#define SECRET_ENCRYPTED_PREFIX "enc:v1:"

#define LOCALHOST "localhost"
#define BUILTIN_SOURCE "<built-in>"

static const char * const policy_action_table[_POLICY_ACTION_MAX] = {
        [POLICY_ACCEPT]     = "accept",
        [POLICY_RELAY]      = "relay",
        [POLICY_REJECT]     = "reject",
        [POLICY_TCP_REFUSE] = "tcp-refuse",
};

static const char * const tls_inbound_table[_TLS_IN_MAX] = {
        [TLS_IN_OFF]              = "off",
        [TLS_IN_PREFERRED]        = "preferred",
        [TLS_IN_REQUIRED]         = "required",
        [TLS_IN_PREFERRED_VERIFY] = "preferred-verify",
        [TLS_IN_REQUIRED_VERIFY]  = "required-verify",
};

static const char * const tls_outbound_table[_TLS_OUT_MAX] = {
        [TLS_OUT_NONE]             = "none",
        [TLS_OUT_PREFERRED]        = "preferred",
        [TLS_OUT_REQUIRED]         = "required",
        [TLS_OUT_PREFERRED_VERIFY] = "preferred-verify",
        [TLS_OUT_REQUIRED_VERIFY]  = "required-verify",
};

/* OpenSSL's protocol names (SSL_get_version()), as written in the file. */
static const char * const tls_version_table[] = {
        "TLSv1.2",
        "TLSv1.3",
};

static const char * const route_kind_table[_ROUTE_KIND_MAX] = {
        [ROUTE_SMTP]    = "smtp",
        [ROUTE_MAILDIR] = "maildir",
};

static const char *table_to_string(const char * const *table, size_t n, int i) {
        if (i < 0 || (size_t) i >= n)
                return NULL;
        return table[i];
}

static int table_from_string(const char * const *table, size_t n, const char *s) {
        if (!s)
                return -EINVAL;
        for (size_t i = 0; i < n; i++)
                if (table[i] && streq(table[i], s))
                        return (int) i;
        return -EINVAL;
}

const char *policy_action_to_string(PolicyAction a) {
        return table_to_string(policy_action_table, ELEMENTSOF(policy_action_table), a);
}

PolicyAction policy_action_from_string(const char *s) {
        return (PolicyAction) table_from_string(policy_action_table, ELEMENTSOF(policy_action_table), s);
}

const char *tls_inbound_to_string(TlsInbound t) {
        return table_to_string(tls_inbound_table, ELEMENTSOF(tls_inbound_table), t);
}

TlsInbound tls_inbound_from_string(const char *s) {
        return (TlsInbound) table_from_string(tls_inbound_table, ELEMENTSOF(tls_inbound_table), s);
}

const char *tls_outbound_to_string(TlsOutbound t) {
        return table_to_string(tls_outbound_table, ELEMENTSOF(tls_outbound_table), t);
}

TlsOutbound tls_outbound_from_string(const char *s) {
        return (TlsOutbound) table_from_string(tls_outbound_table, ELEMENTSOF(tls_outbound_table), s);
}

const char *route_kind_to_string(RouteKind k) {
        return table_to_string(route_kind_table, ELEMENTSOF(route_kind_table), k);
}

RouteKind route_kind_from_string(const char *s) {
        return (RouteKind) table_from_string(route_kind_table, ELEMENTSOF(route_kind_table), s);
}

/* ---- problem collection ---- */

typedef struct Diag {
        const char *file;               /* name used when a setting has none */
        const char *include_dir;        /* libconfig names included files relative to it */
        char *text;                     /* "\n"-separated messages */
        size_t len;
        unsigned n;
        bool oom;
} Diag;

/* Label of the object a message is about: "listener 'inbound'",
 * "listener #2" (no usable name yet), "queue", or "" (top level). */
#define LABEL_MAX (CONFIG_NAME_MAX + 32)
typedef struct Obj {
        char label[LABEL_MAX];
} Obj;

static void obj_init(Obj *o, const char *kind, const char *name, size_t index) {
        char esc[CONFIG_NAME_MAX + 8];

        if (!kind)
                o->label[0] = '\0';
        else if (name) {
                log_escape(name, strlen(name), esc, sizeof(esc));
                snprintf(o->label, sizeof(o->label), "%s '%s'", kind, esc);
        } else if (index > 0)
                snprintf(o->label, sizeof(o->label), "%s #%zu", kind, index);
        else
                snprintf(o->label, sizeof(o->label), "%s", kind);
}

static void diag_append(Diag *d, const char *s) {
        size_t l = strlen(s);
        char *t;

        t = realloc(d->text, d->len + l + 2);
        if (!t) {
                d->oom = true;
                return;
        }
        if (d->len > 0)
                t[d->len++] = '\n';
        memcpy(t + d->len, s, l + 1);
        d->len += l;
        d->text = t;
}

_printf_(5, 6)
static void diag_add(Diag *d, const char *file, unsigned line, const Obj *o, const char *fmt, ...) {
        _cleanup_free_ char *msg = NULL, *full = NULL;
        char where[32] = "";
        va_list ap;
        int r;

        if (++d->n > CONFIG_ERRORS_MAX)
                return;

        va_start(ap, fmt);
        r = vasprintf(&msg, fmt, ap);
        va_end(ap);
        if (r < 0) {
                msg = NULL;
                d->oom = true;
                return;
        }

        if (line > 0)
                snprintf(where, sizeof(where), ":%u", line);
        /* libconfig reports an included file by the name in the
         * @include line; show where it really is. */
        if (!file)
                file = d->file;
        r = asprintf(&full, "%s%s%s%s: %s%s%s",
                     file != d->file && file[0] != '/' && d->include_dir ? d->include_dir : "",
                     file != d->file && file[0] != '/' && d->include_dir ? "/" : "",
                     file, where,
                     o && o->label[0] ? o->label : "",
                     o && o->label[0] ? ": " : "", msg);
        if (r < 0) {
                full = NULL;
                d->oom = true;
                return;
        }
        diag_append(d, full);
}

static const char *setting_file(const Diag *d, const config_setting_t *s) {
        const char *f = s ? config_setting_source_file(s) : NULL;
        return f ?: d->file;
}

#define setting_error(d, s, o, ...) \
        diag_add((d), setting_file((d), (s)), (s) ? config_setting_source_line(s) : 0, (o), __VA_ARGS__)

/* Hands the collected text to the caller; returns the verdict. */
static int diag_finish(Diag *d, char **ret_error) {
        int r = 0;

        if (d->oom)
                r = -ENOMEM;
        else if (d->n > 0) {
                if (d->n > CONFIG_ERRORS_MAX) {
                        char more[64];

                        snprintf(more, sizeof(more), "%s: %u more problems not shown",
                                 d->file, d->n - CONFIG_ERRORS_MAX);
                        diag_append(d, more);
                }
                r = d->oom ? -ENOMEM : -EINVAL;
        }

        if (r < 0 && ret_error && d->text)
                *ret_error = TAKE_PTR(d->text);
        free(d->text);
        d->text = NULL;
        d->len = 0;
        return r;
}

/* ---- value helpers: each records its own problem and returns -EINVAL ---- */

/* Durations in messages, in the largest unit that shows them exactly:
 * "250ms", "90s", "5m", "5d". */
#define DURATION_STRLEN 32
static const char *format_duration(uint64_t usec, char buf[static DURATION_STRLEN]) {
        static const struct {
                const char *suffix;
                uint64_t usec;
        } units[] = {
                { "d",  86400 * USEC_PER_SEC },
                { "h",  3600 * USEC_PER_SEC },
                { "m",  60 * USEC_PER_SEC },
                { "s",  USEC_PER_SEC },
                { "ms", USEC_PER_MSEC },
        };

        for (size_t i = 0; i < ELEMENTSOF(units); i++)
                if (usec >= units[i].usec && usec % units[i].usec == 0) {
                        snprintf(buf, DURATION_STRLEN, "%" PRIu64 "%s", usec / units[i].usec, units[i].suffix);
                        return buf;
                }
        snprintf(buf, DURATION_STRLEN, "%" PRIu64 "us", usec);
        return buf;
}


static const char *setting_type_name(const config_setting_t *s) {
        switch (config_setting_type(s)) {
        case CONFIG_TYPE_GROUP:  return "a group";
        case CONFIG_TYPE_INT:
        case CONFIG_TYPE_INT64:  return "an integer";
        case CONFIG_TYPE_FLOAT:  return "a float";
        case CONFIG_TYPE_STRING: return "a string";
        case CONFIG_TYPE_BOOL:   return "a boolean";
        case CONFIG_TYPE_ARRAY:  return "an array";
        case CONFIG_TYPE_LIST:   return "a list";
        default:                 return "unknown";
        }
}

static int type_error(Diag *d, const config_setting_t *s, const Obj *o, const char *key, const char *want) {
        setting_error(d, s, o, "'%s' must be %s, not %s", key, want, setting_type_name(s));
        return -EINVAL;
}

static bool setting_is_int(const config_setting_t *s) {
        int t = config_setting_type(s);

        return t == CONFIG_TYPE_INT || t == CONFIG_TYPE_INT64;
}

static int get_string(Diag *d, const config_setting_t *s, const Obj *o, const char *key, char **ret) {
        const char *v;
        char *copy;

        if (config_setting_type(s) != CONFIG_TYPE_STRING)
                return type_error(d, s, o, key, "a string");
        v = config_setting_get_string(s);
        if (isempty(v)) {
                setting_error(d, s, o, "'%s' must not be empty", key);
                return -EINVAL;
        }
        copy = strdup(v);
        if (!copy) {
                d->oom = true;
                return -ENOMEM;
        }
        free(*ret);
        *ret = copy;
        return 0;
}

static int get_uint(Diag *d, const config_setting_t *s, const Obj *o, const char *key,
                    uint64_t min, uint64_t max, uint64_t *ret) {
        long long v;

        if (!setting_is_int(s))
                return type_error(d, s, o, key, "an integer");
        v = config_setting_get_int64(s);
        if (v < 0 || (uint64_t) v < min || (uint64_t) v > max) {
                setting_error(d, s, o, "%s %lld out of range %" PRIu64 "..%" PRIu64, key, v, min, max);
                return -EINVAL;
        }
        *ret = (uint64_t) v;
        return 0;
}

static int get_u32(Diag *d, const config_setting_t *s, const Obj *o, const char *key,
                   uint32_t min, uint32_t max, uint32_t *ret) {
        uint64_t v = 0;
        int r;

        r = get_uint(d, s, o, key, min, max, &v);
        if (r < 0)
                return r;
        *ret = (uint32_t) v;
        return 0;
}

static int get_port(Diag *d, const config_setting_t *s, const Obj *o, const char *key, uint16_t *ret) {
        uint64_t v = 0;
        int r;

        r = get_uint(d, s, o, key, 1, UINT16_MAX, &v);
        if (r < 0)
                return r;
        *ret = (uint16_t) v;
        return 0;
}

static int get_bool(Diag *d, const config_setting_t *s, const Obj *o, const char *key, bool *ret) {
        if (config_setting_type(s) != CONFIG_TYPE_BOOL)
                return type_error(d, s, o, key, "true or false");
        *ret = config_setting_get_bool(s);
        return 0;
}

/* Durations: a string for parse_duration() ("5m", "250ms") or an integer
 * number of seconds. */
static int get_duration(Diag *d, const config_setting_t *s, const Obj *o, const char *key,
                        uint64_t min, uint64_t max, uint64_t *ret) {
        uint64_t v;

        if (setting_is_int(s)) {
                long long n = config_setting_get_int64(s);

                if (n < 0 || (unsigned long long) n > max / USEC_PER_SEC) {
                        char a[DURATION_STRLEN], b[DURATION_STRLEN];

                        setting_error(d, s, o, "%s %llds out of range %s..%s", key, n,
                                      format_duration(min, a), format_duration(max, b));
                        return -EINVAL;
                }
                v = (uint64_t) n * USEC_PER_SEC;
        } else if (config_setting_type(s) == CONFIG_TYPE_STRING) {
                const char *t = config_setting_get_string(s);

                if (parse_duration(t, &v) < 0) {
                        char esc[64];

                        setting_error(d, s, o, "%s \"%s\" is not a duration (e.g. \"30s\", \"5m\", \"2h\", \"5d\")",
                                      key, log_escape(t, strlen(t), esc, sizeof(esc)));
                        return -EINVAL;
                }
        } else
                return type_error(d, s, o, key, "a duration string or an integer (seconds)");

        if (v < min || v > max) {
                char a[DURATION_STRLEN], b[DURATION_STRLEN], c[DURATION_STRLEN];

                setting_error(d, s, o, "%s %s out of range %s..%s", key, format_duration(v, a),
                              format_duration(min, b), format_duration(max, c));
                return -EINVAL;
        }
        *ret = v;
        return 0;
}

/* Sizes: a string for parse_size() ("10M") or an integer of octets. */
static int get_size(Diag *d, const config_setting_t *s, const Obj *o, const char *key,
                    uint64_t min, uint64_t max, uint64_t *ret) {
        uint64_t v;

        if (setting_is_int(s)) {
                long long n = config_setting_get_int64(s);

                if (n < 0) {
                        setting_error(d, s, o, "%s %lld out of range %" PRIu64 "..%" PRIu64, key, n, min, max);
                        return -EINVAL;
                }
                v = (uint64_t) n;
        } else if (config_setting_type(s) == CONFIG_TYPE_STRING) {
                const char *t = config_setting_get_string(s);

                if (parse_size(t, &v) < 0) {
                        char esc[64];

                        setting_error(d, s, o, "%s \"%s\" is not a size (e.g. \"512K\", \"10M\", \"1G\")",
                                      key, log_escape(t, strlen(t), esc, sizeof(esc)));
                        return -EINVAL;
                }
        } else
                return type_error(d, s, o, key, "a size string or an integer (octets)");

        if (v < min || v > max) {
                setting_error(d, s, o, "%s %" PRIu64 " out of range %" PRIu64 "..%" PRIu64, key, v, min, max);
                return -EINVAL;
        }
        *ret = v;
        return 0;
}

/* A list of strings, written as [ "a", "b" ] (or ( "a", "b" )). The vector
 * is NULL-terminated; *ret_lines (optional) gets each element's line. */
static int get_strv(Diag *d, const config_setting_t *s, const Obj *o, const char *key,
                    char ***ret, unsigned **ret_lines) {
        _cleanup_strv_free_ char **v = NULL;
        _cleanup_free_ unsigned *lines = NULL;
        int n, r = 0;

        if (config_setting_type(s) != CONFIG_TYPE_ARRAY && config_setting_type(s) != CONFIG_TYPE_LIST)
                return type_error(d, s, o, key, "a list of strings [ \"...\" ]");

        n = config_setting_length(s);
        v = calloc((size_t) n + 1, sizeof(char *));
        lines = calloc((size_t) n + 1, sizeof(unsigned));
        if (!v || !lines) {
                d->oom = true;
                return -ENOMEM;
        }

        for (int i = 0, k = 0; i < n; i++) {
                config_setting_t *e = config_setting_get_elem(s, (unsigned) i);
                const char *t;

                if (config_setting_type(e) != CONFIG_TYPE_STRING) {
                        setting_error(d, e, o, "'%s' element %d must be a string, not %s",
                                      key, i + 1, setting_type_name(e));
                        r = -EINVAL;
                        continue;
                }
                t = config_setting_get_string(e);
                if (isempty(t)) {
                        setting_error(d, e, o, "'%s' element %d must not be empty", key, i + 1);
                        r = -EINVAL;
                        continue;
                }
                v[k] = strdup(t);
                if (!v[k]) {
                        d->oom = true;
                        return -ENOMEM;
                }
                lines[k++] = config_setting_source_line(e);
        }
        if (r < 0)
                return r;

        strv_free(*ret);
        *ret = TAKE_PTR(v);
        if (ret_lines)
                *ret_lines = TAKE_PTR(lines);
        return 0;
}

static bool name_is_valid(const char *s) {
        size_t l;

        if (isempty(s))
                return false;
        l = strlen(s);
        if (l > CONFIG_NAME_MAX)
                return false;
        for (size_t i = 0; i < l; i++)
                if (!isascii((unsigned char) s[i]) ||
                    !(isalnum((unsigned char) s[i]) || strchr("._-", s[i])))
                        return false;
        return true;
}

static void ascii_strlower(char *s) {
        for (; s && *s; s++)
                *s = (char) tolower((unsigned char) *s);
}

/* Domains in the file may be written in any case (RFC 5321 2.4: domain
 * names are case-insensitive); we store them lowercase. */
static bool config_domain_is_valid(const char *s) {
        return s && (strcaseeq(s, LOCALHOST) || domain_is_valid(s));
}

static bool path_is_absolute_ok(const char *s) {
        return s && s[0] == '/' && strlen(s) < PATH_MAX;
}

/* Fetches the member holding an object's name before anything else, so
 * every later message can name the object. */
static const char *group_name(const config_setting_t *g, const char *key) {
        config_setting_t *m = config_setting_get_member(g, key);

        if (!m || config_setting_type(m) != CONFIG_TYPE_STRING)
                return NULL;
        return config_setting_get_string(m);
}

static int get_enum(Diag *d, const config_setting_t *s, const Obj *o, const char *key,
                    const char * const *table, size_t n, int *ret) {
        char values[160] = "", esc[64];
        const char *t;
        int i;

        if (config_setting_type(s) != CONFIG_TYPE_STRING)
                return type_error(d, s, o, key, "a string");
        t = config_setting_get_string(s);
        i = table_from_string(table, n, t);
        if (i < 0) {
                for (size_t k = 0; k < n; k++) {
                        strncat(values, k > 0 ? ", " : "", sizeof(values) - strlen(values) - 1);
                        strncat(values, table[k], sizeof(values) - strlen(values) - 1);
                }
                setting_error(d, s, o, "%s \"%s\" is not one of: %s",
                              key, log_escape(t, strlen(t), esc, sizeof(esc)), values);
                return -EINVAL;
        }
        *ret = i;
        return 0;
}

/* Certificate names are directories below STATE/certs/: besides the
 * general name rule, "." and ".." would leave that directory. */
static bool certificate_name_is_valid(const char *s) {
        return name_is_valid(s) && !streq(s, ".") && !streq(s, "..");
}

static bool tls_version_is_valid(const char *s) {
        return table_from_string(tls_version_table, ELEMENTSOF(tls_version_table), s) >= 0;
}

#define CERTIFICATE_NAME_RULE "1..64 characters of A-Z a-z 0-9 . _ -, not \".\" or \"..\""

static void certificate_name_error(Diag *d, const char *file, unsigned line, const Obj *o, const char *name) {
        char esc[64];

        diag_add(d, file, line, o, "certificate \"%s\" is not a valid certificate name (" CERTIFICATE_NAME_RULE ")",
                 name ? log_escape(name, strlen(name), esc, sizeof(esc)) : "");
}

static void tls_version_error(Diag *d, const char *file, unsigned line, const Obj *o, const char *key, const char *v) {
        char esc[64];

        diag_add(d, file, line, o, "%s \"%s\" is not one of: TLSv1.2, TLSv1.3", key,
                 v ? log_escape(v, strlen(v), esc, sizeof(esc)) : "");
}

static void path_error(Diag *d, const char *file, unsigned line, const Obj *o, const char *key, const char *v) {
        char esc[64];

        diag_add(d, file, line, o, "%s \"%s\" is not an absolute path", key,
                 v ? log_escape(v, strlen(v), esc, sizeof(esc)) : "");
}

/* "TLSv1.2" or "TLSv1.3"; the message lists both. */
static int get_tls_version(Diag *d, const config_setting_t *s, const Obj *o, const char *key, char **ret) {
        _cleanup_free_ char *v = NULL;
        int r;

        r = get_string(d, s, o, key, &v);
        if (r < 0)
                return r;
        if (!tls_version_is_valid(v)) {
                tls_version_error(d, setting_file(d, s), config_setting_source_line(s), o, key, v);
                return -EINVAL;
        }
        free(*ret);
        *ret = TAKE_PTR(v);
        return 0;
}

/* Files the daemon opens later: absolute, so that the meaning does not
 * depend on the working directory. Whether they exist is checked when the
 * configuration is applied, not here. */
static int get_path(Diag *d, const config_setting_t *s, const Obj *o, const char *key, char **ret) {
        _cleanup_free_ char *v = NULL;
        int r;

        r = get_string(d, s, o, key, &v);
        if (r < 0)
                return r;
        if (!path_is_absolute_ok(v)) {
                path_error(d, setting_file(d, s), config_setting_source_line(s), o, key, v);
                return -EINVAL;
        }
        free(*ret);
        *ret = TAKE_PTR(v);
        return 0;
}

static int get_certificate_name(Diag *d, const config_setting_t *s, const Obj *o, const char *key, char **ret) {
        _cleanup_free_ char *v = NULL;
        int r;

        r = get_string(d, s, o, key, &v);
        if (r < 0)
                return r;
        if (!certificate_name_is_valid(v)) {
                certificate_name_error(d, setting_file(d, s), config_setting_source_line(s), o, v);
                return -EINVAL;
        }
        free(*ret);
        *ret = TAKE_PTR(v);
        return 0;
}

/* The listener's certificate list, from either key; an empty list means
 * the demo certificate (NULL). */
static void parse_listener_certificates(Diag *d, const config_setting_t *s, const Obj *o, const char *key,
                                        char ***ret) {
        _cleanup_strv_free_ char **v = NULL;
        _cleanup_free_ unsigned *lines = NULL;
        const char *file = setting_file(d, s);
        bool bad = false;
        size_t n;

        if (streq(key, "certificate")) {
                v = calloc(2, sizeof(char *));
                if (!v) {
                        d->oom = true;
                        return;
                }
                if (get_certificate_name(d, s, o, key, &v[0]) < 0)
                        return;
        } else {
                if (get_strv(d, s, o, key, &v, &lines) < 0)
                        return;
                n = strv_length(v);
                if (n > LISTENER_CERTIFICATES_MAX) {
                        setting_error(d, s, o, "'certificates' lists %zu names, at most %u (one per key type) can be used",
                                      n, LISTENER_CERTIFICATES_MAX);
                        return;
                }
                for (size_t i = 0; i < n; i++) {
                        if (!certificate_name_is_valid(v[i])) {
                                certificate_name_error(d, file, lines[i], o, v[i]);
                                bad = true;
                                continue;
                        }
                        for (size_t j = 0; j < i; j++)
                                if (streq(v[j], v[i])) {
                                        char esc[64];

                                        diag_add(d, file, lines[i], o, "certificate \"%s\" listed twice",
                                                 log_escape(v[i], strlen(v[i]), esc, sizeof(esc)));
                                        bad = true;
                                        break;
                                }
                }
                if (bad)
                        return;
                if (n == 0) {
                        strv_free(v);
                        v = NULL;
                }
        }

        strv_free(*ret);
        *ret = TAKE_PTR(v);
}

static void unknown_key(Diag *d, const config_setting_t *s, const Obj *o) {
        const char *k = config_setting_name(s);
        char esc[64];

        setting_error(d, s, o, "unknown key '%s'", k ? log_escape(k, strlen(k), esc, sizeof(esc)) : "?");
}

static void missing_key(Diag *d, const config_setting_t *g, const Obj *o, const char *key) {
        setting_error(d, g, o, "missing '%s'", key);
}

/* A list of groups: ( { ... }, { ... } ). Returns the element count, or
 * -EINVAL after recording the problem. */
static int check_group_list(Diag *d, const config_setting_t *s, const char *key) {
        int n;

        if (config_setting_type(s) != CONFIG_TYPE_LIST) {
                type_error(d, s, NULL, key, "a list of groups ( { ... }, ... )");
                return -EINVAL;
        }
        n = config_setting_length(s);
        for (int i = 0; i < n; i++) {
                config_setting_t *e = config_setting_get_elem(s, (unsigned) i);

                if (config_setting_type(e) != CONFIG_TYPE_GROUP) {
                        setting_error(d, e, NULL, "'%s' element %d must be a group { ... }, not %s",
                                      key, i + 1, setting_type_name(e));
                        return -EINVAL;
                }
        }
        return n;
}

static void smtp_limits_default(SmtpLimits *l) {
        *l = (SmtpLimits) {
                .max_line = SMTP_LINE_MAX_DEFAULT,
                .max_recipients = SMTP_RCPT_MAX_DEFAULT,
                .max_message_size = SMTP_MESSAGE_SIZE_DEFAULT,
                .max_errors = SMTP_ERRORS_MAX_DEFAULT,
                .idle_timeout = SMTP_IDLE_TIMEOUT_DEFAULT,
                .data_timeout = SMTP_DATA_TIMEOUT_DEFAULT,
                .max_messages = 0,
        };
}

/* In a policy (inherit = true) 0 means "the listener's value". */
static void parse_limits(Diag *d, const config_setting_t *g, const Obj *o, bool inherit, SmtpLimits *l) {
        uint32_t line_min = inherit ? 0 : SMTP_LINE_MAX_DEFAULT;
        uint64_t timeout_min = inherit ? 0 : TIMEOUT_MIN;
        uint32_t one = inherit ? 0 : 1;
        int n;

        if (config_setting_type(g) != CONFIG_TYPE_GROUP) {
                type_error(d, g, o, "limits", "a group { ... }");
                return;
        }

        n = config_setting_length(g);
        for (int i = 0; i < n; i++) {
                config_setting_t *m = config_setting_get_elem(g, (unsigned) i);
                const char *key = config_setting_name(m);

                if (streq(key, "max_line")) {
                        /* RFC 5321 4.5.3.1.6: a text line of 1000 octets
                         * must always be accepted. */
                        if (get_u32(d, m, o, "limits.max_line", line_min, SMTP_LINE_MAX_CEILING, &l->max_line) >= 0 &&
                            l->max_line > 0 && l->max_line < SMTP_LINE_MAX_DEFAULT)
                                setting_error(d, m, o, "limits.max_line %" PRIu32 " out of range %u..%u",
                                              l->max_line, SMTP_LINE_MAX_DEFAULT, SMTP_LINE_MAX_CEILING);
                } else if (streq(key, "max_recipients"))
                        (void) get_u32(d, m, o, "limits.max_recipients", one, SMTP_RCPT_MAX_CEILING, &l->max_recipients);
                else if (streq(key, "max_message_size"))
                        (void) get_size(d, m, o, "limits.max_message_size", one, SMTP_MESSAGE_SIZE_CEILING, &l->max_message_size);
                else if (streq(key, "max_errors"))
                        (void) get_u32(d, m, o, "limits.max_errors", one, SMTP_ERRORS_MAX_CEILING, &l->max_errors);
                else if (streq(key, "idle_timeout") || streq(key, "data_timeout")) {
                        uint64_t *t = streq(key, "idle_timeout") ? &l->idle_timeout : &l->data_timeout;
                        char label[32], a[DURATION_STRLEN], b[DURATION_STRLEN], c[DURATION_STRLEN];

                        snprintf(label, sizeof(label), "limits.%s", key);
                        if (get_duration(d, m, o, label, timeout_min, TIMEOUT_MAX, t) >= 0 &&
                            *t > 0 && *t < TIMEOUT_MIN)
                                setting_error(d, m, o, "%s %s out of range %s..%s", label,
                                              format_duration(*t, a), format_duration(TIMEOUT_MIN, b),
                                              format_duration(TIMEOUT_MAX, c));
                } else if (streq(key, "max_messages"))
                        (void) get_u32(d, m, o, "limits.max_messages", 0, UINT32_MAX, &l->max_messages);
                else
                        unknown_key(d, m, o);
        }
}

static void parse_listener(Diag *d, const config_setting_t *g, size_t index, ListenerConfig *l) {
        const config_setting_t *cert_key = NULL;
        Obj o;
        int n, v;

        obj_init(&o, "listener", group_name(g, "name"), index);
        *l = (ListenerConfig) {
                .max_connections = LISTENER_CONNECTIONS_MAX_DEFAULT,
                .max_connections_per_ip = LISTENER_CONNECTIONS_PER_IP_DEFAULT,
                .tls = LISTENER_TLS_DEFAULT,
                .ktls = LISTENER_KTLS_DEFAULT,
                .line = config_setting_source_line(g),
        };
        smtp_limits_default(&l->limits);

        n = config_setting_length(g);
        for (int i = 0; i < n; i++) {
                config_setting_t *m = config_setting_get_elem(g, (unsigned) i);
                const char *key = config_setting_name(m);

                if (streq(key, "name"))
                        (void) get_string(d, m, &o, key, &l->name);
                else if (streq(key, "address"))
                        (void) get_string(d, m, &o, key, &l->address);
                else if (streq(key, "port"))
                        (void) get_port(d, m, &o, key, &l->port);
                else if (streq(key, "hostname"))
                        (void) get_string(d, m, &o, key, &l->hostname);
                else if (streq(key, "accepted_domains"))
                        (void) get_strv(d, m, &o, key, &l->accepted_domains, NULL);
                else if (streq(key, "default_policy"))
                        (void) get_string(d, m, &o, key, &l->default_policy_name);
                else if (streq(key, "tls")) {
                        if (get_enum(d, m, &o, key, tls_inbound_table, _TLS_IN_MAX, &v) >= 0)
                                l->tls = (TlsInbound) v;
                } else if (streq(key, "certificate") || streq(key, "certificates")) {
                        /* The single form is the list of one; writing
                         * both is a mistake we cannot resolve. */
                        if (cert_key && !streq(config_setting_name(cert_key), key)) {
                                setting_error(d, m, &o, "'certificate' and 'certificates' exclude each other");
                                continue;
                        }
                        cert_key = m;
                        parse_listener_certificates(d, m, &o, key, &l->certificates);
                } else if (streq(key, "tls_min_version"))
                        (void) get_tls_version(d, m, &o, key, &l->tls_min_version);
                else if (streq(key, "tls_ciphers"))
                        (void) get_string(d, m, &o, key, &l->tls_ciphers);
                else if (streq(key, "tls_ciphersuites"))
                        (void) get_string(d, m, &o, key, &l->tls_ciphersuites);
                else if (streq(key, "tls_groups"))
                        (void) get_string(d, m, &o, key, &l->tls_groups);
                else if (streq(key, "client_ca"))
                        (void) get_path(d, m, &o, key, &l->client_ca);
                else if (streq(key, "ktls"))
                        (void) get_bool(d, m, &o, key, &l->ktls);
                else if (streq(key, "max_connections"))
                        (void) get_u32(d, m, &o, key, 1, CONNECTIONS_CEILING, &l->max_connections);
                else if (streq(key, "max_connections_per_ip"))
                        (void) get_u32(d, m, &o, key, 1, CONNECTIONS_CEILING, &l->max_connections_per_ip);
                else if (streq(key, "limits"))
                        parse_limits(d, m, &o, false, &l->limits);
                else
                        unknown_key(d, m, &o);
        }

        if (!config_setting_get_member(g, "name"))
                missing_key(d, g, &o, "name");
        if (!config_setting_get_member(g, "address"))
                missing_key(d, g, &o, "address");
        if (!config_setting_get_member(g, "port"))
                missing_key(d, g, &o, "port");
        if (!config_setting_get_member(g, "default_policy"))
                missing_key(d, g, &o, "default_policy");
}

static void parse_policy(Diag *d, const config_setting_t *g, size_t index, MailFlowPolicy *p) {
        Obj o;
        int n, v;

        obj_init(&o, "policy", group_name(g, "name"), index);
        *p = (MailFlowPolicy) {
                .action = _POLICY_ACTION_INVALID,
                .tls = -1,
                .line = config_setting_source_line(g),
        };

        n = config_setting_length(g);
        for (int i = 0; i < n; i++) {
                config_setting_t *m = config_setting_get_elem(g, (unsigned) i);
                const char *key = config_setting_name(m);

                if (streq(key, "name"))
                        (void) get_string(d, m, &o, key, &p->name);
                else if (streq(key, "action")) {
                        if (get_enum(d, m, &o, key, policy_action_table, _POLICY_ACTION_MAX, &v) >= 0)
                                p->action = (PolicyAction) v;
                } else if (streq(key, "tls")) {
                        if (get_enum(d, m, &o, key, tls_inbound_table, _TLS_IN_MAX, &v) >= 0)
                                p->tls = v;
                } else if (streq(key, "max_connections_per_ip"))
                        (void) get_u32(d, m, &o, key, 0, CONNECTIONS_CEILING, &p->max_connections_per_ip);
                else if (streq(key, "limits"))
                        parse_limits(d, m, &o, true, &p->limits);
                else
                        unknown_key(d, m, &o);
        }

        if (!config_setting_get_member(g, "name"))
                missing_key(d, g, &o, "name");
        if (!config_setting_get_member(g, "action"))
                missing_key(d, g, &o, "action");
}

static void parse_sender_group(Diag *d, const config_setting_t *g, size_t index, SenderGroup *sg) {
        Obj o;
        int n;

        obj_init(&o, "sender group", group_name(g, "name"), index);
        *sg = (SenderGroup) {
                .line = config_setting_source_line(g),
        };

        n = config_setting_length(g);
        for (int i = 0; i < n; i++) {
                config_setting_t *m = config_setting_get_elem(g, (unsigned) i);
                const char *key = config_setting_name(m);

                if (streq(key, "name"))
                        (void) get_string(d, m, &o, key, &sg->name);
                else if (streq(key, "policy"))
                        (void) get_string(d, m, &o, key, &sg->policy_name);
                else if (streq(key, "sources")) {
                        _cleanup_strv_free_ char **v = NULL;
                        _cleanup_free_ unsigned *lines = NULL;
                        size_t k;

                        if (get_strv(d, m, &o, key, &v, &lines) < 0)
                                continue;
                        k = strv_length(v);
                        free(sg->sources);
                        sg->n_sources = 0;
                        sg->sources = calloc(MAX(k, (size_t) 1), sizeof(Cidr));
                        if (!sg->sources) {
                                d->oom = true;
                                return;
                        }
                        for (size_t j = 0; j < k; j++) {
                                char esc[64];

                                if (cidr_parse(v[j], &sg->sources[sg->n_sources]) < 0) {
                                        diag_add(d, setting_file(d, m), lines[j], &o,
                                                 "invalid source \"%s\" (want an address or CIDR range "
                                                 "with zero host bits)",
                                                 log_escape(v[j], strlen(v[j]), esc, sizeof(esc)));
                                        continue;
                                }
                                sg->n_sources++;
                        }
                } else
                        unknown_key(d, m, &o);
        }

        if (!config_setting_get_member(g, "name"))
                missing_key(d, g, &o, "name");
        if (!config_setting_get_member(g, "policy"))
                missing_key(d, g, &o, "policy");
        if (!config_setting_get_member(g, "sources"))
                missing_key(d, g, &o, "sources");
}

static void parse_route(Diag *d, const config_setting_t *g, size_t index, RouteConfig *rt) {
        bool have_hosts = false, have_maildir = false;
        Obj o;
        int n;

        obj_init(&o, "route", group_name(g, "domain"), index);
        *rt = (RouteConfig) {
                .kind = _ROUTE_KIND_INVALID,
                .line = config_setting_source_line(g),
        };

        n = config_setting_length(g);
        for (int i = 0; i < n; i++) {
                config_setting_t *m = config_setting_get_elem(g, (unsigned) i);
                const char *key = config_setting_name(m);

                if (streq(key, "domain"))
                        (void) get_string(d, m, &o, key, &rt->domain);
                else if (streq(key, "maildir")) {
                        have_maildir = true;
                        (void) get_string(d, m, &o, key, &rt->directory);
                } else if (streq(key, "hosts")) {
                        _cleanup_strv_free_ char **v = NULL;
                        _cleanup_free_ unsigned *lines = NULL;
                        size_t k;

                        have_hosts = true;
                        if (get_strv(d, m, &o, key, &v, &lines) < 0)
                                continue;
                        k = strv_length(v);
                        rt->hosts = calloc(MAX(k, (size_t) 1), sizeof(RouteHost));
                        if (!rt->hosts) {
                                d->oom = true;
                                return;
                        }
                        for (size_t j = 0; j < k; j++) {
                                RouteHost *h = &rt->hosts[rt->n_hosts];
                                char esc[64];

                                if (hostport_parse(v[j], ROUTE_PORT_DEFAULT, &h->host, &h->port) < 0) {
                                        diag_add(d, setting_file(d, m), lines[j], &o,
                                                 "invalid host \"%s\" (want NAME, IP, NAME:PORT or [IPV6]:PORT)",
                                                 log_escape(v[j], strlen(v[j]), esc, sizeof(esc)));
                                        continue;
                                }
                                ascii_strlower(h->host);
                                rt->n_hosts++;
                        }
                } else
                        unknown_key(d, m, &o);
        }

        if (!config_setting_get_member(g, "domain"))
                missing_key(d, g, &o, "domain");
        if (have_hosts && have_maildir)
                setting_error(d, g, &o, "'hosts' and 'maildir' exclude each other");
        else if (have_hosts)
                rt->kind = ROUTE_SMTP;
        else if (have_maildir)
                rt->kind = ROUTE_MAILDIR;
        else
                setting_error(d, g, &o, "needs 'hosts' (relay by SMTP) or 'maildir' (deliver locally)");
}

/* Keys a destination does not set come from tmpl: the built-in values for
 * the "default" entry, the "default" entry's values for all others. */
static void parse_destination(Diag *d, const config_setting_t *g, size_t index,
                              const DestinationConfig *tmpl, DestinationConfig *dst) {
        Obj o;
        int n, v;

        obj_init(&o, "destination", group_name(g, "domain"), index);
        *dst = *tmpl;
        dst->domain = NULL;
        dst->line = config_setting_source_line(g);
        /* Inherited strings are copies: every entry owns its own. */
        dst->ca_file = tmpl->ca_file ? strdup(tmpl->ca_file) : NULL;
        dst->tls_min_version = tmpl->tls_min_version ? strdup(tmpl->tls_min_version) : NULL;
        if ((tmpl->ca_file && !dst->ca_file) || (tmpl->tls_min_version && !dst->tls_min_version))
                d->oom = true;

        n = config_setting_length(g);
        for (int i = 0; i < n; i++) {
                config_setting_t *m = config_setting_get_elem(g, (unsigned) i);
                const char *key = config_setting_name(m);

                if (streq(key, "domain"))
                        (void) get_string(d, m, &o, key, &dst->domain);
                else if (streq(key, "max_connections"))
                        (void) get_u32(d, m, &o, key, 1, CONNECTIONS_CEILING, &dst->max_connections);
                else if (streq(key, "max_messages_per_connection"))
                        (void) get_u32(d, m, &o, key, 1, UINT32_MAX, &dst->max_messages_per_connection);
                else if (streq(key, "max_recipients_per_message"))
                        (void) get_u32(d, m, &o, key, 1, SMTP_RCPT_MAX_CEILING, &dst->max_recipients_per_message);
                else if (streq(key, "tls")) {
                        if (get_enum(d, m, &o, key, tls_outbound_table, _TLS_OUT_MAX, &v) >= 0)
                                dst->tls = (TlsOutbound) v;
                } else if (streq(key, "ktls"))
                        (void) get_bool(d, m, &o, key, &dst->ktls);
                else if (streq(key, "ca_file"))
                        (void) get_path(d, m, &o, key, &dst->ca_file);
                else if (streq(key, "tls_min_version"))
                        (void) get_tls_version(d, m, &o, key, &dst->tls_min_version);
                else
                        unknown_key(d, m, &o);
        }

        if (!config_setting_get_member(g, "domain"))
                missing_key(d, g, &o, "domain");
}

static void destination_default(DestinationConfig *dst) {
        *dst = (DestinationConfig) {
                .max_connections = DESTINATION_CONNECTIONS_DEFAULT,
                .max_messages_per_connection = DESTINATION_MESSAGES_PER_CONNECTION_DEFAULT,
                .max_recipients_per_message = DESTINATION_RECIPIENTS_PER_MESSAGE_DEFAULT,
                .tls = DESTINATION_TLS_DEFAULT,
                .ktls = DESTINATION_KTLS_DEFAULT,
        };
}

static void queue_default(QueueConfig *q) {
        *q = (QueueConfig) {
                .retry_min = QUEUE_RETRY_MIN_DEFAULT,
                .retry_max = QUEUE_RETRY_MAX_DEFAULT,
                .lifetime = QUEUE_LIFETIME_DEFAULT,
                .connect_timeout = QUEUE_CONNECT_TIMEOUT_DEFAULT,
                .command_timeout = QUEUE_COMMAND_TIMEOUT_DEFAULT,
                .data_timeout = QUEUE_DATA_TIMEOUT_DEFAULT,
                .smtp_port = QUEUE_SMTP_PORT_DEFAULT,
                .max_connections = QUEUE_CONNECTIONS_MAX_DEFAULT,
        };
}

static void queue_check(Diag *d, const char *file, unsigned line, const QueueConfig *q) {
        char a[DURATION_STRLEN], b[DURATION_STRLEN];
        Obj o;

        obj_init(&o, "queue", NULL, 0);
        if (q->retry_min == 0 || q->retry_min > q->retry_max)
                diag_add(d, file, line, &o, "retry_min %s must not be 0 or longer than retry_max %s",
                         format_duration(q->retry_min, a), format_duration(q->retry_max, b));
        if (q->retry_max > q->lifetime)
                diag_add(d, file, line, &o, "retry_max %s is longer than lifetime %s",
                         format_duration(q->retry_max, a), format_duration(q->lifetime, b));
        if (q->smtp_port == 0)
                diag_add(d, file, line, &o, "smtp_port 0 out of range 1..65535");
        if (q->max_connections == 0 || q->connect_timeout == 0 || q->command_timeout == 0 || q->data_timeout == 0)
                diag_add(d, file, line, &o, "max_connections and timeouts must not be 0");
}

static void parse_queue(Diag *d, const config_setting_t *g, QueueConfig *q) {
        Obj o;
        int n;

        obj_init(&o, "queue", NULL, 0);
        if (config_setting_type(g) != CONFIG_TYPE_GROUP) {
                type_error(d, g, NULL, "queue", "a group { ... }");
                return;
        }

        n = config_setting_length(g);
        for (int i = 0; i < n; i++) {
                config_setting_t *m = config_setting_get_elem(g, (unsigned) i);
                const char *key = config_setting_name(m);

                if (streq(key, "retry_min"))
                        (void) get_duration(d, m, &o, key, TIMEOUT_MIN, QUEUE_LIFETIME_MAX, &q->retry_min);
                else if (streq(key, "retry_max"))
                        (void) get_duration(d, m, &o, key, TIMEOUT_MIN, QUEUE_LIFETIME_MAX, &q->retry_max);
                else if (streq(key, "lifetime"))
                        (void) get_duration(d, m, &o, key, TIMEOUT_MIN, QUEUE_LIFETIME_MAX, &q->lifetime);
                else if (streq(key, "connect_timeout"))
                        (void) get_duration(d, m, &o, key, TIMEOUT_MIN, TIMEOUT_MAX, &q->connect_timeout);
                else if (streq(key, "command_timeout"))
                        (void) get_duration(d, m, &o, key, TIMEOUT_MIN, TIMEOUT_MAX, &q->command_timeout);
                else if (streq(key, "data_timeout"))
                        (void) get_duration(d, m, &o, key, TIMEOUT_MIN, TIMEOUT_MAX, &q->data_timeout);
                else if (streq(key, "smtp_port"))
                        (void) get_port(d, m, &o, key, &q->smtp_port);
                else if (streq(key, "max_connections"))
                        (void) get_u32(d, m, &o, key, 1, CONNECTIONS_CEILING, &q->max_connections);
                else
                        unknown_key(d, m, &o);
        }

        queue_check(d, setting_file(d, g), config_setting_source_line(g), q);
}

static void parse_tls_client(Diag *d, const config_setting_t *g, TlsClientConfig *t) {
        Obj o;
        int n;

        obj_init(&o, "tls_client", NULL, 0);
        if (config_setting_type(g) != CONFIG_TYPE_GROUP) {
                type_error(d, g, NULL, "tls_client", "a group { ... }");
                return;
        }
        t->line = config_setting_source_line(g);

        n = config_setting_length(g);
        for (int i = 0; i < n; i++) {
                config_setting_t *m = config_setting_get_elem(g, (unsigned) i);
                const char *key = config_setting_name(m);

                if (streq(key, "certificate"))
                        (void) get_certificate_name(d, m, &o, key, &t->certificate);
                else if (streq(key, "ca_file"))
                        (void) get_path(d, m, &o, key, &t->ca_file);
                else if (streq(key, "min_version"))
                        (void) get_tls_version(d, m, &o, key, &t->min_version);
                else if (streq(key, "ciphers"))
                        (void) get_string(d, m, &o, key, &t->ciphers);
                else if (streq(key, "ciphersuites"))
                        (void) get_string(d, m, &o, key, &t->ciphersuites);
                else if (streq(key, "groups"))
                        (void) get_string(d, m, &o, key, &t->groups);
                else
                        unknown_key(d, m, &o);
        }
}

static void parse_tls_alerts(Diag *d, const config_setting_t *g, Config *c) {
        Obj o;
        int n;

        obj_init(&o, "tls_alerts", NULL, 0);
        if (config_setting_type(g) != CONFIG_TYPE_GROUP) {
                type_error(d, g, NULL, "tls_alerts", "a group { ... }");
                return;
        }

        n = config_setting_length(g);
        for (int i = 0; i < n; i++) {
                config_setting_t *m = config_setting_get_elem(g, (unsigned) i);
                const char *key = config_setting_name(m);

                if (streq(key, "enabled"))
                        (void) get_bool(d, m, &o, key, &c->tls_alert_enabled);
                else if (streq(key, "interval"))
                        (void) get_duration(d, m, &o, key, TLS_ALERT_INTERVAL_MIN, TLS_ALERT_INTERVAL_MAX,
                                            &c->tls_alert_interval);
                else
                        unknown_key(d, m, &o);
        }
}

static void parse_https(Diag *d, const config_setting_t *g, size_t index, HttpsConfig *h) {
        Obj o;
        int n;

        obj_init(&o, "https interface", group_name(g, "name"), index);
        *h = (HttpsConfig) {
                .line = config_setting_source_line(g),
        };

        n = config_setting_length(g);
        for (int i = 0; i < n; i++) {
                config_setting_t *m = config_setting_get_elem(g, (unsigned) i);
                const char *key = config_setting_name(m);

                if (streq(key, "name"))
                        (void) get_string(d, m, &o, key, &h->name);
                else if (streq(key, "address"))
                        (void) get_string(d, m, &o, key, &h->address);
                else if (streq(key, "port"))
                        (void) get_port(d, m, &o, key, &h->port);
                else if (streq(key, "hostname"))
                        (void) get_string(d, m, &o, key, &h->hostname);
                else if (streq(key, "certificate"))
                        (void) get_certificate_name(d, m, &o, key, &h->certificate);
                else
                        unknown_key(d, m, &o);
        }

        if (!config_setting_get_member(g, "name"))
                missing_key(d, g, &o, "name");
        if (!config_setting_get_member(g, "address"))
                missing_key(d, g, &o, "address");
        if (!config_setting_get_member(g, "port"))
                missing_key(d, g, &o, "port");
}

static void parse_ldap(Diag *d, const config_setting_t *g, size_t index, LdapConfig *l) {
        Obj o;
        int n;

        obj_init(&o, "ldap profile", group_name(g, "name"), index);
        *l = (LdapConfig) {
                .line = config_setting_source_line(g),
        };

        n = config_setting_length(g);
        for (int i = 0; i < n; i++) {
                config_setting_t *m = config_setting_get_elem(g, (unsigned) i);
                const char *key = config_setting_name(m);

                if (streq(key, "name"))
                        (void) get_string(d, m, &o, key, &l->name);
                else if (streq(key, "uri"))
                        (void) get_string(d, m, &o, key, &l->uri);
                else if (streq(key, "base"))
                        (void) get_string(d, m, &o, key, &l->base);
                else if (streq(key, "bind_dn"))
                        (void) get_string(d, m, &o, key, &l->bind_dn);
                else if (streq(key, "bind_password")) {
                        /* The value is never quoted in a message: it is
                         * the one secret of the file. */
                        if (get_string(d, m, &o, key, &l->bind_password) >= 0 &&
                            strncmp(l->bind_password, SECRET_ENCRYPTED_PREFIX, strlen(SECRET_ENCRYPTED_PREFIX)) == 0)
                                setting_error(d, m, &o, "bind_password is encrypted; import the configuration "
                                              "with its password to use it");
                } else if (streq(key, "ca_file"))
                        (void) get_path(d, m, &o, key, &l->ca_file);
                else if (streq(key, "certificate"))
                        (void) get_certificate_name(d, m, &o, key, &l->certificate);
                else
                        unknown_key(d, m, &o);
        }

        if (!config_setting_get_member(g, "name"))
                missing_key(d, g, &o, "name");
        if (!config_setting_get_member(g, "uri"))
                missing_key(d, g, &o, "uri");
        if (!config_setting_get_member(g, "base"))
                missing_key(d, g, &o, "base");
}

static bool dns_server_is_valid(const char *s) {
        _cleanup_free_ char *host = NULL;
        struct sockaddr_storage ss;
        socklen_t sl;
        uint16_t port;

        if (hostport_parse(s, DNS_PORT_DEFAULT, &host, &port) < 0)
                return false;
        return sockaddr_parse(host, port, &ss, &sl) >= 0;
}

static bool alert_recipient_is_valid(const char *s) {
        return s && mailbox_is_valid(s, strlen(s));
}

/* Checks of top-level values, shared by the parse step (which knows the
 * line) and config_validate() (which does not). */
static bool hostname_check(Diag *d, const char *file, unsigned line, const char *h) {
        char esc[64];

        if (config_domain_is_valid(h))
                return true;
        diag_add(d, file, line, NULL, "hostname \"%s\" is not a valid domain name",
                 h ? log_escape(h, strlen(h), esc, sizeof(esc)) : "");
        return false;
}

static bool state_dir_check(Diag *d, const char *file, unsigned line, const char *p) {
        char esc[64];

        if (path_is_absolute_ok(p))
                return true;
        diag_add(d, file, line, NULL, "state_directory \"%s\" is not an absolute path",
                 p ? log_escape(p, strlen(p), esc, sizeof(esc)) : "");
        return false;
}

/* A group name as groupadd(8) takes it by default: [a-z_][a-z0-9_-]*. */
static bool admin_group_is_valid(const char *s) {
        size_t l;

        if (isempty(s))
                return false;
        l = strlen(s);
        if (l > ADMIN_GROUP_NAME_MAX)
                return false;
        if (!((s[0] >= 'a' && s[0] <= 'z') || s[0] == '_'))
                return false;
        for (size_t i = 1; i < l; i++)
                if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_' || s[i] == '-'))
                        return false;
        return true;
}

static bool admin_group_check(Diag *d, const char *file, unsigned line, const char *g) {
        char esc[64];

        if (!g || admin_group_is_valid(g))
                return true;
        diag_add(d, file, line, NULL, "admin_group \"%s\" is not a valid group name ([a-z_][a-z0-9_-]*, at most %u characters)",
                 log_escape(g, strlen(g), esc, sizeof(esc)), ADMIN_GROUP_NAME_MAX);
        return false;
}

static void strv_check(Diag *d, const char *file, const unsigned *lines, char **v,
                       bool (*valid)(const char *), const char *what) {
        char esc[64];

        for (size_t i = 0; v && v[i]; i++)
                if (!valid(v[i]))
                        diag_add(d, file, lines ? lines[i] : 0, NULL, "%s \"%s\" is not valid", what,
                                 log_escape(v[i], strlen(v[i]), esc, sizeof(esc)));
}

/* A top-level list of groups: an array of T, each element read by fn.
 * Used inside parse_root()'s loop (d, m, key, k in scope); a repeated key
 * is ignored (libconfig already refuses duplicates). */
#define PARSE_GROUP_LIST(array, count, T, fn)                                                   \
        do {                                                                                    \
                if ((k = check_group_list(d, m, key)) < 0 || (array))                           \
                        break;                                                                  \
                (array) = calloc(MAX(k, 1), sizeof(T));                                         \
                if (!(array)) {                                                                 \
                        d->oom = true;                                                          \
                        return;                                                                 \
                }                                                                               \
                (count) = (size_t) k;                                                           \
                for (int j = 0; j < k; j++)                                                     \
                        fn(d, config_setting_get_elem(m, (unsigned) j), (size_t) j + 1, &(array)[j]); \
        } while (0)

static void parse_root(Diag *d, const config_setting_t *root, Config *c) {
        int n;

        n = config_setting_length(root);
        for (int i = 0; i < n; i++) {
                config_setting_t *m = config_setting_get_elem(root, (unsigned) i);
                const char *key = config_setting_name(m);
                int k;

                if (streq(key, "hostname")) {
                        if (get_string(d, m, NULL, key, &c->hostname) >= 0)
                                (void) hostname_check(d, setting_file(d, m), config_setting_source_line(m), c->hostname);
                } else if (streq(key, "state_directory")) {
                        if (get_string(d, m, NULL, key, &c->state_dir) >= 0)
                                (void) state_dir_check(d, setting_file(d, m), config_setting_source_line(m), c->state_dir);
                } else if (streq(key, "workers"))
                        (void) get_u32(d, m, NULL, key, 0, WORKERS_MAX, &c->workers);
                else if (streq(key, "shutdown_timeout"))
                        (void) get_duration(d, m, NULL, key, 0, SHUTDOWN_TIMEOUT_MAX, &c->shutdown_timeout);
                else if (streq(key, "dns_servers") || streq(key, "alert_recipients")) {
                        bool dns = streq(key, "dns_servers");
                        char ***v = dns ? &c->dns_servers : &c->alert_recipients;
                        _cleanup_free_ unsigned *lines = NULL;

                        if (get_strv(d, m, NULL, key, v, &lines) < 0)
                                continue;
                        if (dns)
                                strv_check(d, setting_file(d, m), lines, *v, dns_server_is_valid,
                                           "dns_servers entry (want IP or IP:PORT or [IPV6]:PORT)");
                        else
                                strv_check(d, setting_file(d, m), lines, *v, alert_recipient_is_valid,
                                           "alert_recipients entry (want local@domain)");
                } else if (streq(key, "listeners")) {
                        PARSE_GROUP_LIST(c->listeners, c->n_listeners, ListenerConfig, parse_listener);
                } else if (streq(key, "policies")) {
                        PARSE_GROUP_LIST(c->policies, c->n_policies, MailFlowPolicy, parse_policy);
                } else if (streq(key, "sender_groups")) {
                        PARSE_GROUP_LIST(c->sender_groups, c->n_sender_groups, SenderGroup, parse_sender_group);
                } else if (streq(key, "routes")) {
                        PARSE_GROUP_LIST(c->routes, c->n_routes, RouteConfig, parse_route);
                } else if (streq(key, "https_interfaces")) {
                        PARSE_GROUP_LIST(c->https, c->n_https, HttpsConfig, parse_https);
                } else if (streq(key, "ldap_profiles")) {
                        PARSE_GROUP_LIST(c->ldap, c->n_ldap, LdapConfig, parse_ldap);
                } else if (streq(key, "admin_group")) {
                        if (get_string(d, m, NULL, key, &c->admin_group) >= 0)
                                (void) admin_group_check(d, setting_file(d, m), config_setting_source_line(m), c->admin_group);
                } else if (streq(key, "destinations")) {
                        DestinationConfig tmpl;
                        int def = -1;
                        size_t at = 0;

                        if ((k = check_group_list(d, m, key)) < 0 || c->destinations)
                                continue;
                        c->destinations = calloc(MAX(k, 1), sizeof(DestinationConfig));
                        if (!c->destinations) {
                                d->oom = true;
                                return;
                        }
                        c->n_destinations = (size_t) k;

                        /* The "default" entry is read first: it is the
                         * template for the others and goes to index 0. */
                        destination_default(&tmpl);
                        for (int j = 0; j < k && def < 0; j++) {
                                const char *dom = group_name(config_setting_get_elem(m, (unsigned) j), "domain");

                                if (dom && strcaseeq(dom, DESTINATION_DEFAULT_NAME))
                                        def = j;
                        }
                        if (def >= 0) {
                                parse_destination(d, config_setting_get_elem(m, (unsigned) def), (size_t) def + 1,
                                                  &tmpl, &c->destinations[at++]);
                                tmpl = c->destinations[0];
                                tmpl.domain = NULL;
                        }
                        for (int j = 0; j < k; j++)
                                if (j != def)
                                        parse_destination(d, config_setting_get_elem(m, (unsigned) j), (size_t) j + 1,
                                                          &tmpl, &c->destinations[at++]);
                } else if (streq(key, "queue"))
                        parse_queue(d, m, &c->queue);
                else if (streq(key, "tls_client"))
                        parse_tls_client(d, m, &c->tls_client);
                else if (streq(key, "tls_alerts"))
                        parse_tls_alerts(d, m, c);
                else if (streq(key, "tls_ticket_rotation"))
                        (void) get_duration(d, m, NULL, key, TLS_TICKET_ROTATION_MIN, TLS_TICKET_ROTATION_MAX,
                                            &c->tls_ticket_rotation);
                else
                        unknown_key(d, m, NULL);
        }
}

/* ---- text checks before libconfig sees the text ---- */

static bool is_name_char(char ch) {
        /* strchr() finds the terminating NUL too: test it first. */
        return ch != '\0' && isascii((unsigned char) ch) && (isalnum((unsigned char) ch) || strchr("_*-", ch));
}

/* libconfig 1.5 keeps an integer written without the L suffix in an int and
 * silently wraps larger values (4294967297 reads as 1, "port" would pass).
 * Such literals are refused here, before parsing. Strings and comments are
 * skipped the way the libconfig scanner skips them. Also enforces
 * CONFIG_LINES_MAX; returns false when the text must not be parsed. */
static bool check_text(Diag *d, const char *text) {
        unsigned line = 1;
        const char *p = text;

        while (*p) {
                const char *start;
                bool hex, neg = false, big, overflow = false;
                uint64_t v = 0, lim;
                char ch = *p;

                if (ch == '\n') {
                        if (++line > CONFIG_LINES_MAX) {
                                diag_add(d, NULL, 0, NULL, "more than %u lines", CONFIG_LINES_MAX);
                                return false;
                        }
                        p++;
                        continue;
                }
                if (ch == '"') {
                        unsigned opened = line;

                        for (p++; *p && *p != '"'; p++) {
                                if (*p == '\\' && p[1])
                                        p++;
                                if (*p == '\n')
                                        line++;
                        }
                        /* libconfig 1.5 leaks its string buffer on this
                         * error; catch it first, with a better message. */
                        if (!*p) {
                                diag_add(d, NULL, opened, NULL, "unterminated string");
                                return false;
                        }
                        p++;
                        continue;
                }
                if (ch == '#' || (ch == '/' && p[1] == '/')) {
                        while (*p && *p != '\n')
                                p++;
                        continue;
                }
                if (ch == '/' && p[1] == '*') {
                        for (p += 2; *p && !(p[0] == '*' && p[1] == '/'); p++)
                                if (*p == '\n')
                                        line++;
                        if (*p)
                                p += 2;
                        continue;
                }
                if (!isdigit((unsigned char) ch)) {
                        p++;
                        continue;
                }

                /* A digit inside a name ("smtp2"), a float (".5"), an
                 * exponent ("1e-5") or a number already looked at. */
                if (p > text) {
                        char prev = p[-1];

                        if (prev == '-' || prev == '+') {
                                if (p - 1 > text && is_name_char(p[-2])) {
                                        p++;
                                        continue;
                                }
                        } else if (is_name_char(prev) || prev == '.') {
                                p++;
                                continue;
                        }
                }
                neg = p > text && p[-1] == '-';
                start = neg ? p - 1 : p;

                hex = p[0] == '0' && (p[1] == 'x' || p[1] == 'X');
                if (hex) {
                        for (p += 2; isxdigit((unsigned char) *p); p++) {
                                unsigned dig = isdigit((unsigned char) *p) ? (unsigned) (*p - '0')
                                                                           : (unsigned) (tolower((unsigned char) *p) - 'a' + 10);
                                if (v > (UINT64_MAX - dig) / 16)
                                        overflow = true;
                                else
                                        v = v * 16 + dig;
                        }
                } else {
                        for (; isdigit((unsigned char) *p); p++) {
                                unsigned dig = (unsigned) (*p - '0');

                                if (v > (UINT64_MAX - dig) / 10)
                                        overflow = true;
                                else
                                        v = v * 10 + dig;
                        }
                        if (*p == '.' || *p == 'e' || *p == 'E')
                                continue;       /* a float */
                }

                big = *p == 'L';
                if (big)
                        lim = neg ? (uint64_t) INT64_MAX + 1 : (uint64_t) INT64_MAX;
                else
                        lim = neg ? (uint64_t) INT32_MAX + 1 : (uint64_t) INT32_MAX;

                if (overflow || v > lim) {
                        int len = (int) MIN((size_t) (p - start), (size_t) 40);

                        if (big)
                                diag_add(d, NULL, line, NULL, "integer %.*sL does not fit in 64 bits", len, start);
                        else
                                diag_add(d, NULL, line, NULL,
                                         "integer %.*s does not fit in 32 bits; write it as a string "
                                         "(\"10G\", \"30d\") or with the L suffix", len, start);
                }
                while (is_name_char(*p) && *p != '-')
                        p++;
        }
        return true;
}

/* ---- lifetime ---- */

static void listener_config_done(ListenerConfig *l) {
        free(l->name);
        free(l->address);
        free(l->hostname);
        strv_free(l->accepted_domains);
        free(l->default_policy_name);
        strv_free(l->certificates);
        free(l->tls_min_version);
        free(l->tls_ciphers);
        free(l->tls_ciphersuites);
        free(l->tls_groups);
        free(l->client_ca);
}

static void tls_client_config_done(TlsClientConfig *t) {
        free(t->certificate);
        free(t->ca_file);
        free(t->min_version);
        free(t->ciphers);
        free(t->ciphersuites);
        free(t->groups);
}

static void route_config_done(RouteConfig *r) {
        free(r->domain);
        for (size_t i = 0; i < r->n_hosts; i++)
                free(r->hosts[i].host);
        free(r->hosts);
        free(r->directory);
}

static void ldap_config_done(LdapConfig *l) {
        free(l->name);
        free(l->uri);
        free(l->base);
        free(l->bind_dn);
        /* The secret does not linger in freed memory. */
        if (l->bind_password)
                explicit_bzero(l->bind_password, strlen(l->bind_password));
        free(l->bind_password);
        free(l->ca_file);
        free(l->certificate);
}

static Config *config_free(Config *c) {
        if (!c)
                return NULL;

        for (size_t i = 0; i < c->n_listeners; i++)
                listener_config_done(&c->listeners[i]);
        free(c->listeners);
        for (size_t i = 0; i < c->n_policies; i++)
                free(c->policies[i].name);
        free(c->policies);
        for (size_t i = 0; i < c->n_sender_groups; i++) {
                free(c->sender_groups[i].name);
                free(c->sender_groups[i].policy_name);
                free(c->sender_groups[i].sources);
        }
        free(c->sender_groups);
        for (size_t i = 0; i < c->n_routes; i++)
                route_config_done(&c->routes[i]);
        free(c->routes);
        for (size_t i = 0; i < c->n_destinations; i++) {
                free(c->destinations[i].domain);
                free(c->destinations[i].ca_file);
                free(c->destinations[i].tls_min_version);
        }
        free(c->destinations);
        tls_client_config_done(&c->tls_client);
        for (size_t i = 0; i < c->n_https; i++) {
                free(c->https[i].name);
                free(c->https[i].address);
                free(c->https[i].hostname);
                free(c->https[i].certificate);
        }
        free(c->https);
        for (size_t i = 0; i < c->n_ldap; i++)
                ldap_config_done(&c->ldap[i]);
        free(c->ldap);
        free(c->admin_group);

        free(c->path);
        free(c->hostname);
        free(c->state_dir);
        strv_free(c->dns_servers);
        strv_free(c->alert_recipients);
        free(c);
        return NULL;
}

Config *config_ref(Config *c) {
        if (!c)
                return NULL;
        /* Sessions on worker threads hold references to the Config they
         * started under; the count is the one thing they share. */
        __atomic_add_fetch(&c->n_ref, 1, __ATOMIC_RELAXED);
        return c;
}

Config *config_unref(Config *c) {
        if (!c)
                return NULL;
        if (__atomic_sub_fetch(&c->n_ref, 1, __ATOMIC_ACQ_REL) > 0)
                return NULL;
        return config_free(c);
}

static Config *config_alloc(const char *path) {
        Config *c;

        c = calloc(1, sizeof(Config));
        if (!c)
                return NULL;
        c->n_ref = 1;
        c->workers = WORKERS_DEFAULT;
        c->shutdown_timeout = SHUTDOWN_TIMEOUT_DEFAULT;
        queue_default(&c->queue);
        c->tls_alert_enabled = TLS_ALERT_ENABLED_DEFAULT;
        c->tls_alert_interval = TLS_ALERT_INTERVAL_DEFAULT;
        c->tls_ticket_rotation = TLS_TICKET_KEY_ROTATION_DEFAULT;
        if (path) {
                c->path = strdup(path);
                if (!c->path)
                        return config_free(c);
        }
        return c;
}

/* ---- validation ---- */

static int default_hostname(char **ret) {
        char buf[HOST_NAME_MAX + 1] = {};
        char *h;

        /* A host name that is not a valid domain (underscores, empty) would
         * make every EHLO we send invalid; fall back to "localhost". */
        if (gethostname(buf, sizeof(buf) - 1) < 0 || !domain_is_valid(buf))
                snprintf(buf, sizeof(buf), "%s", LOCALHOST);
        ascii_strlower(buf);
        h = strdup(buf);
        if (!h)
                return -ENOMEM;
        *ret = h;
        return 0;
}

static MailFlowPolicy *policy_find(Config *c, const char *name) {
        for (size_t i = 0; name && i < c->n_policies; i++)
                if (c->policies[i].name && streq(c->policies[i].name, name))
                        return &c->policies[i];
        return NULL;
}

static void name_check(Diag *d, const Obj *o, unsigned line, const char *name) {
        char esc[CONFIG_NAME_MAX + 8];

        if (!name)
                diag_add(d, NULL, line, o, "missing 'name'");
        else if (!name_is_valid(name))
                diag_add(d, NULL, line, o, "invalid name \"%s\" (1..%u characters of A-Z a-z 0-9 . _ -)",
                         log_escape(name, strlen(name), esc, sizeof(esc)), CONFIG_NAME_MAX);
}

static void limits_check(Diag *d, const Obj *o, unsigned line, const SmtpLimits *l) {
        if (l->max_line < SMTP_LINE_MAX_DEFAULT || l->max_line > SMTP_LINE_MAX_CEILING)
                diag_add(d, NULL, line, o, "limits.max_line %" PRIu32 " out of range %u..%u",
                         l->max_line, SMTP_LINE_MAX_DEFAULT, SMTP_LINE_MAX_CEILING);
        if (l->max_recipients == 0 || l->max_message_size == 0 || l->max_errors == 0)
                diag_add(d, NULL, line, o, "limits.max_recipients, max_message_size and max_errors must not be 0");
        if (l->idle_timeout < TIMEOUT_MIN || l->data_timeout < TIMEOUT_MIN)
                diag_add(d, NULL, line, o, "limits.idle_timeout and data_timeout must be at least 1s");
}

/* Cipher, suite and group strings are checked by the TLS module itself, so
 * a string accepted here is one OpenSSL accepts when the contexts are
 * built. When the set fails, each string is tried alone so that the
 * message names the key as written in the file (prefix "tls_" on a
 * listener, none in tls_client). */
static void tls_settings_check(Diag *d, const Obj *o, unsigned line, const char *prefix, const TlsSettings *ts) {
        const struct {
                const char *key, *what, *value;
                TlsSettings one;
        } parts[] = {
                { "ciphers", "OpenSSL cipher list", ts->ciphers,
                  { .min_version = ts->min_version, .ciphers = ts->ciphers } },
                { "ciphersuites", "list of TLS 1.3 cipher suites", ts->ciphersuites,
                  { .min_version = ts->min_version, .ciphersuites = ts->ciphersuites } },
                { "groups", "list of key exchange groups", ts->groups,
                  { .min_version = ts->min_version, .groups = ts->groups } },
        };
        _cleanup_free_ char *err = NULL;
        bool named = false;
        int r;

        r = tls_settings_validate(ts, &err);
        if (r == -ENOMEM)
                d->oom = true;
        if (r >= 0 || r == -ENOMEM)
                return;

        for (size_t i = 0; i < ELEMENTSOF(parts); i++) {
                char esc[128];

                if (!parts[i].value)
                        continue;
                r = tls_settings_validate(&parts[i].one, NULL);
                if (r == -ENOMEM) {
                        d->oom = true;
                        return;
                }
                if (r >= 0)
                        continue;
                diag_add(d, NULL, line, o, "%s%s \"%s\" is not a valid %s", prefix, parts[i].key,
                         log_escape(parts[i].value, strlen(parts[i].value), esc, sizeof(esc)), parts[i].what);
                named = true;
        }
        if (!named) {
                char esc[256];

                diag_add(d, NULL, line, o, "TLS settings refused: %s",
                         err ? log_escape(err, strlen(err), esc, sizeof(esc)) : "invalid");
        }
}

/* The parse step checks each key at its own line; these checks repeat
 * them for configurations built in code, and fill in the default. */
static void listener_tls_check(Diag *d, const Obj *o, ListenerConfig *l) {
        size_t n = strv_length(l->certificates);

        if (l->certificates && n == 0) {
                /* An empty list means the demo certificate, like none. */
                free(l->certificates);
                l->certificates = NULL;
        }
        if (n > LISTENER_CERTIFICATES_MAX)
                diag_add(d, NULL, l->line, o, "'certificates' lists %zu names, at most %u (one per key type) can be used",
                         n, LISTENER_CERTIFICATES_MAX);
        for (size_t i = 0; i < n; i++) {
                if (!certificate_name_is_valid(l->certificates[i]))
                        certificate_name_error(d, NULL, l->line, o, l->certificates[i]);
                for (size_t j = 0; j < i; j++)
                        if (streq(l->certificates[i], l->certificates[j])) {
                                char esc[64];

                                diag_add(d, NULL, l->line, o, "certificate \"%s\" listed twice",
                                         log_escape(l->certificates[i], strlen(l->certificates[i]), esc, sizeof(esc)));
                                break;
                        }
        }

        if (!l->tls_min_version) {
                l->tls_min_version = strdup(TLS_MIN_VERSION_DEFAULT);
                if (!l->tls_min_version) {
                        d->oom = true;
                        return;
                }
        }
        if (!tls_version_is_valid(l->tls_min_version)) {
                tls_version_error(d, NULL, l->line, o, "tls_min_version", l->tls_min_version);
                return;
        }
        /* Verification settings on a listener without TLS are allowed:
         * they take effect when a policy turns STARTTLS on. */
        if (l->client_ca && !path_is_absolute_ok(l->client_ca))
                path_error(d, NULL, l->line, o, "client_ca", l->client_ca);

        tls_settings_check(d, o, l->line, "tls_", &(const TlsSettings) {
                .min_version = l->tls_min_version,
                .ciphers = l->tls_ciphers,
                .ciphersuites = l->tls_ciphersuites,
                .groups = l->tls_groups,
                .ktls = l->ktls,
        });
}

static void tls_client_check(Diag *d, Config *c) {
        TlsClientConfig *t = &c->tls_client;
        bool bad = false;
        Obj o;

        obj_init(&o, "tls_client", NULL, 0);
        if (t->certificate && !certificate_name_is_valid(t->certificate))
                certificate_name_error(d, NULL, t->line, &o, t->certificate);
        if (t->ca_file && !path_is_absolute_ok(t->ca_file))
                path_error(d, NULL, t->line, &o, "ca_file", t->ca_file);
        if (t->min_version && !tls_version_is_valid(t->min_version)) {
                tls_version_error(d, NULL, t->line, &o, "min_version", t->min_version);
                bad = true;
        }
        if (!bad)
                tls_settings_check(d, &o, t->line, "", &(const TlsSettings) {
                        .min_version = t->min_version ?: TLS_MIN_VERSION_DEFAULT,
                        .ciphers = t->ciphers,
                        .ciphersuites = t->ciphersuites,
                        .groups = t->groups,
                });

        if (c->tls_alert_interval < TLS_ALERT_INTERVAL_MIN || c->tls_alert_interval > TLS_ALERT_INTERVAL_MAX) {
                char a[DURATION_STRLEN], b[DURATION_STRLEN], e[DURATION_STRLEN];

                obj_init(&o, "tls_alerts", NULL, 0);
                diag_add(d, NULL, 0, &o, "interval %s out of range %s..%s", format_duration(c->tls_alert_interval, a),
                         format_duration(TLS_ALERT_INTERVAL_MIN, b), format_duration(TLS_ALERT_INTERVAL_MAX, e));
        }
        if (c->tls_ticket_rotation < TLS_TICKET_ROTATION_MIN || c->tls_ticket_rotation > TLS_TICKET_ROTATION_MAX) {
                char a[DURATION_STRLEN], b[DURATION_STRLEN], e[DURATION_STRLEN];

                diag_add(d, NULL, 0, NULL, "tls_ticket_rotation %s out of range %s..%s",
                         format_duration(c->tls_ticket_rotation, a),
                         format_duration(TLS_TICKET_ROTATION_MIN, b), format_duration(TLS_TICKET_ROTATION_MAX, e));
        }
}

static void validate_listeners(Diag *d, Config *c) {
        Obj o;

        if (c->n_listeners == 0)
                diag_add(d, NULL, 0, NULL, "no listeners defined, at least one is required");

        for (size_t i = 0; i < c->n_listeners; i++) {
                ListenerConfig *l = &c->listeners[i];
                struct sockaddr_storage ss;
                socklen_t sl;
                char esc[64];

                obj_init(&o, "listener", l->name, i + 1);
                name_check(d, &o, l->line, l->name);
                for (size_t j = 0; l->name && j < i; j++)
                        if (c->listeners[j].name && streq(c->listeners[j].name, l->name)) {
                                diag_add(d, NULL, l->line, &o, "duplicate name, first defined on line %u",
                                         c->listeners[j].line);
                                break;
                        }

                if (!l->address || sockaddr_parse(l->address, l->port, &ss, &sl) < 0)
                        diag_add(d, NULL, l->line, &o, "address \"%s\" is not a numeric IPv4 or IPv6 address",
                                 l->address ? log_escape(l->address, strlen(l->address), esc, sizeof(esc)) : "");
                else if (l->port == 0)
                        diag_add(d, NULL, l->line, &o, "port 0 out of range 1..65535");
                else {
                        char a[INET6_ADDRSTRLEN];

                        /* Compare the parsed addresses: "::1" and
                         * "0:0::1" are the same socket. */
                        if (sockaddr_to_string((struct sockaddr *) &ss, a, sizeof(a)))
                                for (size_t j = 0; j < i; j++) {
                                        const ListenerConfig *p = &c->listeners[j];
                                        struct sockaddr_storage ps;
                                        socklen_t psl;
                                        char b[INET6_ADDRSTRLEN];

                                        if (!p->address || p->port != l->port ||
                                            sockaddr_parse(p->address, p->port, &ps, &psl) < 0 ||
                                            ps.ss_family != ss.ss_family ||
                                            !sockaddr_to_string((struct sockaddr *) &ps, b, sizeof(b)) ||
                                            !streq(a, b))
                                                continue;
                                        diag_add(d, NULL, l->line, &o, "%s port %u already used by listener '%s' (line %u)",
                                                 a, l->port, p->name ?: "?", p->line);
                                        break;
                                }
                }

                if (!l->hostname) {
                        l->hostname = strdup(c->hostname);
                        if (!l->hostname) {
                                d->oom = true;
                                return;
                        }
                }
                ascii_strlower(l->hostname);
                if (!config_domain_is_valid(l->hostname))
                        diag_add(d, NULL, l->line, &o, "hostname \"%s\" is not a valid domain name",
                                 log_escape(l->hostname, strlen(l->hostname), esc, sizeof(esc)));

                /* Always a vector, possibly empty, so users can iterate. */
                if (!l->accepted_domains) {
                        l->accepted_domains = calloc(1, sizeof(char *));
                        if (!l->accepted_domains) {
                                d->oom = true;
                                return;
                        }
                }
                for (char **a = l->accepted_domains; *a; a++) {
                        ascii_strlower(*a);
                        if (!config_domain_is_valid(*a))
                                diag_add(d, NULL, l->line, &o, "accepted domain \"%s\" is not a valid domain name",
                                         log_escape(*a, strlen(*a), esc, sizeof(esc)));
                }

                l->default_policy = policy_find(c, l->default_policy_name);
                if (!l->default_policy_name)
                        diag_add(d, NULL, l->line, &o, "missing 'default_policy'");
                else if (!l->default_policy)
                        diag_add(d, NULL, l->line, &o, "default_policy '%s' is not a defined policy",
                                 log_escape(l->default_policy_name, strlen(l->default_policy_name), esc, sizeof(esc)));

                if (l->tls < 0 || l->tls >= _TLS_IN_MAX)
                        diag_add(d, NULL, l->line, &o, "invalid tls mode %d", (int) l->tls);
                listener_tls_check(d, &o, l);
                if (l->max_connections == 0 || l->max_connections_per_ip == 0)
                        diag_add(d, NULL, l->line, &o, "max_connections and max_connections_per_ip must not be 0");
                limits_check(d, &o, l->line, &l->limits);
        }
}

static void validate_policies(Diag *d, Config *c) {
        Obj o;

        for (size_t i = 0; i < c->n_policies; i++) {
                MailFlowPolicy *p = &c->policies[i];

                obj_init(&o, "policy", p->name, i + 1);
                name_check(d, &o, p->line, p->name);
                for (size_t j = 0; p->name && j < i; j++)
                        if (c->policies[j].name && streq(c->policies[j].name, p->name)) {
                                diag_add(d, NULL, p->line, &o, "duplicate name, first defined on line %u",
                                         c->policies[j].line);
                                break;
                        }
                if (p->action < 0 || p->action >= _POLICY_ACTION_MAX)
                        diag_add(d, NULL, p->line, &o, "missing or invalid 'action'");
                if (p->tls < -1 || p->tls >= _TLS_IN_MAX)
                        diag_add(d, NULL, p->line, &o, "invalid tls mode %d", p->tls);
        }
}

static void validate_sender_groups(Diag *d, Config *c) {
        Obj o;

        for (size_t i = 0; i < c->n_sender_groups; i++) {
                SenderGroup *sg = &c->sender_groups[i];
                char esc[64];

                obj_init(&o, "sender group", sg->name, i + 1);
                name_check(d, &o, sg->line, sg->name);
                for (size_t j = 0; sg->name && j < i; j++)
                        if (c->sender_groups[j].name && streq(c->sender_groups[j].name, sg->name)) {
                                diag_add(d, NULL, sg->line, &o, "duplicate name, first defined on line %u",
                                         c->sender_groups[j].line);
                                break;
                        }
                sg->policy = policy_find(c, sg->policy_name);
                if (!sg->policy_name)
                        diag_add(d, NULL, sg->line, &o, "missing 'policy'");
                else if (!sg->policy)
                        diag_add(d, NULL, sg->line, &o, "policy '%s' is not a defined policy",
                                 log_escape(sg->policy_name, strlen(sg->policy_name), esc, sizeof(esc)));
                if (sg->n_sources == 0)
                        diag_add(d, NULL, sg->line, &o, "'sources' must list at least one address or range");
        }
}

static void validate_routes(Diag *d, Config *c) {
        Obj o;

        for (size_t i = 0; i < c->n_routes; i++) {
                RouteConfig *rt = &c->routes[i];
                char esc[64];

                ascii_strlower(rt->domain);
                obj_init(&o, "route", rt->domain, i + 1);
                if (!rt->domain)
                        diag_add(d, NULL, rt->line, &o, "missing 'domain'");
                else if (!streq(rt->domain, ROUTE_WILDCARD) && !config_domain_is_valid(rt->domain))
                        diag_add(d, NULL, rt->line, &o, "domain \"%s\" is not a valid domain name or \"*\"",
                                 log_escape(rt->domain, strlen(rt->domain), esc, sizeof(esc)));
                for (size_t j = 0; rt->domain && j < i; j++)
                        if (c->routes[j].domain && streq(c->routes[j].domain, rt->domain)) {
                                diag_add(d, NULL, rt->line, &o, "duplicate domain, first defined on line %u",
                                         c->routes[j].line);
                                break;
                        }

                switch (rt->kind) {
                case ROUTE_SMTP:
                        if (rt->n_hosts == 0)
                                diag_add(d, NULL, rt->line, &o, "'hosts' must list at least one host");
                        for (size_t j = 0; j < rt->n_hosts; j++)
                                if (isempty(rt->hosts[j].host) || rt->hosts[j].port == 0)
                                        diag_add(d, NULL, rt->line, &o, "host %zu has no name or port", j + 1);
                        break;
                case ROUTE_MAILDIR:
                        if (!path_is_absolute_ok(rt->directory))
                                diag_add(d, NULL, rt->line, &o, "maildir \"%s\" is not an absolute path",
                                         rt->directory ? log_escape(rt->directory, strlen(rt->directory), esc, sizeof(esc)) : "");
                        break;
                default:
                        diag_add(d, NULL, rt->line, &o, "needs 'hosts' (relay by SMTP) or 'maildir' (deliver locally)");
                }
        }
}

/* Two numeric addresses with ports name the same socket ("::1" and
 * "0:0::1" do). */
static bool same_socket(const char *a, uint16_t ap, const char *b, uint16_t bp) {
        struct sockaddr_storage sa, sb;
        socklen_t la, lb;
        char ta[INET6_ADDRSTRLEN], tb[INET6_ADDRSTRLEN];

        if (!a || !b || ap != bp)
                return false;
        if (sockaddr_parse(a, ap, &sa, &la) < 0 || sockaddr_parse(b, bp, &sb, &lb) < 0)
                return false;
        if (sa.ss_family != sb.ss_family)
                return false;
        if (!sockaddr_to_string((struct sockaddr *) &sa, ta, sizeof(ta)) ||
            !sockaddr_to_string((struct sockaddr *) &sb, tb, sizeof(tb)))
                return false;
        return streq(ta, tb);
}

static void validate_https(Diag *d, Config *c) {
        Obj o;

        for (size_t i = 0; i < c->n_https; i++) {
                HttpsConfig *h = &c->https[i];
                struct sockaddr_storage ss;
                socklen_t sl;
                char esc[64];

                obj_init(&o, "https interface", h->name, i + 1);
                name_check(d, &o, h->line, h->name);
                for (size_t j = 0; h->name && j < i; j++)
                        if (c->https[j].name && streq(c->https[j].name, h->name)) {
                                diag_add(d, NULL, h->line, &o, "duplicate name, first defined on line %u",
                                         c->https[j].line);
                                break;
                        }

                if (!h->address || sockaddr_parse(h->address, h->port, &ss, &sl) < 0)
                        diag_add(d, NULL, h->line, &o, "address \"%s\" is not a numeric IPv4 or IPv6 address",
                                 h->address ? log_escape(h->address, strlen(h->address), esc, sizeof(esc)) : "");
                else if (h->port == 0)
                        diag_add(d, NULL, h->line, &o, "port 0 out of range 1..65535");
                else {
                        bool found = false;

                        /* The HTTPS server and the SMTP listeners bind in
                         * the same process: one socket cannot be both. */
                        for (size_t j = 0; j < c->n_listeners && !found; j++)
                                if (same_socket(h->address, h->port, c->listeners[j].address, c->listeners[j].port)) {
                                        diag_add(d, NULL, h->line, &o, "%s port %u already used by listener '%s' (line %u)",
                                                 h->address, h->port, c->listeners[j].name ?: "?", c->listeners[j].line);
                                        found = true;
                                }
                        for (size_t j = 0; j < i && !found; j++)
                                if (same_socket(h->address, h->port, c->https[j].address, c->https[j].port)) {
                                        diag_add(d, NULL, h->line, &o, "%s port %u already used by https interface '%s' (line %u)",
                                                 h->address, h->port, c->https[j].name ?: "?", c->https[j].line);
                                        found = true;
                                }
                }

                if (!h->hostname) {
                        h->hostname = strdup(c->hostname);
                        if (!h->hostname) {
                                d->oom = true;
                                return;
                        }
                }
                ascii_strlower(h->hostname);
                if (!config_domain_is_valid(h->hostname))
                        diag_add(d, NULL, h->line, &o, "hostname \"%s\" is not a valid domain name",
                                 log_escape(h->hostname, strlen(h->hostname), esc, sizeof(esc)));
                if (h->certificate && !certificate_name_is_valid(h->certificate))
                        certificate_name_error(d, NULL, h->line, &o, h->certificate);
        }
}

/* "ldap://HOST[:PORT]" or "ldaps://HOST[:PORT]" (RFC 4516 2, schemes
 * compared case-insensitively per RFC 3986 3.1); HOST a name, an IPv4
 * literal or a bracketed IPv6 literal. Nothing may follow. */
static bool ldap_uri_is_valid(const char *s) {
        _cleanup_free_ char *host = NULL;
        const char *rest;
        uint16_t port;

        if (!s)
                return false;
        if (strncasecmp(s, LDAP_SCHEME, strlen(LDAP_SCHEME)) == 0)
                rest = s + strlen(LDAP_SCHEME);
        else if (strncasecmp(s, LDAPS_SCHEME, strlen(LDAPS_SCHEME)) == 0)
                rest = s + strlen(LDAPS_SCHEME);
        else
                return false;
        if (isempty(rest) || strpbrk(rest, "/?#@"))
                return false;
        return hostport_parse(rest, rest == s + strlen(LDAP_SCHEME) ? LDAP_PORT_DEFAULT : LDAPS_PORT_DEFAULT,
                              &host, &port) >= 0;
}

/* A distinguished name (RFC 4514 3): at least one "attribute=value". The
 * directory checks the rest when the profile is used. */
static bool dn_is_valid(const char *s) {
        return !isempty(s) && strchr(s, '=') && s[0] != '=' && strlen(s) < PATH_MAX;
}

static void validate_ldap(Diag *d, Config *c) {
        Obj o;

        for (size_t i = 0; i < c->n_ldap; i++) {
                LdapConfig *l = &c->ldap[i];
                char esc[128];

                obj_init(&o, "ldap profile", l->name, i + 1);
                name_check(d, &o, l->line, l->name);
                for (size_t j = 0; l->name && j < i; j++)
                        if (c->ldap[j].name && streq(c->ldap[j].name, l->name)) {
                                diag_add(d, NULL, l->line, &o, "duplicate name, first defined on line %u",
                                         c->ldap[j].line);
                                break;
                        }
                if (!ldap_uri_is_valid(l->uri))
                        diag_add(d, NULL, l->line, &o, "uri \"%s\" is not ldap://HOST[:PORT] or ldaps://HOST[:PORT]",
                                 l->uri ? log_escape(l->uri, strlen(l->uri), esc, sizeof(esc)) : "");
                if (!dn_is_valid(l->base))
                        diag_add(d, NULL, l->line, &o, "base \"%s\" is not a distinguished name (e.g. \"dc=example,dc=com\")",
                                 l->base ? log_escape(l->base, strlen(l->base), esc, sizeof(esc)) : "");
                if (l->bind_dn && !dn_is_valid(l->bind_dn))
                        diag_add(d, NULL, l->line, &o, "bind_dn \"%s\" is not a distinguished name",
                                 log_escape(l->bind_dn, strlen(l->bind_dn), esc, sizeof(esc)));
                if (l->bind_password && !l->bind_dn)
                        diag_add(d, NULL, l->line, &o, "bind_password needs bind_dn");
                if (l->ca_file && !path_is_absolute_ok(l->ca_file))
                        path_error(d, NULL, l->line, &o, "ca_file", l->ca_file);
                if (l->certificate && !certificate_name_is_valid(l->certificate))
                        certificate_name_error(d, NULL, l->line, &o, l->certificate);
        }
}

static void validate_destinations(Diag *d, Config *c) {
        size_t def = SIZE_MAX;
        Obj o;

        for (size_t i = 0; i < c->n_destinations; i++) {
                DestinationConfig *dst = &c->destinations[i];
                char esc[64];

                ascii_strlower(dst->domain);
                obj_init(&o, "destination", dst->domain, i + 1);
                if (!dst->domain)
                        diag_add(d, NULL, dst->line, &o, "missing 'domain'");
                else if (!streq(dst->domain, DESTINATION_DEFAULT_NAME) && !config_domain_is_valid(dst->domain))
                        diag_add(d, NULL, dst->line, &o, "domain \"%s\" is not a valid domain name or \"default\"",
                                 log_escape(dst->domain, strlen(dst->domain), esc, sizeof(esc)));
                for (size_t j = 0; dst->domain && j < i; j++)
                        if (c->destinations[j].domain && streq(c->destinations[j].domain, dst->domain)) {
                                diag_add(d, NULL, dst->line, &o, "duplicate domain, first defined on line %u",
                                         c->destinations[j].line);
                                break;
                        }
                if (def == SIZE_MAX && dst->domain && streq(dst->domain, DESTINATION_DEFAULT_NAME))
                        def = i;
                if (dst->max_connections == 0 || dst->max_messages_per_connection == 0 ||
                    dst->max_recipients_per_message == 0)
                        diag_add(d, NULL, dst->line, &o, "max_connections, max_messages_per_connection and "
                                 "max_recipients_per_message must not be 0");
                if (dst->tls < 0 || dst->tls >= _TLS_OUT_MAX)
                        diag_add(d, NULL, dst->line, &o, "invalid tls mode %d", (int) dst->tls);
                if (dst->ca_file && !path_is_absolute_ok(dst->ca_file))
                        path_error(d, NULL, dst->line, &o, "ca_file", dst->ca_file);
                if (dst->tls_min_version && !tls_version_is_valid(dst->tls_min_version))
                        tls_version_error(d, NULL, dst->line, &o, "tls_min_version", dst->tls_min_version);
        }

        /* destinations[0] is always "default": lookups fall back to it. */
        if (def == SIZE_MAX) {
                DestinationConfig *n;

                n = realloc(c->destinations, (c->n_destinations + 1) * sizeof(DestinationConfig));
                if (!n) {
                        d->oom = true;
                        return;
                }
                c->destinations = n;
                memmove(n + 1, n, c->n_destinations * sizeof(DestinationConfig));
                destination_default(&n[0]);
                n[0].domain = strdup(DESTINATION_DEFAULT_NAME);
                c->n_destinations++;
                if (!n[0].domain)
                        d->oom = true;
        } else if (def > 0) {
                DestinationConfig t = c->destinations[def];

                memmove(c->destinations + 1, c->destinations, def * sizeof(DestinationConfig));
                c->destinations[0] = t;
        }
}

int config_validate(Config *c, char **ret_error) {
        Diag d = {
                .file = c && c->path ? c->path : BUILTIN_SOURCE,
        };

        if (!c)
                return -EINVAL;

        if (!c->hostname && default_hostname(&c->hostname) < 0)
                return -ENOMEM;
        ascii_strlower(c->hostname);
        (void) hostname_check(&d, NULL, 0, c->hostname);
        if (!c->state_dir) {
                c->state_dir = strdup(TLSGW_STATE_DIR);
                if (!c->state_dir)
                        return -ENOMEM;
        }
        (void) state_dir_check(&d, NULL, 0, c->state_dir);
        if (c->workers > WORKERS_MAX)
                diag_add(&d, NULL, 0, NULL, "workers %u out of range 0..%u", c->workers, WORKERS_MAX);
        strv_check(&d, NULL, NULL, c->dns_servers, dns_server_is_valid, "dns_servers entry");
        strv_check(&d, NULL, NULL, c->alert_recipients, alert_recipient_is_valid, "alert_recipients entry");

        validate_policies(&d, c);
        validate_listeners(&d, c);
        validate_sender_groups(&d, c);
        validate_routes(&d, c);
        validate_destinations(&d, c);
        validate_https(&d, c);
        validate_ldap(&d, c);
        (void) admin_group_check(&d, NULL, 0, c->admin_group);
        tls_client_check(&d, c);
        queue_check(&d, NULL, 0, &c->queue);

        return diag_finish(&d, ret_error);
}

/* ---- loading ---- */

static int config_load_text(const char *text, const char *name, const char *include_dir,
                            Config **ret, char **ret_error) {
        _cleanup_(config_unrefp) Config *c = NULL;
        Diag d = {
                .file = name,
                .include_dir = include_dir,
        };
        config_t lc;
        int r;

        /* Literal problems are reported with whatever the parse finds;
         * they make the load fail either way. */
        if (!check_text(&d, text))
                return diag_finish(&d, ret_error);
        /* Without a directory an @include would resolve against whatever
         * the current directory is; texts from memory must be complete. */
        if (!include_dir && strcasestr(text, "@include")) {
                diag_add(&d, NULL, 0, NULL, "@include is not supported here");
                return diag_finish(&d, ret_error);
        }
        if (d.oom)
                return diag_finish(&d, ret_error);

        c = config_alloc(name);
        if (!c)
                return -ENOMEM;

        config_init(&lc);
        if (include_dir)
                config_set_include_dir(&lc, include_dir);
        if (!config_read_string(&lc, text)) {
                const char *t = config_error_text(&lc);

                diag_add(&d, config_error_file(&lc), (unsigned) MAX(config_error_line(&lc), 0), NULL,
                         "%s", t ?: "syntax error");
                config_destroy(&lc);
                return diag_finish(&d, ret_error);
        }

        parse_root(&d, config_root_setting(&lc), c);
        config_destroy(&lc);
        if (d.n > 0 || d.oom)
                return diag_finish(&d, ret_error);

        r = config_validate(c, ret_error);
        if (r < 0)
                return r;

        *ret = TAKE_PTR(c);
        return 0;
}

int config_load_string(const char *text, const char *name, Config **ret, char **ret_error) {
        if (!text || !ret)
                return -EINVAL;
        return config_load_text(text, name ?: "<string>", NULL, ret, ret_error);
}

static int read_config_file(const char *path, char **ret, char **ret_error) {
        _cleanup_close_ int fd = -EBADF;
        _cleanup_free_ char *buf = NULL;
        struct stat st;
        size_t n = 0;
        int r;

        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0) {
                r = negative_errno();
                goto fail;
        }
        if (fstat(fd, &st) < 0) {
                r = negative_errno();
                goto fail;
        }
        if (S_ISDIR(st.st_mode)) {
                r = -EISDIR;
                goto fail;
        }
        if (!S_ISREG(st.st_mode)) {
                r = -EBADFD;
                goto fail;
        }
        if ((uint64_t) st.st_size > CONFIG_FILE_SIZE_MAX) {
                r = -EFBIG;
                goto fail;
        }

        buf = malloc(CONFIG_FILE_SIZE_MAX + 1);
        if (!buf)
                return -ENOMEM;
        for (;;) {
                ssize_t k = read(fd, buf + n, CONFIG_FILE_SIZE_MAX + 1 - n);

                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        r = negative_errno();
                        goto fail;
                }
                if (k == 0)
                        break;
                n += (size_t) k;
                /* The file grew past the cap while we read it. */
                if (n > CONFIG_FILE_SIZE_MAX) {
                        r = -EFBIG;
                        goto fail;
                }
        }
        buf[n] = '\0';
        /* libconfig reads C strings: a NUL byte would silently end the
         * file early. */
        if (strlen(buf) != n) {
                r = -EBADMSG;
                goto fail;
        }

        *ret = TAKE_PTR(buf);
        return 0;

fail:
        if (ret_error) {
                const char *why = r == -EFBIG ? "file larger than the 1 MiB limit" :
                                  r == -EBADFD ? "not a regular file" :
                                  r == -EBADMSG ? "file contains a NUL byte" : strerror(-r);

                if (asprintf(ret_error, "%s: %s", path, why) < 0)
                        *ret_error = NULL;
        }
        return r;
}

int config_load(const char *path, Config **ret, char **ret_error) {
        _cleanup_free_ char *text = NULL, *dir = NULL;
        char *slash;
        int r;

        if (!path || !ret)
                return -EINVAL;

        r = read_config_file(path, &text, ret_error);
        if (r < 0)
                return r;

        /* Relative @include paths are taken from the file's directory. */
        dir = strdup(path);
        if (!dir)
                return -ENOMEM;
        slash = strrchr(dir, '/');
        if (!slash)
                strcpy(dir, ".");
        else if (slash == dir)
                dir[1] = '\0';
        else
                *slash = '\0';

        return config_load_text(text, path, dir, ret, ret_error);
}

/* ---- built-in defaults ---- */

int config_new_default(const char *state_dir, Config **ret) {
        _cleanup_(config_unrefp) Config *c = NULL;
        ListenerConfig *l;
        SenderGroup *sg;
        RouteConfig *rt;
        int r;

        if (!ret)
                return -EINVAL;

        c = config_alloc(NULL);
        if (!c)
                return -ENOMEM;

        c->state_dir = strdup(state_dir ?: TLSGW_STATE_DIR);
        if (!c->state_dir)
                return -ENOMEM;
        r = default_hostname(&c->hostname);
        if (r < 0)
                return r;

        c->policies = calloc(2, sizeof(MailFlowPolicy));
        if (!c->policies)
                return -ENOMEM;
        c->n_policies = 2;
        c->policies[0] = (MailFlowPolicy) { .name = strdup(BUILTIN_POLICY_ACCEPTED), .action = POLICY_ACCEPT, .tls = -1 };
        c->policies[1] = (MailFlowPolicy) { .name = strdup(BUILTIN_POLICY_RELAYED), .action = POLICY_RELAY, .tls = -1 };
        if (!c->policies[0].name || !c->policies[1].name)
                return -ENOMEM;

        c->listeners = calloc(1, sizeof(ListenerConfig));
        if (!c->listeners)
                return -ENOMEM;
        c->n_listeners = 1;
        l = &c->listeners[0];
        *l = (ListenerConfig) {
                .name = strdup(BUILTIN_LISTENER_NAME),
                .address = strdup(BUILTIN_LISTENER_ADDRESS),
                .port = BUILTIN_LISTENER_PORT,
                .hostname = strdup(c->hostname),
                .max_connections = LISTENER_CONNECTIONS_MAX_DEFAULT,
                .max_connections_per_ip = LISTENER_CONNECTIONS_PER_IP_DEFAULT,
                .accepted_domains = calloc(2, sizeof(char *)),
                .default_policy_name = strdup(BUILTIN_POLICY_ACCEPTED),
                .tls = LISTENER_TLS_DEFAULT,
                .ktls = LISTENER_KTLS_DEFAULT,
        };
        smtp_limits_default(&l->limits);
        if (!l->name || !l->address || !l->hostname || !l->accepted_domains || !l->default_policy_name)
                return -ENOMEM;
        l->accepted_domains[0] = strdup(BUILTIN_ACCEPTED_DOMAIN);
        if (!l->accepted_domains[0])
                return -ENOMEM;

        /* Loopback clients are named in the log by their sender group but
         * get the ACCEPTED policy: out of the box nothing is relayed. */
        c->sender_groups = calloc(1, sizeof(SenderGroup));
        if (!c->sender_groups)
                return -ENOMEM;
        c->n_sender_groups = 1;
        sg = &c->sender_groups[0];
        *sg = (SenderGroup) {
                .name = strdup(BUILTIN_SENDER_GROUP),
                .policy_name = strdup(BUILTIN_POLICY_ACCEPTED),
                .sources = calloc(2, sizeof(Cidr)),
                .n_sources = 2,
        };
        if (!sg->name || !sg->policy_name || !sg->sources)
                return -ENOMEM;
        r = cidr_parse("127.0.0.0/8", &sg->sources[0]);
        if (r < 0)
                return r;
        r = cidr_parse("::1", &sg->sources[1]);
        if (r < 0)
                return r;

        c->routes = calloc(1, sizeof(RouteConfig));
        if (!c->routes)
                return -ENOMEM;
        c->n_routes = 1;
        rt = &c->routes[0];
        rt->kind = ROUTE_MAILDIR;
        rt->domain = strdup(BUILTIN_ACCEPTED_DOMAIN);
        if (!rt->domain)
                return -ENOMEM;
        if (asprintf(&rt->directory, "%s/%s", c->state_dir, BUILTIN_MAILDIR_SUBDIR) < 0) {
                rt->directory = NULL;
                return -ENOMEM;
        }

        /* Adds destination "default", resolves policies. */
        r = config_validate(c, NULL);
        if (r < 0)
                return r;

        *ret = TAKE_PTR(c);
        return 0;
}

/* ---- lookups ---- */

const ListenerConfig *config_find_listener(const Config *c, const char *name) {
        if (!c || !name)
                return NULL;
        for (size_t i = 0; i < c->n_listeners; i++)
                if (c->listeners[i].name && streq(c->listeners[i].name, name))
                        return &c->listeners[i];
        return NULL;
}

const SenderGroup *config_match_sender_group(const Config *c, const struct sockaddr *sa) {
        if (!c || !sa)
                return NULL;
        /* Groups are tried in file order, like an ACL: the first one with a
         * matching source wins. */
        for (size_t i = 0; i < c->n_sender_groups; i++)
                for (size_t j = 0; j < c->sender_groups[i].n_sources; j++)
                        if (cidr_match(&c->sender_groups[i].sources[j], sa))
                                return &c->sender_groups[i];
        return NULL;
}

const DestinationConfig *config_find_destination(const Config *c, const char *domain) {
        if (!c || c->n_destinations == 0)
                return NULL;
        for (size_t i = 1; domain && i < c->n_destinations; i++)
                if (c->destinations[i].domain && strcaseeq(c->destinations[i].domain, domain))
                        return &c->destinations[i];
        return &c->destinations[0];
}

const RouteConfig *config_find_route(const Config *c, const char *domain) {
        const RouteConfig *wildcard = NULL;

        if (!c)
                return NULL;
        for (size_t i = 0; i < c->n_routes; i++) {
                const RouteConfig *rt = &c->routes[i];

                if (!rt->domain)
                        continue;
                if (streq(rt->domain, ROUTE_WILDCARD)) {
                        if (!wildcard)
                                wildcard = rt;
                } else if (domain && strcaseeq(rt->domain, domain))
                        return rt;
        }
        return wildcard;
}

bool listener_accepts_domain(const ListenerConfig *l, const char *domain) {
        if (!l || isempty(domain))
                return false;
        for (char **a = l->accepted_domains; a && *a; a++)
                if (strcaseeq(*a, domain))
                        return true;
        return false;
}

void smtp_limits_effective(const ListenerConfig *l, const MailFlowPolicy *p, SmtpLimits *ret) {
        SmtpLimits e;

        if (!l || !ret)
                return;
        e = l->limits;
        if (p) {
                if (p->limits.max_line > 0)
                        e.max_line = p->limits.max_line;
                if (p->limits.max_recipients > 0)
                        e.max_recipients = p->limits.max_recipients;
                if (p->limits.max_message_size > 0)
                        e.max_message_size = p->limits.max_message_size;
                if (p->limits.max_errors > 0)
                        e.max_errors = p->limits.max_errors;
                if (p->limits.idle_timeout > 0)
                        e.idle_timeout = p->limits.idle_timeout;
                if (p->limits.data_timeout > 0)
                        e.data_timeout = p->limits.data_timeout;
                if (p->limits.max_messages > 0)
                        e.max_messages = p->limits.max_messages;
        }
        *ret = e;
}

/* ---- where certificates are used ---- */

static int places_add(char ***places, size_t *n, const char *kind, const char *name) {
        char **p;

        p = realloc(*places, (*n + 2) * sizeof(char *));
        if (!p)
                return -ENOMEM;
        *places = p;
        if (name ? asprintf(&p[*n], "%s %s", kind, name) < 0 : !(p[*n] = strdup(kind)))
                return -ENOMEM;
        p[++*n] = NULL;
        return 0;
}

int config_certificate_users(const Config *c, const char *certificate, char ***ret_places) {
        _cleanup_strv_free_ char **places = NULL;
        size_t n = 0;
        int r;

        if (!c || !certificate || !ret_places)
                return -EINVAL;

        places = calloc(1, sizeof(char *));
        if (!places)
                return -ENOMEM;

        for (size_t i = 0; i < c->n_listeners; i++) {
                const ListenerConfig *l = &c->listeners[i];
                bool uses = false;

                if (!l->certificates)
                        uses = streq(certificate, CERTSTORE_DEMO_NAME);
                for (char **s = l->certificates; s && *s && !uses; s++)
                        uses = streq(*s, certificate);
                if (uses && (r = places_add(&places, &n, "listener", l->name)) < 0)
                        return r;
        }
        if (c->tls_client.certificate && streq(c->tls_client.certificate, certificate) &&
            (r = places_add(&places, &n, "tls_client", NULL)) < 0)
                return r;
        for (size_t i = 0; i < c->n_https; i++)
                if (streq(c->https[i].certificate ?: CERTSTORE_DEMO_NAME, certificate) &&
                    (r = places_add(&places, &n, "https", c->https[i].name)) < 0)
                        return r;
        for (size_t i = 0; i < c->n_ldap; i++)
                if (c->ldap[i].certificate && streq(c->ldap[i].certificate, certificate) &&
                    (r = places_add(&places, &n, "ldap", c->ldap[i].name)) < 0)
                        return r;

        *ret_places = TAKE_PTR(places);
        return (int) n;
}

/* ---- ConfigDocument ---- */

/* Edits are validated under this name; it is cut from the messages
 * handed back, whose line numbers would point into a rendering the
 * caller never saw. */
#define DOCUMENT_EDIT_NAME "pending"
/* "limits.max_line" is two levels; the file has no deeper groups. */
#define DOCUMENT_KEY_DEPTH_MAX 3U
#define DOCUMENT_KEY_MAX 64U

/* Secrets: AES-256-GCM (NIST SP 800-38D) with a 96-bit random IV (8.2.2)
 * and the full 128-bit tag; the key comes from the password through
 * PBKDF2-HMAC-SHA256 (RFC 8018 5.2) with a random 128-bit salt (RFC 8018
 * 4.1 asks for at least 64 bits) and 200000 iterations (OWASP's 2023
 * guidance for PBKDF2-SHA256 is of that order). */
#define SECRET_SALT_LEN 16
#define SECRET_IV_LEN 12
#define SECRET_TAG_LEN 16
#define SECRET_KEY_LEN 32
#define SECRET_PBKDF2_ITERATIONS 200000
/* A bind password is short; the cap bounds what a crafted value makes us
 * decode. */
#define SECRET_PLAIN_MAX 4096U
#define SECRET_AAD "tlsgw " SECRET_ENCRYPTED_PREFIX

struct ConfigDocument {
        config_t *lc;
        /* The text the document was read from, as long as no edit changed
         * it and no secret was decrypted into it: rendering it keeps the
         * administrator's comments and layout. */
        char *text;
};

typedef struct ConfigKindInfo {
        const char *name;               /* D-Bus / gwctl kind */
        const char *list;               /* list key in the file */
        const char *key;                /* the member that names an object */
        const char *label;              /* in messages, as validation writes it */
        bool nocase;                    /* domains compare case-insensitively */
} ConfigKindInfo;

static const ConfigKindInfo config_kind_info[_CONFIG_KIND_MAX] = {
        [CONFIG_KIND_LISTENER]     = { "listener",    "listeners",        "name",   "listener",        false },
        [CONFIG_KIND_POLICY]       = { "policy",      "policies",         "name",   "policy",          false },
        [CONFIG_KIND_SENDER_GROUP] = { "sendergroup", "sender_groups",    "name",   "sender group",    false },
        [CONFIG_KIND_ROUTE]        = { "route",       "routes",           "domain", "route",           true },
        [CONFIG_KIND_DESTINATION]  = { "destination", "destinations",     "domain", "destination",     true },
        [CONFIG_KIND_HTTPS]        = { "https",       "https_interfaces", "name",   "https interface", false },
        [CONFIG_KIND_LDAP]         = { "ldap",        "ldap_profiles",    "name",   "ldap profile",    false },
};

/* Keys of one object that exclude each other: setting one drops the
 * other, so that switching a route from hosts to a maildir is one edit. */
static const struct {
        ConfigKind kind;
        const char *a, *b;
} config_exclusive_keys[] = {
        { CONFIG_KIND_LISTENER, "certificate", "certificates" },
        { CONFIG_KIND_ROUTE,    "hosts",       "maildir" },
};

const char *config_kind_to_string(ConfigKind k) {
        if ((int) k < 0 || k >= _CONFIG_KIND_MAX)
                return NULL;
        return config_kind_info[k].name;
}

ConfigKind config_kind_from_string(const char *s) {
        if (!s)
                return _CONFIG_KIND_INVALID;
        for (size_t i = 0; i < _CONFIG_KIND_MAX; i++)
                if (streq(config_kind_info[i].name, s))
                        return (ConfigKind) i;
        return _CONFIG_KIND_INVALID;
}

_printf_(3, 4)
static int edit_error(char **ret_error, int r, const char *fmt, ...) {
        va_list ap;

        if (ret_error) {
                va_start(ap, fmt);
                if (vasprintf(ret_error, fmt, ap) < 0)
                        *ret_error = NULL;
                va_end(ap);
        }
        return r;
}

static void secret_wipe(char *s) {
        if (s)
                explicit_bzero(s, strlen(s));
}

static void secret_freep(char **s) {
        secret_wipe(*s);
        free(*s);
}
#define _cleanup_secret_ _cleanup_(secret_freep)

static ConfigDocument *document_alloc(void) {
        ConfigDocument *d;

        d = calloc(1, sizeof(ConfigDocument));
        if (!d)
                return NULL;
        /* Settings point back at their config_t: it lives on the heap
         * so that documents can swap trees. */
        d->lc = malloc(sizeof(config_t));
        if (!d->lc) {
                free(d);
                return NULL;
        }
        config_init(d->lc);
        /* Written like the example file: "limits = {" on one line. */
        config_set_options(d->lc, CONFIG_OPTION_SEMICOLON_SEPARATORS);
        return d;
}

ConfigDocument *config_document_free(ConfigDocument *d) {
        if (!d)
                return NULL;
        config_destroy(d->lc);
        free(d->lc);
        secret_wipe(d->text);
        free(d->text);
        free(d);
        return NULL;
}


/* The same literal checks config_load_string() makes, then libconfig's
 * parse into d->lc. Problems go to *diag. */
static int document_parse(ConfigDocument *d, const char *text, Diag *diag) {
        if (!check_text(diag, text) || diag->n > 0)
                return -EINVAL;
        if (strcasestr(text, "@include")) {
                diag_add(diag, NULL, 0, NULL, "@include is not supported here");
                return -EINVAL;
        }
        if (diag->oom)
                return -ENOMEM;
        if (!config_read_string(d->lc, text)) {
                const char *t = config_error_text(d->lc);

                diag_add(diag, NULL, (unsigned) MAX(config_error_line(d->lc), 0), NULL, "%s", t ?: "syntax error");
                return -EINVAL;
        }
        return 0;
}

static int lc_render(const config_t *lc, char **ret) {
        _cleanup_free_ char *buf = NULL;
        size_t len = 0;
        FILE *f;

        f = open_memstream(&buf, &len);
        if (!f)
                return -ENOMEM;
        config_write(lc, f);
        if (fclose(f) != 0 || !buf)
                return -ENOMEM;
        *ret = TAKE_PTR(buf);
        return 0;
}

/* A tree rendered by libconfig parses again; the checks of
 * document_parse() are for text from outside. */
static int document_from_rendering(const char *text, ConfigDocument **ret) {
        _cleanup_(config_document_freep) ConfigDocument *d = NULL;

        d = document_alloc();
        if (!d)
                return -ENOMEM;
        if (!config_read_string(d->lc, text))
                return -EINVAL;
        *ret = TAKE_PTR(d);
        return 0;
}

/* Calls f on every secret setting of the tree: the bind_password of each
 * LDAP profile. */
static int secrets_foreach(config_t *lc, int (*f)(config_setting_t *parent, config_setting_t *s, void *userdata),
                           void *userdata) {
        config_setting_t *list = config_setting_get_member(config_root_setting(lc), "ldap_profiles");
        int r;

        if (!list || config_setting_type(list) != CONFIG_TYPE_LIST)
                return 0;
        for (int i = 0; i < config_setting_length(list); i++) {
                config_setting_t *g = config_setting_get_elem(list, (unsigned) i);
                config_setting_t *s;

                if (config_setting_type(g) != CONFIG_TYPE_GROUP)
                        continue;
                s = config_setting_get_member(g, "bind_password");
                if (!s || config_setting_type(s) != CONFIG_TYPE_STRING)
                        continue;
                r = f(g, s, userdata);
                if (r < 0)
                        return r;
        }
        return 0;
}

static bool secret_is_encrypted(const char *s) {
        return s && strncmp(s, SECRET_ENCRYPTED_PREFIX, strlen(SECRET_ENCRYPTED_PREFIX)) == 0;
}

static int secret_derive_key(const char *password, const unsigned char *salt, unsigned char *key) {
        if (PKCS5_PBKDF2_HMAC(password, (int) strlen(password), salt, SECRET_SALT_LEN, SECRET_PBKDF2_ITERATIONS,
                              EVP_sha256(), SECRET_KEY_LEN, key) != 1)
                return -EIO;
        return 0;
}

static void cipher_ctx_freep(EVP_CIPHER_CTX **c) {
        EVP_CIPHER_CTX_free(*c);
}

/* "enc:v1:" + base64(salt | iv | ciphertext | tag). */
static int secret_encrypt(const char *password, const char *plain, char **ret) {
        _cleanup_(cipher_ctx_freep) EVP_CIPHER_CTX *ctx = NULL;
        _cleanup_free_ unsigned char *blob = NULL;
        _cleanup_free_ char *out = NULL;
        unsigned char key[SECRET_KEY_LEN];
        size_t plen = strlen(plain), blen;
        int len, fin, r;

        if (plen > SECRET_PLAIN_MAX)
                return -E2BIG;
        blen = SECRET_SALT_LEN + SECRET_IV_LEN + plen + SECRET_TAG_LEN;
        blob = malloc(blen);
        out = malloc(strlen(SECRET_ENCRYPTED_PREFIX) + 4 * ((blen + 2) / 3) + 1);
        if (!blob || !out)
                return -ENOMEM;
        if (RAND_bytes(blob, SECRET_SALT_LEN + SECRET_IV_LEN) != 1)
                return -EIO;
        r = secret_derive_key(password, blob, key);
        if (r < 0)
                return r;

        ctx = EVP_CIPHER_CTX_new();
        if (!ctx ||
            EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, blob + SECRET_SALT_LEN) != 1 ||
            EVP_EncryptUpdate(ctx, NULL, &len, (const unsigned char *) SECRET_AAD, (int) strlen(SECRET_AAD)) != 1 ||
            EVP_EncryptUpdate(ctx, blob + SECRET_SALT_LEN + SECRET_IV_LEN, &len,
                              (const unsigned char *) plain, (int) plen) != 1 ||
            EVP_EncryptFinal_ex(ctx, blob + SECRET_SALT_LEN + SECRET_IV_LEN + len, &fin) != 1 ||
            EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, SECRET_TAG_LEN,
                                blob + SECRET_SALT_LEN + SECRET_IV_LEN + plen) != 1) {
                OPENSSL_cleanse(key, sizeof(key));
                return -EIO;
        }
        OPENSSL_cleanse(key, sizeof(key));

        strcpy(out, SECRET_ENCRYPTED_PREFIX);
        EVP_EncodeBlock((unsigned char *) out + strlen(SECRET_ENCRYPTED_PREFIX), blob, (int) blen);
        *ret = TAKE_PTR(out);
        return 0;
}

/* -EKEYREJECTED for a wrong password and for any damage to the value: the
 * tag cannot tell them apart. */
static int secret_decrypt(const char *password, const char *value, char **ret) {
        _cleanup_(cipher_ctx_freep) EVP_CIPHER_CTX *ctx = NULL;
        _cleanup_free_ unsigned char *blob = NULL;
        _cleanup_secret_ char *plain = NULL;
        unsigned char key[SECRET_KEY_LEN];
        const char *b64 = value + strlen(SECRET_ENCRYPTED_PREFIX);
        size_t b64len = strlen(b64), pad = 0, blen, plen;
        int len, fin, r, ok;

        if (b64len == 0 || b64len % 4 != 0 || b64len > 4 * ((SECRET_PLAIN_MAX + 64) / 3))
                return -EKEYREJECTED;
        for (size_t i = b64len; i > 0 && b64[i - 1] == '='; i--)
                pad++;
        if (pad > 2)
                return -EKEYREJECTED;
        blob = malloc(b64len / 4 * 3 + 1);
        if (!blob)
                return -ENOMEM;
        if (EVP_DecodeBlock(blob, (const unsigned char *) b64, (int) b64len) < 0)
                return -EKEYREJECTED;
        blen = b64len / 4 * 3 - pad;
        if (blen < SECRET_SALT_LEN + SECRET_IV_LEN + SECRET_TAG_LEN)
                return -EKEYREJECTED;
        plen = blen - SECRET_SALT_LEN - SECRET_IV_LEN - SECRET_TAG_LEN;
        plain = calloc(1, plen + 1);
        if (!plain)
                return -ENOMEM;

        r = secret_derive_key(password, blob, key);
        if (r < 0)
                return r;
        ctx = EVP_CIPHER_CTX_new();
        if (!ctx) {
                OPENSSL_cleanse(key, sizeof(key));
                return -ENOMEM;
        }
        ok = EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, blob + SECRET_SALT_LEN) == 1 &&
             EVP_DecryptUpdate(ctx, NULL, &len, (const unsigned char *) SECRET_AAD, (int) strlen(SECRET_AAD)) == 1 &&
             EVP_DecryptUpdate(ctx, (unsigned char *) plain, &len, blob + SECRET_SALT_LEN + SECRET_IV_LEN,
                               (int) plen) == 1 &&
             EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, SECRET_TAG_LEN,
                                 blob + SECRET_SALT_LEN + SECRET_IV_LEN + plen) == 1 &&
             EVP_DecryptFinal_ex(ctx, (unsigned char *) plain + len, &fin) == 1;
        OPENSSL_cleanse(key, sizeof(key));
        /* A NUL inside would cut the secret short without notice. */
        if (!ok || strlen(plain) != plen)
                return -EKEYREJECTED;

        *ret = TAKE_PTR(plain);
        return 0;
}

typedef struct SecretOp {
        const char *password;
        unsigned n;
} SecretOp;

static int secret_decrypt_one(config_setting_t *parent, config_setting_t *s, void *userdata) {
        SecretOp *op = userdata;
        _cleanup_secret_ char *plain = NULL;
        int r;

        if (!secret_is_encrypted(config_setting_get_string(s)))
                return 0;
        if (!op->password)
                return -ENOKEY;
        r = secret_decrypt(op->password, config_setting_get_string(s), &plain);
        if (r < 0)
                return r;
        if (config_setting_set_string(s, plain) != CONFIG_TRUE)
                return -ENOMEM;
        op->n++;
        return 0;
}

static int secret_encrypt_one(config_setting_t *parent, config_setting_t *s, void *userdata) {
        SecretOp *op = userdata;
        _cleanup_free_ char *enc = NULL;
        int r;

        r = secret_encrypt(op->password, config_setting_get_string(s), &enc);
        if (r < 0)
                return r;
        if (config_setting_set_string(s, enc) != CONFIG_TRUE)
                return -ENOMEM;
        op->n++;
        return 0;
}

static int secret_remove_one(config_setting_t *parent, config_setting_t *s, void *userdata) {
        SecretOp *op = userdata;

        if (config_setting_remove(parent, config_setting_name(s)) != CONFIG_TRUE)
                return -EIO;
        op->n++;
        return 0;
}

int config_document_to_text(const ConfigDocument *d, ConfigSecrets secrets, const char *password, char **ret) {
        _cleanup_(config_document_freep) ConfigDocument *copy = NULL;
        _cleanup_secret_ char *text = NULL;
        SecretOp op = { .password = password };
        int r;

        if (!d || !ret)
                return -EINVAL;

        if (secrets == CONFIG_SECRETS_KEEP) {
                if (d->text) {
                        text = strdup(d->text);
                        if (!text)
                                return -ENOMEM;
                } else {
                        r = lc_render(d->lc, &text);
                        if (r < 0)
                                return r;
                }
                *ret = TAKE_PTR(text);
                return 0;
        }
        if (secrets == CONFIG_SECRETS_ENCRYPT && isempty(password))
                return -EINVAL;
        if (secrets != CONFIG_SECRETS_REDACT && secrets != CONFIG_SECRETS_ENCRYPT)
                return -EINVAL;

        /* Always rendered from the tree, never from the original text:
         * a comment may hold an old password. */
        r = lc_render(d->lc, &text);
        if (r < 0)
                return r;
        r = document_from_rendering(text, &copy);
        if (r < 0)
                return r;
        r = secrets_foreach(copy->lc, secrets == CONFIG_SECRETS_REDACT ? secret_remove_one : secret_encrypt_one, &op);
        if (r < 0)
                return r;
        secret_wipe(text);
        text = mfree(text);
        r = lc_render(copy->lc, &text);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(text);
        return 0;
}

int config_document_load(const ConfigDocument *d, const char *name, Config **ret, char **ret_error) {
        _cleanup_secret_ char *text = NULL;
        int r;

        if (!d || !ret)
                return -EINVAL;
        r = config_document_to_text(d, CONFIG_SECRETS_KEEP, NULL, &text);
        if (r < 0)
                return r;
        return config_load_string(text, name ?: DOCUMENT_EDIT_NAME, ret, ret_error);
}

int config_document_new(const char *text, const char *name, const char *password,
                        ConfigDocument **ret, char **ret_error) {
        _cleanup_(config_document_freep) ConfigDocument *d = NULL;
        _cleanup_(config_unrefp) Config *c = NULL;
        SecretOp op = { .password = password };
        Diag diag = {
                .file = name ?: "<string>",
        };
        int r;

        if (!text || !ret)
                return -EINVAL;

        d = document_alloc();
        if (!d)
                return -ENOMEM;
        r = document_parse(d, text, &diag);
        if (r < 0) {
                int q = diag_finish(&diag, ret_error);
                return q < 0 ? q : r;
        }

        r = secrets_foreach(d->lc, secret_decrypt_one, &op);
        if (r == -ENOKEY)
                return edit_error(ret_error, -EKEYREJECTED, "%s: the configuration has encrypted secrets; "
                                  "a password is needed", diag.file);
        if (r == -EKEYREJECTED)
                return edit_error(ret_error, -EKEYREJECTED, "%s: wrong password for the encrypted secrets", diag.file);
        if (r < 0)
                return r;

        /* Unchanged text validates as itself, so the messages carry the
         * file's own line numbers. */
        if (op.n == 0) {
                d->text = strdup(text);
                if (!d->text)
                        return -ENOMEM;
        }
        r = config_document_load(d, diag.file, &c, ret_error);
        if (r < 0)
                return r;

        *ret = TAKE_PTR(d);
        return 0;
}

int config_document_copy(const ConfigDocument *d, ConfigDocument **ret) {
        _cleanup_(config_document_freep) ConfigDocument *copy = NULL;
        _cleanup_secret_ char *text = NULL;
        int r;

        if (!d || !ret)
                return -EINVAL;
        r = lc_render(d->lc, &text);
        if (r < 0)
                return r;
        r = document_from_rendering(text, &copy);
        if (r < 0)
                return r;
        if (d->text) {
                copy->text = strdup(d->text);
                if (!copy->text)
                        return -ENOMEM;
        }
        *ret = TAKE_PTR(copy);
        return 0;
}

/* "pending:12: listener 'x': ..." -> "listener 'x': ...", per line. */
static char *strip_source(const char *err, const char *name) {
        size_t nl = strlen(name);
        char *out, *o;

        out = malloc(strlen(err) + 1);
        if (!out)
                return NULL;
        o = out;
        for (const char *p = err; *p;) {
                const char *eol = strchrnul(p, '\n');

                if (strncmp(p, name, nl) == 0 && p[nl] == ':') {
                        const char *q = p + nl + 1;

                        while (isdigit((unsigned char) *q))
                                q++;
                        if (*q == ':')
                                q++;
                        if (*q == ' ')
                                q++;
                        if (q <= eol)
                                p = q;
                }
                memcpy(o, p, (size_t) (eol - p));
                o += eol - p;
                if (*eol == '\n')
                        *o++ = '\n';
                p = *eol ? eol + 1 : eol;
        }
        *o = '\0';
        return out;
}

/* Validates the edited copy and, only if it loads, makes it the
 * document. */
static int document_edit_finish(ConfigDocument *d, ConfigDocument *copy, char **ret_error) {
        _cleanup_(config_unrefp) Config *c = NULL;
        _cleanup_free_ char *err = NULL;
        config_t *t;
        int r;

        copy->text = mfree(copy->text);
        r = config_document_load(copy, DOCUMENT_EDIT_NAME, &c, &err);
        if (r < 0) {
                if (ret_error && err) {
                        *ret_error = strip_source(err, DOCUMENT_EDIT_NAME);
                        if (!*ret_error)
                                return -ENOMEM;
                }
                return r;
        }

        t = d->lc;
        d->lc = copy->lc;
        copy->lc = t;
        secret_wipe(d->text);
        d->text = mfree(d->text);
        return 0;
}

static bool key_component_is_valid(const char *s, size_t n) {
        if (n == 0 || !((s[0] >= 'a' && s[0] <= 'z') || s[0] == '_'))
                return false;
        for (size_t i = 1; i < n; i++)
                if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
                        return false;
        return true;
}

static int value_setting_type(const ConfigValue *v) {
        switch (v->type) {
        case CONFIG_VALUE_STRING:
                return CONFIG_TYPE_STRING;
        case CONFIG_VALUE_INT:
                /* libconfig 1.5 keeps 32-bit ints unless told otherwise;
                 * it writes 64-bit ones with the L suffix. */
                return v->i >= INT32_MIN && v->i <= INT32_MAX ? CONFIG_TYPE_INT : CONFIG_TYPE_INT64;
        case CONFIG_VALUE_BOOL:
                return CONFIG_TYPE_BOOL;
        case CONFIG_VALUE_STRV:
                return CONFIG_TYPE_ARRAY;
        default:
                return CONFIG_TYPE_NONE;
        }
}

static int setting_store(config_setting_t *s, const ConfigValue *v) {
        int ok = CONFIG_TRUE;

        switch (v->type) {
        case CONFIG_VALUE_STRING:
                ok = config_setting_set_string(s, v->s);
                break;
        case CONFIG_VALUE_INT:
                ok = config_setting_type(s) == CONFIG_TYPE_INT ? config_setting_set_int(s, (int) v->i)
                                                               : config_setting_set_int64(s, v->i);
                break;
        case CONFIG_VALUE_BOOL:
                ok = config_setting_set_bool(s, v->b);
                break;
        case CONFIG_VALUE_STRV:
                while (config_setting_length(s) > 0)
                        if (config_setting_remove_elem(s, 0) != CONFIG_TRUE)
                                return -EIO;
                for (char * const *e = v->strv; e && *e; e++)
                        if (!config_setting_set_string_elem(s, -1, *e))
                                return -ENOMEM;
                break;
        default:
                return -EINVAL;
        }
        return ok == CONFIG_TRUE ? 0 : -ENOMEM;
}

/* Applies one value below group g; label names the object in messages. */
static int group_apply(config_setting_t *g, const ConfigValue *v, const char *label, char **ret_error) {
        char esc[DOCUMENT_KEY_MAX + 8];
        const char *key = v->key;
        config_setting_t *m;
        unsigned depth = 0;
        int type;

        if (isempty(key) || strlen(key) > DOCUMENT_KEY_MAX)
                return edit_error(ret_error, -EINVAL, "%s%sinvalid key \"%s\"", label, *label ? ": " : "",
                                  key ? log_escape(key, strlen(key), esc, sizeof(esc)) : "");
        if (v->type < CONFIG_VALUE_UNSET || v->type >= _CONFIG_VALUE_TYPE_MAX ||
            (v->type == CONFIG_VALUE_STRING && !v->s))
                return edit_error(ret_error, -EINVAL, "%s%s'%s' has no valid value", label, *label ? ": " : "",
                                  log_escape(key, strlen(key), esc, sizeof(esc)));

        for (const char *p = key;;) {
                const char *dot = strchr(p, '.');
                size_t n = dot ? (size_t) (dot - p) : strlen(p);
                char comp[DOCUMENT_KEY_MAX + 1];

                if (!key_component_is_valid(p, n) || ++depth > DOCUMENT_KEY_DEPTH_MAX)
                        return edit_error(ret_error, -EINVAL, "%s%sinvalid key \"%s\"", label, *label ? ": " : "",
                                          log_escape(key, strlen(key), esc, sizeof(esc)));
                memcpy(comp, p, n);
                comp[n] = '\0';
                m = config_setting_get_member(g, comp);

                if (dot) {
                        if (!m) {
                                if (v->type == CONFIG_VALUE_UNSET)
                                        return 0;
                                m = config_setting_add(g, comp, CONFIG_TYPE_GROUP);
                                if (!m)
                                        return -ENOMEM;
                        } else if (config_setting_type(m) != CONFIG_TYPE_GROUP)
                                return edit_error(ret_error, -EINVAL, "%s%s'%s' is not a group", label,
                                                  *label ? ": " : "", comp);
                        g = m;
                        p = dot + 1;
                        continue;
                }

                if (v->type == CONFIG_VALUE_UNSET) {
                        if (m && config_setting_remove(g, comp) != CONFIG_TRUE)
                                return -EIO;
                        return 0;
                }
                type = value_setting_type(v);
                /* Same type: changed in place, keeping its position. */
                if (m && config_setting_type(m) != type) {
                        if (config_setting_remove(g, comp) != CONFIG_TRUE)
                                return -EIO;
                        m = NULL;
                }
                if (!m) {
                        m = config_setting_add(g, comp, type);
                        if (!m)
                                return -ENOMEM;
                }
                return setting_store(m, v);
        }
}

static config_setting_t *kind_list(const ConfigDocument *d, ConfigKind kind) {
        config_setting_t *l = config_setting_get_member(config_root_setting(d->lc), config_kind_info[kind].list);

        return l && config_setting_type(l) == CONFIG_TYPE_LIST ? l : NULL;
}

static int kind_find(const ConfigDocument *d, ConfigKind kind, const char *name, config_setting_t **ret_group) {
        const ConfigKindInfo *k = &config_kind_info[kind];
        config_setting_t *list = kind_list(d, kind);

        for (int i = 0; list && i < config_setting_length(list); i++) {
                config_setting_t *g = config_setting_get_elem(list, (unsigned) i);
                const char *n = group_name(g, k->key);

                if (n && (k->nocase ? strcaseeq(n, name) : streq(n, name))) {
                        if (ret_group)
                                *ret_group = g;
                        return i;
                }
        }
        return -ENOENT;
}

static int object_apply(config_setting_t *g, ConfigKind kind, const char *name, bool adding,
                        const ConfigValue *values, size_t n_values, const char *label, char **ret_error) {
        const ConfigKindInfo *k = &config_kind_info[kind];
        int r;

        /* Both of a pair in one request is a contradiction, not a switch. */
        for (size_t j = 0; j < ELEMENTSOF(config_exclusive_keys); j++) {
                bool a = false, b = false;

                if (config_exclusive_keys[j].kind != kind)
                        continue;
                for (size_t i = 0; i < n_values; i++) {
                        if (!values[i].key || values[i].type == CONFIG_VALUE_UNSET)
                                continue;
                        a = a || streq(values[i].key, config_exclusive_keys[j].a);
                        b = b || streq(values[i].key, config_exclusive_keys[j].b);
                }
                if (a && b)
                        return edit_error(ret_error, -EINVAL, "%s: '%s' and '%s' exclude each other; give one of them",
                                          label, config_exclusive_keys[j].a, config_exclusive_keys[j].b);
        }

        for (size_t i = 0; i < n_values; i++) {
                const ConfigValue *v = &values[i];

                if (v->key && streq(v->key, k->key)) {
                        /* Renaming would silently break references. */
                        if (adding && v->type == CONFIG_VALUE_STRING && v->s &&
                            (k->nocase ? strcaseeq(v->s, name) : streq(v->s, name)))
                                continue;
                        return edit_error(ret_error, -EINVAL, "%s: '%s' cannot be changed; delete the %s and add it again",
                                          label, k->key, k->label);
                }
                r = group_apply(g, v, label, ret_error);
                if (r < 0)
                        return r;
                if (v->type == CONFIG_VALUE_UNSET)
                        continue;
                for (size_t j = 0; j < ELEMENTSOF(config_exclusive_keys); j++) {
                        const char *other = NULL;

                        if (config_exclusive_keys[j].kind != kind)
                                continue;
                        if (streq(v->key, config_exclusive_keys[j].a))
                                other = config_exclusive_keys[j].b;
                        else if (streq(v->key, config_exclusive_keys[j].b))
                                other = config_exclusive_keys[j].a;
                        if (other && config_setting_get_member(g, other) &&
                            config_setting_remove(g, other) != CONFIG_TRUE)
                                return -EIO;
                }
        }
        return 0;
}

static int edit_prepare(const ConfigDocument *d, ConfigKind kind, const char *name, Obj *o) {
        if (!d || (int) kind < 0 || kind >= _CONFIG_KIND_MAX || isempty(name))
                return -EINVAL;
        obj_init(o, config_kind_info[kind].label, name, 0);
        return 0;
}

int config_document_add(ConfigDocument *d, ConfigKind kind, const char *name,
                        const ConfigValue *values, size_t n_values, char **ret_error) {
        _cleanup_(config_document_freep) ConfigDocument *copy = NULL;
        const ConfigKindInfo *k;
        config_setting_t *list, *g, *m;
        Obj o;
        int r;

        r = edit_prepare(d, kind, name, &o);
        if (r < 0)
                return r;
        if (n_values > 0 && !values)
                return -EINVAL;
        k = &config_kind_info[kind];
        if (kind_find(d, kind, name, NULL) >= 0)
                return edit_error(ret_error, -EEXIST, "%s already exists", o.label);

        r = config_document_copy(d, &copy);
        if (r < 0)
                return r;
        list = kind_list(copy, kind);
        if (!list) {
                config_setting_t *root = config_root_setting(copy->lc);

                if (config_setting_get_member(root, k->list))
                        return edit_error(ret_error, -EINVAL, "'%s' is not a list", k->list);
                list = config_setting_add(root, k->list, CONFIG_TYPE_LIST);
                if (!list)
                        return -ENOMEM;
        }
        g = config_setting_add(list, NULL, CONFIG_TYPE_GROUP);
        if (!g)
                return -ENOMEM;
        m = config_setting_add(g, k->key, CONFIG_TYPE_STRING);
        if (!m || config_setting_set_string(m, name) != CONFIG_TRUE)
                return -ENOMEM;
        r = object_apply(g, kind, name, true, values, n_values, o.label, ret_error);
        if (r < 0)
                return r;
        return document_edit_finish(d, copy, ret_error);
}

int config_document_set(ConfigDocument *d, ConfigKind kind, const char *name,
                        const ConfigValue *values, size_t n_values, char **ret_error) {
        _cleanup_(config_document_freep) ConfigDocument *copy = NULL;
        config_setting_t *g = NULL;
        Obj o;
        int r;

        r = edit_prepare(d, kind, name, &o);
        if (r < 0)
                return r;
        if (n_values > 0 && !values)
                return -EINVAL;
        if (kind_find(d, kind, name, NULL) < 0)
                return edit_error(ret_error, -ENOENT, "no %s", o.label);

        r = config_document_copy(d, &copy);
        if (r < 0)
                return r;
        if (kind_find(copy, kind, name, &g) < 0)
                return -EIO;
        r = object_apply(g, kind, name, false, values, n_values, o.label, ret_error);
        if (r < 0)
                return r;
        return document_edit_finish(d, copy, ret_error);
}

/* Who names policy `name`: sender groups and listeners' default_policy. */
static int policy_users(const ConfigDocument *d, const char *name, char **ret) {
        static const struct {
                ConfigKind kind;
                const char *key;
        } refs[] = {
                { CONFIG_KIND_SENDER_GROUP, "policy" },
                { CONFIG_KIND_LISTENER,     "default_policy" },
        };
        _cleanup_free_ char *users = NULL;
        size_t n = 0;

        for (size_t i = 0; i < ELEMENTSOF(refs); i++) {
                config_setting_t *list = kind_list(d, refs[i].kind);

                for (int j = 0; list && j < config_setting_length(list); j++) {
                        config_setting_t *g = config_setting_get_elem(list, (unsigned) j);
                        const char *p = group_name(g, refs[i].key), *who = group_name(g, "name");
                        char esc[CONFIG_NAME_MAX + 8];
                        char *t;

                        if (!p || !streq(p, name))
                                continue;
                        if (asprintf(&t, "%s%s%s '%s'", users ?: "", users ? ", " : "",
                                     config_kind_info[refs[i].kind].label,
                                     who ? log_escape(who, strlen(who), esc, sizeof(esc)) : "?") < 0)
                                return -ENOMEM;
                        free(users);
                        users = t;
                        n++;
                }
        }
        *ret = TAKE_PTR(users);
        return (int) n;
}

int config_document_delete(ConfigDocument *d, ConfigKind kind, const char *name, char **ret_error) {
        _cleanup_(config_document_freep) ConfigDocument *copy = NULL;
        config_setting_t *list;
        Obj o;
        int r, idx;

        r = edit_prepare(d, kind, name, &o);
        if (r < 0)
                return r;
        if (kind_find(d, kind, name, NULL) < 0)
                return edit_error(ret_error, -ENOENT, "no %s", o.label);

        if (kind == CONFIG_KIND_POLICY) {
                _cleanup_free_ char *users = NULL;

                r = policy_users(d, name, &users);
                if (r < 0)
                        return r;
                if (r > 0)
                        return edit_error(ret_error, -EBUSY, "%s is in use by %s", o.label, users);
        }

        r = config_document_copy(d, &copy);
        if (r < 0)
                return r;
        idx = kind_find(copy, kind, name, NULL);
        list = kind_list(copy, kind);
        if (idx < 0 || !list)
                return -EIO;
        if (config_setting_remove_elem(list, (unsigned) idx) != CONFIG_TRUE)
                return -EIO;
        return document_edit_finish(d, copy, ret_error);
}

int config_document_set_global(ConfigDocument *d, const ConfigValue *values, size_t n_values,
                               char **ret_error) {
        _cleanup_(config_document_freep) ConfigDocument *copy = NULL;
        int r;

        if (!d || (n_values > 0 && !values))
                return -EINVAL;

        for (size_t i = 0; i < n_values; i++)
                for (size_t k = 0; k < _CONFIG_KIND_MAX; k++) {
                        const char *list = config_kind_info[k].list;
                        size_t l = strlen(list);

                        if (values[i].key && strncmp(values[i].key, list, l) == 0 &&
                            (values[i].key[l] == '\0' || values[i].key[l] == '.'))
                                return edit_error(ret_error, -EINVAL, "'%s' is changed by adding, setting and "
                                                  "deleting its %s objects", list, config_kind_info[k].name);
                }

        r = config_document_copy(d, &copy);
        if (r < 0)
                return r;
        for (size_t i = 0; i < n_values; i++) {
                r = group_apply(config_root_setting(copy->lc), &values[i], "", ret_error);
                if (r < 0)
                        return r;
        }
        return document_edit_finish(d, copy, ret_error);
}

/* ---- rendering an in-memory Config ---- */

/* A libconfig string literal: quotes, backslashes and control characters
 * escaped the way its scanner reads them back. */
static void write_string(FILE *f, const char *s) {
        fputc('"', f);
        for (; *s; s++) {
                unsigned char ch = (unsigned char) *s;

                if (ch == '"' || ch == '\\')
                        fprintf(f, "\\%c", ch);
                else if (ch == '\n')
                        fputs("\\n", f);
                else if (ch == '\t')
                        fputs("\\t", f);
                else if (ch < 0x20 || ch == 0x7f)
                        fprintf(f, "\\x%02X", ch);
                else
                        fputc(ch, f);
        }
        fputc('"', f);
}

static void write_key_string(FILE *f, const char *indent, const char *key, const char *value) {
        if (!value)
                return;
        fprintf(f, "%s%s = ", indent, key);
        write_string(f, value);
        fputs(";\n", f);
}

static void write_key_strv(FILE *f, const char *indent, const char *key, char * const *v) {
        fprintf(f, "%s%s = [", indent, key);
        for (size_t i = 0; v && v[i]; i++) {
                fputs(i > 0 ? ", " : " ", f);
                write_string(f, v[i]);
        }
        fputs(" ];\n", f);
}

/* Integers beyond 32 bits need the L suffix (see check_text()). */
static void write_key_u64(FILE *f, const char *indent, const char *key, uint64_t v) {
        fprintf(f, "%s%s = %" PRIu64 "%s;\n", indent, key, v, v > INT32_MAX ? "L" : "");
}

static void write_key_duration(FILE *f, const char *indent, const char *key, uint64_t usec) {
        char buf[DURATION_STRLEN];

        write_key_string(f, indent, key, format_duration(usec, buf));
}

static void write_key_bool(FILE *f, const char *indent, const char *key, bool b) {
        fprintf(f, "%s%s = %s;\n", indent, key, b ? "true" : "false");
}

/* Policies write only their overrides (0 = inherit). */
static void write_limits(FILE *f, const char *indent, const SmtpLimits *l, bool overrides_only) {
        char in[16];

        snprintf(in, sizeof(in), "%s  ", indent);
        fprintf(f, "%slimits = {\n", indent);
        if (!overrides_only || l->max_line > 0)
                write_key_u64(f, in, "max_line", l->max_line);
        if (!overrides_only || l->max_recipients > 0)
                write_key_u64(f, in, "max_recipients", l->max_recipients);
        if (!overrides_only || l->max_message_size > 0)
                write_key_u64(f, in, "max_message_size", l->max_message_size);
        if (!overrides_only || l->max_errors > 0)
                write_key_u64(f, in, "max_errors", l->max_errors);
        if (!overrides_only || l->idle_timeout > 0)
                write_key_duration(f, in, "idle_timeout", l->idle_timeout);
        if (!overrides_only || l->data_timeout > 0)
                write_key_duration(f, in, "data_timeout", l->data_timeout);
        if (!overrides_only || l->max_messages > 0)
                write_key_u64(f, in, "max_messages", l->max_messages);
        fprintf(f, "%s};\n", indent);
}

static void write_config(FILE *f, const Config *c) {
        const char *in = "    ";

        write_key_string(f, "", "hostname", c->hostname);
        write_key_string(f, "", "state_directory", c->state_dir);
        write_key_u64(f, "", "workers", c->workers);
        write_key_duration(f, "", "shutdown_timeout", c->shutdown_timeout);
        if (c->dns_servers)
                write_key_strv(f, "", "dns_servers", c->dns_servers);
        if (c->alert_recipients)
                write_key_strv(f, "", "alert_recipients", c->alert_recipients);
        write_key_string(f, "", "admin_group", c->admin_group);

        fputs("listeners = (\n", f);
        for (size_t i = 0; i < c->n_listeners; i++) {
                const ListenerConfig *l = &c->listeners[i];

                fprintf(f, "  {\n");
                write_key_string(f, in, "name", l->name);
                write_key_string(f, in, "address", l->address);
                write_key_u64(f, in, "port", l->port);
                write_key_string(f, in, "hostname", l->hostname);
                write_key_strv(f, in, "accepted_domains", l->accepted_domains);
                write_key_string(f, in, "default_policy", l->default_policy_name);
                write_key_string(f, in, "tls", tls_inbound_to_string(l->tls));
                if (l->certificates)
                        write_key_strv(f, in, "certificates", l->certificates);
                write_key_string(f, in, "tls_min_version", l->tls_min_version);
                write_key_string(f, in, "tls_ciphers", l->tls_ciphers);
                write_key_string(f, in, "tls_ciphersuites", l->tls_ciphersuites);
                write_key_string(f, in, "tls_groups", l->tls_groups);
                write_key_string(f, in, "client_ca", l->client_ca);
                write_key_bool(f, in, "ktls", l->ktls);
                write_key_u64(f, in, "max_connections", l->max_connections);
                write_key_u64(f, in, "max_connections_per_ip", l->max_connections_per_ip);
                write_limits(f, in, &l->limits, false);
                fprintf(f, "  }%s\n", i + 1 < c->n_listeners ? "," : "");
        }
        fputs(");\n", f);

        fputs("policies = (\n", f);
        for (size_t i = 0; i < c->n_policies; i++) {
                const MailFlowPolicy *p = &c->policies[i];
                const SmtpLimits *l = &p->limits;

                fprintf(f, "  {\n");
                write_key_string(f, in, "name", p->name);
                write_key_string(f, in, "action", policy_action_to_string(p->action));
                if (p->tls >= 0)
                        write_key_string(f, in, "tls", tls_inbound_to_string((TlsInbound) p->tls));
                if (p->max_connections_per_ip > 0)
                        write_key_u64(f, in, "max_connections_per_ip", p->max_connections_per_ip);
                if (l->max_line || l->max_recipients || l->max_message_size || l->max_errors ||
                    l->idle_timeout || l->data_timeout || l->max_messages)
                        write_limits(f, in, l, true);
                fprintf(f, "  }%s\n", i + 1 < c->n_policies ? "," : "");
        }
        fputs(");\n", f);

        fputs("sender_groups = (\n", f);
        for (size_t i = 0; i < c->n_sender_groups; i++) {
                const SenderGroup *sg = &c->sender_groups[i];

                fprintf(f, "  {\n");
                write_key_string(f, in, "name", sg->name);
                write_key_string(f, in, "policy", sg->policy_name);
                fprintf(f, "%ssources = [", in);
                for (size_t j = 0; j < sg->n_sources; j++) {
                        char buf[CIDR_STRLEN];

                        fputs(j > 0 ? ", " : " ", f);
                        write_string(f, cidr_to_string(&sg->sources[j], buf, sizeof(buf)) ?: "");
                }
                fputs(" ];\n", f);
                fprintf(f, "  }%s\n", i + 1 < c->n_sender_groups ? "," : "");
        }
        fputs(");\n", f);

        fputs("routes = (\n", f);
        for (size_t i = 0; i < c->n_routes; i++) {
                const RouteConfig *rt = &c->routes[i];

                fprintf(f, "  {\n");
                write_key_string(f, in, "domain", rt->domain);
                if (rt->kind == ROUTE_MAILDIR)
                        write_key_string(f, in, "maildir", rt->directory);
                else {
                        fprintf(f, "%shosts = [", in);
                        for (size_t j = 0; j < rt->n_hosts; j++) {
                                _cleanup_free_ char *hp = NULL;
                                bool v6 = strchr(rt->hosts[j].host, ':');

                                if (asprintf(&hp, "%s%s%s:%u", v6 ? "[" : "", rt->hosts[j].host, v6 ? "]" : "",
                                             rt->hosts[j].port) < 0)
                                        hp = NULL;
                                fputs(j > 0 ? ", " : " ", f);
                                write_string(f, hp ?: "");
                        }
                        fputs(" ];\n", f);
                }
                fprintf(f, "  }%s\n", i + 1 < c->n_routes ? "," : "");
        }
        fputs(");\n", f);

        fputs("destinations = (\n", f);
        for (size_t i = 0; i < c->n_destinations; i++) {
                const DestinationConfig *dst = &c->destinations[i];

                fprintf(f, "  {\n");
                write_key_string(f, in, "domain", dst->domain);
                write_key_u64(f, in, "max_connections", dst->max_connections);
                write_key_u64(f, in, "max_messages_per_connection", dst->max_messages_per_connection);
                write_key_u64(f, in, "max_recipients_per_message", dst->max_recipients_per_message);
                write_key_string(f, in, "tls", tls_outbound_to_string(dst->tls));
                write_key_bool(f, in, "ktls", dst->ktls);
                write_key_string(f, in, "ca_file", dst->ca_file);
                write_key_string(f, in, "tls_min_version", dst->tls_min_version);
                fprintf(f, "  }%s\n", i + 1 < c->n_destinations ? "," : "");
        }
        fputs(");\n", f);

        if (c->n_https > 0) {
                fputs("https_interfaces = (\n", f);
                for (size_t i = 0; i < c->n_https; i++) {
                        const HttpsConfig *h = &c->https[i];

                        fprintf(f, "  {\n");
                        write_key_string(f, in, "name", h->name);
                        write_key_string(f, in, "address", h->address);
                        write_key_u64(f, in, "port", h->port);
                        write_key_string(f, in, "hostname", h->hostname);
                        write_key_string(f, in, "certificate", h->certificate);
                        fprintf(f, "  }%s\n", i + 1 < c->n_https ? "," : "");
                }
                fputs(");\n", f);
        }
        if (c->n_ldap > 0) {
                fputs("ldap_profiles = (\n", f);
                for (size_t i = 0; i < c->n_ldap; i++) {
                        const LdapConfig *l = &c->ldap[i];

                        fprintf(f, "  {\n");
                        write_key_string(f, in, "name", l->name);
                        write_key_string(f, in, "uri", l->uri);
                        write_key_string(f, in, "base", l->base);
                        write_key_string(f, in, "bind_dn", l->bind_dn);
                        write_key_string(f, in, "bind_password", l->bind_password);
                        write_key_string(f, in, "ca_file", l->ca_file);
                        write_key_string(f, in, "certificate", l->certificate);
                        fprintf(f, "  }%s\n", i + 1 < c->n_ldap ? "," : "");
                }
                fputs(");\n", f);
        }

        fputs("queue = {\n", f);
        write_key_duration(f, in, "retry_min", c->queue.retry_min);
        write_key_duration(f, in, "retry_max", c->queue.retry_max);
        write_key_duration(f, in, "lifetime", c->queue.lifetime);
        write_key_duration(f, in, "connect_timeout", c->queue.connect_timeout);
        write_key_duration(f, in, "command_timeout", c->queue.command_timeout);
        write_key_duration(f, in, "data_timeout", c->queue.data_timeout);
        write_key_u64(f, in, "smtp_port", c->queue.smtp_port);
        write_key_u64(f, in, "max_connections", c->queue.max_connections);
        fputs("};\n", f);

        fputs("tls_client = {\n", f);
        write_key_string(f, in, "certificate", c->tls_client.certificate);
        write_key_string(f, in, "ca_file", c->tls_client.ca_file);
        write_key_string(f, in, "min_version", c->tls_client.min_version);
        write_key_string(f, in, "ciphers", c->tls_client.ciphers);
        write_key_string(f, in, "ciphersuites", c->tls_client.ciphersuites);
        write_key_string(f, in, "groups", c->tls_client.groups);
        fputs("};\n", f);

        fputs("tls_alerts = {\n", f);
        write_key_bool(f, in, "enabled", c->tls_alert_enabled);
        write_key_duration(f, in, "interval", c->tls_alert_interval);
        fputs("};\n", f);
        write_key_duration(f, "", "tls_ticket_rotation", c->tls_ticket_rotation);
}

int config_document_from_config(const Config *c, ConfigDocument **ret) {
        _cleanup_(config_document_freep) ConfigDocument *d = NULL;
        _cleanup_(config_unrefp) Config *check = NULL;
        _cleanup_secret_ char *buf = NULL;
        size_t len = 0;
        FILE *f;
        int r;

        if (!c || !ret)
                return -EINVAL;

        f = open_memstream(&buf, &len);
        if (!f)
                return -ENOMEM;
        write_config(f, c);
        if (fclose(f) != 0 || !buf)
                return -ENOMEM;

        d = document_alloc();
        if (!d)
                return -ENOMEM;
        if (!config_read_string(d->lc, buf))
                return -EINVAL;
        d->text = TAKE_PTR(buf);
        /* What we wrote must be a configuration we accept. */
        r = config_document_load(d, BUILTIN_SOURCE, &check, NULL);
        if (r < 0)
                return r;

        *ret = TAKE_PTR(d);
        return 0;
}
