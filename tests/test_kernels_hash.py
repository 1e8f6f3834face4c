"""trainset.kernels: bit packing and batched pHash / dHash, equal to imagehash on every path.

A 32x32 (or 9x8) grayscale image is hashed by imagehash exactly as given (Pillow's resize to the
same size is a copy), so thumbnails built here compare directly with ``imagehash.phash``.
"""

from __future__ import annotations

import imagehash
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from trainset import hashing, kernels
from trainset.kernels import HOST

MATRIX_ERROR_BOUND = 1.1e-8  # the matrix DCT's error bound derived next to PHASH_TIE_TOLERANCE


def _imagehash_phash(thumb: np.ndarray) -> int:
    return int(str(imagehash.phash(Image.fromarray(thumb, "L"))), 16)


def _imagehash_dhash(thumb: np.ndarray) -> int:
    return int(str(imagehash.dhash(Image.fromarray(thumb, "L"))), 16)


def _thumb(kind: str, rng: np.random.Generator, size=(32, 32)) -> np.ndarray:
    h, w = size
    if kind == "random":
        return rng.integers(0, 256, size=size, dtype=np.uint8)
    if kind == "flat":
        return np.full(size, rng.integers(0, 256), dtype=np.uint8)
    if kind == "split":  # two flat halves, either way round, at any column or row
        out = np.full(size, rng.integers(0, 256), dtype=np.uint8)
        cut = int(rng.integers(1, w))
        out[:, cut:] = rng.integers(0, 256)
        return out.T.copy() if h == w and rng.integers(2) else out
    if kind == "checker":
        cell = int(rng.choice([1, 2, 4, 8, 16]))
        ii, jj = np.indices(size)
        a, b = rng.integers(0, 256, size=2)
        return np.where((ii // cell + jj // cell) % 2 == 0, a, b).astype(np.uint8)
    if kind == "pixelart":  # few colours, big square pixels
        cell = int(rng.choice([2, 4, 8]))
        palette = rng.integers(0, 256, size=int(rng.integers(2, 5)))
        art = palette[rng.integers(0, len(palette), size=(-(-h // cell), -(-w // cell)))]
        return np.kron(art, np.ones((cell, cell), dtype=np.int64))[:h, :w].astype(np.uint8)
    if kind == "gradient":
        ramp = np.linspace(rng.integers(0, 256), rng.integers(0, 256), w)
        return np.tile(ramp, (h, 1)).round().astype(np.uint8)
    raise AssertionError(kind)


KINDS = ["random", "flat", "split", "checker", "pixelart", "gradient"]


def _hand_cases() -> np.ndarray:
    rng = np.random.default_rng(0)
    cases = [np.zeros((32, 32), np.uint8), np.full((32, 32), 255, np.uint8), np.full((32, 32), 128, np.uint8)]
    half = np.zeros((32, 32), np.uint8)
    half[:, 16:] = 255
    cases += [half, half.T.copy(), 255 - half]
    cases += [_thumb(kind, rng) for kind in KINDS for _ in range(8)]
    return np.stack(cases)


HAND = _hand_cases()


# --- pack_bits --------------------------------------------------------------------------------


def test_pack_bits_first_bit_is_most_significant():
    bits = np.zeros((4, 64), dtype=bool)
    bits[0, 0] = True
    bits[1, 63] = True
    bits[2] = True
    got = kernels.pack_bits(bits, np)
    assert got.dtype == np.uint64
    assert [int(v) for v in got] == [1 << 63, 1, 2**64 - 1, 0]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.booleans(), min_size=64, max_size=64), max_size=6))
def test_pack_bits_matches_string_of_bits(rows):
    bits = np.array(rows, dtype=bool).reshape(len(rows), 64)
    got = kernels.pack_bits(bits, np)
    assert got.shape == (len(rows),)
    assert [int(v) for v in got] == [int("".join("1" if b else "0" for b in row), 2) for row in rows]


# --- pHash ------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["scipy", "matrix"])
def test_phash_batch_equals_imagehash_on_hand_cases(method):
    got = kernels.phash_batch(HAND, be=HOST, method=method)
    assert got.dtype == np.uint64 and got.shape == (len(HAND),)
    assert [int(v) for v in got] == [_imagehash_phash(t) for t in HAND]


@settings(max_examples=60, deadline=None)
@given(kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=12), seed=st.integers(0, 2**32 - 1))
def test_phash_batch_paths_agree_with_imagehash(kinds, seed):
    rng = np.random.default_rng(seed)
    thumbs = np.stack([_thumb(kind, rng) for kind in kinds])
    want = [_imagehash_phash(t) for t in thumbs]
    assert [int(v) for v in kernels.phash_batch(thumbs, be=HOST, method="scipy")] == want
    assert [int(v) for v in kernels.phash_batch(thumbs, be=HOST, method="matrix")] == want


def test_batched_scipy_dct_is_bit_identical_to_the_per_image_call():
    import scipy.fftpack

    thumbs = np.concatenate([HAND, np.random.default_rng(1).integers(0, 256, size=(50, 32, 32), dtype=np.uint8)])
    got = kernels._dct_low_scipy(thumbs)
    want = np.stack([scipy.fftpack.dct(scipy.fftpack.dct(t, axis=0), axis=1)[:8, :8].ravel() for t in thumbs])
    assert np.array_equal(got, want)  # exact, not approximate


def test_matrix_dct_stays_within_the_stated_error_bound():
    rng = np.random.default_rng(2)
    thumbs = np.concatenate([HAND, rng.integers(0, 256, size=(500, 32, 32), dtype=np.uint8),
                             rng.choice(np.array([0, 255], np.uint8), size=(100, 32, 32))])
    diff = np.abs(kernels._dct_low_matrix(thumbs, np) - kernels._dct_low_scipy(thumbs))
    assert diff.max() < MATRIX_ERROR_BOUND
    # a bit can differ only within 2 x (matrix error + scipy error) of the median; the tolerance is wider
    assert kernels.PHASH_TIE_TOLERANCE >= 20 * 2 * (MATRIX_ERROR_BOUND + MATRIX_ERROR_BOUND)


def test_matrix_path_without_tie_fallback_differs_on_ties(monkeypatch):
    """Why the fallback exists: on a flat or split thumbnail most coefficients are exactly zero, the
    median is zero too, and each arithmetic's rounding noise decides the bits."""
    ties = HAND[[2, 3]]  # flat 128, half split
    want = kernels.phash_batch(ties, be=HOST, method="scipy")
    assert [int(v) for v in want] == [_imagehash_phash(t) for t in ties]
    monkeypatch.setattr(kernels, "PHASH_TIE_TOLERANCE", -1.0)  # no row counts as a tie
    raw = kernels.phash_batch(ties, be=HOST, method="matrix")
    assert all(bin(int(a) ^ int(b)).count("1") >= 10 for a, b in zip(raw, want))


def test_tie_fallback_only_redoes_near_tie_rows(monkeypatch):
    calls = []
    scipy_path = kernels._phash_scipy
    monkeypatch.setattr(kernels, "_phash_scipy", lambda t: calls.append(len(t)) or scipy_path(t))
    photos = np.random.default_rng(3).integers(0, 256, size=(40, 32, 32), dtype=np.uint8)
    kernels.phash_batch(photos, be=HOST, method="matrix")
    assert calls == []  # random thumbnails: no near tie
    batch = np.concatenate([photos, HAND[[2, 3]]])
    got = kernels.phash_batch(batch, be=HOST, method="matrix")
    assert calls == [2]
    assert [int(v) for v in got] == [_imagehash_phash(t) for t in batch]


def test_phash_batch_empty_and_bad_input():
    assert kernels.phash_batch(np.zeros((0, 32, 32), np.uint8), be=HOST).shape == (0,)
    assert kernels.phash_batch(np.zeros((0, 32, 32), np.uint8), be=HOST, method="matrix").shape == (0,)
    with pytest.raises(ValueError, match=r"\(B, 32, 32\)"):
        kernels.phash_batch(np.zeros((32, 32), np.uint8), be=HOST)
    with pytest.raises(ValueError, match="unknown pHash method"):
        kernels.phash_batch(HAND, be=HOST, method="fft")


def test_phash_from_pixels_is_a_batch_of_one():
    for thumb in HAND:
        value = hashing.phash_from_pixels(thumb)
        assert type(value) is int
        assert value == int(kernels.phash_batch(thumb[None], be=HOST)[0]) == _imagehash_phash(thumb)


# --- dHash ------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=12), seed=st.integers(0, 2**32 - 1))
def test_dhash_batch_equals_imagehash(kinds, seed):
    rng = np.random.default_rng(seed)
    thumbs = np.stack([_thumb(kind, rng, size=(8, 9)) for kind in kinds])
    got = kernels.dhash_batch(thumbs, be=HOST)
    assert got.dtype == np.uint64
    assert [int(v) for v in got] == [_imagehash_dhash(t) for t in thumbs]
    assert [hashing.dhash_from_pixels(t) for t in thumbs] == [int(v) for v in got]


def test_default_matrix_path_in_chunks_equals_scipy(monkeypatch):
    """The default (matrix DCT, ties redone by scipy) gives scipy's bits, also across chunk edges."""
    rng = np.random.default_rng(11)
    smooth = np.clip(np.cumsum(rng.integers(-8, 9, size=(37, 32, 32)), axis=2) + 128, 0, 255).astype(np.uint8)
    flat = np.zeros((5, 32, 32), np.uint8)  # exact ties at the median
    split = np.zeros((5, 32, 32), np.uint8)
    split[:, :, 16:] = 255
    batch = np.concatenate([smooth[:20], flat, smooth[20:], split])
    monkeypatch.setattr(kernels, "PHASH_CHUNK", 8)
    want = kernels.phash_batch(batch, be=HOST, method="scipy")
    assert np.array_equal(kernels.phash_batch(batch, be=HOST), want)
    assert [int(v) for v in want] == [_imagehash_phash(t) for t in batch]
