"""trainset.kernels: multi-index-hashing pair search (mih_pairs) and the near_pairs dispatcher.

The reference everywhere is the blockwise brute force ``hamming_pairs`` (itself checked against a
pure-Python loop in test_kernels.py), or, for the large case, an independent blockwise brute force
built on ``np.bitwise_count``.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainset import kernels
from trainset.kernels import Backend

NUMPY = Backend(np, "numpy", "test")
ALL_ONES = 2**64 - 1
U64 = st.integers(0, ALL_ONES)


@pytest.fixture(autouse=True)
def _numpy_backend(monkeypatch):
    monkeypatch.setenv("TRAINSET_BACKEND", "numpy")
    kernels.backend.cache_clear()
    yield
    kernels.backend.cache_clear()


def _brute(hashes, t):
    return kernels.hamming_pairs(np.asarray(hashes, dtype=np.uint64), t, block=64, be=NUMPY)


def _assert_same(got, want):
    for g, w in zip(got, want):
        assert isinstance(g, np.ndarray) and g.dtype == np.int64
        assert g.shape == w.shape
    assert [a.tolist() for a in got] == [a.tolist() for a in want]


def _planted(rng: np.random.Generator, n: int, n_planted: int, max_flip: int) -> np.ndarray:
    """Random hashes, then ``n_planted`` of them overwritten by a copy of another with k bits flipped."""
    h = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    if n < 2:
        return h
    for _ in range(n_planted):
        src, dst = rng.integers(0, n, size=2)
        k = int(rng.integers(0, max_flip + 1))
        flip = 0
        for bit in rng.choice(64, size=k, replace=False):
            flip |= 1 << int(bit)
        h[dst] = h[src] ^ np.uint64(flip)
    return h


# --- chunk layout -----------------------------------------------------------------------------


@pytest.mark.parametrize("t", range(64))
def test_chunks_cover_64_bits_disjointly_and_evenly(t):
    chunks = kernels.mih_chunks(t)
    assert len(chunks) == t + 1
    covered = 0
    for offset, width in chunks:
        mask = ((1 << width) - 1) << offset
        assert covered & mask == 0
        covered |= mask
    assert covered == ALL_ONES
    widths = [w for _, w in chunks]
    assert max(widths) - min(widths) <= 1 and sum(widths) == 64


@pytest.mark.parametrize("t", [-1, 64, 100])
def test_chunks_reject_out_of_range(t):
    with pytest.raises(ValueError, match="0 <= max_distance <= 63"):
        kernels.mih_chunks(t)


# --- property tests: MIH == brute force ---------------------------------------------------------


@st.composite
def planted_sets(draw):
    low, high = draw(st.sampled_from([(0, 3), (4, 300), (300, 3000), (2000, 3000)]))
    n = draw(st.integers(low, high))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    t = draw(st.sampled_from(range(13)))
    h = _planted(rng, n, n_planted=draw(st.integers(0, max(0, n // 2))), max_flip=draw(st.integers(0, t + 3)))
    if n:
        # exact duplicates and the extremes, at random positions
        for value in draw(st.lists(st.sampled_from([0, ALL_ONES, None]), max_size=6)):
            pos = int(rng.integers(0, n))
            h[pos] = h[int(rng.integers(0, n))] if value is None else np.uint64(value)
    return h, t


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=planted_sets())
def test_mih_equals_brute_force_on_planted_sets(case):
    hashes, t = case
    got = kernels.mih_pairs(hashes, t)
    _assert_same(got, _brute(hashes, t))


@settings(max_examples=150, deadline=None)
@given(
    values=st.lists(st.one_of(st.sampled_from([0, ALL_ONES, 1, 2**63]), U64), max_size=40),
    t=st.integers(0, 12),
    flips=st.lists(st.tuples(st.integers(0, 39), st.integers(0, 39), st.integers(0, ALL_ONES)), max_size=20),
)
def test_mih_equals_brute_force_on_small_explicit_sets(values, t, flips):
    """Shrinkable small cases: explicit values, with near copies whose flip mask is kept to <= t + 2 bits."""
    for src, dst, mask in flips:
        if src < len(values) and dst < len(values):
            bits = [b for b in range(64) if mask >> b & 1][: t + 2]
            values[dst] = values[src] ^ sum(1 << b for b in bits)
    hashes = np.array(values, dtype=np.uint64)
    _assert_same(kernels.mih_pairs(hashes, t), _brute(hashes, t))


@pytest.mark.parametrize("t", [0, 1, 4, 8, 12])
def test_mih_all_identical_and_extremes(t):
    hashes = np.array([0] * 30 + [ALL_ONES] * 30 + [1, 3, 2**63, ALL_ONES - 1], dtype=np.uint64)
    np.random.default_rng(t).shuffle(hashes)
    got = kernels.mih_pairs(hashes, t)
    want = _brute(hashes, t)
    _assert_same(got, want)
    assert len(want[0]) >= 2 * (30 * 29 // 2)


@pytest.mark.parametrize("n", [0, 1, 2])
@pytest.mark.parametrize("t", [0, 3, 12])
def test_mih_tiny_inputs(n, t):
    for values in ([], [0], [ALL_ONES], [0, 0], [0, ALL_ONES], [5, 7]):
        if len(values) == n:
            hashes = np.array(values, dtype=np.uint64)
            _assert_same(kernels.mih_pairs(hashes, t), _brute(hashes, t))


def test_mih_shapes_of_empty_results_are_independent():
    i, j, d = kernels.mih_pairs(np.array([0, ALL_ONES], dtype=np.uint64), 3)
    assert i.shape == j.shape == d.shape == (0,) and i is not j and j is not d
    assert i.dtype == j.dtype == d.dtype == np.int64


@pytest.mark.parametrize("t", [-1, 13.5, 20, 63, 64, 100])
def test_mih_other_thresholds_match_brute_force(t):
    hashes = _planted(np.random.default_rng(3), 200, 80, 25)
    _assert_same(kernels.mih_pairs(hashes, t), _brute(hashes, t))


def test_mih_accepts_lists():
    values = [0, 1, 3, ALL_ONES, ALL_ONES - 1]
    _assert_same(kernels.mih_pairs(values, 1), _brute(values, 1))


# --- a large deterministic case ------------------------------------------------------------------


def _reference_blockwise(hashes: np.ndarray, t: int, block: int = 1000):
    """Independent brute force (np.bitwise_count, upper triangle, blockwise)."""
    out_i, out_j, out_d = [], [], []
    for start in range(0, len(hashes), block):
        stop = min(start + block, len(hashes))
        dist = np.bitwise_count(hashes[start:stop, None] ^ hashes[None, start:])
        rr, cc = np.nonzero(dist <= t)
        keep = cc > rr
        out_i.append(rr[keep] + start)
        out_j.append(cc[keep] + start)
        out_d.append(dist[rr[keep], cc[keep]])
    i, j, d = (np.concatenate(a).astype(np.int64) for a in (out_i, out_j, out_d))
    order = np.lexsort((j, i))
    return i[order], j[order], d[order]


def test_mih_large_planted_case_matches_blockwise_brute_force():
    rng = np.random.default_rng(20240611)
    hashes = _planted(rng, 50_000, n_planted=3_000, max_flip=8)
    hashes[:50] = 0  # a block of identical hashes (1225 exact pairs)
    hashes[rng.integers(0, 50_000, size=20)] = np.uint64(ALL_ONES)
    got = kernels.mih_pairs(hashes, 4)
    want = _reference_blockwise(hashes, 4)
    _assert_same(got, want)
    assert len(want[0]) > 1_225 + 1_000  # the planted pairs are there
    assert set(np.unique(want[2]).tolist()) == {0, 1, 2, 3, 4}


# --- dispatcher ----------------------------------------------------------------------------------


def test_pair_method_rule():
    big = np.random.default_rng(0).integers(0, 2**64, size=50_000, dtype=np.uint64)
    assert kernels.pair_method(big, 4) == "mih"
    assert kernels.pair_method(big, 0) == "mih"
    assert kernels.pair_method(big, kernels.MIH_MAX_T) == "mih"
    assert kernels.pair_method(big, kernels.MIH_MAX_T + 1) == "brute"
    assert kernels.pair_method(big, -1) == "brute"
    assert kernels.pair_method(big[: kernels.MIH_MIN_N - 1], 4) == "brute"
    assert kernels.pair_method(big[: kernels.MIH_MIN_N], 4) == "mih"
    # a cross search: the larger side at least MIH_MIN_N, the smaller (the indexed one) MIH_MIN_CROSS
    small = big[: kernels.MIH_MIN_CROSS]
    assert kernels.pair_method(small, 4, base=big) == "mih" and kernels.pair_method(big, 4, base=small) == "mih"
    assert kernels.pair_method(small[:-1], 4, base=big) == "brute" and kernels.pair_method(big, 4, base=small[:-1]) == "brute"
    assert kernels.pair_method(small, 4, base=big[: kernels.MIH_MIN_N - 1]) == "brute"
    # one huge bucket in every chunk: MIH would check each pair up to t + 1 times
    assert kernels.pair_method(np.zeros(20_000, dtype=np.uint64), 4) == "brute"


@pytest.mark.parametrize("t", [0, 1, 2, 5, 12])
def test_mih_candidates_counts_bucket_pairs(t):
    hashes = _planted(np.random.default_rng(t), 500, 200, t)
    expected = 0
    for offset, width in kernels.mih_chunks(t):
        keys = [(int(h) >> offset) & ((1 << width) - 1) for h in hashes]
        _, counts = np.unique(keys, return_counts=True)
        expected += sum(int(c) * (int(c) - 1) // 2 for c in counts)
    assert kernels.mih_candidates(hashes, t) == expected


@pytest.mark.parametrize("t", [0, 2, 5, 12])
def test_mih_candidates_of_a_cross_search_count_bucket_pairs_either_way(t):
    """Cross candidates: query-base pairs sharing a chunk value, summed over chunks; the same count
    whichever side is the larger (the smaller side is the one indexed)."""
    rng = np.random.default_rng(t)
    query = _planted(rng, 300, 100, t)
    base = np.concatenate([_planted(rng, 700, 200, t), query[:50]])
    expected = 0
    for offset, width in kernels.mih_chunks(t):
        q = [(int(h) >> offset) & ((1 << width) - 1) for h in query]
        b = [(int(h) >> offset) & ((1 << width) - 1) for h in base]
        expected += sum(b.count(k) for k in q)
    assert kernels.mih_candidates(query, t, base) == expected
    assert kernels.mih_candidates(base, t, query) == expected


class _Spy:
    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.fn(*args, **kwargs)


@pytest.fixture
def spies(monkeypatch):
    mih, brute = _Spy(kernels.mih_pairs), _Spy(kernels.hamming_pairs)
    monkeypatch.setattr(kernels, "mih_pairs", mih)
    monkeypatch.setattr(kernels, "hamming_pairs", brute)
    return mih, brute


def test_near_pairs_uses_mih_for_large_n_small_t(spies, caplog):
    mih, brute = spies
    hashes = _planted(np.random.default_rng(1), 20_000, 1_000, 6)
    with caplog.at_level(logging.DEBUG, logger="trainset.kernels"):
        got = kernels.near_pairs(hashes, 4, be=NUMPY)
    assert len(mih.calls) == 1 and brute.calls == []
    assert "n=20000 max_distance=4 -> mih" in caplog.text
    _assert_same(got, _reference_blockwise(hashes, 4))


@pytest.mark.parametrize(("n", "t"), [(300, 4), (6_000, 13), (6_000, -1)])
def test_near_pairs_uses_brute_force_otherwise(spies, caplog, n, t):
    mih, brute = spies
    hashes = _planted(np.random.default_rng(2), n, n // 10, 6)
    with caplog.at_level(logging.DEBUG, logger="trainset.kernels"):
        got = kernels.near_pairs(hashes, t, be=NUMPY)
    assert mih.calls == [] and len(brute.calls) == 1 and brute.calls[0][1]["be"] is NUMPY
    assert f"n={n} max_distance={t} -> brute" in caplog.text
    _assert_same(got, _brute(hashes, t))


@pytest.mark.parametrize("t", [0, 2, 4, 8, 12])
def test_near_pairs_identical_either_way(monkeypatch, t):
    hashes = _planted(np.random.default_rng(t), 3_000, 1_500, t + 2)
    hashes[:40] = hashes[40]
    monkeypatch.setattr(kernels, "pair_method", lambda *args, **kwargs: "mih")
    via_mih = kernels.near_pairs(hashes, t, be=NUMPY)
    monkeypatch.setattr(kernels, "pair_method", lambda *args, **kwargs: "brute")
    via_brute = kernels.near_pairs(hashes, t, be=NUMPY)
    _assert_same(via_mih, via_brute)
    assert len(via_mih[0]) >= 40 * 41 // 2


def test_near_pairs_brute_block_follows_backend(spies, monkeypatch):
    _, brute = spies
    hashes = np.arange(1000, dtype=np.uint64)
    kernels.near_pairs(hashes, 2, be=NUMPY)
    assert brute.calls[-1][1]["block"] == kernels.BRUTE_BLOCK_ELEMENTS["numpy"] // 1000
    # a GPU backend gets larger blocks (capped at 2048) and is passed through untouched
    gpu = Backend(np, "cupy", "fake")
    calls = []
    monkeypatch.setattr(kernels, "hamming_pairs", lambda h, t, block, be, **kw: calls.append((block, be)) or ())
    kernels.near_pairs(hashes, 2, be=gpu)
    assert calls == [(2048, gpu)]


def test_near_pairs_default_backend_and_tiny_inputs():
    for values in ([], [7], [7, 7]):
        got = kernels.near_pairs(np.array(values, dtype=np.uint64), 3)
        _assert_same(got, _brute(values, 3))
