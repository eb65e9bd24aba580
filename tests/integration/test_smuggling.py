#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""SMTP smuggling (CVE-2023-51764 and relatives) against the real tlsgwd.

Only <CR><LF>.<CR><LF> ends DATA (RFC 5321 4.1.1.4). A message with a bare
<LF> or bare <CR> is read to the real terminator and refused with 554 5.6.0
(RFC 5321 2.3.8), so an "end of data" built from bare line ends followed by
a second MAIL FROM can neither end the message early nor inject a second
one, and nothing of it is relayed. Also: dot-stuffing (4.5.2) passes
byte-exact and PIPELINING (RFC 2920) works."""

import time

from harness import (Smtp, case, check, check_eq, check_reply, message, queued_mid, route, run,
                     send_mail, split_received)

SEQUENCES = {
        "LF.LF": b"\n.\n",
        "CR.CR": b"\r.\r",
        "LF.CRLF": b"\n.\r\n",
        "CRLF.LF": b"\r\n.\n",
        "CR.CRLF": b"\r.\r\n",
}

SMUGGLED = (b"MAIL FROM:<admin@sink.test>\r\nRCPT TO:<victim@sink.test>\r\nDATA\r\n"
            b"From: <admin@sink.test>\r\nSubject: smuggled\r\n\r\nsmuggled body\r\n")


def smuggle(gw, seq):
        """Sends one message with seq + a smuggled transaction; returns the
        reply to the real end of DATA and the reply to a NOOP after it."""
        with Smtp(gw.port) as c:
                c.ehlo()
                c.mail("sender@client.test")
                c.rcpt("legit@sink.test")
                check_reply(c.cmd("DATA"), 354, None)
                c.send(b"From: <sender@client.test>\r\nSubject: carrier\r\n\r\nhello" + seq + SMUGGLED + b".\r\n")
                end = c.reply()
                # If the sequence had ended DATA, replies to the smuggled MAIL/RCPT/DATA
                # would now be queued in front of the NOOP's.
                noop = c.cmd("NOOP")
                c.cmd("QUIT")
        return end, noop


def sentinel(gw, sk):
        """A proper message after the attack; once it arrived, anything the
        attack produced would have arrived too (same hop, same queue)."""
        send_mail(gw.port, "sentinel@client.test", ["sentinel@sink.test"], message("sentinel"))
        t = sk.wait(1, 20)
        check(any("sentinel@sink.test" in x.rcpts for x in t), "sentinel message not delivered")
        time.sleep(1.0)


for _name, _seq in SEQUENCES.items():
        def _make(name, seq):
                @case(f"smuggling with {name}: refused 554 5.6.0, no second message, nothing relayed")
                def _(ctx):
                        sk = ctx.sink()
                        gw = ctx.gw(routes=[route("sink.test", sk.port)])
                        end, noop = smuggle(gw, seq)
                        check_reply(end, 554, r"^5\.6\.0 Message refused: bare <CR> or <LF> in message text",
                                    "reply to the end of DATA")
                        check_reply(noop, 250, r"^2\.0\.0 Ok", "reply to NOOP (an extra reply means a second transaction)")
                        sentinel(gw, sk)
                        rc = [r for x in sk.transactions for r in x.rcpts]
                        check_eq(rc, ["sentinel@sink.test"], "recipients that reached the next hop")
                        starts = [m for m in gw.messages() if m.startswith("Start MID")]
                        check_eq(len(starts), 2, f"Start MID lines (carrier + sentinel): {starts}")
        _make(_name, _seq)


@case("bare LF inside a line of an otherwise proper message is refused too")
def _(ctx):
        sk = ctx.sink()
        gw = ctx.gw(routes=[route("sink.test", sk.port)])
        with Smtp(gw.port) as c:
                c.ehlo()
                c.mail("a@client.test")
                c.rcpt("x@sink.test")
                check_reply(c.cmd("DATA"), 354, None)
                c.send(b"Subject: lf\r\n\r\nfirst\nsecond\r\n.\r\n")
                check_reply(c.reply(), 554, r"^5\.6\.0", "bare LF message")
                check_reply(c.cmd("NOOP"), 250, None)
        sentinel(gw, sk)
        check_eq([r for x in sk.transactions for r in x.rcpts], ["sentinel@sink.test"], "relayed")


@case("proper CRLF.CRLF ends DATA")
def _(ctx):
        sk = ctx.sink()
        gw = ctx.gw(routes=[route("sink.test", sk.port)])
        body = b"Subject: proper\r\n\r\nline\r\n"
        with Smtp(gw.port) as c:
                c.ehlo()
                c.mail("a@client.test")
                c.rcpt("x@sink.test")
                check_reply(c.cmd("DATA"), 354, r"End data with <CR><LF>\.<CR><LF>")
                c.send(body + b".\r\n")
                queued_mid(c.reply())
        t = sk.wait(1, 20)
        check_eq(split_received(t[0].data)[1], body, "delivered body")


@case("dot-stuffed lines survive byte-exact to the next hop")
def _(ctx):
        sk = ctx.sink()
        gw = ctx.gw(routes=[route("sink.test", sk.port)])
        # What the client puts on the wire (already stuffed, RFC 5321 4.5.2).
        wire = (b"Subject: dots\r\n\r\n..leading dot\r\n...\r\n..\r\n. space\r\n"
                b"..\r\nmiddle . dot\r\n.x\r\nend\r\n")
        with Smtp(gw.port) as c:
                c.ehlo()
                c.mail("a@client.test")
                c.rcpt("x@sink.test")
                c.data(wire)
        t = sk.wait(1, 20)
        check_eq(len(t), 1, "transactions")
        recv, rest = split_received(t[0].wire)
        check(recv is not None, "no Received header")
        check_eq(rest, wire, "wire bytes after the Received header")


@case("message that is only '.' lines and an empty body")
def _(ctx):
        sk = ctx.sink()
        gw = ctx.gw(routes=[route("sink.test", sk.port)])
        with Smtp(gw.port) as c:
                c.ehlo()
                c.mail("a@client.test")
                c.rcpt("x@sink.test")
                check_reply(c.cmd("DATA"), 354, None)
                c.send(b"..\r\n.\r\n")
                queued_mid(c.reply())
        t = sk.wait(1, 20)
        check_eq(split_received(t[0].wire)[1], b"..\r\n", "stuffed single dot line")


@case("PIPELINING: a whole transaction in one write")
def _(ctx):
        sk = ctx.sink()
        gw = ctx.gw(routes=[route("sink.test", sk.port)])
        with Smtp(gw.port) as c:
                code, text = c.cmd("EHLO client.test")
                check("PIPELINING" in text.upper(), "PIPELINING not advertised", text)
                c.send(b"MAIL FROM:<a@client.test>\r\nRCPT TO:<p1@sink.test>\r\nRCPT TO:<nobody@elsewhere.invalid>\r\n"
                       b"RCPT TO:<p2@sink.test>\r\nDATA\r\n")
                check_reply(c.reply(), 250, r"^2\.1\.0", "MAIL")
                check_reply(c.reply(), 250, r"^2\.1\.5", "RCPT 1")
                r = c.reply()
                check(r[0] in (250, 550), "RCPT 2", r)
                check_reply(c.reply(), 250, r"^2\.1\.5", "RCPT 3")
                check_reply(c.reply(), 354, None, "DATA")
                c.send(b"Subject: pipelined\r\n\r\nbody\r\n.\r\nMAIL FROM:<b@client.test>\r\nRCPT TO:<p3@sink.test>\r\n"
                       b"DATA\r\n")
                queued_mid(c.reply())
                check_reply(c.reply(), 250, r"^2\.1\.0", "second MAIL")
                check_reply(c.reply(), 250, r"^2\.1\.5", "second RCPT")
                check_reply(c.reply(), 354, None, "second DATA")
                c.send(b"Subject: second\r\n\r\nx\r\n.\r\nQUIT\r\n")
                queued_mid(c.reply())
                check_reply(c.reply(), 221, None, "QUIT")
        t = sk.wait(2, 20)
        got = sorted(r for x in t for r in x.rcpts)
        check(set(["p1@sink.test", "p2@sink.test", "p3@sink.test"]) <= set(got), "delivered", got)


@case("pipelined commands after a smuggling attempt are not executed as mail")
def _(ctx):
        sk = ctx.sink()
        gw = ctx.gw(routes=[route("sink.test", sk.port)])
        with Smtp(gw.port) as c:
                c.ehlo()
                c.send(b"MAIL FROM:<a@client.test>\r\nRCPT TO:<x@sink.test>\r\nDATA\r\n")
                c.reply()
                c.reply()
                check_reply(c.reply(), 354, None)
                c.send(b"Subject: a\r\n\r\nbody\n.\nRSET\r\nMAIL FROM:<e@client.test>\r\nRCPT TO:<evil@sink.test>\r\n"
                       b"DATA\r\nevil\r\n.\r\nQUIT\r\n")
                check_reply(c.reply(), 554, r"^5\.6\.0", "end of DATA")
                check_reply(c.reply(), 221, None, "QUIT")
        sentinel(gw, sk)
        check_eq([r for x in sk.transactions for r in x.rcpts], ["sentinel@sink.test"], "relayed")


if __name__ == "__main__":
        run()
