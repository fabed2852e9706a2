"""Pure builders load no runtime (issue 13 items 2 and 3).

Rendering every shipped spec, building the operator's objects and the CRD happen in a fresh
interpreter that must end without Ray (Serve included), FastAPI, torch, the Kubernetes client
or kopf in `sys.modules`; the cluster-facing modules import the Kubernetes client only when
they call a cluster, and no module outside rayfleet.cli imports rayfleet.cli.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap

import pytest

from rayfleet.lazy import MissingDependencyError, lazy, require
from tests.k8s.schemas import REPO

pytestmark = pytest.mark.k8s
PACKAGE = REPO / "platform" / "rayfleet"
RUNTIMES = ("ray", "ray.serve", "fastapi", "starlette", "uvicorn", "torch")
CLUSTER_CLIENTS = ("kubernetes", "kopf")
# The k8s modules that build objects; client, operator and plugin are the cluster-facing side.
PURE_K8S = (
    "options", "pods", "cluster", "network", "rayjob", "source", "kinds", "render", "crd",
    "serveconfig", "reconcile", "kueue",
)  # fmt: skip
CLUSTER_FACING = {"rayfleet.k8s.client", "rayfleet.k8s.operator", "rayfleet.k8s.plugin"}


def loaded_after(script: str) -> dict[str, bool]:
    """Run `script` in a fresh interpreter (repository root as cwd); which of the runtime and
    cluster-client modules it left in sys.modules, and whether rayfleet.cli was imported."""
    probe = textwrap.dedent(script) + textwrap.dedent(
        f"""
        import json as _json, sys as _sys
        _names = {list(RUNTIMES + CLUSTER_CLIENTS)!r}
        _out = {{name: name in _sys.modules for name in _names}}
        _out["rayfleet.cli"] = any(m.startswith("rayfleet.cli") for m in _sys.modules)
        print(_json.dumps(_out))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def shipped_specs() -> list[str]:
    return sorted(str(p.relative_to(REPO)) for p in (REPO / "jobs").rglob("*.yaml"))


def test_rendering_every_shipped_spec_and_planning_load_no_runtime():
    """What `rayfleet render` and the operator's planning do, for every shipped spec kind."""
    loaded = loaded_after(
        f"""
        import yaml
        from rayfleet.k8s import RENDERERS, read_spec_file, reconcile, render_text
        from rayfleet.k8s import crd, serveconfig
        kinds = set()
        for path in {shipped_specs()!r}:
            src = read_spec_file(path)
            if src.spec.kind in RENDERERS:
                render_text(path)
                kinds.add(src.spec.kind)
        assert kinds == set(RENDERERS), kinds
        doc = yaml.safe_load(open("jobs/digits/serve.yaml"))
        doc["metadata"] |= {{"namespace": "ml", "uid": "u-1", "generation": 1}}
        (service,) = [o for o in reconcile.desired_objects(doc) if o["kind"] == "RayService"]
        serveconfig.set_replicas(service["spec"]["serveConfigV2"], 3)
        reconcile.status(doc, service)
        crd.crd_text()
        """
    )
    assert {m: loaded[m] for m in RUNTIMES + CLUSTER_CLIENTS} == dict.fromkeys(
        RUNTIMES + CLUSTER_CLIENTS, False
    )
    assert loaded["rayfleet.cli"] is False


def test_the_render_command_loads_no_runtime():
    """`rayfleet render` as users run it (the whole `rayfleet` program), every shipped spec."""
    loaded = loaded_after(
        f"""
        from typer.testing import CliRunner
        from rayfleet.cli.main import app
        for path in {shipped_specs()!r}:
            result = CliRunner().invoke(app, ["render", path])
            assert result.exit_code in (0, 2), result.output
        """
    )
    assert [m for m in RUNTIMES + CLUSTER_CLIENTS if loaded[m]] == []


def test_the_serve_config_is_pure():
    loaded = loaded_after(
        """
        from rayfleet.serve.config import serve_config_text
        from rayfleet.specs import load_spec
        serve_config_text(load_spec("jobs/digits/serve.yaml"))
        """
    )
    assert [m for m in RUNTIMES + CLUSTER_CLIENTS if loaded[m]] == []


def test_storage_data_and_clients_load_no_pyarrow_or_httpx_until_they_are_used():
    """storage/, the run record, data layout and shards name pyarrow lazily, and the Jobs
    API and predict clients httpx, so the modules that import them at module top (job
    commands, tracking, the worker session, evaluation) start without either; the first
    call that needs one loads it."""
    loaded = loaded_after(
        """
        import sys
        import rayfleet.record, rayfleet.tracking, rayfleet.train.session, rayfleet.jobs.locate
        import rayfleet.jobs.cluster, rayfleet.serve.client, rayfleet.serve.evaluate
        from rayfleet.data import layout, shards
        from rayfleet.storage import checkpoints, documents, lease, logs, pins, preflight
        from rayfleet.storage.filesystem import filesystem_for
        from rayfleet.storage.uri import parse_uri
        assert "pyarrow" not in sys.modules and "httpx" not in sys.modules
        filesystem_for(parse_uri("/tmp")).get_file_info("/tmp")
        assert "pyarrow.fs" in sys.modules
        """
    )
    assert [m for m in RUNTIMES + CLUSTER_CLIENTS if loaded[m]] == []


@pytest.mark.parametrize("module", sorted(CLUSTER_FACING))
def test_cluster_facing_modules_import_the_client_only_when_they_call(module):
    """Importing the plugin or the operator loads no runtime and no rayfleet.cli. The plugin
    and the client load the Kubernetes client on first use; the operator runs on kopf, which
    imports it (to piggyback on its credentials)."""
    loaded = loaded_after(f"import {module}")
    assert [m for m in RUNTIMES if loaded[m]] == []
    operator = module == "rayfleet.k8s.operator"
    assert loaded["kopf"] is operator
    assert loaded["kubernetes"] is operator
    assert loaded["rayfleet.cli"] is False


def _imports(path) -> set[str]:
    """What a module imports: import statements and `lazy("name")` stand-ins alike."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif _lazy_name(node):
            out.add(_lazy_name(node))
    return out


def _lazy_name(node: ast.AST) -> str | None:
    """ "x" for a `lazy("x", ...)` call."""
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "lazy"
        and node.args
        and isinstance(node.args[0], ast.Constant)
    ):
        return node.args[0].value
    return None


def _own_imports_inside_functions(path) -> list[str]:
    """`line: statement` for each import of a rayfleet module inside a function body."""
    found = []
    for fn in ast.walk(ast.parse(path.read_text())):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(fn):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if any(n == "rayfleet" or n.startswith("rayfleet.") for n in names):
                found.append(f"{node.lineno}: {ast.unparse(node)}")
    return sorted(set(found))


def test_rayfleet_modules_import_each_other_at_module_top():
    """Every dependency of a module sits in its import block (issue 13 item 2): one that
    would load a heavy package, or close an import cycle, is a `lazy(...)` stand-in there,
    imported at first use, never an import statement inside a function."""
    offenders = {
        path.relative_to(PACKAGE).as_posix(): found
        for path in sorted(PACKAGE.rglob("*.py"))
        if (found := _own_imports_inside_functions(path))
    }
    assert offenders == {}


def test_nothing_outside_cli_imports_cli():
    """cli/ is the `rayfleet` program; library modules (and the kubectl plugin) use
    rayfleet.console for how they print. The package's __main__ is the program's entry."""
    offenders = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "cli" or rel.as_posix() == "__main__.py":
            continue
        bad = sorted(
            m for m in _imports(path) if m == "rayfleet.cli" or m.startswith("rayfleet.cli.")
        )
        if bad:
            offenders[rel.as_posix()] = bad
    assert offenders == {}


def test_pure_k8s_modules_never_import_the_cluster_facing_side():
    for name in PURE_K8S:
        imported = _imports(PACKAGE / "k8s" / f"{name}.py")
        assert not imported & CLUSTER_FACING, f"k8s/{name}.py imports {imported & CLUSTER_FACING}"
        assert not {m.split(".")[0] for m in imported} & {"kubernetes", "kopf", "typer", "rich"}


# ------------------------------------------------------------------------- rayfleet.lazy


def test_lazy_imports_on_first_use_only():
    loaded = loaded_after(
        """
        import sys
        from rayfleet.lazy import lazy
        minidom = lazy("xml.dom.minidom")
        assert "xml.dom.minidom" not in sys.modules
        assert minidom.parseString("<a/>").documentElement.tagName == "a"
        assert "xml.dom.minidom" in sys.modules
        """
    )
    assert loaded["rayfleet.cli"] is False


def test_a_lazy_module_pickles_as_a_lazy_module():
    """A callback class defined in a function is pickled by value with the globals it names
    (cloudpickle, as Ray ships callbacks): a stand-in there must pickle (a lock would not)."""
    import pickle

    import cloudpickle

    stand_in = lazy("xml.dom.minidom", purpose="testing")
    copy = pickle.loads(cloudpickle.dumps(stand_in))
    assert repr(copy) == "<lazy module 'xml.dom.minidom' (not imported yet)>"
    assert copy.parseString("<a/>").documentElement.tagName == "a"


def test_a_missing_module_fails_at_first_use_with_the_remedy():
    missing = lazy("rayfleet_no_such_module.sub", purpose="testing", install="rayfleet[test]")
    with pytest.raises(MissingDependencyError) as err:
        missing.anything  # noqa: B018
    assert str(err.value) == (
        "rayfleet_no_such_module.sub is not installed; rayfleet needs it for testing: "
        "pip install 'rayfleet[test]'"
    )
    assert err.value.exit_code == 2
    with pytest.raises(MissingDependencyError, match="pip install 'rayfleet_no_such_module'"):
        require("rayfleet_no_such_module")
    assert require("json") is json
