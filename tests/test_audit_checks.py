"""trainset.audit_checks: findings over audit measures, thresholds, actions and report lines.

Every image is made here, in ``tmp_path``, in the bad shape a check looks for; the
features are decoded once (the audit stage, cached) and the checks then run on the
manifest rows under any thresholds without decoding again.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFilter

import stage_helpers as H
from trainset import audit_checks, features, manifest, schemas
from trainset.audit_checks import CODES, DEFAULT_ACTIONS, DEFAULT_THRESHOLDS, describe, findings, summarize
from trainset.stages import audit

PHOTOS = ["astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png", "coins.png", "grass.png", "gravel.png",
          "hubble_deep_field.jpg", "motorcycle_left.png", "retina.jpg", "rocket.jpg", "moon.png"]


# --------------------------------------------------------------------------- the shapes


def _photo(name: str = "astronaut.png", size: tuple[int, int] | None = (512, 512)) -> Image.Image:
    return H.sample(name, size)


def _enc(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _bomb_png(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of zeros whose header claims ``width x height``: a few KB on disk."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)

    row = b"\0" * (1 + (width + 7) // 8)
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row * 1000) for _ in range(height // 1000)) + z.compress(row * (height % 1000)) + z.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _shapes() -> dict[str, bytes]:
    p = _photo()
    arr = np.asarray(p, dtype=np.float64)
    cutout = p.convert("RGBA")
    alpha = np.full((512, 512), 255, np.uint8)
    alpha[:, :128] = 0  # the left quarter fully transparent
    cutout.putalpha(Image.fromarray(alpha))
    exif = Image.Exif()
    exif[0x0112] = 6
    frames = [p, p.transpose(Image.Transpose.FLIP_LEFT_RIGHT), _photo("coffee.png")]
    return {
        "clean.jpg": _enc(p, "JPEG", quality=92),
        "sharp.png": _enc(p, "PNG"),
        "opaque.png": _enc(p.convert("RGBA"), "PNG"),  # an alpha channel, all 255: not "alpha"
        "lie.jpg": _enc(p, "PNG"),  # PNG bytes named .jpg
        "anim.gif": _enc(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0),
        "cmyk.jpg": _enc(p.convert("CMYK"), "JPEG", quality=92),
        "pal.png": _enc(p.convert("P", palette=Image.Palette.ADAPTIVE, colors=256), "PNG"),
        "la.png": _enc(p.convert("LA"), "PNG"),
        "deep.png": _enc(Image.fromarray(np.asarray(p.convert("L"), dtype=np.uint16) * 257), "PNG"),
        "gray.png": _enc(p.convert("L"), "PNG"),
        "cutout.png": _enc(cutout, "PNG"),
        "rot.jpg": _enc(_photo(size=(512, 384)), "JPEG", quality=92, exif=exif),
        "tiny.png": _enc(_photo(size=(120, 90)), "PNG"),
        "strip.png": _enc(_photo("coffee.png", None).crop((0, 0, 600, 60)).resize((2560, 256), Image.Resampling.LANCZOS), "PNG"),
        "flat.png": _enc(Image.new("RGB", (512, 512), (128, 128, 128)), "PNG"),
        "dark.png": _enc(Image.fromarray((arr * 0.1).round().astype(np.uint8)), "PNG"),
        "bright.png": _enc(Image.fromarray((255 - (255 - arr) * 0.05).round().astype(np.uint8)), "PNG"),
        "blurred.png": _enc(p.filter(ImageFilter.GaussianBlur(3)), "PNG"),
        "bomb.png": _bomb_png(20_000, 20_000),
        "empty.png": b"",
        "notes.png": b"shopping list, not pixels\n" * 10,
        "cut.jpg": _enc(p, "JPEG", quality=90)[:20_000],
    }


# exactly the codes each shape gets under DEFAULT_THRESHOLDS
EXPECTED = {
    "clean.jpg": set(),
    "sharp.png": set(),
    "opaque.png": set(),
    "lie.jpg": {"extension_mismatch"},
    "anim.gif": {"animated", "palette"},  # GIF frames are palette images
    "cmyk.jpg": {"cmyk"},
    "pal.png": {"palette"},
    "la.png": {"la"},
    "deep.png": {"high_bit_depth", "grayscale"},
    "gray.png": {"grayscale"},
    "cutout.png": {"alpha"},
    "rot.jpg": {"exif_rotated"},
    "tiny.png": {"too_small"},  # 120 px upscaled about 2x to 256 for the blur measure: still sharp enough
    "strip.png": {"extreme_aspect"},
    "flat.png": {"low_information", "blurry"},
    "dark.png": {"too_dark", "blurry"},  # a tenth of the contrast: a hundredth of the Laplacian variance
    "bright.png": {"too_bright", "low_information", "blurry"},
    "blurred.png": {"blurry"},
}
DECODE_FAILURES = {"bomb.png": "decompression_bomb", "empty.png": "zero_byte", "notes.png": "not_image", "cut.jpg": "truncated"}


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """Every shape ingested and audited once; returns (chain, manifest rows by file name)."""
    root = tmp_path_factory.mktemp("audit_checks")
    for name, data in _shapes().items():
        H.write_bytes(root / "raw" / name, data)
    chain = H.Chain(root, [H.source(root / "raw")])
    chain.ingest()
    chain.audit()
    df = chain.read("audit", schemas.AUDIT).merge(chain.read("ingest", schemas.INGEST)[["item_id", "original_name"]], on="item_id")
    return chain, {row.original_name: row for row in df.itertuples(index=False)}


def _codes(row, thresholds=None) -> set[str]:
    return {code for code, _ in findings(row, thresholds)}


# --------------------------------------------------------------------------- every code on its shape


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_shape_gets_exactly_its_findings(audited, name):
    _, rows = audited
    assert _codes(rows[name]) == EXPECTED[name]


def test_every_code_has_a_shape_and_a_clean_photo_has_none(audited):
    _, rows = audited
    assert set().union(*EXPECTED.values()) == set(CODES)
    for clean in ("clean.jpg", "sharp.png", "opaque.png"):
        assert findings(rows[clean]) == []


@pytest.mark.parametrize(("name", "reason"), sorted(DECODE_FAILURES.items()))
def test_decode_failures_yield_their_reason_only(audited, name, reason):
    _, rows = audited
    row = rows[name]
    assert not row.decoded
    (found,) = findings(row)
    assert found == (reason, row.detail)
    assert DEFAULT_ACTIONS[reason] == "reject"


def test_bomb_keeps_header_size_and_default_measures(audited):
    _, rows = audited
    row = rows["bomb.png"]
    assert (row.width, row.height, row.format) == (20_000, 20_000, "PNG")
    assert (row.n_frames, row.animated, row.has_alpha, row.alpha_min, row.bit_depth) == (1, False, False, 255, 0)
    assert all(math.isnan(getattr(row, k)) for k in ("luma_mean", "luma_std", "entropy", "laplacian_var"))


def test_details_name_the_value_and_the_threshold(audited):
    _, rows = audited
    found = {name: dict(findings(rows[name])) for name in EXPECTED}
    assert found["tiny.png"]["too_small"] == "120x90 px: short side 90 < 256"
    assert found["strip.png"]["extreme_aspect"] == "2560x256 px: aspect 10.00:1 > 3:1"
    assert found["lie.jpg"]["extension_mismatch"] == "named .jpg but the content is PNG (expected .png)"
    assert found["anim.gif"]["animated"].startswith("3 frames")
    assert found["cutout.png"]["alpha"].startswith("alpha down to 0")
    assert found["rot.jpg"]["exif_rotated"].startswith("EXIF orientation 6")
    assert found["deep.png"]["high_bit_depth"].startswith("16 bits per channel")
    assert found["flat.png"]["low_information"] == "entropy 0.00 bits < 2; luma std 0.00 < 6"
    dark = rows["dark.png"]
    assert found["dark.png"]["too_dark"] == f"mean luma {dark.luma_mean:.1f} < 20 (of 255)"
    assert "> 240" in found["bright.png"]["too_bright"]
    blurred = rows["blurred.png"]
    assert found["blurred.png"]["blurry"] == f"Laplacian variance {blurred.laplacian_var:.2f} < 60 (measured at 256 px)"


# --------------------------------------------------------------------------- thresholds without decoding


def test_thresholds_change_findings_without_decoding_again(audited, monkeypatch):
    chain, rows = audited

    def no_decode(*args, **kw):
        raise AssertionError("decoded again")

    monkeypatch.setattr(features, "extract", no_decode)
    strict = {"min_side": 1024, "max_aspect": 1.2, "min_laplacian_var": 5000, "max_luma": 100}
    loose = {"min_side": 64, "max_aspect": 20, "min_laplacian_var": 1, "min_luma": 5, "max_luma": 250, "min_entropy": 0, "min_std": 0}
    assert "too_small" in _codes(rows["sharp.png"], strict)
    assert "blurry" in _codes(rows["sharp.png"], strict)
    assert "too_bright" in _codes(rows["sharp.png"], strict)
    assert "extreme_aspect" in _codes(rows["rot.jpg"], strict)  # 384x512 upright: 1.33:1
    assert _codes(rows["tiny.png"], loose) == set()
    assert _codes(rows["strip.png"], loose) == set()
    assert _codes(rows["blurred.png"], loose) == set()
    assert _codes(rows["dark.png"], loose) == set()
    assert _codes(rows["bright.png"], loose) == set()
    # and the audit itself, rerun with threshold keys among its params, is all cache hits
    stats_path = chain.root / "data" / "run" / "audit-stats.json"
    with contextlib.chdir(chain.root):  # ingest paths are relative to the project root
        audit.run(chain.p["ingest"], chain.p["audit"], chain.p["cache"] / "features", stats_path,
                  params={**DEFAULT_THRESHOLDS, **strict, "actions": {"blurry": "reject"}})
    stats = json.loads(stats_path.read_text())
    assert stats["decoded"] == 0 and stats["cache_hits"] == stats["contents"]


def test_pixel_limit_is_part_of_the_cache_key(audited, tmp_path):
    chain, _ = audited
    out, stats_path = tmp_path / "audit.parquet", tmp_path / "stats.json"
    with contextlib.chdir(chain.root):
        df = audit.run(chain.p["ingest"], out, chain.p["cache"] / "features", stats_path, params={"max_pixels": 300_000})
    stats = json.loads(stats_path.read_text())
    assert stats["decoded"] == stats["contents"] and stats["cache_hits"] == 0
    bombs = set(df.loc[df["reason"] == "decompression_bomb", "item_id"])
    assert bombs == {"src:bomb.png", "src:strip.png"}  # 2560 x 256 = 655 360 px > 300 000
    strip = df.set_index("item_id").loc["src:strip.png"]
    assert (strip["width"], strip["height"]) == (2560, 256)


def test_threshold_none_switches_a_check_off(audited):
    _, rows = audited
    assert "blurry" not in _codes(rows["blurred.png"], {"min_laplacian_var": None})
    assert "too_small" not in _codes(rows["tiny.png"], {"min_side": None})


def test_row_forms_agree(audited):
    _, rows = audited
    row = rows["cutout.png"]
    as_dict = row._asdict()
    assert findings(as_dict) == findings(row) == findings(SimpleNamespace(**as_dict))


def test_missing_measures_skip_their_checks():
    row = {"original_name": "a.png", "format": "PNG", "mode": "RGB", "width": 512, "height": 512, "exif_orientation": 1,
           "luma_mean": float("nan"), "luma_std": None, "entropy": pd.NA, "laplacian_var": np.nan}
    assert findings(row) == []
    assert findings({**row, "luma_mean": 3.0}) == [("too_dark", "mean luma 3.0 < 20 (of 255)")]


@pytest.mark.parametrize(
    ("name", "fmt", "mismatch"),
    [("a.jpg", "JPEG", False), ("a.JPEG", "JPEG", False), ("a.jpeg", "MPO", False), ("a.tif", "TIFF", False),
     ("a.TIFF", "TIFF", False), ("a.png", "PNG", False), ("a.webp", "WEBP", False), ("a.gif", "GIF", False),
     ("a.jpg", "PNG", True), ("a.png", "JPEG", True), ("a.tiff", "PNG", True), ("a.gif", "WEBP", True), ("noext", "PNG", True)],
)
def test_extension_equivalences(name, fmt, mismatch):
    row = {"original_name": name, "format": fmt}
    assert (audit_checks.extension_mismatch(row, DEFAULT_THRESHOLDS) is not None) is mismatch


def test_default_thresholds_and_actions():
    assert DEFAULT_THRESHOLDS == {"min_side": 256, "max_aspect": 3.0, "min_entropy": 2.0, "min_std": 6.0, "min_luma": 20, "max_luma": 240, "min_laplacian_var": 60.0}
    assert set(DEFAULT_ACTIONS) == set(CODES) | set(schemas.DECODE_REASONS)
    rejects = {code for code, action in DEFAULT_ACTIONS.items() if action == "reject"}
    assert rejects == {"too_small", *schemas.DECODE_REASONS}
    assert set(DEFAULT_ACTIONS.values()) == {"reject", "flag"}


def test_min_laplacian_var_separates_sharp_photos_from_blurred_copies():
    """The measurement DEFAULT_THRESHOLDS["min_laplacian_var"] was chosen from (module doc)."""
    limit = DEFAULT_THRESHOLDS["min_laplacian_var"]
    for name in PHOTOS:
        photo = H.sample(name)
        scale = 512 / max(photo.size)
        photo = photo.resize((round(photo.width * scale), round(photo.height * scale)), Image.Resampling.LANCZOS)
        sharp = features.measure(photo)["laplacian_var"]
        strong = features.measure(photo.filter(ImageFilter.GaussianBlur(3)))["laplacian_var"]
        assert sharp > 1.5 * limit, name
        assert strong < limit, name


# --------------------------------------------------------------------------- describe


def test_describe_examples():
    assert describe("too_small", 3) == "3 images are below 256 px on the short side — upscale or remove them"
    assert describe("too_small", 1) == "1 image is below 256 px on the short side — upscale or remove it"
    assert describe("too_small", 2, {"min_side": 512}) == "2 images are below 512 px on the short side — upscale or remove them"
    assert describe("zero_byte", 1) == "1 file is empty (0 bytes) — re-copy or re-download it, or remove it"
    assert describe("zero_byte", 4) == "4 files are empty (0 bytes) — re-copy or re-download them, or remove them"
    assert describe("blurry", 2).startswith("2 images look blurry (Laplacian variance below 60 at 256 px)")
    assert describe("blurry", 1, {"min_laplacian_var": 40}).startswith("1 image looks blurry (Laplacian variance below 40")
    assert "89,478,485-pixel limit" in describe("decompression_bomb", 2, {"max_pixels": features.DEFAULT_MAX_PIXELS})
    assert describe("decompression_bomb", 1).startswith("1 image exceeds the audit.max_pixels limit")
    assert "3:1" in describe("extreme_aspect", 5) and "below 20 of 255" in describe("too_dark", 5)


@pytest.mark.parametrize("code", [*CODES, *schemas.DECODE_REASONS])
def test_describe_every_code_in_singular_and_plural(code):
    one, many = describe(code, 1), describe(code, 7)
    assert one.startswith(("1 image ", "1 file ")) and many.startswith(("7 images ", "7 files "))
    assert " — " in one and " — " in many  # the fix after the dash
    for text in (one, many):
        assert "[" not in text and "{" not in text and "|" not in text
    assert not any(w in one.split() for w in ("are", "have", "them", "their", "look", "use", "carry", "exceed"))
    assert not any(w in many.split() for w in ("it", "its", "has", "looks", "uses", "carries", "exceeds"))


def test_describe_unknown_code():
    with pytest.raises(KeyError, match="no report line"):
        describe("sparkly", 1)


def test_summarize_orders_decode_reasons_first_and_skips_zero():
    lines = summarize({"blurry": 2, "too_small": 1, "corrupt": 3, "cmyk": 0})
    assert lines == [describe("corrupt", 3), describe("too_small", 1), describe("blurry", 2)]


# --------------------------------------------------------------------------- whole columns

_NAMES = ["a.jpg", "a.JPG", "A.Jpeg", "dir/b.jpeg", "dir.jpg/b", "b.jpg/", ".jpg", "x/.png", "..png", "c.", "noext",
          "c.tiff", "long_name_0001.webp", "d.jfif", "e.JPE", "f.png\n", "g.PNG", "ü.jpg", "h.ｊｐｇ", "i.K", "", "j.gif.png",
          "k.bmp", "l.jpeg ", "名前.tif", "m./png", "n.foo"]
_FORMATS = ["JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF", "FOO", "K", "", None]
_MODES = ["RGB", "RGBA", "L", "LA", "La", "P", "PA", "CMYK", "1", "I", "F", "I;16", "I;16B", "YCbCr", None]


def _random_audit_rows(seed: int, n: int = 800) -> pd.DataFrame:
    """Mostly clean rows; each measure takes an odd value (an edge, a miss, a bad name) now and then."""
    rng = np.random.default_rng(seed)

    def vary(clean, odd: list) -> list:
        return [odd[rng.integers(len(odd))] if rng.random() < 0.08 else clean for _ in range(n)]

    df = pd.DataFrame({
        "decoded": vary(True, [False]),
        "reason": vary(None, ["corrupt", "truncated"]),
        "detail": vary(None, ["broken"]),
        "original_name": vary("photo.jpg", _NAMES),
        "format": vary("JPEG", _FORMATS),
        "mode": vary("RGB", _MODES),
        "width": vary(800, [0, -3, 1, 64, 255, 256, 257, 4000]),
        "height": vary(600, [0, 1, 85, 256, 300, 2401]),
        "exif_orientation": vary(1, [3, 6, 8]),
        "n_frames": vary(1, [2, 30]),
        "animated": vary(False, [True]),
        "has_alpha": vary(False, [True]),
        "alpha_min": vary(255, [0, 128, 254]),
        "bit_depth": vary(8, [0, 1, 16]),
        "luma_mean": vary(120.0, [np.nan, 0.0, 19.99, 20.0, 240.0, 240.01, 255.0]),
        "luma_std": vary(50.0, [np.nan, 0.0, 5.99, 6.0]),
        "entropy": vary(7.0, [np.nan, 1.99, 2.0]),
        "laplacian_var": vary(500.0, [np.nan, 0.0, 59.99, 60.0]),
    })
    for col in ("reason", "detail", "original_name", "format", "mode"):
        df[col] = df[col].astype("str")
    return df


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize(
    "thresholds",
    [None, {"min_side": 300, "max_aspect": 1.2, "min_luma": None}, {"min_entropy": None, "min_std": 10, "max_luma": 100, "max_aspect": 3.0}],
)
def test_may_find_is_true_wherever_a_check_fires(seed, thresholds):
    df = _random_audit_rows(seed)
    may = audit_checks.may_find(df, thresholds)
    fired = np.array([bool(findings(row._asdict(), thresholds)) for row in df.itertuples(index=False)])
    assert not (fired & ~may).any(), df[fired & ~may].to_dict("records")[:3]
    assert (~may).sum() > 0


def test_may_find_passes_clean_rows_and_doubts_odd_columns():
    clean = pd.DataFrame({"decoded": [True], "original_name": ["a.png"], "format": ["PNG"], "mode": ["RGB"], "width": [512],
                          "height": [512], "exif_orientation": [1], "luma_mean": [120.0], "laplacian_var": [500.0]})
    assert not audit_checks.may_find(clean).any()
    assert audit_checks.may_find(clean.astype({"mode": object})).all()  # not a text column: every row is checked
    assert audit_checks.may_find(clean.iloc[:0]).shape == (0,)


def test_findings_reads_only_the_fields_it_names():
    class Watched(dict):
        def get(self, key, default=None):
            read.add(key)
            return super().get(key, default)

    read: set[str] = set()
    row = {"decoded": True, "original_name": "a.png", "format": "JPEG", "mode": "I;16", "width": 10, "height": 900,
           "exif_orientation": 6, "n_frames": 3, "animated": True, "has_alpha": True, "alpha_min": 0, "bit_depth": 16,
           "luma_mean": 5.0, "luma_std": 1.0, "entropy": 0.5, "laplacian_var": 1.0}
    assert len(findings(Watched(row))) >= 10
    findings(Watched({"decoded": False, "reason": "corrupt", "detail": "x"}))
    assert read == set(audit_checks.FIELDS)
