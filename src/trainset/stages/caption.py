"""deduped -> captioned: every kept item gets its caption text (an override's text wins).

The tags (already canonical and merged across each cluster's copies by the filter stage) become
a caption by ``trainset.captions`` with the ``caption`` block of params.yaml; each caption's CLIP
token count is kept, and a caption over the window is flagged, or trimmed when params ask.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pandas as pd

from .. import atomic, background, captions, manifest, progress, schemas
from ..tags import TagDictionary


# list columns only passed on: held as Arrow, never as Python objects
_CARRIED_LISTS = ("artists", "flags")


def run(
    deduped_path: str | Path, out: str | Path, caption: dict | None = None, tag_dictionaries: list[str] | None = None,
    cache_dir: str | Path | None = None, source_triggers: dict[str, str] | None = None, kept: str | Path | None = None,
) -> pd.DataFrame:
    """``source_triggers``: a source's own trigger word (``sources[].trigger_word``), used for its
    items instead of ``caption.trigger_word``. ``kept``: where these captions are kept once made
    (:func:`kept_as`): when that file is there they are linked from it, not made again."""
    if kept is not None and _linked(Path(kept), Path(out)):
        return manifest.read(out, schemas.CAPTIONED)
    written = _captioned(deduped_path, out, caption, tag_dictionaries, cache_dir, source_triggers)
    if kept is not None:
        _keep(Path(out), Path(kept))
    return written


def kept_as(folder: str | Path, shard: str, part_digest: str, caption: dict | None, tag_dictionaries: list[str] | None,
            source_triggers: dict[str, str] | None, code: str) -> Path:
    """The file a shard's captions are kept in, named by all they depend on: its deduped rows (the
    dealt part's digest), the caption params, the tag dictionaries' bytes, the trigger words and
    the code. A shard keeps one such file (``folder/<shard>/``): the last one made."""
    dictionaries = [hashlib.sha256(Path(d).read_bytes()).hexdigest() for d in tag_dictionaries or []]
    spec = json.dumps([part_digest, caption or {}, dictionaries, sorted((source_triggers or {}).items()), code], sort_keys=True, default=str)
    return Path(folder) / shard / f"{hashlib.sha256(spec.encode()).hexdigest()}.parquet"


def _linked(kept: Path, out: Path) -> bool:
    """``out`` linked to ``kept`` when that is a whole Parquet file (a torn one is made again); its
    time is now, as a file the job wrote."""
    try:
        with kept.open("rb") as f:
            head = f.read(4)
            f.seek(-4, os.SEEK_END)
            whole = head == b"PAR1" and f.read(4) == b"PAR1"
    except OSError:
        return False
    if not whole:
        return False
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    try:
        os.link(kept, out)
    except OSError:
        atomic.write_bytes(out, kept.read_bytes())
    os.utime(out)
    return True


def _keep(out: Path, kept: Path) -> None:
    """``out`` kept as ``kept``, the shard's other kept files dropped."""
    kept.parent.mkdir(parents=True, exist_ok=True)
    for stale in kept.parent.glob("*.parquet"):
        if stale != kept:
            stale.unlink(missing_ok=True)
    atomic.write_bytes(kept, out.read_bytes())


def _captioned(
    deduped_path: str | Path, out: str | Path, caption: dict | None, tag_dictionaries: list[str] | None,
    cache_dir: str | Path | None, source_triggers: dict[str, str] | None,
) -> pd.DataFrame:
    caption = dict(caption or {})
    settings = background.Settings.from_params(caption.pop("background", None))
    base = captions.CaptionSpec.from_params(caption)
    dictionary = TagDictionary.load(tag_dictionaries or [])
    captioner = captions.Captioner(base, dictionary)
    captioners = {name: captions.Captioner(base.for_source(word), dictionary) for name, word in (source_triggers or {}).items()}
    items = manifest.read(deduped_path, schemas.DEDUPED, arrow_lists=_CARRIED_LISTS)
    found = background.estimates(list(zip(items["sha256"], items["path"])), settings, cache_dir) if settings.check else {}
    columns: dict[str, list] = {k: [] for k in ("caption", "caption_tokens", "caption_over_limit", "caption_trimmed",
                                                "background", "background_uniformity", "background_check")}
    rows = zip(*(items[c].to_numpy(dtype=object) for c in ("source", "sha256", "tags", "caption_override")))
    with manifest.gc_paused():
        _caption_rows(progress.bar(rows, total=len(items), desc="caption", unit="item"), captioner, captioners, found, settings, columns)
    for name, values in columns.items():
        items[name] = pd.Series(values, index=items.index, dtype=_DTYPES[name])
    return manifest.write(items, out, schemas.CAPTIONED)


def _caption_rows(rows, captioner: captions.Captioner, captioners: dict, found: dict, settings: background.Settings,
                  columns: dict[str, list]) -> None:
    """Append each (source, sha256, tags, caption override) row's caption and background columns."""
    for source, sha, tags, fixed in rows:
        maker = captioners.get(source, captioner)
        spec = maker.spec
        seen = found.get(sha)
        checked = background.check(list(tags), seen, settings.on_mismatch) if seen is not None else None
        if isinstance(fixed, str):  # the override's text, as it is
            n = captions.count_tokens(fixed)
            built = captions.Caption(fixed, n, n > spec.max_tokens)
        else:
            built = maker.build(checked.tags if checked else tags)
        columns["caption"].append(built.text)
        columns["caption_tokens"].append(built.tokens)
        columns["caption_over_limit"].append(built.over_limit)
        columns["caption_trimmed"].append(list(built.trimmed_tags))
        columns["background"].append(seen.name if seen else None)
        columns["background_uniformity"].append(seen.uniformity if seen else float("nan"))
        columns["background_check"].append(_verdict(checked))


_DTYPES = {"caption": "str", "caption_tokens": "int64", "caption_over_limit": bool, "caption_trimmed": object,
           "background": object, "background_uniformity": "float64", "background_check": object}


def _verdict(checked: background.Check | None) -> str | None:
    """agrees | fixed | flagged (tag and pixels disagree); None: not checked, no tag, or no opinion."""
    if checked is None or checked.agrees is None:
        return None
    return "agrees" if checked.agrees else checked.action
