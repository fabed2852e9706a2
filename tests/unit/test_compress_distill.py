"""`rayfleet compress --method distill` without Ray: the student config, the distillation loss
on fixed logits, the lineage document, the student TrainJob built from the teacher's record,
refusals that write nothing, and a distilled checkpoint loading as a plain model. Training
the student on Ray is tests/integration/test_compress.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from rayfleet import record
from rayfleet.cli.main import app
from rayfleet.compress.distill import (
    DISTILL_KEY,
    parse_student_set,
    prepare_distill,
    student_config,
)
from rayfleet.compress.lineage import META_KEY, Compression, Distillation, compression_of
from rayfleet.compress.methods import CompressError
from rayfleet.serve.loading import load_model, load_verified
from rayfleet.specs import load_spec
from rayfleet.storage.checkpoints import write_manifest
from rayfleet.storage.filesystem import filesystem_for
from rayfleet.storage.uri import parse_uri
from rayfleet.train.recipes.digits import build_model
from rayfleet.train.recipes.distill import distill_loss, split_settings

from .test_serve_loading import META, write_checkpoint

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]
SHA = "cd" * 32


# ------------------------------------------------------------------------ student config


def test_the_default_student_divides_the_recipes_widths_by_four():
    assert student_config("digits-cnn", {"channels": 32, "hidden": 128, "dropout": 0.25}) == {
        "channels": 8,
        "hidden": 32,
        "dropout": 0.25,
    }
    # Keys the teacher left at the recipe's default shrink from that default.
    assert student_config("digits-cnn", {}) == {"channels": 8, "hidden": 32}
    assert student_config("tabular-mlp", {"hidden": 64, "layers": 2}) == {
        "hidden": 16,
        "layers": 2,
    }
    assert student_config("text-lstm", {"embed": 8}) == {"embed": 4, "hidden": 16}
    assert student_config("image-cnn", {"width": 8}) == {"width": 4}  # never below 4


def test_student_set_overrides_and_parses_values_as_yaml_scalars():
    overrides = parse_student_set(["hidden=48", "dropout=0.1"], "digits-cnn")
    assert overrides == {"hidden": 48, "dropout": 0.1}
    student = student_config("digits-cnn", {"channels": 32, "hidden": 128}, overrides)
    assert student == {"channels": 8, "hidden": 48, "dropout": 0.1}
    assert student_config("tabular-mlp", {"hidden": 64}, {"layers": 1}) == {
        "hidden": 16,
        "layers": 1,
    }


@pytest.mark.parametrize(
    ("recipe", "items", "message"),
    [
        ("digits-cnn", ["hidden"], "expected key=value"),
        ("digits-cnn", ["width=4"], "recipe digits-cnn has no config key 'width'"),
    ],
)
def test_bad_student_set_items_are_refused(recipe, items, message):
    with pytest.raises(CompressError, match=message):
        parse_student_set(items, recipe)


def test_a_student_that_is_the_teacher_again_or_has_no_known_shrink_is_refused():
    with pytest.raises(CompressError, match="builds the teacher's model again"):
        student_config("digits-cnn", {"channels": 32}, {"channels": 32, "hidden": 128})
    with pytest.raises(CompressError, match="no default student .* pass --student-set"):
        student_config("digits-gan", {"width": 64})
    assert student_config("digits-gan", {"width": 64}, {"width": 16}) == {"width": 16}


# --------------------------------------------------------------------- distillation loss


def test_the_soft_term_vanishes_when_the_student_matches_the_teacher():
    torch.manual_seed(0)
    logits, labels = torch.randn(16, 10), torch.randint(0, 10, (16,))
    for alpha in (0.0, 0.7, 1.0):
        loss = distill_loss(logits, logits.clone(), labels, temperature=4.0, alpha=alpha)
        expected = (1 - alpha) * F.cross_entropy(logits, labels)
        torch.testing.assert_close(loss, expected, atol=1e-6, rtol=1e-6)


def test_the_soft_term_is_kl_of_the_softened_distributions_scaled_by_t_squared():
    torch.manual_seed(1)
    student, teacher = torch.randn(8, 10), torch.randn(8, 10) * 3
    labels = torch.randint(0, 10, (8,))
    for t in (1.0, 2.0, 4.0):
        p = F.softmax(teacher / t, dim=1)
        kl = (p * (p.log() - F.log_softmax(student / t, dim=1))).sum(1).mean()
        got = distill_loss(student, teacher, labels, temperature=t, alpha=1.0)
        torch.testing.assert_close(got, t * t * kl, atol=1e-5, rtol=1e-5)
        assert got > 0
    mixed = distill_loss(student, teacher, labels, temperature=2.0, alpha=0.25)
    soft = distill_loss(student, teacher, labels, temperature=2.0, alpha=1.0)
    torch.testing.assert_close(mixed, 0.25 * soft + 0.75 * F.cross_entropy(student, labels))


def test_the_teacher_settings_never_reach_the_model_or_the_checkpoint_meta():
    settings = {"teacher": "s3://b/runs/d/checkpoint_e000001", "temperature": 4.0, "alpha": 0.7}
    config = {"channels": 8, DISTILL_KEY: settings}
    meta = {"recipe": "digits-cnn", "model_config": config}
    clean, clean_meta, got = split_settings(config, meta)
    assert got == settings
    assert clean == {"channels": 8} and clean_meta["model_config"] == {"channels": 8}
    assert split_settings({"channels": 8}, {"model_config": {}})[2] is None


# --------------------------------------------------------------------------- lineage


def _lineage() -> Compression:
    return Compression(
        method="distill",
        source="s3://b/runs/d/checkpoint_e000001",
        source_manifest_sha256=SHA,
        source_weights_bytes=1000,
        weights_bytes=100,
        distillation=Distillation(
            student_config={"channels": 8, "hidden": 32},
            teacher_config={"channels": 32, "hidden": 128},
            temperature=4.0,
            alpha=0.7,
            epochs=2,
            workers=1,
        ),
    )


def test_a_distill_lineage_round_trips_and_old_lineages_still_parse():
    doc = _lineage()
    meta = json.loads(json.dumps({META_KEY: doc.to_meta()}))
    assert meta[META_KEY]["distillation"]["studentConfig"] == {"channels": 8, "hidden": 32}
    assert "engine" not in meta[META_KEY]
    assert compression_of(meta, "ck") == doc
    old = {"method": "fp16", "source": "s3://b/x", "sourceManifestSha256": SHA,
           "sourceWeightsBytes": 10, "weightsBytes": 5}  # fmt: skip
    assert compression_of({META_KEY: old}, "ck").distillation is None
    bad = {**doc.to_meta(), "distillation": {**doc.to_meta()["distillation"], "alpha": 2}}
    with pytest.raises(CompressError, match="distillation.alpha"):
        compression_of({META_KEY: bad}, "ck")


def test_a_distilled_checkpoint_serves_as_a_plain_model_of_the_student_config(tmp_path):
    student = {"channels": 4, "hidden": 8, "dropout": 0.25}
    torch.manual_seed(3)
    model = build_model(student).eval()
    torch.save({"model": model.state_dict(), "optimizer": {}, "epoch": 1}, tmp_path / "state.pt")
    meta = {**META, "model_config": student, META_KEY: _lineage().to_meta()}
    loaded = load_verified(tmp_path, write_manifest(tmp_path, meta), "ck", name="s")
    x = torch.randn(5, 1, 8, 8)
    with torch.inference_mode():
        assert torch.equal(loaded.module(x), model(x))
    assert not any(".quantized" in type(m).__module__ for m in loaded.module.modules())


# -------------------------------------------------- the student TrainJob and refusals


@pytest.fixture
def store(tmp_path):
    """A digits run as `rayfleet run` leaves it: a verified checkpoint and the run record."""
    write_checkpoint(tmp_path / "runs" / "digits" / "checkpoint_e000001-aa", 1, seed=1)
    _record(tmp_path, "digits")
    return tmp_path


def _record(store: Path, name: str, *overrides: str) -> None:
    job = load_spec(REPO / "jobs" / "digits" / "train.yaml",
                    [f"metadata.name={name}", f"spec.storage={store}", *overrides])  # fmt: skip
    run_uri = parse_uri(str(store)).join("runs", name)
    record.write(filesystem_for(run_uri), run_uri, job, status="SUCCEEDED")


def test_the_student_job_is_the_teachers_job_renamed_with_the_student_config(store):
    plan = prepare_distill("digits", storage=parse_uri(str(store)), to="digits-small",
                           student_set=["hidden=24"], epochs=3, workers=1)  # fmt: skip
    job = plan.job
    assert job.name == "digits-small" and job.run_uri() == plan.dest
    assert job.spec.model.recipe == "digits-cnn"
    config = dict(job.spec.model.config)
    settings = config.pop(DISTILL_KEY)
    assert config == {"channels": 8, "hidden": 24, "dropout": 0.25} == plan.student_config
    assert settings == {"teacher": str(plan.source), "temperature": 4.0, "alpha": 0.7}
    assert plan.source.key.endswith("runs/digits/checkpoint_e000001-aa")
    assert job.dataset_uri() == parse_uri(str(store)).join("datasets", "digits")
    # Same optimisation and seed as the teacher; only length and width of the run changed.
    assert (job.spec.run.epochs, job.spec.scaling.num_workers) == (3, 1)
    assert (job.spec.run.learning_rate, job.spec.run.seed) == (0.002, 7)
    assert not (store / "runs" / "digits-small").exists(), "prepare writes nothing"


def test_a_student_trains_three_times_the_teachers_epochs_unless_told(store):
    plan = prepare_distill("digits", storage=parse_uri(str(store)), to="digits-small")
    assert plan.job.spec.run.epochs == 3 * 12  # jobs/digits/train.yaml trains 12


def _cli(store: Path, *args: str):
    result = CliRunner().invoke(app, ["compress", "--storage", str(store), *args])
    return result.exit_code, result.output.strip()


def _runs(store: Path) -> list[str]:
    return sorted(p.name for p in (store / "runs").iterdir())


D = ["--run", "digits", "--method", "distill"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([*D, "--to", "digits"], "that is the source run"),
        ([*D, "--to", "small", "--student-set", "width=4"], "has no config key 'width'"),
        ([*D, "--to", "small", "--student-set", "channels=32", "--student-set", "hidden=128"],
         "builds the teacher's model again"),
        ([*D, "--to", "small", "--temperature", "0"], "--temperature 0.0: must be above 0"),
        ([*D, "--to", "small", "--alpha", "1.5"], "--alpha 1.5: must be between 0 and 1"),
        (["--run", "digits", "--method", "fp16", "--to", "small", "--student-set", "hidden=8"],
         "--student-set: only --method distill reads it"),
        (["--run", "digits", "--method", "distil", "--to", "small", "--epochs", "2"],
         "'distil' is not a compression method"),
        ([*D, "--to", "small", "--workers", "0"], "--workers 0: must be at least 1"),
    ],
)  # fmt: skip
def test_bad_distill_input_exits_2_with_one_line_and_writes_nothing(store, args, message):
    code, out = _cli(store, *args)
    assert code == 2, out
    assert message in out and len(out.splitlines()) == 1, out
    assert _runs(store) == ["digits"]


def test_an_existing_destination_needs_overwrite(store):
    write_checkpoint(store / "runs" / "small" / "checkpoint_e000000-aa", 0)
    code, out = _cli(store, *D, "--to", "small")
    assert code == 2 and "already exists" in out and "--overwrite" in out, out


def test_a_run_without_its_record_or_from_a_user_loop_is_refused(tmp_path):
    write_checkpoint(tmp_path / "runs" / "bare" / "checkpoint_e000001-aa", 1)
    code, out = _cli(tmp_path, "--run", "bare", "--method", "distill", "--to", "small")
    assert code == 2 and "no run record" in out, out
    user = {"recipe": None}
    write_checkpoint(tmp_path / "runs" / "mine" / "checkpoint_e000001-aa", 1, meta=user)
    _record(tmp_path, "mine", "spec.model.recipe=null", "spec.model.entrypoint=train:loop")
    code, out = _cli(tmp_path, "--run", "mine", "--method", "distill", "--to", "small")
    assert code == 2 and "trained train:loop, not a built-in recipe" in out, out
    assert _runs(tmp_path) == ["bare", "mine"]


def test_a_quantized_source_is_refused_but_a_distilled_student_can_be_quantized(store):
    fp16 = _lineage().model_copy(update={"method": "fp16", "distillation": None})
    write_checkpoint(store / "runs" / "d16" / "checkpoint_e000001-aa", 1,
                     meta={META_KEY: fp16.to_meta()})  # fmt: skip
    _record(store, "d16")
    code, out = _cli(store, "--run", "d16", "--method", "distill", "--to", "small")
    assert code == 2 and "compressed (fp16" in out and "fp32 source run" in out, out
    # A distilled student (plain fp32 weights of a smaller config) quantizes like any run.
    student = {"channels": 4, "hidden": 8, "dropout": 0.25}
    write_checkpoint(store / "runs" / "small" / "checkpoint_e000001-aa", 1,
                     meta={"model_config": student, META_KEY: _lineage().to_meta()})  # fmt: skip
    code, out = _cli(store, "--run", "small", "--method", "dynamic-int8", "--to", "small8")
    assert code == 0, out
    loaded = load_model(str(next((store / "runs" / "small8").iterdir())), name="s8")
    assert loaded.meta[META_KEY]["method"] == "dynamic-int8"
