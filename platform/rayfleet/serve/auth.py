"""The optional bearer-token check on the inference app, for clusters without an authenticating
ingress.

Ray Serve's HTTP port answers anyone who can reach it: Ray's token auth covers the GCS, the
dashboard and the Jobs API, not Serve's proxy. With `spec.auth.tokenSecretName` set, every
/v2 route except the two health probes wants `Authorization: Bearer <token>`.

Where the token lives, and why only there: the replicas read it from the environment variable
RAYFLEET_SERVE_TOKEN of their own process, which they inherit from the Ray node (on
Kubernetes the pod's env, from the Secret's key `token`; locally the `rayfleet serve` process
that starts the embedded Ray). It never travels in the spec, the Serve application args or a
deployment's `ray_actor_options.runtime_env.env_vars`: Serve keeps all of those in its
config and returns them in its deployment details (`serve config`, the dashboard's Serve page,
GET /api/serve/applications/), and `rayfleet render` prints the args. A spec only names the
Secret.

Clients (`rayfleet predict`, `PredictClient`) send the token from --serve-token-file or
RAYFLEET_SERVE_TOKEN. No message here ever contains a token.
"""

from __future__ import annotations

import hmac
import os
import re
from pathlib import Path

from rayfleet.errors import BadInputError

TOKEN_ENV = "RAYFLEET_SERVE_TOKEN"
MIN_TOKEN_CHARS = 16
# RFC 6750 b64token: what may follow "Bearer " in a header.
_TOKEN_RE = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_HINT = "generate one with `openssl rand -hex 32`"


class ServeAuthError(BadInputError):
    """Auth is on but no usable token is configured (server side) or given (client side)."""


def check_token(token: str, where: str, *, server: bool = True) -> str:
    """`token` stripped of surrounding whitespace; ServeAuthError (never echoing it) if it
    can't be used. A server's token must also be long enough to resist guessing."""
    token = token.strip()
    if not token:
        raise ServeAuthError(f"{where} is empty; {_HINT}")
    if not _TOKEN_RE.fullmatch(token):
        raise ServeAuthError(
            f"{where} has characters a bearer token can't carry (use letters, digits and "
            f"-._~+/ only); {_HINT}"
        )
    if server and len(token) < MIN_TOKEN_CHARS:
        raise ServeAuthError(
            f"{where} is {len(token)} characters; use at least {MIN_TOKEN_CHARS} ({_HINT})"
        )
    return token


def read_token_file(path: str, *, server: bool = True) -> str:
    """The token in a file (one line; surrounding whitespace ignored)."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise ServeAuthError(f"--serve-token-file {path}: cannot read it ({reason})") from None
    return check_token(text, f"--serve-token-file {path}", server=server)


def client_token(token_file: str | None = None) -> str | None:
    """What a client sends: --serve-token-file, else $RAYFLEET_SERVE_TOKEN, else nothing."""
    if token_file:
        return read_token_file(token_file, server=False)
    value = os.environ.get(TOKEN_ENV, "")
    return check_token(value, f"${TOKEN_ENV}", server=False) if value.strip() else None


def server_token(where: str) -> str:
    """The token a replica of an auth-enabled deployment expects, from its environment.

    Raises ServeAuthError when it is missing or unusable: a replica that would otherwise serve
    unauthenticated must not start (fail closed)."""
    value = os.environ.get(TOKEN_ENV, "")
    if not value.strip():
        raise ServeAuthError(
            f"{where}: spec.auth is on but {TOKEN_ENV} is not set in the replicas' environment; "
            f"on Kubernetes set it from the Secret spec.auth.tokenSecretName names (key "
            f"`token`), locally start `rayfleet serve` with {TOKEN_ENV} set or --serve-token-file"
        )
    return check_token(value, f"{where}: ${TOKEN_ENV}")


def bearer_matches(header: str | None, expected: bytes) -> bool:
    """Whether an Authorization header carries the expected bearer token.

    The scheme is case-insensitive (RFC 7235); the token is compared in constant time
    (hmac.compare_digest), so response timing says nothing about how much of a guess was
    right."""
    if not header:
        return False
    scheme, _, presented = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(presented.strip().encode(), expected)
