"""Verified checkpoints: a manifest of every file's size and sha256, written last.

A checkpoint directory without a manifest, or whose files don't match it, is not a
checkpoint: it is what an interrupted upload, a full disk or a killed worker leaves behind.
Resume and model loading call `newest_verified`, which walks checkpoints newest first and
returns the first one that verifies together with every newer one it skipped and why, so the
user can see what happened instead of silently training from an older state.

Directory names carry the epoch and a launch token (`checkpoint_e000007-18c2f0a9b1e`), so
"newest" is a property of the name, not of object-store timestamps, which S3-compatible stores
don't all keep faithfully. The token (a hex millisecond clock taken when a worker group
starts) keeps an epoch that is trained again after a resume from landing in the folder of a
skipped, corrupt checkpoint of the same epoch, which Ray Train may still delete by path.

A plain Ray Train loop (`ray.train.report(..., checkpoint=...)` with no directory name) gets
Ray's default names, `checkpoint_2026-12-02_03-30-00.123456` (the reporting worker's clock);
those sort by that timestamp, their epoch comes from the manifest that the controller-side
callback (train.reporting) stamps on them once Ray Train has persisted them. A run holds one
style: the launcher refuses to resume a checkpoint written by a different loop.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rayfleet.errors import BadInputError, CheckpointError
from rayfleet.lazy import lazy
from rayfleet.storage.filesystem import filesystem_for, read_bytes, write_bytes
from rayfleet.storage.pins import pinned
from rayfleet.storage.uri import StorageURI

pafs = lazy("pyarrow.fs")

MANIFEST = "rayfleet-manifest.json"
MANIFEST_VERSION = 1
# meta key: the TrainJob.spec_hash() that wrote the checkpoint (see train.launcher).
SPEC_HASH_KEY = "specHash"
_CKPT_DIR = re.compile(r"^checkpoint_e(\d{6})(?:-([0-9a-f]{1,16}))?$")
# Ray Train's default checkpoint_dir_name (storage.make_default_checkpoint_dir_name).
_RAY_CKPT_DIR = re.compile(r"^checkpoint_(\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}\.\d{6})$")
# The epoch list_checkpoints gives a Ray-named checkpoint: only its manifest knows.
UNKNOWN_EPOCH = -1
_CHUNK = 1 << 20


def launch_token() -> str:
    """A token that sorts by time (zero-padded hex milliseconds)."""
    return f"{time.time_ns() // 1_000_000:012x}"


def checkpoint_dir_name(epoch: int, token: str = "") -> str:
    return f"checkpoint_e{epoch:06d}-{token}" if token else f"checkpoint_e{epoch:06d}"


def _sha256_stream(stream) -> str:
    digest = hashlib.sha256()
    while chunk := stream.read(_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def write_manifest(local_dir: str | Path, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Hash every file under `local_dir` and write the manifest last (atomically, locally).

    `meta` (epoch, metrics, model signature, ...) is stored in the manifest so a reader learns
    what a checkpoint holds from one small object.
    """
    root = Path(local_dir)
    files = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST):
        with path.open("rb") as f:
            files.append(
                {
                    "path": path.relative_to(root).as_posix(),
                    "size": path.stat().st_size,
                    "sha256": _sha256_stream(f),
                }
            )
    manifest = {"version": MANIFEST_VERSION, "files": files, "meta": meta or {}}
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    os.replace(tmp, root / MANIFEST)
    return manifest


def unsafe_entry(path: Any) -> str | None:
    """Why a manifest entry may not be trusted as a path inside the checkpoint, or None.

    A manifest comes from storage, which others can write: an entry like `../../x` or
    `/etc/passwd` would make verification (and a loader that trusts the list) read outside
    the checkpoint folder."""
    if not isinstance(path, str) or not path or "\x00" in path or "\\" in path:
        return "is not a plain relative path"
    if path.startswith("/") or ".." in path.split("/") or "." in path.split("/"):
        return "climbs out of the checkpoint folder (absolute or '..'); the manifest is not trusted"
    return None


@dataclass
class Verification:
    ok: bool
    reason: str = ""
    manifest: dict[str, Any] = field(default_factory=dict)


def verify(fs: pafs.FileSystem, path: str, *, hash_files: bool = True) -> Verification:
    """Check a checkpoint directory against its manifest: presence, sizes, then sha256."""
    try:
        raw = read_bytes(fs, f"{path}/{MANIFEST}")
    except FileNotFoundError:
        return Verification(False, "no manifest (incomplete or interrupted write)")
    try:
        manifest = json.loads(raw)
        entries = manifest["files"]
        paths = [e["path"] for e in entries]
    except (ValueError, KeyError, TypeError):
        return Verification(False, "manifest is not valid JSON")
    if not entries:
        return Verification(False, "manifest lists no files")
    for entry_path in paths:
        if (reason := unsafe_entry(entry_path)) is not None:
            return Verification(False, f"manifest entry {entry_path!r} {reason}")
    infos = fs.get_file_info([f"{path}/{e['path']}" for e in entries])
    for entry, info in zip(entries, infos, strict=True):
        if info.type == pafs.FileType.NotFound:
            return Verification(False, f"{entry['path']} is missing")
        if info.size != entry["size"]:
            return Verification(
                False, f"{entry['path']} has {info.size} bytes, manifest says {entry['size']}"
            )
    if hash_files:
        for entry in entries:
            with fs.open_input_stream(f"{path}/{entry['path']}") as f:
                if _sha256_stream(f) != entry["sha256"]:
                    return Verification(False, f"{entry['path']} sha256 does not match manifest")
    return Verification(True, manifest=manifest)


@dataclass(frozen=True)
class CheckpointRef:
    """A checkpoint that verified: where it is and what its manifest says."""

    path: str  # filesystem path (bucket/key or absolute)
    epoch: int
    meta: dict[str, Any]

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Skipped:
    name: str
    reason: str

    def __str__(self) -> str:
        return f"skipped {self.name}: {self.reason}"


def list_checkpoints(fs: pafs.FileSystem, run_path: str) -> list[tuple[int, str]]:
    """(epoch, path) of every checkpoint directory under a run, newest first: rayfleet's by
    (epoch, token), Ray-named ones by timestamp with epoch UNKNOWN_EPOCH."""
    try:
        infos = fs.get_file_info(pafs.FileSelector(run_path, allow_not_found=True))
    except FileNotFoundError:
        return []
    found = []
    for info in infos:
        if info.type != pafs.FileType.Directory:
            continue
        if m := _CKPT_DIR.match(info.base_name):
            found.append((int(m.group(1)), m.group(2) or "", info.path))
        elif m := _RAY_CKPT_DIR.match(info.base_name):
            found.append((UNKNOWN_EPOCH, m.group(1), info.path))
    return [(epoch, path) for epoch, _, path in sorted(found, reverse=True)]


def newest_verified(
    fs: pafs.FileSystem, run_path: str
) -> tuple[CheckpointRef | None, list[Skipped]]:
    """The newest checkpoint under `run_path` whose manifest verifies, and what was skipped."""
    skipped: list[Skipped] = []
    for epoch, path in list_checkpoints(fs, run_path):
        result = verify(fs, path)
        if result.ok:
            meta = result.manifest.get("meta", {})
            if epoch == UNKNOWN_EPOCH:
                epoch = _int_or(meta.get("epoch"), UNKNOWN_EPOCH)
            return CheckpointRef(path, epoch, meta), skipped
        skipped.append(Skipped(path.rsplit("/", 1)[-1], result.reason))
    return None, skipped


def required_newest(
    run_uri: StorageURI, run: str, *, fix: str, error: type[BadInputError] = BadInputError
) -> tuple[CheckpointRef, list[Skipped]]:
    """Run `run`'s newest verified checkpoint for a command that needs one (serve, evaluate,
    compress): `error` (one line naming what was skipped, ending with `fix`) when none is."""
    ref, skipped = newest_verified(filesystem_for(run_uri), run_uri.fs_path)
    if ref is None:
        detail = f" ({'; '.join(str(s) for s in skipped)})" if skipped else ""
        raise error(
            f"run {run}: no verified checkpoint under {run_uri}{detail}; train it with "
            f"`rayfleet run`, or {fix}"
        )
    return ref, skipped


def _int_or(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def stamp_persisted(fs: pafs.FileSystem, path: str, meta: dict[str, Any]) -> bool:
    """Give a checkpoint that is already in storage its manifest, hashing the stored files.

    For checkpoints a loop reported without rayfleet's `session.report` (a plain Ray Train
    loop): called once Ray Train has persisted and registered them. Returns False (and
    changes nothing) when the folder already has a manifest, as rayfleet's own reports do.
    """
    if fs.get_file_info(f"{path}/{MANIFEST}").type != pafs.FileType.NotFound:
        return False
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    files = []
    for info in sorted((i for i in infos if i.type == pafs.FileType.File), key=lambda i: i.path):
        with fs.open_input_stream(info.path) as f:
            digest = _sha256_stream(f)
        files.append({"path": info.path[len(path) + 1 :], "size": info.size, "sha256": digest})
    manifest = {"version": MANIFEST_VERSION, "files": files, "meta": meta}
    write_bytes(fs, f"{path}/{MANIFEST}", json.dumps(manifest, indent=1, sort_keys=True).encode())
    return True


def prune(
    fs: pafs.FileSystem, run_path: str, keep: int, *, protect: tuple[str, ...] = ()
) -> list[Skipped]:
    """Delete the checkpoints a finished run no longer needs; returns what was deleted and why.

    Called once a run has succeeded, when nothing writes to it any more. Kept: the `keep`
    newest fully verified checkpoints, every checkpoint that is pinned (served by a
    deployment, see storage.pins) or named in `protect` (folder names, e.g. the checkpoint
    the run reports as its result). Deleted: older verified ones, and every checkpoint that
    does not verify, wherever it sits: the torn folder a worker or node lost mid-write
    leaves behind (the run resumed past it from an older one), and corrupt leftovers. Ray
    Train's `num_to_keep` only knows checkpoints it registered, so these are ours to clear.
    Kept checkpoints are verified with their hashes, not only sizes: a checkpoint corrupted
    without a size change must not count as kept, or the only good one would be deleted.
    """

    held = set(pinned(fs, run_path)) | set(protect)
    kept, deleted = 0, []
    for _, path in list_checkpoints(fs, run_path):
        name = path.rsplit("/", 1)[-1]
        if kept < keep:  # (past the kept ones every checkpoint goes: no need to hash them)
            result = verify(fs, path)
            kept += result.ok
            if result.ok or name in held:
                continue
            reason = f"does not verify: {result.reason}"
        elif name in held:
            continue
        else:
            reason = f"older than the {keep} kept"
        fs.delete_dir(path)
        deleted.append(Skipped(name, reason))
    return deleted


def upload(local_dir: str | Path, fs: pafs.FileSystem, path: str, meta: dict[str, Any]) -> None:
    """Persist a local checkpoint folder at `path`, its manifest last: an upload cut short
    leaves a folder without one, which never verifies. A folder that has no manifest yet (a
    plain Ray Train loop's) gets one hashed from the stored files, as `stamp_persisted` does
    for the checkpoints Ray Train persists; `meta` is that manifest's meta."""
    root = Path(local_dir)
    local = isinstance(fs, pafs.LocalFileSystem)  # (object stores have no folders to make)
    for file in sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST):
        target = f"{path}/{file.relative_to(root).as_posix()}"
        if local:
            fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        with file.open("rb") as src, fs.open_output_stream(target) as dst:
            shutil.copyfileobj(src, dst, _CHUNK)
    if (root / MANIFEST).is_file():
        write_bytes(fs, f"{path}/{MANIFEST}", (root / MANIFEST).read_bytes())
    else:
        stamp_persisted(fs, path, meta)


def download_verified(fs: pafs.FileSystem, path: str, local_dir: str | Path) -> dict[str, Any]:
    """Copy a checkpoint to `local_dir` and verify the local copy; returns its manifest.

    Verifying the copy (not only the source) means what gets loaded is exactly what was
    hashed, even if the store changed between the check and the download.
    """
    local_dir = Path(local_dir)
    local_dir.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(
        path, str(local_dir), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem()
    )
    result = verify(pafs.LocalFileSystem(), str(local_dir))
    if not result.ok:
        raise CheckpointError(f"checkpoint {path}: {result.reason}; it cannot be loaded")
    return result.manifest
