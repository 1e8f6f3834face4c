"""Per-shard steps of the near-duplicate search: embeddings, and the pair-search tile of a shard.

The search over N contents is tiled by shard: the job of shard k compares its contents with each
other and with every earlier shard's, so the tiles together cover every pair exactly once. The
earlier shards are compared in blocks of at most :data:`BLOCK_CONTENTS` contents, so a job holds
one block's hashes and embeddings besides its own shard's, whatever N is, and the work is a few
large kernel calls rather than one per shard pair. Each shard's hashes come from the compact file
its audit job writes (``shards.write_hashes``). A new shard adds one job; the old shards' jobs
stay done. ``trainset.stages.group`` gathers the tiles.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from .. import atomic, manifest, neardup, schemas, shards
from . import group

EMBEDDING_COLUMNS = ("sha256", "embedding")


def embed(ingest_path: str | Path, audit_path: str | Path, out: str | Path, stats_path: str | Path, near_dup: dict,
          cache_dir: str | Path, seed: int = 0, threads: int = 1) -> pd.DataFrame:
    """One shard's image embeddings (sha256, float32 vector) for the rule's cosine clauses."""
    rule = neardup.Rule.from_params(near_dup, seed)
    items = manifest.read(ingest_path, schemas.INGEST)
    audit = manifest.read(audit_path, schemas.AUDIT)
    hashed = set(shards.contents(audit)["sha256"])
    todo = [(sha, path) for sha, path in dict(zip(items["sha256"], items["path"])).items() if sha in hashed]
    todo.sort()
    matrix, model_key, stats = group.embeddings(rule, todo, Path(cache_dir), threads)
    table = pd.DataFrame({"sha256": [s for s, _ in todo], "embedding": list(matrix) if matrix is not None else [None] * len(todo)})
    with atomic.atomic_file(out) as tmp:
        table.to_parquet(tmp, index=False)
    stats = {} if stats is None else {k: v for k, v in asdict(stats).items() if k != "failures"}
    atomic.write_text(stats_path, json.dumps({"embeddings": stats, "model": model_key}, indent=2, sort_keys=True) + "\n")
    return table


BLOCK_CONTENTS = 200_000
"""Earlier shards' contents compared with a tile's shard at once: hashes, their flattened views
(up to 26 a content) and embeddings of one block stay within a few hundred MB."""


def _load(rule: neardup.Rule, hash_path, embed_path) -> tuple:
    """A shard's hashed contents (by sha256): SHA-256s, the rule's view matrix, embeddings, and
    the matrix's ``FlatViews``."""
    shas, all_views, flat = shards.read_hashes(hash_path)
    matrix = np.ascontiguousarray(all_views[:, rule.view_indices]) if len(shas) else np.zeros((0, len(rule.view_indices)), np.uint64)
    emb = None if embed_path is None else shards.embedding_matrix(pd.read_parquet(embed_path), shas.astype(str))
    return shas, matrix, emb, flat.select(rule.view_indices)


class _ShardRows:
    """Rows of a block's per-shard arrays stacked (a hashes file's ``views`` or ``sha256``), each
    shard's read only when a row of it is asked for: a tile's pairs point into few earlier shards,
    and reading every earlier shard's views in every tile costs more than the search."""

    def __init__(self, paths: list, counts: list[int], key: str, columns=None):
        self.paths, self.key, self.columns = list(paths), key, columns
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, rows) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        part = np.searchsorted(self.starts, rows, side="right") - 1
        out = np.zeros((0, len(self.columns)), np.uint64) if self.columns is not None else np.zeros(0, "S64")
        for k in np.unique(part):
            with shards.open_hashes(self.paths[k]) as saved:
                values = saved[self.key]
            values = values[:, self.columns] if self.columns is not None else values
            if not len(out):
                out = np.empty((len(rows), *values.shape[1:]), dtype=values.dtype)
            chosen = part == k
            out[chosen] = values[rows[chosen] - self.starts[k]]
        return out


def _blocks(rule: neardup.Rule, hash_paths: list, embed_paths: list):
    """The shards' contents in blocks of at least :data:`BLOCK_CONTENTS` (the last one smaller):
    SHA-256s and view matrix read on demand (:class:`_ShardRows`), embeddings, ``FlatViews``."""
    pending: list = []
    for hash_path, embed_path in zip(hash_paths, embed_paths):
        if embed_path is None:
            rows, flat = shards.read_flat_views(hash_path)
            pending.append((hash_path, rows, None, flat.select(rule.view_indices)))
        else:
            shas, _, emb, flat = _load(rule, hash_path, embed_path)
            pending.append((hash_path, len(shas), emb, flat))
        if sum(part[1] for part in pending) >= BLOCK_CONTENTS:
            yield _joined(rule, pending)
            pending = []
    if pending:
        yield _joined(rule, pending)


def _joined(rule: neardup.Rule, parts: list) -> tuple:
    paths, counts = [p[0] for p in parts], [p[1] for p in parts]
    emb = None if parts[0][2] is None else np.concatenate([p[2] for p in parts])
    return (_ShardRows(paths, counts, "sha256"), _ShardRows(paths, counts, "views", list(rule.view_indices)), emb,
            neardup.FlatViews.join([p[3] for p in parts], counts))


def tile(rule: neardup.Rule, shas: np.ndarray, matrix: np.ndarray, emb, flat=None,
         other_shas=None, other_matrix=None, other_emb=None, other_flat=None) -> pd.DataFrame:
    """Accepted pairs (``a < b`` as SHA-256 strings) within one shard, or between it and a block."""
    if other_shas is None:
        return neardup.sha_pairs(shas, shas, neardup.find_pairs(rule, matrix, emb, flat=flat))
    found = neardup.find_pairs(rule, matrix, emb, other_matrix, other_emb, flat=flat, base_flat=other_flat)
    other = other_shas[found["b"].to_numpy(np.int64)]  # only the rows the pairs point to
    return neardup.sha_pairs(shas, other, found.assign(b=np.arange(len(found))))


def search(rule: neardup.Rule, hash_paths: list, embed_paths: list | None) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray, np.ndarray | None]:
    """Pairs of the last shard in ``hash_paths`` (``shards.write_hashes`` files) with itself and the
    earlier shards (block by block), and the last shard's contents (sha256), view matrix and embeddings."""
    embed_paths = embed_paths or [None] * len(hash_paths)
    shas, matrix, emb, flat = _load(rule, hash_paths[-1], embed_paths[-1])
    frames = [tile(rule, shas, matrix, emb, flat)]
    if len(shas):
        for block in _blocks(rule, hash_paths[:-1], embed_paths[:-1]):
            if len(block[0]):
                frames.append(tile(rule, shas, matrix, emb, flat, *block))
    frames = [f for f in frames if len(f)]
    pairs = (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(neardup.PAIR_FIELDS)))
    pairs = pairs.sort_values(["a", "b"], ignore_index=True).astype(
        {"a": str, "b": str, "distance": np.int64, "cosine": np.float64, "rule": str})
    return pairs, pd.DataFrame({"sha256": shas.astype(str)}), matrix, emb


def run(hash_paths: list, embed_paths: list | None, pairs_out: str | Path, reference_out: str | Path, stats_path: str | Path,
        near_dup: dict, cache_dir: str | Path, seed: int = 0, threads: int = 1, extensions=None, max_pixels=None) -> pd.DataFrame:
    """The pair-search tile of one shard, and its contents' matches in the reference sets."""
    rule = neardup.Rule.from_params(near_dup, seed)
    cache_dir = Path(cache_dir)
    reference_sets = group.reference_features(near_dup, cache_dir, threads, extensions, max_pixels)
    pairs, own, matrix, own_emb = search(rule, list(hash_paths), list(embed_paths) if embed_paths else None)
    refs = group.references(rule, own, matrix, own_emb, reference_sets, cache_dir, threads)
    manifest.write(refs, reference_out, schemas.REFERENCE_PAIRS, sort_by=["sha256", "reference", "reference_path"])
    atomic.write_text(stats_path, json.dumps({"search": {"contents": len(own), "shards_compared": len(hash_paths),
                                                          "new_pairs": len(pairs)}, "reference_matches": len(refs)},
                                             indent=2, sort_keys=True) + "\n")
    return manifest.write(pairs, pairs_out, schemas.PAIRS, sort_by=["a", "b"])
