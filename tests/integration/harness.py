# SPDX-License-Identifier: GPL-2.0-or-later
"""Integration test harness for tlsgwd (Python standard library only).

What it provides to the test_*.py programs:
  - a private mount namespace per test file (re-exec under unshare), so the
    private journald below and its sockets never touch the host's;
  - a private systemd-journald (volatile storage in a temporary directory)
    and journal()/wait_journal() readers over `journalctl -o json`;
  - Gateway: writes a libconfig file, starts the real tlsgwd either
    socket-activated (LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES, fds passed in an
    order different from the config) or self-binding, waits for READY=1 on a
    NOTIFY_SOCKET it reads, and offers reload/stop/kill9/restart;
  - free loopback ports and a raw SMTP client that sends exact bytes and
    parses (multi-line) replies;
  - a private system bus (dbus-daemon with the project's own policy file
    from units/) per test file, Gateway(bus=True) to put the daemon on it,
    and gwctl()/busctl() runners that reach it, as root or as "nobody";
  - TAP output: @case registry, "ok N - name", diagnostics as "# ...",
    "# SKIP reason", the plan at the end, exit status 1 on any failure.

What it does not do: it never changes the host's journald or system bus,
never binds port 25 and never needs network access beyond 127.0.0.1.
"""

import json
import os
import re
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import threading
import time
import traceback

SOURCE_ROOT = os.environ.get("TLSGW_SOURCE_ROOT",
                             os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
# meson test sets TLSGWD; by hand, the default build directory's daemon.
TLSGWD = os.environ.get("TLSGWD") or os.path.join(SOURCE_ROOT, "build", "gateway", "tlsgwd")
NS_MARK = "TLSGW_TEST_NAMESPACE"
JOURNALD = "/lib/systemd/systemd-journald"
# How long the daemon may take to report READY=1 (sanitizer builds start slowly).
READY_TIMEOUT = 15.0
# Default wait for a reply from any SMTP peer.
SMTP_TIMEOUT = 10.0
# First fd number of socket activation (sd_listen_fds(3): SD_LISTEN_FDS_START).
SD_LISTEN_FDS_START = 3


class Skip(Exception):
        """Raised inside a case: report it as '# SKIP reason'."""


class Failure(Exception):
        """Raised by check*(): the case fails with this text."""


# ---------------------------------------------------------------- checks --

def check(cond, what, *diag):
        if not cond:
                raise Failure("\n".join([what] + [str(d) for d in diag]))


def check_eq(got, want, what):
        if got != want:
                raise Failure(f"{what}\n  got:  {got!r}\n  want: {want!r}")


def check_reply(reply, code, pattern=None, what="reply"):
        """reply is (code, text) from Smtp; pattern a regex searched in text."""
        rc, text = reply
        if rc != code or (pattern is not None and not re.search(pattern, text)):
                raise Failure(f"{what}: got {rc} {text!r}, want {code}"
                              + (f" matching /{pattern}/" if pattern else ""))


def wait_until(pred, timeout, interval=0.05):
        """Polls pred() until it returns a true value; returns it or None."""
        deadline = time.monotonic() + timeout
        while True:
                v = pred()
                if v:
                        return v
                if time.monotonic() >= deadline:
                        return None
                time.sleep(interval)


# ------------------------------------------------------------- namespace --

def enter_namespace():
        """Re-executes this test file in a private mount namespace (root only)."""
        if os.environ.get(NS_MARK) == "1":
                return
        if os.geteuid() != 0:
                print("1..0 # SKIP integration tests need root (mount namespace, private journald)")
                sys.stdout.flush()
                sys.exit(0)
        if not shutil.which("unshare"):
                print("1..0 # SKIP unshare(1) not installed")
                sys.exit(0)
        env = dict(os.environ)
        env[NS_MARK] = "1"
        argv = ["unshare", "--mount", "--propagation", "private",
                sys.executable] + sys.argv
        try:
                r = subprocess.run(argv, env=env)
        except OSError as e:
                print(f"1..0 # SKIP cannot run unshare: {e}")
                sys.exit(0)
        sys.exit(r.returncode)


# ---------------------------------------------------------------- journal --

class Journal:
        """A private systemd-journald inside our mount namespace."""

        def __init__(self, workdir):
                self.dir = os.path.join(workdir, "journal")
                self.proc = None
                self.error = None

        def start(self):
                if not os.access(JOURNALD, os.X_OK):
                        self.error = f"{JOURNALD} not installed"
                        return False
                os.makedirs(self.dir, exist_ok=True)
                try:
                        subprocess.run(["mount", "-t", "tmpfs", "tlsgw-test", "/run/systemd"], check=True)
                        os.makedirs("/run/systemd/journald.conf.d", exist_ok=True)
                        # journald.conf(5): [Journal] section; volatile keeps it in /run/log/journal,
                        # RateLimitBurst=0 turns rate limiting off so no test line is dropped.
                        with open("/run/systemd/journald.conf.d/test.conf", "w") as f:
                                f.write("[Journal]\nStorage=volatile\nReadKMSG=no\nRateLimitBurst=0\n"
                                        "ForwardToSyslog=no\nForwardToWall=no\nForwardToConsole=no\n")
                        os.makedirs("/run/log/journal", exist_ok=True)
                        subprocess.run(["mount", "--bind", self.dir, "/run/log/journal"], check=True)
                except (OSError, subprocess.CalledProcessError) as e:
                        self.error = f"cannot prepare private journald: {e}"
                        return False
                env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID")}
                self.proc = subprocess.Popen([JOURNALD], env=env, stdin=subprocess.DEVNULL,
                                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                if not wait_until(lambda: os.path.exists("/run/systemd/journal/socket"), 10):
                        self.error = "systemd-journald did not create /run/systemd/journal/socket"
                        self.stop()
                        return False
                return True

        def stop(self):
                if self.proc and self.proc.poll() is None:
                        self.proc.terminate()
                        try:
                                self.proc.wait(5)
                        except subprocess.TimeoutExpired:
                                self.proc.kill()
                                self.proc.wait()
                self.proc = None

        @property
        def available(self):
                return self.proc is not None and self.proc.poll() is None

        def entries(self, **match):
                """All entries (dicts) whose fields equal every match value
                (a list value means any of them)."""
                if not self.available:
                        raise Skip(f"no private journald: {self.error}")
                # Make journald write out what it has before we read the files.
                subprocess.run(["journalctl", "--directory", "/run/log/journal", "--sync"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                r = subprocess.run(["journalctl", "--directory", "/run/log/journal", "-o", "json",
                                    "--no-pager", "--all"],
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
                out = []
                for line in r.stdout.decode("utf-8", "replace").splitlines():
                        try:
                                e = json.loads(line)
                        except ValueError:
                                continue
                        if isinstance(e.get("MESSAGE"), list):  # binary MESSAGE: byte list
                                e["MESSAGE"] = bytes(e["MESSAGE"]).decode("utf-8", "replace")
                        good = True
                        for k, v in match.items():
                                vals = v if isinstance(v, (list, tuple, set)) else [v]
                                if str(e.get(k)) not in [str(x) for x in vals]:
                                        good = False
                                        break
                        if good:
                                out.append(e)
                return out


JOURNAL = None


def journal(**match):
        return JOURNAL.entries(**match)


def _matcher(pred):
        if callable(pred):
                return pred
        rx = re.compile(pred)
        return lambda e: rx.search(str(e.get("MESSAGE", "")))


def wait_journal(pred, timeout=10.0, **match):
        """Waits for an entry matching pred (regex on MESSAGE or callable on
        the entry dict); returns it, or raises Failure."""
        m = _matcher(pred)
        found = wait_until(lambda: [e for e in journal(**match) if m(e)], timeout, 0.2)
        if not found:
                msgs = [e.get("MESSAGE") for e in journal(**match)][-25:]
                raise Failure(f"no journal entry matching {pred!r} within {timeout}s; last entries:\n  "
                              + "\n  ".join(str(x) for x in msgs))
        return found[0]


# ------------------------------------------------------------------ ports --

def free_port():
        """A currently free TCP port on 127.0.0.1 (bound and released)."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", 0))
                return s.getsockname()[1]


def port_is_closed(port, timeout=2.0):
        try:
                with socket.create_connection(("127.0.0.1", port), timeout=timeout):
                        return False
        except ConnectionRefusedError:
                return True
        except OSError:
                return True


# ---------------------------------------------------------------- config --

class Raw(str):
        """A literal libconfig token (not quoted)."""


def _lc_value(v, indent):
        pad = " " * indent
        if isinstance(v, bool):
                return "true" if v else "false"
        if isinstance(v, Raw):
                return str(v)
        if isinstance(v, int):
                return str(v)
        if isinstance(v, str):
                return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, dict):
                inner = "".join(f"{pad}        {k} = {_lc_value(x, indent + 8)};\n" for k, x in v.items())
                return "{\n" + inner + pad + "}"
        if isinstance(v, (list, tuple)):
                if v and isinstance(v[0], dict):
                        items = [(pad + "        " + _lc_value(x, indent + 8)) for x in v]
                        return "(\n" + ",\n".join(items) + "\n" + pad + ")"
                return "[ " + ", ".join(_lc_value(x, indent) for x in v) + " ]"
        raise TypeError(f"cannot write {v!r} as libconfig")


def libconfig(settings):
        """Writes a dict as libconfig text: dict -> group, list of dicts ->
        list, list of scalars -> array."""
        return "".join(f"{k} = {_lc_value(v, 0)};\n" for k, v in settings.items())


POLICIES = [
        {"name": "ACCEPTED", "action": "accept"},
        {"name": "RELAYED", "action": "relay"},
        {"name": "BLOCKED", "action": "reject"},
        {"name": "REFUSED", "action": "tcp-refuse"},
]


def base_config(state_dir, port, hostname="gw.test", relay=True, routes=None, listener=None,
                limits=None, queue=None, extra=None, default_policy="ACCEPTED",
                accepted_domains=("localhost",)):
        """The usual test configuration as a dict: one listener "inbound" on
        127.0.0.1:port, loopback in sender group RELAYLIST (relay policy when
        relay=True, else accept-only), localhost delivered to a maildir under
        the state directory, short queue timers."""
        lim = {"max_line": 1000, "max_recipients": 100, "max_message_size": "10M",
               "max_errors": 10, "idle_timeout": "60s", "data_timeout": "60s"}
        lim.update(limits or {})
        lst = {"name": "inbound", "address": "127.0.0.1", "port": port, "hostname": hostname,
               "accepted_domains": list(accepted_domains), "default_policy": default_policy,
               "tls": "off", "max_connections": 100, "max_connections_per_ip": 50,
               "limits": lim}
        lst.update(listener or {})
        q = {"retry_min": "1s", "retry_max": "2s", "lifetime": "1h", "connect_timeout": "5s",
             "command_timeout": "30s", "data_timeout": "30s", "max_connections": 20}
        q.update(queue or {})
        r = [{"domain": "localhost", "maildir": os.path.join(state_dir, "mail")}]
        r += list(routes or [])
        c = {
                "hostname": hostname,
                "state_directory": state_dir,
                "shutdown_timeout": "10s",
                "listeners": [lst],
                "policies": POLICIES,
                "sender_groups": [{"name": "RELAYLIST", "policy": "RELAYED" if relay else "ACCEPTED",
                                   "sources": ["127.0.0.0/8", "::1"]}],
                "routes": r,
                "destinations": [{"domain": "default", "max_connections": 5,
                                  "max_messages_per_connection": 50,
                                  "max_recipients_per_message": 100, "tls": "none"}],
                "queue": q,
        }
        c.update(extra or {})
        return c


def route(domain, *ports):
        return {"domain": domain, "hosts": [f"127.0.0.1:{p}" for p in ports]}


# --------------------------------------------------------------- gateway --

class Notify:
        """The NOTIFY_SOCKET end: collects every datagram's assignments."""

        def __init__(self, path):
                self.path = path
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self.sock.bind(path)
                self.sock.settimeout(0.2)
                self.messages = []      # list of (monotonic time, dict)
                self.lock = threading.Lock()
                self.cond = threading.Condition(self.lock)
                self.running = True
                self.thread = threading.Thread(target=self._run, daemon=True)
                self.thread.start()

        def _run(self):
                while self.running:
                        try:
                                data = self.sock.recv(65536)
                        except socket.timeout:
                                continue
                        except OSError:
                                break
                        d = {}
                        for line in data.decode("utf-8", "replace").split("\n"):
                                if "=" in line:
                                        k, v = line.split("=", 1)
                                        d[k] = v
                        with self.cond:
                                self.messages.append((time.monotonic(), d))
                                self.cond.notify_all()

        def seen(self, key, value=None, since=0):
                with self.lock:
                        return [d for (_, d) in self.messages[since:]
                                if key in d and (value is None or d[key] == value)]

        def count(self):
                with self.lock:
                        return len(self.messages)

        def wait(self, key, value=None, timeout=READY_TIMEOUT, since=0, proc=None):
                deadline = time.monotonic() + timeout
                while True:
                        s = self.seen(key, value, since)
                        if s:
                                return s[-1]
                        if proc is not None and proc.poll() is not None:
                                return None
                        if time.monotonic() >= deadline:
                                return None
                        with self.cond:
                                self.cond.wait(0.1)

        def close(self):
                self.running = False
                self.sock.close()
                self.thread.join(2)


class GatewayError(Failure):
        pass


class Gateway:
        """One tlsgwd under test.

        config: a dict (written with libconfig()), a callable(gateway)
        returning one (to use gw.state_dir and gw.port), or a string in which
        $state, $port_<listener> and $hostname are substituted; False runs
        tlsgwd without --config (built-in defaults).
        activation: None = the daemon binds its listeners itself; or a list
        of listener names to pass as sockets (in that order, which tests make
        differ from the config order); listener ports come from `ports`.
        bus: put the daemon on the private system bus of this test file and
        wait, after READY=1, until it owns org.tlsgw.Gateway1. Without it
        the daemon gets a bus address where nothing listens, so no test
        ever reaches the host's system bus.
        """

        def __init__(self, ctx, config=None, ports=None, activation=None, log_level="debug",
                     state_dir=None, wait_ready=True, bus=False):
                self.ctx = ctx
                self.bus = private_bus() if bus else None
                self.dir = tempfile.mkdtemp(prefix="gw-", dir=ctx.workdir)
                self.state_dir = state_dir or os.path.join(self.dir, "state")
                os.makedirs(self.state_dir, exist_ok=True)
                self.ports = dict(ports or {})
                if "inbound" not in self.ports:
                        self.ports["inbound"] = free_port()
                self.port = self.ports["inbound"]
                self.config_path = os.path.join(self.dir, "tlsgw.conf")
                self.activation = activation
                self.log_level = log_level
                self.sockets = {}
                self.proc = None
                self.pids = []
                self.expected_exit = True
                self.stderr_path = os.path.join(self.dir, "stderr")
                self.stderr_file = None
                self.notify = Notify(os.path.join(self.dir, "notify"))
                self.notify_mark = 0
                self.use_config = config is not False
                if self.use_config:
                        self.write_config(config if config is not None else base_config(self.state_dir, self.port))
                ctx.cleanup(self.cleanup)
                if activation:
                        self._bind(activation)
                if wait_ready is not None:
                        self.start(wait_ready=wait_ready)

        # -- config --
        def write_config(self, config):
                if callable(config):
                        config = config(self)
                if isinstance(config, dict):
                        text = libconfig(config)
                else:
                        subst = {"state": self.state_dir, "hostname": "gw.test"}
                        subst.update({f"port_{k}": str(v) for k, v in self.ports.items()})
                        text = string.Template(config).substitute(subst)
                with open(self.config_path, "w") as f:
                        f.write(text)
                self.config_text = text

        def _bind(self, names):
                for name in names:
                        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                        s.bind(("127.0.0.1", self.ports[name]))
                        s.listen(64)
                        self.sockets[name] = s

        # -- process --
        def start(self, wait_ready=True, args=None):
                if self.proc is not None and self.proc.poll() is None:
                        raise GatewayError("tlsgwd already running")
                if not TLSGWD or not os.access(TLSGWD, os.X_OK):
                        raise Skip(f"tlsgwd not built (TLSGWD={TLSGWD!r})")
                env = {k: v for k, v in os.environ.items()
                       if k not in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET")}
                env["NOTIFY_SOCKET"] = self.notify.path
                env["DBUS_SYSTEM_BUS_ADDRESS"] = (self.bus.address if self.bus else
                                                  "unix:path=" + os.path.join(self.dir, "no-system-bus"))
                env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
                env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
                argv = [TLSGWD] + (["--config", self.config_path] if self.use_config else [])
                argv += ["--log-level", self.log_level] + list(args or [])
                pass_fds = []
                if self.activation:
                        # The fds must be 3..N in the daemon and LISTEN_PID its
                        # own pid: exec through bash (dash takes only fds 0-9), which knows its pid ($$)
                        # and keeps it across exec; the redirections move our
                        # high-numbered copies into place.
                        redirs = []
                        for i, name in enumerate(self.activation):
                                hi = fcntl_dupfd(self.sockets[name].fileno(), 100)
                                pass_fds.append(hi)
                                redirs.append(f"{SD_LISTEN_FDS_START + i}<&{hi} {hi}<&-")
                        env["LISTEN_FDS"] = str(len(self.activation))
                        env["LISTEN_FDNAMES"] = ":".join(self.activation)
                        script = 'LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@" ' + " ".join(redirs)
                        argv = ["/bin/bash", "-c", script] + argv
                self.stderr_file = open(self.stderr_path, "ab")
                self.stderr_offset = self.stderr_file.tell()
                self.notify_mark = self.notify.count()
                try:
                        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                                     stdout=self.stderr_file, stderr=self.stderr_file,
                                                     pass_fds=pass_fds, cwd=self.dir)
                finally:
                        for fd in pass_fds:
                                os.close(fd)
                self.pids.append(self.proc.pid)
                self.expected_exit = False
                if wait_ready:
                        self.wait_ready()
                return self.proc

        def wait_ready(self, timeout=READY_TIMEOUT):
                r = self.notify.wait("READY", "1", timeout, since=self.notify_mark, proc=self.proc)
                if r is None:
                        alive = self.proc.poll() is None
                        if not alive:
                                self.expected_exit = True   # reported here, not again at cleanup
                        raise GatewayError(f"tlsgwd did not send READY=1 within {timeout}s "
                                           f"({'still running' if alive else f'exited {self.proc.returncode}'})"
                                           f"\nstderr:\n{self.stderr_tail()}\njournal:\n{self.journal_tail()}")
                if self.bus:
                        self.wait_bus_name(timeout)

        def wait_bus_name(self, timeout=READY_TIMEOUT):
                """Waits until this process (not an earlier one) owns the bus name."""
                if not wait_until(lambda: self.bus.name_owner_pid(BUS_NAME) == self.proc.pid, timeout, 0.1):
                        raise GatewayError(f"tlsgwd (pid {self.proc.pid}) did not take {BUS_NAME} on the "
                                           f"private bus within {timeout}s (owner pid: "
                                           f"{self.bus.name_owner_pid(BUS_NAME)})\nstderr:\n{self.stderr_tail()}"
                                           f"\nbus log:\n{self.bus.log_tail()}")

        def running(self):
                return self.proc is not None and self.proc.poll() is None

        def reload(self, expect_ready=True, timeout=READY_TIMEOUT):
                """SIGHUP; waits for RELOADING=1 and then READY=1 after it."""
                mark = self.notify.count()
                self.proc.send_signal(signal.SIGHUP)
                if not expect_ready:
                        return mark
                r = self.notify.wait("RELOADING", "1", timeout, since=mark, proc=self.proc)
                if r is None:
                        raise GatewayError(f"no RELOADING=1 after SIGHUP\nstderr:\n{self.stderr_tail()}")
                with self.notify.lock:
                        msgs = self.notify.messages[mark:]
                idx = next(i for i, (_, d) in enumerate(msgs) if d.get("RELOADING") == "1")
                r = self.notify.wait("READY", "1", timeout, since=mark + idx + 1, proc=self.proc)
                if r is None:
                        raise GatewayError(f"no READY=1 after RELOADING=1\nstderr:\n{self.stderr_tail()}")
                return mark

        def stop(self, timeout=30):
                """SIGTERM and wait; returns the exit code."""
                self.expected_exit = True
                if not self.proc:
                        return None
                if self.proc.poll() is None:
                        self.proc.send_signal(signal.SIGTERM)
                try:
                        return self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                        self.proc.kill()
                        self.proc.wait()
                        raise GatewayError(f"tlsgwd did not exit within {timeout}s of SIGTERM")

        def kill9(self):
                self.expected_exit = True
                if self.proc and self.proc.poll() is None:
                        self.proc.kill()
                        self.proc.wait()

        def restart(self, wait_ready=True):
                """Starts again on the same state directory and config."""
                if self.running():
                        self.stop()
                return self.start(wait_ready=wait_ready)

        def stderr_text(self):
                try:
                        with open(self.stderr_path, "rb") as f:
                                return f.read().decode("utf-8", "replace")
                except OSError:
                        return ""

        def stderr_tail(self, n=40):
                return "\n".join(self.stderr_text().splitlines()[-n:])

        def journal_tail(self, n=20):
                try:
                        return "\n".join(self.messages()[-n:])
                except Skip:
                        return "(no journal)"

        def journal(self, **match):
                """Journal entries written by this gateway's processes."""
                return journal(_PID=[str(p) for p in self.pids], **match)

        def wait_journal(self, pred, timeout=10.0, **match):
                return wait_journal(pred, timeout, _PID=[str(p) for p in self.pids], **match)

        def messages(self, **match):
                return [str(e.get("MESSAGE", "")) for e in self.journal(**match)]

        def maildir(self, sub="new"):
                """Files delivered to the localhost maildir: list of bytes."""
                d = os.path.join(self.state_dir, "mail", sub)
                if not os.path.isdir(d):
                        return []
                out = []
                for n in sorted(os.listdir(d)):
                        with open(os.path.join(d, n), "rb") as f:
                                out.append(f.read())
                return out

        def smtp(self, listener="inbound", **kw):
                return Smtp(self.ports[listener], **kw)

        def cleanup(self):
                died = None
                if self.proc is not None:
                        if self.proc.poll() is not None and not self.expected_exit:
                                died = self.proc.returncode
                        if self.proc.poll() is None:
                                self.proc.send_signal(signal.SIGTERM)
                                try:
                                        self.proc.wait(10)
                                except subprocess.TimeoutExpired:
                                        self.proc.kill()
                                        self.proc.wait()
                for s in self.sockets.values():
                        s.close()
                self.notify.close()
                if self.stderr_file:
                        self.stderr_file.close()
                text = self.stderr_text()
                if died is not None:
                        raise Failure(f"tlsgwd exited unexpectedly with {died}\nstderr:\n{self.stderr_tail()}")
                if re.search(r"ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:", text):
                        raise Failure("sanitizer report in tlsgwd stderr:\n" + self.stderr_tail(60))


def fcntl_dupfd(fd, minfd):
        import fcntl
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, minfd)


# ------------------------------------------------------------ system bus --

BUS_NAME = "org.tlsgw.Gateway1"
BUS_PATH = "/org/tlsgw/Gateway1"
# The policy file that the project installs into /usr/share/dbus-1/system.d/;
# the private bus includes a copy of exactly this file.
BUS_POLICY = os.path.join(SOURCE_ROOT, "units", "org.tlsgw.Gateway1.conf")
DBUS_DAEMON = "dbus-daemon"
# How long dbus-daemon may take to print its address.
BUS_START_TIMEOUT = 10.0
# meson test sets GWCTL; by hand, the default build directory's gwctl.
GWCTL = os.environ.get("GWCTL") or os.path.join(SOURCE_ROOT, "build", "ctl", "gwctl")
# Longest a single gwctl/busctl run may take (a commit rebuilds TLS contexts;
# sanitizer builds are slow).
CTL_TIMEOUT = 60.0
# The unprivileged caller of the deny cases, as setpriv(1) names it.
NOBODY = ("nobody", "nogroup")
_SANITIZER_RX = re.compile(r"ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:")

_BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <auth>EXTERNAL</auth>
  <listen>unix:path={socket}</listen>
  <!-- The default policy of Debian's system.conf: everyone may connect, but
       owning names and calling methods must be opened by a service's own
       policy file; so what the tests exercise is the project's file. -->
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"
          send_member="UpdateActivationEnvironment"/>
  </policy>
  <policy user="root">
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Monitoring"/>
  </policy>
  <includedir>{policydir}</includedir>
</busconfig>
"""


class PrivateBus:
        """A dbus-daemon of type system on a socket in the work directory,
        with the project's policy file and nothing else of the host's."""

        def __init__(self, workdir):
                self.dir = os.path.join(workdir, "bus")
                self.policydir = os.path.join(self.dir, "system.d")
                self.socket = os.path.join(self.dir, "system_bus_socket")
                self.conf = os.path.join(self.dir, "system.conf")
                self.log = os.path.join(self.dir, "dbus-daemon.log")
                self.address = None
                self.proc = None

        def start(self):
                exe = shutil.which(DBUS_DAEMON)
                if not exe:
                        raise Skip("dbus-daemon not installed (package dbus)")
                if not os.path.exists(BUS_POLICY):
                        raise Skip(f"{BUS_POLICY} does not exist yet")
                os.makedirs(self.policydir, exist_ok=True)
                # "nobody" must reach the socket for the deny cases.
                os.chmod(self.dir, 0o755)
                os.chmod(self.policydir, 0o755)
                shutil.copyfile(BUS_POLICY, os.path.join(self.policydir, os.path.basename(BUS_POLICY)))
                with open(self.conf, "w") as f:
                        f.write(_BUS_CONFIG.format(socket=self.socket, policydir=self.policydir))
                rfd, wfd = os.pipe()
                try:
                        with open(self.log, "ab") as logf:
                                self.proc = subprocess.Popen([exe, f"--config-file={self.conf}", "--nofork",
                                                              "--nopidfile", f"--print-address={wfd}"],
                                                             stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                                             pass_fds=[wfd])
                finally:
                        os.close(wfd)
                try:
                        with os.fdopen(rfd, "rb") as r:
                                import select
                                ready, _, _ = select.select([r], [], [], BUS_START_TIMEOUT)
                                line = r.readline().decode().strip() if ready else ""
                except OSError:
                        line = ""
                if not line:
                        self.stop()
                        raise Failure(f"dbus-daemon printed no address within {BUS_START_TIMEOUT}s:\n"
                                      + self.log_tail())
                self.address = line
                os.chmod(self.socket, 0o777)
                return self

        def running(self):
                return self.proc is not None and self.proc.poll() is None

        def stop(self):
                if self.proc is not None and self.proc.poll() is None:
                        self.proc.terminate()
                        try:
                                self.proc.wait(5)
                        except subprocess.TimeoutExpired:
                                self.proc.kill()
                                self.proc.wait()
                self.proc = None

        def log_tail(self, n=20):
                try:
                        with open(self.log, "rb") as f:
                                return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-n:])
                except OSError:
                        return "(no log)"

        def env(self, extra=None):
                env = {k: v for k, v in os.environ.items()
                       if k not in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES",
                                    "DBUS_SESSION_BUS_ADDRESS")}
                env["DBUS_SYSTEM_BUS_ADDRESS"] = self.address
                # gwctl's tables must not depend on the terminal or locale of the runner.
                env["LC_ALL"] = "C.UTF-8"
                env["COLUMNS"] = "400"
                env["SYSTEMD_COLORS"] = "0"
                env.update(extra or {})
                return env

        def name_owner_pid(self, name):
                """PID of the owner of a well-known name, or None."""
                r = subprocess.run(["busctl", "--system", "--json=short", "call", "org.freedesktop.DBus",
                                    "/org/freedesktop/DBus", "org.freedesktop.DBus",
                                    "GetConnectionUnixProcessID", "s", name],
                                   env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=10)
                if r.returncode != 0:
                        return None
                try:
                        return int(json.loads(r.stdout)["data"][0])
                except (ValueError, KeyError, IndexError, TypeError):
                        return None


_BUS = None
_WORKDIR = None


def private_bus():
        """The private system bus of this test file, started on first use."""
        global _BUS
        if _BUS is None or not _BUS.running():
                if _WORKDIR is None:
                        raise Failure("private_bus() outside of run()")
                _BUS = PrivateBus(_WORKDIR).start()
        return _BUS


class CtlResult:
        """What one gwctl/busctl run did."""

        def __init__(self, argv, rc, out, err):
                self.argv = argv
                self.rc = rc
                self.out = out
                self.err = err

        def __repr__(self):
                return (f"$ {' '.join(self.argv)}\n  exit {self.rc}\n  stdout: {self.out[-1500:]!r}"
                        f"\n  stderr: {self.err[-1500:]!r}")

        @property
        def text(self):
                return self.out + self.err

        def json(self):
                try:
                        return json.loads(self.out)
                except ValueError as e:
                        raise Failure(f"output is not JSON ({e}):\n{self!r}")

        def ok(self, what=None):
                """Raises Failure unless the run exited 0."""
                if self.rc != 0:
                        raise Failure(f"{what or 'command'} failed:\n{self!r}")
                return self

        def fails(self, pattern=None, what=None, rc=None):
                """Raises Failure unless the run exited non-zero (rc: exactly
                that) with a message on stderr matching pattern (regex,
                case-insensitive)."""
                if self.rc == 0 or (rc is not None and self.rc != rc):
                        raise Failure(f"{what or 'command'} should have failed"
                                      + (f" with exit {rc}" if rc is not None else "") + f":\n{self!r}")
                if not self.err.strip():
                        raise Failure(f"{what or 'command'} failed without a message on stderr:\n{self!r}")
                if pattern is not None and not re.search(pattern, self.err, re.I):
                        raise Failure(f"{what or 'command'}: message does not match /{pattern}/:\n{self!r}")
                return self


_NOBODY_GWCTL = None


def gwctl_path(user=None):
        """gwctl, SKIP when not built. For another user, a copy in a
        directory that user can reach when the build tree is not."""
        global _NOBODY_GWCTL
        if not GWCTL or not os.access(GWCTL, os.X_OK):
                raise Skip(f"gwctl not built (GWCTL={GWCTL!r})")
        if user is None:
                return GWCTL
        if _NOBODY_GWCTL is None:
                r = subprocess.run(_as_user(user) + ["test", "-x", GWCTL], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
                if r.returncode == 0:
                        _NOBODY_GWCTL = GWCTL
                else:
                        d = os.path.join(_WORKDIR, "bin")
                        os.makedirs(d, exist_ok=True)
                        os.chmod(d, 0o755)
                        dst = os.path.join(d, "gwctl")
                        shutil.copyfile(GWCTL, dst)
                        os.chmod(dst, 0o755)
                        _NOBODY_GWCTL = dst
        return _NOBODY_GWCTL


def _as_user(user):
        """setpriv(1) prefix for "nobody" or "NAME", optionally with
        supplementary groups as "nobody:GROUP,GROUP"."""
        if user in (None, "root"):
                return []
        name, _, groups = user.partition(":")
        u, g = NOBODY if name == "nobody" else (name, name)
        return ["setpriv", f"--reuid={u}", f"--regid={g}"] + ([f"--groups={groups}"] if groups else ["--clear-groups"])


def _run_ctl(argv, user, input, timeout, env):
        cmd = _as_user(user) + argv
        data = input.encode() if isinstance(input, str) else input
        try:
                r = subprocess.run(cmd, input=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   env=env, timeout=timeout, cwd=_WORKDIR)
        except subprocess.TimeoutExpired:
                raise Failure(f"$ {' '.join(cmd)} did not finish within {timeout}s")
        res = CtlResult(cmd, r.returncode, r.stdout.decode("utf-8", "replace"),
                        r.stderr.decode("utf-8", "replace"))
        if _SANITIZER_RX.search(res.err):
                raise Failure(f"sanitizer report:\n{res!r}")
        return res


def gwctl(*args, user=None, input=None, timeout=CTL_TIMEOUT, env=None):
        """Runs gwctl with args against the private bus; user "nobody" runs
        it unprivileged. Returns a CtlResult (never raises on exit codes)."""
        exe = gwctl_path(user)
        return _run_ctl([exe] + [str(a) for a in args], user, input, timeout, private_bus().env(env))


def busctl(*args, user=None, timeout=CTL_TIMEOUT):
        """busctl --system on the private bus, e.g. busctl("call", BUS_NAME,
        BUS_PATH, iface, method, sig, *values)."""
        exe = need("busctl")
        return _run_ctl([exe, "--system"] + [str(a) for a in args], user, None, timeout, private_bus().env())


def bus_call(iface, method, sig="", *values, path=BUS_PATH, user=None):
        """A method call on the daemon; returns (CtlResult, data list or None)."""
        argv = ["--json=short", "call", BUS_NAME, path, iface, method]
        if sig:
                argv += [sig] + [str(v) for v in values]
        r = busctl(*argv, user=user)
        data = None
        if r.rc == 0 and r.out.strip():
                data = r.json().get("data")
        return (r, data)


def bus_property(iface, prop, path=BUS_PATH, user=None):
        r = busctl("--json=short", "get-property", BUS_NAME, path, iface, prop, user=user)
        r.ok(f"get-property {iface}.{prop}")
        return r.json().get("data")


def file_digests(*roots):
        """{path: sha256} of every file under the roots (a file root is
        itself); to prove that a refused change changed nothing."""
        import hashlib
        out = {}
        for root in roots:
                if os.path.isfile(root):
                        paths = [root]
                else:
                        paths = []
                        for d, _, files in os.walk(root):
                                paths += [os.path.join(d, f) for f in files]
                for path in paths:
                        try:
                                with open(path, "rb") as f:
                                        out[path] = hashlib.sha256(f.read()).hexdigest()
                        except OSError:
                                out[path] = None
        return out


def check_unchanged(before, after, what):
        if before != after:
                changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
                raise Failure(f"{what} changed files:\n  " + "\n  ".join(changed))


# ----------------------------------------------------------- ctl helpers --

def ctl_gateway(ctx, gateway_args=None, **config):
        """A gateway on base_config(**config) on the private bus, ready for gwctl."""
        ga = dict(gateway_args or {})
        ga["bus"] = True
        return ctx.gw(gateway_args=ga, **config)


def public_dir():
        """A directory every user may read and write (files for the
        unprivileged gwctl runs: password files, outputs)."""
        d = os.path.join(_WORKDIR, "pub")
        if not os.path.isdir(d):
                os.makedirs(d, exist_ok=True)
                os.chmod(d, 0o1777)
        return d


def public_file(name, data):
        """Writes data (str or bytes) to public_dir()/name, mode 0644; returns the path."""
        path = os.path.join(public_dir(), name)
        with open(path, "wb") as f:
                f.write(data.encode() if isinstance(data, str) else data)
        os.chmod(path, 0o644)
        return path


def gateway_files(g):
        """Digests of everything a refused change must leave alone: the
        certificate store, the configuration file and the history."""
        return file_digests(os.path.join(g.state_dir, "certs"), g.config_path,
                            os.path.join(g.state_dir, "history"))


def openssl(*args, input=None, check_rc=True):
        """openssl(1); returns (rc, stdout+stderr text)."""
        exe = need("openssl")
        data = input.encode() if isinstance(input, str) else input
        r = subprocess.run([exe] + [str(a) for a in args], input=data, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=60)
        text = r.stdout.decode("utf-8", "replace")
        if check_rc and r.returncode != 0:
                raise Failure(f"openssl {' '.join(str(a) for a in args)} failed ({r.returncode}):\n{text[-2000:]}")
        return (r.returncode, text)


def cert_text(path_or_pem):
        """openssl x509 -text of a file or PEM text (the first certificate)."""
        if os.path.exists(str(path_or_pem)):
                return openssl("x509", "-in", path_or_pem, "-noout", "-text", "-subject", "-issuer")[1]
        return openssl("x509", "-noout", "-text", "-subject", "-issuer", input=path_or_pem)[1]


def pubkey_of(path, kind="x509"):
        """The public key (PEM) of a certificate ("x509"), CSR ("req") or private key ("pkey")."""
        if kind == "x509":
                return openssl("x509", "-in", path, "-noout", "-pubkey")[1]
        if kind == "req":
                return openssl("req", "-in", path, "-noout", "-pubkey")[1]
        return openssl("pkey", "-in", path, "-pubout")[1]


# Extensions a CA puts on a server certificate it signs (the test CA of
# make-test-pki signs CSRs with these).
_SIGN_EXT = """[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = {san}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[intermediate]
basicConstraints = critical,CA:TRUE,pathlen:0
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""


def ca_sign(csr, out, ca_cert, ca_key, san="DNS:mx.test", days=365):
        """Signs a CSR as a CA would (openssl x509 -req); returns out."""
        ext = os.path.join(_WORKDIR, f"sign-{time.time_ns()}.cnf")
        with open(ext, "w") as f:
                f.write(_SIGN_EXT.format(san=san))
        openssl("x509", "-req", "-in", csr, "-out", out, "-days", days, "-sha256", "-CA", ca_cert,
                "-CAkey", ca_key, "-set_serial", "0x" + os.urandom(16).hex(), "-extfile", ext,
                "-extensions", "server")
        return out


def ca_sign_dated(csr, out, ca_cert, ca_key, start, end, section="server", san="DNS:mx.test"):
        """Signs with explicit dates (YYYYMMDDhhmmssZ), through openssl ca
        and a throwaway database: x509 -req cannot date in the past."""
        d = tempfile.mkdtemp(prefix="ca-", dir=_WORKDIR)
        open(os.path.join(d, "index.txt"), "w").close()
        with open(os.path.join(d, "serial"), "w") as f:
                f.write(os.urandom(16).hex() + "\n")
        with open(os.path.join(d, "ca.cnf"), "w") as f:
                f.write(f"[ca]\ndefault_ca = testca\n[testca]\ndatabase = {d}/index.txt\n"
                        f"new_certs_dir = {d}\nserial = {d}/serial\ncertificate = {ca_cert}\n"
                        f"private_key = {ca_key}\ndefault_md = sha256\npolicy = policy_any\n"
                        f"unique_subject = no\n[policy_any]\ncommonName = supplied\n")
        with open(os.path.join(d, "ext.cnf"), "w") as f:
                f.write(_SIGN_EXT.format(san=san))
        openssl("ca", "-batch", "-notext", "-config", os.path.join(d, "ca.cnf"), "-in", csr, "-out", out,
                "-startdate", start, "-enddate", end, "-extfile", os.path.join(d, "ext.cnf"),
                "-extensions", section)
        return out


def make_csr(key, subject, out):
        cnf = os.path.join(_WORKDIR, "csr.cnf")
        with open(cnf, "w") as f:
                f.write("[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = unused\n")
        openssl("req", "-new", "-config", cnf, "-key", key, "-subj", subject, "-out", out)
        return out


def pending_text():
        """(pending, owner, text) of the daemon's staged change set, or None
        when the call fails."""
        r, data = bus_call("org.tlsgw.Gateway1.Manager", "GetPending")
        return tuple(data) if r.rc == 0 and data else None


def ctl_refused(g, pattern, *args, what=None, user=None, input=None):
        """Runs gwctl args, which must fail with a message matching pattern
        and change nothing: store, config file, history, pending set."""
        before = (gateway_files(g), pending_text())
        r = gwctl(*args, user=user, input=input)
        r.fails(pattern, what or "gwctl " + " ".join(str(a) for a in args))
        after = (gateway_files(g), pending_text())
        check_unchanged(before[0], after[0], f"refused 'gwctl {' '.join(str(a) for a in args)}'")
        check_eq(after[1], before[1], f"pending set after refused 'gwctl {' '.join(str(a) for a in args)}'")
        return r


def json_rows(res, what="listing"):
        """The rows of a gwctl --json listing: {"<name>": [ {...}, ... ]}."""
        j = res.json()
        if isinstance(j, list):
                return j
        if isinstance(j, dict):
                lists = [v for v in j.values() if isinstance(v, list)]
                if len(lists) == 1:
                        return lists[0]
        raise Failure(f"{what}: JSON is not {{name: [rows]}}:\n{res!r}")


def json_record(res, what="record"):
        """One object of gwctl --json show/status (a dict, or a one-row listing)."""
        j = res.json()
        if isinstance(j, dict):
                lists = [v for v in j.values() if isinstance(v, list)]
                if len(j) == 1 and len(lists) == 1 and len(lists[0]) == 1 and isinstance(lists[0][0], dict):
                        return lists[0][0]
                if len(j) == 1 and isinstance(list(j.values())[0], dict):
                        return list(j.values())[0]
                return j
        raise Failure(f"{what}: JSON is not an object:\n{res!r}")


def field(rec, name, default=None):
        """A field of a gwctl JSON row/record matched without regard to case
        and separators ("next-attempt", "NextAttempt", "next_attempt")."""
        want = re.sub(r"[^a-z0-9]", "", name.lower())
        for k, v in rec.items():
                if re.sub(r"[^a-z0-9]", "", str(k).lower()) == want:
                        return v
        return default


def truthy(v):
        """gwctl booleans: JSON true/false, or "yes"/"no" in tables."""
        return v is True or str(v).lower() in ("yes", "true", "1", "on")


def row_by(rows, key, value):
        for r in rows:
                if str(field(r, key)) == str(value):
                        return r
        return None


# ------------------------------------------------------------------ smtp --

class Smtp:
        """Raw SMTP client: exact bytes out, parsed replies in."""

        def __init__(self, port, host="127.0.0.1", timeout=SMTP_TIMEOUT, greeting=True):
                self.sock = socket.create_connection((host, port), timeout=timeout)
                self.sock.settimeout(timeout)
                self.buf = b""
                self.greeting = self.reply() if greeting else None

        def send(self, data):
                if isinstance(data, str):
                        data = data.encode()
                self.sock.sendall(data)

        def _line(self):
                while b"\n" not in self.buf:
                        chunk = self.sock.recv(65536)
                        if not chunk:
                                raise ConnectionResetError(f"connection closed by server (pending {self.buf!r})")
                        self.buf += chunk
                line, self.buf = self.buf.split(b"\n", 1)
                return line.rstrip(b"\r").decode("utf-8", "replace")

        def reply(self):
                """One reply: (code, text) with continuation lines joined by '\n'."""
                lines = []
                while True:
                        line = self._line()
                        if len(line) < 3 or not line[:3].isdigit():
                                raise Failure(f"malformed reply line {line!r}")
                        lines.append(line[4:])
                        if len(line) == 3 or line[3] == " ":
                                return (int(line[:3]), "\n".join(lines))

        def cmd(self, line):
                self.send(line + "\r\n")
                return self.reply()

        def closed(self, timeout=5.0):
                """True if the server closes the connection (EOF or reset) within timeout."""
                self.sock.settimeout(timeout)
                try:
                        while True:
                                d = self.sock.recv(65536)
                                if not d:
                                        return True
                                self.buf += d
                except socket.timeout:
                        return False
                except (ConnectionResetError, BrokenPipeError):
                        return True

        def close(self):
                try:
                        self.sock.close()
                except OSError:
                        pass

        def __enter__(self):
                return self

        def __exit__(self, *a):
                self.close()

        # conveniences
        def ehlo(self, name="client.test"):
                r = self.cmd(f"EHLO {name}")
                check_reply(r, 250, None, "EHLO")
                return r

        def mail(self, sender, expect=250):
                r = self.cmd(f"MAIL FROM:<{sender}>")
                check_reply(r, expect, None, f"MAIL FROM:<{sender}>")
                return r

        def rcpt(self, rcpt, expect=250):
                r = self.cmd(f"RCPT TO:<{rcpt}>")
                check_reply(r, expect, None, f"RCPT TO:<{rcpt}>")
                return r

        def data(self, body, expect=250):
                """body: bytes already CRLF and dot-stuffed, without the final '.CRLF'."""
                check_reply(self.cmd("DATA"), 354, None, "DATA")
                if isinstance(body, str):
                        body = body.encode()
                if not body.endswith(b"\r\n"):
                        body += b"\r\n"
                self.send(body + b".\r\n")
                r = self.reply()
                check_reply(r, expect, None, "end of DATA")
                return r


def message(subject="test", body="Hello.\r\n", sender="a@localhost", rcpt="b@localhost", extra=""):
        return (f"From: <{sender}>\r\nTo: <{rcpt}>\r\nSubject: {subject}\r\n"
                f"Message-ID: <{subject.replace(' ', '.')}.{time.time_ns()}@client.test>\r\n{extra}\r\n{body}").encode()


def send_mail(port, sender, rcpts, body, ehlo="client.test"):
        """One complete transaction; returns the final reply."""
        with Smtp(port) as c:
                check_reply(c.greeting, 220, None, "greeting")
                c.ehlo(ehlo)
                c.mail(sender)
                for r in rcpts:
                        c.rcpt(r)
                rep = c.data(body)
                c.cmd("QUIT")
                return rep


def split_received(data):
        """(first header field if it is Received:, rest of the bytes); the
        field includes its folded continuation lines (RFC 5322 2.2.3)."""
        if not data[:9].lower() == b"received:":
                return (None, data)
        i = 0
        while True:
                j = data.find(b"\r\n", i)
                if j < 0:
                        return (data, b"")
                i = j + 2
                if data[i:i + 1] not in (b" ", b"\t"):
                        return (data[:i], data[i:])


def swaks(port, sender, rcpts, body=None, extra=()):
        """Runs swaks(1) against the gateway; returns (exit status, output)."""
        exe = need("swaks")
        argv = [exe, "--server", f"127.0.0.1:{port}", "--from", sender, "--to", ",".join(rcpts),
                "--helo", "client.test", "--timeout", "20"]
        if body is not None:
                argv += ["--body", body]
        r = subprocess.run(argv + list(extra), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        return (r.returncode, r.stdout.decode("utf-8", "replace"))


def queued_mid(reply):
        m = re.search(r"queued as MID (\d+)", reply[1])
        check(m is not None, f"no 'queued as MID n' in {reply!r}")
        return int(m.group(1))


# ------------------------------------------------------------------- TAP --

class Context:
        def __init__(self, workdir):
                self.workdir = workdir
                self._cleanups = []

        def cleanup(self, fn):
                self._cleanups.append(fn)

        def gateway(self, *a, **kw):
                return Gateway(self, *a, **kw)

        def gw(self, gateway_args=None, **config):
                """A gateway on base_config(**config)."""
                return Gateway(self, lambda g: base_config(g.state_dir, g.port, **config), **(gateway_args or {}))

        def sink(self, *a, **kw):
                import sink as _sink
                s = _sink.Sink(*a, **kw)
                self.cleanup(s.stop)
                return s

        def postfix_sink(self, *a, **kw):
                """Postfix's real smtp-sink(1) as a peer MTA (SKIP if absent)."""
                import sink as _sink
                if not os.access(_sink.PostfixSink.BIN, os.X_OK):
                        raise Skip(f"{_sink.PostfixSink.BIN} not installed (postfix)")
                s = _sink.PostfixSink(self.workdir, *a, **kw)
                self.cleanup(s.stop)
                return s

        def run_cleanups(self):
                errors = []
                for fn in reversed(self._cleanups):
                        try:
                                fn()
                        except Exception as e:  # noqa: BLE001 - report every cleanup problem
                                errors.append(e)
                self._cleanups = []
                return errors


_CASES = []


def case(name):
        """Registers a test case; the function gets a Context."""
        def deco(fn):
                _CASES.append((name, fn))
                return fn
        return deco


def need(tool):
        path = shutil.which(tool) or (tool if os.access(tool, os.X_OK) else None)
        if not path:
                raise Skip(f"{tool} not installed")
        return path


def diag(text):
        for line in str(text).splitlines() or [""]:
                print(f"# {line}")


def run(only=None):
        """Runs every registered case as TAP; exits 1 if any failed."""
        global JOURNAL, _WORKDIR, _BUS
        enter_namespace()
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        sys.stdout.reconfigure(line_buffering=True)
        workdir = tempfile.mkdtemp(prefix="tlsgw-it-")
        # smtp-sink(1) drops to "nobody" and must reach its dump directory below.
        os.chmod(workdir, 0o711)
        _WORKDIR = workdir
        JOURNAL = Journal(workdir)
        if not JOURNAL.start():
                diag(f"private journald unavailable: {JOURNAL.error}; journal checks will SKIP")
        if not TLSGWD or not os.access(TLSGWD, os.X_OK):
                diag(f"TLSGWD={TLSGWD!r} is not an executable")
        sel = os.environ.get("TLSGW_TEST_CASE") or only
        cases = [(n, f) for (n, f) in _CASES if not sel or re.search(sel, n)]
        failed = 0
        n = 0
        keep = os.environ.get("TLSGW_TEST_KEEP") == "1"
        try:
                for name, fn in cases:
                        n += 1
                        ctx = Context(workdir)
                        status, text = "ok", None
                        t0 = time.monotonic()
                        try:
                                fn(ctx)
                        except Skip as e:
                                status, text = "skip", str(e)
                        except Failure as e:
                                status, text = "fail", str(e)
                        except Exception:  # noqa: BLE001 - any error fails the case with its traceback
                                status, text = "fail", traceback.format_exc()
                        for e in ctx.run_cleanups():
                                if status != "fail":
                                        status, text = "fail", ""
                                text = (text + "\n" if text else "") + f"cleanup: {e}"
                        dt = time.monotonic() - t0
                        if status == "ok":
                                print(f"ok {n} - {name}")
                        elif status == "skip":
                                print(f"ok {n} - {name} # SKIP {text}")
                        else:
                                failed += 1
                                print(f"not ok {n} - {name}")
                                diag(text)
                        diag(f"{name}: {dt:.1f}s")
        finally:
                if _BUS is not None:
                        _BUS.stop()
                JOURNAL.stop()
                if not keep:
                        shutil.rmtree(workdir, ignore_errors=True)
                else:
                        diag(f"kept {workdir}")
        print(f"1..{n}")
        sys.exit(1 if failed else 0)
