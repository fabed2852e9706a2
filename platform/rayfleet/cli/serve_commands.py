"""`rayfleet serve SPEC`, `rayfleet serve status`, `rayfleet predict NAME --input FILE|-`.

`serve` is a group whose first argument is a spec file or a subcommand (`status`), like
`sweep` (one rule for both: `rayfleet.cli.options.SpecOrCommand`).

`rayfleet serve SPEC` verifies the model source before anything starts (a corrupt or
unverified checkpoint exits 2 in seconds), then:

- with nothing running here: starts an embedded Ray and Serve, deploys, prints the URL and the
  next command, and serves in the foreground until Ctrl-C (an embedded Ray lives as long as
  the process that started it);
- with a `rayfleet serve` already running here (or RAY_ADDRESS pointing at a cluster): updates
  that instance in place and returns. So `rayfleet serve SPEC --replicas 3` in a second
  terminal rescales the running model without dropping requests, and a spec whose source now
  resolves to another checkpoint rolls the model in place (new replicas load and verify it
  before old ones drain; if they can't, the old model keeps serving and this exits non-zero).

With `spec.auth`, the replicas require a bearer token, which they read from
RAYFLEET_SERVE_TOKEN in their environment. The embedded Ray this command starts inherits this
process's environment, so the token comes from RAYFLEET_SERVE_TOKEN or --serve-token-file (exported
to the embedded Ray, never into the Serve config, the state file or the output); without one
it refuses to start. Replicas on a running instance or cluster use that instance's token.
`rayfleet predict` sends the token from --serve-token-file or RAYFLEET_SERVE_TOKEN.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import typer

from rayfleet import usage
from rayfleet.cli.options import SetOption, SpecOrCommand, VerboseOption
from rayfleet.cli.output import (
    Output,
    OutputOption,
    console,
    err_console,
    handle_errors,
    print_json,
    print_table,
    table,
)
from rayfleet.embedded import ensure_ray
from rayfleet.errors import BadInputError, SpecError
from rayfleet.serve import runtime
from rayfleet.serve.auth import (
    TOKEN_ENV,
    ServeAuthError,
    check_token,
    client_token,
    read_token_file,
)
from rayfleet.serve.client import PredictClient
from rayfleet.serve.client import output as response_output
from rayfleet.serve.ingress import apply_local_env
from rayfleet.serve.loading import pin_checkpoint, resolve_source
from rayfleet.serve.protocol import build_request
from rayfleet.serve.runtime import read_local_state
from rayfleet.specs import load_spec
from rayfleet.storage import documents

URL_ENV = "RAYFLEET_SERVE_URL"
DEFAULT_URL = "http://127.0.0.1:8000"
# The serving bearer token (spec.auth), not Ray's: `--token-file` is the Ray auth token in
# `rayfleet submit`, `jobs` and `doctor`. The old name still works here, with a note.
ServeTokenFileOption = typer.Option(
    None,
    "--serve-token-file",
    help="File holding Serve's bearer token (spec.auth); default $RAYFLEET_SERVE_TOKEN.",
)
DeprecatedTokenFileOption = typer.Option(None, "--token-file", hidden=True)


def _serve_token_file(token_file: str | None, deprecated: str | None) -> str | None:
    if deprecated is not None:
        err_console.print(
            "note: --token-file is deprecated here; use --serve-token-file (Serve's bearer "
            "token; --token-file is the Ray auth token elsewhere)",
            highlight=False,
        )
    return token_file or deprecated


app = typer.Typer(
    cls=SpecOrCommand,
    help="Serve a ModelDeployment over HTTP (Open Inference Protocol): "
    "`rayfleet serve SPEC [--replicas N]`, `rayfleet serve status`.",
    no_args_is_help=True,
)


# ----------------------------------------------------------------------------------- serve


@app.command("start", hidden=True)
@handle_errors
def serve(
    target: Path = typer.Argument(..., metavar="SPEC", help="ModelDeployment spec YAML."),
    overrides: list[str] = SetOption,
    replicas: int | None = typer.Option(
        None, "--replicas", min=1, help="Replica count; changes a running deployment in place."
    ),
    host: str = typer.Option("127.0.0.1", help="HTTP address when this starts Serve."),
    port: int = typer.Option(8000, min=1, max=65535, help="HTTP port when this starts Serve."),
    timeout: float = typer.Option(300.0, help="Seconds to wait for replicas to be running."),
    verbose: bool = VerboseOption,
    token_file: str | None = ServeTokenFileOption,
    deprecated_token_file: str | None = DeprecatedTokenFileOption,
    metrics_port: int | None = typer.Option(
        None,
        "--metrics-port",
        min=1,
        max=65535,
        help="When this starts Ray: export Prometheus metrics (Ray's, Serve's, per model "
        "version) at :PORT/metrics. Ray binds it on all interfaces: use it on a trusted "
        "network only.",
    ),
) -> None:
    """Serve a ModelDeployment over HTTP (Open Inference Protocol); `serve status` lists them."""

    token_file = _serve_token_file(token_file, deprecated_token_file)
    token = read_token_file(token_file) if token_file else None

    deployment = load_spec(target, overrides or [], expect="ModelDeployment")
    if replicas is not None:
        if deployment.spec.autoscaling is not None:
            raise SpecError(
                f"{target}: --replicas conflicts with spec.autoscaling; remove autoscaling "
                "from the spec or change its minReplicas/maxReplicas"
            )
        deployment = deployment.with_replicas(replicas)
    resolved = resolve_source(deployment)
    for line in resolved.skipped:
        console.print(f"[yellow]{line}[/]", highlight=False)
    console.print(
        f"[bold]{deployment.model_name}[/] <- {resolved.via}: {resolved.summary()}",
        highlight=False,
    )

    connected, owned = runtime.attach(verbose=verbose)
    if connected:
        _check_ingress(deployment)
        if metrics_port is not None:
            _note(
                "--metrics-port is used when this command starts Ray; the running one keeps its own"
            )
        if token_file:
            _note(
                "--serve-token-file is used when this command starts Serve; the running instance's "
                "replicas check the token in their own environment"
            )
        try:
            _pin(deployment, resolved)
            result = runtime.deploy(
                deployment, resolved, host=host, port=port, timeout_s=timeout, notify=_note
            )
        finally:
            if owned:
                import ray

                ray.shutdown()
        if result.previous_checkpoint:
            console.print(
                f"[green]rolled[/] {result.name} from "
                f"{result.previous_checkpoint.rstrip('/').rsplit('/', 1)[-1]} to {resolved.name}",
                highlight=False,
            )
        console.print(
            f"[green]serving[/] {result.name}: {result.replicas} replica(s) at {result.url} "
            f"({result.elapsed_s:.1f}s)",
            highlight=False,
        )
        return
    _export_token(deployment, token)
    _check_port(host, port)
    if deployment.spec.grpc_port is not None:
        _check_port(host, deployment.spec.grpc_port, "set another spec.grpcPort")

    apply_local_env(deployment.spec.ingress, host)  # before Ray starts: its processes inherit it
    _pin(deployment, resolved)
    _serve_foreground(target, deployment, resolved, host, port, timeout, verbose, metrics_port)


def _check_ingress(deployment) -> None:
    """The ingress is the running Ray instance's (set when it started): say so when the spec
    asks for another one, rather than silently serving through the other."""

    local = read_local_state()
    running = (local or {}).get("ingress")
    if running and running != deployment.spec.ingress:
        _note(
            f"spec.ingress is {deployment.spec.ingress} but the running `rayfleet serve` uses "
            f"{running} (fixed when its Ray started); restart it to switch"
        )


def _note(message: str) -> None:
    console.print(f"[cyan]{message}[/]", highlight=False)


def _export_token(deployment, token: str | None) -> None:
    """Hand the replicas of the Ray this process starts their token: through the environment
    they inherit (see `rayfleet.serve.auth` for why nothing else carries it)."""

    if token is None and os.environ.get(TOKEN_ENV, "").strip() and deployment.spec.auth:
        token = check_token(os.environ[TOKEN_ENV], f"${TOKEN_ENV}")
    if token is None and deployment.spec.auth is not None:
        raise ServeAuthError(
            f"{deployment.name}: spec.auth is on but no token was given; set {TOKEN_ENV} or "
            "pass --serve-token-file FILE (the token clients must send; generate one with "
            "`openssl rand -hex 32`)"
        )
    if token is not None:
        os.environ[TOKEN_ENV] = token


def _pin(deployment, resolved) -> None:
    """Pin the checkpoint before deploying it, so pruning its run never deletes it."""

    warning = pin_checkpoint(deployment, resolved.uri)
    if warning:
        err_console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)


def _check_port(host: str, port: int, change: str = "pass --port") -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            raise BadInputError(
                f"cannot listen on {host}:{port} ({exc.strerror}); {change}, or stop what uses it"
            ) from None


def _serve_foreground(
    target, deployment, resolved, host, port, timeout, verbose, metrics_port=None
) -> None:
    import ray

    ensure_ray(verbose=verbose, metrics_port=metrics_port)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        result = runtime.deploy(
            deployment, resolved, host=host, port=port, timeout_s=timeout, notify=_note
        )
        base = runtime.base_url({"http_options": {"host": host, "port": port}})
        runtime.write_local_state(base)
        name = result.model_name
        url_arg = "" if result.url == base else f" --url {result.url}"
        auth = "  (sends $RAYFLEET_SERVE_TOKEN)" if deployment.spec.auth else ""
        curl_auth = ' -H "Authorization: Bearer $RAYFLEET_SERVE_TOKEN"' if auth else ""
        grpc_port = deployment.spec.grpc_port
        grpc_line = f"  gRPC:   {host}:{grpc_port} (KServe v2 gRPC)\n" if grpc_port else ""
        console.print(
            f"[green]serving[/] {name} at {result.url} ({result.replicas} replica(s), "
            f"ready in {result.elapsed_s:.1f}s)\n"
            f"  try:    rayfleet predict {name} --input examples.json{url_arg}"
            f"   (or --input - for stdin){auth}\n"
            f"          curl{curl_auth} {result.url}/v2/models/{name}\n"
            f"{grpc_line}"
            f"  scale:  rayfleet serve {target} --replicas 2\n"
            "  status: rayfleet serve status\n"
            "Ctrl-C stops serving.",
            highlight=False,
        )
        with _meter(deployment):  # replica-hours to <storage>/deployments/NAME/usage.json
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        console.print("stopping ...", highlight=False)
    finally:
        signal.signal(signal.SIGTERM, previous)
        runtime.clear_local_state()
        # The embedded Ray takes Serve, its proxy and replicas with it. (serve.shutdown()
        # first would only add a spurious "graceful_shutdown failed" line from Ray.)
        ray.shutdown()
    console.print("[green]stopped[/]", highlight=False)


def _meter(deployment):
    """Sample the served replica count and the replicas' busy time into the deployment's
    usage document (rayfleet.usage), priced with $RAYFLEET_PRICES when set."""

    name = deployment.name
    uri = deployment.storage_uri().join("deployments", name, usage.USAGE_FILE)

    def store(found: usage.ServedUsage) -> None:
        doc = found.model_dump(mode="json", by_alias=True)
        documents.update(uri, lambda d: (d.clear(), d.update(doc)))

    meter = usage.ReplicaMeter(
        name,
        lambda: sum(a.running for a in runtime.status() if a.name == name),
        store,
        cpus_per_replica=deployment.spec.cpus_per_replica,
        gpus_per_replica=deployment.spec.gpus_per_replica,
        prices=usage.load_prices(None),
        busy=lambda: runtime.busy_reports(name),
    )
    if (previous := documents.read(uri).json()) is not None:
        meter.resume(usage.ServedUsage.model_validate(previous))
    return meter


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


@app.command("status")
@handle_errors
def status(
    verbose: bool = VerboseOption,
    output: Output = OutputOption,
) -> None:
    """The applications served here (or on RAY_ADDRESS): model, status, replicas, URL."""

    connected, owned = runtime.attach(verbose=verbose)
    if not connected:
        if output is Output.json:
            return print_json({"serving": False, "url": None, "applications": []})
        console.print(
            "nothing is served here: no `rayfleet serve` is running on this machine and "
            "RAY_ADDRESS is not set",
            highlight=False,
        )
        return
    try:
        apps = runtime.status()
        url = runtime.serve_url()
    finally:
        if owned:
            import ray

            ray.shutdown()
    docs = [_app_doc(app, url) for app in apps]
    if output is Output.json:
        return print_json({"serving": bool(url), "url": url, "applications": docs})
    if not apps:
        console.print("Serve is running with no applications" if url else "Serve is not running")
        return
    print_table(
        table(
            ["NAME", "MODEL", "STATUS", "REPLICAS", "URL", "CHECKPOINT"],
            [
                (
                    d["name"],
                    d["model"] or "-",
                    d["status"],
                    f"{d['running']}/{d['target']}",
                    d["url"] or "-",
                    (d["checkpoint"] or "-").rsplit("/", 1)[-1],
                )
                for d in docs
            ],
        )
    )
    for app, d in zip(apps, docs, strict=True):
        rollout = d["rollout"]
        if rollout and (rollout["state"] != "done" or rollout["old"]):
            console.print(f"{d['name']}: {app.rollout_summary()}", highlight=False)
    for d in docs:
        if d["status"] not in ("RUNNING",) and d["message"]:
            err_console.print(f"{d['name']}: {d['message'].strip().splitlines()[-1][:300]}")


def _app_doc(app, url: str | None) -> dict[str, Any]:
    """One application in `serve status -o json`: name, model, status, running (replicas),
    target ("2", or "1-4 (autoscaling)"), url, checkpoint (its URI), message, and rollout: the
    last checkpoint change (from, to, state, and live replicas per side by state), or None."""
    prefix = app.route_prefix or "/"
    base = (url or "").rstrip("/") + ("" if prefix == "/" else prefix)
    rollout = None
    if app.rollout is not None:
        counts = app.rollout.counts(app.replicas)
        rollout = {
            "from": app.rollout.from_checkpoint,
            "to": app.rollout.to_checkpoint,
            "state": app.rollout.state,
            "old": counts["old"],
            "new": counts["new"],
            "message": app.rollout.message,
        }
    return {
        "name": app.name,
        "model": app.model_name,
        "status": app.status,
        "running": app.running,
        "target": app.target,
        "url": base or None,
        "checkpoint": app.checkpoint,
        "message": app.message,
        "rollout": rollout,
    }


# --------------------------------------------------------------------------------- predict


@handle_errors
def predict(
    model: str = typer.Argument(..., help="Model name (as in /v2/models/NAME)."),
    input_path: str = typer.Option(
        ...,
        "--input",
        "-i",
        help="JSON file (an OIP request, or an array of examples), a .npy file, or - for stdin.",
    ),
    url: str | None = typer.Option(
        None,
        "--url",
        help=f"Server URL; default the local `rayfleet serve`, ${URL_ENV}, or {DEFAULT_URL}.",
    ),
    retries: int = typer.Option(5, min=0, help="Retries on connection errors and 503."),
    timeout: float = typer.Option(30.0, min=0.1, help="Seconds per attempt."),
    output: Output = OutputOption,
    raw: bool = typer.Option(False, "--json", hidden=True, help="Deprecated: use -o json."),
    token_file: str | None = ServeTokenFileOption,
    deprecated_token_file: str | None = DeprecatedTokenFileOption,
) -> None:
    """Classify examples with a served model (retries with backoff while it is unavailable).

    `-o json` prints the server's Open Inference Protocol response as it is."""

    token = client_token(_serve_token_file(token_file, deprecated_token_file)) or ""
    payload = _read_input(input_path)
    with PredictClient(resolve_url(url), retries=retries, timeout_s=timeout, token=token) as client:
        if isinstance(payload, dict):
            body = payload
        else:
            meta = client.metadata(model)
            try:
                body = build_request(payload, meta["inputs"][0])
            except ValueError as exc:
                raise BadInputError(f"--input {input_path}: {exc}") from None
        response = client.infer(model, body)
    if raw or output is Output.json:
        return print_json(response)
    try:
        classes = response_output(response, "predicted_class")["data"]
    except KeyError:
        typer.echo(json.dumps(response))
        return
    probs = _rows(response, "probabilities")
    for i, label in enumerate(classes):
        p = f"  p={probs[i][label]:.3f}" if probs is not None else ""
        typer.echo(f"{i}  class {label}{p}")


def resolve_url(url: str | None) -> str:
    """--url, else $RAYFLEET_SERVE_URL, else the local `rayfleet serve`'s URL, else :8000."""
    if url:
        return url
    if os.environ.get(URL_ENV):
        return os.environ[URL_ENV]

    local = read_local_state()
    return (local or {}).get("url") or DEFAULT_URL


def _rows(response: dict[str, Any], name: str) -> list[list[float]] | None:

    try:
        tensor = response_output(response, name)
    except KeyError:
        return None
    n, k = tensor["shape"]
    data = tensor["data"]
    return [data[i * k : (i + 1) * k] for i in range(n)]


def _read_input(path: str) -> Any:
    """A dict (an OIP request as-is) or a numpy array of examples."""
    import numpy as np

    if path != "-" and path.endswith(".npy"):
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise BadInputError(f"--input {path}: cannot read it as .npy ({exc})") from None
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise BadInputError(f"--input {path}: cannot read it ({exc.strerror})") from None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise BadInputError(f"--input {path}: not valid JSON ({exc})") from None
    if isinstance(doc, dict):
        if "inputs" not in doc:
            raise BadInputError(
                f'--input {path}: a JSON object must be an OIP request with "inputs"; '
                "or pass an array of examples"
            )
        return doc
    try:
        array = np.asarray(doc, dtype=np.float64)
    except (TypeError, ValueError):
        raise BadInputError(
            f"--input {path}: expected an array of numbers (one example or a list of them)"
        ) from None
    return array
