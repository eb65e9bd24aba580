# SPDX-License-Identifier: GPL-2.0-or-later
"""A private Postfix instance (Python standard library only), for the
benchmark and for the integration test that runs tlsgwd against Postfix.

What it does: writes its own main.cf and master.cf (its own config,
queue and data directories under a work directory, smtpd on a loopback
port, no chroot, logging through postlogd into a file), relays every
message for its relay domains to [127.0.0.1]:relayhost_port in plain text
(unless a transport map or an extra service says otherwise), and starts
it with `postfix -c DIR start`, optionally so that the master and every
child it ever forks land in a given cgroup (the benchmark's CPU and memory
accounting covers the whole process tree).

The tuning is the fair one an administrator would use for a relay under
load: process limits raised above the largest concurrency the benchmark
offers, in_flow_delay = 0 (no smtpd throttling by queue pressure), no
chroot, the message size limit above the bulk size, default fsync
behaviour and default TLS session handling.

What it does not do: no local delivery, no DNS, no content filters, no
syslog. Errors are raised as PostfixError with the tail of the log.
"""

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time

POSTFIX = "/usr/sbin/postfix"
POSTCONF = "/usr/sbin/postconf"
# Postfix programs run as this user and must read the config, PKI and queue.
MAIL_OWNER = "postfix"
# From "postfix start" to an smtpd answering on the port.
START_TIMEOUT = 20.0
# "postfix stop" signals the master; how long to wait for it to exit.
STOP_TIMEOUT = 15.0

# Same services as a stock master.cf, without chroot; the smtpd and smtp
# process limits come from default_process_limit.
MASTER_CF = """\
{listen} inet n - n - - smtpd
pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
tlsmgr unix - - n 1000? 1 tlsmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
smtp unix - - n - - smtp
relay unix - - n - - smtp
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
local unix - n n - - local
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
"""


class PostfixError(Exception):
        pass


def available():
        """None when Postfix can run here, else the reason it cannot."""
        if not os.access(POSTFIX, os.X_OK):
                return f"{POSTFIX} not installed"
        try:
                pwd.getpwnam(MAIL_OWNER)
        except KeyError:
                return f"no user {MAIL_OWNER!r} for Postfix's mail_owner"
        if os.geteuid() != 0:
                return "Postfix needs root to start"
        return None


def version():
        try:
                r = subprocess.run([POSTCONF, "-d", "-h", "mail_version"], stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL, timeout=10)
                return r.stdout.decode().strip() or "unknown"
        except (OSError, subprocess.SubprocessError):
                return "unknown"


def _alive(pid):
        try:
                with open(f"/proc/{pid}/stat") as f:
                        return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
        except OSError:
                return False


class Postfix:
        """One private instance in workdir/name.

        relay_domains: what smtpd accepts for relaying; key/cert/chain: the
        smtpd certificate (STARTTLS offered when given); transports: a
        transport map {domain: "service:[host]:port"}; services: extra
        master.cf lines; main_extra: more main.cf settings (they win)."""

        def __init__(self, workdir, port, relayhost_port, relay_domains, key=None, cert=None, chain=None,
                     name="postfix", hostname="pf.bench", transports=None, services="", main_extra=None,
                     process_limit=1100, message_size_limit=64 * 1024 * 1024):
                self.port = port
                self.dir = os.path.join(workdir, name)
                self.conf = os.path.join(self.dir, "conf")
                self.queue = os.path.join(self.dir, "queue")
                self.data = os.path.join(self.dir, "data")
                self.maillog = os.path.join(self.dir, "maillog")
                self.started = False
                for d in (self.dir, self.conf, self.queue):
                        os.makedirs(d, exist_ok=True)
                        os.chmod(d, 0o755)
                os.makedirs(self.data, exist_ok=True)
                shutil.chown(self.data, MAIL_OWNER)
                transport = os.path.join(self.conf, "transport")
                with open(transport, "w") as f:
                        for dom, dest in (transports or {}).items():
                                f.write(f"{dom} {dest}\n")
                main = {
                        "compatibility_level": "3.6",
                        "queue_directory": self.queue,
                        "data_directory": self.data,
                        "meta_directory": "/etc/postfix",
                        "shlib_directory": "/usr/lib/postfix",
                        "mail_owner": MAIL_OWNER,
                        "setgid_group": "postdrop",
                        "myhostname": hostname,
                        "mydomain": hostname,
                        "myorigin": hostname,
                        # Nothing local: every domain is relayed.
                        "mydestination": "",
                        "local_recipient_maps": "",
                        "alias_maps": "",
                        "alias_database": "",
                        "inet_interfaces": "127.0.0.1",
                        "inet_protocols": "ipv4",
                        "mynetworks": "127.0.0.0/8",
                        "relay_domains": " ".join(relay_domains),
                        "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
                        "transport_maps": "texthash:" + transport,
                        "relayhost": f"[127.0.0.1]:{relayhost_port}",
                        "smtp_dns_support_level": "disabled",
                        "smtp_tls_security_level": "none",
                        # Postfix 3.4+: log into a file through postlogd.
                        "maillog_file": self.maillog,
                        "maillog_file_prefixes": self.dir,
                        # One smtpd process per session: the limit must be
                        # above the benchmark's largest concurrency, or
                        # sessions wait in the listen queue.
                        "default_process_limit": str(process_limit),
                        # All clients are 127.0.0.1: no per-client caps
                        # (mynetworks is exempt anyway; be explicit).
                        "smtpd_client_connection_count_limit": "0",
                        "smtpd_client_connection_rate_limit": "0",
                        "smtpd_client_message_rate_limit": "0",
                        "in_flow_delay": "0",
                        # The bulk scenario's messages must fit.
                        "message_size_limit": str(message_size_limit),
                        "mailbox_size_limit": "0",
                        "biff": "no",
                }
                if key and cert:
                        main.update(self._install_tls(key, cert, chain))
                main.update(main_extra or {})
                with open(os.path.join(self.conf, "main.cf"), "w") as f:
                        for k, v in main.items():
                                f.write(f"{k} = {v}\n")
                with open(os.path.join(self.conf, "master.cf"), "w") as f:
                        f.write(MASTER_CF.format(listen=f"127.0.0.1:{port}") + services)

        def _install_tls(self, key, cert, chain):
                """Copies the smtpd certificate where smtpd, which reads it after
                dropping privileges, can; returns the main.cf settings."""
                tlsdir = os.path.join(self.dir, "tls")
                os.makedirs(tlsdir, exist_ok=True)
                os.chmod(tlsdir, 0o755)
                keyfile = os.path.join(tlsdir, "key.pem")
                shutil.copyfile(key, keyfile)
                shutil.chown(keyfile, MAIL_OWNER)
                os.chmod(keyfile, 0o600)
                # smtpd_tls_chain_files: the key, then the leaf, then its chain.
                chain_file = os.path.join(tlsdir, "leaf-chain.pem")
                with open(chain_file, "wb") as out:
                        for src in (cert, chain):
                                if src:
                                        with open(src, "rb") as f:
                                                out.write(f.read())
                os.chmod(chain_file, 0o644)
                return {"smtpd_tls_security_level": "may", "smtpd_tls_chain_files": f"{keyfile}, {chain_file}"}

        def _postfix(self, *args, cgroup_procs=None, timeout=60):
                cmd = [POSTFIX, "-c", self.conf] + list(args)
                # Postfix reports command errors to syslog only; script(1)
                # gives it a terminal so they reach us too.
                if shutil.which("script"):
                        cmd = ["script", "-qec", " ".join(cmd), "/dev/null"]
                if cgroup_procs:
                        # Join the cgroup before exec, so that the master
                        # (which daemonizes) and all it forks are inside.
                        cmd = ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', cgroup_procs] + cmd
                r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, timeout=timeout)
                return r.returncode, r.stdout.decode("utf-8", "replace").replace("\r", "")

        def start(self, cgroup_procs=None):
                rc, out = self._postfix("check")
                if rc != 0:
                        raise PostfixError(f"postfix check failed: {out.strip()[-600:]}")
                rc, out = self._postfix("start", cgroup_procs=cgroup_procs)
                if rc != 0:
                        raise PostfixError(f"postfix start failed: {out.strip()[-600:]} {self.log_tail()}")
                self.started = True
                deadline = time.monotonic() + START_TIMEOUT
                while time.monotonic() < deadline:
                        if self._greets():
                                return
                        time.sleep(0.2)
                raise PostfixError(f"Postfix smtpd did not answer on port {self.port}: {self.log_tail()}")

        def _greets(self):
                try:
                        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                                data = s.recv(512)
                                s.sendall(b"QUIT\r\n")
                                return data.startswith(b"220")
                except OSError:
                        return False

        def master_pid(self):
                try:
                        with open(os.path.join(self.queue, "pid", "master.pid")) as f:
                                return int(f.read().strip())
                except (OSError, ValueError):
                        return None

        def log(self):
                try:
                        with open(self.maillog, errors="replace") as f:
                                return f.read()
                except OSError:
                        return ""

        def log_tail(self, n=1500):
                return self.log()[-n:]

        def errors_in_log(self):
                """Lines of the maillog that say something went wrong."""
                try:
                        with open(self.maillog, errors="replace") as f:
                                return [ln for ln in f if " fatal: " in ln or " panic: " in ln]
                except OSError:
                        return []

        def stop(self):
                if not self.started:
                        return
                self.started = False
                pid = self.master_pid()
                self._postfix("stop")
                deadline = time.monotonic() + STOP_TIMEOUT
                while pid and _alive(pid) and time.monotonic() < deadline:
                        time.sleep(0.1)
                if pid and _alive(pid):
                        os.kill(pid, signal.SIGKILL)
