"""Shards reused from a stage's last output: keyed by what their rows depend on, copied as bytes,
and the files come out as a run from scratch writes them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import stage_helpers as H
from test_filter import _by_shard, _tricky_manifests
from test_parquet_splice import _scanned
from trainset import manifest, parquet_scan, parquet_splice, row_digests, schemas
from trainset.stages import dedup, split
from trainset.stages import filter as filter_stage

SHARDS = ["00000", "00001", "00002"]


def _rows(shard: str, n: int = 4, tag: str = "smile") -> pd.DataFrame:
    rows = [H.item_row(f"src:{shard}_{k}.png", tags=[tag, f"t{k}"]) for k in range(n)]
    return H.frame(rows, schemas.INGEST)


def _write(path, kept, frames: dict[str, pd.DataFrame], keys: dict[str, str], order=None) -> manifest.ShardedWriter:
    """Shards reused where their key matches the kept file, the others written; returns the writer."""
    with manifest.ShardedWriter(path, schemas.INGEST, kept=kept, order=order or list(frames)) as writer:
        reused = writer.reuse_all(keys)
        for shard, df in frames.items():
            if shard not in reused:
                writer.write(shard, df, keys={shard: keys[shard]})
    return writer


def _fresh(path: Path, frames: dict[str, pd.DataFrame]) -> Path:
    """The shards written from scratch, nothing kept."""
    with manifest.ShardedWriter(path, schemas.INGEST) as writer:
        for shard, df in frames.items():
            writer.write(shard, df)
    return path


# --------------------------------------------------------------------------- the writer


def test_reused_shards_are_copied_and_the_file_equals_a_fresh_write(tmp_path):
    kept = tmp_path / "kept" / "ingest.parquet"
    frames = {s: _rows(s) for s in SHARDS}
    first = _write(tmp_path / "a.parquet", kept, frames, {s: f"k{s}" for s in SHARDS})
    assert first.reused == 0 and kept.exists()
    assert kept.stat().st_ino != (tmp_path / "a.parquet").stat().st_ino  # a copy of its own, not a link
    assert kept.read_bytes() == (tmp_path / "a.parquet").read_bytes()

    frames["00001"] = _rows("00001", tag="tree")
    keys = {"00000": "k00000", "00001": "changed", "00002": "k00002"}
    second = _write(tmp_path / "b.parquet", kept, frames, keys)
    assert second.reused == 2
    fresh = _fresh(tmp_path / "fresh.parquet", frames)
    assert manifest.shard_groups(tmp_path / "b.parquet") == SHARDS
    assert pq.read_table(tmp_path / "b.parquet").equals(pq.read_table(fresh))
    assert parquet_splice.group_digests(tmp_path / "b.parquet") == parquet_splice.group_digests(fresh)
    got = json.loads(pq.read_metadata(tmp_path / "b.parquet").metadata[manifest.KEYS_KEY])
    assert got["groups"] == [keys[s] for s in SHARDS]
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_a_shard_written_after_reused_ones_lands_in_place_and_errors_name_its_row(tmp_path):
    kept = tmp_path / "kept.parquet"
    frames = {s: _rows(s) for s in SHARDS}
    _write(tmp_path / "a.parquet", kept, frames, {s: s for s in SHARDS})
    bad = _rows("00002")
    bad.loc[2, "sha256"] = "not a digest"
    frames["00002"] = bad
    with pytest.raises(manifest.ManifestError, match=r"row 10\b.*src:00002_2\.png"):
        _write(tmp_path / "b.parquet", kept, frames, {"00000": "00000", "00001": "00001", "00002": "new"})
    assert not (tmp_path / "b.parquet").exists()


def test_a_duplicate_id_between_a_reused_and_a_written_shard_is_named(tmp_path):
    kept = tmp_path / "kept.parquet"
    frames = {s: _rows(s) for s in SHARDS}
    _write(tmp_path / "a.parquet", kept, frames, {s: s for s in SHARDS})
    frames["00002"] = pd.concat([_rows("00002"), _rows("00000").iloc[[1]]], ignore_index=True)
    with pytest.raises(manifest.ManifestError, match=r"item_id.*must be unique.*src:00000_1\.png"):
        _write(tmp_path / "b.parquet", kept, frames, {"00000": "00000", "00001": "00001", "00002": "new"})


def test_a_spliced_output_keeps_its_footer_scanned_so_the_next_splice_scans_only_what_it_wrote(tmp_path, monkeypatch):
    """A file spliced from the kept output is kept with its footer as the splice wrote it, and one
    written whole with its footer scanned once when kept: the next run's splice reads that instead
    of scanning the kept file (the footer of a 1M-row manifest), and scans only the shards it wrote
    itself. A kept footer saved for other bytes is not used."""
    kept = tmp_path / "kept" / "ingest.parquet"
    footer_path, output_footer = manifest.Kept(kept).footer_path, manifest.Kept(kept).output_footer_path
    frames = {s: _rows(s) for s in SHARDS}
    keys = {s: f"k{s}" for s in SHARDS}
    _write(tmp_path / "a.parquet", kept, frames, keys)
    with kept.open("rb") as f:  # written whole: scanned once, saved for the kept file and the output (one file, linked)
        assert _scanned(parquet_splice.Footer.read(f, kept, footer_path)) == _scanned(parquet_splice.Footer.read(f, kept))
    with (tmp_path / "a.parquet").open("rb") as f:
        assert _scanned(parquet_splice.Footer.read(f, tmp_path / "a.parquet", output_footer)) == _scanned(parquet_splice.Footer.read(f, kept))
    assert footer_path.stat().st_ino == output_footer.stat().st_ino
    scanned = []

    def scan(data):
        found = parquet_scan.scan_plain(data)
        scanned.append(len(found[2]))  # row groups
        return found

    monkeypatch.setattr(parquet_scan, "scan", scan)

    def run(name: str, changed: str) -> manifest.ShardedWriter:
        frames[changed] = _rows(changed, tag=name)
        keys[changed] = name
        scanned.clear()
        return _write(tmp_path / f"{name}.parquet", kept, frames, keys)

    assert run("b", "00001").reused == 2 and scanned == [1]  # what it wrote alone: the kept file's scan was saved
    with kept.open("rb") as f:
        kept_footer = parquet_splice.Footer.read(f, kept)
    with kept.open("rb") as f:
        assert _scanned(parquet_splice.Footer.read(f, kept, footer_path)) == _scanned(kept_footer)
    scanned.clear()
    assert run("c", "00002").reused == 2 and scanned == [1]  # what it wrote alone
    fresh = _fresh(tmp_path / "fresh.parquet", frames)
    assert pq.read_table(tmp_path / "c.parquet").equals(pq.read_table(fresh))
    other = tmp_path / "other.npz"
    with (tmp_path / "b.parquet").open("rb") as f:
        parquet_splice.Footer.read(f, tmp_path / "b.parquet").save(other)
    os.replace(other, footer_path)  # another file's footer, saved where the kept one's goes
    scanned.clear()
    assert run("d", "00000").reused == 2 and sorted(scanned) == [1, 3]


def test_the_kept_file_takes_only_the_shards_written_and_reads_as_the_output(tmp_path, monkeypatch):
    """A run that copied shards from the kept file appends only the shards it wrote, and a new
    footer, to it (the same file: nothing else copied); it then reads as the output did, lends
    every shard again, and the next output is byte for byte what a kept copy of the whole output
    gives. Shards no longer named pile up until they are as large as the live ones; then the
    output is copied whole."""
    kept = tmp_path / "kept" / "ingest.parquet"
    frames = {s: _rows(s, n=40) for s in SHARDS}
    keys = {s: f"k{s}" for s in SHARDS}
    _write(tmp_path / "a.parquet", kept, frames, keys)
    sizes, inodes = [kept.stat().st_size], [kept.stat().st_ino]
    monkeypatch.setattr(manifest.Kept, "SLACK", 0)
    for run in range(6):
        shard = SHARDS[run % 3]
        frames[shard] = _rows(shard, n=40, tag=f"run{run}")
        keys[shard] = f"run{run}"
        out = tmp_path / f"out{run}.parquet"
        assert _write(out, kept, frames, keys).reused == 2
        assert pq.read_table(kept).equals(pq.read_table(out))
        assert manifest.Kept(kept).groups == {s: (k, keys[s]) for k, s in enumerate(SHARDS)}
        sizes.append(kept.stat().st_size)
        inodes.append(kept.stat().st_ino)
        assert sizes[-1] <= 2 * sum(g.total_byte_size for g in map(pq.read_metadata(out).row_group, range(3))) + 4 * (1 << 14)
        with kept.open("rb") as f:
            assert _scanned(parquet_splice.Footer.read(f, kept)) == _scanned(manifest.Kept(kept).footer())
    steps = list(zip(sizes, sizes[1:], inodes, inodes[1:]))
    assert any(b > a and i == j for a, b, i, j in steps)  # appended to, in place
    assert any(b < a and i != j for a, b, i, j in steps)  # copied whole again, once as large as twice the live shards
    fresh_kept = tmp_path / "fresh" / "ingest.parquet"  # the same run from a kept copy of the whole last output
    fresh_kept.parent.mkdir()
    fresh_kept.write_bytes((tmp_path / "out4.parquet").read_bytes())
    (fresh_kept.parent / "ingest.parquet.stamp").write_text(json.dumps({"size": fresh_kept.stat().st_size, "mtime_ns": fresh_kept.stat().st_mtime_ns}))
    _write(tmp_path / "again.parquet", fresh_kept, frames, keys)
    assert (tmp_path / "again.parquet").read_bytes() == (tmp_path / "out5.parquet").read_bytes()


def test_a_kept_file_torn_while_shards_are_appended_lends_nothing(tmp_path, monkeypatch):
    """A run killed while appending to the kept file leaves it torn and unstamped: the next run
    copies nothing from it and writes every shard, as a run from scratch does."""
    kept = tmp_path / "kept" / "ingest.parquet"
    frames = {s: _rows(s) for s in SHARDS}
    keys = {s: f"k{s}" for s in SHARDS}
    _write(tmp_path / "a.parquet", kept, frames, keys)
    frames["00001"], keys["00001"] = _rows("00001", tag="tree"), "changed"

    def killed(target, target_footer, *args):
        os.truncate(target, target_footer.start)
        raise KeyboardInterrupt

    monkeypatch.setattr(parquet_splice, "update_in_place", killed)
    with pytest.raises(KeyboardInterrupt):
        _write(tmp_path / "b.parquet", kept, frames, keys)
    monkeypatch.undo()
    assert manifest.Kept(kept).groups == {}
    again = _write(tmp_path / "c.parquet", kept, frames, keys)
    assert again.reused == 0
    fresh = _fresh(tmp_path / "fresh.parquet", frames)
    assert pq.read_table(tmp_path / "c.parquet").equals(pq.read_table(fresh))
    assert _write(tmp_path / "d.parquet", kept, frames, keys).reused == 3


def test_a_torn_or_keyless_kept_file_reuses_nothing(tmp_path):
    kept = tmp_path / "kept.parquet"
    frames = {s: _rows(s) for s in SHARDS}
    keys = {s: s for s in SHARDS}
    _write(tmp_path / "a.parquet", kept, frames, keys)
    kept.unlink()
    kept.write_bytes((tmp_path / "a.parquet").read_bytes()[:-100])  # torn
    _restamp(kept)
    assert _write(tmp_path / "b.parquet", kept, frames, keys).reused == 0
    with manifest.ShardedWriter(kept, schemas.INGEST) as writer:  # written without keys
        writer.write("00000", frames["00000"])
    _restamp(kept)
    assert _write(tmp_path / "c.parquet", kept, frames, keys).reused == 0
    assert pq.read_table(tmp_path / "c.parquet").equals(pq.read_table(tmp_path / "a.parquet"))


def _restamp(kept: Path) -> None:
    """The stamp a keep would write for the file as it is now (so only its contents can refuse it)."""
    stat = kept.stat()
    (kept.parent / f"{kept.name}.stamp").write_text(json.dumps({"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}))


def test_a_manifest_touched_or_rewritten_in_place_still_reuses_its_shards(tmp_path):
    """Snakemake touches every output after its job, and a tool may write into a manifest in place:
    the kept file is a copy of its own, so neither changes it, and the shards are still reused."""
    kept = tmp_path / "kept.parquet"
    frames = {s: _rows(s) for s in SHARDS}
    keys = {s: s for s in SHARDS}
    _write(tmp_path / "a.parquet", kept, frames, keys)
    assert _write(tmp_path / "b.parquet", kept, frames, keys).reused == 3
    os.utime(tmp_path / "b.parquet", ns=(kept.stat().st_atime_ns, kept.stat().st_mtime_ns + 1_000_000))  # a touch
    assert _write(tmp_path / "c.parquet", kept, frames, keys).reused == 3
    with open(tmp_path / "c.parquet", "r+b") as f:  # bytes written into the manifest in place
        f.seek(4)
        f.write(b"\0" * 64)
    again = _write(tmp_path / "d.parquet", kept, frames, keys)
    assert again.reused == 3
    assert pq.read_table(tmp_path / "d.parquet").equals(pq.read_table(tmp_path / "a.parquet"))


def test_a_kept_file_changed_after_keeping_lends_no_shard(tmp_path):
    """The stamp guards the kept copy itself: same size, same metadata, only the time tells that
    something else wrote it, and nothing is copied from it."""
    kept = tmp_path / "kept.parquet"
    frames = {s: _rows(s) for s in SHARDS}
    keys = {s: s for s in SHARDS}
    _write(tmp_path / "a.parquet", kept, frames, keys)
    data = kept.read_bytes()
    with open(kept, "r+b") as f:
        f.write(data)
    os.utime(kept, ns=(kept.stat().st_atime_ns, kept.stat().st_mtime_ns + 1_000_000))
    again = _write(tmp_path / "b.parquet", kept, frames, keys)
    assert again.reused == 0
    assert pq.read_table(tmp_path / "b.parquet").equals(pq.read_table(tmp_path / "a.parquet"))
    assert _write(tmp_path / "c.parquet", kept, frames, keys).reused == 3  # b's run kept a trusted file


def test_a_shard_that_came_out_empty_is_reused_as_empty(tmp_path):
    kept = tmp_path / "kept.parquet"
    frames = {"00000": _rows("00000"), "00001": _rows("00001").iloc[:0], "00002": _rows("00002")}
    keys = {s: s for s in SHARDS}
    _write(tmp_path / "a.parquet", kept, frames, keys)
    assert manifest.shard_groups(tmp_path / "a.parquet") == ["00000", "00002"]
    writer = _write(tmp_path / "b.parquet", kept, frames, keys)
    assert writer.reused == 2 and set(writer._empty) == {"00001"}
    assert pq.read_table(tmp_path / "b.parquet").equals(pq.read_table(tmp_path / "a.parquet"))


def test_a_shard_dealt_off_a_manifest_does_not_carry_the_manifests_keys(tmp_path):
    """A dealt part depends on its own rows alone, keys or not (caption jobs rerun on its digest)."""
    from trainset import shards

    frames = {s: _rows(s) for s in SHARDS}
    _write(tmp_path / "keyed.parquet", tmp_path / "kept.parquet", frames, {s: f"key {s}" for s in SHARDS})
    with manifest.ShardedWriter(tmp_path / "plain.parquet", schemas.INGEST) as writer:
        for shard, df in frames.items():
            writer.write(shard, df)
    parts, keys = [], []
    for name in ("keyed", "plain"):
        groups = shards.ShardGroups(tmp_path / f"{name}.parquet", {k: k for k in range(3)})
        try:
            schema = manifest.settled_schema(groups.schema)
            dealt = [part for _, part in groups.parts(["0", "1", "2"], schema)]
            assert all(isinstance(part, shards._GroupPart) for part in dealt)
            keys.append([part.key for part in dealt])
            parts.append([part.data() for part in dealt] + [bytes(shards._part_bytes(groups.rows(0), schema))])
        finally:
            groups.close()
    assert parts[0] == parts[1] and keys[0] == keys[1] and len(set(keys[0])) == 3
    assert manifest.KEYS_KEY not in (pq.read_metadata(pa.BufferReader(parts[0][0])).metadata or {})


def test_read_batches_skips_reused_shards_and_checks_the_rest_where_they_lie(tmp_path):
    path = tmp_path / "m.parquet"
    with manifest.ShardedWriter(path, schemas.INGEST) as writer:
        for s in ["00000", "00001", "00002", "00003"]:
            writer.write(s, _rows(s))
    got = list(manifest.read_batches(path, schemas.INGEST, 100, skip={"00001"}))
    assert len(got) == 1
    shard, df = got[0]
    assert sorted(set(shard)) == ["00000", "00002", "00003"] and len(df) == 12
    assert df["item_id"].str.startswith("src:00001").sum() == 0


# --------------------------------------------------------------------------- digests


def test_group_digests_are_the_parts_digests_after_a_gather(tmp_path):
    from trainset import shards

    parts = []
    for s in SHARDS:
        parts.append(tmp_path / f"{s}.parquet")
        manifest.write(_rows(s), parts[-1], schemas.INGEST)
    shards.gather(parts, tmp_path / "all.parquet", schemas.INGEST)
    assert parquet_splice.group_digests(tmp_path / "all.parquet") == [parquet_splice.group_digests(p)[0] for p in parts]
    assert len(set(parquet_splice.group_digests(tmp_path / "all.parquet"))) == 3


def test_span_digests_hash_each_span_in_order_on_every_thread(tmp_path, monkeypatch):
    import hashlib
    import os

    data = os.urandom(1 << 16)
    path = tmp_path / "bytes.bin"
    path.write_bytes(data)
    spans = [(k * 997 % 60000, k * 997 % 60000 + k * 13) for k in range(200)]
    expected = [hashlib.sha256(data[a:b]).hexdigest() for a, b in spans]
    assert parquet_splice.span_digests(path, spans) == expected
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})  # one core: no pool
    assert parquet_splice.span_digests(path, spans) == expected
    with pytest.raises(parquet_splice.SpliceError, match="ends past the end"):
        parquet_splice.span_digests(path, [(len(data) - 4, len(data) + 4)])


@pytest.mark.parametrize("column", [
    pa.array(["a", "bc", None, "", "d", "ef"]),
    pa.array([["x"], [], None, ["y", "z"], [""], ["w"]], type=pa.list_(pa.string())),
    pa.array([1.5, np.nan, None, 0.0, -0.0, 2.0]),
    pa.array([1, 2, 3, None, 5, 6], type=pa.int64()),
    pa.array([True, False, None, True, False, False]),
])
def test_range_digests_see_every_change_and_only_in_its_range(column):
    bounds = [0, 2, 4, 6]
    before = row_digests.range_digests([column], bounds)
    assert len(set(before)) == 3
    assert row_digests.range_digests([column.slice(0, 6)], bounds) == before
    values = column.to_pylist()
    for k in range(6):  # each value changed in turn (to a neighbour's, or set missing)
        changed = list(values)
        changed[k] = values[(k + 1) % 6] if values[(k + 1) % 6] != values[k] else None
        if changed[k] == values[k]:
            continue
        after = row_digests.range_digests([pa.array(changed, type=column.type)], bounds)
        hit = k // 2
        assert after[hit] != before[hit], (k, changed)
        assert [a for i, a in enumerate(after) if i != hit] == [b for i, b in enumerate(before) if i != hit]


def test_range_digests_tell_a_split_string_from_a_joined_one():
    a = row_digests.range_digests([pa.array(["ab", "c"])], [0, 2])
    b = row_digests.range_digests([pa.array(["a", "bc"])], [0, 2])
    assert a != b


# --------------------------------------------------------------------------- stages


def _spy_batches(monkeypatch) -> set:
    """The shards the stages read from their input manifest, by name."""
    seen: set = set()
    real = manifest.read_batches

    def spy(*args, **kwargs):
        for shard, df in real(*args, **kwargs):
            seen.update(shard.tolist())
            yield shard, df
    monkeypatch.setattr(manifest, "read_batches", spy)
    return seen


def _captioned(tmp_path, name: str, tag: str = "smile") -> tuple:
    path = tmp_path / f"{name}.parquet"
    frames = {}
    with manifest.ShardedWriter(path, schemas.CAPTIONED) as writer:
        for s in SHARDS:
            rows = [H.item_row(f"src:{s}_{k}.png", tags=[tag if s == "00001" else "smile"], caption=f"c {s} {k}") for k in range(5)]
            frames[s] = H.frame(rows, schemas.CAPTIONED)
            writer.write(s, frames[s])
    return path, frames


def test_split_reads_only_the_shards_whose_captioned_rows_changed(tmp_path, monkeypatch):
    kept = tmp_path / "kept"
    first, _ = _captioned(tmp_path, "c1")
    split.run(first, tmp_path / "s1.parquet", tmp_path / "m1.parquet", tmp_path / "history.parquet", 1, {"train": 0.8, "val": 0.1, "test": 0.1}, kept=kept)
    second, _ = _captioned(tmp_path, "c2", tag="tree")
    seen = _spy_batches(monkeypatch)
    split.run(second, tmp_path / "s2.parquet", tmp_path / "m2.parquet", tmp_path / "history.parquet", 1, {"train": 0.8, "val": 0.1, "test": 0.1}, kept=kept)
    assert seen == {"00001"}
    split.run(second, tmp_path / "ref.parquet", tmp_path / "mref.parquet", tmp_path / "h2.parquet", 1, {"train": 0.8, "val": 0.1, "test": 0.1})
    assert pq.read_table(tmp_path / "s2.parquet").equals(pq.read_table(tmp_path / "ref.parquet"))
    seen.clear()  # another seed: every shard again
    split.run(second, tmp_path / "s3.parquet", tmp_path / "m3.parquet", tmp_path / "history.parquet", 2, {"train": 0.8, "val": 0.1, "test": 0.1}, kept=kept)
    assert seen == set(SHARDS)


def test_dedup_reads_only_the_shards_whose_rows_or_keepers_changed(tmp_path, monkeypatch, capsys):
    kept = tmp_path / "kept"
    filtered = tmp_path / "filtered.parquet"
    shas = {s: [H.fake_sha(f"{s}{k}") for k in range(4)] for s in SHARDS}
    frames = {s: H.frame([H.item_row(f"src:{s}_{k}.png", shas[s][k], cluster_key=shas[s][k], cluster_id=shas[s][k][:16],
                                     component_key=shas[s][k]) for k in range(4)], schemas.FILTERED) for s in SHARDS}
    with manifest.ShardedWriter(filtered, schemas.FILTERED) as writer:
        for s in SHARDS:
            writer.write(s, frames[s])
    pairs = tmp_path / "pairs.parquet"
    refs = tmp_path / "refs.parquet"
    manifest.write(manifest.empty(schemas.REFERENCE_PAIRS), refs, schemas.REFERENCE_PAIRS)

    def pairs_of(links):
        rows = [{"a": min(x, y), "b": max(x, y), "distance": 2, "cosine": np.nan, "rule": "phash"} for x, y in links]
        manifest.write(pd.DataFrame(rows) if rows else manifest.empty(schemas.PAIRS), pairs, schemas.PAIRS, sort_by=["a", "b"])

    def run(name):
        dedup.run(filtered, pairs, refs, tmp_path / f"{name}.parquet", tmp_path / f"{name}_clusters.parquet",
                  tmp_path / f"{name}_rejected.parquet", {"max_distance": 6}, kept=kept)

    pairs_of([(shas["00000"][0], shas["00000"][1])])
    run("d1")
    seen = _spy_batches(monkeypatch)
    pairs_of([(shas["00000"][0], shas["00000"][1]), (shas["00002"][1], shas["00002"][3])])  # a new pair in shard 00002
    capsys.readouterr()
    run("d2")
    assert seen == {"00002"}
    # the clusters manifest too: only the shard whose membership changed is written again
    assert "d2_clusters.parquet: 2 of 3 shard(s) copied from the last output" in capsys.readouterr().err
    deduped = manifest.read(tmp_path / "d2.parquet", schemas.DEDUPED)
    assert len(deduped) == 10 and manifest.shard_groups(tmp_path / "d2.parquet") == SHARDS
    monkeypatch.undo()
    dedup.run(filtered, pairs, refs, tmp_path / "ref.parquet", tmp_path / "ref_clusters.parquet", tmp_path / "ref_rejected.parquet",
              {"max_distance": 6})
    assert pq.read_table(tmp_path / "d2.parquet").equals(pq.read_table(tmp_path / "ref.parquet"))
    assert pq.read_table(tmp_path / "d2_clusters.parquet").equals(pq.read_table(tmp_path / "ref_clusters.parquet"))
    clusters = manifest.read(tmp_path / "d2_clusters.parquet", schemas.MEMBERSHIP)
    assert len(clusters) == 12 and (~clusters["keeper"]).sum() == 2

    # a new item in the first shard moves every later row of the file: the later shards' clusters are still copied
    frames["00000"] = H.frame([*frames["00000"].to_dict("records"), H.item_row("src:00000_new.png", H.fake_sha("new"))], schemas.FILTERED)
    with manifest.ShardedWriter(filtered, schemas.FILTERED) as writer:
        for s in SHARDS:
            writer.write(s, frames[s])
    capsys.readouterr()
    run("d3")
    assert "d3_clusters.parquet: 2 of 3 shard(s) copied from the last output" in capsys.readouterr().err
    assert len(manifest.read(tmp_path / "d3_clusters.parquet", schemas.MEMBERSHIP)) == 13


def _judged(monkeypatch) -> set:
    """The item ids the filter judges."""
    seen: set = set()
    real = filter_stage._judge

    def spy(df, *args, **kwargs):
        seen.update(df["item_id"])
        return real(df, *args, **kwargs)
    monkeypatch.setattr(filter_stage, "_judge", spy)
    return seen


def _filtered_once(tmp_path) -> tuple[dict, dict, dict, dict[str, set]]:
    """The tricky manifests by shard, filtered once with a kept folder: (whole paths, sharded
    paths, the filter's arguments, each shard's item ids)."""
    paths, takedown, overrides_file, notes = _tricky_manifests(tmp_path)
    args = dict(audit_params={"min_side": 256}, policy_params={}, annotation_files=[str(notes)],
                overrides_file=str(overrides_file), takedown=takedown, kept=tmp_path / "kept")
    sharded = _by_shard(paths, tmp_path / "sharded")
    items = {p.stem: set(manifest.read(p, schemas.INGEST)["item_id"]) for p in sharded["ingest_shards"]}
    filter_stage.run(sharded, tmp_path / "k1.parquet", tmp_path / "r1.parquet", **args)
    return paths, sharded, args, items


def test_filter_judges_again_only_the_shards_whose_inputs_changed(tmp_path, monkeypatch):
    paths, sharded, args, items = _filtered_once(tmp_path)
    judged = _judged(monkeypatch)
    filter_stage.run(sharded, tmp_path / "k2.parquet", tmp_path / "r2.parquet", **args)
    assert judged == set()  # nothing changed: every shard copied
    for name in ("k", "r"):
        assert pq.read_table(tmp_path / f"{name}2.parquet").equals(pq.read_table(tmp_path / f"{name}1.parquet"))

    # one item's NSFW score changes: its shard alone is judged again
    scores = manifest.read(paths["nsfw"], schemas.NSFW_SCORES)
    target = scores["item_id"].iloc[0]
    scores.loc[0, "nsfw_score"] = 0.99 if scores.loc[0, "nsfw_score"] < 0.5 else 0.01
    manifest.write(scores, paths["nsfw"], schemas.NSFW_SCORES)
    shard = next(s for s, ids in items.items() if target in ids)
    filter_stage.run(sharded, tmp_path / "k3.parquet", tmp_path / "r3.parquet", **args)
    assert judged == items[shard]
    monkeypatch.undo()
    no_kept = {**args, "kept": None}
    filter_stage.run(sharded, tmp_path / "ref_k.parquet", tmp_path / "ref_r.parquet", **no_kept)
    for name in ("k", "r"):
        assert pq.read_table(tmp_path / f"{name}3.parquet").equals(pq.read_table(tmp_path / f"ref_{name}.parquet"))


def test_filter_judges_a_shard_again_when_a_copy_in_another_shard_changes_its_merged_tags(tmp_path, monkeypatch):
    """Tags merge across a cluster: new tags on one member reach the shard of another."""
    paths, sharded, args, items = _filtered_once(tmp_path)
    groups = manifest.read(paths["groups"], schemas.GROUPS)
    shard_of = {i: s for s, ids in items.items() for i in ids}
    groups["shard"] = groups["item_id"].map(shard_of)
    spans = groups.groupby("cluster_key")["shard"].nunique()
    cluster = spans[spans > 1].index[0]
    members = groups[groups["cluster_key"] == cluster]
    changed, other = members.iloc[0], members[members["shard"] != members.iloc[0]["shard"]].iloc[0]
    # the member's tags change in its shard's ingest file and in the whole ingest
    for path in (paths["ingest"], tmp_path / "sharded" / "ingest" / f"{changed['shard']}.parquet"):
        ingest = manifest.read(path, schemas.INGEST)
        at = ingest.index[ingest["item_id"] == changed["item_id"]]
        ingest.loc[at, "tags"] = pd.Series([["brand_new_tag"]] * len(at), index=at, dtype=object)
        manifest.write(ingest, path, schemas.INGEST, sort_by=None)
    judged = _judged(monkeypatch)
    filter_stage.run(sharded, tmp_path / "k2.parquet", tmp_path / "r2.parquet", **args)
    assert items[changed["shard"]] | items[other["shard"]] <= judged
    kept = manifest.read(tmp_path / "k2.parquet", schemas.FILTERED)
    merged = kept[kept["cluster_key"] == cluster]
    assert len(merged) and all("brand_new_tag" in list(tags) for tags in merged["tags"])
    monkeypatch.undo()
    filter_stage.run(sharded, tmp_path / "ref_k.parquet", tmp_path / "ref_r.parquet", **{**args, "kept": None})
    for name in ("k", "r"):
        assert pq.read_table(tmp_path / f"{name}2.parquet").equals(pq.read_table(tmp_path / f"ref_{name}.parquet"))


def test_filter_judges_everything_again_when_a_setting_changes(tmp_path, monkeypatch):
    paths, sharded, args, items = _filtered_once(tmp_path)
    everything = set().union(*items.values())
    judged = _judged(monkeypatch)
    args["policy_params"] = {"untagged": "quarantine"}
    filter_stage.run(sharded, tmp_path / "k2.parquet", tmp_path / "r2.parquet", **args)
    assert judged == everything
    judged.clear()
    H.write_csv(Path(args["overrides_file"]), ["sha256", "action", "add_tags", "remove_tags", "caption", "note"], [])  # its bytes
    filter_stage.run(sharded, tmp_path / "k3.parquet", tmp_path / "r3.parquet", **args)
    assert judged == everything


def test_nsfw_scores_again_only_the_shards_whose_audit_rows_changed(tmp_path, monkeypatch):
    """Scores are written by the audit's shards; a shard whose audit rows did not change is
    copied from the kept scores, and the file equals a run without them."""
    from trainset.stages import nsfw

    rows = {s: [H.item_row(f"src:{s}_{k}.png", decoded=True, reason=None, detail=None) for k in range(3)] for s in SHARDS}
    ingest, audit = tmp_path / "ingest.parquet", tmp_path / "audit.parquet"

    def write(frames):
        manifest.write(H.frame([r for s in SHARDS for r in frames[s]], schemas.INGEST), ingest, schemas.INGEST)
        with manifest.ShardedWriter(audit, schemas.AUDIT) as writer:
            for s in SHARDS:
                writer.write(s, H.frame(frames[s], schemas.AUDIT))

    scored: list = []
    real = nsfw._scored
    monkeypatch.setattr(nsfw, "_scored", lambda rows, *a: scored.append(sorted(rows["item_id"])) or real(rows, *a))

    def run(name, kept=True):
        nsfw.run(ingest, audit, tmp_path / f"{name}.parquet", {"backend": "none"}, tmp_path / "cache", kept=tmp_path / "kept" if kept else None)
        return tmp_path / f"{name}.parquet"

    write(rows)
    run("s1")
    assert len(scored) == 1 and len(scored[0]) == 9  # the three shards in one batch
    scored.clear()
    run("s2")
    assert scored == []
    rows["00001"][2] = H.item_row("src:00001_9.png", decoded=True, reason=None, detail=None)
    write(rows)
    out = run("s3")
    assert scored == [["src:00001_0.png", "src:00001_1.png", "src:00001_9.png"]]
    assert manifest.shard_groups(out) == SHARDS
    assert pq.read_table(out).equals(pq.read_table(run("fresh", kept=False)))


def test_nsfw_refuses_an_audit_with_more_items_than_the_ingest(tmp_path):
    from trainset.stages import nsfw

    rows = [H.item_row(f"src:{k}.png", decoded=True, reason=None, detail=None) for k in range(3)]
    manifest.write(H.frame(rows[:2], schemas.INGEST), tmp_path / "ingest.parquet", schemas.INGEST)
    manifest.write(H.frame(rows, schemas.AUDIT), tmp_path / "audit.parquet", schemas.AUDIT)
    with pytest.raises(manifest.ManifestError, match="audit manifest has 1 item"):
        nsfw.run(tmp_path / "ingest.parquet", tmp_path / "audit.parquet", tmp_path / "s.parquet", None, tmp_path / "cache")
