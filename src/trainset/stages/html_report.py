"""Manifests -> the HTML report: one folder (``index.html`` and ``thumbs/``) that opens from disk.

A curator decides from pictures: the GO/NO-GO with its reasons and fixes, near-duplicate
clusters as thumbnail grids (the kept one marked), rejected items grouped by reason, and the
distributions (balance against its targets, resolution, aspect ratio, tags, caption lengths,
conversation stage shares). Policy exclusions appear as counts only: no thumbnail of an item
the policy excluded is ever made, and NSFW-flagged items are blurred (``report.html``).

The page is a deterministic function of the manifests and params, like the Markdown report.
"""

from __future__ import annotations

import json
import shutil
from html import escape
from pathlib import Path

import pandas as pd

from .. import atomic, balance, charts, distributions, manifest, schemas, thumbnails
from ..conversations import report as conversation_report
from . import report as image_report

DEFAULTS = {
    "thumb_size": 160,        # px, the longer side
    "max_clusters": 60,       # near-duplicate clusters shown (largest first)
    "max_per_reason": 24,     # rejected items shown per reason
    "max_kept": 48,           # kept items shown with their captions (a fixed sample: the lowest SHA-256s)
    "top_tags": 30,
    "nsfw_thumbnails": "blur",  # blur | hide | show: how items the policy flagged NSFW are drawn
}
SECTIONS = (("summary", "Summary"), ("kept", "Kept samples"), ("duplicates", "Near duplicates"), ("rejected", "Rejected"), ("policy", "Policy"),
            ("balance", "Balance"), ("resolution", "Resolution"), ("aspect-ratio", "Aspect ratio"), ("tags", "Tags"),
            ("captions", "Captions"), ("conversations", "Conversations"))

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#263238;color:#fff;padding:12px 24px}header a{color:#cfd8dc;margin-right:14px;text-decoration:none}
main{padding:8px 24px 48px;max-width:1400px}section{background:#fff;border:1px solid #e0e0e0;border-radius:6px;padding:8px 18px 16px;margin:16px 0}
.verdict{display:inline-block;padding:4px 14px;border-radius:4px;font-weight:bold;color:#fff}.go{background:#2e7d32}.nogo{background:#c62828}.none{background:#78909c}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}th{background:#f1f3f4}
.fail{color:#c62828;font-weight:bold}.grid{display:flex;flex-wrap:wrap;gap:8px;margin:8px 0}
figure.tile{margin:0;width:SIZEpx;border:2px solid #e0e0e0;border-radius:4px;background:#fff;padding:3px;font-size:11px}
figure.tile img{display:block;max-width:100%;margin:auto}figure.keeper{border-color:#2e7d32}figure.keeper figcaption b{color:#2e7d32}
figure.tile figcaption{overflow-wrap:anywhere}.noimg{height:80px;display:flex;align-items:center;justify-content:center;background:#eceff1;color:#546e7a;text-align:center}
.cluster{border-top:1px solid #eee;padding-top:6px}.muted{color:#607d8b}
"""


def _settings(params: dict | None) -> dict:
    s = {**DEFAULTS, **(params or {})}
    if s["nsfw_thumbnails"] not in ("blur", "hide", "show"):
        raise ValueError(f"params.yaml: report.html.nsfw_thumbnails must be blur, hide or show, got {s['nsfw_thumbnails']!r}")
    for key in ("thumb_size", "max_clusters", "max_per_reason", "max_kept", "top_tags"):
        if not isinstance(s[key], int) or s[key] < (16 if key == "thumb_size" else 0):
            raise ValueError(f"params.yaml: report.html.{key} must be a whole number (thumb_size at least 16), got {s[key]!r}")
    return s


def never_shown(rejected: pd.DataFrame, nsfw_action: str, nsfw_thumbnails: str, kept: pd.DataFrame) -> set[str]:
    """Contents no thumbnail may exist for: every policy exclusion (the minors rule, NSFW
    excluded, takedowns, ...), every item the policy judged NSFW when NSFW is excluded (whatever
    else rejected it), and NSFW-flagged items when the report hides them."""
    hidden = set(rejected.loc[rejected["stage"] == "policy", "sha256"])
    if nsfw_action == "exclude" or nsfw_thumbnails == "hide":
        hidden |= set(rejected.loc[rejected["nsfw_flag"], "sha256"]) | set(kept.loc[kept["nsfw_flag"], "sha256"])
    return hidden


class Thumbs:
    """Thumbnails for the page: made into the cache once per content, copied into the folder."""

    def __init__(self, cache_dir: Path, out_dir: Path, size: int, hidden: set[str], blurred: set[str],
                 paths: dict[str, str], undecoded: dict[str, str]):
        self.cache_dir, self.out_dir, self.size = cache_dir, out_dir, size
        self.hidden, self.blurred, self.paths, self.undecoded = hidden, blurred, paths, undecoded
        self.made = self.reused = 0
        self.failed: dict[str, str] = {}

    def src(self, sha: str) -> str | None:
        """The page's relative path to the content's thumbnail, or None (excluded, or not decodable)."""
        if sha in self.hidden or sha in self.undecoded or sha not in self.paths:
            return None
        blur = sha in self.blurred
        target = self.out_dir / "thumbs" / thumbnails.name(sha, self.size, blur)
        if not target.exists():
            try:
                cached, made = thumbnails.ensure(self.cache_dir, sha, self.paths[sha], self.size, blur)
            except Exception as exc:  # noqa: BLE001 - any decoder error: the tile says so, the page still renders
                self.failed[sha] = f"{type(exc).__name__}: {exc}"
                return None
            self.made += made
            self.reused += not made
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(cached, target)
        return f"thumbs/{target.name}"


def _tile(thumbs: Thumbs, item_id: str, sha: str, caption: str, keeper: bool = False) -> str:
    src = thumbs.src(sha)
    label = "<b>kept</b> " if keeper else ""
    if src:
        picture = f'<img src="{escape(src)}" alt="{escape(item_id)}" title="{escape(item_id)}">'
    else:
        why = ("not shown (policy or NSFW)" if sha in thumbs.hidden else
               thumbs.undecoded.get(sha) or thumbs.failed.get(sha) or "no preview")
        picture = f'<div class="noimg">{escape(why)}</div>'
    return (f'<figure class="tile{" keeper" if keeper else ""}">{picture}'
            f"<figcaption>{label}<code>{escape(item_id)}</code><br>{escape(caption)}</figcaption></figure>")


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


STAGE_ORDER = ("raw", "audited", "filtered", "exact_deduped", "near_deduped", "deduped", "captioned", "split", "exported")


def _table(header: list[str], rows: list[list], fail_column: int | None = None) -> str:
    out = ["<table><tr>" + "".join(f"<th>{escape(str(h))}</th>" for h in header) + "</tr>"]
    for row in rows:
        cells = []
        for k, cell in enumerate(row):
            cls = ' class="fail"' if k == fail_column and cell == "NO-GO" else ""
            cells.append(f"<td{cls}>{escape(str(cell))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "".join(out) + "</table>"


def _verdict(go: bool | None) -> str:
    cls, text = ("none", "nothing to decide") if go is None else ("go", "GO") if go else ("nogo", "NO-GO")
    return f'<span class="verdict {cls}">{text}</span>'


def _checks(checks: list[dict]) -> str:
    return _table(["check", "result", "value", "fix"],
                  [[c["check"], "pass" if c["ok"] else "NO-GO", c["value"], "" if c["ok"] else c["fix"]] for c in checks], fail_column=1)


def _summary(metrics: dict, checks: list[dict], conv_metrics: dict, conv_checks: list[dict]) -> str:
    splits = ", ".join(f"{n} {s}" for s, n in metrics["splits"].items())
    parts = [f"<p>Images: {_verdict(metrics['go'])} {metrics['raw']} raw items, {metrics['kept']} kept ({escape(splits)}), "
             f"{metrics['rejected']} rejected; every raw item is accounted for.</p>", '<div id="decision">', _checks(checks), "</div>",
             _table(["stage", "items"], [[k, metrics["stages"][k]] for k in sorted(metrics["stages"], key=lambda k: (
                 STAGE_ORDER.index(k) if k in STAGE_ORDER else len(STAGE_ORDER), k))])]
    if conv_metrics.get("go") is None:
        parts.append(f"<p>Conversations: {_verdict(None)} no conversation source is configured.</p>")
    else:
        parts.append(f"<p>Conversations: {_verdict(conv_metrics['go'])} {conv_metrics['read']} read, {conv_metrics['kept']} exported, "
                     f"{conv_metrics['rejected']} rejected.</p>" + _checks(conv_checks))
    parts.append('<p class="muted">The Markdown reports beside this folder (<a href="../dataset-report.md">dataset-report.md</a>, '
                 '<a href="../conversations-report.md">conversations-report.md</a>) hold every table in full.</p>')
    return "".join(parts)


def _kept(kept: pd.DataFrame, thumbs: Thumbs, limit: int) -> str:
    """A fixed sample of kept items with their captions: what the trainer will read."""
    if not len(kept):
        return "<p>No item was kept.</p>"
    sample = kept.sort_values(["sha256", "item_id"]).head(limit)
    tiles = [_tile(thumbs, r.item_id, r.sha256, f"{r.split}{' · NSFW' if r.nsfw_flag else ''}: {r.caption or '(empty caption)'}") for r in sample.itertuples()]
    return (f"<p>{min(limit, len(kept))} of {len(kept)} kept items (the same sample every build: the lowest content hashes), "
            f'with the caption each is exported with.</p><div class="grid">{"".join(tiles)}</div>')


def _duplicates(clusters: pd.DataFrame, sha_of: dict[str, str], thumbs: Thumbs, limit: int) -> str:
    sizes = clusters.groupby("cluster_key").size()
    multi = sizes[sizes > 1]
    if not len(multi):
        return "<p>No near-duplicate or exact-duplicate clusters: every kept item is distinct.</p>"
    order = sorted(multi.index, key=lambda k: (-int(multi[k]), k))
    parts = [f"<p>{len(multi)} clusters of copies and near copies ({int(multi.sum())} items); each keeps one item "
             f"(marked <b>kept</b>), the others were rejected as duplicates. The {min(limit, len(multi))} largest are shown.</p>"]
    for key in order[:limit]:
        members = clusters[clusters["cluster_key"] == key].sort_values(["keeper", "distance_to_keeper", "item_id"], ascending=[False, True, True])
        tiles, hidden = [], 0
        for m in members.itertuples():
            sha = sha_of[m.item_id]
            if sha in thumbs.hidden:
                hidden += 1
                continue
            what = "the kept item" if m.keeper else ("exact copy" if sha == key else f"distance {m.distance_to_keeper}"
                                                      + (f", cosine {m.cosine_to_keeper:.3f}" if pd.notna(m.cosine_to_keeper) else "")
                                                      + (f" ({m.rule})" if isinstance(m.rule, str) and m.rule else ""))
            tiles.append(_tile(thumbs, m.item_id, sha, what, keeper=bool(m.keeper)))
        note = f' <span class="muted">({hidden} more not shown: policy)</span>' if hidden else ""
        parts.append(f'<div class="cluster"><p>Cluster <code>{escape(key[:16])}</code>: {len(members)} items{note}</p>'
                     f'<div class="grid">{"".join(tiles)}</div></div>')
    return "".join(parts)


def _rejected(rejected: pd.DataFrame, thumbs: Thumbs, limit: int) -> str:
    shown = rejected[rejected["stage"] != "policy"]
    if not len(shown):
        return "<p>Nothing was rejected outside the policy.</p>"
    parts = []
    for (stage, rule, reason), group in shown.groupby(["stage", "rule", "reason"], sort=True):
        fix = image_report.FIXES.get(reason, "")
        group = group.sort_values("item_id")
        tiles = []
        for r in group.head(limit).itertuples():
            caption = f"copy of {r.duplicate_of}" if isinstance(r.duplicate_of, str) and r.duplicate_of else r.detail
            tiles.append(_tile(thumbs, r.item_id, r.sha256, caption))
        more = f" ({len(group) - limit} more in the rejected manifest)" if len(group) > limit else ""
        parts.append(f'<h3 id="rejected-{escape(reason)}">{escape(reason)} <span class="muted">{escape(stage)} / {escape(rule)}: '
                     f"{_count(len(group), 'item', 'items')}{more}</span></h3>" + (f"<p>Fix: {escape(fix)}</p>" if fix else "")
                     + f'<div class="grid">{"".join(tiles)}</div>')
    return "".join(parts)


def _policy(rejected: pd.DataFrame, flagged_kept: int, mode: str) -> str:
    policy = rejected[rejected["stage"] == "policy"]
    parts = ["<p>Policy exclusions are shown as counts only: no thumbnail of an excluded item is made.</p>"]
    if len(policy):
        rows = [[rule, reason, int(n)] for (rule, reason), n in policy.groupby(["rule", "reason"]).size().items()]
        parts.append(_table(["rule", "reason", "items excluded"], rows))
    else:
        parts.append("<p>No item was excluded by policy.</p>")
    drawn = {"blur": "blurred", "hide": "not shown", "show": "shown as they are"}[mode]
    parts.append(f"<p>{_count(flagged_kept, 'kept item is', 'kept items are')} flagged NSFW; in this report "
                 f"{'it is' if flagged_kept == 1 else 'they are'} {drawn} (report.html.nsfw_thumbnails).</p>")
    return "".join(parts)


def _balance(kept: pd.DataFrame, params: dict | None) -> str:
    columns = list((params or {}).get("columns") or [])
    if not columns:
        counts = kept.groupby(["source", "split"]).size()
        cells = {(s, sp): (str(int(n)), "") for (s, sp), n in counts.items()}
        grid = charts.heatmap("kept items by source and split", sorted(kept["source"].unique()), list(schemas.SPLITS), cells, legend=False)
        return ("<p>No balance targets are set (params.yaml <code>balance.columns</code>, e.g. <code>[archetype, emotion]</code>, "
                "with min/target/ideal per cell); kept items by source and split instead.</p>" + grid)
    raw = balance.table(kept, params)
    rows_key = columns[:-1] or ["all"]
    row_label = raw[columns[:-1]].astype(str).agg(" / ".join, axis=1) if columns[:-1] else pd.Series(["all"] * len(raw))
    col_label = raw[columns[-1]].astype(str)
    cells = {(r, c): (f"{n} / {t}", status) for r, c, n, t, status in zip(row_label, col_label, raw["count"], raw["target"], raw["status"])}
    grid = charts.heatmap(f"kept items per cell / target ({' x '.join(columns)})", sorted(set(row_label)), sorted(set(col_label)), cells)
    under = raw[raw["status"] == "under_min"]
    note = f"{len(under)} cells are under their minimum." if len(under) else "Every cell meets its minimum."
    return f"<p>{escape(note)} Rows: {escape(' / '.join(rows_key))}; columns: {escape(columns[-1])}.</p>" + grid


def _bars(table: pd.DataFrame, title: str, x_label: str, series: list[str]) -> str:
    return charts.bars(title, table["bin"].tolist(), {s: table[s].tolist() for s in series}, x_label=x_label)


def run(paths: dict, out_dir: str | Path, plots_dir: str | Path, cache_dir: str | Path, *, html_params: dict | None = None,
        thresholds: dict | None = None, conversation_thresholds: dict | None = None, balance_params: dict | None = None,
        max_tokens: int = 75, nsfw_action: str = "flag") -> dict:
    """Write the report folder and the plots data; returns counts of thumbnails made and reused."""
    s = _settings(html_params)
    frames = manifest.read_many(paths, {"ingest": schemas.INGEST, "audit": schemas.AUDIT, "rejected": schemas.REJECTED, "split": schemas.SPLIT,
                                        "clusters": schemas.MEMBERSHIP, "conversation_stages": schemas.CONVERSATION_STAGES})
    raw, audit, rejected, kept, clusters, conv_stages = frames.values()
    metrics = json.loads(Path(paths["metrics"]).read_text(encoding="utf-8"))
    conv_metrics = json.loads(Path(paths["conversation_metrics"]).read_text(encoding="utf-8"))

    hidden = never_shown(rejected, nsfw_action, s["nsfw_thumbnails"], kept)
    blurred = set() if s["nsfw_thumbnails"] == "show" else set(rejected.loc[rejected["nsfw_flag"], "sha256"]) | set(kept.loc[kept["nsfw_flag"], "sha256"])
    thumbnails.prune(cache_dir, hidden)
    thumbnails.prune(cache_dir, blurred - hidden, plain_only=True)
    first = raw.drop_duplicates("sha256")
    failed = audit[~audit["decoded"]]
    undecoded = {sha: f"not decodable: {reason}" for sha, reason in zip(failed["sha256"], failed["reason"])}
    tables = {
        "short_side": distributions.short_side(audit, kept),
        "aspect_ratio": distributions.aspect_ratio(audit, kept),
        "tags_top": distributions.tags_top(kept, s["top_tags"]),
        "tags_per_item": distributions.tags_per_item(kept),
        "caption_tokens": distributions.caption_tokens(kept, max_tokens),
        "rejected_by_reason": distributions.rejected_by_reason(rejected),
        "balance": distributions.balance_cells(kept, balance_params),
        "conversation_stages": distributions.conversation_stages(conv_stages),
    }
    distributions.write(tables, plots_dir)

    checks = image_report.decide(metrics, thresholds or {})
    conv_checks = (conversation_report.decide(conv_metrics, {**conversation_report.DEFAULT_THRESHOLDS, **(conversation_thresholds or {})})
                   if conv_metrics.get("go") is not None else [])
    with atomic.atomic_dir(out_dir) as tmp:
        thumbs = Thumbs(Path(cache_dir), tmp, s["thumb_size"], hidden, blurred, dict(zip(first["sha256"], first["path"])), undecoded)
        sha_of = dict(zip(raw["item_id"], raw["sha256"]))
        over = int(kept["caption_over_limit"].sum())
        stage_chart = (charts.hbars("share of the curriculum: target and achieved", conv_stages["stage"].tolist(),
                                    {"target": conv_stages["target_share"].tolist(), "achieved": conv_stages["achieved_share"].tolist()},
                                    value_format="{:.0%}") if conv_metrics.get("go") is not None and len(conv_stages) else
                       "<p>No conversations were built (no conversation source is configured).</p>")
        sections = {
            "summary": _summary(metrics, checks, conv_metrics, conv_checks),
            "kept": _kept(kept, thumbs, s["max_kept"]),
            "duplicates": _duplicates(clusters, sha_of, thumbs, s["max_clusters"]),
            "rejected": _rejected(rejected, thumbs, s["max_per_reason"]),
            "policy": _policy(rejected, int(kept["nsfw_flag"].sum()), s["nsfw_thumbnails"]),
            "balance": _balance(kept, balance_params),
            "resolution": _bars(tables["short_side"], "shorter side (px)", "shorter side, px", ["audited", "kept"]),
            "aspect-ratio": _bars(tables["aspect_ratio"], "aspect ratio (width / height)", "width / height", ["audited", "kept"]),
            "tags": (charts.hbars(f"top {len(tables['tags_top'])} tags (kept items)", tables["tags_top"]["tag"].tolist(),
                                  {"items": tables["tags_top"]["items"].tolist()})
                     + _bars(tables["tags_per_item"], "tags per kept item", "tags", ["kept"])),
            "captions": (_bars(tables["caption_tokens"], "caption length (CLIP tokens)", "tokens", ["kept"])
                         + f"<p>{over} captions are over the {max_tokens}-token window (caption.over_limit).</p>"),
            "conversations": stage_chart,
        }
        verdict = "GO" if metrics["go"] else "NO-GO"
        nav = "".join(f'<a href="#{sid}">{escape(title)}</a>' for sid, title in SECTIONS)
        body = "".join(f'<section id="{sid}"><h2>{escape(title)}</h2>{sections[sid]}</section>' for sid, title in SECTIONS)
        page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Dataset report: {verdict}</title>'
                f'<style>{CSS.replace("SIZE", str(s["thumb_size"] + 10))}</style></head>'
                f"<body><header><h1>Dataset report: {verdict}</h1><nav>{nav}</nav></header><main>{body}</main></body></html>\n")
        (tmp / "index.html").write_text(page, encoding="utf-8")
    return {"made": thumbs.made, "reused": thumbs.reused, "failed": len(thumbs.failed), "hidden": len(hidden)}
