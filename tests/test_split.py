"""split stage: deterministic per-component assignment (every near-duplicate pair on one side),
stable under additions, moves reported."""

from __future__ import annotations

import random
from collections import Counter

import pandas as pd
import pytest
from PIL import Image

import stage_helpers as H
from trainset import manifest, schemas
from trainset.stages import split
from trainset.stages.split import SplitError, assign, check_fractions

FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}
SEED = 1337


def _keys(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.getrandbits(256):064x}" for _ in range(n)]


# --------------------------------------------------------------------------- assign


def test_assign_is_deterministic():
    keys = _keys(200)
    first = [assign(k, SEED, FRACTIONS) for k in keys]
    assert [assign(k, SEED, FRACTIONS) for k in keys] == first
    assert set(first) <= set(schemas.SPLITS)


def test_assign_depends_on_seed():
    keys = _keys(500)
    a = [assign(k, 1, FRACTIONS) for k in keys]
    b = [assign(k, 2, FRACTIONS) for k in keys]
    assert a != b
    assert sum(x != y for x, y in zip(a, b)) > 50


@pytest.mark.parametrize(
    "fractions",
    [FRACTIONS, {"train": 0.5, "val": 0.25, "test": 0.25}, {"train": 0.7, "val": 0.0, "test": 0.3}, {"train": 0.34, "val": 0.33, "test": 0.33}],
)
def test_assign_follows_fractions(fractions):
    keys = _keys(5000, seed=42)
    counts = Counter(assign(k, SEED, fractions) for k in keys)
    for name in schemas.SPLITS:
        share = counts[name] / len(keys)
        assert abs(share - fractions[name]) < 0.03, (name, share, fractions)
        if fractions[name] == 0:
            assert counts[name] == 0


@pytest.mark.parametrize("only", schemas.SPLITS)
def test_assign_with_one_split_takes_everything(only):
    fractions = {name: 1.0 if name == only else 0.0 for name in schemas.SPLITS}
    assert {assign(k, SEED, fractions) for k in _keys(300)} == {only}


# --------------------------------------------------------------------------- check_fractions


def test_check_fractions_accepts_valid():
    assert check_fractions(FRACTIONS) == FRACTIONS
    assert check_fractions({"train": "0.9", "val": 0.1}) == {"train": 0.9, "val": 0.1, "test": 0.0}
    assert check_fractions({"train": 0.7, "val": 0.2, "test": 0.1}) == {"train": 0.7, "val": 0.2, "test": 0.1}


@pytest.mark.parametrize(
    "bad",
    [
        {"train": 0.8, "val": 0.1, "test": 0.2},  # sums to 1.1
        {"train": 0.5, "val": 0.1, "test": 0.1},  # sums to 0.7
        {"train": 1.2, "val": -0.1, "test": -0.1},  # negative
        {"train": 0.8, "val": 0.1, "holdout": 0.1},  # unknown split
        {"train": "lots", "val": 0.1, "test": 0.1},  # not a number
        {"train": None, "val": 0.5, "test": 0.5},
        {},
    ],
)
def test_check_fractions_rejects_bad(bad):
    with pytest.raises(SplitError, match="split"):
        check_fractions(bad)


def test_run_rejects_bad_fractions_before_writing(tmp_path):
    path = tmp_path / "captioned.parquet"
    H.write_manifest([H.item_row("src:a.png")], path, schemas.CAPTIONED)
    with pytest.raises(SplitError):
        split.run(path, tmp_path / "split.parquet", tmp_path / "moves.parquet", tmp_path / "hist.parquet", SEED, {"train": 2.0})
    assert not (tmp_path / "split.parquet").exists()
    assert not (tmp_path / "hist.parquet").exists()


# --------------------------------------------------------------------------- run


class Run:
    """split.run on hand-built captioned manifests, with one history file across runs."""

    def __init__(self, root):
        self.root = root
        self.n = 0
        self.history = root / "cache" / "split-history.parquet"

    def __call__(self, rows: list[dict], fractions: dict = FRACTIONS, seed: int = SEED):
        self.n += 1
        captioned = self.root / f"captioned{self.n}.parquet"
        H.write_manifest(rows, captioned, schemas.CAPTIONED)
        out, moves = self.root / f"split{self.n}.parquet", self.root / f"moves{self.n}.parquet"
        split.run(captioned, out, moves, self.history, seed, fractions)
        return manifest.read(out, schemas.SPLIT), manifest.read(moves, schemas.MOVES)


def _clustered_rows(n_clusters: int, size: int, prefix: str = "c") -> list[dict]:
    """``n_clusters`` components of ``size`` members each (key: the smallest SHA-256). Like a
    chain a~b~c grown around a: the first two members share a cluster keyed by the first one's
    SHA-256, every later member is a cluster of its own."""
    rows = []
    for c in range(n_clusters):
        members = [f"src:{prefix}{c:03d}_{m}.png" for m in range(size)]
        shas = [H.fake_sha(m) for m in members]
        key = min(shas)
        for k, (item_id, sha) in enumerate(zip(members, shas)):
            rep = shas[0] if k < 2 else sha
            rows.append(H.item_row(item_id, sha, cluster_key=rep, cluster_id=rep[:16], cluster_size=min(size, 2) if k < 2 else 1,
                                   component_key=key))
    return rows


def _component(key: str, **over) -> dict:
    """Cluster and component columns for an item whose component (and cluster) is keyed ``key``."""
    return {"cluster_key": key, "cluster_id": key[:16], "component_key": key, **over}


def test_run_by_shard_gives_the_rows_of_a_whole_run(tmp_path):
    """A captioned manifest written by shard is split a shard at a time under the same shards: the
    rows, moves and history of the same rows written whole (a component may span shards)."""
    rows = _clustered_rows(6, 3)
    shard_of = {r["item_id"]: f"{k % 3:05d}" for k, r in enumerate(rows)}
    frame = H.frame(rows, schemas.CAPTIONED)
    outs = {}
    for how in ("whole", "by_shard"):
        root = tmp_path / how
        root.mkdir()
        captioned = root / "captioned.parquet"
        if how == "whole":
            manifest.write(frame, captioned, schemas.CAPTIONED)
        else:
            with manifest.ShardedWriter(captioned, schemas.CAPTIONED) as writer:
                for shard in sorted(set(shard_of.values())):
                    writer.write(shard, frame[frame["item_id"].map(shard_of) == shard])
        history = root / "history.parquet"
        # an earlier split with another seed: some items move
        split.run(captioned, root / "old.parquet", root / "old_moves.parquet", history, SEED + 1, FRACTIONS)
        returned = split.run(captioned, root / "split.parquet", root / "moves.parquet", history, SEED, FRACTIONS)
        outs[how] = {"split": manifest.read(root / "split.parquet", schemas.SPLIT), "returned": returned,
                     "moves": manifest.read(root / "moves.parquet", schemas.MOVES), "history": pd.read_parquet(history)}
    assert manifest.shard_groups(tmp_path / "by_shard" / "split.parquet") == ["00000", "00001", "00002"]
    assert len(outs["whole"]["moves"]) > 0
    pd.testing.assert_frame_equal(outs["by_shard"]["moves"], outs["whole"]["moves"])
    for key in ("split", "returned", "history"):
        pd.testing.assert_frame_equal(outs["by_shard"][key].sort_values("item_id", ignore_index=True), outs["whole"][key], obj=key)
    pd.testing.assert_frame_equal(outs["whole"]["returned"], outs["whole"]["split"][["item_id", "split", "component_key"]])


def test_run_assigns_whole_components(tmp_path):
    rows = _clustered_rows(120, 3)
    written, moves = Run(tmp_path)(rows)
    assert len(written) == 360
    assert len(moves) == 0
    assert written["component_key"].nunique() == 120 and written["cluster_key"].nunique() == 240
    per_component = written.groupby("component_key")["split"].nunique()
    assert (per_component == 1).all()
    for key, group in written.groupby("component_key"):
        assert group["split"].iloc[0] == assign(key, SEED, FRACTIONS)
    # the clusters of one component would not all have drawn the component's split on their own
    assert any(assign(r.cluster_key, SEED, FRACTIONS) != r.split for r in written.itertuples())
    assert set(written["split"]) == set(schemas.SPLITS)
    # the written manifest validates and keeps every captioned column
    on_disk = manifest.read(tmp_path / "split1.parquet", schemas.SPLIT)
    assert on_disk["item_id"].tolist() == sorted(r["item_id"] for r in rows)


def test_run_writes_history(tmp_path):
    rows = _clustered_rows(5, 2)
    r = Run(tmp_path)
    written, _ = r(rows)
    history = pd.read_parquet(r.history)
    assert list(history.columns) == ["item_id", "split", "component_key"]
    assert dict(zip(history["item_id"], history["split"])) == dict(zip(written["item_id"], written["split"]))
    assert dict(zip(history["item_id"], history["component_key"])) == dict(zip(written["item_id"], written["component_key"]))


def test_history_from_before_components_reports_no_moves(tmp_path):
    """A history keyed by cluster (written before components) cannot be compared: no moves, and
    the history is rewritten with component keys."""
    r = Run(tmp_path)
    rows = _clustered_rows(30, 1)
    r.history.parent.mkdir(parents=True)
    pd.DataFrame({"item_id": [x["item_id"] for x in rows], "split": "test", "cluster_key": [x["cluster_key"] for x in rows]}).to_parquet(r.history)
    written, moves = r(rows)
    assert set(written["split"]) != {"test"}
    assert len(moves) == 0
    assert list(pd.read_parquet(r.history).columns) == ["item_id", "split", "component_key"]


def test_adding_unrelated_items_moves_nothing(tmp_path):
    r = Run(tmp_path)
    base = _clustered_rows(60, 2, prefix="old")
    first, moves1 = r(base)
    extra = _clustered_rows(60, 2, prefix="new")
    second, moves2 = r(base + extra)
    assert len(moves1) == 0
    assert len(moves2) == 0
    before = dict(zip(first["item_id"], first["split"]))
    after = dict(zip(second["item_id"], second["split"]))
    assert all(after[i] == s for i, s in before.items())
    assert len(after) == 240


def test_removing_items_moves_nothing(tmp_path):
    r = Run(tmp_path)
    rows = _clustered_rows(40, 2)
    first, _ = r(rows)
    second, moves = r(rows[::4])
    assert len(moves) == 0
    before = dict(zip(first["item_id"], first["split"]))
    assert all(before[i] == s for i, s in zip(second["item_id"], second["split"]))


def _key(target: str, first: str, avoid: str | None = None) -> str:
    """A 64-hex component key starting with ``first`` (to control its order) assigned to ``target``."""
    for i in range(100_000):
        key = first + H.fake_sha(f"{first}{target}{i}")[1:]
        if assign(key, SEED, FRACTIONS) == target:
            return key
    raise AssertionError("no key found")  # pragma: no cover


def test_joining_item_that_changes_split_is_reported(tmp_path):
    r = Run(tmp_path)
    old_key = _key("train", first="f")
    x = H.item_row("src:x.png", old_key, **_component(old_key))
    other = _clustered_rows(10, 1, prefix="other")
    first, moves1 = r([x, *other])
    assert H.by_id(first)["src:x.png"]["split"] == "train"
    assert len(moves1) == 0

    new_key = _key("val", first="0")
    assert new_key < old_key
    # y is a near duplicate of x with a smaller sha256: the component key becomes y's sha (the
    # cluster stays keyed by x, its representative)
    y = H.item_row("src:y.png", new_key, **_component(new_key, cluster_key=old_key, cluster_id=old_key[:16], cluster_size=2))
    x2 = {**x, "component_key": new_key, "cluster_size": 2}
    second, moves = r([x2, y, *other])
    rows = H.by_id(second)
    assert rows["src:x.png"]["split"] == rows["src:y.png"]["split"] == "val"
    assert moves.to_dict("records") == [{
        "item_id": "src:x.png",
        "previous_split": "train",
        "split": "val",
        "previous_component_key": old_key,
        "component_key": new_key,
    }]
    # unrelated items stay put
    assert all(H.by_id(first)[i]["split"] == rows[i]["split"] for i in H.by_id(first) if i != "src:x.png")


def test_bridging_item_moves_the_members_whose_split_changes(tmp_path):
    r = Run(tmp_path)
    # two old clusters in different splits, so a bridge must move one of them
    key_a = _key("train", first="e")
    key_b = _key("test", first="d")
    a = H.item_row("src:a.png", key_a, **_component(key_a))
    b = H.item_row("src:b.png", key_b, **_component(key_b))
    first, _ = r([a, b])
    split_a, split_b = H.by_id(first)["src:a.png"]["split"], H.by_id(first)["src:b.png"]["split"]
    assert split_a != split_b

    bridge_key = _key(split_a, first="0")
    members = [a, b, H.item_row("src:bridge.png", bridge_key)]
    # the bridge pairs with a and with b (a and b are no pair): one component, whatever the clusters
    merged = [{**m, "component_key": bridge_key} for m in members]
    second, moves = r(merged)
    assert set(second["split"]) == {split_a}
    assert moves["item_id"].tolist() == ["src:b.png"]
    move = moves.iloc[0]
    assert (move["previous_split"], move["split"]) == (split_b, split_a)
    assert (move["previous_component_key"], move["component_key"]) == (key_b, bridge_key)


def test_key_change_without_split_change_is_not_a_move(tmp_path):
    r = Run(tmp_path)
    old_key = _key("val", first="f")
    target = "val"
    x = H.item_row("src:x.png", old_key, **_component(old_key))
    r([x])
    new_key = _key(target, first="0")
    y = H.item_row("src:y.png", new_key, **_component(new_key))
    second, moves = r([{**x, "component_key": new_key}, y])
    assert len(moves) == 0
    assert set(second["split"]) == {target}


def test_no_history_means_no_moves(tmp_path):
    r = Run(tmp_path)
    assert not r.history.exists()
    _, moves = r(_clustered_rows(5, 1))
    assert len(moves) == 0
    assert r.history.exists()


def test_changing_the_seed_reports_moves(tmp_path):
    r = Run(tmp_path)
    rows = _clustered_rows(50, 1)
    first, _ = r(rows, seed=1)
    second, moves = r(rows, seed=2)
    changed = {i for i, a, b in zip(first["item_id"], first["split"], second["split"]) if a != b}
    assert changed
    assert set(moves["item_id"]) == changed


def test_run_on_real_chain_never_straddles(tmp_path):
    raw = tmp_path / "raw"
    for name in ("astronaut.png", "chelsea.png", "coffee.png", "camera.png", "rocket.jpg"):
        photo = H.sample(name, (240, 200))
        stem = name.split(".")[0]
        H.save(photo, raw / f"{stem}.png")
        H.save(photo.resize((160, 133), Image.Resampling.LANCZOS), raw / "small" / f"{stem}.png")
    c = H.Chain(tmp_path, [H.source(raw)])
    c.through_dedup(min_side=64, max_distance=10)
    # keep every member: the filtered manifest holds every copy, each with its group's component
    filtered = c.read("filtered", schemas.FILTERED)
    assert len(filtered) == 10
    defaults = H.item_row("x")
    for column in schemas.CAPTIONED.columns:
        if column not in filtered.columns:
            filtered[column] = [defaults[column]] * len(filtered)
    manifest.write(filtered, c.p["captioned"], schemas.CAPTIONED)
    written = c.split(fractions={"train": 0.4, "val": 0.3, "test": 0.3})
    assert len(written) == 10
    assert (written.groupby("component_key")["split"].nunique() == 1).all()
    assert written["component_key"].nunique() == 5
    assert (written["cluster_size"] == 2).all()
    groups = H.by_id(c.read("groups", schemas.GROUPS))
    assert all(groups[r.item_id]["component_key"] == r.component_key for r in written.itertuples())
    # every near-duplicate pair lands on one side
    side = dict(zip(written["sha256"], written["split"]))
    pairs = c.read("pairs", schemas.PAIRS)
    assert len(pairs) == 5
    assert all(side[p.a] == side[p.b] for p in pairs.itertuples())


def test_copies_rejected_by_policy_do_not_change_the_component_key(tmp_path):
    """Components are formed before the filter: the key is the smallest sha256 over every raw copy,
    so a kept item's split does not depend on which of its copies policy or dedup removed."""
    raw = tmp_path / "raw"
    photo = H.sample("astronaut.png", (240, 200))
    H.sidecar(H.save(photo, raw / "a.png"), ["space"], rating="g")
    H.save(photo.resize((160, 133), Image.Resampling.LANCZOS), raw / "b.png")
    H.save(H.sample("coffee.png", (240, 200)), raw / "c.png")
    c = H.Chain(tmp_path, [H.source(raw)])
    ingest = H.by_id(c.ingest())
    c.audit()
    c.nsfw()
    c.group()
    sha = {i: r["sha256"] for i, r in ingest.items()}
    overrides = H.write_csv(tmp_path / "overrides.csv", ["sha256", "action"], [[sha["src:a.png"], "exclude"]])
    c.filter(overrides=overrides)
    c.dedup()
    c.caption()
    written = H.by_id(c.split())
    assert sorted(written) == ["src:b.png", "src:c.png"]
    key = min(sha["src:a.png"], sha["src:b.png"])
    assert written["src:b.png"]["component_key"] == key
    assert written["src:b.png"]["split"] == assign(key, SEED, FRACTIONS)
    # the cluster, too, was grown before the filter: around a (more pixels), which was excluded
    assert written["src:b.png"]["cluster_key"] == sha["src:a.png"]
    assert written["src:c.png"]["component_key"] == written["src:c.png"]["cluster_key"] == sha["src:c.png"]


def test_split_keeps_policy_columns(tmp_path):
    rows = [H.item_row("src:a.png", flags=["nsfw", "blurry"], nsfw_flag=True, nsfw_score=0.75, archetype="hero",
                       emotion="joy", harmony_score=3.0, override="action=keep", caption_override="fixed")]
    written, _ = Run(tmp_path)(rows)
    row = H.by_id(manifest.read(tmp_path / "split1.parquet", schemas.SPLIT))["src:a.png"]
    assert list(row["flags"]) == ["nsfw", "blurry"]
    assert (row["nsfw_flag"], row["nsfw_score"], row["archetype"], row["emotion"]) == (True, 0.75, "hero", "joy")
    assert (row["harmony_score"], row["override"], row["caption_override"]) == (3.0, "action=keep", "fixed")


@pytest.mark.parametrize("fractions", [{"train": 0.8, "val": 0.1, "test": 0.1}, {"train": 1 / 3, "val": 1 / 3, "test": 1 / 3},
                                       {"train": 0.0, "val": 0.0, "test": 1.0}, {"train": 0.7, "val": 0.3, "test": 0.0}])
def test_assign_many_agrees_with_assign(fractions):
    rng = random.Random(5)
    keys = pd.Series([f"{rng.getrandbits(256):064x}" for _ in range(3000)] * 2, dtype="str")
    assert list(split.assign_many(keys, 11, fractions)) == [assign(k, 11, fractions) for k in keys]
