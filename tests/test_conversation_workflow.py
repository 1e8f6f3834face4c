"""End to end: the conversation half of the workflow on the demo conversations and on user batches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from trainset import manifest, schemas
from trainset.conversations import demo, export, sources, stages

from conftest import copy_workflow, set_params, snakemake

NOTHING = "Nothing to be done"
TARGETS = ("data/export-conversations", "data/report/conversations-report.md", "data/report/conversations-metrics.json")


def _build(project: Path, *options: str):
    return snakemake(project, *TARGETS, *options)


@pytest.fixture(scope="module")
def built(built_demo) -> Path:
    return built_demo


def _rejected(project: Path) -> pd.DataFrame:
    return manifest.read(project / "data/conversations/rejected.parquet", schemas.CONVERSATIONS_REJECTED).set_index("id")


def _kept(project: Path) -> pd.DataFrame:
    return manifest.read(project / "data/conversations/split.parquet", schemas.CONVERSATIONS_SPLIT).set_index("id")


def _json(project: Path, rel: str) -> dict:
    return json.loads((project / rel).read_text())


def test_every_planted_problem_is_rejected_where_and_why_expected(built: Path) -> None:
    rejected = _rejected(built)
    expected = {
        "demo_general:general.jsonl#4": ("read", "unreadable"),
        "demo_general:general.jsonl#8": ("read", "unreadable"),
        "demo_reasoning:reasoning.csv#16": ("read", "unreadable"),
        "demo_counseling:counseling.csv#12": ("read", "unreadable"),
        "demo_general:g14": ("filter", "toxicity"),
        "demo_general:g15": ("filter", "language"),
        "demo_general:g16": ("filter", "coherence_mean"),
        "demo_general:g17": ("filter", "crisis"),
        "demo_sessions:s3": ("filter", "structure"),
        "demo_general:g20": ("decontaminate", "contaminates"),
        "demo_voice:v08": ("dedup", "exact"),
        "demo_general:g18": ("dedup", "near"),
        "demo_general:g19": ("dedup", "semantic"),
    }
    for item, (stage, rule) in expected.items():
        assert (rejected.at[item, "stage"], rejected.at[item, "rule"]) == (stage, rule), item
    assert rejected.at["demo_voice:v08", "duplicate_of"] == "demo_general:g03"
    assert rejected.at["demo_general:g20", "duplicate_of"] == "demo_heldout:h01"
    # the rest of the rejections are the curriculum's: stages that reached their targets
    others = rejected.drop(index=list(expected))
    assert set(others["stage"]) <= {"curriculum"} and set(others["rule"]) <= {"unselected"}
    assert all("reached" in r for r in others["reason"])


def test_ledger_balances_and_report_says_go(built: Path) -> None:
    metrics = _json(built, "data/report/conversations-metrics.json")
    parts = [p for p in (built / "data/conversations/read").glob("*.parquet")
             if not p.name.endswith(".rejected.parquet") and p.stem != "demo_heldout"]  # the eval set is not training data
    read = sum(len(manifest.read(p, schemas.CONVERSATIONS)) for p in parts)
    assert metrics["read"] == read == metrics["kept"] + metrics["rejected"]
    assert metrics["unreadable_records"] == 4
    assert metrics["go"] is True
    report = (built / "data/report/conversations-report.md").read_text()
    assert report.startswith("# Conversation report: GO")
    assert "stage edge_cases cannot reach its share" in report  # 6 edge cases for a 20 % share


def test_edge_cases_bypass_safety_tagged_and_pii_is_redacted(built: Path) -> None:
    kept = _kept(built)
    edge = kept[kept["is_training_edge_case"]]
    assert len(edge) == len(demo.EDGE_CASES) and set(edge["stage"]) == {"edge_cases"}
    # e05's assistant asks about hurting someone: a violence hit that would reject an ordinary item
    assert "edge_case:violence:assistant" in list(kept.at["demo_edge_cases:e05", "flags"])
    landlord = kept.loc["demo_general:g13"]
    text = " ".join(m["content"] for m in landlord["messages"])
    assert "jamie.rivera@example.com" not in text and "[EMAIL]" in text and "[PHONE]" in text
    assert "pii_redacted:email,phone" in list(landlord["flags"])


def test_exports_load_with_datasets_and_match_their_manifest(built: Path) -> None:
    from datasets import load_dataset

    out = built / "data/export-conversations"
    assert export.verify(out) == []
    man = _json(built, "data/export-conversations/manifest.json")
    kept = _kept(built)
    train = load_dataset("parquet", data_files=str(out / "foundation/train.parquet"), split="train")
    assert train.num_rows == int(((kept["stage"] == "foundation") & (kept["split"] == "train")).sum()) > 0
    assert {m["role"] for row in train["messages"] for m in row} <= {"system", "user", "assistant"}
    dpo = load_dataset("json", data_files=str(out / "safety_dpo/train.jsonl"), split="train")
    assert set(dpo.column_names) >= {"prompt", "chosen", "rejected"}
    assert dpo[0]["rejected"][0]["role"] == "assistant"
    assert man["seed"] == 1337 and len(man["params_digest"]) == 16
    rows = {name: info["rows"] for name, info in man["files"].items()}
    assert sum(rows.values()) == 2 * len(kept)  # every kept conversation once in JSONL and once in Parquet


SIGNATURES = "data/conversations/shards/signatures"
DEDUP_OUTPUTS = ("data/conversations/deduped.parquet", "data/conversations/rejected/dedup.parquet",
                 "data/run/conversations-dedup-stats.json")


def _signed_ids(project: Path) -> dict[str, set[str]]:
    """Shard -> the conversation ids its conversations_sign job wrote signatures for."""
    out = {}
    for path in sorted((project / SIGNATURES).glob("*.npz")):
        with np.load(path) as saved:
            out[path.stem] = set(saved["ids"].tolist())
    return out


def test_signatures_are_made_per_shard_and_dedup_decides_as_without_them(built: Path, tmp_path: Path) -> None:
    shards = _json(built, "data/conversations/shards/index.json")
    signed = _signed_ids(built)
    assert sorted(signed) == sorted(shards) and shards
    filtered = manifest.read(built / "data/conversations/filtered.parquet", schemas.CONVERSATIONS_KEPT)
    assert set().union(*signed.values()) == set(filtered["id"])
    # the dedup stage run alone, computing every signature itself on a fresh index: the same bytes
    params = yaml.safe_load((built / "params.yaml").read_text())
    conv = params["conversations"]
    evals = [built / f"data/conversations/read/{s.name}.parquet" for s in sources.eval_sets_from_params(params, built)]
    alone = {rel: tmp_path / Path(rel).name for rel in DEDUP_OUTPUTS}
    stages.deduplicate(built / "data/conversations/filtered.parquet", evals, *list(alone.values())[:2],
                       {**(conv.get("dedup") or {}), "casefold": bool(conv.get("casefold", True))}, tmp_path / "index",
                       built / "data/cache/conversations", list(alone.values())[2])
    for rel, path in alone.items():
        assert path.read_bytes() == (built / rel).read_bytes(), rel


def test_rerun_does_nothing(built: Path) -> None:
    proc = _build(built, "--nolock")  # the shared build: other tests may be copying it meanwhile
    assert NOTHING in proc.stdout + proc.stderr


def _batch(folder: Path, name: str, rows: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _chat(*turns: str) -> dict:
    return {"messages": [{"role": "user" if k % 2 == 0 else "assistant", "content": t} for k, t in enumerate(turns)]}


def test_a_new_batch_costs_only_its_own_items_and_edge_cases_bypass_only_in_their_source(tmp_path: Path) -> None:
    project = copy_workflow(tmp_path / "project")
    folder = tmp_path / "batches"
    first = _batch(folder, "part-1.jsonl", [
        {"id": "b1", **_chat("How do I descale a kettle?", "Fill it halfway with equal parts water and white vinegar, "
                             "boil, let it sit for an hour, then rinse well and boil fresh water once.")},
        {"id": "b2", **_chat("What's a good stretch for a stiff neck?", "Sit tall and slowly tilt your ear toward your "
                             "shoulder, hold for twenty seconds, then switch sides. Stop if it hurts.")},
    ])
    assert first.exists()
    set_params(project, conversations__sources=[{"name": "mine", "path": str(folder), "shape": "openai", "license": "CC0-1.0"}],
               shards__size=10)
    _build(project)
    signed_first = {p.stem: p.stat().st_mtime_ns for p in (project / SIGNATURES).glob("*.npz")}
    dedup_first = _json(project, "data/run/conversations-dedup-stats.json")
    filter_first = _json(project, "data/run/conversations-filter-stats.json")
    assert filter_first["scores_reused"] == 0
    kept_before = set(_kept(project).index) | set(_rejected(project).query("stage == 'curriculum'").index)

    # batch two: a new item, an exact copy of a demo item, and an edge case's text in this ordinary source
    e05 = dict(demo.EDGE_CASES)["e05"]
    _batch(folder, "part-2.jsonl", [
        {"id": "c1", **_chat("How can I keep cut flowers fresh longer?", "Trim the stems at an angle, change the water "
                             "every two days and keep the vase away from direct sun and ripening fruit.")},
        {"id": "c2", "messages": dict(demo.GENERAL)["g09"]},
        {"id": "c3", "messages": e05},
    ])
    _build(project)
    filter_second = _json(project, "data/run/conversations-filter-stats.json")
    dedup_second = _json(project, "data/run/conversations-dedup-stats.json")
    # scores are keyed by content: c2 and c3 repeat demo items' messages, so only c1 is scored
    assert filter_second["scored"] == 1 and filter_second["scores_reused"] == filter_first["read"] + 2
    assert dedup_second["new"] == 2 and dedup_second["signatures_computed"] == 2  # c3 never reaches dedup
    assert dedup_second["known"] == dedup_first["conversations"]
    # only the shard(s) the new conversations landed in were signed again; full shards' jobs stayed done
    signed = _signed_ids(project)
    landed = {shard for shard, ids in signed.items() if ids & {"mine:part-2.jsonl:c1", "mine:part-2.jsonl:c2"}}
    resigned = {p.stem for p in (project / SIGNATURES).glob("*.npz") if p.stat().st_mtime_ns != signed_first.get(p.stem)}
    assert landed and resigned == landed and len(signed) > len(landed) + 1
    rejected = _rejected(project)
    assert rejected.at["mine:part-2.jsonl:c2", "rule"] == "exact"
    assert rejected.at["mine:part-2.jsonl:c2", "duplicate_of"] == "demo_general:g09"
    # the same words that the edge-case source keeps (flagged) reject an ordinary item
    assert (rejected.at["mine:part-2.jsonl:c3", "stage"], rejected.at["mine:part-2.jsonl:c3", "rule"]) == ("filter", "violence")
    assert "demo_edge_cases:e05" in _kept(project).index
    # nothing kept or staged before was displaced by the batch's duplicates
    after = set(_kept(project).index) | set(_rejected(project).query("stage == 'curriculum'").index)
    assert kept_before <= after


def test_no_conversation_source_builds_empty_outputs_and_says_so(tmp_path: Path) -> None:
    project = copy_workflow(tmp_path / "project")  # an image-only repository: `snakemake --cores all` must not fail here
    set_params(project, conversations__demo=False)
    _build(project)
    assert len(_kept(project)) == 0 and len(_rejected(project)) == 0
    assert _json(project, "data/export-conversations/manifest.json")["files"] == {}
    assert _json(project, "data/report/conversations-metrics.json")["go"] is None
    assert (project / "data/report/conversations-report.md").read_text().startswith("# Conversation report: no conversations")
