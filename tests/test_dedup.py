"""dedup stages: exact (SHA-256) and near (pHash) duplicates, keeper choice and clusters."""

from __future__ import annotations

import imagehash
import pytest
from PIL import Image

import stage_helpers as H
from trainset import ledger, schemas
from trainset.stages import dedup

MAX_DISTANCE = 10


# --------------------------------------------------------------------------- exact


@pytest.fixture(scope="module")
def exact_chain(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("exact")
    raw = tmp_path / "raw"
    # group 1: an original (bare) and a generated copy that even has tags: the original wins
    H.save(H.sample("astronaut.png", (200, 200)), raw / "astro.png")
    (raw / "gen").mkdir()
    (raw / "gen" / "astro_copy.png").write_bytes((raw / "astro.png").read_bytes())
    H.sidecar(raw / "gen" / "astro_copy.png", ["astronaut", "space", "suit"], generated=True)
    # group 2: three originals; the one with tags wins over the bare ones
    H.save(H.sample("chelsea.png", (240, 160)), raw / "a_cat.png")
    (raw / "b").mkdir()
    (raw / "b" / "cat.png").write_bytes((raw / "a_cat.png").read_bytes())
    (raw / "b" / "cat.txt").write_text("cat, tabby\n")
    (raw / "z_cat.png").write_bytes((raw / "a_cat.png").read_bytes())
    # group 3: two bare copies: the smaller item id wins (deterministic tie-break)
    H.save(H.sample("coffee.png", (240, 160)), raw / "cup1.png")
    (raw / "cup2.png").write_bytes((raw / "cup1.png").read_bytes())
    # a unique image
    H.save(H.sample("rocket.jpg", (240, 160)), raw / "rocket.jpg", quality=90)
    c = H.Chain(tmp_path, [H.source(raw)])
    c.ingest()
    c.audit()
    c.filter(64)
    kept = c.exact()
    return c, kept, c.read("rej_exact", schemas.REJECTED)


def test_exact_keeps_one_per_sha256(exact_chain):
    c, kept, rejected = exact_chain
    filtered = c.read("filtered", schemas.FILTERED)
    assert kept["sha256"].is_unique
    assert set(kept["sha256"]) == set(filtered["sha256"])
    assert len(kept) == 4
    assert ledger.check(filtered, kept, rejected) == {"raw": 8, "kept": 4, "rejected": 4}
    on_disk = c.read("exact", schemas.FILTERED)
    assert on_disk["item_id"].tolist() == sorted(kept["item_id"])


def test_exact_prefers_original_over_generated(exact_chain):
    _, kept, rejected = exact_chain
    assert "src:astro.png" in set(kept["item_id"])
    row = H.by_id(rejected)["src:gen/astro_copy.png"]
    assert (row["stage"], row["rule"], row["reason"]) == ("dedup", "exact", "exact_duplicate")
    assert row["detail"] == "same bytes as src:astro.png (kept)"


def test_exact_prefers_a_copy_with_tags(exact_chain):
    _, kept, rejected = exact_chain
    kept_rows = H.by_id(kept)
    assert "src:b/cat.png" in kept_rows
    assert kept_rows["src:b/cat.png"]["tags"] == ["cat", "tabby"]
    rows = H.by_id(rejected)
    for bare in ("src:a_cat.png", "src:z_cat.png"):
        assert rows[bare]["detail"] == "same bytes as src:b/cat.png (kept)"


def test_exact_tie_break_is_item_id(exact_chain):
    _, kept, rejected = exact_chain
    assert "src:cup1.png" in set(kept["item_id"])
    assert H.by_id(rejected)["src:cup2.png"]["detail"] == "same bytes as src:cup1.png (kept)"
    assert "src:rocket.jpg" in set(kept["item_id"])
    assert "src:rocket.jpg" not in set(rejected["item_id"])


def test_exact_rejected_detail_names_a_kept_item_with_same_bytes(exact_chain):
    _, kept, rejected = exact_chain
    kept_rows = H.by_id(kept)
    for row in rejected.to_dict("records"):
        kept_id = row["detail"].removeprefix("same bytes as ").removesuffix(" (kept)")
        assert kept_rows[kept_id]["sha256"] == row["sha256"]


def test_exact_is_deterministic(exact_chain):
    c, kept, _ = exact_chain
    first = c.p["exact"].read_bytes(), c.p["rej_exact"].read_bytes()
    again = c.exact()
    assert again["item_id"].tolist() == kept["item_id"].tolist()
    assert (c.p["exact"].read_bytes(), c.p["rej_exact"].read_bytes()) == first


# --------------------------------------------------------------------------- near


@pytest.fixture(scope="module")
def near_chain(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("near")
    raw = tmp_path / "raw"
    photo = H.sample("astronaut.png", (480, 480))
    H.save(photo, raw / "photo.png")
    H.save(photo.resize((300, 300), Image.Resampling.LANCZOS), raw / "copies" / "photo_small.png")
    H.save(photo, raw / "copies" / "photo_resaved.jpg", quality=40)
    H.save(photo.crop((10, 10, 470, 470)), raw / "copies" / "photo_cropped.png")  # a few bits away
    H.save(H.sample("coffee.png", (420, 280)), raw / "coffee.png")
    H.save(H.sample("chelsea.png", (451, 300)), raw / "cat.png")
    # an upscaled copy of the cat, larger but generated: the smaller original must win
    up = H.save(H.sample("chelsea.png", (451, 300)).resize((902, 600), Image.Resampling.LANCZOS), raw / "gen" / "cat_up.png")
    H.sidecar(up, ["cat"], generated=True)
    c = H.Chain(tmp_path, [H.source(raw)])
    kept = c.through_dedup(min_side=64, max_distance=MAX_DISTANCE)
    return c, kept


def _phash(path):
    with Image.open(path) as im:
        return imagehash.phash(im)


def test_near_duplicates_cluster_together(near_chain):
    c, _ = near_chain
    clusters = H.by_id(c.read("clusters", schemas.MEMBERSHIP))
    photo = {"src:photo.png", "src:copies/photo_small.png", "src:copies/photo_resaved.jpg", "src:copies/photo_cropped.png"}
    ids = {clusters[i]["cluster_id"] for i in photo}
    assert len(ids) == 1
    assert all(clusters[i]["cluster_key"] == clusters["src:photo.png"]["cluster_key"] for i in photo)
    cats = {"src:cat.png", "src:gen/cat_up.png"}
    assert len({clusters[i]["cluster_id"] for i in cats}) == 1
    # distinct images are not merged
    assert clusters["src:coffee.png"]["cluster_id"] not in ids
    assert clusters["src:cat.png"]["cluster_id"] not in ids
    assert clusters["src:coffee.png"]["cluster_id"] != clusters["src:cat.png"]["cluster_id"]


def test_near_keeper_is_largest_resolution(near_chain):
    c, kept = near_chain
    filtered = H.by_id(c.read("filtered", schemas.FILTERED))
    photo = ["src:photo.png", "src:copies/photo_small.png", "src:copies/photo_resaved.jpg", "src:copies/photo_cropped.png"]
    assert "src:photo.png" in set(kept["item_id"])
    assert not set(photo[1:]) & set(kept["item_id"])
    px = {i: filtered[i]["width"] * filtered[i]["height"] for i in photo}
    assert px["src:photo.png"] == max(px.values())
    # the re-saved JPEG has as many pixels: the larger file (the lossless original) wins the tie
    assert filtered["src:photo.png"]["size"] > filtered["src:copies/photo_resaved.jpg"]["size"]


def test_near_original_beats_larger_generated_copy(near_chain):
    c, kept = near_chain
    filtered = H.by_id(c.read("filtered", schemas.FILTERED))
    assert bool(filtered["src:gen/cat_up.png"]["generated"]) is True
    assert bool(filtered["src:cat.png"]["generated"]) is False
    assert filtered["src:gen/cat_up.png"]["width"] > filtered["src:cat.png"]["width"]
    assert "src:cat.png" in set(kept["item_id"])
    rejected = H.by_id(c.read("rej_near", schemas.REJECTED))
    row = rejected["src:gen/cat_up.png"]
    assert (row["stage"], row["rule"], row["reason"]) == ("dedup", "near", "near_duplicate")
    assert "src:cat.png (kept" in row["detail"]


def test_pairs_manifest_lists_pairs_with_distance(near_chain):
    c, _ = near_chain
    pairs = c.read("pairs", schemas.PAIRS)
    got = {(r["a"], r["b"]): r["distance"] for r in pairs.to_dict("records")}
    raw = c.root / "raw"
    photo = sorted(["src:photo.png", "src:copies/photo_small.png", "src:copies/photo_resaved.jpg", "src:copies/photo_cropped.png"])
    expected_pairs = [(a, b) for i, a in enumerate(photo) for b in photo[i + 1:]] + [("src:cat.png", "src:gen/cat_up.png")]
    assert set(got) == set(expected_pairs)
    assert any(d > 0 for d in got.values()), "the cropped copy is near, not identical in pHash"
    for a, b in expected_pairs:
        assert a < b
        # the stored distance is the real pHash distance (imagehash computes the same hash)
        expected = _phash(raw / a.split(":", 1)[1]) - _phash(raw / b.split(":", 1)[1])
        assert got[(a, b)] == expected <= MAX_DISTANCE
    assert pairs[["a", "b"]].values.tolist() == sorted(pairs[["a", "b"]].values.tolist())


def test_distinct_images_are_far_apart(near_chain):
    raw = near_chain[0].root / "raw"
    for a, b in [("coffee.png", "photo.png"), ("coffee.png", "cat.png"), ("cat.png", "photo.png")]:
        assert _phash(raw / a) - _phash(raw / b) > MAX_DISTANCE


def test_clusters_manifest_one_keeper_per_cluster(near_chain):
    c, kept = near_chain
    clusters = c.read("clusters", schemas.MEMBERSHIP)
    exact = H.by_id(c.read("exact", schemas.FILTERED))
    assert set(clusters["item_id"]) == set(exact)
    for cluster_id, group in clusters.groupby("cluster_id"):
        assert group["keeper"].sum() == 1, cluster_id
        keeper = group[group["keeper"]].iloc[0]
        assert keeper["distance_to_keeper"] == 0
        members = group["item_id"].tolist()
        assert keeper["cluster_key"] == min(exact[i]["sha256"] for i in members)
        assert cluster_id == keeper["cluster_key"][:16]
        for row in group.itertuples():
            expected = imagehash.hex_to_hash(exact[row.item_id]["phash"]) - imagehash.hex_to_hash(exact[keeper["item_id"]]["phash"])
            assert row.distance_to_keeper == expected
    assert set(clusters.loc[clusters["keeper"], "item_id"]) == set(kept["item_id"])
    assert clusters["cluster_id"].nunique() == 3


def test_deduped_manifest_carries_cluster_columns(near_chain):
    c, kept = near_chain
    deduped = H.by_id(c.read("deduped", schemas.DEDUPED))
    assert sorted(deduped) == ["src:cat.png", "src:coffee.png", "src:photo.png"]
    assert deduped["src:photo.png"]["cluster_size"] == 4
    assert deduped["src:cat.png"]["cluster_size"] == 2
    assert deduped["src:coffee.png"]["cluster_size"] == 1
    assert deduped["src:coffee.png"]["cluster_key"] == deduped["src:coffee.png"]["sha256"]


def test_near_rejected_detail_and_conservation(near_chain):
    c, kept = near_chain
    exact = c.read("exact", schemas.FILTERED)
    rejected = c.read("rej_near", schemas.REJECTED)
    clusters = H.by_id(c.read("clusters", schemas.MEMBERSHIP))
    assert ledger.check(exact, kept, rejected) == {"raw": 7, "kept": 3, "rejected": 4}
    for row in rejected.to_dict("records"):
        m = clusters[row["item_id"]]
        assert row["detail"].startswith(f"pHash distance {m['distance_to_keeper']} to ")
        assert f"cluster {m['cluster_id']} of " in row["detail"]
    photo_rows = [r for r in rejected.to_dict("records") if "photo" in r["item_id"]]
    assert all("src:photo.png (kept; cluster" in r["detail"] and r["detail"].endswith(" of 4)") for r in photo_rows)
    assert len(photo_rows) == 3


def test_max_distance_bounds_what_merges(near_chain, tmp_path):
    """With max_distance 0 only identical hashes merge: the cropped copy (distance > 0) stays."""
    c, _ = near_chain
    pairs = c.read("pairs", schemas.PAIRS)
    out = {n: tmp_path / f"{n}.parquet" for n in ("deduped", "pairs", "clusters", "rejected")}
    kept = dedup.run_near(c.p["exact"], out["deduped"], out["pairs"], out["clusters"], out["rejected"], max_distance=0)
    pairs0 = H.manifest.read(out["pairs"], schemas.PAIRS)
    zero_pairs = set(map(tuple, pairs[pairs["distance"] == 0][["a", "b"]].values.tolist()))
    assert set(map(tuple, pairs0[["a", "b"]].values.tolist())) == zero_pairs
    assert "src:copies/photo_cropped.png" in set(kept["item_id"])
    assert len(kept) == 4


def test_bridging_item_joins_clusters_transitively(tmp_path):
    """a~b and b~c within max_distance but a and c farther apart: one cluster of three."""
    rows = [
        H.item_row("src:a.png", phash="0000000000000000", width=100, height=100),
        H.item_row("src:b.png", phash="00000000000000ff", width=300, height=300),
        H.item_row("src:c.png", phash="000000000000ffff", width=200, height=200),
        H.item_row("src:d.png", phash="ffffffffffffffff", width=100, height=100),
    ]
    exact = tmp_path / "exact.parquet"
    H.write_manifest(rows, exact, schemas.FILTERED)
    out = {n: tmp_path / f"{n}.parquet" for n in ("deduped", "pairs", "clusters", "rejected")}
    kept = dedup.run_near(exact, out["deduped"], out["pairs"], out["clusters"], out["rejected"], max_distance=8)
    pairs = H.manifest.read(out["pairs"], schemas.PAIRS)
    assert pairs[["a", "b", "distance"]].values.tolist() == [["src:a.png", "src:b.png", 8], ["src:b.png", "src:c.png", 8]]
    clusters = H.by_id(H.manifest.read(out["clusters"], schemas.MEMBERSHIP))
    assert clusters["src:a.png"]["cluster_id"] == clusters["src:b.png"]["cluster_id"] == clusters["src:c.png"]["cluster_id"]
    assert clusters["src:d.png"]["cluster_id"] != clusters["src:a.png"]["cluster_id"]
    assert clusters["src:b.png"]["keeper"]
    assert clusters["src:a.png"]["distance_to_keeper"] == 8
    assert clusters["src:c.png"]["distance_to_keeper"] == 8
    key = min(r["sha256"] for r in rows[:3])
    assert clusters["src:c.png"]["cluster_key"] == key
    assert sorted(kept["item_id"]) == ["src:b.png", "src:d.png"]
    assert H.by_id(kept)["src:b.png"]["cluster_size"] == 3


def test_near_on_empty_input(tmp_path):
    exact = tmp_path / "exact.parquet"
    H.write_manifest([], exact, schemas.FILTERED)
    out = {n: tmp_path / f"{n}.parquet" for n in ("deduped", "pairs", "clusters", "rejected")}
    kept = dedup.run_near(exact, out["deduped"], out["pairs"], out["clusters"], out["rejected"], max_distance=10)
    assert len(kept) == 0
    for name, schema in [("pairs", schemas.PAIRS), ("clusters", schemas.MEMBERSHIP), ("rejected", schemas.REJECTED)]:
        assert len(H.manifest.read(out[name], schema)) == 0
