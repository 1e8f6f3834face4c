"""Annotation CSVs (``filename,archetype,emotion,harmony_score,notes``) joined to items.

``filename`` matches an item's path relative to its source when it holds a folder part,
otherwise its file name. A bad score fails naming the file and line.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pandas as pd

COLUMNS = ("archetype", "emotion", "harmony_score", "annotation_notes")
REQUIRED = ("filename",)


class AnnotationError(ValueError):
    pass


def load(paths: list[str | Path] | str | None) -> pd.DataFrame:
    """All annotation rows: filename, archetype, emotion, harmony_score, annotation_notes."""
    if not paths:
        return pd.DataFrame(columns=["filename", *COLUMNS])
    if isinstance(paths, (str, Path)):
        paths = [paths]
    rows = []
    for path in map(Path, paths):
        if not path.is_file():
            raise AnnotationError(f"{path}: annotation file not found")
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
            if missing:
                raise AnnotationError(f"{path}: missing column(s) {', '.join(missing)}")
            for line, row in enumerate(reader, start=2):
                score = (row.get("harmony_score") or "").strip()
                try:
                    value = float(score) if score else math.nan
                except ValueError:
                    raise AnnotationError(f"{path}: line {line}: harmony_score {score!r} is not a number") from None
                rows.append({
                    "filename": (row.get("filename") or "").strip(),
                    "archetype": (row.get("archetype") or "").strip() or None,
                    "emotion": (row.get("emotion") or "").strip() or None,
                    "harmony_score": value,
                    "annotation_notes": (row.get("notes") or "").strip() or None,
                })
    return pd.DataFrame(rows, columns=["filename", *COLUMNS])


def join(items: pd.DataFrame, notes: pd.DataFrame) -> pd.DataFrame:
    """Add the annotation columns to ``items`` (by rel_path, then by file name)."""
    out = items.copy()
    by_path = {r.filename: r for r in notes.itertuples() if "/" in r.filename}
    by_name = {r.filename: r for r in notes.itertuples() if "/" not in r.filename}
    matched = [by_path.get(rel) or by_name.get(name) for rel, name in zip(out["rel_path"], out["original_name"])]
    out["archetype"] = pd.Series([m.archetype if m else None for m in matched], index=out.index, dtype="str")
    out["emotion"] = pd.Series([m.emotion if m else None for m in matched], index=out.index, dtype="str")
    out["harmony_score"] = pd.Series([m.harmony_score if m else math.nan for m in matched], index=out.index, dtype="float64")
    out["annotation_notes"] = pd.Series([m.annotation_notes if m else None for m in matched], index=out.index, dtype="str")
    return out
