#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Relaying through the real tlsgwd: local maildir delivery, a static route
to a next hop (Postfix's smtp-sink and the recording sink), recipients split
by domain, the Received header (RFC 5321 4.4) and the mail log in the journal."""

import re

from harness import (Smtp, base_config, case, check, check_eq, check_reply, message, queued_mid,
                     route, run, send_mail, split_received, swaks)


@case("swaks to localhost lands in the maildir")
def _(ctx):
        gw = ctx.gateway()
        rc, out = swaks(gw.port, "sender@client.test", ["user@localhost"], body="maildir body line")
        check_eq(rc, 0, f"swaks exit status\n{out}")
        check(re.search(r"<[-~]\s+250 2\.0\.0 Ok: queued as MID \d+", out), "no 250 queued as MID", out)
        files = []
        from harness import wait_until
        files = wait_until(lambda: gw.maildir(), 10) or []
        check_eq(len(files), 1, "files in maildir/new")
        f = files[0]
        check(b"maildir body line" in f, "body missing from maildir file", f[:500])
        check(re.search(rb"(?mi)^Return-Path: <sender@client\.test>", f), "no Return-Path", f[:300])
        check(re.search(rb"(?mi)^Delivered-To: <?user@localhost>?", f), "no Delivered-To", f[:300])
        check(re.search(rb"(?mi)^Received: from client\.test", f), "no Received header with the HELO name", f[:400])


@case("relay over a static route to Postfix smtp-sink")
def _(ctx):
        ps = ctx.postfix_sink()
        gw = ctx.gateway(lambda g: base_config(g.state_dir, g.port, routes=[route("pf.test", ps.port)]))
        rc, out = swaks(gw.port, "sender@client.test", ["rcpt@pf.test"], body="to postfix sink")
        check_eq(rc, 0, f"swaks exit status\n{out}")
        msgs = ps.wait(1, 20)
        check_eq(len(msgs), 1, "messages at smtp-sink")
        check_eq(ps.envelope(msgs[0]), ("sender@client.test", ["rcpt@pf.test"]), "envelope at smtp-sink")
        check(b"to postfix sink" in msgs[0], "body", msgs[0][:600])


@case("multi-recipient message split by domain: each next hop gets only its recipients")
def _(ctx):
        ps = ctx.postfix_sink()
        sk = ctx.sink(name="two")
        gw = ctx.gateway(lambda g: base_config(g.state_dir, g.port,
                                    routes=[route("one.test", ps.port), route("two.test", sk.port)]))
        body = message("split", "Split body.\r\n", "s@client.test", "several")
        with Smtp(gw.port) as c:
                c.ehlo()
                c.mail("s@client.test")
                for r in ("a@one.test", "b@two.test", "c@one.test", "d@two.test", "e@two.test"):
                        c.rcpt(r)
                c.data(body)
                c.cmd("QUIT")
        msgs = ps.wait(1, 20)
        got = sk.wait(1, 20)
        check(len(msgs) >= 1, "nothing at smtp-sink for one.test")
        check(len(got) >= 1, "nothing at the sink for two.test")
        rc1 = sorted(r for m in msgs for r in ps.envelope(m)[1])
        rc2 = sorted(r for t in got for r in t.rcpts)
        check_eq(rc1, ["a@one.test", "c@one.test"], "recipients at the one.test hop")
        check_eq(rc2, ["b@two.test", "d@two.test", "e@two.test"], "recipients at the two.test hop")
        for t in got:
                check_eq(t.mail_from, "s@client.test", "envelope sender at two.test")
        for m in msgs:
                check_eq(ps.envelope(m)[0], "s@client.test", "envelope sender at one.test")


@case("Received header prepended, the rest byte-exact")
def _(ctx):
        sk = ctx.sink()
        gw = ctx.gateway(lambda g: base_config(g.state_dir, g.port, routes=[route("sink.test", sk.port)]))
        # 8-bit text, long-ish lines, trailing spaces, an empty line in the body and
        # header folding all must pass unchanged (RFC 5321 2.4: a relay does not
        # change the content other than adding trace fields).
        body = ("From: <x@client.test>\r\nTo: <y@sink.test>\r\nSubject: exact\r\n"
                "X-Folded: a\r\n\tb\r\n\r\nline with trailing spaces   \r\n\r\n"
                "caf\u00e9 8bit \u00fcml\u00e4ut\r\n" + "z" * 900 + "\r\nend\r\n").encode()
        rep = send_mail(gw.port, "x@client.test", ["y@sink.test"], body)
        mid = queued_mid(rep)
        t = sk.wait(1, 20)
        check_eq(len(t), 1, "transactions at the sink")
        recv, rest = split_received(t[0].data)
        check(recv is not None, "first header is not Received:", t[0].data[:300])
        check_eq(rest, body, "message after the Received header")
        check(b"client.test" in recv, "Received lacks the HELO name", recv)
        check(b"127.0.0.1" in recv, "Received lacks the client address", recv)
        check(b"gw.test" in recv, "Received lacks our hostname", recv)
        check(re.search(rb"\b" + str(mid).encode() + rb"\b", recv) is not None or b"id " in recv,
              "Received has no id", recv)
        check(re.search(rb";\s*\w{3}, \d{1,2} \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4}", recv),
              "Received has no RFC 5322 date after ';'", recv)


@case("journal: ICID, MID, RID and DCID lines with their fields")
def _(ctx):
        sk = ctx.sink()
        gw = ctx.gateway(lambda g: base_config(g.state_dir, g.port, routes=[route("sink.test", sk.port)]))
        rep = send_mail(gw.port, "from@client.test", ["to1@sink.test", "to2@sink.test"],
                        message("journal", "J.\r\n"))
        mid = queued_mid(rep)
        check(sk.wait(1, 20), "not delivered")
        e = gw.wait_journal(rf"^Message finished MID {mid} done", 20)
        check_eq(e.get("TLSGW_MID"), str(mid), "TLSGW_MID of Message finished")

        new = gw.wait_journal(r"^New SMTP ICID \d+ interface inbound \(127\.0\.0\.1\) address 127\.0\.0\.1 "
                              r"reverse dns host \S+ verified (yes|no)")
        icid = new["TLSGW_ICID"]
        check(re.search(rf"ICID {icid}\b", new["MESSAGE"]), "ICID field differs from text", new)
        check_eq(new.get("TLSGW_LISTENER"), "inbound", "TLSGW_LISTENER")
        check_eq(new.get("TLSGW_CLIENT_IP"), "127.0.0.1", "TLSGW_CLIENT_IP")

        # The action word is the policy's: RELAY for a relay policy (ACCEPT for
        # an accept policy is checked in test_policy.py).
        e = gw.wait_journal(rf"^ICID {icid} (ACCEPT|RELAY) SG RELAYLIST match 127\.0\.0\.0/8")
        check_eq(e.get("TLSGW_SENDER_GROUP"), "RELAYLIST", "TLSGW_SENDER_GROUP")
        check_eq(e.get("TLSGW_POLICY"), "RELAYED", "TLSGW_POLICY")
        e = gw.wait_journal(rf"^Start MID {mid} ICID {icid}$")
        check_eq((e.get("TLSGW_MID"), e.get("TLSGW_ICID")), (str(mid), icid), "Start MID fields")
        e = gw.wait_journal(rf"^MID {mid} ICID {icid} From: <from@client\.test>")
        check_eq(e.get("TLSGW_FROM"), "from@client.test", "TLSGW_FROM")
        e0 = gw.wait_journal(rf"^MID {mid} ICID {icid} RID 0 To: <to1@sink\.test>")
        e1 = gw.wait_journal(rf"^MID {mid} ICID {icid} RID 1 To: <to2@sink\.test>")
        check_eq((e0.get("TLSGW_RID"), e0.get("TLSGW_TO")), ("0", "to1@sink.test"), "RID 0 fields")
        check_eq((e1.get("TLSGW_RID"), e1.get("TLSGW_TO")), ("1", "to2@sink.test"), "RID 1 fields")
        e = gw.wait_journal(rf"^MID {mid} ready (\d+) bytes from <from@client\.test>")
        size = re.search(r"ready (\d+) bytes", e["MESSAGE"]).group(1)
        check_eq(e.get("TLSGW_SIZE"), size, "TLSGW_SIZE")
        gw.wait_journal(rf"^ICID {icid} close")

        d = gw.wait_journal(r"^New SMTP DCID \d+ interface \S+ address 127\.0\.0\.1 port " + str(sk.port), 20)
        dcid = d["TLSGW_DCID"]
        check_eq(d.get("TLSGW_DOMAIN"), "sink.test", "TLSGW_DOMAIN of New SMTP DCID")
        gw.wait_journal(rf"^Delivery start DCID {dcid} MID {mid} to RID \[0, 1\]")
        e = gw.wait_journal(rf"^Message done DCID {dcid} MID {mid} to RID \[0, 1\] \[\('250")
        check(e.get("TLSGW_REPLY", "").startswith("250"), "TLSGW_REPLY of Message done", e)
        ids = {x.get("MESSAGE_ID") for x in gw.journal(TLSGW_MID=str(mid))}
        check(len(ids) >= 5, "event classes should carry distinct MESSAGE_IDs", ids)


@case("maildir and relay recipients in one message")
def _(ctx):
        sk = ctx.sink()
        gw = ctx.gateway(lambda g: base_config(g.state_dir, g.port, routes=[route("sink.test", sk.port)]))
        send_mail(gw.port, "m@client.test", ["local@localhost", "far@sink.test"], message("mixed"))
        t = sk.wait(1, 20)
        check_eq([x.rcpts for x in t], [["far@sink.test"]], "sink recipients")
        from harness import wait_until
        files = wait_until(lambda: gw.maildir(), 10) or []
        check_eq(len(files), 1, "maildir files")
        check(b"Subject: mixed" in files[0], "maildir content", files[0][:300])


@case("two messages in one session are two MIDs")
def _(ctx):
        sk = ctx.sink()
        gw = ctx.gateway(lambda g: base_config(g.state_dir, g.port, routes=[route("sink.test", sk.port)]))
        with Smtp(gw.port) as c:
                c.ehlo()
                mids = []
                for i in range(2):
                        c.mail("a@client.test")
                        c.rcpt(f"r{i}@sink.test")
                        mids.append(queued_mid(c.data(message(f"m{i}"))))
                check_reply(c.cmd("QUIT"), 221, r"2\.0\.0")
        check(mids[0] != mids[1], "MIDs equal", mids)
        t = sk.wait(2, 20)
        check_eq(sorted(r for x in t for r in x.rcpts), ["r0@sink.test", "r1@sink.test"], "delivered")


if __name__ == "__main__":
        run()
