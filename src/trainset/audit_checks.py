"""Audit checks: pure functions over one audit-manifest row and a thresholds dict.

Every measure they read was stored by the audit stage (``trainset.features``), so changing
a threshold re-runs these checks only, never a decode. A row is anything with the audit
columns as attributes or keys (a pandas ``itertuples`` row, its ``_asdict()``, a plain
dict): ``original_name``, ``format``, ``mode``, ``width``, ``height``, ``exif_orientation``,
``n_frames``, ``animated``, ``has_alpha``, ``alpha_min``, ``bit_depth``, ``luma_mean``,
``luma_std``, ``entropy`` and ``laplacian_var``. A missing measure (absent, None or NaN)
skips the checks that need it, and a threshold set to None switches its check off.

:func:`findings` returns ``[(code, detail)]``: the code names the problem, the detail the
measured value and the threshold it was compared with. :data:`DEFAULT_ACTIONS` says what
each code does by default (``reject`` the item, or ``flag`` it for a curator), and
:func:`describe` turns a count of one code into a plain-language report line with the fix.

How ``min_laplacian_var`` was chosen (``laplacian_var`` is measured at 256 px on the long
side, see :func:`trainset.features.laplacian_var`): on scikit-image's sample photos
(astronaut, brick, camera, chelsea, coffee, coins, grass, gravel, hubble_deep_field,
motorcycle_left, retina, rocket, moon), brought to 512 px and measured at 256 px, the sharp
images measure 93.2 (moon, the softest) to 6162 (grass), and 76.3 and up when additionally
upscaled 2x at 512 px. Gaussian-blurred copies (sigma in px at the 512-px scale) measure at most
17.4 (sigma 4) and 55.9 (sigma 3); sigma 2 (6.8 to 235) and 1.5 overlap the sharp ones and are
left to the curator. 60 sits between the sigma-3 maximum (55.9) and the sharp minimum (76.3
upscaled, 93.2 native). Measuring at 512 px separates sigma 2 as well, but a 512 px JPEG must
then decode at full scale, about 1.6x slower for every image.
"""

from __future__ import annotations

import math
from pathlib import PurePath

import numpy as np
import pandas as pd

from .schemas import DECODE_REASONS

CODES = (
    "extension_mismatch",
    "animated",
    "cmyk",
    "palette",
    "la",
    "high_bit_depth",
    "grayscale",
    "alpha",
    "exif_rotated",
    "too_small",
    "extreme_aspect",
    "low_information",
    "too_dark",
    "too_bright",
    "blurry",
)
"""Finding codes :func:`findings` can return for a decoded image, in the order it checks them."""

FIELDS = (
    "decoded", "reason", "detail", "original_name", "format", "mode", "width", "height", "exif_orientation", "n_frames",
    "animated", "has_alpha", "alpha_min", "bit_depth", "luma_mean", "luma_std", "entropy", "laplacian_var",
)
"""The row fields :func:`findings` reads (the rest of a row may be left out)."""

DEFAULT_THRESHOLDS = {
    "min_side": 256,  # px: short side below this is too_small
    "max_aspect": 3.0,  # long side / short side above this is extreme_aspect
    "min_entropy": 2.0,  # bits (0..8) of the grayscale histogram: below is low_information
    "min_std": 6.0,  # grayscale standard deviation (0..255): below is low_information
    "min_luma": 20,  # mean grayscale (0..255) below this is too_dark
    "max_luma": 240,  # mean grayscale (0..255) above this is too_bright
    "min_laplacian_var": 60.0,  # Laplacian variance at 256 px below this is blurry (see module doc)
}

DEFAULT_ACTIONS = {
    **{code: "flag" for code in CODES},
    "too_small": "reject",
    **{reason: "reject" for reason in DECODE_REASONS},
}
"""``reject`` drops the item at the filter; ``flag`` keeps it and lists the code for review."""

FORMAT_EXTENSIONS = {
    "JPEG": (".jpg", ".jpeg", ".jpe", ".jfif"),
    "MPO": (".jpg", ".jpeg", ".jpe", ".jfif"),
    "PNG": (".png",),
    "WEBP": (".webp",),
    "GIF": (".gif",),
    "BMP": (".bmp",),
    "TIFF": (".tif", ".tiff"),
}
"""File extensions that match each decoded format (anything else: ``.`` + format name)."""

_GRAYSCALE_MODES = frozenset({"1", "L", "I", "F"})


# --------------------------------------------------------------------------- row access


def _get(row, name: str):
    value = row.get(name) if isinstance(row, dict) else getattr(row, name, None)
    if type(value).__name__ == "NAType":  # pandas.NA
        return None
    try:
        if value is None or (not isinstance(value, str) and math.isnan(value)):
            return None
    except TypeError:
        pass  # not a number (a string, a list): present
    return value


def _num(row, name: str) -> float | None:
    value = _get(row, name)
    return None if value is None else float(value)


def _fmt(value: float) -> str:
    return f"{float(value):g}"


# --------------------------------------------------------------------------- the checks
# Each takes (row, thresholds) and returns a detail string when the check fires, else None.


def extension_mismatch(row, t: dict) -> str | None:
    fmt, name = _get(row, "format"), _get(row, "original_name")
    if not fmt or name is None:
        return None
    suffix = PurePath(str(name)).suffix.lower()
    expected = FORMAT_EXTENSIONS.get(str(fmt).upper(), (f".{str(fmt).lower()}",))
    if suffix in expected:
        return None
    named = f"named {suffix}" if suffix else "has no extension"
    return f"{named} but the content is {fmt} (expected {' or '.join(expected[:2])})"


def animated(row, t: dict) -> str | None:
    if not _get(row, "animated"):
        return None
    frames = _get(row, "n_frames")
    return f"{int(frames) if frames is not None else 'several'} frames (a still image has 1; only the first is exported)"


def cmyk(row, t: dict) -> str | None:
    return "mode CMYK (RGB expected)" if _get(row, "mode") == "CMYK" else None


def palette(row, t: dict) -> str | None:
    mode = _get(row, "mode")
    return f"mode {mode}: palette colours (RGB expected)" if mode in ("P", "PA") else None


def la(row, t: dict) -> str | None:
    mode = _get(row, "mode")
    return f"mode {mode}: grayscale with alpha (RGB or RGBA expected)" if mode in ("LA", "La") else None


def high_bit_depth(row, t: dict) -> str | None:
    depth = _get(row, "bit_depth")
    if depth is None or int(depth) <= 8:
        return None
    return f"{int(depth)} bits per channel (mode {_get(row, 'mode')}; 8 expected)"


def grayscale(row, t: dict) -> str | None:
    mode = _get(row, "mode")
    if mode is None or not (mode in _GRAYSCALE_MODES or str(mode).startswith("I;16")):
        return None
    return f"mode {mode}: one grayscale channel (RGB expected)"


def alpha(row, t: dict) -> str | None:
    lowest = _get(row, "alpha_min")
    if not _get(row, "has_alpha") or lowest is None or int(lowest) >= 255:
        return None
    return f"alpha down to {int(lowest)} (transparency used; 255 is opaque)"


def exif_rotated(row, t: dict) -> str | None:
    orientation = _get(row, "exif_orientation")
    if orientation is None or int(orientation) == 1:
        return None
    return f"EXIF orientation {int(orientation)} (1 is stored upright)"


def _size(row) -> tuple[int, int] | None:
    width, height = _get(row, "width"), _get(row, "height")
    if width is None or height is None or min(int(width), int(height)) <= 0:
        return None
    return int(width), int(height)


def too_small(row, t: dict) -> str | None:
    size, limit = _size(row), t.get("min_side")
    if size is None or limit is None or min(size) >= limit:
        return None
    return f"{size[0]}x{size[1]} px: short side {min(size)} < {_fmt(limit)}"


def extreme_aspect(row, t: dict) -> str | None:
    size, limit = _size(row), t.get("max_aspect")
    if size is None or limit is None:
        return None
    ratio = max(size) / min(size)
    if ratio <= limit:
        return None
    return f"{size[0]}x{size[1]} px: aspect {ratio:.2f}:1 > {_fmt(limit)}:1"


def low_information(row, t: dict) -> str | None:
    parts = []
    entropy, min_entropy = _num(row, "entropy"), t.get("min_entropy")
    if entropy is not None and min_entropy is not None and entropy < min_entropy:
        parts.append(f"entropy {entropy:.2f} bits < {_fmt(min_entropy)}")
    std, min_std = _num(row, "luma_std"), t.get("min_std")
    if std is not None and min_std is not None and std < min_std:
        parts.append(f"luma std {std:.2f} < {_fmt(min_std)}")
    return "; ".join(parts) or None


def too_dark(row, t: dict) -> str | None:
    mean, limit = _num(row, "luma_mean"), t.get("min_luma")
    if mean is None or limit is None or mean >= limit:
        return None
    return f"mean luma {mean:.1f} < {_fmt(limit)} (of 255)"


def too_bright(row, t: dict) -> str | None:
    mean, limit = _num(row, "luma_mean"), t.get("max_luma")
    if mean is None or limit is None or mean <= limit:
        return None
    return f"mean luma {mean:.1f} > {_fmt(limit)} (of 255)"


def blurry(row, t: dict) -> str | None:
    var, limit = _num(row, "laplacian_var"), t.get("min_laplacian_var")
    if var is None or limit is None or var >= limit:
        return None
    return f"Laplacian variance {var:.2f} < {_fmt(limit)} (measured at 256 px)"


CHECKS = {code: globals()[code] for code in CODES}


def findings(row, thresholds: dict | None = None) -> list[tuple[str, str]]:
    """``[(code, detail)]`` for one row, in :data:`CODES` order; ``thresholds`` override
    :data:`DEFAULT_THRESHOLDS` key by key. A row that did not decode (``decoded`` false)
    yields its decode reason only."""
    decoded = _get(row, "decoded")
    if decoded is not None and not bool(decoded):
        reason = _get(row, "reason") or "corrupt"
        return [(str(reason), str(_get(row, "detail") or reason))]
    t = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    found = []
    for code, check in CHECKS.items():
        detail = check(row, t)
        if detail is not None:
            found.append((code, detail))
    return found


# --------------------------------------------------------------------------- whole columns
# may_find() answers for a whole frame at once where findings() may return something, so
# per-row checks run only on those rows. Each test below is true at least wherever its check
# fires; a column of an unexpected type makes its test true everywhere.

_GRAYSCALE_OR_PALETTE_MODES = ("CMYK", "P", "PA", "LA", "La", *_GRAYSCALE_MODES)
_TAIL = 6
"""Characters at the end of a file name that settle its extension: the longest known one
(``.jpeg``) and the character before it."""


def may_find(frame: pd.DataFrame, thresholds: dict | None = None) -> np.ndarray:
    """Per row of ``frame``: False where :func:`findings` surely returns nothing."""
    t = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    may = np.zeros(len(frame), dtype=bool)
    for test in (_decode_failed, _extension_may_mismatch, _mode_may_fire, _flags_may_fire, _size_may_fire, _measures_may_fire):
        may |= test(frame, t)
    return may


def _numbers(frame: pd.DataFrame, name: str) -> np.ndarray | None:
    """A column as float64 (NaN where missing or absent); None if it is not numeric."""
    if name not in frame:
        return np.full(len(frame), np.nan)
    values = frame[name]
    if not (isinstance(values.dtype, np.dtype) and values.dtype.kind in "biuf"):
        return None
    return values.to_numpy(dtype=np.float64)


def _texts(frame: pd.DataFrame, name: str) -> pd.Series | None:
    """A text column (all missing if absent); None if it holds anything but text."""
    if name not in frame:
        return pd.Series(np.nan, index=frame.index, dtype="str")
    values = frame[name]
    return values if isinstance(values.dtype, pd.StringDtype) else None


def _everywhere(frame: pd.DataFrame) -> np.ndarray:
    return np.ones(len(frame), dtype=bool)


def _decode_failed(frame: pd.DataFrame, t: dict) -> np.ndarray:
    decoded = _numbers(frame, "decoded")
    return _everywhere(frame) if decoded is None else decoded == 0


def _truthy(values: np.ndarray) -> np.ndarray:
    return (values != 0) & ~np.isnan(values)


def _flags_may_fire(frame: pd.DataFrame, t: dict) -> np.ndarray:
    """animated, high_bit_depth, alpha, exif_rotated."""
    animated, depth, has_alpha, lowest, orientation = (
        _numbers(frame, name) for name in ("animated", "bit_depth", "has_alpha", "alpha_min", "exif_orientation")
    )
    may = _everywhere(frame) if animated is None else _truthy(animated)
    may |= _everywhere(frame) if depth is None else depth > 8
    may |= _everywhere(frame) if has_alpha is None or lowest is None else _truthy(has_alpha) & (lowest < 255)
    may |= _everywhere(frame) if orientation is None else (orientation != 1) & ~np.isnan(orientation)
    return may


def _size_may_fire(frame: pd.DataFrame, t: dict) -> np.ndarray:
    """too_small, extreme_aspect (on whole pixels, as the checks count them)."""
    width, height = _numbers(frame, "width"), _numbers(frame, "height")
    if width is None or height is None:
        return _everywhere(frame)
    short, long = np.minimum(np.trunc(width), np.trunc(height)), np.maximum(np.trunc(width), np.trunc(height))
    sized = short > 0
    may = np.zeros(len(frame), dtype=bool)
    if t.get("min_side") is not None:
        may |= sized & (short < t["min_side"])
    if t.get("max_aspect") is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            may |= sized & (long / np.where(sized, short, 1) * (1 + 1e-9) > t["max_aspect"])
    return may


def _measures_may_fire(frame: pd.DataFrame, t: dict) -> np.ndarray:
    """low_information, too_dark, too_bright, blurry."""
    may = np.zeros(len(frame), dtype=bool)
    for name, limit, below in (
        ("entropy", t.get("min_entropy"), True),
        ("luma_std", t.get("min_std"), True),
        ("luma_mean", t.get("min_luma"), True),
        ("luma_mean", t.get("max_luma"), False),
        ("laplacian_var", t.get("min_laplacian_var"), True),
    ):
        if limit is None:
            continue
        values = _numbers(frame, name)
        may |= _everywhere(frame) if values is None else (values < limit) if below else (values > limit)
    return may


def _mode_may_fire(frame: pd.DataFrame, t: dict) -> np.ndarray:
    """cmyk, palette, la, grayscale."""
    mode = _texts(frame, "mode")
    if mode is None:
        return _everywhere(frame)
    special = mode.isin(_GRAYSCALE_OR_PALETTE_MODES) | mode.str.startswith("I;16")
    return special.to_numpy(dtype=bool, na_value=False)


def _extension_may_mismatch(frame: pd.DataFrame, t: dict) -> np.ndarray:
    """extension_mismatch, settled once per distinct (format, end of file name) pair."""
    fmt, name = _texts(frame, "format"), _texts(frame, "original_name")
    if fmt is None or name is None:
        return _everywhere(frame)
    fmt_codes, formats = pd.factorize(fmt)
    tail_codes, tails = pd.factorize(name.str.slice(-_TAIL))
    rows = np.flatnonzero((fmt_codes >= 0) & (tail_codes >= 0) & (fmt != "").to_numpy(dtype=bool, na_value=False))
    pair_codes, pairs = pd.factorize(fmt_codes[rows].astype(np.int64) * len(tails) + tail_codes[rows])
    formats, tails = formats.tolist(), tails.tolist()
    fits = np.array([_extension_fits(formats[p // len(tails)], tails[p % len(tails)]) for p in pairs.tolist()], dtype=bool)
    may = np.zeros(len(frame), dtype=bool)
    may[rows] = ~fits[pair_codes]
    return may


def _extension_fits(fmt: str, tail: str) -> bool:
    """Whether every file name ending in ``tail`` has an extension that matches ``fmt``."""
    dot = tail.rfind(".")
    if dot < 1 or "/" in tail[dot - 1 :]:
        return False  # the extension may start before the tail, or the name has folders
    return tail[dot:].lower() in FORMAT_EXTENSIONS.get(str(fmt).upper(), (f".{str(fmt).lower()}",))


# --------------------------------------------------------------------------- report lines


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _templates(t: dict) -> dict[str, str]:
    """Report lines; {n} is "<count> image(s)", {nf} "<count> file(s)", and the bracketed
    verb and pronoun pairs are [singular|plural]."""
    max_pixels = t.get("max_pixels")
    limit = f"the {int(max_pixels):,}-pixel limit" if max_pixels else "the audit.max_pixels limit"
    return {
        "extension_mismatch": "{n} [has|have] a file extension that does not match [its|their] real format — rename [it|them] to the real extension (the export does so already)",
        "animated": "{n} [is|are] animated — only the first frame is exported; extract the frames you want as separate stills",
        "cmyk": "{n} [is|are] CMYK — [it is|they are] converted to RGB on export; check the colours or convert [it|them] yourself with a colour profile",
        "palette": "{n} [uses|use] a palette (P mode) — [it is|they are] converted to RGB on export; check for banding or dithering",
        "la": "{n} [is|are] grayscale with alpha (LA) — [it is|they are] converted on export; check [it|them] or convert to RGB/RGBA yourself",
        "high_bit_depth": "{n} [is|are] 16-bit — [it is|they are] scaled to 8-bit RGB on export; check the tones survived",
        "grayscale": "{n} [is|are] grayscale — keep [it|them] only if the set should teach grayscale, otherwise replace or remove [it|them]",
        "alpha": "{n} [uses|use] transparency — [it is|they are] flattened onto export.background unless export.keep_alpha is true; check [its|their] edges",
        "exif_rotated": "{n} [is|are] rotated by EXIF orientation — exported upright; check [it looks|they look] right",
        "too_small": f"{{n}} [is|are] below {_fmt(t['min_side'])} px on the short side — upscale or remove [it|them]"
        if t.get("min_side") is not None else "{n} [is|are] too small — upscale or remove [it|them]",
        "extreme_aspect": f"{{n}} [is|are] more elongated than {_fmt(t['max_aspect'])}:1 — crop [it|them] or make sure your aspect-ratio buckets cover [it|them]"
        if t.get("max_aspect") is not None else "{n} [has|have] an extreme aspect ratio — crop [it|them]",
        "low_information": f"{{n}} [carries|carry] almost no information (entropy below {_fmt(t.get('min_entropy') or 0)} bits or contrast below "
        f"{_fmt(t.get('min_std') or 0)}) — remove [it|them] if [it is|they are] blank or flat",
        "too_dark": f"{{n}} [is|are] very dark (mean brightness below {_fmt(t.get('min_luma') or 0)} of 255) — brighten or remove [it|them]",
        "too_bright": f"{{n}} [is|are] very bright (mean brightness above {_fmt(t.get('max_luma') or 255)} of 255) — darken or remove [it|them]",
        "blurry": f"{{n}} [looks|look] blurry (Laplacian variance below {_fmt(t.get('min_laplacian_var') or 0)} at 256 px) — replace [it with a sharper version|them with sharper versions] or remove [it|them]",
        "zero_byte": "{nf} [is|are] empty (0 bytes) — re-copy or re-download [it|them], or remove [it|them]",
        "not_image": "{nf} [is not an image|are not images] Pillow can read — remove [it|them] from the source folder or convert [it|them]",
        "truncated": "{n} [is|are] truncated (the file ends early) — re-download or re-export [it|them]",
        "corrupt": "{n} [is|are] corrupt and cannot be decoded — re-download or re-export [it|them], or remove [it|them]",
        "decompression_bomb": f"{{n}} [exceeds|exceed] {limit} (possible decompression bomb) — downscale [it|them], "
        "or raise audit.max_pixels if you trust the source",
    }


def describe(code: str, count: int, thresholds: dict | None = None) -> str:
    """One plain-language report line for ``count`` items with ``code``, naming the fix,
    e.g. ``"3 images are below 256 px on the short side — upscale or remove them"``.
    ``thresholds`` (defaults: :data:`DEFAULT_THRESHOLDS`; ``max_pixels`` for the bomb line)
    supply the numbers the line quotes."""
    t = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    templates = _templates(t)
    if code not in templates:
        raise KeyError(f"no report line for audit code {code!r}; known: {', '.join(templates)}")
    count = int(count)
    one = count == 1
    text = templates[code].replace("{n}", _plural(count, "image")).replace("{nf}", _plural(count, "file"))
    out, rest = [], text
    while "[" in rest:
        before, _, after = rest.partition("[")
        pair, _, rest = after.partition("]")
        singular, _, plural = pair.partition("|")
        out += [before, singular if one else plural]
    return "".join(out) + rest


def summarize(counts: dict[str, int], thresholds: dict | None = None) -> list[str]:
    """:func:`describe` lines for every code with a non-zero count: decode reasons first,
    then :data:`CODES` order, then anything else alphabetically."""
    order = {code: k for k, code in enumerate((*DECODE_REASONS, *CODES))}
    codes = sorted((c for c, n in counts.items() if n), key=lambda c: (order.get(c, len(order)), c))
    return [describe(code, counts[code], thresholds) for code in codes]
