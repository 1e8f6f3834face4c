"""Parquet files joined and split by row group without decoding a value.

A gather (one manifest from its shards' files) and a deal (one file per row group of a manifest
written by shard) move rows that are already encoded, validated and typed alike. Here their column
chunks are copied as bytes and only the footer is rewritten, its byte offsets moved: at 1M rows
that is a file copy instead of a decode and an encode of every value.

The footer is Thrift's compact protocol (parquet.thrift ``FileMetaData``). One pass
(:func:`trainset.parquet_scan.scan`: plain Python for small footers, numba for large ones) finds
each row group's encoding and the varints in it that hold byte offsets; a row group moves by
rewriting those alone, every other byte copied. A footer this module writes is known without a
scan (:func:`splice_scanned`), and a scan saved beside a file (:meth:`Footer.save`) is read back
instead of scanning again while the footer's bytes are the same.
The key-value metadata, small, goes through a plain Thrift codec (:func:`decode`, :func:`encode`).
Files with a page index, bloom filters or encryption (whose offsets live outside the footer) are
refused with :class:`SpliceError`, as are files whose schemas differ: the caller re-encodes those.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import os
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from . import atomic

MAGIC = b"PAR1"

# compact protocol types
_TRUE, _FALSE, _BYTE, _I16, _I32, _I64, _DOUBLE, _BINARY, _LIST, _SET, _MAP, _STRUCT = range(1, 13)

# parquet.thrift field ids
_META_SCHEMA, _META_ROWS, _META_GROUPS, _META_KV = 2, 3, 4, 5
_GROUP_ORDINAL = 7


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

    def struct(self) -> list:
        fields, last = [], 0
        while True:
            head = self.byte()
            if head == 0:
                return fields
            kind, delta = head & 0x0F, head >> 4
            fid = last + delta if delta else self.zigzag()
            fields.append([fid, kind, None if kind in (_TRUE, _FALSE) else self.value(kind)])
            last = fid


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
        _field_header(fid, kind, last, out)
        if kind not in (_TRUE, _FALSE):
            _write_value(kind, value, out)
        last = fid
    out.append(0)


def encode(fields: list) -> bytes:
    out = bytearray()
    _write_struct(fields, out)
    return bytes(out)


def decode(data: bytes) -> list:
    return _Reader(data).struct()


def _get(fields: list, fid: int, default=None):
    for f in fields:
        if f[0] == fid:
            return f[2]
    return default


def _span(data: int, dictionary: int | None, compressed: int) -> tuple[int, int]:
    """A column chunk's bytes: from its dictionary page where it has one (some writers leave the
    offset 0 or past the data page), else its first data page. (:func:`trainset.parquet_scan.scan` applies
    the same rule.)"""
    start = dictionary if dictionary is not None and 0 < dictionary < data else data
    return start, start + compressed


def _field_header(fid: int, kind: int, last: int, out: bytearray) -> None:
    delta = fid - last
    if 0 < delta <= 15:
        out.append(delta << 4 | kind)
    else:
        out.append(kind)
        _zigzag(fid, out)


# --- footers: scanned once, row groups moved by rewriting their offsets in place ---------------

# what the scan marks in a row group (a "site": a varint whose value a move changes)
_SITE_CHUNK_OFFSET, _SITE_DATA, _SITE_INDEX_PAGE, _SITE_DICTIONARY, _SITE_GROUP_OFFSET, _SITE_ORDINAL = range(6)
_REFUSED = {1: "a column chunk lives in another file", 2: "has an offset index", 3: "has a column index", 4: "has encryption",
            5: "has a bloom filter", 6: "a row group's fields are not as parquet.thrift orders them",
            7: "its footer cannot be read (truncated)", 8: "its footer cannot be read (an unknown Thrift type)"}


@dataclass
class Footer:
    """A Parquet file's footer, scanned: where its row groups' encodings lie and which varints in
    them hold byte offsets, so a row group moves to another place by rewriting those alone."""

    data: bytes           # the encoded FileMetaData
    top: np.ndarray       # top-level fields: (id, type, value start, value end)
    group_table: np.ndarray
    sites: np.ndarray
    start: int            # where the footer's bytes begin (the column chunks end there)
    size: int             # the file's size

    @classmethod
    def read(cls, f: BinaryIO, path: str | Path = "<bytes>", saved: str | Path | None = None) -> "Footer":
        """The footer of the file ``f``, scanned; ``saved``: where a scan of it may have been saved
        (:meth:`save`), used when it was made of the same footer bytes at the same place."""
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
        if length <= 0 or start < len(MAGIC):
            raise SpliceError(f"{path}: not a Parquet file (its footer length is {length})")
        f.seek(start)
        data = f.read(length)
        found = cls._saved(saved, data, start, size) if saved is not None else None
        if found is not None:
            return found
        from .parquet_scan import scan  # noqa: PLC0415 (imported at the first footer scanned, not with manifests)

        refused, top, groups, sites = scan(data)
        if refused:
            raise SpliceError(f"{path}: {_REFUSED[refused]}")
        return cls(data, top, groups, sites, start, size)

    def save(self, path: str | Path) -> None:
        """The scan written to ``path`` (NumPy's ``.npz``), with a digest of the footer's bytes, so
        :meth:`read` of a file with this footer needs no scan."""
        buffer = io.BytesIO()
        np.savez(buffer, top=self.top, groups=self.group_table, sites=self.sites, place=np.array([self.start, self.size], dtype=np.int64),
                 digest=np.frombuffer(hashlib.sha256(self.data).digest(), dtype=np.uint8))
        atomic.write_bytes(path, buffer.getvalue())

    @classmethod
    def _saved(cls, path: str | Path, data: bytes, start: int, size: int) -> "Footer | None":
        """The scan saved at ``path`` when it is one of ``data`` at ``start`` in a file of ``size``
        bytes; None when there is none, it is torn, or it is another footer's."""
        try:
            with np.load(path, allow_pickle=False) as saved:
                if saved["digest"].tobytes() != hashlib.sha256(data).digest() or saved["place"].tolist() != [start, size]:
                    return None
                top, groups, sites = (saved[k].astype(np.int64, copy=False) for k in ("top", "groups", "sites"))
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
            return None
        if top.ndim != 2 or top.shape[1] != 4 or groups.ndim != 2 or groups.shape[1] != 8 or sites.ndim != 2 or sites.shape[1] != 4:
            return None
        return cls(data, top, groups, sites, start, size)

    @property
    def groups(self) -> range:
        return range(len(self.group_table))

    def rows(self, k: int) -> int:
        return int(self.group_table[k, 2])

    def span(self, k: int) -> tuple[int, int]:
        """Where row group ``k``'s column chunks lie in the file."""
        return int(self.group_table[k, 3]), int(self.group_table[k, 4])

    def _field(self, fid: int) -> bytes | None:
        for f, _, a, b in self.top.tolist():
            if f == fid:
                return self.data[a:b]
        return None

    @property
    def schema_bytes(self) -> bytes:
        return self._field(_META_SCHEMA) or b""

    def key_values(self) -> dict[bytes, bytes]:
        raw = self._field(_META_KV)
        if raw is None:
            return {}
        _, items = _Reader(raw).value(_LIST)
        return {_get(kv, 1): _get(kv, 2, b"") for kv in items}

    def moved(self, k: int, delta: int, ordinal: int | None) -> bytes:
        """Row group ``k``'s encoding with every byte offset moved by ``delta`` and its ordinal set
        (None: none, as pyarrow writes a file of one row group)."""
        return self._moved(k, delta, ordinal)[0]

    def _moved(self, k: int, delta: int, ordinal: int | None) -> tuple[bytes, list[tuple[int, int, int, int]]]:
        """:meth:`moved`, and the sites of the encoding returned, as a scan of it would mark them
        (places counted from its first byte; an ordinal's value: where its field begins)."""
        start, end, _, _, _, last, first, n = self.group_table[k].tolist()
        out, pos, data, sites = bytearray(), start, self.data, []
        has_ordinal = False
        for a, b, value, what in self.sites[first:first + n].tolist():
            if what == _SITE_ORDINAL:
                has_ordinal = True
                head = value  # where the ordinal's field begins
                out += data[pos:head]
                if ordinal is not None:
                    at = len(out)
                    out += data[head:a]
                    sites.append(_put(ordinal, out, at, _SITE_ORDINAL))
                pos = b
                continue
            out += data[pos:a]
            sites.append(_put(value + delta, out, value + delta, what))
            pos = b
        out += data[pos:end - 1]  # all but the struct's end
        if ordinal is not None and not has_ordinal:
            at = len(out)
            _field_header(_GROUP_ORDINAL, _I16, last, out)
            sites.append(_put(ordinal, out, at, _SITE_ORDINAL))
        out.append(0)
        return bytes(out), sites


def saved_footer(path: str | Path, name: str = "footer") -> Path:
    """Where a scan of a footer is saved beside the file at ``path`` (:meth:`Footer.save`): its
    own (``name`` "footer"), or another file's it stands for."""
    path = Path(path)
    return path.with_name(f"{path.name}.{name}.npz")


def _put(value: int, out: bytearray, noted: int, what: int) -> tuple[int, int, int, int]:
    """``value`` appended to ``out`` as a zigzag varint; its site (start, end, ``noted``, ``what``)."""
    at = len(out)
    _zigzag(value, out)
    return at, len(out), noted, what


def _write_footer(out: BinaryIO, base: Footer, groups: list[bytes], rows: int, key_values: dict[bytes, bytes]) -> tuple[bytes, np.ndarray, int]:
    """``base``'s FileMetaData with ``rows``, the row groups ``groups`` (encoded) and ``key_values``.
    Returns the footer's bytes, its top-level fields as a scan gives them, and where its first row
    group's encoding begins in them."""
    fields = {fid: (kind, base.data[a:b]) for fid, kind, a, b in base.top.tolist()}
    head = bytearray()
    _zigzag(rows, head)
    fields[_META_ROWS] = (_I64, bytes(head))
    if len(groups) < 15:
        head = bytearray([len(groups) << 4 | _STRUCT])
    else:
        head = bytearray([0xF0 | _STRUCT])
        _varint(len(groups), head)
    fields[_META_GROUPS] = (_LIST, bytes(head) + b"".join(groups))
    kv = bytearray()
    _write_value(_LIST, (_STRUCT, [[[1, _BINARY, k], [2, _BINARY, v]] for k, v in key_values.items()]), kv)
    fields[_META_KV] = (_LIST, bytes(kv))
    data, last, top, first_group = bytearray(), 0, [], 0
    for fid in sorted(fields):
        kind, value = fields[fid]
        _field_header(fid, kind, last, data)
        top.append((fid, kind, len(data), len(data) + len(value)))
        if fid == _META_GROUPS:
            first_group = len(data) + len(head)
        data += value
        last = fid
    data.append(0)
    out.write(data)
    out.write(struct.pack("<i", len(data)))
    out.write(MAGIC)
    return bytes(data), np.array(top, dtype=np.int64).reshape(-1, 4), first_group


# --- join and split ------------------------------------------------------------------------------


def concat(sources: list, out: BinaryIO, key_values: dict[bytes, bytes] | None = None) -> int:
    """Write the row groups of every source (a path or bytes), in order, as one Parquet file to
    ``out``. Every source must hold the same Parquet schema; the file's key-value metadata is the
    first source's with ``key_values`` set on it. Returns the rows written."""
    return splice(sources, None, out, key_values)


def splice(sources: list, picks: list[tuple[int, int]] | None, out: BinaryIO, key_values: dict[bytes, bytes] | None = None,
           footers: list[Footer | None] | None = None) -> int:
    """Write the row groups ``picks`` names (``(source, row group)`` pairs, in the order given;
    None: every group of every source, in order) as one Parquet file to ``out``. Every source
    must hold the same Parquet schema; the file's key-value metadata is the first source's with
    ``key_values`` set on it. ``footers``: a source's footer where the caller has read it (else it
    is read here). Returns the rows written."""
    return splice_scanned(sources, picks, out, key_values, footers)[0]


def splice_scanned(sources: list, picks: list[tuple[int, int]] | None, out: BinaryIO, key_values: dict[bytes, bytes] | None = None,
                   footers: list[Footer | None] | None = None) -> tuple[int, Footer]:
    """:func:`splice`, and the footer of the file written as a scan of it would give it (the
    places of what moved are known as it is written: no scan)."""
    given, footers, opened = footers or [], [], []
    try:
        for k, source in enumerate(sources):
            f = _open(source)
            opened.append(f)
            footers.append(given[k] if k < len(given) and given[k] is not None else Footer.read(f, _name(source)))
        if not footers:
            raise SpliceError("nothing to join")
        schema = footers[0].schema_bytes
        for source, footer in zip(sources, footers):
            if footer.schema_bytes != schema:
                raise SpliceError(f"{_name(source)}: its schema differs from the first file's")
        if picks is None:
            picks = [(s, k) for s, footer in enumerate(footers) for k in range(len(footer.groups))]
        out.write(MAGIC)
        placed, position = _Placed(), len(MAGIC)
        for s, k in picks:
            a, b = footers[s].span(k)
            placed.add(footers[s], k, position)
            _copy(opened[s], out, a, b - a)
            position += b - a
        return placed.rows, placed.write(out, footers[0], {**footers[0].key_values(), **(key_values or {})}, position)
    finally:
        for f in opened:
            f.close()


class _Placed:
    """The row groups of a file being written, each moved to where its chunks now lie, and their
    sites as a scan of the footer written will find them: the footer is known without a scan."""

    def __init__(self):
        self.groups: list[bytes] = []
        self.table: list[tuple[int, int, int, int, int, int]] = []  # (length, rows, span start, span end, first site, sites)
        self.sites: list[tuple[int, int, int, int]] = []  # counted from their group's first byte
        self.rows = 0

    def add(self, footer: Footer, k: int, at: int) -> None:
        """Row group ``k`` of ``footer``, its column chunks now from ``at``, next in the file."""
        a, b = footer.span(k)
        encoded, sites = footer._moved(k, at - a, len(self.groups))
        self.table.append((len(encoded), footer.rows(k), at, at + b - a, len(self.sites), len(sites)))
        self.sites.extend(sites)
        self.groups.append(encoded)
        self.rows += footer.rows(k)

    def write(self, out: BinaryIO, base: Footer, key_values: dict[bytes, bytes], start: int) -> Footer:
        """The footer written to ``out`` from ``start`` in its file (``base``'s fields, these row
        groups, ``key_values``), as a scan of it finds it."""
        data, top, at = _write_footer(out, base, self.groups, self.rows, key_values)
        group_table = np.zeros((len(self.table), 8), dtype=np.int64)
        placed = np.array(self.sites, dtype=np.int64).reshape(-1, 4)
        for g, (length, rows, a, b, first, n) in enumerate(self.table):
            # every group ends with an ordinal (field 7, the last of a RowGroup)
            group_table[g] = (at, at + length, rows, a, b, _GROUP_ORDINAL, first, n)
            placed[first:first + n, :2] += at
            ordinal = placed[first:first + n, 3] == _SITE_ORDINAL
            placed[first:first + n, 2][ordinal] += at
            at += length
        return Footer(data, top, group_table, placed, start, start + len(data) + 8)


def update_in_place(target: str | Path, target_footer: Footer, source: str | Path, source_footer: Footer, held: list[int | None]) -> Footer:
    """``target`` made to read as ``source`` (its row groups in its order, its footer's fields and
    metadata) without copying what it already holds: ``held[g]`` names the group of ``target``
    whose column chunks are those of ``source``'s group ``g`` (copied from there as bytes), or is
    None, and those chunks are appended. The old footer is cut off first; groups no longer named
    stay in the file, unread. Returns the new footer, as a scan of it finds it. Until it returns
    the file is torn (the caller marks it so)."""
    with open(target, "r+b") as f, open(source, "rb") as src:
        f.truncate(target_footer.start)
        placed, position = _Placed(), target_footer.start
        for g in source_footer.groups:
            a, b = source_footer.span(g)
            if held[g] is None:
                f.seek(position)
                _copy(src, f, a, b - a)
                at = position
                position += b - a
            else:
                at, end = target_footer.span(held[g])
                if end - at != b - a:
                    raise SpliceError(f"{target}: row group {held[g]} is not the one {source} holds as its group {g}")
            placed.add(source_footer, g, at)
        f.seek(position)
        footer = placed.write(f, source_footer, source_footer.key_values(), position)
        f.truncate()
    return footer


def group_digests(path: str | Path) -> list[str]:
    """SHA-256 of each row group's column chunks as stored. Chunks hold no file offsets, so the same
    rows written the same way digest alike wherever they lie: in a shard's own file, or joined into
    a manifest by :func:`concat`. (The spans come from pyarrow's reading of the footer.)"""
    import pyarrow.parquet as pq

    meta = pq.read_metadata(path)
    spans = []
    for k in range(meta.num_row_groups):
        group = meta.row_group(k)
        chunks = [chunk_span(group.column(c)) for c in range(group.num_columns)]
        spans.append((min(a for a, _ in chunks), max(b for _, b in chunks)))
    return span_digests(path, spans)


def chunk_span(chunk) -> tuple[int, int]:
    """Where a column chunk (pyarrow's ``ColumnChunkMetaData``) lies in its file."""
    return _span(chunk.data_page_offset, chunk.dictionary_page_offset if chunk.has_dictionary_page else None, chunk.total_compressed_size)


def span_digests(path: str | Path, spans: list[tuple[int, int]]) -> list[str]:
    """SHA-256 of each byte span ``[a, b)`` of the file, on as many threads as the process may use:
    reading from the page cache and SHA-256 both release the GIL, so a manifest's chunks hash about
    as many times faster as there are cores."""
    fd = os.open(path, os.O_RDONLY)
    try:
        def one(span: tuple[int, int]) -> str:
            a, b = span
            data = os.pread(fd, b - a, a)
            if len(data) != b - a:
                raise SpliceError(f"{path}: a column chunk ends past the end of the file")
            return hashlib.sha256(data).hexdigest()

        return hashed_in_parallel(one, spans)
    finally:
        os.close(fd)


def hashed_in_parallel(one, items: list) -> list:
    """``one`` of each item, in order, on as many threads as the process may use (at most 8): for
    work that reads and hashes, which release the GIL."""
    threads = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 8)
    if threads < 2 or len(items) < 2:
        return [one(item) for item in items]
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, items))


def row_group_file(f: BinaryIO, footer: Footer, k: int, key_values: dict[bytes, bytes]) -> bytes:
    """Row group ``k`` of the file ``f`` (its footer read) as a Parquet file of its own, whose
    key-value metadata is ``key_values``: ``PAR1``, the group's column chunks as they are in ``f``,
    then :func:`row_group_tail`."""
    a, b = footer.span(k)
    out = io.BytesIO()
    out.write(MAGIC)
    _copy(f, out, a, b - a)
    out.write(row_group_tail(footer, k, key_values))
    return out.getvalue()


def row_group_tail(footer: Footer, k: int, key_values: dict[bytes, bytes]) -> bytes:
    """What follows row group ``k``'s column chunks in :func:`row_group_file`'s file (its footer,
    the footer's length, ``PAR1``): with the chunks' bytes, everything the file's bytes depend on."""
    a, _ = footer.span(k)
    out = io.BytesIO()
    _write_footer(out, footer, [footer.moved(k, len(MAGIC) - a, None)], footer.rows(k), key_values)
    return out.getvalue()


def _name(source) -> str:
    return str(source) if isinstance(source, (str, Path)) else "<bytes>"


def _open(source) -> BinaryIO:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(source))
    return open(source, "rb")


def _copy(src: BinaryIO, dst: BinaryIO, at: int, n: int, block: int = 1 << 22) -> None:
    """``n`` bytes of ``src`` from ``at`` appended to ``dst``: in the kernel (``os.copy_file_range``)
    between two files, else through a buffer."""
    if n > 0 and _kernel_copy(src, dst, at, n):
        return
    src.seek(at)
    while n > 0:
        data = src.read(min(block, n))
        if not data:
            raise SpliceError("a column chunk ends past the end of its file")
        dst.write(data)
        n -= len(data)


def _kernel_copy(src: BinaryIO, dst: BinaryIO, at: int, n: int) -> bool:
    """False where the kernel cannot copy between these two (not files, another file system before
    Linux 5.3, no ``copy_file_range``): the caller copies through a buffer."""
    if not hasattr(os, "copy_file_range"):
        return False
    try:
        src_fd, dst_fd = src.fileno(), dst.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        return False
    dst.flush()
    start = out_at = os.lseek(dst_fd, 0, os.SEEK_END)
    try:
        while n > 0:
            done = os.copy_file_range(src_fd, dst_fd, n, at, out_at)
            if done == 0:
                raise SpliceError("a column chunk ends past the end of its file")
            at, out_at, n = at + done, out_at + done, n - done
    except OSError:
        if out_at != start:
            raise
        return False
    dst.seek(out_at)
    return True
