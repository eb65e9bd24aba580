#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""gwctl staged changes: pending, diff, commit, abandon, history, rollback,
config show/export/import and reload of a hand-edited file.

What a commit must do (docs/dbus-api.md "Staged changes"): nothing reaches
the configuration file before commit; commit validates, writes the file
atomically, records a numbered history entry with time, user and comment,
and applies live. A commit with nothing pending, a staging call whose
result would not validate, an import that does not load, a wrong
password and an invalid hand edit all fail with a clear message and change
nothing (file, history, pending set, running configuration).
"""

import os
import re
import time

from harness import (POLICIES, base_config, case, check, check_eq, ctl_gateway, ctl_refused, 
                     gwctl, json_record, json_rows, pending_text, public_file, run, send_mail, message,
                     bus_property, Gateway)

SECRET = "s3cret-bind-Password"
PASSWORD = "export password 1"


def conf(g):
        with open(g.config_path) as f:
                return f.read()


def running(g):
        return gwctl("config", "show").ok("config show").out


def history(g):
        return json_rows(gwctl("--json", "history").ok("history"), "history")


def commit(comment):
        r = gwctl("commit", "-m", comment).ok(f"commit {comment!r}")
        m = re.search(r"version (\d+)", r.out)
        check(m, "commit prints the new version", r)
        return int(m.group(1))


def ldap_gateway(ctx):
        def cfg(g):
                c = base_config(g.state_dir, g.port)
                c["ldap_profiles"] = [{"name": "corp", "uri": "ldaps://ldap.example.test", "base": "dc=example,dc=test",
                                       "bind_dn": "cn=gw,dc=example,dc=test", "bind_password": SECRET}]
                return c
        return Gateway(ctx, cfg, bus=True)


@case("nothing pending: pending/diff say so, commit refused with a clear message, abandon too")
def _(ctx):
        g = ctl_gateway(ctx)
        r = gwctl("pending").ok("pending")
        check(re.search(r"no pending", r.out, re.I), "pending says none", r)
        rec = json_record(gwctl("--json", "pending").ok("pending --json"))
        check_eq(rec.get("pending"), False, "JSON pending=false")
        r = gwctl("diff").ok("diff")
        check(re.search(r"no pending", r.out, re.I), "diff says none", r)
        ctl_refused(g, r"nothing|no pending|no changes", "commit", "-m", "empty")
        ctl_refused(g, r"nothing|no pending|no changes", "abandon")
        check_eq(history(g), [], "no history entries without a commit")


@case("stage -> pending/diff -> commit -m: file written only at commit, history with version, time, user, comment")
def _(ctx):
        g = ctl_gateway(ctx)
        text0 = conf(g)
        gwctl("policy", "add", "EXTRA", "--action", "relay").ok("policy add")
        check_eq(conf(g), text0, "the file is untouched while changes are staged")
        check("EXTRA" not in running(g), "running configuration has no EXTRA before commit")
        r = gwctl("pending").ok("pending")
        check(re.search(r"root", r.out), "pending names the owner (root)", r)
        check(re.search(r"(?m)^\+.*EXTRA", r.out), "pending shows the diff", r)
        d = gwctl("diff").ok("diff").out
        check(re.search(r"(?m)^\+.*EXTRA", d) and re.search(r"(?m)^(---|\+\+\+) ", d), "unified diff", d)
        rec = json_record(gwctl("--json", "pending").ok("pending --json"))
        check_eq(rec.get("pending"), True, "JSON pending=true")
        check_eq(rec.get("owner"), "root", "JSON owner")
        check_eq(bus_property("org.tlsgw.Gateway1.Manager", "PendingChanges"), True, "PendingChanges property")
        t0 = time.time()
        v = commit("add EXTRA policy")
        check("EXTRA" in conf(g), "file has EXTRA after commit")
        check("EXTRA" in running(g), "running configuration has EXTRA")
        check(re.search(r"no pending", gwctl("pending").ok("pending").out, re.I), "nothing pending after commit")
        h = history(g)
        check(h, "history has entries", h)
        last = h[-1]
        check_eq(int(last.get("version")), v, "history version")
        check_eq(last.get("user"), "root", "history user")
        check_eq(last.get("comment"), "add EXTRA policy", "history comment")
        ts = int(last.get("time"))
        check(abs(ts / 1e6 - t0) < 60, f"history time {ts} is now (µs since the epoch)")
        check_eq(bus_property("org.tlsgw.Gateway1.Manager", "ConfigVersion"), v, "ConfigVersion property")
        check(os.path.isdir(os.path.join(g.state_dir, "history")), "STATE/history/ exists")
        table = gwctl("history").ok("history").out
        check(re.search(rf"(?m)^\s*{v}\s.*root.*add EXTRA policy", table), "history table row", table)
        leftovers = [n for n in os.listdir(os.path.dirname(g.config_path)) if n.startswith(".") or n.endswith("~")
                     or ".tmp" in n]
        check(not leftovers, "no temporary files left next to the config file", leftovers)
        # A second commit: versions increase.
        gwctl("policy", "add", "EXTRA2", "--action", "accept").ok("policy add 2")
        v2 = commit("second")
        check(v2 > v, f"versions increase ({v} -> {v2})")


@case("abandon drops the staged set; running config and file stay")
def _(ctx):
        g = ctl_gateway(ctx)
        before = (conf(g), running(g))
        gwctl("policy", "add", "GONE", "--action", "relay").ok("stage")
        gwctl("abandon").ok("abandon")
        check(re.search(r"no pending", gwctl("pending").ok("pending").out, re.I), "nothing pending")
        check_eq((conf(g), running(g)), before, "file and running config after abandon")
        ctl_refused(g, r"nothing|no pending|no changes", "commit")


@case("staging refused at once with the exact problem: bad reference, duplicate, invalid values")
def _(ctx):
        g = ctl_gateway(ctx)
        ctl_refused(g, r"NOPE", "sendergroup", "add", "SG2", "--policy", "NOPE", "--source", "10.0.0.0/8")
        ctl_refused(g, r"RELAYED.*(exist|already|duplicate)|(exist|already|duplicate).*RELAYED",
                    "policy", "add", "RELAYED", "--action", "relay")
        ctl_refused(g, r"action|frobnicate", "policy", "add", "P2", "--action", "frobnicate")
        ctl_refused(g, r"RELAYED|used|referenc|RELAYLIST", "policy", "delete", "RELAYED")
        # Staged first, then an edit that conflicts with the staged state is refused too.
        gwctl("policy", "add", "P3", "--action", "relay").ok("stage P3")
        before = pending_text()
        ctl_refused(g, r"P3.*(exist|already|duplicate)|(exist|already|duplicate).*P3", "policy", "add", "P3",
                    "--action", "accept")
        check_eq(pending_text(), before, "pending set unchanged by the refused edit")
        gwctl("abandon").ok("abandon")


@case("rollback VERSION commits the old version as a new one; unknown versions refused")
def _(ctx):
        g = ctl_gateway(ctx)
        gwctl("policy", "add", "ONE", "--action", "relay").ok("stage ONE")
        v1 = commit("one")
        gwctl("policy", "add", "TWO", "--action", "relay").ok("stage TWO")
        v2 = commit("two")
        check("TWO" in conf(g), "TWO committed")
        r = gwctl("rollback", v1).ok("rollback")
        m = re.search(r"version (\d+)\D+(\d+)", r.out)
        check(m and int(m.group(1)) == v1 and int(m.group(2)) > v2, "rollback says which version it made", r)
        v3 = int(m.group(2))
        check("ONE" in conf(g) and "TWO" not in conf(g), "file is version one again", conf(g))
        check("TWO" not in running(g), "running config is version one again")
        h = history(g)
        check_eq(int(h[-1].get("version")), v3, "rollback is a new history entry")
        check_eq([int(x.get("version")) for x in h][-3:], [v1, v2, v3], "history order")
        ctl_refused(g, r"999|version|not found|unknown", "rollback", "999")
        r = gwctl("rollback", "abc")
        r.fails(None, "rollback abc", rc=2)
        gwctl("policy", "add", "THREE", "--action", "relay").ok("stage THREE")
        r = gwctl("rollback", v1)
        pend = pending_text()
        if r.rc == 0:
                # The rollback replaced the staged set: its changes are neither committed nor left behind.
                check("THREE" not in conf(g), "rollback does not commit the staged THREE", r)
                check(not pend[0], "nothing pending after a rollback", pend)
        else:
                check(pend[0] and "THREE" in pend[2], "a refused rollback leaves the staged set as it was", r, pend)
                gwctl("abandon").ok("abandon")


@case("config export: no secrets by default; --secrets encrypted; import with the password is staged")
def _(ctx):
        g = ldap_gateway(ctx)
        out = os.path.join(ctx.workdir, "plain.conf")
        gwctl("config", "export", "-o", out).ok("config export")
        plain = open(out).read()
        check("corp" in plain and "ldaps://ldap.example.test" in plain, "the LDAP profile is exported", plain)
        check(SECRET not in plain, "no secret in a default export", plain)
        r = gwctl("config", "export").ok("config export to stdout")
        check(SECRET not in r.out and "corp" in r.out, "stdout export has no secret either")
        check(SECRET not in running(g), "config show has no secret")
        pw = public_file("export-pw", PASSWORD + "\n")
        enc_path = os.path.join(ctx.workdir, "secret.conf")
        gwctl("config", "export", "--secrets", "--password-file", pw, "-o", enc_path).ok("export --secrets")
        enc = open(enc_path).read()
        check(SECRET not in enc, "the secret is not in clear text", enc)
        check("enc:v1:" in enc, "the secret is there encrypted (enc:v1:)", enc)
        check_eq(oct(os.stat(enc_path).st_mode & 0o077), oct(0), "export with secrets is private to its owner")
        # Import it back, changed, with the wrong then the right password.
        changed = enc.replace('hostname = "gw.test"', 'hostname = "gw2.test"', 1)
        check(changed != enc, "hostname line found in the export", enc[:500])
        imp = public_file("import.conf", changed)
        ctl_refused(g, r"password", "config", "import", imp, "--password-file", public_file("bad-pw", "nope\n"))
        r = gwctl("config", "import", imp, "--password-file", pw).ok("config import")
        check(re.search(r"staged", r.out, re.I), "import says it is staged", r)
        check("gw2.test" not in conf(g), "import is only staged")
        d = gwctl("diff").ok("diff").out
        check(re.search(r"(?m)^\+.*gw2\.test", d), "diff shows the imported change", d)
        check(SECRET not in d, "the diff shows no secret", d)
        commit("imported")
        check("gw2.test" in conf(g), "committed import in the file")
        check(SECRET in conf(g), "the decrypted secret is back in the file itself", conf(g))


@case("config import refused: text that does not validate names the problem; nothing staged")
def _(ctx):
        g = ctl_gateway(ctx)
        bad = conf(g).replace("listeners = (", "listeners_typo = (", 1)
        f = public_file("bad.conf", bad)
        r = ctl_refused(g, r"listeners_typo|unknown|listener", "config", "import", f)
        check(re.search(r":\d+", r.err), "the message gives the line", r)
        f2 = public_file("syntax.conf", "hostname = \"x\"\nthis is not libconfig\n")
        ctl_refused(g, r"syntax|parse|line|:\d+", "config", "import", f2)
        ctl_refused(g, r"no such|not found|cannot|open|read", "config", "import", os.path.join(ctx.workdir, "absent"))
        check_eq(pending_text()[0] if pending_text() else False, False, "nothing pending after refused imports")


@case("hand edit + gwctl reload: valid file applied; invalid refused with FILE:LINE, running config stays")
def _(ctx):
        g = ctl_gateway(ctx)
        c = base_config(g.state_dir, g.port)
        c["policies"] = POLICIES + [{"name": "HANDMADE", "action": "relay"}]
        from harness import libconfig
        with open(g.config_path, "w") as f:
                f.write(libconfig(c))
        gwctl("reload").ok("reload of a valid edit")
        check("HANDMADE" in running(g), "hand edit applied by reload")
        good = running(g)
        with open(g.config_path, "a") as f:
                f.write("frobnicate = 5;\n")
        r = gwctl("reload")
        r.fails(r"frobnicate|unknown", "reload of an invalid file")
        check(re.search(r":\d+", r.err), "the message names the line", r)
        check(g.running(), "daemon still running")
        check_eq(running(g), good, "running configuration unchanged")
        rep = send_mail(g.port, "a@localhost", ["b@localhost"], message("after bad reload"))
        check_eq(rep[0], 250, "mail still accepted")


if __name__ == "__main__":
        run()
