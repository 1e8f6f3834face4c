"""Array kernels: every hash and pair-search kernel, on NumPy (CPU) or CuPy (GPU).

The backend is chosen once per process: CuPy when it imports *and* a first array operation
succeeds (``import cupy`` works without a GPU; the first operation then raises a
``CUDARuntimeError``), NumPy otherwise. ``TRAINSET_BACKEND=numpy|cupy`` forces one.
Kernels written against the ``xp`` namespace use integer arithmetic (or, for the DCT, a tie check
that hands near ties to the host), so both paths give identical results. Brute-force pair search
on the CPU is a compiled numba kernel; its xp blockwise counterpart is the CuPy path.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from dataclasses import dataclass
from types import ModuleType

import numba
import numpy as np
import scipy.fftpack
from numba.extending import intrinsic

from . import progress

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


#: The host, whatever :func:`backend` says: for work too small to pay for a device round trip.
HOST = Backend(np, "numpy", "host")


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


def pack_bits(bits, xp):
    """``(B, 64)`` booleans -> ``(B,)`` uint64, first bit most significant (imagehash's hex order)."""
    shifts = xp.arange(63, -1, -1, dtype=xp.uint64)
    return (bits.astype(xp.uint64) << shifts).sum(axis=1, dtype=xp.uint64)


# --- perceptual hashes of thumbnail batches -------------------------------------------------

#: pHash keeps the top-left 8 x 8 DCT coefficients of a 32 x 32 thumbnail (imagehash's defaults).
PHASH_LOW = 8
PHASH_THUMB = PHASH_LOW * 4
#: How close to the median a low-frequency coefficient of the matrix DCT may lie before its row is
#: redone with scipy on the host. A coefficient is a double sum of 32 x 32 terms pixel x 2cos x 2cos,
#: pixels <= 255, so its absolute terms add up to <= 32 * 32 * 4 * 255 ~ 1.04e6. Two float64 stages
#: of length-32 dot products (error <= 32 u each, u = 1.1e-16) plus the rounding of the cosine table
#: keep the matrix coefficients within ~1.1e-8 of exact; scipy's FFT, whose error grows with log N,
#: is tighter (measured, the two differ by at most ~1.2e-10). The median moves no more than the
#: coefficients, so a bit can only differ where a coefficient lies within 2 x (1.1e-8 + 1.1e-8) of
#: the median: 1e-6 is over 20 times that. Real ties (flat, split, pixel-art thumbnails, whose exact
#: zeros come out as +-1e-11 noise) fall inside it; natural images almost never do.
PHASH_TIE_TOLERANCE = 1e-6
PHASH_CHUNK = 4096
"""Thumbnails transformed at once by the matrix DCT."""


def phash_batch(thumbs, be: Backend | None = None, method: str | None = None) -> np.ndarray:
    """pHash of ``(B, 32, 32)`` uint8 grayscale thumbnails (host array) -> ``(B,)`` uint64 on the host,
    equal to ``imagehash.phash`` bit for bit.

    ``method="scipy"`` runs imagehash's own arithmetic, ``scipy.fftpack.dct`` along both axes,
    batched. ``method="matrix"`` (the default, about 2x faster on the CPU) computes the 8 x 8
    coefficients as two float64 matrix products on ``be.xp``, which round differently; rows with a
    coefficient within ``PHASH_TIE_TOLERANCE`` of the median, the only ones where that can flip a
    bit, are redone with scipy on the host, so both give the same bits.
    """
    be = be or backend()
    thumbs = np.asarray(thumbs)
    if thumbs.ndim != 3 or thumbs.shape[1:] != (PHASH_THUMB, PHASH_THUMB):
        raise ValueError(f"phash_batch needs (B, {PHASH_THUMB}, {PHASH_THUMB}) thumbnails, got {thumbs.shape}")
    method = method or "matrix"
    if method == "scipy":
        return _phash_scipy(thumbs)
    if method != "matrix":
        raise ValueError(f"unknown pHash method {method!r}: scipy or matrix")
    xp = be.xp
    out = np.empty(len(thumbs), dtype=np.uint64)
    for start in range(0, len(thumbs), PHASH_CHUNK):  # bounds the float64 copy (8 KiB a thumbnail)
        chunk = thumbs[start:start + PHASH_CHUNK]
        low = _dct_low_matrix(chunk, xp)
        median = row_median(low, xp)[:, None]
        values = be.to_host(pack_bits(low > median, xp))
        ties = be.to_host(xp.nonzero((xp.abs(low - median) <= PHASH_TIE_TOLERANCE).any(axis=1))[0])
        if len(ties):
            values[ties] = _phash_scipy(chunk[ties])
        out[start:start + len(chunk)] = values
    return out


def _phash_scipy(thumbs: np.ndarray) -> np.ndarray:
    low = _dct_low_scipy(thumbs)
    return pack_bits(low > np.median(low, axis=1)[:, None], np)


def _dct_low_scipy(thumbs: np.ndarray) -> np.ndarray:
    """``(B, 64)`` low-frequency coefficients by imagehash's arithmetic: axis 1 then 2 of the batch is
    its axis 0 then 1, each line transformed alike, so they (and np.median per row) are bit-identical."""
    dct = scipy.fftpack.dct(scipy.fftpack.dct(thumbs, axis=1)[:, :PHASH_LOW], axis=2)
    return dct[:, :, :PHASH_LOW].reshape(len(thumbs), PHASH_LOW * PHASH_LOW)


@functools.lru_cache(maxsize=1)
def dct_basis() -> np.ndarray:
    """``(8, 32)`` float64: the rows of scipy's unnormalised DCT-II that pHash keeps,
    ``y[k] = 2 sum_m x[m] cos(pi k (2m + 1) / 64)`` (angle reduced exactly before the cosine)."""
    k = np.arange(PHASH_LOW)[:, None]
    m = np.arange(PHASH_THUMB)[None, :]
    basis = 2 * np.cos(np.pi * ((k * (2 * m + 1)) % (4 * PHASH_THUMB)) / (2 * PHASH_THUMB))
    basis.setflags(write=False)
    return basis


def _dct_low_matrix(thumbs: np.ndarray, xp):
    """The same coefficients as two float64 matrix products on ``xp`` (rounded differently)."""
    basis = xp.asarray(dct_basis())
    return (basis @ xp.asarray(thumbs, dtype=xp.float64) @ basis.T).reshape(len(thumbs), PHASH_LOW * PHASH_LOW)


def row_median(low, xp):
    """Median of each row of ``(B, 64)`` coefficients, as ``np.median`` gives it (the mean of the
    two middle values), from one sort: about 2.5x faster than ``np.median`` on the CPU."""
    ordered = xp.sort(low, axis=1)
    middle = low.shape[1] // 2
    return (ordered[:, middle - 1] + ordered[:, middle]) / 2


def phash_from_lows(lows, be: Backend | None = None) -> np.ndarray:
    """pHash bits of ``(B, 64)`` low-frequency coefficients that hold exact integers
    (``hashing.box_lows``): bit set where a coefficient exceeds its row's median, first bit most
    significant. Integers below 2**52 add, halve and compare exactly, so both backends agree bit for
    bit with no tie check."""
    be = be or backend()
    low = be.xp.asarray(np.asarray(lows, dtype=np.float64))
    return be.to_host(pack_bits(low > row_median(low, be.xp)[:, None], be.xp))


def dhash_batch(thumbs, be: Backend | None = None) -> np.ndarray:
    """dHash of ``(B, 8, 9)`` uint8 grayscale thumbnails (host array) -> ``(B,)`` uint64 on the host,
    equal to ``imagehash.dhash``: bit set where a pixel is brighter than its left neighbour."""
    be = be or backend()
    px = be.xp.asarray(np.asarray(thumbs))
    bits = (px[:, :, 1:] > px[:, :, :-1]).reshape(len(px), 64)
    return be.to_host(pack_bits(bits, be.xp))


# --- brute-force pair search ----------------------------------------------------------------


def _as_hashes(hashes) -> np.ndarray:
    return np.ascontiguousarray(hashes, dtype=np.uint64).ravel()


def _no_pairs():
    return tuple(np.zeros(0, dtype=np.int64) for _ in range(3))


def _sorted_pairs(out_i, out_j, out_d):
    """Concatenated host pieces as int64 ``(i, j, d)`` sorted by (i, j)."""
    if not out_i:
        return _no_pairs()
    i, j, d = (np.concatenate(parts).astype(np.int64) for parts in (out_i, out_j, out_d))
    order = np.lexsort((j, i))
    return i[order], j[order], d[order]


def hamming_pairs(hashes, max_distance, block: int = 2048, be: Backend | None = None,
                  threads: int | None = None, base=None):
    """All pairs within ``max_distance`` bits by brute force: ``(i, j)`` with ``i < j`` among ``hashes``,
    or every ``(query i, base j)`` when ``base`` is given.

    Returns host arrays ``(i, j, distance)``, int64, sorted by (i, j). On NumPy a compiled numba kernel
    runs on ``threads`` threads (numba's default when None); on CuPy, :func:`blockwise_pairs` with
    ``block`` rows at a time.
    """
    be = be or backend()
    if be.name != "numpy":
        return blockwise_pairs(hashes, max_distance, block=block, be=be, base=base)
    query = _as_hashes(hashes)
    other = query if base is None else _as_hashes(base)
    if not max_distance >= 0 or len(query) == 0 or len(other) == 0:
        return _no_pairs()
    return _numba_pairs(query, other, int(min(max_distance, 64)), base is None, threads)


def blockwise_pairs(hashes, max_distance, block: int = 2048, be: Backend | None = None, base=None):
    """What :func:`hamming_pairs` returns, by ``block`` rows of SWAR distances at a time on ``be.xp``:
    the CuPy path, and on NumPy the reference the compiled kernels are tested against."""
    be = be or backend()
    xp = be.xp
    query = _as_hashes(hashes)
    other = query if base is None else _as_hashes(base)
    hq = xp.asarray(query)
    hb = hq if base is None else xp.asarray(other)
    cols = xp.arange(len(other))[None, :]
    out_i, out_j, out_d = [], [], []
    for start in progress.bar(range(0, len(query), block), desc="hash pairs", unit="block"):
        stop = min(start + block, len(query))
        dist = popcount64(hq[start:stop, None] ^ hb[None, :], xp)
        keep = dist <= max_distance
        if base is None:
            keep &= cols > xp.arange(start, stop)[:, None]
        ii, jj = xp.nonzero(keep)
        out_i.append(be.to_host(ii + start))
        out_j.append(be.to_host(jj))
        out_d.append(be.to_host(dist[ii, jj]))
    return _sorted_pairs(out_i, out_j, out_d)


@intrinsic
def _popcnt(typingctx, x):
    """The CPU's population-count instruction (``llvm.ctpop``) on one uint64."""

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return numba.types.uint64(numba.types.uint64), codegen


@numba.njit(cache=True, nogil=True)
def _count_row(x, base, lo, t):
    c = 0
    for j in range(lo, base.shape[0]):
        c += _popcnt(x ^ base[j]) <= t
    return c


@numba.njit(cache=True, nogil=True)
def _count_group(query, base, t, triangle, counts, g):
    """Matches of query rows ``4g .. 4g + 3``: four rows share each load of a base hash (the row-at-a-time
    loop is bound by reading ``base``, not by the popcount)."""
    i = 4 * g
    n = base.shape[0]
    if i + 4 > query.shape[0]:
        for k in range(i, query.shape[0]):
            counts[k] = _count_row(query[k], base, k + 1 if triangle else 0, t)
        return
    a0, a1, a2, a3 = query[i], query[i + 1], query[i + 2], query[i + 3]
    lo = min(i + 4, n) if triangle else 0  # columns every row of the group takes start here
    head = base[:lo]
    c0, c1, c2, c3 = _count_row(a0, head, i + 1, t), _count_row(a1, head, i + 2, t), _count_row(a2, head, i + 3, t), 0
    for j in range(lo, n):
        x = base[j]
        c0 += _popcnt(a0 ^ x) <= t
        c1 += _popcnt(a1 ^ x) <= t
        c2 += _popcnt(a2 ^ x) <= t
        c3 += _popcnt(a3 ^ x) <= t
    counts[i], counts[i + 1], counts[i + 2], counts[i + 3] = c0, c1, c2, c3


@numba.njit(parallel=True, cache=True, nogil=True)
def _count_pairs(query, base, t, triangle, counts):
    """Matches per query row (only columns ``j > i`` when ``triangle``). Group ``g`` is paired with group
    ``last - g`` so every parallel iteration does the same work on the triangle."""
    groups = (query.shape[0] + 3) // 4
    for g in numba.prange((groups + 1) // 2):
        _count_group(query, base, t, triangle, counts, g)
        if groups - 1 - g != g:
            _count_group(query, base, t, triangle, counts, groups - 1 - g)


@numba.njit(cache=True, nogil=True)
def _fill_row(query, base, t, triangle, i, p, out_j, out_d):
    """Column and distance of every match of row ``i``, ascending ``j``, from output position ``p``."""
    x = query[i]
    for j in range(i + 1 if triangle else 0, base.shape[0]):
        d = _popcnt(x ^ base[j])
        if d <= t:
            out_j[p] = j
            out_d[p] = d
            p += 1


@numba.njit(parallel=True, cache=True, nogil=True)
def _fill_pairs(query, base, t, triangle, rows, offsets, out_j, out_d):
    for r in numba.prange(rows.shape[0]):
        _fill_row(query, base, t, triangle, rows[r], offsets[r], out_j, out_d)


@numba.njit(cache=True, nogil=True)
def _agrees_on_none(x, masks):
    for mask in masks:
        if x & mask == 0:
            return False
    return True


@numba.njit(cache=True, nogil=True)
def _range_row(x, values, lo, hi, t, earlier, write, out_j, out_d, p):
    """Matches of ``x`` among ``values[lo:hi]`` that agree on none of the ``earlier`` chunk masks (a pair
    is reported under the first chunk it agrees on); written from position ``p`` when ``write``."""
    c = 0
    for j in range(lo, hi):
        y = x ^ values[j]
        d = _popcnt(y)
        if d <= t and _agrees_on_none(y, earlier):
            if write:
                out_j[p + c] = j
                out_d[p + c] = d
            c += 1
    return c


@numba.njit(parallel=True, cache=True, nogil=True)
def _count_ranges(query, values, lo, hi, t, earlier, counts):
    for r in numba.prange(query.shape[0]):
        counts[r] = _range_row(query[r], values, lo[r], hi[r], t, earlier, False, counts[:0], counts[:0], 0)


@numba.njit(parallel=True, cache=True, nogil=True)
def _fill_ranges(query, values, lo, hi, t, earlier, rows, offsets, out_j, out_d):
    for r in numba.prange(rows.shape[0]):
        i = rows[r]
        _range_row(query[i], values, lo[i], hi[i], t, earlier, True, out_j, out_d, offsets[r])


#: Below this many distances a kernel runs on one thread: a parallel region costs ~50 us on an idle
#: machine, and when the cores are oversubscribed (other jobs running) its barrier can wait a whole
#: scheduler time slice per call: 2.3 ms for MIH on 5,000 hashes became 156 ms (median) on 2 threads
#: at load 6 on 2 cores, 6.6 ms on one.
PARALLEL_MIN_WORK = 1 << 24


@contextlib.contextmanager
def _numba_threads(threads: int | None):
    """Run on ``threads`` threads (at most numba's pool, NUMBA_NUM_THREADS), then restore the count."""
    if threads is None:
        yield
        return
    previous = numba.get_num_threads()
    numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))
    try:
        yield
    finally:
        numba.set_num_threads(previous)


def _count_then_fill(n_rows: int, count, fill, args: tuple, threads: int | None, work: int):
    """Two passes, so memory is the output plus one count per row: ``count(*args, counts)``, then
    ``fill(*args, rows, offsets, out_j, out_d)`` recomputes only the rows with matches, straight into
    the exact-size output. Returns ``(row, j, d)``, rows ascending, each row's ``j`` as filled."""
    counts = np.zeros(n_rows, dtype=np.int64)
    with _numba_threads(1 if work < PARALLEL_MIN_WORK else threads):
        count(*args, counts)
        rows = np.flatnonzero(counts)
        per_row = counts[rows]
        ends = np.cumsum(per_row)
        out_j = np.empty(int(ends[-1]) if len(ends) else 0, dtype=np.int64)
        out_d = np.empty_like(out_j)
        fill(*args, rows, ends - per_row, out_j, out_d)
    return np.repeat(rows.astype(np.int64), per_row), out_j, out_d


def _numba_pairs(query: np.ndarray, base: np.ndarray, t: int, triangle: bool, threads: int | None):
    """Brute force on the host: ``(i, j, d)`` in (i, j) order."""
    work = len(query) * (len(base) - 1) // 2 if triangle else len(query) * len(base)
    return _count_then_fill(len(query), _count_pairs, _fill_pairs, (query, base, np.uint64(t), triangle), threads, work)


_CUDA_SOURCE = r"""
extern "C" __global__ void trainset_hamming_pairs(
    const unsigned long long* query, long long n_query,
    const unsigned long long* base, long long n_base,
    int max_distance, int triangle,
    long long* out_i, long long* out_j, long long* out_d,
    unsigned long long* found, unsigned long long capacity)
{
    for (long long i = blockIdx.x; i < n_query; i += gridDim.x) {
        const unsigned long long x = query[i];
        for (long long j = (triangle ? i + 1 : 0) + threadIdx.x; j < n_base; j += blockDim.x) {
            const int d = __popcll(x ^ base[j]);
            if (d <= max_distance) {
                const unsigned long long slot = atomicAdd(found, 1ULL);
                if (slot < capacity) {
                    out_i[slot] = i;
                    out_j[slot] = j;
                    out_d[slot] = d;
                }
            }
        }
    }
}
"""


@functools.lru_cache(maxsize=None)
def _cuda_kernel():
    import cupy  # noqa: PLC0415

    return cupy.RawKernel(_CUDA_SOURCE, "trainset_hamming_pairs")


def cuda_pairs(hashes, max_distance, base=None, capacity: int = 1 << 20):
    """:func:`hamming_pairs` on the GPU: one CuPy RawKernel (``__popcll``), one block of threads per
    query row, matches appended through an atomic counter into ``capacity`` slots; when more are
    found, it runs again with room for all of them. Needs a working CuPy; not used by the CPU path,
    nor yet by :func:`hamming_pairs` on CuPy, until its GPU parity run is recorded (benchmarks/RESULTS.md).
    """
    import cupy  # noqa: PLC0415

    query = _as_hashes(hashes)
    other = query if base is None else _as_hashes(base)
    if not max_distance >= 0 or len(query) == 0 or len(other) == 0:
        return _no_pairs()
    dq = cupy.asarray(query)
    db = dq if base is None else cupy.asarray(other)
    found = cupy.zeros(1, dtype=cupy.uint64)
    while True:
        out = [cupy.empty(max(capacity, 1), dtype=cupy.int64) for _ in range(3)]
        found.fill(0)
        args = (dq, np.int64(len(query)), db, np.int64(len(other)), np.int32(min(max_distance, 64)),
                np.int32(base is None), *out, found, np.uint64(capacity))
        _cuda_kernel()((min(len(query), 1 << 16),), (256,), args)
        total = int(found.get()[0])
        if total <= capacity:
            break
        capacity = total
    i, j, d = (a[:total] for a in out)
    order = cupy.argsort(i * len(other) + j)
    return tuple(a[order].get() for a in (i, j, d))


# --- multi-index hashing (pigeonhole) -------------------------------------------------------

# Dispatch rule of ``near_pairs`` and ``near_pairs_between`` (see ``pair_method``), measured
# against the compiled brute force on a 2-core CPU (``benchmarks/pairs.py --crossover``):
#: smallest ``n`` (the larger side, for a cross search) for multi-index hashing,
MIH_MIN_N = 5_000
#: smallest smaller side of a cross search for it (each chunk of the larger side is looked up in it),
MIH_MIN_CROSS = 2_000
#: largest ``max_distance`` for it (``t + 1`` chunks of ``64 // (t + 1)`` bits),
MIH_MAX_T = 10
#: and at most this many candidate pairs per distance brute force computes.
MIH_MAX_CANDIDATE_RATIO = 0.25
#: Elements (rows x columns) of one distance block of the blockwise brute force (the CuPy path), per backend.
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




def mih_pairs(hashes, max_distance, base=None, threads: int | None = None):
    """All pairs within ``max_distance`` bits by multi-index hashing; same result as
    :func:`hamming_pairs` (host arrays ``(i, j, distance)``, int64, sorted by (i, j)), for pairs
    ``i < j`` among ``hashes`` or, given ``base``, every (query ``i``, base ``j``).

    Pigeonhole: split the 64 bits into ``m = t + 1`` disjoint chunks; two hashes differing in at most
    ``t`` bits agree exactly on at least one chunk. Per chunk the (base) hashes are sorted by chunk
    value, one ``argsort``; each hash is then compared, by a compiled kernel on ``threads`` threads,
    with the run of equal values it falls in: the rest of its own run within one set, or the run
    ``searchsorted`` finds for a query's chunk value. A pair is kept only under the *first* chunk it
    agrees on, so each pair is reported exactly once without a global de-duplication. Memory is one
    count per hash besides the output (count, then fill), whatever the bucket sizes.

    Always runs on the host, whatever the array backend. ``max_distance >= 64`` (every pair) is
    handed to :func:`hamming_pairs` on the host; a negative one finds nothing.
    """
    query = _as_hashes(hashes)
    other = query if base is None else _as_hashes(base)
    if not max_distance >= 0 or len(query) == 0 or len(other) == 0:
        return _no_pairs()
    t = int(np.floor(min(max_distance, 64)))  # distances are integers: d <= 4.5 iff d <= 4
    if t >= 64:
        return hamming_pairs(query, t, be=HOST, threads=threads, base=base)
    if base is not None and len(other) > len(query):
        # index the smaller side: each chunk sorts it, and the larger side only looks its keys up
        # (a shard against every earlier shard: 5,000 sorted keys instead of a million per chunk)
        j, i, d = mih_pairs(other, t, base=query, threads=threads)
        return _sorted_pairs([i], [j], [d])
    masks = np.array([((1 << w) - 1) << off for off, w in mih_chunks(t)], dtype=np.uint64)
    out_i, out_j, out_d = [], [], []
    for c, (offset, width) in enumerate(progress.bar(mih_chunks(t), desc="hash pairs", unit="chunk")):
        key = _chunk_keys(other, offset, width)
        order = np.argsort(key, kind="stable")  # stable: original indices ascend within a run
        keys = key[order]
        values = other[order]
        if base is None:  # sorted position p against the rest of its run
            rows, lo = values, np.arange(1, len(keys) + 1)
            hi = _run_bounds(keys, keys, width)[1]
        else:
            rows = query
            lo, hi = _run_bounds(keys, _chunk_keys(query, offset, width), width)
        args = (rows, values, lo, hi, np.uint64(t), masks[:c])
        p, j, d = _count_then_fill(len(rows), _count_ranges, _fill_ranges, args, threads, int((hi - lo).sum()))
        out_i.append(order[p] if base is None else p)
        out_j.append(order[j])
        out_d.append(d)
    return _sorted_pairs(out_i, out_j, out_d)


def _chunk_keys(h: np.ndarray, offset: int, width: int) -> np.ndarray:
    return (h >> np.uint64(offset)) & np.uint64((1 << width) - 1)


DIRECT_MAX_WIDTH = 22
"""Chunks up to this many bits are bucketed through a table of ``2**width`` run starts (32 MB at
most): one gather per lookup, several times faster than a binary search for the short chunks
MIH uses at the usual radii (7 bits at t = 8)."""


def _key_counts(keys: np.ndarray, width: int) -> np.ndarray:
    """How many of ``keys`` (each below ``2**width``, ``width <= DIRECT_MAX_WIDTH``) hold each value."""
    return np.bincount(keys.astype(np.int64), minlength=1 << width)


def _run_bounds(sorted_keys: np.ndarray, lookup: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """``[lo, hi)`` of the run of each ``lookup`` value in ``sorted_keys``; what ``searchsorted``
    left and right give."""
    if width > DIRECT_MAX_WIDTH:
        return np.searchsorted(sorted_keys, lookup, side="left"), np.searchsorted(sorted_keys, lookup, side="right")
    starts = np.zeros((1 << width) + 1, dtype=np.int64)
    np.cumsum(_key_counts(sorted_keys, width), out=starts[1:])
    at = lookup.astype(np.int64)
    return starts[at], starts[at + 1]


def mih_candidates(hashes, max_distance: int, base=None) -> int:
    """Candidate pairs :func:`mih_pairs` would check: pairs sharing a bucket, summed over chunks."""
    h = _as_hashes(hashes)
    other = None if base is None else _as_hashes(base)
    total = 0
    for offset, width in mih_chunks(max_distance):
        if other is None:
            key = _chunk_keys(h, offset, width)
            counts = _key_counts(key, width) if width <= DIRECT_MAX_WIDTH else np.unique(key, return_counts=True)[1]
            counts = counts.astype(np.int64)
            total += int((counts * (counts - 1) // 2).sum())
            continue
        # the smaller side's keys counted, looked up by the larger side's keys
        small, large = (h, other) if len(h) < len(other) else (other, h)
        key = _chunk_keys(large, offset, width)
        if width <= DIRECT_MAX_WIDTH:
            total += int(_key_counts(_chunk_keys(small, offset, width), width)[key.astype(np.int64)].sum())
        else:
            values, counts = np.unique(_chunk_keys(small, offset, width), return_counts=True)
            at = np.searchsorted(values, key).clip(max=max(len(values) - 1, 0))
            hit = values[at] == key if len(values) else np.zeros(len(key), dtype=bool)
            total += int(counts[at][hit].sum())
    return total


def pair_method(hashes, max_distance, base=None) -> str:
    """Which kernel :func:`near_pairs` (``base`` None) or :func:`near_pairs_between` uses:
    ``"mih"`` or ``"brute"``.

    Rule: multi-index hashing when ``n >= MIH_MIN_N`` (5000; in a cross search the larger side, and
    the smaller at least ``MIH_MIN_CROSS``, 2000: the smaller side is the one indexed),
    ``0 <= max_distance <= MIH_MAX_T`` (10) and the candidate pairs it would check
    (:func:`mih_candidates`) are at most ``MIH_MAX_CANDIDATE_RATIO`` (0.25) of the distances brute
    force computes (``n (n - 1) / 2``, or ``n_query * n_base``); brute force otherwise.

    On random hashes that ratio is the sum of ``2**-width`` over the chunks: 0.07 % at t = 4, 6.6 %
    at t = 8, 20 % at t = 10, 31 % at t = 11. Both kernels are compiled and a candidate costs about
    what a brute-force distance does, so MIH wins while the ratio is well below one, less its
    ``t + 1`` sorts. Measured on 2 cores (min of 3-5 runs, other jobs running): from n = 5,000 MIH
    is faster up to t = 6 (5,000, t = 4: 3 ms vs 5 ms), from 10,000 up to t = 10 (100,000,
    t = 10: 0.87 s vs 3.7 s; t = 12 about even), and so in a cross search of 5,000 or 20,000
    against 100,000 up to t = 10 (20,000 x 100,000, t = 10: 1.0 s vs 1.3 s). Against 200,000, from
    2,000 up to t = 8 (4,900: t = 4, 47 ms vs 776 ms; t = 8, 0.41 s vs 0.70 s). The candidate guard
    sends inputs dominated by identical or clustered hashes (one huge bucket in every chunk) to
    brute force, which compares each pair once instead of up to ``t + 1`` times. With a GPU
    backend brute force is much faster and the crossover has not been measured.
    """
    n_query = len(hashes)
    if base is None:
        small = n_query if n_query >= MIH_MIN_N else 0
    else:
        sizes = sorted((n_query, len(base)))
        small = sizes[0] if sizes[0] >= MIH_MIN_CROSS and sizes[1] >= MIH_MIN_N else 0
    if not small or not 0 <= max_distance <= MIH_MAX_T:
        return "brute"
    comparisons = n_query * (n_query - 1) / 2 if base is None else float(n_query) * len(base)
    ratio = mih_candidates(hashes, int(np.floor(max_distance)), base) / comparisons
    return "mih" if ratio <= MIH_MAX_CANDIDATE_RATIO else "brute"


def near_pairs(hashes, max_distance, be: Backend | None = None, threads: int | None = None):
    """All pairs (i < j) within ``max_distance`` bits, by the kernel :func:`pair_method` picks.

    Both kernels return identical host arrays ``(i, j, distance)``, int64, sorted by (i, j).
    Multi-index hashing (:func:`mih_pairs`) runs on the host whatever ``be`` is; brute force runs
    :func:`hamming_pairs` on ``be`` (default: :func:`backend`, CuPy when usable). The choice is logged
    at DEBUG level on ``trainset.kernels``.
    """
    return _near(hashes, None, max_distance, be, threads)


def near_pairs_between(query, base, max_distance, be: Backend | None = None, threads: int | None = None):
    """Every pair of a ``query`` hash and a ``base`` hash within ``max_distance`` bits (no ``i < j``):
    host arrays ``(qi, bj, distance)``, int64, sorted by (qi, bj); for deduplicating new items against
    kept ones without searching the kept ones again. Kernel choice as in :func:`near_pairs`.
    """
    return _near(query, base, max_distance, be, threads)


def _near(hashes, base, max_distance, be: Backend | None, threads: int | None):
    be = be or backend()
    method = pair_method(hashes, max_distance, base=base)
    if base is None:
        log.debug("near_pairs: n=%d max_distance=%s -> %s", len(hashes), max_distance, method)
    else:
        log.debug("near_pairs_between: n=%d x %d max_distance=%s -> %s", len(hashes), len(base), max_distance, method)
    if method == "mih":
        return mih_pairs(hashes, max_distance, base=base, threads=threads)
    width = max(len(hashes) if base is None else len(base), 1)
    block = max(1, min(2048, BRUTE_BLOCK_ELEMENTS.get(be.name, BRUTE_BLOCK_ELEMENTS["numpy"]) // width))
    return hamming_pairs(hashes, max_distance, block=block, be=be, threads=threads, base=base)


# --- MinHash signatures (datasketch 2.0) ----------------------------------------------------

#: Permutation schemes of ``datasketch.MinHash`` reproduced here. ``affine32`` is datasketch 2.0's
#: default: each 32-bit shingle hash is pre-mixed once by the MurmurHash3 32-bit finalizer, then
#: permuted by ``a_k * h + b_k mod 2**32`` (``a_k`` odd: a bijection), in uint32 wraparound
#: arithmetic. ``legacy`` is the pre-2.0 scheme: ``(a_k * h + b_k) mod (2**61 - 1)`` in uint64
#: wraparound arithmetic (the product overflows exactly as NumPy's does there), truncated to 32 bits.
MINHASH_SCHEMES = ("affine32", "legacy")
MINHASH_EMPTY = np.uint32(0xFFFFFFFF)
"""Every value of the signature of an empty set (datasketch's initial hash values)."""
_MERSENNE_61 = np.uint64((1 << 61) - 1)
_MASK_32 = np.uint64(0xFFFFFFFF)
#: Elements of one ``(docs, shingles, perms)`` block of the blockwise kernel, per backend.
MINHASH_BLOCK_ELEMENTS = {"numpy": 1 << 22, "cupy": 1 << 27}


@functools.lru_cache(maxsize=64)
def minhash_permutations(num_perm: int, seed: int, scheme: str = "affine32") -> tuple[np.ndarray, np.ndarray]:
    """``(a, b)`` of datasketch's ``MinHash(num_perm, seed, scheme)``, drawn from the same
    ``np.random.RandomState(seed)`` calls in the same order, so signatures compare with its own.
    uint32 for ``affine32``, uint64 for ``legacy``; read-only."""
    _check_scheme(scheme)
    if num_perm < 1:
        raise ValueError(f"num_perm must be positive, got {num_perm}")
    gen = np.random.RandomState(seed)
    if scheme == "legacy":
        pairs = [(gen.randint(1, _MERSENNE_61, dtype=np.uint64), gen.randint(0, _MERSENNE_61, dtype=np.uint64))
                 for _ in range(num_perm)]
        a, b = np.array(pairs, dtype=np.uint64).T.copy()
    else:
        a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
        b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    for x in (a, b):
        x.setflags(write=False)
    return a, b


def _check_scheme(scheme: str) -> None:
    if scheme not in MINHASH_SCHEMES:
        raise ValueError(f"unknown MinHash scheme {scheme!r}: one of {', '.join(MINHASH_SCHEMES)}")


def fmix32(h, xp):
    """MurmurHash3's 32-bit finalizer on uint32 values (wrapping multiplies): datasketch's pre-mix."""
    h = h ^ (h >> xp.uint32(16))
    h = h * xp.uint32(0x85EBCA6B)
    h = h ^ (h >> xp.uint32(13))
    h = h * xp.uint32(0xC2B2AE35)
    return h ^ (h >> xp.uint32(16))


def _minhash_inputs(hashes, offsets) -> tuple[np.ndarray, np.ndarray]:
    hashes = np.ascontiguousarray(hashes, dtype=np.uint32).ravel()
    offsets = np.ascontiguousarray(offsets, dtype=np.int64).ravel()
    if len(offsets) == 0 or offsets[0] != 0 or offsets[-1] != len(hashes) or np.any(np.diff(offsets) < 0):
        raise ValueError("offsets must rise from 0 to len(hashes): document d owns hashes[offsets[d]:offsets[d + 1]]")
    return hashes, offsets


def minhash_signatures(hashes, offsets, num_perm: int = 128, seed: int = 1, scheme: str = "affine32",
                       be: Backend | None = None, threads: int | None = None) -> np.ndarray:
    """MinHash signatures of many documents at once: ``(docs, num_perm)`` uint32 on the host, equal value
    for value to ``datasketch.MinHash(num_perm, seed, scheme=scheme)`` after ``update_batch`` of each
    document's shingles (a document without shingles gets datasketch's empty signature, all
    ``MINHASH_EMPTY``).

    ``hashes``: the 32-bit shingle hashes (datasketch's ``sha1_hash32``) of all documents end to end;
    document ``d`` owns ``hashes[offsets[d]:offsets[d + 1]]``. On NumPy a compiled numba kernel runs
    on ``threads`` threads; on CuPy, :func:`minhash_blockwise`. Both use integer arithmetic only.
    """
    _check_scheme(scheme)
    be = be or backend()
    hashes, offsets = _minhash_inputs(hashes, offsets)
    if be.name != "numpy":
        return minhash_blockwise(hashes, offsets, num_perm, seed, scheme, be=be)
    a, b = minhash_permutations(num_perm, seed, scheme)
    out = np.empty((len(offsets) - 1, num_perm), dtype=np.uint32)
    work = len(hashes) * num_perm
    with _numba_threads(1 if work < PARALLEL_MIN_WORK // 16 else threads):
        if scheme == "legacy":
            _minhash_legacy(hashes.astype(np.uint64), offsets, a, b, out)
        else:
            _minhash_affine32(fmix32(hashes, np), offsets, a, b, out)
    return out


@numba.njit(parallel=True, cache=True, nogil=True)
def _minhash_affine32(mixed, offsets, a, b, out):
    """Per document: the minimum of ``a * h + b mod 2**32`` over its pre-mixed hashes ``h``."""
    num_perm = a.shape[0]
    for d in numba.prange(offsets.shape[0] - 1):
        row = np.full(num_perm, MINHASH_EMPTY, dtype=np.uint32)
        for s in range(offsets[d], offsets[d + 1]):
            h = np.uint64(mixed[s])
            for p in range(num_perm):
                v = np.uint32((np.uint64(a[p]) * h + np.uint64(b[p])) & _MASK_32)
                if v < row[p]:
                    row[p] = v
        out[d, :] = row


@numba.njit(parallel=True, cache=True, nogil=True)
def _minhash_legacy(hashes, offsets, a, b, out):
    """Per document: the minimum of ``((a * h + b) wrapped to 64 bits) mod (2**61 - 1)``, low 32 bits."""
    num_perm = a.shape[0]
    for d in numba.prange(offsets.shape[0] - 1):
        row = np.full(num_perm, MINHASH_EMPTY, dtype=np.uint32)
        for s in range(offsets[d], offsets[d + 1]):
            h = hashes[s]
            for p in range(num_perm):
                v = np.uint32(((a[p] * h + b[p]) % _MERSENNE_61) & _MASK_32)
                if v < row[p]:
                    row[p] = v
        out[d, :] = row


def minhash_blockwise(hashes, offsets, num_perm: int = 128, seed: int = 1, scheme: str = "affine32",
                      be: Backend | None = None, block_elements: int | None = None) -> np.ndarray:
    """What :func:`minhash_signatures` returns, on ``be.xp``: the CuPy path, and on NumPy the reference
    the compiled kernels are tested against.

    Documents are taken shortest first in blocks of about ``block_elements`` (documents x longest
    document x ``num_perm``) values; within a block each document's hashes are padded to the longest
    by repeating its own first hash, which leaves every minimum unchanged, so one broadcast
    ``a * h + b`` and one ``min`` over the shingle axis sign the whole block.
    """
    _check_scheme(scheme)
    be = be or backend()
    xp = be.xp
    hashes, offsets = _minhash_inputs(hashes, offsets)
    lengths = np.diff(offsets)
    out = np.full((len(lengths), num_perm), MINHASH_EMPTY, dtype=np.uint32)
    order = np.argsort(lengths, kind="stable")
    order = order[lengths[order] > 0]
    if len(order) == 0:
        return out
    a, b = (xp.asarray(x) for x in minhash_permutations(num_perm, seed, scheme))
    values = xp.asarray(hashes.astype(np.uint64)) if scheme == "legacy" else fmix32(xp.asarray(hashes), xp)
    budget = block_elements or MINHASH_BLOCK_ELEMENTS.get(be.name, MINHASH_BLOCK_ELEMENTS["numpy"])
    blocks = progress.bar(_minhash_blocks(lengths[order], budget // num_perm), desc="minhash", unit="block")
    for docs in blocks:
        docs = order[docs]
        width = int(lengths[docs[-1]])
        gather = offsets[docs][:, None] + np.minimum(np.arange(width)[None, :], lengths[docs][:, None] - 1)
        h = values[xp.asarray(gather)][:, :, None]
        if scheme == "legacy":
            permuted = ((h * a + b) % xp.uint64(_MERSENNE_61)) & xp.uint64(_MASK_32)
        else:
            permuted = h * a + b
        out[docs] = be.to_host(permuted.min(axis=1)).astype(np.uint32)
    return out


def _minhash_blocks(sorted_lengths: np.ndarray, budget: int):
    """Slices of documents (ascending lengths) whose padded block holds at most ``budget`` hashes
    (at least one document a block)."""
    start = 0
    while start < len(sorted_lengths):
        stop = start + 1
        while stop < len(sorted_lengths) and (stop + 1 - start) * sorted_lengths[stop] <= budget:
            stop += 1
        yield slice(start, stop)
        start = stop


# --- SHA-1 of many short byte strings (datasketch's sha1_hash32) ----------------------------

_M32 = 0xFFFFFFFF
_SHA1_CHUNK = 4096
"""Strings one parallel task hashes (one scratch schedule each)."""


@numba.njit(cache=True, nogil=True, inline="always")
def _rotl32(x, n):
    return ((x << n) | (x >> (32 - n))) & _M32


@numba.njit(cache=True, nogil=True)
def _sha1_block(data, start, length, blk, total, block):
    """Bytes ``64 blk .. 64 blk + 63`` of the padded message: data, 0x80, zeros, bit length (big-endian)."""
    base = blk * 64
    for k in range(64):
        i = base + k
        if i < length:
            block[k] = data[start + i]
        elif i == length:
            block[k] = 0x80
        elif i >= total - 8:
            block[k] = ((length * 8) >> (8 * (total - 1 - i))) & 0xFF
        else:
            block[k] = 0


@numba.njit(cache=True, nogil=True)
def _sha1_first_word(data, start, length, w, block):
    """The first 32-bit word of SHA-1 of ``data[start:start + length]`` (FIPS 180-4), in int64
    arithmetic masked to 32 bits (every intermediate stays below 2**63)."""
    h0, h1, h2, h3, h4 = 0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0
    blocks = (length + 8) // 64 + 1
    for blk in range(blocks):
        _sha1_block(data, start, length, blk, blocks * 64, block)
        for t in range(16):
            w[t] = (np.int64(block[4 * t]) << 24) | (np.int64(block[4 * t + 1]) << 16) \
                | (np.int64(block[4 * t + 2]) << 8) | np.int64(block[4 * t + 3])
        for t in range(16, 80):
            w[t] = _rotl32(w[t - 3] ^ w[t - 8] ^ w[t - 14] ^ w[t - 16], 1)
        a, b, c, d, e = h0, h1, h2, h3, h4
        for t in range(20):
            temp = (_rotl32(a, 5) + ((b & c) | ((b ^ _M32) & d)) + e + 0x5A827999 + w[t]) & _M32
            e, d, c, b, a = d, c, _rotl32(b, 30), a, temp
        for t in range(20, 40):
            temp = (_rotl32(a, 5) + (b ^ c ^ d) + e + 0x6ED9EBA1 + w[t]) & _M32
            e, d, c, b, a = d, c, _rotl32(b, 30), a, temp
        for t in range(40, 60):
            temp = (_rotl32(a, 5) + ((b & c) | (b & d) | (c & d)) + e + 0x8F1BBCDC + w[t]) & _M32
            e, d, c, b, a = d, c, _rotl32(b, 30), a, temp
        for t in range(60, 80):
            temp = (_rotl32(a, 5) + (b ^ c ^ d) + e + 0xCA62C1D6 + w[t]) & _M32
            e, d, c, b, a = d, c, _rotl32(b, 30), a, temp
        h0, h1, h2, h3, h4 = (h0 + a) & _M32, (h1 + b) & _M32, (h2 + c) & _M32, (h3 + d) & _M32, (h4 + e) & _M32
    return h0


@numba.njit(parallel=True, cache=True, nogil=True)
def _sha1_hash32_kernel(data, offsets, out):
    n = offsets.shape[0] - 1
    for chunk in numba.prange((n + _SHA1_CHUNK - 1) // _SHA1_CHUNK):
        w = np.empty(80, dtype=np.int64)
        block = np.empty(64, dtype=np.uint8)
        for s in range(chunk * _SHA1_CHUNK, min(n, (chunk + 1) * _SHA1_CHUNK)):
            h = _sha1_first_word(data, offsets[s], offsets[s + 1] - offsets[s], w, block)
            # datasketch reads the digest's first four bytes little-endian: the word byte-swapped
            out[s] = np.uint32(((h & 0xFF) << 24) | ((h & 0xFF00) << 8) | ((h >> 8) & 0xFF00) | (h >> 24))


def sha1_hash32_batch(data, offsets, threads: int | None = None) -> np.ndarray:
    """``datasketch.hashfunc.sha1_hash32`` of many byte strings at once (uint32, host): string ``s`` is
    ``data[offsets[s]:offsets[s + 1]]`` of one uint8 buffer. A compiled SHA-1, checked against
    ``hashlib`` by the tests; several times faster than a ``hashlib`` call per string, whose cost is
    mostly Python's per-call overhead on strings this short."""
    data = np.ascontiguousarray(np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray)) else data,
                                dtype=np.uint8)
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    out = np.empty(max(len(offsets) - 1, 0), dtype=np.uint32)
    if len(out):
        with _numba_threads(1 if len(out) < _SHA1_CHUNK else threads):
            _sha1_hash32_kernel(data, offsets, out)
    return out
