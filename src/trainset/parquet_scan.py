"""The pass over a Parquet footer (:mod:`trainset.parquet_splice`): where each row group's encoding
lies and which varints in it hold byte offsets.

The pass is written once, as functions numba can compile, and runs two ways (:func:`scan` picks):
compiled, about 15 ms for a 1M-row manifest's footer of 200 row groups, after numba's start-up in
the process (about 0.35 s); or as plain Python, about 0.3 s for that footer and 3 ms for a shard's
part of one row group, with no start-up. A job that scans only small footers (the few shards it
wrote itself) never starts numba. Numba is imported at the first compiled scan, not with this
module, which every manifest read and write imports."""

from __future__ import annotations

import threading
import types

import numpy as np

from .parquet_splice import (  # the Thrift compact types, and the kinds of site the splice rewrites
    _BINARY, _BYTE, _DOUBLE, _FALSE, _I16, _I32, _I64, _LIST, _MAP, _SET, _SITE_CHUNK_OFFSET, _SITE_DATA,
    _SITE_DICTIONARY, _SITE_GROUP_OFFSET, _SITE_INDEX_PAGE, _SITE_ORDINAL, _STRUCT, _TRUE,
)


def _varint_at(buf, pos):
    out = 0
    shift = 0
    while True:
        if pos >= len(buf):
            return -1, -1
        b = np.int64(buf[pos])
        pos += 1
        out |= (b & 0x7F) << shift
        if not b & 0x80:
            return out, pos
        shift += 7


def _zigzag_at(buf, pos):
    n, pos = _varint_at(buf, pos)
    return (n >> 1) ^ -(n & 1), pos


def _skip_value(buf, pos, kind):
    """Past one value of ``kind`` from ``pos`` (-1: truncated or an unknown type); nested lists,
    maps and structs walked with an explicit stack."""
    frames = np.zeros((64, 4), dtype=np.int64)  # (kind, remaining, element kind, value kind)
    depth = 0
    cur = kind
    while True:
        if pos < 0 or pos > len(buf):
            return -1
        if cur == -1:
            if depth == 0:
                return pos
            top = depth - 1
            if frames[top, 0] == _STRUCT:  # struct: its next field, or its end
                if pos >= len(buf):
                    return -1
                head = np.int64(buf[pos])
                pos += 1
                if head == 0:
                    depth -= 1
                    continue
                if not head >> 4:
                    _, pos = _zigzag_at(buf, pos)
                ft = head & 0x0F
                cur = -1 if ft == _TRUE or ft == _FALSE else ft
                continue
            if frames[top, 1] == 0:
                depth -= 1
                continue
            frames[top, 1] -= 1
            if frames[top, 0] == _MAP:  # map: keys and values alternate
                cur = frames[top, 2] if frames[top, 1] % 2 == 1 else frames[top, 3]
            else:
                cur = frames[top, 2]
            continue
        if cur == _TRUE or cur == _FALSE or cur == _BYTE:
            pos += 1
        elif cur == _I16 or cur == _I32 or cur == _I64:
            _, pos = _varint_at(buf, pos)
        elif cur == _DOUBLE:
            pos += 8
        elif cur == _BINARY:
            n, pos = _varint_at(buf, pos)
            if pos < 0:
                return -1
            pos += n
        elif cur == _LIST or cur == _SET or cur == _STRUCT or cur == _MAP:
            if depth == 64:
                return -1
            frames[depth, 0] = _STRUCT if cur == _STRUCT else (_MAP if cur == _MAP else _LIST)
            if cur == _LIST or cur == _SET:
                if pos >= len(buf):
                    return -1
                head = np.int64(buf[pos])
                pos += 1
                size = head >> 4
                if size == 15:
                    size, pos = _varint_at(buf, pos)
                frames[depth, 1] = size
                frames[depth, 2] = head & 0x0F
            elif cur == _MAP:
                size, pos = _varint_at(buf, pos)
                kinds = 0
                if size > 0:
                    if pos < 0 or pos >= len(buf):
                        return -1
                    kinds = np.int64(buf[pos])
                    pos += 1
                frames[depth, 1] = 2 * size
                frames[depth, 2] = kinds >> 4
                frames[depth, 3] = kinds & 0x0F
            depth += 1
        else:
            return -1
        cur = -1
        if depth == 0:
            return pos


def _field_at(buf, pos, last):
    """A struct field's header at ``pos``: (field id, type, where its value starts); id 0 at the struct's end."""
    if pos < 0 or pos >= len(buf):
        return -1, -1, -1
    head = np.int64(buf[pos])
    pos += 1
    if head == 0:
        return 0, 0, pos
    delta = head >> 4
    if delta:
        fid = last + delta
    else:
        fid, pos = _zigzag_at(buf, pos)
    return fid, head & 0x0F, pos


def _list_at(buf, pos):
    """A list's header: (size, element type, where its elements start)."""
    if pos < 0 or pos >= len(buf):
        return -1, -1, -1
    head = np.int64(buf[pos])
    pos += 1
    size = head >> 4
    if size == 15:
        size, pos = _varint_at(buf, pos)
    return size, head & 0x0F, pos


def _mark(sites, n, start, end, value, what):
    """Record a site (:func:`scan`); returns the count."""
    sites[n, 0] = start
    sites[n, 1] = end
    sites[n, 2] = value
    sites[n, 3] = what
    return n + 1


def _scan_column(buf, pos, sites, n_sites):
    """A ColumnMetaData from ``pos``, its page offsets marked: (refused, pos, sites, data page,
    dictionary page, compressed size)."""
    last, data, dictionary, compressed = 0, -1, -1, 0
    while True:
        fid, kind, pos = _field_at(buf, pos, last)
        if fid <= 0:
            return (7 if fid < 0 else 0), pos, n_sites, data, dictionary, compressed
        if fid == 14:
            return 5, pos, n_sites, data, dictionary, compressed
        if kind == _I64 and (fid == 7 or fid == 9 or fid == 10 or fid == 11):
            value, end = _zigzag_at(buf, pos)
            if fid == 7:
                compressed = value
            else:
                if fid == 9:
                    data = value
                elif fid == 11:
                    dictionary = value
                n_sites = _mark(sites, n_sites, pos, end, value, _SITE_DATA if fid == 9 else (_SITE_INDEX_PAGE if fid == 10 else _SITE_DICTIONARY))
            pos = end
        elif kind != _TRUE and kind != _FALSE:
            pos = _skip_value(buf, pos, kind)
        last = fid


def _scan_chunk(buf, pos, sites, n_sites):
    """A ColumnChunk from ``pos``: (refused, pos, sites, where its bytes start, where they end)."""
    last, start, end = 0, -1, -1
    while True:
        fid, kind, pos = _field_at(buf, pos, last)
        if fid <= 0:
            return (7 if fid < 0 else 0), pos, n_sites, start, end
        if fid == 1 or fid == 4 or fid == 5 or fid == 6 or fid == 7 or fid == 8 or fid == 9:
            # another file's chunk (1), a page index (4-7), encryption (8, 9)
            return (1 if fid == 1 else (2 if fid <= 5 else (3 if fid <= 7 else 4))), pos, n_sites, start, end
        if fid == 2 and kind == _I64:
            value, after = _zigzag_at(buf, pos)
            if value != 0:  # deprecated; 0 where a writer leaves it unset
                n_sites = _mark(sites, n_sites, pos, after, value, _SITE_CHUNK_OFFSET)
            pos = after
        elif fid == 3 and kind == _STRUCT:
            refused, pos, n_sites, data, dictionary, compressed = _scan_column(buf, pos, sites, n_sites)
            if refused:
                return refused, pos, n_sites, start, end
            # from the dictionary page where there is one (some writers leave the offset 0 or
            # past the data page), else the first data page
            start = dictionary if 0 < dictionary < data else data
            end = start + compressed
        elif kind != _TRUE and kind != _FALSE:
            pos = _skip_value(buf, pos, kind)
        last = fid


def _scan_group(buf, pos, g, groups, sites, n_sites):
    """RowGroup ``g`` from ``pos`` into ``groups[g]`` (see :func:`scan`): (refused, pos, sites)."""
    groups[g, 0] = pos
    groups[g, 3] = np.int64(1) << 62
    groups[g, 6] = n_sites
    last = 0
    while True:
        header = pos
        fid, kind, pos = _field_at(buf, pos, last)
        if fid < 0:
            return 7, pos, n_sites
        if fid == 0:
            break
        if fid > 7 or fid <= last:  # the ordinal (7) must be last: a move drops or adds it
            return 6, pos, n_sites
        if fid == 1 and kind == _LIST:  # the column chunks
            n_chunks, elem, pos = _list_at(buf, pos)
            if n_chunks < 0 or n_chunks > len(buf) or elem != _STRUCT:
                return 7, pos, n_sites
            for _ in range(n_chunks):
                refused, pos, n_sites, start, end = _scan_chunk(buf, pos, sites, n_sites)
                if refused:
                    return refused, pos, n_sites
                groups[g, 3] = min(groups[g, 3], start)
                groups[g, 4] = max(groups[g, 4], end)
        elif fid == 3 and kind == _I64:
            rows, pos = _zigzag_at(buf, pos)
            groups[g, 2] = rows
        elif (fid == 5 and kind == _I64) or (fid == 7 and kind == _I16):
            value, end = _zigzag_at(buf, pos)
            # the ordinal's value slot holds where its field begins
            n_sites = _mark(sites, n_sites, pos, end, value if fid == 5 else header, _SITE_GROUP_OFFSET if fid == 5 else _SITE_ORDINAL)
            pos = end
        elif kind != _TRUE and kind != _FALSE:
            pos = _skip_value(buf, pos, kind)
        last = fid
    groups[g, 1] = pos
    groups[g, 5] = last
    groups[g, 7] = n_sites - groups[g, 6]
    return 0, pos, n_sites


def _pass(buf):
    """The pass over an encoded ``FileMetaData`` (see :func:`scan`)."""
    top = np.zeros((32, 4), dtype=np.int64)
    groups = np.zeros((0, 8), dtype=np.int64)
    sites = np.zeros((0, 4), dtype=np.int64)
    n_top = 0
    n_sites = 0
    pos = 0
    last = 0
    while True:
        fid, kind, pos = _field_at(buf, pos, last)
        if fid < 0:
            return 7, top[:n_top], groups, sites[:n_sites]
        if fid == 0:
            break
        if fid == 8 or fid == 9:
            return 4, top[:n_top], groups, sites[:n_sites]
        if n_top == 32:
            return 7, top[:n_top], groups, sites[:n_sites]
        top[n_top, 0] = fid
        top[n_top, 1] = kind
        top[n_top, 2] = pos
        if fid == 4 and (kind != _LIST or len(groups)):  # the row groups: one list, of structs
            return 7, top[:n_top], groups, sites[:n_sites]
        if fid == 4:
            size, elem, pos = _list_at(buf, pos)
            if size < 0 or size > len(buf) or elem != _STRUCT:
                return 7, top[:n_top], groups, sites[:n_sites]
            groups = np.zeros((size, 8), dtype=np.int64)
            sites = np.zeros((len(buf) // 2 + 1, 4), dtype=np.int64)
            for g in range(size):
                refused, pos, n_sites = _scan_group(buf, pos, g, groups, sites, n_sites)
                if refused:
                    return refused, top[:n_top], groups, sites[:n_sites]
        elif kind != _TRUE and kind != _FALSE:
            pos = _skip_value(buf, pos, kind)
        if pos < 0:
            return 8, top[:n_top], groups, sites[:n_sites]
        top[n_top, 3] = pos
        n_top += 1
        last = fid
    return 0, top[:n_top], groups, sites[:n_sites]


# --- running the pass ----------------------------------------------------------------------------

_PASS = ("_varint_at", "_zigzag_at", "_skip_value", "_field_at", "_list_at", "_mark", "_scan_column", "_scan_chunk", "_scan_group", "_pass")

PLAIN_BYTES = 1 << 20
"""Footer bytes a process scans as plain Python before it starts numba for the rest: a job that
scans one large footer or many small ones pays at most about twice what the faster way costs."""


class _PlainNumbers:
    """What the pass takes from NumPy, for running as plain Python: Python's integers (exact, and
    far faster per byte than NumPy's scalars) and NumPy's arrays."""

    int64 = int
    zeros = staticmethod(np.zeros)


def _bound(wrap, names: dict) -> dict:
    """The pass's functions, each wrapped by ``wrap``, calling one another: copies of this module's
    with globals of their own (this module's, ``names`` over them)."""
    space = {**globals(), **names}
    for name in _PASS:
        template = globals()[name]
        space[name] = wrap(types.FunctionType(template.__code__, space, name, template.__defaults__))
    return space


_lock = threading.Lock()
_plain: dict | None = None
_compiled: dict | None = None
_plain_bytes = 0


def scan_plain(data: bytes):
    """:func:`scan` as plain Python. A footer damaged in a way the pass's own checks miss (an index
    past an array's end) is refused as unreadable, as the compiled pass refuses or reads it."""
    global _plain
    if _plain is None:
        _plain = _bound(lambda f: f, {"np": _PlainNumbers})
    try:
        return _plain["_pass"](bytes(data))
    except (IndexError, ValueError, OverflowError):
        empty = np.zeros((0, 4), dtype=np.int64)
        return 7, empty, np.zeros((0, 8), dtype=np.int64), empty


def scan_compiled(data: bytes):
    """:func:`scan` compiled by numba (cached on disk; the first call in a process starts numba)."""
    global _compiled
    with _lock:
        if _compiled is None:
            import numba  # noqa: PLC0415

            _compiled = _bound(numba.njit(cache=True, nogil=True), {})
    return _compiled["_pass"](np.frombuffer(data, dtype=np.uint8))


def scan(data: bytes):
    """One pass over an encoded ``FileMetaData`` (bytes). Returns (refused: 0 or a
    :data:`trainset.parquet_splice._REFUSED` code, top-level fields (id, type, value start, value
    end), row groups (start, end, rows, span start, span end, last field id, first site, sites),
    sites (start, end, value, what)). Compiled where numba has started in this process or the
    footers scanned as plain Python would pass :data:`PLAIN_BYTES`; else as plain Python."""
    global _plain_bytes
    with _lock:
        plain = _compiled is None and _plain_bytes + len(data) <= PLAIN_BYTES
        if plain:
            _plain_bytes += len(data)
    return scan_plain(data) if plain else scan_compiled(data)
