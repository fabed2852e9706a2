"""`rayfleet serve SPEC` in the foreground, as a user starts it, for the serving tests: the
test's ModelDeployment (often the shipped digits one with changes: `digits_spec`), a free
port on 127.0.0.1, its own embedded Ray (RAY_ADDRESS and any token of the test's environment
removed), ready once a client sees it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from rayfleet.local import free_serve_port, stop_gracefully

from ..conftest import REPO

SERVE_SPEC = REPO / "jobs" / "digits" / "serve.yaml"


class ServeProcess:
    """One `rayfleet serve` this test started: its process, URL, spec file, environment and
    output (written to `log` as it goes)."""

    def __init__(self, proc: subprocess.Popen, url: str, spec: Path, env: dict, log: Path):
        self.proc, self.url, self.spec, self.env, self.log = proc, url, spec, env, log

    def output(self) -> str:
        return self.log.read_text()

    def wait_for_output(self, text: str, timeout: float = 30) -> str:
        """The server's output once it shows `text` (it is written as the server goes)."""
        deadline = time.monotonic() + timeout
        while text not in self.output() and time.monotonic() < deadline:
            time.sleep(0.2)
        return self.output()

    def cli(self, *args: str, timeout: float = 120, stdin: str | None = None):
        """`rayfleet ...` in its own process, as a user in a second terminal runs it."""
        return subprocess.run(
            [sys.executable, "-m", "rayfleet.cli.main", *args],
            capture_output=True, text=True, timeout=timeout, env=self.env, input=stdin,
        )  # fmt: skip

    def wait_ready(self, timeout: float) -> None:
        """Ready as a client sees it: GET /v2/health/ready answers 200 (all replicas up), and
        the local state file that `rayfleet predict` finds the URL in is written."""
        state = Path(self.env["RAYFLEET_SERVE_STATE"])
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while True:
                assert self.proc.poll() is None, self.output()[-3000:]
                assert time.monotonic() < deadline, self.output()[-3000:]
                try:
                    if client.get("/v2/health/ready").status_code == 200 and state.exists():
                        return
                except httpx.TransportError:
                    pass  # the proxy is not listening yet
                time.sleep(0.5)

    def stop(self) -> None:
        stop_gracefully(self.proc)  # only the process this test started, by its handle


def digits_spec(**changes: Any) -> dict[str, Any]:
    """jobs/digits/serve.yaml with `changes` to its `spec:` keys."""
    doc = yaml.safe_load(SERVE_SPEC.read_text())
    doc["spec"].update(changes)
    return doc


def start_serve(
    work: Path,
    doc: dict[str, Any],
    *,
    args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    kind: type[ServeProcess] = ServeProcess,
    timeout: float = 240,
) -> ServeProcess:
    """Serve ModelDeployment `doc` from folder `work`, with extra CLI `args` and environment
    `env`; returns once ready (`kind` wraps the process)."""
    spec_path = work / "serve.yaml"
    spec_path.write_text(yaml.safe_dump(doc))
    port = free_serve_port()
    full_env = {**os.environ, "RAYFLEET_SERVE_STATE": str(work / "state.json"), **(env or {})}
    for key in ("RAY_ADDRESS", "RAYFLEET_SERVE_TOKEN"):
        full_env.pop(key, None)
    log = work / "serve.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rayfleet.cli.main", "serve", str(spec_path),
             "--port", str(port), *args],
            stdout=sink, stderr=subprocess.STDOUT, env=full_env,
        )  # fmt: skip
    served = kind(proc, f"http://127.0.0.1:{port}", spec_path, full_env, log)
    try:
        served.wait_ready(timeout)
    except BaseException:
        served.stop()
        raise
    return served
