"""Where a queued workload stands in Kueue: admitted, waiting (and why), or evicted.

Kueue keeps one `Workload` (kueue.x-k8s.io) per queued RayJob or RayService, owned by it
(an ownerReference with the object's uid), and writes its progress there as conditions:
`QuotaReserved` (quota found in a ClusterQueue, or False with the reason it was not:
"couldn't assign flavors to pod set head: insufficient unused quota for cpu ..."), `Admitted`,
`Evicted` (preempted by a higher priority, or the queue stopped) and `Finished`. A queued
RayJob sits suspended with no pods while it waits, so this is the only place that says why
nothing runs. Pure: the caller lists the Workloads (`kubectl rayfleet status`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rayfleet.k8s.rayjob import QUEUE_LABEL

WORKLOAD_GROUP = "kueue.x-k8s.io"
WORKLOAD_VERSION = "v1beta2"  # Kueue 0.19 stores v1beta2 and still serves v1beta1
WORKLOAD_PLURAL = "workloads"
_MESSAGE_LIMIT = 120


@dataclass(frozen=True)
class Admission:
    state: str  # "-" (not queued), "waiting", "admitted", "evicted", "finished", "unknown"
    detail: str = ""

    def text(self) -> str:
        return f"{self.state}: {self.detail}" if self.detail else self.state


def _condition(workload: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for condition in (workload.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind:
            return condition
    return None


def _is_true(condition: dict[str, Any] | None) -> bool:
    return bool(condition) and condition.get("status") == "True"


def _short(message: str | None) -> str:
    message = " ".join((message or "").split())
    return message if len(message) <= _MESSAGE_LIMIT else message[: _MESSAGE_LIMIT - 3] + "..."


def workload_of(obj: dict[str, Any], workloads: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The Workload Kueue made for `obj` (by owner uid), if any."""
    uid = obj["metadata"].get("uid")
    for workload in workloads:
        owners = workload["metadata"].get("ownerReferences") or []
        if uid and any(ref.get("uid") == uid for ref in owners):
            return workload
    return None


def admission(obj: dict[str, Any], workloads: Sequence[dict[str, Any]]) -> Admission:
    """Where `obj` (a RayJob or RayService) stands in its Kueue queue."""
    queue = (obj["metadata"].get("labels") or {}).get(QUEUE_LABEL)
    if not queue:
        return Admission("-")
    workload = workload_of(obj, workloads)
    if workload is None:
        return Admission("waiting", f"no Workload yet in queue {queue} (is Kueue running?)")
    status = workload.get("status") or {}
    cluster_queue = (status.get("admission") or {}).get("clusterQueue", "")
    if _is_true(finished := _condition(workload, "Finished")):
        return Admission("finished", _short(finished.get("message")))
    evicted = _condition(workload, "Evicted")
    if _is_true(evicted):
        return Admission("evicted", _short(f"{evicted.get('reason')}: {evicted.get('message')}"))
    if _is_true(_condition(workload, "Admitted")):
        return Admission("admitted", f"{queue} -> {cluster_queue}" if cluster_queue else queue)
    reserved = _condition(workload, "QuotaReserved")
    if _is_true(reserved):
        return Admission("waiting", f"quota reserved in {cluster_queue}; admission checks pending")
    if reserved is not None:
        return Admission("waiting", _short(reserved.get("message") or reserved.get("reason")))
    return Admission("waiting", f"in queue {queue}")
