"""Which token goes to which cluster, and over what: a context's own token file, no token
over plain http to a host that is not this machine, and the typed contexts file."""

from __future__ import annotations

import socket
import stat
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rayfleet.errors import ClusterError
from rayfleet.jobs.target import resolve

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]
FAR = "http://10.1.2.3:8265"  # never contacted: the tests refuse any connection but loopback


@pytest.fixture
def env(monkeypatch, tmp_path):
    for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("RAYFLEET_CONFIG", str(tmp_path / "config.yaml"))
    monkeypatch.setenv("RAYFLEET_STORAGE", str(tmp_path / "store"))
    return monkeypatch


def _token(tmp_path: Path, name: str, value: str) -> Path:
    path = tmp_path / name
    path.write_text(value + "\n")
    return path


@pytest.mark.security
def test_a_contexts_token_file_beats_the_environment(env, tmp_path):
    prod = _token(tmp_path, "prod-token", "prod-secret")
    (tmp_path / "config.yaml").write_text(
        "currentContext: prod\ncontexts:\n"
        f"  prod: {{address: 'https://prod.example', tokenFile: '{prod}'}}\n"
        "  dev: {address: 'https://dev.example'}\n"
    )
    env.setenv("RAY_AUTH_TOKEN", "someone-elses")
    env.setenv("RAY_AUTH_TOKEN_PATH", str(_token(tmp_path, "env-path", "path-secret")))
    for target in (resolve(context="prod"), resolve()):  # named, and the current context
        assert target.token.value == "prod-secret", target.token.source
        assert str(prod) in target.token.source and target.context == "prod"
    # A context without a tokenFile, or no context at all: Ray's order, as before.
    assert resolve(context="dev").token.value == "someone-elses"
    assert resolve(address="https://h:1").token.value == "someone-elses"
    env.setenv("RAY_ADDRESS", "https://env.example")  # RAY_ADDRESS is not the context's
    assert resolve().token.value == "someone-elses"
    flag = _token(tmp_path, "flag", "from-flag")
    assert resolve(context="prod", token_file=flag).token.value == "from-flag"  # flag wins


@pytest.mark.security
@pytest.mark.parametrize(
    "address",
    [FAR, "10.1.2.3:8265", "http://ray.example.com:8265", "http://[2001:db8::1]:8265"],
)
def test_a_token_is_not_sent_over_plain_http_to_another_host(env, address):
    env.setenv("RAY_AUTH_TOKEN", "secret")
    with pytest.raises(ClusterError) as err:
        resolve(address=address)
    message = str(err.value)
    assert "\n" not in message and err.value.exit_code == 2
    assert "--insecure" in message and "https://" in message and "secret" not in message
    assert address.removeprefix("http://") in message and "RAY_AUTH_TOKEN" in message
    target = resolve(address=address, insecure=True)  # the user said the network is trusted
    assert target.token.value == "secret" and target.insecure and target.cleartext


@pytest.mark.parametrize(
    "address",
    ["http://127.0.0.1:8265", "127.0.0.9:8265", "http://localhost:8265", "http://[::1]:8265"],
)
def test_loopback_https_and_tokenless_addresses_need_no_flag(env, address):
    env.setenv("RAY_AUTH_TOKEN", "secret")
    assert resolve(address=address).token.value == "secret"
    assert resolve(address="https://ray.example.com").token.value == "secret"
    env.delenv("RAY_AUTH_TOKEN")
    assert resolve(address=FAR).token is None  # nothing secret to leak


class _NoTraffic:
    """Records every connection attempt (Python's audit events) and lets through loopback
    only, so a test can assert nothing was sent and can never send anything elsewhere."""

    active = False
    seen: list = []

    @classmethod
    def hook(cls, event, args):
        if not cls.active or event not in ("socket.connect", "socket.getaddrinfo"):
            return
        if event == "socket.connect":
            if args[0].family == socket.AF_UNIX:
                return
            host, blocked = args[1][0], args[1][0] not in ("127.0.0.1", "::1")
        else:  # a name lookup is traffic too; an IP literal is not
            host, blocked = args[0], not _literal_or_localhost(args[0])
        cls.seen.append((event, host))
        if blocked:
            raise ConnectionRefusedError(f"test: blocked {event} to {host}")


def _literal_or_localhost(host) -> bool:
    import ipaddress

    host = host.decode() if isinstance(host, bytes) else str(host)
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return host == "localhost"


sys.addaudithook(_NoTraffic.hook)


@pytest.fixture
def no_traffic():
    _NoTraffic.seen.clear()
    _NoTraffic.active = True
    yield _NoTraffic.seen
    _NoTraffic.active = False


def _cli(args):
    from rayfleet.cli.main import app

    return CliRunner().invoke(app, args)


@pytest.mark.security
@pytest.mark.parametrize(
    "args",
    [
        ["submit", str(REPO / "jobs/digits/train.yaml")],
        ["jobs", "list"],
        ["jobs", "status", "digits"],
        ["jobs", "logs", "digits"],
        ["jobs", "stop", "digits"],
        ["jobs", "describe", "digits"],
    ],
    ids=lambda a: " ".join(a[:2]) if a[0] == "jobs" else a[0],
)
def test_cli_refuses_plain_http_with_a_token_before_any_request(env, no_traffic, args):
    env.setenv("RAY_AUTH_TOKEN", "secret")
    result = _cli([*args, "--address", FAR])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "10.1.2.3:8265" in lines[0] and "--insecure" in lines[0], lines
    assert "secret" not in result.output
    assert not [host for _, host in no_traffic if host not in ("127.0.0.1", "::1")], no_traffic


@pytest.mark.security
def test_cli_insecure_gets_through_resolution_with_a_warning(env, no_traffic):
    env.setenv("RAY_AUTH_TOKEN", "secret")
    result = _cli(["jobs", "list", "--address", FAR, "--insecure"])
    # Resolution passed: the next step is the connection, which this test blocks.
    assert ("socket.connect", "10.1.2.3") in no_traffic, (no_traffic, result.output)
    assert "--insecure" in result.output and "plain http" in result.output
    assert "secret" not in result.output and result.exit_code == 2


@pytest.mark.security
def test_context_commands_write_a_typed_private_file_atomically(env, tmp_path):
    path = tmp_path / "config.yaml"
    token = _token(tmp_path, "t", "x")
    added = _cli(["context", "add", "a", "--address", "h:1", "--token-file", str(token)])
    assert added.exit_code == 0 and "without --insecure" in added.output  # said at once
    assert _cli(["context", "add", "b", "--address", "https://b", "--use"]).exit_code == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it names token files
    assert sorted(p.name for p in tmp_path.iterdir() if "config" in p.name) == ["config.yaml"]
    from rayfleet.jobs.target import load_config

    config = load_config()
    assert config.current_context == "b" and config.contexts["a"].address == "http://h:1"
    assert config.contexts["a"].token_file == str(token.resolve())
    assert "tokenFile:" in path.read_text() and "currentContext: b" in path.read_text()
    listed = _cli(["context", "list"]).output
    assert "* b: https://b" in listed and "  a: http://h:1" in listed


@pytest.mark.security
@pytest.mark.parametrize(
    "text, key",
    [
        ("contexts:\n  prod: {address: 'https://p', tokenFlie: /t}\n", "contexts.prod.tokenFlie"),
        ("currentcontext: prod\ncontexts: {}\n", "currentcontext"),
        ("contexts:\n  prod: {tokenFile: /t}\n", "contexts.prod.address"),
    ],
)
def test_unknown_or_missing_config_keys_are_one_line_errors(env, tmp_path, text, key):
    (tmp_path / "config.yaml").write_text(text)
    with pytest.raises(ClusterError) as err:
        resolve(address="https://h")
    message = str(err.value)
    assert str(tmp_path / "config.yaml") in message and key in message and "\n" not in message
