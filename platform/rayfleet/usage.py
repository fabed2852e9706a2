"""Usage and cost of runs, sweeps and deployments: arithmetic on what their records know.

Usage is what a run *requested* for as long as it held it: each launch's workers x its wall
time (worker-seconds), and the CPUs and GPUs per worker x the same time (CPU-, GPU-seconds).
That is what a cluster bills, whether or not the workers kept their cores busy; busy time is
not measured (it needs every worker to report its process CPU times, which the training loop
does not do). An elastic run (`scaling.minWorkers`) is integrated over the worker count its
epochs report (`EpochEntry.workers`); when its epochs do not say, its usage is the upper bound
at `numWorkers` and is marked so. A deployment's usage is its replica count over time
(replica-seconds), from samples of the Serve deployment's running replicas.

Cost needs a price table (`Prices`: $/CPU-hour and $/GPU-hour per accelerator type, spot and
on-demand), from `--prices FILE` or $RAYFLEET_PRICES (the chart's `prices` value). Without one
only usage is recorded; `jobs describe --prices` and `sweep results --prices` price a past
run from its recorded usage. Nothing here imports Ray: the operator calls
`deployment_usage` for a ModelDeployment's status.
"""

from __future__ import annotations

import calendar
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from rayfleet.errors import BadInputError

log = logging.getLogger(__name__)
PRICES_ENV = "RAYFLEET_PRICES"
USAGE_FILE = "usage.json"  # a deployment's: <storage>/deployments/<name>/usage.json
Market = Literal["onDemand", "spot"]
EndedBy = Literal["driver", "submission", "lastEpoch"]
BUSY_NOT_MEASURED = (
    "requested resources x wall time; busy time is not measured (workers do not report "
    "their CPU times)"
)


class _Model(BaseModel):
    """camelCase keys like the specs and the run record; unknown keys refused."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)


# ------------------------------------------------------------------------------ prices


class Rate(_Model):
    on_demand: float = Field(ge=0, description="Price per hour on on-demand capacity.")
    spot: float | None = Field(
        default=None, ge=0, description="Price per hour on spot/preemptible capacity."
    )


class Prices(_Model):
    """A price table: what one CPU and one GPU (per accelerator type) cost per hour."""

    currency: str = Field(default="USD", min_length=1, max_length=8)
    market: Market = Field(
        default="onDemand",
        description="Which rate the workers pay: onDemand, or spot (preemptible worker groups).",
    )
    cpu_hour: Rate = Field(description="Price of one CPU for an hour.")
    gpu_hour: dict[str, Rate] = Field(
        default={}, description="Price of one GPU for an hour, per accelerator type (H100, L4)."
    )
    accelerator: str | None = Field(
        default=None,
        description="The accelerator type GPU workers run on (a key of gpuHour); may be "
        "left out when gpuHour has one entry.",
    )

    def cpu_rate(self) -> float:
        return self._pick(self.cpu_hour, "cpuHour")

    def gpu_rate(self, where: str) -> tuple[str, float]:
        """(accelerator, its rate); BadInputError naming the missing price."""
        name = self.accelerator or (next(iter(self.gpu_hour)) if len(self.gpu_hour) == 1 else None)
        if name is None:
            known = ", ".join(sorted(self.gpu_hour)) or "none"
            raise BadInputError(
                f"{where}: uses GPUs but the price table does not say which accelerator they "
                f"are (gpuHour has: {known}); set `accelerator:` to one of them"
            )
        if name not in self.gpu_hour:
            raise BadInputError(
                f"{where}: uses {name} GPUs but the price table has no gpuHour.{name}; add "
                f"`gpuHour: {{{name}: {{onDemand: ..., spot: ...}}}}` to it"
            )
        return name, self._pick(self.gpu_hour[name], f"gpuHour.{name}")

    def _pick(self, rate: Rate, key: str) -> float:
        if self.market == "spot":
            if rate.spot is None:
                raise BadInputError(
                    f"price table: market is spot but {key} has no spot price; add "
                    f"{key}.spot or set market: onDemand"
                )
            return rate.spot
        return rate.on_demand


def prices_schema() -> dict[str, Any]:
    """The JSON Schema of a price table, generated from `Prices` (camelCase keys); the chart's
    `prices` value is checked against the same schema."""
    schema = Prices.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def _one_line(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "document"
    return f"{where}: {first['msg']}"


def parse_prices(doc: Any, source: str) -> Prices:
    try:
        return Prices.model_validate(doc)
    except ValidationError as exc:
        raise BadInputError(
            f"{source}: not a valid price table ({_one_line(exc)}); see the README, "
            "'Usage and cost'"
        ) from None


def load_prices(path: str | Path | None) -> Prices | None:
    """The price table of `--prices FILE` (YAML or JSON), else of $RAYFLEET_PRICES (the table
    as JSON, or a file), else None. Bad input: BadInputError (exit 2) in one line."""
    if path is None:
        value = os.environ.get(PRICES_ENV, "").strip()
        if not value:
            return None
        if value.startswith("{"):
            try:
                return parse_prices(json.loads(value), f"${PRICES_ENV}")
            except json.JSONDecodeError as exc:
                raise BadInputError(f"${PRICES_ENV} is not valid JSON ({exc.msg})") from None
        path = value
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise BadInputError(f"--prices {path}: cannot read it ({exc.strerror})") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        raise BadInputError(f"--prices {path}: not valid YAML or JSON; fix the syntax") from None
    return parse_prices(doc, str(path))


_ACTIVE: list[Prices] = []


@contextmanager
def pricing(prices: Prices | None) -> Iterator[None]:
    """Record cost with `prices` while the block runs (the run record's writes price each
    launch as it ends); None: usage only."""
    if prices is None:
        yield
        return
    _ACTIVE.append(prices)
    try:
        yield
    finally:
        _ACTIVE.pop()


def active_prices() -> Prices | None:
    return _ACTIVE[-1] if _ACTIVE else None


def check_prices(prices: Prices | None, *, gpus: float, where: str) -> None:
    """Before anything starts: the table prices what the work will use."""
    if prices is None:
        return
    prices.cpu_rate()
    if gpus:
        prices.gpu_rate(where)


# ------------------------------------------------------------------------------ documents


class Cost(_Model):
    """What usage cost at the rates shown."""

    currency: str
    market: Market
    cpu_hour: float
    gpu_hour: float | None = None
    accelerator: str | None = None
    total: float


class Totals(_Model):
    wall_s: float = 0.0
    worker_s: float = 0.0
    cpu_s: float = 0.0
    gpu_s: float = 0.0
    # Elastic launches whose worker count over time is unknown: counted at numWorkers.
    upper_bound: bool = False
    # A launch whose end was not seen (driver killed): ended at its last epoch or submission.
    estimated: bool = False
    basis: str = BUSY_NOT_MEASURED
    cost: Cost | None = None


class LaunchUsage(_Model):
    """One launch of a run: when it held its workers, and what each worker requested."""

    launch: int = Field(ge=1)
    started: float  # unix seconds
    ended: float | None = None
    ended_by: EndedBy | None = None
    workers: int = Field(ge=1)  # numWorkers: the most it asks for
    min_workers: int | None = Field(default=None, ge=1)  # elastic runs
    cpus_per_worker: float = Field(ge=0)
    gpus_per_worker: float = Field(default=0, ge=0)


class RunUsage(Totals):
    """record.json `usage` of a run (and of each sweep trial's run record)."""

    launches: list[LaunchUsage] = []


class Savings(_Model):
    """What early stopping did not spend: the epochs stopped trials did not run."""

    epochs_not_run: int = 0
    worker_s: float = 0.0
    cpu_s: float = 0.0
    gpu_s: float = 0.0
    cost: float | None = None
    assumption: str = (
        "each epoch a stopped trial did not run would have taken that trial's own mean epoch "
        "time (its held wall time / the epochs it trained), on the same resources"
    )


class SweepUsage(Totals):
    """record.json `usage` of a sweep: its trials' usage summed, and what stopping saved."""

    trials: int = 0
    trials_without_usage: list[str] = []
    savings: Savings = Savings()


class ReplicaSample(_Model):
    at: float  # unix seconds
    replicas: int = Field(ge=0)


class DeploymentUsage(Totals):
    """A deployment's usage: its running replica count over time (worker = replica)."""

    name: str
    replica_s: float = 0.0
    cpus_per_replica: float = Field(default=1, ge=0)
    gpus_per_replica: float = Field(default=0, ge=0)
    samples: list[ReplicaSample] = []

    @property
    def replica_hours(self) -> float:
        return self.replica_s / 3600


# ------------------------------------------------------------------------------ arithmetic


def iso_seconds(stamp: str | None) -> float | None:
    """A record time stamp (`2026-01-02T03:04:05Z`) as unix seconds."""
    if not stamp:
        return None
    try:
        return float(calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        return None


def integrate(start: float, end: float, epochs: Iterable[tuple[float, int]]) -> float:
    """Worker-seconds over [start, end] from (time an epoch ended, workers it ran on): each
    epoch's count holds from the previous epoch's end (or `start`) to its own, and the last
    count holds to `end`."""
    total, since, current = 0.0, start, None
    for at, workers in sorted(epochs):
        at = min(max(at, start), end)
        total += (at - since) * workers
        since, current = at, workers
    if current is not None:
        total += (end - since) * current
    return total


def step_seconds(samples: list[ReplicaSample], end: float) -> float:
    """Replica-seconds from samples of a count: each holds from its time to the next
    sample's, the last to `end`."""
    ordered = sorted(samples, key=lambda s: s.at)
    total = 0.0
    for here, after in zip(ordered, [*ordered[1:], None], strict=True):
        until = max(after.at if after else end, here.at)
        total += (until - here.at) * here.replicas
    return total


def launch_totals(
    launch: LaunchUsage, epochs: list[tuple[float, int | None]], *, end: float | None = None
) -> Totals:
    """Usage of one launch; `epochs`: (time, workers or None) of the epochs it trained."""
    stop = launch.ended if launch.ended is not None else end
    wall = max((stop or launch.started) - launch.started, 0.0)
    upper = False
    elastic = launch.min_workers is not None and launch.min_workers < launch.workers
    if elastic and epochs and all(w is not None for _, w in epochs):
        worker_s = integrate(launch.started, launch.started + wall, epochs)  # type: ignore[arg-type]
    else:
        worker_s = wall * launch.workers
        upper = elastic
    return Totals(
        wall_s=wall,
        worker_s=worker_s,
        cpu_s=worker_s * launch.cpus_per_worker,
        gpu_s=worker_s * launch.gpus_per_worker,
        upper_bound=upper,
        estimated=launch.ended_by in ("submission", "lastEpoch"),
    )


def add(parts: Iterable[Totals]) -> Totals:
    out = Totals()
    for part in parts:
        out.wall_s += part.wall_s
        out.worker_s += part.worker_s
        out.cpu_s += part.cpu_s
        out.gpu_s += part.gpu_s
        out.upper_bound |= part.upper_bound
        out.estimated |= part.estimated
    return out


def cost_of(cpu_s: float, gpu_s: float, prices: Prices, where: str) -> Cost:
    cpu_rate = prices.cpu_rate()
    accelerator, gpu_rate = prices.gpu_rate(where) if gpu_s else (None, None)
    total = cpu_s / 3600 * cpu_rate + (gpu_s / 3600 * gpu_rate if gpu_rate else 0.0)
    return Cost(
        currency=prices.currency,
        market=prices.market,
        cpu_hour=cpu_rate,
        gpu_hour=gpu_rate,
        accelerator=accelerator,
        total=total,
    )


def priced(totals: Totals, prices: Prices | None, where: str) -> Totals:
    """`totals` with its cost at `prices` (unchanged without prices)."""
    if prices is None:
        return totals
    return totals.model_copy(update={"cost": cost_of(totals.cpu_s, totals.gpu_s, prices, where)})


def run_usage(
    launches: list[LaunchUsage],
    epochs: list[dict[str, Any]],
    prices: Prices | None,
    where: str,
    *,
    now: float | None = None,
) -> RunUsage:
    """A run's usage from its launches and its record's epochs (`launch`, `at`, `workers`);
    a launch still open counts up to `now` (default: not at all)."""
    parts = []
    for launch in launches:
        mine = [
            (at, e.get("workers"))
            for e in epochs
            if e.get("launch", 1) == launch.launch and (at := iso_seconds(e.get("at"))) is not None
        ]
        if launch.ended is None and now is None:
            continue
        parts.append(launch_totals(launch, mine, end=now))
    totals = priced(add(parts), prices, where)
    return RunUsage(**totals.model_dump(), launches=launches)


def sweep_usage(
    epochs: int,
    trials: list[tuple[str, str, int, RunUsage | None]],
    prices: Prices | None,
    where: str,
) -> SweepUsage:
    """A sweep's usage from its trials: (trial id, state, epochs done, the trial run's usage).

    Savings: each STOPPED trial's epochs not run (`epochs` - done), at that trial's own mean
    epoch usage (see `Savings.assumption`); ERROR trials save nothing."""
    used = [u for _, _, _, u in trials if u is not None]
    totals = add(used)
    saved = Savings()
    for _, state, done, usage in trials:
        if state != "STOPPED" or usage is None or done < 1 or done >= epochs:
            continue
        left = epochs - done
        saved.epochs_not_run += left
        saved.worker_s += usage.worker_s / done * left
        saved.cpu_s += usage.cpu_s / done * left
        saved.gpu_s += usage.gpu_s / done * left
    if prices is not None:
        totals = priced(totals, prices, where)
        saved.cost = cost_of(saved.cpu_s, saved.gpu_s, prices, where).total
    elif used and len({_rates(u.cost) for u in used}) == 1 and used[0].cost is not None:
        # Every trial was priced as it ran, at the same rates: the sweep costs their sum.
        rates = used[0].cost
        total = sum(u.cost.total for u in used if u.cost is not None)
        totals.cost = rates.model_copy(update={"total": total})
        saved.cost = _at(saved, rates)
    return SweepUsage(
        **totals.model_dump(),
        trials=len(trials),
        trials_without_usage=[tid for tid, _, _, u in trials if u is None],
        savings=saved,
    )


def _rates(cost: Cost | None) -> tuple | None:
    if cost is None:
        return None
    return (cost.currency, cost.market, cost.cpu_hour, cost.gpu_hour, cost.accelerator)


def _at(usage: Savings, rates: Cost) -> float:
    return usage.cpu_s / 3600 * rates.cpu_hour + usage.gpu_s / 3600 * (rates.gpu_hour or 0.0)


def reprice(stored: dict[str, Any], prices: Prices, where: str) -> dict[str, Any]:
    """A stored usage document (a run's or a sweep's) with its cost at `prices` instead."""
    kind = SweepUsage if "savings" in stored or "trials" in stored else RunUsage
    found = kind.model_validate(stored)
    found.cost = cost_of(found.cpu_s, found.gpu_s, prices, where)
    if isinstance(found, SweepUsage):
        found.savings.cost = cost_of(found.savings.cpu_s, found.savings.gpu_s, prices, where).total
    return found.model_dump(mode="json", by_alias=True)


def deployment_usage(
    name: str,
    samples: list[ReplicaSample],
    *,
    until: float,
    cpus_per_replica: float,
    gpus_per_replica: float = 0.0,
    prices: Prices | None = None,
) -> DeploymentUsage:
    """Replica-seconds of a deployment from samples of its running replica count (each
    count holds until the next sample, the last until `until`), with its CPU/GPU-seconds
    and, given prices, its cost. Pure: the operator calls it for a ModelDeployment's status
    with the samples it keeps there."""
    ordered = sorted(samples, key=lambda s: s.at)
    start = ordered[0].at if ordered else until
    replica_s = step_seconds(ordered, max(until, start))
    totals = Totals(
        wall_s=max(until - start, 0.0),
        worker_s=replica_s,
        cpu_s=replica_s * cpus_per_replica,
        gpu_s=replica_s * gpus_per_replica,
    )
    totals = priced(totals, prices, f"deployment {name}")
    return DeploymentUsage(
        **totals.model_dump(),
        name=name,
        replica_s=replica_s,
        cpus_per_replica=cpus_per_replica,
        gpus_per_replica=gpus_per_replica,
        samples=ordered,
    )


def sample(samples: list[ReplicaSample], at: float, replicas: int) -> list[ReplicaSample]:
    """Append a sample when the count changed (a steady deployment keeps one sample)."""
    if samples and samples[-1].replicas == replicas:
        return samples
    return [*samples, ReplicaSample(at=at, replicas=replicas)]


class ReplicaMeter:
    """Samples a deployment's running replica count every `every_s` seconds (and once more
    on `stop`) and hands its usage so far to `store` each time: what `rayfleet serve` keeps
    in storage while it serves. `count` and `store` are the caller's (Serve's status, a
    storage write), so this stays free of Ray; a failed sample or store is logged and the
    next one tries again (metering never stops serving)."""

    def __init__(
        self,
        name: str,
        count: Callable[[], int],
        store: Callable[[DeploymentUsage], None],
        *,
        cpus_per_replica: float,
        gpus_per_replica: float = 0.0,
        prices: Prices | None = None,
        every_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name, self.count, self.store = name, count, store
        self.cpus, self.gpus, self.prices = cpus_per_replica, gpus_per_replica, prices
        self.every_s, self.clock = every_s, clock
        self.samples: list[ReplicaSample] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rayfleet-meter")

    def resume(self, previous: DeploymentUsage | None) -> None:
        """Continue an earlier session's samples: nothing ran between its end and now."""
        if previous is not None and previous.samples:
            ended = previous.samples[0].at + previous.wall_s
            self.samples = sample(list(previous.samples), ended, 0)

    def tick(self) -> DeploymentUsage | None:
        now = self.clock()
        try:
            self.samples = sample(self.samples, now, self.count())
            found = deployment_usage(
                self.name,
                self.samples,
                until=now,
                cpus_per_replica=self.cpus,
                gpus_per_replica=self.gpus,
                prices=self.prices,
            )
            self.store(found)
            return found
        except Exception as exc:  # noqa: BLE001 - metering must never stop serving
            log.warning("deployment %s: usage not recorded this time: %s", self.name, exc)
            return None

    def _run(self) -> None:
        while not self._stopping.wait(self.every_s):
            self.tick()

    def __enter__(self) -> ReplicaMeter:
        self.tick()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
        self.tick()


# ------------------------------------------------------------------------------ display


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.4g} h" if seconds >= 360 else f"{seconds:.1f} s"


def summary(usage: dict[str, Any]) -> list[str]:
    """Lines for `jobs describe` and `sweep results` from a stored usage document."""
    notes = []
    if usage.get("upperBound"):
        notes.append("upper bound: an elastic launch did not report its worker count")
    if usage.get("estimated"):
        notes.append("a launch's end estimated: its driver was killed")
    if missing := usage.get("trialsWithoutUsage"):
        notes.append(f"{len(missing)} trial(s) without a usage record not counted")
    lines = [
        f"wall {hours(usage.get('wallS', 0))}, worker {hours(usage.get('workerS', 0))}, "
        f"CPU {hours(usage.get('cpuS', 0))}, GPU {hours(usage.get('gpuS', 0))}"
        + (f" ({'; '.join(notes)})" if notes else "")
    ]
    if cost := usage.get("cost"):
        gpu = f", {cost['accelerator']} {cost['gpuHour']}/GPU-h" if cost.get("gpuHour") else ""
        lines.append(
            f"cost {cost['total']:.4f} {cost['currency']} ({cost['market']}: "
            f"{cost['cpuHour']}/CPU-h{gpu})"
        )
    if (saved := usage.get("savings")) and saved.get("epochsNotRun"):
        money = f", {saved['cost']:.4f} not spent" if saved.get("cost") is not None else ""
        lines.append(
            f"early stopping saved {saved['epochsNotRun']} epochs: worker "
            f"{hours(saved['workerS'])}{money}"
        )
    return lines
