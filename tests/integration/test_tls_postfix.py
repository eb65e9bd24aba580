#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""STARTTLS between the real tlsgwd and a real Postfix, both ways.

A private Postfix instance (its own config_directory, queue_directory and
data_directory under the test's temporary directory, no chroot, smtpd on a
high loopback port, its log in a file via postlogd) is started with
`postfix -c DIR start` and stopped with `postfix -c DIR stop`:

  1. Postfix's smtp client delivers into tlsgwd with TLS enforced
     (smtp_tls_security_level = encrypt on a transport for the test
     domain); tlsgwd relays to a recording sink. tlsgwd must log
     "ICID n TLS success" and the sink must see "with ESMTPS".
  2. tlsgwd delivers to Postfix's smtpd (smtpd_tls_security_level = may,
     the test PKI's server certificate for mx.test) with destination
     tls = "required-verify" and ca_file = the test root: delivered and
     "verified yes" logged; Postfix relays on to Postfix's smtp-sink.
  3. The same with a certificate for another name: tlsgwd defers.

A host where Postfix cannot run says SKIP with the reason.
"""

import os
import re
import shutil
import signal
import subprocess
import time

from harness import (Skip, Smtp, base_config, case, check, check_eq, diag, message, run, wait_until)
import tlspeer
from tlspeer import install_cert, p

POSTFIX = "/usr/sbin/postfix"
# Postfix programs run as this user (main.cf mail_owner) and need to read
# their configuration, the PKI and their queue.
MAIL_OWNER = "postfix"
# How long Postfix may take from "postfix start" to an answering smtpd.
POSTFIX_START_TIMEOUT = 15.0

MASTER_CF = """\
{smtpd_listen} inet n - n - - smtpd
pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
tlsmgr unix - - n 1000? 1 tlsmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
smtp unix - - n - - smtp
relay unix - - n - - smtp
tlsgw unix - - n - - smtp
  -o smtp_tls_security_level=encrypt
  -o smtp_tls_loglevel=1
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
local unix - n n - - local
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
"""


class Postfix:
        """A private Postfix instance under workdir."""

        def __init__(self, ctx, port, relayhost_port, transports=None, relay_domains=("mx.test",),
                     cert=None, key=None):
                if not os.access(POSTFIX, os.X_OK):
                        raise Skip(f"{POSTFIX} not installed")
                try:
                        import pwd
                        pwd.getpwnam(MAIL_OWNER)
                except KeyError:
                        raise Skip(f"no user {MAIL_OWNER!r} for Postfix's mail_owner")
                self.ctx = ctx
                self.port = port
                self.dir = os.path.join(ctx.workdir, f"postfix-{port}")
                self.conf = os.path.join(self.dir, "conf")
                self.queue = os.path.join(self.dir, "queue")
                self.data = os.path.join(self.dir, "data")
                self.maillog = os.path.join(self.dir, "maillog")
                self.started = False
                for d in (self.dir, self.conf, self.queue):
                        os.makedirs(d, exist_ok=True)
                        os.chmod(d, 0o755)
                os.makedirs(self.data, exist_ok=True)
                shutil.chown(self.data, MAIL_OWNER)
                with open(os.path.join(self.conf, "transport"), "w") as f:
                        for dom, dest in (transports or {}).items():
                                f.write(f"{dom} {dest}\n")
                main = {
                        "compatibility_level": "3.6",
                        "queue_directory": self.queue,
                        "data_directory": self.data,
                        "meta_directory": "/etc/postfix",
                        "shlib_directory": "/usr/lib/postfix",
                        "mail_owner": MAIL_OWNER,
                        "setgid_group": "postdrop",
                        "myhostname": "pf.test",
                        "mydomain": "pf.test",
                        "myorigin": "pf.test",
                        # Nothing is delivered locally: every domain is relayed.
                        "mydestination": "",
                        "local_recipient_maps": "",
                        "alias_maps": "",
                        "alias_database": "",
                        "inet_interfaces": "127.0.0.1",
                        "inet_protocols": "ipv4",
                        "mynetworks": "127.0.0.0/8",
                        "relay_domains": " ".join(relay_domains),
                        "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
                        "transport_maps": "texthash:" + os.path.join(self.conf, "transport"),
                        "relayhost": f"[127.0.0.1]:{relayhost_port}",
                        "smtp_dns_support_level": "disabled",
                        # Postfix 3.4+ logs through postlogd into a file: no syslog here.
                        "maillog_file": self.maillog,
                        "maillog_file_prefixes": self.dir,
                        "smtpd_tls_loglevel": "1",
                        "smtpd_tls_received_header": "yes",
                        "smtp_tls_loglevel": "1",
                        "queue_run_delay": "1s",
                        "minimal_backoff_time": "1s",
                        "maximal_backoff_time": "2s",
                        "biff": "no",
                }
                if cert:
                        main.update({"smtpd_tls_security_level": "may",
                                     "smtpd_tls_chain_files": f"{key}, {cert}"})
                with open(os.path.join(self.conf, "main.cf"), "w") as f:
                        for k, v in main.items():
                                f.write(f"{k} = {v}\n")
                with open(os.path.join(self.conf, "master.cf"), "w") as f:
                        f.write(MASTER_CF.format(smtpd_listen=f"127.0.0.1:{port}"))
                ctx.cleanup(self.stop)

        def _postfix(self, *args, timeout=60):
                # Postfix reports command errors to syslog only; script(1)
                # gives it a terminal so they also reach us on stderr.
                cmd = [POSTFIX, "-c", self.conf] + list(args)
                if shutil.which("script"):
                        argv = ["script", "-qec", " ".join(cmd), "/dev/null"]
                else:
                        argv = cmd
                r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout,
                                   stdin=subprocess.DEVNULL)
                return (r.returncode, r.stdout.decode("utf-8", "replace").replace("\r", ""))

        def start(self):
                rc, out = self._postfix("check")
                if rc != 0:
                        raise Skip(f"postfix check failed: {out.strip()[-400:]}")
                rc, out = self._postfix("start")
                if rc != 0:
                        raise Skip(f"postfix start failed: {out.strip()[-400:]} {self.log()[-400:]}")
                self.started = True

                def answering():
                        try:
                                with Smtp(self.port, timeout=2) as c:
                                        return c.greeting[0] == 220
                        except (OSError, Exception):  # noqa: BLE001 - any failure means not yet
                                return False
                if not wait_until(answering, POSTFIX_START_TIMEOUT, 0.2):
                        raise Skip(f"Postfix smtpd did not answer on port {self.port}: {self.log()[-600:]}")

        def log(self):
                try:
                        with open(self.maillog, errors="replace") as f:
                                return f.read()
                except OSError:
                        return ""

        def wait_log(self, pattern, timeout=20.0):
                rx = re.compile(pattern, re.M)
                m = wait_until(lambda: rx.search(self.log()), timeout, 0.2)
                check(m, f"no /{pattern}/ in the Postfix log", self.log()[-2000:])
                return m

        def master_pid(self):
                try:
                        with open(os.path.join(self.queue, "pid", "master.pid")) as f:
                                return int(f.read().strip())
                except (OSError, ValueError):
                        return None

        def stop(self):
                if not self.started:
                        return
                self.started = False
                pid = self.master_pid()
                self._postfix("stop")
                # "postfix stop" only signals the master; wait until it is gone
                # so that its ports and queue are free for the next case.
                if pid and not wait_until(lambda: not _alive(pid), 10):
                        os.kill(pid, signal.SIGKILL)


def _alive(pid):
        try:
                with open(f"/proc/{pid}/stat") as f:
                        return f.read().split(")")[-1].split()[0] != "Z"
        except OSError:
                return False


def free_ports(n):
        from harness import free_port
        out = set()
        while len(out) < n:
                out.add(free_port())
        return list(out)


@case("Postfix delivers into tlsgwd with TLS enforced (smtp_tls_security_level = encrypt)")
def _(ctx):
        sk = ctx.sink(name="next")
        pf_port, gw_port = free_ports(2)

        def cfg(g):
                install_cert(g.state_dir, "mx", p("server-ec.pem"), p("server-ec.key"), p("server-chain.pem"))
                lst = {"tls": "required", "certificates": ["mx"]}
                return base_config(g.state_dir, g.port, listener=lst,
                                   routes=[{"domain": "in.test", "hosts": [f"127.0.0.1:{sk.port}"]}])
        gw = ctx.gateway(cfg, ports={"inbound": gw_port})
        pf = Postfix(ctx, pf_port, relayhost_port=sk.port, relay_domains=("in.test",),
                     transports={"in.test": f"tlsgw:[127.0.0.1]:{gw_port}"})
        pf.start()
        with Smtp(pf_port) as c:
                c.ehlo()
                c.mail("sender@client.test")
                c.rcpt("user@in.test")
                c.data(message("via postfix", "Postfix to tlsgwd over TLS.\r\n", "sender@client.test", "user@in.test"))
                c.cmd("QUIT")
        got = sk.wait(1, 30)
        check(got, "nothing reached the sink behind tlsgwd", pf.log()[-2500:], "\n".join(gw.messages()[-20:]))
        check_eq(got[0].rcpts, ["user@in.test"], "recipients at the sink")
        data = got[0].data
        check(b"Postfix to tlsgwd over TLS." in data, "body", data[:800])
        # Our Received header comes first and names the TLS session (RFC 3848).
        check(re.match(rb"Received: from pf\.test ", data), "first Received header is not tlsgwd's", data[:400])
        check(b"with ESMTPS" in data.split(b"\r\nReceived:", 1)[0], "tlsgwd's Received lacks ESMTPS", data[:600])
        e = gw.wait_journal(r"^ICID \d+ TLS success protocol TLSv1\.[23] cipher \S+")
        diag(e.get("MESSAGE"))
        m = pf.wait_log(r"TLS connection established to 127\.0\.0\.1\[127\.0\.0\.1\]:\d+: (TLSv1\.[23]) with cipher (\S+)")
        check_eq(m.group(1), e.get("TLSGW_TLS_PROTOCOL"), "protocol in Postfix's log and ours")
        check_eq(m.group(2), e.get("TLSGW_TLS_CIPHER"), "cipher in Postfix's log and ours")
        pf.wait_log(r"to=<user@in\.test>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:\d+,.* status=sent")


def outbound_to_postfix(ctx, leaf, key):
        ps = ctx.postfix_sink()
        pf_port = free_ports(1)[0]
        certfile = os.path.join(ctx.workdir, f"pf-{os.path.basename(leaf)}")
        tlspeer.cat(certfile, leaf, p("intermediate.pem"))
        os.chmod(certfile, 0o644)
        keyfile = os.path.join(ctx.workdir, f"pf-{os.path.basename(key)}")
        shutil.copyfile(key, keyfile)
        shutil.chown(keyfile, MAIL_OWNER)
        os.chmod(keyfile, 0o600)
        pf = Postfix(ctx, pf_port, relayhost_port=ps.port, relay_domains=("mx.test",), cert=certfile, key=keyfile)
        pf.start()

        def cfg(g):
                c = base_config(g.state_dir, g.port,
                                routes=[{"domain": "mx.test", "hosts": [f"127.0.0.1:{pf_port}"]}],
                                queue={"retry_min": "1s", "retry_max": "2s"})
                c["destinations"].append({"domain": "mx.test", "tls": "required-verify", "ca_file": p("ca.pem")})
                return c
        gw = ctx.gateway(cfg)
        with Smtp(gw.port) as c:
                c.ehlo()
                c.mail("sender@client.test")
                c.rcpt("user@mx.test")
                c.data(message("to postfix", "tlsgwd to Postfix over verified TLS.\r\n", "sender@client.test",
                               "user@mx.test"))
                c.cmd("QUIT")
        return gw, pf, ps


@case("tlsgwd delivers to Postfix with required-verify: verified yes, relayed to smtp-sink")
def _(ctx):
        gw, pf, ps = outbound_to_postfix(ctx, p("server-ec.pem"), p("server-ec.key"))
        msgs = ps.wait(1, 30)
        check(msgs, "nothing reached smtp-sink behind Postfix", pf.log()[-2500:], "\n".join(gw.messages()[-20:]))
        check_eq(ps.envelope(msgs[0]), ("sender@client.test", ["user@mx.test"]), "envelope at smtp-sink")
        check(b"tlsgwd to Postfix over verified TLS." in msgs[0], "body", msgs[0][:800])
        e = gw.wait_journal(r"^DCID \d+ TLS success protocol TLSv1\.[23] cipher \S+.* verified yes$")
        diag(e.get("MESSAGE"))
        m = pf.wait_log(r"TLS connection established from \S+: (TLSv1\.[23]) with cipher (\S+)")
        check_eq(m.group(1), e.get("TLSGW_TLS_PROTOCOL"), "protocol in Postfix's log and ours")
        check_eq(m.group(2), e.get("TLSGW_TLS_CIPHER"), "cipher in Postfix's log and ours")
        # Postfix's own Received header records the TLS session it accepted.
        check(re.search(rb"\(using TLSv1\.[23] with cipher ", msgs[0]), "Postfix's Received has no TLS note",
              msgs[0][:1200])


@case("tlsgwd to Postfix with a certificate for another name: required-verify defers")
def _(ctx):
        gw, pf, ps = outbound_to_postfix(ctx, p("wrongname.pem"), p("wrongname.key"))
        e = gw.wait_journal(r"^DCID \d+ TLS failed: certificate name mismatch", timeout=20)
        diag(e.get("MESSAGE"))
        gw.wait_journal(r"^Delayed: DCID \d+ MID \d+", timeout=10)
        time.sleep(1)
        check_eq(ps.messages(), [], "messages at smtp-sink")
        check(not re.search(r"status=sent", pf.log()), "Postfix relayed something", pf.log()[-1500:])


if __name__ == "__main__":
        run()
