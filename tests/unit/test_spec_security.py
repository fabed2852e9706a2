"""Specs written by someone else: no environment expansion, strict names, bounded numbers.

Each test here failed on the code before the security issue's fixes: `${VAR}` skipped URI
validation and was expanded (leaking the process's secrets into paths and errors), `digits\\n`
was a valid name, and inf / huge numbers validated only to fail inside the workers.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rayfleet.errors import SpecError
from rayfleet.specs import parse_spec

pytestmark = [pytest.mark.unit, pytest.mark.security]
JOBS = Path(__file__).resolve().parents[2] / "jobs" / "digits"
SECRET = "s3cr3t-token-value-0123456789"


def _doc(name: str, **spec_changes):
    doc = yaml.safe_load((JOBS / name).read_text())
    doc["spec"].update(spec_changes)
    return doc


@pytest.fixture
def secret_env(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN", SECRET)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)


@pytest.mark.parametrize(
    "file,field,value",
    [
        ("serve.yaml", "source", {"checkpoint": "s3://team-bucket/${RAY_AUTH_TOKEN}/ckpt"}),
        ("serve.yaml", "source", {"checkpoint": "/tmp/$AWS_SECRET_ACCESS_KEY"}),
        ("serve.yaml", "storage", "s3://team-bucket/${AWS_SECRET_ACCESS_KEY}"),
        ("train.yaml", "storage", "${RAY_AUTH_TOKEN}"),
        ("train.yaml", "dataset", "s3://team-bucket/${RAY_AUTH_TOKEN}"),
    ],
)
def test_env_references_are_refused_and_never_expanded(secret_env, file, field, value):
    with pytest.raises(SpecError) as err:
        parse_spec(_doc(file, **{field: value}))
    message = str(err.value)
    assert "environment variables are not expanded" in message
    assert SECRET not in message and "\n" not in message


def test_resolved_storage_is_literal(monkeypatch, tmp_path):
    """RAYFLEET_STORAGE (the process's own setting) is used as written, never expanded."""
    monkeypatch.setenv("RAYFLEET_STORAGE", str(tmp_path / "$HOME"))
    job = parse_spec(_doc("train.yaml", storage=None))
    assert str(job.storage_uri()) == str(tmp_path / "$HOME")


@pytest.mark.parametrize(
    "name", ["digits\n", "digits\r", "9digits", "-digits", "digits-", "Digits", "a" * 48]
)
def test_names_follow_one_dns1035_rule(name):
    doc = _doc("train.yaml")
    doc["metadata"]["name"] = name
    with pytest.raises(SpecError, match="is not a valid name"):
        parse_spec(doc)


def test_longest_name_that_renders_validates():
    doc = _doc("train.yaml")
    doc["metadata"]["name"] = "a" * 47
    assert parse_spec(doc).name == "a" * 47


@pytest.mark.parametrize(
    "path,value",
    [
        (("run", "seed"), 2**64),
        (("run", "learningRate"), float("inf")),
        (("run", "learningRate"), float("nan")),
        (("scaling", "cpusPerWorker"), float("inf")),
        (("scaling", "numWorkers"), 10**9),
        (("failure", "maxFailures"), 10**9),
        (("driver", "cpus"), float("inf")),
    ],
)
def test_numbers_are_finite_and_bounded(path, value):
    doc = _doc("train.yaml")
    section, key = path
    doc["spec"].setdefault(section, {})[key] = value
    with pytest.raises(SpecError, match=rf"spec\.{section}\.{key}"):
        parse_spec(doc)


def test_entrypoint_with_trailing_newline_is_refused():
    doc = _doc("train.yaml", model={"entrypoint": "loop:train\n"})
    with pytest.raises(SpecError, match="entrypoint"):
        parse_spec(doc)


def test_sweep_seed_is_bounded():
    doc = yaml.safe_load((JOBS / "sweep.yaml").read_text())
    doc["spec"].setdefault("search", {})["seed"] = 2**64
    with pytest.raises(SpecError, match=r"spec\.search\.seed"):
        parse_spec(doc, source=str(JOBS / "sweep.yaml"))
