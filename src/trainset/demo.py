"""Built-in demo image source with known ground truth.

The demo gives the pipeline something realistic to chew on without any
network access: it is assembled from the sample photos that ship inside
scikit-image (read straight from the package folder, never via the data
fetchers, which may download).  Every file is produced deterministically, so
two materializations are byte-identical and the ground truth returned by
:func:`truth` can be checked against what the pipeline reports.

The folder contains, in the ``image_folder`` layout:

* distinct base images at the top level, in the Kohya subfolders
  ``2_portraits/`` and ``1_scenes/``, and in plain subfolders, most with a
  ``.txt`` (comma-separated tags) or ``.json`` (tags + rating) sidecar;
* byte-identical copies of some base images under other names and folders;
* near-duplicates (resized, recompressed, cropped, and an upscaled copy marked
  ``"generated": true`` that must lose to its smaller original);
* look-alike pairs (different crops of one star field or texture) that are
  visually similar yet far apart in pHash, so they must stay separate;
* broken files (truncated JPEG, zero-byte PNG, text named ``.png``) and an
  image too small to keep.

Nothing else is written into the folder; the ground truth lives in code.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from PIL import Image

__all__ = ["materialize", "truth", "IMAGE_EXTENSIONS", "MAX_SIDE", "MIN_SIDE"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")
MAX_SIDE = 512  # base photos are downscaled to this longest side to keep the demo small
MIN_SIDE = 256  # every image meant to be kept has at least this short side
JPEG_QUALITY = 90
LOW_JPEG_QUALITY = 15


def _sample_dir() -> Path:
    """Folder of the photos bundled with scikit-image (no download involved)."""
    import skimage.data

    return Path(skimage.data.__file__).parent


# --------------------------------------------------------------------------
# Image construction helpers (pure functions of the bundled photos)
# --------------------------------------------------------------------------


def _load(name: str) -> Image.Image:
    with Image.open(_sample_dir() / name) as im:
        im.load()
        if im.mode not in ("L", "RGB"):
            im = im.convert("RGB")
        return im.copy()


def _fit(im: Image.Image, max_side: int = MAX_SIDE) -> Image.Image:
    """Downscale so the longest side is at most ``max_side``; never upscale."""
    w, h = im.size
    scale = max_side / max(w, h)
    if scale >= 1:
        return im
    return im.resize((round(w * scale), round(h * scale)), Image.Resampling.LANCZOS)


def _scale(im: Image.Image, factor: float) -> Image.Image:
    w, h = im.size
    return im.resize((round(w * factor), round(h * factor)), Image.Resampling.LANCZOS)


def _crop_frac(im: Image.Image, frac: float) -> Image.Image:
    """Trim ``frac`` of the width/height off every edge."""
    w, h = im.size
    dx, dy = round(w * frac), round(h * frac)
    return im.crop((dx, dy, w - dx, h - dy))


def _encode(im: Image.Image, fmt: str, quality: int = JPEG_QUALITY) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        im.save(buf, format="JPEG", quality=quality)
    else:
        im.save(buf, format="PNG")
    return buf.getvalue()


def _fmt_for(path: str) -> str:
    return "JPEG" if path.lower().endswith((".jpg", ".jpeg")) else "PNG"


# --------------------------------------------------------------------------
# Specification
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    """One file of the demo; ``build`` returns its bytes given already-built files."""

    path: str
    build: Callable[[dict[str, bytes]], bytes]
    sidecar: str | dict | None = None  # str -> .txt tags, dict -> .json
    role: str = "base"
    source: str | None = None  # the original, for duplicates
    detail: str | None = None  # broken kind / near-dup kind
    extra: dict = field(default_factory=dict)


def _photo(name: str, path: str, transform: Callable[[Image.Image], Image.Image] | None = None):
    """Builder for a base image: bundled photo, optional transform, then fitted."""

    def build(_: dict[str, bytes]) -> bytes:
        im = _load(name)
        if transform is not None:
            im = transform(im)
        return _encode(_fit(im), _fmt_for(path))

    return build


def _copy_of(src: str):
    def build(done: dict[str, bytes]) -> bytes:
        return done[src]

    return build


def _variant_of(src: str, op: Callable[[Image.Image], Image.Image], fmt: str, quality: int = JPEG_QUALITY):
    """Builder for a near-duplicate derived from the already-encoded original."""

    def build(done: dict[str, bytes]) -> bytes:
        with Image.open(io.BytesIO(done[src])) as im:
            im.load()
            return _encode(op(im.copy()), fmt, quality)

    return build


def _truncated(name: str):
    """A valid JPEG cut to half its bytes: opens fine, fails on decode."""

    def build(_: dict[str, bytes]) -> bytes:
        data = _encode(_fit(_load(name)), "JPEG")
        return data[: len(data) // 2]

    return build


def _tiny(_: dict[str, bytes]) -> bytes:
    im = _load("chessboard_RGB.png").resize((64, 48), Image.Resampling.NEAREST)
    return _encode(im, "PNG")


def _const(data: bytes):
    return lambda _: data


def _spec() -> list[_Entry]:
    """The full demo, in build order (originals before their copies/variants)."""
    hubble_a = lambda im: im.crop((0, 0, 480, 480))  # noqa: E731
    hubble_b = lambda im: im.crop((520, 392, 1000, 872))  # noqa: E731
    left = lambda im: im.crop((0, 0, im.width // 2, im.height))  # noqa: E731
    right = lambda im: im.crop((im.width // 2, 0, im.width, im.height))  # noqa: E731

    base = [
        # 2_portraits/ (repeats 2)
        _Entry("2_portraits/astronaut.png", _photo("astronaut.png", "2_portraits/astronaut.png"),
               {"tags": ["1girl", "solo", "astronaut", "spacesuit", "american_flag", "smile",
                         "short_hair", "upper_body", "photo_(medium)"], "rating": "g"}),
        _Entry("2_portraits/cameraman.png", _photo("camera.png", "2_portraits/cameraman.png"),
               "1boy, solo, camera, tripod, coat, outdoors, grass, greyscale, monochrome, photo_(medium)"),
        _Entry("2_portraits/chelsea.png", _photo("chelsea.png", "2_portraits/chelsea.png"),
               {"tags": ["cat", "no_humans", "animal_focus", "whiskers", "orange_fur",
                         "photo_(medium)"], "rating": "general"}),
        # 1_scenes/ (repeats 1)
        _Entry("1_scenes/coffee.jpg", _photo("coffee.png", "1_scenes/coffee.jpg"),
               "coffee, cup, saucer, spoon, table, still_life, no_humans, food_focus"),
        _Entry("1_scenes/rocket_launch.jpg", _photo("rocket.jpg", "1_scenes/rocket_launch.jpg"),
               {"tags": ["rocket", "launch", "smoke", "sky", "outdoors", "no_humans", "scenery"],
                "rating": "s", "rating_scheme": "gelbooru"}),
        _Entry("1_scenes/moon_surface.png", _photo("moon.png", "1_scenes/moon_surface.png"),
               "moon, crater, space, greyscale, monochrome, no_humans"),
        _Entry("1_scenes/clock.png", _photo("clock_motion.png", "1_scenes/clock.png"),
               {"tags": ["clock", "motion_blur", "greyscale", "monochrome", "no_humans"],
                "rating": "safe", "rating_scheme": "moebooru"}),
        # top level and plain subfolders (no repeats)
        _Entry("coins.png", _photo("coins.png", "coins.png"),
               "coin, money, still_life, greyscale, monochrome, no_humans"),
        _Entry("retina.jpg", _photo("retina.jpg", "retina.jpg"),
               {"tags": ["eye", "blood_vessels", "medical", "no_humans", "close-up"],
                "rating": "sensitive"}),
        _Entry("ihc_stain.png", _photo("ihc.png", "ihc_stain.png"),
               {"tags": ["cell", "microscope_view", "stain", "abstract", "no_humans"],
                "rating": "q", "rating_scheme": "danbooru"}),
        _Entry("cells.png", _photo("cell.png", "cells.png")),
        _Entry("misc/phantom.png", _photo("phantom.png", "misc/phantom.png")),
    ]

    lookalikes = [
        _Entry("1_scenes/deep_field_a.jpg", _photo("hubble_deep_field.jpg", "1_scenes/deep_field_a.jpg", hubble_a),
               "space, star_(sky), galaxy, night_sky, no_humans, scenery", role="lookalike",
               extra={"pair": "hubble"}),
        _Entry("1_scenes/deep_field_b.jpg", _photo("hubble_deep_field.jpg", "1_scenes/deep_field_b.jpg", hubble_b),
               "space, star_(sky), galaxy, night_sky, no_humans, scenery", role="lookalike",
               extra={"pair": "hubble"}),
        _Entry("textures/grass_left.png", _photo("grass.png", "textures/grass_left.png", left),
               {"tags": ["grass", "texture", "no_humans", "greyscale"], "rating": "g"},
               role="lookalike", extra={"pair": "grass"}),
        _Entry("textures/grass_right.png", _photo("grass.png", "textures/grass_right.png", right),
               {"tags": ["grass", "texture", "no_humans", "greyscale"], "rating": "g"},
               role="lookalike", extra={"pair": "grass"}),
        _Entry("textures/gravel_left.png", _photo("gravel.png", "textures/gravel_left.png", left),
               "gravel, texture, no_humans, greyscale", role="lookalike", extra={"pair": "gravel"}),
        _Entry("textures/gravel_right.png", _photo("gravel.png", "textures/gravel_right.png", right),
               "gravel, texture, no_humans, greyscale", role="lookalike", extra={"pair": "gravel"}),
    ]

    exact = [
        _Entry("1_scenes/astronaut.png", _copy_of("2_portraits/astronaut.png"), role="exact",
               source="2_portraits/astronaut.png"),
        _Entry("archive/coins_copy.png", _copy_of("coins.png"), role="exact", source="coins.png"),
        _Entry("archive/rocket_launch.jpg", _copy_of("1_scenes/rocket_launch.jpg"), role="exact",
               source="1_scenes/rocket_launch.jpg"),
    ]

    near = [
        _Entry("archive/astronaut_small.png",
               _variant_of("2_portraits/astronaut.png", lambda im: _scale(im, 0.6), "PNG"),
               role="near", source="2_portraits/astronaut.png", detail="resized"),
        _Entry("coffee_lowq.jpg",
               _variant_of("1_scenes/coffee.jpg", lambda im: im, "JPEG", LOW_JPEG_QUALITY),
               role="near", source="1_scenes/coffee.jpg", detail="recompressed"),
        _Entry("cameraman_crop.png",
               _variant_of("2_portraits/cameraman.png", lambda im: _crop_frac(im, 0.02), "PNG"),
               role="near", source="2_portraits/cameraman.png", detail="cropped"),
        _Entry("chelsea_upscaled.png",
               _variant_of("2_portraits/chelsea.png", lambda im: _scale(im, 1.5), "PNG"),
               {"tags": ["cat", "no_humans", "animal_focus", "whiskers", "orange_fur", "upscaled"],
                "rating": "g", "generated": True},
               role="near", source="2_portraits/chelsea.png", detail="upscaled_generated"),
    ]

    broken = [
        _Entry("truncated.jpg", _truncated("motorcycle_left.png"), role="broken", detail="truncated"),
        _Entry("empty.png", _const(b""), role="broken", detail="zero_byte"),
        _Entry("notes.png", _const(b"Shot list for the spring catalogue:\n- studio portraits\n"
                                   b"- outdoor scenes\nThis is a text file, not a picture.\n"),
               role="broken", detail="not_image"),
        _Entry("thumbs/tiny.png", _tiny, role="too_small"),
    ]
    return base + lookalikes + exact + near + broken


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------


def _repeats(path: str) -> int | None:
    """Kohya ``{repeats}_{name}`` folder directly containing ``path``, if any."""
    parts = path.split("/")
    if len(parts) < 2:
        return None
    head, sep, rest = parts[-2].partition("_")
    if sep and head.isdigit() and rest:
        return int(head)
    return None


def _sidecar_tags(sidecar: str | dict) -> list[str]:
    if isinstance(sidecar, str):
        return [t.strip() for t in sidecar.split(",") if t.strip()]
    return list(sidecar["tags"])


def truth() -> dict:
    """Ground truth of the demo, derived from the spec alone (no files touched)."""
    spec = _spec()
    out: dict = {
        "images": sorted(e.path for e in spec if e.path.lower().endswith(IMAGE_EXTENSIONS)),
        "exact_duplicates": [[e.source, e.path] for e in spec if e.role == "exact"],
        "near_duplicates": [[e.source, e.path, e.detail] for e in spec if e.role == "near"],
        "distinct_lookalikes": [],
        "broken": {e.path: e.detail for e in spec if e.role == "broken"},
        "too_small": [e.path for e in spec if e.role == "too_small"],
        "tags": {},
        "ratings": {},
        "repeats": {},
    }
    pairs: dict[str, list[str]] = {}
    for e in spec:
        if e.role == "lookalike":
            pairs.setdefault(e.extra["pair"], []).append(e.path)
        if e.sidecar is not None:
            out["tags"][e.path] = _sidecar_tags(e.sidecar)
            if isinstance(e.sidecar, dict) and "rating" in e.sidecar:
                out["ratings"][e.path] = e.sidecar["rating"]
        r = _repeats(e.path)
        if r is not None:
            out["repeats"][e.path] = r
    out["distinct_lookalikes"] = [list(p) for p in pairs.values()]
    return out


def _sidecar_bytes(sidecar: str | dict) -> tuple[str, bytes]:
    if isinstance(sidecar, str):
        return ".txt", (sidecar + "\n").encode("utf-8")
    return ".json", (json.dumps(sidecar, indent=2) + "\n").encode("utf-8")


def materialize(out_dir: str | Path) -> dict:
    """Write the demo source into out_dir (created; existing contents replaced) and return its ground truth.

    Files are built in a sibling ``<name>.tmp`` folder and swapped in at the end,
    so an interrupted run never leaves a half-written demo behind.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()

    done: dict[str, bytes] = {}
    for entry in _spec():
        data = entry.build(done)
        done[entry.path] = data
        target = tmp / entry.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        if entry.sidecar is not None:
            suffix, payload = _sidecar_bytes(entry.sidecar)
            target.with_suffix(suffix).write_bytes(payload)

    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return truth()
