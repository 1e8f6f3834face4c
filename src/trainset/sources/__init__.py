"""Source readers: each turns one raw collection into ingest rows (one per raw item)."""

from __future__ import annotations

from typing import Callable, Iterable

from ..config import Source
from . import image_folder

READERS: dict[str, Callable[..., Iterable[dict]]] = {
    "image_folder": image_folder.read,
}


def read_source(source: Source, **options) -> list[dict]:
    try:
        reader = READERS[source.kind]
    except KeyError:
        raise ValueError(f"source {source.name!r}: no reader for kind {source.kind!r}") from None
    return list(reader(source, **options))
