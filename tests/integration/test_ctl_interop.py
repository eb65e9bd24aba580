#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""gwctl cert and the openssl(1) command line, both directions.

PKCS#12 made by `openssl pkcs12 -export` (the default AES/PBKDF2 and
-legacy RC2/3DES) imports; a wrong password, a file that is no PKCS#12 and
an existing name are refused and change nothing; an exported file opens
with `openssl pkcs12`, uses AES-256 with PBKDF2 and never RC2/3DES, and
holds the key that matches the certificate. The full CA round trip: the
CSR from `gwctl cert csr` verifies with `openssl req -verify`, is signed
by the test CA with `openssl x509 -req`, uploaded with the intermediate,
set on the listener and committed; `openssl s_client -starttls smtp
-showcerts` then sees exactly leaf + intermediate.
"""

import os
import re

from harness import (Skip, case, check, check_eq, ctl_gateway, ctl_refused, gwctl, json_rows, openssl,
                     pubkey_of, public_file, run, ca_sign, cert_text)
from tlspeer import fingerprint_file, fingerprint_pem, p, s_client

PASSWORD = "correct horse battery"


def store(g, name, f=None):
        d = os.path.join(g.state_dir, "certs", name)
        return os.path.join(d, f) if f else d


def pw_file(pw=PASSWORD, name="pw"):
        return public_file(name, pw + "\n")


def make_p12(ctx, name, legacy=False, chain=True, pw=PASSWORD):
        out = os.path.join(ctx.workdir, name)
        args = ["pkcs12", "-export", "-inkey", p("server-ec.key"), "-in", p("server-ec.pem"), "-out", out,
                "-passout", f"pass:{pw}", "-name", "mx"]
        if chain:
                args += ["-certfile", p("intermediate.pem")]
        if legacy:
                args.append("-legacy")
        rc, t = openssl(*args, check_rc=False)
        if rc != 0 and legacy:
                raise Skip(f"openssl pkcs12 -legacy unavailable here: {t[-300:]}")
        check(rc == 0, "openssl pkcs12 -export", t)
        return out


def check_imported(g, name):
        check_eq(fingerprint_file(store(g, name, "cert.pem")), fingerprint_file(p("server-ec.pem")),
                 f"{name}: the leaf of the PKCS#12")
        check_eq(pubkey_of(store(g, name, "key.pem"), "pkey"), pubkey_of(p("server-ec.key"), "pkey"),
                 f"{name}: the key of the PKCS#12")
        check(os.path.exists(store(g, name, "chain.pem")), f"{name}: chain.pem from the bag")
        check_eq(fingerprint_file(store(g, name, "chain.pem")), fingerprint_file(p("intermediate.pem")),
                 f"{name}: the intermediate")
        check_eq(oct(os.stat(store(g, name, "key.pem")).st_mode & 0o777), oct(0o600), f"{name}: key mode")


@case("cert import: PKCS#12 from openssl pkcs12 -export (default AES) and -legacy (RC2/3DES)")
def _(ctx):
        g = ctl_gateway(ctx)
        f = make_p12(ctx, "default.p12")
        info = openssl("pkcs12", "-in", f, "-info", "-noout", "-passin", f"pass:{PASSWORD}")[1]
        check(re.search(r"AES-256|PBKDF2", info), "openssl's default is AES/PBKDF2", info)
        gwctl("cert", "import", "mx", f, "--password-file", pw_file()).ok("import default")
        check_imported(g, "mx")
        leg = make_p12(ctx, "legacy.p12", legacy=True)
        info = openssl("pkcs12", "-in", leg, "-info", "-noout", "-passin", f"pass:{PASSWORD}",
                       "-legacy")[1]
        check(re.search(r"RC2|3DES|TripleDES|des-ede3", info, re.I), "the legacy file uses RC2/3DES", info)
        gwctl("cert", "import", "old", leg, "--password-file", pw_file()).ok("import -legacy")
        check_imported(g, "old")
        rows = json_rows(gwctl("--json", "cert", "list").ok("list"))
        check({"mx", "old"} <= {r.get("name") for r in rows}, "both imported certificates listed", rows)
        s = gwctl("cert", "show", "mx").ok("show")
        check("tlsgw Test Intermediate" in s.out, "issuer of the imported certificate", s)


@case("cert import refused: wrong password, not a PKCS#12, existing name, no password")
def _(ctx):
        g = ctl_gateway(ctx)
        f = make_p12(ctx, "a.p12")
        ctl_refused(g, r"password", "cert", "import", "mx", f, "--password-file", pw_file("wrong", "pw-wrong"))
        check(not os.path.exists(store(g, "mx")), "no store entry after a wrong password")
        junk = public_file("junk.p12", os.urandom(600))
        ctl_refused(g, r"pkcs ?#?12|parse|invalid|password", "cert", "import", "mx", junk, "--password-file", pw_file())
        pem = public_file("pem.p12", open(p("server-ec.pem")).read())
        ctl_refused(g, r"pkcs ?#?12|parse|invalid|password", "cert", "import", "mx", pem, "--password-file", pw_file())
        gwctl("cert", "import", "mx", f, "--password-file", pw_file()).ok("import")
        ctl_refused(g, r"exist|already", "cert", "import", "mx", f, "--password-file", pw_file())
        # No terminal and no --password-file: refused before anything is sent.
        ctl_refused(g, r"password", "cert", "import", "x2", f, input=PASSWORD + "\n")


@case("cert export: opens with openssl pkcs12, AES-256 + PBKDF2, never RC2/3DES, key matches")
def _(ctx):
        g = ctl_gateway(ctx)
        gwctl("cert", "create", "mx", "--cn", "mx.test", "--san", "mx.test").ok("create")
        out = os.path.join(ctx.workdir, "mx.p12")
        gwctl("cert", "export", "mx", "-o", out, "--password-file", pw_file()).ok("export")
        check(os.path.getsize(out) > 100, "a PKCS#12 file was written")
        check_eq(oct(os.stat(out).st_mode & 0o077), oct(0), "the exported key file is not readable by others")
        info = openssl("pkcs12", "-in", out, "-info", "-noout", "-passin", f"pass:{PASSWORD}")[1]
        check(re.search(r"AES-256-CBC", info) and re.search(r"PBKDF2", info), "AES-256-CBC with PBKDF2", info)
        check(not re.search(r"RC2|3DES|des-ede3|TripleDES", info, re.I), "no legacy algorithm", info)
        check(re.search(r"MAC: ?sha256", info, re.I), "SHA-256 MAC", info)
        rc, t = openssl("pkcs12", "-in", out, "-noout", "-passin", "pass:wrong", check_rc=False)
        check(rc != 0, "openssl refuses the wrong password (the file is really protected)", t)
        pem = openssl("pkcs12", "-in", out, "-nodes", "-passin", f"pass:{PASSWORD}")[1]
        keyf = public_file("exported.key", re.search(r"-----BEGIN PRIVATE KEY-----.*?-----END PRIVATE KEY-----",
                                                     pem, re.S).group(0) + "\n")
        certs = re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", pem, re.S)
        check(certs, "certificate in the export", pem)
        check_eq(fingerprint_pem(certs[0]), fingerprint_file(store(g, "mx", "cert.pem")), "exported certificate")
        check_eq(pubkey_of(keyf, "pkey"), pubkey_of(store(g, "mx", "key.pem"), "pkey"), "exported key matches")
        # Round trip: the export imports again under another name.
        gwctl("cert", "import", "copy", out, "--password-file", pw_file()).ok("re-import of the export")
        check_eq(fingerprint_file(store(g, "copy", "cert.pem")), fingerprint_file(store(g, "mx", "cert.pem")),
                 "round trip keeps the certificate")
        gwctl("cert", "export", "nosuch", "-o", os.path.join(ctx.workdir, "n.p12"), "--password-file",
              pw_file()).fails(r"nosuch", "export of an unknown certificate")
        check(not os.path.exists(os.path.join(ctx.workdir, "n.p12")), "no file for a failed export")


@case("CSR -> openssl x509 -req by the test CA -> upload with intermediate -> listener -> s_client sees leaf + intermediate")
def _(ctx):
        g = ctl_gateway(ctx, listener={"tls": "preferred"}, hostname="mx.test")
        gwctl("cert", "create", "mx", "--cn", "mx.test", "--san", "mx.test").ok("create")
        csr = os.path.join(ctx.workdir, "mx.csr")
        gwctl("cert", "csr", "mx", "-o", csr).ok("csr")
        rc, t = openssl("req", "-in", csr, "-noout", "-verify")
        check(re.search(r"verify OK", t), "openssl req -verify", t)
        crt = ca_sign(csr, os.path.join(ctx.workdir, "mx.pem"), p("intermediate.pem"), p("intermediate.key"))
        gwctl("cert", "upload", "mx", crt, "--chain", p("intermediate.pem")).ok("upload")
        gwctl("listener", "set", "inbound", "--certificate", "mx").ok("listener set --certificate mx")
        gwctl("commit", "-m", "CA-signed certificate for inbound").ok("commit")
        res = s_client(g.port, ["-showcerts", "-CAfile", p("ca.pem"), "-verify_return_error",
                                "-verify_hostname", "mx.test"])
        check(res["protocol"], "handshake", res["out"][-2000:])
        check_eq(len(res["certs"]), 2, "leaf + intermediate sent")
        check_eq(fingerprint_pem(res["certs"][0]), fingerprint_file(crt), "leaf is the uploaded certificate")
        check_eq(fingerprint_pem(res["certs"][1]), fingerprint_file(p("intermediate.pem")), "then the intermediate")
        check(re.search(r"Verify return code: 0 \(ok\)", res["out"]), "chain verifies to the test root",
              res["out"][-1500:])
        info = cert_text(res["certs"][0])
        check(re.search(r"issuer=.*tlsgw Test Intermediate", info), "issued by the test intermediate", info)


if __name__ == "__main__":
        run()
