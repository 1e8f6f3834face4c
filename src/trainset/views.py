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

Two images are as close as their closest pair of views (``trainset.neardup``). Views are cut
from the hash input (``hashing.hash_input``: the grayscale image box-reduced to about 64 px on
its short side), and the order of :data:`VIEW_NAMES` is the order of the
``phash_views`` list in the audit manifest.
"""

from __future__ import annotations

import numba
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

UPRIGHT_VIEWS = ("plain", "trim", "center", "trim_center")
VIEW_NAMES = UPRIGHT_VIEWS + tuple(f"{v}_mirror" for v in UPRIGHT_VIEWS)


@numba.njit(cache=True, nogil=True)
def _leading(a, top, bottom, left, right, axis, reverse, tolerance, min_fraction):
    """How many lines of ``a[top:bottom, left:right]`` from one edge (rows when ``axis`` is 0,
    columns when 1; from the far edge when ``reverse``) are uniform like the outermost one:
    within ``tolerance`` of its median on at least ``min_fraction`` of their pixels."""
    n = (bottom - top) if axis == 0 else (right - left)
    m = (right - left) if axis == 0 else (bottom - top)
    first = np.empty(m, dtype=np.float64)
    for c in range(m):
        first[c] = _at(a, top, bottom, left, right, axis, reverse, 0, c)
    ref = np.median(first)
    for r in range(n):
        close = 0
        for c in range(m):
            if abs(_at(a, top, bottom, left, right, axis, reverse, r, c) - ref) <= tolerance:
                close += 1
        if close / m < min_fraction:
            return r
    return n


@numba.njit(inline="always")
def _at(a, top, bottom, left, right, axis, reverse, r, c):
    if axis == 0:
        return float(a[bottom - 1 - r if reverse else top + r, left + c])
    return float(a[top + c, right - 1 - r if reverse else left + r])


@numba.njit(cache=True, nogil=True)
def _border_box(a, passes, tolerance, min_fraction, min_keep):
    height, width = a.shape
    left, top, right, bottom = 0, 0, width, height
    for _ in range(passes):
        if bottom - top < 2 or right - left < 2:
            break
        t = _leading(a, top, bottom, left, right, 0, False, tolerance, min_fraction)
        b = _leading(a, top, bottom, left, right, 0, True, tolerance, min_fraction)
        lft = _leading(a, top, bottom, left, right, 1, False, tolerance, min_fraction)
        rgt = _leading(a, top, bottom, left, right, 1, True, tolerance, min_fraction)
        if t + b >= bottom - top or lft + rgt >= right - left or (t == 0 and b == 0 and lft == 0 and rgt == 0):
            break  # uniform all through, or nothing more to trim
        top, bottom, left, right = top + t, bottom - b, left + lft, right - rgt
    if (right - left) < min_keep * width or (bottom - top) < min_keep * height:
        return 0, 0, width, height
    return left, top, right, bottom


def border_box(gray: np.ndarray) -> tuple[int, int, int, int]:
    """``(left, top, right, bottom)`` of ``gray`` (2-D, 0..255) without its uniform borders, in
    Pillow's crop order; the whole image when nothing is trimmed or too little would be left.
    Up to :data:`TRIM_PASSES` passes, each dropping the uniform lines on all four sides."""
    box = _border_box(np.ascontiguousarray(gray), TRIM_PASSES, float(TRIM_TOLERANCE), float(TRIM_MIN_FRACTION), float(TRIM_MIN_KEEP))
    return tuple(int(v) for v in box)


def center_box(box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    left, top, right, bottom = box
    dx = (right - left) * (1 - CENTER_FRACTION) / 2
    dy = (bottom - top) * (1 - CENTER_FRACTION) / 2
    inner = (round(left + dx), round(top + dy), round(right - dx), round(bottom - dy))
    return inner if inner[2] > inner[0] and inner[3] > inner[1] else box


def thumbnails(small: Image.Image | np.ndarray, plain: np.ndarray) -> list[np.ndarray]:
    """The 32x32 thumbnails of every view in :data:`VIEW_NAMES` order, cut from ``small`` (the
    hash input, ``hashing.hash_input``, or its 2-D uint8 array); ``plain`` is its own thumbnail,
    the plain pHash's."""
    gray = np.asarray(small.convert("L")) if isinstance(small, Image.Image) else small
    whole = (0, 0, gray.shape[1], gray.shape[0])
    trim = border_box(gray)
    made = {whole: plain}  # a view whose box another view has is the same thumbnail
    upright = [plain]
    for box in (trim, center_box(whole), center_box(trim)):
        if box not in made:
            left, top, right, bottom = box
            made[box] = hashing.phash_thumb(gray[top:bottom, left:right])
        upright.append(made[box])
    return upright + [t[:, ::-1] for t in upright]


def hash_views(small: Image.Image, plain: np.ndarray) -> list[str]:
    """Hex pHashes of every view of the hash input ``small``, in :data:`VIEW_NAMES` order."""
    return [hashing.to_hex(hashing.phash_from_pixels(t)) for t in thumbnails(small, plain)]
