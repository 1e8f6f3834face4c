"""Cosine pairs, spherical k-means and SemDeDup partitioning against brute force on the host."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from trainset import similarity
from trainset.kernels import Backend, backend
from trainset.similarity import cosine_pairs, cosine_pairs_between, kmeans, semdedup_pairs

NUMPY = Backend(np, "numpy", "test")
MARGIN = 1e-9  # cosines this close to the threshold may fall either side of it (float64 rounding)


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def brute(emb: np.ndarray, threshold: float):
    sims = unit(emb) @ unit(emb).T
    i, j = np.nonzero(np.triu(sims >= threshold, k=1))
    return i, j, sims[i, j], sims[np.triu_indices(len(emb), k=1)]


def clear_of(threshold: float, sims: np.ndarray) -> bool:
    return not np.any(np.abs(sims - threshold) < MARGIN)


def assert_same_pairs(got, want):
    assert got[0].dtype == got[1].dtype == np.int64 and got[2].dtype == np.float64
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[2], want[2], rtol=0, atol=1e-12)


def matrices(max_rows: int = 24):
    shapes = st.tuples(st.integers(0, max_rows), st.integers(1, 6))
    values = st.one_of(st.integers(-3, 3).map(float), st.floats(-2, 2, allow_nan=False, width=32))
    return shapes.flatmap(lambda s: arrays(st.sampled_from([np.float32, np.float64]), s, elements=values))


def topic_centres(seed: int = 7, topics: int = 24, dim: int = 32) -> np.ndarray:
    return unit(np.random.default_rng(seed).normal(size=(topics, dim)))


def planted(seed: int = 7, topics: int = 24, per_topic: int = 40, dim: int = 32, duplicates: int = 120):
    """Topic clusters (cosine ~0.6 inside a topic, ~0 across) plus near-copies of random rows,
    a third of them of rows set halfway between two topics, where cluster boundaries run."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.normal(size=(topics, dim)))
    rows = [unit(centres[t] + 0.12 * rng.normal(size=(per_topic, dim))) for t in range(topics)]
    pairs = rng.integers(topics, size=(duplicates // 3, 2))
    between = unit(centres[pairs[:, 0]] + centres[pairs[:, 1]] + 0.12 * rng.normal(size=(len(pairs), dim)))
    base = np.concatenate(rows + [between])
    originals = rng.choice(len(base), size=duplicates, replace=False)
    copies = unit(base[originals] + 0.03 * rng.normal(size=(duplicates, dim)))
    emb = np.concatenate([base, copies]).astype(np.float32)
    order = rng.permutation(len(emb))  # duplicates anywhere, not at the end
    return emb[order], np.argsort(order)[len(base) :], np.argsort(order)[originals]


# --------------------------------------------------------------------------- exact pairs


@settings(max_examples=150, deadline=None)
@given(emb=matrices(), threshold=st.floats(-1.0, 1.0), block=st.one_of(st.none(), st.integers(1, 30)))
def test_cosine_pairs_equal_brute_force(emb, threshold, block):
    i, j, cos, every = brute(emb, threshold)
    assume(clear_of(threshold, every))
    assert_same_pairs(cosine_pairs(emb, threshold, be=NUMPY, block=block), (i, j, cos))


@settings(max_examples=100, deadline=None)
@given(query=matrices(12), base=matrices(12), threshold=st.floats(-1.0, 1.0), block=st.one_of(st.none(), st.integers(1, 9)))
def test_between_agrees_with_pairs_on_the_concatenation(query, base, threshold, block):
    dim = min(query.shape[1], base.shape[1])
    query, base = query[:, :dim], base[:, :dim]
    both = np.concatenate([base, query]).astype(np.float64)
    i, j, cos, every = brute(both, threshold)
    assume(clear_of(threshold, every))
    cross = (i < len(base)) & (j >= len(base))  # i < j, so the base row comes first
    want_q, want_b, want_cos = j[cross] - len(base), i[cross], cos[cross]
    order = np.lexsort((want_b, want_q))
    got = cosine_pairs_between(query, base, threshold, be=NUMPY, block=block)
    assert_same_pairs(got, (want_q[order], want_b[order], want_cos[order]))
    whole = cosine_pairs(both, threshold, be=NUMPY)
    keep = (whole[0] < len(base)) & (whole[1] >= len(base))
    assert sorted(zip(whole[1][keep] - len(base), whole[0][keep])) == list(zip(got[0], got[1]))


def test_pairs_edge_cases():
    for n in (0, 1):
        got = cosine_pairs(np.ones((n, 4), np.float32), 0.5, be=NUMPY)
        assert [len(a) for a in got] == [0, 0, 0] and got[0].dtype == np.int64
    zero = np.array([[0, 0], [1, 0], [2, 0], [0, 0]], np.float32)
    i, j, cos = cosine_pairs(zero, 0.0, be=NUMPY)  # a zero row has cosine 0 with everything
    assert list(zip(i, j)) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert cos.tolist() == [0.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    assert [len(a) for a in cosine_pairs_between(np.zeros((0, 2)), zero, 0.5, be=NUMPY)] == [0, 0, 0]
    with pytest.raises(ValueError, match="NaN or infinity"):
        cosine_pairs(np.array([[1.0, np.nan], [1.0, 0.0]]), 0.5, be=NUMPY)
    with pytest.raises(ValueError, match="2-d"):
        cosine_pairs(np.ones(4), 0.5, be=NUMPY)


def test_default_backend_and_tiling_give_the_same_pairs():
    emb, _, _ = planted()
    exact = cosine_pairs(emb, 0.9, be=NUMPY)
    assert backend().name in ("numpy", "cupy")
    for got in (cosine_pairs(emb, 0.9), cosine_pairs(emb, 0.9, be=NUMPY, block=17)):
        assert_same_pairs(got, exact)


# --------------------------------------------------------------------------- k-means and SemDeDup


def test_kmeans_is_deterministic_for_a_seed_and_finds_the_topics():
    emb, _, _ = planted()
    topic = np.argmax(unit(emb) @ topic_centres().T, axis=1)
    centroids, labels = kmeans(emb, 24, seed=3, iters=15, be=NUMPY)
    again = kmeans(emb, 24, seed=3, iters=15, be=NUMPY)
    assert centroids.tobytes() == again[0].tobytes() and labels.tobytes() == again[1].tobytes()
    assert centroids.shape == (24, 32) and centroids.dtype == np.float64 and labels.dtype == np.int64
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, atol=1e-12)
    assert labels.min() >= 0 and labels.max() < 24
    # every row sits with its most similar centroid
    np.testing.assert_array_equal(labels, np.argmax(unit(emb) @ centroids.T, axis=1))
    purity = sum(np.bincount(labels[topic == t]).max() for t in range(24)) / len(emb)
    assert purity >= 0.9  # each topic lands (almost) whole in one cluster
    sampled = kmeans(emb, 24, seed=3, iters=15, be=NUMPY, max_points_per_centroid=10)  # fitted on 240 rows
    assert sampled[1].tobytes() == kmeans(emb, 24, seed=3, iters=15, be=NUMPY, max_points_per_centroid=10)[1].tobytes()
    np.testing.assert_array_equal(sampled[1], np.argmax(unit(emb) @ sampled[0].T, axis=1))  # every row assigned
    assert sum(np.bincount(sampled[1][topic == t]).max() for t in range(24)) / len(emb) >= 0.8
    assert kmeans(emb[:5], 10, seed=0, be=NUMPY)[0].shape == (5, 32)  # k capped at n
    assert kmeans(np.zeros((0, 3)), 4, be=NUMPY)[1].shape == (0,)


def test_semdedup_with_one_cluster_is_exact():
    emb, _, _ = planted()
    exact = cosine_pairs(emb, 0.9, be=NUMPY)
    for n_clusters in (1, 0):
        got = semdedup_pairs(emb, 0.9, n_clusters, seed=1, be=NUMPY)
        assert all(a.tobytes() == b.tobytes() for a, b in zip(got, exact))


def test_semdedup_finds_planted_duplicates():
    emb, copies, originals = planted()
    threshold = 0.95
    exact = cosine_pairs(emb, threshold, be=NUMPY)
    truth = set(zip(exact[0].tolist(), exact[1].tolist()))
    planted_pairs = {(min(a, b), max(a, b)) for a, b in zip(copies.tolist(), originals.tolist())}
    assert planted_pairs <= truth and len(truth) < 2 * len(planted_pairs)  # the duplicates, not the topics

    recall = {}
    for probes in (1, 3):
        i, j, cos = semdedup_pairs(emb, threshold, n_clusters=24, seed=2, probes=probes, be=NUMPY)
        found = list(zip(i.tolist(), j.tolist()))
        assert found == sorted(set(found)) and all(a < b for a, b in found)  # sorted, unique, i < j
        assert set(found) <= truth  # exact cosines: never a false pair
        index = {p: k for k, p in enumerate(zip(exact[0].tolist(), exact[1].tolist()))}
        np.testing.assert_allclose(cos, exact[2][[index[p] for p in found]], atol=1e-12)
        recall[probes] = len(set(found) & truth) / len(truth)
    assert recall[1] >= 0.9
    assert recall[3] >= recall[1] and recall[3] >= 0.99
    again = semdedup_pairs(emb, threshold, n_clusters=24, seed=2, probes=3, be=NUMPY)
    assert again[0].tobytes() == i.tobytes() and again[1].tobytes() == j.tobytes()


def test_semdedup_tiny_inputs():
    assert [len(a) for a in semdedup_pairs(np.ones((1, 3)), 0.5, 4, be=NUMPY)] == [0, 0, 0]
    i, j, _ = semdedup_pairs(np.ones((3, 3)), 0.5, 8, probes=4, be=NUMPY)  # k capped at n
    assert list(zip(i, j)) == [(0, 1), (0, 2), (1, 2)]


def test_block_elements_bound_the_tile():
    assert similarity._side(NUMPY, None) ** 2 <= similarity.BLOCK_ELEMENTS["numpy"]
    assert similarity._side(NUMPY, 5) == 5
