"""ingest + audit -> nsfw_scores: an optional classifier's NSFW probability per item.

Off by default. With no model configured (``nsfw_model: {backend: none}``) the manifest
lists every item with a NaN score and nothing is decoded, loaded or cached. With a model,
only items the audit decoded are scored; each distinct content is decoded once (first
frame, EXIF upright, RGB) and its score cached as a small JSON file keyed by
(content SHA-256, ``spec.digest``), so a rerun, or a rerun after adding images, scores only
what it has not seen with this exact model and preprocessing. The model is loaded only
when something is left to score. Undecodable items get NaN.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .. import features, manifest, nsfw_model, progress, provenance, schemas
from ..features import FeatureCache, MissingFile
from ..nsfw_model import ModelSpec


@dataclass
class NSFWStats:
    items: int = 0
    decodable: int = 0
    contents: int = 0
    cache_hits: int = 0
    scored: int = 0
    failed: int = 0  # the audit decoded it, this stage could not (changed since): NaN, not cached


class ScoreCache(FeatureCache):
    """One ``{"nsfw_score": p}`` JSON file per content under ``root/<spec.digest>/``."""

    def score(self, sha256: str) -> float | None:
        hit = self.get(sha256)
        value = hit.get("nsfw_score") if isinstance(hit, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0:
            return float(value)
        return None  # absent, unreadable or nonsense: score it again

    def put_score(self, sha256: str, value: float) -> None:
        self.put(sha256, {"nsfw_score": float(value)})


def _decode(path: str) -> object:
    """The upright RGB image, or the exception that stopped it."""
    if not os.path.isfile(path):
        raise MissingFile(f"{path}: listed by the ingest manifest but not found (moved, or run from another folder?)")
    try:
        return nsfw_model.open_upright(path)
    except Exception as exc:  # any decoder failure: this content gets NaN
        return exc


def compute(
    items: list[tuple[str, str]], spec: ModelSpec, cache: ScoreCache, threads: int = 1
) -> tuple[dict[str, float], NSFWStats]:
    """Scores for decodable (sha256, path) items, keyed by sha256; decodes and scores only cache misses."""
    stats = NSFWStats(decodable=len(items))
    result, todo, stats.contents = features.partition_by_cache(items, cache.score)
    stats.cache_hits = len(result)
    if not todo:
        return result, stats

    scorer = nsfw_model.load(spec, threads=threads)
    threads = max(1, int(threads or 1))
    step = spec.batch_size
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for start in progress.bar(range(0, len(todo), step), desc="nsfw", unit="batch"):  # one batch at a time: bounded memory
            chunk = todo[start : start + step]
            decoded = list(pool.map(_decode, [p for _, p in chunk]))
            good = [(sha, im) for (sha, _), im in zip(chunk, decoded) if not isinstance(im, BaseException)]
            stats.failed += len(chunk) - len(good)
            scores = scorer.score([im for _, im in good]) if good else []
            if len(scores) != len(good):
                raise RuntimeError(f"nsfw scorer returned {len(scores)} scores for {len(good)} images")
            for (sha, _), value in zip(good, scores):
                cache.put_score(sha, value)  # per batch: a killed run resumes where it stopped
                result[sha] = value
            stats.scored += len(good)
    return result, stats


def run(
    ingest_path: str | Path,
    audit_path: str | Path,
    out: str | Path,
    spec_params: dict | ModelSpec | None,
    cache_dir: str | Path,
    threads: int = 1,
    kept: str | Path | None = None,
) -> None:
    """Scores every audit row, written by the audit manifest's shards. ``kept``: a folder where the
    last scores are kept; a shard whose audit rows and model are those it was scored with is
    copied from them (:class:`manifest.ShardedWriter`). The item ids are the audit's: the group
    stage checks they are exactly the ingest's; here the counts must agree."""
    spec = spec_params if isinstance(spec_params, ModelSpec) else ModelSpec.from_params(spec_params)
    audit = manifest.read(audit_path, schemas.AUDIT, columns=["item_id", "sha256", "decoded"])
    listed = pq.read_metadata(ingest_path).num_rows
    if listed != len(audit):
        raise manifest.ManifestError(
            f"{audit_path}: audit manifest {'lacks' if listed > len(audit) else 'has'} {abs(listed - len(audit))} item(s) "
            f"{'of' if listed > len(audit) else 'more than'} {ingest_path} (stale?)")
    names, bounds = manifest.shard_bounds(audit_path)
    keys = {}
    if kept is not None:
        model, code = spec.digest if spec is not None else None, provenance.code_digest()
        keys = {name: provenance.params_digest(["nsfw", code, model, digest]) for name, digest in manifest.shard_digests(audit_path).items()}
    with manifest.ShardedWriter(out, schemas.NSFW_SCORES, kept=kept and Path(kept) / "nsfw_scores.parquet", order=names) as writer:
        reused = writer.reuse_all(keys)
        paths = _IngestPaths(ingest_path)
        for shard, a, b in manifest.shard_batches(names, bounds, reused):
            rows = audit.iloc[a:b]
            writer.write(shard, _scored(rows, spec, paths, cache_dir, threads), keys=manifest.keys_for(shard, keys))


def _scored(rows: pd.DataFrame, spec: ModelSpec | None, ingest_paths, cache_dir, threads: int) -> pd.DataFrame:
    """``rows`` (audit: item id, content, decoded) with their scores: NaN without a model, or
    where the audit could not decode the item. ``ingest_paths``: item ids -> their files."""
    score = np.full(len(rows), math.nan)
    decoded = rows["decoded"].to_numpy(dtype=bool)
    if spec is not None and decoded.any():
        paths = ingest_paths(rows["item_id"][decoded])
        todo = list(zip(rows["sha256"][decoded], paths))
        scores, _ = compute(todo, spec, ScoreCache(cache_dir, spec.digest), threads=threads)
        score[decoded] = [scores.get(s, math.nan) for s, _ in todo]
    return pd.DataFrame({"item_id": rows["item_id"].astype("str").to_numpy(), "sha256": rows["sha256"].astype("str").to_numpy(),
                         "nsfw_score": score})


class _IngestPaths:
    """Item ids -> the ingest's path of each (the ingest read once, when a model first needs files);
    an id the ingest does not list is named."""

    def __init__(self, ingest_path):
        self.ingest_path, self._ids, self._paths = ingest_path, None, None

    def __call__(self, ids: pd.Series) -> list[str]:
        if self._ids is None:
            listed = manifest.read(self.ingest_path, schemas.INGEST, columns=["item_id", "path"])
            self._ids, self._paths = manifest.arrow_text(listed["item_id"]), manifest.arrow_text(listed["path"])
        at = manifest.positions(ids, self._ids)
        if (at < 0).any():
            raise manifest.ManifestError(f"{self.ingest_path}: no item {ids.to_numpy()[at < 0][0]!r} of the audit manifest (stale?)")
        return self._paths.take(pa.array(at)).to_pylist()  # only the batch's paths become Python text
