"""Logs copied to storage as numbered segments (storage.logs), on the local filesystem."""

from __future__ import annotations

import os
import sys
import threading

import pyarrow.fs as pafs
import pytest

from rayfleet.storage import logs

pytestmark = pytest.mark.unit
FS = pafs.LocalFileSystem()


def test_output_is_copied_in_order_and_the_process_still_sees_it(tmp_path, capsys):
    path = str(tmp_path / "logs")
    with logs.ship_output(FS, path, "driver") as shipper:
        print("first line")
        shipper.flush()  # a segment boundary, as the timer makes one
        print("second line", file=sys.stderr)
    assert "first line" in capsys.readouterr().out
    names = [p.rsplit("/", 1)[-1] for p in logs.segments(FS, path)]
    assert len(names) == 2 and names == sorted(names)
    text = "".join(logs.read_new(FS, path, "driver", set()))
    assert text == "first line\nsecond line\n"
    assert logs.streams(FS, path) == ["driver"]


def test_streams_list_the_driver_first_and_read_new_skips_what_was_read(tmp_path):
    path = str(tmp_path / "logs")
    for stream in ("worker-rank1", "driver", "worker-rank0"):
        shipper = logs.LogShipper(FS, path, stream)
        shipper.write(f"{stream} says hi\n")
        shipper.close()
    assert logs.streams(FS, path) == ["driver", "worker-rank0", "worker-rank1"]
    seen: set[str] = set()
    assert list(logs.read_new(FS, path, "worker-rank0", seen)) == ["worker-rank0 says hi\n"]
    assert list(logs.read_new(FS, path, "worker-rank0", seen)) == []


def test_a_stream_is_capped_with_one_line_saying_so(tmp_path, monkeypatch):
    monkeypatch.setenv(logs.CAP_ENV, str(100 / (1 << 20)))  # 100 bytes
    path = str(tmp_path / "logs")
    shipper = logs.LogShipper(FS, path, "driver")
    shipper.write("x" * 80 + "\n")
    shipper.flush()
    shipper.write("y" * 80 + "\n")
    shipper.flush()
    shipper.write("never stored\n")
    shipper.close()
    text = "".join(logs.read_new(FS, path, "driver", set()))
    assert text.startswith("x" * 80 + "\n" + "y" * 19)
    assert text.endswith("[log capped at 0 MiB]\n") and "never stored" not in text


def test_a_store_that_fails_never_fails_the_writer(tmp_path):
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("a file where the logs folder should be")
    shipper = logs.LogShipper(FS, str(blocked), "driver")
    shipper.write("lost, not fatal\n")
    shipper.close()  # no exception


def test_follow_prints_segments_as_they_appear_until_the_run_ends(tmp_path):
    path = str(tmp_path / "logs")
    shipper = logs.LogShipper(FS, path, "driver")
    written: list[str] = []
    state = {"polls": 0}
    done = threading.Event()

    def finished() -> bool:
        state["polls"] += 1
        if state["polls"] == 2:
            shipper.write("epoch 1\n")
            shipper.flush()
        if state["polls"] == 3:
            shipper.write("done\n")
            shipper.close()
            done.set()
        return done.is_set()

    logs.follow(FS, path, "driver", written.append, finished, interval=0, sleep=lambda _: None)
    assert "".join(written) == "epoch 1\ndone\n"


NATIVE_WRITER = """
import os, subprocess, sys
import pyarrow.fs as pafs
from rayfleet.storage import logs

with logs.ship_output(pafs.LocalFileSystem(), sys.argv[1], "driver"):
    print("from python")
    os.write(1, b"from fd 1\\n")
    os.write(2, b"from fd 2\\n")
    subprocess.run(["sh", "-c", "echo from a child"], check=True)
    print("to stderr", file=sys.stderr)
print("after the block")
"""


@pytest.mark.parametrize("native", ["1", "0"])
def test_native_writes_to_descriptors_are_copied_once_and_still_reach_the_process_output(
    tmp_path, native
):
    """What C/C++ code and child processes write to fd 1 and 2 (not through sys.stdout)
    reaches the stored log too, each line once; the process's own stdout and stderr keep
    every line, on the stream it was written to. RAYFLEET_NATIVE_LOGS=0: Python's only."""
    import subprocess

    path = str(tmp_path / "logs")
    done = subprocess.run(
        [sys.executable, "-c", NATIVE_WRITER, path],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, logs.NATIVE_ENV: native},
    )
    assert done.returncode == 0, done.stderr
    # Python's lines go straight out, the others through tee: each stream's set, not order.
    out = done.stdout.splitlines()
    assert sorted(out[:-1]) == ["from a child", "from fd 1", "from python"]
    assert out[-1] == "after the block"  # the tees finished before the block ended
    assert sorted(done.stderr.splitlines()) == ["from fd 2", "to stderr"]
    stored = "".join(logs.read_new(FS, path, "driver", set())).splitlines()
    python_lines = ["from python", "to stderr"]
    native_lines = ["from fd 1", "from fd 2", "from a child"] if native == "1" else []
    assert sorted(stored) == sorted(python_lines + native_lines)


def test_native_spool_is_emptied_once_the_stream_is_capped():
    native = logs.NativeOutput()
    try:
        with open(native.spool, "ab") as f:  # what tee would append
            f.write(b"a line\n")
        assert native.read() == "a line\n"
        with open(native.spool, "ab") as f:
            f.write(b"x" * 1000)
        assert native.read(discard=True) == ""
        assert os.path.getsize(native.spool) == 0
        with open(native.spool, "ab") as f:
            f.write(b"next\n")
        assert native.read() == "next\n"
    finally:
        native.close()
        native.remove()
