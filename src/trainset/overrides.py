"""Manual overrides keyed by sha256: keep, exclude, add or remove tags, caption text.

A CSV (``sha256,action,add_tags,remove_tags,caption,note``; tag lists comma-separated) or a YAML
list of mappings with the same keys. Applied last; recorded in the manifest.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import yaml

_SHA = re.compile(r"^[0-9a-f]{64}$")
FIELDS = ("sha256", "action", "add_tags", "remove_tags", "caption", "note")
ACTIONS = ("", "keep", "exclude")


class OverridesError(ValueError):
    """An overrides file with a row that cannot be applied."""


def _tags(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    return [t.strip() for t in str(value).split(",") if t.strip()]


def load(path: str | Path | None) -> dict[str, dict]:
    """sha256 -> override. A missing path (None or "") means no overrides."""
    if not path:
        return {}
    path = Path(path)
    if not path.is_file():
        raise OverridesError(f"{path}: overrides file not found")
    if path.suffix.lower() in (".yaml", ".yml"):
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or []
        if not isinstance(doc, list):
            raise OverridesError(f"{path}: expected a list of overrides")
        rows = [(i + 1, r) for i, r in enumerate(doc)]
        where = "entry"
    else:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = [(i + 2, r) for i, r in enumerate(csv.DictReader(fh))]
        where = "line"
    out: dict[str, dict] = {}
    for n, row in rows:
        if not isinstance(row, dict):
            raise OverridesError(f"{path}: {where} {n}: expected a mapping")
        unknown = set(row) - set(FIELDS)
        if unknown:
            raise OverridesError(f"{path}: {where} {n}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
        sha = str(row.get("sha256") or "").strip().lower()
        if not _SHA.match(sha):
            raise OverridesError(f"{path}: {where} {n}: sha256 {row.get('sha256')!r} is not 64 hex digits")
        action = str(row.get("action") or "").strip().lower()
        if action not in ACTIONS:
            raise OverridesError(f"{path}: {where} {n}: action {action!r} must be keep, exclude or empty")
        if sha in out:
            raise OverridesError(f"{path}: {where} {n}: sha256 {sha[:12]}... appears twice")
        caption = row.get("caption")
        out[sha] = {
            "sha256": sha,
            "action": action or None,
            "add_tags": _tags(row.get("add_tags")),
            "remove_tags": _tags(row.get("remove_tags")),
            "caption": str(caption) if caption not in (None, "") else None,
            "note": str(row.get("note") or "") or None,
        }
    return out
