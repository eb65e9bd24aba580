#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Every session limit of a listener, hit on purpose against the real
tlsgwd: line length (RFC 5321 4.5.3.1.4/4.5.3.1.6), recipients (4.5.3.1.8),
message size (RFC 1870), error count, idle timeout (4.5.3.2.7) and the
connection limits (total and per client address)."""

import socket
import time

from harness import (Smtp, case, check, check_eq, check_reply, message, route, run, wait_until)


@case("line over max_line: 500 5.5.6 and the session survives")
def _(ctx):
        # 1000 is also the smallest allowed value (RFC 5321 4.5.3.1.6).
        gw = ctx.gw(limits={"max_line": 1000})
        with Smtp(gw.port) as c:
                c.ehlo()
                # exactly max_line octets including CRLF is allowed
                check_reply(c.cmd("NOOP " + "x" * (1000 - 7)), 250, None, "line of exactly max_line octets")
                check_reply(c.cmd("NOOP " + "x" * (1000 - 6)), 500, r"^5\.5\.6 Error: line too long",
                            "line of max_line + 1 octets")
                check_reply(c.cmd("NOOP " + "y" * 5000), 500, r"^5\.5\.6", "much longer line")
                check_reply(c.cmd("NOOP"), 250, r"^2\.0\.0 Ok", "NOOP after too-long lines")
                c.mail("a@client.test")
                c.rcpt("b@localhost")
                c.data(message("after long lines"))
                check_reply(c.cmd("QUIT"), 221, None)


@case("long line inside DATA is refused or the message is refused, never split silently")
def _(ctx):
        sk = ctx.sink()
        gw = ctx.gw(limits={"max_line": 1000}, routes=[route("sink.test", sk.port)])
        with Smtp(gw.port) as c:
                c.ehlo()
                c.mail("a@client.test")
                c.rcpt("b@sink.test")
                check_reply(c.cmd("DATA"), 354, None)
                c.send(b"Subject: long\r\n\r\n" + b"q" * 3000 + b"\r\n.\r\n")
                code, text = c.reply()
                check(code in (250, 500, 552, 554), f"unexpected reply {code} {text}")
                check_reply(c.cmd("NOOP"), 250, None, "session alive after the long DATA line")
        if code == 250:
                t = sk.wait(1, 20)
                check(t and b"q" * 3000 in t[0].data, "long DATA line altered on the way", t)


@case("recipient limit: 452 4.5.3, the accepted ones still delivered")
def _(ctx):
        sk = ctx.sink()
        gw = ctx.gw(limits={"max_recipients": 3}, routes=[route("sink.test", sk.port)])
        with Smtp(gw.port) as c:
                c.ehlo()
                c.mail("a@client.test")
                for i in range(3):
                        c.rcpt(f"r{i}@sink.test")
                check_reply(c.cmd("RCPT TO:<r3@sink.test>"), 452, r"^4\.5\.3", "4th recipient")
                check_reply(c.cmd("RCPT TO:<r4@sink.test>"), 452, r"^4\.5\.3", "5th recipient")
                c.data(message("rcpt limit"))
        t = sk.wait(1, 20)
        check_eq(sorted(r for x in t for r in x.rcpts), ["r0@sink.test", "r1@sink.test", "r2@sink.test"],
                 "delivered recipients")


@case("message size: 552 5.3.4, nothing relayed, session goes on")
def _(ctx):
        sk = ctx.sink()
        gw = ctx.gw(limits={"max_message_size": "4096"}, routes=[route("sink.test", sk.port)])
        with Smtp(gw.port) as c:
                code, text = c.cmd("EHLO client.test")
                check("SIZE 4096" in text.upper().split("\n"), "EHLO SIZE", text)
                check_reply(c.cmd("MAIL FROM:<a@client.test> SIZE=5000"), 552, r"^5\.3\.4", "declared SIZE")
                c.mail("a@client.test")
                c.rcpt("big@sink.test")
                check_reply(c.cmd("DATA"), 354, None)
                c.send(b"Subject: big\r\n\r\n" + (b"0123456789" * 10 + b"\r\n") * 100 + b".\r\n")
                check_reply(c.reply(), 552, r"^5\.3\.4 Message size exceeds fixed limit", "end of oversized DATA")
                check_reply(c.cmd("RSET"), 250, None, "RSET after 552")
                # a small message on the same session still goes through
                c.mail("a@client.test")
                c.rcpt("small@sink.test")
                c.data(message("small"))
                c.cmd("QUIT")
        t = sk.wait(1, 20)
        time.sleep(1)
        check_eq([x.rcpts for x in sk.transactions], [["small@sink.test"]], "relayed transactions")


@case("too many errors: 421 4.7.0 and close")
def _(ctx):
        gw = ctx.gw(limits={"max_errors": 3})
        with Smtp(gw.port) as c:
                c.ehlo()
                got = []
                for i in range(6):
                        try:
                                r = c.cmd(f"BOGUS{i}")
                        except (ConnectionError, OSError):
                                break
                        got.append(r)
                        if r[0] == 421:
                                break
                check(got and got[-1][0] == 421, "no 421 after repeated errors", got)
                check_reply(got[-1], 421, r"^4\.7\.0 gw\.test Error: too many errors", "421 text")
                check(len(got) <= 4, f"421 only after {len(got)} errors with max_errors 3", got)
                check(c.closed(), "not closed after 421")


@case("idle timeout: 421 4.4.2 and close")
def _(ctx):
        gw = ctx.gw(limits={"idle_timeout": "1s"})
        with Smtp(gw.port) as c:
                c.ehlo()
                t0 = time.monotonic()
                c.sock.settimeout(10)
                r = c.reply()
                dt = time.monotonic() - t0
                check_reply(r, 421, r"^4\.4\.2 gw\.test Error: timeout exceeded", "after idling")
                check(0.5 <= dt <= 5, f"timeout after {dt:.1f}s with idle_timeout 1s")
                check(c.closed(), "not closed after the timeout")


@case("idle timeout also applies in DATA (data_timeout)")
def _(ctx):
        sk = ctx.sink()
        gw = ctx.gw(limits={"idle_timeout": "1s", "data_timeout": "1s"}, routes=[route("sink.test", sk.port)])
        with Smtp(gw.port) as c:
                c.ehlo()
                c.mail("a@client.test")
                c.rcpt("x@sink.test")
                check_reply(c.cmd("DATA"), 354, None)
                c.send(b"Subject: stalled\r\n\r\npartial")
                c.sock.settimeout(10)
                check_reply(c.reply(), 421, r"^4\.4\.2", "stalled DATA")
                check(c.closed(), "not closed")
        time.sleep(1)
        check_eq(len(sk.transactions), 0, "stalled message relayed")


@case("connection limit total: 421 4.7.0 too many connections")
def _(ctx):
        gw = ctx.gw(listener={"max_connections": 3, "max_connections_per_ip": 50})
        held = [Smtp(gw.port) for _ in range(3)]
        try:
                for c in held:
                        check_reply(c.greeting, 220, None, "greeting within the limit")
                with Smtp(gw.port, greeting=False) as c:
                        check_reply(c.reply(), 421, r"^4\.7\.0 gw\.test Error: too many connections$", "4th connection")
                        check(c.closed(), "not closed after 421")
                held.pop().close()

                def try_again():
                        with Smtp(gw.port, greeting=False) as c:
                                return c.reply()[0] == 220
                check(wait_until(try_again, 5, 0.2), "no 220 after a slot freed up")
        finally:
                for c in held:
                        c.close()


@case("connection limit per IP: 421 4.7.0 too many connections from 127.0.0.1")
def _(ctx):
        gw = ctx.gw(listener={"max_connections": 100, "max_connections_per_ip": 2})
        held = [Smtp(gw.port) for _ in range(2)]
        try:
                for c in held:
                        check_reply(c.greeting, 220, None, "greeting within the limit")
                with Smtp(gw.port, greeting=False) as c:
                        check_reply(c.reply(), 421, r"^4\.7\.0 gw\.test Error: too many connections from 127\.0\.0\.1",
                                    "3rd connection from one address")
                        check(c.closed(), "not closed after 421")
                # another loopback address is another client (RFC 1122: all of 127/8 is us)
                s = socket.socket()
                s.settimeout(5)
                s.bind(("127.0.0.2", 0))
                s.connect(("127.0.0.1", gw.port))
                data = s.recv(512)
                s.close()
                check(data.startswith(b"220 "), "other client address refused", data)
        finally:
                for c in held:
                        c.close()


@case("max_messages per session")
def _(ctx):
        gw = ctx.gw(limits={"max_messages": 1})
        with Smtp(gw.port) as c:
                c.ehlo()
                c.mail("a@client.test")
                c.rcpt("b@localhost")
                c.data(message("first"))
                r = c.cmd("MAIL FROM:<a@client.test>")
                check(r[0] in (421, 451, 452), "second MAIL over max_messages not refused", r)


if __name__ == "__main__":
        run()
