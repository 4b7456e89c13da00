"""A small NTP responder on loopback whose replies can be bad on purpose (tests only)."""

from __future__ import annotations

import socket
import struct
import threading
import time

_DELTA = 2_208_988_800


def _bits(t: float) -> int:
    return int((t + _DELTA) * 2**32) & 0xFFFF_FFFF_FFFF_FFFF


class FakeNtp:
    """``behaviour`` picks the reply: good, kod-RATE, kod-DENY, leap3, stratum16, wrong-origin,
    echo, zero-tx, short, other-port, silent, far (root distance too large), held (a transmit
    time 0.3 s after the receive time, on a loopback round trip of microseconds)."""

    def __init__(self, behaviour: str = "good", offset: float = 0.0) -> None:
        self.behaviour = behaviour
        self.offset = offset
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.other.bind(("127.0.0.1", 0))
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        self.other.close()

    def _serve(self) -> None:
        while not self._stop:
            try:
                request, peer = self.sock.recvfrom(1024)
            except OSError:
                return
            reply = self._reply(request)
            if reply is None:
                continue
            out = self.other if self.behaviour == "other-port" else self.sock
            out.sendto(reply, peer)

    def _reply(self, request: bytes) -> bytes | None:
        b = self.behaviour
        if b == "silent":
            return None
        if b == "echo":
            return request
        now = time.time() + self.offset
        leap, mode, stratum, ref_id = 0, 4, 2, struct.unpack("!I", socket.inet_aton("127.0.0.1"))[0]
        root_delay, root_disp = 0.001, 0.001
        if b.startswith("kod-"):
            stratum, ref_id = 0, int.from_bytes(b[4:].encode().ljust(4, b"\0"), "big")
        elif b == "leap3":
            leap = 3
        elif b == "stratum16":
            stratum = 16
        elif b == "far":
            root_disp = 2.0
        origin = struct.unpack("!Q", request[40:48])[0]
        if b == "wrong-origin":
            origin ^= 0xFFFF
        tx = 0 if b == "zero-tx" else _bits(now + (0.3 if b == "held" else 0))
        packet = struct.pack(
            "!BBbbIIIQQQQ",
            leap << 6 | 4 << 3 | mode,
            stratum,
            6,
            -20,
            int(root_delay * 2**16),
            int(root_disp * 2**16),
            ref_id,
            _bits(now - 10),
            origin,
            _bits(now),
            tx,
        )
        return packet[:20] if b == "short" else packet
