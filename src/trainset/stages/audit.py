"""ingest -> audit manifest: decode every distinct content once (cached) and measure it.

The manifest holds every measure the audit checks judge (``trainset.audit_checks``), so
their thresholds can change without decoding again. Only decode-affecting params
(``max_pixels``, the decompression-bomb limit) go into the feature cache key; threshold
keys and ``actions``, if passed along, are left out of it.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from .. import atomic, audit_checks, features, manifest, schemas, shards
from ..kernels import backend


_INT_COLUMNS = ("width", "height", "exif_orientation", "n_frames", "alpha_min", "bit_depth")
_BOOL_COLUMNS = ("decoded", "animated", "has_alpha")
_FLOAT_COLUMNS = ("luma_mean", "luma_std", "entropy", "laplacian_var", "border_fraction")
# params that only steer the checks after the audit: never part of the feature cache key
_NOT_DECODE_PARAMS = frozenset({*audit_checks.DEFAULT_THRESHOLDS, "actions"})


def run(ingest_path: str | Path, out: str | Path, cache_dir: str | Path, stats_path: str | Path, params: dict, threads: int = 1,
        hashes_out: str | Path | None = None) -> pd.DataFrame:
    """``hashes_out``: also the shard's hashed contents for the pair tiles (``shards.write_hashes``)."""
    items = manifest.read(ingest_path, schemas.INGEST)
    max_pixels = (params or {}).get("max_pixels", features.DEFAULT_MAX_PIXELS)
    max_pixels = None if max_pixels is None else int(max_pixels)
    key_params = {k: v for k, v in (params or {}).items() if k not in _NOT_DECODE_PARAMS}
    key_params["max_pixels"] = max_pixels
    cache = features.FeatureCache(cache_dir, features.feature_key(key_params))
    found, stats = features.compute(list(zip(items["sha256"], items["path"])), cache, threads=threads, max_pixels=max_pixels)
    rows = [{"item_id": i, "sha256": s, **found[s]} for i, s in zip(items["item_id"], items["sha256"])]
    cols = [c for c in schemas.AUDIT.columns if c != "schema_version"]
    df = pd.DataFrame(rows, columns=cols) if rows else manifest.empty(schemas.AUDIT)
    if rows:
        df = manifest.with_version(df)
        for col in _INT_COLUMNS:
            df[col] = df[col].astype("int64")
        for col in _BOOL_COLUMNS:
            df[col] = df[col].astype(bool)
        for col in _FLOAT_COLUMNS:
            df[col] = df[col].astype("float64")  # None (failed decode) -> NaN
    written = manifest.write(df, out, schemas.AUDIT)
    if hashes_out is not None:
        shards.write_hashes(out, hashes_out)
    atomic.write_text(stats_path, json.dumps({**asdict(stats), "backend": backend().name}, indent=2) + "\n")
    return written


def gather(shard_paths: list, stats_paths: list, out: str | Path, stats_out: str | Path, kept: str | Path | None = None) -> None:
    """The audit manifest from the shards' (the workflow runs :func:`run` once per shard), written
    by shard (``shards.gather``): the steps after it read it a shard at a time. ``kept``: where the
    last one is kept (a shard whose file did not change is copied from it)."""
    stats = shards.sum_stats(stats_paths)
    atomic.write_text(stats_out, json.dumps({**dict.fromkeys(asdict(features.FeatureStats()), 0), "backend": backend().name, **stats}, indent=2) + "\n")
    shards.gather(shard_paths, out, schemas.AUDIT, kept)
