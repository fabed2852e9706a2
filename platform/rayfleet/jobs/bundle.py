"""What travels with a submitted job: the spec's folder (filtered) and the rayfleet package.

The job's runtime_env has `working_dir` = the spec's folder (the spec, a SweepJob's TrainJob
file, a user training module beside it) and `py_modules` = this rayfleet package, so the
cluster runs exactly the code that validated the spec here, installed in its image or not.

**What never travels.** A spec folder is often a project folder, with a `.env`, a deploy key
or a `.git/` beside the spec. `scan` never follows a symlink and skips, and names, every
dotfile and dot-folder, every credential-like name (`SECRET_NAMES`) and every symlink; the
CLI prints that list in one line. Symlinks are skipped rather than refused: whether one points
inside the folder (its target travels anyway) or outside it (a data mount, a home folder), the
job only ever gets bytes that are in the folder itself, and a link the job needed shows up in
the printed list. A folder's `.gitignore` / `.rayignore` apply as Ray applies them.

Ray uploads a local working_dir through the head node's dashboard into its object store
(GCS), which caps packages at 500 MiB and keeps them in head-node memory. Ray packs that
folder with its own walk, which follows symlinks, and its `excludes` also apply to
`py_modules` (so a path-shaped exclude for one symlink could cut the rayfleet package). So:
a folder with nothing to skip goes as it is, with the same name rules as `excludes` (Ray
then packs exactly `files()`); a folder with anything skipped goes as a filtered copy in a
temporary folder that lives as long as the submission (`with build(...)`).

A spec folder above INLINE_LIMIT_BYTES (50 MB; `RAYFLEET_INLINE_BUNDLE_MB`) is zipped here
(the same filtered files) and written to `<storage>/bundles/<sha256>.zip` instead, and the
runtime_env names that URI: the nodes download it from S3 with their own identity, and a
second submission of the same folder can reuse it (see `publish`).
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import os
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

import rayfleet
from rayfleet.errors import SpecError, StorageError
from rayfleet.storage.filesystem import filesystem_for, write_bytes
from rayfleet.storage.uri import StorageURI

NOISE = ("__pycache__", "*.pyc", "venv", "*.egg-info")
"""Build and cache output: left out silently (Ray leaves out __pycache__ and venv too)."""
SECRET_NAMES = (
    ".*",  # dotfiles and dot-folders: .env*, .git, .aws, .ssh, .netrc, .npmrc, .kube, ...
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    "*.jks",
    "*.keystore",
    "id_*",  # SSH keys: id_rsa, id_ed25519, id_ecdsa (and their .pub)
    "*credentials*",  # credentials, credentials.json, gcp-credentials.json
    "kubeconfig",
    "*.kubeconfig",
    "auth_token",  # where `ray get-auth-token` puts a cluster's token
    "*.token",
)
"""Names that never travel (case-insensitive), anywhere in the folder: skipped and listed."""
EXCLUDES = NOISE + tuple(".?*" if p == ".*" else p for p in SECRET_NAMES)
"""The runtime_env `excludes` (gitwildmatch): Ray's walk applies the same name rules. Not
`.*`: Ray matches the folder itself as ".", so `.*` would exclude the whole working_dir
and every py_module (measured: an empty package)."""
IGNORE_FILES = (".gitignore", ".rayignore")
INLINE_LIMIT_BYTES = 50 * 1000 * 1000
# Inside the zip everything sits under one folder, which Ray strips when it unpacks.
_TOP = "bundle"
_CHUNK = 1 << 20


def inline_limit() -> int:
    if value := os.environ.get("RAYFLEET_INLINE_BUNDLE_MB"):
        return int(float(value) * 1000 * 1000)
    return INLINE_LIMIT_BYTES


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name.lower(), pattern) for pattern in patterns)


@dataclass(frozen=True)
class Scan:
    files: list[Path]
    """What travels, in a stable order (so the zip and its hash are stable)."""
    skipped: tuple[str, ...]
    """What does not, relative to the folder: folders end in `/` and are named once."""


class _Ignores:
    """A folder's .gitignore / .rayignore patterns, read as Ray reads them: each file's
    patterns match paths relative to its own folder, for everything below it. Parsed with
    the pathspec Ray vendors, so a pattern means here what it means to Ray."""

    def __init__(self, rules: tuple[tuple[Path, Any], ...] = ()):
        self.rules = rules

    def below(self, folder: Path) -> _Ignores:
        added = []
        for name in IGNORE_FILES:
            path = folder / name
            if path.is_file() and not path.is_symlink():
                from ray._private.thirdparty.pathspec import PathSpec

                lines = _read_nofollow(path).decode(errors="replace").splitlines()
                added.append((folder, PathSpec.from_lines("gitwildmatch", lines)))
        return _Ignores(self.rules + tuple(added)) if added else self

    def match(self, path: Path) -> bool:
        return any(spec.match_file(str(path.relative_to(base))) for base, spec in self.rules)


def scan(root: Path) -> Scan:
    """Every regular file under root that travels, and every entry that does not (see the
    module docstring). Never follows a symlink, never opens one."""
    root = Path(root)
    found: list[Path] = []
    skipped: list[str] = []

    def walk(folder: Path, ignores: _Ignores) -> None:
        ignores = ignores.below(folder)
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
        subfolders = []
        for entry in entries:
            path = Path(entry.path)
            rel = path.relative_to(root).as_posix()
            is_dir = entry.is_dir(follow_symlinks=False)
            if _matches(entry.name, NOISE):
                continue
            if entry.is_symlink() or _matches(entry.name, SECRET_NAMES):
                skipped.append(rel + ("/" if is_dir else ""))
            elif ignores.match(path):
                continue  # the user's own ignore files: left out as Ray would
            elif is_dir:
                subfolders.append(path)
            elif entry.is_file(follow_symlinks=False):
                found.append(path)
            else:  # a socket, a FIFO, a device: nothing a job can use, and reading may hang
                skipped.append(rel)
        for sub in subfolders:
            walk(sub, ignores)

    walk(root, _Ignores())
    return Scan(found, tuple(skipped))


def files(root: Path) -> list[Path]:
    """Every file under root that travels, in a stable order (so the zip and its hash are)."""
    return scan(root).files


def _read_nofollow(path: Path) -> bytes:
    """The file's bytes, refusing a path that became a symlink after it was scanned."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as f:
        return f.read()


def zip_folder(root: Path, found: Scan | None = None) -> bytes:
    """The travelling files of root as a reproducible zip (same files, same bytes)."""
    found = found or scan(root)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in found.files:
            info = zipfile.ZipInfo(f"{_TOP}/{path.relative_to(root).as_posix()}")
            info.date_time = (1980, 1, 1, 0, 0, 0)  # content-addressed: no timestamps
            info.external_attr = (path.lstat().st_mode & 0o777) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, _read_nofollow(path))
    return buffer.getvalue()


def _stage(root: Path, found: Scan) -> Path:
    """A private temporary copy of exactly the travelling files (no links, no set-id bits)."""
    staged = Path(tempfile.mkdtemp(prefix="rayfleet-bundle-"))
    try:
        for path in found.files:
            copy = staged / path.relative_to(root)
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_bytes(_read_nofollow(path))
            copy.chmod(stat.S_IMODE(path.lstat().st_mode) & 0o755 | 0o600)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return staged


def _stored_sha256(fs: pafs.FileSystem, path: str) -> str | None:
    digest = hashlib.sha256()
    try:
        with fs.open_input_stream(path) as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def publish(fs: pafs.FileSystem, path: str, data: bytes) -> str:
    """Make `path` hold exactly `data`: "uploaded" (it was absent), "reused" (it was there
    and its sha256 matched `data`'s), or "replaced" (something else sat under the name).

    A bundle's name is its content hash, but anyone who can write to `<storage>/bundles/`
    can put other bytes under that name, and the cluster would run them as the job's code:
    so an existing object is read back and hashed before it is reused, never trusted by name.

    What this guarantees is the state at submission: when the job is submitted, the object
    under the content-addressed name holds exactly this folder's zip (verified, or written
    just now). It cannot guarantee the nodes' download: Ray fetches a remote working_dir by
    URI without checking any hash, when each node first sets up the job's runtime_env
    (seconds later, or much later for a node that joins, or a resubmission). A writer who
    swaps the object in that window wins; the defence there is the bucket's write policy
    (only submitters and the cluster's own identity may write the storage prefix, which also
    holds the checkpoints the workers load), with object versioning to see who did.
    """
    want = hashlib.sha256(data).hexdigest()
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.NotFound:
        if info.size == len(data) and _stored_sha256(fs, path) == want:
            return "reused"
        outcome = "replaced"
    else:
        outcome = "uploaded"
    write_bytes(fs, path, data)
    return outcome


@dataclass(frozen=True)
class Bundle:
    runtime_env: dict[str, Any]
    size: int
    uploaded_to: str | None = None
    """The storage URI of the zipped spec folder, when it was too big to go inline."""
    skipped: tuple[str, ...] = ()
    """Entries of the spec's folder that were not sent (see `scan`)."""
    note: str | None = None
    """Something the user should hear about the bundle (a stored one that was replaced)."""
    staged: Path | None = None
    """The filtered copy that goes inline, removed by `close` (or leaving a `with` block)."""

    def close(self) -> None:
        if self.staged is not None:
            shutil.rmtree(self.staged, ignore_errors=True)

    def __enter__(self) -> Bundle:
        return self

    def __exit__(self, *_) -> None:
        self.close()


def package_dir() -> Path:

    return Path(rayfleet.__file__).resolve().parent


def check_inside(spec_dir: Path, referenced: Path, what: str) -> None:
    """Files the spec names must travel with it: inside its folder."""
    if not referenced.resolve().is_relative_to(spec_dir.resolve()):
        raise SpecError(
            f"{what} {referenced} is outside the spec's folder {spec_dir}, which is all that "
            "is sent to the cluster; move it next to the spec"
        )


def check_required(spec_dir: Path, required: Sequence[Path], found: Scan | None = None) -> None:
    """A file the job needs (the spec itself) that the filter drops is an error here, not a
    missing file on the cluster."""
    spec_dir = Path(os.path.abspath(spec_dir))
    found = found or scan(spec_dir)
    sent = {p.relative_to(spec_dir) for p in found.files}
    for path in required:
        rel = Path(os.path.abspath(path)).relative_to(spec_dir)
        if rel not in sent:
            raise SpecError(
                f"{path} would not be sent to the cluster: rayfleet sends no symlink, dotfile "
                "or credential-like name (or what .gitignore/.rayignore leave out); rename it "
                "or copy it into place"
            )


def build(
    spec_dir: Path,
    storage: StorageURI,
    env_vars: dict[str, str],
    *,
    required: Sequence[Path] = (),
) -> Bundle:
    """The runtime_env for a job whose spec lives in `spec_dir` (see the module docstring).
    Use it as a context manager: an inline filtered copy lives until the block ends."""
    spec_dir = Path(os.path.abspath(spec_dir))
    found = scan(spec_dir)
    check_required(spec_dir, required, found)
    size = sum(p.lstat().st_size for p in found.files)
    env: dict[str, Any] = {
        "py_modules": [str(package_dir())],
        "excludes": list(EXCLUDES),
        "env_vars": env_vars,
    }
    if size <= inline_limit():
        if not found.skipped:
            return Bundle({"working_dir": str(spec_dir), **env}, size)
        staged = _stage(spec_dir, found)
        return Bundle(
            {"working_dir": str(staged), **env}, size, skipped=found.skipped, staged=staged
        )
    if not storage.is_s3:
        raise StorageError(
            f"{spec_dir} holds {size / 1e6:.0f} MB, too much to send through the head node, "
            f"and storage {storage} is not S3 the cluster could fetch it from; trim the "
            "folder (data belongs in storage) or use s3:// storage"
        )
    data = zip_folder(spec_dir, found)
    target = storage.join("bundles", f"{hashlib.sha256(data).hexdigest()[:32]}.zip")
    try:
        outcome = publish(filesystem_for(target), target.fs_path, data)
    except OSError as exc:
        raise StorageError(
            f"{target}: cannot write the job's bundle ({str(exc)[:200]}); check write access "
            "to the storage prefix"
        ) from None
    note = (
        f"{target} held other bytes than its name promises (replaced by someone?): uploaded "
        "this folder's bundle again"
        if outcome == "replaced"
        else None
    )
    return Bundle(
        {"working_dir": str(target), **env},
        size,
        uploaded_to=str(target),
        skipped=found.skipped,
        note=note,
    )
