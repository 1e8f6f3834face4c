"""Views of one decoded image, hashed beside its plain pHash for near-duplicate search.

A plain pHash misses most copies padded with a border (the picture shrinks inside the frame),
most copies cropped by 5-12 % (the picture grows and shifts) and every mirrored copy. All three
are cheap to catch from the decode that is already open, by hashing more than one view.

Two sets of views, compared one way (``trainset.neardup``):

- the *query* views, :data:`QUERY_VIEWS`: ``plain`` (the whole picture) and ``trim`` (uniform
  borders such as letterboxing, padding or a flat background dropped pass after pass), and,
  when ``near_dup.mirror`` asks for mirrored copies, their left-right flips;
- the *search* views, :data:`SEARCH_VIEWS`: the query views plus sub-boxes of the whole and of
  the trimmed picture (:data:`BOXES`: the centre at 90 % and 80 %, the four corners and the four
  sides at 90 %, and 92 % strips across): where a cropped copy's whole picture sits in its
  original.

A pair's distance is the fewest differing bits between a query view of either image and a
search view of the other. Comparing sub-box with sub-box as well would let two different
pictures meet in some corner: on copies made from real images that costs precision for no
recall. Views are cut from the hash input (``hashing.hash_input``: the grayscale image
box-reduced to about 64 px on its short side); a view whose box equals another's reuses its
hash. The order of :data:`VIEW_NAMES` is the order of the ``phash_views`` list in the audit
manifest.

An image with transparency is trimmed to the box of its visible (non-zero alpha) pixels
(:func:`alpha_box`), which is exact where a colour tolerance would eat into a dark outline. A
picture whose border covers :data:`BORDER_DOMINANT` of its area or more (a sprite on a transparent
canvas, a small picture on a large one) is known by its trimmed picture alone: every view is the
trimmed view (mirrors its mirror), because the plain pHash of such an image mostly describes the
empty canvas, and two different sprites on one canvas size then sit a few bits apart.
"""

from __future__ import annotations

import functools

import numba
import numpy as np
from PIL import Image

from . import hashing, kernels
from .view_names import BOXES, MIRROR_VIEWS, QUERY_VIEWS, SEARCH_VIEWS, VIEW_NAMES  # noqa: F401 (the names live there)

TRIM_TOLERANCE = 12
"""Grey levels a border pixel may differ from its edge's median (JPEG ringing, dithering)."""

TRIM_MIN_FRACTION = 0.98
"""Share of a row or column that must be within the tolerance for it to count as border."""

TRIM_MIN_KEEP = 0.2
"""A trim that keeps less than this share of either side is refused (a nearly flat image)."""

BORDER_DOMINANT = 0.5
"""Share of the area at which the border outweighs the picture: from there on, every view is the trimmed one."""

TRIM_PASSES = 3
"""Nested borders (a coloured pad around a white background) trim in successive passes."""


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


def alpha_box(alpha: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(left, top, right, bottom)`` of the visible pixels (alpha above 0) of ``alpha`` (2-D), or
    ``None`` when nothing is transparent or nothing is visible."""
    visible = alpha > 0
    if visible.all() or not visible.any():
        return None
    rows = np.flatnonzero(visible.any(axis=1))
    cols = np.flatnonzero(visible.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def sub_box(box: tuple[int, int, int, int], fractions: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
    """The part of ``box`` (pixels, Pillow's crop order) that ``fractions`` names; ``box`` itself
    when that would be empty."""
    left, top, right, bottom = box
    width, height = right - left, bottom - top
    x0, y0, x1, y1 = fractions
    inner = (left + round(x0 * width), top + round(y0 * height), left + round(x1 * width), top + round(y1 * height))
    return inner if inner[2] > inner[0] and inner[3] > inner[1] else box


def view_inputs(
    small: Image.Image | np.ndarray, plain: np.ndarray, trim: tuple[int, int, int, int] | None = None
) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """What the views of ``small`` (the hash input, ``hashing.hash_input``, or its 2-D uint8
    array) are hashed from: ``thumbs``, the plain 32x32 thumbnail ``plain`` and its mirror (hashed
    with imagehash's arithmetic, so the plain view is the stored pHash); ``lows``, the box DCT
    (``hashing.box_lows``) of every other distinct box, then of the mirrored trimmed picture; and
    for each view in :data:`VIEW_NAMES` order its row among ``thumbs`` then ``lows``. Views of one
    box (``trim_*`` of a picture without border) share a row, so each is hashed once. ``trim``:
    the trimmed box (:func:`border_box` of ``small`` when not given)."""
    gray = np.asarray(small.convert("L")) if isinstance(small, Image.Image) else small
    trim = border_box(gray) if trim is None else tuple(trim)
    distinct, rows, trim_row = _layout(gray.shape[1], gray.shape[0], trim)
    thumbs = np.stack([plain, plain[:, ::-1]])
    lows = hashing.box_lows(gray, distinct) if distinct else np.zeros((0, kernels.PHASH_LOW**2))
    if trim_row is not None:
        lows = np.concatenate([lows, hashing.mirror_lows(lows[trim_row - len(thumbs)])[None]])
    return thumbs, lows, rows


@functools.lru_cache(maxsize=4096)
def _layout(width: int, height: int, trim: tuple[int, int, int, int]):
    """For :func:`view_inputs`: the distinct boxes besides the whole picture, each view's row
    (0 the plain thumbnail, 1 its mirror, then the boxes, then the mirrored trim when there is a
    border), and the trimmed picture's row when there is one. A border of :data:`BORDER_DOMINANT`
    or more makes every view the trimmed one."""
    whole = (0, 0, width, height)
    thumbs = 2
    if _fraction(whole, trim) >= BORDER_DOMINANT:
        return (trim,), (thumbs,) * len(SEARCH_VIEWS) + (thumbs + 1,) * len(MIRROR_VIEWS), thumbs
    boxes = [whole, trim] + [sub_box(whole, f) for f in BOXES.values()] + [sub_box(trim, f) for f in BOXES.values()]
    row_of = {whole: 0}
    distinct = []
    for box in boxes:
        if box not in row_of:
            row_of[box] = thumbs + len(distinct)
            distinct.append(box)
    rows = [row_of[box] for box in boxes]
    if trim == whole:
        return tuple(distinct), (*rows, 1, 1), None  # plain_mirror, trim_mirror
    return tuple(distinct), (*rows, 1, thumbs + len(distinct)), row_of[trim]


def border_fraction(gray: np.ndarray, trim: tuple[int, int, int, int] | None = None) -> float:
    """Share of the picture's area that is uniform border (:func:`border_box`, or the ``trim`` box
    given): 0 without one."""
    height, width = gray.shape
    return _fraction((0, 0, width, height), border_box(gray) if trim is None else trim)


def _fraction(whole: tuple[int, int, int, int], trim: tuple[int, int, int, int]) -> float:
    left, top, right, bottom = trim
    return 1.0 - ((right - left) * (bottom - top)) / float(whole[2] * whole[3]) + 0.0


def hash_views(small: Image.Image, plain: np.ndarray) -> list[str]:
    """Hex pHashes of every view of the hash input ``small``, in :data:`VIEW_NAMES` order."""
    thumbs, lows, rows = view_inputs(small, plain)
    values = list(kernels.phash_batch(thumbs, be=kernels.HOST)) + list(kernels.phash_from_lows(lows, be=kernels.HOST))
    return [hashing.to_hex(int(values[row])) for row in rows]
