"""Usage and cost of runs, sweeps and deployments: arithmetic on what their records know.

Usage is what a run *requested* for as long as it held it: each launch's workers x its wall
time (worker-seconds), and the CPUs and GPUs per worker x the same time (CPU-, GPU-seconds).
That is what a cluster bills, whether or not the workers kept their cores busy. An elastic
run (`scaling.minWorkers`) is integrated over the worker count its epochs report
(`EpochEntry.workers`); when its epochs do not say, its usage is the upper bound at
`numWorkers` and is marked so. A deployment's usage is its replica count over time
(replica-seconds), from samples of the Serve deployment's running replicas.

Busy time is what the workers used of it: every training worker (rayfleet's wrapper runs
built-in recipes and plain Ray Train loops alike) samples its own process tree's CPU time
(user + system, children included) and, on a GPU where NVML answers, the GPU's utilisation x
time (`rayfleet.train.busy`), and sends the cumulative figures to the driver every few
seconds and when it exits. The record keeps the latest figures per (launch, rank, worker
process) in `usage.busy`, so a worker killed mid-run keeps what it reported last and its
replacement counts on its own; `busyCpuS` / `busyGpuS` are their sums (GPU: None where no
worker could read its GPU), next to the requested `cpuS` / `gpuS`. A deployment served by
`rayfleet serve` records the same of its replicas (`ServedUsage`): each replica process
samples itself from when it is ready, and the meter keeps the latest report per replica
process. A ModelDeployment's status on Kubernetes (the operator has no Ray connection) keeps
requested replica time only (`DeploymentUsage`).

The nodes say what they are: each worker reports its Ray node's accelerator type (the
`ray.io/accelerator-type` label Ray 2.60 sets on accelerator nodes, else the
`accelerator_type:<X>` resource it sets with it) and market (the `ray.io/market-type` label,
`spot` or `on-demand`: not a default label; Ray sets it from the node's $RAY_NODE_MARKET_TYPE,
which the chart sets on preemptible worker groups; custom labels may not use ray.io/).
What all of a run's workers agree on prices its GPU time (that accelerator's rate) and all
of it at the spot rate on spot nodes; where the nodes say nothing or disagree, the price
table's `accelerator` and `market` hold.

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
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError
from pydantic.alias_generators import to_camel

from rayfleet.errors import BadInputError

log = logging.getLogger(__name__)
PRICES_ENV = "RAYFLEET_PRICES"
USAGE_FILE = "usage.json"  # a deployment's: <storage>/deployments/<name>/usage.json
Market = Literal["onDemand", "spot"]
EndedBy = Literal["driver", "submission", "lastEpoch"]
REQUESTED = "requested resources x wall time (what a cluster bills)"
BUSY_BASIS = (
    f"{REQUESTED}; busy: the worker processes' CPU time (user+system, children included, from "
    "rayfleet's worker wrapper on) and GPU utilisation x time where NVML reports it"
)
DEPLOYMENT_BASIS = f"{REQUESTED}; busy time is not measured for deployments"
SERVED_BASIS = (
    f"{REQUESTED}; busy: each replica process's CPU time (user+system, children included, from "
    "when the replica is ready) and GPU utilisation x time where NVML reports it"
)
# What Ray 2.60 says about a node: its default accelerator label and resource, and the market
# label (set from $RAY_NODE_MARKET_TYPE on the node: the chart's preemptible worker groups).
ACCELERATOR_LABEL = "ray.io/accelerator-type"
ACCELERATOR_RESOURCE = "accelerator_type:"
MARKET_LABEL = "ray.io/market-type"
_MARKETS: dict[str, Market] = {"spot": "spot", "on-demand": "onDemand"}


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

    # Which of accelerator/market the run's nodes said (`for_nodes`), for the error lines.
    _from_nodes: set[str] = PrivateAttr(default_factory=set)

    def for_nodes(self, nodes: NodeFacts | None) -> Prices:
        """This table with the accelerator and market the run's nodes said, where they did."""
        said = {
            key: value
            for key, value in (("accelerator", getattr(nodes, "accelerator", None)),
                               ("market", getattr(nodes, "market", None)))
            if value is not None
        }  # fmt: skip
        if not said:
            return self
        out = self.model_copy(update=said)
        out._from_nodes = set(said)
        return out

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
            said = (
                f" (its Ray nodes say so: {ACCELERATOR_LABEL})"
                if "accelerator" in self._from_nodes
                else ""
            )
            raise BadInputError(
                f"{where}: uses {name} GPUs{said} but the price table has no gpuHour.{name}; "
                f"add `gpuHour: {{{name}: {{onDemand: ..., spot: ...}}}}` to it"
            )
        return name, self._pick(self.gpu_hour[name], f"gpuHour.{name}")

    def _pick(self, rate: Rate, key: str) -> float:
        if self.market == "spot":
            if rate.spot is None:
                if "market" in self._from_nodes:
                    raise BadInputError(
                        f"price table: the run's Ray nodes are spot ({MARKET_LABEL}) but {key} "
                        f"has no spot price; add {key}.spot"
                    )
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
    basis: str = REQUESTED
    cost: Cost | None = None


class NodeFacts(_Model):
    """What Ray nodes said about themselves (`node_facts`); None: they did not say."""

    accelerator: str | None = None
    market: Market | None = None
    # Set when the workers' nodes said different things (then the price table's hold).
    note: str | None = None


class WorkerBusy(_Model):
    """One worker process's busy time as it last reported it: cumulative since the wrapper
    started on it, so the latest report is the whole of it."""

    launch: int = Field(ge=1)
    rank: int = Field(ge=0)
    worker: str  # the worker process (host:pid:nonce): a restarted worker is a new one
    cpu_s: float = Field(ge=0)
    gpu_s: float | None = Field(default=None, ge=0)  # None: not measured (no GPU, no NVML)
    at: float  # unix seconds, the worker's clock
    accelerator: str | None = None  # what the worker's node said
    market: Market | None = None


class Measured(Totals):
    """Totals plus busy time and what the nodes said (runs and sweeps; not deployments)."""

    basis: str = BUSY_BASIS
    # Sums of the workers' latest reports (of the launches counted above); None: no worker
    # reported (records written before this), or for GPU: no worker could read its GPU.
    busy_cpu_s: float | None = None
    busy_gpu_s: float | None = None
    nodes: NodeFacts | None = None


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


class RunUsage(Measured):
    """record.json `usage` of a run (and of each sweep trial's run record)."""

    launches: list[LaunchUsage] = []
    busy: list[WorkerBusy] = []


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


class SweepUsage(Measured):
    """record.json `usage` of a sweep: its trials' usage summed, and what stopping saved."""

    trials: int = 0
    trials_without_usage: list[str] = []
    # Trials with usage but no busy time (records written before workers reported it).
    trials_without_busy: list[str] = []
    savings: Savings = Savings()


class ReplicaSample(_Model):
    at: float  # unix seconds
    replicas: int = Field(ge=0)


class DeploymentUsage(Totals):
    """A deployment's usage: its running replica count over time (worker = replica)."""

    basis: str = DEPLOYMENT_BASIS
    name: str
    replica_s: float = 0.0
    cpus_per_replica: float = Field(default=1, ge=0)
    gpus_per_replica: float = Field(default=0, ge=0)
    samples: list[ReplicaSample] = []

    @property
    def replica_hours(self) -> float:
        return self.replica_s / 3600


class ReplicaBusy(_Model):
    """One replica process's busy time as it last reported it (cumulative since it was
    ready, so the latest report is the whole of it)."""

    worker: str  # the replica process (host:pid:nonce): a restarted replica is a new one
    replica: str | None = None  # Serve's replica id, for people reading the document
    cpu_s: float = Field(ge=0)
    gpu_s: float | None = Field(default=None, ge=0)  # None: not measured (no GPU, no NVML)
    at: float  # unix seconds, the replica's clock


class ServedUsage(DeploymentUsage):
    """`rayfleet serve`'s usage.json: a deployment's requested usage plus what its replicas
    used. (Not the ModelDeployment's status.usage: the operator cannot measure replicas, and
    that schema is the CRD's.)"""

    basis: str = SERVED_BASIS
    # Sums of the replicas' latest reports; None: no replica reported (GPU: none measured).
    busy_cpu_s: float | None = None
    busy_gpu_s: float | None = None
    busy: list[ReplicaBusy] = []


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


def priced(
    totals: Totals, prices: Prices | None, where: str, nodes: NodeFacts | None = None
) -> Totals:
    """`totals` with its cost at `prices` (unchanged without prices), at the accelerator and
    market `nodes` said where they did."""
    if prices is None:
        return totals
    at = prices.for_nodes(nodes)
    return totals.model_copy(update={"cost": cost_of(totals.cpu_s, totals.gpu_s, at, where)})


# ------------------------------------------------------------------------------ busy, nodes


def node_facts(labels: Mapping[str, Any], resources: Iterable[str] = ()) -> NodeFacts:
    """What a Ray node says it is: its accelerator from the `ray.io/accelerator-type` label
    (else an `accelerator_type:<X>` resource), its market from `ray.io/market-type` (`spot`
    or `on-demand`; another value says nothing, and `note` says so)."""

    def one(value: Any) -> str | None:
        if isinstance(value, (list, tuple)):  # get_node_labels() is typed as lists of values
            value = value[0] if value else None
        if value is None:
            return None
        return str(value).strip() or None

    accelerator = one(labels.get(ACCELERATOR_LABEL)) or next(
        (r[len(ACCELERATOR_RESOURCE) :] for r in resources if r.startswith(ACCELERATOR_RESOURCE)),
        None,
    )
    raw = one(labels.get(MARKET_LABEL))
    market = _MARKETS.get(raw.lower()) if raw else None
    note = f"{MARKET_LABEL}={raw} is neither spot nor on-demand" if raw and not market else None
    return NodeFacts(accelerator=accelerator or None, market=market, note=note)


def agree(facts: Iterable[tuple[str | None, Market | None]]) -> NodeFacts | None:
    """What every worker's node said alike, from (accelerator, market) pairs: a value all
    share (None where one said nothing), else None with a note; None without any pair."""
    pairs = list(facts)
    if not pairs:
        return None
    out, notes = NodeFacts(), []
    for field, values in (
        ("accelerator", {a for a, _ in pairs}),
        ("market", {m for _, m in pairs}),
    ):
        if len(values) == 1:
            setattr(out, field, next(iter(values)))
        else:
            said = ", ".join(sorted(v or "unsaid" for v in values))
            notes.append(f"the workers' nodes differ in {field} ({said}): the price table's holds")
    out.note = "; ".join(notes) or None
    return out


def merge_busy(
    stored: Iterable[WorkerBusy], reports: Iterable[Mapping[str, Any]], launch: int
) -> list[WorkerBusy]:
    """`stored` with `reports` of launch `launch` (worker events: rank, worker, cpuS, gpuS,
    at, accelerator, market) folded in: the latest report per (launch, rank, worker) wins, so
    a worker that stopped reporting (killed) keeps its last one. A worker process already
    stored under an earlier launch stays there (a sweep driver's tally of a trial Tune
    retried holds the first attempt's workers too)."""
    latest = {(b.launch, b.rank, b.worker): b for b in stored}
    launch_of = {(b.rank, b.worker): b.launch for b in latest.values()}
    for report in reports:
        try:
            mine = {k: report[k] for k in BusyTally.KEYS if report.get(k) is not None}
            ours = launch_of.get((mine.get("rank"), mine.get("worker")), launch)
            found = WorkerBusy.model_validate({**mine, "launch": ours})
        except ValidationError as exc:  # a worker of another version: its report is skipped
            log.debug("busy report skipped (%s): %s", _one_line(exc), report)
            continue
        key = (found.launch, found.rank, found.worker)
        if _newer(found, latest.get(key)):
            latest[key] = found
    return sorted(latest.values(), key=lambda b: (b.launch, b.rank, b.at))


def _newer(found: WorkerBusy | ReplicaBusy, kept: WorkerBusy | ReplicaBusy | None) -> bool:
    """Whether a worker's report replaces the one kept for it: reports are cumulative, so the
    later one (by its clock, then by CPU seconds) holds everything the earlier one did."""
    return kept is None or (found.at, found.cpu_s) >= (kept.at, kept.cpu_s)


def busy_sums(busy: Iterable[WorkerBusy | ReplicaBusy]) -> tuple[float | None, float | None]:
    """(busy CPU-seconds, busy GPU-seconds) of these workers; None: none reported (GPU: none
    measured)."""
    busy = list(busy)
    gpus = [b.gpu_s for b in busy if b.gpu_s is not None]
    return (sum(b.cpu_s for b in busy) if busy else None), (sum(gpus) if gpus else None)


class BusyTally:
    """The driver's side: the latest busy report per (rank, worker process) of this launch,
    as the workers' `usage` events arrive (from the progress poller's thread)."""

    KEYS = ("rank", "worker", "cpuS", "gpuS", "at", "accelerator", "market")

    def __init__(self) -> None:
        self._latest: dict[tuple[Any, Any], dict[str, Any]] = {}
        self._lock = threading.Lock()

    def note(self, event: Mapping[str, Any]) -> None:
        key = (event.get("rank"), event.get("worker"))
        report = {k: event.get(k) for k in self.KEYS}
        with self._lock:
            old = self._latest.get(key)
            if old is None or (report["at"] or 0) >= (old["at"] or 0):
                self._latest[key] = report

    def reports(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._latest.values())


# ------------------------------------------------------------------------------ runs, sweeps


def run_usage(
    launches: list[LaunchUsage],
    epochs: list[dict[str, Any]],
    prices: Prices | None,
    where: str,
    *,
    now: float | None = None,
    busy: list[WorkerBusy] | None = None,
) -> RunUsage:
    """A run's usage from its launches and its record's epochs (`launch`, `at`, `workers`);
    a launch still open counts up to `now` (default: not at all). `busy`: the workers'
    latest reports (`merge_busy`); those of counted launches are summed, and what their
    nodes agree on prices the run."""
    parts, counted = [], set()
    for launch in launches:
        mine = [
            (at, e.get("workers"))
            for e in epochs
            if e.get("launch", 1) == launch.launch and (at := iso_seconds(e.get("at"))) is not None
        ]
        if launch.ended is None and now is None:
            continue
        counted.add(launch.launch)
        parts.append(launch_totals(launch, mine, end=now))
    mine = [b for b in busy or [] if b.launch in counted]
    nodes = agree((b.accelerator, b.market) for b in mine)
    totals = priced(add(parts), prices, where, nodes)
    busy_cpu, busy_gpu = busy_sums(mine)
    return RunUsage(
        **totals.model_dump(exclude={"basis"}),
        busy_cpu_s=busy_cpu,
        busy_gpu_s=busy_gpu,
        nodes=nodes,
        launches=launches,
        busy=list(busy or []),
    )


def sweep_usage(
    epochs: int,
    trials: list[tuple[str, str, int, RunUsage | None]],
    prices: Prices | None,
    where: str,
) -> SweepUsage:
    """A sweep's usage from its trials: (trial id, state, epochs done, the trial run's usage).

    Savings: each STOPPED trial's epochs not run (`epochs` - done), at that trial's own mean
    epoch usage (see `Savings.assumption`); ERROR trials save nothing. Busy time: the trials'
    sums; nodes: what the trials' nodes agree on."""
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
    said = [u.nodes for u in used if u.nodes is not None]
    nodes = agree((n.accelerator, n.market) for n in said)
    if nodes is not None and any(n.note for n in said):
        nodes.note = "; ".join(dict.fromkeys(n.note for n in [nodes, *said] if n.note))
    if prices is not None:
        totals = priced(totals, prices, where, nodes)
        saved.cost = cost_of(saved.cpu_s, saved.gpu_s, prices.for_nodes(nodes), where).total
    elif used and len({_rates(u.cost) for u in used}) == 1 and used[0].cost is not None:
        # Every trial was priced as it ran, at the same rates: the sweep costs their sum.
        rates = used[0].cost
        total = sum(u.cost.total for u in used if u.cost is not None)
        totals.cost = rates.model_copy(update={"total": total})
        saved.cost = _at(saved, rates)
    cpus = [u.busy_cpu_s for u in used if u.busy_cpu_s is not None]
    gpus = [u.busy_gpu_s for u in used if u.busy_gpu_s is not None]
    return SweepUsage(
        **totals.model_dump(exclude={"basis"}),
        busy_cpu_s=sum(cpus) if cpus else None,
        busy_gpu_s=sum(gpus) if gpus else None,
        nodes=nodes,
        trials=len(trials),
        trials_without_usage=[tid for tid, _, _, u in trials if u is None],
        trials_without_busy=[
            tid for tid, _, _, u in trials if u is not None and u.busy_cpu_s is None
        ],
        savings=saved,
    )


def _rates(cost: Cost | None) -> tuple | None:
    if cost is None:
        return None
    return (cost.currency, cost.market, cost.cpu_hour, cost.gpu_hour, cost.accelerator)


def _at(usage: Savings, rates: Cost) -> float:
    return usage.cpu_s / 3600 * rates.cpu_hour + usage.gpu_s / 3600 * (rates.gpu_hour or 0.0)


def reprice(stored: dict[str, Any], prices: Prices, where: str) -> dict[str, Any]:
    """A stored usage document (a run's or a sweep's) with its cost at `prices` instead (at
    the accelerator and market its nodes said, where they did)."""
    kind = SweepUsage if "savings" in stored or "trials" in stored else RunUsage
    found = kind.model_validate(stored)
    at = prices.for_nodes(found.nodes)
    found.cost = cost_of(found.cpu_s, found.gpu_s, at, where)
    if isinstance(found, SweepUsage):
        found.savings.cost = cost_of(found.savings.cpu_s, found.savings.gpu_s, at, where).total
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
        **totals.model_dump(exclude={"basis"}),
        name=name,
        replica_s=replica_s,
        cpus_per_replica=cpus_per_replica,
        gpus_per_replica=gpus_per_replica,
        samples=ordered,
    )


REPLICA_KEYS = ("worker", "replica", "cpuS", "gpuS", "at")


def merge_replica_busy(
    stored: Iterable[ReplicaBusy], reports: Iterable[Mapping[str, Any]]
) -> list[ReplicaBusy]:
    """`stored` with the replicas' `reports` (worker, replica, cpuS, gpuS, at) folded in: the
    latest per replica process wins, so a replica that went away keeps its last report."""
    latest = {b.worker: b for b in stored}
    for report in reports:
        try:
            found = ReplicaBusy.model_validate(
                {k: report[k] for k in REPLICA_KEYS if report.get(k) is not None}
            )
        except (ValidationError, TypeError) as exc:  # another version's report: skipped
            log.debug("replica busy report skipped (%s): %s", exc, report)
            continue
        if _newer(found, latest.get(found.worker)):
            latest[found.worker] = found
    return sorted(latest.values(), key=lambda b: (b.at, b.worker))


def served_usage(requested: DeploymentUsage, busy: list[ReplicaBusy]) -> ServedUsage:
    """`requested` (from `deployment_usage`) with its replicas' busy time."""
    cpu, gpu = busy_sums(busy)
    return ServedUsage(
        **requested.model_dump(exclude={"basis"}), busy=busy, busy_cpu_s=cpu, busy_gpu_s=gpu
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
    next one tries again (metering never stops serving).

    With `busy` (the replicas' busy reports since the last call: see `ServedUsage`), each
    sample folds them in and the usage handed on is a `ServedUsage`."""

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
        busy: Callable[[], Iterable[Mapping[str, Any]]] | None = None,
    ) -> None:
        self.name, self.count, self.store, self.busy_reports = name, count, store, busy
        self.busy: list[ReplicaBusy] = []
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
        if isinstance(previous, ServedUsage):
            self.busy = list(previous.busy)

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
            if self.busy_reports is not None:
                found = served_usage(found, self._fold_busy())
            self.store(found)
            return found
        except Exception as exc:  # noqa: BLE001 - metering must never stop serving
            log.warning("deployment %s: usage not recorded this time: %s", self.name, exc)
            return None

    def _fold_busy(self) -> list[ReplicaBusy]:
        assert self.busy_reports is not None
        try:
            self.busy = merge_replica_busy(self.busy, self.busy_reports())
        except Exception as exc:  # noqa: BLE001 - the reports are read again next time
            log.warning("deployment %s: replica busy time not read this time: %s", self.name, exc)
        return self.busy

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
    if (busy := _busy_line(usage)) is not None:
        lines.append(busy)
    if nodes := usage.get("nodes"):
        said = [f"{k} {nodes[k]}" for k in ("accelerator", "market") if nodes.get(k)]
        if said or nodes.get("note"):
            lines.append(
                "nodes: " + (", ".join(said) or "say nothing about accelerator or market")
                + (f" ({nodes['note']})" if nodes.get("note") else "")
            )  # fmt: skip
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


def _busy_line(usage: dict[str, Any]) -> str | None:
    """'busy CPU 41.0 s (60% of requested), GPU not measured' for a document with busy time
    (a run, a sweep, a `rayfleet serve` deployment); None for one without (the operator's
    status, or a record written before)."""
    cpu = usage.get("busyCpuS")
    if cpu is None:
        return None

    def share(busy: float, requested: float) -> str:
        return f" ({busy / requested:.0%} of requested)" if requested else ""

    line = f"busy CPU {hours(cpu)}{share(cpu, usage.get('cpuS', 0))}"
    if usage.get("gpuS"):
        gpu = usage.get("busyGpuS")
        line += ", GPU not measured" if gpu is None else f", GPU {hours(gpu)}"
        line += share(gpu, usage["gpuS"]) if gpu is not None else ""
    if missing := usage.get("trialsWithoutBusy"):
        line += f" ({len(missing)} trial(s) without busy time not counted)"
    return line
