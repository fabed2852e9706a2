"""`rayfleet evaluate`'s pure parts: scores against arrays small enough to check by hand, the
figures, the stored document, and every bad input refused in one line (exit 2) with nothing
written. The bad-input cases need a verified checkpoint and a dataset descriptor, never a
model: they are refused before anything is loaded, so these tests import no torch or Ray."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from rayfleet.cli.main import app
from rayfleet.data.layout import DESCRIPTOR, DatasetInfo
from rayfleet.evaluation import metrics
from rayfleet.evaluation.document import Evaluation
from rayfleet.storage.checkpoints import write_manifest

# Six examples, three classes: row i is (true class, probabilities).
LABELS = np.array([0, 0, 1, 1, 2, 2])
PROBS = np.array(
    [
        [0.50, 0.05, 0.45],  # 0 -> 0
        [0.35, 0.45, 0.20],  # 0 -> 1 (the one mistake)
        [0.10, 0.80, 0.10],  # 1 -> 1
        [0.20, 0.60, 0.20],  # 1 -> 1
        [0.10, 0.20, 0.70],  # 2 -> 2
        [0.30, 0.30, 0.40],  # 2 -> 2
    ]
)
NAMES = ["a", "b", "c"]


def test_three_classes_scored_as_worked_out_by_hand():
    s = metrics.score(LABELS, PROBS, NAMES)
    assert s.examples == 6
    assert s.accuracy == pytest.approx(5 / 6)
    assert s.confusion_matrix == [[1, 1, 0], [0, 2, 0], [0, 0, 2]]
    a, b, c = s.per_class
    assert (a.name, a.precision, a.recall, a.f1, a.support) == (
        "a",
        1.0,
        0.5,
        pytest.approx(2 / 3),
        2,
    )
    assert (b.precision, b.recall, b.f1) == (pytest.approx(2 / 3), 1.0, pytest.approx(0.8))
    assert (c.precision, c.recall, c.f1) == (1.0, 1.0, 1.0)
    assert s.macro_avg.precision == pytest.approx(8 / 9)
    assert s.macro_avg.recall == pytest.approx(5 / 6)
    assert s.macro_avg.f1 == pytest.approx((2 / 3 + 0.8 + 1) / 3)
    assert s.macro_avg.support == 6
    # Equal supports: the weighted average is the macro average.
    assert s.weighted_avg.f1 == pytest.approx(s.macro_avg.f1)
    # One-vs-rest AUC: a and b rank every positive above every negative; for c the
    # positive 0.40 is below the negative 0.45 (row 0), so 7 of 8 pairs are in order.
    assert [x.roc_auc for x in s.per_class] == [1.0, 1.0, 0.875]
    assert s.roc_auc == pytest.approx((1 + 1 + 0.875) / 3)
    assert s.roc_auc_weighted == pytest.approx(s.roc_auc)
    truth = PROBS[np.arange(6), LABELS]
    assert s.log_loss == pytest.approx(-np.log(truth).mean())


def test_two_classes_auc_comes_from_the_positive_class_probability():
    positive = np.array([0.1, 0.4, 0.35, 0.8])
    s = metrics.score(np.array([0, 0, 1, 1]), np.column_stack([1 - positive, positive]), ["n", "p"])
    # Pairs (positive, negative) in order: 0.35>0.1, 0.8>0.1, 0.8>0.4, but 0.35<0.4 -> 3/4.
    assert s.roc_auc == pytest.approx(0.75) == s.per_class[1].roc_auc
    assert s.roc_auc_weighted is None
    assert s.accuracy == 0.75  # predicted 0, 0, 0, 1
    assert (s.per_class[1].precision, s.per_class[1].recall) == (1.0, 0.5)
    (curve,) = metrics.roc_curves(
        np.array([0, 0, 1, 1]), np.column_stack([1 - positive, positive]), ["n", "p"]
    )
    assert curve.name == "p" and curve.auc == pytest.approx(0.75)
    assert curve.fpr[0] == 0 and curve.tpr[-1] == 1


def test_a_class_missing_from_the_split_has_no_auc_and_raises_no_warning():
    labels = np.array([0, 0, 1, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = metrics.score(labels, PROBS[:4], NAMES)
        curves = metrics.roc_curves(labels, PROBS[:4], NAMES)
    assert s.per_class[2].roc_auc is None and s.per_class[2].support == 0
    assert s.per_class[2].precision == 0.0  # nothing predicted c, nothing is c
    assert s.roc_auc is None and s.roc_auc_weighted is None
    assert [c.name for c in curves] == ["a", "b"]


def test_softmax_is_stable_and_rows_sum_to_one():
    p = metrics.softmax(np.array([[1000.0, 1000.0, 0.0], [0.0, 0.0, 0.0]], dtype=np.float32))
    assert np.allclose(p.sum(axis=1), 1)
    assert p[0, 0] == pytest.approx(0.5) and p[1, 2] == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    ("labels", "probs", "match"),
    [
        (LABELS[:5], PROBS, "shaped"),
        (np.array([0, 0, 1, 1, 2, 3]), PROBS, "labels must lie"),
        (LABELS, np.where(PROBS > 0.7, np.nan, PROBS), "NaN"),
    ],
)
def test_inconsistent_inputs_are_refused(labels, probs, match):
    with pytest.raises(ValueError, match=match):
        metrics.score(labels, probs, NAMES)


def test_figures_are_pngs_with_labelled_axes():
    from rayfleet import plots

    s = metrics.score(LABELS, PROBS, NAMES)
    fig = plots.confusion_figure(s.confusion_matrix, NAMES, title="t")
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted class", "true class")
    assert [t.get_text() for t in ax.texts] == ["1", "1", "2", "2"]  # non-zero cells
    assert plots.png_bytes(fig).startswith(b"\x89PNG")
    fig = plots.roc_figure(metrics.roc_curves(LABELS, PROBS, NAMES), title="t")
    full, corner = fig.axes[:2]
    assert full.get_xlabel() == "false positive rate" and corner.get_xlim() == (0.0, 0.1)
    legend = [t.get_text() for t in corner.get_legend().get_texts()]
    assert legend == ["a (AUC 1.000)", "b (AUC 1.000)", "c (AUC 0.875)", "random"]
    assert plots.png_bytes(fig).startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="shaped"):
        plots.confusion_figure([[1, 2]], NAMES, title="t")


def _document(**change) -> dict:
    s = metrics.score(LABELS, PROBS, NAMES)
    doc = {
        "checkpoint": "s3://b/runs/r/checkpoint_e000001-abc",
        "manifestSha256": "0" * 64,
        "via": "run r",
        "dataset": "s3://b/datasets/d",
        "split": "val",
        "evaluatedAt": "2026-12-02T00:00:00Z",
        "classNames": NAMES,
        "metrics": s.model_dump(mode="json", by_alias=True),
        "plots": {"confusion": "c.png", "roc": "r.png"},
    }
    return {**doc, **change}


def test_the_document_round_trips_in_camel_case_and_refuses_unknown_keys():
    doc = Evaluation.model_validate(_document())
    assert Evaluation.model_validate(json.loads(json.dumps(doc.to_json()))) == doc
    assert set(doc.to_json()["metrics"]) >= {"perClass", "macroAvg", "rocAuc", "logLoss"}
    flat = doc.metrics.flat("eval_val_")
    assert flat["eval_val_accuracy"] == pytest.approx(5 / 6)
    assert set(flat) == {f"eval_val_{k}" for k in (
        "accuracy", "macro_f1", "weighted_f1", "macro_precision", "macro_recall", "roc_auc",
        "log_loss")}  # fmt: skip
    for bad in ({"extra": 1}, {"manifestSha256": "abc"}):
        with pytest.raises(ValidationError):
            Evaluation.model_validate(_document(**bad))


def test_the_cli_table_has_a_row_per_class_both_averages_and_the_headline():
    from rich.console import Console

    from rayfleet.cli.evaluate_commands import _scores_table
    from rayfleet.cli.output import print_table

    con = Console(record=True, width=200)
    print_table(_scores_table(Evaluation.model_validate(_document())), con)
    text = con.export_text()
    assert "run r: r/checkpoint_e000001-abc on d val" in text
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line.strip()}
    assert rows["c"] == ["1.0000", "1.0000", "1.0000", "2", "0.8750"]
    assert "macro avg" in text and "weighted avg" in text
    assert "accuracy 0.8333  log loss" in text and "ROC AUC 0.9583  6 examples" in text


# ------------------------------------------------------------------------- bad input


DIGITS_META = {
    "recipe": "digits-cnn",
    "model_config": {},
    "input": {"shape": [1, 8, 8], "dtype": "float32"},
    "num_classes": 10,
    "epoch": 0,
    "metrics": {},
}


@pytest.fixture
def store(tmp_path):
    """A local store: a run with a verified checkpoint (its weights are never opened here),
    a run whose only checkpoint is corrupt, and three dataset descriptors."""
    good = tmp_path / "runs" / "good" / "checkpoint_e000000-0a"
    good.mkdir(parents=True)
    (good / "state.pt").write_bytes(b"weights are not read before the input is checked")
    write_manifest(good, DIGITS_META)
    bad = tmp_path / "runs" / "corrupt" / "checkpoint_e000000-0a"
    bad.mkdir(parents=True)
    (bad / "state.pt").write_bytes(b"original")
    write_manifest(bad, DIGITS_META)
    (bad / "state.pt").write_bytes(b"tampered")
    for name, info in {
        "digits": {"feature_shape": [1, 8, 8], "num_classes": 10},
        "three": {"feature_shape": [1, 8, 8], "num_classes": 3},
        "iris": {"kind": "table", "feature_shape": [4], "num_classes": 3},
    }.items():
        folder = tmp_path / "datasets" / name
        folder.mkdir(parents=True)
        doc = DatasetInfo(name=name, rows={"train": 8, "val": 2}, **info)
        (folder / DESCRIPTOR).write_text(doc.to_json())
    return tmp_path


def _snapshot(root) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        ([], "give exactly one of --run NAME, --sweep NAME or --checkpoint URI"),
        (["--run", "good", "--sweep", "s"], "(got --run and --sweep)"),
        (["--run", "corrupt"], "run corrupt: no verified checkpoint under"),
        (["--run", "nothing-here"], "run nothing-here: no verified checkpoint"),
        (["--checkpoint", "{store}/runs/corrupt/checkpoint_e000000-0a"], "sha256 does not match"),
        (["--sweep", "nope"], "sweep nope: no best.json"),
        (["--run", "good", "--dataset", "digits", "--split", "test"], "--split 'test' is unknown"),
        (["--run", "good", "--dataset", "three"], "3 classes but checkpoint"),
        (["--run", "good", "--dataset", "iris"], "float32 [4] but checkpoint"),
        (["--run", "good"], "pass --dataset NAME_OR_URI"),  # no run record says which
        (["--run", "good", "--dataset", "digits", "--batch-size", "0"], "--batch-size 0"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(store, args, expect):
    before = _snapshot(store)
    args = [a.format(store=store) for a in args]
    done = CliRunner().invoke(app, ["evaluate", *args, "--storage", str(store)])
    lines = [line for line in done.output.splitlines() if line.strip()]
    assert done.exit_code == 2, done.output
    assert len(lines) == 1 and lines[0].startswith("error:") and expect in lines[0], lines
    assert _snapshot(store) == before


def test_a_compressed_checkpoint_is_evaluated_on_the_dataset_its_lineage_names():
    """`rayfleet compress` writes no run record; its manifest's lineage names the dataset."""
    from rayfleet.evaluation.source import _compressed_from

    digits = "s3://team-bucket/datasets/digits"
    meta = {"compression": {"evaluation": {"dataset": digits, "split": "val"}}}
    assert str(_compressed_from(meta, None)) == "s3://team-bucket/datasets/digits"
    other = "s3://team-bucket/datasets/x"
    calibrated = {"compression": {"calibration": {"dataset": other, "rows": 9}}}
    assert str(_compressed_from(calibrated, None)) == "s3://team-bucket/datasets/x"
    assert _compressed_from({"epoch": 1}, None) is None
