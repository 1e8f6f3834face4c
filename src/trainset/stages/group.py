"""ingest + audit -> groups: near-duplicate pairs, clusters and components of every raw item.

Grouping comes before any filter so that policy decides on tags and ratings merged across the
copies of an image, and so the split keeps every near-duplicate pair on one side. Pairs are
found by the rule in ``near_dup`` (``trainset.neardup``) among distinct contents, reusing the
pairs of contents seen in earlier runs. Each item gets:

- ``cluster_key``: the SHA-256 of its cluster's representative (clusters grown around the best
  copy, so every member is a near-duplicate of it; exact copies always share one);
- ``component_key``: the smallest SHA-256 in its connected component over all pairs (what the
  split keeps together).

External reference sets (``near_dup.reference``, e.g. an evaluation holdout) are searched with
the same rule; their matches go to the reference-pairs manifest.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from .. import atomic, features, hashing, manifest, neardup, progress, schemas, shards
from ..sources.image_folder import normalize_extensions, walk


def embeddings(rule: neardup.Rule, items: list[tuple[str, str]], cache_dir: Path, threads: int):
    """Row-aligned embedding matrix (zeros where a content could not be embedded), the model key,
    and the embedding stats; (None, None, None) when no clause uses cosine."""
    if not rule.uses_cosine:
        return None, None, None
    from .. import embeddings  # noqa: PLC0415  (torch only when the rule needs it)

    embedder = embeddings.make_embedder(rule.model, threads=threads)
    store = embeddings.EmbeddingStore(cache_dir / "embeddings", embedder.key)
    found, stats = embeddings.embed_items(items, embedder, store, batch_size=rule.batch_size, threads=threads)
    dim = len(next(iter(found.values()))) if found else 1
    matrix = np.zeros((len(items), dim), dtype=np.float32)
    for row, (sha, _) in enumerate(items):
        if sha in found:
            matrix[row] = found[sha]
    return matrix, embedder.key, stats


def search(rule: neardup.Rule, contents: pd.DataFrame, cache_dir: Path, threads: int, index: bool = True):
    """Pairs among ``contents`` (sha256, path, phash_views; decoded ones only), the embedding
    matrix, the model key and stats."""
    items = list(zip(contents["sha256"], contents["path"]))
    emb, model_key, embed_stats = embeddings(rule, items, cache_dir, threads)
    matrix = neardup.view_matrix(contents["phash_views"], rule)
    store = neardup.PairIndex(cache_dir / "neardup", rule.key(model_key)) if index else None
    pairs, stats = neardup.content_pairs(rule, list(contents["sha256"]), matrix, emb, store)
    return pairs, matrix, emb, {"search": asdict(stats), "embeddings": None if embed_stats is None else {
        k: v for k, v in asdict(embed_stats).items() if k != "failures"}, "model": model_key}


def run(
    ingest_path: str | Path, audit_path: str | Path, out: str | Path, pairs_out: str | Path, reference_out: str | Path,
    near_dup: dict, cache_dir: str | Path, stats_path: str | Path, seed: int = 0, threads: int = 1,
    extensions=None, max_pixels: int | None = features.DEFAULT_MAX_PIXELS, tiles: dict | None = None,
) -> pd.DataFrame:
    """``tiles``: the shard jobs' outputs (``trainset.stages.pairs``: lists of ``pairs``,
    ``reference`` and ``stats`` files), gathered here; without them the search runs in this process."""
    cache_dir = Path(cache_dir)
    rule = neardup.Rule.from_params(near_dup, seed)
    items = manifest.read(ingest_path, schemas.INGEST)
    audit = manifest.read(audit_path, schemas.AUDIT)
    merged = items.merge(
        audit[["item_id", "decoded", "width", "height", "border_fraction", "phash_views"]], on="item_id", how="left", validate="one_to_one"
    )

    ranked = neardup.preference_order(merged, near_dup)
    contents = ranked.drop_duplicates("sha256").reset_index(drop=True)  # the best copy stands for each content
    hashed = contents[contents["phash_views"].map(len) > 0].reset_index(drop=True)
    if tiles is None:
        # reference images are decoded first: the decode workers fork, which must happen before the
        # pair search starts numba's threads in this process
        reference_sets = reference_features(near_dup, cache_dir, threads, extensions, max_pixels)
        pairs, matrix, emb, stats = search(rule, hashed, cache_dir, threads)
        refs = references(rule, hashed, matrix, emb, reference_sets, cache_dir, threads)
    else:
        pairs = shards.concat(tiles["pairs"], schemas.PAIRS)
        refs = shards.concat(tiles["reference"], schemas.REFERENCE_PAIRS)
        stats = shards.sum_stats(tiles["stats"])
    manifest.write(pairs, pairs_out, schemas.PAIRS, sort_by=["a", "b"])

    position = {sha: k for k, sha in enumerate(contents["sha256"])}
    a = pairs["a"].map(position).to_numpy(np.int64)
    b = pairs["b"].map(position).to_numpy(np.int64)
    rep = neardup.grow_clusters(len(contents), a, b, np.arange(len(contents)))
    comp = neardup.components(len(contents), a, b)
    shas = contents["sha256"].to_numpy(dtype=object)
    comp_key = pd.Series(shas).groupby(comp).transform("min").to_numpy(dtype=object)
    cluster_of = dict(zip(shas, shas[rep]))
    component_of = dict(zip(shas, comp_key))

    groups = merged[["item_id", "sha256"]].copy()
    groups["cluster_key"] = groups["sha256"].map(cluster_of).astype("str")
    groups["cluster_id"] = groups["cluster_key"].str[:16]
    groups["cluster_size"] = groups.groupby("cluster_key")["item_id"].transform("size").astype("int64")
    groups["component_key"] = groups["sha256"].map(component_of).astype("str")

    manifest.write(refs, reference_out, schemas.REFERENCE_PAIRS, sort_by=["sha256", "reference", "reference_path"])
    stats["reference_matches"] = len(refs)
    atomic.write_text(stats_path, json.dumps(stats, indent=2, sort_keys=True) + "\n")
    return manifest.write(groups, out, schemas.GROUPS)


def reference_features(near_dup: dict, cache_dir: Path, threads: int, extensions, max_pixels) -> list[tuple[str, pd.DataFrame]]:
    """``(name, table of sha256, path, phash_views)`` of each reference set's decodable images."""
    exts = normalize_extensions(extensions or [".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"])
    out = []
    for ref in near_dup.get("reference") or []:
        root = Path(ref["path"])
        listing = progress.bar(walk(root, exts), desc=f"hash reference {ref['name']}", unit="file")
        ref_items = [(hashing.sha256_file(root / rel), str(root / rel)) for rel, _ in listing]
        out.append((str(ref["name"]), feature_table(ref_items, cache_dir, threads, max_pixels)))
    return out


def feature_table(items: list[tuple[str, str]], cache_dir: Path, threads: int, max_pixels=features.DEFAULT_MAX_PIXELS) -> pd.DataFrame:
    """sha256, path and phash_views of the decodable distinct contents among (sha256, path) items
    (one decode each, through the audit's feature cache)."""
    cache = features.FeatureCache(Path(cache_dir) / "features", features.feature_key({"max_pixels": max_pixels}))
    found, _ = features.compute(items, cache, threads=threads, max_pixels=max_pixels)
    first = dict(reversed(items))  # the first path listed for each content
    usable = [(sha, p) for sha, p in first.items() if found[sha]["phash_views"]]
    return pd.DataFrame({"sha256": [s for s, _ in usable], "path": [p for _, p in usable],
                         "phash_views": [found[s]["phash_views"] for s, _ in usable]})


def references(
    rule: neardup.Rule, hashed: pd.DataFrame, matrix: np.ndarray, emb, reference_sets, cache_dir: Path, threads: int,
) -> pd.DataFrame:
    """Contents that are near-duplicates (by the same rule) of an image in a reference set."""
    frames = []
    for name, table in reference_sets:
        if not len(table) or not len(hashed):
            continue
        ref_emb, _, _ = embeddings(rule, list(zip(table["sha256"], table["path"])), cache_dir, threads)
        ref_matrix = neardup.view_matrix(table["phash_views"], rule)
        hits = neardup.find_pairs(rule, matrix, emb, ref_matrix, ref_emb)
        frames.append(pd.DataFrame({
            "sha256": hashed["sha256"].to_numpy()[hits["a"].to_numpy(np.int64)].astype(str),
            "reference": name,
            "reference_path": table["path"].to_numpy()[hits["b"].to_numpy(np.int64)].astype(str),
            "distance": hits["distance"].to_numpy(np.int64),
            "cosine": hits["cosine"].to_numpy(np.float64),
            "rule": hits["rule"].astype(str).to_numpy(),
        }))
    if not frames:
        return manifest.empty(schemas.REFERENCE_PAIRS)
    return pd.concat(frames, ignore_index=True).drop_duplicates(["sha256", "reference", "reference_path"])
