"""raw -> ingest manifest: one row per raw image file, with content hash and sidecar metadata."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from .. import atomic, hashing, manifest, schemas
from ..config import Source
from ..sources import booru, read_source
from ..sources.image_folder import normalize_extensions

_STAT_COLUMNS = ["rel_path", "size", "mtime_ns", "sha256"]


def display_path(path: Path, root: Path) -> str:
    """Paths inside the repo are stored relative to it, so manifests match across clones."""
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


class StatCache:
    """SHA-256 per (path, size, mtime_ns), like git's index: unchanged files are not re-read."""

    def __init__(self, path: Path):
        self.path = path
        self.known: dict[str, tuple[int, int, str]] = {}
        if path.exists():
            try:
                df = pd.read_parquet(path)
                self.known = {r.rel_path: (int(r.size), int(r.mtime_ns), str(r.sha256)) for r in df.itertuples()}
            except (OSError, ValueError, AttributeError):
                self.known = {}
        self.seen: dict[str, tuple[int, int, str]] = {}
        self.hashed = 0

    def digest(self, full: Path, st: os.stat_result, rel: str) -> str:
        hit = self.known.get(rel)
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            sha = hit[2]
        else:
            sha = hashing.sha256_file(full)
            self.hashed += 1
        self.seen[rel] = (int(st.st_size), int(st.st_mtime_ns), sha)
        return sha

    def save(self) -> None:
        rows = [(rel, *vals) for rel, vals in sorted(self.seen.items())]
        df = pd.DataFrame(rows, columns=_STAT_COLUMNS)
        with atomic.atomic_file(self.path) as tmp:
            df.to_parquet(tmp, index=False)


def run(
    sources: list[Source], out: str | Path, stat_cache_dir: str | Path, extensions: list[str], root: str | Path = ".",
    unmatched_out: str | Path | None = None,
) -> pd.DataFrame:
    """Write the ingest manifest (and, when asked, the metadata records that matched no image)."""
    root = Path(root)
    exts = normalize_extensions(extensions)
    rows: list[dict] = []
    unmatched: list[dict] = []
    for source in sources:
        cache = StatCache(Path(stat_cache_dir) / f"{source.name}.parquet")
        rows.extend(
            read_source(source, extensions=exts, digest=cache.digest, display_path=lambda p: display_path(p, root))
        )
        cache.save()
        if source.kind == "booru":
            unmatched.extend(booru.unmatched_records(source, exts))
    if unmatched_out is not None:
        orphans = pd.DataFrame(unmatched, columns=list(schemas.UNMATCHED.columns))
        for col in ("record_id", "md5"):
            orphans[col] = orphans[col].map(lambda v: None if v is None else str(v))
        manifest.write(orphans, unmatched_out, schemas.UNMATCHED, sort_by=["source", "note"])
    rows = [{**schemas.INGEST_DEFAULTS, **row} for row in rows]
    for row in rows:
        row["artists"] = list(row["artists"])
    df = pd.DataFrame(rows, columns=[c for c in schemas.INGEST.columns if c != "schema_version"])
    if not len(df):
        df = manifest.empty(schemas.INGEST)
    else:
        df = manifest.with_version(df)
        for col in ("size", "repeats"):
            df[col] = df[col].astype("int64")
        df["weight"] = df["weight"].astype("float64")
        df["score"] = pd.to_numeric(df["score"], errors="raise").astype("float64")
        df["generated"] = df["generated"].astype(bool)
    return manifest.write(df, out, schemas.INGEST)
