"""`spec.scheduling` (which Kueue queue admits the job, at which priority) and `spec.lifecycle`
(how long a RayJob may run, how often it is retried, how long its cluster outlives it).

Both only shape what `rayfleet render` writes for a cluster; a local `rayfleet run` ignores
them. Names are Kubernetes label values (Kueue reads them from the RayJob's or RayService's
labels), so the same rule as a label value holds here: a typo fails on validate, not after
a job has waited in a queue that does not exist.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field, WithJsonSchema, model_validator

from rayfleet.specs.base import SpecModel

# A Kueue LocalQueue / WorkloadPriorityClass name that is also a valid label value.
_QUEUE_RE = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")
MAX_QUEUE_NAME = 63


def _check_queue_name(value: str) -> str:
    if len(value) > MAX_QUEUE_NAME or not _QUEUE_RE.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a Kueue object name: use lowercase letters, digits, '-' and '.' "
            f"(at most {MAX_QUEUE_NAME} characters, starting and ending with a letter or digit)"
        )
    return value


QueueName = Annotated[
    str,
    AfterValidator(_check_queue_name),
    WithJsonSchema(
        {"type": "string", "pattern": f"^{_QUEUE_RE.pattern}$", "maxLength": MAX_QUEUE_NAME}
    ),
]


class SchedulingSpec(SpecModel):
    """Kueue admission: the rendered RayJob (or RayService) carries the queue label, and a
    RayJob starts suspended so Kueue admits its whole cluster at once (gang admission)."""

    queue: QueueName | None = Field(
        default=None,
        description="Kueue LocalQueue in the job's namespace (label kueue.x-k8s.io/queue-name).",
    )
    priority_class: QueueName | None = Field(
        default=None,
        description="Kueue WorkloadPriorityClass (label kueue.x-k8s.io/priority-class); "
        "needs queue.",
    )

    @model_validator(mode="after")
    def _priority_needs_queue(self) -> SchedulingSpec:
        if self.priority_class and not self.queue:
            raise ValueError("priorityClass is set but queue is not; Kueue ignores a priority "
                             "outside a queue: set scheduling.queue")  # fmt: skip
        return self


class LifecycleSpec(SpecModel):
    """What a rendered RayJob does over time; unset fields take `rayfleet render`'s flags."""

    active_deadline_seconds: int | None = Field(
        default=None,
        ge=1,
        le=2**31 - 1,
        description="Seconds the RayJob may run (each attempt) before KubeRay stops it.",
    )
    backoff_limit: int | None = Field(
        default=None,
        ge=0,
        le=100,
        description="Retries of the whole RayJob on a new cluster; a retry resumes "
        "(TrainJob: its newest verified checkpoint; SweepJob: its trials.json).",
    )
    keep_failed_cluster_seconds: int | None = Field(
        default=None,
        ge=0,
        le=2**31 - 1,
        description="Seconds a failed job's cluster is kept for debugging (not in a queue: "
        "Kueue needs the cluster deleted when the job ends).",
    )
