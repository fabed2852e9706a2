"""Busy time and what the nodes say (rayfleet.usage, rayfleet.train.busy): the workers'
latest cumulative reports per (launch, rank, worker process) in the run record, their sums
next to the requested figures, the sampler on a real process, and the accelerator and
market a run is priced at when its Ray nodes say what they are."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from rayfleet import record, usage
from rayfleet.cli.main import app
from rayfleet.errors import BadInputError
from rayfleet.specs import load_spec
from rayfleet.storage.filesystem import filesystem_for
from rayfleet.train import busy
from rayfleet.usage import LaunchUsage, NodeFacts, Prices, RunUsage, WorkerBusy

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "jobs" / "digits" / "train.yaml"
PRICES = {
    "cpuHour": {"onDemand": 0.04, "spot": 0.01},
    "gpuHour": {"H100": {"onDemand": 2.5, "spot": 0.9}, "L4": {"onDemand": 0.7}},
    "accelerator": "H100",
}


def _report(rank: int, worker: str, cpu: float, at: float, **more) -> dict:
    """A worker's `usage` event as the driver receives it."""
    return {"type": "usage", "rank": rank, "worker": worker, "cpuS": cpu, "at": at, **more}


# ------------------------------------------------------------------------------ aggregation


def test_the_latest_cumulative_report_per_launch_rank_and_worker_wins():
    tally = usage.BusyTally()
    for event in [
        _report(0, "h:1:a", 5.0, 10.0),
        _report(1, "h:2:b", 4.0, 10.0),
        _report(0, "h:1:a", 12.0, 20.0),
        _report(0, "h:1:a", 9.0, 15.0),  # arrived late: older than the one kept
    ]:
        tally.note(event)
    assert sorted((r["rank"], r["cpuS"]) for r in tally.reports()) == [(0, 12.0), (1, 4.0)]

    busy = usage.merge_busy([], tally.reports(), launch=1)
    # Rank 1 was killed (no report after its 4.0); Ray Train restarted it as a new process.
    again = usage.merge_busy(
        busy, [_report(0, "h:1:a", 30.0, 40.0), _report(1, "h:3:c", 7.0, 40.0)], launch=1
    )
    kept = {(b.rank, b.worker): b.cpu_s for b in again}
    assert kept == {(0, "h:1:a"): 30.0, (1, "h:2:b"): 4.0, (1, "h:3:c"): 7.0}
    assert usage.busy_sums(again) == (41.0, None)  # no worker measured a GPU
    # Launch 2's workers are new processes; a worker already kept under launch 1 stays there.
    later = usage.merge_busy(
        again, [_report(0, "h:1:a", 31.0, 45.0), _report(0, "h:4:d", 2.0, 50.0)], launch=2
    )
    assert [(b.launch, b.worker, b.cpu_s) for b in later if b.rank == 0] == [
        (1, "h:1:a", 31.0), (2, "h:4:d", 2.0),
    ]  # fmt: skip
    # A malformed report (another version's worker) is skipped, not fatal.
    assert usage.merge_busy(later, [{"rank": "x"}], launch=2) == later


def test_busy_time_is_summed_for_counted_launches_next_to_the_requested_figures():
    launches = [
        LaunchUsage(launch=1, started=0, ended=100, ended_by="lastEpoch", workers=2,
                    cpus_per_worker=2),
        LaunchUsage(launch=2, started=200, ended=None, workers=2, cpus_per_worker=2),
    ]  # fmt: skip
    busy = [
        WorkerBusy(launch=1, rank=0, worker="a", cpu_s=150, at=90, gpu_s=None),
        WorkerBusy(launch=1, rank=1, worker="b", cpu_s=130, at=90),
        WorkerBusy(launch=2, rank=0, worker="c", cpu_s=10, at=210),  # open launch: not yet
    ]
    found = usage.run_usage(launches, [], None, "run r", busy=busy)
    assert (found.cpu_s, found.busy_cpu_s, found.busy_gpu_s) == (400, 280, None)
    assert len(found.busy) == 3  # every report is kept; the open launch's counts when closed
    lines = usage.summary(found.model_dump(by_alias=True))
    assert lines[1] == "busy CPU 280.0 s (70% of requested)", lines
    # Without reports (a record written before workers reported): no busy line at all.
    assert usage.run_usage(launches, [], None, "run r").busy_cpu_s is None


def test_an_elastic_launch_compares_busy_time_with_its_integrated_worker_count():
    launch = LaunchUsage(launch=1, started=1000, ended=1090, ended_by="driver", workers=4,
                         min_workers=2, cpus_per_worker=1)  # fmt: skip
    epochs = [
        {"launch": 1, "at": "1970-01-01T00:17:10Z", "workers": 4},  # 1030: 30 s x 4
        {"launch": 1, "at": "1970-01-01T00:17:40Z", "workers": 2},  # 1060: 30 s x 2
    ]  # then 30 s x 2 to the end: 240 CPU-s requested
    busy = [WorkerBusy(launch=1, rank=r, worker=f"w{r}", cpu_s=30, at=1090) for r in range(4)]
    found = usage.run_usage([launch], epochs, None, "run r", busy=busy)
    assert found.cpu_s == 240 and found.busy_cpu_s == 120
    assert "busy CPU 120.0 s (50% of requested)" in usage.summary(found.model_dump(by_alias=True))


def test_gpu_busy_time_is_summed_where_measured_and_said_not_measured_elsewhere():
    launch = LaunchUsage(launch=1, started=0, ended=100, ended_by="driver", workers=2,
                         cpus_per_worker=1, gpus_per_worker=1)  # fmt: skip
    measured = [
        WorkerBusy(launch=1, rank=0, worker="a", cpu_s=90, gpu_s=60, at=99),
        WorkerBusy(launch=1, rank=1, worker="b", cpu_s=90, gpu_s=40, at=99),
    ]
    found = usage.run_usage([launch], [], None, "run r", busy=measured)
    line = usage.summary(found.model_dump(by_alias=True))[1]
    assert line == "busy CPU 180.0 s (90% of requested), GPU 100.0 s (50% of requested)"
    blind = [b.model_copy(update={"gpu_s": None}) for b in measured]
    found = usage.run_usage([launch], [], None, "run r", busy=blind)
    assert usage.summary(found.model_dump(by_alias=True))[1].endswith(", GPU not measured")


def test_the_record_keeps_busy_reports_and_a_killed_drivers_last_ones(tmp_path, monkeypatch):
    clock = iter([1000.0, 1400.0, 1500.0])
    monkeypatch.setattr(record.time, "time", lambda: next(clock))
    job = load_spec(DIGITS, [f"spec.storage={tmp_path}", "spec.scaling.numWorkers=2"])
    uri, fs = job.run_uri(), filesystem_for(job.run_uri())
    record.write(fs, uri, job, status="RUNNING")  # launch 1; its driver is killed after epoch 0
    first = [_report(0, "h:1:a", 20.0, 1050.0), _report(1, "h:2:b", 18.0, 1050.0)]
    record.add_epoch(fs, uri, epoch=0, metrics={}, workers=2, busy=first)
    record.update(fs, uri, lambda d: d["epochs"][0].update(at="1970-01-01T00:17:40Z"))
    record.write(fs, uri, job, status="RUNNING")  # launch 2 closes launch 1 at its last epoch
    second = [_report(0, "h:9:c", 50.0, 1499.0), _report(1, "h:8:d", 45.0, 1499.0)]
    doc = record.write(fs, uri, job, status="SUCCEEDED", busy=second)
    used = doc["usage"]
    assert [(b["launch"], b["worker"], b["cpuS"]) for b in used["busy"]] == [
        (1, "h:1:a", 20.0), (1, "h:2:b", 18.0), (2, "h:9:c", 50.0), (2, "h:8:d", 45.0),
    ]  # fmt: skip
    assert used["busyCpuS"] == 133.0 and used["cpuS"] == (60 + 100) * 2
    assert record.read(fs, uri)["usage"] == used  # round trip through the typed record


def test_a_trial_retried_keeps_its_first_attempts_workers_in_their_launch(tmp_path):
    """The sweep driver's tally of a trial holds every report it heard, a first attempt's
    too: noted again after Tune retried the trial (a new launch), those stay in launch 1."""
    job = load_spec(DIGITS, [f"spec.storage={tmp_path}"])
    uri, fs = job.run_uri(), filesystem_for(job.run_uri())
    first = [_report(0, "h:1:a", 3.0, 1.0)]
    with usage.pricing(Prices.model_validate(PRICES)):
        record.write(fs, uri, job, status="RUNNING")
        record.write(fs, uri, job, status="FAILED", busy=first)
        record.write(fs, uri, job, status="RUNNING")  # Tune retries the trial: launch 2
        doc = record.write(fs, uri, job, status="SUCCEEDED",
                           busy=[*first, _report(0, "h:2:b", 5.0, 9.0)])  # fmt: skip
    assert [(b["launch"], b["worker"]) for b in doc["usage"]["busy"]] == [
        (1, "h:1:a"), (2, "h:2:b"),
    ]  # fmt: skip
    assert doc["usage"]["busyCpuS"] == 8.0 and doc["usage"]["cost"]["cpuHour"] == 0.04
    # The sweep driver's last word (record.note_busy) after Tune ended the trial.
    doc = record.note_busy(fs, uri, [_report(0, "h:2:b", 6.0, 10.0)])
    assert doc["usage"]["busyCpuS"] == 9.0


def test_a_sweep_sums_its_trials_busy_time_and_says_which_had_none():
    def trial(cpu_s: float, busy_cpu: float | None, **nodes) -> RunUsage:
        return RunUsage(worker_s=cpu_s, cpu_s=cpu_s, busy_cpu_s=busy_cpu,
                        nodes=NodeFacts(**nodes) if nodes else None)  # fmt: skip

    trials = [
        ("a", "DONE", 4, trial(400, 300, market="spot")),
        ("b", "STOPPED", 1, trial(100, 60, market="spot")),
        ("c", "DONE", 4, trial(400, None)),  # a record from before busy time
    ]
    found = usage.sweep_usage(4, trials, Prices.model_validate(PRICES), "sweep s")
    assert found.busy_cpu_s == 360 and found.trials_without_busy == ["c"]
    assert found.nodes.market == "spot" and found.cost.market == "spot"
    assert found.cost.total == pytest.approx(900 / 3600 * 0.01)
    line = usage.summary(found.model_dump(by_alias=True))[1]
    assert line == "busy CPU 0.1 h (40% of requested) (1 trial(s) without busy time not counted)"


# ------------------------------------------------------------------------------ nodes


@pytest.mark.parametrize(
    ("labels", "resources", "accelerator", "market"),
    [
        ({"ray.io/node-id": "abc"}, [], None, None),  # a CPU node on a laptop: says nothing
        ({"ray.io/accelerator-type": "H100"}, ["accelerator_type:H100"], "H100", None),
        ({"ray.io/market-type": "spot"}, ["accelerator_type:L4", "CPU"], "L4", "spot"),
        ({"ray.io/market-type": "on-demand", "ray.io/accelerator-type": "A100"}, [], "A100",
         "onDemand"),
        ({"ray.io/accelerator-type": ["H100"], "ray.io/market-type": ["spot"]}, [], "H100",
         "spot"),  # get_node_labels() is typed as lists
    ],
)  # fmt: skip
def test_what_a_node_says_it_is(labels, resources, accelerator, market):
    facts = usage.node_facts(labels, resources)
    assert (facts.accelerator, facts.market, facts.note) == (accelerator, market, None)


def test_a_market_label_other_than_spot_or_on_demand_says_nothing_and_is_noted():
    facts = usage.node_facts({"ray.io/market-type": "reserved"})
    assert facts.market is None and "ray.io/market-type=reserved" in facts.note


def test_the_run_is_priced_at_what_all_its_workers_nodes_agree_on():
    assert usage.agree([]) is None
    said = usage.agree([("L4", "spot"), ("L4", "spot")])
    assert (said.accelerator, said.market, said.note) == ("L4", "spot", None)
    mixed = usage.agree([("L4", "spot"), ("L4", None)])  # one worker on an unlabelled node
    assert (mixed.accelerator, mixed.market) == ("L4", None)
    assert "differ in market (spot, unsaid): the price table's holds" in mixed.note


@pytest.mark.parametrize(
    ("nodes", "market", "accelerator", "cpu_rate", "gpu_rate"),
    [
        (None, "onDemand", "H100", 0.04, 2.5),  # the nodes said nothing: the table's
        (NodeFacts(accelerator="L4"), "onDemand", "L4", 0.04, 0.7),
        (NodeFacts(market="spot"), "spot", "H100", 0.01, 0.9),
        (NodeFacts(accelerator="H100", market="spot"), "spot", "H100", 0.01, 0.9),
        (NodeFacts(accelerator="H100", market="onDemand"), "onDemand", "H100", 0.04, 2.5),
    ],
)
def test_nodes_choose_the_rate(nodes, market, accelerator, cpu_rate, gpu_rate):
    one_hour = usage.Totals(cpu_s=3600, gpu_s=3600)
    cost = usage.priced(one_hour, Prices.model_validate(PRICES), "run r", nodes).cost
    assert (cost.market, cost.accelerator, cost.cpu_hour, cost.gpu_hour) == (
        market, accelerator, cpu_rate, gpu_rate,
    )  # fmt: skip
    assert cost.total == pytest.approx(cpu_rate + gpu_rate)


def test_a_table_without_the_nodes_accelerator_or_spot_price_is_one_line():
    table = Prices.model_validate(PRICES)
    with pytest.raises(BadInputError) as caught:
        usage.priced(usage.Totals(gpu_s=1), table, "run r", NodeFacts(accelerator="A100"))
    assert str(caught.value) == (
        "run r: uses A100 GPUs (its Ray nodes say so: ray.io/accelerator-type) but the price "
        "table has no gpuHour.A100; add `gpuHour: {A100: {onDemand: ..., spot: ...}}` to it"
    )
    with pytest.raises(BadInputError, match=r"Ray nodes are spot \(ray.io/market-type\) but "
                       r"gpuHour.L4 has no spot price; add gpuHour.L4.spot$"):  # fmt: skip
        usage.priced(usage.Totals(gpu_s=1), table, "r", NodeFacts(accelerator="L4", market="spot"))


def _gpu_run_on(tmp_path: Path, accelerator: str) -> Path:
    """A stored GPU run whose workers' nodes said `accelerator`."""
    store = tmp_path / "store"
    job = load_spec(DIGITS, [f"spec.storage={store}", "spec.scaling.useGpu=true"])
    uri, fs = job.run_uri(), filesystem_for(job.run_uri())
    record.write(fs, uri, job, status="RUNNING")
    report = _report(0, "h:1:a", 1.0, time.time(), gpuS=0.5, accelerator=accelerator)
    record.write(fs, uri, job, status="SUCCEEDED", busy=[report])
    return store


def test_describe_prices_a_run_at_its_nodes_accelerator(tmp_path):
    store = _gpu_run_on(tmp_path, "L4")
    prices = tmp_path / "prices.yaml"
    prices.write_text(yaml.safe_dump(PRICES))  # the table says H100; the nodes said L4
    out = CliRunner().invoke(
        app, ["jobs", "describe", "digits", "--storage", str(store), "--prices", str(prices)]
    )
    assert out.exit_code == 0, out.output
    assert "usage: nodes: accelerator L4" in out.output
    assert "L4 0.7/GPU-h" in out.output, out.output
    # A table without L4: exit 2, one line, naming the nodes as the source.
    prices.write_text(yaml.safe_dump({**PRICES, "gpuHour": {"H100": {"onDemand": 2.5}}}))
    out = CliRunner().invoke(
        app, ["jobs", "describe", "digits", "--storage", str(store), "--prices", str(prices)]
    )
    lines = [line for line in out.output.splitlines() if line.strip()]
    assert out.exit_code == 2 and len(lines) == 1, out.output
    assert "gpuHour.L4" in lines[0] and "Ray nodes say so" in lines[0]


# ------------------------------------------------------------------------------ the sampler


def _burn(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_the_sampler_reports_this_process_cpu_time_cumulatively_and_once_at_the_end():
    sent: list[tuple[dict, bool]] = []
    sampler = busy.BusySampler(lambda r, final: sent.append((r, final)), report_every_s=0.2,
                               facts={"accelerator": None, "market": None})  # fmt: skip
    sampler.start()
    _burn(0.5)
    sampler.report_now()  # what session.report does at every epoch
    assert sent[-1][0]["cpuS"] >= 0.45
    time.sleep(0.5)
    sampler.stop()
    assert sent[0][1] is False and sent[-1][1] is True
    assert sum(final for _, final in sent) == 1 and len(sent) >= 4  # start, epoch, 0.2 s, end
    figures = [r["cpuS"] for r, _ in sent]
    assert figures == sorted(figures)  # cumulative
    assert 0.4 <= figures[-1] < 5, figures  # the burn, plus this test's own little work
    assert sent[-1][0]["gpuS"] is None  # no GPU sampled: not measured
    assert sent[-1][0]["worker"] == sampler.worker and set(sent[-1][0]) >= {"accelerator"}


def test_a_child_process_cpu_time_counts_once_it_is_waited_for():
    import subprocess
    import sys

    sampler = busy.BusySampler(lambda r, f: None)
    subprocess.run(
        [sys.executable, "-c", "import time\nt=time.process_time()+0.5\n"
         "while time.process_time()<t: pass"],
        check=True,
    )  # fmt: skip
    assert sampler.report()["cpuS"] >= 0.45


def test_gpu_busy_time_integrates_utilisation_and_is_none_without_nvml(monkeypatch):
    now = iter([0.0, 0.0, 2.0, 3.0, 4.0])
    monkeypatch.setattr(busy, "gpu_utilization", lambda device: 50.0)
    sampler = busy.BusySampler(lambda r, f: None, gpu=0, clock=lambda: next(now))
    sampler.sample_gpu()  # at 0
    sampler.sample_gpu()  # at 2: 2 s at 50 %
    sampler.sample_gpu()  # at 3: 1 s at 50 %
    assert sampler.report()["gpuS"] == 1.5

    def no_nvml(device: int) -> float:
        raise ModuleNotFoundError("pynvml module not found, please install pynvml")

    monkeypatch.setattr(busy, "gpu_utilization", no_nvml)
    sampler.sample_gpu()
    assert sampler.report()["gpuS"] is None  # not measured, rather than a partial figure
