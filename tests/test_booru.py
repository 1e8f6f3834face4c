"""trainset.sources.booru: booru post records (Danbooru, Gelbooru, Safebooru, Moebooru) joined to image files.

Records here copy the field layout of real API answers (values invented); images are real files
written with Pillow.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from trainset import hashing, schemas
from trainset.config import Source, sources_from_params
from trainset.sources import READERS, booru, read_source
from trainset.sources import source_fingerprint as any_fingerprint
from trainset.sources.image_folder import SourceError
from trainset.stages import ingest

EXTS = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")


# --- helpers ------------------------------------------------------------------------------


def _img(path: Path, seed: int = 0, fmt: str | None = None) -> str:
    """Write a small real image; return its md5."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, size=(16, 24, 3), dtype=np.uint8)
    Image.fromarray(arr, "RGB").save(path, format=fmt)
    return hashlib.md5(path.read_bytes()).hexdigest()


def _source(images: Path, metadata: Path, site: str = "danbooru", join: str = "auto", name: str = "dump", **kw) -> Source:
    return Source(
        name=name, kind="booru", path=images, license="CC-BY-4.0", metadata=metadata, site=site, join=join,
        rating_scheme=site, **kw,
    )


def _read(source: Source) -> dict[str, dict]:
    rows = list(booru.read(source, EXTS, lambda full, st, rel: hashing.sha256_file(full), lambda p: p.as_posix()))
    return {r["rel_path"]: r for r in rows}


def _write_records(path: Path, posts: list[dict], form: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if form == "array":
        path.write_text(json.dumps(posts, indent=2), encoding="utf-8")
    elif form == "posts":
        path.write_text(json.dumps({"posts": posts}), encoding="utf-8")
    elif form == "gelbooru":
        path.write_text(json.dumps({"@attributes": {"limit": 100, "offset": 0, "count": len(posts)}, "post": posts}), encoding="utf-8")
    elif form == "jsonl":
        path.write_text("".join(json.dumps(p) + "\n" for p in posts), encoding="utf-8")
    else:
        raise AssertionError(form)
    return path


# --- real-shaped records (field layout as the sites send it; values invented) -------------


def danbooru_v2(pid: int, md5: str | None, ext: str = "png", rating: str = "s") -> dict:
    post = {
        "id": pid,
        "created_at": "2023-03-17T03:50:48.762-04:00",
        "uploader_id": 5001,
        "score": 12,
        "source": f"https://twitter.com/someone/status/{pid}",
        "md5": md5,
        "last_comment_bumped_at": None,
        "rating": rating,
        "image_width": 24,
        "image_height": 16,
        "tag_string": "1girl absurdres highres maker_(artist) original red_theme solo test_girl",
        "fav_count": 3,
        "file_ext": ext,
        "parent_id": None,
        "has_children": False,
        "tag_count_general": 3,
        "tag_count_artist": 1,
        "tag_count_character": 1,
        "tag_count_copyright": 1,
        "file_size": 1234,
        "is_deleted": False,
        "tag_count": 8,
        "pixiv_id": None,
        "tag_count_meta": 2,
        "tag_string_general": "1girl red_theme solo",
        "tag_string_character": "test_girl",
        "tag_string_copyright": "original",
        "tag_string_artist": "maker_(artist)",
        "tag_string_meta": "absurdres highres",
        "file_url": f"https://cdn.donmai.test/original/{(md5 or 'xx')[:2]}/{(md5 or 'xx')[2:4]}/{md5}.{ext}",
    }
    if md5 is None:  # Danbooru hides md5 and file_url for some posts
        del post["md5"], post["file_url"]
    return post


def danbooru_v1(pid: int, md5: str, ext: str = "png", rating: str = "s") -> dict:
    return {
        "status": "active",
        "creator_id": 1,
        "preview_width": 100,
        "source": "",
        "author": "nil!",
        "width": 24,
        "score": 1,
        "preview_height": 150,
        "has_comments": False,
        "sample_url": f"http://behoimi.test/data/sample/{md5[:2]}/{md5[2:4]}/sample{md5}.jpg",
        "file_url": f"http://behoimi.test/data/{md5[:2]}/{md5[2:4]}/{md5}.{ext}",
        "parent_id": None,
        "md5": md5,
        "tags": "blonde_hair cosplay gloves skirt thighhighs",
        "change": 1276102,
        "has_notes": False,
        "rating": rating,
        "id": pid,
        "height": 16,
        "file_size": 1234,
        "created_at": {"n": 42631000, "s": 1678977249, "json_class": "Time"},
    }


def gelbooru(pid: int, md5: str, ext: str = "png", rating: str = "sensitive") -> dict:
    return {
        "id": pid,
        "created_at": "Sat Mar 04 09:16:56 -0600 2023",
        "score": 4,
        "width": 24,
        "height": 16,
        "md5": md5,
        "directory": f"{md5[:2]}/{md5[2:4]}",
        "image": f"{md5}.{ext}",
        "rating": rating,
        "source": "https://www.pixiv.net/artworks/1",
        "change": 1678847338,
        "owner": "danbooru",
        "creator_id": 6498,
        "parent_id": 0,
        "sample": 0,
        "tags": "1girl &gt;_&lt; jack-o&#039;-lantern blue_eyes solo",
        "title": "",
        "has_notes": "false",
        "has_comments": "false",
        "file_url": f"https://img3.gelbooru.test/images/{md5[:2]}/{md5[2:4]}/{md5}.{ext}",
        "status": "active",
        "post_locked": 0,
        "has_children": "false",
    }


def gelbooru_02(pid: int, md5: str, ext: str = "png", rating: str = "general") -> dict:
    return {
        "directory": "4111",
        "hash": md5,
        "height": 16,
        "id": pid,
        "image": f"{'9' * 40}{pid}.{ext}",
        "change": 1679041810,
        "owner": "danbooru",
        "parent_id": 0,
        "rating": rating,
        "sample": False,
        "sample_height": 0,
        "sample_width": 0,
        "score": None,
        "tags": "bow fire hair_bow miss_kobayashi&#039;s_dragon_maid white_hair",
        "width": 24,
    }


def moebooru(pid: int, md5: str, ext: str = "png", rating: str = "s") -> dict:
    return {
        "id": pid,
        "tags": "building long_hair scenic",
        "created_at": 1679029764,
        "creator_id": 41748,
        "author": "FormX",
        "change": 2224805,
        "source": "https://www.pixiv.net/en/artworks/2",
        "score": 3,
        "md5": md5,
        "file_size": 1234,
        "file_url": f"https://konachan.test/image/{md5}/Konachan.com%20-%20{pid}%20building%20long_hair.{ext}",
        "is_shown_in_index": True,
        "preview_url": f"https://konachan.test/data/preview/{md5[:2]}/{md5[2:4]}/{md5}.jpg",
        "jpeg_url": f"https://konachan.test/jpeg/{md5}/Konachan.com%20-%20{pid}.jpg",
        "rating": rating,
        "has_children": False,
        "parent_id": None,
        "status": "active",
        "width": 24,
        "height": 16,
        "is_held": False,
        "frames_pending_string": "",
        "frames_pending": [],
        "frames_string": "",
        "frames": [],
    }


def safebooru_analysis(pid: int, md5: str, ext: str = "png", rating: str = "s") -> dict:
    return {
        "_id": pid,
        "created_at": "2013-07-27T09:25:11.164-04:00",
        "uploader_id": 34312,
        "score": 19,
        "source": "http://i2.pixiv.test/img48/img/someone/1.jpg",
        "md5": md5,
        "rating": rating,
        "image_width": 24,
        "image_height": 16,
        "tag_string": ["3girls", "blue_hair", "commentary_request", "furude_rika", "higurashi_no_naku_koro_ni", "miko", "some_artist"],
        "fav_count": 24,
        "file_ext": ext,
        "tag_count_general": 3,
        "tag_string_general": ["3girls", "blue_hair", "miko"],
        "tag_string_character": ["furude_rika"],
        "tag_string_copyright": ["higurashi_no_naku_koro_ni"],
        "tag_string_artist": ["some_artist"],
        "tag_string_meta": ["commentary_request"],
        "file_url": f"https://cdn.donmai.test/original/{md5[:2]}/{md5[2:4]}/{md5}.{ext}",
    }


# shape -> (builder, site, expected tags, expected artists, expected rating, score, source_url)
SHAPES = {
    "danbooru_v2": (
        danbooru_v2, "danbooru",
        ["1girl", "absurdres", "highres", "maker_(artist)", "original", "red_theme", "solo", "test_girl"],
        ["maker_(artist)"], "sensitive", 12.0, "https://twitter.com/someone/status/{pid}",
    ),
    "danbooru_v1": (
        danbooru_v1, "danbooru", ["blonde_hair", "cosplay", "gloves", "skirt", "thighhighs"], [], "sensitive", 1.0, None,
    ),
    "gelbooru": (
        gelbooru, "gelbooru", ["1girl", ">_<", "jack-o'-lantern", "blue_eyes", "solo"], [], "sensitive", 4.0,
        "https://www.pixiv.net/artworks/1",
    ),
    "gelbooru_02": (
        gelbooru_02, "gelbooru", ["bow", "fire", "hair_bow", "miss_kobayashi's_dragon_maid", "white_hair"], [], "general",
        None, None,
    ),
    "moebooru": (
        moebooru, "moebooru", ["building", "long_hair", "scenic"], [], "general", 3.0, "https://www.pixiv.net/en/artworks/2",
    ),
    "safebooru_analysis": (
        safebooru_analysis, "safebooru",
        ["3girls", "blue_hair", "commentary_request", "furude_rika", "higurashi_no_naku_koro_ni", "miko", "some_artist"],
        ["some_artist"], "general", 19.0, "http://i2.pixiv.test/img48/img/someone/1.jpg",
    ),
}
FORMS = {"array": "posts.json", "posts": "posts.json", "gelbooru": "page.json", "jsonl": "posts.jsonl"}


# --- every site shape in every container ------------------------------------------------


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("shape", list(SHAPES))
def test_site_shapes_in_every_container(tmp_path, shape, form):
    build, site, tags, artists, rating, score, url = SHAPES[shape]
    images = tmp_path / "images"
    md5_a = _img(images / "a" / "first.png", seed=1)
    md5_b = _img(images / "second.jpg", seed=2, fmt="JPEG")
    posts = [build(101, md5_a, "png"), build(102, md5_b, "jpg")]
    meta = _write_records(tmp_path / "meta" / FORMS[form], posts, form)
    rows = _read(_source(images, meta, site=site))

    assert sorted(rows) == ["a/first.png", "second.jpg"]
    for rel, pid in (("a/first.png", "101"), ("second.jpg", "102")):
        row = rows[rel]
        assert row["tags"] == tags
        assert row["artists"] == artists
        assert row["rating"] == rating
        assert row["post_id"] == pid
        assert row["source_url"] == (url.format(pid=pid) if url else None)
        assert row["score"] == score
        assert row["sidecar"] == FORMS[form]
        assert row["sidecar_error"] is None
        assert row["ingest_reason"] is None and row["ingest_detail"] is None
        assert row["item_id"] == f"dump:{rel}"
        assert row["license"] == "CC-BY-4.0"
        assert row["generated"] is False and row["weight"] == 1.0 and row["repeats"] == 1 and row["subset"] == "dump"
    assert booru.unmatched_records(_source(images, meta, site=site)) == []


def test_rows_have_the_image_folder_keys_plus_booru_ones(tmp_path):
    images = tmp_path / "images"
    md5 = _img(images / "x.png")
    meta = _write_records(tmp_path / "posts.json", [danbooru_v2(1, md5)], "array")
    (row,) = _read(_source(images, meta)).values()
    assert set(row) == {
        "item_id", "sha256", "source", "rel_path", "path", "size", "license", "original_name", "tags", "rating",
        "generated", "weight", "repeats", "subset", "sidecar", "sidecar_error",
        "artists", "score", "source_url", "post_id", "ingest_reason", "ingest_detail",
    }
    assert row["sha256"] == hashing.sha256_file(images / "x.png")
    assert row["size"] == (images / "x.png").stat().st_size


def test_single_post_object_files(tmp_path):
    """Danbooru's /posts/ID.json is one object; Gelbooru's one-post answer wraps a single post."""
    images = tmp_path / "images"
    md5_a = _img(images / "a.png", 1)
    md5_b = _img(images / "b.png", 2)
    meta = tmp_path / "meta"
    meta.mkdir()
    (meta / "post_id.json").write_text(json.dumps(danbooru_v2(7, md5_a)))
    (meta / "gel.json").write_text(json.dumps({"@attributes": {"limit": 1, "offset": 0, "count": 1}, "post": gelbooru(8, md5_b)}))
    (meta / "empty.json").write_text(json.dumps({"@attributes": {"limit": 100, "offset": 0, "count": 0}}))
    rows = _read(_source(images, meta))
    assert rows["a.png"]["post_id"] == "7" and rows["a.png"]["sidecar"] == "post_id.json"
    assert rows["b.png"]["post_id"] == "8" and rows["b.png"]["sidecar"] == "gel.json"
    assert booru.unmatched_records(_source(images, meta)) == []


def test_category_tags_missing_from_tag_string_are_added_in_category_order(tmp_path):
    post = danbooru_v2(1, None)
    post["tag_string"] = "solo 1girl"
    post["tag_string_general"] = "1girl solo extra_general"
    posts, problems = booru.read_metadata(_write_records(tmp_path / "p.json", [post], "array"))
    assert problems == []
    assert posts[0].tags == ["solo", "1girl", "extra_general", "test_girl", "original", "maker_(artist)", "absurdres", "highres"]


def test_tags_as_objects_with_categories(tmp_path):
    """Danbooru20xx dumps list tags as {id, name, category} objects, numbers as strings."""
    images = tmp_path / "images"
    md5 = _img(images / "x.png")
    post = {
        "id": "123", "md5": md5, "rating": "s", "score": "5", "file_ext": "png", "source": "",
        "tags": [{"id": "1", "name": "1girl", "category": "0"}, {"id": "2", "name": "an_artist", "category": "1"}],
    }
    (row,) = _read(_source(images, _write_records(tmp_path / "d.jsonl", [post], "jsonl"))).values()
    assert row["tags"] == ["1girl", "an_artist"]
    assert row["artists"] == ["an_artist"]
    assert row["score"] == 5.0 and row["post_id"] == "123" and row["source_url"] is None


def test_empty_tags_in_arrays_are_dropped(tmp_path):
    post = safebooru_analysis(5, "0" * 32)
    post["tag_string_artist"] = [""]
    posts, _ = booru.read_metadata(_write_records(tmp_path / "p.json", [post], "array"))
    assert "" not in posts[0].tags and posts[0].artists == []


# --- ratings per site -------------------------------------------------------------------


@pytest.mark.parametrize(
    "site,raw,expected",
    [
        ("danbooru", "s", "sensitive"),
        ("danbooru", "g", "general"),
        ("danbooru", "q", "questionable"),
        ("danbooru", "e", "explicit"),
        ("gelbooru", "s", "general"),
        ("gelbooru", "general", "general"),
        ("gelbooru", "sensitive", "sensitive"),
        ("gelbooru", "questionable", "questionable"),
        ("gelbooru", "explicit", "explicit"),
        ("gelbooru", "Safe", "general"),
        ("moebooru", "s", "general"),
        ("moebooru", "q", "questionable"),
        ("moebooru", "e", "explicit"),
        ("safebooru", "s", "general"),
        ("safebooru", "g", "general"),
        ("danbooru", None, "unknown"),
    ],
)
def test_rating_mapping_per_site(tmp_path, site, raw, expected):
    images = tmp_path / "images"
    md5 = _img(images / "x.png")
    post = danbooru_v2(1, md5, rating=raw)
    (row,) = _read(_source(images, _write_records(tmp_path / "p.json", [post], "array"), site=site)).values()
    assert row["rating"] == expected
    assert row["sidecar_error"] is None


def test_unknown_rating_is_a_sidecar_error_not_a_crash(tmp_path):
    images = tmp_path / "images"
    md5 = _img(images / "x.png")
    post = danbooru_v2(9, md5, rating="spicy")
    (row,) = _read(_source(images, _write_records(tmp_path / "p.json", [post], "array"))).values()
    assert row["rating"] == "unknown" and row["tags"] == [] and row["artists"] == []
    assert row["sidecar"] == "p.json"
    assert row["sidecar_error"].startswith("p.json[0]: ") and "spicy" in row["sidecar_error"]
    assert row["post_id"] == "9"
    assert row["ingest_reason"] is None  # the md5 still matched


@pytest.mark.parametrize(
    "field,value,message",
    [("tags", 42, "'tags' must be"), ("tag_string_artist", {"a": 1}, "tag_string_artist"), ("score", "lots", "score"),
     ("source", ["x"], "'source' must be a string"), ("tag_string", [1, 2], "tag_string")],
)
def test_matched_record_that_cannot_be_parsed(tmp_path, field, value, message):
    images = tmp_path / "images"
    md5 = _img(images / "x.png")
    post = danbooru_v1(3, md5) if field in ("tags", "score", "source") else danbooru_v2(3, md5)
    post[field] = value
    (row,) = _read(_source(images, _write_records(tmp_path / "p.jsonl", [post], "jsonl"))).values()
    assert row["tags"] == [] and row["rating"] == "unknown" and row["score"] is None
    assert row["sidecar_error"].startswith("p.jsonl:1: ") and message in row["sidecar_error"]


# --- joining ----------------------------------------------------------------------------


@pytest.mark.parametrize("join", ["md5", "auto"])
def test_join_by_md5_whatever_the_file_name(tmp_path, join):
    images = tmp_path / "images"
    md5 = _img(images / "holiday" / "IMG_0001.PNG", 4)
    other = _img(images / "unrelated.png", 5)
    posts = [gelbooru(1, "f" * 32), gelbooru(2, md5)]
    rows = _read(_source(images, _write_records(tmp_path / "p.json", posts, "gelbooru"), site="gelbooru", join=join))
    assert rows["holiday/IMG_0001.PNG"]["post_id"] == "2"
    assert rows["unrelated.png"]["post_id"] is None and other
    unmatched = booru.unmatched_records(_source(images, tmp_path / "p.json", site="gelbooru", join=join))
    assert [(u["record_id"], u["md5"]) for u in unmatched] == [("1", "f" * 32)]
    assert unmatched[0]["source"] == "dump" and "no matching image" in unmatched[0]["note"]


def test_md5_join_ignores_file_names(tmp_path):
    images = tmp_path / "images"
    _img(images / "77.png", 1)
    rows = _read(_source(images, _write_records(tmp_path / "p.json", [danbooru_v2(77, "a" * 32)], "array"), join="md5"))
    assert rows["77.png"]["post_id"] is None and rows["77.png"]["tags"] == []
    assert rows["77.png"]["ingest_reason"] is None


@pytest.mark.parametrize(
    "file_name,post",
    [
        ("{md5}.png", lambda md5: danbooru_v2(11, md5)),  # {md5}.{ext}
        ("11.png", lambda md5: danbooru_v2(11, md5)),  # {id}.{ext}
        ("11.png", lambda md5: danbooru_v2(11, None)),  # {id}.{ext}, the post hides its md5
        ("11.webp", lambda md5: danbooru_v2(11, md5, ext="jpg")),  # the stem is the id, another extension
        ("{md5}.png", lambda md5: moebooru(11, md5)),  # extension from file_url
        ("9" * 40 + "11.png", lambda md5: gelbooru_02(11, md5)),  # the 'image' field
        ("danbooru_11_{md5}.png", lambda md5: danbooru_v2(11, md5)),  # gallery-dl style name holding the md5
        ("Some Name.PNG", lambda md5: {**danbooru_v1(11, md5), "file_name": "dl/some name.png"}),
    ],
)
def test_join_by_file_name(tmp_path, file_name, post):
    images = tmp_path / "images"
    scratch = _img(tmp_path / "scratch.png", 6)
    name = file_name.format(md5=scratch)
    (images / "deep" / "er").mkdir(parents=True)
    (images / "deep" / "er" / name).write_bytes((tmp_path / "scratch.png").read_bytes())
    rows = _read(_source(images, _write_records(tmp_path / "p.json", [post(scratch)], "array"), join="filename"))
    row = rows[f"deep/er/{name}"]
    assert row["post_id"] == "11"
    assert row["tags"]
    assert row["ingest_reason"] is None


def test_filename_join_prefers_exact_names_over_stems(tmp_path):
    images = tmp_path / "images"
    md5 = _img(images / "5.png", 1)
    posts = [danbooru_v2(5, None, ext="jpg"), {**danbooru_v1(6, md5), "file_name": "5.png"}]
    (row,) = _read(_source(images, _write_records(tmp_path / "p.json", posts, "array"), join="filename")).values()
    assert row["post_id"] == "6"
    (u,) = booru.unmatched_records(_source(images, tmp_path / "p.json", join="filename"))
    assert u["record_id"] == "5" and "not used" in u["note"] and "post 6" in u["note"]


def test_auto_join_prefers_md5_over_name(tmp_path):
    """Named like post 1, but the content is post 2's: md5 wins, post 1 is reported unused."""
    images = tmp_path / "images"
    md5 = _img(images / "1.png", 3)
    posts = [danbooru_v2(1, "b" * 32), danbooru_v2(2, md5)]
    (row,) = _read(_source(images, _write_records(tmp_path / "p.json", posts, "array"))).values()
    assert row["post_id"] == "2" and row["ingest_reason"] is None
    (u,) = booru.unmatched_records(_source(images, tmp_path / "p.json"))
    assert u["record_id"] == "1" and "not used" in u["note"]


@pytest.mark.parametrize("join", ["filename", "auto"])
def test_md5_mismatch_is_flagged(tmp_path, join):
    images = tmp_path / "images"
    actual = _img(images / "42.png", 8)
    expected = "c" * 32
    (row,) = _read(_source(images, _write_records(tmp_path / "p.json", [danbooru_v2(42, expected)], "array"), join=join)).values()
    assert row["post_id"] == "42"
    assert row["tags"]  # the item keeps its metadata; the filter rejects it
    assert row["ingest_reason"] == "md5_mismatch"
    assert expected in row["ingest_detail"] and actual in row["ingest_detail"]
    assert "p.json[0]" in row["ingest_detail"]


def test_same_record_for_two_copies_of_an_image(tmp_path):
    images = tmp_path / "images"
    md5 = _img(images / "a" / "x.png", 2)
    (images / "b").mkdir()
    (images / "b" / "y.png").write_bytes((images / "a" / "x.png").read_bytes())
    rows = _read(_source(images, _write_records(tmp_path / "p.json", [moebooru(3, md5)], "array"), site="moebooru"))
    assert rows["a/x.png"]["post_id"] == rows["b/y.png"]["post_id"] == "3"
    rows["a/x.png"]["tags"].append("changed")
    assert "changed" not in rows["b/y.png"]["tags"]


def test_md5_computed_only_when_a_record_gives_one(tmp_path, monkeypatch):
    images = tmp_path / "images"
    _img(images / "1.png", 1)
    _img(images / "2.png", 2)
    _img(images / "3.png", 3)
    calls: list[Path] = []
    real = hashing.md5_file
    monkeypatch.setattr(hashing, "md5_file", lambda p: calls.append(Path(p)) or real(p))
    no_md5 = [danbooru_v2(1, None), danbooru_v2(2, None)]
    for join in ("filename", "auto"):
        _read(_source(images, _write_records(tmp_path / "a.json", no_md5, "array"), join=join))
    assert calls == []
    # filename join: only the joined image whose record gives an md5 is hashed (to verify it)
    _read(_source(images, _write_records(tmp_path / "b.json", [danbooru_v2(1, None), danbooru_v2(2, "d" * 32)], "array"), join="filename"))
    assert [p.name for p in calls] == ["2.png"]


# --- a missing record, bad metadata -----------------------------------------------------


def test_image_without_record_is_kept_with_no_tags(tmp_path):
    images = tmp_path / "images"
    md5 = _img(images / "known.png", 1)
    _img(images / "stray.png", 2)
    rows = _read(_source(images, _write_records(tmp_path / "p.json", [danbooru_v2(1, md5)], "array")))
    stray = rows["stray.png"]
    assert stray["tags"] == [] and stray["artists"] == []
    assert stray["rating"] == "unknown"
    assert stray["sidecar"] is None and stray["sidecar_error"] is None
    assert stray["post_id"] is None and stray["score"] is None and stray["source_url"] is None
    assert stray["ingest_reason"] is None
    assert rows["known.png"]["post_id"] == "1"


def test_malformed_jsonl_lines_are_reported_and_the_rest_load(tmp_path, caplog):
    images = tmp_path / "images"
    md5_a = _img(images / "a.png", 1)
    md5_b = _img(images / "b.png", 2)
    meta = tmp_path / "meta" / "posts.jsonl"
    meta.parent.mkdir()
    meta.write_text(
        json.dumps(danbooru_v2(1, md5_a)) + "\n"
        + '{"id": 2, "md5": "broken\n'
        + "\n"
        + "[1, 2]\n"
        + json.dumps(danbooru_v2(3, md5_b)) + "\n"
        + '"just a string"\n',
        encoding="utf-8",
    )
    caplog.set_level(logging.WARNING, logger="trainset.sources.booru")
    source = _source(images, meta.parent)
    rows = _read(source)
    assert rows["a.png"]["post_id"] == "1" and rows["b.png"]["post_id"] == "3"
    assert rows["b.png"]["sidecar"] == "posts.jsonl"
    notes = [u["note"] for u in booru.unmatched_records(source)]
    assert len(notes) == 4
    assert any("posts.jsonl:2" in n and "invalid JSON" in n for n in notes)
    assert any("posts.jsonl:4[0]" in n for n in notes) and any("posts.jsonl:4[1]" in n for n in notes)
    assert any("posts.jsonl:6" in n for n in notes)
    assert "posts.jsonl:2" in caplog.text

    posts, problems = booru.read_metadata(meta)
    assert [p.post_id for p in posts] == ["1", "3"]
    assert [(p.file, p.line, p.index) for p in problems] == [
        ("posts.jsonl", 2, None), ("posts.jsonl", 4, 0), ("posts.jsonl", 4, 1), ("posts.jsonl", 6, None),
    ]


def test_bad_json_file_and_bad_utf8_line_do_not_crash(tmp_path):
    images = tmp_path / "images"
    md5 = _img(images / "a.png", 1)
    meta = tmp_path / "meta"
    meta.mkdir()
    (meta / "broken.json").write_text("[{", encoding="utf-8")
    (meta / "weird.json").write_text(json.dumps({"hello": "world"}), encoding="utf-8")
    (meta / "ok.jsonl").write_bytes(b"\xff\xfe not utf-8\n" + json.dumps(danbooru_v2(1, md5)).encode() + b"\n")
    rows = _read(_source(images, meta))
    assert rows["a.png"]["post_id"] == "1"
    notes = sorted(u["note"] for u in booru.unmatched_records(_source(images, meta)))
    assert len(notes) == 3
    assert any("broken.json" in n and "invalid JSON" in n for n in notes)
    assert any("ok.jsonl:1" in n and "UTF-8" in n for n in notes)
    assert any("weird.json" in n and "not a post record" in n for n in notes)


def test_jsonl_named_json_and_a_bom(tmp_path):
    images = tmp_path / "images"
    md5_a = _img(images / "a.png", 1)
    md5_b = _img(images / "b.png", 2)
    meta = tmp_path / "dump.json"
    meta.write_bytes(b"\xef\xbb\xbf" + (json.dumps(moebooru(1, md5_a)) + "\n" + json.dumps(moebooru(2, md5_b)) + "\n").encode())
    rows = _read(_source(images, meta, site="moebooru"))
    assert rows["a.png"]["post_id"] == "1" and rows["b.png"]["post_id"] == "2"
    assert booru.unmatched_records(_source(images, meta, site="moebooru")) == []


def test_metadata_folder_at_any_depth_and_repeated_posts(tmp_path):
    images = tmp_path / "images"
    md5_a = _img(images / "a.png", 1)
    md5_b = _img(images / "b.png", 2)
    meta = tmp_path / "meta"
    _write_records(meta / "page1.json", [danbooru_v2(1, md5_a)], "array")
    _write_records(meta / "more" / "page2.jsonl", [danbooru_v2(2, md5_b), danbooru_v2(3, "e" * 32)], "jsonl")
    (meta / "post_1.json").write_text(json.dumps(danbooru_v2(1, md5_a)))  # the same post again
    (meta / "notes.txt").write_text("not metadata")
    (meta / ".hidden.json").write_text("[{")
    rows = _read(_source(images, meta))
    assert rows["a.png"]["sidecar"] == "page1.json"  # files in path order: the first listing wins
    assert rows["b.png"]["sidecar"] == "more/page2.jsonl"
    unmatched = booru.unmatched_records(_source(images, meta))
    assert [u["record_id"] for u in unmatched] == ["3"]


def test_kohya_folders_set_repeats_and_subset(tmp_path):
    images = tmp_path / "images"
    md5 = _img(images / "3_cats" / "x.png", 1)
    source = _source(images, _write_records(tmp_path / "p.json", [danbooru_v2(1, md5)], "array"), repeats=2, weight=0.5, generated=True)
    row = _read(source)["3_cats/x.png"]
    assert row["repeats"] == 3 and row["subset"] == "cats"
    assert row["weight"] == 0.5 and row["generated"] is True
    assert row["post_id"] == "1"


def test_missing_metadata_or_image_folder_raises_source_error(tmp_path):
    images = tmp_path / "images"
    _img(images / "a.png")
    with pytest.raises(SourceError, match="metadata"):
        _read(_source(images, tmp_path / "nope.jsonl"))
    meta = _write_records(tmp_path / "p.json", [], "array")
    with pytest.raises(SourceError, match="does not exist"):
        _read(_source(tmp_path / "no_images", meta))


def test_unmatched_records_reads_afresh_when_not_read_yet(tmp_path):
    images = tmp_path / "images"
    _img(images / "a.png")
    meta = _write_records(tmp_path / "p.json", [gelbooru(5, "1" * 32)], "array")
    source = _source(images, meta, site="gelbooru", name="never_read_before")
    booru._LAST.pop(source.name, None)
    (u,) = booru.unmatched_records(source)
    assert u == {"source": "never_read_before", "record_id": "5", "md5": "1" * 32, "note": "no matching image (p.json[0])"}


def test_registered_reader_and_fingerprint(tmp_path):
    assert READERS["booru"] is booru.read
    images = tmp_path / "images"
    md5 = _img(images / "a.png")
    meta = _write_records(tmp_path / "meta" / "p.json", [danbooru_v2(1, md5)], "array")
    source = _source(images, meta.parent)
    rows = read_source(source, extensions=EXTS, digest=lambda f, st, r: "0" * 64, display_path=str)
    assert rows[0]["post_id"] == "1"
    before = any_fingerprint(source, list(EXTS))
    assert before == booru.source_fingerprint(source, list(EXTS)) == any_fingerprint(source, list(EXTS))
    _write_records(meta, [danbooru_v2(1, md5), danbooru_v2(2, "2" * 32)], "array")
    assert any_fingerprint(source, list(EXTS)) != before
    assert booru.source_fingerprint(_source(images, tmp_path / "gone"), list(EXTS)).startswith("unreadable")


def test_md5_file_matches_hashlib(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * (3 << 20) + b"tail")
    assert hashing.md5_file(path) == hashlib.md5(path.read_bytes()).hexdigest()


# --- the ingest stage on a booru source -------------------------------------------------


def test_ingest_stage_on_a_booru_source(tmp_path):
    root = tmp_path / "repo"
    images = root / "data" / "raw" / "dump" / "images"
    md5_a = _img(images / "a.png", 1)
    md5_b = _img(images / "b.jpg", 2, fmt="JPEG")
    _img(images / "stray.png", 3)
    _img(images / "44.png", 4)
    posts = [gelbooru_02(1, md5_a), gelbooru(2, md5_b, ext="jpg", rating="explicit"), danbooru_v1(44, "4" * 32)]
    _write_records(root / "data" / "raw" / "dump" / "posts.jsonl", posts, "jsonl")
    params = {
        "sources": [
            {"name": "dump", "kind": "booru", "path": "data/raw/dump/images", "metadata": "data/raw/dump/posts.jsonl",
             "site": "gelbooru", "license": "see site"},
        ]
    }
    sources = sources_from_params(params, root)
    out = tmp_path / "ingest.parquet"
    df = ingest.run(sources, out, tmp_path / "cache", list(EXTS), root=root)
    schemas.INGEST.validate(df)
    schemas.INGEST.validate(pd.read_parquet(out))
    by = df.set_index("rel_path")
    assert sorted(by.index) == ["44.png", "a.png", "b.jpg", "stray.png"]
    assert by.loc["a.png", "post_id"] == "1" and by.loc["a.png", "rating"] == "general"
    assert math.isnan(by.loc["a.png", "score"])
    assert by.loc["b.jpg", "rating"] == "explicit" and by.loc["b.jpg", "score"] == 4.0
    assert list(by.loc["b.jpg", "tags"]) == ["1girl", ">_<", "jack-o'-lantern", "blue_eyes", "solo"]
    assert by.loc["b.jpg", "source_url"] == "https://www.pixiv.net/artworks/1"
    assert by.loc["44.png", "ingest_reason"] == "md5_mismatch"
    assert by.loc["stray.png", "rating"] == "unknown" and len(by.loc["stray.png", "tags"]) == 0
    assert pd.isna(by.loc["stray.png", "post_id"])
    assert by.loc["a.png", "path"] == "data/raw/dump/images/a.png"
    assert booru.unmatched_records(sources[0]) == []
