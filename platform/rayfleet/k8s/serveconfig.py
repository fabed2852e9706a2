"""Read and edit the Serve config a RayService carries as a YAML string (`serveConfigV2`).

KubeRay keeps Serve's replica counts inside that string, so "scale a RayService" means: parse
the string, change one `num_replicas`, write the string back, and leave everything else as it
was. `set_replicas` edits the text in place (the value's characters, or one inserted line),
so comments, key order, quoting and every other field survive; it then parses the result and
checks that exactly that one value changed, falling back to a plain YAML dump only when the
document is not block-style YAML it can edit in place. Pure functions, no cluster.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import yaml

from rayfleet.errors import BadInputError


class ServeConfigError(BadInputError):
    """The serveConfigV2 is missing, unparsable, or doesn't hold what was asked for."""


@dataclass(frozen=True)
class ScaleTarget:
    """One Serve deployment's scaling: a fixed count, or an autoscaling range."""

    app: str
    deployment: str
    replicas: int | None  # None: autoscaling, or unset (Serve's default, 1)
    autoscaling: dict[str, Any] | None = None

    def describe(self) -> str:
        if self.autoscaling is not None:
            a = self.autoscaling
            return f"{a.get('min_replicas', '?')}-{a.get('max_replicas', '?')} (autoscaling)"
        return str(self.replicas if self.replicas is not None else 1)


def load(text: str | None, where: str = "serveConfigV2") -> dict[str, Any]:
    if not text or not text.strip():
        raise ServeConfigError(f"{where} is empty; this RayService has no Serve applications")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark else ""
        raise ServeConfigError(f"{where} is not valid YAML{line}; fix the RayService") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("applications"), list):
        raise ServeConfigError(f"{where} has no `applications` list; is it a Serve config?")
    return doc


def targets(text: str | None, where: str = "serveConfigV2") -> list[ScaleTarget]:
    """Every (application, deployment override) in the config and its scaling."""
    out = []
    for app in load(text, where)["applications"]:
        if not isinstance(app, dict):
            continue
        for dep in app.get("deployments") or []:
            if isinstance(dep, dict):
                out.append(
                    ScaleTarget(
                        app=str(app.get("name", "default")),
                        deployment=str(dep.get("name")),
                        replicas=dep.get("num_replicas")
                        if isinstance(dep.get("num_replicas"), int)
                        else None,
                        autoscaling=dep.get("autoscaling_config")
                        if isinstance(dep.get("autoscaling_config"), dict)
                        else None,
                    )
                )
    return out


def _pick(names: list[str], wanted: str | None, what: str, flag: str, where: str) -> int:
    if wanted is not None:
        if wanted not in names:
            raise ServeConfigError(
                f"{where}: no {what} {wanted!r}; it has {', '.join(names) or 'none'}"
            )
        return names.index(wanted)
    if len(names) == 1:
        return 0
    if not names:
        raise ServeConfigError(f"{where}: no {what}s to scale")
    raise ServeConfigError(
        f"{where} has {len(names)} {what}s ({', '.join(names)}); pick one with {flag}"
    )


def locate(
    doc: dict[str, Any], app: str | None, deployment: str | None, where: str
) -> tuple[int, int]:
    """(application index, deployment index) of the override to scale."""
    apps = doc["applications"]
    a = _pick([str(x.get("name", "default")) for x in apps], app, "application", "--app", where)
    deps = apps[a].get("deployments") or []
    if not deps:
        raise ServeConfigError(
            f"{where}: application {apps[a].get('name')!r} lists no deployments; add "
            "`deployments: [{name: ..., num_replicas: N}]` to it (Serve needs the name)"
        )
    d = _pick([str(x.get("name")) for x in deps], deployment, "deployment", "--deployment", where)
    return a, d


def _with_replicas(doc: dict[str, Any], a: int, d: int, replicas: int) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    out["applications"][a]["deployments"][d]["num_replicas"] = replicas
    return out


def _node_at(root: yaml.Node, path: list[str | int]) -> yaml.Node | None:
    node = root
    for step in path:
        if isinstance(step, int):
            if not isinstance(node, yaml.SequenceNode) or step >= len(node.value):
                return None
            node = node.value[step]
        else:
            if not isinstance(node, yaml.MappingNode):
                return None
            node = next((v for k, v in node.value if k.value == step), None)
            if node is None:
                return None
    return node


def _edit_text(text: str, a: int, d: int, replicas: int) -> str | None:
    """`text` with the one value changed (or one line inserted); None when it can't be done
    in place (flow style, anchors, tags: then the caller dumps the whole document)."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    dep = _node_at(root, ["applications", a, "deployments", d])
    if not isinstance(dep, yaml.MappingNode) or dep.flow_style:
        return None
    current = _node_at(dep, ["num_replicas"])
    if current is not None:
        if not isinstance(current, yaml.ScalarNode):
            return None
        start, end = current.start_mark.index, current.end_mark.index
        return text[:start] + str(replicas) + text[end:]
    # No num_replicas yet: a new line after the deployment's first key, at its indentation.
    first_key, first_value = dep.value[0]
    column = first_key.start_mark.column
    line_end = text.find("\n", first_value.end_mark.index)
    if line_end < 0 or first_value.end_mark.line != first_key.start_mark.line:
        return None
    return (
        text[: line_end + 1] + " " * column + f"num_replicas: {replicas}\n" + text[line_end + 1 :]
    )


def set_replicas(
    text: str,
    replicas: int,
    *,
    app: str | None = None,
    deployment: str | None = None,
    where: str = "serveConfigV2",
) -> tuple[str, ScaleTarget]:
    """(new serveConfigV2 text, the target as it was). Changes only that `num_replicas`."""
    if replicas < 1:  # Serve's DeploymentSchema: num_replicas is a PositiveInt
        raise ServeConfigError(f"--replicas {replicas}: Serve needs at least 1")
    doc = load(text, where)
    a, d = locate(doc, app, deployment, where)
    dep = doc["applications"][a]["deployments"][d]
    before = ScaleTarget(
        app=str(doc["applications"][a].get("name", "default")),
        deployment=str(dep.get("name")),
        replicas=dep.get("num_replicas") if isinstance(dep.get("num_replicas"), int) else None,
        autoscaling=dep.get("autoscaling_config"),
    )
    if before.autoscaling is not None:
        raise ServeConfigError(
            f"{where}: {before.app}/{before.deployment} uses autoscaling_config "
            f"({before.describe()}); Serve ignores num_replicas then: change its min_replicas/"
            "max_replicas instead"
        )
    if dep.get("num_replicas") == "auto":
        raise ServeConfigError(
            f"{where}: {before.app}/{before.deployment} has num_replicas: auto (autoscaling)"
        )
    want = _with_replicas(doc, a, d, replicas)
    edited = _edit_text(text, a, d, replicas)
    if edited is not None and yaml.safe_load(edited) == want:
        return edited, before
    return yaml.safe_dump(want, sort_keys=False), before
