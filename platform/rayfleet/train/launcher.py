"""Run a TrainJob on Ray Train: preflight, TorchTrainer, progress, and driver-level retries.

The order matters and is the point of this module:

1. everything that can be wrong with the input is checked before Ray starts (spec, storage
   preflight, dataset descriptor), so bad input fails in seconds with one line;
2. Ray Train's `FailureConfig` restarts the worker group after worker failures, and the loop
   resumes from the newest verified checkpoint (see `session.resume_checkpoint`);
3. errors Ray Train does not retry — the controller failing, e.g. when storage drops out
   while it writes its snapshot — are retried here, a bounded number of times, by relaunching
   the same run name once storage answers again. Each relaunch resumes; none starts over.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import tenacity

from rayfleet import record, tracking, usage
from rayfleet.data.layout import check_files, read_info
from rayfleet.embedded import ensure_ray
from rayfleet.errors import SpecError, StorageError, WorkFailedError
from rayfleet.lazy import lazy
from rayfleet.retry import RECONNECT, retrying
from rayfleet.specs import TrainJob
from rayfleet.storage.checkpoints import SPEC_HASH_KEY, newest_verified, prune
from rayfleet.storage.filesystem import filesystem_for
from rayfleet.storage.lease import Lease
from rayfleet.storage.preflight import preflight
from rayfleet.storage.uri import StorageURI
from rayfleet.train import waiting
from rayfleet.train.recipes import RECIPES, check_config, check_dataset
from rayfleet.train.session import worker_main

reporting = lazy("rayfleet.train.reporting")  # Ray Train's callback API: when a trainer is built

Event = dict[str, Any]
EventHandler = Callable[[Event], None]
log = logging.getLogger(__name__)

_POLL_S = 0.5
_STORAGE_WAIT_S = 120.0
# Ray Train's controller polls its workers every 2 s by default, and a run's fit() returns two
# polls and ~1 s after its loop ends: 5.0 s at 2 s, 3.0 s at 1 s, 2.0 s at 0.5 s (medians of 4
# fits each, 2 workers, this 2-core VM). Each poll is one actor call into every worker, which
# steady-state training pays for: at 0.5 s rayfleet ran at 0.974 of plain Ray Train's
# steps/s, at 1 s 1.002 and at 2 s 1.003 (tests/benchmarks/train_overhead.py's arms, medians
# of 6 rotating rounds). 1 s keeps most of the end-of-run cut at no measurable cost. Only a
# poll hanging for minutes marks a worker dead (RAY_TRAIN_WORKER_HEALTH_CHECK_TIMEOUT_S). The
# user's own setting wins.
HEALTH_CHECK_INTERVAL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
HEALTH_CHECK_INTERVAL_S = "1.0"


@dataclass
class RunResult:
    name: str
    run_uri: str
    checkpoint_uri: str | None
    epoch: int | None
    metrics: dict[str, Any]
    attempts: int
    elapsed_s: float
    skipped: list[str] = field(default_factory=list)
    # Seconds from process start to each start-up phase (StartupClock.PHASES).
    startup: dict[str, float] = field(default_factory=dict)


def _process_start() -> float:
    """When this process started (wall clock), from psutil (a Ray dependency)."""
    try:
        import psutil

        return psutil.Process().create_time()
    except Exception:  # noqa: BLE001 - without it, phases count from the launcher's start
        return time.time()


class StartupClock:
    """Where a run's start-up time goes, as it goes: each phase, when it begins, becomes a
    `phase` event (the CLI's live line) and an entry of RunResult.startup, in seconds since
    this process started (so "preflight" includes the interpreter and the imports). The
    last two come from the workers' own clocks: the loop entered (`worker` event) and its
    first step (first `step`, or first `epoch` for a loop that reports no steps)."""

    PHASES = ("preflight", "ray", "worker group", "training loop", "first step")

    def __init__(self, notify: EventHandler) -> None:
        self.t0 = _process_start()
        self.notify = notify
        self.marks: dict[str, float] = {}

    def mark(self, phase: str, at: float | None = None) -> None:
        if phase in self.marks:
            return
        self.marks[phase] = round((at or time.time()) - self.t0, 3)
        self.notify({"type": "phase", "phase": phase, "elapsedS": self.marks[phase]})

    def watching(self, handler: EventHandler) -> EventHandler:
        """`handler`, after marking the phases that worker events reveal."""

        def handle(event: Event) -> None:
            kind = event.get("type")
            if kind == "worker":
                self.mark("training loop", event.get("at"))
            elif kind in ("step", "epoch"):
                self.mark("first step", event.get("at"))
            handler(event)

        return handle


def _progress_channel():
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0)
    class ProgressChannel:
        """Events from rank 0 to the driver: step progress, epochs, resume notes, pids."""

        def __init__(self):
            self._events: list[Event] = []

        def push(self, event: Event) -> None:
            self._events.append(event)

        def drain(self) -> list[Event]:
            events, self._events = self._events, []
            return events

    # On the driver's own node: a channel on a node that is lost would take the progress
    # and the run record's epochs with it, though the run itself goes on.
    here = ray.get_runtime_context().get_node_id()
    return ProgressChannel.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False)
    ).remote()


class _Poller(threading.Thread):
    """Drains the channel into the handler while fit() blocks the main thread."""

    def __init__(self, channel, handler: EventHandler):
        super().__init__(daemon=True, name="rayfleet-progress")
        self.channel, self.handler = channel, handler
        self.stopping = threading.Event()

    def flush(self) -> None:
        import ray

        for event in ray.get(self.channel.drain.remote()):
            try:
                self.handler(event)
            except Exception as exc:  # noqa: BLE001 - one event's hiccup must not drop the rest
                log.warning("progress event %s not handled: %s", event.get("type"), exc)

    def run(self) -> None:
        while not self.stopping.wait(_POLL_S):
            self._safe_flush()

    def _safe_flush(self) -> None:
        try:
            self.flush()
        except Exception:  # noqa: BLE001 - a display hiccup must never fail the run
            log.debug("progress poll failed", exc_info=True)

    def close(self) -> None:
        """Stop polling and deliver what is still queued."""
        self.stopping.set()
        self.join(timeout=5)
        self._safe_flush()


def train_config(
    job: TrainJob, channel, sys_path: list[str], run_uri: StorageURI
) -> dict[str, Any]:
    """The plain-data config every worker's `session.worker_main` receives."""
    spec = job.spec
    recipe = RECIPES.get(spec.model.recipe or "")
    return {
        "target": recipe.target if recipe else spec.model.entrypoint,
        "sys_path": list(sys_path),
        "user_config": dict(spec.model.config),
        "run_uri": str(run_uri),
        "dataset_uri": str(job.dataset_uri()) if spec.dataset else None,
        "epochs": spec.run.epochs,
        "batch_size": spec.run.batch_size,
        "learning_rate": spec.run.learning_rate,
        "seed": spec.run.seed,
        "use_gpu": spec.scaling.use_gpu,
        "mixed_precision": spec.run.mixed_precision,
        "checkpoint_every": spec.checkpoint.every_epochs,
        "channel": channel,
        "spec_hash": job.spec_hash(),
    }


def build_trainer(
    job: TrainJob,
    channel,
    sys_path: list[str] | None = None,
    *,
    run_uri: StorageURI | None = None,
    callbacks: list | None = None,
    numbering: Any = None,
):
    """The TorchTrainer for a job: DDP (gloo on CPU, NCCL on GPU), storage, failure policy.

    The run lives at `run_uri` (default `<storage>/runs/<name>`; a sweep puts each trial's
    run inside its trial folder). `callbacks` are more Ray Train callbacks (e.g. Tune
    reporting), called after rayfleet's RunReporter, which stamps manifests on persisted
    checkpoints and sends rank 0's metrics to `channel`; `numbering` (a reporting.ReportEpochs
    of this run, made here when not given) is how they all tell which epoch a report is.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    # Read by the controller Ray Train starts in fit(), which gets the driver's value.
    os.environ.setdefault(HEALTH_CHECK_INTERVAL_ENV, HEALTH_CHECK_INTERVAL_S)

    spec = job.spec
    run_uri = run_uri or job.run_uri()
    parent, _, name = run_uri.fs_path.rpartition("/")
    config = train_config(job, channel, sys_path or [], run_uri)
    resources = {"CPU": spec.scaling.cpus_per_worker}
    wait = waiting.wait_bound(spec.failure.replacement_wait_seconds)
    waiting.apply(wait)
    if spec.scaling.gpus:
        resources["GPU"] = spec.scaling.gpus
    return TorchTrainer(
        worker_main,
        train_loop_config=config,
        torch_config=TorchConfig(backend="nccl" if spec.scaling.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            # Elastic (minWorkers set): Ray Train's (min, max) tuple; it restarts the worker
            # group on fewer workers after a node loss and grows it back when nodes return.
            num_workers=(spec.scaling.min_workers, spec.scaling.num_workers)
            if spec.scaling.elastic
            else spec.scaling.num_workers,
            elastic_resize_monitor_interval_s=spec.scaling.resize_check_seconds,
            use_gpu=spec.scaling.use_gpu,
            resources_per_worker=resources,
        ),
        run_config=RunConfig(
            name=name,
            storage_path=parent,
            storage_filesystem=filesystem_for(run_uri),
            failure_config=FailureConfig(
                max_failures=spec.failure.max_failures,
                # Waiting for room (a lost node's replacement) is bounded: see train.waiting.
                controller_failure_limit=wait.controller_failure_limit,
            ),
            checkpoint_config=CheckpointConfig(num_to_keep=spec.checkpoint.keep),
            callbacks=[
                reporting.RunReporter(
                    channel=channel,
                    spec_hash=job.spec_hash(),
                    epochs=job.epochs_planned(),
                    numbering=numbering or reporting.ReportEpochs(str(run_uri)),
                ),
                waiting.waiting_callback(channel, spec.scaling.fewest_workers, wait),
                *(callbacks or []),
            ],
        ),
    )


def retry_reason(exc: BaseException) -> str | None:
    """Why a failed fit() is worth relaunching, or None when it is not.

    Controller errors (Ray Train gives up on its own bookkeeping, e.g. storage dropped out
    while it wrote its snapshot) and worker failures that are all I/O errors are transient;
    a bug in the training loop is not, and retrying it would only repeat the failure.
    """
    from ray.train import ControllerError, WorkerGroupError

    if waiting.waited_too_long(exc):
        return None  # it waited failure.replacementWaitSeconds for room already
    if isinstance(exc, ControllerError):
        return f"controller error: {str(exc.controller_failure).splitlines()[0][:160]}"
    if isinstance(exc, WorkerGroupError) and exc.worker_failures:
        if all(_is_io_error(e) for e in exc.worker_failures.values()):
            first = next(iter(exc.worker_failures.values()))
            return f"storage error on workers: {str(first).splitlines()[0][:160]}"
    return None


def _is_io_error(exc: BaseException) -> bool:
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, (OSError, ConnectionError, TimeoutError)):
            return True
        exc = exc.__cause__ or getattr(exc, "cause", None)
        seen += 1
    return False


def _wait_for_storage(storage: StorageURI, notify: EventHandler) -> None:
    """Preflight `storage` until it answers (RECONNECT backoff), for up to _STORAGE_WAIT_S;
    then the last StorageError."""

    def waiting(state: tenacity.RetryCallState) -> None:
        notify({"type": "log", "message": f"waiting for storage: {state.outcome.exception()}"})

    retrying(on=StorageError, wait=RECONNECT, within_s=_STORAGE_WAIT_S, before_sleep=waiting)(
        preflight, storage
    )


def check_inputs(job: TrainJob) -> None:
    """Everything checkable before Ray starts: the recipe's config, storage preflight, then
    the dataset."""
    if job.spec.model.recipe:
        check_config(job.spec.model.recipe, job.spec.model.config)
    preflight(job.storage_uri())
    if (dataset := job.dataset_uri()) is not None:
        info = read_info(filesystem_for(dataset), dataset)
        check_files(filesystem_for(dataset), dataset, info)  # Parquet footers only: cheap
        check_dataset(job.spec.model.recipe or "", info)  # the recipe takes this data


def fit_with_retries(job: TrainJob, make_trainer: Callable[[], Any], notify: EventHandler):
    """fit() until it succeeds or fails for good: (attempts, the final error or None).

    Each relaunch builds a fresh trainer for the same run location, so it resumes from the
    newest verified checkpoint.
    """
    from ray.train import TrainingFailedError

    attempts = 0
    while True:
        attempts += 1
        try:
            make_trainer().fit()
            return attempts, None
        except TrainingFailedError as exc:
            reason = retry_reason(exc)
            if reason is None or attempts > job.spec.failure.max_driver_retries:
                return attempts, exc
            notify({"type": "log", "message": f"{reason}; relaunching run (retry {attempts})"})
            _wait_for_storage(job.storage_uri(), notify)


def _recording_epochs(
    fs, run_uri: StorageURI, notify: EventHandler, last: Event, tally: usage.BusyTally
) -> EventHandler:
    """Pass events on, and note each finished epoch in the run record as it happens, so a
    record read mid-run (or after the driver was killed) says how far the run got. `last`
    keeps the latest epoch event (the result of a run that checkpointed nothing); `tally`
    the workers' busy reports (`usage` events, kept here, not passed on), which go into the
    record with each epoch and with the run's end."""

    def handle(event: Event) -> None:
        if event.get("type") == "usage":
            tally.note(event)
            return
        if event.get("type") == "epoch":
            last.update(event)
            try:
                record.add_epoch(
                    fs,
                    run_uri,
                    epoch=event["epoch"],
                    metrics=event["metrics"],
                    workers=event.get("workers"),
                    busy=tally.reports(),
                )
            except (OSError, StorageError) as exc:
                # A storage blip must not stop training (or the progress line); the record
                # misses this epoch, and a resume fills such holes from its checkpoint.
                log.warning("could not update the run record: %s", exc)
        notify(event)

    return handle


@contextmanager
def busy_channel(note: EventHandler) -> Iterator[Any]:
    """A progress channel whose workers' busy reports (`usage` events) go to `note`, for a
    driver that is not `run_train_job`'s: the sweep driver hands it to every trial's trainer
    (its other events, the trials' epochs and logs, are Tune's business and dropped here)."""

    def handle(event: Event) -> None:
        if event.get("type") == "usage":
            note(event)

    poller = _Poller(_progress_channel(), handle)
    poller.start()
    try:
        yield poller.channel
    finally:
        poller.close()


def check_same_training(job: TrainJob, resume_from, previous: dict[str, Any] | None) -> None:
    """Refuse to resume a run's checkpoint written for a different training (another model,
    dataset or optimiser setting: see TrainJob.training_identity): the result would be
    neither run. Checkpoints from before spec hashes were recorded are accepted."""
    stored = (resume_from.meta if resume_from else {}).get(SPEC_HASH_KEY)
    if not stored or stored == job.spec_hash():
        return
    changed = ""
    if previous and isinstance(previous.get("spec"), dict):
        try:
            before = TrainJob.model_validate(previous["spec"]).training_identity()
            now = job.training_identity()
            keys = [
                f"{section}.{key}"
                for section in now
                for key in sorted(set(_flat(now[section])) | set(_flat(before[section])))
                if _flat(now[section]).get(key) != _flat(before[section]).get(key)
            ]
            changed = f" (changed: {', '.join(keys)})" if keys else ""
        except ValueError:
            changed = ""
    raise SpecError(
        f"run {job.name}: its checkpoint {resume_from.name} was trained from a different spec"
        f"{changed}; use another metadata.name for a new run, or rerun with --force to "
        "continue this run's weights under the new spec"
    )


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(value, dict):
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, item in value.items():
        out.update(_flat(item, f"{prefix}.{key}" if prefix else str(key)))
    return out


def run_train_job(
    job: TrainJob,
    *,
    on_event: EventHandler | None = None,
    sys_path: list[str] | None = None,
    verbose: bool = False,
    force: bool = False,
) -> RunResult:
    """Run a TrainJob to completion on local or connected Ray and return its final state.

    Raises BadInputError subclasses before anything starts (including when another driver
    holds the run's lease, or when the newest checkpoint belongs to a different training and
    `force` is not set), WorkFailedError when training fails past its retries. The run
    record in storage follows every step.
    """
    started = time.monotonic()
    notify = on_event or (lambda event: None)
    clock = StartupClock(notify)
    clock.mark("preflight")
    check_inputs(job)
    run_uri = job.run_uri()
    fs = filesystem_for(run_uri)
    lease = Lease(run_uri, what=f"run {job.name}")
    lease.acquire()
    try:
        resume_from, _ = newest_verified(fs, run_uri.fs_path)
        if not force:
            check_same_training(job, resume_from, record.read(fs, run_uri))
        record.write(fs, run_uri, job, status="RUNNING")
        notify = tracking.for_run(job, notify)  # MLflow, when spec.tracking or the env says so
        if resume_from is not None:
            record.note_resumed(
                fs, run_uri, epoch=resume_from.epoch, metrics=resume_from.meta.get("metrics", {})
            )

        clock.mark("ray")
        owns_ray = ensure_ray(verbose=verbose)
        last: Event = {}
        tally = usage.BusyTally()
        handler = clock.watching(_recording_epochs(fs, run_uri, notify, last, tally))
        poller = _Poller(_progress_channel(), handler)
        poller.start()
        try:
            clock.mark("worker group")
            attempts, error = fit_with_retries(
                job, lambda: build_trainer(job, poller.channel, sys_path), notify
            )
        finally:
            poller.close()
            if owns_ray:
                import ray

                ray.shutdown()
        if error is not None:
            wait_s = job.spec.failure.replacement_wait_seconds
            record.write(
                fs, run_uri, job, status="FAILED", busy=tally.reports(), error=str(error),
                attempts=attempts,
            )  # fmt: skip
            detail = str(error).strip().splitlines()[-1][:300]
            if waiting.waited_too_long(error):
                detail = waiting.gave_up_line(job.spec.scaling.fewest_workers, wait_s)
            raise WorkFailedError(
                f"run {job.name} failed after {attempts} attempt(s): {detail}; "
                f"logs: rerun with --verbose; state so far: {run_uri}"
            ) from error

        ref, skipped = newest_verified(fs, run_uri.fs_path)
        if ref is None and skipped:
            raise WorkFailedError(
                f"run {job.name} finished but none of its checkpoints verifies under {run_uri} "
                f"({skipped[0]}); rerun it to write a new one"
            )
        if ref is None:
            notify({"type": "log", "message": "no checkpoint reported: nothing to resume from"})
        else:
            keep = job.spec.checkpoint.keep
            for pruned in prune(fs, run_uri.fs_path, keep, protect=(ref.name,)):
                notify({"type": "log", "message": f"pruned {pruned.name} ({pruned.reason})"})
        result = RunResult(
            name=job.name,
            run_uri=str(run_uri),
            checkpoint_uri=str(run_uri.at(ref.path)) if ref else None,
            epoch=ref.epoch if ref else last.get("epoch"),
            metrics=ref.meta.get("metrics", {}) if ref else dict(last.get("metrics", {})),
            attempts=attempts,
            elapsed_s=time.monotonic() - started,
            skipped=[str(s) for s in skipped],
            startup=dict(clock.marks),
        )
        record.write(fs, run_uri, job, status="SUCCEEDED", busy=tally.reports(), result=result)
        return result
    finally:
        tracking.finish(notify, fs, run_uri)
        lease.release()
