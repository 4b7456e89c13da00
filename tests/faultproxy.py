"""A fault-injecting TCP proxy on loopback, for tests (and benchmarks) of backends that misbehave.

It forwards byte for byte between its clients and one target, and on command it:

- ``hang()``: stops forwarding in both directions but keeps every socket open, new ones included
  (the server "stops answering" as in a network partition; nothing is closed, nothing refused);
- ``drop(rate)``: closes a connection, both sides, at a random chunk of client data (a request)
  with probability ``rate``, so a request may or may not have reached the server;
- ``cut()``: closes every current connection at once;
- ``drop_at(n)``: closes the connection that carries the n-th chunk of client data from now
  (one fault, exactly where a test wants it; ``chunks`` counts the chunks forwarded);
- ``forward()``: back to normal.

One thread serves every connection through a selector. Chunks are forwarded as they arrive; on
loopback a blocking ``sendall`` of one chunk is immediate.
"""

from __future__ import annotations

import contextlib
import random
import selectors
import socket
import threading


class FaultProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1", seed: int = 0) -> None:
        self.target = (target_host, target_port)
        self._listen = socket.socket()
        self._listen.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listen.bind(("127.0.0.1", 0))
        self._listen.listen(64)
        self._listen.setblocking(False)
        self.port: int = self._listen.getsockname()[1]
        self._sel = selectors.DefaultSelector()
        self._peer: dict[socket.socket, socket.socket] = {}
        self._client: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._hang = False
        self._drop_rate = 0.0
        self._cut = False
        self._stop = False
        self.dropped = 0  # connections closed by drop() and drop_at()
        self.chunks = 0  # chunks of client data forwarded
        self._drop_at: int | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._serve, name="faultproxy", daemon=True)

    # ---------------------------------------------------------------- control

    def start(self) -> FaultProxy:
        self._sel.register(self._listen, selectors.EVENT_READ)
        self._sel.register(self._wake_r, selectors.EVENT_READ)
        self._thread.start()
        return self

    def forward(self) -> None:
        with self._lock:
            self._hang, self._drop_rate = False, 0.0

    def hang(self) -> None:
        with self._lock:
            self._hang = True

    def drop(self, rate: float) -> None:
        with self._lock:
            self._hang, self._drop_rate = False, rate

    def drop_at(self, n: int) -> None:
        with self._lock:
            self._drop_at = n

    def cut(self) -> None:
        with self._lock:
            self._cut = True
        self._wake_w.send(b"x")

    def stop(self) -> None:
        self._stop = True
        self._wake_w.send(b"x")
        self._thread.join(timeout=10)
        for s in list(self._peer):
            self._close(s)
        self._listen.close()
        self._wake_r.close()
        self._wake_w.close()
        self._sel.close()

    # ---------------------------------------------------------------- the loop

    def _close(self, s: socket.socket) -> None:
        peer = self._peer.pop(s, None)
        self._client.discard(s)
        for x in (s, peer):
            if x is None:
                continue
            self._peer.pop(x, None)
            self._client.discard(x)
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(x)
            with contextlib.suppress(OSError):
                x.close()

    def _accept(self) -> None:
        try:
            client, _ = self._listen.accept()
        except BlockingIOError:
            return
        try:
            server = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()  # the target is down: the client sees its connection closed
            return
        for s in (client, server):
            s.setblocking(True)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._peer[client], self._peer[server] = server, client
        self._client.add(client)
        self._sel.register(client, selectors.EVENT_READ)
        self._sel.register(server, selectors.EVENT_READ)

    def _serve(self) -> None:
        while not self._stop:
            for key, _ in self._sel.select(timeout=0.5):
                s = key.fileobj
                assert isinstance(s, socket.socket)
                if s is self._listen:
                    self._accept()
                    continue
                if s is self._wake_r:
                    with contextlib.suppress(OSError):
                        s.recv(64)
                    continue
                if s not in self._peer:
                    continue  # closed earlier in this round
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    self._close(s)
                    continue
                with self._lock:
                    hang, rate = self._hang, self._drop_rate
                    nth = False
                    if self._drop_at is not None and s in self._client and not hang:
                        self._drop_at -= 1
                        nth = self._drop_at <= 0
                        if nth:
                            self._drop_at = None
                if hang:
                    continue  # swallowed: the socket stays open, nothing comes back
                if nth or (rate and s in self._client and self._rng.random() < rate):
                    self.dropped += 1
                    self._close(s)
                    continue
                if s in self._client:
                    self.chunks += 1
                try:
                    self._peer[s].sendall(data)
                except OSError:
                    self._close(s)
            with self._lock:
                cut, self._cut = self._cut, False
            if cut:
                for s in list(self._client):
                    self._close(s)
