#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""gwctl cert: the certificate store administered over D-Bus.

Every verb of `gwctl cert` against the real daemon on a private system bus:
create (EC and RSA, SANs, days, organization), list/show (with --json),
csr, upload of a CA-signed certificate with its intermediates (ordering,
duplicates reported), renew (self-signed and CA-signed), delete (refused
while in use, naming where), check (expiry, chain, duplicates, listener
host names). Each refused operation must exit non-zero with a message that
names the problem and leave the store, the configuration file, the history
and the pending change set exactly as they were.

The openssl(1) interop (PKCS#12, CSR signing, s_client) is in
test_ctl_interop.py.
"""

import os
import re
import time

from harness import (Gateway, base_config, free_port, case, check, check_eq, ctl_gateway, ctl_refused, gateway_files, gwctl,
                     json_record, json_rows, openssl, pubkey_of, row_by, run, ca_sign, ca_sign_dated, cert_text,
                     check_unchanged, public_file)
from tlspeer import cat, install_cert, p

# Seconds in a day, for validity arithmetic.
DAY = 86400


def store(g, name, f=None):
        d = os.path.join(g.state_dir, "certs", name)
        return os.path.join(d, f) if f else d


def listed(g):
        return {r.get("name") for r in json_rows(gwctl("--json", "cert", "list").ok("cert list"), "cert list")}


def not_after(path):
        """notAfter of a certificate as epoch seconds (openssl x509 -enddate)."""
        t = openssl("x509", "-in", path, "-noout", "-enddate")[1]
        m = re.search(r"notAfter=(.*)", t)
        return time.mktime(time.strptime(m.group(1).strip().replace(" GMT", ""), "%b %d %H:%M:%S %Y")) - time.timezone


def created(g, name, *args):
        gwctl("cert", "create", name, *args).ok(f"cert create {name}")
        check(os.path.exists(store(g, name, "cert.pem")), f"{store(g, name, 'cert.pem')} missing after create")
        return store(g, name)


def ca_signed(g, ctx, name, chain_files, san="DNS:mx.test"):
        """CSR of NAME signed by the test intermediate; (cert path, chain path)."""
        csr = os.path.join(ctx.workdir, f"{name}.csr")
        gwctl("cert", "csr", name, "-o", csr).ok("cert csr -o")
        crt = ca_sign(csr, os.path.join(ctx.workdir, f"{name}-signed.pem"), p("intermediate.pem"),
                      p("intermediate.key"), san=san)
        chain = cat(os.path.join(ctx.workdir, f"{name}-chain.pem"), *chain_files) if chain_files else None
        return crt, chain


@case("cert create: EC P-256 by default, RSA with --key/--days/--org; key 0600, CSR kept")
def _(ctx):
        g = ctl_gateway(ctx)
        created(g, "mx", "--cn", "mx.test", "--san", "mx.test", "--san", "mail.example.test")
        created(g, "rsa", "--cn", "rsa.test", "--key", "rsa-2048", "--days", "30", "--org", "Example Org")
        t = cert_text(store(g, "mx", "cert.pem"))
        check(re.search(r"subject=.*CN ?= ?mx\.test", t), "subject CN=mx.test", t)
        check("DNS:mx.test" in t and "DNS:mail.example.test" in t, "SANs of mx", t)
        check(re.search(r"Public Key Algorithm: id-ecPublicKey", t) and "P-256" in t, "EC P-256 key by default", t)
        t = cert_text(store(g, "rsa", "cert.pem"))
        check("rsaEncryption" in t and "(2048 bit)" in t, "RSA 2048 key", t)
        check(re.search(r"subject=.*O ?= ?Example Org", t), "organization in the subject", t)
        days = (not_after(store(g, "rsa", "cert.pem")) - time.time()) / DAY
        check(29 <= days <= 31, f"--days 30 gives {days:.1f} days")
        for n in ("mx", "rsa"):
                mode = os.stat(store(g, n, "key.pem")).st_mode & 0o777
                check_eq(oct(mode), oct(0o600), f"mode of {n}/key.pem")
                check(os.path.exists(store(g, n, "csr.pem")), f"{n}/csr.pem kept for a CA")
                check_eq(pubkey_of(store(g, n, "csr.pem"), "req"), pubkey_of(store(g, n, "key.pem"), "pkey"),
                         f"{n}: CSR is for the stored key")
        check({"mx", "rsa"} <= listed(g), "list shows both")


@case("cert create: each key type of the table")
def _(ctx):
        g = ctl_gateway(ctx)
        for kt, rx in (("ec-p256", r"P-256"), ("rsa-2048", r"\(2048 bit\)"), ("rsa-3072", r"\(3072 bit\)"),
                       ("rsa-4096", r"\(4096 bit\)")):
                created(g, f"k-{kt}", "--cn", "k.test", "--key", kt)
                t = cert_text(store(g, f"k-{kt}", "cert.pem"))
                check(re.search(rx, t), f"{kt}: key of the certificate", t)
                r = json_record(gwctl("--json", "cert", "show", f"k-{kt}").ok("cert show"))
                vals = " ".join(str(v) for v in r.values())
                check(kt in vals, f"cert show k-{kt} names key type {kt}", r)


@case("cert create refused: duplicate name, unknown key type, bad name, no CN, bad days")
def _(ctx):
        g = ctl_gateway(ctx)
        created(g, "mx", "--cn", "mx.test")
        ctl_refused(g, r"mx.*(exist|already)|(exist|already).*mx", "cert", "create", "mx", "--cn", "other.test")
        ctl_refused(g, r"dsa-1024|key", "cert", "create", "k1", "--cn", "a.test", "--key", "dsa-1024")
        ctl_refused(g, r"name", "cert", "create", "../evil", "--cn", "a.test")
        ctl_refused(g, r"name", "cert", "create", "a b", "--cn", "a.test")
        ctl_refused(g, r"cn|common", "cert", "create", "nocn")
        ctl_refused(g, r"days|invalid|number", "cert", "create", "k2", "--cn", "a.test", "--days", "abc")
        ctl_refused(g, r"days|range|invalid", "cert", "create", "k3", "--cn", "a.test", "--days", "0")
        check_eq(sorted(n for n in os.listdir(os.path.join(g.state_dir, "certs")) if not n.startswith(".")),
                 sorted(["demo", "mx"]) if os.path.exists(store(g, "demo")) else ["mx"],
                 "store entries after refused creates")


@case("cert list/show: fields, JSON rows, unknown name")
def _(ctx):
        g = ctl_gateway(ctx)
        created(g, "mx", "--cn", "mx.test", "--san", "mx.test", "--san", "localhost")
        r = gwctl("cert", "list").ok("cert list")
        check(re.search(r"(?m)^\s*mx\b", r.out) and "mx.test" in r.out, "table row for mx", r)
        nl = gwctl("--no-legend", "cert", "list").ok("cert list --no-legend")
        check_eq(len(nl.out.strip().splitlines()), len(r.out.strip().splitlines()) - 1,
                 "--no-legend drops exactly the header line")
        rows = json_rows(gwctl("--json", "cert", "list").ok("cert list --json"))
        row = row_by(rows, "name", "mx")
        check(row is not None, "mx in JSON rows", rows)
        s = gwctl("cert", "show", "mx").ok("cert show")
        for want in ("mx.test", "localhost", "ec-p256", "self-signed"):
                check(want in s.out, f"cert show mx mentions {want!r}", s)
        fp = openssl("x509", "-in", store(g, "mx", "cert.pem"), "-noout", "-fingerprint", "-sha256")[1]
        fp = fp.split("=", 1)[1].strip()
        check(fp.lower() in s.out.lower(), "SHA-256 fingerprint shown", fp, s)
        rec = json_record(gwctl("--json", "cert", "show", "mx").ok("cert show --json"))
        check(any("mx.test" in str(v) for v in rec.values()), "JSON record of mx", rec)
        gwctl("cert", "show", "nosuch").fails(r"nosuch", "cert show of an unknown name")


@case("cert csr: PEM on stdout and with -o, verifies with openssl req -verify; unknown name fails")
def _(ctx):
        g = ctl_gateway(ctx)
        created(g, "mx", "--cn", "mx.test", "--san", "mx.test")
        r = gwctl("cert", "csr", "mx").ok("cert csr")
        check(re.search(r"-----BEGIN CERTIFICATE REQUEST-----.*-----END CERTIFICATE REQUEST-----", r.out, re.S),
              "CSR PEM on stdout", r)
        out = os.path.join(ctx.workdir, "mx.csr")
        gwctl("cert", "csr", "mx", "-o", out).ok("cert csr -o")
        rc, t = openssl("req", "-in", out, "-noout", "-verify", "-text")
        check(re.search(r"verify OK|Certificate request self-signature verify OK", t), "req -verify", t)
        check(re.search(r"CN ?= ?mx\.test", t), "CSR subject", t)
        check_eq(pubkey_of(out, "req"), pubkey_of(store(g, "mx", "key.pem"), "pkey"), "CSR key = stored key")
        gwctl("cert", "csr", "nosuch").fails(r"nosuch", "csr of an unknown certificate")


@case("cert upload: CA-signed leaf replaces the self-signed one; chain ordered, duplicates removed and reported")
def _(ctx):
        g = ctl_gateway(ctx)
        created(g, "mx", "--cn", "mx.test", "--san", "mx.test")
        key_before = open(store(g, "mx", "key.pem"), "rb").read()
        # The intermediate twice and the root: duplicates go, the chain is leaf-issuer first.
        crt, chain = ca_signed(g, ctx, "mx", [p("ca.pem"), p("intermediate.pem"), p("intermediate.pem")])
        r = gwctl("cert", "upload", "mx", crt, "--chain", chain).ok("cert upload")
        check(re.search(r"duplicate", r.text, re.I), "the removed duplicate is reported", r)
        check_eq(open(store(g, "mx", "key.pem"), "rb").read(), key_before, "key unchanged by upload")
        check_eq(openssl("x509", "-in", store(g, "mx", "cert.pem"), "-noout", "-fingerprint")[1],
                 openssl("x509", "-in", crt, "-noout", "-fingerprint")[1], "stored leaf is the uploaded one")
        ch = open(store(g, "mx", "chain.pem")).read()
        blocks = re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", ch, re.S)
        check(len(blocks) >= 1, "chain.pem holds the intermediate", ch)
        first = cert_text(blocks[0])
        check("tlsgw Test Intermediate" in first.split("issuer=")[0], "leaf's issuer first in chain.pem", first)
        subjects = [re.search(r"subject=(.*)", cert_text(b)).group(1) for b in blocks]
        check_eq(len(subjects), len(set(subjects)), "no duplicate in chain.pem")
        s = gwctl("cert", "show", "mx").ok("cert show")
        check("tlsgw Test Intermediate" in s.out, "issuer shown", s)
        check(not re.search(r"self-signed", s.out), "no longer self-signed", s)


@case("cert upload refused: malformed PEM, key mismatch, expired and unrelated intermediates, unknown name")
def _(ctx):
        g = ctl_gateway(ctx)
        created(g, "mx", "--cn", "mx.test", "--san", "mx.test")
        crt, _ = ca_signed(g, ctx, "mx", [])
        junk = public_file("junk.pem", "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n")
        ctl_refused(g, r"pem|certificate|parse|malformed", "cert", "upload", "mx", junk)
        empty = public_file("empty.pem", "")
        ctl_refused(g, r"pem|certificate|empty|no ", "cert", "upload", "mx", empty)
        # A certificate for another key.
        ctl_refused(g, r"match|key", "cert", "upload", "mx", p("server-ec.pem"), "--chain", p("intermediate.pem"))
        # Chain with a certificate that signed nothing here.
        ctl_refused(g, r"unrelated|untrusted|Untrusted Root|chain|issuer|sign", "cert", "upload", "mx", crt,
                    "--chain", p("untrusted-ca.pem"))
        # The intermediate's key and subject, but expired: the leaf verifies, the chain must not.
        int_csr = os.path.join(ctx.workdir, "int.csr")
        openssl("req", "-new", "-key", p("intermediate.key"), "-subj", "/CN=tlsgw Test Intermediate", "-out", int_csr)
        old_int = ca_sign_dated(int_csr, os.path.join(ctx.workdir, "int-expired.pem"), p("ca.pem"), p("ca.key"),
                                "20200101000000Z", "20200201000000Z", section="intermediate")
        ctl_refused(g, r"expired|not valid|valid", "cert", "upload", "mx", crt, "--chain", old_int)
        # An expired leaf for the right key.
        leaf_csr = os.path.join(ctx.workdir, "mx2.csr")
        gwctl("cert", "csr", "mx", "-o", leaf_csr).ok("csr")
        old_leaf = ca_sign_dated(leaf_csr, os.path.join(ctx.workdir, "leaf-expired.pem"), p("intermediate.pem"),
                                 p("intermediate.key"), "20200101000000Z", "20200201000000Z")
        ctl_refused(g, r"expired|not valid|valid", "cert", "upload", "mx", old_leaf, "--chain", p("intermediate.pem"))
        ctl_refused(g, r"nosuch", "cert", "upload", "nosuch", crt)
        ctl_refused(g, r"no such|not found|cannot|open|read", "cert", "upload", "mx",
                    os.path.join(ctx.workdir, "absent.pem"))
        s = gwctl("cert", "show", "mx").ok("cert show")
        check("self-signed" in s.out, "still the self-signed certificate", s)


@case("cert renew: self-signed re-signed with the same key; CA-signed gets a new CSR, certificate stays")
def _(ctx):
        g = ctl_gateway(ctx)
        created(g, "mx", "--cn", "mx.test", "--san", "mx.test", "--days", "10")
        before = open(store(g, "mx", "cert.pem")).read()
        pk = pubkey_of(store(g, "mx", "key.pem"), "pkey")
        time.sleep(1.1)         # a new notBefore second
        gwctl("cert", "renew", "mx").ok("cert renew (self-signed)")
        after = open(store(g, "mx", "cert.pem")).read()
        check(after != before, "a new certificate after renew")
        check_eq(pubkey_of(store(g, "mx", "cert.pem")), pk, "same key after renew")
        check(not_after(store(g, "mx", "cert.pem")) - time.time() > 20 * DAY,
              "renewed for the default validity, longer than the first 10 days")
        check(re.search(r"CN ?= ?mx\.test", cert_text(store(g, "mx", "cert.pem"))), "same subject")
        # CA-signed: a new CSR, the uploaded certificate stays.
        crt, chain = ca_signed(g, ctx, "mx", [p("intermediate.pem")])
        gwctl("cert", "upload", "mx", crt, "--chain", chain).ok("upload")
        cert_before = open(store(g, "mx", "cert.pem")).read()
        csr_before = open(store(g, "mx", "csr.pem")).read() if os.path.exists(store(g, "mx", "csr.pem")) else None
        gwctl("cert", "renew", "mx").ok("cert renew (CA-signed)")
        check_eq(open(store(g, "mx", "cert.pem")).read(), cert_before, "CA-signed certificate stays until upload")
        csr_after = open(store(g, "mx", "csr.pem")).read()
        check(csr_after != csr_before, "a new CSR")
        check_eq(pubkey_of(store(g, "mx", "csr.pem"), "req"), pk, "new CSR for the same key")
        r = gwctl("cert", "csr", "mx").ok("csr")
        check(r.out.strip() == csr_after.strip(), "gwctl cert csr returns the new CSR")
        ctl_refused(g, r"nosuch", "cert", "renew", "nosuch")


@case("cert delete: refused while used by the running or the pending configuration, saying where")
def _(ctx):
        g = ctl_gateway(ctx, listener={"tls": "preferred"})
        install_cert(g.state_dir, "mx", p("server-ec.pem"), p("server-ec.key"), p("intermediate.pem"))
        gwctl("listener", "set", "inbound", "--certificate", "mx").ok("listener set --certificate")
        gwctl("commit", "-m", "use mx").ok("commit")
        ctl_refused(g, r"listener.*inbound|inbound", "cert", "delete", "mx")
        check(os.path.isdir(store(g, "mx")), "mx still in the store")
        # Pending use counts too.
        created(g, "next", "--cn", "mx.test")
        gwctl("listener", "set", "inbound", "--certificate", "next").ok("stage next")
        ctl_refused(g, r"inbound|pending", "cert", "delete", "next")
        gwctl("abandon").ok("abandon")
        # Unused: gone from store and list.
        created(g, "spare", "--cn", "spare.test")
        gwctl("cert", "delete", "spare").ok("cert delete spare")
        check(not os.path.exists(store(g, "spare")), "spare removed from the store")
        check("spare" not in listed(g), "spare not listed")
        ctl_refused(g, r"spare", "cert", "delete", "spare")


@case("cert check: expired, expiring, broken and duplicated intermediates, listener host names")
def _(ctx):
        def cfg(g):
                install_cert(g.state_dir, "good", p("server-ec.pem"), p("server-ec.key"), p("intermediate.pem"))
                install_cert(g.state_dir, "old", p("expired.pem"), p("expired.key"), p("intermediate.pem"))
                dup = cat(os.path.join(g.dir, "dup-chain.pem"), p("intermediate.pem"), p("intermediate.pem"))
                install_cert(g.state_dir, "dup", p("server-rsa.pem"), p("server-rsa.key"), dup)
                install_cert(g.state_dir, "broken", p("wrongname.pem"), p("wrongname.key"), p("untrusted-ca.pem"))
                install_cert(g.state_dir, "other", p("wrongname.pem"), p("wrongname.key"), p("intermediate.pem"))
                c = base_config(g.state_dir, g.port, hostname="mx.test",
                                listener={"tls": "preferred", "certificate": "good"})
                second = dict(c["listeners"][0])
                second.update({"name": "second", "port": g.ports.setdefault("second", free_port()),
                               "hostname": "mx.test", "certificate": "other"})
                c["listeners"].append(second)
                return c
        g = Gateway(ctx, cfg, bus=True)
        created(g, "soon", "--cn", "soon.test", "--days", "5")
        r = gwctl("cert", "check")
        check(r.rc in (0, 1), "cert check runs (0, or 1 when it found errors)", r)
        t = r.out
        for name, rx in (("old", r"expir"), ("soon", r"expir"), ("dup", r"duplicat"),
                         ("broken", r"chain|broken|unrelated|issuer"),
                         ("second", r"other\.test|match|mx\.test"),):
                lines = [ln for ln in t.splitlines() if re.search(rf"\b{name}\b", ln)]
                check(any(re.search(rx, ln, re.I) for ln in lines), f"check flags {name} ({rx})", r)
        rows = json_rows(gwctl("--json", "cert", "check"), "cert check --json")
        def sev(name, check_rx):
                return {str(x.get("severity")) for x in rows
                        if name in str(x.get("name")) + " " + str(x.get("message"))
                        and re.search(check_rx, str(x.get("check")) + " " + str(x.get("message")), re.I)}
        check("error" in sev("old", r"expir"), "expired certificate is an error", rows)
        check("warning" in sev("soon", r"expir"), "expiring in 5 days is a warning", rows)
        check(sev("dup", r"duplic") & {"warning", "error"}, "duplicate intermediate flagged", rows)
        good = [x for x in rows if str(x.get("name")) == "good" and str(x.get("severity")) != "ok"]
        check(not good, "nothing wrong with 'good'", good)
        gone = [x for x in rows if "inbound" in str(x.get("message")) and str(x.get("severity")) != "ok"]
        check(not gone, "listener inbound (mx.test with a certificate for mx.test) is verifiable", gone)


@case("cert verbs: usage errors exit 2 without contacting the daemon state")
def _(ctx):
        g = ctl_gateway(ctx)
        before = gateway_files(g)
        for args in (("cert",), ("cert", "frobnicate"), ("cert", "create"), ("cert", "upload", "x"),
                     ("cert", "delete"), ("cert", "show")):
                r = gwctl(*args)
                r.fails(None, "gwctl " + " ".join(args), rc=2)
                check(len(r.err) < 4000, "a usage error is short, not a full help dump", r)
        check_unchanged(before, gateway_files(g), "usage errors")


if __name__ == "__main__":
        run()
