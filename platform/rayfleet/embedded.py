"""The Ray a rayfleet command runs on: the cluster in RAY_ADDRESS, or an embedded local Ray.

`rayfleet run`, `rayfleet sweep` and `rayfleet serve` all start Ray the same way, so the
settings that make an embedded Ray lean on a small machine live here, once.
"""

from __future__ import annotations

import logging
import os

from rayfleet.local import free_port

# An embedded Ray runs training actors only: pre-started task workers would sit idle and the
# metrics agent has no Prometheus to feed. Off, idle Ray takes 3.1% of a core here, not 4.7%
# (measured over 30 s), and on a small machine every daemon cycle comes out of training.
EMBEDDED_RAY_CONFIG = {
    "worker_niceness": 0,
    "prestart_worker_first_driver": False,
    "enable_worker_prestart": False,
    "enable_metrics_collection": False,
}
_API_SERVER_ENV = "RAY_API_SERVER_ADDRESS"


def ensure_ray(
    *, verbose: bool = False, dashboard: bool = False, metrics_port: int | None = None
) -> bool:
    """Start an embedded local Ray sized to this machine unless one is connected.

    `dashboard` starts Ray's dashboard, which also serves the State API. Sweeps whose trials
    are Ray Train runs need it: when Tune stops a trial early, Ray Train's placement-group
    cleaner asks the State API whether the trial's controller died, and without it the
    stopped trial's CPUs are never released (trials trained in-process have no such group).
    The cleaner finds the API by auto-detection, which fails when another Ray runs on the
    same machine (CI, a second terminal), so its address is pinned for every Ray process
    through RAY_API_SERVER_ADDRESS, set before Ray starts so the workers inherit it.
    `metrics_port` turns the metrics agent back on and exports Prometheus metrics there. Ray
    binds that exporter to all interfaces unless the node's address is loopback, and it turns
    a loopback `_node_ip_address` into the machine's address (measured, Ray 2.60), so the
    port is reachable from the network: opt-in only. Returns True when this call started Ray
    (the caller then shuts it down).
    """
    import ray

    if ray.is_initialized():
        return False
    common = {
        "log_to_driver": verbose,
        "logging_level": logging.INFO if verbose else logging.WARNING,
    }
    if address := os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, **common)
        return True
    # One local node can't be drained or preempted on its own: skip Ray Train's watcher actor.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    if dashboard:
        port = free_port()
        os.environ[_API_SERVER_ENV] = f"http://127.0.0.1:{port}"
        common.update(dashboard_host="127.0.0.1", dashboard_port=port)
    # address="local": a new instance, always. Without it ray.init() connects to whatever
    # `ray start` cluster /tmp/ray/ray_current_cluster names (even a stale one), so a run
    # next to a test head or a teammate's cluster would join it, or fail to.
    config = EMBEDDED_RAY_CONFIG
    if metrics_port is not None:
        config = {**config, "enable_metrics_collection": True}
        common.update(_metrics_export_port=metrics_port)
    ray.init(
        address="local",
        num_cpus=os.cpu_count(),
        include_dashboard=dashboard,
        _system_config=config,
        **common,
    )
    return True
