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


# list columns only passed on: held as Arrow, never as Python objects
_CARRIED_LISTS = ("phash_views", "artists", "tags")
# what neardup.preference_order ranks by (besides near_dup.quality_column)
_RANK_COLUMNS = ["item_id", "sha256", "generated", "border_fraction", "width", "height", "source", "size", "sidecar", "tags"]


def run(
    filtered_path: str | Path, pairs_path: str | Path, reference_path: str | Path, out: str | Path,
    clusters_out: str | Path, rejected_out: str | Path, near_dup: dict | None = None,
) -> pd.DataFrame:
    near_dup = near_dup or {}
    items = manifest.read(filtered_path, schemas.FILTERED, arrow_lists=_CARRIED_LISTS)
    pairs = manifest.read(pairs_path, schemas.PAIRS)
    refs = manifest.read(reference_path, schemas.REFERENCE_PAIRS)
    items, ref_rejected = _reference_hits(items, refs, near_dup)
    items = items.reset_index(drop=True)

    ranked = _ranked(items, near_dup)
    contents = ranked.drop_duplicates("sha256")
    content_index = pd.Index(contents["sha256"].to_numpy(dtype=object))
    a, b = content_index.get_indexer(pairs["a"]), content_index.get_indexer(pairs["b"])
    is_live = (a >= 0) & (b >= 0)
    live, a, b = pairs[is_live].reset_index(drop=True), a[is_live], b[is_live]
    rep = neardup.grow_clusters(len(contents), a, b, np.arange(len(contents)))

    content = content_index.get_indexer(ranked["sha256"])
    keeper = rep[content]
    shas = content_index.to_numpy()
    keeper_sha = pd.Series(shas[keeper], index=ranked.index, dtype="str")
    keeper_id = pd.Series(contents["item_id"].to_numpy(dtype=object)[keeper], index=ranked.index, dtype="str")
    is_keeper = (ranked["item_id"] == keeper_id).to_numpy()
    same = content == keeper
    pair = _pair_of(a, b, ranked["sha256"], keeper_sha, content, keeper, len(contents))
    membership = _membership(ranked, keeper_sha, keeper_id, is_keeper, same, live, pair)
    manifest.write(membership, clusters_out, schemas.MEMBERSHIP, sort_by=["item_id"])

    dup = ~is_keeper
    exact = dup & same
    near = dup & ~same
    detail_near = [
        f"near-duplicate of {k} (kept): pHash distance {d}{'' if np.isnan(c) else f', cosine {c:.3f}'}; rule {r}"
        for k, d, c, r in zip(keeper_id[near], membership["distance_to_keeper"][near], membership["cosine_to_keeper"][near], membership["rule"][near])
    ]
    row = ranked["_row"].to_numpy()
    rejected = pd.concat([
        ref_rejected,
        ledger.reject(items.iloc[row[exact]].set_axis(ranked.index[exact]), "dedup", "exact", "exact_duplicate",
                      "same bytes as " + keeper_id[exact] + " (kept)", duplicate_of=keeper_id[exact]),
        ledger.reject(items.iloc[row[near]].set_axis(ranked.index[near]), "dedup", "near", "near_duplicate",
                      pd.Series(detail_near, index=ranked.index[near], dtype=object), duplicate_of=keeper_id[near]),
    ])
    manifest.write(rejected, rejected_out, schemas.REJECTED)
    return manifest.write(items.iloc[np.sort(row[is_keeper])], out, schemas.DEDUPED)


def _ranked(items: pd.DataFrame, near_dup: dict) -> pd.DataFrame:
    """The columns ranking needs, best copy first (``neardup.preference_order``); ``_row`` is
    each row's position in ``items``, so the wide frame is taken from once."""
    quality = near_dup.get("quality_column")
    columns = _RANK_COLUMNS + ([quality] if quality in items.columns and quality not in _RANK_COLUMNS else [])
    narrow = items[columns].assign(_row=np.arange(len(items)))
    return neardup.preference_order(narrow, near_dup).reset_index(drop=True)


def _pair_of(a: np.ndarray, b: np.ndarray, row_sha: pd.Series, keeper_sha: pd.Series, content: np.ndarray,
             keeper: np.ndarray, n: int) -> np.ndarray:
    """For each ranked row, the live pair joining its content to its keeper's (-1: none). Pairs are
    keyed by their two content positions, the smaller SHA-256 first (as every pair is stored)."""
    first = (row_sha < keeper_sha).to_numpy()
    lo, hi = np.where(first, content, keeper), np.where(first, keeper, content)
    return pd.Index(a.astype(np.int64) * n + b).get_indexer(lo.astype(np.int64) * n + hi)


def _membership(ranked: pd.DataFrame, keeper_sha: pd.Series, keeper_id: pd.Series, is_keeper: np.ndarray,
                same: np.ndarray, live: pd.DataFrame, pair: np.ndarray) -> pd.DataFrame:
    """Each item's cluster, its keeper, and the pair (distance, cosine, rule) that ties it to the keeper."""
    found = pair >= 0
    at = np.where(found, pair, 0)
    distance = np.where(found, live["distance"].to_numpy(np.int64)[at] if len(live) else 0, 0)
    cosine = np.where(found, live["cosine"].to_numpy(np.float64)[at] if len(live) else np.nan, np.nan)
    rule = np.where(found, live["rule"].to_numpy(dtype=object)[at] if len(live) else "", "")
    return pd.DataFrame({
        "item_id": ranked["item_id"],
        "cluster_key": keeper_sha,
        "cluster_id": keeper_sha.str[:16],
        "keeper": is_keeper,
        "keeper_id": keeper_id,
        "distance_to_keeper": np.where(same, 0, distance).astype(np.int64),
        "cosine_to_keeper": np.where(same, np.nan, cosine),
        "rule": np.where(same, "exact", rule).astype(object),
    })
