"""trainset.features: decode each file once, classify failures, cache per content."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import zlib
from pathlib import Path

import imagehash
import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageOps

from trainset import features, hashing
from trainset.features import FeatureCache, FeatureStats, compute, extract, feature_key

SAMPLES = Path(skimage.data.__file__).parent
FIELDS = {"decoded", "reason", "detail", "format", "mode", "width", "height", "exif_orientation", "phash"}


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


def _garbled_png(image: Image.Image) -> bytes:
    """A PNG whose IDAT payload is random bytes (chunk framing and CRC valid): opens, fails to decode."""
    png = _encode(image, "PNG")
    at = png.index(b"IDAT") - 4
    (length,) = struct.unpack(">I", png[at:at + 4])
    garbage = np.random.default_rng(5).bytes(length)
    crc = struct.pack(">I", zlib.crc32(b"IDAT" + garbage) & 0xFFFFFFFF)
    return png[: at + 8] + garbage + crc + png[at + 12 + length:]


# --- extract: failures ------------------------------------------------------------------


def _assert_failed(result: dict, reason: str) -> None:
    assert set(result) == FIELDS
    assert result["decoded"] is False
    assert result["reason"] == reason
    assert isinstance(result["detail"], str) and result["detail"]
    assert result["mode"] is None and result["phash"] is None
    assert result["width"] == 0 and result["height"] == 0
    assert result["exif_orientation"] == 1
    json.dumps(result)  # cacheable as JSON


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


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    path = _write(tmp_path / "big.png", _encode(Image.new("L", (200, 200)), "PNG"))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 40 000 px > 2 * limit -> error
    result = extract(str(path))
    _assert_failed(result, "corrupt")
    assert "refused" in result["detail"]


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
        assert result["phash"] == str(imagehash.phash(im))


@pytest.mark.parametrize("name", ["astronaut.png", "camera.png", "horse.png", "logo.png", "rocket.jpg", "coffee.png"])
def test_bundled_photos_decode_and_match_imagehash(name):
    path = SAMPLES / name
    result = extract(str(path))
    with Image.open(path) as im:
        assert result["decoded"] is True
        assert result["mode"] == im.mode
        assert (result["width"], result["height"]) == im.size
        assert result["phash"] == str(imagehash.phash(im))


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
        assert result["phash"] == str(imagehash.phash(im))


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
        assert result["phash"] == str(imagehash.phash(upright))
        # and it is not simply the hash of the stored (sideways) pixels
        assert result["phash"] != str(imagehash.phash(im))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation(tmp_path, orientation):
    path = _jpeg_with_orientation(tmp_path / f"o{orientation}.jpg", orientation)
    result = extract(str(path))
    assert result["exif_orientation"] == orientation
    expected = (64, 96) if orientation >= 5 else (96, 64)
    assert (result["width"], result["height"]) == expected
    with Image.open(path) as im:
        assert result["phash"] == str(imagehash.phash(ImageOps.exif_transpose(im)))


@pytest.mark.parametrize("orientation", [0, 9, 42])
def test_out_of_range_orientation_reads_as_1(tmp_path, orientation):
    path = _jpeg_with_orientation(tmp_path / "bad.jpg", orientation)
    result = extract(str(path))
    assert result["decoded"] is True
    assert result["exif_orientation"] == 1
    assert (result["width"], result["height"]) == (96, 64)
    with Image.open(path) as im:
        assert result["phash"] == str(imagehash.phash(im))


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
    real = features.extract

    def counting(path):
        calls.append(path)
        return real(path)

    monkeypatch.setattr(features, "extract", counting)
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
    for sha, path in first.items():
        assert result[sha] == real(path)


def test_second_compute_hits_the_cache(tmp_path, corpus, monkeypatch):
    cache_root = tmp_path / "cache"
    key = feature_key({"near_dup": {"hash": "phash"}})
    first, stats1 = compute(corpus, FeatureCache(cache_root, key))
    assert stats1.decoded == 5

    def must_not_decode(path):
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
            assert result[sha]["phash"] == str(imagehash.phash(im))
            assert result[sha]["phash"] == hashing.to_hex(hashing.phash(im))


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
