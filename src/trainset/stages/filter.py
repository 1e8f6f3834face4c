"""ingest + audit + groups -> filtered: audit checks and content policy, with reasons.

Every item is judged on tags and ratings merged across its exact-duplicate group and
near-duplicate cluster (canonicalized through the tag dictionary first, with manual tag
edits applied), so an untagged copy of an excluded image is excluded with it; the minors
rule reaches further, to the whole near-duplicate component. The minors
rule is checked first and for every item, including ones the audit rejects. Audit findings
either reject or flag, per ``audit.actions``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from .. import annotations, audit_checks, ledger, manifest, overrides, schemas
from ..config import ConfigError
from ..policy import RATING_ORDER, Policy, most_severe
from ..tags import TagDictionary, list_array

TAKEDOWN = ("policy", "takedown", "content taken down", "listed in takedown.txt (trainset purge)", [])
FINAL = ("minors", "takedown")
"""Rules nothing else replaces: not an override, not a decode failure."""
LISTS = ("tags", "artists")
"""The ingest's lists, held as Arrow: only the rows that need it see them as Python lists."""


def merge_copies(items: pd.DataFrame) -> pd.DataFrame:
    """Tags, artists and rating merged across each cluster: own tags first, then the other
    copies' in item-id order; the most severe rating. Tags and artists come in without
    repeats (canonicalized), so an item alone in its cluster keeps its own lists."""
    items = _in_item_order(items).copy(deep=False)  # new columns replace, never write into, the caller's
    members, cluster = _shared_clusters(items)
    rating = items["rating"].where(items["rating"].isin(RATING_ORDER), "unknown")
    if len(members):
        spans = _spans(cluster)
        for column in LISTS:
            lists = list_array(items[column]).take(members).to_pylist()
            merged = [row for a, b in spans for row in _merged(lists[a:b])]
            items[column] = _with_rows(items[column], members, merged)
        ratings = items["rating"].iloc[members].tolist()
        severest = [most_severe(ratings[a:b]) for a, b in spans]
        rating.iloc[members] = np.repeat(np.array(severest, dtype=object), [b - a for a, b in spans])
    items["rating"] = rating.astype("str")
    return items


def _shared_clusters(items: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the items that share their cluster key with another item, grouped by
    cluster (item-id order within), and their cluster codes."""
    cluster, _ = pd.factorize(items["cluster_key"])
    shared = np.flatnonzero(np.bincount(cluster)[cluster] > 1)
    members = shared[np.argsort(cluster[shared], kind="stable")]
    return members, cluster[members]


def _spans(keys: np.ndarray) -> list[tuple[int, int]]:
    """``(start, end)`` of each run of equal values in ``keys``."""
    bounds = (np.flatnonzero(np.diff(keys)) + 1).tolist()
    return list(zip([0, *bounds], [*bounds, len(keys)]))


def _merged(lists: list[list[str]]) -> list[list[str]]:
    """The lists of one cluster's members (in item-id order): each member's own values, then
    the cluster's other ones."""
    merged = list(dict.fromkeys(value for own in lists for value in own))
    if not merged:
        return lists  # no member has any: each keeps its own empty list
    return [list(dict.fromkeys([*own, *merged])) for own in lists]


def _in_item_order(items: pd.DataFrame) -> pd.DataFrame:
    return items if items["item_id"].is_monotonic_increasing else items.sort_values("item_id")


def _held(lists: pa.Array, index: pd.Index) -> pd.Series:
    """An Arrow list array as a column (held as Arrow, written as the lists it stands for)."""
    return pd.Series(pd.arrays.ArrowExtensionArray(lists), index=index)


def _with_rows(values: pd.Series, positions: np.ndarray, lists: list[list[str]]) -> pd.Series:
    """A list column, held as Arrow, with the rows at ``positions`` replaced by ``lists``."""
    column = list_array(values)
    if not len(positions):
        return _held(column, values.index)
    order = np.arange(len(column))
    order[positions] = len(column) + np.arange(len(positions))
    return _held(pa.concat_arrays([column, pa.array(lists, type=column.type)]).take(order), values.index)


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
) -> pd.DataFrame:
    """``takedown``: content SHA-256s taken down (``trainset purge``): rejected before anything else."""
    takedown = takedown or set()
    items = manifest.read(paths["ingest"], schemas.INGEST, arrow_lists=LISTS)
    dictionary = TagDictionary.load(tag_dictionaries or [])
    for column in LISTS:
        items[column] = _held(dictionary.canonicalize_lists(list_array(items[column])), items.index)
    df = _joined(items, paths)
    del items
    df = annotations.join(df, annotations.load(annotation_files))
    df = merge_copies(df)
    edits = overrides.load(overrides_file)
    df["tags"] = _with_tag_edits(df, edits, dictionary)

    policy = Policy.from_params(policy_params, dictionary)
    thresholds, actions = _audit_settings(audit_params)
    if not len(df):  # no items (e.g. no sources): empty manifests with the schemas' dtypes
        manifest.write(ledger.no_rejections(), rejected_out, schemas.REJECTED)
        return manifest.write(manifest.empty(schemas.FILTERED), out, schemas.FILTERED)

    verdicts = _judge(df, policy, edits, takedown, thresholds, actions)
    _minors_follow_pairs(df, verdicts)
    _write_rejected(df, verdicts, rejected_out)
    rejected = np.zeros(len(df), dtype=bool)
    rejected[list(verdicts)] = True
    kept = manifest.take_rows(df, np.flatnonzero(~rejected), list(schemas.FILTERED.columns))
    del df
    return manifest.write(kept, out, schemas.FILTERED)


# the audit columns the filtered manifest takes (the ingest has the sha256)
_AUDIT_COLUMNS = [c for c in schemas.AUDIT.columns if c not in ("sha256", "schema_version")]


def _joined(items: pd.DataFrame, paths: dict) -> pd.DataFrame:
    """``items`` (in their order) with their audit row, cluster columns and NSFW score; of each
    manifest only the columns it adds are read, the pHash lists held as Arrow (only carried)."""
    audit = manifest.read(paths["audit"], schemas.AUDIT, columns=_AUDIT_COLUMNS, arrow_lists=manifest.CARRIED_LISTS)
    for column in manifest.CARRIED_LISTS:  # one chunk: the rows kept are then copied once, not again to write
        audit[column] = _held(list_array(audit[column]), audit.index)
    groups = manifest.read(paths["groups"], schemas.GROUPS, columns=["item_id", *schemas.CLUSTER_COLUMNS])
    scores = manifest.read(paths["nsfw"], schemas.NSFW_SCORES, columns=["item_id", "nsfw_score"]) if paths.get("nsfw") else None
    ids = items["item_id"]
    audit = _aligned(audit, ids, f"{paths['audit']}: no audit row")
    groups = _aligned(groups, ids, f"{paths['groups']}: no group row")
    df = pd.concat([items, audit.drop(columns="item_id"), groups.drop(columns="item_id")], axis=1)
    df["nsfw_score"] = _scores(scores, ids)
    return df


def _aligned(table: pd.DataFrame, ids: pd.Series, missing: str) -> pd.DataFrame:
    """``table``'s rows in the order of ``ids`` (item ids, unique on both sides)."""
    if len(table) == len(ids) and table["item_id"].array.equals(ids.array):
        return table.set_axis(ids.index)
    rows = pd.Index(table["item_id"]).get_indexer(ids)
    if (rows < 0).any():
        raise ValueError(f"{missing} for {', '.join(ids[rows < 0][:5])}")
    return table.iloc[rows].set_axis(ids.index)


def _scores(scores: pd.DataFrame | None, ids: pd.Series) -> pd.Series:
    """Each item's NSFW score; NaN without one (or without a scores manifest)."""
    if scores is None or not len(scores):
        return pd.Series(np.nan, index=ids.index, dtype="float64")
    scores = scores.drop_duplicates("item_id", keep="last")
    rows = pd.Index(scores["item_id"]).get_indexer(ids)
    values = scores["nsfw_score"].to_numpy(dtype=np.float64)
    return pd.Series(np.where(rows >= 0, values[rows], np.nan), index=ids.index, dtype="float64")


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


def _write_rejected(df: pd.DataFrame, verdicts: dict[int, tuple], path: str | Path) -> None:
    if not verdicts:
        manifest.write(ledger.no_rejections(), path, schemas.REJECTED)
        return
    rows = sorted(verdicts)
    hit = df.iloc[rows]
    picked = [verdicts[p] for p in rows]
    field = lambda k: pd.Series([v[k] for v in picked], index=hit.index, dtype=object)  # noqa: E731
    manifest.write(ledger.reject(hit, field(0), field(1), field(2), field(3), field(4)), path, schemas.REJECTED)


def _minors_follow_pairs(df: pd.DataFrame, verdicts: dict[int, tuple]) -> None:
    """Exclude every item in the near-duplicate component of an item the minors rule excluded.

    Tags merge per cluster (every member a direct near-duplicate of its representative), so a
    chain a~b~c can leave a copy in another cluster; for the rule nothing may override, any
    chain of near-duplicate pairs is enough. The source named is the component's first such
    item in item-id order."""
    minors = sorted(p for p, v in verdicts.items() if v[1] == "minors")
    if not minors:
        return
    components = df["component_key"]
    source: dict[str, tuple] = {}
    for position, comp, item_id in zip(minors, components.iloc[minors], df["item_id"].iloc[minors]):
        source.setdefault(comp, (item_id, verdicts[position]))
    reached = np.flatnonzero(components.isin(list(source)).to_numpy(dtype=bool)).tolist()
    for position, comp in zip(reached, components.iloc[reached]):
        if position in verdicts and verdicts[position][1] == "minors":
            continue
        other, verdict = source[comp]
        detail = f"near-duplicate (through a chain of pairs) of {other}, which the minors rule excluded: {verdict[3]}"
        verdicts[position] = ("policy", "minors", verdict[2], detail, list(verdict[4]))


def _failure(row) -> tuple | None:
    """A file that cannot be used at all: it did not decode, or failed an ingest check."""
    if not row.decoded:
        return ("filter", "decode", row.reason, row.detail or row.reason, [])
    if isinstance(row.ingest_reason, str) and row.ingest_reason:
        return ("filter", "ingest", row.ingest_reason, row.ingest_detail or row.ingest_reason, [])
    return None
