"""ingest + audit + groups -> filtered: audit checks and content policy, with reasons.

Every item is judged on tags and ratings merged across its exact-duplicate group and
near-duplicate cluster (canonicalized through the tag dictionary first, with manual tag
edits applied), so an untagged copy of an excluded image is excluded with it; the minors
rule reaches further, to the whole near-duplicate component. The minors
rule is checked first and for every item, including ones the audit rejects. Audit findings
either reject or flag, per ``audit.actions``.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from .. import annotations, audit_checks, ledger, manifest, overrides, schemas
from ..config import ConfigError
from ..policy import Policy, most_severe
from ..tags import TagDictionary



def merge_copies(items: pd.DataFrame) -> pd.DataFrame:
    """Tags, artists and rating merged across each cluster: own tags first, then the other
    copies' in item-id order; the most severe rating."""
    items = items.sort_values("item_id").copy()
    merged_tags, merged_artists, merged_rating = {}, {}, {}
    for key, group in items.groupby("cluster_key", sort=False):
        tags: dict[str, None] = {}
        for t in group["tags"]:
            tags.update(dict.fromkeys(t))
        artists: dict[str, None] = {}
        for a in group["artists"]:
            artists.update(dict.fromkeys(a))
        merged_tags[key], merged_artists[key] = list(tags), list(artists)
        merged_rating[key] = most_severe(group["rating"])
    items["tags"] = [list(dict.fromkeys([*own, *merged_tags[k]])) for own, k in zip(items["tags"], items["cluster_key"])]
    items["artists"] = [list(dict.fromkeys([*own, *merged_artists[k]])) for own, k in zip(items["artists"], items["cluster_key"])]
    items["rating"] = items["cluster_key"].map(merged_rating).astype("str")
    return items


def _apply_tag_edits(tags: list[str], override: dict | None, dictionary: TagDictionary) -> list[str]:
    if not override:
        return tags
    remove = set(dictionary.canonicalize(override["remove_tags"]))
    kept = [t for t in tags if t not in remove]
    return list(dict.fromkeys([*kept, *dictionary.canonicalize(override["add_tags"])]))


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
    audit = manifest.read(paths["audit"], schemas.AUDIT)
    groups = manifest.read(paths["groups"], schemas.GROUPS)
    scores = manifest.read(paths["nsfw"], schemas.NSFW_SCORES) if paths.get("nsfw") else None

    df = items.merge(audit.drop(columns=["sha256", "schema_version"]), on="item_id", how="left", validate="one_to_one")
    if df["decoded"].isna().any():
        raise ValueError(f"{paths['audit']}: no audit row for {', '.join(df.loc[df['decoded'].isna(), 'item_id'][:5])}")
    df = df.merge(groups[["item_id", *schemas.CLUSTER_COLUMNS]], on="item_id", how="left", validate="one_to_one")
    if df["cluster_key"].isna().any():
        raise ValueError(f"{paths['groups']}: no group row for {', '.join(df.loc[df['cluster_key'].isna(), 'item_id'][:5])}")
    score_of = dict(zip(scores["item_id"], scores["nsfw_score"])) if scores is not None else {}
    df["nsfw_score"] = df["item_id"].map(score_of).astype("float64")
    df = annotations.join(df, annotations.load(annotation_files))

    dictionary = TagDictionary.load(tag_dictionaries or [])
    df["tags"] = df["tags"].map(dictionary.canonicalize)
    df["artists"] = df["artists"].map(dictionary.canonicalize)
    df = merge_copies(df)
    edits = overrides.load(overrides_file)
    df["tags"] = [_apply_tag_edits(t, edits.get(sha), dictionary) for t, sha in zip(df["tags"], df["sha256"])]

    policy = Policy.from_params(policy_params, dictionary)
    thresholds = {**audit_checks.DEFAULT_THRESHOLDS, **{k: v for k, v in audit_params.items() if k in audit_checks.DEFAULT_THRESHOLDS}}
    actions = {**audit_checks.DEFAULT_ACTIONS, **(audit_params.get("actions") or {})}
    for code, action in actions.items():
        if code not in audit_checks.DEFAULT_ACTIONS or action not in ("reject", "flag", "off"):
            raise ConfigError(f"params.yaml: audit.actions.{code}: expected a known check set to reject, flag or off, got {action!r}")
    if not len(df):  # no items (e.g. no sources): empty manifests with the schemas' dtypes
        manifest.write(ledger.no_rejections(), rejected_out, schemas.REJECTED)
        return manifest.write(manifest.empty(schemas.FILTERED), out, schemas.FILTERED)

    verdicts = []  # (stage, rule, reason, detail, triggered) or None
    flags_col, nsfw_col, override_col, caption_col = [], [], [], []
    for row in df.itertuples(index=False):
        record = row._asdict()
        override = edits.get(row.sha256)
        decision = policy.decide(record, override)
        flags = list(decision.flags)
        verdict = None
        if row.sha256 in takedown:
            verdict = TAKEDOWN
        elif decision.exclusion is not None:
            ex = decision.exclusion
            verdict = ("policy", ex.rule, ex.reason, ex.detail, list(ex.triggered))
        if verdict is None or verdict[1] not in FINAL:
            failure = _failure(row)
            if failure is not None:
                verdict = failure  # an unusable file is rejected whatever the policy says (minors aside)
            elif verdict is None:
                for code, detail in audit_checks.findings(record, thresholds):
                    action = actions.get(code, "flag")
                    if action == "reject" and not (override and override.get("action") == "keep"):
                        verdict = verdict or ("filter", "audit", code, detail, [])
                    elif action != "off":
                        flags.append(code)
        verdicts.append(verdict)
        flags_col.append(flags)
        nsfw_col.append(bool(decision.nsfw))
        override_col.append(decision.override)
        caption_col.append(override.get("caption") if override else None)
    _minors_follow_pairs(df, verdicts)
    df["flags"], df["nsfw_flag"], df["override"], df["caption_override"] = flags_col, nsfw_col, override_col, caption_col
    for col in ("override", "caption_override"):
        df[col] = df[col].astype("str")

    rejected_mask = pd.Series([v is not None for v in verdicts], index=df.index)
    hit = df[rejected_mask]
    picked = [v for v in verdicts if v is not None]
    as_series = lambda k: pd.Series([v[k] for v in picked], index=hit.index, dtype=object)  # noqa: E731
    rejected = ledger.reject(hit, as_series(0), as_series(1), as_series(2), as_series(3), as_series(4)) if len(hit) else ledger.no_rejections()
    manifest.write(rejected, rejected_out, schemas.REJECTED)
    return manifest.write(df[~rejected_mask][list(schemas.FILTERED.columns)], out, schemas.FILTERED)


TAKEDOWN = ("policy", "takedown", "content taken down", "listed in takedown.txt (trainset purge)", [])
FINAL = ("minors", "takedown")
"""Rules nothing else replaces: not an override, not a decode failure."""


def _minors_follow_pairs(df: pd.DataFrame, verdicts: list) -> None:
    """Exclude every item in the near-duplicate component of an item the minors rule excluded.

    Tags merge per cluster (every member a direct near-duplicate of its representative), so a
    chain a~b~c can leave a copy in another cluster; for the rule nothing may override, any
    chain of near-duplicate pairs is enough."""
    source = {}
    for item_id, comp, verdict in zip(df["item_id"], df["component_key"], verdicts):
        if verdict is not None and verdict[1] == "minors":
            source.setdefault(comp, (item_id, verdict))
    for k, (item_id, comp) in enumerate(zip(df["item_id"], df["component_key"])):
        if comp in source and (verdicts[k] is None or verdicts[k][1] != "minors"):
            other, verdict = source[comp]
            detail = f"near-duplicate (through a chain of pairs) of {other}, which the minors rule excluded: {verdict[3]}"
            verdicts[k] = ("policy", "minors", verdict[2], detail, list(verdict[4]))


def _failure(row) -> tuple | None:
    """A file that cannot be used at all: it did not decode, or failed an ingest check."""
    if not row.decoded:
        return ("filter", "decode", row.reason, row.detail or row.reason, [])
    if isinstance(row.ingest_reason, str) and row.ingest_reason:
        return ("filter", "ingest", row.ingest_reason, row.ingest_detail or row.ingest_reason, [])
    return None
