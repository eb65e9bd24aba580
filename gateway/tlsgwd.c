/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * tlsgwd: the SMTP gateway daemon. Parses arguments, builds the Manager
 * and runs its event loop; everything else lives in the modules.
 */

#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <systemd/sd-daemon.h>

#include "build-config.h"
#include "config.h"
#include "log.h"
#include "manager.h"
#include "util/macro.h"

static const char *arg_config;
static bool arg_check;

static void help(void) {
        printf("Usage: tlsgwd [OPTIONS]\n\n"
               "SMTP gateway with TLS policies and kernel TLS.\n\n"
               "  -c --config=PATH     Configuration file (default: built-in defaults;\n"
               "                       the packaged units use %s)\n"
               "     --check-config    Validate the configuration and exit\n"
               "     --log-level=LEVEL debug, info, notice, warning or err\n"
               "  -h --help            Show this help\n"
               "     --version         Show the version\n",
               TLSGW_CONFIG_FILE);
}

static int parse_level(const char *s) {
        static const struct { const char *name; int level; } t[] = {
                { "debug", LOG_DEBUG }, { "info", LOG_INFO }, { "notice", LOG_NOTICE },
                { "warning", LOG_WARNING }, { "err", LOG_ERR },
        };
        for (size_t i = 0; i < ELEMENTSOF(t); i++)
                if (streq(s, t[i].name))
                        return t[i].level;
        return -EINVAL;
}

static int parse_argv(int argc, char *argv[]) {
        enum { ARG_CHECK = 0x100, ARG_LOG_LEVEL, ARG_VERSION };
        static const struct option options[] = {
                { "config",       required_argument, NULL, 'c' },
                { "check-config", no_argument,       NULL, ARG_CHECK },
                { "log-level",    required_argument, NULL, ARG_LOG_LEVEL },
                { "help",         no_argument,       NULL, 'h' },
                { "version",      no_argument,       NULL, ARG_VERSION },
                {}
        };
        int c, level;

        while ((c = getopt_long(argc, argv, "c:h", options, NULL)) >= 0)
                switch (c) {
                case 'c':
                        arg_config = optarg;
                        break;
                case ARG_CHECK:
                        arg_check = true;
                        break;
                case ARG_LOG_LEVEL:
                        level = parse_level(optarg);
                        if (level < 0) {
                                fprintf(stderr, "tlsgwd: unknown log level '%s'\n", optarg);
                                return -EINVAL;
                        }
                        log_set_max_level(level);
                        break;
                case 'h':
                        help();
                        return 0;
                case ARG_VERSION:
                        printf("tlsgwd %s\n", PACKAGE_VERSION);
                        return 0;
                default:
                        fprintf(stderr, "Try 'tlsgwd --help'.\n");
                        return -EINVAL;
                }
        if (optind < argc) {
                fprintf(stderr, "tlsgwd: unexpected argument '%s'\n", argv[optind]);
                return -EINVAL;
        }
        return 1;
}

static int check_config(void) {
        _cleanup_free_ char *error = NULL;
        Config *c = NULL;
        int r;

        if (!arg_config) {
                r = config_new_default(NULL, &c);
        } else
                r = config_load(arg_config, &c, &error);
        if (r < 0) {
                fprintf(stderr, "%s\n", error ?: strerror(-r));
                return EXIT_FAILURE;
        }
        printf("%s: configuration is valid (%zu listeners, %zu sender groups, %zu routes)\n",
               arg_config ?: "built-in defaults", c->n_listeners, c->n_sender_groups, c->n_routes);
        config_unref(c);
        return EXIT_SUCCESS;
}

int main(int argc, char *argv[]) {
        _cleanup_(manager_freep) Manager *m = NULL;
        sigset_t mask;
        int r;

        r = parse_argv(argc, argv);
        if (r <= 0)
                return r < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
        if (arg_check)
                return check_config();

        log_open();

        /* Signals are taken through sd-event; block them before any thread
         * exists so that every worker inherits the mask. */
        sigemptyset(&mask);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGHUP);
        sigprocmask(SIG_BLOCK, &mask, NULL);
        signal(SIGPIPE, SIG_IGN);

        r = manager_new(&m);
        if (r < 0) {
                log_error_errno(r, "Cannot create the manager: %m");
                return EXIT_FAILURE;
        }
        r = manager_load_config(m, arg_config);
        if (r < 0)
                return EXIT_FAILURE;
        r = manager_start(m);
        if (r < 0) {
                (void) sd_notifyf(false, "STATUS=Failed to start: %s\nERRNO=%d", strerror(-r), -r);
                return EXIT_FAILURE;
        }
        r = manager_run(m);
        if (r < 0) {
                log_error_errno(r, "Event loop failed: %m");
                return EXIT_FAILURE;
        }
        log_info("tlsgwd stopped.");
        return EXIT_SUCCESS;
}
