/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * gwctl internals shared by the verb groups: the bus connection, the
 * mapping of D-Bus errors to exit codes and messages, password input and
 * small formatting helpers.
 *
 * gwctl talks to tlsgwd only over D-Bus (docs/dbus-api.md). Verb functions
 * return an exit code (GWCTL_EXIT_*), never a negative errno: every error
 * has already been printed to stderr as "gwctl: <message>" by then.
 */

#include <stdbool.h>
#include <stdint.h>

#include <systemd/sd-bus.h>

#include "util/macro.h"

/* Exit codes, documented in gwctl(8). */
enum {
        GWCTL_EXIT_OK           = 0,    /* done */
        GWCTL_EXIT_FAILED       = 1,    /* the daemon refused or the operation failed */
        GWCTL_EXIT_USAGE        = 2,    /* bad command line; nothing was sent */
        GWCTL_EXIT_UNREACHABLE  = 3,    /* no bus or no tlsgwd on it */
        GWCTL_EXIT_DENIED       = 4,    /* access denied */
};

#define GW_BUS_NAME             "org.tlsgw.Gateway1"
#define GW_BUS_PATH             "/org/tlsgw/Gateway1"
#define GW_IFACE_MANAGER        "org.tlsgw.Gateway1.Manager"
#define GW_IFACE_CERTIFICATE    "org.tlsgw.Gateway1.Certificate"
#define GW_IFACE_CERTIFICATES   "org.tlsgw.Gateway1.Certificates"
#define GW_IFACE_QUEUE          "org.tlsgw.Gateway1.Queue"
#define GW_IFACE_DIAGNOSTICS    "org.tlsgw.Gateway1.Diagnostics"
#define GW_IFACE_GLOBAL         "org.tlsgw.Gateway1.Global"
#define GW_PATH_GLOBAL          GW_BUS_PATH "/global"

/* Options every verb understands (set in gwctl.c). */
extern bool arg_json;
extern bool arg_legend;
extern const char *arg_address;

typedef int (*VerbFunction)(int argc, char *argv[]);

typedef struct Verb {
        const char *group;              /* "cert", or NULL for top-level verbs */
        const char *verb;               /* "list" */
        VerbFunction run;
        const char *usage;              /* one line for --help */
} Verb;

/* The verb tables of the groups (NULL-verb terminated). */
extern const Verb status_verbs[];
extern const Verb cert_verbs[];
extern const Verb object_verbs[];
extern const Verb config_verbs[];
extern const Verb queue_verbs[];
extern const Verb tls_verbs[];

/* Connects once (system bus, or --address); prints and returns
 * GWCTL_EXIT_UNREACHABLE on failure, else 0 with *ret borrowed. */
int gw_bus(sd_bus **ret);

/* Prints "gwctl: <message>" for a failed call and returns the exit code
 * that fits the error (denied, unreachable, failed). */
int gw_call_failed(const sd_bus_error *error, int r, const char *what);

/* Calls a manager-object method; on failure prints and returns the exit
 * code, else 0 with *ret_reply. */
int gw_call(const char *path, const char *interface, const char *member,
            sd_bus_message **ret_reply, const char *types, ...);
int gw_call_message(sd_bus_message *m, sd_bus_message **ret_reply, const char *what);
int gw_new_method(const char *path, const char *interface, const char *member, sd_bus_message **ret);

/* "/org/tlsgw/Gateway1/<kind>/<escaped name>" */
int gw_object_path(const char *kind, const char *name, char **ret);

/* Usage error: prints "gwctl: <text>" and returns GWCTL_EXIT_USAGE. */
int gw_usage(const char *fmt, ...) _printf_(1, 2);
/* Failure outside the daemon (files): prints and returns GWCTL_EXIT_FAILED. */
int gw_fail(const char *fmt, ...) _printf_(1, 2);

/* Password from --password-file (first line), else from the terminal
 * without echo (asked twice when confirm), else an error: a password is
 * never read from a pipe by accident. Returns an exit code. */
int gw_read_password(const char *file, const char *prompt, bool confirm, char **ret);

/* Whole file into memory (at most GW_FILE_MAX); returns an exit code. */
#define GW_FILE_MAX (16U * 1024U * 1024U)   /* PEM bundles, PKCS#12 and config files are far smaller */
int gw_read_file(const char *path, char **ret, size_t *ret_len);
/* Writes data atomically to path with the mode given ("-": stdout). */
int gw_write_file(const char *path, const void *data, size_t len, mode_t mode);

/* "2024-05-01 12:00:00 UTC" for usec since the epoch, "-" for 0. */
const char *gw_format_time(uint64_t usec, char *buf, size_t len);
#define GW_TIME_MAX 64

/* Appends s to a NULL-terminated list; splits on commas when split. */
int gw_strv_add(char ***l, const char *s, bool split);
/* Joins with sep; "" for an empty list. */
char *gw_strv_join(char * const *l, const char *sep);

/* Reads a variant at the current position of m into text (any type,
 * containers recursively); used for generic property display. */
int gw_variant_to_string(sd_bus_message *m, char **ret);

/* Adds every entry of an a{sv} at the current position of m to a record:
 * string lists as lists, booleans, numbers; properties that are times
 * (NotBefore, NotAfter, ...) or durations are shown readably in tables and
 * stay numbers (usec) in JSON. Returns 0 or a negative errno. */
typedef struct Output Output;
int gw_record_add_dict(Output *o, sd_bus_message *m);

/* Formats a duration in usec as "5min", "1h 30min", "250ms". */
const char *gw_format_duration(uint64_t usec, char *buf, size_t len);

/* Prepares getopt_long for a verb's own argument vector. */
void gw_reset_getopt(void);
/* Parses a verb whose only option is --password-file FILE; operands start
 * at optind afterwards. GWCTL_EXIT_OK or GWCTL_EXIT_USAGE. */
int gw_parse_password_file(int argc, char *argv[], const char **ret_file);

/* Unexpected reply contents: prints and returns GWCTL_EXIT_FAILED. */
int gw_bad_reply(int r);
