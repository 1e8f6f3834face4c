"""Personal data in conversation text: find it, replace it with a placeholder, or reject for it.

A training set that repeats a real person's email, phone number or card number teaches the model
to produce it. The detector is regular expressions with validation where a check exists (Luhn
for card numbers, octet ranges for IPv4, :mod:`ipaddress` for IPv6, reserved SSN areas), tuned to
keep plain numbers (years, counts, dates, versions) out. It is a heuristic: names, and addresses
written without a house number and a street suffix, are not found.

:func:`find` is the one entry point; a model-based detector (e.g. Microsoft Presidio, as an
optional extra) would be another function returning the same ``(kind, start, end)`` spans,
chosen in :func:`find`.
"""

from __future__ import annotations

import ipaddress
import re

KINDS = ("email", "phone", "credit_card", "ip", "street_address", "ssn")
ACTIONS = ("redact", "reject", "off")

PLACEHOLDERS = {
    "email": "[EMAIL]",
    "phone": "[PHONE]",
    "credit_card": "[CREDIT_CARD]",
    "ip": "[IP]",
    "street_address": "[ADDRESS]",
    "ssn": "[SSN]",
}

DESCRIPTIONS = {
    "email": "an email address",
    "phone": "a phone number",
    "credit_card": "a credit card number",
    "ip": "an IP address",
    "street_address": "a street address",
    "ssn": "a social security number",
}

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}\b")

_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
"""13 to 19 digits, optionally grouped by spaces or dashes; a candidate until Luhn agrees."""

_SSN = re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])")

_PHONE_US = re.compile(r"(?<![\w+-])(?:1[-. ])?(?:\(\d{3}\)\s?|\d{3}[-. ])\d{3}[-.]\d{4}(?![\w-])")
"""North American: (555) 123-4567, 555-123-4567, 555.123.4567, 1-800-555-0199; the last
separator must be a dash or dot so that grouped counts ("200 300 4000") are not phones."""

_PHONE_INTL = re.compile(r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}(?![\w])")
"""E.164-like, with a leading plus: +44 20 7946 0958, +1-202-555-0143, +49 (30) 123456."""

_IPV4 = re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?!\.?\d)")

_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")

_STREET_SUFFIX = (
    r"Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Place|Pl|Way|Terrace|Ter"
    r"|Parkway|Pkwy|Circle|Cir|Highway|Hwy|Square|Sq|Crescent|Close|Row"
)
_STREET = re.compile(
    r"\b\d{1,6}[A-Za-z]?\s+"                                    # house number (221B)
    r"(?:(?:[NSEW]\.?|North|South|East|West)\s+)?"              # a leading direction
    r"(?:(?:[A-Z][A-Za-z'-]*|\d+(?:st|nd|rd|th))\s+){1,4}"      # capitalized name words or 5th
    rf"(?:{_STREET_SUFFIX})\b"
    r"(?:\s+(?:NW|NE|SW|SE|N|S|E|W)\b)?"
)
"""House number, capitalized street name, suffix: "42 Maple Street", "1600 Pennsylvania Ave NW".
Lower-case names are left out on purpose: "walked 3 miles down the road" is not an address."""

_PRIORITY = ("email", "credit_card", "ssn", "ip", "phone", "street_address")
"""Where spans overlap, the kind earlier here wins (a card number also looks like digits of a phone)."""


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum every payment card number satisfies (and 9 in 10 random numbers fail)."""
    if not digits.isdigit() or not 13 <= len(digits) <= 19 or len(set(digits)) == 1:
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _phone_digits_ok(match: str) -> bool:
    digits = re.sub(r"\D", "", match)
    return 8 <= len(digits) <= 15


def _ipv6_ok(match: str) -> bool:
    if match.count(":") < 2 or not re.search(r"[0-9A-Fa-f]", match):
        return False
    try:
        ipaddress.IPv6Address(match)
    except ValueError:
        return False
    return True


def _regex_spans(text: str) -> dict[str, list[tuple[int, int]]]:
    spans: dict[str, list[tuple[int, int]]] = {kind: [] for kind in KINDS}
    spans["email"] = [m.span() for m in _EMAIL.finditer(text)]
    spans["credit_card"] = [m.span() for m in _CARD.finditer(text) if luhn_valid(re.sub(r"\D", "", m.group()))]
    spans["ssn"] = [m.span() for m in _SSN.finditer(text)]
    spans["phone"] = [m.span() for m in _PHONE_US.finditer(text)]
    spans["phone"] += [m.span() for m in _PHONE_INTL.finditer(text) if _phone_digits_ok(m.group())]
    spans["ip"] = [m.span() for m in _IPV4.finditer(text)]
    spans["ip"] += [m.span() for m in _IPV6.finditer(text) if _ipv6_ok(m.group())]
    spans["street_address"] = [m.span() for m in _STREET.finditer(text)]
    return spans


def find(text: str, kinds: tuple[str, ...] | list[str] = KINDS) -> list[tuple[str, int, int]]:
    """Every piece of personal data of ``kinds`` in ``text``: ``(kind, start, end)`` in text order,
    no two overlapping."""
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown PII kinds {sorted(unknown)} (known: {', '.join(KINDS)})")
    found = _regex_spans(text)
    taken: list[tuple[str, int, int]] = []
    for kind in _PRIORITY:
        if kind not in kinds:
            continue
        for start, end in sorted(set(found[kind])):
            if all(end <= s or start >= e for _, s, e in taken):
                taken.append((kind, start, end))
    return sorted(taken, key=lambda span: span[1])


def redact(text: str, kinds: tuple[str, ...] | list[str] = KINDS) -> str:
    """``text`` with each piece of personal data of ``kinds`` replaced by its placeholder (``[EMAIL]``...)."""
    out = []
    last = 0
    for kind, start, end in find(text, kinds):
        out.append(text[last:start])
        out.append(PLACEHOLDERS[kind])
        last = end
    out.append(text[last:])
    return "".join(out)
