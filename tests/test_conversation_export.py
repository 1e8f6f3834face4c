"""Per-stage exports: loadable by ``datasets``, TRL's DPO form, manifest checksums, same bytes
from the same input, and a failed export that leaves the old one whole."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import datasets
import pandas as pd
import pytest

from trainset import provenance
from trainset.conversations import curriculum, export

FORMATS = {"foundation": "messages", "voice": "messages", "safety_dpo": "dpo"}
PARAMS = {"curriculum": {"size": None}, "split": {"eval_share": 0.1}}


def _row(cid: str, source: str, stage: str, side: str, rejected: str | None = None, turns: int = 1) -> dict:
    messages = [{"role": "system", "content": "You are a calm listener."}]
    for t in range(turns):
        messages += [{"role": "user", "content": f"{cid} asks, turn {t}: é ✓"}, {"role": "assistant", "content": f"Reply {t} to {cid}."}]
    return {"id": cid, "source": source, "stage": stage, "split": side, "messages": messages, "rejected_reply": rejected,
            "tier": "gold", "category": "general", "sha256": hashlib.sha256(cid.encode()).hexdigest()}


def _frame() -> pd.DataFrame:
    rows = [_row(f"forum:{k}", "forum", "foundation", "train") for k in range(12)]
    rows += [_row(f"forum:e{k}", "forum", "foundation", "eval") for k in range(3)]
    rows += [_row(f"annomi:{k}", "annomi", "voice", "train", turns=3) for k in range(5)]
    rows += [_row(f"pairs:{k}", "pairs", "safety_dpo", "train" if k < 4 else "eval", rejected=f"Bad reply {k}.", turns=2) for k in range(6)]
    rows += [_row("forum:left", "forum", curriculum.UNSELECTED, "train"), _row("forum:dirty", "forum", "foundation", "contaminated")]
    return pd.DataFrame(rows)


def _load(kind: str, path: Path, cache: Path) -> datasets.Dataset:
    return datasets.load_dataset(kind, data_files={"train": str(path)}, split="train", cache_dir=str(cache))


def test_messages_files_load_with_datasets_in_both_formats(tmp_path):
    out = tmp_path / "export"
    export.write(_frame(), out, FORMATS, seed=1, params=PARAMS)
    for kind, name in (("json", "train.jsonl"), ("parquet", "train.parquet")):
        ds = _load(kind, out / "foundation" / name, tmp_path / f"cache-{kind}")
        assert ds.column_names == ["messages", "id", "source"]
        assert ds["id"] == sorted(f"forum:{k}" for k in range(12))
        assert ds[0]["messages"][0] == {"role": "system", "content": "You are a calm listener."}
        assert ds[0]["messages"][1]["content"] == "forum:0 asks, turn 0: é ✓"
    assert len(_load("parquet", out / "voice" / "train.parquet", tmp_path / "cache-v")[0]["messages"]) == 7


def test_dpo_files_hold_prompt_chosen_and_rejected_as_message_lists(tmp_path):
    out = tmp_path / "export"
    export.write(_frame(), out, FORMATS, seed=1, params=PARAMS)
    for kind, name in (("json", "train.jsonl"), ("parquet", "train.parquet")):
        ds = _load(kind, out / "safety_dpo" / name, tmp_path / f"cache-{kind}")
        assert ds.column_names == ["prompt", "chosen", "rejected", "id", "source"]
        first = ds[0]
        assert first["id"] == "pairs:0"
        assert [m["role"] for m in first["prompt"]] == ["system", "user", "assistant", "user"]
        assert first["prompt"][-1]["content"] == "pairs:0 asks, turn 1: é ✓"
        assert first["chosen"] == [{"role": "assistant", "content": "Reply 1 to pairs:0."}]
        assert first["rejected"] == [{"role": "assistant", "content": "Bad reply 0."}]
    assert len(_load("json", out / "safety_dpo" / "eval.jsonl", tmp_path / "cache-e")) == 2


def test_manifest_checksums_counts_and_provenance(tmp_path):
    out = tmp_path / "export"
    table = pd.DataFrame([{"stage": "voice", "selected": 5, "shortfall": 3, "note": None, "achieved_share": float("nan")}])
    manifest = export.write(_frame(), out, FORMATS, seed=42, params=PARAMS, quality={"mean_score": 0.82, "rejected": 3},
                            stages_table=table)
    assert json.loads((out / "manifest.json").read_text()) == manifest
    on_disk = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != "manifest.json")
    assert sorted(manifest["files"]) == on_disk
    assert "voice/eval.jsonl" not in on_disk  # an empty split has no files
    for name, entry in manifest["files"].items():
        data = (out / name).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["bytes"] == len(data)
    assert manifest["files"]["foundation/train.parquet"]["rows"] == 12
    assert manifest["files"]["foundation/train.jsonl"]["rows"] == 12
    assert manifest["stages"] == {"foundation": {"format": "messages", "train": 12, "eval": 3},
                                  "safety_dpo": {"format": "dpo", "train": 4, "eval": 2},
                                  "voice": {"format": "messages", "train": 5, "eval": 0}}
    assert manifest["sources"] == {"annomi": {"train": 5, "eval": 0}, "forum": {"train": 12, "eval": 3}, "pairs": {"train": 4, "eval": 2}}
    assert manifest["by_stage_and_source"]["foundation"] == {"train": {"forum": 12}, "eval": {"forum": 3}}
    assert manifest["seed"] == 42
    assert manifest["params_digest"] == provenance.params_digest(PARAMS)
    assert manifest["git_commit"] == provenance.git_commit(".")
    assert manifest["quality"] == {"mean_score": 0.82, "rejected": 3}
    assert manifest["curriculum"] == [{"stage": "voice", "selected": 5, "shortfall": 3, "note": None, "achieved_share": None}]
    assert export.verify(out) == []
    digest = provenance.params_digest(PARAMS)
    assert export.write(_frame(), tmp_path / "again", FORMATS, seed=42, params=digest)["params_digest"] == digest


def test_verify_names_a_changed_missing_or_stray_file(tmp_path):
    out = tmp_path / "export"
    export.write(_frame(), out, FORMATS, seed=1, params=PARAMS)
    (out / "voice" / "train.jsonl").write_text("{}\n")
    (out / "foundation" / "eval.parquet").unlink()
    (out / "notes.txt").write_text("hello")
    assert export.verify(out) == ["foundation/eval.parquet: missing", "voice/train.jsonl: checksum differs from the manifest",
                                  "notes.txt: not in the manifest"]


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_same_input_gives_byte_identical_files_whatever_the_row_order(tmp_path):
    df = _frame()
    export.write(df, tmp_path / "a", FORMATS, seed=1, params=PARAMS)
    export.write(df.sample(frac=1.0, random_state=3).reset_index(drop=True), tmp_path / "b", FORMATS, seed=1, params=PARAMS)
    a, b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert a == b and len(a) == 11
    export.write(df, tmp_path / "a", FORMATS, seed=1, params=PARAMS)  # over an existing export
    assert _tree(tmp_path / "a") == a


def test_a_failed_export_leaves_the_old_one_whole(tmp_path):
    out = tmp_path / "export"
    export.write(_frame(), out, FORMATS, seed=1, params=PARAMS)
    before = _tree(out)
    broken = pd.concat([_frame(), pd.DataFrame([_row("pairs:none", "pairs", "safety_dpo", "train")])], ignore_index=True)
    with pytest.raises(export.ExportError, match="pairs:none"):
        export.write(broken, out, FORMATS, seed=2, params=PARAMS)
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no half-written folder beside it


def test_a_stage_name_that_is_not_a_plain_folder_is_refused(tmp_path):
    with pytest.raises(export.ExportError, match="folder name"):
        export.write(_frame(), tmp_path / "x", {"../up": "messages"}, seed=1, params=PARAMS)
