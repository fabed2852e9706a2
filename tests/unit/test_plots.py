"""`rayfleet plot`'s figures from hand-built records and sweep tables: a PNG is written, and
the axes say what they show (epoch, metric, searched parameter); ASHA stops are marked."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rayfleet import plots
from rayfleet.record import RunRecord
from rayfleet.tune.documents import SweepTable, TrialRow

pytestmark = pytest.mark.unit
PNG = b"\x89PNG\r\n\x1a\n"


def _record() -> RunRecord:
    epochs = [
        {
            "epoch": e,
            "launch": 1,
            "metrics": {"epoch": e, "loss": 1 / (e + 1), "val_accuracy": e / 4},
        }
        for e in range(3)
    ]
    epochs.append(
        {"epoch": 3, "launch": 2, "metrics": {"loss": 0.2, "val_accuracy": 0.8, "note": "x"}}
    )
    return RunRecord.model_validate({"name": "r", "status": "SUCCEEDED", "epochs": epochs})


def test_run_figure_has_one_labelled_panel_per_metric(tmp_path):
    fig = plots.run_figure(_record())
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert sorted(ax.get_title() for ax in shown) == ["loss", "val_accuracy"]  # not epoch, note
    assert {ax.get_xlabel() for ax in shown} == {"epoch"}
    loss = next(ax for ax in shown if ax.get_title() == "loss")
    assert len(loss.get_lines()) == 2  # two launches, two colours
    assert list(loss.get_lines()[0].get_xdata()) == [1, 2, 3]  # epochs from 1
    out = plots.save(fig, tmp_path / "sub" / "run.png")
    data = out.read_bytes()
    assert data.startswith(PNG) and len(data) > 5_000


def test_run_without_metrics_is_refused():
    with pytest.raises(ValueError, match="no per-epoch metrics"):
        plots.run_figure(RunRecord.model_validate({"name": "r", "epochs": []}))


def _table() -> SweepTable:
    rows = [
        TrialRow(trial_id="t1", params={"run.learningRate": 0.001, "model.config.act": "relu"},
                 state="DONE", epochs_done=4, value=0.9),
        TrialRow(trial_id="t2", params={"run.learningRate": 0.1, "model.config.act": "tanh"},
                 state="STOPPED", epochs_done=1, value=0.4),
        TrialRow(trial_id="t3", params={"run.learningRate": 0.01, "model.config.act": "relu"},
                 state="ERROR", epochs_done=0, value=None, error="boom"),
    ]  # fmt: skip
    return SweepTable(sweep="s", metric="val_accuracy", mode="max", epochs=4, trials=rows)


def test_sweep_figure_plots_metric_per_parameter_and_marks_asha_stops(tmp_path):
    curves = {"t1": [(0, 0.5), (1, 0.7), (2, 0.8), (3, 0.9)], "t2": [(0, 0.4)]}
    fig = plots.sweep_figure(_table(), curves, best_trial="t1")
    lr, act = fig.axes[0], fig.axes[1]
    assert (lr.get_xlabel(), lr.get_ylabel()) == ("run.learningRate", "val_accuracy")
    assert lr.get_xscale() == "log"  # 0.001 .. 0.1
    assert [t.get_text() for t in act.get_xticklabels()] == ["relu", "tanh"]  # categories
    trials = fig.axes[2]
    assert trials.get_xlabel() == "epoch"
    assert [line.get_label() for line in trials.get_lines()] == ["t1", "t2"]
    labels = trials.get_legend_handles_labels()[1]
    assert "stopped early" in labels
    data = plots.save(fig, tmp_path / "sweep.png").read_bytes()
    assert data.startswith(PNG) and len(data) > 5_000


def test_a_log_uniform_parameter_gets_a_log_axis_however_narrow_its_trials():
    table = _table()
    for row, lr in zip(table.trials, (0.001, 0.003, 0.002), strict=True):
        row.params["run.learningRate"] = lr  # 3x apart: linear by spread alone
    assert plots.sweep_figure(table, {}).axes[0].get_xscale() == "linear"
    fig = plots.sweep_figure(table, {}, log_params=["run.learningRate"])
    assert fig.axes[0].get_xscale() == "log"


def test_cli_help_does_not_import_matplotlib():
    probe = (
        "import sys\nfrom typer.testing import CliRunner\nfrom rayfleet.cli.main import app\n"
        "r = CliRunner().invoke(app, ['plot', '--help'])\nassert r.exit_code == 0, r.output\n"
        "assert '--sweep' in r.output\nprint('matplotlib' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "False"
