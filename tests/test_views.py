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


# --- transparency and border-dominated pictures ----------------------------------------------


def _sprite(name: str, side: int = 30) -> Image.Image:
    """A small RGBA picture with a transparent surround (visible pixels: an ellipse)."""
    im = _photo(name, (side, side)).convert("RGBA")
    yy, xx = np.mgrid[:side, :side]
    mask = ((xx - side / 2 + 0.5) ** 2 + (yy - side / 2 + 0.5) ** 2) <= (side / 2) ** 2
    alpha = np.where(mask, 255, 0).astype(np.uint8)
    im.putalpha(Image.fromarray(alpha))
    return Image.fromarray(np.where(mask[..., None], np.asarray(im), 0).astype(np.uint8), "RGBA")


def _on_canvas(sprite: Image.Image, size=(68, 56), at=(20, 14)) -> Image.Image:
    canvas = Image.new("RGBA", size, (0, 0, 0, 0))
    canvas.paste(sprite, at)
    return canvas


def _extract_views(tmp_path, im: Image.Image, name: str) -> dict:
    path = tmp_path / f"{name}.png"
    im.save(path)
    out = features.extract(str(path))
    return {**dict(zip(views.VIEW_NAMES, out["phash_views"])), "_out": out}


def test_alpha_box_is_the_box_of_visible_pixels():
    alpha = np.zeros((20, 30), dtype=np.uint8)
    assert views.alpha_box(alpha) is None  # nothing visible
    assert views.alpha_box(np.full((20, 30), 255, np.uint8)) is None  # nothing transparent
    alpha[4:9, 7:12] = 1
    alpha[15, 20] = 200
    assert views.alpha_box(alpha) == (7, 4, 21, 16)


def test_a_sprite_on_a_transparent_canvas_is_known_by_its_visible_box(tmp_path):
    import imagehash

    sprite = _sprite("astronaut")
    got = _extract_views(tmp_path, _on_canvas(sprite), "a")
    out = got["_out"]
    assert out["border_fraction"] >= views.BORDER_DOMINANT
    # every view is the trimmed picture, the mirrors its mirror; the stored pHash stays imagehash's
    assert {got[v] for v in views.SEARCH_VIEWS} == {got["trim"]}
    assert got["plain_mirror"] == got["trim_mirror"] != got["trim"]
    with Image.open(tmp_path / "a.png") as im:
        assert out["phash"] == str(imagehash.phash(im.convert("L")))
    assert out["phash"] != got["trim"]
    # the trimmed view is the box of the visible pixels, exactly
    gray = np.asarray(_on_canvas(sprite).convert("L"))
    box = (20, 14, 50, 44)
    want = hashing.box_lows(gray, (box,))
    from trainset import kernels
    assert got["trim"] == hashing.to_hex(int(kernels.phash_from_lows(want)[0]))


def test_different_sprites_on_one_canvas_do_not_match_and_a_moved_copy_does(tmp_path):
    one = _extract_views(tmp_path, _on_canvas(_sprite("astronaut")), "one")
    other = _extract_views(tmp_path, _on_canvas(_sprite("coffee")), "other")
    moved = _extract_views(tmp_path, _on_canvas(_sprite("astronaut"), size=(90, 70), at=(3, 30)), "moved")
    assert _bits(one["_out"]["phash"], other["_out"]["phash"]) < _bits(one["trim"], other["trim"])
    assert _query_to_search(one, other) > 10
    assert _query_to_search(one, moved) <= 2


def test_a_small_picture_on_a_large_opaque_canvas_uses_its_trimmed_view(tmp_path):
    im = _photo("chelsea", (40, 30))
    canvas = Image.new("RGB", (120, 90), (255, 255, 255))
    canvas.paste(im, (50, 40))
    got = _extract_views(tmp_path, canvas, "c")
    assert got["_out"]["border_fraction"] >= views.BORDER_DOMINANT
    assert {got[v] for v in views.SEARCH_VIEWS} == {got["trim"]}
    alone = _extract_views(tmp_path, im, "alone")
    assert _bits(alone["plain"], got["trim"]) <= 4
