"""Turn-structure checks for conversations (trainset.conversations.structure)."""

from __future__ import annotations

import pytest

from trainset.conversations import structure


def _m(*turns: str) -> list[dict]:
    """Messages from 'role: text' strings."""
    return [{"role": t.split(":", 1)[0], "content": t.split(":", 1)[1].strip()} for t in turns]


@pytest.mark.parametrize("messages", [
    _m("user: I feel low.", "assistant: I'm here. What happened?"),
    _m("system: Be kind.", "user: Hi", "assistant: Hello", "user: Thanks", "assistant: Any time."),
    _m("assistant: Welcome. What brings you in?", "user: My doctor sent me.", "assistant: Tell me more."),  # a session opens
])
def test_well_formed(messages):
    assert structure.problems(messages) == []


@pytest.mark.parametrize(("messages", "found"), [
    ([], ["empty"]),
    (_m("user: Hi", "assistant: "), ["empty_turn"]),
    (_m("user: Hi", "system: Be brief.", "assistant: Ok"), ["system_not_first"]),
    (_m("user: Hey there", "user: How are you?", "assistant: hi"), ["roles_do_not_alternate"]),
    (_m("user: Hi", "assistant: Hello", "user: Bye"), ["ends_with_user"]),
    (_m("user: Anyone?"), ["ends_with_user", "no_exchange"]),
    (_m("system: Be kind.", "assistant: Hello"), ["no_exchange"]),
])
def test_each_problem_is_named(messages, found):
    assert structure.problems(messages) == found
    assert structure.describe(found) == "; ".join(structure.PROBLEMS[p] for p in found)
