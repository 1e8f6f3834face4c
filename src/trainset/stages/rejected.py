"""Per-stage rejections -> the one rejected manifest."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .. import manifest, schemas


def run(parts: list[str | Path], out: str | Path) -> pd.DataFrame:
    frames = [manifest.read(p, schemas.REJECTED) for p in parts]
    merged = pd.concat(frames, ignore_index=True) if frames else manifest.empty(schemas.REJECTED)
    dupes = merged["item_id"][merged["item_id"].duplicated()].tolist()
    if dupes:
        raise ValueError(f"items rejected by more than one stage: {', '.join(dupes[:10])}")
    return manifest.write(merged, out, schemas.REJECTED)
