"""`rayfleet doctor`: every check against the in-memory API (tests/k8s/fake_api.py) seeded with
what a real install holds (the chart's own RayCluster and ConfigMap, KubeRay's own CRDs), one
case per way a first install fails, each with its one-line fix; the adapter's requests and the
CLI against the recording HTTP server of test_client.py; the storage probe pod run, in-process,
against the loopback S3 server; the dashboard check against a tiny local server that answers
as Ray's does (401 without a token, 403 with a wrong one)."""

from __future__ import annotations

import copy
import functools
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from typer.testing import CliRunner

from rayfleet.k8s import doctor, pods
from rayfleet.k8s.doctor import Status
from tests.conftest import BUCKET
from tests.k8s.conftest import chart_objects, render_chart
from tests.k8s.fake_api import FakeCluster
from tests.k8s.schemas import CRD_FILES, REPO, crd_dir
from tests.k8s.test_client import Recorder

pytestmark = pytest.mark.k8s
NS = "ml"
TOKEN = "right-token"


class DoctorCluster(FakeCluster):
    """The shared fake plus what doctor needs: the version endpoint, deletes, and a stand-in
    kubelet that runs the probe pod's command when the pod is created."""

    def __init__(self, kubelet=None):
        super().__init__(NS)
        self.kubelet = kubelet
        self.deleted: list[str] = []

    def version(self) -> str:
        return "v1.31.2"

    def create(self, kind, namespace, body):
        out = super().create(kind, namespace, body)
        if kind == "Pod" and self.kubelet:
            self.objects[(kind, namespace, body["metadata"]["name"])]["status"] = self.kubelet(
                self, body
            )
        return out

    def delete(self, kind, namespace, name):
        self.calls.append(("delete", kind, name, None))
        self.deleted.append(name)
        self.objects.pop((kind, namespace, name), None)


@functools.cache
def ray_crd(kind_file: str) -> dict[str, Any]:
    """KubeRay's CRD cut down to what doctor reads (names, served versions, the top-level
    spec fields): the whole schema is megabytes the fake would deep-copy on every read."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load((crd_dir() / kind_file).read_text(), Loader=loader)
    versions = []
    for v in crd["spec"]["versions"]:
        spec = v["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        schema = {"properties": {"spec": {"properties": {k: {} for k in spec}}}}
        versions.append(
            {"name": v["name"], "served": v["served"], "schema": {"openAPIV3Schema": schema}}
        )
    return {
        "kind": crd["kind"],
        "metadata": {"name": crd["metadata"]["name"]},
        "spec": {"versions": versions},
    }


@functools.cache
def _rendered() -> list[dict[str, Any]]:
    return chart_objects(render_chart({"operator": {"enabled": True}}))


def chart() -> list[dict[str, Any]]:
    """The chart's objects (rendered once: a render costs seconds on a busy 2-core machine);
    the cases below change the few fields their values would change."""
    return copy.deepcopy(_rendered())


def operator(tag: str = "v1.7.0", ready: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "kuberay-operator",
            "namespace": "kuberay-system",
            "labels": {"app.kubernetes.io/name": "kuberay-operator"},
        },
        "spec": {
            "template": {"spec": {"containers": [{"image": f"quay.io/kuberay/operator:{tag}"}]}}
        },
        "status": {"readyReplicas": ready},
    }


def ray_pod(rc: dict[str, Any], group: str | None = None, **status) -> dict[str, Any]:
    """A pod KubeRay made from the RayCluster's head (or a worker group's) template."""
    if group is None:
        template, node = rc["spec"]["headGroupSpec"]["template"], "head"
    else:
        (spec,) = [g for g in rc["spec"]["workerGroupSpecs"] if g["groupName"] == group]
        template, node = spec["template"], "worker"
    name = f"{rc['metadata']['name']}-{group or 'head'}-x1"
    labels = {**template["metadata"].get("labels", {}), "ray.io/cluster": rc["metadata"]["name"]}
    running = {
        "phase": "Running",
        "containerStatuses": [
            {"name": c["name"], "image": c["image"], "state": {"running": {}}, "restartCount": 0}
            for c in template["spec"]["containers"]
        ],
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels | {"ray.io/node-type": node}},
        "spec": copy.deepcopy(template["spec"]),
        "status": status or running,
    }


def install(
    *, kubelet=None, token=True, secret_name=None, auth=True, storage=None, gpu=False
) -> DoctorCluster:
    """A cluster where `helm install` of the chart worked: KubeRay v1.7.0 with its CRDs, the
    chart's objects, the RayCluster ready, its head pod running, its token Secret. The
    keywords stand for values: auth.existingSecret, auth.enabled, storage.*, a GPU group."""
    fake = DoctorCluster(kubelet)
    fake.put(operator())
    for name in CRD_FILES.values():
        fake.put({**ray_crd(name), "metadata": {**ray_crd(name)["metadata"], "namespace": ""}})
    for obj in chart():
        if obj["kind"] == "ConfigMap" and storage:
            obj["data"] = storage
        if obj["kind"] == "RayCluster":
            if secret_name:
                obj["spec"]["authOptions"]["secretName"] = secret_name
            if not auth:
                obj["spec"]["authOptions"] = {"mode": "disabled"}
            if gpu:  # the chart's GPU group, scaled up (workerGroups.gpu.replicas)
                (group,) = [g for g in obj["spec"]["workerGroupSpecs"] if g["groupName"] == "gpu"]
                group["replicas"] = max(1, group.get("minReplicas", 0))
            obj["status"] = {
                "state": "ready",
                "readyWorkerReplicas": 1,
                "conditions": [
                    {"type": "RayClusterProvisioned", "status": "True"},
                    {"type": "HeadPodReady", "status": "True"},
                ],
            }
        if obj["kind"] in ("RayCluster", "ConfigMap", "ServiceAccount"):
            fake.put(obj)
    rc = raycluster(fake)
    fake.put(ray_pod(rc))
    if token:
        secret = rc["spec"]["authOptions"].get("secretName") or rc["metadata"]["name"]
        fake.put({"kind": "Secret", "metadata": {"name": secret}, "data": {"auth_token": "eA=="}})
    return fake


def raycluster(fake: FakeCluster) -> dict[str, Any]:
    (rc,) = fake.list("RayCluster", NS)
    return rc


def checks(fake, **kwargs) -> dict[str, doctor.Check]:
    kwargs.setdefault("storage", False)
    report = doctor.run_checks(fake, NS, "team-a", **kwargs)
    return {c.name: c for c in report.checks}


def only_failure(fake, **kwargs) -> doctor.Check:
    failed = [c for c in checks(fake, **kwargs).values() if c.status is Status.failed]
    assert len(failed) == 1, [c.line() for c in failed]
    return failed[0]


# ----------------------------------------------------------------------------- the checks


def test_a_working_install_passes_every_check():
    got = checks(install())
    assert {n: c.status for n, c in got.items()} == {
        "api": Status.passed,
        "kuberay-operator": Status.passed,
        "ray-crds": Status.passed,
        "modeldeployment": Status.skipped,  # the chart's crds/ are not applied by render
        "raycluster": Status.passed,
        "ray-pods": Status.passed,
        "auth-secret": Status.passed,
        "storage": Status.skipped,
    }
    assert "v1.7.0" in got["kuberay-operator"].detail
    assert "rayclusters (v1,v1alpha1)" in got["ray-crds"].detail
    assert doctor.Report(checks=list(got.values())).ok


def test_operator_missing():
    fake = install()
    fake.objects.pop(("Deployment", "kuberay-system", "kuberay-operator"))
    check = only_failure(fake)
    assert check.name == "kuberay-operator" and "no Deployment" in check.detail
    assert "helm repo add kuberay" in check.fix and "--version 1.7.0" in check.fix


def test_operator_too_old_for_token_auth():
    fake = install()
    fake.put(operator("v1.4.2"))
    check = only_failure(fake)
    assert check.name == "kuberay-operator"
    assert "v1.4.2" in check.detail and ">= 1.5.1" in check.detail
    assert "--version 1.7.0" in check.fix and "kubectl replace -k" in check.fix
    assert "FAIL kuberay-operator: " in check.line() and " -> helm repo add" in check.line()


def _embedded_gcs(fake, gates: list[str] | None):
    (rc,) = [o for (kind, _, _), o in fake.objects.items() if kind == "RayCluster"]
    rc["spec"]["gcsFaultToleranceOptions"] = {"backend": "rocksdb", "storage": {"size": "1Gi"}}
    op = operator()
    if gates is not None:
        op["spec"]["template"]["spec"]["containers"][0]["args"] = gates
    fake.put(op)
    return fake


def test_embedded_gcs_fault_tolerance_needs_the_operator_feature_gate():
    fake = _embedded_gcs(install(), ["--feature-gates=RayClusterStatusConditions=true"])
    check = only_failure(fake)
    assert check.name == "gcs-fault-tolerance"
    assert "GCSFaultToleranceEmbeddedStorage=true" in check.detail
    assert "featureGates" in check.fix and "kuberay-system" in check.fix
    gated = "--feature-gates=RayClusterStatusConditions=true,GCSFaultToleranceEmbeddedStorage=true"
    got = checks(_embedded_gcs(install(), ["--zap-log-level=info", gated]))
    assert got["gcs-fault-tolerance"].status is Status.passed
    assert "gcs-fault-tolerance" not in checks(install())  # no such line without the backend


def test_operator_version_from_image_tags():
    assert doctor.image_version("quay.io/kuberay/operator:v1.7.0") == (1, 7, 0)
    assert doctor.image_version("registry:5000/kuberay/operator:1.5.1-rc.0") == (1, 5, 1)
    assert doctor.image_version("kuberay/operator:v1.5@sha256:ab12") == (1, 5, 0)
    assert doctor.image_version("registry:5000/kuberay/operator") is None
    assert doctor.image_version("kuberay/operator:latest") is None
    fake = install()
    fake.put(operator("latest"))
    assert "no version in the tag" in only_failure(fake).detail


def test_crd_missing():
    fake = install()
    fake.objects.pop(("CustomResourceDefinition", "", "rayclusters.ray.io"))
    check = only_failure(fake)
    assert check.name == "ray-crds" and check.detail == "missing rayclusters.ray.io"
    assert "kuberay-operator" in check.fix


def test_crds_older_than_the_operator():
    """`helm upgrade` of KubeRay leaves old CRDs: the API server then drops authOptions."""
    fake = install()
    crd = fake.get("CustomResourceDefinition", "", "rayclusters.ray.io")
    v1 = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    del v1["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["authOptions"]
    fake.put(crd)
    check = only_failure(fake)
    assert check.name == "ray-crds" and "no spec.authOptions" in check.detail
    assert check.fix.startswith("kubectl replace -k") and "ref=v1.7.0" in check.fix


def test_modeldeployments_need_the_operator():
    fake = install()
    fake.put(
        {
            "kind": "CustomResourceDefinition",
            "metadata": {"name": "modeldeployments.rayfleet.io", "namespace": ""},
            "spec": {"versions": [{"name": "v1alpha1", "served": True}]},
        }
    )
    check = only_failure(fake)
    assert check.name == "modeldeployment"
    assert check.fix == "helm upgrade team-a <chart> --reuse-values --set operator.enabled=true"
    (deployment,) = [o for o in chart() if o["kind"] == "Deployment"]
    fake.put({**deployment, "status": {"readyReplicas": 1}})
    assert checks(fake)["modeldeployment"].status is Status.passed


def test_no_release_in_the_namespace():
    fake = install()
    fake.objects.pop(("RayCluster", NS, raycluster(fake)["metadata"]["name"]))
    got = checks(fake)
    assert got["raycluster"].status is Status.failed
    assert got["raycluster"].fix.startswith("helm install team-a <chart> -n ml")
    assert {got[n].status for n in ("ray-pods", "auth-secret", "storage")} == {Status.skipped}


def test_image_pull_failing():
    fake = install()
    rc = raycluster(fake)
    image = rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    waiting = {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}
    fake.put(
        ray_pod(
            rc,
            phase="Pending",
            containerStatuses=[{"name": "ray-head", "image": image, "state": waiting}],
        )
    )
    fake.put(
        {
            **rc,
            "status": {
                "state": "",
                "conditions": [
                    {"type": "HeadPodReady", "status": "False", "reason": "ContainersNotReady"}
                ],
            },
        }
    )
    got = checks(fake)
    assert (
        got["raycluster"].status is Status.failed
        and "ContainersNotReady" in got["raycluster"].detail
    )
    pods_check = got["ray-pods"]
    assert pods_check.status is Status.failed
    assert f"ImagePullBackOff for {image}" in pods_check.detail
    assert image == pods.default_image(False)  # the unpublished default is what users hit
    assert "charts/rayfleet/image/Dockerfile" in pods_check.fix
    assert "image.repository, image.tag and image.gpuTag" in pods_check.fix


def test_pending_for_lack_of_gpus_from_the_scheduling_event():
    fake = install(gpu=True)
    rc = raycluster(fake)
    gpu_group = next(
        g["groupName"]
        for g in rc["spec"]["workerGroupSpecs"]
        if pods.GPU_RESOURCE in g["template"]["spec"]["containers"][0]["resources"]["limits"]
    )
    pod = ray_pod(
        rc,
        gpu_group,
        phase="Pending",
        conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}],
    )
    fake.put(pod)
    message = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    event = {
        "reason": "FailedScheduling",
        "message": message,
        "involvedObject": {"name": pod["metadata"]["name"]},
    }
    fake.put({"kind": "Event", "metadata": {"name": "e1"}, **event})
    check = only_failure(fake)
    assert check.name == "ray-pods"
    assert "no node with a free nvidia.com/gpu" in check.detail and "Insufficient" in check.detail
    assert "GPU node pool" in check.fix and "replicas/minReplicas to 0" in check.fix


def test_oom_killed_head():
    fake = install()
    rc = raycluster(fake)
    oom = {
        "name": "ray-head",
        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"reason": "OOMKilled"}},
        "restartCount": 4,
    }
    fake.put(ray_pod(rc, phase="Running", containerStatuses=[oom]))
    check = only_failure(fake)
    assert check.name == "ray-pods" and "OOMKilled (restarts 4)" in check.detail
    assert "memory" in check.fix


def test_secret_missing():
    fake = install(secret_name="team-token", token=False)
    check = only_failure(fake)
    assert check.name == "auth-secret" and "ml/team-token missing" in check.detail
    assert check.fix.startswith(
        "kubectl -n ml create secret generic team-token --from-literal=auth_token="
    )


def test_secret_kuberay_should_have_made_is_missing_and_auth_off_is_a_warning():
    check = only_failure(install(token=False))
    assert check.name == "auth-secret" and "KubeRay makes it" in check.detail
    off = checks(install(auth=False, token=False))["auth-secret"]
    assert off.status is Status.warning and off.ok and "auth.enabled=true" in off.fix


# ----------------------------------------------------------------------------- storage


def kubelet_running(tmp_path, env_from_s3):
    """Runs the probe pod's command here, with the pod's env (env + envFrom ConfigMaps) over
    the loopback S3 server's credentials (standing in for the pods' cloud identity)."""

    def run(fake: DoctorCluster, pod: dict[str, Any]) -> dict[str, Any]:
        (container,) = pod["spec"]["containers"]
        assert container["command"][:4] == ["python", "-m", "rayfleet.k8s.doctor", "probe-storage"]
        env = dict(env_from_s3)
        for source in container["envFrom"]:
            env |= fake.get("ConfigMap", NS, source["configMapRef"]["name"])["data"]
        env |= {e["name"]: e["value"] for e in container["env"] if "value" in e}
        log = tmp_path / "termination-log"
        with pytest.MonkeyPatch.context() as mp:
            for key, value in env.items():
                mp.setenv(key, value)
            code = doctor.probe_storage(container["command"][4], termination_log=str(log))
        terminated = {"exitCode": code, "message": log.read_text()}
        return {
            "phase": "Succeeded" if code == 0 else "Failed",
            "containerStatuses": [{"name": "probe", "state": {"terminated": terminated}}],
        }

    return run


def storage_config(s3, bucket: str) -> dict[str, str]:
    """The chart's ConfigMap for storage.bucket/prefix/endpoint."""
    return {"RAYFLEET_STORAGE": f"s3://{bucket}/team-a", "AWS_ENDPOINT_URL": s3.endpoint}


def test_storage_probe_pod_runs_the_preflight_with_the_ray_pods_identity(s3, tmp_path):
    import os

    env = {k: os.environ[k] for k in s3.env()}
    fake = install(storage=storage_config(s3, BUCKET), kubelet=kubelet_running(tmp_path, env))
    check = checks(fake, storage=True)["storage"]
    assert check.status is Status.passed, check.line()
    assert f"s3://{BUCKET}/team-a writable" in check.detail and "probe ok in" in check.detail
    (created,) = [c[3] for c in fake.calls if c[:2] == ("create", "Pod")]
    assert fake.deleted == [created["metadata"]["name"]]  # cleaned up
    rc = raycluster(fake)
    head = doctor.head_container(rc)
    spec = created["spec"]
    (container,) = spec["containers"]
    assert (
        spec["serviceAccountName"]
        == rc["spec"]["headGroupSpec"]["template"]["spec"]["serviceAccountName"]
    )
    assert container["image"] == head["image"] and container["envFrom"] == head["envFrom"]
    assert spec["securityContext"] == pods.pod_security_context()
    assert container["securityContext"] == pods.container_security_context()
    assert spec["restartPolicy"] == "Never" and spec["activeDeadlineSeconds"] <= 300
    assert container["resources"]["limits"] == container["resources"]["requests"]
    assert created["metadata"]["labels"]["app.kubernetes.io/component"] == "doctor"
    assert pods.CLUSTER_LABEL not in created["metadata"]["labels"]  # not a Ray pod to policies


def test_storage_probe_reports_a_missing_bucket(s3, tmp_path):
    import os

    env = {k: os.environ[k] for k in s3.env()}
    fake = install(
        storage=storage_config(s3, "no-such-bucket"), kubelet=kubelet_running(tmp_path, env)
    )
    check = checks(fake, storage=True)["storage"]
    assert check.status is Status.failed
    assert "bucket 'no-such-bucket' does not exist" in check.detail
    assert "eks.amazonaws.com/role-arn" in check.fix and "iam.gke.io" in check.fix


def test_storage_probe_stuck_on_its_image_fails_without_waiting():
    def stuck(fake, pod):
        waiting = {"waiting": {"reason": "ErrImagePull"}}
        return {
            "phase": "Pending",
            "containerStatuses": [
                {"name": "probe", "image": pod["spec"]["containers"][0]["image"], "state": waiting}
            ],
        }

    fake = install(storage={"RAYFLEET_STORAGE": "s3://b1/x"}, kubelet=stuck)
    slept = []
    check = checks(fake, storage=True, sleep=slept.append)["storage"]
    assert check.status is Status.failed and "ErrImagePull" in check.detail and slept == []


# ----------------------------------------------------------------------------- dashboard


class Dashboard(BaseHTTPRequestHandler):
    """/api/version as a token-auth Ray head answers it."""

    def do_GET(self):
        auth = self.headers.get("Authorization")
        code = 401 if not auth else 200 if auth == f"Bearer {TOKEN}" else 403
        body = json.dumps({"ray_version": "2.60.0"} if code == 200 else {}).encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def dashboard(monkeypatch, tmp_path):
    for var in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("RAYFLEET_CONFIG", str(tmp_path / "config.yaml"))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Dashboard)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_dashboard_through_the_port_forward_with_the_token(dashboard, monkeypatch):
    rc = raycluster(install())
    name = rc["metadata"]["name"]
    no_token = doctor.check_dashboard(dashboard, namespace=NS, raycluster=rc)
    assert no_token.status is Status.failed and "401" in no_token.detail
    assert no_token.fix == (
        f"export RAY_AUTH_TOKEN=$(kubectl -n ml get secret {name} "
        "-o jsonpath='{.data.auth_token}' | base64 -d)"
    )
    monkeypatch.setenv("RAY_AUTH_TOKEN", "stale")
    wrong = doctor.check_dashboard(dashboard, namespace=NS, raycluster=rc)
    assert "403" in wrong.detail and "RAY_AUTH_TOKEN" in wrong.detail
    monkeypatch.setenv("RAY_AUTH_TOKEN", TOKEN)
    ok = doctor.check_dashboard(dashboard, namespace=NS, raycluster=rc)
    assert ok.status is Status.passed and "with the token, Ray 2.60.0" in ok.detail


def test_dashboard_without_a_port_forward(dashboard):
    rc = raycluster(install())
    forward = f"kubectl -n ml port-forward svc/{rc['metadata']['name']}-head-svc 8265:8265"
    port = dashboard.rsplit(":", 1)[1]
    closed = doctor.check_dashboard("http://127.0.0.1:9", namespace=NS, raycluster=rc)
    assert closed.status is Status.failed and closed.fix == f"start the port-forward: {forward}"
    assert port != "9"
    none = doctor.check_dashboard(None, namespace=NS, raycluster=rc)
    assert none.status is Status.skipped and forward in none.detail


# ------------------------------------------------------------- the adapter and the CLI over HTTP


VERSION = {
    "major": "1",
    "minor": "31",
    "gitVersion": "v1.31.2",
    "gitCommit": "abc",
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "go1.24",
    "compiler": "gc",
    "platform": "linux/amd64",
}


def use_kubeconfig(monkeypatch, path) -> None:
    """KUBECONFIG as a fresh `rayfleet` process would read it (the client reads the variable
    once, at import)."""
    from kubernetes.config import kube_config

    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))


@pytest.fixture
def recorder():
    Recorder.requests, Recorder.replies = [], {}
    for path in (
        "/apis/apps/v1/deployments",
        "/apis/ray.io/v1/namespaces/ml/rayclusters",
        "/api/v1/namespaces/ml/pods",
        "/api/v1/namespaces/ml/events",
    ):
        Recorder.replies[("GET", path)] = (200, {"items": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_cluster_reader_requests(recorder):
    from kubernetes import client

    config = client.Configuration()
    config.host, config.retries = recorder, 0
    reader = doctor.ClusterReader(api_client=client.ApiClient(config))
    Recorder.replies[("GET", "/version/")] = (200, VERSION)
    Recorder.replies[("GET", "/api/v1/namespaces/ml/secrets/gone")] = (404, {"message": "nope"})
    assert reader.version() == "v1.31.2"
    reader.list("Deployment", None, doctor.KUBERAY_LABEL)
    crd = ray_crd("ray.io_rayclusters.yaml")
    for version in crd["spec"]["versions"]:
        version["storage"] = version["name"] == "v1"
    names = {"plural": "rayclusters", "kind": "RayCluster"}
    crd["spec"] |= {"group": "ray.io", "scope": "Namespaced", "names": names}
    path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/rayclusters.ray.io"
    Recorder.replies[("GET", path)] = (200, {"apiVersion": "apiextensions.k8s.io/v1", **crd})
    got = reader.get("CustomResourceDefinition", "", "rayclusters.ray.io")
    v1 = next(v for v in got["spec"]["versions"] if v["name"] == "v1")
    assert "authOptions" in v1["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    reader.list("RayCluster", "ml", "app.kubernetes.io/instance=team-a")
    reader.list("Pod", "ml", "ray.io/cluster=c")
    reader.list("Event", "ml")
    assert reader.get("Secret", "ml", "gone") is None
    reader.get("ConfigMap", "ml", "cfg")
    reader.create("Pod", "ml", {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}})
    sent = [(m, p, t) for m, p, t, _ in Recorder.requests]
    assert [(m, p.split("?")[0]) for m, p, _ in sent] == [
        ("GET", "/version/"),
        ("GET", "/apis/apps/v1/deployments"),
        ("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/rayclusters.ray.io"),
        ("GET", "/apis/ray.io/v1/namespaces/ml/rayclusters"),
        ("GET", "/api/v1/namespaces/ml/pods"),
        ("GET", "/api/v1/namespaces/ml/events"),
        ("GET", "/api/v1/namespaces/ml/secrets/gone"),
        ("GET", "/api/v1/namespaces/ml/configmaps/cfg"),
        ("POST", "/api/v1/namespaces/ml/pods"),
    ]
    assert parse_qs(urlsplit(sent[1][1]).query)["labelSelector"] == [doctor.KUBERAY_LABEL]
    assert sent[-1][2] == "application/json"


def test_cli_json_and_exit_code_against_an_api_server(recorder, tmp_path, monkeypatch):
    """`rayfleet doctor` end to end through a kubeconfig: an API server with nothing installed
    fails at the operator, skips nothing it could check, exits 1, one JSON document."""
    from rayfleet.cli.main import app

    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": recorder}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "lab", "context": {"cluster": "c", "user": "u", "namespace": "ml"}}],
        "current-context": "lab",
    }
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(kubeconfig))
    use_kubeconfig(monkeypatch, tmp_path / "kubeconfig")
    monkeypatch.setenv("RAYFLEET_CONFIG", str(tmp_path / "none.yaml"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    Recorder.replies[("GET", "/version/")] = (200, VERSION)
    for path in (
        "rayclusters.ray.io",
        "rayjobs.ray.io",
        "rayservices.ray.io",
        "modeldeployments.rayfleet.io",
    ):
        Recorder.replies[
            ("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{path}")
        ] = (404, {"message": "not found"})
    result = CliRunner().invoke(app, ["doctor", "--kube-context", "lab", "-o", "json"])
    assert result.exit_code == 1, result.output
    doc = json.loads(result.stdout)
    status = {c["name"]: c["status"] for c in doc["checks"]}
    assert doc["ok"] is False and status == {
        "api": "pass",
        "kuberay-operator": "fail",
        "ray-crds": "fail",
        "modeldeployment": "skip",
        "raycluster": "fail",
        "ray-pods": "skip",
        "auth-secret": "skip",
        "storage": "skip",
        "dashboard": "skip",
    }
    assert all(c["fix"] for c in doc["checks"] if c["status"] == "fail")
    paths = {p.split("?")[0] for _, p, _, _ in Recorder.requests}
    assert "/apis/ray.io/v1/namespaces/ml/rayclusters" in paths  # the kubeconfig's namespace


def test_cli_api_unreachable_skips_the_rest(tmp_path, monkeypatch):
    from rayfleet.cli.main import app

    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "lab",
        "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:9"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "lab", "context": {"cluster": "c", "user": "u"}}],
    }
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(kubeconfig))
    use_kubeconfig(monkeypatch, tmp_path / "kubeconfig")
    monkeypatch.setenv("RAYFLEET_CONFIG", str(tmp_path / "none.yaml"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    result = CliRunner().invoke(app, ["doctor", "-n", "ml"])
    assert result.exit_code == 1
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("FAIL api: ") and "cannot reach the API server" in lines[0]
    assert "kubectl config current-context" in lines[0]
    assert [line.split(":")[0] for line in lines[1:]] == [
        "SKIP kuberay-operator", "SKIP ray-crds", "SKIP modeldeployment", "SKIP raycluster",
        "SKIP ray-pods", "SKIP auth-secret", "SKIP storage", "SKIP dashboard",
    ]  # fmt: skip


def test_doctor_loads_no_runtime_or_client_until_it_calls():
    probe = (
        "import sys, rayfleet.k8s.doctor, rayfleet.cli.doctor_commands\n"
        "print(sorted(m for m in ('ray', 'torch', 'kubernetes', 'fastapi') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr
