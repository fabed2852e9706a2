import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from rayfleet.errors import SpecError
from rayfleet.specs import json_schema, load_spec, parse_spec

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "jobs" / "digits" / "train.yaml"


def _doc(**spec_changes):
    doc = yaml.safe_load(DIGITS.read_text())
    doc["spec"].update(spec_changes)
    return doc


@pytest.mark.parametrize("path", sorted((REPO / "jobs").rglob("*.yaml")), ids=str)
def test_every_shipped_spec_validates(path):
    job = load_spec(path)
    assert job.name
    jsonschema.validate(yaml.safe_load(path.read_text()), json_schema(job.kind))


def test_unknown_field_is_named():
    doc = _doc()
    doc["spec"]["run"]["epohcs"] = 3
    with pytest.raises(SpecError, match=r"spec\.run\.epohcs: unknown field"):
        parse_spec(doc)


def test_wrong_type_is_named_with_value():
    doc = _doc()
    doc["spec"]["scaling"]["numWorkers"] = "two"
    with pytest.raises(SpecError, match=r"spec\.scaling\.numWorkers: .*integer.*'two'"):
        parse_spec(doc)


@pytest.mark.parametrize(
    "uri, fragment",
    [
        ("gs://bucket/x", "scheme 'gs' is not supported"),
        ("s3://Bad_Bucket/x", "bucket name 'Bad_Bucket' is not valid"),
        ("s3://", "bucket name '' is not valid"),
        ("file://relative", "must be absolute"),
    ],
)
def test_bad_storage_uri_is_named(uri, fragment):
    with pytest.raises(SpecError, match=r"spec\.storage: ") as err:
        parse_spec(_doc(storage=uri))
    assert fragment in str(err.value)


def test_recipe_and_entrypoint_are_exclusive():
    doc = _doc()
    doc["spec"]["model"]["entrypoint"] = "mod:fn"
    with pytest.raises(SpecError, match="exactly one of recipe or entrypoint"):
        parse_spec(doc)


def test_unknown_recipe_lists_choices():
    doc = _doc()
    doc["spec"]["model"]["recipe"] = "resnet"
    with pytest.raises(SpecError, match="unknown recipe 'resnet'; choose one of digits-cnn"):
        parse_spec(doc)


def test_bad_name_and_kind():
    doc = _doc()
    doc["metadata"]["name"] = "Digits_Run"
    with pytest.raises(SpecError, match=r"metadata\.name: 'Digits_Run' is not a valid name"):
        parse_spec(doc)
    doc = _doc()
    doc["kind"] = "TrainJobb"
    with pytest.raises(SpecError, match="kind: 'TrainJobb' is not known"):
        parse_spec(doc)


def test_overrides_apply_and_are_validated():
    job = load_spec(DIGITS, ["spec.run.epochs=3", "spec.run.learningRate=1e-2"])
    assert job.spec.run.epochs == 3 and job.spec.run.learning_rate == 0.01
    with pytest.raises(SpecError, match=r"spec\.run\.epochs: .*integer"):
        load_spec(DIGITS, ["spec.run.epochs=three"])
    with pytest.raises(SpecError, match=r"spec\.run\.epoch: unknown field"):
        load_spec(DIGITS, ["spec.run.epoch=3"])
    with pytest.raises(SpecError, match="expected key.path=value"):
        load_spec(DIGITS, ["spec.run.epochs"])


def test_storage_defaults_and_dataset_names(monkeypatch, tmp_path):
    monkeypatch.setenv("RAYFLEET_STORAGE", "s3://team-bucket/ml")
    job = load_spec(DIGITS)
    assert str(job.storage_uri()) == "s3://team-bucket/ml"
    assert str(job.dataset_uri()) == "s3://team-bucket/ml/datasets/digits"
    assert str(job.run_uri()) == "s3://team-bucket/ml/runs/digits"
    job = load_spec(DIGITS, [f"spec.storage={tmp_path}", "spec.dataset=s3://other/ds"])
    assert str(job.run_uri()) == f"{tmp_path}/runs/digits"
    assert str(job.dataset_uri()) == "s3://other/ds"


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(SpecError, match="no such spec file"):
        load_spec(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: [TrainJob\n")
    with pytest.raises(SpecError, match="line 2 is not valid YAML"):
        load_spec(bad)


def test_schema_is_generated_with_camel_case():
    schema = json_schema("TrainJob")
    spec = schema["$defs"]["TrainJobSpec"]
    assert spec["additionalProperties"] is False
    assert "numWorkers" in schema["$defs"]["ScalingSpec"]["properties"]


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "rayfleet.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_bad_input_is_one_line_exit_2(tmp_path):
    doc = _doc()
    doc["spec"]["run"]["batchSize"] = -1
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    for args in (["validate", str(path)], ["run", str(path)]):
        proc = _cli(*args)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "spec.run.batchSize" in lines[0], proc.stderr
        assert "Traceback" not in proc.stderr


def test_cli_schema_prints_json():
    proc = _cli("schema")
    assert proc.returncode == 0
    assert json.loads(proc.stdout)["title"] == "TrainJob"
