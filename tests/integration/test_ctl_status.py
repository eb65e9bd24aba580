#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""gwctl status and the global behaviour of gwctl: version, state,
listeners, queue size, pending changes and kTLS availability from the real
daemon on a private system bus, as root and as nobody; --json; exit codes
(0 done, 1 refused, 2 usage, 3 daemon unreachable, 4 denied; gwctl(8)).
"""

import os
import re

from harness import (field, truthy, case, check, check_eq, ctl_gateway, free_port, gwctl, json_record, private_bus,
                     run, Smtp, bus_property, route, send_mail, message, wait_until)

MANAGER = "org.tlsgw.Gateway1.Manager"


def ktls_available():
        try:
                with open("/proc/modules") as f:
                        if re.search(r"(?m)^tls ", f.read()):
                                return True
        except OSError:
                pass
        return os.path.isdir("/sys/module/tls")


@case("status: version, state, listeners, queue, pending, kTLS; table and JSON")
def _(ctx):
        g = ctl_gateway(ctx)
        r = gwctl("status").ok("status")
        version = bus_property(MANAGER, "Version")
        check(re.match(r"\d+\.\d+", str(version)), "Version property", version)
        check(version in r.out, "status shows the version", r)
        check(re.search(r"running", r.out), "status shows the state", r)
        check("inbound" in r.out, "status lists the listener", r)
        rec = json_record(gwctl("--json", "status").ok("status --json"))
        check_eq(field(rec, "version"), version, "JSON version")
        check_eq(field(rec, "state"), "running", "JSON state")
        check("inbound" in str(field(rec, "listeners")), "JSON listeners", rec)
        check_eq(int(field(rec, "queuedmessages")), 0, "JSON queued messages")
        check(not truthy(field(rec, "pendingchanges")), "JSON pending=false", rec)
        kt = field(rec, "ktlsavailable")
        check(kt is not None, "JSON has kTLS availability", rec)
        check_eq(truthy(kt), ktls_available(), "kTLS availability matches the kernel")
        check_eq(field(rec, "configfile"), g.config_path, "config file path")


@case("status follows the daemon: pending owner, listener added, queue size")
def _(ctx):
        dead = free_port()
        g = ctl_gateway(ctx, routes=[route("remote.test", dead)])
        gwctl("policy", "add", "EXTRA", "--action", "relay").ok("stage")
        rec = json_record(gwctl("--json", "status").ok("status"))
        check(truthy(field(rec, "pendingchanges")), "pending shown", rec)
        check_eq(field(rec, "pendingowner"), "root", "pending owner")
        gwctl("abandon").ok("abandon")
        rep = send_mail(g.port, "a@localhost", ["x@remote.test"], message("queued"))
        check_eq(rep[0], 250, "message accepted")

        def queued():
                rec = json_record(gwctl("--json", "status").ok("status"))
                return int(field(rec, "queuedmessages") or 0) >= 1
        check(wait_until(queued, 10, 0.3), "queue size 1 in status (next hop down)")


@case("status as nobody works; --help/--version exit 0; usage errors exit 2, short")
def _(ctx):
        ctl_gateway(ctx)
        r = gwctl("status", user="nobody").ok("status as nobody")
        check("inbound" in r.out, "nobody sees listeners", r)
        json_record(gwctl("--json", "status", user="nobody").ok("status --json as nobody"))
        r = gwctl("--version").ok("--version")
        check(re.search(r"\d+\.\d+", r.out), "--version prints a version", r)
        gwctl("--help").ok("--help")
        for args in (("frobnicate",), ("--frobnicate", "status"), ("status", "extra"), ()):
                r = gwctl(*args)
                r.fails(None, f"gwctl {' '.join(args)}", rc=2)
                check(len(r.err.splitlines()) <= 3, "a usage error is a short message, not the help text", r)
                check(r.err.startswith("gwctl:"), "errors start with 'gwctl:'", r)


@case("no daemon on the bus / no bus at all: exit 3 with a message")
def _(ctx):
        private_bus()
        r = gwctl("status")
        r.fails(r"tlsgw|running|not|connect|bus", "status without a daemon", rc=3)
        r = gwctl("status", env={"DBUS_SYSTEM_BUS_ADDRESS": "unix:path=" + os.path.join(ctx.workdir, "nothing")})
        r.fails(r"bus|connect|no such", "status without a bus", rc=3)
        # The global option naming a bus address (its spelling is gwctl(8)'s).
        m = re.search(r"(--[a-z-]*address)=", gwctl("--help").ok("--help").out)
        if m:
                r = gwctl(m.group(1) + "=unix:path=" + os.path.join(ctx.workdir, "nothing"), "status")
                r.fails(r"bus|connect|no such", f"{m.group(1)} with no bus", rc=3)


@case("status shows a second listener with its address after it is committed")
def _(ctx):
        port2 = free_port()
        ctl_gateway(ctx)
        gwctl("listener", "add", "second", "--address", "127.0.0.1", "--port", port2,
              "--default-policy", "ACCEPTED").ok("listener add")
        gwctl("commit", "-m", "second listener").ok("commit")
        rec = json_record(gwctl("--json", "status").ok("status"))
        check("second" in str(field(rec, "listeners")), "new listener in status", rec)
        with Smtp(port2) as c:
                check_eq(c.greeting[0], 220, "second listener greets")
        check_eq(sorted(bus_property(MANAGER, "Listeners")), ["inbound", "second"], "Listeners property")


if __name__ == "__main__":
        run()
