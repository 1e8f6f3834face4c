"""Parquet files joined and split as bytes read back as pyarrow reads the files they came from."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trainset import manifest, parquet_scan, parquet_splice, schemas, seal, shards

from stage_helpers import fake_sha, item_row


def _table(k: int, n: int) -> pa.Table:
    rng = np.random.default_rng(k)
    return pa.table({
        "item_id": pa.array([f"src:{k}-{i}.png" for i in range(n)]),
        "sha256": pa.array([fake_sha(f"{k}-{i}") for i in range(n)]),
        "tags": pa.array([["a", "b"][: i % 3] for i in range(n)], pa.list_(pa.string())),
        "score": pa.array(rng.random(n)),
        "size": pa.array(rng.integers(0, 1 << 40, n)),
        "flag": pa.array(rng.random(n) > 0.5),
        "note": pa.array([None if i % 2 else f"n{i % 3}" for i in range(n)], pa.string()),  # dictionary-encoded
    })


def _write(table: pa.Table, path: Path, **kw) -> Path:
    pq.write_table(table, path, compression="snappy", **kw)
    return path


def _footer_bytes(path: Path) -> tuple[parquet_splice.Footer, bytes]:
    with path.open("rb") as f:
        footer = parquet_splice.Footer.read(f, path)
        f.seek(footer.start)
        return footer, f.read(footer.size - 8 - footer.start)


def test_a_footer_encodes_back_to_its_own_bytes(tmp_path: Path) -> None:
    path = _write(_table(1, 5000), tmp_path / "a.parquet", row_group_size=1200)
    footer, raw = _footer_bytes(path)
    assert len(footer.groups) == 5
    assert parquet_splice.encode(parquet_splice.decode(raw)) == raw        # every field decoded
    out = io.BytesIO()  # every group left in place (pyarrow writes no ordinals)
    parquet_splice._write_footer(out, footer, [footer.moved(k, 0, None) for k in footer.groups], 5000, footer.key_values())
    assert out.getvalue()[:-8] == raw


def _moved_by_tree(raw: bytes, k: int, delta: int, ordinal: int | None) -> bytes:
    """Row group ``k`` moved as a full decode sees it: every offset field of parquet.thrift changed."""
    group = [list(f) for f in parquet_splice.decode(raw) if f[0] == 4][0][2][1][k]
    for chunk in [f for f in group if f[0] == 1][0][2][1]:
        for field in chunk:
            if field[0] == 2 and field[2]:
                field[2] += delta
            if field[0] == 3:
                for column_field in field[2]:
                    if column_field[0] in (9, 10, 11):
                        column_field[2] += delta
    for field in group:
        if field[0] == 5:
            field[2] += delta
    group = [f for f in group if f[0] != 7] + ([[7, 4, ordinal]] if ordinal is not None else [])
    return parquet_splice.encode(group)


SCANS = {"plain": parquet_scan.scan_plain, "compiled": parquet_scan.scan_compiled}


@pytest.fixture(params=sorted(SCANS))
def scan_way(request, monkeypatch) -> str:
    """Every footer read scanned one way: as plain Python, or compiled by numba."""
    monkeypatch.setattr(parquet_scan, "scan", SCANS[request.param])
    return request.param


@pytest.mark.parametrize("delta", [0, 5, -3, 1 << 40])
def test_a_moved_row_group_equals_its_full_decode_moved(tmp_path: Path, delta: int, scan_way: str) -> None:
    """The scan (either way) rewrites exactly the offsets a full decode of the footer finds: data,
    dictionary and index pages, the chunk's and the group's file offsets; the ordinal set or dropped."""
    path = _write(_table(2, 3000), tmp_path / "a.parquet", row_group_size=700)
    joined = tmp_path / "joined.parquet"  # a join writes ordinals, which pyarrow does not
    with joined.open("wb") as f:
        parquet_splice.splice([path], [(0, 3), (0, 1), (0, 4)], f)
    for path in (path, joined):
        _check_moves(path, delta)


def _check_moves(path: Path, delta: int) -> None:
    footer, raw = _footer_bytes(path)
    meta = pq.read_metadata(path)
    for k in footer.groups:
        group = meta.row_group(k)
        assert footer.rows(k) == group.num_rows
        starts = [c.dictionary_page_offset if c.has_dictionary_page else c.data_page_offset for c in map(group.column, range(group.num_columns))]
        assert footer.span(k)[0] == min(starts)
        for ordinal in (None, 0, 9, 300):
            assert footer.moved(k, delta, ordinal) == _moved_by_tree(raw, k, delta, ordinal)


def test_a_damaged_footer_is_refused_or_read_never_crashes(tmp_path: Path, scan_way: str) -> None:
    """The scan (either way) checks every read against the footer's end: cut or flipped bytes give a
    SpliceError (or, where the damage keeps the structure, a footer), never a crash."""
    path = _write(_table(3, 2000), tmp_path / "a.parquet", row_group_size=600)
    _, raw = _footer_bytes(path)
    body = path.read_bytes()[:-8 - len(raw)]
    rng = np.random.default_rng(0)
    outcomes = set()
    for trial in range(400):
        damaged = bytearray(raw)
        if trial % 2:
            damaged = damaged[: int(rng.integers(1, len(raw)))]
        for at in rng.integers(0, len(damaged), int(rng.integers(1, 4))):
            damaged[at] = int(rng.integers(0, 256))
        data = body + bytes(damaged) + len(damaged).to_bytes(4, "little") + b"PAR1"
        try:
            parquet_splice.Footer.read(io.BytesIO(data))
            outcomes.add("read")
        except parquet_splice.SpliceError:
            outcomes.add("refused")
    assert "refused" in outcomes


def _scanned(footer: parquet_splice.Footer) -> list:
    return [footer.data, footer.top.tolist(), footer.group_table.tolist(), footer.sites.tolist(), footer.start, footer.size]


def test_the_two_ways_of_scanning_agree(tmp_path: Path) -> None:
    """Plain Python and numba run the same pass: the same fields, row groups and sites, for a
    file of many row groups as pyarrow writes it, one a splice wrote (with ordinals), and one
    of a single row group; and :func:`parquet_scan.scan` picks plain Python for small footers."""
    many = _write(_table(4, 3000), tmp_path / "many.parquet", row_group_size=400)
    one = _write(_table(5, 90), tmp_path / "one.parquet")
    joined = tmp_path / "joined.parquet"
    with joined.open("wb") as f:
        parquet_splice.splice([many, one], [(0, 6), (1, 0), (0, 2)], f)
    for path in (many, one, joined):
        _, raw = _footer_bytes(path)
        plain, compiled = parquet_scan.scan_plain(raw), parquet_scan.scan_compiled(raw)
        assert plain[0] == compiled[0] == 0
        for a, b in zip(plain[1:], compiled[1:]):
            np.testing.assert_array_equal(a, b)
        assert len(plain[2]) == pq.read_metadata(path).num_row_groups
    assert parquet_scan.PLAIN_BYTES > len(raw)  # a small footer costs no compiler start-up, where none has started


def test_a_splice_knows_the_footer_it_wrote(tmp_path: Path, scan_way: str) -> None:
    """The footer :func:`parquet_splice.splice_scanned` returns is the one a scan of the file it
    wrote finds, byte for byte and place for place, and a splice from that file moves its row
    groups as a scanned footer would: groups picked from two files (one with ordinals), repeated,
    reordered, and the offsets' varints growing and shrinking with the moves."""
    big = _write(_table(6, 6000), tmp_path / "big.parquet", row_group_size=1500)
    small = _write(_table(7, 40), tmp_path / "small.parquet")
    first = tmp_path / "first.parquet"
    with first.open("wb") as f:
        _, told = parquet_splice.splice_scanned([big, small], [(1, 0), (0, 3), (0, 0), (0, 1)], f, {b"x": b"1"})
    with first.open("rb") as f:
        assert _scanned(told) == _scanned(parquet_splice.Footer.read(f, first))
    second = tmp_path / "second.parquet"
    with second.open("wb") as f:
        rows, again = parquet_splice.splice_scanned([small, first], [(1, 2), (0, 0), (1, 0), (1, 3), (1, 1)], f)
    with second.open("rb") as f:
        assert _scanned(again) == _scanned(parquet_splice.Footer.read(f, second))
    whole = pq.read_table(big)
    expected = pa.concat_tables([whole.slice(0, 1500), pq.read_table(small), pq.read_table(small), whole.slice(1500, 1500), whole.slice(4500, 1500)])
    assert rows == 4580 and pq.read_table(second).equals(expected)


def test_a_saved_scan_is_used_only_for_the_footer_it_was_made_of(tmp_path: Path, monkeypatch) -> None:
    path = _write(_table(8, 2000), tmp_path / "a.parquet", row_group_size=500)
    saved = tmp_path / "a.footer.npz"
    with path.open("rb") as f:
        scanned = parquet_splice.Footer.read(f, path)
    scanned.save(saved)

    def no_scan(data):
        raise AssertionError("scanned again")

    monkeypatch.setattr(parquet_scan, "scan", no_scan)
    with path.open("rb") as f:
        assert _scanned(parquet_splice.Footer.read(f, path, saved)) == _scanned(scanned)
    monkeypatch.undo()
    scans = []
    monkeypatch.setattr(parquet_scan, "scan", lambda data: scans.append(data) or parquet_scan.scan_plain(data))
    other = _write(_table(9, 2000), tmp_path / "b.parquet", row_group_size=500)  # another footer: the saved scan is not its
    with other.open("rb") as f:
        assert _scanned(parquet_splice.Footer.read(f, other, saved))[1:4] != _scanned(scanned)[1:4]
    saved.write_bytes(saved.read_bytes()[:100])  # torn: scanned again
    with path.open("rb") as f:
        assert _scanned(parquet_splice.Footer.read(f, path, saved)) == _scanned(scanned)
    with path.open("rb") as f:  # none saved
        parquet_splice.Footer.read(f, path, tmp_path / "missing.npz")
    assert len(scans) == 3


def test_joined_files_read_as_their_tables_one_after_another(tmp_path: Path) -> None:
    paths = [_write(_table(k, n), tmp_path / f"{k}.parquet") for k, n in enumerate([700, 1, 2500])]
    out = io.BytesIO()
    rows = parquet_splice.concat(paths, out, {b"extra": b"yes"})
    joined = pq.ParquetFile(pa.BufferReader(out.getvalue()))
    assert rows == 3201 == joined.metadata.num_rows and joined.metadata.num_row_groups == 3
    assert joined.read().equals(pa.concat_tables([pq.read_table(p) for p in paths]))
    for k, path in enumerate(paths):
        assert joined.read_row_group(k).equals(pq.read_table(path))
    assert joined.metadata.metadata[b"extra"] == b"yes"


def test_a_row_group_split_off_reads_as_it_did(tmp_path: Path) -> None:
    path = _write(_table(3, 4000), tmp_path / "a.parquet", row_group_size=1000)
    whole = pq.ParquetFile(path)
    with path.open("rb") as f:
        footer = parquet_splice.Footer.read(f, path)
        for k in range(4):
            alone = pq.ParquetFile(pa.BufferReader(parquet_splice.row_group_file(f, footer, k, {b"k": str(k).encode()})))
            assert alone.metadata.num_row_groups == 1
            assert alone.read().equals(whole.read_row_group(k))
            assert alone.metadata.metadata[b"k"] == str(k).encode()


def test_files_with_other_schemas_or_a_page_index_are_refused(tmp_path: Path) -> None:
    a = _write(_table(1, 10), tmp_path / "a.parquet")
    b = _write(_table(2, 10).drop_columns(["note"]), tmp_path / "b.parquet")
    with pytest.raises(parquet_splice.SpliceError, match="b.parquet: its schema differs"):
        parquet_splice.concat([a, b], io.BytesIO())
    indexed = _write(_table(3, 10), tmp_path / "c.parquet", write_page_index=True)
    with pytest.raises(parquet_splice.SpliceError, match="c.parquet: has an offset index"):
        parquet_splice.concat([a, indexed], io.BytesIO())
    (tmp_path / "d.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(parquet_splice.SpliceError, match="d.parquet: not a Parquet file"):
        parquet_splice.concat([tmp_path / "d.parquet"], io.BytesIO())


def _part(path: Path, rows: list[dict]) -> Path:
    frame = pd.DataFrame(rows)[list(schemas.DEDUPED.columns)] if rows else manifest.empty(schemas.DEDUPED)
    manifest.write(frame, path, schemas.DEDUPED)
    return path


def test_gather_joins_parts_as_bytes_and_re_encodes_one_typed_apart(tmp_path: Path) -> None:
    """A part written before types were settled (an all-missing column typed null, all-empty lists
    typed as lists of nothing) is cast; the rest are copied. The result equals the decoding gather's."""
    parts = [_part(tmp_path / f"{k:05d}.parquet", [item_row(f"src:{k}-{i}.png", tags=["x"] * (i % 2), sidecar=f"s{i}") for i in range(30)])
             for k in range(3)]
    odd = pd.DataFrame([item_row(f"src:3-{i}.png") for i in range(5)])[list(schemas.DEDUPED.columns)]
    odd["sidecar"] = None
    odd.to_parquet(tmp_path / "00003.parquet", index=False)  # as pandas types it: sidecar null, tags list<null>
    assert pa.types.is_null(pq.read_schema(tmp_path / "00003.parquet").field("sidecar").type)
    parts.append(tmp_path / "00003.parquet")
    joined, decoded = tmp_path / "joined.parquet", tmp_path / "decoded.parquet"
    assert shards.gather(parts, joined, schemas.DEDUPED) == 95
    shards._gathered(parts, decoded, schemas.DEDUPED)
    pd.testing.assert_frame_equal(manifest.read(joined, schemas.DEDUPED), manifest.read(decoded, schemas.DEDUPED))
    assert manifest.shard_groups(joined) == ["00000", "00001", "00002", "00003"]
    with parts[0].open("rb") as f:  # the copied parts' chunks are their bytes
        footer = parquet_splice.Footer.read(f, parts[0])
        f.seek(4)
        chunks = f.read(footer.start - 4)
    assert chunks in joined.read_bytes()


def _parts(folder: Path, changed: dict[int, list[dict]] | None = None) -> list[Path]:
    """Four parts of 30 items each (the third empty); ``changed``: other rows for some of them."""
    folder.mkdir(exist_ok=True)
    rows = {k: [item_row(f"src:{k}-{i}.png", tags=["x"] * (i % 2), sidecar=f"s{i}") for i in range(30 if k != 2 else 0)] for k in range(4)}
    rows.update(changed or {})
    return [_part(folder / f"{k:05d}.parquet", r) for k, r in rows.items()]


def test_a_gather_with_its_last_output_kept_copies_unchanged_parts_and_writes_what_a_fresh_one_does(tmp_path: Path, monkeypatch) -> None:
    """Parts whose files did not change are copied from the kept output without their footers, ids
    or seals being read; the file is byte for byte what a gather with nothing kept writes, and it
    reads back checked by its seal."""
    kept = tmp_path / "kept" / "captioned.parquet"
    parts = _parts(tmp_path / "parts")
    assert shards.gather(parts, tmp_path / "first.parquet", schemas.DEDUPED, kept) == 90
    assert kept.read_bytes() == (tmp_path / "first.parquet").read_bytes()
    changed = _parts(tmp_path / "parts", {1: [item_row(f"src:1-{i}.png", tags=["y"]) for i in range(12)]})  # only part 1 rewritten
    for k in (0, 2, 3):
        os.utime(changed[k], ns=(0, 0))  # a touch changes no part's bytes
    read = []
    original = shards._part_metadata
    monkeypatch.setattr(shards, "_part_metadata", lambda path: read.append(path.name) or original(path))
    assert shards.gather(changed, tmp_path / "second.parquet", schemas.DEDUPED, kept) == 72
    assert sorted(read) == ["00000.parquet", "00001.parquet"]  # the first part lends the file its fields; the changed one
    monkeypatch.undo()
    shards.gather(changed, tmp_path / "fresh.parquet", schemas.DEDUPED, tmp_path / "other" / "captioned.parquet")
    assert (tmp_path / "second.parquet").read_bytes() == (tmp_path / "fresh.parquet").read_bytes()
    assert pq.read_table(kept).equals(pq.read_table(tmp_path / "second.parquet"))  # kept: the changed part appended
    assert manifest.shard_groups(tmp_path / "second.parquet") == ["00000", "00001", "00003"]
    expected = pd.concat([manifest.read(p, schemas.DEDUPED) for p in changed], ignore_index=True)
    pd.testing.assert_frame_equal(manifest.read(tmp_path / "second.parquet", schemas.DEDUPED), expected)
    assert seal.Seal(tmp_path / "second.parquet", schemas.DEDUPED.name, pq.read_metadata(tmp_path / "second.parquet")).intact(
        list(schemas.DEDUPED.columns), None)
    odd = pd.DataFrame([item_row(f"src:3-{i}.png") for i in range(5)])[list(schemas.DEDUPED.columns)]
    odd["sidecar"] = None
    odd.to_parquet(changed[3], index=False)  # typed apart: cast as a gather without a kept output casts it
    shards.gather(changed, tmp_path / "third.parquet", schemas.DEDUPED, kept)
    shards.gather(changed, tmp_path / "fresh3.parquet", schemas.DEDUPED, tmp_path / "other3" / "captioned.parquet")
    assert (tmp_path / "third.parquet").read_bytes() == (tmp_path / "fresh3.parquet").read_bytes()


def test_a_gather_names_an_item_repeated_in_a_changed_part_and_a_copied_one(tmp_path: Path) -> None:
    kept = tmp_path / "kept" / "captioned.parquet"
    shards.gather(_parts(tmp_path / "parts"), tmp_path / "first.parquet", schemas.DEDUPED, kept)
    changed = _parts(tmp_path / "parts", {3: [item_row("src:3-0.png"), item_row("src:0-4.png")]})
    with pytest.raises(manifest.ManifestError, match=r"'item_id' must be unique, repeated at row 24 \('src:0-4.png'\), row 60"):
        shards.gather(changed, tmp_path / "second.parquet", schemas.DEDUPED, kept)
    assert not (tmp_path / "second.parquet").exists()


def test_gather_names_an_item_in_two_parts(tmp_path: Path) -> None:
    a = _part(tmp_path / "00000.parquet", [item_row("src:a.png"), item_row("src:b.png")])
    b = _part(tmp_path / "00001.parquet", [item_row("src:b.png")])
    with pytest.raises(manifest.ManifestError, match=r"'item_id' must be unique, repeated at row 1 \('src:b.png'\), row 2"):
        shards.gather([a, b], tmp_path / "out.parquet", schemas.DEDUPED)
    assert not (tmp_path / "out.parquet").exists()


def test_gather_names_a_torn_part(tmp_path: Path) -> None:
    whole = _part(tmp_path / "00000.parquet", [item_row("src:a.png")])
    torn = _part(tmp_path / "00001.parquet", [item_row("src:b.png")])
    torn.write_bytes(torn.read_bytes()[:200])
    with pytest.raises(manifest.ManifestError, match=r"00001.parquet: not a whole Parquet file .*rerun the job that writes it"):
        shards.gather([whole, torn], tmp_path / "out.parquet", schemas.DEDUPED)
    assert not (tmp_path / "out.parquet").exists()
