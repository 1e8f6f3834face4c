"""trainset.features: decode each file once, classify failures, cache per content."""

from __future__ import annotations

import hashlib
import io
import json
import math
import struct
import warnings
import zlib
from pathlib import Path

import imagehash
import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageOps

import stage_helpers as H
from trainset import features, hashing, views
from trainset.features import FeatureCache, FeatureStats, compute, extract, feature_key

SAMPLES = Path(skimage.data.__file__).parent
MEASURES = {"n_frames", "animated", "has_alpha", "alpha_min", "bit_depth", "luma_mean", "luma_std", "entropy", "laplacian_var", "border_fraction"}
FIELDS = {"sha256", "decoded", "reason", "detail", "format", "mode", "width", "height", "exif_orientation", "phash", "dhash", "phash_views", *MEASURES}


def _photo(name: str = "chelsea.png", size: tuple[int, int] | None = None) -> Image.Image:
    with Image.open(SAMPLES / name) as im:
        im = im.convert("RGB")
    return im.resize(size) if size else im


def _encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _hash_input(path) -> Image.Image:
    return H.hash_input(path)


def _garbled_png(image: Image.Image) -> bytes:
    """A PNG whose IDAT payload is random bytes (chunk framing and CRC valid): opens, fails to decode."""
    png = _encode(image, "PNG")
    at = png.index(b"IDAT") - 4
    (length,) = struct.unpack(">I", png[at:at + 4])
    garbage = np.random.default_rng(5).bytes(length)
    crc = struct.pack(">I", zlib.crc32(b"IDAT" + garbage) & 0xFFFFFFFF)
    return png[: at + 8] + garbage + crc + png[at + 12 + length:]


# --- extract: failures ------------------------------------------------------------------


def _assert_failed(result: dict, reason: str, size: tuple[int, int] = (0, 0)) -> None:
    assert set(result) == FIELDS
    assert result["decoded"] is False
    assert result["reason"] == reason
    assert isinstance(result["detail"], str) and result["detail"]
    assert result["mode"] is None and result["phash"] is None and result["dhash"] is None
    assert result["phash_views"] == []
    assert (result["width"], result["height"]) == size
    assert result["exif_orientation"] == 1
    # the measures' defaults: one frame, no alpha, unknown depth, no pixel statistics
    assert (result["n_frames"], result["animated"], result["has_alpha"], result["alpha_min"], result["bit_depth"]) == (1, False, False, 255, 0)
    assert all(result[k] is None for k in ("luma_mean", "luma_std", "entropy", "laplacian_var", "border_fraction"))
    assert json.loads(json.dumps(result)) == result  # cacheable as JSON (no NaN in the cache)


def test_zero_byte(tmp_path):
    result = extract(str(_write(tmp_path / "empty.png", b"")))
    _assert_failed(result, "zero_byte")
    assert result["format"] is None
    assert "0 bytes" in result["detail"]


def test_text_named_png_is_not_image(tmp_path):
    result = extract(str(_write(tmp_path / "notes.png", b"these are notes, not pixels\n" * 20)))
    _assert_failed(result, "not_image")
    assert "not a recognised image" in result["detail"]


def test_random_bytes_are_not_image(tmp_path):
    result = extract(str(_write(tmp_path / "noise.jpg", np.random.default_rng(0).bytes(4096))))
    _assert_failed(result, "not_image")


def test_jpeg_cut_in_half_is_truncated(tmp_path):
    data = _encode(_photo(), "JPEG", quality=90)
    result = extract(str(_write(tmp_path / "cut.jpg", data[: len(data) // 2])))
    _assert_failed(result, "truncated")
    assert result["format"] == "JPEG"
    assert "JPEG decode failed" in result["detail"]
    assert "truncated" in result["detail"]


def test_png_cut_in_half_is_truncated(tmp_path):
    data = _encode(_photo(), "PNG")
    result = extract(str(_write(tmp_path / "cut.png", data[: len(data) // 2])))
    _assert_failed(result, "truncated")
    assert result["format"] == "PNG"


def test_png_with_garbage_after_the_header_is_corrupt(tmp_path):
    path = _write(tmp_path / "garbled.png", _garbled_png(_photo(size=(120, 90))))
    with Image.open(path) as im:  # the header still reads
        assert im.size == (120, 90)
    result = extract(str(path))
    _assert_failed(result, "corrupt")
    assert result["format"] == "PNG"
    assert "PNG decode failed" in result["detail"]


def test_missing_file_fails_loudly_naming_it(tmp_path):
    # a vanished file means the ingest manifest is stale: an error, not a "corrupt" rejection
    with pytest.raises(features.MissingFile, match="gone.png"):
        extract(str(tmp_path / "gone.png"))


def test_pixel_limit_refuses_over_and_decodes_at_the_limit(tmp_path):
    path = _write(tmp_path / "big.png", _encode(Image.new("L", (200, 200)), "PNG"))
    result = extract(str(path), max_pixels=39_999)  # 40 000 px
    _assert_failed(result, "decompression_bomb", size=(200, 200))
    assert result["format"] == "PNG"
    assert "200x200" in result["detail"] and "39,999" in result["detail"] and "audit.max_pixels" in result["detail"]
    assert extract(str(path), max_pixels=40_000)["decoded"] is True  # "exceeds" means strictly more
    assert extract(str(path), max_pixels=None)["decoded"] is True


def _bomb_png(width: int, height: int) -> bytes:
    """A valid 1-bit grayscale PNG of ``width x height`` zeros: a few KB on disk, far more pixels."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)

    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row * 1000) for _ in range(height // 1000)) + z.compress(row * (height % 1000)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_decompression_bomb_refused_from_the_header_without_decoding(tmp_path, monkeypatch):
    path = _write(tmp_path / "bomb.png", _bomb_png(20_000, 20_000))
    assert path.stat().st_size < 200_000  # 400 million pixels in a small file
    with pytest.raises(Image.DecompressionBombError):  # Pillow alone refuses even the open: no size
        Image.open(path)
    loads = []

    def no_decode(self, *args, **kw):
        loads.append(self)
        raise AssertionError("pixels decoded despite the pixel limit")

    monkeypatch.setattr(Image.Image, "load", no_decode)
    from PIL import ImageFile
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning either
        result = extract(str(path))  # the default limit, Pillow's 89 478 485 px
    assert loads == []
    _assert_failed(result, "decompression_bomb", size=(20_000, 20_000))
    assert result["format"] == "PNG"
    assert "20000x20000" in result["detail"] and "89,478,485" in result["detail"]
    assert Image.MAX_IMAGE_PIXELS == features.DEFAULT_MAX_PIXELS  # Pillow's setting is left as it was


def test_pillow_never_warns_or_refuses_under_our_limit(tmp_path, monkeypatch):
    path = _write(tmp_path / "ok.png", _encode(_photo(size=(200, 200)), "PNG"))  # 40 000 px > 2 * 100
    # a Pillow limit far below ours (as if the default were lower than audit.max_pixels)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = extract(str(path), max_pixels=50_000)
    assert result["decoded"] is True and (result["width"], result["height"]) == (200, 200)
    assert Image.MAX_IMAGE_PIXELS == 100  # restored after the call


# --- extract: successes -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "suffix", "mode"),
    [("PNG", "png", "RGB"), ("JPEG", "jpg", "RGB"), ("WEBP", "webp", "RGB"), ("BMP", "bmp", "RGB"),
     ("TIFF", "tif", "RGB"), ("GIF", "gif", "P")],
)
def test_decodes_formats(tmp_path, fmt, suffix, mode):
    image = _photo(size=(70, 50))
    if mode == "P":
        image = image.convert("P")
    path = _write(tmp_path / f"a.{suffix}", _encode(image, fmt))
    result = extract(str(path))
    assert set(result) == FIELDS
    assert result["decoded"] is True
    assert result["reason"] is None and result["detail"] is None
    assert result["format"] == fmt
    assert result["mode"] == mode
    assert (result["width"], result["height"]) == (70, 50)
    assert result["exif_orientation"] == 1
    with Image.open(path) as im:
        assert result["phash"] == str(imagehash.phash(_hash_input(path)))
        assert result["dhash"] == str(imagehash.dhash(_hash_input(path)))
    _assert_views(result)


def _assert_views(result: dict) -> None:
    """One hex pHash per view in VIEW_NAMES order, the plain one being the item's pHash and each
    mirror the left-right flip of its upright view's thumbnail."""
    hashes = result["phash_views"]
    assert isinstance(hashes, list) and len(hashes) == len(views.VIEW_NAMES) == 28
    assert all(isinstance(h, str) and len(h) == 16 and int(h, 16) >= 0 for h in hashes)
    assert hashes[views.VIEW_NAMES.index("plain")] == result["phash"]
    assert hashes[views.VIEW_NAMES.index("plain_mirror")] != result["phash"]


@pytest.mark.parametrize("name", ["astronaut.png", "camera.png", "horse.png", "logo.png", "rocket.jpg", "coffee.png"])
def test_bundled_photos_decode_and_match_imagehash(name):
    path = SAMPLES / name
    result = extract(str(path))
    with Image.open(path) as im:
        assert result["decoded"] is True
        assert result["mode"] == im.mode
        assert (result["width"], result["height"]) == im.size
        assert result["phash"] == str(imagehash.phash(_hash_input(path)))
        assert result["dhash"] == str(imagehash.dhash(_hash_input(path)))


@pytest.mark.parametrize("mode", ["RGBA", "L", "LA", "I;16", "1"])
def test_modes_are_reported(tmp_path, mode):
    image = _photo(size=(40, 30))
    if mode == "I;16":
        image = Image.fromarray((np.asarray(image.convert("L"), dtype=np.uint16) * 257))
    else:
        image = image.convert(mode)
    path = _write(tmp_path / "m.png", _encode(image, "PNG"))
    result = extract(str(path))
    assert result["decoded"] is True
    assert result["mode"] == mode
    with Image.open(path) as im:
        assert result["phash"] == str(imagehash.phash(_hash_input(path)))
        assert result["dhash"] == str(imagehash.dhash(_hash_input(path)))


def _jpeg_with_orientation(path: Path, orientation: int, size=(96, 64)) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _write(path, _encode(_photo(size=size), "JPEG", quality=92, exif=exif))


def test_exif_orientation_6_swaps_sides_and_hashes_upright(tmp_path):
    path = _jpeg_with_orientation(tmp_path / "rot.jpg", 6)
    result = extract(str(path))
    assert result["decoded"] is True
    assert result["exif_orientation"] == 6
    assert (result["width"], result["height"]) == (64, 96)
    with Image.open(path) as im:
        assert im.size == (96, 64)
        upright = ImageOps.exif_transpose(im)
        assert result["phash"] == str(imagehash.phash(_hash_input(path)))
        assert result["dhash"] == str(imagehash.dhash(_hash_input(path)))
        # and it is not simply the hash of the stored (sideways) pixels
        assert result["phash"] != str(imagehash.phash(im))
        assert result["dhash"] != str(imagehash.dhash(im))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation(tmp_path, orientation):
    path = _jpeg_with_orientation(tmp_path / f"o{orientation}.jpg", orientation)
    result = extract(str(path))
    assert result["exif_orientation"] == orientation
    expected = (64, 96) if orientation >= 5 else (96, 64)
    assert (result["width"], result["height"]) == expected
    with Image.open(path) as im:
        assert result["phash"] == str(imagehash.phash(_hash_input(path)))
        assert result["dhash"] == str(imagehash.dhash(_hash_input(path)))


@pytest.mark.parametrize("orientation", [0, 9, 42])
def test_out_of_range_orientation_reads_as_1(tmp_path, orientation):
    path = _jpeg_with_orientation(tmp_path / "bad.jpg", orientation)
    result = extract(str(path))
    assert result["decoded"] is True
    assert result["exif_orientation"] == 1
    assert (result["width"], result["height"]) == (96, 64)
    with Image.open(path) as im:
        assert result["phash"] == str(imagehash.phash(_hash_input(path)))
        assert result["dhash"] == str(imagehash.dhash(_hash_input(path)))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_dhash_is_of_the_exif_upright_image(tmp_path, orientation):
    path = _jpeg_with_orientation(tmp_path / f"d{orientation}.jpg", orientation, size=(120, 80))
    result = extract(str(path))
    assert result["decoded"] is True
    assert len(result["dhash"]) == 16 and int(result["dhash"], 16) >= 0
    with Image.open(path) as im:
        upright = ImageOps.exif_transpose(im)
        assert result["dhash"] == str(imagehash.dhash(_hash_input(path)))
        assert result["dhash"] == hashing.to_hex(hashing.dhash(_hash_input(path)))
        if orientation != 1:  # a turned or mirrored photo has another dHash
            assert result["dhash"] != str(imagehash.dhash(im))


def test_dhash_and_phash_come_from_one_decode_of_the_same_image(tmp_path, monkeypatch):
    path = _jpeg_with_orientation(tmp_path / "one.jpg", 6)
    opened, seen = [], {}
    real_open, real_pixels, real_dhash = Image.open, hashing.phash_thumb, hashing.dhash_thumb
    monkeypatch.setattr(Image, "open", lambda *a, **kw: opened.append(a) or real_open(*a, **kw))

    def spy(name, real):
        def wrapped(im):
            seen.setdefault(name, im)  # the first call: the plain pHash (views crop afterwards)
            return real(im)
        return wrapped

    # the plain pHash's thumbnail comes from hashing.phash_thumb (its views are hashed beside it)
    monkeypatch.setattr(hashing, "phash_thumb", spy("phash", real_pixels))
    monkeypatch.setattr(hashing, "dhash_thumb", spy("dhash", real_dhash))
    result = extract(str(path))
    assert len(opened) == 1
    assert seen["phash"] is seen["dhash"]  # one grayscale array, the hash input
    assert seen["dhash"].shape[::-1] == (result["width"], result["height"]) == (64, 96)
    assert np.array_equal(seen["dhash"], np.asarray(H.hash_input(path)))
    assert result["phash_views"][0] == result["phash"]


@pytest.mark.parametrize("name", ["rocket.jpg", "chelsea.png", "coins.png", "logo.png"])
def test_dhash_matches_imagehash_on_photos(name):
    path = SAMPLES / name
    result = extract(str(path))
    with Image.open(path) as im:
        assert result["dhash"] == str(imagehash.dhash(_hash_input(path)))
    assert result["dhash"] != result["phash"]


def test_dhash_none_for_every_failed_decode(tmp_path):
    big = _write(tmp_path / "big.png", _encode(_photo(size=(60, 50)), "PNG"))
    cases = {
        "zero_byte": extract(str(_write(tmp_path / "empty.png", b""))),
        "not_image": extract(str(_write(tmp_path / "text.png", b"hello, not an image"))),
        "corrupt": extract(str(_write(tmp_path / "garbled.png", _garbled_png(_photo(size=(60, 50)))))),
        "decompression_bomb": extract(str(big), max_pixels=100),
    }
    for reason, result in cases.items():
        assert result["decoded"] is False
        assert result["reason"] == reason
        assert result["dhash"] is None and result["phash"] is None
    assert extract(str(big))["dhash"] is not None


def test_extract_result_is_json_round_trippable(tmp_path):
    path = _jpeg_with_orientation(tmp_path / "a.jpg", 3)
    result = extract(str(path))
    assert json.loads(json.dumps(result)) == result


# --- feature_key and cache --------------------------------------------------------------


def test_feature_key_depends_on_params(tmp_path):
    a = feature_key({"hash": "phash"})
    assert a == feature_key({"hash": "phash"})
    assert len(a) == 16 and int(a, 16) >= 0
    b = feature_key({"hash": "dhash"})
    assert a != b
    assert feature_key(None) == feature_key({})
    assert feature_key({"x": 1, "y": 2}) == feature_key({"y": 2, "x": 1})
    assert FeatureCache(tmp_path, a).dir != FeatureCache(tmp_path, b).dir
    assert FeatureCache(tmp_path, a).dir == tmp_path / a


def test_different_key_does_not_see_other_cache(tmp_path):
    path = _write(tmp_path / "img" / "a.png", _encode(_photo(size=(40, 40)), "PNG"))
    items = [(_sha(path), str(path))]
    cache_a = FeatureCache(tmp_path / "cache", feature_key({"v": 1}))
    _, stats = compute(items, cache_a)
    assert stats.decoded == 1
    cache_b = FeatureCache(tmp_path / "cache", feature_key({"v": 2}))
    _, stats = compute(items, cache_b)
    assert stats.decoded == 1 and stats.cache_hits == 0
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted([cache_a.dir.name, cache_b.dir.name])


def test_cache_get_put(tmp_path):
    cache = FeatureCache(tmp_path, "k")
    sha = "ab" + "0" * 62
    assert cache.get(sha) is None
    cache.put(sha, {"decoded": True, "phash": "0" * 16})
    assert (tmp_path / "k" / "ab" / f"{sha}.json").is_file()
    assert cache.get(sha) == {"decoded": True, "phash": "0" * 16}
    (tmp_path / "k" / "ab" / f"{sha}.json").write_text("{truncated")
    assert cache.get(sha) is None  # a damaged entry is a miss, not a crash


# --- compute ----------------------------------------------------------------------------


@pytest.fixture
def corpus(tmp_path):
    """Real files: 4 distinct images, 2 exact copies, 1 broken file."""
    folder = tmp_path / "files"
    paths = []
    for k, name in enumerate(["astronaut.png", "camera.png", "coffee.png", "rocket.jpg"]):
        paths.append(_write(folder / f"{k}.png", _encode(_photo(name, size=(64, 48)), "PNG")))
    copy1 = _write(folder / "copy_of_0.png", paths[0].read_bytes())
    copy2 = _write(folder / "sub" / "again_0.png", paths[0].read_bytes())
    broken = _write(folder / "broken.png", b"not an image")
    all_paths = [*paths, copy1, copy2, broken]
    return [(_sha(p), str(p)) for p in all_paths]


def test_compute_decodes_each_content_once(tmp_path, corpus, monkeypatch):
    calls = []
    real_decode, real = features.decode, features.extract

    def counting(path, *args, **kw):
        calls.append(path)
        return real_decode(path, *args, **kw)

    monkeypatch.setattr(features, "decode", counting)
    cache = FeatureCache(tmp_path / "cache", feature_key())
    result, stats = compute(corpus, cache)
    distinct = {sha for sha, _ in corpus}
    assert len(distinct) == 5
    assert stats == FeatureStats(items=7, contents=5, decoded=5, cache_hits=0)
    assert len(calls) == 5
    assert len(set(calls)) == 5
    # the first path seen for a content is the one decoded
    first = {}
    for sha, path in corpus:
        first.setdefault(sha, path)
    assert sorted(calls) == sorted(first.values())
    assert set(result) == distinct
    calls.clear()
    for sha, path in first.items():
        assert result[sha] == real(path)


def test_second_compute_hits_the_cache(tmp_path, corpus, monkeypatch):
    cache_root = tmp_path / "cache"
    key = feature_key({"near_dup": {"hash": "phash"}})
    first, stats1 = compute(corpus, FeatureCache(cache_root, key))
    assert stats1.decoded == 5

    def must_not_decode(path, **kw):
        raise AssertionError(f"decoded {path} despite the cache")

    monkeypatch.setattr(features, "extract", must_not_decode)
    second, stats2 = compute(corpus, FeatureCache(cache_root, key))  # a fresh object, same folder
    assert stats2.decoded == 0
    assert stats2.cache_hits == stats2.contents == 5
    assert stats2.items == 7
    assert second == first


def test_failures_are_cached_too(tmp_path, corpus):
    cache = FeatureCache(tmp_path / "cache", feature_key())
    result, _ = compute(corpus, cache)
    broken_sha = next(sha for sha, p in corpus if p.endswith("broken.png"))
    assert result[broken_sha]["reason"] == "not_image"
    assert cache.get(broken_sha) == result[broken_sha]


def test_adding_one_file_decodes_only_that_file(tmp_path, corpus):
    cache = FeatureCache(tmp_path / "cache", feature_key())
    compute(corpus, cache)
    extra = _write(tmp_path / "files" / "new.png", _encode(_photo("moon.png", size=(50, 50)), "PNG"))
    _, stats = compute([*corpus, (_sha(extra), str(extra))], cache)
    assert stats.decoded == 1
    assert stats.cache_hits == 5
    assert stats.contents == 6


def test_compute_results_match_extract_and_imagehash(tmp_path, corpus):
    result, _ = compute(corpus, FeatureCache(tmp_path / "cache", feature_key()))
    for sha, path in corpus:
        if path.endswith("broken.png"):
            continue
        with Image.open(path) as im:
            assert result[sha]["phash"] == str(imagehash.phash(_hash_input(path)))
            assert result[sha]["dhash"] == str(imagehash.dhash(_hash_input(path)))
            assert result[sha]["phash"] == hashing.to_hex(hashing.phash(_hash_input(path)))
            assert result[sha]["dhash"] == hashing.to_hex(hashing.dhash(_hash_input(path)))


def test_compute_empty(tmp_path):
    result, stats = compute([], FeatureCache(tmp_path / "cache", "k"))
    assert result == {}
    assert stats == FeatureStats()
    assert not (tmp_path / "cache").exists()


def test_compute_with_process_pool_matches_serial(tmp_path):
    folder = tmp_path / "many"
    names = ["astronaut.png", "camera.png", "coffee.png", "rocket.jpg", "moon.png", "coins.png"]
    items = []
    for k in range(12):
        im = _photo(names[k % len(names)], size=(40 + k, 30 + k))
        p = _write(folder / f"{k}.png", _encode(im, "PNG"))
        items.append((_sha(p), str(p)))
    serial, s1 = compute(items, FeatureCache(tmp_path / "serial", "k"), threads=1)
    pooled, s2 = compute(items, FeatureCache(tmp_path / "pooled", "k"), threads=2)
    assert pooled == serial
    assert s1 == s2 == FeatureStats(items=12, contents=12, decoded=12, cache_hits=0)


# --- measures: frames, alpha, bit depth, brightness, entropy, blur ----------------------


def _frames(*values: int, size=(64, 48)) -> list[Image.Image]:
    return [Image.new("RGB", size, (v, v, v)) for v in values]


@pytest.mark.parametrize(("fmt", "suffix"), [("GIF", "gif"), ("PNG", "png"), ("WEBP", "webp")])
def test_animated_formats_count_frames_and_measure_the_first(tmp_path, fmt, suffix):
    first, *rest = _frames(0, 255, 128)
    path = _write(tmp_path / f"anim.{suffix}", _encode(first, fmt, save_all=True, append_images=rest, duration=100, loop=0))
    result = extract(str(path))
    assert result["decoded"] is True
    assert (result["n_frames"], result["animated"]) == (3, True)
    assert result["luma_mean"] == pytest.approx(0, abs=1)  # the first (black) frame, not a later one
    with Image.open(path) as im:
        assert result["phash"] == str(imagehash.phash(_hash_input(path)))
        assert result["dhash"] == str(imagehash.dhash(_hash_input(path)))


@pytest.mark.parametrize(("fmt", "suffix"), [("GIF", "gif"), ("PNG", "png"), ("WEBP", "webp"), ("JPEG", "jpg")])
def test_still_images_have_one_frame(tmp_path, fmt, suffix):
    result = extract(str(_write(tmp_path / f"still.{suffix}", _encode(_photo(size=(64, 48)), fmt))))
    assert (result["n_frames"], result["animated"]) == (1, False)


def test_multi_picture_jpeg_is_not_animated(tmp_path):
    photo = _photo(size=(64, 48))
    path = _write(tmp_path / "camera.jpg", _encode(photo, "MPO", save_all=True, append_images=[photo.resize((32, 24))]))
    result = extract(str(path))
    assert (result["format"], result["n_frames"], result["animated"]) == ("MPO", 2, False)


def _alpha_case(kind: str) -> tuple[Image.Image, dict]:
    photo = _photo(size=(64, 48))
    if kind == "rgba_used":
        im = photo.convert("RGBA")
        im.putalpha(Image.linear_gradient("L").resize(im.size))  # 0 at the top
        return im, {}
    if kind == "rgba_opaque":
        return photo.convert("RGBA"), {}
    if kind == "la_used":
        im = photo.convert("LA")
        im.putalpha(Image.new("L", im.size, 128))
        return im, {}
    if kind == "la_opaque":
        return photo.convert("LA"), {}
    if kind in ("p_used", "p_unused"):
        im = photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        used = set(np.unique(np.asarray(im)).tolist())
        index = min(used) if kind == "p_used" else min(set(range(256)) - used)
        return im, {"transparency": index}
    if kind in ("l_key_used", "l_key_unused"):
        im = photo.convert("L")
        return im, {"transparency": int(np.asarray(im)[0, 0]) if kind == "l_key_used" else _absent_level(im)}
    if kind == "rgb":
        return photo, {}
    raise AssertionError(kind)


def _absent_level(im: Image.Image) -> int:
    present = set(np.unique(np.asarray(im)).tolist())
    return min(set(range(256)) - present)


@pytest.mark.parametrize(
    ("kind", "has_alpha", "used"),
    [("rgba_used", True, True), ("rgba_opaque", True, False), ("la_used", True, True), ("la_opaque", True, False),
     ("p_used", True, True), ("p_unused", True, False), ("l_key_used", True, True), ("l_key_unused", True, False),
     ("rgb", False, False)],
)
def test_alpha_presence_and_use(tmp_path, kind, has_alpha, used):
    image, kw = _alpha_case(kind)
    path = _write(tmp_path / f"{kind}.png", _encode(image, "PNG", **kw))
    result = extract(str(path))
    assert result["has_alpha"] is has_alpha
    assert (result["alpha_min"] < 255) is used
    with Image.open(path) as im:
        expected = np.asarray(im.convert("RGBA"))[..., 3].min() if has_alpha else 255
    assert result["alpha_min"] == expected
    if kind == "la_used":
        assert result["alpha_min"] == 128


@pytest.mark.parametrize(
    ("mode", "fmt", "depth"),
    [("1", "PNG", 1), ("L", "PNG", 8), ("P", "PNG", 8), ("RGB", "PNG", 8), ("RGBA", "PNG", 8), ("LA", "PNG", 8),
     ("CMYK", "JPEG", 8), ("I;16", "PNG", 16), ("I", "TIFF", 32), ("F", "TIFF", 32)],
)
def test_bit_depth(tmp_path, mode, fmt, depth):
    gray = np.asarray(_photo(size=(40, 30)).convert("L"))
    if mode == "I;16":
        image = Image.fromarray(gray.astype(np.uint16) * 257)
    elif mode == "I":
        image = Image.fromarray(gray.astype(np.int32) * 257)
    elif mode == "F":
        image = Image.fromarray(gray.astype(np.float32) / 255)
    else:
        image = _photo(size=(40, 30)).convert(mode)
    path = _write(tmp_path / f"d.{fmt.lower()}", _encode(image, fmt))
    result = extract(str(path))
    assert result["decoded"] is True and result["mode"] == mode
    assert result["bit_depth"] == depth
    # high bit depths are scaled to 8 bits for the statistics, never clipped to white
    assert result["luma_mean"] == pytest.approx(gray.mean(), abs=1.5)


def test_flat_image_statistics(tmp_path):
    result = extract(str(_write(tmp_path / "flat.png", _encode(Image.new("L", (300, 200), 128), "PNG"))))
    assert result["luma_mean"] == 128.0
    assert result["luma_std"] == 0.0
    assert result["entropy"] == 0.0
    assert result["laplacian_var"] == 0.0


def test_half_black_half_white_statistics(tmp_path):
    a = np.zeros((100, 200), dtype=np.uint8)
    a[:, 100:] = 255
    result = extract(str(_write(tmp_path / "half.png", _encode(Image.fromarray(a), "PNG"))))
    assert result["luma_mean"] == pytest.approx(127.5)
    assert result["luma_std"] == pytest.approx(127.5)
    assert result["entropy"] == pytest.approx(1.0)
    assert result["laplacian_var"] > 0


def test_statistics_match_an_independent_computation(tmp_path):
    import scipy.ndimage

    path = _write(tmp_path / "coffee.jpg", _encode(_photo("coffee.png", size=(600, 400)), "JPEG", quality=92))
    result = extract(str(path))
    with Image.open(path) as im:
        im.draft("L", (im.width, im.height))  # what the audit decodes: the JPEG's own luma, full scale here
        gray = im.convert("L")
        assert gray.size == (600, 400)
    values = np.asarray(gray, dtype=np.float64)
    assert result["luma_mean"] == pytest.approx(values.mean())
    assert result["luma_std"] == pytest.approx(values.std())
    p = np.bincount(np.asarray(gray).ravel(), minlength=256) / values.size
    assert result["entropy"] == pytest.approx(-sum(x * math.log2(x) for x in p if x > 0))
    small = np.asarray(gray.convert("F").resize((256, 171), Image.Resampling.LANCZOS), dtype=np.float64)
    assert result["laplacian_var"] == pytest.approx(scipy.ndimage.laplace(small, mode="mirror").var())


def test_laplacian_var_is_resolution_independent(tmp_path):
    big = _photo("astronaut.png", size=(1024, 1024))
    small = big.resize((512, 512), Image.Resampling.LANCZOS)
    a = extract(str(_write(tmp_path / "big.png", _encode(big, "PNG"))))["laplacian_var"]
    b = extract(str(_write(tmp_path / "small.png", _encode(small, "PNG"))))["laplacian_var"]
    assert a == pytest.approx(b, rel=0.05)
    # while the raw Laplacian of the full-size image is very different
    gray = np.asarray(big.convert("L"), dtype=np.float64)
    raw = (gray[:-2, 1:-1] + gray[2:, 1:-1] + gray[1:-1, :-2] + gray[1:-1, 2:] - 4 * gray[1:-1, 1:-1]).var()
    assert not raw == pytest.approx(a, rel=0.5)


def test_blur_lowers_laplacian_var(tmp_path):
    from PIL import ImageFilter

    sharp = _photo("camera.png", size=(512, 512))
    soft = sharp.filter(ImageFilter.GaussianBlur(3))
    a = extract(str(_write(tmp_path / "sharp.png", _encode(sharp, "PNG"))))
    b = extract(str(_write(tmp_path / "soft.png", _encode(soft, "PNG"))))
    assert b["laplacian_var"] < a["laplacian_var"] / 20
    assert b["luma_mean"] == pytest.approx(a["luma_mean"], abs=1)  # blur does not change brightness


def test_every_jpeg_decodes_to_gray_at_the_dct_scale_that_keeps_the_measure_size(tmp_path, monkeypatch):
    from PIL import JpegImagePlugin

    big = _write(tmp_path / "big.jpg", _encode(_photo(size=(1600, 1200)), "JPEG", quality=90))
    asked = []
    real_draft = JpegImagePlugin.JpegImageFile.draft
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", lambda im, mode, size: asked.append((mode, size)) or real_draft(im, mode, size))
    result = extract(str(big))
    side = features.ANALYSIS_SIDE
    assert asked == [("L", (side, side))]
    assert result["decoded"] is True and (result["width"], result["height"]) == (1600, 1200)  # the header's size
    assert result["mode"] == "RGB"  # as stored, not as decoded
    with Image.open(big) as im:
        im.draft("L", (side, side))
        assert (im.mode, im.size) == ("L", (400, 300))  # 1/4 scale: both sides stay >= 256
        assert result["phash"] == str(imagehash.phash(_hash_input(big)))  # the same arithmetic on the same decode
    with Image.open(big) as im:
        full = features.measure(im.convert("RGB"))
    # measured at 256 px either way; the DCT-scaled decode is a little softer than a Lanczos one
    assert result["laplacian_var"] == pytest.approx(full["laplacian_var"], rel=0.2)
    assert result["luma_mean"] == pytest.approx(full["luma_mean"], abs=0.5)
    # every JPEG, whatever its size, goes the same way; other formats decode fully
    asked.clear()
    extract(str(_write(tmp_path / "small.jpg", _encode(_photo(size=(300, 200)), "JPEG", quality=90))))
    assert asked == [("L", (side, side))]
    asked.clear()
    extract(str(_write(tmp_path / "big.png", _encode(_photo(size=(1600, 1200)), "PNG"))))
    assert asked == []


def test_success_has_every_measure_typed(tmp_path):
    result = extract(str(_write(tmp_path / "a.jpg", _encode(_photo(size=(96, 64)), "JPEG"))))
    assert set(result) == FIELDS
    _assert_views(result)
    assert isinstance(result["n_frames"], int) and isinstance(result["alpha_min"], int) and isinstance(result["bit_depth"], int)
    assert isinstance(result["animated"], bool) and isinstance(result["has_alpha"], bool)
    for key in ("luma_mean", "luma_std", "entropy", "laplacian_var"):
        assert isinstance(result[key], float) and math.isfinite(result[key])
    assert 0 <= result["entropy"] <= 8 and 0 <= result["luma_mean"] <= 255


def test_feature_key_includes_the_pixel_limit():
    assert feature_key({}) == feature_key({"max_pixels": features.DEFAULT_MAX_PIXELS})
    assert feature_key({"max_pixels": 1000}) != feature_key({"max_pixels": 2000})
    assert feature_key({"max_pixels": 1000}) != feature_key({})


def test_compute_applies_the_pixel_limit(tmp_path):
    path = _write(tmp_path / "a.png", _encode(_photo(size=(100, 100)), "PNG"))
    items = [(_sha(path), str(path))]
    limited, _ = compute(items, FeatureCache(tmp_path / "c", feature_key({"max_pixels": 5000})), max_pixels=5000)
    assert limited[items[0][0]]["reason"] == "decompression_bomb"
    free, _ = compute(items, FeatureCache(tmp_path / "c", feature_key({"max_pixels": 20000})), max_pixels=20000)
    assert free[items[0][0]]["decoded"] is True


@pytest.mark.parametrize("threads", [1, 2])
def test_compute_caches_batch_by_batch_so_a_stopped_run_keeps_its_work(tmp_path, monkeypatch, threads):
    """A file that vanishes mid-run stops compute, but every batch hashed before it is cached."""
    monkeypatch.setattr(features, "BATCH", 4)
    items = []
    for k in range(14):
        p = _write(tmp_path / "files" / f"{k:02d}.png", _encode(_photo("coffee.png", size=(40 + k, 30)), "PNG"))
        items.append((_sha(p), str(p)))
    gone = Path(items[10][1]).read_bytes()
    Path(items[10][1]).unlink()  # listed, then gone
    cache = FeatureCache(tmp_path / "cache", feature_key())
    with pytest.raises(features.MissingFile):
        compute(items, cache, threads=threads)
    cached = [sha for sha, _ in items if cache.get(sha) is not None]
    assert cached == [sha for sha, _ in items[:8]]  # two whole batches of four
    _write(Path(items[10][1]), gone)  # back: the rerun decodes only the rest
    _, stats = compute(items, cache, threads=threads)
    assert stats.cache_hits == 8 and stats.decoded == 6


# --- one read: SHA-256 of the bytes decoded ------------------------------------------------


def test_sha256_is_of_the_bytes_decoded_for_every_outcome(tmp_path):
    good = _write(tmp_path / "a.jpg", _encode(_photo("coffee.png", size=(80, 60)), "JPEG"))
    empty = _write(tmp_path / "e.png", b"")
    broken = _write(tmp_path / "b.png", b"not an image")
    for path in (good, empty, broken):
        assert extract(str(path))["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert extract(str(good))["decoded"] is True


def test_a_file_larger_than_the_read_limit_is_hashed_from_disk_alike(tmp_path, monkeypatch):
    path = _write(tmp_path / "a.png", _encode(_photo("camera.png", size=(70, 50)), "PNG"))
    whole = extract(str(path))
    monkeypatch.setattr(features, "READ_WHOLE_LIMIT", 10)
    assert extract(str(path)) == whole


def test_a_file_changed_since_ingest_fails_naming_it_and_caches_nothing(tmp_path):
    path = _write(tmp_path / "a.png", _encode(_photo("camera.png", size=(70, 50)), "PNG"))
    stale = _sha(path)
    _write(path, _encode(_photo("coffee.png", size=(70, 50)), "PNG"))  # edited after ingest
    cache = FeatureCache(tmp_path / "cache", feature_key())
    with pytest.raises(features.ContentChanged, match=r"a\.png: changed since it was ingested"):
        compute([(stale, str(path))], cache)
    assert cache.get(stale) is None


def test_jpeg_orientation_is_read_from_exif_or_xmp_and_skipped_without_either(tmp_path):
    im = _photo("astronaut.png", size=(60, 40))
    exif = Image.Exif()
    exif[0x0112] = 6
    with_exif = _write(tmp_path / "exif.jpg", _encode(im, "JPEG", exif=exif))
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">' \
          b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="8"/></rdf:RDF></x:xmpmeta>'
    with_xmp = _write(tmp_path / "xmp.jpg", _encode(im, "JPEG", xmp=xmp))
    plain = _write(tmp_path / "plain.jpg", _encode(im, "JPEG"))
    assert extract(str(with_exif))["exif_orientation"] == 6
    assert extract(str(with_xmp))["exif_orientation"] == 8
    out = extract(str(plain))
    assert out["exif_orientation"] == 1 and (out["width"], out["height"]) == (60, 40)


@pytest.mark.parametrize("shape", [(2, 2), (3, 9), (256, 256), (256, 171), (40, 512), (7, 700)])
def test_one_pass_histogram_and_laplacian_are_exact(shape):
    """The fused pass (int32 rows where they fit) equals a plain histogram and the int64 Laplacian
    sums, on noise and on a 0/255 checkerboard (the largest Laplacian values)."""
    rng = np.random.default_rng(sum(shape))
    noise = rng.integers(0, 256, size=shape, dtype=np.uint8)
    board = ((np.indices(shape).sum(axis=0) % 2) * 255).astype(np.uint8)
    for a in (noise, board):
        counts, total, squares = features._histogram_and_laplacian_sums(a)
        assert np.array_equal(counts, np.bincount(a.ravel(), minlength=256))
        assert (total, squares) == tuple(features._laplacian_sums(a, np.int64(0)))
