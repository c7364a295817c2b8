"""A free local TCP port: the rendezvous of a launcher-less DeepSpeed process and of local sweeps."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A free local TCP port, so concurrent local runs do not collide on the launcher's default 29500."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
