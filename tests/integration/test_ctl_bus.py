#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""The org.tlsgw.Gateway1.Manager interface with busctl (and gdbus where the
exact error name and text matter: busctl replaces the text of AccessDenied):
status properties, staging, diff, commit into the file and the history,
live apply, rollback, reload, export/import, PropertiesChanged, and the
access rules as root, as "nobody" and as a member of admin_group. The
daemon runs on a private system bus with the installed policy file."""

import os
import re
import socket
import stat
import subprocess
import time

from harness import (BUS_NAME, BUS_PATH, Failure, Gateway, Skip, Smtp, _run_ctl, base_config, bus_call,
                     bus_property, busctl, case, check, check_eq, check_unchanged, diag, free_port,
                     gateway_files, need, pending_text, port_is_closed, private_bus, run, wait_until)

MGR = "org.tlsgw.Gateway1.Manager"
ERR = "org.tlsgw.Gateway1.Error."
DENIED = "org.freedesktop.DBus.Error.AccessDenied"


def gw(ctx, **kw):
        extra = kw.pop("extra", None)
        return Gateway(ctx, lambda g: base_config(g.state_dir, g.port, extra=extra, **kw), bus=True)


def mgr(method, sig="", *values, user=None):
        return bus_call(MGR, method, sig, *values, user=user)


def prop(name, user=None):
        return bus_property(MGR, name, user=user)


def gcall(method, *args, user=None):
        """gdbus call: the error name and the daemon's own message."""
        exe = need("gdbus")
        argv = [exe, "call", "--system", "--dest", BUS_NAME, "--object-path", BUS_PATH,
                "--method", f"{MGR}.{method}"] + [str(a) for a in args]
        return _run_ctl(argv, user, None, 60, private_bus().env())


def gfails(res, error, pattern=None, what=""):
        if res.rc == 0:
                raise Failure(f"{what} should have failed with {error}:\n{res!r}")
        if error not in res.err or (pattern and not re.search(pattern, res.err, re.I)):
                raise Failure(f"{what}: want {error}" + (f" matching /{pattern}/" if pattern else "")
                              + f":\n{res!r}")


def greeting(port):
        with Smtp(port) as s:
                return s.greeting[1]


def set_hostname(name, user=None):
        return mgr("Set", "ssa{sv}", "listener", "inbound", 1, "hostname", "s", name, user=user)


@case("status properties are readable by anyone")
def _(ctx):
        g = gw(ctx)
        for user in (None, "nobody"):
                check_eq(prop("State", user), "running", "State")
                check_eq(prop("ConfigFile", user), g.config_path, "ConfigFile")
                check_eq(prop("ConfigVersion", user), 0, "ConfigVersion before any commit")
                check_eq(prop("PendingChanges", user), False, "PendingChanges")
                check_eq(prop("PendingOwner", user), "", "PendingOwner")
                check_eq(prop("Listeners", user), ["inbound"], "Listeners")
                check(re.match(r"^\d+\.\d+", prop("Version", user)), "Version is a version")
                check(isinstance(prop("KtlsAvailable", user), bool), "KtlsAvailable is a boolean")
                for p in ("Sessions", "QueuedMessages", "ActiveDeliveries", "MessagesReceived"):
                        check(isinstance(prop(p, user), int), f"{p} is a number")
                r, data = mgr("GetPending", user=user)
                r.ok("GetPending")
                check_eq(data, [False, "", ""], "GetPending with nothing staged")
                r, data = mgr("Diff", user=user)
                r.ok("Diff")
                check_eq(data, [""], "Diff with nothing staged")
                r, data = mgr("History", user=user)
                r.ok("History")
                check_eq(data, [[]], "History before any commit")
                r, data = mgr("GetConfig", "b", "false", user=user)
                r.ok("GetConfig")
                check('name = "inbound"' in data[0], "GetConfig shows the running configuration", data)
                r, data = mgr("ExportConfig", "bs", "false", "", user=user)
                r.ok("ExportConfig without secrets")


@case("nobody may not change anything: AccessDenied, nothing changed")
def _(ctx):
        g = gw(ctx)
        before = (gateway_files(g), pending_text())
        calls = [("Reload", ""), ("Add", "ssa{sv}", "policy", "X", 1, "action", "s", "relay"),
                 ("Set", "ssa{sv}", "listener", "inbound", 1, "hostname", "s", "evil.test"),
                 ("Delete", "ss", "policy", "BLOCKED"), ("SetGlobal", "a{sv}", 1, "hostname", "s", "evil.test"),
                 ("Commit", "s", "x"), ("Abandon", "b", "true"), ("Rollback", "u", 1),
                 ("ImportConfig", "ss", "hostname = \"x\";", ""), ("ExportConfig", "bs", "true", "pw")]
        for c in calls:
                r, _ = mgr(*c, user="nobody")
                if r.rc == 0 or "Access denied" not in r.err:
                        raise Failure(f"{c[0]} as nobody was not denied:\n{r!r}")
        # The daemon's own check and text, not only the bus policy.
        gfails(gcall("Set", "listener", "inbound", "{'hostname': <'evil.test'>}", user="nobody"),
               DENIED, r"requires root\.", "Set as nobody")
        gfails(gcall("Commit", "x", user="nobody"), DENIED, "requires root", "Commit as nobody")
        check_unchanged(before[0], gateway_files(g), "denied calls")
        check_eq(pending_text(), before[1], "pending set after denied calls")
        check_eq(greeting(g.port).split()[0], "gw.test", "greeting after denied calls")


@case("stage, diff, commit: file, history, live apply, properties")
def _(ctx):
        g = gw(ctx)
        r, _ = set_hostname("mx2.test")
        r.ok("Set hostname")
        check_eq(prop("PendingChanges"), True, "PendingChanges after Set")
        check_eq(prop("PendingOwner"), "root", "PendingOwner after Set")
        r, data = mgr("Diff")
        diff = data[0]
        check(diff.startswith("--- running\n+++ pending\n@@ "), "Diff is a unified diff", diff)
        check('-    hostname = "gw.test";' in diff.replace("\t", "    ") or re.search(r'^-\s+hostname = "gw.test";', diff, re.M),
              "Diff removes the old listener hostname", diff)
        check(re.search(r'^\+\s+hostname = "mx2.test";', diff, re.M), "Diff adds the new one", diff)
        context = [ln for ln in diff.splitlines()[3:] if ln.startswith(" ")]
        check(len(context) == 6, "three lines of context on each side", diff)
        r, data = mgr("GetConfig", "b", "true")
        check('"mx2.test"' in data[0], "GetConfig(pending) shows the change")
        check_eq(greeting(g.port).split()[0], "gw.test", "nothing applied before Commit")
        with open(g.config_path) as f:
                check('"mx2.test"' not in f.read(), "file untouched before Commit")

        r, data = mgr("Commit", "s", "new name")
        r.ok("Commit")
        check_eq(data, [1], "first commit is version 1")
        with open(g.config_path) as f:
                text = f.read()
        check('"mx2.test"' in text, "file has the change", text)
        check_eq(stat.S_IMODE(os.stat(g.config_path).st_mode), 0o600, "config file mode")
        hist = os.path.join(g.state_dir, "history")
        with open(os.path.join(hist, "1.conf")) as f:
                check_eq(f.read(), text, "history 1.conf is the committed file")
        check_eq(stat.S_IMODE(os.stat(os.path.join(hist, "1.conf")).st_mode), 0o600, "history file mode")
        check_eq(greeting(g.port).split()[0], "mx2.test", "greeting after Commit (live, no restart)")
        check_eq(prop("ConfigVersion"), 1, "ConfigVersion after Commit")
        check_eq(prop("PendingChanges"), False, "PendingChanges after Commit")
        r, data = mgr("History")
        (v, t, user, comment), = data[0]
        check_eq((v, user, comment), (1, "root", "new name"), "History entry")
        check(abs(t / 1e6 - time.time()) < 120, "History time is now", t)
        r, data = mgr("Diff")
        check_eq(data, [""], "Diff after Commit")
        check(g.running(), "daemon still running")


@case("commit with nothing pending, abandon with nothing pending: NothingPending")
def _(ctx):
        gw(ctx)
        gfails(gcall("Commit", "nothing"), ERR + "NothingPending", "no pending changes", "Commit")
        gfails(gcall("Abandon", "false"), ERR + "NothingPending", None, "Abandon")
        r, _ = mgr("Commit", "s", "x")
        r.fails(None, "busctl Commit with nothing pending")


@case("bad edits are refused and stage nothing")
def _(ctx):
        g = gw(ctx)
        before = (gateway_files(g), pending_text())
        bad = [
                (("Set", "listener", "inbound", "{'port': <uint32 70000>}"), "Invalid", "inbound"),
                (("Add", "policy", "RELAYED", "{'action': <'relay'>}"), "Exists", "RELAYED"),
                (("Delete", "policy", "RELAYED"), "InUse", "RELAYED"),
                (("Delete", "listener", "nosuch"), "NotFound", "nosuch"),
                (("Set", "frobnicator", "x", "{'a': <'b'>}"), "Invalid", "frobnicator"),
                (("Set", "listener", "inbound", "{'hostname': <3.5>}"), "Invalid", "hostname"),
                (("Add", "listener", "", "{}"), "Invalid", "name"),
                (("Rollback", "uint32 99"), "NotFound", "99"),
                (("ImportConfig", "this is not { a configuration", "''"), "Invalid", None),
        ]
        for args, err, pattern in bad:
                gfails(gcall(*args), ERR + err, pattern, " ".join(args))
                check_eq(prop("PendingChanges"), False, f"PendingChanges after refused {args[0]}")
        check_unchanged(before[0], gateway_files(g), "refused edits")
        check_eq(pending_text(), before[1], "pending set after refused edits")


@case("a listener added by commit accepts at once; rollback removes it again")
def _(ctx):
        g = gw(ctx)
        port = free_port()
        r, _ = mgr("Add", "ssa{sv}", "listener", "second", 6, "address", "s", "127.0.0.1", "port", "u", port,
                   "hostname", "s", "second.test", "accepted_domains", "as", 1, "localhost",
                   "default_policy", "s", "ACCEPTED", "tls", "s", "off")
        r.ok("Add listener")
        check(port_is_closed(port), "not listening before Commit")
        r, data = mgr("Commit", "s", "second listener")
        r.ok("Commit")
        check_eq(data, [1], "version")
        check_eq(greeting(port).split()[0], "second.test", "new listener greets")
        check_eq(prop("Listeners"), ["inbound", "second"], "Listeners")
        r, data = mgr("Rollback", "u", 1)
        r.ok("Rollback to 1 (the same text)")
        check_eq(data, [2], "rollback is a new version")
        r, _ = mgr("Delete", "ss", "listener", "second")
        r.ok("Delete listener")
        r, data = mgr("Commit", "s", "")
        check_eq(data, [3], "version")
        check(wait_until(lambda: port_is_closed(port), 5), "listener closed after Commit")
        r, data = mgr("Rollback", "u", 2)
        r.ok("Rollback to 2")
        check_eq(data, [4], "version")
        check_eq(greeting(port).split()[0], "second.test", "listener back after rollback")
        r, data = mgr("History")
        check_eq([(e[0], e[3]) for e in data[0]],
                 [(1, "second listener"), (2, "rollback to 1"), (3, ""), (4, "rollback to 2")], "History")
        check_eq(prop("ConfigVersion"), 4, "ConfigVersion")


@case("a commit that cannot be applied changes nothing: ApplyFailed")
def _(ctx):
        g = gw(ctx)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", 0))
                s.listen(1)
                busy = s.getsockname()[1]
                r, _ = mgr("Add", "ssa{sv}", "listener", "clash", 5, "address", "s", "127.0.0.1", "port", "u", busy,
                           "hostname", "s", "clash.test", "accepted_domains", "as", 1, "localhost",
                           "default_policy", "s", "ACCEPTED")
                r.ok("Add listener on a busy port (valid as configuration)")
                before = gateway_files(g)
                gfails(gcall("Commit", "clash"), ERR + "ApplyFailed", r"clash.*(in use|listen)", "Commit")
                check_unchanged(before, gateway_files(g), "failed Commit")
                check_eq(prop("PendingChanges"), True, "the pending set stays after a failed Commit")
                check_eq(prop("ConfigVersion"), 0, "ConfigVersion after a failed Commit")
                check_eq(prop("Listeners"), ["inbound"], "Listeners after a failed Commit")
        r, _ = mgr("Abandon", "b", "false")
        r.ok("Abandon")
        check_eq(prop("PendingChanges"), False, "PendingChanges after Abandon")


@case("admin_group member stages; root gets PendingByOther; only root may force")
def _(ctx):
        g = gw(ctx, extra={"admin_group": "nogroup"})
        r, _ = set_hostname("group.test", user="nobody")
        r.ok("Set as a member of admin_group")
        check_eq(prop("PendingOwner"), "nobody", "PendingOwner")
        gfails(gcall("Set", "listener", "inbound", "{'hostname': <'root.test'>}"), ERR + "PendingByOther",
               "nobody", "Set by root while nobody holds the set")
        gfails(gcall("Commit", "x"), ERR + "PendingByOther", "nobody", "Commit by root")
        gfails(gcall("Abandon", "false"), ERR + "PendingByOther", "nobody", "Abandon without force")
        r, _ = mgr("Abandon", "b", "true")
        r.ok("root abandons with force")
        check_eq(prop("PendingChanges"), False, "PendingChanges after forced Abandon")
        r, _ = set_hostname("root.test")
        r.ok("root stages")
        gfails(gcall("Abandon", "true", user="nobody"), DENIED, "root", "force by a non-root admin")
        r, data = mgr("Commit", "s", "by root")
        r.ok("Commit")
        r, data = mgr("History", user="nobody")
        check_eq(data[0][0][2], "root", "History user")
        check_eq(greeting(g.port).split()[0], "root.test", "greeting")


@case("PropertiesChanged for PendingChanges, ConfigVersion and Listeners")
def _(ctx):
        gw(ctx)
        exe = need("busctl")
        mon = subprocess.Popen([exe, "--system", "monitor", BUS_NAME, "--json=short"], env=private_bus().env(),
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        ctx.cleanup(lambda: (mon.kill(), mon.wait()))
        time.sleep(0.5)
        set_hostname("sig.test")[0].ok("Set")
        mgr("Commit", "s", "signals")[0].ok("Commit")
        time.sleep(0.5)
        mon.kill()
        out = mon.communicate(timeout=10)[0]
        changed = set()
        for line in out.splitlines():
                if '"PropertiesChanged"' in line and MGR in line:
                        for p in ("PendingChanges", "PendingOwner", "ConfigVersion", "Listeners"):
                                if f'"{p}"' in line:
                                        changed.add(p)
        want = {"PendingChanges", "PendingOwner", "ConfigVersion", "Listeners"}
        check(changed == want, f"properties announced: got {sorted(changed)}, want {sorted(want)}", out[-2000:])


@case("Reload re-reads a hand-edited file; a broken file is refused")
def _(ctx):
        g = gw(ctx)
        mgr("SetGlobal", "a{sv}", 1, "hostname", "s", "c.test")[0].ok("SetGlobal")
        mgr("Commit", "s", "c")[0].ok("Commit")
        check_eq(prop("ConfigVersion"), 1, "ConfigVersion")
        with open(g.config_path) as f:
                text = f.read()
        with open(g.config_path, "w") as f:
                f.write(re.sub(r'hostname = "gw.test";', 'hostname = "hand.test";', text))
        mgr("Reload")[0].ok("Reload")
        check_eq(greeting(g.port).split()[0], "hand.test", "greeting after Reload")
        check_eq(prop("ConfigVersion"), 0, "a hand-edited file is no committed version")
        check_eq(prop("State"), "running", "State after Reload")
        with open(g.config_path, "w") as f:
                f.write("listeners = ( { name = \"inbound\"; port = 99999; } );\n")
        gfails(gcall("Reload"), ERR + "Invalid", "refused", "Reload of a broken file")
        check_eq(greeting(g.port).split()[0], "hand.test", "running configuration stays")


@case("ExportConfig: secrets only for admins and only encrypted; ImportConfig stages it")
def _(ctx):
        gw(ctx, extra={"ldap_profiles": [{"name": "corp", "uri": "ldaps://ldap.test", "base": "dc=test",
                                          "bind_dn": "cn=gw,dc=test", "bind_password": "s3cret-Pw"}]})
        r, data = mgr("ExportConfig", "bs", "false", "")
        check("s3cret-Pw" not in data[0], "no secret without secrets=true", data[0])
        r, data = mgr("GetConfig", "b", "false", user="nobody")
        check("s3cret-Pw" not in data[0], "no secret in GetConfig", data[0])
        gfails(gcall("ExportConfig", "true", "''"), ERR + "Invalid", "password", "secrets without a password")
        r, data = mgr("ExportConfig", "bs", "true", "export-pw")
        r.ok("ExportConfig with secrets")
        exported = data[0]
        check("s3cret-Pw" not in exported and "enc:v1:" in exported, "secret encrypted", exported)
        before = pending_text()
        gfails(gcall("ImportConfig", exported, "wrong"), ERR + "BadPassword", "password", "wrong password")
        gfails(gcall("ImportConfig", exported, "''"), ERR + "BadPassword", "password", "no password")
        check_eq(pending_text(), before, "nothing staged by a refused import")
        r, _ = mgr("ImportConfig", "ss", exported, "export-pw")
        r.ok("ImportConfig")
        check_eq(prop("PendingChanges"), True, "import is staged")
        r, data = mgr("Diff")
        check_eq(data, [""], "the import of the running configuration changes nothing")
        mgr("Abandon", "b", "false")[0].ok("Abandon")


if __name__ == "__main__":
        run()
