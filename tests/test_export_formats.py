"""WebDataset shards and Hugging Face Parquet beside the Kohya layout: sizes, completeness,
determinism, loading with ``datasets``, atomic writes and verification."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

import stage_helpers as H
from trainset import export_formats as F
from trainset import manifest, schemas

# item id -> (split, export path, sample photo, format, mode)
ITEMS = {
    "art:2_portraits/astro.png": ("train", "kohya/2_portraits/astro_aaaa.png", "astronaut.png", "PNG", "RGB"),
    "art:2_portraits/cat.v2.jpg": ("train", "kohya/2_portraits/cat.v2_bbbb.jpg", "chelsea.png", "JPEG", "RGB"),
    "art:gray.png": ("train", "kohya/1_art/gray_cccc.png", "camera.png", "PNG", "L"),
    "art:coins.png": ("train", "kohya/1_art/coins_dddd.png", "coins.png", "PNG", "RGB"),
    "art:a.b.png": ("train", "kohya/1_art/a.b_eeee.png", "brick.png", "PNG", "RGB"),
    "art:a_b.png": ("train", "kohya/1_art/a_b_ffff.png", "grass.png", "PNG", "RGB"),
    "gen:x.jpg": ("train", "kohya/1_gen/x_0000.jpg", "hubble_deep_field.jpg", "JPEG", "RGB"),
    "gen:y.png": ("val", "val/gen/y_1111.png", "motorcycle_left.png", "PNG", "RGBA"),
    "art:coffee.jpg": ("val", "val/art/coffee_2222.jpg", "coffee.png", "JPEG", "RGB"),
    "gen:z.png": ("test", "test/gen/z_3333.png", "rocket.jpg", "PNG", "RGB"),
}
SIZE = (96, 64)


def _image(photo: str, fmt: str, mode: str) -> bytes:
    im = H.sample(photo, SIZE).convert(mode)
    return H.encode(im, fmt, **({"quality": 90} if fmt == "JPEG" else {}))


def _row(item_id: str, split: str, export_path: str, data: bytes, fmt: str, n: int) -> dict:
    sha = hashlib.sha256(data).hexdigest()
    return {
        "item_id": item_id, "sha256": sha, "source": item_id.split(":")[0], "license": "CC0-1.0",
        "split": split, "subset": Path(export_path).parts[1].split("_", 1)[-1], "repeats": 1,
        "export_path": export_path, "export_sha256": sha, "export_format": fmt, "conversion": None,
        "caption": f"caption {n}, é", "width": SIZE[0], "height": SIZE[1], "rating": "general",
        "tags": [f"tag_{n}", "blue_sky"], "generated": item_id.startswith("gen:"), "cluster_id": sha[:16],
        "nsfw_flag": False, "flags": [], "schema_version": schemas.SCHEMA_VERSION,
    }


def _build(root: Path) -> tuple[Path, pd.DataFrame]:
    """An export folder: real image files, their captions and a schema-valid manifest."""
    export_dir = root / "export"
    rows = []
    for n, (item_id, (split, rel, photo, fmt, mode)) in enumerate(ITEMS.items()):
        data = _image(photo, fmt, mode)
        H.write_bytes(export_dir / rel, data)
        rows.append(_row(item_id, split, rel, data, fmt, n))
    manifest.write(H.frame(rows, schemas.EXPORT), export_dir / "manifest.parquet", schemas.EXPORT)
    return export_dir, manifest.read(export_dir / "manifest.parquet", schemas.EXPORT)


@pytest.fixture()
def built(tmp_path):
    return _build(tmp_path)


def _shards(folder: Path, split: str) -> list[Path]:
    return sorted(folder.glob(f"{split}-*.tar"))


def _group(path: Path) -> list[tuple[str, dict[str, bytes]]]:
    """Members grouped the WebDataset way, with the standard library only: key up to the first dot."""
    groups: list[tuple[str, dict]] = []
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            key, ext = m.name.split(".", 1)
            if not groups or groups[-1][0] != key:
                groups.append((key, {}))
            groups[-1][1][ext] = tar.extractfile(m).read()
    return groups


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


# --------------------------------------------------------------------------- keys and sizing


def test_keys_have_no_dots_or_slashes_and_stay_unique():
    ids = ["art:2_portraits/cat.v2.jpg", "art:a.b.png", "art:a_b.png", "art:a_b_png", "x" * 400]
    keys = F.sample_keys(ids)
    assert len(set(keys)) == len(keys)
    assert all("." not in k and "/" not in k and ":" not in k for k in keys)
    assert keys[0] == "art_2_portraits_cat_v2_jpg"
    # colliding ids each get a hash of their own id, whatever else is exported
    assert F.sample_keys(["art:a.b.png", "art:a_b.png"])[0] == keys[1]
    assert len(keys[-1]) < 200


def test_chunks_bound_count_and_bytes():
    assert [list(r) for r in F.chunks([1] * 5, 2, None)] == [[0, 1], [2, 3], [4]]
    assert [list(r) for r in F.chunks([4, 4, 9, 1, 1], None, 8)] == [[0, 1], [2], [3, 4]]
    assert F.chunks([], 3, 10) == []


# --------------------------------------------------------------------------- WebDataset


def test_shards_split_at_count(built):
    export_dir, df = built
    index = F.write_webdataset(df, export_dir, shard_max_count=3, shard_max_bytes=None)
    folder = export_dir / "webdataset"
    assert [p.name for p in _shards(folder, "train")] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert [len(_group(p)) for p in _shards(folder, "train")] == [3, 3, 1]
    assert [p.name for p in _shards(folder, "val")] == ["val-000000.tar"]
    assert [p.name for p in _shards(folder, "test")] == ["test-000000.tar"]
    assert index["splits"] == {s: {"files": f, "samples": n, "bytes": index["splits"][s]["bytes"]}
                               for s, f, n in (("train", 3, 7), ("val", 1, 2), ("test", 1, 1))}
    on_disk = json.loads((folder / "index.json").read_text())
    assert on_disk == index
    for f in index["files"]:
        assert f["sha256"] == hashlib.sha256((folder / f["path"]).read_bytes()).hexdigest()
        assert f["bytes"] == (folder / f["path"]).stat().st_size


def test_shards_split_at_bytes(built):
    export_dir, df = built
    items = [it for it in F.items(df, export_dir) if it.split == "train"]
    sizes = [F.sample_tar_bytes(it) for it in items]
    limit = max(sizes) * 2
    F.write_webdataset(df, export_dir, shard_max_count=None, shard_max_bytes=limit)
    shards = _shards(export_dir / "webdataset", "train")
    assert len(shards) == len(F.chunks(sizes, None, limit)) > 1
    for shard in shards:
        with tarfile.open(shard) as tar:
            members = tar.getmembers()
        assert members[-1].offset_data + members[-1].size <= limit, "members fit the bound"
        assert shard.stat().st_size - limit <= tarfile.RECORDSIZE + 1024
    assert sum(len(_group(s)) for s in shards) == 7


def test_every_sample_complete_and_as_exported(built):
    export_dir, df = built
    F.write_webdataset(df, export_dir, shard_max_count=4)
    rows = {r["item_id"]: r for r in df.to_dict("records")}
    seen = set()
    for shard in sorted((export_dir / "webdataset").glob("*.tar")):
        split = shard.name.split("-")[0]
        for key, sample in _group(shard):
            meta = json.loads(sample["json"])
            row = rows[meta["id"]]
            ext = Path(row["export_path"]).suffix.lstrip(".")
            assert set(sample) == {ext, "json", "txt"}, key
            assert sample[ext] == (export_dir / row["export_path"]).read_bytes()
            assert sample["txt"].decode("utf-8") == row["caption"]
            assert meta["tags"] == list(row["tags"]) and isinstance(meta["tags"], list)
            assert (meta["rating"], meta["source"], meta["license"], meta["sha256"]) == (row["rating"], row["source"], row["license"], row["sha256"])
            assert (meta["width"], meta["height"]) == SIZE
            assert row["split"] == split
            seen.add(meta["id"])
    assert seen == set(rows)


def test_tar_headers_fixed(built):
    export_dir, df = built
    F.write_webdataset(df, export_dir)
    with tarfile.open(export_dir / "webdataset" / "train-000000.tar") as tar:
        for m in tar.getmembers():
            assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (0, 0, 0, "", "", 0o644)
            assert m.isfile()
    assert F.read_shard(export_dir / "webdataset" / "train-000000.tar")[0]["__key__"] == "art_2_portraits_astro_png"


def test_re_export_byte_identical(tmp_path):
    export_dir, df = _build(tmp_path / "one")
    F.write(df, export_dir, {"webdataset": {"enabled": True, "shard_max_count": 3},
                             "hf_parquet": {"enabled": True, "max_rows_per_file": 3}})
    first = {name: _digests(export_dir / name) for name in ("webdataset", "hf")}
    shuffled = df.sample(frac=1.0, random_state=7).reset_index(drop=True)
    F.write(shuffled, export_dir, {"webdataset": {"enabled": True, "shard_max_count": 3},
                                   "hf_parquet": {"enabled": True, "max_rows_per_file": 3}})
    assert {name: _digests(export_dir / name) for name in ("webdataset", "hf")} == first
    other_dir, other = _build(tmp_path / "two")
    F.write_webdataset(other, other_dir, shard_max_count=3)
    assert _digests(other_dir / "webdataset") == first["webdataset"], "nothing from the machine or the path"


# --------------------------------------------------------------------------- Hugging Face Parquet


def test_hf_parquet_loads_with_datasets(built, tmp_path):
    import datasets
    export_dir, df = built
    F.write_hf_parquet(df, export_dir, max_rows_per_file=3, row_group_rows=2)
    files = F.hf_data_files(export_dir / "hf")
    assert [Path(p).name for p in files["train"]] == [f"train-{i:05d}-of-00003.parquet" for i in range(3)]
    ds = datasets.load_dataset("parquet", data_files=files["train"], split="train", cache_dir=str(tmp_path / "cache"))
    assert len(ds) == 7
    assert isinstance(ds.features["image"], datasets.Image)
    rows = {r["item_id"]: r for r in df.to_dict("records")}
    first = ds[0]
    assert isinstance(first["image"], Image.Image)
    assert first["id"] == "art:2_portraits/astro.png"
    row = rows[first["id"]]
    with Image.open(export_dir / row["export_path"]) as source:
        assert np.array_equal(np.asarray(first["image"]), np.asarray(source))
    assert first["tags"] == list(row["tags"])
    assert (first["caption"], first["rating"], first["license"], first["sha256"]) == (row["caption"], row["rating"], row["license"], row["sha256"])
    for record in ds:
        with Image.open(export_dir / rows[record["id"]]["export_path"]) as source:
            assert np.array_equal(np.asarray(record["image"]), np.asarray(source)), record["id"]


def test_hf_folder_loads_with_splits(built, tmp_path):
    import datasets
    export_dir, df = built
    F.write_hf_parquet(df, export_dir)
    dd = datasets.load_dataset("parquet", data_files=F.hf_data_files(export_dir / "hf"), cache_dir=str(tmp_path / "cache"))
    assert {name: len(split) for name, split in dd.items()} == {"train": 7, "val": 2, "test": 1}
    by_id = {r["id"]: r for r in dd["val"]}
    assert by_id["gen:y.png"]["image"].mode == "RGBA"
    folder = datasets.load_dataset(str(export_dir / "hf"), cache_dir=str(tmp_path / "cache2"))
    assert {name: len(split) for name, split in folder.items()} == {"train": 7, "val": 2, "test": 1}


def test_hf_files_and_row_groups_bounded(built):
    export_dir, df = built
    sizes = sorted(((export_dir / p).stat().st_size for p in df.loc[df["split"] == "train", "export_path"]))
    index = F.write_hf_parquet(df, export_dir, max_rows_per_file=None, max_bytes_per_file=sizes[-1] * 3,
                               row_group_rows=2, row_group_max_bytes=sizes[-1] + 1)
    train = [f for f in index["files"] if f["split"] == "train"]
    assert len(train) > 1 and sum(f["samples"] for f in train) == 7
    for f in train:
        pf = pq.ParquetFile(export_dir / "hf" / f["path"])
        assert pf.metadata.num_rows == f["samples"]
        assert all(pf.metadata.row_group(g).num_rows <= 2 for g in range(pf.num_row_groups))
        images = pf.read(columns=["image"]).column("image").to_pylist()
        assert sum(len(i["bytes"]) for i in images) <= sizes[-1] * 3
        meta = json.loads(pf.schema_arrow.metadata[b"huggingface"])
        assert meta["info"]["features"]["image"] == {"_type": "Image"}
        assert meta["info"]["features"]["caption"] == {"dtype": "string", "_type": "Value"}


# --------------------------------------------------------------------------- params, atomicity, verification


def test_write_follows_params(built):
    export_dir, df = built
    assert F.write(df, export_dir, {}) == {}
    assert not (export_dir / "webdataset").exists() and not (export_dir / "hf").exists()
    written = F.write(df, export_dir, {"webdataset": {"enabled": True, "shard_max_count": 5}, "hf_parquet": {"enabled": True}})
    assert set(written) == {"webdataset", "hf"}
    assert written["webdataset"]["settings"]["shard_max_count"] == 5
    with pytest.raises(ValueError, match="shard_max_count"):
        F.write(df, export_dir, {"webdataset": {"enabled": True, "shard_max_count": 0}})


def test_changed_file_refused_and_previous_output_kept(built):
    export_dir, df = built
    F.write_webdataset(df, export_dir, shard_max_count=3)
    before = _digests(export_dir / "webdataset")
    row = df[df["split"] == "test"].iloc[0]
    (export_dir / row["export_path"]).write_bytes(b"not the exported image")
    with pytest.raises(F.FormatError, match="changed since the export"):
        F.write_webdataset(df, export_dir, shard_max_count=2)
    assert _digests(export_dir / "webdataset") == before
    assert not [p for p in export_dir.iterdir() if p.name.startswith(".")], "no temporary folders left"


def test_verify_passes_then_finds_damage(built):
    export_dir, df = built
    F.write(df, export_dir, {"webdataset": {"enabled": True, "shard_max_count": 3}, "hf_parquet": {"enabled": True, "max_rows_per_file": 4}})
    assert F.verify(export_dir, df) == []
    assert F.verify(export_dir, df.iloc[1:]) != [], "an item the manifest lacks is reported"
    shard = export_dir / "webdataset" / "train-000001.tar"
    data = bytearray(shard.read_bytes())
    data[600] ^= 0xFF  # inside the first member's data
    shard.write_bytes(bytes(data))
    problems = F.verify_webdataset(export_dir / "webdataset", df)
    assert any("size or sha256" in p for p in problems)
    assert any("do not match its export_sha256" in p for p in problems)
    (export_dir / "hf" / "val-00000-of-00001.parquet").unlink()
    problems = F.verify_hf_parquet(export_dir / "hf", df)
    assert any("missing" in p for p in problems)


def test_verify_reports_incomplete_sample(built):
    export_dir, df = built
    F.write_webdataset(df, export_dir)
    shard = export_dir / "webdataset" / "test-000000.tar"
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers() if not m.name.endswith(".txt")]
    with tarfile.open(shard, "w", format=tarfile.PAX_FORMAT) as tar:
        for m, data in members:
            tar.addfile(m, io.BytesIO(data))
    problems = F.verify_webdataset(export_dir / "webdataset")
    assert any("incomplete" in p for p in problems)


def test_empty_export_writes_only_indexes(tmp_path):
    empty = manifest.empty(schemas.EXPORT)
    written = F.write(empty, tmp_path, {"webdataset": {"enabled": True}, "hf_parquet": {"enabled": True}})
    assert written["webdataset"]["files"] == [] and written["hf"]["files"] == []
    assert sorted(p.name for p in (tmp_path / "webdataset").iterdir()) == ["index.json"]
    assert F.verify(tmp_path, empty) == []
