"""Ports and child processes on this machine: what the CLI, the demo and the tests share.

Two kinds of free port. `free_port()` lets the kernel pick (fine for servers that bind at
once, like Ray's dashboard). `free_serve_port()` picks one for Ray Serve's HTTP proxy, which
binds only after Ray has started its own processes: a kernel-picked port sits in the
ephemeral range (32768+), where Ray's workers may take it first, so it is drawn from
21000-29999, above Ray's worker ports (10002-19999) and below the ephemeral range.
"""

from __future__ import annotations

import random
import signal
import socket
import subprocess


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_serve_port() -> int:
    rng = random.Random()
    for _ in range(200):
        port = rng.randint(21000, 29999)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 21000-29999")


def stop_gracefully(proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    """Ctrl-C a child we started (it shuts down what it owns), SIGKILL if it hangs."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
