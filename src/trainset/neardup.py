"""The near-duplicate rule: which pairs of contents are near-duplicates, and the clusters they form.

A pair is judged on two numbers:

- ``distance``: the fewest differing bits between a query view of either (its plain or trimmed
  pHash) and a search view of the other (the same plus the pHashes of sub-boxes where a crop of
  it would sit; ``trainset.views``). With ``near_dup.mirror`` true, the mirror images of the
  query views are compared too, a match through them counting ``near_dup.mirror_penalty`` bits
  farther (near-symmetric faces and scenes otherwise meet their own kind in the mirror);
- ``cosine``: the cosine of their image embeddings (``trainset.embeddings``), when a clause needs it.

The rule is a list of clauses, any of which makes a pair a near-duplicate, e.g. ``distance <= 6``,
or ``distance <= 16 and cosine >= 0.88``, or ``cosine >= 0.92``. Candidates come from an exact
Hamming search at the largest clause distance and, for clauses on cosine alone, an exact cosine
search; each candidate is then judged on its exact numbers. For very large sets,
``embedding.partitions`` > 1 switches the cosine search to SemDeDup-style k-means partitions
(pairs split across partitions can be missed; see ``trainset.similarity``) and limits the Hamming
search to the clauses on distance alone.

Loose pairs chain unrelated images together, so clusters are grown around representatives
(:func:`grow_clusters`): every member is a near-duplicate of its cluster's representative.
Connected components (:func:`components`) are kept for the split, where chaining is harmless
and every pair must land on one side.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from . import progress, view_names
from .config import ConfigError
from .provenance import params_digest

PAIR_FIELDS = ("a", "b", "distance", "cosine", "rule")
KEEP_KEYS = ("original", "border", "resolution", "quality", "source_priority", "file_size", "sidecar", "tags")
DEFAULT_KEEP = KEEP_KEYS
PADDED_FRACTION = 0.15
"""Border share from which the ``border`` keep key counts a copy as padded. A plain yes/no: the
trimmed box is measured at about 64 px, and many pictures have some uniform edge of their own
(sky, studio backdrop), so ranking by the share itself would prefer a slight crop of such a
picture (less edge left) over the picture. On copies of real images 99 % of copies padded by
5-15 % of the long side reach it, and under 4 % of the originals."""
DEFAULT_MIRROR_PENALTY = 3
"""Bits added to a distance reached only through a mirrored view (``near_dup.mirror_penalty``)."""
NO_DISTANCE = 64
"""Distance written for a pair found by cosine alone whose views differ in every bit."""


@dataclass(frozen=True)
class Clause:
    max_distance: int | None = None
    min_cosine: float | None = None

    @property
    def label(self) -> str:
        parts = []
        if self.max_distance is not None:
            parts.append(f"distance<={self.max_distance}")
        if self.min_cosine is not None:
            parts.append(f"cosine>={self.min_cosine:g}")
        return "&".join(parts)

    def holds(self, distance: np.ndarray, cosine: np.ndarray) -> np.ndarray:
        ok = np.ones(len(distance), dtype=bool)
        if self.max_distance is not None:
            ok &= distance <= self.max_distance
        if self.min_cosine is not None:
            ok &= np.nan_to_num(cosine, nan=-2.0) >= self.min_cosine
        return ok


@dataclass(frozen=True)
class Rule:
    clauses: tuple[Clause, ...]
    mirror: bool = False
    model: dict = field(default_factory=dict)
    batch_size: int = 32
    partitions: int = 0
    seed: int = 0
    query: tuple[int, ...] = ()
    """View-matrix columns compared with the other image's ``search`` columns (set by :meth:`from_params`)."""
    search: tuple[int, ...] = ()
    mirror_query: tuple[int, ...] = ()
    """The mirrored query views' columns (``mirror`` on), matched ``mirror_penalty`` bits farther."""
    mirror_penalty: int = 0

    @classmethod
    def from_params(cls, near_dup: dict, seed: int = 0) -> "Rule":
        """``near_dup`` from params.yaml; a bad clause names itself."""
        near_dup = near_dup or {}
        raw = near_dup.get("rule")
        if raw is None and "max_distance" in near_dup:
            raw = [{"max_distance": near_dup["max_distance"]}]
        if not isinstance(raw, list) or not raw:
            raise ConfigError("params.yaml: near_dup.rule must be a non-empty list of clauses, e.g. [{max_distance: 6}]")
        clauses = []
        for k, item in enumerate(raw):
            where = f"params.yaml: near_dup.rule[{k}]"
            if not isinstance(item, dict) or not item or set(item) - {"max_distance", "min_cosine"}:
                raise ConfigError(f"{where} must have max_distance and/or min_cosine, got {item!r}")
            md, mc = item.get("max_distance"), item.get("min_cosine")
            if md is not None and (isinstance(md, bool) or not isinstance(md, int) or not 0 <= md <= 64):
                raise ConfigError(f"{where}.max_distance must be an integer 0..64, got {md!r}")
            if mc is not None and (isinstance(mc, bool) or not isinstance(mc, (int, float)) or not -1 <= mc <= 1):
                raise ConfigError(f"{where}.min_cosine must be a number in -1..1, got {mc!r}")
            clauses.append(Clause(md, None if mc is None else float(mc)))
        embedding = near_dup.get("embedding") or {}
        model = dict(embedding.get("model") or {"backend": "efficientnet-lite0"})
        mirror = bool(near_dup.get("mirror", False))
        penalty = near_dup.get("mirror_penalty", DEFAULT_MIRROR_PENALTY)
        if isinstance(penalty, bool) or not isinstance(penalty, int) or not 0 <= penalty <= 64:
            raise ConfigError(f"params.yaml: near_dup.mirror_penalty must be an integer 0..64, got {penalty!r}")
        return cls(
            clauses=tuple(clauses),
            mirror=mirror,
            query=tuple(range(len(view_names.QUERY_VIEWS))),
            search=tuple(range(len(view_names.SEARCH_VIEWS))),
            # the mirrored query views follow the search views in the view matrix
            mirror_query=tuple(range(len(view_names.SEARCH_VIEWS), len(view_names.VIEW_NAMES))) if mirror else (),
            mirror_penalty=int(penalty) if mirror else 0,
            model=model,
            batch_size=int(embedding.get("batch_size", 32)),
            partitions=int(embedding.get("partitions", 0) or 0),
            seed=int(seed),
        )

    @property
    def uses_cosine(self) -> bool:
        return any(c.min_cosine is not None for c in self.clauses)

    @property
    def hash_radius(self) -> int:
        """Radius of the Hamming candidate search (-1: none). Exact partitioning (``partitions`` <= 1):
        the largest distance any clause accepts, so cosine is only computed for those candidates.
        SemDeDup partitioning: only the clauses on distance alone; the cosine search finds the rest."""
        clauses = self.clauses if self.partitions <= 1 else [c for c in self.clauses if c.min_cosine is None]
        return max((c.max_distance for c in clauses if c.max_distance is not None), default=-1)

    @property
    def cosine_radius(self) -> float | None:
        """Threshold of the cosine candidate search (None: none): the clauses on cosine alone, or,
        with SemDeDup partitioning, every clause with a cosine."""
        clauses = self.clauses if self.partitions > 1 else [c for c in self.clauses if c.max_distance is None]
        found = [c.min_cosine for c in clauses if c.min_cosine is not None]
        return min(found) if found else None

    @property
    def view_indices(self) -> list[int]:
        """The ``phash_views`` entries the rule reads (the columns of :func:`view_matrix`): every
        one up to the last column it compares."""
        return list(range(max((*self.query, *self.search, *self.mirror_query), default=-1) + 1))

    def key(self, model_key: str | None = None) -> str:
        """Digest of everything that decides which pairs are found."""
        return params_digest({
            "clauses": [c.label for c in self.clauses], "mirror": self.mirror, "views": list(view_names.VIEW_NAMES),
            "query": list(self.query), "search": list(self.search), "mirror_query": list(self.mirror_query),
            "mirror_penalty": self.mirror_penalty,
            "model": model_key if self.uses_cosine else None, "partitions": self.partitions, "seed": self.seed,
        })

    def judge(self, distance: np.ndarray, cosine: np.ndarray) -> np.ndarray:
        """Label of the first clause that holds for each pair ('' where none does)."""
        label = np.full(len(distance), "", dtype=object)
        for clause in reversed(self.clauses):
            label[clause.holds(distance, cosine)] = clause.label
        return label


# --- view hashes --------------------------------------------------------------------------------

def view_matrix(phash_views, rule: Rule) -> np.ndarray:
    """(n, v) uint64 of the views the rule compares, from the audit's ``phash_views`` lists."""
    idx = rule.view_indices
    rows = list(phash_views)
    if not rows:
        return np.zeros((0, len(idx)), dtype=np.uint64)
    width = len(rows[0])
    if all(len(v) == width for v in rows) and all(len(h) == 16 for v in rows[:1] for h in v):
        try:  # one C-speed parse of every view (hex is 16 digits, big-endian)
            flat = bytes.fromhex("".join(h for v in rows for h in v))
        except ValueError:
            flat = b""
        if len(flat) == 8 * width * len(rows):
            return np.ascontiguousarray(np.frombuffer(flat, dtype=">u8").astype(np.uint64).reshape(len(rows), width)[:, idx])
    return np.array([[int(v[i], 16) for i in idx] for v in rows], dtype=np.uint64).reshape(len(rows), len(idx))


def view_distance(a: np.ndarray, b: np.ndarray, rule: "Rule") -> np.ndarray:
    """Fewest differing bits between a query view of either of ``a[k]`` and ``b[k]`` and a search
    view of the other (rows paired; columns of :func:`view_matrix`); through a mirrored query
    view, ``rule.mirror_penalty`` bits more (capped at 64)."""
    out = _one_way_min(a, b, list(rule.query), list(rule.search))
    if rule.mirror_query:
        mirrored = _one_way_min(a, b, list(rule.mirror_query), list(rule.search)) + rule.mirror_penalty
        out = np.minimum(out, np.minimum(mirrored, NO_DISTANCE))
    return out


def _one_way_min(a: np.ndarray, b: np.ndarray, query: list[int], search: list[int]) -> np.ndarray:
    out = np.empty(len(a), dtype=np.int64)
    step = 1 << 15
    for start in range(0, len(a), step):
        x, y = a[start:start + step], b[start:start + step]
        one = np.bitwise_count(x[:, query, None] ^ y[:, None, search]).min(axis=(1, 2))
        other = np.bitwise_count(y[:, query, None] ^ x[:, None, search]).min(axis=(1, 2))
        out[start:start + step] = np.minimum(one, other)
    return out


@dataclass(frozen=True)
class FlatViews:
    """The distinct (owner row, hash) pairs of a view matrix, each with a bit mask of the columns
    that hold it: what the pair kernels search. Built once per shard (``shards.write_hashes``), so
    a tile selects a rule's query or search views with one mask test instead of sorting every row
    of every earlier shard again."""

    flat: np.ndarray     # uint64 hashes
    owner: np.ndarray    # int64 row of the matrix
    columns: np.ndarray  # uint64 bit c: column c holds this hash

    @classmethod
    def of(cls, matrix: np.ndarray) -> "FlatViews":
        n, v = matrix.shape
        if v > 64:
            raise ValueError(f"at most 64 views a content, got {v}")
        order = np.argsort(matrix, axis=1, kind="stable")
        ordered = np.take_along_axis(matrix, order, axis=1).ravel()
        bits = (np.uint64(1) << order.astype(np.uint64)).ravel()
        starts = np.ones((n, v), dtype=bool)
        starts[:, 1:] = ordered.reshape(n, v)[:, 1:] != ordered.reshape(n, v)[:, :-1]
        at = np.flatnonzero(starts.ravel())
        columns = np.bitwise_or.reduceat(bits, at) if len(at) else np.zeros(0, dtype=np.uint64)
        return cls(ordered[at], (at // max(v, 1)).astype(np.int64), columns.astype(np.uint64))

    def take(self, columns) -> tuple[np.ndarray, np.ndarray]:
        """The hashes (and owners) held by any of ``columns``."""
        mask = np.uint64(sum(1 << c for c in {int(c) for c in columns}))
        keep = (self.columns & mask) != 0
        return self.flat[keep], self.owner[keep]

    def select(self, columns) -> "FlatViews":
        """Renumbered to the matrix ``matrix[:, columns]`` (entries in none of them dropped)."""
        remapped = np.zeros(len(self.columns), dtype=np.uint64)
        for new, old in enumerate(columns):
            remapped |= ((self.columns >> np.uint64(old)) & np.uint64(1)) << np.uint64(new)
        keep = remapped != 0
        return FlatViews(self.flat[keep], self.owner[keep], remapped[keep])

    @staticmethod
    def join(parts: list["FlatViews"], rows: list[int]) -> "FlatViews":
        """Of the matrices stacked in order (``rows``: each one's row count)."""
        offsets = np.concatenate([[0], np.cumsum(rows)[:-1]]).astype(np.int64)
        return FlatViews(np.concatenate([p.flat for p in parts]),
                         np.concatenate([p.owner + o for p, o in zip(parts, offsets)]),
                         np.concatenate([p.columns for p in parts]))


def _owner_pairs(i, j, owner_i, owner_j, same_set: bool) -> tuple[np.ndarray, np.ndarray]:
    a, b = owner_i[i], owner_j[j]
    if same_set:
        a, b = np.minimum(a, b), np.maximum(a, b)
        keep = a != b
        a, b = a[keep], b[keep]
    if not len(a):
        return a.astype(np.int64), b.astype(np.int64)
    code = np.unique(a.astype(np.int64) * (1 << 32) + b.astype(np.int64))
    return code >> 32, code & ((1 << 32) - 1)


def hash_candidates(matrix: np.ndarray, radius: int, query: list[int], search: list[int], base: np.ndarray | None = None,
                    flat: FlatViews | None = None, base_flat: FlatViews | None = None):
    """Owner pairs where a query view of one is within ``radius`` bits of a search view of the
    other: ``(i, j)`` with i < j within ``matrix``, or ``(query row, base row)`` when ``base`` is
    given (both directions searched). ``flat`` / ``base_flat``: their :class:`FlatViews`, if at hand."""
    from . import kernels  # noqa: PLC0415 (not imported when the Snakefile reads the rule)

    empty = np.zeros(0, dtype=np.int64)
    if radius < 0 or not len(matrix) or (base is not None and not len(base)):
        return empty, empty.copy()
    flat = flat or FlatViews.of(matrix)
    qflat, qowner = flat.take(query)
    sflat, sowner = flat.take(search)
    if base is None:
        qi, sj, _ = kernels.near_pairs_between(qflat, sflat, radius)
        return _owner_pairs(qi, sj, qowner, sowner, True)
    base_flat = base_flat or FlatViews.of(base)
    bq, bqowner = base_flat.take(query)
    bs, bsowner = base_flat.take(search)
    qi, bj, _ = kernels.near_pairs_between(qflat, bs, radius)
    a1, b1 = _owner_pairs(qi, bj, qowner, bsowner, False)
    bi, qj, _ = kernels.near_pairs_between(bq, sflat, radius)
    b2, a2 = _owner_pairs(bi, qj, bqowner, sowner, False)
    code = np.unique(np.concatenate([a1 * (1 << 32) + b1, a2 * (1 << 32) + b2]))
    return code >> 32, code & ((1 << 32) - 1)


# --- pairs ----------------------------------------------------------------------------------------

PAIR_CHUNK = 1 << 16
"""Candidate pairs judged at once (bounds the temporary arrays: ~20 MB of vectors per 1,000 dims)."""


def _cosines(emb: np.ndarray | None, a: np.ndarray, b: np.ndarray, emb_b: np.ndarray | None = None) -> np.ndarray:
    """Cosine of each pair; NaN where either content has no embedding (an all-zero row)."""
    if emb is None:
        return np.full(len(a), np.nan)
    other = emb if emb_b is None else emb_b
    cos = np.empty(len(a), dtype=np.float64)
    for start in range(0, len(a), PAIR_CHUNK):
        x = emb[a[start:start + PAIR_CHUNK]].astype(np.float64)
        y = other[b[start:start + PAIR_CHUNK]].astype(np.float64)
        c = np.einsum("ij,ij->i", x, y)
        c[~(x.any(axis=1) & y.any(axis=1))] = np.nan
        cos[start:start + PAIR_CHUNK] = c
    return cos


def _cosine_candidates(rule: Rule, emb, emb_base=None):
    from . import similarity  # noqa: PLC0415  (only runs when a clause uses cosine alone)

    threshold = rule.cosine_radius
    empty = np.zeros(0, dtype=np.int64)
    if threshold is None or emb is None or not len(emb) or (emb_base is not None and not len(emb_base)):
        return empty, empty.copy()
    if emb_base is not None:
        qi, bj, _ = similarity.cosine_pairs_between(emb, emb_base, threshold)
        return np.asarray(qi, dtype=np.int64), np.asarray(bj, dtype=np.int64)
    if rule.partitions > 1:
        i, j, _ = similarity.semdedup_pairs(emb, threshold, rule.partitions, rule.seed)
    else:
        i, j, _ = similarity.cosine_pairs(emb, threshold)
    return np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64)


def find_pairs(
    rule: Rule, matrix: np.ndarray, emb: np.ndarray | None,
    base_matrix: np.ndarray | None = None, base_emb: np.ndarray | None = None,
    flat: FlatViews | None = None, base_flat: FlatViews | None = None,
) -> pd.DataFrame:
    """Pairs the rule accepts, as row indices: within ``matrix`` (``a < b``), or between it and
    ``base`` (``a`` a query row, ``b`` a base row). ``emb`` rows align with the matrix rows (NaN
    rows: no embedding); ``flat`` / ``base_flat``: the matrices' :class:`FlatViews`, if at hand.
    Columns :data:`PAIR_FIELDS`."""
    between = base_matrix is not None
    # mirrored query views searched at the full radius too: a superset, judged exactly below
    hi, hj = hash_candidates(matrix, rule.hash_radius, list(rule.query + rule.mirror_query), list(rule.search),
                             base_matrix if between else None, flat, base_flat if between else None)
    ci, cj = _cosine_candidates(rule, emb, base_emb if between else None)
    code = np.unique(np.concatenate([hi * (1 << 32) + hj, ci * (1 << 32) + cj]))
    a, b = code >> 32, code & ((1 << 32) - 1)
    other = base_matrix if between else matrix
    distance = view_distance(matrix[a], other[b], rule) if len(a) else np.zeros(0, dtype=np.int64)
    cosine = _cosines(emb, a, b, base_emb if between else None) if rule.uses_cosine else np.full(len(a), np.nan)
    label = rule.judge(distance, cosine)
    keep = label != ""
    return pd.DataFrame({
        "a": a[keep], "b": b[keep], "distance": distance[keep],
        "cosine": cosine[keep].astype(np.float64), "rule": label[keep].astype(str),
    })


# --- clusters -------------------------------------------------------------------------------------

def grow_clusters(n: int, a: np.ndarray, b: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Representative of each of ``n`` nodes: nodes are visited in ``order`` (best first); an
    unassigned node becomes a representative and takes every unassigned neighbour. Every member
    is therefore a direct near-duplicate of its representative: no chains."""
    from scipy.sparse import coo_matrix  # noqa: PLC0415 (not imported when the Snakefile reads the rule)

    rep = np.full(n, -1, dtype=np.int64)
    if len(a):
        graph = coo_matrix((np.ones(2 * len(a), dtype=np.int8), (np.concatenate([a, b]), np.concatenate([b, a]))), shape=(n, n)).tocsr()
        indptr, indices = graph.indptr, graph.indices
    else:
        indptr, indices = np.zeros(n + 1, dtype=np.int64), np.zeros(0, dtype=np.int64)
    for node in np.asarray(order, dtype=np.int64).tolist():
        if rep[node] >= 0:
            continue
        rep[node] = node
        nbrs = indices[indptr[node]:indptr[node + 1]]
        free = nbrs[rep[nbrs] < 0]
        rep[free] = node
    return rep


def components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected-component label of each node over the pairs (chains included)."""
    from scipy.sparse import coo_matrix  # noqa: PLC0415 (not imported when the Snakefile reads the rule)
    from scipy.sparse.csgraph import connected_components  # noqa: PLC0415 (not imported when the Snakefile reads the rule)

    if n == 0:
        return np.zeros(0, dtype=np.int64)
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    return connected_components(graph, directed=False)[1].astype(np.int64)


# --- which copy to keep ------------------------------------------------------------------------------

def _list_lengths(values: pd.Series) -> pd.Series:
    """Entries of each list, whether held as Python lists or as Arrow (a stage that only carries them)."""
    if isinstance(values.dtype, pd.ArrowDtype):
        return values.list.len().fillna(0).astype(np.int64)
    return values.map(len).astype(np.int64)


def preference_order(items: pd.DataFrame, near_dup: dict | None = None) -> pd.DataFrame:
    """``items`` sorted so the copy to keep comes first (:func:`preference_positions`)."""
    return items.iloc[preference_positions(items, near_dup)] if len(items) else items


def preference_positions(items: pd.DataFrame, near_dup: dict | None = None) -> np.ndarray:
    """Row positions of ``items``, the copy to keep first, by ``near_dup.keep`` (default: an
    original over a generated copy, then an unpadded copy over a padded one (a uniform border of
    at least :data:`PADDED_FRACTION` of the area: padding, letterboxing), more pixels, a higher
    ``quality_column`` value, an earlier source in ``source_priority``, a larger file, a copy
    with its own sidecar, more tags), then the smallest item id."""
    near_dup = near_dup or {}
    keep = list(near_dup.get("keep") or DEFAULT_KEEP)
    unknown = [k for k in keep if k not in KEEP_KEYS]
    if unknown:
        raise ConfigError(f"params.yaml: near_dup.keep has unknown keys {unknown}; choose from {list(KEEP_KEYS)}")
    quality = near_dup.get("quality_column")
    priority = {name: k for k, name in enumerate(near_dup.get("source_priority") or [])}
    cols = {
        "original": items["generated"].astype(bool),
        "border": (pd.to_numeric(items["border_fraction"], errors="coerce").fillna(0.0) >= PADDED_FRACTION) if "border_fraction" in items else False,
        "resolution": -(items["width"].astype(np.int64) * items["height"].astype(np.int64)),
        "quality": (-pd.to_numeric(items[quality], errors="coerce")).fillna(np.inf) if quality in items else 0,
        "source_priority": items["source"].map(priority).fillna(len(priority)),
        "file_size": -items["size"].astype(np.int64),
        "sidecar": items["sidecar"].isna(),
        "tags": -_list_lengths(items["tags"]),
    }
    if quality and quality not in items:
        raise ConfigError(f"params.yaml: near_dup.quality_column {quality!r} is not an item column")
    n = len(items)
    if not n:
        return np.zeros(0, dtype=np.int64)
    keys = [_as_key(cols[k], n) for k in keep] + [_text_rank(items["item_id"])]
    return np.lexsort(keys[::-1])


def _as_key(values, n: int) -> np.ndarray:
    """A sort key as numbers (a scalar: the same for every row; False before True)."""
    if np.ndim(values) == 0:
        return np.zeros(n, dtype=np.int8)
    values = np.asarray(values)
    return values.astype(np.float64 if values.dtype.kind == "f" else np.int64)


def _text_rank(values: pd.Series) -> np.ndarray:
    """Each value's place among them in code-point order (Arrow compares UTF-8 bytes: the same order)."""
    from .manifest import arrow_text  # noqa: PLC0415 (not imported when the Snakefile reads the rule)

    order = pc.sort_indices(arrow_text(values)).to_numpy()
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank


# --- the persisted index ---------------------------------------------------------------------------

class PairIndex:
    """Pairs among the contents of the last run, kept under a key of the rule, so a run compares
    only its new contents with each other and with the old ones (never the old against the old)."""

    def __init__(self, root: str | Path, key: str):
        self.dir = Path(root) / key
        self.contents_path = self.dir / "contents.json"
        self.pairs_path = self.dir / "pairs.parquet"

    def load(self) -> tuple[set[str], pd.DataFrame]:
        try:
            contents = set(json.loads(self.contents_path.read_text()))
            pairs = pd.read_parquet(self.pairs_path)
        except (OSError, ValueError):
            return set(), pd.DataFrame(columns=list(PAIR_FIELDS))
        return contents, pairs

    def save(self, contents: list[str], pairs: pd.DataFrame) -> None:
        from . import atomic  # noqa: PLC0415

        # pairs first: a run killed between the two writes sees the old contents list and
        # recomputes the new contents' pairs (duplicates are dropped on merge)
        with atomic.atomic_file(self.pairs_path) as tmp:
            pairs.to_parquet(tmp, index=False)
        atomic.write_text(self.contents_path, json.dumps(sorted(contents)))


@dataclass
class SearchStats:
    contents: int = 0
    new: int = 0
    reused_pairs: int = 0
    new_pairs: int = 0


def content_pairs(
    rule: Rule, shas: list[str], matrix: np.ndarray, emb: np.ndarray | None, index: PairIndex | None = None
) -> tuple[pd.DataFrame, SearchStats]:
    """Accepted pairs among contents (``a < b`` as SHA-256 strings), reusing the index's pairs
    among contents it has already seen."""
    shas = list(shas)
    stats = SearchStats(contents=len(shas))
    seen, stored = index.load() if index is not None else (set(), pd.DataFrame(columns=list(PAIR_FIELDS)))
    is_old = np.array([s in seen for s in shas], dtype=bool)
    old_idx, new_idx = np.flatnonzero(is_old), np.flatnonzero(~is_old)
    stats.new = len(new_idx)
    current = set(shas)
    kept = stored[stored["a"].isin(current) & stored["b"].isin(current)] if len(stored) else stored
    stats.reused_pairs = len(kept)
    sub = lambda m, idx: None if m is None else m[idx]  # noqa: E731
    sha_arr = np.array(shas, dtype=object)
    frames = [sha_pairs(sha_arr[new_idx], sha_arr[new_idx], find_pairs(rule, matrix[new_idx], sub(emb, new_idx)))]
    if len(old_idx) and len(new_idx):
        cross = find_pairs(rule, matrix[new_idx], sub(emb, new_idx), matrix[old_idx], sub(emb, old_idx))
        frames.append(sha_pairs(sha_arr[new_idx], sha_arr[old_idx], cross))
    frames = [f for f in frames if len(f)]
    new_pairs = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(PAIR_FIELDS))
    stats.new_pairs = len(new_pairs)
    pairs = pd.concat([kept, new_pairs], ignore_index=True) if len(kept) else new_pairs
    pairs = pairs.drop_duplicates(["a", "b"]).sort_values(["a", "b"], ignore_index=True)
    pairs = pairs.astype({"a": str, "b": str, "distance": np.int64, "cosine": np.float64, "rule": str})
    if index is not None:
        index.save(shas, pairs)
    return pairs, stats


def sha_pairs(shas_a: np.ndarray, shas_b: np.ndarray, found: pd.DataFrame) -> pd.DataFrame:
    """:func:`find_pairs` rows (``a`` into ``shas_a``, ``b`` into ``shas_b``) as SHA-256 pairs, ``a < b``."""
    sa = np.asarray(shas_a)[found["a"].to_numpy(np.int64)].astype(str)  # str, or bytes from a hashes file
    sb = np.asarray(shas_b)[found["b"].to_numpy(np.int64)].astype(str)
    return pd.DataFrame({
        "a": np.where(sa < sb, sa, sb).astype(str), "b": np.where(sa < sb, sb, sa).astype(str),
        "distance": found["distance"].to_numpy(np.int64), "cosine": found["cosine"].to_numpy(np.float64),
        "rule": found["rule"].astype(str).to_numpy(),
    })


def detect(paths: list[str], near_dup: dict, cache_dir: str | Path, threads: int = 1, seed: int = 0) -> pd.DataFrame:
    """The whole engine on a list of files (benchmarks, notebooks): one decode per content for
    the hashes, embeddings when the rule needs them, the rule's pairs. Returns ``a < b`` indices
    into ``paths`` and the ``rule`` clause (``exact`` for identical bytes); undecodable files
    pair with nothing but their byte-identical copies."""
    from . import hashing  # noqa: PLC0415
    from .stages import group  # noqa: PLC0415  (the stages import this module)

    cache_dir = Path(cache_dir)
    rule = Rule.from_params(near_dup, seed)
    shas = [hashing.sha256_file(p) for p in progress.bar(paths, desc="hash", unit="file")]
    table = group.feature_table(list(zip(shas, paths)), cache_dir, threads)
    pairs = group.search(rule, table, cache_dir, threads, index=False)[0] if len(table) else pd.DataFrame(columns=list(PAIR_FIELDS))
    rows_of: dict[str, list[int]] = {}
    for k, sha in enumerate(shas):
        rows_of.setdefault(sha, []).append(k)
    out = [(x, y, "exact") for rows in rows_of.values() for i, x in enumerate(rows) for y in rows[i + 1:]]
    for sa, sb, label in zip(pairs["a"], pairs["b"], pairs["rule"]):
        out += [(min(x, y), max(x, y), label) for x in rows_of[sa] for y in rows_of[sb]]
    frame = pd.DataFrame(out, columns=["a", "b", "rule"]).astype({"a": np.int64, "b": np.int64, "rule": str})
    return frame.sort_values(["a", "b"], ignore_index=True)
