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


def _filled(block: str, params: dict | None, defaults: dict, positive: tuple[str, ...]) -> dict:
    """``block`` of params.yaml with ``defaults`` filled in: no unknown keys, ``positive`` positive integers."""
    out = {**defaults, **(params or {})}
    unknown = set(out) - set(defaults)
    if unknown:
        raise ShardError(f"params.yaml: {block} has unknown keys {sorted(unknown)} (known: {sorted(defaults)})")
    for key in positive:
        value = out[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ShardError(f"params.yaml: {block}.{key} must be a positive integer, got {value!r}")
    return out


def settings(params: dict | None) -> dict:
    """``shards`` from params.yaml with defaults filled in; a bad value names itself."""
    out = _filled("shards", params, DEFAULTS, ("size", "mem_mb", "runtime"))
    for key in ("threads", "gpu"):
        value = out[key]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ShardError(f"params.yaml: shards.{key} must be a non-negative integer or null, got {value!r}")
    return out


def step_settings(params: dict | None) -> dict:
    """``resources`` from params.yaml with defaults filled in; a bad value names itself."""
    out = _filled("resources", params, STEP_DEFAULTS, ("mem_mb", "runtime"))
    value = out["mem_mb_per_input_mb"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ShardError(f"params.yaml: resources.mem_mb_per_input_mb must be a non-negative number, got {value!r}")
    return out


def step_mem_mb(settings: dict, input_mb: float, attempt: int = 1) -> int:
    """Memory for a job that reads whole manifests: it grows with what the job reads (``input_mb``, as
    stored), and with each retry (``attempt``: Snakemake's ``--retries``), as a job killed for memory
    asks for more on its next try."""
    return (settings["mem_mb"] + math.ceil(settings["mem_mb_per_input_mb"] * input_mb)) * attempt


def job_resources(settings: dict) -> dict:
    """A rule's ``resources``: ``mem_mb`` and ``runtime`` from ``settings`` (params.yaml ``shards`` or
    ``resources``), both times the attempt; memory also by the MB the job reads when ``settings`` says
    how much per MB (a shard job's memory grows with the shard size, which is fixed, so it reads nothing)."""
    if settings.get("mem_mb_per_input_mb"):
        def mem_mb(wildcards, input, attempt):
            return step_mem_mb(settings, input.size_mb, attempt)
    else:
        def mem_mb(wildcards, attempt):
            return settings["mem_mb"] * attempt

    def runtime(wildcards, attempt):
        return settings["runtime"] * attempt

    return {"mem_mb": mem_mb, "runtime": runtime}


def name(k: int) -> str:
    return f"{k:05d}"


def read_index(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def upto(index: dict, shard: str) -> list[str]:
    """The shards a pair job of ``shard`` compares it with: every shard up to it, itself last."""
    return [s for s in sorted(index) if s <= shard]
