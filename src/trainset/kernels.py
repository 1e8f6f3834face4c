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


# --- multi-index hashing (pigeonhole) -------------------------------------------------------

# Dispatch rule of ``near_pairs`` (see ``pair_method``), measured on a 2-core CPU with NumPy:
#: smallest ``n`` for multi-index hashing,
MIH_MIN_N = 5_000
#: largest ``max_distance`` for it (``t + 1`` chunks of ``64 // (t + 1)`` bits),
MIH_MAX_T = 12
#: and at most this many candidate pairs per ``n**2`` brute-force comparisons.
MIH_MAX_CANDIDATE_RATIO = 0.25
#: Candidate pairs generated and verified at once (bounds the temporary arrays, ~8 bytes each x a few).
MIH_CANDIDATE_BATCH = 1 << 21
#: Buckets larger than this are searched by blockwise brute force within the bucket.
MIH_BUCKET_LIMIT = 128
#: Elements (rows x columns) of one distance block in the within-bucket brute force (cache-sized).
MIH_BLOCK_ELEMENTS = 1 << 18
#: Elements of one distance block when ``near_pairs`` runs brute force, per backend.
BRUTE_BLOCK_ELEMENTS = {"numpy": 1 << 20, "cupy": 1 << 26}


def mih_chunks(max_distance: int) -> list[tuple[int, int]]:
    """``(offset, width)`` of the ``t + 1`` disjoint bit-chunks covering all 64 bits, widths as equal
    as possible (the first ``64 % (t + 1)`` chunks are one bit wider). Needs ``0 <= t <= 63``."""
    m = int(max_distance) + 1
    if not 1 <= m <= 64:
        raise ValueError(f"multi-index hashing needs 0 <= max_distance <= 63, got {max_distance}")
    base, extra = divmod(64, m)
    chunks, offset = [], 0
    for c in range(m):
        width = base + (1 if c < extra else 0)
        chunks.append((offset, width))
        offset += width
    return chunks


def mih_pairs(hashes: np.ndarray, max_distance: int):
    """All pairs (i < j) within ``max_distance`` bits by multi-index hashing; same result as
    :func:`hamming_pairs` (host arrays ``(i, j, distance)``, int64, sorted by (i, j)).

    Pigeonhole: split the 64 bits into ``m = t + 1`` disjoint chunks; two hashes differing in at most
    ``t`` bits agree exactly on at least one chunk. For each chunk the items are sorted by chunk value
    (one ``argsort``); every pair inside a run of equal values is a candidate, verified with the exact
    :func:`popcount64` distance. A pair is kept only under the *first* chunk it agrees on, so each pair
    is reported exactly once without a global de-duplication. Memory stays bounded: candidates are
    generated in batches of at most ``MIH_CANDIDATE_BATCH`` pairs, and runs longer than
    ``MIH_BUCKET_LIMIT`` (many identical or clustered hashes) are searched by blockwise brute force
    within the bucket (upper triangle only). Output size itself is of course not bounded.

    Always runs on the host with NumPy, whatever the array backend (the sort/run logic is cheap;
    the brute-force kernel is the one that benefits from a GPU). ``max_distance >= 64`` (every pair)
    is handed to :func:`hamming_pairs` on NumPy; a negative one finds nothing.
    """
    h = np.ascontiguousarray(hashes, dtype=np.uint64).ravel()
    n = len(h)
    empty = np.zeros(0, dtype=np.int64)
    if n < 2 or max_distance < 0:
        return empty, empty.copy(), empty.copy()
    t = int(np.floor(max_distance))  # distances are integers: d <= 4.5 iff d <= 4
    if t >= 64:
        block = max(1, min(2048, BRUTE_BLOCK_ELEMENTS["numpy"] // n))
        return hamming_pairs(h, max_distance, block=block, be=Backend(np, "numpy", "mih fallback"))
    chunks = mih_chunks(t)
    masks = [np.uint64(((1 << w) - 1) << off) for off, w in chunks]
    out_i, out_j, out_d = [], [], []
    for c, (offset, width) in enumerate(chunks):
        key = (h >> np.uint64(offset)) & np.uint64((1 << width) - 1)
        order = np.argsort(key, kind="stable")  # stable: original indices ascend within a run
        keys = key[order]
        hs = h[order]
        del key
        starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
        del keys
        sizes = np.diff(np.append(starts, n))
        big = sizes > MIH_BUCKET_LIMIT
        for s, size in zip(starts[big].tolist(), sizes[big].tolist()):
            _mih_big_bucket(order[s : s + size], hs[s : s + size], t, c, masks, out_i, out_j, out_d)
        # Candidates per sorted position p in a small run [s, e): the partners p+1 .. e-1.
        run_end = np.repeat(np.append(starts[1:], n), sizes)
        counts = run_end - np.arange(n) - 1
        counts[np.repeat(big, sizes)] = 0
        del run_end
        cum = np.cumsum(counts)
        total = int(cum[-1])
        done, p0 = 0, 0
        while done < total:
            p1 = int(np.searchsorted(cum, done + MIH_CANDIDATE_BATCH, side="right"))
            p1 = max(p1, p0 + 1)  # one position has < MIH_BUCKET_LIMIT partners: always progress
            cnt = counts[p0:p1]
            m = int(cnt.sum())
            a = np.repeat(np.arange(p0, p1), cnt)
            first = np.repeat(np.cumsum(cnt) - cnt, cnt)
            b = a + 1 + (np.arange(m) - first)
            del first
            _mih_keep(order[a], order[b], hs[a] ^ hs[b], t, c, masks, out_i, out_j, out_d)
            done, p0 = done + m, p1
    if not out_i:
        return empty, empty.copy(), empty.copy()
    i = np.concatenate(out_i).astype(np.int64)
    j = np.concatenate(out_j).astype(np.int64)
    d = np.concatenate(out_d).astype(np.int64)
    order = np.lexsort((j, i))
    return i[order], j[order], d[order]


def _mih_keep(i, j, x, t, c, masks, out_i, out_j, out_d):
    """Verify candidates (``x = h_i ^ h_j``) with the exact distance and keep those whose first
    agreeing chunk is ``c``."""
    d = popcount64(x, np)
    keep = d <= np.uint64(t)
    for earlier in masks[:c]:
        keep &= (x & earlier) != 0
    if keep.any():
        out_i.append(i[keep])
        out_j.append(j[keep])
        out_d.append(d[keep])


def _mih_big_bucket(idx, values, t, c, masks, out_i, out_j, out_d):
    """Blockwise brute force inside one large bucket (``idx`` ascending), upper triangle only."""
    size = len(values)
    # Bounded by MIH_BLOCK_ELEMENTS, and at most ~1/8 of the bucket so the rectangles hug the triangle.
    block = max(1, min(MIH_BLOCK_ELEMENTS // size, max(64, -(-size // 8))))
    for start in range(0, size, block):
        stop = min(start + block, size)
        x = values[start:stop, None] ^ values[None, start:]
        dist = popcount64(x, np)
        rows = np.arange(stop - start)[:, None]
        cols = np.arange(size - start)[None, :]
        rr, cc = np.nonzero((dist <= np.uint64(t)) & (cols > rows))
        _mih_keep(idx[rr + start], idx[cc + start], x[rr, cc], t, c, masks, out_i, out_j, out_d)


def mih_candidates(hashes: np.ndarray, max_distance: int) -> int:
    """Candidate pairs :func:`mih_pairs` would check: pairs sharing a bucket, summed over chunks."""
    h = np.ascontiguousarray(hashes, dtype=np.uint64).ravel()
    total = 0
    for offset, width in mih_chunks(max_distance):
        key = (h >> np.uint64(offset)) & np.uint64((1 << width) - 1)
        counts = np.bincount(key.astype(np.int64)) if width <= 22 else np.unique(key, return_counts=True)[1]
        counts = counts.astype(np.int64)
        total += int((counts * (counts - 1) // 2).sum())
    return total


def pair_method(hashes: np.ndarray, max_distance) -> str:
    """Which kernel :func:`near_pairs` uses for these hashes: ``"mih"`` or ``"brute"``.

    Rule: multi-index hashing when ``n >= MIH_MIN_N`` (5000), ``0 <= max_distance <= MIH_MAX_T``
    (12) and the candidate pairs it would check (:func:`mih_candidates`, one ``bincount`` per chunk)
    are at most ``MIH_MAX_CANDIDATE_RATIO`` (0.25) of the ``n**2`` distances brute force computes;
    brute force otherwise. On random hashes MIH checks about ``(t + 1) * n**2 / 2**(64 / (t + 1) + 1)``
    candidates (0.04 % of ``n**2`` at t = 4, 3 % at t = 8, 22 % at t = 12), at ~8-10 ns each against
    ~13 ns per brute-force distance on NumPy; the candidate guard sends inputs dominated by identical
    or clustered hashes (one huge bucket in every chunk) to brute force, which compares each pair
    once instead of up to ``t + 1`` times. The thresholds were measured on the CPU; with a GPU
    backend brute force is much faster and the crossover has not been measured.
    """
    n = len(hashes)
    if n < MIH_MIN_N or not 0 <= max_distance <= MIH_MAX_T:
        return "brute"
    ratio = mih_candidates(hashes, int(np.floor(max_distance))) / float(n) ** 2
    return "mih" if ratio <= MIH_MAX_CANDIDATE_RATIO else "brute"


def near_pairs(hashes: np.ndarray, max_distance: int, be: Backend | None = None):
    """All pairs (i < j) within ``max_distance`` bits, by the kernel :func:`pair_method` picks.

    Both kernels return identical host arrays ``(i, j, distance)``, int64, sorted by (i, j).
    Multi-index hashing (:func:`mih_pairs`) runs on the host with NumPy whatever ``be`` is; brute
    force runs :func:`hamming_pairs` on ``be`` (default: :func:`backend`, CuPy when usable) with a
    block of about ``BRUTE_BLOCK_ELEMENTS[be.name]`` distances. The choice is logged at DEBUG level
    on ``trainset.kernels``.
    """
    be = be or backend()
    n = len(hashes)
    method = pair_method(hashes, max_distance)
    log.debug("near_pairs: n=%d max_distance=%s -> %s", n, max_distance, method)
    if method == "mih":
        return mih_pairs(hashes, max_distance)
    elements = BRUTE_BLOCK_ELEMENTS.get(be.name, BRUTE_BLOCK_ELEMENTS["numpy"])
    return hamming_pairs(hashes, max_distance, block=max(1, min(2048, elements // max(n, 1))), be=be)
