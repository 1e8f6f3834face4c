"""The distributions a curator looks at, as small tables: the HTML report draws them and DVC
keeps them as plots data (``data/report/plots/*.csv``), so ``dvc plots diff`` compares versions.

Each function takes manifests and returns a DataFrame whose first column is the category.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from . import atomic, balance

# plots file name -> (x: the bar length column, y: the category column, template) as dvc.yaml declares them
PLOTS = {
    "short_side": ("kept", "bin", "bar_horizontal"),
    "aspect_ratio": ("kept", "bin", "bar_horizontal"),
    "tags_top": ("items", "tag", "bar_horizontal_sorted"),
    "tags_per_item": ("kept", "bin", "bar_horizontal"),
    "caption_tokens": ("kept", "bin", "bar_horizontal"),
    "rejected_by_reason": ("items", "reason", "bar_horizontal_sorted"),
    "balance": ("count", "cell", "bar_horizontal"),
    "conversation_stages": ("achieved_share", "stage", "bar_horizontal"),
}

SHORT_SIDE_EDGES = (0, 256, 512, 768, 1024, 1536, 2048, math.inf)
# width / height; the square bin is 0.95-1.05 (Kohya's buckets step by 64 px, about 5% at 1024)
ASPECT_EDGES = (0.0, 0.5, 0.67, 0.8, 0.95, 1.05, 1.25, 1.5, 2.0, math.inf)
TAG_COUNT_EDGES = (0, 1, 2, 5, 10, 20, 40, math.inf)


def _labels(edges: tuple, fmt=lambda v: f"{v:g}") -> list[str]:
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        out.append(f"{fmt(lo)}+" if math.isinf(hi) else f"{fmt(lo)}-{fmt(hi)}")
    return out


def _int_labels(edges: tuple) -> list[str]:
    """Integer bins [lo, hi): "3", "5-9", "40+"."""
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        out.append(f"{lo}+" if math.isinf(hi) else str(lo) if hi - lo == 1 else f"{lo}-{int(hi) - 1}")
    return out


def _histogram(values, edges: tuple) -> list[int]:
    v = np.asarray(list(values), dtype=np.float64)
    v = v[~np.isnan(v)]
    idx = np.searchsorted(np.asarray(edges[1:-1], dtype=np.float64), v, side="right")
    return np.bincount(idx, minlength=len(edges) - 1).astype(int).tolist()


def _binned(columns: dict[str, list], edges: tuple, labels: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"bin": labels, **{name: _histogram(values, edges) for name, values in columns.items()}})


def short_side(audit: pd.DataFrame, kept: pd.DataFrame) -> pd.DataFrame:
    """Items per shorter-side bin (px): every decoded raw item, and the kept ones."""
    decoded = audit[audit["decoded"]]
    return _binned({"audited": np.minimum(decoded["width"], decoded["height"]), "kept": np.minimum(kept["width"], kept["height"])},
                   SHORT_SIDE_EDGES, _int_labels(SHORT_SIDE_EDGES))


def aspect_ratio(audit: pd.DataFrame, kept: pd.DataFrame) -> pd.DataFrame:
    """Items per width/height bin: every decoded raw item, and the kept ones."""
    decoded = audit[audit["decoded"] & (audit["height"] > 0)]
    ratio = lambda df: (df["width"] / df["height"]).astype("float64")  # noqa: E731
    return _binned({"audited": ratio(decoded), "kept": ratio(kept[kept["height"] > 0])}, ASPECT_EDGES, _labels(ASPECT_EDGES, lambda v: f"{v:.2f}"))


def tags_top(kept: pd.DataFrame, n: int) -> pd.DataFrame:
    """The ``n`` tags on the most kept items (ties by name)."""
    counts = pd.Series([t for tags in kept["tags"] for t in set(tags)], dtype="str").value_counts()
    table = pd.DataFrame({"tag": counts.index.astype(str), "items": counts.values.astype(int)})
    return table.sort_values(["items", "tag"], ascending=[False, True], kind="mergesort").head(n).reset_index(drop=True)


def tags_per_item(kept: pd.DataFrame) -> pd.DataFrame:
    return _binned({"kept": kept["tags"].map(len)}, TAG_COUNT_EDGES, _int_labels(TAG_COUNT_EDGES))


def caption_edges(max_tokens: int) -> tuple:
    """Bins of 15 CLIP tokens up to the window, then everything over it."""
    return (*range(0, max_tokens, 15), max_tokens + 1, math.inf)


def caption_tokens(kept: pd.DataFrame, max_tokens: int) -> pd.DataFrame:
    edges = caption_edges(max_tokens)
    labels = _int_labels(edges)
    labels[-1] = f"over {max_tokens}"
    return _binned({"kept": kept["caption_tokens"]}, edges, labels)


def rejected_by_reason(rejected: pd.DataFrame) -> pd.DataFrame:
    counts = rejected.groupby(["stage", "reason"]).size().reset_index(name="items")
    counts["reason"] = counts["stage"] + ": " + counts["reason"]
    return counts[["reason", "items"]].sort_values(["items", "reason"], ascending=[False, True], kind="mergesort").reset_index(drop=True)


def balance_cells(kept: pd.DataFrame, params: dict | None) -> pd.DataFrame:
    """balance.table with one label per cell (its values joined by " / ")."""
    cells = balance.table(kept, params)
    columns = list((params or {}).get("columns") or [])
    label = cells[columns].astype(str).agg(" / ".join, axis=1) if len(cells) else pd.Series([], dtype="str")
    return pd.concat([pd.DataFrame({"cell": label.astype(str)}), cells[["count", "min", "target", "ideal", "status"]]], axis=1)


def conversation_stages(stages: pd.DataFrame) -> pd.DataFrame:
    out = stages[["stage", "target_share", "achieved_share", "target_count", "selected", "shortfall"]].copy()
    out["target_share"] = out["target_share"].astype(float).round(6)
    out["achieved_share"] = out["achieved_share"].astype(float).round(6)
    return out.reset_index(drop=True)


def write(tables: dict[str, pd.DataFrame], out_dir: str | Path) -> list[Path]:
    """One CSV per table, named as in PLOTS, each written atomically."""
    unknown = set(tables) - set(PLOTS)
    if unknown:
        raise ValueError(f"no plot declared for {', '.join(sorted(unknown))}")
    paths = []
    for name in PLOTS:
        path = Path(out_dir) / f"{name}.csv"
        atomic.write_text(path, tables[name].to_csv(index=False, lineterminator="\n"))
        paths.append(path)
    return paths
