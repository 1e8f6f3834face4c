"""Hash views: trimmed borders, centre and mirrored views catch the copies a plain pHash misses."""

import numpy as np
import pytest
from PIL import Image, ImageOps
from skimage import data

from trainset import features, hashing, views


def _photo(name: str = "astronaut", size=(320, 240)) -> Image.Image:
    arr = getattr(data, name)()
    im = Image.fromarray(arr)
    return im.convert("RGB").resize(size, Image.Resampling.LANCZOS)


def _bits(a: str, b: str) -> int:
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def _views(im: Image.Image) -> dict[str, str]:
    small = hashing.hash_input(features.gray8(im))
    plain = hashing.phash_pixels(small)
    return dict(zip(views.VIEW_NAMES, views.hash_views(small, plain)))


def test_plain_view_is_imagehash_phash_of_the_hash_input():
    import imagehash

    im = _photo()
    assert _views(im)["plain"] == str(imagehash.phash(hashing.hash_input(features.gray8(im))))


def test_border_box_finds_a_uniform_pad():
    im = _photo()
    padded = ImageOps.expand(im, border=(30, 12, 18, 40), fill=(200, 30, 90))
    box = views.border_box(np.asarray(features.gray8(padded)))
    assert box == (30, 12, 30 + im.width, 12 + im.height)


def test_border_box_trims_nested_borders():
    im = _photo()
    inner = ImageOps.expand(im, border=10, fill=(255, 255, 255))
    outer = ImageOps.expand(inner, border=25, fill=(0, 0, 0))
    assert views.border_box(np.asarray(features.gray8(outer))) == (35, 35, 35 + im.width, 35 + im.height)


def test_border_box_leaves_images_without_border_and_flat_images_whole():
    im = _photo()
    assert views.border_box(np.asarray(features.gray8(im))) == (0, 0, im.width, im.height)
    flat = np.full((50, 80), 128, dtype=np.uint8)
    assert views.border_box(flat) == (0, 0, 80, 50)
    # a small dot on a flat canvas: trimming would keep under TRIM_MIN_KEEP, so nothing is trimmed
    dot = flat.copy()
    dot[20:23, 30:33] = 0
    assert views.border_box(dot) == (0, 0, 80, 50)


def test_padded_copy_matches_through_the_trimmed_view():
    im = _photo("chelsea")
    padded = ImageOps.expand(im, border=40, fill=(20, 160, 60))
    orig, copy = _views(im), _views(padded)
    assert _bits(orig["plain"], copy["plain"]) > 10  # the plain pHash misses it
    assert _bits(orig["trim"], copy["trim"]) <= 2
    assert orig["trim"] == orig["plain"]  # nothing to trim on the original


def _query_to_search(one: dict, other: dict) -> int:
    """The distance trainset.neardup uses: a query view of either against a search view of the other."""
    return min(_bits(a[q], b[s]) for a, b in ((one, other), (other, one)) for q in views.QUERY_VIEWS for s in views.SEARCH_VIEWS)


@pytest.mark.parametrize(("name", "box"), [
    ("coffee", (16, 12, 384, 288)),  # 4 % off each side, centred
    ("coffee", (40, 0, 400, 300)),  # 10 % off the left only
    ("astronaut", (0, 30, 360, 300)),  # 10 % off the top and the right
    ("chelsea", (0, 0, 352, 264)),  # 12 % off the right and the bottom
])
def test_cropped_copy_sits_in_a_search_view_of_its_original(name, box):
    im = _photo(name, (400, 300))
    orig, copy = _views(im), _views(im.crop(box))
    plain = _bits(orig["plain"], copy["plain"])
    best = _query_to_search(orig, copy)
    assert best < plain
    assert best <= 6


def test_mirrored_copy_matches_through_the_mirror_view():
    im = _photo("astronaut")
    mirrored = ImageOps.mirror(im)
    orig, copy = _views(im), _views(mirrored)
    assert _bits(orig["plain"], copy["plain"]) > 16
    assert _bits(orig["plain"], copy["plain_mirror"]) <= 2
    assert _bits(orig["trim"], copy["trim_mirror"]) <= 2


def test_extract_stores_every_view(tmp_path):
    path = tmp_path / "a.png"
    _photo().save(path)
    out = features.extract(str(path))
    assert len(out["phash_views"]) == len(views.VIEW_NAMES)
    assert out["phash_views"][0] == out["phash"]
    broken = tmp_path / "b.png"
    broken.write_bytes(b"not an image")
    assert features.extract(str(broken))["phash_views"] == []


@pytest.mark.parametrize("shape", [(1, 1), (2, 7), (7, 2)])
def test_tiny_images_do_not_break_the_views(shape):
    arr = np.random.default_rng(0).integers(0, 255, size=shape, dtype=np.uint8)
    im = Image.fromarray(arr)
    assert len(_views(im)) == len(views.VIEW_NAMES)


def test_view_names_and_boxes():
    assert views.VIEW_NAMES[: len(views.SEARCH_VIEWS)] == views.SEARCH_VIEWS
    assert views.SEARCH_VIEWS[:2] == views.QUERY_VIEWS == ("plain", "trim")
    assert views.VIEW_NAMES[len(views.SEARCH_VIEWS):] == ("plain_mirror", "trim_mirror")
    assert len(set(views.VIEW_NAMES)) == len(views.VIEW_NAMES) == 2 + 2 * len(views.BOXES) + 2
    assert views.sub_box((10, 20, 110, 220), views.BOXES["c90"]) == (15, 30, 105, 210)
    assert views.sub_box((0, 0, 1, 1), views.BOXES["c80"]) == (0, 0, 1, 1)  # an empty box keeps the whole


def test_an_image_without_border_reuses_its_thumbnails():
    """trim == whole, so every trim_* view is the view of the same box."""
    out = _views(_photo("coffee"))
    assert out["trim"] == out["plain"]
    assert all(out[f"trim_{name}"] == out[name] for name in views.BOXES)
