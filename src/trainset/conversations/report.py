"""The conversation report: what was read, kept and rejected (by stage and reason), the
curriculum against its targets, quality-score summaries, and a GO/NO-GO with the fix for each
failed check. Written as Markdown beside a metrics JSON that ``dvc metrics diff`` compares.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .. import atomic, manifest, schemas
from . import stages

DEFAULT_THRESHOLDS = {
    "min_kept": 10,                  # NO-GO below this many exported conversations
    "max_rejected_share": 0.6,       # NO-GO when more than this share of what was read is rejected
    "max_shortfall_points": 15.0,    # NO-GO when a stage misses its share by more than this many points
}
FIXES = {
    "unreadable": "fix the named lines in the source file (the reason says what is wrong)",
    "structure": "fix the turn order in the source, or set conversations.quality.drop_trailing_user: true",
    "unselected": "the stage was full: lower curriculum.size, change the shares, or add data to the short stages",
    "exact": "nothing to fix: copies are dropped, the earliest seen is kept",
    "near": "nothing to fix; raise conversations.dedup.near.threshold to keep closer variants",
    "semantic": "nothing to fix; raise conversations.dedup.semantic.threshold to keep paraphrases",
}


def quality_summary(scores: pd.DataFrame, kept: pd.DataFrame | None = None) -> dict:
    """Per numeric score: count, mean and quartiles over every scored conversation and over those
    kept; per flag-like column: how many carry it."""
    out: dict = {}
    kept_ids = set(kept["id"]) if kept is not None else None
    for column in scores.columns:
        if column in ("id", "sha256") or column.endswith("_turn"):  # positions, not measures
            continue
        values = scores[column]
        if pd.api.types.is_bool_dtype(values):
            out[column] = {"all": int(values.sum()), **({"kept": int(values[scores["id"].isin(kept_ids)].sum())} if kept_ids is not None else {})}
        elif pd.api.types.is_numeric_dtype(values):
            out[column] = {"all": _describe(values), **({"kept": _describe(values[scores["id"].isin(kept_ids)])} if kept_ids is not None else {})}
        elif values.map(lambda v: isinstance(v, (list, tuple, np.ndarray))).all():
            counts = pd.Series([x for v in values for x in v], dtype=str).value_counts().sort_index()
            out[column] = {str(k): int(v) for k, v in counts.items()}
        else:
            counts = values.astype(str).value_counts().head(10)
            out[column] = {str(k): int(v) for k, v in counts.items()}
    return out


def _describe(values: pd.Series) -> dict:
    v = pd.to_numeric(values, errors="coerce").dropna()
    if not len(v):
        return {"n": 0}
    q = v.quantile([0.1, 0.5, 0.9])
    return {"n": int(len(v)), "mean": round(float(v.mean()), 4), "p10": round(float(q[0.1]), 4),
            "p50": round(float(q[0.5]), 4), "p90": round(float(q[0.9]), 4)}


def run(paths: dict, out_md: str | Path, out_metrics: str | Path, thresholds: dict | None = None) -> dict:
    thresholds = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    read = stages.load(list(paths["read"]))
    rejected = manifest.read(paths["rejected"], schemas.CONVERSATIONS_REJECTED)
    kept = manifest.read(paths["split"], schemas.CONVERSATIONS_SPLIT)
    table = manifest.read(paths["stages"], schemas.CONVERSATION_STAGES)
    scores = manifest.read(paths["scores"], schemas.CONVERSATION_SCORES)
    export_manifest = json.loads((Path(paths["export"]) / "manifest.json").read_text())
    counts = stages.ledger(set(read["id"]), int((rejected["stage"] == "read").sum()), kept, rejected)
    by_source = []
    for source in sorted(set(read["source"]) | set(rejected["source"])):
        r = rejected[rejected["source"] == source]
        by_source.append({"source": source, "read": int((read["source"] == source).sum()), "unreadable": int((r["stage"] == "read").sum()),
                          "kept": int((kept["source"] == source).sum()), "rejected": int((r["stage"] != "read").sum())})
    flags = pd.Series([f for fl in kept["flags"] for f in fl], dtype=str).value_counts().sort_index()
    total = counts["read"] + counts["unreadable_records"]
    metrics = {
        **counts,
        "rejected_share": round((counts["rejected"] + counts["unreadable_records"]) / total, 6) if total else 0.0,
        "rejected_by_stage": {k: int(v) for k, v in rejected["stage"].value_counts().sort_index().items()},
        "rejected_by_rule": {k: int(v) for k, v in rejected["rule"].value_counts().sort_index().items()},
        "splits": {s: int((kept["split"] == s).sum()) for s in ("train", "eval")},
        "stages": {r.stage: {"train": int(r.selected), "eval": int(r.eval),
                             "target_share": float(r.target_share), "achieved_share": round(float(r.achieved_share), 6),
                             "shortfall": int(r.shortfall), "shortfall_points": round(float(r.shortfall_points), 3)}
                   for r in table.itertuples()},
        "edge_cases_kept": int(kept["is_training_edge_case"].sum()),
        "flags": {k: int(v) for k, v in flags.items()},
        "sources": by_source,
        "quality": export_manifest.get("quality") or {},
        "export_files": len(export_manifest.get("files") or {}),
    }
    # no conversation source at all (an image-only repository): nothing to decide
    checks = decide(metrics, thresholds) if total else []
    metrics["go"] = all(c["ok"] for c in checks) if total else None
    atomic.write_text(out_metrics, json.dumps(metrics, indent=2, sort_keys=True, default=str) + "\n")
    atomic.write_text(out_md, render(metrics, checks, rejected, table))
    return metrics


def decide(metrics: dict, thresholds: dict) -> list[dict]:
    """One entry per GO/NO-GO check, each with its fix."""
    checks = []
    min_kept = int(thresholds["min_kept"])
    checks.append({"check": f"at least {min_kept} conversations exported", "ok": metrics["kept"] >= min_kept,
                   "value": metrics["kept"], "fix": "add conversation sources or lower report.conversations.min_kept"})
    max_share = float(thresholds["max_rejected_share"])
    top = max(metrics["rejected_by_rule"].items(), key=lambda kv: kv[1], default=(None, 0))
    checks.append({"check": f"rejected share at most {max_share:.0%}", "ok": metrics["rejected_share"] <= max_share,
                   "value": f"{metrics['rejected_share']:.1%}",
                   "fix": f"the largest rule is {top[0]} ({top[1]}): {FIXES.get(top[0], 'inspect those conversations')}" if top[0] else "-"})
    limit = float(thresholds["max_shortfall_points"])
    worst = max(metrics["stages"].items(), key=lambda kv: kv[1]["shortfall_points"], default=(None, {"shortfall_points": 0.0}))
    checks.append({"check": f"every stage within {limit:g} share points of its target", "ok": worst[1]["shortfall_points"] <= limit,
                   "value": f"{worst[0]}: {worst[1]['shortfall_points']:.1f} points short" if worst[0] else "-",
                   "fix": f"add data that can enter {worst[0]} (see curriculum.crossover), or lower its share"})
    return checks


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in row) + " |" for row in rows]
    return out


def render(metrics: dict, checks: list[dict], rejected: pd.DataFrame, table: pd.DataFrame) -> str:
    if metrics["go"] is None:
        return ("# Conversation report: no conversations\n\nNo conversation source is configured "
                "(`conversations.sources` is empty and `conversations.demo` is false), so there is nothing to decide.\n")
    verdict = "GO" if metrics["go"] else "NO-GO"
    lines = [f"# Conversation report: {verdict}", ""]
    lines.append(
        f"{metrics['read']} conversations read ({metrics['unreadable_records']} more records could not be read): "
        f"{metrics['kept']} exported ({metrics['splits']['train']} train, {metrics['splits']['eval']} eval), "
        f"{metrics['rejected']} rejected. Every conversation read is accounted for.")
    lines += ["", "## Decision", ""]
    lines += _table(["check", "result", "value", "fix"],
                    [[c["check"], "ok" if c["ok"] else "**NO-GO**", c["value"], "" if c["ok"] else c["fix"]] for c in checks])
    lines += ["", "## Sources", ""]
    lines += _table(["source", "read", "unreadable records", "exported", "rejected"],
                    [[s["source"], s["read"], s["unreadable"], s["kept"], s["rejected"]] for s in metrics["sources"]])
    lines += ["", "## Curriculum", ""]
    lines += _table(["stage", "format", "target share", "target", "available", "train", "eval", "achieved share", "short by"],
                    [[r.stage, r.format, f"{r.target_share:.0%}", r.target_count, r.available, r.selected, r.eval,
                      f"{r.achieved_share:.1%}", f"{r.shortfall} ({r.shortfall_points:.1f} points)" if r.shortfall else "-"]
                     for r in table.itertuples()])
    notes = [n for n in table["note"] if isinstance(n, str)]
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    lines += ["", "## Rejected, by stage and reason", ""]
    if len(rejected):
        rows = []
        for (stage, rule), group in rejected.groupby(["stage", "rule"], sort=True):
            examples = ", ".join(f"`{i}`" for i in group["id"].head(3))
            rows.append([stage, rule, len(group), _short(group["reason"].iloc[0]), examples, FIXES.get(rule, "")])
        lines += _table(["stage", "rule", "conversations", "first reason", "examples", "fix"], rows)
        lines += ["", "Every rejected conversation, with its reason, is in `data/conversations/rejected.parquet`."]
    else:
        lines.append("Nothing was rejected.")
    if metrics["flags"]:
        lines += ["", "## Flags on exported conversations", "",
                  "Edge-case items keep their safety flags as `edge_case:*` (they bypass the safety filters, never silently); "
                  "`pii_redacted:*` names what was redacted.", ""]
        lines += _table(["flag", "conversations"], [[k, v] for k, v in metrics["flags"].items()])
    if metrics["quality"]:
        lines += ["", "## Quality scores", ""]
        rows = []
        for name, value in metrics["quality"].items():
            if isinstance(value, dict) and isinstance(value.get("all"), dict) and value["all"].get("n"):
                a, k = value["all"], value.get("kept") or {}
                rows.append([name, a["n"], a["mean"], a["p10"], a["p50"], a["p90"], k.get("mean", "-")])
        if rows:
            lines += _table(["score", "scored", "mean", "p10", "median", "p90", "mean of exported"], rows)
    lines += ["", "## Export", "", f"{metrics['export_files']} files in `data/export-conversations/`, listed with their SHA-256 in its `manifest.json`."]
    return "\n".join(lines) + "\n"


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
