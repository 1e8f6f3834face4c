"""The background colour of a picture, from its border, checked against its ``X_background`` tag.

A caption that says "green background" over a purple one teaches the wrong thing. The border
ring of the picture (:data:`RING` of its short side, at least one pixel) is the evidence:

- its dominant colour: the most common cell of a coarse RGB grid (:data:`GRID` levels a channel),
  refined to the mean of the ring pixels within :data:`TOLERANCE` of that cell's mean;
- its uniformity: the share of ring pixels within that tolerance. Below ``min_uniformity`` the
  border is a scene, not a background, and no opinion is given (``None``);
- a name among the booru background colours (:data:`COLOURS`), from hue, saturation and value;
  ``transparent`` when most of the ring is transparent.

Abstaining is part of the answer: the report states coverage (the share of items with an opinion)
beside agreement with the existing tags, so saying nothing cannot pass for being right.
"""

from __future__ import annotations

import colorsys
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps


RING = 0.04
"""Width of the border ring, as a share of the short side."""

GRID = 8
"""Levels per channel of the grid that finds the dominant colour."""

TOLERANCE = 40.0
"""RGB distance (0..441) within which a ring pixel counts as the dominant colour."""

ANALYSIS_SIDE = 128
"""Pictures are read at about this size (JPEG draft decoding): a border needs no more."""

COLOURS = ("white", "black", "grey", "red", "orange", "yellow", "green", "aqua", "blue", "purple", "pink", "brown",
           "beige", "transparent")
"""Colour names with a Danbooru ``X_background`` tag."""

BACKGROUND_TAG = re.compile(r"^(" + "|".join(COLOURS) + r"|gray)_background$")


@dataclass(frozen=True)
class Background:
    """The border's dominant colour (RGB), the share of the ring it covers, and its name (or
    ``None``: no opinion, the border is not uniform)."""

    rgb: tuple[int, int, int]
    uniformity: float
    name: str | None


def estimate(image: Image.Image, min_uniformity: float = 0.8) -> Background:
    """The background of ``image`` (any mode; EXIF orientation does not matter for a ring)."""
    ring = _ring(np.asarray(image.convert("RGBA"))).astype(np.float64)  # only the ring in float
    if (ring[:, 3] < 128).mean() >= min_uniformity:
        return Background((0, 0, 0), float((ring[:, 3] < 128).mean()), "transparent")
    opaque = ring[ring[:, 3] >= 128, :3]
    if not len(opaque):
        return Background((0, 0, 0), 0.0, None)
    cells = np.minimum((opaque * GRID / 256).astype(np.int64), GRID - 1)
    keys = (cells[:, 0] * GRID + cells[:, 1]) * GRID + cells[:, 2]
    top = np.bincount(keys).argmax()
    centre = opaque[keys == top].mean(axis=0)
    close = np.linalg.norm(opaque - centre, axis=1) <= TOLERANCE
    colour = opaque[close].mean(axis=0)
    uniformity = float(close.sum()) / len(ring)  # transparent ring pixels count against it
    rgb = tuple(int(round(c)) for c in colour)
    return Background(rgb, uniformity, name(rgb) if uniformity >= min_uniformity else None)


def _ring(rgba: np.ndarray) -> np.ndarray:
    height, width = rgba.shape[:2]
    band = max(1, int(round(min(height, width) * RING)))
    if 2 * band >= min(height, width):
        return rgba.reshape(-1, 4)
    parts = [rgba[:band].reshape(-1, 4), rgba[-band:].reshape(-1, 4),
             rgba[band:-band, :band].reshape(-1, 4), rgba[band:-band, -band:].reshape(-1, 4)]
    return np.concatenate(parts)


def name(rgb: tuple[int, int, int]) -> str:
    """The booru colour name of an RGB colour (hue, saturation and value bands)."""
    r, g, b = (c / 255.0 for c in rgb)
    hue, sat, val = colorsys.rgb_to_hsv(r, g, b)
    hue *= 360.0
    if val < 0.18:
        return "black"
    if sat < 0.12 or (sat < 0.2 and val < 0.35):
        return "white" if val > 0.88 else "grey"
    if sat < 0.3 and val > 0.75 and 20 <= hue < 65:
        return "beige"
    if hue < 15 or hue >= 335:
        return "pink" if sat < 0.55 and val > 0.7 else "red"
    if hue < 45:
        return "brown" if val < 0.6 else ("beige" if sat < 0.35 else "orange")
    if hue < 70:
        return "yellow" if val > 0.55 else "brown"
    if hue < 160:
        return "green"
    if hue < 195:
        return "aqua"
    if hue < 255:
        return "blue"
    if hue < 290:
        return "purple"
    return "pink"


def tagged(tags) -> list[str]:
    """The ``X_background`` colour tags among ``tags`` (``gray`` read as ``grey``)."""
    return [t for t in tags if BACKGROUND_TAG.match(t)]


def colour_of(tag: str) -> str:
    return BACKGROUND_TAG.match(tag).group(1).replace("gray", "grey")


def open_small(path: str) -> Image.Image:
    """The first frame of ``path``, EXIF-upright RGBA, at about :data:`ANALYSIS_SIDE` (JPEG draft
    decoding, else a whole-factor box reduce): a border ring needs no more, and a large picture is
    not held at full size in colour."""
    with Image.open(path) as im:
        if im.format in ("JPEG", "MPO"):
            im.draft("RGB", (ANALYSIS_SIDE, ANALYSIS_SIDE))
        im.load()
        rgba = ImageOps.exif_transpose(im).convert("RGBA")
    factor = min(rgba.size) // ANALYSIS_SIDE
    return rgba.reduce(factor) if factor > 1 else rgba


@dataclass(frozen=True)
class Check:
    """What the pixels say about one item's background tags, and what was done."""

    estimate: str | None
    tagged: tuple[str, ...]
    agrees: bool | None  # None: no tag, or no opinion
    action: str | None  # "fixed" | "flagged" | None
    tags: tuple[str, ...]  # the tags after any fix


def check(tags: list[str], found: Background, on_mismatch: str = "flag") -> Check:
    """Compare ``found`` with the ``X_background`` tags; on a mismatch replace them with the
    colour found (``on_mismatch="fix"``) or leave them and flag the item (``"flag"``)."""
    present = tuple(tagged(tags))
    if found.name is None or not present:
        return Check(found.name, present, None, None, tuple(tags))
    if all(colour_of(t) == found.name for t in present):
        return Check(found.name, present, True, None, tuple(tags))
    if on_mismatch == "fix":
        fixed = f"{found.name}_background"
        out = [t for t in tags if t not in present]
        position = min(tags.index(t) for t in present)
        out.insert(min(position, len(out)), fixed)
        return Check(found.name, present, False, "fixed", tuple(dict.fromkeys(out)))
    return Check(found.name, present, False, "flagged", tuple(tags))


@dataclass(frozen=True)
class Settings:
    """``caption.background`` in params.yaml: whether to check, what to do on a mismatch, and the
    uniformity a border needs before it has an opinion."""

    check: bool = True
    on_mismatch: str = "flag"
    min_uniformity: float = 0.8

    @classmethod
    def from_params(cls, block: dict | None) -> Settings:
        block = dict(block or {})
        unknown = sorted(set(block) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"caption.background: unknown keys {unknown} (known: {sorted(cls.__dataclass_fields__)})")
        out = cls(**block)
        if not isinstance(out.check, bool):
            raise ValueError(f"caption.background.check: true or false, got {out.check!r}")
        if out.on_mismatch not in ("flag", "fix"):
            raise ValueError(f"caption.background.on_mismatch: flag or fix, got {out.on_mismatch!r}")
        if isinstance(out.min_uniformity, bool) or not isinstance(out.min_uniformity, (int, float)) or not 0 < out.min_uniformity <= 1:
            raise ValueError(f"caption.background.min_uniformity: a number in (0, 1], got {out.min_uniformity!r}")
        return out


def estimates(items: list[tuple[str, str]], settings: Settings, cache_dir: str | Path | None) -> dict[str, Background]:
    """The background of each distinct content among ``(sha256, path)`` items, read once and kept
    in a content-keyed cache (``cache_dir``) with the settings and this module's code in its key."""
    from . import features, progress
    from .provenance import code_digest, params_digest, versions

    key = params_digest({"min_uniformity": settings.min_uniformity, "code": code_digest("background"), "versions": versions()})
    cache = features.FeatureCache(Path(cache_dir), key) if cache_dir is not None else None
    hits, todo, _ = features.partition_by_cache(items, cache.get if cache is not None else lambda sha: None)
    out = {sha: Background(tuple(hit["rgb"]), hit["uniformity"], hit["name"]) for sha, hit in hits.items()}
    for sha, path in progress.bar(todo, desc="background", unit="image"):
        try:
            image = open_small(path)
        except OSError as exc:  # decoded by the audit: gone or changed since
            raise RuntimeError(f"{path}: cannot be read for the background check ({exc}); rerun the workflow") from exc
        out[sha] = estimate(image, settings.min_uniformity)
        if cache is not None:
            cache.put(sha, asdict(out[sha]))
    return out
