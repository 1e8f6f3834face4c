"""Annotation CSVs (``filename,archetype,emotion,harmony_score,notes``) joined to items.

``filename`` matches an item's path relative to its source when it holds a folder part,
otherwise its file name. A bad score fails naming the file and line.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
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
    """Add the annotation columns to ``items`` (by rel_path, then by file name; a later row for
    the same filename wins)."""
    out = items.copy(deep=False)  # new columns only: the caller's frame is left alone
    row = _matching_rows(out, notes)
    matched = row >= 0
    take = np.where(matched, row, 0)

    def column(name: str, missing):
        values = notes[name].to_numpy(dtype=object) if len(notes) else np.array([missing], dtype=object)
        return np.where(matched, values[take], missing)

    out["archetype"] = pd.Series(column("archetype", None), index=out.index, dtype="str")
    out["emotion"] = pd.Series(column("emotion", None), index=out.index, dtype="str")
    out["harmony_score"] = pd.Series(column("harmony_score", math.nan), index=out.index, dtype="float64")
    out["annotation_notes"] = pd.Series(column("annotation_notes", None), index=out.index, dtype="str")
    return out


def _matching_rows(items: pd.DataFrame, notes: pd.DataFrame) -> np.ndarray:
    """Per item, the notes row it takes (-1: none): a filename with a folder part matches
    rel_path, one without matches the file name."""
    found = np.full(len(items), -1, dtype=np.int64)
    if not len(notes):
        return found
    filenames = notes["filename"].astype(object)
    last = ~filenames.duplicated(keep="last").to_numpy(dtype=bool)
    with_folder = np.array(["/" in name for name in filenames], dtype=bool)
    for rows, keys in ((last & with_folder, items["rel_path"]), (last & ~with_folder, items["original_name"])):
        candidates = np.flatnonzero(rows)
        hit = pd.Index(filenames.to_numpy()[candidates]).get_indexer(keys.astype(object))
        fill = (found < 0) & (hit >= 0)
        found[fill] = candidates[hit[fill]]
    return found
