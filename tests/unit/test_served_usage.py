"""Busy time of a `rayfleet serve` deployment (issue 19): the replicas' cumulative reports
folded into its usage.json by the meter (rayfleet.usage.ServedUsage)."""

from __future__ import annotations

import pytest

from rayfleet import usage
from rayfleet.usage import DeploymentUsage, ServedUsage


def report(worker: str, cpu: float, at: float, gpu: float | None = None, **more) -> dict:
    return {"worker": worker, "replica": f"r-{worker}", "cpuS": cpu, "gpuS": gpu, "at": at, **more}


def test_latest_report_per_replica_process_wins_and_a_gone_replica_keeps_its_last():
    first = usage.merge_replica_busy([], [report("a", 1.0, 10), report("b", 2.0, 10)])
    # a reports again (later, more), an older report of a arrives late, b went away.
    merged = usage.merge_replica_busy(
        first, [report("a", 3.0, 20), report("a", 2.5, 15), report("c", 0.5, 20)]
    )
    assert {b.worker: b.cpu_s for b in merged} == {"a": 3.0, "b": 2.0, "c": 0.5}
    assert usage.busy_sums(merged) == (5.5, None)


def test_bad_reports_are_skipped_and_gpu_sums_only_measured_replicas():
    merged = usage.merge_replica_busy(
        [],
        [
            report("a", 1.0, 10, gpu=4.0),
            report("b", 2.0, 10),  # CPU replica (or no NVML): GPU not measured
            {"worker": "x", "cpuS": -1, "at": 1},  # refused by the model
            {"cpuS": 1.0, "at": 1},  # no worker
            report("d", 1.0, 10, extra="a newer replica's field"),
        ],
    )
    assert {b.worker for b in merged} == {"a", "b", "d"}
    assert usage.busy_sums(merged) == (4.0, 4.0)


def test_the_meter_records_busy_time_next_to_requested_and_summary_shows_the_share():
    counts, clock, stored = iter([1, 1, 2]), iter([0.0, 60.0, 120.0]), []
    batches = iter(
        [
            [report("a", 0.0, 0)],
            [report("a", 6.0, 60)],
            [report("a", 9.0, 118), report("b", 3.0, 118)],
        ]
    )
    meter = usage.ReplicaMeter(
        "digits",
        lambda: next(counts),
        stored.append,
        cpus_per_replica=0.5,
        clock=lambda: next(clock),
        busy=lambda: next(batches),
    )
    for _ in range(3):
        meter.tick()
    last = stored[-1]
    assert isinstance(last, ServedUsage) and last.basis == usage.SERVED_BASIS
    assert last.cpu_s == 60 and last.busy_cpu_s == 12.0 and last.busy_gpu_s is None
    doc = last.model_dump(mode="json", by_alias=True)
    assert doc["busyCpuS"] == 12.0 and {b["worker"] for b in doc["busy"]} == {"a", "b"}
    assert usage.summary(doc)[1] == "busy CPU 12.0 s (20% of requested)"

    # A later session resumes the stored document: its replicas' figures are kept.
    again = usage.ReplicaMeter(
        "digits",
        lambda: 1,
        stored.append,
        cpus_per_replica=0.5,
        clock=lambda: 200.0,
        busy=lambda: [report("z", 1.0, 199)],
    )
    again.resume(ServedUsage.model_validate(doc))
    assert again.tick().busy_cpu_s == 13.0


def test_unreadable_busy_reports_keep_the_last_figures_and_usage_is_still_stored(caplog):
    def broken():
        raise ConnectionError("gcs gone")

    meter = usage.ReplicaMeter(
        "digits", lambda: 1, lambda u: None, cpus_per_replica=1, clock=lambda: 5.0, busy=broken
    )
    meter.busy = usage.merge_replica_busy([], [report("a", 2.0, 1)])
    found = meter.tick()
    assert found is not None and found.busy_cpu_s == 2.0
    assert "replica busy time not read this time: gcs gone" in caplog.text


def test_the_operators_status_stays_requested_only():
    found = usage.deployment_usage(
        "digits", [usage.ReplicaSample(at=0, replicas=1)], until=10, cpus_per_replica=1
    )
    assert type(found) is DeploymentUsage and found.basis == usage.DEPLOYMENT_BASIS
    assert "busyCpuS" not in DeploymentUsage.model_json_schema(by_alias=True)["properties"]
    assert usage.summary(found.model_dump(by_alias=True)) == [
        "wall 10.0 s, worker 10.0 s, CPU 10.0 s, GPU 0.0 s"
    ]
    # A usage.json written before busy time was measured still reads (and resumes).
    old = found.model_dump(mode="json", by_alias=True)
    assert ServedUsage.model_validate(old).busy_cpu_s is None


@pytest.mark.parametrize("gpu_s, line", [(None, "GPU not measured"), (5.0, "GPU 5.0 s (50%")])
def test_summary_of_a_gpu_deployment(gpu_s, line):
    doc = {"wallS": 10, "workerS": 10, "cpuS": 10, "gpuS": 10, "busyCpuS": 1, "busyGpuS": gpu_s}
    assert line in usage.summary(doc)[1]
