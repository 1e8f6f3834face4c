"""trainset.sources.image_folder: walking a folder of images with sidecars and Kohya folders."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainset import hashing
from trainset.config import Source
from trainset.sources import image_folder, read_source
from trainset.sources.image_folder import SourceError

EXTS = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")


def _img(path: Path, seed: int = 0, size=(24, 16), fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    im = Image.fromarray(arr, "RGB")
    if fmt == "GIF":
        im = im.convert("P")
    im.save(path, format=fmt)
    return path


def _source(root: Path, **over) -> Source:
    kw = dict(name="src", kind="image_folder", path=root, license="CC0-1.0")
    kw.update(over)
    return Source(**kw)


def _rows(source: Source, extensions=EXTS) -> dict[str, dict]:
    rows = list(
        image_folder.read(
            source,
            extensions=tuple(extensions),
            digest=lambda full, st, rel: hashing.sha256_file(full),
            display_path=lambda p: p.as_posix(),
        )
    )
    return {r["rel_path"]: r for r in rows}


# --- walking ----------------------------------------------------------------------------


def test_basic_row(tmp_path):
    path = _img(tmp_path / "a.png")
    rows = _rows(_source(tmp_path, weight=2.0, generated=True))
    assert list(rows) == ["a.png"]
    row = rows["a.png"]
    assert row == {
        "item_id": "src:a.png",
        "sha256": hashing.sha256_file(path),
        "source": "src",
        "rel_path": "a.png",
        "path": path.as_posix(),
        "size": path.stat().st_size,
        "license": "CC0-1.0",
        "original_name": "a.png",
        "tags": [],
        "rating": "unknown",
        "generated": True,
        "weight": 2.0,
        "repeats": 1,
        "subset": "src",
        "sidecar": None,
        "sidecar_error": None,
    }


def test_nested_sorted_posix_paths_and_all_extensions(tmp_path):
    _img(tmp_path / "z.png", 1)
    _img(tmp_path / "b" / "c" / "deep.jpg", 2, fmt="JPEG")
    _img(tmp_path / "b" / "x.JPEG", 3, fmt="JPEG")
    _img(tmp_path / "m.webp", 4, fmt="WEBP")
    _img(tmp_path / "g.gif", 5, fmt="GIF")
    _img(tmp_path / "bm.bmp", 6, fmt="BMP")
    _img(tmp_path / "t.TIF", 7, fmt="TIFF")
    _img(tmp_path / "t2.tiff", 8, fmt="TIFF")
    rows = _rows(_source(tmp_path))
    assert list(rows) == sorted(rows)
    assert set(rows) == {"z.png", "b/c/deep.jpg", "b/x.JPEG", "m.webp", "g.gif", "bm.bmp", "t.TIF", "t2.tiff"}
    assert rows["b/c/deep.jpg"]["item_id"] == "src:b/c/deep.jpg"
    assert rows["b/c/deep.jpg"]["original_name"] == "deep.jpg"


def test_non_image_extensions_ignored(tmp_path):
    _img(tmp_path / "keep.png")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "data.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 8)
    _img(tmp_path / "disguised.png.bak", fmt="PNG")  # a real image, but the extension is not listed
    (tmp_path / "noext").write_bytes(b"x")
    assert list(_rows(_source(tmp_path))) == ["keep.png"]


def test_extension_list_is_respected(tmp_path):
    _img(tmp_path / "a.png")
    _img(tmp_path / "b.jpg", fmt="JPEG")
    assert list(_rows(_source(tmp_path), extensions=(".jpg",))) == ["b.jpg"]


def test_hidden_files_and_folders_skipped(tmp_path):
    _img(tmp_path / "visible.png", 1)
    _img(tmp_path / ".hidden.png", 2)
    _img(tmp_path / ".cache" / "thumb.png", 3)
    _img(tmp_path / "sub" / ".git" / "obj.png", 4)
    _img(tmp_path / "sub" / "ok.png", 5)
    assert list(_rows(_source(tmp_path))) == ["sub/ok.png", "visible.png"]


def test_symlinked_image_and_folder_followed(tmp_path):
    outside = tmp_path / "outside"
    _img(outside / "real.png", 1)
    _img(outside / "dir" / "inner.png", 2)
    root = tmp_path / "root"
    root.mkdir()
    (root / "link.png").symlink_to(outside / "real.png")
    (root / "linkdir").symlink_to(outside / "dir", target_is_directory=True)
    rows = _rows(_source(root))
    assert set(rows) == {"link.png", "linkdir/inner.png"}
    assert rows["link.png"]["size"] == (outside / "real.png").stat().st_size


def test_empty_folder_gives_no_rows(tmp_path):
    assert _rows(_source(tmp_path)) == {}


def test_missing_folder_raises_naming_path(tmp_path):
    missing = tmp_path / "does" / "not" / "exist"
    with pytest.raises(SourceError) as info:
        _rows(_source(missing))
    assert str(missing) in str(info.value)
    assert isinstance(info.value, OSError)


def test_file_instead_of_folder_raises(tmp_path):
    f = tmp_path / "file.png"
    _img(f)
    with pytest.raises(SourceError, match="not a folder"):
        _rows(_source(f))


def test_unreadable_subfolder_raises(tmp_path, monkeypatch):
    # Permissions do not stop root, so make listing one folder fail the way a chmod 0 would.
    sub = tmp_path / "sub"
    _img(sub / "a.png")
    real_scandir = os.scandir

    def scandir(path):
        if Path(path) == sub:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(image_folder.os, "scandir", scandir)
    with pytest.raises(SourceError, match=r"cannot list .*sub: Permission denied"):
        _rows(_source(tmp_path))


def test_read_source_dispatches_by_kind(tmp_path):
    _img(tmp_path / "a.png")
    rows = read_source(
        _source(tmp_path),
        extensions=EXTS,
        digest=lambda full, st, rel: "0" * 64,
        display_path=str,
    )
    assert [r["item_id"] for r in rows] == ["src:a.png"]
    with pytest.raises(ValueError, match="no reader for kind 'zip'"):
        read_source(_source(tmp_path, kind="zip"))


def test_digest_receives_path_stat_and_rel(tmp_path):
    _img(tmp_path / "d" / "a.png")
    seen = []

    def digest(full, st, rel):
        seen.append((full, st.st_size, rel))
        return "f" * 64

    rows = list(image_folder.read(_source(tmp_path), EXTS, digest, lambda p: "shown"))
    assert seen == [(tmp_path / "d" / "a.png", (tmp_path / "d" / "a.png").stat().st_size, "d/a.png")]
    assert rows[0]["sha256"] == "f" * 64
    assert rows[0]["path"] == "shown"


# --- .txt sidecars ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "tags"),
    [
        ("1girl, solo, long_hair, solo, 1girl", ["1girl", "solo", "long_hair"]),
        ("a,b,,c, ,a\n", ["a", "b", "c"]),
        ("first line, x\nsecond, x\n\nthird", ["first line", "x", "second", "third"]),
        ("blue_sky cloud blue_sky tree", ["blue_sky", "cloud", "tree"]),
        ("  multiple   spaces  ", ["multiple", "spaces"]),
        ("", []),
        ("   \n", []),
        ("\ufeffbom_tag, other", ["bom_tag", "other"]),
        ("tag with spaces, tag with spaces", ["tag with spaces"]),
        ("Cat, cat", ["Cat", "cat"]),
    ],
)
def test_txt_sidecar_split_and_deduplicated(tmp_path, text, tags):
    _img(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text(text, encoding="utf-8")
    row = _rows(_source(tmp_path))["a.png"]
    assert row["tags"] == tags
    assert row["sidecar"] == "a.txt"
    assert row["sidecar_error"] is None
    assert row["rating"] == "unknown"


def test_txt_sidecar_only_matches_same_stem(tmp_path):
    _img(tmp_path / "a.png", 1)
    _img(tmp_path / "b.png", 2)
    (tmp_path / "a.txt").write_text("only_a")
    rows = _rows(_source(tmp_path))
    assert rows["a.png"]["tags"] == ["only_a"]
    assert rows["b.png"]["tags"] == [] and rows["b.png"]["sidecar"] is None


def test_txt_wins_over_json(tmp_path):
    _img(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("from_txt")
    (tmp_path / "a.json").write_text(json.dumps({"tags": ["from_json"], "rating": "e"}))
    row = _rows(_source(tmp_path))["a.png"]
    assert row["tags"] == ["from_txt"]
    assert row["sidecar"] == "a.txt"
    assert row["rating"] == "unknown"


def test_txt_sidecar_not_utf8_is_an_error_not_a_crash(tmp_path):
    _img(tmp_path / "a.png")
    (tmp_path / "a.txt").write_bytes(b"caf\xe9, ok")
    row = _rows(_source(tmp_path))["a.png"]
    assert row["tags"] == []
    assert row["sidecar"] == "a.txt"
    assert row["sidecar_error"].startswith("a.txt: ")


# --- .json sidecars ---------------------------------------------------------------------


def _json_row(tmp_path, doc, **source_kw):
    _img(tmp_path / "a.png")
    (tmp_path / "a.json").write_text(json.dumps(doc) if not isinstance(doc, str) else doc, encoding="utf-8")
    return _rows(_source(tmp_path, **source_kw))["a.png"]


def test_json_tags_list(tmp_path):
    row = _json_row(tmp_path, {"tags": ["1girl", "solo", "1girl", " hat "], "rating": "g"})
    assert row["tags"] == ["1girl", "solo", "hat"]
    assert row["rating"] == "general"
    assert row["sidecar"] == "a.json" and row["sidecar_error"] is None


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        (["long hair"], ["long hair"]),              # a single multi-word tag stays one tag
        (["long hair", "blue eyes"], ["long hair", "blue eyes"]),
        (["a, b", "b", "c"], ["a", "b", "c"]),       # commas inside an element still separate
        ([], []),
        (["", "  "], []),
    ],
)
def test_json_tags_list_elements_are_tags(tmp_path, tags, expected):
    assert _json_row(tmp_path, {"tags": tags})["tags"] == expected


def test_json_tags_string(tmp_path):
    row = _json_row(tmp_path, {"tags": "a, b, a", "rating": "explicit"})
    assert row["tags"] == ["a", "b"]
    assert row["rating"] == "explicit"


def test_json_tag_string_booru_style(tmp_path):
    row = _json_row(tmp_path, {"tag_string": "1girl solo long_hair solo", "rating": "q"})
    assert row["tags"] == ["1girl", "solo", "long_hair"]
    assert row["rating"] == "questionable"


def test_json_tags_preferred_over_tag_string(tmp_path):
    row = _json_row(tmp_path, {"tags": ["x"], "tag_string": "y z"})
    assert row["tags"] == ["x"]


def test_json_no_tags_no_rating(tmp_path):
    row = _json_row(tmp_path, {})
    assert row["tags"] == [] and row["rating"] == "unknown" and row["sidecar_error"] is None


@pytest.mark.parametrize(("scheme", "expected"), [("danbooru", "sensitive"), ("gelbooru", "general"),
                                                  ("moebooru", "general"), ("safebooru", "general")])
def test_json_bare_s_uses_source_scheme(tmp_path, scheme, expected):
    row = _json_row(tmp_path, {"tags": [], "rating": "s"}, rating_scheme=scheme)
    assert row["rating"] == expected


def test_json_rating_scheme_overrides_source(tmp_path):
    row = _json_row(tmp_path, {"rating": "s", "rating_scheme": "gelbooru"}, rating_scheme="danbooru")
    assert row["rating"] == "general"


def test_json_generated_overrides_source(tmp_path):
    assert _json_row(tmp_path, {"generated": True})["generated"] is True


def test_json_generated_false_overrides_source(tmp_path):
    assert _json_row(tmp_path, {"generated": False}, generated=True)["generated"] is False


def test_source_generated_default_applies_without_key(tmp_path):
    assert _json_row(tmp_path, {"tags": ["a"]}, generated=True)["generated"] is True


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ("{not json", "a.json"),
        ("[1, 2]", "expected a JSON object"),
        ({"tags": [1, 2]}, "'tags' must be a list of strings"),
        ({"tags": {"a": 1}}, "'tags' must be a list of strings"),
        ({"tags": ["ok"], "rating": "r18"}, "unknown rating 'r18'"),
        ({"tags": ["ok"], "rating": "s", "rating_scheme": "e621"}, "unknown rating scheme 'e621'"),
        ("", "a.json"),
    ],
)
def test_malformed_json_keeps_item_with_error(tmp_path, doc, needle):
    row = _json_row(tmp_path, doc, generated=True)
    assert row["item_id"] == "src:a.png"
    assert row["tags"] == []
    assert row["rating"] == "unknown"
    assert row["generated"] is True  # back to the source's default
    assert row["sidecar"] == "a.json"
    assert row["sidecar_error"].startswith("a.json: ")
    assert needle in row["sidecar_error"]


def test_malformed_sidecar_does_not_affect_neighbours(tmp_path):
    _img(tmp_path / "a.png", 1)
    _img(tmp_path / "b.png", 2)
    (tmp_path / "a.json").write_text("{broken")
    (tmp_path / "b.json").write_text(json.dumps({"tags": ["fine"], "rating": "g"}))
    rows = _rows(_source(tmp_path))
    assert rows["a.png"]["sidecar_error"] is not None
    assert rows["b.png"]["sidecar_error"] is None
    assert rows["b.png"]["tags"] == ["fine"] and rows["b.png"]["rating"] == "general"


def test_sidecar_with_bom_json(tmp_path):
    _img(tmp_path / "a.png")
    (tmp_path / "a.json").write_bytes("\ufeff".encode() + json.dumps({"tags": ["x"]}).encode())
    row = _rows(_source(tmp_path))["a.png"]
    assert row["tags"] == ["x"] and row["sidecar_error"] is None


def test_sidecar_folder_with_sidecar_name_is_ignored(tmp_path):
    _img(tmp_path / "a.png")
    (tmp_path / "a.txt").mkdir()
    row = _rows(_source(tmp_path))["a.png"]
    assert row["sidecar"] is None and row["sidecar_error"] is None


# --- Kohya folders ----------------------------------------------------------------------


def test_kohya_folders_set_repeats_and_subset(tmp_path):
    _img(tmp_path / "10_character" / "a.png", 1)
    _img(tmp_path / "3_style" / "nested" / "b.png", 2)
    _img(tmp_path / "2_outer" / "5_inner" / "c.png", 3)   # nearest folder wins
    _img(tmp_path / "5_inner2" / "plain" / "d.png", 4)    # non-Kohya folder below a Kohya one
    _img(tmp_path / "plain" / "e.png", 5)
    _img(tmp_path / "0_zero" / "f.png", 6)               # 0 repeats is not a Kohya folder
    _img(tmp_path / "g.png", 7)
    _img(tmp_path / "7_with_under_scores" / "h.png", 8)
    _img(tmp_path / "x_10" / "i.png", 9)
    rows = _rows(_source(tmp_path, repeats=4))
    got = {rel: (r["repeats"], r["subset"]) for rel, r in rows.items()}
    assert got == {
        "10_character/a.png": (10, "character"),
        "3_style/nested/b.png": (3, "style"),
        "2_outer/5_inner/c.png": (5, "inner"),
        "5_inner2/plain/d.png": (5, "inner2"),
        "plain/e.png": (4, "src"),
        "0_zero/f.png": (4, "src"),
        "g.png": (4, "src"),
        "7_with_under_scores/h.png": (7, "with_under_scores"),
        "x_10/i.png": (4, "src"),
    }


def test_kohya_zero_falls_through_to_outer(tmp_path):
    _img(tmp_path / "6_outer" / "0_zero" / "a.png")
    row = _rows(_source(tmp_path))["6_outer/0_zero/a.png"]
    assert (row["repeats"], row["subset"]) == (6, "outer")


def test_kohya_root_folder_name_is_not_used(tmp_path):
    root = tmp_path / "9_rootname"
    _img(root / "a.png")
    row = _rows(_source(root))["a.png"]
    assert (row["repeats"], row["subset"]) == (1, "src")


def test_kohya_subset_function_directly():
    src = _source(Path("/x"), repeats=2)
    assert image_folder.kohya_subset("a.png", src) == (2, "src")
    assert image_folder.kohya_subset("12_cats/a.png", src) == (12, "cats")
    assert image_folder.kohya_subset("1_a/2_b/3_c/x.png", src) == (3, "c")
    assert image_folder.kohya_subset("3_c/x/y/z.png", src) == (3, "c")
    assert image_folder.kohya_subset("007_bond/x.png", src) == (7, "bond")
    assert image_folder.kohya_subset("3_/x.png", src) == (2, "src")


# --- source_fingerprint -----------------------------------------------------------------


def _fp(root: Path) -> str:
    return image_folder.source_fingerprint(_source(root), list(EXTS))


def _bump_mtime(path: Path, seconds: int = 10) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 1_000_000_000))


def test_fingerprint_stable_when_nothing_changes(tmp_path):
    _img(tmp_path / "a.png", 1)
    (tmp_path / "a.txt").write_text("x")
    first = _fp(tmp_path)
    assert len(first) == 16 and int(first, 16) >= 0
    assert _fp(tmp_path) == first
    # reading files does not change it
    _rows(_source(tmp_path))
    assert _fp(tmp_path) == first


def test_fingerprint_changes_when_image_added(tmp_path):
    _img(tmp_path / "a.png", 1)
    before = _fp(tmp_path)
    _img(tmp_path / "sub" / "b.png", 2)
    assert _fp(tmp_path) != before


def test_fingerprint_changes_when_image_removed(tmp_path):
    _img(tmp_path / "a.png", 1)
    _img(tmp_path / "b.png", 2)
    before = _fp(tmp_path)
    (tmp_path / "b.png").unlink()
    assert _fp(tmp_path) != before


def test_fingerprint_changes_when_image_rewritten(tmp_path):
    path = _img(tmp_path / "a.png", 1)
    before = _fp(tmp_path)
    _img(path, 2)
    _bump_mtime(path)  # make sure the mtime moves even on coarse-grained filesystems
    assert _fp(tmp_path) != before


def test_fingerprint_changes_when_size_changes_with_same_mtime(tmp_path):
    path = _img(tmp_path / "a.png", 1, size=(10, 10))
    st = path.stat()
    before = _fp(tmp_path)
    _img(path, 1, size=(30, 30))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size != st.st_size
    assert _fp(tmp_path) != before


def test_fingerprint_changes_when_sidecar_added_or_rewritten(tmp_path):
    _img(tmp_path / "a.png", 1)
    before = _fp(tmp_path)
    car = tmp_path / "a.txt"
    car.write_text("tag")
    with_car = _fp(tmp_path)
    assert with_car != before
    car.write_text("other, tags")
    _bump_mtime(car)
    assert _fp(tmp_path) != with_car
    (tmp_path / "a.json").write_text("{}")
    assert _fp(tmp_path) != with_car


def test_fingerprint_changes_when_file_renamed(tmp_path):
    _img(tmp_path / "a.png", 1)
    before = _fp(tmp_path)
    (tmp_path / "a.png").rename(tmp_path / "b.png")
    assert _fp(tmp_path) != before


def test_fingerprint_ignores_irrelevant_files(tmp_path):
    _img(tmp_path / "a.png", 1)
    before = _fp(tmp_path)
    (tmp_path / "notes.md").write_text("irrelevant")
    (tmp_path / ".DS_Store").write_bytes(b"junk")
    _img(tmp_path / ".hidden" / "h.png", 3)
    (tmp_path / "empty_dir").mkdir()
    assert _fp(tmp_path) == before


def test_fingerprint_of_missing_folder(tmp_path):
    fp = _fp(tmp_path / "nope")
    assert fp.startswith("unreadable: ")
    assert str(tmp_path / "nope") in fp


def test_fingerprint_extension_case_insensitive(tmp_path):
    _img(tmp_path / "A.PNG", 1)
    before = image_folder.source_fingerprint(_source(tmp_path), [".PNG"])
    assert before == image_folder.source_fingerprint(_source(tmp_path), [".png"])
    assert before != image_folder.source_fingerprint(_source(tmp_path), [".jpg"])


def test_sidecar_generated_string_false_is_false(tmp_path):
    from trainset.config import Source
    from trainset.sources.image_folder import read_sidecar

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "a.json").write_text('{"tags": ["x"], "generated": "false"}')
    (tmp_path / "b.json").write_text('{"tags": ["x"], "generated": "maybe"}')
    src = Source(name="s", kind="image_folder", path=tmp_path, license="l")
    assert read_sidecar(tmp_path / "a.png", src)["generated"] is False
    bad = read_sidecar(tmp_path / "b.png", src)
    assert bad["sidecar_error"] and "b.json" in bad["sidecar_error"] and "generated" in bad["sidecar_error"]
