"""filtered -> deduped: one item kept per cluster among the items policy allowed.

Clusters come from the group stage (exact copies and near-duplicates of every raw item). The
kept item is an original over a generated copy, then the most pixels, the largest file, a
copy with its own sidecar over a bare one, the most tags, then the smallest item id. The others are rejected as exact or near duplicates,
naming the kept item.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .. import hashing, kernels, ledger, manifest, schemas


def preference(df: pd.DataFrame) -> pd.DataFrame:
    """Sort so the item to keep comes first within any group."""
    ranked = df.assign(
        _px=-(df["width"] * df["height"]), _size=-df["size"], _bare=df["sidecar"].isna(), _tags=-df["tags"].map(len)
    )
    keys = ["generated", "_px", "_size", "_bare", "_tags", "item_id"]
    return ranked.sort_values(keys, kind="stable").drop(columns=["_px", "_size", "_bare", "_tags"])


def run(filtered_path: str | Path, out: str | Path, clusters_out: str | Path, rejected_out: str | Path) -> pd.DataFrame:
    items = manifest.read(filtered_path, schemas.FILTERED)
    ranked = preference(items)
    keeper_id = ranked.groupby("cluster_key", sort=False)["item_id"].transform("first")
    keeper_sha = ranked.groupby("cluster_key", sort=False)["sha256"].transform("first")
    keeper_hash = ranked.groupby("cluster_key", sort=False)["phash"].transform("first")
    ranked["keeper"] = ranked["item_id"] == keeper_id
    distance = kernels.popcount64(hashing.from_hex(ranked["phash"]) ^ hashing.from_hex(keeper_hash), np) if len(ranked) else []
    ranked["distance_to_keeper"] = np.asarray(distance, dtype=np.int64)
    manifest.write(ranked, clusters_out, schemas.MEMBERSHIP)

    dup = ~ranked["keeper"]
    exact = dup & (ranked["sha256"] == keeper_sha)
    near = dup & ~exact
    rejected = pd.concat([
        ledger.reject(ranked[exact], "dedup", "exact", "exact_duplicate", "same bytes as " + keeper_id[exact] + " (kept)"),
        ledger.reject(
            ranked[near], "dedup", "near", "near_duplicate",
            "pHash distance " + ranked.loc[near, "distance_to_keeper"].astype(str) + " to " + keeper_id[near]
            + " (kept; cluster " + ranked.loc[near, "cluster_id"] + " of " + ranked.loc[near, "cluster_size"].astype(str) + ")",
        ),
    ])
    manifest.write(rejected, rejected_out, schemas.REJECTED)
    return manifest.write(ranked[~dup], out, schemas.DEDUPED)
