"""The whole-column fast path agrees with pandera's built-in checks: it answers "passes" only where
pandera passes, and does answer it for the columns manifests hold."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pytest

from trainset import column_checks, manifest, schemas

HEX64 = r"^[0-9a-f]{64}$"
HEX16 = r"^[0-9a-f]{16}$"
RNG = np.random.default_rng(7)


def _hex(n: int, width: int) -> list[str]:
    return ["".join(RNG.choice(list("0123456789abcdef"), width)) for _ in range(n)]


def _pandera_passes(check: pa.Check, values: pd.Series) -> bool:
    result = check(values).check_passed
    return bool(np.all(result))


CASES = [
    # (check, values, passes)
    (pa.Check.str_matches(HEX64), pd.Series(_hex(50, 64), dtype="str"), True),
    (pa.Check.str_matches(HEX64), pd.Series([*_hex(5, 64), None], dtype="str"), True),
    (pa.Check.str_matches(HEX64), pd.Series([None, None], dtype="str"), True),
    (pa.Check.str_matches(HEX64), pd.Series([*_hex(5, 64), "A" * 64], dtype="str"), False),
    (pa.Check.str_matches(HEX64), pd.Series([*_hex(5, 64), "0" * 63], dtype="str"), False),
    (pa.Check.str_matches(HEX64), pd.Series([*_hex(5, 64), "g" * 64], dtype="str"), False),
    (pa.Check.str_matches(HEX16), pd.Series(_hex(40, 16), dtype="str"), True),
    (pa.Check.str_matches(HEX16), pd.Series([*_hex(4, 16), "0123456789abcdeF"], dtype="str"), False),
    (pa.Check.str_matches(HEX16), pd.Series([*_hex(4, 16), "é" * 8], dtype="str"), False),  # 16 bytes, 8 characters
    (pa.Check.isin(["safe", "explicit"]), pd.Series(["safe", "explicit", None], dtype="str"), True),
    (pa.Check.isin(["safe", "explicit"]), pd.Series(["safe", "Safe"], dtype="str"), False),
    (pa.Check.isin(["safe"]), pd.Series([], dtype="str"), True),
    (pa.Check.isin([0, 1, 8]), pd.Series([0, 8, 8, 1], dtype="int64"), True),
    (pa.Check.isin([0, 1, 8]), pd.Series([0, 2], dtype="int64"), False),
    (pa.Check.ge(0), pd.Series([0, 5, 9], dtype="int64"), True),
    (pa.Check.ge(0), pd.Series([0, -1], dtype="int64"), False),
    (pa.Check.ge(0), pd.Series([0.0, np.nan, 3.5]), True),
    (pa.Check.ge(0), pd.Series([np.nan, -0.5]), False),
    (pa.Check.gt(0), pd.Series([0.1, 2.0]), True),
    (pa.Check.gt(0), pd.Series([0.0, 2.0]), False),
    (pa.Check.le(3), pd.Series([1, 3], dtype="int64"), True),
    (pa.Check.le(3), pd.Series([1, 4], dtype="int64"), False),
    (pa.Check.lt(3), pd.Series([1, 3], dtype="int64"), False),
    (pa.Check.in_range(0, 8), pd.Series([0.0, 8.0, np.nan]), True),
    (pa.Check.in_range(0, 8), pd.Series([0.0, 8.01]), False),
    (pa.Check.in_range(0, 8, include_max=False), pd.Series([0.0, 8.0]), False),
    (pa.Check.in_range(1, 8), pd.Series([1, 8], dtype="int64"), True),
    (pa.Check.eq(1), pd.Series([1, 1], dtype="int64"), True),
    (pa.Check.eq(1), pd.Series([1, 2], dtype="int64"), False),
    (pa.Check.ge(0), pd.Series([], dtype="float64"), True),
]


@pytest.mark.parametrize("check, values, passes", CASES)
def test_fast_answer_agrees_with_pandera(check: pa.Check, values: pd.Series, passes: bool) -> None:
    assert _pandera_passes(check, values) is passes
    assert column_checks.certainly_passes(check, values) is passes


@pytest.mark.parametrize("check, values", [
    (pa.Check.str_matches(r"^[a-z]+$"), pd.Series(["abc"], dtype="str")),      # a pattern it does not know
    (pa.Check.str_matches(HEX64), pd.Series(_hex(2, 64), dtype=object)),      # text not held by Arrow
    (pa.Check.ge(0), pd.Series([True, False])),                               # a dtype it does not cover
    (pa.Check.isin(["a", 1]), pd.Series(["a"], dtype="str")),                # allowed values of mixed kinds
    (pa.Check(lambda s: s > 0), pd.Series([1, 2], dtype="int64")),           # not a built-in
])
def test_what_it_does_not_cover_goes_to_pandera(check: pa.Check, values: pd.Series) -> None:
    assert column_checks.certainly_passes(check, values) is False
    assert _pandera_passes(check, values)


def test_a_bad_digest_still_fails_validation_naming_row_and_column(tmp_path) -> None:
    from stage_helpers import item_row

    rows = [item_row(f"src:{k}.png") for k in range(4)]
    frame = pd.DataFrame(rows)[list(schemas.DEDUPED.columns)]
    frame["tags"] = [list(t) for t in frame["tags"]]
    good = manifest.validate(frame.copy(), schemas.DEDUPED, tmp_path / "m.parquet")
    assert len(good) == 4
    frame.loc[2, "sha256"] = frame.loc[2, "sha256"].upper()
    with pytest.raises(manifest.ManifestError, match=r"row 2 \(item_id 'src:2.png'\), column 'sha256'"):
        manifest.validate(frame, schemas.DEDUPED, tmp_path / "m.parquet")
