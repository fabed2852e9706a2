"""The Jobs-API side without a cluster: which cluster and token, which failures are retried,
submission ids, what travels with a job, and the run record both writers share."""

from __future__ import annotations

import zipfile
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace

import pytest

from rayfleet.errors import ClusterError
from rayfleet.jobs import bundle
from rayfleet.jobs.submit import retryable, submission_id
from rayfleet.jobs.target import normalize_address, resolve

pytestmark = pytest.mark.unit


@pytest.fixture
def env(monkeypatch, tmp_path):
    for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("RAYFLEET_CONFIG", str(tmp_path / "config.yaml"))
    return monkeypatch


def _config(tmp_path: Path, text: str) -> None:
    (tmp_path / "config.yaml").write_text(text)


def test_address_precedence_flag_context_env_current(env, tmp_path):
    token = tmp_path / "prod-token"
    token.write_text("prod-secret\n")
    _config(
        tmp_path,
        f"currentContext: dev\ncontexts:\n  dev: {{address: 'dev:8265'}}\n"
        f"  prod: {{address: 'https://prod', tokenFile: '{token}', storage: 's3://b/p'}}\n",
    )
    assert resolve().address == "http://dev:8265"
    env.setenv("RAY_ADDRESS", "http://env:8265")
    assert resolve().address == "http://env:8265"
    prod = resolve(context="prod")
    assert prod.address == "https://prod" and prod.storage == "s3://b/p"
    assert prod.token.value == "prod-secret" and str(token) in prod.token.source
    assert resolve(address="10.0.0.1:8265", context="prod").address == "http://10.0.0.1:8265"


def test_token_precedence_and_header(env, tmp_path):
    path = tmp_path / "t"
    path.write_text("from-path")
    env.setenv("RAY_AUTH_TOKEN_PATH", str(path))
    assert resolve(address="https://h:1").token.value == "from-path"
    env.setenv("RAY_AUTH_TOKEN", "from-env")
    assert resolve(address="https://h:1").headers() == {"Authorization": "Bearer from-env"}
    flag = tmp_path / "flag"
    flag.write_text("from-flag")
    assert resolve(address="https://h:1", token_file=flag).token.value == "from-flag"
    env.delenv("RAY_AUTH_TOKEN")
    env.delenv("RAY_AUTH_TOKEN_PATH")
    assert resolve(address="h:1").token is None and resolve(address="h:1").headers() == {}
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray/auth_token").write_text("ray-default")
    assert resolve(address="https://h:1").token.value == "ray-default"  # where `ray start` puts it


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({}, "no Ray cluster given"),
        ({"context": "nope"}, "no such context"),
        ({"address": "auto"}, "not a Ray dashboard address"),
        ({"address": "ray://head:10001"}, "not a Ray dashboard address"),
        ({"address": "h:1", "token_file": Path("/nonexistent/token")}, "cannot read token file"),
    ],
)
def test_bad_targets_are_one_line_errors(env, kwargs, needle):
    with pytest.raises(ClusterError) as err:
        resolve(**kwargs)
    assert needle in str(err.value) and "\n" not in str(err.value)
    assert err.value.exit_code == 2


def test_broken_config_file_is_named(env, tmp_path):
    _config(tmp_path, "contexts: [not, a, mapping]\n")
    with pytest.raises(ClusterError, match="config.yaml"):
        resolve(address="h:1")


def test_normalize_address():
    assert normalize_address("https://ray.example.com/", "x") == "https://ray.example.com"
    assert normalize_address("127.0.0.1:8265", "x") == "http://127.0.0.1:8265"


def _job(status, exit_code=None, error_type=None):
    return SimpleNamespace(status=status, driver_exit_code=exit_code, error_type=error_type)


@pytest.mark.parametrize(
    "job, expected",
    [
        (_job("FAILED", -9, "JOB_ENTRYPOINT_COMMAND_ERROR"), True),  # driver SIGKILLed
        (_job("FAILED", 137), True),
        (_job("FAILED", None, "JOB_SUPERVISOR_ACTOR_DIED"), True),  # its node went away
        (_job("FAILED", 1, "JOB_ENTRYPOINT_COMMAND_ERROR"), False),  # failed after own retries
        (_job("FAILED", 2, "JOB_ENTRYPOINT_COMMAND_ERROR"), False),  # bad input
        (_job("FAILED", None, "RUNTIME_ENV_SETUP_FAILURE"), False),
        (_job("STOPPED", -15), False),  # a person stopped it
        (_job("SUCCEEDED", 0), False),
    ],
)
def test_only_dead_drivers_are_resubmitted(job, expected):
    assert retryable(job) is expected


def test_submission_ids_derive_from_the_run_name():
    assert submission_id("digits", 1) == "rayfleet-digits-1"


def test_bundle_excludes_caches_and_zips_reproducibly(tmp_path):
    (tmp_path / "train.yaml").write_text("kind: TrainJob\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg/loop.py").write_text("x = 1\n")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__/loop.cpython-311.pyc").write_bytes(b"\0")
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv/big").write_bytes(b"\0" * 1000)
    names = [p.relative_to(tmp_path).as_posix() for p in bundle.files(tmp_path)]
    assert names == ["train.yaml", "pkg/loop.py"] or names == ["pkg/loop.py", "train.yaml"]
    first = bundle.zip_folder(tmp_path)
    assert bundle.zip_folder(tmp_path) == first  # content-addressed: same folder, same zip
    with zipfile.ZipFile(BytesIO(first)) as archive:
        # One top-level folder: Ray strips it when it unpacks a remote working_dir.
        assert sorted(archive.namelist()) == ["bundle/pkg/loop.py", "bundle/train.yaml"]


def test_small_folder_goes_inline_big_one_to_s3_only(tmp_path, monkeypatch):
    from rayfleet.errors import StorageError
    from rayfleet.storage.uri import parse_uri

    (tmp_path / "train.yaml").write_text("kind: TrainJob\n")
    small = bundle.build(tmp_path, parse_uri(str(tmp_path / "store")), {"A": "1"})
    assert small.runtime_env["working_dir"] == str(tmp_path) and small.uploaded_to is None
    assert small.runtime_env["py_modules"] == [str(bundle.package_dir())]
    assert small.runtime_env["env_vars"] == {"A": "1"}
    monkeypatch.setenv("RAYFLEET_INLINE_BUNDLE_MB", "0")
    with pytest.raises(StorageError, match="not S3"):
        bundle.build(tmp_path, parse_uri(str(tmp_path / "store")), {})


def test_referenced_files_must_travel_with_the_spec(tmp_path):
    from rayfleet.errors import SpecError

    bundle.check_inside(tmp_path, tmp_path / "train.yaml", "spec.trainJob.path")
    with pytest.raises(SpecError, match="outside the spec's folder"):
        bundle.check_inside(tmp_path, tmp_path / "../elsewhere/train.yaml", "spec.trainJob.path")


class _Spec(SimpleNamespace):
    def model_dump(self, **_):
        return {"kind": self.kind}


def test_record_writers_keep_each_others_keys(tmp_path):
    """The driver's writes keep the submitter's keys and vice versa; a killed driver's
    record gets the cluster's verdict; a relaunch clears the previous launch's error."""
    from rayfleet import record
    from rayfleet.record import note_submission
    from rayfleet.storage.filesystem import filesystem_for
    from rayfleet.storage.uri import parse_uri

    uri = parse_uri(str(tmp_path / "runs/r"))
    fs = filesystem_for(uri)
    spec = _Spec(name="r", kind="TrainJob")

    def job(sid, status, start, end=None, code=None):
        return SimpleNamespace(
            submission_id=sid,
            status=status,
            start_time=start,
            end_time=end,
            message="m",
            driver_exit_code=code,
            error_type=None,
        )

    note_submission(uri, spec, address="http://h", job=job("rayfleet-r-1", "PENDING", 1000))
    record.write(fs, uri, spec, status="RUNNING")
    record.add_epoch(fs, uri, epoch=0, metrics={"loss": 1.0})
    doc = note_submission(
        uri,
        spec,
        address="http://h",
        job=job("rayfleet-r-1", "FAILED", 1000, 2000, -9),
        log_tail="a\nb\n",
    )
    assert doc["status"] == "FAILED" and doc["logTail"] == ["a", "b"] and doc["error"] == "m"
    assert doc["epochs"][0]["epoch"] == 0 and doc["launches"] == 1

    note_submission(uri, spec, address="http://h", job=job("rayfleet-r-2", "PENDING", 3000))
    doc = record.write(fs, uri, spec, status="RUNNING")
    assert doc["launches"] == 2 and "error" not in doc and doc["retries"] == 1
    record.note_resumed(fs, uri, epoch=2, metrics={"loss": 0.5})
    doc = record.write(fs, uri, spec, status="SUCCEEDED")
    assert [(e["epoch"], e["launch"]) for e in doc["epochs"]] == [(0, 1), (1, 1), (2, 1)]
    assert doc["epochs"][2]["recovered"] and doc["epochs"][2]["metrics"] == {"loss": 0.5}
    assert [s["id"] for s in doc["submissions"]] == ["rayfleet-r-1", "rayfleet-r-2"]
    doc = note_submission(
        uri, spec, address="http://h", job=job("rayfleet-r-2", "SUCCEEDED", 3000, 4000, 0)
    )
    assert doc["status"] == "SUCCEEDED" and doc["submissions"][1]["status"] == "SUCCEEDED"


def test_force_reaches_the_clusters_run_command(tmp_path):
    from rayfleet.jobs.submit import Plan
    from rayfleet.specs import load_spec
    from rayfleet.storage.uri import parse_uri

    path = Path(__file__).resolve().parents[2] / "jobs" / "digits" / "train.yaml"
    job = load_spec(path)
    store = parse_uri(str(tmp_path))
    plan = Plan(path, job, ("run.epochs=3",), store, store.join("runs", job.name), force=True)
    assert plan.entrypoint(resume=False).endswith("train.yaml --set=run.epochs=3 --force")
    assert "--force" not in Plan(path, job, (), store, store).entrypoint(resume=False)


def test_a_queued_job_says_why_when_the_reason_changes_and_every_half_minute():
    """jobs.follow.wait_until_started on a scripted sequence of Ray job states (the Jobs API
    itself is exercised in tests/integration/test_jobs.py)."""
    from rayfleet.jobs.follow import wait_until_started

    states = iter(
        [("PENDING", "waiting for resources")] * 4
        + [("PENDING", "setting up the runtime env")] * 2
        + [("RUNNING", "")]
    )
    now = {"t": 0.0}

    class Cluster:
        def info(self, submission_id):
            status, message = next(states)
            return SimpleNamespace(status=status, message=message, submission_id=submission_id)

    def sleep(seconds):
        now["t"] += 20.0  # each poll is 20 s later

    notes: list[str] = []
    job = wait_until_started(Cluster(), "sid", notes.append, sleep=sleep, clock=lambda: now["t"])
    assert job.status == "RUNNING"
    assert notes == [
        "queued for 0 s: waiting for resources",
        "queued for 40 s: waiting for resources",  # 30 s after the last note
        "queued for 80 s: setting up the runtime env",  # the reason changed
    ]
