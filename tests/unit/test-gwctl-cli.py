#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
# gwctl without a daemon: help, usage errors (exit 2, one line, nothing
# sent), an unreachable bus and a bus without tlsgwd (exit 3), passwords
# never read from a pipe, the manual pages render without warnings and the
# bash completion loads and completes. Runs the gwctl built by meson
# (GWCTL); prints TAP.

import os
import shutil
import subprocess
import sys
import tempfile
import time

GWCTL = os.environ.get("GWCTL", "gwctl")
MAN_PAGES = [p for p in os.environ.get("GWCTL_MAN_PAGES", "").split(":") if p]
COMPLETION = os.environ.get("GWCTL_COMPLETION", "")
NO_BUS = "unix:path=/nonexistent/tlsgw-test-bus"

n = 0
failed = 0


def ok(cond, name, diag=""):
    global n, failed
    n += 1
    print(("ok" if cond else "not ok") + f" {n} - {name}")
    if not cond:
        failed += 1
        for line in str(diag).splitlines():
            print("# " + line)
    sys.stdout.flush()


def skip(name, reason):
    global n
    n += 1
    print(f"ok {n} - {name} # SKIP {reason}")


def gwctl(*args, env=None, stdin=subprocess.DEVNULL):
    e = dict(os.environ)
    e["DBUS_SYSTEM_BUS_ADDRESS"] = NO_BUS
    e.update(env or {})
    return subprocess.run([GWCTL, *args], env=e, stdin=stdin, capture_output=True, text=True, timeout=30)


def one_line_error(p):
    lines = p.stderr.splitlines()
    return len(lines) == 1 and lines[0].startswith("gwctl") and p.stdout == ""


# Help and version.
p = gwctl("--help")
ok(p.returncode == 0 and "Usage: gwctl" in p.stdout, "--help exits 0 with usage", p.stderr)
for word in ("status", "cert create", "listener add", "dest global", "commit", "rollback",
             "config export", "queue flush", "connections", "tls verify", "https add", "ldap add"):
    if word not in p.stdout:
        ok(False, f"--help mentions '{word}'", p.stdout)
        break
else:
    ok(True, "--help mentions every verb group")
p = gwctl("--version")
ok(p.returncode == 0 and p.stdout.startswith("gwctl "), "--version exits 0", p.stderr)

# Usage errors: exit 2, one line on stderr, no help dump.
cases = [
    (("frobnicate",), "unknown verb"),
    ((), "no verb"),
    (("cert",), "group without sub-verb"),
    (("cert", "frob"), "unknown sub-verb"),
    (("--bogus",), "unknown global option"),
    (("cert", "create", "x"), "cert create without --cn"),
    (("cert", "create", "x", "--cn", "a", "--key", "dsa"), "cert create with a bad key type"),
    (("cert", "create", "x", "--cn", "a", "--days", "0"), "cert create with 0 days"),
    (("listener", "add", "x", "--port", "70000"), "listener port out of range"),
    (("listener", "add", "x", "--address", "127.0.0.1", "--port", "0"), "listener --address is the verb's flag"),
    (("listener", "add", "x", "--ktls", "maybe"), "listener bad boolean"),
    (("listener", "add", "x", "--max-message-size", "10Q"), "listener bad size"),
    (("policy", "add", "P", "--idle-timeout", "soon"), "policy bad duration"),
    (("listener", "set", "x"), "set without settings"),
    (("listener", "add", "x", "--tls", "a", "--tls", "b"), "flag given twice"),
    (("listener", "add"), "add without a name"),
    (("sendergroup", "add", "G", "--order", "-1"), "negative order"),
    (("dest", "global", "frob"), "dest global unknown sub-verb"),
    (("global", "set"), "global set without settings"),
    (("rollback", "abc"), "rollback with a non-number"),
    (("rollback",), "rollback without a version"),
    (("queue", "show", "0"), "queue show MID 0"),
    (("queue", "delete", "1", "x"), "queue delete with a bad MID"),
    (("commit", "extra"), "commit with an argument"),
    (("tls", "verify", "not a domain"), "tls verify with a bad domain"),
    (("alert", "add", "not-a-mailbox"), "alert add with a bad address"),
    (("config", "export", "--password-file", "/dev/null"), "export password without --secrets"),
]
for args, name in cases:
    p = gwctl(*args)
    # Exit 2 also proves nothing was sent: the bus address does not exist,
    # and a connection attempt would have ended with exit 3.
    ok(p.returncode == 2 and one_line_error(p), f"{name}: exit 2, one-line error",
       f"rc={p.returncode}\nstdout={p.stdout}\nstderr={p.stderr}")

# Passwords are never read from a pipe.
with tempfile.TemporaryDirectory() as tmp:
    p = gwctl("cert", "export", "mx", "-o", os.path.join(tmp, "mx.p12"), stdin=subprocess.PIPE)
    ok(p.returncode == 2 and "password" in p.stderr and one_line_error(p),
       "cert export without a terminal or --password-file: exit 2", p.stderr)
    ok(not os.listdir(tmp), "cert export wrote no file")
    p12 = os.path.join(tmp, "x.p12")
    with open(p12, "wb") as f:
        f.write(b"\x30\x00")
    p = gwctl("cert", "import", "x", p12)
    ok(p.returncode == 2 and "password" in p.stderr, "cert import without a password source: exit 2", p.stderr)
    p = gwctl("cert", "import", "x", os.path.join(tmp, "missing.p12"), "--password-file", "/dev/null")
    ok(p.returncode == 1 and "missing.p12" in p.stderr and one_line_error(p),
       "cert import of a missing file: exit 1 naming it", p.stderr)

# No bus at all.
p = gwctl("status")
ok(p.returncode == 3 and one_line_error(p) and "cannot connect" in p.stderr and "/nonexistent" in p.stderr,
   "no bus: exit 3 with a clear message", f"rc={p.returncode}\n{p.stderr}")
p = gwctl("--json", "cert", "list")
ok(p.returncode == 3 and one_line_error(p), "no bus with --json: exit 3", p.stderr)
p = gwctl("--bus-address", NO_BUS, "queue", "list", env={"DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/also/missing"})
ok(p.returncode == 3 and "/nonexistent" in p.stderr, "--bus-address overrides DBUS_SYSTEM_BUS_ADDRESS", p.stderr)

# A bus without tlsgwd on it.
dbus_daemon = shutil.which("dbus-daemon")
if not dbus_daemon:
    skip("bus without tlsgwd: exit 3", "dbus-daemon is not installed")
else:
    with tempfile.TemporaryDirectory() as tmp:
        sock = os.path.join(tmp, "bus")
        conf = os.path.join(tmp, "bus.conf")
        with open(conf, "w") as f:
            f.write(f"""<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={sock}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
""")
        d = subprocess.Popen([dbus_daemon, "--config-file", conf, "--nofork", "--nopidfile"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(100):
                if os.path.exists(sock):
                    break
                time.sleep(0.05)
            p = gwctl("status", env={"DBUS_SYSTEM_BUS_ADDRESS": "unix:path=" + sock})
            ok(p.returncode == 3 and one_line_error(p) and "not running" in p.stderr,
               "bus without tlsgwd: exit 3, 'not running'", f"rc={p.returncode}\n{p.stderr}")
            p = gwctl("listener", "list", env={"DBUS_SYSTEM_BUS_ADDRESS": "unix:path=" + sock})
            ok(p.returncode == 3 and "not running" in p.stderr, "listing without tlsgwd: exit 3", p.stderr)
        finally:
            d.terminate()
            d.wait(timeout=10)

# Manual pages.
man = shutil.which("man")
if not MAN_PAGES:
    skip("manual pages render", "scdoc was not found at build time")
elif not man:
    skip("manual pages render", "man is not installed")
else:
    for page in MAN_PAGES:
        e = dict(os.environ, MANWIDTH="80", LC_ALL="C.UTF-8")
        p = subprocess.run([man, "--warnings", "-l", page], env=e, capture_output=True, text=True, timeout=60)
        name = os.path.basename(page)
        ok(p.returncode == 0 and p.stderr == "" and "NAME" in p.stdout and len(p.stdout) > 500,
           f"man -l {name} renders without warnings", p.stderr)
    names = {os.path.basename(p) for p in MAN_PAGES}
    ok(names == {"gwctl.8", "tlsgwd.8", "tlsgw.conf.5"}, "three manual pages built", names)

# Bash completion.
bash = shutil.which("bash")
if not COMPLETION or not bash:
    skip("bash completion", "bash or the completion file is missing")
else:
    p = subprocess.run([bash, "-n", COMPLETION], capture_output=True, text=True)
    ok(p.returncode == 0, "completion parses", p.stderr)
    helpers = "/usr/share/bash-completion/bash_completion"
    if not os.path.exists(helpers):
        skip("completion completes verbs and flags", "bash-completion is not installed")
    else:
        def complete(line):
            words = line.split(" ")
            script = (f"source {helpers}; source {COMPLETION}; "
                      f"COMP_WORDS=({' '.join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}; "
                      f"COMP_LINE={line!r}; COMP_POINT={len(line)}; _gwctl; printf '%s\\n' \"${{COMPREPLY[@]}}\"")
            e = dict(os.environ, PATH=os.path.dirname(os.path.abspath(GWCTL)) + ":" + os.environ["PATH"],
                     DBUS_SYSTEM_BUS_ADDRESS=NO_BUS)
            r = subprocess.run([bash, "-c", script], capture_output=True, text=True, env=e, timeout=30)
            return set(r.stdout.split())
        got = complete("gwctl ce")
        ok(got == {"cert"}, "completes 'ce' to cert", got)
        got = complete("gwctl cert ")
        ok({"create", "upload", "export", "check"} <= got, "completes cert sub-verbs", got)
        got = complete("gwctl listener add x --tl")
        ok({"--tls", "--tls-min-version"} <= got, "completes listener flags", got)
        got = complete("gwctl dest add d --tls ")
        ok("none" in got and "off" not in got, "completes outbound TLS modes", got)
        got = complete("gwctl --json cert ")
        ok("list" in got, "global options do not disturb completion", got)

print(f"1..{n}")
sys.exit(1 if failed else 0)
