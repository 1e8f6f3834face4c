"""Language identification of conversation text with lingua, among a short list of candidates.

A set meant for one language is diluted by replies in another. lingua ships its n-gram models
inside its wheel (no download) and is accurate on short text; restricting it to the languages a
collection can plausibly hold (``quality.language_candidates``) makes it faster and keeps rare
languages from winning on a few words. Text under :data:`MIN_CHARS` characters says too little to
tell, and is ``"unknown"``.
"""

from __future__ import annotations

import functools

from .. import embeddings

DEFAULT_CANDIDATES = ("en", "es", "fr", "de", "pt", "it", "nl", "zh", "ja", "ko", "ru", "ar", "hi")
UNKNOWN = "unknown"
MIN_CHARS = 20
MAX_CHARS = 4000
"""Only the first characters are read: a conversation's language shows long before its end."""


@functools.lru_cache(maxsize=8)
def detector(candidates: tuple[str, ...] = DEFAULT_CANDIDATES):
    """A lingua detector for ISO 639-1 ``candidates`` (built once per list)."""
    embeddings.require("lingua-language-detector", "language identification")
    from lingua import IsoCode639_1, Language, LanguageDetectorBuilder

    languages = []
    for code in candidates:
        try:
            languages.append(Language.from_iso_code_639_1(getattr(IsoCode639_1, code.upper())))
        except (AttributeError, ValueError):
            raise ValueError(f"quality.language_candidates: {code!r} is not an ISO 639-1 code lingua knows") from None
    if len(languages) < 2:
        raise ValueError("quality.language_candidates: name at least two languages to choose between")
    return LanguageDetectorBuilder.from_languages(*languages).build()


def detect(text: str, candidates: tuple[str, ...] = DEFAULT_CANDIDATES, min_chars: int = MIN_CHARS) -> tuple[str, float]:
    """``(ISO 639-1 code, confidence in [0, 1])`` of ``text``; ``("unknown", 0.0)`` when it is too short."""
    text = " ".join(text.split())[:MAX_CHARS]
    if len(text) < min_chars:
        return UNKNOWN, 0.0
    values = detector(tuple(candidates)).compute_language_confidence_values(text)
    if not values or values[0].value <= 0:
        return UNKNOWN, 0.0
    # rounded: lingua sums in hash-map order, so the last bits differ from run to run
    return values[0].language.iso_code_639_1.name.lower(), round(float(values[0].value), 6)


def conversation_text(messages: list[dict]) -> str:
    """The text whose language counts: every user and assistant turn, system prompts left out."""
    return "\n".join(str(m.get("content", "")) for m in messages if m["role"] != "system")
