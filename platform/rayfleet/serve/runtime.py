"""Deploy, scale, inspect and stop ModelDeployments on the Serve instance of the connected Ray.

The caller connects Ray (the CLI: `ensure_ray`, or `attach` to a running instance). Serve is
driven through its declarative config (see `deployment`): `apply_config` replaces the whole
set of config-deployed applications, so `deploy` merges ours into what is already running.

This is the one module that touches Serve's private client (`serve._private.api.serve_start`
and `ServeControllerClient.deploy_apps`/`get_serve_details`), the calls `serve run
config.yaml` makes; Ray 2.60 has no public Python API for config deploys. Everything else
uses `ray.serve`'s public API.

A new checkpoint for a running application is a rollout: Serve starts the new version's
replicas next to the old ones (`config.ROLLOUT_SURGE_PERCENT`), each loads and verifies the
checkpoint in its constructor, and only then do old replicas drain. If the new ones fail,
`deploy` re-applies the application's previous config (its replicas never stopped, and the same
config keeps their version, so they are not restarted) and raises with the reason. The rollout
is recorded in Ray's key-value store for `status` (see `rollout`).

A `rayfleet serve` running in the foreground records its Ray address and URL in a small state
file (`~/.rayfleet/serve-local.json`, or $RAYFLEET_SERVE_STATE), so `rayfleet serve status`,
`rayfleet serve SPEC --replicas N` and `rayfleet predict` in another terminal find it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rayfleet.embedded import ensure_ray
from rayfleet.errors import BadInputError, WorkFailedError
from rayfleet.retry import poll
from rayfleet.serve.auth import ServeAuthError
from rayfleet.serve.config import DEPLOYMENT, application_config
from rayfleet.serve.ingress import grpc_options, running_ingress
from rayfleet.serve.loading import ModelLoadError, ResolvedSource
from rayfleet.serve.rollout import Rollout, version_of
from rayfleet.specs.serve import ModelDeployment

STATE_ENV = "RAYFLEET_SERVE_STATE"
KV_NAMESPACE = "rayfleet"
DEFAULT_STATE = "~/.rayfleet/serve-local.json"
DEFAULT_PORT = 8000
_POLL_S = 0.25

Notify = Callable[[str], None]


class NotServingError(BadInputError):
    """No Serve instance to talk to (nothing started here, and no RAY_ADDRESS)."""


@dataclass
class AppState:
    """One served application, as `rayfleet serve status` shows it."""

    name: str
    status: str
    model_name: str | None
    checkpoint: str | None
    running: int
    target: str  # "2", or "1-4 (autoscaling)"
    route_prefix: str | None
    message: str = ""
    states: dict[str, int] = field(default_factory=dict)
    rollout: Rollout | None = None
    replicas: list[dict[str, Any]] = field(default_factory=list)  # Serve's replica details

    def rollout_summary(self) -> str | None:
        return self.rollout.summary(self.replicas) if self.rollout is not None else None


@dataclass
class DeployResult:
    name: str
    model_name: str
    url: str  # base URL of the OIP API (http://host:port + route prefix)
    checkpoint: str
    replicas: str
    elapsed_s: float
    previous_checkpoint: str | None = None  # set when this deploy rolled a new checkpoint in


# ------------------------------------------------------------------------ the Serve client


def _quiet_serve_logs() -> None:
    logging.getLogger("ray.serve").setLevel(logging.WARNING)


def start_serve(host: str = "127.0.0.1", port: int = DEFAULT_PORT, grpc_port: int | None = None):
    """Start Serve on the connected Ray (or connect to the running one); its client.

    `grpc_port`: also run Serve's gRPC ingress there, with the KServe v2 service."""
    from ray.serve._private.api import serve_start

    _quiet_serve_logs()
    return serve_start(
        http_options={"host": host, "port": port}, grpc_options=grpc_options(grpc_port)
    )


def _client():
    """The client of the Serve instance running on the connected Ray, or None."""
    from ray.serve.context import _get_global_client

    _quiet_serve_logs()
    return _get_global_client(raise_if_no_controller_running=False)


def base_url(details: dict[str, Any], route_prefix: str = "/") -> str:
    http = details.get("http_options") or {}
    host = http.get("host") or "127.0.0.1"
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    prefix = "" if route_prefix in (None, "/") else route_prefix
    return f"http://{host}:{http.get('port', DEFAULT_PORT)}{prefix}"


# ------------------------------------------------------------------------------ operations


def deploy(
    deployment: ModelDeployment,
    resolved: ResolvedSource,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    timeout_s: float = 300.0,
    notify: Notify | None = None,
) -> DeployResult:
    """Deploy (or update in place) one ModelDeployment and wait until it serves.

    `resolved` pins the checkpoint every replica loads. Replica-count changes are in-place
    (see `deployment`). Raises ModelLoadError when replicas refuse the checkpoint,
    WorkFailedError when the deployment fails otherwise or does not come up in `timeout_s`.
    """
    from ray.serve.schema import ServeDeploySchema

    started = time.monotonic()
    notify = notify or (lambda message: None)
    # A running Serve keeps its HTTP and gRPC options.
    client = _client() or start_serve(host, port, deployment.spec.grpc_port)
    details = client.get_serve_details()
    ours = application_config(deployment, checkpoint=str(resolved.uri))
    apps = [
        app["deployed_app_config"]
        for name, app in (details.get("applications") or {}).items()
        if name != deployment.name and app.get("deployed_app_config")
    ]
    clash = [a["name"] for a in apps if a.get("route_prefix") == ours["route_prefix"]]
    if clash:
        raise BadInputError(
            f"route prefix {ours['route_prefix']!r} is taken by application {clash[0]!r}; set "
            "spec.routePrefix (e.g. /" + deployment.name + ") or stop the other one"
        )
    previous = _app_status(deployment.name)
    previous_ts = previous.last_deployed_time_s if previous is not None else None
    before = (details.get("applications") or {}).get(deployment.name) or {}
    previous_config = before.get("deployed_app_config")
    config = {"http_options": details.get("http_options") or {}, "applications": [*apps, ours]}
    config["http_options"] = {
        k: v for k, v in config["http_options"].items() if k in ("host", "port", "root_path")
    }
    rollout = _start_rollout(deployment.name, before, str(resolved.uri))
    if rollout is not None:
        notify(
            f"rolling {deployment.name} from {version_of(rollout.from_checkpoint)} to "
            f"{resolved.name}: new replicas load and verify it before old ones drain"
        )
    client.deploy_apps(ServeDeploySchema.model_validate(config), _blocking=False)
    notify(f"deploying {deployment.name} ({_target(deployment)} replica(s))")
    try:
        _wait_running(deployment, previous_ts, timeout_s)
    except (BadInputError, WorkFailedError) as exc:
        if previous_config is None:
            raise
        _roll_back(client, config, previous_config, deployment, timeout_s, rollout, str(exc))
        kept = version_of((previous_config.get("args") or {}).get("checkpoint")) or "it"
        raise type(exc)(
            f"{exc}; {deployment.name} still serves {kept} (update rolled back)"
        ) from None
    if rollout is not None:
        _save_rollout(rollout.model_copy(update={"state": "done"}))
    return DeployResult(
        name=deployment.name,
        model_name=deployment.model_name,
        url=base_url(client.get_serve_details(), deployment.spec.route_prefix),
        checkpoint=str(resolved.uri),
        replicas=_target(deployment),
        elapsed_s=time.monotonic() - started,
        previous_checkpoint=rollout.from_checkpoint if rollout is not None else None,
    )


def _roll_back(client, config, previous_config, deployment, timeout_s, rollout, why) -> None:
    """Re-apply the application's config from before this deploy: Serve drops the failed
    new replicas; the old ones, which a surge rollout never stopped, keep their version."""
    from ray.serve.schema import ServeDeploySchema

    failed = _app_status(deployment.name)
    restored = {**config, "applications": [*config["applications"][:-1], previous_config]}
    client.deploy_apps(ServeDeploySchema.model_validate(restored), _blocking=False)
    if rollout is not None:
        _save_rollout(rollout.model_copy(update={"state": "rolled back", "message": why[:300]}))
    failed_ts = failed.last_deployed_time_s if failed is not None else None
    ours = next(
        (d for d in previous_config.get("deployments") or [] if d.get("name") == DEPLOYMENT), {}
    )
    _wait_running(deployment, failed_ts, timeout_s, want=ours.get("num_replicas"))


# ---------------------------------------------------------------------- the rollout record


def _rollout_key(name: str) -> bytes:
    return f"serve-rollout:{name}".encode()


def _start_rollout(name: str, app: dict[str, Any], checkpoint: str) -> Rollout | None:
    """Record a rollout when `app` (Serve's details of the running application) serves
    another checkpoint than `checkpoint`: its current replicas are the old version."""
    previous = ((app.get("deployed_app_config") or {}).get("args") or {}).get("checkpoint")
    if not previous or previous == checkpoint:
        return None
    replicas = ((app.get("deployments") or {}).get(DEPLOYMENT) or {}).get("replicas") or []
    rollout = Rollout(
        application=name,
        from_checkpoint=previous,
        to_checkpoint=checkpoint,
        old_replicas=[r["replica_id"] for r in replicas if r.get("replica_id")],
        started_s=time.time(),
    )
    _save_rollout(rollout)
    return rollout


def _save_rollout(rollout: Rollout) -> None:
    from ray.experimental.internal_kv import _internal_kv_put

    key, value = _rollout_key(rollout.application), rollout.model_dump_json().encode()
    _internal_kv_put(key, value, overwrite=True, namespace=KV_NAMESPACE)


def _read_rollout(name: str, checkpoint: str | None) -> Rollout | None:
    """The last rollout of application `name`, if it concerns the checkpoint now deployed
    (rolled to it, or rolled back to it)."""
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(_rollout_key(name), namespace=KV_NAMESPACE)
    if raw is None:
        return None
    try:
        rollout = Rollout.model_validate_json(raw)
    except ValueError:
        return None
    target = rollout.from_checkpoint if rollout.state == "rolled back" else rollout.to_checkpoint
    return rollout if target == checkpoint else None


# ---------------------------------------------------------------------- replicas' busy time
#
# Each replica (`deployment.ModelServer`) overwrites one key with its cumulative busy report
# every few seconds; `rayfleet serve`'s meter reads them all (`usage.ReplicaMeter`). A key per
# replica process rather than an actor the replicas push to: nothing to create, place or keep
# alive, start order does not matter, the latest report per replica is what the store holds
# anyway, and a replica that went away leaves its last one (the rollout record lives here too).

BUSY_STALE_S = 600.0  # a report not renewed for this long: its replica is gone


def _busy_prefix(app: str) -> bytes:
    return f"serve-busy:{app}:".encode()


def put_busy_report(app: str, report: dict[str, Any]) -> None:
    """Keep a replica's cumulative busy report (`train.busy.BusySampler`'s, plus `at`) under
    its process's key for application `app`."""
    from ray.experimental.internal_kv import _internal_kv_put

    key = _busy_prefix(app) + str(report["worker"]).encode()
    _internal_kv_put(key, json.dumps(report).encode(), overwrite=True, namespace=KV_NAMESPACE)


def busy_reports(app: str, *, now: float | None = None) -> list[dict[str, Any]]:
    """The latest busy report of every replica process of application `app`. Reports not
    renewed for BUSY_STALE_S are returned once more and then dropped from the store: the
    caller (the meter) keeps them in the deployment's usage document."""
    from ray.experimental.internal_kv import (
        _internal_kv_del,
        _internal_kv_get,
        _internal_kv_list,
    )

    now = time.time() if now is None else now
    reports = []
    for key in _internal_kv_list(_busy_prefix(app), namespace=KV_NAMESPACE):
        raw = _internal_kv_get(key, namespace=KV_NAMESPACE)
        try:
            report = json.loads(raw) if raw is not None else None
        except ValueError:
            report = None
        if not isinstance(report, dict):
            continue
        reports.append(report)
        at = report.get("at")
        if isinstance(at, int | float) and now - at > BUSY_STALE_S:
            _internal_kv_del(key, namespace=KV_NAMESPACE)
    return reports


def _target(deployment: ModelDeployment) -> str:
    a = deployment.spec.autoscaling
    if a is not None:
        return f"{a.min_replicas}-{a.max_replicas} (autoscaling)"
    return str(deployment.num_replicas)


def _app_status(name: str):
    from ray import serve

    return serve.status().applications.get(name)


def _failure(deployment: ModelDeployment, message: str) -> Exception:
    """The one line that says why replicas failed, from Serve's (traceback) message."""
    for kind in (ModelLoadError, ServeAuthError):
        marker = f"{kind.__module__}.{kind.__name__}: "
        for line in message.splitlines():
            if marker in line:
                return kind(line.split(marker, 1)[1].strip())
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    detail = lines[-1][:300] if lines else "no message"
    return WorkFailedError(
        f"deployment {deployment.name} failed: {detail}; see the replica logs "
        "(rerun with --verbose)"
    )


def _wait_running(
    deployment: ModelDeployment,
    previous_ts: float | None,
    timeout_s: float,
    want: int | None | str = "spec",
):
    """Until the deployment runs `want` replicas (default: the spec's; None: any number,
    as under autoscaling), all settled. Raises what `_failure` makes of a failed deploy."""
    if want == "spec":
        want = deployment.num_replicas  # None under autoscaling
    last = None

    def running() -> bool | None:
        nonlocal last
        app = last = _app_status(deployment.name)
        if app is not None and (previous_ts is None or app.last_deployed_time_s != previous_ts):
            dep = app.deployments.get(DEPLOYMENT)
            if app.status == "DEPLOY_FAILED":
                # The replica's traceback is in the deployment's message, not the app's.
                raise _failure(deployment, f"{dep.message if dep else ''}\n{app.message}")
            if app.status == "RUNNING" and dep is not None:
                states = {str(getattr(k, "value", k)): v for k, v in dep.replica_states.items()}
                settled = sum(states.values()) == states.get("RUNNING", 0)
                if want is None or (states.get("RUNNING") == want and settled):
                    return True
        return None

    def not_running() -> Exception:
        state = f"{last.status}: {last.message[:200]}" if last is not None else "not created"
        return WorkFailedError(
            f"deployment {deployment.name} is not running after {timeout_s:.0f}s ({state}); "
            "check `rayfleet serve status` and the replica logs (--verbose)"
        )

    poll(
        running,
        timeout=timeout_s,
        interval=_POLL_S,
        what=f"deployment {deployment.name} to run",
        on_timeout=not_running,
    )


def status() -> list[AppState]:
    """Every application on the connected Serve instance."""
    from ray import serve

    client = _client()
    if client is None:
        return []
    details = client.get_serve_details()
    overview = serve.status().applications
    out = []
    for name, app in sorted(overview.items()):
        detail = (details.get("applications") or {}).get(name) or {}
        config = detail.get("deployed_app_config") or {}
        args = config.get("args") or {}
        spec = (args.get("spec") or {}).get("spec") or {}
        override = next(
            (d for d in config.get("deployments") or [] if d.get("name") == DEPLOYMENT), {}
        )
        if "autoscaling_config" in override:
            a = override["autoscaling_config"]
            target = f"{a.get('min_replicas')}-{a.get('max_replicas')} (autoscaling)"
        else:
            target = str(override.get("num_replicas", "?"))
        dep = app.deployments.get(DEPLOYMENT)
        states = (
            {str(getattr(k, "value", k)): v for k, v in dep.replica_states.items()} if dep else {}
        )
        replicas = ((detail.get("deployments") or {}).get(DEPLOYMENT) or {}).get("replicas")
        out.append(
            AppState(
                name=name,
                status=str(getattr(app.status, "value", app.status)),
                model_name=spec.get("modelName")
                or (args.get("spec") or {}).get("metadata", {}).get("name"),
                checkpoint=args.get("checkpoint"),
                running=states.get("RUNNING", 0),
                target=target,
                route_prefix=detail.get("route_prefix"),
                message=app.message,
                states=states,
                rollout=_read_rollout(name, args.get("checkpoint")),
                replicas=[
                    {"replica_id": r.get("replica_id"), "state": _state_name(r.get("state"))}
                    for r in replicas or []
                ],
            )
        )
    return out


def _state_name(state: Any) -> str:
    """A Serve state enum (or its value) as its name: "RUNNING", not "ReplicaState.RUNNING"."""
    return str(getattr(state, "value", state))


def serve_url(route_prefix: str = "/") -> str | None:
    """Base URL of the connected Serve instance's HTTP proxy, or None if Serve is not running."""
    client = _client()
    return base_url(client.get_serve_details(), route_prefix) if client is not None else None


# -------------------------------------------------------------- the local instance's record


def state_path() -> Path:
    return Path(os.path.expanduser(os.environ.get(STATE_ENV) or DEFAULT_STATE))


def write_local_state(url: str) -> None:
    import ray

    path = state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "pid": os.getpid(),
        "ray_address": ray.get_runtime_context().gcs_address,
        "auth_mode": "token" if _token_auth_on() else "disabled",
        "url": url,
        "ingress": running_ingress(),
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, path)


def _token_auth_on() -> bool:
    from ray._raylet import AuthenticationMode, get_authentication_mode

    return get_authentication_mode() == AuthenticationMode.TOKEN


def read_local_state() -> dict[str, Any] | None:
    """The running local `rayfleet serve`'s record, or None (absent, stale or unreadable)."""
    try:
        doc = json.loads(state_path().read_text())
        os.kill(int(doc["pid"]), 0)  # is that process still alive?
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return doc


def clear_local_state() -> None:
    doc = None
    try:
        doc = json.loads(state_path().read_text())
    except (OSError, ValueError):
        pass
    if doc is not None and doc.get("pid") == os.getpid():
        state_path().unlink(missing_ok=True)


def attach(*, verbose: bool = False) -> tuple[bool, bool]:
    """Connect to the Ray that runs Serve: the current one, RAY_ADDRESS, or the local
    `rayfleet serve`. Returns (connected, owned): disconnect with `ray.shutdown()` when owned.
    """
    import ray

    if ray.is_initialized():
        return True, False
    if not os.environ.get("RAY_ADDRESS"):
        local = read_local_state()
        if local is None:
            return False, False
        os.environ["RAY_ADDRESS"] = local["ray_address"]
        if "RAY_AUTH_MODE" not in os.environ and local.get("auth_mode") == "token":
            _use_token_auth()
    address = os.environ["RAY_ADDRESS"]
    try:
        return True, ensure_ray(verbose=verbose)
    except ConnectionError as exc:
        raise NotServingError(
            f"cannot connect to Ray at {address} ({str(exc).splitlines()[0][:160]}); is the "
            "`rayfleet serve` that started it still running? Check RAY_ADDRESS, or remove "
            f"{state_path()} if that process is gone"
        ) from None


def _use_token_auth() -> None:
    """Send the local token (~/.ray/auth_token) when connecting to our own local Ray.

    A Ray started by `ray.init()` turns token auth on by default, but a driver connecting to an
    explicit address only sends the token when RAY_AUTH_MODE says so, and Ray caches its
    config at import. This is what Ray itself does when it turns token auth on in-process.
    """
    from ray._raylet import Config

    os.environ["RAY_AUTH_MODE"] = "token"
    Config.initialize("")
