import pyarrow.fs as pafs
import pytest

from rayfleet.errors import CheckpointError, StorageError
from rayfleet.storage.checkpoints import (
    MANIFEST,
    checkpoint_dir_name,
    download_verified,
    newest_verified,
    prune,
    verify,
    write_manifest,
)
from rayfleet.storage.uri import parse_uri

pytestmark = pytest.mark.unit
LOCAL = pafs.LocalFileSystem()


@pytest.mark.parametrize(
    "raw, scheme, bucket, fs_path, text",
    [
        ("s3://bucket/a/b/", "s3", "bucket", "bucket/a/b", "s3://bucket/a/b"),
        ("s3://my.bucket-1", "s3", "my.bucket-1", "my.bucket-1", "s3://my.bucket-1"),
        ("file:///tmp/x/../y", "file", "", "/tmp/y", "/tmp/y"),
        ("/data/store", "file", "", "/data/store", "/data/store"),
    ],
)
def test_parse_uri(raw, scheme, bucket, fs_path, text):
    uri = parse_uri(raw)
    assert (uri.scheme, uri.bucket, uri.fs_path, str(uri)) == (scheme, bucket, fs_path, text)


def test_relative_paths_and_join(tmp_path):
    assert parse_uri("store", base_dir=tmp_path).fs_path == str(tmp_path / "store")
    uri = parse_uri("s3://bkt")
    assert str(uri.join("runs", "x/")) == "s3://bkt/runs/x"
    with pytest.raises(StorageError, match="'..'"):
        uri.join("../escape")


@pytest.mark.parametrize("raw", ["", "s3://ab", "s3://UPPER/x", "hdfs://x/y", "s3://b/../x"])
def test_bad_uris(raw):
    with pytest.raises(StorageError):
        parse_uri(raw)


def _checkpoint(root, epoch, token="00aa", payload=b"weights" * 1000):
    folder = root / checkpoint_dir_name(epoch, token)
    (folder / "sub").mkdir(parents=True)
    (folder / "state.pt").write_bytes(payload)
    (folder / "sub" / "extra.json").write_text("{}")
    write_manifest(folder, {"epoch": epoch})
    return folder


def test_manifest_roundtrip(tmp_path):
    folder = _checkpoint(tmp_path, 3)
    result = verify(LOCAL, str(folder))
    assert result.ok, result.reason
    assert {f["path"] for f in result.manifest["files"]} == {"state.pt", "sub/extra.json"}
    assert result.manifest["meta"] == {"epoch": 3}


def test_truncated_altered_missing_detected(tmp_path):
    folder = _checkpoint(tmp_path, 1)
    with open(folder / "state.pt", "r+b") as f:
        f.truncate(10)
    assert verify(LOCAL, str(folder)).reason == "state.pt has 10 bytes, manifest says 7000"

    folder = _checkpoint(tmp_path, 2)
    data = bytearray((folder / "state.pt").read_bytes())
    data[100] ^= 0xFF  # same size, one flipped byte
    (folder / "state.pt").write_bytes(bytes(data))
    assert verify(LOCAL, str(folder)).reason == "state.pt sha256 does not match manifest"

    folder = _checkpoint(tmp_path, 4)
    (folder / "sub" / "extra.json").unlink()
    assert verify(LOCAL, str(folder)).reason == "sub/extra.json is missing"

    folder = _checkpoint(tmp_path, 5)
    (folder / MANIFEST).unlink()
    assert "no manifest" in verify(LOCAL, str(folder)).reason


def test_newest_verified_skips_and_says_why(tmp_path):
    _checkpoint(tmp_path, 1)
    _checkpoint(tmp_path, 2)
    bad = _checkpoint(tmp_path, 3)
    (bad / "state.pt").write_bytes(b"short")
    (tmp_path / "checkpoint_e000004-00ab").mkdir()  # an upload that never finished
    (tmp_path / "not-a-checkpoint").mkdir()
    ref, skipped = newest_verified(LOCAL, str(tmp_path))
    assert ref.epoch == 2 and ref.meta == {"epoch": 2}
    assert [s.name for s in skipped] == ["checkpoint_e000004-00ab", "checkpoint_e000003-00aa"]
    assert "manifest says 7000" in str(skipped[1])


def test_same_epoch_newer_token_wins(tmp_path):
    _checkpoint(tmp_path, 2, token="0001")
    _checkpoint(tmp_path, 2, token="0002")
    ref, _ = newest_verified(LOCAL, str(tmp_path))
    assert ref.name == "checkpoint_e000002-0002"


def test_prune_keeps_newest_verified_and_clears_torn_ones(tmp_path):
    """A torn checkpoint (here: its manifest never written, as when a node dies mid-write)
    goes even where it is newer than the kept ones: the run resumed past it."""
    for epoch in range(5):
        _checkpoint(tmp_path, epoch)
    bad = _checkpoint(tmp_path, 5)
    (bad / MANIFEST).unlink()
    deleted = prune(LOCAL, str(tmp_path), keep=2)
    assert [(d.name, d.reason) for d in deleted] == [
        (
            checkpoint_dir_name(5, "00aa"),
            "does not verify: no manifest (incomplete or interrupted write)",
        ),
        *[(checkpoint_dir_name(e, "00aa"), "older than the 2 kept") for e in (2, 1, 0)],
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        checkpoint_dir_name(e, "00aa") for e in (3, 4)
    ]


def test_download_verifies_local_copy(tmp_path):
    folder = _checkpoint(tmp_path / "store", 1)
    manifest = download_verified(LOCAL, str(folder), tmp_path / "copy")
    assert manifest["meta"]["epoch"] == 1
    (folder / "state.pt").write_bytes(b"x" * 7000)  # same size, different bytes
    with pytest.raises(CheckpointError, match="sha256 does not match"):
        download_verified(LOCAL, str(folder), tmp_path / "copy2")


def test_local_preflight(tmp_path):
    from rayfleet.storage.preflight import preflight

    preflight(parse_uri(str(tmp_path / "new" / "store")))
    assert (tmp_path / "new" / "store").is_dir()
    assert list((tmp_path / "new" / "store").iterdir()) == []  # probe deleted
