"""`rayfleet submit`, `rayfleet jobs list|status|logs|stop|describe`, `rayfleet context ...`.

Every `jobs` command takes a run name (its newest submission) or a submission id, and
`-o json` prints one JSON document for scripts instead of the human view.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import typer

from rayfleet import record
from rayfleet.cli.options import (
    AddressOption,
    ContextOption,
    InsecureOption,
    PricesOption,
    SetOption,
    TokenFileOption,
)
from rayfleet.cli.output import (
    Output,
    OutputOption,
    console,
    err_console,
    handle_errors,
    print_json,
    print_table,
    table,
)
from rayfleet.errors import BadInputError
from rayfleet.jobs.cluster import connect
from rayfleet.jobs.follow import PENDING, TERMINAL, status_of
from rayfleet.jobs.follow import follow as follow_log
from rayfleet.jobs.locate import refresh_record, run_storage
from rayfleet.jobs.target import (
    Context,
    cleartext_beyond_loopback,
    config_path,
    insecure_warning,
    load_config,
    normalize_address,
    resolve,
    save_config,
)
from rayfleet.lazy import lazy
from rayfleet.record import find, submission_entry
from rayfleet.retry import TimedOutError, poll
from rayfleet.storage import logs as stored
from rayfleet.storage.filesystem import filesystem_for
from rayfleet.usage import load_prices, reprice, summary

submitting = lazy("rayfleet.jobs.submit")  # the spec checks and packaging: only for submit

app = typer.Typer(help="Jobs on a Ray cluster: list, status, logs, stop, describe.")
contexts = typer.Typer(help="Named Ray clusters (~/.config/rayfleet/config.yaml).")


def _target(address, context, token_file, insecure=False):

    target = resolve(address, context, token_file, insecure=insecure)
    if warning := insecure_warning(target):
        err_console.print(f"[yellow]{warning}[/]", highlight=False, soft_wrap=True)
    return target


def _connect(address, context, token_file, insecure=False):

    return connect(_target(address, context, token_file, insecure))


def _job_doc(job) -> dict[str, Any]:

    meta = job.metadata or {}
    return {
        **submission_entry(job),
        "run": meta.get("rayfleet.run"),
        "kind": meta.get("rayfleet.kind"),
        "storage": meta.get("rayfleet.storage"),
        "record": meta.get("rayfleet.record"),
        "entrypoint": job.entrypoint,
    }


def _write_log(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


@handle_errors
def submit(
    spec: Path = typer.Argument(..., help="TrainJob or SweepJob spec YAML file."),
    overrides: list[str] = SetOption,
    address: str | None = AddressOption,
    context: str | None = ContextOption,
    token_file: Path | None = TokenFileOption,
    insecure: bool = InsecureOption,
    follow: bool = typer.Option(False, "--follow", "-f", help="Stream the log until the end."),
    retries: int = typer.Option(
        0, "--retries", min=0, help="Resubmit (and resume) when the driver dies, N times."
    ),
    env: list[str] = typer.Option(
        [], "--env", help="NAME=VALUE for the job's processes (repeatable)."
    ),
    force: bool = typer.Option(
        False,
        "--force",
        help="TrainJob: resume the run's newest checkpoint even if another training wrote it.",
    ),
    output: Output = OutputOption,
) -> None:
    """Submit a spec to a Ray cluster (Jobs API); the cluster runs `rayfleet run|sweep`."""
    target = _target(address, context, token_file, insecure)
    plan = submitting.plan(spec, overrides or [], env, force=force)
    quiet = output is Output.json
    outcome = submitting.run(
        plan,
        target,
        follow_logs=follow and not quiet,
        retries=retries,
        write=_write_log,
        say=(lambda line: None)
        if quiet
        else (lambda line: err_console.print(line, highlight=False)),
    )
    if quiet:
        print_json(
            {
                "run": plan.name,
                "submissions": outcome.submission_ids,
                "status": outcome.status,
                "record": f"{plan.record_uri}/record.json",
                "notSent": list(outcome.skipped),
            }
        )
        return
    if outcome.status == "SUBMITTED":
        console.print(
            f"follow it: rayfleet jobs logs {plan.name} --follow --address {target.address}\n"
            f"record: {plan.record_uri}/record.json",
            highlight=False,
        )
    else:
        console.print(
            f"[green]{outcome.status}[/] {plan.name} after {len(outcome.submission_ids)} "
            f"submission(s); record: {plan.record_uri}/record.json",
            highlight=False,
        )


@app.command("list")
@handle_errors
def list_jobs(
    address: str | None = AddressOption,
    context: str | None = ContextOption,
    token_file: Path | None = TokenFileOption,
    insecure: bool = InsecureOption,
    all_jobs: bool = typer.Option(False, "--all", help="Also jobs not submitted by rayfleet."),
    output: Output = OutputOption,
) -> None:
    """Jobs on the cluster, newest last."""
    cluster = _connect(address, context, token_file, insecure)
    jobs = sorted(cluster.jobs(), key=lambda j: j.start_time or 0)
    docs = [_job_doc(j) for j in jobs if all_jobs or (j.metadata or {}).get("rayfleet.run")]
    if output is Output.json:
        return print_json(docs)
    rows = [
        (
            d["id"] or "-",
            d["run"] or "-",
            d["kind"] or "-",
            d["status"],
            d["submitted"] or "-",
            d["ended"] or "-",
        )
        for d in docs
    ]
    columns = ["submission id", "run", "kind", "status", "submitted", "ended"]
    if not docs:
        return console.print(f"no rayfleet jobs on {cluster.address}", highlight=False)
    print_table(table(columns, rows))


@app.command()
@handle_errors
def status(
    name: str = typer.Argument(..., help="Run name (newest submission) or submission id."),
    address: str | None = AddressOption,
    context: str | None = ContextOption,
    token_file: Path | None = TokenFileOption,
    insecure: bool = InsecureOption,
    output: Output = OutputOption,
) -> None:
    """A job's status on the cluster (and the run record brought up to date)."""
    cluster = _connect(address, context, token_file, insecure)
    job = cluster.find(name)
    doc = _job_doc(job)
    _refresh_record(cluster, job)
    if output is Output.json:
        return print_json(doc)
    console.print(f"{doc['id']}: {doc['status']} {doc['message']}".rstrip(), highlight=False)


@app.command()
@handle_errors
def logs(
    name: str = typer.Argument(..., help="Run name (newest submission) or submission id."),
    address: str | None = AddressOption,
    context: str | None = ContextOption,
    token_file: Path | None = TokenFileOption,
    insecure: bool = InsecureOption,
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep streaming until the end."),
    storage: str | None = typer.Option(
        None,
        "--storage",
        help="Read the log copied to <storage>/runs|sweeps/NAME/logs/ instead of asking the "
        "cluster: works after the cluster is gone, and for `rayfleet run`.",
    ),
    stream: str = typer.Option(
        "driver", "--stream", help="With --storage: driver, worker-rankN, or all."
    ),
    output: Output = OutputOption,
) -> None:
    """A job's log (its driver's stdout and stderr)."""

    if storage is not None:
        return _stored_logs(name, storage, stream, follow=follow, output=output)
    cluster = _connect(address, context, token_file, insecure)
    job = cluster.find(name)
    if output is Output.json:
        return print_json({"id": job.submission_id, "logs": cluster.logs(job.submission_id)})
    if not follow:
        return _write_log(cluster.logs(job.submission_id))
    job = follow_log(cluster, job.submission_id, _write_log, err_console.print)
    _refresh_record(cluster, job, with_logs=True)


def _stored_logs(name: str, storage: str, stream: str, *, follow: bool, output: Output) -> None:
    """`jobs logs NAME --storage URI`: the copy in storage (storage.logs), no cluster."""

    uri, _ = record.find(name, storage)
    fs = filesystem_for(uri)
    logs_path = uri.join(stored.LOGS_DIR).fs_path
    names = stored.streams(fs, logs_path)
    if stream != "all" and stream not in names:
        raise BadInputError(
            f"{uri}: no {stream!r} log stored; it has: {', '.join(names) or 'none yet'}"
        )
    chosen = names if stream == "all" else [stream]
    if output is Output.json:  # {stream: text}
        return print_json({n: "".join(stored.read_new(fs, logs_path, n, set())) for n in chosen})
    if follow and stream != "all":

        def finished() -> bool:
            return (record.read(fs, uri) or {}).get("status") in record.TERMINAL

        return stored.follow(fs, logs_path, stream, _write_log, finished)
    for n in chosen:
        if stream == "all":
            console.print(f"[bold]== {n} ==[/]", highlight=False)
        for text in stored.read_new(fs, logs_path, n, set()):
            _write_log(text)


@app.command()
@handle_errors
def stop(
    name: str = typer.Argument(..., help="Run name (newest submission) or submission id."),
    address: str | None = AddressOption,
    context: str | None = ContextOption,
    token_file: Path | None = TokenFileOption,
    insecure: bool = InsecureOption,
    wait_s: float = typer.Option(30.0, "--wait", help="Seconds to wait for it to stop."),
    output: Output = OutputOption,
) -> None:
    """Stop a job (SIGTERM to its driver, then SIGKILL); its checkpoints stay in storage."""

    cluster = _connect(address, context, token_file, insecure)
    job = cluster.find(name)
    if status_of(job) not in TERMINAL:
        cluster.stop(job.submission_id)
        latest = [job]

        def stopped():
            latest[0] = cluster.info(job.submission_id)
            return latest[0] if status_of(latest[0]) in TERMINAL else None

        try:
            poll(stopped, timeout=wait_s, interval=1.0, what=f"{job.submission_id} to stop")
        except TimedOutError:
            pass  # report the status it has now; the record says the same
        job = latest[0]
        _refresh_record(cluster, job, with_logs=True)
        if status_of(job) == PENDING:
            err_console.print(
                f"[yellow]{job.submission_id} has not started, and Ray cannot stop a job before "
                "its driver starts: it starts once the resources it reserves (spec.driver) are "
                "free, or fails after RAY_JOB_START_TIMEOUT_SECONDS (default 900)[/]",
                highlight=False,
            )
    if output is Output.json:
        return print_json(_job_doc(job))
    console.print(f"{job.submission_id}: {status_of(job)}", highlight=False)


@app.command()
@handle_errors
def describe(
    name: str = typer.Argument(..., help="Run (or sweep) name."),
    storage: str | None = typer.Option(
        None,
        "--storage",
        help="Where the run lives; default: the job's, context's, or "
        "RAYFLEET_STORAGE. Needs no cluster.",
    ),
    address: str | None = AddressOption,
    context: str | None = ContextOption,
    token_file: Path | None = TokenFileOption,
    insecure: bool = InsecureOption,
    prices: Path | None = PricesOption,
    output: Output = OutputOption,
) -> None:
    """The run record from storage: spec, submissions, status, epochs, metrics, checkpoint,
    usage (and cost: as recorded, or at --prices), log tail. Works after the cluster is gone."""

    price_table = load_prices(prices)
    storage = storage or _storage_from_cluster(name, address, context, token_file, insecure)
    uri, doc = find(name, storage)
    if price_table is not None and doc.get("usage"):
        what = "sweep" if doc.get("kind") == "SweepJob" else "run"
        doc["usage"] = reprice(doc["usage"], price_table, f"{what} {name}")
    if output is Output.json:
        return print_json(doc)
    _print_record(uri, doc)


def _storage_from_cluster(name, address, context, token_file, insecure) -> str:
    """Without --storage: the context's storage, the job's metadata, or RAYFLEET_STORAGE."""

    named = address or context or os.environ.get("RAY_ADDRESS")
    return run_storage(name, _target(address, context, token_file, insecure) if named else None)


def _refresh_record(cluster, job, *, with_logs: bool = False) -> None:
    """`jobs` commands keep the run record current with what the cluster says."""

    if warning := refresh_record(cluster, job, with_logs=with_logs):
        err_console.print(f"[yellow]{warning}[/]", highlight=False)


def _print_record(uri, doc: dict[str, Any]) -> None:
    console.print(
        f"[bold]{doc.get('name')}[/] ({doc.get('kind')}): {doc.get('status')}  "
        f"launches: {doc.get('launches', 0)}  retries: {doc.get('retries', 0)}",
        highlight=False,
    )
    console.print(f"record: {uri}/record.json", highlight=False)
    for key in ("cluster", "started", "finished", "error"):
        if doc.get(key):
            console.print(f"  {key}: {doc[key]}", highlight=False)
    for sub in doc.get("submissions", []):
        console.print(
            f"  submission {sub['id']}: {sub['status']} {sub.get('submitted') or ''} -> "
            f"{sub.get('ended') or ''} exit={sub.get('exitCode')}",
            highlight=False,
        )
    epochs = [e["epoch"] for e in doc.get("epochs", [])]
    if epochs:
        repeated = sorted({e for e in epochs if epochs.count(e) > 1})
        console.print(
            f"  epochs trained: {len(epochs)} (0..{max(epochs)})"
            + (f", repeated: {repeated}" if repeated else ", none repeated"),
            highlight=False,
        )
    result = doc.get("result") or {}
    for key, value in (result.get("metrics") or {}).items():
        console.print(f"  {key}: {value}", highlight=False)
    if result.get("checkpointUri"):
        console.print(f"  checkpoint: {result['checkpointUri']}", highlight=False)
    if used := doc.get("usage"):
        open_launch = [x for x in used.get("launches", []) if x.get("ended") is None]
        for line in summary(used):
            console.print(f"  usage: {line}", highlight=False)
        if open_launch:
            console.print(
                f"  usage: launch {open_launch[-1]['launch']} still running (not counted yet)",
                highlight=False,
            )
    if tail := doc.get("logTail"):
        console.print("  log tail:", highlight=False)
        for line in tail[-10:]:
            console.print(f"    {line}", highlight=False, markup=False)


@contexts.command("add")
@handle_errors
def context_add(
    name: str = typer.Argument(...),
    address: str = typer.Option(..., "--address", help="Ray dashboard URL (http://HEAD:8265)."),
    token_file: Path | None = typer.Option(
        None, "--token-file", help="Ray auth token file of this cluster (its tokenFile)."
    ),
    storage: str | None = typer.Option(
        None, "--storage", help="Storage root of this cluster's runs (`jobs describe` looks there)."
    ),
    use: bool = typer.Option(False, "--use", help="Make it the current context."),
) -> None:
    """Add (or replace) a named cluster."""

    config = load_config()
    entry = Context(
        address=normalize_address(address, "--address"),
        token_file=str(token_file.expanduser().resolve()) if token_file else None,
        storage=storage,
    )
    config.contexts[name] = entry
    if use or not config.current_context:
        config.current_context = name
    console.print(f"context {name} -> {entry.address} ({save_config(config)})", highlight=False)
    if entry.token_file and cleartext_beyond_loopback(entry.address):
        err_console.print(
            f"[yellow]warning: {entry.address} is plain http to another host: commands refuse "
            "to send its token there without --insecure; prefer https://[/]",
            highlight=False,
            soft_wrap=True,
        )


@contexts.command("use")
@handle_errors
def context_use(name: str = typer.Argument(...)) -> None:
    """Make a context the default for submit and jobs."""

    config = load_config()
    if name not in config.contexts:
        raise BadInputError(f"no context {name!r} in {config_path()}; add it first")
    config.current_context = name
    save_config(config)
    console.print(f"current context: {name}", highlight=False)


@contexts.command("list")
@handle_errors
def context_list() -> None:
    """Named clusters; * marks the current one."""

    config = load_config()
    for name, entry in config.contexts.items():
        mark = "*" if name == config.current_context else " "
        console.print(f"{mark} {name}: {entry.address}", highlight=False)
