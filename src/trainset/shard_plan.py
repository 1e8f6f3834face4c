"""Shard settings, shard names and which shards a pair tile compares: what the Snakefile needs when it is parsed.

Kept apart from :mod:`trainset.shards` (which deals rows with pandas and pyarrow) so that parsing
the workflow imports nothing heavy: every Snakemake run parses it, and on a cluster every job
parses it twice (the job's own Snakemake, then the one ``srun`` starts)."""

from __future__ import annotations

import json
from pathlib import Path

DEFAULTS = {"size": 5000, "threads": None, "mem_mb": 4000, "runtime": 60, "gpu": 0}


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


def name(k: int) -> str:
    return f"{k:05d}"


def read_index(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def upto(index: dict, shard: str) -> list[str]:
    """The shards a pair job of ``shard`` compares it with: every shard up to it, itself last."""
    return [s for s in sorted(index) if s <= shard]
