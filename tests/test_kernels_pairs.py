"""trainset.kernels: the compiled brute force and the cross search (near_pairs_between).

References: ``blockwise_pairs`` on NumPy (checked against a pure-Python loop in test_kernels.py) and
``mih_pairs``; all must return the same int64 ``(i, j, distance)`` arrays, sorted by (i, j).
"""

from __future__ import annotations

import sys
import types

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainset import kernels
from trainset.kernels import HOST

ALL_ONES = 2**64 - 1
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _as_lists(result):
    for a in result:
        assert isinstance(a, np.ndarray) and a.dtype == np.int64 and a.ndim == 1
    return [a.tolist() for a in result]


@st.composite
def hash_sets(draw, max_size=300):
    """Random hashes with exact duplicates, near copies (k bits flipped) and the extremes."""
    n = draw(st.integers(0, max_size))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    h = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    for _ in range(draw(st.integers(0, n))):
        src, dst = rng.integers(0, n, size=2)
        flip = 0
        for bit in rng.choice(64, size=int(rng.integers(0, 12)), replace=False):
            flip |= 1 << int(bit)
        h[dst] = h[src] ^ np.uint64(flip)
    for value in draw(st.lists(st.sampled_from([0, ALL_ONES]), max_size=4)) if n else []:
        h[int(rng.integers(0, n))] = np.uint64(value)
    return h


THRESHOLDS = st.one_of(st.sampled_from([0, 1, 63, 64, 65, -1]), st.integers(0, 20))


@SETTINGS
@given(hashes=hash_sets(), t=THRESHOLDS)
def test_compiled_brute_force_equals_blockwise_and_mih(hashes, t):
    got = _as_lists(kernels.hamming_pairs(hashes, t, be=HOST))
    assert got == _as_lists(kernels.blockwise_pairs(hashes, t, block=37, be=HOST))
    assert got == _as_lists(kernels.mih_pairs(hashes, t))
    assert all(i < j for i, j in zip(got[0], got[1]))


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 7, 8, 9])
@pytest.mark.parametrize("t", [0, 63, 64])
def test_small_sets_every_group_size(n, t):
    hashes = np.array([0, ALL_ONES, 0, 1, ALL_ONES - 1, 2**63, 0, 3, ALL_ONES][:n], dtype=np.uint64)
    want = _as_lists(kernels.blockwise_pairs(hashes, t, be=HOST))
    assert _as_lists(kernels.hamming_pairs(hashes, t, be=HOST)) == want
    if t == 64:
        assert len(want[0]) == n * (n - 1) // 2


def test_all_identical_hashes_give_every_pair_at_distance_zero():
    i, j, d = kernels.hamming_pairs(np.full(301, 12345, dtype=np.uint64), 0, be=HOST)
    assert len(i) == 301 * 300 // 2 and (d == 0).all()
    assert _as_lists((i, j, d)) == _as_lists(kernels.blockwise_pairs(np.full(301, 12345, dtype=np.uint64), 0, be=HOST))


@pytest.mark.parametrize("threads", [1, 2, 1000, None])
def test_thread_count_changes_nothing_and_is_restored(threads, monkeypatch):
    monkeypatch.setattr(kernels, "PARALLEL_MIN_WORK", 0)  # small inputs on the thread pool too
    hashes = np.random.default_rng(0).integers(0, 2**64, size=2_000, dtype=np.uint64)
    hashes[1000:1100] = hashes[:100] ^ np.uint64(5)
    before = numba.get_num_threads()
    got = kernels.hamming_pairs(hashes, 6, be=HOST, threads=threads)
    assert numba.get_num_threads() == before
    assert _as_lists(got) == _as_lists(kernels.blockwise_pairs(hashes, 6, be=HOST))
    cross = kernels.near_pairs_between(hashes[:300], hashes, 6, be=HOST, threads=threads)
    assert numba.get_num_threads() == before
    assert _as_lists(cross) == _as_lists(kernels.blockwise_pairs(hashes[:300], 6, be=HOST, base=hashes))


def test_float_thresholds_are_floored():
    hashes = np.array([0, 1, 3, 7, 15], dtype=np.uint64)
    assert _as_lists(kernels.hamming_pairs(hashes, 2.5, be=HOST)) == _as_lists(kernels.hamming_pairs(hashes, 2, be=HOST))
    assert _as_lists(kernels.hamming_pairs(hashes, float("inf"), be=HOST))[0] == [0, 0, 0, 0, 1, 1, 1, 2, 2, 3]


# --- cross search ---------------------------------------------------------------------------------


@SETTINGS
@given(query=hash_sets(120), base=hash_sets(300), t=THRESHOLDS, shared=st.integers(0, 30))
def test_cross_search_equals_brute_force(query, base, t, shared):
    shared = min(shared, len(query), len(base))
    query[:shared] = base[len(base) - shared :]  # exact matches across the sets
    want = _as_lists(kernels.blockwise_pairs(query, t, block=11, be=HOST, base=base))
    assert _as_lists(kernels.hamming_pairs(query, t, be=HOST, base=base)) == want
    assert _as_lists(kernels.near_pairs_between(query, base, t, be=HOST)) == want
    assert _as_lists(kernels.mih_pairs(query, t, base=base)) == want


@SETTINGS
@given(a=hash_sets(200), b=hash_sets(100), t=st.integers(0, 16))
def test_cross_pairs_of_the_union_are_the_cross_search(a, b, t):
    """near_pairs over A + B, restricted to pairs with one end in each, is near_pairs_between(B, A)."""
    i, j, d = kernels.near_pairs(np.concatenate([a, b]), t, be=HOST)
    cross = (i < len(a)) & (j >= len(a))
    want = sorted(zip((j[cross] - len(a)).tolist(), i[cross].tolist(), d[cross].tolist()))
    qi, bj, dd = kernels.near_pairs_between(b, a, t, be=HOST)
    assert list(zip(qi.tolist(), bj.tolist(), dd.tolist())) == want


@pytest.mark.parametrize("t", [0, 2, 4, 8])
def test_cross_search_large_sets_through_mih(t, caplog):
    rng = np.random.default_rng(t)
    base = rng.integers(0, 2**64, size=40_000, dtype=np.uint64)
    base[:50] = base[50]  # a clump of identical base hashes
    query = rng.integers(0, 2**64, size=8_000, dtype=np.uint64)
    query[:2000] = base[rng.integers(0, len(base), size=2000)] ^ np.uint64(0b1011)  # 3 bits off
    query[2000:2100] = base[:100]
    assert kernels.pair_method(query, t, base) == "mih"
    with caplog.at_level("DEBUG", logger="trainset.kernels"):
        got = _as_lists(kernels.near_pairs_between(query, base, t, be=HOST))
    assert "near_pairs_between: n=8000 x 40000" in caplog.text and "-> mih" in caplog.text
    assert got == _as_lists(kernels.hamming_pairs(query, t, be=HOST, base=base))
    assert len(got[0]) >= (2000 if t >= 3 else 0) + 100


def test_cross_search_edges():
    base = np.array([0, ALL_ONES, 5], dtype=np.uint64)
    for query in (np.zeros(0, dtype=np.uint64), [], [7]):
        for b in (base, np.zeros(0, dtype=np.uint64)):
            got = kernels.near_pairs_between(query, b, 2, be=HOST)
            assert [a.tolist() for a in got] == [a.tolist() for a in kernels.blockwise_pairs(query, 2, base=b, be=HOST)]
    qi, bj, d = kernels.near_pairs_between([5, 0], base, 64, be=HOST)
    assert (qi.tolist(), bj.tolist(), d.tolist()) == ([0, 0, 0, 1, 1, 1], [0, 1, 2, 0, 1, 2], [2, 62, 0, 0, 64, 2])
    assert all(len(a) == 0 for a in kernels.near_pairs_between([5], base, -1, be=HOST))


def test_mih_candidates_between_counts_shared_buckets():
    rng = np.random.default_rng(9)
    query = rng.integers(0, 2**64, size=300, dtype=np.uint64)
    base = np.concatenate([query[:50] ^ np.uint64(1), rng.integers(0, 2**64, size=400, dtype=np.uint64)])
    for t in (0, 1, 3, 12):
        want = 0
        for offset, width in kernels.mih_chunks(t):
            mask = (1 << width) - 1
            keys = [(int(h) >> offset) & mask for h in base]
            want += sum(keys.count((int(q) >> offset) & mask) for q in query)
        assert kernels.mih_candidates(query, t, base) == want


# --- the GPU kernel -------------------------------------------------------------------------------


def test_cpu_paths_never_touch_cupy(monkeypatch):
    untouchable = types.ModuleType("cupy")
    untouchable.__getattr__ = lambda name: (_ for _ in ()).throw(AssertionError(f"cupy.{name} touched"))
    monkeypatch.setitem(sys.modules, "cupy", untouchable)
    hashes = np.random.default_rng(1).integers(0, 2**64, size=6_000, dtype=np.uint64)
    kernels.near_pairs(hashes, 4, be=HOST)
    kernels.near_pairs(hashes, 20, be=HOST)
    kernels.near_pairs_between(hashes[:10], hashes, 4, be=HOST)
    kernels.phash_batch(np.zeros((3, 32, 32), np.uint8), be=HOST)
    kernels.dhash_batch(np.zeros((3, 8, 9), np.uint8), be=HOST)

