"""trainset.rating: one rating vocabulary for every booru scheme."""

from __future__ import annotations

import pytest

from trainset.rating import RATINGS, SCHEMES, RatingError, normalize_rating


@pytest.mark.parametrize(
    ("scheme", "expected"),
    [
        ("danbooru", "sensitive"),
        ("gelbooru", "general"),
        ("moebooru", "general"),
        ("safebooru", "general"),
    ],
)
def test_bare_s_depends_on_scheme(scheme, expected):
    assert normalize_rating("s", scheme) == expected
    assert normalize_rating("S", scheme) == expected
    assert normalize_rating("  s  ", scheme) == expected


def test_default_scheme_is_danbooru():
    assert normalize_rating("s") == "sensitive"


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("general", "general"),
        ("g", "general"),
        ("safe", "general"),
        ("sfw", "general"),
        ("sensitive", "sensitive"),
        ("questionable", "questionable"),
        ("q", "questionable"),
        ("explicit", "explicit"),
        ("e", "explicit"),
        ("nsfw", "explicit"),
        ("Explicit", "explicit"),
        ("GENERAL", "general"),
        (" Questionable\n", "questionable"),
        ("\tSafe ", "general"),
    ],
)
def test_full_words_and_letters_are_scheme_independent(raw, expected, scheme):
    assert normalize_rating(raw, scheme) == expected


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("raw", [None, "", "   ", "unknown", "UNKNOWN", "none", "None", "?"])
def test_unknown_and_missing(raw, scheme):
    assert normalize_rating(raw, scheme) == "unknown"


def test_every_result_is_in_the_enum():
    raws = [None, "s", "g", "q", "e", "safe", "sensitive", "nsfw", "sfw", "?"]
    for scheme in SCHEMES:
        for raw in raws:
            assert normalize_rating(raw, scheme) in RATINGS


@pytest.mark.parametrize("raw", ["x", "r18", "safe-ish", "ss", "explicit!", "general sensitive", "0", 3, 1.5, True])
def test_bad_values_raise_naming_the_value(raw):
    with pytest.raises(RatingError) as info:
        normalize_rating(raw, "danbooru")
    assert repr(raw) in str(info.value)
    assert "danbooru" in str(info.value)


def test_bad_value_error_names_the_scheme_used():
    with pytest.raises(RatingError, match="gelbooru"):
        normalize_rating("weird", "gelbooru")


def test_rating_error_is_a_value_error():
    assert issubclass(RatingError, ValueError)


@pytest.mark.parametrize("scheme", ["e621", "", "Danbooru", None])
def test_unknown_scheme_raises(scheme):
    with pytest.raises(RatingError, match="unknown rating scheme"):
        normalize_rating("g", scheme)


def test_unknown_scheme_checked_even_for_none_rating():
    with pytest.raises(RatingError, match="e621"):
        normalize_rating(None, "e621")


def test_constants():
    assert RATINGS == ("general", "sensitive", "questionable", "explicit", "unknown")
    assert set(SCHEMES) == {"danbooru", "gelbooru", "moebooru", "safebooru"}
