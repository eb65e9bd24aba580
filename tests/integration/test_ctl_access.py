#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Who may do what over org.tlsgw.Gateway1, with the installed policy file.

As "nobody" every verb that changes state (or returns a secret: PKCS#12
export, config export --secrets) is denied with exit 4 and a message, and
changes nothing; the same calls made directly with busctl get
org.freedesktop.DBus.Error.AccessDenied from the daemon's own check. Status
and every listing work for nobody. A member of the configured admin_group
may change configuration; the pending change set belongs to whoever opened
it (PendingByOther for the others, abandon --force for root).
"""

import os
import re

from harness import (base_config, case, check, check_eq, check_unchanged, gateway_files, gwctl,
                     json_rows, pending_text, public_file, run, busctl, openssl, BUS_NAME, BUS_PATH, Gateway)
from tlspeer import install_cert, p

DENIED = r"denied|permission|not allowed|not permitted|privilege|admin|requires root"
EXIT_DENIED = 4


def gw_with_cert(ctx, **kw):
        """A gateway on the bus whose store has "mx" (written before start,
        so that setting up does not depend on the verbs under test)."""
        def cfg(g):
                install_cert(g.state_dir, "mx", p("server-ec.pem"), p("server-ec.key"), p("intermediate.pem"))
                return base_config(g.state_dir, g.port, **kw)
        return Gateway(ctx, cfg, bus=True)


def denied(g, *args):
        before = (gateway_files(g), pending_text())
        r = gwctl(*args, user="nobody")
        r.fails(DENIED, "nobody: gwctl " + " ".join(str(a) for a in args), rc=EXIT_DENIED)
        check_unchanged(before[0], gateway_files(g), "denied " + " ".join(str(a) for a in args))
        check_eq(pending_text(), before[1], "pending set after a denied call")
        return r


@case("nobody: every changing verb and every secret is denied (exit 4), nothing changes")
def _(ctx):
        g = gw_with_cert(ctx)
        pw = public_file("pw", "password\n")
        p12 = public_file("x.p12", b"")
        os.unlink(p12)
        openssl("pkcs12", "-export", "-inkey", p("server-ec.key"), "-in", p("server-ec.pem"), "-out", p12,
                "-passout", "pass:password")
        os.chmod(p12, 0o644)
        out = os.path.join(os.path.dirname(pw), "out.p12")
        conf = public_file("import.conf", open(g.config_path).read())
        cases = [
                ("cert", "create", "n1", "--cn", "n1.test"),
                ("cert", "upload", "mx", p("server-ec.pem")),
                ("cert", "import", "n2", p12, "--password-file", pw),
                ("cert", "export", "mx", "-o", out, "--password-file", pw),
                ("cert", "renew", "mx"),
                ("cert", "delete", "mx"),
                ("listener", "add", "l2", "--address", "127.0.0.1", "--port", "2599", "--default-policy", "ACCEPTED"),
                ("listener", "set", "inbound", "--hostname", "x.test"),
                ("listener", "delete", "inbound"),
                ("policy", "add", "P", "--action", "relay"),
                ("policy", "set", "RELAYED", "--action", "accept"),
                ("policy", "delete", "BLOCKED"),
                ("sendergroup", "add", "SG", "--policy", "RELAYED", "--source", "10.0.0.0/8"),
                ("sendergroup", "delete", "RELAYLIST"),
                ("dest", "add", "example.test", "--tls", "required"),
                ("dest", "global", "set", "--alert", "off"),
                ("global", "set", "--hostname", "other.test"),
                ("route", "add", "example.test", "--host", "127.0.0.1:25"),
                ("route", "delete", "localhost"),
                ("alert", "add", "admin@example.test"),
                ("https", "add", "admin", "--address", "127.0.0.1", "--port", "8443", "--hostname", "gw.test"),
                ("ldap", "add", "corp", "--uri", "ldap://ldap.test", "--base", "dc=test"),
                ("commit", "-m", "x"),
                ("abandon",),
                ("rollback", "1"),
                ("reload",),
                ("config", "import", conf),
                ("config", "export", "--secrets", "--password-file", pw),
                ("queue", "flush"),
                ("queue", "delete", "1"),
        ]
        for args in cases:
                denied(g, *args)
        check(not os.path.exists(out), "no PKCS#12 written for nobody")


@case("nobody: status and every listing work")
def _(ctx):
        gw_with_cert(ctx)
        gwctl("policy", "add", "X", "--action", "relay").ok("stage")
        gwctl("commit", "-m", "one").ok("commit")
        for args in (("status",), ("cert", "list"), ("cert", "show", "mx"), ("cert", "csr", "mx"), ("cert", "check"),
                     ("listener", "list"), ("listener", "show", "inbound"), ("policy", "list"),
                     ("sendergroup", "list"), ("dest", "list"), ("route", "list"), ("alert", "list"),
                     ("https", "list"), ("ldap", "list"), ("dest", "global", "show"), ("global", "show"),
                     ("history",), ("pending",), ("diff",),
                     ("config", "show"), ("config", "export"), ("queue", "list"), ("connections",)):
                r = gwctl(*args, user="nobody")
                check(r.rc in (0, 1) if args == ("cert", "check") else r.rc == 0,
                      f"nobody may run gwctl {' '.join(args)}", r)
                check(not re.search(DENIED, r.err, re.I), f"no denial for {' '.join(args)}", r)
        for args in (("cert", "list"), ("listener", "list"), ("history",), ("queue", "list")):
                json_rows(gwctl("--json", *args, user="nobody").ok(" ".join(args)))


@case("the daemon checks the caller itself: busctl as nobody gets AccessDenied")
def _(ctx):
        g = gw_with_cert(ctx)
        calls = [
                ("org.tlsgw.Gateway1.Manager", "Commit", "s", "x"),
                ("org.tlsgw.Gateway1.Manager", "Abandon", "b", "true"),
                ("org.tlsgw.Gateway1.Manager", "Reload", None),
                ("org.tlsgw.Gateway1.Manager", "Add", "ssa{sv}", "policy", "P", "1", "action", "s", "relay"),
                ("org.tlsgw.Gateway1.Manager", "ExportConfig", "bs", "true", "pw"),
                ("org.tlsgw.Gateway1.Certificates", "ExportPKCS12", "ss", "mx", "pw"),
                ("org.tlsgw.Gateway1.Certificates", "DeleteCertificate", "s", "mx"),
                ("org.tlsgw.Gateway1.Queue", "FlushQueue", None),
        ]
        before = gateway_files(g)
        for iface, method, sig, *vals in calls:
                argv = ["call", BUS_NAME, BUS_PATH, iface, method] + ([sig] + vals if sig else [])
                r = busctl(*argv, user="nobody")
                check(r.rc != 0 and re.search(r"access denied|AccessDenied|denied", r.err, re.I),
                      f"{iface}.{method} as nobody is AccessDenied", r)
        check_unchanged(before, gateway_files(g), "direct calls as nobody")
        # Reading is open: a property and a readable method.
        r = busctl("get-property", BUS_NAME, BUS_PATH, "org.tlsgw.Gateway1.Manager", "Version", user="nobody")
        r.ok("get-property as nobody")
        r = busctl("call", BUS_NAME, BUS_PATH, "org.tlsgw.Gateway1.Certificates", "GetCSR", "s", "mx", user="nobody")
        r.ok("GetCSR as nobody")


@case("admin_group: a member may stage and commit; the pending set belongs to its owner")
def _(ctx):
        g = gw_with_cert(ctx, extra={"admin_group": "staff"})
        admin = "nobody:staff"
        gwctl("policy", "add", "BYSTAFF", "--action", "relay", user=admin).ok("stage as admin-group member")
        r = gwctl("pending").ok("pending")
        check("nobody" in r.out, "pending names the owner 'nobody'", r)
        # Another admin (root) cannot add to someone else's set.
        r = gwctl("policy", "add", "BYROOT", "--action", "relay")
        r.fails(r"nobody", "root staging into nobody's set (PendingByOther names the owner)")
        gwctl("commit", "-m", "by staff", user=admin).ok("commit as admin-group member")
        h = json_rows(gwctl("--json", "history").ok("history"))
        check_eq(h[-1].get("user"), "nobody", "history records the user")
        check("BYSTAFF" in open(g.config_path).read(), "committed")
        # root may drop another user's set only with --force.
        gwctl("policy", "add", "AGAIN", "--action", "relay", user=admin).ok("stage again")
        r = gwctl("abandon")
        r.fails(r"nobody|force", "root abandon without --force")
        gwctl("abandon", "--force").ok("root abandon --force")
        check_eq(pending_text()[0], False, "nothing pending after --force")
        # Without the group the same user is denied.
        gwctl("policy", "add", "NOGROUP", "--action", "relay", user="nobody").fails(DENIED, "nobody without staff",
                                                                                   rc=EXIT_DENIED)
        # The group may export secrets too.
        pw = public_file("pw2", "password\n")
        out = os.path.join(os.path.dirname(pw), "staff.p12")
        gwctl("cert", "export", "mx", "-o", out, "--password-file", pw, user=admin).ok("export as admin")
        check(os.path.getsize(out) > 0, "export written")


if __name__ == "__main__":
        run()
