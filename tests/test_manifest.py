"""trainset.manifest, trainset.schemas and trainset.atomic: validated, atomic Parquet manifests."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow
import pyarrow.compute as pc
import pytest

from trainset import atomic, manifest, schemas
from trainset.manifest import ManifestError

ALL_SCHEMAS = {name: obj for name, obj in vars(schemas).items() if isinstance(obj, pa.DataFrameSchema)}


def _row(i: int, **over) -> dict:
    row = {
        "item_id": f"src:dir/{i:03d}.png",
        "sha256": f"{i:064x}",
        "source": "src",
        "rel_path": f"dir/{i:03d}.png",
        "path": f"data/raw/src/dir/{i:03d}.png",
        "size": 100 + i,
        "license": "CC0-1.0",
        "original_name": f"{i:03d}.png",
        "tags": ["1girl", f"tag_{i}"],
        "rating": "general",
        "generated": False,
        "weight": 1.0,
        "repeats": 1,
        "subset": "src",
        "sidecar": None,
        "sidecar_error": None,
        **{k: (list(v) if isinstance(v, list) else v) for k, v in schemas.INGEST_DEFAULTS.items()},
    }
    row.update(over)
    return row


def _frame(*rows: dict) -> pd.DataFrame:
    return manifest.with_version(pd.DataFrame(list(rows)))


def _valid(n: int = 4) -> pd.DataFrame:
    rows = [_row(i) for i in range(n)]
    if n > 1:
        rows[1].update(tags=[], sidecar="001.txt")
    if n > 2:
        rows[2].update(rating="explicit", generated=True, weight=2.5, repeats=3, subset="style",
                       sidecar="002.json", sidecar_error="002.json: bad")
    return _frame(*rows)


def _leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


# --- round trip -------------------------------------------------------------------------


def test_round_trip(tmp_path):
    path = tmp_path / "ingest.parquet"
    df = _valid()
    written = manifest.write(df.iloc[::-1], path, schemas.INGEST)  # reversed in, sorted out
    assert path.is_file()
    assert list(written["item_id"]) == sorted(df["item_id"])
    back = manifest.read(path, schemas.INGEST)
    pd.testing.assert_frame_equal(back, written)
    assert list(back.columns) == list(schemas.INGEST.columns)
    assert all(isinstance(t, list) for t in back["tags"])
    row2 = back.set_index("item_id").loc["src:dir/002.png"]
    assert row2["tags"] == ["1girl", "tag_2"]
    assert row2["rating"] == "explicit" and bool(row2["generated"]) is True
    assert row2["weight"] == 2.5 and row2["repeats"] == 3 and row2["subset"] == "style"
    row1 = back.set_index("item_id").loc["src:dir/001.png"]
    assert row1["tags"] == [] and row1["sidecar"] == "001.txt"
    assert pd.isna(back.set_index("item_id").loc["src:dir/000.png", "sidecar"])
    assert (back["schema_version"] == schemas.SCHEMA_VERSION).all()
    assert back["size"].dtype == "int64" and back["weight"].dtype == "float64"


def test_write_is_deterministic(tmp_path):
    df = _valid()
    manifest.write(df, tmp_path / "a.parquet", schemas.INGEST)
    manifest.write(df.sample(frac=1, random_state=3), tmp_path / "b.parquet", schemas.INGEST)
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()


def test_write_drops_columns_outside_the_schema_and_orders_them(tmp_path):
    df = _valid()
    df["scratch"] = 1
    df = df[list(reversed(df.columns))]
    written = manifest.write(df, tmp_path / "m.parquet", schemas.INGEST)
    assert list(written.columns) == list(schemas.INGEST.columns)
    assert "scratch" not in manifest.read(tmp_path / "m.parquet", schemas.INGEST).columns


def test_write_empty_frame(tmp_path):
    path = tmp_path / "empty.parquet"
    manifest.write(manifest.empty(schemas.INGEST), path, schemas.INGEST)
    back = manifest.read(path, schemas.INGEST)
    assert len(back) == 0
    assert list(back.columns) == list(schemas.INGEST.columns)


def test_write_creates_parent_folders(tmp_path):
    path = tmp_path / "deep" / "er" / "m.parquet"
    manifest.write(_valid(), path, schemas.INGEST)
    assert path.is_file()


def test_with_version_keeps_index_and_input():
    df = pd.DataFrame({"x": [1, 2]}, index=[10, 20])
    out = manifest.with_version(df)
    assert list(out.index) == [10, 20]
    assert list(out["schema_version"]) == [schemas.SCHEMA_VERSION] * 2
    assert out["schema_version"].dtype == "int64"
    assert "schema_version" not in df.columns


# --- bad rows ---------------------------------------------------------------------------


def _error(tmp_path, df, schema=schemas.INGEST) -> str:
    path = tmp_path / "bad.parquet"
    with pytest.raises(ManifestError) as info:
        manifest.write(df, path, schema)
    assert not path.exists()
    msg = str(info.value)
    assert msg.startswith(f"{path}: {schema.name} manifest failed validation")
    return msg


def test_bad_sha256_names_file_row_item_and_column(tmp_path):
    df = _frame(_row(0), _row(1), _row(2, sha256="not-a-hash"), _row(3))
    msg = _error(tmp_path, df)
    assert str(tmp_path / "bad.parquet") in msg
    assert "row 2" in msg
    assert "'src:dir/002.png'" in msg
    assert "column 'sha256'" in msg
    assert "'not-a-hash'" in msg


def test_uppercase_sha256_is_rejected(tmp_path):
    df = _frame(_row(0), _row(1, sha256="A" * 64))
    msg = _error(tmp_path, df)
    assert "row 1 (item_id 'src:dir/001.png'), column 'sha256'" in msg


def test_row_number_is_the_row_in_the_written_file(tmp_path):
    # Rows are sorted by item_id before validation, so the number is the file's row.
    df = _frame(_row(5), _row(9, rating="r18"), _row(1))
    msg = _error(tmp_path, df)
    assert "row 2 (item_id 'src:dir/009.png'), column 'rating'" in msg


def test_rating_outside_enum(tmp_path):
    df = _frame(_row(0), _row(1), _row(2, rating="safe"))
    msg = _error(tmp_path, df)
    assert "row 2 (item_id 'src:dir/002.png'), column 'rating'" in msg
    assert "'safe'" in msg


def test_negative_size(tmp_path):
    df = _frame(_row(0), _row(1, size=-5))
    msg = _error(tmp_path, df)
    assert "row 1 (item_id 'src:dir/001.png'), column 'size'" in msg
    assert "-5" in msg


@pytest.mark.parametrize(
    ("column", "value"),
    [("weight", 0.0), ("weight", -1.0), ("repeats", 0)],
)
def test_bad_weight_and_repeats(tmp_path, column, value):
    df = _frame(_row(0), _row(1, **{column: value}))
    msg = _error(tmp_path, df)
    assert f"row 1 (item_id 'src:dir/001.png'), column '{column}'" in msg


@pytest.mark.parametrize("tags", [["ok", ""], "a, b", [1, 2]])
def test_bad_tags(tmp_path, tags):
    df = _frame(_row(0, tags=tags), _row(1))
    msg = _error(tmp_path, df)
    assert "row 0 (item_id 'src:dir/000.png'), column 'tags'" in msg
    assert "tags must be a list of non-empty strings" in msg


def test_duplicate_item_id(tmp_path):
    df = _frame(_row(0), _row(1, item_id="src:dir/000.png"))
    msg = _error(tmp_path, df)
    assert "column 'item_id'" in msg
    assert "'src:dir/000.png'" in msg


def test_null_in_non_nullable_column(tmp_path):
    df = _frame(_row(0), _row(1, license=None))
    msg = _error(tmp_path, df)
    assert "column 'license'" in msg


def test_wrong_schema_version(tmp_path):
    df = _frame(_row(0), _row(1))
    df["schema_version"] = schemas.SCHEMA_VERSION + 1
    msg = _error(tmp_path, df)
    assert "column 'schema_version'" in msg


def test_several_failures_all_reported(tmp_path):
    df = _frame(_row(0, size=-1), _row(1, rating="nope"), _row(2, sha256="x"))
    msg = _error(tmp_path, df)
    assert "row 0 (item_id 'src:dir/000.png'), column 'size'" in msg
    assert "row 1 (item_id 'src:dir/001.png'), column 'rating'" in msg
    assert "row 2 (item_id 'src:dir/002.png'), column 'sha256'" in msg


def test_many_failures_are_truncated(tmp_path):
    df = _frame(*[_row(i, size=-1) for i in range(25)])
    msg = _error(tmp_path, df)
    assert "... and 5 more" in msg
    assert msg.count("column 'size'") == 20


def test_missing_column_on_write(tmp_path):
    df = _valid().drop(columns=["rating"])
    msg = _error(tmp_path, df)
    assert "rating" in msg


def test_extra_column_is_rejected_on_read(tmp_path):
    # strict=True: a file with a column the schema does not know fails to read.
    path = tmp_path / "extra.parquet"
    df = _valid()
    df["surprise"] = 7
    df.to_parquet(path, index=False)
    with pytest.raises(ManifestError) as info:
        manifest.read(path, schemas.INGEST)
    msg = str(info.value)
    assert msg.startswith(f"{path}: ingest manifest failed validation")
    assert "'surprise'" in msg
    assert "column_in_schema" in msg


def test_extra_column_is_rejected_by_validate(tmp_path):
    df = _valid()
    df["surprise"] = 7
    with pytest.raises(ManifestError, match="surprise"):
        manifest.validate(df, schemas.INGEST, tmp_path / "x.parquet")


def test_missing_column_is_rejected_on_read(tmp_path):
    path = tmp_path / "missing.parquet"
    _valid().drop(columns=["license"]).to_parquet(path, index=False)
    with pytest.raises(ManifestError) as info:
        manifest.read(path, schemas.INGEST)
    assert str(path) in str(info.value)
    assert "'license'" in str(info.value)


def test_bad_row_in_file_on_read(tmp_path):
    path = tmp_path / "tampered.parquet"
    df = _valid()
    df.loc[3, "sha256"] = "f" * 63
    df.to_parquet(path, index=False)
    with pytest.raises(ManifestError) as info:
        manifest.read(path, schemas.INGEST)
    msg = str(info.value)
    assert str(path) in msg
    assert "row 3 (item_id 'src:dir/003.png'), column 'sha256'" in msg


def test_read_missing_file(tmp_path):
    path = tmp_path / "nowhere.parquet"
    with pytest.raises(ManifestError, match="ingest manifest is missing") as info:
        manifest.read(path, schemas.INGEST)
    assert str(path) in str(info.value)


def test_validate_renumbers_rows_from_zero(tmp_path):
    df = _frame(_row(0), _row(1, rating="bad"))
    df.index = [100, 200]
    with pytest.raises(ManifestError, match=r"row 1 \(item_id 'src:dir/001.png'\), column 'rating'"):
        manifest.validate(df, schemas.INGEST, tmp_path / "x.parquet")


def test_manifest_error_is_value_error():
    assert issubclass(ManifestError, ValueError)


# --- schemas ----------------------------------------------------------------------------


def test_all_expected_schemas_are_present():
    assert set(ALL_SCHEMAS) == {
        "INGEST", "UNMATCHED", "AUDIT", "NSFW_SCORES", "GROUPS", "FILTERED", "DEDUPED", "CAPTIONED", "SPLIT",
        "REJECTED", "PAIRS", "REFERENCE_PAIRS", "MEMBERSHIP", "MOVES", "EXPORT", "CONVERSATIONS", "CONVERSATIONS_REJECTED",
        "CONVERSATIONS_KEPT", "CONVERSATIONS_SPLIT", "CONVERSATION_STAGES", "CONVERSATION_SCORES",
    }


@pytest.mark.parametrize("name", sorted(ALL_SCHEMAS))
def test_empty_validates_for_every_schema(name, tmp_path):
    schema = ALL_SCHEMAS[name]
    df = manifest.empty(schema)
    assert len(df) == 0
    assert list(df.columns) == list(schema.columns)
    manifest.validate(df, schema, tmp_path / f"{name}.parquet")
    path = tmp_path / f"{name}.parquet"
    manifest.write(df, path, schema)
    back = manifest.read(path, schema)
    assert len(back) == 0 and list(back.columns) == list(schema.columns)


@pytest.mark.parametrize("name", sorted(ALL_SCHEMAS))
def test_every_schema_is_strict_and_named(name):
    schema = ALL_SCHEMAS[name]
    assert schema.strict is True
    assert schema.name


def test_stage_schemas_extend_each_other():
    ingest = list(schemas.INGEST.columns)
    filtered = list(schemas.FILTERED.columns)
    assert filtered[: len(ingest)] == ingest
    assert set(schemas.DEDUPED.columns) >= set(filtered) | {"cluster_id", "cluster_key", "cluster_size", "component_key"}
    assert set(schemas.CAPTIONED.columns) == set(schemas.DEDUPED.columns) | {
        "caption", "caption_tokens", "caption_over_limit", "caption_trimmed", "background", "background_uniformity", "background_check"}
    assert set(schemas.SPLIT.columns) == set(schemas.CAPTIONED.columns) | {"split"}
    # filtered carries the audit measures (not the pHash views: only the pair search reads them), the
    # groups' cluster columns and the policy's decision
    measures = set(schemas.IMAGE_COLUMNS) - {"phash_views"}
    assert set(filtered) == set(ingest) | measures | set(schemas.CLUSTER_COLUMNS) | set(schemas.POLICY_COLUMNS)
    assert {"flags", "nsfw_flag", "nsfw_score", "archetype", "emotion", "harmony_score", "annotation_notes", "override",
            "caption_override"} == set(schemas.POLICY_COLUMNS)
    assert list(schemas.DEDUPED.columns) == filtered
    assert list(schemas.GROUPS.columns) == ["item_id", "sha256", "cluster_id", "cluster_key", "cluster_size", "component_key"]
    assert list(schemas.NSFW_SCORES.columns) == ["item_id", "sha256", "nsfw_score"]
    assert list(schemas.UNMATCHED.columns) == ["source", "record_id", "md5", "note"]
    assert {"nsfw_flag", "flags", "cluster_id"} <= set(schemas.EXPORT.columns)
    assert {"triggered_tags", "duplicate_of"} <= set(schemas.REJECTED.columns)
    assert "phash_views" in schemas.AUDIT.columns and "phash_views" not in filtered


def _rejected_row(**over) -> dict:
    row = {
        "item_id": "s:a.png", "sha256": "a" * 64, "source": "s", "path": "raw/a.png", "stage": "policy", "rule": "minors",
        "reason": "minor_sexual", "detail": "why", "triggered_tags": ["loli"], "duplicate_of": None,
        "nsfw_flag": True, "schema_version": schemas.SCHEMA_VERSION,
    }
    row.update(over)
    return row


def test_rejected_triggered_tags_round_trip_and_must_be_strings(tmp_path):
    path = tmp_path / "rejected.parquet"
    manifest.write(pd.DataFrame([_rejected_row(), _rejected_row(item_id="s:b.png", triggered_tags=[])]), path, schemas.REJECTED)
    back = manifest.read(path, schemas.REJECTED)
    assert [list(t) for t in back["triggered_tags"]] == [["loli"], []]
    with pytest.raises(ManifestError, match="triggered_tags"):
        manifest.write(pd.DataFrame([_rejected_row(triggered_tags=["loli", 3])]), tmp_path / "bad.parquet", schemas.REJECTED)


def test_rejected_duplicate_of_names_the_kept_item_or_nothing(tmp_path):
    path = tmp_path / "rejected.parquet"
    rows = [_rejected_row(), _rejected_row(item_id="s:b.png", stage="dedup", rule="exact", reason="exact_duplicate",
                                           detail="same bytes as s:a.png (kept)", triggered_tags=[], duplicate_of="s:a.png")]
    manifest.write(pd.DataFrame(rows), path, schemas.REJECTED)
    back = manifest.read(path, schemas.REJECTED).set_index("item_id")
    assert pd.isna(back.loc["s:a.png", "duplicate_of"]) and back.loc["s:b.png", "duplicate_of"] == "s:a.png"


def test_rejected_written_before_nsfw_flag_existed_reads_as_not_flagged(tmp_path):
    """A rejected manifest from an older version (no nsfw_flag column) stays readable, e.g. by trainset diff."""
    path = tmp_path / "rejected.parquet"
    old = pd.DataFrame([_rejected_row(), _rejected_row(item_id="s:b.png")]).drop(columns=["nsfw_flag"])
    old.to_parquet(path)
    back = manifest.read(path, schemas.REJECTED)
    assert back["nsfw_flag"].dtype == bool and not back["nsfw_flag"].any()
    with pytest.raises(ManifestError, match="nsfw_flag"):
        manifest.write(old, tmp_path / "again.parquet", schemas.REJECTED)  # writing still needs it


def test_nsfw_scores_are_probabilities_or_nan(tmp_path):
    ok = pd.DataFrame({"item_id": ["s:a", "s:b"], "sha256": ["a" * 64, "b" * 64], "nsfw_score": [0.25, float("nan")]})
    manifest.write(ok, tmp_path / "n.parquet", schemas.NSFW_SCORES)
    bad = ok.assign(nsfw_score=[1.5, 0.0])
    with pytest.raises(ManifestError, match="nsfw_score"):
        manifest.write(bad, tmp_path / "bad.parquet", schemas.NSFW_SCORES)


def _audit_row(**over) -> dict:
    row = {
        "item_id": "s:a.png", "sha256": "a" * 64, "decoded": True, "reason": None, "detail": None,
        "format": "PNG", "mode": "RGB", "width": 10, "height": 12, "exif_orientation": 1, "phash": "0123456789abcdef",
        "dhash": "fedcba9876543210", "phash_views": ["0123456789abcdef"] * 8,
        "n_frames": 1, "animated": False, "has_alpha": False, "alpha_min": 255, "bit_depth": 8,
        "luma_mean": 120.5, "luma_std": 40.0, "entropy": 7.1, "laplacian_var": 310.0, "border_fraction": 0.0,
    }
    row.update(over)
    return row


def test_audit_schema_accepts_failed_decode(tmp_path):
    df = manifest.with_version(pd.DataFrame([
        _audit_row(),
        _audit_row(item_id="s:b.png", decoded=False, reason="truncated", detail="cut", format=None,
                   mode=None, width=0, height=0, phash=None, dhash=None, phash_views=[], bit_depth=0,
                   luma_mean=float("nan"), luma_std=float("nan"), entropy=float("nan"), laplacian_var=float("nan"),
                   border_fraction=float("nan")),
        _audit_row(item_id="s:c.png", decoded=False, reason="decompression_bomb", detail="too big", mode=None,
                   width=20000, height=20000, phash=None, dhash=None, phash_views=[], bit_depth=0,
                   luma_mean=float("nan"), luma_std=float("nan"), entropy=float("nan"), laplacian_var=float("nan"),
                   border_fraction=float("nan")),
    ]))
    manifest.write(df, tmp_path / "audit.parquet", schemas.AUDIT)
    back = manifest.read(tmp_path / "audit.parquet", schemas.AUDIT)
    assert list(back["reason"].fillna("-")) == ["-", "truncated", "decompression_bomb"]
    assert back["luma_mean"].isna().tolist() == [False, True, True]
    assert back["dhash"].tolist()[0] == "fedcba9876543210" and back["dhash"].isna().tolist() == [False, True, True]
    assert [list(v) for v in back["phash_views"]] == [["0123456789abcdef"] * 8, [], []]


@pytest.mark.parametrize(
    ("over", "column"),
    [
        ({"reason": "exploded"}, "reason"),
        ({"phash": "0123456789ABCDEF"}, "phash"),
        ({"phash": "0123"}, "phash"),
        ({"dhash": "FEDCBA9876543210"}, "dhash"),
        ({"dhash": "fedcba98765432100"}, "dhash"),
        ({"dhash": "not-hex-at-all!!"}, "dhash"),
        ({"phash_views": ["0123456789ABCDEF"] * 8}, "phash_views"),
        ({"phash_views": ["0123456789abcdef", "0123"]}, "phash_views"),
        ({"phash_views": "0123456789abcdef"}, "phash_views"),
        ({"exif_orientation": 9}, "exif_orientation"),
        ({"exif_orientation": 0}, "exif_orientation"),
        ({"width": -1}, "width"),
        ({"n_frames": 0}, "n_frames"),
        ({"alpha_min": 256}, "alpha_min"),
        ({"bit_depth": 12}, "bit_depth"),
        ({"entropy": 8.5}, "entropy"),
        ({"luma_mean": -1.0}, "luma_mean"),
        ({"laplacian_var": -0.5}, "laplacian_var"),
    ],
)
def test_audit_schema_rejects(tmp_path, over, column):
    df = manifest.with_version(pd.DataFrame([_audit_row(item_id="s:0.png"), _audit_row(**over)]))
    msg = _error(tmp_path, df, schemas.AUDIT)
    assert f"row 1 (item_id 's:a.png'), column '{column}'" in msg


def test_pairs_schema_unique_pair(tmp_path):
    x, y, z = "1" * 64, "2" * 64, "3" * 64
    ok = pd.DataFrame({"a": [x, x], "b": [y, z], "distance": [1, 2], "cosine": [float("nan"), 0.9], "rule": ["distance<=6", "distance<=16&cosine>=0.88"]})
    manifest.write(ok, tmp_path / "pairs.parquet", schemas.PAIRS, sort_by=["a", "b"])
    bad = ok.assign(b=[y, y])
    with pytest.raises(ManifestError):
        manifest.write(bad, tmp_path / "pairs2.parquet", schemas.PAIRS, sort_by=["a", "b"])


@pytest.mark.parametrize(("over", "column"), [({"a": ["src:x.png", "1" * 64]}, "a"), ({"distance": [65, 1]}, "distance")])
def test_pairs_schema_rejects(tmp_path, over, column):
    """Pairs name contents by SHA-256; a distance has at most 64 bits."""
    df = pd.DataFrame({"a": ["1" * 64] * 2, "b": ["2" * 64, "3" * 64], "distance": [1, 2], "cosine": [0.5, 0.9], "rule": ["r", "r"]})
    with pytest.raises(ManifestError, match=f"'{column}'"):
        manifest.write(df.assign(**over), tmp_path / "pairs.parquet", schemas.PAIRS, sort_by=["a", "b"])


def test_reference_pairs_schema_unique_per_reference_file(tmp_path):
    row = {"sha256": "1" * 64, "reference": "holdout", "reference_path": "/h/a.png", "distance": 3, "cosine": float("nan"), "rule": "distance<=6"}
    ok = pd.DataFrame([row, {**row, "reference_path": "/h/b.png"}])
    manifest.write(ok, tmp_path / "r.parquet", schemas.REFERENCE_PAIRS, sort_by=["sha256", "reference", "reference_path"])
    with pytest.raises(ManifestError):
        manifest.write(pd.DataFrame([row, row]), tmp_path / "r2.parquet", schemas.REFERENCE_PAIRS, sort_by=["sha256"])


# --- atomic writes ----------------------------------------------------------------------


def test_failed_validation_leaves_previous_file_untouched(tmp_path):
    path = tmp_path / "ingest.parquet"
    manifest.write(_valid(), path, schemas.INGEST)
    before = path.read_bytes()
    mtime = path.stat().st_mtime_ns
    with pytest.raises(ManifestError):
        manifest.write(_frame(_row(0), _row(1, sha256="bad")), path, schemas.INGEST)
    assert path.read_bytes() == before
    assert path.stat().st_mtime_ns == mtime
    assert _leftovers(tmp_path, {"ingest.parquet"}) == []
    assert len(manifest.read(path, schemas.INGEST)) == 4


def test_failure_while_writing_leaves_previous_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "ingest.parquet"
    manifest.write(_valid(), path, schemas.INGEST)
    before = path.read_bytes()

    real = manifest.pq.ParquetWriter.write_table

    def broken_write_table(writer, table, *args, **kwargs):
        real(writer, table.slice(0, 1), *args, **kwargs)  # part of the rows on disk
        raise OSError("disk full")

    monkeypatch.setattr(manifest.pq.ParquetWriter, "write_table", broken_write_table)
    with pytest.raises(OSError, match="disk full"):
        manifest.write(_valid(2), path, schemas.INGEST)
    assert path.read_bytes() == before
    assert _leftovers(tmp_path, {"ingest.parquet"}) == []


def test_successful_write_replaces_and_leaves_no_temp(tmp_path):
    path = tmp_path / "ingest.parquet"
    manifest.write(_valid(4), path, schemas.INGEST)
    manifest.write(_valid(2), path, schemas.INGEST)
    assert len(manifest.read(path, schemas.INGEST)) == 2
    assert _leftovers(tmp_path, {"ingest.parquet"}) == []


def test_atomic_file_replaces_on_success(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("old")
    with atomic.atomic_file(path) as tmp:
        assert tmp.parent == tmp_path
        assert tmp != path
        assert tmp.name.startswith(".f.txt.") and tmp.name.endswith(".tmp")
        tmp.write_text("new")
        assert path.read_text() == "old"  # not visible until the block ends
    assert path.read_text() == "new"
    assert _leftovers(tmp_path, {"f.txt"}) == []


def test_atomic_file_cleans_up_on_error(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_file(path) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("boom")
    assert path.read_text() == "old"
    assert _leftovers(tmp_path, {"f.txt"}) == []


def test_atomic_file_error_with_no_previous_file(tmp_path):
    path = tmp_path / "sub" / "f.txt"
    with pytest.raises(KeyboardInterrupt):
        with atomic.atomic_file(path) as tmp:
            tmp.write_text("partial")
            raise KeyboardInterrupt
    assert not path.exists()
    assert list((tmp_path / "sub").iterdir()) == []


def test_write_bytes_and_text(tmp_path):
    atomic.write_bytes(tmp_path / "a" / "b.bin", b"\x00\x01")
    atomic.write_text(tmp_path / "c.txt", "héllo")
    assert (tmp_path / "a" / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "c.txt").read_bytes() == "héllo".encode("utf-8")
    atomic.write_text(tmp_path / "c.txt", "again")
    assert (tmp_path / "c.txt").read_text() == "again"
    assert _leftovers(tmp_path, {"a", "c.txt"}) == []


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_atomic_dir_replaces_folder_whole(tmp_path):
    target = tmp_path / "export"
    (target / "old_sub").mkdir(parents=True)
    (target / "stale.txt").write_text("stale")
    (target / "old_sub" / "x.txt").write_text("x")
    with atomic.atomic_dir(target) as tmp:
        assert tmp.is_dir() and list(tmp.iterdir()) == []
        assert tmp.parent == tmp_path
        (tmp / "new.txt").write_text("new")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "y.txt").write_text("y")
        assert _tree(target) == {"stale.txt": b"stale", "old_sub/x.txt": b"x"}  # untouched meanwhile
    assert _tree(target) == {"new.txt": b"new", "sub/y.txt": b"y"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_atomic_dir_creates_when_missing(tmp_path):
    target = tmp_path / "a" / "b"
    with atomic.atomic_dir(target) as tmp:
        (tmp / "f").write_text("1")
    assert _tree(target) == {"f": b"1"}
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b"]


def test_atomic_dir_failure_keeps_old_folder(tmp_path):
    target = tmp_path / "export"
    target.mkdir()
    (target / "keep.txt").write_text("keep")
    with pytest.raises(ValueError):
        with atomic.atomic_dir(target) as tmp:
            (tmp / "half.txt").write_text("half")
            raise ValueError("stop")
    assert _tree(target) == {"keep.txt": b"keep"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_atomic_dir_failure_with_no_old_folder(tmp_path):
    target = tmp_path / "export"
    with pytest.raises(ValueError):
        with atomic.atomic_dir(target) as tmp:
            (tmp / "half.txt").write_text("half")
            raise ValueError("stop")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_survives_a_leftover_old_folder(tmp_path):
    # A run killed between the two renames leaves ".export.old"; the next run must cope.
    target = tmp_path / "export"
    target.mkdir()
    (target / "v1").write_text("1")
    leftover = tmp_path / ".export.old"
    leftover.mkdir()
    (leftover / "junk").write_text("junk")
    with atomic.atomic_dir(target) as tmp:
        (tmp / "v2").write_text("2")
    assert _tree(target) == {"v2": b"2"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_manifest_write_inside_atomic_dir(tmp_path):
    target = tmp_path / "export"
    with atomic.atomic_dir(target) as tmp:
        manifest.write(_valid(), tmp / "manifest.parquet", schemas.INGEST)
    assert len(manifest.read(target / "manifest.parquet", schemas.INGEST)) == 4
    assert os.listdir(target) == ["manifest.parquet"]


# --- whole-column validation and Arrow-held lists ----------------------------------------


def test_tags_holding_bytes_are_rejected(tmp_path):
    # Arrow would take b"b" into a text list; the check still judges every element's type
    df = _frame(_row(0), _row(1, tags=["ok", b"b"]))
    msg = _error(tmp_path, df)
    assert "row 1 (item_id 'src:dir/001.png'), column 'tags'" in msg


def test_phash_views_with_a_trailing_newline_match_as_python_does(tmp_path):
    # Python's $ matches before a final newline: the per-row verdict decides, not the faster check
    view = "0123456789abcdef\n"
    assert schemas._HEX16_RE.match(view)
    df = manifest.with_version(pd.DataFrame([_audit_row(phash_views=[view])]))
    manifest.write(df, tmp_path / "audit.parquet", schemas.AUDIT)


def _audit_frame() -> pd.DataFrame:
    return manifest.with_version(pd.DataFrame([
        _audit_row(),
        _audit_row(item_id="s:b.png", decoded=False, reason="truncated", detail="cut", format=None, mode=None,
                   width=0, height=0, phash=None, dhash=None, phash_views=[], bit_depth=0, luma_mean=None,
                   luma_std=None, entropy=None, laplacian_var=None, border_fraction=None),
    ]))


@pytest.mark.parametrize("views", [None, [[], []]])
def test_arrow_held_lists_write_the_same_bytes(tmp_path, views):
    df = _audit_frame()
    if views is not None:
        df["phash_views"] = pd.Series(views, dtype=object)
    manifest.write(df, tmp_path / "plain.parquet", schemas.AUDIT)
    held = manifest.read(tmp_path / "plain.parquet", schemas.AUDIT, arrow_lists=("phash_views",))
    assert manifest.is_arrow_list(held["phash_views"].dtype)
    manifest.write(held, tmp_path / "held.parquet", schemas.AUDIT)
    assert (tmp_path / "held.parquet").read_bytes() == (tmp_path / "plain.parquet").read_bytes()


def test_arrow_held_bad_view_names_file_row_and_column(tmp_path):
    path = tmp_path / "audit.parquet"
    df = _audit_frame()
    df.at[1, "phash_views"] = ["0123456789ABCDEF"]
    df.to_parquet(path, index=False)
    with pytest.raises(ManifestError) as info:
        manifest.read(path, schemas.AUDIT, arrow_lists=("phash_views",))
    assert str(path) in str(info.value)
    assert "row 1 (item_id 's:b.png'), column 'phash_views'" in str(info.value)


def test_read_some_columns(tmp_path):
    path = tmp_path / "ingest.parquet"
    manifest.write(_valid(), path, schemas.INGEST)
    part = manifest.read(path, schemas.INGEST, columns=["sha256", "item_id", "tags"])
    assert list(part.columns) == ["sha256", "item_id", "tags"]
    assert part["tags"].map(type).eq(list).all()


def test_read_some_columns_still_checks_the_file(tmp_path):
    path = tmp_path / "ingest.parquet"
    df = _valid()
    df.loc[2, "sha256"] = "x"
    df.to_parquet(path, index=False)
    with pytest.raises(ManifestError, match=r"row 2 \(item_id 'src:dir/002.png'\), column 'sha256'"):
        manifest.read(path, schemas.INGEST, columns=["item_id", "sha256"])
    df.assign(surprise=7).to_parquet(path, index=False)
    with pytest.raises(ManifestError, match="surprise"):
        manifest.read(path, schemas.INGEST, columns=["item_id"])


@pytest.mark.parametrize("views", [["0123456789ABCDEF"] * 8, ["0123456789abcdef", "0123"], ["0123456789abcdeg"] * 8,
                                   ["0123456789abcdef0"] * 8])
def test_arrow_held_phash_views_fail_on_the_bad_row(tmp_path, views):
    """The whole-column check on Arrow's text buffer lets no bad view through; the row is named."""
    df = manifest.with_version(pd.DataFrame([_audit_row(item_id="s:0.png"), _audit_row(phash_views=views)]))
    df["phash_views"] = pd.Series(pd.arrays.ArrowExtensionArray(pyarrow.array(df["phash_views"].tolist(), pyarrow.list_(pyarrow.string()))))
    msg = _error(tmp_path, df, schemas.AUDIT)
    assert "row 1 (item_id 's:a.png'), column 'phash_views'" in msg
    good = pyarrow.array([["0123456789abcdef"] * 3, [], ["fedcba9876543210"]], pyarrow.list_(pyarrow.large_string()))
    assert schemas._hex16_arrow(pyarrow.chunked_array([pc.list_flatten(good)]))


# --- manifests written a shard at a time -------------------------------------------------------

def _by_shard(tmp_path, shards: dict[str, pd.DataFrame], name: str = "sharded.parquet") -> Path:
    path = tmp_path / name
    with manifest.ShardedWriter(path, schemas.INGEST) as out:
        for shard, rows in shards.items():
            out.write(shard, rows)
    return path


def test_sharded_manifest_reads_whole_and_by_shard(tmp_path):
    a = _frame(_row(3, tags=[]), _row(1, tags=[], artists=[]))  # lists all empty in the first shard
    b = _frame(_row(2), _row(0, source_url=None))
    path = _by_shard(tmp_path, {"00000": a, "00001": b, "00002": _frame()})
    assert manifest.shard_groups(path) == ["00000", "00001"]  # an empty shard writes no row group
    whole = manifest.read(path, schemas.INGEST)
    assert whole["item_id"].tolist() == [_row(i)["item_id"] for i in (1, 3, 0, 2)]  # by shard, item id within
    assert whole["tags"].tolist() == [[], [], _row(0)["tags"], _row(2)["tags"]]
    parts = list(manifest.read_shards(path, schemas.INGEST))
    assert [s for s, _ in parts] == ["00000", "00001"]
    pd.testing.assert_frame_equal(pd.concat([df for _, df in parts], ignore_index=True), whole)
    some = [df for _, df in manifest.read_shards(path, schemas.INGEST, columns=["sha256", "item_id"])]
    assert [df.columns.tolist() for df in some] == [["sha256", "item_id"]] * 2
    assert pd.concat(some)["item_id"].tolist() == whole["item_id"].tolist()


def test_sharded_manifest_is_deterministic_and_atomic(tmp_path):
    shards = {"00000": _frame(_row(1), _row(0)), "00001": _frame(_row(2))}
    first = _by_shard(tmp_path, shards, "a.parquet").read_bytes()
    assert _by_shard(tmp_path, shards, "b.parquet").read_bytes() == first
    with pytest.raises(RuntimeError):
        with manifest.ShardedWriter(tmp_path / "c.parquet", schemas.INGEST) as out:
            out.write("00000", shards["00000"])
            raise RuntimeError("killed")
    assert not (tmp_path / "c.parquet").exists() and _leftovers(tmp_path, {"a.parquet", "b.parquet"}) == []


def test_sharded_manifest_names_the_bad_row_in_the_file(tmp_path):
    bad = _frame(_row(5), _row(6, sha256="nothex"))
    with pytest.raises(ManifestError, match=r"row 3 \(item_id 'src:dir/006.png'\), column 'sha256'"):
        _by_shard(tmp_path, {"00000": _frame(_row(0), _row(1)), "00001": bad})
    assert not (tmp_path / "sharded.parquet").exists()


def test_sharded_manifest_checks_unique_ids_across_shards(tmp_path):
    with pytest.raises(ManifestError, match=r"'item_id' must be unique, repeated at row 1 \('src:dir/001.png'\), row 2 \('src:dir/001.png'\)"):
        _by_shard(tmp_path, {"00000": _frame(_row(0), _row(1)), "00001": _frame(_row(1, sha256="b" * 64))})


def test_sharded_manifest_with_no_rows_is_an_empty_manifest(tmp_path):
    path = _by_shard(tmp_path, {"00000": _frame()})
    assert manifest.shard_groups(path) == [] and manifest.read(path, schemas.INGEST).empty


def test_a_manifest_written_whole_reads_as_one_shard(tmp_path):
    path = tmp_path / "whole.parquet"
    written = manifest.write(_valid(), path, schemas.INGEST)
    assert manifest.shard_groups(path) is None
    (name, rows), = manifest.read_shards(path, schemas.INGEST)
    assert name == "" and rows.equals(written)


def test_read_shards_checks_each_shard(tmp_path):
    path = _by_shard(tmp_path, {"00000": _frame(_row(0)), "00001": _frame(_row(1))})
    table = pyarrow.parquet.read_table(path)
    # the second row group's sha256 spoiled in place: the file's row 1 is named
    spoiled = table.set_column(table.schema.get_field_index("sha256"), "sha256", pyarrow.array(["a" * 64, "xyz"]))
    with pyarrow.parquet.ParquetWriter(path, spoiled.schema) as w:
        w.write_table(spoiled.slice(0, 1))
        w.write_table(spoiled.slice(1, 1))
        w.add_key_value_metadata({manifest.SHARDS_KEY: '["00000", "00001"]'})
    with pytest.raises(ManifestError, match=r"row 1 \(item_id 'src:dir/001.png'\), column 'sha256'"):
        list(manifest.read_shards(path, schemas.INGEST))


def test_sharded_manifest_takes_a_batch_of_shards_at_once(tmp_path):
    """A batch spanning shards writes the bytes shard-by-shard writes; batches read back whole shards."""
    one = _by_shard(tmp_path, {"00000": _frame(_row(3), _row(1)), "00001": _frame(_row(2)), "00002": _frame(_row(0), _row(4))}, "one.parquet")
    batch = _frame(_row(2), _row(3), _row(0), _row(1), _row(4))
    with manifest.ShardedWriter(tmp_path / "batch.parquet", schemas.INGEST) as out:
        out.write(["00001", "00000", "00002", "00000", "00002"][:2], batch.iloc[[0, 1]])  # shards as they first appear
        out.write(np.array(["00002", "00000", "00002"], dtype=object)[[0, 2]], batch.iloc[[2, 4]])
    assert manifest.shard_groups(tmp_path / "batch.parquet") == ["00001", "00000", "00002"]
    with manifest.ShardedWriter(tmp_path / "ordered.parquet", schemas.INGEST) as out:
        out.write(["00000", "00001", "00000", "00002", "00002"], _frame(_row(3), _row(2), _row(1), _row(0), _row(4)))
    assert (tmp_path / "ordered.parquet").read_bytes() == one.read_bytes()
    batches = list(manifest.read_batches(one, schemas.INGEST, rows=2, columns=["item_id"]))
    assert [(list(s), df["item_id"].tolist()) for s, df in batches] == [
        (["00000", "00000"], [_row(1)["item_id"], _row(3)["item_id"]]),
        (["00001", "00002", "00002"], [_row(2)["item_id"], _row(0)["item_id"], _row(4)["item_id"]]),
    ]
    (shard, whole), = manifest.read_batches(tmp_path / "w.parquet" if manifest.write(_valid(), tmp_path / "w.parquet", schemas.INGEST) is not None else None,
                                            schemas.INGEST, rows=2)
    assert set(shard) == {""} and len(whole) == 4


def test_sharded_manifest_takes_each_shard_in_one_call(tmp_path):
    with pytest.raises(ManifestError, match="rows of shard\\(s\\) 00000 written again"):
        with manifest.ShardedWriter(tmp_path / "m.parquet", schemas.INGEST) as out:
            out.write("00000", _frame(_row(0)))
            out.write(["00001", "00000"], _frame(_row(1), _row(2)))
    assert not (tmp_path / "m.parquet").exists()


def test_positions_find_ids_in_a_column_held_in_several_arrow_chunks() -> None:
    """A manifest read back holds its text as Arrow, often in several chunks (one per row group):
    the lookup takes it as it is, and ids it lacks come back as -1."""
    chunked = pd.Series(pd.arrays.ArrowExtensionArray(pyarrow.chunked_array([pyarrow.array(["src:a", "src:b"]), pyarrow.array(["src:c"])])))
    assert manifest.arrow_text(chunked).to_pylist() == ["src:a", "src:b", "src:c"]
    assert manifest.positions(chunked, pd.Series(["src:c", "src:a"], dtype="str")).tolist() == [1, -1, 0]
    assert manifest.positions(["src:b"], chunked).tolist() == [1]
    assert manifest.positions([], chunked).tolist() == []


@pytest.mark.parametrize("n_ids", [0, 1, 5, 40, 400, 4000])
def test_positions_equal_a_direct_lookup_whichever_side_is_hashed(n_ids: int) -> None:
    """Few ids among many are looked up the other way round (the few hashed, the many probed):
    the rows found are the same, repeats in either side included (the first row of a repeated id)."""
    rng = np.random.default_rng(n_ids)
    among = [f"src:{k}" for k in rng.integers(0, 900, 1000)]  # repeats
    ids = [f"src:{k}" for k in rng.integers(0, 1200, n_ids)]   # repeats, and ids none has
    expected = [among.index(i) if i in among else -1 for i in ids]
    assert manifest.positions(ids, among).tolist() == expected
    assert manifest.positions(pd.Series(ids, dtype="str"), pd.Series(among, dtype="str")).tolist() == expected
    assert manifest.positions([*ids, None], [*among, None]).tolist() == [*expected, -1]  # a missing id is never found


def test_shard_batches_join_consecutive_shards_skip_reused_ones_and_keep_each_whole():
    names, bounds = ["a", "b", "c", "d", "e"], [0, 3, 5, 9, 10, 14]
    got = [(shard.tolist(), a, b) for shard, a, b in manifest.shard_batches(names, bounds, skip={"c"}, rows=4)]
    assert got == [(["a"] * 3 + ["b"] * 2, 0, 5), (["d"] + ["e"] * 4, 9, 14)]  # c reused: d starts a new run
    assert [(a, b) for _, a, b in manifest.shard_batches(names, bounds, rows=1)] == [(0, 3), (3, 5), (5, 9), (9, 10), (10, 14)]
    assert list(manifest.shard_batches(names, bounds, skip=set(names))) == []


def test_shard_bounds_of_a_sharded_and_a_whole_manifest(tmp_path):
    df = _valid(5)
    with manifest.ShardedWriter(tmp_path / "s.parquet", schemas.INGEST) as writer:
        writer.write("00000", df.iloc[:2])
        writer.write("00003", df.iloc[2:])
    assert manifest.shard_bounds(tmp_path / "s.parquet") == (["00000", "00003"], [0, 2, 5])
    manifest.write(df, tmp_path / "w.parquet", schemas.INGEST)
    assert manifest.shard_bounds(tmp_path / "w.parquet") == ([""], [0, 5])


def test_positions_of_ids_aligned_with_a_unique_column_are_their_own_rows_and_others_are_looked_up():
    among = pyarrow.array([f"id{k}" for k in (5, 2, 9, 1)])
    assert manifest.positions(among, among, unique=True).tolist() == [0, 1, 2, 3]
    shuffled = pyarrow.array(["id9", "id5", "id1", "id2"])
    assert manifest.positions(shuffled, among, unique=True).tolist() == manifest.positions(shuffled, among).tolist() == [2, 0, 3, 1]
    with_missing = pyarrow.array(["id5", None, "id9", "id1"])
    assert manifest.positions(with_missing, with_missing, unique=True).tolist() == [0, -1, 2, 3]  # a missing id is never found


@pytest.mark.parametrize("seed", range(16))
def test_positions_in_a_unique_column_mostly_in_place_equal_a_direct_lookup(seed: int) -> None:
    """A rerun's ids against the last run's unique ids: most in place, some inserted, dropped,
    moved or repeated, ids none has and missing ones, either side longer. Ids in place are found
    by comparing the rows side by side, the rest by lookup: the rows are a full lookup's."""
    rng = np.random.default_rng(seed)
    among = [f"src:{k:05d}" for k in rng.permutation(3000)[:2000]]
    ids = list(among)
    for at in sorted(rng.integers(0, len(ids), int(rng.choice([1, 3, 30]))), reverse=True):
        ids.insert(int(at), f"src:{int(rng.integers(3000, 3100)):05d}")  # new ids (some repeated), shifting the rest
    del ids[int(rng.integers(0, 1500)):][:int(rng.integers(0, 40))]  # a run dropped
    ids[5], ids[900] = ids[900], ids[5]
    ids += [among[7], None] + ([among[-1]] * int(rng.integers(0, 3)))  # repeats of ids in place elsewhere, a missing id
    ids = ids[:int(rng.integers(1500, len(ids) + 1))]
    expected = [among.index(i) if i in among else -1 for i in ids]
    assert manifest.positions(ids, among, unique=True).tolist() == expected
    assert manifest.positions(pyarrow.array(ids, pyarrow.large_string()), pd.Series(among, dtype="str"), unique=True).tolist() == expected


def test_rows_at_are_the_rows_iloc_takes_out_of_a_frame_read_by_shard(tmp_path):
    """Rows taken out of their slice of a frame read from a manifest written by shard (a chunk per
    row group in each Arrow-backed column) are those ``iloc`` takes, labels and dtypes included:
    within a shard, across shards, repeated, unordered, none."""
    path = _by_shard(tmp_path, {"00000": _frame(_row(0), _row(1)), "00001": _frame(_row(2)), "00002": _frame(_row(3), _row(4))})
    df = manifest.read(path, schemas.INGEST, arrow_lists=("tags",))
    assert df["item_id"].array.__arrow_array__().num_chunks == 3
    for rows in ([3, 4], [4, 3, 3], [1, 2, 3], [0, 4], [2], []):
        pd.testing.assert_frame_equal(manifest.rows_at(df, np.array(rows, dtype=np.int64)), df.iloc[rows])


def test_read_rows_takes_the_rows_asked_for_out_of_each_row_group(tmp_path):
    """The rows at the given file positions, across shards, as read() gives them; lists as Arrow when asked."""
    path = _by_shard(tmp_path, {"00000": _frame(_row(0), _row(1), _row(2)), "00001": _frame(_row(3)),
                                "00002": _frame(_row(4), _row(5))})
    whole = manifest.read(path, schemas.INGEST)
    columns = ["item_id", "sha256", "tags", "size"]
    for positions in ([0, 2, 3, 5], [4], [1, 2], []):
        got = manifest.read_rows(path, schemas.INGEST, np.array(positions, dtype=np.int64), columns)
        pd.testing.assert_frame_equal(got, whole[columns].iloc[positions].reset_index(drop=True))
    held = manifest.read_rows(path, schemas.INGEST, np.array([0, 5]), columns, arrow_lists=("tags",))
    assert manifest.is_arrow_list(held["tags"].dtype) and held["tags"].tolist() == whole["tags"].iloc[[0, 5]].tolist()
    with pytest.raises(ValueError, match="ascending"):
        manifest.read_rows(path, schemas.INGEST, np.array([3, 1]), columns)
    with pytest.raises(ValueError, match="below 6"):
        manifest.read_rows(path, schemas.INGEST, np.array([6]), columns)


def test_read_rows_names_a_bad_row_by_its_row_in_the_file(tmp_path):
    path = _by_shard(tmp_path, {"00000": _frame(_row(0), _row(1)), "00001": _frame(_row(2), _row(3))})
    table = pyarrow.parquet.read_table(path)
    spoiled = table.set_column(table.schema.get_field_index("sha256"), "sha256",
                               pyarrow.array(["a" * 64, "b" * 64, "c" * 64, "xyz"]))
    with pyarrow.parquet.ParquetWriter(path, spoiled.schema) as w:
        w.write_table(spoiled.slice(0, 2))
        w.write_table(spoiled.slice(2, 2))
        w.add_key_value_metadata({manifest.SHARDS_KEY: '["00000", "00001"]'})
    assert len(manifest.read_rows(path, schemas.INGEST, np.array([0, 2]), ["item_id", "sha256"])) == 2  # the bad row not asked for
    with pytest.raises(ManifestError, match=r"row 3 \(item_id 'src:dir/003.png'\), column 'sha256'"):
        manifest.read_rows(path, schemas.INGEST, np.array([1, 3]), ["item_id", "sha256"])


@pytest.mark.parametrize("where", ["written after a copied shard", "written before a copied shard", "within the written shards"])
def test_a_written_shard_that_repeats_an_id_is_named_by_its_rows_in_the_file(tmp_path, where):
    """With shards copied from the kept output, the written shards' ids are checked against the
    copied ones and among themselves; a repeat names both rows in the file."""
    path, kept = tmp_path / "m.parquet", tmp_path / "kept.parquet"
    rows = {"00000": _frame(_row(0), _row(1)), "00001": _frame(_row(2)), "00002": _frame(_row(3), _row(4))}

    def build(keys):
        with manifest.ShardedWriter(path, schemas.INGEST, kept=kept, order=sorted(rows)) as out:
            for shard in sorted(rows):
                if not out.reuse(shard, keys[shard]):
                    out.write(shard, rows[shard], keys={shard: keys[shard]})
            return out.reused

    build({s: "k" for s in rows})
    if where == "written after a copied shard":
        rows["00002"], keys, expected = _frame(_row(1, sha256="b" * 64), _row(4)), {"00000": "k", "00001": "k", "00002": "new"}, "row 1 .*row 3"
    elif where == "written before a copied shard":
        rows["00000"], keys, expected = _frame(_row(0), _row(4, sha256="b" * 64)), {"00000": "new", "00001": "k", "00002": "k"}, "row 1 .*row 4"
    else:
        rows["00000"], rows["00002"] = _frame(_row(0), _row(7)), _frame(_row(7, sha256="b" * 64))
        keys, expected = {"00000": "new", "00001": "k", "00002": "new"}, "row 1 .*row 3"
    before = path.read_bytes()
    with pytest.raises(ManifestError, match=rf"'item_id' must be unique, repeated at {expected}"):
        build(keys)
    assert path.read_bytes() == before
    rows["00002"] = _frame(_row(3), _row(4)) if where != "within the written shards" else _frame(_row(8))
    rows["00000"] = _frame(_row(0), _row(1))
    assert build({"00000": "k", "00001": "k", "00002": "k" if where != "within the written shards" else "other"}) >= 2


@pytest.mark.parametrize("read", [
    lambda p: manifest.read(p, schemas.INGEST),
    lambda p: list(manifest.read_batches(p, schemas.INGEST, 10)),
    lambda p: manifest.read_rows(p, schemas.INGEST, np.array([0]), ["item_id"]),
])
def test_a_torn_manifest_is_named(tmp_path, read):
    path = tmp_path / "ingest.parquet"
    manifest.write(_valid(4), path, schemas.INGEST)
    os.truncate(path, path.stat().st_size - 100)
    with pytest.raises(ManifestError, match=r"ingest.parquet: ingest manifest is not a readable Parquet file"):
        read(path)
