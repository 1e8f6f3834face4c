"""filter stage: undecodable and too-small items are rejected with a reason; nothing is lost."""

from __future__ import annotations

import pytest

import stage_helpers as H
from trainset import ledger, manifest, schemas
from trainset.stages import filter as filter_stage

MIN_SIDE = 128


def _garbled_png() -> bytes:
    """A PNG whose compressed pixel data was overwritten: the header reads, decoding fails."""
    data = bytearray(H.encode(H.sample("astronaut.png", (200, 200)), "PNG"))
    start = data.find(b"IDAT") + 20
    for k in range(start, start + 400):
        data[k] ^= 0x5A
    return bytes(data)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("filter")
    raw = tmp_path / "raw"
    H.save(H.sample("astronaut.png", (256, 256)), raw / "good.png")
    H.save(H.sample("chelsea.png", (300, 200)), raw / "photos" / "cat.jpg", quality=90)
    H.save(H.sample("coffee.png", (MIN_SIDE, 200)), raw / "edge.png")  # short side == min_side: kept
    H.write_bytes(raw / "zero.png", b"")
    H.write_bytes(raw / "notes.png", b"these are my notes, not a picture\n" * 4)
    H.truncated_jpeg(raw / "cut.jpg")
    H.write_bytes(raw / "garbled.png", _garbled_png())
    H.save(H.sample("rocket.jpg", (100, 50)), raw / "small.png")
    H.save(H.sample("camera.png", (300, MIN_SIDE - 1), mode="L"), raw / "thin.png")
    c = H.Chain(tmp_path, [H.source(raw)])
    c.ingest()
    c.audit()
    kept = c.filter(MIN_SIDE)
    return c, kept, c.read("rej_filter", schemas.REJECTED)


def test_undecodable_items_rejected_by_decode_rule(chain):
    _, _, rejected = chain
    rows = H.by_id(rejected)
    expected = {
        "src:zero.png": "zero_byte",
        "src:notes.png": "not_image",
        "src:cut.jpg": "truncated",
        "src:garbled.png": "corrupt",
    }
    for item_id, reason in expected.items():
        row = rows[item_id]
        assert row["stage"] == "filter"
        assert row["rule"] == "decode"
        assert row["reason"] == reason
        assert row["detail"]
    assert "0 bytes" in rows["src:zero.png"]["detail"]
    assert "truncated" in rows["src:cut.jpg"]["detail"]
    assert "JPEG" in rows["src:cut.jpg"]["detail"]
    assert "not a recognised image" in rows["src:notes.png"]["detail"]
    assert "PNG decode failed" in rows["src:garbled.png"]["detail"]


def test_too_small_rejected_with_size_and_min_side(chain):
    _, _, rejected = chain
    rows = H.by_id(rejected)
    small = rows["src:small.png"]
    assert (small["stage"], small["rule"], small["reason"]) == ("filter", "min_side", "too_small")
    assert "100x50" in small["detail"]
    assert f"< {MIN_SIDE}" in small["detail"]
    assert "short side 50" in small["detail"]
    thin = rows["src:thin.png"]
    assert thin["reason"] == "too_small"
    assert f"300x{MIN_SIDE - 1}" in thin["detail"] and str(MIN_SIDE) in thin["detail"]


def test_kept_items_are_the_decodable_large_enough_ones(chain):
    c, kept, _ = chain
    assert sorted(kept["item_id"]) == ["src:edge.png", "src:good.png", "src:photos/cat.jpg"]
    assert kept["width"].tolist() and (kept[["width", "height"]].min(axis=1) >= MIN_SIDE).all()
    rows = H.by_id(kept)
    assert (rows["src:photos/cat.jpg"]["format"], rows["src:photos/cat.jpg"]["mode"]) == ("JPEG", "RGB")
    assert (rows["src:edge.png"]["width"], rows["src:edge.png"]["height"]) == (MIN_SIDE, 200)
    assert all(len(p) == 16 for p in kept["phash"])
    # the written manifest is what was returned, and validates as FILTERED
    on_disk = c.read("filtered", schemas.FILTERED)
    assert on_disk["item_id"].tolist() == kept["item_id"].tolist()
    # ingest columns are carried through unchanged
    ingest = H.by_id(c.read("ingest", schemas.INGEST))
    for item_id, row in rows.items():
        assert row["sha256"] == ingest[item_id]["sha256"]
        assert row["path"] == ingest[item_id]["path"]


def test_every_ingest_row_ends_in_exactly_one_place(chain):
    c, kept, rejected = chain
    raw = c.read("ingest", schemas.INGEST)
    assert len(raw) == 9
    kept_ids, rej_ids = set(kept["item_id"]), list(rejected["item_id"])
    assert len(rej_ids) == len(set(rej_ids))
    assert not kept_ids & set(rej_ids)
    assert kept_ids | set(rej_ids) == set(raw["item_id"])
    assert ledger.check(raw, kept, rejected) == {"raw": 9, "kept": 3, "rejected": 6}
    assert set(rejected["path"]) <= set(raw["path"])
    assert set(rejected["source"]) == {"src"}


def test_rejected_sha_and_paths_match_ingest(chain):
    c, _, rejected = chain
    ingest = H.by_id(c.read("ingest", schemas.INGEST))
    for row in rejected.to_dict("records"):
        assert row["sha256"] == ingest[row["item_id"]]["sha256"]
        assert row["path"] == ingest[row["item_id"]]["path"]


def test_nothing_rejected_writes_an_empty_valid_manifest(tmp_path):
    raw = tmp_path / "raw"
    H.save(H.sample("astronaut.png", (200, 200)), raw / "a.png")
    H.save(H.sample("coffee.png", (240, 160)), raw / "b.png")
    c = H.Chain(tmp_path, [H.source(raw)])
    c.ingest()
    c.audit()
    kept = c.filter(MIN_SIDE)
    assert sorted(kept["item_id"]) == ["src:a.png", "src:b.png"]
    rejected = c.read("rej_filter", schemas.REJECTED)
    assert len(rejected) == 0
    assert list(rejected.columns) == list(schemas.REJECTED.columns)


def test_everything_rejected_writes_an_empty_valid_kept_manifest(tmp_path):
    raw = tmp_path / "raw"
    H.write_bytes(raw / "zero.png", b"")
    H.save(H.sample("astronaut.png", (40, 40)), raw / "tiny.png")
    c = H.Chain(tmp_path, [H.source(raw)])
    c.ingest()
    c.audit()
    kept = c.filter(MIN_SIDE)
    assert len(kept) == 0
    assert len(c.read("filtered", schemas.FILTERED)) == 0
    rejected = c.read("rej_filter", schemas.REJECTED)
    assert dict(zip(rejected["item_id"], rejected["reason"])) == {"src:tiny.png": "too_small", "src:zero.png": "zero_byte"}


def test_min_side_is_a_parameter(tmp_path):
    raw = tmp_path / "raw"
    H.save(H.sample("astronaut.png", (200, 150)), raw / "a.png")
    c = H.Chain(tmp_path, [H.source(raw)])
    c.ingest()
    c.audit()
    assert c.filter(150)["item_id"].tolist() == ["src:a.png"]
    assert len(c.filter(151)) == 0
    detail = c.read("rej_filter", schemas.REJECTED)["detail"].iloc[0]
    assert "200x150" in detail and "151" in detail


def test_missing_audit_row_fails_loudly(tmp_path):
    raw = tmp_path / "raw"
    H.save(H.sample("astronaut.png", (200, 200)), raw / "a.png")
    H.save(H.sample("coffee.png", (200, 200)), raw / "b.png")
    c = H.Chain(tmp_path, [H.source(raw)])
    c.ingest()
    audit = c.audit()
    partial = tmp_path / "partial-audit.parquet"
    manifest.write(audit[audit["item_id"] != "src:b.png"], partial, schemas.AUDIT)
    with pytest.raises(ValueError, match="no audit row for src:b.png"):
        filter_stage.run(c.p["ingest"], partial, tmp_path / "f.parquet", tmp_path / "r.parquet", MIN_SIDE)
    assert not (tmp_path / "f.parquet").exists()


def test_duplicate_contents_share_one_audit_decision(tmp_path):
    """Two byte-identical broken files are both rejected, each with its own row."""
    raw = tmp_path / "raw"
    H.write_bytes(raw / "a.png", b"not an image at all")
    H.write_bytes(raw / "sub" / "b.png", b"not an image at all")
    c = H.Chain(tmp_path, [H.source(raw)])
    c.ingest()
    c.audit()
    c.filter(MIN_SIDE)
    rejected = c.read("rej_filter", schemas.REJECTED)
    assert sorted(rejected["item_id"]) == ["src:a.png", "src:sub/b.png"]
    assert set(rejected["reason"]) == {"not_image"}
