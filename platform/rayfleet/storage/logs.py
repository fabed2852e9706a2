"""Logs that outlive the cluster: a process's output copied to storage while it runs.

    <run>/logs/driver.<launch>.000000.log, driver.<launch>.000001.log, ...
    <run>/logs/worker-rank1.<launch>.000000.log, ...

Object stores cannot append, so a stream is a series of numbered segments: the shipper
collects what the process writes and, every couple of seconds (or at 1 MiB), puts what is new
as the next segment. Names sort in write order (the launch token is a hex clock, then the
sequence number), so reading a stream is listing and concatenating; following a live run is
listing again for segments not yet read. A stream is capped (RAYFLEET_LOG_CAP_MB, default
64 MiB per stream and launch): past the cap one last line says so and the rest stays in the
process's own log on its node.
"""

from __future__ import annotations

import io
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TextIO

import pyarrow.fs as pafs

from rayfleet.retry import poll
from rayfleet.storage.checkpoints import launch_token
from rayfleet.storage.filesystem import read_bytes, write_bytes

LOGS_DIR = "logs"
CAP_ENV = "RAYFLEET_LOG_CAP_MB"
_FLUSH_S = 2.0
_SEGMENT_BYTES = 1 << 20
_SEGMENT = re.compile(r"^(?P<stream>[a-z0-9-]+)\.(?P<launch>[0-9a-f]{12})\.(?P<seq>\d{6})\.log$")


def _cap_bytes() -> int:
    return int(float(os.environ.get(CAP_ENV, "64")) * (1 << 20))


class LogShipper:
    """Copies text written to it into numbered segments under `logs_path` (a background
    thread; `close` flushes the rest). Storage errors are swallowed: a log copy must never
    fail the process whose log it is; the process's own output is unaffected."""

    def __init__(self, fs: pafs.FileSystem, logs_path: str, stream: str) -> None:
        self.fs, self.prefix = fs, f"{logs_path}/{stream}.{launch_token()}"
        self._buffer = io.StringIO()
        self._lock = threading.Lock()
        self._seq = 0
        self._shipped = 0
        self._cap = _cap_bytes()
        self._capped = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"logs-{stream}")
        self._thread.start()

    def write(self, text: str) -> None:
        with self._lock:
            if self._capped:
                return
            self._buffer.write(text)
            full = self._buffer.tell() >= _SEGMENT_BYTES
        if full:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            text = self._buffer.getvalue()
            self._buffer = io.StringIO()
            if not text or self._capped:
                return
            data = text.encode(errors="replace")
            if self._shipped + len(data) > self._cap:
                keep = max(0, self._cap - self._shipped)
                data = data[:keep] + f"\n[log capped at {self._cap >> 20} MiB]\n".encode()
                self._capped = True
            path = f"{self.prefix}.{self._seq:06d}.log"
            self._seq += 1
            self._shipped += len(data)
        try:
            write_bytes(self.fs, path, data)
        except OSError:
            pass  # the next segment tries again; this part stays only in the local log

    def _run(self) -> None:
        while not self._stop.wait(_FLUSH_S):
            self.flush()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.flush()


class Tee(io.TextIOBase):
    """A text stream writing to `original` and to a shipper (for sys.stdout/sys.stderr)."""

    def __init__(self, original: TextIO, shipper: LogShipper) -> None:
        self.original, self.shipper = original, shipper

    def write(self, text: str) -> int:
        self.shipper.write(text)
        return self.original.write(text)

    def flush(self) -> None:
        self.original.flush()

    def isatty(self) -> bool:
        return self.original.isatty()

    def fileno(self) -> int:
        return self.original.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.original, "encoding", "utf-8")


class ship_output:
    """`with ship_output(fs, logs_path, "driver"):` copies this process's stdout and stderr
    (what Python writes to them) into the stream, restoring both on exit."""

    def __init__(self, fs: pafs.FileSystem, logs_path: str, stream: str) -> None:
        self.fs, self.logs_path, self.stream = fs, logs_path, stream

    def __enter__(self) -> LogShipper:
        self.shipper = LogShipper(self.fs, self.logs_path, self.stream)
        self.saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = Tee(sys.stdout, self.shipper), Tee(sys.stderr, self.shipper)
        return self.shipper

    def __exit__(self, *exc) -> None:
        sys.stdout, sys.stderr = self.saved
        self.shipper.close()


def segments(fs: pafs.FileSystem, logs_path: str, stream: str | None = None) -> list[str]:
    """Paths of a run's log segments in write order (one stream, or every stream)."""
    try:
        infos = fs.get_file_info(pafs.FileSelector(logs_path, allow_not_found=True))
    except FileNotFoundError:
        return []
    found = []
    for info in infos:
        m = _SEGMENT.match(info.base_name)
        if m and info.type == pafs.FileType.File and stream in (None, m["stream"]):
            found.append((m["stream"] != "driver", m["stream"], m["launch"], m["seq"], info.path))
    return [path for *_, path in sorted(found)]


def streams(fs: pafs.FileSystem, logs_path: str) -> list[str]:
    """The stream names a run has logs for (driver first)."""
    names = {_SEGMENT.match(p.rsplit("/", 1)[-1])["stream"] for p in segments(fs, logs_path)}
    return sorted(names, key=lambda name: (name != "driver", name))


def read_new(fs: pafs.FileSystem, logs_path: str, stream: str, seen: set[str]) -> Iterator[str]:
    """The text of the stream's segments not in `seen` (which is updated), in order."""
    for path in segments(fs, logs_path, stream):
        if path not in seen:
            seen.add(path)
            yield read_bytes(fs, path).decode(errors="replace")


def follow(
    fs: pafs.FileSystem,
    logs_path: str,
    stream: str,
    write: Callable[[str], None],
    finished: Callable[[], bool],
    *,
    interval: float = _FLUSH_S,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Write the stream's segments as they appear until `finished()` (checked before each
    read, so the last read after it turns true catches the final segments)."""
    seen: set[str] = set()

    def step() -> bool | None:
        done = finished()
        for text in read_new(fs, logs_path, stream, seen):
            write(text)
        return True if done else None

    poll(step, timeout=None, interval=interval, what=f"the end of {stream}'s log", sleep=sleep)
