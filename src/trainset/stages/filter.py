"""ingest + audit + groups -> filtered: audit checks and content policy, with reasons.

Every item is judged on tags and ratings merged across its exact-duplicate group and
near-duplicate cluster (canonicalized through the tag dictionary first, with manual tag
edits applied), so an untagged copy of an excluded image is excluded with it; the minors
rule reaches further, to the whole near-duplicate component. The minors
rule is checked first and for every item, including ones the audit rejects. Audit findings
either reject or flag, per ``audit.actions``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import annotations, audit_checks, ledger, manifest, overrides, provenance, row_digests, schemas, shards
from ..config import ConfigError
from ..policy import RATING_ORDER, Policy
from ..tags import TagDictionary, list_array

TAKEDOWN = ("policy", "takedown", "content taken down", "listed in takedown.txt (trainset purge)", [])
FINAL = ("minors", "takedown")
"""Rules nothing else replaces: not an override, not a decode failure."""
LISTS = ("tags", "artists")
"""The ingest's lists, held as Arrow: only the rows that need it see them as Python lists."""


def merge_copies(items: pd.DataFrame) -> pd.DataFrame:
    """Tags, artists and rating merged across each cluster: own tags first, then the other
    copies' in item-id order; the most severe rating. An item alone in its cluster keeps its own."""
    items = _in_item_order(items).copy(deep=False)  # new columns replace, never write into, the caller's
    members, cluster = _shared_clusters(items)
    rating = items["rating"].where(items["rating"].isin(RATING_ORDER), "unknown")
    if len(members):
        for column in LISTS:
            merged = _merged_lists(list_array(items[column]).take(pa.array(members)), cluster)
            items[column] = _with_rows(items[column], members, merged)
        # the most severe rating of each cluster (ratings outside the known ones rank as unknown)
        rank = pd.Series(rating.iloc[members].to_numpy(dtype=object)).map({r: k for k, r in enumerate(RATING_ORDER)}).to_numpy(np.int64)
        starts = np.concatenate([[0], np.flatnonzero(np.diff(cluster)) + 1])
        severest = np.maximum.reduceat(rank, starts)
        rating.iloc[members] = np.asarray(RATING_ORDER, dtype=object)[np.repeat(severest, np.diff(np.append(starts, len(members))))]
    items["rating"] = rating.astype("str")
    return items


def _shared_clusters(items: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the items that share their cluster key with another item, grouped by
    cluster (item-id order within), and their cluster codes."""
    cluster, _ = pd.factorize(items["cluster_key"])
    shared = np.flatnonzero(np.bincount(cluster)[cluster] > 1)
    members = shared[np.argsort(cluster[shared], kind="stable")]
    return members, cluster[members]


def _merged_lists(lists: pa.ListArray, cluster: np.ndarray) -> pa.ListArray:
    """For each member (``cluster``: each one's cluster, a cluster's members adjacent and in item-id
    order), its own values, then its cluster's other values in the order they first appear, no
    value twice. In Arrow and NumPy: every value is a code, each member's slots are laid out own
    values first, and the repeats are dropped by one hash pass."""
    n = len(lists)
    encoded = pc.dictionary_encode(pc.list_flatten(lists), null_encoding="encode")
    code = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    member = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    width = max(len(encoded.dictionary), 1)
    # each cluster's values at their first appearance (the flattened order is member order)
    union = np.flatnonzero(~pd.Series(cluster[member] * width + code).duplicated().to_numpy())
    in_union = np.bincount(cluster[member[union]], minlength=int(cluster.max()) + 1)
    union_start = np.cumsum(in_union) - in_union
    own, added = np.bincount(member, minlength=n), in_union[cluster]
    size = own + added
    start = np.cumsum(size) - size
    slots = np.empty(int(size.sum()), dtype=np.int64)
    slots[start[member] + np.arange(len(member)) - (np.cumsum(own) - own)[member]] = code
    other = np.repeat(np.arange(n, dtype=np.int64), added)
    within = np.arange(len(other)) - np.repeat(np.cumsum(added) - added, added)
    slots[start[other] + own[other] + within] = code[union][union_start[cluster[other]] + within]
    slot_member = np.repeat(np.arange(n, dtype=np.int64), size)
    first = ~pd.Series(slot_member * width + slots).duplicated().to_numpy()
    offsets = np.concatenate([[0], np.cumsum(np.bincount(slot_member[first], minlength=n))]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), encoded.dictionary.take(pa.array(slots[first])))


def _in_item_order(items: pd.DataFrame) -> pd.DataFrame:
    return items if items["item_id"].is_monotonic_increasing else items.sort_values("item_id")


def _held(lists: pa.Array, index: pd.Index) -> pd.Series:
    """An Arrow list array as a column (held as Arrow, written as the lists it stands for)."""
    return pd.Series(pd.arrays.ArrowExtensionArray(lists), index=index)


def _with_rows(values: pd.Series, positions: np.ndarray, lists) -> pd.Series:
    """A list column, held as Arrow, with the rows at ``positions`` replaced by ``lists`` (Python or Arrow)."""
    column = list_array(values)
    if not len(positions):
        return _held(column, values.index)
    order = np.arange(len(column))
    order[positions] = len(column) + np.arange(len(positions))
    lists = lists.cast(column.type) if isinstance(lists, pa.Array) else pa.array(lists, type=column.type)
    return _held(pa.concat_arrays([column, lists]).take(order), values.index)


def _edited_rows(df: pd.DataFrame, edits: dict[str, dict]) -> list[tuple[int, dict]]:
    """``(position, override)`` for the rows the overrides file names."""
    if not edits:
        return []
    rows = np.flatnonzero(df["sha256"].isin(list(edits)).to_numpy(dtype=bool))
    return [(position, edits[sha]) for position, sha in zip(rows.tolist(), df["sha256"].iloc[rows])]


def _apply_tag_edits(tags: list[str], override: dict | None, dictionary: TagDictionary) -> list[str]:
    if not override:
        return tags
    remove = set(dictionary.canonicalize(override["remove_tags"]))
    kept = [t for t in tags if t not in remove]
    return list(dict.fromkeys([*kept, *dictionary.canonicalize(override["add_tags"])]))


def _with_tag_edits(df: pd.DataFrame, edits: dict[str, dict], dictionary: TagDictionary) -> pd.Series:
    """The tags column with the overrides' add_tags/remove_tags applied (only edited items change)."""
    edited = _edited_rows(df, edits)
    if not edited:
        return df["tags"]
    positions = np.array([position for position, _ in edited], dtype=np.int64)
    tags = list_array(df["tags"]).take(positions).to_pylist()
    return _with_rows(df["tags"], positions, [_apply_tag_edits(t, override, dictionary) for t, (_, override) in zip(tags, edited)])


def run(
    paths: dict,
    out: str | Path,
    rejected_out: str | Path,
    audit_params: dict,
    policy_params: dict,
    tag_dictionaries: list[str] | None = None,
    annotation_files: list[str] | None = None,
    overrides_file: str | None = None,
    takedown: set[str] | None = None,
    kept: str | Path | None = None,
) -> None:
    """``paths``: ``ingest``, ``audit``, ``groups``, ``nsfw`` (optional) manifests, and
    ``ingest_shards``, the shards' ingest files (``<shard>.parquet``), for an audit manifest
    written by shard. ``takedown``: content SHA-256s taken down (``trainset purge``):
    rejected before anything else.

    A batch of whole shards is held at a time (the audit manifest's row groups), the outputs
    written by shard. What crosses shards is narrow and known before the first batch: the cluster
    columns, the NSFW scores, and, for the items that share a near-duplicate component, their
    tags and ratings merged across clusters and which components the minors rule excludes.

    ``kept``: a folder where the last outputs are kept. A shard is judged again only when
    something its verdicts depend on changed: its ingest and audit rows, its items' cluster
    columns, scores and merged lists, the minors verdicts reaching its components, the settings
    (params, dictionaries, annotations, overrides, takedown list) or the code; else its kept and
    rejected rows are copied from the last run (:class:`manifest.ShardedWriter`)."""
    judge = _Judge.prepare(paths, audit_params, policy_params, tag_dictionaries, annotation_files, overrides_file, takedown)
    keys: dict[str, str] = {}
    if kept is not None:
        spec = _settings_spec(audit_params, policy_params, tag_dictionaries, annotation_files, overrides_file, takedown)
        keys = judge.shard_keys(paths, spec)
    kept = Path(kept) if kept is not None else None
    order = manifest.shard_groups(paths["audit"])
    with manifest.ShardedWriter(out, schemas.FILTERED, kept=kept and kept / "filtered.parquet", order=order) as kept_rows, \
            manifest.ShardedWriter(rejected_out, schemas.REJECTED, kept=kept and kept / "filter-rejected.parquet", order=order) as rejected:
        reused = {s for s, key in keys.items() if kept_rows.reusable(s, key) and rejected.reusable(s, key)}
        for s in reused:
            kept_rows.reuse(s, keys[s])
            rejected.reuse(s, keys[s])
        for shard, df, verdicts in judge.batches(paths, reused):
            _minors_follow_pairs(df, verdicts, judge.sources)
            _write_batch(shard, df, verdicts, kept_rows, rejected, manifest.keys_for(shard, keys))


def _settings_spec(audit_params, policy_params, tag_dictionaries, annotation_files, overrides_file, takedown) -> list:
    """What every verdict depends on beyond its item's rows: settings, the files they name, the code."""
    files = [*(tag_dictionaries or []), *(annotation_files or []), *([overrides_file] if overrides_file else [])]
    return ["filter", audit_params, policy_params, provenance.file_digests(files), sorted(takedown or []), provenance.code_digest()]


def _write_batch(shard: np.ndarray, df: pd.DataFrame, verdicts: dict, kept, rejected, keys: dict[str, str]) -> None:
    """A batch's kept and rejected rows, each under its shard (``shard``: per row of ``df``)."""
    rows = sorted(verdicts)
    rejected.write(shard[rows], _rejected_rows(df, verdicts) if rows else manifest.empty(schemas.REJECTED), keys=keys)
    mask = np.zeros(len(df), dtype=bool)
    mask[rows] = True
    kept_rows = np.flatnonzero(~mask)
    kept.write(shard[kept_rows], manifest.take_rows(df, kept_rows, list(schemas.FILTERED.columns)), keys=keys)


class _Judge:
    """What judging a shard needs from outside it: settings, and the narrow cross-shard tables."""

    def __init__(self, **fields):
        self.__dict__.update(fields)

    @classmethod
    def prepare(cls, paths, audit_params, policy_params, tag_dictionaries, annotation_files, overrides_file, takedown) -> "_Judge":
        dictionary = TagDictionary.load(tag_dictionaries or [])
        thresholds, actions = _audit_settings(audit_params)
        groups = manifest.read(paths["groups"], schemas.GROUPS, columns=["item_id", *schemas.CLUSTER_COLUMNS])
        scores = manifest.read(paths["nsfw"], schemas.NSFW_SCORES, columns=["item_id", "nsfw_score"]) if paths.get("nsfw") else None
        policy, edits, takedown = Policy.from_params(policy_params, dictionary), overrides.load(overrides_file), takedown or set()
        shared = _shared_rows(paths["ingest"], groups, dictionary)
        merged = _Merged(_merged_members(shared))
        return cls(
            dictionary=dictionary, thresholds=thresholds, actions=actions, takedown=takedown, policy=policy, edits=edits,
            notes=annotations.load(annotation_files), groups=groups,
            scores=_score_lookup(scores), merged=merged, sources=_minors_sources(shared, merged, policy, edits, dictionary, takedown),
        )

    def batches(self, paths: dict, skip: set[str] = frozenset()):
        """``(each row's shard, frame, verdicts)`` for each batch of shards of the audit manifest, judged;
        the shards in ``skip`` (reused) are not read."""
        ingest = _IngestRows(paths)
        judged = sum(ingest.count(name) for name in skip)
        for shard, audit_rows in manifest.read_batches(paths["audit"], schemas.AUDIT, manifest.BATCH_ROWS, columns=_AUDIT_COLUMNS,
                                                       skip=skip):
            items, shard = ingest.rows(shard, audit_rows["item_id"])
            if not len(items):
                continue
            judged += len(items)
            df = self.prepared(items, audit_rows, paths)
            yield shard, df, _judge(df, self.policy, self.edits, self.takedown, self.thresholds, self.actions)
        ingest.check_all_judged(judged)

    def prepared(self, items: pd.DataFrame, audit_rows: pd.DataFrame, paths: dict) -> pd.DataFrame:
        """One shard's items joined with their audit, cluster and NSFW columns and annotations, lists
        canonical and merged across clusters, manual tag edits applied: what the policy judges."""
        for column in LISTS:
            items[column] = _held(self.dictionary.canonicalize_lists(list_array(items[column])), items.index)
        ids = items["item_id"]
        audit_rows = _aligned(audit_rows, ids, f"{paths['audit']}: no audit row")
        groups = self._group_rows(ids, f"{paths['groups']}: no group row")
        df = pd.concat([items, audit_rows.drop(columns="item_id"), groups.drop(columns="item_id")], axis=1)
        df["nsfw_score"] = pd.Series(self.scores(ids), index=ids.index, dtype="float64")
        df = annotations.join(df, self.notes)
        df = _with_merged(df, self.merged)
        df["tags"] = _with_tag_edits(df, self.edits, self.dictionary)
        return df

    def shard_keys(self, paths: dict, spec: list) -> dict[str, str]:
        """shard -> the key of its verdicts: its audit rows' bytes, its ingest file's, what crosses
        shards for its items (cluster columns, NSFW score, merged lists and rating, the minors
        verdict reaching its component) and ``spec``. Empty (nothing reused) for an audit manifest
        not written by shard or without the shards' ingest files."""
        files = {Path(f).stem: Path(f) for f in paths.get("ingest_shards") or []}
        if not files:
            return {}
        names, bounds = manifest.shard_bounds(paths["audit"])
        audit = manifest.shard_digests(paths["audit"])  # none for a manifest not written by shard: no key
        ids = pq.read_table(paths["audit"], columns=["item_id"]).column(0).combine_chunks()
        rows = manifest.positions(ids, self.groups["item_id"], unique=True)
        if (rows < 0).any():  # the batches name the items without a group row
            return {}
        same = len(rows) == len(self.groups) and bool((rows == np.arange(len(rows))).all())  # audit and groups by the same shards
        columns = [pa.array(self.groups[c]) if same else pa.array(self.groups[c]).take(pa.array(rows)) for c in schemas.CLUSTER_COLUMNS]
        columns.append(pa.array(self.scores(ids)))
        columns.append(_merged_hashes(self.merged, ids))
        if self.sources:  # the minors verdict reaching each item's component, as text
            components = columns[list(schemas.CLUSTER_COLUMNS).index("component_key")]
            reached = list(self.sources)  # each verdict as text once, then taken per item
            text = pa.array([json.dumps(self.sources[c], default=str) for c in reached], type=pa.string())
            at = pc.index_in(components, value_set=pa.array(reached, type=pa.string()))
            columns.append(text.take(at))
        sides = row_digests.range_digests(columns, bounds)
        keys = {}
        for name, side in zip(names, sides):
            if name in files and name in audit:
                keys[name] = provenance.params_digest([spec, audit[name], *provenance.file_digests([files[name]]), side])
        return keys

    def _group_rows(self, ids: pd.Series, missing: str) -> pd.DataFrame:
        rows = manifest.positions(ids, self.groups["item_id"], unique=True)
        if (rows < 0).any():
            raise ValueError(f"{missing} for {', '.join(ids[rows < 0][:5])}")
        return manifest.rows_at(self.groups, rows).set_axis(ids.index)  # a batch's shards: one run of the groups' rows


def _repeated(values: pd.Series) -> np.ndarray:
    """Whether each value occurs more than once (one Arrow dictionary encoding, no Python object per row)."""
    codes = pc.dictionary_encode(manifest.arrow_text(values), null_encoding="encode").indices.to_numpy(zero_copy_only=False).astype(np.int64)
    return np.bincount(codes)[codes] > 1 if len(codes) else np.zeros(0, dtype=bool)


def _score_lookup(scores: pd.DataFrame | None):
    """item ids (a column or Arrow text) -> their NSFW scores (NaN without one, or without a
    scores manifest), as an array; the lookup's hash table built once. The scores' item ids are
    unique (validated when read)."""
    if scores is None or not len(scores):
        return lambda ids: np.full(len(ids), np.nan)
    index, values = manifest.arrow_text(scores["item_id"]), scores["nsfw_score"].to_numpy(dtype=np.float64)

    def lookup(ids) -> np.ndarray:
        rows = manifest.positions(ids, index, unique=True)
        return np.where(rows >= 0, values[rows], np.nan)
    return lookup


def _shared_rows(ingest_path: str | Path, groups: pd.DataFrame, dictionary: TagDictionary) -> pd.DataFrame:
    """The items that share their near-duplicate component with another (so also those sharing
    a cluster): item id, sha256, cluster and component keys, tags and artists (canonical) and
    rating. Read a batch of the ingest at a time, only these rows kept."""
    shared = groups[_repeated(groups["component_key"])]
    columns = ["item_id", "sha256", *LISTS, "rating"]
    parts = []
    if len(shared):
        wanted = pa.array(shared["item_id"].to_numpy(dtype=object), type=pa.string())
        for batch in pq.ParquetFile(ingest_path).iter_batches(columns=columns, batch_size=1 << 16):
            hit = pc.is_in(batch.column("item_id"), value_set=wanted)
            if pc.any(hit).as_py():
                parts.append(batch.filter(hit))
    if not parts:
        return pd.DataFrame({c: pd.Series([], dtype="str") for c in ["item_id", "sha256", "rating", "cluster_key", "component_key"]})
    table = pa.Table.from_batches(parts)
    rows = pd.DataFrame({c: table.column(c).to_pandas() for c in ("item_id", "sha256", "rating")})
    for column in LISTS:
        rows[column] = _held(dictionary.canonicalize_lists(table.column(column).combine_chunks()), rows.index)
    keys = shared.set_index("item_id")
    rows["cluster_key"] = keys["cluster_key"].reindex(rows["item_id"]).to_numpy()
    rows["component_key"] = keys["component_key"].reindex(rows["item_id"]).to_numpy()
    return rows.sort_values("item_id", ignore_index=True)


def _merged_members(shared: pd.DataFrame) -> pd.DataFrame:
    """The items that share their cluster with another: tags, artists and rating merged across
    the cluster (:func:`merge_copies`), by item id."""
    members = shared[_repeated(shared["cluster_key"])] if len(shared) else shared
    if not len(members):
        return pd.DataFrame(columns=["item_id", *LISTS, "rating"])
    merged = merge_copies(members.reset_index(drop=True))
    return merged[["item_id", *LISTS, "rating"]].reset_index(drop=True)


def _minors_sources(shared: pd.DataFrame, merged: "_Merged", policy: Policy, edits: dict, dictionary: TagDictionary,
                    takedown: set[str]) -> dict[str, tuple]:
    """component -> ``(item_id, verdict)`` of its first item (in item-id order) the minors rule
    excludes, over every shard: judged as :func:`_judge` judges it (tags merged and edited; the
    minors rule comes first and nothing but a takedown precedes it), on these items alone."""
    if not len(shared):
        return {}
    rows = _with_merged(shared, merged)
    rows["tags"] = _with_tag_edits(rows, edits, dictionary)
    rows = rows.iloc[_with_any(list_array(rows["tags"]), policy.minor_tags)]  # the rule needs a minor-indicating tag
    sources: dict[str, tuple] = {}
    for item_id, sha, comp, tags, rating in zip(rows["item_id"], rows["sha256"], rows["component_key"],
                                                 list_array(rows["tags"]).to_pylist(), rows["rating"]):
        if comp in sources or sha in takedown:
            continue
        ex = policy.minors(set(tags), rating)
        if ex is not None:
            sources[comp] = (item_id, ("policy", ex.rule, ex.reason, ex.detail, list(ex.triggered)))
    return sources


def _with_any(lists: pa.ListArray, values: frozenset[str]) -> np.ndarray:
    """Positions (in order) of the lists that hold any of ``values``."""
    if not values or not len(lists):
        return np.zeros(0, dtype=np.int64)
    hit = pc.is_in(pc.list_flatten(lists), value_set=pa.array(sorted(values), type=pa.string())).to_numpy(zero_copy_only=False)
    parents = pc.list_parent_indices(lists).to_numpy()
    return np.unique(parents[hit])


class _Merged:
    """The merged lists and rating of the items that share a cluster (:func:`_merged_members`),
    with what every batch looks them up by made once: a hash index of their ids, the lists as
    Arrow, the ratings as Python text."""

    def __init__(self, frame: pd.DataFrame):
        self.lists = {column: list_array(frame.pop(column)) for column in LISTS} if len(frame) else {}
        self.frame = frame  # item id and rating (the lists are held as Arrow alone)
        self.index = pd.Index(frame["item_id"])
        self.rating = frame["rating"].to_numpy(dtype=object)


def _with_merged(df: pd.DataFrame, merged: _Merged) -> pd.DataFrame:
    """A shard's rows with the merged lists and rating of those that share a cluster, every
    other rating outside the known ones read as unknown (as :func:`merge_copies` gives them)."""
    df = df.copy(deep=False)
    rating = df["rating"].where(df["rating"].isin(RATING_ORDER), "unknown")
    at = merged.index.get_indexer(df["item_id"]) if len(merged.frame) else np.full(len(df), -1)
    rows = np.flatnonzero(at >= 0)
    if len(rows):
        take = at[rows]
        for column in LISTS:
            df[column] = _with_rows(df[column], rows, merged.lists[column].take(pa.array(take)).to_pylist())
        rating.iloc[rows] = merged.rating[take]
    df["rating"] = rating.astype("str")
    return df


class _IngestRows:
    """A batch's ingest rows: its shards' own files for an audit written by shard, else the whole ingest."""

    def __init__(self, paths: dict):
        self.files = {Path(f).stem: Path(f) for f in paths.get("ingest_shards") or []}
        self.path = paths["ingest"]
        self.whole: pd.DataFrame | None = None

    def rows(self, shard: np.ndarray, ids: pd.Series) -> tuple[pd.DataFrame, np.ndarray]:
        """The ingest rows (checked) and each one's shard."""
        names = [n for n in pd.unique(shard) if n]
        if names and self.files:
            missing = [n for n in names if n not in self.files]
            if missing:
                raise ValueError(f"no ingest file for shard(s) {', '.join(missing[:5])} of the audit manifest (stale?)")
            files = [self.files[name] for name in names]
            items = _checked(shards.concat(files, schemas.INGEST), files)
            return items, np.repeat(np.array(names, dtype=object), [pq.read_metadata(f).num_rows for f in files])
        if self.whole is None:
            self.whole = manifest.read(self.path, schemas.INGEST, arrow_lists=LISTS)
        if not names:
            return self.whole, np.full(len(self.whole), "", dtype=object)
        at = pd.Index(self.whole["item_id"]).get_indexer(ids)
        keep = at >= 0
        return self.whole.iloc[at[keep]].reset_index(drop=True), shard[keep]

    def count(self, shard: str) -> int:
        """A shard's ingest rows (from its file's metadata)."""
        return pq.read_metadata(self.files[shard]).num_rows

    def check_all_judged(self, judged: int) -> None:
        """Every ingest item was in a shard of the audit manifest (a shard missing there would
        otherwise drop its items unseen)."""
        total = pq.read_metadata(self.path).num_rows
        if judged != total:
            raise ValueError(f"{self.path}: {total - judged} ingest item(s) in no shard of the audit manifest (stale?)")


def _merged_hashes(merged: "_Merged", ids: pa.Array) -> pa.Array:
    """For each of ``ids``, a hash of its merged tags, artists and rating (null outside ``merged``)."""
    frame = merged.frame
    if not len(frame):
        return pa.nulls(len(ids), type=pa.uint64())
    joined = pd.DataFrame({
        "item_id": frame["item_id"].astype(str),
        **{c: pd.Series(pc.binary_join(merged.lists[c], "\x1f").to_numpy(zero_copy_only=False), dtype=object) for c in LISTS},
        **{f"{c}_n": pc.list_value_length(merged.lists[c]).to_numpy(zero_copy_only=False) for c in LISTS},
        "rating": frame["rating"].astype(str),
    })
    hashes = pa.array(pd.util.hash_pandas_object(joined, index=False).to_numpy())
    at = manifest.positions(ids, frame["item_id"])
    return hashes.take(pa.array(at, mask=at < 0))


def _checked(items: pd.DataFrame, files: list[Path]) -> pd.DataFrame:
    """Several shards' ingest rows checked in one pass; a failure is named in its own file."""
    try:
        return manifest.validate(items, schemas.INGEST, files[0])
    except manifest.ManifestError:
        for f in files:
            manifest.read(f, schemas.INGEST)
        raise


# the audit columns the filter reads (the ingest has the sha256; the pHash views stay in the audit)
_AUDIT_COLUMNS = [c for c in schemas.AUDIT.columns if c not in ("sha256", "schema_version", "phash_views")]


def _aligned(table: pd.DataFrame, ids: pd.Series, missing: str) -> pd.DataFrame:
    """``table``'s rows in the order of ``ids`` (item ids, unique on both sides)."""
    if len(table) == len(ids) and table["item_id"].array.equals(ids.array):
        return table.set_axis(ids.index)
    rows = pd.Index(table["item_id"]).get_indexer(ids)
    if (rows < 0).any():
        raise ValueError(f"{missing} for {', '.join(ids[rows < 0][:5])}")
    return table.iloc[rows].set_axis(ids.index)


def _audit_settings(audit_params: dict) -> tuple[dict, dict]:
    """Thresholds and per-code actions from ``params.yaml: audit``."""
    thresholds = {**audit_checks.DEFAULT_THRESHOLDS, **{k: v for k, v in audit_params.items() if k in audit_checks.DEFAULT_THRESHOLDS}}
    actions = {**audit_checks.DEFAULT_ACTIONS, **(audit_params.get("actions") or {})}
    for code, action in actions.items():
        if code not in audit_checks.DEFAULT_ACTIONS or action not in ("reject", "flag", "off"):
            raise ConfigError(f"params.yaml: audit.actions.{code}: expected a known check set to reject, flag or off, got {action!r}")
    return thresholds, actions


def _judge(df: pd.DataFrame, policy: Policy, edits: dict, takedown: set[str], thresholds: dict, actions: dict) -> dict[int, tuple]:
    """Verdicts ``(stage, rule, reason, detail, triggered)`` by row position, for rejected rows
    only; adds the flags, nsfw_flag, override and caption_override columns.

    Per item, in order: takedown, else the policy's exclusion; unless that is final, a file that
    cannot be used at all; if still kept, the audit findings reject or flag it."""
    codes, decisions = policy.decide_all(df, edits)
    exclusions = [d.exclusion for d in decisions]
    taken_down = df["sha256"].isin(list(takedown)).to_numpy(dtype=bool) if takedown else np.zeros(len(df), dtype=bool)
    excluded = np.array([e is not None for e in exclusions], dtype=bool)[codes] & ~taken_down
    final = taken_down | np.array([e is not None and e.rule in FINAL for e in exclusions], dtype=bool)[codes]

    verdicts: dict[int, tuple] = {int(p): TAKEDOWN for p in np.flatnonzero(taken_down)}
    for position in np.flatnonzero(excluded).tolist():
        ex = exclusions[codes[position]]
        verdicts[position] = ("policy", ex.rule, ex.reason, ex.detail, list(ex.triggered))
    verdicts.update(_failures(df, ~final))  # an unusable file is rejected whatever the policy says (minors aside)

    found: dict[int, list[str]] = {}
    open_rows = np.ones(len(df), dtype=bool)
    open_rows[list(verdicts)] = False
    for position, record in _audit_candidates(df, open_rows, thresholds):
        override = edits.get(record["sha256"])
        for code, detail in audit_checks.findings(record, thresholds):
            action = actions.get(code, "flag")
            if action == "reject" and not (override and override.get("action") == "keep"):
                verdicts.setdefault(position, ("filter", "audit", code, detail, []))
            elif action != "off":
                found.setdefault(position, []).append(code)

    df["flags"] = _flags(decisions, codes, found, df.index)
    df["nsfw_flag"] = np.array([d.nsfw for d in decisions], dtype=bool)[codes]
    df["override"] = pd.Series(np.array([d.override for d in decisions], dtype=object)[codes], index=df.index).astype("str")
    df["caption_override"] = _caption_overrides(df, edits)
    return verdicts


def _flags(decisions: list, codes: np.ndarray, found: dict[int, list[str]], index: pd.Index) -> pd.Series:
    """Each row's flags: its decision's, then the audit codes ``found`` for it (by position)."""
    decided = pa.array([list(d.flags) for d in decisions], type=pa.list_(pa.string())).take(codes)
    positions = np.array(sorted(found), dtype=np.int64)
    return _with_rows(_held(decided, index), positions, [[*decisions[codes[p]].flags, *found[p]] for p in positions.tolist()])


def _failures(df: pd.DataFrame, among: np.ndarray) -> dict[int, tuple]:
    """Verdicts for files that cannot be used at all, among the rows ``among`` marks."""
    undecoded = ~df["decoded"].to_numpy(dtype=bool)
    ingest_failed = (df["ingest_reason"].fillna("") != "").to_numpy(dtype=bool, na_value=True)
    rows = np.flatnonzero(among & (undecoded | ingest_failed))
    fields = df[["decoded", "reason", "detail", "ingest_reason", "ingest_detail"]].iloc[rows]
    found = {p: _failure(row) for p, row in zip(rows.tolist(), fields.itertuples(index=False))}
    return {p: failure for p, failure in found.items() if failure is not None}


def _audit_candidates(df: pd.DataFrame, among: np.ndarray, thresholds: dict):
    """``(position, row as a dict)`` for the rows ``among`` marks where an audit check can fire."""
    rows = np.flatnonzero(among & audit_checks.may_find(df, thresholds))
    fields = df[[*audit_checks.FIELDS, "sha256"]].iloc[rows]
    for position, row in zip(rows.tolist(), fields.itertuples(index=False)):
        yield position, row._asdict()


def _caption_overrides(df: pd.DataFrame, edits: dict[str, dict]) -> pd.Series:
    """Each item's caption from the overrides file (missing where it sets none)."""
    captions = np.full(len(df), None, dtype=object)
    for position, override in _edited_rows(df, edits):
        captions[position] = override.get("caption")
    return pd.Series(captions, index=df.index).astype("str")


def _rejected_rows(df: pd.DataFrame, verdicts: dict[int, tuple]) -> pd.DataFrame:
    rows = sorted(verdicts)
    hit = df.iloc[rows]
    picked = [verdicts[p] for p in rows]
    field = lambda k: pd.Series([v[k] for v in picked], index=hit.index, dtype=object)  # noqa: E731
    return ledger.reject(hit, field(0), field(1), field(2), field(3), field(4))


def _minors_follow_pairs(df: pd.DataFrame, verdicts: dict[int, tuple], sources: dict[str, tuple]) -> None:
    """Exclude every item in the near-duplicate component of an item the minors rule excluded.

    Tags merge per cluster (every member a direct near-duplicate of its representative), so a
    chain a~b~c can leave a copy in another cluster; for the rule nothing may override, any
    chain of near-duplicate pairs is enough. ``sources``: component -> its first such item in
    item-id order and that item's verdict, over every shard (:func:`_minors_sources`)."""
    if not sources:
        return
    components = df["component_key"]
    reached = np.flatnonzero(components.isin(list(sources)).to_numpy(dtype=bool)).tolist()
    for position, comp in zip(reached, components.iloc[reached]):
        if position in verdicts and verdicts[position][1] == "minors":
            continue
        other, verdict = sources[comp]
        detail = f"near-duplicate (through a chain of pairs) of {other}, which the minors rule excluded: {verdict[3]}"
        verdicts[position] = ("policy", "minors", verdict[2], detail, list(verdict[4]))


def _failure(row) -> tuple | None:
    """A file that cannot be used at all: it did not decode, or failed an ingest check."""
    if not row.decoded:
        return ("filter", "decode", row.reason, row.detail or row.reason, [])
    if isinstance(row.ingest_reason, str) and row.ingest_reason:
        return ("filter", "ingest", row.ingest_reason, row.ingest_detail or row.ingest_reason, [])
    return None
