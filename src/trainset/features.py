"""Per-item image features: one decode per distinct content, cached across runs.

The cache key is the content SHA-256 plus everything that changes the result: the feature
params, this module's and the hashing module's code, and the trainset and Pillow versions.
Adding one image to a source therefore decodes that image only.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from . import atomic, hashing
from .provenance import code_digest, params_digest, versions

_ORIENTATION_TAG = 0x0112


def feature_key(params: dict | None = None) -> str:
    return params_digest({"params": params or {}, "code": code_digest("features", "hashing"), "versions": versions()})


def _failed(reason: str, detail: str, fmt: str | None = None) -> dict:
    return {
        "decoded": False, "reason": reason, "detail": detail, "format": fmt, "mode": None,
        "width": 0, "height": 0, "exif_orientation": 1, "phash": None,
    }


class MissingFile(FileNotFoundError):
    """A file the ingest manifest lists is gone: the manifest is stale, not the file broken."""


def extract(path: str) -> dict:
    """Decode one file fully and measure it; a broken file becomes a reason, never an exception."""
    if not os.path.isfile(path):
        raise MissingFile(f"{path}: listed by the ingest manifest but not found (moved, or run from another folder?)")
    try:
        if os.path.getsize(path) == 0:
            return _failed("zero_byte", "file is empty (0 bytes)")
        with Image.open(path) as im:
            fmt = im.format
            try:
                im.load()
            except (OSError, SyntaxError, ValueError) as exc:
                reason = "truncated" if "truncat" in str(exc).lower() else "corrupt"
                return _failed(reason, f"{fmt or 'image'} decode failed: {exc}", fmt)
            orientation = int(im.getexif().get(_ORIENTATION_TAG, 1) or 1)
            orientation = orientation if 1 <= orientation <= 8 else 1
            mode = im.mode
            upright = ImageOps.exif_transpose(im) if orientation != 1 else im
            width, height = upright.size
            value = hashing.phash(upright)
    except UnidentifiedImageError:
        return _failed("not_image", "not a recognised image format (content does not match any decoder)")
    except Image.DecompressionBombError as exc:
        return _failed("corrupt", f"refused: {exc}")
    except (OSError, SyntaxError, ValueError) as exc:
        return _failed("corrupt", f"cannot open: {exc}")
    return {
        "decoded": True, "reason": None, "detail": None, "format": fmt, "mode": mode,
        "width": int(width), "height": int(height), "exif_orientation": orientation,
        "phash": hashing.to_hex(value),
    }


@dataclass
class FeatureStats:
    items: int = 0
    contents: int = 0
    decoded: int = 0
    cache_hits: int = 0


class FeatureCache:
    """One small JSON file per (content, key), written atomically."""

    def __init__(self, root: str | Path, key: str):
        self.dir = Path(root) / key

    def _path(self, sha256: str) -> Path:
        return self.dir / sha256[:2] / f"{sha256}.json"

    def get(self, sha256: str) -> dict | None:
        try:
            return json.loads(self._path(sha256).read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def put(self, sha256: str, features: dict) -> None:
        atomic.write_text(self._path(sha256), json.dumps(features, sort_keys=True))


def compute(items: list[tuple[str, str]], cache: FeatureCache, threads: int = 1) -> tuple[dict[str, dict], FeatureStats]:
    """Features for (sha256, path) items, keyed by sha256; decodes only cache misses."""
    stats = FeatureStats(items=len(items))
    first_path: dict[str, str] = {}
    for sha, path in items:
        first_path.setdefault(sha, path)
    stats.contents = len(first_path)
    result: dict[str, dict] = {}
    todo: list[tuple[str, str]] = []
    for sha, path in first_path.items():
        hit = cache.get(sha)
        if hit is None:
            todo.append((sha, path))
        else:
            result[sha] = hit
    stats.cache_hits = len(result)
    paths = [p for _, p in todo]
    if threads > 1 and len(todo) > 8:
        with ProcessPoolExecutor(max_workers=threads) as pool:
            computed = list(pool.map(extract, paths, chunksize=max(1, len(paths) // (threads * 8))))
    else:
        computed = [extract(p) for p in paths]
    for (sha, _), feats in zip(todo, computed):
        cache.put(sha, feats)
        result[sha] = feats
    stats.decoded = len(todo)
    return result, stats
