"""The quickstart: `make demo` (or `python -m rayfleet.demo`).

Starts a real S3 protocol server on loopback for its own lifetime, imports the bundled digits
into it, trains `jobs/digits/train.yaml` data-parallel with 2 workers on an embedded Ray and
prints the validation accuracy and where the verified checkpoints are; then sweeps learning
rate, width and dropout with `jobs/digits/sweep.yaml` (Ray Tune, ASHA) and prints the trial
table and the best trial's checkpoint; last, serves that best model with `rayfleet serve`
(Ray Serve, Open Inference Protocol) and classifies the held-out digits over HTTP, printing
the served accuracy next to the offline one. Everything goes through the same commands a
user types: `rayfleet data import`, `rayfleet run`, `rayfleet sweep`, `rayfleet serve`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from rayfleet.local import free_port
from rayfleet.storage.s3server import loopback_s3

BUCKET = "rayfleet-demo"
REPO = Path(__file__).resolve().parents[2]


def _rayfleet(*args: str) -> None:
    cmd = [sys.executable, "-m", "rayfleet.cli.main", *args]
    print(f"$ rayfleet {' '.join(args)}", flush=True)
    subprocess.run(cmd, check=True)


def _serve_best_and_classify(job) -> None:
    """Serve the sweep's best model (`rayfleet serve`), classify the held-out digits over
    HTTP, and compare with evaluating the same checkpoint offline."""
    from rayfleet.serve.evaluate import serve_and_classify

    served, offline = serve_and_classify(
        str(REPO / "jobs" / "digits" / "serve.yaml"),
        job.dataset_uri(),
        overrides=["spec.source.run=null", "spec.source.sweep=digits-sweep"],
        port=free_port(),
    )
    print(
        f"served accuracy over HTTP: {served.accuracy:.4f} on {served.rows} held-out digits "
        f"(offline evaluation: {offline.accuracy:.4f})",
        flush=True,
    )


def main() -> int:
    spec = REPO / "jobs" / "digits" / "train.yaml"
    with loopback_s3(bucket=BUCKET) as s3:
        os.environ["RAYFLEET_STORAGE"] = f"s3://{BUCKET}"
        print(f"S3 server on {s3.endpoint}, bucket s3://{BUCKET} (lives as long as this demo)")
        try:
            _rayfleet("data", "import", "digits", f"s3://{BUCKET}/datasets/digits")
            _rayfleet("run", str(spec))
            from rayfleet.specs import load_spec
            from rayfleet.storage.checkpoints import list_checkpoints
            from rayfleet.storage.filesystem import filesystem_for

            job = load_spec(spec)
            run = job.run_uri()
            print(f"\ncheckpoints in {run}:")
            for _, path in list_checkpoints(filesystem_for(run), run.fs_path):
                print(f"  {run.at(path)}")
            print()
            _rayfleet("sweep", str(REPO / "jobs" / "digits" / "sweep.yaml"))
            print()
            _serve_best_and_classify(job)
        except subprocess.CalledProcessError as exc:
            return exc.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
