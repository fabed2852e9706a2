"""Serving overhead and batching gain: rayfleet on Ray Serve against plain FastAPI + uvicorn.

Both arms serve the same FastAPI app (`rayfleet.serve.app.build_app`) over the same loaded
checkpoint with one torch thread; the only difference is Ray Serve (HTTP proxy, router,
replica). Everything is on 127.0.0.1. The client is a small keep-alive HTTP/1.1 client on
asyncio streams, so the client's own cost stays small and equal for both arms.

1. Latency, tiny model (digits CNN, well under 1 ms): one client, requests back to back;
   p50/p99 per arm and the p50 Serve adds (target <= 2 ms).
2. Throughput, slow model (an MLP calibrated to >= 5 ms per request): `--clients` concurrent
   clients for `--duration` seconds; Serve / plain requests per second (target >= 0.9).
3. Dynamic batching, slow model, 32 concurrent clients: Serve with maxBatchSize 32 against
   maxBatchSize 1; throughput ratio (target >= 3x) and both p99s (target: batched <= b1).

Arms alternate within each round (ABBA) and the figures are medians over rounds.

    python tests/benchmarks/serve_latency.py [--rounds 3] [--requests 1000] [--duration 8]
        [--serve-env KEY=VALUE ...]   # e.g. Serve tuning flags, set before Ray starts
        [--direct-ingress]            # Serve arms through Ray Serve's experimental direct
                                      # ingress (each ingress replica listens itself)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "platform"))

from rayfleet.local import free_serve_port  # noqa: E402 - after the path is set

PLAIN_SERVER = """
import sys, torch, uvicorn
torch.set_num_threads(1)
from rayfleet.serve.app import InferenceService, build_app
from rayfleet.serve.loading import load_model
model = load_model(sys.argv[1], name=sys.argv[2])
app = build_app(InferenceService(model))
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[3]), log_level="warning", access_log=False)
"""


# ----------------------------------------------------------------------------- the models


def write_checkpoint(folder: Path, recipe: str, config: dict, shape: list[int]) -> str:
    import torch

    from rayfleet.serve.loading import MODEL_BUILDERS
    from rayfleet.storage.checkpoints import write_manifest

    module, _, attr = MODEL_BUILDERS[recipe].partition(":")
    build = getattr(__import__(module, fromlist=[attr]), attr)
    torch.manual_seed(0)
    model = build(config)
    folder.mkdir(parents=True)
    torch.save({"model": model.state_dict(), "epoch": 0}, folder / "state.pt")
    write_manifest(folder, {"recipe": recipe, "model_config": config, "epoch": 0,
                            "input": {"shape": shape, "dtype": "float32"},
                            "num_classes": int(config.get("classes", 10))})  # fmt: skip
    return str(folder)


def calibrate_slow(target_ms: float) -> tuple[dict, float]:
    """The smallest synthetic MLP whose batch-1 forward takes >= target_ms on one thread."""
    import torch

    from rayfleet.train.recipes.synthetic import build_model

    torch.set_num_threads(1)
    for hidden, layers in ((1024, 4), (1536, 4), (2048, 4), (2048, 6), (2560, 6), (3072, 6)):
        config = {"inputs": 256, "hidden": hidden, "layers": layers, "classes": 10}
        model = build_model(config).eval()
        x = torch.randn(1, 256)
        with torch.inference_mode():
            for _ in range(5):
                model(x)
            started = time.perf_counter()
            for _ in range(30):
                model(x)
        ms = (time.perf_counter() - started) / 30 * 1000
        if ms >= target_ms:
            return config, ms
    return config, ms


# ----------------------------------------------------------------------------- the client


class Conn:
    """One keep-alive HTTP/1.1 connection: POST a fixed body, read the full response."""

    def __init__(self, host: str, port: int, path: str, body: bytes):
        self.host, self.port = host, port
        self.request = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        self.reader = self.writer = None

    async def call(self) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = (ln.partition(":") for ln in lines[1:] if ln)
        headers = {k.lower(): v.strip() for k, _, v in fields}
        if "content-length" in headers:
            await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding") == "chunked":
            while True:
                size = int((await self.reader.readline()).strip(), 16)
                await self.reader.readexactly(size + 2)
                if size == 0:
                    break
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def _sequential(target, n: int, warmup: int) -> list[float]:
    conn = Conn(*target)
    for _ in range(warmup):
        assert await conn.call() == 200
    out = []
    for _ in range(n):
        started = time.perf_counter()
        status = await conn.call()
        out.append(time.perf_counter() - started)
        assert status == 200, status
    conn.close()
    return out


async def _closed_loop(target, clients: int, duration: float, warmup_s: float = 1.0):
    conns = [Conn(*target) for _ in range(clients)]
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    measure_from, stop_at = start + warmup_s, start + warmup_s + duration

    async def worker(conn: Conn):
        nonlocal errors
        while (now := time.perf_counter()) < stop_at:
            status = await conn.call()
            done = time.perf_counter()
            if status != 200:
                errors += 1
            elif now >= measure_from:
                latencies.append(done - now)

    await asyncio.gather(*(worker(c) for c in conns))
    for c in conns:
        c.close()
    return latencies, errors


def stats(latencies: list[float], seconds: float | None = None) -> dict:
    ms = np.array(latencies) * 1000
    out = {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
           "n": len(ms)}  # fmt: skip
    if seconds:
        out["rps"] = len(ms) / seconds
    return out


def sequential(target, n, warmup) -> dict:
    return stats(asyncio.run(_sequential(target, n, warmup)))


def closed_loop(target, clients, duration) -> dict:
    latencies, errors = asyncio.run(_closed_loop(target, clients, duration))
    return {**stats(latencies, duration), "errors": errors}


# ----------------------------------------------------------------------------- the servers


def wait_ready(port: int, model: str, prefix: str = "", timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            url = f"http://127.0.0.1:{port}{prefix}/v2/models/{model}/ready"
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"server on {port} not ready")


def start_plain(checkpoint: str, model: str) -> tuple[subprocess.Popen, int]:
    port = free_serve_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "platform")}
    cmd = [sys.executable, "-c", PLAIN_SERVER, checkpoint, model, str(port)]
    proc = subprocess.Popen(cmd, env=env)
    wait_ready(port, model)
    return proc, port


def deploy_serve(name: str, checkpoint: str, *, batch: int, wait_s: float, port: int) -> str:
    from rayfleet.serve import runtime
    from rayfleet.serve.loading import resolve_source
    from rayfleet.specs import parse_spec

    deployment = parse_spec({
        "apiVersion": "rayfleet.io/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {"source": {"checkpoint": checkpoint}, "replicas": 1, "cpusPerReplica": 0.5,
                 "routePrefix": f"/{name}",
                 "batching": {"maxBatchSize": batch, "batchWaitTimeoutS": wait_s}},
    })  # fmt: skip
    return runtime.deploy(deployment, resolve_source(deployment), port=port).url


def direct_ingress_ports(names: list[str]) -> dict[str, int]:
    """The port each app's (single) ingress replica listens on (Serve picks 30000-31000)."""
    import httpx

    found: dict[str, int] = {}
    for port in range(30000, 30050):
        for name in names:
            try:
                url = f"http://127.0.0.1:{port}/{name}/v2/models/{name}/ready"
                if httpx.get(url, timeout=1).status_code == 200:
                    found[name] = port
            except httpx.TransportError:
                break
    missing = set(names) - set(found)
    if missing:
        raise RuntimeError(f"no direct-ingress port found for {sorted(missing)}")
    return found


def body_for(shape: list[int]) -> bytes:
    x = np.random.default_rng(0).random((1, *shape), dtype=np.float32)
    tensor = {"name": "input", "shape": [1, *shape], "datatype": "FP32",
              "data": x.reshape(-1).tolist()}  # fmt: skip
    doc = {"inputs": [tensor], "outputs": [{"name": "predicted_class"}]}
    return json.dumps(doc).encode()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=1000, help="sequential requests per arm")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per throughput arm")
    parser.add_argument("--clients", type=int, default=8, help="concurrency for throughput")
    parser.add_argument("--batch-clients", type=int, default=32)
    parser.add_argument("--slow-ms", type=float, default=5.0)
    parser.add_argument("--batch-wait-s", type=float, default=0.005)
    parser.add_argument("--serve-env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--direct-ingress", action="store_true")
    args = parser.parse_args()
    if args.direct_ingress:
        args.serve_env.append("RAY_SERVE_ENABLE_DIRECT_INGRESS=1")

    for item in args.serve_env:
        key, _, value = item.partition("=")
        os.environ[key] = value
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    work = Path(tempfile.mkdtemp(prefix="rayfleet-serve-bench-"))
    slow_config, slow_ms = calibrate_slow(args.slow_ms)
    print(f"slow model: synthetic MLP {slow_config}, {slow_ms:.1f} ms per batch-1 forward")
    tiny = write_checkpoint(work / "tiny" / "checkpoint_e000000", "digits-cnn", {}, [1, 8, 8])
    slow = write_checkpoint(
        work / "slow" / "checkpoint_e000000", "synthetic-mlp", slow_config, [256]
    )

    procs = []
    try:
        p_tiny, tiny_port = start_plain(tiny, "tiny")
        procs.append(p_tiny)
        p_slow, slow_port = start_plain(slow, "slow")
        procs.append(p_slow)

        from rayfleet.embedded import ensure_ray

        ensure_ray()
        serve_port = free_serve_port()
        deploy_serve("tiny", tiny, batch=1, wait_s=0.0, port=serve_port)
        deploy_serve("slow", slow, batch=1, wait_s=0.0, port=serve_port)
        deploy_serve("slowb", slow, batch=32, wait_s=args.batch_wait_s, port=serve_port)
        ports = {name: serve_port for name in ("tiny", "slow", "slowb")}
        for name in ports:
            wait_ready(serve_port, name, f"/{name}")
        if args.direct_ingress:
            ports = direct_ingress_ports(list(ports))
            print(f"direct ingress ports: {ports}")

        tiny_body, slow_body = body_for([1, 8, 8]), body_for([256])
        targets = {
            "plain_tiny": ("127.0.0.1", tiny_port, "/v2/models/tiny/infer", tiny_body),
            "serve_tiny": ("127.0.0.1", ports["tiny"], "/tiny/v2/models/tiny/infer", tiny_body),
            "plain_slow": ("127.0.0.1", slow_port, "/v2/models/slow/infer", slow_body),
            "serve_slow": ("127.0.0.1", ports["slow"], "/slow/v2/models/slow/infer", slow_body),
            "serve_slowb": ("127.0.0.1", ports["slowb"], "/slowb/v2/models/slowb/infer", slow_body),
        }
        rounds = []
        for r in range(args.rounds):
            flip = r % 2 == 1
            row = {}
            for arm in ("serve_tiny", "plain_tiny") if flip else ("plain_tiny", "serve_tiny"):
                row[arm] = sequential(targets[arm], args.requests, args.warmup)
            for arm in ("serve_slow", "plain_slow") if flip else ("plain_slow", "serve_slow"):
                row[arm + "_tput"] = closed_loop(targets[arm], args.clients, args.duration)
            for arm in ("serve_slowb", "serve_slow") if flip else ("serve_slow", "serve_slowb"):
                row[arm + "_b"] = closed_loop(targets[arm], args.batch_clients, args.duration)
            rounds.append(row)
            rounded = {k: {m: round(v, 2) for m, v in d.items()} for k, d in row.items()}
            print(f"round {r + 1}: {json.dumps(rounded)}", flush=True)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
        import ray

        ray.shutdown()  # takes Serve, its proxy and replicas with it
        shutil.rmtree(work, ignore_errors=True)

    def med(arm: str, metric: str) -> float:
        return statistics.median(row[arm][metric] for row in rounds)

    def med_ratio(num: tuple[str, str], den: tuple[str, str]) -> float:
        return statistics.median(row[num[0]][num[1]] / row[den[0]][den[1]] for row in rounds)

    added_p50 = statistics.median(
        row["serve_tiny"]["p50_ms"] - row["plain_tiny"]["p50_ms"] for row in rounds
    )
    tput = med_ratio(("serve_slow_tput", "rps"), ("plain_slow_tput", "rps"))
    gain = med_ratio(("serve_slowb_b", "rps"), ("serve_slow_b", "rps"))
    path = "direct ingress" if args.direct_ingress else "HTTP proxy"
    print(f"\nmedians over {args.rounds} round(s), Serve through its {path}:")
    print(
        f"  tiny model, sequential: plain p50 {med('plain_tiny', 'p50_ms'):.2f} ms "
        f"p99 {med('plain_tiny', 'p99_ms'):.2f} ms; serve p50 {med('serve_tiny', 'p50_ms'):.2f} "
        f"ms p99 {med('serve_tiny', 'p99_ms'):.2f} ms"
    )
    print(f"  added p50 by Serve: {added_p50:.2f} ms (target <= 2 ms)")
    print(
        f"  slow model ({slow_ms:.1f} ms), {args.clients} clients: plain "
        f"{med('plain_slow_tput', 'rps'):.0f} req/s, serve {med('serve_slow_tput', 'rps'):.0f} "
        f"req/s; ratio {tput:.2f} (target >= 0.9)"
    )
    print(
        f"  batching, {args.batch_clients} clients: batch 1 {med('serve_slow_b', 'rps'):.0f} "
        f"req/s p99 {med('serve_slow_b', 'p99_ms'):.1f} ms; batch 32 "
        f"{med('serve_slowb_b', 'rps'):.0f} req/s p99 {med('serve_slowb_b', 'p99_ms'):.1f} ms; "
        f"gain {gain:.2f}x (target >= 3x at equal or better p99)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
