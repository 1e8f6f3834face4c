"""Coherence: does each reply talk about what the user turn said?

The cosine between each user turn and the assistant reply right after it, both embedded with
all-MiniLM-L6-v2 (:class:`~.embed.TextEncoder`, so a text is embedded once across runs). A reply
about something else scores near 0. It measures topicality, not correctness or kindness; short
acknowledgements ("Mm-hm.") score low even in good counselling, so the gate uses the mean over a
conversation's exchanges by default and leaves the per-exchange minimum off.
"""

from __future__ import annotations

import numpy as np


def exchanges(messages: list[dict]) -> list[tuple[int, int]]:
    """``(user index, assistant index)`` of each user turn and the reply right after it (system messages skipped)."""
    order = [i for i, m in enumerate(messages) if m["role"] != "system"]
    return [(a, b) for a, b in zip(order, order[1:]) if messages[a]["role"] == "user" and messages[b]["role"] == "assistant"]


def coherence(conversations_messages: list[list[dict]], encoder) -> list[np.ndarray]:
    """Per conversation, the cosine of each user turn with its reply (encoded in one batch)."""
    pairs = [exchanges(messages) for messages in conversations_messages]
    texts: list[str] = []
    for messages, found in zip(conversations_messages, pairs):
        for a, b in found:
            texts += [str(messages[a]["content"]), str(messages[b]["content"])]
    vectors = encoder.encode(texts) if texts else np.zeros((0, 1), dtype=np.float32)
    out, at = [], 0
    for found in pairs:
        n = len(found)
        users, replies = vectors[at:at + 2 * n:2], vectors[at + 1:at + 2 * n:2]
        out.append(np.einsum("ij,ij->i", users, replies).astype(np.float64) if n else np.zeros(0))
        at += 2 * n
    return out
