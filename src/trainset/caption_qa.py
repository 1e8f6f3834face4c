"""Caption QA for the report: what the captions will teach, in numbers a curator can act on.

- tag frequency (items per tag) and rare tags (in fewer than ``rare_under`` items: too few
  examples to learn from);
- tags in every caption (they condition nothing, unless it is the trigger word on purpose);
- empty or near-empty captions (at most ``min_tags`` tags besides the fixed start);
- caption length in CLIP tokens (distribution, and how many exceed the window);
- the background check: coverage (share of items the border gave an opinion on), agreement with
  existing ``X_background`` tags where both exist, and the tags fixed or flagged.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

LENGTH_BINS = (0, 15, 30, 45, 60, 75)
"""Upper bounds (tokens) of the caption-length histogram; one more bin holds the rest."""


def summary(items: pd.DataFrame, rare_under: int = 3, min_tags: int = 1, top: int = 25) -> dict:
    """The caption metrics of the kept items (the split manifest: tags, caption, caption_tokens,
    caption_over_limit, background, background_check)."""
    n = len(items)
    per_tag = Counter(t for tags in items["tags"] for t in dict.fromkeys(tags))
    rare = sorted(t for t, c in per_tag.items() if c < rare_under)
    everywhere = sorted(t for t, c in per_tag.items() if n > 1 and c == n)
    tag_counts = items["tags"].map(len).to_numpy() if n else np.zeros(0, dtype=int)
    tokens = items["caption_tokens"].to_numpy(dtype=np.int64) if n else np.zeros(0, dtype=np.int64)
    edges = [-1, *LENGTH_BINS, np.iinfo(np.int64).max]
    histogram = np.histogram(tokens, bins=edges)[0] if n else np.zeros(len(edges) - 1, dtype=int)
    labels = [f"{lo + 1}-{hi}" for lo, hi in zip(edges[:-2], edges[1:-1])] + [f"> {LENGTH_BINS[-1]}"]
    labels[0] = "0"
    checked = items["background"].notna() if n else pd.Series(dtype=bool)
    verdicts = items["background_check"].dropna().value_counts().to_dict() if n else {}
    compared = sum(verdicts.values())
    return {
        "items": n,
        "distinct_tags": len(per_tag),
        "top_tags": [[t, c] for t, c in sorted(per_tag.items(), key=lambda tc: (-tc[1], tc[0]))[:top]],
        "rare_under": rare_under,
        "rare_tags": len(rare),
        "rare_examples": rare[:top],
        "tags_in_every_caption": everywhere,
        "near_empty": int((tag_counts <= min_tags).sum()),
        "near_empty_items": sorted(items.loc[tag_counts <= min_tags, "item_id"].astype(str))[:top] if n else [],
        "min_tags": min_tags,
        "tokens": {
            "min": int(tokens.min()) if n else 0, "median": float(np.median(tokens)) if n else 0.0,
            "p95": float(np.percentile(tokens, 95)) if n else 0.0, "max": int(tokens.max()) if n else 0,
            "histogram": dict(zip(labels, (int(v) for v in histogram))),
        },
        "over_token_limit": int(items["caption_over_limit"].sum()) if n else 0,
        "background": {
            "coverage": round(float(checked.mean()), 6) if n else 0.0,
            "named": {str(k): int(v) for k, v in items["background"].dropna().value_counts().sort_index().items()} if n else {},
            "compared_with_tags": int(compared),
            "agreement": round(verdicts.get("agrees", 0) / compared, 6) if compared else None,
            "fixed": int(verdicts.get("fixed", 0)),
            "flagged": int(verdicts.get("flagged", 0)),
        },
    }


def render(qa: dict) -> list[str]:
    """The report's Captions section (Markdown lines)."""
    lines = ["", "## Captions", ""]
    tok = qa["tokens"]
    lines.append(f"{qa['items']} captions, {qa['distinct_tags']} distinct tags. Length in CLIP tokens: min {tok['min']}, "
                 f"median {tok['median']:g}, 95th percentile {tok['p95']:g}, max {tok['max']}; "
                 f"{qa['over_token_limit']} over the window.")
    lines += ["", "| tokens | " + " | ".join(tok["histogram"]) + " |", "|---|" + "---:|" * len(tok["histogram"]),
              "| captions | " + " | ".join(str(v) for v in tok["histogram"].values()) + " |", ""]
    if qa["top_tags"]:
        lines += ["| tag | items |", "|---|---:|"] + [f"| {t} | {c} |" for t, c in qa["top_tags"]] + [""]
    lines.append(f"Rare tags (in fewer than {qa['rare_under']} items): {qa['rare_tags']}"
                 + (f", e.g. {', '.join(qa['rare_examples'][:10])}." if qa["rare_examples"] else "."))
    if qa["tags_in_every_caption"]:
        lines.append(f"Tags in every caption (they condition nothing): {', '.join(qa['tags_in_every_caption'])}.")
    lines.append(f"Near-empty captions (at most {qa['min_tags']} tag): {qa['near_empty']}"
                 + (f" ({', '.join(qa['near_empty_items'][:10])})." if qa["near_empty_items"] else "."))
    bg = qa["background"]
    agreement = "n/a" if bg["agreement"] is None else f"{bg['agreement']:.1%}"
    lines.append(f"Background check: an opinion on {bg['coverage']:.1%} of items (the rest have no uniform border); "
                 f"{bg['compared_with_tags']} compared with an X_background tag, agreement {agreement}; "
                 f"{bg['fixed']} tags fixed, {bg['flagged']} items flagged.")
    return lines
