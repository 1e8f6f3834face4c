"""ingest + audit -> groups: exact-duplicate groups and near-duplicate clusters of every raw item.

Grouping comes before any filter so that policy decides on tags and ratings merged across all
copies of an image, and so the split keeps every copy of a picture on one side. Exact copies
share a SHA-256; near-duplicates are pHash pairs within ``max_distance`` bits, computed once per
distinct content with the shared Hamming kernel. A cluster's key is the smallest SHA-256 in it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .. import hashing, kernels, manifest, schemas


class UnionFind:
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


def run(ingest_path: str | Path, audit_path: str | Path, out: str | Path, pairs_out: str | Path, max_distance: int) -> pd.DataFrame:
    items = manifest.read(ingest_path, schemas.INGEST)
    audit = manifest.read(audit_path, schemas.AUDIT)
    merged = items[["item_id", "sha256"]].merge(audit[["item_id", "phash"]], on="item_id", how="left", validate="one_to_one")

    contents = merged.sort_values("item_id").drop_duplicates("sha256").reset_index(drop=True)
    hashed = contents[contents["phash"].notna()]
    ii, jj, dd = kernels.near_pairs(hashing.from_hex(hashed["phash"]), max_distance) if len(hashed) else ([], [], [])
    idx = hashed.index.to_numpy()
    rep = contents["item_id"].to_numpy()
    ii, jj = np.asarray(ii, dtype=np.int64), np.asarray(jj, dtype=np.int64)
    pairs = pd.DataFrame({
        "a": pd.Series(rep[idx[ii]], dtype="str"),
        "b": pd.Series(rep[idx[jj]], dtype="str"),
        "distance": np.asarray(dd, dtype=np.int64),
    })
    manifest.write(pairs, pairs_out, schemas.PAIRS, sort_by=["a", "b"])

    uf = UnionFind(len(contents))
    for a, b in zip(idx[ii].tolist(), idx[jj].tolist()):
        uf.union(a, b)
    root_of_sha = {sha: uf.find(i) for i, sha in enumerate(contents["sha256"])}
    merged["_root"] = merged["sha256"].map(root_of_sha)
    merged["cluster_key"] = merged.groupby("_root")["sha256"].transform("min").astype("str")
    merged["cluster_id"] = merged["cluster_key"].str[:16]
    merged["cluster_size"] = merged.groupby("_root")["item_id"].transform("size").astype("int64")
    return manifest.write(merged, out, schemas.GROUPS)
