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

Both what Python writes (sys.stdout/sys.stderr) and what native code writes to file
descriptors 1 and 2 (Ray's and PyTorch's C++ warnings, NCCL/Gloo, faulthandler) reach the copy.
The native side goes through a `tee` process per stream rather than a Python thread reading a
pipe: a C++ thread that writes to a full pipe while the main thread holds the GIL would
otherwise wait on a reader that needs the GIL. `tee` appends to a local spool file that the
shipper's thread reads from; the process's own output goes on to where it went before.
"""

from __future__ import annotations

import codecs
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import TextIO

from rayfleet.lazy import lazy
from rayfleet.retry import poll
from rayfleet.storage.checkpoints import launch_token
from rayfleet.storage.filesystem import read_bytes, write_bytes

pafs = lazy("pyarrow.fs")

LOGS_DIR = "logs"
CAP_ENV = "RAYFLEET_LOG_CAP_MB"
NATIVE_ENV = "RAYFLEET_NATIVE_LOGS"  # "0": copy only what Python writes
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
        self._sources: list[Callable[[], str]] = []
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

    @property
    def capped(self) -> bool:
        return self._capped

    def add_source(self, read: Callable[[], str]) -> None:
        """Also copy what `read()` returns (new text since its last call) at each flush."""
        self._sources.append(read)

    def flush(self) -> None:
        for read in self._sources:
            if text := read():
                self.write(text)
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

    def __init__(self, original: TextIO, shipper: LogShipper, fd: int | None = None) -> None:
        self.original, self.shipper, self.fd = original, shipper, fd

    def write(self, text: str) -> int:
        self.shipper.write(text)
        return self.original.write(text)

    def flush(self) -> None:
        self.original.flush()

    def isatty(self) -> bool:
        return self.original.isatty()

    def fileno(self) -> int:
        """The descriptor native writers (faulthandler, a subprocess) should use: the
        captured one when descriptors are routed, so what they write is copied too."""
        return self.fd if self.fd is not None else self.original.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.original, "encoding", "utf-8")


class NativeOutput:
    """File descriptors 1 and 2 routed through `tee -a SPOOL` back to where they pointed, so
    output written below Python reaches the spool; `read()` returns what is new in it.

    Python's own streams keep writing to the original descriptors directly (see
    `python_stream`), so the copy holds each line once and a terminal stays a terminal."""

    _WAIT_S = 2.0

    def __init__(self) -> None:
        fd, self.spool = tempfile.mkstemp(prefix="rayfleet-native-", suffix=".log")
        os.close(fd)
        self.originals: dict[int, int] = {}
        self._tees: list[subprocess.Popen] = []
        self._offset = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        try:
            for target in (1, 2):
                self._route(target)
        except OSError:
            self.close()
            raise

    def _route(self, target: int) -> None:
        original = os.dup(target)
        self.originals[target] = original
        read_end, write_end = os.pipe()
        try:
            # -i: Ctrl-C stops the process, not its output. The tee outlives nothing: it ends
            # at end of input, when the last holder of the pipe (this process) is gone.
            self._tees.append(
                subprocess.Popen(
                    ["tee", "-i", "-a", self.spool],
                    stdin=read_end,
                    stdout=original,
                    stderr=subprocess.DEVNULL,
                )
            )
            os.dup2(write_end, target)
        finally:
            os.close(read_end)
            os.close(write_end)

    def python_stream(self, target: int, like: TextIO) -> TextIO:
        """A text stream onto the original descriptor, with `like`'s encoding."""
        raw = open(self.originals[target], "wb", buffering=0, closefd=False)  # noqa: SIM115
        return io.TextIOWrapper(
            raw,
            encoding=getattr(like, "encoding", None) or "utf-8",
            errors=getattr(like, "errors", None) or "replace",
            write_through=True,
        )

    def read(self, *, discard: bool = False) -> str:
        """What tee appended since the last call. `discard`: empty the spool instead (the
        stream is capped), so it never grows past the cap plus one flush interval."""
        if discard:
            try:
                os.truncate(self.spool, 0)  # tee appends (O_APPEND): its next write starts at 0
            except OSError:
                pass
            self._offset = 0
            return ""
        try:
            with open(self.spool, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except OSError:
            return ""
        self._offset += len(data)
        return self._decoder.decode(data)

    def close(self) -> None:
        """Point 1 and 2 back where they were; the tees see end of input and finish."""
        for target, original in self.originals.items():
            os.dup2(original, target)
            os.close(original)
        self.originals = {}
        for tee in self._tees:
            try:
                tee.wait(self._WAIT_S)
            except subprocess.TimeoutExpired:  # a child still holds the pipe: stop copying
                tee.terminate()
                tee.wait()

    def remove(self) -> None:
        try:
            os.unlink(self.spool)
        except OSError:
            pass


def _native_output() -> NativeOutput | None:
    """Native capture where it can work: `tee` on PATH and real descriptors 1 and 2."""
    if os.environ.get(NATIVE_ENV) == "0" or shutil.which("tee") is None:
        return None
    try:
        os.fstat(1), os.fstat(2)
        return NativeOutput()
    except OSError:
        return None


class ship_output:
    """`with ship_output(fs, logs_path, "driver"):` copies this process's stdout and stderr
    (what Python writes to them and, where `NativeOutput` can, what native code writes to
    descriptors 1 and 2) into the stream, restoring everything on exit."""

    def __init__(self, fs: pafs.FileSystem, logs_path: str, stream: str) -> None:
        self.fs, self.logs_path, self.stream = fs, logs_path, stream

    def __enter__(self) -> LogShipper:
        self.shipper = LogShipper(self.fs, self.logs_path, self.stream)
        self.saved = sys.stdout, sys.stderr
        out, err = sys.stdout, sys.stderr
        self.native = _native_output() if _on_descriptors(out, err) else None
        if self.native is None:
            sys.stdout, sys.stderr = Tee(out, self.shipper), Tee(err, self.shipper)
            return self.shipper
        out.flush(), err.flush()
        native, shipper = self.native, self.shipper
        shipper.add_source(lambda: native.read(discard=shipper.capped))
        sys.stdout = Tee(self.native.python_stream(1, out), self.shipper, fd=1)
        sys.stderr = Tee(self.native.python_stream(2, err), self.shipper, fd=2)
        return self.shipper

    def __exit__(self, *exc) -> None:
        sys.stdout, sys.stderr = self.saved
        if self.native is not None:
            self.native.close()
        self.shipper.close()  # its last flush reads the spool after the tees finished
        if self.native is not None:
            self.native.remove()


def _on_descriptors(*streams: TextIO) -> bool:
    """Whether Python's streams write to descriptors 1 and 2 (not a capture object)."""
    try:
        return [s.fileno() for s in streams] == [1, 2]
    except (AttributeError, OSError, ValueError):
        return False


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
