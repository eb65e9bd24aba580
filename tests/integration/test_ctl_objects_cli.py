#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""gwctl's configuration objects: listener, sendergroup, policy, dest,
dest global, route, alert, https and ldap through add / set / delete /
list / show against the real daemon.

For each kind: an add is staged (the listing, which shows the running
configuration, does not have it yet), a commit makes it appear in the
listing, in `show`, as JSON and in the configuration file; set changes it,
delete removes it. Invalid domains and addresses, duplicate names, unknown
names, bad references and bad values are refused with a message naming
the object and change nothing. LDAP bind passwords are never shown.
"""

import re

from harness import (case, check, check_eq, ctl_gateway, ctl_refused, free_port, gwctl, json_record, json_rows,
                     public_file, row_by, run)
from tlspeer import p

BIND_SECRET = "ldap-bind-secret-42"


def conf(g):
        with open(g.config_path) as f:
                return f.read()


def commit(what):
        gwctl("commit", "-m", what).ok(f"commit {what}")


def rows(kind):
        return json_rows(gwctl("--json", *kind.split(), "list").ok(f"{kind} list --json"), f"{kind} list")


def key_of(row):
        return row.get("name", row.get("domain"))


def names(kind):
        return {key_of(r) for r in rows(kind)}


def lifecycle(g, kind, name, add, setargs, want_after_set, file_token=None):
        """add (staged, invisible until commit) -> commit -> list/show/JSON/file
        -> set -> commit -> show -> delete -> commit -> gone."""
        gwctl(*kind.split(), "add", name, *add).ok(f"{kind} add {name}")
        check(name not in names(kind), f"{kind} {name}: not listed before commit (staged only)")
        commit(f"add {kind} {name}")
        check(name in names(kind), f"{kind} {name}: listed after commit", rows(kind))
        t = gwctl(*kind.split(), "list").ok(f"{kind} list").out
        check(re.search(rf"(?m)^\s*{re.escape(name)}\b", t), f"{kind} {name}: table row", t)
        s = gwctl(*kind.split(), "show", name).ok(f"{kind} show {name}")
        check(name in s.out, f"{kind} show names {name}", s)
        json_record(gwctl("--json", *kind.split(), "show", name).ok(f"{kind} show --json"), f"{kind} show")
        check((file_token or name) in conf(g), f"{kind} {name} in the configuration file")
        gwctl(*kind.split(), "set", name, *setargs).ok(f"{kind} set {name}")
        commit(f"set {kind} {name}")
        s = gwctl(*kind.split(), "show", name).ok(f"{kind} show {name}")
        check(want_after_set in s.out, f"{kind} {name}: show has {want_after_set!r} after set", s)
        gwctl(*kind.split(), "delete", name).ok(f"{kind} delete {name}")
        check(name in names(kind), f"{kind} {name}: still listed until the delete is committed")
        commit(f"delete {kind} {name}")
        check(name not in names(kind), f"{kind} {name}: gone after delete")
        ctl_refused(g, re.escape(name), *kind.split(), "show", name)
        ctl_refused(g, re.escape(name), *kind.split(), "set", name, *setargs)
        ctl_refused(g, re.escape(name), *kind.split(), "delete", name)


@case("listener add/set/delete/list/show")
def _(ctx):
        g = ctl_gateway(ctx)
        lifecycle(g, "listener", "second",
                  ["--address", "127.0.0.1", "--port", free_port(), "--default-policy", "ACCEPTED",
                   "--hostname", "second.test", "--tls", "off", "--accepted-domain", "localhost"],
                  ["--hostname", "changed.test", "--tls", "preferred"], "changed.test")
        r = row_by(rows("listener"), "name", "inbound")
        check(r is not None and str(r.get("port")) == str(g.port), "JSON row of inbound with its port", rows("listener"))


@case("listener refused: bad address, duplicate name, same address and port, bad port, unknown policy, TLS mode")
def _(ctx):
        g = ctl_gateway(ctx)
        base = ["--port", free_port(), "--default-policy", "ACCEPTED"]
        ctl_refused(g, r"999\.1\.1\.1|address", "listener", "add", "bad", "--address", "999.1.1.1", *base)
        ctl_refused(g, r"not-an-ip|address", "listener", "add", "bad", "--address", "not-an-ip", *base)
        ctl_refused(g, r"inbound.*(exist|already|duplicate)|(exist|already|duplicate).*inbound",
                    "listener", "add", "inbound", "--address", "127.0.0.1", *base)
        ctl_refused(g, rf"{g.port}|same|address and port|already",
                    "listener", "add", "twin", "--address", "127.0.0.1", "--port", g.port, "--default-policy", "ACCEPTED")
        r = gwctl("listener", "add", "p", "--address", "127.0.0.1", "--port", "70000", "--default-policy", "ACCEPTED")
        r.fails(r"70000|port", "port 70000")
        ctl_refused(g, r"NOPE", "listener", "add", "np", "--address", "127.0.0.1", "--port", free_port(),
                    "--default-policy", "NOPE")
        ctl_refused(g, r"sometimes|tls", "listener", "set", "inbound", "--tls", "sometimes")
        ctl_refused(g, r"TLSv1\.1|version", "listener", "set", "inbound", "--tls-min-version", "TLSv1.1")
        ctl_refused(g, r"relative|absolute|client.ca", "listener", "set", "inbound", "--client-ca", "relative/ca.pem")
        ctl_refused(g, r"inbound|last|at least one|listener", "listener", "delete", "inbound")


@case("policy add/set/delete/list/show; refused: duplicate, bad action, delete while referenced")
def _(ctx):
        g = ctl_gateway(ctx)
        lifecycle(g, "policy", "EXTRA", ["--action", "relay"], ["--action", "accept", "--tls", "required"], "required")
        ctl_refused(g, r"ACCEPTED.*(exist|already|duplicate)|(exist|already|duplicate).*ACCEPTED",
                    "policy", "add", "ACCEPTED", "--action", "accept")
        ctl_refused(g, r"maybe|action", "policy", "add", "P", "--action", "maybe")
        ctl_refused(g, r"ACCEPTED|inbound|used|referenc", "policy", "delete", "ACCEPTED")
        ctl_refused(g, r"name", "policy", "add", "bad name!", "--action", "accept")


@case("sendergroup add/set/delete/list/show; refused: bad source, unknown policy, duplicate")
def _(ctx):
        g = ctl_gateway(ctx)
        lifecycle(g, "sendergroup", "SG2", ["--policy", "RELAYED", "--source", "10.0.0.0/8", "--source", "192.0.2.1"],
                  ["--source", "10.1.0.0/16"], "10.1.0.0/16")
        ctl_refused(g, r"10\.0\.0\.1/8|bits|prefix|source", "sendergroup", "add", "S1", "--policy", "RELAYED",
                    "--source", "10.0.0.1/8")
        ctl_refused(g, r"nonsense|source|address", "sendergroup", "add", "S2", "--policy", "RELAYED",
                    "--source", "nonsense")
        ctl_refused(g, r"NOPE", "sendergroup", "add", "S3", "--policy", "NOPE", "--source", "10.0.0.0/8")
        ctl_refused(g, r"RELAYLIST.*(exist|already|duplicate)|(exist|already|duplicate).*RELAYLIST",
                    "sendergroup", "add", "RELAYLIST", "--policy", "RELAYED", "--source", "10.0.0.0/8")
        ctl_refused(g, r"source|empty|required", "sendergroup", "add", "S4", "--policy", "RELAYED")


@case("dest add/set/delete/list/show and dest global; refused: invalid domain, duplicate, bad mode, relative CA")
def _(ctx):
        g = ctl_gateway(ctx)
        lifecycle(g, "dest", "example.test", ["--tls", "required", "--max-connections", "3"],
                  ["--tls", "preferred-verify", "--ca-file", p("ca.pem")], "preferred-verify")
        ctl_refused(g, r"bad\.\.domain|domain", "dest", "add", "bad..domain", "--tls", "required")
        ctl_refused(g, r"domain|-bad\.test", "dest", "add", "--tls", "required", "--", "-bad.test")
        gwctl("dest", "add", "partner.test", "--tls", "required").ok("dest add partner.test")
        ctl_refused(g, r"partner\.test.*(exist|already|duplicate)|(exist|already|duplicate).*partner\.test",
                    "dest", "add", "PARTNER.test", "--tls", "preferred")
        ctl_refused(g, r"always|tls", "dest", "set", "partner.test", "--tls", "always")
        ctl_refused(g, r"relative|absolute|ca.file", "dest", "set", "partner.test", "--ca-file", "ca.pem")
        gwctl("abandon").ok("abandon")
        # Global outbound settings: client certificate and TLS alerts.
        gwctl("cert", "create", "client", "--cn", "gw.test").ok("cert create client")
        gwctl("dest", "global", "set", "--certificate", "client", "--alert", "on", "--alert-interval", "10m").ok(
                "dest global set")
        commit("global outbound")
        s = gwctl("dest", "global", "show").ok("dest global show")
        check("client" in s.out, "global client certificate shown", s)
        json_record(gwctl("--json", "dest", "global", "show").ok("dest global show --json"))
        check(re.search(r"tls_client\s*=\s*\{[^}]*certificate\s*=\s*\"client\"", conf(g), re.S),
              "tls_client.certificate in the file", conf(g))
        ctl_refused(g, r"nosuchcert|certificate", "dest", "global", "set", "--certificate", "nosuchcert")
        ctl_refused(g, r"alert.interval|interval|range", "dest", "global", "set", "--alert-interval", "1s")


@case("route add/set/delete/list/show; refused: invalid domain, both hosts and maildir, bad host, duplicate")
def _(ctx):
        g = ctl_gateway(ctx)
        lifecycle(g, "route", "example.test", ["--host", "127.0.0.1:2526"], ["--host", "mx.example.test:25"],
                  "mx.example.test")
        ctl_refused(g, r"domain|under_score", "route", "add", "under_score..test", "--host", "127.0.0.1")
        ctl_refused(g, r"maildir|hosts|both|exactly one", "route", "add", "x.test", "--host", "127.0.0.1",
                    "--maildir", "/tmp/x")
        ctl_refused(g, r"hosts|maildir|exactly one|required", "route", "add", "y.test")
        ctl_refused(g, r"99999|port|host", "route", "add", "z.test", "--host", "127.0.0.1:99999")
        ctl_refused(g, r"localhost.*(exist|already|duplicate)|(exist|already|duplicate).*localhost",
                    "route", "add", "localhost", "--host", "127.0.0.1")
        ctl_refused(g, r"relative|absolute|maildir", "route", "add", "m.test", "--maildir", "relative/dir")


@case("alert recipients add/delete/list; refused: invalid mailbox, duplicate")
def _(ctx):
        g = ctl_gateway(ctx)
        gwctl("alert", "add", "postmaster@example.test").ok("alert add")
        commit("alert recipient")
        r = gwctl("alert", "list").ok("alert list")
        check("postmaster@example.test" in r.out, "listed", r)
        j = json_rows(gwctl("--json", "alert", "list").ok("alert list --json"))
        check("postmaster@example.test" in str(j), "JSON row", j)
        check("postmaster@example.test" in conf(g), "alert_recipients in the file")
        ctl_refused(g, r"not a mailbox|mailbox|address|invalid", "alert", "add", "not a mailbox")
        ctl_refused(g, r"exist|already|duplicate", "alert", "add", "postmaster@example.test")
        gwctl("alert", "delete", "postmaster@example.test").ok("alert delete")
        commit("no alert recipient")
        check("postmaster@example.test" not in gwctl("alert", "list").ok("list").out, "deleted")
        ctl_refused(g, r"nobody@example\.test|not found|no such", "alert", "delete", "nobody@example.test")


@case("https add/set/delete/list/show; refused: bad address, unknown certificate, duplicate")
def _(ctx):
        g = ctl_gateway(ctx)
        gwctl("cert", "create", "web", "--cn", "gw.test").ok("cert create web")
        lifecycle(g, "https", "admin", ["--address", "127.0.0.1", "--port", "8443", "--hostname", "gw.test",
                                        "--certificate", "web"], ["--port", "9443"], "9443")
        ctl_refused(g, r"300\.0\.0\.1|address", "https", "add", "h1", "--address", "300.0.0.1", "--port", "8443",
                    "--hostname", "gw.test")
        ctl_refused(g, r"nosuchcert|certificate", "https", "add", "h2", "--address", "127.0.0.1", "--port", "8444",
                    "--hostname", "gw.test", "--certificate", "nosuchcert")
        ctl_refused(g, r"hostname|domain|bad_host", "https", "add", "h3", "--address", "127.0.0.1", "--port", "8445",
                    "--hostname", "bad_host..test")
        gwctl("https", "add", "h4", "--address", "127.0.0.1", "--port", "8446", "--hostname", "gw.test").ok("add h4")
        ctl_refused(g, r"h4.*(exist|already|duplicate)|(exist|already|duplicate).*h4", "https", "add", "h4",
                    "--address", "127.0.0.1", "--port", "8447", "--hostname", "gw.test")
        gwctl("abandon").ok("abandon")
        # A certificate in use by an HTTPS interface cannot be deleted.
        gwctl("https", "add", "h5", "--address", "127.0.0.1", "--port", "8448", "--hostname", "gw.test",
              "--certificate", "web").ok("add h5")
        commit("h5")
        ctl_refused(g, r"https.*h5|h5", "cert", "delete", "web")


@case("ldap add/set/delete/list/show; bind password never shown; refused: bad URI, relative CA, duplicate")
def _(ctx):
        g = ctl_gateway(ctx)
        gwctl("cert", "create", "ldapclient", "--cn", "gw.test").ok("cert create")
        pw = public_file("bind-pw", BIND_SECRET + "\n")
        lifecycle(g, "ldap", "corp", ["--uri", "ldaps://ldap.example.test", "--base", "dc=example,dc=test",
                                      "--bind-dn", "cn=gw,dc=example,dc=test", "--bind-password-file", pw,
                                      "--certificate", "ldapclient", "--ca-file", p("ca.pem")],
                  ["--base", "dc=other,dc=test"], "dc=other,dc=test")
        gwctl("ldap", "add", "corp2", "--uri", "ldap://ldap2.example.test", "--base", "dc=example,dc=test",
              "--bind-dn", "cn=gw", "--bind-password-file", pw).ok("ldap add corp2")
        d = gwctl("diff").ok("diff").out
        check(BIND_SECRET not in d, "no bind password in the diff", d)
        check(BIND_SECRET not in gwctl("pending").ok("pending").out, "no bind password in pending")
        commit("corp2")
        for args in (("ldap", "list"), ("ldap", "show", "corp2"), ("--json", "ldap", "list"), ("config", "show"),
                     ("config", "export")):
                r = gwctl(*args).ok(" ".join(args))
                check(BIND_SECRET not in r.out, f"no bind password in gwctl {' '.join(args)}", r)
        rec = json_record(gwctl("--json", "ldap", "show", "corp2").ok("ldap show --json"))
        check(any(v in (True, "yes") for k, v in rec.items() if "password" in k.lower()),
              "show says a bind password is set", rec)
        check(BIND_SECRET in conf(g), "the password itself is in the file (root-only)")
        ctl_refused(g, r"http://|uri|ldap", "ldap", "add", "l1", "--uri", "http://ldap.test", "--base", "dc=test")
        ctl_refused(g, r"relative|absolute|ca.file", "ldap", "add", "l2", "--uri", "ldap://ldap.test", "--base",
                    "dc=test", "--ca-file", "ca.pem")
        ctl_refused(g, r"corp2.*(exist|already|duplicate)|(exist|already|duplicate).*corp2", "ldap", "add", "corp2",
                    "--uri", "ldap://x.test", "--base", "dc=test")
        # A password is never taken from the command line (it would show in ps).
        ctl_refused(g, None, "ldap", "add", "l3", "--uri", "ldap://x.test", "--base", "dc=test",
                    "--bind-password", BIND_SECRET)


@case("global set/show: hostname, DNS servers; refused: invalid hostname, bad DNS server")
def _(ctx):
        g = ctl_gateway(ctx)
        gwctl("global", "set", "--hostname", "gw2.test", "--dns-server", "127.0.0.1:5353").ok("global set")
        check("gw2.test" not in gwctl("global", "show").ok("global show").out, "staged only")
        commit("global")
        s = gwctl("global", "show").ok("global show")
        check("gw2.test" in s.out, "hostname after commit", s)
        json_record(gwctl("--json", "global", "show").ok("global show --json"))
        check(re.search(r'(?m)^hostname\s*=\s*"gw2\.test"', conf(g)), "hostname in the file", conf(g))
        ctl_refused(g, r"bad_host|hostname|domain", "global", "set", "--hostname", "bad_host..test")
        ctl_refused(g, r"dns|999\.0\.0\.1|server", "global", "set", "--dns-server", "999.0.0.1")


@case("every listing parses as JSON; --no-legend drops the header")
def _(ctx):
        ctl_gateway(ctx)
        for kind in ("listener", "policy", "sendergroup", "dest", "route", "https", "ldap", "alert"):
                rows(kind)
                t = gwctl(*kind.split(), "list").ok(f"{kind} list").out.splitlines()
                n = gwctl("--no-legend", *kind.split(), "list").ok(f"{kind} list --no-legend").out.splitlines()
                if t:
                        check_eq(len(n), len(t) - 1, f"{kind} list --no-legend drops one header line")
        check_eq(names("policy"), {"ACCEPTED", "RELAYED", "BLOCKED", "REFUSED"}, "policies of the config")
        check_eq(names("route"), {"localhost"}, "routes of the config")


if __name__ == "__main__":
        run()
