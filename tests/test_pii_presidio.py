"""The optional Presidio backend of trainset.conversations.pii, on real Presidio and spaCy, offline."""

from __future__ import annotations

import socket
import sys

import pytest

from trainset.conversations import pii, quality
from trainset.conversations.embed import TextEncoder
from trainset.embeddings import MissingDependency

ENTITIES = ["EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IP_ADDRESS", "US_SSN", "IBAN_CODE", "URL"]
PRESIDIO = {"backend": "presidio", "presidio": {"model": "blank", "entities": ENTITIES, "score_threshold": 0.5}}


@pytest.fixture(scope="module")
def detector():
    """Built and used once with the network refused, and every attempt recorded: libraries that
    fall back quietly when offline (tldextract) must not try at all."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network refused in this test")

    pii._analyzer.cache_clear()
    pii._presidio_spans.cache_clear()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket, "getaddrinfo", refuse)
        built = pii.detector(PRESIDIO)
        assert pii.find("write to jane@example.co.uk", detector=built) == [("email", 9, 27)]
    assert attempts == []
    return built


def test_detector_params(detector):
    assert detector == pii.Detector("presidio", "blank", tuple(ENTITIES), 0.5)
    assert detector.kinds == ("email", "phone", "credit_card", "ip", "street_address", "ssn", "iban_code", "url")
    assert pii.detector({}) is pii.REGEX and pii.detector({"backend": "regex", "presidio": {"model": "nope"}}) is pii.REGEX
    with pytest.raises(ValueError, match="backend: 'spacy' is not one of regex, presidio"):
        pii.detector({"backend": "spacy"})
    with pytest.raises(ValueError, match="score_threshold: 1.5 is not between 0 and 1"):
        pii.detector({"backend": "presidio", "presidio": {"score_threshold": 1.5}})


@pytest.mark.parametrize(("kind", "text", "value"), [
    ("email", "You can write to me at jane.doe+work@example.co.uk any time.", "jane.doe+work@example.co.uk"),
    ("phone", "My cell is 555-867-5309.", "555-867-5309"),
    ("phone", "My phone number in London is +44 20 7946 0958.", "+44 20 7946 0958"),
    ("credit_card", "My card is 4111 1111 1111 1111, is it safe to share?", "4111 1111 1111 1111"),
    ("credit_card", "Use 5500-0055-5555-5559 for the deposit.", "5500-0055-5555-5559"),
    ("ip", "The router at 192.168.1.20 keeps dropping.", "192.168.1.20"),
    ("ip", "Our server is 2001:db8::8a2e:370:7334 now.", "2001:db8::8a2e:370:7334"),
    ("ssn", "My social security number is 536-22-8791.", "536-22-8791"),
    ("street_address", "I moved to 221B Baker Street last spring.", "221B Baker Street"),
    ("iban_code", "Pay the rent to GB82 WEST 1234 5698 7654 32 please.", "GB82 WEST 1234 5698 7654 32"),
    ("url", "My blog is at https://janedoe.example.com/about now.", "https://janedoe.example.com/about"),
])
def test_every_kind_is_found_and_redacted(detector, kind, text, value):
    spans = pii.find(text, detector=detector)
    assert [(k, text[s:e]) for k, s, e in spans] == [(kind, value)]
    assert pii.redact(text, detector=detector) == text.replace(value, pii.placeholder(kind))


def test_placeholders_and_descriptions_of_presidio_kinds():
    assert pii.placeholder("email") == "[EMAIL]" and pii.placeholder("iban_code") == "[IBAN_CODE]"
    assert pii.describe("person") == "a person's name" and pii.describe("us_passport") == "personal data of type US_PASSPORT"


def test_overlaps_and_kinds(detector):
    text = "Email sam@example.com, phone 555-123-4567, IBAN GB82 WEST 1234 5698 7654 32, I live at 42 Maple Street."
    assert [k for k, _, _ in pii.find(text, detector=detector)] == ["email", "phone", "iban_code", "street_address"]
    assert pii.redact(text, detector=detector) == "Email [EMAIL], phone [PHONE], IBAN [IBAN_CODE], I live at [ADDRESS]."
    assert pii.redact(text, ["iban_code"], detector) == text.replace("GB82 WEST 1234 5698 7654 32", "[IBAN_CODE]")
    with pytest.raises(ValueError, match="unknown PII kinds \\['iban_code'\\] for the regex backend"):
        pii.find(text, ["iban_code"])


def test_invalid_card_numbers_and_never_issued_ssns_are_not_reported(detector):
    assert pii.find("My credit card number is 4111 1111 1111 1112.", detector=detector) == []  # fails Luhn
    assert pii.find("My credit card number is 0000 0000 0000 0000.", detector=detector) == []
    text = "My social security number is 912-34-5678."  # area 9xx: Presidio reports it, trainset does not
    raw = pii._analyzer("blank").analyze(text=text, language="en", entities=["US_SSN"], score_threshold=0.5)
    assert [text[r.start:r.end] for r in raw] == ["912-34-5678"]
    assert pii.find(text, detector=detector) == []


@pytest.mark.parametrize("text", [
    "I was born in 1987 and have 3 kids and 2 dogs.",
    "We saved 12500 dollars over 24 months.",
    "Counts were 200 300 4000 in the three groups.",
    "Page 12 of 40, chapter 7.",
])
def test_plain_numbers_are_not_personal_data(detector, text):
    assert pii.find(text, detector=detector) == []


def test_a_spacy_pipeline_by_path_gives_person_and_location(detector, tmp_path):
    import spacy

    nlp = spacy.blank("en")
    nlp.add_pipe("entity_ruler").add_patterns([{"label": "PERSON", "pattern": "Ada Lovelace"}, {"label": "GPE", "pattern": "London"}])
    nlp.to_disk(tmp_path)
    with_ner = pii.detector({"backend": "presidio", "presidio": {"model": str(tmp_path), "entities": ["PERSON", "LOCATION", "EMAIL_ADDRESS"]}})
    assert with_ner.kinds == ("email", "street_address", "person", "location")
    text = "Ada Lovelace lives in London, write to ada@example.org."
    assert pii.redact(text, detector=with_ner) == "[PERSON] lives in [LOCATION], write to [EMAIL]."


def test_missing_model_ner_entities_and_packages_fail_clearly(detector, monkeypatch):
    with pytest.raises(ValueError, match="'en_core_web_xx' is neither an installed package nor a path \\(nothing is downloaded\\)"):
        pii.detector({"backend": "presidio", "presidio": {"model": "en_core_web_xx"}})
    with pytest.raises(ValueError, match="quality.pii.presidio.model: the spaCy pipeline 'en_core_web_xx'"):
        quality.Settings.from_params({"pii": {"backend": "presidio", "presidio": {"model": "en_core_web_xx"}}})
    with pytest.raises(ValueError, match="\\['PERSON'\\] come only from a spaCy NER model"):
        pii.detector({"backend": "presidio", "presidio": {"entities": ["PERSON", "EMAIL_ADDRESS"]}})
    with pytest.raises(ValueError, match="Presidio does not know \\['PASSPORT'\\]"):
        pii.detector({"backend": "presidio", "presidio": {"entities": ["PASSPORT"]}})
    monkeypatch.setitem(sys.modules, "presidio_analyzer", None)  # as if not installed
    with pytest.raises(MissingDependency, match=r"install it with: pip install -c constraints.txt -e '\.\[pii\]'"):
        pii.detector({"backend": "presidio"})


def test_quality_settings_take_the_backend_and_its_extra_kinds(detector):
    regex = quality.Settings.from_params({})
    assert regex.pii_detector is pii.REGEX and set(regex.pii_actions) == set(pii.KINDS)
    s = quality.Settings.from_params({"pii": {**PRESIDIO, "actions": {"iban_code": "reject"}}})
    assert s.pii_detector == detector
    assert s.pii_actions == {**{k: "redact" for k in detector.kinds}, "iban_code": "reject"}
    listed = quality.Settings.from_params({"pii": {**PRESIDIO, "kinds": ["email", "url"]}})
    assert {k for k, a in listed.pii_actions.items() if a != "off"} == {"email", "url"}
    with pytest.raises(ValueError, match="quality.pii.kinds: unknown \\['person'\\] for the presidio backend"):
        quality.Settings.from_params({"pii": {**PRESIDIO, "kinds": ["person"]}})
    with pytest.raises(ValueError, match="quality.pii.kinds: unknown \\['url'\\] for the regex backend"):
        quality.Settings.from_params({"pii": {"kinds": ["url"]}})


def test_the_gate_redacts_and_rejects_through_presidio(detector):
    def conv(cid, user, assistant):
        return {"id": cid, "tier": "default", "category": "general", "is_training_edge_case": False,
                "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}

    question = "I've been so anxious about my exams that I can't sleep. Can we talk about it by email?"
    reply = ("It sounds like the exam pressure is keeping you awake. Yes, you can email me at maria.lopez@example.com "
             "or read my notes at https://notes.example.org/sleep about sleeping before exams.")
    items = [conv("contact", question, reply),
             conv("iban", question + " I can pay to GB82 WEST 1234 5698 7654 32 for the sessions.", reply)]
    settings = quality.Settings.from_params({"pii": {**PRESIDIO, "actions": {"iban_code": "reject"}}, "coherence": {"min_mean": None}})
    scores = quality.score(items, settings, TextEncoder())
    assert list(scores["pii"]) == ["email,url", "email,iban_code,url"]
    result = quality.gate(items, scores, settings)
    assert [c["id"] for c in result.kept] == ["contact"]
    assert "you can email me at [EMAIL] or read my notes at [URL] about" in result.kept[0]["messages"][1]["content"]
    assert list(result.flags["reason"]) == ["redacted an email address, a URL"]
    assert result.rejected.iloc[0]["reason"] == "an IBAN in the user turn 1"
