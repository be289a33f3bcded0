"""``server.py --workers N``: N relay processes on one port, one per core, joined into one relay.

The kernel spreads connections over the processes (SO_REUSEPORT); the two peers of a call may
land on different ones, so the workers are nodes of a cluster: the ``--cluster`` given, or else a
``nats-server`` started here on a free loopback port for as long as the workers run (nothing else
to set up on one machine). A worker that dies is started again; SIGINT/SIGTERM stop them all.
No torch here: the relay imports it.
"""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from .ports import free_loopback_port, wait_until_listening
from .relay_log import log_event

NATS_BINARIES = ("nats-server", "/usr/sbin/nats-server")
"""Debian installs it in /usr/sbin, which a user's PATH often lacks."""


def nats_binary() -> str | None:
    return next((path for path in map(shutil.which, NATS_BINARIES) if path), None)


def without_workers(argv: list[str]) -> list[str]:
    """The command line less its ``--workers N`` (a worker is one process)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--workers":
            skip = True
        elif not arg.startswith("--workers="):
            kept.append(arg)
    return kept


def embedded_nats(port: int | None = None) -> tuple[subprocess.Popen, str]:
    """A ``nats-server`` on a loopback port (a free one unless given), once it listens, and its URL."""
    binary = nats_binary()
    if binary is None:
        raise SystemExit("--workers without --cluster starts a local nats-server, and none is installed: "
                         "apt-get install nats-server (or scripts/install-system-deps.sh), or give --cluster")
    port = port or free_loopback_port()
    process = subprocess.Popen([binary, "-a", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    if wait_until_listening(port, process, timeout=10):
        return process, f"nats://127.0.0.1:{port}"
    process.kill()
    raise SystemExit(f"the local nats-server ({binary}) did not start on port {port}")


def run_workers(script: Path, argv: list[str], workers: int, cluster: list[str]) -> int:
    """Start ``workers`` relays (``script`` with ``argv``) on the shared port and keep them running."""
    nats, urls = (None, cluster) if cluster else (lambda p: (p[0], [p[1]]))(embedded_nats())
    if nats is not None:
        log_event("embedded_nats", url=urls[0], pid=nats.pid)
    base = [sys.executable, str(script), *without_workers(argv), "--reuse-port", "--cluster", ",".join(urls)]
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    children = [subprocess.Popen([*base, "--worker", str(i)]) for i in range(workers)]
    log_event("workers", count=workers, pids=[child.pid for child in children])
    try:
        while not stopping:
            time.sleep(0.2)
            for i, child in enumerate(children):
                if child.poll() is not None and not stopping:
                    log_event("worker_restarted", logging.WARNING, worker=i, exit_code=child.returncode)
                    children[i] = subprocess.Popen([*base, "--worker", str(i)])
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
        if nats is not None:
            nats.terminate()
            nats.wait(10)
    return 0
