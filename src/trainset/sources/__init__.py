"""Source readers: each turns one raw collection into ingest rows (one per raw item)."""

from __future__ import annotations

from typing import Callable, Iterable

from ..config import Source
from . import booru, image_folder

READERS: dict[str, Callable[..., Iterable[dict]]] = {
    "image_folder": image_folder.read,
    "booru": booru.read,
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
