"""trainset.seal: a manifest's writer seals what it checked; a reader skips checking unchanged chunks."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from test_manifest import _frame, _row, _valid
from trainset import manifest, schemas, seal, shards
from trainset.manifest import ManifestError


@pytest.fixture
def checks(monkeypatch) -> list[int]:
    """Counts the rows each validation is asked to check (the pandas path and the whole-column one)."""
    calls: list[int] = []
    real = manifest.validate
    monkeypatch.setattr(manifest, "validate", lambda df, *a, **k: calls.append(len(df)) or real(df, *a, **k))
    return calls


def _recomputed(path: Path) -> list[list[str]]:
    """Each chunk's digest, from its bytes read here (from its dictionary page where it has one)."""
    meta, data = pq.read_metadata(path), path.read_bytes()
    out = []
    for g in range(meta.num_row_groups):
        row = []
        for c in range(meta.num_columns):
            chunk = meta.row_group(g).column(c)
            start = chunk.dictionary_page_offset if chunk.has_dictionary_page and 0 < chunk.dictionary_page_offset < chunk.data_page_offset \
                else chunk.data_page_offset
            row.append(hashlib.sha256(data[start:start + chunk.total_compressed_size]).hexdigest()[:seal.WIDTH])
        out.append(row)
    return out


def _rewritten_with_seal(path: Path, change) -> None:
    """The file's rows changed by ``change`` (an Arrow table -> table), written again by another
    writer that carries every metadata entry over, the seal included."""
    table = pq.read_table(path)
    kv = pq.read_metadata(path).metadata
    with pq.ParquetWriter(str(path), change(table).schema, compression="snappy") as writer:
        writer.write_table(change(table))
        writer.add_key_value_metadata({k: v for k, v in kv.items() if k != b"ARROW:schema"})


def test_a_written_manifest_is_sealed_and_read_back_without_a_second_check(tmp_path: Path, checks) -> None:
    path = tmp_path / "ingest.parquet"
    manifest.write(_valid(5), path, schemas.INGEST)
    found = seal.read(pq.read_metadata(path))
    assert found["schema"] == schemas.INGEST.name and found["groups"] == _recomputed(path)
    checks.clear()
    whole = manifest.read(path, schemas.INGEST)
    some = manifest.read(path, schemas.INGEST, columns=["sha256", "item_id"])
    assert checks == [] and whole.index.equals(pd.RangeIndex(5)) and some["item_id"].tolist() == whole["item_id"].tolist()

    _valid(5).to_parquet(path, index=False)  # the same rows from another writer: no seal, checked
    assert manifest.read(path, schemas.INGEST)["item_id"].tolist() == whole["item_id"].tolist() and checks == [5]


def test_a_changed_chunk_breaks_the_seal_and_a_bad_row_is_named(tmp_path: Path) -> None:
    path = tmp_path / "ingest.parquet"
    manifest.write(_valid(4), path, schemas.INGEST)
    sha = pq.read_table(path).column("sha256").to_pylist()
    bad = sha[:2] + ["not a digest"] + sha[3:]
    _rewritten_with_seal(path, lambda t: t.set_column(t.schema.get_field_index("sha256"), "sha256", pd.array(bad, dtype="str").__arrow_array__()))
    assert seal.read(pq.read_metadata(path)) is not None  # carried over, but no longer true of the bytes
    assert not seal.Seal(path, schemas.INGEST.name).intact(["sha256"])
    assert seal.Seal(path, schemas.INGEST.name).intact(["item_id"])  # that column's chunk is as sealed
    with pytest.raises(ManifestError, match=r"(?s)ingest.parquet.*sha256") as err:
        manifest.read(path, schemas.INGEST)
    assert "not a digest" in str(err.value) and "row 2" in str(err.value)
    assert manifest.read(path, schemas.INGEST, columns=["item_id"])["item_id"].tolist() == [f"src:dir/{i:03d}.png" for i in range(4)]


def test_a_seal_is_for_its_schema_and_its_checks(tmp_path: Path, monkeypatch, checks) -> None:
    path = tmp_path / "ingest.parquet"
    manifest.write(_valid(3), path, schemas.INGEST)
    assert seal.Seal(path, schemas.INGEST.name).intact(["item_id"])
    assert not seal.Seal(path, "another schema").intact(["item_id"])
    checks.clear()
    monkeypatch.setattr(seal, "checks_digest", lambda: "f" * seal.WIDTH)  # the checks changed since it was written
    manifest.read(path, schemas.INGEST)
    assert checks == [3]


def _sharded(path: Path, kept: Path, rows: dict[str, pd.DataFrame], keys: dict[str, str]) -> None:
    with manifest.ShardedWriter(path, schemas.INGEST, kept=kept, order=sorted(rows)) as out:
        for shard in sorted(rows):
            if not out.reuse(shard, keys[shard]):
                out.write(shard, rows[shard], keys={shard: keys[shard]})


def test_a_manifest_written_by_shard_is_sealed_and_a_reused_shard_keeps_its_digests(tmp_path: Path, checks) -> None:
    path, kept = tmp_path / "m.parquet", tmp_path / "kept.parquet"
    rows = {"00000": _frame(_row(0), _row(1)), "00001": _frame(_row(2)), "00002": _frame(_row(3), _row(4))}
    _sharded(path, kept, rows, {s: "k" for s in rows})
    assert seal.read(pq.read_metadata(path))["groups"] == _recomputed(path)

    rows["00001"] = _frame(_row(2), _row(5))
    _sharded(path, kept, rows, {"00000": "k", "00001": "k2", "00002": "k"})  # two shards copied from the last output
    assert seal.read(pq.read_metadata(path))["groups"] == _recomputed(path)
    checks.clear()
    batches = list(manifest.read_batches(path, schemas.INGEST, 2))
    assert checks == [] and [len(df) for _, df in batches] == [2, 2, 2]
    assert manifest.read(path, schemas.INGEST)["item_id"].tolist() == [_row(i)["item_id"] for i in (0, 1, 2, 5, 3, 4)] and checks == []


def test_a_batch_whose_chunks_changed_is_checked_and_names_its_row_in_the_file(tmp_path: Path) -> None:
    path, kept = tmp_path / "m.parquet", tmp_path / "kept.parquet"
    rows = {"00000": _frame(_row(0), _row(1)), "00001": _frame(_row(2), _row(3))}
    _sharded(path, kept, rows, {s: "k" for s in rows})
    groups = pq.ParquetFile(path)
    tables = [groups.read_row_group(k) for k in range(2)]
    kv = pq.read_metadata(path).metadata
    column = tables[1].schema.get_field_index("rating")
    tables[1] = tables[1].set_column(column, "rating", pd.array(["general", "lewd?"], dtype="str").__arrow_array__())
    with pq.ParquetWriter(str(path), tables[0].schema, compression="snappy") as writer:
        for table in tables:
            writer.write_table(table)
        writer.add_key_value_metadata({k: v for k, v in kv.items() if k != b"ARROW:schema"})
    with pytest.raises(ManifestError, match=r"(?s)m.parquet.*row 3.*rating"):
        list(manifest.read_batches(path, schemas.INGEST, 1))


def test_a_gathered_manifest_takes_its_parts_seals(tmp_path: Path, checks) -> None:
    parts = []
    for k, shard_rows in enumerate([[_row(0), _row(1)], [_row(2)], [_row(3), _row(4), _row(6)]]):
        parts.append(tmp_path / f"{k:05d}.parquet")
        manifest.write(_frame(*shard_rows), parts[-1], schemas.INGEST)
    out = tmp_path / "whole.parquet"
    assert shards.gather(parts, out, schemas.INGEST) == 6
    found = seal.read(pq.read_metadata(out))
    assert found["groups"] == _recomputed(out) == [seal.read(pq.read_metadata(p))["groups"][0] for p in parts]
    checks.clear()
    assert len(manifest.read(out, schemas.INGEST)) == 6 and checks == []


def test_the_same_chunks_declared_otherwise_are_not_sealed(tmp_path: Path, checks) -> None:
    """The seal names how the file declares its columns: the same chunk bytes under other pandas
    metadata (other dtypes on reading) are checked again."""
    import json

    path = tmp_path / "ingest.parquet"
    manifest.write(_valid(3), path, schemas.INGEST)
    chunks = _recomputed(path)

    def redeclared(table):
        meta = json.loads(table.schema.metadata[b"pandas"])
        meta["columns"] = [{**c, "numpy_type": "object"} if c["name"] == "size" else c for c in meta["columns"]]
        return table.replace_schema_metadata({**table.schema.metadata, b"pandas": json.dumps(meta).encode()})

    table, kept = pq.read_table(path), pq.read_metadata(path).metadata[seal.KEY]
    with pq.ParquetWriter(str(path), redeclared(table).schema, compression="snappy") as writer:
        writer.write_table(redeclared(table))
        writer.add_key_value_metadata({seal.KEY: kept})
    assert pq.read_metadata(path).metadata[seal.KEY] == kept and _recomputed(path) == chunks
    assert seal.read(pq.read_metadata(path)) is None
    checks.clear()
    manifest.read(path, schemas.INGEST, columns=["item_id"])
    assert checks == [3]
