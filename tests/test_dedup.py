"""group and dedup stages: near-duplicate pairs, clusters grown around representatives and
connected components over every raw item, then one keeper per cluster among the items the
filter let through."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import stage_helpers as H
from trainset import ledger, manifest, neardup, schemas, views
from trainset.stages import dedup, group

MAX_DISTANCE = 10
RULE = f"distance<={MAX_DISTANCE}"
QUERY, SEARCH = len(views.QUERY_VIEWS), len(views.SEARCH_VIEWS)  # the views compared when near_dup.mirror is false
PHOTO = ["src:photo.png", "src:gen/photo_copy.png", "src:copies/photo_small.png", "src:copies/photo_resaved.jpg", "src:copies/photo_cropped.png"]
CATS = ["src:cat.png", "src:gen/cat_up.png"]
MOTOS = ["src:a_moto.png", "src:b/moto.png", "src:z_moto.png"]
ROCKETS = ["src:rocket.png", "src:rocket_copy.png"]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("dedup")
    raw = tmp_path / "raw"
    photo = H.sample("astronaut.png", (480, 480))
    H.save(photo, raw / "photo.png")
    # an exact copy marked generated, with tags: the (bare) original still wins
    H.write_bytes(raw / "gen" / "photo_copy.png", (raw / "photo.png").read_bytes())
    H.sidecar(raw / "gen" / "photo_copy.png", ["astronaut", "space", "suit"], generated=True)
    # near copies: fewer pixels, same pixels but a smaller lossy file, a slight crop
    H.save(photo.resize((300, 300), Image.Resampling.LANCZOS), raw / "copies" / "photo_small.png")
    H.save(photo, raw / "copies" / "photo_resaved.jpg", quality=40)
    H.save(photo.crop((24, 24, 456, 456)), raw / "copies" / "photo_cropped.png")  # 5 % off each side
    # a cat and an upscaled copy, larger but generated: the smaller original must win
    H.save(H.sample("chelsea.png", (451, 300)), raw / "cat.png")
    up = H.save(H.sample("chelsea.png", (451, 300)).resize((902, 600), Image.Resampling.LANCZOS), raw / "gen" / "cat_up.png")
    H.sidecar(up, ["cat"], generated=True)
    # three identical files: the one with its own sidecar wins over the bare ones
    H.save(H.sample("motorcycle_left.png", (240, 160)), raw / "a_moto.png")
    H.write_bytes(raw / "b" / "moto.png", (raw / "a_moto.png").read_bytes())
    (raw / "b" / "moto.txt").write_text("motorcycle, red\n")
    H.write_bytes(raw / "z_moto.png", (raw / "a_moto.png").read_bytes())
    # two bare identical files: the smaller item id wins (deterministic tie-break)
    H.save(H.sample("rocket.jpg", (240, 160)), raw / "rocket.png")
    H.write_bytes(raw / "rocket_copy.png", (raw / "rocket.png").read_bytes())
    # a unique photo
    H.save(H.sample("coffee.png", (420, 280)), raw / "coffee.png")
    c = H.Chain(tmp_path, [H.source(raw)])
    kept = c.through_dedup(min_side=64, max_distance=MAX_DISTANCE)
    return c, kept


def _phash(path):
    """imagehash's pHash of what trainset hashes (the reduced grayscale decode)."""
    return imagehash.phash(H.hash_input(path))


def _view_distance(views_a, views_b) -> int:
    """Fewest differing bits between a query view (plain, trim) of either and a search view of the other."""
    pairs = [(list(views_a), list(views_b)), (list(views_b), list(views_a))]
    return min(bin(int(x, 16) ^ int(y, 16)).count("1") for one, other in pairs for x in one[:QUERY] for y in other[:SEARCH])


def _groups(c):
    return H.by_id(c.read("groups", schemas.GROUPS))


def _run_group(c, tmp_path, near_dup: dict, name: str = "g") -> pd.DataFrame:
    """The group stage on the chain's ingest and audit into ``tmp_path/name`` (its own cache)."""
    out = tmp_path / name
    out.mkdir(exist_ok=True)
    group.run(
        c.p["ingest"], c.p["audit"], out / "groups.parquet", out / "pairs.parquet", out / "reference_pairs.parquet",
        near_dup, out / "cache", out / "stats.json",
    )
    return manifest.read(out / "groups.parquet", schemas.GROUPS)


def _rejected(c):
    return H.by_id(c.read("rej_dedup", schemas.REJECTED))


# --------------------------------------------------------------------------- group


def test_groups_cover_every_raw_item(chain):
    c, _ = chain
    ingest = c.read("ingest", schemas.INGEST)
    groups = c.read("groups", schemas.GROUPS)
    assert groups["item_id"].tolist() == sorted(ingest["item_id"])
    assert len(groups) == 13
    sha = dict(zip(ingest["item_id"], ingest["sha256"]))
    assert all(sha[r.item_id] == r.sha256 for r in groups.itertuples())


def test_exact_copies_share_a_cluster(chain):
    c, _ = chain
    groups = _groups(c)
    for members in (MOTOS, ROCKETS, ["src:photo.png", "src:gen/photo_copy.png"]):
        assert len({groups[i]["sha256"] for i in members}) == 1, members
        assert len({groups[i]["cluster_key"] for i in members}) == 1, members
    assert groups["src:b/moto.png"]["cluster_size"] == 3
    assert groups["src:rocket_copy.png"]["cluster_size"] == 2


def test_near_duplicates_cluster_with_their_original(chain):
    c, _ = chain
    groups = _groups(c)
    assert len({groups[i]["sha256"] for i in PHOTO}) == 4, "four distinct contents, one exact copy"
    assert len({groups[i]["cluster_id"] for i in PHOTO}) == 1
    assert all(groups[i]["cluster_size"] == 5 for i in PHOTO)
    assert len({groups[i]["cluster_id"] for i in CATS}) == 1
    assert groups["src:cat.png"]["cluster_size"] == 2


def test_distinct_photos_do_not_cluster(chain):
    c, _ = chain
    groups = _groups(c)
    heads = ["src:photo.png", "src:cat.png", "src:a_moto.png", "src:rocket.png", "src:coffee.png"]
    assert len({groups[i]["cluster_id"] for i in heads}) == 5
    assert groups["src:coffee.png"]["cluster_size"] == 1
    assert groups["src:coffee.png"]["cluster_key"] == groups["src:coffee.png"]["sha256"]
    raw = c.root / "raw"
    audit = H.by_id(c.read("audit", schemas.AUDIT))
    names = ["photo.png", "cat.png", "a_moto.png", "rocket.png", "coffee.png"]
    for k, a in enumerate(names):
        for b in names[k + 1:]:
            assert _phash(raw / a) - _phash(raw / b) > MAX_DISTANCE, (a, b)
            # and no pair of their views is close either
            assert _view_distance(audit[f"src:{a}"]["phash_views"], audit[f"src:{b}"]["phash_views"]) > MAX_DISTANCE, (a, b)
    assert len({groups[f"src:{n}"]["component_key"] for n in names}) == 5


def test_cluster_key_is_the_representatives_sha256(chain):
    """A cluster's key is the SHA-256 of its best copy (by the keep preference), whatever the
    order of the SHA-256s; a component's key is the smallest SHA-256 in it."""
    c, _ = chain
    groups = c.read("groups", schemas.GROUPS)
    by = H.by_id(groups)
    assert groups["cluster_key"].nunique() == 5
    for key, members in groups.groupby("cluster_key"):
        assert key in set(members["sha256"])
        assert (members["cluster_id"] == key[:16]).all()
        assert (members["cluster_size"] == len(members)).all()
        # here every cluster is its whole component
        assert (members["component_key"] == members["sha256"].min()).all()
    # the representatives: the bare original photo, the original (not the generated upscale) cat
    assert by["src:copies/photo_small.png"]["cluster_key"] == by["src:photo.png"]["sha256"]
    assert by["src:gen/cat_up.png"]["cluster_key"] == by["src:cat.png"]["sha256"]
    photo_shas = {by[i]["sha256"] for i in PHOTO}
    assert by["src:photo.png"]["component_key"] == min(photo_shas)


def test_pairs_manifest_distances_equal_imagehash(chain):
    """One pair per two distinct contents within max_distance, named by their SHA-256s (a < b),
    with the distance between their closest views: never more than imagehash's plain pHash
    distance, and less for the cropped copy."""
    c, _ = chain
    pairs = c.read("pairs", schemas.PAIRS)
    audit = H.by_id(c.read("audit", schemas.AUDIT))
    sha = {i: audit[i]["sha256"] for i in audit}
    got = {(r["a"], r["b"]): r for r in pairs.to_dict("records")}
    # the exact copy and the original share one content
    photo = ["src:photo.png", "src:copies/photo_small.png", "src:copies/photo_resaved.jpg", "src:copies/photo_cropped.png"]
    named = [(a, b) for k, a in enumerate(photo) for b in photo[k + 1:]] + [tuple(CATS)]
    key = {tuple(sorted((sha[a], sha[b]))): (a, b) for a, b in named}
    assert set(got) == set(key)
    raw = c.root / "raw"
    for (sa, sb), (a, b) in key.items():
        assert sa < sb
        row = got[(sa, sb)]
        plain = _phash(raw / a.split(":", 1)[1]) - _phash(raw / b.split(":", 1)[1])
        assert row["distance"] == _view_distance(audit[a]["phash_views"], audit[b]["phash_views"]) <= min(plain, MAX_DISTANCE)
        assert row["rule"] == RULE and pd.isna(row["cosine"]), "a hash-only rule computes no cosine"
    # the plain view is the item's pHash (imagehash's)
    for i in photo + CATS:
        assert audit[i]["phash_views"][0] == audit[i]["phash"] == str(_phash(raw / i.split(":", 1)[1]))
    cropped = got[tuple(sorted((sha["src:photo.png"], sha["src:copies/photo_cropped.png"])))]["distance"]
    assert 0 < cropped < _phash(raw / "photo.png") - _phash(raw / "copies/photo_cropped.png"), "the centre views match the crop better"
    assert pairs[["a", "b"]].values.tolist() == sorted(pairs[["a", "b"]].values.tolist())


def test_max_distance_bounds_what_merges(chain, tmp_path):
    """With max_distance 0 only identical view hashes merge: copies a few bits away stay apart.
    The old ``{max_distance: t}`` params read as the one-clause rule ``distance <= t``."""
    c, _ = chain
    pairs = c.read("pairs", schemas.PAIRS)
    groups = _run_group(c, tmp_path, {"rule": [{"max_distance": 0}]})
    pairs0 = manifest.read(tmp_path / "g" / "pairs.parquet", schemas.PAIRS)
    zero = set(map(tuple, pairs[pairs["distance"] == 0][["a", "b"]].values.tolist()))
    assert zero and len(zero) < len(pairs)
    assert set(map(tuple, pairs0[["a", "b"]].values.tolist())) == zero
    assert set(pairs0["rule"]) == {"distance<=0"}
    legacy = _run_group(c, tmp_path, {"max_distance": 0}, name="legacy")
    assert legacy.equals(groups)
    assert manifest.read(tmp_path / "legacy" / "pairs.parquet", schemas.PAIRS).equals(pairs0)
    by = H.by_id(groups)
    assert by["src:copies/photo_cropped.png"]["cluster_id"] != by["src:photo.png"]["cluster_id"]
    # exact copies still share a cluster whatever the distance
    assert by["src:gen/photo_copy.png"]["cluster_id"] == by["src:photo.png"]["cluster_id"]
    assert len({by[i]["cluster_id"] for i in MOTOS}) == 1


def test_undecodable_items_are_grouped_by_bytes_only(tmp_path):
    raw = tmp_path / "raw"
    H.save(H.sample("astronaut.png", (200, 200)), raw / "a.png")
    H.write_bytes(raw / "broken1.png", b"not an image at all")
    H.write_bytes(raw / "broken2.png", b"not an image at all")
    H.write_bytes(raw / "empty.png", b"")
    c = H.Chain(tmp_path, [H.source(raw)])
    c.ingest()
    c.audit()
    groups = H.by_id(c.group())
    assert len(groups) == 4
    assert groups["src:broken1.png"]["cluster_key"] == groups["src:broken2.png"]["cluster_key"]
    assert groups["src:broken1.png"]["cluster_size"] == 2
    assert groups["src:empty.png"]["cluster_size"] == 1 and groups["src:a.png"]["cluster_size"] == 1
    assert len(c.read("pairs", schemas.PAIRS)) == 0


def _audit_row(item_id: str, phash: str, **over) -> dict:
    return H.item_row(item_id, phash=phash, phash_views=[phash] * len(views.VIEW_NAMES), decoded=True, reason=None, detail=None, **over)


def _group_rows(tmp_path, rows, max_distance: int) -> dict:
    H.write_manifest(rows, tmp_path / "ingest.parquet", schemas.INGEST)
    H.write_manifest(rows, tmp_path / "audit.parquet", schemas.AUDIT)
    group.run(
        tmp_path / "ingest.parquet", tmp_path / "audit.parquet", tmp_path / "g.parquet", tmp_path / "p.parquet",
        tmp_path / "r.parquet", {"rule": [{"max_distance": max_distance}]}, tmp_path / "cache", tmp_path / "stats.json",
    )
    return H.by_id(manifest.read(tmp_path / "g.parquet", schemas.GROUPS))


def test_bridging_item_does_not_chain_clusters_but_joins_the_component(tmp_path):
    """a~b and b~c within max_distance but a and c farther apart: the cluster grown around the
    best copy (a, by item id) holds a and b only, c starts its own; the component holds all three."""
    rows = [
        _audit_row("src:a.png", "0000000000000000"),
        _audit_row("src:b.png", "00000000000000ff"),
        _audit_row("src:c.png", "000000000000ffff"),
        _audit_row("src:d.png", "ffffffffffffffff"),
    ]
    sha = {r["item_id"]: r["sha256"] for r in rows}
    groups = _group_rows(tmp_path, rows, 8)
    pairs = manifest.read(tmp_path / "p.parquet", schemas.PAIRS)
    expected = sorted([sorted([sha["src:a.png"], sha["src:b.png"]]) + [8], sorted([sha["src:b.png"], sha["src:c.png"]]) + [8]])
    assert pairs[["a", "b", "distance"]].values.tolist() == expected
    abc = ["src:a.png", "src:b.png", "src:c.png"]
    assert groups["src:a.png"]["cluster_key"] == groups["src:b.png"]["cluster_key"] == sha["src:a.png"]
    assert groups["src:c.png"]["cluster_key"] == sha["src:c.png"], "c is no near-duplicate of a: no chain"
    assert [groups[i]["cluster_size"] for i in abc] == [2, 2, 1]
    assert {groups[i]["component_key"] for i in abc} == {min(sha[i] for i in abc)}
    assert groups["src:d.png"]["component_key"] == groups["src:d.png"]["cluster_key"] == sha["src:d.png"]
    assert groups["src:d.png"]["cluster_size"] == 1


def test_cluster_grows_around_the_best_copy(tmp_path):
    """The same chain with b the best copy (most pixels): a and c are each a near-duplicate of
    b, so all three make one cluster keyed by b."""
    rows = [
        _audit_row("src:a.png", "0000000000000000"),
        _audit_row("src:b.png", "00000000000000ff", width=1024, height=1024),
        _audit_row("src:c.png", "000000000000ffff"),
    ]
    groups = _group_rows(tmp_path, rows, 8)
    abc = ["src:a.png", "src:b.png", "src:c.png"]
    assert {groups[i]["cluster_key"] for i in abc} == {rows[1]["sha256"]}
    assert [groups[i]["cluster_size"] for i in abc] == [3, 3, 3]
    assert {groups[i]["component_key"] for i in abc} == {min(r["sha256"] for r in rows)}


def test_group_on_empty_input(tmp_path):
    H.write_manifest([], tmp_path / "ingest.parquet", schemas.INGEST)
    H.write_manifest([], tmp_path / "audit.parquet", schemas.AUDIT)
    group.run(
        tmp_path / "ingest.parquet", tmp_path / "audit.parquet", tmp_path / "g.parquet", tmp_path / "p.parquet",
        tmp_path / "r.parquet", {"rule": [{"max_distance": MAX_DISTANCE}]}, tmp_path / "cache", tmp_path / "stats.json",
    )
    assert len(manifest.read(tmp_path / "g.parquet", schemas.GROUPS)) == 0
    assert len(manifest.read(tmp_path / "p.parquet", schemas.PAIRS)) == 0
    assert len(manifest.read(tmp_path / "r.parquet", schemas.REFERENCE_PAIRS)) == 0


# --------------------------------------------------------------------------- group by shard


def _group_inputs(tmp_path, extra: int = 0):
    """Ingest and an audit written by shard (three shards, copies of a content in one), contents
    with exact copies; ``extra`` items more in a fourth shard."""
    rows = []
    for s in range(3 + (extra > 0)):
        n = 4 if s < 3 else extra
        for k in range(n):
            sha = H.fake_sha(f"{s}-{k // 2 if s == 1 else k}")  # shard 00001: pairs of exact copies
            rows.append(H.item_row(f"src:{s}_{k}.png", sha, phash_views=["0" * 16] * 3, decoded=True, reason=None, detail=None))
    frame = H.frame(rows, schemas.INGEST)
    manifest.write(frame, tmp_path / "ingest.parquet", schemas.INGEST)
    audit = H.frame(rows, schemas.AUDIT)
    with manifest.ShardedWriter(tmp_path / "audit.parquet", schemas.AUDIT) as writer:
        for s in sorted({r["item_id"].split(":")[1].split("_")[0] for r in rows}):
            writer.write(f"{int(s):05d}", audit[audit["item_id"].str.startswith(f"src:{s}_")])
    return {r["item_id"]: r["sha256"] for r in rows}


def _tile(tmp_path, links) -> dict:
    tile = tmp_path / "tile"
    tile.mkdir(exist_ok=True)
    rows = [{"a": min(x, y), "b": max(x, y), "distance": 2, "cosine": np.nan, "rule": "phash"} for x, y in links]
    manifest.write(pd.DataFrame(rows) if rows else manifest.empty(schemas.PAIRS), tile / "pairs.parquet", schemas.PAIRS, sort_by=["a", "b"])
    manifest.write(manifest.empty(schemas.REFERENCE_PAIRS), tile / "reference.parquet", schemas.REFERENCE_PAIRS)
    (tile / "stats.json").write_text(json.dumps({"pairs": len(rows)}))
    return {"pairs": [tile / "pairs.parquet"], "reference": [tile / "reference.parquet"], "stats": [tile / "stats.json"]}


def _group(tmp_path, name: str, links, kept=True) -> Path:
    out = tmp_path / f"{name}.parquet"
    group.run(tmp_path / "ingest.parquet", tmp_path / "audit.parquet", out, tmp_path / "pairs.parquet", tmp_path / "reference.parquet",
              {"rule": [{"max_distance": 6}]}, tmp_path / "cache", tmp_path / "stats.json", tiles=_tile(tmp_path, links),
              kept=tmp_path / "kept" if kept else None)
    return out


def test_group_writes_again_only_the_shards_whose_clusters_changed(tmp_path, monkeypatch):
    """The groups manifest comes by the audit's shards; a new pair between two shards writes those
    two again (their items' clusters changed), the third is copied, and the file equals a run
    without a kept output."""
    sha = _group_inputs(tmp_path)
    first = [(sha["src:0_0.png"], sha["src:0_1.png"])]
    _group(tmp_path, "g1", first)
    assert manifest.shard_groups(tmp_path / "g1.parquet") == ["00000", "00001", "00002"]
    written: list = []
    real = group._Clusters.rows
    monkeypatch.setattr(group._Clusters, "rows", lambda self, a, b: written.append((a, b)) or real(self, a, b))
    _group(tmp_path, "g2", first)
    assert written == []  # nothing changed: every shard copied
    assert pq.read_table(tmp_path / "g2.parquet").equals(pq.read_table(tmp_path / "g1.parquet"))

    links = [*first, (sha["src:1_0.png"], sha["src:2_3.png"])]
    _group(tmp_path, "g3", links)
    assert written == [(4, 12)]  # shards 00001 and 00002, in one batch
    groups = H.by_id(manifest.read(tmp_path / "g3.parquet", schemas.GROUPS))
    joined = ["src:1_0.png", "src:1_1.png", "src:2_3.png"]  # an exact copy joins with its content
    assert {groups[i]["cluster_key"] for i in joined} == {sha["src:1_0.png"]}  # the best copy: the smallest item id
    assert {groups[i]["component_key"] for i in joined} == {min(sha["src:1_0.png"], sha["src:2_3.png"])}
    assert [groups[i]["cluster_size"] for i in joined] == [3, 3, 3]
    assert groups["src:1_2.png"]["cluster_size"] == 2 and groups["src:0_2.png"]["cluster_size"] == 1
    monkeypatch.undo()
    _group(tmp_path, "fresh", links, kept=False)
    assert pq.read_table(tmp_path / "g3.parquet").equals(pq.read_table(tmp_path / "fresh.parquet"))


def test_group_refuses_audit_rows_of_items_the_ingest_lacks(tmp_path):
    _group_inputs(tmp_path)
    ingest = manifest.read(tmp_path / "ingest.parquet", schemas.INGEST)
    manifest.write(ingest[ingest["item_id"] != "src:2_1.png"], tmp_path / "ingest.parquet", schemas.INGEST)
    with pytest.raises(manifest.ManifestError, match="audit rows for items that .* does not list: src:2_1.png"):
        _group(tmp_path, "g", [])


# --------------------------------------------------------------------------- dedup


def test_one_item_kept_per_cluster(chain):
    c, kept = chain
    assert sorted(kept["item_id"]) == sorted(["src:photo.png", "src:cat.png", "src:b/moto.png", "src:rocket.png", "src:coffee.png"])
    assert kept["cluster_key"].is_unique
    on_disk = c.read("deduped", schemas.DEDUPED)
    assert on_disk["item_id"].tolist() == sorted(kept["item_id"])
    filtered = c.read("filtered", schemas.FILTERED)
    assert len(filtered) == 13, "nothing here is filtered out"
    assert ledger.check(filtered, kept, c.read("rej_dedup", schemas.REJECTED)) == {"raw": 13, "kept": 5, "rejected": 8}


def test_keeper_original_over_larger_generated_copy(chain):
    c, kept = chain
    filtered = H.by_id(c.read("filtered", schemas.FILTERED))
    assert bool(filtered["src:gen/cat_up.png"]["generated"]) and not bool(filtered["src:cat.png"]["generated"])
    assert filtered["src:gen/cat_up.png"]["width"] > filtered["src:cat.png"]["width"]
    assert "src:cat.png" in set(kept["item_id"])
    row = _rejected(c)["src:gen/cat_up.png"]
    assert (row["stage"], row["rule"], row["reason"]) == ("dedup", "near", "near_duplicate")
    assert row["detail"].startswith("near-duplicate of src:cat.png (kept): pHash distance ")
    assert row["duplicate_of"] == "src:cat.png"
    # the exact generated copy of the photo, tagged, loses to the bare original too
    row = _rejected(c)["src:gen/photo_copy.png"]
    assert (row["stage"], row["rule"], row["reason"]) == ("dedup", "exact", "exact_duplicate")
    assert row["detail"] == "same bytes as src:photo.png (kept)"
    assert row["duplicate_of"] == "src:photo.png"


def test_keeper_has_the_most_pixels(chain):
    c, kept = chain
    filtered = H.by_id(c.read("filtered", schemas.FILTERED))
    assert "src:photo.png" in set(kept["item_id"])
    assert not set(PHOTO[1:]) & set(kept["item_id"])
    px = {i: filtered[i]["width"] * filtered[i]["height"] for i in PHOTO}
    assert px["src:photo.png"] == max(px.values()) > px["src:copies/photo_small.png"]
    # the re-saved JPEG has as many pixels: the larger file (the lossless original) wins the tie
    assert px["src:copies/photo_resaved.jpg"] == px["src:photo.png"]
    assert filtered["src:photo.png"]["size"] > filtered["src:copies/photo_resaved.jpg"]["size"]
    for loser in ("src:copies/photo_small.png", "src:copies/photo_resaved.jpg", "src:copies/photo_cropped.png"):
        assert _rejected(c)[loser]["reason"] == "near_duplicate"


def test_keeper_copy_with_sidecar_over_bare_copies(chain):
    c, kept = chain
    kept_rows = H.by_id(kept)
    assert kept_rows["src:b/moto.png"]["tags"] == ["motorcycle", "red"]
    assert kept_rows["src:b/moto.png"]["sidecar"] == "moto.txt"
    rows = _rejected(c)
    for bare in ("src:a_moto.png", "src:z_moto.png"):
        assert (rows[bare]["rule"], rows[bare]["reason"]) == ("exact", "exact_duplicate")
        assert rows[bare]["detail"] == "same bytes as src:b/moto.png (kept)"
        assert rows[bare]["duplicate_of"] == "src:b/moto.png"


def test_tie_break_is_item_id(chain):
    c, kept = chain
    assert "src:rocket.png" in set(kept["item_id"])
    assert _rejected(c)["src:rocket_copy.png"]["detail"] == "same bytes as src:rocket.png (kept)"
    assert "src:coffee.png" in set(kept["item_id"]) and "src:coffee.png" not in _rejected(c)


def test_rejected_detail_names_the_kept_item(chain):
    c, kept = chain
    kept_rows = H.by_id(kept)
    clusters = H.by_id(c.read("clusters", schemas.MEMBERSHIP))
    rejected = c.read("rej_dedup", schemas.REJECTED)
    assert len(rejected) == 8
    for row in rejected.to_dict("records"):
        assert row["stage"] == "dedup" and list(row["triggered_tags"]) == []
        member = clusters[row["item_id"]]
        if row["rule"] == "exact":
            kept_id = row["detail"].removeprefix("same bytes as ").removesuffix(" (kept)")
            assert kept_rows[kept_id]["sha256"] == row["sha256"]
            assert member["rule"] == "exact" and member["distance_to_keeper"] == 0
        else:
            assert row["rule"] == "near" and row["reason"] == "near_duplicate"
            kept_id = row["detail"].removeprefix("near-duplicate of ").split(" ", 1)[0]
            assert row["detail"] == f"near-duplicate of {kept_id} (kept): pHash distance {member['distance_to_keeper']}; rule {RULE}"
            assert member["rule"] == RULE
            assert kept_rows[kept_id]["sha256"] != row["sha256"]
        assert row["duplicate_of"] == member["keeper_id"] == kept_id
        assert kept_rows[kept_id]["cluster_key"] == member["cluster_key"]
    photo_rows = [r for r in rejected.to_dict("records") if r["item_id"] in PHOTO and r["rule"] == "near"]
    assert len(photo_rows) == 3 and all(r["duplicate_of"] == "src:photo.png" for r in photo_rows)
    assert kept_rows["src:photo.png"]["cluster_size"] == 5


def test_clusters_manifest_one_keeper_per_cluster(chain):
    c, kept = chain
    clusters = c.read("clusters", schemas.MEMBERSHIP)
    filtered = H.by_id(c.read("filtered", schemas.FILTERED))
    audit = H.by_id(c.read("audit", schemas.AUDIT))
    pairs = c.read("pairs", schemas.PAIRS).set_index(["a", "b"])
    groups = _groups(c)
    assert set(clusters["item_id"]) == set(filtered)
    assert clusters["cluster_id"].nunique() == 5
    for cluster_id, members in clusters.groupby("cluster_id"):
        assert members["keeper"].sum() == 1, cluster_id
        keeper = members[members["keeper"]].iloc[0]
        assert keeper["distance_to_keeper"] == 0 and keeper["rule"] == "exact"
        assert cluster_id == keeper["cluster_key"][:16]
        assert keeper["cluster_key"] == filtered[keeper["item_id"]]["sha256"], "keyed by the keeper's content"
        for row in members.itertuples():
            assert row.cluster_key == groups[row.item_id]["cluster_key"]
            assert row.keeper_id == keeper["item_id"]
            # the distance between closest views, as in the pairs manifest (every member pairs with the keeper itself)
            expected = _view_distance(audit[row.item_id]["phash_views"], audit[keeper["item_id"]]["phash_views"])
            assert row.distance_to_keeper == expected <= MAX_DISTANCE
            a, b = sorted((filtered[row.item_id]["sha256"], keeper["cluster_key"]))
            if a == b:
                assert row.rule == "exact"
            else:
                assert row.rule == RULE and pairs.loc[(a, b), "distance"] == expected
            assert pd.isna(row.cosine_to_keeper)
    assert set(clusters.loc[clusters["keeper"], "item_id"]) == set(kept["item_id"])


def test_deduped_manifest_carries_cluster_and_policy_columns(chain):
    c, _ = chain
    deduped = H.by_id(c.read("deduped", schemas.DEDUPED))
    assert deduped["src:photo.png"]["cluster_size"] == 5
    assert deduped["src:cat.png"]["cluster_size"] == 2
    assert deduped["src:coffee.png"]["cluster_size"] == 1
    assert deduped["src:coffee.png"]["cluster_key"] == deduped["src:coffee.png"]["sha256"]
    for row in deduped.values():
        assert not row["nsfw_flag"] and list(row["flags"]) == []
        assert pd.isna(row["caption_override"]) and pd.isna(row["override"])
    # tags merged across copies reach the keeper: the generated copy's tags are on the original
    assert deduped["src:photo.png"]["tags"] == ["astronaut", "space", "suit"]
    assert deduped["src:cat.png"]["tags"] == ["cat"]


def test_dedup_is_deterministic(chain):
    c, kept = chain
    first = [c.p[k].read_bytes() for k in ("deduped", "clusters", "rej_dedup")]
    again = c.dedup()
    assert again["item_id"].tolist() == kept["item_id"].tolist()
    assert [c.p[k].read_bytes() for k in ("deduped", "clusters", "rej_dedup")] == first


def _filtered(rows, path):
    return H.write_manifest(rows, path, schemas.FILTERED)


def _pair(a: str, b: str, distance: int, rule: str = RULE, cosine: float = float("nan")) -> dict:
    """A pairs-manifest row for the items ``a`` and ``b`` (their item_row SHA-256s)."""
    sa, sb = sorted((H.fake_sha(a), H.fake_sha(b)))
    return {"a": sa, "b": sb, "distance": distance, "cosine": cosine, "rule": rule}


def _dedup(tmp_path, rows, pairs):
    """dedup.run on hand-built filtered rows and pairs (no reference-set matches)."""
    path = tmp_path / "filtered.parquet"
    _filtered(rows, path)
    manifest.write(H.frame(list(pairs), schemas.PAIRS), tmp_path / "pairs.parquet", schemas.PAIRS, sort_by=["a", "b"])
    manifest.write(manifest.empty(schemas.REFERENCE_PAIRS), tmp_path / "reference_pairs.parquet", schemas.REFERENCE_PAIRS,
                   sort_by=["sha256", "reference", "reference_path"])
    out = {n: tmp_path / f"{n}.parquet" for n in ("deduped", "clusters", "rejected")}
    dedup.run(path, tmp_path / "pairs.parquet", tmp_path / "reference_pairs.parquet",
              out["deduped"], out["clusters"], out["rejected"], {})
    return manifest.read(out["deduped"], schemas.DEDUPED), out


def test_keeper_is_chosen_among_survivors_only(tmp_path):
    """The group's best member was filtered out: the best one left is kept, alone."""
    key = H.fake_sha("src:big.png")
    common = {"cluster_key": key, "cluster_id": key[:16], "cluster_size": 3}
    # src:big.png (the preferred one) is not in the filtered manifest; its pairs are
    kept, out = _dedup(tmp_path, [
        H.item_row("src:mid.png", width=400, height=400, **common),
        H.item_row("src:small.png", width=200, height=200, **common),
    ], [_pair("src:big.png", "src:mid.png", 1), _pair("src:big.png", "src:small.png", 3),
        _pair("src:mid.png", "src:small.png", 14, rule="distance<=16&cosine>=0.88", cosine=0.9)])
    assert kept["item_id"].tolist() == ["src:mid.png"]
    assert kept["cluster_size"].tolist() == [3]
    (row,) = manifest.read(out["rejected"], schemas.REJECTED).to_dict("records")
    assert (row["item_id"], row["rule"], row["duplicate_of"]) == ("src:small.png", "near", "src:mid.png")
    assert row["detail"] == "near-duplicate of src:mid.png (kept): pHash distance 14, cosine 0.900; rule distance<=16&cosine>=0.88"
    clusters = H.by_id(manifest.read(out["clusters"], schemas.MEMBERSHIP))
    assert {m["cluster_key"] for m in clusters.values()} == {H.fake_sha("src:mid.png")}, "regrown around the best survivor"
    assert [clusters[i]["keeper_id"] for i in ("src:mid.png", "src:small.png")] == ["src:mid.png", "src:mid.png"]
    small = clusters["src:small.png"]
    assert (small["distance_to_keeper"], small["cosine_to_keeper"], small["rule"]) == (14, 0.9, "distance<=16&cosine>=0.88")


def test_survivors_that_only_matched_through_a_filtered_copy_are_both_kept(tmp_path):
    """mid and small were each a near-duplicate of the filtered-out big, not of each other:
    no chain through big, so both are kept."""
    key = H.fake_sha("src:big.png")
    common = {"cluster_key": key, "cluster_id": key[:16], "cluster_size": 3}
    kept, out = _dedup(tmp_path, [
        H.item_row("src:mid.png", width=400, height=400, **common),
        H.item_row("src:small.png", width=200, height=200, **common),
    ], [_pair("src:big.png", "src:mid.png", 6), _pair("src:big.png", "src:small.png", 6)])
    assert kept["item_id"].tolist() == ["src:mid.png", "src:small.png"]
    assert len(manifest.read(out["rejected"], schemas.REJECTED)) == 0
    clusters = manifest.read(out["clusters"], schemas.MEMBERSHIP)
    assert clusters["keeper"].all() and clusters["cluster_key"].nunique() == 2


def test_preference_order(tmp_path):
    """Default keep order: original > most pixels > largest file > own sidecar > most tags > smallest item id."""
    key = H.fake_sha("k")
    base = {"cluster_key": key, "cluster_id": key[:16], "cluster_size": 2}
    cases = [
        (H.item_row("src:z.png", generated=False, width=10, height=10, **base), H.item_row("src:a.png", generated=True, width=99, height=99, **base)),
        (H.item_row("src:z.png", width=20, height=20, **base), H.item_row("src:a.png", width=10, height=10, size=10**6, **base)),
        (H.item_row("src:z.png", size=2000, **base), H.item_row("src:a.png", size=1000, sidecar="a.txt", tags=["x", "y"], **base)),
        (H.item_row("src:z.png", sidecar="z.json", **base), H.item_row("src:a.png", tags=["x"], **base)),
        (H.item_row("src:z.png", tags=["x", "y"], **base), H.item_row("src:a.png", tags=["x"], **base)),
        (H.item_row("src:a.png", **base), H.item_row("src:z.png", **base)),
    ]
    for winner, loser in cases:
        ranked = neardup.preference_order(H.frame([loser, winner], schemas.FILTERED))
        assert ranked["item_id"].iloc[0] == winner["item_id"], (winner, loser)


def test_dedup_on_empty_input(tmp_path):
    kept, out = _dedup(tmp_path, [], [])
    assert len(kept) == 0
    for name, schema in [("deduped", schemas.DEDUPED), ("clusters", schemas.MEMBERSHIP), ("rejected", schemas.REJECTED)]:
        assert len(manifest.read(out[name], schema)) == 0


@pytest.mark.parametrize("action", ["reject", "flag"])
def test_dedup_by_shard_keeps_the_rows_and_shards_of_its_input(tmp_path, action):
    """A filtered manifest written by shard: the keepers are taken a shard at a time and written
    under their shard, the same rows (reference flags included) as from the same rows written
    whole; a shard left with no keeper has no row group. The rejected rows are the same; the clusters
    manifest holds the same rows, written by the input's shards."""
    key = H.fake_sha("src:a0.png")
    linked = {"cluster_key": key, "cluster_id": key[:16], "cluster_size": 3}
    shard_rows = {
        "00000": [H.item_row("src:a0.png", width=900, height=900, **linked), H.item_row("src:b0.png", tags=["x"])],
        "00001": [H.item_row("src:a1.png", width=500, height=500, **linked), H.item_row("src:ref.png"),
                  H.item_row("src:c1.png", flags=["already"])],
        "00002": [H.item_row("src:a2.png", width=100, height=100, **linked)],
    }
    pairs = [_pair("src:a0.png", "src:a1.png", 3), _pair("src:a0.png", "src:a2.png", 5)]
    refs = pd.DataFrame([{"sha256": H.fake_sha("src:ref.png"), "reference": "eval", "reference_path": "eval/x.png",
                          "distance": 2, "cosine": np.nan, "rule": RULE}])
    manifest.write(H.frame(pairs, schemas.PAIRS), tmp_path / "pairs.parquet", schemas.PAIRS, sort_by=["a", "b"])
    manifest.write(refs, tmp_path / "refs.parquet", schemas.REFERENCE_PAIRS, sort_by=["sha256", "reference", "reference_path"])
    rows = {shard: H.frame(r, schemas.FILTERED) for shard, r in shard_rows.items()}
    whole, by_shard = tmp_path / "whole", tmp_path / "by_shard"
    for d in (whole, by_shard):
        d.mkdir()
    manifest.write(pd.concat(rows.values(), ignore_index=True), whole / "filtered.parquet", schemas.FILTERED)
    with manifest.ShardedWriter(by_shard / "filtered.parquet", schemas.FILTERED) as writer:
        for shard, df in rows.items():
            writer.write(shard, df)
    for d in (whole, by_shard):
        dedup.run(d / "filtered.parquet", tmp_path / "pairs.parquet", tmp_path / "refs.parquet", d / "deduped.parquet",
                  d / "clusters.parquet", d / "rejected.parquet", {"reference_action": action})

    assert manifest.shard_groups(by_shard / "deduped.parquet") == ["00000", "00001"]
    got = dict(manifest.read_shards(by_shard / "deduped.parquet", schemas.DEDUPED))
    kept_ids = {"00000": ["src:a0.png", "src:b0.png"], "00001": ["src:c1.png"] if action == "reject" else ["src:c1.png", "src:ref.png"]}
    assert {shard: df["item_id"].tolist() for shard, df in got.items()} == kept_ids
    expected = manifest.read(whole / "deduped.parquet", schemas.DEDUPED)
    pd.testing.assert_frame_equal(manifest.read(by_shard / "deduped.parquet", schemas.DEDUPED).sort_values("item_id", ignore_index=True),
                                  expected)
    if action == "flag":
        assert H.by_id(expected)["src:ref.png"]["flags"] == [dedup.REFERENCE_FLAG]
        assert H.by_id(expected)["src:c1.png"]["flags"] == ["already"]
    assert (by_shard / "rejected.parquet").read_bytes() == (whole / "rejected.parquet").read_bytes()
    # the clusters manifest is written by the input's shards (each shard's survivors by item id): the same rows
    assert manifest.shard_groups(by_shard / "clusters.parquet") == ["00000", "00001", "00002"]
    clusters = {d: manifest.read(d / "clusters.parquet", schemas.MEMBERSHIP).sort_values("item_id", ignore_index=True) for d in (whole, by_shard)}
    pd.testing.assert_frame_equal(clusters[by_shard], clusters[whole])
    assert len(clusters[whole]) == (5 if action == "reject" else 6)


@pytest.mark.parametrize("seed", range(5))
def test_clusters_grown_over_linked_contents_equal_those_grown_over_all(seed):
    """dedup visits only the contents in a pair (most are alone): the same representatives as
    growing every content in order."""
    rng = np.random.default_rng(seed)
    n = 300
    a, b = rng.integers(0, n, 150), rng.integers(0, n, 150)
    a, b = a[a != b], b[a != b]
    assert dedup._grow_clusters(n, a, b).tolist() == neardup.grow_clusters(n, a, b, np.arange(n)).tolist()


def test_rows_equal_a_boolean_selection():
    """The keepers' rows, taken column by column, are the frame's rows (Arrow columns in one chunk)."""
    tags = pa.chunked_array([pa.array([["a"], []]), pa.array([["b", "c"], ["d"], []])])
    frame = pd.DataFrame({
        "item_id": pd.array(pa.chunked_array([pa.array(["i0", "i1"]), pa.array(["i2", "i3", "i4"])]).cast(pa.large_string()), dtype="str"),
        "tags": pd.arrays.ArrowExtensionArray(tags),
        "size": np.arange(5),
        "sidecar": pd.Series(["s", None, "t", None, "u"], dtype="str"),
    })
    mask = np.array([True, False, True, True, False])
    expected = frame[mask].reset_index(drop=True)
    rows = manifest.take_rows(frame.copy(), np.flatnonzero(mask))
    pd.testing.assert_frame_equal(rows, expected)
    assert [rows[c].array.__arrow_array__().num_chunks for c in ("item_id", "tags", "sidecar")] == [1, 1, 1]


def test_group_from_gathered_tiles_equals_its_own_search_and_names_an_item_without_audit(chain, tmp_path):
    """Gathered pair tiles rank only the copies of contents in a pair, joining the audit for them
    alone: the groups equal the search's, and every item still needs its audit row."""
    c, _ = chain
    tile = tmp_path / "tile"
    tile.mkdir()
    shutil.copy(c.p["pairs"], tile / "pairs.parquet")
    shutil.copy(c.p["reference_pairs"], tile / "reference.parquet")
    (tile / "stats.json").write_text(json.dumps({"pairs": 0}))
    tiles = {"pairs": [tile / "pairs.parquet"], "reference": [tile / "reference.parquet"], "stats": [tile / "stats.json"]}

    def run(audit_path, out):
        return group.run(c.p["ingest"], audit_path, out, tmp_path / "pairs.parquet", tmp_path / "reference.parquet",
                         c.near_dup, c.p["cache"], tmp_path / "stats.json", tiles=tiles)

    run(c.p["audit"], tmp_path / "groups.parquet")
    pd.testing.assert_frame_equal(manifest.read(tmp_path / "groups.parquet", schemas.GROUPS), manifest.read(c.p["groups"], schemas.GROUPS))

    audit = manifest.read(c.p["audit"], schemas.AUDIT)
    manifest.write(audit[audit["item_id"] != "src:coffee.png"], tmp_path / "audit.parquet", schemas.AUDIT)
    with pytest.raises(manifest.ManifestError, match="no audit row for src:coffee.png"):
        run(tmp_path / "audit.parquet", tmp_path / "groups2.parquet")
