/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * gwctl queue (list, show, flush, delete) and gwctl connections: the
 * org.tlsgw.Gateway1.Queue and .Diagnostics interfaces. Listing is open
 * to everyone; flush and delete need an administrator (the daemon
 * decides). Returns exit codes.
 */

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "gwctl.h"
#include "output.h"
#include "util/parse.h"

static int parse_mid(const char *s, uint64_t *ret) {
        if (parse_uint64(s, ret) < 0 || *ret == 0)
                return gw_usage("'%s' is not a message id (MID)", s);
        return 0;
}

static int verb_queue_list(int argc, char *argv[]) {
        static const OutputColumn columns[] = {
                { "MID",          OUTPUT_NUMBER, 0, OUTPUT_RIGHT },
                { "SENDER",       OUTPUT_STRING, 0, OUTPUT_TRUNC },
                { "STATE",        OUTPUT_STRING, 0, 0 },
                { "ARRIVAL",      OUTPUT_TIME,   0, 0 },
                { "PENDING",      OUTPUT_NUMBER, 0, OUTPUT_RIGHT },
                { "NEXT-ATTEMPT", OUTPUT_STRING, 0, 0 },
                { "LAST-REPLY",   OUTPUT_STRING, 0, OUTPUT_TRUNC },
        };
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_output_ Output *o = NULL;
        int r;

        if (argc > 1)
                return gw_usage("'queue list' takes no arguments");
        r = gw_call(GW_BUS_PATH, GW_IFACE_QUEUE, "ListQueue", &reply, NULL);
        if (r != 0)
                return r;
        r = output_new("queue", columns, ELEMENTSOF(columns), &o);
        if (r >= 0)
                r = sd_bus_message_enter_container(reply, 'a', "(tsstuss)");
        while (r >= 0) {
                const char *sender, *state, *next, *last;
                uint64_t mid, arrival;
                uint32_t pending;

                r = sd_bus_message_read(reply, "(tsstuss)", &mid, &sender, &state, &arrival, &pending, &next, &last);
                if (r <= 0)
                        break;
                r = output_row(o);
                if (r >= 0)
                        r = output_cell_u64(o, 0, mid);
                if (r >= 0)
                        r = output_cell(o, 1, isempty(sender) && !arg_json ? "<>" : sender);
                if (r >= 0)
                        r = output_cell(o, 2, state);
                if (r >= 0)
                        r = output_cell_time(o, 3, arrival);
                if (r >= 0)
                        r = output_cell_u64(o, 4, pending);
                if (r >= 0)
                        r = output_cell(o, 5, next);
                if (r >= 0)
                        r = output_cell(o, 6, last);
        }
        if (r >= 0)
                r = output_print(o);
        return r < 0 ? gw_bad_reply(r) : GWCTL_EXIT_OK;
}

typedef struct Recipient {
        char *address, *state, *last_reply;
        uint32_t attempts;
        uint64_t next_attempt;
} Recipient;

static int read_recipients(sd_bus_message *reply, Recipient **rcpts, size_t *n) {
        int r;

        r = sd_bus_message_enter_container(reply, 'v', "a(ssuts)");
        if (r >= 0)
                r = sd_bus_message_enter_container(reply, 'a', "(ssuts)");
        while (r >= 0) {
                const char *address, *state, *last;
                uint32_t attempts;
                uint64_t next;
                Recipient *nr;

                r = sd_bus_message_read(reply, "(ssuts)", &address, &state, &attempts, &next, &last);
                if (r <= 0)
                        break;
                nr = realloc(*rcpts, (*n + 1) * sizeof(Recipient));
                if (!nr)
                        return -ENOMEM;
                *rcpts = nr;
                nr[*n] = (Recipient) {
                        .address = strdup(address), .state = strdup(state), .last_reply = strdup(last),
                        .attempts = attempts, .next_attempt = next,
                };
                if (!nr[(*n)++].last_reply || !nr[*n - 1].address || !nr[*n - 1].state)
                        return -ENOMEM;
        }
        if (r >= 0)
                r = sd_bus_message_exit_container(reply);
        if (r >= 0)
                r = sd_bus_message_exit_container(reply);
        return r;
}

/* The envelope is a record and the recipients a table; with --json both
 * are one listing, a row per recipient carrying the envelope, so the
 * output stays a single JSON document. */
static int verb_queue_show(int argc, char *argv[]) {
        static const OutputColumn columns[] = {
                { "MID",          OUTPUT_NUMBER, 0, OUTPUT_RIGHT },
                { "SENDER",       OUTPUT_STRING, 0, 0 },
                { "ARRIVAL",      OUTPUT_TIME,   0, 0 },
                { "SIZE",         OUTPUT_NUMBER, 0, 0 },
                { "RECIPIENT",    OUTPUT_STRING, 0, 0 },
                { "STATE",        OUTPUT_STRING, 0, 0 },
                { "ATTEMPTS",     OUTPUT_NUMBER, 0, OUTPUT_RIGHT },
                { "NEXT-ATTEMPT", OUTPUT_TIME,   0, 0 },
                { "LAST-REPLY",   OUTPUT_STRING, 0, OUTPUT_WRAP },
        };
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_output_ Output *record = NULL, *table = NULL;
        _cleanup_free_ char *sender = NULL;
        Recipient *rcpts = NULL;
        uint64_t mid, arrival = 0, size = 0;
        size_t n_rcpts = 0;
        int r;

        if (argc != 2)
                return gw_usage("'queue show' needs one MID");
        r = parse_mid(argv[1], &mid);
        if (r != 0)
                return r;
        r = gw_call(GW_BUS_PATH, GW_IFACE_QUEUE, "ShowMessage", &reply, "t", mid);
        if (r != 0)
                return r;

        r = output_record_new("message", &record);
        if (r >= 0)
                r = sd_bus_message_enter_container(reply, 'a', "{sv}");
        while (r >= 0) {
                const char *key;

                r = sd_bus_message_enter_container(reply, 'e', "sv");
                if (r <= 0)
                        break;
                r = sd_bus_message_read_basic(reply, 's', &key);
                if (r < 0)
                        break;
                if (streq(key, "recipients"))
                        r = read_recipients(reply, &rcpts, &n_rcpts);
                else {
                        _cleanup_free_ char *v = NULL;
                        char buf[GW_TIME_MAX];
                        const char *shown;

                        r = gw_variant_to_string(reply, &v);
                        if (r < 0)
                                break;
                        shown = v;
                        if (streq(key, "arrival")) {
                                (void) parse_uint64(v, &arrival);
                                shown = gw_format_time(arrival, buf, sizeof buf);
                        } else if (streq(key, "size"))
                                (void) parse_uint64(v, &size);
                        else if (streq(key, "sender")) {
                                free(sender);
                                sender = strdup(v);
                                if (isempty(v))
                                        shown = "<>";
                        }
                        r = output_field(record, key, OUTPUT_STRING, shown);
                }
                if (r >= 0)
                        r = sd_bus_message_exit_container(reply);
        }

        if (r >= 0)
                r = output_new(arg_json ? "message" : "recipients",
                               arg_json ? columns : columns + 4, arg_json ? ELEMENTSOF(columns) : 5, &table);
        for (size_t i = 0; r >= 0 && i < n_rcpts; i++) {
                size_t c = arg_json ? 0 : 4;

                r = output_row(table);
                if (r >= 0 && arg_json) {
                        r = output_cell_u64(table, 0, mid);
                        if (r >= 0)
                                r = output_cell(table, 1, sender);
                        if (r >= 0)
                                r = output_cell_time(table, 2, arrival);
                        if (r >= 0)
                                r = output_cell_u64(table, 3, size);
                }
                if (r >= 0)
                        r = output_cell(table, 4 - c, rcpts[i].address);
                if (r >= 0)
                        r = output_cell(table, 5 - c, rcpts[i].state);
                if (r >= 0)
                        r = output_cell_u64(table, 6 - c, rcpts[i].attempts);
                if (r >= 0)
                        r = output_cell_time(table, 7 - c, rcpts[i].next_attempt);
                if (r >= 0)
                        r = output_cell(table, 8 - c, rcpts[i].last_reply);
        }
        if (r >= 0 && !arg_json) {
                r = output_print(record);
                if (r >= 0)
                        putchar('\n');
        }
        if (r >= 0)
                r = output_print(table);
        for (size_t i = 0; i < n_rcpts; i++) {
                free(rcpts[i].address);
                free(rcpts[i].state);
                free(rcpts[i].last_reply);
        }
        free(rcpts);
        return r < 0 ? gw_bad_reply(r) : GWCTL_EXIT_OK;
}

static int verb_queue_flush(int argc, char *argv[]) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        uint32_t count;
        int r;

        if (argc > 1)
                return gw_usage("'queue flush' takes no arguments");
        r = gw_call(GW_BUS_PATH, GW_IFACE_QUEUE, "FlushQueue", &reply, NULL);
        if (r != 0)
                return r;
        r = sd_bus_message_read(reply, "u", &count);
        if (r < 0)
                return gw_bad_reply(r);
        printf("%" PRIu32 " recipient%s scheduled for delivery now.\n", count, count == 1 ? "" : "s");
        return GWCTL_EXIT_OK;
}

static int verb_queue_delete(int argc, char *argv[]) {
        uint64_t mid;
        int r;

        if (argc < 2)
                return gw_usage("'queue delete' needs at least one MID");
        /* All MIDs are checked before the first is deleted. */
        for (int i = 1; i < argc; i++) {
                r = parse_mid(argv[i], &mid);
                if (r != 0)
                        return r;
        }
        for (int i = 1; i < argc; i++) {
                (void) parse_mid(argv[i], &mid);
                r = gw_call(GW_BUS_PATH, GW_IFACE_QUEUE, "DeleteMessage", NULL, "t", mid);
                if (r != 0)
                        return r;
                printf("Deleted MID %" PRIu64 " (no bounce sent).\n", mid);
        }
        return GWCTL_EXIT_OK;
}

static int verb_connections(int argc, char *argv[]) {
        static const OutputColumn columns[] = {
                { "ICID",     OUTPUT_NUMBER,  0, OUTPUT_RIGHT },
                { "LISTENER", OUTPUT_STRING,  0, 0 },
                { "STATE",    OUTPUT_STRING,  0, 0 },
                { "PEER",     OUTPUT_STRING,  0, 0 },
                { "PORT",     OUTPUT_NUMBER,  0, OUTPUT_RIGHT },
                { "PROTOCOL", OUTPUT_STRING,  0, 0 },
                { "CIPHER",   OUTPUT_STRING,  0, OUTPUT_TRUNC },
                { "CLIENT-CN", OUTPUT_STRING, 0, OUTPUT_TRUNC },
                { "KTLS-TX",  OUTPUT_BOOLEAN, 0, 0 },
                { "KTLS-RX",  OUTPUT_BOOLEAN, 0, 0 },
                { "ULP",      OUTPUT_STRING,  0, OUTPUT_TRUNC },
        };
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_output_ Output *o = NULL;
        int r;

        if (argc > 1)
                return gw_usage("'connections' takes no arguments");
        r = gw_call(GW_BUS_PATH, GW_IFACE_DIAGNOSTICS, "ListConnections", &reply, NULL);
        if (r != 0)
                return r;
        r = output_new("connections", columns, ELEMENTSOF(columns), &o);
        if (r >= 0)
                r = sd_bus_message_enter_container(reply, 'a', "(tsssqsssbbs)");
        while (r >= 0) {
                const char *listener, *state, *peer, *protocol, *cipher, *cn, *ulp;
                uint64_t icid;
                uint16_t port;
                int tx, rx;

                r = sd_bus_message_read(reply, "(tsssqsssbbs)", &icid, &listener, &state, &peer, &port,
                                        &protocol, &cipher, &cn, &tx, &rx, &ulp);
                if (r <= 0)
                        break;
                r = output_row(o);
                if (r >= 0)
                        r = output_cell_u64(o, 0, icid);
                if (r >= 0)
                        r = output_cell(o, 1, listener);
                if (r >= 0)
                        r = output_cell(o, 2, state);
                if (r >= 0)
                        r = output_cell(o, 3, peer);
                if (r >= 0)
                        r = output_cell_u64(o, 4, port);
                if (r >= 0)
                        r = output_cell(o, 5, protocol);
                if (r >= 0)
                        r = output_cell(o, 6, cipher);
                if (r >= 0)
                        r = output_cell(o, 7, cn);
                if (r >= 0)
                        r = output_cell_bool(o, 8, tx);
                if (r >= 0)
                        r = output_cell_bool(o, 9, rx);
                if (r >= 0)
                        r = output_cell(o, 10, ulp);
        }
        if (r >= 0)
                r = output_print(o);
        return r < 0 ? gw_bad_reply(r) : GWCTL_EXIT_OK;
}

const Verb queue_verbs[] = {
        { "queue", "list",   verb_queue_list,   "\tQueued messages" },
        { "queue", "show",   verb_queue_show,   "MID\tEnvelope and per-recipient state of one message" },
        { "queue", "flush",  verb_queue_flush,  "\tRetry every deferred recipient now" },
        { "queue", "delete", verb_queue_delete, "MID...\tRemove messages from the queue (no bounce)" },
        { NULL,    "connections", verb_connections, "\tLive SMTP sessions with peer, TLS state and kernel offload" },
        {}
};
