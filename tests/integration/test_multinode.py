"""Training across real Ray nodes on one machine: a token-auth head and a worker node (each its
own raylet with 1 CPU), the driver as a user runs it (`rayfleet run` with RAY_ADDRESS), the
checkpoints in the loopback S3 server.

Node loss is a whole worker node killed (SIGKILL to its process group) mid-run, as a
preempted VM vanishes: with `minWorkers` the run continues on the head's one worker and grows
back when a node rejoins; with a fixed `numWorkers` it waits for a replacement node, resumes
from the newest verified checkpoint and ends with exactly the metrics of an uninterrupted run.

Default run: the elastic shrink test only (a 2-node span, checkpoints in S3, node loss, the
run finishing on one worker). Slow (`-m slow`): the uninterrupted reference run, growing
back when a node joins, the fixed-size run waiting for a replacement node, the bound on that
wait, and a preemption notice answered with a just-in-time checkpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from rayfleet import record
from rayfleet.retry import poll
from rayfleet.storage.checkpoints import list_checkpoints, verify
from rayfleet.storage.filesystem import filesystem_for
from rayfleet.storage.uri import parse_uri
from tests.conftest import BUCKET, REPO
from tests.integration.ray_head import RayHead
from tests.integration.ray_nodes import RayWorkerNode, alive_nodes

pytestmark = pytest.mark.integration

SPEC = str(REPO / "jobs/digits/train.yaml")
STORAGE = f"s3://{BUCKET}"  # datasets/digits is the digits_uri fixture's
EPOCHS = 3


@pytest.fixture(scope="module")
def head(s3, digits_uri):
    """A 1-CPU head (so a 2-worker run must use a second node), token auth on. Its env (and
    so every worker's) has the S3 variables the s3 fixture exported."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("RAY_") and k not in ("PYTEST_CURRENT_TEST",)
    }
    # A worker group that cannot be placed (its node is gone, not yet noticed) is retried
    # after this many seconds instead of Ray Train's 60.
    env["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = "15"
    head = RayHead(env, num_cpus=1).start()
    yield head
    head.stop()


@pytest.fixture
def node(head):
    """A 1-CPU worker node joined to the head for one test (killed or stopped by it)."""
    started = RayWorkerNode(head, name="node").start()
    yield started
    started.stop()


class Driver:
    """`rayfleet run -o json` against the cluster, its stderr (progress, logs) collected."""

    def __init__(self, head: RayHead, name: str, *overrides: str, spec: str = SPEC):
        self.name = name
        env = {
            **head.env,
            "RAY_ADDRESS": f"127.0.0.1:{head.gcs_port}",
            "COLUMNS": "200",
        }
        sets = [f"metadata.name={name}", f"spec.storage={STORAGE}", f"spec.run.epochs={EPOCHS}"]
        # Later --set wins: a test may override the epochs.
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rayfleet", "run", spec, "-o", "json"]
            + [f"--set={item}" for item in [*sets, *overrides]],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append((time.monotonic(), line.rstrip()))

    def wait_for_line(self, text: str, timeout: float) -> float:
        """When (monotonic) a stderr line containing `text` appeared."""

        def seen() -> float | None:
            if self.proc.poll() is not None and not self._reader.is_alive():
                raise AssertionError(f"driver exited before {text!r}: {self.tail()}")
            return next((t for t, line in list(self.lines) if text in line), None)

        def missing() -> AssertionError:
            return AssertionError(f"no {text!r} in {timeout} s: {self.tail()}")

        return poll(seen, timeout=timeout, interval=0.25, what=repr(text), on_timeout=missing)

    def tail(self) -> str:
        return "\n".join(line for _, line in self.lines[-40:])

    def result(self, timeout: float = 300) -> dict:
        out, _ = self.proc.communicate(timeout=timeout)
        self._reader.join(5)
        assert self.proc.returncode == 0, self.tail()
        # Ray's driver also prints cluster events to stdout ("(raylet) The node with node id
        # ... has been marked dead"), before rayfleet's JSON document: read from that.
        return json.loads(out[out.index("\n{\n") + 1 :] if not out.startswith("{") else out)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _run_uri(name: str):
    return parse_uri(f"{STORAGE}/runs/{name}")


def _epochs_recorded(name: str) -> list[int]:
    uri = _run_uri(name)
    doc = record.read(filesystem_for(uri), uri) or {}
    return [e["epoch"] for e in doc.get("epochs", [])]


def _wait_for_epoch(driver: Driver, epoch: int, timeout: float = 240) -> None:
    """Until the run record notes `epoch` done (the driver writes it as the epoch ends)."""

    def reached() -> bool | None:
        if driver.proc.poll() is not None:
            raise AssertionError(f"driver exited early: {driver.tail()}")
        return True if epoch in _epochs_recorded(driver.name) else None

    poll(reached, timeout=timeout, interval=0.5, what=f"epoch {epoch} of {driver.name}")


def _train_worker_nodes(head: RayHead) -> dict[int, str]:
    """pid -> node id of every Ray Train worker actor the head knows (alive or dead)."""
    import httpx

    resp = httpx.get(
        f"{head.address}/api/v0/actors",
        params={"detail": "true", "limit": 1000},
        headers=head.headers,
        timeout=30,
    )
    resp.raise_for_status()
    return {
        a["pid"]: a["node_id"]
        for a in resp.json()["data"]["result"]["result"]
        if "RayTrainWorker" in a.get("class_name", "") and a.get("pid")
    }


def _assert_checkpoints_verify(name: str) -> list[str]:
    uri = _run_uri(name)
    fs = filesystem_for(uri)
    checkpoints = list_checkpoints(fs, uri.fs_path)
    assert checkpoints and all(verify(fs, path).ok for _, path in checkpoints)
    return [path for _, path in checkpoints]


@pytest.fixture(scope="module")
def reference(head):
    """An uninterrupted fixed-size run over both nodes: the metrics every disrupted run with
    the same world size must reproduce."""
    node = RayWorkerNode(head, name="ref").start()
    try:
        driver = Driver(head, "mn-ref")
        try:
            result = driver.result()
        finally:
            driver.stop()
        return {"result": result, "workers": _train_worker_nodes(head), "node": node.node_id}
    finally:
        node.stop()


@pytest.mark.slow
def test_uninterrupted_run_spans_both_nodes_and_checkpoints_to_s3(head, reference):
    result = reference["result"]
    assert result["epoch"] == EPOCHS - 1 and result["attempts"] == 1
    assert result["metrics"]["val_accuracy"] > 0.8
    assert result["checkpointUri"].startswith(f"{STORAGE}/runs/mn-ref/checkpoint_e")
    _assert_checkpoints_verify("mn-ref")
    # The two DDP workers ran one on each raylet: the head's and the joined node's.
    nodes = set(reference["workers"].values())
    head_ids = {n["NodeID"] for n in alive_nodes(head) or [] if n["is_head"]}
    assert len(nodes) == 2 and reference["node"] in nodes and nodes & head_ids, reference


def _alive_train_workers(head: RayHead) -> list[str]:
    """Node ids of the Ray Train worker actors alive now (one per rank of the group)."""
    import httpx

    resp = httpx.get(
        f"{head.address}/api/v0/actors",
        params={"detail": "true", "limit": 1000, "filter_keys": "state", "filter_values": "ALIVE"},
        headers=head.headers,
        timeout=30,
    )
    resp.raise_for_status()
    return sorted(
        a["node_id"]
        for a in resp.json()["data"]["result"]["result"]
        if "RayTrainWorker" in a.get("class_name", "") and a.get("state") == "ALIVE"
    )


def _wait_for_group(head: RayHead, driver: Driver, size: int, timeout: float) -> float:
    """When (monotonic) a worker group of exactly `size` ranks was seen alive."""

    def alive() -> float | None:
        if driver.proc.poll() is not None:
            raise AssertionError(f"driver exited before {size} worker(s) ran: {driver.tail()}")
        try:
            return time.monotonic() if len(_alive_train_workers(head)) == size else None
        except Exception:  # noqa: BLE001 - the dashboard may drop a request under load
            return None

    return poll(alive, timeout=timeout, interval=0.5, what=f"a group of {size} worker(s)")


def test_elastic_run_spans_both_nodes_and_continues_on_fewer_after_node_loss(head, node):
    """numWorkers 2, minWorkers 1 (the default-run check of this module): the run starts
    with a rank on each node; the node dies with its worker; Ray Train restarts the group
    on the head's one CPU from the newest checkpoint, and the run finishes there."""
    epochs = 4
    driver = Driver(head, "mn-shrink", f"spec.run.epochs={epochs}", "spec.scaling.minWorkers=1")
    try:
        _wait_for_epoch(driver, 0)
        on = _alive_train_workers(head)
        assert len(on) == 2 and node.node_id in on and len(set(on)) == 2, on
        killed_at = time.monotonic()
        assert node.kill()
        continued_at = _wait_for_group(head, driver, 1, timeout=180)
        print(f"elastic: 1 worker running {continued_at - killed_at:.1f} s after node loss")
        assert node.node_id not in _alive_train_workers(head)
        result = driver.result()
    finally:
        driver.stop()
    assert result["epoch"] == epochs - 1
    assert result["metrics"]["val_accuracy"] > 0.8
    assert result["checkpointUri"].startswith(f"{STORAGE}/runs/mn-shrink/checkpoint_e")
    _assert_checkpoints_verify("mn-shrink")


@pytest.mark.slow
def test_elastic_run_grows_back_when_a_node_joins(head, node):
    """After shrinking to one worker, a new node joins; the next resize check (every 5 s
    here) restarts the group on two workers, one on the new node, and the run finishes."""
    epochs = 30  # long enough to still be training when the new node has joined
    driver = Driver(
        head,
        "mn-grow",
        f"spec.run.epochs={epochs}",
        "spec.scaling.minWorkers=1",
        "spec.scaling.resizeCheckSeconds=5",
    )
    replacement = None
    try:
        _wait_for_epoch(driver, 0)
        node.kill()
        _wait_for_group(head, driver, 1, timeout=180)
        replacement = RayWorkerNode(head, name="rejoin").start()
        joined_at = time.monotonic()
        grown_at = _wait_for_group(head, driver, 2, timeout=180)
        print(f"elastic: 2 workers running {grown_at - joined_at:.1f} s after the node joined")
        assert replacement.node_id in _alive_train_workers(head)
        result = driver.result()
    finally:
        driver.stop()
        if replacement is not None:
            replacement.stop()
    assert result["epoch"] == epochs - 1
    _assert_checkpoints_verify("mn-grow")


@pytest.mark.slow
def test_fixed_size_run_waits_for_a_replacement_node_and_matches_the_reference(
    head, node, reference
):
    """numWorkers 2, no minWorkers: after the node dies the run cannot place its second
    worker and waits (Ray Train retries the worker group start); the test starts a
    replacement node 10 s later and the run resumes and ends with the reference metrics."""
    driver = Driver(head, "mn-fixed")
    replacement = None
    try:
        _wait_for_epoch(driver, 0)
        killed_at = time.monotonic()
        assert node.kill()
        poll(
            lambda: len(_alive_train_workers(head)) < 2 or None,
            timeout=120,
            interval=0.5,
            what="the group to lose its worker",
        )
        time.sleep(10)
        assert driver.proc.poll() is None, driver.tail()  # waiting, not failed
        assert len(_alive_train_workers(head)) < 2  # and not running on fewer workers
        replacement = RayWorkerNode(head, name="replacement").start()
        resumed_at = _wait_for_group(head, driver, 2, timeout=240)
        print(f"fixed: resumed {resumed_at - killed_at:.1f} s after node loss (10 s without)")
        result = driver.result()
    finally:
        driver.stop()
        if replacement is not None:
            replacement.stop()
    assert result["epoch"] == EPOCHS - 1
    assert result["metrics"] == reference["result"]["metrics"]
    _assert_checkpoints_verify("mn-fixed")


def _checkpoint_meta(name: str, checkpoint: str) -> dict:
    uri = _run_uri(name)
    fs = filesystem_for(uri)
    result = verify(fs, f"{uri.fs_path}/{checkpoint}")
    assert result.ok, result.reason
    return result.manifest["meta"]


def _quality_beats_noise(metrics: dict) -> bool:
    return metrics["quality"] > metrics["noise_quality"] + 0.5


@pytest.mark.slow
@pytest.mark.parametrize(
    ("recipe", "spec", "good"),
    [
        ("digits-cnn", SPEC, lambda metrics: metrics["val_accuracy"] > 0.8),
        ("digits-gan", str(REPO / "jobs/digits-gan/train.yaml"), _quality_beats_noise),
    ],
)
def test_preemption_notice_checkpoints_just_in_time_and_the_run_resumes_there(
    head, node, recipe, spec, good
):
    """The worker node gets a preemption notice (Ray's drain API, reason PREEMPTION, a 30 s
    deadline) and a replacement node starts joining, as a spot node pool does. Before the
    deadline every rank finishes its step and rank 0 writes a verified mid-epoch
    checkpoint, then one after every step of the final window; training goes on; at the
    deadline the node is killed; the run resumes from the newest of those checkpoints at its
    step on two workers again and finishes. For a classifier recipe and for the GAN (two
    networks, two optimizers, its own loop)."""
    name, notice_s = f"mn-preempt-{recipe}", 30
    driver = Driver(
        head,
        name,
        "spec.run.epochs=40",
        "spec.run.batchSize=8",  # 89 steps an epoch: the notice lands mid-epoch
        # No epoch checkpoints but the last: without the notice the run would start over,
        # and the resume can only come from a just-in-time checkpoint.
        "spec.checkpoint.everyEpochs=100",
        spec=spec,
    )
    joining: dict = {}
    try:
        _wait_for_epoch(driver, 0)
        on = _alive_train_workers(head)
        assert len(on) == 2 and node.node_id in on, on
        deadline = node.drain(notice_s)
        started = threading.Thread(
            target=lambda: joining.update(node=RayWorkerNode(head, name="spot-next").start()),
            daemon=True,
        )
        started.start()
        driver.wait_for_line("just-in-time checkpoint", timeout=notice_s + 5)
        notice = next(text for _, text in driver.lines if "preemption notice for node" in text)
        first = next(text for _, text in driver.lines if "just-in-time checkpoint" in text)
        print(f"preemption: {notice}\npreemption: {first}")
        # Written (saved and uploaded) before the deadline, by rank 0's clock.
        assert float(first.split(", ")[-1].split(" s before")[0]) > 0, first
        time.sleep(max(0.0, deadline - time.time()))
        assert driver.proc.poll() is None, driver.tail()  # trained on until the node went
        node.kill()
        driver.wait_for_line("resuming from", timeout=300)
        resumed = next(text for _, text in driver.lines if "resuming from" in text)
        checkpoint = resumed.split("resuming from ", 1)[1].split()[0]
        meta = _checkpoint_meta(name, checkpoint)  # (before the finished run prunes it)
        started.join(240)
        result = driver.result(timeout=600)
    finally:
        driver.stop()
        if "node" in joining:
            joining["node"].stop()
    written = [
        text.split("just-in-time checkpoint ", 1)[1].split()[0]
        for _, text in driver.lines
        if "just-in-time checkpoint" in text
    ]
    print(f"preemption: {len(written)} just-in-time checkpoint(s); {resumed}")
    # The newest of them (one the node took before its line got out can be newer still).
    assert checkpoint >= max(written), (checkpoint, written)
    assert meta["preemption"]["step"] > 0 and meta["preemption"]["worldSize"] == 2, meta
    assert f"step {meta['preemption']['step']}" in resumed and "on 2 worker(s)" in resumed
    assert result["epoch"] == 39 and good(result["metrics"]), result["metrics"]
    assert sorted(set(_epochs_recorded(name))) == list(range(40))
    _assert_checkpoints_verify(name)


@pytest.mark.slow
def test_fixed_size_run_waits_for_room_at_most_the_bound_then_fails_in_one_line(head):
    """numWorkers 2 on the 1-CPU head alone (the worker node is gone and none replaces it):
    with failure.replacementWaitSeconds 30 (two Ray Train start attempts of 15 s here, the
    head's RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S) the run says once, after the first, that
    it waits, and fails after the second with the line that names the knob, without
    relaunching."""
    nodes = poll(lambda: alive_nodes(head) or None, timeout=60, interval=1, what="the head")
    assert all(n["is_head"] for n in nodes), f"a worker node of another test is alive: {nodes}"
    driver = Driver(head, "mn-no-room", "spec.failure.replacementWaitSeconds=30")
    try:
        out, _ = driver.proc.communicate(timeout=300)
        driver._reader.join(5)
    finally:
        driver.stop()
    ended = time.monotonic()
    elapsed = ended - driver.started
    lines = [text for _, text in driver.lines]
    waiting = [text for text in lines if "waiting up to 30 s in all" in text]
    assert driver.proc.returncode == 1, driver.tail()
    assert len(waiting) == 1 and "no room for 2 worker(s) for 15 s" in waiting[0], driver.tail()
    failure = [
        text for text in lines if "after waiting 30 s (failure.replacementWaitSeconds)" in text
    ]
    assert failure and "relaunching" not in "\n".join(lines), driver.tail()
    said = next(t for t, text in driver.lines if "waiting up to 30 s in all" in text)
    assert ended - said >= 10, "the second 15 s attempt ran after the waiting line"
    print(f"no room: waiting line, failed {ended - said:.1f} s later ({elapsed:.1f} s in all)")
