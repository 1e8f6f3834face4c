"""report stage: counts per stage and reason, GO/NO-GO with fixes, deterministic metrics, leakage."""

from __future__ import annotations

import json

import pytest
from PIL import Image

import stage_helpers as H
from trainset import manifest, schemas
from trainset.ledger import ConservationError
from trainset.stages import report

PASSING = {"min_kept": 1, "max_rejected_share": 0.9, "max_split_leakage": 0}
MAX_DISTANCE = 10


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


def _paths(c) -> dict:
    keys = ("ingest", "audit", "filtered", "exact", "deduped", "captioned", "split", "moves", "rejected")
    return {**{k: c.p[k] for k in keys}, "export": c.p["export"] / "manifest.parquet"}


def _report(c, out, thresholds=PASSING, **over):
    md, metrics = out / "dataset-report.md", out / "metrics.json"
    result = report.run({**_paths(c), **over}, md, metrics, thresholds, MAX_DISTANCE)
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
        "raw": 12, "audited": 12, "filtered": 10, "exact_deduped": 7,
        "near_deduped": 6, "captioned": 6, "split": 6, "exported": 6,
    }
    for stage, n in metrics["stages"].items():
        assert f"| {stage} | {n} |" in md
    assert metrics["rejected_by_reason"] == {"exact_duplicate": 3, "near_duplicate": 1, "too_small": 1, "zero_byte": 1}
    assert "| dedup | exact | exact_duplicate | 3 |" in md
    assert "| dedup | near | near_duplicate | 1 | `photos:coffee_small.png` |" in md
    assert "| filter | decode | zero_byte | 1 | `photos:empty.png` |" in md
    assert "| filter | min_side | too_small | 1 | `photos:tiny.png` |" in md
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
    assert metrics["split_moves"] == 0
    assert metrics["sidecar_errors"] == 1
    assert "## Unreadable sidecars" in md
    assert "| `photos:tags/horse.png` | horse.json: " in md
    assert "No item changed split since the last build." in md
    assert "Leakage: 0 duplicate pairs cross splits." in md
    assert "0 items were converted for export" in md


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
        "previous_cluster_key": "f" * 64, "cluster_key": item["cluster_key"],
    }], moves, schemas.MOVES)
    metrics, md, _ = _report(chain, tmp_path, moves=moves)
    assert metrics["split_moves"] == 1
    assert "1 items changed split since the last build" in md
    assert f"| `{item['item_id']}` | {other} | {item['split']} | {'f' * 16} | {item['cluster_key'][:16]} |" in md


# --------------------------------------------------------------------------- leakage and decide


def _split(rows):
    return H.frame(rows, schemas.SPLIT)


def test_leakage_finds_near_pair_across_splits():
    rows = [
        H.item_row("s:a", split="train", phash="0000000000000000"),
        H.item_row("s:b", split="val", phash="0000000000000007"),  # 3 bits from a
        H.item_row("s:c", split="test", phash="ffffffffffffffff"),  # far from both
    ]
    assert report.leakage(_split(rows), MAX_DISTANCE) == [{"a": "s:a", "b": "s:b", "distance": 3, "splits": "train/val"}]
    assert report.leakage(_split(rows), 2) == []


def test_leakage_ignores_pairs_in_the_same_split():
    rows = [
        H.item_row("s:a", split="train", phash="0000000000000000"),
        H.item_row("s:b", split="train", phash="0000000000000001"),
    ]
    assert report.leakage(_split(rows), MAX_DISTANCE) == []
    assert report.leakage(_split(rows[:1]), MAX_DISTANCE) == []


def test_leakage_counts_an_exact_pair_once():
    sha = H.fake_sha("same bytes")
    rows = [
        H.item_row("s:a", sha, split="train", phash="00000000000000ff"),
        H.item_row("s:b", sha, split="test", phash="00000000000000ff"),
    ]
    assert report.leakage(_split(rows), MAX_DISTANCE) == [{"a": "s:a", "b": "s:b", "distance": 0, "splits": "train/test"}]


def test_leakage_by_sha_names_members_in_different_splits():
    """Same bytes recorded with far-apart hashes (only the sha256 ties them): reported by sha."""
    sha = H.fake_sha("same bytes")
    rows = [
        H.item_row("s:a", sha, split="train", phash="0000000000000000"),
        H.item_row("s:b", sha, split="train", phash="00000000ffffffff"),
        H.item_row("s:c", sha, split="val", phash="ffffffffffffffff"),
    ]
    found = report.leakage(_split(rows), MAX_DISTANCE)
    assert found == [
        {"a": "s:a", "b": "s:c", "distance": 0, "splits": "train/val"},
        {"a": "s:b", "b": "s:c", "distance": 0, "splits": "train/val"},
    ]


def test_leakage_on_real_near_duplicates_placed_apart(chain):
    """Take the real near-duplicate pair dedup found and put its members in different splits."""
    pairs = manifest.read(chain.p["pairs"], schemas.PAIRS)
    exact = H.by_id(manifest.read(chain.p["exact"], schemas.FILTERED))
    pair = pairs[pairs["a"].str.contains("coffee") & pairs["b"].str.contains("coffee")].iloc[0]
    rows = [
        H.item_row(pair["a"], exact[pair["a"]]["sha256"], phash=exact[pair["a"]]["phash"], split="train"),
        H.item_row(pair["b"], exact[pair["b"]]["sha256"], phash=exact[pair["b"]]["phash"], split="val"),
        H.item_row("photos:rocket.png", exact["photos:rocket.png"]["sha256"], phash=exact["photos:rocket.png"]["phash"], split="test"),
    ]
    found = report.leakage(_split(rows), MAX_DISTANCE)
    assert found == [{"a": pair["a"], "b": pair["b"], "distance": int(pair["distance"]), "splits": "train/val"}]


def test_decide_flags_leakage_with_fix():
    metrics = {"kept": 20, "rejected_share": 0.1, "rejected_by_reason": {"too_small": 2}, "split_leakage": 2}
    checks = report.decide(metrics, {"min_kept": 10, "max_rejected_share": 0.5, "max_split_leakage": 0})
    assert [c["ok"] for c in checks] == [True, True, False]
    assert "near_dup.max_distance" in checks[2]["fix"]
    assert report.decide(metrics, {"max_split_leakage": 2})[2]["ok"] is True


def test_decide_without_rejections():
    metrics = {"kept": 3, "rejected_share": 0.0, "rejected_by_reason": {}, "split_leakage": 0}
    checks = report.decide(metrics, {"min_kept": 3, "max_rejected_share": 0.0})
    assert all(c["ok"] for c in checks)
    assert checks[1]["fix"] == "inspect the rejected manifest"
