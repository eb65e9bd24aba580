#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""gwctl queue list/show/flush/delete and gwctl connections.

A message deferred because its next hop is down shows up in `queue list`
and `queue show` with sender, recipients, attempts and last reply; `queue
flush` delivers it at once when the hop is back (the retry timer alone
would wait an hour); `queue delete` removes it from the queue and the
spool without a bounce. `connections` lists live sessions, a STARTTLS one
with its protocol and cipher as the kernel and the daemon see them; the
kernel offload columns are empty where the kernel has no TLS ULP.
"""

import os
import re
import time

from harness import (case, check, check_eq, ctl_gateway, ctl_refused, field, free_port, gwctl, json_record,
                     json_rows, message, queued_mid, route, row_by, run, send_mail, truthy, wait_until, Smtp)
from tlspeer import client_context, local_port, starttls

# Long retry timers: only `queue flush` can make the retry happen in time.
SLOW_QUEUE = {"retry_min": "1h", "retry_max": "2h", "lifetime": "5d"}


def queue_rows():
        return json_rows(gwctl("--json", "queue", "list").ok("queue list --json"), "queue list")


def deferred_gateway(ctx, dead):
        g = ctl_gateway(ctx, routes=[route("remote.test", dead)], queue=SLOW_QUEUE)
        rep = send_mail(g.port, "a@localhost", ["x@remote.test", "y@remote.test"], message("deferred"))
        mid = queued_mid(rep)

        def attempted():
                r = row_by(queue_rows(), "mid", mid)
                return r if r and (field(r, "last-reply") or field(r, "next-attempt") not in (None, "", "-")) else None
        row = wait_until(attempted, 15, 0.3)
        check(row, f"MID {mid} deferred after a first attempt", queue_rows())
        return g, mid, row


def ktls_available():
        return os.path.isdir("/sys/module/tls")


@case("queue list/show: a deferred message with sender, recipients, attempts and last reply")
def _(ctx):
        dead = free_port()
        g, mid, row = deferred_gateway(ctx, dead)
        check_eq(field(row, "sender"), "a@localhost", "sender")
        check_eq(int(field(row, "pending")), 2, "recipients pending")
        t = gwctl("queue", "list").ok("queue list").out
        check(re.search(rf"(?m)^\s*{mid}\s.*a@localhost", t), "table row", t)
        s = gwctl("queue", "show", mid).ok("queue show")
        for want in ("x@remote.test", "y@remote.test", "a@localhost"):
                check(want in s.out, f"queue show has {want}", s)
        rec = json_record(gwctl("--json", "queue", "show", mid).ok("queue show --json"))
        check("x@remote.test" in str(rec), "JSON record has the recipients", rec)
        check(re.search(r"attempt", str(rec), re.I) or any("attempt" in k.lower() for k in rec),
              "attempts shown", rec)
        ctl_refused(g, r"999999|not|queued", "queue", "show", "999999")
        gwctl("queue", "show", "abc").fails(None, "queue show abc", rc=2)
        gwctl("queue", "list", user="nobody").ok("queue list as nobody")


@case("queue flush: deferred recipients delivered at once when the hop is back")
def _(ctx):
        dead = free_port()
        g, mid, _ = deferred_gateway(ctx, dead)
        sink = ctx.sink(port=dead)
        time.sleep(1.0)
        check_eq(len(sink.transactions), 0, "no retry before the flush (retry_min 1h)")
        r = gwctl("queue", "flush").ok("queue flush")
        check(re.search(r"\b2\b", r.out), "flush reports the 2 recipients made due", r)
        check(sink.wait(1, 20), "delivered after flush", sink.transactions)
        check(wait_until(lambda: row_by(queue_rows(), "mid", mid) is None, 15, 0.3), "queue empty after delivery",
              queue_rows())


@case("queue delete: gone from queue and spool, no bounce; unknown MID refused")
def _(ctx):
        dead = free_port()
        g, mid, _ = deferred_gateway(ctx, dead)
        r = gwctl("queue", "delete", mid).ok("queue delete")
        check(str(mid) in r.out, "delete names the MID", r)
        check(row_by(queue_rows(), "mid", mid) is None, "not listed after delete")
        time.sleep(2)
        check_eq(g.maildir(), [], "no bounce to the sender's local mailbox")
        ctl_refused(g, rf"{mid}|not|queued", "queue", "delete", mid)
        st = json_record(gwctl("--json", "status").ok("status"))
        check_eq(int(field(st, "queuedmessages")), 0, "status queue size 0")
        # Gone from the spool too: a restart does not bring it back.
        g.restart()
        check(row_by(queue_rows(), "mid", mid) is None, "not back after a restart", queue_rows())
        st = json_record(gwctl("--json", "status").ok("status after restart"))
        check_eq(int(field(st, "queuedmessages")), 0, "status queue size 0 after restart")


@case("connections: a live STARTTLS session with protocol and cipher, a plain one without; kTLS columns")
def _(ctx):
        g = ctl_gateway(ctx, listener={"tls": "preferred"})
        plain = Smtp(g.port)
        plain.ehlo()
        c = Smtp(g.port)
        c.ehlo()
        check_eq(starttls(c, client_context("TLSv1.3"))[0], 220, "STARTTLS")
        c.ehlo()
        want_cipher = c.sock.cipher()[0]
        port_tls, port_plain = local_port(c), local_port(plain)

        def rows():
                rs = json_rows(gwctl("--json", "connections").ok("connections --json"), "connections")
                a, b = row_by(rs, "port", port_tls), row_by(rs, "port", port_plain)
                return (a, b, rs) if a and b and field(a, "protocol") else None
        got = wait_until(rows, 10, 0.3)
        check(got, "both sessions listed with the TLS one's protocol",
              gwctl("--json", "connections").out)
        a, b, rs = got
        check_eq(field(a, "protocol"), "TLSv1.3", "protocol of the TLS session")
        check_eq(field(a, "cipher"), want_cipher, "cipher of the TLS session")
        check_eq(field(a, "peer"), "127.0.0.1", "peer address")
        check_eq(field(a, "listener"), "inbound", "listener")
        check(not field(b, "protocol"), "no protocol for the plain session", b)
        if not ktls_available():
                check_eq(field(a, "ulp") or "", "", "kernel offload (ULP) column empty without kernel TLS")
                check(not truthy(field(a, "ktls-tx")) and not truthy(field(a, "ktls-rx")), "no kTLS", a)
        else:
                if truthy(field(a, "ktls-tx")):
                        check("tls" in str(field(a, "ulp")), "kTLS TX reported by the kernel (inet_diag ULP)", a)
        t = gwctl("connections").ok("connections").out
        check(re.search(rf"127\.0\.0\.1\s+{port_tls}\s+TLSv1\.3", t), "table row of the TLS session", t)
        gwctl("connections", user="nobody").ok("connections as nobody")
        c.cmd("QUIT")
        c.close()
        plain.cmd("QUIT")
        plain.close()
        check(wait_until(lambda: row_by(json_rows(gwctl("--json", "connections").ok("c")), "port", port_tls) is None,
                         10, 0.3), "closed session leaves the listing")


if __name__ == "__main__":
        run()
