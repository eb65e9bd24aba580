# SPDX-License-Identifier: GPL-2.0-or-later
"""TLS helpers for the integration tests (Python standard library only).

What it provides:
  - pki(): the test PKI made once per test program by tests/data/make-test-pki
    (SKIP when the script or openssl(1) is missing);
  - install_cert(): writes a certificate into a gateway's certificate store
    (STATE/certs/NAME/{key.pem,cert.pem,chain.pem}) before the daemon starts
    or before a reload;
  - client_context() and starttls(): a Python ssl client for the raw Smtp
    client of harness.py, with exact protocol version pinning and optional
    client certificates;
  - s_client(): openssl s_client -starttls smtp with its output parsed
    (protocol, cipher, peer certificates, reuse);
  - TlsPeer: a scriptable, recording SMTP server with STARTTLS (RFC 3207)
    for the outbound tests: STARTTLS advertised or not, answered 220 or
    454, a given certificate/key/chain, a broken handshake (close after 220
    or garbage instead of a ServerHello), EHLO refused (RFC 5321 4.1.1.1
    HELO fallback). It records every transaction with the TLS state it ran
    under, and every connection's commands, SNI and handshake outcome.

What it does not do: no network beyond 127.0.0.1, no certificate
generation of its own (make-test-pki does that), no SMTP extensions beyond
what the gateway's client needs (PIPELINING, SIZE, 8BITMIME,
ENHANCEDSTATUSCODES, STARTTLS).
"""

import hashlib
import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time

from harness import SOURCE_ROOT, Skip
from sink import Transaction

MAKE_TEST_PKI = os.path.join(SOURCE_ROOT, "tests", "data", "make-test-pki")
# Seconds any one TLS handshake or s_client run may take on a loaded host
# (sanitizer builds are slow).
TLS_TIMEOUT = 10.0

_PKI = None


def pki():
        """Directory of the test PKI (see make-test-pki for the file names)."""
        global _PKI
        if _PKI:
                return _PKI
        if not os.access(MAKE_TEST_PKI, os.X_OK):
                raise Skip(f"{MAKE_TEST_PKI} missing or not executable")
        if not shutil.which("openssl"):
                raise Skip("openssl(1) not installed")
        d = os.path.join(tempfile.mkdtemp(prefix="tlsgw-pki-"), "pki")
        r = subprocess.run([MAKE_TEST_PKI, d], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
        if r.returncode != 0:
                raise Skip(f"make-test-pki failed: {r.stdout.decode('utf-8', 'replace')[-500:]}")
        # Readable for peers that drop privileges (Postfix's smtpd runs as "postfix").
        os.chmod(os.path.dirname(d), 0o755)
        os.chmod(d, 0o755)
        for n in os.listdir(d):
                os.chmod(os.path.join(d, n), 0o644)
        _PKI = d
        return d


def p(name):
        """Path of a PKI file."""
        return os.path.join(pki(), name)


def cat(dest, *sources):
        with open(dest, "wb") as out:
                for s in sources:
                        with open(s, "rb") as f:
                                out.write(f.read())
        return dest


def install_cert(state_dir, name, leaf, key, chain=None):
        """Writes the store entry NAME the way certstore.h lays it out; each
        file replaced by rename so a reload never sees half of one."""
        d = os.path.join(state_dir, "certs", name)
        os.makedirs(d, mode=0o700, exist_ok=True)
        files = [("key.pem", key, 0o600), ("cert.pem", leaf, 0o644)]
        if chain:
                files.append(("chain.pem", chain, 0o644))
        else:
                try:
                        os.unlink(os.path.join(d, "chain.pem"))
                except FileNotFoundError:
                        pass
        for fn, src, mode in files:
                tmp = os.path.join(d, f".{fn}.tmp")
                shutil.copyfile(src, tmp)
                os.chmod(tmp, mode)
                os.rename(tmp, os.path.join(d, fn))
        return d


def pem_certs(text):
        """The PEM certificate blocks in text, in order."""
        return re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", text, re.S)


def fingerprint_pem(pem):
        return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


def fingerprint_file(path):
        with open(path) as f:
                return fingerprint_pem(pem_certs(f.read())[0])


def fingerprint_der(der):
        return hashlib.sha256(der).hexdigest()


# ------------------------------------------------------------- client --

VERSIONS = {
        "TLSv1.1": ssl.TLSVersion.TLSv1_1,
        "TLSv1.2": ssl.TLSVersion.TLSv1_2,
        "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}


def client_context(version=None, cert=None, key=None, ca=None, ciphers=None):
        """A client context pinned to exactly `version` ("TLSv1.2", ...) when
        given. Certificates are not verified unless ca is given (the
        inbound tests look at what the server sends, not at trust).
        cert may hold the leaf followed by its chain."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if ca:
                ctx.load_verify_locations(ca)
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_REQUIRED
        else:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
        if version:
                v = VERSIONS[version]
                if version == "TLSv1.1":
                        # OpenSSL 3 refuses TLS 1.1 above security level 0; the
                        # point is to offer it, so that the server refuses it.
                        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
                ctx.minimum_version = v
                ctx.maximum_version = v
        if ciphers:
                ctx.set_ciphers(ciphers)
        if cert:
                ctx.load_cert_chain(cert, key)
        return ctx


def starttls(c, ctx, sni=None):
        """STARTTLS on a harness.Smtp client; returns the reply. On 220 the
        socket is replaced by the TLS socket after the handshake (which may
        raise ssl.SSLError / OSError)."""
        r = c.cmd("STARTTLS")
        if r[0] != 220:
                return r
        if c.buf:
                raise AssertionError(f"bytes after the 220 to STARTTLS: {c.buf!r}")
        c.sock.settimeout(TLS_TIMEOUT)
        c.sock = ctx.wrap_socket(c.sock, server_hostname=sni)
        return r


def local_port(c):
        return c.sock.getsockname()[1]


def s_client(port, args=(), stdin=b"EHLO client.test\r\nQUIT\r\n", timeout=TLS_TIMEOUT, delay=0.5):
        """Runs openssl s_client -starttls smtp; returns a dict: rc, out
        (stdout+stderr text), protocol, cipher, certs (PEM list, with
        -showcerts all the server sent), new/reused, key_bits, sig_type. stdin is fed after `delay` seconds so that TLS 1.3 tickets
        sent with the first reply can be read before QUIT."""
        exe = shutil.which("openssl")
        if not exe:
                raise Skip("openssl(1) not installed")
        argv = [exe, "s_client", "-connect", f"127.0.0.1:{port}", "-starttls", "smtp",
                "-name", "client.test", "-ign_eof"] + list(args)
        # Output to a file: communicate() would close stdin at once, and
        # s_client must get its input only after the handshake.
        with tempfile.TemporaryFile() as outf:
                proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=outf, stderr=subprocess.STDOUT)
                try:
                        time.sleep(delay)
                        proc.stdin.write(stdin)
                        proc.stdin.flush()
                        time.sleep(delay)
                        proc.stdin.close()
                except OSError:
                        pass
                try:
                        proc.wait(timeout)
                except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
                outf.seek(0)
                out = outf.read()
        text = out.decode("utf-8", "replace")
        res = {"rc": proc.returncode, "out": text, "certs": pem_certs(text)}
        # The handshake summary: "New, TLSv1.3, Cipher is TLS_AES_256_GCM_SHA384"
        # ("Cipher is (NONE)" after a failed handshake).
        m = re.search(r"(?m)^(New|Reused), (\S+), Cipher is (\S+)", text)
        ok = m is not None and m.group(3) != "(NONE)"
        res["protocol"] = m.group(2) if ok else None
        res["cipher"] = m.group(3) if ok else None
        res["reused"] = ok and m.group(1) == "Reused"
        res["new"] = ok and m.group(1) == "New"
        m = re.search(r"(?m)^Server public key is (\d+) bit", text)
        res["key_bits"] = int(m.group(1)) if m else None
        m = re.search(r"(?m)^Peer signature type: (\S+)", text)
        res["sig_type"] = m.group(1) if m else None
        return res


def cert_info(pem):
        """`openssl x509 -noout -subject -issuer` and the key algorithm of a PEM."""
        r = subprocess.run(["openssl", "x509", "-noout", "-subject", "-issuer", "-text"],
                           input=pem.encode(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        t = r.stdout.decode("utf-8", "replace")
        subj = re.search(r"(?m)^subject=(.*)$", t)
        iss = re.search(r"(?m)^issuer=(.*)$", t)
        alg = re.search(r"Public Key Algorithm: (\S+)", t)
        return {"subject": subj.group(1).strip() if subj else None,
                "issuer": iss.group(1).strip() if iss else None,
                "key": alg.group(1) if alg else None}


def tls11_client_works():
        """Whether this Python/OpenSSL can still offer TLS 1.1 at all: a
        handshake against a local server that allows it. Without this, a
        "TLS 1.1 refused" result could come from our own client."""
        srv = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        srv.load_cert_chain(p("server-rsa.pem"), p("server-rsa.key"))
        srv.set_ciphers("DEFAULT:@SECLEVEL=0")
        srv.minimum_version = ssl.TLSVersion.TLSv1_1
        srv.maximum_version = ssl.TLSVersion.TLSv1_1
        ls = socket.socket()
        ls.bind(("127.0.0.1", 0))
        ls.listen(1)
        port = ls.getsockname()[1]
        result = {}

        def serve():
                try:
                        c, _ = ls.accept()
                        c.settimeout(5)
                        s = srv.wrap_socket(c, server_side=True)
                        result["v"] = s.version()
                        s.close()
                except (OSError, ssl.SSLError) as e:
                        result["err"] = str(e)
        t = threading.Thread(target=serve, daemon=True)
        t.start()
        try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
                        s = client_context("TLSv1.1").wrap_socket(c)
                        v = s.version()
                        s.close()
        except (OSError, ssl.SSLError) as e:
                return (False, str(e))
        finally:
                t.join(5)
                ls.close()
        return (v == "TLSv1.1", v)


# --------------------------------------------------------------- peer --

class PeerConnection:
        """What one connection to the peer saw."""

        def __init__(self, cid):
                self.cid = cid
                self.commands = []
                self.starttls = 0               # STARTTLS commands received
                self.tls_version = None
                self.cipher = None
                self.sni = None
                self.client_cert = None         # DER of the client's certificate
                self.handshake_error = None

        def __repr__(self):
                return (f"<PeerConnection {self.cid} tls={self.tls_version} sni={self.sni!r} "
                        f"starttls={self.starttls} err={self.handshake_error!r} cmds={self.commands}>")


class TlsPeer:
        """Scriptable recording SMTP server with STARTTLS.

        cert/key: PEM files served (cert may hold leaf + chain); chain: more
                  PEM appended after the leaf.
        starttls: advertise STARTTLS in EHLO.
        starttls_reply: the reply to STARTTLS (a 4xx/5xx keeps the session
                  in clear text, as RFC 3207 4 allows).
        handshake: "ok"; "close" = close right after the 220; "garbage" =
                  write bytes that are no TLS record after the 220 and close.
        ehlo: False answers EHLO with 500 (the client must try HELO).
        client_ca: ask for a client certificate and verify it against this
                  bundle (the result is recorded, a missing one is allowed).
        versions: (min, max) ssl.TLSVersion the server accepts.
        """

        def __init__(self, workdir, name="peer", cert=None, key=None, chain=None, starttls=True,
                     starttls_reply="220 2.0.0 Ready to start TLS", handshake="ok", ehlo=True,
                     client_ca=None, versions=None, host="127.0.0.1", port=0):
                self.name = name
                self.starttls = starttls
                self.starttls_reply = starttls_reply
                self.handshake = handshake
                self.ehlo = ehlo
                self.lock = threading.Lock()
                self.cond = threading.Condition(self.lock)
                self.transactions = []
                self.connections = []
                self.errors = []
                self.ctx = None
                self._local = threading.local()
                if cert:
                        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                        certfile = cert
                        if chain:
                                certfile = cat(os.path.join(workdir, f"{name}-{os.getpid()}-{id(self)}.pem"),
                                               cert, chain)
                        self.ctx.load_cert_chain(certfile, key)
                        if versions:
                                self.ctx.minimum_version, self.ctx.maximum_version = versions
                        if client_ca:
                                self.ctx.load_verify_locations(client_ca)
                                self.ctx.verify_mode = ssl.CERT_OPTIONAL
                        self.ctx.sni_callback = self._sni
                self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                self.lsock.bind((host, port))
                self.lsock.listen(64)
                self.port = self.lsock.getsockname()[1]
                self.running = True
                self.socks = []
                self.thread = threading.Thread(target=self._accept, daemon=True)
                self.thread.start()

        def _sni(self, sslobj, server_name, ctx):
                conn = getattr(self._local, "conn", None)
                if conn is not None:
                        conn.sni = server_name
                return None

        def _accept(self):
                self.lsock.settimeout(0.2)
                while self.running:
                        try:
                                c, _ = self.lsock.accept()
                        except socket.timeout:
                                continue
                        except OSError:
                                break
                        with self.lock:
                                conn = PeerConnection(len(self.connections) + 1)
                                self.connections.append(conn)
                                self.socks.append(c)
                        threading.Thread(target=self._session, args=(c, conn), daemon=True).start()

        def _session(self, c, conn):
                self._local.conn = conn
                c.settimeout(30)
                try:
                        _PeerSession(self, c, conn).run()
                except (OSError, ConnectionError, ssl.SSLError):
                        pass
                except Exception as e:  # noqa: BLE001 - recorded for the test to show
                        self.errors.append(repr(e))
                finally:
                        try:
                                c.close()
                        except OSError:
                                pass

        def stop(self):
                self.running = False
                try:
                        self.lsock.close()
                except OSError:
                        pass
                with self.lock:
                        for c in self.socks:
                                try:
                                        c.shutdown(socket.SHUT_RDWR)
                                except OSError:
                                        pass
                self.thread.join(2)

        def record(self, txn):
                with self.cond:
                        self.transactions.append(txn)
                        self.cond.notify_all()

        def accepted(self):
                with self.lock:
                        return [t for t in self.transactions if t.accepted]

        def wait(self, n=1, timeout=20.0):
                deadline = time.monotonic() + timeout
                with self.cond:
                        while True:
                                acc = [t for t in self.transactions if t.accepted]
                                if len(acc) >= n:
                                        return acc
                                left = deadline - time.monotonic()
                                if left <= 0:
                                        return acc
                                self.cond.wait(min(left, 0.2))

        def conns(self):
                with self.lock:
                        return list(self.connections)


class _PeerSession:
        def __init__(self, peer, sock, conn):
                self.peer = peer
                self.sock = sock
                self.conn = conn
                self.buf = b""
                self.helo = None
                self.txn = None
                self.tls = False

        def reply(self, text):
                self.sock.sendall(text.encode() + b"\r\n")

        def readline(self):
                while b"\r\n" not in self.buf:
                        d = self.sock.recv(65536)
                        if not d:
                                return None
                        self.buf += d
                line, self.buf = self.buf.split(b"\r\n", 1)
                return line

        def read_data(self):
                data = b"\r\n" + self.buf
                while True:
                        i = data.find(b"\r\n.\r\n")
                        if i >= 0:
                                self.buf = data[i + 5:]
                                return data[2:i + 2] if i > 0 else b""
                        d = self.sock.recv(65536)
                        if not d:
                                return None
                        data += d

        def do_starttls(self):
                """Returns False when the session must end."""
                pr = self.peer
                self.conn.starttls += 1
                self.reply(pr.starttls_reply)
                if not pr.starttls_reply.startswith("220"):
                        return True
                if self.buf:
                        # RFC 3207 / CVE-2011-0411: nothing may follow STARTTLS in clear.
                        self.conn.handshake_error = f"plaintext after STARTTLS: {self.buf!r}"
                        return False
                if pr.handshake == "close":
                        self.conn.handshake_error = "closed by script"
                        return False
                if pr.handshake == "garbage":
                        self.conn.handshake_error = "garbage by script"
                        # Not a TLS record: content type 0x48 ('H').
                        self.sock.sendall(b"HELLO THIS IS NOT TLS\r\n" * 4)
                        time.sleep(0.2)
                        return False
                if pr.ctx is None:
                        self.conn.handshake_error = "no certificate configured"
                        return False
                try:
                        self.sock = pr.ctx.wrap_socket(self.sock, server_side=True)
                except (ssl.SSLError, OSError) as e:
                        self.conn.handshake_error = str(e)
                        return False
                self.tls = True
                self.conn.tls_version = self.sock.version()
                c = self.sock.cipher()
                self.conn.cipher = c[0] if c else None
                self.conn.client_cert = self.sock.getpeercert(binary_form=True)
                # RFC 3207 4.2: the client must start over with EHLO.
                self.helo = None
                self.txn = None
                return True

        def run(self):
                pr = self.peer
                self.reply(f"220 {pr.name}.test ESMTP tlspeer")
                while True:
                        raw = self.readline()
                        if raw is None:
                                return
                        line = raw.decode("utf-8", "replace")
                        with pr.lock:
                                self.conn.commands.append(("TLS " if self.tls else "") + line)
                        verb = line.split(" ", 1)[0].upper()
                        arg = line[len(verb):].strip()
                        if verb == "EHLO":
                                if not pr.ehlo:
                                        self.reply("500 5.5.2 Command not recognized")
                                        continue
                                self.helo = arg
                                caps = [f"250-{pr.name}.test", "250-PIPELINING", "250-SIZE 52428800",
                                        "250-8BITMIME"]
                                if pr.starttls and not self.tls:
                                        caps.append("250-STARTTLS")
                                caps.append("250 ENHANCEDSTATUSCODES")
                                self.reply("\r\n".join(caps))
                        elif verb == "HELO":
                                self.helo = arg
                                self.reply(f"250 {pr.name}.test")
                        elif verb == "STARTTLS":
                                if self.tls or not pr.starttls:
                                        self.reply("503 5.5.1 STARTTLS not possible now")
                                        continue
                                if not self.do_starttls():
                                        return
                        elif verb == "MAIL":
                                m = re.match(r"(?i)FROM:\s*<([^>]*)>", arg)
                                if not self.helo:
                                        self.reply("503 5.5.1 Send EHLO/HELO first")
                                        continue
                                if not m:
                                        self.reply("501 5.5.4 Syntax: MAIL FROM:<address>")
                                        continue
                                self.txn = Transaction(self.conn.cid, self.helo, m.group(1))
                                self.txn.tls = self.conn.tls_version if self.tls else None
                                self.txn.cipher = self.conn.cipher if self.tls else None
                                self.reply("250 2.1.0 Ok")
                        elif verb == "RCPT":
                                m = re.match(r"(?i)TO:\s*<([^>]*)>", arg)
                                if not self.txn:
                                        self.reply("503 5.5.1 Error: need MAIL command")
                                        continue
                                if not m:
                                        self.reply("501 5.5.4 Syntax: RCPT TO:<address>")
                                        continue
                                self.txn.rcpts.append(m.group(1))
                                self.reply("250 2.1.5 Ok")
                        elif verb == "DATA":
                                if not self.txn or not self.txn.rcpts:
                                        self.reply("503 5.5.1 Error: need RCPT command")
                                        continue
                                self.reply("354 End data with <CR><LF>.<CR><LF>")
                                wire = self.read_data()
                                if wire is None:
                                        return
                                self.txn.wire = wire
                                self.txn.reply = f"250 2.0.0 Ok: queued as T{len(pr.transactions) + 1}"
                                pr.record(self.txn)
                                self.reply(self.txn.reply)
                                self.txn = None
                        elif verb == "RSET":
                                self.txn = None
                                self.reply("250 2.0.0 Ok")
                        elif verb == "NOOP":
                                self.reply("250 2.0.0 Ok")
                        elif verb == "QUIT":
                                self.reply("221 2.0.0 Bye")
                                return
                        else:
                                self.reply("502 5.5.2 Error: command not recognized")


# A peer for each row of the outbound matrix: (cert, key, chain) or None,
# and the script.
def peer_kinds():
        return {
                "trusted": dict(cert=p("server-ec.pem"), key=p("server-ec.key"), chain=p("server-chain.pem")),
                "untrusted": dict(cert=p("untrusted.pem"), key=p("untrusted.key")),
                "wrongname": dict(cert=p("wrongname.pem"), key=p("wrongname.key"), chain=p("server-chain.pem")),
                "nostarttls": dict(starttls=False),
                "refused": dict(cert=p("server-ec.pem"), key=p("server-ec.key"), chain=p("server-chain.pem"),
                                starttls_reply="454 4.7.0 TLS not available due to local problem"),
                "hsclose": dict(cert=p("server-ec.pem"), key=p("server-ec.key"), handshake="close"),
                "hsgarbage": dict(cert=p("server-ec.pem"), key=p("server-ec.key"), handshake="garbage"),
                "noesmtp": dict(ehlo=False, starttls=False),
        }
