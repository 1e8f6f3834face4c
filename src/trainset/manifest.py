"""Reading and writing Parquet manifests: validated on both sides of every stage boundary.

A bad row fails loudly with the file, the row number, the item id and the column.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import sys
from collections.abc import Collection, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow as pyarrow
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pandera.engines.pandas_engine import Engine

from . import arrow_pool, atomic, column_checks, parquet_splice, schemas, seal
from .schemas import SCHEMA_VERSION

arrow_pool.use_jemalloc()  # every stage reads manifests through here

# list columns read as Python lists (others stay as pandas reads them: arrays)
LIST_COLUMNS = ("tags", "artists", "flags", "triggered_tags")


class ManifestError(ValueError):
    """A manifest does not match its schema."""


def _describe(df: pd.DataFrame, path: str | Path, schema: pa.DataFrameSchema, err: Exception, first_row: int = 0) -> str:
    lines = [f"{path}: {schema.name} manifest failed validation"]
    cases = getattr(err, "failure_cases", None)
    if cases is None or not len(cases):
        return f"{lines[0]}: {err}"
    for _, case in cases.head(20).iterrows():
        column = case.get("column")
        index = case.get("index")
        where = ""
        if index is not None and not pd.isna(index):
            row = int(index)
            where = f"row {first_row + row}"
            if "item_id" in df.columns and 0 <= row < len(df):
                where += f" (item_id {df['item_id'].iloc[row]!r})"
        col = f"column {column!r}" if column is not None and not pd.isna(column) else "table"
        lines.append(f"  {where or 'whole column'}, {col}: {case.get('check')} failed for {case.get('failure_case')!r}")
    if len(cases) > 20:
        lines.append(f"  ... and {len(cases) - 20} more")
    return "\n".join(lines)


def validate(df: pd.DataFrame, schema: pa.DataFrameSchema, path: str | Path, first_row: int = 0) -> pd.DataFrame:
    """Validate ``df`` (rows renumbered from 0 so errors name the row in the file; ``first_row``:
    the file row of ``df``'s first, for a part of a file such as one shard's rows).

    Whole-column checks decide a valid frame; any doubt hands it to pandera, whose lazy
    validation finds and reports every failing row."""
    df = df.reset_index(drop=True)
    if _passes(df, schema):
        return df
    plain = _arrays_for_arrow_lists(df)
    try:
        schema.validate(plain, lazy=True)
    except (pa.errors.SchemaErrors, pa.errors.SchemaError) as err:
        raise ManifestError(_describe(plain, path, schema, err, first_row)) from None
    return df


def is_arrow_list(dtype) -> bool:
    """A list column held as Arrow (:func:`read` with ``arrow_lists``), not as Python objects."""
    return isinstance(dtype, pd.ArrowDtype) and pyarrow.types.is_list(dtype.pyarrow_dtype)


def _arrays_for_arrow_lists(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with Arrow-held list columns as object arrays, the way pandas reads list columns."""
    held = [c for c in df.columns if is_arrow_list(df[c].dtype)]
    if not held:
        return df
    return df.assign(**{c: pd.Series(list(df[c].to_numpy(dtype=object)), index=df.index, dtype=object) for c in held})


def _passes(df: pd.DataFrame, schema: pa.DataFrameSchema) -> bool:
    """Does ``df`` certainly satisfy ``schema``? Strict column set, dtypes, nulls, uniqueness and
    every column check, each run over whole columns (pandera's own checks); a schema feature
    this does not cover answers False."""
    if not _plain_schema(schema):
        return False
    names = list(df.columns)
    if len(set(names)) != len(names) or set(names) != set(schema.columns):
        return False
    if schema.unique and df.duplicated(subset=list(schema.unique)).any():
        return False
    return all(_column_passes(df[name], column) for name, column in schema.columns.items())


def _plain_schema(schema: pa.DataFrameSchema) -> bool:
    """Only the features :func:`_passes` checks: no coercion, parsers, index or frame-wide checks."""
    plain = schema.strict is True and not (schema.coerce or schema.ordered or schema.checks or schema.parsers
                                           or schema.add_missing_columns or schema.index is not None)
    return plain and all(
        col.required and not (col.regex or col.coerce or col.parsers or col.default is not None)
        for col in schema.columns.values()
    )


def _column_passes(values: pd.Series, column: pa.Column) -> bool:
    if not _dtype_passes(values, column):
        return False
    if not column.nullable and values.hasnans:
        return False
    if column.unique and not values.is_unique:
        return False
    return all(column_checks.certainly_passes(check, values) or bool(np.all(check(values).check_passed)) for check in column.checks)


def _dtype_passes(values: pd.Series, column: pa.Column) -> bool:
    if column.dtype is None:
        return True
    if is_arrow_list(values.dtype):  # written as the object column of lists it stands for (see _table)
        return str(column.dtype) == "object"
    try:
        return bool(np.all(column.dtype.check(Engine.dtype(values.dtype), values)))
    except TypeError:
        return False


def write(df: pd.DataFrame, path: str | Path, schema: pa.DataFrameSchema, sort_by: str | list[str] | None = "item_id") -> pd.DataFrame:
    """Validate and write atomically; rows are sorted so identical content gives identical bytes."""
    missing = [c for c in schema.columns if c not in df.columns]
    if missing:
        raise ManifestError(f"{path}: {schema.name} manifest failed validation: missing column(s) {', '.join(missing)}")
    # no rows: the schema's own dtypes (an empty frame built from records has none to check)
    df = _normalize_text(df[list(schema.columns)], schema) if len(df) else empty(schema)
    if sort_by is not None and len(df):
        df = df.sort_values(sort_by, kind="stable")
    df = validate(df, schema, path)
    table = _table(df)
    if len(df):  # typed alike whatever values the rows happen to hold, so parts join as bytes (no rows: the schema's dtypes)
        table = conformed(table, settled_schema(table.schema))
    with atomic.atomic_file(path) as tmp:
        groups = max(1, -(-table.num_rows // ROW_GROUP_ROWS))
        with pq.ParquetWriter(str(tmp), table.schema, compression="snappy") as writer:
            writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
            writer.add_key_value_metadata({seal.KEY: seal.placeholder(schema.name, table.schema, groups)})
        seal.fill(tmp, schema.name)
    return df


def _table(df: pd.DataFrame) -> pyarrow.Table:
    """``df`` as :meth:`pandas.DataFrame.to_parquet` converts it. An Arrow-held list column comes
    out as the object column of lists it stands for would (type and pandas metadata), so a file's
    bytes do not depend on how a stage held it."""
    table = pyarrow.Table.from_pandas(df, preserve_index=False)
    held = [c for c in df.columns if is_arrow_list(df[c].dtype)]
    if held:
        table = _as_object_lists(table, held)
    if df.attrs:
        table = table.replace_schema_metadata({**table.schema.metadata, "PANDAS_ATTRS": json.dumps(df.attrs)})
    # one chunk per column: where the writer gives up on a dictionary depends on the chunks
    return table.combine_chunks()


BATCH_ROWS = 50_000
"""Rows a stage reading a manifest by shard holds at once (whole shards): enough that each check's
fixed cost is paid rarely, few enough that memory does not grow with the manifest."""
SHARDS_KEY = b"trainset.shards"
"""Parquet metadata key of a manifest written a shard at a time: the shard of each row group."""


KEYS_KEY = b"trainset.shard_keys"
"""Parquet metadata key of a manifest written by shard with reuse: the key each row group was made from."""
WHOLE_FILE_KEYS = (SHARDS_KEY, KEYS_KEY, seal.KEY)
"""Metadata about a manifest's shards together: never carried into one shard's own file."""
ROW_GROUP_ROWS = 1 << 20
"""Rows a row group of a manifest written whole holds at most (Arrow's default)."""


class Kept:
    """A sharded stage's last output, kept under the cache: each shard's row group and the key it
    was made from, everything the shard's rows depend on (a shard that came out empty, its key
    alone). A shard whose key is the same is copied from it as bytes.

    The kept file is a file of its own, not a link to the manifest: Snakemake removes a job's
    outputs before it runs and touches them after, and a tool may write into a manifest in place;
    none of that reaches it. Its size and modification time are stamped beside it when kept, so a
    kept file changed by anything else (or with no stamp) lends nothing.

    An output spliced from the kept file (:meth:`keep` told which of its row groups came from
    where) is kept by appending only the row groups written this run and a new footer; the groups
    it no longer names stay in the file, unread, until they are as large as the live ones, and then
    the output is copied whole. The kept file's footer and the output's, as the splice wrote them
    (or scanned once, for an output written whole), are saved beside it (:attr:`footer_path`,
    :attr:`output_footer_path`): the next splice from it, and a deal of the manifest, read those
    instead of scanning a footer."""

    EMPTY = -1
    SLACK = 1 << 20
    """Bytes of row groups no longer named a kept file may hold beyond as many as the live ones."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.groups: dict[str, tuple[int, str]] = {}  # shard -> (row group, or EMPTY; key)
        self.sizes: list[int] = []
        self.meta: pq.FileMetaData | None = None  # the kept file's, read once
        self._footer: parquet_splice.Footer | None = None
        try:
            if json.loads(self._stamp_path.read_text()) != self._stamp():
                return
            meta = self.meta = pq.read_metadata(self.path)
            kv = meta.metadata or {}
            names, keys = json.loads(kv[SHARDS_KEY]), json.loads(kv[KEYS_KEY])
        except (OSError, KeyError, ValueError, pyarrow.ArrowInvalid):  # none yet, torn, or written without keys
            return
        self.sizes = [meta.row_group(k).num_rows for k in range(meta.num_row_groups)]
        if len(names) == len(keys["groups"]) == len(self.sizes):
            self.groups = {name: (self.EMPTY, key) for name, key in keys["empty"].items()}
            self.groups.update({name: (k, key) for k, (name, key) in enumerate(zip(names, keys["groups"])) if key})

    def group(self, shard: str, key: str | None) -> int | None:
        """The row group of ``shard`` (:attr:`EMPTY`: it had no rows) when it was made from ``key``; else None."""
        found = self.groups.get(shard)
        return found[0] if found is not None and key is not None and found[1] == key else None

    def keep(self, written: Path, footer: parquet_splice.Footer | None = None, held: list[int | None] | None = None) -> None:
        """``written`` (a manifest just written) kept as the last output. ``footer``: its footer, as
        the splice that wrote it knows it; ``held``: for each of its row groups, the kept row group
        it was copied from (None: written this run), so only the others are appended."""
        self._stamp_path.unlink(missing_ok=True)  # from here until the stamp is written again, the kept file lends nothing
        kept = self._appended(written, footer, held) if footer is not None and held is not None and self.groups else None
        for path in (self.footer_path, self.output_footer_path):
            path.unlink(missing_ok=True)
        if kept is None:
            atomic.copy(written, self.path)
            kept = footer = footer or self._scanned()
        atomic.write_text(self._stamp_path, json.dumps(self._stamp()))
        if kept is not None:
            kept.save(self.footer_path)
            if footer is kept:  # a whole copy: the output's footer is the kept file's
                atomic.link(self.footer_path, self.output_footer_path)
            else:
                footer.save(self.output_footer_path)

    def _scanned(self) -> parquet_splice.Footer | None:
        """The footer of a kept file written whole, scanned now, while it is in the page cache and
        the build is paying for the whole file anyway: the first splice from it reads the scan."""
        try:
            with self.path.open("rb") as f:
                self._footer = parquet_splice.Footer.read(f, self.path)
        except (OSError, parquet_splice.SpliceError):
            return None
        return self._footer

    def footer(self) -> parquet_splice.Footer:
        """The kept file's footer, scanned (read once; from :attr:`footer_path` where it was saved)."""
        if self._footer is None:
            with self.path.open("rb") as f:
                self._footer = parquet_splice.Footer.read(f, self.path, self.footer_path)
        return self._footer

    def _appended(self, written: Path, footer: parquet_splice.Footer, held: list[int | None]) -> parquet_splice.Footer | None:
        """The kept file updated in place to read as ``written`` (its new footer), or None where it
        cannot be or should not be: its footer unreadable, or the groups it would hold unread as
        large as the live ones (the caller copies ``written`` whole)."""
        try:
            old = self.footer()
        except (OSError, parquet_splice.SpliceError):
            return None
        spans = [footer.span(g) for g in footer.groups]
        live = sum(b - a for a, b in spans)
        appended = sum(b - a for (a, b), k in zip(spans, held) if k is None)
        if old.start + appended > 2 * live + self.SLACK:
            return None
        try:
            return parquet_splice.update_in_place(self.path, old, written, footer, held)
        except (OSError, parquet_splice.SpliceError):
            self.path.unlink(missing_ok=True)
            return None

    @property
    def footer_path(self) -> Path:
        """Where the kept file's footer, scanned, is saved."""
        return parquet_splice.saved_footer(self.path)

    @property
    def output_footer_path(self) -> Path:
        """Where the footer of the output last kept, scanned, is saved (for a reader of that manifest)."""
        return parquet_splice.saved_footer(self.path, "output-footer")

    @property
    def _stamp_path(self) -> Path:
        return self.path.with_name(self.path.name + ".stamp")

    def _stamp(self) -> dict:
        stat = self.path.stat()
        return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def arrow_text(values) -> pyarrow.Array:
    """A text column (pandas or Arrow) as one Arrow string array: what Arrow's hash kernels take."""
    held = values if isinstance(values, (pyarrow.Array, pyarrow.ChunkedArray)) else pyarrow.array(values, type=pyarrow.string())
    return held.combine_chunks() if isinstance(held, pyarrow.ChunkedArray) else held


def positions(ids, among, unique: bool = False) -> np.ndarray:
    """The row of each of ``ids`` in ``among`` (its first, where it repeats), -1 where it has none
    (a missing id is never found): Arrow hash lookups, no Python object per row. A hash table is
    built over the smaller side: a batch of ids looked up in a whole manifest's hashes those few
    and probes with the many (about ten times faster than building a table of every id for each batch).
    ``unique``: ``among`` holds each id once (a validated unique column), so an id in the same row
    of ``among`` is found there (manifests written by the same shards, or a rerun's manifest
    against the last one's: most rows in place): only the others are looked up."""
    ids, among = arrow_text(ids), arrow_text(among)
    if ids.type != among.type:  # text read from Parquet is large, from pandas not: alike, so equal ids compare equal
        ids, among = ids.cast(pyarrow.large_string()), among.cast(pyarrow.large_string())
    if unique and among.null_count == 0 and len(ids) and len(among):
        return _in_place_first(ids, among)
    return _looked_up(ids, among)


def _in_place_first(ids: pyarrow.Array, among: pyarrow.Array) -> np.ndarray:
    """:func:`positions` in a unique ``among``, where ``ids`` is mostly ``among`` in order (a
    rerun's manifest against the last one's): runs of ids equal to ``among``'s rows side by side
    are found by comparing them so, the comparison realigned past each block inserted or dropped
    (at most :data:`_REALIGNS` times); the ids left are looked up, the hash table built over them
    alone where they are few. In a unique ``among`` an id equal to its row ``j`` is found at ``j``,
    so every run found is right however it was found."""
    if len(ids) == len(among) and ids.equals(among):
        return np.arange(len(ids), dtype=np.int64)
    out = np.full(len(ids), -1, dtype=np.int64)
    i = j = 0
    for _ in range(_REALIGNS + 1):
        both = min(len(ids) - i, len(among) - j)
        if both <= 0:
            break
        equal = pc.fill_null(pc.equal(ids.slice(i, both), among.slice(j, both)), False).to_numpy(zero_copy_only=False)
        run = both if equal.all() else int(np.argmin(equal))
        out[i:i + run] = np.arange(j, j + run)
        i, j = i + run, j + run
        if run == both:
            break
        # ids[i] differs from among[j]: ids inserted before among[j] reappears, or among's rows dropped before ids[i]
        inserted = pc.index(ids.slice(i), among[j]).as_py()  # among holds no missing id
        dropped = pc.index(among.slice(j), ids[i]).as_py() if ids[i].is_valid else -1
        if inserted < 0 and dropped < 0:
            i, j = i + 1, j + 1  # one id replaced by another
        elif dropped < 0 or 0 <= inserted <= dropped:
            i += inserted
        else:
            j += dropped
    rest = np.flatnonzero(out < 0)
    if len(rest):
        out[rest] = _looked_up(ids.take(pyarrow.array(rest)), among)
    return out


_REALIGNS = 8
"""How often :func:`_in_place_first` realigns its comparison (each a pass over the rows left)
before it looks up every id left."""


def _looked_up(ids: pyarrow.Array, among: pyarrow.Array) -> np.ndarray:
    """:func:`positions` by Arrow hash lookups, the table built over the smaller side."""
    if len(ids) * 8 >= len(among):
        return pc.index_in(ids, value_set=among, skip_nulls=True).fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    encoded = pc.dictionary_encode(ids)  # the distinct ids, and each id's code
    hit = pc.index_in(among, value_set=encoded.dictionary).fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    rows = np.flatnonzero(hit >= 0)
    first = np.full(len(encoded.dictionary), -1, dtype=np.int64)
    first[hit[rows][::-1]] = rows[::-1]  # repeated indices: the last write, so the earliest row, wins
    codes = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    return np.append(first, -1)[codes]  # a missing id's code, -1, takes the -1 appended


def keys_for(shard: np.ndarray, keys: dict[str, str]) -> dict[str, str]:
    """The keys of the shards a batch holds (``shard``: each row's shard)."""
    return {name: keys[name] for name in pd.unique(shard) if name in keys}


def shard_digests(path: str | Path) -> dict[str, str]:
    """shard -> digest of its row group's bytes (:func:`parquet_splice.group_digests`), for a
    manifest written by shard; empty for any other file (a stage then reuses nothing)."""
    names = shard_groups(path)
    if names is None:
        return {}
    try:
        return dict(zip(names, parquet_splice.group_digests(path)))
    except parquet_splice.SpliceError:
        return {}


class ShardedWriter:
    """A manifest written a batch of whole shards at a time, so a stage never holds all its rows.

    Each shard's rows (validated, sorted by item id) become one row group, shards in the order
    written, their names in the file's metadata (:func:`shard_groups`); the file reads like any
    other manifest, rows in shard order. Validation errors name the row in the whole file, and
    the schema's unique columns are checked across shards at the end. Use as a context manager:
    the file appears whole when the block ends without an error, or not at all.

    ``kept``: where the stage's last output is kept (:class:`Kept`). A shard written with a key
    (``write(..., keys=)``) has it recorded; :meth:`reuse` copies a shard's row group from the
    last output when its key is the same, so a shard whose inputs did not change costs a byte
    copy, not a read, a check and a write. ``order``: the shards in the order the file holds
    them (the input's), so the shards reused first and those written after land in place."""

    def __init__(self, path: str | Path, schema: pa.DataFrameSchema, sort_by: str | list[str] | None = "item_id",
                 kept: str | Path | None = None, order: list[str] | None = None):
        self.path, self.schema, self.sort_by = Path(path), schema, sort_by
        self.rows = 0
        self.reused = 0
        self._entries: list[tuple[str, str | None, int, int]] = []  # (shard, key, 0: written here / 1: kept, row group)
        self._sizes: dict[str, int] = {}
        self._empty: dict[str, str] = {}  # shards written with a key and no rows
        self._order = {name: k for k, name in enumerate(order or [])}
        self._written = 0
        self._unique = {name: [] for name, col in schema.columns.items() if col.unique}
        self._writer: pq.ParquetWriter | None = None
        self._schema: pyarrow.Schema | None = None  # the first shard's, settled (settled_schema)
        self._kept = Kept(kept) if kept is not None else None
        self._atomic = atomic.atomic_file(self.path)
        self._tmp: Path | None = None
        self._new: Path | None = None  # where written shards go when kept ones are copied in
        self._footer: parquet_splice.Footer | None = None  # the file's, when spliced (known as written)
        self._held: list[int | None] | None = None  # when spliced: each row group's in the kept file, None where written here

    def __enter__(self) -> "ShardedWriter":
        self._tmp = self._atomic.__enter__()
        self._new = self._tmp.with_name(self._tmp.name + ".new") if self._kept is not None and self._kept.groups else self._tmp
        return self

    def __exit__(self, kind, value, tb) -> bool:
        if kind is None:
            try:
                self._finish()
            except BaseException as err:
                self._abort()
                self._atomic.__exit__(type(err), err, err.__traceback__)
                raise
            self._atomic.__exit__(None, None, None)
            if self._kept is not None:
                self._kept.keep(self.path, self._footer, self._held)
                print(f"{self.path}: {self.reused} of {len(self._entries)} shard(s) copied from the last output", file=sys.stderr)
        else:
            self._abort()
            self._atomic.__exit__(kind, value, tb)
        return False

    def reusable(self, shard: str, key: str | None) -> bool:
        """Whether the last output holds ``shard`` made from ``key``."""
        return self._kept is not None and self._kept.group(shard, key) is not None

    def reuse(self, shard: str, key: str | None) -> bool:
        """Copy ``shard``'s row group from the last output when it was made from ``key`` (True);
        False: the caller writes the shard."""
        k = self._kept.group(shard, key) if self._kept is not None else None
        if k is None:
            return False
        if shard in self._sizes or shard in self._empty:
            raise ManifestError(f"{self.path}: rows of shard {shard} written again")
        if k == Kept.EMPTY:
            self._empty[shard] = key
            return True
        self._entries.append((shard, key, 1, k))
        self._sizes[shard] = self._kept.sizes[k]
        self.rows += self._kept.sizes[k]
        self.reused += 1
        return True

    def reuse_all(self, keys: dict[str, str]) -> set[str]:
        """:meth:`reuse` for each shard of ``keys``; returns those copied."""
        return {shard for shard, key in keys.items() if self.reuse(shard, key)}

    def write(self, shard, df: pd.DataFrame, keys: dict[str, str] | None = None) -> pd.DataFrame:
        """Rows of one shard (``shard`` its name), or of consecutive shards (``shard``: each row's
        shard name, shards in the order they first appear), each shard one row group; checking
        a batch of several shards at once costs one pass, not one per shard. ``keys``: each
        shard of the batch -> the key its rows were made from (:meth:`reuse`), a shard without
        rows included. Returns the rows validated, as :func:`write` does."""
        if keys:
            present = ({shard} if len(df) else set()) if isinstance(shard, str) else set(pd.unique(np.asarray(shard, dtype=object)))
            self._empty.update({name: key for name, key in keys.items() if name not in present})
        if not len(df):
            return empty(self.schema)
        missing = [c for c in self.schema.columns if c not in df.columns]
        if missing:
            raise ManifestError(f"{self.path}: {self.schema.name} manifest failed validation: missing column(s) {', '.join(missing)}")
        df = _normalize_text(df[list(self.schema.columns)], self.schema)
        if isinstance(shard, str):
            codes, names = np.zeros(len(df), dtype=np.int64), [shard]
        else:
            codes, names = pd.factorize(np.asarray(shard, dtype=object), sort=False)
            names = [str(n) for n in names]
        again = sorted(set(names) & (set(self._sizes) | set(self._empty)))
        if again:  # a shard is one row group: its rows come in one call
            raise ManifestError(f"{self.path}: rows of shard(s) {', '.join(again[:5])} written again after other shards")
        sort_by = [self.sort_by] if isinstance(self.sort_by, str) else list(self.sort_by or [])
        sort_keys = [df[c].to_numpy() for c in reversed(sort_by)]
        if len(names) > 1 or sort_keys:
            order = np.lexsort([*sort_keys, codes]) if sort_keys else np.argsort(codes, kind="stable")
            df, codes = df.iloc[order], codes[order]
        df = validate(df, self.schema, self.path, first_row=self._first_row(names[codes[0]]))
        table = _table(df)
        if self._writer is None:
            self._schema = settled_schema(table.schema)
            self._writer = pq.ParquetWriter(str(self._new), self._schema, compression="snappy")
        table = conformed(table, self._schema)
        bounds = [0, *(np.flatnonzero(np.diff(codes)) + 1).tolist(), len(df)]
        for a, b in zip(bounds[:-1], bounds[1:]):
            self._writer.write_table(table.slice(a, b - a))
            name = names[codes[a]]
            self._entries.append((name, (keys or {}).get(name), 0, self._written))
            self._sizes[name] = b - a
            self._written += 1
        for name, seen in self._unique.items():
            seen.append(table.column(name).combine_chunks())
        self.rows += len(df)
        return df

    def _first_row(self, shard: str) -> int:
        """Where ``shard``'s rows start in the file: after the shards before it in :attr:`order`
        (those written after it are not yet known: shards are written in order), else after all so far."""
        at = self._order.get(shard)
        if at is None or not self.reused:
            return self.rows
        return sum(size for name, size in self._sizes.items() if self._order.get(name, -1) < at)

    def _placed(self) -> list[tuple[str, str | None, int, int]]:
        """The entries in the file's order: :attr:`order`'s, then any other shard as written."""
        last = len(self._order)
        return sorted(self._entries, key=lambda e: self._order.get(e[0], last))

    def _finish(self) -> None:
        entries = self._placed() if self.reused else self._entries
        self._check_unique(entries)
        meta = {SHARDS_KEY: json.dumps([e[0] for e in entries])}
        if self._kept is not None:
            meta[KEYS_KEY] = json.dumps({"groups": [e[1] for e in entries], "empty": self._empty})
        if not self.reused:
            if self._writer is None:  # no rows at all: an empty manifest with the schema's dtypes
                self._writer = pq.ParquetWriter(str(self._new), _table(empty(self.schema)).schema, compression="snappy")
            self._close_sealed(meta)
            if self._new != self._tmp:
                os.replace(self._new, self._tmp)
            seal.fill(self._tmp, self.schema.name)
            return
        if self._written:
            self._close_sealed(meta)
            seal.fill(self._new, self.schema.name)
            sources, picks = [self._new, self._kept.path], [(source, k) for _, _, source, k in entries]
        else:
            sources, picks = [self._kept.path], [(0, k) for _, _, _, k in entries]
        seals = [seal.read(self._kept.meta if source == self._kept.path else pq.read_metadata(source)) for source in sources]
        sealed = seal.composed([(seals[source], k) for source, k in picks], self.schema.name)
        if sealed is not None:  # the chunks are copied as bytes: their digests come along
            meta[seal.KEY] = sealed.decode()
        try:
            with open(self._tmp, "wb") as f:
                footers = [None if source == self._new else self._kept.footer() for source in sources]
                _, self._footer = parquet_splice.splice_scanned(sources, picks, f, {k: v.encode() for k, v in meta.items()}, footers)
            self._held = [k if source == 1 else None for _, _, source, k in entries]
        except parquet_splice.SpliceError:  # typed apart (a kept file from before a change of types): decode and write
            self._rewritten(sources, picks, meta)
        finally:
            if self._new != self._tmp:
                self._new.unlink(missing_ok=True)

    def _close_sealed(self, meta: dict) -> None:
        """Close the file being written with ``meta`` and a placeholder for its seal."""
        self._writer.add_key_value_metadata({**meta, seal.KEY: seal.placeholder(self.schema.name, self._writer.schema, self._written).decode()})
        self._writer.close()

    def _rewritten(self, sources: list[Path], picks: list[tuple[int, int]], meta: dict) -> None:
        files = [pq.ParquetFile(s) for s in sources]
        schema = self._schema or settled_schema(files[-1].schema_arrow)
        meta = {k: v for k, v in meta.items() if k != seal.KEY}  # re-encoded chunks: their digests are not the sources'

        with pq.ParquetWriter(str(self._tmp), schema, compression="snappy") as writer:
            for s, k in picks:
                writer.write_table(conformed(files[s].read_row_group(k), schema))
            writer.add_key_value_metadata(meta)

    def _abort(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
        if self._new is not None and self._new != self._tmp:
            self._new.unlink(missing_ok=True)

    def _check_unique(self, entries) -> None:
        """The schema's unique columns over the file's rows. With shards copied from the kept
        output, whose rows were checked together when it was written, only the written shards'
        values need checking: unique among themselves and absent from the copied ones (a lookup
        of the copied values in the few written ones). A repeat found is named by its rows in the
        file, as a check of every value in file order names it."""
        if not self.reused:  # every value as held, in file order
            check_unique(self.path, self.schema, self._unique)
            return
        kept = pq.ParquetFile(self._kept.path, metadata=self._kept.meta)
        copied = [k for _, _, source, k in entries if source == 1]
        for name, held in self._unique.items():
            if not held:
                continue
            written = pyarrow.chunked_array(held).combine_chunks()
            old = kept.read_row_groups(copied, columns=[name]).column(0).combine_chunks()
            if len(pc.unique(written)) != len(written) or pc.any(pc.is_in(old, value_set=written)).as_py():
                self._check_unique_in_file_order(entries, kept)

    def _check_unique_in_file_order(self, entries, kept: pq.ParquetFile) -> None:
        """The unique columns over the file's rows in its order: written shards' values as held,
        copied shards' read back from the kept file (those columns only)."""
        at, position = {}, 0  # where each written shard's values start among all written, in write order
        for shard, _, source, _ in self._entries:
            if source == 0:
                at[shard] = position
                position += self._sizes[shard]
        seen = {}
        for name in self._unique:
            whole = pyarrow.chunked_array(self._unique[name]).combine_chunks() if self._unique[name] else None
            parts = []
            for shard, _, source, k in entries:
                if source == 1:
                    parts.append(kept.read_row_group(k, columns=[name]).column(0).combine_chunks())
                else:
                    parts.append(whole.slice(at[shard], self._sizes[shard]))
            seen[name] = parts
        check_unique(self.path, self.schema, seen)


def check_unique(path: str | Path, schema: pa.DataFrameSchema, seen: dict[str, list]) -> None:
    """The schema's unique columns (column -> its Arrow arrays, in file order) hold no value twice;
    the error names the rows in the whole file."""
    for name, arrays in seen.items():
        if not arrays:
            continue
        column = pyarrow.chunked_array(arrays)
        if len(pc.unique(column)) == len(column):  # Arrow's hash of the buffers: the common case, no repeat
            continue
        values = pd.Series(column.to_numpy(zero_copy_only=False))
        repeated = values.duplicated(keep=False)
        if repeated.any():
            rows = np.flatnonzero(repeated.to_numpy())[:6]
            found = ", ".join(f"row {r} ({values.iloc[r]!r})" for r in rows.tolist())
            raise ManifestError(f"{path}: {schema.name} manifest failed validation: column {name!r} "
                                f"must be unique, repeated at {found}")


def settled_schema(schema: pyarrow.Schema) -> pyarrow.Schema:
    """A manifest's schema as a part of it is written, whatever the other parts hold: a column all
    missing (typed null) is text, a list column all of whose lists are empty holds lists of text;
    no shard names. So a shard's file depends on its own rows alone."""
    meta = json.loads(schema.metadata[b"pandas"]) if schema.metadata and b"pandas" in schema.metadata else None
    entries = {entry["name"]: entry for entry in meta["columns"]} if meta else {}
    fields = []
    for field in schema:
        if pyarrow.types.is_null(field.type):
            field = field.with_type(pyarrow.string())
            entries.get(field.name, {}).update(pandas_type="unicode", numpy_type="object")
        elif pyarrow.types.is_list(field.type) and pyarrow.types.is_null(field.type.value_type):
            field = field.with_type(pyarrow.list_(pyarrow.string()))
            entries.get(field.name, {}).update(pandas_type="list[unicode]", numpy_type="object")
        elif pyarrow.types.is_list(field.type):  # as pandas writes them (a list read back names its values "element")
            field = field.with_type(pyarrow.list_(field.type.value_type))
        fields.append(field)
    metadata = {k: v for k, v in (schema.metadata or {}).items() if k not in WHOLE_FILE_KEYS}
    if meta:
        metadata[b"pandas"] = json.dumps(meta).encode()
    return pyarrow.schema(fields, metadata=metadata)


def conformed(table: pyarrow.Table, schema: pyarrow.Schema) -> pyarrow.Table:
    """``table`` in the written file's column types (a shard's all-missing or all-empty column cast)."""
    if table.schema.equals(schema, check_metadata=False):
        return table
    try:
        return table.cast(schema)
    except (pyarrow.ArrowInvalid, pyarrow.ArrowNotImplementedError) as err:
        raise ManifestError(f"a shard's columns do not match the manifest's first shard: {err}") from None


def shard_groups(path: str | Path) -> list[str] | None:
    """The shard of each row group of a manifest :class:`ShardedWriter` wrote; None for any other file."""
    return _shards_of(pq.read_metadata(path))


def _shards_of(meta: pq.FileMetaData) -> list[str] | None:
    found = (meta.metadata or {}).get(SHARDS_KEY)
    return None if found is None else json.loads(found)


def shard_bounds(path: str | Path) -> tuple[list[str], list[int]]:
    """A manifest's shards and their rows (shard ``names[k]``: rows ``bounds[k]:bounds[k + 1]``); a
    manifest not written by shard is one shard, ``""``."""
    meta = pq.read_metadata(path)
    found = (meta.metadata or {}).get(SHARDS_KEY)
    if found is None:
        return [""], [0, meta.num_rows]
    sizes = [meta.row_group(k).num_rows for k in range(meta.num_row_groups)]
    return json.loads(found), np.cumsum([0, *sizes]).astype(np.int64).tolist()


def shard_batches(names: list[str], bounds: list[int], skip: Collection[str] = (),
                  rows: int = BATCH_ROWS) -> Iterator[tuple[np.ndarray, int, int]]:
    """Runs of consecutive shards not in ``skip`` (those reused), at least ``rows`` rows each where
    the shards allow: ``(each row's shard, first row, end row)``. One check a batch, not one a shard."""
    todo = [(name, a, b) for name, a, b in zip(names, bounds[:-1], bounds[1:]) if name not in skip]
    start = 0
    while start < len(todo):
        end = start + 1
        while end < len(todo) and todo[end][1] == todo[end - 1][2] and todo[end - 1][2] - todo[start][1] < rows:
            end += 1
        run = todo[start:end]
        yield np.repeat(np.array([t[0] for t in run], dtype=object), [t[2] - t[1] for t in run]), run[0][1], run[-1][2]
        start = end


def read_shards(path: str | Path, schema: pa.DataFrameSchema, columns: list[str] | None = None,
                arrow_lists: tuple[str, ...] = (), validated: bool = True) -> Iterator[tuple[str, pd.DataFrame]]:
    """``(shard, rows)`` of each shard of a manifest, in file order (:func:`read_batches` one shard a
    batch); a manifest not written by shard comes whole, as one shard named ``""``."""
    for shard, df in read_batches(path, schema, 1, columns, arrow_lists, validated):
        yield (shard[0] if len(shard) else ""), df


def _as_object_lists(table: pyarrow.Table, names: list[str]) -> pyarrow.Table:
    """Arrow list columns typed and described as pandas infers them from Python lists of text:
    ``list<item: string>``, or ``list<item: null>`` when no list holds anything."""
    meta = json.loads(table.schema.metadata[b"pandas"])
    entries = {entry["name"]: entry for entry in meta["columns"]}
    for name in names:
        column = table.column(name).combine_chunks()
        empty = len(column.flatten()) == 0
        value_type = column.type.value_type
        if not (empty or pyarrow.types.is_string(value_type) or pyarrow.types.is_large_string(value_type)):
            raise ManifestError(f"column {name!r}: lists of {value_type} cannot be written as lists of text")
        if empty:  # no element to cast: the same lists (and missing ones) over no values
            offsets = pyarrow.array(np.zeros(len(column) + 1, dtype=np.int32))
            column = pyarrow.ListArray.from_arrays(offsets, pyarrow.nulls(0), mask=column.is_null())
        else:
            column = column.cast(pyarrow.list_(pyarrow.string()))
        table = table.set_column(table.schema.get_field_index(name), name, column)
        entries[name].update(pandas_type="list[empty]" if empty else "list[unicode]", numpy_type="object")
    return table.replace_schema_metadata({**table.schema.metadata, b"pandas": json.dumps(meta).encode()})


def _is_text(col: pa.Column) -> bool:
    return str(col.dtype).startswith(("str", "string"))


def _normalize_text(df: pd.DataFrame, schema: pa.DataFrameSchema) -> pd.DataFrame:
    """Text columns as pandas' string dtype, so an all-missing column still types as text
    (``df`` is a fresh selection: its columns are replaced, the caller's frame is left alone)."""
    for name, col in schema.columns.items():
        values = df[name]
        if _is_text(col) and values.dtype == object:
            if all(isinstance(v, str) for v in values.dropna()):
                df[name] = values.astype("str")
    return df


def take_rows(df: pd.DataFrame, rows: np.ndarray, columns: list[str] | None = None) -> pd.DataFrame:
    """``columns`` (default: all) of the rows at positions ``rows``, renumbered from 0. Each column
    is taken out of ``df`` as it is copied, so a wide frame is never held twice, and an Arrow
    column comes out in one chunk, which :func:`write` then need not join again."""
    out = {}
    for name in list(df.columns) if columns is None else columns:
        out[name] = _one_chunk(df.pop(name).array.take(rows))
    return pd.DataFrame(out, copy=False)


def rows_at(df: pd.DataFrame, rows: np.ndarray) -> pd.DataFrame:
    """``df.iloc[rows]``, taken out of the smallest slice of ``df`` that holds them. A frame read
    from a manifest written by shard holds each Arrow-backed column (pandas' text, Arrow lists) in a
    chunk per row group, and pandas joins every chunk of what it takes from: the rows of a few
    shards taken out of a 1M-row frame cost about 30 ms a column, out of their slice (free: no
    copy) well under 1 ms."""
    rows = np.asarray(rows, dtype=np.int64)
    if not len(rows):
        return df.iloc[rows]
    lo, hi = int(rows.min()), int(rows.max()) + 1
    return df.iloc[lo:hi].iloc[rows - lo]


def _one_chunk(values):
    if isinstance(values, pd.arrays.ArrowExtensionArray) or hasattr(values, "_pa_array"):
        held = values.__arrow_array__()
        if isinstance(held, pyarrow.ChunkedArray) and held.num_chunks > 1:
            return pd.array(held.combine_chunks(), dtype=values.dtype)
    return values


def read(path: str | Path, schema: pa.DataFrameSchema, columns: list[str] | None = None,
         arrow_lists: tuple[str, ...] = ()) -> pd.DataFrame:
    """The manifest at ``path``, validated. ``columns``: only these (in this order), for a stage
    that needs a few columns of a wide manifest; the file must still hold exactly the schema's
    columns, and the ones read are validated. ``arrow_lists``: list columns a stage only carries
    through, held as Arrow (no Python object per element) and written back the same."""
    path = Path(path)
    meta = _footer(path, schema)
    stored = meta.schema.to_arrow_schema().names
    later = schemas.ADDED_LATER.get(schema.name, {})
    if columns is None:
        df = _with_added_later(read_columns(path, stored, arrow_lists), later)
        return _unless_sealed(df, schema, path, seal.Seal(path, schema.name, meta))
    _check_column_names(path, stored, schema)
    df = _with_added_later(read_columns(path, [c for c in columns if c in stored], arrow_lists), later)
    return _unless_sealed(df[list(columns)], _subschema(schema, columns), path, seal.Seal(path, schema.name, meta))


def _footer(path: Path, schema: pa.DataFrameSchema) -> pq.FileMetaData:
    """A manifest's footer, read once for everything a read needs from it; a missing file, or one
    that is no readable Parquet (torn, truncated), is named."""
    if not path.exists():
        raise ManifestError(f"{path}: {schema.name} manifest is missing")
    try:
        return pq.read_metadata(path)
    except (pyarrow.ArrowInvalid, OSError) as err:
        raise ManifestError(f"{path}: {schema.name} manifest is not a readable Parquet file (torn or truncated?): {err}") from None


def _unless_sealed(df: pd.DataFrame, schema: pa.DataFrameSchema, path: Path, sealed: seal.Seal, groups: list[int] | None = None,
                   starts: np.ndarray | None = None) -> pd.DataFrame:
    """``df`` (the rows of row groups ``groups`` of the file, default all) validated, unless the
    chunks it was read from are as the writer sealed them (:mod:`trainset.seal`): then checked already."""
    if sealed.intact(list(df.columns), groups):
        return df.reset_index(drop=True)
    if groups is None:
        return validate(df, schema, path)
    return _validated_groups(df, schema, path, groups, starts)


def _group_starts(meta) -> np.ndarray:
    """Each row group's first row in the file, and the file's rows last."""
    return np.concatenate([[0], np.cumsum([meta.row_group(k).num_rows for k in range(meta.num_row_groups)])]).astype(np.int64)


def read_rows(path: str | Path, schema: pa.DataFrameSchema, positions: np.ndarray, columns: list[str],
              arrow_lists: tuple[str, ...] = ()) -> pd.DataFrame:
    """The rows at ``positions`` (file rows, ascending) of ``columns``, validated, renumbered from 0:
    a row group at a time, only those rows taken out of it before anything becomes pandas, so a
    stage that needs wide columns for a few rows of a large manifest never holds them for all.
    A row that fails validation is named by its row in the file."""
    path = Path(path)
    parquet = pq.ParquetFile(path, metadata=_footer(path, schema))
    stored = parquet.schema_arrow.names
    _check_column_names(path, stored, schema)
    wanted = [c for c in columns if c in stored]
    starts = _group_starts(parquet.metadata)
    positions = np.asarray(positions, dtype=np.int64)
    if len(positions) and (np.any(np.diff(positions) <= 0) or positions[0] < 0 or positions[-1] >= starts[-1]):
        raise ValueError(f"{path}: rows to read must be ascending file rows below {starts[-1]}")
    group_of = np.searchsorted(starts, positions, side="right") - 1
    bounds = np.searchsorted(group_of, np.arange(len(starts)))  # each group's first position among those wanted
    parts = [parquet.read_row_group(int(g), columns=wanted, use_pandas_metadata=False).take(pyarrow.array(positions[a:b] - starts[g]))
             for g, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])) if b > a]
    table = pyarrow.concat_tables(parts) if parts else parquet.schema_arrow.empty_table().select(wanted)
    later = schemas.ADDED_LATER.get(schema.name, {})
    df = _with_added_later(_frame(table, wanted, arrow_lists), later)[list(columns)]
    checked = _subschema(schema, columns)
    try:
        return validate(df, checked, path)
    except ManifestError:  # checked again a batch of the file at a time, so the error names the row in the file
        for _ in read_batches(path, schema, BATCH_ROWS, columns=columns, arrow_lists=arrow_lists):
            pass
        raise


def read_batches(path: str | Path, schema: pa.DataFrameSchema, rows: int, columns: list[str] | None = None,
                 arrow_lists: tuple[str, ...] = (), validated: bool = True,
                 skip: Collection[str] = ()) -> Iterator[tuple[np.ndarray, pd.DataFrame]]:
    """``(each row's shard name, rows)`` of consecutive shards of a manifest written by shard, at
    least ``rows`` rows a batch (whole shards): a stage holds a batch, never the whole file, and
    pays each check once per batch rather than once per shard. A manifest not written by shard
    comes whole, its rows in shard ``""``. ``skip``: shards not read (a stage that reused their
    last output, :meth:`ShardedWriter.reuse`); a batch's shards then need not be consecutive."""
    path = Path(path)
    meta = _footer(path, schema)
    names = _shards_of(meta)
    stored = meta.schema.to_arrow_schema().names
    wanted = stored if columns is None else [c for c in columns if c in stored]
    if columns is not None:
        _check_column_names(path, stored, schema)
    later = schemas.ADDED_LATER.get(schema.name, {})
    checked = schema if columns is None else _subschema(schema, columns)
    starts = _group_starts(meta)
    sizes = np.diff(starts).tolist()
    sealed = seal.Seal(path, schema.name, meta) if validated else None

    def batch(groups):
        df = _with_added_later(read_columns(path, wanted, arrow_lists, row_group=groups), later)
        if columns is not None:
            df = df[list(columns)]
        if validated:
            df = _unless_sealed(df, checked, path, sealed, groups, starts)
        shard = np.full(len(df), "", dtype=object) if groups is None else np.repeat(
            np.array([names[g] for g in groups], dtype=object), [sizes[g] for g in groups])
        return shard, df

    if names is None:
        yield batch(None)
        return
    pending: list[int] = []
    for k, name in enumerate(names):
        if name in skip:
            continue
        pending.append(k)
        if sum(sizes[g] for g in pending) >= rows:
            yield batch(pending)
            pending = []
    if pending:
        yield batch(pending)


def _validated_groups(df: pd.DataFrame, schema: pa.DataFrameSchema, path: Path, groups: list[int] | None, starts: np.ndarray) -> pd.DataFrame:
    """A batch of row groups checked in one pass; a failure in a batch of row groups that are not
    consecutive is checked again a run at a time, so it names its row in the file."""
    if groups is None:
        return validate(df, schema, path)
    try:
        return validate(df, schema, path, first_row=int(starts[groups[0]]))
    except ManifestError:
        runs = np.split(np.asarray(groups), np.flatnonzero(np.diff(groups) != 1) + 1)
        at = 0
        for run in runs:
            n = int(starts[run[-1] + 1] - starts[run[0]])
            validate(df.iloc[at:at + n], schema, path, first_row=int(starts[run[0]]))
            at += n
        raise


def read_columns(path: str | Path, names: list[str], arrow_lists: tuple[str, ...] = (), row_group: int | list[int] | None = None) -> pd.DataFrame:
    """``names`` of the file as pandas reads them, unvalidated; the list columns of
    :data:`LIST_COLUMNS` as Python lists, those of ``arrow_lists`` held as Arrow. ``row_group``:
    only that row group's rows, or those of a list of them (shards of a manifest :class:`ShardedWriter` wrote)."""
    lists = [c for c in names if c in LIST_COLUMNS or c in arrow_lists]
    plain = [c for c in names if c not in lists]
    if row_group is not None:
        groups = [row_group] if isinstance(row_group, int) else row_group
        return _frame(pq.ParquetFile(path).read_row_groups(groups, columns=names, use_pandas_metadata=False), names, arrow_lists)
    df = pd.read_parquet(path, columns=plain)
    return _with_lists(df, pq.read_table(path, columns=lists) if lists else None, names, lists, arrow_lists)


def _frame(whole: pyarrow.Table, names: list[str], arrow_lists: tuple[str, ...] = ()) -> pd.DataFrame:
    """Rows read as Arrow (``names`` of a manifest) as :func:`read_columns` gives them."""
    lists = [c for c in names if c in LIST_COLUMNS or c in arrow_lists]
    plain = [c for c in names if c not in lists]
    df = whole.select(plain).to_pandas() if plain else pd.DataFrame(index=pd.RangeIndex(whole.num_rows))
    return _with_lists(df, whole.select(lists), names, lists, arrow_lists)


def _with_lists(df: pd.DataFrame, table: pyarrow.Table | None, names: list[str], lists: list[str], arrow_lists: tuple[str, ...]) -> pd.DataFrame:
    if lists:
        if not len(df.columns):
            df = pd.DataFrame(index=pd.RangeIndex(table.num_rows))
        for col in lists:
            values = table.column(col)
            held = col in arrow_lists and pyarrow.types.is_list(values.type)
            df[col] = pd.Series(pd.arrays.ArrowExtensionArray(values) if held else _python_lists(values), index=df.index,
                                dtype=None if held else object)
        df = df[names]
    return df


def _with_added_later(df: pd.DataFrame, later: dict) -> pd.DataFrame:
    """Columns added after the file was written, with the value older manifests read as."""
    for col, value in later.items():
        if col not in df.columns:
            df.insert(len(df.columns) - ("schema_version" in df.columns), col, value)
    return df


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while millions of containers are built: each pass would walk
    every one made so far, for nothing (they are live)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _python_lists(column: pyarrow.ChunkedArray) -> list:
    """A list column as Python lists (None for a missing list), sliced from its flat values."""
    with gc_paused():
        return _lists_of_chunks(column)


def _lists_of_chunks(column: pyarrow.ChunkedArray) -> list:
    out: list = []
    for chunk in column.chunks:
        if not isinstance(chunk, (pyarrow.ListArray, pyarrow.LargeListArray)):
            return column.to_pylist()
        flat = chunk.values
        values = flat.to_pylist() if pyarrow.types.is_null(flat.type) else flat.to_numpy(zero_copy_only=False).tolist()
        offsets = chunk.offsets.to_numpy()
        rows = [values[s:e] for s, e in zip(offsets[:-1].tolist(), offsets[1:].tolist())]
        if chunk.null_count:
            rows = [row if ok else None for row, ok in zip(rows, chunk.is_valid().to_pylist())]
        out.extend(rows)
    return out


def _check_column_names(path: Path, stored: list[str], schema: pa.DataFrameSchema) -> None:
    """A file read in part still holds exactly the schema's columns (those added later may be absent)."""
    names = set(stored) | set(schemas.ADDED_LATER.get(schema.name, {}))
    missing, extra = sorted(set(schema.columns) - names), sorted(names - set(schema.columns))
    if missing or extra:
        raise ManifestError(f"{path}: {schema.name} manifest failed validation: missing column(s) {missing}, "
                            f"column(s) not in the schema {extra}")


def _subschema(schema: pa.DataFrameSchema, columns: list[str]) -> pa.DataFrameSchema:
    """The schema's rules for ``columns`` alone (a frame-wide uniqueness only when all its columns are read)."""
    unique = list(schema.unique or [])
    keep_unique = bool(unique) and set(unique) <= set(columns)
    return pa.DataFrameSchema({c: schema.columns[c] for c in columns}, name=schema.name, strict=True,
                              unique=unique if keep_unique else None)


def read_many(paths: dict, schemas_by_key: dict[str, pa.DataFrameSchema]) -> dict[str, pd.DataFrame]:
    """``paths[key]`` read against ``schemas_by_key[key]``, for every key of the latter."""
    return {key: read(paths[key], schema) for key, schema in schemas_by_key.items()}


def empty(schema: pa.DataFrameSchema) -> pd.DataFrame:
    """A zero-row frame with the schema's columns and dtypes."""
    data = {}
    for name, col in schema.columns.items():
        data[name] = pd.Series([], dtype="str" if _is_text(col) else str(col.dtype))
    return pd.DataFrame(data)


def with_version(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    df["schema_version"] = pd.Series([SCHEMA_VERSION] * len(df), dtype="int64", index=df.index)
    return df
