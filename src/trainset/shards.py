"""Shards: distinct contents in fixed-size, stable sets, so per-item work runs as one job per shard.

A content keeps the shard it was first given (``data/manifests/shard-map.parquet``, versioned with
the data); new contents fill the last shard and then open new ones. Adding a batch therefore
leaves every full shard's rows, and so its digest, unchanged: Snakemake reruns only the shards
whose digest changed (the rules read their shard with ``ancient`` and pass the digest as a
param), plus the cheap gathers. All copies of one content share a shard, so each is decoded once.

Changing ``shards.size`` deals every content out again, in ingest order.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import atomic, manifest, parquet_splice, row_digests, schemas, seal
from .shard_plan import DEFAULTS, ShardError, name, read_index, settings, upto  # noqa: F401 (defined there, light)

MAP_COLUMNS = ("sha256", "shard", "size")


def read_map(path: str | Path, size: int) -> pd.DataFrame | None:
    """The previous assignment, or None when there is none or it was made for another shard size."""
    path = Path(path)
    if not path.exists():
        return None
    previous = pd.read_parquet(path)
    if list(previous.columns) != list(MAP_COLUMNS):
        raise ShardError(f"{path}: expected columns {list(MAP_COLUMNS)}, got {list(previous.columns)}")
    if len(previous) and int(previous["size"].iloc[0]) != size:
        return None
    return previous


def assign(shas, previous: pd.DataFrame | None, size: int) -> pd.DataFrame:
    """sha256 -> shard number for the distinct contents ``shas`` (in order of first appearance).
    Contents seen before keep their shard; new ones fill the highest shard up to ``size``, then
    open new shards. Contents no longer present are dropped (their shard shrinks)."""
    return assign_rows(shas, previous, size)[0]


def assign_rows(shas, previous: pd.DataFrame | None, size: int) -> tuple[pd.DataFrame, np.ndarray]:
    """:func:`assign`, and the shard of each of ``shas``: one dictionary encoding of the Arrow
    text and one hash lookup against the previous map, no Python object per row."""
    values = pa.array(shas, type=pa.string())
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    encoded = values.dictionary_encode()  # values in order of first appearance
    order, codes = encoded.dictionary, encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    shard = np.zeros(len(order), dtype=np.int64)
    known = np.full(len(order), -1, dtype=np.int64)
    if previous is not None and len(previous):  # the map holds each content once, in the order they first appeared
        known = manifest.positions(order, previous["sha256"], unique=True)
    old = known >= 0
    if old.any():
        shard[old] = previous["shard"].to_numpy(dtype=np.int64)[known[old]]
        last = int(shard[old].max())
        filled = int((shard[old] == last).sum())
    else:
        last = int(previous["shard"].max()) if previous is not None and len(previous) else 0
        filled = 0
    # new contents in order: the last shard's free places, then whole new shards
    shard[~old] = last + (filled + np.arange(int((~old).sum()), dtype=np.int64)) // size
    mapping = pd.DataFrame({"sha256": pd.Series(pd.array(order, dtype="str")), "shard": shard, "size": np.full(len(order), size, dtype=np.int64)})
    return mapping, shard[codes]


def rows_digest(rows: pd.DataFrame) -> str:
    """Digest of a shard's ingest rows: what its per-item jobs read (:func:`_digests`, one row set)."""
    h = hashlib.sha256()
    for values in rows[["item_id", "sha256", "path"]].itertuples(index=False):
        h.update("\x1f".join(map(str, values)).encode())
        h.update(b"\x1e")
    return h.hexdigest()


def _digests(table: pa.Table, bounds: np.ndarray) -> list[str]:
    """:func:`rows_digest` of each run of rows ``bounds[k]:bounds[k + 1]`` of ``table``, from Arrow's
    text buffers: each row's ``item_id``, ``sha256`` and ``path`` joined, one hash per run."""
    joined = pc.binary_join_element_wise(*(table.column(c).combine_chunks().cast(pa.large_string()) for c in ("item_id", "sha256", "path")),
                                         pa.scalar("\x1f", pa.large_string()))
    joined = pc.binary_join_element_wise(joined, pa.scalar("", pa.large_string()), pa.scalar("\x1e", pa.large_string()))
    if isinstance(joined, pa.ChunkedArray):
        joined = joined.combine_chunks()
    offsets = np.frombuffer(joined.buffers()[1], dtype=np.int64)[joined.offset: joined.offset + len(joined) + 1]
    data = memoryview(joined.buffers()[2]) if joined.buffers()[2] is not None else memoryview(b"")
    return [hashlib.sha256(data[offsets[a]:offsets[b]]).hexdigest() for a, b in zip(bounds[:-1], bounds[1:])]


def split_ingest(ingest_path: str | Path, out_dir: str | Path, index_path: str | Path, map_path: str | Path, size: int,
                 cache_dir: str | Path | None = None) -> dict:
    """Write one ingest manifest per shard and the index (shard -> digest, items, contents). The rows
    stay Arrow throughout and are dealt as they are read (:class:`ShardRuns`): the ingest is never
    held whole. ``cache_dir``: see :func:`write_parts` (unchanged shards cost no write)."""
    keys = manifest.read(ingest_path, schemas.INGEST, columns=["item_id", "sha256", "path"])  # validated
    mapping, shard_of_row = assign_rows(keys["sha256"], read_map(map_path, size), size)
    del keys
    runs = ShardRuns(ingest_path, shard_of_row, digest_rows=True)
    write_parts(runs, None, out_dir, cache_dir)
    present = runs.shards
    contents = np.bincount(mapping["shard"].to_numpy(), minlength=int(present[-1]) + 1 if len(present) else 0)
    index = {}
    for k, items in zip(present.tolist(), runs.counts.tolist()):
        index[name(k)] = {"digest": runs.digests[k], "items": int(items), "contents": int(contents[k])}
    with atomic.atomic_file(map_path) as tmp:
        mapping.to_parquet(tmp, index=False)
    atomic.write_text(index_path, json.dumps(index, indent=1, sort_keys=True) + "\n")
    return index


class ShardRuns:
    """A Parquet file's rows dealt by shard as they are read, a batch at a time: a shard's rows (in
    the file's order) come out as soon as its last row has been read. Rows of a shard that is not
    yet complete are spilled to a file beside the manifest (Arrow IPC, one per batch read) and read
    back when it completes, so the process holds a batch and a shard, never the whole file (a
    1M-row manifest is gigabytes): copies of one content in a mirror source, read last, keep nearly
    every shard open to the end. ``digest_rows``: record each shard's :func:`rows_digest` in
    :attr:`digests` as it comes out."""

    BATCH_ROWS = 65_536

    def __init__(self, path: str | Path, shard_of_row, digest_rows: bool = False):
        self.path = Path(path)
        self._shard_of_row = np.asarray(shard_of_row, dtype=np.int64)
        self._parquet = pq.ParquetFile(self.path)
        rows = self._parquet.metadata.num_rows
        if rows != len(self._shard_of_row):
            raise ShardError(f"{self.path}: {rows} rows, but {len(self._shard_of_row)} were assigned shards")
        self.schema = self._parquet.schema_arrow
        self.shards, self.counts = np.unique(self._shard_of_row, return_counts=True)
        self._digest_rows = digest_rows
        self.digests: dict[int, str] = {}
        self.spilled_rows = 0

    def completed(self) -> Iterator[tuple[int, pa.Table]]:
        """(shard, its rows) for each shard with rows, in the order their last rows are read."""
        count = dict(zip(self.shards.tolist(), self.counts.tolist()))
        held: dict[int, int] = collections.defaultdict(int)
        spilled: dict[int, list[tuple[Path, int]]] = collections.defaultdict(list)  # shard -> (spill file, record batch)
        start = 0
        prefix = f".{self.path.name}.spill-"
        for stale in self.path.parent.glob(f"{prefix}*"):  # left by a run killed while dealing (the folder is data, tracked)
            shutil.rmtree(stale, ignore_errors=True)
        with tempfile.TemporaryDirectory(prefix=prefix, dir=self.path.parent) as tmp:
            for k, batch in enumerate(self._parquet.iter_batches(batch_size=self.BATCH_ROWS)):
                shard = self._shard_of_row[start:start + batch.num_rows]
                start += batch.num_rows
                order = np.argsort(shard, kind="stable")
                present, first = np.unique(shard[order], return_index=True)
                done, open_ = [], []
                for s, a, b in zip(present.tolist(), first.tolist(), [*first[1:].tolist(), len(order)]):
                    piece = batch.take(pa.array(order[a:b]))  # a copy: holds none of the batch's buffers
                    held[s] += b - a
                    (done if held[s] == count[s] else open_).append((s, piece))
                del batch
                if open_:
                    spill = Path(tmp) / f"{k}.arrow"
                    with pa.OSFile(str(spill), "wb") as sink, pa.ipc.new_file(sink, open_[0][1].schema) as writer:
                        for j, (s, piece) in enumerate(open_):
                            writer.write_batch(piece)
                            spilled[s].append((spill, j))
                            self.spilled_rows += piece.num_rows
                    del open_
                for s, piece in done:
                    parts = [_spilled_batch(f, j) for f, j in spilled.pop(s, [])]
                    rows = pa.Table.from_batches([*parts, piece], schema=piece.schema).combine_chunks()
                    del parts
                    if self._digest_rows:
                        self.digests[s] = _digests(rows, np.array([0, rows.num_rows]))[0]
                    yield s, rows

    def parts(self, names: list[str], schema: pa.Schema) -> Iterator[tuple[str, memoryview | bytes]]:
        """(shard, its rows as a Parquet file of their own in ``schema``'s types) for each of
        ``names``: those with rows as they complete, then the others, empty."""
        for shard, rows in self.completed():
            yield name(shard), _Part(rows, schema)
        for shard in sorted(set(names) - {name(int(k)) for k in self.shards}):
            yield shard, _Part(self.schema.empty_table(), schema)


_WRITER = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
"""This module's code, which decides how a part is encoded (with pyarrow's version)."""


class _Part:
    """A shard's rows before they become a Parquet file of their own. The file's bytes depend on
    the rows' values, their schema and the Parquet writer alone, so :attr:`key` (those digested,
    straight from the Arrow buffers) names the file before it is encoded: a part whose file the
    cache already holds is never encoded again (encoding is most of what dealing an unchanged
    shard would cost)."""

    def __init__(self, rows: pa.Table, schema: pa.Schema):
        self.rows = rows.cast(schema)
        self.schema = schema

    @property
    def key(self) -> str | None:
        """Digest of everything the part's bytes depend on; None for a column type the row
        digests do not cover (the part is then encoded to be known)."""
        try:
            rows = row_digests.range_digests(self.rows.columns, [0, self.rows.num_rows])[0]
        except TypeError:
            return None
        h = hashlib.sha256(f"parquet part\0{pa.__version__}\0{_WRITER}\0{self.rows.num_rows}\0".encode())
        h.update(self.schema.serialize())
        h.update(rows.encode())
        return h.hexdigest()

    def data(self) -> memoryview:
        return _part_bytes(self.rows, self.schema)


def _spilled_batch(path: Path, index: int) -> pa.RecordBatch:
    """Record batch ``index`` of a spill file, read into memory (the file is closed again)."""
    with pa.OSFile(str(path)) as source:
        return pa.ipc.open_file(source).get_batch(index)


class ShardGroups:
    """The rows of a manifest written by shard (``manifest.ShardedWriter``), each row group its
    shard's, read one group at a time as :func:`write_parts` asks for them (the file is never held
    whole). ``saved``: where a scan of the manifest's footer may have been saved
    (:meth:`parquet_splice.Footer.save`)."""

    def __init__(self, path: str | Path, group_of: dict[int, int], saved: str | Path | None = None):
        self.path = Path(path)
        self._file = self.path.open("rb")
        self._footer: parquet_splice.Footer | None = None
        self._saved = saved
        self._spans: dict[int, str] | None = None  # row group -> digest of its column chunks
        self.parquet = pq.ParquetFile(path)
        self.schema = self.parquet.schema_arrow
        self.shards = np.array(sorted(group_of), dtype=np.int64)
        self._group_of = group_of

    def close(self) -> None:
        self._file.close()

    def rows(self, shard: int) -> pa.Table:
        group = self._group_of.get(int(shard))
        return self.schema.empty_table() if group is None else self.parquet.read_row_group(group)

    def parts(self, names: list[str], schema: pa.Schema) -> Iterator[tuple[str, "_GroupPart | memoryview | bytes"]]:
        """(shard, its part) for each of ``names``, in that order: a :class:`_GroupPart` where the
        file is typed as ``schema`` (as a manifest written by shard is) and its footer can be moved,
        else the rows decoded and written again (:func:`_part_bytes`)."""
        for shard in names:
            group = self._group_of.get(int(shard))
            if group is not None and self.schema.equals(schema, check_metadata=False) and self._readable():
                yield shard, _GroupPart(self, group)
            else:
                yield shard, _part_bytes(self.rows(int(shard)), schema)

    def _readable(self) -> bool:
        if self._footer is None:
            try:
                self._footer = parquet_splice.Footer.read(self._file, self.path, self._saved)
            except parquet_splice.SpliceError:
                return False
        return True

    def key_values(self) -> dict[bytes, bytes]:
        return {k: v for k, v in self._footer.key_values().items() if k not in manifest.WHOLE_FILE_KEYS}

    def span_digest(self, group: int) -> str:
        """SHA-256 of the group's column chunks as stored (every group's hashed at the first call,
        on every core: :func:`parquet_splice.span_digests`)."""
        if self._spans is None:
            groups = sorted(set(self._group_of.values()))
            self._spans = dict(zip(groups, parquet_splice.span_digests(self.path, [self._footer.span(k) for k in groups])))
        return self._spans[group]

    def chunks(self, group: int) -> bytes:
        """The group's column chunks as stored."""
        a, b = self._footer.span(group)
        data = os.pread(self._file.fileno(), b - a, a)
        if len(data) != b - a:
            raise parquet_splice.SpliceError(f"{self.path}: a column chunk ends past the end of the file")
        return data

    def tail(self, group: int) -> bytes:
        """What follows the group's chunks in a file of its own (:func:`parquet_splice.row_group_tail`)."""
        return parquet_splice.row_group_tail(self._footer, group, self.key_values())


class _GroupPart:
    """A row group of a manifest written by shard as a file of its own (:func:`parquet_splice.row_group_file`).
    Its bytes are the group's column chunks and the tail written after them, so :attr:`key` (the
    chunks' digest and the tail) names the file before it is made: a part the cache holds is linked
    without its rows being copied or hashed again."""

    def __init__(self, groups: ShardGroups, group: int):
        self._groups, self._group = groups, group
        self._tail: bytes | None = None

    @property
    def tail(self) -> bytes:
        if self._tail is None:
            self._tail = self._groups.tail(self._group)
        return self._tail

    @property
    def key(self) -> str:
        h = hashlib.sha256(b"row group part\0")
        h.update(self._groups.span_digest(self._group).encode())
        h.update(self.tail)
        return h.hexdigest()

    def data(self) -> bytes:
        return parquet_splice.MAGIC + self._groups.chunks(self._group) + self.tail


def write_parts(runs: ShardRuns | ShardGroups, names, out_dir: str | Path, cache_dir: str | Path | None) -> dict[str, dict]:
    """One Parquet file per shard of ``runs`` in ``out_dir`` (which is replaced whole); ``names``:
    the shards to write, an empty file where one has no rows (None: the shards that have rows).
    Returns shard -> {digest of the part's content, items}.

    A part's file depends only on its rows; its digest is the file's SHA-256. With a ``cache_dir``
    each part is written there once, named by that digest, and hard-linked into ``out_dir``: a
    rerun after a 1 % change writes 1 % of the parts (Snakemake removes a job's output folder before the job, so unchanged parts must come
    from elsewhere). The cache keeps only the parts the last call linked."""
    present = [name(int(k)) for k in runs.shards]
    wanted = present if names is None else [str(n) for n in names]
    stray = sorted(set(present) - set(wanted))
    if stray:
        raise ShardError(f"rows fall in shards {stray[:5]} that the index does not list")
    schema = manifest.settled_schema(runs.schema)  # each part typed by its own rows, not by the others'
    cache = Path(cache_dir) if cache_dir is not None else None
    known = _PartIndex(cache / PART_INDEX if cache is not None else None)
    out: dict[str, dict] = {}
    with atomic.atomic_dir(out_dir) as tmp_dir:
        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
        for shard, data in runs.parts(wanted, schema):
            key = data.key if isinstance(data, (_Part, _GroupPart)) and cache is not None else None
            found = known.get(key, cache)
            if found is not None:  # the file these rows make is cached: link it, encode nothing
                out[shard] = found
                atomic.link(cache / f"{found['digest']}.parquet", tmp_dir / f"{shard}.parquet")
                known.note(key, found)
                continue
            if isinstance(data, (_Part, _GroupPart)):
                data = data.data()
            digest = hashlib.sha256(data).hexdigest()
            out[shard] = {"digest": digest, "items": pq.read_metadata(pa.BufferReader(data)).num_rows}
            known.note(key, {**out[shard], "size": len(data)})
            target = tmp_dir / f"{shard}.parquet"
            if cache is None:
                target.write_bytes(data)
                continue
            cached = cache / f"{digest}.parquet"
            if not cached.is_file() or cached.stat().st_size != len(data):  # a truncated or emptied entry is written again
                atomic.write_bytes(cached, data)
            atomic.link(cached, target)
    if cache is not None:
        keep = {f"{v['digest']}.parquet" for v in out.values()}
        for stale in cache.glob("*.parquet"):
            if stale.name not in keep:
                stale.unlink(missing_ok=True)
        known.save()
    return {shard: {"digest": v["digest"], "items": v["items"]} for shard, v in sorted(out.items())}


PART_INDEX = "parts.json"
"""In a parts cache: the key of each cached part's rows (:attr:`_Part.key`) -> its file's digest, size and rows."""


class _PartIndex:
    """Which cached part file a shard's rows make, from the last call; kept to the parts linked this call."""

    def __init__(self, path: Path | None):
        self.path = path
        self.last: dict[str, dict] = {}
        self.now: dict[str, dict] = {}
        if path is not None:
            with contextlib.suppress(OSError, ValueError):
                found = json.loads(path.read_text())
                self.last = found if isinstance(found, dict) else {}

    def get(self, key: str | None, cache: Path | None) -> dict | None:
        """The part file noted for ``key``, when the cache still holds it whole (its size as noted)."""
        found = self.last.get(key) if key is not None and cache is not None else None
        if not isinstance(found, dict) or not {"digest", "size", "items"} <= set(found):
            return None
        cached = cache / f"{found['digest']}.parquet"
        return found if cached.is_file() and cached.stat().st_size == found["size"] else None

    def note(self, key: str | None, part: dict) -> None:
        if key is not None:
            self.now[key] = part

    def save(self) -> None:
        if self.path is not None:
            atomic.write_text(self.path, json.dumps(self.now, sort_keys=True))


def _part_bytes(rows: pa.Table, schema: pa.Schema) -> memoryview:
    return _parquet_bytes(_part_table(rows.cast(schema), json.loads((schema.metadata or {}).get(b"pandas", b"null"))))


def _part_table(part: pa.Table, meta) -> pa.Table:
    """A part as one chunk per column, its pandas metadata's row range its own (not the whole table's)."""
    part = part.combine_chunks()
    if meta:
        meta = {**meta, "index_columns": [
            {**c, "start": 0, "stop": part.num_rows, "step": 1} if isinstance(c, dict) and c.get("kind") == "range" else c
            for c in meta.get("index_columns", [])]}
        part = part.replace_schema_metadata({**part.schema.metadata, b"pandas": json.dumps(meta).encode()})
    return part


def _parquet_bytes(table: pa.Table) -> memoryview:
    """The table as a Parquet file, in memory: equal rows give equal bytes whatever the table's
    layout in memory (an Arrow IPC stream keeps slice offsets and padding, so it would not)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="snappy")
    return memoryview(sink.getvalue())


def concat(paths, schema) -> pd.DataFrame:
    """One manifest from shard manifests (validated on write; read here without a second check),
    joined as Arrow tables and converted once. Every list column stays Arrow: the gather only
    passes them on, and ``manifest.write`` writes them as the lists of text they stand for (a part
    whose lists are all empty, or whose column is all missing, takes the other parts' types)."""
    tables = [table.replace_schema_metadata(None) for table in (pq.ParquetFile(p).read() for p in paths) if table.num_rows]
    if not tables:
        return manifest.empty(schema)
    table = pa.concat_tables(tables, promote_options="permissive")
    lists = [f.name for f in table.schema if pa.types.is_list(f.type)]
    frame = table.drop_columns(lists).to_pandas()
    for name in lists:
        values = table.column(name)
        if pa.types.is_null(values.type.value_type):
            values = values.cast(pa.list_(pa.string()))
        frame[name] = pd.Series(pd.arrays.ArrowExtensionArray(values), index=frame.index)
    return frame[table.column_names]


def sum_stats(paths) -> dict:
    """Numbers summed over the shards' stats files; other values taken from the first that has them."""
    out: dict = {}
    for path in paths:
        for key, value in json.loads(Path(path).read_text()).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and isinstance(out.get(key, 0), (int, float)):
                out[key] = out.get(key, 0) + value
            elif isinstance(value, dict):
                inner = out.setdefault(key, {})
                for k, v in value.items():
                    if isinstance(v, (int, float)) and not isinstance(v, bool):
                        inner[k] = inner.get(k, 0) + v
                    else:
                        inner.setdefault(k, v)
            else:
                out.setdefault(key, value)
    return out


def contents(audit_rows: pd.DataFrame) -> pd.DataFrame:
    """sha256 and phash_views of the hashed distinct contents among audit rows, by sha256."""
    hashed = audit_rows[audit_rows["phash_views"].map(len) > 0]
    return hashed.drop_duplicates("sha256").sort_values("sha256", ignore_index=True)[["sha256", "phash_views"]]


def embedding_matrix(table: pd.DataFrame | None, shas) -> np.ndarray | None:
    """Rows of the shard's embeddings aligned with ``shas`` (zeros where a content has none)."""
    if table is None:
        return None
    dim = len(table["embedding"].iloc[0]) if len(table) else 1
    row = dict(zip(table["sha256"], range(len(table))))
    vectors = np.stack(table["embedding"].to_numpy()) if len(table) else np.zeros((0, dim), np.float32)
    out = np.zeros((len(shas), dim), dtype=np.float32)
    for k, sha in enumerate(shas):
        if sha in row:
            out[k] = vectors[row[sha]]
    return out


def hashed_views(audit_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The distinct hashed contents of an audit shard, by sha256: their SHA-256s and every view's
    pHash as an (n, views) uint64 matrix. Parsed from Arrow's buffers in one pass, once per shard:
    :func:`write_hashes` keeps the result for the pair tiles."""
    table = pq.read_table(audit_path, columns=["sha256", "phash_views"]).combine_chunks()
    lists = table.column("phash_views").chunk(0) if table.num_rows else None
    if lists is None:
        return np.zeros(0, dtype=object), np.zeros((0, 0), dtype=np.uint64)
    lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False)
    hashed = np.flatnonzero(lengths > 0)
    width = int(lengths[hashed[0]]) if len(hashed) else 0
    shas = table.column("sha256").to_numpy()
    unique_shas, first = np.unique(shas[hashed].astype(str), return_index=True)
    rows = hashed[first]
    if not len(rows):
        return unique_shas.astype(object), np.zeros((0, width), dtype=np.uint64)
    picked = lists.take(rows)
    flat = picked.flatten()
    sizes = pc.binary_length(flat)
    if (lengths[rows] != width).any() or pc.min(sizes).as_py() != 16 or pc.max(sizes).as_py() != 16:
        raise ShardError(f"{audit_path}: phash_views must hold {width} 16-digit hex pHashes per decoded item")
    offsets = np.frombuffer(flat.buffers()[1], dtype=np.int32)[flat.offset: flat.offset + len(flat) + 1]
    data = flat.buffers()[2].to_pybytes()[offsets[0]: offsets[-1]]
    views = np.frombuffer(bytes.fromhex(data.decode("ascii")), dtype=">u8").astype(np.uint64).reshape(len(rows), width)
    return unique_shas.astype(object), views


def write_hashes(audit_path: str | Path, out: str | Path) -> int:
    """A shard's :func:`hashed_views`, and their ``neardup.FlatViews``, in a file that loads in a
    few milliseconds (``.npz``): every pair tile loads each earlier shard's, so a build loads
    shards x shards / 2 of them."""
    from .neardup import FlatViews  # noqa: PLC0415  (neardup's kernels only where hashes are written)

    shas, views = hashed_views(audit_path)
    flat = FlatViews.of(views)
    with atomic.atomic_file(out) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, sha256=shas.astype("S64"), views=views, flat=flat.flat, owner=flat.owner.astype(np.int32),
                 columns=flat.columns)
    return len(shas)


def read_hashes(path: str | Path):
    """What :func:`write_hashes` wrote: the SHA-256s (ASCII bytes, ``S64``: decoding every earlier
    shard's in every tile would cost more than the search; ``.astype(str)`` where needed), the
    (n, views) uint64 matrix and its ``neardup.FlatViews``."""
    from .neardup import FlatViews  # noqa: PLC0415

    with open_hashes(path) as saved:
        flat = FlatViews(saved["flat"], saved["owner"].astype(np.int64), saved["columns"])
        return saved["sha256"], saved["views"], flat


def deal(manifest_path: str | Path, map_path: str | Path, shard_names, out_dir: str | Path, schema,
         index_path: str | Path | None = None, cache_dir: str | Path | None = None, saved_footer: str | Path | None = None) -> dict[str, int]:
    """A global manifest's rows split by the shard of their content, one file per shard (empty where
    a shard has none left), so per-item work after a global step (captions after dedup) runs as one
    job per shard again. A manifest written by shard (``manifest.ShardedWriter``) already holds each
    shard's rows as a row group: those are the parts, read one at a time; one written whole is dealt
    by the shard map. Returns rows per shard. ``index_path``: where to write shard -> {digest, items}
    (a job reruns only when its part's digest changed); ``cache_dir``: see :func:`write_parts`;
    ``saved_footer``: where a scan of the manifest's footer may have been saved (by the stage that
    kept it: :attr:`manifest.Kept.output_footer_path`)."""
    groups = manifest.shard_groups(manifest_path)
    if groups is None or set(groups) == {""}:  # "": the whole file as one shard (a stage fed an unsharded manifest)
        runs = _runs_by_map(manifest_path, map_path, shard_names, schema)
    else:
        runs = _runs_by_group(manifest_path, groups, shard_names, schema, saved_footer)
    try:
        written = write_parts(runs, sorted(shard_names), out_dir, cache_dir)
    finally:
        if isinstance(runs, ShardGroups):
            runs.close()
    if index_path is not None:
        atomic.write_text(index_path, json.dumps(written, indent=1, sort_keys=True) + "\n")
    return {k: v["items"] for k, v in written.items()}


def _runs_by_map(manifest_path: str | Path, map_path: str | Path, shard_names, schema) -> ShardRuns:
    keys = manifest.read(manifest_path, schema, columns=["item_id", "sha256"])  # validated
    mapping = pd.read_parquet(map_path, columns=["sha256", "shard"])
    at = pd.Index(mapping["sha256"]).get_indexer(keys["sha256"])
    if (at < 0).any():
        k = int(np.flatnonzero(at < 0)[0])
        raise ShardError(f"{manifest_path}: item {keys['item_id'].iloc[k]} (content {keys['sha256'].iloc[k]}) is in no shard of {map_path}")
    shard_of = mapping["shard"].to_numpy()[at]
    listed = {int(s) for s in shard_names}
    outside = ~np.isin(shard_of, list(listed))
    if outside.any():
        raise ShardError(f"{manifest_path}: {int(outside.sum())} rows fall in shards the index does not list "
                         f"(first: item {keys['item_id'].iloc[int(np.flatnonzero(outside)[0])]})")
    return ShardRuns(manifest_path, shard_of)


def _runs_by_group(manifest_path: str | Path, groups: list[str], shard_names, schema, saved_footer: str | Path | None = None) -> ShardGroups:
    listed = {str(s) for s in shard_names}
    unknown = sorted({g for g in groups if g not in listed})
    if unknown:
        raise ShardError(f"{manifest_path}: row groups of shards {unknown[:5]} that the index does not list "
                         f"({len(listed)} shards listed)")
    repeated = sorted(g for g, n in collections.Counter(groups).items() if n > 1)
    if repeated:
        raise ShardError(f"{manifest_path}: shards {repeated[:5]} have more than one row group")
    for _ in manifest.read_batches(manifest_path, schema, manifest.BATCH_ROWS, columns=["item_id", "sha256"]):  # validated, a batch at a time
        pass
    return ShardGroups(manifest_path, {int(g): k for k, g in enumerate(groups)}, saved_footer)


def gather(paths, out: str | Path, schema, kept: str | Path | None = None) -> int:
    """One manifest from the shards' (``<shard>.parquet`` each, in shard order), each shard's rows
    its own row group, as :class:`manifest.ShardedWriter` writes one. The parts were validated when
    written; their column chunks are copied as bytes (:mod:`parquet_splice`), a part typed apart
    from the rest (a column all missing in it) re-encoded first, and the schema's unique columns
    checked across parts. Returns the rows.

    ``kept``: where the last output is kept (:class:`manifest.Kept`), each row group under the
    digest of the part file it came from. A part whose file is the same is copied from there: its
    footer, ids and seal are not read again, and the file comes out as a gather without them makes it."""
    paths = [Path(p) for p in paths]
    try:
        return _spliced(paths, Path(out), schema, manifest.Kept(kept) if kept is not None else None)
    except parquet_splice.SpliceError:
        return _gathered(paths, Path(out), schema)


def _spliced(paths: list[Path], out: Path, schema, kept: manifest.Kept | None = None) -> int:
    digests = dict(zip(paths, _file_digests(paths))) if kept is not None else {}
    reused = {p: k for p in paths if kept is not None and (k := kept.group(p.stem, digests[p])) is not None}
    metas: dict[Path, pq.FileMetaData] = {}

    def meta(path: Path) -> pq.FileMetaData:
        if path not in metas:
            metas[path] = _part_metadata(path)
        return metas[path]

    def rows(path: Path) -> int:
        return (0 if reused[path] == manifest.Kept.EMPTY else kept.sizes[reused[path]]) if path in reused else meta(path).num_rows

    filled = [p for p in paths if rows(p)]
    if not filled or any(meta(p).num_row_groups != 1 for p in filled if p not in reused):
        raise parquet_splice.SpliceError("a part is empty of row groups or holds several")
    canonical = next((p for p in filled if _is_settled(meta(p).schema.to_arrow_schema())), None)  # the first: read only so far
    if canonical is None:
        raise parquet_splice.SpliceError("no part is typed as the whole manifest")
    arrow = metas[canonical].schema.to_arrow_schema()

    def source(path: Path):
        """The part as its bytes are copied: the file, or cast to the manifest's types where a column
        is all missing (typed null) or all empty lists in it."""
        if _is_settled(meta(path).schema.to_arrow_schema()) and meta(path).schema.equals(metas[canonical].schema):
            return path
        return _parquet_bytes(manifest.conformed(pq.read_table(path), arrow))

    # the first part's footer lends the file its fields and metadata, as when every part is copied from its own file
    sources: list = [source(filled[0])]
    picks, seals = [], []
    kept_seal = None
    if reused:
        sources.append(kept.path)
        kept_seal = seal.read(kept.meta)
    for path in filled:
        if path in reused:
            picks.append((1, reused[path]))
            seals.append((kept_seal, reused[path]))
            continue
        at = 0 if path == filled[0] else len(sources)
        if at:
            sources.append(source(path))
        picks.append((at, 0))
        seals.append((seal.read(meta(path)) if isinstance(sources[at], Path) else None, 0))
    _check_unique_parts(out, schema, filled, reused, kept)
    key_values = {k: v for k, v in metas[canonical].metadata.items() if k not in manifest.WHOLE_FILE_KEYS}
    key_values[manifest.SHARDS_KEY] = json.dumps([p.stem for p in filled]).encode()
    if kept is not None:
        key_values[manifest.KEYS_KEY] = json.dumps({"groups": [digests[p] for p in filled],
                                                    "empty": {p.stem: digests[p] for p in paths if not rows(p)}}).encode()
    sealed = seal.composed(seals, schema.name)
    if sealed is not None:  # each part's chunks are copied as bytes: their digests come along
        key_values[seal.KEY] = sealed
    footers = [kept.footer() if reused and k == 1 else None for k in range(len(sources))]
    with atomic.atomic_file(out) as tmp, open(tmp, "wb") as f:
        written, footer = parquet_splice.splice_scanned(sources, picks, f, key_values, footers)
    if kept is not None:
        kept.keep(out, footer, [k if s == 1 else None for s, k in picks] if reused else None)
        if reused:
            print(f"{out}: {len(reused)} of {len(paths)} part(s) copied from the last output", file=sys.stderr)
    return written


def _file_digests(paths: list[Path]) -> list[str]:
    """SHA-256 of each file, on every core the process may use."""
    def one(path: Path) -> str:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()

    return parquet_splice.hashed_in_parallel(one, paths)


def _check_unique_parts(out: Path, schema, filled: list[Path], reused: dict, kept: manifest.Kept | None) -> None:
    """The schema's unique columns over the parts' rows. With parts copied from the kept output,
    whose rows were checked together, only the other parts' values are read: unique among
    themselves and absent from the copied ones; a repeat is then named by reading every part."""
    unique = [name for name, col in schema.columns.items() if col.unique]
    read = [p for p in filled if p not in reused]
    if reused and unique:
        if not read:  # every part copied: checked together when the kept output was written
            return
        copied = [k for k in reused.values() if k != manifest.Kept.EMPTY]
        kept_file = pq.ParquetFile(kept.path, metadata=kept.meta)
        for name in unique:
            new = pa.concat_arrays([pq.read_table(p, columns=[name]).column(0).combine_chunks() for p in read])
            old = kept_file.read_row_groups(copied, columns=[name]).column(0).combine_chunks()
            if old.type != new.type:
                old = old.cast(new.type)
            if len(pc.unique(new)) != len(new) or pc.any(pc.is_in(old, value_set=new)).as_py():
                break
        else:
            return
        read = filled
    manifest.check_unique(out, schema, {name: [pq.read_table(p, columns=[name]).column(0).combine_chunks() for p in read] for name in unique})


def _part_metadata(path: Path) -> pq.FileMetaData:
    """A shard part's Parquet metadata; a missing or torn part is named, with the job that makes it."""
    try:
        return pq.read_metadata(path)
    except (OSError, pa.ArrowInvalid) as err:
        raise manifest.ManifestError(f"{path}: not a whole Parquet file ({err}); rerun the job that writes it "
                                     "(remove the file and run the workflow again)") from None


def _is_settled(schema: pa.Schema) -> bool:
    """No column typed by the absence of values (all missing, or all lists empty)."""
    return not any(pa.types.is_null(f.type) or (pa.types.is_list(f.type) and pa.types.is_null(f.type.value_type)) for f in schema)


def _gathered(paths: list[Path], out: Path, schema) -> int:
    """:func:`gather` by decoding and writing every row: for parts that cannot be joined as bytes."""
    sizes = [_part_metadata(p).num_rows for p in paths]
    with manifest.ShardedWriter(out, schema) as writer:
        start = 0
        while start < len(paths):
            end, rows = start, 0
            while end < len(paths) and (rows < manifest.BATCH_ROWS or end == start):
                rows += sizes[end]
                end += 1
            frame = concat(paths[start:end], schema)
            shard = np.repeat(np.array([p.stem for p in paths[start:end]], dtype=object), sizes[start:end])
            writer.write(shard, frame)
            start = end
    return writer.rows


def read_flat_views(path: str | Path):
    """Only the ``neardup.FlatViews`` of a :func:`write_hashes` file, and its row count (each row
    has at least one view, so the last owner tells): what a tile needs of an earlier shard until a
    pair points into it."""
    from .neardup import FlatViews  # noqa: PLC0415

    with open_hashes(path) as saved:
        owner = saved["owner"].astype(np.int64)
        flat = FlatViews(saved["flat"], owner, saved["columns"])
    return (int(owner[-1]) + 1 if len(owner) else 0), flat


@contextlib.contextmanager
def open_hashes(path: str | Path):
    """A :func:`write_hashes` file, open; a missing, truncated or foreign one is named."""
    try:
        with np.load(path) as saved:
            yield saved
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        raise ShardError(f"{path}: not a readable shard hashes file ({type(exc).__name__}: {exc}); "
                         "delete it and rerun its audit_shard job") from exc
