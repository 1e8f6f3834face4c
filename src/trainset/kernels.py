"""Array kernels with one code path for NumPy (CPU) and CuPy (GPU).

The backend is chosen once per process: CuPy when it imports *and* a first array operation
succeeds (``import cupy`` works without a GPU; the first operation then raises a
``CUDARuntimeError``), NumPy otherwise. ``TRAINSET_BACKEND=numpy|cupy`` forces one.
Every kernel is written against the ``xp`` namespace with integer arithmetic only, so both
paths give identical results.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from types import ModuleType

import numpy as np

log = logging.getLogger(__name__)

_M1 = 0x5555555555555555
_M2 = 0x3333333333333333
_M4 = 0x0F0F0F0F0F0F0F0F
_H01 = 0x0101010101010101


@dataclass(frozen=True)
class Backend:
    xp: ModuleType
    name: str
    why: str

    def to_host(self, array) -> np.ndarray:
        return array.get() if self.name == "cupy" else np.asarray(array)


@functools.lru_cache(maxsize=None)
def backend() -> Backend:
    """Detect once; say which path runs and why."""
    forced = os.environ.get("TRAINSET_BACKEND", "").strip().lower()
    if forced == "numpy":
        chosen = Backend(np, "numpy", "forced by TRAINSET_BACKEND")
    else:
        chosen = _try_cupy(required=forced == "cupy")
    log.info("array backend: %s (%s)", chosen.name, chosen.why)
    return chosen


def _try_cupy(required: bool) -> Backend:
    try:
        import cupy  # noqa: PLC0415

        probe = cupy.arange(4, dtype=cupy.uint64) ^ cupy.uint64(1)
        int(probe.sum())
        return Backend(cupy, "cupy", f"GPU {cupy.cuda.runtime.getDeviceCount()} device(s)")
    except ImportError:
        why = "cupy not installed"
    except RuntimeError as exc:  # CUDARuntimeError and friends: no GPU or driver
        why = f"cupy unusable: {type(exc).__name__}"
    if required:
        raise RuntimeError(f"TRAINSET_BACKEND=cupy but {why}")
    return Backend(np, "numpy", why)


def popcount64(x, xp):
    """Bits set in each uint64 (SWAR; identical on NumPy and CuPy)."""
    x = x - ((x >> xp.uint64(1)) & xp.uint64(_M1))
    x = (x & xp.uint64(_M2)) + ((x >> xp.uint64(2)) & xp.uint64(_M2))
    x = (x + (x >> xp.uint64(4))) & xp.uint64(_M4)
    return (x * xp.uint64(_H01)) >> xp.uint64(56)


def hamming_pairs(hashes: np.ndarray, max_distance: int, block: int = 2048, be: Backend | None = None):
    """All pairs (i < j) of 64-bit hashes within ``max_distance`` bits, blockwise to bound memory.

    Returns host arrays ``(i, j, distance)`` sorted by (i, j).
    """
    be = be or backend()
    xp = be.xp
    n = len(hashes)
    if n < 2:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy(), empty.copy()
    h = xp.asarray(np.ascontiguousarray(hashes, dtype=np.uint64))
    out_i, out_j, out_d = [], [], []
    for start in range(0, n, block):
        stop = min(start + block, n)
        dist = popcount64(h[start:stop, None] ^ h[None, :], xp)
        rows = xp.arange(start, stop)[:, None]
        cols = xp.arange(n)[None, :]
        ii, jj = xp.nonzero((dist <= max_distance) & (cols > rows))
        out_i.append(be.to_host(ii + start))
        out_j.append(be.to_host(jj))
        out_d.append(be.to_host(dist[ii, jj]))
    i = np.concatenate(out_i).astype(np.int64)
    j = np.concatenate(out_j).astype(np.int64)
    d = np.concatenate(out_d).astype(np.int64)
    order = np.lexsort((j, i))
    return i[order], j[order], d[order]
