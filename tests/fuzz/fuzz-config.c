/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Fuzz target for config_load_string(): the input is a configuration text.
 * A text is either refused with -EINVAL and a "fuzz..." message and no
 * Config, or loaded into a Config that keeps the promises of config.h:
 * at least one listener, policies resolved, "default" destination first,
 * lowercase domains, validation idempotent. A text that loads also makes
 * a ConfigDocument, and a few edits on it keep their promise: a refused
 * edit leaves the document byte for byte as it was, an accepted one leaves
 * a document that loads. Aborts when one breaks.
 */

#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "util/macro.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
const char *__lsan_default_suppressions(void);

/* libconfig 1.5 has no destructor for string tokens in its grammar: a
 * syntax error right after a string leaks that string (strbuf_append).
 * That is the library's, not ours, and would stop every fuzzing run. */
const char *__lsan_default_suppressions(void) {
        return "leak:libconfig.so\n";
}

/* Configurations are small; bigger inputs only slow the fuzzer down. */
#define FUZZ_CONFIG_INPUT_MAX (64U * 1024U)
#define FUZZ_NAME "fuzz.conf"

#define check(cond)                                                             \
        do {                                                                    \
                if (!(cond)) {                                                  \
                        fprintf(stderr, "%s:%d: invariant failed: %s\n",        \
                                __FILE__, __LINE__, #cond);                     \
                        abort();                                                \
                }                                                               \
        } while (0)

static bool is_lower(const char *s) {
        for (; s && *s; s++)
                if (*s >= 'A' && *s <= 'Z')
                        return false;
        return true;
}

static void check_config(Config *c) {
        _cleanup_free_ char *err = NULL;
        struct sockaddr_in6 sin6 = {
                .sin6_family = AF_INET6,
                .sin6_addr.s6_addr = { [10] = 0xff, [11] = 0xff, [12] = 127, [15] = 1 },
        };

        check(c->n_ref == 1);
        check(c->hostname && c->state_dir && c->state_dir[0] == '/');
        check(c->n_listeners >= 1);
        for (size_t i = 0; i < c->n_listeners; i++) {
                const ListenerConfig *l = &c->listeners[i];

                check(l->name && l->address && l->port > 0 && l->hostname);
                check(l->default_policy && streq(l->default_policy->name, l->default_policy_name));
                check(l->accepted_domains);
                for (char **a = l->accepted_domains; *a; a++)
                        check(is_lower(*a));
                check(config_find_listener(c, l->name) == l);
                check(l->limits.max_line >= SMTP_LINE_MAX_DEFAULT);
        }
        for (size_t i = 0; i < c->n_sender_groups; i++)
                check(c->sender_groups[i].policy && c->sender_groups[i].n_sources > 0);
        for (size_t i = 0; i < c->n_routes; i++) {
                check(is_lower(c->routes[i].domain));
                check(c->routes[i].kind == ROUTE_SMTP ? c->routes[i].n_hosts > 0 : c->routes[i].directory != NULL);
                check(config_find_route(c, c->routes[i].domain) != NULL);
        }
        check(c->n_destinations >= 1 && streq(c->destinations[0].domain, "default"));
        check(config_find_destination(c, "no-such-domain.invalid") == &c->destinations[0]);
        for (size_t i = 0; i < c->n_destinations; i++)
                check(is_lower(c->destinations[i].domain));
        check(c->queue.retry_min <= c->queue.retry_max);

        (void) config_match_sender_group(c, (const struct sockaddr *) &sin6);

        /* A loaded configuration validates again without change. */
        check(config_validate(c, &err) == 0 && !err);
}

static char *doc_text(const ConfigDocument *d) {
        char *t = NULL;

        check(config_document_to_text(d, CONFIG_SECRETS_KEEP, NULL, &t) == 0 && t);
        return t;
}

static void check_loads(const ConfigDocument *d) {
        Config *c = NULL;

        check(config_document_load(d, FUZZ_NAME, &c, NULL) == 0 && c);
        config_unref(c);
}

static void check_document(const char *text, const Config *c) {
        _cleanup_free_ char *before = NULL, *after = NULL, *err = NULL, *redacted = NULL;
        ConfigDocument *d = NULL;
        int r;

        r = config_document_new(text, FUZZ_NAME, NULL, &d, &err);
        check(r == 0 && d && !err);
        before = doc_text(d);
        check(streq(before, text));

        /* A refused edit changes nothing. */
        r = config_document_set(d, CONFIG_KIND_LISTENER, c->listeners[0].name,
                                &(ConfigValue) { "port", CONFIG_VALUE_INT, .i = 0 }, 1, &err);
        check(r == -EINVAL && err);
        err = mfree(err);
        after = doc_text(d);
        check(streq(before, after));
        after = mfree(after);

        /* An accepted one keeps a document that loads, through
         * libconfig's writer. */
        r = config_document_add(d, CONFIG_KIND_POLICY, "FUZZ-POLICY",
                                &(ConfigValue) { "action", CONFIG_VALUE_STRING, .s = "reject" }, 1, &err);
        if (r == 0) {
                check_loads(d);
                check(config_document_delete(d, CONFIG_KIND_POLICY, "FUZZ-POLICY", &err) == 0);
                check_loads(d);
        } else
                check(r == -EEXIST || r == -EINVAL);
        err = mfree(err);
        r = config_document_set_global(d, &(ConfigValue) { "workers", CONFIG_VALUE_INT, .i = 2 }, 1, &err);
        check(r == 0 || r == -EINVAL);
        err = mfree(err);
        check_loads(d);
        check(config_document_to_text(d, CONFIG_SECRETS_REDACT, NULL, &redacted) == 0 && redacted);
        config_document_free(d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        _cleanup_free_ char *text = NULL, *err = NULL;
        Config *c = NULL;
        int r;

        if (size > FUZZ_CONFIG_INPUT_MAX)
                return 0;

        /* libconfig reads a C string; an embedded NUL ends the text there. */
        text = malloc(size + 1);
        if (!text)
                return 0;
        memcpy(text, data, size);
        text[size] = '\0';

        r = config_load_string(text, FUZZ_NAME, &c, &err);
        if (r < 0) {
                check(!c);
                if (r == -EINVAL)
                        check(err && strncmp(err, FUZZ_NAME, strlen(FUZZ_NAME)) == 0);
                return 0;
        }

        check(c && !err);
        check_config(c);
        check_document(text, c);
        config_unref(c);
        return 0;
}
