"""The built-in demo source must be deterministic and match its ground truth.

The pipeline's end-to-end checks compare their results with ``truth()``, so
these tests verify that every claim in the truth actually holds for the files
on disk (duplicates really are duplicates, look-alikes really are far apart in
pHash, broken files really fail to load, ...).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import imagehash
import pytest
from PIL import Image, UnidentifiedImageError

from trainset import demo

NEAR_MAX = 6
LOOKALIKE_MIN = 18


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Two independent materializations plus the truth returned by the first."""
    a = tmp_path_factory.mktemp("a") / "demo"
    b = tmp_path_factory.mktemp("b") / "demo"
    truth_a = demo.materialize(a)
    demo.materialize(b)
    return a, b, truth_a


@pytest.fixture(scope="module")
def hashes(built):
    """pHash of every loadable image the pipeline is expected to keep or dedupe."""
    root, _, truth = built
    skip = set(truth["broken"]) | set(truth["too_small"])
    out = {}
    for rel in truth["images"]:
        if rel in skip:
            continue
        with Image.open(root / rel) as im:
            out[rel] = imagehash.phash(im)
    return out


def test_materialize_is_byte_identical(built):
    a, b, _ = built
    ta, tb = _tree(a), _tree(b)
    assert ta.keys() == tb.keys()
    assert all(ta[k] == tb[k] for k in ta)
    assert not a.with_name(a.name + ".tmp").exists()


def test_truth_is_pure_and_matches_files(built):
    root, _, returned = built
    assert demo.truth() == returned
    files = set(_tree(root))
    images = {f for f in files if f.lower().endswith(demo.IMAGE_EXTENSIONS)}
    assert sorted(images) == returned["images"]
    sidecars = files - images
    assert all(f.endswith((".txt", ".json")) for f in sidecars), "only images and sidecars in the folder"
    stems = {f.rsplit(".", 1)[0] for f in images}
    assert all(f.rsplit(".", 1)[0] in stems for f in sidecars), "every sidecar belongs to an image"


def test_size_budget(built):
    root, _, _ = built
    assert sum(len(v) for v in _tree(root).values()) < 6_000_000


def test_replaces_existing_contents(tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "stale.png").write_bytes(b"old")
    (tmp_path / "demo.tmp").mkdir()
    (tmp_path / "demo.tmp" / "leftover.png").write_bytes(b"half")
    demo.materialize(out)
    assert not (out / "stale.png").exists()
    assert not (tmp_path / "demo.tmp").exists()
    assert set(demo.truth()["images"]) <= set(_tree(out))


def test_exact_duplicates_share_sha256(built):
    root, _, truth = built
    assert len(truth["exact_duplicates"]) >= 3
    folders = set()
    for orig, copy in truth["exact_duplicates"]:
        assert orig != copy
        assert hashlib.sha256((root / orig).read_bytes()).digest() == hashlib.sha256((root / copy).read_bytes()).digest()
        folders.add((Path(orig).parent, Path(copy).parent))
    assert any(o != c for o, c in folders), "at least one copy lives in another folder"


def test_near_duplicates_are_close(built, hashes):
    root, _, truth = built
    kinds = {k for _, _, k in truth["near_duplicates"]}
    assert kinds == {"resized", "recompressed", "cropped", "upscaled_generated"}
    for orig, variant, kind in truth["near_duplicates"]:
        assert (root / orig).read_bytes() != (root / variant).read_bytes()
        assert hashes[orig] - hashes[variant] <= NEAR_MAX, (orig, variant, kind)
        if kind == "upscaled_generated":
            sidecar = json.loads((root / variant).with_suffix(".json").read_text())
            assert sidecar["generated"] is True
            with Image.open(root / orig) as a, Image.open(root / variant) as b:
                assert b.width * b.height > a.width * a.height


def test_lookalikes_stay_apart(built, hashes):
    _, _, truth = built
    assert len(truth["distinct_lookalikes"]) >= 2
    # each image's dedupe group: originals plus their exact and near copies
    group = {p: p for p in hashes}
    for orig, copy in truth["exact_duplicates"]:
        group[copy] = orig
    for orig, variant, _ in truth["near_duplicates"]:
        group[variant] = orig
    for a, b in truth["distinct_lookalikes"]:
        assert hashes[a] - hashes[b] >= LOOKALIKE_MIN, (a, b)
        for member in (a, b):
            for other in hashes:
                if group[other] != group[member]:
                    assert hashes[member] - hashes[other] >= LOOKALIKE_MIN, (member, other)


def test_broken_files_fail_as_stated(built):
    root, _, truth = built
    assert set(truth["broken"].values()) == {"zero_byte", "not_image", "truncated"}
    for rel, kind in truth["broken"].items():
        path = root / rel
        if kind == "zero_byte":
            assert path.stat().st_size == 0
        elif kind == "not_image":
            assert path.stat().st_size > 0
            with pytest.raises(UnidentifiedImageError):
                Image.open(path)
        elif kind == "truncated":
            with Image.open(path) as im:
                assert im.format == "JPEG"
                with pytest.raises(OSError, match="truncated"):
                    im.load()
        else:  # pragma: no cover - spec guard
            pytest.fail(f"unknown broken kind {kind}")


def test_image_sizes(built):
    root, _, truth = built
    assert truth["too_small"]
    for rel in truth["too_small"]:
        with Image.open(root / rel) as im:
            im.load()
            assert min(im.size) < demo.MIN_SIDE
    generated = {v for _, v, k in truth["near_duplicates"] if k == "upscaled_generated"}
    for rel in truth["images"]:
        if rel in truth["broken"] or rel in truth["too_small"]:
            continue
        with Image.open(root / rel) as im:
            im.load()
            assert min(im.size) >= demo.MIN_SIDE, rel
            if rel not in generated:
                assert max(im.size) <= demo.MAX_SIDE, rel


def test_sidecars_parse_and_match(built):
    root, _, truth = built
    assert len(truth["tags"]) >= 10
    assert {"g", "s", "q"} <= set(truth["ratings"].values())
    assert any(len(r) > 1 for r in truth["ratings"].values()), "full-word ratings are present too"
    for rel, tags in truth["tags"].items():
        txt, js = (root / rel).with_suffix(".txt"), (root / rel).with_suffix(".json")
        assert txt.exists() != js.exists(), rel
        if txt.exists():
            parsed = [t.strip() for t in txt.read_text().split(",") if t.strip()]
            assert rel not in truth["ratings"]
        else:
            data = json.loads(js.read_text())
            parsed = data["tags"]
            assert data.get("rating") == truth["ratings"].get(rel)
        assert parsed == tags
        assert tags and all(t == t.strip() and " " not in t for t in tags)


def test_repeats_follow_kohya_folders(built):
    _, _, truth = built
    for rel in truth["images"]:
        folder = Path(rel).parent.name
        head, _, rest = folder.partition("_")
        if head.isdigit() and rest:
            assert truth["repeats"][rel] == int(head)
        else:
            assert rel not in truth["repeats"]
    assert set(truth["repeats"].values()) == {1, 2}


def test_distinct_bases_are_not_near_each_other(built, hashes):
    """Unrelated images must not collide, or dedupe results would be ambiguous."""
    _, _, truth = built
    group = {p: p for p in hashes}
    for orig, copy in truth["exact_duplicates"]:
        group[copy] = orig
    for orig, variant, _ in truth["near_duplicates"]:
        group[variant] = orig
    for a, b in itertools.combinations(hashes, 2):
        if group[a] != group[b]:
            assert hashes[a] - hashes[b] > NEAR_MAX * 2, (a, b)
