"""Digits sweeps end to end through the CLI: ASHA early stopping, best.json, kill and resume.

Each sweep runs `rayfleet sweep` in its own process (its own embedded Ray, as a user runs it)
against the session's loopback S3 server; the kill test SIGKILLs that whole process group.
"""

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import yaml

from rayfleet import record
from rayfleet.storage.checkpoints import list_checkpoints, verify
from rayfleet.storage.filesystem import filesystem_for, read_bytes, write_bytes
from rayfleet.storage.uri import parse_uri
from rayfleet.tune import results

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
TRAIN = REPO / "jobs" / "digits" / "train.yaml"
STORAGE = "s3://rayfleet-test"
SAMPLES, EPOCHS = 6, 4


def _write_sweep(
    tmp_path: Path, name: str, samples: int = SAMPLES, epochs: int = EPOCHS, **spec
) -> Path:
    doc = yaml.safe_load((REPO / "jobs" / "digits" / "sweep.yaml").read_text())
    doc["metadata"]["name"] = name
    doc["spec"]["trainJob"] = {
        "path": str(TRAIN),
        "overrides": {"run.epochs": epochs, "scaling.numWorkers": 1, "model.config.hidden": 64},
    }
    doc["spec"]["numSamples"] = samples
    doc["spec"].update(spec)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _sweep(spec: Path, *args: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "RAYFLEET_STORAGE": STORAGE}
    return subprocess.Popen(
        [sys.executable, "-m", "rayfleet.cli.main", "sweep", str(spec), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,  # the sweep, its Ray and its trials form one process group
        **popen,
    )


def _finish(proc: subprocess.Popen, timeout: float = 420) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"sweep did not finish in {timeout}s:\n{out[-3000:]}")
    assert proc.returncode == 0, out[-3000:]
    return out


def _uri(name):
    return parse_uri(f"{STORAGE}/sweeps/{name}")


def _checkpoints(name, trial_id):
    uri = _uri(name).join(trial_id, "train")
    return [path for _, path in list_checkpoints(filesystem_for(uri), uri.fs_path)]


@pytest.mark.security
def test_digits_sweep_killed_resumed_asha_and_verified_best(s3, digits_uri, tmp_path):
    """One sweep covers the sweep contract (it is the slowest thing CI runs): ASHA stops poor
    trials early; the driver SIGKILLed mid-sweep and resumed reruns no finished trial and
    trains no epoch twice; best.json names a verified checkpoint holding the best metric.
    Before the resume, crafted pickles are planted in the sweep's storage (issue 12): the
    resume must not unpickle any of them."""
    name = "sweep-digits"
    spec = _write_sweep(tmp_path, name)
    proc = _sweep(spec)
    deadline = time.monotonic() + 300
    finished = []
    while time.monotonic() < deadline and proc.poll() is None:
        table = results.read_table(_uri(name))
        finished = [t for t in (table.trials if table else []) if t.state in ("DONE", "STOPPED")]
        if len(finished) >= 2:
            break
        time.sleep(1)
    assert proc.poll() is None, "the sweep ended before it could be interrupted"
    assert len(finished) >= 2, "no trial finished within 300 s"
    time.sleep(2.5)  # let trials.json (written at most every 2 s) catch up
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()

    table = results.read_table(_uri(name))
    done_before = {t.trial_id: _checkpoints(name, t.trial_id) for t in finished}
    assert all(done_before.values())
    marker = tmp_path / "planted-pickle-ran"
    assert _plant_pickles(name, marker)

    _finish(_sweep(spec, "--resume"))
    assert not marker.exists(), "a pickle planted in the sweep's storage was unpickled"
    table, best = results.require_results(_uri(name), name)
    ids = [t.trial_id for t in table.trials]
    assert len(ids) == len(set(ids)) == SAMPLES
    assert all(t.state in ("DONE", "STOPPED") for t in table.trials), table
    for trial_id, before in done_before.items():
        assert _checkpoints(name, trial_id) == before, f"{trial_id} was trained again"
    for trial_id in ids:  # no epoch trained twice: one checkpoint per epoch at most
        epochs = [int(p.rsplit("checkpoint_e", 1)[1][:6]) for p in _checkpoints(name, trial_id)]
        assert len(epochs) == len(set(epochs)), (trial_id, epochs)

    stopped = [t for t in table.trials if t.state == "STOPPED"]
    assert stopped and all(t.epochs_done < EPOCHS for t in stopped), table
    assert any(t.state == "DONE" and t.epochs_done == EPOCHS for t in table.trials)
    assert table.epochs_consumed < SAMPLES * EPOCHS

    check = verify(filesystem_for(_uri(name)), parse_uri(best.checkpoint).fs_path)
    assert check.ok, check.reason
    assert check.manifest["meta"]["metrics"]["val_accuracy"] == best.value
    assert best.value == max(t.value for t in table.trials if t.value is not None)

    env = {**os.environ, "RAYFLEET_STORAGE": STORAGE}
    shown = subprocess.run(
        [sys.executable, "-m", "rayfleet.cli.main", "sweep", "results", name, "-o", "json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert doc["best"]["trialId"] == best.trial_id
    assert doc["best"]["checkpoint"] == best.checkpoint
    assert [t["trialId"] for t in doc["trials"]] == [t.trial_id for t in table.trials]
    # Busy time: the trials' workers report it through rayfleet's wrapper like a run's; the
    # sweep sums it (a trial killed with the driver loses at most its last epoch's).
    trial_busy = {
        t.trial_id: (record.read(filesystem_for(uri), uri) or {}).get("usage", {}).get("busy")
        for t in table.trials
        for uri in [_uri(name).join(t.trial_id, "train")]
    }
    assert 0 < doc["usage"]["busyCpuS"] <= doc["usage"]["cpuS"] * 1.05, (doc["usage"], trial_busy)

    again = _sweep(spec)  # an existing sweep is continued only on purpose
    out, _ = again.communicate(timeout=120)
    assert again.returncode == 2 and "already exists" in out and "--resume" in out, out


class _Planted:
    """What an attacker with write access to shared storage plants: unpickling it runs code
    (here: creates a marker file)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "a"))


def _plant_pickles(name: str, marker: Path) -> list[str]:
    """Overwrite every pickle in the sweep's storage with a crafted one, and plant Tune's
    experiment pickles (tuner.pkl, searcher state) next to every tuner.pkl and at the root."""
    uri = _uri(name)
    fs = filesystem_for(uri)
    files = fs.get_file_info(pafs.FileSelector(uri.fs_path, recursive=True))
    folders = {uri.fs_path} | {
        f.path.rsplit("/", 1)[0] for f in files if f.base_name == "tuner.pkl"
    }
    targets = {f.path for f in files if f.path.endswith(".pkl")}
    for folder in folders:
        targets |= {f"{folder}/tuner.pkl", f"{folder}/searcher-state-2026-01-01_00-00-00.pkl"}
    crafted = pickle.dumps(_Planted(marker))
    for path in sorted(targets):
        write_bytes(fs, path, crafted)
    return sorted(targets)


@pytest.mark.security
@pytest.mark.slow  # ~100 s; the default run plants the same pickles before the kill test's resume
def test_resume_never_unpickles_what_storage_holds(s3, digits_uri, tmp_path):
    """Issue 12: `sweep --resume` must not run a crafted pickle planted in the sweep's storage
    (Tune's tuner.pkl, searcher state, trial params). The resume continues from trials.json
    and verified checkpoints: a trial the table still calls RUNNING although all its epochs
    are checkpointed is not trained again, the trial still missing is sampled, and best.json
    verifies."""
    name = "sweep-planted"
    first = _write_sweep(tmp_path, name, samples=2, epochs=2, scheduler={"type": "fifo"})
    _finish(_sweep(first))
    uri = _uri(name)
    fs = filesystem_for(uri)
    before = results.read_table(uri)
    assert [t.state for t in before.trials] == ["DONE", "DONE"], before
    ids = [t.trial_id for t in before.trials]
    checkpoints = {tid: _checkpoints(name, tid) for tid in ids}

    # as if the driver died after trial 2's last epoch, before the table caught up
    path = uri.join(results.TRIALS_FILE).fs_path
    doc = json.loads(read_bytes(fs, path))
    doc["trials"][1]["state"] = "RUNNING"
    write_bytes(fs, path, json.dumps(doc).encode())
    marker = tmp_path / "planted-pickle-ran"
    assert _plant_pickles(name, marker)

    resumed = _write_sweep(tmp_path, name, samples=3, epochs=2, scheduler={"type": "fifo"})
    proc = _sweep(resumed, "--resume")
    try:
        out, _ = proc.communicate(timeout=420)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
    assert not marker.exists(), "a pickle planted in the sweep's storage was unpickled"
    assert proc.returncode == 0, out[-3000:]

    table, best = results.require_results(uri, name)
    after = [t.trial_id for t in table.trials]
    assert len(after) == len(set(after)) == 3 and set(ids) < set(after), table
    assert all(t.state == "DONE" and t.epochs_done == 2 for t in table.trials), table
    for tid in ids:
        assert _checkpoints(name, tid) == checkpoints[tid], f"{tid} was trained again"
    check = verify(fs, parse_uri(best.checkpoint).fs_path)
    assert check.ok, check.reason
    assert not marker.exists()
