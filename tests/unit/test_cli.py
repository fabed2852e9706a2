"""The CLI's shape: one output option (`-o text|json`) on every command that prints results,
JSON documents with the documented keys, one table style, one "spec or subcommand" rule."""

from __future__ import annotations

import json
import sys

import click
import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from rayfleet.cli.main import app
from rayfleet.cli.output import Output, print_table, table
from rayfleet.tune import results
from rayfleet.tune.results import BestTrial, SweepTable, TrialRow

pytestmark = pytest.mark.unit

# Every command that prints a result (render writes files; validate/schema/context print
# what they were asked for).
RESULT_COMMANDS = [
    ("run",),
    ("predict",),
    ("submit",),
    ("sweep", "start"),
    ("sweep", "results"),
    ("serve", "status"),
    ("data", "import", "digits"),
    ("jobs", "list"),
    ("jobs", "status"),
    ("jobs", "logs"),
    ("jobs", "stop"),
    ("jobs", "describe"),
]


def _command(path: tuple[str, ...]) -> click.Command:
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return command


@pytest.mark.parametrize("path", RESULT_COMMANDS, ids=" ".join)
def test_every_result_command_takes_the_one_output_option(path):
    options = [p for p in _command(path).params if "--output" in p.opts]
    assert len(options) == 1, path
    option = options[0]
    assert option.opts == ["--output", "-o"] and option.default is Output.text
    refused = CliRunner().invoke(app, [*path, "-o", "xml"])
    assert refused.exit_code == 2 and "'text', 'json'" in refused.output, refused.output


@pytest.fixture
def env(monkeypatch, tmp_path):
    for key in ("RAY_ADDRESS", "RAYFLEET_STORAGE", "RAYFLEET_SERVE_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RAYFLEET_SERVE_STATE", str(tmp_path / "no-state.json"))
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def _invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_serve_status_json_when_nothing_is_served(env, tmp_path):
    """As a user runs it: a fresh process with no Ray here (a session-wide Ray may be
    connected in this test process, and `serve status` would report on that one)."""
    import os
    import subprocess

    cleaned = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}

    def run(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "rayfleet.cli.main", "serve", "status", *args]
        return subprocess.run(cmd, env=cleaned, capture_output=True, text=True, timeout=120)

    result = run("-o", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"serving": False, "url": None, "applications": []}
    text = run()
    assert text.returncode == 0 and "nothing is served here" in text.stdout, text.stdout


def test_spec_or_subcommand_is_one_rule_for_serve_and_sweep(env, tmp_path):
    for group in ("serve", "sweep"):
        missing = _invoke(group, "nope.yaml")  # a spec, not a subcommand
        assert missing.exit_code == 2 and "nope.yaml: no such spec file" in missing.output
    # A word naming a subcommand is the subcommand, unless it is an existing file.
    (tmp_path / "status").write_text("kind: Nothing\n")
    as_spec = _invoke("serve", "status")
    assert as_spec.exit_code == 2 and "status" in as_spec.output
    assert "nothing is served here" not in as_spec.output


def _sweep_table() -> tuple[SweepTable, BestTrial]:
    rows = [
        TrialRow(trial_id="t1", params={"run.learningRate": 0.01}, state="DONE", epochs_done=3,
                 value=0.97),
        TrialRow(trial_id="t2", params={"run.learningRate": 0.1}, state="STOPPED",
                 epochs_done=1, value=0.4),
    ]  # fmt: skip
    sweep = SweepTable(sweep="s", metric="val_accuracy", mode="max", epochs=3, trials=rows)
    best = BestTrial(
        sweep="s", metric="val_accuracy", mode="max", value=0.97, trial_id="t1",
        params={"run.learningRate": 0.01}, epoch=2, checkpoint="/x/t1/ckpt",
    )  # fmt: skip
    return sweep, best


def test_sweep_results_json_has_the_documented_keys(env, tmp_path):
    from rayfleet.storage.filesystem import filesystem_for, write_bytes
    from rayfleet.storage.uri import parse_uri
    from rayfleet.tune.documents import dump_best

    sweep, best = _sweep_table()
    uri = parse_uri(str(tmp_path / "store" / "sweeps" / "s"))
    results.write_table(uri, sweep)
    write_bytes(filesystem_for(uri), uri.join("best.json").fs_path, dump_best(best))
    result = _invoke("sweep", "results", "s", "--storage", str(tmp_path / "store"), "-o", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert set(doc) == {
        "name", "metric", "mode", "epochs", "epochsTrained", "trials", "best", "usage"
    }  # fmt: skip
    assert doc["epochsTrained"] == 4 and [t["state"] for t in doc["trials"]] == ["DONE", "STOPPED"]
    assert doc["trials"][0] == {
        "trialId": "t1", "params": {"run.learningRate": 0.01}, "state": "DONE",
        "epochsDone": 3, "value": 0.97, "error": None,
    }  # fmt: skip
    assert doc["best"] == {
        "trialId": "t1", "value": 0.97, "params": {"run.learningRate": 0.01}, "epoch": 2,
        "checkpoint": "/x/t1/ckpt",
    }  # fmt: skip
    text = _invoke("sweep", "results", "s", "--storage", str(tmp_path / "store"))
    assert text.exit_code == 0 and "best: trial t1" in text.output


def test_run_json_has_the_documented_keys():
    from rayfleet.cli.run_commands import run_doc
    from rayfleet.train.launcher import RunResult

    result = RunResult(name="r", run_uri="s3://b/runs/r", checkpoint_uri="s3://b/runs/r/c",
                       epoch=2, metrics={"epoch": 2, "val_accuracy": 0.9}, attempts=1,
                       elapsed_s=1.23456, startup={"ray": 2.5})  # fmt: skip
    assert run_doc(result) == {
        "name": "r", "runUri": "s3://b/runs/r", "checkpointUri": "s3://b/runs/r/c", "epoch": 2,
        "metrics": {"val_accuracy": 0.9}, "attempts": 1, "elapsedS": 1.235, "skipped": [],
        "startupS": {"ray": 2.5},
    }  # fmt: skip


def test_describe_without_storage_is_one_line_exit_2(env):
    result = _invoke("jobs", "describe", "r", "-o", "json")
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "where is run r?" in lines[0] and "--storage" in lines[0]


def test_one_table_style_folds_long_cells_and_never_cuts_them():
    from rayfleet.cli.sweep_commands import render_table

    long = "s3://bucket/" + "x" * 60 + "/checkpoint_e000001-abc"
    con = Console(width=50, record=True)
    print_table(table(["NAME", "CHECKPOINT"], [("digits", long)], title="t"), con)
    out = con.export_text()
    assert "NAME" in out and "digits" in out
    assert long in out and "…" not in out  # the whole URI, on one line
    sweep, best = _sweep_table()
    con = Console(width=120, record=True)
    con.print(render_table(sweep, best))
    text = con.export_text()
    assert "sweep s: max val_accuracy" in text and "best" in text and "4 epochs trained" in text


def test_loopback_s3_without_moto_names_the_extra(monkeypatch):
    from rayfleet.errors import BadInputError
    from rayfleet.storage.s3server import LoopbackS3

    monkeypatch.setitem(sys.modules, "moto.server", None)  # as if moto were not installed
    with pytest.raises(BadInputError) as err:
        LoopbackS3()
    message = str(err.value)
    assert "\n" not in message and "pip install 'rayfleet[demo]'" in message


def test_sweep_results_show_and_sort_by_evaluated_scores(env, tmp_path):
    """Trials scored by `rayfleet evaluate` (evaluation.json beside a checkpoint) show those
    scores; --sort-by orders by one (log loss: lowest first); an unknown or absent score is
    one line, exit 2."""
    from rayfleet.evaluation.document import EVALUATION_FILE
    from rayfleet.storage.checkpoints import checkpoint_dir_name, write_manifest
    from rayfleet.storage.filesystem import filesystem_for, write_bytes
    from rayfleet.storage.uri import parse_uri
    from rayfleet.tune.documents import dump_best

    sweep, best = _sweep_table()
    store = tmp_path / "store"
    uri = parse_uri(str(store / "sweeps" / "s"))
    results.write_table(uri, sweep)
    write_bytes(filesystem_for(uri), uri.join("best.json").fs_path, dump_best(best))

    def evaluated(trial, accuracy, log_loss):
        folder = store / "sweeps" / "s" / trial / "train" / checkpoint_dir_name(0, "0abc")
        folder.mkdir(parents=True)
        (folder / "state.pt").write_bytes(b"weights")
        write_manifest(folder, {"epoch": 0})
        per_class = [
            {"name": n, "precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 5} for n in "ab"
        ]
        average = {"precision": accuracy, "recall": accuracy, "f1": accuracy, "support": 10}
        doc = {
            "checkpoint": str(folder), "manifestSha256": "0" * 64, "via": "checkpoint",
            "dataset": "d", "split": "val", "evaluatedAt": "2026-12-02T00:00:00Z",
            "classNames": ["a", "b"],
            "metrics": {
                "examples": 10, "accuracy": accuracy, "perClass": per_class,
                "macroAvg": average, "weightedAvg": average, "logLoss": log_loss,
                "confusionMatrix": [[5, 0], [0, 5]],
            },
            "plots": {"confusion": "c.png", "roc": "r.png"},
        }  # fmt: skip
        (folder / EVALUATION_FILE).write_text(json.dumps(doc))

    evaluated("t1", 0.90, 0.30)
    evaluated("t2", 0.95, 0.20)
    args = ("sweep", "results", "s", "--storage", str(store))
    doc = json.loads(_invoke(*args, "--sort-by", "log_loss", "-o", "json").output)
    assert [t["trialId"] for t in doc["trials"]] == ["t2", "t1"]
    assert doc["trials"][0]["evaluation"]["accuracy"] == 0.95
    text = _invoke(*args, "--sort-by", "accuracy")
    assert text.exit_code == 0, text.output
    assert "eval accuracy" in text.output and "sorted by eval accuracy" in text.output
    bad = _invoke(*args, "--sort-by", "speed")
    assert bad.exit_code == 2 and "is not an evaluated score" in bad.output
    missing = _invoke(*args, "--sort-by", "roc_auc")
    assert missing.exit_code == 2 and "no trial has an evaluated roc_auc" in missing.output
