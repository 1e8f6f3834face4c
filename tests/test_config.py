"""trainset.config: params.yaml parsing and source validation."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from trainset.config import (
    DEMO_LICENSE,
    DEMO_PATH,
    DEMO_SOURCE_NAME,
    ConfigError,
    Source,
    demo_source,
    load_params,
    sources_from_params,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def _entry(**over):
    entry = {"name": "art", "kind": "image_folder", "path": "/data/art", "license": "CC-BY-4.0"}
    entry.update(over)
    return {k: v for k, v in entry.items() if v is not _DROP}


_DROP = object()


# --- demo -------------------------------------------------------------------------------


def test_demo_true_puts_demo_first(tmp_path):
    params = {"demo": True, "sources": [_entry(name="a"), _entry(name="b")]}
    out = sources_from_params(params, tmp_path)
    assert [s.name for s in out] == ["demo", "a", "b"]
    demo = out[0]
    assert demo == demo_source(tmp_path)
    assert demo.kind == "image_folder"
    assert demo.path == tmp_path / DEMO_PATH
    assert demo.license == DEMO_LICENSE
    assert demo.built_by_workflow is True
    assert demo.repeats == 1 and demo.weight == 1.0 and demo.generated is False
    assert all(not s.built_by_workflow for s in out[1:])


def test_demo_false_drops_it(tmp_path):
    out = sources_from_params({"demo": False, "sources": [_entry()]}, tmp_path)
    assert [s.name for s in out] == ["art"]


def test_demo_missing_means_no_demo(tmp_path):
    assert sources_from_params({}, tmp_path) == []
    assert sources_from_params({"sources": None}, tmp_path) == []


def test_demo_alone(tmp_path):
    out = sources_from_params({"demo": True, "sources": []}, tmp_path)
    assert out == [demo_source(tmp_path)]


# --- user sources -----------------------------------------------------------------------


def test_user_source_defaults(tmp_path):
    (src,) = sources_from_params({"sources": [_entry()]}, tmp_path)
    assert src == Source(name="art", kind="image_folder", path=Path("/data/art"), license="CC-BY-4.0")
    assert src.generated is False
    assert src.weight == 1.0 and isinstance(src.weight, float)
    assert src.repeats == 1 and isinstance(src.repeats, int)
    assert src.rating_scheme == "danbooru"
    assert src.built_by_workflow is False


def test_user_source_all_fields(tmp_path):
    entry = _entry(generated=True, weight=2.5, repeats=3, rating_scheme="gelbooru", trigger_word=" artstyle ")
    (src,) = sources_from_params({"sources": [entry]}, tmp_path)
    assert src.generated is True
    assert src.weight == 2.5
    assert src.repeats == 3
    assert src.rating_scheme == "gelbooru"
    assert src.trigger_word == "artstyle"
    assert src.as_dict() == {
        "name": "art",
        "kind": "image_folder",
        "path": "/data/art",
        "license": "CC-BY-4.0",
        "generated": True,
        "weight": 2.5,
        "repeats": 3,
        "rating_scheme": "gelbooru",
        "trigger_word": "artstyle",
    }


def test_source_trigger_word_must_be_text(tmp_path):
    with pytest.raises(ConfigError, match="trigger_word must be text"):
        sources_from_params({"sources": [_entry(trigger_word=["a"])]}, tmp_path)


def test_numeric_strings_are_coerced(tmp_path):
    (src,) = sources_from_params({"sources": [_entry(weight="0.5", repeats="4")]}, tmp_path)
    assert src.weight == 0.5 and src.repeats == 4


@pytest.mark.parametrize("scheme", ["danbooru", "gelbooru", "moebooru", "safebooru"])
def test_every_known_scheme_is_accepted(tmp_path, scheme):
    (src,) = sources_from_params({"sources": [_entry(rating_scheme=scheme)]}, tmp_path)
    assert src.rating_scheme == scheme


def test_relative_path_resolved_against_root(tmp_path):
    (src,) = sources_from_params({"sources": [_entry(path="data/mine")]}, tmp_path)
    assert src.path == tmp_path / "data" / "mine"


def test_absolute_path_kept(tmp_path):
    other = tmp_path / "elsewhere"
    (src,) = sources_from_params({"sources": [_entry(path=str(other))]}, tmp_path / "root")
    assert src.path == other


def test_home_path_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (src,) = sources_from_params({"sources": [_entry(path="~/pics")]}, tmp_path / "root")
    assert src.path == tmp_path / "home" / "pics"


def test_default_root_is_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (src,) = sources_from_params({"sources": [_entry(path="rel")]})
    assert src.path == Path("rel")
    assert src.path.resolve() == (tmp_path / "rel").resolve()


def test_source_is_frozen():
    src = Source(name="a", kind="image_folder", path=Path("x"), license="L")
    with pytest.raises(AttributeError):
        src.name = "b"  # type: ignore[misc]


# --- errors -----------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["name", "kind", "path", "license"])
def test_missing_key(tmp_path, key):
    with pytest.raises(ConfigError, match=rf"sources\[0\]: missing {key}"):
        sources_from_params({"sources": [_entry(**{key: _DROP})]}, tmp_path)


@pytest.mark.parametrize("key", ["name", "kind", "path", "license"])
def test_empty_value_counts_as_missing(tmp_path, key):
    with pytest.raises(ConfigError, match=f"missing {key}"):
        sources_from_params({"sources": [_entry(**{key: ""})]}, tmp_path)


def test_missing_keys_all_listed_with_index(tmp_path):
    params = {"sources": [_entry(), {"name": "x"}]}
    with pytest.raises(ConfigError, match=r"sources\[1\]: missing kind, path, license"):
        sources_from_params(params, tmp_path)


def test_entry_not_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match=r"sources\[0\]: expected a mapping"):
        sources_from_params({"sources": ["just-a-name"]}, tmp_path)


def test_sources_not_a_list(tmp_path):
    with pytest.raises(ConfigError, match="'sources' must be a list"):
        sources_from_params({"sources": {"name": "art"}}, tmp_path)


def test_bad_kind(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown kind 'zip_file'.*image_folder") as info:
        sources_from_params({"sources": [_entry(kind="zip_file")]}, tmp_path)
    assert "'art'" in str(info.value)


def test_duplicate_names(tmp_path):
    params = {"sources": [_entry(name="b"), _entry(name="a"), _entry(name="b"), _entry(name="a")]}
    with pytest.raises(ConfigError, match="must be unique; repeated: a, b"):
        sources_from_params(params, tmp_path)


@pytest.mark.parametrize("demo", [True, False])
def test_reserved_demo_name(tmp_path, demo):
    with pytest.raises(ConfigError, match="reserved"):
        sources_from_params({"demo": demo, "sources": [_entry(name="demo")]}, tmp_path)


@pytest.mark.parametrize("name", ["has space", "-lead", "_lead", "a/b", "ü", "x:y"])
def test_bad_name_characters(tmp_path, name):
    with pytest.raises(ConfigError, match="name may hold only"):
        sources_from_params({"sources": [_entry(name=name)]}, tmp_path)


@pytest.mark.parametrize("name", ["a", "A1", "my_art", "set-2", "v1.0", "0start"])
def test_good_names(tmp_path, name):
    (src,) = sources_from_params({"sources": [_entry(name=name)]}, tmp_path)
    assert src.name == name


@pytest.mark.parametrize("weight", [0, -1, -0.5, 0.0])
def test_bad_weight_value(tmp_path, weight):
    with pytest.raises(ConfigError, match="weight must be > 0"):
        sources_from_params({"sources": [_entry(weight=weight)]}, tmp_path)


@pytest.mark.parametrize("weight", ["heavy", [1], None])
def test_bad_weight_type(tmp_path, weight):
    with pytest.raises(ConfigError, match="weight must be a number"):
        sources_from_params({"sources": [_entry(weight=weight)]}, tmp_path)


@pytest.mark.parametrize("repeats", [0, -3])
def test_bad_repeats_value(tmp_path, repeats):
    with pytest.raises(ConfigError, match="repeats >= 1"):
        sources_from_params({"sources": [_entry(repeats=repeats)]}, tmp_path)


@pytest.mark.parametrize("repeats", ["many", "2.5", None, {}])
def test_bad_repeats_type(tmp_path, repeats):
    with pytest.raises(ConfigError, match="repeats an integer"):
        sources_from_params({"sources": [_entry(repeats=repeats)]}, tmp_path)


@pytest.mark.parametrize("scheme", ["e621", "Danbooru", ""])
def test_bad_rating_scheme(tmp_path, scheme):
    with pytest.raises(ConfigError, match=f"unknown rating_scheme {scheme!r}"):
        sources_from_params({"sources": [_entry(rating_scheme=scheme)]}, tmp_path)


def test_config_error_is_value_error():
    assert issubclass(ConfigError, ValueError)


# --- load_params ------------------------------------------------------------------------


def test_load_params_reads_yaml(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"demo": False, "sources": [_entry()]}))
    params = load_params(path)
    assert params["demo"] is False
    assert [s.name for s in sources_from_params(params, tmp_path)] == ["art"]


def test_load_params_empty_file_is_empty_mapping(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("")
    assert load_params(path) == {}


def test_load_params_rejects_non_mapping(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_params(path)


def test_load_params_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_params(tmp_path / "nope.yaml")


# --- the repository's own params.yaml ---------------------------------------------------


def test_repo_params_yaml_yields_exactly_the_demo():
    path = REPO_ROOT / "params.yaml"
    assert path.is_file()
    params = load_params(path)
    out = sources_from_params(params, REPO_ROOT)
    assert out == [demo_source(REPO_ROOT)]
    assert out[0].name == DEMO_SOURCE_NAME
    assert out[0].path == REPO_ROOT / "data" / "raw" / "demo"


@pytest.mark.parametrize("weight", [float("nan"), float("inf"), ".nan", ".inf", "inf", "nan"])
def test_non_finite_weight_rejected(tmp_path, weight):
    if isinstance(weight, str) and weight.startswith("."):
        weight = yaml.safe_load(f"w: {weight}")["w"]  # what `weight: .nan` in params.yaml gives
    with pytest.raises(ConfigError, match="weight must be > 0"):
        sources_from_params({"sources": [_entry(weight=weight)]}, tmp_path)


@pytest.mark.parametrize("value,expected", [(True, True), (False, False), ("false", False), ("True", True)])
def test_generated_flag_reads_words_strictly(tmp_path, value, expected):
    entry = {"name": "x", "kind": "image_folder", "path": "p", "license": "l", "generated": value}
    assert sources_from_params({"sources": [entry]}, tmp_path)[0].generated is expected


@pytest.mark.parametrize("value", ["no", 1, "yes please"])
def test_generated_flag_rejects_non_booleans(tmp_path, value):
    entry = {"name": "x", "kind": "image_folder", "path": "p", "license": "l", "generated": value}
    with pytest.raises(ConfigError, match="generated"):
        sources_from_params({"sources": [entry]}, tmp_path)


@pytest.mark.parametrize("value", [2.5, "2.5", True])
def test_fractional_repeats_rejected(tmp_path, value):
    entry = {"name": "x", "kind": "image_folder", "path": "p", "license": "l", "repeats": value}
    with pytest.raises(ConfigError, match="repeats"):
        sources_from_params({"sources": [entry]}, tmp_path)


# --- booru sources ----------------------------------------------------------------------


def _booru(**over):
    entry = {"name": "dump", "kind": "booru", "path": "raw/dump/images", "metadata": "raw/dump/posts.jsonl",
             "site": "danbooru", "license": "see site"}
    entry.update(over)
    return {k: v for k, v in entry.items() if v is not _DROP}


def test_booru_source_parsed(tmp_path):
    (src,) = sources_from_params({"sources": [_booru(join="md5")]}, tmp_path)
    assert src.kind == "booru"
    assert src.path == tmp_path / "raw" / "dump" / "images"
    assert src.metadata == tmp_path / "raw" / "dump" / "posts.jsonl"
    assert src.site == "danbooru" and src.join == "md5"
    assert src.rating_scheme == "danbooru"
    assert src.as_dict() == {
        "name": "dump", "kind": "booru", "path": str(tmp_path / "raw" / "dump" / "images"), "license": "see site",
        "generated": False, "weight": 1.0, "repeats": 1, "rating_scheme": "danbooru", "trigger_word": "",
        "metadata": str(tmp_path / "raw" / "dump" / "posts.jsonl"), "site": "danbooru", "join": "md5",
    }


def test_booru_join_defaults_to_auto_and_absolute_metadata_kept(tmp_path):
    (src,) = sources_from_params({"sources": [_booru(join=_DROP, metadata=str(tmp_path / "elsewhere"))]}, tmp_path / "root")
    assert src.join == "auto"
    assert src.metadata == tmp_path / "elsewhere"


@pytest.mark.parametrize("site", ["danbooru", "gelbooru", "safebooru", "moebooru"])
def test_booru_site_sets_the_rating_scheme(tmp_path, site):
    (src,) = sources_from_params({"sources": [_booru(site=site)]}, tmp_path)
    assert src.site == site and src.rating_scheme == site


def test_booru_rating_scheme_equal_to_site_is_accepted(tmp_path):
    (src,) = sources_from_params({"sources": [_booru(site="moebooru", rating_scheme="moebooru")]}, tmp_path)
    assert src.rating_scheme == "moebooru"


def test_image_folder_source_has_no_booru_fields(tmp_path):
    (src,) = sources_from_params({"sources": [_entry()]}, tmp_path)
    assert src.metadata is None and src.site is None and src.join == "auto"
    assert set(src.as_dict()) == {"name", "kind", "path", "license", "generated", "weight", "repeats", "rating_scheme", "trigger_word"}


@pytest.mark.parametrize("value", [_DROP, "", None])
def test_booru_missing_metadata(tmp_path, value):
    with pytest.raises(ConfigError, match=r"source 'dump': kind 'booru' needs 'metadata'"):
        sources_from_params({"sources": [_booru(metadata=value)]}, tmp_path)


def test_booru_missing_site(tmp_path):
    with pytest.raises(ConfigError, match=r"source 'dump': kind 'booru' needs 'site'"):
        sources_from_params({"sources": [_booru(site=_DROP)]}, tmp_path)


@pytest.mark.parametrize("site", ["e621", "Danbooru", "yande.re"])
def test_booru_unknown_site(tmp_path, site):
    with pytest.raises(ConfigError, match=rf"source 'dump': unknown site {site!r}.*danbooru, gelbooru, safebooru, moebooru"):
        sources_from_params({"sources": [_booru(site=site)]}, tmp_path)


@pytest.mark.parametrize("join", ["sha1", "name", "", "MD5"])
def test_booru_unknown_join(tmp_path, join):
    with pytest.raises(ConfigError, match=rf"source 'dump': unknown join {join!r}.*md5, filename, auto"):
        sources_from_params({"sources": [_booru(join=join)]}, tmp_path)


def test_booru_rating_scheme_contradicting_site(tmp_path):
    with pytest.raises(ConfigError, match=r"source 'dump': rating_scheme 'danbooru' contradicts site 'gelbooru'"):
        sources_from_params({"sources": [_booru(site="gelbooru", rating_scheme="danbooru")]}, tmp_path)


@pytest.mark.parametrize("key", ["metadata", "site", "join"])
def test_booru_keys_rejected_on_image_folder(tmp_path, key):
    with pytest.raises(ConfigError, match=rf"source 'art': {key} only apply to kind 'booru'"):
        sources_from_params({"sources": [_entry(**{key: "x"})]}, tmp_path)


def test_booru_is_a_known_kind(tmp_path):
    with pytest.raises(ConfigError, match=r"known kinds: image_folder, booru"):
        sources_from_params({"sources": [_entry(kind="zip_file")]}, tmp_path)
