"""Pins: which checkpoints something outside the run still needs, so pruning never deletes them.

A deployment loads its checkpoint when each replica starts, which can be long after the
deploy (autoscaling, a restarted pod). If the run it came from trains again (more epochs),
pruning would otherwise delete the served checkpoint and the next replica would fail to load.
So whoever serves a checkpoint pins it: `<run>/pins/<holder>.json` names the checkpoint
folder. One pin per holder per run: pinning another checkpoint of the same run moves it.

Pins are small JSON documents written with one PUT (atomic); a missing or unreadable pin
protects nothing, which is why `prune` also keeps the newest fully verified checkpoints.
"""

from __future__ import annotations

import json
import re

from rayfleet.errors import StorageError
from rayfleet.lazy import lazy
from rayfleet.storage.filesystem import read_bytes, write_bytes

pafs = lazy("pyarrow.fs")

PINS = "pins"
_HOLDER = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def _split(checkpoint_path: str) -> tuple[str, str]:
    run_path, _, name = checkpoint_path.rstrip("/").rpartition("/")
    return run_path, name


def pin(fs: pafs.FileSystem, checkpoint_path: str, holder: str) -> None:
    """Record that `holder` (e.g. "deployment-digits") serves the checkpoint at this path."""
    if not _HOLDER.fullmatch(holder):
        raise StorageError(
            f"pin holder {holder!r} is not a DNS-1123 label; use e.g. deployment-NAME"
        )
    run_path, name = _split(checkpoint_path)
    doc = {"checkpoint": name, "holder": holder}
    write_bytes(fs, f"{run_path}/{PINS}/{holder}.json", json.dumps(doc).encode())


def pinned(fs: pafs.FileSystem, run_path: str) -> dict[str, str]:
    """{checkpoint folder name: holder} for every readable pin under a run."""
    try:
        infos = fs.get_file_info(pafs.FileSelector(f"{run_path}/{PINS}", allow_not_found=True))
    except FileNotFoundError:
        return {}
    held: dict[str, str] = {}
    for info in infos:
        if info.type != pafs.FileType.File or not info.base_name.endswith(".json"):
            continue
        try:
            doc = json.loads(read_bytes(fs, info.path))
            held[str(doc["checkpoint"])] = str(doc["holder"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return held
