"""trainset.stages.ingest: raw folders -> a validated ingest manifest, hashing only what changed."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from trainset import hashing, manifest, schemas
from trainset.config import Source
from trainset.sources.image_folder import SourceError
from trainset.stages import ingest
from trainset.stages.ingest import StatCache

EXTS = [".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"]


def _png(seed: int, size=(32, 24)) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def _jpg(seed: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="JPEG")
    return buf.getvalue()


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    return path


def _source(name: str, path: Path, **kw) -> Source:
    return Source(name=name, kind="image_folder", path=path, license=kw.pop("license", "CC0-1.0"), **kw)


@pytest.fixture
def repo(tmp_path):
    """A repo root with two sources inside it and one outside it."""
    root = tmp_path / "repo"
    art = root / "data" / "raw" / "art"
    _write(art / "a.png", _png(1))
    _write(art / "a.txt", "1girl, solo, 1girl")
    _write(art / "sub" / "b.jpg", _jpg(2))
    _write(art / "sub" / "b.json", json.dumps({"tags": ["tree"], "rating": "s"}))
    _write(art / "5_style" / "c.png", _png(3))
    _write(art / "dup_of_a.png", _png(1))                 # exact duplicate within a source
    _write(art / "readme.md", "not an image")
    _write(art / ".hidden.png", _png(9))
    photos = root / "data" / "raw" / "photos"
    _write(photos / "p.png", _png(4))
    _write(photos / "copy_a.png", _png(1))                # exact duplicate across sources
    _write(photos / "bad.json", "{oops")
    _write(photos / "bad.png", _png(5))
    outside = tmp_path / "elsewhere" / "ext"
    _write(outside / "x.png", _png(6))
    sources = [
        _source("art", art, rating_scheme="gelbooru", repeats=2),
        _source("photos", photos, generated=True, weight=0.5, license="CC-BY-4.0"),
    ]
    return root, sources, _source("ext", outside)


def _run(root: Path, sources, name="ingest.parquet") -> pd.DataFrame:
    return ingest.run(sources, root / "data" / name, root / "cache" / "stat", EXTS, root=root)


def test_run_writes_a_valid_manifest(repo):
    root, sources, _ = repo
    df = _run(root, sources)
    out = root / "data" / "ingest.parquet"
    assert out.is_file()
    back = manifest.read(out, schemas.INGEST)
    pd.testing.assert_frame_equal(back, df)
    assert list(df.columns) == list(schemas.INGEST.columns)
    assert list(df["item_id"]) == sorted(df["item_id"])
    assert set(df["item_id"]) == {
        "art:a.png", "art:sub/b.jpg", "art:5_style/c.png", "art:dup_of_a.png",
        "photos:p.png", "photos:copy_a.png", "photos:bad.png",
    }
    assert (df["schema_version"] == schemas.SCHEMA_VERSION).all()


def test_item_id_is_source_and_rel_path(repo):
    root, sources, _ = repo
    df = _run(root, sources)
    for row in df.itertuples():
        assert row.item_id == f"{row.source}:{row.rel_path}"
        assert row.original_name == Path(row.rel_path).name


def test_row_contents(repo):
    root, sources, _ = repo
    rows = _run(root, sources).set_index("item_id")
    a = rows.loc["art:a.png"]
    art = root / "data" / "raw" / "art"
    assert a["sha256"] == hashlib.sha256((art / "a.png").read_bytes()).hexdigest()
    assert a["size"] == (art / "a.png").stat().st_size
    assert a["tags"] == ["1girl", "solo"] and a["sidecar"] == "a.txt"
    assert a["repeats"] == 2 and a["subset"] == "art"
    assert a["license"] == "CC0-1.0" and not a["generated"]
    b = rows.loc["art:sub/b.jpg"]
    assert b["tags"] == ["tree"]
    assert b["rating"] == "general"                       # bare "s" under gelbooru
    c = rows.loc["art:5_style/c.png"]
    assert (c["repeats"], c["subset"]) == (5, "style")
    p = rows.loc["photos:p.png"]
    assert p["generated"] and p["weight"] == 0.5 and p["license"] == "CC-BY-4.0"
    bad = rows.loc["photos:bad.png"]
    assert bad["tags"] == [] and bad["sidecar"] == "bad.json"
    assert bad["sidecar_error"].startswith("bad.json: ")


def test_exact_duplicates_share_sha_not_item_id(repo):
    root, sources, _ = repo
    df = _run(root, sources)
    copies = df[df["sha256"] == hashing.sha256_bytes(_png(1))]
    assert sorted(copies["item_id"]) == ["art:a.png", "art:dup_of_a.png", "photos:copy_a.png"]
    assert copies["item_id"].is_unique
    assert df["item_id"].is_unique
    assert df["sha256"].nunique() == len(df) - 2


def test_paths_inside_root_are_relative(repo):
    root, sources, ext = repo
    df = _run(root, [*sources, ext]).set_index("item_id")
    assert df.loc["art:a.png", "path"] == "data/raw/art/a.png"
    assert df.loc["art:sub/b.jpg", "path"] == "data/raw/art/sub/b.jpg"
    assert df.loc["photos:p.png", "path"] == "data/raw/photos/p.png"
    outside = df.loc["ext:x.png", "path"]
    assert Path(outside).is_absolute()
    assert outside == str((root.parent / "elsewhere" / "ext" / "x.png").resolve())
    for rel in df["path"]:
        assert (Path(rel) if Path(rel).is_absolute() else root / rel).is_file()


def test_paths_relative_even_with_relative_root(repo, monkeypatch):
    root, sources, _ = repo
    monkeypatch.chdir(root)
    rel_sources = [_source(s.name, s.path.relative_to(root)) for s in sources]
    df = ingest.run(rel_sources, "data/ingest.parquet", "cache/stat", EXTS, root=".")
    assert set(df["path"]) == {f"data/raw/{r}" for r in
                               ("art/a.png", "art/sub/b.jpg", "art/5_style/c.png", "art/dup_of_a.png",
                                "photos/p.png", "photos/copy_a.png", "photos/bad.png")}
    assert (root / "data" / "ingest.parquet").is_file()


def test_display_path():
    root = Path("/srv/repo")
    assert ingest.display_path(Path("/srv/repo/data/a.png"), root) == "data/a.png"
    assert ingest.display_path(Path("/srv/other/a.png"), root) == "/srv/other/a.png"


def test_extensions_without_dot_and_any_case(repo):
    root, sources, _ = repo
    df = ingest.run(sources, root / "i.parquet", root / "c", ["PNG"], root=root)
    assert set(df["item_id"]) == {"art:a.png", "art:5_style/c.png", "art:dup_of_a.png",
                                  "photos:p.png", "photos:copy_a.png", "photos:bad.png"}


def test_no_sources_gives_an_empty_valid_manifest(tmp_path):
    df = ingest.run([], tmp_path / "i.parquet", tmp_path / "c", EXTS, root=tmp_path)
    assert len(df) == 0
    back = manifest.read(tmp_path / "i.parquet", schemas.INGEST)
    assert len(back) == 0 and list(back.columns) == list(schemas.INGEST.columns)


def test_empty_source_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    df = ingest.run([_source("e", tmp_path / "empty")], tmp_path / "i.parquet", tmp_path / "c", EXTS, root=tmp_path)
    assert len(df) == 0
    assert len(manifest.read(tmp_path / "i.parquet", schemas.INGEST)) == 0


def test_missing_source_folder_raises_and_writes_nothing(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(SourceError, match=str(missing)):
        ingest.run([_source("m", missing)], tmp_path / "i.parquet", tmp_path / "c", EXTS, root=tmp_path)
    assert not (tmp_path / "i.parquet").exists()


def test_output_is_deterministic(repo):
    root, sources, _ = repo
    _run(root, sources, "one.parquet")
    _run(root, list(reversed(sources)), "two.parquet")
    assert (root / "data" / "one.parquet").read_bytes() == (root / "data" / "two.parquet").read_bytes()


# --- stat cache -------------------------------------------------------------------------


@pytest.fixture
def count_hashes(monkeypatch):
    calls: list[Path] = []
    real = hashing.sha256_file

    def counting(path):
        calls.append(Path(path))
        return real(path)

    monkeypatch.setattr(hashing, "sha256_file", counting)
    return calls


def test_second_run_rehashes_nothing(repo, count_hashes, monkeypatch):
    root, sources, _ = repo
    made: list[StatCache] = []
    real_init = StatCache.__init__

    def tracking_init(self, path):
        real_init(self, path)
        made.append(self)

    monkeypatch.setattr(StatCache, "__init__", tracking_init)

    first = _run(root, sources)
    assert len(count_hashes) == 7
    assert sum(c.hashed for c in made) == 7
    assert (root / "cache" / "stat" / "art.parquet").is_file()
    assert (root / "cache" / "stat" / "photos.parquet").is_file()

    made.clear()
    count_hashes.clear()
    second = _run(root, sources)
    assert count_hashes == []
    assert [c.hashed for c in made] == [0, 0]
    pd.testing.assert_frame_equal(first, second)


def test_only_changed_and_new_files_are_rehashed(repo, count_hashes):
    root, sources, _ = repo
    _run(root, sources)
    art = root / "data" / "raw" / "art"
    # rewrite one file (new content and a clearly later mtime), add one, remove one
    target = _write(art / "sub" / "b.jpg", _jpg(77))
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    _write(art / "new.png", _png(42))
    (art / "dup_of_a.png").unlink()
    count_hashes.clear()
    df = _run(root, sources).set_index("item_id")
    assert sorted(p.name for p in count_hashes) == ["b.jpg", "new.png"]
    assert df.loc["art:sub/b.jpg", "sha256"] == hashing.sha256_bytes(_jpg(77))
    assert df.loc["art:new.png", "sha256"] == hashing.sha256_bytes(_png(42))
    assert "art:dup_of_a.png" not in df.index


def test_touch_without_content_change_rehashes_but_keeps_sha(repo, count_hashes):
    root, sources, _ = repo
    first = _run(root, sources).set_index("item_id")
    p = root / "data" / "raw" / "photos" / "p.png"
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    count_hashes.clear()
    second = _run(root, sources).set_index("item_id")
    assert [c.name for c in count_hashes] == ["p.png"]
    assert second.loc["photos:p.png", "sha256"] == first.loc["photos:p.png", "sha256"]


def test_stat_cache_direct(tmp_path, count_hashes):
    f = _write(tmp_path / "f.png", _png(1))
    cache_file = tmp_path / "c" / "s.parquet"
    c1 = StatCache(cache_file)
    assert c1.known == {}
    sha = c1.digest(f, f.stat(), "f.png")
    assert sha == hashing.sha256_bytes(_png(1)) and c1.hashed == 1
    c1.save()
    c2 = StatCache(cache_file)
    assert c2.known == {"f.png": (f.stat().st_size, f.stat().st_mtime_ns, sha)}
    assert c2.digest(f, f.stat(), "f.png") == sha
    assert c2.hashed == 0
    assert len(count_hashes) == 1
    # the saved cache lists only files seen in the last run
    c2.save()
    c3 = StatCache(cache_file)
    c3.save()
    assert StatCache(cache_file).known == {}


def test_stat_cache_corrupt_file_is_ignored(tmp_path):
    cache_file = _write(tmp_path / "s.parquet", b"definitely not parquet")
    c = StatCache(cache_file)
    assert c.known == {}
    f = _write(tmp_path / "f.png", _png(2))
    assert c.digest(f, f.stat(), "f.png") == hashing.sha256_file(f)
    assert c.hashed == 1


def test_stat_cache_with_wrong_columns_is_ignored(tmp_path):
    cache_file = tmp_path / "s.parquet"
    pd.DataFrame({"something": [1]}).to_parquet(cache_file)
    assert StatCache(cache_file).known == {}


def test_stat_caches_are_per_source(repo, count_hashes):
    root, sources, _ = repo
    _run(root, sources)
    count_hashes.clear()
    (root / "cache" / "stat" / "photos.parquet").unlink()
    _run(root, sources)
    assert sorted(p.name for p in count_hashes) == ["bad.png", "copy_a.png", "p.png"]
