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

from .. import features, manifest, nsfw_model, progress, schemas
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
) -> pd.DataFrame:
    items = manifest.read(ingest_path, schemas.INGEST, columns=["item_id", "sha256", "path"])
    decoded = _decoded(items, manifest.read(audit_path, schemas.AUDIT, columns=["item_id", "decoded"]), ingest_path, audit_path)
    spec = spec_params if isinstance(spec_params, ModelSpec) else ModelSpec.from_params(spec_params)

    score = np.full(len(items), math.nan)
    if spec is not None:
        todo = [(s, p) for s, p, ok in zip(items["sha256"], items["path"], decoded) if ok]
        scores, _ = compute(todo, spec, ScoreCache(cache_dir, spec.digest), threads=threads)
        score = np.array([scores.get(s, math.nan) if ok else math.nan for s, ok in zip(items["sha256"], decoded)], dtype=np.float64)

    if not len(items):
        df = manifest.empty(schemas.NSFW_SCORES)
    else:
        df = pd.DataFrame({
            "item_id": items["item_id"].astype("str"),
            "sha256": items["sha256"].astype("str"),
            "nsfw_score": pd.Series(score, index=items.index, dtype="float64"),
        })
    return manifest.write(df, out, schemas.NSFW_SCORES)


def _decoded(items: pd.DataFrame, audited: pd.DataFrame, ingest_path, audit_path) -> np.ndarray:
    """Whether the audit decoded each item (row-aligned); every item must have an audit row."""
    row = manifest.positions(items["item_id"], audited["item_id"])
    missing = items["item_id"].to_numpy(dtype=object)[row < 0]
    if len(missing):
        raise manifest.ManifestError(
            f"{audit_path}: audit manifest lacks {len(missing)} item(s) of {ingest_path} (stale?), e.g. {missing[0]!r}"
        )
    return audited["decoded"].to_numpy(dtype=bool)[row]
