"""Exact (SHA-256) and near (pHash Hamming) deduplication, with clusters kept for the split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .. import hashing, kernels, ledger, manifest, schemas


def _preference(df: pd.DataFrame) -> pd.DataFrame:
    """Sort so the item to keep comes first: original over generated, then most pixels,
    then largest file, then most tags (a copy with a sidecar beats a bare copy), then item
    id for a deterministic tie-break."""
    ranked = df.assign(_px=-(df["width"] * df["height"]), _size=-df["size"], _tags=-df["tags"].map(len))
    keys = ["generated", "_px", "_size", "_tags", "item_id"]
    return ranked.sort_values(keys, kind="stable").drop(columns=["_px", "_size", "_tags"])


def run_exact(filtered_path: str | Path, out: str | Path, rejected_out: str | Path) -> pd.DataFrame:
    items = manifest.read(filtered_path, schemas.FILTERED)
    ranked = _preference(items)
    first = ranked.groupby("sha256", sort=False)["item_id"].transform("first")
    dup = ranked["item_id"] != first
    rejected = ledger.reject(ranked[dup], "dedup", "exact", "exact_duplicate", "same bytes as " + first[dup] + " (kept)")
    manifest.write(rejected, rejected_out, schemas.REJECTED)
    return manifest.write(ranked[~dup], out, schemas.FILTERED)


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def run_near(
    exact_path: str | Path,
    out: str | Path,
    pairs_out: str | Path,
    clusters_out: str | Path,
    rejected_out: str | Path,
    max_distance: int,
) -> pd.DataFrame:
    items = manifest.read(exact_path, schemas.FILTERED).reset_index(drop=True)
    hashes = hashing.from_hex(items["phash"]) if len(items) else np.zeros(0, dtype=np.uint64)
    ii, jj, dd = kernels.hamming_pairs(hashes, max_distance)
    ids = items["item_id"].to_numpy()
    pairs = pd.DataFrame({"a": ids[ii].astype(str), "b": ids[jj].astype(str), "distance": dd.astype("int64")})
    manifest.write(pairs, pairs_out, schemas.PAIRS, sort_by=["a", "b"])

    uf = _UnionFind(len(items))
    for a, b in zip(ii.tolist(), jj.tolist()):
        uf.union(a, b)
    items["_root"] = [uf.find(i) for i in range(len(items))]
    key = items.groupby("_root")["sha256"].transform("min")
    items["cluster_key"] = key
    items["cluster_id"] = key.str[:16]
    items["cluster_size"] = items.groupby("_root")["item_id"].transform("size").astype("int64")

    ranked = _preference(items)
    keeper_id = ranked.groupby("_root", sort=False)["item_id"].transform("first")
    keeper_hash = ranked.groupby("_root", sort=False)["phash"].transform("first")
    ranked["keeper"] = ranked["item_id"] == keeper_id
    dist_to_keeper = kernels.popcount64(hashing.from_hex(ranked["phash"]) ^ hashing.from_hex(keeper_hash), np) if len(ranked) else []
    ranked["distance_to_keeper"] = np.asarray(dist_to_keeper, dtype=np.int64)
    manifest.write(ranked, clusters_out, schemas.MEMBERSHIP)

    dup = ~ranked["keeper"]
    detail = (
        "pHash distance " + ranked.loc[dup, "distance_to_keeper"].astype(str) + " to " + keeper_id[dup]
        + " (kept; cluster " + ranked.loc[dup, "cluster_id"] + " of " + ranked.loc[dup, "cluster_size"].astype(str) + ")"
    )
    rejected = ledger.reject(ranked[dup], "dedup", "near", "near_duplicate", detail)
    manifest.write(rejected, rejected_out, schemas.REJECTED)
    return manifest.write(ranked[~dup], out, schemas.DEDUPED)
