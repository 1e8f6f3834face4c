"""Source readers: each turns one raw collection into ingest rows (one per raw item)."""

from __future__ import annotations

from typing import Callable, Iterable

import dataclasses

from ..config import MATERIALIZED_KINDS, Source
from . import booru, image_folder


def read_materialized(source: Source, **options) -> Iterable[dict]:
    """An archive, Parquet, WebDataset or URL-list source, read as the image folder it was unpacked into."""
    return image_folder.read(dataclasses.replace(source, path=source.folder), **options)


READERS: dict[str, Callable[..., Iterable[dict]]] = {
    "image_folder": image_folder.read,
    "booru": booru.read,
    **{kind: read_materialized for kind in MATERIALIZED_KINDS},
}

# per kind: a digest of what the reader depends on (changes when any input file changes)
FINGERPRINTS: dict[str, Callable[..., str]] = {
    "image_folder": image_folder.source_fingerprint,
    "booru": booru.source_fingerprint,
}


def source_fingerprint(source: Source, extensions: list[str]) -> str:
    """The fingerprint of ``source`` for its kind (a booru source's covers its metadata files too)."""
    return FINGERPRINTS.get(source.kind, image_folder.source_fingerprint)(source, extensions)


def read_source(source: Source, **options) -> list[dict]:
    try:
        reader = READERS[source.kind]
    except KeyError:
        raise ValueError(f"source {source.name!r}: no reader for kind {source.kind!r}") from None
    return list(reader(source, **options))
