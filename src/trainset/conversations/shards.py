"""Filtered conversations in fixed-size, stable shards, so dedup's per-conversation work (MinHash
signatures) runs as one Snakemake job per shard.

As for images (:mod:`trainset.shards`, whose map this reuses): a conversation's content (its
SHA-256) keeps the shard it was first given (``data/conversations/shard-map.parquet``, versioned
with the data), and all copies of one content share it; new contents fill the last shard and then
open new ones. A full shard's rows, and so its digest, stay the same when a batch is added, and
Snakemake reruns only the shards whose digest changed. Changing ``shards.size`` deals every
conversation out again, in manifest order.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from .. import atomic
from .. import shards as ts_shards


def rows_digest(rows: pd.DataFrame) -> str:
    """Digest of a shard's conversations (id and content): what its jobs read."""
    h = hashlib.sha256()
    for cid, sha in rows.sort_values("id")[["id", "sha256"]].itertuples(index=False):
        h.update(f"{cid}\x1f{sha}\x1e".encode())
    return h.hexdigest()


def deal(df: pd.DataFrame, out_dir: str | Path, index_path: str | Path, map_path: str | Path, size: int,
         write: Callable[[pd.DataFrame, Path], object]) -> dict:
    """One file per shard of ``df``'s rows (``write(rows, path)``), the index (shard -> digest, items)
    and the updated map."""
    mapping = ts_shards.assign(df["sha256"].astype(str), ts_shards.read_map(map_path, size), size)
    shard_of = df["sha256"].astype(str).map(dict(zip(mapping["sha256"], mapping["shard"])))
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    index = {}
    for k, rows in df.groupby(shard_of.to_numpy(), sort=True):
        write(rows, out_dir / f"{ts_shards.name(int(k))}.parquet")
        index[ts_shards.name(int(k))] = {"digest": rows_digest(rows), "items": len(rows)}
    with atomic.atomic_file(map_path) as tmp:
        mapping.to_parquet(tmp, index=False)
    atomic.write_text(index_path, json.dumps(index, indent=1, sort_keys=True) + "\n")
    return index
