"""Small preview images for the HTML report, made once per content and kept by its SHA-256.

A thumbnail is a function of the content and of how it is drawn (size, blurred or not), so the
cache key is ``<sha256>-<size>[-blur]``: a second report reuses every file, and a changed item
gets a new one. Items the policy excludes never get a thumbnail, and :func:`prune` deletes any
that an earlier build made before the policy changed.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from PIL import Image, ImageFilter

from . import atomic
from .embeddings import open_image

SUFFIX = ".webp"


def name(sha256: str, size: int, blur: bool = False) -> str:
    """The file name of one content's thumbnail, drawn at ``size`` (blurred or not)."""
    return f"{sha256}-{int(size)}{'-blur' if blur else ''}{SUFFIX}"


def cache_path(cache_dir: str | Path, sha256: str, size: int, blur: bool = False) -> Path:
    return Path(cache_dir) / sha256[:2] / name(sha256, size, blur)


def render(path: str | Path, size: int, blur: bool = False) -> bytes:
    """WebP bytes of the image at ``path`` fitted into ``size`` x ``size``, upright RGB.

    A blurred thumbnail is drawn from a 12-pixel copy, so nothing of the picture's detail is left."""
    im = open_image(str(path), min_side=size)
    im.thumbnail((size, size), Image.Resampling.LANCZOS)
    if blur:
        w, h = im.size
        tiny = im.resize((max(1, w * 12 // max(w, h)), max(1, h * 12 // max(w, h))), Image.Resampling.BOX)
        im = tiny.resize((w, h), Image.Resampling.BILINEAR).filter(ImageFilter.GaussianBlur(max(2, size // 24)))
    out = io.BytesIO()
    im.save(out, format="WEBP", quality=78, method=4)
    return out.getvalue()


def ensure(cache_dir: str | Path, sha256: str, path: str | Path, size: int, blur: bool = False) -> tuple[Path, bool]:
    """The cached thumbnail of ``sha256`` (made from ``path`` when missing) and whether it was made now.

    Raises OSError (or Pillow's errors) when the image cannot be decoded; nothing is written then."""
    target = cache_path(cache_dir, sha256, size, blur)
    if target.exists():
        return target, False
    atomic.write_bytes(target, render(path, size, blur))
    return target, True


def prune(cache_dir: str | Path, hidden: set[str], plain_only: bool = False) -> int:
    """Delete every cached thumbnail of a content in ``hidden`` (``plain_only``: only the ones not
    blurred); returns how many were deleted."""
    root = Path(cache_dir)
    if not root.is_dir():
        return 0
    removed = 0
    for sha in sorted(hidden):
        folder = root / sha[:2]
        if not folder.is_dir():
            continue
        for file in folder.glob(f"{sha}-*{SUFFIX}"):
            if plain_only and file.name.endswith(f"-blur{SUFFIX}"):
                continue
            os.unlink(file)
            removed += 1
    return removed
