"""Parquet files joined and split by row group without decoding a value.

A gather (one manifest from its shards' files) and a deal (one file per row group of a manifest
written by shard) move rows that are already encoded, validated and typed alike. Here their column
chunks are copied as bytes and only the footer is rewritten, its byte offsets moved: at 1M rows
that is a file copy instead of a decode and an encode of every value.

The footer is Thrift's compact protocol (parquet.thrift ``FileMetaData``), decoded into a small
tree that encodes back to the same bytes. Files with a page index, bloom filters or encryption
(whose offsets live outside the footer) are refused with :class:`SpliceError`, as are files whose
schemas differ: the caller re-encodes those instead.
"""

from __future__ import annotations

import hashlib
import io
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

MAGIC = b"PAR1"

# compact protocol types
_TRUE, _FALSE, _BYTE, _I16, _I32, _I64, _DOUBLE, _BINARY, _LIST, _SET, _MAP, _STRUCT = range(1, 13)

# parquet.thrift field ids
_META_SCHEMA, _META_ROWS, _META_GROUPS, _META_KV = 2, 3, 4, 5
_GROUP_COLUMNS, _GROUP_ROWS, _GROUP_OFFSET, _GROUP_COMPRESSED, _GROUP_ORDINAL = 1, 3, 5, 6, 7
_CHUNK_PATH, _CHUNK_OFFSET, _CHUNK_META = 1, 2, 3
_CHUNK_REFUSED = {4: "an offset index", 6: "a column index", 8: "encryption", 9: "encryption"}
_COLUMN_COMPRESSED, _COLUMN_DATA, _COLUMN_INDEX_PAGE, _COLUMN_DICTIONARY = 7, 9, 10, 11
_COLUMN_REFUSED = {14: "a bloom filter"}
_META_REFUSED = {8: "encryption", 9: "encryption"}


class SpliceError(ValueError):
    """The files cannot be joined or split as bytes (the caller re-encodes them)."""


# --- Thrift compact protocol: a struct is a list of [field id, type, value] ------------------------


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def byte(self) -> int:
        b = self.data[self.pos]
        self.pos += 1
        return b

    def varint(self) -> int:
        shift = out = 0
        while True:
            b = self.byte()
            out |= (b & 0x7F) << shift
            if not b & 0x80:
                return out
            shift += 7

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def value(self, kind: int):
        if kind in (_TRUE, _FALSE):  # a bool inside a list is a byte of its own
            return self.byte()
        if kind == _BYTE:
            return self.byte()
        if kind in (_I16, _I32, _I64):
            return self.zigzag()
        if kind == _DOUBLE:
            self.pos += 8
            return self.data[self.pos - 8:self.pos]
        if kind == _BINARY:
            n = self.varint()
            self.pos += n
            return self.data[self.pos - n:self.pos]
        if kind in (_LIST, _SET):
            head = self.byte()
            size, elem = head >> 4, head & 0x0F
            if size == 15:
                size = self.varint()
            return (elem, [self.value(elem) for _ in range(size)])
        if kind == _MAP:
            size = self.varint()
            kinds = self.byte() if size else 0
            return (kinds, [(self.value(kinds >> 4), self.value(kinds & 0x0F)) for _ in range(size)])
        if kind == _STRUCT:
            return self.struct()
        raise SpliceError(f"unknown Thrift compact type {kind}")

    def struct(self, spec: dict | None = None) -> list:
        """A struct's fields; with a ``spec`` (field id -> None, or the spec of a struct or of a
        list of structs) only those fields are decoded, the others kept as their bytes (:class:`Raw`)."""
        fields, last = [], 0
        while True:
            head = self.byte()
            if head == 0:
                return fields
            kind, delta = head & 0x0F, head >> 4
            fid = last + delta if delta else self.zigzag()
            if kind in (_TRUE, _FALSE):
                value = None
            elif spec is None:
                value = self.value(kind)
            elif fid not in spec:
                start = self.pos
                self.skip(kind)
                value = Raw(self.data[start:self.pos])
            elif spec[fid] is None:
                value = self.value(kind)
            elif kind == _STRUCT:
                value = self.struct(spec[fid])
            else:  # a list of structs
                head = self.byte()
                size, elem = head >> 4, head & 0x0F
                if size == 15:
                    size = self.varint()
                value = (elem, [self.struct(spec[fid]) for _ in range(size)])
            fields.append([fid, kind, value])
            last = fid

    def skip(self, kind: int) -> None:
        if kind in (_TRUE, _FALSE, _BYTE):
            self.pos += 1
        elif kind in (_I16, _I32, _I64):
            while self.data[self.pos] & 0x80:
                self.pos += 1
            self.pos += 1
        elif kind == _DOUBLE:
            self.pos += 8
        elif kind == _BINARY:
            n = self.varint()
            self.pos += n
        elif kind in (_LIST, _SET):
            head = self.byte()
            size, elem = head >> 4, head & 0x0F
            if size == 15:
                size = self.varint()
            for _ in range(size):
                self.skip(elem)
        elif kind == _MAP:
            size = self.varint()
            kinds = self.byte() if size else 0
            for _ in range(size):
                self.skip(kinds >> 4)
                self.skip(kinds & 0x0F)
        elif kind == _STRUCT:
            while True:
                head = self.byte()
                if head == 0:
                    return
                if not head >> 4:
                    self.zigzag()
                if head & 0x0F not in (_TRUE, _FALSE):
                    self.skip(head & 0x0F)
        else:
            raise SpliceError(f"unknown Thrift compact type {kind}")


class Raw(bytes):
    """A field's value left encoded: written back as it was read."""


def _varint(n: int, out: bytearray) -> None:
    while True:
        if n < 0x80:
            out.append(n)
            return
        out.append((n & 0x7F) | 0x80)
        n >>= 7


def _zigzag(n: int, out: bytearray) -> None:
    _varint((n << 1) ^ (n >> 63), out)


def _write_value(kind: int, value, out: bytearray) -> None:
    if kind in (_TRUE, _FALSE, _BYTE):
        out.append(value)
    elif kind in (_I16, _I32, _I64):
        _zigzag(value, out)
    elif kind == _DOUBLE:
        out += value
    elif kind == _BINARY:
        _varint(len(value), out)
        out += value
    elif kind in (_LIST, _SET):
        elem, items = value
        if len(items) < 15:
            out.append(len(items) << 4 | elem)
        else:
            out.append(0xF0 | elem)
            _varint(len(items), out)
        for item in items:
            _write_value(elem, item, out)
    elif kind == _MAP:
        kinds, items = value
        _varint(len(items), out)
        if items:
            out.append(kinds)
        for k, v in items:
            _write_value(kinds >> 4, k, out)
            _write_value(kinds & 0x0F, v, out)
    elif kind == _STRUCT:
        _write_struct(value, out)
    else:
        raise SpliceError(f"unknown Thrift compact type {kind}")


def _write_struct(fields: list, out: bytearray) -> None:
    last = 0
    for fid, kind, value in fields:
        delta = fid - last
        if 0 < delta <= 15:
            out.append(delta << 4 | kind)
        else:
            out.append(kind)
            _zigzag(fid, out)
        if isinstance(value, Raw):
            out += value
        elif kind not in (_TRUE, _FALSE):
            _write_value(kind, value, out)
        last = fid
    out.append(0)


def encode(fields: list) -> bytes:
    out = bytearray()
    _write_struct(fields, out)
    return bytes(out)


def decode(data: bytes, spec: dict | None = None) -> list:
    return _Reader(data).struct(spec)


# what a join or split reads or moves in a footer (parquet.thrift); the rest stays bytes
_COLUMN_SPEC = {_COLUMN_COMPRESSED: None, _COLUMN_DATA: None, _COLUMN_INDEX_PAGE: None, _COLUMN_DICTIONARY: None,
                **dict.fromkeys(_COLUMN_REFUSED)}
_CHUNK_SPEC = {_CHUNK_PATH: None, _CHUNK_OFFSET: None, _CHUNK_META: _COLUMN_SPEC, **dict.fromkeys(_CHUNK_REFUSED)}
_GROUP_SPEC = {_GROUP_COLUMNS: _CHUNK_SPEC, _GROUP_ROWS: None, _GROUP_OFFSET: None, _GROUP_COMPRESSED: None, _GROUP_ORDINAL: None}
_META_SPEC = {_META_ROWS: None, _META_GROUPS: _GROUP_SPEC, _META_KV: {1: None, 2: None}, **dict.fromkeys(_META_REFUSED)}


def _get(fields: list, fid: int, default=None):
    for f in fields:
        if f[0] == fid:
            return f[2]
    return default


def _set(fields: list, fid: int, kind: int, value) -> None:
    for f in fields:
        if f[0] == fid:
            f[1], f[2] = kind, value
            return
    fields.append([fid, kind, value])
    fields.sort(key=lambda f: f[0])


# --- footers -------------------------------------------------------------------------------------


@dataclass
class Footer:
    meta: list          # FileMetaData, decoded
    start: int          # where the footer's bytes begin (the column chunks end there)
    size: int           # the file's size

    @classmethod
    def read(cls, f: BinaryIO, path: str | Path = "<bytes>") -> "Footer":
        f.seek(0, 2)
        size = f.tell()
        if size < 12:
            raise SpliceError(f"{path}: not a Parquet file ({size} bytes)")
        f.seek(size - 8)
        tail = f.read(8)
        if tail[4:] != MAGIC:
            raise SpliceError(f"{path}: not a Parquet file (no PAR1 at its end)")
        length = struct.unpack("<i", tail[:4])[0]
        start = size - 8 - length
        f.seek(start)
        meta = decode(f.read(length), _META_SPEC)
        _check_plain(meta, path)
        return cls(meta, start, size)

    @property
    def groups(self) -> list:
        return _get(self.meta, _META_GROUPS, (_STRUCT, []))[1]

    @property
    def schema_bytes(self) -> bytes:
        return bytes(_get(self.meta, _META_SCHEMA))  # left encoded (Raw)

    def key_values(self) -> dict[bytes, bytes]:
        items = _get(self.meta, _META_KV, (_STRUCT, []))[1]
        return {_get(kv, 1): _get(kv, 2, b"") for kv in items}


def _check_plain(meta: list, path) -> None:
    """Refuse what keeps byte offsets outside the footer (or cannot be read without keys)."""
    for fid, why in _META_REFUSED.items():
        if _get(meta, fid) is not None:
            raise SpliceError(f"{path}: has {why}")
    for group in _get(meta, _META_GROUPS, (_STRUCT, []))[1]:
        for chunk in _get(group, _GROUP_COLUMNS)[1]:
            if _get(chunk, _CHUNK_PATH) is not None:
                raise SpliceError(f"{path}: a column chunk lives in another file")
            for fid, why in _CHUNK_REFUSED.items():
                if _get(chunk, fid) is not None:
                    raise SpliceError(f"{path}: has {why}")
            column = _get(chunk, _CHUNK_META)
            for fid, why in _COLUMN_REFUSED.items():
                if _get(column, fid) is not None:
                    raise SpliceError(f"{path}: has {why}")


def _span(data: int, dictionary: int | None, compressed: int) -> tuple[int, int]:
    """A column chunk's bytes: from its dictionary page where it has one (some writers leave the
    offset 0 or past the data page), else its first data page."""
    start = dictionary if dictionary is not None and 0 < dictionary < data else data
    return start, start + compressed


def _chunk_span(chunk: list) -> tuple[int, int]:
    column = _get(chunk, _CHUNK_META)
    return _span(_get(column, _COLUMN_DATA), _get(column, _COLUMN_DICTIONARY), _get(column, _COLUMN_COMPRESSED))


def _group_span(group: list) -> tuple[int, int]:
    spans = [_chunk_span(chunk) for chunk in _get(group, _GROUP_COLUMNS)[1]]
    return min(a for a, _ in spans), max(b for _, b in spans)


def _moved(group: list, delta: int, ordinal: int | None) -> list:
    """A copy of a row group's metadata with every byte offset moved by ``delta``, its ordinal set
    (None: none, as pyarrow writes a file of one row group)."""
    group = [[fid, kind, value] for fid, kind, value in group]
    chunks = []
    for chunk in _get(group, _GROUP_COLUMNS)[1]:
        chunk = [[fid, kind, value] for fid, kind, value in chunk]
        offset = _get(chunk, _CHUNK_OFFSET)
        if offset:  # deprecated; 0 where a writer leaves it unset
            _set(chunk, _CHUNK_OFFSET, _I64, offset + delta)
        column = [[fid, kind, value] for fid, kind, value in _get(chunk, _CHUNK_META)]
        for fid in (_COLUMN_DATA, _COLUMN_INDEX_PAGE, _COLUMN_DICTIONARY):
            value = _get(column, fid)
            if value is not None:
                _set(column, fid, _I64, value + delta)
        _set(chunk, _CHUNK_META, _STRUCT, column)
        chunks.append(chunk)
    _set(group, _GROUP_COLUMNS, _LIST, (_STRUCT, chunks))
    offset = _get(group, _GROUP_OFFSET)
    if offset is not None:
        _set(group, _GROUP_OFFSET, _I64, offset + delta)
    if ordinal is None:
        group = [f for f in group if f[0] != _GROUP_ORDINAL]
    else:
        _set(group, _GROUP_ORDINAL, _I16, ordinal)
    return group


def _write_footer(out: BinaryIO, base: list, groups: list, rows: int, key_values: dict[bytes, bytes]) -> None:
    meta = [[fid, kind, value] for fid, kind, value in base]
    _set(meta, _META_ROWS, _I64, rows)
    _set(meta, _META_GROUPS, _LIST, (_STRUCT, groups))
    _set(meta, _META_KV, _LIST, (_STRUCT, [[[1, _BINARY, k], [2, _BINARY, v]] for k, v in key_values.items()]))
    data = encode(meta)
    out.write(data)
    out.write(struct.pack("<i", len(data)))
    out.write(MAGIC)


# --- join and split ------------------------------------------------------------------------------


def concat(sources: list, out: BinaryIO, key_values: dict[bytes, bytes] | None = None) -> int:
    """Write the row groups of every source (a path or bytes), in order, as one Parquet file to
    ``out``. Every source must hold the same Parquet schema; the file's key-value metadata is the
    first source's with ``key_values`` set on it. Returns the rows written."""
    return splice(sources, None, out, key_values)


def splice(sources: list, picks: list[tuple[int, int]] | None, out: BinaryIO, key_values: dict[bytes, bytes] | None = None) -> int:
    """Write the row groups ``picks`` names (``(source, row group)`` pairs, in the order given;
    None: every group of every source, in order) as one Parquet file to ``out``. Every source
    must hold the same Parquet schema; the file's key-value metadata is the first source's with
    ``key_values`` set on it. Returns the rows written."""
    footers, opened = [], []
    try:
        for source in sources:
            f = _open(source)
            opened.append(f)
            footers.append(Footer.read(f, _name(source)))
        if not footers:
            raise SpliceError("nothing to join")
        schema = footers[0].schema_bytes
        for source, footer in zip(sources, footers):
            if footer.schema_bytes != schema:
                raise SpliceError(f"{_name(source)}: its schema differs from the first file's")
        if picks is None:
            picks = [(s, k) for s, footer in enumerate(footers) for k in range(len(footer.groups))]
        out.write(MAGIC)
        position, groups, rows = len(MAGIC), [], 0
        for s, k in picks:
            group = footers[s].groups[k]
            a, b = _group_span(group)
            groups.append(_moved(group, position - a, len(groups)))
            rows += _get(group, _GROUP_ROWS)
            opened[s].seek(a)
            _copy(opened[s], out, b - a)
            position += b - a
        _write_footer(out, footers[0].meta, groups, rows, {**footers[0].key_values(), **(key_values or {})})
        return rows
    finally:
        for f in opened:
            f.close()


def group_digests(path: str | Path) -> list[str]:
    """SHA-256 of each row group's column chunks as stored. Chunks hold no file offsets, so the same
    rows written the same way digest alike wherever they lie: in a shard's own file, or joined into
    a manifest by :func:`concat`. (The spans come from pyarrow's reading of the footer.)"""
    import pyarrow.parquet as pq

    meta = pq.read_metadata(path)
    out = []
    with open(path, "rb") as f:
        for k in range(meta.num_row_groups):
            group = meta.row_group(k)
            chunks = [group.column(c) for c in range(group.num_columns)]
            spans = [_span(c.data_page_offset, c.dictionary_page_offset if c.has_dictionary_page else None, c.total_compressed_size)
                     for c in chunks]
            a, b = min(s for s, _ in spans), max(e for _, e in spans)
            f.seek(a)
            data = f.read(b - a)
            if len(data) != b - a:
                raise SpliceError(f"{path}: a column chunk ends past the end of the file")
            out.append(hashlib.sha256(data).hexdigest())
    return out


def row_group_file(f: BinaryIO, footer: Footer, k: int, key_values: dict[bytes, bytes]) -> bytes:
    """Row group ``k`` of the file ``f`` (its footer read) as a Parquet file of its own, whose
    key-value metadata is ``key_values``."""
    group = footer.groups[k]
    a, b = _group_span(group)
    out = io.BytesIO()
    out.write(MAGIC)
    f.seek(a)
    _copy(f, out, b - a)
    _write_footer(out, footer.meta, [_moved(group, len(MAGIC) - a, None)], _get(group, _GROUP_ROWS), key_values)
    return out.getvalue()


def _name(source) -> str:
    return str(source) if isinstance(source, (str, Path)) else "<bytes>"


def _open(source) -> BinaryIO:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(source))
    return open(source, "rb")


def _copy(src: BinaryIO, dst: BinaryIO, n: int, block: int = 1 << 22) -> None:
    while n > 0:
        data = src.read(min(block, n))
        if not data:
            raise SpliceError("a column chunk ends past the end of its file")
        dst.write(data)
        n -= len(data)
