"""The near-duplicate engine through the real stages, on real image files: the default rule with
embeddings, incremental runs, reference sets, and dropped copies naming what they lost to."""

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import ImageEnhance, ImageOps

import stage_helpers as H
from trainset import manifest, schemas
from trainset.stages import dedup

from conftest import REPO

DEFAULT_NEAR_DUP = yaml.safe_load((REPO / "params.yaml").read_text())["near_dup"]
PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "ihc", "retina", "camera", "coins", "horse"]
FILES = {"rocket": "rocket.jpg", "retina": "retina.jpg"}


def _originals(folder, size=(400, 300)):
    folder.mkdir(parents=True, exist_ok=True)
    for name in PHOTOS:
        H.save(H.sample(FILES.get(name, f"{name}.png"), size), folder / f"{name}.png")
    return folder


def _chain(root, raw) -> H.Chain:
    root.mkdir(parents=True, exist_ok=True)
    return H.Chain(root, [H.source(raw)])


def _ids(df) -> set[str]:
    return set(df["item_id"])


def test_default_rule_catches_crops_and_pads_that_a_plain_phash_misses(tmp_path):
    raw = _originals(tmp_path / "raw")
    coffee = H.sample("coffee.png", (400, 300))
    H.save(coffee.crop((14, 30, 372, 282)), raw / "coffee_crop.png")  # ~9 % cropped, off-centre
    H.save(ImageOps.expand(H.sample("chelsea.png", (400, 300)), border=48, fill=(30, 90, 200)), raw / "chelsea_pad.png")
    H.save(ImageEnhance.Brightness(H.sample("rocket.jpg", (400, 300))).enhance(1.2), raw / "rocket_bright.jpg", quality=60)

    c = _chain(tmp_path / "default", raw)
    kept = c.through_dedup(min_side=64, near_dup=DEFAULT_NEAR_DUP)
    phash = H.by_id(c.read("audit", schemas.AUDIT))
    plain = lambda a, b: bin(int(phash[a]["phash"], 16) ^ int(phash[b]["phash"], 16)).count("1")  # noqa: E731
    assert plain("src:coffee.png", "src:coffee_crop.png") > 10 and plain("src:chelsea.png", "src:chelsea_pad.png") > 10
    rejected = H.by_id(c.read("rej_dedup", schemas.REJECTED))
    # the padded copy has more pixels, but a border: the picture it frames is kept (near_dup.keep: border first)
    assert set(rejected) == {"src:coffee_crop.png", "src:chelsea_pad.png", "src:rocket_bright.jpg"}
    assert rejected["src:coffee_crop.png"]["duplicate_of"] == "src:coffee.png"
    assert rejected["src:chelsea_pad.png"]["duplicate_of"] == "src:chelsea.png"
    assert phash["src:chelsea_pad.png"]["border_fraction"] > 0.3 and phash["src:chelsea.png"]["border_fraction"] == 0
    assert _ids(kept) == {f"src:{n}.png" for n in PHOTOS}
    # with resolution first, the padded copy (more pixels) is kept instead
    c2 = _chain(tmp_path / "by_resolution", raw)
    c2.through_dedup(min_side=64, near_dup={**DEFAULT_NEAR_DUP, "keep": ["resolution"]})
    assert H.by_id(c2.read("rej_dedup", schemas.REJECTED))["src:chelsea.png"]["duplicate_of"] == "src:chelsea_pad.png"
    pairs = c.read("pairs", schemas.PAIRS)
    assert pairs["cosine"].notna().all() and pairs["rule"].str.len().gt(0).all()


def test_lookalike_crops_of_one_texture_stay_apart(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    gravel = H.sample("gravel.png", (512, 512))
    H.save(gravel.crop((0, 0, 300, 300)), raw / "left.png")
    H.save(gravel.crop((212, 212, 512, 512)), raw / "right.png")
    c = H.Chain(tmp_path, [H.source(raw)])
    kept = c.through_dedup(min_side=64, near_dup=DEFAULT_NEAR_DUP)
    assert _ids(kept) == {"src:left.png", "src:right.png"}


def _stats(chain) -> dict:
    return json.loads((chain.root / "data" / "run" / "group-stats.json").read_text())


def test_a_second_run_searches_only_the_added_images(tmp_path):
    raw = _originals(tmp_path / "raw")
    c = _chain(tmp_path / "repo", raw)
    near_dup = {"rule": [{"max_distance": 6}, {"max_distance": 16, "min_cosine": 0.88}]}
    c.ingest(), c.audit(), c.group(near_dup=near_dup)
    first = _stats(c)
    assert first["search"]["new"] == len(PHOTOS) and first["embeddings"]["computed"] == len(PHOTOS)

    H.save(H.sample("astronaut.png", (200, 150)), raw / "astronaut_small.png")
    H.save(H.sample("motorcycle_left.png", (400, 300)), raw / "motorcycle.png")
    c.ingest(), c.audit(), c.group(near_dup=near_dup)
    second = _stats(c)
    assert second["search"]["new"] == 2
    assert second["embeddings"] == {"items": len(PHOTOS) + 2, "contents": len(PHOTOS) + 2, "cache_hits": len(PHOTOS), "computed": 2, "failed": 0}
    assert second["search"]["reused_pairs"] == first["search"]["reused_pairs"] + first["search"]["new_pairs"]
    incremental = c.read("pairs", schemas.PAIRS)

    fresh = _chain(tmp_path / "fresh", raw)
    fresh.ingest(), fresh.audit(), fresh.group(near_dup=near_dup)
    pd.testing.assert_frame_equal(incremental, fresh.read("pairs", schemas.PAIRS))
    assert len(incremental) >= 1  # the small astronaut pairs with the original


@pytest.mark.parametrize("action", ["reject", "flag"])
def test_reference_set_duplicates_are_rejected_or_flagged_and_reported(tmp_path, action):
    raw = _originals(tmp_path / "raw")
    holdout = tmp_path / "holdout"
    holdout.mkdir()
    H.save(H.sample("horse.png", (200, 150)), holdout / "horse_eval.jpg", quality=70)
    H.save(H.sample("motorcycle_left.png", (300, 200)), holdout / "unrelated.png")
    near_dup = {"rule": [{"max_distance": 8}], "reference": [{"name": "fid", "path": str(holdout)}], "reference_action": action}
    c = _chain(tmp_path / "repo", raw)
    kept = c.through_dedup(min_side=64, near_dup=near_dup)
    refs = c.read("reference_pairs", schemas.REFERENCE_PAIRS)
    assert refs["reference_path"].tolist() == [str(holdout / "horse_eval.jpg")] and refs["reference"].tolist() == ["fid"]
    rejected = H.by_id(c.read("rej_dedup", schemas.REJECTED))
    if action == "reject":
        assert "src:horse.png" not in _ids(kept)
        row = rejected["src:horse.png"]
        assert row["reason"] == "reference_duplicate" and row["duplicate_of"] == str(holdout / "horse_eval.jpg")
        assert "reference set fid" in row["detail"]
    else:
        assert "src:horse.png" not in rejected
        assert "reference_duplicate" in H.by_id(kept)["src:horse.png"]["flags"]
    c.caption(), c.split(), c.rejected(), c.export()
    metrics = c.report(thresholds={"min_kept": 1, "max_rejected_share": 1.0, "max_split_leakage": 0, "max_reference_matches": 0})
    assert metrics["reference_matches"] == 1
    assert metrics["reference_matches_kept"] == (1 if action == "flag" else 0)
    assert metrics["go"] == (action == "reject")
    text = c.p["report"].read_text()
    assert "horse_eval.jpg" in text and "Reference sets: 1 items" in text


def test_a_representative_excluded_by_policy_leaves_its_members_to_regrow(tmp_path):
    """a~b and a~c but not b~c: with a excluded, b and c are not duplicates of each other."""
    shas = {k: H.fake_sha(k) for k in "abc"}
    rows = [H.item_row(f"src:{k}.png", shas[k], size=1000 - i) for i, k in enumerate("bc")]
    filtered = H.write_manifest(rows, tmp_path / "filtered.parquet", schemas.FILTERED)
    pair = lambda x, y: {"a": min(shas[x], shas[y]), "b": max(shas[x], shas[y]), "distance": 5, "cosine": np.nan, "rule": "distance<=6"}  # noqa: E731
    manifest.write(pd.DataFrame([pair("a", "b"), pair("a", "c")]), tmp_path / "pairs.parquet", schemas.PAIRS, sort_by=["a", "b"])
    manifest.write(manifest.empty(schemas.REFERENCE_PAIRS), tmp_path / "refs.parquet", schemas.REFERENCE_PAIRS)
    dedup.run(tmp_path / "filtered.parquet", tmp_path / "pairs.parquet", tmp_path / "refs.parquet",
              tmp_path / "deduped.parquet", tmp_path / "clusters.parquet", tmp_path / "rejected.parquet", {})
    kept = manifest.read(tmp_path / "deduped.parquet", schemas.DEDUPED)
    assert _ids(kept) == _ids(filtered)
    # with b~c too, c goes, naming b
    manifest.write(pd.DataFrame([pair("a", "b"), pair("a", "c"), pair("b", "c")]), tmp_path / "pairs.parquet", schemas.PAIRS, sort_by=["a", "b"])
    dedup.run(tmp_path / "filtered.parquet", tmp_path / "pairs.parquet", tmp_path / "refs.parquet",
              tmp_path / "deduped.parquet", tmp_path / "clusters.parquet", tmp_path / "rejected.parquet", {})
    kept = manifest.read(tmp_path / "deduped.parquet", schemas.DEDUPED)
    assert _ids(kept) == {"src:b.png"}
    rejected = manifest.read(tmp_path / "rejected.parquet", schemas.REJECTED)
    assert rejected[["item_id", "duplicate_of", "reason"]].values.tolist() == [["src:c.png", "src:b.png", "near_duplicate"]]


def test_minors_exclusion_follows_a_chain_of_pairs_across_clusters(tmp_path):
    """a~b~c: c carries the minors tags, but a and b sit in another cluster of the same component."""
    raw = tmp_path / "raw"
    raw.mkdir()
    im = H.sample("astronaut.png", (400, 300))
    for name in ("a", "b", "c"):
        H.save(im if name != "c" else im.resize((300, 225)), raw / f"{name}.png")
    H.sidecar(raw / "c.png", ["loli", "nude"], rating="explicit")
    H.sidecar(raw / "b.png", ["1girl"])
    c = _chain(tmp_path / "repo", raw)
    c.ingest(), c.audit(), c.nsfw(), c.group(near_dup={"rule": [{"max_distance": 8}]})
    groups = c.read("groups", schemas.GROUPS)
    # split the one cluster in two, as a chain would, keeping the component
    groups.loc[groups["item_id"] == "src:c.png", "cluster_key"] = H.fake_sha("other")
    groups["cluster_id"] = groups["cluster_key"].str[:16]
    groups["cluster_size"] = groups.groupby("cluster_key")["item_id"].transform("size").astype("int64")
    assert groups["component_key"].nunique() == 1
    manifest.write(groups, c.p["groups"], schemas.GROUPS)
    kept = c.filter()
    assert len(kept) == 0
    rejected = H.by_id(c.read("rej_filter", schemas.REJECTED))
    assert {r["rule"] for r in rejected.values()} == {"minors"}
    assert "src:c.png" in rejected["src:a.png"]["detail"] and "chain of pairs" in rejected["src:b.png"]["detail"]


def test_mirrored_copies_pair_only_when_mirror_is_on(tmp_path):
    raw = _originals(tmp_path / "raw")
    H.save(ImageOps.mirror(H.sample("astronaut.png", (400, 300))), raw / "astronaut_mirror.png")
    H.save(ImageOps.mirror(H.sample("coffee.png", (400, 300))).crop((20, 0, 400, 300)), raw / "coffee_mirror_crop.png")
    hash_only = {**DEFAULT_NEAR_DUP, "rule": [{"max_distance": 6}]}

    def dedup_with(name, **over):
        chain = _chain(tmp_path / name, raw)
        chain.through_dedup(min_side=64, near_dup={**hash_only, **over})
        pairs = chain.read("pairs", schemas.PAIRS)
        distance = {tuple(sorted((r["a"], r["b"]))): r["distance"] for r in pairs.to_dict("records")}
        return {i: r["duplicate_of"] for i, r in H.by_id(chain.read("rej_dedup", schemas.REJECTED)).items()}, distance

    off, _ = dedup_with("off")
    assert off == {}
    free, free_d = dedup_with("free", mirror=True, mirror_penalty=0)
    assert free == {"src:astronaut_mirror.png": "src:astronaut.png", "src:coffee_mirror_crop.png": "src:coffee.png"}
    # the default penalty: every distance reached through a mirrored view counts 3 bits more
    penalized, pen_d = dedup_with("penalized", mirror=True)
    assert set(pen_d) <= set(free_d)
    assert all(pen_d[k] == min(free_d[k] + DEFAULT_NEAR_DUP["mirror_penalty"], 64) for k in pen_d)
    assert set(penalized) <= set(free)
    assert "src:astronaut_mirror.png" in penalized  # an exact mirror stays well within the rule
