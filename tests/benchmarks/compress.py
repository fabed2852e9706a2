"""`rayfleet compress` against its fp32 source: accuracy delta, size ratio, CPU latency ratio.

One run trains the sources with real rayfleet runs on an embedded Ray (digits-cnn on the
bundled digits, tabular-mlp on scikit-learn's bundled breast-cancer table, as shipped and with
512 hidden units), compresses each
with every method through `rayfleet.compress.job.compress_run` (what the CLI calls; distill
through `compress.distill`, a student TrainJob with the default student config, trained for
--distill-factors times the teacher's epochs on one embedded Ray), and compares every result
with its source on the same val split, both loaded through
`serve/loading.py` exactly as a replica loads them:

- accuracy delta: compressed minus fp32 top-1 accuracy on the whole val split;
- size ratio: the stored model state dict (compressed state.pt / fp32 model state dict;
  the source's state.pt also holds the Adam state, which serving never loads, so comparing
  with it would flatter every method threefold; that ratio is printed too, as "vs ckpt");
- latency ratio at batch 1 and 32: `LoadedModel.predict` with torch.set_num_threads fixed;
  each repeat times --iters calls per arm, arms alternate (source, compressed, compressed,
  source) so machine load hits both alike; the ratio is of the medians over --repeats.

Targets (issue 17): size <= 0.35x, latency <= 0.7x, accuracy within 0.01.

    python tests/benchmarks/compress.py [--repeats 7] [--iters 200] [--threads 1] [--json F]
        [--methods dynamic-int8,static-int8,fp16,distill] [--distill-factors 1,3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "platform"))

METHODS = ("dynamic-int8", "static-int8", "fp16", "distill")
TARGETS = {"size": 0.35, "latency": 0.7, "accuracy": 0.01}


def _train(store: Path) -> dict[str, str]:
    """The two fp32 source runs (recipe -> run name), trained on an embedded Ray."""
    import ray

    from rayfleet.data.digits import import_digits
    from rayfleet.data.imports import ImportOptions, import_source
    from rayfleet.specs import load_spec
    from rayfleet.storage.uri import parse_uri
    from rayfleet.train.launcher import run_train_job

    import_digits(parse_uri(str(store / "datasets" / "digits")))
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    csv = store / "breast-cancer.csv"
    header = ",".join([*data.feature_names, "target"])
    rows = np.column_stack([data.data, data.target])
    np.savetxt(csv, rows, delimiter=",", header=header, comments="", fmt="%.10g")
    import_source(
        str(csv),
        parse_uri(str(store / "datasets" / "breast-cancer")),
        ImportOptions(label="target", name="breast-cancer"),
    )
    runs = {
        "digits-cnn": ("digits/train.yaml", "digits", "digits", ["spec.run.epochs=12"]),
        "tabular-mlp": ("tables/train.yaml", "cancer", "breast-cancer", ["spec.run.epochs=8"]),
        # Not a target: the shipped MLP (6k parameters) is all per-call overhead; this one
        # (280k) shows where int8 starts to pay.
        "tabular-mlp hidden 512": (
            "tables/train.yaml", "cancer-wide", "breast-cancer",
            ["spec.run.epochs=8", "spec.model.config.hidden=512"],
        ),
    }  # fmt: skip
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        for spec, name, dataset, extra in runs.values():
            job = load_spec(
                REPO / "jobs" / spec,
                [f"metadata.name={name}", f"spec.storage={store}", f"spec.dataset={dataset}",
                 *extra],
            )  # fmt: skip
            result = run_train_job(job)
            print(f"trained {name}: {result.metrics}", flush=True)
    finally:
        ray.shutdown()
    return {recipe: name for recipe, (_, name, _, _) in runs.items()}


def _per_call(model, x: np.ndarray, iters: int) -> float:
    start = time.perf_counter()
    for _ in range(iters):
        model.predict(x)
    return (time.perf_counter() - start) / iters


def latency_ratio(source, small, x: np.ndarray, repeats: int, iters: int) -> tuple[float, float]:
    """(median seconds per call of the compressed model, its ratio to the source's)."""
    for model in (source, small):  # warm-up: first calls pack weights, allocate buffers
        _per_call(model, x, max(iters // 10, 5))
    a, b = [], []
    for r in range(repeats):
        order = ((source, a), (small, b)) if r % 2 == 0 else ((small, b), (source, a))
        for model, out in order:
            out.append(_per_call(model, x, iters))
    return statistics.median(b), statistics.median(b) / statistics.median(a)


def _distill(root, run: str, factor: int):
    """The run distilled into its default student for `factor` times the teacher's epochs, on
    the benchmark's Ray (run_train_job finds it running and leaves it up)."""
    from rayfleet import record
    from rayfleet.compress.distill import prepare_distill, run_distill

    epochs = int(record.job_spec(root.join("runs", run))["run"]["epochs"]) * factor
    plan = prepare_distill(run, storage=root, to=f"{run}-distill-{factor}x", epochs=epochs)
    started = time.monotonic()
    result = run_distill(plan)
    print(f"distilled {run} -> {plan.student_config}, {epochs} epochs in "
          f"{time.monotonic() - started:.0f}s", flush=True)  # fmt: skip
    return result, epochs


def bench(
    store: Path,
    runs: dict[str, str],
    repeats: int,
    iters: int,
    methods: tuple[str, ...] = METHODS,
    distill_factors: tuple[int, ...] = (1,),
) -> list[dict]:
    from rayfleet.compress.job import compress_run
    from rayfleet.compress.methods import CompressError
    from rayfleet.storage.uri import parse_uri

    root = parse_uri(str(store))
    rows = []
    for recipe, run in runs.items():
        for method in methods:
            if method == "distill":
                for factor in distill_factors:
                    result, epochs = _distill(root, run, factor)
                    row = {"recipe": recipe, "method": f"distill {epochs} ep"}
                    rows.append(_measure(row, result, run, repeats, iters))
                continue
            row = {"recipe": recipe, "method": method}
            try:
                result = compress_run(run, storage=root, method=method, to=f"{run}-{method}")
            except CompressError as exc:
                rows.append({**row, "refused": str(exc)})
                continue
            rows.append(_measure(row, result, run, repeats, iters))
    return rows


def _measure(row: dict, result, run: str, repeats: int, iters: int) -> dict:
    """Accuracy, size and latency of one compressed result against its fp32 source."""
    from rayfleet.compress.job import accuracy
    from rayfleet.serve.evaluate import read_split
    from rayfleet.serve.loading import load_model
    from rayfleet.storage.uri import parse_uri

    lineage = result.compression
    source = load_model(result.source, name=run)
    small = load_model(result.checkpoint, name=row["method"])
    val = read_split(parse_uri(lineage.evaluation.dataset), "val")
    features = np.array(val.features)
    acc_src = accuracy(source, features, val.labels)
    acc = accuracy(small, features, val.labels)
    ckpt_bytes = (Path(result.source.fs_path) / "state.pt").stat().st_size
    row.update(
        accuracy_fp32=acc_src,
        accuracy=acc,
        accuracy_delta=acc - acc_src,
        val_rows=len(val.labels),
        size_ratio=lineage.size_ratio,
        size_ratio_vs_ckpt=lineage.weights_bytes / ckpt_bytes,
        weights_bytes=lineage.weights_bytes,
        fp32_weights_bytes=lineage.source_weights_bytes,
    )
    for batch in (1, 32):
        x = np.ascontiguousarray(np.resize(features, (batch, *features.shape[1:])))
        seconds, ratio = latency_ratio(source, small, x, repeats, iters)
        row[f"latency_b{batch}_us"] = seconds * 1e6
        row[f"latency_b{batch}_ratio"] = ratio
    print(json.dumps(row), flush=True)
    return row


def _with_ray(work, needed: bool):
    """Run `work` with an embedded Ray up when distill rows need one (one Ray for all)."""
    if not needed:
        return work()
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        return work()
    finally:
        ray.shutdown()


def _mark(value: float, target: float) -> str:
    return "ok" if value <= target else "MISS"


def table(rows: list[dict]) -> str:
    lines = [
        "| recipe | method | acc fp32 -> compressed (delta) | size (vs ckpt) | "
        "latency b1 | latency b32 |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "refused" in r:
            lines.append(f"| {r['recipe']} | {r['method']} | refused: {r['refused']} | | | |")
            continue
        delta = r["accuracy_delta"]
        lines.append(
            f"| {r['recipe']} | {r['method']} | {r['accuracy_fp32']:.4f} -> {r['accuracy']:.4f} "
            f"({delta:+.4f} {_mark(abs(delta), TARGETS['accuracy'])}) | "
            f"{r['size_ratio']:.2f}x {_mark(r['size_ratio'], TARGETS['size'])} "
            f"({r['size_ratio_vs_ckpt']:.2f}x) | "
            f"{r['latency_b1_ratio']:.2f}x {_mark(r['latency_b1_ratio'], TARGETS['latency'])} | "
            f"{r['latency_b32_ratio']:.2f}x {_mark(r['latency_b32_ratio'], TARGETS['latency'])} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per arm (>= 5)")
    parser.add_argument("--iters", type=int, default=200, help="calls per timed repeat")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument(
        "--methods", default=",".join(METHODS), help=f"comma-separated ({','.join(METHODS)})"
    )
    parser.add_argument(
        "--distill-factors",
        default="1",
        help="distill: student epochs as multiples of the teacher's, comma-separated (1,3)",
    )
    args = parser.parse_args()
    if args.repeats < 5:
        parser.error("--repeats must be at least 5")
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="rayfleet-bench-compress-") as tmp:
        store = Path(tmp)
        runs = _train(store)
        methods = tuple(m for m in args.methods.split(",") if m)
        factors = tuple(int(f) for f in args.distill_factors.split(",") if f)
        rows = _with_ray(lambda: bench(store, runs, args.repeats, args.iters, methods, factors),
                         "distill" in methods)  # fmt: skip
    print(f"\n{args.repeats} repeats x {args.iters} calls per arm, {args.threads} torch thread(s),"
          f" torch {torch.__version__}, int8 engine {torch.backends.quantized.engine}")  # fmt: skip
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
