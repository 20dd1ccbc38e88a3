# SPDX-License-Identifier: GPL-3.0-or-later
"""The misbehaving DNS server of bench/soak: a UDP+TCP front on a loopback address that relays
every query to the test kit's authoritative server (`milter-bench dns`) and, on the harness's
schedule, misbehaves the ways real resolvers see upstream servers misbehave.

Why a front instead of faults in the zone: the faults must hit every daemon the same way and at
a chosen time, whatever names they ask for, and switch on and off while the daemons run.

Modes (ChaosDns.mode):
  normal    relay the answer as it comes
  slow      relay it after SLOW_DELAY seconds (below the daemons' 2 s resolver timeout)
  timeout   swallow the query: the resolver times out (TCP: the connection stays silent)
  servfail  answer RCODE 2 (SERVFAIL) with the question and nothing else
  truncate  over UDP answer with TC=1 and no records, so the resolver must retry over TCP
            (which is relayed normally)
  gone      both sockets closed: UDP queries get ICMP port unreachable, TCP is refused
"""

import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

SLOW_DELAY = 1.2
MODES = ("normal", "slow", "timeout", "servfail", "truncate", "gone")


def question_end(query):
    """Offset just past the (first) question of a DNS message, or None if malformed."""
    i = 12
    while i < len(query):
        n = query[i]
        if n == 0:
            end = i + 1 + 4
            return end if end <= len(query) else None
        if n & 0xC0:
            return None
        i += 1 + n
    return None


def synth_reply(query, rcode=0, tc=False):
    """A reply to `query` with only its question: RCODE `rcode`, TC bit if `tc`."""
    if len(query) < 12:
        return None
    end = question_end(query)
    if end is None:
        return None
    qid, qflags = struct.unpack("!HH", query[:4])
    flags = 0x8000 | (qflags & 0x7900) | 0x0080 | (0x0200 if tc else 0) | (rcode & 0xF)
    return struct.pack("!HHHHHH", qid, flags, 1, 0, 0, 0) + query[12:end]


class ChaosDns:
    def __init__(self, listen, backend):
        self.listen = listen
        self.backend = backend
        self.mode = "normal"
        self.counts = {m: 0 for m in MODES}
        self.stopped = False
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=48)
        self._udp = None
        self._tcp = None

    def _open(self):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        u.bind(self.listen)
        u.settimeout(0.2)
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        t.bind(self.listen)
        t.listen(128)
        t.settimeout(0.2)
        self._udp, self._tcp = u, t

    def _close(self):
        for s in (self._udp, self._tcp):
            if s is not None:
                s.close()
        self._udp = self._tcp = None

    def start(self):
        self._open()
        threading.Thread(target=self._udp_loop, daemon=True).start()
        threading.Thread(target=self._tcp_loop, daemon=True).start()
        threading.Thread(target=self._gone_loop, daemon=True).start()

    def stop(self):
        self.stopped = True
        time.sleep(0.5)
        self._close()

    def _count(self, mode):
        with self._lock:
            self.counts[mode] += 1

    def _gone_loop(self):
        """Closes the sockets while the mode is `gone`, opens them again after."""
        while not self.stopped:
            gone = self.mode == "gone"
            with self._lock:
                if gone and self._udp is not None:
                    self._close()
                elif not gone and self._udp is None:
                    try:
                        self._open()
                    except OSError:
                        pass
            time.sleep(0.1)

    # --- UDP -------------------------------------------------------------------------------
    def _udp_loop(self):
        while not self.stopped:
            s = self._udp
            if s is None:
                time.sleep(0.05)
                continue
            try:
                query, peer = s.recvfrom(4096)
            except (socket.timeout, OSError):
                continue
            mode = self.mode
            self._count(mode)
            self._pool.submit(self._udp_answer, s, query, peer, mode)

    def _udp_answer(self, s, query, peer, mode):
        try:
            if mode == "timeout" or mode == "gone":
                return
            if mode == "servfail":
                reply = synth_reply(query, rcode=2)
            elif mode == "truncate":
                reply = synth_reply(query, tc=True)
            else:
                if mode == "slow":
                    time.sleep(SLOW_DELAY)
                reply = self._relay_udp(query)
            if reply is not None:
                s.sendto(reply, peer)
        except OSError:
            pass

    def _relay_udp(self, query):
        b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        b.settimeout(3)
        try:
            b.sendto(query, self.backend)
            return b.recv(65535)
        except OSError:
            return None
        finally:
            b.close()

    # --- TCP -------------------------------------------------------------------------------
    def _tcp_loop(self):
        while not self.stopped:
            s = self._tcp
            if s is None:
                time.sleep(0.05)
                continue
            try:
                conn, _ = s.accept()
            except (socket.timeout, OSError):
                continue
            self._pool.submit(self._tcp_conn, conn)

    @staticmethod
    def _read_exact(conn, n):
        buf = b""
        while len(buf) < n:
            chunk = conn.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return buf

    def _tcp_conn(self, conn):
        conn.settimeout(10)
        try:
            while True:
                head = self._read_exact(conn, 2)
                if head is None:
                    return
                query = self._read_exact(conn, struct.unpack("!H", head)[0])
                if query is None:
                    return
                mode = self.mode
                self._count(mode)
                if mode in ("timeout", "gone"):
                    # Silent until the client gives up (or 10 s).
                    self._read_exact(conn, 1)
                    return
                if mode == "servfail":
                    reply = synth_reply(query, rcode=2)
                else:
                    if mode == "slow":
                        time.sleep(SLOW_DELAY)
                    reply = self._relay_tcp(query)
                if reply is None:
                    return
                conn.sendall(struct.pack("!H", len(reply)) + reply)
        except OSError:
            pass
        finally:
            conn.close()

    def _relay_tcp(self, query):
        try:
            with socket.create_connection(self.backend, timeout=3) as b:
                b.sendall(struct.pack("!H", len(query)) + query)
                head = self._read_exact(b, 2)
                if head is None:
                    return None
                return self._read_exact(b, struct.unpack("!H", head)[0])
        except OSError:
            return None
