"""`rayfleet serve SPEC`, `rayfleet serve status`, `rayfleet predict NAME --input FILE|-`.

`rayfleet serve SPEC` verifies the model source before anything starts (a corrupt or
unverified checkpoint exits 2 in seconds), then:

- with nothing running here: starts an embedded Ray and Serve, deploys, prints the URL and the
  next command, and serves in the foreground until Ctrl-C (an embedded Ray lives as long as
  the process that started it);
- with a `rayfleet serve` already running here (or RAY_ADDRESS pointing at a cluster): updates
  that instance in place and returns. So `rayfleet serve SPEC --replicas 3` in a second
  terminal rescales the running model without dropping requests.

With `spec.auth`, the replicas require a bearer token, which they read from
RAYFLEET_SERVE_TOKEN in their environment. The embedded Ray this command starts inherits this
process's environment, so the token comes from RAYFLEET_SERVE_TOKEN or --token-file (exported
to the embedded Ray, never into the Serve config, the state file or the output); without one
it refuses to start. Replicas on a running instance or cluster use that instance's token.
`rayfleet predict` sends the token from --token-file or RAYFLEET_SERVE_TOKEN.
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

from rayfleet.cli.output import console, err_console, handle_errors
from rayfleet.cli.spec_commands import SetOption
from rayfleet.errors import BadInputError, SpecError

URL_ENV = "RAYFLEET_SERVE_URL"
DEFAULT_URL = "http://127.0.0.1:8000"
TokenFileOption = typer.Option(
    None,
    "--token-file",
    help="File holding the bearer token (spec.auth); default $RAYFLEET_SERVE_TOKEN.",
)


# ----------------------------------------------------------------------------------- serve


@handle_errors
def serve(
    target: str = typer.Argument(
        ..., metavar="SPEC|status", help="ModelDeployment spec YAML, or `status`."
    ),
    overrides: list[str] = SetOption,
    replicas: int | None = typer.Option(
        None, "--replicas", min=1, help="Replica count; changes a running deployment in place."
    ),
    host: str = typer.Option("127.0.0.1", help="HTTP address when this starts Serve."),
    port: int = typer.Option(8000, min=1, max=65535, help="HTTP port when this starts Serve."),
    timeout: float = typer.Option(300.0, help="Seconds to wait for replicas to be running."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Ray and replica logs."),
    token_file: str | None = TokenFileOption,
) -> None:
    """Serve a ModelDeployment over HTTP (Open Inference Protocol); `serve status` lists them."""
    if target == "status" and not Path(target).is_file():
        return _status(verbose)

    from rayfleet.serve.auth import read_token_file
    from rayfleet.serve.loading import resolve_source
    from rayfleet.specs import load_spec

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

    from rayfleet.serve import runtime

    connected, owned = runtime.attach(verbose=verbose)
    if connected:
        if token_file:
            _note(
                "--token-file is used when this command starts Serve; the running instance's "
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
        console.print(
            f"[green]serving[/] {result.name}: {result.replicas} replica(s) at {result.url} "
            f"({result.elapsed_s:.1f}s)",
            highlight=False,
        )
        return
    _export_token(deployment, token)
    _check_port(host, port)
    _pin(deployment, resolved)
    _serve_foreground(target, deployment, resolved, host, port, timeout, verbose)


def _note(message: str) -> None:
    console.print(f"[cyan]{message}[/]", highlight=False)


def _export_token(deployment, token: str | None) -> None:
    """Hand the replicas of the Ray this process starts their token: through the environment
    they inherit (see `rayfleet.serve.auth` for why nothing else carries it)."""
    from rayfleet.serve.auth import TOKEN_ENV, ServeAuthError, check_token

    if token is None and os.environ.get(TOKEN_ENV, "").strip() and deployment.spec.auth:
        token = check_token(os.environ[TOKEN_ENV], f"${TOKEN_ENV}")
    if token is None and deployment.spec.auth is not None:
        raise ServeAuthError(
            f"{deployment.name}: spec.auth is on but no token was given; set {TOKEN_ENV} or "
            "pass --token-file FILE (the token clients must send; generate one with "
            "`openssl rand -hex 32`)"
        )
    if token is not None:
        os.environ[TOKEN_ENV] = token


def _pin(deployment, resolved) -> None:
    """Pin the checkpoint before deploying it, so pruning its run never deletes it."""
    from rayfleet.serve.loading import pin_checkpoint

    warning = pin_checkpoint(deployment, resolved.uri)
    if warning:
        err_console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)


def _check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            raise BadInputError(
                f"cannot listen on {host}:{port} ({exc.strerror}); pass --port, or stop what "
                "uses it"
            ) from None


def _serve_foreground(target, deployment, resolved, host, port, timeout, verbose) -> None:
    import ray

    from rayfleet.serve import runtime
    from rayfleet.train.launcher import ensure_ray

    ensure_ray(verbose=verbose)
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
        console.print(
            f"[green]serving[/] {name} at {result.url} ({result.replicas} replica(s), "
            f"ready in {result.elapsed_s:.1f}s)\n"
            f"  try:    rayfleet predict {name} --input examples.json{url_arg}"
            f"   (or --input - for stdin){auth}\n"
            f"          curl{curl_auth} {result.url}/v2/models/{name}\n"
            f"  scale:  rayfleet serve {target} --replicas 2\n"
            "  status: rayfleet serve status\n"
            "Ctrl-C stops serving.",
            highlight=False,
        )
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


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _status(verbose: bool) -> None:
    from rayfleet.serve import runtime

    connected, owned = runtime.attach(verbose=verbose)
    if not connected:
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
    if not apps:
        console.print("Serve is running with no applications" if url else "Serve is not running")
        return
    rows = [("NAME", "MODEL", "STATUS", "REPLICAS", "URL", "CHECKPOINT")]
    for app in apps:
        prefix = app.route_prefix or "/"
        base = (url or "").rstrip("/") + ("" if prefix == "/" else prefix)
        rows.append(
            (
                app.name,
                app.model_name or "-",
                app.status,
                f"{app.running}/{app.target}",
                base or "-",
                (app.checkpoint or "-").rsplit("/", 1)[-1],
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:  # plain columns: never wrapped or cut, whatever the terminal width
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    for app in apps:
        if app.status not in ("RUNNING",) and app.message:
            err_console.print(f"{app.name}: {app.message.strip().splitlines()[-1][:300]}")


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
    raw: bool = typer.Option(False, "--json", help="Print the raw OIP response."),
    token_file: str | None = TokenFileOption,
) -> None:
    """Classify examples with a served model (retries with backoff while it is unavailable)."""
    from rayfleet.serve.auth import client_token
    from rayfleet.serve.client import PredictClient, output
    from rayfleet.serve.protocol import build_request

    token = client_token(token_file) or ""
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
    if raw:
        typer.echo(json.dumps(response))
        return
    try:
        classes = output(response, "predicted_class")["data"]
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
    from rayfleet.serve.runtime import read_local_state

    local = read_local_state()
    return (local or {}).get("url") or DEFAULT_URL


def _rows(response: dict[str, Any], name: str) -> list[list[float]] | None:
    from rayfleet.serve.client import output

    try:
        tensor = output(response, name)
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


def main() -> None:
    """`python -m rayfleet.cli.serve_commands`: these commands alone (for tests)."""
    from rayfleet.cli.output import set_debug

    app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)

    @app.callback()
    def _root(debug: bool = typer.Option(False, "--debug")):
        set_debug(debug)

    app.command()(serve)
    app.command()(predict)
    app()


if __name__ == "__main__":
    main()
