"""Captions from tags: the one place a tag list becomes caption text."""

from __future__ import annotations

from typing import Iterable


def caption(tags: Iterable[str], trigger_word: str = "", underscores_to_spaces: bool = True, separator: str = ", ") -> str:
    """Trigger word first, then the tags in order, each once."""
    parts: list[str] = []
    if trigger_word.strip():
        parts.append(trigger_word.strip())
    for tag in tags:
        text = tag.replace("_", " ") if underscores_to_spaces else tag
        text = text.strip()
        if text and text not in parts:
            parts.append(text)
    return separator.join(parts)
