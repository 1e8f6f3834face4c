"""A manifest's seal: what its writer checked, kept in its own footer, so a reader need not check it again.

Every stage validates the manifests it writes and those it reads. A stage reading a 1M-row
manifest that the stage before it validated while writing spends most of that check on bytes
already checked. So the writer records, in the file's metadata, the schema it checked the rows
against, a digest of the checks themselves (their code and the libraries that run them) and a
digest of every column chunk it wrote. A reader digests the chunks it reads; where each is as
sealed, the check is skipped: the same bytes pass the same checks. Any change to the bytes (an
edit, a rewrite by another tool, a torn copy) or to the checks breaks the seal, and the rows are
checked as before, a bad one named by file, row and column.

The seal is written after the rows: the footer first holds a placeholder of the seal's exact
length, which :func:`fill` overwrites in place once the chunks can be read back (no offset in
the file moves). Files joined from sealed files (:mod:`trainset.parquet_splice`) take their
chunks' digests along (:func:`composed`), since a chunk is copied as bytes.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from . import parquet_splice

KEY = b"trainset.sealed"
"""Parquet metadata key of a manifest's seal."""

WIDTH = 16
"""Hex digits of each digest (64 bits: a chunk changed by accident cannot keep its digest)."""

_BLANK = "0" * WIDTH
_MODULES = ("manifest", "schemas", "column_checks", "seal")
"""The modules whose code decides whether rows pass a schema."""


@functools.lru_cache(maxsize=None)
def checks_digest() -> str:
    """Digest of what validation runs: the modules that define and apply the schemas, and the
    versions of the libraries they use (pandas decides the dtypes a column is read as)."""
    import numpy
    import pandas
    import pandera

    here = Path(__file__).parent
    h = hashlib.sha256()
    for module in _MODULES:
        h.update((here / f"{module}.py").read_bytes())
    for library in (numpy, pandas, pandera, pa):
        h.update(f"\0{library.__name__} {library.__version__}".encode())
    return h.hexdigest()[:WIDTH]


@functools.lru_cache(maxsize=64)
def _leaves(schema_bytes: bytes) -> tuple[str, ...]:
    """The column chunks a row group of a file with this Arrow schema holds, by their top-level column."""
    schema = pa.ipc.read_schema(pa.py_buffer(schema_bytes))
    sink = io.BytesIO()
    pq.write_table(schema.empty_table(), sink)
    return _top_columns(pq.read_metadata(pa.BufferReader(sink.getvalue())))


def _top_columns(meta: pq.FileMetaData) -> tuple[str, ...]:
    return tuple(meta.schema.column(i).path.split(".")[0] for i in range(meta.num_columns))


def _layout(meta: pq.FileMetaData) -> str:
    """Digest of how the file declares its columns (Parquet types, pandas' metadata): the same
    chunk bytes read under other declared types are other values."""
    h = hashlib.sha256(meta.schema.to_arrow_schema().remove_metadata().serialize().to_pybytes())
    h.update((meta.metadata or {}).get(b"pandas", b""))
    return h.hexdigest()[:WIDTH]


def _encode(schema_name: str, checks: str, layout: str, columns: tuple[str, ...], groups: list[list[str]]) -> bytes:
    return json.dumps({"schema": schema_name, "checks": checks, "layout": layout, "columns": list(columns), "groups": groups},
                      separators=(",", ":")).encode()


def placeholder(schema_name: str, arrow_schema: pa.Schema, groups: int) -> bytes:
    """A seal of the right length for a file of ``groups`` row groups in ``arrow_schema``, to
    put in its metadata before it is closed; it claims nothing (its checks digest is blank)."""
    columns = _leaves(arrow_schema.serialize().to_pybytes())
    return _encode(schema_name, _BLANK, _BLANK, columns, [[_BLANK] * len(columns) for _ in range(groups)])


def read(meta: pq.FileMetaData) -> dict | None:
    """A file's seal, when it has one made with the checks this code runs."""
    raw = (meta.metadata or {}).get(KEY)
    if raw is None:
        return None
    try:
        found = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(found, dict) or found.get("checks") != checks_digest() or found.get("layout") != _layout(meta):
        return None
    groups, columns = found.get("groups"), found.get("columns")
    if not isinstance(groups, list) or len(groups) != meta.num_row_groups or columns != list(_top_columns(meta)):
        return None
    return found


def digests(path: str | Path, meta: pq.FileMetaData, groups, chunks: list[int] | None = None) -> list[list[str]]:
    """The digest of column chunks ``chunks`` (default: all) of each of row groups ``groups`` of
    the file at ``path``, read as they lie."""
    groups = list(groups)
    wanted = [list(range(meta.row_group(g).num_columns)) if chunks is None else list(chunks) for g in groups]
    spans = [parquet_splice.chunk_span(meta.row_group(g).column(c)) for g, cs in zip(groups, wanted) for c in cs]
    flat = iter(d[:WIDTH] for d in parquet_splice.span_digests(path, spans))
    return [[next(flat) for _ in cs] for cs in wanted]


def fill(path: str | Path, schema_name: str) -> bool:
    """Overwrite the placeholder in the just-written file at ``path`` with its seal; False (the
    placeholder left, claiming nothing) when it holds none or its row groups are not those the
    placeholder was made for."""
    path = Path(path)
    meta = pq.read_metadata(path)
    raw = (meta.metadata or {}).get(KEY)
    columns = _top_columns(meta)
    if raw is None or raw != _encode(schema_name, _BLANK, _BLANK, columns, [[_BLANK] * len(columns) for _ in range(meta.num_row_groups)]):
        return False
    with open(path, "r+b") as f:
        sealed = _encode(schema_name, checks_digest(), _layout(meta), columns, digests(path, meta, range(meta.num_row_groups)))
        f.seek(-8, 2)
        length = int.from_bytes(f.read(4), "little")
        start = f.seek(-8 - length, 2)
        footer = f.read(length)
        if footer.count(raw) != 1 or len(sealed) != len(raw):
            return False
        f.seek(start + footer.index(raw))
        f.write(sealed)
    return True


def composed(picks: list[tuple[dict | None, int]], schema_name: str) -> bytes | None:
    """The seal of a file joined from row groups of sealed files (``picks``: each group's source
    seal and its row group there, in the joined file's order); None unless every source is sealed
    for ``schema_name`` with the same columns declared alike (a join takes its schema from its
    sources, which must all hold it)."""
    if not picks or any(seal is None or seal.get("schema") != schema_name for seal, _ in picks):
        return None
    columns, layout = picks[0][0]["columns"], picks[0][0]["layout"]
    if any(seal["columns"] != columns or seal["layout"] != layout for seal, _ in picks):
        return None
    return _encode(schema_name, checks_digest(), layout, tuple(columns), [seal["groups"][k] for seal, k in picks])


class Seal:
    """A file's seal for ``schema_name``, read once, against which row groups of it are checked as
    they are read (:meth:`intact`)."""

    def __init__(self, path: str | Path, schema_name: str, meta: pq.FileMetaData | None = None):
        self.path = Path(path)
        self.meta = meta if meta is not None else pq.read_metadata(self.path)
        found = read(self.meta)
        self.found = found if found is not None and found.get("schema") == schema_name else None

    def intact(self, columns: list[str], groups: list[int] | None = None) -> bool:
        """Whether the chunks of ``columns`` in row groups ``groups`` (default: all) are as sealed:
        rows checked when written, unchanged since."""
        if self.found is None:
            return False
        tops = self.found["columns"]
        if not set(columns) <= set(tops):  # a column the file lacks (filled in by the reader) was never sealed
            return False
        wanted = set(columns)
        chunks = [c for c, top in enumerate(tops) if top in wanted]
        groups = list(range(self.meta.num_row_groups)) if groups is None else list(groups)
        now = digests(self.path, self.meta, groups, chunks)
        sealed = self.found["groups"]
        return all(row == [sealed[g][c] for c in chunks] for g, row in zip(groups, now))
