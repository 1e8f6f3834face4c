"""Personal data in conversation text (trainset.conversations.pii)."""

from __future__ import annotations

import pytest

from trainset.conversations import pii


@pytest.mark.parametrize("number", ["4111111111111111", "5500005555555559", "378282246310005", "6011111111111117"])
def test_luhn_accepts_real_card_numbers(number):
    assert pii.luhn_valid(number)


@pytest.mark.parametrize("number", ["4111111111111112", "1234567812345678", "0000000000000000", "12345", "4111-1111"])
def test_luhn_rejects_others(number):
    assert not pii.luhn_valid(number)


@pytest.mark.parametrize(("kind", "text", "value"), [
    ("email", "You can write to me at jane.doe+work@example.co.uk any time.", "jane.doe+work@example.co.uk"),
    ("phone", "Call me on (555) 123-4567 after six.", "(555) 123-4567"),
    ("phone", "My cell is 555-867-5309.", "555-867-5309"),
    ("phone", "Ring the helpline on 1-800-555-0199 tonight.", "1-800-555-0199"),
    ("phone", "I'm in London, +44 20 7946 0958 is my office.", "+44 20 7946 0958"),
    ("credit_card", "My card is 4111 1111 1111 1111, is it safe to share?", "4111 1111 1111 1111"),
    ("credit_card", "Use 5500-0055-5555-5559 for the deposit.", "5500-0055-5555-5559"),
    ("ip", "The router at 192.168.1.20 keeps dropping.", "192.168.1.20"),
    ("ip", "Our server is 2001:db8::8a2e:370:7334 now.", "2001:db8::8a2e:370:7334"),
    ("street_address", "I moved to 221B Baker Street last spring.", "221B Baker Street"),
    ("street_address", "Send it to 1600 Pennsylvania Ave NW, please.", "1600 Pennsylvania Ave NW"),
    ("ssn", "My social is 123-45-6789 if the form needs it.", "123-45-6789"),
])
def test_every_kind_is_found_and_redacted(kind, text, value):
    spans = pii.find(text)
    assert [(k, text[s:e]) for k, s, e in spans] == [(kind, value)]
    assert pii.redact(text) == text.replace(value, pii.PLACEHOLDERS[kind])


@pytest.mark.parametrize("text", [
    "I was born in 1987 and have 3 kids and 2 dogs.",
    "We saved 12500 dollars over 24 months.",
    "The appointment was on 2023-10-12 at 14:30.",
    "Counts were 200 300 4000 in the three groups.",
    "My card number is 4111 1111 1111 1112.",          # fails Luhn
    "Upgrade to version 1.2.3.4.5 of the app.",
    "Not an address: 999.300.1.1 or 12:30:45.",
    "I walked 3 miles down the road to the store.",
    "The ids 666-12-3456, 000-12-3456 and 912-34-5678 are never issued.",
    "Page 12 of 40, chapter 7.",
])
def test_plain_numbers_are_not_personal_data(text):
    assert pii.find(text) == []
    assert pii.redact(text) == text


def test_one_message_with_several_kinds():
    text = "Email me at sam@example.com or call 555-123-4567; I live at 42 Maple Street."
    assert [k for k, _, _ in pii.find(text)] == ["email", "phone", "street_address"]
    assert pii.redact(text) == "Email me at [EMAIL] or call [PHONE]; I live at [ADDRESS]."


def test_kinds_limit_what_is_found():
    text = "Email me at sam@example.com or call 555-123-4567."
    assert pii.redact(text, kinds=["phone"]) == "Email me at sam@example.com or call [PHONE]."
    with pytest.raises(ValueError, match="unknown PII kinds"):
        pii.find(text, kinds=["passport"])
