"""`rayfleet sweep SPEC [--resume]` and `rayfleet sweep results NAME`.

`sweep` is a group whose first argument is either a subcommand (`results`) or a spec file,
so the common case reads like `rayfleet run`: `rayfleet sweep jobs/digits/sweep.yaml`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from rayfleet import usage
from rayfleet.cli.options import (
    PricesOption,
    SetOption,
    SpecOrCommand,
    StorageOption,
    VerboseOption,
)
from rayfleet.cli.output import (
    Output,
    OutputOption,
    console,
    handle_errors,
    print_json,
    print_table,
    progress_console,
    stdout_for_json,
    table,
)
from rayfleet.errors import BadInputError
from rayfleet.lazy import lazy
from rayfleet.specs import load_spec
from rayfleet.specs.base import resolve_storage
from rayfleet.storage.filesystem import filesystem_for
from rayfleet.storage.logs import LOGS_DIR, ship_output
from rayfleet.tune.documents import BestTrial, SweepTable
from rayfleet.tune.results import (
    EVALUATED,
    require_results,
    sort_by_evaluation,
    sweep_usage,
    table_exists,
    trial_evaluations,
    write_usage,
)
from rayfleet.tune.space import prepare
from rayfleet.tune.trial import trial_run_uri
from rayfleet.usage import load_prices, summary

runner = lazy("rayfleet.tune.runner")  # Ray Tune: only when a sweep starts

app = typer.Typer(
    cls=SpecOrCommand,
    help="Hyperparameter sweeps (Ray Tune): `rayfleet sweep SPEC [--resume]`, "
    "`rayfleet sweep results NAME`.",
    no_args_is_help=True,
)

_STYLE = {"DONE": "green", "STOPPED": "yellow", "ERROR": "red", "RUNNING": "cyan"}


# Evaluated scores `sweep results` shows when trials were evaluated (and the one sorted by).
_EVAL_COLUMNS = ("accuracy", "macro_f1", "log_loss")


def render_table(
    sweep: SweepTable,
    best: BestTrial | None = None,
    *,
    evaluated: dict[str, dict[str, float]] | None = None,
    order: list | None = None,
    sort_key: str | None = None,
) -> Table:
    """The trial table: params, epochs run, the metric, and state; the best row marked; with
    `evaluated` (trial id -> `rayfleet evaluate` scores), those scores too, in `order`."""
    params = list(sweep.trials[0].params) if sweep.trials else []
    best_id = best.trial_id if best else None
    scores = evaluated or {}
    shown = [*_EVAL_COLUMNS, *([sort_key] if sort_key and sort_key not in _EVAL_COLUMNS else [])]
    shown = shown if scores else []
    rows = []
    for row in order or sweep.trials:
        state = f"[{_STYLE.get(row.state, 'white')}]{row.state}[/]"
        if row.trial_id == best_id:
            state += " [bold]best[/]"
        if row.error:
            state += f" {row.error}"
        rows.append(
            (
                row.trial_id,
                *[_fmt(row.params.get(k)) for k in params],
                f"{row.epochs_done}/{sweep.epochs}",
                _fmt(row.value),
                *[_fmt(scores.get(row.trial_id, {}).get(k)) for k in shown],
                state,
            )
        )
    headers = [_short(k, params) for k in params]
    eval_headers = [f"eval {k}" for k in shown]
    counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(sweep.counts().items()))
    by = f"; sorted by eval {sort_key}" if sort_key else ""
    return table(
        ["trial", *headers, "epochs", sweep.metric, *eval_headers, "state"],
        rows,
        title=f"sweep {sweep.sweep}: {sweep.mode} {sweep.metric}",
        caption=f"{counts}; {sweep.epochs_consumed} epochs trained{by}",
        right=[*headers, "epochs", sweep.metric, *eval_headers],
    )


def _short(key: str, keys: list[str]) -> str:
    """A column header: the last part of a dotted key, unless two keys share it."""
    last = key.rsplit(".", 1)[-1]
    return last if sum(k.rsplit(".", 1)[-1] == last for k in keys) == 1 else key


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class _LiveTable:
    """A live table on a terminal; elsewhere one line per trial that reaches a final state."""

    def __init__(self, con: Console):
        self.console = con
        self.live = Live(console=con, auto_refresh=False) if con.is_terminal else None
        self.reported: set[tuple[str, str]] = set()

    def __enter__(self):
        if self.live:
            self.live.__enter__()
        return self

    def __exit__(self, *exc):
        if self.live:
            self.live.__exit__(*exc)

    def __call__(self, sweep: SweepTable) -> None:
        if self.live:
            self.live.update(render_table(sweep), refresh=True)
            return
        for row in sweep.trials:
            key = (row.trial_id, row.state)
            if row.state not in ("DONE", "STOPPED", "ERROR") or key in self.reported:
                continue
            self.reported.add(key)
            params = " ".join(f"{k}={_fmt(v)}" for k, v in row.params.items())
            self.console.print(
                f"trial {row.trial_id} {row.state.lower()} after {row.epochs_done}/"
                f"{sweep.epochs} epochs: {sweep.metric}={_fmt(row.value)}  {params}",
                highlight=False,
                soft_wrap=True,
            )


@app.command("start", hidden=True)
@handle_errors
def start(
    spec: Path = typer.Argument(..., help="SweepJob spec YAML file."),
    overrides: list[str] = SetOption,
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue a sweep from its trials.json and verified checkpoints (never from "
        "Tune's pickled state): finished trials are kept, unfinished ones rerun with the same "
        "params, missing ones sampled anew.",
    ),
    retry_errored: bool = typer.Option(
        False, "--retry-errored", help="With --resume: run errored trials again."
    ),
    resume_if_exists: bool = typer.Option(
        False,
        "--resume-if-exists",
        help="--resume when the sweep's trials.json exists, else start it: what a retried "
        "RayJob runs.",
    ),
    verbose: bool = VerboseOption,
    prices: Path | None = PricesOption,
    output: Output = OutputOption,
) -> None:
    """Run a SweepJob: every trial a data-parallel TrainJob, the best one recorded. The
    driver's output is also copied to <sweep>/logs/ (`rayfleet jobs logs NAME --storage`);
    each trial's usage goes to its run record, the sweep's (and what early stopping saved)
    to <sweep>/record.json."""

    sweep = load_spec(spec, overrides or [], expect="SweepJob")
    prep = prepare(sweep, source_dir=spec.resolve().parent)
    price_table = usage.load_prices(prices)
    usage.check_prices(price_table, gpus=prep.base.spec.scaling.gpus, where=f"sweep {sweep.name}")
    resume = resume or (resume_if_exists and table_exists(prep.uri))
    logs = prep.uri.join(LOGS_DIR)
    with ship_output(filesystem_for(logs), logs.fs_path, "driver"), usage.pricing(price_table):
        _start(sweep, prep, spec, resume, retry_errored, verbose, output, price_table)


def _start(sweep, prep, spec: Path, resume, retry_errored, verbose, output: Output, prices) -> None:
    s = sweep.spec
    progress = progress_console(output)
    launch = "in the trial's process" if runner.trials_in_process(prep) else "a Ray Train run each"
    progress.print(
        f"[bold]{sweep.name}[/]: {s.num_samples} trial(s) of {prep.base.name} "
        f"({s.search.algorithm} search, {s.scheduler.type} scheduler, {s.mode} {s.metric}; "
        f"{launch}) -> {prep.uri}",
        highlight=False,
    )
    with stdout_for_json(output), _LiveTable(progress) as view:
        result = runner.run_sweep(
            prep,
            resume=resume,
            retry_errored=retry_errored,
            on_table=view,
            sys_path=[str(spec.resolve().parent)],
            verbose=verbose,
        )
    used = sweep_usage(prep.uri, result.table, prices)
    write_usage(prep.uri, sweep, used)
    used_doc = used.model_dump(mode="json", by_alias=True)
    if output is Output.json:
        doc = sweep_doc(result.table, result.best, elapsed_s=result.elapsed_s, used=used_doc)
        return print_json(doc)
    _print_outcome(result.table, result.best, used_doc)
    console.print(f"done in {result.elapsed_s:.1f}s", highlight=False)


def sweep_doc(
    sweep: SweepTable,
    best: BestTrial | None,
    *,
    elapsed_s: float | None = None,
    used: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`-o json` of `sweep` and `sweep results`: name, metric, mode, epochs (per trial),
    epochsTrained, trials [{trialId, params, state, epochsDone, value, error}], best
    ({trialId, value, params, epoch, checkpoint} or null), usage (rayfleet.usage.SweepUsage:
    worker/CPU/GPU-seconds, cost with prices, savings of early stopping) and, for a sweep just
    run, elapsedS."""
    doc: dict[str, Any] = {
        "name": sweep.sweep,
        "metric": sweep.metric,
        "mode": sweep.mode,
        "epochs": sweep.epochs,
        "epochsTrained": sweep.epochs_consumed,
        "trials": [
            {
                "trialId": t.trial_id,
                "params": t.params,
                "state": t.state,
                "epochsDone": t.epochs_done,
                "value": t.value,
                "error": t.error,
            }
            for t in sweep.trials
        ],
        "best": None
        if best is None
        else {
            "trialId": best.trial_id,
            "value": best.value,
            "params": best.params,
            "epoch": best.epoch,
            "checkpoint": best.checkpoint,
        },
    }
    doc["usage"] = used
    if elapsed_s is not None:
        doc["elapsedS"] = round(elapsed_s, 3)
    return doc


def _print_outcome(
    sweep: SweepTable, best: BestTrial | None, used: dict[str, Any], **evaluated: Any
) -> None:

    print_table(render_table(sweep, best, **evaluated))
    for line in summary(used):
        console.print(f"usage: {line}", highlight=False)
    if best:
        params = " ".join(f"{k}={_fmt(v)}" for k, v in best.params.items())
        console.print(
            f"best: trial {best.trial_id} {best.metric}={_fmt(best.value)}  {params}",
            highlight=False,
            soft_wrap=True,
        )
        console.print(f"checkpoint: {best.checkpoint}", highlight=False, soft_wrap=True)


@app.command("results")
@handle_errors
def show_results(
    name: str = typer.Argument(..., help="The sweep's metadata.name."),
    storage: str | None = StorageOption,
    prices: Path | None = PricesOption,
    sort_by: str | None = typer.Option(
        None,
        "--sort-by",
        help="Order trials by a `rayfleet evaluate` score of their checkpoints: "
        "accuracy, macro_f1, weighted_f1, macro_precision, macro_recall, roc_auc, log_loss.",
    ),
    output: Output = OutputOption,
) -> None:
    """Print a sweep's trial table, best trial and usage (cost with a price table, and what
    early stopping saved), from storage alone; trials scored by `rayfleet evaluate` show
    those scores too."""

    if sort_by is not None and sort_by not in EVALUATED:
        raise BadInputError(
            f"--sort-by {sort_by!r} is not an evaluated score; use one of {', '.join(EVALUATED)}"
        )
    price_table = load_prices(prices)
    uri = resolve_storage(storage).join("sweeps", name)
    found, best = require_results(uri, name)
    used = sweep_usage(uri, found, price_table).model_dump(mode="json", by_alias=True)
    scores = trial_evaluations(found, lambda trial_id: trial_run_uri(uri, trial_id))
    if sort_by is not None and not any(sort_by in s for s in scores.values()):
        raise BadInputError(
            f"sweep {name}: no trial has an evaluated {sort_by}; run `rayfleet evaluate "
            f"--checkpoint URI` on the trials' checkpoints first (or --sweep {name} for the best)"
        )
    order = sort_by_evaluation(found, scores, sort_by) if sort_by else found.trials
    if output is Output.json:
        doc = sweep_doc(found, best, used=used)
        by_id = {t["trialId"]: t for t in doc["trials"]}
        doc["trials"] = [by_id[row.trial_id] for row in order]
        for trial in doc["trials"]:
            if trial["trialId"] in scores:
                trial["evaluation"] = scores[trial["trialId"]]
        return print_json(doc)
    _print_outcome(found, best, used, evaluated=scores, order=order, sort_key=sort_by)
