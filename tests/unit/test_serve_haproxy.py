"""The local HAProxy wrapper (rayfleet.serve.haproxy_local): Ray's own config, rendered by
Ray's own code, ends up with no all-interfaces listener; the wrapper keeps the pid and argv
Ray spawned; only a loopback `rayfleet serve` gets it. Rendering imports Ray (no Ray starts);
the one HAProxy run is `-c`, a config check that binds nothing."""

from __future__ import annotations

import os
import re
import stat
import subprocess

import pytest

from rayfleet.serve import haproxy_local
from rayfleet.serve.haproxy_local import BINARY_ENV, bind_to_host, config_paths, is_loopback
from rayfleet.serve.ingress import apply_local_env

pytestmark = pytest.mark.unit
WILDCARD = re.compile(r"^\s*bind\s+(\*|0\.0\.0\.0|::|\[::\])?:\d+", re.MULTILINE)


@pytest.fixture(scope="module")
def ray_config(tmp_path_factory) -> str:
    """The config file Ray 2.60's HAProxyApi writes for a Serve on 127.0.0.1 (its path)."""
    from ray.serve._private.haproxy import HAProxyApi, HAProxyConfig
    from ray.serve.config import HTTPOptions

    d = tmp_path_factory.mktemp("haproxy")
    cfg = HAProxyConfig(
        http_options=HTTPOptions(host="127.0.0.1", port=8000),
        socket_path=f"{d}/admin.sock", server_state_base=str(d),
        server_state_file=f"{d}/state", metrics_socket_path=f"{d}/metrics.sock",
        stats_port=21001, metrics_port=21002,
    )  # fmt: skip
    api = HAProxyApi(cfg=cfg, config_file_path=f"{d}/haproxy.cfg")
    api._generate_config_file_internal()
    return api.config_file_path


def test_rays_own_config_binds_stats_and_metrics_on_every_interface(ray_config):
    """The reason for the wrapper; when Ray gains a host setting this fails: drop it then."""
    text = open(ray_config).read()
    assert {"bind :21002", "bind *:21001"} <= {m.group(0).strip() for m in WILDCARD.finditer(text)}


def test_rewritten_ray_config_binds_only_the_serve_host(ray_config):
    before = open(ray_config).read()
    after = bind_to_host(before)
    assert not WILDCARD.search(after), after
    assert "    bind 127.0.0.1:21002\n" in after and "  bind 127.0.0.1:21001\n" in after
    assert "    bind 127.0.0.1:8000\n" in after  # the frontend: already on the Serve host
    pairs = zip(before.splitlines(), after.splitlines(), strict=True)  # same line count
    assert len([a for a, b in pairs if a != b]) == 2
    assert bind_to_host(after) == after


@pytest.mark.parametrize(
    ("line", "host", "expected"),
    [
        ("  bind *:8404", "127.0.0.1", "  bind 127.0.0.1:8404"),
        ("    bind :9101", "127.0.0.2", "    bind 127.0.0.2:9101"),
        ("    bind 0.0.0.0:9000 proto h2", "127.0.0.1", "    bind 127.0.0.1:9000 proto h2"),
        ("    bind [::]:1", "::1", "    bind ::1:1"),
        ("    bind :::1", "localhost", "    bind 127.0.0.1:1"),
        ("    bind 127.0.0.1:8000", "127.0.0.2", "    bind 127.0.0.1:8000"),
        ("    bind 10.0.0.5:8000", "127.0.0.1", "    bind 10.0.0.5:8000"),
        ("    # bind *:8404", "127.0.0.1", "    # bind *:8404"),
        ("    server r1 *:8404 check", "127.0.0.1", "    server r1 *:8404 check"),
    ],
)
def test_bind_to_host_touches_only_wildcard_binds(line, host, expected):
    assert bind_to_host(line + "\n", host) == expected + "\n"


def test_config_paths_and_loopback():
    args = ["-db", "-f", "/a.cfg", "-dR", "-sf", "12", "13", "-x", "/s", "-f", "/b.cfg"]
    assert config_paths(args) == ["/a.cfg", "/b.cfg"]
    assert config_paths(["-f"]) == []
    assert all(map(is_loopback, ["127.0.0.1", "127.0.0.2", "::1", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "10.0.0.5", "", None, "example.org"]))


def test_wrapper_rewrites_then_execs_the_real_binary_same_pid_same_args(tmp_path, ray_config):
    fake = tmp_path / "fake-haproxy"
    fake.write_text('#!/bin/sh\necho "$$|$0|$*"\n')
    fake.chmod(0o700)
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(open(ray_config).read())
    cfg.chmod(0o640)
    wrapper = haproxy_local.write_wrapper(str(fake), "127.0.0.1", directory=str(tmp_path))
    assert stat.S_IMODE(wrapper.stat().st_mode) == 0o700
    args = ["-db", "-f", str(cfg), "-sf", "1", "-x", "/nowhere.sock"]
    proc = subprocess.Popen([str(wrapper), *args], stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert out.strip() == f"{proc.pid}|{fake}|{' '.join(args)}"  # exec: Ray's pid and argv
    assert not WILDCARD.search(cfg.read_text())
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".haproxy-cfg-")] == []


def test_bundled_haproxy_accepts_the_rewritten_config(tmp_path, ray_config):
    real = haproxy_local.real_binary()
    assert real and os.access(real, os.X_OK)
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(open(ray_config).read())
    wrapper = haproxy_local.write_wrapper(real, directory=str(tmp_path))
    check = subprocess.run(
        [str(wrapper), "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "Configuration file is valid" in check.stdout
    assert "bind 127.0.0.1:21001" in cfg.read_text()


@pytest.fixture
def clean_env(monkeypatch):
    for key in (BINARY_ENV, "RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_HAPROXY_STATS_PORT",
                "RAY_SERVE_HAPROXY_METRICS_PORT"):  # fmt: skip
        monkeypatch.delenv(key, raising=False)  # restored (absent) after the test


def test_only_a_loopback_local_serve_gets_the_wrapper(clean_env, monkeypatch):
    env = apply_local_env("haproxy", "127.0.0.1")
    wrapper = env[BINARY_ENV]
    assert os.environ[BINARY_ENV] == wrapper
    assert stat.S_IMODE(os.stat(os.path.dirname(wrapper)).st_mode) == 0o700
    assert "rayfleet.serve.haproxy_local" in open(wrapper).read()
    monkeypatch.delenv(BINARY_ENV)
    assert BINARY_ENV not in apply_local_env("haproxy", "0.0.0.0")  # the user asked for all
    assert BINARY_ENV not in apply_local_env("haproxy")  # host unknown: leave Ray's default
    assert BINARY_ENV not in apply_local_env("serve-proxy", "127.0.0.1")
    monkeypatch.setenv(BINARY_ENV, "/opt/my/haproxy")
    assert BINARY_ENV not in apply_local_env("haproxy", "127.0.0.1")  # the user's own wins
    assert os.environ[BINARY_ENV] == "/opt/my/haproxy"
