"""Shards: stable assignment, per-shard manifests, and the tiled pair search equal to the whole search.
The workflow in small shards (equal to the unsharded build, rerunning only the shard a new image lands
in) is tested on the build through SLURM (tests/test_slurm.py)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import REPO
from stage_helpers import item_row
from trainset import manifest, neardup, parquet_scan, parquet_splice, schemas, shards, views
from trainset.stages import pairs as pair_stage


def _shas(n: int, prefix: str = "c") -> list[str]:
    return [f"{prefix}{k:063d}" for k in range(n)]


def test_assign_fills_the_last_shard_then_opens_new_ones() -> None:
    first = shards.assign(_shas(7), None, 3)
    assert first["shard"].tolist() == [0, 0, 0, 1, 1, 1, 2]
    assert set(first["size"]) == {3}
    # seen contents keep their shard whatever the order; new ones fill shard 2, then shard 3
    grown = shards.assign(_shas(3, "n") + list(reversed(_shas(7))), first, 3)
    shard = dict(zip(grown["sha256"], grown["shard"]))
    assert all(shard[s] == k for s, k in zip(first["sha256"], first["shard"]))
    assert [shard[s] for s in _shas(3, "n")] == [2, 2, 3]


def test_assign_drops_removed_contents_and_keeps_the_rest_in_place() -> None:
    first = shards.assign(_shas(6), None, 3)
    kept = [s for k, s in enumerate(_shas(6)) if k != 1]
    again = shards.assign(kept, first, 3)
    assert dict(zip(again["sha256"], again["shard"])) == {s: k for s, k in zip(first["sha256"], first["shard"]) if s in kept}
    # the freed slot in shard 0 is not refilled: new contents go to the last shard, so shard 0's jobs stay done
    more = shards.assign(kept + _shas(1, "n"), again, 3)
    assert more.set_index("sha256").loc[_shas(1, "n")[0], "shard"] == 2


def test_a_new_shard_size_deals_everything_out_again(tmp_path: Path) -> None:
    path = tmp_path / "map.parquet"
    shards.assign(_shas(5), None, 2).to_parquet(path, index=False)
    assert shards.read_map(path, 2) is not None
    assert shards.read_map(path, 4) is None
    assert shards.read_map(tmp_path / "missing.parquet", 2) is None


@pytest.mark.parametrize("bad", [{"size": 0}, {"size": "big"}, {"gpu": -1}, {"threads": 1.5}, {"sise": 10}])
def test_bad_settings_name_the_key(bad: dict) -> None:
    key = next(iter(bad))
    with pytest.raises(shards.ShardError, match=key):
        shards.settings(bad)


def test_a_job_that_reads_whole_manifests_asks_for_memory_by_what_it_reads() -> None:
    """params.yaml resources: mem_mb plus mem_mb_per_input_mb per MB of input, times the attempt."""
    from trainset import shard_plan

    assert shard_plan.step_settings(None) == {"mem_mb": 1000, "mem_mb_per_input_mb": 8, "runtime": 60}
    shipped = shard_plan.step_settings(yaml.safe_load((REPO / "params.yaml").read_text())["resources"])
    assert shipped == shard_plan.STEP_DEFAULTS
    assert shard_plan.step_mem_mb(shipped, 0.0) == 1000
    assert shard_plan.step_mem_mb(shipped, 250.1) == 3001  # rounded up: never less than the rule says
    assert shard_plan.step_mem_mb(shipped, 250.1, attempt=2) == 6002
    assert shard_plan.step_mem_mb({"mem_mb": 500, "mem_mb_per_input_mb": 0.5, "runtime": 5}, 3000) == 2000


def test_rule_resources_grow_with_the_attempt_and_a_steps_memory_with_its_input() -> None:
    """What rules/common.smk gives a rule: Snakemake calls these with the job's wildcards, input and attempt."""
    from types import SimpleNamespace

    from trainset import shard_plan

    shard = shard_plan.job_resources(shard_plan.settings({"mem_mb": 3000, "runtime": 20}))
    assert [shard["mem_mb"](None, attempt=a) for a in (1, 2)] == [3000, 6000]  # takes no input: never waits for one
    assert [shard["runtime"](None, attempt=a) for a in (1, 3)] == [20, 60]
    step = shard_plan.job_resources(shard_plan.step_settings(None))
    assert step["mem_mb"](None, SimpleNamespace(size_mb=250.1), attempt=1) == 3001
    assert step["mem_mb"](None, SimpleNamespace(size_mb=250.1), attempt=2) == 6002
    assert step["runtime"](None, attempt=2) == 120
    fixed = shard_plan.job_resources(shard_plan.step_settings({"mem_mb_per_input_mb": 0}))
    assert fixed["mem_mb"](None, attempt=1) == 1000


@pytest.mark.parametrize("bad", [{"mem_mb": 0}, {"runtime": True}, {"mem_mb_per_input_mb": -1},
                                 {"mem_mb_per_input_mb": "4"}, {"mem_per_input": 4}])
def test_bad_resources_name_the_key(bad: dict) -> None:
    from trainset import shard_plan

    with pytest.raises(shard_plan.ShardError, match=rf"resources.*{next(iter(bad))}"):
        shard_plan.step_settings(bad)


def _ingest_rows(names: list[tuple[str, str]]) -> pd.DataFrame:
    """Ingest rows (item_id, content) with every column the schema needs."""
    columns = [c for c in schemas.INGEST.columns if c != "schema_version"]
    return manifest.with_version(pd.DataFrame([item_row(item, sha) for item, sha in names])[columns])


def test_split_ingest_keeps_full_shards_byte_stable(tmp_path: Path) -> None:
    ingest = tmp_path / "ingest.parquet"
    names = [(f"s/{k:03d}", sha) for k, sha in enumerate(_shas(5))] + [("s/copy", _shas(5)[0])]
    manifest.write(_ingest_rows(names), ingest, schemas.INGEST)
    out, index_path, map_path = tmp_path / "shards", tmp_path / "index.json", tmp_path / "map.parquet"
    first = shards.split_ingest(ingest, out, index_path, map_path, 2)
    assert sorted(first) == ["00000", "00001", "00002"]
    assert first["00000"] == {"digest": first["00000"]["digest"], "items": 3, "contents": 2}  # the copy sits with its original
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    manifest.write(_ingest_rows(names + [("s/new", "e" * 64)]), ingest, schemas.INGEST)
    second = shards.split_ingest(ingest, out, index_path, map_path, 2)
    assert json.loads(index_path.read_text()) == second
    assert {k: second[k]["digest"] for k in ("00000", "00001")} == {k: first[k]["digest"] for k in ("00000", "00001")}
    assert second["00002"]["digest"] != first["00002"]["digest"] and second["00002"]["contents"] == 2
    assert all((out / name).read_bytes() == data for name, data in before.items() if name != "00002.parquet")
    assert manifest.read(out / "00002.parquet", schemas.INGEST)["item_id"].tolist() == ["s/004", "s/new"]


def test_shard_digests_from_arrow_buffers_equal_the_row_by_row_digest(tmp_path: Path) -> None:
    ingest = tmp_path / "ingest.parquet"
    names = [(f"s/{k:03d}", sha) for k, sha in enumerate(_shas(7))] + [("s/copy", _shas(7)[2]), ("s/\u00e9t\u00e9", "d" * 64)]
    manifest.write(_ingest_rows(names), ingest, schemas.INGEST)
    index = shards.split_ingest(ingest, tmp_path / "shards", tmp_path / "index.json", tmp_path / "map.parquet", 3)
    for shard, entry in index.items():
        rows = manifest.read(tmp_path / "shards" / f"{shard}.parquet", schemas.INGEST)
        assert entry["digest"] == shards.rows_digest(rows.sort_values("item_id"))
        assert entry["items"] == len(rows) and entry["contents"] == rows["sha256"].nunique()


def test_a_cached_split_writes_only_the_changed_parts_and_links_the_rest(tmp_path: Path) -> None:
    """Snakemake empties a checkpoint's output folder before the job: unchanged shards come back as
    links to the part cache (same inode, no write), a changed one is written, stale parts leave it."""
    ingest, out, cache = tmp_path / "ingest.parquet", tmp_path / "shards", tmp_path / "cache"
    names = [(f"s/{k:03d}", sha) for k, sha in enumerate(_shas(5))]
    args = (tmp_path / "index.json", tmp_path / "map.parquet", 2, cache)
    manifest.write(_ingest_rows(names), ingest, schemas.INGEST)
    shards.split_ingest(ingest, out, *args)
    before = {p.name: (p.stat().st_ino, p.read_bytes()) for p in out.iterdir()}
    assert len(list(cache.glob("*.parquet"))) == 3 and all(p.stat().st_nlink == 2 for p in out.iterdir())

    manifest.write(_ingest_rows(names + [("s/new", "e" * 64)]), ingest, schemas.INGEST)
    shards.split_ingest(ingest, out, *args)
    after = {p.name: (p.stat().st_ino, p.read_bytes()) for p in out.iterdir()}
    assert {k: after[k] for k in ("00000.parquet", "00001.parquet")} == {k: before[k] for k in ("00000.parquet", "00001.parquet")}
    assert after["00002.parquet"][0] != before["00002.parquet"][0]
    assert manifest.read(out / "00002.parquet", schemas.INGEST)["item_id"].tolist() == ["s/004", "s/new"]
    assert len(list(cache.glob("*.parquet"))) == 3  # the old shard 2 part is gone from the cache
    # the parts read back as the rows of the whole manifest, with their own row numbers
    whole = manifest.read(ingest, schemas.INGEST)
    parts = pd.concat([manifest.read(out / n, schemas.INGEST) for n in sorted(after)], ignore_index=True)
    pd.testing.assert_frame_equal(parts, whole)
    assert list(pd.read_parquet(out / "00002.parquet").index) == [0, 1]


def test_the_deal_streams_a_batch_at_a_time_and_a_shard_comes_out_when_its_last_row_is_read(tmp_path: Path, monkeypatch) -> None:
    """The ingest is never held whole: rows are dealt a batch at a time, a shard's part is made as
    soon as its last row is read, and the rows of a shard still open wait on disk (a copy of the content at the file's end keeps shard 0 open to the
    end). The parts are the same bytes whatever the batch size: each shard's rows in the file's order."""
    names = [(f"s/{k:03d}", sha) for k, sha in enumerate(_shas(7))] + [("s/zzz", _shas(7)[0])]
    ingest = tmp_path / "ingest.parquet"
    manifest.write(_ingest_rows(names), ingest, schemas.INGEST)
    whole = tmp_path / "whole"
    index = shards.split_ingest(ingest, whole, tmp_path / "index.json", tmp_path / "map.parquet", 2)
    monkeypatch.setattr(shards.ShardRuns, "BATCH_ROWS", 3)
    _, shard_of_row = shards.assign_rows(manifest.read(ingest, schemas.INGEST)["sha256"], None, 2)
    runs = shards.ShardRuns(ingest, shard_of_row, digest_rows=True)
    order = [(shard, rows.column("item_id").to_pylist()) for shard, rows in runs.completed()]
    # batches: s/000-s/002, s/003-s/005, s/006 and s/zzz (within a batch, shards in their order)
    assert order == [(1, ["s/002", "s/003"]), (2, ["s/004", "s/005"]), (0, ["s/000", "s/001", "s/zzz"]), (3, ["s/006"])]
    # the rows of shards still open after a batch went to a spill file beside the manifest (s/000, s/001
    # and s/002 after the first), read back when the shard completed; the spill files are gone
    assert runs.spilled_rows == 3
    assert not [p for p in tmp_path.iterdir() if ".spill-" in p.name]
    stale = tmp_path / ".ingest.parquet.spill-killed"  # as a run killed while dealing leaves it
    (stale / "0.arrow").parent.mkdir()
    (stale / "0.arrow").write_bytes(b"partial")
    assert len(list(shards.ShardRuns(ingest, shard_of_row).completed())) == 4
    assert not [p for p in tmp_path.iterdir() if ".spill-" in p.name]
    assert {shards.name(k): d for k, d in runs.digests.items()} == {k: v["digest"] for k, v in index.items()}
    batched = tmp_path / "batched"
    assert shards.split_ingest(ingest, batched, tmp_path / "index2.json", tmp_path / "map2.parquet", 2) == index
    assert {p.name: p.read_bytes() for p in batched.iterdir()} == {p.name: p.read_bytes() for p in whole.iterdir()}
    manifest.write(_ingest_rows(names[:3]), tmp_path / "short.parquet", schemas.INGEST)
    with pytest.raises(shards.ShardError, match=r"3 rows, but 8 were assigned shards"):
        shards.ShardRuns(tmp_path / "short.parquet", shard_of_row)


def test_a_cached_split_encodes_only_the_parts_whose_rows_changed(tmp_path: Path, monkeypatch) -> None:
    """A part's file is known from its rows' digest: unchanged shards are linked without being
    encoded; a change in any column (here one item's tags) encodes that shard alone, to the bytes
    an uncached split gives; a lost parts index costs encoding, not correctness."""
    ingest, out, cache = tmp_path / "ingest.parquet", tmp_path / "shards", tmp_path / "cache"
    names = [(f"s/{k:03d}", sha) for k, sha in enumerate(_shas(6))]
    args = (tmp_path / "index.json", tmp_path / "map.parquet", 2, cache)
    rows = _ingest_rows(names)
    manifest.write(rows, ingest, schemas.INGEST)
    shards.split_ingest(ingest, out, *args)
    encoded = []
    real = shards._part_bytes
    monkeypatch.setattr(shards, "_part_bytes", lambda table, schema: encoded.append(table.column("item_id").to_pylist()) or real(table, schema))

    before = {p.name: p.read_bytes() for p in out.iterdir()}
    shards.split_ingest(ingest, out, *args)
    assert encoded == [] and {p.name: p.read_bytes() for p in out.iterdir()} == before

    rows.at[3, "tags"] = ["retagged"]
    manifest.write(rows, ingest, schemas.INGEST)
    shards.split_ingest(ingest, out, *args)
    assert encoded == [["s/002", "s/003"]]
    assert manifest.read(out / "00001.parquet", schemas.INGEST)["tags"].tolist()[1] == ["retagged"]
    fresh = tmp_path / "fresh"
    shards.split_ingest(ingest, fresh, tmp_path / "fresh.json", tmp_path / "fresh-map.parquet", 2)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {p.name: p.read_bytes() for p in fresh.iterdir()}

    encoded.clear()
    (cache / shards.PART_INDEX).write_text("{not json")
    shards.split_ingest(ingest, out, *args)
    assert len(encoded) == 3 and {p.name: p.read_bytes() for p in out.iterdir()} == {p.name: p.read_bytes() for p in fresh.iterdir()}


def test_a_truncated_part_in_the_cache_is_written_again(tmp_path: Path) -> None:
    ingest, out, cache = tmp_path / "ingest.parquet", tmp_path / "shards", tmp_path / "cache"
    names = [(f"s/{k:03d}", sha) for k, sha in enumerate(_shas(4))]
    args = (tmp_path / "index.json", tmp_path / "map.parquet", 2, cache)
    manifest.write(_ingest_rows(names), ingest, schemas.INGEST)
    shards.split_ingest(ingest, out, *args)
    broken = out / "00000.parquet"
    size = broken.stat().st_size
    os.truncate(broken, size // 2)  # the link and its cache entry are one file
    shards.split_ingest(ingest, out, *args)
    assert (out / "00000.parquet").stat().st_size == size
    assert manifest.read(out / "00000.parquet", schemas.INGEST)["item_id"].tolist() == ["s/000", "s/001"]


def test_deal_writes_an_index_of_part_digests_that_change_only_with_their_rows(tmp_path: Path) -> None:
    ingest = tmp_path / "ingest.parquet"
    names = [(f"s/{k:03d}", sha) for k, sha in enumerate(_shas(6))]
    manifest.write(_ingest_rows(names), ingest, schemas.INGEST)
    index = shards.split_ingest(ingest, tmp_path / "shards", tmp_path / "index.json", tmp_path / "map.parquet", 2)
    later = tmp_path / "later.parquet"
    dealt, dealt_index, cache = tmp_path / "dealt", tmp_path / "dealt.json", tmp_path / "cache"
    manifest.write(_ingest_rows(names), later, schemas.INGEST)
    shards.deal(later, tmp_path / "map.parquet", sorted(index), dealt, schemas.INGEST, dealt_index, cache)
    first = json.loads(dealt_index.read_text())
    manifest.write(_ingest_rows([n for n in names if n[0] != "s/003"]), later, schemas.INGEST)
    shards.deal(later, tmp_path / "map.parquet", sorted(index), dealt, schemas.INGEST, dealt_index, cache)
    second = json.loads(dealt_index.read_text())
    assert [k for k in sorted(first) if first[k]["digest"] != second[k]["digest"]] == ["00001"]
    assert all(v["digest"] == hashlib.sha256((dealt / f"{k}.parquet").read_bytes()).hexdigest() for k, v in second.items())
    assert second["00001"]["items"] == 1 and manifest.read(dealt / "00001.parquet", schemas.INGEST)["item_id"].tolist() == ["s/002"]


def test_a_deal_of_a_manifest_written_by_shard_makes_only_the_parts_whose_rows_changed(tmp_path: Path, monkeypatch) -> None:
    """Each part of a manifest written by shard is known by its row group's bytes before it is made:
    a rerun links the unchanged parts from the cache without copying or hashing their rows, makes
    the changed one, and comes out as a deal without a cache does. With the manifest's footer
    saved (as its kept copy's is), nothing is scanned."""
    ingest = tmp_path / "ingest.parquet"
    names = [(f"s/{k:03d}", sha) for k, sha in enumerate(_shas(6))]
    manifest.write(_ingest_rows(names), ingest, schemas.INGEST)
    index = shards.split_ingest(ingest, tmp_path / "shards", tmp_path / "index.json", tmp_path / "map.parquet", 2)
    later, saved = tmp_path / "later.parquet", tmp_path / "later.footer.npz"

    def write_by_shard(rows: list) -> None:
        frame = _ingest_rows(rows)
        shard = frame["item_id"].map(lambda i: f"{int(i[2:]) // 2:05d}")
        with manifest.ShardedWriter(later, schemas.INGEST) as writer:
            writer.write(shard.to_numpy(), frame)
        with later.open("rb") as f:
            parquet_splice.Footer.read(f, later).save(saved)

    made = []
    original = shards._GroupPart.data
    monkeypatch.setattr(shards._GroupPart, "data", lambda self: made.append(self._group) or original(self))
    scans = []
    monkeypatch.setattr(parquet_scan, "scan", lambda data: scans.append(1) or parquet_scan.scan_plain(data))
    deal = lambda out, cache: shards.deal(later, tmp_path / "map.parquet", sorted(index), out, schemas.INGEST, tmp_path / f"{out.name}.json",  # noqa: E731
                                          cache, saved)
    write_by_shard(names)
    deal(tmp_path / "dealt", tmp_path / "cache")
    assert made == [0, 1, 2]
    made.clear()
    write_by_shard([n for n in names if n[0] != "s/003"])
    deal(tmp_path / "dealt", tmp_path / "cache")
    assert made == [1]
    assert len(scans) == 2  # the two saves alone
    made.clear()
    deal(tmp_path / "fresh", None)
    assert made == [0, 1, 2]
    assert {p.name: p.read_bytes() for p in (tmp_path / "dealt").iterdir()} == {p.name: p.read_bytes() for p in (tmp_path / "fresh").iterdir()}
    second = json.loads((tmp_path / "dealt.json").read_text())
    assert second == json.loads((tmp_path / "fresh.json").read_text())
    assert all(v["digest"] == hashlib.sha256((tmp_path / "dealt" / f"{k}.parquet").read_bytes()).hexdigest() for k, v in second.items())
    assert manifest.read(tmp_path / "dealt" / "00001.parquet", schemas.INGEST)["item_id"].tolist() == ["s/002"]


def test_deal_splits_a_later_manifest_by_the_shard_of_each_content(tmp_path: Path) -> None:
    """Captions run per shard after the global dedup: its manifest dealt out by the shard map, a file
    per shard listed (empty when dedup left nothing there); a content in no shard is an error."""
    ingest = tmp_path / "ingest.parquet"
    names = [(f"s/{k:03d}", sha) for k, sha in enumerate(_shas(5))] + [("s/copy", _shas(5)[0])]
    manifest.write(_ingest_rows(names), ingest, schemas.INGEST)
    index = shards.split_ingest(ingest, tmp_path / "shards", tmp_path / "index.json", tmp_path / "map.parquet", 2)
    later = tmp_path / "later.parquet"
    manifest.write(_ingest_rows([n for n in names if n[0] not in ("s/002", "s/003")]), later, schemas.INGEST)

    counts = shards.deal(later, tmp_path / "map.parquet", sorted(index), tmp_path / "dealt", schemas.INGEST)
    assert counts == {"00000": 3, "00001": 0, "00002": 1}
    assert manifest.read(tmp_path / "dealt" / "00000.parquet", schemas.INGEST)["item_id"].tolist() == ["s/000", "s/001", "s/copy"]
    assert len(manifest.read(tmp_path / "dealt" / "00001.parquet", schemas.INGEST)) == 0

    manifest.write(_ingest_rows([("s/stray", "f" * 64)]), later, schemas.INGEST)
    with pytest.raises(shards.ShardError, match=r"s/stray .*is in no shard"):
        shards.deal(later, tmp_path / "map.parquet", sorted(index), tmp_path / "dealt", schemas.INGEST)


def _written_by_shard(rows: pd.DataFrame, shard_of: dict[str, str], path: Path, schema=schemas.INGEST) -> Path:
    """``rows`` written a shard at a time (``shard_of``: item id -> shard), shards in order."""
    with manifest.ShardedWriter(path, schema) as writer:
        for shard in sorted(set(shard_of.values())):
            writer.write(shard, rows[rows["item_id"].map(shard_of) == shard])
    return path


def _dealing(tmp_path: Path):
    """Ingest rows in four shards of two contents (shard map and index written), and a later
    manifest's rows: shard 00001's contents gone, tags only outside shard 00000, no artists anywhere."""
    names = [(f"s/{k:03d}", sha) for k, sha in enumerate(_shas(7))] + [("s/copy", _shas(7)[6])]
    manifest.write(_ingest_rows(names), tmp_path / "ingest.parquet", schemas.INGEST)
    index = shards.split_ingest(tmp_path / "ingest.parquet", tmp_path / "shards", tmp_path / "index.json", tmp_path / "map.parquet", 2)
    later = _ingest_rows([n for n in names if n[0] not in ("s/002", "s/003")])
    later["tags"] = [[] if k < 2 else ["tag", f"t{k}"] for k in range(len(later))]
    shard_of = {row.item_id: f"{k:05d}" for row in later.itertuples()
                for k in [int(pd.read_parquet(tmp_path / "map.parquet").set_index("sha256").loc[row.sha256, "shard"])]}
    return index, later, shard_of


def test_deal_takes_the_row_groups_of_a_manifest_written_by_shard_with_the_same_bytes(tmp_path: Path) -> None:
    """A manifest written by shard is dealt a row group at a time, the map not read: the parts, their
    digests and the part cache are those of the same rows written whole and dealt by the map."""
    index, later, shard_of = _dealing(tmp_path)
    assert sorted(set(shard_of.values())) == ["00000", "00002", "00003"]
    whole, by_shard = tmp_path / "whole.parquet", _written_by_shard(later, shard_of, tmp_path / "by_shard.parquet")
    manifest.write(later, whole, schemas.INGEST)
    assert manifest.shard_groups(by_shard) == ["00000", "00002", "00003"]

    expected = shards.deal(whole, tmp_path / "map.parquet", sorted(index), tmp_path / "a", schemas.INGEST, tmp_path / "a.json")
    cache = tmp_path / "cache"
    counts = shards.deal(by_shard, tmp_path / "no-map.parquet", sorted(index), tmp_path / "b", schemas.INGEST, tmp_path / "b.json", cache)
    assert counts == expected == {"00000": 2, "00001": 0, "00002": 2, "00003": 2}
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [f"{k}.parquet" for k in sorted(index)]
    for name in sorted(index):
        assert (tmp_path / "b" / f"{name}.parquet").read_bytes() == (tmp_path / "a" / f"{name}.parquet").read_bytes(), name
    assert (tmp_path / "b.json").read_text() == (tmp_path / "a.json").read_text()
    assert len(list(cache.glob("*.parquet"))) == 4
    # a later whole-written manifest reuses the cached parts: same digests, same files
    shards.deal(whole, tmp_path / "map.parquet", sorted(index), tmp_path / "c", schemas.INGEST, tmp_path / "c.json", cache)
    assert (tmp_path / "c.json").read_text() == (tmp_path / "a.json").read_text() and len(list(cache.glob("*.parquet"))) == 4
    parts = pd.concat([manifest.read(tmp_path / "b" / f"{k}.parquet", schemas.INGEST) for k in sorted(index)], ignore_index=True)
    pd.testing.assert_frame_equal(parts, manifest.read(by_shard, schemas.INGEST))


def test_deal_of_a_manifest_written_by_shard_names_a_shard_the_index_does_not_list(tmp_path: Path) -> None:
    index, later, shard_of = _dealing(tmp_path)
    by_shard = _written_by_shard(later, shard_of, tmp_path / "by_shard.parquet")
    listed = [k for k in sorted(index) if k != "00002"]
    with pytest.raises(shards.ShardError, match=r"by_shard.parquet: row groups of shards \['00002'\] that the index does not list"):
        shards.deal(by_shard, tmp_path / "map.parquet", listed, tmp_path / "dealt", schemas.INGEST)
    twice = tmp_path / "twice.parquet"  # ShardedWriter refuses this; a file written by other means
    with pytest.raises(manifest.ManifestError, match="rows of shard"), manifest.ShardedWriter(twice, schemas.INGEST) as writer:
        writer.write("00000", later.iloc[:1])
        writer.write("00000", later.iloc[1:2])
    table = pq.read_table(by_shard)
    with pq.ParquetWriter(twice, table.schema) as raw:
        raw.write_table(table.slice(0, 1))
        raw.write_table(table.slice(1, 1))
        raw.add_key_value_metadata({manifest.SHARDS_KEY: '["00000", "00000"]'})
    with pytest.raises(shards.ShardError, match=r"twice.parquet: shards \['00000'\] have more than one row group"):
        shards.deal(twice, tmp_path / "map.parquet", sorted(index), tmp_path / "dealt", schemas.INGEST)
    assert not (tmp_path / "dealt").exists()


def test_deal_of_a_manifest_written_as_one_unnamed_shard_goes_by_the_map(tmp_path: Path) -> None:
    """A stage fed a manifest written whole writes its rows as one shard named "": dealt by the map."""
    index, later, _ = _dealing(tmp_path)
    unnamed = _written_by_shard(later, dict.fromkeys(later["item_id"], ""), tmp_path / "unnamed.parquet")
    whole = tmp_path / "whole.parquet"
    manifest.write(later, whole, schemas.INGEST)
    shards.deal(whole, tmp_path / "map.parquet", sorted(index), tmp_path / "a", schemas.INGEST)
    shards.deal(unnamed, tmp_path / "map.parquet", sorted(index), tmp_path / "b", schemas.INGEST)
    assert all((tmp_path / "b" / f"{k}.parquet").read_bytes() == (tmp_path / "a" / f"{k}.parquet").read_bytes() for k in sorted(index))


def test_gather_writes_each_shards_part_as_its_row_group(tmp_path: Path) -> None:
    """The gathered manifest holds the parts' rows, each part its shard's row group (a part with no
    rows none); read whole it is the manifest the parts concatenated give."""
    parts = {"00000": [("s/b", _shas(2)[1]), ("s/a", _shas(2)[0])], "00001": [], "00002": [("s/c", "c" * 64), ("s/d", "d" * 64)]}
    paths = []
    for name, rows in parts.items():
        df = _ingest_rows(rows) if rows else manifest.empty(schemas.INGEST)
        if name == "00002":
            df["tags"] = [["x"], []]
        manifest.write(df, tmp_path / f"{name}.parquet", schemas.INGEST)
        paths.append(tmp_path / f"{name}.parquet")
    assert shards.gather(paths, tmp_path / "gathered.parquet", schemas.INGEST) == 4
    assert manifest.shard_groups(tmp_path / "gathered.parquet") == ["00000", "00002"]
    gathered = manifest.read(tmp_path / "gathered.parquet", schemas.INGEST)
    assert gathered["item_id"].tolist() == ["s/a", "s/b", "s/c", "s/d"]
    manifest.write(shards.concat(paths, schemas.INGEST), tmp_path / "whole.parquet", schemas.INGEST)
    pd.testing.assert_frame_equal(gathered, manifest.read(tmp_path / "whole.parquet", schemas.INGEST))
    by_shard = dict(manifest.read_shards(tmp_path / "gathered.parquet", schemas.INGEST))
    assert by_shard["00002"]["tags"].tolist() == [["x"], []]


def _views(hashes: np.ndarray) -> list[list[str]]:
    """phash_views with every view of a content equal to its one hash."""
    return [[f"{int(h):016x}"] * len(views.VIEW_NAMES) for h in hashes]


@pytest.mark.parametrize(("seed", "block"), [(0, 200_000), (1, 1), (2, 20)])
def test_the_tiles_cover_every_pair_of_the_whole_search(tmp_path: Path, seed: int, block: int, monkeypatch) -> None:
    """Whatever the blocks the earlier shards are compared in (one shard each, a few, all at once)."""
    monkeypatch.setattr(pair_stage, "BLOCK_CONTENTS", block)
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 2**63, size=40, dtype=np.uint64)
    near = base[rng.integers(0, 40, size=30)] ^ (np.uint64(1) << rng.integers(0, 64, size=30).astype(np.uint64))
    hashes = np.concatenate([base, near])
    shas = [f"{k:064x}" for k in rng.permutation(len(hashes))]
    rule = neardup.Rule.from_params({"rule": [{"max_distance": 8}]})
    whole, _ = neardup.content_pairs(rule, shas, neardup.view_matrix(_views(hashes), rule), None, None)
    assert len(whole) >= 30

    size = 9
    paths = []
    for k, start in enumerate(range(0, len(shas), size)):
        audit = pd.DataFrame({"sha256": shas[start:start + size], "phash_views": _views(hashes[start:start + size])})
        audit.to_parquet(tmp_path / f"{k}.parquet", index=False)
        paths.append(tmp_path / f"{k}.npz")
        assert shards.write_hashes(tmp_path / f"{k}.parquet", paths[-1]) == len(audit)
    tiles = [pair_stage.search(rule, paths[: k + 1], None)[0] for k in range(len(paths))]
    gathered = pd.concat(tiles, ignore_index=True).sort_values(["a", "b"], ignore_index=True)
    assert not gathered.duplicated(["a", "b"]).any(), "each pair is found by exactly one tile"
    pd.testing.assert_frame_equal(gathered[list(neardup.PAIR_FIELDS)], whole[list(neardup.PAIR_FIELDS)], check_dtype=False)


def test_sum_stats_adds_numbers_and_keeps_labels(tmp_path: Path) -> None:
    for k, stats in enumerate([{"items": 2, "backend": "numpy", "search": {"contents": 3, "model": "m"}},
                               {"items": 5, "backend": "cupy", "search": {"contents": 4}}]):
        (tmp_path / f"{k}.json").write_text(json.dumps(stats))
    assert shards.sum_stats(sorted(tmp_path.glob("*.json"))) == {"items": 7, "backend": "numpy", "search": {"contents": 7, "model": "m"}}


def test_hashed_views_reads_distinct_decoded_contents(tmp_path: Path) -> None:
    width = len(views.VIEW_NAMES)
    rows = pd.DataFrame({
        "sha256": ["b" * 64, "a" * 64, "b" * 64, "c" * 64],
        "phash_views": [[f"{k:016x}" for k in range(width)], [f"{7:016x}"] * width, [f"{9:016x}"] * width, []],
    })
    rows.to_parquet(tmp_path / "audit.parquet", index=False)
    shas, matrix = shards.hashed_views(tmp_path / "audit.parquet")
    assert shas.tolist() == ["a" * 64, "b" * 64]  # sorted, the first row of a copy, the undecoded one left out
    assert matrix.dtype == np.uint64 and matrix[0].tolist() == [7] * width and matrix[1].tolist() == list(range(width))
    expected = neardup.view_matrix(rows["phash_views"][[1, 0]], neardup.Rule.from_params({"rule": [{"max_distance": 1}]}))
    assert (matrix[:, : expected.shape[1]] == expected).all()
    assert shards.write_hashes(tmp_path / "audit.parquet", tmp_path / "hashes.npz") == 2
    saved_shas, saved, flat = shards.read_hashes(tmp_path / "hashes.npz")
    assert saved_shas.astype(str).tolist() == shas.tolist() and saved.dtype == np.uint64 and (saved == matrix).all()
    (tmp_path / "broken.npz").write_bytes((tmp_path / "hashes.npz").read_bytes()[:100])  # a write cut short
    with pytest.raises(shards.ShardError, match="broken.npz.*rerun its audit_shard"):
        shards.read_flat_views(tmp_path / "broken.npz")

    rows.loc[1, "phash_views"] = ["abc"] * width
    rows.to_parquet(tmp_path / "bad.parquet", index=False)
    with pytest.raises(shards.ShardError, match="bad.parquet"):
        shards.hashed_views(tmp_path / "bad.parquet")
