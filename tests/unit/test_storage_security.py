"""Storage shared with others: pruning, manifests, one driver per run, one training per run.

Each test failed before the security issue's fixes: pruning counted a same-size corrupted
checkpoint as kept and deleted the only good one, manifests could name files outside their
folder, two drivers could run one name at once, and a changed spec resumed silently.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import yaml

from rayfleet.errors import BadInputError, SpecError
from rayfleet.specs import parse_spec
from rayfleet.storage import pins
from rayfleet.storage.checkpoints import (
    MANIFEST,
    SPEC_HASH_KEY,
    checkpoint_dir_name,
    newest_verified,
    prune,
    verify,
    write_manifest,
)
from rayfleet.storage.lease import Lease, RunLockedError
from rayfleet.storage.uri import parse_uri
from rayfleet.train.launcher import check_same_training
from tests.unit.test_storage import _checkpoint

pytestmark = [pytest.mark.unit, pytest.mark.security]
LOCAL = pafs.LocalFileSystem()
TRAIN = parse_spec(
    yaml.safe_load((Path(__file__).parents[2] / "jobs" / "digits" / "train.yaml").read_text())
)


def _names(root):
    return sorted(p.name for p in root.iterdir() if p.name.startswith("checkpoint_"))


def test_prune_never_deletes_the_only_fully_verified_checkpoint(tmp_path):
    for epoch in range(4):
        _checkpoint(tmp_path, epoch)
    for epoch in (2, 3):  # same-size corruption of the two newest
        (tmp_path / checkpoint_dir_name(epoch, "00aa") / "state.pt").write_bytes(b"X" * 7000)
    prune(LOCAL, str(tmp_path), keep=2)
    ref, _ = newest_verified(LOCAL, str(tmp_path))
    assert ref is not None and ref.epoch == 1, "the newest good checkpoint was pruned"
    assert checkpoint_dir_name(0, "00aa") in _names(tmp_path)


def test_prune_keeps_pinned_and_protected_checkpoints(tmp_path):
    for epoch in range(6):
        _checkpoint(tmp_path, epoch)
    served = tmp_path / checkpoint_dir_name(1, "00aa")
    pins.pin(LOCAL, str(served), "deployment-digits")
    deleted = prune(LOCAL, str(tmp_path), keep=2, protect=(checkpoint_dir_name(0, "00aa"),))
    assert sorted(d.name for d in deleted) == [checkpoint_dir_name(e, "00aa") for e in (2, 3)]
    assert pins.pinned(LOCAL, str(tmp_path)) == {served.name: "deployment-digits"}


@pytest.mark.parametrize("entry", ["../outside.pt", "/etc/hostname", "a/../../b", "./x", ""])
def test_manifest_entries_must_stay_inside_the_checkpoint(tmp_path, entry):
    folder = _checkpoint(tmp_path / "run", 0)
    (tmp_path / "run" / "outside.pt").write_bytes(b"w")
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["files"].append({"path": entry, "size": 1, "sha256": "0" * 64})
    (folder / MANIFEST).write_text(json.dumps(manifest))
    result = verify(LOCAL, str(folder))
    assert not result.ok and "manifest entry" in result.reason


def test_second_driver_of_a_run_is_refused(tmp_path):
    run = parse_uri(str(tmp_path / "runs" / "r"))
    with Lease(run, what="run r", ttl_s=3):
        time.sleep(1.5)  # the holder renews while it works
        with pytest.raises(RunLockedError, match="run r is being run by"):
            Lease(run, what="run r", ttl_s=3).acquire(wait_s=2)
    assert isinstance(RunLockedError("x"), BadInputError)  # exit code 2


def test_lease_of_a_dead_driver_expires_and_is_taken_over(tmp_path):
    run = parse_uri(str(tmp_path / "runs" / "r"))
    dead = Lease(run, what="run r", ttl_s=3)
    dead.acquire()
    dead._stop.set()  # the process dies: no renewals, no release
    started = time.monotonic()
    with Lease(run, what="run r", ttl_s=3) as lease:
        assert lease.holder in (tmp_path / "runs" / "r" / "lease.json").read_text()
    assert time.monotonic() - started < 10
    assert not (tmp_path / "runs" / "r" / "lease.json").exists()


def test_racing_drivers_get_exactly_one_lease(tmp_path):
    run = parse_uri(str(tmp_path / "runs" / "r"))
    outcomes: list[str] = []
    held: list[Lease] = []

    def start():
        lease = Lease(run, what="run r", ttl_s=30)
        try:
            lease.acquire(wait_s=0)
            held.append(lease)
            outcomes.append("won")
        except RunLockedError:
            outcomes.append("refused")

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for lease in held:
        lease.release()
    assert sorted(outcomes) == ["refused"] * 3 + ["won"]


def _ref_with_hash(tmp_path, spec_hash):
    folder = tmp_path / checkpoint_dir_name(4, "00aa")
    folder.mkdir(parents=True)
    (folder / "state.pt").write_bytes(b"w")
    write_manifest(folder, {"epoch": 4, SPEC_HASH_KEY: spec_hash})
    ref, _ = newest_verified(LOCAL, str(tmp_path))
    return ref


def test_resume_under_a_different_training_is_refused(tmp_path):
    changed = TRAIN.model_copy(
        update={
            "spec": TRAIN.spec.model_copy(
                update={"run": TRAIN.spec.run.model_copy(update={"learning_rate": 0.5})}
            )
        }
    )
    ref = _ref_with_hash(tmp_path, TRAIN.spec_hash())
    previous = {"spec": TRAIN.model_dump(mode="json", by_alias=True)}
    with pytest.raises(SpecError, match=r"different spec \(changed: run\.learningRate\).*--force"):
        check_same_training(changed, ref, previous)


def test_more_epochs_or_workers_resume_the_same_training(tmp_path):
    longer = TRAIN.model_copy(
        update={
            "spec": TRAIN.spec.model_copy(
                update={
                    "run": TRAIN.spec.run.model_copy(update={"epochs": 40}),
                    "scaling": TRAIN.spec.scaling.model_copy(update={"num_workers": 1}),
                }
            )
        }
    )
    assert longer.spec_hash() == TRAIN.spec_hash()
    check_same_training(longer, _ref_with_hash(tmp_path, TRAIN.spec_hash()), None)
