"""The item ledger: raw == kept + rejected, or a ConservationError naming the ids."""

from __future__ import annotations

import pandas as pd
import pytest

import stage_helpers as H
from trainset import ledger, manifest, schemas
from trainset.ledger import ConservationError
from trainset.stages import rejected as rejected_stage


def _ids(*ids: str) -> pd.DataFrame:
    return pd.DataFrame({"item_id": list(ids)})


RAW = _ids("s:a", "s:b", "s:c", "s:d")


def test_balanced_ledger_passes():
    assert ledger.check(RAW, _ids("s:a", "s:c"), _ids("s:b", "s:d")) == {"raw": 4, "kept": 2, "rejected": 2}


def test_all_kept_or_all_rejected():
    assert ledger.check(RAW, RAW, _ids()) == {"raw": 4, "kept": 4, "rejected": 0}
    assert ledger.check(RAW, _ids(), RAW) == {"raw": 4, "kept": 0, "rejected": 4}
    assert ledger.check(_ids(), _ids(), _ids()) == {"raw": 0, "kept": 0, "rejected": 0}


def test_lost_item_is_named():
    with pytest.raises(ConservationError) as err:
        ledger.check(RAW, _ids("s:a"), _ids("s:b", "s:d"))
    msg = str(err.value)
    assert "neither kept nor rejected (lost): s:c" in msg
    assert "counts: raw 4 != kept 1 + rejected 2" in msg


def test_item_both_kept_and_rejected_is_named():
    with pytest.raises(ConservationError) as err:
        ledger.check(RAW, _ids("s:a", "s:b", "s:c"), _ids("s:c", "s:d"))
    msg = str(err.value)
    assert "both kept and rejected: s:c" in msg
    assert "lost" not in msg


def test_item_rejected_twice_is_named():
    with pytest.raises(ConservationError) as err:
        ledger.check(RAW, _ids("s:a", "s:b"), _ids("s:c", "s:d", "s:d"))
    msg = str(err.value)
    assert "rejected more than once: s:d" in msg
    assert "s:c" not in msg.split("rejected more than once:")[1].splitlines()[0]
    assert "counts: raw 4 != kept 2 + rejected 3" in msg


def test_unknown_item_is_named():
    with pytest.raises(ConservationError) as err:
        ledger.check(RAW, _ids("s:a", "s:b", "s:zz"), _ids("s:c", "s:d"))
    assert "not in the raw manifest: s:zz" in str(err.value)


def test_several_problems_reported_together():
    with pytest.raises(ConservationError) as err:
        ledger.check(RAW, _ids("s:a", "x:new"), _ids("s:a", "s:b", "s:b"))
    msg = str(err.value)
    assert msg.startswith("item ledger does not balance")
    assert "rejected more than once: s:b" in msg
    assert "both kept and rejected: s:a" in msg
    assert "neither kept nor rejected (lost): s:c, s:d" in msg
    assert "not in the raw manifest: x:new" in msg


def test_count_mismatch_alone_is_caught():
    """Duplicated kept rows keep the id sets equal but break the counts."""
    with pytest.raises(ConservationError, match=r"counts: raw 4 != kept 3 \+ rejected 2"):
        ledger.check(RAW, _ids("s:a", "s:b", "s:b"), _ids("s:c", "s:d"))


def test_long_lists_are_truncated_to_ten():
    raw = _ids(*[f"s:{i:02d}" for i in range(30)])
    with pytest.raises(ConservationError) as err:
        ledger.check(raw, _ids(), _ids())
    lost_line = next(line for line in str(err.value).splitlines() if "lost" in line)
    assert lost_line.count("s:") == 10
    assert "s:00" in lost_line and "s:29" not in lost_line


def test_reject_builds_valid_rows(tmp_path):
    rows = pd.DataFrame([H.item_row("src:a.png"), H.item_row("src:b.png")], index=[5, 9])
    out = ledger.reject(rows, "filter", "decode", pd.Series(["zero_byte", "not_image"], index=[5, 9]), "why")
    assert out.index.tolist() == [5, 9]
    assert out["reason"].tolist() == ["zero_byte", "not_image"]
    assert out["detail"].tolist() == ["why", "why"]
    assert set(out["stage"]) == {"filter"} and set(out["rule"]) == {"decode"}
    written = manifest.write(out, tmp_path / "r.parquet", schemas.REJECTED)
    assert written["item_id"].tolist() == ["src:a.png", "src:b.png"]
    assert (written["schema_version"] == schemas.SCHEMA_VERSION).all()


def test_reject_of_nothing_is_empty_and_valid(tmp_path):
    rows = pd.DataFrame([H.item_row("src:a.png")]).iloc[:0]
    out = ledger.reject(rows, "filter", "decode", "x", "y")
    assert len(out) == 0
    assert len(manifest.write(out, tmp_path / "r.parquet", schemas.REJECTED)) == 0
    assert len(manifest.write(ledger.no_rejections(), tmp_path / "n.parquet", schemas.REJECTED)) == 0


def _rejected_part(path, ids, stage="filter"):
    rows = pd.DataFrame([H.item_row(i) for i in ids] or [H.item_row("none")]).iloc[: len(ids)]
    manifest.write(ledger.reject(rows, stage, "rule", "reason", "detail"), path, schemas.REJECTED)
    return path


def test_reject_records_triggered_tags(tmp_path):
    rows = pd.DataFrame([H.item_row("src:a.png"), H.item_row("src:b.png")], index=[3, 4])
    per_row = ledger.reject(rows, "policy", "minors", "minor_sexual", "why", pd.Series([["loli"], ["child", "nude"]], index=[3, 4]))
    assert [list(t) for t in per_row["triggered_tags"]] == [["loli"], ["child", "nude"]]
    same = ledger.reject(rows, "policy", "artists", "excluded_artist", "why", ["someone"])
    assert [list(t) for t in same["triggered_tags"]] == [["someone"], ["someone"]]
    none = ledger.reject(rows, "filter", "decode", "zero_byte", "why")
    assert [list(t) for t in none["triggered_tags"]] == [[], []]
    written = manifest.write(per_row, tmp_path / "r.parquet", schemas.REJECTED)
    assert [list(t) for t in manifest.read(tmp_path / "r.parquet", schemas.REJECTED)["triggered_tags"]] == [["loli"], ["child", "nude"]]
    assert len(written) == 2


def test_rejected_stage_merges_parts(tmp_path):
    parts = [
        _rejected_part(tmp_path / "filter.parquet", ["s:b", "s:a"]),
        _rejected_part(tmp_path / "dedup.parquet", ["s:c"], stage="dedup"),
    ]
    merged = rejected_stage.run(parts, tmp_path / "rejected.parquet")
    assert merged["item_id"].tolist() == ["s:a", "s:b", "s:c"]
    on_disk = manifest.read(tmp_path / "rejected.parquet", schemas.REJECTED)
    assert dict(zip(on_disk["item_id"], on_disk["stage"])) == {"s:a": "filter", "s:b": "filter", "s:c": "dedup"}


def test_rejected_stage_refuses_an_item_rejected_twice(tmp_path):
    parts = [
        _rejected_part(tmp_path / "filter.parquet", ["s:a", "s:b"]),
        _rejected_part(tmp_path / "dedup.parquet", ["s:b"], stage="dedup"),
    ]
    with pytest.raises(ValueError, match="more than one stage: s:b"):
        rejected_stage.run(parts, tmp_path / "rejected.parquet")
    assert not (tmp_path / "rejected.parquet").exists()


def test_rejected_stage_with_nothing_rejected(tmp_path):
    parts = [_rejected_part(tmp_path / "filter.parquet", []), _rejected_part(tmp_path / "dedup.parquet", [], stage="dedup")]
    merged = rejected_stage.run(parts, tmp_path / "rejected.parquet")
    assert len(merged) == 0
    assert list(manifest.read(tmp_path / "rejected.parquet", schemas.REJECTED).columns) == list(schemas.REJECTED.columns)


def test_real_chain_balances(tmp_path):
    raw = tmp_path / "raw"
    H.save(H.sample("astronaut.png", (200, 200)), raw / "a.png")
    (raw / "copy.png").write_bytes((raw / "a.png").read_bytes())
    H.save(H.sample("coffee.png", (200, 200)), raw / "b.png", quality=90)
    H.save(H.sample("coffee.png", (150, 150)), raw / "b_small.png")
    H.write_bytes(raw / "zero.png", b"")
    H.save(H.sample("chelsea.png", (30, 30)), raw / "tiny.png")
    # a minor tag with a sexual rating, and an untagged copy that follows it out
    H.sidecar(H.save(H.sample("rocket.jpg", (200, 200)), raw / "minor.png"), ["shota"], rating="explicit")
    (raw / "minor_copy.png").write_bytes((raw / "minor.png").read_bytes())
    c = H.Chain(tmp_path, [H.source(raw)])
    kept = c.through_dedup(min_side=64, max_distance=10)
    rejected = c.rejected()
    ingest = c.read("ingest", schemas.INGEST)
    assert ledger.check(ingest, kept, rejected) == {"raw": 8, "kept": 2, "rejected": 6}
    assert dict(zip(rejected["item_id"], rejected["reason"])) == {
        "src:copy.png": "exact_duplicate",
        "src:b_small.png": "near_duplicate",
        "src:zero.png": "zero_byte",
        "src:tiny.png": "too_small",
        "src:minor.png": "minor_sexual",
        "src:minor_copy.png": "minor_sexual",
    }
    stages = dict(zip(rejected["item_id"], zip(rejected["stage"], rejected["rule"])))
    assert stages["src:zero.png"] == ("filter", "decode")
    assert stages["src:tiny.png"] == ("filter", "audit")
    assert stages["src:minor_copy.png"] == ("policy", "minors")
    assert stages["src:copy.png"] == ("dedup", "exact") and stages["src:b_small.png"] == ("dedup", "near")
    # the merged manifest is the two parts together
    parts = [c.read("rej_filter", schemas.REJECTED), c.read("rej_dedup", schemas.REJECTED)]
    assert sorted(rejected["item_id"]) == sorted(pd.concat(parts)["item_id"])
    with pytest.raises(ConservationError, match="lost.*src:zero.png"):
        ledger.check(ingest, kept, rejected[rejected["item_id"] != "src:zero.png"])
