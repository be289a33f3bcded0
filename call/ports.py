"""Loopback ports for the servers a process starts beside it: a free one, and waiting until one
listens. The relay (the nats-server of ``--workers``), the benchmarks and the tests start theirs
this way. No torch here: the relay imports it.
"""

from __future__ import annotations

import socket
import subprocess
import time


def free_loopback_port() -> int:
    """A port nothing listens on now (the kernel's pick: another process may still take it first)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_listening(port: int, process: subprocess.Popen | None = None, timeout: float = 20.0) -> bool:
    """``True`` once something accepts connections on loopback ``port``; ``False`` as soon as
    ``process`` (the server expected there) exits, or after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            if time.monotonic() > deadline or process is not None and process.poll() is not None:
                return False
            time.sleep(0.05)
