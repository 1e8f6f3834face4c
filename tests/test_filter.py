"""filter stage: audit checks and content policy, on tags and ratings merged across copies.

Undecodable files are rejected by the ``decode`` rule and too-small ones by the ``audit`` rule
(stage ``filter``); policy exclusions are stage ``policy`` with the rule that fired and the
tags that triggered it. Nothing is lost: every ingest row is kept or rejected once.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import ImageFilter

import stage_helpers as H
from trainset import annotations, audit_checks, ledger, manifest, overrides, schemas
from trainset.annotations import AnnotationError
from trainset.config import ConfigError
from trainset.overrides import OverridesError
from trainset.policy import Policy, most_severe
from trainset.stages import filter as filter_stage
from trainset.tags import TagDictionary

MIN_SIDE = 128


def _garbled_png() -> bytes:
    """A PNG whose compressed pixel data was overwritten: the header reads, decoding fails."""
    data = bytearray(H.encode(H.sample("astronaut.png", (200, 200)), "PNG"))
    start = data.find(b"IDAT") + 20
    for k in range(start, start + 400):
        data[k] ^= 0x5A
    return bytes(data)


def _prepare(c: H.Chain) -> H.Chain:
    """Every stage the filter reads: ingest, audit, nsfw scores (no model) and groups."""
    c.ingest()
    c.audit()
    c.nsfw()
    c.group()
    return c


# --------------------------------------------------------------------------- decode and too small


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
    c = _prepare(H.Chain(tmp_path, [H.source(raw)]))
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
        assert list(row["triggered_tags"]) == []
    assert "0 bytes" in rows["src:zero.png"]["detail"]
    assert "truncated" in rows["src:cut.jpg"]["detail"]
    assert "JPEG" in rows["src:cut.jpg"]["detail"]
    assert "not a recognised image" in rows["src:notes.png"]["detail"]
    assert "PNG decode failed" in rows["src:garbled.png"]["detail"]


def test_too_small_rejected_by_the_audit_rule_with_size_and_min_side(chain):
    _, _, rejected = chain
    rows = H.by_id(rejected)
    small = rows["src:small.png"]
    assert (small["stage"], small["rule"], small["reason"]) == ("filter", "audit", "too_small")
    assert "100x50" in small["detail"]
    assert f"< {MIN_SIDE}" in small["detail"]
    assert "short side 50" in small["detail"]
    thin = rows["src:thin.png"]
    assert (thin["rule"], thin["reason"]) == ("audit", "too_small")
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
    assert list(on_disk.columns) == list(schemas.FILTERED.columns)
    # ingest columns are carried through unchanged, cluster columns come from the groups
    ingest = H.by_id(c.read("ingest", schemas.INGEST))
    groups = H.by_id(c.read("groups", schemas.GROUPS))
    for item_id, row in rows.items():
        assert row["sha256"] == ingest[item_id]["sha256"]
        assert row["path"] == ingest[item_id]["path"]
        assert row["cluster_key"] == groups[item_id]["cluster_key"]
        assert row["component_key"] == groups[item_id]["component_key"]
        # no NSFW model: no score; nothing flagged NSFW without tags or rating
        assert math.isnan(row["nsfw_score"]) and not row["nsfw_flag"]
        assert pd.isna(row["override"]) and pd.isna(row["caption_override"])


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
    assert set(rejected["stage"]) == {"filter"}


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
    c = _prepare(H.Chain(tmp_path, [H.source(raw)]))
    kept = c.filter(MIN_SIDE)
    assert sorted(kept["item_id"]) == ["src:a.png", "src:b.png"]
    rejected = c.read("rej_filter", schemas.REJECTED)
    assert len(rejected) == 0
    assert list(rejected.columns) == list(schemas.REJECTED.columns)


def test_everything_rejected_writes_an_empty_valid_kept_manifest(tmp_path):
    raw = tmp_path / "raw"
    H.write_bytes(raw / "zero.png", b"")
    H.save(H.sample("astronaut.png", (40, 40)), raw / "tiny.png")
    c = _prepare(H.Chain(tmp_path, [H.source(raw)]))
    kept = c.filter(MIN_SIDE)
    assert len(kept) == 0
    assert len(c.read("filtered", schemas.FILTERED)) == 0
    rejected = c.read("rej_filter", schemas.REJECTED)
    assert dict(zip(rejected["item_id"], rejected["reason"])) == {"src:tiny.png": "too_small", "src:zero.png": "zero_byte"}


def test_min_side_is_a_parameter(tmp_path):
    raw = tmp_path / "raw"
    H.save(H.sample("astronaut.png", (200, 150)), raw / "a.png")
    c = _prepare(H.Chain(tmp_path, [H.source(raw)]))
    assert c.filter(150)["item_id"].tolist() == ["src:a.png"]
    assert len(c.filter(151)) == 0
    detail = c.read("rej_filter", schemas.REJECTED)["detail"].iloc[0]
    assert "200x150" in detail and "151" in detail
    # audit_params["min_side"] is where the workflow sets it (params.yaml audit.min_side)
    assert len(c.filter(64, audit_params={"min_side": 151})) == 0
    assert len(c.filter(151, audit_params={"min_side": 150})) == 1


def _paths(c: H.Chain, **over) -> dict:
    return {"ingest": c.p["ingest"], "audit": c.p["audit"], "groups": c.p["groups"], "nsfw": c.p["nsfw"], **over}


def test_missing_audit_row_fails_loudly(tmp_path):
    raw = tmp_path / "raw"
    H.save(H.sample("astronaut.png", (200, 200)), raw / "a.png")
    H.save(H.sample("coffee.png", (200, 200)), raw / "b.png")
    c = _prepare(H.Chain(tmp_path, [H.source(raw)]))
    audit = c.read("audit", schemas.AUDIT)
    partial = tmp_path / "partial-audit.parquet"
    manifest.write(audit[audit["item_id"] != "src:b.png"], partial, schemas.AUDIT)
    with pytest.raises(ValueError, match="no audit row for src:b.png"):
        filter_stage.run(_paths(c, audit=partial), tmp_path / "f.parquet", tmp_path / "r.parquet", {"min_side": MIN_SIDE}, {})
    assert not (tmp_path / "f.parquet").exists()


def test_missing_group_row_fails_loudly(tmp_path):
    raw = tmp_path / "raw"
    H.save(H.sample("astronaut.png", (200, 200)), raw / "a.png")
    H.save(H.sample("coffee.png", (200, 200)), raw / "b.png")
    c = _prepare(H.Chain(tmp_path, [H.source(raw)]))
    groups = c.read("groups", schemas.GROUPS)
    partial = tmp_path / "partial-groups.parquet"
    manifest.write(groups[groups["item_id"] != "src:a.png"], partial, schemas.GROUPS)
    with pytest.raises(ValueError, match="no group row for src:a.png"):
        filter_stage.run(_paths(c, groups=partial), tmp_path / "f.parquet", tmp_path / "r.parquet", {"min_side": MIN_SIDE}, {})
    assert not (tmp_path / "f.parquet").exists()


def test_nsfw_scores_are_optional(tmp_path):
    raw = tmp_path / "raw"
    H.save(H.sample("astronaut.png", (200, 200)), raw / "a.png")
    c = _prepare(H.Chain(tmp_path, [H.source(raw)]))
    filter_stage.run(_paths(c, nsfw=None), tmp_path / "f.parquet", tmp_path / "r.parquet", {"min_side": MIN_SIDE}, None)
    kept = manifest.read(tmp_path / "f.parquet", schemas.FILTERED)
    assert kept["item_id"].tolist() == ["src:a.png"]
    assert math.isnan(kept["nsfw_score"].iloc[0])


def test_duplicate_contents_share_one_audit_decision(tmp_path):
    """Two byte-identical broken files are both rejected, each with its own row."""
    raw = tmp_path / "raw"
    H.write_bytes(raw / "a.png", b"not an image at all")
    H.write_bytes(raw / "sub" / "b.png", b"not an image at all")
    c = _prepare(H.Chain(tmp_path, [H.source(raw)]))
    c.filter(MIN_SIDE)
    rejected = c.read("rej_filter", schemas.REJECTED)
    assert sorted(rejected["item_id"]) == ["src:a.png", "src:sub/b.png"]
    assert set(rejected["reason"]) == {"not_image"}


# --------------------------------------------------------------------------- policy, end to end


@pytest.fixture(scope="module")
def policy_chain(tmp_path_factory):
    """One raw tree for the policy cases; each test runs the real filter with its own params."""
    tmp_path = tmp_path_factory.mktemp("policy")
    raw, other = tmp_path / "raw", tmp_path / "other"
    size = (160, 160)
    # a minor tag with a sexual rating, and an untagged exact copy of it
    tagged = H.save(H.sample("astronaut.png", size), raw / "minors" / "tagged.png")
    H.sidecar(tagged, ["loli", "smile"], rating="q")
    H.write_bytes(raw / "minors" / "exact_copy.png", tagged.read_bytes())
    # the same with an untagged near-duplicate (smaller, re-encoded) instead
    cat = H.sample("chelsea.png", (240, 160))
    H.sidecar(H.save(cat, raw / "minors2" / "cat.png"), ["child"], rating="explicit")
    H.save(cat.resize((180, 120)), raw / "minors2" / "cat_small.jpg", quality=85)
    # broken files: one whose sidecar has a minor tag and a sexual rating, one without
    H.sidecar(H.write_bytes(raw / "broken" / "zero.png", b""), ["loli"], rating="q")
    H.write_bytes(raw / "broken" / "notes.png", b"not a picture")
    # a spelling the dictionary resolves to a minor tag
    H.sidecar(H.save(H.sample("ihc.png", size), raw / "spelling" / "lolicon.png"), ["Lolicon", "Blue Sky"], rating="explicit")
    # NSFW by rating, and by an explicit tag (alias "Naked" -> nude) at a general rating
    H.sidecar(H.save(H.sample("coffee.png", (240, 160)), raw / "nsfw" / "rated.png"), ["1girl"], rating="e")
    H.sidecar(H.save(H.sample("coins.png", size), raw / "nsfw" / "naked.png"), ["Naked", "beach"], rating="g")
    # tags to canonicalize and edit; an artist tag
    H.sidecar(H.save(H.sample("rocket.jpg", (240, 160)), raw / "tags" / "plain.png"), ["Long Hair", "smile"], rating="g")
    H.sidecar(H.save(H.sample("brick.png", size), raw / "tags" / "by_artist.png"), ["Some Artist", "wall"], rating="g")
    # tagged, and an untagged exact copy of it: the copy is not "untagged" (decisions follow copies)
    tree = H.save(H.sample("color.png", size), raw / "tags" / "tree.png")
    H.sidecar(tree, ["tree"], rating="g")
    H.write_bytes(raw / "untagged" / "tree_copy.png", tree.read_bytes())
    # untagged, unrated images
    H.save(H.sample("grass.png", size), raw / "untagged" / "bare.png")
    H.save(H.sample("hubble_deep_field.jpg", (60, 60)), raw / "untagged" / "small.png")  # too small
    H.save(H.sample("camera.png", size, mode="L"), raw / "untagged" / "gray.png")  # grayscale
    H.save(H.sample("motorcycle_left.png", (240, 160)).filter(ImageFilter.GaussianBlur(5)), raw / "untagged" / "blurry.png")
    # annotated images (matched by path with a folder, or by file name)
    H.sidecar(H.save(H.sample("gravel.png", size), raw / "annotated" / "hi.png"), ["rocks"], rating="g")
    H.sidecar(H.save(H.sample("retina.jpg", size), raw / "annotated" / "lo.png"), ["eye"], rating="g")
    # another source with another license
    H.sidecar(H.save(H.sample("moon.png", size), other / "moon.png"), ["moon"], rating="g")
    c = _prepare(H.Chain(tmp_path, [H.source(raw), H.source(other, name="other", license="proprietary")]))
    groups = H.by_id(c.read("groups", schemas.GROUPS))
    # the fixture's own premise: copies cluster with their originals, nothing else clusters
    together = [("src:minors/tagged.png", "src:minors/exact_copy.png"), ("src:minors2/cat.png", "src:minors2/cat_small.jpg"),
                ("src:tags/tree.png", "src:untagged/tree_copy.png")]
    for a, b in together:
        assert groups[a]["cluster_key"] == groups[b]["cluster_key"], (a, b)
    assert sum(g["cluster_size"] == 2 for g in groups.values()) == 6
    assert sum(g["cluster_size"] == 1 for g in groups.values()) == len(groups) - 6
    return c


def _run(c: H.Chain, **kw) -> tuple[dict, dict]:
    """The filter with ``kw``; (kept, rejected) by item id, after checking the ledger balances."""
    kw.setdefault("min_side", 64)
    kept = c.filter(**kw)
    rejected = c.read("rej_filter", schemas.REJECTED)
    ledger.check(c.read("ingest", schemas.INGEST), kept, rejected)
    return H.by_id(kept), H.by_id(rejected)


def _verdict(row: dict) -> tuple:
    return row["stage"], row["rule"], row["reason"]


def test_untagged_exact_copy_of_a_minor_image_is_excluded(policy_chain):
    kept, rejected = _run(policy_chain, policy={"nsfw": {"action": "allow"}})
    for item_id in ("src:minors/tagged.png", "src:minors/exact_copy.png"):
        row = rejected[item_id]
        assert _verdict(row) == ("policy", "minors", "minor_sexual")
        assert list(row["triggered_tags"]) == ["loli"]
        assert row["detail"] == "minor-indicating tags loli with rating questionable"


def test_untagged_near_copy_of_a_minor_image_is_excluded(policy_chain):
    kept, rejected = _run(policy_chain)
    for item_id in ("src:minors2/cat.png", "src:minors2/cat_small.jpg"):
        assert _verdict(rejected[item_id]) == ("policy", "minors", "minor_sexual")
        assert list(rejected[item_id]["triggered_tags"]) == ["child"]
        assert "rating explicit" in rejected[item_id]["detail"]


def test_broken_file_with_minor_tags_is_excluded_by_minors_not_decode(policy_chain):
    _, rejected = _run(policy_chain)
    assert _verdict(rejected["src:broken/zero.png"]) == ("policy", "minors", "minor_sexual")
    assert list(rejected["src:broken/zero.png"]["triggered_tags"]) == ["loli"]
    # without such tags a broken file is a decode failure, whatever else the policy says
    assert _verdict(rejected["src:broken/notes.png"]) == ("filter", "decode", "not_image")
    _, rejected = _run(policy_chain, policy={"untagged": "quarantine"})
    assert _verdict(rejected["src:broken/notes.png"]) == ("filter", "decode", "not_image")


def test_tag_dictionary_canonicalizes_before_policy(policy_chain, tmp_path):
    kept, rejected = _run(policy_chain)
    row = rejected["src:spelling/lolicon.png"]
    assert _verdict(row) == ("policy", "minors", "minor_sexual")
    assert list(row["triggered_tags"]) == ["loli"]
    # kept tags are canonical spellings
    assert kept["src:tags/plain.png"]["tags"] == ["long_hair", "smile"]
    assert kept["src:nsfw/naked.png"]["tags"] == ["nude", "beach"]
    assert "src:tags/by_artist.png" in kept
    # a user dictionary adds an alias to a minor tag: "Rocks" now reads as "child"
    extra = tmp_path / "extra.csv"
    extra.write_text('child,0,0,"rocks"\n', encoding="utf-8")
    kept, rejected = _run(policy_chain, dictionaries=[extra])
    assert "src:annotated/hi.png" in kept, "a general rating and no explicit tag: minors does not fire"
    assert kept["src:annotated/hi.png"]["tags"] == ["child"]
    kept, rejected = _run(policy_chain, dictionaries=[extra], policy={"minors": {"exclude_at_any_rating": True}})
    assert _verdict(rejected["src:annotated/hi.png"]) == ("policy", "minors", "minor_any_rating")


def test_nsfw_is_flagged_by_default(policy_chain):
    kept, rejected = _run(policy_chain)
    for item_id in ("src:nsfw/rated.png", "src:nsfw/naked.png"):
        assert kept[item_id]["nsfw_flag"]
        assert "nsfw" in list(kept[item_id]["flags"])
    assert kept["src:nsfw/rated.png"]["rating"] == "explicit"
    assert not kept["src:tags/plain.png"]["nsfw_flag"] and "nsfw" not in list(kept["src:tags/plain.png"]["flags"])


def test_nsfw_exclude_and_allow(policy_chain):
    kept, rejected = _run(policy_chain, policy={"nsfw": {"action": "exclude"}})
    assert _verdict(rejected["src:nsfw/rated.png"]) == ("policy", "nsfw", "nsfw")
    assert "rating explicit" in rejected["src:nsfw/rated.png"]["detail"]
    assert _verdict(rejected["src:nsfw/naked.png"]) == ("policy", "nsfw", "nsfw")
    assert list(rejected["src:nsfw/naked.png"]["triggered_tags"]) == ["nude"]
    assert "src:tags/plain.png" in kept
    kept, _ = _run(policy_chain, policy={"nsfw": {"action": "allow"}})
    assert kept["src:nsfw/rated.png"]["nsfw_flag"] and "nsfw" not in list(kept["src:nsfw/rated.png"]["flags"])
    kept, rejected = _run(policy_chain, policy={"nsfw": {"action": "exclude", "ratings": ["explicit"]}})
    assert "src:nsfw/rated.png" in rejected and "src:nsfw/naked.png" in rejected


def test_annotations_join_and_low_harmony_is_excluded(policy_chain, tmp_path):
    notes = H.write_csv(tmp_path / "notes.csv", ["filename", "archetype", "emotion", "harmony_score", "notes"], [
        ["annotated/hi.png", "hero", "joy", "3.5", "nice"],
        ["lo.png", "villain", "anger", "1.5", ""],
    ])
    kept, rejected = _run(policy_chain, annotations=[notes])
    hi = kept["src:annotated/hi.png"]
    assert (hi["archetype"], hi["emotion"], hi["harmony_score"], hi["annotation_notes"]) == ("hero", "joy", 3.5, "nice")
    row = rejected["src:annotated/lo.png"]
    assert _verdict(row) == ("policy", "annotations", "low_harmony")
    assert row["detail"] == "harmony score 1.5 < 2"
    assert pd.isna(kept["src:tags/plain.png"]["archetype"]) and math.isnan(kept["src:tags/plain.png"]["harmony_score"])
    # the threshold is a policy param (null: off); quality can use any numeric column
    kept, _ = _run(policy_chain, annotations=[notes], policy={"min_harmony": None})
    assert "src:annotated/lo.png" in kept
    _, rejected = _run(policy_chain, annotations=[notes], policy={"min_harmony": None, "quality": {"column": "harmony_score", "min": 4}})
    assert _verdict(rejected["src:annotated/hi.png"]) == ("policy", "quality", "low_quality")


def test_bad_annotation_file_fails_naming_the_line(policy_chain, tmp_path):
    bad = H.write_csv(tmp_path / "bad.csv", ["filename", "harmony_score"], [["hi.png", "3"], ["lo.png", "high"]])
    with pytest.raises(AnnotationError, match="line 3"):
        policy_chain.filter(64, annotations=[bad])


def _overrides(path, rows):
    return H.write_csv(path, ["sha256", "action", "add_tags", "remove_tags", "caption", "note"], rows)


def test_overrides_exclude_add_remove_tags_and_caption(policy_chain, tmp_path):
    sha = H.by_id(policy_chain.read("ingest", schemas.INGEST))
    edits = _overrides(tmp_path / "overrides.csv", [
        [sha["src:tags/plain.png"]["sha256"], "", "Blue Eyes, outdoors", "smile", "a rocket on a pad", "retagged"],
        [sha["src:tags/by_artist.png"]["sha256"], "exclude", "", "", "", "not ours to use"],
    ])
    kept, rejected = _run(policy_chain, overrides=edits)
    plain = kept["src:tags/plain.png"]
    assert plain["tags"] == ["long_hair", "blue_eyes", "outdoors"]
    assert plain["caption_override"] == "a rocket on a pad"
    assert "note=retagged" in plain["override"] and "caption=a rocket on a pad" in plain["override"]
    row = rejected["src:tags/by_artist.png"]
    assert _verdict(row) == ("policy", "override", "manual_exclude")
    assert row["detail"] == "not ours to use"
    assert pd.isna(kept["src:nsfw/rated.png"]["override"]) and pd.isna(kept["src:nsfw/rated.png"]["caption_override"])


def test_keep_override_readmits_nsfw_and_too_small_but_not_minors(policy_chain, tmp_path):
    sha = H.by_id(policy_chain.read("ingest", schemas.INGEST))
    edits = tmp_path / "overrides.yaml"  # the YAML form of the same file
    edits.write_text(yaml.safe_dump([
        {"sha256": sha["src:nsfw/rated.png"]["sha256"], "action": "keep", "note": "reviewed"},
        {"sha256": sha["src:minors/tagged.png"]["sha256"], "action": "keep", "note": "reviewed"},
        {"sha256": sha["src:untagged/small.png"]["sha256"], "action": "keep"},
    ]), encoding="utf-8")
    kept, rejected = _run(policy_chain, overrides=edits, policy={"nsfw": {"action": "exclude"}})
    rated = kept["src:nsfw/rated.png"]
    assert "override_kept:nsfw" in list(rated["flags"]) and rated["nsfw_flag"]
    assert rated["override"].startswith("action=keep")
    assert _verdict(rejected["src:nsfw/naked.png"]) == ("policy", "nsfw", "nsfw")  # no override for this one
    for item_id in ("src:minors/tagged.png", "src:minors/exact_copy.png"):
        assert _verdict(rejected[item_id]) == ("policy", "minors", "minor_sexual")
    # an audit rejection is lifted too, the finding kept as a flag
    assert "too_small" in list(kept["src:untagged/small.png"]["flags"])


def test_bad_overrides_file_fails(policy_chain, tmp_path):
    edits = _overrides(tmp_path / "overrides.csv", [["not-a-sha", "keep", "", "", "", ""]])
    with pytest.raises(OverridesError, match="line 2"):
        policy_chain.filter(64, overrides=edits)
    with pytest.raises(OverridesError, match="not found"):
        policy_chain.filter(64, overrides=tmp_path / "missing.csv")


def test_untagged_quarantine_and_flag(policy_chain):
    untagged = ["src:untagged/bare.png", "src:untagged/gray.png", "src:untagged/blurry.png"]
    kept, rejected = _run(policy_chain, policy={"untagged": "quarantine"})
    for item_id in untagged:
        assert _verdict(rejected[item_id]) == ("policy", "untagged", "untagged_quarantined")
    # an untagged exact copy of a tagged image has the copy's tags: not untagged
    assert kept["src:untagged/tree_copy.png"]["tags"] == ["tree"]
    assert kept["src:untagged/tree_copy.png"]["rating"] == "general"
    kept, _ = _run(policy_chain, policy={"untagged": "flag"})
    assert all("untagged" in list(kept[i]["flags"]) for i in untagged)
    assert "untagged" not in list(kept["src:untagged/tree_copy.png"]["flags"])
    kept, _ = _run(policy_chain)
    assert all(i in kept and "untagged" not in list(kept[i]["flags"]) for i in untagged)


def test_license_allowlist(policy_chain):
    kept, rejected = _run(policy_chain, policy={"license_allowlist": ["CC0-1.0"]})
    row = rejected["other:moon.png"]
    assert _verdict(row) == ("policy", "license", "license_not_allowed")
    assert "'proprietary'" in row["detail"]
    assert all(r["rule"] != "license" for i, r in rejected.items() if i != "other:moon.png")
    kept, _ = _run(policy_chain, policy={"license_allowlist": ["CC0-1.0", "proprietary"]})
    assert "other:moon.png" in kept


def test_excluded_artists(policy_chain):
    _, rejected = _run(policy_chain, policy={"excluded_artists": ["SOME ARTIST"]})
    row = rejected["src:tags/by_artist.png"]
    assert _verdict(row) == ("policy", "artists", "excluded_artist")
    assert list(row["triggered_tags"]) == ["some_artist"]
    assert sum(r["rule"] == "artists" for r in rejected.values()) == 1


def test_audit_findings_are_flags_by_default(policy_chain):
    kept, rejected = _run(policy_chain)
    assert "blurry" in list(kept["src:untagged/blurry.png"]["flags"])
    assert "grayscale" in list(kept["src:untagged/gray.png"]["flags"])
    assert _verdict(rejected["src:untagged/small.png"]) == ("filter", "audit", "too_small")


def test_audit_actions_param(policy_chain):
    kept, rejected = _run(policy_chain, audit_params={"actions": {"blurry": "reject", "grayscale": "off"}})
    row = rejected["src:untagged/blurry.png"]
    assert _verdict(row) == ("filter", "audit", "blurry")
    assert "Laplacian variance" in row["detail"] and "< 60" in row["detail"]
    assert "grayscale" not in list(kept["src:untagged/gray.png"]["flags"])
    # too_small can be turned into a flag, and a threshold moved
    kept, rejected = _run(policy_chain, audit_params={"actions": {"too_small": "flag"}, "min_laplacian_var": 0})
    assert "too_small" in list(kept["src:untagged/small.png"]["flags"])
    assert "blurry" not in list(kept["src:untagged/blurry.png"]["flags"])


def test_bad_audit_actions_and_policy_params_fail_naming_the_key(policy_chain):
    with pytest.raises(ConfigError, match="audit.actions.blurry"):
        policy_chain.filter(64, audit_params={"actions": {"blurry": "maybe"}})
    with pytest.raises(ConfigError, match="audit.actions.no_such_check"):
        policy_chain.filter(64, audit_params={"actions": {"no_such_check": "flag"}})
    with pytest.raises(ConfigError, match="policy.nsfw.action"):
        policy_chain.filter(64, policy={"nsfw": {"action": "sometimes"}})
    with pytest.raises(ConfigError, match="cannot be switched off"):
        policy_chain.filter(64, policy={"minors": {"enabled": False}})


def test_empty_ingest_writes_empty_manifests(tmp_path):
    (tmp_path / "raw").mkdir()
    c = _prepare(H.Chain(tmp_path, [H.source(tmp_path / "raw")]))
    kept = c.filter(MIN_SIDE, policy={"untagged": "quarantine"})
    assert len(kept) == 0
    assert list(c.read("filtered", schemas.FILTERED).columns) == list(schemas.FILTERED.columns)
    assert len(c.read("rej_filter", schemas.REJECTED)) == 0


def test_policy_rejections_and_filter_rejections_together(policy_chain):
    """Every rule in one run: the ledger balances and each item is rejected once, by one rule."""
    kept, rejected = _run(
        policy_chain, policy={"nsfw": {"action": "exclude"}, "license_allowlist": ["CC0-1.0"], "untagged": "quarantine"}
    )
    rules = {i: (r["stage"], r["rule"]) for i, r in rejected.items()}
    assert rules == {
        "src:minors/tagged.png": ("policy", "minors"),
        "src:minors/exact_copy.png": ("policy", "minors"),
        "src:minors2/cat.png": ("policy", "minors"),
        "src:minors2/cat_small.jpg": ("policy", "minors"),
        "src:broken/zero.png": ("policy", "minors"),
        "src:broken/notes.png": ("filter", "decode"),
        "src:spelling/lolicon.png": ("policy", "minors"),
        "src:nsfw/rated.png": ("policy", "nsfw"),
        "src:nsfw/naked.png": ("policy", "nsfw"),
        "src:untagged/bare.png": ("policy", "untagged"),
        "src:untagged/small.png": ("policy", "untagged"),
        "src:untagged/gray.png": ("policy", "untagged"),
        "src:untagged/blurry.png": ("policy", "untagged"),
        "other:moon.png": ("policy", "license"),
    }
    assert sorted(kept) == ["src:annotated/hi.png", "src:annotated/lo.png", "src:tags/by_artist.png", "src:tags/plain.png",
                            "src:tags/tree.png", "src:untagged/tree_copy.png"]


def test_taken_down_content_is_rejected_before_anything_else(chain):
    c, kept, _ = chain
    sha = H.by_id(kept)["src:good.png"]["sha256"]
    try:
        after = c.filter(MIN_SIDE, overrides=None, takedown={sha})
        rejected = H.by_id(c.read("rej_filter", schemas.REJECTED))
        assert "src:good.png" not in set(after["item_id"])
        row = rejected["src:good.png"]
        assert (row["stage"], row["rule"], row["reason"]) == ("policy", "takedown", "content taken down")
    finally:
        c.filter(MIN_SIDE)  # the module's other tests read the filter outputs


# --------------------------------------------------------------------------- whole columns = item by item

def _reference_merge_copies(items: pd.DataFrame) -> pd.DataFrame:
    """The merge item by item: one group per cluster, in item-id order."""
    items = items.sort_values("item_id").copy()
    merged_tags, merged_artists, merged_rating = {}, {}, {}
    for key, group in items.groupby("cluster_key", sort=False):
        merged_tags[key] = list(dict.fromkeys(t for tags in group["tags"] for t in tags))
        merged_artists[key] = list(dict.fromkeys(a for artists in group["artists"] for a in artists))
        merged_rating[key] = most_severe(group["rating"])
    keys = items["cluster_key"]
    items["tags"] = [list(dict.fromkeys([*own, *merged_tags[k]])) for own, k in zip(items["tags"], keys)]
    items["artists"] = [list(dict.fromkeys([*own, *merged_artists[k]])) for own, k in zip(items["artists"], keys)]
    items["rating"] = keys.map(merged_rating).astype("str")
    return items


def _reference_annotations(items: pd.DataFrame, notes: pd.DataFrame) -> pd.DataFrame:
    out = items.copy()
    by_path = {r.filename: r for r in notes.itertuples() if "/" in r.filename}
    by_name = {r.filename: r for r in notes.itertuples() if "/" not in r.filename}
    matched = [by_path.get(rel) or by_name.get(name) for rel, name in zip(out["rel_path"], out["original_name"])]
    for col, missing, dtype in (("archetype", None, "str"), ("emotion", None, "str"), ("harmony_score", math.nan, "float64"),
                                ("annotation_notes", None, "str")):
        out[col] = pd.Series([getattr(m, col) if m else missing for m in matched], index=out.index, dtype=dtype)
    return out


def _reference_filter(paths: dict, kept_out, rejected_out, audit_params, policy_params, annotation_files, overrides_file, takedown):
    """The filter one item at a time: every rule asked of every item in turn."""
    items = manifest.read(paths["ingest"], schemas.INGEST)
    audit = manifest.read(paths["audit"], schemas.AUDIT)
    groups = manifest.read(paths["groups"], schemas.GROUPS)
    scores = manifest.read(paths["nsfw"], schemas.NSFW_SCORES)
    df = items.merge(audit.drop(columns=["sha256", "schema_version"]), on="item_id", how="left", validate="one_to_one")
    df = df.merge(groups[["item_id", *schemas.CLUSTER_COLUMNS]], on="item_id", how="left", validate="one_to_one")
    df["nsfw_score"] = df["item_id"].map(dict(zip(scores["item_id"], scores["nsfw_score"]))).astype("float64")
    df = _reference_annotations(df, annotations.load(annotation_files))
    dictionary = TagDictionary.load([])
    df["tags"] = df["tags"].map(dictionary.canonicalize)
    df["artists"] = df["artists"].map(dictionary.canonicalize)
    df = _reference_merge_copies(df)
    edits = overrides.load(overrides_file)
    df["tags"] = [filter_stage._apply_tag_edits(t, edits.get(sha), dictionary) for t, sha in zip(df["tags"], df["sha256"])]
    policy = Policy.from_params(policy_params, dictionary)
    thresholds, actions = filter_stage._audit_settings(audit_params)
    verdicts, flags_col, nsfw_col, override_col, caption_col = [], [], [], [], []
    for row in df.itertuples(index=False):
        record, override = row._asdict(), edits.get(row.sha256)
        decision = policy.decide(record, override)
        flags, verdict = list(decision.flags), None
        if row.sha256 in takedown:
            verdict = filter_stage.TAKEDOWN
        elif decision.exclusion is not None:
            ex = decision.exclusion
            verdict = ("policy", ex.rule, ex.reason, ex.detail, list(ex.triggered))
        if verdict is None or verdict[1] not in filter_stage.FINAL:
            failure = filter_stage._failure(row)
            if failure is not None:
                verdict = failure
            elif verdict is None:
                for code, detail in audit_checks.findings(record, thresholds):
                    action = actions.get(code, "flag")
                    if action == "reject" and not (override and override.get("action") == "keep"):
                        verdict = verdict or ("filter", "audit", code, detail, [])
                    elif action != "off":
                        flags.append(code)
        verdicts.append(verdict)
        flags_col.append(flags)
        nsfw_col.append(bool(decision.nsfw))
        override_col.append(decision.override)
        caption_col.append(override.get("caption") if override else None)
    source = {}
    for item_id, comp, verdict in zip(df["item_id"], df["component_key"], verdicts):
        if verdict is not None and verdict[1] == "minors":
            source.setdefault(comp, (item_id, verdict))
    for k, (item_id, comp) in enumerate(zip(df["item_id"], df["component_key"])):
        if comp in source and (verdicts[k] is None or verdicts[k][1] != "minors"):
            other, verdict = source[comp]
            detail = f"near-duplicate (through a chain of pairs) of {other}, which the minors rule excluded: {verdict[3]}"
            verdicts[k] = ("policy", "minors", verdict[2], detail, list(verdict[4]))
    df["flags"], df["nsfw_flag"], df["override"], df["caption_override"] = flags_col, nsfw_col, override_col, caption_col
    for col in ("override", "caption_override"):
        df[col] = df[col].astype("str")
    rejected = pd.Series([v is not None for v in verdicts], index=df.index)
    hit, picked = df[rejected], [v for v in verdicts if v is not None]
    field = lambda k: pd.Series([v[k] for v in picked], index=hit.index, dtype=object)  # noqa: E731
    manifest.write(ledger.reject(hit, *(field(k) for k in range(5))), rejected_out, schemas.REJECTED)
    manifest.write(df[~rejected][list(schemas.FILTERED.columns)], kept_out, schemas.FILTERED)


_POOL = ["loli", "Lolicon", "child", "Naked", "nude", "sex", "smile", "Long Hair", "long_hair", "tree", "Some Artist", "beach"]
_WEIGHTS = np.array([1, 1, 1, 4, 4, 4, 20, 10, 10, 20, 5, 20]) / 100


def _tricky_manifests(tmp_path, n: int = 240) -> tuple[dict, set, Path, Path]:
    """Ingest, audit, groups and scores in shuffled row orders, with exact copies, clusters of up
    to four, components chaining clusters, broken and too-small files, and an overrides file and
    annotations naming some of the items."""
    rng = np.random.default_rng(7)
    names = ["a.png", "b.jpg", "c.PNG", "d.jpeg", "e.png"]
    rows = []
    for k in range(n):
        item_id = f"src:{'dir/' if k % 3 == 0 else ''}{k:04d}{names[k % 5]}"
        sha = H.fake_sha(f"content {k - 1 if k % 11 == 1 else k}")  # some exact copies
        tags = list(dict.fromkeys(rng.choice(_POOL, size=rng.integers(0, 4), p=_WEIGHTS).tolist()))
        odd = rng.random()
        rows.append(H.item_row(
            item_id, sha, original_name=item_id.split("/")[-1].split(":")[-1], tags=tags, rating=str(rng.choice(["general", "sensitive", "questionable", "explicit", "unknown"])),
            license=str(rng.choice(["CC0-1.0", "proprietary"])), artists=["Some Artist"] if k % 17 == 0 else [],
            format="JPEG" if k % 7 == 0 else "PNG", mode="L" if k % 13 == 0 else "RGB", width=100 if odd < 0.05 else 600,
            luma_mean=10.0 if 0.05 <= odd < 0.08 else 120.0, laplacian_var=20.0 if 0.08 <= odd < 0.12 else 500.0,
            ingest_reason="md5_mismatch" if k % 29 == 5 else None, ingest_detail="md5 differs" if k % 29 == 5 else None,
        ))
        if k % 23 == 4:
            rows[-1].update(decoded=False, reason="corrupt", detail="cannot decode", format=None, mode=None, width=0, height=0,
                            phash=None, dhash=None, phash_views=[], bit_depth=0, luma_mean=math.nan, luma_std=math.nan,
                            entropy=math.nan, laplacian_var=math.nan, border_fraction=math.nan)
        else:
            rows[-1]["decoded"], rows[-1]["reason"], rows[-1]["detail"] = True, None, None
    # clusters of consecutive items (by a shuffled order), components joining neighbouring clusters
    order = rng.permutation(n)
    start, clusters = 0, []
    while start < n:
        size = int(rng.choice([1, 1, 1, 2, 3, 4]))
        clusters.append(order[start:start + size])
        start += size
    for c, members in enumerate(clusters):
        key = rows[members[-1]]["sha256"]
        component = rows[clusters[c - c % 3][-1]]["sha256"]  # three clusters per component
        for m in members:
            rows[m].update(cluster_key=key, cluster_id=key[:16], cluster_size=len(members), component_key=component)
    m = tmp_path / "m"
    paths = {"ingest": m / "ingest.parquet", "audit": m / "audit.parquet", "groups": m / "groups.parquet", "nsfw": m / "nsfw.parquet"}
    for key, schema in (("ingest", schemas.INGEST), ("audit", schemas.AUDIT), ("groups", schemas.GROUPS)):
        shuffled = [rows[i] for i in rng.permutation(n)]
        manifest.write(H.frame(shuffled, schema), paths[key], schema, sort_by=None)
    scored = [{**rows[i], "nsfw_score": float(rng.choice([0.0, 0.3, 0.95]))} for i in rng.permutation(n)[: n // 2]]
    manifest.write(H.frame(scored, schemas.NSFW_SCORES), paths["nsfw"], schemas.NSFW_SCORES, sort_by=None)
    shas = [r["sha256"] for r in rows]
    edits = [[shas[3], "keep", "", "", "", ""], [shas[9], "exclude", "", "", "my caption", "no"],
             [shas[20], "", "Lolicon, new tag", "smile", "", ""], [shas[45], "keep", "", "loli", "", ""]]
    overrides_file = H.write_csv(tmp_path / "overrides.csv", ["sha256", "action", "add_tags", "remove_tags", "caption", "note"], edits)
    notes = H.write_csv(tmp_path / "notes.csv", ["filename", "archetype", "emotion", "harmony_score", "notes"],
                        [["dir/0000a.png", "hero", "calm", "3", ""], ["0001b.jpg", "", "sad", "1.0", "low"],
                         ["0001b.jpg", "rogue", "", "4", "later row wins"], ["0003d.jpeg", "x", "y", "", ""]])
    return paths, {shas[30], shas[31]}, overrides_file, notes


@pytest.mark.parametrize(
    ("policy_params", "audit_params"),
    [
        ({}, {"min_side": 256}),
        ({"nsfw": {"action": "exclude", "score_threshold": 0.9}, "excluded_artists": ["Some Artist"], "license_allowlist": ["CC0-1.0"],
          "untagged": "quarantine", "minors": {"exclude_at_any_rating": True}},
         {"min_side": 256, "actions": {"grayscale": "reject", "blurry": "off", "too_dark": "reject"}}),
        ({"nsfw": {"action": "allow"}, "untagged": "flag", "min_harmony": 2}, {"min_side": 50, "max_aspect": 1.1}),
    ],
)
def test_filter_writes_what_the_item_by_item_rules_write(tmp_path, policy_params, audit_params):
    paths, takedown, overrides_file, notes = _tricky_manifests(tmp_path)
    args = dict(audit_params=audit_params, policy_params=policy_params, annotation_files=[str(notes)],
                overrides_file=str(overrides_file), takedown=takedown)
    filter_stage.run(paths, tmp_path / "kept.parquet", tmp_path / "rejected.parquet", **args)
    _reference_filter(paths, tmp_path / "ref_kept.parquet", tmp_path / "ref_rejected.parquet", **args)
    rejected = manifest.read(tmp_path / "rejected.parquet", schemas.REJECTED)
    if not policy_params:  # the case covers every path
        assert {"minors", "takedown", "decode", "ingest", "audit"} <= set(rejected["rule"]), set(rejected["rule"])
        assert rejected["detail"].str.contains("through a chain of pairs").any()
    for name, schema in (("kept", schemas.FILTERED), ("rejected", schemas.REJECTED)):
        pd.testing.assert_frame_equal(manifest.read(tmp_path / f"{name}.parquet", schema),
                                      manifest.read(tmp_path / f"ref_{name}.parquet", schema))


def _by_shard(paths: dict, folder: Path, shards: int = 3) -> dict:
    """The same manifests with the audit written by shard (by content, as the shard map deals
    them) and each shard's ingest rows in its own file, as the sharded workflow has them."""
    ingest = manifest.read(paths["ingest"], schemas.INGEST)
    audit = manifest.read(paths["audit"], schemas.AUDIT)
    shard_of = lambda df: df["sha256"].str[:2].map(lambda h: f"{int(h, 16) % shards:05d}")  # noqa: E731
    sharded = {**paths, "audit": folder / "audit.parquet"}
    with manifest.ShardedWriter(sharded["audit"], schemas.AUDIT) as out:
        for shard, rows in audit.groupby(shard_of(audit)):
            out.write(shard, rows)
            manifest.write(ingest[shard_of(ingest) == shard], folder / "ingest" / f"{shard}.parquet", schemas.INGEST)
    sharded["ingest_shards"] = sorted((folder / "ingest").glob("*.parquet"))
    return sharded


@pytest.mark.parametrize("policy_params", [{}, {"minors": {"exclude_at_any_rating": True}, "untagged": "quarantine"}])
def test_filter_by_shard_writes_what_a_whole_run_writes(tmp_path, policy_params):
    """Clusters and components cross shards: merged tags and the minors rule's reach come out as
    when every item is judged at once; the outputs are written by shard."""
    paths, takedown, overrides_file, notes = _tricky_manifests(tmp_path)
    args = dict(audit_params={"min_side": 256}, policy_params=policy_params, annotation_files=[str(notes)],
                overrides_file=str(overrides_file), takedown=takedown)
    sharded = _by_shard(paths, tmp_path / "sharded")
    filter_stage.run(sharded, tmp_path / "kept.parquet", tmp_path / "rejected.parquet", **args)
    _reference_filter(paths, tmp_path / "ref_kept.parquet", tmp_path / "ref_rejected.parquet", **args)
    assert manifest.shard_groups(tmp_path / "kept.parquet") == ["00000", "00001", "00002"]
    rejected = manifest.read(tmp_path / "rejected.parquet", schemas.REJECTED)
    assert rejected["detail"].str.contains("through a chain of pairs").any()
    for name, schema in (("kept", schemas.FILTERED), ("rejected", schemas.REJECTED)):
        ours = manifest.read(tmp_path / f"{name}.parquet", schema).sort_values("item_id", ignore_index=True)
        pd.testing.assert_frame_equal(ours, manifest.read(tmp_path / f"ref_{name}.parquet", schema))
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_filter_by_shard_names_a_shard_missing_from_the_audit(tmp_path):
    paths, takedown, overrides_file, notes = _tricky_manifests(tmp_path)
    sharded = _by_shard(paths, tmp_path / "sharded")
    audit = manifest.read(sharded["audit"], schemas.AUDIT)
    with manifest.ShardedWriter(sharded["audit"], schemas.AUDIT) as out:  # the last shard's audit lost
        for shard, rows in list(manifest.read_shards(sharded["audit"], schemas.AUDIT))[:2]:
            out.write(shard, rows)
    assert len(manifest.read(sharded["audit"], schemas.AUDIT)) < len(audit)
    with pytest.raises(ValueError, match=r"ingest item\(s\) in no shard of the audit manifest"):
        filter_stage.run(sharded, tmp_path / "kept.parquet", tmp_path / "rejected.parquet", {"min_side": 256}, {})
    assert not (tmp_path / "kept.parquet").exists()


def test_filter_by_shard_with_a_shard_whose_lists_are_all_empty(tmp_path):
    """A shard's ingest file types a list column no row of it fills as lists of nothing: a batch
    joining it with shards that fill it reads every list as text."""
    paths, takedown, overrides_file, notes = _tricky_manifests(tmp_path)
    ingest = manifest.read(paths["ingest"], schemas.INGEST)
    first = ingest["sha256"].str[:2].map(lambda h: int(h, 16) % 3 == 0)
    ingest.loc[first, "artists"] = pd.Series([[] for _ in range(int(first.sum()))], index=ingest.index[first], dtype=object)
    ingest.loc[first, "tags"] = pd.Series([[] for _ in range(int(first.sum()))], index=ingest.index[first], dtype=object)
    manifest.write(ingest, paths["ingest"], schemas.INGEST)
    sharded = _by_shard(paths, tmp_path / "sharded")
    part = tmp_path / "sharded" / "ingest" / "00000.parquet"
    manifest.read(part, schemas.INGEST).to_parquet(part, index=False)  # as pandas types it (manifest.write settles types)
    assert pq.read_schema(part).field("artists").type.value_type == pa.null()
    args = dict(audit_params={"min_side": 256}, policy_params={"untagged": "quarantine", "excluded_artists": ["Some Artist"]},
                annotation_files=[str(notes)], overrides_file=str(overrides_file), takedown=takedown)
    filter_stage.run(sharded, tmp_path / "kept.parquet", tmp_path / "rejected.parquet", **args)
    _reference_filter(paths, tmp_path / "ref_kept.parquet", tmp_path / "ref_rejected.parquet", **args)
    for name, schema in (("kept", schemas.FILTERED), ("rejected", schemas.REJECTED)):
        ours = manifest.read(tmp_path / f"{name}.parquet", schema).sort_values("item_id", ignore_index=True)
        pd.testing.assert_frame_equal(ours, manifest.read(tmp_path / f"ref_{name}.parquet", schema))


def _merged_by_hand(lists: list[list[str]], cluster: list[int]) -> list[list[str]]:
    """Each member's own values, then its cluster's others as they first appear: spelled out."""
    out = []
    for k, own in enumerate(lists):
        union = [v for j, other in enumerate(lists) if cluster[j] == cluster[k] for v in other]
        out.append(list(dict.fromkeys([*own, *union])))
    return out


@pytest.mark.parametrize("seed", range(25))
def test_merged_lists_equal_the_lists_merged_by_hand(seed: int) -> None:
    """The vectorized merge of a cluster's tags (Arrow and NumPy, no Python list per row) gives each
    member's own values first, then its cluster's others in member order, without repeats (a value
    repeated inside one member's own list included); empty and missing-value lists kept."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40))
    cluster = np.sort(rng.integers(0, max(1, n // 2), n))
    lists = [[f"t{v}" for v in rng.integers(0, 9, int(rng.integers(0, 6)))] for _ in range(n)]
    got = filter_stage._merged_lists(pa.array(lists, pa.list_(pa.string())), cluster).to_pylist()
    assert got == _merged_by_hand(lists, cluster.tolist())
