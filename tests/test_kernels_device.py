"""trainset.kernels: the CuPy branches, run on NumPy-backed stand-ins (no GPU needed).

Device arrays are NumPy arrays that must be fetched with ``.get()``; the RawKernel of ``cuda_pairs``
is emulated in Python from its CUDA signature, in a random write order (as atomics give), so the
host side (arguments, capacity retry, sorting) is checked here and the CUDA code itself by
``benchmarks/pairs.py --backend cupy`` on a GPU.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from trainset import kernels
from trainset.kernels import HOST, Backend


class _DeviceArray(np.ndarray):
    def get(self):
        return np.asarray(self)


def _on_device(fn):
    def wrapped(*args, **kwargs):
        out = fn(*args, **kwargs)
        return tuple(x.view(_DeviceArray) for x in out) if isinstance(out, tuple) else out.view(_DeviceArray)

    return wrapped


def _device_xp() -> types.ModuleType:
    xp = types.ModuleType("cupy")
    for name in ("uint64", "int64", "float64", "abs", "sort"):
        setattr(xp, name, getattr(np, name))
    xp.asarray = _on_device(lambda a, dtype=None: np.asarray(a, dtype=dtype))
    for name in ("arange", "zeros", "empty", "nonzero", "argsort"):
        setattr(xp, name, _on_device(getattr(np, name)))
    return xp


DEVICE = Backend(_device_xp(), "cupy", "stand-in")


def _thumbs() -> np.ndarray:
    rng = np.random.default_rng(4)
    thumbs = rng.integers(0, 256, size=(40, 32, 32), dtype=np.uint8)
    thumbs[0] = 128  # flat: every AC coefficient ties at the median
    thumbs[1] = 255
    thumbs[1, :, 16:] = 0  # split
    return thumbs


def test_hashes_on_the_device_branch_equal_the_host():
    thumbs = _thumbs()
    got = kernels.phash_batch(thumbs, be=DEVICE)  # CuPy's default: matrix DCT + tie fallback
    assert type(got) is np.ndarray
    assert np.array_equal(got, kernels.phash_batch(thumbs, be=HOST))
    small = thumbs[:, :8, :9].copy()
    assert np.array_equal(kernels.dhash_batch(small, be=DEVICE), kernels.dhash_batch(small, be=HOST))


def test_box_hashes_on_the_device_branch_equal_the_host():
    from trainset import hashing

    gray = np.random.default_rng(6).integers(0, 256, size=(70, 90), dtype=np.uint8)
    gray[:, :30] = 40  # a flat band: boxes inside it tie at the median
    boxes = [(0, 0, 90, 70), (0, 0, 30, 70), (5, 3, 85, 66), (0, 7, 81, 70)]
    lows = hashing.box_lows(gray, boxes)
    got = kernels.phash_from_lows(lows, be=DEVICE)
    assert type(got) is np.ndarray
    assert np.array_equal(got, kernels.phash_from_lows(lows, be=HOST))


def test_pair_search_on_the_device_branch_equals_the_host():
    hashes = np.random.default_rng(5).integers(0, 2**64, size=500, dtype=np.uint64)
    hashes[250:300] = hashes[:50] ^ np.uint64(0b101)
    for base in (None, hashes[::4].copy()):
        got = kernels.hamming_pairs(hashes, 3, block=64, be=DEVICE, base=base)
        want = kernels.hamming_pairs(hashes, 3, be=HOST, base=base)
        assert [a.tolist() for a in got] == [a.tolist() for a in want] and len(want[0]) >= 50


class _EmulatedRawKernel:
    """Runs what _CUDA_SOURCE does, from the arguments in its declared order and C types."""

    launches: list = []

    def __init__(self, source, name):
        assert name in source and "__popcll" in source
        self.rng = np.random.default_rng(0)

    def __call__(self, grid, block, args):
        query, n_query, base, n_base, max_distance, triangle, out_i, out_j, out_d, found, capacity = args
        assert [type(a) for a in (n_query, n_base, max_distance, triangle, capacity)] == [
            np.int64, np.int64, np.int32, np.int32, np.uint64]
        assert all(a.dtype == np.int64 for a in (out_i, out_j, out_d)) and found.dtype == np.uint64
        assert grid[0] >= 1 and block == (256,)
        hits = [(i, j, bin(int(query[i]) ^ int(base[j])).count("1")) for i in range(int(n_query))
                for j in range(i + 1 if triangle else 0, int(n_base))]
        hits = [hit for hit in hits if hit[2] <= max_distance]
        for slot, k in enumerate(self.rng.permutation(len(hits))):  # any order the atomics give
            if slot < int(capacity):
                out_i[slot], out_j[slot], out_d[slot] = hits[k]
        found[0] = len(hits)
        self.launches.append(int(capacity))


@pytest.fixture
def emulated_cupy(monkeypatch):
    fake = _device_xp()
    fake.RawKernel = _EmulatedRawKernel
    monkeypatch.setitem(sys.modules, "cupy", fake)
    kernels._cuda_kernel.cache_clear()
    _EmulatedRawKernel.launches = []
    yield
    kernels._cuda_kernel.cache_clear()


@pytest.mark.parametrize("t", [0, 3, 10.5, 64, 100])
def test_cuda_pairs_host_side_matches_the_host_kernel(emulated_cupy, t):
    hashes = np.random.default_rng(6).integers(0, 2**64, size=60, dtype=np.uint64)
    hashes[30:40] = hashes[:10] ^ np.uint64(0b11)
    hashes[40:45] = hashes[0]
    for base in (None, hashes[::3].copy()):
        got = kernels.cuda_pairs(hashes, t, base=base, capacity=8)
        want = kernels.hamming_pairs(hashes, t, be=HOST, base=base)
        assert all(type(g) is np.ndarray and g.dtype == np.int64 for g in got)
        assert [a.tolist() for a in got] == [a.tolist() for a in want]
    # more matches than slots: a second launch with room for all of them
    assert _EmulatedRawKernel.launches[:2] == [8, len(kernels.hamming_pairs(hashes, t, be=HOST)[0])]


def test_cuda_pairs_edges(emulated_cupy):
    assert all(len(a) == 0 for a in kernels.cuda_pairs([], 4))
    assert all(len(a) == 0 for a in kernels.cuda_pairs([1, 2], -1))
    assert [a.tolist() for a in kernels.cuda_pairs([5], 64)] == [[], [], []]
    assert [a.tolist() for a in kernels.cuda_pairs([5], 1, base=[4, 7, 5])] == [[0, 0, 0], [0, 1, 2], [1, 1, 0]]
    assert _EmulatedRawKernel.launches == [1 << 20, 1 << 20]
