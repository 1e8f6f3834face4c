"""DVC wraps the Snakemake targets: neither tool rebuilds what the other built, and a
fresh `dvc repro` builds the same bytes as `snakemake`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from conftest import copy_workflow, init_repo, run, snakemake

CLEAN = "Data and pipelines are up to date."
TRACKED = ("data/raw/demo", "data/manifests", "data/export", "data/report",
           "data/raw/demo_conversations", "data/conversations", "data/export-conversations")


def dvc_status(project: Path) -> str:
    return run(["dvc", "status"], project).stdout.strip()


def digests(project: Path) -> dict[str, str]:
    out = {}
    for top in TRACKED:
        for path in sorted((project / top).rglob("*")):
            if path.is_file() and path.name != ".snakemake_timestamp":
                data = path.read_bytes()
                if path.name == "manifest.json":  # names the git commit, which differs between the two repos
                    data = json.dumps({k: v for k, v in json.loads(data).items() if k != "git_commit"}, sort_keys=True).encode()
                out[path.relative_to(project).as_posix()] = hashlib.sha256(data).hexdigest()
    return out


def test_dvc_repro_then_snakemake_does_nothing(dvc_first: Path) -> None:
    assert dvc_status(dvc_first) == CLEAN
    proc = snakemake(dvc_first)
    assert "Nothing to be done" in proc.stdout + proc.stderr
    assert dvc_status(dvc_first) == CLEAN
    again = run(["dvc", "repro"], dvc_first).stdout
    assert "Running stage" not in again


def test_snakemake_then_dvc_repro_rebuilds_nothing(dvc_first: Path, tmp_path: Path) -> None:
    project = copy_workflow(tmp_path / "project")
    init_repo(project)
    snakemake(project)
    audit_mtime = (project / "data/manifests/audit.parquet").stat().st_mtime_ns
    proc = run(["dvc", "repro"], project)
    out = proc.stdout + proc.stderr
    assert out.count("Running stage") == 5  # no lock yet: DVC runs each stage's command once...
    assert out.count("Nothing to be done") == 5  # ...and Snakemake inside finds its work done
    assert (project / "data/manifests/audit.parquet").stat().st_mtime_ns == audit_mtime
    assert dvc_status(project) == CLEAN
    assert "Nothing to be done" in (lambda p: p.stdout + p.stderr)(snakemake(project))
    assert dvc_status(project) == CLEAN
    # both orders give byte-identical outputs
    assert digests(project) == digests(dvc_first)


def test_dvc_sees_param_change(dvc_first: Path) -> None:
    params = dvc_first / "params.yaml"
    original = params.read_text()
    try:
        params.write_text(original.replace("min_side: 256", "min_side: 300"))
        status = dvc_status(dvc_first)
        assert "curate" in status and "modified:" in status and "audit" in status
        assert "conversations:" not in status
        params.write_text(original.replace("eval_share: 0.1", "eval_share: 0.2"))
        status = dvc_status(dvc_first)
        assert "conversations:" in status and "curate:" not in status
    finally:
        params.write_text(original)
    assert dvc_status(dvc_first) == CLEAN
