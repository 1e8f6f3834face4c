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
    searching = tiles is None
    items = manifest.read(ingest_path, schemas.INGEST, columns=_ingest_columns(near_dup, searching), arrow_lists=("tags",))
    audit_columns = ["item_id", "width", "height", "border_fraction"] + (["phash_views"] if searching else [])
    audit = manifest.read(audit_path, schemas.AUDIT, columns=audit_columns)
    at = _audit_rows(items["item_id"], audit, audit_path)
    if searching:  # the search ranks every item
        merged, with_audit = _with_audit(items, audit, at), None
        del audit
    else:  # gathered tiles: only the copies of contents in a pair are ranked (_best_first)
        merged, with_audit = items, (lambda rows, positions: _with_audit(rows, audit, at[positions]))
    del items

    if searching:
        ranked = neardup.preference_order(merged, near_dup)
        contents = ranked.drop_duplicates("sha256").reset_index(drop=True)  # the best copy stands for each content
        hashed = contents[contents["phash_views"].map(len) > 0].reset_index(drop=True)
        # reference images are decoded first: the decode workers fork, which must happen before the
        # pair search starts numba's threads in this process
        reference_sets = reference_features(near_dup, cache_dir, threads, extensions, max_pixels)
        pairs, matrix, emb, stats = search(rule, hashed, cache_dir, threads)
        refs = references(rule, hashed, matrix, emb, reference_sets, cache_dir, threads)
        del ranked, contents, hashed, matrix, emb
    else:
        pairs = shards.concat(tiles["pairs"], schemas.PAIRS)
        refs = shards.concat(tiles["reference"], schemas.REFERENCE_PAIRS)
        stats = shards.sum_stats(tiles["stats"])
    manifest.write(pairs, pairs_out, schemas.PAIRS, sort_by=["a", "b"])

    groups = _groups(merged, pairs, near_dup, with_audit)
    manifest.write(refs, reference_out, schemas.REFERENCE_PAIRS, sort_by=["sha256", "reference", "reference_path"])
    stats["reference_matches"] = len(refs)
    atomic.write_text(stats_path, json.dumps(stats, indent=2, sort_keys=True) + "\n")
    return manifest.write(groups, out, schemas.GROUPS)


# the ingest columns neardup.preference_order ranks by (the audit gives the pixels and border)
_RANK_COLUMNS = ["item_id", "sha256", "generated", "source", "size", "sidecar", "tags"]


def _ingest_columns(near_dup: dict, searching: bool) -> list[str]:
    """The ingest columns grouping reads: the ranking's (with ``near_dup.quality_column`` when it
    is an ingest column) and, for a search in this process, the paths."""
    quality = near_dup.get("quality_column")
    extra = [quality] if quality in schemas.INGEST.columns and quality not in _RANK_COLUMNS else []
    return _RANK_COLUMNS + extra + (["path"] if searching else [])


def _audit_rows(ids: pd.Series, audit: pd.DataFrame, audit_path) -> np.ndarray:
    """The audit row of each item (every item has one), matched by item id (row by row where both
    are in the same order)."""
    if len(audit) == len(ids) and audit["item_id"].array.equals(ids.array):
        return np.arange(len(ids))
    rows = manifest.positions(ids, audit["item_id"])
    if (rows < 0).any():
        raise manifest.ManifestError(f"{audit_path}: no audit row for {', '.join(ids[rows < 0][:5])}")
    return rows


def _with_audit(items: pd.DataFrame, audit: pd.DataFrame, rows: np.ndarray) -> pd.DataFrame:
    """``items`` with the columns of their audit ``rows``."""
    audit = audit if len(rows) == len(audit) and (rows == np.arange(len(rows))).all() else audit.iloc[rows]
    return pd.concat([items, audit.drop(columns="item_id").set_axis(items.index)], axis=1)


def _groups(items: pd.DataFrame, pairs: pd.DataFrame, near_dup: dict, with_audit=None) -> pd.DataFrame:
    """Each item's cluster (grown around the best copy first) and component. Only contents in a
    pair need the graph: every other content is its own cluster and component. ``with_audit``:
    adds the audit columns the ranking reads to the rows ranked (given with their positions in
    ``items``; None: ``items`` has them)."""
    content, shas = pd.factorize(items["sha256"])
    a, b = _pair_contents(items["sha256"], content, pairs)
    linked = _best_first(items, content, np.unique(np.concatenate([a, b])), near_dup, with_audit)
    local = np.full(len(shas), -1, dtype=np.int64)
    local[linked] = np.arange(len(linked))
    rep = np.arange(len(shas))
    rep[linked] = linked[neardup.grow_clusters(len(linked), local[a], local[b], np.arange(len(linked)))]
    least = np.arange(len(shas))
    least[linked] = linked[_least_in_component(shas[linked], neardup.components(len(linked), local[a], local[b]))]
    cluster = rep[content]
    groups = items[["item_id", "sha256"]].copy()
    groups["cluster_key"] = pd.Series(shas.take(cluster), index=items.index, dtype="str")
    groups["cluster_id"] = groups["cluster_key"].str[:16]
    groups["cluster_size"] = np.bincount(cluster, minlength=len(shas))[cluster].astype("int64")
    groups["component_key"] = pd.Series(shas.take(least[content]), index=items.index, dtype="str")
    return groups


def _pair_contents(shas: pd.Series, content: np.ndarray, pairs: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The content codes (``content``: one per item of ``shas``) of each pair's two contents,
    looked up through the few SHA-256s the pairs name."""
    named = pd.Index(pd.unique(pd.concat([pairs["a"], pairs["b"]], ignore_index=True).astype("str")))
    row = named.get_indexer(shas)
    code = np.full(len(named), -1, dtype=np.int64)
    code[row[row >= 0]] = content[row >= 0]
    if (code < 0).any():
        unknown = named[code < 0]
        raise ValueError(f"near-duplicate pairs name {len(unknown)} content(s) no item has, e.g. {unknown[0]!r}")
    return code[named.get_indexer(pairs["a"])], code[named.get_indexer(pairs["b"])]


def _best_first(items: pd.DataFrame, content: np.ndarray, linked: np.ndarray, near_dup: dict, with_audit=None) -> np.ndarray:
    """``linked`` contents in the order of their best copies (``neardup.preference_order`` ranks
    each row on its own, so ranking only their copies orders them as ranking every item would)."""
    is_linked = np.zeros(len(content), dtype=bool)
    is_linked[linked] = True
    rows = np.flatnonzero(is_linked[content])
    copies = items.iloc[rows]
    copies = with_audit(copies, rows) if with_audit is not None else copies
    ranked = neardup.preference_order(copies.set_axis(rows), near_dup)
    return pd.unique(content[ranked.index.to_numpy()])


def _least_in_component(shas: pd.Index, comp: np.ndarray) -> np.ndarray:
    """For each of ``shas``, the position of the smallest SHA-256 in its component."""
    by_sha = np.argsort(shas.to_numpy(dtype=object), kind="stable")
    labels, first = np.unique(comp[by_sha], return_index=True)
    least = np.empty(len(labels), dtype=np.int64)
    least[labels] = by_sha[first]
    return least[comp]


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
