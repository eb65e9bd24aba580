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
import sys
import time

from harness import (Skip, Smtp, base_config, case, check, check_eq, diag, message, run, wait_until)
from tlspeer import install_cert, p

# The private instance is the benchmark's (tests/bench/postfix.py), with
# more TLS logging, quick retries and a transport that enforces TLS.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
import postfix  # noqa: E402

TLSGW_SERVICE = """\
tlsgw unix - - n - - smtp
  -o smtp_tls_security_level=encrypt
  -o smtp_tls_loglevel=1
"""
TEST_MAIN = {
        "smtpd_tls_loglevel": "1",
        "smtpd_tls_received_header": "yes",
        "smtp_tls_loglevel": "1",
        "queue_run_delay": "1s",
        "minimal_backoff_time": "1s",
        "maximal_backoff_time": "2s",
}


class Postfix(postfix.Postfix):
        """The private instance as a test resource: SKIP where Postfix cannot
        run, stopped when the case ends, its log searched by the checks."""

        def __init__(self, ctx, port, relayhost_port, relay_domains=("mx.test",), transports=None,
                     cert=None, key=None, chain=None):
                why = postfix.available()
                if why:
                        raise Skip(why)
                super().__init__(ctx.workdir, port, relayhost_port, relay_domains, key=key, cert=cert,
                                 chain=chain, name=f"postfix-{port}", hostname="pf.test", transports=transports,
                                 services=TLSGW_SERVICE, main_extra=TEST_MAIN)
                ctx.cleanup(self.stop)

        def start(self):
                try:
                        super().start()
                except postfix.PostfixError as e:
                        raise Skip(str(e))

        def wait_log(self, pattern, timeout=20.0):
                rx = re.compile(pattern, re.M)
                m = wait_until(lambda: rx.search(self.log()), timeout, 0.2)
                check(m, f"no /{pattern}/ in the Postfix log", self.log()[-2000:])
                return m


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
        pf = Postfix(ctx, pf_port, relayhost_port=ps.port, relay_domains=("mx.test",), cert=leaf, key=key,
                     chain=p("intermediate.pem"))
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
