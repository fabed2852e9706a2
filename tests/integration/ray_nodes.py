"""A real multi-node Ray on one machine: a token-auth head plus worker nodes that join it.

Each worker node is its own `ray start --address ... --block` (its own raylet, resources,
temp dir and ports), started in its own session, so `kill()` ends exactly that node's
processes (a node lost to preemption) and `stop()` ends them gently. Nothing here calls
`ray stop`, which would end every Ray on the machine.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from rayfleet.retry import poll
from tests.integration.ray_head import RAY, RayHead, agent_ports


class _StartExited(RuntimeError):
    pass


class RayWorkerNode:
    """One worker node joined to `head` with `num_cpus` CPUs."""

    def __init__(self, head: RayHead, num_cpus: int = 1, name: str = "node"):
        self.head, self.num_cpus, self.name = head, num_cpus, name
        self.temp_dir = tempfile.mkdtemp(prefix=f"rf-{name}-", dir="/tmp")
        self.proc: subprocess.Popen | None = None
        self.node_id: str | None = None

    def start(self, timeout_s: float = 120.0, attempts: int = 3) -> RayWorkerNode:
        """Join the head and wait until the head lists this node alive. On a loaded machine
        `ray start` can time out registering with the GCS and exit: that is retried."""
        for attempt in range(1, attempts + 1):
            try:
                return self._start_once(timeout_s)
            except _StartExited:
                self.stop()  # its processes and temp dir; the next attempt gets new ones
                if attempt == attempts:
                    raise
                self.temp_dir = tempfile.mkdtemp(prefix=f"rf-{self.name}-", dir="/tmp")
        raise AssertionError("unreachable")

    def _start_once(self, timeout_s: float) -> RayWorkerNode:
        before = {n["NodeID"] for n in alive_nodes(self.head) or []}
        self.log = open(Path(self.temp_dir) / "ray-start.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                RAY,
                "start",
                "--address",
                f"127.0.0.1:{self.head.gcs_port}",
                "--block",
                "--node-ip-address",
                "127.0.0.1",
                "--num-cpus",
                str(self.num_cpus),
                "--temp-dir",
                self.temp_dir,
                *agent_ports(),
                "--disable-usage-stats",
            ],
            env=self.head.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        def joined() -> str | None:
            if self.proc.poll() is not None:
                raise _StartExited(f"ray start (worker) exited: {self.read_log()[-2000:]}")
            new = [
                n["NodeID"]
                for n in alive_nodes(self.head) or []
                if n["NodeID"] not in before and not n["is_head"]
            ]
            return new[0] if new else None

        def not_joined() -> RuntimeError:
            error = RuntimeError(f"node {self.name} did not join in {timeout_s} s: {log()}")
            self.stop()
            return error

        def log() -> str:
            return self.read_log()[-2000:]

        self.node_id = poll(
            joined, timeout=timeout_s, interval=0.5, what=f"node {self.name}", on_timeout=not_joined
        )
        return self

    def read_log(self) -> str:
        return (Path(self.temp_dir) / "ray-start.log").read_text()

    def pids(self) -> list[int]:
        """Every live process of this node: its session, plus anything naming its temp dir
        (Ray's workers on the node are started by its raylet, in the same session)."""
        import psutil

        found = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                if self.proc and os.getsid(proc.info["pid"]) == self.proc.pid:
                    found.append(proc.info["pid"])
                elif any(self.temp_dir in part for part in proc.info["cmdline"] or []):
                    found.append(proc.info["pid"])
            except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
                pass
        return found

    def kill(self) -> list[int]:
        """SIGKILL the whole node at once, as a preempted VM disappears; the pids killed."""
        pids = self.pids()
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc is not None:
            self.proc.wait(10)
        return pids

    def drain(self, deadline_s: float, reason: str = "DRAIN_NODE_REASON_PREEMPTION") -> float:
        """Tell the GCS this node will be taken away in `deadline_s` seconds, as a cloud's
        preemption notice does: the GCS DrainNode call that `ray drain-node` and the
        autoscaler make, with the deadline taken right before the call (importing Ray takes
        seconds on a loaded machine). Ray does not stop the node itself: `kill()` it at the
        deadline. Returns the deadline (UNIX seconds)."""
        script = (
            "import sys, time, ray\n"
            "from ray.core.generated import autoscaler_pb2\n"
            "client = ray._raylet.GcsClient(address=sys.argv[1])\n"
            "reason = autoscaler_pb2.DrainNodeReason.Value(sys.argv[3])\n"
            "deadline_ms = int((time.time() + float(sys.argv[4])) * 1000)\n"
            "ok, why = client.drain_node(sys.argv[2], reason, 'test: reclaimed', deadline_ms)\n"
            "print(deadline_ms) if ok else sys.exit(f'drain refused: {why}')\n"
        )
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                script,
                f"127.0.0.1:{self.head.gcs_port}",
                str(self.node_id),
                reason,
                str(deadline_s),
            ],
            env=self.head.env,
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return int(done.stdout.strip().splitlines()[-1]) / 1000

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        self.log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def alive_nodes(head: RayHead) -> list[dict] | None:
    """The head's view of the cluster: alive nodes with their resources (GCS via the
    dashboard's state API, with the token); None while the dashboard does not answer (on a
    loaded machine it can restart a module or drop a connection)."""
    import httpx

    try:
        resp = httpx.get(
            f"{head.address}/api/v0/nodes",
            params={"detail": "true", "limit": 100},
            headers=head.headers,
            timeout=10,
        )
        resp.raise_for_status()
    except httpx.HTTPError:
        return None
    rows = resp.json()["data"]["result"]["result"]
    return [
        {"NodeID": r["node_id"], "is_head": r["is_head_node"], "resources": r["resources_total"]}
        for r in rows
        if r["state"] == "ALIVE"
    ]
