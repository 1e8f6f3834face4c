"""The trainset command on real manifests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

from trainset import cli, demo


def test_validate_ok_and_bad(tmp_path: Path, capsys) -> None:
    from trainset.config import Source
    from trainset.stages import ingest

    demo.materialize(tmp_path / "raw")
    src = Source(name="d", kind="image_folder", path=tmp_path / "raw", license="CC0-1.0")
    out = tmp_path / "ingest.parquet"
    ingest.run([src], out, tmp_path / "stat", [".png", ".jpg"], root=tmp_path)
    assert cli.main(["validate", str(out)]) == 0
    assert "ok (" in capsys.readouterr().out

    df = pd.read_parquet(out)
    df.loc[3, "rating"] = "spicy"
    bad = tmp_path / "ingest_bad.parquet"
    df.to_parquet(bad, index=False)
    assert cli.main(["validate", "--schema", "ingest", str(bad)]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "row 3" in err and "'rating'" in err and df.loc[3, "item_id"] in err


def test_console_script_demo(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "trainset"
    proc = subprocess.run([str(exe), "demo", str(tmp_path / "d")], capture_output=True, text=True, check=True)
    assert f"{len(demo.truth()['images'])} demo files" in proc.stdout
    assert sorted(p.relative_to(tmp_path / "d").as_posix() for p in (tmp_path / "d").rglob("*") if p.suffix not in (".txt", ".json") and p.is_file()) == demo.truth()["images"]


def test_every_workflow_manifest_has_a_schema() -> None:
    import re

    repo = Path(__file__).resolve().parents[1]
    text = (repo / "rules" / "common.smk").read_text()
    names = set(re.findall(r'f"\{M\}/([a-z_]+)\.parquet"', text))
    parts = re.search(r"for part in \(([^)]*)\)", text).group(1)
    names |= set(re.findall(r'"([a-z_]+)"', parts))
    assert {"ingest", "filtered", "rejected", "filter", "dedup"} <= names
    assert names <= set(cli.SCHEMA_BY_NAME), names - set(cli.SCHEMA_BY_NAME)


def test_validate_knows_the_conversation_manifests_by_their_place(tmp_path: Path, capsys) -> None:
    import pandas as pd

    from trainset import manifest, schemas

    folder = tmp_path / "data" / "conversations"
    (folder / "read").mkdir(parents=True)
    row = {"id": "s:1", "sha256": "0" * 64, "source": "s", "group": "s:1",
           "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
           "tier": "default", "category": "general", "is_training_edge_case": False, "license": "CC0-1.0",
           "original_id": None, "rejected_reply": None}
    manifest.write(pd.DataFrame([row]), folder / "read" / "s.parquet", schemas.CONVERSATIONS, sort_by="id")
    manifest.write(pd.DataFrame([{**row, "flags": []}]), folder / "filtered.parquet", schemas.CONVERSATIONS_KEPT, sort_by="id")
    assert cli.main(["validate", str(folder / "read" / "s.parquet"), str(folder / "filtered.parquet")]) == 0
    # the image schema of the same file name would not fit
    assert cli.main(["validate", "--schema", "filtered", str(folder / "filtered.parquet")]) == 1
    capsys.readouterr()
