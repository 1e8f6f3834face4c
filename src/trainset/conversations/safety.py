"""Safety flags on conversation turns: crisis, violence, abuse and toxicity, by who said it.

Who speaks matters more than what is said: a client disclosing suicidal thoughts is what a
counselling set is for, a counsellor urging them on is what it must never teach. So every hit
names its turn and role, and the gate decides per role (``quality.safety.roles``).

These are heuristics: regular expressions from the lexicons in ``trainset/data/lexicons``
(``crisis.txt``, ``violence.txt``, ``abuse.txt``, ``toxicity.txt``; one expression a line, ``#``
comments), matched case-insensitively at word boundaries. Idioms and clinical wording that contain
a listed word ("killing it", "shoot me an email", "substance abuse", "are you having thoughts of
suicide?") are listed in ``safe_contexts.txt`` and masked first. Disclosures and threats are
listed in the speaker's own voice, so reflections and risk questions do not count. A hit is a
reason to look, not a verdict; the optional model in :mod:`.toxicity` is the second opinion.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources

FLAGS = ("crisis", "violence", "abuse", "toxicity")
ACTIONS = ("reject", "flag", "off")

DESCRIPTIONS = {
    "crisis": "crisis language",
    "violence": "violent language",
    "abuse": "abuse disclosure",
    "toxicity": "toxic language",
}

_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})


@dataclass(frozen=True)
class Hit:
    """One lexicon match: the flag, the 1-based turn (message position), its role, the matched text."""

    flag: str
    turn: int
    role: str
    text: str


def straighten_quotes(text: str) -> str:
    """Curly apostrophes made straight, so "I’m" matches the lexicons' "i'm"."""
    return text.translate(_QUOTES)


def read_lexicon(name: str) -> list[str]:
    """The expressions of a lexicon file in ``trainset/data/lexicons`` (comments and blank lines dropped)."""
    source = resources.files("trainset").joinpath("data", "lexicons", f"{name}.txt").read_text(encoding="utf-8")
    return [line.strip() for line in source.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def compile_lexicon(patterns: list[str]) -> re.Pattern:
    """One case-insensitive alternation, each expression held at word boundaries."""
    return re.compile("|".join(f"(?<!\\w)(?:{p})(?!\\w)" for p in patterns), re.IGNORECASE)


@functools.lru_cache(maxsize=None)
def lexicon(name: str) -> re.Pattern:
    return compile_lexicon(read_lexicon(name))


def mask_safe_contexts(text: str) -> str:
    """``text`` (quotes straightened) with the safe-context phrases blanked out, offsets kept."""
    text = straighten_quotes(text)
    return lexicon("safe_contexts").sub(lambda m: " " * len(m.group()), text)


def scan_text(text: str, flags: tuple[str, ...] = FLAGS) -> list[tuple[str, str]]:
    """``(flag, matched text)`` for each hit in one text, in text order per flag."""
    masked = mask_safe_contexts(text)
    found = []
    for flag in flags:
        for m in lexicon(flag).finditer(masked):
            found.append((flag, text[m.start():m.end()]))
    return found


def scan(messages: list[dict], flags: tuple[str, ...] = FLAGS) -> list[Hit]:
    """Every hit in a conversation, with the turn and role that carried it."""
    hits = []
    for turn, message in enumerate(messages, start=1):
        for flag, text in scan_text(str(message.get("content", "")), flags):
            hits.append(Hit(flag, turn, message["role"], text))
    return hits


def roles_by_flag(hits: list[Hit]) -> dict[str, list[str]]:
    """Flag -> the roles whose turns hit it (sorted), for every flag."""
    out: dict[str, set[str]] = {flag: set() for flag in FLAGS}
    for hit in hits:
        out[hit.flag].add(hit.role)
    return {flag: sorted(roles) for flag, roles in out.items()}


def describe(hit: Hit) -> str:
    """A hit in the words of the rejected list: ``crisis language in the assistant turn 3: 'kill yourself'``."""
    return f"{DESCRIPTIONS[hit.flag]} in the {hit.role} turn {hit.turn}: {hit.text!r}"
