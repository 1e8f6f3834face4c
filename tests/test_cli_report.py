"""`trainset report`: builds the reports, prints the GO/NO-GO, and opens the HTML report."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from conftest import run, set_params

TRAINSET = str(Path(sys.executable).parent / "trainset")


def test_report_rebuilds_prints_the_verdict_and_opens_the_page(built_demo: Path, tmp_path: Path) -> None:
    project = shutil.copytree(built_demo, tmp_path / "project", symlinks=True)
    set_params(project, report__min_kept=1000)
    index = project / "data/report/html/index.html"
    assert "Dataset report: GO" in index.read_text()

    opened = tmp_path / "opened.txt"
    browser = tmp_path / "browser.sh"
    browser.write_text(f'#!/bin/sh\necho "$1" > {opened}\n')
    browser.chmod(0o755)
    proc = run([TRAINSET, "report", "--cores", "2", "--root", str(project)], tmp_path)
    lines = proc.stdout.splitlines()
    assert "images: NO-GO" in lines and "conversations: GO" in lines
    assert f"report: {index}" in lines
    assert "Dataset report: NO-GO" in index.read_text() and "add images to your sources" in index.read_text()
    assert not opened.exists()

    env_browser = run(["env", f"BROWSER={browser}", TRAINSET, "report", "--open", "--no-build", "--root", str(project)], tmp_path)
    assert opened.read_text().strip() == index.as_uri(), env_browser.stdout + env_browser.stderr


def test_report_without_a_build_names_the_missing_page(tmp_path: Path) -> None:
    proc = run([TRAINSET, "report", "--no-build", "--root", str(tmp_path)], tmp_path, check=False)
    assert proc.returncode == 1 and "data/report/html/index.html does not exist" in proc.stderr
