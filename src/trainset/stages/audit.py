"""ingest -> audit manifest: decode every distinct content once (cached) and measure it."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from .. import atomic, features, manifest, schemas
from ..kernels import backend


def run(ingest_path: str | Path, out: str | Path, cache_dir: str | Path, stats_path: str | Path, params: dict, threads: int = 1) -> pd.DataFrame:
    items = manifest.read(ingest_path, schemas.INGEST)
    cache = features.FeatureCache(cache_dir, features.feature_key(params))
    found, stats = features.compute(list(zip(items["sha256"], items["path"])), cache, threads=threads)
    rows = [{"item_id": i, "sha256": s, **found[s]} for i, s in zip(items["item_id"], items["sha256"])]
    cols = [c for c in schemas.AUDIT.columns if c != "schema_version"]
    df = pd.DataFrame(rows, columns=cols) if rows else manifest.empty(schemas.AUDIT)
    if rows:
        df = manifest.with_version(df)
        for col in ("width", "height", "exif_orientation"):
            df[col] = df[col].astype("int64")
        df["decoded"] = df["decoded"].astype(bool)
    written = manifest.write(df, out, schemas.AUDIT)
    atomic.write_text(stats_path, json.dumps({**asdict(stats), "backend": backend().name}, indent=2) + "\n")
    return written
