"""Roles and the canonical form of a conversation: the one place a message list gets its identity.

Sources name their speakers many ways (``human``, ``client``, ``patient``; ``gpt``,
``therapist``, ``counselor``); :class:`Roles` maps them to system / user / assistant, with the
mapping configurable in params. The canonical form (:func:`canonical_text`) is what exact
deduplication hashes: normalized roles, Unicode NFKC, whitespace collapsed, and case folded when
params ask, so two copies that differ only in such noise share one SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field

ROLES = ("system", "user", "assistant")

DEFAULT_ROLE_NAMES = {
    "system": ("system",),
    "user": ("user", "client", "human", "patient", "seeker", "usr", "question", "prompter"),
    "assistant": ("assistant", "therapist", "gpt", "counselor", "counsellor", "bot", "model", "supporter", "chatgpt", "answer"),
}
"""Speaker names each role is known by (case-insensitive); params add to them."""

_SPACE = re.compile(r"\s+")


class UnknownRole(ValueError):
    """A speaker name no role is known by."""


@dataclass(frozen=True)
class Roles:
    """Speaker name -> role; build with :meth:`from_params` (``conversations.roles``: role -> extra names)."""

    names: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_params(cls, extra: dict[str, Iterable[str]] | None = None) -> Roles:
        names = {}
        for role, aliases in DEFAULT_ROLE_NAMES.items():
            for alias in aliases:
                names[alias] = role
        for role, aliases in (extra or {}).items():
            if role not in ROLES:
                raise ValueError(f"conversations.roles: unknown role {role!r} (roles: {', '.join(ROLES)})")
            for alias in [aliases] if isinstance(aliases, str) else aliases:
                names[str(alias).strip().lower()] = role
        return cls(names)

    def __call__(self, speaker: object) -> str:
        key = str(speaker).strip().lower()
        try:
            return self.names[key]
        except KeyError:
            raise UnknownRole(f"unknown speaker {speaker!r} (known: {', '.join(sorted(self.names))}; add it under conversations.roles)") from None


def canonical_text(messages: list[dict], casefold: bool = False) -> str:
    """The canonical form: ``[[role, content], ...]`` as compact JSON, content NFKC-normalized with
    runs of whitespace made one space (and case-folded when ``casefold``)."""
    out = []
    for message in messages:
        text = _SPACE.sub(" ", unicodedata.normalize("NFKC", message["content"])).strip()
        out.append([message["role"], text.casefold() if casefold else text])
    return json.dumps(out, ensure_ascii=False, separators=(",", ":"))


def content_sha256(messages: list[dict], casefold: bool = False) -> str:
    """SHA-256 of :func:`canonical_text`: equal for copies that differ only in roles' names, Unicode
    form, whitespace (and case, when folded)."""
    return hashlib.sha256(canonical_text(messages, casefold).encode("utf-8")).hexdigest()
