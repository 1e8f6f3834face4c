"""report stage: counts per stage and reason, GO/NO-GO with fixes, deterministic metrics, leakage,
and the audit, policy, balance and unmatched-records sections."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from PIL import Image

import stage_helpers as H
from trainset import audit_checks, manifest, schemas
from trainset.ledger import ConservationError
from trainset.stages import report

PASSING = {"min_kept": 1, "max_rejected_share": 0.9, "max_split_leakage": 0}
MAX_DISTANCE = 10
RULE = f"distance<={MAX_DISTANCE}"


def _build(root):
    """A real chain: 6 distinct photos kept (one with an unreadable sidecar), 3 exact copies,
    1 near copy, 1 empty file, 1 tiny image."""
    raw = root / "raw"
    photos = {}
    for name in ("astronaut.png", "chelsea.png", "coffee.png", "camera.png", "rocket.jpg"):
        stem = name.split(".")[0]
        photos[stem] = H.save(H.sample(name, (240, 200)), raw / f"{stem}.png")
    (raw / "tags").mkdir()
    (raw / "tags" / "horse.json").write_text("{not json")  # kept, but its sidecar is unreadable
    H.save(H.sample("horse.png", (240, 200)), raw / "tags" / "horse.png")
    for k in range(3):
        (raw / "copies" / f"cat{k}.png").parent.mkdir(parents=True, exist_ok=True)
        (raw / "copies" / f"cat{k}.png").write_bytes(photos["chelsea"].read_bytes())
    H.save(H.sample("coffee.png", (240, 200)).resize((180, 150), Image.Resampling.LANCZOS), raw / "coffee_small.png")
    H.write_bytes(raw / "empty.png", b"")
    H.save(H.sample("moon.png", (40, 30)), raw / "tiny.png")
    c = H.Chain(root, [H.source(raw, name="photos", license="CC0-1.0")])
    c.through_dedup(min_side=64, max_distance=MAX_DISTANCE)
    c.caption()
    c.split(fractions={"train": 0.6, "val": 0.2, "test": 0.2})
    c.rejected()
    c.export()
    return c


def _report(c, out, thresholds=PASSING, balance=None, audit=None, **over):
    md, metrics = out / "dataset-report.md", out / "metrics.json"
    result = report.run(c.report_paths(**over), md, metrics, thresholds, balance_params=balance, audit_params=audit)
    return result, md.read_text(encoding="utf-8"), metrics


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("report"))


def test_go_report_has_counts_and_reasons(chain, tmp_path):
    metrics, md, metrics_path = _report(chain, tmp_path)
    assert md.startswith("# Dataset report: GO\n")
    assert metrics["go"] is True
    assert (metrics["raw"], metrics["kept"], metrics["rejected"]) == (12, 6, 6)
    assert metrics["stages"] == {
        "raw": 12, "audited": 12, "filtered": 10, "deduped": 6, "captioned": 6, "split": 6, "exported": 6,
    }
    for stage, n in metrics["stages"].items():
        assert f"| {stage} | {n} |" in md
    assert metrics["rejected_by_reason"] == {"exact_duplicate": 3, "near_duplicate": 1, "too_small": 1, "zero_byte": 1}
    assert "| dedup | exact | exact_duplicate | 3 |" in md
    assert "| dedup | near | near_duplicate | 1 | `photos:coffee_small.png` |" in md
    assert "| filter | decode | zero_byte | 1 | `photos:empty.png` |" in md
    assert "| filter | audit | too_small | 1 | `photos:tiny.png` |" in md
    assert report.FIXES["exact_duplicate"] in md
    assert "12 raw items: 6 kept" in md and "6 rejected" in md
    assert "**NO-GO**" not in md
    assert json.loads(metrics_path.read_text()) == metrics


def test_metrics_values(chain, tmp_path):
    metrics, md, _ = _report(chain, tmp_path)
    export = manifest.read(chain.p["export"] / "manifest.parquet", schemas.EXPORT)
    assert metrics["splits"] == {s: int((export["split"] == s).sum()) for s in schemas.SPLITS}
    assert sum(metrics["splits"].values()) == 6
    assert metrics["sources"] == {"photos": 12}
    assert metrics["rejected_share"] == round(6 / 12, 6)
    assert metrics["converted"] == 0
    assert metrics["split_leakage"] == 0
    assert (metrics["reference_matches"], metrics["reference_matches_kept"]) == (0, 0)
    assert "Reference sets: 0 items duplicate an image of a reference set (0 of them kept)." in md
    assert metrics["split_moves"] == 0
    assert metrics["sidecar_errors"] == 1
    assert "## Unreadable sidecars" in md
    assert "| `photos:tags/horse.png` | horse.json: " in md
    assert "No item changed split since the last build." in md
    assert "Leakage: 0 duplicate pairs cross splits." in md
    assert "0 items were converted for export" in md
    # nothing policy-related happened, and there are no orphan metadata records
    assert metrics["excluded_by_rule"] == {} and metrics["nsfw_flagged_kept"] == 0
    assert "No item was excluded by policy." in md
    assert metrics["untagged_raw"] == 12  # no sidecar here gives tags (the horse's is unreadable)
    assert "0 kept items are flagged NSFW; 12 raw items have no tags and no rating." in md
    assert metrics["unmatched_records"] == 0 and "## Metadata records with no image" not in md
    assert metrics["balance_cells_under_min"] == 0 and "## Balance" not in md


def test_min_kept_too_high_is_no_go(chain, tmp_path):
    metrics, md, _ = _report(chain, tmp_path, {**PASSING, "min_kept": 50})
    assert metrics["go"] is False
    assert md.startswith("# Dataset report: NO-GO\n")
    line = next(line for line in md.splitlines() if line.startswith("| at least 50 items kept"))
    assert "**NO-GO**" in line
    assert "add images to your sources (44 more needed) or lower report.min_kept" in line
    share = next(line for line in md.splitlines() if line.startswith("| rejected share"))
    assert "| pass |" in share


def test_rejected_share_too_low_is_no_go_naming_largest_reason(chain, tmp_path):
    metrics, md, _ = _report(chain, tmp_path, {**PASSING, "max_rejected_share": 0.1})
    assert metrics["go"] is False
    assert md.startswith("# Dataset report: NO-GO")
    line = next(line for line in md.splitlines() if line.startswith("| rejected share at most 10%"))
    assert "**NO-GO**" in line and "50.0%" in line
    assert f"the largest reason is exact_duplicate (3 items): {report.FIXES['exact_duplicate']}" in line


def test_metrics_and_report_are_deterministic(chain, tmp_path, tmp_path_factory):
    _, md1, m1 = _report(chain, tmp_path / "one")
    _, md2, m2 = _report(chain, tmp_path / "two")
    assert m1.read_bytes() == m2.read_bytes()
    assert md1 == md2
    # a whole second build from the same inputs, in another folder, gives the same bytes
    other = _build(tmp_path_factory.mktemp("report-again"))
    _, md3, m3 = _report(other, tmp_path / "three")
    assert m3.read_bytes() == m1.read_bytes()
    assert md3 == md1
    assert list(json.loads(m1.read_text())) == sorted(json.loads(m1.read_text()))


def test_report_refuses_an_unbalanced_ledger(chain, tmp_path):
    export = manifest.read(chain.p["export"] / "manifest.parquet", schemas.EXPORT)
    dropped = export["item_id"].iloc[0]
    short = tmp_path / "export.parquet"
    manifest.write(export.iloc[1:], short, schemas.EXPORT)
    with pytest.raises(ConservationError, match=f"lost.*{dropped}"):
        _report(chain, tmp_path, export=short)
    assert not (tmp_path / "metrics.json").exists()


def test_moves_are_listed(chain, tmp_path):
    split = manifest.read(chain.p["split"], schemas.SPLIT)
    item = split.iloc[0]
    other = next(s for s in schemas.SPLITS if s != item["split"])
    moves = tmp_path / "moves.parquet"
    H.write_manifest([{
        "item_id": item["item_id"], "previous_split": other, "split": item["split"],
        "previous_component_key": "f" * 64, "component_key": item["component_key"],
    }], moves, schemas.MOVES)
    metrics, md, _ = _report(chain, tmp_path, moves=moves)
    assert metrics["split_moves"] == 1
    assert "1 items changed split since the last build, because a new item joined or bridged their near-duplicate component:" in md
    assert "| item | was | now | component key was | component key now |" in md
    assert f"| `{item['item_id']}` | {other} | {item['split']} | {'f' * 16} | {item['component_key'][:16]} |" in md


# --------------------------------------------------------------------------- leakage and decide


def _split(rows):
    return H.frame(rows, schemas.SPLIT)


def _pairs(*pairs) -> pd.DataFrame:
    """A pairs manifest frame from ``(item_a, item_b, distance[, rule])``: the contents of the
    item_rows of those ids (their fake SHA-256s), a < b."""
    rows = []
    for a, b, distance, *rule in pairs:
        sa, sb = sorted((H.fake_sha(a), H.fake_sha(b)))
        rows.append({"a": sa, "b": sb, "distance": distance, "cosine": float("nan"), "rule": rule[0] if rule else RULE})
    return H.frame(rows, schemas.PAIRS)


def _ordered(a: str, b: str) -> tuple[str, str]:
    """Two item ids in the order the pairs manifest names their contents (smaller SHA-256 first)."""
    return tuple(sorted((a, b), key=H.fake_sha))


def test_leakage_finds_near_pair_across_splits():
    rows = [
        H.item_row("s:a", split="train"),
        H.item_row("s:b", split="val"),
        H.item_row("s:c", split="test"),  # paired with neither
    ]
    splits = {"s:a": "train", "s:b": "val"}
    a, b = _ordered("s:a", "s:b")
    assert report.leakage(_split(rows), _pairs(("s:a", "s:b", 3))) == [
        {"a": a, "b": b, "distance": 3, "rule": RULE, "splits": f"{splits[a]}/{splits[b]}"}
    ]
    # a tighter rule that does not pair them: no leak
    assert report.leakage(_split(rows), _pairs()) == []
    # a pair with a content that is not kept (dropped or filtered) is no leak either
    assert report.leakage(_split(rows), _pairs(("s:a", "s:gone", 0))) == []


def test_leakage_ignores_pairs_in_the_same_split():
    rows = [
        H.item_row("s:a", split="train"),
        H.item_row("s:b", split="train"),
    ]
    assert report.leakage(_split(rows), _pairs(("s:a", "s:b", 1))) == []
    assert report.leakage(_split(rows[:1]), _pairs(("s:a", "s:b", 1))) == []


def test_leakage_counts_an_exact_pair_once():
    sha = H.fake_sha("same bytes")
    rows = [
        H.item_row("s:a", sha, split="train", phash="00000000000000ff"),
        H.item_row("s:b", sha, split="test", phash="00000000000000ff"),
    ]
    assert report.leakage(_split(rows), _pairs()) == [{"a": "s:a", "b": "s:b", "distance": 0, "rule": "exact", "splits": "train/test"}]


def test_leakage_by_sha_names_members_in_different_splits():
    """Same bytes (only the sha256 ties them, no pair in the manifest): reported by sha."""
    sha = H.fake_sha("same bytes")
    rows = [
        H.item_row("s:a", sha, split="train"),
        H.item_row("s:b", sha, split="train"),
        H.item_row("s:c", sha, split="val"),
    ]
    found = report.leakage(_split(rows), _pairs())
    assert found == [
        {"a": "s:a", "b": "s:c", "distance": 0, "rule": "exact", "splits": "train/val"},
        {"a": "s:b", "b": "s:c", "distance": 0, "rule": "exact", "splits": "train/val"},
    ]


def test_leakage_only_counts_pairs_not_chains():
    """a~b and b~c but not a~c: with b gone, a and c in different splits are no leak; with b
    kept next to c, only the pair a~b crosses."""
    pairs = _pairs(("s:a", "s:b", 8), ("s:b", "s:c", 8))
    rows = [H.item_row("s:a", split="train"), H.item_row("s:c", split="val")]
    assert report.leakage(_split(rows), pairs) == []
    found = report.leakage(_split([*rows, H.item_row("s:b", split="val")]), pairs)
    assert [{f["a"], f["b"]} for f in found] == [{"s:a", "s:b"}]


def test_leakage_on_real_near_duplicates_placed_apart(chain):
    """Take the real near-duplicate pair the group stage found and put its members in different splits."""
    pairs = manifest.read(chain.p["pairs"], schemas.PAIRS)
    filtered = manifest.read(chain.p["filtered"], schemas.FILTERED)
    exact = H.by_id(filtered)
    item_of = dict(zip(filtered["sha256"], filtered["item_id"]))
    pair = pairs[pairs["a"].map(item_of).str.contains("coffee") & pairs["b"].map(item_of).str.contains("coffee")].iloc[0]
    a, b = item_of[pair["a"]], item_of[pair["b"]]
    rows = [
        H.item_row(a, exact[a]["sha256"], phash=exact[a]["phash"], split="train"),
        H.item_row(b, exact[b]["sha256"], phash=exact[b]["phash"], split="val"),
        H.item_row("photos:rocket.png", exact["photos:rocket.png"]["sha256"], phash=exact["photos:rocket.png"]["phash"], split="test"),
    ]
    found = report.leakage(_split(rows), pairs)
    assert found == [{"a": a, "b": b, "distance": int(pair["distance"]), "rule": pair["rule"], "splits": "train/val"}]
    assert {a, b} == {"photos:coffee.png", "photos:coffee_small.png"}


def _check(checks: list[dict], start: str) -> dict:
    return next(c for c in checks if c["check"].startswith(start))


def test_decide_flags_leakage_with_fix():
    metrics = {"kept": 20, "rejected_share": 0.1, "rejected_by_reason": {"too_small": 2}, "split_leakage": 2, "reference_matches_kept": 0}
    checks = report.decide(metrics, {"min_kept": 10, "max_rejected_share": 0.5, "max_split_leakage": 0})
    assert [c["ok"] for c in checks] == [True, True, True, False]
    leak = _check(checks, "split leakage at most 0")
    assert leak is checks[-1] and leak["value"] == 2
    assert "pairs.parquet" in leak["fix"]
    assert _check(report.decide(metrics, {"max_split_leakage": 2}), "split leakage")["ok"] is True


def test_decide_flags_kept_reference_matches_with_fix():
    metrics = {"kept": 20, "rejected_share": 0.1, "rejected_by_reason": {}, "split_leakage": 0, "reference_matches_kept": 1}
    checks = report.decide(metrics, {"min_kept": 10, "max_rejected_share": 0.5})
    assert [c["ok"] for c in checks] == [True, True, False, True]
    ref = _check(checks, "kept items duplicating a reference set at most 0")
    assert ref["value"] == 1 and "near_dup.reference_action: reject" in ref["fix"]
    assert _check(report.decide(metrics, {"max_reference_matches": 1}), "kept items duplicating")["ok"] is True


def test_decide_without_rejections():
    metrics = {"kept": 3, "rejected_share": 0.0, "rejected_by_reason": {}, "split_leakage": 0, "reference_matches_kept": 0}
    checks = report.decide(metrics, {"min_kept": 3, "max_rejected_share": 0.0})
    assert all(c["ok"] for c in checks)
    assert checks[1]["fix"] == "inspect the rejected manifest"


# --------------------------------------------------------------------------- audit findings


def _section(md: str, title: str) -> list[str]:
    """The lines of one ``## title`` section (without the heading)."""
    lines = md.splitlines()
    start = lines.index(f"## {title}") + 1
    end = next((k for k in range(start, len(lines)) if lines[k].startswith("## ")), len(lines))
    return [line for line in lines[start:end] if line]


def test_audit_findings_lines(chain, tmp_path):
    metrics, md, _ = _report(chain, tmp_path, audit={"min_side": 64})
    lines = _section(md, "Audit findings")
    # the rejected ones (too small, empty), quoting the thresholds the filter used
    assert f"- {audit_checks.describe('too_small', 1, {'min_side': 64})}" in lines
    assert "- 1 image is below 64 px on the short side — upscale or remove it" in lines
    assert f"- {audit_checks.describe('zero_byte', 1)}" in lines
    # and every audit flag on a kept item, counted
    flagged = {code: n for code, n in metrics["flags"].items() if code in audit_checks.CODES}
    for code, n in flagged.items():
        assert f"- {audit_checks.describe(code, n, {'min_side': 64})}" in lines
    assert len(lines) == 2 + len(flagged)
    assert not any("duplicate" in line for line in lines)
    # without audit params the report quotes the default threshold
    _, md, _ = _report(chain, tmp_path / "defaults")
    assert f"below {audit_checks.DEFAULT_THRESHOLDS['min_side']} px" in md


def test_no_audit_findings_section_when_only_duplicates_were_rejected(tmp_path):
    raw = tmp_path / "raw"
    H.sidecar(H.save(H.sample("astronaut.png", (300, 300)), raw / "a.png"), ["space"], rating="g")
    H.write_bytes(raw / "b.png", (raw / "a.png").read_bytes())
    c = H.Chain(tmp_path, [H.source(raw)])
    c.through_dedup()
    c.caption()
    c.split()
    c.rejected()
    c.export()
    metrics = c.report()
    md = c.p["report"].read_text(encoding="utf-8")
    assert metrics["rejected_by_reason"] == {"exact_duplicate": 1}
    assert ("## Audit findings" in md) == any(code in audit_checks.CODES for code in metrics["flags"])


# --------------------------------------------------------------------------- policy, balance, unmatched


BALANCE = {
    "columns": ["archetype", "emotion"],
    "default": {"min": 1, "target": 2, "ideal": 3},
    "cells": [
        {"archetype": "villain", "emotion": "anger", "min": 2, "target": 3, "ideal": 4},
        {"archetype": "hero", "emotion": "sad"},
    ],
}
POLICY_IDS = ["src:minor.png", "src:minor_copy.png", "src:by_artist.png", "src:low.png", "other:moon.png"]


@pytest.fixture(scope="module")
def policy_chain(tmp_path_factory):
    """Items excluded by four policy rules, annotated items for the balance table, an NSFW flag."""
    root = tmp_path_factory.mktemp("report-policy")
    raw, other = root / "raw", root / "other"
    size = (200, 160)
    minor = H.save(H.sample("astronaut.png", size), raw / "minor.png")
    H.sidecar(minor, ["loli"], rating="q")
    H.write_bytes(raw / "minor_copy.png", minor.read_bytes())  # untagged: excluded with its copy
    H.sidecar(H.save(H.sample("brick.png", size), raw / "by_artist.png"), ["bad_artist", "wall"], rating="g")
    H.sidecar(H.save(H.sample("retina.jpg", size), raw / "low.png"), ["eye"], rating="g")
    H.sidecar(H.save(H.sample("chelsea.png", size), raw / "cat.png"), ["cat"], rating="g")
    H.sidecar(H.save(H.sample("rocket.jpg", size), raw / "rocket.png"), ["rocket"], rating="g")
    H.sidecar(H.save(H.sample("coffee.png", size), raw / "coffee.png"), ["cup"], rating="explicit")  # kept, NSFW flag
    H.save(H.sample("grass.png", size), raw / "grass.png")  # untagged, kept
    H.sidecar(H.save(H.sample("moon.png", size), other / "moon.png"), ["moon"], rating="g")
    notes = H.write_csv(root / "notes.csv", ["filename", "archetype", "emotion", "harmony_score", "notes"], [
        ["cat.png", "hero", "joy", "4", ""],
        ["rocket.png", "hero", "joy", "3", ""],
        ["coffee.png", "villain", "anger", "3", ""],
        ["low.png", "villain", "anger", "1", "off model"],
    ])
    c = H.Chain(root, [H.source(raw), H.source(other, name="other", license="proprietary")])
    c.through_dedup(policy={"excluded_artists": ["Bad Artist"], "license_allowlist": ["CC0-1.0"]}, annotations=[notes])
    c.caption()
    c.split()
    c.rejected()
    c.export()
    return c


def test_policy_section_counts_per_rule_without_item_ids(policy_chain, tmp_path):
    metrics, md, _ = _report(policy_chain, tmp_path)
    assert metrics["excluded_by_rule"] == {"annotations": 1, "artists": 1, "license": 1, "minors": 2}
    lines = _section(md, "Policy")
    assert lines[:2] == ["| rule | items excluded |", "|---|---|"]
    assert lines[2:6] == ["| annotations | 1 |", "| artists | 1 |", "| license | 1 |", "| minors | 2 |"]
    assert any(line.startswith("Policy exclusions are shown as counts only") for line in lines)
    assert lines[-1] == "1 kept item is flagged NSFW; 2 raw items have no tags and no rating."
    assert (metrics["nsfw_flagged_kept"], metrics["untagged_raw"]) == (1, 2)
    # policy rows in the rejected table carry no examples; no excluded item is named anywhere
    assert "| policy | minors | minor_sexual | 2 |  |" in md
    assert "| policy | license | license_not_allowed | 1 |  |" in md
    for item_id in POLICY_IDS:
        assert item_id not in md
        assert item_id.split(":", 1)[1] not in md
    assert metrics["rejected_by_reason"] == {"excluded_artist": 1, "license_not_allowed": 1, "low_harmony": 1, "minor_sexual": 2}
    assert (metrics["raw"], metrics["kept"], metrics["rejected"]) == (9, 4, 5)
    assert metrics["flags"].get("nsfw") == 1


def test_balance_table_flags_cells_under_min(policy_chain, tmp_path):
    metrics, md, _ = _report(policy_chain, tmp_path, balance=BALANCE)
    lines = _section(md, "Balance")
    assert lines[:2] == ["| archetype | emotion | count | min | target | ideal | status |", "|---|---|---|---|---|---|---|"]
    assert lines[2:5] == [
        "| hero | joy | 2 | 1 | 2 | 3 | on_target |",
        "| hero | sad | 0 | 1 | 2 | 3 | under_min |",
        "| villain | anger | 1 | 2 | 3 | 4 | under_min |",  # the low-harmony villain was excluded
    ]
    assert lines[-1] == "2 cells are under their minimum."
    assert metrics["balance_cells_under_min"] == 2
    # targets met: no cell flagged
    easy = {"columns": ["archetype", "emotion"], "default": {"min": 1, "target": 1, "ideal": 0}}
    metrics, md, _ = _report(policy_chain, tmp_path / "easy", balance=easy)
    assert metrics["balance_cells_under_min"] == 0
    assert _section(md, "Balance")[-1] == "Every cell meets its minimum."


def test_unknown_balance_column_fails(policy_chain, tmp_path):
    with pytest.raises(ValueError, match="balance.columns names unknown column"):
        _report(policy_chain, tmp_path, balance={"columns": ["mood"]})


def test_unmatched_records_section(policy_chain, tmp_path):
    orphans = tmp_path / "unmatched.parquet"
    manifest.write(H.frame([
        {"source": "booru", "record_id": "123", "md5": "a" * 32, "note": "no image file with this md5"},
        {"source": "booru", "record_id": None, "md5": None, "note": "posts.json line 7: not JSON"},
    ], schemas.UNMATCHED), orphans, schemas.UNMATCHED, sort_by=["source", "note"])
    metrics, md, _ = _report(policy_chain, tmp_path, unmatched=orphans)
    assert metrics["unmatched_records"] == 2
    lines = _section(md, "Metadata records with no image")
    assert lines[0] == "2 metadata records matched no image file or could not be read (they are not items):"
    assert lines[1:3] == ["| source | record | md5 | note |", "|---|---|---|---|"]
    assert "| booru | 123 | " + "a" * 32 + " | no image file with this md5 |" in lines
    assert "| booru |  |  | posts.json line 7: not JSON |" in lines
    # the ledger is about items: orphan records change no count
    assert (metrics["raw"], metrics["kept"], metrics["rejected"]) == (9, 4, 5)
    # the unmatched manifest is optional
    metrics, md, _ = _report(policy_chain, tmp_path / "none", unmatched=None)
    assert metrics["unmatched_records"] == 0 and "## Metadata records with no image" not in md


def test_report_on_an_empty_source(tmp_path):
    (tmp_path / "raw").mkdir()
    c = H.Chain(tmp_path, [H.source(tmp_path / "raw")])
    assert len(c.through_dedup()) == 0
    c.caption()
    c.split()
    c.rejected()
    c.export()
    metrics = c.report(thresholds={"min_kept": 1})
    assert (metrics["raw"], metrics["kept"], metrics["rejected"], metrics["go"]) == (0, 0, 0, False)
    md = c.p["report"].read_text(encoding="utf-8")
    assert md.startswith("# Dataset report: NO-GO\n")
    assert "Nothing was rejected." in md and "No item was excluded by policy." in md
