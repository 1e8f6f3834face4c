"""Tag dictionary: CSV loading, normalization, alias resolution, the shipped default dictionary."""

from __future__ import annotations

import csv
from importlib import resources
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from trainset.tags import TagDictionary, normalize

# Rows in the real Danbooru tag-CSV format (no header; quoted alias list; empty alias field;
# '/'-shorthand aliases; emoticon tags; an alias that is also another row's name).
REAL_ROWS = """\
1girl,0,6008644,"1girls,sole_female"
highres,5,5256195,"high_res,high_resolution,hires"
long_hair,0,4350743,"/lh,longhair"
smile,0,2873890,":),:},smiling"
open_mouth,0,2365905,mouth_open
skirt,0,1557883,
:3,0,116830,
^_^,0,110141,^^
>_<,0,64724,><
hatsune_miku,4,100000,"miku,hatsune_miku_(cosplay)"
vocaloid,3,90000,
some_artist,1,10,
tail,0,50000,"tails,animal_tail"
multiple_tails,0,9000,"tails,many_tails,smile"
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def real(tmp_path: Path) -> TagDictionary:
    return TagDictionary.load([write(tmp_path, "danbooru.csv", REAL_ROWS)], include_default=False)


def policy() -> dict[str, list[str]]:
    text = resources.files("trainset").joinpath("data", "tags", "policy.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


@pytest.fixture(scope="module")
def default() -> TagDictionary:
    return TagDictionary.load()


# -- normalize -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Long Hair", "long_hair"),
        ("  long_hair\t", "long_hair"),
        ("LONG__HAIR", "long_hair"),
        ("long  _ hair", "long_hair"),
        ("ＬＯＮＧ　ＨＡＩＲ", "long_hair"),  # full-width letters and ideographic space (NFKC)
        ("de-aged", "de-aged"),
        (":)", ":)"),
        ("^_^", "^_^"),
        (">_<", ">_<"),
        (":3", ":3"),
        (":D", ":d"),
        ("/lh", "/lh"),
        ("hatsune_miku_(cosplay)", "hatsune_miku_(cosplay)"),
        ("", ""),
        ("   ", ""),
    ],
)
def test_normalize(raw: str, expected: str) -> None:
    assert normalize(raw) == expected


@given(st.text())
def test_normalize_is_idempotent(text: str) -> None:
    once = normalize(text)
    assert normalize(once) == once
    assert " " not in once and "__" not in once


# -- loading the real format -----------------------------------------------------------


def test_real_rows_load(real: TagDictionary) -> None:
    assert len(real) == 14
    assert real.canonical("1girls") == "1girl"
    assert real.canonical("sole_female") == "1girl"
    assert real.aliases_of("1girl") == {"1girls", "sole_female"}
    assert real.aliases_of("skirt") == set()  # empty alias field
    assert real.canonical("mouth_open") == "open_mouth"  # unquoted single alias


def test_slash_aliases_are_kept(real: TagDictionary) -> None:
    assert real.canonical("/lh") == "long_hair"
    assert "/lh" in real.aliases_of("long_hair")
    assert "/lh" in real


def test_emoticons_survive(real: TagDictionary) -> None:
    for tag in (":3", "^_^", ">_<"):
        assert real.canonical(tag) == tag
        assert real.category(tag) == "general"
    assert real.canonical(":)") == "smile"
    assert real.canonical(":}") == "smile"
    assert real.canonical("^^") == "^_^"
    assert real.canonical("><") == ">_<"
    assert real.canonical(" ^_^ ") == "^_^"


def test_alias_does_not_hijack_a_canonical_name(real: TagDictionary) -> None:
    # multiple_tails lists "smile" as an alias; smile stays its own canonical name.
    assert real.canonical("smile") == "smile"
    assert real.canonical("SMILE") == "smile"
    assert "smile" not in real.aliases_of("multiple_tails")
    assert real.canonical("many_tails") == "multiple_tails"


def test_alias_claimed_twice_goes_to_the_later_row(real: TagDictionary) -> None:
    assert real.canonical("tails") == "multiple_tails"
    assert "tails" in real.aliases_of("multiple_tails")
    assert "tails" not in real.aliases_of("tail")
    assert real.aliases_of("tail") == {"animal_tail"}


def test_bom_crlf_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "crlf.csv"
    path.write_bytes(b"\xef\xbb\xbfnude,0,10,naked\r\n\r\nsex,0,5,\"fuck,fucking\"\r\n")
    tags = TagDictionary.load([path], include_default=False)
    assert tags.canonical("Naked") == "nude"
    assert tags.canonical("fucking") == "sex"
    assert len(tags) == 2


def test_three_column_rows_and_empty_post_count(tmp_path: Path) -> None:
    path = write(tmp_path, "short.csv", "solo,0,5000\nsome_meta,5,\n")
    tags = TagDictionary.load([path], include_default=False)
    assert tags.category("solo") == "general"
    assert tags.category("some_meta") == "meta"
    assert tags.aliases_of("solo") == set()


def test_names_and_aliases_in_the_file_are_normalized(tmp_path: Path) -> None:
    path = write(tmp_path, "messy.csv", 'Long Hair,0,1," LongHair , very  long_hair,,Long_Hair"\n')
    tags = TagDictionary.load([path], include_default=False)
    assert tags.canonical("long_hair") == "long_hair"
    assert tags.aliases_of("long_hair") == {"longhair", "very_long_hair"}


def test_path_may_be_str_or_a_single_path(tmp_path: Path) -> None:
    path = write(tmp_path, "one.csv", "nude,0,1,naked\n")
    assert TagDictionary.load([str(path)], include_default=False).canonical("naked") == "nude"
    assert TagDictionary.load(path, include_default=False).canonical("naked") == "nude"  # type: ignore[arg-type]


# -- canonicalization ------------------------------------------------------------------


@pytest.mark.parametrize(
    "variant",
    ["long_hair", "Long_Hair", "LONG HAIR", "long hair", "  long   hair ", "long__hair", "LongHair", "/LH", "long\thair"],
)
def test_canonical_variants(real: TagDictionary, variant: str) -> None:
    assert real.canonical(variant) == "long_hair"


def test_unknown_tags_come_back_normalized(real: TagDictionary) -> None:
    assert real.canonical("Not A Real  Tag") == "not_a_real_tag"
    assert real.category("Not A Real Tag") is None
    assert real.aliases_of("not_a_real_tag") == set()
    assert "not_a_real_tag" not in real


def test_canonicalize_keeps_order_and_drops_duplicates(real: TagDictionary) -> None:
    tags = ["Smile", "long hair", ":)", "/lh", "unknown tag", "smiling", "", "  ", "1girls", "Unknown_Tag"]
    assert real.canonicalize(tags) == ["smile", "long_hair", "unknown_tag", "1girl"]
    assert real.canonicalize(iter(["a", "A"])) == ["a"]
    assert real.canonicalize([]) == []
    with pytest.raises(TypeError):
        real.canonicalize("long hair")


def test_category_lookup(real: TagDictionary) -> None:
    assert real.category("1girl") == "general"
    assert real.category("hires") == "meta"  # through an alias
    assert real.category("Hatsune Miku") == "character"
    assert real.category("miku") == "character"
    assert real.category("vocaloid") == "copyright"
    assert real.category("some_artist") == "artist"
    assert real.category("nothing_here") is None


def test_aliases_of_accepts_an_alias_or_a_variant(real: TagDictionary) -> None:
    expected = {"miku", "hatsune_miku_(cosplay)"}
    assert real.aliases_of("hatsune_miku") == expected
    assert real.aliases_of("Hatsune Miku") == expected
    assert real.aliases_of("miku") == expected
    result = real.aliases_of("hatsune_miku")
    result.add("mutated")
    assert "mutated" not in real.aliases_of("hatsune_miku")


# -- later files override earlier ------------------------------------------------------


def test_later_files_override_earlier(tmp_path: Path) -> None:
    first = write(tmp_path, "first.csv", 'cum,0,1,"cumshot,semen"\nejaculation,0,1,\nfoo,0,1,"bar"\n')
    second = write(tmp_path, "second.csv", 'ejaculation,0,1,"cumshot,cum_shot"\nfoo,5,1,baz\n')
    tags = TagDictionary.load([first, second], include_default=False)
    assert tags.canonical("cumshot") == "ejaculation"  # alias moved by the later file
    assert tags.aliases_of("cum") == {"semen"}
    assert tags.aliases_of("ejaculation") == {"cumshot", "cum_shot"}
    assert tags.category("foo") == "meta"  # category replaced
    assert tags.aliases_of("foo") == {"bar", "baz"}  # aliases accumulate
    reverse = TagDictionary.load([second, first], include_default=False)
    assert reverse.canonical("cumshot") == "cum"
    assert reverse.category("foo") == "general"


def test_user_file_overrides_the_default(tmp_path: Path, default: TagDictionary) -> None:
    assert default.canonical("cumshot") == "ejaculation"
    extra = write(tmp_path, "extra.csv", "cum,0,1,cumshot\nmy_tag,0,1,my_alias\n")
    tags = TagDictionary.load([extra])
    assert tags.canonical("cumshot") == "cum"
    assert tags.canonical("my alias") == "my_tag"
    assert tags.canonical("naked") == "nude"  # the default is still there
    without = TagDictionary.load([extra], include_default=False)
    assert without.canonical("naked") == "naked"
    assert len(TagDictionary.load([], include_default=False)) == 0


def test_a_later_alias_never_takes_over_an_earlier_name(tmp_path: Path) -> None:
    first = write(tmp_path, "first.csv", "nude,0,1,naked\n")
    second = write(tmp_path, "second.csv", "completely_nude,0,1,nude\n")
    tags = TagDictionary.load([first, second], include_default=False)
    assert tags.canonical("nude") == "nude"
    assert tags.canonical("naked") == "nude"


# -- digest ----------------------------------------------------------------------------


def test_digest_follows_content(tmp_path: Path) -> None:
    a = write(tmp_path, "a.csv", 'nude,0,1,"naked,nudity"\n')
    same = write(tmp_path, "same.csv", 'Nude,0,999,"nudity, naked"\n\n')  # same content, other spelling
    other = write(tmp_path, "other.csv", 'nude,0,1,"naked"\n')
    digest = TagDictionary.load([a], include_default=False).digest
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert TagDictionary.load([a], include_default=False).digest == digest
    assert TagDictionary.load([same], include_default=False).digest == digest
    assert TagDictionary.load([other], include_default=False).digest != digest
    assert TagDictionary.load([a]).digest != digest  # the default dictionary is part of it
    recategorized = write(tmp_path, "meta.csv", 'nude,5,1,"naked,nudity"\n')
    assert TagDictionary.load([recategorized], include_default=False).digest != digest


# -- bad rows --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("solo,0,1,\nbroken,0\n", 2, "columns"),
        ("solo,0,1,\nbroken,0,1,a,b\n", 2, "columns"),
        ("solo,0,1,\n\nsolo2,0,1,\nbroken\n", 4, "columns"),
        ("solo,general,1,\n", 1, "not an integer"),
        ("solo,0,1,\nx,,1,\n", 2, "not an integer"),
        ("solo,0,1,\nx,1.5,1,\n", 2, "not an integer"),
        ("solo,2,1,\n", 1, "unknown category"),
        ("solo,0,many,\n", 1, "post count"),
        ("solo,0,1,\n  ,0,1,\n", 2, "empty tag name"),
        ('a,0,1,"x,\ny"\nb,0,1,\nc,zero,1,\n', 4, "not an integer"),  # multi-line quoted field
        ('a,0,1,"x"y\n', 1, "malformed"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = write(tmp_path, "bad.csv", text)
    with pytest.raises(ValueError, match=message) as excinfo:
        TagDictionary.load([path], include_default=False)
    assert f"{path}:{line}:" in str(excinfo.value)


def test_bad_row_in_a_later_file_names_that_file(tmp_path: Path) -> None:
    good = write(tmp_path, "good.csv", "solo,0,1,\n")
    bad = write(tmp_path, "bad.csv", "solo,0,1,\nsolo2,0,1,\nx,y,1,\n")
    with pytest.raises(ValueError, match=rf"^{bad}:3: "):
        TagDictionary.load([good, bad])


def test_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        TagDictionary.load([tmp_path / "missing.csv"])


# -- the shipped default dictionary and policy lists ------------------------------------


def test_default_dictionary_ships_in_the_package(default: TagDictionary) -> None:
    data = resources.files("trainset").joinpath("data", "tags")
    assert data.joinpath("default.csv").is_file()
    assert data.joinpath("policy.yaml").is_file()
    assert len(default) > 0
    assert TagDictionary.load().digest == default.digest


def test_policy_tags_are_canonical_in_the_default(default: TagDictionary) -> None:
    lists = policy()
    assert set(lists) >= {"minor_tags", "explicit_tags"}
    for key in ("minor_tags", "explicit_tags"):
        tags = lists[key]
        assert tags and len(tags) == len(set(tags)), key
        for tag in tags:
            assert normalize(tag) == tag, tag
            assert default.canonical(tag) == tag, tag
            assert default.category(tag) == "general", tag
    assert not set(lists["minor_tags"]) & set(lists["explicit_tags"])


def test_policy_lists_cover_the_required_tags() -> None:
    lists = policy()
    assert set(lists["minor_tags"]) >= {
        "loli", "shota", "child", "toddler", "aged_down", "baby", "oppai_loli",
        "kindergarten", "female_child", "male_child", "young",
    }  # fmt: skip
    assert set(lists["explicit_tags"]) >= {
        "sex", "nude", "completely_nude", "nipples", "pussy", "penis", "testicles", "anus", "cum",
        "vaginal", "anal", "oral", "fellatio", "cunnilingus", "paizuri", "handjob", "masturbation",
        "pussy_juice", "erection", "sex_toy", "dildo", "vibrator", "rape", "bondage", "groping",
        "ejaculation", "after_sex", "spread_pussy", "cameltoe", "topless", "bottomless",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("lolicon", "loli"), ("Rori", "loli"), ("shotacon", "shota"), ("children", "child"),
        ("kids", "child"), ("kid", "child"), ("de-aged", "aged_down"), ("younger", "aged_down"),
        ("infant", "baby"), ("preschool", "kindergarten"), ("little girl", "female_child"),
        ("Little_Boy", "male_child"),
        ("naked", "nude"), ("sexual intercourse", "sex"), ("blowjob", "fellatio"),
        ("cumshot", "ejaculation"), ("semen", "cum"), ("vagina", "pussy"), ("dick", "penis"),
        ("cock", "penis"), ("boobjob", "paizuri"), ("titjob", "paizuri"), ("titfuck", "paizuri"),
        ("completely naked", "completely_nude"), ("camel toe", "cameltoe"),
        ("high res", "highres"), ("/tr", "translation_request"),
    ],
)  # fmt: skip
def test_default_aliases(default: TagDictionary, alias: str, canonical: str) -> None:
    assert default.canonical(alias) == canonical


def test_default_meta_tags(default: TagDictionary) -> None:
    meta = [
        "highres", "absurdres", "lowres", "commentary", "commentary_request",
        "translated", "translation_request", "bad_id", "bad_pixiv_id",
    ]  # fmt: skip
    for tag in meta:
        assert default.canonical(tag) == tag
        assert default.category(tag) == "meta"


def test_rating_words_are_not_tags(default: TagDictionary) -> None:
    for word in ("nsfw", "sfw", "explicit", "questionable", "sensitive", "general", "safe", "rating:e"):
        assert word not in default
        assert default.category(word) is None


def test_no_default_alias_is_also_a_name() -> None:
    # An alias equal to another row's name would be silently ignored; the shipped file has none.
    text = resources.files("trainset").joinpath("data", "tags", "default.csv").read_text(encoding="utf-8")
    names, aliases = set(), set()
    for row in csv.reader(text.splitlines()):
        names.add(normalize(row[0]))
        aliases.update(normalize(a) for a in row[3].split(",") if a)
    assert not names & aliases


def _minor_forms() -> list[tuple[str, str]]:
    tags = TagDictionary.load()
    forms = []
    for minor in policy()["minor_tags"]:
        forms.append((minor, minor))
        forms.extend((alias, minor) for alias in sorted(tags.aliases_of(minor)))
    return forms


MINOR_FORMS = _minor_forms()


def test_every_minor_tag_has_aliases() -> None:
    by_tag: dict[str, int] = {}
    for form, minor in MINOR_FORMS:
        by_tag[minor] = by_tag.get(minor, 0) + (form != minor)
    assert all(count > 0 for count in by_tag.values()), by_tag


@st.composite
def spelled(draw: st.DrawFn, text: str) -> str:
    """``text`` with any mix of upper/lower case, underscores -> spaces, and surrounding whitespace."""
    out = []
    for char in text:
        if char == "_":
            out.append(draw(st.sampled_from(["_", " ", "  ", "__", " _ "])))
        elif char.isalpha():
            out.append(char.upper() if draw(st.booleans()) else char.lower())
        else:
            out.append(char)
    pad = st.text(alphabet=" \t\n\u3000\u00a0", max_size=3)
    return draw(pad) + "".join(out) + draw(pad)


@pytest.mark.parametrize(("form", "minor"), MINOR_FORMS)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_minor_tag_variants_canonicalize_to_the_minor_tag(
    default: TagDictionary, form: str, minor: str, data: st.DataObject
) -> None:
    variant = data.draw(spelled(form), label="variant")
    assert default.canonical(variant) == minor
    assert default.canonicalize(["solo", variant, minor]) == ["solo", minor]


def test_canonicalize_all_agrees_with_canonicalize_row_by_row(real: TagDictionary) -> None:
    lists = [
        [],
        ["Long Hair", "longhair", "long_hair", "smile"],  # three spellings of one tag
        ["smiling", ":)", "Smile"],
        ["  ", "", "skirt", "__"],  # blank tags vanish
        ["tails", "Tails", "tail", "many_tails"],
        ("hatsune miku", "MIKU", "vocaloid"),
        ["unknown Tag", "unknown_tag", "Unknown  Tag"],
        ["１ｇｉｒｌ", "1girl", "sole_female"],  # full-width digits normalize (NFKC)
    ]
    assert real.canonicalize_all(lists) == [real.canonicalize(tags) for tags in lists]
    assert real.canonicalize_all(iter(lists[:2])) == [real.canonicalize(tags) for tags in lists[:2]]


def test_canonicalize_all_refuses_a_bare_string(real: TagDictionary) -> None:
    with pytest.raises(TypeError, match="not strings"):
        real.canonicalize_all([["smile"], "smile"])
