"""Serving an ASGI app from a background thread on a socket bound up front.

The simulator and the webhook receiver both run a uvicorn server inside the caller's process. Binding the
socket before starting means ``port=0`` works (the real port is known at once) and a busy port fails in the
caller, not in a thread.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

__all__ = ["BackgroundServer", "bind_socket"]


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening, non-blocking TCP socket on ``host:port`` (IPv6 when the host has a colon)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class BackgroundServer:
    """A ``uvicorn.Server`` serving ``sock`` from a daemon thread; owns the socket from then on."""

    def __init__(self, server: Any, sock: socket.socket, name: str) -> None:
        self.server = server
        self.sock = sock
        self.name = name
        self._thread: threading.Thread | None = None
        server.install_signal_handlers = lambda: None  # the host process owns signals

    def start(self, timeout: float = 10.0) -> None:
        """Start serving; return once the server accepts connections (RuntimeError if it cannot)."""
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, name=self.name, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not start")
            time.sleep(0.002)  # readiness of a real server starting in a thread (not a rate-limit wait)

    def stop(self) -> None:
        """Ask the server to exit, wait for its thread, close the socket. Idempotent."""
        request_exit = getattr(self.server, "request_exit", None)  # a server that can wake its loop at once
        if callable(request_exit):
            request_exit()
        else:
            self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.sock.close()
