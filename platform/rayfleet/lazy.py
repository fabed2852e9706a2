"""Heavy optional modules, imported where they are first used rather than where they are named.

    kubernetes = lazy("kubernetes", purpose="talking to a Kubernetes API server")
    ...
    kubernetes.client.CustomObjectsApi(api)      # the import happens here, once

Modules that only build data (specs, rendered objects, Serve configs) import nothing heavy, so
`rayfleet render`, spec validation and the operator's planning stay fast and work where Ray,
torch or the Kubernetes client are missing. Writing `x = lazy(...)` at module top keeps every
dependency of a module in its import block instead of scattered through function bodies, and a
missing package fails at first use with one line naming the package and how to install it,
not a bare ModuleNotFoundError from deep inside a command.

rayfleet's own modules are imported at module top, always. The modules that name pyarrow
(storage/, the run record, data layout and shards) and httpx (the Jobs API and predict
clients) do it through `lazy`, so importing them loads neither until a call needs it. The same
goes for a rayfleet module that would load a heavy package its importer does not otherwise
need (Ray for the sweep runner, the reporting callback and the trial's trainer; torch for the
compression transforms; scikit-learn and pandas for evaluation and table import; numpy for
the quickstart's serving check), and for the three import cycles (train.preemption <->
train.session, compress.job <-> compress.distill, the classifier loop <-> its distillation
loss), which a stand-in breaks because it imports at first use, not at import:

    runner = lazy("rayfleet.tune.runner")   # in cli/sweep_commands.py's import block

tests/k8s/test_pure_imports.py checks that no rayfleet import statement sits inside a
function, and that the pure builders and the storage layer load no runtime.
"""

from __future__ import annotations

import importlib
import threading
from types import ModuleType
from typing import Any

from rayfleet.errors import BadInputError


class MissingDependencyError(BadInputError):
    """An optional package rayfleet needs for this command is not installed."""


def require(name: str, *, purpose: str | None = None, install: str | None = None) -> ModuleType:
    """`import name` now; MissingDependencyError (one line, with the remedy) when it is absent.

    `install` is what to install (a pip requirement such as `rayfleet[serve]`), default the
    top-level package of `name`."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        top = name.split(".", 1)[0]
        if exc.name is None or exc.name.split(".", 1)[0] != top:
            raise  # the package is there but one of *its* imports is broken: show that
        what = f" for {purpose}" if purpose else ""
        raise MissingDependencyError(
            f"{name} is not installed; rayfleet needs it{what}: pip install '{install or top}'"
        ) from None


class LazyModule(ModuleType):
    """A stand-in for a module that imports it on first attribute access."""

    def __init__(self, name: str, purpose: str | None, install: str | None):
        super().__init__(name)
        self.__dict__["_lazy"] = (purpose, install)
        self.__dict__["_module"] = None
        self.__dict__["_lock"] = threading.Lock()

    def _load(self) -> ModuleType:
        module = self.__dict__["_module"]
        if module is None:
            with self.__dict__["_lock"]:
                module = self.__dict__["_module"]
                if module is None:
                    purpose, install = self.__dict__["_lazy"]
                    module = require(self.__name__, purpose=purpose, install=install)
                    self.__dict__["_module"] = module
        return module

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._load(), attr)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickles as the stand-in it is (cloudpickle copies a class defined in a function
        with the module globals it names: a Ray Train callback ships to its controller)."""
        purpose, install = self.__dict__["_lazy"]
        return LazyModule, (self.__name__, purpose, install)

    def __dir__(self) -> list[str]:
        return dir(self._load())

    def __repr__(self) -> str:
        state = "loaded" if self.__dict__["_module"] is not None else "not imported yet"
        return f"<lazy module {self.__name__!r} ({state})>"


def lazy(name: str, *, purpose: str | None = None, install: str | None = None) -> Any:
    """A module object for `name` that is imported on first use (see the module doc).

    Typed `Any` so attribute access type-checks as it would on the module itself."""
    return LazyModule(name, purpose, install)
