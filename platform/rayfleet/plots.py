"""Figures of runs and sweeps, from what storage holds (records and tables): pure data in,
a matplotlib figure out.

- a run: one panel per reported metric against the epoch (every launch of the run, a resumed
  launch in its own colour);
- a sweep: the sweep metric against each searched parameter (one point per trial, coloured
  by state), and every trial's curve of the metric per epoch, where a trial the scheduler
  stopped early (ASHA, median) ends in a marked cross.

matplotlib is imported lazily, with the Agg backend (headless: no display needed), so
`rayfleet --help` and everything else never pay for it.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from rayfleet.lazy import require
from rayfleet.record import RunRecord
from rayfleet.tune.documents import SweepTable

_STATE_COLOURS = {"DONE": "tab:green", "STOPPED": "tab:orange", "ERROR": "tab:red"}
_MAX_PANELS = 12


def _pyplot():
    matplotlib = require("matplotlib", purpose="rayfleet plot")
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def run_curves(run: RunRecord) -> dict[str, dict[int, list[tuple[int, float]]]]:
    """metric -> launch -> [(epoch, value)], from a run record's epochs (recovered entries
    included: they carry the metrics of the checkpoint a launch resumed from)."""
    curves: dict[str, dict[int, list[tuple[int, float]]]] = {}
    for entry in run.epochs:
        for key, value in entry.metrics.items():
            if key == "epoch" or (number := _number(value)) is None:
                continue
            curves.setdefault(key, {}).setdefault(entry.launch, []).append((entry.epoch, number))
    return {k: curves[k] for k in sorted(curves)}


def run_figure(run: RunRecord, *, title: str | None = None):
    """A run's learning curves: one panel per metric, epoch on x."""
    plt = _pyplot()
    curves = run_curves(run)
    if not curves:
        raise ValueError("the run record has no per-epoch metrics to plot")
    names = list(curves)[:_MAX_PANELS]
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        for launch, points in sorted(curves[name].items()):
            points.sort()
            xs, ys = zip(*[(epoch + 1, value) for epoch, value in points], strict=True)
            label = f"launch {launch}" if len(curves[name]) > 1 else None
            ax.plot(xs, ys, marker="o", markersize=3, label=label)
        ax.set_title(name)
        _epoch_axis(ax)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        if len(curves[name]) > 1:
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    fig.suptitle(title or f"run {run.name or ''}: {run.status or ''}".strip())
    fig.tight_layout()
    return fig


def _epoch_axis(ax) -> None:
    """Epochs counted from 1 on whole-number ticks, as `rayfleet run` prints them."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _axis_values(values: Sequence[Any]) -> tuple[list[float], list[str] | None]:
    """Numbers as they are; anything else as categories (positions and their labels)."""
    numbers = [_number(v) for v in values]
    if all(n is not None for n in numbers):
        return [float(n) for n in numbers], None  # type: ignore[arg-type]
    labels = sorted({str(v) for v in values})
    return [float(labels.index(str(v))) for v in values], labels


def sweep_figure(
    table: SweepTable,
    curves: Mapping[str, Sequence[tuple[int, float]]],
    *,
    best_trial: str | None = None,
    log_params: Collection[str] = (),
):
    """A sweep: the metric against each searched parameter, then every trial's curve.

    `curves` maps a trial id to its (epoch, metric value) points (from its run record).
    `log_params` (sampled log-uniformly) get a log axis however few trials ran; any other
    positive parameter gets one when its values span 100x or more.
    """
    plt = _pyplot()
    params = list(table.trials[0].params) if table.trials else []
    cols = max(1, len(params))
    fig = plt.figure(figsize=(max(9.0, 4.2 * cols), 7.5))
    grid = fig.add_gridspec(2, cols)
    top = [fig.add_subplot(grid[0, i]) for i in range(cols)]
    rows = [t for t in table.trials if t.value is not None]
    for ax, param in zip(top, params, strict=False):
        xs, labels = _axis_values([t.params.get(param) for t in rows])
        for state in sorted({t.state for t in rows}):
            picked = [(x, t.value) for x, t in zip(xs, rows, strict=True) if t.state == state]
            ax.scatter(
                [p[0] for p in picked],
                [p[1] for p in picked],
                color=_STATE_COLOURS.get(state, "tab:blue"),
                label=state.lower(),
                zorder=3,
            )
        for x, t in zip(xs, rows, strict=True):
            if t.trial_id == best_trial:
                ax.scatter([x], [t.value], s=160, facecolors="none", edgecolors="black", zorder=4)
        if labels is not None:
            ax.set_xticks(range(len(labels)), labels, rotation=30)
            ax.set_xlim(-0.5, len(labels) - 0.5)
        elif xs and min(xs) > 0 and (param in log_params or max(xs) / min(xs) >= 100):
            ax.set_xscale("log")
        ax.set_xlabel(param)
        ax.set_ylabel(table.metric)
        ax.set_title(f"{table.metric} vs {param.rsplit('.', 1)[-1]}")
        ax.grid(alpha=0.3)
        if rows:
            ax.legend(fontsize=8)
    ax = fig.add_subplot(grid[1, :])
    stopped_label = True
    for row in table.trials:
        points = sorted(curves.get(row.trial_id, []))
        if not points:
            continue
        xs, ys = zip(*[(epoch + 1, value) for epoch, value in points], strict=True)
        (line,) = ax.plot(xs, ys, marker="o", markersize=3, label=row.trial_id)
        if row.state == "STOPPED":
            ax.scatter(
                [xs[-1]],
                [ys[-1]],
                marker="X",
                s=90,
                color="tab:red",
                zorder=4,
                label="stopped early" if stopped_label else None,
            )
            stopped_label = False
        if row.trial_id == best_trial:
            line.set_linewidth(2.5)
    _epoch_axis(ax)
    ax.set_ylabel(table.metric)
    ax.set_title(f"{table.metric} per epoch, every trial (X: stopped early by the scheduler)")
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=7, ncol=2, loc="best")
    fig.suptitle(f"sweep {table.sweep}: {table.mode} {table.metric}, {len(table.trials)} trials")
    fig.tight_layout()
    return fig


def save(fig, out: Path) -> Path:
    """Write the figure as PNG (folders created); close it."""
    plt = _pyplot()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=110)
    plt.close(fig)
    return out


# ------------------------------------------------------------------ an evaluation's figures


def confusion_figure(matrix: Sequence[Sequence[int]], class_names: Sequence[str], *, title: str):
    """A confusion matrix: true class down, predicted across, each cell's count written in
    it and shaded by the share of its row (so a small class's errors show as clearly as a
    big one's)."""
    import numpy as np

    plt = _pyplot()
    counts = np.asarray(matrix, dtype=np.int64)
    k = len(class_names)
    if counts.shape != (k, k):
        raise ValueError(f"confusion matrix is shaped {counts.shape} for {k} classes")
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    side = min(12.0, 2.5 + 0.55 * k)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    if k <= 30:
        for i in range(k):
            for j in range(k):
                if counts[i, j]:
                    colour = "white" if share[i, j] > 0.5 else "black"
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", color=colour,
                            fontsize=8 if k > 12 else 10)  # fmt: skip
    ax.set_xticks(range(k), list(class_names), rotation=45 if k > 10 else 0, ha="right")
    ax.set_yticks(range(k), list(class_names))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def roc_figure(curves: Sequence[Any], *, title: str):
    """ROC curves (objects with name, fpr, tpr, auc): one per class, one-vs-rest, or the
    positive class alone for a binary model; the diagonal is a random guess. A good model's
    curves all hug the top-left corner, so a second panel shows that corner enlarged."""
    import numpy as np

    plt = _pyplot()
    fig, (full, corner) = plt.subplots(1, 2, figsize=(11.5, 5.4))
    cmap = plt.get_cmap("tab20" if len(curves) > 10 else "tab10")
    corner_fpr = 0.1
    lowest = 1.0  # the lowest true positive rate of any curve a tenth of the way in
    for i, curve in enumerate(curves):
        colour = cmap(i % cmap.N)
        label = f"{curve.name} (AUC {curve.auc:.3f})"
        for ax in (full, corner):
            ax.plot(curve.fpr, curve.tpr, color=colour, linewidth=1.4, label=label)
        lowest = min(lowest, float(np.interp(corner_fpr / 10, curve.fpr, curve.tpr)))
    for ax in (full, corner):
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="random")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.grid(alpha=0.3)
    full.set_xlim(-0.01, 1.01)
    full.set_ylim(-0.01, 1.01)
    full.set_title("ROC, one-vs-rest" if len(curves) > 1 else "ROC")
    bottom = max(0.0, math.floor(lowest * 20 - 0.5) / 20)  # a multiple of 0.05 below it
    corner.set_xlim(0.0, corner_fpr)
    corner.set_ylim(bottom, 1.0 + (1.0 - bottom) * 0.02)
    corner.set_title(f"top-left corner (false positive rate <= {corner_fpr})")
    corner.legend(fontsize=7 if len(curves) > 10 else 8, loc="lower right",
                  ncol=2 if len(curves) > 12 else 1)  # fmt: skip
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def png_bytes(fig) -> bytes:
    """The figure as PNG bytes (for storage that is not a local path); closes it."""
    import io

    plt = _pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()
