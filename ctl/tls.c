/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * gwctl tls verify DOMAIN: asks the daemon to connect to DOMAIN the way
 * delivery would (route or MX, EHLO, STARTTLS, handshake, verification,
 * QUIT, no mail) and prints what it found. The test runs in the daemon so
 * that it uses the daemon's routes, CA files and client certificate.
 * Returns an exit code: 0 when TLS was established, 1 otherwise.
 */

#include <stdio.h>
#include <string.h>

#include "gwctl.h"
#include "output.h"
#include "util/parse.h"

/* Delivery waits queue.connect_timeout (30 s) to connect and
 * queue.command_timeout (5 min, RFC 5321 4.5.3.2) per reply; a test
 * should not hang as long, but must outlast a slow MX or two. */
#define TLS_VERIFY_TIMEOUT_USEC (180ULL * USEC_PER_SEC)

static int verb_tls_verify(int argc, char *argv[]) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_output_ Output *o = NULL;
        bool established = false;
        const char *domain;
        sd_bus *b;
        int r;

        if (argc != 2)
                return gw_usage("'tls verify' needs one DOMAIN");
        domain = argv[1];
        if (!domain_is_valid(domain))
                return gw_usage("'%s' is not a valid domain", domain);
        r = gw_new_method(GW_BUS_PATH, GW_IFACE_DIAGNOSTICS, "TlsVerify", &m);
        if (r != 0)
                return r;
        r = sd_bus_message_append(m, "s", domain);
        if (r < 0)
                return gw_fail("cannot build the request: %s", strerror(-r));
        r = gw_bus(&b);
        if (r != 0)
                return r;
        r = sd_bus_call(b, m, TLS_VERIFY_TIMEOUT_USEC, &error, &reply);
        if (r < 0)
                return gw_call_failed(&error, r, NULL);

        r = output_record_new("tls_verify", &o);
        if (r >= 0)
                r = gw_record_add_dict(o, reply);
        if (r >= 0)
                r = output_print(o);
        if (r < 0)
                return gw_bad_reply(r);

        /* Read the answer's protocol once more for the exit code. */
        r = sd_bus_message_rewind(reply, true);
        if (r >= 0)
                r = sd_bus_message_enter_container(reply, 'a', "{sv}");
        while (r > 0) {
                const char *key, *value;

                r = sd_bus_message_enter_container(reply, 'e', "sv");
                if (r <= 0)
                        break;
                r = sd_bus_message_read_basic(reply, 's', &key);
                if (r >= 0 && streq(key, "protocol") &&
                    sd_bus_message_read(reply, "v", "s", &value) > 0)
                        established = !isempty(value);
                else if (r >= 0)
                        r = sd_bus_message_skip(reply, "v");
                if (r >= 0)
                        r = sd_bus_message_exit_container(reply);
                if (r >= 0)
                        r = 1;
        }
        return established ? GWCTL_EXIT_OK : GWCTL_EXIT_FAILED;
}

const Verb tls_verbs[] = {
        { "tls", "verify", verb_tls_verify, "DOMAIN\tConnect as delivery would; report STARTTLS, protocol, cipher, chain, name match, kTLS" },
        {}
};
