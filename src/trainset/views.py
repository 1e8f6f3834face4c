"""Views of one decoded image, hashed beside its plain pHash for near-duplicate search.

A plain pHash misses most copies padded with a border (the picture shrinks inside the frame),
many copies cropped by 5-12 % (the picture grows and shifts) and every mirrored copy. All three
are cheap to catch from the decode that is already open, by hashing more than one view:

- ``trim``: uniform borders (letterboxing, padding, a flat background) dropped pass after pass,
  so a copy padded onto a plain background and its original trim to the same picture;
- ``center``: the middle :data:`CENTER_FRACTION` of the picture, which a modest crop keeps;
- ``trim_center``: the middle of the trimmed picture;
- ``*_mirror``: the left-right flip of each of those 32x32 thumbnails (used when
  ``near_dup.views.mirror`` asks for mirrored copies).

Two images are as close as their closest pair of views (``trainset.neardup``). Views are taken
from the 8-bit grayscale image, and the order of :data:`VIEW_NAMES` is the order of the
``phash_views`` list in the audit manifest.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from . import hashing

TRIM_TOLERANCE = 12
"""Grey levels a border pixel may differ from its edge's median (JPEG ringing, dithering)."""

TRIM_MIN_FRACTION = 0.98
"""Share of a row or column that must be within the tolerance for it to count as border."""

TRIM_MIN_KEEP = 0.2
"""A trim that keeps less than this share of either side is refused (a nearly flat image)."""

TRIM_PASSES = 3
"""Nested borders (a coloured pad around a white background) trim in successive passes."""

CENTER_FRACTION = 0.9
"""Share of width and height the centre view keeps."""

VIEW_SIDE = 128
"""The extra views are cut from the grayscale image reduced (box filter) to this longest side:
plenty for a 32x32 thumbnail, and it keeps the views' cost per image small and constant."""

UPRIGHT_VIEWS = ("plain", "trim", "center", "trim_center")
VIEW_NAMES = UPRIGHT_VIEWS + tuple(f"{v}_mirror" for v in UPRIGHT_VIEWS)


def _leading_border(lines: np.ndarray) -> int:
    """How many of ``lines`` (outermost first, one per row) are uniform like the outermost;
    scanned in growing chunks, so an image without a border costs one line."""
    ref = np.median(lines[0])
    done, chunk = 0, 1
    while done < len(lines):
        block = lines[done : done + chunk]
        uniform = (np.abs(block - ref) <= TRIM_TOLERANCE).mean(axis=1) >= TRIM_MIN_FRACTION
        if not uniform.all():
            return done + int(np.argmin(uniform))
        done += len(block)
        chunk *= 4
    return done


def border_box(gray: np.ndarray) -> tuple[int, int, int, int]:
    """``(left, top, right, bottom)`` of ``gray`` (2-D, 0..255) without its uniform borders, in
    Pillow's crop order; the whole image when nothing is trimmed or too little would be left."""
    height, width = gray.shape
    left, top, right, bottom = 0, 0, width, height
    a = gray.astype(np.int16)
    for _ in range(TRIM_PASSES):
        box = a[top:bottom, left:right]
        if box.shape[0] < 2 or box.shape[1] < 2:
            break
        t, b = _leading_border(box), _leading_border(box[::-1])
        lft, rgt = _leading_border(box.T), _leading_border(box.T[::-1])
        if t + b >= box.shape[0] or lft + rgt >= box.shape[1] or not (t or b or lft or rgt):
            break  # uniform all through, or nothing more to trim
        top, bottom, left, right = top + t, bottom - b, left + lft, right - rgt
    if (right - left) < TRIM_MIN_KEEP * width or (bottom - top) < TRIM_MIN_KEEP * height:
        return 0, 0, width, height
    return left, top, right, bottom


def center_box(box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    left, top, right, bottom = box
    dx = (right - left) * (1 - CENTER_FRACTION) / 2
    dy = (bottom - top) * (1 - CENTER_FRACTION) / 2
    inner = (round(left + dx), round(top + dy), round(right - dx), round(bottom - dy))
    return inner if inner[2] > inner[0] and inner[3] > inner[1] else box


def reduced(gray: Image.Image) -> Image.Image:
    """``gray`` shrunk (box filter) so its longest side is at most :data:`VIEW_SIDE`."""
    scale = VIEW_SIDE / max(gray.size)
    if scale >= 1:
        return gray
    return gray.resize((max(1, round(gray.width * scale)), max(1, round(gray.height * scale))), Image.Resampling.BOX)


def thumbnails(gray: Image.Image, plain: np.ndarray) -> list[np.ndarray]:
    """The 32x32 thumbnails of every view in :data:`VIEW_NAMES` order; ``plain`` is the one the
    plain pHash was computed from (the others come from :func:`reduced`)."""
    small = reduced(gray)
    whole = (0, 0, small.width, small.height)
    trim = border_box(np.asarray(small))
    boxes = {"trim": trim, "center": center_box(whole), "trim_center": center_box(trim)}
    upright = [plain]
    for name in UPRIGHT_VIEWS[1:]:
        box = boxes[name]
        upright.append(plain if box == whole else hashing.phash_pixels(small.crop(box)))
    return upright + [np.ascontiguousarray(t[:, ::-1]) for t in upright]


def hash_views(gray: Image.Image, plain: np.ndarray) -> list[str]:
    """Hex pHashes of every view, in :data:`VIEW_NAMES` order."""
    return [hashing.to_hex(hashing.phash_from_pixels(t)) for t in thumbnails(gray, plain)]
