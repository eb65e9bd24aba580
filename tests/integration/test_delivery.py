#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Outbound delivery of the real tlsgwd: retries after 4xx (RFC 5321
4.5.4.1), bounces after 5xx and after the queue lifetime as RFC 3464 DSNs
from <> (RFC 5321 6.1, 4.5.5), no bounce of a bounce, and several queued
messages for one domain sent over one connection."""

import re
import time

from harness import (Smtp, case, check, check_eq, message, queued_mid, route, run, send_mail,
                     split_received, wait_until)


def routes(*pairs):
        return [route(d, s.port) for d, s in pairs]


def check_dsn(t, sender, failed_rcpt, status_rx):
        check_eq(t.mail_from, "", "DSN envelope sender")
        check_eq(t.rcpts, [sender], "DSN recipient")
        data = t.data
        check(re.search(rb"(?mi)^Content-Type:\s*multipart/report;(.|\r\n\s)*report-type=\"?delivery-status", data),
              "DSN is not multipart/report; report-type=delivery-status", data[:1500])
        check(re.search(rb"(?mi)^Content-Type:\s*message/delivery-status", data), "no message/delivery-status part",
              data[:3000])
        check(re.search(rb"(?mi)^Final-Recipient:\s*rfc822;\s*" + re.escape(failed_rcpt.encode()), data),
              "no Final-Recipient", data[:3000])
        check(re.search(rb"(?mi)^Action:\s*failed", data), "no Action: failed", data[:3000])
        check(re.search(rb"(?mi)^Status:\s*" + status_rx.encode(), data), f"no Status: {status_rx}", data[:3000])
        check(re.search(rb"(?mi)^Reporting-MTA:\s*dns;\s*gw\.test", data), "no Reporting-MTA", data[:3000])


@case("4xx at DATA end, then 250: delivered on retry, journal Delayed then Message done")
def _(ctx):
        sk = ctx.sink(data_replies=["451 4.3.0 try again later"])
        gw = ctx.gw(routes=routes(("sink.test", sk)))
        mid = queued_mid(send_mail(gw.port, "a@client.test", ["r@sink.test"], message("retry")))
        t = sk.wait(1, 20)
        check_eq(len(t), 1, "accepted transactions")
        check_eq(len(sk.transactions), 2, "attempts (one 451, one 250)")
        check_eq(sk.transactions[0].wire, sk.transactions[1].wire, "same bytes on retry")
        d = gw.wait_journal(rf"^Delayed: DCID \d+ MID {mid} to RID \[0\] - ")
        check("451" in d["MESSAGE"], "Delayed line lacks the reply", d["MESSAGE"])
        done = gw.wait_journal(rf"^Message done DCID \d+ MID {mid} to RID \[0\]")
        check(int(done["__MONOTONIC_TIMESTAMP"]) > int(d["__MONOTONIC_TIMESTAMP"]), "Message done before Delayed")
        gw.wait_journal(rf"^Message finished MID {mid} done")


@case("450 for one recipient: the other delivered once, the deferred one later, once")
def _(ctx):
        sk = ctx.sink(rcpt_replies={"slow@sink.test": ["450 4.2.1 mailbox busy"]})
        gw = ctx.gw(routes=routes(("sink.test", sk)))
        mid = queued_mid(send_mail(gw.port, "a@client.test", ["fast@sink.test", "slow@sink.test"], message("rcpt450")))
        t = sk.wait(2, 20)
        rc = sorted(r for x in t for r in x.rcpts)
        check_eq(rc, ["fast@sink.test", "slow@sink.test"], "each recipient delivered exactly once")
        gw.wait_journal(rf"^Delayed: DCID \d+ MID {mid} to RID \[1\]")
        gw.wait_journal(rf"^Message finished MID {mid} done", 20)
        time.sleep(1.5)
        check_eq(sorted(r for x in sk.accepted() for r in x.rcpts), rc, "no duplicate delivery later")


@case("5xx recipient: DSN from <> to the sender with multipart/report")
def _(ctx):
        far = ctx.sink(name="far", rcpt_replies={"nouser@far.test": "550 5.1.1 no such user"})
        home = ctx.sink(name="home")
        gw = ctx.gw(routes=routes(("far.test", far), ("client.test", home)))
        mid = queued_mid(send_mail(gw.port, "sender@client.test", ["nouser@far.test", "ok@far.test"],
                                   message("bounce me", "Original text.\r\n")))
        t = home.wait(1, 20)
        check_eq(len(t), 1, "DSNs at the sender's domain")
        check_dsn(t[0], "sender@client.test", "nouser@far.test", r"5\.1\.1")
        check(b"550 5.1.1 no such user" in t[0].data, "DSN lacks the remote reply (Diagnostic-Code)", t[0].data[:3000])
        check(b"Subject: bounce me" in t[0].data, "DSN lacks the original headers", t[0].data[:3000])
        check_eq(sorted(r for x in far.accepted() for r in x.rcpts), ["ok@far.test"], "good recipient delivered")
        gw.wait_journal(rf"^Bounced: DCID \d+ MID {mid} to RID 0( <[^>]*>)? - ")
        g = gw.wait_journal(rf"^MID (\d+) was generated based on MID {mid} by bounce")
        check(g.get("TLSGW_MID") and g["TLSGW_MID"] != str(mid), "TLSGW_MID of the DSN", g)


@case("5xx at the end of DATA bounces every recipient of it")
def _(ctx):
        far = ctx.sink(name="far", data_replies=["554 5.7.1 content rejected"])
        home = ctx.sink(name="home")
        gw = ctx.gw(routes=routes(("far.test", far), ("client.test", home)))
        mid = queued_mid(send_mail(gw.port, "sender@client.test", ["x@far.test"], message("data 554")))
        t = home.wait(1, 20)
        check_eq(len(t), 1, "DSNs")
        check_dsn(t[0], "sender@client.test", "x@far.test", r"5\.7\.1")
        gw.wait_journal(rf"^Bounced: DCID \d+ MID {mid} to RID 0( <[^>]*>)? - ")
        time.sleep(1.5)
        check_eq(len(far.transactions), 1, "5xx retried")


@case("queue lifetime exceeded with 4xx: DSN")
def _(ctx):
        far = ctx.sink(name="far", data_replies=lambda txn: "451 4.3.0 never today")
        home = ctx.sink(name="home")
        gw = ctx.gw(routes=routes(("far.test", far), ("client.test", home)),
                    queue={"lifetime": "2s", "retry_min": "1s", "retry_max": "1s"})
        mid = queued_mid(send_mail(gw.port, "sender@client.test", ["late@far.test"], message("lifetime")))
        t = home.wait(1, 25)
        check_eq(len(t), 1, "DSNs")
        check_dsn(t[0], "sender@client.test", "late@far.test", r"4\.\d+\.\d+")
        gw.wait_journal(rf"^Bounced: DCID \d+ MID {mid} to RID 0( <[^>]*>)? - ")
        check(len(far.transactions) >= 1, "never tried")
        n = len(far.transactions)
        time.sleep(2.5)
        check_eq(len(far.transactions), n, "still retried after the bounce")


@case("next hop unreachable for the lifetime: DSN")
def _(ctx):
        from harness import free_port
        home = ctx.sink(name="home")
        dead = free_port()
        gw = ctx.gw(routes=[route("dead.test", dead), route("client.test", home.port)],
                    queue={"lifetime": "2s", "retry_min": "1s", "retry_max": "1s", "connect_timeout": "1s"})
        mid = queued_mid(send_mail(gw.port, "sender@client.test", ["x@dead.test"], message("unreachable")))
        t = home.wait(1, 25)
        check_eq(len(t), 1, "DSNs")
        check_dsn(t[0], "sender@client.test", "x@dead.test", r"4\.\d+\.\d+")
        gw.wait_journal(rf"^Bounced: DCID \d+ MID {mid} to RID 0")


@case("no bounce for a bounce: <> sender's failure makes no DSN")
def _(ctx):
        far = ctx.sink(name="far", rcpt_replies={"nouser@far.test": "550 5.1.1 no such user"})
        home = ctx.sink(name="home")
        gw = ctx.gw(routes=routes(("far.test", far), ("client.test", home)))
        with Smtp(gw.port) as c:
                c.ehlo()
                c.cmd("MAIL FROM:<>")
                c.rcpt("nouser@far.test")
                mid = queued_mid(c.data(message("a bounce", sender="MAILER-DAEMON@client.test")))
        gw.wait_journal(rf"^Bounced: DCID \d+ MID {mid} to RID 0", 20)
        time.sleep(2)
        check_eq(len(home.transactions), 0, "DSN sent for a <> message")
        gen = [m for m in gw.messages() if re.search(rf"based on MID {mid} by bounce", m)]
        check_eq(gen, [], "bounce generated")


@case("DSN that bounces itself makes no second DSN")
def _(ctx):
        far = ctx.sink(name="far", rcpt_replies={"nouser@far.test": "550 5.1.1 no such user"})
        home = ctx.sink(name="home", rcpt_replies={"sender@client.test": "550 5.1.1 sender gone"})
        gw = ctx.gw(routes=routes(("far.test", far), ("client.test", home)))
        mid = queued_mid(send_mail(gw.port, "sender@client.test", ["nouser@far.test"], message("double")))
        g = gw.wait_journal(rf"^MID (\d+) was generated based on MID {mid} by bounce", 20)
        dsn_mid = re.search(r"^MID (\d+)", g["MESSAGE"]).group(1)
        gw.wait_journal(rf"^Bounced: DCID \d+ MID {dsn_mid} to RID 0", 20)
        time.sleep(2)
        gen = [m for m in gw.messages() if "by bounce" in m]
        check_eq(len(gen), 1, f"bounces generated: {gen}")
        check_eq(len(home.accepted()), 0, "something accepted at home")


@case("connection reuse: queued messages for one domain go over one connection")
def _(ctx):
        from harness import free_port
        port = free_port()
        gw = ctx.gw(routes=[route("reuse.test", port)],
                    extra={"destinations": [{"domain": "default", "max_connections": 1,
                                             "max_messages_per_connection": 50,
                                             "max_recipients_per_message": 100, "tls": "none"}]})
        mids = []
        for i in range(5):
                mids.append(queued_mid(send_mail(gw.port, "a@client.test", [f"r{i}@reuse.test"], message(f"reuse {i}"))))
        # All five are now deferred (the hop is down). Stop, bring the hop up,
        # start again: recovery schedules them together for one job.
        check_eq(gw.stop(), 0, "exit status on SIGTERM")
        sk = ctx.sink(port=port)
        gw.start()
        t = sk.wait(5, 25)
        check_eq(len(t), 5, "delivered messages")
        check_eq(sk.connections, 1, "connections to the next hop")
        check_eq(sorted(r for x in t for r in x.rcpts), [f"r{i}@reuse.test" for i in range(5)], "recipients")


@case("HELO fallback when the next hop does not speak ESMTP, no PIPELINING")
def _(ctx):
        sk = ctx.sink(ehlo=False, pipelining=False)
        gw = ctx.gw(routes=routes(("old.test", sk)))
        send_mail(gw.port, "a@client.test", ["x@old.test", "y@old.test"], message("helo"))
        t = sk.wait(1, 20)
        check_eq(sorted(t[0].rcpts), ["x@old.test", "y@old.test"], "recipients")
        cmds = [c for (_, c) in sk.commands]
        check(any(c.upper().startswith("HELO") for c in cmds), "no HELO after EHLO was refused", cmds)


@case("next hop greeting 421: deferred, delivered once the hop recovers")
def _(ctx):
        sk = ctx.sink(greeting="421 4.3.2 busy")
        gw = ctx.gw(routes=routes(("busy.test", sk)))
        mid = queued_mid(send_mail(gw.port, "a@client.test", ["x@busy.test"], message("busy")))
        gw.wait_journal(rf"^Delayed: DCID \d+ MID {mid}", 20)
        sk.greeting = "220 busy.test ESMTP ready"
        t = sk.wait(1, 20)
        check_eq(len(t), 1, "delivered after the hop recovered")
        check_eq(split_received(t[0].data)[1][:30], message("busy")[:30], "content")


@case("slow next hop (delayed replies) still delivers")
def _(ctx):
        sk = ctx.sink(delay=0.3)
        gw = ctx.gw(routes=routes(("slow.test", sk)))
        send_mail(gw.port, "a@client.test", ["x@slow.test"], message("slow"))
        check(wait_until(lambda: sk.accepted(), 20), "not delivered")


if __name__ == "__main__":
        run()
