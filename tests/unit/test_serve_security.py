"""Serving hardening (issue 12): large bodies parsed off the event loop, no storage URI in model
metadata unless asked for, the optional bearer-token check, and the loader opening only files
its verified manifest lists. The app runs in process (ASGI) or under uvicorn on 127.0.0.1;
nothing is mocked (the one spy wraps the real parser to see when it runs)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

import rayfleet.serve.app as app_module
from rayfleet.errors import SpecError
from rayfleet.serve.app import InferenceService, build_app
from rayfleet.serve.loading import ModelLoadError, load_model
from rayfleet.specs import load_spec, parse_spec
from rayfleet.storage.checkpoints import write_manifest

from .test_serve_loading import META, write_checkpoint

pytestmark = [pytest.mark.unit, pytest.mark.security]
REPO = Path(__file__).resolve().parents[2]
SERVE = REPO / "jobs" / "digits" / "serve.yaml"
INFER = "/v2/models/digits/infer"
TOKEN = "s3cr3t-token-0123456789abcdef"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("m") / "checkpoint_e000003-ab", 3)


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_model(str(checkpoint), name="digits")


def _call(app, method, path, **kwargs) -> httpx.Response:
    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


def _body(rows: int) -> bytes:
    x = np.random.default_rng(0).random((rows, 1, 8, 8)).round(6)
    tensor = {"name": "input", "shape": [rows, 1, 8, 8], "datatype": "FP32", "data": x.tolist()}
    return json.dumps({"inputs": [tensor]}).encode()


# ------------------------------------------------------------- parsing off the event loop


def test_a_large_body_is_parsed_off_the_event_loop(model, monkeypatch):
    """While a 4 MB body is parsed, the same event loop keeps turning and answers health checks.

    A spy records when the real parser runs. Parsed on the loop (the old code), nothing else
    runs on the loop until it returns: no heartbeat and no health answer can fall inside the
    parse. Off the loop, both do (under the GIL the loop still waits while the C JSON decoder
    runs, about a third of the parse, and gets turns during the rest). Only order is checked,
    never a duration, so a loaded machine slows both sides alike."""
    service = InferenceService(model, max_request_bytes=16 << 20)
    body = _body(6_000)
    assert len(body) > 3 << 20
    real = app_module.parse_infer_request
    window: dict[str, float] = {}

    def spy(raw, sig, **kwargs):
        window["start"] = time.monotonic()
        try:
            return real(raw, sig, **kwargs)
        finally:
            window["end"] = time.monotonic()

    monkeypatch.setattr(app_module, "parse_infer_request", spy)
    beats: list[float] = []
    answered: list[float] = []

    async def go():
        transport = httpx.ASGITransport(app=build_app(service))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            big = asyncio.create_task(client.post(INFER, content=body, timeout=300))

            async def heartbeat():
                while not big.done():
                    beats.append(time.monotonic())
                    await asyncio.sleep(0.001)

            async def probes():
                while not big.done():
                    r = await client.get("/v2/health/live")
                    assert r.status_code == 200
                    answered.append(time.monotonic())
                    await asyncio.sleep(0.001)  # an in-process call may never yield by itself

            await asyncio.gather(heartbeat(), probes())
            return await big

    big = asyncio.run(go())
    assert big.status_code == 200, big.text[:300]
    assert big.json()["outputs"][0]["shape"] == [6_000, 10]
    start, end = window["start"], window["end"]
    inside_beats = [t for t in beats if start < t < end]
    inside_answers = [t for t in answered if start < t < end]
    summary = (
        f"parse {end - start:.2f}s: {len(inside_beats)} of {len(beats)} heartbeats and "
        f"{len(inside_answers)} of {len(answered)} health answers fell inside it"
    )
    assert inside_beats and inside_answers, summary


def test_small_and_oversized_bodies_keep_their_answers(model):
    service = InferenceService(model, max_request_bytes=64 * 1024)
    app = build_app(service)
    assert _call(app, "POST", INFER, content=_body(1)).status_code == 200
    too_big = _call(app, "POST", INFER, content=b" " * (65 * 1024))
    assert too_big.status_code == 413
    bad = _call(app, "POST", INFER, content=b"[" * (60 * 1024))  # over the offload threshold
    assert bad.status_code == 400 and "error" in bad.json()


# --------------------------------------------------------------------- model metadata


def test_model_metadata_does_not_publish_the_storage_uri_by_default(model, checkpoint):
    meta = _call(build_app(InferenceService(model)), "GET", "/v2/models/digits")
    assert meta.status_code == 200
    doc = meta.json()
    assert doc["name"] == "digits" and doc["versions"] == ["checkpoint_e000003-ab"]
    assert doc["platform"] == "pytorch" and doc["inputs"][0]["shape"] == [-1, 1, 8, 8]
    assert "checkpoint" not in doc["parameters"]
    assert str(checkpoint) not in meta.text and str(checkpoint.parent) not in meta.text

    exposed = InferenceService(model, expose_source=True)
    doc = _call(build_app(exposed), "GET", "/v2/models/digits").json()
    assert doc["parameters"]["checkpoint"] == str(checkpoint)


def test_expose_source_is_an_opt_in_spec_switch():
    from rayfleet.serve.config import application_config, replica_settings

    d = load_spec(SERVE)
    assert d.spec.expose_source is False
    assert replica_settings(d, "/c")["expose_source"] is False
    # off by default: left out of the Serve args, so deployments that don't use it keep their
    # code version (no rolling restart on upgrade) and rendered manifests don't change
    assert "exposeSource" not in application_config(d)["args"]["spec"]["spec"]
    on = load_spec(SERVE, ["spec.exposeSource=true"])
    assert replica_settings(on, "/c")["expose_source"] is True
    assert application_config(on)["args"]["spec"]["spec"]["exposeSource"] is True


# ------------------------------------------------------------------------ bearer token


def _authed_app(model):
    return build_app(InferenceService(model), token=TOKEN)


PROTECTED = [
    ("GET", "/v2", {}),
    ("GET", "/v2/models/digits", {}),
    ("GET", "/v2/models/digits/versions/checkpoint_e000003-ab", {}),
    ("GET", "/v2/models/digits/ready", {}),
    ("GET", "/v2/models/digits/versions/checkpoint_e000003-ab/ready", {}),
    ("POST", INFER, {"content": _body(1)}),
    ("POST", "/v2/models/digits/versions/checkpoint_e000003-ab/infer", {"content": _body(1)}),
    ("GET", "/v2/models/other", {}),  # no model names to an unauthenticated caller
]


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer ", f"Basic {TOKEN}", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}",
     "Bearer " + "x" * len(TOKEN), f"{TOKEN}"],
    ids=["none", "empty", "scheme-only", "scheme-space", "basic", "longer", "shorter", "other",
         "bare"],
)  # fmt: skip
def test_auth_refuses_a_missing_or_wrong_token_with_401(model, header):
    app = _authed_app(model)
    headers = {} if header is None else {"Authorization": header}
    for method, path, kwargs in PROTECTED:
        r = _call(app, method, path, headers=headers, **kwargs)
        assert r.status_code == 401, (method, path, r.status_code, r.text[:200])
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert "error" in r.json() and TOKEN not in r.text


def test_auth_accepts_the_token_and_leaves_health_probes_open(model):
    app = _authed_app(model)
    ok = {"Authorization": f"Bearer {TOKEN}"}
    for method, path, kwargs in PROTECTED[:-1]:
        r = _call(app, method, path, headers=ok, **kwargs)
        assert r.status_code == 200, (method, path, r.status_code, r.text[:200])
    lower = _call(app, "GET", "/v2/models/digits", headers={"authorization": f"bearer {TOKEN}"})
    assert lower.status_code == 200  # the scheme is case-insensitive (RFC 7235)
    assert _call(app, "GET", "/v2/models/other", headers=ok).status_code == 404
    for path in ("/v2/health/live", "/v2/health/ready"):  # kubelet and load balancer probes
        assert _call(app, "GET", path).status_code == 200
    # without auth the same app answers everything without a header, as before
    plain = build_app(InferenceService(model))
    assert _call(plain, "POST", INFER, content=_body(1)).status_code == 200


def test_auth_spec_names_a_secret_never_a_token():
    doc = yaml.safe_load(SERVE.read_text())
    doc["spec"]["auth"] = {"tokenSecretName": "digits-serve-token"}
    d = parse_spec(doc)
    assert d.spec.auth is not None and d.spec.auth.token_secret_name == "digits-serve-token"
    for bad, fragment in [
        ({"token": TOKEN}, "spec.auth.token"),
        ({"tokenSecretName": "Bad_Name"}, "spec.auth.tokenSecretName"),
        ({}, "spec.auth.tokenSecretName"),
    ]:
        doc["spec"]["auth"] = bad
        with pytest.raises(SpecError, match=fragment.replace(".", r"\.")) as err:
            parse_spec(doc)
        assert TOKEN not in str(err.value)


def test_the_token_travels_in_no_serve_config_or_args(monkeypatch):
    """Serve's config and the builder args are what `rayfleet render`, `serve status` and the
    dashboard show: the token must be in none of them, only in the replicas' environment."""
    from rayfleet.serve.config import application_config, replica_settings

    monkeypatch.setenv("RAYFLEET_SERVE_TOKEN", TOKEN)
    d = load_spec(SERVE, ["spec.auth.tokenSecretName=digits-serve-token"])
    config = application_config(d, checkpoint="/c")
    text = json.dumps(config)
    assert TOKEN not in text and "digits-serve-token" in text
    settings = replica_settings(d, "/c")
    assert settings["auth"] is True and TOKEN not in json.dumps(settings)


def test_replica_refuses_to_start_without_a_usable_token(monkeypatch):
    from rayfleet.serve.auth import ServeAuthError, server_token

    monkeypatch.delenv("RAYFLEET_SERVE_TOKEN", raising=False)
    with pytest.raises(ServeAuthError, match="RAYFLEET_SERVE_TOKEN is not set") as err:
        server_token("deployment digits")
    assert err.value.exit_code == 2 and "\n" not in str(err.value)
    monkeypatch.setenv("RAYFLEET_SERVE_TOKEN", "tooShort5")
    with pytest.raises(ServeAuthError, match="use at least 16") as err:
        server_token("deployment digits")
    assert "tooShort5" not in str(err.value)  # errors never echo a token
    monkeypatch.setenv("RAYFLEET_SERVE_TOKEN", "a token with spaces in it!")
    with pytest.raises(ServeAuthError, match="characters a bearer token can't carry") as err:
        server_token("deployment digits")
    assert "spaces" not in str(err.value)
    monkeypatch.setenv("RAYFLEET_SERVE_TOKEN", f"  {TOKEN}\n")
    assert server_token("deployment digits") == TOKEN


def _serve_cli():
    import typer

    from rayfleet.cli.serve_commands import predict, serve

    app = typer.Typer()
    app.command()(serve)
    app.command()(predict)
    return app


def test_rayfleet_serve_refuses_auth_without_a_token(tmp_path):
    """As a user runs it: a fresh process with nothing running here (in this test process a
    session-wide Ray may be connected, which is the other, attach-to-it path)."""
    import os
    import subprocess
    import sys

    store = tmp_path / "store"
    write_checkpoint(store / "runs/digits/checkpoint_e000001-aa", 1)
    env = {k: v for k, v in os.environ.items() if k not in ("RAYFLEET_SERVE_TOKEN", "RAY_ADDRESS")}
    env["RAYFLEET_SERVE_STATE"] = str(tmp_path / "none.json")
    args = [sys.executable, "-m", "rayfleet.cli.main", "serve", str(SERVE),
            "--set", f"spec.storage={store}",
            "--set", "spec.auth.tokenSecretName=digits-serve-token"]  # fmt: skip

    def run(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([*args, *extra], env=env, capture_output=True, text=True, timeout=120)

    result = run()
    assert result.returncode == 2, result.stdout + result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "RAYFLEET_SERVE_TOKEN" in error[0]
    assert "--serve-token-file" in error[0]
    assert not (store / "runs/digits/pins").exists()  # refused before anything was written
    empty = tmp_path / "empty-token"
    empty.write_text("\n")
    result = run("--serve-token-file", str(empty))
    assert result.returncode == 2 and "is empty" in result.stderr, result.stdout + result.stderr


# ------------------------------------------------- the client and `rayfleet predict` send it


@pytest.fixture
def authed_server(model):
    """The real app with auth on, under uvicorn on 127.0.0.1 (a free port)."""
    import uvicorn

    config = uvicorn.Config(
        build_app(InferenceService(model), token=TOKEN),
        host="127.0.0.1",
        port=0,
        log_level="warning",
        lifespan="off",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    (sock,) = [s for srv in server.servers for s in srv.sockets][:1]
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(10)


def test_predict_client_sends_the_token(authed_server, monkeypatch):
    from rayfleet.serve.client import InferenceError, PredictClient

    monkeypatch.delenv("RAYFLEET_SERVE_TOKEN", raising=False)
    with PredictClient(authed_server, retries=0) as anonymous:
        with pytest.raises(InferenceError, match="HTTP 401") as err:
            anonymous.metadata("digits")
        assert "RAYFLEET_SERVE_TOKEN" in str(err.value)
    with PredictClient(authed_server, retries=0, token=TOKEN) as client:
        assert client.metadata("digits")["name"] == "digits"
    monkeypatch.setenv("RAYFLEET_SERVE_TOKEN", TOKEN)
    with PredictClient(authed_server, retries=0) as client:  # from the environment
        assert client.request("GET", "/v2/models/digits/ready").get("ready")


def test_rayfleet_predict_reads_the_token_from_env_or_file(authed_server, tmp_path, monkeypatch):
    examples = tmp_path / "x.json"
    examples.write_text(json.dumps(np.zeros((2, 1, 8, 8)).tolist()))
    args = ["predict", "digits", "--input", str(examples), "--url", authed_server, "--retries=0"]
    monkeypatch.delenv("RAYFLEET_SERVE_TOKEN", raising=False)
    refused = CliRunner().invoke(_serve_cli(), args)
    assert refused.exit_code == 2 and "HTTP 401" in refused.output, refused.output
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    by_file = CliRunner().invoke(_serve_cli(), [*args, "--serve-token-file", str(token_file)])
    assert by_file.exit_code == 0, by_file.output
    assert by_file.output.splitlines()[0].startswith("0  class ")
    assert TOKEN not in by_file.output
    # The old name (the Ray auth token's everywhere else) still works here, with a note.
    by_old_name = CliRunner().invoke(_serve_cli(), [*args, "--token-file", str(token_file)])
    assert by_old_name.exit_code == 0, by_old_name.output
    assert "--token-file is deprecated here; use --serve-token-file" in by_old_name.output
    monkeypatch.setenv("RAYFLEET_SERVE_TOKEN", TOKEN)
    by_env = CliRunner().invoke(_serve_cli(), args)
    assert by_env.exit_code == 0, by_env.output
    nope = str(tmp_path / "nope")
    missing = CliRunner().invoke(_serve_cli(), [*args, "--serve-token-file", nope])
    assert missing.exit_code == 2 and "--serve-token-file" in missing.output


# ------------------------------------------------------- the loader and the manifest


def test_loader_refuses_a_model_file_the_manifest_does_not_list(tmp_path):
    """A state.pt added after the manifest was written is not verified by anything: verifying
    the listed files passes, so only checking the list keeps it from being loaded."""
    folder = tmp_path / "runs/digits/checkpoint_e000001-aa"
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("the manifest covers only this file")
    write_manifest(folder, {**META, "epoch": 1, "metrics": {}})
    torch.manual_seed(0)
    from rayfleet.train.recipes.digits import build_model

    state = {"model": build_model(META["model_config"]).state_dict()}
    torch.save(state, folder / "state.pt")  # present, valid, but not in the manifest
    with pytest.raises(ModelLoadError, match="state.pt is not listed in its manifest") as err:
        load_model(str(folder), name="digits")
    assert "\n" not in str(err.value) and err.value.exit_code == 2

    from rayfleet.serve.loading import resolve_source

    d = load_spec(SERVE, [f"spec.storage={tmp_path}"])
    with pytest.raises(ModelLoadError, match="state.pt is not listed in its manifest"):
        resolve_source(d)  # refused before anything starts, too


def test_builder_pins_the_checkpoint_it_resolves(tmp_path):
    """On a cluster the Serve application builder resolves the source: it pins what it serves
    so pruning the run never deletes it."""
    import pyarrow.fs as pafs

    from rayfleet.serve.deployment import application
    from rayfleet.storage.pins import pinned

    write_checkpoint(tmp_path / "runs/digits/checkpoint_e000001-aa", 1)
    d = load_spec(SERVE, [f"spec.storage={tmp_path}"])
    application({"spec": d.model_dump(mode="json", by_alias=True, exclude_none=True)})
    run = str(tmp_path / "runs/digits")
    assert pinned(pafs.LocalFileSystem(), run) == {"checkpoint_e000001-aa": "deployment-digits"}
