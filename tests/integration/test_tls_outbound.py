#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Outbound STARTTLS (RFC 3207) through the real tlsgwd: the destination
TLS modes none / preferred / required / preferred-verify / required-verify
against scripted peers (trusted, untrusted and wrongly named certificates,
no STARTTLS, STARTTLS answered 454, broken handshakes, no ESMTP), with the
delivery outcome, what the peer saw, the DCID log lines, and the alert
mail for required TLS failures (once per domain per tls_alerts.interval).

Each mode runs one gateway that relays one message with a recipient at
every peer kind (the gateway splits it by domain); the row cases then check
the recorded results one by one.
"""

import os
import re
import time

from harness import (Failure, Skip, Smtp, base_config, case, check, check_eq, diag, message, run,
                     wait_until)
import tlspeer
from tlspeer import TlsPeer, install_cert, p

MODES = ["none", "preferred", "required", "preferred-verify", "required-verify"]
# Peer kind -> recipient domain. The trusted and untrusted peers serve
# certificates for mx.test and mail.example.test, so that only trust (not
# the name) decides for them; wrong.test gets a certificate for other.test.
DOMAINS = {
        "trusted": "mx.test",
        "untrusted": "mail.example.test",
        "wrongname": "wrong.test",
        "nostarttls": "plain.test",
        "refused": "refuse.test",
        "hsclose": "hsclose.test",
        "hsgarbage": "hsgarbage.test",
        "noesmtp": "noesmtp.test",
}
KINDS = list(DOMAINS)
ALERT_RCPT = "postmaster@localhost"

# gateway/smtp-client.h DELIVERY_TLS_* texts.
NO_ESMTP = "the peer does not speak ESMTP (EHLO rejected)"
NOT_OFFERED = "STARTTLS not advertised"
REFUSED = "STARTTLS answered with an error"
HANDSHAKE = "TLS handshake failed"
UNTRUSTED = "certificate not trusted"
MISMATCH = "certificate name mismatch"

D, X = "delivered", "deferred"


def expect(mode, kind):
        """(outcome, peer saw TLS, DCID TLS line: None/"success"/"failed",
        verified: None/True/False, failure reason, alert)."""
        verify = mode.endswith("-verify")
        required = mode.startswith("required")
        if mode == "none":
                return (D, False, None, None, None, False)
        if kind in ("trusted", "untrusted", "wrongname"):
                ok = kind == "trusted"
                if mode == "required-verify" and not ok:
                        return (X, True, "failed", None, UNTRUSTED if kind == "untrusted" else MISMATCH, True)
                return (D, True, "success", (ok if verify else None), None, False)
        if kind in ("hsclose", "hsgarbage"):
                # After the 220 there is no way back to clear text (smtp-client.h).
                return (X, False, "failed", None, HANDSHAKE, required)
        reason = {"nostarttls": NOT_OFFERED, "refused": REFUSED, "noesmtp": NO_ESMTP}[kind]
        if required:
                return (X, False, "failed", None, reason, True)
        return (D, False, None, None, None, False)


def dest_config(mode, ca=True, extra=None):
        d = {"domain": "default", "max_connections": 5, "max_messages_per_connection": 50,
             "max_recipients_per_message": 100, "tls": mode}
        if ca:
                d["ca_file"] = p("ca-bundle.pem")
        d.update(extra or {})
        return d


def tls_gateway(ctx, peers, mode, dest_extra=None, extra=None, queue=None):
        """A gateway routing DOMAINS[kind] to peers[kind], destination
        default in `mode`, alerts to postmaster@localhost (its maildir)."""
        routes = [{"domain": dom, "hosts": [f"127.0.0.1:{peers[k].port}"]}
                  for k, dom in DOMAINS.items() if k in peers]
        ex = {"alert_recipients": [ALERT_RCPT],
              "tls_alerts": {"enabled": True, "interval": "1h"},
              "tls_client": {"ca_file": p("ca-bundle.pem")}}
        ex.update(extra or {})
        q = {"retry_min": "1s", "retry_max": "1s"}
        q.update(queue or {})

        def cfg(g):
                c = base_config(g.state_dir, g.port, routes=routes, extra=ex, queue=q)
                c["destinations"] = [dest_config(mode, extra=dest_extra)]
                return c
        return ctx.gateway(cfg)


def start_peers(ctx, kinds):
        peers = {}
        for k in kinds:
                pr = TlsPeer(ctx.workdir, name=k, **tlspeer.peer_kinds()[k])
                ctx.cleanup(pr.stop)
                peers[k] = pr
        return peers


def submit(gw, rcpts, subject):
        with Smtp(gw.port) as c:
                c.ehlo()
                c.mail("sender@client.test")
                for r in rcpts:
                        c.rcpt(r)
                c.data(message(subject, "TLS outbound body.\r\n", "sender@client.test", rcpts[0]))
                c.cmd("QUIT")


def dcids_for(gw, domain):
        """DCIDs of connections the gateway logged for domain, in order."""
        out = []
        for e in gw.journal():
                if e.get("TLSGW_DOMAIN") == domain and str(e.get("MESSAGE", "")).startswith("New SMTP DCID"):
                        out.append(str(e.get("TLSGW_DCID")))
        return out


def dcid_lines(gw, dcids):
        want = set(dcids)
        return [str(e.get("MESSAGE", "")) for e in gw.journal() if str(e.get("TLSGW_DCID")) in want]


def alert_entries(gw, domain=None):
        return [e for e in gw.journal()
                if str(e.get("MESSAGE", "")).startswith("Alert: required TLS delivery to")
                and (domain is None or e.get("TLSGW_DOMAIN") == domain)]


def conn_summary(conns):
        """The first connections in full, then only how many there were."""
        return f"{len(conns)} connection(s), first: {conns[:2]}"


RESULTS = {}


def run_mode(ctx, mode):
        peers = start_peers(ctx, KINDS)
        gw = tls_gateway(ctx, peers, mode)
        rcpts = [f"user@{DOMAINS[k]}" for k in KINDS]
        submit(gw, rcpts, f"outbound {mode}")
        exp = {k: expect(mode, k) for k in KINDS}
        delivered = [k for k in KINDS if exp[k][0] == D]
        deferred = [k for k in KINDS if exp[k][0] == X]
        # Delivered rows arrive within a retry or two; a deferred row is
        # watched for at least two attempts, so that the alert rate limit
        # is exercised (retry every second, alert interval one hour).
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
                if all(peers[k].accepted() for k in delivered) and \
                   all(len(peers[k].conns()) >= 2 for k in deferred):
                        break
                time.sleep(0.2)
        n_alerts = len({k for k in deferred if exp[k][5]})
        if n_alerts:
                wait_until(lambda: len(gw.maildir()) >= n_alerts, 5)
        # One more second: a second alert for a domain would show up now.
        time.sleep(1.5)
        res = {"gw": gw, "peers": peers, "exp": exp, "dcids": {}, "lines": {}, "alerts": {},
               "mails": gw.maildir()}
        for k in KINDS:
                dom = DOMAINS[k]
                res["dcids"][k] = dcids_for(gw, dom)
                res["lines"][k] = dcid_lines(gw, res["dcids"][k])
                res["alerts"][k] = alert_entries(gw, dom)
        res["all_messages"] = gw.messages()
        gw.stop()
        RESULTS[mode] = res
        for k in KINDS:
                diag(f"{mode} x {k}: {conn_summary(peers[k].conns())}; accepted {peers[k].accepted()}")


def check_row(mode, kind):
        res = RESULTS.get(mode)
        if res is None:
                raise Failure(f"mode {mode}: the gateway run failed (see the case before)")
        outcome, saw_tls, tls_line, verified, reason, alert = res["exp"][kind]
        pr = res["peers"][kind]
        dom = DOMAINS[kind]
        lines = res["lines"][kind]
        acc = pr.accepted()
        conns = pr.conns()
        ctxt = f"peer: {conn_summary(conns)}\nDCID lines:\n  " + "\n  ".join(lines[:12])
        check(conns, f"the gateway never connected to the {kind} peer", ctxt)
        if outcome == D:
                check(acc, f"{mode} x {kind}: expected delivery, peer accepted nothing", ctxt)
                check_eq(acc[0].rcpts, [f"user@{dom}"], "recipients at the peer")
                if saw_tls:
                        check(acc[0].tls == "TLSv1.3", f"expected the mail over TLS 1.3, got {acc[0].tls!r}", ctxt)
                        # The route host is an IP literal, which SNI cannot
                        # carry (RFC 6066 3): the domain is the name to send.
                        tconn = [c for c in conns if c.cid == acc[0].conn_id][0]
                        check_eq(tconn.sni, dom, "SNI sent")
                else:
                        check(acc[0].tls is None, f"expected the mail in clear text, got TLS {acc[0].tls!r}", ctxt)
        else:
                check(not acc, f"{mode} x {kind}: expected deferral, the peer accepted {acc}", ctxt)
                check(any(m.startswith("Delayed: DCID ") for m in lines),
                      "no 'Delayed: DCID n' line for the domain's connections", ctxt)
                # Nothing after a failed verification reaches the peer.
                for c in conns:
                        check(not any(x.startswith("TLS MAIL") or x.startswith("MAIL") for x in c.commands),
                              f"MAIL sent to a peer whose TLS policy failed: {c.commands}", ctxt)
        if mode == "none":
                check(all(c.starttls == 0 for c in conns), "STARTTLS sent with tls = none", ctxt)
        if kind == "refused" and mode in ("preferred", "preferred-verify"):
                check(any(c.starttls for c in conns), "the 454 peer never got a STARTTLS", ctxt)
        succ = [m for m in lines if re.search(r"^DCID \d+ TLS success ", m)]
        fail = [m for m in lines if re.search(r"^DCID \d+ TLS failed: ", m)]
        if tls_line == "success":
                check(succ, "no 'DCID n TLS success' line", ctxt)
                m = re.match(r"^DCID \d+ TLS success protocol TLSv1\.3 cipher (\S+)( ktls(?: tx)?(?: rx)?)?"
                             r"( verified (yes|no)(?: \(.*\))?)?$", succ[0])
                check(m, f"TLS success line has an unexpected form: {succ[0]!r}")
                if verified is None:
                        check(m.group(3) is None, f"'verified' logged although {mode} does not verify: {succ[0]!r}")
                else:
                        check_eq(m.group(4), "yes" if verified else "no", f"verified in {succ[0]!r}")
        elif tls_line == "failed":
                check(fail, f"no 'DCID n TLS failed: {reason}' line", ctxt)
                check(any(reason in m for m in fail), f"TLS failed lines do not name '{reason}'", ctxt)
                check(not succ or kind in ("untrusted", "wrongname"),
                      "a TLS success line for a failed handshake", ctxt)
        else:
                check(not succ, f"TLS success logged for the {kind} peer", ctxt)
        if kind == "refused" and mode.startswith("required"):
                ce = [m for m in res["all_messages"]
                      if re.match(rf"Connection Error: DCID \d+ domain: {re.escape(dom)} ", m)]
                check(any(re.search(r"details: 454[- ]", m) and "reason: unexpected SMTP response" in m for m in ce),
                      "no 'Connection Error: ... details: 454 ... reason: unexpected SMTP response' line",
                      "\n".join(ce) or "(no Connection Error lines)")
        alerts = res["alerts"][kind]
        if alert:
                check(len(conns) >= 2, f"only {len(conns)} attempt(s): the alert rate limit was not exercised")
                check_eq(len(alerts), 1, f"alert journal entries for {dom} ({len(conns)} failed attempts)")
                a = alerts[0]
                check_eq(str(a.get("PRIORITY")), "4", "alert priority (warning)")
                check(str(a.get("MESSAGE")).startswith(f"Alert: required TLS delivery to {dom} failed: {reason}"),
                      f"alert text: {a.get('MESSAGE')!r}")
                mails = [m for m in res["mails"] if dom.encode() in m]
                check_eq(len(mails), 1, f"alert mails to {ALERT_RCPT} naming {dom}")
                check(reason.encode() in mails[0], f"the alert mail does not name the reason '{reason}'",
                      mails[0][:1500])
        else:
                check_eq(len(alerts), 0, f"alert entries for {dom}")
                check(not [m for m in res["mails"] if dom.encode() in m], f"an alert mail names {dom}")


for _mode in MODES:
        case(f"{_mode}: one message relayed towards every peer kind")(lambda ctx, m=_mode: run_mode(ctx, m))
        for _kind in KINDS:
                _e = expect(_mode, _kind)
                _desc = f"{_e[0]}" + (" over TLS" if _e[1] else "") + \
                        (f" ({_e[4]})" if _e[4] else "") + (", alert" if _e[5] else "")
                case(f"{_mode} x {_kind}: {_desc}")(lambda ctx, m=_mode, k=_kind: check_row(m, k))


@case("required, alerts disabled: deferred without an alert")
def _(ctx):
        peers = start_peers(ctx, ["nostarttls"])
        gw = tls_gateway(ctx, peers, "required", extra={"tls_alerts": {"enabled": False, "interval": "1h"}})
        submit(gw, ["user@plain.test"], "alerts off")
        check(wait_until(lambda: len(peers["nostarttls"].conns()) >= 2, 15),
              "fewer than two delivery attempts", conn_summary(peers["nostarttls"].conns()))
        gw.wait_journal(rf"TLS failed: {re.escape(NOT_OFFERED)}")
        time.sleep(1.5)
        check_eq(peers["nostarttls"].accepted(), [], "accepted at the peer")
        check_eq(alert_entries(gw), [], "alert journal entries")
        check_eq(gw.maildir(), [], "alert mails")


@case("destination tls_min_version TLSv1.3: a TLS 1.2-only peer is refused (required)")
def _(ctx):
        import ssl
        pr = TlsPeer(ctx.workdir, name="tls12", cert=p("server-ec.pem"), key=p("server-ec.key"),
                     chain=p("server-chain.pem"), versions=(ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2))
        ctx.cleanup(pr.stop)
        gw = tls_gateway(ctx, {"trusted": pr}, "required", dest_extra={"tls_min_version": "TLSv1.3"})
        submit(gw, ["user@mx.test"], "min version")
        e = gw.wait_journal(r"^DCID \d+ TLS failed: ", timeout=15)
        check(HANDSHAKE in e["MESSAGE"], f"reason: {e['MESSAGE']!r}")
        check_eq(pr.accepted(), [], "accepted at the TLS 1.2 peer")
        check(any(c.handshake_error for c in pr.conns()), "the peer saw no failed handshake", pr.conns())


@case("destination TLS 1.2 peer: delivered with TLS 1.2 and an ECDHE AEAD cipher (preferred)")
def _(ctx):
        import ssl
        pr = TlsPeer(ctx.workdir, name="tls12", cert=p("server-rsa.pem"), key=p("server-rsa.key"),
                     chain=p("server-chain.pem"), versions=(ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2))
        ctx.cleanup(pr.stop)
        gw = tls_gateway(ctx, {"trusted": pr}, "preferred-verify")
        submit(gw, ["user@mx.test"], "tls12")
        acc = pr.wait(1, 15)
        check(acc, "nothing delivered", pr.conns())
        check_eq(acc[0].tls, "TLSv1.2", "protocol at the peer")
        # tls.h TLS_CIPHERS_DEFAULT: ECDHE with AEAD only (RFC 9325 4.2).
        check(re.match(r"ECDHE-(RSA|ECDSA)-(AES\d+-GCM|CHACHA20-POLY1305)", acc[0].cipher or ""),
              f"cipher {acc[0].cipher!r}")
        e = gw.wait_journal(r"^DCID \d+ TLS success protocol TLSv1\.2 ")
        check(e["MESSAGE"].endswith(" verified yes"), f"{e['MESSAGE']!r}")
        check_eq(e.get("TLSGW_TLS_PROTOCOL"), "TLSv1.2", "TLSGW_TLS_PROTOCOL")
        check_eq(e.get("TLSGW_TLS_CIPHER"), acc[0].cipher, "TLSGW_TLS_CIPHER")


@case("tls_client.certificate is presented to a server that asks for one")
def _(ctx):
        pr = TlsPeer(ctx.workdir, name="wantcert", cert=p("server-ec.pem"), key=p("server-ec.key"),
                     chain=p("server-chain.pem"), client_ca=p("client-ca.pem"))
        ctx.cleanup(pr.stop)

        def cfg(g):
                install_cert(g.state_dir, "client", p("client.pem"), p("client.key"), p("intermediate.pem"))
                c = base_config(g.state_dir, g.port, routes=[{"domain": "mx.test", "hosts": [f"127.0.0.1:{pr.port}"]}],
                                extra={"tls_client": {"certificate": "client", "ca_file": p("ca-bundle.pem")}})
                c["destinations"] = [dest_config("required-verify")]
                return c
        gw = ctx.gateway(cfg)
        submit(gw, ["user@mx.test"], "client cert")
        acc = pr.wait(1, 15)
        check(acc, "nothing delivered", pr.conns(), "\n".join(gw.messages()[-15:]))
        conn = [c for c in pr.conns() if c.tls_version][0]
        check(conn.client_cert, "no client certificate presented")
        check_eq(tlspeer.fingerprint_der(conn.client_cert), tlspeer.fingerprint_file(p("client.pem")),
                 "client certificate fingerprint")
        diag(f"SNI sent: {conn.sni!r}")


def kernel_has_ktls():
        try:
                with open("/proc/sys/net/ipv4/tcp_available_ulp") as f:
                        return "tls" in f.read().split()
        except OSError:
                return False


@case("no kernel TLS on this host: clean userspace fallback in and out, logged as such")
def _(ctx):
        if kernel_has_ktls():
                raise Skip("this kernel offers kTLS; the offload itself is tested in tests/vm")
        pr = TlsPeer(ctx.workdir, name="plain-ktls", cert=p("server-ec.pem"), key=p("server-ec.key"),
                     chain=p("server-chain.pem"))
        ctx.cleanup(pr.stop)

        def cfg(g):
                c = base_config(g.state_dir, g.port, routes=[{"domain": "mx.test", "hosts": [f"127.0.0.1:{pr.port}"]}])
                c["listeners"][0]["tls"] = "required"
                c["listeners"][0]["ktls"] = True
                d = dest_config("required")
                d["ktls"] = True
                c["destinations"] = [d]
                return c
        gw = ctx.gateway(cfg)
        line = "0123456789abcdef" * 4 + "\r\n"
        body = message("fallback", line * 4000, "a@client.test", "user@mx.test")
        with Smtp(gw.port) as c:
                c.ehlo("client.test")
                check_eq(tlspeer.starttls(c, tlspeer.client_context(version="TLSv1.2"))[0], 220, "STARTTLS")
                c.ehlo("client.test")
                c.mail("a@client.test")
                c.rcpt("user@mx.test")
                c.data(body)
                c.cmd("QUIT")
        acc = pr.wait(1, 20)
        check(acc, "nothing delivered", "\n".join(gw.messages()[-15:]))
        check(acc[0].data.endswith(body), "the body changed on the way")
        inbound = gw.wait_journal(r"^ICID \d+ TLS success protocol TLSv1\.2 ")
        check_eq(str(inbound.get("TLSGW_KTLS_TX")), "0", "inbound TLSGW_KTLS_TX")
        check_eq(str(inbound.get("TLSGW_KTLS_RX")), "0", "inbound TLSGW_KTLS_RX")
        check(" ktls" not in inbound["MESSAGE"], "inbound line claims kTLS", inbound["MESSAGE"])
        outbound = gw.wait_journal(r"^DCID \d+ TLS success protocol ")
        check_eq(str(outbound.get("TLSGW_KTLS_TX")), "0", "outbound TLSGW_KTLS_TX")
        check(" ktls" not in outbound["MESSAGE"], "outbound line claims kTLS", outbound["MESSAGE"])
        done = gw.wait_journal(r"^Message done DCID \d+ MID \d+ .* via SSL_write$")
        check_eq(done.get("TLSGW_BODY_VIA"), "SSL_write", "TLSGW_BODY_VIA")


if __name__ == "__main__":
        run()
