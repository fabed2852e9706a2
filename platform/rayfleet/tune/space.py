"""From a SweepJob to what Tune needs, with every user mistake caught before a trial starts.

A sweep is prepared in one pass: the TrainJob it tunes is loaded (from its file or inline),
its fixed `overrides` applied; every search-space key is checked to exist in the TrainJob and
every value its domain can produce (each choice, or the bounds) is validated in place, so
`run.epochs: {choice: [0, 3]}` fails now, naming the key, instead of in trial 5 an hour in.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from rayfleet.errors import SpecError
from rayfleet.specs import SweepJob, TrainJob, load_spec, parse_spec
from rayfleet.specs.train import TrainJobSpec
from rayfleet.storage.uri import StorageURI
from rayfleet.train.recipes import RECIPES


@dataclass(frozen=True)
class PreparedSweep:
    """A validated sweep: the spec, the TrainJob every trial starts from, where it lives."""

    sweep: SweepJob
    base: TrainJob
    base_doc: dict[str, Any]  # the TrainJob as plain data (camelCase), shipped to trials
    uri: StorageURI  # <storage>/sweeps/<name>

    @property
    def epochs(self) -> int:
        """Epochs a trial runs in full (run.epochs, or a user loop's model.config.epochs)."""
        return self.base.epochs_planned()


def prepare(sweep: SweepJob, *, source_dir: Path) -> PreparedSweep:
    """Resolve and check everything about a sweep that can be checked without Ray."""
    where = f"sweep {sweep.name}"
    ref = sweep.spec.train_job
    if ref.path is not None:
        path = (source_dir / ref.path).resolve()
        base = load_spec(path, expect="TrainJob")
        doc = base.model_dump(mode="json", by_alias=True, exclude_none=True)
    else:
        doc = {
            "apiVersion": sweep.api_version,
            "kind": "TrainJob",
            "metadata": {"name": sweep.name},
            "spec": ref.spec.model_dump(mode="json", by_alias=True, exclude_none=True),
        }
    for key, value in ref.overrides.items():
        _check_key(doc, key, f"spec.trainJob.overrides.{key}")
        doc = with_value(doc, key, value)
    base = _validate(doc, f"{where}: spec.trainJob")

    for key, domain in sweep.spec.search_space.items():
        field = f"spec.searchSpace.{key}"
        _check_key(doc, key, field)
        for value in domain.probe_values():
            _validate(with_value(doc, key, value), f"{where}: {field} value {value!r}")
    _check_algorithm(sweep)
    _check_metric(sweep, base)
    _check_scheduler(sweep, base)
    uri = sweep.sweep_uri(base.spec.storage)
    return PreparedSweep(sweep=sweep, base=base, base_doc=doc, uri=uri)


def with_value(doc: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """A copy of a TrainJob document with `spec.<key>` set (dotted, camelCase keys)."""
    out = copy.deepcopy(doc)
    node = out["spec"]
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return out


def trial_doc(base_doc: dict[str, Any], params: dict[str, Any], name: str) -> dict[str, Any]:
    """The TrainJob document of one trial: the base with the trial's sampled values."""
    doc = copy.deepcopy(base_doc)
    for key, value in params.items():
        doc = with_value(doc, key, value)
    doc["metadata"] = {**doc.get("metadata", {}), "name": name}
    return doc


def _validate(doc: dict[str, Any], source: str) -> TrainJob:
    job = parse_spec(doc, source=source)
    assert isinstance(job, TrainJob)
    return job


def _check_key(doc: dict[str, Any], key: str, field: str) -> None:
    """A key must name a TrainJob spec field, or a config key the recipe reads."""
    parts = key.split(".")
    model: type[BaseModel] = TrainJobSpec
    for i, part in enumerate(parts):
        if model is None:
            raise SpecError(f"{field}: {'.'.join(parts[:i])} has no sub-keys; check the key")
        fields = {f.alias or name: f for name, f in model.model_fields.items()}
        if part not in fields:
            known = ", ".join(sorted(fields))
            raise SpecError(f"{field}: {part!r} is not a TrainJob field here; use one of {known}")
        if parts[: i + 1] == ["model", "config"]:
            _check_config_key(doc, parts[i + 1 :], field)
            return
        model = _submodel(fields[part].annotation)
    if model is not None:
        raise SpecError(f"{field}: {key} is a section, not a value; name a field inside it")


def _check_config_key(doc: dict[str, Any], rest: list[str], field: str) -> None:
    if len(rest) != 1:
        raise SpecError(f"{field}: name one key inside model.config, e.g. model.config.hidden")
    model = doc["spec"]["model"]
    recipe = RECIPES.get(model.get("recipe", ""))
    known = set(recipe.config_keys) if recipe else set()
    known |= set(model.get("config", {}))
    if rest[0] not in known:
        what = f"recipe {model['recipe']}" if recipe else "the entrypoint's model.config"
        hint = ", ".join(sorted(known)) or "none; add the key to model.config first"
        raise SpecError(f"{field}: {what} has no config key {rest[0]!r}; known: {hint}")


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model a field holds (unwrapping `X | None`), or None for a plain value."""
    candidates = getattr(annotation, "__args__", None) or (annotation,)
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _check_algorithm(sweep: SweepJob) -> None:
    space = sweep.spec.search_space
    algorithm = sweep.spec.search.algorithm
    if algorithm == "grid":
        for key, domain in space.items():
            if domain.kind not in ("grid", "choice"):
                raise SpecError(
                    f"sweep {sweep.name}: spec.searchSpace.{key}: search.algorithm grid takes "
                    f"grid or choice values, not {domain.kind}; use random or tpe"
                )
    if algorithm == "tpe":
        for key, domain in space.items():
            if domain.kind == "grid":
                raise SpecError(
                    f"sweep {sweep.name}: spec.searchSpace.{key}: tpe samples its own points "
                    "and cannot take grid; use choice"
                )


def _check_metric(sweep: SweepJob, base: TrainJob) -> None:
    recipe = RECIPES.get(base.spec.model.recipe or "")
    if recipe is not None and sweep.spec.metric not in recipe.metrics:
        raise SpecError(
            f"sweep {sweep.name}: spec.metric: recipe {base.spec.model.recipe} never reports "
            f"{sweep.spec.metric!r}; it reports {', '.join(recipe.metrics)}"
        )


def _check_scheduler(sweep: SweepJob, base: TrainJob) -> None:
    scheduler = sweep.spec.scheduler
    epochs = base.epochs_planned()
    if scheduler.type != "fifo" and scheduler.grace_period >= epochs:
        raise SpecError(
            f"sweep {sweep.name}: spec.scheduler.gracePeriod: {scheduler.grace_period} leaves "
            f"no room to stop a {epochs}-epoch trial early; lower it or use type: fifo"
        )
