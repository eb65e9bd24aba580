#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Process lifecycle of the real tlsgwd: socket activation by name
(sd_listen_fds_with_names(3)) with fds in another order than the config,
sd_notify(3) READY/STATUS/RELOADING/STOPPING, refusing an invalid config
with FILE:LINE, SIGHUP reload (a broken file keeps the old config), and
SIGTERM draining open sessions within shutdown_timeout."""

import os
import re
import signal
import socket
import subprocess
import time

from harness import (TLSGWD, Smtp, Skip, base_config, case, check, check_eq, check_reply, free_port,
                     journal, libconfig, message, queued_mid, run, send_mail, wait_until)


def two_listener_config(g, extra_listener=None):
        c = base_config(g.state_dir, g.ports["inbound"], hostname="gw.test")
        c["listeners"][0]["hostname"] = "gw-in.test"
        sub = dict(c["listeners"][0])
        sub.update({"name": "submission", "port": g.ports["submission"], "hostname": "gw-sub.test"})
        sub.update(extra_listener or {})
        c["listeners"].append(sub)
        return c


def run_tlsgwd(args, timeout=20):
        if not TLSGWD or not os.access(TLSGWD, os.X_OK):
                raise Skip("tlsgwd not built")
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID")}
        return subprocess.run([TLSGWD] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                              timeout=timeout)


def line_of(text, needle):
        for i, line in enumerate(text.splitlines(), 1):
                if needle in line:
                        return i
        raise AssertionError(f"{needle!r} not in config")


@case("socket activation: two listeners passed in reverse order, each greets with its own hostname")
def _(ctx):
        ports = {"inbound": free_port(), "submission": free_port()}
        gw = ctx.gateway(two_listener_config, ports=ports, activation=["submission", "inbound"])
        with gw.smtp("inbound") as c:
                check_reply(c.greeting, 220, r"^gw-in\.test ESMTP tlsgw$", "greeting on inbound")
                code, text = c.cmd("EHLO client.test")
                check(text.startswith("gw-in.test"), "EHLO hostname on inbound", text)
        with gw.smtp("submission") as c:
                check_reply(c.greeting, 220, r"^gw-sub\.test ESMTP tlsgw$", "greeting on submission")
        gw.wait_journal(r"^New SMTP ICID \d+ interface submission ")
        gw.wait_journal(r"^New SMTP ICID \d+ interface inbound ")


@case("socket activation: a listener without a passed fd is bound by the daemon")
def _(ctx):
        ports = {"inbound": free_port(), "submission": free_port()}
        gw = ctx.gateway(two_listener_config, ports=ports, activation=["submission"])
        with gw.smtp("submission") as c:
                check_reply(c.greeting, 220, r"^gw-sub\.test ", "greeting on the passed socket")
        with gw.smtp("inbound") as c:
                check_reply(c.greeting, 220, r"^gw-in\.test ", "greeting on the self-bound socket")


@case("socket activation: mail flows through a passed socket; restart keeps the socket")
def _(ctx):
        ports = {"inbound": free_port(), "submission": free_port()}
        gw = ctx.gateway(two_listener_config, ports=ports, activation=["submission", "inbound"])
        send_mail(ports["submission"], "a@client.test", ["u@localhost"], message("via activation"))
        check(wait_until(lambda: gw.maildir(), 10), "not delivered")
        check_eq(gw.stop(), 0, "exit status")
        gw.start()
        send_mail(ports["inbound"], "a@client.test", ["v@localhost"], message("after restart"))
        check(wait_until(lambda: len(gw.maildir()) >= 2, 10), "not delivered after restart")


@case("sd_notify: READY=1 and STATUS with live counts")
def _(ctx):
        gw = ctx.gw()
        check(gw.notify.seen("READY", "1"), "no READY=1")
        mark = gw.notify.count()
        c = Smtp(gw.port)
        c.ehlo()
        st = gw.notify.seen("STATUS")
        check(st, "no STATUS= at all")
        check(re.search(r"\d", st[-1]["STATUS"]), "STATUS without counts", st[-1])
        # a STATUS update while a session is open (live counts)
        upd = wait_until(lambda: gw.notify.seen("STATUS", since=mark), 10, 0.2)
        c.close()
        check(upd, "no STATUS update within 10s while a session was open", gw.notify.seen("STATUS")[-3:])


@case("invalid config: refuses to start, exit 1, stderr names FILE:LINE")
def _(ctx):
        gw = ctx.gw(gateway_args={"wait_ready": None})
        text = libconfig(base_config(gw.state_dir, gw.port, default_policy="NOSUCHPOLICY"))
        with open(gw.config_path, "w") as f:
                f.write(text)
        # The offending setting's line, or the line of the listener group that
        # holds it (config.h: objects carry the line they were defined on).
        line = line_of(text, "NOSUCHPOLICY")
        group = max(i for i, x in enumerate(text.splitlines()[:line], 1) if x.strip() == "{")
        where = rf"{re.escape(gw.config_path)}:({line}|{group}): "
        r = run_tlsgwd(["--config", gw.config_path])
        err = r.stderr.decode("utf-8", "replace")
        check_eq(r.returncode, 1, f"exit status; stderr:\n{err}")
        check(re.search(where, err), f"stderr does not name {gw.config_path}:{line}: (or :{group}:)",
              "stderr: " + err, "journal: " + "\n".join(str(e.get("MESSAGE")) for e in journal()[-4:]))
        r = run_tlsgwd(["--config", gw.config_path, "--check-config"])
        check_eq(r.returncode, 1, "--check-config exit status")
        check(re.search(where, r.stderr.decode("utf-8", "replace")), "--check-config stderr", r.stderr)


@case("config syntax error: exit 1 with FILE:LINE")
def _(ctx):
        gw = ctx.gw(gateway_args={"wait_ready": None})
        text = libconfig(base_config(gw.state_dir, gw.port)).splitlines()
        text.insert(2, "this is { not libconfig")
        with open(gw.config_path, "w") as f:
                f.write("\n".join(text) + "\n")
        r = run_tlsgwd(["--config", gw.config_path, "--check-config"])
        err = r.stderr.decode("utf-8", "replace")
        check_eq(r.returncode, 1, f"exit status; stderr:\n{err}")
        check(re.search(rf"{re.escape(gw.config_path)}:3: ", err), "stderr does not name line 3", err)


@case("--check-config on a valid file exits 0 without binding")
def _(ctx):
        gw = ctx.gw(gateway_args={"wait_ready": None})
        r = run_tlsgwd(["--config", gw.config_path, "--check-config"])
        check_eq(r.returncode, 0, f"exit status; stderr:\n{r.stderr.decode('utf-8', 'replace')}")
        with socket.socket() as s:
                s.bind(("127.0.0.1", gw.port))   # still free


@case("SIGHUP with a broken config: logged, keeps running with the old config")
def _(ctx):
        gw = ctx.gw(relay=False)
        good = gw.config_text
        with open(gw.config_path, "w") as f:
                f.write(good.replace('default_policy = "ACCEPTED"', 'default_policy = "BROKEN"'))
        mark = gw.notify.count()
        gw.proc.send_signal(signal.SIGHUP)
        logged = wait_until(lambda: gw.config_path in gw.stderr_text() or
                            [e for e in gw.journal() if gw.config_path in str(e.get("MESSAGE", ""))], 10, 0.2)
        check(logged, "no error naming the config file after a broken reload",
              gw.stderr_tail(), [e.get("MESSAGE") for e in gw.journal()][-10:])
        check(gw.running(), "daemon died on a broken reload", gw.stderr_tail())
        # READY=1 again if it announced RELOADING=1
        if gw.notify.seen("RELOADING", "1", since=mark):
                check(gw.notify.wait("READY", "1", 10, since=mark), "RELOADING=1 without READY=1 after it")
        with Smtp(gw.port) as c:
                check_reply(c.greeting, 220, None, "greeting after the broken reload")
                c.ehlo()
                c.mail("a@client.test")
                check_reply(c.cmd("RCPT TO:<x@far.test>"), 550, r"Relay access denied", "old policy still applies")
                c.rcpt("u@localhost")
                c.data(message("after broken reload"))
        check(wait_until(lambda: gw.maildir(), 10), "not delivered after the broken reload")


@case("SIGHUP with a valid changed config applies it (new accepted domain)")
def _(ctx):
        gw = ctx.gw(relay=False)
        with Smtp(gw.port) as c:
                c.ehlo()
                c.mail("a@client.test")
                check_reply(c.cmd("RCPT TO:<x@new.test>"), 550, r"Relay access denied", "before reload")
        newdir = os.path.join(gw.state_dir, "newmail")
        gw.write_config(lambda g: base_config(g.state_dir, g.port, relay=False,
                                              accepted_domains=("localhost", "new.test"),
                                              routes=[{"domain": "new.test", "maildir": newdir}]))
        gw.reload()
        with Smtp(gw.port) as c:
                c.ehlo()
                c.mail("a@client.test")
                check_reply(c.cmd("RCPT TO:<x@new.test>"), 250, r"^2\.1\.5", "after reload")
                c.data(message("new domain"))
        check(wait_until(lambda: os.path.isdir(os.path.join(newdir, "new")) and os.listdir(os.path.join(newdir, "new")), 10),
              "not delivered to the new route's maildir")


@case("SIGHUP: a session open across the reload finishes normally")
def _(ctx):
        gw = ctx.gw(relay=False)
        with Smtp(gw.port) as c:
                c.ehlo()
                c.mail("a@client.test")
                c.rcpt("u@localhost")
                gw.write_config(lambda g: base_config(g.state_dir, g.port, relay=False, hostname="gw2.test"))
                gw.reload()
                c.data(message("across reload"))
        with Smtp(gw.port) as c:
                check_reply(c.greeting, 220, r"^gw2\.test ", "new hostname after reload")
        check(wait_until(lambda: gw.maildir(), 10), "not delivered")


@case("SIGTERM mid-transaction: the session finishes, new connections refused, STOPPING=1, exit 0")
def _(ctx):
        gw = ctx.gw(extra={"shutdown_timeout": "10s"})
        c = Smtp(gw.port)
        c.ehlo()
        c.mail("a@client.test")
        c.rcpt("drain@localhost")
        check_reply(c.cmd("DATA"), 354, None)
        c.send(b"Subject: draining\r\n\r\nfirst half\r\n")
        gw.proc.send_signal(signal.SIGTERM)
        check(gw.notify.wait("STOPPING", "1", 5), "no STOPPING=1")
        time.sleep(0.3)
        refused = False
        try:
                with socket.create_connection(("127.0.0.1", gw.port), timeout=3) as s:
                        s.settimeout(3)
                        try:
                                data = s.recv(512)
                        except (socket.timeout, ConnectionResetError):
                                data = b""
                        refused = not data.startswith(b"220")
        except ConnectionRefusedError:
                refused = True
        check(refused, "new connection got a 220 during shutdown")
        c.send(b"second half\r\n.\r\n")
        mid = queued_mid(c.reply())
        # After the transaction, the draining session may end: 221 to QUIT, or
        # 421 4.3.2 (RFC 5321 3.8, service shutting down) is acceptable too.
        r = c.cmd("QUIT")
        check(r[0] == 221 or (r[0] == 421 and r[1].startswith("4.3.2")), "QUIT while draining", r)
        c.close()
        gw.expected_exit = True
        try:
                rc = gw.proc.wait(15)
        except subprocess.TimeoutExpired:
                raise AssertionError("did not exit within shutdown_timeout after the session ended")
        check_eq(rc, 0, "exit status")
        if not gw.maildir():
                gw.start()
        check(wait_until(lambda: gw.maildir(), 10), f"MID {mid} accepted during shutdown never delivered")


@case("SIGTERM with an idle session: cut after shutdown_timeout, exit 0")
def _(ctx):
        gw = ctx.gw(extra={"shutdown_timeout": "2s"})
        c = Smtp(gw.port)
        c.ehlo()
        t0 = time.monotonic()
        rc = gw.stop(timeout=15)
        dt = time.monotonic() - t0
        check_eq(rc, 0, "exit status")
        check(dt < 8, f"took {dt:.1f}s with shutdown_timeout 2s")
        check(c.closed(3), "session still open after exit")
        c.close()


@case("SIGTERM when idle: STOPPING=1 and exit 0 quickly")
def _(ctx):
        gw = ctx.gw()
        t0 = time.monotonic()
        check_eq(gw.stop(), 0, "exit status")
        check(time.monotonic() - t0 < 5, "slow shutdown without sessions")
        check(gw.notify.seen("STOPPING", "1"), "no STOPPING=1")


@case("built-in defaults without --config: 127.0.0.1:2525, localhost to the state maildir")
def _(ctx):
        with socket.socket() as s:
                try:
                        s.bind(("127.0.0.1", 2525))
                except OSError:
                        raise Skip("127.0.0.1:2525 is in use here")
        # Hide the host's /var inside our private mount namespace (the daemon's
        # default state directory is under it), as StateDirectory= would give.
        subprocess.run(["mount", "-t", "tmpfs", "tlsgw-var", "/var"], check=True)
        ctx.cleanup(lambda: subprocess.run(["umount", "-l", "/var"]))
        for d in ("/var/lib/tlsgw", "/var/local/lib/tlsgw"):
                os.makedirs(d, exist_ok=True)
        gw = ctx.gateway(config=False, ports={"inbound": 2525})
        with Smtp(2525) as c:
                check_reply(c.greeting, 220, r" ESMTP tlsgw$", "greeting")
        send_mail(2525, "a@client.test", ["root@localhost"], message("defaults"))

        def files():
                out = []
                for d in ("/var/lib/tlsgw/mail/new", "/var/local/lib/tlsgw/mail/new"):
                        if os.path.isdir(d):
                                out += [os.path.join(d, f) for f in os.listdir(d)]
                return out
        got = wait_until(files, 10)
        check(got, "nothing in /var/lib/tlsgw/mail/new")
        check(got[0].startswith("/var/lib/tlsgw/"), f"default state directory is not /var/lib/tlsgw: {got[0]}")
        check_eq(gw.stop(), 0, "exit status")


@case("IPv6: a listener on ::1 and a dual-stack listener on :: accept mail and log the v6 client")
def _(ctx):
        if not os.path.exists("/proc/net/if_inet6"):
                raise Skip("the kernel has no IPv6")
        ports = {"inbound": free_port(), "submission": free_port()}

        def v6_config(g):
                c = two_listener_config(g, {"address": "::"})
                c["listeners"][0]["address"] = "::1"
                return c
        gw = ctx.gateway(v6_config, ports=ports)
        with Smtp(ports["inbound"], host="::1") as c:
                check_reply(c.greeting, 220, r"^gw-in\.test ", "greeting over IPv6")
                c.ehlo("client.test")
                c.mail("a@client.test")
                c.rcpt("v6@localhost")
                c.data(message("over IPv6"))
        with Smtp(ports["submission"], host="::1") as c:
                check_reply(c.greeting, 220, r"^gw-sub\.test ", "dual-stack listener, IPv6 client")
        with Smtp(ports["submission"], host="127.0.0.1") as c:
                check_reply(c.greeting, 220, r"^gw-sub\.test ", "dual-stack listener, IPv4 client")
        check(wait_until(lambda: gw.maildir(), 10), "the IPv6 message was not delivered")
        gw.wait_journal(r"^New SMTP ICID \d+ interface inbound \(::1\) address ::1 ")


if __name__ == "__main__":
        run()