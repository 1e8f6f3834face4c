"""trainset.kernels: SWAR popcount, brute-force Hamming pairs (compiled and blockwise), and backend selection."""

from __future__ import annotations

import logging
import sys
import types

import numpy as np
import pytest

from trainset import kernels
from trainset.kernels import Backend

NUMPY = Backend(np, "numpy", "test")


@pytest.fixture(autouse=True)
def _fresh_backend(monkeypatch):
    """Every test starts and ends with no cached backend and no TRAINSET_BACKEND."""
    monkeypatch.delenv("TRAINSET_BACKEND", raising=False)
    kernels.backend.cache_clear()
    yield
    kernels.backend.cache_clear()


def _random_u64(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2**64, size=n, dtype=np.uint64, endpoint=False)


# --- popcount ---------------------------------------------------------------------------


def test_popcount_edge_values():
    values = [0, 1, 2, 3, 0xFF, 2**63, 2**63 - 1, 2**64 - 1, 0x5555555555555555, 0xAAAAAAAAAAAAAAAA,
              0x0101010101010101, 0x8000000000000001]
    arr = np.array(values, dtype=np.uint64)
    got = kernels.popcount64(arr, np)
    assert [int(g) for g in got] == [bin(v).count("1") for v in values]
    assert int(kernels.popcount64(np.array([0], dtype=np.uint64), np)[0]) == 0
    assert int(kernels.popcount64(np.array([2**64 - 1], dtype=np.uint64), np)[0]) == 64


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_popcount_matches_python_on_random(seed):
    arr = _random_u64(5000, seed)
    got = kernels.popcount64(arr, np)
    assert got.dtype == np.uint64
    expected = [bin(int(v)).count("1") for v in arr]
    assert got.tolist() == expected


def test_popcount_every_single_bit_and_prefix():
    singles = np.array([1 << k for k in range(64)], dtype=np.uint64)
    assert kernels.popcount64(singles, np).tolist() == [1] * 64
    prefixes = np.array([(1 << k) - 1 for k in range(65)], dtype=object).astype(np.uint64)
    assert kernels.popcount64(prefixes, np).tolist() == list(range(65))


def test_popcount_keeps_shape():
    arr = _random_u64(12, 5).reshape(3, 4)
    got = kernels.popcount64(arr, np)
    assert got.shape == (3, 4)
    assert got.tolist() == [[bin(int(v)).count("1") for v in row] for row in arr]


def test_popcount_does_not_modify_input():
    arr = _random_u64(100, 9)
    before = arr.copy()
    kernels.popcount64(arr, np)
    assert np.array_equal(arr, before)


# --- hamming_pairs ----------------------------------------------------------------------


def _brute(hashes, max_distance):
    out = []
    values = [int(h) for h in hashes]
    for i in range(len(values)):
        for j in range(i + 1, len(values)):
            d = bin(values[i] ^ values[j]).count("1")
            if d <= max_distance:
                out.append((i, j, d))
    return out


def _clustered(n: int, seed: int) -> np.ndarray:
    """Random hashes plus near copies (a few bits flipped), so small thresholds find pairs."""
    rng = np.random.default_rng(seed)
    base = [int(v) for v in _random_u64(max(1, n // 3), seed)]
    values = []
    for k in range(n):
        v = base[k % len(base)]
        for bit in rng.choice(64, size=int(rng.integers(0, 12)), replace=False):
            v ^= 1 << int(bit)
        values.append(v)
    return np.array(values, dtype=np.uint64)


BRUTE_FORCE = [kernels.hamming_pairs, kernels.blockwise_pairs]  # compiled (NumPy backend), xp blockwise


@pytest.mark.parametrize("fn", BRUTE_FORCE, ids=["compiled", "blockwise"])
@pytest.mark.parametrize("n", [0, 1, 2, 3, 17, 64, 150])
@pytest.mark.parametrize("block", [1, 2, 7, 16, 64, 2048])
@pytest.mark.parametrize("max_distance", [0, 5, 10, 64])
def test_hamming_pairs_matches_brute_force(fn, n, block, max_distance):
    hashes = _clustered(n, seed=n * 31 + block)
    i, j, d = fn(hashes, max_distance, block=block, be=NUMPY)
    for arr in (i, j, d):
        assert isinstance(arr, np.ndarray) and arr.dtype == np.int64
    assert list(zip(i.tolist(), j.tolist(), d.tolist())) == _brute(hashes, max_distance)


@pytest.mark.parametrize("fn", BRUTE_FORCE, ids=["compiled", "blockwise"])
def test_hamming_pairs_all_pairs_at_64(fn):
    hashes = _random_u64(40, 3)
    i, j, _ = fn(hashes, 64, block=9, be=NUMPY)
    assert len(i) == 40 * 39 // 2
    assert (i < j).all()


@pytest.mark.parametrize("fn", BRUTE_FORCE, ids=["compiled", "blockwise"])
def test_hamming_pairs_identical_hashes_and_extremes(fn):
    hashes = np.array([0, 2**64 - 1, 0, 2**64 - 1, 2**63], dtype=np.uint64)
    i, j, d = fn(hashes, 64, block=2, be=NUMPY)
    assert list(zip(i.tolist(), j.tolist(), d.tolist())) == _brute(hashes, 64)
    pairs = dict(zip(zip(i.tolist(), j.tolist()), d.tolist()))
    assert pairs[(0, 2)] == 0 and pairs[(1, 3)] == 0 and pairs[(0, 1)] == 64 and pairs[(0, 4)] == 1


@pytest.mark.parametrize("fn", BRUTE_FORCE, ids=["compiled", "blockwise"])
def test_hamming_pairs_negative_threshold_finds_nothing(fn):
    i, j, d = fn(np.zeros(5, dtype=np.uint64), -1, be=NUMPY)
    assert len(i) == len(j) == len(d) == 0


@pytest.mark.parametrize("fn", BRUTE_FORCE, ids=["compiled", "blockwise"])
def test_hamming_pairs_empty_and_single_shapes(fn):
    for n in (0, 1):
        i, j, d = fn(np.zeros(n, dtype=np.uint64), 10, be=NUMPY)
        assert i.shape == j.shape == d.shape == (0,)
        assert i.dtype == j.dtype == d.dtype == np.int64
        assert i is not j  # independent arrays


def test_hamming_pairs_accepts_lists_and_uses_default_backend(monkeypatch):
    monkeypatch.setenv("TRAINSET_BACKEND", "numpy")
    hashes = [0, 1, 3, 2**63]
    i, j, d = kernels.hamming_pairs(np.array(hashes, dtype=np.uint64), 2)
    assert list(zip(i.tolist(), j.tolist(), d.tolist())) == _brute(hashes, 2)


def test_hamming_pairs_from_real_phash_hex():
    from trainset import hashing

    texts = ["ffffffffffffffff", "fffffffffffffffe", "0000000000000000", "8000000000000000", "7fffffffffffffff"]
    hashes = hashing.from_hex(texts)
    i, j, d = kernels.hamming_pairs(hashes, 1, block=2, be=NUMPY)
    assert list(zip(i.tolist(), j.tolist(), d.tolist())) == [(0, 1, 1), (0, 4, 1), (2, 3, 1)]


# --- backend selection ------------------------------------------------------------------


def test_forced_numpy(monkeypatch, caplog):
    monkeypatch.setenv("TRAINSET_BACKEND", "numpy")
    with caplog.at_level(logging.INFO, logger="trainset.kernels"):
        be = kernels.backend()
    assert be.xp is np and be.name == "numpy"
    assert "TRAINSET_BACKEND" in be.why
    assert "numpy" in caplog.text


@pytest.mark.parametrize("value", ["NumPy", "  numpy  ", "NUMPY"])
def test_forced_numpy_is_case_and_space_insensitive(monkeypatch, value):
    monkeypatch.setenv("TRAINSET_BACKEND", value)
    assert kernels.backend().why == "forced by TRAINSET_BACKEND"


def test_forced_numpy_ignores_a_working_cupy(monkeypatch):
    fake = types.ModuleType("cupy")
    fake.__getattr__ = lambda name: (_ for _ in ()).throw(AssertionError("cupy must not be touched"))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setenv("TRAINSET_BACKEND", "numpy")
    assert kernels.backend().name == "numpy"


def test_backend_is_cached(monkeypatch):
    monkeypatch.setenv("TRAINSET_BACKEND", "numpy")
    first = kernels.backend()
    assert kernels.backend() is first


class CUDARuntimeError(RuntimeError):
    """Stands in for cupy_backends.cuda.api.runtime.CUDARuntimeError."""


def _broken_cupy() -> types.ModuleType:
    """A cupy that imports fine but whose first array operation fails (no GPU / driver)."""
    fake = types.ModuleType("cupy")
    fake.uint64 = np.uint64

    def arange(*args, **kwargs):
        raise CUDARuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")

    fake.arange = arange
    return fake


def test_broken_cupy_falls_back_to_numpy_quietly(monkeypatch, recwarn):
    monkeypatch.setitem(sys.modules, "cupy", _broken_cupy())
    kernels.backend.cache_clear()
    be = kernels.backend()
    assert be.xp is np and be.name == "numpy"
    assert be.why == "cupy unusable: CUDARuntimeError"
    assert [str(w.message) for w in recwarn] == []
    # and the fallback really works
    i, j, d = kernels.hamming_pairs(np.array([0, 1, 7], dtype=np.uint64), 1)
    assert (i.tolist(), j.tolist(), d.tolist()) == ([0], [1], [1])


def test_missing_cupy_falls_back_to_numpy_quietly(monkeypatch, recwarn):
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` raise ImportError
    be = kernels.backend()
    assert be.name == "numpy"
    assert be.why == "cupy not installed"
    assert [str(w.message) for w in recwarn] == []


def test_forced_cupy_with_broken_cupy_raises(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", _broken_cupy())
    monkeypatch.setenv("TRAINSET_BACKEND", "cupy")
    with pytest.raises(RuntimeError, match="TRAINSET_BACKEND=cupy but cupy unusable: CUDARuntimeError"):
        kernels.backend()


def test_forced_cupy_without_cupy_raises(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    monkeypatch.setenv("TRAINSET_BACKEND", "CuPy")
    with pytest.raises(RuntimeError, match="TRAINSET_BACKEND=cupy but cupy not installed"):
        kernels.backend()


def _numpy_backed_cupy() -> types.ModuleType:
    """A cupy that works: NumPy underneath, with the few extras the kernels touch."""
    fake = types.ModuleType("cupy")
    for name in ("uint64", "arange", "asarray", "nonzero"):
        setattr(fake, name, getattr(np, name))
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=lambda: 2))
    return fake


def test_working_cupy_is_chosen(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", _numpy_backed_cupy())
    be = kernels.backend()
    assert be.name == "cupy"
    assert be.why == "GPU 2 device(s)"


def test_to_host():
    arr = np.arange(3)
    assert np.array_equal(NUMPY.to_host(arr), arr)
    assert isinstance(NUMPY.to_host([1, 2]), np.ndarray)

    class DeviceArray:
        def get(self):
            return np.array([4, 5])

    gpu = Backend(np, "cupy", "fake")
    assert gpu.to_host(DeviceArray()).tolist() == [4, 5]
