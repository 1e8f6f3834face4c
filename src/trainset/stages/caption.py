"""deduped -> captioned: every kept item gets its caption text (an override's text wins).

The tags (already canonical and merged across each cluster's copies by the filter stage) become
a caption by ``trainset.captions`` with the ``caption`` block of params.yaml; each caption's CLIP
token count is kept, and a caption over the window is flagged, or trimmed when params ask.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .. import captions, manifest, schemas
from ..tags import TagDictionary


def run(deduped_path: str | Path, out: str | Path, caption: dict | None = None, tag_dictionaries: list[str] | None = None) -> pd.DataFrame:
    spec = captions.CaptionSpec.from_params(caption)
    dictionary = TagDictionary.load(tag_dictionaries or [])
    items = manifest.read(deduped_path, schemas.DEDUPED)
    texts, tokens, over, trimmed = [], [], [], []
    for tags, fixed in zip(items["tags"], items["caption_override"]):
        if isinstance(fixed, str):  # the override's text, as it is
            n = captions.count_tokens(fixed)
            built = captions.Caption(fixed, n, n > spec.max_tokens)
        else:
            built = captions.build(tags, spec, dictionary)
        texts.append(built.text)
        tokens.append(built.tokens)
        over.append(built.over_limit)
        trimmed.append(list(built.trimmed_tags))
    items["caption"] = pd.Series(texts, index=items.index, dtype="str")
    items["caption_tokens"] = pd.Series(tokens, index=items.index, dtype="int64")
    items["caption_over_limit"] = pd.Series(over, index=items.index, dtype=bool)
    items["caption_trimmed"] = pd.Series(trimmed, index=items.index, dtype=object)
    return manifest.write(items, out, schemas.CAPTIONED)
