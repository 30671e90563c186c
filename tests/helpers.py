"""Helpers the test modules share (one copy each): free ports, PNG bytes, small Serve actors."""

from __future__ import annotations

import io
import socket
from contextlib import ExitStack
from pathlib import Path

import numpy as np
from PIL import Image

# the repository (tests/ is one level below it)
REPO_ROOT = Path(__file__).resolve().parent.parent

# Serve actors small enough for several apps on a 2-core machine
SMALL = {"ray_actor_options": {"num_cpus": 0.25}}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct free ports on ``host`` (all held open together while they are picked)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]


def png_bytes(arr: np.ndarray) -> bytes:
    """A uint8 RGB array as PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()
