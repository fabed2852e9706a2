"""`rayfleet data import` of a CSV far larger than its memory: rows/s and peak RSS per size.

Generates a numeric CSV (16 float features, an integer label with 10 classes) at each size,
imports it with the real CLI in a child process (`rayfleet data import FILE DEST --label y`)
and reads that child's own peak RSS from os.wait4's rusage (the CSV is written by another
child: Linux carries the spawning process's high-water RSS into the child's ru_maxrss across
exec, so a benchmark that had written the CSV itself reported its own ~270 MiB for any import
below that, even for /bin/true); /proc/PID/status is sampled every
0.1 s as well, for the highest RSS in each quarter of the run (flat: no upward trend). Streaming
means the peak RSS stays flat as the file grows; the sizes are reported side by side, median
of --repeats runs, with every run's figures and the load average, since other work on the
machine changes the speed.

    python tests/benchmarks/data_import.py [--sizes-mb 500,2000] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

FEATURES = 16
CHUNK_ROWS = 200_000


def write_csv(path: Path, target_bytes: int) -> int:
    """Append random chunks until the file reaches `target_bytes`; returns the row count."""
    rng = np.random.default_rng(0)
    rows = 0
    with pa.OSFile(str(path), "wb") as sink, pacsv.CSVWriter(sink, _schema()) as writer:
        while sink.tell() < target_bytes:
            x = rng.normal(size=(CHUNK_ROWS, FEATURES)).round(5)
            y = rng.integers(0, 10, CHUNK_ROWS)
            columns = {f"f{i}": pa.array(x[:, i]) for i in range(FEATURES)}
            writer.write_table(pa.table({**columns, "y": pa.array(y)}, schema=_schema()))
            rows += CHUNK_ROWS
    return rows


def write_csv_in_child(path: Path, target_bytes: int) -> int:
    """write_csv in a separate process, so that this one stays small (see the docstring)."""
    out = subprocess.run(
        [sys.executable, __file__, "--write-csv", str(path), str(target_bytes)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return int(out.split()[-1])


def _schema() -> pa.Schema:
    return pa.schema([*(pa.field(f"f{i}", pa.float64()) for i in range(FEATURES)),
                      pa.field("y", pa.int64())])  # fmt: skip


def _sample_rss(pid: int, samples: list[int]) -> None:
    """Append the child's RSS (MiB) every 0.1 s until it exits (Linux; nothing elsewhere)."""
    while True:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return
        rss = [line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")]
        if not rss:  # a zombie: exited, not yet reaped
            return
        samples.append(int(rss[0]) // 1024)
        time.sleep(0.1)


def import_once(csv: Path, dest: Path, *extra: str) -> tuple[float, float, dict, list[int], float]:
    """(seconds, peak RSS in MiB, the CLI's JSON, RSS samples, CPU seconds) of one import in
    a fresh process. CPU seconds (user + system) move less than wall time when other work
    shares the machine."""
    shutil.rmtree(dest, ignore_errors=True)
    command = [sys.executable, "-m", "rayfleet", "data", "import", str(csv), str(dest),
               "--label", "y", "-o", "json", *extra]  # fmt: skip
    started = time.monotonic()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    samples: list[int] = []
    sampler = threading.Thread(target=_sample_rss, args=(child.pid, samples), daemon=True)
    sampler.start()
    out = child.stdout.read()
    err = child.stderr.read()
    sampler.join()
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.monotonic() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"import failed ({child.returncode}): {err.decode()[-2000:]}")
    doc = {} if "--help" in extra else json.loads(out)
    return seconds, usage.ru_maxrss / 1024, doc, samples, usage.ru_utime + usage.ru_stime


def quarters(samples: list[int]) -> list[int]:
    """The highest sampled RSS in each quarter of a run."""
    n = len(samples)
    return [max(samples[i * n // 4 : (i + 1) * n // 4], default=0) for i in range(4)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes-mb", default="500,2000", help="CSV sizes in MB, comma-separated")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="20 MB and 80 MB, one run each")
    p.add_argument("--workdir", default=None, help="where to put the CSVs (default: a tmp dir)")
    p.add_argument("--write-csv", nargs=2, metavar=("PATH", "BYTES"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.write_csv:  # the child of write_csv_in_child
        print(write_csv(Path(args.write_csv[0]), int(args.write_csv[1])))
        return 0
    sizes = [20, 80] if args.quick else [int(s) for s in args.sizes_mb.split(",")]
    repeats = 1 if args.quick else args.repeats

    work = Path(args.workdir or tempfile.mkdtemp(prefix="rayfleet-import-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    results = []
    # The same process printing --help: interpreter, pyarrow and the CLI, before any data.
    start_s, start_rss, _, _, _ = import_once(work / "none.csv", work / "none", "--help")
    print(json.dumps({"startup_s": round(start_s, 1), "startup_rss_mib": round(start_rss)}))
    try:
        for mb in sizes:
            csv = work / f"table-{mb}mb.csv"
            rows = write_csv_in_child(csv, mb * 1_000_000)
            load = os.getloadavg()[0]
            runs = [import_once(csv, work / f"ds-{mb}") for _ in range(repeats)]
            seconds = statistics.median(r[0] for r in runs)
            rss = statistics.median(r[1] for r in runs)
            doc = runs[-1][2]
            assert doc["rows"]["train"] + doc["rows"]["val"] == rows, (doc, rows)
            results.append(
                {
                    "csv_mb": round(csv.stat().st_size / 1e6),
                    "rows": rows,
                    "seconds": round(seconds, 1),
                    "rows_per_s": round(rows / seconds),
                    "peak_rss_mib": round(rss),
                    "runs": repeats,
                    "seconds_each": [round(r[0], 1) for r in runs],
                    "cpu_seconds_each": [round(r[4], 1) for r in runs],
                    "peak_rss_mib_each": [round(r[1]) for r in runs],
                    "sampled_rss_mib_by_quarter": [quarters(r[3]) for r in runs],
                    "load_avg_before": round(load, 2),
                    "load_avg_after": round(os.getloadavg()[0], 2),
                }
            )
            csv.unlink()
            shutil.rmtree(work / f"ds-{mb}", ignore_errors=True)
            print(json.dumps(results[-1]), flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nstart-up (--help): {start_s:.1f} s, {start_rss:.0f} MiB (included below); "
          f"this process's own peak: {own:.0f} MiB (a floor under every figure)")  # fmt: skip
    print("size      rows         rows/s     peak RSS")
    for r in results:
        print(f"{r['csv_mb']:>5} MB  {r['rows']:>11,}  {r['rows_per_s']:>9,}  "
              f"{r['peak_rss_mib']:>6} MiB")  # fmt: skip
    growth = results[-1]["peak_rss_mib"] / results[0]["peak_rss_mib"]
    rows_ratio = results[-1]["rows"] / results[0]["rows"]
    print(f"peak RSS {results[-1]['csv_mb']} MB / {results[0]['csv_mb']} MB: {growth:.2f}x "
          f"for {rows_ratio:.1f}x the rows (flat: about 1)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
