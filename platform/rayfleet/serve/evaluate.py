"""Classify a dataset split over HTTP and offline: the quickstart's last step, and the check
that serving changes nothing (served accuracy equals the offline evaluation)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from rayfleet.data.layout import read_info
from rayfleet.data.shards import read_shard
from rayfleet.errors import WorkFailedError
from rayfleet.local import stop_gracefully
from rayfleet.retry import poll
from rayfleet.serve.client import PredictClient, output
from rayfleet.serve.loading import load_model, resolve_source
from rayfleet.serve.protocol import build_request
from rayfleet.specs import load_spec
from rayfleet.storage.filesystem import filesystem_for
from rayfleet.storage.uri import StorageURI


@dataclass
class Evaluation:
    accuracy: float
    rows: int
    classes: np.ndarray  # predicted class per row
    logits: np.ndarray  # [rows, num_classes]


def read_split(dataset: StorageURI, split: str = "val"):
    """Every row of a split (features shaped as the dataset says, labels)."""

    fs = filesystem_for(dataset)
    info = read_info(fs, dataset)
    return read_shard(fs, dataset, split, 0, 1, info.feature_shape, equal=False)


def evaluate_served(
    url: str,
    model: str,
    features: np.ndarray,
    labels: np.ndarray,
    *,
    concurrency: int = 8,
    retries: int = 5,
) -> Evaluation:
    """One request per row, `concurrency` at a time (so dynamic batching groups them)."""

    with PredictClient(url, retries=retries) as client:
        signature = client.metadata(model)["inputs"][0]

        def one(i: int) -> tuple[int, list[float]]:
            response = client.infer(model, build_request(features[i : i + 1], signature))
            label = output(response, "predicted_class")["data"][0]
            return label, output(response, "logits")["data"]

        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            results = list(pool.map(one, range(len(labels))))
    classes = np.array([c for c, _ in results], dtype=np.int64)
    logits = np.array([row for _, row in results], dtype=np.float32)
    return Evaluation(float((classes == labels).mean()), len(labels), classes, logits)


def serve_and_classify(
    serve_spec: str,
    dataset: StorageURI,
    *,
    overrides: list[str] | None = None,
    port: int = 8000,
    command: list[str] | None = None,
    echo=print,
    timeout_s: float = 300.0,
) -> tuple[Evaluation, Evaluation]:
    """The quickstart's last step, as a user runs it: `rayfleet serve SPEC` in the background,
    the held-out split classified over HTTP, the same checkpoint evaluated offline, Ctrl-C.

    Returns (served, offline). `overrides` are `--set` values (e.g. serve a sweep's best);
    `command` is how to call the CLI (default `python -m rayfleet.cli.main`); the server's
    output lines go to `echo`.
    """
    import subprocess
    import sys
    import threading

    import httpx

    overrides = list(overrides or [])
    deployment = load_spec(serve_spec, overrides, expect="ModelDeployment")
    checkpoint = str(resolve_source(deployment).uri)
    split = read_split(dataset, "val")
    cmd = [*(command or [sys.executable, "-m", "rayfleet.cli.main"])]
    cmd += ["serve", str(serve_spec), "--port", str(port)]
    for item in overrides:
        cmd += ["--set", item]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def pump() -> None:  # the server's own lines, echoed as they come
        for line in proc.stdout:
            echo(line.rstrip())

    threading.Thread(target=pump, daemon=True).start()
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool | None:
        """The model answers /v2/health/ready (what a probe asks), or None to ask again."""
        if proc.poll() is not None:
            raise WorkFailedError(f"`{' '.join(cmd)}` exited ({proc.returncode}) before serving")
        try:
            return httpx.get(f"{url}/v2/health/ready", timeout=2.0).status_code == 200 or None
        except httpx.TransportError:
            return None

    try:
        poll(
            ready,
            timeout=timeout_s,
            interval=0.5,
            what=f"`{' '.join(cmd)}` to serve",
            on_timeout=lambda: WorkFailedError(f"`{' '.join(cmd)}` did not start serving"),
        )
        served = evaluate_served(url, deployment.model_name, split.features, split.labels)
    finally:
        stop_gracefully(proc)
    return served, evaluate_offline(checkpoint, split.features, split.labels)


def evaluate_offline(checkpoint: str, features: np.ndarray, labels: np.ndarray) -> Evaluation:
    """The same checkpoint loaded in this process (verified, weights only), one forward pass."""

    logits = load_model(checkpoint, name="offline").predict(features.astype(np.float32))
    classes = logits.argmax(axis=1)
    return Evaluation(float((classes == labels).mean()), len(labels), classes, logits)
