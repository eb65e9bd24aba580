#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Live commits and gwctl tls verify.

A commit applies without a restart (same pid): a TLS session opened
before a certificate swap keeps working to the end of its transaction
while a new session gets the new certificate; a listener added by commit
accepts, one deleted stops; a renewed certificate is served to new
handshakes at once. A commit whose new listener cannot bind (the port is
taken) changes nothing: file, history, version, listeners.

`gwctl tls verify DOMAIN` connects the way delivery would and reports
STARTTLS, protocol, cipher, chain, verification and kTLS, against a
scriptable TLS peer: verified with the right CA, unverified with another,
no STARTTLS, nobody listening.
"""

import os
import re
import socket
import time

from harness import (Gateway, base_config, bus_property, case, check, check_eq, check_unchanged, ctl_gateway, field,
                     free_port, gateway_files, gwctl, json_record, message, port_is_closed, route, run,
                     truthy, Smtp, check_reply)
from tlspeer import TlsPeer, client_context, fingerprint_der, fingerprint_file, install_cert, p, starttls

MANAGER = "org.tlsgw.Gateway1.Manager"


def tls_session(port):
        c = Smtp(port)
        c.ehlo()
        check_eq(starttls(c, client_context())[0], 220, "STARTTLS")
        c.ehlo()
        return c


def served_fingerprint(port):
        c = tls_session(port)
        fp = fingerprint_der(c.sock.getpeercert(binary_form=True))
        c.cmd("QUIT")
        c.close()
        return fp


def store(g, name, f):
        return os.path.join(g.state_dir, "certs", name, f)


@case("certificate swap by commit: the open TLS session completes, a new one sees the new certificate")
def _(ctx):
        def cfg(g):
                install_cert(g.state_dir, "old", p("server-ec.pem"), p("server-ec.key"), p("intermediate.pem"))
                return base_config(g.state_dir, g.port, listener={"tls": "preferred", "certificate": "old"})
        g = Gateway(ctx, cfg, bus=True)
        pid = g.proc.pid
        check_eq(served_fingerprint(g.port), fingerprint_file(p("server-ec.pem")), "old certificate served")
        s1 = tls_session(g.port)
        fp1 = fingerprint_der(s1.sock.getpeercert(binary_form=True))
        s1.mail("a@localhost")
        gwctl("cert", "create", "new", "--cn", "mx.test", "--san", "mx.test").ok("cert create new")
        gwctl("listener", "set", "inbound", "--certificate", "new").ok("listener set --certificate new")
        gwctl("commit", "-m", "swap certificate").ok("commit")
        # The session from before the commit goes on.
        s1.rcpt("b@localhost")
        s1.data(message("across the swap"))
        check_eq(fingerprint_der(s1.sock.getpeercert(binary_form=True)), fp1, "same session")
        s1.cmd("QUIT")
        s1.close()
        check_eq(served_fingerprint(g.port), fingerprint_file(store(g, "new", "cert.pem")),
                 "a new session sees the new certificate")
        check_eq(g.proc.pid, pid, "no restart")
        check(g.running(), "daemon running")
        check(g.maildir(), "the message sent across the swap was delivered")


@case("cert renew of a certificate in use: new handshakes get it at once, no commit needed")
def _(ctx):
        g = ctl_gateway(ctx, listener={"tls": "preferred"})
        gwctl("cert", "create", "mx", "--cn", "mx.test", "--days", "10").ok("create")
        gwctl("listener", "set", "inbound", "--certificate", "mx").ok("set")
        gwctl("commit", "-m", "mx").ok("commit")
        before = served_fingerprint(g.port)
        check_eq(before, fingerprint_file(store(g, "mx", "cert.pem")), "mx served")
        time.sleep(1.1)
        gwctl("cert", "renew", "mx").ok("renew")
        after = served_fingerprint(g.port)
        check(after != before, "a different certificate after renew")
        check_eq(after, fingerprint_file(store(g, "mx", "cert.pem")), "the renewed certificate is served")


@case("listener added by commit accepts without a restart; deleted by commit stops")
def _(ctx):
        g = ctl_gateway(ctx)
        pid = g.proc.pid
        port2 = free_port()
        gwctl("listener", "add", "second", "--address", "127.0.0.1", "--port", port2, "--default-policy", "ACCEPTED",
              "--hostname", "second.test", "--tls", "off", "--accepted-domain", "localhost").ok("listener add")
        check(port_is_closed(port2), "not listening before commit")
        gwctl("commit", "-m", "second listener").ok("commit")
        with Smtp(port2) as c:
                check_reply(c.greeting, 220, r"second\.test", "greeting of the new listener")
                c.ehlo()
                c.mail("a@localhost")
                c.rcpt("b@localhost")
                c.data(message("via second"))
        check_eq(g.proc.pid, pid, "no restart")
        check(sorted(bus_property(MANAGER, "Listeners")) == ["inbound", "second"], "Listeners property")
        # Re-bind: move it to another port.
        port3 = free_port()
        gwctl("listener", "set", "second", "--port", port3).ok("listener set --port")
        gwctl("commit", "-m", "move second").ok("commit")
        with Smtp(port3) as c:
                check_eq(c.greeting[0], 220, "listener on its new port")
        check(port_is_closed(port2), "old port closed after re-bind")
        gwctl("listener", "delete", "second").ok("listener delete")
        gwctl("commit", "-m", "no second").ok("commit")
        check(port_is_closed(port3), "deleted listener stops accepting")
        with Smtp(g.port) as c:
                check_eq(c.greeting[0], 220, "inbound unaffected")
        check_eq(g.proc.pid, pid, "still no restart")


@case("commit with a listener that cannot bind (port in use) changes nothing")
def _(ctx):
        g = ctl_gateway(ctx)
        gwctl("policy", "add", "ONE", "--action", "relay").ok("stage")
        gwctl("commit", "-m", "one").ok("commit")
        version = bus_property(MANAGER, "ConfigVersion")
        busy = socket.socket()
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        ctx.cleanup(busy.close)
        gwctl("listener", "add", "busy", "--address", "127.0.0.1", "--port", port, "--default-policy",
              "ACCEPTED").ok("stage a listener on a taken port")
        gwctl("policy", "add", "TWO", "--action", "relay").ok("stage more")
        before = gateway_files(g)
        r = gwctl("commit", "-m", "cannot bind")
        r.fails(rf"busy|{port}|bind|in use", "commit with a port in use")
        check_unchanged(before, gateway_files(g), "failed commit")
        check_eq(bus_property(MANAGER, "ConfigVersion"), version, "ConfigVersion unchanged")
        check_eq(bus_property(MANAGER, "Listeners"), ["inbound"], "Listeners unchanged")
        check("TWO" not in gwctl("config", "show").ok("config show").out, "running config unchanged")
        with Smtp(g.port) as c:
                check_eq(c.greeting[0], 220, "inbound still accepts")
        # Free the port: the same pending set now commits.
        busy.close()
        gwctl("commit", "-m", "now it binds").ok("commit after the port is free")
        with Smtp(port) as c:
                check_eq(c.greeting[0], 220, "new listener accepts")


@case("commit refused when a listener names a certificate that is not in the store")
def _(ctx):
        g = ctl_gateway(ctx, listener={"tls": "preferred"})
        r = gwctl("listener", "set", "inbound", "--certificate", "ghost")
        if r.rc == 0:
                before = gateway_files(g)
                gwctl("commit", "-m", "ghost").fails(r"ghost", "commit with an unknown certificate")
                check_unchanged(before, gateway_files(g), "refused commit")
                gwctl("abandon").ok("abandon")
        else:
                r.fails(r"ghost", "staging an unknown certificate")
        with Smtp(g.port) as c:
                check_eq(c.greeting[0], 220, "still serving")


def verify(domain, *extra):
        r = gwctl("--json", "tls", "verify", domain, *extra)
        return r, (json_record(r) if r.out.strip() else {})


@case("tls verify: verified peer with leaf + intermediate, protocol, cipher, names")
def _(ctx):
        peer = TlsPeer(ctx.workdir, cert=p("server-ec.pem"), key=p("server-ec.key"), chain=p("intermediate.pem"))
        ctx.cleanup(peer.stop)
        ctl_gateway(ctx, routes=[route("verify.test", peer.port)],
                        extra={"tls_client": {"ca_file": p("ca.pem")}})
        r, rec = verify("verify.test")
        r.ok("tls verify")
        check(truthy(field(rec, "starttls")), "STARTTLS offered", rec)
        check(str(field(rec, "protocol")).startswith("TLSv1."), "protocol", rec)
        check(field(rec, "cipher"), "cipher", rec)
        check(truthy(field(rec, "verified")), "chain verified against tls_client.ca_file", rec)
        check_eq(int(field(rec, "port")), peer.port, "port from the route")
        check_eq(field(rec, "address"), "127.0.0.1", "address")
        chain = field(rec, "chain") or []
        check(len(chain) == 2 and "mx.test" in str(chain[0]) and "Intermediate" in str(chain[1]),
              "chain subjects leaf, intermediate", chain)
        check("mx.test" in str(field(rec, "names")), "certificate names", rec)
        check(field(rec, "ktlstx") is not None, "kTLS TX reported", rec)
        t = gwctl("tls", "verify", "verify.test").ok("tls verify table").out
        check(re.search(r"TLSv1\.[23]", t), "protocol in the human output", t)
        check(peer.conns() and not any(c.commands and "MAIL" in " ".join(c.commands) for c in peer.conns()),
              "no mail was sent by verify", peer.conns())


@case("tls verify: untrusted peer, no STARTTLS, nobody listening, invalid domain")
def _(ctx):
        untrusted = TlsPeer(ctx.workdir, name="untrusted", cert=p("untrusted.pem"), key=p("untrusted.key"))
        ctx.cleanup(untrusted.stop)
        plain = TlsPeer(ctx.workdir, name="plain", starttls=False)
        ctx.cleanup(plain.stop)
        dead = free_port()
        ctl_gateway(ctx, routes=[route("untrusted.test", untrusted.port), route("plain.test", plain.port),
                                     route("dead.test", dead)],
                        extra={"tls_client": {"ca_file": p("ca.pem")}})
        r, rec = verify("untrusted.test")
        check(truthy(field(rec, "starttls")) and not truthy(field(rec, "verified")), "not verified", r)
        check(field(rec, "verify_error"), "verify error given", rec)
        r, rec = verify("plain.test")
        check(rec and not truthy(field(rec, "starttls")), "no STARTTLS reported", r)
        r, rec = verify("dead.test")
        check(r.rc != 0 or field(rec, "error"), "nobody listening is an error", r)
        check(re.search(r"refused|connect", r.text, re.I), "the error says why", r)
        gwctl("tls", "verify", "bad..domain").fails(r"domain|bad\.\.domain", "invalid domain")


if __name__ == "__main__":
        run()
