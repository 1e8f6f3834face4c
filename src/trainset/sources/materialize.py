"""Archive, Parquet, WebDataset and URL-list sources, turned into the image folders the rest reads.

Each such source in params is unpacked (or downloaded) by the workflow into
``data/materialized/<name>`` (:data:`trainset.config.MATERIALIZED_DIR`), images with ``.json``
sidecars holding their metadata, so ingest, audit and every later stage treat it as an
``image_folder``. What could not be unpacked or fetched is listed, with its reason, in the report
each call returns (and the workflow keeps under ``data/run/``).
"""

from __future__ import annotations

import json
from pathlib import Path

from .. import atomic
from ..config import Source
from . import archive, parquet_images, url_list, webdataset

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tgz", ".tar.gz", ".tar.bz2", ".tar.xz")


SUFFIXES = {"archive": ARCHIVE_SUFFIXES, "parquet": (".parquet",), "webdataset": (".tar",)}


def inputs(source: Source) -> list[Path]:
    """The files an archive, Parquet or WebDataset source is made from: its file, or the matching
    files of its folder (sorted); a missing path fails naming the source."""
    path = Path(source.path)
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.name.lower().endswith(SUFFIXES[source.kind]))
    if not path.is_file():
        raise FileNotFoundError(f"source {source.name!r}: {path} does not exist")
    return [path]


def unpack(source: Source, dest: str | Path, limits: dict | None = None) -> dict:
    """Unpack an archive, Parquet or WebDataset source into ``dest``; returns the report as plain data."""
    bounds = archive.Limits.from_params(limits or {})
    dest = Path(dest)
    if source.kind == "archive":
        files = inputs(source)
        if len(files) == 1 and not Path(source.path).is_dir():
            return archive.extract(files[0], dest, bounds).as_dict()
        dest.mkdir(parents=True, exist_ok=True)  # a folder of archives: one subfolder each
        return {"archives": {f.name: archive.extract(f, dest / _stem(f), bounds).as_dict() for f in files}}
    if source.kind == "parquet":
        return parquet_images.extract(inputs(source), dest, source.image_column, source.key_column, bounds).as_dict()
    if source.kind == "webdataset":
        return webdataset.extract(inputs(source), dest, bounds).as_dict()
    raise ValueError(f"source {source.name!r}: kind {source.kind!r} is not unpacked")


def download(source: Source, folder: str | Path, network: dict | None = None) -> dict:
    """Fetch a URL-list source into ``folder`` (files already there and whole are kept), with a
    ``.json`` sidecar beside each image holding the list's metadata; returns every URL's result."""
    entries, problems = url_list.read_list(source.path)
    settings = url_list.Settings.from_params(network or {})
    results = url_list.download(entries, folder, settings)
    for result in results:
        meta = dict(result.entry.metadata) if result.entry else {}
        if result.path and meta:
            atomic.write_text(Path(result.path).with_suffix(".json"), json.dumps(archive.sidecar_doc(meta), sort_keys=True) + "\n")
    counts: dict[str, int] = {}
    for result in results:
        counts[result.status] = counts.get(result.status, 0) + 1
    return {"source": source.name, "counts": dict(sorted(counts.items())),
            "problems": [str(p) for p in problems], "results": [r.as_dict() for r in results]}


def _stem(path: Path) -> str:
    name = path.name
    for suffix in sorted(ARCHIVE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem
