"""What a per-worker training loop can ask rayfleet for: its data, where to resume, how to report.

Built-in recipes and user entrypoints (`model.entrypoint: pkg.mod:fn`) use the same helpers,
so a user loop gets verified checkpoints and exact resume without reimplementing them:

    from rayfleet.train import session

    def train(config):
        ctx = session.context()
        shard = session.dataset_shard("train")
        start = 0
        if (resume := session.resume_checkpoint()) is not None:
            state = torch.load(resume.path / "state.pt", weights_only=True)
            start = resume.epoch + 1
        for epoch in range(start, ctx.epochs):
            ...
            session.report({"loss": loss}, epoch=epoch, checkpoint_dir=folder_on_rank0_or_None)

`report` hashes the checkpoint folder into a manifest before Ray Train uploads it, and
`resume_checkpoint` picks the newest checkpoint that verifies (logging the ones it skipped),
downloads it and verifies the local copy. `checkpoint_if_preempted`, called after every step,
writes a just-in-time checkpoint when a node of the run is about to be preempted (see
train.preemption); such a checkpoint resumes at its step (`Resume.step`), not the next epoch.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rayfleet.data.layout import read_info
from rayfleet.data.shards import read_shard
from rayfleet.storage.checkpoints import (
    SPEC_HASH_KEY,
    checkpoint_dir_name,
    download_verified,
    launch_token,
    newest_verified,
    write_manifest,
)
from rayfleet.storage.filesystem import filesystem_for
from rayfleet.storage.logs import LOGS_DIR, ship_output
from rayfleet.storage.uri import StorageURI, parse_uri
from rayfleet.train import busy
from rayfleet.train.preemption import (
    POSITION_KEY,
    NoticeWatch,
    continues_at,
    describe,
    save_and_report,
)

_PROGRESS_INTERVAL_S = 0.5


@dataclass
class Resume:
    """A verified checkpoint copied to local disk."""

    path: Path
    epoch: int
    meta: dict[str, Any]

    @property
    def step(self) -> int:
        """Steps of `epoch` done: 0 for an epoch's own checkpoint (resume at the next epoch),
        more for a just-in-time checkpoint written mid-epoch (resume in `epoch`)."""
        return int((self.meta.get(POSITION_KEY) or {}).get("step", 0))

    @property
    def next_epoch(self) -> int:
        """The epoch a loop continues with."""
        return continues_at(self.epoch, self.meta)

    def first_step(self, world_size: int) -> int:
        """The step of `next_epoch` to continue at. A different world size shards the data
        differently, so the same rows can't be skipped: the same share of the epoch is."""
        step = self.step
        written = int((self.meta.get(POSITION_KEY) or {}).get("worldSize", world_size))
        if not step or written == world_size:
            return step
        return step * written // world_size


@dataclass
class WorkerContext:
    """Everything a loop needs about its run; built once per worker by the launcher."""

    rank: int
    world_size: int
    run_uri: StorageURI
    dataset_uri: StorageURI | None
    epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    use_gpu: bool
    mixed_precision: str
    checkpoint_every: int
    config: dict[str, Any]
    channel: Any = None  # ProgressChannel actor handle, or None
    spec_hash: str = ""  # TrainJob.spec_hash(): stored in every manifest (resume checks it)
    token: str = field(default_factory=launch_token)  # names this worker group's checkpoints
    _resume: Resume | None = None
    _resume_resolved: bool = False
    _last_progress: float = 0.0
    _scratch: list = field(default_factory=list)
    _watch: NoticeWatch | None = None
    _busy: busy.BusySampler | None = None  # this worker's busy time (rayfleet.usage)

    @property
    def is_leader(self) -> bool:
        return self.rank == 0

    def should_checkpoint(self, epoch: int) -> bool:
        """Every N epochs, and always the last one (final weights are always kept)."""
        return (epoch + 1) % self.checkpoint_every == 0 or epoch + 1 == self.epochs


_CTX: WorkerContext | None = None


def _set_context(ctx: WorkerContext | None) -> None:
    global _CTX
    _CTX = ctx


def context() -> WorkerContext:
    if _CTX is None:
        raise RuntimeError(
            "rayfleet.train.session is only available inside a rayfleet training loop"
        )
    return _CTX


def emit(event: dict[str, Any], *, wait_s: float | None = None) -> None:
    """Send an event to the driver (fire-and-forget, or waiting up to `wait_s` for it to
    arrive); a no-op without a channel."""
    ctx = context()
    if ctx.channel is not None:
        sent = ctx.channel.push.remote({"rank": ctx.rank, "at": time.time(), **event})
        if wait_s:
            import ray

            ray.wait([sent], timeout=wait_s)


def log(message: str) -> None:
    """A line for the user, shown by the driver (and in the worker's own log)."""
    print(f"[rayfleet rank {context().rank}] {message}", flush=True)
    emit({"type": "log", "message": message})


def progress_due(step: int | None = None, steps: int | None = None) -> bool:
    """Whether `progress` would send now; check it before computing costly metrics."""
    ctx = context()
    if not ctx.is_leader:
        return False
    return step == steps or time.monotonic() - ctx._last_progress >= _PROGRESS_INTERVAL_S


def progress(epoch: int, step: int, steps: int, **metrics: float) -> None:
    """Step progress from rank 0, throttled so it never slows the training loop."""
    if not progress_due(step, steps):
        return
    context()._last_progress = time.monotonic()
    emit({"type": "step", "epoch": epoch, "step": step, "steps": steps, **metrics})


def dataset_shard(split: str = "train", *, equal: bool | None = None):
    """This worker's rows of a dataset split (equal-sized for train, all rows for val)."""

    ctx = context()
    if ctx.dataset_uri is None:
        raise RuntimeError("this job has no spec.dataset; set one to read data")
    fs = filesystem_for(ctx.dataset_uri)
    info = read_info(fs, ctx.dataset_uri)
    equal = (split == "train") if equal is None else equal
    return read_shard(
        fs, ctx.dataset_uri, split, ctx.rank, ctx.world_size, info.feature_shape, equal=equal
    )


def _broadcast(obj: Any) -> Any:
    """Rank 0's value on every rank (all ranks must agree on the resume point)."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def resume_checkpoint() -> Resume | None:
    """The newest verified checkpoint of this run, on local disk; None for a fresh start.

    Rank 0 scans storage and reports skipped checkpoints; every rank then downloads the same
    one and verifies its local copy. Called again after a worker-group restart, it sees the
    checkpoints written before the failure, which is what makes resume automatic.
    """
    ctx = context()
    if ctx._resume_resolved:
        return ctx._resume
    fs = filesystem_for(ctx.run_uri)
    choice = None
    if ctx.is_leader:
        ref, skipped = newest_verified(fs, ctx.run_uri.fs_path)
        for s in skipped:
            log(f"{s}")
        choice = (ref.path, ref.epoch) if ref else None
    choice = _broadcast(choice)
    if choice is not None:
        path, epoch = choice
        local = Path(tempfile.mkdtemp(prefix="rayfleet-resume-"))
        manifest = download_verified(fs, path, local)
        ctx._resume = Resume(local, epoch, manifest.get("meta", {}))
        if ctx.is_leader:
            # The world size can differ from the run's last one (elastic scaling): the loop
            # re-shards its data for this worker group (see data.shards and the README).
            resume = ctx._resume
            where = (
                f"epoch {epoch + 1} step {resume.step}"
                if resume.step
                else f"epoch {epoch + 1} done"
            )
            log(f"resuming from {path.rsplit('/', 1)[-1]} ({where}) on {ctx.world_size} worker(s)")
    ctx._resume_resolved = True
    return ctx._resume


def report(
    metrics: dict[str, Any],
    *,
    epoch: int,
    checkpoint_dir: str | os.PathLike | None = None,
    meta: dict[str, Any] | None = None,
) -> None:
    """Report an epoch's metrics on every rank; rank 0 may attach a checkpoint folder.

    The folder gets a manifest (sizes, sha256, `meta`, the epoch and metrics) before Ray Train
    uploads it as `checkpoint_e{epoch:06d}` under the run. Every rank must call this the
    same number of times (it is a barrier in Ray Train).
    """
    import ray.train

    ctx = context()
    metrics = {**metrics, "epoch": epoch}
    checkpoint = None
    started = time.monotonic()
    if checkpoint_dir is not None:
        stamp = {"epoch": epoch, "metrics": metrics, SPEC_HASH_KEY: ctx.spec_hash}
        write_manifest(checkpoint_dir, {**(meta or {}), **stamp})
        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir))
    if ctx._busy is not None:  # busy time as of this epoch, ahead of its report
        ctx._busy.report_now()
    ray.train.report(
        metrics,
        checkpoint=checkpoint,
        checkpoint_dir_name=checkpoint_dir_name(epoch, ctx.token)
        if checkpoint is not None
        else None,
    )
    if checkpoint is not None and ctx._watch is not None:
        ctx._watch.saved(time.monotonic() - started)  # what a just-in-time save will take


def checkpoint_if_preempted(
    save: Callable[[Path, list[Any]], Any],
    *,
    epoch: int,
    step: int,
    rank_state: Callable[[], Any] | None = None,
    metrics: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
) -> bool:
    """Call after every training step on every rank; True when it wrote a just-in-time
    checkpoint because a node of the run is about to be preempted (train.preemption).

    Cheap: a collective every 2 s or so of training, nothing in between. When due, every
    rank's `rank_state()` (e.g. its RNG states and running sums) is gathered to rank 0, which
    calls `save(folder, states)` (states indexed by rank) and reports the folder as
    `checkpoint_e{epoch}` with `step` steps of the epoch done; `resume_checkpoint()` then
    gives it back with `Resume.step`, and the loop continues at that step.
    """

    ctx = context()
    if ctx._watch is None:
        ctx._watch = NoticeWatch(rank=ctx.rank)
    watch = ctx._watch
    seen = watch.seen
    due = watch.step()
    if watch.seen > seen and ctx.is_leader:
        then = "checkpointing now" if due else "training on until a checkpoint is due"
        log(f"{describe(watch.latest)}; {then}")
    if not due:
        return False
    deadline_ms = watch.latest.deadline_ms if watch.latest is not None else None
    if ctx.is_leader and deadline_ms and watch.due_count == 1:
        log(
            f"{deadline_ms / 1000 - time.time():.1f} s left: checkpointing now, then after "
            "every step until the node goes"
        )
    states = _gather(rank_state() if rank_state is not None else None)
    # A fresh token after the current one: this checkpoint sorts after the epoch's earlier
    # ones, and the epoch's own checkpoint (a newer token still) after this one.
    ctx.token = max(launch_token(), _after(ctx.token))
    name = checkpoint_dir_name(epoch, ctx.token)
    ctx.token = _after(ctx.token)
    position = {"step": step, "worldSize": ctx.world_size}
    stamp = {**(meta or {}), "epoch": epoch, SPEC_HASH_KEY: ctx.spec_hash, POSITION_KEY: position}
    seconds = save_and_report(
        lambda folder: save(folder, states),
        rank=ctx.rank,
        metrics={**(metrics or {}), "epoch": epoch},
        step=step,
        meta=stamp,
        checkpoint_dir_name=name,
    )
    watch.saved(seconds)
    if ctx.is_leader:
        left = (
            f", {deadline_ms / 1000 - time.time():.1f} s before the deadline" if deadline_ms else ""
        )
        where = f"epoch {epoch + 1} step {step}"
        log(f"just-in-time checkpoint {name} at {where} in {seconds:.1f} s{left}")
    return True


def _after(token: str) -> str:
    """The next token after `token` (tokens are zero-padded hex)."""
    return f"{int(token, 16) + 1:0{len(token)}x}"


def _gather(obj: Any) -> list[Any]:
    """Every rank's `obj`, indexed by rank (on every rank)."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _install_verified_checkpoint() -> None:
    """Make `ray.train.get_checkpoint()` hand a loop the newest *verified* checkpoint.

    Ray Train gives a (re)started worker group the checkpoint it registered last, and a new
    fit() of the same run name the latest one in its snapshot, verified or not: a
    checkpoint truncated in storage, or persisted but killed before its manifest was
    stamped, would be loaded as is. So before the loop runs, rayfleet resolves the newest
    checkpoint that verifies (saying which it skipped), copies it to local disk, verifies
    the copy and puts that in the worker's train context, or None when nothing verifies.
    Ray 2.60 has no public setter, hence the one write to its TrainContext here (an
    in-process run's utilities take it through their own setter).
    """
    from ray.train import Checkpoint
    from ray.train.v2._internal.execution.context import get_train_context
    from ray.train.v2._internal.execution.train_fn_utils import get_train_fn_utils

    resume = resume_checkpoint()
    checkpoint = Checkpoint.from_directory(str(resume.path)) if resume is not None else None
    utils = get_train_fn_utils()
    if hasattr(utils, "resume_from"):  # a loop trained in-process (train.inprocess)
        utils.resume_from(checkpoint, resume.next_epoch if resume is not None else None)
        return
    train_context = get_train_context()
    with train_context.report_order_condition:
        train_context.checkpoint = checkpoint


def worker_main(config: dict[str, Any]) -> None:
    """The function Ray Train runs on every worker: build the context, call the loop."""
    import importlib
    import sys

    import ray.train

    tc = ray.train.get_context()
    ctx = WorkerContext(
        rank=tc.get_world_rank(),
        world_size=tc.get_world_size(),
        run_uri=parse_uri(config["run_uri"]),
        dataset_uri=parse_uri(config["dataset_uri"]) if config.get("dataset_uri") else None,
        epochs=config["epochs"],
        batch_size=config["batch_size"],
        learning_rate=config["learning_rate"],
        seed=config["seed"],
        use_gpu=config["use_gpu"],
        mixed_precision=config["mixed_precision"],
        checkpoint_every=config["checkpoint_every"],
        config=config["user_config"],
        channel=config.get("channel"),
        spec_hash=config.get("spec_hash", ""),
    )
    _set_context(ctx)
    emit({"type": "worker", "pid": os.getpid()})
    # Busy time (rayfleet.usage): cumulative reports every few seconds and at the end.
    sampler = (
        busy.start(
            lambda report, final: emit(
                {"type": "usage", "run": config["run_uri"], **report}, wait_s=5 if final else None
            ),
            use_gpu=ctx.use_gpu,
        )
        if ctx.channel is not None
        else None
    )
    ctx._busy = sampler
    try:
        for path in config.get("sys_path", []):
            if path not in sys.path and os.path.isdir(path):
                sys.path.insert(0, path)
        module_name, _, fn_name = config["target"].partition(":")
        fn = getattr(importlib.import_module(module_name), fn_name)
        logs = ctx.run_uri.join(LOGS_DIR)
        with ship_output(filesystem_for(logs), logs.fs_path, f"worker-rank{ctx.rank}"):
            _install_verified_checkpoint()
            fn(ctx.config)
    finally:
        if sampler is not None:
            sampler.stop()
        _set_context(None)
