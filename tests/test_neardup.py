"""The near-duplicate rule: exact pair search over views and embeddings, clusters without chains,
the incremental index, and which copy is kept."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainset import kernels, neardup, similarity
from trainset.config import ConfigError


def _rule(*clauses, mirror=False, partitions=0, views: int | None = None, query: int = 1, mirrored: int = 0, penalty: int = 0) -> neardup.Rule:
    """A rule from params; with ``views``, for a planted matrix of ``views`` + ``mirrored``
    columns: the first ``query`` are the query views, the first ``views`` the search views, and
    the last ``mirrored`` the mirrored query views (matched ``penalty`` bits farther)."""
    rule = neardup.Rule.from_params({"rule": [dict(c) for c in clauses], "mirror": mirror, "embedding": {"partitions": partitions}})
    if views is None:
        return rule
    return dataclasses.replace(rule, query=tuple(range(min(query, views))), search=tuple(range(views)),
                               mirror_query=tuple(range(views, views + mirrored)), mirror_penalty=penalty)


def test_rule_columns_follow_the_view_layout():
    from trainset import views

    plain = _rule({"max_distance": 6})
    assert [views.VIEW_NAMES[c] for c in plain.query] == ["plain", "trim"]
    assert [views.VIEW_NAMES[c] for c in plain.search] == list(views.SEARCH_VIEWS)
    assert plain.mirror_query == () and plain.mirror_penalty == 0
    mirrored = _rule({"max_distance": 6}, mirror=True)
    assert [views.VIEW_NAMES[c] for c in mirrored.query] == ["plain", "trim"]
    assert [views.VIEW_NAMES[c] for c in mirrored.mirror_query] == ["plain_mirror", "trim_mirror"]
    assert mirrored.mirror_penalty == neardup.DEFAULT_MIRROR_PENALTY == 3
    assert neardup.Rule.from_params({"rule": [{"max_distance": 6}], "mirror": True, "mirror_penalty": 0}).mirror_penalty == 0
    with pytest.raises(ConfigError, match="mirror_penalty"):
        neardup.Rule.from_params({"rule": [{"max_distance": 6}], "mirror": True, "mirror_penalty": -1})
    assert mirrored.view_indices == list(range(len(views.VIEW_NAMES)))
    assert plain.view_indices == list(range(len(views.SEARCH_VIEWS)))


# --- params ---------------------------------------------------------------------------------------

def test_rule_from_params_reads_clauses_and_legacy_max_distance():
    rule = _rule({"max_distance": 6}, {"max_distance": 16, "min_cosine": 0.88}, {"min_cosine": 0.95})
    assert [c.label for c in rule.clauses] == ["distance<=6", "distance<=16&cosine>=0.88", "cosine>=0.95"]
    assert rule.uses_cosine and rule.hash_radius == 16 and rule.cosine_radius == 0.95
    legacy = neardup.Rule.from_params({"max_distance": 10})
    assert [c.label for c in legacy.clauses] == ["distance<=10"] and not legacy.uses_cosine
    assert legacy.cosine_radius is None


def test_partitions_move_cosine_clauses_to_the_cosine_search():
    rule = _rule({"max_distance": 6}, {"max_distance": 16, "min_cosine": 0.88}, partitions=8)
    assert rule.hash_radius == 6 and rule.cosine_radius == 0.88


@pytest.mark.parametrize("bad, where", [
    ({"rule": []}, "near_dup.rule must be a non-empty list"),
    ({"rule": [{"max_distance": 6, "min_cos": 0.9}]}, "near_dup.rule[0]"),
    ({"rule": [{"max_distance": 6}, {"max_distance": 70}]}, "near_dup.rule[1].max_distance"),
    ({"rule": [{"min_cosine": 1.5}]}, "near_dup.rule[0].min_cosine"),
    ({"rule": [{"max_distance": True}]}, "near_dup.rule[0].max_distance"),
])
def test_bad_rules_name_the_clause(bad, where):
    with pytest.raises(ConfigError) as err:
        neardup.Rule.from_params(bad)
    assert where in str(err.value)


def test_judge_labels_the_first_clause_that_holds():
    rule = _rule({"max_distance": 4}, {"max_distance": 12, "min_cosine": 0.9}, {"min_cosine": 0.97})
    distance = np.array([3, 10, 10, 40, 40])
    cosine = np.array([0.1, 0.95, 0.5, 0.98, np.nan])
    assert rule.judge(distance, cosine).tolist() == ["distance<=4", "distance<=12&cosine>=0.9", "", "cosine>=0.97", ""]


# --- exact pair search -------------------------------------------------------------------------

def _planted(seed: int, n: int, views: int, dim: int = 8):
    """View matrices with near copies (a few bits flipped in some views) and embeddings with
    close neighbours, so every clause has pairs near its thresholds."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 2**63, size=(n, views), dtype=np.int64).astype(np.uint64)
    emb = rng.normal(size=(n, dim))
    for k in range(1, n):
        if rng.random() < 0.5:
            src = int(rng.integers(0, k))
            flips = rng.integers(0, 64, size=(views, int(rng.integers(0, 14))))
            row = base[src].copy()
            for v in range(views):
                for bit in flips[v]:
                    row[v] ^= np.uint64(1) << np.uint64(int(bit))
            base[k] = row
            emb[k] = emb[src] + rng.normal(scale=float(rng.uniform(0.05, 0.6)), size=dim)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return base, emb.astype(np.float32)


def _brute(rule, matrix, emb, base_matrix=None, base_emb=None):
    """Judge every pair directly."""
    rows = []
    other, other_emb = (matrix, emb) if base_matrix is None else (base_matrix, base_emb)
    for a in range(len(matrix)):
        for b in range(len(other)):
            if base_matrix is None and b <= a:
                continue
            sides = ((matrix[a], other[b]), (other[b], matrix[a]))
            d = min(bin(int(one[q]) ^ int(two[t])).count("1") for one, two in sides for q in rule.query for t in rule.search)
            if rule.mirror_query:
                m = min(bin(int(one[q]) ^ int(two[t])).count("1") for one, two in sides for q in rule.mirror_query for t in rule.search)
                d = min(d, m + rule.mirror_penalty, 64)
            c = float(np.dot(emb[a].astype(np.float64), other_emb[b].astype(np.float64))) if emb is not None else np.nan
            label = rule.judge(np.array([d]), np.array([c]))[0]
            if label:
                rows.append((a, b, d, label))
    return rows


clause = st.one_of(
    st.builds(dict, max_distance=st.integers(0, 20)),
    st.builds(dict, max_distance=st.integers(0, 24), min_cosine=st.floats(0.5, 0.99)),
    st.builds(dict, min_cosine=st.floats(0.6, 0.99)),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), n=st.integers(0, 40), views=st.integers(1, 4), query=st.integers(1, 4),
       mirrored=st.integers(0, 2), penalty=st.integers(0, 5), clauses=st.lists(clause, min_size=1, max_size=3))
def test_find_pairs_equals_judging_every_pair(seed, n, views, query, mirrored, penalty, clauses):
    rule = _rule(*clauses, views=views, query=query, mirrored=mirrored, penalty=penalty)
    matrix, emb = _planted(seed, n, views + mirrored)
    got = neardup.find_pairs(rule, matrix, emb if rule.uses_cosine else None)
    want = _brute(rule, matrix, emb if rule.uses_cosine else None)
    assert list(zip(got["a"], got["b"], got["distance"], got["rule"])) == want


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), n=st.integers(2, 40), k=st.integers(1, 10), query=st.integers(1, 3),
       mirrored=st.integers(0, 2), penalty=st.integers(0, 5), clauses=st.lists(clause, min_size=1, max_size=3))
def test_find_pairs_between_equals_judging_every_cross_pair(seed, n, k, query, mirrored, penalty, clauses):
    rule = _rule(*clauses, views=3, query=query, mirrored=mirrored, penalty=penalty)
    matrix, emb = _planted(seed, n + k, 3 + mirrored)
    q, b = matrix[n:], matrix[:n]
    qe, be = (emb[n:], emb[:n]) if rule.uses_cosine else (None, None)
    got = neardup.find_pairs(rule, q, qe, b, be)
    assert list(zip(got["a"], got["b"], got["distance"], got["rule"])) == _brute(rule, q, qe, b, be)


def test_missing_embeddings_only_pass_distance_clauses():
    rule = _rule({"max_distance": 2}, {"max_distance": 30, "min_cosine": 0.5}, views=1)
    matrix = np.array([[0], [0b111], [0b1]], dtype=np.uint64)
    emb = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]], dtype=np.float32)  # row 2: no embedding
    got = neardup.find_pairs(rule, matrix, emb)
    assert list(zip(got["a"], got["b"], got["rule"])) == [(0, 1, "distance<=30&cosine>=0.5"), (0, 2, "distance<=2"), (1, 2, "distance<=2")]
    assert np.isnan(got["cosine"].iloc[1])


# --- clusters ------------------------------------------------------------------------------------

def test_clusters_grow_around_representatives_without_chaining():
    # 0~1, 1~2, 2~3 (a chain), 4 alone; 0 is the best copy
    a, b = np.array([0, 1, 2]), np.array([1, 2, 3])
    rep = neardup.grow_clusters(5, a, b, np.arange(5))
    assert rep.tolist() == [0, 0, 2, 2, 4]
    # every member is a direct neighbour of its representative
    pairs = {(0, 1), (1, 2), (2, 3)}
    for node, r in enumerate(rep):
        assert node == r or (min(node, r), max(node, r)) in pairs
    assert neardup.components(5, a, b).tolist() == [0, 0, 0, 0, 1]


def test_cluster_order_decides_the_representative():
    a, b = np.array([0, 1]), np.array([1, 2])
    assert neardup.grow_clusters(3, a, b, np.array([1, 0, 2])).tolist() == [1, 1, 1]


def test_preference_order_follows_keep_list():
    items = pd.DataFrame({
        "item_id": ["s:a", "s:b", "t:c", "s:d"],
        "generated": [True, False, False, False],
        "width": [2000, 500, 500, 800], "height": [2000, 500, 500, 800],
        "score": [9.0, 1.0, 5.0, np.nan],
        "source": ["s", "s", "t", "s"],
        "size": [10, 20, 30, 40],
        "sidecar": [None, None, "x.txt", None],
        "tags": [[], ["a"], [], ["a", "b"]],
    })
    order = lambda **kw: neardup.preference_order(items, kw)["item_id"].tolist()  # noqa: E731
    assert order() == ["s:d", "t:c", "s:b", "s:a"]  # originals first, then resolution, then file size
    assert order(keep=["resolution"]) == ["s:a", "s:d", "s:b", "t:c"]
    assert order(keep=["quality"], quality_column="score") == ["s:a", "t:c", "s:b", "s:d"]
    assert order(keep=["source_priority", "file_size"], source_priority=["t"]) == ["t:c", "s:d", "s:b", "s:a"]
    with pytest.raises(ConfigError, match="near_dup.keep"):
        order(keep=["prettiest"])
    with pytest.raises(ConfigError, match="quality_column"):
        order(keep=["quality"], quality_column="nope")


def test_border_key_puts_padded_copies_after_the_picture_they_frame():
    items = pd.DataFrame({
        "item_id": ["s:padded", "s:plain", "s:letterboxed"], "generated": False,
        "width": [600, 500, 500], "height": [600, 500, 700], "border_fraction": [0.3, 0.1, np.nan],
        "source": "s", "size": [1, 1, 1], "sidecar": None, "tags": [[], [], []],
    })
    # under PADDED_FRACTION a border is the picture's own edge: more pixels decide; NaN reads as none
    assert neardup.preference_order(items)["item_id"].tolist() == ["s:letterboxed", "s:plain", "s:padded"]
    slight = items.assign(border_fraction=[0.3, 0.12, 0.0], width=[600, 520, 500], height=[600, 520, 500])
    assert neardup.preference_order(slight)["item_id"].tolist() == ["s:plain", "s:letterboxed", "s:padded"]
    assert neardup.preference_order(items, {"keep": ["resolution"]})["item_id"].tolist() == ["s:padded", "s:letterboxed", "s:plain"]
    assert neardup.DEFAULT_KEEP[:3] == ("original", "border", "resolution")


# --- the incremental index ------------------------------------------------------------------------

def _shas(n: int, offset: int = 0) -> list[str]:
    return [f"{k + offset:064x}" for k in range(n)]


def test_adding_k_contents_searches_only_the_new_ones(tmp_path, monkeypatch):
    rule = _rule({"max_distance": 8}, {"max_distance": 20, "min_cosine": 0.8}, views=3, query=1)
    matrix, emb = _planted(7, 260, 3)
    n, k = 250, 10
    index = neardup.PairIndex(tmp_path, rule.key("m"))
    first, stats = neardup.content_pairs(rule, _shas(n), matrix[:n], emb[:n], index)
    assert stats.new == n and stats.reused_pairs == 0

    calls = []
    real_self, real_between = kernels.near_pairs, kernels.near_pairs_between
    monkeypatch.setattr(kernels, "near_pairs", lambda h, t, *a, **kw: calls.append(("self", len(h))) or real_self(h, t, *a, **kw))
    monkeypatch.setattr(kernels, "near_pairs_between", lambda q, b, t, *a, **kw: calls.append(("between", len(q), len(b))) or real_between(q, b, t, *a, **kw))
    pairs, stats = neardup.content_pairs(rule, _shas(n + k), matrix, emb, index)
    assert stats.new == k and stats.reused_pairs == len(first)
    # the old contents' views (1 query, up to 3 search views each) are never searched against each other again
    assert [c[0] for c in calls] == ["between"] * 3  # new vs new, new vs old, old vs new
    assert calls[0][1] <= k and calls[0][2] <= 3 * k
    # the old side is the base, then the query: never both sides old
    assert calls[1][1] <= k and calls[2][2] <= 3 * k
    fresh, _ = neardup.content_pairs(rule, _shas(n + k), matrix, emb, None)
    pd.testing.assert_frame_equal(pairs, fresh)


def test_index_forgets_contents_that_left_and_recomputes_them_when_back(tmp_path):
    rule = _rule({"max_distance": 10}, views=2, query=1)
    matrix, _ = _planted(3, 60, 2)
    shas = _shas(60)
    index = neardup.PairIndex(tmp_path, rule.key())
    full, _ = neardup.content_pairs(rule, shas, matrix, None, index)
    keep = np.arange(60) % 3 != 0
    less, stats = neardup.content_pairs(rule, [s for s, k in zip(shas, keep) if k], matrix[keep], None, index)
    assert stats.new == 0
    assert set(less["a"]) | set(less["b"]) <= {s for s, k in zip(shas, keep) if k}
    back, stats = neardup.content_pairs(rule, shas, matrix, None, index)
    assert stats.new == 20
    pd.testing.assert_frame_equal(back, full)


def test_a_changed_rule_gets_its_own_index(tmp_path):
    assert _rule({"max_distance": 10}).key() != _rule({"max_distance": 11}).key()
    assert _rule({"max_distance": 10, "min_cosine": 0.9}).key("m1") != _rule({"max_distance": 10, "min_cosine": 0.9}).key("m2")
    assert _rule({"max_distance": 10}, mirror=True).key() != _rule({"max_distance": 10}).key()


def test_semdedup_partitions_still_find_planted_duplicates():
    rule = _rule({"max_distance": 4}, {"max_distance": 64, "min_cosine": 0.97}, partitions=4, views=1)
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(200, 16))
    emb = np.concatenate([centres, centres + rng.normal(scale=0.03, size=centres.shape)])
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    matrix = rng.integers(0, 2**63, size=(400, 1), dtype=np.int64).astype(np.uint64)
    got = neardup.find_pairs(rule, matrix, emb)
    exact = similarity.cosine_pairs(emb, 0.97)
    want = set(zip(exact[0].tolist(), exact[1].tolist()))
    found = set(zip(got["a"].tolist(), got["b"].tolist()))
    assert found <= want
    assert len(found & want) >= 0.95 * len(want) and len(want) >= 200


@pytest.mark.parametrize(("n", "v"), [(0, 3), (5, 1), (200, 28), (50, 4)])
def test_flat_views_hold_each_rows_distinct_hashes_per_column_set(n: int, v: int) -> None:
    """take / select / join give what flattening the chosen columns of the matrix would."""
    rng = np.random.default_rng(n + v)
    matrix = rng.integers(0, 8, size=(n, v), dtype=np.uint64)  # few values: many repeats within a row
    flat = neardup.FlatViews.of(matrix)

    def pairs(hashes, owners):
        listed = list(zip(owners.tolist(), hashes.tolist()))
        assert len(listed) == len(set(listed)), "each (row, hash) once"
        return sorted(listed)

    for columns in ([0], list(range(v)), [v - 1, 0]):
        assert pairs(*flat.take(columns)) == sorted({(r, int(matrix[r, c])) for r in range(n) for c in columns})
    picked = flat.select([v - 1, 0])
    assert pairs(*picked.take([0])) == sorted({(r, int(matrix[r, v - 1])) for r in range(n)})
    joined = neardup.FlatViews.join([flat, flat], [n, n])
    assert pairs(*joined.take(range(v))) == pairs(*neardup.FlatViews.of(np.concatenate([matrix, matrix])).take(range(v)))
