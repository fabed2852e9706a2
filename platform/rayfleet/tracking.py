"""MLflow tracking for runs and sweeps, from the driver only, never in the training's way.

Every MLflow call goes through one background thread with a bounded queue: the training
thread only enqueues (and drops, counted, when the queue is full). Calls are retried with
backoff; once the server has failed a call past its retries (down, unreachable, too slow),
tracking turns itself off for the rest of the run and says so in ONE warning. So a tracking
server that is down or slow never fails or stalls training; at the end the driver waits at
most `CLOSE_S` for what is still queued.

Only drivers track: `rayfleet run` (the launcher wraps its event handler, which already
receives every epoch's metrics for recipes and plain Ray Train loops alike) and the sweep
driver (`rayfleet.tune.tracking`: a parent run per sweep launch, one child per trial). Trials
and workers never talk to MLflow.

Tracking is on when `spec.tracking.mlflow.uri` or `$MLFLOW_TRACKING_URI` is set.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rayfleet import record
from rayfleet.lazy import lazy
from rayfleet.retry import doubling, jittered, retrying
from rayfleet.specs.tracking import (
    DEFAULT_EXPERIMENT,
    EXPERIMENT_ENV,
    TRACKING_URI_ENV,
    TrackingSpec,
)
from rayfleet.storage.checkpoints import UNKNOWN_EPOCH, list_checkpoints, verify

log = logging.getLogger(__name__)
mlflow_client = lazy(
    "mlflow.tracking", purpose="MLflow tracking (spec.tracking)", install="mlflow-skinny"
)

QUEUE_SIZE = 10_000
ATTEMPTS = 4  # per call: then the server counts as down
WITHIN_S = 10.0  # per call, retries included
CLOSE_S = 15.0  # the most a driver waits at its end for queued calls
HTTP_TIMEOUT_S = "5"  # MLflow's own per-request timeout (its default is 120 s)
MAX_PARAM_LEN = 6000  # MLflow's limit on a param value
PARAMS_PER_BATCH = 100  # MLflow's limit per log_batch
# MLflow error codes that mean "this call is wrong", not "the server is unwell": no retry.
_CALLER_ERRORS = frozenset(
    {
        "INVALID_PARAMETER_VALUE",
        "RESOURCE_ALREADY_EXISTS",
        "RESOURCE_DOES_NOT_EXIST",
        "BAD_REQUEST",
        "INVALID_STATE",
        "PERMISSION_DENIED",
        "UNAUTHENTICATED",
    }
)
FINISHED, FAILED, KILLED = "FINISHED", "FAILED", "KILLED"


@dataclass(frozen=True)
class Target:
    uri: str
    experiment: str


def target_for(*specs: TrackingSpec | None, env: Mapping[str, str] = os.environ) -> Target | None:
    """Where to track: the first spec with an MLflow section decides (uri, else the env);
    None (tracking off) when no URI is set anywhere."""
    mlflow = next((s.mlflow for s in specs if s is not None and s.mlflow is not None), None)
    uri = (mlflow.uri if mlflow else None) or env.get(TRACKING_URI_ENV)
    if not uri:
        return None
    experiment = (mlflow.experiment if mlflow else None) or env.get(EXPERIMENT_ENV)
    return Target(uri=uri, experiment=experiment or DEFAULT_EXPERIMENT)


def flatten(doc: Any, prefix: str = "") -> dict[str, str]:
    """A spec as MLflow params: dotted keys, scalars as text, lists as JSON, None skipped.

    Values longer than MLflow's limit are cut (marked with '...') rather than refused, so one
    long entry never costs the run all its params."""
    out: dict[str, str] = {}
    if isinstance(doc, Mapping):
        if not doc and prefix:
            return out
        for key, value in doc.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if doc is None:
        return out
    text = json.dumps(doc) if isinstance(doc, (list, tuple)) else str(doc)
    if len(text) > MAX_PARAM_LEN:
        text = text[: MAX_PARAM_LEN - 3] + "..."
    out[prefix] = text
    return out


def numeric(metrics: Mapping[str, Any], skip: tuple[str, ...] = ("epoch",)) -> dict[str, float]:
    """The metrics MLflow can chart: finite numbers (bools included), `skip` left out."""
    out = {}
    for key, value in metrics.items():
        if key in skip or not isinstance(value, (int, float)):
            continue
        value = float(value)
        if math.isfinite(value):
            out[key] = value
    return out


def _caller_error(exc: BaseException) -> bool:
    return getattr(exc, "error_code", None) in _CALLER_ERRORS


Call = Callable[[Any, dict[str, str]], None]


class Tracker:
    """The one thread that talks to MLflow for a driver.

    Runs are named by handles the caller picks ("run", "trial:abc"); the MLflow run id is
    known only inside the thread, and calls for a run that could not be created are dropped.
    """

    def __init__(self, target: Target, *, attempts: int = ATTEMPTS, within_s: float = WITHIN_S):
        self.target = target
        self.attempts, self.within_s = attempts, within_s
        self.run_ids: dict[str, str] = {}
        self.dropped = 0
        self.down: str | None = None  # why tracking turned itself off
        self._queue: queue.Queue = queue.Queue(QUEUE_SIZE)
        self._experiment_id: str | None = None
        self._warned_call = False
        self._thread = threading.Thread(target=self._loop, name="rayfleet-mlflow", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------- the caller's side

    def submit(self, what: str, call: Call) -> None:
        """Queue `call(client, run_ids)`; never blocks."""
        if self.down is not None:
            self.dropped += 1
            return
        try:
            self._queue.put_nowait((what, call))
        except queue.Full:
            self.dropped += 1

    def start_run(
        self,
        handle: str,
        *,
        name: str,
        params: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
        parent: str | None = None,
    ) -> None:
        def call(client, runs):
            all_tags = {k: str(v) for k, v in (tags or {}).items()}
            if parent is not None:
                if parent not in runs:
                    return
                all_tags["mlflow.parentRunId"] = runs[parent]
            run = client.create_run(self._experiment_id, run_name=name, tags=all_tags)
            runs[handle] = run.info.run_id

        self.submit(f"create run {name}", lambda c, runs: self._retried(call, c, runs))
        if params:
            self.log_params(handle, params)

    def log_params(self, handle: str, params: Mapping[str, str]) -> None:
        items = sorted(params.items())
        for i in range(0, len(items), PARAMS_PER_BATCH):
            chunk = items[i : i + PARAMS_PER_BATCH]

            def call(client, runs, chunk=chunk):
                param = _entities().Param
                client.log_batch(runs[handle], params=[param(k, v) for k, v in chunk])

            self._for_run(handle, "log params", call)

    def log_metrics(self, handle: str, metrics: Mapping[str, float], step: int) -> None:
        if not metrics:
            return
        stamp = _now_ms()

        def call(client, runs):
            metric = _entities().Metric
            batch = [metric(k, v, stamp, step) for k, v in metrics.items()]
            client.log_batch(runs[handle], metrics=batch)

        self._for_run(handle, "log metrics", call)

    def set_tags(self, handle: str, tags: Mapping[str, Any]) -> None:
        def call(client, runs):
            tag = _entities().RunTag
            client.log_batch(runs[handle], tags=[tag(k, str(v)) for k, v in tags.items()])

        if tags:
            self._for_run(handle, "set tags", call)

    def log_dict(self, handle: str, doc: Any, path: str) -> None:
        self._for_run(handle, f"log {path}", lambda c, runs: c.log_dict(runs[handle], doc, path))

    def later(self, handle: str, what: str, produce: Callable[[], Call | None]) -> None:
        """Work done in the thread, not the caller's (reading storage, say): `produce()`
        returns the call to make, or None. Its own errors are warned about, not retried."""

        def call(client, runs):
            try:
                made = produce()
            except Exception as exc:  # noqa: BLE001 - tracking never fails the run
                log.warning("MLflow tracking: could not %s: %s", what, exc)
                return
            if made is not None:
                self._retried(made, client, runs)

        self._for_run(handle, what, call, retry=False)

    def end_run(self, handle: str, status: str = FINISHED) -> None:
        self._for_run(handle, "end run", lambda c, runs: c.set_terminated(runs[handle], status))

    def close(self, timeout_s: float = CLOSE_S) -> None:
        """Deliver what is queued, waiting at most `timeout_s`; then the one summary line
        if anything was lost."""
        try:
            self._queue.put((None, None), timeout=timeout_s)
        except queue.Full:
            pass
        self._thread.join(timeout_s)
        left = self._queue.qsize()
        if self._thread.is_alive():
            self.dropped += left
            if self.down is None:
                log.warning(
                    "MLflow tracking at %s: still busy after %.0f s at the end of the run; "
                    "%d call(s) not delivered",
                    self.target.uri,
                    timeout_s,
                    self.dropped,
                )
        elif self.down is not None and self.dropped:
            log.info("MLflow tracking: %d call(s) dropped while the server was down", self.dropped)

    # ------------------------------------------------------------------- the thread's side

    def _for_run(self, handle: str, what: str, call: Call, *, retry: bool = True) -> None:
        def guarded(client, runs):
            if handle in runs:  # a run that could not be created takes nothing more
                (self._retried(call, client, runs) if retry else call(client, runs))

        self.submit(what, lambda c, runs: guarded(c, runs))

    def _retried(self, call: Call, client, runs) -> None:
        retrying(
            on=lambda exc: not _caller_error(exc),
            wait=jittered(doubling(0.5, 4.0)),
            attempts=self.attempts,
            within_s=self.within_s,
        )(call, client, runs)

    def _connect(self):
        # Fail fast inside each call and retry here, with backoff and a deadline: MLflow's
        # own defaults (7 retries, 120 s timeout) would keep the queue stuck for minutes.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", HTTP_TIMEOUT_S)
        client = mlflow_client.MlflowClient(tracking_uri=self.target.uri)

        def experiment():
            found = client.get_experiment_by_name(self.target.experiment)
            if found is not None:
                return found.experiment_id
            try:
                return client.create_experiment(self.target.experiment)
            except Exception as exc:
                if getattr(exc, "error_code", None) == "RESOURCE_ALREADY_EXISTS":
                    return client.get_experiment_by_name(self.target.experiment).experiment_id
                raise

        self._experiment_id = retrying(
            on=lambda exc: not _caller_error(exc),
            wait=jittered(doubling(0.5, 4.0)),
            attempts=self.attempts,
            within_s=self.within_s,
        )(experiment)
        return client

    def _loop(self) -> None:
        client = None
        while True:
            what, call = self._queue.get()
            if call is None:
                return
            if self.down is not None:
                self.dropped += 1
                continue
            try:
                if client is None:
                    client = self._connect()
                call(client, self.run_ids)
            except Exception as exc:  # noqa: BLE001 - tracking never fails the run
                self._failed(what, exc)

    def _failed(self, what: str, exc: BaseException) -> None:
        summary = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else repr(exc)
        if _caller_error(exc):
            if not self._warned_call:
                self._warned_call = True
                log.warning("MLflow tracking: could not %s: %s", what, summary)
            return
        self.down = summary
        log.warning(
            "MLflow tracking at %s is off for the rest of this run: %s failed after %d "
            "attempts (%s); training goes on",
            self.target.uri,
            what,
            self.attempts,
            summary,
        )


def _entities():
    from mlflow import entities

    return entities


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


# ------------------------------------------------------------------ a TrainJob's run


def _status_of(doc: Mapping[str, Any] | None) -> str:
    status = (doc or {}).get("status")
    return {"SUCCEEDED": FINISHED, "FAILED": FAILED}.get(status or "", KILLED)


def verified_checkpoints(fs, run_uri) -> list[dict[str, Any]]:
    """Every checkpoint under a run that verifies against its manifest: epoch and URI."""

    out = []
    for epoch, path in list_checkpoints(fs, run_uri.fs_path):
        checked = verify(fs, path)
        if checked.ok:
            if epoch == UNKNOWN_EPOCH:  # Ray's own folder names: the manifest knows
                epoch = checked.manifest.get("meta", {}).get("epoch", epoch)
            out.append({"epoch": epoch, "uri": str(run_uri.at(path))})
    return out


class RunTracking:
    """The launcher's event handler with tracking: each epoch event's metrics go to MLflow
    (step = epoch), then the event goes on to the handler it wraps."""

    HANDLE = "run"

    def __init__(self, tracker: Tracker, job, notify: Callable[[dict[str, Any]], None]):
        self.tracker, self.job, self.notify = tracker, job, notify

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("type") == "epoch":
            try:
                self.tracker.log_metrics(
                    self.HANDLE, numeric(event.get("metrics") or {}), int(event["epoch"])
                )
            except (KeyError, TypeError, ValueError):
                pass
        self.notify(event)

    def finish(self, fs, run_uri) -> None:
        """The run's outcome: status, the verified checkpoints, the final record."""

        try:
            doc = record.read(fs, run_uri)
        except Exception as exc:  # noqa: BLE001 - tracking never fails the run
            log.warning("MLflow tracking: could not read the run record: %s", exc)
            doc = None
        result = (doc or {}).get("result") or {}
        tags = {
            "rayfleet.status": (doc or {}).get("status", "UNKNOWN"),
            "rayfleet.launches": (doc or {}).get("launches", ""),
        }
        if result.get("checkpointUri"):
            tags["rayfleet.checkpoint_uri"] = result["checkpointUri"]
        self.tracker.set_tags(self.HANDLE, tags)

        def checkpoints():
            found = verified_checkpoints(fs, run_uri)
            return lambda c, runs: c.log_dict(
                runs[self.HANDLE], {"checkpoints": found}, "checkpoints.json"
            )

        self.tracker.later(self.HANDLE, "list the verified checkpoints", checkpoints)
        if doc is not None:
            self.tracker.log_dict(self.HANDLE, doc, "record.json")
        self.tracker.end_run(self.HANDLE, _status_of(doc))
        self.tracker.close()


def for_run(job, notify: Callable[[dict[str, Any]], None]):
    """`notify`, wrapped to track the run when tracking is configured (else `notify` itself).
    Starts the MLflow run with the resolved spec as params; never blocks on MLflow."""
    target = target_for(job.spec.tracking)
    if target is None:
        return notify
    tracker = Tracker(target)
    spec = job.model_dump(mode="json", by_alias=True)["spec"]
    spec.pop("tracking", None)
    tracker.start_run(
        RunTracking.HANDLE,
        name=job.name,
        params=flatten(spec),
        tags={
            "rayfleet.kind": job.kind,
            "rayfleet.name": job.name,
            "rayfleet.run_uri": str(job.run_uri()),
            "rayfleet.spec_hash": job.spec_hash(),
        },
    )
    return RunTracking(tracker, job, notify)


def finish(handler, fs, run_uri) -> None:
    """End the tracked run of a launcher handler from `for_run` (no-op when untracked)."""
    if isinstance(handler, RunTracking):
        try:
            handler.finish(fs, run_uri)
        except Exception as exc:  # noqa: BLE001 - tracking never fails the run
            log.warning("MLflow tracking: could not finish the run: %s", exc)


# ------------------------------------------------------- results that describe a run


def attach(
    run_uri: str,
    doc: Mapping[str, Any],
    path: str,
    *,
    spec: TrackingSpec | None = None,
    metrics: Mapping[str, Any] | None = None,
    files: Sequence[str | os.PathLike] = (),
) -> bool:
    """Attach a result about a run (an evaluation, a compression) to that run's newest MLflow
    run, found by its `rayfleet.run_uri` tag (a sweep trial's run URI or a TrainJob's): `doc`
    as the artifact `path`, `metrics` as metrics, local `files` (plots) as artifacts. False
    when tracking is off or no such run was tracked; like all tracking, it never raises for
    MLflow's sake."""
    target = target_for(spec)
    if target is None:
        return False
    tracker = Tracker(target)
    found: list[str] = []

    def find(client, runs):
        hits = client.search_runs(
            [tracker._experiment_id],
            filter_string=f"tags.`rayfleet.run_uri` = '{run_uri}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if hits:
            runs["target"] = hits[0].info.run_id
            found.append(hits[0].info.run_id)

    tracker.submit("find the run", lambda c, runs: tracker._retried(find, c, runs))
    tracker.log_dict("target", dict(doc), path)
    if metrics:
        tracker.log_metrics("target", numeric(metrics), 0)
    for file in files:
        upload = lambda c, runs, f=str(file): c.log_artifact(runs["target"], f)  # noqa: E731
        tracker._for_run("target", f"log {file}", upload)
    tracker.close()
    return bool(found)
