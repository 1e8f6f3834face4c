"""Balance against targets: achieved counts per cell (e.g. archetype x emotion) vs min / target / ideal.

params.yaml::

    balance:
      columns: [archetype, emotion]
      default: {min: 5, target: 20, ideal: 50}
      cells:
        - {archetype: hero, emotion: joy, min: 10, target: 30, ideal: 60}
"""

from __future__ import annotations

import pandas as pd

STATUS = ("under_min", "below_target", "on_target", "at_ideal")


def table(kept: pd.DataFrame, params: dict | None) -> pd.DataFrame:
    """One row per cell: the columns' values, count, min, target, ideal, status."""
    params = params or {}
    columns = list(params.get("columns") or [])
    out_cols = [*columns, "count", "min", "target", "ideal", "status"]
    if not columns:
        return pd.DataFrame(columns=out_cols)
    missing = [c for c in columns if c not in kept.columns]
    if missing:
        raise ValueError(f"params.yaml: balance.columns names unknown column(s) {', '.join(missing)}")
    default = {"min": 0, "target": 0, "ideal": 0, **(params.get("default") or {})}
    targets: dict[tuple, dict] = {}
    for cell in params.get("cells") or []:
        key = tuple(str(cell.get(c)) for c in columns)
        targets[key] = {k: cell.get(k, default[k]) for k in ("min", "target", "ideal")}
    known = kept.dropna(subset=columns)
    counts = known.groupby(columns).size() if len(known) else pd.Series(dtype="int64")
    achieved = {tuple(str(v) for v in (k if isinstance(k, tuple) else (k,))): int(n) for k, n in counts.items()}
    rows = []
    for key in sorted(set(targets) | set(achieved)):
        goal = targets.get(key, default)
        n = achieved.get(key, 0)
        status = (
            "under_min" if n < goal["min"] else "below_target" if n < goal["target"]
            else "on_target" if n < goal["ideal"] or not goal["ideal"] else "at_ideal"
        )
        rows.append([*key, n, goal["min"], goal["target"], goal["ideal"], status])
    return pd.DataFrame(rows, columns=out_cols)
