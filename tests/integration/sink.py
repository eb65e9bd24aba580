# SPDX-License-Identifier: GPL-2.0-or-later
"""A recording, scriptable SMTP sink for the integration tests.

Listens on 127.0.0.1:PORT (threaded, one thread per connection) and records
every transaction: the envelope, the DATA bytes exactly as they came over
the wire (dot-stuffing and line ends untouched, without the terminating
".<CR><LF>") and the unstuffed message. It can be scripted to answer like a
difficult peer: another greeting, no EHLO (500, RFC 5321 4.1.1.1 HELO
fallback), PIPELINING advertised or not, per-recipient replies, replies to
the end of DATA, a delay before each reply.

Only CRLF.CRLF ends DATA here (RFC 5321 4.1.1.4), so a peer that sends bare
LF or CR sequences is recorded as is.

Also: PostfixSink runs Postfix's own smtp-sink(1) and reads its dumps.
"""

import os
import re
import shutil
import socket
import subprocess
import threading
import time


class Transaction:
        def __init__(self, conn_id, helo, mail_from):
                self.conn_id = conn_id
                self.helo = helo
                self.mail_from = mail_from
                self.rcpts = []         # accepted recipients
                self.rejected = []      # (rcpt, reply)
                self.wire = b""         # DATA as on the wire, without ".\r\n"
                self.reply = None       # our reply to the end of DATA
                self.time = time.time()

        @property
        def accepted(self):
                return self.reply is not None and self.reply.startswith("2")

        @property
        def data(self):
                """The message with dot-stuffing removed (RFC 5321 4.5.2)."""
                out = []
                for line in self.wire.split(b"\r\n"):
                        out.append(line[1:] if line.startswith(b".") else line)
                return b"\r\n".join(out)

        def __repr__(self):
                return (f"<Transaction conn={self.conn_id} from={self.mail_from!r} rcpts={self.rcpts} "
                        f"size={len(self.wire)} reply={self.reply!r}>")


class Sink:
        """Scriptable recording SMTP server.

        rcpt_replies: {address (lowercase): reply or [replies consumed in order]}
        data_replies: list of replies for successive DATA ends (then 250),
                      or a callable(Transaction) -> reply
        greeting: full greeting line (e.g. "421 4.3.2 go away")
        ehlo: False answers EHLO with 500 (the client must fall back to HELO)
        pipelining: advertise PIPELINING (RFC 2920)
        delay: seconds to sleep before every reply
        record_dir: also write each accepted transaction's wire DATA there
        """

        def __init__(self, port=0, name="sink", greeting=None, ehlo=True, pipelining=True,
                     rcpt_replies=None, data_replies=None, mail_reply=None, delay=0.0,
                     record_dir=None, size=None, host="127.0.0.1"):
                self.name = name
                self.greeting = greeting or f"220 {name}.test ESMTP sink"
                self.ehlo = ehlo
                self.pipelining = pipelining
                self.rcpt_replies = {k.lower(): (list(v) if isinstance(v, (list, tuple)) else v)
                                     for k, v in (rcpt_replies or {}).items()}
                self.data_replies = list(data_replies) if isinstance(data_replies, (list, tuple)) else data_replies
                self.mail_reply = mail_reply
                self.delay = delay
                self.record_dir = record_dir
                self.size = size
                self.lock = threading.Lock()
                self.cond = threading.Condition(self.lock)
                self.transactions = []
                self.connections = 0
                self.commands = []      # (conn_id, line) of every command
                self.errors = []
                self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                self.lsock.bind((host, port))
                self.lsock.listen(64)
                self.port = self.lsock.getsockname()[1]
                self.running = True
                self.conns = []
                self.thread = threading.Thread(target=self._accept, daemon=True)
                self.thread.start()

        # -- scripting helpers --
        def _rcpt_reply(self, addr):
                with self.lock:
                        v = self.rcpt_replies.get(addr.lower())
                        if isinstance(v, list):
                                v = v.pop(0) if v else None
                return v or "250 2.1.5 Ok"

        def _data_reply(self, txn):
                with self.lock:
                        d = self.data_replies
                        if callable(d):
                                r = d(txn)
                        elif d:
                                r = d.pop(0)
                        else:
                                r = None
                return r or f"250 2.0.0 Ok: queued as S{len(self.transactions) + 1}"

        # -- server --
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
                                self.connections += 1
                                cid = self.connections
                                self.conns.append(c)
                        threading.Thread(target=self._session, args=(c, cid), daemon=True).start()

        def _session(self, c, cid):
                try:
                        _Session(self, c, cid).run()
                except (OSError, ConnectionError):
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
                        for c in self.conns:
                                try:
                                        c.shutdown(socket.SHUT_RDWR)
                                except OSError:
                                        pass
                self.thread.join(2)

        # -- results --
        def accepted(self):
                with self.lock:
                        return [t for t in self.transactions if t.accepted]

        def wait(self, n=1, timeout=20.0):
                """Waits for n accepted transactions; returns them (maybe fewer)."""
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

        def _record(self, txn):
                with self.cond:
                        self.transactions.append(txn)
                        self.cond.notify_all()
                if self.record_dir and txn.accepted:
                        os.makedirs(self.record_dir, exist_ok=True)
                        with open(os.path.join(self.record_dir, f"{len(self.transactions):04d}.eml"), "wb") as f:
                                f.write(txn.wire)


class _Session:
        def __init__(self, sink, sock, cid):
                self.sink = sink
                self.sock = sock
                self.cid = cid
                self.buf = b""
                self.helo = None
                self.txn = None

        def reply(self, text):
                if self.sink.delay:
                        time.sleep(self.sink.delay)
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
                """Up to CRLF.CRLF (the CRLF before '.' belongs to the data)."""
                data = b"\r\n" + self.buf  # lets a lone ".\r\n" right after 354 match too
                while True:
                        i = data.find(b"\r\n.\r\n")
                        if i >= 0:
                                self.buf = data[i + 5:]
                                return data[2:i + 2] if i > 0 else b""
                        d = self.sock.recv(65536)
                        if not d:
                                return None
                        data += d

        def run(self):
                s = self.sink
                self.reply(s.greeting)
                if not s.greeting.startswith("2"):
                        # RFC 5321 3.1: after 554 the client should QUIT; we answer only that.
                        while True:
                                line = self.readline()
                                if line is None:
                                        return
                                if line.upper().startswith(b"QUIT"):
                                        self.reply("221 2.0.0 Bye")
                                        return
                                self.reply("503 5.5.1 Bad sequence of commands")
                while True:
                        raw = self.readline()
                        if raw is None:
                                return
                        line = raw.decode("utf-8", "replace")
                        with s.lock:
                                s.commands.append((self.cid, line))
                        verb = line.split(" ", 1)[0].upper()
                        arg = line[len(verb):].strip()
                        if verb == "EHLO":
                                if not s.ehlo:
                                        self.reply("500 5.5.2 Command not recognized")
                                        continue
                                self.helo = arg
                                caps = [f"250-{s.name}.test"]
                                if s.pipelining:
                                        caps.append("250-PIPELINING")
                                if s.size:
                                        caps.append(f"250-SIZE {s.size}")
                                caps += ["250-8BITMIME", "250 ENHANCEDSTATUSCODES"]
                                self.reply("\r\n".join(caps))
                        elif verb == "HELO":
                                self.helo = arg
                                self.reply(f"250 {s.name}.test")
                        elif verb == "MAIL":
                                m = re.match(r"(?i)FROM:\s*<([^>]*)>", arg)
                                if not m:
                                        self.reply("501 5.5.4 Syntax: MAIL FROM:<address>")
                                        continue
                                if s.mail_reply:
                                        self.reply(s.mail_reply)
                                        continue
                                self.txn = Transaction(self.cid, self.helo, m.group(1))
                                self.reply("250 2.1.0 Ok")
                        elif verb == "RCPT":
                                m = re.match(r"(?i)TO:\s*<([^>]*)>", arg)
                                if not self.txn:
                                        self.reply("503 5.5.1 Error: need MAIL command")
                                        continue
                                if not m:
                                        self.reply("501 5.5.4 Syntax: RCPT TO:<address>")
                                        continue
                                r = s._rcpt_reply(m.group(1))
                                if r.startswith("2"):
                                        self.txn.rcpts.append(m.group(1))
                                else:
                                        self.txn.rejected.append((m.group(1), r))
                                self.reply(r)
                        elif verb == "DATA":
                                if not self.txn or not self.txn.rcpts:
                                        self.reply("503 5.5.1 Error: need RCPT command")
                                        continue
                                self.reply("354 End data with <CR><LF>.<CR><LF>")
                                wire = self.read_data()
                                if wire is None:
                                        return
                                self.txn.wire = wire
                                self.txn.reply = s._data_reply(self.txn)
                                s._record(self.txn)
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


class PostfixSink:
        """Postfix's smtp-sink(1) on 127.0.0.1:PORT, dumping each message
        (with its envelope as X-Client-Addr/X-Helo/X-Mail-From/X-Rcpt-To
        headers) into a directory via -d."""

        BIN = "/usr/sbin/smtp-sink"

        def __init__(self, workdir, port=None, extra_args=()):
                if not os.access(self.BIN, os.X_OK):
                        raise FileNotFoundError(self.BIN)
                from harness import free_port  # noqa: PLC0415 - avoids a cycle at import time
                self.port = port or free_port()
                self.dir = os.path.join(workdir, f"smtp-sink-{self.port}")
                os.makedirs(self.dir, exist_ok=True)
                # -u: smtp-sink drops privileges to this user when started as root.
                user = "nobody"
                os.chmod(self.dir, 0o777)
                # -d DIR with "%" forces one file per message under DIR.
                argv = [self.BIN, "-u", user, "-c", "-d", self.dir + "/%M%S.", *extra_args,
                        f"127.0.0.1:{self.port}", "64"]
                self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                             cwd=self.dir)
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline:
                        try:
                                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                                break
                        except OSError:
                                if self.proc.poll() is not None:
                                        raise RuntimeError(f"smtp-sink exited: {self.proc.stdout.read()!r}")
                                time.sleep(0.05)

        def messages(self):
                """Completely dumped messages as bytes, oldest first. smtp-sink
                writes the file during the transaction: a dump counts once it
                ends with its closing empty line and has not changed for a
                moment."""
                out = []
                now = time.time()
                for root, _, files in os.walk(self.dir):
                        for f in files:
                                p = os.path.join(root, f)
                                try:
                                        st = os.stat(p)
                                except FileNotFoundError:
                                        continue
                                if now - st.st_mtime < 0.3:
                                        continue
                                out.append((st.st_mtime, p))
                res = []
                for _, p in sorted(out):
                        with open(p, "rb") as f:
                                data = f.read()
                        if data.endswith(b"\n\n"):
                                res.append(data)
                return res

        def wait(self, n=1, timeout=20.0):
                deadline = time.monotonic() + timeout
                while True:
                        m = self.messages()
                        if len(m) >= n or time.monotonic() >= deadline:
                                return m
                        time.sleep(0.1)

        @staticmethod
        def envelope(msg):
                """(mail_from, [rcpts]) from smtp-sink's X- headers."""
                head = msg.split(b"\n\n", 1)[0].decode("utf-8", "replace")
                frm = re.findall(r"(?mi)^X-Mail-Args:\s*<([^>]*)>", head)
                rc = re.findall(r"(?mi)^X-Rcpt-Args:\s*<([^>]*)>", head)
                return (frm[0] if frm else None, rc)

        def stop(self):
                if self.proc.poll() is None:
                        self.proc.terminate()
                        try:
                                self.proc.wait(5)
                        except subprocess.TimeoutExpired:
                                self.proc.kill()
                                self.proc.wait()
                shutil.rmtree(self.dir, ignore_errors=True)
