"""A TCP proxy on loopback that a test can cut or stall, to fake network faults."""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target, in a thread.

    ``cut()`` closes every connection and refuses new ones (a dead network
    path); ``stall()`` keeps connections open but forwards nothing (a silent
    one); ``restore()`` goes back to normal.
    """

    def __init__(self, target_port: int, *, port: int = 0, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port))
        self._listener.listen(64)
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._listener, selectors.EVENT_READ, None)
        self._peers: dict[socket.socket, socket.socket] = {}
        self._mode = "open"
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="tcp-proxy")
        self.connections = 0

    def __enter__(self) -> TcpProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed.set()
        self._thread.join(5)
        self._drop_all()
        self._listener.close()

    def cut(self) -> None:
        with self._lock:
            self._mode = "cut"
            self._drop_all()

    def stall(self) -> None:
        with self._lock:
            self._mode = "stall"

    def restore(self) -> None:
        with self._lock:
            self._mode = "open"

    def _drop_all(self) -> None:
        for sock in list(self._peers):
            self._drop(sock)

    def _drop(self, sock: socket.socket) -> None:
        peer = self._peers.pop(sock, None)
        for s in (sock, peer):
            if s is None:
                continue
            self._peers.pop(s, None)
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(s)
            with contextlib.suppress(OSError):
                s.close()

    def _run(self) -> None:
        while not self._closed.is_set():
            for key, _ in self._sel.select(timeout=0.05):
                with self._lock:
                    mode = self._mode
                    if key.fileobj is self._listener:
                        self._accept(mode)
                        continue
                    if mode == "stall":
                        continue
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    peer = self._peers.get(sock)
                    if peer is None:
                        continue
                    try:
                        data = sock.recv(65536)
                        if not data:
                            raise OSError("closed")
                        peer.setblocking(True)
                        peer.sendall(data)
                        peer.setblocking(False)
                    except OSError:
                        self._drop(sock)
            if self._mode == "stall":
                self._closed.wait(0.02)  # data waits in the kernel; don't spin

    def _accept(self, mode: str) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        if mode == "cut":
            client.close()
            return
        try:
            upstream = socket.create_connection(self.target, timeout=2)
        except OSError:
            client.close()
            return
        for s in (client, upstream):
            s.setblocking(False)
        self._peers[client] = upstream
        self._peers[upstream] = client
        self._sel.register(client, selectors.EVENT_READ, None)
        self._sel.register(upstream, selectors.EVENT_READ, None)
        self.connections += 1
