"""The chart README's values table, generated from the `# --` comments in values.yaml.

`python -m tests.k8s.chart_docs` rewrites the table in charts/rayfleet/README.md between its
markers; tests/k8s checks that the README and values.yaml agree (keys, defaults, text).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[2] / "charts" / "rayfleet"
START, END = "<!-- values:start -->", "<!-- values:end -->"
_KEY = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z0-9_.\-/]+):(\s|$)")


def documented(values_file: Path = CHART / "values.yaml") -> list[tuple[str, str]]:
    """(dotted key, description) for every key preceded by a `# --` comment, in file order."""
    out: list[tuple[str, str]] = []
    stack: list[tuple[int, str]] = []
    pending: str | None = None
    for line in values_file.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending = stripped.removeprefix("# --").strip()
            continue
        match = _KEY.match(line)
        if not match:
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match["key"]))
        if pending is not None:
            out.append((".".join(k for _, k in stack), pending))
            pending = None
    return out


def _lookup(values: dict[str, Any], dotted: str) -> Any:
    node: Any = values
    for part in dotted.split("."):
        node = node[part]
    return node


def _type(value: Any) -> str:
    for kind, name in ((bool, "bool"), (int, "int"), (float, "float"), (str, "string")):
        if isinstance(value, kind):
            return name
    return "list" if isinstance(value, list) else "object"


def rows(values_file: Path = CHART / "values.yaml") -> list[str]:
    values = yaml.safe_load(values_file.read_text())
    out = ["| Key | Type | Default | Description |", "|-----|------|---------|-------------|"]
    for key, text in documented(values_file):
        value = _lookup(values, key)
        default = json.dumps(value, separators=(",", ":")).replace("|", r"\|")
        text = text.replace("|", r"\|")
        out.append(f"| `{key}` | {_type(value)} | `{default}` | {text} |")
    return out


def readme_rows(readme: Path = CHART / "README.md") -> list[str]:
    text = readme.read_text()
    if START not in text or END not in text:
        raise AssertionError(f"{readme}: values table markers {START} / {END} are missing")
    block = text.split(START, 1)[1].split(END, 1)[0]
    return [line for line in block.strip().splitlines() if line.strip()]


def write_readme(readme: Path = CHART / "README.md") -> None:
    text = readme.read_text()
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    readme.write_text(head + START + "\n" + "\n".join(rows()) + "\n" + END + tail)


if __name__ == "__main__":
    write_readme()
    sys.stdout.write(f"updated the values table in {CHART / 'README.md'}\n")
