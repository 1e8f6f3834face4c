"""Content and perceptual hashes: the one place every hash in trainset is computed.

Every perceptual hash is computed from one small grayscale image, :func:`hash_input`: the
decoded grayscale image reduced by a whole box factor until its short side is just at or
above :data:`HASH_SIDE`. pHash keeps only the 8x8 lowest frequencies of a 32x32 thumbnail, so
nothing it reads is lost, and thumbnails (Lanczos, whose cost grows with the input) stay cheap.

pHash follows ``imagehash.phash`` arithmetic exactly (grayscale, 32x32 Lanczos, scipy's
DCT-II along rows then columns, top-left 8x8 compared with its median), so stored values
equal ``str(imagehash.phash(img))`` for the same decoded image.

dHash follows ``imagehash.dhash`` the same way (grayscale, 9x8 Lanczos, each pixel compared
with its left neighbour, row by row), so stored values equal ``str(imagehash.dhash(img))``.

The box pHash (:func:`box_lows`) hashes many boxes of one image (the search views of
``trainset.views``) without making their thumbnails: resize and DCT are both linear, so the 8x8
coefficients of a box come from two products with precomputed matrices, rounded to integers
(:data:`BOX_DCT_BITS`) so every sum is exact. It differs from the pHash of the box's 8-bit
thumbnail only where that thumbnail rounds or clips (on real images, 0.1 bits on average), costs
about a third as much, and gives the same bits on NumPy and CuPy whatever order the sums run in.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

from trainset import kernels, resample

DHASH_SIZE = 8
_CHUNK = 1 << 20

HASH_SIDE = 64
"""Short side (px) the hash input is reduced towards: twice the 32 px pHash thumbnail."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def md5_file(path: str | Path) -> str:
    """Hex MD5 of a file's bytes: what booru post records give, checked against the image."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hash_input(gray: Image.Image) -> Image.Image:
    """``gray`` (mode L) box-reduced (``Image.reduce``) by the largest whole factor that keeps its
    short side at least :data:`HASH_SIDE` (unchanged when it is already below twice that). pHash
    and dHash values equal ``imagehash.phash`` / ``imagehash.dhash`` of this image."""
    factor = min(gray.size) // HASH_SIDE
    return Image.fromarray(resample.reduce(np.asarray(gray), factor)) if factor > 1 else gray


def hash_input_array(gray: np.ndarray) -> np.ndarray:
    """:func:`hash_input` of a 2-D uint8 array (``resample.reduce``: Pillow's pixels). Another plane
    of the same image (its alpha) reduces alike, to the same shape."""
    factor = min(gray.shape) // HASH_SIDE
    return resample.reduce(gray, factor) if factor > 1 else gray


def phash_pixels(image: Image.Image) -> np.ndarray:
    """The 32x32 grayscale thumbnail pHash works on (as imagehash makes it: Pillow's ``convert("L")``,
    then its Lanczos resize, computed by ``trainset.resample``)."""
    return phash_thumb(np.asarray(image.convert("L")))


def phash_thumb(gray: np.ndarray) -> np.ndarray:
    """:func:`phash_pixels` of a 2-D uint8 grayscale array."""
    return resample.lanczos(gray, (kernels.PHASH_THUMB, kernels.PHASH_THUMB))


def phash_from_pixels(pixels: np.ndarray) -> int:
    """64-bit pHash of one 32x32 thumbnail, first bit most significant (imagehash's hex order).
    On the host: one thumbnail does not pay for a device round trip."""
    return int(kernels.phash_batch(np.asarray(pixels)[None], be=kernels.HOST)[0])


def phash(image: Image.Image) -> int:
    return phash_from_pixels(phash_pixels(image))


BOX_DCT_BITS = 12
"""Fixed-point bits of :func:`box_dct_matrix`. A row of the matrix adds up to at most ~80 in
absolute value (the DCT row, |2 cos| <= 2, times 32 Lanczos rows of absolute sum ~1.2) plus half a
unit per entry for rounding, so for a line of n pixels the first product is below
255 x (80 x 2**12 + n / 2) and the second below that times (80 x 2**12 + n / 2): under 2**47 for
n up to 10,000, well inside float64's exact integers (2**53)."""

_MIRROR_SIGNS = np.tile(np.array([1.0, -1.0] * (kernels.PHASH_LOW // 2)), kernels.PHASH_LOW)
"""Per coefficient (row-major 8x8, horizontal frequency fastest): the sign a left-right flip gives it."""


@functools.lru_cache(maxsize=4096)
def box_dct_matrix(n: int) -> np.ndarray:
    """``(8, n)`` float64 holding integers: 2**:data:`BOX_DCT_BITS` times the 8 low DCT-II rows
    pHash keeps (``kernels.dct_basis``) applied to Pillow's Lanczos weights from ``n`` pixels to 32
    (none when ``n`` is 32, as Pillow skips that pass). Symmetrised before rounding, so the
    matrix of a reversed line is exactly this one with its odd rows negated."""
    size = kernels.PHASH_THUMB
    weights = np.eye(size)
    if n != size:
        bounds, fixed = resample.coefficients(n, size)
        weights = np.zeros((size, n))
        for row, (first, count) in enumerate(bounds):
            weights[row, first:first + count] = fixed[row, :count] / (1 << resample.PRECISION)
    scaled = kernels.dct_basis() @ weights * (1 << BOX_DCT_BITS)
    signs = _MIRROR_SIGNS[: kernels.PHASH_LOW, None]
    matrix = np.rint((scaled + signs * scaled[:, ::-1]) / 2)
    matrix.setflags(write=False)
    return matrix


def box_lows(gray: np.ndarray, boxes: tuple[tuple[int, int, int, int], ...]) -> np.ndarray:
    """``(len(boxes), 64)`` exact-integer low DCT coefficients (row-major 8x8) of each box
    ``(left, top, right, bottom)`` of ``gray`` (2-D uint8): ``Y @ gray[box] @ X.T`` with
    :func:`box_dct_matrix` of the box's height and width, all boxes from two matrix products.
    :func:`kernels.phash_from_lows` turns them into hashes."""
    ys, xs, pick_y, pick_x = _box_plan(gray.shape, tuple(boxes))
    low = kernels.PHASH_LOW
    every = ((ys @ gray.astype(np.float64)) @ xs).reshape(len(ys) // low, low, xs.shape[1] // low, low)
    return every[pick_y, :, pick_x, :].reshape(len(boxes), low * low)


@functools.lru_cache(maxsize=1024)
def _box_plan(shape: tuple[int, int], boxes: tuple[tuple[int, int, int, int], ...]):
    """The stacked matrices of :func:`box_lows` for one image size and set of boxes (a collection
    of one size without borders repeats them): each distinct row span and column span once, and
    which of each every box takes."""
    height, width = shape
    rows: dict[tuple[int, int], int] = {}
    cols: dict[tuple[int, int], int] = {}
    for left, top, right, bottom in boxes:
        rows.setdefault((top, bottom), len(rows))
        cols.setdefault((left, right), len(cols))
    low = kernels.PHASH_LOW
    ys = np.zeros((low * len(rows), height))
    for (top, bottom), k in rows.items():
        ys[low * k : low * (k + 1), top:bottom] = box_dct_matrix(bottom - top)
    xs = np.zeros((width, low * len(cols)))
    for (left, right), k in cols.items():
        xs[left:right, low * k : low * (k + 1)] = box_dct_matrix(right - left).T
    pick_y = np.array([rows[top, bottom] for _, top, _, bottom in boxes], dtype=np.intp)
    pick_x = np.array([cols[left, right] for left, _, right, _ in boxes], dtype=np.intp)
    for array in (ys, xs, pick_y, pick_x):
        array.setflags(write=False)
    return ys, xs, pick_y, pick_x


def mirror_lows(lows: np.ndarray) -> np.ndarray:
    """The :func:`box_lows` of the left-right mirrored boxes: odd horizontal frequencies negated."""
    return lows * _MIRROR_SIGNS


def dhash_pixels(image: Image.Image) -> np.ndarray:
    """The 8-row, 9-column grayscale thumbnail dHash works on (as imagehash makes it)."""
    return dhash_thumb(np.asarray(image.convert("L")))


def dhash_thumb(gray: np.ndarray) -> np.ndarray:
    """:func:`dhash_pixels` of a 2-D uint8 grayscale array."""
    return resample.lanczos(gray, (DHASH_SIZE + 1, DHASH_SIZE))


def dhash_from_pixels(pixels: np.ndarray) -> int:
    """64-bit dHash of one 8x9 thumbnail: bit set where a pixel is brighter than its left
    neighbour, rows top to bottom, first bit most significant (imagehash's hex order)."""
    return int(kernels.dhash_batch(np.asarray(pixels)[None], be=kernels.HOST)[0])


def dhash(image: Image.Image) -> int:
    return dhash_from_pixels(dhash_pixels(image))


def to_hex(value: int) -> str:
    return f"{value:016x}"


def from_hex(values) -> np.ndarray:
    """Hex strings to a uint64 array (for the Hamming kernels)."""
    return np.array([int(v, 16) for v in values], dtype=np.uint64)
