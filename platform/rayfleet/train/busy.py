"""Busy time, measured on each training worker: what its process used of what it requested.

`BusySampler` runs in rayfleet's worker wrapper (`session.worker_main`) around every loop,
built-in recipe or a user's plain Ray Train loop alike. It measures

- CPU: the worker's process tree's CPU time, user + system, counted from the sampler's start:
  the process itself, its children it waited for (`children_user`/`children_system`, e.g.
  DataLoader workers that exited) and its children still running (psutil). Every thread of
  the process counts, Ray's own included: that is what the worker kept a core busy with.
- GPU, on a worker with a CUDA device: the device's utilisation (the share of the last
  sample period in which a kernel ran, from NVML through `torch.cuda.utilization`) x the
  time between samples, summed. Device-wide: workers sharing a GPU each count all of it.
  Without NVML (no pynvml, or a driver that does not answer) it says not measured (None).

and sends the cumulative figures to `send` every `report_every_s` seconds from a daemon
thread, at every epoch a loop reports through `session.report`, and once more when
stopped, so a worker killed mid-run loses at most the last interval; the driver keeps the
latest report per worker (rayfleet.usage). Each report also
carries what the worker's Ray node said it is (`node`: accelerator type, market).

Measuring never fails or slows training: a sample that fails is logged once and skipped.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from rayfleet.usage import ACCELERATOR_LABEL, ACCELERATOR_RESOURCE, node_facts

log = logging.getLogger(__name__)

REPORT_EVERY_S = 2.0
# Live descendants (DataLoader workers) are looked up at most this often, and at the end:
# the lookup scans every process on the machine (it showed in a training step's profile).
DESCENDANTS_EVERY_S = 30.0
GPU_SAMPLE_S = 1.0


def process_cpu_s(proc: Any) -> float:
    """CPU seconds (user + system) of `proc` (a psutil.Process) and its waited-for children:
    one read of the process's own stat file."""
    t = proc.cpu_times()
    return t.user + t.system + getattr(t, "children_user", 0.0) + getattr(t, "children_system", 0.0)


def descendants_cpu_s(proc: Any) -> float:
    """CPU seconds of `proc`'s live descendants (each with its own waited-for children).
    Finding them reads every process's parent on the machine, so it is not done often."""
    import psutil

    seconds = 0.0
    for child in proc.children(recursive=True):
        try:
            seconds += process_cpu_s(child)
        except psutil.Error:  # exited between listing and reading: its parent reaps it
            continue
    return seconds


def process_tree_cpu_s(proc: Any) -> float:
    """`proc`, its waited-for children and its live descendants: a child is counted live or,
    once its parent reaped it, in the parent's children times, never twice."""
    return process_cpu_s(proc) + descendants_cpu_s(proc)


def gpu_utilization(device: int) -> float:
    """The device's utilisation in percent over NVML's last sample period; raises when NVML
    cannot say (no pynvml, no driver)."""
    import torch

    return float(torch.cuda.utilization(device))


def node() -> dict[str, Any]:
    """What this worker's Ray node says it is: `accelerator` and `market` (None: unsaid)."""
    import ray

    context = ray.get_runtime_context()
    labels = dict(context.get_node_labels() or {})
    resources: list[str] = []
    if not labels.get(ACCELERATOR_LABEL):  # the resource, set by hand on a node without it
        here = context.get_node_id()
        for entry in ray.nodes():
            if entry.get("NodeID") == here:
                resources = [
                    r for r in entry.get("Resources", {}) if r.startswith(ACCELERATOR_RESOURCE)
                ]
    facts = node_facts(labels, resources)
    if facts.note:
        log.info("node: %s", facts.note)
    return {"accelerator": facts.accelerator, "market": facts.market}


class BusySampler:
    """Samples this process's busy time and reports it cumulatively (see the module doc).

    `send(report, final)` gets {"worker", "cpuS", "gpuS", plus `facts`}; `final` is True for
    the report `stop` sends. `gpu`: the CUDA device index to sample, or None.
    """

    def __init__(
        self,
        send: Callable[[dict[str, Any], bool], None],
        *,
        gpu: int | None = None,
        facts: dict[str, Any] | None = None,
        report_every_s: float = REPORT_EVERY_S,
        gpu_sample_s: float = GPU_SAMPLE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        import psutil

        self.send, self.gpu, self.facts = send, gpu, dict(facts or {})
        self.report_every_s, self.gpu_sample_s, self.clock = report_every_s, gpu_sample_s, clock
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._proc = psutil.Process()
        self._live = descendants_cpu_s(self._proc)
        self._live_at = time.monotonic()  # (not `clock`: that one times the GPU samples)
        self._cpu0 = process_cpu_s(self._proc) + self._live
        self._cpu = 0.0
        self._gpu_s: float | None = 0.0 if gpu is not None else None
        self._gpu_at = clock()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._warned: set[str] = set()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rayfleet-busy")

    def report(self, *, final: bool = False) -> dict[str, Any]:
        """The figures so far: CPU seconds (never less than the last report's: a child that
        exited unreaped takes its time with it) and GPU seconds (None: not measured). Live
        descendants are looked up every DESCENDANTS_EVERY_S and for the `final` report."""
        with self._lock:
            try:
                if final or time.monotonic() - self._live_at >= DESCENDANTS_EVERY_S:
                    self._live, self._live_at = descendants_cpu_s(self._proc), time.monotonic()
                used = process_cpu_s(self._proc) + self._live - self._cpu0
                self._cpu = max(self._cpu, used)
            except Exception as exc:  # noqa: BLE001 - measuring never fails training
                self._warn("cpu", exc)
            gpu = self._gpu_s
            return {"worker": self.worker, "cpuS": round(self._cpu, 3),
                    "gpuS": None if gpu is None else round(gpu, 3), **self.facts}  # fmt: skip

    def sample_gpu(self) -> None:
        """Add the GPU's utilisation x the time since the last sample."""
        if self._gpu_s is None or self.gpu is None:
            return
        now = self.clock()
        try:
            percent = gpu_utilization(self.gpu)
        except Exception as exc:  # noqa: BLE001 - no NVML: GPU busy time not measured
            self._warn("gpu", exc)
            with self._lock:
                self._gpu_s = None
            return
        with self._lock:
            if self._gpu_s is not None:
                self._gpu_s += percent / 100 * max(now - self._gpu_at, 0.0)
            self._gpu_at = now

    def report_now(self) -> None:
        """Send the figures now (rayfleet's `session.report` does, at every epoch: a sweep
        trial the scheduler stops right after an epoch keeps that epoch's figures)."""
        self._send(final=False)

    def _run(self) -> None:
        step = min(self.gpu_sample_s if self.gpu is not None else 1e9, self.report_every_s)
        last = self.clock()
        while not self._stopping.wait(step):
            self.sample_gpu()
            if self.clock() - last >= self.report_every_s - step / 2:
                last = self.clock()
                self._send(final=False)

    def _send(self, *, final: bool) -> None:
        try:
            self.send(self.report(final=final), final)
        except Exception as exc:  # noqa: BLE001 - a lost report is only a late figure
            self._warn("send", exc)

    def _warn(self, what: str, exc: BaseException) -> None:
        if what not in self._warned:
            self._warned.add(what)
            if what == "gpu":
                log.info("GPU busy time not measured (NVML did not answer: %s)", exc)
            else:
                log.warning("busy time: %s failed: %s", what, exc)

    def start(self) -> BusySampler:
        self.sample_gpu()  # the first GPU sample starts the clock
        self._send(final=False)  # the worker is known to the driver from its start
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling and send the final report."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.sample_gpu()
        self._send(final=True)


def start(send: Callable[[dict[str, Any], bool], None], *, use_gpu: bool) -> BusySampler | None:
    """A started sampler for this Ray Train worker (its CUDA device when `use_gpu`, its
    node's facts), or None when it cannot measure at all (logged): never an error."""
    try:
        gpu = None
        if use_gpu:
            import torch
            from ray.train.torch import get_device

            device = get_device()
            if torch.cuda.is_available() and device.type == "cuda":
                gpu = device.index if device.index is not None else torch.cuda.current_device()
        try:
            facts = node()
        except Exception as exc:  # noqa: BLE001 - busy time without the node's facts
            log.info("node facts not read: %s", exc)
            facts = {}
        return BusySampler(send, gpu=gpu, facts=facts).start()
    except Exception as exc:  # noqa: BLE001 - measuring never fails training
        log.warning("busy time not measured on this worker: %s", exc)
        return None
