"""`rayfleet data import SOURCE DEST`: tables, text and image folders become the dataset
contract (dataset.json + train/val Parquet), split stratified and deterministically; bad input
fails in one line with exit 2 and leaves nothing at DEST."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from rayfleet.cli.main import app
from rayfleet.data.layout import check_files, read_info
from rayfleet.data.shards import read_shard
from rayfleet.data.split import StratifiedSplit
from rayfleet.storage.uri import parse_uri

pytestmark = pytest.mark.unit
LOCAL = pafs.LocalFileSystem()


def run(*args: str):
    return CliRunner().invoke(app, ["data", "import", *map(str, args)])


def imported(*args: str) -> dict:
    result = run(*args, "-o", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def load(dest, split="train"):
    uri = parse_uri(str(dest))
    info = read_info(LOCAL, uri)
    check_files(LOCAL, uri, info)
    return info, read_shard(LOCAL, uri, split, 0, 1, info.feature_shape, equal=False)


def frame(n=600, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    species = rng.choice(["setosa", "virginica", "versicolor"], n, p=[0.5, 0.3, 0.2])
    return pd.DataFrame(
        {
            "petal": rng.normal(3.0, 2.0, n),
            "count": rng.integers(0, 9, n),
            "species": species,
            "klass": rng.integers(0, 12, n),  # 12 integer classes: 10 sorts after 9
        }
    )


@pytest.fixture(scope="module")
def csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("src") / "flowers.csv"
    frame().to_csv(path, index=False)
    return path


def test_csv_with_string_labels(csv, tmp_path):
    doc = imported(csv, tmp_path / "ds", "--label", "species", "--features", "petal,count")
    assert doc == {"uri": str(tmp_path / "ds"), "kind": "table", "rows": doc["rows"],
                   "numClasses": 3}  # fmt: skip
    info, train = load(tmp_path / "ds")
    assert info.kind == "table" and info.feature_shape == [2] and info.feature_dtype == "float32"
    assert info.class_names == ["setosa", "versicolor", "virginica"]  # sorted
    assert info.feature_names == ["petal", "count"]
    assert info.rows["train"] + info.rows["val"] == 600
    df = frame()
    # Every source row lands in exactly one split, with its label mapped by sorted name.
    _, val = load(tmp_path / "ds", "val")
    got = sorted(map(tuple, np.concatenate([train.features, val.features]).tolist()))
    assert got == sorted(map(tuple, df[["petal", "count"]].to_numpy(np.float32).tolist()))
    species = dict(zip(df["petal"].astype(np.float32).tolist(), df["species"], strict=True))
    names = np.array(info.class_names)[train.labels]
    assert [species[v] for v in train.features[:, 0].tolist()] == names.tolist()
    # Normalization is the train split's, per feature.
    assert np.allclose(info.normalization.mean, train.features.mean(axis=0), atol=1e-4)
    assert np.allclose(info.normalization.std, train.features.std(axis=0), atol=1e-4)


def test_integer_labels_sort_numerically_and_default_features(csv, tmp_path):
    src = tmp_path / "num.csv"
    pd.read_csv(csv).drop(columns=["species"]).to_csv(src, index=False)
    doc = imported(src, tmp_path / "ds", "--label", "klass", "--name", "numbers")
    assert doc["numClasses"] == 12
    info, train = load(tmp_path / "ds")
    assert info.name == "numbers" and info.feature_names == ["petal", "count"]
    assert info.class_names == [str(i) for i in range(12)]
    assert train.labels.min() == 0 and train.labels.max() == 11


def test_split_is_stratified_and_deterministic(csv, tmp_path):
    args = ("--label", "species", "--features", "petal", "--shards", "3")
    imported(csv, tmp_path / "a", *args)
    imported(csv, tmp_path / "b", *args)
    imported(csv, tmp_path / "c", *args, "--seed", "1")
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.parquet"))
    assert len([f for f in files if f.parts[0] == "train"]) == 3
    for f in files:  # same input + seed -> the same shards
        assert pq.read_table(tmp_path / "a" / f).equals(pq.read_table(tmp_path / "b" / f))
    _, a = load(tmp_path / "a", "val")
    _, c = load(tmp_path / "c", "val")
    assert not np.array_equal(a.features, c.features)  # another seed, other rows
    counts = frame()["species"].value_counts()
    for i, name in enumerate(sorted(counts.index)):  # each class: round(n * 0.2) val rows
        assert (a.labels == i).sum() == int(np.floor(counts[name] * 0.2 + 0.5))


def test_streaming_split_is_exact_across_blocks_and_batches():
    labels = np.repeat([0, 1, 2], [9000, 4100, 7])
    np.random.default_rng(0).shuffle(labels)
    counts = {0: 9000, 1: 4100, 2: 7}
    whole = StratifiedSplit(counts, 0.25, 3).assign(labels)
    split = StratifiedSplit(counts, 0.25, 3)
    pieces = np.concatenate([split.assign(c) for c in np.array_split(labels, 7)])
    assert np.array_equal(whole, pieces)  # batch boundaries change nothing
    assert [int(whole[labels == k].sum()) for k in range(3)] == [2250, 1025, 2]


def test_parquet_folder(tmp_path):
    src = tmp_path / "parts"
    src.mkdir()
    df = frame(900)
    for i in range(3):
        df.iloc[i * 300 : (i + 1) * 300].to_parquet(src / f"p{i}.parquet")
    doc = imported(src, tmp_path / "ds", "--label", "species", "--features", "count,petal")
    assert doc["rows"] == {"train": 720, "val": 180}
    info, _ = load(tmp_path / "ds")
    assert info.feature_names == ["count", "petal"] and info.name == "parts"


def test_text_vocab_padding_truncation(tmp_path):
    texts = ["Good movie!", "bad, BAD movie", "it's good good", "meh"] * 30
    labels = ["pos", "neg", "pos", "neg"] * 30
    src = tmp_path / "reviews.csv"
    pd.DataFrame({"review": texts, "mood": labels, "n": range(120)}).to_csv(src, index=False)
    doc = imported(src, tmp_path / "ds", "--label", "mood", "--text", "review",
                   "--max-length", "2", "--vocab-size", "5")  # fmt: skip
    assert doc["kind"] == "text"
    info, train = load(tmp_path / "ds")
    assert info.feature_dtype == "int64" and info.feature_shape == [2]
    assert info.tokenizer == "lower-words-v1"
    # train counts: good 3x, bad 2x, movie 2x, it's 1x, meh 1x per 4 rows; ties alphabetical
    assert info.vocab == ["<pad>", "<unk>", "good", "bad", "movie"]
    assert train.features.dtype == np.int64
    rows = {tuple(r) for r in train.features.tolist()}
    # "good movie" -> [2, 4]; "bad bad movie" truncated -> [3, 3]; "it's good good" -> unk;
    # "meh" -> [unk, pad]
    assert rows == {(2, 4), (3, 3), (1, 2), (1, 0)}


def _digit_folder(root, rgb=False):
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (image, target) in enumerate(zip(digits.images[:300], digits.target[:300],
                                            strict=True)):  # fmt: skip
        folder = root / f"digit-{target}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (image * 255 / 16).astype(np.uint8)
        img = Image.fromarray(pixels, "L")
        if rgb:
            img = Image.merge("RGB", (img, img.point(lambda v: 255 - v), img))
        img.save(folder / f"{i:04d}.png")
    return digits


def test_image_folder_grey(tmp_path):
    digits = _digit_folder(tmp_path / "imgs")
    doc = imported(tmp_path / "imgs", tmp_path / "ds")
    assert doc["kind"] == "image" and doc["numClasses"] == 10
    info, train = load(tmp_path / "ds")
    assert info.feature_shape == [1, 8, 8] and info.class_names[0] == "digit-0"
    assert train.features.shape[1:] == (1, 8, 8) and 0 <= train.features.min()
    assert train.features.max() <= 1
    assert len(info.normalization.mean) == 1
    assert abs(info.normalization.mean[0] - train.features.mean()) < 1e-4
    # Pixels are the source's, scaled to [0, 1].
    want = {((im * 255 / 16).astype(np.uint8) / 255).round(3).tobytes() for im in digits.images}
    assert all(f[0].round(3).tobytes() in want for f in train.features[:20].astype(np.float64))


def test_image_folder_rgb_resized(tmp_path):
    _digit_folder(tmp_path / "imgs", rgb=True)
    imported(tmp_path / "imgs", tmp_path / "ds", "--size", "4x6")
    info, train = load(tmp_path / "ds")
    assert info.feature_shape == [3, 4, 6] and train.features.shape[1:] == (3, 4, 6)
    assert len(info.normalization.mean) == 3
    assert info.normalization.mean[1] > info.normalization.mean[0]  # the inverted channel


def test_overwrite_replaces_a_dataset_only_when_asked(csv, tmp_path):
    imported(csv, tmp_path / "ds", "--label", "species", "--features", "petal")
    refused = run(csv, tmp_path / "ds", "--label", "klass", "--features", "petal")
    assert refused.exit_code == 2 and "--overwrite" in refused.output
    imported(csv, tmp_path / "ds", "--label", "klass", "--features", "petal", "--overwrite")
    assert read_info(LOCAL, parse_uri(str(tmp_path / "ds"))).num_classes == 12
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == ["dataset.json", "train", "val"]


@pytest.mark.security
@pytest.mark.parametrize(
    ("case", "args", "message"),
    [
        ("no-label-column", ["--label", "nope"], "columns: petal, count, species, klass"),
        ("no-label-option", [], "needs --label"),
        ("text-columns", ["--label", "klass"], "species are not numeric"),
        ("one-class", ["--label", "one"], "at least 2 classes"),
        ("empty-val", ["--label", "rare"], "val split would be empty"),
        ("missing-source", ["--label", "klass"], "does not exist"),
        ("bad-image", [], "broken.png: not a readable image"),
        ("one-image-class", [], "at least 2 class sub-folders"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(csv, tmp_path, case, args, message):
    """Nothing half-written: DEST (new) is not created; an existing dataset is untouched."""
    df = pd.read_csv(csv)
    src = tmp_path / "src.csv"
    if case == "one-class":
        df.assign(one="x").to_csv(src, index=False)
    elif case == "empty-val":
        df.head(4).assign(rare=["a", "b", "c", "d"]).to_csv(src, index=False)
    elif case == "missing-source":
        src = tmp_path / "nothing-here.csv"
    elif case in ("bad-image", "one-image-class"):
        src = tmp_path / "imgs"
        for k in range(2 if case == "bad-image" else 1):
            (src / f"c{k}").mkdir(parents=True)
            for i in range(3):
                Image.new("L", (4, 4), i * 40).save(src / f"c{k}" / f"{i}.png")
        if case == "bad-image":
            (src / "c1" / "broken.png").write_bytes(b"\x89PNG not really")
    else:
        df.to_csv(src, index=False)
    if case in ("one-class", "empty-val"):
        args = [*args, "--features", "petal"]
    result = run(src, tmp_path / "new", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "new").exists()
    # The same failure against an existing dataset leaves it as it was.
    imported(csv, tmp_path / "old", "--label", "species", "--features", "petal")
    before = {p: p.read_bytes() for p in (tmp_path / "old").rglob("*") if p.is_file()}
    assert run(src, tmp_path / "old", *args, "--overwrite").exit_code == 2
    after = {p: p.read_bytes() for p in (tmp_path / "old").rglob("*") if p.is_file()}
    assert after == before


def test_foreign_files_at_dest_are_never_deleted(csv, tmp_path):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "notes.txt").write_text("mine")
    result = run(csv, tmp_path / "ds", "--label", "species", "--features", "petal")
    assert result.exit_code == 2 and "notes.txt" in result.output
    assert (tmp_path / "ds" / "notes.txt").read_text() == "mine"


def test_digits_source_still_works(tmp_path):
    doc = imported("digits", tmp_path / "digits")
    assert doc["rows"] == {"train": 1437, "val": 360} and doc["kind"] == "image"


def test_s3_csv_to_s3_dataset(s3, csv):
    """Source and destination in (loopback) S3, through the same pyarrow filesystems."""
    from rayfleet.storage.filesystem import filesystem_for, write_bytes

    src = parse_uri("s3://rayfleet-test/sources/flowers.csv")
    fs = filesystem_for(src)
    write_bytes(fs, src.fs_path, csv.read_bytes())
    dest = parse_uri("s3://rayfleet-test/datasets/flowers")
    doc = imported(str(src), str(dest), "--label", "species", "--features", "petal,count")
    assert doc["rows"] == {"train": 480, "val": 120}
    info = read_info(fs, dest)
    check_files(fs, dest, info)
    listing = fs.get_file_info(pafs.FileSelector(dest.fs_path, recursive=True))
    assert not [i.path for i in listing if ".import-" in i.path]  # staging moved away
    shard = read_shard(fs, dest, "val", 0, 1, info.feature_shape, equal=False)
    assert len(shard) == 120


def _s3_files(fs, uri) -> dict[str, bytes]:
    infos = fs.get_file_info(pafs.FileSelector(uri.fs_path, recursive=True))
    return {
        i.path: fs.open_input_file(i.path).read() for i in infos if i.type == pafs.FileType.File
    }


def test_image_folder_to_s3_and_overwrite_there_only_when_asked(s3, csv, tmp_path):
    """An image folder imported straight into (loopback) S3; a second import over it is
    refused without --overwrite, a failing --overwrite leaves it byte for byte, and a good
    one replaces it with nothing staged left behind."""
    from rayfleet.storage.filesystem import filesystem_for

    _digit_folder(tmp_path / "imgs")
    dest = parse_uri("s3://rayfleet-test/datasets/digit-images")
    fs = filesystem_for(dest)
    doc = imported(tmp_path / "imgs", str(dest))
    assert doc["kind"] == "image" and doc["numClasses"] == 10
    info = read_info(fs, dest)
    check_files(fs, dest, info)
    assert info.feature_shape == [1, 8, 8]
    before = _s3_files(fs, dest)

    refused = run(csv, str(dest), "--label", "species", "--features", "petal")
    assert refused.exit_code == 2 and "--overwrite" in refused.output, refused.output
    failed = run(csv, str(dest), "--label", "nope", "--overwrite")
    assert failed.exit_code == 2 and "nope" in failed.output, failed.output
    assert _s3_files(fs, dest) == before

    imported(csv, str(dest), "--label", "species", "--features", "petal", "--overwrite")
    replaced = read_info(fs, dest)
    assert replaced.kind == "table" and replaced.num_classes == 3
    check_files(fs, dest, replaced)
    assert not [p for p in _s3_files(fs, dest) if ".import-" in p]  # staging moved away
    names = {p.rsplit("/", 1)[-1] for p in _s3_files(fs, dest)}
    assert not any(n.endswith(".png") for n in names)


@pytest.mark.security
def test_a_bad_value_deep_in_a_large_csv_fails_after_streaming_and_cleans_up(tmp_path):
    """Column types come from the first block; a bad cell megabytes later fails mid-write,
    in one line, and the staged parts are removed."""
    df = frame(40_000)
    df["petal"] = df["petal"].astype(object)
    df.loc[39_000, "petal"] = "oops"
    src = tmp_path / "big.csv"
    df.to_csv(src, index=False)
    assert src.stat().st_size > 1 << 20  # more than one CSV block
    result = run(src, tmp_path / "ds", "--label", "species", "--features", "petal,count")
    assert result.exit_code == 2 and "oops" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "ds").exists()


def test_reading_stays_a_few_batches_ahead_of_a_slow_writer():
    """Batches are parsed on a background thread at most READ_AHEAD ahead of the caller, so
    memory does not depend on how much faster reading is than writing; order is kept, a
    reader error arrives after the batches before it, and stopping early stops the reader."""
    import threading
    import time

    from rayfleet.data.tables import READ_AHEAD, _read_ahead

    produced = []

    def source(n, fail_at=None):
        try:
            for i in range(n):
                if i == fail_at:
                    raise OSError("disk went away")
                produced.append(i)
                yield i
        finally:
            produced.append("closed")

    seen, lead = [], 0
    for item in _read_ahead(source(40), READ_AHEAD):
        time.sleep(0.002)  # a writer slower than the reader
        seen.append(item)
        lead = max(lead, len(produced) - len(seen))
    assert seen == list(range(40)) and produced[-1] == "closed"
    assert lead <= READ_AHEAD + 1  # the queue, plus the batch the reader holds

    produced.clear()
    got = []
    with pytest.raises(OSError, match="disk went away"):
        for item in _read_ahead(source(10, fail_at=6), READ_AHEAD):
            got.append(item)
    assert got == list(range(6))

    produced.clear()
    batches = _read_ahead(source(1000), READ_AHEAD)
    assert next(batches) == 0
    batches.close()  # the caller stopped (a bad row): the reader stops and closes its file
    assert produced[-1] == "closed" and len(produced) <= READ_AHEAD + 3
    assert not [t for t in threading.enumerate() if t.name == "rayfleet-read-ahead"]


def test_a_csv_folder_reads_like_one_file_and_names_a_broken_part(tmp_path):
    """Parts are read in name order with the first part's column types: the same rows in
    one file or in three give the same dataset. A broken part is named in the error."""
    df = frame(900)
    df.to_csv(tmp_path / "whole.csv", index=False)
    (tmp_path / "parts").mkdir()
    for i in range(3):
        df.iloc[i * 300 : (i + 1) * 300].to_csv(tmp_path / "parts" / f"p{i}.csv", index=False)
    imported(tmp_path / "whole.csv", tmp_path / "one", "--label", "species")
    imported(tmp_path / "parts", tmp_path / "three", "--label", "species")
    for split in ("train", "val"):
        one = pq.read_table(tmp_path / "one" / split)
        three = pq.read_table(tmp_path / "three" / split)
        assert one.equals(three), split
    one, three = (read_info(LOCAL, parse_uri(str(tmp_path / d))) for d in ("one", "three"))
    for key in ("mean", "std"):  # the same up to float rounding (other batch boundaries)
        assert np.allclose(getattr(one.normalization, key), getattr(three.normalization, key))

    (tmp_path / "parts" / "p3.csv").write_text("")
    result = run(tmp_path / "parts", tmp_path / "ds", "--label", "species")
    assert result.exit_code == 2 and "p3.csv: Empty CSV file" in result.output, result.output
    assert not (tmp_path / "ds").exists()


def test_a_parquet_part_missing_a_feature_column_fails_in_one_line(tmp_path):
    """Every part is read with the first part's schema: a column a later part lacks reads as
    empty values, which the import refuses (as for a CSV with empty cells)."""
    src = tmp_path / "parts"
    src.mkdir()
    df = frame(600)
    df.iloc[:300].to_parquet(src / "p0.parquet")
    df.iloc[300:].drop(columns=["petal"]).to_parquet(src / "p1.parquet")
    result = run(src, tmp_path / "ds", "--label", "species", "--features", "petal,count")
    assert result.exit_code == 2 and "'petal' has empty values" in result.output, result.output
    assert not (tmp_path / "ds").exists()
