"""MinHash signatures and LSH banding for conversations, equal to datasketch 2.0's own.

A conversation's text is the content of its messages (for a DPO pair: the prompt and the chosen
reply) in canonical form (:func:`~trainset.conversations.canonical.canonical_text`: NFKC,
whitespace collapsed, case folded when asked), joined with newlines. Its shingles are word
``n``-grams joined by single spaces, UTF-8 encoded; a text of fewer than ``n`` words is one
shingle, and an empty text has none.

Signatures follow datasketch's default ``affine32`` scheme (``legacy`` on request): each shingle
is hashed by datasketch's ``sha1_hash32`` (the first four bytes of its SHA-1, little-endian),
here by a compiled SHA-1 over all shingles of a batch at once, and the permutation minimum runs
in :func:`trainset.kernels.minhash_signatures`. So a signature equals
``datasketch.MinHash(num_perm, seed).update_batch(shingles)`` value for value, and the LSH bands
are chosen as ``datasketch.MinHashLSH`` chooses them, so the candidates it would return are the
candidates found here.
"""

from __future__ import annotations

import functools
import hashlib
import json
import operator
from collections.abc import Sequence

import numpy as np
from scipy.integrate import quad

from .. import kernels
from ..kernels import Backend
from .canonical import canonical_text

_DIGEST = operator.methodcaller("digest")


def conversation_text(conversation: dict, casefold: bool = True) -> str:
    """The text dedup compares: each message's canonical content, one message a line."""
    return "\n".join(text for _, text in json.loads(canonical_text(conversation["messages"], casefold)))


def shingles(text: str, n: int = 5) -> list[bytes]:
    """Word ``n``-grams of ``text`` as UTF-8 bytes (one shingle when shorter, none when empty)."""
    words = text.split()
    if len(words) < n:
        return [" ".join(words).encode("utf-8")] if words else []
    return list(map(str.encode, map(" ".join, zip(*(words[k:] for k in range(n))))))


def shingle_hashes(shingle_lists: Sequence[Sequence[bytes]], method: str = "numba") -> tuple[np.ndarray, np.ndarray]:
    """``(hashes, offsets)`` for :func:`trainset.kernels.minhash_signatures`: datasketch's
    ``sha1_hash32`` of every shingle, documents end to end. ``numba`` hashes one joined buffer with
    the compiled SHA-1 (:func:`trainset.kernels.sha1_hash32_batch`); ``hashlib`` joins the digests of
    one ``hashlib.sha1`` call per shingle (the reference, same values)."""
    counts = np.fromiter(map(len, shingle_lists), dtype=np.int64, count=len(shingle_lists))
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    flat = [s for doc in shingle_lists for s in doc]
    if method == "hashlib":
        digests = np.frombuffer(b"".join(map(_DIGEST, map(hashlib.sha1, flat))), dtype=np.uint8)
        return digests.reshape(-1, 20)[:, :4].copy().view("<u4").ravel().astype(np.uint32), offsets
    if method != "numba":
        raise ValueError(f"unknown shingle hashing method {method!r}: numba or hashlib")
    ends = np.zeros(len(flat) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, flat), dtype=np.int64, count=len(flat)), out=ends[1:])
    return kernels.sha1_hash32_batch(b"".join(flat), ends), offsets


def signatures_of_shingles(shingle_lists: Sequence[Sequence[bytes]], num_perm: int = 128, seed: int = 1,
                           scheme: str = "affine32", be: Backend | None = None, threads: int | None = None) -> np.ndarray:
    """``(docs, num_perm)`` uint32: ``MinHash(num_perm, seed, scheme=scheme).update_batch(shingles)``
    of each document (``threads``: the CPU kernel's, None: numba's default)."""
    hashes, offsets = shingle_hashes(shingle_lists)
    return kernels.minhash_signatures(hashes, offsets, num_perm, seed, scheme, be=be, threads=threads)


def signatures(texts: Sequence[str], shingle: int = 5, num_perm: int = 128, seed: int = 1,
               scheme: str = "affine32", be: Backend | None = None, threads: int | None = None) -> np.ndarray:
    """Signatures of texts (already in canonical form: :func:`conversation_text`)."""
    return signatures_of_shingles([shingles(t, shingle) for t in texts], num_perm, seed, scheme, be, threads)


def is_empty(sigs: np.ndarray) -> np.ndarray:
    """Rows that are the signature of no shingles: nothing to compare, never a near duplicate."""
    return np.all(np.asarray(sigs) == kernels.MINHASH_EMPTY, axis=1)


# --- LSH banding -----------------------------------------------------------------------------


def _false_positive(threshold: float, b: int, r: int) -> float:
    return quad(lambda s: 1 - (1 - s ** float(r)) ** float(b), 0.0, threshold)[0]


def _false_negative(threshold: float, b: int, r: int) -> float:
    return quad(lambda s: 1 - (1 - (1 - s ** float(r)) ** float(b)), threshold, 1.0)[0]


@functools.lru_cache(maxsize=64)
def optimal_bands(threshold: float, num_perm: int, weights: tuple[float, float] = (0.5, 0.5)) -> tuple[int, int]:
    """``(bands, rows)`` minimising the weighted false positive and false negative probabilities, by
    the same search and integrals as datasketch's ``MinHashLSH`` (its ``_optimal_param``), so an
    index built here buckets exactly as datasketch's would."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    if num_perm < 2:
        raise ValueError("LSH needs num_perm >= 2")
    best, opt = float("inf"), (0, 0)
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            error = _false_positive(threshold, b, r) * weights[0] + _false_negative(threshold, b, r) * weights[1]
            if error < best:
                best, opt = error, (b, r)
    if opt[0] < 2:
        raise ValueError(f"threshold {threshold} with {num_perm} permutations gives fewer than 2 bands")
    return opt


def _band_ids(sigs: np.ndarray, band: int, rows: int) -> np.ndarray:
    """Bucket number of each row's values in one band (equal values, equal bucket)."""
    part = np.ascontiguousarray(sigs[:, band * rows:(band + 1) * rows])
    return np.unique(part, axis=0, return_inverse=True)[1].ravel()


def _ragged(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + c) for s, c in zip(starts, counts)])`` without the loop."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(counts)
    return np.arange(total, dtype=np.int64) - np.repeat(ends - counts - starts, counts)


def _within(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every pair ``(i, j)``, ``i < j``, of rows sharing a bucket."""
    order = np.argsort(ids, kind="stable")
    ordered = ids[order]
    ends = np.searchsorted(ordered, ordered, side="right")
    counts = ends - np.arange(len(ordered)) - 1
    left = np.repeat(order, counts)
    right = order[_ragged(np.arange(1, len(ordered) + 1), counts)]
    return np.minimum(left, right), np.maximum(left, right)


def _across(query_ids: np.ndarray, base_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every ``(query row, base row)`` sharing a bucket."""
    order = np.argsort(base_ids, kind="stable")
    ordered = base_ids[order]
    lo = np.searchsorted(ordered, query_ids, side="left")
    counts = np.searchsorted(ordered, query_ids, side="right") - lo
    return np.repeat(np.arange(len(query_ids)), counts), order[_ragged(lo, counts)]


def lsh_candidates(sigs, bands: int, rows: int, base=None) -> tuple[np.ndarray, np.ndarray]:
    """Pairs sharing at least one band bucket (band ``k``: values ``k * rows .. (k + 1) * rows``, as
    datasketch's ``MinHashLSH.hashranges``): ``(i, j)`` with ``i < j`` among ``sigs``, or every
    ``(query i, base j)`` when ``base`` is given; int64, each pair once, sorted."""
    sigs = np.asarray(sigs)
    other = None if base is None else np.asarray(base)
    if bands * rows > sigs.shape[1]:
        raise ValueError(f"{bands} bands of {rows} rows need {bands * rows} values, signatures have {sigs.shape[1]}")
    n_other = 0 if other is None else len(other)
    width = max(n_other, len(sigs), 1)
    keys = []
    for band in range(bands):
        if other is None:
            i, j = _within(_band_ids(sigs, band, rows))
        else:
            ids = _band_ids(np.concatenate([other, sigs]), band, rows)
            i, j = _across(ids[n_other:], ids[:n_other])
        keys.append(i.astype(np.int64) * width + j)
    unique = np.unique(np.concatenate(keys)) if keys else np.zeros(0, dtype=np.int64)
    return unique // width, unique % width


def jaccard(sigs_a, sigs_b) -> np.ndarray:
    """Estimated Jaccard of paired rows: the share of equal values (datasketch's ``MinHash.jaccard``)."""
    a, b = np.asarray(sigs_a), np.asarray(sigs_b)
    return np.count_nonzero(a == b, axis=1) / float(a.shape[1])


def near_pairs(sigs, threshold: float, base=None, weights: tuple[float, float] = (0.5, 0.5)):
    """LSH candidates (bands from :func:`optimal_bands`) whose estimated Jaccard is ``>= threshold``:
    host arrays ``(i, j, jaccard)`` sorted by (i, j), within ``sigs`` (``i < j``) or against ``base``.
    Signatures of empty texts take part in no pair."""
    sigs = np.asarray(sigs)
    other = sigs if base is None else np.asarray(base)
    if len(sigs) == 0 or len(other) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0)
    bands, rows = optimal_bands(float(threshold), sigs.shape[1], tuple(weights))
    i, j = lsh_candidates(sigs, bands, rows, base=base)
    score = jaccard(sigs[i], other[j])
    keep = (score >= threshold) & ~is_empty(sigs[i]) & ~is_empty(other[j])
    return i[keep], j[keep], score[keep]
