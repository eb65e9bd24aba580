#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Inbound STARTTLS (RFC 3207) on the real tlsgwd.

The matrix: listener tls = off / preferred / required / preferred-verify /
required-verify x client {no TLS, TLS 1.2, TLS 1.3 pinned exactly} x client
certificate {valid (chain to client_ca), untrusted (another root), none},
each row with its expected replies and ICID log line. Then RFC 3207 edge
cases, the CVE-2011-0411 plaintext injection, per-policy overrides, the
Received header (RFC 3848 ESMTPS), openssl s_client for versions, ciphers,
chains (-showcerts), ECDSA/RSA selection by signature algorithms and
session resumption, swaks --tls end to end, the demo certificate and a
certificate replaced under a running daemon (SIGHUP).
"""

import os
import re
import ssl

from harness import (POLICIES, Context, Failure, Skip, Smtp, base_config, case, check, check_eq, check_reply,
                     diag, message, queued_mid, route, run, split_received, swaks, wait_until)
import tlspeer
from tlspeer import client_context, install_cert, local_port, p, s_client

MODES = ["off", "preferred", "required", "preferred-verify", "required-verify"]
CLIENTS = [("none", None), ("TLSv1.2", "valid"), ("TLSv1.2", "untrusted"), ("TLSv1.2", "none"),
           ("TLSv1.3", "valid"), ("TLSv1.3", "untrusted"), ("TLSv1.3", "none")]
MUST_STARTTLS = "530 5.7.0 Must issue a STARTTLS command first"
EC = ("server-ec.pem", "server-ec.key", "server-chain.pem")
RSA = ("server-rsa.pem", "server-rsa.key", "server-chain.pem")


def install(g, certs):
        for name, (leaf, key, chain) in certs.items():
                install_cert(g.state_dir, name, p(leaf), p(key), p(chain) if chain else None)


def tls_gateway(ctx, mode="preferred", certs=None, listener=None, routes=None, extra=None, policies=None,
                gateway_args=None):
        """A gateway whose listener "inbound" runs STARTTLS in `mode` with the
        store entries `certs` ({name: (leaf, key, chain)} from the PKI;
        None = {"mx": EC}, {} = the demo certificate)."""
        certs = {"mx": EC} if certs is None else certs

        def cfg(g):
                install(g, certs)
                lst = {"tls": mode}
                if certs:
                        lst["certificates"] = list(certs)
                if mode.endswith("-verify"):
                        lst["client_ca"] = p("client-ca.pem")
                lst.update(listener or {})
                c = base_config(g.state_dir, g.port, listener=lst, routes=routes, extra=extra)
                if policies:
                        c["policies"] = policies
                return c
        return ctx.gateway(cfg, **(gateway_args or {}))


def client_cert(ctx, kind):
        """(certfile, keyfile) for the client certificate kinds."""
        if kind == "valid":
                # client_ca holds the root only: the client sends the intermediate.
                f = os.path.join(ctx.workdir, "client-fullchain.pem")
                if not os.path.exists(f):
                        tlspeer.cat(f, p("client.pem"), p("intermediate.pem"))
                return (f, p("client.key"))
        if kind == "untrusted":
                return (p("client-untrusted.pem"), p("client-untrusted.key"))
        return (None, None)


def icid_of(gw, port, timeout=10.0):
        """The ICID of our connection from 127.0.0.1:port."""
        def find():
                for e in gw.journal():
                        if str(e.get("TLSGW_CLIENT_PORT")) == str(port) and \
                           str(e.get("MESSAGE", "")).startswith("New SMTP ICID"):
                                return str(e.get("TLSGW_ICID"))
                return None
        icid = wait_until(find, timeout, 0.2)
        check(icid, f"no 'New SMTP ICID' entry for client port {port}", "\n".join(gw.messages()[-10:]))
        return icid


def icid_entries(gw, icid):
        return [e for e in gw.journal() if str(e.get("TLSGW_ICID")) == str(icid)]


def wait_icid(gw, icid, pattern, timeout=10.0):
        rx = re.compile(pattern)
        found = wait_until(lambda: [e for e in icid_entries(gw, icid) if rx.search(str(e.get("MESSAGE", "")))],
                           timeout, 0.2)
        if not found:
                raise Failure(f"no ICID {icid} entry matching /{pattern}/; its entries:\n  "
                              + "\n  ".join(str(e.get("MESSAGE")) for e in icid_entries(gw, icid)))
        return found[0]


def tls_handshake(c, ctx):
        """STARTTLS + handshake + EHLO; returns (ok, error text). With TLS 1.3
        a server that refuses the client certificate says so only after the
        client's handshake finished, so the EHLO is part of the attempt."""
        r = c.cmd("STARTTLS")
        check_reply(r, 220, r"^2\.0\.0 Ready to start TLS$", "STARTTLS")
        check_eq(c.buf, b"", "bytes after the 220 to STARTTLS")
        try:
                c.sock.settimeout(tlspeer.TLS_TIMEOUT)
                c.sock = ctx.wrap_socket(c.sock)
                r = c.cmd("EHLO client.test")
                check_reply(r, 250, None, "EHLO after TLS")
                return (True, None)
        except (ssl.SSLError, OSError, ConnectionError) as e:
                return (False, str(e))


def expect_row(mode, version, cert):
        """(what happens, log pattern or None)."""
        if version == "none":
                return ("mail refused with 530" if mode.startswith("required") else "mail accepted", None)
        if mode == "off":
                return ("STARTTLS refused with 502", None)
        if mode == "required-verify" and cert != "valid":
                return ("handshake refused", r"^ICID \d+ TLS failed: ")
        tail = ""
        if mode.endswith("-verify"):
                # An untrusted certificate still has a subject to show.
                tail = {"valid": r" client certificate verified yes CN client\.test",
                        "untrusted": r" client certificate verified no CN client\.test",
                        "none": r" client certificate verified no"}[cert]
        return ("TLS, mail accepted", rf"^ICID \d+ TLS success protocol {re.escape(version)} cipher \S+"
                + r"( ktls(?: tx)?(?: rx)?)?" + tail + "$")


MODE_GW = {}


def mode_start(ctx, mode):
        mctx = Context(ctx.workdir)
        MODE_GW[mode] = (mctx, None)
        gw = tls_gateway(mctx, mode)
        MODE_GW[mode] = (mctx, gw)


def mode_stop(ctx, mode):
        mctx, gw = MODE_GW.pop(mode, (None, None))
        if mctx is None:
                raise Failure("the gateway was not started")
        if gw is not None:
                check_eq(gw.stop(), 0, "tlsgwd exit status after SIGTERM")
        errs = mctx.run_cleanups()
        check(not errs, "cleanup: " + "; ".join(str(e) for e in errs))


def mode_row(ctx, mode, version, cert):
        mctx, gw = MODE_GW.get(mode, (None, None))
        if gw is None:
                raise Failure(f"the {mode} gateway did not start (see the case before)")
        what, pattern = expect_row(mode, version, cert)
        with Smtp(gw.port) as c:
                port = local_port(c)
                r = c.cmd("EHLO client.test")
                check_reply(r, 250, None, "EHLO")
                offered = "STARTTLS" in r[1].split("\n")
                check_eq(offered, mode != "off", "STARTTLS advertised in EHLO")
                if version == "none":
                        if mode.startswith("required"):
                                check_eq(c.cmd("MAIL FROM:<a@client.test>"), (530, MUST_STARTTLS[4:]), "MAIL")
                                check_eq(c.cmd("RCPT TO:<b@localhost>"), (530, MUST_STARTTLS[4:]), "RCPT")
                                check_eq(c.cmd("DATA"), (530, MUST_STARTTLS[4:]), "DATA")
                                check_reply(c.cmd("NOOP"), 250, None, "NOOP")
                        else:
                                c.mail("a@client.test")
                                c.rcpt("b@localhost")
                        c.cmd("QUIT")
                        icid = icid_of(gw, port)
                        check(not [e for e in icid_entries(gw, icid) if " TLS " in str(e.get("MESSAGE"))],
                              "TLS logged for a clear-text session")
                        return
                if mode == "off":
                        check_reply(c.cmd("STARTTLS"), 502, r"^5\.5\.1 ", "STARTTLS")
                        c.mail("a@client.test")
                        c.cmd("QUIT")
                        return
                certfile, keyfile = client_cert(ctx, cert)
                ok, err = tls_handshake(c, client_context(version, certfile, keyfile))
                icid = icid_of(gw, port)
                e = wait_icid(gw, icid, pattern)
                if what == "handshake refused":
                        check(not ok, "the TLS session was usable although the client certificate is "
                              f"{cert}; log: {e.get('MESSAGE')!r}")
                        check(not [x for x in icid_entries(gw, icid) if " TLS success " in str(x.get("MESSAGE"))],
                              "TLS success logged for a refused client")
                        diag(f"client saw: {err}; log: {e.get('MESSAGE')}")
                        return
                check(ok, f"TLS failed on the client side: {err}")
                check_eq(c.sock.version(), version, "negotiated protocol")
                cipher = c.sock.cipher()[0]
                check_eq(e.get("TLSGW_TLS_PROTOCOL"), version, "TLSGW_TLS_PROTOCOL")
                check_eq(e.get("TLSGW_TLS_CIPHER"), cipher, "TLSGW_TLS_CIPHER")
                kt = str(e.get("TLSGW_KTLS_TX"))
                check(kt in ("0", "1"), f"TLSGW_KTLS_TX={kt!r}")
                check_eq(" ktls tx" in str(e.get("MESSAGE")), kt == "1", "'ktls tx' in the text agrees with TLSGW_KTLS_TX")
                if mode.endswith("-verify"):
                        check_eq(str(e.get("TLSGW_TLS_VERIFIED")), "1" if cert == "valid" else "0", "TLSGW_TLS_VERIFIED")
                else:
                        check(e.get("TLSGW_TLS_VERIFIED") is None, "TLSGW_TLS_VERIFIED without a certificate request")
                c.mail("a@client.test")
                c.rcpt("b@localhost")
                c.cmd("QUIT")


for _mode in MODES:
        case(f"{_mode}: gateway with listener tls = {_mode} starts")(lambda ctx, m=_mode: mode_start(ctx, m))
        for _v, _c in CLIENTS:
                _what, _ = expect_row(_mode, _v, _c)
                _name = f"{_mode} x client {_v}" + (f" cert {_c}" if _c else "") + f": {_what}"
                case(_name)(lambda ctx, m=_mode, v=_v, cc=_c: mode_row(ctx, m, v, cc))
        case(f"{_mode}: gateway stops cleanly")(lambda ctx, m=_mode: mode_stop(ctx, m))


# ------------------------------------------------------------ RFC 3207 --

@case("RFC 3207: STARTTLS with an argument 501, after TLS 503 and not advertised, HELO forgotten")
def _(ctx):
        gw = tls_gateway(ctx, "preferred")
        with Smtp(gw.port) as c:
                c.ehlo()
                check_reply(c.cmd("STARTTLS now"), 501, r"^5\.5\.4 ", "STARTTLS with an argument")
                r = tlspeer.starttls(c, client_context())
                check_eq(r, (220, "2.0.0 Ready to start TLS"), "STARTTLS")
                # RFC 3207 4.2: the server discards knowledge from before TLS.
                check_reply(c.cmd("MAIL FROM:<a@client.test>"), 503, r"^5\.5\.1 ", "MAIL before a new EHLO")
                r = c.cmd("EHLO client.test")
                check_reply(r, 250, None, "EHLO after TLS")
                check("STARTTLS" not in r[1].split("\n"), "STARTTLS advertised again after TLS", r)
                check_reply(c.cmd("STARTTLS"), 503, r"^5\.5\.1 ", "second STARTTLS")
                c.mail("a@client.test")
                c.rcpt("b@localhost")
                c.data(message("after tls", "Body.\r\n", "a@client.test", "b@localhost"))
                c.cmd("QUIT")


@case("CVE-2011-0411: plaintext pipelined after STARTTLS drops the session")
def _(ctx):
        gw = tls_gateway(ctx, "preferred")
        with Smtp(gw.port) as c:
                port = local_port(c)
                c.ehlo()
                c.send(b"STARTTLS\r\nMAIL FROM:<a@b>\r\n")
                check(c.closed(5.0), "the session was not closed")
                check(b"250" not in c.buf, f"the injected MAIL was answered: {c.buf!r}")
        icid = icid_of(gw, port)
        e = wait_icid(gw, icid, r"(?i)pipelin|plaintext|clear ?text")
        diag(e.get("MESSAGE"))
        # The daemon keeps serving.
        with Smtp(gw.port) as c:
                c.ehlo()
                check_reply(c.cmd("STARTTLS"), 220, None, "STARTTLS on a new session")


@case("policy override: tls required for the sender group over a listener with tls off")
def _(ctx):
        pol = [dict(x) for x in POLICIES]
        for x in pol:
                if x["name"] == "RELAYED":
                        x["tls"] = "required"
        gw = tls_gateway(ctx, "off", policies=pol)
        with Smtp(gw.port) as c:
                r = c.ehlo()
                check("STARTTLS" in r[1].split("\n"), "STARTTLS not advertised", r)
                check_eq(c.cmd("MAIL FROM:<a@client.test>"), (530, MUST_STARTTLS[4:]), "MAIL before TLS")
                ok, err = tls_handshake(c, client_context())
                check(ok, f"TLS: {err}")
                c.mail("a@client.test")


@case("policy override: tls off for the sender group over a listener with tls required")
def _(ctx):
        pol = [dict(x) for x in POLICIES]
        for x in pol:
                if x["name"] == "RELAYED":
                        x["tls"] = "off"
        gw = tls_gateway(ctx, "required", policies=pol)
        with Smtp(gw.port) as c:
                r = c.ehlo()
                check("STARTTLS" not in r[1].split("\n"), "STARTTLS advertised with the policy's tls off", r)
                check_reply(c.cmd("STARTTLS"), 502, r"^5\.5\.1 ", "STARTTLS")
                c.mail("a@client.test")


@case("Received header: with ESMTPS and (using TLSv1.3 with cipher ... (n/n bits))")
def _(ctx):
        gw = tls_gateway(ctx, "preferred")
        with Smtp(gw.port) as c:
                c.ehlo()
                ok, err = tls_handshake(c, client_context("TLSv1.3"))
                check(ok, f"TLS: {err}")
                name, _, bits = c.sock.cipher()
                c.mail("a@client.test")
                c.rcpt("b@localhost")
                c.data(message("received", "Body.\r\n", "a@client.test", "b@localhost"))
                c.cmd("QUIT")
        files = wait_until(lambda: gw.maildir(), 10) or []
        check(files, "nothing in the maildir")
        hdr = files[0].split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
        rcv = re.search(r"(?ms)^Received: from client\.test.*?(?=^\S)", hdr + "\r\nX:")
        check(rcv, "no Received header from client.test", hdr)
        text = re.sub(r"\r\n[ \t]+", " ", rcv.group(0))
        check(re.search(r"\bwith ESMTPS\b", text), "no 'with ESMTPS'", text)
        want = f"(using TLSv1.3 with cipher {name} ({bits}/{bits} bits))"
        check(want in text, f"no {want!r}", text)


# -------------------------------------------------------- openssl / swaks --

@case("versions: TLS 1.2 and 1.3 accepted with ECDHE AEAD ciphers, CBC refused")
def _(ctx):
        gw = tls_gateway(ctx, "preferred")
        r = s_client(gw.port, ["-tls1_2"])
        check_eq(r["protocol"], "TLSv1.2", "s_client -tls1_2 protocol\n" + r["out"][-1500:])
        check(re.match(r"ECDHE-ECDSA-(AES\d+-GCM-SHA\d+|CHACHA20-POLY1305)$", r["cipher"] or ""),
              f"TLS 1.2 cipher {r['cipher']!r}")
        r = s_client(gw.port, ["-tls1_3"])
        check_eq(r["protocol"], "TLSv1.3", "s_client -tls1_3 protocol\n" + r["out"][-1500:])
        # A CBC suite is not in TLS_CIPHERS_DEFAULT (RFC 9325 4.2: AEAD only).
        r = s_client(gw.port, ["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA"])
        check(r["cipher"] is None, f"CBC suite negotiated: {r['cipher']!r}")


@case("versions: a TLS 1.1 client is refused (TLS 1.2 minimum)")
def _(ctx):
        gw = tls_gateway(ctx, "preferred")
        ok, how = tlspeer.tls11_client_works()
        if not ok:
                raise Skip(f"this OpenSSL cannot offer TLS 1.1 at all ({how}); the refusal cannot be shown")
        with Smtp(gw.port) as c:
                port = local_port(c)
                c.ehlo()
                ok, err = tls_handshake(c, client_context("TLSv1.1"))
                check(not ok, "a TLS 1.1 session was established")
        e = wait_icid(gw, icid_of(gw, port), r"^ICID \d+ TLS failed: ")
        diag(e.get("MESSAGE"))


@case("tls_min_version TLSv1.3: TLS 1.2 refused, TLS 1.3 accepted")
def _(ctx):
        gw = tls_gateway(ctx, "preferred", listener={"tls_min_version": "TLSv1.3"})
        with Smtp(gw.port) as c:
                port = local_port(c)
                c.ehlo()
                ok, err = tls_handshake(c, client_context("TLSv1.2"))
                check(not ok, "a TLS 1.2 session was established")
        wait_icid(gw, icid_of(gw, port), r"^ICID \d+ TLS failed: ")
        with Smtp(gw.port) as c:
                c.ehlo()
                ok, err = tls_handshake(c, client_context("TLSv1.3"))
                check(ok, f"TLS 1.3: {err}")
                check_eq(c.sock.version(), "TLSv1.3", "protocol")


@case("tls_ciphers / tls_ciphersuites restrict what is negotiated")
def _(ctx):
        gw = tls_gateway(ctx, "preferred", listener={"tls_ciphersuites": "TLS_CHACHA20_POLY1305_SHA256",
                                                      "tls_ciphers": "ECDHE+CHACHA20"})
        with Smtp(gw.port) as c:
                c.ehlo()
                ok, err = tls_handshake(c, client_context("TLSv1.3"))
                check(ok, f"TLS 1.3: {err}")
                check_eq(c.sock.cipher()[0], "TLS_CHACHA20_POLY1305_SHA256", "TLS 1.3 suite")
        r = s_client(gw.port, ["-tls1_2"])
        check_eq(r["cipher"], "ECDHE-ECDSA-CHACHA20-POLY1305", "TLS 1.2 cipher\n" + r["out"][-800:])
        r = s_client(gw.port, ["-tls1_2", "-cipher", "ECDHE+AESGCM"])
        check(r["cipher"] is None, f"an excluded cipher was negotiated: {r['cipher']!r}")


@case("-showcerts: the leaf and the intermediate are served, never the root")
def _(ctx):
        gw = tls_gateway(ctx, "preferred")
        for v in ("-tls1_2", "-tls1_3"):
                r = s_client(gw.port, [v, "-showcerts"])
                check_eq(len(r["certs"]), 2, f"certificates sent ({v})\n" + r["out"][-1500:])
                check_eq(tlspeer.fingerprint_pem(r["certs"][0]), tlspeer.fingerprint_file(p("server-ec.pem")),
                         f"leaf ({v})")
                check_eq(tlspeer.fingerprint_pem(r["certs"][1]), tlspeer.fingerprint_file(p("intermediate.pem")),
                         f"second certificate ({v})")
        r = s_client(gw.port, ["-CAfile", p("ca-bundle.pem"), "-verify_return_error"])
        check(re.search(r"Verify return code: 0 \(ok\)", r["out"]), "chain does not verify against the root",
              r["out"][-800:])


@case("dual certificates: RSA for an RSA-only client, ECDSA otherwise, full chain each")
def _(ctx):
        gw = tls_gateway(ctx, "preferred", certs={"ec": EC, "rsa": RSA})
        ec_fp = tlspeer.fingerprint_file(p("server-ec.pem"))
        rsa_fp = tlspeer.fingerprint_file(p("server-rsa.pem"))
        for v in ("-tls1_2", "-tls1_3"):
                r = s_client(gw.port, [v, "-showcerts"])
                check_eq(len(r["certs"]), 2, f"chain length ({v}, default)\n" + r["out"][-800:])
                check_eq(tlspeer.fingerprint_pem(r["certs"][0]), ec_fp, f"leaf for a default client ({v})")
                r = s_client(gw.port, [v, "-showcerts", "-sigalgs", "RSA-PSS+SHA256:RSA+SHA256"])
                check_eq(len(r["certs"]), 2, f"chain length ({v}, RSA-only)\n" + r["out"][-800:])
                check_eq(tlspeer.fingerprint_pem(r["certs"][0]), rsa_fp, f"leaf for an RSA-only client ({v})")
                check_eq(r["key_bits"], 2048, f"server key size ({v}, RSA-only)")


@case("session resumption: s_client -sess_out / -sess_in reports Reused (TLS 1.2 and 1.3)")
def _(ctx):
        gw = tls_gateway(ctx, "preferred")
        for v in ("-tls1_2", "-tls1_3"):
                sess = os.path.join(ctx.workdir, f"sess{v}.pem")
                r1 = s_client(gw.port, [v, "-sess_out", sess])
                check(r1["new"], f"first handshake ({v})\n" + r1["out"][-800:])
                check(os.path.exists(sess) and os.path.getsize(sess) > 0, f"no session saved ({v})", r1["out"][-800:])
                r2 = s_client(gw.port, [v, "-sess_in", sess])
                check(r2["reused"], f"not resumed ({v})\n" + r2["out"][-1200:])


@case("swaks --tls relays end to end; the next hop sees with ESMTPS")
def _(ctx):
        sk = ctx.sink()
        gw = tls_gateway(ctx, "required", routes=[route("sink.test", sk.port)])
        rc, out = swaks(gw.port, "s@client.test", ["r@sink.test"], body="over tls",
                        extra=["--tls"])
        check_eq(rc, 0, f"swaks exit status\n{out}")
        check(re.search(r"<~\s+250 .*queued as MID \d+", out), "no 250 queued over TLS in swaks output", out)
        got = sk.wait(1, 20)
        check(got, "nothing at the next hop")
        rcv, _ = split_received(got[0].data)
        check(rcv and b"with ESMTPS" in rcv and b"using TLSv1.3" in rcv, "Received header", rcv)


# ------------------------------------------------------------- certificates --

@case("demo certificate: created on first start (CN = hostname), served, warned about, kept")
def _(ctx):
        gw = tls_gateway(ctx, "preferred", certs={})
        d = os.path.join(gw.state_dir, "certs", "demo")
        check(os.path.exists(os.path.join(d, "cert.pem")) and os.path.exists(os.path.join(d, "key.pem")),
              f"no demo certificate in {d}", os.listdir(os.path.dirname(d)) if os.path.isdir(os.path.dirname(d)) else "")
        check_eq(os.stat(os.path.join(d, "key.pem")).st_mode & 0o077, 0, "demo key readable by others")
        fp = tlspeer.fingerprint_file(os.path.join(d, "cert.pem"))
        r = s_client(gw.port, ["-showcerts"])
        check(r["certs"], "no certificate served\n" + r["out"][-800:])
        check_eq(tlspeer.fingerprint_pem(r["certs"][0]), fp, "served certificate is the demo one")
        check(re.search(r"CN\s*=\s*gw\.test", tlspeer.cert_info(r["certs"][0])["subject"] or ""),
              "demo subject", tlspeer.cert_info(r["certs"][0]))
        w = gw.wait_journal(r"(?i)demo certificate")
        check_eq(str(w.get("PRIORITY")), "4", "priority of the demo warning")
        gw.restart()
        check_eq(tlspeer.fingerprint_file(os.path.join(d, "cert.pem")), fp, "demo certificate kept over a restart")


@case("certificate replaced + SIGHUP: new handshakes see it, an open TLS session keeps working")
def _(ctx):
        gw = tls_gateway(ctx, "preferred")
        old = Smtp(gw.port)
        ctx.cleanup(old.close)
        old.ehlo()
        ok, err = tls_handshake(old, client_context("TLSv1.3"))
        check(ok, f"TLS: {err}")
        check_eq(tlspeer.fingerprint_der(old.sock.getpeercert(binary_form=True)),
                 tlspeer.fingerprint_file(p("server-ec.pem")), "certificate before the reload")
        install_cert(gw.state_dir, "mx", p("server-rsa.pem"), p("server-rsa.key"), p("server-chain.pem"))
        gw.reload()
        r = s_client(gw.port, ["-showcerts"])
        check(r["certs"], "no certificate after the reload\n" + r["out"][-800:])
        check_eq(tlspeer.fingerprint_pem(r["certs"][0]), tlspeer.fingerprint_file(p("server-rsa.pem")),
                 "certificate after the reload")
        old.mail("a@client.test")
        old.rcpt("b@localhost")
        rep = old.data(message("across reload", "Body.\r\n", "a@client.test", "b@localhost"))
        queued_mid(rep)
        old.cmd("QUIT")


if __name__ == "__main__":
        run()
