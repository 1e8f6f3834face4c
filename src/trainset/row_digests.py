"""Digests of row ranges of Arrow columns, read straight from their buffers.

A stage that reuses a shard's last output keys it by everything the shard's rows depend on. Some
of that lives in tables that span every shard (an item's cluster columns, its NSFW score); here
those columns, taken into the shards' row order, are digested a shard (a range of rows) at a
time from their buffers, with no per-row Python.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa


def range_digests(columns: list[pa.Array | pa.ChunkedArray], bounds: list[int]) -> list[str]:
    """SHA-256 per range of rows ``bounds[k]:bounds[k + 1]``, over every column's values there
    (strings with their lengths, lists with theirs, nulls marked). Equal values give equal digests."""
    digests = [hashlib.sha256() for _ in range(len(bounds) - 1)]
    for column in columns:
        array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        _update(digests, array, np.asarray(bounds, dtype=np.int64))
    return [d.hexdigest() for d in digests]


def _update(digests: list, array: pa.Array, bounds: np.ndarray) -> None:
    kind = array.type
    # which rows are missing, whether or not any is (so a range's digest never depends on another's rows)
    valid = np.asarray(array.is_valid().to_numpy(zero_copy_only=False), dtype=np.uint8) if array.null_count else None
    for k, d in enumerate(digests):
        n = int(bounds[k + 1] - bounds[k])
        d.update(b"v" + (valid[bounds[k]:bounds[k + 1]].tobytes() if valid is not None else b"\x01" * n))
    if pa.types.is_string(kind) or pa.types.is_binary(kind) or pa.types.is_large_string(kind) or pa.types.is_large_binary(kind):
        width = np.int64 if pa.types.is_large_string(kind) or pa.types.is_large_binary(kind) else np.int32
        offsets = np.frombuffer(array.buffers()[1], dtype=width)[array.offset:array.offset + len(array) + 1]
        data = memoryview(array.buffers()[2] or b"")
        for k, d in enumerate(digests):
            a, b = bounds[k], bounds[k + 1]
            d.update(b"s" + (offsets[a:b + 1] - offsets[a]).astype(np.int64).tobytes())
            d.update(data[offsets[a]:offsets[b]])
    elif pa.types.is_list(kind) or pa.types.is_large_list(kind):
        offsets = np.asarray(array.offsets.to_numpy(zero_copy_only=False), dtype=np.int64)
        for k, d in enumerate(digests):
            d.update(b"l" + (offsets[bounds[k]:bounds[k + 1] + 1] - offsets[bounds[k]]).tobytes())
        _update(digests, array.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0])), offsets[bounds] - offsets[0])
    elif pa.types.is_boolean(kind):
        values = np.asarray(array.fill_null(False).to_numpy(zero_copy_only=False), dtype=np.uint8)
        for k, d in enumerate(digests):
            d.update(b"b" + values[bounds[k]:bounds[k + 1]].tobytes())
    elif pa.types.is_integer(kind) or pa.types.is_floating(kind):
        values = array.fill_null(0).to_numpy(zero_copy_only=False)
        for k, d in enumerate(digests):
            d.update(b"n" + str(values.dtype).encode() + values[bounds[k]:bounds[k + 1]].tobytes())
    else:
        raise TypeError(f"no range digest for Arrow type {kind}")
