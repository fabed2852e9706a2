"""`rayfleet doctor`: what a fresh `helm install` on a cloud still lacks, one line per check.

A first install fails in ways that look alike from outside (pods that never start): no KubeRay
operator or one too old for token auth, CRDs left behind by `helm upgrade` (Helm never upgrades
CRDs), an image that was never pushed, no GPU node, a missing token Secret, a bucket the pods'
identity can't write, a port-forward that isn't running. Each check here reads the live
cluster and returns a `Check`: its name, pass/fail/warn/skip, what it saw and the one command
or value that fixes it. Checks run in dependency order; once one the others rest on fails
(API unreachable, no RayCluster), the dependent ones are skipped, not reported as noise.

The checks are pure functions over a `Reader` (get/list/create/delete of plain dicts), so they
run against tests/k8s/fake_api.py as well as the `ClusterReader` below, which extends the
shared adapter (rayfleet.k8s.client.KubeAPI) with the read-only kinds only doctor needs.

Storage is checked from inside the cluster, with the Ray pods' own identity (IRSA / GKE
Workload Identity come from their ServiceAccount): a short-lived Pod, rendered by
`storage_probe_pod` from the RayCluster's head template (image, ServiceAccount, env, pull
secrets) and locked down like every chart pod, runs `python -m rayfleet.k8s.doctor
probe-storage`: the same storage preflight `rayfleet run` does, its one-line result written
to the termination message, where this module reads it back from the pod's status.
"""

from __future__ import annotations

import enum
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from pydantic import BaseModel

from rayfleet.errors import RayfleetError
from rayfleet.jobs.target import resolve
from rayfleet.k8s import crd, pods
from rayfleet.k8s.client import JSON_HEADERS, KubeAPI, NotFoundError
from rayfleet.lazy import lazy
from rayfleet.storage.preflight import preflight
from rayfleet.storage.uri import parse_uri

kubernetes = lazy("kubernetes", purpose="talking to a Kubernetes API server")

MIN_KUBERAY = (1, 5, 1)  # spec.authOptions (Ray token auth)
KUBERAY_TESTED = "1.7.0"
KUBERAY_LABEL = "app.kubernetes.io/name=kuberay-operator"
RAY_CRDS = ("rayclusters.ray.io", "rayjobs.ray.io", "rayservices.ray.io")
MODEL_CRD = f"{crd.PLURAL}.{crd.GROUP}"
TOKEN_KEY = "auth_token"
STORAGE_ENV = "RAYFLEET_STORAGE"
TERMINATION_LOG = "/dev/termination-log"
INSTALL_KUBERAY = (
    "helm repo add kuberay https://ray-project.github.io/kuberay-helm && helm upgrade "
    f"--install kuberay-operator kuberay/kuberay-operator --version {KUBERAY_TESTED} "
    "-n kuberay-system --create-namespace"
)
REPLACE_RAY_CRDS = (
    "kubectl replace -k 'github.com/ray-project/kuberay/ray-operator/config/crd"
    f"?ref=v{KUBERAY_TESTED}' (helm upgrade never upgrades CRDs)"
)


class Status(enum.StrEnum):
    passed = "pass"
    failed = "fail"
    warning = "warn"  # reported, does not fail the run (a deliberate setting, e.g. auth off)
    skipped = "skip"


class Check(BaseModel):
    """One prerequisite: what was seen (`detail`) and, unless it passed, how to fix it."""

    name: str
    status: Status
    detail: str
    fix: str = ""

    @property
    def ok(self) -> bool:
        return self.status is not Status.failed

    def line(self) -> str:
        fix = f" -> {self.fix}" if self.fix and self.status is not Status.passed else ""
        return f"{self.status.value.upper():4} {self.name}: {self.detail}{fix}"


class Report(BaseModel):
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def document(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [c.model_dump(mode="json") for c in self.checks]}


def passed(name: str, detail: str) -> Check:
    return Check(name=name, status=Status.passed, detail=detail)


def failed(name: str, detail: str, fix: str) -> Check:
    return Check(name=name, status=Status.failed, detail=detail, fix=fix)


def skipped(name: str, why: str) -> Check:
    return Check(name=name, status=Status.skipped, detail=why)


class Reader(Protocol):
    """What the checks need of an API server (ClusterReader, or the tests' fake)."""

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None: ...

    def list(
        self, kind: str, namespace: str | None, label_selector: str | None = None
    ) -> list[dict[str, Any]]: ...

    def create(self, kind: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]: ...

    def delete(self, kind: str, namespace: str, name: str) -> None: ...

    def version(self) -> str: ...


# --------------------------------------------------------------------------- small helpers


def selector_matches(labels: dict[str, str] | None, selector: str) -> bool:
    """Equality-based label selectors (`a=b,c=d`), checked here too: the fake ignores them."""
    labels = labels or {}
    return all(
        labels.get(k) == v for k, _, v in (term.partition("=") for term in selector.split(","))
    )


def listed(reader: Reader, kind: str, namespace: str | None, selector: str) -> list[dict]:
    return [
        o
        for o in reader.list(kind, namespace, selector)
        if selector_matches(o["metadata"].get("labels"), selector)
    ]


def image_version(image: str) -> tuple[int, ...] | None:
    """`quay.io/kuberay/operator:v1.7.0` -> (1, 7, 0); None for `latest` or a bare digest."""
    ref = image.split("@")[0]
    tag = ref.rsplit(":", 1)[1] if ":" in ref.rsplit("/", 1)[-1] else ""
    match = re.match(r"^v?(\d+)\.(\d+)(?:\.(\d+))?", tag)
    return tuple(int(x or 0) for x in match.groups()) if match else None


def dotted(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


def head_container(raycluster: dict[str, Any]) -> dict[str, Any]:
    template = raycluster["spec"]["headGroupSpec"]["template"]["spec"]
    return (
        next((c for c in template["containers"] if c["name"] == "ray-head"), None)
        or (template["containers"][0])
    )


# --------------------------------------------------------------------------- the checks


def check_api(reader: Reader) -> Check:
    try:
        return passed("api", f"reachable, Kubernetes {reader.version()}")
    except RayfleetError as exc:
        return failed(
            "api",
            str(exc),
            "check `kubectl config current-context` (or --kube-context) and `kubectl cluster-info`",
        )


def check_kuberay(reader: Reader) -> Check:
    name = "kuberay-operator"
    found = listed(reader, "Deployment", None, KUBERAY_LABEL)
    if not found:
        return failed(
            name, f"no Deployment labelled {KUBERAY_LABEL} in any namespace", INSTALL_KUBERAY
        )
    dep = found[0]
    where = f"{dep['metadata']['namespace']}/{dep['metadata']['name']}"
    image = dep["spec"]["template"]["spec"]["containers"][0]["image"]
    version = image_version(image)
    if version is None:
        return failed(
            name,
            f"{where} runs {image}: no version in the tag; need >= {dotted(MIN_KUBERAY)}",
            f"run a released operator image: {INSTALL_KUBERAY}",
        )
    if version < MIN_KUBERAY:
        return failed(
            name,
            f"{where} is v{dotted(version)}; Ray token auth (spec.authOptions) needs "
            f">= {dotted(MIN_KUBERAY)}",
            INSTALL_KUBERAY.replace("--install ", "--install --reuse-values ")
            + f"; then {REPLACE_RAY_CRDS}",
        )
    ready = (dep.get("status") or {}).get("readyReplicas") or 0
    if ready < 1:
        return failed(
            name,
            f"{where} v{dotted(version)} has no ready replica",
            f"kubectl -n {dep['metadata']['namespace']} describe deployment "
            f"{dep['metadata']['name']}",
        )
    return passed(name, f"{where} v{dotted(version)} running ({ready} ready)")


EMBEDDED_GCS_GATE = "GCSFaultToleranceEmbeddedStorage"
_GATES_RE = re.compile(r"--feature-gates[= ](\S+)")


def feature_gates(deployment: dict[str, Any]) -> dict[str, bool]:
    """The `--feature-gates=A=true,B=false` the KubeRay operator's container runs with."""
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    argv = " ".join([*(container.get("command") or []), *(container.get("args") or [])])
    gates: dict[str, bool] = {}
    for listed_gates in _GATES_RE.findall(argv):
        for item in listed_gates.split(","):
            gate, _, value = item.partition("=")
            gates[gate] = value.lower() == "true"
    return gates


def check_gcs_fault_tolerance(reader: Reader, raycluster: dict[str, Any]) -> Check | None:
    """With GCS fault tolerance on the alpha embedded volume (backend rocksdb), the operator
    must run with its feature gate, or the head keeps its state in memory after all; None
    when the RayCluster has no GCS fault tolerance on that backend."""
    options = raycluster["spec"].get("gcsFaultToleranceOptions") or {}
    if options.get("backend") != "rocksdb":
        return None
    name = "gcs-fault-tolerance"
    found = listed(reader, "Deployment", None, KUBERAY_LABEL)
    if not found:
        return skipped(name, "no KubeRay operator")
    if feature_gates(found[0]).get(EMBEDDED_GCS_GATE):
        return passed(name, f"embedded (rocksdb) backend; operator gate {EMBEDDED_GCS_GATE} on")
    where = f"{found[0]['metadata']['namespace']}/{found[0]['metadata']['name']}"
    return failed(
        name,
        f"{raycluster['metadata']['name']} keeps the GCS on an embedded volume (rocksdb, alpha) "
        f"but {where} runs without --feature-gates={EMBEDDED_GCS_GATE}=true",
        f"helm upgrade kuberay-operator kuberay/kuberay-operator -n "
        f"{found[0]['metadata']['namespace']} --reuse-values --set-json "
        f'\'featureGates=[{{"name":"{EMBEDDED_GCS_GATE}","enabled":true}}]\' '
        "(keep any gates you already set), or use backend redis",
    )


def check_ray_crds(reader: Reader) -> Check:
    name = "ray-crds"
    seen, missing = [], []
    for crd_name in RAY_CRDS:
        obj = reader.get("CustomResourceDefinition", "", crd_name)
        if obj is None:
            missing.append(crd_name)
            continue
        served = [v["name"] for v in obj["spec"]["versions"] if v.get("served")]
        seen.append(f"{crd_name.split('.')[0]} ({','.join(served)})")
        if "v1" not in served:
            return failed(name, f"{crd_name} serves {served}, not v1", REPLACE_RAY_CRDS)
        if crd_name == "rayclusters.ray.io":
            v1 = next(v for v in obj["spec"]["versions"] if v["name"] == "v1")
            spec = v1["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            if "authOptions" not in spec:
                return failed(
                    name,
                    "rayclusters.ray.io has no spec.authOptions: CRDs older than KubeRay "
                    f"{dotted(MIN_KUBERAY)}, so the API server drops the token settings",
                    REPLACE_RAY_CRDS,
                )
    if missing:
        return failed(
            name,
            f"missing {', '.join(missing)}",
            f"install KubeRay with its CRDs: {INSTALL_KUBERAY}",
        )
    return passed(name, ", ".join(seen))


def check_model_deployments(reader: Reader, release: str | None) -> Check:
    """Only when ModelDeployments are in use: the CRD is installed (the chart's crds/)."""
    name = "modeldeployment"
    obj = reader.get("CustomResourceDefinition", "", MODEL_CRD)
    if obj is None:
        return skipped(name, f"{MODEL_CRD} not installed (serving through the operator unused)")
    selector = "app.kubernetes.io/name=rayfleet,app.kubernetes.io/component=operator"
    operators = listed(reader, "Deployment", None, selector)
    if not operators:
        release = release or "RELEASE"
        fix = f"helm upgrade {release} <chart> --reuse-values --set operator.enabled=true"
        return failed(name, "CRD installed but no rayfleet operator Deployment", fix)
    ready = [o for o in operators if ((o.get("status") or {}).get("readyReplicas") or 0) >= 1]
    where = ", ".join(f"{o['metadata']['namespace']}/{o['metadata']['name']}" for o in operators)
    if not ready:
        ns, op = operators[0]["metadata"]["namespace"], operators[0]["metadata"]["name"]
        return failed(name, f"operator {where} not ready", f"kubectl -n {ns} logs deploy/{op}")
    versions = [v["name"] for v in obj["spec"]["versions"] if v.get("served")]
    return passed(name, f"{MODEL_CRD} ({','.join(versions)}), operator {where} ready")


def find_raycluster(
    reader: Reader, namespace: str, release: str | None
) -> tuple[dict[str, Any] | None, Check]:
    name = "raycluster"
    selector = (
        f"app.kubernetes.io/instance={release}" if release else "app.kubernetes.io/name=rayfleet"
    )
    found = listed(reader, "RayCluster", namespace, selector)
    if not found:
        what = f"release {release}" if release else "any rayfleet release"
        return None, failed(
            name,
            f"no RayCluster of {what} in namespace {namespace}",
            f"helm install {release or 'RELEASE'} <chart> -n {namespace} (or pass -n/--release)",
        )
    if len(found) > 1:
        names = ", ".join(o["metadata"]["name"] for o in found)
        return None, failed(name, f"several RayClusters in {namespace}: {names}", "pass --release")
    rc = found[0]
    status = rc.get("status") or {}
    conditions = {c["type"]: c for c in status.get("conditions") or []}
    provisioned = conditions.get("RayClusterProvisioned", {}).get("status") == "True"
    head_ready = conditions.get("HeadPodReady", {}).get("status") == "True"
    if status.get("state") == "ready" or (provisioned and head_ready):
        workers = status.get("readyWorkerReplicas", 0)
        return rc, passed(name, f"{rc['metadata']['name']} ready ({workers} workers ready)")
    why = next(
        (
            c.get("message") or c.get("reason")
            for c in conditions.values()
            if c.get("status") != "True"
        ),
        None,
    )
    return rc, failed(
        name,
        f"{rc['metadata']['name']} not ready ({why or status.get('state') or 'no status yet'})",
        "see the ray-pods check below; kubectl -n "
        f"{namespace} describe raycluster {rc['metadata']['name']}",
    )


def _events_by_pod(reader: Reader, namespace: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for event in reader.list("Event", namespace):
        out.setdefault((event.get("involvedObject") or {}).get("name", ""), []).append(event)
    return out


def pod_problem(pod: dict[str, Any], events: Iterable[dict[str, Any]]) -> tuple[str, str] | None:
    """(what is wrong, fix) for a Ray pod that is stuck, from its status and events."""
    name = pod["metadata"]["name"]
    status = pod.get("status") or {}
    statuses = status.get("initContainerStatuses", []) + status.get("containerStatuses", [])
    images = {c["name"]: c["image"] for c in pod["spec"].get("containers", [])}
    for cs in statuses:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason", "")
        if reason in ("ImagePullBackOff", "ErrImagePull", "InvalidImageName"):
            image = cs.get("image") or images.get(cs["name"], "?")
            return (
                f"{name}: {reason} for {image}",
                "the image is not published: build and push it from "
                "charts/rayfleet/image/Dockerfile, then set image.repository, image.tag and "
                "image.gpuTag (or imagePullSecrets for a private registry)",
            )
        last = ((cs.get("lastState") or {}).get("terminated") or {}).get("reason")
        now = ((cs.get("state") or {}).get("terminated") or {}).get("reason")
        if "OOMKilled" in (last, now):
            return (
                f"{name}: container {cs['name']} OOMKilled (restarts {cs.get('restartCount', 0)})",
                "raise the group's memory in the values (head.memory / workerGroups[].memory)",
            )
        if reason == "CrashLoopBackOff":
            return (
                f"{name}: {cs['name']} in CrashLoopBackOff",
                f"kubectl -n {pod['metadata']['namespace']} logs {name} -c {cs['name']} --previous",
            )
    if status.get("phase") == "Pending":
        scheduled = next(
            (c for c in status.get("conditions") or [] if c["type"] == "PodScheduled"), {}
        )
        messages = [scheduled.get("message") or ""] + [
            e.get("message") or "" for e in events if e.get("reason") == "FailedScheduling"
        ]
        message = next((m for m in messages if m), "")
        if pods.GPU_RESOURCE in message:
            return (
                f"{name}: Pending, no node with a free {pods.GPU_RESOURCE} ({message[:120]})",
                "add a GPU node pool with the NVIDIA device plugin (or a cluster autoscaler "
                "that can make one), or set that worker group's replicas/minReplicas to 0",
            )
        if scheduled.get("status") == "False" or message:
            return (
                f"{name}: Pending ({message[:160] or scheduled.get('reason', 'unschedulable')})",
                "free or add capacity, or lower the group's cpu/memory in the values",
            )
    return None


def check_ray_pods(reader: Reader, namespace: str, raycluster: dict[str, Any]) -> Check:
    name = "ray-pods"
    cluster = raycluster["metadata"]["name"]
    found = listed(reader, "Pod", namespace, f"ray.io/cluster={cluster}")
    if not found:
        return failed(
            name,
            f"no pods of {cluster} yet",
            f"kubectl -n {namespace} describe raycluster {cluster}; kubectl -n {namespace} "
            "get events",
        )
    events = _events_by_pod(reader, namespace)
    problems = [
        p for pod in found if (p := pod_problem(pod, events.get(pod["metadata"]["name"], [])))
    ]
    if problems:
        what, fix = problems[0]
        more = f" (and {len(problems) - 1} more pods)" if len(problems) > 1 else ""
        return failed(name, what + more, fix)
    return passed(name, f"{len(found)} pods, none stuck")


def check_auth_secret(reader: Reader, namespace: str, raycluster: dict[str, Any]) -> Check:
    name = "auth-secret"
    auth = raycluster["spec"].get("authOptions") or {}
    if auth.get("mode") != "token":
        return Check(
            name=name,
            status=Status.warning,
            detail="Ray token auth is off: whoever reaches the dashboard or GCS can run code",
            fix="helm upgrade ... --set auth.enabled=true",
        )
    # No secretName: KubeRay (>= 1.5.1) creates a Secret named like the cluster.
    secret_name = auth.get("secretName") or raycluster["metadata"]["name"]
    secret = reader.get("Secret", namespace, secret_name)
    create = (
        f"kubectl -n {namespace} create secret generic {secret_name} "
        f"--from-literal={TOKEN_KEY}=$(openssl rand -hex 32)"
    )
    if secret is None and not auth.get("secretName"):
        return failed(
            name,
            f"Secret {namespace}/{secret_name} (KubeRay makes it) missing",
            "KubeRay >= 1.5.1 creates it when it reconciles the cluster: see the "
            "kuberay-operator check and its logs",
        )
    if secret is None:
        return failed(
            name, f"Secret {namespace}/{secret_name} missing (auth.existingSecret)", create
        )
    if TOKEN_KEY not in (secret.get("data") or {}) and TOKEN_KEY not in (
        secret.get("stringData") or {}
    ):
        keys = ", ".join(sorted(secret.get("data") or {})) or "none"
        return failed(
            name,
            f"Secret {namespace}/{secret_name} has no key {TOKEN_KEY} (keys: {keys})",
            f"kubectl -n {namespace} delete secret {secret_name} && {create}",
        )
    return passed(name, f"Secret {namespace}/{secret_name} has {TOKEN_KEY}")


# --------------------------------------------------------------------------- storage


def storage_uri(reader: Reader, namespace: str, raycluster: dict[str, Any]) -> str | None:
    """RAYFLEET_STORAGE as the Ray pods see it: their env, else their envFrom ConfigMaps."""
    head = head_container(raycluster)
    for var in head.get("env") or []:
        if var["name"] == STORAGE_ENV and var.get("value"):
            return var["value"]
    for source in head.get("envFrom") or []:
        ref = source.get("configMapRef") or {}
        if not ref.get("name"):
            continue
        config_map = reader.get("ConfigMap", namespace, ref["name"])
        value = ((config_map or {}).get("data") or {}).get(STORAGE_ENV)
        if value:
            return value
    return None


def storage_probe_pod(raycluster: dict[str, Any], namespace: str, uri: str) -> dict[str, Any]:
    """A Pod that runs the storage preflight with the Ray pods' identity and environment: their
    image, ServiceAccount, env, envFrom and pull secrets; locked down as they are; gone after
    `activeDeadlineSeconds` at the latest. Its result comes back as the termination message."""
    template = raycluster["spec"]["headGroupSpec"]["template"]
    spec, head = template["spec"], head_container(raycluster)
    cluster = raycluster["metadata"]["name"]
    instance = raycluster["metadata"].get("labels", {}).get("app.kubernetes.io/instance", cluster)
    container = {
        "name": "probe",
        "image": head["image"],
        "imagePullPolicy": head.get("imagePullPolicy", "IfNotPresent"),
        "command": ["python", "-m", "rayfleet.k8s.doctor", "probe-storage", uri],
        "env": [e for e in head.get("env") or [] if e["name"] != pods.SERVE_TOKEN_ENV]
        + [{"name": "HOME", "value": pods.TMP}],
        "envFrom": head.get("envFrom") or [],
        "resources": pods.resources("500m", "512Mi"),
        "securityContext": pods.container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": "tmp", "mountPath": pods.TMP}],
    }
    pod_spec = {
        "restartPolicy": "Never",
        "activeDeadlineSeconds": 300,
        "serviceAccountName": spec.get("serviceAccountName", "default"),
        "securityContext": pods.pod_security_context(),
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}],
        **{k: spec[k] for k in ("imagePullSecrets", "automountServiceAccountToken") if k in spec},
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{cluster[:40]}-doctor-{uuid.uuid4().hex[:6]}",
            "namespace": namespace,
            "labels": pods.labels(instance, "doctor"),
        },
        "spec": pod_spec,
    }


def _probe_outcome(pod: dict[str, Any]) -> tuple[bool, str] | None:
    """(succeeded, message) once the probe pod finished or is stuck; None while it runs."""
    status = pod.get("status") or {}
    for cs in status.get("containerStatuses") or []:
        state = cs.get("state") or {}
        if "terminated" in state:
            term = state["terminated"]
            return term.get("exitCode") == 0, (
                term.get("message") or term.get("reason", "")
            ).strip()
        stuck = pod_problem(pod, [])
        if stuck:
            return False, stuck[0]
    if status.get("phase") in ("Succeeded", "Failed"):
        return status["phase"] == "Succeeded", status.get("message") or status.get("reason", "")
    return None


def check_storage(
    reader: Reader,
    namespace: str,
    raycluster: dict[str, Any],
    uri: str | None = None,
    *,
    timeout_s: float = 180,
    poll_s: float = 2,
    sleep: Callable[[float], None] = time.sleep,
) -> Check:
    name = "storage"
    uri = uri or storage_uri(reader, namespace, raycluster)
    if not uri:
        return skipped(name, "no RAYFLEET_STORAGE in the Ray pods (storage.bucket empty)")
    pod = storage_probe_pod(raycluster, namespace, uri)
    pod_name = pod["metadata"]["name"]
    sa = pod["spec"]["serviceAccountName"]
    try:
        reader.create("Pod", namespace, pod)
        deadline = time.monotonic() + timeout_s
        outcome = None
        while outcome is None and time.monotonic() < deadline:
            current = reader.get("Pod", namespace, pod_name)
            outcome = _probe_outcome(current) if current else (False, "probe pod vanished")
            if outcome is None:
                sleep(poll_s)
    finally:
        try:
            reader.delete("Pod", namespace, pod_name)
        except RayfleetError:
            pass  # activeDeadlineSeconds ends it anyway
    if outcome is None:
        return failed(
            name,
            f"probe pod {pod_name} gave no answer in {timeout_s:.0f} s",
            f"kubectl -n {namespace} get events --field-selector involvedObject.name={pod_name}",
        )
    ok, message = outcome
    if ok:
        return passed(name, f"{uri} writable from the cluster as ServiceAccount {sa} ({message})")
    return failed(
        name,
        f"{uri} from the cluster as ServiceAccount {sa}: {message}",
        f"give ServiceAccount {namespace}/{sa} access (eks.amazonaws.com/role-arn for IRSA, "
        "iam.gke.io/gcp-service-account for Workload Identity: serviceAccount.annotations) "
        "and check the bucket and storage.* values",
    )


def probe_storage(uri: str, termination_log: str = TERMINATION_LOG) -> int:
    """What the probe pod runs: the storage preflight; one line to stdout and the
    termination message. Exit 0 when the location is writable."""

    try:
        seconds = preflight(parse_uri(uri))
        line, code = f"write/read/delete probe ok in {seconds:.2f} s", 0
    except RayfleetError as exc:
        line, code = str(exc), 1
    print(line, flush=True)
    try:
        with open(termination_log, "w") as f:
            f.write(line[:4000])
    except OSError:
        pass  # not in a pod: stdout is enough
    return code


# --------------------------------------------------------------------------- dashboard


def check_dashboard(
    address: str | None = None,
    context: str | None = None,
    token_file: Any = None,
    *,
    insecure: bool = False,
    namespace: str = "NAMESPACE",
    raycluster: dict[str, Any] | None = None,
    timeout_s: float = 5,
) -> Check:
    """GET <dashboard>/api/version with the token, the address and token resolved as every
    rayfleet command resolves them (--address, --context, RAY_ADDRESS, the current context)."""
    import httpx

    name = "dashboard"
    cluster = raycluster["metadata"]["name"] if raycluster else "CLUSTER"
    forward = f"kubectl -n {namespace} port-forward svc/{cluster}-head-svc 8265:8265"
    try:
        target = resolve(address, context, token_file, insecure=insecure)
    except RayfleetError as exc:
        if "no Ray cluster given" in str(exc):
            return skipped(name, f"no address given; run `{forward}` and pass --address")
        return failed(name, str(exc), "fix the address/context, or pass --address")
    url = f"{target.address}/api/version"
    try:
        reply = httpx.get(url, headers=target.headers(), timeout=timeout_s)
    except httpx.HTTPError as exc:
        return failed(name, f"{url}: {type(exc).__name__}", f"start the port-forward: {forward}")
    auth = (raycluster or {}).get("spec", {}).get("authOptions") or {}
    secret = auth.get("secretName") or cluster  # KubeRay names its Secret like the cluster
    export = (
        f"export RAY_AUTH_TOKEN=$(kubectl -n {namespace} get secret {secret} "
        f"-o jsonpath='{{.data.{TOKEN_KEY}}}' | base64 -d)"
    )
    if reply.status_code == 401:
        return failed(name, f"{url}: 401, no token sent", export)
    if reply.status_code == 403:
        where = target.token.source if target.token else "?"
        return failed(name, f"{url}: 403, the token from {where} is not this cluster's", export)
    if reply.status_code != 200:
        return failed(name, f"{url}: HTTP {reply.status_code}", f"check {target.address}")
    try:
        version = reply.json().get("ray_version", "?")
    except ValueError:
        version = "?"
    sent = "with the token" if target.token else "without a token"
    return passed(name, f"{target.address} answers {sent}, Ray {version}")


# --------------------------------------------------------------------------- all of them


def run_checks(
    reader: Reader,
    namespace: str,
    release: str | None = None,
    *,
    storage: bool = True,
    storage_uri_override: str | None = None,
    storage_timeout_s: float = 180,
    dashboard: Callable[[dict[str, Any] | None], Check] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Report:
    """Every check in order; a failed prerequisite skips what rests on it."""
    checks = [check_api(reader)]
    if not checks[0].ok:
        rest = (
            "kuberay-operator", "ray-crds", "modeldeployment", "raycluster", "ray-pods",
            "auth-secret", "storage",
        )  # fmt: skip
        checks += [skipped(n, "API not reachable") for n in rest]
        if dashboard is not None:
            checks.append(dashboard(None))
        return Report(checks=checks)
    checks += [check_kuberay(reader), check_ray_crds(reader)]
    checks.append(check_model_deployments(reader, release))
    raycluster, found = find_raycluster(reader, namespace, release)
    checks.append(found)
    if raycluster is None:
        for n in ("ray-pods", "auth-secret", "storage"):
            checks.append(skipped(n, "no RayCluster"))
    else:
        checks.append(check_ray_pods(reader, namespace, raycluster))
        checks.append(check_auth_secret(reader, namespace, raycluster))
        if (gcs := check_gcs_fault_tolerance(reader, raycluster)) is not None:
            checks.append(gcs)
        if storage:
            checks.append(
                check_storage(
                    reader,
                    namespace,
                    raycluster,
                    storage_uri_override,
                    timeout_s=storage_timeout_s,
                    sleep=sleep,
                )
            )
        else:
            checks.append(skipped("storage", "--skip-storage"))
    if dashboard is not None:
        checks.append(dashboard(raycluster))
    return Report(checks=checks)


class ClusterReader(KubeAPI):
    """KubeAPI plus the kinds doctor reads (and its probe Pod's create/delete)."""

    _CORE = {"Pod": "pod", "Secret": "secret", "ConfigMap": "config_map"}

    def version(self) -> str:
        info = self._call(
            "the API server's version", kubernetes.client.VersionApi(self.api).get_code
        )
        return info.get("gitVersion", "?")

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        core = kubernetes.client.CoreV1Api
        try:
            if kind in self._CORE:
                fn = getattr(core(self.api), f"read_namespaced_{self._CORE[kind]}")
                return self._call(f"{kind} {namespace}/{name}", fn, name, namespace)
            if kind == "CustomResourceDefinition":
                api = kubernetes.client.ApiextensionsV1Api(self.api)
                return self._call(f"CRD {name}", api.read_custom_resource_definition, name)
        except NotFoundError:
            return None
        return super().get(kind, namespace, name)

    def list(
        self, kind: str, namespace: str | None, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        kwargs = {"label_selector": label_selector} if label_selector else {}
        where = f"{kind} in {namespace or 'all namespaces'}"
        if kind == "RayCluster":
            api = kubernetes.client.CustomObjectsApi(self.api)
            out = self._call(
                where, api.list_namespaced_custom_object, "ray.io", "v1", namespace,
                "rayclusters", **kwargs,
            )  # fmt: skip
        elif kind == "Deployment" and namespace is None:
            api = kubernetes.client.AppsV1Api(self.api)
            out = self._call(where, api.list_deployment_for_all_namespaces, **kwargs)
        elif kind in ("Pod", "Event"):
            api = kubernetes.client.CoreV1Api(self.api)
            fn = api.list_namespaced_pod if kind == "Pod" else api.list_namespaced_event
            out = self._call(where, fn, namespace, **kwargs)
        else:
            return super().list(kind, namespace, label_selector)
        return list(out.get("items") or [])

    def create(self, kind: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        if kind == "Pod":
            api = kubernetes.client.CoreV1Api(self.api)
            what = f"creating Pod {namespace}/{body['metadata']['name']}"
            return self._call(
                what, api.create_namespaced_pod, namespace, body, _headers=JSON_HEADERS
            )
        return super().create(kind, namespace, body)

    def delete(self, kind: str, namespace: str, name: str) -> None:
        if kind != "Pod":
            raise RayfleetError(f"doctor deletes only its probe Pod, not {kind}")
        api = kubernetes.client.CoreV1Api(self.api)
        self._call(f"deleting Pod {namespace}/{name}", api.delete_namespaced_pod, name, namespace)


def main(argv: list[str] | None = None) -> int:
    """`python -m rayfleet.k8s.doctor probe-storage URI` (what the probe pod runs)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "probe-storage":
        sys.stderr.write("usage: python -m rayfleet.k8s.doctor probe-storage URI\n")
        return 2
    return probe_storage(args[1])


if __name__ == "__main__":
    sys.exit(main())
