"""trainset status on a built demo: nothing to do, then a changed param, then a new raw image."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainset import build_status, cli

from conftest import run, set_params, snakemake


@pytest.fixture
def built(built_demo: Path, tmp_path: Path) -> Path:
    """A copy of the built demo, brought up to date: a no-op, unless trainset's code changed since
    the session built it (its digest is every rule's param)."""
    project = shutil.copytree(built_demo, tmp_path / "project", symlinks=True)
    snakemake(project)
    return project


def plan(project: Path, capsys) -> tuple[dict, str]:
    """The JSON and the text of `trainset status` (both must exit 0)."""
    assert cli.main(["status", "--root", str(project), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert cli.main(["status", "--root", str(project)]) == 0
    return result, capsys.readouterr().out


def rules(result: dict) -> dict[str, dict]:
    return {r["rule"]: r["reasons"] for r in result["snakemake"]["rules"]}


def write_image(path: Path, seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(320, 320, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def test_status_after_build_and_after_a_param_change(built: Path, capsys) -> None:
    result, text = plan(built, capsys)
    assert result["snakemake"]["jobs"] == 0 and result["dvc"] is None, text
    assert text.startswith("Snakemake: nothing to do")

    set_params(built, caption__trigger_word="zzz_trigger")
    result, text = plan(built, capsys)
    found = rules(result)
    # captions run per shard after the deal (a checkpoint), which takes the caption params too: a dry
    # run sees the deal rerun; the caption jobs are weighed once it has
    assert found["deal_deduped"]["params_changed"] == ["caption"]
    assert found["export"]["params_changed"] == ["caption"]  # export reads the caption settings too
    assert "upstream" in found["split"] and "ingest" not in found and "audit" not in found
    assert "params changed: caption" in text and "nothing to do" not in text


def test_status_names_new_and_touched_raw_images(built: Path, capsys) -> None:
    folder = built / "data/raw/mine"
    folder.mkdir()
    for seed in range(2):
        write_image(folder / f"img{seed}.png", seed)
    set_params(built, sources=[{"name": "mine", "kind": "image_folder", "path": "data/raw/mine", "license": "CC0-1.0"}])
    assert rules(plan(built, capsys)[0])["ingest"]["params_changed"] == ["sources"]
    snakemake(built)
    result, text = plan(built, capsys)
    assert result["snakemake"]["jobs"] == 0, text

    write_image(folder / "img2.png", 2)
    result, text = plan(built, capsys)
    found = rules(result)
    assert set(found["ingest"]) == {"source_files_changed"}
    assert {"audit", "group", "filter", "dedup", "caption", "split", "export", "report"} <= set(found)
    assert all("upstream" in found[name] for name in ("audit", "caption", "export"))
    assert "ingest" in text and "source files changed" in text and "input rebuilt upstream" in text

    (folder / "img2.png").unlink()
    assert plan(built, capsys)[0]["snakemake"]["jobs"] == 0  # the listing is back to what was built
    (folder / "img0.png").touch()
    assert set(rules(plan(built, capsys)[0])["ingest"]) == {"source_files_changed"}


def test_status_shows_dvc_stages(tmp_path: Path, capsys) -> None:
    """A DVC repository: dvc status follows Snakemake's plan (here, an init'd repository never built)."""
    repo = tmp_path / "set"
    assert cli.main(["init", "--demo", str(repo)]) == 0
    capsys.readouterr()
    result, text = plan(repo, capsys)
    assert "missing_output" in rules(result)["ingest"]
    assert {"demo", "curate", "export", "conversations", "report"} <= set(result["dvc"]["stages"])
    assert any(item.startswith("out data/manifests") for item in result["dvc"]["stages"]["curate"])
    assert "DVC: 5 stage(s) changed" in text and "curate:" in text


def test_dvc_status_params_named(tmp_path: Path) -> None:
    """A param change reads as `param NAME modified` (a one-stage DVC repository, no Snakefile)."""
    run(["git", "init", "-q"], tmp_path)
    run(["dvc", "init", "-q"], tmp_path)
    (tmp_path / "params.yaml").write_text("a: 1\nb: 2\n")
    (tmp_path / "in.txt").write_text("x\n")
    (tmp_path / "dvc.yaml").write_text("stages:\n  s:\n    cmd: cp in.txt out.txt\n    deps: [in.txt]\n    params: [a]\n    outs: [out.txt]\n")
    run(["dvc", "repro", "-q"], tmp_path)
    assert build_status.dvc_plan(tmp_path) == {"stages": {}}
    (tmp_path / "params.yaml").write_text("a: 3\nb: 2\n")
    (tmp_path / "in.txt").write_text("y\n")
    assert build_status.dvc_plan(tmp_path)["stages"] == {"s": ["dep in.txt modified", "param a modified (params.yaml)"]}
    result = build_status.status(tmp_path)
    assert "Snakefile" in result["snakemake"]["error"] and build_status.exit_code(result) == 1
