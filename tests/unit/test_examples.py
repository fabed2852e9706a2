"""The specs shipped in the package (rayfleet.examples, for `python -m rayfleet.demo` from an
installed rayfleet) are the repository's jobs/, byte for byte, and all of them load."""

from __future__ import annotations

from pathlib import Path

import pytest

from rayfleet.examples import SHIPPED, spec_path
from rayfleet.specs import load_spec

pytestmark = pytest.mark.unit
JOBS = Path(__file__).resolve().parents[2] / "jobs"
PACKAGED = Path(spec_path(SHIPPED[0], "x")).parents[1]


@pytest.mark.parametrize("group", SHIPPED)
def test_shipped_specs_are_the_repository_jobs(group):
    repo = sorted(p.name for p in (JOBS / group).glob("*.yaml"))
    shipped = sorted(p.name for p in (PACKAGED / group).glob("*.yaml"))
    assert shipped == repo, f"copy jobs/{group}/*.yaml to {PACKAGED / group}"
    for name in repo:
        assert spec_path(group, name).read_bytes() == (JOBS / group / name).read_bytes(), (
            f"{spec_path(group, name)} differs from jobs/{group}/{name}: copy it over"
        )
        assert load_spec(spec_path(group, name)).name


def test_the_demo_reads_the_shipped_specs():
    import rayfleet.demo as demo

    source = Path(demo.__file__).read_text()
    assert "parents[" not in source and "spec_path(" in source
