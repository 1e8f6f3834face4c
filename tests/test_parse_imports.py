"""Parsing the workflow imports nothing heavy: every Snakemake run parses it, and on a cluster every
job parses it twice (the job's Snakemake, then the rule's through srun)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from conftest import REPO

HEAVY = ("pandera", "numba", "scipy", "torch", "sklearn")


def _workflow_imports() -> list[str]:
    """The import lines of the Snakefile and the rule files (run as they are when it is parsed)."""
    lines = []
    for path in [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]:
        lines += [line.split("#")[0].rstrip() for line in path.read_text().splitlines() if re.match(r"(from \S+ )?import ", line)]
    return lines


def test_the_workflow_imports_no_heavy_library_when_parsed() -> None:
    lines = _workflow_imports()
    assert any("shard_plan" in line for line in lines) and any("neardup" in line for line in lines), lines
    code = "\n".join(["import json, sys", *lines, "print(json.dumps(sorted(sys.modules)))"])
    loaded = set(json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout))
    assert "trainset.neardup" in loaded and "trainset.sources.materialize" in loaded
    heavy = sorted({name.split(".")[0] for name in loaded} & set(HEAVY))
    assert not heavy, f"parsing the workflow imports {heavy}"


def test_the_light_modules_are_the_ones_the_library_uses() -> None:
    """shard_plan and view_names are the definitions shards and views use, not copies of them."""
    from trainset import neardup, shard_plan, shards, view_names, views

    assert shards.settings is shard_plan.settings and shards.upto is shard_plan.upto and shards.ShardError is shard_plan.ShardError
    assert views.VIEW_NAMES is view_names.VIEW_NAMES and views.BOXES is view_names.BOXES
    rule = neardup.Rule.from_params({"rule": [{"max_distance": 6}], "mirror": True})
    assert len(rule.query) == len(views.QUERY_VIEWS) and len(rule.mirror_query) == len(views.MIRROR_VIEWS)


def test_a_job_that_scans_only_small_footers_does_not_import_numba(tmp_path) -> None:
    """numba (about a third of a second per job) starts with the first large footer scanned: not
    with the manifests, nor for the small footers of a shard's own files (scanned as plain Python)."""
    code = f"""
import sys
import pyarrow as pa, pyarrow.parquet as pq
from trainset.stages import rejected, split
from trainset import manifest, parquet_scan, parquet_splice
before = "numba" in sys.modules
pq.write_table(pa.table({{"a": [1, 2, 3]}}), {str(tmp_path / "t.parquet")!r}, row_group_size=2)
import io
rows = parquet_splice.concat([{str(tmp_path / "t.parquet")!r}] * 2, io.BytesIO())
small = "numba" in sys.modules
parquet_scan.PLAIN_BYTES = 0  # as after 1 MiB of footers scanned as plain Python
rows += parquet_splice.concat([{str(tmp_path / "t.parquet")!r}] * 2, io.BytesIO())
print(before, small, "numba" in sys.modules, rows)
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
    assert out == ["False", "False", "True", "12"]
