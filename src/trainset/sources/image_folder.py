"""The ``image_folder`` source kind: a folder tree of images with optional tag sidecars.

Read here:
- images at any depth (hidden files and folders are skipped);
- sidecars beside an image with the same stem: ``NAME.txt`` (comma-separated tags) or
  ``NAME.json`` (``tags`` as a list, a comma-separated string or a booru ``tag_string``;
  ``rating``; optional ``rating_scheme`` and ``generated``);
- Kohya-style ``{repeats}_{name}`` folders, which set the item's repeats and subset.

A sidecar that cannot be read does not drop the image: the item keeps no tags and the
error is recorded in ``sidecar_error`` for the report.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

from .. import progress
from ..config import ConfigError, Source, as_flag
from ..rating import RatingError, normalize_rating

KOHYA_FOLDER = re.compile(r"^(\d+)_(.+)$")
SIDE_CAR_SUFFIXES = (".txt", ".json")


class SourceError(OSError):
    """A source folder that cannot be read at all."""


def normalize_extensions(extensions) -> tuple[str, ...]:
    """Extensions as params may spell them (``png``, ``.PNG``) in the form ``walk`` matches."""
    return tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)


def walk(root: Path, extensions: tuple[str, ...]) -> list[tuple[str, os.stat_result]]:
    """Image files under ``root`` as sorted (relative POSIX path, stat) pairs."""
    if not root.is_dir():
        raise SourceError(f"source folder {root} does not exist or is not a folder")
    found: list[tuple[str, os.stat_result]] = []
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            raise SourceError(f"cannot list {folder}: {exc.strerror}") from None
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=True):
                stack.append(Path(entry.path))
            elif entry.is_file(follow_symlinks=True) and Path(entry.name).suffix.lower() in extensions:
                rel = Path(entry.path).relative_to(root).as_posix()
                found.append((rel, entry.stat(follow_symlinks=True)))
    found.sort(key=lambda pair: pair[0])
    return found


def kohya_subset(rel_path: str, source: Source) -> tuple[int, str]:
    """(repeats, subset) from the nearest ``{repeats}_{name}`` folder, else the source's."""
    for part in reversed(PurePosixPath(rel_path).parent.parts):
        match = KOHYA_FOLDER.match(part)
        if match and int(match.group(1)) >= 1:
            return int(match.group(1)), match.group(2)
    return source.repeats, source.name


def _split_tags(text: str) -> list[str]:
    if "," in text or "\n" in text:
        parts = re.split(r"[,\n]", text)
    else:
        parts = text.split()
    seen: dict[str, None] = {}
    for part in parts:
        tag = part.strip()
        if tag:
            seen.setdefault(tag, None)
    return list(seen)


def read_sidecar(image: Path, source: Source) -> dict:
    """Tags, rating and flags from the image's sidecar; ``sidecar_error`` when it is unreadable."""
    out: dict = {"tags": [], "rating": "unknown", "generated": source.generated, "sidecar": None, "sidecar_error": None}
    for suffix in SIDE_CAR_SUFFIXES:
        car = image.with_suffix(suffix)
        if not car.is_file():
            continue
        out["sidecar"] = car.name
        try:
            text = car.read_text(encoding="utf-8-sig")
            if suffix == ".txt":
                out["tags"] = _split_tags(text)
            else:
                _apply_json(out, json.loads(text), source)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RatingError, ConfigError, TypeError, ValueError) as exc:
            out.update(tags=[], rating="unknown", generated=source.generated)
            out["sidecar_error"] = f"{car.name}: {exc}"
        break
    return out


def _apply_json(out: dict, doc: object, source: Source) -> None:
    if not isinstance(doc, dict):
        raise ValueError("expected a JSON object with tags and rating")
    tags = doc.get("tags", doc.get("tag_string", []))
    if isinstance(tags, str):
        out["tags"] = _split_tags(tags)
    elif isinstance(tags, list) and all(isinstance(t, str) for t in tags):
        # one element per tag: never fall back to whitespace splitting (["long hair"] is one tag)
        out["tags"] = _split_tags("\n".join(tags) + "\n")
    else:
        raise ValueError("'tags' must be a list of strings or a string")
    scheme = str(doc.get("rating_scheme", source.rating_scheme))
    out["rating"] = normalize_rating(doc.get("rating"), scheme)
    if "generated" in doc:
        out["generated"] = as_flag(doc["generated"], "'generated'")


def read(
    source: Source,
    extensions: tuple[str, ...],
    digest: Callable[[Path, os.stat_result, str], str],
    display_path: Callable[[Path], str],
) -> Iterator[dict]:
    """Yield one ingest row per image file. ``digest`` returns the file's SHA-256 (cached)."""
    for rel, st in progress.bar(walk(source.path, extensions), desc=f"hash {source.name}", unit="file"):
        car = read_sidecar(source.path / rel, source)
        yield {
            **file_row(source, rel, st, digest, display_path),
            "tags": car["tags"],
            "rating": car["rating"],
            "generated": car["generated"],
            "sidecar": car["sidecar"],
            "sidecar_error": car["sidecar_error"],
        }


def file_row(source: Source, rel: str, st: os.stat_result, digest, display_path) -> dict:
    """The ingest fields every source kind fills the same way for one image file."""
    full = source.path / rel
    repeats, subset = kohya_subset(rel, source)
    return {
        "item_id": f"{source.name}:{rel}",
        "sha256": digest(full, st, rel),
        "source": source.name,
        "rel_path": rel,
        "path": display_path(full),
        "size": int(st.st_size),
        "license": source.license,
        "original_name": full.name,
        "weight": float(source.weight),
        "repeats": int(repeats),
        "subset": subset,
    }


def source_fingerprint(source: Source, extensions: list[str]) -> str:
    """Digest of the folder listing (paths, sizes, mtimes): changes when any image or sidecar
    is added, removed or rewritten, so the workflow knows to ingest again."""
    return fingerprint_folder(source.path, list(extensions) + list(SIDE_CAR_SUFFIXES))


def fingerprint_folder(root: str | Path, extensions) -> str:
    """Digest of the listing (paths, sizes, mtimes) of the files with these extensions under ``root``."""
    import hashlib

    exts = normalize_extensions(extensions)
    h = hashlib.sha256()
    try:
        listing = walk(Path(root), exts)
    except SourceError as exc:
        return f"unreadable: {exc}"
    for rel, st in listing:
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]
