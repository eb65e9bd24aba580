/* SPDX-License-Identifier: GPL-2.0-or-later */

/*
 * Tests of config.c: the documented example file, the built-in defaults,
 * one case per validation rule (each checking the exact FILE:LINE of the
 * message, with the configuration written to a real file), sender group
 * matching and route/destination lookups; HTTPS interfaces, LDAP profiles
 * and admin_group; the ConfigDocument (every edit and every refusal, which
 * must leave the document byte for byte as it was; render and load round
 * trips; secrets encrypted, decrypted and redacted).
 */

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "build-config.h"
#include "config.h"
#include "tap.h"
#include "tls.h"
#include "util/macro.h"

static char tmpdir[] = "/tmp/test-config-XXXXXX";
static unsigned n_files;

static char *write_conf(const char *text) {
        char *path;
        FILE *f;

        if (asprintf(&path, "%s/t%u.conf", tmpdir, ++n_files) < 0)
                abort();
        f = fopen(path, "we");
        if (!f)
                abort();
        fputs(text, f);
        if (fclose(f) != 0)
                abort();
        return path;
}

/* Loads text from a fresh file and expects -EINVAL with a message line
 * "PATH:LINE: what" (line 0: "PATH: what"). */
static void expect_error_at(const char *text, unsigned line, const char *what, const char *name) {
        _cleanup_free_ char *path = NULL, *err = NULL, *want = NULL;
        Config *c = NULL;
        int r;

        path = write_conf(text);
        if (line > 0)
                r = asprintf(&want, "%s:%u: %s", path, line, what);
        else
                r = asprintf(&want, "%s: %s", path, what);
        if (r < 0)
                abort();

        r = config_load(path, &c, &err);
        if (r != -EINVAL || !err || !strstr(err, want))
                printf("# r=%d, message:\n# %s\n# wanted: %s\n", r, err ?: "(none)", want);
        ok(r == -EINVAL && c == NULL && err && strstr(err, want), "%s", name);
        config_unref(c);
}

static Config *load_ok(const char *text, const char *name) {
        _cleanup_free_ char *path = NULL, *err = NULL;
        Config *c = NULL;
        int r;

        path = write_conf(text);
        r = config_load(path, &c, &err);
        if (r < 0)
                printf("# %s\n", err ?: strerror(-r));
        ok(r == 0 && c, "%s", name);
        return c;
}

/* A valid base: listener and policy on fixed lines so cases can append. */
#define BASE_LISTENER \
        "listeners = ( { name = \"inbound\"; address = \"127.0.0.1\"; port = 2525; default_policy = \"P\"; } );\n"
#define BASE_POLICY \
        "policies = ( { name = \"P\"; action = \"accept\"; } );\n"
#define BASE BASE_LISTENER BASE_POLICY          /* lines 1-2 */

static void test_enums(void) {
        is_str(policy_action_to_string(POLICY_TCP_REFUSE), "tcp-refuse", "policy action to string");
        is_int(policy_action_from_string("relay"), POLICY_RELAY, "policy action from string");
        is_int(policy_action_from_string("Relay"), -EINVAL, "policy action is case-sensitive");
        ok(policy_action_to_string(_POLICY_ACTION_MAX) == NULL, "policy action out of range");
        is_int(tls_inbound_from_string("required-verify"), TLS_IN_REQUIRED_VERIFY, "tls inbound from string");
        is_str(tls_inbound_to_string(TLS_IN_OFF), "off", "tls inbound to string");
        is_int(tls_inbound_from_string("none"), -EINVAL, "\"none\" is outbound only");
        is_int(tls_outbound_from_string("none"), TLS_OUT_NONE, "tls outbound from string");
        is_str(tls_outbound_to_string(TLS_OUT_PREFERRED_VERIFY), "preferred-verify", "tls outbound to string");
        is_int(tls_outbound_from_string(NULL), -EINVAL, "NULL is invalid");
        is_str(route_kind_to_string(ROUTE_MAILDIR), "maildir", "route kind to string");
        is_int(route_kind_from_string("smtp"), ROUTE_SMTP, "route kind from string");
}

static void test_example(void) {
        _cleanup_free_ char *path = NULL, *err = NULL;
        const char *root = getenv("TLSGW_SOURCE_ROOT");
        const ListenerConfig *l;
        const DestinationConfig *d;
        const RouteConfig *rt;
        Config *c = NULL;
        int r;

        if (!root) {
                tap_skip("example configuration", "TLSGW_SOURCE_ROOT not set (run through meson test)");
                return;
        }
        if (asprintf(&path, "%s/docs/tlsgw.conf.example", root) < 0)
                abort();

        r = config_load(path, &c, &err);
        if (r < 0)
                printf("# %s\n", err ?: strerror(-r));
        ok(r == 0 && c, "docs/tlsgw.conf.example loads");
        if (!c)
                return;

        is_str(c->hostname, "mx.example.com", "example: hostname");
        is_str(c->state_dir, "/var/lib/tlsgw", "example: state_directory");
        is_str(c->path, path, "example: path kept");
        is_int(c->workers, 0, "example: workers");
        is_int(c->shutdown_timeout, 30 * USEC_PER_SEC, "example: shutdown_timeout");
        is_str(c->dns_servers ? c->dns_servers[0] : NULL, "127.0.0.1:5353", "example: dns server");
        is_str(c->alert_recipients ? c->alert_recipients[0] : NULL, "postmaster@example.com", "example: alert recipient");

        is_int(c->n_listeners, 3, "example: three listeners");
        l = config_find_listener(c, "inbound");
        ok(l && l->port == 25 && streq(l->address, "0.0.0.0"), "example: inbound 0.0.0.0:25");
        ok(l && l->limits.max_message_size == 10 * 1024 * 1024, "example: max_message_size \"10M\"");
        ok(l && l->limits.idle_timeout == 300 * USEC_PER_SEC, "example: idle_timeout \"5m\"");
        ok(l && l->default_policy && streq(l->default_policy->name, "ACCEPTED"), "example: default policy resolved");
        ok(l && l->tls == TLS_IN_PREFERRED && l->ktls, "example: tls settings");
        ok(l && l->certificates && streq(l->certificates[0], "mx-ec") && streq(l->certificates[1], "mx-rsa") &&
           !l->certificates[2], "example: two certificates");
        ok(l && streq(l->tls_min_version, "TLSv1.2") && !l->tls_ciphers && !l->tls_ciphersuites && !l->tls_groups &&
           !l->client_ca, "example: inbound TLS defaults");
        l = config_find_listener(c, "submission-lo");
        ok(l && streq(l->hostname, "mx.example.com"), "example: listener hostname defaults to top-level");
        ok(l && listener_accepts_domain(l, "LOCALHOST"), "example: accepted domain, case-insensitive");
        ok(l && l->tls == TLS_IN_OFF && !l->certificates, "example: submission-lo without TLS, demo certificate");
        l = config_find_listener(c, "partners");
        ok(l && l->tls == TLS_IN_REQUIRED_VERIFY && streq(l->client_ca, "/etc/tlsgw/partner-ca.pem"),
           "example: partners listener requires verified client certificates");
        ok(l && l->certificates && streq(l->certificates[0], "mx-ec") && !l->certificates[1],
           "example: single 'certificate' is a list of one");
        ok(l && streq(l->tls_min_version, "TLSv1.3") && streq(l->tls_groups, "X25519:P-256"),
           "example: partners listener TLS 1.3 only, groups");

        is_int(c->n_policies, 5, "example: five policies");
        is_int(c->n_sender_groups, 3, "example: three sender groups");
        ok(c->n_sender_groups == 3 && c->sender_groups[1].policy &&
           c->sender_groups[1].policy->action == POLICY_REJECT, "example: BLOCKLIST -> reject");

        rt = config_find_route(c, "example.com");
        ok(rt && rt->kind == ROUTE_SMTP && rt->n_hosts == 3, "example: example.com route has three hosts");
        if (rt && rt->n_hosts == 3) {
                ok(streq(rt->hosts[0].host, "10.1.1.1") && rt->hosts[0].port == 25, "example: host 10.1.1.1:25");
                ok(streq(rt->hosts[1].host, "2001:db8::1") && rt->hosts[1].port == 2525, "example: host [2001:db8::1]:2525");
                ok(streq(rt->hosts[2].host, "mail2.example.com") && rt->hosts[2].port == 25, "example: host without port gets 25");
        }
        rt = config_find_route(c, "localhost");
        ok(rt && rt->kind == ROUTE_MAILDIR && streq(rt->directory, "/var/lib/tlsgw/mail"), "example: maildir route");
        rt = config_find_route(c, "elsewhere.example");
        ok(rt && streq(rt->domain, "*"), "example: other domains take the \"*\" route");

        ok(c->n_destinations == 2 && streq(c->destinations[0].domain, "default"), "example: default destination first");
        d = config_find_destination(c, "partner.example");
        ok(d && d->tls == TLS_OUT_REQUIRED_VERIFY, "example: partner.example tls");
        ok(d && d->max_connections == 20 && d->max_messages_per_connection == 50, "example: partner.example inherits from default");
        ok(d && streq(d->ca_file, "/etc/tlsgw/partner-ca.pem") && d->tls_min_version == NULL,
           "example: partner.example ca_file");
        ok(c->destinations[0].ca_file == NULL && c->destinations[0].tls_min_version == NULL,
           "example: default destination uses tls_client values");

        is_str(c->tls_client.certificate, "mx-client", "example: tls_client certificate");
        is_str(c->tls_client.ca_file, "/etc/ssl/certs/ca-certificates.crt", "example: tls_client ca_file");
        is_str(c->tls_client.min_version, "TLSv1.2", "example: tls_client min_version");
        is_str(c->tls_client.ciphers, "ECDHE+AESGCM:ECDHE+CHACHA20", "example: tls_client ciphers");
        is_str(c->tls_client.ciphersuites, "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256",
               "example: tls_client ciphersuites");
        is_str(c->tls_client.groups, "X25519:P-256:P-384", "example: tls_client groups");
        ok(c->tls_alert_enabled && c->tls_alert_interval == 3600 * USEC_PER_SEC, "example: tls_alerts");
        is_int(c->tls_ticket_rotation, 12 * 3600 * USEC_PER_SEC, "example: tls_ticket_rotation");

        is_int(c->queue.retry_min, 60 * USEC_PER_SEC, "example: queue retry_min");
        is_int(c->queue.lifetime, 5 * 86400 * USEC_PER_SEC, "example: queue lifetime");
        is_int(c->queue.data_timeout, 600 * USEC_PER_SEC, "example: queue data_timeout");

        config_unref(c);
}

static void test_defaults(void) {
        const ListenerConfig *l;
        const SenderGroup *sg;
        struct sockaddr_in sin = { .sin_family = AF_INET };
        Config *c = NULL;
        int r;

        r = config_new_default("/srv/gw", &c);
        ok(r == 0 && c, "config_new_default");
        if (!c)
                return;
        ok(!isempty(c->hostname), "default: hostname from gethostname (%s)", c->hostname);
        is_str(c->state_dir, "/srv/gw", "default: state dir");
        ok(c->path == NULL, "default: no path");
        l = config_find_listener(c, "inbound");
        ok(l && streq(l->address, "127.0.0.1") && l->port == 2525, "default: listener inbound 127.0.0.1:2525");
        ok(l && listener_accepts_domain(l, "localhost") && !listener_accepts_domain(l, "example.com"),
           "default: accepts only localhost");
        ok(l && l->default_policy && l->default_policy->action == POLICY_ACCEPT, "default: default policy ACCEPTED");
        ok(l && l->limits.max_line == SMTP_LINE_MAX_DEFAULT && l->limits.max_recipients == SMTP_RCPT_MAX_DEFAULT &&
           l->limits.max_message_size == SMTP_MESSAGE_SIZE_DEFAULT && l->limits.max_errors == SMTP_ERRORS_MAX_DEFAULT &&
           l->limits.idle_timeout == SMTP_IDLE_TIMEOUT_DEFAULT && l->limits.data_timeout == SMTP_DATA_TIMEOUT_DEFAULT &&
           l->max_connections == LISTENER_CONNECTIONS_MAX_DEFAULT &&
           l->max_connections_per_ip == LISTENER_CONNECTIONS_PER_IP_DEFAULT, "default: listener limits");

        inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr);
        sg = config_match_sender_group(c, (struct sockaddr *) &sin);
        ok(sg && streq(sg->name, "RELAYLIST") && sg->policy && sg->policy->action == POLICY_ACCEPT,
           "default: loopback is RELAYLIST but only ACCEPTED");
        ok(config_find_route(c, "localhost") && config_find_route(c, "localhost")->kind == ROUTE_MAILDIR &&
           streq(config_find_route(c, "localhost")->directory, "/srv/gw/mail"), "default: localhost -> maildir");
        ok(config_find_route(c, "example.com") == NULL, "default: no smarthost");
        ok(c->n_destinations == 1 && streq(c->destinations[0].domain, "default") &&
           c->destinations[0].max_connections == 20 && c->destinations[0].max_messages_per_connection == 50 &&
           c->destinations[0].max_recipients_per_message == 100 && c->destinations[0].tls == TLS_OUT_PREFERRED,
           "default: destination \"default\"");
        ok(c->queue.retry_min == 60 * USEC_PER_SEC && c->queue.retry_max == 3600 * USEC_PER_SEC &&
           c->queue.connect_timeout == 30 * USEC_PER_SEC && c->queue.command_timeout == 300 * USEC_PER_SEC &&
           c->queue.smtp_port == 25 && c->queue.max_connections == 200, "default: queue");

        ok(l && l->tls == TLS_IN_PREFERRED && l->ktls && !l->certificates && streq(l->tls_min_version, "TLSv1.2") &&
           !l->tls_ciphers && !l->tls_ciphersuites && !l->tls_groups && !l->client_ca,
           "default: listener TLS preferred, demo certificate, TLSv1.2, kTLS");
        ok(!c->destinations[0].ca_file && !c->destinations[0].tls_min_version && c->destinations[0].ktls,
           "default: destination TLS settings from tls_client");
        ok(!c->tls_client.certificate && !c->tls_client.ca_file && !c->tls_client.min_version &&
           !c->tls_client.ciphers && !c->tls_client.ciphersuites && !c->tls_client.groups,
           "default: tls_client all unset");
        ok(c->tls_alert_enabled && c->tls_alert_interval == 3600 * USEC_PER_SEC, "default: TLS alerts on, 1h");
        is_int(c->tls_ticket_rotation, TLS_TICKET_KEY_ROTATION_DEFAULT, "default: ticket rotation");

        /* Validation also guards hand-built configurations. */
        {
                _cleanup_free_ char *err = NULL;

                c->listeners[0].port = 0;
                r = config_validate(c, &err);
                ok(r == -EINVAL && err && strstr(err, "<built-in>: listener 'inbound': port 0 out of range"),
                   "validate refuses a hand-built listener on port 0");
                c->listeners[0].port = 2525;
        }
        ok(config_ref(c) == c && c->n_ref == 2, "config_ref");
        ok(config_unref(c) == NULL && c->n_ref == 1, "config_unref keeps a referenced config");
        config_unref(c);

        r = config_new_default(NULL, &c);
        ok(r == 0 && c && streq(c->state_dir, TLSGW_STATE_DIR), "default: state dir from build (" TLSGW_STATE_DIR ")");
        config_unref(c);
}

static void test_minimal(void) {
        Config *c;

        c = load_ok(BASE, "minimal file loads");
        if (!c)
                return;
        ok(c->workers == 0 && c->shutdown_timeout == 30 * USEC_PER_SEC, "minimal: workers/shutdown defaults");
        ok(c->listeners[0].tls == TLS_IN_PREFERRED && c->listeners[0].ktls, "minimal: listener tls defaults");
        ok(c->listeners[0].accepted_domains && !c->listeners[0].accepted_domains[0], "minimal: empty accepted_domains vector");
        ok(c->queue.lifetime == 5 * 86400 * USEC_PER_SEC && c->queue.data_timeout == 600 * USEC_PER_SEC,
           "minimal: queue defaults");
        ok(c->n_destinations == 1 && streq(c->destinations[0].domain, "default"), "minimal: default destination added");
        ok(c->dns_servers == NULL, "minimal: no dns servers (use resolv.conf)");
        config_unref(c);

        c = load_ok(BASE
                    "hostname = \"MX.Example.COM\";\n"
                    "shutdown_timeout = 10;\n"
                    "routes = ( { domain = \"EXAMPLE.org\"; hosts = [ \"Relay.Example.org\" ]; } );\n"
                    "destinations = ( { domain = \"a.example\"; max_connections = 3; },\n"
                    "                 { domain = \"default\"; max_connections = 7; tls = \"none\"; } );\n"
                    "queue = { retry_min = 30; max_connections = 500L; };\n",
                    "integers as seconds, mixed case, default destination last");
        if (!c)
                return;
        is_str(c->hostname, "mx.example.com", "hostname lowercased");
        is_int(c->shutdown_timeout, 10 * USEC_PER_SEC, "integer duration is seconds");
        is_int(c->queue.retry_min, 30 * USEC_PER_SEC, "integer queue duration is seconds");
        is_int(c->queue.max_connections, 500, "64-bit (L) integer accepted");
        ok(c->n_routes == 1 && streq(c->routes[0].domain, "example.org") &&
           streq(c->routes[0].hosts[0].host, "relay.example.org"), "route domain and host lowercased");
        ok(c->n_destinations == 2 && streq(c->destinations[0].domain, "default") &&
           c->destinations[0].max_connections == 7, "default destination moved to index 0");
        ok(c->n_destinations == 2 && c->destinations[1].max_connections == 3 &&
           c->destinations[1].tls == TLS_OUT_NONE, "other destination inherits unset keys from default");
        config_unref(c);
}

static void test_errors(void) {
        expect_error_at("listeners = (\n  { name = \"x\"\n", 3, "syntax error", "syntax error with line");
        expect_error_at(BASE_POLICY
                        "listeners = ( { name = \"inbound\"; address = \"0.0.0.0\";\n"
                        "                port = 70000; default_policy = \"P\"; } );\n",
                        3, "listener 'inbound': port 70000 out of range 1..65535", "port out of range");
        expect_error_at(BASE "bogus = 1;\n", 3, "unknown key 'bogus'", "unknown top-level key");
        expect_error_at(BASE_POLICY
                        "listeners = ( { name = \"inbound\"; address = \"::\"; port = 25;\n"
                        "  prot = 26; default_policy = \"P\"; } );\n",
                        3, "listener 'inbound': unknown key 'prot'", "unknown listener key");
        expect_error_at(BASE_POLICY
                        "listeners = ( { name = \"inbound\"; address = \"::\"; port = 25; default_policy = \"P\";\n"
                        "  limits = {\n"
                        "    max_lines = 2000; }; } );\n",
                        4, "listener 'inbound': unknown key 'max_lines'", "unknown key in limits");
        expect_error_at(BASE "queue = { retries = 3; };\n", 3, "queue: unknown key 'retries'", "unknown queue key");
        expect_error_at(BASE_POLICY
                        "listeners = ( { name = \"inbound\"; address = \"::\"; port = \"25\"; default_policy = \"P\"; } );\n",
                        2, "listener 'inbound': 'port' must be an integer, not a string", "wrong type");
        expect_error_at(BASE "workers = 2.5;\n", 3, "'workers' must be an integer, not a float", "float for integer");
        expect_error_at(BASE "alert_recipients = (\n  \"a@example.com\", 1 );\n", 4,
                        "'alert_recipients' element 2 must be a string, not an integer", "array element type");
        expect_error_at(BASE_POLICY "listeners = { name = \"x\"; };\n", 2,
                        "'listeners' must be a list of groups", "listeners not a list");
        expect_error_at(BASE_POLICY
                        "listeners = (\n"
                        "  { name = \"a\"; address = \"127.0.0.1\"; port = 25; default_policy = \"P\"; },\n"
                        "  { name = \"a\"; address = \"127.0.0.2\"; port = 25; default_policy = \"P\"; } );\n",
                        4, "listener 'a': duplicate name, first defined on line 3", "duplicate listener name");
        expect_error_at(BASE "policies2 = 1;\n", 3, "unknown key 'policies2'", "unknown key");
        expect_error_at(BASE_LISTENER
                        "policies = ( { name = \"P\"; action = \"accept\"; },\n"
                        "             { name = \"P\"; action = \"relay\"; } );\n",
                        3, "policy 'P': duplicate name, first defined on line 2", "duplicate policy name");
        expect_error_at(BASE
                        "sender_groups = ( { name = \"S\"; policy = \"P\"; sources = [ \"10.0.0.0/8\" ]; },\n"
                        "                  { name = \"S\"; policy = \"P\"; sources = [ \"::1\" ]; } );\n",
                        4, "sender group 'S': duplicate name, first defined on line 3", "duplicate sender group");
        expect_error_at(BASE
                        "routes = ( { domain = \"example.com\"; hosts = [ \"a.example.com\" ]; },\n"
                        "           { domain = \"Example.COM\"; maildir = \"/m\"; } );\n",
                        4, "route 'example.com': duplicate domain, first defined on line 3",
                        "duplicate route domain (case-insensitive)");
        expect_error_at(BASE
                        "destinations = ( { domain = \"a.example\"; },\n"
                        "                 { domain = \"a.example\"; tls = \"none\"; } );\n",
                        4, "destination 'a.example': duplicate domain, first defined on line 3", "duplicate destination");
        expect_error_at(BASE
                        "sender_groups = ( { name = \"S\"; policy = \"NOPE\"; sources = [ \"10.0.0.0/8\" ]; } );\n",
                        3, "sender group 'S': policy 'NOPE' is not a defined policy", "sender group names missing policy");
        expect_error_at(BASE_POLICY
                        "listeners = ( { name = \"inbound\"; address = \"::\"; port = 25; default_policy = \"MISSING\"; } );\n",
                        2, "listener 'inbound': default_policy 'MISSING' is not a defined policy", "default_policy missing");
        expect_error_at(BASE
                        "sender_groups = ( { name = \"S\"; policy = \"P\";\n"
                        "  sources = [ \"10.0.0.0/8\",\n"
                        "              \"10.0.0.1/8\" ]; } );\n",
                        5, "sender group 'S': invalid source \"10.0.0.1/8\"", "CIDR with host bits");
        expect_error_at(BASE
                        "sender_groups = ( { name = \"S\"; policy = \"P\"; sources = [ \"300.0.0.0/8\" ]; } );\n",
                        3, "sender group 'S': invalid source \"300.0.0.0/8\"", "invalid CIDR");
        expect_error_at(BASE_POLICY
                        "listeners = ( { name = \"inbound\"; address = \"::\"; port = 25; default_policy = \"P\";\n"
                        "                accepted_domains = [ \"example.com\", \"bad_domain.example\" ]; } );\n",
                        2, "listener 'inbound': accepted domain \"bad_domain.example\" is not a valid domain name",
                        "invalid accepted domain");
        expect_error_at(BASE
                        "routes = ( { domain = \"-bad.example\"; hosts = [ \"a.example\" ]; } );\n",
                        3, "route '-bad.example': domain \"-bad.example\" is not a valid domain name", "invalid route domain");
        expect_error_at(BASE
                        "destinations = ( { domain = \"x..example\"; } );\n",
                        3, "destination 'x..example': domain \"x..example\" is not a valid domain name",
                        "invalid destination domain");
        expect_error_at(BASE "hostname = \"not a host\";\n", 3, "hostname \"not a host\" is not a valid domain name",
                        "invalid hostname");
        expect_error_at(BASE_POLICY
                        "listeners = ( { name = \"inbound\"; address = \"mx.example.com\"; port = 25; default_policy = \"P\"; } );\n",
                        2, "listener 'inbound': address \"mx.example.com\" is not a numeric IPv4 or IPv6 address",
                        "listener address must be numeric");
        expect_error_at(BASE_POLICY
                        "listeners = (\n"
                        "  { name = \"a\"; address = \"::1\"; port = 25; default_policy = \"P\"; },\n"
                        "  { name = \"b\"; address = \"0:0::1\"; port = 25; default_policy = \"P\"; } );\n",
                        4, "listener 'b': ::1 port 25 already used by listener 'a' (line 3)", "same address:port twice");
        expect_error_at(BASE_POLICY "workers = 1;\n", 0, "no listeners defined", "listeners required");
        expect_error_at(BASE_POLICY "listeners = ();\n", 0, "no listeners defined", "empty listener list");
        expect_error_at(BASE "\nworkers =\n  4294967297;\n", 5, "integer 4294967297 does not fit in 32 bits",
                        "wrapping integer literal refused");
        expect_error_at(BASE "queue = { lifetime = -2147483649; };\n", 3, "integer -2147483649 does not fit",
                        "wrapping negative literal refused");
        expect_error_at(BASE "workers = -1;\n", 3, "workers -1 out of range 0..1024", "negative integer");
        expect_error_at(BASE_POLICY
                        "listeners = ( { name = \"inbound\"; address = \"::\"; port = 25; default_policy = \"P\";\n"
                        "                tls = \"maybe\"; } );\n",
                        3, "listener 'inbound': tls \"maybe\" is not one of: off, preferred, required", "invalid tls enum");
        expect_error_at(BASE_LISTENER "policies = ( { name = \"P\"; action = \"allow\"; } );\n",
                        2, "policy 'P': action \"allow\" is not one of: accept, relay, reject, tcp-refuse", "invalid action");
        expect_error_at(BASE "queue = {\n  retry_max = \"5x\"; };\n", 4, "queue: retry_max \"5x\" is not a duration",
                        "invalid duration");
        expect_error_at(BASE_POLICY
                        "listeners = ( { name = \"inbound\"; address = \"::\"; port = 25; default_policy = \"P\";\n"
                        "                limits = { max_message_size = \"10Q\"; }; } );\n",
                        3, "listener 'inbound': limits.max_message_size \"10Q\" is not a size", "invalid size");
        expect_error_at(BASE_POLICY
                        "listeners = ( { name = \"inbound\"; address = \"::\"; port = 25; default_policy = \"P\";\n"
                        "                limits = { max_line = 512; }; } );\n",
                        3, "listener 'inbound': limits.max_line 512 out of range 1000..65536",
                        "max_line below RFC 5321 minimum");
        expect_error_at(BASE
                        "routes = ( { domain = \"a.example\"; hosts = [ \"x.example\" ]; maildir = \"/m\"; } );\n",
                        3, "route 'a.example': 'hosts' and 'maildir' exclude each other", "route with hosts and maildir");
        expect_error_at(BASE "routes = ( { domain = \"a.example\"; } );\n",
                        3, "route 'a.example': needs 'hosts'", "route without target");
        expect_error_at(BASE "routes = ( { domain = \"a.example\"; hosts = [ \"x.example:0\" ]; } );\n",
                        3, "route 'a.example': invalid host \"x.example:0\"", "route host with port 0");
        expect_error_at(BASE "routes = ( { domain = \"a.example\"; maildir = \"relative/dir\"; } );\n",
                        3, "route 'a.example': maildir \"relative/dir\" is not an absolute path", "relative maildir");
        expect_error_at(BASE_POLICY
                        "listeners = ( { address = \"::\"; port = 25; default_policy = \"P\"; } );\n",
                        2, "listener #1: missing 'name'", "missing name");
        expect_error_at(BASE_POLICY
                        "listeners = ( { name = \"in:bound\"; address = \"::\"; port = 25; default_policy = \"P\"; } );\n",
                        2, "listener 'in:bound': invalid name", "invalid name");
        expect_error_at(BASE "queue = {\n  retry_min = \"2h\";\n  retry_max = \"1h\"; };\n", 3,
                        "queue: retry_min 2h must not be 0 or longer than retry_max 1h", "retry_min above retry_max");
        expect_error_at(BASE "dns_servers = [ \"127.0.0.1\",\n  \"dns.example\" ];\n", 4,
                        "dns_servers entry (want IP or IP:PORT or [IPV6]:PORT) \"dns.example\" is not valid",
                        "dns server must be numeric");
        expect_error_at(BASE "alert_recipients = [ \"postmaster\" ];\n", 3,
                        "alert_recipients entry (want local@domain) \"postmaster\" is not valid", "invalid alert recipient");
        expect_error_at(BASE "state_directory = \"var/lib\";\n", 3, "state_directory \"var/lib\" is not an absolute path",
                        "relative state directory");
        expect_error_at(BASE "sender_groups = ( { name = \"S\"; policy = \"P\"; sources = []; } );\n", 3,
                        "sender group 'S': 'sources' must list at least one", "empty sources");

        /* Every problem is reported, not only the first. */
        {
                _cleanup_free_ char *path = NULL, *err = NULL, *w1 = NULL, *w2 = NULL;
                Config *c = NULL;

                path = write_conf(BASE "workers = \"x\";\nqueue = { smtp_port = 0; };\n");
                if (asprintf(&w1, "%s:3: 'workers' must be an integer", path) < 0 ||
                    asprintf(&w2, "%s:4: queue: smtp_port 0 out of range 1..65535", path) < 0)
                        abort();
                is_int(config_load(path, &c, &err), -EINVAL, "two problems: refused");
                ok(err && strstr(err, w1) && strstr(err, w2), "two problems: both reported");
        }
}

static void test_files(void) {
        _cleanup_free_ char *err = NULL, *inc = NULL, *main_path = NULL, *want = NULL;
        Config *c = NULL;
        FILE *f;
        int r;

        r = config_load("/nonexistent/tlsgw.conf", &c, &err);
        ok(r == -ENOENT && err && strstr(err, "/nonexistent/tlsgw.conf: "), "missing file: -ENOENT with message");
        err = mfree(err);
        r = config_load(tmpdir, &c, &err);
        is_int(r, -EISDIR, "directory refused");
        err = mfree(err);

        r = config_load_string(BASE "hostname = 5;\n", "inline", &c, &err);
        ok(r == -EINVAL && err && strstr(err, "inline:3: 'hostname' must be a string, not an integer"),
           "string config: name used as path");
        err = mfree(err);
        r = config_load_string(BASE "@include \"/etc/passwd\"\n", "inline", &c, &err);
        ok(r == -EINVAL && err && strstr(err, "@include is not supported"), "string config: @include refused");
        err = mfree(err);
        r = config_load_string(BASE, "inline", &c, &err);
        ok(r == 0 && c && streq(c->path, "inline"), "string config loads");
        c = config_unref(c);

        /* @include is relative to the including file; problems inside it
         * name the included file. */
        if (asprintf(&inc, "%s/policies.inc", tmpdir) < 0 || asprintf(&main_path, "%s/main.conf", tmpdir) < 0)
                abort();
        f = fopen(inc, "we");
        if (!f)
                abort();
        fputs("policies = ( { name = \"P\"; action = \"accept\";\n  colour = \"blue\"; } );\n", f);
        fclose(f);
        f = fopen(main_path, "we");
        if (!f)
                abort();
        fputs(BASE_LISTENER "@include \"policies.inc\"\n", f);
        fclose(f);
        r = config_load(main_path, &c, &err);
        if (asprintf(&want, "%s:2: policy 'P': unknown key 'colour'", inc) < 0)
                abort();
        if (!err || !strstr(err, want))
                printf("# %s\n# wanted %s\n", err ?: "(none)", want);
        ok(r == -EINVAL && err && strstr(err, want), "@include: error names the included file and its line");
        unlink(inc);
        unlink(main_path);
}

static void test_lookups(void) {
        struct sockaddr_in6 sin6 = { .sin6_family = AF_INET6 };
        struct sockaddr_in sin = { .sin_family = AF_INET };
        const SenderGroup *sg;
        const MailFlowPolicy *p;
        SmtpLimits e;
        Config *c;

        c = load_ok(BASE_LISTENER
                    "policies = ( { name = \"P\"; action = \"accept\"; },\n"
                    "             { name = \"R\"; action = \"relay\"; limits = { max_recipients = 1000; idle_timeout = \"1m\"; }; } );\n"
                    "sender_groups = (\n"
                    "  { name = \"FIRST\"; policy = \"R\"; sources = [ \"10.1.0.0/16\", \"2001:db8:1::/48\" ]; },\n"
                    "  { name = \"SECOND\"; policy = \"P\"; sources = [ \"10.0.0.0/8\", \"10.1.2.3\", \"::/0\" ]; } );\n"
                    "routes = ( { domain = \"a.example\"; hosts = [ \"[2001:db8::5]\" ]; },\n"
                    "           { domain = \"*\"; hosts = [ \"smart.example:587\" ]; } );\n"
                    "destinations = ( { domain = \"b.example\"; max_connections = 2; } );\n",
                    "lookup config loads");
        if (!c)
                return;

        inet_pton(AF_INET, "10.1.2.3", &sin.sin_addr);
        sg = config_match_sender_group(c, (struct sockaddr *) &sin);
        ok(sg && streq(sg->name, "FIRST"), "first matching group wins over a later exact match");
        inet_pton(AF_INET, "10.9.9.9", &sin.sin_addr);
        sg = config_match_sender_group(c, (struct sockaddr *) &sin);
        ok(sg && streq(sg->name, "SECOND"), "IPv4 falls through to the second group");
        inet_pton(AF_INET, "192.0.2.1", &sin.sin_addr);
        ok(config_match_sender_group(c, (struct sockaddr *) &sin) == NULL, "no IPv4 match: NULL");
        inet_pton(AF_INET6, "2001:db8:1::77", &sin6.sin6_addr);
        sg = config_match_sender_group(c, (struct sockaddr *) &sin6);
        ok(sg && streq(sg->name, "FIRST"), "IPv6 match");
        inet_pton(AF_INET6, "2001:db8:2::1", &sin6.sin6_addr);
        sg = config_match_sender_group(c, (struct sockaddr *) &sin6);
        ok(sg && streq(sg->name, "SECOND"), "IPv6 falls through to ::/0");
        inet_pton(AF_INET6, "::ffff:10.1.200.1", &sin6.sin6_addr);
        sg = config_match_sender_group(c, (struct sockaddr *) &sin6);
        ok(sg && streq(sg->name, "FIRST"), "v4-mapped client matches the IPv4 range");

        ok(config_find_route(c, "A.EXAMPLE") && config_find_route(c, "A.EXAMPLE")->hosts[0].port == 25 &&
           streq(config_find_route(c, "a.example")->hosts[0].host, "2001:db8::5"), "route: exact, case-insensitive");
        ok(config_find_route(c, "z.example") && streq(config_find_route(c, "z.example")->domain, "*") &&
           config_find_route(c, "z.example")->hosts[0].port == 587, "route: wildcard");
        ok(config_find_route(c, NULL) && streq(config_find_route(c, NULL)->domain, "*"), "route: NULL domain -> wildcard");
        ok(config_find_destination(c, "B.example") && config_find_destination(c, "B.example")->max_connections == 2,
           "destination: exact, case-insensitive");
        ok(config_find_destination(c, "c.example") == &c->destinations[0], "destination: fallback to default");
        ok(config_find_listener(c, "nope") == NULL, "listener: unknown name");

        p = &c->policies[1];
        smtp_limits_effective(&c->listeners[0], p, &e);
        ok(e.max_recipients == 1000 && e.idle_timeout == 60 * USEC_PER_SEC &&
           e.max_line == SMTP_LINE_MAX_DEFAULT && e.max_message_size == SMTP_MESSAGE_SIZE_DEFAULT,
           "limits: policy overrides non-zero fields only");
        smtp_limits_effective(&c->listeners[0], NULL, &e);
        ok(e.max_recipients == SMTP_RCPT_MAX_DEFAULT, "limits: no policy -> listener values");
        config_unref(c);

        c = load_ok(BASE "routes = ( { domain = \"a.example\"; maildir = \"/x\"; } );\n", "config without wildcard route");
        ok(c && config_find_route(c, "b.example") == NULL, "route: no wildcard -> NULL (MX lookup)");
        config_unref(c);
}

static void test_tls(void) {
        const DestinationConfig *d;
        Config *c;

        c = load_ok(BASE_POLICY
                    "listeners = (\n"
                    "  { name = \"a\"; address = \"127.0.0.1\"; port = 25; default_policy = \"P\";\n"
                    "    certificates = [ \"mx-ec\", \"mx-rsa\" ]; tls_min_version = \"TLSv1.3\";\n"
                    "    tls_ciphers = \"ECDHE+AESGCM\"; tls_ciphersuites = \"TLS_AES_128_GCM_SHA256\";\n"
                    "    tls_groups = \"P-256\"; client_ca = \"/etc/tlsgw/ca.pem\"; tls = \"required-verify\"; },\n"
                    "  { name = \"b\"; address = \"127.0.0.1\"; port = 26; default_policy = \"P\"; certificate = \"one\"; },\n"
                    "  { name = \"c\"; address = \"127.0.0.1\"; port = 27; default_policy = \"P\"; certificates = []; },\n"
                    "  { name = \"d\"; address = \"127.0.0.1\"; port = 28; default_policy = \"P\";\n"
                    "    tls = \"off\"; client_ca = \"/etc/tlsgw/ca.pem\"; ktls = false; } );\n"
                    "destinations = ( { domain = \"x.example\"; tls = \"required\"; },\n"
                    "                 { domain = \"default\"; ca_file = \"/etc/tlsgw/default-ca.pem\"; tls_min_version = \"TLSv1.3\"; },\n"
                    "                 { domain = \"y.example\"; ca_file = \"/etc/tlsgw/y.pem\"; tls_min_version = \"TLSv1.2\"; } );\n"
                    "tls_client = { certificate = \"client\"; ca_file = \"/etc/ssl/certs/ca-certificates.crt\";\n"
                    "               min_version = \"TLSv1.3\"; ciphers = \"ECDHE+CHACHA20\";\n"
                    "               ciphersuites = \"TLS_CHACHA20_POLY1305_SHA256\"; groups = \"X25519\"; };\n"
                    "tls_alerts = { enabled = false; interval = \"30m\"; };\n"
                    "tls_ticket_rotation = \"6h\";\n",
                    "TLS keys load");
        if (c) {
                const ListenerConfig *l = &c->listeners[0];

                ok(l->certificates && streq(l->certificates[0], "mx-ec") && streq(l->certificates[1], "mx-rsa") &&
                   !l->certificates[2], "certificates: two names in order");
                is_str(l->tls_min_version, "TLSv1.3", "listener tls_min_version");
                is_str(l->tls_ciphers, "ECDHE+AESGCM", "listener tls_ciphers");
                is_str(l->tls_ciphersuites, "TLS_AES_128_GCM_SHA256", "listener tls_ciphersuites");
                is_str(l->tls_groups, "P-256", "listener tls_groups");
                is_str(l->client_ca, "/etc/tlsgw/ca.pem", "listener client_ca");
                ok(l->tls == TLS_IN_REQUIRED_VERIFY && l->ktls, "listener tls required-verify, ktls default");
                l = &c->listeners[1];
                ok(l->certificates && streq(l->certificates[0], "one") && !l->certificates[1],
                   "certificate: a list of one");
                ok(l->tls == TLS_IN_PREFERRED && streq(l->tls_min_version, "TLSv1.2"), "listener TLS defaults");
                ok(!c->listeners[2].certificates, "certificates = []: demo certificate (NULL)");
                l = &c->listeners[3];
                ok(l->tls == TLS_IN_OFF && streq(l->client_ca, "/etc/tlsgw/ca.pem") && !l->ktls,
                   "tls off with client_ca is accepted");

                d = config_find_destination(c, "x.example");
                ok(d && d->tls == TLS_OUT_REQUIRED && streq(d->ca_file, "/etc/tlsgw/default-ca.pem") &&
                   streq(d->tls_min_version, "TLSv1.3"), "destination inherits ca_file and tls_min_version from default");
                ok(d && d->ca_file != c->destinations[0].ca_file, "inherited ca_file is a copy");
                d = config_find_destination(c, "y.example");
                ok(d && streq(d->ca_file, "/etc/tlsgw/y.pem") && streq(d->tls_min_version, "TLSv1.2"),
                   "destination overrides ca_file and tls_min_version");
                d = config_find_destination(c, "z.example");
                ok(d && streq(d->ca_file, "/etc/tlsgw/default-ca.pem"), "unknown domain uses default's ca_file");

                is_str(c->tls_client.certificate, "client", "tls_client.certificate");
                is_str(c->tls_client.ca_file, "/etc/ssl/certs/ca-certificates.crt", "tls_client.ca_file");
                is_str(c->tls_client.min_version, "TLSv1.3", "tls_client.min_version");
                is_str(c->tls_client.ciphers, "ECDHE+CHACHA20", "tls_client.ciphers");
                is_str(c->tls_client.ciphersuites, "TLS_CHACHA20_POLY1305_SHA256", "tls_client.ciphersuites");
                is_str(c->tls_client.groups, "X25519", "tls_client.groups");
                is_int(c->tls_client.line, 14, "tls_client line recorded");
                ok(!c->tls_alert_enabled && c->tls_alert_interval == 30 * 60 * USEC_PER_SEC, "tls_alerts disabled, 30m");
                is_int(c->tls_ticket_rotation, 6 * 3600 * USEC_PER_SEC, "tls_ticket_rotation 6h");
                config_unref(c);
        }

        c = load_ok(BASE
                    "destinations = ( { domain = \"x.example\"; ca_file = \"/x.pem\"; } );\n"
                    "tls_alerts = { interval = 120; };\n"
                    "tls_ticket_rotation = 3600;\n",
                    "TLS keys: integer durations, no default destination");
        if (c) {
                ok(c->destinations[0].ca_file == NULL && c->destinations[0].tls_min_version == NULL,
                   "built-in default destination has no ca_file");
                d = config_find_destination(c, "x.example");
                ok(d && streq(d->ca_file, "/x.pem") && !d->tls_min_version, "destination ca_file alone");
                ok(c->tls_alert_enabled && c->tls_alert_interval == 120 * USEC_PER_SEC, "tls_alerts interval in seconds");
                is_int(c->tls_ticket_rotation, 3600 * USEC_PER_SEC, "tls_ticket_rotation in seconds");
                ok(!c->tls_client.certificate && !c->tls_client.ca_file && c->tls_client.line == 0,
                   "no tls_client group: all unset");
                config_unref(c);
        }
}

#define LISTENER_HEAD \
        "listeners = ( { name = \"inbound\"; address = \"::\"; port = 25; default_policy = \"P\";\n"

static void test_tls_errors(void) {
        expect_error_at(BASE_POLICY LISTENER_HEAD
                        "  certificate = \"a\";\n"
                        "  certificates = [ \"b\" ]; } );\n",
                        4, "listener 'inbound': 'certificate' and 'certificates' exclude each other",
                        "certificate and certificates together");
        expect_error_at(BASE_POLICY LISTENER_HEAD
                        "  certificates = [ \"b\" ];\n"
                        "  certificate = \"a\"; } );\n",
                        4, "listener 'inbound': 'certificate' and 'certificates' exclude each other",
                        "certificates and certificate together (other order)");
        expect_error_at(BASE_POLICY LISTENER_HEAD
                        "  certificates = [ \"good\",\n"
                        "                   \"bad/name\" ]; } );\n",
                        4, "listener 'inbound': certificate \"bad/name\" is not a valid certificate name",
                        "certificates: invalid name at its element's line");
        expect_error_at(BASE_POLICY LISTENER_HEAD
                        "  certificate = \"..\"; } );\n",
                        3, "listener 'inbound': certificate \"..\" is not a valid certificate name",
                        "certificate \"..\" refused (leaves the store)");
        expect_error_at(BASE_POLICY LISTENER_HEAD
                        "  certificate = \"\"; } );\n",
                        3, "listener 'inbound': 'certificate' must not be empty", "empty certificate");
        expect_error_at(BASE_POLICY LISTENER_HEAD
                        "  certificates = [ \"a\", \"b\",\n"
                        "    \"a\" ]; } );\n",
                        4, "listener 'inbound': certificate \"a\" listed twice", "duplicate certificate");
        expect_error_at(BASE_POLICY LISTENER_HEAD
                        "  certificates = [ \"a\", \"b\", \"c\", \"d\", \"e\", \"f\" ]; } );\n",
                        3, "listener 'inbound': 'certificates' lists 6 names, at most 5", "too many certificates");
        expect_error_at(BASE_POLICY LISTENER_HEAD
                        "  certificates = \"a\"; } );\n",
                        3, "listener 'inbound': 'certificates' must be a list of strings", "certificates not a list");
        expect_error_at(BASE_POLICY LISTENER_HEAD
                        "  tls_min_version = \"TLSv1.1\"; } );\n",
                        3, "listener 'inbound': tls_min_version \"TLSv1.1\" is not one of: TLSv1.2, TLSv1.3",
                        "listener tls_min_version TLSv1.1");
        expect_error_at(BASE_POLICY LISTENER_HEAD
                        "  tls_min_version = \"tlsv1.3\"; } );\n",
                        3, "listener 'inbound': tls_min_version \"tlsv1.3\" is not one of",
                        "tls_min_version is case-sensitive");
        expect_error_at(BASE_POLICY LISTENER_HEAD
                        "  client_ca = \"ca.pem\"; } );\n",
                        3, "listener 'inbound': client_ca \"ca.pem\" is not an absolute path", "relative client_ca");
        expect_error_at(BASE_POLICY LISTENER_HEAD
                        "  tls_ciphers = \"\"; } );\n",
                        3, "listener 'inbound': 'tls_ciphers' must not be empty", "empty tls_ciphers");
        expect_error_at(BASE_POLICY LISTENER_HEAD
                        "  tls_groups = 5; } );\n",
                        3, "listener 'inbound': 'tls_groups' must be a string, not an integer", "tls_groups type");
        expect_error_at(BASE
                        "destinations = ( { domain = \"a.example\";\n"
                        "  ca_file = \"certs/a.pem\"; } );\n",
                        4, "destination 'a.example': ca_file \"certs/a.pem\" is not an absolute path",
                        "relative destination ca_file");
        expect_error_at(BASE
                        "destinations = ( { domain = \"default\"; tls_min_version = \"TLSv1.0\"; } );\n",
                        3, "destination 'default': tls_min_version \"TLSv1.0\" is not one of: TLSv1.2, TLSv1.3",
                        "destination tls_min_version TLSv1.0");
        expect_error_at(BASE "tls_client = {\n  min_version = \"SSLv3\"; };\n",
                        4, "tls_client: min_version \"SSLv3\" is not one of: TLSv1.2, TLSv1.3",
                        "tls_client min_version");
        expect_error_at(BASE "tls_client = { ca_file = \"./ca.pem\"; };\n",
                        3, "tls_client: ca_file \"./ca.pem\" is not an absolute path", "relative tls_client ca_file");
        expect_error_at(BASE "tls_client = { certificate = \"a b\"; };\n",
                        3, "tls_client: certificate \"a b\" is not a valid certificate name", "tls_client certificate name");
        expect_error_at(BASE "tls_client = {\n  verify = true; };\n",
                        4, "tls_client: unknown key 'verify'", "tls_client unknown key");
        expect_error_at(BASE "tls_client = [ \"x\" ];\n",
                        3, "'tls_client' must be a group { ... }, not an array", "tls_client not a group");
        expect_error_at(BASE "tls_alerts = {\n  interval = \"10s\"; };\n",
                        4, "tls_alerts: interval 10s out of range 1m..7d", "tls_alerts interval too short");
        expect_error_at(BASE "tls_alerts = { interval = \"8d\"; };\n",
                        3, "tls_alerts: interval 8d out of range 1m..7d", "tls_alerts interval too long");
        expect_error_at(BASE "tls_alerts = { interval = \"soon\"; };\n",
                        3, "tls_alerts: interval \"soon\" is not a duration", "tls_alerts interval not a duration");
        expect_error_at(BASE "tls_alerts = { enabled = \"yes\"; };\n",
                        3, "tls_alerts: 'enabled' must be true or false, not a string", "tls_alerts enabled type");
        expect_error_at(BASE "tls_alerts = { recipients = [ \"a@example.com\" ]; };\n",
                        3, "tls_alerts: unknown key 'recipients'", "tls_alerts unknown key");
        expect_error_at(BASE "tls_alerts = true;\n",
                        3, "'tls_alerts' must be a group { ... }, not a boolean", "tls_alerts not a group");
        expect_error_at(BASE "\ntls_ticket_rotation = \"85h\";\n",
                        4, "tls_ticket_rotation 85h out of range 1m..84h", "tls_ticket_rotation too long");
        expect_error_at(BASE "tls_ticket_rotation = 30;\n",
                        3, "tls_ticket_rotation 30s out of range 1m..84h", "tls_ticket_rotation too short");
}

/* Cipher, suite and group strings go through tls_settings_validate(); the
 * message names the object and its line. */
static void test_tls_strings(void) {
        static const struct {
                const char *key, *value, *what;
        } bad[] = {
                { "tls_ciphers", "NO-SUCH-CIPHER", "OpenSSL cipher list" },
                { "tls_ciphersuites", "TLS_NO_SUCH_SUITE", "list of TLS 1.3 cipher suites" },
                { "tls_groups", "P-999", "list of key exchange groups" },
                /* TLS 1.3 names are not TLS 1.2 ciphers and vice versa. */
                { "tls_ciphers", "TLS_AES_128_GCM_SHA256", "OpenSSL cipher list" },
                { "tls_ciphersuites", "ECDHE-RSA-AES128-GCM-SHA256", "list of TLS 1.3 cipher suites" },
        };
        char text[1024], what[256];

        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                snprintf(text, sizeof(text),
                         BASE_POLICY
                         "\n"
                         "listeners = ( { name = \"inbound\"; address = \"::\"; port = 25; default_policy = \"P\";\n"
                         "  %s = \"%s\"; } );\n", bad[i].key, bad[i].value);
                snprintf(what, sizeof(what), "listener 'inbound': %s \"%s\" is not a valid %s",
                         bad[i].key, bad[i].value, bad[i].what);
                expect_error_at(text, 3, what, what);
        }
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                const char *key = bad[i].key + strlen("tls_");

                snprintf(text, sizeof(text), BASE "\n\ntls_client = {\n  %s = \"%s\"; };\n", key, bad[i].value);
                snprintf(what, sizeof(what), "tls_client: %s \"%s\" is not a valid %s", key, bad[i].value, bad[i].what);
                expect_error_at(text, 5, what, what);
        }

        /* Two bad strings in one object: both named. */
        {
                _cleanup_free_ char *path = NULL, *err = NULL;
                Config *c = NULL;

                path = write_conf(BASE "tls_client = { ciphers = \"NOPE\"; groups = \"NOPE\"; };\n");
                is_int(config_load(path, &c, &err), -EINVAL, "two bad TLS strings: refused");
                ok(err && strstr(err, ":3: tls_client: ciphers \"NOPE\"") && strstr(err, ":3: tls_client: groups \"NOPE\""),
                   "two bad TLS strings: both reported");
        }

        /* Valid strings of each kind pass. */
        config_unref(load_ok(BASE_POLICY LISTENER_HEAD
                             "  tls_ciphers = \"ECDHE+AESGCM\"; tls_ciphersuites = \"TLS_AES_256_GCM_SHA384\";\n"
                             "  tls_groups = \"X25519:P-384\"; } );\n"
                             "tls_client = { ciphers = \"ECDHE+CHACHA20:ECDHE+AESGCM\"; groups = \"P-256\"; };\n",
                             "valid cipher strings load"));
}

/* config_validate() repeats every check for configurations built in code. */
static void test_tls_validate(void) {
        _cleanup_free_ char *err = NULL;
        Config *c = NULL;
        char **certs;
        int r;

        r = config_new_default("/srv/gw", &c);
        ok(r == 0 && c, "hand-built: default config");
        if (!c)
                return;

        certs = calloc(3, sizeof(char *));
        if (!certs)
                abort();
        certs[0] = strdup("..");
        certs[1] = strdup("..");
        c->listeners[0].certificates = certs;
        free(c->listeners[0].tls_min_version);
        c->listeners[0].tls_min_version = strdup("TLSv1");
        c->listeners[0].client_ca = strdup("ca.pem");
        c->destinations[0].ca_file = strdup("d.pem");
        c->destinations[0].tls_min_version = strdup("SSLv3");
        c->tls_client.certificate = strdup("a/b");
        c->tls_client.ca_file = strdup("c.pem");
        c->tls_client.min_version = strdup("TLSv1.4");
        c->tls_alert_interval = 0;
        c->tls_ticket_rotation = 0;

        r = config_validate(c, &err);
        is_int(r, -EINVAL, "hand-built: refused");
        ok(err && strstr(err, "<built-in>: listener 'inbound': certificate \"..\" is not a valid certificate name"),
           "hand-built: certificate name");
        ok(err && strstr(err, "<built-in>: listener 'inbound': certificate \"..\" listed twice"),
           "hand-built: duplicate certificate");
        ok(err && strstr(err, "<built-in>: listener 'inbound': tls_min_version \"TLSv1\" is not one of"),
           "hand-built: listener tls_min_version");
        ok(err && strstr(err, "<built-in>: destination 'default': ca_file \"d.pem\" is not an absolute path"),
           "hand-built: destination ca_file");
        ok(err && strstr(err, "<built-in>: destination 'default': tls_min_version \"SSLv3\" is not one of"),
           "hand-built: destination tls_min_version");
        ok(err && strstr(err, "<built-in>: tls_client: certificate \"a/b\" is not a valid certificate name"),
           "hand-built: tls_client certificate");
        ok(err && strstr(err, "<built-in>: tls_client: ca_file \"c.pem\" is not an absolute path"),
           "hand-built: tls_client ca_file");
        ok(err && strstr(err, "<built-in>: tls_client: min_version \"TLSv1.4\" is not one of"),
           "hand-built: tls_client min_version");
        ok(err && strstr(err, "<built-in>: tls_alerts: interval 0us out of range 1m..7d"),
           "hand-built: tls_alerts interval");
        ok(err && strstr(err, "<built-in>: tls_ticket_rotation 0us out of range 1m..84h"),
           "hand-built: tls_ticket_rotation");
        config_unref(c);

        /* client_ca is only checked once the version is fine; on its own: */
        err = mfree(err);
        r = config_new_default("/srv/gw", &c);
        if (r < 0 || !c)
                abort();
        c->listeners[0].client_ca = strdup("ca.pem");
        r = config_validate(c, &err);
        ok(r == -EINVAL && err && strstr(err, "<built-in>: listener 'inbound': client_ca \"ca.pem\" is not an absolute path"),
           "hand-built: listener client_ca");
        config_unref(c);
}

/* ---- HTTPS interfaces, LDAP profiles, admin_group ---- */

static void test_https_ldap(void) {
        _cleanup_strv_free_ char **places = NULL;
        Config *c;
        int r;

        c = load_ok(BASE
                    "admin_group = \"tlsgw-admin\";\n"
                    "https_interfaces = ( { name = \"admin\"; address = \"127.0.0.1\"; port = 8443; },\n"
                    "  { name = \"api\"; address = \"::1\"; port = 2525; hostname = \"API.Example.com\"; certificate = \"web\"; } );\n"
                    "ldap_profiles = ( { name = \"corp\"; uri = \"ldaps://ldap.example.com:636\"; base = \"dc=example,dc=com\";\n"
                    "  bind_dn = \"cn=gw,dc=example,dc=com\"; bind_password = \"s3cret\"; ca_file = \"/etc/ca.pem\"; certificate = \"client\"; },\n"
                    "  { name = \"anon\"; uri = \"ldap://[2001:db8::1]\"; base = \"o=x\"; } );\n",
                    "https interfaces, ldap profiles and admin_group load");
        if (!c)
                return;
        is_str(c->admin_group, "tlsgw-admin", "admin_group");
        ok(c->n_https == 2 && streq(c->https[0].name, "admin") && c->https[0].port == 8443 &&
           streq(c->https[0].hostname, c->hostname) && !c->https[0].certificate,
           "https admin: hostname from top level, demo certificate");
        ok(streq(c->https[1].hostname, "api.example.com") && streq(c->https[1].certificate, "web"),
           "https api: hostname lowercased, certificate");
        ok(c->n_ldap == 2 && streq(c->ldap[0].uri, "ldaps://ldap.example.com:636") &&
           streq(c->ldap[0].bind_password, "s3cret") && streq(c->ldap[0].ca_file, "/etc/ca.pem") &&
           streq(c->ldap[0].certificate, "client") && !c->ldap[1].bind_dn && !c->ldap[1].bind_password,
           "ldap profiles parsed");

        r = config_certificate_users(c, "demo", &places);
        ok(r == 2 && places && streq(places[0], "listener inbound") && streq(places[1], "https admin") && !places[2],
           "demo is used by the listener and https interface without certificates");
        strv_free(places);
        places = NULL;
        r = config_certificate_users(c, "client", &places);
        ok(r == 1 && streq(places[0], "ldap corp"), "client certificate used by ldap corp");
        strv_free(places);
        places = NULL;
        r = config_certificate_users(c, "unused", &places);
        ok(r == 0 && places && !places[0], "unused certificate: no places");
        config_unref(c);

        c = load_ok("listeners = ( { name = \"a\"; address = \"127.0.0.1\"; port = 25; default_policy = \"P\"; certificates = [ \"ec\", \"rsa\" ]; },\n"
                    "  { name = \"b\"; address = \"127.0.0.1\"; port = 26; default_policy = \"P\"; certificate = \"rsa\"; } );\n"
                    BASE_POLICY
                    "tls_client = { certificate = \"rsa\"; };\n",
                    "listeners with certificates");
        if (c) {
                strv_free(places);
                places = NULL;
                r = config_certificate_users(c, "rsa", &places);
                ok(r == 3 && streq(places[0], "listener a") && streq(places[1], "listener b") &&
                   streq(places[2], "tls_client"), "rsa used by two listeners and tls_client");
                strv_free(places);
                places = NULL;
                is_int(config_certificate_users(c, "demo", &places), 0, "no demo user when all listeners name certificates");
                config_unref(c);
        }

        expect_error_at(BASE "https_interfaces = ( { name = \"h\"; address = \"127.0.0.1\"; port = 2525; } );\n",
                        3, "https interface 'h': 127.0.0.1 port 2525 already used by listener 'inbound' (line 1)",
                        "https interface on a listener's address and port");
        expect_error_at(BASE "https_interfaces = ( { name = \"h\"; address = \"::1\"; port = 443; },\n"
                        "  { name = \"h\"; address = \"0:0::1\"; port = 443; } );\n",
                        4, "https interface 'h': duplicate name, first defined on line 3", "duplicate https name");
        expect_error_at(BASE "https_interfaces = ( { name = \"h\"; address = \"::1\"; port = 443; },\n"
                        "  { name = \"i\"; address = \"0:0::1\"; port = 443; } );\n",
                        4, "https interface 'i': 0:0::1 port 443 already used by https interface 'h' (line 3)", "two https interfaces on one socket");
        expect_error_at(BASE "https_interfaces = ( { name = \"h\"; address = \"localhost\"; port = 443; } );\n",
                        3, "https interface 'h': address \"localhost\" is not a numeric", "https address must be numeric");
        expect_error_at(BASE "https_interfaces = ( { name = \"h\"; address = \"::1\"; } );\n",
                        3, "https interface 'h': missing 'port'", "https port required");
        expect_error_at(BASE "https_interfaces = ( { name = \"h\"; address = \"::1\"; port = 443; certificate = \"..\"; } );\n",
                        3, "https interface 'h': certificate \"..\" is not a valid certificate name", "https certificate name");
        expect_error_at(BASE "ldap_profiles = ( { name = \"l\"; uri = \"http://ldap.example.com\"; base = \"o=x\"; } );\n",
                        3, "ldap profile 'l': uri \"http://ldap.example.com\" is not ldap://HOST[:PORT] or ldaps://HOST[:PORT]",
                        "ldap uri scheme");
        expect_error_at(BASE "ldap_profiles = ( { name = \"l\"; uri = \"ldap://ldap.example.com/dc=x\"; base = \"o=x\"; } );\n",
                        3, "ldap profile 'l': uri \"ldap://ldap.example.com/dc=x\" is not", "ldap uri with a path");
        expect_error_at(BASE "ldap_profiles = ( { name = \"l\"; uri = \"ldap://ldap.example.com:99999\"; base = \"o=x\"; } );\n",
                        3, "ldap profile 'l': uri", "ldap uri port out of range");
        expect_error_at(BASE "ldap_profiles = ( { name = \"l\"; uri = \"ldap://x.example\"; base = \"example\"; } );\n",
                        3, "ldap profile 'l': base \"example\" is not a distinguished name", "ldap base must be a DN");
        expect_error_at(BASE "ldap_profiles = ( { name = \"l\"; uri = \"ldap://x.example\"; base = \"o=x\"; bind_password = \"p\"; } );\n",
                        3, "ldap profile 'l': bind_password needs bind_dn", "bind_password without bind_dn");
        expect_error_at(BASE "ldap_profiles = ( { name = \"l\"; uri = \"ldap://x.example\"; base = \"o=x\"; ca_file = \"ca.pem\"; } );\n",
                        3, "ldap profile 'l': ca_file \"ca.pem\" is not an absolute path", "ldap ca_file absolute");
        expect_error_at(BASE "ldap_profiles = ( { name = \"l\"; uri = \"ldap://x.example\"; base = \"o=x\";\n"
                        "  bind_dn = \"cn=a\"; bind_password = \"enc:v1:AAAA\"; } );\n",
                        4, "ldap profile 'l': bind_password is encrypted; import the configuration with its password",
                        "an encrypted secret is not loaded as a password");
        expect_error_at(BASE "ldap_profiles = ( { name = \"l\"; uri = \"ldap://x.example\"; base = \"o=x\"; },\n"
                        "  { name = \"l\"; uri = \"ldap://y.example\"; base = \"o=y\"; } );\n",
                        4, "ldap profile 'l': duplicate name, first defined on line 3", "duplicate ldap name");
        expect_error_at(BASE "ldap_profiles = ( { name = \"l\"; base = \"o=x\"; pass = 1; } );\n",
                        3, "ldap profile 'l': unknown key 'pass'", "ldap unknown key");
        expect_error_at(BASE "admin_group = \"Admins\";\n",
                        3, "admin_group \"Admins\" is not a valid group name", "admin_group must be lowercase");
        expect_error_at(BASE "admin_group = \"1adm\";\n", 3, "admin_group \"1adm\" is not a valid group name",
                        "admin_group must not start with a digit");
        expect_error_at(BASE "admin_group = \"abcdefghijklmnopqrstuvwxyz0123456\";\n", 3, "admin_group \"abcdefghijklmnopqrstuvwxyz0123456\" is not a valid group name",
                        "admin_group at most 32 characters");
}

/* ---- ConfigDocument ---- */

static char *doc_text(const ConfigDocument *d) {
        char *t = NULL;

        if (config_document_to_text(d, CONFIG_SECRETS_KEEP, NULL, &t) < 0)
                abort();
        return t;
}

static char *read_example(void) {
        _cleanup_free_ char *path = NULL;
        const char *root = getenv("TLSGW_SOURCE_ROOT");
        char *buf = NULL;
        size_t len = 0;
        FILE *f;

        if (!root || asprintf(&path, "%s/docs/tlsgw.conf.example", root) < 0)
                return NULL;
        f = fopen(path, "re");
        if (!f)
                return NULL;
        if (getdelim(&buf, &len, '\0', f) < 0) {
                free(buf);
                buf = NULL;
        }
        fclose(f);
        return buf;
}

/* Checks that an edit failed with r and message, and left d as it was. */
static void expect_refused(ConfigDocument *d, const char *before, int r, int want_r, char **errp,
                           const char *want_msg, const char *name) {
        _cleanup_free_ char *after = doc_text(d);
        char *err = *errp;

        *errp = NULL;

        if (r != want_r || !err || !strstr(err, want_msg))
                printf("# r=%d (want %d), message: %s\n# wanted: %s\n", r, want_r, err ?: "(none)", want_msg);
        ok(r == want_r && err && strstr(err, want_msg) && streq(before, after), "%s", name);
        free(err);
}

static void test_document_example(void) {
        _cleanup_free_ char *text = read_example(), *kept = NULL, *rendered = NULL, *err = NULL;
        ConfigDocument *d = NULL, *copy = NULL;
        Config *a = NULL, *b = NULL;
        int r;

        if (!text) {
                tap_skip("document of the example", "TLSGW_SOURCE_ROOT not set (run through meson test)");
                return;
        }
        r = config_document_new(text, "example", NULL, &d, &err);
        if (r < 0)
                printf("# %s\n", err ?: strerror(-r));
        ok(r == 0 && d, "document of docs/tlsgw.conf.example");
        if (!d)
                return;
        kept = doc_text(d);
        ok(streq(kept, text), "unedited document renders as its own text (comments kept)");

        /* Through libconfig's writer and back. */
        r = config_document_copy(d, &copy);
        ok(r == 0 && copy, "copy");
        r = config_document_set_global(copy, &(ConfigValue) { "workers", CONFIG_VALUE_INT, .i = 0 }, 1, NULL);
        ok(r == 0, "no-op edit renders through libconfig");
        rendered = doc_text(copy);
        ok(!strstr(rendered, "# tlsgw.conf"), "edited document is rendered (no comments)");
        r = config_load_string(text, "a", &a, NULL);
        ok(r == 0, "example loads");
        free(err);
        err = NULL;
        r = config_load_string(rendered, "b", &b, &err);
        if (r < 0)
                printf("# %s\n# %s\n", err, rendered);
        ok(r == 0, "rendered example loads");
        if (a && b) {
                const ListenerConfig *la = config_find_listener(a, "inbound"), *lb = config_find_listener(b, "inbound");

                ok(a->n_listeners == b->n_listeners && a->n_policies == b->n_policies &&
                   a->n_sender_groups == b->n_sender_groups && a->n_routes == b->n_routes &&
                   a->n_destinations == b->n_destinations && a->n_https == b->n_https && a->n_ldap == b->n_ldap,
                   "round trip: same object counts");
                ok(la && lb && la->limits.max_message_size == lb->limits.max_message_size &&
                   la->limits.idle_timeout == lb->limits.idle_timeout && la->port == lb->port &&
                   streq(la->certificates[1], lb->certificates[1]), "round trip: listener limits group and certificates");
                ok(a->queue.lifetime == b->queue.lifetime && a->tls_alert_interval == b->tls_alert_interval &&
                   streq(a->tls_client.ca_file, b->tls_client.ca_file) &&
                   a->tls_ticket_rotation == b->tls_ticket_rotation, "round trip: queue, tls_alerts, tls_client groups");
                ok(streq(a->ldap[0].bind_password, b->ldap[0].bind_password) && streq(b->admin_group, "tlsgw-admin") &&
                   b->https[0].port == 8443, "round trip: ldap secret kept, admin_group, https");
        }
        config_unref(a);
        config_unref(b);
        config_document_free(copy);
        config_document_free(d);
}

/* Compares what config_document_from_config() writes of a and of the
 * configuration that text loads into: a fixed point means nothing was
 * lost. */
static void test_document_defaults(void) {
        _cleanup_free_ char *t1 = NULL, *t2 = NULL, *err = NULL;
        ConfigDocument *d1 = NULL, *d2 = NULL;
        Config *a = NULL, *b = NULL;
        int r;

        r = config_new_default("/srv/gw", &a);
        ok(r == 0, "defaults");
        if (r < 0)
                return;
        r = config_document_from_config(a, &d1);
        ok(r == 0 && d1, "document of the defaults");
        if (!d1) {
                config_unref(a);
                return;
        }
        t1 = doc_text(d1);
        r = config_document_load(d1, "defaults", &b, &err);
        if (r < 0)
                printf("# %s\n%s", err, t1);
        ok(r == 0 && b, "document of the defaults loads");
        if (b) {
                ok(streq(a->hostname, b->hostname) && streq(a->state_dir, b->state_dir) &&
                   a->n_listeners == b->n_listeners && streq(a->listeners[0].name, b->listeners[0].name) &&
                   a->listeners[0].port == b->listeners[0].port &&
                   !memcmp(&a->listeners[0].limits, &b->listeners[0].limits, sizeof(SmtpLimits)) &&
                   a->listeners[0].tls == b->listeners[0].tls && !b->listeners[0].certificates &&
                   a->n_policies == b->n_policies && a->policies[1].action == b->policies[1].action &&
                   b->policies[1].tls == -1 &&
                   a->n_sender_groups == b->n_sender_groups && b->sender_groups[0].n_sources == 2 &&
                   !memcmp(&a->sender_groups[0].sources[1], &b->sender_groups[0].sources[1], sizeof(Cidr)) &&
                   streq(b->routes[0].directory, "/srv/gw/mail") && b->routes[0].kind == ROUTE_MAILDIR &&
                   !memcmp(&a->queue, &b->queue, sizeof(QueueConfig)) &&
                   a->tls_alert_interval == b->tls_alert_interval && a->tls_ticket_rotation == b->tls_ticket_rotation &&
                   a->shutdown_timeout == b->shutdown_timeout && b->n_destinations == 1 &&
                   b->destinations[0].max_connections == a->destinations[0].max_connections,
                   "defaults: loaded document equals the built-in Config");
                r = config_document_from_config(b, &d2);
                ok(r == 0, "document of the reloaded defaults");
                if (d2) {
                        t2 = doc_text(d2);
                        ok(streq(t1, t2), "defaults: render -> load -> render is a fixed point");
                }
        }
        config_unref(a);
        config_unref(b);
        config_document_free(d1);
        config_document_free(d2);
}

#define DOC_BASE \
        "listeners = ( { name = \"inbound\"; address = \"127.0.0.1\"; port = 2525; default_policy = \"P\";\n" \
        "                certificates = [ \"ec\" ]; limits = { max_line = 2000; }; } );\n" \
        "policies = ( { name = \"P\"; action = \"accept\"; }, { name = \"Q\"; action = \"relay\"; },\n" \
        "             { name = \"FREE\"; action = \"reject\"; } );\n" \
        "sender_groups = ( { name = \"SG\"; policy = \"Q\"; sources = [ \"10.0.0.0/8\" ]; } );\n" \
        "routes = ( { domain = \"example.com\"; hosts = [ \"10.0.0.1\" ]; } );\n"

static void test_document_edits(void) {
        ConfigDocument *d = NULL;
        Config *c = NULL;
        char *err = NULL;
        int r;

        r = config_document_new(DOC_BASE, "base", NULL, &d, &err);
        if (r < 0)
                printf("# %s\n", err);
        ok(r == 0 && d, "document from text");
        free(err);
        err = NULL;
        if (!d)
                return;

        /* Add. */
        {
                char *domains[] = { "example.com", "Example.NET", NULL };
                const ConfigValue v[] = {
                        { "address", CONFIG_VALUE_STRING, .s = "::1" },
                        { "port", CONFIG_VALUE_INT, .i = 2526 },
                        { "default_policy", CONFIG_VALUE_STRING, .s = "P" },
                        { "accepted_domains", CONFIG_VALUE_STRV, .strv = domains },
                        { "ktls", CONFIG_VALUE_BOOL, .b = false },
                        { "limits.max_message_size", CONFIG_VALUE_INT, .i = 3LL * 1024 * 1024 * 1024 },
                        { "limits.idle_timeout", CONFIG_VALUE_INT, .i = 60 },
                        { "limits.data_timeout", CONFIG_VALUE_STRING, .s = "2m" },
                        { "name", CONFIG_VALUE_STRING, .s = "second" },
                };
                const ListenerConfig *l;

                r = config_document_add(d, CONFIG_KIND_LISTENER, "second", v, ELEMENTSOF(v), &err);
                if (r < 0)
                        printf("# %s\n", err);
                ok(r == 0 && !err, "add listener with strv, bool, 64-bit int, duration as int and string");
                r = config_document_load(d, "t", &c, NULL);
                l = c ? config_find_listener(c, "second") : NULL;
                ok(l && l->port == 2526 && !l->ktls && streq(l->accepted_domains[1], "example.net") &&
                   l->limits.max_message_size == 3ULL * 1024 * 1024 * 1024 && l->limits.idle_timeout == 60 * USEC_PER_SEC &&
                   l->limits.data_timeout == 120 * USEC_PER_SEC && l->limits.max_line == 1000,
                   "added listener loads with its values");
                config_unref(c);
                c = NULL;
        }
        {
                _cleanup_free_ char *before = doc_text(d);

                r = config_document_add(d, CONFIG_KIND_LISTENER, "second", NULL, 0, &err);
                expect_refused(d, before, r, -EEXIST, &err, "listener 'second' already exists", "add of an existing name: -EEXIST");
                r = config_document_add(d, CONFIG_KIND_ROUTE, "EXAMPLE.com",
                                        &(ConfigValue) { "maildir", CONFIG_VALUE_STRING, .s = "/m" }, 1, &err);
                expect_refused(d, before, r, -EEXIST, &err, "route 'EXAMPLE.com' already exists",
                               "route domains compare case-insensitively");
                r = config_document_add(d, CONFIG_KIND_LISTENER, "third", (const ConfigValue[]) {
                                { "address", CONFIG_VALUE_STRING, .s = "127.0.0.1" },
                                { "port", CONFIG_VALUE_INT, .i = 70000 },
                                { "default_policy", CONFIG_VALUE_STRING, .s = "P" } }, 3, &err);
                expect_refused(d, before, r, -EINVAL, &err, "listener 'third': port 70000 out of range 1..65535",
                               "add with a bad port: the validation message, nothing changed");
                r = config_document_add(d, CONFIG_KIND_LISTENER, "third", (const ConfigValue[]) {
                                { "address", CONFIG_VALUE_STRING, .s = "127.0.0.1" },
                                { "port", CONFIG_VALUE_INT, .i = 70000 } }, 2, &err);
                ok(r == -EINVAL && err && !strstr(err, "pending") && strstr(err, "listener 'third': missing 'default_policy'") &&
                   strstr(err, "listener 'third': port 70000"), "all problems reported, without the 'pending:LINE:' prefix");
                free(err);
                err = NULL;
                r = config_document_add(d, CONFIG_KIND_LISTENER, "third", (const ConfigValue[]) {
                                { "address", CONFIG_VALUE_STRING, .s = "127.0.0.1" },
                                { "port", CONFIG_VALUE_INT, .i = 2525 },
                                { "default_policy", CONFIG_VALUE_STRING, .s = "P" } }, 3, &err);
                expect_refused(d, before, r, -EINVAL, &err, "listener 'third': 127.0.0.1 port 2525 already used by listener 'inbound'",
                               "add of a listener on a used address");
                r = config_document_add(d, CONFIG_KIND_LISTENER, "bad name!", (const ConfigValue[]) {
                                { "address", CONFIG_VALUE_STRING, .s = "127.0.0.1" },
                                { "port", CONFIG_VALUE_INT, .i = 2599 },
                                { "default_policy", CONFIG_VALUE_STRING, .s = "P" } }, 3, &err);
                expect_refused(d, before, r, -EINVAL, &err, "invalid name \"bad name!\"", "add with an invalid name");
                r = config_document_add(d, CONFIG_KIND_POLICY, "X", (const ConfigValue[]) {
                                { "action", CONFIG_VALUE_STRING, .s = "accept" },
                                { "name", CONFIG_VALUE_STRING, .s = "Y" } }, 2, &err);
                expect_refused(d, before, r, -EINVAL, &err, "policy 'X': 'name' cannot be changed", "add with a different name in the values");
                r = config_document_add(d, CONFIG_KIND_POLICY, "X", (const ConfigValue[]) {
                                { "action", CONFIG_VALUE_STRING, .s = "accept" },
                                { "Bad-Key", CONFIG_VALUE_INT, .i = 1 } }, 2, &err);
                expect_refused(d, before, r, -EINVAL, &err, "policy 'X': invalid key \"Bad-Key\"", "invalid key");
                r = config_document_add(d, CONFIG_KIND_POLICY, "X", (const ConfigValue[]) {
                                { "action", CONFIG_VALUE_STRING, .s = "accept" },
                                { "colour", CONFIG_VALUE_STRING, .s = "red" } }, 2, &err);
                expect_refused(d, before, r, -EINVAL, &err, "policy 'X': unknown key 'colour'", "unknown key from validation");
                r = config_document_add(d, CONFIG_KIND_POLICY, "X", (const ConfigValue[]) {
                                { "action", CONFIG_VALUE_STRING, .s = "accept" },
                                { "a.b.c.d", CONFIG_VALUE_INT, .i = 1 } }, 2, &err);
                expect_refused(d, before, r, -EINVAL, &err, "invalid key \"a.b.c.d\"", "keys nest at most three deep");
                r = config_document_set(d, CONFIG_KIND_LISTENER, "inbound",
                                        &(ConfigValue) { "port.x", CONFIG_VALUE_INT, .i = 1 }, 1, &err);
                expect_refused(d, before, r, -EINVAL, &err, "listener 'inbound': 'port' is not a group", "dotted key into a value");
                r = config_document_add(d, CONFIG_KIND_HTTPS, "web", (const ConfigValue[]) {
                                { "address", CONFIG_VALUE_STRING, .s = "127.0.0.1" },
                                { "port", CONFIG_VALUE_INT, .i = 2525 } }, 2, &err);
                expect_refused(d, before, r, -EINVAL, &err, "https interface 'web': 127.0.0.1 port 2525 already used by listener 'inbound'",
                               "https interface on a listener's socket refused");
                r = config_document_add(d, CONFIG_KIND_LDAP, "dir", (const ConfigValue[]) {
                                { "uri", CONFIG_VALUE_STRING, .s = "ldap:/x" },
                                { "base", CONFIG_VALUE_STRING, .s = "o=x" } }, 2, &err);
                expect_refused(d, before, r, -EINVAL, &err, "ldap profile 'dir': uri \"ldap:/x\" is not", "invalid ldap uri refused");
                r = config_document_add(d, CONFIG_KIND_DESTINATION, "not a domain", NULL, 0, &err);
                expect_refused(d, before, r, -EINVAL, &err, "is not a valid domain name", "invalid destination domain");
                r = config_document_add(d, CONFIG_KIND_SENDER_GROUP, "G", (const ConfigValue[]) {
                                { "policy", CONFIG_VALUE_STRING, .s = "P" },
                                { "sources", CONFIG_VALUE_STRV, .strv = (char *[]) { "10.0.0.1/8", NULL } } }, 2, &err);
                expect_refused(d, before, r, -EINVAL, &err, "sender group 'G': invalid source \"10.0.0.1/8\"", "invalid address range");
                is_int(config_document_add(d, _CONFIG_KIND_MAX, "x", NULL, 0, NULL), -EINVAL, "invalid kind");
        }

        /* Set. */
        {
                _cleanup_free_ char *before = NULL;
                const ListenerConfig *l;

                r = config_document_set(d, CONFIG_KIND_LISTENER, "inbound", (const ConfigValue[]) {
                                { "limits.max_line", CONFIG_VALUE_UNSET },
                                { "certificate", CONFIG_VALUE_STRING, .s = "rsa" },
                                { "hostname", CONFIG_VALUE_STRING, .s = "mx.example.org" },
                                { "limits.max_errors", CONFIG_VALUE_INT, .i = 5 } }, 4, &err);
                if (r < 0)
                        printf("# %s\n", err);
                ok(r == 0, "set: unset a nested key, certificate replaces certificates, new nested key");
                config_document_load(d, "t", &c, NULL);
                l = c ? config_find_listener(c, "inbound") : NULL;
                ok(l && l->limits.max_line == 1000 && l->limits.max_errors == 5 && streq(l->certificates[0], "rsa") &&
                   !l->certificates[1] && streq(l->hostname, "mx.example.org"), "set values load");
                config_unref(c);
                c = NULL;

                r = config_document_set(d, CONFIG_KIND_ROUTE, "Example.COM",
                                        &(ConfigValue) { "maildir", CONFIG_VALUE_STRING, .s = "/var/mail/x" }, 1, &err);
                ok(r == 0, "set: route switched from hosts to maildir in one edit");
                config_document_load(d, "t", &c, NULL);
                ok(c && config_find_route(c, "example.com")->kind == ROUTE_MAILDIR, "route is now maildir");
                config_unref(c);
                c = NULL;

                before = doc_text(d);
                r = config_document_set(d, CONFIG_KIND_LISTENER, "nope",
                                        &(ConfigValue) { "port", CONFIG_VALUE_INT, .i = 1 }, 1, &err);
                expect_refused(d, before, r, -ENOENT, &err, "no listener 'nope'", "set of a missing name: -ENOENT");
                r = config_document_set(d, CONFIG_KIND_LISTENER, "inbound",
                                        &(ConfigValue) { "name", CONFIG_VALUE_STRING, .s = "other" }, 1, &err);
                expect_refused(d, before, r, -EINVAL, &err, "listener 'inbound': 'name' cannot be changed", "rename refused");
                r = config_document_set(d, CONFIG_KIND_LISTENER, "inbound",
                                        &(ConfigValue) { "tls", CONFIG_VALUE_STRING, .s = "sometimes" }, 1, &err);
                expect_refused(d, before, r, -EINVAL, &err, "listener 'inbound': tls \"sometimes\" is not one of",
                               "bad enum value");
                r = config_document_set(d, CONFIG_KIND_LISTENER, "inbound",
                                        &(ConfigValue) { "address", CONFIG_VALUE_UNSET }, 1, &err);
                expect_refused(d, before, r, -EINVAL, &err, "listener 'inbound': missing 'address'", "unsetting a required key");
                r = config_document_set(d, CONFIG_KIND_LISTENER, "inbound",
                                        &(ConfigValue) { "default_policy", CONFIG_VALUE_STRING, .s = "NOPE" }, 1, &err);
                expect_refused(d, before, r, -EINVAL, &err, "listener 'inbound': default_policy 'NOPE' is not a defined policy",
                               "reference to a missing policy");
                r = config_document_set(d, CONFIG_KIND_LISTENER, "inbound",
                                        &(ConfigValue) { "port", CONFIG_VALUE_INT, .i = 5000000000LL }, 1, &err);
                expect_refused(d, before, r, -EINVAL, &err, "port 5000000000 out of range 1..65535", "64-bit port refused");
        }

        /* Delete. */
        {
                _cleanup_free_ char *before = doc_text(d);

                r = config_document_delete(d, CONFIG_KIND_POLICY, "Q", &err);
                expect_refused(d, before, r, -EBUSY, &err, "policy 'Q' is in use by sender group 'SG'", "delete of a policy in use");
                r = config_document_delete(d, CONFIG_KIND_POLICY, "P", &err);
                expect_refused(d, before, r, -EBUSY, &err, "policy 'P' is in use by listener 'inbound', listener 'second'",
                               "delete of a default_policy names every listener");
                r = config_document_delete(d, CONFIG_KIND_POLICY, "NOPE", &err);
                expect_refused(d, before, r, -ENOENT, &err, "no policy 'NOPE'", "delete of a missing name: -ENOENT");
                r = config_document_delete(d, CONFIG_KIND_POLICY, "FREE", &err);
                ok(r == 0 && !err, "delete of an unused policy");
                r = config_document_delete(d, CONFIG_KIND_LISTENER, "second", &err);
                ok(r == 0, "delete of a listener");
                free(before);
                before = doc_text(d);
                r = config_document_delete(d, CONFIG_KIND_LISTENER, "inbound", &err);
                expect_refused(d, before, r, -EINVAL, &err, "no listeners defined, at least one is required",
                               "delete of the last listener refused by validation");
                ok(!strstr(before, "FREE") && !strstr(before, "second"), "deleted objects are gone");
        }

        /* Globals. */
        {
                _cleanup_free_ char *before = NULL;
                char *dns[] = { "192.0.2.53", NULL };

                r = config_document_set_global(d, (const ConfigValue[]) {
                                { "hostname", CONFIG_VALUE_STRING, .s = "gw.example.com" },
                                { "queue.retry_min", CONFIG_VALUE_INT, .i = 30 },
                                { "tls_client.ca_file", CONFIG_VALUE_STRING, .s = "/etc/ssl/ca.pem" },
                                { "tls_alerts.enabled", CONFIG_VALUE_BOOL, .b = false },
                                { "admin_group", CONFIG_VALUE_STRING, .s = "tlsgw-admin" },
                                { "dns_servers", CONFIG_VALUE_STRV, .strv = dns } }, 6, &err);
                if (r < 0)
                        printf("# %s\n", err);
                ok(r == 0, "set_global: top-level keys and groups");
                config_document_load(d, "t", &c, NULL);
                ok(c && streq(c->hostname, "gw.example.com") && c->queue.retry_min == 30 * USEC_PER_SEC &&
                   streq(c->tls_client.ca_file, "/etc/ssl/ca.pem") && !c->tls_alert_enabled &&
                   streq(c->admin_group, "tlsgw-admin") && streq(c->dns_servers[0], "192.0.2.53"),
                   "global values load");
                config_unref(c);
                c = NULL;

                before = doc_text(d);
                r = config_document_set_global(d, &(ConfigValue) { "queue.retry_min", CONFIG_VALUE_STRING, .s = "2h" }, 1, &err);
                expect_refused(d, before, r, -EINVAL, &err, "queue: retry_min 2h must not be 0 or longer than retry_max 1h",
                               "set_global checked against the whole document");
                r = config_document_set_global(d, &(ConfigValue) { "listeners", CONFIG_VALUE_UNSET }, 1, &err);
                expect_refused(d, before, r, -EINVAL, &err, "'listeners' is changed by adding, setting and deleting its listener objects",
                               "object lists are not globals");
                r = config_document_set_global(d, &(ConfigValue) { "admin_group", CONFIG_VALUE_STRING, .s = "Wheel" }, 1, &err);
                expect_refused(d, before, r, -EINVAL, &err, "admin_group \"Wheel\" is not a valid group name", "bad admin_group");
                r = config_document_set_global(d, &(ConfigValue) { "hostname", CONFIG_VALUE_STRING, .s = "a\"b\\c\n" }, 1, &err);
                expect_refused(d, before, r, -EINVAL, &err, "hostname \"a\"b\\c\\x0a\" is not a valid domain name",
                               "strings with quotes and control characters survive the writer");
                r = config_document_set_global(d, &(ConfigValue) { "tls_client.ca_file", CONFIG_VALUE_UNSET }, 1, &err);
                ok(r == 0, "unset a key inside a group");
                r = config_document_set_global(d, &(ConfigValue) { "tls_alerts", CONFIG_VALUE_UNSET }, 1, &err);
                ok(r == 0, "unset a whole group");
                free(before);
                before = doc_text(d);
                ok(!strstr(before, "tls_alerts") && !strstr(before, "/etc/ssl/ca.pem"), "unset keys are gone");
        }
        config_document_free(d);
}

static void test_document_refusals(void) {
        ConfigDocument *d = NULL;
        char *err = NULL;
        int r;

        r = config_document_new("listeners = ( { name = \"x\"; } );\n", "import.conf", NULL, &d, &err);
        ok(r == -EINVAL && !d && err && strstr(err, "import.conf:1: listener 'x': missing 'address'"),
           "document_new refuses a text that does not validate, with file:line");
        free(err);
        err = NULL;
        r = config_document_new(BASE "port = 4294967297;\n", "import.conf", NULL, &d, &err);
        ok(r == -EINVAL && !d && err && strstr(err, "import.conf:3: integer 4294967297 does not fit in 32 bits"),
           "document_new makes the same literal checks as loading");
        free(err);
        err = NULL;
        r = config_document_new(BASE "x = (;\n", "import.conf", NULL, &d, &err);
        ok(r == -EINVAL && !d && err && strstr(err, "import.conf:3: syntax error"), "document_new: syntax error");
        free(err);
        err = NULL;
        r = config_document_new(BASE "@include \"x.conf\"\n", "import.conf", NULL, &d, &err);
        ok(r == -EINVAL && !d && err && strstr(err, "@include is not supported here"), "document_new: no @include");
        free(err);
        err = NULL;
        is_str(config_kind_to_string(CONFIG_KIND_SENDER_GROUP), "sendergroup", "kind to string");
        is_int(config_kind_from_string("ldap"), CONFIG_KIND_LDAP, "kind from string");
        is_int(config_kind_from_string("listeners"), -EINVAL, "unknown kind");
        ok(config_kind_to_string(_CONFIG_KIND_MAX) == NULL, "kind out of range");
}

#define SECRET "pa ss\"w0rd"
#define LDAP_DOC BASE \
        "ldap_profiles = ( { name = \"corp\"; uri = \"ldap://ldap.example.com\"; base = \"dc=example,dc=com\";\n" \
        "  bind_dn = \"cn=gw,dc=example,dc=com\"; bind_password = \"pa ss\\\"w0rd\"; },\n" \
        "  { name = \"anon\"; uri = \"ldaps://ldap2.example.com\"; base = \"o=x\"; } );\n"

static void test_document_secrets(void) {
        _cleanup_free_ char *redacted = NULL, *enc = NULL, *tampered = NULL, *plain = NULL, *again = NULL;
        ConfigDocument *d = NULL, *d2 = NULL;
        Config *c = NULL;
        char *err = NULL, *p;
        int r;

        r = config_document_new(LDAP_DOC, "ldap.conf", NULL, &d, &err);
        if (r < 0)
                printf("# %s\n", err);
        ok(r == 0, "document with a bind_password");
        if (!d)
                return;

        r = config_document_to_text(d, CONFIG_SECRETS_REDACT, NULL, &redacted);
        ok(r == 0 && !strstr(redacted, "w0rd") && !strstr(redacted, "bind_password") && strstr(redacted, "bind_dn"),
           "REDACT leaves the secret out");
        r = config_load_string(redacted, "r", &c, NULL);
        ok(r == 0 && c && !c->ldap[0].bind_password, "redacted text loads without the secret");
        config_unref(c);
        c = NULL;

        is_int(config_document_to_text(d, CONFIG_SECRETS_ENCRYPT, NULL, &enc), -EINVAL, "ENCRYPT needs a password");
        r = config_document_to_text(d, CONFIG_SECRETS_ENCRYPT, "correct horse", &enc);
        ok(r == 0 && enc && !strstr(enc, "w0rd") && strstr(enc, "bind_password = \"enc:v1:"), "ENCRYPT writes enc:v1:");
        if (!enc) {
                config_document_free(d);
                return;
        }
        r = config_load_string(enc, "enc.conf", &c, &err);
        ok(r == -EINVAL && err && strstr(err, "bind_password is encrypted"), "an encrypted text does not load as a file");
        free(err);
        err = NULL;

        r = config_document_new(enc, "enc.conf", NULL, &d2, &err);
        ok(r == -EKEYREJECTED && !d2 && err &&
           streq(err, "enc.conf: the configuration has encrypted secrets; a password is needed"),
           "encrypted secrets without a password: -EKEYREJECTED");
        free(err);
        err = NULL;
        r = config_document_new(enc, "enc.conf", "wrong", &d2, &err);
        ok(r == -EKEYREJECTED && !d2 && err && streq(err, "enc.conf: wrong password for the encrypted secrets"),
           "wrong password: -EKEYREJECTED");
        free(err);
        err = NULL;

        /* Flip one bit of the ciphertext: the tag must catch it. */
        tampered = strdup(enc);
        p = strstr(tampered, "enc:v1:") + strlen("enc:v1:") + 40;
        *p = *p == 'A' ? 'B' : 'A';
        r = config_document_new(tampered, "enc.conf", "correct horse", &d2, &err);
        ok(r == -EKEYREJECTED && !d2, "tampered secret: -EKEYREJECTED");
        free(err);
        err = NULL;
        free(tampered);
        tampered = strdup(enc);
        p = strstr(tampered, "enc:v1:") + strlen("enc:v1:");
        memmove(p, p + 8, strlen(p + 8) + 1);
        r = config_document_new(tampered, "enc.conf", "correct horse", &d2, &err);
        ok(r == -EKEYREJECTED && !d2, "truncated secret: -EKEYREJECTED");
        free(err);
        err = NULL;

        r = config_document_new(enc, "enc.conf", "correct horse", &d2, &err);
        ok(r == 0 && d2, "right password decrypts");
        if (d2) {
                plain = doc_text(d2);
                ok(strstr(plain, "bind_password = \"pa ss\\\"w0rd\""), "KEEP writes the decrypted secret as it is");
                r = config_document_load(d2, "t", &c, NULL);
                ok(r == 0 && c && streq(c->ldap[0].bind_password, SECRET) && !c->ldap[1].bind_password,
                   "decrypted document loads with the secret");
                config_unref(c);
                c = NULL;
                r = config_document_to_text(d2, CONFIG_SECRETS_ENCRYPT, "correct horse", &again);
                ok(r == 0 && !streq(again, enc), "each encryption uses a fresh salt and IV");
                config_document_free(d2);
                d2 = NULL;
        }
        r = config_document_new(LDAP_DOC, "ldap.conf", "unused", &d2, &err);
        ok(r == 0 && d2, "a password without encrypted values is harmless");
        config_document_free(d2);
        config_document_free(d);
}

static void remove_tmpdir(void) {
        DIR *d = opendir(tmpdir);
        struct dirent *de;

        if (!d)
                return;
        while ((de = readdir(d)))
                if (de->d_name[0] != '.')
                        (void) unlinkat(dirfd(d), de->d_name, 0);
        closedir(d);
        (void) rmdir(tmpdir);
}

int main(void) {
        if (!mkdtemp(tmpdir)) {
                perror("mkdtemp");
                return EXIT_FAILURE;
        }

        test_enums();
        test_example();
        test_defaults();
        test_minimal();
        test_errors();
        test_files();
        test_lookups();
        test_tls();
        test_tls_errors();
        test_tls_strings();
        test_tls_validate();
        test_https_ldap();
        test_document_example();
        test_document_defaults();
        test_document_edits();
        test_document_refusals();
        test_document_secrets();

        remove_tmpdir();
        return tap_done();
}
