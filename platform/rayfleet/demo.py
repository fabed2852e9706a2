"""The quickstart: `make demo` (or `python -m rayfleet.demo [-o json]`).

Starts a real S3 protocol server on loopback for its own lifetime, imports the bundled digits
into it, trains `jobs/digits/train.yaml` data-parallel with 2 workers on an embedded Ray and
prints the validation accuracy and where the verified checkpoints are; then sweeps learning
rate, width and dropout with `jobs/digits/sweep.yaml` (Ray Tune, ASHA) and prints the trial
table and the best trial's checkpoint; last, serves that best model with `rayfleet serve`
(Ray Serve, Open Inference Protocol) and classifies the held-out digits over HTTP, printing
the served accuracy next to the offline one. Everything goes through the same commands a
user types: `rayfleet data import`, `rayfleet run`, `rayfleet sweep`, `rayfleet serve`.

The specs are the copies shipped in the package (`rayfleet.examples`), so the demo runs from
an installed rayfleet (`pip install 'rayfleet[demo]'`: the S3 server needs moto).

`-o json` prints one JSON document on stdout (everything else goes to stderr) with keys
storage, dataset (`data import -o json`), run (`run -o json`), checkpoints (URIs),
sweep (`sweep -o json`), served {accuracy, rows} and offline {accuracy}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

from rayfleet.errors import RayfleetError
from rayfleet.examples import spec_path
from rayfleet.lazy import lazy
from rayfleet.local import free_port
from rayfleet.specs import load_spec
from rayfleet.storage.checkpoints import list_checkpoints
from rayfleet.storage.filesystem import filesystem_for
from rayfleet.storage.s3server import loopback_s3

serving = lazy("rayfleet.serve.evaluate")  # numpy and the predict client: the last step only

BUCKET = "rayfleet-demo"


def _say(json_mode: bool, *lines: str) -> None:
    print(*lines, sep="\n", file=sys.stderr if json_mode else sys.stdout, flush=True)


def _rayfleet(*args: str, json_mode: bool = False) -> Any:
    """One CLI command as a user types it; with json_mode, its `-o json` document."""
    cmd = [sys.executable, "-m", "rayfleet.cli.main", *args]
    _say(json_mode, f"$ rayfleet {' '.join(args)}")
    if not json_mode:
        subprocess.run(cmd, check=True)
        return None
    proc = subprocess.run([*cmd, "-o", "json"], check=True, stdout=subprocess.PIPE, text=True)
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        # Say what came instead of the document (empty, or what printed before it), so a
        # failure here names its cause rather than only a decode position.
        raise RuntimeError(
            f"`rayfleet {' '.join(args)} -o json` exited {proc.returncode} but its stdout is "
            f"not one JSON document ({exc}); stdout was {len(proc.stdout)} chars: "
            f"{proc.stdout[:500]!r}"
        ) from None


def _serve_best_and_classify(job, json_mode: bool) -> dict[str, Any]:
    """Serve the sweep's best model (`rayfleet serve`), classify the held-out digits over
    HTTP, and compare with evaluating the same checkpoint offline."""
    served, offline = serving.serve_and_classify(
        str(spec_path("digits", "serve.yaml")),
        job.dataset_uri(),
        overrides=["spec.source.run=null", "spec.source.sweep=digits-sweep"],
        port=free_port(),
        echo=lambda line: _say(json_mode, line),
    )
    _say(
        json_mode,
        f"served accuracy over HTTP: {served.accuracy:.4f} on {served.rows} held-out digits "
        f"(offline evaluation: {offline.accuracy:.4f})",
    )
    return {
        "served": {"accuracy": served.accuracy, "rows": served.rows},
        "offline": {"accuracy": offline.accuracy},
    }


def demo(json_mode: bool = False) -> dict[str, Any]:
    """Run the quickstart; returns what `-o json` prints."""
    spec = spec_path("digits", "train.yaml")
    doc: dict[str, Any] = {"storage": f"s3://{BUCKET}"}
    with loopback_s3(bucket=BUCKET) as s3:
        os.environ["RAYFLEET_STORAGE"] = f"s3://{BUCKET}"
        _say(
            json_mode,
            f"S3 server on {s3.endpoint}, bucket s3://{BUCKET} (lives as long as this demo)",
        )
        doc["dataset"] = _rayfleet(
            "data", "import", "digits", f"s3://{BUCKET}/datasets/digits", json_mode=json_mode
        )
        doc["run"] = _rayfleet("run", str(spec), json_mode=json_mode)

        job = load_spec(spec)
        run = job.run_uri()
        doc["checkpoints"] = [
            str(run.at(path)) for _, path in list_checkpoints(filesystem_for(run), run.fs_path)
        ]
        _say(json_mode, f"\ncheckpoints in {run}:", *(f"  {c}" for c in doc["checkpoints"]), "")
        doc["sweep"] = _rayfleet(
            "sweep", str(spec_path("digits", "sweep.yaml")), json_mode=json_mode
        )
        _say(json_mode, "")
        doc.update(_serve_best_and_classify(job, json_mode))
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rayfleet.demo", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "-o",
        "--output",
        choices=["text", "json"],
        default="text",
        help="json: one JSON document on stdout, progress on stderr",
    )
    json_mode = parser.parse_args(argv).output == "json"
    try:
        doc = demo(json_mode)
    except subprocess.CalledProcessError as exc:
        return exc.returncode
    except RayfleetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    if json_mode:
        print(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
