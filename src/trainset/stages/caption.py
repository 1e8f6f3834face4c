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

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .. import atomic, background, captions, manifest, progress, provenance, schemas
from ..tags import TagDictionary, list_array


# list columns held as Arrow: only passed on, or (the tags) read as Python lists only for the items captioned anew
_ARROW_LISTS = ("artists", "flags", "tags")


def run(
    deduped_path: str | Path, out: str | Path, caption: dict | None = None, tag_dictionaries: list[str] | None = None,
    cache_dir: str | Path | None = None, source_triggers: dict[str, str] | None = None, kept: str | Path | None = None,
) -> pd.DataFrame | None:
    """``source_triggers``: a source's own trigger word (``sources[].trigger_word``), used for its
    items instead of ``caption.trigger_word``. ``kept``: where these captions are kept once made
    (:func:`kept_as`): when that file is there they are linked from it, not made again (and None
    is returned: nothing is read); when the shard's last captions were made with the same params,
    dictionaries, triggers and code, an item whose source, content, tags and caption override they
    saw takes its caption from them. Returns the captions written."""
    kept = Path(kept) if kept is not None else None
    if kept is not None and _linked(kept, Path(out)):
        return None
    written = _captioned(deduped_path, out, caption, tag_dictionaries, cache_dir, source_triggers, _previous(kept))
    if kept is not None:
        _keep(Path(out), kept)
    return written


def kept_as(folder: str | Path, shard: str, part_digest: str, caption: dict | None, tag_dictionaries: list[str] | None,
            source_triggers: dict[str, str] | None, code: str) -> Path:
    """The file a shard's captions are kept in, named by all they depend on: the caption params,
    the tag dictionaries' bytes, the trigger words and the code (what every caption depends on),
    then its deduped rows (the dealt part's digest). A shard keeps one such file
    (``folder/<shard>/``): the last one made."""
    dictionaries = provenance.file_digests(tag_dictionaries or [])
    spec = json.dumps([caption or {}, dictionaries, sorted((source_triggers or {}).items()), code], sort_keys=True, default=str)
    return Path(folder) / shard / f"{hashlib.sha256(spec.encode()).hexdigest()[:32]}.{part_digest}.parquet"


def _previous(kept: Path | None) -> pd.DataFrame | None:
    """The shard's last captions made with the same params, dictionaries, triggers and code (another
    part digest), if whole and valid; else None."""
    if kept is None or not kept.parent.is_dir():
        return None
    spec = kept.name.split(".")[0]
    for path in sorted(kept.parent.glob(f"{spec}.*.parquet")):
        if path != kept:
            try:
                return manifest.read(path, schemas.CAPTIONED, columns=[*_REUSED, *_DTYPES], arrow_lists=("tags",))
            except (manifest.ManifestError, OSError, ValueError):  # torn or stale: caption afresh
                return None
    return None


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
    atomic.link(kept, out)
    os.utime(out)
    return True


def _keep(out: Path, kept: Path) -> None:
    """``out`` kept as ``kept`` (linked, not copied), the shard's other kept files dropped."""
    kept.parent.mkdir(parents=True, exist_ok=True)
    for stale in kept.parent.glob("*.parquet"):
        stale.unlink(missing_ok=True)
    atomic.link(out, kept)


def _captioned(
    deduped_path: str | Path, out: str | Path, caption: dict | None, tag_dictionaries: list[str] | None,
    cache_dir: str | Path | None, source_triggers: dict[str, str] | None, previous: pd.DataFrame | None = None,
) -> pd.DataFrame:
    caption = dict(caption or {})
    settings = background.Settings.from_params(caption.pop("background", None))
    base = captions.CaptionSpec.from_params(caption)
    dictionary = TagDictionary.load(tag_dictionaries or [])
    captioner = captions.Captioner(base, dictionary)
    captioners = {name: captions.Captioner(base.for_source(word), dictionary) for name, word in (source_triggers or {}).items()}
    items = manifest.read(deduped_path, schemas.DEDUPED, arrow_lists=_ARROW_LISTS)
    at = _same_inputs(items, previous)
    todo = np.flatnonzero(at < 0)
    pending = items.iloc[todo]
    found = background.estimates(list(zip(pending["sha256"], pending["path"])), settings, cache_dir) if settings.check else {}
    columns: dict[str, list] = {k: [] for k in _DTYPES}
    tags = list_array(pending["tags"]).to_pylist()  # the items captioned anew: their tags as Python lists
    rows = zip(*(pending[c].to_numpy(dtype=object) for c in ("source", "sha256")), tags, pending["caption_override"].to_numpy(dtype=object))
    with manifest.gc_paused():
        _caption_rows(progress.bar(rows, total=len(pending), desc="caption", unit="item"), captioner, captioners, found, settings, columns)
    reused = np.flatnonzero(at >= 0)
    for name, values in columns.items():
        merged = np.empty(len(items), dtype=object)
        merged[todo] = pd.Series(values, dtype=object).to_numpy()  # a list stays one element
        if len(reused):
            merged[reused] = _as_made(previous[name], name)[at[reused]]
        items[name] = pd.Series(merged, index=items.index, dtype=_DTYPES[name])
    return manifest.write(items, out, schemas.CAPTIONED)


def _same_inputs(items: pd.DataFrame, previous: pd.DataFrame | None) -> np.ndarray:
    """Per item, the row of ``previous`` that captioned the same item from the same source,
    content, tags and caption override (-1: none): its caption is this one's."""
    if previous is None or not len(previous) or not len(items):
        return np.full(len(items), -1, dtype=np.int64)
    at = pd.Index(previous["item_id"]).get_indexer(items["item_id"])
    rows = np.flatnonzero(at >= 0)
    before = previous.iloc[at[rows]]
    same = np.ones(len(rows), dtype=bool)
    for column in ("source", "sha256"):
        same &= items[column].to_numpy(dtype=object)[rows] == before[column].to_numpy(dtype=object)
    now_fixed, then_fixed = items["caption_override"].iloc[rows], before["caption_override"]
    same &= (now_fixed.isna().to_numpy() & then_fixed.isna().to_numpy()) | (now_fixed.to_numpy(dtype=object) == then_fixed.to_numpy(dtype=object))
    same &= _same_lists(list_array(items["tags"]).take(pa.array(rows)), list_array(before["tags"]))
    out = np.full(len(items), -1, dtype=np.int64)
    out[rows[same]] = at[rows[same]]
    return out


def _same_lists(a: pa.ListArray, b: pa.ListArray) -> np.ndarray:
    """Whether each list of ``a`` holds the same values in the same order as ``b``'s in its row
    (a missing list equals only a missing one), compared as Arrow: no Python list per row."""
    lengths = [pc.fill_null(pc.list_value_length(x), -1).to_numpy(zero_copy_only=False) for x in (a, b)]
    same = lengths[0] == lengths[1]
    rows = np.flatnonzero(same & (lengths[0] > 0))
    if len(rows):
        taken = [x.take(pa.array(rows)) for x in (a, b)]
        values = [pc.list_flatten(x) for x in taken]
        equal = pc.fill_null(pc.equal(*values), False).to_numpy(zero_copy_only=False)
        equal |= (pc.is_null(values[0]).to_numpy(zero_copy_only=False) & pc.is_null(values[1]).to_numpy(zero_copy_only=False))
        parents = pc.list_parent_indices(taken[0]).to_numpy(zero_copy_only=False)
        same[rows[np.bincount(parents[~equal], minlength=len(rows)) > 0]] = False
    return same


def _as_made(values: pd.Series, name: str) -> np.ndarray:
    """A caption column read back, as :func:`_caption_rows` makes it (lists as lists, missing as None)."""
    if name == "caption_trimmed":
        return pd.Series([list(v) for v in values], dtype=object).to_numpy()
    out = values.to_numpy(dtype=object)
    if _DTYPES[name] is object:
        out = np.where(values.isna().to_numpy(), None, out)
    return out


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


_REUSED = ["item_id", "source", "sha256", "tags", "caption_override"]
"""What a shard's last captions are matched on (:func:`_same_inputs`); their caption columns come with them."""
_DTYPES = {"caption": "str", "caption_tokens": "int64", "caption_over_limit": bool, "caption_trimmed": object,
           "background": object, "background_uniformity": "float64", "background_check": object}


def _verdict(checked: background.Check | None) -> str | None:
    """agrees | fixed | flagged (tag and pixels disagree); None: not checked, no tag, or no opinion."""
    if checked is None or checked.agrees is None:
        return None
    return "agrees" if checked.agrees else checked.action
