"""Reading and writing Parquet manifests: validated on both sides of every stage boundary.

A bad row fails loudly with the file, the row number, the item id and the column.
"""

from __future__ import annotations

import contextlib
import gc
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow as pyarrow
import pyarrow.parquet as pq
from pandera.engines.pandas_engine import Engine

from . import atomic, column_checks, schemas
from .schemas import SCHEMA_VERSION

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
        pq.write_table(table, str(tmp), compression="snappy")
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


class ShardedWriter:
    """A manifest written a batch of whole shards at a time, so a stage never holds all its rows.

    Each shard's rows (validated, sorted by item id) become one row group, shards in the order
    written, their names in the file's metadata (:func:`shard_groups`); the file reads like any
    other manifest, rows in shard order. Validation errors name the row in the whole file, and
    the schema's unique columns are checked across shards at the end. Use as a context manager:
    the file appears whole when the block ends without an error, or not at all."""

    def __init__(self, path: str | Path, schema: pa.DataFrameSchema, sort_by: str | list[str] | None = "item_id"):
        self.path, self.schema, self.sort_by = Path(path), schema, sort_by
        self.rows = 0
        self._names: list[str] = []
        self._unique = {name: [] for name, col in schema.columns.items() if col.unique}
        self._writer: pq.ParquetWriter | None = None
        self._schema: pyarrow.Schema | None = None  # the first shard's, settled (settled_schema)
        self._atomic = atomic.atomic_file(self.path)
        self._tmp: Path | None = None

    def __enter__(self) -> "ShardedWriter":
        self._tmp = self._atomic.__enter__()
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
        else:
            self._abort()
            self._atomic.__exit__(kind, value, tb)
        return False

    def write(self, shard, df: pd.DataFrame) -> pd.DataFrame:
        """Rows of one shard (``shard`` its name), or of consecutive shards (``shard``: each row's
        shard name, shards in the order they first appear), each shard one row group; checking
        a batch of several shards at once costs one pass, not one per shard. None: nothing
        written. Returns the rows validated, as :func:`write` does."""
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
        again = sorted(set(names) & set(self._names))
        if again:  # a shard is one row group: its rows come in one call
            raise ManifestError(f"{self.path}: rows of shard(s) {', '.join(again[:5])} written again after other shards")
        sort_by = [self.sort_by] if isinstance(self.sort_by, str) else list(self.sort_by or [])
        keys = [df[c].to_numpy() for c in reversed(sort_by)]
        if len(names) > 1 or keys:
            order = np.lexsort([*keys, codes]) if keys else np.argsort(codes, kind="stable")
            df, codes = df.iloc[order], codes[order]
        df = validate(df, self.schema, self.path, first_row=self.rows)
        table = _table(df)
        if self._writer is None:
            self._schema = settled_schema(table.schema)
            self._writer = pq.ParquetWriter(str(self._tmp), self._schema, compression="snappy")
        table = conformed(table, self._schema)
        bounds = [0, *(np.flatnonzero(np.diff(codes)) + 1).tolist(), len(df)]
        for a, b in zip(bounds[:-1], bounds[1:]):
            self._writer.write_table(table.slice(a, b - a))
            self._names.append(names[codes[a]])
        for name, seen in self._unique.items():
            seen.append(table.column(name).combine_chunks())
        self.rows += len(df)
        return df

    def _finish(self) -> None:
        self._check_unique()
        if self._writer is None:  # no rows at all: an empty manifest with the schema's dtypes
            self._writer = pq.ParquetWriter(str(self._tmp), _table(empty(self.schema)).schema, compression="snappy")
        self._writer.add_key_value_metadata({SHARDS_KEY: json.dumps(self._names)})
        self._writer.close()

    def _abort(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()

    def _check_unique(self) -> None:
        check_unique(self.path, self.schema, self._unique)


def check_unique(path: str | Path, schema: pa.DataFrameSchema, seen: dict[str, list]) -> None:
    """The schema's unique columns (column -> its Arrow arrays, in file order) hold no value twice;
    the error names the rows in the whole file."""
    for name, arrays in seen.items():
        if not arrays:
            continue
        values = pd.Series(pyarrow.chunked_array(arrays).to_numpy(zero_copy_only=False))
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
    metadata = {k: v for k, v in (schema.metadata or {}).items() if k != SHARDS_KEY}
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
    found = (pq.read_metadata(path).metadata or {}).get(SHARDS_KEY)
    return None if found is None else json.loads(found)


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
        values = df.pop(name).array.take(rows)
        if isinstance(values, pd.arrays.ArrowExtensionArray):
            values = pd.array(values.__arrow_array__().combine_chunks(), dtype=values.dtype)
        out[name] = values
    return pd.DataFrame(out, copy=False)


def read(path: str | Path, schema: pa.DataFrameSchema, columns: list[str] | None = None,
         arrow_lists: tuple[str, ...] = ()) -> pd.DataFrame:
    """The manifest at ``path``, validated. ``columns``: only these (in this order), for a stage
    that needs a few columns of a wide manifest; the file must still hold exactly the schema's
    columns, and the ones read are validated. ``arrow_lists``: list columns a stage only carries
    through, held as Arrow (no Python object per element) and written back the same."""
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"{path}: {schema.name} manifest is missing")
    stored = pq.read_schema(path).names
    later = schemas.ADDED_LATER.get(schema.name, {})
    if columns is None:
        df = _with_added_later(read_columns(path, stored, arrow_lists), later)
        return validate(df, schema, path)
    _check_column_names(path, stored, schema)
    df = _with_added_later(read_columns(path, [c for c in columns if c in stored], arrow_lists), later)
    return validate(df[list(columns)], _subschema(schema, columns), path)


def read_batches(path: str | Path, schema: pa.DataFrameSchema, rows: int, columns: list[str] | None = None,
                 arrow_lists: tuple[str, ...] = (), validated: bool = True) -> Iterator[tuple[np.ndarray, pd.DataFrame]]:
    """``(each row's shard name, rows)`` of consecutive shards of a manifest written by shard, at
    least ``rows`` rows a batch (whole shards): a stage holds a batch, never the whole file, and
    pays each check once per batch rather than once per shard. A manifest not written by shard
    comes whole, its rows in shard ``""``."""
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"{path}: {schema.name} manifest is missing")
    names = shard_groups(path)
    stored = pq.read_schema(path).names
    wanted = stored if columns is None else [c for c in columns if c in stored]
    if columns is not None:
        _check_column_names(path, stored, schema)
    later = schemas.ADDED_LATER.get(schema.name, {})
    checked = schema if columns is None else _subschema(schema, columns)
    meta = pq.read_metadata(path)
    sizes = [meta.row_group(k).num_rows for k in range(meta.num_row_groups)]
    batches: list[list[int]] = [[]]
    if names is None:
        batches = [None]
    else:
        for k in range(len(names)):
            if sum(sizes[g] for g in batches[-1]) >= rows:
                batches.append([])
            batches[-1].append(k)
    first = 0
    for groups in batches:
        if groups == []:
            continue
        df = _with_added_later(read_columns(path, wanted, arrow_lists, row_group=groups), later)
        if columns is not None:
            df = df[list(columns)]
        if validated:
            df = validate(df, checked, path, first_row=first)
        first += len(df)
        shard = np.full(len(df), "", dtype=object) if groups is None else np.repeat(
            np.array([names[g] for g in groups], dtype=object), [sizes[g] for g in groups])
        yield shard, df


def read_columns(path: str | Path, names: list[str], arrow_lists: tuple[str, ...] = (), row_group: int | list[int] | None = None) -> pd.DataFrame:
    """``names`` of the file as pandas reads them, unvalidated; the list columns of
    :data:`LIST_COLUMNS` as Python lists, those of ``arrow_lists`` held as Arrow. ``row_group``:
    only that row group's rows, or those of a list of them (shards of a manifest :class:`ShardedWriter` wrote)."""
    lists = [c for c in names if c in LIST_COLUMNS or c in arrow_lists]
    plain = [c for c in names if c not in lists]
    if row_group is None:
        df = pd.read_parquet(path, columns=plain)
        table = pq.read_table(path, columns=lists) if lists else None
    else:
        groups = [row_group] if isinstance(row_group, int) else row_group
        whole = pq.ParquetFile(path).read_row_groups(groups, columns=names, use_pandas_metadata=False)
        df = whole.select(plain).to_pandas() if plain else pd.DataFrame(index=pd.RangeIndex(whole.num_rows))
        table = whole.select(lists)
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
