"""Captions from tags (trainset.captions) and the caption stage that applies them."""

from __future__ import annotations

import pandas as pd
import pytest

import stage_helpers as H
from trainset import manifest, schemas
from trainset.captions import caption
from trainset.stages import caption as caption_stage


def test_tags_in_order_with_default_separator():
    assert caption(["1girl", "solo", "smile"]) == "1girl, solo, smile"


def test_trigger_word_first():
    assert caption(["solo", "smile"], trigger_word="sks") == "sks, solo, smile"
    assert caption([], trigger_word="sks") == "sks"
    assert caption(["solo"], trigger_word="  sks  ") == "sks, solo"


def test_blank_trigger_word_is_ignored():
    assert caption(["solo"], trigger_word="") == "solo"
    assert caption(["solo"], trigger_word="   ") == "solo"


def test_underscores_to_spaces():
    assert caption(["long_hair", "blue_eyes"]) == "long hair, blue eyes"


def test_underscores_kept_when_disabled():
    assert caption(["long_hair", "blue_eyes"], underscores_to_spaces=False) == "long_hair, blue_eyes"
    assert caption(["long_hair", "long hair"], underscores_to_spaces=False) == "long_hair, long hair"


def test_duplicates_removed_keeping_first():
    assert caption(["solo", "smile", "solo", "smile", "hat"]) == "solo, smile, hat"
    # duplicates after underscore conversion and trimming count too
    assert caption(["long_hair", "long hair", " long hair "]) == "long hair"


def test_tag_equal_to_trigger_word_not_repeated():
    assert caption(["sks", "solo", "sks"], trigger_word="sks") == "sks, solo"
    assert caption(["my_style"], trigger_word="my style") == "my style"


def test_trigger_word_keeps_its_underscores():
    assert caption(["a_b"], trigger_word="my_token") == "my_token, a b"


def test_blank_tags_dropped():
    assert caption(["", "  ", "_", "solo"]) == "solo"
    assert caption([]) == ""


@pytest.mark.parametrize("sep", [" ", ",", "; ", "\n", " | "])
def test_separator_honoured(sep):
    assert caption(["a_b", "c"], trigger_word="t", separator=sep) == sep.join(["t", "a b", "c"])


def test_accepts_any_iterable():
    assert caption(iter(["x", "y"])) == "x, y"
    assert caption(("x", "x_y")) == "x, x y"


# --------------------------------------------------------------------------- the stage


def _deduped(tmp_path):
    rows = [
        H.item_row("src:a.png", tags=["long_hair", "smile", "long hair"]),
        H.item_row("src:b.png", tags=[]),
        H.item_row("src:c.png", tags=["sks", "hat"]),
    ]
    path = tmp_path / "deduped.parquet"
    H.write_manifest(rows, path, schemas.DEDUPED)
    return path


def test_stage_writes_captions(tmp_path):
    out = tmp_path / "captioned.parquet"
    written = caption_stage.run(_deduped(tmp_path), out, {"trigger_word": "sks", "background": {"check": False}})
    got = dict(zip(written["item_id"], written["caption"]))
    # "long hair" and "long_hair" are one canonical tag
    assert got == {"src:a.png": "sks, long hair, smile", "src:b.png": "sks", "src:c.png": "sks, hat"}
    assert list(written["caption_tokens"]) == [6, 1, 3]  # CLIP BPE: "sks" "," "long" "hair" "," "smile"
    assert not written["caption_over_limit"].any()
    on_disk = manifest.read(out, schemas.CAPTIONED)
    assert dict(zip(on_disk["item_id"], on_disk["caption"])) == got
    # tags themselves are untouched
    assert list(H.by_id(on_disk)["src:a.png"]["tags"]) == ["long_hair", "smile", "long hair"]


def test_stage_options(tmp_path):
    out = tmp_path / "captioned.parquet"
    written = caption_stage.run(_deduped(tmp_path), out, {"underscores_to_spaces": False, "separator": " ", "background": {"check": False}})
    got = dict(zip(written["item_id"], written["caption"]))
    assert got == {"src:a.png": "long_hair smile", "src:b.png": "", "src:c.png": "sks hat"}


def test_stage_on_real_sidecars(tmp_path):
    raw = tmp_path / "raw"
    img = H.save(H.sample("astronaut.png", (128, 128)), raw / "a.png")
    (raw / "a.txt").write_text("space_suit, 1girl, space_suit\n")
    H.sidecar(H.save(H.sample("coffee.png", (128, 128)), raw / "b.png"), ["coffee_cup", "table"])
    assert img.exists()
    c = H.Chain(tmp_path, [H.source(raw)])
    c.through_dedup(min_side=64)
    written = c.caption(trigger_word="tok", separator=", ")
    assert dict(zip(written["item_id"], written["caption"])) == {
        "src:a.png": "tok, 1girl, space suit",  # people-count tags first
        "src:b.png": "tok, coffee cup, table",
    }


def test_stage_uses_caption_override(tmp_path):
    rows = [
        H.item_row("src:a.png", tags=["long_hair", "smile"], caption_override="a portrait, by hand"),
        H.item_row("src:b.png", tags=["hat"]),
    ]
    path = tmp_path / "deduped.parquet"
    H.write_manifest(rows, path, schemas.DEDUPED)
    written = caption_stage.run(path, tmp_path / "captioned.parquet", {"trigger_word": "sks", "background": {"check": False}})
    got = dict(zip(written["item_id"], written["caption"]))
    # the override text is used as it is: no trigger word, no tag processing
    assert got == {"src:a.png": "a portrait, by hand", "src:b.png": "sks, hat"}
    assert list(H.by_id(written)["src:a.png"]["tags"]) == ["long_hair", "smile"]


def test_stage_on_tags_merged_across_copies_and_an_overrides_file(tmp_path):
    raw = tmp_path / "raw"
    H.sidecar(H.save(H.sample("astronaut.png", (128, 128)), raw / "a.png"), ["Space Suit", "smile"])
    (raw / "copy.png").write_bytes((raw / "a.png").read_bytes())
    (raw / "copy.txt").write_text("helmet\n")
    H.save(H.sample("coffee.png", (128, 128)), raw / "b.png")
    overrides = H.write_csv(tmp_path / "overrides.csv", ["sha256", "add_tags", "remove_tags", "caption"], [
        [H.sha256(raw / "b.png"), "", "", "my coffee, on a table"],
    ])
    c = H.Chain(tmp_path, [H.source(raw)])
    kept = c.through_dedup(min_side=64, overrides=overrides)
    assert sorted(kept["item_id"]) == ["src:a.png", "src:b.png"]
    written = c.caption(trigger_word="tok")
    # tags are canonical and merged from the dropped copy's sidecar; b's caption comes from the overrides
    assert dict(zip(written["item_id"], written["caption"])) == {
        "src:a.png": "tok, space suit, smile, helmet",
        "src:b.png": "my coffee, on a table",
    }


# --------------------------------------------------------------------------- the caption builder

from trainset import captions  # noqa: E402
from trainset.captions import CaptionSpec, build  # noqa: E402
from trainset.tags import TagDictionary  # noqa: E402

# Rows shaped like a Danbooru tag export (name, category, post count, "aliases"): the form
# TagDictionary reads and the booru tag-complete CSVs use.
_DANBOORU_CSV = '''1girl,0,6008644,"1girls,sole_female"
highres,5,5256195,"high_res,high_resolution,hires"
solo,0,5000954,"female_solo,solo_female"
long_hair,0,4350743,"/lh,longhair"
smile,0,3400000,"smiling"
absurdres,5,1800000,"absurd_res"
commentary_request,5,1500000,
looking_at_viewer,0,3000000,"looking_at_camera"
twintails,0,900000,"twin_tails"
aqua_hair,0,150000,
aqua_eyes,0,200000,
skirt,0,1700000,
necktie,0,600000,"tie"
white_background,0,900000,"white_bg"
^_^,0,110141,^^
>_<,0,64724,><
o_o,0,20000,
hatsune_miku,4,90000,"miku,hatsune_miku_(vocaloid)"
vocaloid,3,150000,
kaito_(vocaloid),4,10000,"kaito"
wlop,1,900,
2girls,0,900000,"2girl"
holding_sword,0,120000,
'''


@pytest.fixture
def dictionary(tmp_path) -> TagDictionary:
    path = tmp_path / "danbooru.csv"
    path.write_text(_DANBOORU_CSV)
    return TagDictionary.load([path])


def _count_words(text: str) -> int:
    """A stand-in token counter for tests of the trimming logic alone (one token per comma-separated part)."""
    return len([p for p in text.split(",") if p.strip()])


_POST = ["highres", "smiling", "miku", "vocaloid", "1girls", "LongHair", "twin tails", "aqua_hair", "aqua_eyes",
         "skirt", "tie", "looking_at_camera", "white_bg", "rating:general", "wlop", "^_^", "kaito", "absurd_res",
         "commentary_request", "holding_sword", "explicit"]


def test_booru_caption_canonical_dropped_and_ordered(dictionary):
    spec = CaptionSpec.from_params({"trigger_word": "mikustyle"})
    got = build(_POST, spec, dictionary)
    assert got.text == ("mikustyle, 1girl, hatsune miku, kaito \\(vocaloid\\), vocaloid, wlop, smile, long hair, twintails, "
                        "aqua hair, aqua eyes, skirt, necktie, looking at viewer, white background, ^_^, holding sword")
    # aliases resolved (smiling, miku, 1girls, twin tails, tie, white_bg); meta (highres, absurd_res,
    # commentary_request) and rating tags (rating:general, explicit) dropped; people-count first,
    # then characters, copyright, artist, general
    assert not got.over_limit and got.tokens > 0 and got.trimmed_tags == ()


def test_category_order_and_people_first_are_params(dictionary):
    spec = CaptionSpec.from_params({"category_order": ["general", "character", "copyright", "artist", "meta"], "people_first": False})
    got = build(["wlop", "miku", "smile", "solo", "vocaloid"], spec, dictionary, count_tokens=_count_words)
    assert got.text == "smile, solo, hatsune miku, vocaloid, wlop"


def test_blacklist_and_kept_meta(dictionary):
    spec = CaptionSpec.from_params({"blacklist": ["skirt", "Looking at viewer"], "drop_categories": [], "drop_tags": ["absurdres"]})
    got = build(["skirt", "highres", "absurdres", "smile", "looking_at_camera"], spec, dictionary, count_tokens=_count_words)
    assert got.text == "smile, highres"  # highres kept: meta is no longer a dropped category, and not in drop_tags


@pytest.mark.parametrize(("tag", "written"), [
    ("^_^", "^_^"), (">_<", ">_<"), ("o_o", "o_o"), ("u_u", "u_u"), ("||_||", "||_||"),
    ("long_hair", "long hair"), ("hatsune_miku_(vocaloid)", "hatsune miku \\(vocaloid\\)"),
    ("a_(b)_c", "a \\(b\\) c"), ("back\\slash", "back\\\\slash"),
])
def test_emoticons_keep_underscores_and_parentheses_are_escaped(tag, written):
    assert captions.write_tag(tag, CaptionSpec()) == written


def test_escaping_and_underscores_can_be_switched_off():
    spec = CaptionSpec.from_params({"escape_parentheses": False, "underscores_to_spaces": False})
    assert captions.write_tag("kaito_(vocaloid)", spec) == "kaito_(vocaloid)"


def test_prefix_is_written_as_given_and_counts_in_keep_tokens(dictionary):
    spec = CaptionSpec.from_params({"trigger_word": "sks", "prefix": ["score_9", "score_8_up"]})
    assert spec.keep_tokens == 3
    assert build(["smile", "score_9"], spec, dictionary).text == "sks, score_9, score_8_up, smile"
    assert CaptionSpec.from_params({"prefix": "score_9, score_8_up"}).keep_tokens == 2
    assert CaptionSpec().keep_tokens == 0


def test_over_the_token_window_is_flagged_or_trimmed_from_the_end(dictionary):
    tags = ["smile", "long_hair", "twintails", "skirt", "necktie"]
    flag = CaptionSpec.from_params({"trigger_word": "sks", "max_tokens": 4})
    flagged = build(tags, flag, dictionary, count_tokens=_count_words)
    assert flagged.over_limit and flagged.tokens == 6 and flagged.trimmed_tags == ()
    trim = CaptionSpec.from_params({"trigger_word": "sks", "max_tokens": 4, "over_limit": "trim"})
    trimmed = build(tags, trim, dictionary, count_tokens=_count_words)
    assert trimmed.text == "sks, smile, long hair, twintails"
    assert not trimmed.over_limit and trimmed.trimmed_tags == ("skirt", "necktie")
    # the trigger word and prefix are never trimmed: still over, and said so
    tight = CaptionSpec.from_params({"trigger_word": "sks", "prefix": ["a", "b"], "max_tokens": 2, "over_limit": "trim"})
    left = build(tags, tight, dictionary, count_tokens=_count_words)
    assert left.text == "sks, a, b" and left.over_limit


def test_real_clip_tokenizer_counts_bpe_pieces():
    from trainset import clip_tokens

    assert clip_tokens.count("smile") == 1
    assert clip_tokens.count("absurdres") == 2  # one word, two BPE pieces
    assert clip_tokens.count("sks, long hair, smile") == 6  # commas are tokens
    tokens = clip_tokens.tokenizer().encode("1girl, solo")
    assert clip_tokens.tokenizer().decode(tokens).strip() == "1 girl , solo"  # CLIP splits digits off


@pytest.mark.parametrize("text", [
    "1girl, solo, long hair, smile", "sks, score_9, absurdres, \\(cosplay\\), ^_^, o_o", "A girl, smiling. Also: it's 3d.",
    "  two  spaces ", "caf\u00e9, na\u00efve", "tom &amp; jerry", "", "<|startoftext|>hi",
])
def test_token_count_by_words_matches_the_whole_text(text):
    from trainset import clip_tokens

    assert captions.count_tokens(text) == clip_tokens.count(text)


def test_a_long_real_caption_is_trimmed_to_the_clip_window(dictionary):
    tags = [f"tag_number_{k}" for k in range(60)]  # unknown tags: general, three words each
    got = build(tags, CaptionSpec.from_params({"over_limit": "trim"}), dictionary)
    assert got.tokens <= 75 and not got.over_limit and got.trimmed_tags
    assert got.trimmed_tags == tuple(tags[-len(got.trimmed_tags):])
    flagged = build(tags, CaptionSpec(), dictionary)
    assert flagged.over_limit and flagged.tokens > 75


def test_natural_caption_from_templates(dictionary):
    spec = CaptionSpec.from_params({"format": "natural", "trigger_word": "mikustyle"})
    got = build(_POST, spec, dictionary)
    assert got.text == (
        "mikustyle, A girl, Hatsune Miku and Kaito from Vocaloid, with long hair, twintails, aqua hair and aqua eyes, "
        "wearing a skirt and a necktie, smiling, looking at the viewer and holding a sword, on a white background. "
        "Art by Wlop. Also: ^_^."
    )


@pytest.mark.parametrize(("tags", "start"), [
    (["2girls"], "Two girls."), (["no_humans", "white_background"], "A scene with no people, on a white background."),
    (["6+girls"], "At least six girls."), ([], "A picture."), (["1girl", "1boy"], "A girl and a boy."),
])
def test_natural_subjects(dictionary, tags, start):
    assert build(tags, CaptionSpec(format="natural"), dictionary, count_tokens=_count_words).text == start


def test_both_is_the_sentence_then_the_tags(dictionary):
    got = build(["1girl", "smile"], CaptionSpec(format="both", trigger_word="t"), dictionary, count_tokens=_count_words)
    assert got.text == "t, A girl, smiling. 1girl, smile"


@pytest.mark.parametrize(("params", "message"), [
    ({"format": "prose"}, "caption.format"), ({"over_limit": "cut"}, "caption.over_limit"),
    ({"max_tokens": 0}, "caption.max_tokens"), ({"prefix": [1]}, "caption.prefix"),
    ({"category_order": ["general", "tags"]}, "unknown tag categories"), ({"trigger": "x"}, "unknown keys"),
    ({"escape_parentheses": "yes"}, "caption.escape_parentheses"),
])
def test_bad_caption_params_fail_naming_the_key(params, message):
    with pytest.raises(ValueError, match=message):
        CaptionSpec.from_params(params)


def test_a_shards_captions_are_kept_and_linked_while_what_they_depend_on_holds(tmp_path, monkeypatch):
    """A caption job whose deduped part, params, dictionaries, triggers and code are those of a
    kept file links it instead of captioning; any change names another file; a torn one is made again."""
    deduped = _deduped(tmp_path)
    params = {"trigger_word": "sks", "background": {"check": False}}
    kept = caption_stage.kept_as(tmp_path / "kept", "00003", "digest-1", params, [], {"src": "abc"}, "code-1")
    caption_stage.run(deduped, tmp_path / "a.parquet", params, [], None, {"src": "abc"}, kept)
    first = manifest.read(tmp_path / "a.parquet", schemas.CAPTIONED)
    assert len(first) == 3 and kept.read_bytes() == (tmp_path / "a.parquet").read_bytes()

    def no_captioning(*args, **kw):
        raise AssertionError("captioned again")

    with monkeypatch.context() as m:
        m.setattr(caption_stage, "_captioned", no_captioning)
        again = caption_stage.run(deduped, tmp_path / "b.parquet", params, [], None, {"src": "abc"}, kept)
    assert again is None  # linked: nothing read
    assert (tmp_path / "b.parquet").stat().st_ino == kept.stat().st_ino
    pd.testing.assert_frame_equal(manifest.read(tmp_path / "b.parquet", schemas.CAPTIONED), first)

    others = [caption_stage.kept_as(tmp_path / "kept", "00003", "digest-2", params, [], {"src": "abc"}, "code-1"),
              caption_stage.kept_as(tmp_path / "kept", "00003", "digest-1", {**params, "trigger_word": "x"}, [], {"src": "abc"}, "code-1"),
              caption_stage.kept_as(tmp_path / "kept", "00003", "digest-1", params, [], {"src": "other"}, "code-1"),
              caption_stage.kept_as(tmp_path / "kept", "00003", "digest-1", params, [], {"src": "abc"}, "code-2")]
    assert len({kept, *others}) == 5 and all(o.parent == kept.parent for o in others)

    kept.write_bytes(kept.read_bytes()[:100])  # torn: made again, whole
    caption_stage.run(deduped, tmp_path / "c.parquet", params, [], None, {"src": "abc"}, kept)
    pd.testing.assert_frame_equal(manifest.read(tmp_path / "c.parquet", schemas.CAPTIONED), first)
    caption_stage.run(deduped, tmp_path / "d.parquet", {**params, "trigger_word": "x"}, [], None, {"src": "abc"}, others[1])
    assert sorted(p.name for p in kept.parent.iterdir()) == [others[1].name]  # a shard keeps its last captions only


def test_a_shard_captioned_again_takes_the_captions_of_unchanged_items_from_its_last(tmp_path, monkeypatch):
    """With the same params, dictionaries, triggers and code, only the items whose source, content,
    tags or caption override changed (or that are new) are captioned; the file equals a fresh run's."""
    params = {"trigger_word": "sks", "background": {"check": False}, "over_limit": "trim", "max_tokens": 4}
    rows = [H.item_row(f"src:{k}.png", tags=[f"tag_{k}", "long_hair", "smile", "blue_sky", "hat"][: 1 + k % 5]) for k in range(8)]
    rows[5]["caption_override"] = "fixed text"
    first = tmp_path / "first.parquet"
    H.write_manifest(rows, first, schemas.DEDUPED)
    kept = caption_stage.kept_as(tmp_path / "kept", "00000", "d1", params, [], {"src": "abc"}, "c")
    caption_stage.run(first, tmp_path / "a.parquet", params, [], None, {"src": "abc"}, kept)

    changed = [dict(r) for r in rows]
    changed[1]["tags"] = ["tag_1", "new_tag"]          # tags changed
    changed[2]["sha256"] = H.fake_sha("new content")    # content changed
    changed[5]["caption_override"] = None               # override dropped
    changed.append(H.item_row("src:new.png", tags=["cat"]))  # a new item
    del changed[0]                                      # an item gone
    second = tmp_path / "second.parquet"
    H.write_manifest(changed, second, schemas.DEDUPED)

    seen = []
    made = caption_stage._caption_rows

    def counting(rows, *args):
        rows = list(rows)
        seen.extend(sha for _, sha, _, _ in rows)
        return made(rows, *args)

    monkeypatch.setattr(caption_stage, "_caption_rows", counting)
    again = caption_stage.kept_as(tmp_path / "kept", "00000", "d2", params, [], {"src": "abc"}, "c")
    caption_stage.run(second, tmp_path / "b.parquet", params, [], None, {"src": "abc"}, again)
    assert sorted(seen) == sorted(r["sha256"] for r in (changed[0], changed[1], changed[4], changed[-1]))
    caption_stage.run(second, tmp_path / "fresh.parquet", params, [], None, {"src": "abc"})
    assert (tmp_path / "b.parquet").read_bytes() == (tmp_path / "fresh.parquet").read_bytes()
    assert [p.name for p in again.parent.iterdir()] == [again.name]

    other = caption_stage.kept_as(tmp_path / "kept", "00000", "d3", {**params, "trigger_word": "zz"}, [], {"src": "abc"}, "c")
    seen.clear()
    caption_stage.run(first, tmp_path / "c.parquet", {**params, "trigger_word": "zz"}, [], None, {"src": "abc"}, other)
    assert len(seen) == len(rows)  # other params: nothing taken from captions made under the old ones


def test_same_lists_compares_lists_row_by_row_as_python_would():
    """Tags compared as Arrow, row by row: the same values in the same order, a missing list equal
    only to a missing one, a value holding a separator not confused with two values."""
    import pyarrow as pa

    a = [["a", "b"], ["a", "b"], ["a"], [], None, None, ["x\x1fy"], ["x", "y"], ["a", None], ["a", None], ["long", "list", "of", "tags"]]
    b = [["a", "b"], ["b", "a"], ["a", "b"], [], None, [], ["x", "y"], ["x\x1fy"], ["a", None], ["a", "b"], ["long", "list", "of", "tags"]]
    got = caption_stage._same_lists(pa.array(a, pa.list_(pa.string())), pa.array(b, pa.large_list(pa.string())))
    assert got.tolist() == [x == y for x, y in zip(a, b)]
