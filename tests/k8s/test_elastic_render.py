"""`rayfleet render` of elastic TrainJobs and sweeps: the worker group spans minWorkers..
numWorkers (per concurrent trial) and still passes the strict KubeRay schema."""

from __future__ import annotations

import pytest

from rayfleet.k8s import RenderOptions, read_spec_file, render_objects
from tests.k8s.objects import by_kind
from tests.k8s.schemas import REPO, validate

pytestmark = pytest.mark.k8s


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)


def _group(path: str, overrides=()) -> dict:
    (job,) = by_kind(
        render_objects(read_spec_file(path, tuple(overrides)), RenderOptions()), "RayJob"
    )
    validate(job)
    (group,) = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    return group


def test_elastic_trainjob_worker_group_spans_min_to_num_workers():
    group = _group(
        "jobs/digits/train.yaml", ["spec.scaling.numWorkers=4", "spec.scaling.minWorkers=2"]
    )
    assert (group["minReplicas"], group["replicas"], group["maxReplicas"]) == (2, 4, 4)


def test_fixed_trainjob_worker_group_stays_fixed():
    group = _group("jobs/digits/train.yaml", ["spec.scaling.minWorkers=2"])
    assert group["minReplicas"] == group["replicas"] == group["maxReplicas"] == 2


def test_elastic_sweep_scales_the_range_by_concurrent_trials(tmp_path):
    sweep = (REPO / "jobs/digits/sweep.yaml").read_text()
    sweep = sweep.replace(
        "scaling.numWorkers: 1", "scaling.numWorkers: 3\n      scaling.minWorkers: 1"
    )
    (tmp_path / "sweep.yaml").write_text(sweep)
    (tmp_path / "train.yaml").write_text((REPO / "jobs/digits/train.yaml").read_text())
    group = _group(str(tmp_path / "sweep.yaml"))
    # maxConcurrentTrials 2: room for two trials at their most, kept for two at their fewest.
    assert (group["minReplicas"], group["replicas"], group["maxReplicas"]) == (2, 6, 6)


def _chart_groups(values: dict) -> dict[str, dict]:
    from tests.k8s.conftest import chart_objects, render_chart

    (cluster,) = by_kind(chart_objects(render_chart(values)), "RayCluster")
    validate(cluster)
    return {g["groupName"]: g["template"]["spec"] for g in cluster["spec"]["workerGroupSpecs"]}


def _chart_group_env(values: dict) -> dict[str, dict]:
    """Each worker group's Ray container environment."""
    groups = _chart_groups(values)
    return {
        name: {e["name"]: e.get("value") for e in spec["containers"][0].get("env", [])}
        for name, spec in groups.items()
    }


SPOT = {
    "aws": ({"eks.amazonaws.com/capacityType": "SPOT"}, None),
    "karpenter": ({"karpenter.sh/capacity-type": "spot"}, None),
    "gcp": ({"cloud.google.com/gke-spot": "true"}, "cloud.google.com/gke-spot"),
    "azure": (
        {"kubernetes.azure.com/scalesetpriority": "spot"},
        "kubernetes.azure.com/scalesetpriority",
    ),
}


@pytest.mark.parametrize("cloud", sorted(SPOT))
def test_chart_preemptible_group_selects_the_clouds_spot_nodes(cloud):
    selector, taint = SPOT[cloud]
    values = {
        "preemptible": {"cloud": cloud},
        "workerGroups": {
            "cpu": {"preemptible": True, "nodeSelector": {"pool": "train"}},
            "gpu": {"preemptible": True},
        },
    }
    groups = _chart_groups(values)
    assert groups["cpu"]["nodeSelector"] == {"pool": "train", **selector}
    keys = [t["key"] for t in groups["gpu"].get("tolerations", [])]
    assert "nvidia.com/gpu" in keys  # the group's own tolerations stay
    assert (taint in keys) if taint else len(keys) == 1


def test_chart_groups_are_on_demand_unless_marked():
    groups = _chart_groups({})
    assert "nodeSelector" not in groups["cpu"] and "tolerations" not in groups["cpu"]


def test_preemptible_groups_tell_ray_their_nodes_are_spot():
    """RAY_NODE_MARKET_TYPE=spot becomes Ray's `ray.io/market-type` node label, what a run's
    usage reads to price its workers at spot rates (rayfleet.usage.node_facts); Ray refuses
    custom labels under ray.io/, so it is not a KubeRay `labels` entry. Unmarked groups say
    nothing (the price table's market holds)."""
    env = _chart_group_env({"workerGroups": {"cpu": {"preemptible": True}}})
    assert env["cpu"]["RAY_NODE_MARKET_TYPE"] == "spot" and "RAY_NODE_MARKET_TYPE" not in env["gpu"]


def test_chart_refuses_an_unknown_cloud():
    from tests.k8s.conftest import render_chart

    with pytest.raises(Exception, match="preemptible"):
        render_chart({"preemptible": {"cloud": "oracle"}})


def test_chart_notes_tell_how_elastic_jobs_use_preemptible_groups():
    from tests.k8s.conftest import render_chart

    def notes(values):
        return next(t for p, t in render_chart(values).items() if p.endswith("NOTES.txt"))

    marked = notes({"workerGroups": {"cpu": {"preemptible": True}}})
    assert "Preemptible worker groups (cpu, aws spot nodes)" in marked
    assert "scaling.minWorkers" in marked
    assert "Preemptible" not in notes({})
