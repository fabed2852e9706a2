"""charts/rayfleet rendered by a real Helm engine for every ci/ profile, then validated and
checked for the security properties it promises (see the chart README).

The Python renderer is canonical. The chart's serving path is a ModelDeployment for the
operator, so its RayService, NetworkPolicy and PDB are the operator's (Python) output, checked
here as installed (conftest.installed_objects). The RayCluster is the one Ray object the chart
templates itself; its pods are checked against expectations derived from k8s/pods.py."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import pytest
import yaml

from rayfleet.k8s import pods, reconcile
from rayfleet.serve.config import serve_config_text
from tests.k8s import security
from tests.k8s.chart_docs import documented, readme_rows, rows
from tests.k8s.conftest import (
    CHART,
    PROFILES,
    chart_objects,
    installed_objects,
    operator_children,
    profile_values,
    render_chart,
)
from tests.k8s.objects import RAY_KINDS, by_kind, cluster_specs, pod_templates
from tests.k8s.schemas import CRD_DIR, CRD_FILES, REPO, crd_dir, validate

pytestmark = pytest.mark.k8s
ALL = ["default", *PROFILES]


def test_kuberay_crd_schemas_are_present():
    assert crd_dir() == CRD_DIR
    for name in CRD_FILES.values():
        assert (CRD_DIR / name).stat().st_size > 100_000, name


def test_ci_profiles_exist():
    assert {"cpu-only", "gpu", "serving"} <= set(PROFILES)


@pytest.mark.parametrize("profile", ALL)
def test_profile_lints_clean(profile):
    import helm_python

    report = helm_python.lint(CHART, profile_values(profile), strict=True, kube_version="v1.30.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems, problems


@pytest.mark.parametrize("profile", ALL)
def test_every_object_validates(profile, profile_objects):
    objects = profile_objects[profile]
    assert objects
    for obj in objects:
        validate(obj)
    ray = [o for o in objects if o["kind"] in RAY_KINDS]
    assert ray, f"{profile}: no Ray object rendered"


@pytest.mark.parametrize("profile", ALL)
def test_security_properties(profile, profile_objects):
    objects = profile_objects[profile]
    security.assert_auth_on(objects)
    security.assert_containers_hardened(objects)
    security.assert_read_only_root(objects)
    security.assert_no_api_token_in_ray_containers(objects)
    security.assert_no_host_access(objects)
    security.assert_no_secret_data(objects)
    values = profile_values(profile)
    serve_peers = len(values.get("networkPolicy", {}).get("serveFrom", {}))
    scrape_peers = len(values.get("metrics", {}).get("scrapeFrom", {}))
    security.assert_network_policy(objects, serve_peers=serve_peers, scrape_peers=scrape_peers)
    security.assert_head_pdb(objects)
    security.assert_not_exposed(objects)


@pytest.mark.parametrize("profile", ALL)
def test_test_pods_are_hooks_and_clients(profile, profile_objects):
    """`helm test` pods run only on `helm test`, and the NetworkPolicy admits them."""
    tests = by_kind(profile_objects[profile], "Pod")
    clusters = {
        t["metadata"]["labels"][security.CLUSTER_LABEL]
        for o in profile_objects[profile]
        for _, t in pod_templates(o)
        if o["kind"] in RAY_KINDS
    }
    assert tests
    for pod in tests:
        assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
        assert pod["metadata"]["labels"][security.CLIENT_LABEL] in clusters
        assert pod["spec"]["restartPolicy"] == "Never"


def test_default_auth_secret_is_the_one_kuberay_generates(profile_objects):
    """KubeRay names a generated token Secret like the cluster (names of 50 chars or fewer)."""
    (cluster,) = by_kind(profile_objects["default"], "RayCluster")
    name = cluster["metadata"]["name"]
    assert len(name) <= 50 and re.match(r"^[a-z]", name)
    (test,) = by_kind(profile_objects["default"], "Pod")
    env = {e["name"]: e for e in test["spec"]["containers"][0]["env"]}
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": name,
        "key": "auth_token",
    }
    assert f"{name}-head-svc" in env["RAY_DASHBOARD"]["value"]


def test_user_named_auth_secret(profile_objects):
    (cluster,) = by_kind(profile_objects["gpu"], "RayCluster")
    assert cluster["spec"]["authOptions"] == {"mode": "token", "secretName": "rayfleet-ray-token"}
    (test,) = by_kind(profile_objects["gpu"], "Pod")
    refs = [
        e["valueFrom"]["secretKeyRef"]["name"]
        for e in test["spec"]["containers"][0]["env"]
        if "valueFrom" in e
    ]
    assert refs == ["rayfleet-ray-token"]


def _ray_containers(objects: list[dict[str, Any]]):
    for obj in objects:
        if obj["kind"] in RAY_KINDS:
            for where, template in pod_templates(obj):
                for c in template["spec"]["containers"]:
                    yield where, template, c


def _env(container: dict[str, Any], objects: list[dict[str, Any]]) -> dict[str, Any]:
    """A container's env as the kubelet sets it: envFrom ConfigMaps (in `objects`), then env."""
    out: dict[str, Any] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            name = source["configMapRef"]["name"]
            (config,) = [o for o in by_kind(objects, "ConfigMap") if o["metadata"]["name"] == name]
            out |= config.get("data") or {}
    return out | {e["name"]: e.get("value") for e in container.get("env", [])}


def test_storage_env_on_every_ray_container(profile_objects):
    """The chart's Ray pods and the operator's read one storage ConfigMap the chart renders."""
    objects = profile_objects["cpu-only"]
    for where, _, c in _ray_containers(objects):
        env = _env(c, objects)
        assert env["RAYFLEET_STORAGE"] == "s3://rayfleet-ci/team-a", where
        assert env["AWS_REGION"] == "us-east-1", where
        assert "AWS_ENDPOINT_URL" not in env, where
    objects = profile_objects["serving"]
    assert by_kind(objects, "RayService")
    for where, _, c in _ray_containers(objects):
        env = _env(c, objects)
        assert env["AWS_ENDPOINT_URL"] == "http://minio.storage.svc:9000", where
        assert {"secretRef": {"name": "minio-credentials"}} in c["envFrom"], where


def test_service_account_carries_the_cloud_identity(profile_objects):
    (sa,) = by_kind(profile_objects["cpu-only"], "ServiceAccount")
    assert "eks.amazonaws.com/role-arn" in sa["metadata"]["annotations"]
    for where, template, _ in _ray_containers(profile_objects["cpu-only"]):
        assert template["spec"]["serviceAccountName"] == sa["metadata"]["name"], where


def test_worker_groups_and_gpus(profile_objects):
    """A CPU and a GPU group by default; GPU groups get the GPU image, the GPU limit and the
    GPU taint toleration; groups added by name render like the built-in ones."""
    (default,) = by_kind(profile_objects["default"], "RayCluster")
    groups = {g["groupName"]: g for g in default["spec"]["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    gpu = groups["gpu"]["template"]["spec"]
    assert gpu["containers"][0]["image"].endswith("-py311-gpu")
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu[
        "tolerations"
    ]
    assert groups["cpu"]["template"]["spec"]["containers"][0]["image"].endswith("-py311")
    assert default["spec"]["enableInTreeAutoscaling"] is True
    (multi,) = by_kind(profile_objects["gpu"], "RayCluster")
    groups = {g["groupName"]: g for g in multi["spec"]["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu", "l4"}
    assert (
        groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
        == "8"
    )
    (cpu_only,) = by_kind(profile_objects["cpu-only"], "RayCluster")
    assert [g["groupName"] for g in cpu_only["spec"]["workerGroupSpecs"]] == ["cpu"]


@pytest.mark.security
def test_only_the_autoscaler_sidecar_mounts_an_api_token(profile_objects):
    """Issue 12 item 5: no pod automounts a token (job drivers and Serve replicas run in the
    Ray containers); the autoscaler gets its own projected one (tests/k8s/security.py)."""
    for obj in profile_objects["default"]:
        for where, template in pod_templates(obj):
            assert template["spec"].get("automountServiceAccountToken") is False, where
    assert security.assert_no_api_token_in_ray_containers(profile_objects["default"]) == 1
    no_autoscaler = render_chart({"autoscaling": {"enabled": False}})
    assert "automountServiceAccountToken: true" not in "".join(no_autoscaler.values())
    assert "kube-api-access" not in "".join(no_autoscaler.values())


def test_serving_profile_is_a_model_deployment_the_operator_serves(rendered_profiles):
    """The chart templates no RayService: it renders a ModelDeployment, and what reaches the
    cluster for it is the operator's output, the Serve config rayfleet.serve.config builds."""
    objects = chart_objects(rendered_profiles["serving"])
    assert not by_kind(objects, "RayService") and not by_kind(objects, "RayCluster")
    (md,) = by_kind(objects, "ModelDeployment")
    deployment = reconcile.parse(md)
    assert deployment.model_name == "digits"
    assert deployment.spec.source.run == "digits"
    assert deployment.spec.route_prefix == "/digits"
    assert deployment.spec.autoscaling.max_replicas == 4
    children = operator_children(objects)
    assert sorted(o["kind"] for o in children) == [
        "NetworkPolicy",
        "PodDisruptionBudget",
        "RayService",
    ]
    (service,) = by_kind(children, "RayService")
    assert service["metadata"]["name"] == md["metadata"]["name"]
    assert service["spec"]["serveConfigV2"] == serve_config_text(deployment)
    # The chart's operator gets the values its Ray pods need: the ingress controller may reach
    # Serve, MinIO's port is open, the credentials Secret and the chart's images are used.
    (policy,) = by_kind(children, "NetworkPolicy")
    serve_rule = next(r for r in policy["spec"]["ingress"] if r.get("ports") == [
        {"protocol": "TCP", "port": 8000}])  # fmt: skip
    peers = profile_values("serving")["networkPolicy"]["serveFrom"]
    assert serve_rule["from"][1:] == list(peers.values())
    # ... and Prometheus may reach the metrics port (metrics.scrapeFrom), nothing else.
    scrapers = profile_values("serving")["metrics"]["scrapeFrom"]
    scrape_rules = [r for r in policy["spec"]["ingress"] if r["from"] == list(scrapers.values())]
    assert scrape_rules == [
        {"from": list(scrapers.values()), "ports": [{"protocol": "TCP", "port": 8080}]}
    ]
    assert {"protocol": "TCP", "port": 9000} in policy["spec"]["egress"][-1]["ports"]
    images = {c["image"] for _, t in pod_templates(service) for c in t["spec"]["containers"]}
    assert images == {pods.default_image(False)}


def _serve_spec(values: dict[str, Any]) -> dict[str, Any]:
    """The ModelDeployment spec the chart documents for these serve.* values."""
    s = _merge(render_defaults()["serve"], values)
    spec = {"modelName": s["name"]}
    for key in ("source", "batching", "cpusPerReplica", "gpusPerReplica", "maxRequestBytes",
                "routePrefix"):  # fmt: skip
        spec[key] = s[key]
    if s["auth"]["tokenSecretName"]:
        spec["auth"] = s["auth"]
    if s["gcsFaultTolerance"]:
        spec["gcsFaultTolerance"] = s["gcsFaultTolerance"]
    if s["autoscaling"]["enabled"]:
        spec["autoscaling"] = {k: v for k, v in s["autoscaling"].items() if k != "enabled"}
    else:
        spec["replicas"] = s["replicas"]
    return spec


@pytest.mark.parametrize(
    "serve_values",
    [
        {"source": {"run": "digits"}},
        {"source": {"run": "digits"}, "autoscaling": {"enabled": True, "minReplicas": 0}},
        {"source": {"sweep": "digits-sweep"}, "replicas": 3, "batching": {"maxBatchSize": 1}},
        {
            "source": {"checkpoint": "s3://models/runs/d/checkpoint_e000001-abc"},
            "gpusPerReplica": 1,
            "maxRequestBytes": 4194304,
        },
        {"source": {"run": "digits"}, "auth": {"tokenSecretName": "digits-token"}},
        {
            "source": {"run": "digits"},
            "gcsFaultTolerance": {"backend": "redis", "redis": {"address": "redis.ft:6379"}},
        },
    ],
    ids=["defaults", "autoscaling", "sweep", "checkpoint", "auth", "gcs-ft"],
)
def test_serve_values_become_the_model_deployment(serve_values):
    """serve.* values map onto the ModelDeployment spec field by field; the object passes the
    CRD and the spec models; the operator serves exactly rayfleet.serve.config's document."""
    from rayfleet.specs import parse_spec

    values = {"serve": {"enabled": True, **serve_values}, "operator": {"enabled": True}}
    objects = chart_objects(render_chart(values))
    (md,) = by_kind(objects, "ModelDeployment")
    validate(md)
    expected = parse_spec(
        {
            "apiVersion": "rayfleet.io/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": md["metadata"]["name"]},
            "spec": _serve_spec(serve_values),
        }
    )
    assert reconcile.parse(md) == expected
    (service,) = by_kind(operator_children(objects), "RayService")
    assert service["spec"]["serveConfigV2"] == serve_config_text(expected)
    validate(service)


def test_serve_values_schema_agrees_with_the_spec_models():
    """serve.* values become a ModelDeployment spec: their schema takes its bounds from the
    CRD (generated from the spec models) and names from the one name rule (specs.base), so
    `helm install` refuses what the operator would refuse, and nothing it would accept."""
    from rayfleet.k8s import crd
    from rayfleet.specs.base import MAX_NAME, NAME_RE

    spec = crd.spec_schema()
    serve = json.loads((CHART / "values.schema.json").read_text())["properties"]["serve"]

    def node(schema: dict[str, Any], path: str) -> dict[str, Any]:
        for part in path.split("."):
            schema = schema["properties"][part]
        return schema

    shared = [
        "batching.maxBatchSize", "batching.batchWaitTimeoutS", "autoscaling.minReplicas",
        "autoscaling.maxReplicas", "cpusPerReplica", "gpusPerReplica", "maxRequestBytes",
        "replicas",
    ]  # fmt: skip
    for path in shared:
        want, have = node(spec, path), node(serve, path)
        for key in ("minimum", "maximum"):
            assert have.get(key) == want.get(key), (path, key)
    # OpenAPI v3.0's boolean exclusiveMinimum is draft 7's number.
    target = node(spec, "autoscaling.targetOngoingRequests")
    assert target["exclusiveMinimum"] is True
    assert node(serve, "autoscaling.targetOngoingRequests")["exclusiveMinimum"] == target["minimum"]
    token = node(spec, "auth.tokenSecretName")
    have = node(serve, "auth.tokenSecretName")  # "" is "no token"
    assert have["pattern"] == f"^({token['pattern'][1:-1]})?$"
    assert have["maxLength"] == token["maxLength"]
    for path in ("name", "source.run", "source.sweep"):
        assert node(serve, path)["pattern"] == f"^{NAME_RE.pattern}$", path
        assert node(serve, path)["maxLength"] == MAX_NAME, path

    def plain(schema):  # the values schema adds draft 7's additionalProperties: false
        if isinstance(schema, dict):
            skip = ("description", "additionalProperties")
            return {k: plain(v) for k, v in schema.items() if k not in skip}
        return [plain(v) for v in schema] if isinstance(schema, list) else schema

    empty, gcs = node(serve, "gcsFaultTolerance")["oneOf"]  # {} is "off"
    assert empty == {"type": "object", "maxProperties": 0}
    assert plain(gcs) == plain(node(spec, "gcsFaultTolerance"))


def render_defaults() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Helm's values merge: maps merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


@pytest.mark.parametrize(
    "values, error",
    [
        ({"replicaCount": 3}, "replicaCount"),
        ({"workerGroups": {"cpu": {"replicas": "two"}}}, "replicas"),
        ({"workerGroups": {"cpu": {"maxReplica": 3}}}, "maxReplica"),
        ({"workerGroups": {"tpu": {"enabled": True}}}, "missing properties"),
        ({"serve": {"source": {"checkpoint": "s3://b/x"}}}, "checkpoint"),
        ({"head": {"env": {"AWS_SECRET_ACCESS_KEY": "abc"}}}, "AWS_SECRET_ACCESS_KEY"),
        ({"workerGroups": {"gpu": {"env": {"RAY_AUTH_TOKEN": "abc"}}}}, "RAY_AUTH_TOKEN"),
        ({"storage": {"accessKeyId": "AKIA..."}}, "accessKeyId"),
        ({"auth": {"enabled": "yes"}}, "enabled"),
        ({"auth": {"token": "abc"}}, "token"),
        ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
        ({"podSecurity": {"runAsUser": 0}}, "runAsUser"),
        ({"serve": {"source": {"run": "a", "sweep": "b"}}}, "source"),
        ({"serve": {"routePrefix": "digits/"}}, "routePrefix"),
        ({"serve": {"gcsFaultTolerance": {"backend": "etcd"}}}, "gcsFaultTolerance"),
        ({"serve": {"source": {"run": "9digits"}}}, "run"),
        ({"networkPolicy": {"egress": {"ports": [70000]}}}, "ports"),
        ({"networkPolicy": {"submitters": {"ci": {"podSelectr": {}}}}}, "podSelectr"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_schema_rejects(values, error):
    import helm_python

    with pytest.raises(helm_python.HelmValuesError, match=re.escape(error)):
        render_chart(values)


def test_schema_is_strict_at_every_typed_level():
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(render_defaults(), schema)
    for key, sub in schema["properties"].items():
        if sub.get("type") == "object" and "properties" in sub:
            assert sub.get("additionalProperties") is False, key
    assert set(schema["properties"]) - {"global"} == set(render_defaults())


def test_values_hold_no_credentials():
    text = (CHART / "values.yaml").read_text()
    for pattern in ("accessKey", "secretKey", "password", "AKIA", "BEGIN "):
        assert pattern.lower() not in text.lower().replace("existingsecret", ""), pattern
    for profile in PROFILES:
        flat = json.dumps(profile_values(profile)).lower()
        assert "secret_access_key" not in flat and "password" not in flat, profile


def test_readme_values_table_matches_values_yaml():
    assert readme_rows() == rows(), (
        "charts/rayfleet/README.md values table is stale: run python -m tests.k8s.chart_docs"
    )


def test_every_value_is_documented():
    values = render_defaults()
    docs = {key for key, _ in documented()}

    def leaves(node: Any, prefix: str = ""):
        if isinstance(node, dict) and node:
            for k, v in node.items():
                yield from leaves(v, f"{prefix}{k}.")
        else:
            yield prefix.rstrip(".")

    for leaf in leaves(values):
        parts = leaf.split(".")
        assert any(".".join(parts[:i]) in docs for i in range(1, len(parts) + 1)), (
            f"values.yaml: {leaf} has no `# --` comment"
        )


@pytest.mark.parametrize("profile", ALL)
def test_chart_ray_pods_are_what_pods_py_says(profile, rendered_profiles):
    """The RayCluster is the one Ray object the chart templates; every pod of it is checked
    against expectations derived from k8s/pods.py (what `rayfleet render` and the operator
    write): pod and container security, HOME and working directory, Ray's volumes and mounts,
    ports, the storage ConfigMap, no API token, the cluster label."""
    objects = chart_objects(rendered_profiles[profile])
    storage = [
        o for o in by_kind(objects, "ConfigMap") if o["metadata"]["name"].endswith("-storage")
    ]
    for cluster in by_kind(objects, "RayCluster"):
        name = cluster["metadata"]["name"]
        if cluster["spec"]["enableInTreeAutoscaling"]:
            auto = cluster["spec"]["autoscalerOptions"]
            assert auto["securityContext"] == pods.container_security_context()
            assert auto["env"] == pods.home_env()
        for where, template in pod_templates(cluster):
            spec = template["spec"]
            (c,) = spec["containers"]
            head = where.endswith("head")
            assert template["metadata"]["labels"][pods.CLUSTER_LABEL] == name, where
            assert spec["automountServiceAccountToken"] is False, where
            assert spec["securityContext"] == pods.pod_security_context(), where
            assert c["securityContext"] == pods.container_security_context(), where
            assert c["workingDir"] == pods.HOME, where
            assert c["env"][: len(pods.home_env())] == pods.home_env(), where
            assert c["envFrom"][0] == {"configMapRef": {"name": storage[0]["metadata"]["name"]}}
            assert c["volumeMounts"] == pods.ray_volume_mounts(), where
            shm = next(v for v in spec["volumes"] if v["name"] == "shm")
            own = [v for v in spec["volumes"] if v["name"] != "kube-api-access"]
            assert own == pods.ray_volumes(shm["emptyDir"]["sizeLimit"]), where
            assert c.get("ports") == (pods.container_ports(serve=False) if head else None), where
            limits = c["resources"]["limits"]
            if pods.GPU_RESOURCE in limits:
                assert c["image"].endswith(f"-{pods.PYTHON_TAG}-gpu"), where


def test_image_values_reach_every_pod_the_release_makes():
    """imagePullSecrets and the image repository reach the chart's pods and, through the
    operator's flags, the pods of the RayService it makes for the release's model."""
    values = {
        "imagePullSecrets": ["regcred"],
        "image": {"repository": "registry.example/ml/rayfleet", "tag": "t1", "gpuTag": "t1-gpu"},
        "serve": {"enabled": True, "source": {"run": "d"}, "gpusPerReplica": 1},
        "operator": {"enabled": True},
    }
    objects = installed_objects(render_chart(values))
    (operator,) = by_kind(objects, "Deployment")
    templates = [("operator", operator["spec"]["template"])]
    templates += [(w, t) for o in objects for w, t in pod_templates(o)]
    kinds = set()
    for where, template in templates:
        assert template["spec"]["imagePullSecrets"] == [{"name": "regcred"}], where
        for c in template["spec"]["containers"]:
            gpu = pods.GPU_RESOURCE in c.get("resources", {}).get("limits", {})
            assert c["image"] == f"registry.example/ml/rayfleet:{'t1-gpu' if gpu else 't1'}", where
        kinds.add(where.split("/")[0].split()[0])
    assert kinds == {"operator", "RayCluster", "Pod", "RayService"}


def test_rendered_yaml_has_no_duplicate_keys(rendered_profiles):
    """The API server refuses duplicate fields (strict decoding); PyYAML keeps the last one,
    so every rendered document is parsed here with a loader that refuses them."""

    class Strict(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            keys = [self.construct_object(k, deep=deep) for k, _ in node.value]
            duplicated = {k for k in keys if keys.count(k) > 1}
            assert not duplicated, f"duplicate keys {duplicated} at {node.start_mark}"
            return super().construct_mapping(node, deep=deep)

    variants = dict(rendered_profiles)
    variants["operator-cluster-wide"] = render_chart(
        {"operator": {"enabled": True, "clusterWide": True}, "imagePullSecrets": ["regcred"]}
    )
    for rendered in variants.values():
        for path, text in rendered.items():
            if path.endswith(".yaml"):
                list(yaml.load_all(text, Loader=Strict))  # a SafeLoader


def test_versions_agree():
    """Ray version and image tags: chart, Dockerfile, render defaults and pyproject agree."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert render_defaults()["rayVersion"] == pods.RAY_VERSION
    assert chart["annotations"]["rayfleet.io/ray-version"] == pods.RAY_VERSION
    assert chart["appVersion"] == pods.rayfleet_version()
    dockerfile = (CHART / "image" / "Dockerfile").read_text()
    assert f"ARG RAY_VERSION={pods.RAY_VERSION}" in dockerfile
    assert f"-{pods.PYTHON_TAG}" in dockerfile
    pyproject = (REPO / "pyproject.toml").read_text()
    assert f"ray[train,tune,serve]=={pods.RAY_VERSION}" in pyproject
    assert render_defaults()["image"]["repository"] == pods.IMAGE_REPOSITORY
    (cluster,) = by_kind(chart_objects(render_chart()), "RayCluster")
    images = {c["image"] for _, t in pod_templates(cluster) for c in t["spec"]["containers"]}
    assert images == {pods.default_image(False), pods.default_image(True)}


def test_long_release_names_fit_kuberay_limits():
    name = "a" * 53
    serve = {"enabled": True, "source": {"run": "digits"}}
    objects = installed_objects(
        render_chart({"serve": serve, "operator": {"enabled": True}}, name=name)
    )
    assert by_kind(objects, "RayService")
    for obj in objects:
        if obj["kind"] == "RayCluster":
            assert len(obj["metadata"]["name"]) <= 50
        if obj["kind"] in ("RayService", "ModelDeployment"):
            assert len(obj["metadata"]["name"]) <= 47
    for obj in objects:
        for cluster in cluster_specs(obj):
            assert cluster["authOptions"]["mode"] == "token"


_OPERATOR = {"operator": {"enabled": True}}


@pytest.mark.parametrize(
    "values, message",
    [
        ({"serve": {"enabled": True}, **_OPERATOR}, "serve.source: set exactly one of"),
        ({"workerGroups": {"cpu": {"replicas": 9}}}, "workerGroups.cpu: needs minReplicas <="),
        (
            {
                "serve": {
                    "enabled": True,
                    "source": {"run": "d"},
                    "autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2},
                },
                **_OPERATOR,
            },
            "serve.autoscaling: minReplicas (5) is above maxReplicas (2)",
        ),
        (
            {"serve": {"enabled": True, "source": {"run": "d"}}},
            "serve.enabled: the model is a ModelDeployment that the rayfleet operator turns "
            "into a RayService; set operator.enabled=true too",
        ),
    ],
    ids=["no-source", "replicas-out-of-range", "serve-min-above-max", "serve-without-operator"],
)
def test_inconsistent_values_fail_clearly(values, message):
    import helm_python

    with pytest.raises(helm_python.HelmRenderError, match=re.escape(message)):
        render_chart(values)


def test_release_name_starting_with_a_digit_fails_clearly():
    import helm_python

    with pytest.raises(helm_python.HelmRenderError, match="must start with a lowercase letter"):
        render_chart(name="1team")


def test_turning_protections_off_is_visible():
    rendered = render_chart({"auth": {"enabled": False}, "networkPolicy": {"enabled": False}})
    notes = rendered["rayfleet/templates/NOTES.txt"]
    assert "WARNING: Ray token auth is off" in notes
    assert "WARNING: the NetworkPolicy is off" in notes
    (cluster,) = by_kind(chart_objects(rendered), "RayCluster")
    assert cluster["spec"]["authOptions"] == {"mode": "disabled"}


def test_notes_print_the_next_commands(rendered_profiles):
    notes = rendered_profiles["default"]["rayfleet/templates/NOTES.txt"]
    assert "kubectl -n ml port-forward svc/team-a-rayfleet-head-svc 8265:8265" in notes
    assert "rayfleet submit" in notes and "helm test team-a" in notes
    assert "auth_token" in notes
    serving = rendered_profiles["serving"]["rayfleet/templates/NOTES.txt"]
    assert "port-forward svc/team-a-rayfleet-serve-serve-svc 8000:8000" in serving
