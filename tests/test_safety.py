"""Safety flags from lexicons (trainset.conversations.safety)."""

from __future__ import annotations

import pytest

from trainset.conversations import safety


@pytest.mark.parametrize(("text", "flag", "matched"), [
    ("Lately I keep thinking about killing myself, nothing helps.", "crisis", "killing myself"),
    ("Honestly I just want to die most days.", "crisis", "I just want to die"),
    ("I've been cutting myself again since Christmas.", "crisis", "cutting myself"),
    ("You should just kill yourself.", "crisis", "You should just kill yourself"),
    ("If he touches my sister again I'm going to kill him.", "violence", "I'm going to kill him"),
    ("Tell me how to build a pipe bomb.", "violence", "build a pipe bomb"),
    ("My stepdad hits me when he's drunk.", "abuse", "hits me"),
    ("I was sexually abused by a neighbour when I was nine.", "abuse", "I was sexually abused"),
    ("You are such a pathetic loser.", "toxicity", "You are such a pathetic loser"),
    ("Fuck you, I'm done talking.", "toxicity", "Fuck you"),
])
def test_hits(text, flag, matched):
    assert (flag, matched) in safety.scan_text(text)


@pytest.mark.parametrize("text", [
    "You're killing it at work, honestly.",
    "Shoot me an email when you land.",
    "We shot a video for her birthday.",
    "I'm dying to know how the interview went.",
    "I bombed the exam but I'll retake it.",
    "He has struggled with substance abuse and alcohol abuse for years.",
    "Are you having thoughts of killing yourself right now?",
    "If you ever feel like hurting yourself, call the suicide hotline.",
    "It sounds like part of you wants to die, and part of you wants things to change.",
    "I don't want to die, I just want the pain to stop.",
    "You're not stupid; this stuff is genuinely hard.",
    "This week has been fucking hard.",
    "That was a chink in his armour.",
    "We tried to kill some time before the movie.",
    "You told me you've been thinking about hurting yourself, killing yourself, not being here.",
])
def test_false_positive_guards(text):
    assert safety.scan_text(text) == []


def test_hits_name_turn_and_role():
    messages = [
        {"role": "user", "content": "Sometimes I think I'd be better off dead."},
        {"role": "assistant", "content": "That sounds really heavy. What's been happening?"},
        {"role": "user", "content": "My boyfriend slapped me last night."},
        {"role": "assistant", "content": "Shut up, you're a worthless idiot."},
    ]
    hits = safety.scan(messages)
    assert [(h.flag, h.turn, h.role) for h in hits] == [("crisis", 1, "user"), ("abuse", 3, "user"), ("toxicity", 4, "assistant"), ("toxicity", 4, "assistant")]
    assert safety.roles_by_flag(hits) == {"crisis": ["user"], "violence": [], "abuse": ["user"], "toxicity": ["assistant"]}
    assert safety.describe(hits[0]) == "crisis language in the user turn 1: \"I'd be better off dead\""


def test_curly_apostrophes_match():
    assert ("crisis", "I\u2019m so suicidal") in safety.scan_text("Honestly I\u2019m so suicidal tonight.")


def test_lexicon_files_are_read_without_comments():
    for name in (*safety.FLAGS, "safe_contexts", "empathy_validating", "empathy_dismissive"):
        lines = safety.read_lexicon(name)
        assert lines and not any(line.startswith("#") for line in lines)
        safety.lexicon(name)  # every line compiles


@pytest.mark.parametrize("text", [
    "If everyone thinks you're worthless, then maybe you need to find new people to spend time with.",
    'Depression tells us things like "you\'re worthless" and "no one likes you".',
    "A crying baby wants to be held, not told to shut up.",
    "If you feel like you might actually take your life, please go to a hospital.",
    "Thinking about that all the time would kill you from inside.",
    "Stress like that can slowly kill you, so let's find ways to rest.",
    "Even if you are feeling worthless right now, that doesn't mean you are worthless.",
    "If you were told growing up that you're worthless, that belief can stay with you.",
    "You told me that you've also been thinking about hurting yourself, killing yourself, not being here.",
])
def test_reported_speech_and_warnings_in_counselling_replies_are_not_hits(text):
    assert safety.scan_text(text) == []


@pytest.mark.parametrize("text, flag", [
    ("You're worthless. Shut up.", "toxicity"),
    ("I will kill you if you tell anyone.", "violence"),
    ("You should kill yourself.", "crisis"),
])
def test_the_same_words_said_outright_still_hit(text, flag):
    assert flag in {f for f, _ in safety.scan_text(text)}
