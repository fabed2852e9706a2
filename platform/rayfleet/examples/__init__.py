"""Job specs shipped inside the package, so the quickstart (`python -m rayfleet.demo`) works
from an installed rayfleet, not only from a checkout.

They are copies of the repository's `jobs/` (the copy users read and edit);
tests/unit/test_examples.py keeps the two identical.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

# The groups of jobs/ shipped here, each a folder of *.yaml specs.
SHIPPED = ("digits",)


def spec_path(group: str, name: str) -> Path:
    """The shipped spec `jobs/<group>/<name>` as a file on disk (specs name sibling files by
    relative path, so they are read where they lie)."""
    return Path(str(files(__name__).joinpath(group, name)))
