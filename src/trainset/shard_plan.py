"""Shard settings, shard names, which shards a pair tile compares and what a job asks a cluster for: what
the Snakefile needs when it is parsed.

Kept apart from :mod:`trainset.shards` (which deals rows with pandas and pyarrow) so that parsing
the workflow imports nothing heavy: every Snakemake run parses it, and on a cluster every job
parses it twice (the job's own Snakemake, then the one ``srun`` starts)."""

from __future__ import annotations

import json
import math
from pathlib import Path

DEFAULTS = {"size": 5000, "threads": None, "mem_mb": 4000, "runtime": 60, "gpu": 0}
STEP_DEFAULTS = {"mem_mb": 1000, "mem_mb_per_input_mb": 8, "runtime": 60}
"""params.yaml ``resources``: what the jobs that are not per shard (they read whole manifests) ask for."""


class ShardError(ValueError):
    pass


def settings(params: dict | None) -> dict:
    """``shards`` from params.yaml with defaults filled in; a bad value names itself."""
    out = {**DEFAULTS, **(params or {})}
    unknown = set(out) - set(DEFAULTS)
    if unknown:
        raise ShardError(f"params.yaml: shards has unknown keys {sorted(unknown)} (known: {sorted(DEFAULTS)})")
    for key in ("size", "mem_mb", "runtime"):
        value = out[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ShardError(f"params.yaml: shards.{key} must be a positive integer, got {value!r}")
    for key in ("threads", "gpu"):
        value = out[key]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ShardError(f"params.yaml: shards.{key} must be a non-negative integer or null, got {value!r}")
    return out


def step_settings(params: dict | None) -> dict:
    """``resources`` from params.yaml with defaults filled in; a bad value names itself."""
    out = {**STEP_DEFAULTS, **(params or {})}
    unknown = set(out) - set(STEP_DEFAULTS)
    if unknown:
        raise ShardError(f"params.yaml: resources has unknown keys {sorted(unknown)} (known: {sorted(STEP_DEFAULTS)})")
    for key in ("mem_mb", "runtime"):
        value = out[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ShardError(f"params.yaml: resources.{key} must be a positive integer, got {value!r}")
    value = out["mem_mb_per_input_mb"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ShardError(f"params.yaml: resources.mem_mb_per_input_mb must be a non-negative number, got {value!r}")
    return out


def step_mem_mb(settings: dict, input_mb: float, attempt: int = 1) -> int:
    """Memory for a job that reads whole manifests: it grows with what the job reads (``input_mb``, as
    stored), and with each retry (``attempt``: Snakemake's ``--retries``), as a job killed for memory
    asks for more on its next try."""
    return (settings["mem_mb"] + math.ceil(settings["mem_mb_per_input_mb"] * input_mb)) * attempt


def name(k: int) -> str:
    return f"{k:05d}"


def read_index(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def upto(index: dict, shard: str) -> list[str]:
    """The shards a pair job of ``shard`` compares it with: every shard up to it, itself last."""
    return [s for s in sorted(index) if s <= shard]
