"""trainset.sources.parquet_images and .webdataset: image datasets unpacked into image folders
that the image_folder reader ingests."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from trainset import hashing
from trainset.config import Source
from trainset.sources import archive, image_folder, parquet_images, webdataset
from trainset.sources.archive import Limits

EXTS = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")


def _image(fmt: str = "PNG", seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (10, 8), (seed % 256, 100, 30)).save(buf, format=fmt)
    return buf.getvalue()


def _ingest(root: Path) -> dict[str, dict]:
    source = Source(name="s", kind="image_folder", path=root, license="CC0-1.0")
    rows = image_folder.read(source, EXTS, lambda full, st, rel: hashing.sha256_file(full), lambda p: p.as_posix())
    return {r["rel_path"]: r for r in rows}


def _sidecar(root: Path, stem: str) -> dict:
    return json.loads((root / f"{stem}.json").read_text(encoding="utf-8"))


# --- Parquet: Hugging Face datasets ----------------------------------------------------------


def _hf_table() -> pa.Table:
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    return pa.table(
        {
            "image": pa.array(
                [
                    {"bytes": _image("PNG", 1), "path": "../../etc/evil.png"},
                    {"bytes": _image("JPEG", 2), "path": None},
                    {"bytes": None, "path": "missing.png"},
                    {"bytes": b"not an image", "path": "junk.png"},
                ],
                type=image,
            ),
            "tags": [["long hair", "smile"], None, ["x"], ["y"]],
            "rating": ["g", "e", None, "weird"],
            "text": ["a cat", "a dog", None, None],
            "score": [1.5, float("nan"), 3.0, 4.0],
        }
    )


def test_hf_struct_parquet(tmp_path):
    path = tmp_path / "train-00000-of-00001.parquet"
    pq.write_table(_hf_table(), path, row_group_size=2)
    dest = tmp_path / "out"
    report = parquet_images.extract([path], dest, batch_rows=1)
    stem = path.stem
    assert report.extracted == [f"{stem}-000000.png", f"{stem}-000001.jpg"]
    refused = {r["member"]: r["reason"] for r in report.refused}
    assert "no image bytes" in refused[f"{path.name}#2"]
    assert "not a PNG" in refused[f"{path.name}#3"]
    assert not (tmp_path / "etc").exists()
    first = _sidecar(dest, f"{stem}-000000")
    assert first == {"tags": ["long hair", "smile"], "rating": "g", "caption": "a cat", "score": 1.5, "image_path": "../../etc/evil.png"}
    assert "score" not in _sidecar(dest, f"{stem}-000001")
    rows = _ingest(dest)
    assert rows[f"{stem}-000000.png"]["tags"] == ["long hair", "smile"]
    assert rows[f"{stem}-000001.jpg"]["rating"] == "explicit"
    assert all(r["sidecar_error"] is None for r in rows.values())


def test_hf_real_datasets_layout_is_detected(tmp_path):
    table = pa.table({"label": [3], "picture": pa.array([{"bytes": _image(), "path": "p.png"}])})
    path = tmp_path / "d.parquet"
    pq.write_table(table, path)
    report = parquet_images.extract(path, tmp_path / "out")
    assert report.extracted == ["d-000000.png"]
    assert _sidecar(tmp_path / "out", "d-000000") == {"label": 3, "image_path": "p.png"}


# --- Parquet: img2dataset ---------------------------------------------------------------------


def _img2dataset_table() -> pa.Table:
    return pa.table(
        {
            "key": ["000000000", "000000001", "000000002", "../../escape", "000000000"],
            "caption": ["first", "second", "third", "fourth", "dup"],
            "url": [f"https://example.org/{i}.jpg" for i in range(5)],
            "width": [10, 10, None, 10, 10],
            "height": [8, 8, None, 8, 8],
            "status": ["success", "success", "failed_to_download", "success", "success"],
            "error_message": [None, None, "404", None, None],
            "jpg": pa.array([_image("JPEG", 1), _image("WEBP", 2), None, _image("JPEG", 4), _image("JPEG", 5)], pa.binary()),
            "tags": ["a, b", "c", None, None, None],
        }
    )


def test_img2dataset_parquet(tmp_path):
    path = tmp_path / "00000.parquet"
    pq.write_table(_img2dataset_table(), path)
    dest = tmp_path / "out"
    report = parquet_images.extract(path, dest)
    assert report.extracted == ["000000000.jpg", "000000001.webp", "escape.jpg"]
    reasons = [r["reason"] for r in report.refused]
    assert "no image bytes" in reasons[0] and "duplicate" in reasons[1]
    assert _sidecar(dest, "000000000") == {
        "key": "000000000", "caption": "first", "url": "https://example.org/0.jpg",
        "width": 10, "height": 8, "status": "success", "tags": ["a", "b"],
    }
    assert _ingest(dest)["000000001.webp"]["tags"] == ["c"]
    assert report.bytes == sum(p.stat().st_size for p in dest.iterdir() if p.name != archive.MARKER)


def test_named_columns_and_errors(tmp_path):
    table = pa.table({"name": ["a"], "pixels": pa.array([_image()], pa.binary()), "other": pa.array([_image()], pa.binary())})
    path = tmp_path / "x.parquet"
    pq.write_table(table, path)
    report = parquet_images.extract(path, tmp_path / "out", image_column="other", key_column="name")
    assert report.extracted == ["a.png"]
    assert _sidecar(tmp_path / "out", "a") == {"name": "a"}
    bad = parquet_images.extract(path, tmp_path / "out2", image_column="nope")
    assert bad.extracted == [] and "nope" in bad.errors[0]
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"PAR1 not really")
    assert parquet_images.extract(junk, tmp_path / "out3").errors


def test_parquet_limits_and_idempotence(tmp_path):
    path = tmp_path / "00000.parquet"
    pq.write_table(_img2dataset_table(), path)
    dest = tmp_path / "out"
    tight = Limits(max_member_bytes=len(_image("JPEG", 1)) - 1)
    report = parquet_images.extract(path, dest, limits=tight)
    assert "max_member_bytes" in report.refused[0]["reason"]
    first = parquet_images.extract(path, dest)
    assert not first.unchanged
    again = parquet_images.extract(path, dest)
    assert again.unchanged and again.extracted == first.extracted


# --- WebDataset ------------------------------------------------------------------------------


def _add(tf: tarfile.TarFile, name: str, data: bytes, **attrs) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in attrs.items():
        setattr(info, key, value)
    tf.addfile(info, io.BytesIO(data))


def _shard(path: Path, samples: list[tuple[str, bytes]], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in samples:
            _add(tf, name, data)
    return path


def test_webdataset_samples(tmp_path):
    shard0 = _shard(
        tmp_path / "00000.tar",
        [
            ("000.jpg", _image("JPEG", 1)),
            ("000.json", json.dumps({"url": "u0", "tags": "red, blue", "rating": "s"}).encode()),
            ("000.txt", b"a red thing\n"),
            ("000.cls", b"7"),
            ("001.png", _image("PNG", 2)),
            ("001.txt", b"caption only"),
            ("001.npy", b"\x93NUMPY"),
            ("002.json", b"{}"),
            ("003.webp", _image("WEBP", 3)),
            ("003.json", b"{broken"),
            ("sub/004.seg.png", _image("PNG", 4)),
            ("sub/004.png", _image("PNG", 5)),
            ("sub/004.cls", b"dog"),
        ],
    )
    shard1 = _shard(tmp_path / "00001.tar.gz", [("000.png", _image("PNG", 9)), ("100.jpg", _image("JPEG", 6)), ("100.jpg", _image("JPEG", 6)), ("../x.jpg", b"")], "w:gz")
    dest = tmp_path / "out"
    report = webdataset.extract([shard0, shard1], dest)
    assert report.extracted == ["000.jpg", "001.png", "003.webp", "sub/004.png", "100.jpg"]
    refused = {r["member"]: r["reason"] for r in report.refused}
    assert "without an image" in refused["002"]
    assert "unreadable metadata" in refused["003.json"]
    assert "seen again" in refused["000.png"]
    assert "duplicate" in refused["100.jpg"]
    assert "climbs out" in refused["../x.jpg"]
    assert report.ignored == ["001.npy", "sub/004.seg.png"]
    assert _sidecar(dest, "000") == {"url": "u0", "tags": ["red", "blue"], "rating": "s", "caption": "a red thing", "cls": 7}
    assert _sidecar(dest, "001") == {"caption": "caption only"}
    assert _sidecar(dest, "sub/004") == {"cls": "dog"}
    assert not list(dest.rglob("*.txt"))
    rows = _ingest(dest)
    assert rows["000.jpg"]["tags"] == ["red", "blue"] and rows["000.jpg"]["rating"] == "sensitive"
    assert rows["001.png"]["tags"] == []
    assert set(rows) == {"000.jpg", "001.png", "003.webp", "sub/004.png", "100.jpg"}


def test_webdataset_member_safety_is_the_archive_one(tmp_path):
    path = tmp_path / "s.tar"
    with tarfile.open(path, "w") as tf:
        _add(tf, "evil.jpg", b"", type=tarfile.SYMTYPE, linkname="/etc/passwd")
        _add(tf, "/abs.jpg", _image("JPEG"))
        _add(tf, "big.png", _image("PNG") + b"\0" * 5000)
        _add(tf, "ok.png", _image("PNG"))
    report = webdataset.extract(path, tmp_path / "out", Limits(max_member_bytes=4000))
    refused = {r["member"]: r["reason"] for r in report.refused}
    assert report.extracted == ["ok.png"]
    assert "outside the target" in refused["evil.jpg"]
    assert "absolute" in refused["/abs.jpg"]
    assert "max_member_bytes" in refused["big.png"]
    assert not any(p.is_symlink() for p in (tmp_path / "out").rglob("*"))


def test_webdataset_truncated_shard_and_idempotence(tmp_path):
    path = _shard(tmp_path / "t.tar", [("a.png", _image("PNG", 1)), ("a.json", b'{"caption": "x"}'), ("b.png", _image("PNG", 2) + bytes(3000))])
    data = path.read_bytes()
    path.write_bytes(data[: data.find(b"b.png") + 1000])
    dest = tmp_path / "out"
    report = webdataset.extract(path, dest)
    assert report.extracted == ["a.png"] and report.errors
    assert webdataset.extract(path, dest).unchanged


@pytest.mark.parametrize("rel, key, ext", [("a/b.c.png", "a/b", "c.png"), ("x.JPG", "x", "jpg"), ("noext", "noext", "")])
def test_split_key(rel, key, ext):
    assert webdataset.split_key(rel) == (key, ext)
