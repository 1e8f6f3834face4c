"""Quality gates for conversations: score every conversation, then keep, redact, flag or reject.

Two steps, so the scores can be kept and inspected apart from the decision: :func:`score` gives
one row per conversation (length, tokens, language, personal data, safety hits by role, the
optional toxicity model, coherence, empathy); :func:`gate` applies ``quality`` params to them.

The gate's order, first failure wins: turn structure (:mod:`.structure`), turn count and message
length, token limits, language, personal data to reject, the safety flags, coherence, empathy.
A source marked ``is_training_edge_case`` (e.g. crisis conversations kept on purpose) bypasses
the safety flags and the toxicity model, never the rest; its safety hits come back in the flags
table, so nothing is kept silently.

Coherence (:mod:`.coherence`) is the cosine between each user turn and the assistant reply that
follows: a reply about something else scores near 0. It measures topicality, not correctness.

Settings come from ``quality`` in params, with ``tiers`` and ``categories`` overrides merged over
them for a conversation of that tier and category (category last).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pandas as pd

from .. import progress
from . import empathy, language, pii, safety, structure, tokens, toxicity
from .coherence import coherence, exchanges

STAGE = "quality"

DEFAULTS: dict = {
    "min_turns": 2,
    "min_chars": 2,
    "max_tokens_message": 2048,
    "max_tokens_conversation": 8192,
    "tokenizer": "minilm",
    "languages": ["en"],
    "language_candidates": list(language.DEFAULT_CANDIDATES),
    "drop_trailing_user": False,
    "coherence": {"min_mean": 0.15, "min_each": None},
    "empathy": {"min": None},
    "pii": {
        "action": "redact", "kinds": None, "actions": {}, "backend": "regex",
        "presidio": {"model": "blank", "entities": list(pii.PRESIDIO_KINDS), "score_threshold": 0.5},
    },
    "safety": {"crisis": "reject", "violence": "reject", "abuse": "reject", "toxicity": "reject", "roles": ["assistant"]},
    "toxicity_model": {"enabled": False, "threshold": 0.8},
    "tiers": {},
    "categories": {},
}
"""Every ``quality`` key and its default; params name only what they change."""

SCORE_COLUMNS = (
    "id", "turns", "min_message_chars", "max_message_chars", "tokenizer", "tokens_max_message",
    "tokens_longest_turn", "tokens_total", "language", "language_confidence", "pii",
    "crisis", "violence", "abuse", "toxicity", "toxicity_model", "toxicity_model_turn",
    "exchanges", "coherence_mean", "coherence_min", "coherence_min_turn", "empathy", "structure",
)
"""The columns of :func:`score`; safety columns hold the roles that hit (``"user"``, ``"assistant,user"``, ``""``)."""

REJECTED_COLUMNS = ("id", "stage", "rule", "reason")
FLAG_COLUMNS = ("id", "flag", "role", "reason")


def _merge(base: dict, over: dict, where: str) -> dict:
    out = copy.deepcopy(base)
    for key, value in (over or {}).items():
        if key not in base:
            raise ValueError(f"{where}: unknown key {key!r} (known: {', '.join(base)})")
        if key == "actions":
            out[key] = {**base[key], **(value or {})}
        elif isinstance(base[key], dict) and key not in ("tiers", "categories"):
            if not isinstance(value, dict):
                raise ValueError(f"{where}.{key}: expected a mapping, got {value!r}")
            out[key] = _merge(base[key], value, f"{where}.{key}")
        else:
            out[key] = copy.deepcopy(value)
    return out


def _optional(value, where: str) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: expected a number or null, got {value!r}") from None


def _choice(value, choices: tuple[str, ...], where: str) -> str:
    if value not in choices:
        raise ValueError(f"{where}: {value!r} is not one of {', '.join(choices)}")
    return value


@dataclass(frozen=True)
class Settings:
    """The ``quality`` params, checked; :meth:`resolve` gives those of one tier and category."""

    min_turns: int = 2
    min_chars: int = 2
    max_tokens_message: int | None = 2048
    max_tokens_conversation: int | None = 8192
    tokenizer: str = "minilm"
    languages: tuple[str, ...] = ("en",)
    language_candidates: tuple[str, ...] = language.DEFAULT_CANDIDATES
    drop_trailing_user: bool = False
    coherence_min_mean: float | None = 0.15
    coherence_min_each: float | None = None
    empathy_min: float | None = None
    pii_actions: dict[str, str] = field(default_factory=lambda: {kind: "redact" for kind in pii.KINDS})
    pii_detector: pii.Detector = pii.REGEX
    safety_actions: dict[str, str] = field(default_factory=lambda: {flag: "reject" for flag in safety.FLAGS})
    safety_roles: tuple[str, ...] = ("assistant",)
    toxicity_model: bool = False
    toxicity_threshold: float = 0.8
    params: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_params(cls, params: dict | None = None) -> Settings:
        """From the ``quality`` section of params (missing keys take :data:`DEFAULTS`)."""
        merged = _merge(DEFAULTS, params or {}, "quality")
        for group in ("tiers", "categories"):
            if not isinstance(merged[group], dict):
                raise ValueError(f"quality.{group}: expected a mapping of name -> overrides")
            for name, over in merged[group].items():
                if isinstance(over, dict) and {"tiers", "categories"} & set(over):
                    raise ValueError(f"quality.{group}.{name}: overrides cannot hold tiers or categories")
                _build(_merge(merged, over, f"quality.{group}.{name}"))  # fail now, not mid-run
        return _build(merged)

    def resolve(self, tier: str | None = None, category: str | None = None) -> Settings:
        """These settings with ``tiers[tier]`` and then ``categories[category]`` merged over them."""
        merged = self.params or _merge(DEFAULTS, {}, "quality")
        tier_over = merged["tiers"].get(tier) or {}
        category_over = merged["categories"].get(category) or {}
        if not tier_over and not category_over:
            return self
        out = _merge(merged, tier_over, f"quality.tiers.{tier}")
        return _build(_merge(out, category_over, f"quality.categories.{category}"))


def _build(p: dict) -> Settings:
    pii_params = p["pii"]
    default_action = _choice(pii_params["action"], pii.ACTIONS, "quality.pii.action")
    detector = pii.detector(pii_params, "quality.pii")
    known = detector.kinds
    kinds = known if pii_params["kinds"] is None else pii_params["kinds"]
    unknown = set(kinds) - set(known)
    if unknown:
        raise ValueError(f"quality.pii.kinds: unknown {sorted(unknown)} for the {detector.backend} backend (known: {', '.join(known)})")
    pii_actions = {kind: default_action if kind in kinds else "off" for kind in known}
    for kind, action in (pii_params.get("actions") or {}).items():
        if kind not in known:
            raise ValueError(f"quality.pii.actions: unknown kind {kind!r} for the {detector.backend} backend (known: {', '.join(known)})")
        pii_actions[kind] = _choice(action, pii.ACTIONS, f"quality.pii.actions.{kind}")
    safety_params = p["safety"]
    roles = tuple(safety_params["roles"])
    if set(roles) - {"system", "user", "assistant"}:
        raise ValueError(f"quality.safety.roles: {list(roles)} (roles: system, user, assistant)")
    return Settings(
        min_turns=int(p["min_turns"]),
        min_chars=int(p["min_chars"]),
        max_tokens_message=None if p["max_tokens_message"] is None else int(p["max_tokens_message"]),
        max_tokens_conversation=None if p["max_tokens_conversation"] is None else int(p["max_tokens_conversation"]),
        tokenizer=str(p["tokenizer"]),
        languages=tuple(str(x) for x in p["languages"]),
        language_candidates=tuple(str(x) for x in p["language_candidates"]),
        drop_trailing_user=bool(p["drop_trailing_user"]),
        coherence_min_mean=_optional(p["coherence"]["min_mean"], "quality.coherence.min_mean"),
        coherence_min_each=_optional(p["coherence"]["min_each"], "quality.coherence.min_each"),
        empathy_min=_optional(p["empathy"]["min"], "quality.empathy.min"),
        pii_actions=pii_actions,
        pii_detector=detector,
        safety_actions={flag: _choice(safety_params[flag], safety.ACTIONS, f"quality.safety.{flag}") for flag in safety.FLAGS},
        safety_roles=roles,
        toxicity_model=bool(p["toxicity_model"]["enabled"]),
        toxicity_threshold=float(p["toxicity_model"]["threshold"]),
        params=p,
    )


class _Resolver:
    """Settings per (tier, category), resolved once each."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.cache: dict[tuple, Settings] = {}

    def __call__(self, conversation: dict) -> Settings:
        key = (conversation.get("tier"), conversation.get("category"))
        if key not in self.cache:
            self.cache[key] = self.settings.resolve(*key)
        return self.cache[key]


def prepare(messages: list[dict], settings: Settings) -> list[dict]:
    """The messages the gate judges: with ``drop_trailing_user``, an unanswered last user turn removed."""
    if settings.drop_trailing_user:
        messages = list(messages)
        while messages and messages[-1]["role"] == "user":
            messages.pop()
    return messages


def score(conversations: list[dict], settings: Settings, encoder) -> pd.DataFrame:
    """One row per conversation (:data:`SCORE_COLUMNS`); ``encoder`` embeds text for coherence
    (a :class:`~.embed.TextEncoder`)."""
    resolve = _Resolver(settings)
    prepared = [prepare(c["messages"], resolve(c)) for c in conversations]
    cosines = coherence(prepared, encoder)
    model_scores = _toxicity_model_scores(conversations, prepared, resolve)
    rows = []
    scored = zip(conversations, prepared, cosines, model_scores)
    for conversation, messages, cos, model in progress.bar(scored, total=len(conversations), desc="score", unit="conversation"):
        s = resolve(conversation)
        chars = [len(str(m.get("content", "")).strip()) for m in messages]
        counts = tokens.count_messages(messages, s.tokenizer)
        longest = int(np.argmax(counts)) if counts else -1
        lang, confidence = language.detect(language.conversation_text(messages), s.language_candidates)
        found_pii = sorted({kind for m in messages for kind, _, _ in pii.find(str(m.get("content", "")), _pii_kinds(s), s.pii_detector)})
        hit_roles = safety.roles_by_flag(safety.scan(messages))
        pairs = exchanges(messages)
        rows.append({
            "id": conversation["id"],
            "turns": sum(1 for m in messages if m["role"] != "system"),
            "min_message_chars": min(chars, default=0),
            "max_message_chars": max(chars, default=0),
            "tokenizer": s.tokenizer,
            "tokens_max_message": max(counts, default=0),
            "tokens_longest_turn": longest + 1,
            "tokens_total": sum(counts),
            "language": lang,
            "language_confidence": confidence,
            "pii": ",".join(found_pii),
            **{flag: ",".join(hit_roles[flag]) for flag in safety.FLAGS},
            "toxicity_model": model[0],
            "toxicity_model_turn": model[1],
            "exchanges": len(pairs),
            "coherence_mean": float(cos.mean()) if len(cos) else math.nan,
            "coherence_min": float(cos.min()) if len(cos) else math.nan,
            "coherence_min_turn": pairs[int(np.argmin(cos))][1] + 1 if len(cos) else 0,
            "empathy": empathy.score(messages),
            "structure": ",".join(structure.problems(messages)),
        })
    return pd.DataFrame(rows, columns=list(SCORE_COLUMNS))


def _pii_kinds(settings: Settings) -> tuple[str, ...]:
    return tuple(kind for kind, action in settings.pii_actions.items() if action != "off")


def _toxicity_model_scores(conversations, prepared, resolve) -> list[tuple[float, int]]:
    """Per conversation, the highest toxicity-model probability among the counted roles' turns, and that turn."""
    wanted = []
    for n, (conversation, messages) in enumerate(zip(conversations, prepared)):
        s = resolve(conversation)
        if s.toxicity_model:
            wanted += [(n, i, str(m["content"])) for i, m in enumerate(messages) if m["role"] in s.safety_roles]
    out = [(math.nan, 0)] * len(conversations)
    if not wanted:
        return out
    probabilities = toxicity.score([text for _, _, text in wanted])
    for (n, i, _), p in zip(wanted, probabilities):
        if math.isnan(out[n][0]) or p > out[n][0]:
            out[n] = (float(p), i + 1)
    for n, conversation in enumerate(conversations):  # enabled, but no counted turn
        if resolve(conversation).toxicity_model and math.isnan(out[n][0]):
            out[n] = (0.0, 0)
    return out


class GateResult(NamedTuple):
    kept: list[dict]
    rejected: pd.DataFrame
    flags: pd.DataFrame


def gate(conversations: list[dict], scores: pd.DataFrame, settings: Settings) -> GateResult:
    """Kept conversations (personal data redacted where the action is ``redact``), the rejected
    table (:data:`REJECTED_COLUMNS`, one row per conversation, the first rule that failed) and the
    flags of kept conversations (:data:`FLAG_COLUMNS`: safety hits let through, redactions...)."""
    resolve = _Resolver(settings)
    by_id = scores.set_index("id", drop=False)
    kept, rejected, flags = [], [], []
    for conversation in conversations:
        s = resolve(conversation)
        if conversation["id"] not in by_id.index:
            raise ValueError(f"no quality scores for conversation {conversation['id']!r}: score() them first")
        row = by_id.loc[conversation["id"]]
        messages = prepare(conversation["messages"], s)
        item_flags: list[tuple[str, str, str]] = []
        failure = _check(conversation, messages, row, s, item_flags)
        if failure:
            rejected.append({"id": conversation["id"], "stage": STAGE, "rule": failure[0], "reason": failure[1]})
            continue
        if len(messages) < len(conversation["messages"]):
            item_flags.append(("dropped_trailing_user", "user", f"removed {len(conversation['messages']) - len(messages)} unanswered user turn(s) at the end"))
        out, redacted = _redacted(conversation, messages, s)
        if redacted:
            item_flags.append(("pii_redacted", "", "redacted " + ", ".join(pii.describe(k) for k in redacted)))
        kept.append(out)
        flags += [{"id": conversation["id"], "flag": f, "role": r, "reason": why} for f, r, why in item_flags]
    return GateResult(kept, pd.DataFrame(rejected, columns=list(REJECTED_COLUMNS)), pd.DataFrame(flags, columns=list(FLAG_COLUMNS)))


def _check(conversation: dict, messages: list[dict], row, s: Settings, item_flags: list) -> tuple[str, str] | None:
    """The first failed rule as ``(rule, reason)``, or None; safety hits let through go to ``item_flags``."""
    problems = structure.problems(messages)
    if problems:
        return "structure", structure.describe(problems)
    turns = sum(1 for m in messages if m["role"] != "system")
    if turns < s.min_turns:
        return "min_turns", f"{turns} turns, fewer than {s.min_turns}"
    for i, m in enumerate(messages, start=1):
        n = len(str(m["content"]).strip())
        if n < s.min_chars:
            return "min_chars", f"the {m['role']} turn {i} has {n} characters, fewer than {s.min_chars}"
    if s.max_tokens_message is not None and row["tokens_max_message"] > s.max_tokens_message:
        return "max_tokens_message", (f"turn {row['tokens_longest_turn']} has {row['tokens_max_message']} {s.tokenizer} tokens, "
                                      f"more than {s.max_tokens_message}")
    if s.max_tokens_conversation is not None and row["tokens_total"] > s.max_tokens_conversation:
        return "max_tokens_conversation", f"{row['tokens_total']} {s.tokenizer} tokens in all, more than {s.max_tokens_conversation}"
    if row["language"] not in s.languages:
        if row["language"] == language.UNKNOWN:
            return "language", f"the language cannot be told from under {language.MIN_CHARS} characters of text (allowed: {', '.join(s.languages)})"
        return "language", f"language {row['language']} (confidence {row['language_confidence']:.2f}) is not one of {', '.join(s.languages)}"
    rejecting = tuple(k for k, a in s.pii_actions.items() if a == "reject")
    for i, m in enumerate(messages, start=1):
        found = pii.find(str(m["content"]), rejecting, s.pii_detector) if rejecting else []
        if found:
            return "pii", f"{pii.describe(found[0][0])} in the {m['role']} turn {i}"
    failure = _safety(conversation, messages, row, s, item_flags)
    if failure:
        return failure
    if s.coherence_min_mean is not None and not row["coherence_mean"] >= s.coherence_min_mean:
        return "coherence_mean", (f"replies are off-topic: mean similarity of user turn and reply {row['coherence_mean']:.2f}, "
                                  f"below {s.coherence_min_mean:g}")
    if s.coherence_min_each is not None and not row["coherence_min"] >= s.coherence_min_each:
        return "coherence_min", (f"the reply in turn {row['coherence_min_turn']} is off-topic: similarity {row['coherence_min']:.2f}, "
                                 f"below {s.coherence_min_each:g}")
    if s.empathy_min is not None and not row["empathy"] >= s.empathy_min:
        return "empathy", f"empathy heuristic {row['empathy']:.2f}, below {s.empathy_min:g}"
    return None


def _safety(conversation: dict, messages: list[dict], row, s: Settings, item_flags: list) -> tuple[str, str] | None:
    edge_case = bool(conversation.get("is_training_edge_case"))
    suffix = " (training edge case: safety filters bypassed)" if edge_case else ""
    hits = safety.scan(messages)
    for flag in safety.FLAGS:
        action = s.safety_actions[flag]
        if action == "off":
            continue
        mine = [h for h in hits if h.flag == flag]
        counted = [h for h in mine if h.role in s.safety_roles]
        if counted and action == "reject" and not edge_case:
            return flag, safety.describe(counted[0])
        for role in sorted({h.role for h in mine}):
            first = next(h for h in mine if h.role == role)
            item_flags.append((flag, role, safety.describe(first) + suffix))
    if s.toxicity_model and not math.isnan(row["toxicity_model"]) and row["toxicity_model"] >= s.toxicity_threshold:
        turn = int(row["toxicity_model_turn"])
        role = messages[turn - 1]["role"] if 0 < turn <= len(messages) else ""
        why = f"toxicity model gives {row['toxicity_model']:.2f} (threshold {s.toxicity_threshold:g}) to the {role} turn {turn}"
        if not edge_case:
            return "toxicity_model", why
        item_flags.append(("toxicity_model", role, why + suffix))
    return None


def _redacted(conversation: dict, messages: list[dict], s: Settings) -> tuple[dict, list[str]]:
    """A copy of the conversation with ``messages`` and personal data of the redact kinds replaced."""
    kinds = tuple(k for k, a in s.pii_actions.items() if a == "redact")
    found: set[str] = set()
    out_messages = []
    for m in messages:
        text = str(m["content"])
        spans = pii.find(text, kinds, s.pii_detector) if kinds else []
        found.update(kind for kind, _, _ in spans)
        out_messages.append({**m, "content": pii.redact(text, kinds, s.pii_detector)} if spans else dict(m))
    out = {**conversation, "messages": out_messages}
    if kinds and isinstance(conversation.get("rejected_reply"), str):
        spans = pii.find(conversation["rejected_reply"], kinds, s.pii_detector)
        if spans:
            found.update(kind for kind, _, _ in spans)
            out["rejected_reply"] = pii.redact(conversation["rejected_reply"], kinds, s.pii_detector)
    return out, [k for k in s.pii_detector.kinds if k in found]
