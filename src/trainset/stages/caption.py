"""deduped -> captioned: every kept item gets its caption text (an override's text wins)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .. import captions, manifest, schemas


def run(deduped_path: str | Path, out: str | Path, trigger_word: str = "", underscores_to_spaces: bool = True, separator: str = ", ") -> pd.DataFrame:
    items = manifest.read(deduped_path, schemas.DEDUPED)
    items["caption"] = [
        fixed if isinstance(fixed, str) else captions.caption(tags, trigger_word, underscores_to_spaces, separator)
        for tags, fixed in zip(items["tags"], items["caption_override"])
    ]
    items["caption"] = items["caption"].astype("str")
    return manifest.write(items, out, schemas.CAPTIONED)
