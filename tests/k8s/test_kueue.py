"""Kueue: the example queue objects validate against Kueue v0.19.2's CRDs, and a spec with
`scheduling.queue` renders a suspended, labelled RayJob whose pods fit that queue's quotas."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from kubernetes.utils import parse_quantity

from rayfleet.k8s import RenderOptions, read_spec_file, render_objects
from rayfleet.k8s.rayjob import PRIORITY_LABEL, QUEUE_LABEL
from tests.k8s.objects import load_docs
from tests.k8s.schemas import REPO, validate

pytestmark = pytest.mark.k8s
EXAMPLE = REPO / "manifests" / "examples" / "kueue"
QUEUED = ("spec.scheduling.queue=team-a", "spec.scheduling.priorityClass=team-a-high")


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)


def kueue_objects() -> list[dict]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed for `kubectl kustomize` (it works offline)"
    done = subprocess.run(["kubectl", "kustomize", str(EXAMPLE)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return load_docs(done.stdout)


def pod_sets(job: dict) -> list[tuple[int, dict, list[dict]]]:
    """(count, requests, tolerations) per pod set, as Kueue builds a RayJob's Workload: the head,
    each worker group, and (K8sJobMode) the submitter."""
    spec = job["spec"]
    cluster = spec["rayClusterSpec"]
    groups = [(1, cluster["headGroupSpec"]["template"])]
    groups += [(g["replicas"], g["template"]) for g in cluster["workerGroupSpecs"]]
    groups.append((1, spec["submitterPodTemplate"]))
    out = []
    for count, template in groups:
        requests: dict[str, float] = {}
        for c in template["spec"]["containers"]:
            res = c.get("resources", {})
            for name, value in (res.get("limits", {}) | res.get("requests", {})).items():
                requests[name] = requests.get(name, 0) + float(parse_quantity(value))
        out.append((count, requests, template["spec"].get("tolerations", [])))
    return out


def _tolerates(tolerations: list[dict], taint: dict) -> bool:
    return any(
        t.get("key") == taint["key"]
        and t.get("effect", taint["effect"]) == taint["effect"]
        and (t.get("operator") == "Exists" or t.get("value") == taint.get("value"))
        for t in tolerations
    )


def assign_flavors(job: dict, queue: dict, flavors: dict[str, dict]) -> list[str]:
    """Kueue's flavor assignment, reduced to what the example uses: per pod set the first
    flavor of the (single) resource group whose taints it tolerates and whose remaining nominal
    quota holds count x requests of every covered resource. AssertionError when none does."""
    (group,) = queue["spec"]["resourceGroups"]
    used: dict[tuple[str, str], float] = {}
    chosen = []
    for count, requests, tolerations in pod_sets(job):
        assert set(requests) <= set(group["coveredResources"]), requests
        for flavor in group["flavors"]:
            taints = flavors[flavor["name"]]["spec"].get("nodeTaints", [])
            if not all(_tolerates(tolerations, t) for t in taints):
                continue
            quota = {
                r["name"]: float(parse_quantity(r["nominalQuota"])) for r in flavor["resources"]
            }
            need = {r: count * v for r, v in requests.items()}
            if all(used.get((flavor["name"], r), 0) + v <= quota[r] for r, v in need.items()):
                for r, v in need.items():
                    used[(flavor["name"], r)] = used.get((flavor["name"], r), 0) + v
                chosen.append(flavor["name"])
                break
        else:
            raise AssertionError(
                f"pod set {count} x {requests} fits no flavor of {queue['metadata']['name']}"
            )
    return chosen


def test_example_validates_against_the_kueue_crds():
    objects = kueue_objects()
    assert sorted(o["kind"] for o in objects) == [
        "ClusterQueue", "LocalQueue", "ResourceFlavor", "ResourceFlavor",
        "WorkloadPriorityClass", "WorkloadPriorityClass",
    ]  # fmt: skip
    for obj in objects:
        validate(obj)


def test_a_typo_in_a_kueue_object_fails_validation():
    queue = next(o for o in kueue_objects() if o["kind"] == "ClusterQueue")
    queue["spec"]["resourceGroup"] = queue["spec"].pop("resourceGroups")
    with pytest.raises(AssertionError, match="resourceGroup"):
        validate(queue)


@pytest.mark.parametrize("path", ["jobs/digits/train.yaml", "jobs/digits/sweep.yaml"])
def test_queued_rayjob_is_suspended_labelled_and_valid(path):
    objects = render_objects(read_spec_file(path, QUEUED), RenderOptions())
    job = next(o for o in objects if o["kind"] == "RayJob")
    for obj in objects:
        validate(obj)
    assert job["metadata"]["labels"][QUEUE_LABEL] == "team-a"
    assert job["metadata"]["labels"][PRIORITY_LABEL] == "team-a-high"
    spec = job["spec"]
    assert spec["suspend"] is True
    # Kueue's webhook refuses a managed RayJob that keeps its cluster, and KubeRay refuses a
    # suspended one without shutdownAfterJobFinishes: no deletion rules under a queue.
    assert spec["shutdownAfterJobFinishes"] is True
    assert "deletionStrategy" not in spec
    assert spec["rayClusterSpec"]["enableInTreeAutoscaling"] is False  # Kueue refuses autoscaling
    assert all(g["groupName"] != "head" for g in spec["rayClusterSpec"]["workerGroupSpecs"])


def test_queued_rayjob_fits_the_example_queue():
    objects = kueue_objects()
    queue = next(o for o in objects if o["kind"] == "ClusterQueue")
    flavors = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ResourceFlavor"}
    assert (
        queue["spec"]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        == (next(o for o in objects if o["kind"] == "LocalQueue")["metadata"]["namespace"])
    )
    cpu = render_objects(read_spec_file("jobs/digits/train.yaml", QUEUED), RenderOptions())
    job = next(o for o in cpu if o["kind"] == "RayJob")
    assert assign_flavors(job, queue, flavors) == ["cpu-nodes"] * 3
    gpu = render_objects(
        read_spec_file("jobs/digits/train.yaml", (*QUEUED, "spec.scaling.useGpu=true")),
        RenderOptions(),
    )
    job = next(o for o in gpu if o["kind"] == "RayJob")
    assert assign_flavors(job, queue, flavors) == ["cpu-nodes", "gpu-nodes", "cpu-nodes"]
    # Bigger than the quota: Kueue would keep it queued; the check says so.
    big = render_objects(
        read_spec_file("jobs/digits/train.yaml", (*QUEUED, "spec.scaling.numWorkers=40")),
        RenderOptions(),
    )
    job = next(o for o in big if o["kind"] == "RayJob")
    with pytest.raises(AssertionError, match="fits no flavor"):
        assign_flavors(job, queue, flavors)


def test_model_deployment_carries_the_queue_labels():
    objects = render_objects(read_spec_file("jobs/digits/serve.yaml", QUEUED), RenderOptions())
    service = next(o for o in objects if o["kind"] == "RayService")
    validate(service)
    assert service["metadata"]["labels"][QUEUE_LABEL] == "team-a"
    assert service["metadata"]["labels"][PRIORITY_LABEL] == "team-a-high"


def test_bad_scheduling_fails_on_validate():
    from rayfleet.errors import SpecError

    with pytest.raises(SpecError, match="not a Kueue object name"):
        read_spec_file("jobs/digits/train.yaml", ("spec.scheduling.queue=Team_A",))
    with pytest.raises(SpecError, match="set scheduling.queue"):
        read_spec_file("jobs/digits/train.yaml", ("spec.scheduling.priorityClass=high",))


def test_chart_puts_its_raycluster_in_a_queue():
    from tests.k8s.conftest import chart_objects, render_chart

    values = {"rayCluster": {"queue": "team-a", "priorityClass": "team-a-high"}}
    cluster = next(o for o in chart_objects(render_chart(values)) if o["kind"] == "RayCluster")
    validate(cluster)
    assert cluster["metadata"]["labels"][QUEUE_LABEL] == "team-a"
    assert cluster["metadata"]["labels"][PRIORITY_LABEL] == "team-a-high"


# ------------------------------------------------------------ where a queued workload stands


def _queued(uid="u-1", queue="team-a"):
    labels = {QUEUE_LABEL: queue} if queue else {}
    return {"metadata": {"name": "digits", "uid": uid, "labels": labels}}


def _workload(owner_uid="u-1", *conditions, cluster_queue=None):
    status: dict = {
        "conditions": [
            dict(zip(("type", "status", "reason", "message"), c, strict=True)) for c in conditions
        ]
    }
    if cluster_queue:
        status["admission"] = {"clusterQueue": cluster_queue}
    return {
        "metadata": {
            "name": "rayjob-digits-x",
            "ownerReferences": [{"kind": "RayJob", "uid": owner_uid}],
        },
        "status": status,
    }


def test_admission_reads_kueues_workload_conditions():
    from rayfleet.k8s.kueue import admission

    no_quota = (
        "QuotaReserved",
        "False",
        "Pending",
        "couldn't assign flavors to pod set head: insufficient unused quota for cpu in flavor "
        "cpu-nodes, 4 more needed",
    )
    assert admission(_queued(queue=None), []).text() == "-"
    assert admission(_queued(), []).text().startswith("waiting: no Workload yet in queue team-a")
    other = _workload("someone-else", ("Admitted", "True", "Admitted", ""), cluster_queue="cq")
    assert admission(_queued(), [other]).state == "waiting"  # not ours
    waiting = admission(_queued(), [other, _workload("u-1", no_quota)])
    assert waiting.state == "waiting" and "insufficient unused quota for cpu" in waiting.detail
    admitted = _workload(
        "u-1",
        ("QuotaReserved", "True", "QuotaReserved", ""),
        ("Admitted", "True", "Admitted", "The workload is admitted"),
        cluster_queue="team-a-cq",
    )
    assert admission(_queued(), [admitted]).text() == "admitted: team-a -> team-a-cq"
    evicted = _workload(
        "u-1",
        ("Admitted", "False", "NoReservation", ""),
        (
            "Evicted",
            "True",
            "Preempted",
            "Preempted to accommodate a workload with higher priority",
        ),
    )
    got = admission(_queued(), [evicted])
    assert got.state == "evicted" and got.detail.startswith("Preempted: Preempted to accommodate")
    finished = _workload("u-1", ("Finished", "True", "Succeeded", "Job finished successfully"))
    assert admission(_queued(), [finished]).text() == "finished: Job finished successfully"
