#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""MX delivery of the real tlsgwd through a real resolver: unbound on
loopback (dnsserver.py) answers a test zone, dns_servers points at it and
queue.smtp_port at the sinks' port. Covers MX preference order (RFC 5321
5.1: lowest preference first, the next one when it is down), the implicit
MX (A record only) and a bounce for a domain that does not exist."""

import re

from harness import (Skip, case, check, check_eq, free_port, message, queued_mid, route, run,
                     send_mail)

try:
        import dnsserver
except ImportError:  # the module is missing in this tree
        dnsserver = None


def dns(ctx, records):
        if dnsserver is None:
                raise Skip("tests/integration/dnsserver.py missing")
        if not dnsserver.unbound_path():
                raise Skip("unbound not installed")
        srv = dnsserver.DnsServer(records)
        try:
                srv.start()
        except (OSError, dnsserver.DnsServerError) as e:
                raise Skip(f"cannot start unbound: {e}")
        ctx.cleanup(srv.stop)
        return srv


def mx_gateway(ctx, srv, smtp_port, **kw):
        q = {"smtp_port": smtp_port, "connect_timeout": "2s"}
        q.update(kw.pop("queue", {}))
        return ctx.gw(queue=q, extra={"dns_servers": [f"127.0.0.1:{srv.port}"]}, **kw)


@case("MX lookup through unbound: delivered to the MX host")
def _(ctx):
        port = free_port()
        sk = ctx.sink(port=port)
        srv = dns(ctx, ["mxone.test. 300 IN MX 10 mail.mxone.test.",
                        "mail.mxone.test. 300 IN A 127.0.0.1"])
        gw = mx_gateway(ctx, srv, port)
        mid = queued_mid(send_mail(gw.port, "a@client.test", ["user@mxone.test"], message("mx")))
        t = sk.wait(1, 20)
        check_eq([x.rcpts for x in t], [["user@mxone.test"]], "delivered via MX")
        gw.wait_journal(rf"^Message done DCID \d+ MID {mid} ")
        d = gw.wait_journal(r"^New SMTP DCID \d+ .*address 127\.0\.0\.1 port " + str(port))
        check_eq(d.get("TLSGW_DOMAIN"), "mxone.test", "TLSGW_DOMAIN")


@case("MX preference: the preferred host is down, the next one is used")
def _(ctx):
        port = free_port()
        sk = ctx.sink(port=port)      # listens on 127.0.0.1 only; 127.0.0.2 refuses
        srv = dns(ctx, ["pref.test. 300 IN MX 20 backup.pref.test.",
                        "pref.test. 300 IN MX 10 primary.pref.test.",
                        "primary.pref.test. 300 IN A 127.0.0.2",
                        "backup.pref.test. 300 IN A 127.0.0.1"])
        gw = mx_gateway(ctx, srv, port)
        mid = queued_mid(send_mail(gw.port, "a@client.test", ["user@pref.test"], message("pref")))
        t = sk.wait(1, 20)
        check_eq([x.rcpts for x in t], [["user@pref.test"]], "delivered via the backup MX")
        msgs = gw.messages()
        tried = [m for m in msgs if re.search(r"(New SMTP DCID|Connection Error: DCID).*127\.0\.0\.2", m)]
        check(tried, "the preferred MX (127.0.0.2) was never tried", msgs[-20:])
        gw.wait_journal(rf"^Message done DCID \d+ MID {mid} ")


@case("MX preference: lowest preference wins when both are up")
def _(ctx):
        port = free_port()
        primary = ctx.sink(port=port, host="127.0.0.3", name="primary")
        backup = ctx.sink(port=port, host="127.0.0.1", name="backup")
        srv = dns(ctx, ["both.test. 300 IN MX 50 backup.both.test.",
                        "both.test. 300 IN MX 5 primary.both.test.",
                        "primary.both.test. 300 IN A 127.0.0.3",
                        "backup.both.test. 300 IN A 127.0.0.1"])
        gw = mx_gateway(ctx, srv, port)
        send_mail(gw.port, "a@client.test", ["user@both.test"], message("both up"))
        t = primary.wait(1, 20)
        check_eq(len(t), 1, "delivered to the preferred MX")
        check_eq(len(backup.transactions), 0, "backup MX used although the primary is up")


@case("no MX: the domain's A record is the implicit MX (RFC 5321 5.1)")
def _(ctx):
        port = free_port()
        sk = ctx.sink(port=port)
        srv = dns(ctx, ["nomx.test. 300 IN A 127.0.0.1"])
        gw = mx_gateway(ctx, srv, port)
        send_mail(gw.port, "a@client.test", ["user@nomx.test"], message("implicit mx"))
        t = sk.wait(1, 20)
        check_eq([x.rcpts for x in t], [["user@nomx.test"]], "delivered via the A record")


@case("non-existent domain: bounced with a DSN to the sender")
def _(ctx):
        port = free_port()
        home = ctx.sink(name="home")
        srv = dns(ctx, ["exists.test. 300 IN A 127.0.0.1"])
        gw = mx_gateway(ctx, srv, port, routes=[route("client.test", home.port)])
        mid = queued_mid(send_mail(gw.port, "sender@client.test", ["user@nxdomain.test"], message("nxdomain")))
        t = home.wait(1, 25)
        check_eq(len(t), 1, "DSNs to the sender")
        check_eq(t[0].mail_from, "", "DSN sender")
        check(re.search(rb"(?mi)^Final-Recipient:\s*rfc822;\s*user@nxdomain\.test", t[0].data), "DSN recipient",
              t[0].data[:2000])
        gw.wait_journal(rf"^Bounced: (DCID \d+ )?MID {mid} to RID 0")


@case("static route wins over MX")
def _(ctx):
        port = free_port()
        mx = ctx.sink(port=port, name="mx")
        static = ctx.sink(name="static")
        srv = dns(ctx, ["routed.test. 300 IN MX 10 mail.routed.test.",
                        "mail.routed.test. 300 IN A 127.0.0.1"])
        gw = mx_gateway(ctx, srv, port, routes=[route("routed.test", static.port)])
        send_mail(gw.port, "a@client.test", ["user@routed.test"], message("static"))
        check(static.wait(1, 20), "not delivered via the static route")
        check_eq(len(mx.transactions), 0, "MX used despite a static route")


if __name__ == "__main__":
        run()
