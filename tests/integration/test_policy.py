#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Mail flow policies and SMTP command sequencing against the real tlsgwd:
sender groups choose accept / relay / reject / tcp-refuse; no open relay
(RFC 5321 3.9 leaves relaying to local policy, we refuse it by default);
commands out of order get 503 (RFC 5321 4.1.4)."""

import socket

from harness import (POLICIES, Smtp, case, check, check_eq, check_reply, message, queued_mid, route,
                     run, send_mail, wait_until)


@case("accept policy: no open relay, 550 5.7.1 Relay access denied")
def _(ctx):
        sk = ctx.sink()
        gw = ctx.gw(relay=False, routes=[route("sink.test", sk.port)])
        with Smtp(gw.port) as c:
                c.ehlo()
                c.mail("a@client.test")
                check_reply(c.cmd("RCPT TO:<victim@sink.test>"), 550,
                            r"^5\.7\.1 <victim@sink\.test>: Relay access denied", "RCPT to a foreign domain")
                check_reply(c.cmd("RCPT TO:<user@localhost>"), 250, r"^2\.1\.5 Ok", "RCPT to an accepted domain")
                check_reply(c.cmd("RCPT TO:<user@LOCALHOST>"), 250, None, "domains are case-insensitive")
                c.data(message("accepted"))
                c.cmd("QUIT")
        check(wait_until(lambda: gw.maildir(), 10), "accepted mail not delivered")
        check_eq(len(sk.transactions), 0, "the sink got mail for a refused relay recipient")


@case("relay policy: foreign domain accepted and relayed")
def _(ctx):
        sk = ctx.sink()
        gw = ctx.gw(relay=True, routes=[route("sink.test", sk.port)])
        send_mail(gw.port, "a@client.test", ["far@sink.test"], message("relayed"))
        t = sk.wait(1, 20)
        check_eq([x.rcpts for x in t], [["far@sink.test"]], "relayed recipients")


@case("reject policy: 554 greeting, then only QUIT works")
def _(ctx):
        gw = ctx.gw(extra={"sender_groups": [{"name": "BLOCKLIST", "policy": "BLOCKED",
                                              "sources": ["127.0.0.0/8"]}]})
        with Smtp(gw.port, greeting=False) as c:
                check_reply(c.reply(), 554, r"^5\.7\.1 gw\.test Access denied", "greeting")
                check_reply(c.cmd("EHLO client.test"), 503, r"^5\.7\.1", "EHLO after 554")
                check_reply(c.cmd("MAIL FROM:<a@client.test>"), 503, r"^5\.7\.1", "MAIL after 554")
                check_reply(c.cmd("RCPT TO:<b@localhost>"), 503, r"^5\.7\.1", "RCPT after 554")
                check_reply(c.cmd("QUIT"), 221, None, "QUIT")
                check(c.closed(), "connection not closed after QUIT")
        e = gw.wait_journal(r"^ICID \d+ REJECT SG BLOCKLIST match 127\.0\.0\.0/8")
        check_eq(e.get("TLSGW_POLICY"), "BLOCKED", "TLSGW_POLICY")


@case("tcp-refuse policy: closed without a greeting")
def _(ctx):
        gw = ctx.gw(extra={"sender_groups": [{"name": "DROP", "policy": "REFUSED",
                                              "sources": ["127.0.0.0/8"]}]})
        s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
        try:
                data = s.recv(1024)
        except ConnectionResetError:
                data = b""
        s.close()
        check_eq(data, b"", "bytes received before close")
        gw.wait_journal(r"^ICID \d+ (TCPREFUSE|refused)")


@case("journal: ICID n ACCEPT SG RELAYLIST match 127.0.0.0/8")
def _(ctx):
        gw = ctx.gw(relay=False)
        with Smtp(gw.port) as c:
                c.cmd("QUIT")
        e = gw.wait_journal(r"^ICID (\d+) ACCEPT SG RELAYLIST match 127\.0\.0\.0/8$")
        check_eq(e.get("TLSGW_SENDER_GROUP"), "RELAYLIST", "TLSGW_SENDER_GROUP")
        check_eq(e.get("TLSGW_POLICY"), "ACCEPTED", "TLSGW_POLICY")
        check(e.get("TLSGW_ICID"), "no TLSGW_ICID", e)


@case("no sender group matches: listener default policy, SG None")
def _(ctx):
        gw = ctx.gw(default_policy="ACCEPTED",
                    extra={"sender_groups": [{"name": "ELSEWHERE", "policy": "RELAYED",
                                              "sources": ["192.0.2.0/24"]}]})
        with Smtp(gw.port) as c:
                check_reply(c.greeting, 220, r"^gw\.test ESMTP tlsgw$", "greeting")
                c.ehlo()
                c.mail("a@client.test")
                check_reply(c.cmd("RCPT TO:<x@elsewhere.test>"), 550, r"Relay access denied")
        gw.wait_journal(r"^ICID \d+ ACCEPT SG None match None$")


@case("policy limits override the listener's")
def _(ctx):
        pol = [dict(p) for p in POLICIES]
        pol[1]["limits"] = {"max_recipients": 2}
        sk = ctx.sink()
        gw = ctx.gw(routes=[route("sink.test", sk.port)], extra={"policies": pol})
        with Smtp(gw.port) as c:
                c.ehlo()
                c.mail("a@client.test")
                c.rcpt("1@sink.test")
                c.rcpt("2@sink.test")
                check_reply(c.cmd("RCPT TO:<3@sink.test>"), 452, r"^4\.5\.3", "third RCPT over the policy limit")


@case("EHLO required: MAIL before HELO/EHLO is 503 5.5.1")
def _(ctx):
        gw = ctx.gw()
        with Smtp(gw.port) as c:
                check_reply(c.cmd("MAIL FROM:<a@client.test>"), 503, r"^5\.5\.1", "MAIL first")
                check_reply(c.cmd("HELO client.test"), 250, r"gw\.test", "HELO")
                check_reply(c.cmd("MAIL FROM:<a@client.test>"), 250, r"^2\.1\.0 Ok", "MAIL after HELO")


@case("EHLO capabilities")
def _(ctx):
        gw = ctx.gw(limits={"max_message_size": "1M"})
        with Smtp(gw.port) as c:
                check_reply(c.greeting, 220, r"^gw\.test ESMTP tlsgw$", "greeting")
                code, text = c.cmd("EHLO client.test")
                check_eq(code, 250, "EHLO code")
                lines = text.split("\n")
                check(lines[0].startswith("gw.test"), "first EHLO line is not our hostname", lines)
                caps = [x.upper() for x in lines[1:]]
                for want in ("PIPELINING", "SIZE 1048576", "8BITMIME", "ENHANCEDSTATUSCODES"):
                        check(want in caps, f"EHLO lacks {want}", lines)


@case("command sequencing and replies")
def _(ctx):
        gw = ctx.gw(limits={"max_errors": 50})
        with Smtp(gw.port) as c:
                c.ehlo()
                check_reply(c.cmd("RCPT TO:<b@localhost>"), 503, r"^5\.5\.1", "RCPT before MAIL")
                check_reply(c.cmd("DATA"), 503, r"^5\.5\.1", "DATA before MAIL")
                check_reply(c.cmd("MAIL FROM:a@client.test"), 501, r"^5\.5\.4", "MAIL without brackets")
                check_reply(c.cmd("MAIL TO:<a@client.test>"), 501, r"^5\.5\.4", "MAIL TO:")
                check_reply(c.cmd("MAIL FROM:<a@client.test>"), 250, r"^2\.1\.0 Ok")
                check_reply(c.cmd("MAIL FROM:<a@client.test>"), 503, r"^5\.5\.1", "nested MAIL")
                check_reply(c.cmd("DATA"), 503, r"^5\.5\.1", "DATA without RCPT")
                check_reply(c.cmd("RCPT TO:<bad address>"), 501, r"^5\.5\.4", "RCPT syntax")
                check_reply(c.cmd("RSET"), 250, r"^2\.0\.0 Ok", "RSET")
                check_reply(c.cmd("RCPT TO:<b@localhost>"), 503, r"^5\.5\.1", "RCPT after RSET")
                check_reply(c.cmd("NOOP"), 250, r"^2\.0\.0 Ok", "NOOP")
                check_reply(c.cmd("HELP"), 214, None, "HELP")
                check_reply(c.cmd("VRFY postmaster"), 252, r"^2\.0\.0", "VRFY")
                check_reply(c.cmd("FROB nicate"), 500, r"^5\.5\.2", "unknown command")
                check_reply(c.cmd("MAIL FROM:<a@client.test> SIZE=999999999999"), 552, r"^5\.3\.4",
                            "SIZE= over the limit")
                check_reply(c.cmd("MAIL FROM:<a@client.test> SIZE=100"), 250, None, "SIZE= within the limit")
                check_reply(c.cmd("RCPT TO:<b@localhost>"), 250, r"^2\.1\.5 Ok")
                mid = queued_mid(c.data(message("seq")))
                check(mid > 0, "MID")
                check_reply(c.cmd("QUIT"), 221, r"^2\.0\.0 Bye", "QUIT")
                check(c.closed(), "not closed after QUIT")


@case("null sender accepted (RFC 5321 4.5.5)")
def _(ctx):
        gw = ctx.gw()
        with Smtp(gw.port) as c:
                c.ehlo()
                check_reply(c.cmd("MAIL FROM:<>"), 250, r"^2\.1\.0")
                c.rcpt("postmaster@localhost")
                c.data(message("null sender"))
        files = wait_until(lambda: gw.maildir(), 10) or []
        check_eq(len(files), 1, "maildir files")
        check(b"Return-Path: <>" in files[0], "Return-Path <>", files[0][:200])


if __name__ == "__main__":
        run()
