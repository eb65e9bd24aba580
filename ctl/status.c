/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * gwctl status: the manager's properties (version, state, listeners,
 * queue, pending changes, kTLS) in one record. Read-only, open to every
 * user. Returns an exit code.
 */

#include <string.h>

#include "gwctl.h"
#include "output.h"

static int verb_status(int argc, char *argv[]) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_output_ Output *o = NULL;
        int r;

        if (argc > 1)
                return gw_usage("'status' takes no arguments");
        r = gw_call(GW_BUS_PATH, "org.freedesktop.DBus.Properties", "GetAll", &reply, "s", GW_IFACE_MANAGER);
        if (r != 0)
                return r;
        r = output_record_new("status", &o);
        if (r >= 0)
                r = gw_record_add_dict(o, reply);
        if (r < 0)
                return gw_bad_reply(r);
        r = output_print(o);
        return r < 0 ? gw_bad_reply(r) : GWCTL_EXIT_OK;
}

const Verb status_verbs[] = {
        { NULL, "status", verb_status, "\tDaemon state, version, listeners, queue, pending changes, kTLS" },
        {}
};
