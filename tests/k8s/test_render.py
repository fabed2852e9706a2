"""`rayfleet render`: a TrainJob becomes a RayJob (+ spec ConfigMap, NetworkPolicy, PDB) that
passes the strict KubeRay schema and carries the chart's security settings."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from rayfleet.cli.render_commands import render
from rayfleet.errors import BadInputError, SpecError
from rayfleet.k8s import RENDERERS, RenderOptions, pods, read_spec_file, render_objects, render_text
from tests.k8s import security
from tests.k8s.objects import by_kind, load_docs, pod_templates
from tests.k8s.schemas import REPO, validate

pytestmark = pytest.mark.k8s
DIGITS = "jobs/digits/train.yaml"


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    """Spec paths as users type them, relative to the repository root."""
    monkeypatch.chdir(REPO)


def cli() -> typer.Typer:
    """The render command on its own app (as cli/main.py registers it)."""
    app = typer.Typer()
    app.command()(render)

    @app.callback()
    def _root() -> None:
        pass

    return app


def objects_for(path: str = DIGITS, overrides=(), **options) -> list[dict]:
    return render_objects(read_spec_file(path, tuple(overrides)), RenderOptions(**options))


def test_digits_renders_validated_objects():
    objects = objects_for()
    assert [o["kind"] for o in objects] == [
        "ConfigMap",
        "RayJob",
        "NetworkPolicy",
        "PodDisruptionBudget",
    ]
    for obj in objects:
        validate(obj)


def test_security_matches_the_chart():
    objects = objects_for()
    security.assert_auth_on(objects)
    assert security.assert_containers_hardened(objects) == 3  # head, workers, submitter
    security.assert_read_only_root(objects)
    security.assert_no_api_token_in_ray_containers(objects)
    security.assert_no_host_access(objects)
    security.assert_no_secret_data(objects)
    security.assert_network_policy(objects)
    security.assert_head_pdb(objects)
    security.assert_not_exposed(objects)


def test_rayjob_runs_the_same_file_in_k8s_job_mode():
    config_map, job, *_ = objects_for()
    spec = job["spec"]
    assert spec["entrypoint"] == "rayfleet run /etc/rayfleet/job/train.yaml"
    assert spec["submissionMode"] == "K8sJobMode"
    assert spec["shutdownAfterJobFinishes"] is False  # deletion rules (tests/k8s/test_lifecycle.py)
    assert spec["deletionStrategy"]["deletionRules"]
    assert spec["backoffLimit"] == 1
    assert spec["activeDeadlineSeconds"] == 86400
    assert config_map["data"] == {"train.yaml": (REPO / DIGITS).read_text()}
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == pods.RAY_VERSION
    assert cluster["enableInTreeAutoscaling"] is False
    for where, template in pod_templates(job):
        if where.endswith("submitter"):
            continue
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        assert volumes["job"]["configMap"]["name"] == config_map["metadata"]["name"], where
        (ray,) = template["spec"]["containers"]
        mounts = {m["mountPath"]: m for m in ray["volumeMounts"]}
        assert mounts["/etc/rayfleet/job/train.yaml"]["subPath"] == "train.yaml", where
        assert ray["envFrom"][0] == {"configMapRef": {"name": "rayfleet-storage"}}, where
        assert template["spec"]["serviceAccountName"] == "rayfleet", where


def test_workers_sized_from_the_spec():
    (job,) = by_kind(objects_for(), "RayJob")
    (group,) = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert group["groupName"] == "cpu"
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 2
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits == {"cpu": "1", "memory": "4Gi"}
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]
    assert head["rayStartParams"] == {"num-cpus": "0"}


def test_gpu_training_gets_gpu_pods():
    overrides = [
        "spec.scaling.useGpu=true",
        "spec.scaling.numWorkers=4",
        "spec.scaling.cpusPerWorker=2.5",
    ]
    (job,) = by_kind(objects_for(overrides=overrides), "RayJob")
    validate(job)
    (group,) = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    spec = group["template"]["spec"]
    assert group["groupName"] == "gpu" and group["replicas"] == 4
    assert spec["containers"][0]["image"] == pods.default_image(gpu=True)
    assert spec["containers"][0]["resources"]["limits"] == {
        "cpu": "2500m",
        "memory": "4Gi",
        "nvidia.com/gpu": "1",
    }
    assert pods.GPU_TOLERATION in spec["tolerations"]
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert head["containers"][0]["image"] == pods.default_image(gpu=False)
    args = shlex.split(job["spec"]["entrypoint"])
    assert args[:3] == ["rayfleet", "run", "/etc/rayfleet/job/train.yaml"]
    assert args[3:] == [f"--set={o}" for o in overrides]


def test_user_module_travels_with_the_spec():
    config_map, job, *_ = objects_for("jobs/custom/train.yaml")
    assert set(config_map["data"]) == {"train.yaml", "linear_loop.py"}
    assert config_map["data"]["linear_loop.py"] == (REPO / "jobs/custom/linear_loop.py").read_text()
    for where, template in pod_templates(job):
        if not where.endswith("submitter"):
            paths = {m["mountPath"] for m in template["spec"]["containers"][0]["volumeMounts"]}
            assert "/etc/rayfleet/job/linear_loop.py" in paths, where


def test_options_reach_every_object():
    objects = objects_for(
        namespace="ml",
        image="registry.example/rayfleet:dev",
        auth_secret="team-token",
        credentials_secret="s3-keys",
        service_account="trainer",
        egress_ports=(443, 9000),
    )
    for obj in objects:
        assert obj["metadata"]["namespace"] == "ml"
        validate(obj)
    (job,) = by_kind(objects, "RayJob")
    assert job["spec"]["rayClusterSpec"]["authOptions"] == {
        "mode": "token",
        "secretName": "team-token",
    }
    for where, template in pod_templates(job):
        (c,) = template["spec"]["containers"]
        assert c["image"] == "registry.example/rayfleet:dev", where
        if not where.endswith("submitter"):
            assert {"secretRef": {"name": "s3-keys"}} in c["envFrom"], where
            assert template["spec"]["serviceAccountName"] == "trainer", where
    (policy,) = by_kind(objects, "NetworkPolicy")
    assert {"protocol": "TCP", "port": 9000} in policy["spec"]["egress"][-1]["ports"]


def test_output_is_deterministic_and_names_its_command():
    first = render_text(DIGITS, ["spec.run.epochs=3"], RenderOptions(namespace="ml"))
    assert first == render_text(DIGITS, ["spec.run.epochs=3"], RenderOptions(namespace="ml"))
    header = first.splitlines()[0]
    assert (
        "`rayfleet render jobs/digits/train.yaml --set=spec.run.epochs=3 --namespace=ml`" in header
    )
    assert "&id" not in first and "*id" not in first  # no YAML anchors
    assert [d["kind"] for d in load_docs(first)][0] == "ConfigMap"


def test_cli_writes_stdout_or_a_file(tmp_path):
    result = CliRunner().invoke(cli(), ["render", DIGITS])
    assert result.exit_code == 0, result.output
    assert result.stdout == render_text(DIGITS)
    target = tmp_path / "digits.yaml"
    result = CliRunner().invoke(
        cli(), ["render", DIGITS, "--out-file", str(target), "--egress-port", "9000"]
    )
    assert result.exit_code == 0, result.output
    assert target.read_text() == render_text(DIGITS, options=RenderOptions(egress_ports=(9000,)))


@pytest.mark.parametrize(
    "args, message",
    [
        (
            [DIGITS, "--set", "metadata.name=9digits"],
            "metadata.name: '9digits' is not a valid name",
        ),
        ([DIGITS, "--set", f"metadata.name={'a' * 48}"], "at most 47 characters"),
        ([DIGITS, "--set", "spec.scaling.numWorkers=zero"], "spec.scaling.numWorkers"),
        (["jobs/nope.yaml"], "no such spec file"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message):
    result = CliRunner().invoke(cli(), ["render", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_a_renderer_per_kind():
    assert set(RENDERERS) == {"TrainJob", "SweepJob", "ModelDeployment"}


def test_model_deployment_renders_a_rayservice_with_the_local_serve_config():
    """serveConfigV2 is rayfleet.serve.config's document, the one `rayfleet serve` deploys."""
    import yaml as _yaml

    from rayfleet.serve.config import serve_config
    from rayfleet.specs import load_spec

    objects = render_objects(read_spec_file("jobs/digits/serve.yaml"))
    service = next(o for o in objects if o["kind"] == "RayService")
    config = _yaml.safe_load(service["spec"]["serveConfigV2"])
    assert config == serve_config(load_spec("jobs/digits/serve.yaml"))
    policy = next(o for o in objects if o["kind"] == "NetworkPolicy")
    assert any(
        {"port": 8000, "protocol": "TCP"} in rule.get("ports", [])
        for rule in policy["spec"]["ingress"]
    )


def test_serving_options_reach_the_rayservice():
    """--serve-from peers reach Serve only; --egress-cidr narrows egress; --gpu-image and
    --image-pull-secret reach every pod."""
    ingress = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "edge"}}}
    objects = objects_for(
        "jobs/digits/serve.yaml",
        overrides=["spec.gpusPerReplica=1"],
        serve_from=(ingress,),
        egress_cidrs=("10.0.0.0/8",),
        gpu_image="registry.example/rayfleet:dev-gpu",
        image_pull_secrets=("regcred",),
    )
    for obj in objects:
        validate(obj)
    security.assert_network_policy(objects, serve_peers=1)
    (policy,) = by_kind(objects, "NetworkPolicy")
    serve_rules = [r for r in policy["spec"]["ingress"] if ingress in r["from"]]
    assert [r["ports"] for r in serve_rules] == [[{"protocol": "TCP", "port": 8000}]]
    assert policy["spec"]["egress"][-1]["to"] == [{"ipBlock": {"cidr": "10.0.0.0/8"}}]
    (service,) = by_kind(objects, "RayService")
    for where, template in pod_templates(service):
        assert template["spec"]["imagePullSecrets"] == [{"name": "regcred"}], where
        (c,) = template["spec"]["containers"]
        gpu = pods.GPU_RESOURCE in c["resources"]["limits"]
        want = "registry.example/rayfleet:dev-gpu" if gpu else pods.default_image(False)
        assert c["image"] == want, where
    # A training job has no Serve rule, whatever --serve-from says.
    (job_policy,) = by_kind(objects_for(serve_from=(ingress,)), "NetworkPolicy")
    assert all(ingress not in r["from"] for r in job_policy["spec"]["ingress"])


PROMETHEUS = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
}


@pytest.mark.parametrize("path", ["jobs/digits/serve.yaml", DIGITS])
def test_scrape_from_opens_only_the_metrics_port_on_every_cluster(path):
    """--scrape-from: Prometheus reaches KubeRay's metrics port (8080) of a RayService and a
    RayJob's cluster alike, and no other port; without it nothing outside does."""
    nodes = {"ipBlock": {"cidr": "10.20.0.0/16"}}
    base = objects_for(path)
    security.assert_network_policy(base, scrape_peers=0)
    objects = objects_for(path, scrape_from=(PROMETHEUS, nodes))
    for obj in objects:
        validate(obj)
    security.assert_network_policy(objects, scrape_peers=2)
    (before,), (after,) = by_kind(base, "NetworkPolicy"), by_kind(objects, "NetworkPolicy")
    added = [r for r in after["spec"]["ingress"] if r not in before["spec"]["ingress"]]
    assert added == [{"from": [PROMETHEUS, nodes], "ports": [{"protocol": "TCP", "port": 8080}]}]
    assert after["spec"]["egress"] == before["spec"]["egress"]


def test_render_flags_round_trip_through_the_header():
    """The header's command is built from the same flag declarations the command parses."""
    options = RenderOptions(
        namespace="ml",
        egress_ports=(443, 9000),
        serve_from=({"podSelector": {"matchLabels": {"app": "gw"}}},),
        scrape_from=(PROMETHEUS,),
        image_pull_secrets=("a", "b"),
    )
    text = render_text("jobs/digits/serve.yaml", options=options)
    command = shlex.split(text.splitlines()[0].split("`")[1])
    result = CliRunner().invoke(cli(), command[1:])
    assert result.exit_code == 0, result.output
    assert result.stdout == text


def test_sweep_renders_with_its_train_job_and_room_for_concurrent_trials():
    objects = render_objects(read_spec_file("jobs/digits/sweep.yaml"))
    config_map = next(o for o in objects if o["kind"] == "ConfigMap")
    assert set(config_map["data"]) == {"sweep.yaml", "train.yaml"}
    job = next(o for o in objects if o["kind"] == "RayJob")
    assert job["spec"]["entrypoint"].startswith("rayfleet sweep /etc/rayfleet/job/sweep.yaml")
    (group,) = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert group["replicas"] == 2  # 1 worker per trial x maxConcurrentTrials 2


def test_package_module_next_to_the_spec_is_refused(tmp_path):
    (tmp_path / "loops").mkdir()
    spec = (
        (REPO / "jobs/custom/train.yaml")
        .read_text()
        .replace("linear_loop:train", "loops.linear:train")
    )
    (tmp_path / "train.yaml").write_text(spec)
    with pytest.raises(SpecError, match="a ConfigMap can't carry"):
        read_spec_file(tmp_path / "train.yaml")


def test_bad_options_are_refused():
    with pytest.raises(BadInputError, match="not a TCP port"):
        RenderOptions(egress_ports=(0,))
    with pytest.raises(BadInputError, match="backoff-limit"):
        RenderOptions(backoff_limit=-1)
    with pytest.raises(BadInputError, match="not a CIDR"):
        RenderOptions(egress_cidrs=("10.0.0/33x",))
    with pytest.raises(BadInputError, match="not JSON"):
        RenderOptions(serve_from=("{nope",))
    with pytest.raises(BadInputError, match="podSelector, namespaceSelector and/or ipBlock"):
        RenderOptions(serve_from=({"podSelectr": {}},))
    with pytest.raises(BadInputError, match=r"^--scrape-from '\{nope': not JSON"):
        RenderOptions(scrape_from=("{nope",))
    with pytest.raises(BadInputError, match=r"^--scrape-from \[\]: a NetworkPolicy peer has"):
        RenderOptions(scrape_from=([],))
    assert RenderOptions(scrape_from=(json.dumps(PROMETHEUS),)).scrape_from == (PROMETHEUS,)


def test_every_shipped_train_spec_renders():
    for path in sorted((REPO / "jobs").rglob("*.yaml")):
        src = read_spec_file(path.relative_to(REPO))
        if src.spec.kind not in RENDERERS:
            continue
        for obj in render_objects(src):
            validate(obj)
        assert Path(src.file_name).name == path.name
