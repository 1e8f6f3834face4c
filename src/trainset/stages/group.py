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
import pyarrow as pa
import pyarrow.compute as pc

from .. import atomic, features, hashing, manifest, neardup, progress, provenance, row_digests, schemas, shards
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
    kept: str | Path | None = None,
) -> None:
    """``tiles``: the shard jobs' outputs (``trainset.stages.pairs``: lists of ``pairs``,
    ``reference`` and ``stats`` files), gathered here; without them the search runs in this process.

    The groups manifest is written by the audit manifest's shards. ``kept``: a folder where the
    last one is kept; a shard whose audit rows and whose linked contents' clusters are those it
    was made from is copied from it (:class:`manifest.ShardedWriter`), so adding a batch writes
    the new shards and those whose clusters it changed."""
    cache_dir = Path(cache_dir)
    rule = neardup.Rule.from_params(near_dup, seed)
    searching = tiles is None
    items = manifest.read(ingest_path, schemas.INGEST, columns=_ingest_columns(near_dup, searching), arrow_lists=("tags",))
    audit_columns = ["item_id", "sha256", "width", "height", "border_fraction"] + (["phash_views"] if searching else [])
    audit = manifest.read(audit_path, schemas.AUDIT, columns=audit_columns)
    at = _audit_rows(items["item_id"], audit, audit_path, ingest_path)
    ranking = audit.drop(columns="sha256")  # the audit columns the ranking reads (the ingest has the contents)
    if searching:  # the search ranks every item
        merged, with_audit = _with_audit(items, ranking, at), None
    else:  # gathered tiles: only the copies of contents in a pair are ranked (_linked_clusters)
        merged, with_audit = items, (lambda rows, positions: _with_audit(rows, ranking, at[positions]))
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

    linked = _linked_clusters(merged, pairs, near_dup, with_audit)
    del merged
    _write_groups(out, audit_path, audit[["item_id", "sha256"]], linked, kept)
    manifest.write(refs, reference_out, schemas.REFERENCE_PAIRS, sort_by=["sha256", "reference", "reference_path"])
    stats["reference_matches"] = len(refs)
    atomic.write_text(stats_path, json.dumps(stats, indent=2, sort_keys=True) + "\n")


# the ingest columns neardup.preference_order ranks by (the audit gives the pixels and border)
_RANK_COLUMNS = ["item_id", "sha256", "generated", "source", "size", "sidecar", "tags"]


def _ingest_columns(near_dup: dict, searching: bool) -> list[str]:
    """The ingest columns grouping reads: the ranking's (with ``near_dup.quality_column`` when it
    is an ingest column) and, for a search in this process, the paths."""
    quality = near_dup.get("quality_column")
    extra = [quality] if quality in schemas.INGEST.columns and quality not in _RANK_COLUMNS else []
    return _RANK_COLUMNS + extra + (["path"] if searching else [])


def _audit_rows(ids: pd.Series, audit: pd.DataFrame, audit_path, ingest_path) -> np.ndarray:
    """The audit row of each item, matched by item id (row by row where both are in the same
    order): every item has one, and the audit lists no other item."""
    if len(audit) == len(ids) and audit["item_id"].array.equals(ids.array):
        return np.arange(len(ids))
    rows = manifest.positions(ids, audit["item_id"])
    if (rows < 0).any():
        raise manifest.ManifestError(f"{audit_path}: no audit row for {', '.join(ids[rows < 0][:5])}")
    if len(audit) != len(ids):  # item ids are unique in both: then some audit row names no item
        stray = np.ones(len(audit), dtype=bool)
        stray[rows] = False
        raise manifest.ManifestError(f"{audit_path}: audit rows for items that {ingest_path} does not list: "
                                     f"{', '.join(audit['item_id'][stray][:5])}")
    return rows


def _with_audit(items: pd.DataFrame, audit: pd.DataFrame, rows: np.ndarray) -> pd.DataFrame:
    """``items`` with the columns of their audit ``rows``."""
    audit = audit if len(rows) == len(audit) and (rows == np.arange(len(rows))).all() else audit.iloc[rows]
    return pd.concat([items, audit.drop(columns="item_id").set_axis(items.index)], axis=1)


def _linked_clusters(items: pd.DataFrame, pairs: pd.DataFrame, near_dup: dict, with_audit=None) -> pd.DataFrame:
    """The cluster (grown around the best copy first) and component of each content in a pair:
    ``sha256``, ``cluster_key``, ``cluster_size`` (items in the cluster, copies included) and
    ``component_key``. Every other content is its own cluster and component, so only the copies of
    these contents are read and ranked. ``with_audit``: adds the audit columns the ranking reads to
    the rows ranked (given with their positions in ``items``; None: ``items`` has them)."""
    named = manifest.arrow_text(pd.unique(pd.concat([pairs["a"], pairs["b"]], ignore_index=True).astype("str")))
    rows = np.flatnonzero(pc.is_in(manifest.arrow_text(items["sha256"]), value_set=named).to_numpy(zero_copy_only=False))
    copies = items.iloc[rows]
    content, shas = pd.factorize(copies["sha256"])
    if len(shas) != len(named):
        unknown = pc.filter(named, pc.invert(pc.is_in(named, value_set=manifest.arrow_text(shas))))
        raise ValueError(f"near-duplicate pairs name {len(unknown)} content(s) no item has, e.g. {unknown[0].as_py()!r}")
    code = manifest.positions(pairs["a"], shas), manifest.positions(pairs["b"], shas)
    copies = with_audit(copies, rows) if with_audit is not None else copies
    ranked = neardup.preference_positions(copies.set_axis(np.arange(len(copies))), near_dup)
    best_first = pd.unique(content[ranked])  # contents in the order of their best copies
    local = np.empty(len(shas), dtype=np.int64)
    local[best_first] = np.arange(len(best_first))
    a, b = local[code[0]], local[code[1]]
    rep, least = np.empty(len(shas), dtype=np.int64), np.empty(len(shas), dtype=np.int64)  # by content code
    rep[best_first] = best_first[neardup.grow_clusters(len(best_first), a, b, np.arange(len(best_first)))]
    least[best_first] = best_first[_least_in_component(shas[best_first], neardup.components(len(best_first), a, b))]
    size = np.bincount(rep[content], minlength=len(shas))  # items per cluster, by its representative
    return pd.DataFrame({"sha256": pd.Series(shas, dtype="str"), "cluster_key": pd.Series(shas.take(rep), dtype="str"),
                         "cluster_size": size[rep].astype("int64"), "component_key": pd.Series(shas.take(least), dtype="str")})


def _least_in_component(shas: pd.Index, comp: np.ndarray) -> np.ndarray:
    """For each of ``shas``, the position of the smallest SHA-256 in its component."""
    by_sha = np.argsort(shas.to_numpy(dtype=object), kind="stable")
    labels, first = np.unique(comp[by_sha], return_index=True)
    least = np.empty(len(labels), dtype=np.int64)
    least[labels] = by_sha[first]
    return least[comp]


class _Clusters:
    """Each item's cluster columns from the linked contents' (:func:`_linked_clusters`) as Arrow
    columns over the audit rows (``ids``, ``shas``): an item whose content is in no pair is its own
    cluster (of its exact copies, which share its shard) and component."""

    def __init__(self, ids: pa.Array, shas: pa.Array, linked: pd.DataFrame):
        self.ids, self.shas = ids, shas
        at = manifest.positions(shas, linked["sha256"])
        picked, mask = pa.array(np.maximum(at, 0)), pa.array(at < 0)

        def column(name, type_):
            values = pa.array(linked[name].to_numpy(), type=type_) if len(linked) else pa.nulls(1, type_)
            return pc.if_else(mask, pa.nulls(len(shas), type_), values.take(picked)) if len(shas) else pa.array([], type_)
        self.linked = {name: column(name, t) for name, t in
                       (("cluster_key", pa.string()), ("cluster_size", pa.int64()), ("component_key", pa.string()))}

    def rows(self, a: int, b: int) -> pd.DataFrame:
        """The groups rows of audit rows ``a:b`` (whole shards: every copy of a content among them)."""
        shas = self.shas.slice(a, b - a)
        codes = pc.dictionary_encode(shas).indices.to_numpy(zero_copy_only=False).astype(np.int64)
        copies = pa.array(np.bincount(codes)[codes].astype(np.int64) if len(codes) else np.zeros(0, np.int64))
        key = pc.coalesce(self.linked["cluster_key"].slice(a, b - a), shas)
        return pd.DataFrame({
            "item_id": self.ids.slice(a, b - a).to_pandas().astype("str"),
            "sha256": shas.to_pandas().astype("str"),
            "cluster_key": key.to_pandas().astype("str"),
            "cluster_id": pc.utf8_slice_codeunits(key, 0, 16).to_pandas().astype("str"),
            "cluster_size": pc.coalesce(self.linked["cluster_size"].slice(a, b - a), copies).to_numpy(zero_copy_only=False),
            "component_key": pc.coalesce(self.linked["component_key"].slice(a, b - a), shas).to_pandas().astype("str"),
        })

    def shard_keys(self, names: list[str], bounds: list[int], audit_digests: dict[str, str]) -> dict[str, str]:
        """shard -> key of its groups rows: its audit rows' bytes (item ids, contents) and its
        linked contents' cluster columns; the code."""
        code = provenance.code_digest()
        sides = row_digests.range_digests(list(self.linked.values()), bounds)
        return {name: provenance.params_digest(["group", code, audit_digests[name], side])
                for name, side in zip(names, sides) if name in audit_digests}


def _write_groups(out: str | Path, audit_path: str | Path, audit: pd.DataFrame, linked: pd.DataFrame, kept) -> None:
    """The groups manifest, by the audit manifest's shards (one row group each), a batch of
    shards at a time; with ``kept``, the shards whose key did not change copied from the last one."""
    names, bounds = manifest.shard_bounds(audit_path)
    clusters = _Clusters(manifest.arrow_text(audit["item_id"]), manifest.arrow_text(audit["sha256"]), linked)
    keys = clusters.shard_keys(names, bounds, manifest.shard_digests(audit_path)) if kept is not None else {}
    with manifest.ShardedWriter(out, schemas.GROUPS, kept=kept and Path(kept) / "groups.parquet", order=names) as writer:
        reused = writer.reuse_all(keys)
        for shard, a, b in manifest.shard_batches(names, bounds, reused):
            writer.write(shard, clusters.rows(a, b), keys=manifest.keys_for(shard, keys))


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
