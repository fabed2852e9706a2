"""What leaves this machine with a submitted job: never a symlink's target, a dotfile or a
credential-like file, whichever way the folder travels (inline through Ray's own packer, or
as a zip in storage), and a stored bundle is reused only when its bytes match its name."""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from rayfleet.errors import SpecError
from rayfleet.jobs import bundle
from rayfleet.storage.uri import parse_uri

pytestmark = pytest.mark.unit
SECRET = b"AKIA-do-not-ship-me"
KEPT = ["train.yaml", "pkg/loop.py", "pkg/data/labels.txt"]
# What the filter must skip and name (relative paths; folders once, with a slash).
SKIPPED = [
    ".env",
    ".env.prod",
    ".netrc",
    "server.pem",
    "tls.key",
    "cert.p12",
    "cert.pfx",
    "id_rsa",
    "id_ed25519.pub",
    "credentials.json",
    ".aws/",
    ".ssh/",
    ".git/",
    "pkg/.env",
    "pkg/data/api.KEY",
    "outside-file",
    "outside-dir",
    "inside-link",
]


def _folder(tmp_path: Path) -> Path:
    """A spec folder with everything a real one accumulates next to the spec."""
    root = tmp_path / "spec"
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "secret.txt").write_bytes(SECRET)
    (outside / "dir/more.txt").write_bytes(SECRET)
    (root / "pkg/data").mkdir(parents=True)
    (root / "train.yaml").write_text("kind: TrainJob\n")
    (root / "pkg/loop.py").write_text("x = 1\n")
    (root / "pkg/data/labels.txt").write_text("a\nb\n")
    for name in SKIPPED:
        if name.endswith("/"):
            (root / name).mkdir()
            (root / name / "credentials").write_bytes(SECRET)
        elif not name.startswith(("outside", "inside")):
            (root / name).write_bytes(SECRET)
    (root / "outside-file").symlink_to(outside / "secret.txt")
    (root / "outside-dir").symlink_to(outside / "dir", target_is_directory=True)
    (root / "inside-link").symlink_to(root / "train.yaml")
    (root / "__pycache__").mkdir()
    (root / "__pycache__/loop.cpython-311.pyc").write_bytes(b"\0")
    return root


def _ray_packs(runtime_env: dict, scratch: Path) -> list[str]:
    """The files Ray's own packer puts in the package for this runtime_env's working_dir
    (the code `JobSubmissionClient.submit_job` runs on an inline working_dir)."""
    from ray._private import ray_constants
    from ray._private.runtime_env.packaging import _zip_files

    out = scratch / f"ray-{os.getpid()}.zip"
    excludes = ray_constants.get_runtime_env_default_excludes() + runtime_env["excludes"]
    try:
        _zip_files(runtime_env["working_dir"], excludes, str(out), include_gitignore=True)
        with zipfile.ZipFile(out) as archive:
            names = sorted(n for n in archive.namelist() if not n.endswith("/"))
            assert all(SECRET not in archive.read(n) for n in names), names
            return names
    finally:
        out.unlink(missing_ok=True)


def _zip_names(data: bytes) -> list[str]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert all(SECRET not in archive.read(n) for n in archive.namelist())
        return sorted(n.removeprefix("bundle/") for n in archive.namelist())


@pytest.mark.security
def test_scan_skips_and_names_symlinks_dotfiles_and_credentials(tmp_path):
    root = _folder(tmp_path)
    found = bundle.scan(root)
    assert sorted(p.relative_to(root).as_posix() for p in found.files) == sorted(KEPT)
    assert sorted(found.skipped) == sorted(SKIPPED)
    assert [p.relative_to(root).as_posix() for p in bundle.files(root)] == [
        p.relative_to(root).as_posix() for p in found.files
    ]


@pytest.mark.security
def test_the_s3_zip_holds_only_the_filtered_files(tmp_path):
    assert _zip_names(bundle.zip_folder(_folder(tmp_path))) == sorted(KEPT)


@pytest.mark.security
def test_inline_working_dir_as_ray_packs_it_holds_only_the_filtered_files(tmp_path):
    root = _folder(tmp_path)
    with bundle.build(root, parse_uri(str(tmp_path / "store")), {"A": "1"}) as sent:
        assert _ray_packs(sent.runtime_env, tmp_path) == sorted(KEPT)
        assert sorted(sent.skipped) == sorted(SKIPPED)
        assert sent.runtime_env["env_vars"] == {"A": "1"} and sent.uploaded_to is None
        staged = Path(sent.runtime_env["working_dir"])
        assert staged != root and not any(p.is_symlink() for p in staged.rglob("*"))
    assert not staged.exists()  # the filtered copy lives only as long as the submission
    assert os.path.islink(root / "outside-file") and (root / ".env").exists()  # untouched


def test_a_clean_folder_goes_inline_as_it_is(tmp_path):
    root = tmp_path / "spec"
    (root / "pkg").mkdir(parents=True)
    (root / "train.yaml").write_text("kind: TrainJob\n")
    (root / "pkg/loop.py").write_text("x = 1\n")
    with bundle.build(root, parse_uri(str(tmp_path / "store")), {}) as sent:
        assert sent.runtime_env["working_dir"] == str(root) and sent.skipped == ()
        assert _ray_packs(sent.runtime_env, tmp_path) == ["pkg/loop.py", "train.yaml"]


def test_ignore_files_are_honoured_as_ray_honours_them(tmp_path):
    """A folder's .gitignore / .rayignore keep applying once rayfleet packs the folder."""
    root = tmp_path / "spec"
    (root / "outputs").mkdir(parents=True)
    (root / "sub/cache").mkdir(parents=True)
    (root / ".gitignore").write_text("outputs/\n*.ckpt\n!keep.ckpt\n")
    (root / "sub/.rayignore").write_text("cache\n")
    for name in ("train.yaml", "outputs/x.bin", "a.ckpt", "keep.ckpt", "sub/m.py", "sub/cache/c"):
        (root / name).write_text(name)
    ray_env = {"working_dir": str(root), "excludes": list(bundle.EXCLUDES)}
    ray_view = [n for n in _ray_packs(ray_env, tmp_path) if not Path(n).name.startswith(".")]
    ours = sorted(p.relative_to(root).as_posix() for p in bundle.files(root))
    assert ours == ray_view == ["keep.ckpt", "sub/m.py", "train.yaml"]
    assert sorted(bundle.scan(root).skipped) == [".gitignore", "sub/.rayignore"]


def test_the_rayfleet_package_travels_whole_under_the_same_excludes(tmp_path):
    """Ray applies runtime_env `excludes` to py_modules too: none may cut our own package."""
    package = bundle.package_dir()
    assert bundle.scan(package).skipped == ()
    with bundle.build(package, parse_uri(str(tmp_path / "store")), {}) as sent:
        packed = _ray_packs({**sent.runtime_env, "working_dir": str(package)}, tmp_path)
    assert packed == sorted(p.relative_to(package).as_posix() for p in bundle.files(package))
    assert "jobs/bundle.py" in packed


@pytest.mark.security
def test_a_spec_the_filter_would_drop_is_refused(tmp_path):
    root = tmp_path / "spec"
    root.mkdir()
    (root / ".train.yaml").write_text("kind: TrainJob\n")
    with pytest.raises(SpecError, match=r"\.train\.yaml would not be sent"):
        bundle.build(root, parse_uri(str(tmp_path / "store")), {}, required=[root / ".train.yaml"])


@pytest.mark.security
def test_a_stored_bundle_is_reused_only_when_its_bytes_match_its_name(tmp_path):
    fs = pafs.LocalFileSystem()
    data = bundle.zip_folder(_folder(tmp_path))
    path = str(tmp_path / "store/bundles" / f"{hashlib.sha256(data).hexdigest()[:32]}.zip")
    assert bundle.publish(fs, path, data) == "uploaded"
    assert bundle.publish(fs, path, data) == "reused"
    Path(path).write_bytes(b"PK planted by someone else")
    assert bundle.publish(fs, path, data) == "replaced"
    assert Path(path).read_bytes() == data
