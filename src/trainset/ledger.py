"""Nothing is lost: every raw item ends in exactly one of kept or rejected, with stage and reason."""

from __future__ import annotations

import pandas as pd

from . import manifest, schemas


class ConservationError(RuntimeError):
    """Raw items were lost or counted twice between ingest and export."""


def reject(rows: pd.DataFrame, stage, rule, reason, detail, triggered=None, duplicate_of=None) -> pd.DataFrame:
    """Rejected-manifest rows for ``rows`` (each field: a value or a Series
    aligned to rows; triggered holds the tags that made a policy rule fire, duplicate_of the
    item a dropped duplicate was dropped in favour of). ``nsfw_flag`` comes from the rows when the
    policy has judged them (filter and dedup), else False."""
    out = pd.DataFrame(
        {
            "item_id": rows["item_id"].astype(str),
            "sha256": rows["sha256"].astype(str),
            "source": rows["source"].astype(str),
            "path": rows["path"].astype(str),
            "stage": stage,
            "rule": rule,
            "reason": reason,
            "detail": detail,
        },
        index=rows.index,
    )
    if triggered is None:
        lists = [[] for _ in range(len(out))]
    elif isinstance(triggered, pd.Series):
        lists = [list(t) for t in triggered]
    else:
        lists = [list(triggered) for _ in range(len(out))]
    out["triggered_tags"] = pd.Series(lists, index=out.index, dtype=object)
    out["duplicate_of"] = pd.Series(duplicate_of, index=out.index, dtype=object)
    out["nsfw_flag"] = rows["nsfw_flag"].astype(bool) if "nsfw_flag" in rows.columns else False
    for col in ("stage", "rule", "reason", "detail"):
        out[col] = out[col].astype(str)
    return manifest.with_version(out)


def no_rejections() -> pd.DataFrame:
    return manifest.empty(schemas.REJECTED)


def check(raw: pd.DataFrame, kept: pd.DataFrame, rejected: pd.DataFrame) -> dict:
    """raw == kept + rejected, as sets of item ids and as counts; raises on any mismatch."""
    raw_ids = set(raw["item_id"])
    kept_ids = set(kept["item_id"])
    rej_ids = list(rejected["item_id"])
    problems = []
    twice_rejected = sorted({i for i in rej_ids if rej_ids.count(i) > 1}) if len(rej_ids) != len(set(rej_ids)) else []
    both = sorted(kept_ids & set(rej_ids))
    lost = sorted(raw_ids - kept_ids - set(rej_ids))
    unknown = sorted((kept_ids | set(rej_ids)) - raw_ids)
    if twice_rejected:
        problems.append(f"rejected more than once: {', '.join(twice_rejected[:10])}")
    if both:
        problems.append(f"both kept and rejected: {', '.join(both[:10])}")
    if lost:
        problems.append(f"neither kept nor rejected (lost): {', '.join(lost[:10])}")
    if unknown:
        problems.append(f"not in the raw manifest: {', '.join(unknown[:10])}")
    if len(raw) != len(kept) + len(rejected):
        problems.append(f"counts: raw {len(raw)} != kept {len(kept)} + rejected {len(rejected)}")
    if problems:
        raise ConservationError("item ledger does not balance:\n  " + "\n  ".join(problems))
    return {"raw": len(raw), "kept": len(kept), "rejected": len(rejected)}
