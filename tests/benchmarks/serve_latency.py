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
4. Batching never delays a lone request: tiny model, one client, maxBatchSize 32 (with the
   shipped 5 ms batch wait) against maxBatchSize 1; p50 difference (target <= 0.5 ms).
5. Binary tensors (Triton's extension) against JSON for a ~1 MiB input (4,096 digits rows):
   sequential latency of each encoding on both arms; the gain is JSON p50 / binary p50.

Arms alternate within each round (ABBA) and the figures are medians over rounds.

    python tests/benchmarks/serve_latency.py [--rounds 3] [--requests 1000] [--duration 8]
        [--ingress haproxy|serve-proxy]  # Serve's HTTP ingress (default: haproxy)
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
app = build_app(InferenceService(model, max_request_bytes=16 << 20))
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
    """The smallest synthetic MLP whose batch-1 forward takes >= target_ms on one thread.

    The time is the fastest of several blocks: other work on a shared machine only ever adds
    to a block, so the minimum is the model's own cost (a mean picked a ~2 ms model as 14 ms
    once while the machine was busy)."""
    import torch

    from rayfleet.train.recipes.synthetic import build_model

    torch.set_num_threads(1)
    sizes = ((1024, 4), (1536, 4), (2048, 4), (2048, 6), (2560, 6), (3072, 6), (4096, 6),
             (4096, 8), (5120, 8))  # fmt: skip
    for hidden, layers in sizes:
        config = {"inputs": 256, "hidden": hidden, "layers": layers, "classes": 10}
        model = build_model(config).eval()
        x = torch.randn(1, 256)
        blocks = []
        with torch.inference_mode():
            for _ in range(5):
                model(x)
            for _ in range(7):
                started = time.perf_counter()
                for _ in range(5):
                    model(x)
                blocks.append((time.perf_counter() - started) / 5 * 1000)
        ms = min(blocks)
        if ms >= target_ms:
            return config, ms
    return config, ms


# ----------------------------------------------------------------------------- the client


class Conn:
    """One keep-alive HTTP/1.1 connection: POST a fixed body, read the full response."""

    def __init__(self, host: str, port: int, path: str, body: bytes, extra: str = ""):
        self.host, self.port = host, port
        self.request = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"{extra}Content-Length: {len(body)}\r\n\r\n"
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


def _role(proc) -> str:
    """Which part of the serving path a process (a descendant of this one) is."""
    name = " ".join(proc.cmdline()[:3]) if proc.cmdline() else proc.name()
    for role, marker in (("replica", "ServeReplica"), ("haproxy", "haproxy"),
                         ("serve-proxy", "ProxyActor"), ("serve-proxy", "HAProxyManager"),
                         ("controller", "ServeController"), ("plain-server", "-c")):  # fmt: skip
        if marker in name:
            return role
    return "ray-daemons"


def cpu_by_role() -> dict[str, float]:
    """CPU seconds so far of this process (the client) and every descendant, by role."""
    import psutil

    me = psutil.Process()
    out = {"client": sum(me.cpu_times()[:2])}
    for proc in me.children(recursive=True):
        try:
            role = _role(proc)
            out[role] = out.get(role, 0.0) + sum(proc.cpu_times()[:2])
        except psutil.Error:
            continue
    return out


def closed_loop_cpu(target, clients, duration) -> dict:
    """`closed_loop`, plus the CPU milliseconds per answered request each role spent."""
    before = cpu_by_role()
    result = closed_loop(target, clients, duration)
    after = cpu_by_role()
    done = max(result["n"], 1)  # requests measured (warm-up excluded; a small overestimate)
    result["cpu_ms_per_request"] = {
        k: round((after[k] - before.get(k, 0.0)) * 1000 / done, 3)
        for k in after
        if after[k] - before.get(k, 0.0) > 0.01
    }
    return result


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
                 "maxRequestBytes": 16 << 20,
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


def large_bodies(rows: int = 4096) -> tuple[bytes, tuple[bytes, str]]:
    """The same [rows, 1, 8, 8] input as JSON and as a binary tensor (JSON header + bytes)."""
    x = np.random.default_rng(1).random((rows, 1, 8, 8), dtype=np.float32)
    out = [{"name": "predicted_class"}]
    tensor = {"name": "input", "shape": list(x.shape), "datatype": "FP32"}
    as_json = json.dumps({"inputs": [{**tensor, "data": x.reshape(-1).tolist()}], "outputs": out})
    raw = x.astype("<f4").tobytes()
    params = {"binary_data_size": len(raw)}
    head = json.dumps({"inputs": [{**tensor, "parameters": params}], "outputs": out}).encode()
    return as_json.encode(), (head + raw, f"Inference-Header-Content-Length: {len(head)}\r\n")


def parse_times(big_json: bytes, big_bin: bytes, header: str, repeats: int = 7) -> dict:
    """Median seconds to parse and validate each encoding in process (the app's own work)."""
    import timeit

    from rayfleet.serve.loading import Signature
    from rayfleet.serve.protocol import parse_infer_request

    sig = Signature(shape=(1, 8, 8), dtype="float32", num_classes=10)
    n = int(header.split(":")[1])
    as_json = timeit.repeat(lambda: parse_infer_request(big_json, sig), number=1, repeat=repeats)
    as_bin = timeit.repeat(
        lambda: parse_infer_request(big_bin, sig, json_length=n), number=1, repeat=repeats
    )
    return {"json": statistics.median(as_json), "binary": statistics.median(as_bin)}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=1000, help="sequential requests per arm")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--large-requests", type=int, default=30, help="~1 MiB requests per arm")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per throughput arm")
    parser.add_argument("--clients", type=int, default=8, help="concurrency for throughput")
    parser.add_argument("--batch-clients", type=int, default=32)
    parser.add_argument("--slow-ms", type=float, default=5.0)
    parser.add_argument("--batch-wait-s", type=float, default=0.005)
    parser.add_argument("--serve-env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--direct-ingress", action="store_true")
    parser.add_argument("--ingress", choices=("haproxy", "serve-proxy"), default="haproxy")
    args = parser.parse_args()
    if args.direct_ingress:
        args.serve_env.append("RAY_SERVE_ENABLE_DIRECT_INGRESS=1")

    for item in args.serve_env:
        key, _, value = item.partition("=")
        os.environ[key] = value
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if not args.direct_ingress:
        from rayfleet.serve.ingress import apply_local_env

        apply_local_env(args.ingress, host="127.0.0.1")  # as `rayfleet serve` does first
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
        deploy_serve("tinyb", tiny, batch=32, wait_s=args.batch_wait_s, port=serve_port)
        deploy_serve("slow", slow, batch=1, wait_s=0.0, port=serve_port)
        deploy_serve("slowb", slow, batch=32, wait_s=args.batch_wait_s, port=serve_port)
        ports = {name: serve_port for name in ("tiny", "tinyb", "slow", "slowb")}
        for name in ports:
            wait_ready(serve_port, name, f"/{name}")
        if args.direct_ingress:
            ports = direct_ingress_ports(list(ports))
            print(f"direct ingress ports: {ports}")

        tiny_body, slow_body = body_for([1, 8, 8]), body_for([256])
        big_json, (big_bin, bin_header) = large_bodies()
        print(f"large input: JSON {len(big_json) / 2**20:.1f} MiB, binary "
              f"{len(big_bin) / 2**20:.2f} MiB")  # fmt: skip
        parsed = parse_times(big_json, big_bin, bin_header)
        targets = {
            "plain_tiny": ("127.0.0.1", tiny_port, "/v2/models/tiny/infer", tiny_body),
            "serve_tiny": ("127.0.0.1", ports["tiny"], "/tiny/v2/models/tiny/infer", tiny_body),
            "serve_tinyb": (
                "127.0.0.1",
                ports["tinyb"],
                "/tinyb/v2/models/tinyb/infer",
                tiny_body,
            ),  # fmt: skip
            "plain_big_json": ("127.0.0.1", tiny_port, "/v2/models/tiny/infer", big_json),
            "plain_big_bin": ("127.0.0.1", tiny_port, "/v2/models/tiny/infer", big_bin, bin_header),
            "serve_big_json": ("127.0.0.1", ports["tiny"], "/tiny/v2/models/tiny/infer", big_json),
            "serve_big_bin": (
                "127.0.0.1",
                ports["tiny"],
                "/tiny/v2/models/tiny/infer",
                big_bin,
                bin_header,
            ),  # fmt: skip
            "plain_slow": ("127.0.0.1", slow_port, "/v2/models/slow/infer", slow_body),
            "serve_slow": ("127.0.0.1", ports["slow"], "/slow/v2/models/slow/infer", slow_body),
            "serve_slowb": ("127.0.0.1", ports["slowb"], "/slowb/v2/models/slowb/infer", slow_body),
        }
        rounds = []
        for r in range(args.rounds):
            flip = r % 2 == 1
            row = {}
            arms = ("plain_tiny", "serve_tiny", "serve_tinyb")
            for arm in reversed(arms) if flip else arms:
                row[arm] = sequential(targets[arm], args.requests, args.warmup)
            arms = ("plain_big_json", "plain_big_bin", "serve_big_json", "serve_big_bin")
            for arm in reversed(arms) if flip else arms:
                row[arm] = sequential(targets[arm], args.large_requests, 3)
            for arm in ("serve_slow", "plain_slow") if flip else ("plain_slow", "serve_slow"):
                row[arm + "_tput"] = closed_loop_cpu(targets[arm], args.clients, args.duration)
            for arm in ("serve_slowb", "serve_slow") if flip else ("serve_slow", "serve_slowb"):
                row[arm + "_b"] = closed_loop(targets[arm], args.batch_clients, args.duration)
            rounds.append(row)
            rounded = {
                k: {m: v if isinstance(v, dict) else round(v, 2) for m, v in d.items()}
                for k, d in row.items()
            }
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
    lone = statistics.median(
        row["serve_tinyb"]["p50_ms"] - row["serve_tiny"]["p50_ms"] for row in rounds
    )
    path = "direct ingress" if args.direct_ingress else f"{args.ingress} ingress"
    print(f"\nmedians over {args.rounds} round(s), Serve through its {path}:")
    print(
        f"  tiny model, sequential: plain p50 {med('plain_tiny', 'p50_ms'):.2f} ms "
        f"p99 {med('plain_tiny', 'p99_ms'):.2f} ms; serve p50 {med('serve_tiny', 'p50_ms'):.2f} "
        f"ms p99 {med('serve_tiny', 'p99_ms'):.2f} ms"
    )
    print(f"  added p50 by Serve: {added_p50:.2f} ms (target <= 2 ms)")
    print(
        f"  lone requests, batching on (32, wait {args.batch_wait_s * 1000:.0f} ms): p50 "
        f"{med('serve_tinyb', 'p50_ms'):.2f} ms, {lone:+.2f} ms vs batching off "
        "(target <= 0.5 ms)"
    )
    print(
        f"  1 MiB input, parsing in process: JSON {parsed['json'] * 1000:.1f} ms, binary "
        f"{parsed['binary'] * 1000:.2f} ms ({parsed['json'] / parsed['binary']:.0f}x)"
    )
    for arm in ("plain", "serve"):
        speedup = med_ratio((f"{arm}_big_json", "p50_ms"), (f"{arm}_big_bin", "p50_ms"))
        print(
            f"  1 MiB input, {arm}: JSON p50 {med(f'{arm}_big_json', 'p50_ms'):.1f} ms, binary "
            f"p50 {med(f'{arm}_big_bin', 'p50_ms'):.1f} ms; binary is {speedup:.1f}x faster"
        )
    print(
        f"  slow model ({slow_ms:.1f} ms), {args.clients} clients: plain "
        f"{med('plain_slow_tput', 'rps'):.0f} req/s, serve {med('serve_slow_tput', 'rps'):.0f} "
        f"req/s; ratio {tput:.2f} (target >= 0.9)"
    )
    for arm in ("plain_slow_tput", "serve_slow_tput"):
        roles = rounds[-1][arm]["cpu_ms_per_request"]
        spent = ", ".join(f"{k} {v:.2f}" for k, v in sorted(roles.items(), key=lambda kv: -kv[1]))
        print(f"    CPU ms per request, {arm.split('_')[0]} (last round): {spent}")
    print(
        f"  batching, {args.batch_clients} clients: batch 1 {med('serve_slow_b', 'rps'):.0f} "
        f"req/s p99 {med('serve_slow_b', 'p99_ms'):.1f} ms; batch 32 "
        f"{med('serve_slowb_b', 'rps'):.0f} req/s p99 {med('serve_slowb_b', 'p99_ms'):.1f} ms; "
        f"gain {gain:.2f}x (target >= 3x at equal or better p99)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
