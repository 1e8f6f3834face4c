"""audit -> filtered: drop what cannot be trained on (undecodable, too small), with reasons."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .. import ledger, manifest, schemas


def run(ingest_path: str | Path, audit_path: str | Path, out: str | Path, rejected_out: str | Path, min_side: int) -> pd.DataFrame:
    items = manifest.read(ingest_path, schemas.INGEST)
    audit = manifest.read(audit_path, schemas.AUDIT)
    image_cols = list(schemas.IMAGE_COLUMNS)
    merged = items.merge(audit[["item_id", "decoded", "reason", "detail", *image_cols]], on="item_id", how="left", validate="one_to_one")
    if merged["decoded"].isna().any():
        missing = merged.loc[merged["decoded"].isna(), "item_id"].tolist()[:5]
        raise ValueError(f"{audit_path}: no audit row for {', '.join(missing)}")
    broken = ~merged["decoded"].astype(bool)
    short_side = merged[["width", "height"]].min(axis=1)
    small = ~broken & (short_side < min_side)
    rejected = pd.concat(
        [
            ledger.reject(merged[broken], "filter", "decode", merged.loc[broken, "reason"], merged.loc[broken, "detail"]),
            ledger.reject(
                merged[small], "filter", "min_side", "too_small",
                merged[small].apply(lambda r: f"{r.width}x{r.height} px: short side {min(r.width, r.height)} < {min_side}", axis=1)
                if small.any() else "",
            ),
        ]
    )
    manifest.write(rejected, rejected_out, schemas.REJECTED)
    kept = merged[~broken & ~small]
    return manifest.write(kept[list(schemas.FILTERED.columns)], out, schemas.FILTERED)
