"""Cosine-similarity pairs of embeddings, exact or partitioned by spherical k-means (SemDeDup).

Everything runs on the shared array module (:func:`trainset.kernels.backend`: NumPy, or CuPy
on a GPU). The embeddings stay in their own dtype (float32 stays float32, so a million 1280-d
vectors take 5 GB, not 10); each tile of rows is taken to float64, scaled to unit length and
multiplied in float64. So CPU and GPU give the same pairs except where a cosine lies within
about 1e-12 of the threshold (the two BLAS libraries sum in different orders), and the
cosines agree to that precision. Results come back as host (NumPy) arrays. A zero row has
cosine 0 with everything.
"""

from __future__ import annotations

import math

import numpy as np

from . import progress
from .kernels import Backend, backend

#: Elements of one float64 similarity tile, per backend: 2048 x 2048 (32 MiB) on the CPU.
BLOCK_ELEMENTS = {"numpy": 1 << 22, "cupy": 1 << 26}
DEFAULT_ITERS = 20
#: k-means fits its centroids on at most this many rows per centroid (a seeded sample), as FAISS does.
MAX_POINTS_PER_CENTROID = 256
_HOST_CHUNK = 1 << 16  # rows at once when checking norms and summing clusters


class _Rows:
    """Embeddings on the device plus float64 inverse row norms; tiles come out as float64 unit rows."""

    def __init__(self, x, inv, be: Backend):
        self.x, self.inv, self.be = x, inv, be

    @classmethod
    def of(cls, emb, be: Backend) -> "_Rows":
        xp = be.xp
        x = xp.asarray(emb)
        if x.ndim != 2:
            raise ValueError(f"embeddings must be a 2-d array (items, dim), got shape {tuple(x.shape)}")
        if x.dtype != xp.float32:
            x = x.astype(xp.float64)
        norms = xp.zeros(len(x), dtype=xp.float64)
        for s in range(0, len(x), _HOST_CHUNK):  # a chunk at a time: no float64 copy of everything
            part = x[s : s + _HOST_CHUNK].astype(xp.float64)
            if not bool(xp.isfinite(part).all()):
                raise ValueError("embeddings contain NaN or infinity")
            norms[s : s + _HOST_CHUNK] = xp.sqrt((part * part).sum(axis=1))
        return cls(x, xp.where(norms > 0, 1.0 / xp.where(norms > 0, norms, 1.0), 0.0), be)

    def __len__(self) -> int:
        return len(self.x)

    def tile(self, start: int, stop: int):
        return self.x[start:stop].astype(self.be.xp.float64) * self.inv[start:stop, None]

    def take(self, rows: np.ndarray) -> "_Rows":
        idx = self.be.xp.asarray(rows)
        return _Rows(self.x[idx], self.inv[idx], self.be)


def _empty():
    z = np.zeros(0, dtype=np.int64)
    return z, z.copy(), np.zeros(0, dtype=np.float64)


def _side(be: Backend, block: int | None) -> int:
    """Rows (and columns) of one tile."""
    if block:
        return max(1, int(block))
    return max(1, math.isqrt(BLOCK_ELEMENTS.get(be.name, BLOCK_ELEMENTS["numpy"])))


def _sorted(out, be: Backend):
    """Concatenate device parts (i, j, cos) on the host, sorted by (i, j)."""
    if not out:
        return _empty()
    i, j, c = (np.concatenate([be.to_host(part[k]) for part in out]) for k in range(3))
    order = np.lexsort((j, i))
    return i[order].astype(np.int64), j[order].astype(np.int64), c[order].astype(np.float64)


def _within(rows: _Rows, threshold: float, block: int | None, show: bool = True):
    """Pairs i < j with cos >= threshold, tile by tile over the upper triangle (a progress bar of
    tiles unless ``show`` is False)."""
    be, xp, n = rows.be, rows.be.xp, len(rows)
    side = _side(be, block)
    strips = -(-n // side)
    out = []
    with progress.bar(total=strips * (strips + 1) // 2, desc="cosine pairs", unit="tile", show=show) as shown:
        for r0 in range(0, n, side):
            r1 = min(r0 + side, n)
            a = rows.tile(r0, r1)
            for c0 in range(r0, n, side):
                c1 = min(c0 + side, n)
                sims = a @ rows.tile(c0, c1).T
                hit = sims >= threshold
                if c0 == r0:  # the diagonal tile: only j > i
                    hit &= xp.arange(c1 - c0)[None, :] > xp.arange(r1 - r0)[:, None]
                ii, jj = xp.nonzero(hit)
                if len(ii):
                    out.append((ii + r0, jj + c0, sims[ii, jj]))
                shown.update()
    return _sorted(out, be)


def _between(q: _Rows, b: _Rows, threshold: float, block: int | None, show: bool = True):
    """All (qi, bj) with cos >= threshold (a progress bar of tiles unless ``show`` is False)."""
    be, xp = q.be, q.be.xp
    side = _side(be, block)
    out = []
    with progress.bar(total=-(-len(q) // side) * -(-len(b) // side), desc="cosine pairs", unit="tile", show=show) as shown:
        for r0 in range(0, len(q), side):
            a = q.tile(r0, min(r0 + side, len(q)))
            for c0 in range(0, len(b), side):
                sims = a @ b.tile(c0, min(c0 + side, len(b))).T
                ii, jj = xp.nonzero(sims >= threshold)
                if len(ii):
                    out.append((ii + r0, jj + c0, sims[ii, jj]))
                shown.update()
    return _sorted(out, be)


def cosine_pairs(emb, threshold: float, be: Backend | None = None, block: int | None = None):
    """All pairs ``i < j`` with cosine >= ``threshold``: host arrays ``(i, j, cos)`` sorted by (i, j).

    Tile by tile over the upper triangle, ``block`` x ``block`` similarities at a time (default:
    ``isqrt(BLOCK_ELEMENTS[be.name])``), so memory beyond the embeddings is a few tiles plus the
    output.
    """
    be = be or backend()
    return _within(_Rows.of(emb, be), threshold, block)


def cosine_pairs_between(query, base, threshold: float, be: Backend | None = None, block: int | None = None):
    """Every (query row, base row) with cosine >= ``threshold``: host arrays ``(qi, bj, cos)``
    sorted by (qi, bj). For incremental runs: a new batch against an existing index."""
    be = be or backend()
    return _between(_Rows.of(query, be), _Rows.of(base, be), threshold, block)


# --------------------------------------------------------------------------- spherical k-means


def _top_centroids(rows: _Rows, centroids, probes: int, block: int | None = None):
    """Per row: the ``probes`` most similar centroids (host int64, best first, ties to the lower
    index) and the similarity to the best one (host float64)."""
    be, xp, n = rows.be, rows.be.xp, len(rows)
    probes = max(1, min(int(probes), len(centroids)))
    top = np.empty((n, probes), dtype=np.int64)
    best = np.empty(n, dtype=np.float64)
    step = block or max(1, BLOCK_ELEMENTS.get(be.name, BLOCK_ELEMENTS["numpy"]) // max(len(centroids), rows.x.shape[1], 1))
    for start in range(0, n, step):
        sims = rows.tile(start, min(start + step, n)) @ centroids.T
        r = xp.arange(len(sims))
        for p in range(probes):
            arg = xp.argmax(sims, axis=1)  # first maximum: the same tie-break on NumPy and CuPy
            if p == 0:
                best[start : start + len(sims)] = be.to_host(sims[r, arg])
            top[start : start + len(sims), p] = be.to_host(arg)
            sims[r, arg] = -xp.inf
    return top, best


def _squared_distance_to(rows: _Rows, centre):
    """2 - 2 cos to one unit vector for every row (device float64, clipped at 0). The product runs
    in the rows' own dtype: it only weights the k-means++ draws, and needs no float64 copy."""
    xp = rows.be.xp
    sims = (rows.x @ centre.astype(rows.x.dtype)).astype(xp.float64) * rows.inv
    return xp.maximum(2.0 - 2.0 * sims, 0.0)


def _plus_plus(rows: _Rows, k: int, rng: np.random.Generator):
    """Seeded k-means++: each next centre drawn with probability ~ squared distance to the nearest
    centre so far; the draws and the cumulative sum run on the host."""
    be, xp, n = rows.be, rows.be.xp, len(rows)
    chosen = [int(rng.integers(n))]
    d2 = _squared_distance_to(rows, rows.tile(chosen[0], chosen[0] + 1)[0])
    for _ in range(1, k):
        weights = np.cumsum(be.to_host(d2))
        total = float(weights[-1])
        if total > 0:
            pick = min(int(np.searchsorted(weights, rng.random() * total, side="right")), n - 1)
        else:  # every row sits on a centre already: any row will do
            pick = int(rng.integers(n))
        chosen.append(pick)
        d2 = xp.minimum(d2, _squared_distance_to(rows, rows.tile(pick, pick + 1)[0]))
    return xp.concatenate([rows.tile(c, c + 1) for c in chosen])


def _cluster_sums(host: _Rows, labels: np.ndarray, k: int) -> np.ndarray:
    """Sum of unit rows per cluster, on the host in label order, a chunk of rows at a time
    (sequential reductions: deterministic, and no float64 copy of all rows)."""
    order = np.argsort(labels, kind="stable")
    sums = np.zeros((k, host.x.shape[1]), dtype=np.float64)
    for s in range(0, len(order), _HOST_CHUNK):
        idx = order[s : s + _HOST_CHUNK]
        lab = labels[idx]
        starts = np.flatnonzero(np.concatenate(([True], lab[1:] != lab[:-1])))
        unit = host.x[idx].astype(np.float64) * host.inv[idx, None]
        sums[lab[starts]] += np.add.reduceat(unit, starts, axis=0)  # labels within a chunk are distinct
    return sums


def _host(rows: _Rows) -> _Rows:
    be = rows.be
    return rows if be.name == "numpy" else _Rows(be.to_host(rows.x), be.to_host(rows.inv), Backend(np, "numpy", "host copy"))


def _train(rows: _Rows, k: int, seed: int, iters: int, max_points_per_centroid: int | None):
    """Centroids (device float64 unit rows) fitted on a seeded sample of at most
    ``max_points_per_centroid * k`` rows (all rows when that is None or not fewer)."""
    xp, n = rows.be.xp, len(rows)
    rng = np.random.default_rng(seed)
    if max_points_per_centroid and n > max_points_per_centroid * k:
        rows = rows.take(np.sort(rng.choice(n, size=max_points_per_centroid * k, replace=False)))
    host = _host(rows)
    centroids = _plus_plus(rows, k, rng)
    labels = None
    for _ in progress.bar(range(max(1, int(iters))), desc="k-means", unit="iter"):
        top, best = _top_centroids(rows, centroids, 1)
        if labels is not None and np.array_equal(top[:, 0], labels):
            break
        labels = top[:, 0]
        sums = _cluster_sums(host, labels, k)
        empty = np.flatnonzero(np.bincount(labels, minlength=k) == 0)
        if len(empty):  # re-seed each empty cluster with a row least similar to its centre
            far = np.argsort(best, kind="stable")[: len(empty)]
            sums[empty] = host.x[far].astype(np.float64) * host.inv[far, None]
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        centroids = xp.asarray(sums / np.where(norms > 0, norms, 1.0))
    return centroids


def kmeans(
    emb, k: int, seed: int = 0, iters: int = DEFAULT_ITERS, be: Backend | None = None,
    max_points_per_centroid: int | None = MAX_POINTS_PER_CENTROID,
):
    """Spherical k-means: ``(centroids, labels)`` as host arrays, float64 (k, dim) unit rows and
    int64 (n,), each row labelled with its most similar centroid.

    Seeded k-means++ start, then at most ``iters`` rounds of assign-to-most-similar-centroid and
    mean-direction update, stopping early when no label changes. Like FAISS, the centroids are
    fitted on a seeded sample of ``max_points_per_centroid * k`` rows when there are more (None:
    all rows); every row is then assigned. Deterministic for a seed: the random draws come from
    ``numpy.random.default_rng(seed)`` on the host, argmax ties go to the lower centroid, cluster
    sums are sequential host reductions, and an empty cluster is re-seeded with a row least
    similar to its centroid. ``k`` is capped at the number of rows. (The k-means++ weights are
    computed in the embeddings' dtype, so a GPU may draw other seeds than the CPU in rare cases.)
    """
    be = be or backend()
    rows = _Rows.of(emb, be)
    if len(rows) == 0:
        return np.zeros((0, rows.x.shape[1]), dtype=np.float64), np.zeros(0, dtype=np.int64)
    k = max(1, min(int(k), len(rows)))
    centroids = _train(rows, k, seed, iters, max_points_per_centroid)
    return be.to_host(centroids).astype(np.float64), _top_centroids(rows, centroids, 1)[0][:, 0]


def _groups(keys: np.ndarray, values: np.ndarray, k: int) -> list[np.ndarray]:
    """``values`` grouped by ``keys`` in 0..k-1, each group in its original order."""
    order = np.argsort(keys, kind="stable")
    bounds = np.searchsorted(keys[order], np.arange(k + 1))
    return [values[order[bounds[c] : bounds[c + 1]]] for c in range(k)]


def semdedup_pairs(
    emb, threshold: float, n_clusters: int, seed: int = 0, probes: int = 1, be: Backend | None = None,
    iters: int = DEFAULT_ITERS, block: int | None = None, max_points_per_centroid: int | None = MAX_POINTS_PER_CENTROID,
):
    """Pairs ``i < j`` with cosine >= ``threshold`` searched only within k-means clusters
    (SemDeDup): host arrays ``(i, j, cos)`` sorted by (i, j), like :func:`cosine_pairs`.

    Every row has a home cluster (its most similar centroid, from :func:`kmeans`). Pairs are compared exactly within
    each home cluster, and with ``probes > 1`` every row is also compared against the home
    members of its next ``probes - 1`` most similar centroids, which catches most pairs that a
    cluster boundary splits. Work is about ``sum(size**2)`` instead of ``n**2``; every pair
    reported is a true one (exact cosine), some may be missed (recall < 1). ``n_clusters <= 1``
    is :func:`cosine_pairs` itself.
    """
    be = be or backend()
    if n_clusters <= 1:
        return cosine_pairs(emb, threshold, be=be, block=block)
    rows = _Rows.of(emb, be)
    n = len(rows)
    if n < 2:
        return _empty()
    k = min(int(n_clusters), n)
    top, _ = _top_centroids(rows, _train(rows, k, seed, iters, max_points_per_centroid), probes)
    homes = _groups(top[:, 0], np.arange(n), k)
    visits = _groups(top[:, 1:].ravel(), np.repeat(np.arange(n), top.shape[1] - 1), k)
    out = []
    for members, visitors in progress.bar(zip(homes, visits), total=k, desc="cosine pairs", unit="cluster"):
        if len(members) == 0:
            continue
        sub = rows.take(members)
        i, j, cos = _within(sub, threshold, block, show=False)
        out.append((members[i], members[j], cos))
        if len(visitors):
            qi, bj, cos = _between(rows.take(visitors), sub, threshold, block, show=False)
            a, b = visitors[qi], members[bj]
            out.append((np.minimum(a, b), np.maximum(a, b), cos))
    i, j, cos = (np.concatenate([part[m] for part in out]) for m in range(3))
    keys, first = np.unique(i * n + j, return_index=True)  # sorted by (i, j); a pair met twice counts once
    return (keys // n).astype(np.int64), (keys % n).astype(np.int64), cos[first].astype(np.float64)
