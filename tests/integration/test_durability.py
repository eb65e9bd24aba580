#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Durability of the real tlsgwd's spool: a message acknowledged with 250
survives kill -9 and is delivered exactly once after a restart (RFC 5321
6.1: once accepted, the server is responsible for the message); a message
whose DATA was cut off is never delivered, not even after a restart."""

import socket
import time

from harness import (Smtp, case, check, check_eq, check_reply, free_port, message, queued_mid,
                     route, run, send_mail, split_received, wait_until)


@case("kill -9 right after 250 with the next hop down: delivered exactly once after restart")
def _(ctx):
        port = free_port()
        gw = ctx.gw(routes=[route("later.test", port)])
        body = message("durable", "Must survive.\r\n")
        mid = queued_mid(send_mail(gw.port, "a@client.test", ["x@later.test", "y@later.test"], body))
        gw.kill9()
        sk = ctx.sink(port=port)
        gw.restart()
        t = sk.wait(1, 25)
        check(t, "not delivered after restart")
        time.sleep(2)
        acc = sk.accepted()
        check_eq(sorted(r for x in acc for r in x.rcpts), ["x@later.test", "y@later.test"],
                 "each recipient exactly once")
        check_eq(split_received(acc[0].data)[1], body, "content after restart")
        gw.wait_journal(rf"^Message finished MID {mid} done", 10)


@case("kill -9 with several spooled messages: all delivered after restart")
def _(ctx):
        port = free_port()
        gw = ctx.gw(routes=[route("later.test", port)])
        for i in range(4):
                send_mail(gw.port, "a@client.test", [f"m{i}@later.test"], message(f"many {i}"))
        gw.kill9()
        sk = ctx.sink(port=port)
        gw.restart()
        t = sk.wait(4, 25)
        time.sleep(1.5)
        check_eq(sorted(r for x in sk.accepted() for r in x.rcpts), [f"m{i}@later.test" for i in range(4)],
                 "delivered recipients")


@case("kill -9 during a pending retry after 4xx: delivered after restart")
def _(ctx):
        sk = ctx.sink(data_replies=lambda txn: "451 4.3.0 not yet")
        gw = ctx.gw(routes=[route("later.test", sk.port)], queue={"retry_min": "30s", "retry_max": "60s"})
        mid = queued_mid(send_mail(gw.port, "a@client.test", ["x@later.test"], message("retry kill")))
        gw.wait_journal(rf"^Delayed: DCID \d+ MID {mid}", 20)
        gw.kill9()
        sk.data_replies = None
        gw.restart()
        check(sk.wait(1, 45), "not delivered after restart (recovered messages should be due)")


@case("DATA cut off mid-stream: never delivered, not even after restart")
def _(ctx):
        sk = ctx.sink()
        gw = ctx.gw(routes=[route("cut.test", sk.port)])
        c = Smtp(gw.port)
        c.ehlo()
        c.mail("a@client.test")
        c.rcpt("cut@cut.test")
        check_reply(c.cmd("DATA"), 354, None)
        c.send(b"Subject: cut\r\n\r\nthis message never ends\r\n" + b"x" * 50000 + b"\r\n")
        c.sock.shutdown(socket.SHUT_RDWR)
        c.close()
        gw.wait_journal(r"^MID \d+ aborted|^ICID \d+ close", 10)
        smid = queued_mid(send_mail(gw.port, "a@client.test", ["sentinel@cut.test"], message("sentinel")))
        check(sk.wait(1, 20), "sentinel not delivered")
        # Kill only once the sentinel's delivery is recorded, else redelivering
        # it after restart would be right (the 250 may not have been seen yet).
        gw.wait_journal(rf"^Message finished MID {smid} done", 10)
        gw.kill9()
        gw.restart()
        send_mail(gw.port, "a@client.test", ["sentinel2@cut.test"], message("sentinel2"))
        wait_until(lambda: len(sk.accepted()) >= 2, 20)
        time.sleep(1.5)
        check_eq(sorted(r for x in sk.transactions for r in x.rcpts), ["sentinel2@cut.test", "sentinel@cut.test"],
                 "recipients that reached the next hop")


@case("client gone after '.' but before reading 250: delivered once (the 250 was owed)")
def _(ctx):
        sk = ctx.sink()
        gw = ctx.gw(routes=[route("gone.test", sk.port)])
        c = Smtp(gw.port)
        c.ehlo()
        c.mail("a@client.test")
        c.rcpt("x@gone.test")
        check_reply(c.cmd("DATA"), 354, None)
        c.send(message("gone") + b".\r\n")
        c.close()
        # Either it was accepted (then delivered once) or not (never); not twice.
        time.sleep(3)
        n = len(sk.accepted())
        check(n <= 1, f"delivered {n} times")


@case("kill -9 while a client is in DATA: nothing delivered after restart")
def _(ctx):
        sk = ctx.sink()
        gw = ctx.gw(routes=[route("cut.test", sk.port)])
        c = Smtp(gw.port)
        c.ehlo()
        c.mail("a@client.test")
        c.rcpt("mid@cut.test")
        check_reply(c.cmd("DATA"), 354, None)
        c.send(b"Subject: half\r\n\r\nhalf a message\r\n")
        time.sleep(0.3)
        gw.kill9()
        c.close()
        gw.restart()
        send_mail(gw.port, "a@client.test", ["sentinel@cut.test"], message("sentinel"))
        sk.wait(1, 20)
        time.sleep(1.5)
        check_eq([r for x in sk.transactions for r in x.rcpts], ["sentinel@cut.test"], "relayed")


@case("maildir delivery after kill -9: the file is complete and unique")
def _(ctx):
        gw = ctx.gw()
        for i in range(3):
                send_mail(gw.port, "a@client.test", [f"u{i}@localhost"], message(f"local {i}"))
        wait_until(lambda: len(gw.maildir()) >= 3, 10)
        gw.kill9()
        gw.restart()
        time.sleep(2)
        files = gw.maildir()
        check_eq(len(files), 3, "maildir files after restart")
        check_eq(gw.maildir("tmp"), [], "leftovers in maildir/tmp")


if __name__ == "__main__":
        run()
