/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * gwctl: the administration tool of tlsgwd. Parses the global options,
 * finds the verb in the groups' tables and runs it; holds the helpers the
 * verbs share (bus connection, error mapping, passwords, files, formats).
 *
 * It does not interpret the configuration: every check of meaning is the
 * daemon's, and its message is printed as it is ("gwctl: <message>").
 * Command-line mistakes are found before anything is sent (exit 2).
 * Helpers return an exit code (GWCTL_EXIT_*) or, where noted, a negative
 * errno.
 */

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "build-config.h"
#include "gwctl.h"
#include "output.h"

/* A password line longer than this is surely not a password. */
#define GW_PASSWORD_MAX 1024

bool arg_json;
bool arg_legend = true;
const char *arg_address;

static sd_bus *bus;

static const Verb *const verb_tables[] = {
        status_verbs, config_verbs, cert_verbs, object_verbs, queue_verbs, tls_verbs,
};

static void help(void) {
        printf("Usage: gwctl [OPTIONS] COMMAND ...\n\n"
               "Administer the tlsgw SMTP gateway over D-Bus. Configuration changes are\n"
               "staged and take effect with 'gwctl commit'.\n\n"
               "Options:\n"
               "     --json              Print listings as JSON\n"
               "     --no-legend         Leave out table headers\n"
               "     --bus-address=ADDR  D-Bus address instead of the system bus\n"
               "  -h --help              Show this help\n"
               "     --version           Show the version\n\n"
               "Commands:\n");
        for (size_t t = 0; t < ELEMENTSOF(verb_tables); t++)
                for (const Verb *v = verb_tables[t]; v->verb; v++) {
                        _cleanup_free_ char *cmd = NULL;
                        const char *tab = strchr(v->usage, '\t');

                        if (asprintf(&cmd, "%s%s%s", v->group ?: "", v->group ? " " : "", v->verb) < 0)
                                return;
                        int n = tab ? (int) (tab - v->usage) : (int) strlen(v->usage);

                        printf("  %s%s%.*s\n", cmd, n > 0 ? " " : "", n, v->usage);
                        if (tab)
                                printf("        %s\n", tab + 1);
                }
        printf("\nSee gwctl(8) for the flags of each command.\n");
}

int gw_usage(const char *fmt, ...) {
        va_list ap;

        fputs("gwctl: ", stderr);
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputc('\n', stderr);
        return GWCTL_EXIT_USAGE;
}

int gw_fail(const char *fmt, ...) {
        va_list ap;

        fputs("gwctl: ", stderr);
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputc('\n', stderr);
        return GWCTL_EXIT_FAILED;
}

int gw_bad_reply(int r) {
        return gw_fail("unexpected reply from tlsgwd: %s", strerror(-r));
}

void gw_reset_getopt(void) {
        /* 0 makes glibc re-initialize its scan state for a new vector. */
        optind = 0;
        opterr = 1;
}

int gw_parse_password_file(int argc, char *argv[], const char **ret_file) {
        enum { ARG_PASSWORD_FILE = 0x100 };
        static const struct option options[] = {
                { "password-file", required_argument, NULL, ARG_PASSWORD_FILE },
                {}
        };
        int c;

        *ret_file = NULL;
        gw_reset_getopt();
        while ((c = getopt_long(argc, argv, "", options, NULL)) >= 0)
                switch (c) {
                case ARG_PASSWORD_FILE:
                        *ret_file = optarg;
                        break;
                default:
                        return GWCTL_EXIT_USAGE;
                }
        return GWCTL_EXIT_OK;
}

int gw_bus(sd_bus **ret) {
        int r;

        if (bus) {
                *ret = bus;
                return 0;
        }
        if (arg_address) {
                r = sd_bus_new(&bus);
                if (r >= 0)
                        r = sd_bus_set_address(bus, arg_address);
                if (r >= 0)
                        r = sd_bus_set_bus_client(bus, true);
                if (r >= 0)
                        r = sd_bus_start(bus);
        } else
                r = sd_bus_open_system(&bus);
        if (r < 0) {
                const char *addr = arg_address ?: getenv("DBUS_SYSTEM_BUS_ADDRESS");

                bus = sd_bus_flush_close_unref(bus);
                fprintf(stderr, "gwctl: cannot connect to %s%s%s%s: %s\n",
                        arg_address ? "D-Bus" : "the system bus",
                        addr ? " at '" : "", addr ?: "", addr ? "'" : "", strerror(-r));
                return GWCTL_EXIT_UNREACHABLE;
        }
        *ret = bus;
        return 0;
}

int gw_call_failed(const sd_bus_error *error, int r, const char *what) {
        const char *msg = error && sd_bus_error_is_set(error) && !isempty(error->message) ? error->message : NULL;

        /* Local failures (the connection dropped, a timeout) come as
         * "System.Error.E*" names: judge those by their errno. */
        if (error && sd_bus_error_is_set(error) && strncmp(error->name, "System.Error.", 13) == 0) {
                r = -sd_bus_error_get_errno(error);
                msg = NULL;
        } else if (error && sd_bus_error_is_set(error)) {
                if (sd_bus_error_has_names(error, SD_BUS_ERROR_SERVICE_UNKNOWN, SD_BUS_ERROR_NAME_HAS_NO_OWNER,
                                           "org.freedesktop.DBus.Error.Spawn.ChildExited",
                                           "org.freedesktop.DBus.Error.Spawn.ExecFailed")) {
                        fprintf(stderr, "gwctl: tlsgwd is not running (no owner of %s on the bus)\n", GW_BUS_NAME);
                        return GWCTL_EXIT_UNREACHABLE;
                }
                if (sd_bus_error_has_names(error, SD_BUS_ERROR_NO_REPLY, SD_BUS_ERROR_TIMEOUT,
                                           SD_BUS_ERROR_DISCONNECTED)) {
                        fprintf(stderr, "gwctl: tlsgwd did not answer%s%s\n", msg ? ": " : "", msg ?: "");
                        return GWCTL_EXIT_UNREACHABLE;
                }
                if (sd_bus_error_has_names(error, SD_BUS_ERROR_ACCESS_DENIED, SD_BUS_ERROR_AUTH_FAILED,
                                           "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired")) {
                        fprintf(stderr, "gwctl: %s\n", msg ?: "access denied (root or the admin group is needed)");
                        return GWCTL_EXIT_DENIED;
                }
                if (what && sd_bus_error_has_names(error, SD_BUS_ERROR_UNKNOWN_OBJECT,
                                                   SD_BUS_ERROR_UNKNOWN_INTERFACE)) {
                        fprintf(stderr, "gwctl: %s does not exist\n", what);
                        return GWCTL_EXIT_FAILED;
                }
                fprintf(stderr, "gwctl: %s\n", msg ?: error->name);
                return GWCTL_EXIT_FAILED;
        }

        switch (r) {
        case -EACCES:
        case -EPERM:
                fprintf(stderr, "gwctl: access denied (root or the admin group is needed)\n");
                return GWCTL_EXIT_DENIED;
        case -ECONNREFUSED:
        case -ECONNRESET:
        case -ENOTCONN:
        case -ENOENT:
        case -ETIMEDOUT:
        case -ESHUTDOWN:
        case -EHOSTUNREACH:
                fprintf(stderr, "gwctl: cannot reach tlsgwd: %s\n", strerror(-r));
                return GWCTL_EXIT_UNREACHABLE;
        default:
                fprintf(stderr, "gwctl: %s%s%s\n", what ?: "", what ? ": " : "", strerror(-r));
                return GWCTL_EXIT_FAILED;
        }
}

int gw_new_method(const char *path, const char *interface, const char *member, sd_bus_message **ret) {
        sd_bus *b;
        int r;

        r = gw_bus(&b);
        if (r != 0)
                return r;
        r = sd_bus_message_new_method_call(b, ret, GW_BUS_NAME, path, interface, member);
        if (r < 0)
                return gw_fail("cannot build the request: %s", strerror(-r));
        return 0;
}

int gw_call_message(sd_bus_message *m, sd_bus_message **ret_reply, const char *what) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        sd_bus *b;
        int r;

        r = gw_bus(&b);
        if (r != 0)
                return r;
        r = sd_bus_call(b, m, 0, &error, ret_reply);
        if (r < 0)
                return gw_call_failed(&error, r, what);
        return 0;
}

int gw_call(const char *path, const char *interface, const char *member,
            sd_bus_message **ret_reply, const char *types, ...) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        va_list ap;
        int r;

        r = gw_new_method(path, interface, member, &m);
        if (r != 0)
                return r;
        if (!isempty(types)) {
                va_start(ap, types);
                r = sd_bus_message_appendv(m, types, ap);
                va_end(ap);
                if (r < 0)
                        return gw_fail("cannot build the request: %s", strerror(-r));
        }
        return gw_call_message(m, ret_reply, NULL);
}

int gw_object_path(const char *kind, const char *name, char **ret) {
        _cleanup_free_ char *prefix = NULL;

        if (asprintf(&prefix, "%s/%s", GW_BUS_PATH, kind) < 0)
                return -ENOMEM;
        return sd_bus_path_encode(prefix, name, ret);
}

static int read_password_line(FILE *f, char **ret) {
        _cleanup_free_ char *line = NULL;
        size_t n = 0;
        ssize_t l;

        l = getline(&line, &n, f);
        if (l < 0)
                return feof(f) ? -ENODATA : negative_errno();
        if (l > GW_PASSWORD_MAX)
                return -E2BIG;
        while (l > 0 && (line[l - 1] == '\n' || line[l - 1] == '\r'))
                line[--l] = '\0';
        *ret = TAKE_PTR(line);
        return 0;
}

static int prompt_password(const char *prompt, char **ret) {
        struct termios old, noecho;
        int r;

        if (tcgetattr(STDIN_FILENO, &old) < 0)
                return negative_errno();
        noecho = old;
        noecho.c_lflag &= ~(tcflag_t) ECHO;
        noecho.c_lflag |= ECHONL;
        fprintf(stderr, "%s", prompt);
        fflush(stderr);
        if (tcsetattr(STDIN_FILENO, TCSAFLUSH, &noecho) < 0)
                return negative_errno();
        r = read_password_line(stdin, ret);
        (void) tcsetattr(STDIN_FILENO, TCSAFLUSH, &old);
        return r;
}

int gw_read_password(const char *file, const char *prompt, bool confirm, char **ret) {
        _cleanup_free_ char *pw = NULL, *again = NULL;
        int r;

        if (file) {
                _cleanup_fclose_ FILE *f = streq(file, "-") ? NULL : fopen(file, "re");

                if (!streq(file, "-") && !f)
                        return gw_fail("cannot open password file '%s': %s", file, strerror(errno));
                r = read_password_line(f ?: stdin, &pw);
                if (r == -ENODATA)
                        return gw_fail("password file '%s' is empty", file);
                if (r < 0)
                        return gw_fail("cannot read password file '%s': %s", file, strerror(-r));
                *ret = TAKE_PTR(pw);
                return 0;
        }

        if (!isatty(STDIN_FILENO))
                return gw_usage("a password is needed: give --password-file=FILE or run gwctl on a terminal");
        r = prompt_password(prompt, &pw);
        if (r < 0)
                return gw_fail("cannot read the password: %s", strerror(-r));
        if (confirm) {
                r = prompt_password("Repeat the password: ", &again);
                if (r < 0)
                        return gw_fail("cannot read the password: %s", strerror(-r));
                if (!streq(pw, again))
                        return gw_usage("the passwords do not match");
        }
        *ret = TAKE_PTR(pw);
        return 0;
}

int gw_read_file(const char *path, char **ret, size_t *ret_len) {
        _cleanup_fclose_ FILE *f = NULL;
        _cleanup_free_ char *data = NULL;
        size_t len = 0, alloc = 0;

        f = streq(path, "-") ? NULL : fopen(path, "re");
        if (!streq(path, "-") && !f)
                return gw_fail("cannot open '%s': %s", path, strerror(errno));
        for (;;) {
                size_t n;

                if (alloc - len < 4096 + 1) {
                        char *p;

                        if (alloc >= GW_FILE_MAX)
                                return gw_fail("'%s' is larger than %u bytes", path, GW_FILE_MAX);
                        alloc = alloc ? alloc * 2 : 8192;
                        p = realloc(data, alloc);
                        if (!p)
                                return gw_fail("out of memory");
                        data = p;
                }
                n = fread(data + len, 1, alloc - len - 1, f ?: stdin);
                len += n;
                if (n == 0) {
                        if (ferror(f ?: stdin))
                                return gw_fail("cannot read '%s': %s", path, strerror(errno));
                        break;
                }
        }
        data[len] = '\0';
        *ret = TAKE_PTR(data);
        if (ret_len)
                *ret_len = len;
        return 0;
}

int gw_write_file(const char *path, const void *data, size_t len, mode_t mode) {
        _cleanup_free_ char *tmp = NULL;
        _cleanup_close_ int fd = -EBADF;
        const char *p = data;
        size_t left = len;

        if (streq(path, "-")) {
                if (fwrite(data, 1, len, stdout) != len || fflush(stdout) != 0)
                        return gw_fail("cannot write to standard output: %s", strerror(errno));
                return 0;
        }

        /* Written beside the target and renamed, so a reader never sees a
         * half-written key bundle, and mode is set before any byte lands. */
        if (asprintf(&tmp, "%s.XXXXXX", path) < 0)
                return gw_fail("out of memory");
        fd = mkostemp(tmp, O_CLOEXEC);
        if (fd < 0)
                return gw_fail("cannot create '%s': %s", path, strerror(errno));
        if (fchmod(fd, mode) < 0)
                goto fail;
        while (left > 0) {
                ssize_t n = write(fd, p, left);

                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        goto fail;
                }
                p += n;
                left -= (size_t) n;
        }
        if (fsync(fd) < 0 || rename(tmp, path) < 0)
                goto fail;
        return 0;
fail:
        {
                int e = errno;

                (void) unlink(tmp);
                return gw_fail("cannot write '%s': %s", path, strerror(e));
        }
}

const char *gw_format_time(uint64_t usec, char *buf, size_t len) {
        time_t t;
        struct tm tm;

        if (usec == 0 || usec == UINT64_MAX) {
                snprintf(buf, len, "-");
                return buf;
        }
        t = (time_t) (usec / USEC_PER_SEC);
        if (!localtime_r(&t, &tm) || strftime(buf, len, "%Y-%m-%d %H:%M:%S %Z", &tm) == 0)
                snprintf(buf, len, "%" PRIu64, usec);
        return buf;
}

const char *gw_format_duration(uint64_t usec, char *buf, size_t len) {
        static const struct { const char *unit; uint64_t usec; } units[] = {
                { "d",   24ULL * 3600 * USEC_PER_SEC },
                { "h",   3600ULL * USEC_PER_SEC },
                { "min", 60ULL * USEC_PER_SEC },
                { "s",   USEC_PER_SEC },
                { "ms",  USEC_PER_MSEC },
                { "us",  1 },
        };
        size_t o = 0;

        if (usec == 0) {
                snprintf(buf, len, "0");
                return buf;
        }
        if (usec == UINT64_MAX) {
                snprintf(buf, len, "infinity");
                return buf;
        }
        buf[0] = '\0';
        for (size_t i = 0; i < ELEMENTSOF(units) && usec > 0 && o < len; i++) {
                uint64_t n = usec / units[i].usec;

                if (n == 0)
                        continue;
                o += (size_t) snprintf(buf + o, len - o, "%s%" PRIu64 "%s", o ? " " : "", n, units[i].unit);
                usec -= n * units[i].usec;
        }
        return buf;
}

int gw_strv_add(char ***l, const char *s, bool split) {
        size_t n = strv_length(*l);
        _cleanup_free_ char *copy = strdup(s);
        char *save = NULL, **nl;

        if (!copy)
                return -ENOMEM;
        if (!split) {
                nl = realloc(*l, (n + 2) * sizeof(char *));
                if (!nl)
                        return -ENOMEM;
                nl[n] = TAKE_PTR(copy);
                nl[n + 1] = NULL;
                *l = nl;
                return 0;
        }
        for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
                int r = gw_strv_add(l, t, false);

                if (r < 0)
                        return r;
        }
        return 0;
}

char *gw_strv_join(char * const *l, const char *sep) {
        size_t n = 1;
        char *s, *p;

        for (char * const *i = l; i && *i; i++)
                n += strlen(*i) + strlen(sep);
        s = p = malloc(n);
        if (!s)
                return NULL;
        *p = '\0';
        for (char * const *i = l; i && *i; i++)
                p = stpcpy(stpcpy(p, i == l ? "" : sep), *i);
        return s;
}

static int format_value(sd_bus_message *m, FILE *f);

static int format_container(sd_bus_message *m, FILE *f, char type, const char *contents) {
        const char *sep = type == SD_BUS_TYPE_ARRAY ? ", " : type == SD_BUS_TYPE_DICT_ENTRY ? "=" : " ";
        bool first = true;
        int r;

        r = sd_bus_message_enter_container(m, type, contents);
        if (r < 0)
                return r;
        if (type == SD_BUS_TYPE_STRUCT || (type == SD_BUS_TYPE_ARRAY && contents[0] == '{'))
                fputc(type == SD_BUS_TYPE_STRUCT ? '(' : '{', f);
        for (;;) {
                r = sd_bus_message_at_end(m, false);
                if (r < 0)
                        return r;
                if (r > 0)
                        break;
                if (!first)
                        fputs(sep, f);
                first = false;
                r = format_value(m, f);
                if (r < 0)
                        return r;
        }
        if (type == SD_BUS_TYPE_STRUCT || (type == SD_BUS_TYPE_ARRAY && contents[0] == '{'))
                fputc(type == SD_BUS_TYPE_STRUCT ? ')' : '}', f);
        return sd_bus_message_exit_container(m);
}

static int format_value(sd_bus_message *m, FILE *f) {
        const char *contents;
        char type;
        union {
                uint8_t u8;
                uint16_t u16;
                int16_t s16;
                uint32_t u32;
                int32_t s32;
                uint64_t u64;
                int64_t s64;
                int b;
                double d;
                const char *s;
        } v;
        int r;

        r = sd_bus_message_peek_type(m, &type, &contents);
        if (r <= 0)
                return r < 0 ? r : -EBADMSG;
        if (type == SD_BUS_TYPE_ARRAY || type == SD_BUS_TYPE_STRUCT || type == SD_BUS_TYPE_VARIANT ||
            type == SD_BUS_TYPE_DICT_ENTRY)
                return format_container(m, f, type, contents);
        r = sd_bus_message_read_basic(m, type, &v);
        if (r < 0)
                return r;
        switch (type) {
        case SD_BUS_TYPE_BYTE:          fprintf(f, "%u", v.u8); break;
        case SD_BUS_TYPE_BOOLEAN:       fputs(v.b ? "yes" : "no", f); break;
        case SD_BUS_TYPE_INT16:         fprintf(f, "%d", v.s16); break;
        case SD_BUS_TYPE_UINT16:        fprintf(f, "%u", v.u16); break;
        case SD_BUS_TYPE_INT32:         fprintf(f, "%" PRIi32, v.s32); break;
        case SD_BUS_TYPE_UINT32:        fprintf(f, "%" PRIu32, v.u32); break;
        case SD_BUS_TYPE_INT64:         fprintf(f, "%" PRIi64, v.s64); break;
        case SD_BUS_TYPE_UINT64:        fprintf(f, "%" PRIu64, v.u64); break;
        case SD_BUS_TYPE_DOUBLE:        fprintf(f, "%g", v.d); break;
        case SD_BUS_TYPE_UNIX_FD:       fputs("(fd)", f); break;
        default:                        fputs(v.s, f); break;
        }
        return 0;
}

int gw_variant_to_string(sd_bus_message *m, char **ret) {
        _cleanup_free_ char *s = NULL;
        size_t n = 0;
        FILE *f;
        int r;

        f = open_memstream(&s, &n);
        if (!f)
                return -ENOMEM;
        r = format_value(m, f);
        if (fclose(f) != 0 && r >= 0)
                r = -ENOMEM;
        if (r < 0)
                return r;
        *ret = TAKE_PTR(s);
        return 0;
}

/* Properties in usec since the epoch, and in usec as a span. */
static bool property_is_time(const char *k) {
        return streq(k, "NotBefore") || streq(k, "NotAfter") || streq(k, "time") || streq(k, "arrival") ||
               streq(k, "next_attempt");
}

static bool property_is_duration(const char *k) {
        size_t l = strlen(k);

        return (l > 7 && streq(k + l - 7, "Timeout")) || (l > 8 && streq(k + l - 8, "Interval")) ||
               streq(k, "QueueLifetime") || streq(k, "RetryMin") || streq(k, "RetryMax");
}

int gw_record_add_dict(Output *o, sd_bus_message *m) {
        int r;

        r = sd_bus_message_enter_container(m, SD_BUS_TYPE_ARRAY, "{sv}");
        if (r < 0)
                return r;
        for (;;) {
                const char *key, *contents;
                char type;

                r = sd_bus_message_enter_container(m, SD_BUS_TYPE_DICT_ENTRY, "sv");
                if (r < 0)
                        return r;
                if (r == 0)
                        break;
                r = sd_bus_message_read_basic(m, 's', &key);
                if (r < 0)
                        return r;
                r = sd_bus_message_peek_type(m, &type, &contents);
                if (r < 0)
                        return r;
                if (streq(contents, "as")) {
                        _cleanup_strv_free_ char **l = NULL;

                        r = sd_bus_message_enter_container(m, 'v', "as");
                        if (r >= 0)
                                r = sd_bus_message_read_strv(m, &l);
                        if (r >= 0)
                                r = sd_bus_message_exit_container(m);
                        if (r >= 0)
                                r = output_field_strv(o, key, l);
                } else if (streq(contents, "b")) {
                        int b;

                        r = sd_bus_message_read(m, "v", "b", &b);
                        if (r >= 0)
                                r = output_field_bool(o, key, b);
                } else if (strlen(contents) == 1 && strchr("yqunixt", contents[0])) {
                        _cleanup_free_ char *s = NULL;

                        r = sd_bus_message_enter_container(m, 'v', contents);
                        if (r >= 0 && contents[0] == 't' && !arg_json &&
                            (property_is_time(key) || property_is_duration(key))) {
                                char buf[GW_TIME_MAX];
                                uint64_t u;

                                r = sd_bus_message_read_basic(m, 't', &u);
                                if (r >= 0)
                                        r = output_field(o, key, OUTPUT_STRING,
                                                         property_is_time(key) ? gw_format_time(u, buf, sizeof buf)
                                                                               : gw_format_duration(u, buf, sizeof buf));
                        } else {
                                if (r >= 0)
                                        r = gw_variant_to_string(m, &s);
                                if (r >= 0)
                                        r = output_field(o, key, OUTPUT_NUMBER, s);
                        }
                        if (r >= 0)
                                r = sd_bus_message_exit_container(m);
                } else {
                        _cleanup_free_ char *s = NULL;

                        r = gw_variant_to_string(m, &s);
                        if (r >= 0)
                                r = output_field(o, key, OUTPUT_STRING, s);
                }
                if (r < 0)
                        return r;
                r = sd_bus_message_exit_container(m);
                if (r < 0)
                        return r;
        }
        return sd_bus_message_exit_container(m);
}

/* Global options may stand anywhere before "--": they are taken out here
 * so that each verb parses only its own flags (hence no verb may have a
 * flag of the same name). */
static int parse_global(int *argc, char *argv[]) {
        int n = 1;

        for (int i = 1; i < *argc; i++) {
                const char *a = argv[i];

                if (streq(a, "--")) {
                        while (i < *argc)
                                argv[n++] = argv[i++];
                        break;
                }
                if (streq(a, "--json"))
                        arg_json = true;
                else if (streq(a, "--no-legend"))
                        arg_legend = false;
                else if (strncmp(a, "--bus-address=", 14) == 0)
                        arg_address = a + 14;
                else if (streq(a, "--bus-address")) {
                        if (i + 1 >= *argc)
                                return gw_usage("option '--bus-address' needs an argument");
                        arg_address = argv[++i];
                } else
                        argv[n++] = argv[i];
        }
        argv[n] = NULL;
        *argc = n;
        return 0;
}

static const Verb *verb_find(const char *group, const char *verb, bool *ret_group_known) {
        bool known = false;

        for (size_t t = 0; t < ELEMENTSOF(verb_tables); t++)
                for (const Verb *v = verb_tables[t]; v->verb; v++) {
                        if (!group) {
                                if (!v->group && streq(v->verb, verb))
                                        return v;
                                continue;
                        }
                        if (v->group && streq(v->group, group)) {
                                known = true;
                                if (verb && streq(v->verb, verb))
                                        return v;
                        }
                }
        *ret_group_known = known;
        return NULL;
}

static void sub_verbs(const char *group, char *buf, size_t len) {
        size_t o = 0;

        buf[0] = '\0';
        for (size_t t = 0; t < ELEMENTSOF(verb_tables); t++)
                for (const Verb *v = verb_tables[t]; v->verb; v++)
                        if (v->group && streq(v->group, group) && o < len)
                                o += (size_t) snprintf(buf + o, len - o, "%s%s", o ? ", " : "", v->verb);
}

int main(int argc, char *argv[]) {
        _cleanup_free_ char *name = NULL;
        const Verb *v;
        bool known = false;
        char list[512];
        int r;

        r = parse_global(&argc, argv);
        if (r != 0)
                return r;
        if (argc < 2)
                return gw_usage("no command given; see 'gwctl --help'");
        if (streq(argv[1], "-h") || streq(argv[1], "--help") || streq(argv[1], "help")) {
                help();
                return GWCTL_EXIT_OK;
        }
        if (streq(argv[1], "--version")) {
                printf("gwctl %s\n", PACKAGE_VERSION);
                return GWCTL_EXIT_OK;
        }
        if (argv[1][0] == '-')
                return gw_usage("unknown option '%s'; see 'gwctl --help'", argv[1]);

        output_set_mode(arg_json, arg_legend);

        v = verb_find(NULL, argv[1], &known);
        if (v) {
                /* getopt names argv[0] in its messages: "gwctl commit: ..." */
                if (asprintf(&name, "gwctl %s", argv[1]) < 0)
                        return gw_fail("out of memory");
                argv[1] = name;
                r = v->run(argc - 1, argv + 1);
        } else {
                (void) verb_find(argv[1], NULL, &known);
                if (!known)
                        return gw_usage("unknown command '%s'; see 'gwctl --help'", argv[1]);
                sub_verbs(argv[1], list, sizeof list);
                if (argc < 3 || argv[2][0] == '-') {
                        if (argc >= 3 && (streq(argv[2], "-h") || streq(argv[2], "--help"))) {
                                printf("gwctl %s: %s\n", argv[1], list);
                                return GWCTL_EXIT_OK;
                        }
                        return gw_usage("'%s' needs a command: %s", argv[1], list);
                }
                v = verb_find(argv[1], argv[2], &known);
                if (!v)
                        return gw_usage("unknown command '%s %s'; '%s' takes: %s", argv[1], argv[2], argv[1], list);
                if (asprintf(&name, "gwctl %s %s", argv[1], argv[2]) < 0)
                        return gw_fail("out of memory");
                argv[2] = name;
                r = v->run(argc - 2, argv + 2);
        }

        bus = sd_bus_flush_close_unref(bus);
        return r;
}
