"""trainset.resample: the pixels of Pillow's Lanczos resize of 8-bit grayscale, exactly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from trainset import resample


def _pillow(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(a).resize(size, Image.Resampling.LANCZOS))


@st.composite
def _images(draw):
    height = draw(st.integers(1, 160))
    width = draw(st.integers(1, 160))
    seed = draw(st.integers(0, 2**32 - 1))
    kind = draw(st.sampled_from(["noise", "binary", "ramp", "flat"]))
    rng = np.random.default_rng(seed)
    if kind == "noise":
        a = rng.integers(0, 256, size=(height, width))
    elif kind == "binary":  # hard edges: Lanczos overshoots, the clip to 0..255 matters
        a = rng.integers(0, 2, size=(height, width)) * 255
    elif kind == "ramp":
        a = np.clip(np.cumsum(rng.integers(-4, 5, size=(height, width)), axis=1) + 128, 0, 255)
    else:
        a = np.full((height, width), int(rng.integers(0, 256)))
    return a.astype(np.uint8)


@settings(max_examples=300, deadline=None)
@given(_images(), st.integers(1, 180), st.integers(1, 180))
def test_any_size_equals_pillow(a, out_w, out_h):
    assert np.array_equal(resample.lanczos(a, (out_w, out_h)), _pillow(a, (out_w, out_h)))


@settings(max_examples=200, deadline=None)
@given(_images())
def test_hash_thumbnails_equal_pillow(a):
    for size in [(32, 32), (9, 8)]:
        out = resample.lanczos(a, size)
        assert out.dtype == np.uint8 and out.shape == (size[1], size[0])
        assert np.array_equal(out, _pillow(a, size))


def test_both_orders_of_the_passes_occur():
    """Pillow runs the horizontal pass first for some shapes and the vertical one for others;
    each shape's order is learned, and both are needed."""
    rng = np.random.default_rng(3)
    orders = set()
    for shape, size in [((102, 77), (61, 33)), ((28, 36), (11, 95)), ((96, 9), (53, 28)), ((64, 64), (32, 32)), ((70, 64), (9, 8))]:
        a = rng.integers(0, 256, size=shape, dtype=np.uint8)
        assert np.array_equal(resample.lanczos(a, size), _pillow(a, size))
        orders.add(resample._order(shape, size))
    assert orders == {"hv", "vh"}


def test_same_size_is_a_copy_and_views_are_accepted():
    a = np.arange(64 * 48, dtype=np.uint32).reshape(48, 64).astype(np.uint8)
    same = resample.lanczos(a, (64, 48))
    assert np.array_equal(same, a) and same is not a
    view = a[5:40:, 3:60]  # a crop: not contiguous
    assert np.array_equal(resample.lanczos(view, (32, 32)), _pillow(np.ascontiguousarray(view), (32, 32)))


def test_a_shape_no_order_reproduces_is_left_to_pillow(monkeypatch):
    """If a Pillow version computed differently, its own resize is used for that shape."""
    resample._order.cache_clear()
    monkeypatch.setattr(resample, "_passes", lambda a, size, vertical_first: np.zeros((size[1], size[0]), np.uint8))
    a = np.random.default_rng(1).integers(0, 256, size=(50, 40), dtype=np.uint8)
    try:
        assert resample._order(a.shape, (32, 32)) == "pillow"
        assert np.array_equal(resample.lanczos(a, (32, 32)), _pillow(a, (32, 32)))
    finally:
        resample._order.cache_clear()


@pytest.mark.parametrize(("n_in", "n_out"), [(64, 32), (100, 9), (7, 32), (32, 32)])
def test_coefficients_rows_sum_to_one_in_fixed_point(n_in, n_out):
    bounds, weights = resample.coefficients(n_in, n_out)
    assert bounds.shape == (n_out, 2) and weights.dtype == np.int32
    assert (bounds[:, 0] >= 0).all() and (bounds.sum(axis=1) <= n_in).all()
    sums = weights.astype(np.int64).sum(axis=1)
    assert np.all(np.abs(sums - (1 << 22)) <= weights.shape[1])  # each weight rounded on its own


# --- box reduce ----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(_images(), st.integers(1, 40))
def test_reduce_equals_pillow(a, factor):
    """Every factor, with partial blocks at the right and bottom edges and blocks larger than the image."""
    want = np.asarray(Image.fromarray(a).reduce(factor))
    got = resample.reduce(a, factor)
    assert got.dtype == np.uint8 and got.shape == want.shape
    assert np.array_equal(got, want)


def test_reduce_computes_its_own_pixels_where_pillow_agrees():
    """The compiled path is what runs (not Pillow's own reduce behind it)."""
    a = np.random.default_rng(3).integers(0, 256, size=(256, 203), dtype=np.uint8)
    assert resample._reduce_matches_pillow(a.shape, 4)
    direct = resample._reduce(a, 4, resample._reduce_multipliers(4))
    assert np.array_equal(direct, np.asarray(Image.fromarray(a).reduce(4)))
    white = np.full((64, 64), 255, dtype=np.uint8)  # the largest sums: no overflow in the fixed point
    assert (resample._reduce(white, 8, resample._reduce_multipliers(8)) == 255).all()


def test_a_reduce_pillow_does_differently_is_left_to_pillow(monkeypatch):
    resample._probe_reduce.cache_clear()
    monkeypatch.setattr(resample, "_reduce", lambda a, factor, multipliers: np.zeros((1, 1), np.uint8))
    a = np.random.default_rng(2).integers(0, 256, size=(30, 50), dtype=np.uint8)
    try:
        assert not resample._reduce_matches_pillow(a.shape, 3)
        assert np.array_equal(resample.reduce(a, 3), np.asarray(Image.fromarray(a).reduce(3)))
    finally:
        resample._probe_reduce.cache_clear()


@pytest.mark.parametrize("shape, size", [((8, 4), (1, 1)), ((17, 5), (1, 1)), ((20, 5), (1, 2)), ((39, 10), (1, 2)), ((35, 2), (1, 2))])
def test_outputs_a_pixel_or_two_across_equal_pillow_on_many_images(shape, size):
    rng = np.random.default_rng(0)
    for _ in range(50):
        a = rng.integers(0, 256, size=shape, dtype=np.uint8)
        assert np.array_equal(resample.lanczos(a, size), _pillow(a, size))
