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
"""

from __future__ import annotations

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
    """``gray`` (mode L) box-reduced by the largest whole factor that keeps its short side at
    least :data:`HASH_SIDE` (unchanged when it is already below twice that). pHash and dHash
    values equal ``imagehash.phash`` / ``imagehash.dhash`` of this image."""
    factor = min(gray.size) // HASH_SIDE
    return gray.reduce(factor) if factor > 1 else gray


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
