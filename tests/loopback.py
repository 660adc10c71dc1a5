"""A free loopback port for the tests that start their own server or process group (on 127.0.0.1 only)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago (so concurrent runs do not collide on a fixed one)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
