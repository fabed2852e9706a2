"""Which cluster a command talks to, and with which token.

Address, most specific first: `--address`, `--context NAME`, `RAY_ADDRESS`, the config file's
`currentContext`. Token: `--token-file`, `RAY_AUTH_TOKEN`, `RAY_AUTH_TOKEN_PATH`, the
context's `tokenFile`, then `~/.ray/auth_token` (Ray's own order, with the flag and the
context in front).

The config file (`$RAYFLEET_CONFIG`, else `~/.config/rayfleet/config.yaml`) names clusters so
nobody pastes dashboard URLs and token paths into every command:

    currentContext: prod
    contexts:
      prod:
        address: https://ray.example.com      # the Ray dashboard (Jobs API), port 8265
        tokenFile: ~/.ray/prod-token          # optional
        storage: s3://bucket/team             # optional: default for `jobs describe`
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rayfleet.errors import ClusterError

DEFAULT_CONFIG = Path("~/.config/rayfleet/config.yaml")


@dataclass(frozen=True)
class Token:
    value: str
    source: str
    """Where it came from, for error messages (never the token itself)."""


@dataclass(frozen=True)
class Target:
    address: str
    token: Token | None
    storage: str | None = None
    context: str | None = None

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token.value}"} if self.token else {}


def config_path() -> Path:
    return Path(os.environ.get("RAYFLEET_CONFIG") or DEFAULT_CONFIG).expanduser()


def load_config() -> dict[str, Any]:
    path = config_path()
    if not path.exists():
        return {"contexts": {}}
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ClusterError(f"{path}: not valid YAML ({exc}); fix or remove the file") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("contexts", {}), dict):
        raise ClusterError(f"{path}: expected a mapping with `contexts:`; fix or remove the file")
    doc.setdefault("contexts", {})
    return doc


def save_config(doc: dict[str, Any]) -> Path:
    """Write the config file whole (a temporary file renamed over it: never half-written)."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    tmp.replace(path)
    return path


def normalize_address(address: str, where: str) -> str:
    """The Jobs API lives on the dashboard's HTTP port: accept host:port or an http(s) URL."""
    address = address.strip().rstrip("/")
    if address in ("", "auto") or address.startswith(("ray://", "local")):
        raise ClusterError(
            f"{where}: {address!r} is not a Ray dashboard address; use the dashboard URL, "
            "e.g. http://HEAD:8265 (kubectl port-forward svc/NAME-head-svc 8265)"
        )
    if "://" not in address:
        address = f"http://{address}"
    if not address.startswith(("http://", "https://")):
        raise ClusterError(f"{where}: {address!r} must be an http:// or https:// URL")
    return address


def _read_token_file(path: str | Path, source: str) -> Token:
    path = Path(path).expanduser()
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise ClusterError(
            f"{source}: cannot read token file {path} ({exc.strerror}); check the path"
        ) from None
    if not value:
        raise ClusterError(f"{source}: token file {path} is empty")
    return Token(value, f"{source} ({path})")


def resolve_token(token_file: Path | None, context: dict[str, Any]) -> Token | None:
    if token_file is not None:
        return _read_token_file(token_file, "--token-file")
    if value := os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return Token(value, "RAY_AUTH_TOKEN")
    if path := os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return _read_token_file(path, "RAY_AUTH_TOKEN_PATH")
    if path := context.get("tokenFile"):
        return _read_token_file(path, "the context's tokenFile")
    default = Path("~/.ray/auth_token").expanduser()
    if default.is_file() and default.read_text().strip():
        return Token(default.read_text().strip(), str(default))
    return None


def resolve(
    address: str | None = None, context: str | None = None, token_file: Path | None = None
) -> Target:
    """The cluster to talk to; ClusterError naming every place looked when there is none."""
    config = load_config()
    contexts = config["contexts"]
    if context is not None and context not in contexts:
        known = ", ".join(sorted(contexts)) or "none"
        raise ClusterError(
            f"--context {context}: no such context in {config_path()} (known: {known}); add it "
            f"with: rayfleet context add {context} --address URL"
        )
    name = context
    if address:
        chosen, where, name = address, "--address", None
    elif context:
        chosen, where = contexts[context].get("address", ""), f"context {context}"
    elif os.environ.get("RAY_ADDRESS"):
        chosen, where = os.environ["RAY_ADDRESS"], "RAY_ADDRESS"
    elif (name := config.get("currentContext")) in contexts:
        chosen, where = contexts[name].get("address", ""), f"context {name}"
    else:
        raise ClusterError(
            "no Ray cluster given: pass --address http://HEAD:8265, set RAY_ADDRESS, or add a "
            "context (rayfleet context add NAME --address URL --use)"
        )
    ctx = contexts.get(name, {}) if name else {}
    return Target(
        address=normalize_address(str(chosen), where),
        token=resolve_token(token_file, ctx),
        storage=ctx.get("storage"),
        context=name,
    )
