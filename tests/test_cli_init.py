"""trainset init: a new data repository from the packaged workflow, and the wheel that carries it."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from trainset import cli, config, repo_init, workflow

from conftest import REPO, run, snakemake

TRAINSET = str(Path(sys.executable).parent / "trainset")


def comments(text: str) -> list[str]:
    """Every comment of a YAML text, whole-line and trailing, without the values beside them."""
    return [line.strip() if line.strip().startswith("#") else line.split(" #", 1)[1].strip()
            for line in text.splitlines() if line.strip().startswith("#") or " #" in line]


def test_wheel_carries_the_workflow(tmp_path: Path) -> None:
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO)], tmp_path)
    (wheel,) = tmp_path.glob("trainset-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"trainset/workflow/{name}" for name in ("Snakefile", "params.yaml", "dvc.yaml", "takedown.txt")}
    expected |= {f"trainset/workflow/rules/{p.name}" for p in (REPO / "rules").glob("*.smk")}
    expected |= {f"trainset/workflow/scripts/{p.name}" for p in (REPO / "scripts").glob("*.py")}
    assert len(expected) > 20 and expected <= names, sorted(expected - names)
    assert "trainset/workflow.py" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_editable_install_reads_the_checkout() -> None:
    assert workflow.root() == REPO


def test_init_demo_plans_a_build(tmp_path: Path) -> None:
    repo = tmp_path / "set"
    proc = run([TRAINSET, "init", "--demo", str(repo)], tmp_path)
    assert "files staged" in proc.stdout

    params_text = (repo / "params.yaml").read_text()
    assert comments(params_text) == comments((REPO / "params.yaml").read_text())
    assert "# the built-in demo conversations" in params_text
    params = yaml.safe_load(params_text)
    assert params["demo"] is True and params["conversations"]["demo"] is True and params["sources"] == []
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    assert not [d for s in stages.values() for d in s.get("deps", []) if d.startswith("src/")]
    assert "dvc repro -f" in (repo / "dvc.yaml").read_text()
    ignored = (repo / ".gitignore").read_text().splitlines()
    assert {".snakemake/", ".venv/", "dvc_plots/"} <= set(ignored)
    assert "analytics = false" in (repo / ".dvc/config").read_text()

    staged = run(["git", "status", "--porcelain"], repo).stdout.splitlines()
    for name in ("Snakefile", "params.yaml", "dvc.yaml", "takedown.txt", ".gitignore", "rules/raw.smk", "scripts/ingest.py", ".dvc/config"):
        assert f"A  {name}" in staged, (name, staged)
    assert not [line for line in staged if not line.startswith("A  ")]
    assert run(["git", "log"], repo, check=False).returncode != 0  # nothing committed without --commit

    plan = snakemake(repo, "--dry-run")
    assert "ingest" in plan.stdout and "conversations_read" in plan.stdout
    assert run(["dvc", "status"], repo).returncode == 0


def test_init_source_entry(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "art").mkdir()
    assert cli.main(["init", "set", "--source", "my_art=art", "--source", "inside=set/data/raw/inside", "--license", "CC-BY-4.0"]) == 0
    out = capsys.readouterr().out
    assert "'inside'" in out and "does not exist yet" in out
    text = (tmp_path / "set/params.yaml").read_text()
    assert comments(text) == comments((REPO / "params.yaml").read_text())
    params = yaml.safe_load(text)
    assert params["demo"] is False and params["conversations"]["demo"] is False
    assert [(s["name"], s["kind"], s["path"], s["license"]) for s in params["sources"]] == [
        ("my_art", "image_folder", str(tmp_path / "art"), "CC-BY-4.0"),
        ("inside", "image_folder", "data/raw/inside", "CC-BY-4.0"),  # inside the repository: relative to it
    ]
    sources = config.sources_from_params(params, tmp_path / "set")
    assert [s.path for s in sources] == [tmp_path / "art", tmp_path / "set/data/raw/inside"]


def test_init_edits_params_text_only_where_asked() -> None:
    shipped = (REPO / "params.yaml").read_text()
    edited = repo_init.edit_params(shipped, demo=False, sources=[{"name": "a b", "kind": "image_folder", "path": "/x: y/#z",
                                                                   "license": "yes", "weight": 1.0}])
    params = yaml.safe_load(edited)
    assert params["sources"][0]["path"] == "/x: y/#z" and params["sources"][0]["license"] == "yes"
    removed = set(shipped.splitlines()) - set(edited.splitlines())
    assert {line.split("#")[0].strip() for line in removed} == {"demo: true", "sources: []"}


def test_init_refuses_a_non_empty_folder(tmp_path: Path, capsys) -> None:
    repo = tmp_path / "set"
    repo.mkdir()
    (repo / "notes.md").write_text("mine\n")
    assert cli.main(["init", str(repo)]) == 1
    assert "not empty" in capsys.readouterr().err and sorted(p.name for p in repo.iterdir()) == ["notes.md"]

    (repo / "Snakefile").write_text("# my own\n")
    assert cli.main(["init", "--force", str(repo)]) == 1
    err = capsys.readouterr().err
    assert "would overwrite Snakefile" in err and "--force" not in err
    assert (repo / "Snakefile").read_text() == "# my own\n" and not (repo / "params.yaml").exists()

    (repo / "Snakefile").unlink()
    (repo / ".gitignore").write_text("*.log\n.venv/\n")
    assert cli.main(["init", "--force", str(repo)]) == 0
    assert (repo / "notes.md").read_text() == "mine\n"
    ignored = (repo / ".gitignore").read_text().splitlines()
    assert ignored[:2] == ["*.log", ".venv/"] and ignored.count(".venv/") == 1 and ".snakemake/" in ignored


def test_init_commit(tmp_path: Path, monkeypatch) -> None:
    for key, value in {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t.invalid",
                       "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t.invalid"}.items():
        monkeypatch.setenv(key, value)
    assert cli.main(["init", "--commit", str(tmp_path / "set")]) == 0
    assert run(["git", "log", "--format=%s"], tmp_path / "set").stdout.strip() == "trainset init"
    assert run(["git", "status", "--porcelain"], tmp_path / "set").stdout.strip() == ""


@pytest.mark.parametrize("spec", ["noequals", "=path", "demo=somewhere", "bad name=x"])
def test_init_bad_source(tmp_path: Path, spec: str, capsys) -> None:
    assert cli.main(["init", "--source", spec, str(tmp_path / "set")]) == 1
    assert "trainset init:" in capsys.readouterr().err and not (tmp_path / "set").exists()
