"""Personal data in conversation text: find it, replace it with a placeholder, or reject for it.

A training set that repeats a real person's email, phone number or card number teaches the model
to produce it. The detector is regular expressions with validation where a check exists (Luhn
for card numbers, octet ranges for IPv4, :mod:`ipaddress` for IPv6, reserved SSN areas), tuned to
keep plain numbers (years, counts, dates, versions) out. It is a heuristic: names, and addresses
written without a house number and a street suffix, are not found.

:func:`find` is the one entry point whatever finds the data; a :class:`Detector` picks the
backend. ``presidio`` (the optional Microsoft Presidio analyzer, with a spaCy pipeline) replaces
the regexes for the kinds it maps (:data:`PRESIDIO_KINDS`); its other entities (PERSON, IBAN_CODE,
URL...) become kinds of their own, named in lower case, with placeholders like ``[PERSON]``.
Nothing is downloaded: the default ``blank`` pipeline has no NER model, so it serves Presidio's
pattern recognizers only; PERSON and LOCATION need an installed spaCy NER pipeline. trainset's
own checks still apply to what Presidio reports (Luhn for cards, never-issued SSN areas), and
street addresses, which Presidio has no recognizer for, still come from the regex.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

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
"""Where spans overlap, the kind earlier here wins (a card number also looks like digits of a phone);
Presidio's other kinds come after these, the higher score first (a URL inside an email loses)."""

BACKENDS = ("regex", "presidio")

PRESIDIO_KINDS = {
    "EMAIL_ADDRESS": "email",
    "PHONE_NUMBER": "phone",
    "CREDIT_CARD": "credit_card",
    "IP_ADDRESS": "ip",
    "US_SSN": "ssn",
}
"""Presidio entity type -> trainset kind; any other entity type is the kind ``entity.lower()``."""

REGEX_ONLY_KINDS = ("street_address",)
"""Kinds Presidio has no recognizer for: the presidio backend still finds them with the regex."""

_EXTRA_DESCRIPTIONS = {
    "person": "a person's name",
    "location": "a location",
    "iban_code": "an IBAN",
    "url": "a URL",
    "date_time": "a date or time",
    "nrp": "a nationality, religious or political group",
    "organization": "an organization name",
}

_LEMMA_COMPONENT = "trainset_pii_lower_lemmas"


@dataclass(frozen=True)
class Detector:
    """Which backend :func:`find` uses, and Presidio's settings; hashable, so analyses are cached per detector."""

    backend: str = "regex"
    model: str = "blank"
    entities: tuple[str, ...] = tuple(PRESIDIO_KINDS)
    score_threshold: float = 0.5

    @property
    def kinds(self) -> tuple[str, ...]:
        """Every kind this detector can find, trainset's own first."""
        if self.backend == "regex":
            return KINDS
        found = {entity_kind(e) for e in self.entities} | set(REGEX_ONLY_KINDS)
        return tuple(k for k in KINDS if k in found) + tuple(entity_kind(e) for e in self.entities if entity_kind(e) not in KINDS)


REGEX = Detector()


def entity_kind(entity: str) -> str:
    """The trainset kind of a Presidio entity type."""
    return PRESIDIO_KINDS.get(entity, entity.lower())


def placeholder(kind: str) -> str:
    """What :func:`redact` puts in place of personal data of ``kind`` (``[EMAIL]``, ``[PERSON]``...)."""
    return PLACEHOLDERS.get(kind) or f"[{kind.upper()}]"


def describe(kind: str) -> str:
    """``kind`` in words, for reasons and flags."""
    return DESCRIPTIONS.get(kind) or _EXTRA_DESCRIPTIONS.get(kind) or f"personal data of type {kind.upper()}"


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


def _ssn_issuable(digits: str) -> bool:
    """Area 000, 666 and 900-999, group 00 and serial 0000 are never issued (as in the regex)."""
    return (len(digits) == 9 and digits[:3] not in ("000", "666") and digits[0] != "9"
            and digits[3:5] != "00" and digits[5:] != "0000")


def _candidates(text: str, kinds, detector: Detector) -> list[tuple[str, int, int, float]]:
    """``(kind, start, end, score)`` from the detector's backend, overlaps not yet resolved."""
    regex_kinds = set(kinds) if detector.backend == "regex" else set(kinds) & set(REGEX_ONLY_KINDS)
    out = [(kind, start, end, 1.0) for kind, spans in _regex_spans(text).items() if kind in regex_kinds for start, end in spans]
    if detector.backend == "presidio":
        out += [span for span in _presidio_spans(text, detector) if span[0] in kinds]
    return out


def find(text: str, kinds: tuple[str, ...] | list[str] | None = None, detector: Detector = REGEX) -> list[tuple[str, int, int]]:
    """Every piece of personal data of ``kinds`` (default: all the detector finds) in ``text``:
    ``(kind, start, end)`` in text order, no two overlapping."""
    kinds = detector.kinds if kinds is None else kinds
    unknown = set(kinds) - set(detector.kinds)
    if unknown:
        raise ValueError(f"unknown PII kinds {sorted(unknown)} for the {detector.backend} backend (known: {', '.join(detector.kinds)})")
    rank = {kind: i for i, kind in enumerate(_PRIORITY)}
    found = sorted(set(_candidates(text, kinds, detector)), key=lambda c: (rank.get(c[0], len(rank)), -c[3], c[1], c[2]))
    taken: list[tuple[str, int, int]] = []
    for kind, start, end, _ in found:
        if all(end <= s or start >= e for _, s, e in taken):
            taken.append((kind, start, end))
    return sorted(taken, key=lambda span: span[1])


def redact(text: str, kinds: tuple[str, ...] | list[str] | None = None, detector: Detector = REGEX) -> str:
    """``text`` with each piece of personal data of ``kinds`` replaced by its placeholder (``[EMAIL]``...)."""
    out = []
    last = 0
    for kind, start, end in find(text, kinds, detector):
        out.append(text[last:start])
        out.append(placeholder(kind))
        last = end
    out.append(text[last:])
    return "".join(out)


# --------------------------------------------------------------------------- presidio


def detector(params: dict | None, where: str = "quality.pii") -> Detector:
    """The detector of the pii params (``backend``, ``presidio: {model, entities, score_threshold}``),
    checked now, so that a missing package or model fails before any conversation is read."""
    params = params or {}
    backend = params.get("backend", "regex")
    if backend not in BACKENDS:
        raise ValueError(f"{where}.backend: {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "regex":
        return REGEX
    p = params.get("presidio") or {}
    model = p.get("model", "blank")
    if not isinstance(model, str) or not model:
        raise ValueError(f"{where}.presidio.model: expected 'blank', an installed spaCy package or a path, got {model!r}")
    entities = p.get("entities", list(PRESIDIO_KINDS))
    if isinstance(entities, str) or not entities or not all(isinstance(e, str) and e for e in entities):
        raise ValueError(f"{where}.presidio.entities: expected a non-empty list of Presidio entity types, got {entities!r}")
    try:
        threshold = float(p.get("score_threshold", 0.5))
    except (TypeError, ValueError):
        raise ValueError(f"{where}.presidio.score_threshold: expected a number, got {p.get('score_threshold')!r}") from None
    if not 0 <= threshold <= 1:
        raise ValueError(f"{where}.presidio.score_threshold: {threshold} is not between 0 and 1")
    out = Detector("presidio", model, tuple(dict.fromkeys(entities)), threshold)
    _check_presidio(out, where)
    return out


def _check_presidio(detector: Detector, where: str) -> None:
    from trainset.embeddings import require

    require("presidio-analyzer", "the presidio PII backend")
    require("spacy", "the presidio PII backend")
    if detector.model != "blank":
        import spacy.util

        if not (spacy.util.is_package(detector.model) or Path(detector.model).exists()):
            raise ValueError(
                f"{where}.presidio.model: the spaCy pipeline {detector.model!r} is neither an installed package nor a path "
                "(nothing is downloaded); install one from spaCy's release wheels, e.g. pip install "
                "https://github.com/explosion/spacy-models/releases/download/en_core_web_sm-3.8.0/en_core_web_sm-3.8.0-py3-none-any.whl, "
                "give the path of a saved pipeline, or use 'blank' for the pattern entities only"
            )
    analyzer = _analyzer(detector.model)
    supported = set(analyzer.get_supported_entities(language="en"))
    unknown = [e for e in detector.entities if e not in supported]
    if unknown:
        raise ValueError(f"{where}.presidio.entities: Presidio does not know {unknown} (known: {', '.join(sorted(supported))})")
    if detector.model == "blank":
        patterned = {e for r in analyzer.registry.recognizers if type(r).__name__ != "SpacyRecognizer" for e in r.supported_entities}
        ner_only = [e for e in detector.entities if e not in patterned]
        if ner_only:
            raise ValueError(f"{where}.presidio.entities: {ner_only} come only from a spaCy NER model, which the blank pipeline "
                             "lacks; set presidio.model to an installed one (e.g. en_core_web_sm) or leave them out")


@functools.lru_cache(maxsize=4)
def _analyzer(model: str):
    """Presidio's analyzer on the spaCy pipeline ``model`` (``blank``: tokens only), built once per process."""
    import spacy
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import SpacyNlpEngine

    with tempfile.TemporaryDirectory(prefix="trainset-spacy-") as tmp:
        path = model
        if model == "blank":
            nlp = spacy.blank("en")
            nlp.add_pipe(_lemma_component())
            nlp.to_disk(tmp)
            path = tmp
        engine = SpacyNlpEngine(models=[{"lang_code": "en", "model_name": path}])
        engine.load()  # reads the pipeline into memory; the temporary copy can go
    analyzer = AnalyzerEngine(nlp_engine=engine, supported_languages=["en"])
    analyzer.registry.remove_recognizer("EmailRecognizer")
    analyzer.registry.add_recognizer(_offline_email_recognizer())
    return analyzer


def _lemma_component() -> str:
    """A blank pipeline has no lemmas, and Presidio reads context words ("call", "card", "ssn")
    from lemmas: the lower-cased word stands in, so context still raises scores."""
    from spacy.language import Language

    if not Language.has_factory(_LEMMA_COMPONENT):
        def lower_lemmas(doc):
            for token in doc:
                token.lemma_ = token.lower_
            return doc

        Language.component(_LEMMA_COMPONENT, func=lower_lemmas)
    return _LEMMA_COMPONENT


def _offline_email_recognizer():
    """Presidio's email recognizer checks the domain with tldextract, which fetches the public
    suffix list over the network; this one reads the snapshot tldextract ships."""
    import tldextract
    from presidio_analyzer.predefined_recognizers import EmailRecognizer

    extract = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)

    class OfflineEmailRecognizer(EmailRecognizer):
        def validate_result(self, pattern_text: str):
            return extract(pattern_text).fqdn != ""

    return OfflineEmailRecognizer()


@functools.lru_cache(maxsize=8192)
def _presidio_spans(text: str, detector: Detector) -> tuple[tuple[str, int, int, float], ...]:
    """Presidio's results as ``(kind, start, end, score)``, with trainset's checks on cards and SSNs;
    cached, since the gate asks about the same message more than once."""
    results = _analyzer(detector.model).analyze(
        text=text, language="en", entities=list(detector.entities), score_threshold=detector.score_threshold
    )
    out = []
    for r in results:
        kind = entity_kind(r.entity_type)
        digits = re.sub(r"\D", "", text[r.start:r.end])
        if kind == "credit_card" and not luhn_valid(digits):
            continue
        if kind == "ssn" and not _ssn_issuable(digits):
            continue
        out.append((kind, r.start, r.end, float(r.score)))
    return tuple(out)
