"""A spec file as the cluster will see it: the validated spec, its text, the files beside it.

The cluster runs the file as written (comments and all) with the same `--set` overrides,
not a re-serialised copy, so `rayfleet run` there reads exactly what was reviewed here. A
user training loop (`model.entrypoint: my_loop:train`) that sits next to the spec as
`my_loop.py` travels with it, since `rayfleet run` puts the spec's folder on sys.path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from rayfleet.errors import SpecError
from rayfleet.specs import Spec, SweepJob, TrainJob, load_spec

# ConfigMap keys, and Kubernetes' limit on one object's size.
_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
MAX_CONFIGMAP_BYTES = 1 << 20


@dataclass(frozen=True)
class SpecFile:
    path: Path
    """As the user gave it: shown in errors and in the generated header."""
    spec: Spec
    overrides: tuple[str, ...]
    files: dict[str, str]
    """ConfigMap data: the spec file's name -> its text, plus user modules beside it."""

    @property
    def file_name(self) -> str:
        return self.path.name


def _companions(path: Path, spec: Spec) -> dict[str, str]:
    """Files the spec needs beside it: the TrainJob file a SweepJob names (and what that
    needs), or the user module a TrainJob's `model.entrypoint` names, when it is a file
    beside the spec. A module that is not beside the spec must be installed in the image.
    """
    if isinstance(spec, SweepJob):
        return _sweep_companions(path, spec)
    if not isinstance(spec, TrainJob) or spec.spec.model.entrypoint is None:
        return {}
    top = spec.spec.model.entrypoint.split(":", 1)[0].split(".", 1)[0]
    module = path.parent / f"{top}.py"
    if module.is_file():
        return {module.name: module.read_text()}
    if (path.parent / top).is_dir():
        raise SpecError(
            f"{path}: model.entrypoint package {top!r} is a folder, which a ConfigMap can't "
            "carry; install it in the image (charts/rayfleet/image/Dockerfile) or make it "
            f"one file, {top}.py"
        )
    return {}


def _sweep_companions(path: Path, sweep: SweepJob) -> dict[str, str]:
    ref = sweep.spec.train_job.path
    if ref is None:
        return {}
    train = path.parent / ref
    if Path(ref).name != ref:
        raise SpecError(
            f"{path}: spec.trainJob.path {ref!r} must name a file beside the sweep to render "
            "it for a cluster (one ConfigMap folder); copy it next to the sweep"
        )
    job = load_spec(train, expect="TrainJob")
    return {train.name: train.read_text(), **_companions(train, job)}


def read_spec_file(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> SpecFile:
    """Load and validate a spec (SpecError on bad input) and collect the files it needs."""
    path = Path(path)
    spec = load_spec(path, list(overrides))
    files = {path.name: path.read_text(), **_companions(path, spec)}
    for name in files:
        if not _KEY.match(name):
            raise SpecError(
                f"{path}: file name {name!r} can't be a ConfigMap key; use letters, digits, "
                "'-', '_' and '.' only"
            )
    size = sum(len(text.encode()) for text in files.values())
    if size > MAX_CONFIGMAP_BYTES:
        raise SpecError(
            f"{path}: the spec and its modules are {size} bytes, over a ConfigMap's 1 MiB; "
            "install the code in the image instead"
        )
    return SpecFile(path=path, spec=spec, overrides=tuple(overrides), files=files)
