"""manifests/: every overlay builds with `kubectl kustomize`, validates, is locked down, and
every generated file is exactly what `rayfleet render` writes today."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from rayfleet.cli.render_commands import render
from rayfleet.k8s.render import HEADER_PREFIX
from tests.k8s import security
from tests.k8s.objects import RAY_KINDS, load_docs, pod_templates
from tests.k8s.schemas import REPO, validate

pytestmark = pytest.mark.k8s
MANIFESTS = REPO / "manifests"
OVERLAYS = sorted(p.parent for p in (MANIFESTS / "overlays").glob("*/kustomization.yaml"))
GENERATED = sorted(p for p in MANIFESTS.rglob("*.yaml") if p.read_text().startswith(HEADER_PREFIX))


def kustomize(path: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed for `kubectl kustomize` (it works offline); install it"
    done = subprocess.run(
        [kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"kubectl kustomize {path}: {done.stderr.strip()}"
    return load_docs(done.stdout)


def test_layout():
    assert (MANIFESTS / "base" / "kustomization.yaml").is_file()
    assert [p.name for p in OVERLAYS] and "digits-train" in [p.name for p in OVERLAYS]
    assert MANIFESTS / "overlays" / "digits-train" / "rayjob.yaml" in GENERATED


@pytest.mark.parametrize("overlay", [MANIFESTS / "base", *OVERLAYS], ids=lambda p: p.name)
def test_overlay_builds_and_validates(overlay):
    objects = kustomize(overlay)
    assert objects
    for obj in objects:
        validate(obj)
    if any(o["kind"] in RAY_KINDS for o in objects):
        security.assert_auth_on(objects)
        security.assert_containers_hardened(objects)
        security.assert_read_only_root(objects)
        security.assert_no_api_token_in_ray_containers(objects)
        security.assert_no_secret_data(objects)
        security.assert_network_policy(objects)
        security.assert_head_pdb(objects)
        security.assert_not_exposed(objects)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_overlay_is_self_contained(overlay):
    """What the Ray pods refer to by name (ServiceAccount, storage and spec ConfigMaps) is in
    the same build, so `kubectl apply -k` needs nothing else."""
    objects = kustomize(overlay)
    have = {(o["kind"], o["metadata"]["name"]) for o in objects}
    for obj in objects:
        for where, template in pod_templates(obj):
            spec = template["spec"]
            if "serviceAccountName" in spec:
                assert ("ServiceAccount", spec["serviceAccountName"]) in have, where
            for volume in spec.get("volumes", []):
                if "configMap" in volume:
                    assert ("ConfigMap", volume["configMap"]["name"]) in have, where
            for c in spec["containers"]:
                for source in c.get("envFrom", []):
                    if "configMapRef" in source:
                        assert ("ConfigMap", source["configMapRef"]["name"]) in have, where


@pytest.mark.parametrize("path", GENERATED, ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_generated_manifest_is_in_sync(path, monkeypatch):
    """Re-run the command in the file's header; the output must match byte for byte."""
    header = path.read_text().splitlines()[0]
    command = shlex.split(header.removeprefix(HEADER_PREFIX).split("`", 1)[0])
    assert command[:2] == ["rayfleet", "render"], header
    app = typer.Typer()
    app.command()(render)
    app.callback()(lambda: None)
    monkeypatch.chdir(REPO)
    result = CliRunner().invoke(app, command[1:])
    assert result.exit_code == 0, result.output
    assert result.stdout == path.read_text(), (
        f"{path.relative_to(REPO)} is stale: run `{shlex.join(command)} -o "
        f"{path.relative_to(REPO)}`"
    )
