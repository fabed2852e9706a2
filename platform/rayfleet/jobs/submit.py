"""`rayfleet submit`: the spec that runs locally, run on a Ray cluster through the Jobs API.

Order, so that bad input costs nothing: load and validate the spec, run the storage preflight
(and the dataset check / sweep preparation) here, then reach the cluster, then upload. The
entrypoint on the cluster is `python -m rayfleet run|sweep SPEC --set ...`: the command a
user runs locally, against the same storage (pinned through RAYFLEET_STORAGE when the spec
relies on the default, so the cluster's environment can't send the run elsewhere).

Submission ids are `rayfleet-<run name>-<n>`: readable, found again from the run name alone,
and a second `submit` of a run that is still running is refused instead of starting twice.

`--retries N` resubmits under the same run name when the driver died (a signal, a lost node,
a supervisor that never started), and the new driver resumes from the newest verified
checkpoint: no completed epoch is trained again. Exit code 1 (the work failed after its own
in-driver retries) and 2 (bad input) are not retried: a rerun would fail the same way.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rayfleet import record
from rayfleet.errors import BadInputError, ClusterError, SpecError, WorkFailedError
from rayfleet.jobs import bundle
from rayfleet.jobs.cluster import RAYFLEET_RUN, Cluster, connect
from rayfleet.jobs.follow import TERMINAL, follow, status_of
from rayfleet.jobs.target import Target
from rayfleet.retry import AGENT_START, poll, retrying
from rayfleet.specs import Spec, SweepJob, TrainJob, load_spec
from rayfleet.specs.base import resolve_storage
from rayfleet.storage.preflight import preflight
from rayfleet.storage.uri import StorageURI
from rayfleet.train.launcher import check_inputs
from rayfleet.tune.results import table_exists
from rayfleet.tune.space import prepare

_POLL_S = 2.0
_AGENT_WAIT_S = 60.0
# Exit codes of a driver that ran and failed on its own terms: not worth another submission.
FINAL_EXIT_CODES = (1, 2)
RETRYABLE_ERRORS = (
    "JOB_SUPERVISOR_ACTOR_DIED",
    "JOB_SUPERVISOR_ACTOR_START_TIMEOUT",
    "JOB_SUPERVISOR_ACTOR_UNKNOWN_FAILURE",
)


@dataclass(frozen=True)
class Plan:
    """A validated spec, ready to submit."""

    path: Path
    spec: TrainJob | SweepJob
    overrides: tuple[str, ...]
    storage: StorageURI
    record_uri: StorageURI
    env_vars: dict[str, str] = field(default_factory=dict)
    force: bool = False  # `rayfleet run --force`: resume a checkpoint of another training

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def command(self) -> str:
        return "sweep" if isinstance(self.spec, SweepJob) else "run"

    def entrypoint(self, *, resume: bool) -> str:
        args = ["python", "-m", "rayfleet", self.command, self.path.name]
        args += [f"--set={item}" for item in self.overrides]
        if resume and isinstance(self.spec, SweepJob):
            args.append("--resume")  # a TrainJob always resumes its run name
        if self.force:
            args.append("--force")
        return shlex.join(args)


def plan(
    path: Path, overrides: list[str], env: list[str] | None = None, *, force: bool = False
) -> Plan:
    """Everything checked before the cluster is contacted: spec, files, storage, dataset."""

    spec: Spec = load_spec(path, overrides)
    if force and not isinstance(spec, TrainJob):
        raise SpecError(f"{path}: --force applies to TrainJob runs, not a {spec.kind}")
    spec_dir = path.resolve().parent
    env_vars = _env_vars(env or [])
    if isinstance(spec, TrainJob):
        check_inputs(spec)
        storage = spec.storage_uri()
    elif isinstance(spec, SweepJob):
        prepared = prepare(spec, source_dir=spec_dir)
        if spec.spec.train_job.path:
            bundle.check_inside(spec_dir, spec_dir / spec.spec.train_job.path, "spec.trainJob.path")
        check_inputs(prepared.base)
        storage = resolve_storage(spec.spec.storage or prepared.base.spec.storage)
        preflight(storage)
    else:
        raise SpecError(
            f"{path}: `rayfleet submit` runs TrainJob and SweepJob specs, not {spec.kind}; "
            f"serve it with `rayfleet serve {path}` or `rayfleet render {path}` (a RayService)"
        )
    bundle.check_required(spec_dir, required_files(path, spec))
    env_vars.setdefault("RAYFLEET_STORAGE", str(resolve_storage(None)))
    return Plan(
        path=path,
        spec=spec,
        overrides=tuple(overrides),
        storage=storage,
        record_uri=record.home(spec, storage),
        force=force,
        env_vars=env_vars,
    )


def _env_vars(items: list[str]) -> dict[str, str]:
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise BadInputError(f"--env {item!r}: expected NAME=VALUE")
        env[key] = value
    return env


def submission_id(name: str, n: int) -> str:
    return f"rayfleet-{name}-{n}"


def next_submission(cluster: Cluster, name: str) -> str:
    """`rayfleet-<name>-<n+1>`; refuses while a submission of the run is still live."""
    n = 0
    for job in cluster.run_jobs(name):
        if status_of(job) not in TERMINAL:
            raise BadInputError(
                f"run {name} is already {status_of(job)} on {cluster.address} as "
                f"{job.submission_id}; follow it (rayfleet jobs logs {name} --follow) or stop "
                f"it (rayfleet jobs stop {name})"
            )
        match = re.fullmatch(rf"rayfleet-{re.escape(name)}-(\d+)", job.submission_id or "")
        n = max(n, int(match.group(1)) if match else 0)
    return submission_id(name, n + 1)


def retryable(job) -> bool:
    """Whether a failed submission died rather than failed (see the module docstring)."""
    if status_of(job) != "FAILED":
        return False
    if str(getattr(job.error_type, "value", job.error_type)) in RETRYABLE_ERRORS:
        return True
    code = job.driver_exit_code
    return code is not None and code not in FINAL_EXIT_CODES and code != 0


def required_files(path: Path, spec: Spec) -> list[Path]:
    """Files in the spec's folder the job cannot run without: the spec, a sweep's TrainJob."""
    folder = path.resolve().parent
    needed = [folder / path.name]
    if isinstance(spec, SweepJob) and spec.spec.train_job.path:
        needed.append(folder / spec.spec.train_job.path)
    return needed


def skipped_line(skipped: tuple[str, ...], limit: int = 20) -> str:
    """One line naming what stayed behind (the first `limit` entries, then a count)."""
    shown = ", ".join(skipped[:limit])
    more = f" and {len(skipped) - limit} more" if len(skipped) > limit else ""
    return f"not sent (symlinks, dotfiles, credential-like names): {shown}{more}"


def submit_once(
    cluster: Cluster, plan_: Plan, *, attempt: int, say=lambda line: None
) -> tuple[str, tuple[str, ...]]:
    """Submit one attempt; the submission id and what of the spec's folder was not sent."""
    folder = plan_.path.resolve().parent
    with bundle.build(
        folder, plan_.storage, plan_.env_vars, required=required_files(plan_.path, plan_.spec)
    ) as runtime:
        if runtime.note:
            say(runtime.note)
        say(
            f"sending {folder} ({runtime.size / 1000:.0f} kB"
            + (f", via {runtime.uploaded_to}" if runtime.uploaded_to else "")
            + ") and the rayfleet package"
        )
        if runtime.skipped:
            say(skipped_line(runtime.skipped))
        sid = next_submission(cluster, plan_.name)
        _when_agent_ready(
            cluster,
            cluster.client.submit_job,
            entrypoint=plan_.entrypoint(resume=attempt > 1 and _sweep_state_exists(plan_)),
            submission_id=sid,
            runtime_env=runtime.runtime_env,
            metadata={
                RAYFLEET_RUN: plan_.name,
                "rayfleet.kind": plan_.spec.kind,
                "rayfleet.storage": str(plan_.storage),
                "rayfleet.record": str(plan_.record_uri),
                "rayfleet.attempt": str(attempt),
            },
            # spec.driver: none by default (the driver coordinates; the workers reserve
            # their own).
            entrypoint_num_cpus=plan_.spec.spec.driver.cpus,
            entrypoint_num_gpus=plan_.spec.spec.driver.gpus,
        )
    return sid, runtime.skipped


def _sweep_state_exists(plan_: Plan) -> bool:
    """A resubmitted sweep resumes (--resume) when the dead driver left its trials.json."""
    if not isinstance(plan_.spec, SweepJob):
        return False

    return table_exists(plan_.record_uri)


def _agent_not_ready(exc: BaseException) -> bool:
    return isinstance(exc, ClusterError) and "No available agent" in str(exc)


def _when_agent_ready(cluster: Cluster, fn, **kwargs) -> None:
    """Submit, retrying while the head's job agent is not up yet (a head that just started,
    or restarted, answers 500 "No available agent to submit job" for a few seconds)."""
    retrying(on=_agent_not_ready, wait=AGENT_START, within_s=_AGENT_WAIT_S)(
        cluster.call, fn, **kwargs
    )


def wait(cluster: Cluster, sid: str, on_status: Callable[[str], None]):
    """Poll until the job ends (used without --follow)."""
    last = None

    def ended():
        nonlocal last
        job = cluster.info(sid)
        if (status := status_of(job)) != last:
            on_status(status)
            last = status
        return job if status in TERMINAL else None

    return poll(ended, timeout=None, interval=_POLL_S, what=f"job {sid} to end")


def note(cluster: Cluster, plan_: Plan, sid: str, *, with_logs: bool) -> dict:
    """Bring the record up to date with what the cluster says about `sid`."""
    return record.refresh(
        cluster, cluster.info(sid), plan_.record_uri, plan_.spec, with_logs=with_logs
    )


@dataclass
class Outcome:
    submission_ids: list[str]
    status: str
    record: dict
    skipped: tuple[str, ...] = ()
    """Entries of the spec's folder that were not sent (symlinks, dotfiles, credentials)."""


def run(
    plan_: Plan,
    target: Target,
    *,
    follow_logs: bool,
    retries: int,
    write: Callable[[str], None],
    say: Callable[[str], None],
) -> Outcome:
    """Submit, and when following or retrying, wait for the end and resubmit dead drivers."""
    cluster = connect(target)
    ids: list[str] = []
    for attempt in range(1, retries + 2):
        sid, skipped = submit_once(cluster, plan_, attempt=attempt, say=say)
        ids.append(sid)
        record = note(cluster, plan_, sid, with_logs=False)
        say(f"submitted {sid} to {cluster.address} (attempt {attempt} of {retries + 1})")
        if not follow_logs and retries == 0:
            return Outcome(ids, "SUBMITTED", record, skipped)
        if follow_logs:
            job = follow(cluster, sid, write, say)
        else:
            job = wait(cluster, sid, lambda s, sid=sid: say(f"{sid}: {s}"))
        record = note(cluster, plan_, sid, with_logs=True)
        status = status_of(job)
        if status == "SUCCEEDED":
            return Outcome(ids, status, record, skipped)
        detail = (job.message or "").strip().splitlines()
        reason = detail[-1][:300] if detail else status
        if attempt <= retries and retryable(job):
            say(f"{sid} {status}: {reason}; resubmitting run {plan_.name} (it resumes)")
            continue
        raise WorkFailedError(
            f"run {plan_.name}: {sid} {status} ({reason}); logs: rayfleet jobs logs {sid} "
            f"--address {cluster.address}; record: {plan_.record_uri}/record.json"
        )
    raise AssertionError("unreachable")
