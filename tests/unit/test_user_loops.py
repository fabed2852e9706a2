"""The pieces that let a plain Ray Train loop run under rayfleet, without Ray running:
Ray-named checkpoints, manifests stamped on stored checkpoints, report epochs and how long a
user loop trains."""

from __future__ import annotations

import pyarrow.fs as pafs
import pytest

from rayfleet.specs import parse_spec
from rayfleet.storage.checkpoints import (
    UNKNOWN_EPOCH,
    list_checkpoints,
    newest_verified,
    stamp_persisted,
    verify,
    write_manifest,
)

pytestmark = pytest.mark.unit

FS = pafs.LocalFileSystem()


def _checkpoint(root, name, payload=b"weights"):
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "model.pt").write_bytes(payload)
    (folder / "sub").mkdir()
    (folder / "sub" / "extra.bin").write_bytes(b"x" * 10)
    return folder


def test_ray_named_checkpoints_sort_by_their_timestamp(tmp_path):
    for name in (
        "checkpoint_2026-12-02_03-30-00.000002",
        "checkpoint_2026-12-02_03-29-59.999999",
        "checkpoint_2026-12-02_03-30-00.000010",
        "checkpoint_not-a-checkpoint",
    ):
        _checkpoint(tmp_path, name)
    listed = list_checkpoints(FS, str(tmp_path))
    assert [path.rsplit("_", 1)[-1] for _, path in listed] == [
        "03-30-00.000010",
        "03-30-00.000002",
        "03-29-59.999999",
    ]
    assert {epoch for epoch, _ in listed} == {UNKNOWN_EPOCH}


def test_stamped_checkpoint_verifies_and_takes_its_epoch_from_the_manifest(tmp_path):
    old = _checkpoint(tmp_path, "checkpoint_2026-12-02_03-30-00.000001")
    new = _checkpoint(tmp_path, "checkpoint_2026-12-02_03-31-00.000001")
    assert stamp_persisted(FS, str(old), {"epoch": 4, "metrics": {"loss": 1.0}})
    assert stamp_persisted(FS, str(new), {"epoch": 5, "metrics": {"loss": 0.5}})
    ref, skipped = newest_verified(FS, str(tmp_path))
    assert ref.path == str(new) and ref.epoch == 5 and not skipped

    (new / "model.pt").write_bytes(b"trunc")  # truncated after it was stamped
    ref, skipped = newest_verified(FS, str(tmp_path))
    assert ref.path == str(old) and ref.epoch == 4
    assert [s.name for s in skipped] == [new.name]
    assert "model.pt has 5 bytes" in skipped[0].reason


def test_an_unstamped_checkpoint_is_skipped_and_a_stamped_one_is_left_as_it_is(tmp_path):
    unstamped = _checkpoint(tmp_path, "checkpoint_2026-12-02_03-30-00.000001")
    ref, skipped = newest_verified(FS, str(tmp_path))
    assert ref is None and skipped[0].reason.startswith("no manifest")

    mine = _checkpoint(tmp_path, "checkpoint_e000003-0123")
    write_manifest(mine, {"epoch": 3, "recipe": "digits-cnn"})
    before = (mine / "rayfleet-manifest.json").read_bytes()
    assert not stamp_persisted(FS, str(mine), {"epoch": 99})  # session.report wrote it
    assert (mine / "rayfleet-manifest.json").read_bytes() == before
    assert unstamped.exists()


@pytest.mark.parametrize(
    ("metrics", "ordinal", "epoch"),
    [
        ({"epoch": 7, "loss": 1}, 0, 7),
        ({"epoch": 7.0}, 0, 7),
        ({"loss": 1}, 3, 3),  # no epoch metric: the report's ordinal
        ({"epoch": "seven"}, 2, 2),
        ({"epoch": True}, 2, 2),
        ({"epoch": -1}, 2, 2),
    ],
)
def test_report_epoch(metrics, ordinal, epoch):
    from rayfleet.train.reporting import report_epoch

    assert report_epoch(metrics, ordinal) == epoch


def _user_job(config):
    return parse_spec(
        {
            "apiVersion": "rayfleet.io/v1alpha1",
            "kind": "TrainJob",
            "metadata": {"name": "loop"},
            "spec": {"model": {"entrypoint": "loop:train", "config": config}},
        }
    )


def test_a_user_loops_epochs_come_from_its_config_and_do_not_change_its_identity():
    short, long = _user_job({"epochs": 2, "lr": 0.1}), _user_job({"epochs": 5, "lr": 0.1})
    assert (short.epochs_planned(), long.epochs_planned()) == (2, 5)
    assert short.spec_hash() == long.spec_hash()  # more epochs continue the same training
    assert _user_job({"epochs": 2, "lr": 0.2}).spec_hash() != short.spec_hash()
    assert _user_job({"lr": 0.1}).epochs_planned() == 10  # run.epochs


# ------------------------------------ numbering the reports of a loop with no `epoch` metric


def _persisted(root, seq: int):
    """A checkpoint as Ray Train persists one (its naming, no manifest yet)."""
    from ray.train import Checkpoint

    folder = _checkpoint(root, f"checkpoint_2026-12-02_03-30-00.{seq:06d}", f"w{seq}".encode())
    return Checkpoint(path=str(folder), filesystem=FS)


def _stamped_epoch(checkpoint) -> int:
    """The epoch in the manifest rayfleet stamped on a reported checkpoint."""
    verified = verify(FS, checkpoint.path)
    assert verified.ok, verified.reason
    return verified.manifest["meta"]["epoch"]


def test_reports_are_counted_from_where_the_worker_group_resumed(tmp_path):
    """Epochs 0-2 reported, epoch 2's checkpoint torn by the failure: the restarted group
    resumes from epoch 1's and its next report is epoch 2 again, not 3; a relaunched fit()
    (a new trainer of the same run) counts on from the newest verified checkpoint."""
    from rayfleet.train.reporting import ReportEpochs, RunReporter

    def reporter():
        numbering = ReportEpochs(str(tmp_path))
        return RunReporter(channel=None, spec_hash="h", epochs=None, numbering=numbering)

    first = reporter()
    reported = [_persisted(tmp_path, seq) for seq in range(3)]
    for checkpoint in reported:
        first.after_report(None, [{"loss": 1.0}, {"loss": 1.0}], checkpoint)
    assert [_stamped_epoch(c) for c in reported[:2]] == [0, 1]
    (tmp_path / reported[2].path.rsplit("/", 1)[1] / "model.pt").write_bytes(b"torn")

    first.after_exception(None, {1: RuntimeError("node lost")})
    again = _persisted(tmp_path, 3)
    first.after_report(None, [{"loss": 0.5}], again)
    assert _stamped_epoch(again) == 2 and first.numbering.last == 2
    first.after_report(None, [{"loss": 0.4}], None)  # no checkpoint: still counted
    assert first.numbering.last == 3

    relaunched = reporter()  # a new fit() of the run: resumes from epoch 2's checkpoint
    later = _persisted(tmp_path, 4)
    relaunched.after_report(None, [{"loss": 0.3}], later)
    assert _stamped_epoch(later) == 3


def test_a_just_in_time_report_stands_for_the_epoch_in_progress(tmp_path):
    from rayfleet.train.preemption import PREEMPTION_KEY
    from rayfleet.train.reporting import ReportEpochs

    numbering = ReportEpochs(str(tmp_path))
    assert numbering.of({"loss": 1.0}) == 0
    assert numbering.of({"loss": 1.0, PREEMPTION_KEY: 7}, advance=False) == 1
    assert numbering.of({"loss": 0.9}) == 1
    assert numbering.of({"epoch": 5}) == 5 and numbering.of({}) == 6
