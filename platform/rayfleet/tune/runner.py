"""Run a SweepJob on Ray Tune: one launch (new, or `--resume`), the live table, best.json.

The driver side of a sweep. Everything checkable is checked before Ray starts (the space,
the metric, storage, the dataset, the table to resume); then a `Tuner` runs `trial.run_trial`
per trial of the launch (`rayfleet.tune.replay`). Each launch is a fresh Tune experiment under
`<sweep>/tune/launch-NNN-XXXXXX/`; nothing in it is read back, ever: `--resume` continues from
`trials.json` and the trials' verified checkpoints, because Tune's own resume unpickles files
that anyone with write access to the storage could have planted. A Tune callback keeps
`trials.json` (every launch's rows) current and feeds the CLI's table.
"""

from __future__ import annotations

import math
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from ray.tune import Callback

from rayfleet.embedded import ensure_ray
from rayfleet.errors import SpecError, WorkFailedError
from rayfleet.storage.filesystem import filesystem_for
from rayfleet.storage.lease import Lease
from rayfleet.storage.uri import parse_uri
from rayfleet.train.inprocess import runs_in_process
from rayfleet.train.launcher import busy_channel, check_inputs
from rayfleet.tune import results, tracking
from rayfleet.tune.replay import Launch, plan_fresh, plan_resume
from rayfleet.tune.search import param_space, scheduler, search_alg
from rayfleet.tune.space import PreparedSweep
from rayfleet.tune.trial import EPOCHS_DONE, run_trial, sweep_trial_id, trial_run_uri

TableHandler = Callable[[results.SweepTable], None]
_TABLE_WRITE_S = 2.0
TUNE_DIR = "tune"  # <sweep>/tune/<launch>: Tune's experiments, written and never read


@dataclass
class SweepResult:
    table: results.SweepTable
    best: results.BestTrial
    elapsed_s: float


def trial_cpus_gpus(prep: PreparedSweep) -> tuple[float, float]:
    scaling = prep.base.spec.scaling
    return scaling.num_workers * scaling.cpus_per_worker, scaling.num_workers * scaling.gpus


def trials_in_process(prep: PreparedSweep) -> bool:
    """Whether the trials train in their Tune trials' own processes (train.inprocess): one
    fixed worker each, the same for every trial (no scaling.* key searched), unless the
    sweep asks for a Ray Train run per trial."""
    spec = prep.sweep.spec
    return (
        spec.trial_launch == "auto"
        and runs_in_process(prep.base)
        and not any(key.startswith("scaling.") for key in spec.search_space)
    )


def trial_relaunches(prep: PreparedSweep, in_process: bool) -> int:
    """How often Tune relaunches an errored trial: maxTrialFailures, plus, for a trial that
    trains in its own process, the TrainJob's failure.maxFailures: the restarts its Ray
    Train run would have made itself (after a lost node, too). Either way a failing loop
    gets (maxFailures + 1) x (maxTrialFailures + 1) attempts at most, each resuming from
    the newest verified checkpoint."""
    relaunches = prep.sweep.spec.max_trial_failures
    if in_process:
        failures = prep.base.spec.failure.max_failures
        relaunches = (failures + 1) * (relaunches + 1) - 1
    return relaunches


def default_concurrency(prep: PreparedSweep) -> int:
    """As many trials as the cluster's CPUs and GPUs hold at once (at least one)."""
    import ray

    if prep.sweep.spec.max_concurrent_trials:
        return prep.sweep.spec.max_concurrent_trials
    cpus, gpus = trial_cpus_gpus(prep)
    have = ray.cluster_resources()
    fits = [math.floor(have.get("CPU", 0) / cpus)] if cpus else []
    if gpus:
        fits.append(math.floor(have.get("GPU", 0) / gpus))
    return max(1, min(fits) if fits else 1)


class _Sink:
    """Where this driver wants table updates; the latest table for the result."""

    def __init__(self, on_table: TableHandler):
        self.on_table = on_table
        self.table: results.SweepTable | None = None


# Tune pickles its RunConfig, callbacks included, into its experiment (tuner.pkl, never read
# back); the callback therefore carries only plain data and finds the running driver's sink
# here, by sweep URI.
_SINKS: dict[str, _Sink] = {}


class TableCallback(Callback):
    """Driver-side Tune callback: mirrors trial states into trials.json and the live table.

    The table is this launch's trials plus the rows kept from earlier launches; a rerun trial
    shows under its own id, with its earlier epochs and value until it reports again.
    """

    def __init__(self, prep: PreparedSweep, launch: Launch):
        spec = prep.sweep.spec
        self.key = str(prep.uri)
        self.sweep, self.metric, self.mode = prep.sweep.name, spec.metric, spec.mode
        self.params = list(spec.search_space)
        self.epochs = prep.epochs
        self.launch = launch.number
        self.kept = list(launch.kept)
        self.prior = {row.trial_id: row for row in launch.rerun}
        self._last: results.SweepTable | None = None
        self._written = 0.0

    def _row(self, t) -> results.TrialRow:
        trial_id = sweep_trial_id(t.config, t.trial_id)
        last = t.last_result or {}
        prior = self.prior.get(trial_id)
        if EPOCHS_DONE not in last and prior is not None:
            done, value = prior.epochs_done, prior.value
        else:
            done = int(last.get(EPOCHS_DONE, 0) or 0)
            value = last.get(self.metric)
        return results.TrialRow(
            trial_id=trial_id,
            params={k: t.config.get(k) for k in self.params},
            state=results.row_state(t.status, done, self.epochs),
            epochs_done=done,
            value=float(value) if value is not None else None,
            error=_error_summary(t.error_file) if t.status == "ERROR" else None,
        )

    def _snapshot(self, trials) -> results.SweepTable:
        return self.table_of(self.kept + [self._row(t) for t in trials])

    def table_of(self, rows: list[results.TrialRow]) -> results.SweepTable:
        return results.SweepTable(
            sweep=self.sweep,
            metric=self.metric,
            mode=self.mode,
            epochs=self.epochs,
            trials=sorted(rows, key=lambda r: r.trial_id),
            launches=self.launch,
        )

    def _publish(self, trials, *, force: bool) -> None:
        table = self._snapshot(trials)
        changed = table != self._last
        if changed and (sink := _SINKS.get(self.key)):
            sink.table = table
            sink.on_table(table)
        if force or (changed and time.monotonic() - self._written > _TABLE_WRITE_S):
            results.write_table(parse_uri(self.key), table)
            self._written = time.monotonic()
        self._last = table

    def on_step_end(self, iteration, trials, **info):
        self._publish(trials, force=False)

    def on_trial_start(self, iteration, trials, trial, **info):
        # Recorded before it trains, so a resume reruns it instead of sampling anew.
        self._publish(trials, force=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._publish(trials, force=True)

    def on_experiment_end(self, trials, **info):
        self._publish(trials, force=True)


def _error_summary(error_file: str | None) -> str | None:
    """The last line of a trial's error file (the exception itself), for the table."""
    if not error_file:
        return None
    try:
        with open(error_file) as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return f"see {error_file}"
    return lines[-1][:200] if lines else f"see {error_file}"


def plan_launch(prep: PreparedSweep, resume: bool, retry_errored: bool) -> Launch:
    """This launch's plan; bad combinations (and a table that isn't one) fail with the fix."""
    if not resume:
        if results.table_exists(prep.uri):
            raise SpecError(
                f"sweep {prep.sweep.name} already exists at {prep.uri}; add --resume to "
                "continue it, or change metadata.name for a new sweep"
            )
        return plan_fresh(prep)
    table = results.read_table(prep.uri)  # refuses, in one line, what is not a table
    if table is None:
        raise SpecError(
            f"sweep {prep.sweep.name}: nothing to resume at {prep.uri} (no "
            f"{results.TRIALS_FILE}); run without --resume"
        )
    return plan_resume(prep, table, retry_errored=retry_errored)


def run_sweep(
    prep: PreparedSweep,
    *,
    resume: bool = False,
    retry_errored: bool = False,
    on_table: TableHandler | None = None,
    sys_path: list[str] | None = None,
    verbose: bool = False,
) -> SweepResult:
    """Run (or resume) a prepared sweep to the end; write trials.json and best.json."""

    started = time.monotonic()
    check_inputs(prep.base)
    # One driver per sweep: a second one would plan from the same trials.json and run the
    # same trials into the same folders (see storage.lease).
    lease = Lease(prep.uri, what=f"sweep {prep.sweep.name}")
    lease.acquire()
    try:
        launch = plan_launch(prep, resume, retry_errored)
        table = _run_launch(prep, launch, on_table, resume, sys_path=sys_path, verbose=verbose)
        if table is None or not table.trials:
            raise WorkFailedError(f"sweep {prep.sweep.name} ran no trials; see --verbose")
        best = results.promote_best(prep.uri, table, lambda tid: trial_run_uri(prep.uri, tid))
    finally:
        tracking.finish(prep)  # the MLflow parent run, when tracked
        lease.release()
    return SweepResult(table=table, best=best, elapsed_s=time.monotonic() - started)


def _run_launch(
    prep: PreparedSweep, launch: Launch, on_table, resume: bool, *, sys_path, verbose
) -> results.SweepTable | None:
    """Run one launch's trials; the table the sink last saw (kept rows included)."""
    sink = _SINKS[str(prep.uri)] = _Sink(on_table or (lambda table: None))
    try:
        if resume:
            # Count this launch before it runs, so a launch killed early is not drawn again.
            first = TableCallback(prep, launch).table_of(launch.kept + launch.rerun)
            results.write_table(prep.uri, first)
            sink.table = first
            sink.on_table(first)
        if launch.tune_samples:
            _fit(prep, launch, sys_path=sys_path, verbose=verbose)
    finally:
        _SINKS.pop(str(prep.uri), None)
    return sink.table


def _fit(prep: PreparedSweep, launch: Launch, *, sys_path: list[str] | None, verbose: bool) -> None:
    """Run the launch as a new Tune experiment under <sweep>/tune/."""
    # Ray Train frees a stopped trial's placement group through the State API, which the
    # dashboard serves; trials that train in their own process have none (and the
    # dashboard's start-up, seconds of the 2-core VM, would come before the first trial).
    owns_ray = ensure_ray(verbose=verbose, dashboard=not trials_in_process(prep))
    try:
        # The trials' workers report their busy time here; the trial records keep it.
        with busy_channel(tracking.busy_sink(prep)) as channel:
            _tune(prep, launch, sys_path=sys_path, channel=channel)
        tracking.store_busy(prep)
    finally:
        if owns_ray:
            import ray

            ray.shutdown()


def _tune(prep: PreparedSweep, launch: Launch, *, sys_path: list[str] | None, channel) -> None:
    """The Tuner of the launch, run to its end; `channel` goes to every trial's trainer."""
    from ray import tune

    # Tune's newer console output prints its own banners even at verbose=0; rayfleet
    # draws the table, so take the legacy reporter, which verbose=0 silences.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    in_process = trials_in_process(prep)
    cpus, gpus = trial_cpus_gpus(prep)
    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial,
            base_doc=prep.base_doc,
            sweep_uri=str(prep.uri),
            sys_path=list(sys_path or []),
            channel=channel,
            in_process=in_process,
        ),
        # In process, the trial is the worker and asks for its resources. Otherwise it only
        # drives its Train run, whose workers Ray Train places in a placement group of their
        # own; Tune needs a non-empty request, so a token one.
        {"cpu": cpus, "gpu": gpus} if in_process else {"cpu": 0, "memory": 2**20},
    )
    concurrency = default_concurrency(prep)
    spec = prep.sweep.spec
    tuner = tune.Tuner(
        trainable,
        param_space=param_space(prep),
        tune_config=tune.TuneConfig(
            metric=spec.metric,
            mode=spec.mode,
            search_alg=search_alg(prep, concurrency, launch),
            scheduler=scheduler(prep),
            num_samples=launch.tune_samples,
            # BasicVariantGenerator got it already; Tune warns if told twice.
            max_concurrent_trials=concurrency if spec.search.algorithm == "tpe" else None,
            trial_dirname_creator=lambda trial: trial.trial_id,
            # An in-process trial's actor has torch and the loop imported: the next trial
            # starts in it (the trials ask for the same resources).
            reuse_actors=in_process,
        ),
        run_config=tune.RunConfig(
            name=f"launch-{launch.number:03d}-{secrets.token_hex(3)}",
            storage_path=prep.uri.join(TUNE_DIR).fs_path,
            storage_filesystem=filesystem_for(prep.uri),
            failure_config=tune.FailureConfig(max_failures=trial_relaunches(prep, in_process)),
            callbacks=[TableCallback(prep, launch), *tracking.callbacks(prep, launch.number)],
            verbose=0,
        ),
    )
    tuner.fit()
