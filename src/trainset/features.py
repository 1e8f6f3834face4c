"""Per-item image features: one decode per distinct content, cached across runs.

The cache key is the content SHA-256 plus everything that changes the result: the feature
params (including the decompression-bomb pixel limit), this module's and the hashing
module's code, and the trainset and Pillow versions. Adding one image to a source
therefore decodes that image only.

Besides the identity fields (SHA-256 of the bytes decoded, format, mode, upright size, EXIF
orientation, pHash, dHash, and the pHashes of the query, search and mirrored views of
``trainset.views``) one decode yields the measures the audit checks judge (``trainset.audit_checks``). They are
stored per item, so a threshold can change later without decoding anything again:

- ``n_frames`` / ``animated``: frame count (animated GIF/PNG/WebP, multi-page TIFF; a
  multi-picture JPEG, MPO, counts its pictures but is not animated);
- ``has_alpha`` / ``alpha_min``: whether the image can be transparent (an alpha mode, or a
  ``transparency`` entry on P/L/RGB) and the lowest alpha it really uses (255: opaque);
- ``bit_depth``: bits per channel of the stored mode (1, 8, 16 or 32);
- ``luma_mean`` / ``luma_std``: brightness and contrast (0..255) of the grayscale image;
- ``entropy``: Shannon entropy (bits, 0..8) of its 256-bin histogram;
- ``laplacian_var``: a blur measure, see :func:`laplacian_var`;
- ``border_fraction``: the share of the area that is uniform border (padding, letterboxing),
  from the trimmed view (``trainset.views.border_box``) at the hash input's scale.

The pixel measures are taken on the EXIF-upright first frame; 16- and 32-bit images are
scaled to 8 bits first (:func:`gray8`), not clipped. A failed decode gets the defaults in
:func:`_failed` (float measures ``None``, written as NaN in the audit manifest).
"""

from __future__ import annotations

import contextlib
import functools
import io
import itertools
import json
import os
import stat
import warnings
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from . import atomic, hashing, kernels, progress, views
from .provenance import code_digest, params_digest, versions

_ORIENTATION_TAG = 0x0112

DEFAULT_MAX_PIXELS = 89_478_485
"""Pillow's own default ``Image.MAX_IMAGE_PIXELS`` (``audit.max_pixels`` in params.yaml)."""

ANALYSIS_SIDE = 256
"""The pixel measures' scale: JPEGs are decoded at the smallest DCT scale that keeps both sides
at least this, and the Laplacian is taken with the longest side resized (Lanczos) to it. At
256 px a blur of 3 px (at 512 px) still separates from every sharp sample photo
(``trainset.audit_checks``); a 512 px JPEG decodes at half scale, about 1.6x faster, and its
hashes (``hashing.hash_input``, about 64 px) lose nothing."""

ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_TRANSPARENCY_MODES = frozenset({"P", "L", "RGB", "1", "I", "I;16", "I;16B", "I;16L", "I;16N"})
MEASURES = ("n_frames", "animated", "has_alpha", "alpha_min", "bit_depth", "luma_mean", "luma_std", "entropy", "laplacian_var", "border_fraction")


def feature_key(params: dict | None = None) -> str:
    """Cache key for ``params`` (the decode-affecting settings; ``max_pixels`` defaults to
    :data:`DEFAULT_MAX_PIXELS`, so leaving it out and giving the default are the same key)."""
    params = {"max_pixels": DEFAULT_MAX_PIXELS, **(params or {})}
    return params_digest({"params": params, "code": code_digest("features", "hashing", "views", "kernels", "resample"), "versions": versions()})


def _failed(reason: str, detail: str, fmt: str | None = None, width: int = 0, height: int = 0) -> dict:
    return {
        "decoded": False, "reason": reason, "detail": detail, "format": fmt, "mode": None,
        "width": int(width), "height": int(height), "exif_orientation": 1, "phash": None,
        "dhash": None, "phash_views": [], "n_frames": 1, "animated": False, "has_alpha": False, "alpha_min": 255, "bit_depth": 0,
        "luma_mean": None, "luma_std": None, "entropy": None, "laplacian_var": None, "border_fraction": None,
    }


class MissingFile(FileNotFoundError):
    """A file the ingest manifest lists is gone: the manifest is stale, not the file broken."""


class ContentChanged(RuntimeError):
    """A file's bytes no longer match the SHA-256 the ingest manifest recorded for it."""


@contextlib.contextmanager
def no_pillow_pixel_limit():
    """Switch off Pillow's decompression-bomb check (it warns above ``MAX_IMAGE_PIXELS`` and
    raises above twice that, before the header size can be read back): :func:`extract`
    applies its own limit (``max_pixels``) from the header instead, before anything is
    decoded, so Pillow never warns or raises first for an image under that limit."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def bit_depth(mode: str) -> int:
    """Bits per channel of a Pillow mode: 1 for '1', 16 for I;16*, 32 for I and F, else 8."""
    if mode == "1":
        return 1
    if mode.startswith("I;16"):
        return 16
    if mode in ("I", "F"):
        return 32
    return 8


def gray8(image: Image.Image) -> Image.Image:
    """The image as 8-bit grayscale ('L'), scaling high bit depths instead of clipping them.

    Pillow's own ``convert("L")`` clips I;16 values above 255 to white. Here I;16* is scaled
    from 0..65535; I from 0..65535 when any value exceeds 255 (16-bit data Pillow opened as
    I), else taken as 0..255; F from 0..1 when its maximum is at most 1, else taken as 0..255.
    Everything else goes through Pillow (CMYK, P, RGB, LA, ... to L).
    """
    mode = image.mode
    if not (mode.startswith("I;16") or mode in ("I", "F")):
        return image if mode == "L" else image.convert("L")
    values = np.asarray(image, dtype=np.float64)
    top = float(values.max()) if values.size else 0.0
    if mode.startswith("I;16"):
        full = 65535.0
    elif mode == "I":
        full = 65535.0 if top > 255 else 255.0
    else:
        full = 1.0 if top <= 1.0 else 255.0
    scaled = np.clip(np.rint(values * (255.0 / full)), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled)


def alpha_plane(image: Image.Image) -> np.ndarray | None:
    """The alpha of an image that can be transparent, as a 2-D uint8 array (0 transparent, 255
    opaque); ``None`` when it cannot be.

    Alpha modes (RGBA, LA, PA) give their alpha band; P/L/RGB (and 1, I, I;16) with a
    ``transparency`` entry are transparent where the keyed colour or palette alpha is used (a key
    given as bytes, outside a palette, marks nothing).
    """
    mode = image.mode
    if mode in ALPHA_MODES:
        return np.asarray(image.getchannel("A"))
    key = image.info.get("transparency")
    if key is None or mode not in _TRANSPARENCY_MODES:
        return None
    if mode == "P":
        return np.asarray(image.convert("RGBA").getchannel("A"))
    if isinstance(key, (bytes, bytearray)):
        return np.full((image.height, image.width), 255, dtype=np.uint8)
    pixels = np.asarray(image)
    match = pixels == np.asarray(key, dtype=pixels.dtype if pixels.dtype != bool else np.uint8)
    if match.ndim == 3:
        match = match.all(axis=-1)
    return np.where(match, 0, 255).astype(np.uint8)


def alpha_info(image: Image.Image, plane: np.ndarray | None | bool = False) -> tuple[bool, int]:
    """``(has_alpha, alpha_min)``: can the image be transparent, and the lowest alpha it uses
    (from :func:`alpha_plane`, or ``plane`` when it was already taken). Without alpha, ``(False, 255)``."""
    plane = alpha_plane(image) if plane is False else plane
    return (False, 255) if plane is None else (True, int(plane.min()))


def laplacian_var(gray: Image.Image) -> float:
    """Variance of the 4-neighbour Laplacian of ``gray`` resized so its longest side is
    :data:`ANALYSIS_SIDE` (256) px with Lanczos: a blur measure that does not depend on
    the resolution.

    The 8-bit grayscale image is resized as float ('F', no re-quantization; up or down),
    then the kernel ``[[0, 1, 0], [1, -4, 1], [0, 1, 0]]`` is applied with mirrored borders
    (scipy's ``laplace(mode="mirror")``), and the variance of the result is returned. Sharp
    detail gives a large value (hundreds to thousands for photos); blur, flat areas and
    upscaled thumbnails give a small one. An image already at that size (a JPEG decoded at
    its DCT scale) is read as its 8-bit values, whose Laplacian sums are exact integers.
    """
    if _at_analysis_size(gray):
        return _pixel_stats(np.asarray(gray))[1]
    width, height = gray.size
    scale = ANALYSIS_SIDE / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    a = np.asarray(gray.convert("F").resize(size, Image.Resampling.LANCZOS), dtype=np.float64)
    if min(a.shape) < 2:
        return _laplacian_line_var(a)
    total, squares = _laplacian_sums(a, 0.0)
    return _variance(total, squares, a.size)


def _at_analysis_size(gray: Image.Image) -> bool:
    """Is ``gray`` already as big as the blur measure reads it (longest side ANALYSIS_SIDE)?"""
    return max(gray.size) == ANALYSIS_SIDE and min(gray.size) >= 2


def _variance(total, squares, n: int) -> float:
    return max(float(squares) / n - (float(total) / n) ** 2, 0.0)


def _pixel_stats(a: np.ndarray) -> tuple[np.ndarray, float]:
    """The 256-bin histogram of ``a`` (2-D uint8, at least 2 x 2) and the variance of its
    Laplacian, from one compiled pass over the pixels."""
    counts, total, squares = _histogram_and_laplacian_sums(a)
    return counts, _variance(total, squares, a.size)


@numba.njit(cache=True, nogil=True)
def _histogram_and_laplacian_sums(a):
    """:func:`_laplacian_sums` of 8-bit ``a`` (int64, exact) and its histogram, counted into four
    tables in turn so consecutive pixels of one level do not wait on each other."""
    height, width = a.shape
    tables = np.zeros((4, 256), dtype=np.int64)
    total, squares = _laplacian_sums_8bit(a) if width <= _INT32_ROW else _laplacian_sums(a, np.int64(0))
    for y in range(height):
        x = 0
        while x + 4 <= width:
            tables[0, a[y, x]] += 1
            tables[1, a[y, x + 1]] += 1
            tables[2, a[y, x + 2]] += 1
            tables[3, a[y, x + 3]] += 1
            x += 4
        while x < width:
            tables[0, a[y, x]] += 1
            x += 1
    return tables.sum(axis=0), total, squares


_INT32_ROW = 512
"""Widest row whose Laplacian sums fit int32: |v| <= 8 x 255, so a row adds at most 512 x 2040**2 < 2**31."""


@numba.njit(cache=True, nogil=True)
def _laplacian_sums_8bit(a):
    """:func:`_laplacian_sums` of 8-bit ``a`` no wider than :data:`_INT32_ROW`: each row's interior
    in int32 (vectorizes twice as wide as int64), rows added in int64. Exact."""
    height, width = a.shape
    total = np.int64(0)
    squares = np.int64(0)
    for y in range(height):
        up = a[y - 1 if y > 0 else 1]
        down = a[y + 1 if y < height - 1 else height - 2]
        row = a[y]
        for x in (0, width - 1):
            left = x - 1 if x > 0 else 1
            right = x + 1 if x < width - 1 else width - 2
            v = np.int64(up[x]) + down[x] + row[left] + row[right] - 4 * np.int64(row[x])
            total += v
            squares += v * v
        row_total = np.int32(0)
        row_squares = np.int32(0)
        for x in range(1, width - 1):
            v = np.int32(up[x]) + np.int32(down[x]) + np.int32(row[x - 1]) + np.int32(row[x + 1]) - np.int32(4) * np.int32(row[x])
            row_total += v
            row_squares += v * v
        total += row_total
        squares += row_squares
    return total, squares


@numba.njit(cache=True, nogil=True)
def _laplacian_sums(a, zero):
    """Sum and sum of squares of the mirrored-border Laplacian of ``a``, accumulated in the type
    of ``zero``: int64 for 8-bit input (exact, and integer sums vectorize), float64 for float
    input. The first and last columns are done apart, so the inner loop has no branch."""
    height, width = a.shape
    total = zero
    squares = zero
    for y in range(height):
        up = y - 1 if y > 0 else 1
        down = y + 1 if y < height - 1 else height - 2
        for x in (0, width - 1):
            left = x - 1 if x > 0 else 1
            right = x + 1 if x < width - 1 else width - 2
            v = (a[up, x] + zero) + a[down, x] + a[y, left] + a[y, right] - 4 * (a[y, x] + zero)
            total += v
            squares += v * v
        row_total = zero
        row_squares = zero
        for x in range(1, width - 1):
            v = (a[up, x] + zero) + a[down, x] + a[y, x - 1] + a[y, x + 1] - 4 * (a[y, x] + zero)
            row_total += v
            row_squares += v * v
        total += row_total
        squares += row_squares
    return total, squares


def _laplacian_line_var(a: np.ndarray) -> float:
    """A one-pixel-high or -wide image: its edge pixels repeated past the ends (across, the
    neighbours are the pixel itself and cancel)."""
    line = a.ravel()
    lap = -2.0 * line
    lap[1:] += line[:-1]
    lap[0] += line[0]
    lap[:-1] += line[1:]
    lap[-1] += line[-1]
    return float(lap.var())


def measure(
    upright: Image.Image, gray: Image.Image | None = None, mode: str | None = None, pixels: np.ndarray | None = None,
    alpha: np.ndarray | None | bool = False,
) -> dict:
    """The pixel measures of one (upright, single-frame) image: alpha, bit depth, brightness,
    contrast, entropy and blur (``gray``: its :func:`gray8`, when already made, and ``pixels``
    its array; ``alpha``: its :func:`alpha_plane`, when already taken; ``mode``: the stored mode,
    when the decode changed it, as a JPEG decoded straight to grayscale)."""
    has_alpha, alpha_min = alpha_info(upright, alpha)
    gray = gray8(upright) if gray is None else gray
    if _at_analysis_size(gray):  # one pass gives both
        counts, blur = _pixel_stats(np.asarray(gray) if pixels is None else pixels)
    else:
        counts, blur = np.asarray(gray.histogram()), laplacian_var(gray)
    # 256 bins: every statistic below is exact from them
    mean, std, entropy = _histogram_stats(counts.astype(np.float64))
    return {
        "has_alpha": has_alpha,
        "alpha_min": alpha_min,
        "bit_depth": bit_depth(mode or upright.mode),
        "luma_mean": float(mean),
        "luma_std": float(std),
        "entropy": float(entropy) + 0.0,
        "laplacian_var": blur,
    }


@numba.njit(cache=True, nogil=True)
def _histogram_stats(counts):
    """Mean, standard deviation and Shannon entropy (bits) of the gray levels a 256-bin
    histogram counts."""
    total = counts.sum()
    mean = 0.0
    for level in range(256):
        mean += counts[level] * level
    mean /= total
    spread = 0.0
    entropy = 0.0
    for level in range(256):
        spread += counts[level] * (level - mean) ** 2
        if counts[level] > 0:
            p = counts[level] / total
            entropy -= p * np.log2(p)
    return mean, np.sqrt(spread / total), entropy


def extract(path: str, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> dict:
    """Decode one file and measure it; a broken file becomes a reason, never an exception.

    An image whose header size (width x height) exceeds ``max_pixels`` is refused before
    any pixel is decoded (reason ``decompression_bomb``; its header width and height are
    kept). ``max_pixels=None`` means no limit.
    """
    return finish([decode(path, max_pixels)])[0]


BATCH = 1024
"""Decodes hashed (and cached) together: bounds the thumbnails held in memory."""


def extract_many(paths: list[str], max_pixels: int | None = DEFAULT_MAX_PIXELS, threads: int = 1) -> Iterator[dict]:
    """:func:`extract` of each of ``paths`` in order, hashed :data:`BATCH` decodes at a time; decoded on
    ``threads`` forked processes when there is enough to share (start it before any numba
    kernel has started its threads in this process)."""
    if threads > 1 and len(paths) > 8:
        with ProcessPoolExecutor(max_workers=threads) as pool:
            work = functools.partial(decode, max_pixels=max_pixels)
            decoded = pool.map(work, paths, chunksize=max(1, min(64, len(paths) // (threads * 8))))
            while batch := list(itertools.islice(decoded, BATCH)):
                yield from finish(batch)
    else:
        for start in range(0, len(paths), BATCH):
            yield from finish([decode(p, max_pixels) for p in paths[start : start + BATCH]])


READ_WHOLE_LIMIT = 64 << 20
"""Files up to this size are read once: SHA-256 and decode from the same bytes."""


def decode(path: str, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> dict:
    """Everything :func:`extract` gives except the hashes, plus the thumbnails they are computed
    from (``_thumbs``, ``_lows`` and ``_views`` of ``views.view_inputs``, and ``_dthumb``), so
    :func:`finish` can hash many images in one batch. ``sha256`` is of the bytes decoded."""
    data, size = _read(path)
    if data is not None:
        sha, source = hashing.sha256_bytes(data), io.BytesIO(data)
    else:  # a huge file (or a bomb refused from its header) is not held in memory twice
        sha, source = hashing.sha256_file(path), path
    with no_pillow_pixel_limit(), warnings.catch_warnings():
        # palette transparency given per index: Pillow warns on every P -> L conversion
        warnings.filterwarnings("ignore", message="Palette images with Transparency", category=UserWarning)
        return {"sha256": sha, **_extract(source, size, max_pixels)}


def _read(path: str) -> tuple[bytes | None, int]:
    """The bytes of ``path`` (``None`` above :data:`READ_WHOLE_LIMIT`) and its size, read with
    plain system calls: for small files Python's buffered file object costs more than the read."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        fd = None
    if fd is None:
        raise MissingFile(f"{path}: listed by the ingest manifest but not found (moved, or run from another folder?)")
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise MissingFile(f"{path}: listed by the ingest manifest but not a regular file")
        if status.st_size > READ_WHOLE_LIMIT:
            return None, status.st_size
        chunks, left = [], status.st_size
        while left > 0 and (chunk := os.read(fd, left)):
            chunks.append(chunk)
            left -= len(chunk)
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return data, len(data)
    finally:
        os.close(fd)


def finish(decoded: list[dict]) -> list[dict]:
    """Hash the thumbnails and box coefficients of many decodes at once (``kernels.phash_batch``,
    ``phash_from_lows``, ``dhash_batch``: NumPy, or CuPy on a GPU) and return the finished feature
    dicts."""
    have = [k for k, d in enumerate(decoded) if "_thumbs" in d]
    out = [{k: v for k, v in d.items() if not k.startswith("_")} for d in decoded]
    if not have:
        return out
    # each decode's thumbnails and distinct box coefficients, once; its views index into them
    thumbs = kernels.phash_batch(np.concatenate([decoded[k]["_thumbs"] for k in have]))
    lows = kernels.phash_from_lows(np.concatenate([decoded[k]["_lows"] for k in have]))
    dhashes = kernels.dhash_batch(np.stack([decoded[k]["_dthumb"] for k in have]))
    n_thumbs = np.cumsum([0] + [len(decoded[k]["_thumbs"]) for k in have])
    n_lows = np.cumsum([0] + [len(decoded[k]["_lows"]) for k in have])
    for row, k in enumerate(have):
        values = [*thumbs[n_thumbs[row]:n_thumbs[row + 1]], *lows[n_lows[row]:n_lows[row + 1]]]
        texts = [hashing.to_hex(int(v)) for v in values]  # each distinct value once
        hexes = [texts[i] for i in decoded[k]["_views"]]
        # row 0 is always the plain thumbnail: the stored pHash, whatever the views use
        out[k].update(phash=texts[0], phash_views=hexes, dhash=hashing.to_hex(int(dhashes[row])))
    return out


def _extract(source, size: int, max_pixels: int | None) -> dict:
    try:
        if size == 0:
            return _failed("zero_byte", "file is empty (0 bytes)")
        with Image.open(source) as im:
            fmt = im.format
            width, height = im.size
            if max_pixels is not None and width * height > max_pixels:
                return _failed(
                    "decompression_bomb",
                    f"refused before decoding: {fmt or 'image'} header says {width}x{height} = {width * height:,} px, "
                    f"over the {max_pixels:,} px limit (audit.max_pixels)",
                    fmt, width, height,
                )
            mode = im.mode  # as stored: a JPEG's draft decodes it straight to grayscale
            try:
                n_frames = max(1, int(getattr(im, "n_frames", 1) or 1))
                draft(im)
                # a multi-picture JPEG (MPO) holds previews or depth maps, not an animation
                animated = n_frames > 1 and fmt != "MPO"
                if im.tell() != 0:
                    im.seek(0)
                im.load()
            except (OSError, SyntaxError, ValueError, EOFError) as exc:
                reason = "truncated" if "truncat" in str(exc).lower() else "corrupt"
                return _failed(reason, f"{fmt or 'image'} decode failed: {exc}", fmt)
            orientation = _orientation(im)
            upright = ImageOps.exif_transpose(im) if orientation != 1 else im
            if orientation in (5, 6, 7, 8):  # a quarter turn: the stored size is on its side
                width, height = height, width
            gray = gray8(upright)
            pixels = np.frombuffer(gray.tobytes(), dtype=np.uint8).reshape(gray.height, gray.width)
            # imagehash converts with Pillow (clipping 16-bit); for 8-bit images that is gray itself
            clipped = upright.mode.startswith("I") or upright.mode == "F"
            small = hashing.hash_input_array(np.asarray(upright.convert("L")) if clipped else pixels)
            plain = hashing.phash_thumb(small)
            alpha = alpha_plane(upright)
            trim = views.alpha_box(hashing.hash_input_array(alpha)) if alpha is not None else None
            trim = trim or views.border_box(small)
            thumbs, lows, view_rows = views.view_inputs(small, plain, trim)
            dthumb = hashing.dhash_thumb(small)
            measures = measure(upright, gray, mode, pixels, alpha)
            measures["border_fraction"] = views.border_fraction(small, trim)
    except UnidentifiedImageError:
        return _failed("not_image", "not a recognised image format (content does not match any decoder)")
    except Image.DecompressionBombError as exc:
        return _failed("decompression_bomb", f"refused: {exc}")
    except (OSError, SyntaxError, ValueError) as exc:
        return _failed("corrupt", f"cannot open: {exc}")
    return {
        "decoded": True, "reason": None, "detail": None, "format": fmt, "mode": mode,
        "width": int(width), "height": int(height), "exif_orientation": orientation,
        "phash": None, "dhash": None, "phash_views": [], "_thumbs": thumbs, "_lows": lows, "_views": view_rows, "_dthumb": dthumb,
        "n_frames": n_frames, "animated": animated, **measures,
    }


def _orientation(im: Image.Image) -> int:
    """The EXIF (or XMP) orientation, 1..8; 1 when absent or out of range. A JPEG without an EXIF
    or XMP segment has none, and is not parsed for it."""
    if im.format == "JPEG" and not any(k in im.info for k in ("exif", "xmp", "XML:com.adobe.xmp")):
        return 1
    orientation = int(im.getexif().get(_ORIENTATION_TAG, 1) or 1)
    return orientation if 1 <= orientation <= 8 else 1


def draft(im: Image.Image) -> None:
    """Decode every JPEG at the smallest DCT scale (1, 1/2, 1/4, 1/8) that keeps both sides at
    least :data:`ANALYSIS_SIDE`, and a colour one straight to grayscale (the luma the JPEG
    stores; no colour is measured): every measure and hash is taken at or below that size, so
    the full resolution is never needed. Applied to every JPEG alike, whatever its size, so
    hashes stay comparable; other formats decode fully. The audit keeps the size from the
    header."""
    if im.format in ("JPEG", "MPO"):
        im.draft("L", (ANALYSIS_SIDE, ANALYSIS_SIDE))


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


def partition_by_cache(items: list[tuple[str, str]], lookup) -> tuple[dict, list[tuple[str, str]], int]:
    """Split (sha256, path) items into cached results by sha256 and the distinct contents still
    to compute (one path each); also returns the number of distinct contents."""
    first_path: dict[str, str] = {}
    for sha, path in items:
        first_path.setdefault(sha, path)
    result: dict = {}
    todo: list[tuple[str, str]] = []
    for sha, path in first_path.items():
        hit = lookup(sha)
        if hit is None:
            todo.append((sha, path))
        else:
            result[sha] = hit
    return result, todo, len(first_path)


def compute(
    items: list[tuple[str, str]], cache: FeatureCache, threads: int = 1, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> tuple[dict[str, dict], FeatureStats]:
    """Features for (sha256, path) items, keyed by sha256; decodes only cache misses. A file whose
    bytes no longer hash to its sha256 raises :class:`ContentChanged` naming it.

    ``max_pixels`` is the decompression-bomb limit given to :func:`extract`; the cache's key
    must include it (``feature_key({"max_pixels": ...})``)."""
    stats = FeatureStats(items=len(items))
    result, todo, stats.contents = partition_by_cache(items, cache.get)
    stats.cache_hits = len(result)
    # cached as each batch is hashed: a run stopped halfway keeps what it decoded
    decoded = zip(todo, extract_many([p for _, p in todo], max_pixels, threads))
    for (sha, path), feats in progress.bar(decoded, total=len(todo), desc="decode", unit="image"):
        if feats["sha256"] != sha:
            raise ContentChanged(
                f"{path}: changed since it was ingested (manifest SHA-256 {sha}, file now {feats['sha256']}); "
                "run the build again so ingest records the new content"
            )
        cache.put(sha, feats)
        result[sha] = feats
    stats.decoded = len(todo)
    return result, stats
