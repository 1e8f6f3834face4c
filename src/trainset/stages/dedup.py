"""filtered -> deduped: one copy kept per near-duplicate cluster among the items policy allowed.

Clusters are grown again among the allowed contents, around the best copy by ``near_dup.keep``
(``trainset.neardup.preference_order``): each dropped copy is a near-duplicate of the kept one
by the rule itself (never through a chain), and its rejected row names the item it was dropped
in favour of. Items that duplicate an external reference set are rejected (or flagged) first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .. import ledger, manifest, neardup, schemas
from ..config import ConfigError

REFERENCE_ACTIONS = ("reject", "flag")


def _reference_hits(items: pd.DataFrame, refs: pd.DataFrame, near_dup: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(items left, rejected rows) after the reference check."""
    action = near_dup.get("reference_action", "reject")
    if action not in REFERENCE_ACTIONS:
        raise ConfigError(f"params.yaml: near_dup.reference_action must be one of {list(REFERENCE_ACTIONS)}, got {action!r}")
    first = refs.sort_values(["sha256", "distance", "reference", "reference_path"]).drop_duplicates("sha256").set_index("sha256")
    hit = items["sha256"].isin(first.index)
    if not hit.any():
        return items, ledger.no_rejections()
    if action == "flag":
        items = items.copy()
        items.loc[hit, "flags"] = items.loc[hit, "flags"].map(lambda f: [*f, "reference_duplicate"])
        return items, ledger.no_rejections()
    match = first.loc[items.loc[hit, "sha256"]]
    detail = [
        f"near-duplicate of {p} in reference set {r} (pHash distance {d}{'' if np.isnan(c) else f', cosine {c:.3f}'}; rule {rl})"
        for r, p, d, c, rl in zip(match["reference"], match["reference_path"], match["distance"], match["cosine"], match["rule"])
    ]
    rejected = ledger.reject(
        items[hit], "dedup", "reference", "reference_duplicate", pd.Series(detail, index=items.index[hit]),
        duplicate_of=pd.Series(match["reference_path"].to_numpy(), index=items.index[hit]),
    )
    return items[~hit], rejected


def run(
    filtered_path: str | Path, pairs_path: str | Path, reference_path: str | Path, out: str | Path,
    clusters_out: str | Path, rejected_out: str | Path, near_dup: dict | None = None,
) -> pd.DataFrame:
    near_dup = near_dup or {}
    items = manifest.read(filtered_path, schemas.FILTERED)
    pairs = manifest.read(pairs_path, schemas.PAIRS)
    refs = manifest.read(reference_path, schemas.REFERENCE_PAIRS)
    items, ref_rejected = _reference_hits(items, refs, near_dup)

    ranked = neardup.preference_order(items, near_dup).reset_index(drop=True)
    contents = ranked.drop_duplicates("sha256")
    shas = contents["sha256"].to_numpy(dtype=object)
    position = {sha: k for k, sha in enumerate(shas)}
    live = pairs[pairs["a"].isin(position) & pairs["b"].isin(position)]
    a = live["a"].map(position).to_numpy(np.int64)
    b = live["b"].map(position).to_numpy(np.int64)
    rep = neardup.grow_clusters(len(shas), a, b, np.arange(len(shas)))
    keeper_sha = dict(zip(shas, shas[rep]))
    keeper_item = dict(zip(contents["sha256"], contents["item_id"]))

    ranked["_keeper_sha"] = ranked["sha256"].map(keeper_sha)
    keeper_id = ranked["_keeper_sha"].map(keeper_item).astype(str)
    ranked["keeper"] = ranked["item_id"] == keeper_id
    lookup = live.set_index(["a", "b"])
    lo = np.where(ranked["sha256"] < ranked["_keeper_sha"], ranked["sha256"], ranked["_keeper_sha"])
    hi = np.where(ranked["sha256"] < ranked["_keeper_sha"], ranked["_keeper_sha"], ranked["sha256"])
    found = lookup.reindex(pd.MultiIndex.from_arrays([lo, hi]))
    same = (ranked["sha256"] == ranked["_keeper_sha"]).to_numpy()
    membership = pd.DataFrame({
        "item_id": ranked["item_id"],
        "cluster_key": ranked["_keeper_sha"].astype(str),
        "cluster_id": ranked["_keeper_sha"].str[:16].astype(str),
        "keeper": ranked["keeper"],
        "keeper_id": keeper_id,
        "distance_to_keeper": np.where(same, 0, found["distance"].fillna(0).to_numpy()).astype(np.int64),
        "cosine_to_keeper": np.where(same, np.nan, found["cosine"].to_numpy(dtype=np.float64)),
        "rule": pd.Series(np.where(same, "exact", found["rule"].fillna("").to_numpy(dtype=object)), dtype=object).astype(str).to_numpy(),
    })
    manifest.write(membership, clusters_out, schemas.MEMBERSHIP, sort_by=["item_id"])

    dup = ~ranked["keeper"].to_numpy()
    exact = dup & same
    near = dup & ~same
    detail_near = [
        f"near-duplicate of {k} (kept): pHash distance {d}{'' if np.isnan(c) else f', cosine {c:.3f}'}; rule {r}"
        for k, d, c, r in zip(keeper_id[near], membership["distance_to_keeper"][near], membership["cosine_to_keeper"][near], membership["rule"][near])
    ]
    rejected = pd.concat([
        ref_rejected,
        ledger.reject(ranked[exact], "dedup", "exact", "exact_duplicate", "same bytes as " + keeper_id[exact] + " (kept)",
                      duplicate_of=keeper_id[exact]),
        ledger.reject(ranked[near], "dedup", "near", "near_duplicate", pd.Series(detail_near, index=ranked.index[near], dtype=object),
                      duplicate_of=keeper_id[near]),
    ])
    manifest.write(rejected, rejected_out, schemas.REJECTED)
    return manifest.write(ranked[~dup].drop(columns=["_keeper_sha", "keeper"]), out, schemas.DEDUPED)
