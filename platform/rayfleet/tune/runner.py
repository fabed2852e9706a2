"""Run a SweepJob on Ray Tune: search algorithm, scheduler, resume, the live table, best.json.

The driver side of a sweep. Everything checkable is checked before Ray starts (the space,
the metric, storage, the dataset); then a `Tuner` runs `trial.run_trial` per sampled config,
its experiment stored under `<storage>/sweeps/<name>/` so `--resume` can restore it after
the driver dies. A Tune callback keeps `trials.json` current and feeds the CLI's table.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ray.tune import Callback

from rayfleet.errors import SpecError, WorkFailedError
from rayfleet.specs.sweep import Domain
from rayfleet.storage.filesystem import filesystem_for
from rayfleet.storage.uri import parse_uri
from rayfleet.tune import results
from rayfleet.tune.space import PreparedSweep
from rayfleet.tune.trial import EPOCHS_DONE, run_trial, trial_run_uri

TableHandler = Callable[[results.SweepTable], None]
_TABLE_WRITE_S = 2.0
# Tune saves its experiment state on its own adaptive clock (10 s or more); a sweep's driver
# can die at any moment, so save often — the state is a few small files.
_EXPERIMENT_SAVE_S = "2"


@dataclass
class SweepResult:
    table: results.SweepTable
    best: dict[str, Any]
    elapsed_s: float


def tune_domain(domain: Domain, *, as_grid: bool = False):
    from ray import tune

    kind = domain.kind
    if kind == "grid" or (as_grid and kind == "choice"):
        return tune.grid_search(list(domain[kind]))
    if kind == "choice":
        return tune.choice(list(domain.choice))
    low, high = domain[kind]
    return {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}[kind](
        low, high
    )


def _search_alg(prep: PreparedSweep, concurrency: int):
    """The searcher. Tune applies max_concurrent_trials to Searchers (Optuna) itself, but
    ignores it for a BasicVariantGenerator passed in, which must be told directly."""
    spec = prep.sweep.spec
    if spec.search.algorithm == "tpe":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        return OptunaSearch(sampler=optuna.samplers.TPESampler(seed=spec.search.seed))
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(random_state=spec.search.seed, max_concurrent=concurrency)


def _scheduler(prep: PreparedSweep):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule

    s = prep.sweep.spec.scheduler
    if s.type == "asha":
        return ASHAScheduler(
            time_attr=EPOCHS_DONE,
            max_t=prep.epochs,
            grace_period=s.grace_period,
            reduction_factor=s.reduction_factor,
        )
    if s.type == "median":
        return MedianStoppingRule(
            time_attr=EPOCHS_DONE,
            grace_period=s.grace_period,
            min_samples_required=s.min_samples_required,
        )
    return FIFOScheduler()


def trial_cpus_gpus(prep: PreparedSweep) -> tuple[float, float]:
    scaling = prep.base.spec.scaling
    return scaling.num_workers * scaling.cpus_per_worker, scaling.num_workers * scaling.gpus


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


# Tune pickles its RunConfig, callbacks included, into the experiment (tuner.pkl) and
# restores it on --resume; the callback therefore carries only plain data and finds the
# running driver's sink here, by sweep URI.
_SINKS: dict[str, _Sink] = {}


class TableCallback(Callback):
    """Driver-side Tune callback: mirrors trial states into trials.json and the live table."""

    def __init__(self, prep: PreparedSweep):
        spec = prep.sweep.spec
        self.key = str(prep.uri)
        self.sweep, self.metric, self.mode = prep.sweep.name, spec.metric, spec.mode
        self.params = list(spec.search_space)
        self.epochs = prep.epochs
        self._last: results.SweepTable | None = None
        self._written = 0.0

    def _snapshot(self, trials) -> results.SweepTable:
        rows = []
        for t in sorted(trials, key=lambda t: t.trial_id):
            last = t.last_result or {}
            done = int(last.get(EPOCHS_DONE, 0) or 0)
            value = last.get(self.metric)
            rows.append(
                results.TrialRow(
                    trial_id=t.trial_id,
                    params={k: t.config.get(k) for k in self.params},
                    state=results.row_state(t.status, done, self.epochs),
                    epochs_done=done,
                    value=float(value) if value is not None else None,
                    error=_error_summary(t.error_file) if t.status == "ERROR" else None,
                )
            )
        return results.SweepTable(self.sweep, self.metric, self.mode, self.epochs, rows)

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


def _check_fresh_or_resumable(prep: PreparedSweep, resume: bool) -> bool:
    """True when an experiment exists to restore; bad combinations fail with the fix."""
    from ray import tune

    fs = filesystem_for(prep.uri)
    exists = tune.Tuner.can_restore(prep.uri.fs_path, storage_filesystem=fs)
    if resume and not exists:
        raise SpecError(
            f"sweep {prep.sweep.name}: nothing to resume at {prep.uri}; run without --resume"
        )
    if not resume and exists:
        raise SpecError(
            f"sweep {prep.sweep.name} already exists at {prep.uri}; add --resume to continue "
            "it, or change metadata.name for a new sweep"
        )
    return exists


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
    from ray import tune

    from rayfleet.train.launcher import check_inputs, ensure_ray

    started = time.monotonic()
    check_inputs(prep.base)
    restoring = _check_fresh_or_resumable(prep, resume)
    owns_ray = ensure_ray(verbose=verbose, dashboard=True)
    try:
        os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", _EXPERIMENT_SAVE_S)
        # Tune's newer console output prints its own banners even at verbose=0; rayfleet
        # draws the table, so take the legacy reporter, which verbose=0 silences.
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        cpus, gpus = trial_cpus_gpus(prep)
        trainable = tune.with_resources(
            tune.with_parameters(
                run_trial,
                base_doc=prep.base_doc,
                sweep_uri=str(prep.uri),
                sys_path=list(sys_path or []),
            ),
            # The trial itself only drives its Train run, whose workers Ray Train places in
            # a placement group of their own; Tune needs a non-empty request, so a token one.
            {"cpu": 0, "memory": 2**20},
        )
        sink = _SINKS[str(prep.uri)] = _Sink(on_table or (lambda table: None))
        fs = filesystem_for(prep.uri)
        if restoring:
            tuner = tune.Tuner.restore(
                prep.uri.fs_path,
                trainable,
                resume_unfinished=True,
                resume_errored=retry_errored,
                storage_filesystem=fs,
            )
        else:
            concurrency = default_concurrency(prep)
            tuner = tune.Tuner(
                trainable,
                param_space=_param_space(prep),
                tune_config=tune.TuneConfig(
                    metric=prep.sweep.spec.metric,
                    mode=prep.sweep.spec.mode,
                    search_alg=_search_alg(prep, concurrency),
                    scheduler=_scheduler(prep),
                    num_samples=prep.sweep.spec.num_samples,
                    # BasicVariantGenerator got it already; Tune warns if told twice.
                    max_concurrent_trials=concurrency
                    if prep.sweep.spec.search.algorithm == "tpe"
                    else None,
                    trial_dirname_creator=lambda trial: trial.trial_id,
                ),
                run_config=tune.RunConfig(
                    name=prep.sweep.name,
                    storage_path=prep.uri.fs_path.rsplit("/", 1)[0],
                    storage_filesystem=fs,
                    failure_config=tune.FailureConfig(
                        max_failures=prep.sweep.spec.max_trial_failures
                    ),
                    callbacks=[TableCallback(prep)],
                    verbose=0,
                ),
            )
        tuner.fit()
    finally:
        _SINKS.pop(str(prep.uri), None)
        if owns_ray:
            import ray

            ray.shutdown()
    table = sink.table
    if table is None or not table.trials:
        raise WorkFailedError(f"sweep {prep.sweep.name} ran no trials; see --verbose")
    best = results.promote_best(prep.uri, table, lambda tid: trial_run_uri(prep.uri, tid))
    return SweepResult(table=table, best=best, elapsed_s=time.monotonic() - started)


def _param_space(prep: PreparedSweep) -> dict[str, Any]:
    as_grid = prep.sweep.spec.search.algorithm == "grid"
    return {k: tune_domain(d, as_grid=as_grid) for k, d in prep.sweep.spec.search_space.items()}
