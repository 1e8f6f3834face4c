"""Everything -> the dataset report: counts per stage, reasons, moves, and GO/NO-GO.

The report and metrics are deterministic functions of the manifests (no clock, no host),
so two builds of the same inputs are byte-identical; run metadata goes elsewhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .. import atomic, audit_checks, balance, caption_qa, ledger, manifest, schemas

FIXES = {
    "zero_byte": "re-download or remove the empty files",
    "not_image": "remove the files that are not images, or give them their real extension",
    "truncated": "re-download the truncated files from their source",
    "corrupt": "re-export the corrupt files from their originals",
    "too_small": "upscale the small images or lower audit.min_side in params.yaml",
    "exact_duplicate": "remove the byte-identical copies from your sources",
    "near_duplicate": "remove the near-duplicate variants, or tighten near_dup.rule if they are really distinct",
    "reference_duplicate": "these copy images of a reference set (e.g. an evaluation holdout): keep them out of training",
}


def leakage(split: pd.DataFrame, pairs: pd.DataFrame) -> list[dict]:
    """Kept items that are exact or near duplicates of each other (by the pairs of the
    near-duplicate rule) but sit in different splits."""
    found = []
    by_sha = split.groupby("sha256", sort=True)
    for _, group in by_sha:
        members = list(zip(group["item_id"], group["split"]))
        for k, (a, split_a) in enumerate(members):
            for b, split_b in members[k + 1:]:
                if split_a != split_b:
                    found.append({"a": str(a), "b": str(b), "distance": 0, "rule": "exact", "splits": f"{split_a}/{split_b}"})
    first = split.drop_duplicates("sha256").set_index("sha256")
    live = pairs[pairs["a"].isin(first.index) & pairs["b"].isin(first.index)]
    for p in live.itertuples():
        sa, sb = first.at[p.a, "split"], first.at[p.b, "split"]
        if sa != sb:
            found.append({"a": str(first.at[p.a, "item_id"]), "b": str(first.at[p.b, "item_id"]), "distance": int(p.distance),
                          "rule": p.rule, "splits": f"{sa}/{sb}"})
    return found


def reference_matches(split: pd.DataFrame, rejected: pd.DataFrame, refs: pd.DataFrame) -> list[dict]:
    """Every item that duplicates a reference-set image: rejected for it, or kept (flagged)."""
    first = refs.sort_values(["sha256", "distance", "reference", "reference_path"]).drop_duplicates("sha256").set_index("sha256")
    rows = []
    dropped = rejected[rejected["reason"] == "reference_duplicate"]
    for status, frame in (("rejected", dropped), ("kept", split[split["sha256"].isin(first.index)])):
        for item_id, sha in zip(frame["item_id"], frame["sha256"]):
            if sha in first.index:
                m = first.loc[sha]
                rows.append({"item": str(item_id), "status": status, "reference": m["reference"],
                             "reference_path": m["reference_path"], "distance": int(m["distance"]), "rule": m["rule"]})
    return rows


def decide(metrics: dict, thresholds: dict) -> list[dict]:
    """One entry per GO/NO-GO check, each NO-GO with its fix."""
    checks = []
    min_kept = int(thresholds.get("min_kept", 1))
    checks.append({
        "check": f"at least {min_kept} items kept",
        "ok": metrics["kept"] >= min_kept,
        "value": metrics["kept"],
        "fix": f"add images to your sources ({min_kept - metrics['kept']} more needed) or lower report.min_kept",
    })
    max_share = float(thresholds.get("max_rejected_share", 1.0))
    top = max(metrics["rejected_by_reason"].items(), key=lambda kv: kv[1], default=(None, 0))
    checks.append({
        "check": f"rejected share at most {max_share:.0%}",
        "ok": metrics["rejected_share"] <= max_share,
        "value": f"{metrics['rejected_share']:.1%}",
        "fix": (f"the largest reason is {top[0]} ({top[1]} items): {FIXES.get(top[0], 'inspect those items')}"
                if top[0] else "inspect the rejected manifest"),
    })
    max_ref = int(thresholds.get("max_reference_matches", 0))
    checks.append({
        "check": f"kept items duplicating a reference set at most {max_ref}",
        "ok": metrics["reference_matches_kept"] <= max_ref,
        "value": metrics["reference_matches_kept"],
        "fix": "set near_dup.reference_action: reject, or remove those items from your sources",
    })
    max_leak = int(thresholds.get("max_split_leakage", 0))
    checks.append({
        "check": f"split leakage at most {max_leak} pairs",
        "ok": metrics["split_leakage"] <= max_leak,
        "value": metrics["split_leakage"],
        "fix": "duplicates cross train/val/test: rebuild so the split reads the same pairs as the dedup (data/manifests/pairs.parquet)",
    })
    return checks


def run(
    paths: dict, out_md: str | Path, out_metrics: str | Path, thresholds: dict,
    balance_params: dict | None = None, audit_params: dict | None = None,
) -> dict:
    raw = manifest.read(paths["ingest"], schemas.INGEST)
    rejected = manifest.read(paths["rejected"], schemas.REJECTED)
    filtered = manifest.read(paths["filtered"], schemas.FILTERED)
    split = manifest.read(paths["split"], schemas.SPLIT)
    export = manifest.read(paths["export"], schemas.EXPORT)
    moves = manifest.read(paths["moves"], schemas.MOVES)
    stage_counts = {name: len(manifest.read(p, schema)) for name, (p, schema) in {
        "audited": (paths["audit"], schemas.AUDIT),
        "filtered": (paths["filtered"], schemas.FILTERED),
        "deduped": (paths["deduped"], schemas.DEDUPED),
        "captioned": (paths["captioned"], schemas.CAPTIONED),
    }.items()}
    counts = ledger.check(raw, export, rejected)
    leaks = leakage(split, manifest.read(paths["pairs"], schemas.PAIRS))
    refs = reference_matches(split, rejected, manifest.read(paths["reference_pairs"], schemas.REFERENCE_PAIRS))
    by_reason = rejected["reason"].value_counts().sort_index().to_dict()
    policy_rows = rejected[rejected["stage"] == "policy"]
    flag_counts = pd.Series([f for fl in split["flags"] for f in fl], dtype="str").value_counts().sort_index()
    cells = balance.table(export.merge(split[["item_id", "archetype", "emotion"]], on="item_id", how="left"), balance_params)
    metrics = {
        **counts,
        "stages": {"raw": len(raw), **stage_counts, "split": len(split), "exported": len(export)},
        "rejected_share": round(counts["rejected"] / counts["raw"], 6) if counts["raw"] else 0.0,
        "rejected_by_reason": {k: int(v) for k, v in by_reason.items()},
        "excluded_by_rule": {k: int(v) for k, v in policy_rows["rule"].value_counts().sort_index().items()},
        "flags": {k: int(v) for k, v in flag_counts.items()},
        "nsfw_flagged_kept": int(export["nsfw_flag"].sum()),
        "untagged_raw": int(((raw["tags"].map(len) == 0) & (raw["rating"] == "unknown")).sum()),
        "splits": {s: int((export["split"] == s).sum()) for s in schemas.SPLITS},
        "sources": {s: int(n) for s, n in raw["source"].value_counts().sort_index().items()},
        "converted": int(export["conversion"].notna().sum()),
        "split_leakage": len(leaks),
        "reference_matches": len(refs),
        "reference_matches_kept": sum(r["status"] == "kept" for r in refs),
        "split_moves": len(moves),
        "sidecar_errors": int(raw["sidecar_error"].notna().sum()),
        "balance_cells_under_min": int((cells["status"] == "under_min").sum()),
    }
    orphans = manifest.read(paths["unmatched"], schemas.UNMATCHED) if paths.get("unmatched") else manifest.empty(schemas.UNMATCHED)
    metrics["unmatched_records"] = len(orphans)
    metrics["captions"] = caption_qa.summary(split, int(thresholds.get("rare_tag_under", 3)), int(thresholds.get("near_empty_tags", 1)))
    checks = decide(metrics, thresholds)
    metrics["go"] = all(c["ok"] for c in checks)
    thresholds_audit = {**audit_checks.DEFAULT_THRESHOLDS, **{k: v for k, v in (audit_params or {}).items() if k in audit_checks.DEFAULT_THRESHOLDS}}
    atomic.write_text(out_metrics, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    atomic.write_text(out_md, render(metrics, checks, rejected, moves, leaks, raw, cells, thresholds_audit, orphans, refs))
    return metrics


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return out


def render(
    metrics: dict, checks: list[dict], rejected: pd.DataFrame, moves: pd.DataFrame, leaks: list[dict],
    raw: pd.DataFrame, cells: pd.DataFrame | None = None, audit_thresholds: dict | None = None,
    orphans: pd.DataFrame | None = None, refs: list[dict] | None = None,
) -> str:
    verdict = "GO" if metrics["go"] else "NO-GO"
    lines = [f"# Dataset report: {verdict}", ""]
    lines.append(
        f"{metrics['raw']} raw items: {metrics['kept']} kept ({', '.join(f'{n} {s}' for s, n in metrics['splits'].items())}), "
        f"{metrics['rejected']} rejected. Every raw item is accounted for."
    )
    lines += ["", "## Decision", ""]
    lines += _table(["check", "result", "value", "fix"], [
        [c["check"], "pass" if c["ok"] else "**NO-GO**", c["value"], "" if c["ok"] else c["fix"]] for c in checks
    ])
    lines += ["", "## Items per stage", ""]
    lines += _table(["stage", "items"], [[k, v] for k, v in metrics["stages"].items()])
    audit_thresholds = audit_thresholds or audit_checks.DEFAULT_THRESHOLDS
    findings = rejected.loc[rejected["stage"] != "policy", "reason"].value_counts().to_dict()
    for code, n in metrics.get("flags", {}).items():
        if code in audit_checks.DEFAULT_ACTIONS:
            findings[code] = findings.get(code, 0) + n
    # audit codes only: duplicates and ingest problems have no finding line (and no empty section)
    findings = {c: n for c, n in findings.items() if c in audit_checks.DEFAULT_ACTIONS or c in schemas.DECODE_REASONS}
    if findings:
        lines += ["", "## Audit findings", ""]
        for code in sorted(findings):
            lines.append(f"- {audit_checks.describe(code, int(findings[code]), audit_thresholds)}")
    lines += ["", "## Policy", ""]
    excluded = metrics.get("excluded_by_rule", {})
    if excluded:
        lines += _table(["rule", "items excluded"], [[rule, n] for rule, n in excluded.items()])
        lines.append("")
        lines.append("Policy exclusions are shown as counts only; the rules that fired and the tags that triggered them are in the rejected manifest.")
    else:
        lines.append("No item was excluded by policy.")
    lines.append("")
    nsfw, untagged = metrics.get("nsfw_flagged_kept", 0), metrics.get("untagged_raw", 0)
    lines.append(
        f"{nsfw} kept {'item is' if nsfw == 1 else 'items are'} flagged NSFW; "
        f"{untagged} raw {'item has' if untagged == 1 else 'items have'} no tags and no rating."
    )
    if cells is not None and len(cells):
        lines += ["", "## Balance", ""]
        under = cells[cells["status"] == "under_min"]
        lines += _table(list(cells.columns), cells.values.tolist())
        lines.append("")
        lines.append(f"{len(under)} cells are under their minimum." if len(under) else "Every cell meets its minimum.")
    lines += ["", "## Rejected, by reason", ""]
    if len(rejected):
        grouped = rejected.groupby(["stage", "rule", "reason"], sort=True)
        rows = []
        for (stage, rule, reason), group in grouped:
            examples = "" if stage == "policy" else ", ".join(f"`{i}`" for i in group["item_id"].head(3))
            rows.append([stage, rule, reason, len(group), examples, FIXES.get(reason, "")])
        lines += _table(["stage", "rule", "reason", "items", "examples", "fix"], rows)
        lines += ["", "Every rejected item, with its detail, is in `data/manifests/rejected.parquet`."]
    else:
        lines.append("Nothing was rejected.")
    errors = raw[raw["sidecar_error"].notna()]
    if len(errors):
        lines += ["", "## Unreadable sidecars (items kept without tags)", ""]
        lines += _table(["item", "error"], [[f"`{r.item_id}`", r.sidecar_error] for r in errors.itertuples()])
    if orphans is not None and len(orphans):
        lines += ["", "## Metadata records with no image", ""]
        lines.append(f"{len(orphans)} metadata records matched no image file or could not be read (they are not items):")
        lines.append("")
        lines += _table(["source", "record", "md5", "note"], [[o.source, "" if pd.isna(o.record_id) else o.record_id, "" if pd.isna(o.md5) else o.md5, o.note] for o in orphans.head(50).itertuples()])
    lines += ["", "## Split", ""]
    lines.append(f"Leakage: {metrics['split_leakage']} duplicate pairs cross splits.")
    if leaks:
        lines += [""] + _table(["a", "b", "distance", "rule", "splits"], [[l["a"], l["b"], l["distance"], l["rule"], l["splits"]] for l in leaks[:50]])
    lines.append("")
    lines.append(f"Reference sets: {metrics.get('reference_matches', 0)} items duplicate an image of a reference set "
                 f"({metrics.get('reference_matches_kept', 0)} of them kept).")
    if refs:
        lines += [""] + _table(["item", "status", "reference", "file", "distance", "rule"], [
            [f"`{r['item']}`", r["status"], r["reference"], r["reference_path"], r["distance"], r["rule"]] for r in refs[:50]])
    lines.append("")
    if len(moves):
        lines.append(f"{len(moves)} items changed split since the last build, because a new item joined or bridged their near-duplicate component:")
        lines.append("")
        lines += _table(["item", "was", "now", "component key was", "component key now"], [
            [f"`{m.item_id}`", m.previous_split, m.split, m.previous_component_key[:16], m.component_key[:16]] for m in moves.itertuples()
        ])
    else:
        lines.append("No item changed split since the last build.")
    if "captions" in metrics:
        lines += caption_qa.render(metrics["captions"])
    lines += ["", "## Export", ""]
    lines.append(f"{metrics['converted']} items were converted for export; the rest keep their original bytes.")
    lines.append("")
    return "\n".join(lines)
