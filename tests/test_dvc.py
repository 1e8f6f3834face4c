"""DVC wraps the Snakemake targets: neither tool rebuilds what the other built, and a
fresh `dvc repro` builds the same bytes as `snakemake`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import digests, init_repo, run, snakemake
from trainset import distributions

CLEAN = "Data and pipelines are up to date."


def dvc_status(project: Path) -> str:
    return run(["dvc", "status"], project).stdout.strip()


def test_dvc_repro_then_snakemake_does_nothing(dvc_first: Path) -> None:
    assert dvc_status(dvc_first) == CLEAN
    proc = snakemake(dvc_first)
    assert "Nothing to be done" in proc.stdout + proc.stderr
    assert dvc_status(dvc_first) == CLEAN
    again = run(["dvc", "repro"], dvc_first).stdout
    assert "Running stage" not in again


def test_snakemake_then_dvc_repro_rebuilds_nothing(dvc_first: Path, built_demo: Path, tmp_path: Path) -> None:
    """On a copy of the Snakemake build, made a git + DVC repository."""
    project = shutil.copytree(built_demo, tmp_path / "project", symlinks=True)
    init_repo(project)
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


def test_metrics_and_plots_diff_compare_two_dataset_versions(dvc_first: Path, tmp_path: Path) -> None:
    """The key numbers (metrics) and the distributions (plots) of two tagged versions, side by side."""
    project = tmp_path / "project"
    shutil.copytree(dvc_first, project, symlinks=True)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "v1", "--allow-empty"], project)
    run(["git", "tag", "v1"], project)
    params = project / "params.yaml"
    params.write_text(params.read_text().replace("min_side: 256", "min_side: 300"))
    run(["dvc", "repro"], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "v2"], project)
    run(["git", "tag", "v2"], project)

    metrics = json.loads(run(["dvc", "metrics", "diff", "v1", "v2", "--json"], project).stdout)
    images = metrics["data/report/metrics.json"]
    assert images["kept"]["new"] < images["kept"]["old"] and images["kept"]["diff"] == images["kept"]["new"] - images["kept"]["old"]
    assert images["rejected_by_reason.too_small"]["new"] > images["rejected_by_reason.too_small"]["old"]

    plots = json.loads(run(["dvc", "plots", "diff", "v1", "v2", "--json", "--split"], project).stdout)
    data = plots["data"]
    short_side = data["data/report/plots/short_side.csv"][0]["anchor_definitions"]["<DVC_METRIC_DATA>"]
    kept_by_rev = {rev: sum(int(row["kept"]) for row in short_side if row["rev"] == rev) for rev in ("v1", "v2")}
    assert kept_by_rev == {"v1": images["kept"]["old"], "v2": images["kept"]["new"]}
    assert set(data) == {f"data/report/plots/{name}.csv" for name in distributions.PLOTS}
    html = run(["dvc", "plots", "diff", "v1", "v2", "-o", str(tmp_path / "plots")], project)
    assert (tmp_path / "plots" / "index.html").is_file(), html.stdout
