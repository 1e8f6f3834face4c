"""ingest + audit + groups -> filtered: audit checks and content policy, with reasons.

Every item is judged on tags and ratings merged across its exact-duplicate group and
near-duplicate cluster (canonicalized through the tag dictionary first, with manual tag
edits applied), so an untagged copy of an excluded image is excluded with it; the minors
rule reaches further, to the whole near-duplicate component. The minors
rule is checked first and for every item, including ones the audit rejects. Audit findings
either reject or flag, per ``audit.actions``.
"""

from __future__ import annotations

import contextlib
import gc
from pathlib import Path

import numpy as np
import pandas as pd

from .. import annotations, audit_checks, ledger, manifest, overrides, schemas
from ..config import ConfigError
from ..policy import RATING_ORDER, Policy, most_severe
from ..tags import TagDictionary

TAKEDOWN = ("policy", "takedown", "content taken down", "listed in takedown.txt (trainset purge)", [])
FINAL = ("minors", "takedown")
"""Rules nothing else replaces: not an override, not a decode failure."""


def merge_copies(items: pd.DataFrame) -> pd.DataFrame:
    """Tags, artists and rating merged across each cluster: own tags first, then the other
    copies' in item-id order; the most severe rating. Tags and artists come in without
    repeats (canonicalized), so an item alone in its cluster keeps its own lists."""
    items = _in_item_order(items).copy(deep=False)  # new columns replace, never write into, the caller's
    cluster, _ = pd.factorize(items["cluster_key"])
    shared = np.flatnonzero(np.bincount(cluster)[cluster] > 1)
    members = shared[np.argsort(cluster[shared], kind="stable")]  # grouped by cluster, item-id order within
    rating = items["rating"].where(items["rating"].isin(RATING_ORDER), "unknown")
    if len(members):
        spans = _spans(cluster[members])
        groups = [members[a:b].tolist() for a, b in spans]
        for column in ("tags", "artists"):
            lists = items[column].to_numpy(dtype=object, copy=True)
            for group in groups:
                _merge_lists(group, lists)
            items[column] = _lists(lists, items.index)
        ratings = items["rating"].iloc[members].tolist()
        severest = [most_severe(ratings[a:b]) for a, b in spans]
        rating.iloc[members] = np.repeat(np.array(severest, dtype=object), [b - a for a, b in spans])
    items["rating"] = rating.astype("str")
    return items


def _spans(keys: np.ndarray) -> list[tuple[int, int]]:
    """``(start, end)`` of each run of equal values in ``keys``."""
    bounds = (np.flatnonzero(np.diff(keys)) + 1).tolist()
    return list(zip([0, *bounds], [*bounds, len(keys)]))


def _merge_lists(group: list[int], lists: np.ndarray) -> None:
    """Give every member of one cluster (positions in item-id order) its own values, then the
    cluster's other ones."""
    merged = list(dict.fromkeys(value for position in group for value in lists[position]))
    if not merged:
        return  # no member has any: each keeps its own empty list
    for position in group:
        lists[position] = list(dict.fromkeys([*lists[position], *merged]))


def _in_item_order(items: pd.DataFrame) -> pd.DataFrame:
    return items if items["item_id"].is_monotonic_increasing else items.sort_values("item_id")


def _lists(values, index: pd.Index) -> pd.Series:
    """An object column of lists (pandas would read a list of equal-length lists as a table)."""
    if not isinstance(values, np.ndarray):
        values = np.fromiter(values, dtype=object, count=len(index))
    return pd.Series(values, index=index, dtype=object)


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
    tags = df["tags"].to_numpy(dtype=object, copy=True)
    for position, override in edited:
        tags[position] = _apply_tag_edits(tags[position], override, dictionary)
    return _lists(tags, df.index)


@contextlib.contextmanager
def _collector_paused():
    """Pause Python's cyclic garbage collector: this stage builds millions of small lists (tags,
    flags) and none of them form cycles, yet each collection would walk all of them again."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@_collector_paused()
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
    items = manifest.read(paths["ingest"], schemas.INGEST)
    dictionary = TagDictionary.load(tag_dictionaries or [])
    for column in ("tags", "artists"):  # before the next read: canonical lists share their strings, the read ones go
        items[column] = _lists(dictionary.canonicalize_all(items[column]), items.index)
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
    kept = df.loc[~rejected, list(schemas.FILTERED.columns)] if rejected.any() else df[list(schemas.FILTERED.columns)]
    del df
    return manifest.write(kept, out, schemas.FILTERED)


def _joined(items: pd.DataFrame, paths: dict) -> pd.DataFrame:
    """``items`` (in their order) with their audit row, cluster columns and NSFW score; each
    manifest loses the columns it does not add as soon as it is read."""
    audit = manifest.read(paths["audit"], schemas.AUDIT).drop(columns=["sha256", "schema_version"])
    groups = manifest.read(paths["groups"], schemas.GROUPS)[["item_id", *schemas.CLUSTER_COLUMNS]]
    scores = manifest.read(paths["nsfw"], schemas.NSFW_SCORES)[["item_id", "nsfw_score"]] if paths.get("nsfw") else None
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

    flags = list(map(list, map([d.flags for d in decisions].__getitem__, codes.tolist())))
    open_rows = np.ones(len(df), dtype=bool)
    open_rows[list(verdicts)] = False
    for position, record in _audit_candidates(df, open_rows, thresholds):
        override = edits.get(record["sha256"])
        for code, detail in audit_checks.findings(record, thresholds):
            action = actions.get(code, "flag")
            if action == "reject" and not (override and override.get("action") == "keep"):
                verdicts.setdefault(position, ("filter", "audit", code, detail, []))
            elif action != "off":
                flags[position].append(code)

    df["flags"] = _lists(flags, df.index)
    df["nsfw_flag"] = np.array([d.nsfw for d in decisions], dtype=bool)[codes]
    df["override"] = pd.Series(np.array([d.override for d in decisions], dtype=object)[codes], index=df.index).astype("str")
    df["caption_override"] = _caption_overrides(df, edits)
    return verdicts


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
