"""One rating vocabulary for every source kind.

Boorus disagree on what a bare ``s`` means: Danbooru uses it for *sensitive*, while
Gelbooru, Moebooru and Safebooru use it for *safe* (which is Danbooru's *general*).
Every rating is mapped here, per scheme, so policy and reports see one enum.
"""

from __future__ import annotations

RATINGS = ("general", "sensitive", "questionable", "explicit", "unknown")
SCHEMES = ("danbooru", "gelbooru", "moebooru", "safebooru")

_WORDS = {
    "general": "general",
    "g": "general",
    "safe": "general",
    "sfw": "general",
    "sensitive": "sensitive",
    "questionable": "questionable",
    "q": "questionable",
    "explicit": "explicit",
    "e": "explicit",
    "nsfw": "explicit",
}

_BARE_S = {
    "danbooru": "sensitive",
    "gelbooru": "general",
    "moebooru": "general",
    "safebooru": "general",
}


class RatingError(ValueError):
    """A rating string that no scheme knows."""


def normalize_rating(raw: object, scheme: str = "danbooru") -> str:
    """Map a raw rating (``g``, ``s``, ``safe``, ``Explicit``, ``None``...) to one of RATINGS."""
    if scheme not in _BARE_S:
        raise RatingError(f"unknown rating scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")
    if raw is None:
        return "unknown"
    text = str(raw).strip().lower()
    if text in ("", "unknown", "none", "?"):
        return "unknown"
    if text in ("s",):
        return _BARE_S[scheme]
    if text in _WORDS:
        return _WORDS[text]
    raise RatingError(f"unknown rating {raw!r} (scheme {scheme})")
