"""Reading and writing Parquet manifests: validated on both sides of every stage boundary.

A bad row fails loudly with the file, the row number, the item id and the column.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pandera.pandas as pa

from . import atomic, schemas
from .schemas import SCHEMA_VERSION


class ManifestError(ValueError):
    """A manifest does not match its schema."""


def _describe(df: pd.DataFrame, path: str | Path, schema: pa.DataFrameSchema, err: Exception) -> str:
    lines = [f"{path}: {schema.name} manifest failed validation"]
    cases = getattr(err, "failure_cases", None)
    if cases is None or not len(cases):
        return f"{lines[0]}: {err}"
    for _, case in cases.head(20).iterrows():
        column = case.get("column")
        index = case.get("index")
        where = ""
        if index is not None and not pd.isna(index):
            row = int(index)
            where = f"row {row}"
            if "item_id" in df.columns and 0 <= row < len(df):
                where += f" (item_id {df['item_id'].iloc[row]!r})"
        col = f"column {column!r}" if column is not None and not pd.isna(column) else "table"
        lines.append(f"  {where or 'whole column'}, {col}: {case.get('check')} failed for {case.get('failure_case')!r}")
    if len(cases) > 20:
        lines.append(f"  ... and {len(cases) - 20} more")
    return "\n".join(lines)


def validate(df: pd.DataFrame, schema: pa.DataFrameSchema, path: str | Path) -> pd.DataFrame:
    """Validate ``df`` (rows renumbered from 0 so errors name the row in the file)."""
    df = df.reset_index(drop=True)
    try:
        return schema.validate(df, lazy=True)
    except (pa.errors.SchemaErrors, pa.errors.SchemaError) as err:
        raise ManifestError(_describe(df, path, schema, err)) from None


def write(df: pd.DataFrame, path: str | Path, schema: pa.DataFrameSchema, sort_by: str | list[str] | None = "item_id") -> pd.DataFrame:
    """Validate and write atomically; rows are sorted so identical content gives identical bytes."""
    missing = [c for c in schema.columns if c not in df.columns]
    if missing:
        raise ManifestError(f"{path}: {schema.name} manifest failed validation: missing column(s) {', '.join(missing)}")
    # no rows: the schema's own dtypes (an empty frame built from records has none to check)
    df = _normalize_text(df[list(schema.columns)], schema) if len(df) else empty(schema)
    if sort_by is not None and len(df):
        df = df.sort_values(sort_by, kind="stable")
    df = validate(df, schema, path)
    with atomic.atomic_file(path) as tmp:
        df.to_parquet(tmp, index=False)
    return df


def _is_text(col: pa.Column) -> bool:
    return str(col.dtype).startswith(("str", "string"))


def _normalize_text(df: pd.DataFrame, schema: pa.DataFrameSchema) -> pd.DataFrame:
    """Text columns as pandas' string dtype, so an all-missing column still types as text."""
    df = df.copy()
    for name, col in schema.columns.items():
        values = df[name]
        if _is_text(col) and values.dtype == object:
            if all(isinstance(v, str) for v in values.dropna()):
                df[name] = values.astype("str")
    return df


def read(path: str | Path, schema: pa.DataFrameSchema) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"{path}: {schema.name} manifest is missing")
    df = pd.read_parquet(path)
    for col, value in schemas.ADDED_LATER.get(schema.name, {}).items():
        if col not in df.columns:
            df.insert(len(df.columns) - ("schema_version" in df.columns), col, value)
    for col in ("tags", "artists", "flags", "triggered_tags"):
        if col in df.columns:
            df[col] = df[col].map(list)
    return validate(df, schema, path)


def read_many(paths: dict, schemas_by_key: dict[str, pa.DataFrameSchema]) -> dict[str, pd.DataFrame]:
    """``paths[key]`` read against ``schemas_by_key[key]``, for every key of the latter."""
    return {key: read(paths[key], schema) for key, schema in schemas_by_key.items()}


def empty(schema: pa.DataFrameSchema) -> pd.DataFrame:
    """A zero-row frame with the schema's columns and dtypes."""
    data = {}
    for name, col in schema.columns.items():
        data[name] = pd.Series([], dtype="str" if _is_text(col) else str(col.dtype))
    return pd.DataFrame(data)


def with_version(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    df["schema_version"] = pd.Series([SCHEMA_VERSION] * len(df), dtype="int64", index=df.index)
    return df
