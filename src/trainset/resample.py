"""Pillow's Lanczos downscale and box reduce of 8-bit grayscale images, as compiled calls.

pHash and dHash must equal imagehash's, which resizes with ``Image.resize(size, LANCZOS)``. For
the small hash inputs (about 64 px) Pillow spends most of that call on overhead, and every image
needs three to five such thumbnails. This module computes the same pixels:

- the same coefficients: Pillow's ``precompute_coeffs`` (double precision, glibc ``sin``, each
  row normalised to sum 1) rounded to its 22-bit fixed point (``normalize_coeffs_8bpc``);
- the same two passes, each summing ``pixel * coefficient`` from ``2**21`` and keeping
  ``sum >> 22`` clipped to 0..255 (exact integers, so the order of the sums does not matter);
- the same order of the two passes: Pillow picks horizontal-first or vertical-first per shape,
  so the order is learned once per (input size, output size) by resizing random probe images
  both ways and comparing with Pillow itself (more probes when one cannot tell the orders apart). A shape where neither order reproduces Pillow
  (a Pillow whose arithmetic changed) is resized by Pillow from then on.

The hash input (``hashing.hash_input``) is a whole-factor ``Image.reduce``; :func:`reduce` gives
the same pixels from the array the measures already read, without a second copy out of Pillow.
"""

from __future__ import annotations

import functools
import math

import numba
import numpy as np
from PIL import Image

PRECISION = 22
"""Fixed-point bits of Pillow's 8-bit resampling coefficients."""
_SUPPORT = 3.0  # Lanczos-3


def _lanczos(x: float) -> float:
    if not -3.0 <= x < 3.0:
        return 0.0
    return _sinc(x) * _sinc(x / 3.0)


def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x = x * math.pi
    return math.sin(x) / x


@functools.lru_cache(maxsize=512)
def coefficients(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(bounds, weights)`` for resampling ``in_size`` pixels to ``out_size``: per output pixel
    the first input pixel and count (int64, shape (out, 2)), and the fixed-point weights (int32,
    shape (out, ksize), zero past the count)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = _SUPPORT * filterscale
    ss = 1.0 / filterscale  # Pillow multiplies by the reciprocal: dividing differs in the last bit now and then
    ksize = int(math.ceil(support)) * 2 + 1
    bounds = np.zeros((out_size, 2), dtype=np.int64)
    weights = np.zeros((out_size, ksize), dtype=np.int32)  # Pillow's INT32 coefficients and sums
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        count = min(int(center + support + 0.5), in_size) - xmin
        row = [_lanczos((x + xmin - center + 0.5) * ss) for x in range(count)]
        total = 0.0
        for w in row:  # left to right, as Pillow adds them
            total += w
        for x, w in enumerate(row):
            w = w / total if total != 0.0 else w
            weights[xx, x] = int(-0.5 + w * (1 << PRECISION)) if w < 0 else int(0.5 + w * (1 << PRECISION))
        bounds[xx] = xmin, count
    return bounds, weights


@numba.njit(cache=True, nogil=True)
def _clip8(total):
    v = total >> 22
    return 0 if v < 0 else (255 if v > 255 else v)


@numba.njit(cache=True, nogil=True)
def _horizontal(a, bounds, weights):
    """The horizontal pass as the vertical pass of the transposed image (long, contiguous inner
    loops), transposed back."""
    return _vertical(np.ascontiguousarray(a.T), bounds, weights).T.copy()


@numba.njit(cache=True, nogil=True)
def _vertical(a, bounds, weights):
    width = a.shape[1]
    out = np.empty((bounds.shape[0], width), dtype=np.uint8)
    total = np.empty(width, dtype=np.int32)
    for yy in range(bounds.shape[0]):
        ymin, count = bounds[yy, 0], bounds[yy, 1]
        total[:] = 1 << 21
        for y in range(count):  # row by row: the inner loop runs along a contiguous row
            w = weights[yy, y]
            for x in range(width):
                total[x] += np.int32(a[ymin + y, x]) * w
        for x in range(width):
            out[yy, x] = _clip8(total[x])
    return out


@numba.njit(cache=True, nogil=True)
def _resize(a, h_bounds, h_weights, v_bounds, v_weights, vertical_first):
    """Both passes in one call (an empty ``bounds`` skips that pass)."""
    if vertical_first:
        if v_bounds.shape[0]:
            a = _vertical(a, v_bounds, v_weights)
        if h_bounds.shape[0]:
            a = _horizontal(a, h_bounds, h_weights)
    else:
        if h_bounds.shape[0]:
            a = _horizontal(a, h_bounds, h_weights)
        if v_bounds.shape[0]:
            a = _vertical(a, v_bounds, v_weights)
    return a


_NO_PASS = (np.zeros((0, 2), dtype=np.int64), np.zeros((0, 1), dtype=np.int64))


def _passes(a: np.ndarray, size: tuple[int, int], vertical_first: bool) -> np.ndarray:
    height, width = a.shape
    out_w, out_h = size
    # Pillow skips a pass whose size does not change
    h = coefficients(width, out_w) if out_w != width else _NO_PASS
    v = coefficients(height, out_h) if out_h != height else _NO_PASS
    return _resize(a, h[0], h[1], v[0], v[1], vertical_first)


@functools.lru_cache(maxsize=4096)
def _order(shape: tuple[int, int], size: tuple[int, int]) -> str:
    """'hv', 'vh' or 'pillow': which order of passes reproduces Pillow for this shape.

    One random probe usually tells the orders apart; where both reproduce it, more probes,
    uniform and black-and-white, break the tie. Outputs one or two pixels wide or high go to
    Pillow itself: there, neither order reproduces every image."""
    if min(size) <= 2:
        return "pillow"
    rng = np.random.default_rng(sum(shape) * 7919 + sum(size))
    candidates = ["hv", "vh"]
    for k in range(_TIE_PROBES):
        probe = rng.integers(0, 256, size=shape, dtype=np.uint8) if k % 2 == 0 else rng.integers(0, 2, size=shape, dtype=np.uint8) * 255
        want = np.asarray(Image.fromarray(probe).resize(size, Image.Resampling.LANCZOS))
        candidates = [order for order in candidates if np.array_equal(_passes(probe, size, order == "vh"), want)]
        if len(candidates) < 2:
            break
    return candidates[0] if candidates else "pillow"


_TIE_PROBES = 16


def lanczos(gray: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``gray`` (2-D uint8) resized to ``size`` = (width, height): the pixels of
    ``Image.fromarray(gray).resize(size, Image.Resampling.LANCZOS)``."""
    a = np.ascontiguousarray(gray, dtype=np.uint8)
    if a.shape == (size[1], size[0]):
        return a.copy()
    order = _order(a.shape, tuple(size))
    if order == "pillow":
        return np.asarray(Image.fromarray(a).resize(size, Image.Resampling.LANCZOS))
    return _passes(a, size, order == "vh")


def _reduce_multiplier(area: int) -> int:
    """Pillow's ``division_UINT32(area, 8)``: 2**32 / (256 x area) in single precision, truncated."""
    return int(np.float32(4294967296.0) / np.float32(256 * area))


@numba.njit(cache=True, nogil=True)
def _reduce(a, factor, multipliers):
    """Box means over ``factor`` x ``factor`` blocks; the last row and column of blocks may be
    partial. ``multipliers[k]`` is Pillow's fixed-point reciprocal of a block of ``k`` pixels.
    Each band of rows is summed down its columns, then across each block, in loops that run
    along contiguous memory."""
    height, width = a.shape
    out_h = (height + factor - 1) // factor
    out_w = (width + factor - 1) // factor
    full_w = width // factor
    out = np.empty((out_h, out_w), dtype=np.uint8)
    columns = np.empty(width, dtype=np.uint32)
    blocks = np.empty(out_w, dtype=np.uint32)
    for oy in range(out_h):
        y0 = oy * factor
        y1 = min(height, y0 + factor)
        for x in range(width):
            columns[x] = a[y0, x]
        for y in range(y0 + 1, y1):
            for x in range(width):
                columns[x] += a[y, x]
        blocks[:] = 0
        for k in range(factor):
            for ox in range(full_w):
                blocks[ox] += columns[ox * factor + k]
        for x in range(full_w * factor, width):  # the partial last block
            blocks[full_w] += columns[x]
        area = (y1 - y0) * factor
        half = np.uint32(area // 2)
        multiplier = np.uint32(multipliers[area])
        for ox in range(full_w):
            out[oy, ox] = (np.uint64(blocks[ox] + half) * multiplier) >> 24
        if full_w < out_w:
            area = (y1 - y0) * (width - full_w * factor)
            out[oy, full_w] = (np.uint64(blocks[full_w] + area // 2) * multipliers[area]) >> 24
    return out


@functools.lru_cache(maxsize=64)
def _reduce_multipliers(factor: int) -> np.ndarray:
    return np.array([0] + [_reduce_multiplier(k) for k in range(1, factor * factor + 1)], dtype=np.uint64)


def _reduce_matches_pillow(shape: tuple[int, int], factor: int) -> bool:
    """Does :func:`reduce` reproduce Pillow's ``Image.reduce`` for this shape? Pillow's arithmetic
    depends on the factor and on the partial blocks at the right and bottom edges only, so one
    small probe per (factor, remainders) stands for every shape that shares them."""
    return _probe_reduce(factor, shape[0] % factor, shape[1] % factor)


@functools.lru_cache(maxsize=4096)
def _probe_reduce(factor: int, rest_h: int, rest_w: int) -> bool:
    shape = (2 * factor + rest_h, 3 * factor + rest_w)
    probe = np.random.default_rng([factor, rest_h, rest_w]).integers(0, 256, size=shape, dtype=np.uint8)
    want = np.asarray(Image.fromarray(probe).reduce(factor))
    return np.array_equal(_reduce(probe, factor, _reduce_multipliers(factor)), want)


def reduce(gray: np.ndarray, factor: int) -> np.ndarray:
    """``gray`` (2-D uint8) box-reduced by a whole ``factor``: the pixels of
    ``Image.fromarray(gray).reduce(factor)`` (the same rounding, ``(sum + n/2) x`` a fixed-point
    reciprocal ``>> 24``, and the same partial blocks at the right and bottom edges). A shape where a
    probe finds a difference (a Pillow whose arithmetic changed) is reduced by Pillow itself."""
    a = np.ascontiguousarray(gray, dtype=np.uint8)
    if factor <= 1:
        return a.copy()
    if not _reduce_matches_pillow(a.shape, factor):
        return np.asarray(Image.fromarray(a).reduce(factor))
    return _reduce(a, factor, _reduce_multipliers(factor))
