"""Shards: distinct contents in fixed-size, stable sets, so per-item work runs as one job per shard.

A content keeps the shard it was first given (``data/manifests/shard-map.parquet``, versioned with
the data); new contents fill the last shard and then open new ones. Adding a batch therefore
leaves every full shard's rows, and so its digest, unchanged: Snakemake reruns only the shards
whose digest changed (the rules read their shard with ``ancient`` and pass the digest as a
param), plus the cheap gathers. All copies of one content share a shard, so each is decoded once.

Changing ``shards.size`` deals every content out again, in ingest order.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import atomic, manifest, schemas

MAP_COLUMNS = ("sha256", "shard", "size")
DEFAULTS = {"size": 5000, "threads": None, "mem_mb": 4000, "runtime": 60, "gpu": 0}


class ShardError(ValueError):
    pass


def settings(params: dict | None) -> dict:
    """``shards`` from params.yaml with defaults filled in; a bad value names itself."""
    out = {**DEFAULTS, **(params or {})}
    unknown = set(out) - set(DEFAULTS)
    if unknown:
        raise ShardError(f"params.yaml: shards has unknown keys {sorted(unknown)} (known: {sorted(DEFAULTS)})")
    for key in ("size", "mem_mb", "runtime"):
        value = out[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ShardError(f"params.yaml: shards.{key} must be a positive integer, got {value!r}")
    for key in ("threads", "gpu"):
        value = out[key]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ShardError(f"params.yaml: shards.{key} must be a non-negative integer or null, got {value!r}")
    return out


def name(k: int) -> str:
    return f"{k:05d}"


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
    order = list(dict.fromkeys(shas))
    known = {} if previous is None else dict(zip(previous["sha256"], previous["shard"].astype(int)))
    shard = {sha: known[sha] for sha in order if sha in known}
    counts = pd.Series(list(shard.values()), dtype="int64").value_counts()
    last = int(counts.index.max()) if len(counts) else (max(known.values()) if known else 0)
    filled = int(counts.get(last, 0))
    for sha in order:
        if sha in shard:
            continue
        if filled >= size:
            last, filled = last + 1, 0
        shard[sha] = last
        filled += 1
    return pd.DataFrame({"sha256": order, "shard": [shard[s] for s in order], "size": size}).astype(
        {"sha256": str, "shard": "int64", "size": "int64"})


def rows_digest(rows: pd.DataFrame) -> str:
    """Digest of a shard's ingest rows: what its per-item jobs read."""
    h = hashlib.sha256()
    for values in rows[["item_id", "sha256", "path"]].itertuples(index=False):
        h.update("\x1f".join(map(str, values)).encode())
        h.update(b"\x1e")
    return h.hexdigest()


def split_ingest(ingest_path: str | Path, out_dir: str | Path, index_path: str | Path, map_path: str | Path, size: int) -> dict:
    """Write one ingest manifest per shard and the index (shard -> digest, items, contents)."""
    items = manifest.read(ingest_path, schemas.INGEST)
    mapping = assign(items["sha256"], read_map(map_path, size), size)
    shard_of = dict(zip(mapping["sha256"], mapping["shard"]))
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    index = {}
    by_shard = items.assign(_shard=items["sha256"].map(shard_of))
    for k, rows in by_shard.groupby("_shard", sort=True):
        rows = rows.drop(columns="_shard")
        manifest.write(rows, out_dir / f"{name(int(k))}.parquet", schemas.INGEST)
        index[name(int(k))] = {"digest": rows_digest(rows.sort_values("item_id")), "items": len(rows),
                               "contents": int(rows["sha256"].nunique())}
    with atomic.atomic_file(map_path) as tmp:
        mapping.to_parquet(tmp, index=False)
    atomic.write_text(index_path, json.dumps(index, indent=1, sort_keys=True) + "\n")
    return index


def read_index(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def upto(index: dict, shard: str) -> list[str]:
    """The shards a pair job of ``shard`` compares it with: every shard up to it, itself last."""
    return [s for s in sorted(index) if s <= shard]


def concat(paths, schema, sort_by="item_id") -> pd.DataFrame:
    """One manifest from shard manifests (validated on write; read here without a second check).
    The wide pHash lists stay Arrow (``manifest.CARRIED_LISTS``): the gather only passes them on."""
    frames = []
    for path in paths:
        names = pq.read_schema(path).names
        frame = manifest.read_columns(path, names, manifest.CARRIED_LISTS)
        if len(frame):
            frames.append(frame)
    if not frames:
        return manifest.empty(schema)
    return pd.concat(frames, ignore_index=True)


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


def deal(manifest_path: str | Path, map_path: str | Path, shard_names, out_dir: str | Path, schema) -> dict[str, int]:
    """A global manifest's rows split by the shard of their content (the shard map), one file per
    shard (empty where a shard has none left), so per-item work after a global step (captions after
    dedup) runs as one job per shard again. Returns rows per shard."""
    rows = manifest.read(manifest_path, schema)
    mapping = pd.read_parquet(map_path, columns=["sha256", "shard"])
    at = pd.Index(mapping["sha256"]).get_indexer(rows["sha256"])
    if (at < 0).any():
        k = int(np.flatnonzero(at < 0)[0])
        raise ShardError(f"{manifest_path}: item {rows['item_id'].iloc[k]} (content {rows['sha256'].iloc[k]}) is in no shard of {map_path}")
    shard_of = mapping["shard"].to_numpy()[at]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for shard in shard_names:
        part = rows[shard_of == int(shard)]
        manifest.write(part, out_dir / f"{shard}.parquet", schema)
        counts[str(shard)] = len(part)
    if sum(counts.values()) != len(rows):
        raise ShardError(f"{manifest_path}: {len(rows) - sum(counts.values())} rows fall in shards the index does not list")
    return counts


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
