/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * gwctl's staging verbs (pending, diff, commit, abandon, history,
 * rollback, reload) and the whole-document ones (config show, export,
 * import). The daemon validates; this file only passes text and options
 * through and prints the answers. Returns exit codes.
 */

#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "gwctl.h"
#include "output.h"
#include "util/parse.h"

/* Encrypted secrets in exported text start with this (config.h
 * CONFIG_SECRETS_ENCRYPT); only such text needs a password to import. */
#define ENCRYPTED_SECRET_PREFIX "enc:v1:"

static int no_args(int argc, char *argv[], const char *verb) {
        if (argc > 1)
                return gw_usage("'%s' takes no arguments", verb);
        return 0;
}

static int verb_reload(int argc, char *argv[]) {
        int r = no_args(argc, argv, "reload");

        if (r != 0)
                return r;
        r = gw_call(GW_BUS_PATH, GW_IFACE_MANAGER, "Reload", NULL, NULL);
        if (r != 0)
                return r;
        printf("Configuration reloaded.\n");
        return GWCTL_EXIT_OK;
}

static int print_diff(bool quiet_if_none) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        const char *diff;
        int r;

        r = gw_call(GW_BUS_PATH, GW_IFACE_MANAGER, "Diff", &reply, NULL);
        if (r != 0)
                return r;
        r = sd_bus_message_read(reply, "s", &diff);
        if (r < 0)
                return gw_bad_reply(r);
        if (isempty(diff)) {
                if (!quiet_if_none)
                        printf("No pending changes.\n");
                return GWCTL_EXIT_OK;
        }
        fputs(diff, stdout);
        if (diff[strlen(diff) - 1] != '\n')
                putchar('\n');
        return GWCTL_EXIT_OK;
}

static int verb_pending(int argc, char *argv[]) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        const char *owner, *text;
        int pending, r;

        r = no_args(argc, argv, "pending");
        if (r != 0)
                return r;
        r = gw_call(GW_BUS_PATH, GW_IFACE_MANAGER, "GetPending", &reply, NULL);
        if (r != 0)
                return r;
        r = sd_bus_message_read(reply, "bss", &pending, &owner, &text);
        if (r < 0)
                return gw_bad_reply(r);
        if (arg_json) {
                _cleanup_output_ Output *o = NULL;
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *d = NULL;
                const char *diff = "";

                if (pending) {
                        r = gw_call(GW_BUS_PATH, GW_IFACE_MANAGER, "Diff", &d, NULL);
                        if (r != 0)
                                return r;
                        r = sd_bus_message_read(d, "s", &diff);
                        if (r < 0)
                                return gw_bad_reply(r);
                }
                r = output_record_new("pending", &o);
                if (r >= 0)
                        r = output_field_bool(o, "pending", pending);
                if (r >= 0)
                        r = output_field(o, "owner", OUTPUT_STRING, owner);
                if (r >= 0)
                        r = output_field(o, "diff", OUTPUT_STRING, diff);
                if (r >= 0)
                        r = output_print(o);
                return r < 0 ? gw_bad_reply(r) : GWCTL_EXIT_OK;
        }
        if (!pending) {
                printf("No pending changes.\n");
                return GWCTL_EXIT_OK;
        }
        printf("Pending changes by %s:\n", isempty(owner) ? "(unknown)" : owner);
        return print_diff(true);
}

static int verb_diff(int argc, char *argv[]) {
        int r = no_args(argc, argv, "diff");

        return r != 0 ? r : print_diff(false);
}

static int verb_commit(int argc, char *argv[]) {
        static const struct option options[] = {
                { "message", required_argument, NULL, 'm' },
                {}
        };
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        const char *comment = "";
        uint32_t version;
        int c, r;

        gw_reset_getopt();
        while ((c = getopt_long(argc, argv, "m:", options, NULL)) >= 0)
                switch (c) {
                case 'm':
                        comment = optarg;
                        break;
                default:
                        return GWCTL_EXIT_USAGE;
                }
        if (optind < argc)
                return gw_usage("'commit' takes no arguments (the comment goes with -m)");
        r = gw_call(GW_BUS_PATH, GW_IFACE_MANAGER, "Commit", &reply, "s", comment);
        if (r != 0)
                return r;
        r = sd_bus_message_read(reply, "u", &version);
        if (r < 0)
                return gw_bad_reply(r);
        printf("Committed configuration version %" PRIu32 ".\n", version);
        return GWCTL_EXIT_OK;
}

static int verb_abandon(int argc, char *argv[]) {
        static const struct option options[] = {
                { "force", no_argument, NULL, 'f' },
                {}
        };
        int force = 0, c, r;

        gw_reset_getopt();
        while ((c = getopt_long(argc, argv, "f", options, NULL)) >= 0)
                switch (c) {
                case 'f':
                        force = 1;
                        break;
                default:
                        return GWCTL_EXIT_USAGE;
                }
        if (optind < argc)
                return gw_usage("'abandon' takes no arguments");
        r = gw_call(GW_BUS_PATH, GW_IFACE_MANAGER, "Abandon", NULL, "b", force);
        if (r != 0)
                return r;
        printf("Pending changes abandoned.\n");
        return GWCTL_EXIT_OK;
}

static int verb_history(int argc, char *argv[]) {
        static const OutputColumn columns[] = {
                { "VERSION", OUTPUT_NUMBER, 0, OUTPUT_RIGHT },
                { "TIME",    OUTPUT_TIME,   0, 0 },
                { "USER",    OUTPUT_STRING, 0, 0 },
                { "COMMENT", OUTPUT_STRING, 0, OUTPUT_WRAP },
        };
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_output_ Output *o = NULL;
        int r;

        r = no_args(argc, argv, "history");
        if (r != 0)
                return r;
        r = gw_call(GW_BUS_PATH, GW_IFACE_MANAGER, "History", &reply, NULL);
        if (r != 0)
                return r;
        r = output_new("history", columns, ELEMENTSOF(columns), &o);
        if (r >= 0)
                r = sd_bus_message_enter_container(reply, 'a', "(utss)");
        while (r >= 0) {
                const char *user, *comment;
                uint32_t version;
                uint64_t t;

                r = sd_bus_message_read(reply, "(utss)", &version, &t, &user, &comment);
                if (r <= 0)
                        break;
                r = output_row(o);
                if (r >= 0)
                        r = output_cell_u64(o, 0, version);
                if (r >= 0)
                        r = output_cell_time(o, 1, t);
                if (r >= 0)
                        r = output_cell(o, 2, user);
                if (r >= 0)
                        r = output_cell(o, 3, comment);
        }
        if (r >= 0)
                r = output_print(o);
        return r < 0 ? gw_bad_reply(r) : GWCTL_EXIT_OK;
}

static int verb_rollback(int argc, char *argv[]) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        uint32_t version, new_version;
        int r;

        if (argc != 2)
                return gw_usage("'rollback' needs one VERSION (see 'gwctl history')");
        if (parse_uint32(argv[1], &version) < 0 || version == 0)
                return gw_usage("'%s' is not a configuration version", argv[1]);
        r = gw_call(GW_BUS_PATH, GW_IFACE_MANAGER, "Rollback", &reply, "u", version);
        if (r != 0)
                return r;
        r = sd_bus_message_read(reply, "u", &new_version);
        if (r < 0)
                return gw_bad_reply(r);
        printf("Rolled back to version %" PRIu32 ", committed as version %" PRIu32 ".\n", version, new_version);
        return GWCTL_EXIT_OK;
}

static int verb_config_show(int argc, char *argv[]) {
        static const struct option options[] = {
                { "pending", no_argument, NULL, 'p' },
                {}
        };
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        const char *text;
        int pending = 0, c, r;

        gw_reset_getopt();
        while ((c = getopt_long(argc, argv, "p", options, NULL)) >= 0)
                switch (c) {
                case 'p':
                        pending = 1;
                        break;
                default:
                        return GWCTL_EXIT_USAGE;
                }
        if (optind < argc)
                return gw_usage("'config show' takes no arguments");
        r = gw_call(GW_BUS_PATH, GW_IFACE_MANAGER, "GetConfig", &reply, "b", pending);
        if (r != 0)
                return r;
        r = sd_bus_message_read(reply, "s", &text);
        if (r < 0)
                return gw_bad_reply(r);
        fputs(text, stdout);
        return GWCTL_EXIT_OK;
}

static int verb_config_export(int argc, char *argv[]) {
        enum { ARG_PASSWORD_FILE = 0x100 };
        static const struct option options[] = {
                { "output",        required_argument, NULL, 'o' },
                { "secrets",       no_argument,       NULL, 's' },
                { "password-file", required_argument, NULL, ARG_PASSWORD_FILE },
                {}
        };
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_free_ char *password = NULL;
        const char *output = "-", *password_file = NULL, *text;
        int secrets = 0, c, r;

        gw_reset_getopt();
        while ((c = getopt_long(argc, argv, "o:s", options, NULL)) >= 0)
                switch (c) {
                case 'o':
                        output = optarg;
                        break;
                case 's':
                        secrets = 1;
                        break;
                case ARG_PASSWORD_FILE:
                        password_file = optarg;
                        break;
                default:
                        return GWCTL_EXIT_USAGE;
                }
        if (optind < argc)
                return gw_usage("'config export' takes no arguments (the file goes with -o)");
        if (password_file && !secrets)
                return gw_usage("--password-file is only used with --secrets");
        if (secrets) {
                r = gw_read_password(password_file, "Password to encrypt the secrets: ", true, &password);
                if (r != 0)
                        return r;
                if (isempty(password))
                        return gw_usage("the password that encrypts the secrets must not be empty");
        }
        r = gw_call(GW_BUS_PATH, GW_IFACE_MANAGER, "ExportConfig", &reply, "bs", secrets, password ?: "");
        if (r != 0)
                return r;
        r = sd_bus_message_read(reply, "s", &text);
        if (r < 0)
                return gw_bad_reply(r);
        return gw_write_file(output, text, strlen(text), 0600);
}

static int verb_config_import(int argc, char *argv[]) {
        _cleanup_free_ char *text = NULL, *password = NULL;
        const char *password_file;
        int r;

        r = gw_parse_password_file(argc, argv, &password_file);
        if (r != 0)
                return r;
        if (argc - optind != 1)
                return gw_usage("'config import' needs one FILE");
        r = gw_read_file(argv[optind], &text, NULL);
        if (r != 0)
                return r;
        if (password_file || strstr(text, ENCRYPTED_SECRET_PREFIX)) {
                r = gw_read_password(password_file, "Password of the encrypted secrets: ", false, &password);
                if (r != 0)
                        return r;
        }
        r = gw_call(GW_BUS_PATH, GW_IFACE_MANAGER, "ImportConfig", NULL, "ss", text, password ?: "");
        if (r != 0)
                return r;
        printf("Configuration from '%s' staged; review with 'gwctl diff', apply with 'gwctl commit'.\n",
               argv[optind]);
        return GWCTL_EXIT_OK;
}

const Verb config_verbs[] = {
        { NULL,     "pending",  verb_pending,  "\tWhether changes are staged, by whom, and the diff" },
        { NULL,     "diff",     verb_diff,     "\tUnified diff of running -> pending configuration" },
        { NULL,     "commit",   verb_commit,   "[-m COMMENT]\tValidate and apply the pending changes as a new version" },
        { NULL,     "abandon",  verb_abandon,  "[--force]\tDrop the pending changes" },
        { NULL,     "history",  verb_history,  "\tCommitted versions with time, user and comment" },
        { NULL,     "rollback", verb_rollback, "VERSION\tCommit an earlier version again as a new version" },
        { NULL,     "reload",   verb_reload,   "\tRe-read the configuration file" },
        { "config", "show",     verb_config_show,   "[--pending]\tRunning (or pending) configuration, secrets left out" },
        { "config", "export",   verb_config_export, "[-o FILE] [--secrets [--password-file FILE]]\tWhole configuration as text" },
        { "config", "import",   verb_config_import, "FILE [--password-file FILE]\tStage a whole configuration" },
        {}
};
