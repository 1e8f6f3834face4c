"""Empathy of the assistant's turns: a heuristic score in [0, 1] from phrasing.

Counselling training (motivational interviewing, person-centred work) names what empathic
replies look like on the page: reflections and validation ("it sounds like", "I hear you",
"that must be hard", "understandable"), open questions ("what", "how", "tell me"), attention on
the other person ("you", not "I"); and what they do not: minimising, blaming, ordering ("just get
over it", "you should have", "you need to"). The score counts those surface cues; it reads
phrasing, not understanding, and a reply can game it. Phrases live in
``trainset/data/lexicons/empathy_validating.txt`` and ``empathy_dismissive.txt``.

Per assistant turn on average: ``v`` validating phrases, ``q`` open questions, ``d`` dismissive
phrases; over all assistant text, ``y`` = second-person words / (second- plus first-person
words) (0.5 with neither). With ``s(x) = x / (1 + x)``::

    score = clip(0.4 s(v) + 0.3 s(q) + 0.3 y - 0.6 s(d), 0, 1)

A conversation without assistant turns scores ``nan``.
"""

from __future__ import annotations

import math
import re

from . import safety

WEIGHTS = {"validating": 0.4, "open_questions": 0.3, "you_focus": 0.3, "dismissive": -0.6}

_SENTENCE = re.compile(r"[^.!?\n]+[.!?]*")
_OPEN = re.compile(
    r"^\W*(?:(?:so|and|but|okay|ok|well|now)\W+)?"
    r"(?:what|how|why|when|where|which|tell me|could you (?:tell|say|share|describe|talk)|"
    r"can you (?:tell|say|share|describe|talk)|in what way|say more|i'm curious|i wonder)\b",
    re.IGNORECASE,
)
_SECOND = re.compile(r"\b(?:you|your|yours|yourself|you're|you've|you'd|you'll)\b", re.IGNORECASE)
_FIRST = re.compile(r"\b(?:i|me|my|mine|myself|i'm|i've|i'd|i'll)\b", re.IGNORECASE)


def _saturate(x: float) -> float:
    return x / (1.0 + x)


def open_questions(text: str) -> int:
    """Questions in ``text`` that invite more than yes or no (start with what, how, tell me...)."""
    return sum(1 for s in _SENTENCE.findall(text) if s.rstrip().endswith("?") and _OPEN.search(s))


def features(messages: list[dict]) -> dict[str, float]:
    """The score's inputs: per-assistant-turn means of validating, open-question and dismissive
    counts, and the second-person share of the assistant's pronouns."""
    replies = [safety.straighten_quotes(str(m.get("content", ""))) for m in messages if m["role"] == "assistant"]
    if not replies:
        return {"validating": math.nan, "open_questions": math.nan, "dismissive": math.nan, "you_focus": math.nan}
    validating = safety.lexicon("empathy_validating")
    dismissive = safety.lexicon("empathy_dismissive")
    n = len(replies)
    second = sum(len(_SECOND.findall(r)) for r in replies)
    first = sum(len(_FIRST.findall(r)) for r in replies)
    return {
        "validating": sum(len(validating.findall(r)) for r in replies) / n,
        "open_questions": sum(open_questions(r) for r in replies) / n,
        "dismissive": sum(len(dismissive.findall(r)) for r in replies) / n,
        "you_focus": second / (second + first) if second + first else 0.5,
    }


def score(messages: list[dict]) -> float:
    """The empathy heuristic of the assistant turns, in [0, 1] (``nan`` without assistant turns)."""
    f = features(messages)
    if math.isnan(f["validating"]):
        return math.nan
    raw = (
        WEIGHTS["validating"] * _saturate(f["validating"])
        + WEIGHTS["open_questions"] * _saturate(f["open_questions"])
        + WEIGHTS["you_focus"] * f["you_focus"]
        + WEIGHTS["dismissive"] * _saturate(f["dismissive"])
    )
    return min(1.0, max(0.0, raw))
