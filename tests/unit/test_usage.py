"""Usage and cost (rayfleet.usage): the arithmetic with numbers checkable by hand, the price
table (spot, on-demand, a missing accelerator price), and usage in the run record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from rayfleet import record, usage
from rayfleet.cli.main import app
from rayfleet.errors import BadInputError
from rayfleet.specs import load_spec
from rayfleet.storage.filesystem import filesystem_for
from rayfleet.storage.uri import parse_uri
from rayfleet.tune import results
from rayfleet.tune.documents import SweepTable, TrialRow
from rayfleet.usage import LaunchUsage, Prices, ReplicaSample, RunUsage

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "jobs" / "digits" / "train.yaml"
CHART_SCHEMA = REPO / "charts" / "rayfleet" / "values.schema.json"
PRICES = {
    "cpuHour": {"onDemand": 0.04, "spot": 0.01},
    "gpuHour": {"H100": {"onDemand": 2.5, "spot": 0.9}, "L4": {"onDemand": 0.7}},
    "accelerator": "H100",
}


def _launch(**fields) -> LaunchUsage:
    base = {"launch": 1, "started": 1000.0, "ended": 1100.0, "ended_by": "driver", "workers": 2,
            "cpus_per_worker": 2, "gpus_per_worker": 1}  # fmt: skip
    return LaunchUsage(**{**base, **fields})


def test_usage_is_requested_resources_times_wall_time():
    totals = usage.launch_totals(_launch(), [])
    # 100 s x 2 workers; 2 CPUs and 1 GPU per worker.
    assert (totals.wall_s, totals.worker_s, totals.cpu_s, totals.gpu_s) == (100, 200, 400, 200)
    assert not totals.upper_bound and not totals.estimated


def test_an_elastic_launch_integrates_the_worker_count_its_epochs_report():
    launch = _launch(workers=4, min_workers=2, gpus_per_worker=0, cpus_per_worker=1)
    epochs = [(1030.0, 4), (1060.0, 2), (1090.0, 3)]
    totals = usage.launch_totals(launch, epochs)
    # 30 s x 4, 30 s x 2, 30 s x 3, then the last count to the end: 10 s x 3.
    assert totals.worker_s == 120 + 60 + 90 + 30 and totals.cpu_s == 300
    assert not totals.upper_bound
    # An epoch without a count: the upper bound at numWorkers, and said so.
    unknown = usage.launch_totals(launch, [(1030.0, 4), (1060.0, None)])
    assert unknown.worker_s == 400 and unknown.upper_bound
    assert "upper bound" in usage.summary(unknown.model_dump(by_alias=True))[0]


def test_cost_at_on_demand_and_spot_rates():
    one_hour = usage.Totals(cpu_s=7200, gpu_s=3600)  # 2 CPU-hours, 1 GPU-hour
    on_demand = usage.priced(one_hour, Prices.model_validate(PRICES), "run r").cost
    assert on_demand.total == pytest.approx(2 * 0.04 + 2.5)
    assert (on_demand.market, on_demand.accelerator, on_demand.gpu_hour) == (
        "onDemand",
        "H100",
        2.5,
    )
    spot = usage.priced(one_hour, Prices.model_validate({**PRICES, "market": "spot"}), "run r").cost
    assert spot.total == pytest.approx(2 * 0.01 + 0.9)
    cpu_only = usage.priced(usage.Totals(cpu_s=3600), Prices.model_validate(PRICES), "r").cost
    assert cpu_only.total == pytest.approx(0.04) and cpu_only.accelerator is None


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"accelerator": "A100"}, "no gpuHour.A100"),
        ({"accelerator": None}, "does not say which accelerator"),
        ({"market": "spot", "accelerator": "L4"}, "gpuHour.L4 has no spot price"),
    ],
)
def test_a_missing_gpu_price_is_one_line(change, words):
    with pytest.raises(BadInputError, match=words):
        usage.priced(usage.Totals(gpu_s=1), Prices.model_validate({**PRICES, **change}), "run r")


def _gpu_record(tmp_path: Path) -> Path:
    """A stored run record with GPU usage, as the driver writes it."""
    store = tmp_path / "store"
    job = load_spec(DIGITS, [f"spec.storage={store}", "spec.scaling.useGpu=true"])
    uri = job.run_uri()
    record.write(filesystem_for(uri), uri, job, status="RUNNING")
    record.write(filesystem_for(uri), uri, job, status="SUCCEEDED")
    return store


def test_describe_with_a_price_table_missing_the_accelerator_exits_2_in_one_line(tmp_path):
    store = _gpu_record(tmp_path)
    prices = tmp_path / "prices.yaml"
    prices.write_text(yaml.safe_dump({**PRICES, "accelerator": "A100"}))
    out = CliRunner().invoke(
        app, ["jobs", "describe", "digits", "--storage", str(store), "--prices", str(prices)]
    )
    lines = [line for line in out.output.splitlines() if line.strip()]
    assert out.exit_code == 2 and len(lines) == 1, out.output
    assert "gpuHour.A100" in lines[0] and "run digits" in lines[0]


def test_run_refuses_a_price_table_that_cannot_price_its_gpus_before_starting(tmp_path):
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"cpuHour": {"onDemand": 0.04}}))
    out = CliRunner().invoke(
        app,
        ["run", str(DIGITS), "--set", f"spec.storage={tmp_path / 'store'}",
         "--set", "spec.scaling.useGpu=true", "--prices", str(prices)],
    )  # fmt: skip
    assert out.exit_code == 2 and "does not say which accelerator" in out.output, out.output
    assert not (tmp_path / "store").exists()  # nothing started, nothing written


def test_bad_price_files_are_one_line(tmp_path, monkeypatch):
    bad = tmp_path / "p.yaml"
    bad.write_text("cpuHour: {onDemand: -1}\n")
    with pytest.raises(BadInputError, match=r"p.yaml: not a valid price table \(cpuHour.onDemand"):
        usage.load_prices(bad)
    with pytest.raises(BadInputError, match="cannot read it"):
        usage.load_prices(tmp_path / "missing.yaml")
    monkeypatch.setenv(usage.PRICES_ENV, json.dumps(PRICES))  # what the chart sets
    assert usage.load_prices(None).gpu_hour["H100"].spot == 0.9
    monkeypatch.setenv(usage.PRICES_ENV, "{not json")
    with pytest.raises(BadInputError, match=r"\$RAYFLEET_PRICES is not valid JSON"):
        usage.load_prices(None)


def test_the_charts_price_schema_is_generated_from_the_model():
    schema = json.loads(CHART_SCHEMA.read_text())
    generated = Prices.model_json_schema(by_alias=True, ref_template="#/definitions/{model}")
    assert schema["definitions"]["Rate"] == generated.pop("$defs")["Rate"]
    assert schema["definitions"]["Prices"] == generated
    assert {"$ref": "#/definitions/Prices"} in schema["properties"]["prices"]["anyOf"]


def test_the_record_keeps_usage_per_launch_and_closes_a_killed_launch(tmp_path, monkeypatch):
    clock = iter([1000.0, 1400.0, 1500.0])
    monkeypatch.setattr(record.time, "time", lambda: next(clock))
    job = load_spec(
        DIGITS,
        [f"spec.storage={tmp_path}", "spec.scaling.numWorkers=2", "spec.scaling.cpusPerWorker=2"],
    )
    uri, fs = job.run_uri(), filesystem_for(job.run_uri())
    record.write(fs, uri, job, status="RUNNING")  # launch 1 at 1000; its driver is killed
    record.add_epoch(fs, uri, epoch=0, metrics={}, workers=2)
    # Its last epoch ended 60 s after it started: the next launch closes it there.
    record.update(fs, uri, lambda d: d["epochs"][0].update(at="1970-01-01T00:17:40Z"))
    record.write(fs, uri, job, status="RUNNING")  # launch 2 at 1400
    with usage.pricing(Prices.model_validate(PRICES)):
        doc = record.write(fs, uri, job, status="SUCCEEDED")  # ends at 1500
    used = doc["usage"]
    first, second = used["launches"]
    assert (first["ended"], first["endedBy"]) == (1060.0, "lastEpoch")
    assert (second["started"], second["ended"], second["endedBy"]) == (1400.0, 1500.0, "driver")
    # (60 s + 100 s) x 2 workers x 2 CPUs each.
    assert used["wallS"] == 160 and used["workerS"] == 320 and used["cpuS"] == 640
    assert used["estimated"] and used["cost"]["total"] == pytest.approx(640 / 3600 * 0.04)
    assert record.read(fs, uri)["usage"] == used  # round trip through the typed record
    assert "cost 0.0071 USD (onDemand: 0.04/CPU-h)" in usage.summary(used)[1]


def test_a_killed_drivers_launch_ends_with_its_submission(tmp_path, monkeypatch):
    """The submitting CLI sees the job fail (the driver could not write): the launch ends
    when Ray says the submission ended."""
    from types import SimpleNamespace

    monkeypatch.setattr(record.time, "time", lambda: 1000.0)
    job = load_spec(DIGITS, [f"spec.storage={tmp_path}", "spec.scaling.numWorkers=3"])
    uri = job.run_uri()
    record.write(filesystem_for(uri), uri, job, status="RUNNING")
    failed = SimpleNamespace(submission_id="rayfleet-digits-1", status="FAILED", start_time=990_000,
                             end_time=1_090_000, message="killed", driver_exit_code=-9,
                             error_type=None)  # fmt: skip
    doc = record.note_submission(uri, job, address="http://h", job=failed)
    (launch,) = doc["usage"]["launches"]
    assert (launch["ended"], launch["endedBy"]) == (1090.0, "submission")
    assert doc["usage"]["workerS"] == 90 * 3 and doc["usage"]["estimated"]


def test_records_written_before_usage_still_read(tmp_path):
    uri = parse_uri(str(tmp_path / "runs" / "old"))
    old = {"name": "old", "status": "SUCCEEDED", "epochs": [{"epoch": 0, "launch": 1}]}
    (tmp_path / "runs" / "old").mkdir(parents=True)
    (tmp_path / "runs" / "old" / "record.json").write_text(json.dumps(old))
    doc = record.read(filesystem_for(uri), uri)
    assert doc["status"] == "SUCCEEDED" and "usage" not in doc


def test_a_sweep_sums_its_trials_and_says_what_early_stopping_saved(tmp_path):
    sweep_uri = parse_uri(str(tmp_path / "sweeps" / "s"))
    priced = Prices.model_validate(PRICES)

    def trial(trial_id: str, worker_s: float) -> None:
        """A trial's run record as the sweep driver leaves it (1 CPU per worker here)."""
        run_uri = sweep_uri.join(trial_id, "train")
        found = usage.priced(RunUsage(worker_s=worker_s, cpu_s=worker_s), priced, trial_id)
        record.update(
            filesystem_for(run_uri),
            run_uri,
            lambda d: d.update(usage=found.model_dump(mode="json", by_alias=True)),
        )

    trial("a", 400.0)  # DONE: 4 epochs
    trial("b", 100.0)  # STOPPED after 1 epoch: 3 not run, at 100 worker-s each
    trial("c", 180.0)  # STOPPED after 2 epochs: 2 not run, at 90 worker-s each
    rows = [
        TrialRow(trial_id="a", params={}, state="DONE", epochs_done=4),
        TrialRow(trial_id="b", params={}, state="STOPPED", epochs_done=1),
        TrialRow(trial_id="c", params={}, state="STOPPED", epochs_done=2),
        TrialRow(trial_id="d", params={}, state="ERROR", epochs_done=0),
    ]
    table = SweepTable(sweep="s", metric="m", mode="max", epochs=4, trials=rows)
    found = results.sweep_usage(sweep_uri, table, None)  # priced as the trials were
    assert found.worker_s == 680 and found.trials == 4 and found.trials_without_usage == ["d"]
    assert found.savings.epochs_not_run == 5 and found.savings.worker_s == 300 + 180
    assert found.cost.total == pytest.approx(680 / 3600 * 0.04)
    assert found.savings.cost == pytest.approx(480 / 3600 * 0.04)
    spot = results.sweep_usage(
        sweep_uri, table, Prices.model_validate({**PRICES, "market": "spot"})
    )
    assert spot.savings.cost == pytest.approx(480 / 3600 * 0.01)
    lines = usage.summary(found.model_dump(by_alias=True))
    assert "early stopping saved 5 epochs: worker 0.1333 h, 0.0053 not spent" in lines[2]


def test_replica_hours_of_a_deployment_from_its_replica_count_over_time():
    samples: list[ReplicaSample] = []
    for at, replicas in [(0, 1), (50, 1), (100, 3), (200, 2)]:
        samples = usage.sample(samples, at, replicas)
    assert [s.replicas for s in samples] == [1, 3, 2]  # unchanged counts are not repeated
    found = usage.deployment_usage(
        "digits", samples, until=300, cpus_per_replica=0.5, prices=Prices.model_validate(PRICES)
    )
    # 100 s x 1 + 100 s x 3 + 100 s x 2 replicas.
    assert found.replica_s == 600 and found.replica_hours == pytest.approx(600 / 3600)
    assert found.cpu_s == 300 and found.gpu_s == 0 and found.wall_s == 300
    assert found.cost.total == pytest.approx(300 / 3600 * 0.04)


def test_the_serve_meter_stores_usage_so_far_and_continues_an_earlier_session():
    counts, clock, stored = iter([2, 2, 4]), iter([0.0, 60.0, 90.0]), []
    meter = usage.ReplicaMeter(
        "digits", lambda: next(counts), stored.append, cpus_per_replica=1, clock=lambda: next(clock)
    )
    for _ in range(3):
        meter.tick()
    # 90 s x 2 replicas, then the count changed to 4 at the last sample.
    assert [u.replica_s for u in stored] == [0, 120, 180]
    again = usage.ReplicaMeter(
        "digits", lambda: 1, stored.append, cpus_per_replica=1, clock=lambda: 200.0
    )
    again.resume(stored[-1])  # down from 90 s to 200 s: nothing counted there
    assert again.tick().replica_s == 180 and stored[-1].wall_s == 200


def test_a_failing_sample_is_logged_and_serving_goes_on(caplog):
    def broken() -> int:
        raise ConnectionError("serve controller gone")

    meter = usage.ReplicaMeter("digits", broken, lambda u: None, cpus_per_replica=1)
    assert meter.tick() is None
    assert "usage not recorded this time: serve controller gone" in caplog.text


@pytest.mark.k8s
def test_the_charts_prices_reach_every_ray_pod_as_rayfleet_prices(monkeypatch):
    import helm_python

    from tests.k8s.conftest import render_chart

    rendered = render_chart({"storage": {"bucket": "team-bucket"}, "prices": PRICES})
    (text,) = [text for path, text in rendered.items() if path.endswith("configmap.yaml")]
    config = yaml.safe_load(text)
    monkeypatch.setenv(usage.PRICES_ENV, config["data"][usage.PRICES_ENV])
    assert usage.load_prices(None) == Prices.model_validate(PRICES)
    assert usage.PRICES_ENV not in str(render_chart({"storage": {"bucket": "team-bucket"}}))
    # ... and the operator, which prices each ModelDeployment's status.usage
    operated = render_chart({"operator": {"enabled": True}, "prices": PRICES})
    (text,) = [text for path, text in operated.items() if path.endswith("operator.yaml")]
    (deployment,) = [d for d in yaml.safe_load_all(text) if d and d["kind"] == "Deployment"]
    env = {
        e["name"]: e.get("value")
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert Prices.model_validate_json(env[usage.PRICES_ENV]) == Prices.model_validate(PRICES)
    with pytest.raises(helm_python.HelmValuesError, match="cpuHour"):
        render_chart({"prices": {"gpuHour": {}}})
