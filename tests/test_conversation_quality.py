"""Quality scores and gates for conversations (trainset.conversations.quality and its parts)."""

from __future__ import annotations

import math

import pytest

from trainset import clip_tokens
from trainset.conversations import empathy, language, quality, tokens, toxicity
from trainset.conversations.embed import TextEncoder

ANXIOUS = "I've been so anxious about my exams that I can't sleep, and I keep snapping at my flatmates."
CALMING = ("It sounds like the exam pressure is keeping you awake and spilling over into home. "
           "What has your sleep been like this week, and what usually helps you wind down before exams?")
OFF_TOPIC = "The stock market closed higher today as technology shares rallied on strong quarterly earnings."
TOLD_TO_DIE = "A guy in my class messaged me last night telling me to go kill myself, and I can't stop crying about it."
CRISIS_REPLY = ("Being told to kill yourself by a classmate is cruel and frightening, and it makes sense that you can't "
                "stop crying. Are you safe right now, and is there someone at school you trust?")
DISCLOSURE = "Honestly I've been thinking about killing myself, I can't see a way out of this debt."
SUPPORT = ("Thank you for telling me about the debt and these thoughts. It sounds like you feel trapped. "
           "What has been happening with the money this month?")


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder()


def conv(cid, *turns, edge=False, tier="default", category="general"):
    """A conversation as the readers make it, from (role, text) pairs."""
    return {
        "id": cid, "sha256": "0" * 64, "source": "test", "tier": tier, "category": category,
        "is_training_edge_case": edge, "license": "cc-by-4.0", "original_id": cid,
        "messages": [{"role": r, "content": t} for r, t in turns],
    }


def run_gate(conversations, encoder, params=None):
    settings = quality.Settings.from_params(params or {})
    scores = quality.score(conversations, settings, encoder)
    return scores, quality.gate(conversations, scores, settings)


def rejected_rules(result):
    return dict(zip(result.rejected["id"], result.rejected["rule"]))


# --------------------------------------------------------------------------- settings


def test_settings_defaults_and_checks():
    s = quality.Settings.from_params({})
    assert (s.min_turns, s.tokenizer, s.languages, s.coherence_min_mean, s.safety_roles) == (2, "minilm", ("en",), 0.15, ("assistant",))
    assert s.pii_actions == {k: "redact" for k in ("email", "phone", "credit_card", "ip", "street_address", "ssn")}
    assert s.safety_actions == {"crisis": "reject", "violence": "reject", "abuse": "reject", "toxicity": "reject"}
    s = quality.Settings.from_params({"pii": {"kinds": ["email", "ssn"], "actions": {"ssn": "reject"}}})
    assert s.pii_actions["ssn"] == "reject" and s.pii_actions["email"] == "redact" and s.pii_actions["phone"] == "off"
    with pytest.raises(ValueError, match="unknown key 'min_turn'"):
        quality.Settings.from_params({"min_turn": 3})
    with pytest.raises(ValueError, match="quality.safety.crisis: 'drop'"):
        quality.Settings.from_params({"safety": {"crisis": "drop"}})
    with pytest.raises(ValueError, match="quality.tiers.bronze.coherence: unknown key 'mean'"):
        quality.Settings.from_params({"tiers": {"bronze": {"coherence": {"mean": 0.3}}}})


def test_tier_and_category_overrides_merge_over_defaults():
    s = quality.Settings.from_params({
        "coherence": {"min_each": 0.05},
        "tiers": {"bronze": {"coherence": {"min_mean": 0.3}, "languages": ["en", "es"]}},
        "categories": {"crisis": {"safety": {"crisis": "flag"}, "coherence": {"min_mean": 0.2}}},
    })
    bronze = s.resolve("bronze", "general")
    assert (bronze.coherence_min_mean, bronze.coherence_min_each, bronze.languages) == (0.3, 0.05, ("en", "es"))
    both = s.resolve("bronze", "crisis")
    assert (both.coherence_min_mean, both.safety_actions["crisis"], both.safety_actions["violence"]) == (0.2, "flag", "reject")
    assert s.resolve("gold", "general") is s


# --------------------------------------------------------------------------- tokens


def test_whitespace_and_clip_counts():
    text = "It sounds like the exams are weighing on you."
    assert tokens.counter("whitespace")(text) == 9
    assert tokens.counter("clip")(text) == clip_tokens.count(text) == len(clip_tokens.tokenizer().encode(text))


def test_minilm_counts_like_the_tokenizer_file_without_truncation():
    from tokenizers import Tokenizer

    direct = Tokenizer.from_file(str(tokens.minilm_tokenizer_path()))
    direct.no_truncation()
    direct.no_padding()
    long_text = " ".join([CALMING] * 12)  # past the file's own 128-token truncation
    for text in (ANXIOUS, CALMING, long_text, "unbelievably tokenization"):
        assert tokens.counter("minilm")(text) == len(direct.encode(text, add_special_tokens=False).ids)
    assert tokens.counter("minilm")(long_text) > 128
    assert tokens.counter(str(tokens.minilm_tokenizer_path()))(CALMING) == tokens.counter("minilm")(CALMING)


def test_unknown_tokenizer_path_fails_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="quality.tokenizer"):
        tokens.counter(str(tmp_path / "nope" / "tokenizer.json"))


# --------------------------------------------------------------------------- language


@pytest.mark.parametrize(("text", "code"), [
    ("I have been feeling really anxious about work lately and I don't know who to talk to.", "en"),
    ("Me siento muy triste desde hace semanas y no sé con quién hablar.", "es"),
    ("Je me sens très seul depuis que j'ai déménagé dans cette ville.", "fr"),
    ("Ich habe seit Tagen nicht richtig geschlafen und bin völlig erschöpft.", "de"),
    ("Последние недели я почти не сплю и постоянно волнуюсь о работе.", "ru"),
    ("我最近工作压力很大，每天晚上都睡不着觉，不知道该怎么办。", "zh"),
])
def test_language_of_real_sentences(text, code):
    found, confidence = language.detect(text)
    assert found == code and 0.5 < confidence <= 1.0


def test_short_text_is_unknown():
    assert language.detect("Thanks, bye!") == ("unknown", 0.0)


# --------------------------------------------------------------------------- coherence and empathy


def test_coherence_high_on_topic_low_off_topic(encoder):
    on, off = quality.coherence([
        [{"role": "user", "content": ANXIOUS}, {"role": "assistant", "content": CALMING}],
        [{"role": "user", "content": ANXIOUS}, {"role": "assistant", "content": OFF_TOPIC}],
    ], encoder)
    assert on[0] > 0.4 and off[0] < 0.1


def test_empathy_heuristic_orders_replies():
    def with_reply(reply):
        return [{"role": "user", "content": ANXIOUS}, {"role": "assistant", "content": reply}]

    warm = empathy.score(with_reply(CALMING))
    cold = empathy.score(with_reply("Just get over it. You should have studied earlier; you need to stop complaining."))
    flat = empathy.score(with_reply("Exams are in June. The library opens at nine."))
    assert 0.0 <= cold < flat < warm <= 1.0
    assert empathy.open_questions("How did that feel? Did you sleep? What helps?") == 2
    assert math.isnan(empathy.score([{"role": "user", "content": ANXIOUS}]))


# --------------------------------------------------------------------------- the gate


def test_scores_have_one_row_per_conversation(encoder):
    items = [conv("a", ("user", ANXIOUS), ("assistant", CALMING)), conv("b", ("user", DISCLOSURE), ("assistant", SUPPORT))]
    scores = quality.score(items, quality.Settings.from_params({}), encoder)
    assert list(scores.columns) == list(quality.SCORE_COLUMNS) and list(scores["id"]) == ["a", "b"]
    b = scores.set_index("id").loc["b"]
    assert (b["crisis"], b["language"], b["turns"], b["exchanges"], b["structure"]) == ("user", "en", 2, 1, "")
    assert b["coherence_mean"] == b["coherence_min"] > 0.3 and 0 < b["empathy"] <= 1


def test_edge_case_bypasses_safety_and_keeps_the_flag(encoder):
    items = [
        conv("ordinary", ("user", TOLD_TO_DIE), ("assistant", CRISIS_REPLY)),
        conv("edge", ("user", TOLD_TO_DIE), ("assistant", CRISIS_REPLY), edge=True),
    ]
    _, result = run_gate(items, encoder)
    assert [c["id"] for c in result.kept] == ["edge"]
    row = result.rejected.iloc[0]
    assert (row["id"], row["stage"], row["rule"]) == ("ordinary", "quality", "crisis")
    assert row["reason"] == "crisis language in the assistant turn 2: 'kill yourself'"
    flags = result.flags[result.flags["id"] == "edge"]
    assert set(zip(flags["flag"], flags["role"])) == {("crisis", "user"), ("crisis", "assistant")}
    assert all("safety filters bypassed" in r for r in flags["reason"])


def test_user_disclosure_counts_only_when_user_roles_count(encoder):
    items = [conv("plain", ("user", DISCLOSURE), ("assistant", SUPPORT)), conv("edge", ("user", DISCLOSURE), ("assistant", SUPPORT), edge=True)]
    _, counselling = run_gate(items, encoder)  # default: only assistant turns count
    assert [c["id"] for c in counselling.kept] == ["plain", "edge"]
    assert list(counselling.flags["flag"]) == ["crisis", "crisis"]
    _, general = run_gate(items, encoder, {"safety": {"roles": ["user", "assistant"]}})
    assert [c["id"] for c in general.kept] == ["edge"]
    assert rejected_rules(general) == {"plain": "crisis"}


def test_edge_case_still_fails_structure_and_coherence(encoder):
    items = [
        conv("unanswered", ("user", TOLD_TO_DIE), ("assistant", CRISIS_REPLY), ("user", "Are you still there?"), edge=True),
        conv("two_users", ("user", TOLD_TO_DIE), ("user", "Hello?"), ("assistant", CRISIS_REPLY), edge=True),
        conv("off_topic", ("user", TOLD_TO_DIE), ("assistant", OFF_TOPIC), edge=True),
        conv("crisis_and_broken", ("user", TOLD_TO_DIE), ("assistant", CRISIS_REPLY), ("user", "ok")),
    ]
    _, result = run_gate(items, encoder)
    assert result.kept == []
    assert rejected_rules(result) == {"unanswered": "structure", "two_users": "structure", "off_topic": "coherence_mean", "crisis_and_broken": "structure"}
    reasons = dict(zip(result.rejected["id"], result.rejected["reason"]))
    assert reasons["unanswered"] == "the last turn is not the assistant's"
    assert reasons["off_topic"].startswith("replies are off-topic")


def test_drop_trailing_user_keeps_the_answered_part(encoder):
    items = [
        conv("trailing", ("user", ANXIOUS), ("assistant", CALMING), ("user", "Thanks, I'll think about it.")),
        conv("nothing_answered", ("user", ANXIOUS)),
    ]
    _, result = run_gate(items, encoder, {"drop_trailing_user": True})
    assert [c["id"] for c in result.kept] == ["trailing"]
    assert [m["role"] for m in result.kept[0]["messages"]] == ["user", "assistant"]
    assert list(result.flags["flag"]) == ["dropped_trailing_user"]
    assert rejected_rules(result) == {"nothing_answered": "structure"}
    assert items[0]["messages"][-1]["role"] == "user"  # the input is not changed


def test_pii_is_redacted_or_rejected_per_kind(encoder):
    contact = "Thanks. If it helps, you can email me at maria.lopez@example.com or call 555-867-5309."
    items = [
        conv("contact", ("user", ANXIOUS), ("assistant", CALMING + " " + contact)),
        conv("ssn", ("user", ANXIOUS + " The form wants my SSN, it's 123-45-6789."), ("assistant", CALMING)),
    ]
    _, result = run_gate(items, encoder, {"pii": {"actions": {"ssn": "reject"}}})
    assert [c["id"] for c in result.kept] == ["contact"]
    assert result.kept[0]["messages"][1]["content"].endswith("you can email me at [EMAIL] or call [PHONE].")
    assert "maria.lopez" in items[0]["messages"][1]["content"]
    assert list(result.flags["reason"]) == ["redacted an email address, a phone number"]
    assert result.rejected.iloc[0].to_dict() == {"id": "ssn", "stage": "quality", "rule": "pii", "reason": "a social security number in the user turn 1"}
    _, off = run_gate(items[:1], encoder, {"pii": {"action": "off"}})
    assert off.kept[0]["messages"] == items[0]["messages"] and off.flags.empty


def test_format_length_and_language_rules(encoder):
    spanish = conv("es", ("user", "Me siento muy triste desde hace semanas y no sé con quién hablar."),
                   ("assistant", "Parece que llevas mucho tiempo cargando esto solo. ¿Qué ha pasado en estas semanas?"))
    items = [
        conv("one_turn", ("assistant", CALMING)),
        conv("tiny", ("user", ANXIOUS), ("assistant", "k")),
        conv("long", ("user", ANXIOUS), ("assistant", " ".join([CALMING] * 3))),
        spanish,
    ]
    _, result = run_gate(items, encoder, {"max_tokens_message": 60, "min_turns": 2})
    rules = rejected_rules(result)
    assert rules == {"one_turn": "structure", "tiny": "min_chars", "long": "max_tokens_message", "es": "language"}
    reasons = dict(zip(result.rejected["id"], result.rejected["reason"]))
    assert reasons["tiny"] == "the assistant turn 2 has 1 characters, fewer than 2"
    assert reasons["es"].startswith("language es (confidence")
    _, both = run_gate([spanish], encoder, {"languages": ["en", "es"]})
    assert [c["id"] for c in both.kept] == ["es"]
    _, total = run_gate(items[2:3], encoder, {"max_tokens_conversation": 50})
    assert rejected_rules(total) == {"long": "max_tokens_conversation"}


def test_per_tier_override_changes_the_gate(encoder):
    params = {"tiers": {"bronze": {"coherence": {"min_mean": 0.9}}}, "categories": {"support": {"safety": {"crisis": "flag"}}}}
    items = [
        conv("gold", ("user", ANXIOUS), ("assistant", CALMING), tier="gold"),
        conv("bronze", ("user", ANXIOUS), ("assistant", CALMING), tier="bronze"),
        conv("support", ("user", TOLD_TO_DIE), ("assistant", CRISIS_REPLY), category="support"),
    ]
    _, result = run_gate(items, encoder, params)
    assert [c["id"] for c in result.kept] == ["gold", "support"]
    assert rejected_rules(result) == {"bronze": "coherence_mean"}
    assert ("support", "crisis", "assistant") in set(zip(result.flags["id"], result.flags["flag"], result.flags["role"]))


def test_empathy_gate(encoder):
    cold = conv("cold", ("user", ANXIOUS), ("assistant", "Just get over it, you should have started revising exams earlier. Calm down."))
    warm = conv("warm", ("user", ANXIOUS), ("assistant", CALMING))
    _, result = run_gate([cold, warm], encoder, {"empathy": {"min": 0.2}})
    assert [c["id"] for c in result.kept] == ["warm"] and rejected_rules(result) == {"cold": "empathy"}


# --------------------------------------------------------------------------- the optional toxicity model


def test_toxicity_model_scores():
    toxic, kind = toxicity.score(["You are so dumb and stupid, nobody wants you here!", CALMING])
    assert toxic > 0.8 and kind < 0.1
    assert toxicity.classify([CALMING]).shape == (1, len(toxicity.LABELS))


def test_toxicity_model_gate_and_edge_case(encoder):
    rude = "You are so dumb and stupid for worrying about exams, idiot, how would you even sleep."
    params = {"toxicity_model": {"enabled": True, "threshold": 0.8}, "safety": {"toxicity": "off"}}
    items = [conv("rude", ("user", ANXIOUS), ("assistant", rude)), conv("rude_edge", ("user", ANXIOUS), ("assistant", rude), edge=True),
             conv("kind", ("user", ANXIOUS), ("assistant", CALMING))]
    scores, result = run_gate(items, encoder, params)
    assert scores.set_index("id").loc["rude", "toxicity_model"] > 0.8
    assert [c["id"] for c in result.kept] == ["rude_edge", "kind"]
    assert rejected_rules(result) == {"rude": "toxicity_model"}
    assert list(result.flags["flag"]) == ["toxicity_model"]
    off = quality.score(items[:1], quality.Settings.from_params({}), encoder)
    assert math.isnan(off["toxicity_model"].iloc[0])


def test_toxicity_model_missing_names_the_install(monkeypatch):
    monkeypatch.setattr(toxicity.importlib.util, "find_spec", lambda name, *a: None)
    assert not toxicity.available()
    with pytest.raises(ImportError, match="pip install --no-deps toxic-comment-classifier==0.3.0"):
        toxicity._package_dir()
