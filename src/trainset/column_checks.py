"""pandera's built-in column checks decided over Arrow and NumPy buffers, for valid columns.

Validating a manifest runs every column check at every stage boundary; pandera's own checks cost
about a millisecond each before any work and a regex per value for hex digests. Here a check that
certainly passes is answered from whole buffers at once; anything else (a failure, a check or
dtype not covered) goes to pandera, whose report names every failing row.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow
import pyarrow.compute as pc

HEX_PATTERNS = {r"^[0-9a-f]{64}$": 64, r"^[0-9a-f]{16}$": 16}
_LOWER_HEX = b"0123456789abcdef"


def _arrow_text(values: pd.Series) -> pyarrow.ChunkedArray | None:
    """The Arrow array behind a text column (pandas' ``str`` held by pyarrow), or None."""
    held = getattr(values.array, "_pa_array", None)
    if held is None or not (pyarrow.types.is_string(held.type) or pyarrow.types.is_large_string(held.type)):
        return None
    return held


def all_lower_hex(text: pyarrow.Array | pyarrow.ChunkedArray, width: int) -> bool:
    """Every non-missing value exactly ``width`` lowercase hex digits: lengths, then the text
    buffers' bytes in one ``translate`` (a regex per value costs a hundred times more)."""
    present = text.drop_null() if text.null_count else text
    if not len(present):
        return True
    lengths = pc.min_max(pc.binary_length(present)).as_py()
    if lengths["min"] != width or lengths["max"] != width:
        return False
    for chunk in present.chunks if isinstance(present, pyarrow.ChunkedArray) else [present]:
        if not len(chunk):
            continue
        size = np.int64 if pyarrow.types.is_large_string(chunk.type) else np.int32
        offsets = np.frombuffer(chunk.buffers()[1], dtype=size)[chunk.offset: chunk.offset + len(chunk) + 1]
        if bytes(memoryview(chunk.buffers()[2])[offsets[0]:offsets[-1]]).translate(None, _LOWER_HEX):
            return False
    return True


def _numbers(values: pd.Series) -> np.ndarray | None:
    """The non-missing values of a plain NumPy integer or float column, or None for other dtypes."""
    if not isinstance(values.dtype, np.dtype) or values.dtype.kind not in "iuf":
        return None
    out = values.to_numpy()
    return out[~np.isnan(out)] if out.dtype.kind == "f" else out


def certainly_passes(check, values: pd.Series) -> bool:
    """True when ``check`` (a pandera built-in) certainly passes on ``values``, decided over
    Arrow or NumPy buffers; False means only "not shown here": pandera decides. Each built-in
    skips missing values (``ignore_na``), as here."""
    if not check.ignore_na or check.groupby is not None or check.element_wise:
        return False
    stats = check.statistics or {}
    if check.name == "str_matches":
        width = HEX_PATTERNS.get(stats.get("pattern"))
        text = _arrow_text(values) if width else None
        return text is not None and all_lower_hex(text, width)
    if check.name == "isin":
        text = _arrow_text(values)
        allowed = list(stats.get("allowed_values") or [])
        if text is not None and all(isinstance(v, str) for v in allowed):
            present = text.drop_null() if text.null_count else text
            return not len(present) or pc.all(pc.is_in(present, value_set=pyarrow.array(allowed, pyarrow.string()))).as_py() is True
        numbers = _numbers(values)
        if numbers is not None and allowed and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in allowed):
            return bool(np.isin(numbers, allowed).all())
        return False
    numbers = _numbers(values)
    if numbers is None:
        return False
    if not len(numbers):
        return True
    low, high = numbers.min(), numbers.max()
    if check.name == "greater_than_or_equal_to":
        return bool(low >= stats["min_value"])
    if check.name == "greater_than":
        return bool(low > stats["min_value"])
    if check.name == "less_than_or_equal_to":
        return bool(high <= stats["max_value"])
    if check.name == "less_than":
        return bool(high < stats["max_value"])
    if check.name == "equal_to":
        return bool(low == stats["value"] and high == stats["value"])
    if check.name == "in_range":
        above = low >= stats["min_value"] if stats.get("include_min", True) else low > stats["min_value"]
        below = high <= stats["max_value"] if stats.get("include_max", True) else high < stats["max_value"]
        return bool(above and below)
    return False
