"""`rayfleet evaluate (--run NAME | --sweep NAME | --checkpoint URI)`: score a verified
checkpoint on a dataset split; evaluation.json and two PNGs land beside the checkpoint.

The work is in rayfleet.evaluation (a lazy module: imported when the command runs, so
`--help` stays fast); this module reads the options and prints: a table per class for
people, the stored document for `-o json`.
"""

from __future__ import annotations

import typer

from rayfleet.cli.options import StorageOption
from rayfleet.cli.output import (
    Output,
    OutputOption,
    console,
    handle_errors,
    print_json,
    print_table,
    progress_console,
    table,
)
from rayfleet.evaluation.document import DEFAULT_BATCH_SIZE
from rayfleet.lazy import lazy

runner = lazy("rayfleet.evaluation.runner")  # torch, scikit-learn: when the command runs


@handle_errors
def evaluate(
    run: str | None = typer.Option(None, "--run", help="A run: its newest verified checkpoint."),
    sweep: str | None = typer.Option(
        None, "--sweep", help="A sweep: the checkpoint its best.json names."
    ),
    checkpoint: str | None = typer.Option(
        None, "--checkpoint", help="A checkpoint folder URI (its manifest must verify)."
    ),
    storage: str | None = StorageOption,
    dataset: str | None = typer.Option(
        None,
        "--dataset",
        help="A dataset name under <storage>/datasets/ or a URI; default the one the run "
        "trained on.",
    ),
    split: str = typer.Option("val", "--split", help="train or val."),
    batch_size: int = typer.Option(
        DEFAULT_BATCH_SIZE, "--batch-size", help="Rows per forward pass."
    ),
    output: Output = OutputOption,
) -> None:
    """Score a trained model: accuracy, per-class precision/recall/F1, ROC AUC, log loss and
    the confusion matrix, stored as evaluation.json and PNG plots beside the checkpoint."""
    notes = progress_console(output)
    done = runner.evaluate(
        run=run, sweep=sweep, checkpoint=checkpoint, storage=storage, dataset=dataset,
        split=split, batch_size=batch_size,
        note=lambda line: notes.print(line, style="dim", highlight=False),
    )  # fmt: skip
    doc = done.evaluation
    if output is Output.json:
        return print_json(doc.to_json())
    print_table(_scores_table(doc))
    console.print(f"evaluation -> {done.uri}", highlight=False)
    console.print(f"confusion matrix -> {doc.plots.confusion}", highlight=False)
    console.print(f"ROC curves -> {doc.plots.roc}", highlight=False)
    if done.mlflow_attached:
        console.print("attached to the run's MLflow run", style="dim", highlight=False)


def _tail(uri: str, parts: int = 2) -> str:
    return "/".join(uri.rstrip("/").rsplit("/", parts)[-parts:])


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _scores_table(doc):
    m = doc.metrics
    rows = [
        (c.name, _num(c.precision), _num(c.recall), _num(c.f1), str(c.support), _num(c.roc_auc))
        for c in m.per_class
    ]
    rows.append(("", "", "", "", "", ""))
    for label, avg, auc in (
        ("macro avg", m.macro_avg, m.roc_auc),
        ("weighted avg", m.weighted_avg, m.roc_auc_weighted if len(m.per_class) > 2 else None),
    ):
        rows.append((label, _num(avg.precision), _num(avg.recall), _num(avg.f1),
                     str(avg.support), _num(auc)))  # fmt: skip
    auc = "- (a class has no example in this split)" if m.roc_auc is None else _num(m.roc_auc)
    return table(
        ("class", "precision", "recall", "f1", "support", "roc auc"),
        rows,
        title=f"{doc.via}: {_tail(doc.checkpoint)} on {_tail(doc.dataset, 1)} {doc.split}",
        caption=f"accuracy {m.accuracy:.4f}  log loss {m.log_loss:.4f}  ROC AUC {auc}  "
        f"{m.examples} examples",
        right=("precision", "recall", "f1", "support", "roc auc"),
    )
