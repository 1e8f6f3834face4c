"""trainset.hashing: SHA-256, and pHash and dHash identical to imagehash.phash and imagehash.dhash."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import imagehash
import numpy as np
import pytest
import skimage.data
from PIL import Image, UnidentifiedImageError

from trainset import hashing

SKIMAGE_DATA = Path(skimage.data.__file__).parent
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".tif", ".tiff", ".bmp", ".webp"}


def _bundled_images() -> list[Path]:
    out = []
    for path in sorted(SKIMAGE_DATA.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        try:
            with Image.open(path) as im:
                im.load()
        except (UnidentifiedImageError, OSError):
            continue  # e.g. a TIFF flavour Pillow cannot read
        out.append(path)
    return out


BUNDLED = _bundled_images()


def _same(image: Image.Image) -> None:
    ours = hashing.to_hex(hashing.phash(image))
    theirs = str(imagehash.phash(image))
    assert ours == theirs, (image.mode, image.size)
    assert len(ours) == 16


def _same_dhash(image: Image.Image) -> None:
    ours = hashing.to_hex(hashing.dhash(image))
    theirs = str(imagehash.dhash(image))
    assert ours == theirs, (image.mode, image.size)
    assert len(ours) == 16


def test_enough_bundled_photos_found():
    # scikit-image ships ~25 sample images Pillow can read; make sure the sweep is real.
    assert len(BUNDLED) >= 20
    assert {".png", ".jpg"} <= {p.suffix for p in BUNDLED}


@pytest.mark.parametrize("path", BUNDLED, ids=[p.name for p in BUNDLED])
def test_phash_matches_imagehash_on_bundled_photos(path):
    with Image.open(path) as im:
        im.load()
        _same(im)
        # also after common conversions the pipeline may see
        _same(im.convert("RGB"))
        _same(im.convert("L"))
        _same(im.transpose(Image.Transpose.ROTATE_90))


def test_phash_differs_between_different_photos():
    values = set()
    for path in BUNDLED:
        with Image.open(path) as im:
            values.add(hashing.to_hex(hashing.phash(im)))
    assert len(values) >= len(BUNDLED) - 2  # a couple of trivial/degenerate ones may collide


def test_phash_is_deterministic_and_roundtrips_through_png():
    with Image.open(BUNDLED[0]) as im:
        a = hashing.phash(im)
        buf = io.BytesIO()
        im.save(buf, format="PNG")
    buf.seek(0)
    with Image.open(buf) as again:
        assert hashing.phash(again) == a


# --- synthetic tricky images ------------------------------------------------------------


def _synthetic() -> dict[str, Image.Image]:
    rng = np.random.default_rng(1234)
    images: dict[str, Image.Image] = {}
    for colour in [(0, 0, 0), (255, 255, 255), (128, 64, 200), (13, 13, 13)]:
        images[f"flat_rgb_{colour}"] = Image.new("RGB", (64, 48), colour)
    images["flat_L_0"] = Image.new("L", (40, 40), 0)
    images["flat_L_255"] = Image.new("L", (7, 300), 255)
    images["tiny_1x1"] = Image.new("RGB", (1, 1), (10, 200, 30))
    images["tiny_3x2"] = Image.fromarray(np.array([[[0, 0, 0], [128, 128, 128], [255, 255, 255]],
                                                   [[255, 0, 0], [0, 255, 0], [0, 0, 255]]], dtype=np.uint8), "RGB")
    for name, (w, h), box in [
        ("split_lr", (100, 100), (0, 0, 50, 100)),
        ("split_tb", (100, 100), (0, 0, 100, 50)),
        ("split_odd", (33, 77), (0, 0, 16, 77)),
        ("split_diag_quarter", (64, 64), (0, 0, 32, 32)),
    ]:
        im = Image.new("RGB", (w, h), (255, 255, 255))
        im.paste((0, 0, 0), box)
        images[name] = im
    two = Image.new("RGB", (80, 80), (200, 30, 30))
    two.paste((30, 30, 200), (40, 0, 80, 80))
    images["split_two_colours"] = two
    for k in range(3):
        art = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        small = Image.fromarray(art, "RGB")
        images[f"pixelart_{k}_x16"] = small.resize((128, 128), Image.Resampling.NEAREST)
        images[f"pixelart_{k}_x7"] = small.resize((56, 56), Image.Resampling.NEAREST)
    palette_art = Image.fromarray(rng.integers(0, 4, size=(6, 5), dtype=np.uint8) * 60, "L")
    images["pixelart_gray_6x5_x13"] = palette_art.resize((65, 78), Image.Resampling.NEAREST)
    for k in range(3):
        images[f"noise_rgb_{k}"] = Image.fromarray(rng.integers(0, 256, size=(90, 120, 3), dtype=np.uint8), "RGB")
    rgba = rng.integers(0, 256, size=(50, 70, 4), dtype=np.uint8)
    rgba[:, :35, 3] = 0  # half fully transparent
    images["rgba"] = Image.fromarray(rgba, "RGBA")
    images["rgba_flat_transparent"] = Image.new("RGBA", (32, 32), (255, 0, 0, 0))
    images["la"] = Image.fromarray(rng.integers(0, 256, size=(40, 30, 2), dtype=np.uint8), "LA")
    base = Image.fromarray(rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8), "RGB")
    images["palette_P"] = base.quantize(16)
    images["palette_P_adaptive"] = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=5)
    gradient16 = (np.linspace(0, 65535, 96 * 64).reshape(64, 96)).astype(np.uint16)
    images["i16_gradient"] = Image.fromarray(gradient16)
    images["i16_noise"] = Image.fromarray(rng.integers(0, 65536, size=(50, 50), dtype=np.uint16))
    images["i16_low_values"] = Image.fromarray(rng.integers(0, 300, size=(50, 50), dtype=np.uint16))
    images["I_32bit"] = Image.fromarray(rng.integers(-1000, 100000, size=(40, 40), dtype=np.int32))
    images["F_float"] = Image.fromarray(rng.random((40, 40), dtype=np.float32) * 255)
    images["cmyk"] = base.convert("CMYK")
    images["cmyk_raw"] = Image.fromarray(rng.integers(0, 256, size=(30, 30, 4), dtype=np.uint8), "CMYK")
    images["bilevel_1"] = base.convert("1")
    images["ycbcr"] = base.convert("YCbCr")
    images["wide_strip"] = Image.fromarray(rng.integers(0, 256, size=(2, 500), dtype=np.uint8), "L")
    images["tall_strip"] = Image.fromarray(rng.integers(0, 256, size=(500, 3), dtype=np.uint8), "L")
    images["gradient_L"] = Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (20, 1)), "L")
    return images


SYNTHETIC = _synthetic()


def test_synthetic_modes_are_what_they_claim():
    assert SYNTHETIC["palette_P"].mode == "P"
    assert SYNTHETIC["i16_gradient"].mode == "I;16"
    assert SYNTHETIC["cmyk"].mode == "CMYK"
    assert SYNTHETIC["rgba"].mode == "RGBA"


@pytest.mark.parametrize("name", sorted(SYNTHETIC))
def test_phash_matches_imagehash_on_synthetic(name):
    _same(SYNTHETIC[name])


@pytest.mark.parametrize("name", ["palette_P", "rgba", "cmyk", "i16_gradient", "pixelart_0_x16"])
def test_phash_matches_after_file_round_trip(name, tmp_path):
    image = SYNTHETIC[name]
    fmt = {"cmyk": "JPEG"}.get(name, "TIFF" if image.mode.startswith("I") else "PNG")
    path = tmp_path / f"img.{fmt.lower()}"
    image.save(path, format=fmt)
    with Image.open(path) as im:
        im.load()
        _same(im)


def test_phash_pixels_is_32x32_grayscale():
    px = hashing.phash_pixels(SYNTHETIC["noise_rgb_0"])
    assert px.shape == (32, 32)
    assert px.dtype == np.uint8


def test_phash_from_pixels_bit_order():
    # First DCT coefficient (top-left) is the most significant bit, as in imagehash's hex.
    px = hashing.phash_pixels(SYNTHETIC["split_lr"])
    value = hashing.phash_from_pixels(px)
    assert 0 <= value < 2**64
    bits = imagehash.phash(SYNTHETIC["split_lr"]).hash.flatten()
    assert value == int("".join("1" if b else "0" for b in bits), 2)


def test_phash_all_black_image_is_zero():
    # Every DCT coefficient of an all-zero thumbnail is 0, so none exceeds the median.
    assert hashing.phash(Image.new("L", (32, 32), 0)) == 0
    assert str(imagehash.phash(Image.new("L", (32, 32), 0))) == "0" * 16


# --- dHash ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", BUNDLED, ids=[p.name for p in BUNDLED])
def test_dhash_matches_imagehash_on_bundled_photos(path):
    with Image.open(path) as im:
        im.load()
        _same_dhash(im)
        _same_dhash(im.convert("RGB"))
        _same_dhash(im.convert("L"))
        _same_dhash(im.transpose(Image.Transpose.ROTATE_90))
        _same_dhash(im.transpose(Image.Transpose.FLIP_LEFT_RIGHT))


@pytest.mark.parametrize("name", sorted(SYNTHETIC))
def test_dhash_matches_imagehash_on_synthetic(name):
    _same_dhash(SYNTHETIC[name])


@pytest.mark.parametrize("name", ["palette_P", "rgba", "cmyk", "i16_gradient", "pixelart_0_x16", "tiny_3x2"])
def test_dhash_matches_after_file_round_trip(name, tmp_path):
    image = SYNTHETIC[name]
    fmt = {"cmyk": "JPEG"}.get(name, "TIFF" if image.mode.startswith("I") else "PNG")
    path = tmp_path / f"img.{fmt.lower()}"
    image.save(path, format=fmt)
    with Image.open(path) as im:
        im.load()
        _same_dhash(im)


def test_dhash_differs_between_different_photos():
    values = set()
    for path in BUNDLED:
        with Image.open(path) as im:
            values.add(hashing.to_hex(hashing.dhash(im)))
    assert len(values) >= len(BUNDLED) - 2


def test_dhash_pixels_is_8_rows_of_9_grayscale():
    px = hashing.dhash_pixels(SYNTHETIC["noise_rgb_0"])
    assert px.shape == (8, 9)
    assert px.dtype == np.uint8


def test_dhash_from_pixels_bit_order():
    # Row 0's left-most comparison is the most significant bit, as in imagehash's hex.
    pixels = np.zeros((8, 9), dtype=np.uint8)
    pixels[0, 1] = 1  # only (row 0, column 1) is brighter than its left neighbour
    assert hashing.dhash_from_pixels(pixels) == 1 << 63
    pixels = np.zeros((8, 9), dtype=np.uint8)
    pixels[7, 8] = 1  # only the last comparison
    assert hashing.dhash_from_pixels(pixels) == 1
    for name in ("split_lr", "noise_rgb_1", "pixelart_2_x7"):
        value = hashing.dhash_from_pixels(hashing.dhash_pixels(SYNTHETIC[name]))
        assert 0 <= value < 2**64
        bits = imagehash.dhash(SYNTHETIC[name]).hash.flatten()
        assert value == int("".join("1" if b else "0" for b in bits), 2)


def test_dhash_of_known_images():
    # flat: no pixel is brighter than its neighbour; a left-to-right ramp: every one is
    for image in (Image.new("L", (32, 32), 0), Image.new("RGB", (50, 20), (90, 90, 90)), SYNTHETIC["tiny_1x1"]):
        assert hashing.dhash(image) == 0
        assert str(imagehash.dhash(image)) == "0" * 16
    assert hashing.to_hex(hashing.dhash(SYNTHETIC["gradient_L"])) == "f" * 16
    assert str(imagehash.dhash(SYNTHETIC["gradient_L"])) == "f" * 16
    # mirroring a ramp turns every comparison around
    mirrored = SYNTHETIC["gradient_L"].transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    assert hashing.dhash(mirrored) == 0


def test_dhash_and_phash_are_different_hashes():
    image = SYNTHETIC["noise_rgb_2"]
    assert hashing.dhash(image) != hashing.phash(image)


# --- sha256 -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 1000, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, 3 * (1 << 20) + 17])
def test_sha256_file_matches_hashlib(tmp_path, size):
    data = np.random.default_rng(size).integers(0, 256, size=size, dtype=np.uint8).tobytes()
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert hashing.sha256_file(path) == expected
    assert hashing.sha256_file(str(path)) == expected
    assert hashing.sha256_bytes(data) == expected


def test_sha256_of_real_image_file():
    path = BUNDLED[0]
    assert hashing.sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_sha256_file_missing(tmp_path):
    with pytest.raises(FileNotFoundError):
        hashing.sha256_file(tmp_path / "missing")


# --- hex --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [0, 1, 0xFF, 2**63 - 1, 2**63, 2**63 + 1, 0x8000000000000001, 0xDEADBEEFCAFEBABE, 2**64 - 1],
)
def test_to_hex_from_hex_round_trip(value):
    text = hashing.to_hex(value)
    assert len(text) == 16
    assert text == text.lower()
    assert int(text, 16) == value
    arr = hashing.from_hex([text])
    assert arr.dtype == np.uint64
    assert int(arr[0]) == value
    assert hashing.to_hex(int(arr[0])) == text


def test_to_hex_is_zero_padded():
    assert hashing.to_hex(0) == "0" * 16
    assert hashing.to_hex(0xABC) == "0000000000000abc"


def test_from_hex_many_random_values():
    rng = np.random.default_rng(7)
    values = [int(v) for v in rng.integers(0, 2**64, size=500, dtype=np.uint64)]
    values += [2**64 - 1, 2**63]
    arr = hashing.from_hex([hashing.to_hex(v) for v in values])
    assert arr.shape == (len(values),)
    assert [int(v) for v in arr] == values
    assert sum(v >= 2**63 for v in values) > 100  # top bit set on many of them


def test_from_hex_accepts_imagehash_strings_and_any_iterable():
    texts = [str(imagehash.phash(SYNTHETIC[n])) for n in ("noise_rgb_0", "noise_rgb_1")]
    arr = hashing.from_hex(iter(texts))
    assert [hashing.to_hex(int(v)) for v in arr] == texts


def test_from_hex_empty():
    arr = hashing.from_hex([])
    assert arr.dtype == np.uint64
    assert arr.shape == (0,)


# --- the hash input ------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "expected"), [((640, 480), (92, 69)), ((4000, 3000), (87, 66)), ((127, 300), (127, 300)),
                                                ((128, 128), (64, 64)), ((64, 40), (64, 40)), ((1, 1), (1, 1))])
def test_hash_input_reduces_by_a_whole_factor_keeping_the_short_side(size, expected):
    gray = Image.new("L", size, 100)
    small = hashing.hash_input(gray)
    assert small.size == expected
    assert min(small.size) >= min(hashing.HASH_SIDE, *size)
    factor = min(size) // hashing.HASH_SIDE
    if factor > 1:  # Pillow's box reduction, nothing else
        assert np.array_equal(np.asarray(small), np.asarray(gray.reduce(factor)))
    else:
        assert small is gray


@pytest.mark.parametrize("path", [p for p in BUNDLED if p.name in {"astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "camera.png"}],
                         ids=lambda p: p.name)
def test_hash_of_the_reduced_input_stays_within_a_few_bits_of_the_full_image(path):
    """The reduction keeps what pHash reads (the 8x8 lowest frequencies of a 32x32 thumbnail)."""
    with Image.open(path) as im:
        gray = im.convert("L")
    assert min(gray.size) >= 2 * hashing.HASH_SIDE  # reduced for real
    full, small = hashing.phash(gray), hashing.phash(hashing.hash_input(gray))
    assert bin(full ^ small).count("1") <= 4
    assert hashing.to_hex(small) == str(imagehash.phash(hashing.hash_input(gray)))


# --- box DCT: the view hashes -----------------------------------------------------------------


def _exact_box_lows(gray: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The same coefficients in int64 (object-free exact integers), one box at a time."""
    left, top, right, bottom = box
    ys = hashing.box_dct_matrix(bottom - top).astype(np.int64)
    xs = hashing.box_dct_matrix(right - left).astype(np.int64)
    return (ys @ gray[top:bottom, left:right].astype(np.int64) @ xs.T).ravel()


def _gray(name: str, size: tuple[int, int]) -> np.ndarray:
    with Image.open(next(p for p in BUNDLED if p.name == name)) as im:
        return np.asarray(im.convert("L").resize(size, Image.Resampling.LANCZOS))


def test_box_lows_are_the_exact_integer_products_of_every_box():
    gray = _gray("astronaut.png", (90, 70))
    boxes = ((0, 0, 90, 70), (4, 3, 86, 67), (9, 0, 90, 63), (0, 7, 81, 70), (30, 20, 61, 52), (10, 10, 42, 42))
    got = hashing.box_lows(gray, boxes)
    assert got.shape == (len(boxes), 64)
    for row, box in zip(got, boxes):
        assert np.array_equal(row.astype(np.int64), _exact_box_lows(gray, box))
        assert np.array_equal(row, np.rint(row))


def test_box_lows_stay_exact_on_the_largest_sums():
    """White everywhere on a very long line: the bound of BOX_DCT_BITS holds (no float rounding)."""
    white = np.full((64, 10_000), 255, dtype=np.uint8)
    boxes = ((0, 0, 10_000, 64), (500, 6, 9_500, 58))
    got = hashing.box_lows(white, boxes)
    assert np.abs(got).max() < 2.0**53
    for row, box in zip(got, boxes):
        assert np.array_equal(row.astype(np.int64), _exact_box_lows(white, box))


@pytest.mark.parametrize("n", [7, 31, 32, 33, 58, 64, 127])
def test_mirrored_box_lows_are_the_lows_of_the_mirrored_box(n):
    rng = np.random.default_rng(n)
    gray = rng.integers(0, 256, size=(n + 5, n + 9), dtype=np.uint8)
    box = (3, 2, 3 + n, 2 + n)
    flipped = gray[:, ::-1].copy()
    width = gray.shape[1]
    mirrored_box = (width - box[2], box[1], width - box[0], box[3])
    assert np.array_equal(hashing.mirror_lows(hashing.box_lows(gray, (box,))), hashing.box_lows(flipped, (mirrored_box,)))


def test_box_phash_is_close_to_the_phash_of_the_box_thumbnail():
    """The box pHash skips only the thumbnail's rounding to 8 bits (and its clipping)."""
    from trainset import kernels

    bits = []
    for name in ("astronaut.png", "chelsea.png", "coffee.png", "camera.png", "rocket.jpg"):
        gray = _gray(name, (96, 72))
        boxes = ((0, 0, 96, 72), (5, 4, 91, 68), (10, 0, 96, 65), (0, 7, 86, 72))
        ours = kernels.phash_from_lows(hashing.box_lows(gray, boxes))
        for value, (left, top, right, bottom) in zip(ours, boxes):
            theirs = int(str(imagehash.phash(Image.fromarray(gray[top:bottom, left:right]))), 16)
            bits.append(bin(int(value) ^ theirs).count("1"))
    assert max(bits) <= 6 and np.mean(bits) <= 1.0
