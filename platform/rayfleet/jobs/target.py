"""Which cluster a command talks to, and with which token.

Address, most specific first: `--address`, `--context NAME`, `RAY_ADDRESS`, the config file's
`currentContext`. Token: `--token-file`; then, when the address came from a context (named
with --context, or the current one), that context's `tokenFile`; then `RAY_AUTH_TOKEN`,
`RAY_AUTH_TOKEN_PATH`, `~/.ray/auth_token` (Ray's own order). The context's token file wins
over the environment because a context names one cluster and its token together: a
RAY_AUTH_TOKEN left in the shell for another cluster must not be sent to this one.

A token never goes over plain `http://` to a host other than this machine (127.0.0.0/8, ::1,
localhost): anyone on the path could read it and run code on the cluster. Such a target is
refused before any request, unless `--insecure` says the network is trusted (a VPN, a private
link); `https://` or `kubectl port-forward` to 127.0.0.1 is the fix. Without a token there is
nothing to leak and nothing to refuse.

The config file (`$RAYFLEET_CONFIG`, else `~/.config/rayfleet/config.yaml`) names clusters so
nobody pastes dashboard URLs and token paths into every command:

    currentContext: prod
    contexts:
      prod:
        address: https://ray.example.com      # the Ray dashboard (Jobs API), port 8265
        tokenFile: ~/.ray/prod-token          # optional
        storage: s3://bucket/team             # optional: default for `jobs describe`

It is a typed document (`ConfigFile`, unknown keys rejected), written whole and private
(mode 0600, since it points at token files).
"""

from __future__ import annotations

import ipaddress
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rayfleet.errors import ClusterError

DEFAULT_CONFIG = Path("~/.config/rayfleet/config.yaml")


class Context(BaseModel):
    """One named cluster."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    address: str
    token_file: str | None = Field(default=None, alias="tokenFile")
    storage: str | None = None


class ConfigFile(BaseModel):
    """The contexts file."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    current_context: str | None = Field(default=None, alias="currentContext")
    contexts: dict[str, Context] = Field(default_factory=dict)


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
    insecure: bool = False
    """The user allowed a token over plain http to a non-loopback host (--insecure)."""

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token.value}"} if self.token else {}

    @property
    def cleartext(self) -> bool:
        """Whether a token would travel unencrypted beyond this machine."""
        return self.token is not None and cleartext_beyond_loopback(self.address)


def config_path() -> Path:
    return Path(os.environ.get("RAYFLEET_CONFIG") or DEFAULT_CONFIG).expanduser()


def _config_error(path: Path, err: ValidationError) -> ClusterError:
    first = err.errors()[0]
    key = ".".join(str(part) for part in first["loc"])
    if first["type"] == "extra_forbidden":
        what = "unknown key (known: currentContext, contexts.NAME.address|tokenFile|storage)"
    elif first["type"] == "missing":
        what = "missing"
    else:
        what = first["msg"]
    more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return ClusterError(f"{path}: {key}: {what}{more}; fix or remove it")


def load_config() -> ConfigFile:
    path = config_path()
    if not path.exists():
        return ConfigFile()
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise ClusterError(f"{path}: not valid YAML ({detail}); fix or remove the file") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("contexts", {}), dict):
        raise ClusterError(f"{path}: expected a mapping with `contexts:`; fix or remove the file")
    try:
        return ConfigFile.model_validate(doc)
    except ValidationError as err:
        raise _config_error(path, err) from None


def save_config(config: ConfigFile) -> Path:
    """Write the config file whole and private: a 0600 temporary file in the same folder,
    flushed, then renamed over it (never half-written, never readable by others)."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    text = yaml.safe_dump(config.model_dump(by_alias=True, exclude_none=True), sort_keys=False)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:  # mkstemp creates it 0600
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 (also as ::ffff:127.x) and `localhost`; no name is looked up."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or bool(mapped and mapped.is_loopback)


def cleartext_beyond_loopback(address: str) -> bool:
    parts = urlsplit(address)
    return parts.scheme == "http" and not is_loopback(parts.hostname or "")


def check_transport(target: Target) -> None:
    """Refuse a token over plain http to another host (see the module docstring)."""
    if target.cleartext and not target.insecure:
        raise ClusterError(
            f"{target.address}: refusing to send the Ray auth token from {target.token.source} "
            "over plain http to a host that is not this machine (anyone on the network path "
            "could read it); use https:// (or kubectl port-forward to 127.0.0.1), or pass "
            "--insecure if this network is trusted"
        )


def insecure_warning(target: Target) -> str | None:
    """The one line to print when --insecure lets a token go out over plain http."""
    if not (target.cleartext and target.insecure):
        return None
    host = urlsplit(target.address).hostname
    return (
        f"warning: --insecure: the Ray auth token from {target.token.source} goes over plain "
        f"http to {host}, readable on the network path"
    )


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


def resolve_token(
    token_file: Path | None, context: Context | None = None, name: str | None = None
) -> Token | None:
    if token_file is not None:
        return _read_token_file(token_file, "--token-file")
    if context is not None and context.token_file:
        return _read_token_file(context.token_file, f"context {name} tokenFile")
    if value := os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return Token(value, "RAY_AUTH_TOKEN")
    if path := os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return _read_token_file(path, "RAY_AUTH_TOKEN_PATH")
    default = Path("~/.ray/auth_token").expanduser()
    if default.is_file() and default.read_text().strip():
        return Token(default.read_text().strip(), str(default))
    return None


def resolve(
    address: str | None = None,
    context: str | None = None,
    token_file: Path | None = None,
    *,
    insecure: bool = False,
) -> Target:
    """The cluster to talk to; ClusterError naming every place looked when there is none,
    or when its token would go over plain http to another host without `insecure`."""
    config = load_config()
    contexts = config.contexts
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
        chosen, where = contexts[context].address, f"context {context}"
    elif os.environ.get("RAY_ADDRESS"):
        chosen, where = os.environ["RAY_ADDRESS"], "RAY_ADDRESS"
    elif (name := config.current_context) in contexts:
        chosen, where = contexts[name].address, f"context {name}"
    else:
        raise ClusterError(
            "no Ray cluster given: pass --address http://HEAD:8265, set RAY_ADDRESS, or add a "
            "context (rayfleet context add NAME --address URL --use)"
        )
    ctx = contexts.get(name) if name else None
    target = Target(
        address=normalize_address(str(chosen), where),
        token=resolve_token(token_file, ctx, name),
        storage=ctx.storage if ctx else None,
        context=name,
        insecure=insecure,
    )
    check_transport(target)
    return target
