"""How each worker gets its shard: pyarrow per-rank ranges (what rayfleet uses) vs Ray Data.

Both read the same Parquet split from a loopback S3 server into 2 actors (the 2 DDP
workers), and every actor materialises its rows as numpy, the way a training epoch would.
Measured per epoch: wall time until both actors hold their shard, and whether a second epoch
returns the same rows to the same rank (exact resume needs that).

    python tests/benchmarks/data_loading.py [--rows 200000] [--files 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FEATURES = 64


def write_dataset(uri, rows: int, files: int) -> None:
    from rayfleet.data.layout import DESCRIPTOR, DatasetInfo
    from rayfleet.storage.filesystem import filesystem_for, write_bytes

    fs = filesystem_for(uri)
    rng = np.random.default_rng(0)
    for i, idx in enumerate(np.array_split(np.arange(rows), files)):
        x = rng.random((len(idx), FEATURES), dtype=np.float32)
        col = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), FEATURES)
        table = pa.table({"features": col, "label": pa.array(idx % 10, pa.int64())})
        with fs.open_output_stream(uri.join("train", f"part-{i:05d}.parquet").fs_path) as f:
            pq.write_table(table, f)
    info = DatasetInfo(  # rows.val is required; this benchmark reads train only
        name="bench", feature_shape=[FEATURES], num_classes=10, rows={"train": rows, "val": rows}
    )
    write_bytes(fs, uri.join(DESCRIPTOR).fs_path, info.to_json().encode())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--files", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    import ray

    from rayfleet.embedded import EMBEDDED_RAY_CONFIG
    from rayfleet.storage.s3server import loopback_s3
    from rayfleet.storage.uri import parse_uri

    with loopback_s3(bucket="bench-data"):
        uri = parse_uri("s3://bench-data/datasets/bench")
        write_dataset(uri, args.rows, args.files)
        # Two logical CPUs for the two "training" actors plus two for Ray Data's read tasks: with
        # only 2, the actors hold both and Ray Data's reads never schedule (a deadlock we hit).
        ray.init(
            num_cpus=4,
            include_dashboard=False,
            logging_level=logging.WARNING,
            _system_config=EMBEDDED_RAY_CONFIG,
        )
        ray.data.DataContext.get_current().enable_progress_bars = False

        @ray.remote(num_cpus=1)
        class Worker:
            def __init__(self, rank):
                self.rank = rank

            def pyarrow_epoch(self, uri_text):
                from rayfleet.data.shards import read_shard
                from rayfleet.storage.filesystem import filesystem_for

                u = parse_uri(uri_text)
                shard = read_shard(filesystem_for(u), u, "train", self.rank, 2, [FEATURES])
                return len(shard), float(shard.labels[:1000].sum())

            def ray_data_epoch(self, it):
                rows, first = 0, []
                for batch in it.iter_batches(batch_size=4096, batch_format="numpy"):
                    rows += len(batch["label"])
                    if len(first) < 1000:
                        first.extend(batch["label"][: 1000 - len(first)].tolist())
                return rows, float(sum(first))

        workers = [Worker.remote(r) for r in range(2)]
        ray.get([w.__ray_ready__.remote() for w in workers])
        results = {"pyarrow": [], "ray_data": []}
        fingerprints = {"pyarrow": set(), "ray_data": set()}
        from rayfleet.storage.filesystem import filesystem_for

        for _ in range(args.repeats):
            started = time.perf_counter()
            out = ray.get([w.pyarrow_epoch.remote(str(uri)) for w in workers])
            results["pyarrow"].append(time.perf_counter() - started)
            fingerprints["pyarrow"].add(tuple(out))

            started = time.perf_counter()
            ds = ray.data.read_parquet(
                uri.join("train").fs_path,
                filesystem=filesystem_for(uri),
                columns=["features", "label"],
            )
            its = ds.streaming_split(2, equal=True)
            out = ray.get([w.ray_data_epoch.remote(it) for w, it in zip(workers, its, strict=True)])
            results["ray_data"].append(time.perf_counter() - started)
            fingerprints["ray_data"].add(tuple(out))
        ray.shutdown()

    summary = {
        "rows": args.rows,
        "files": args.files,
        "repeats": args.repeats,
        **{f"{k}_epoch_s_median": statistics.median(v) for k, v in results.items()},
        **{f"{k}_same_rows_each_epoch": len(v) == 1 for k, v in fingerprints.items()},
    }
    summary["ray_data_over_pyarrow"] = (
        summary["ray_data_epoch_s_median"] / summary["pyarrow_epoch_s_median"]
    )
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
