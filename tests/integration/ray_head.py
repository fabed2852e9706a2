"""A real Ray head for tests: `ray start --head --block` on 127.0.0.1, token auth on.

It runs in its own session and temp dir, so stopping it ends exactly the processes it started
(never `ray stop`, which would end every Ray on the machine).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from rayfleet.local import free_port
from rayfleet.retry import poll

RAY = str(Path(sys.executable).with_name("ray"))


def agent_ports() -> list[str]:
    """Free ports for a node's agents: a second Ray on this machine (the test session's own,
    a head and its worker nodes) must not share the defaults (52365 for the dashboard agent,
    on which the head's Jobs API depends: a head whose agent could not bind refuses every
    submission with "Agent info not found")."""
    return [
        "--dashboard-agent-listen-port",
        str(free_port()),
        "--dashboard-agent-grpc-port",
        str(free_port()),
        "--runtime-env-agent-port",
        str(free_port()),
        "--metrics-export-port",
        str(free_port()),
    ]


class RayHead:
    def __init__(self, env: dict[str, str], num_cpus: int = 2):
        self.token = secrets.token_hex(24)
        self.num_cpus = num_cpus
        self.temp_dir = tempfile.mkdtemp(prefix="rf-head-", dir="/tmp")
        self.dashboard_port = free_port()
        self.gcs_port = free_port()
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        self.env = {
            **env,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.token,
            "RAY_USAGE_STATS_ENABLED": "0",
            # The entrypoint's `python` must be this interpreter (the venv with rayfleet's deps).
            "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
        }
        self.env.pop("RAY_ADDRESS", None)
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 90.0) -> RayHead:
        self.log = open(Path(self.temp_dir) / "ray-start.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                RAY,
                "start",
                "--head",
                "--block",
                "--node-ip-address",
                "127.0.0.1",
                "--port",
                str(self.gcs_port),
                "--dashboard-host",
                "127.0.0.1",
                "--dashboard-port",
                str(self.dashboard_port),
                "--num-cpus",
                str(self.num_cpus),
                "--temp-dir",
                self.temp_dir,
                "--disable-usage-stats",
                # The dashboard agent's HTTP port (the Jobs API's way in) is fixed by default
                # (52365): free here, as the session's own Ray may hold it. Only this one: with
                # every agent port moved (as worker nodes need), a killed job driver's Train
                # workers kept training after Ray destroyed them (test_jobs' kill test).
                "--dashboard-agent-listen-port",
                str(free_port()),
            ],
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        headers = self.headers

        def up() -> RayHead | None:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited: {self.read_log()[-2000:]}")
            try:
                if httpx.get(f"{self.address}/api/jobs/", headers=headers, timeout=2).is_success:
                    return self
            except httpx.HTTPError:
                pass
            return None

        def not_up() -> RuntimeError:
            self.stop()
            return RuntimeError(f"Ray head not up in {timeout_s} s: {self.read_log()[-2000:]}")

        return poll(up, timeout=timeout_s, interval=1.0, what="the Ray head", on_timeout=not_up)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def read_log(self) -> str:
        return (Path(self.temp_dir) / "ray-start.log").read_text()

    def stop(self) -> None:
        """SIGTERM to `ray start --block` (it stops what it started), SIGKILL to its session
        if it lingers, then end every process it started that is still there: its
        descendants as they were (Ray workers run in sessions of their own, and the HAProxy a
        Serve actor starts names no file of the head) and any naming this head's temp dir."""
        import psutil

        family: list[psutil.Process] = []
        if self.proc is not None and self.proc.poll() is None:
            try:
                family = psutil.Process(self.proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                pass
            # Ray drains a node for up to 30 s on SIGTERM; a test head has nothing to drain,
            # and one serving Serve never stopped within 10 s (measured): 2 s, then SIGKILL.
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(2)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        for proc in family:
            try:
                proc.kill()  # psutil checks it is still the same process (start time)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                if any(self.temp_dir in part for part in proc.info["cmdline"] or []):
                    proc.kill()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        self.log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)
