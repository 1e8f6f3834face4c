"""Where the workflow's own files are: the Snakefile, rules/, scripts/ and the default params.

They live once, at the top of the source repository. A built wheel or sdist carries a copy inside
the package as ``trainset/workflow/`` (``setup.py`` copies them there); an editable install reads the
checkout itself. This module imports nothing of the package, so ``setup.py`` can load it for
:data:`FILES`.
"""

from __future__ import annotations

from pathlib import Path

#: What ``trainset init`` copies into a new data repository (folders whole, minus caches).
FILES = ("Snakefile", "params.yaml", "dvc.yaml", "takedown.txt", "rules", "scripts")
#: The report targets (Markdown, metrics, the HTML folder), as the rules name them (rules/common.smk).
REPORT_TARGETS = ("data/report/dataset-report.md", "data/report/metrics.json", "data/report/conversations-report.md",
                  "data/report/conversations-metrics.json", "data/report/html")
HTML_INDEX = "data/report/html/index.html"
#: Left out when copying folders.
IGNORE = ("__pycache__", "*.pyc", "*.pyo")

_HERE = Path(__file__).resolve()


def is_workflow(folder: Path) -> bool:
    return (folder / "Snakefile").is_file() and (folder / "rules").is_dir()


def root() -> Path:
    """The packaged ``trainset/workflow`` folder when present, else the source checkout."""
    packaged = _HERE.parent / "workflow"
    if is_workflow(packaged):
        return packaged
    checkout = _HERE.parents[2]
    if is_workflow(checkout):
        return checkout
    raise FileNotFoundError(
        f"the trainset workflow files are neither in {packaged} (a built install) nor in {checkout} "
        "(a source checkout); reinstall trainset from a wheel or sdist")
