"""Turn structure: what every conversation must satisfy before any quality score means anything.

A chat model learns from the assistant turns that answer a user turn, so a conversation is
well-formed when a system message (if any) comes first, user and assistant then alternate, no
turn is empty, at least one user turn is answered, and the last turn is the assistant's. The
assistant may speak first (a counselling session opens with the counsellor); the readers make a
speaker's consecutive messages one turn, so alternation fails only where roles are wrong. Each problem is
named, so the rejected list says what to fix; edge-case sources bypass safety filters, never
these checks.
"""

from __future__ import annotations

PROBLEMS = {
    "empty": "no messages",
    "empty_turn": "a turn with no text",
    "system_not_first": "a system message after the first turn",
    "roles_do_not_alternate": "two turns in a row by the same speaker",
    "ends_with_user": "the last turn is not the assistant's",
    "no_exchange": "no user turn answered by the assistant",
}
"""Each structure problem and what it means, in the words the rejected list uses."""


def problems(messages: list[dict]) -> list[str]:
    """The structure problems of one conversation (keys of :data:`PROBLEMS`), in order; empty when well-formed."""
    if not messages:
        return ["empty"]
    found = []
    if any(not str(m.get("content", "")).strip() for m in messages):
        found.append("empty_turn")
    if any(m["role"] == "system" for m in messages[1:]):
        found.append("system_not_first")
    turns = [m["role"] for m in messages if m["role"] != "system"]
    if any(a == b for a, b in zip(turns, turns[1:])):
        found.append("roles_do_not_alternate")
    if turns and turns[-1] != "assistant":
        found.append("ends_with_user")
    if not any(a == "user" and b == "assistant" for a, b in zip(turns, turns[1:])):
        found.append("no_exchange")
    return found


def describe(found: list[str]) -> str:
    """The problems as one sentence for the rejected list."""
    return "; ".join(PROBLEMS[p] for p in found)
