"""Local TCP ports: is one free, or find one (the demo, the monitor, the local Ray dashboard)."""

from __future__ import annotations

import socket


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether nothing listens on host:port (a bind succeeds)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def port_or_free(preferred: int, host: str = "127.0.0.1") -> int:
    """``preferred`` when it is free, else a port the system picks."""
    if port_free(preferred, host):
        return preferred
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
