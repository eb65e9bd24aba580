# SPDX-License-Identifier: GPL-2.0-or-later
"""A throw-away DNS server for tests: a real unbound answering a test zone.

The zone is a list of resource records in presentation format, one per
line ("mx1.example.test. 300 IN A 192.0.2.1"); blank lines and lines
starting with '#' are ignored. unbound serves them as local data on
127.0.0.1:<port>, in the foreground, with its own configuration in a
temporary directory: no chroot, no privilege drop, no remote control, no
recursion. Every name outside the records answers NXDOMAIN (a static local
zone for "."), so tests never wait on the network; a name that exists with
other types answers NODATA.

As a module:

    with DnsServer(records, port) as dns:
        ... point the resolver at 127.0.0.1:dns.port ...

As a program (used by the C unit tests):

    python3 dnsserver.py --zone FILE --port N

prints "ready PORT" on stdout once the server answers, then runs until
SIGTERM/SIGINT or until its stdin reaches EOF (when started with
--stdin-eof), and cleans up. Exit status 77 means unbound is not installed;
1 means it did not come up (the reason is on stderr).
"""

import argparse
import ctypes
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

EXIT_SKIP = 77
# How long unbound gets to start answering before we give up.
START_TIMEOUT = 10.0


class DnsServerError(Exception):
    pass


def unbound_path():
    """Path of the unbound binary, or None when it is not installed."""
    for d in ('/usr/sbin', '/usr/local/sbin', '/sbin'):
        p = os.path.join(d, 'unbound')
        if os.access(p, os.X_OK):
            return p
    return shutil.which('unbound')


def free_port(host='127.0.0.1'):
    """A port that is currently free for both UDP and TCP on host."""
    for _ in range(50):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            u.bind((host, 0))
            port = u.getsockname()[1]
            try:
                t.bind((host, port))
            except OSError:
                continue
            return port
        finally:
            u.close()
            t.close()
    raise DnsServerError('no free port found')


def read_zone(path):
    records = []
    with open(path, encoding='utf-8') as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith('#'):
                continue
            records.append(line)
    return records


def _quote(s):
    if '"' in s or '\n' in s:
        raise DnsServerError('record may not contain quotes or newlines: %r' % s)
    return '"%s"' % s


def _query_packet(name, qtype=1):
    """A minimal DNS query (RFC 1035 4.1) with a random ID."""
    qid = random.randrange(0, 65536)
    header = struct.pack('!HHHHHH', qid, 0x0100, 1, 0, 0, 0)
    qname = b''.join(bytes([len(l)]) + l.encode('ascii')
                     for l in name.rstrip('.').split('.') if l) + b'\0'
    return qid, header + qname + struct.pack('!HH', qtype, 1)


def probe(port, host='127.0.0.1', timeout=0.2):
    """True when a DNS server answers a query on host:port (UDP)."""
    qid, pkt = _query_packet('probe.invalid')
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.settimeout(timeout)
        s.sendto(pkt, (host, port))
        data, _ = s.recvfrom(4096)
        return len(data) >= 12 and struct.unpack('!H', data[:2])[0] == qid
    except OSError:
        return False
    finally:
        s.close()


def _set_pdeathsig():
    # unbound must not outlive the process that started it, even on SIGKILL.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


class DnsServer:
    """unbound serving `records` on 127.0.0.1:port (a free port if None)."""

    def __init__(self, records, port=None, host='127.0.0.1'):
        self.records = list(records)
        self.host = host
        self.port = port
        self.dir = None
        self.proc = None

    def config_text(self):
        lines = [
            'server:',
            '    interface: %s' % self.host,
            '    port: %d' % self.port,
            '    do-ip4: yes',
            '    do-ip6: no',
            '    do-udp: yes',
            '    do-tcp: yes',
            '    do-daemonize: no',
            '    chroot: ""',
            '    username: ""',
            '    directory: "%s"' % self.dir,
            '    pidfile: ""',
            '    logfile: ""',
            '    use-syslog: no',
            '    verbosity: 0',
            '    num-threads: 1',
            '    so-reuseport: no',
            '    access-control: 127.0.0.0/8 allow',
            # Pure local data: no iterator upstream, no DNSSEC trust anchors.
            '    module-config: "iterator"',
            '    do-not-query-localhost: yes',
            '    cache-max-ttl: 0',
            '    cache-max-negative-ttl: 0',
            '    local-zone: "." static',
        ]
        for r in self.records:
            lines.append('    local-data: %s' % _quote(r))
        lines += [
            'remote-control:',
            '    control-enable: no',
        ]
        return '\n'.join(lines) + '\n'

    def start(self):
        exe = unbound_path()
        if not exe:
            raise FileNotFoundError('unbound is not installed')
        if self.port is None:
            self.port = free_port(self.host)
        self.dir = tempfile.mkdtemp(prefix='tlsgw-dns-')
        conf = os.path.join(self.dir, 'unbound.conf')
        with open(conf, 'w', encoding='utf-8') as f:
            f.write(self.config_text())
        checkconf = shutil.which('unbound-checkconf') or '/usr/sbin/unbound-checkconf'
        if os.access(checkconf, os.X_OK):
            r = subprocess.run([checkconf, conf], capture_output=True, text=True)
            if r.returncode != 0:
                self.stop()
                raise DnsServerError('bad unbound configuration: ' + (r.stdout + r.stderr).strip())
        self.proc = subprocess.Popen([exe, '-d', '-c', conf],
                                     stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE,
                                     preexec_fn=_set_pdeathsig)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors='replace').strip()
                self.proc = None
                self.stop()
                raise DnsServerError('unbound exited: ' + err)
            if probe(self.port, self.host):
                return self
            time.sleep(0.05)
        self.stop()
        raise DnsServerError('unbound did not answer on port %d' % self.port)

    def stop(self):
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            if self.proc.stderr:
                self.proc.stderr.close()
            self.proc = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False


def main():
    ap = argparse.ArgumentParser(description='Serve a test zone with unbound on 127.0.0.1.')
    ap.add_argument('--zone', required=True, help='file with one resource record per line')
    ap.add_argument('--port', type=int, default=0, help='UDP/TCP port (0 = pick a free one)')
    ap.add_argument('--stdin-eof', action='store_true',
                    help='also stop when stdin reaches EOF')
    args = ap.parse_args()

    if not unbound_path():
        print('unbound is not installed', file=sys.stderr)
        return EXIT_SKIP
    if not 0 <= args.port <= 65535:
        print('invalid port %d' % args.port, file=sys.stderr)
        return 1

    stop = []

    def on_signal(signum, frame):
        stop.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    _set_pdeathsig()

    try:
        server = DnsServer(read_zone(args.zone), args.port or None).start()
    except (OSError, DnsServerError) as e:
        print('dnsserver: %s' % e, file=sys.stderr)
        return 1
    try:
        print('ready %d' % server.port, flush=True)
        while not stop:
            if server.proc.poll() is not None:
                print('dnsserver: unbound exited', file=sys.stderr)
                return 1
            if args.stdin_eof:
                import select
                r, _, _ = select.select([sys.stdin], [], [], 0.2)
                if r and not os.read(sys.stdin.fileno(), 4096):
                    break
            else:
                time.sleep(0.2)
    finally:
        server.stop()
    return 0


if __name__ == '__main__':
    sys.exit(main())
