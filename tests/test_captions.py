"""Captions from tags (trainset.captions) and the caption stage that applies them."""

from __future__ import annotations

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
    written = caption_stage.run(_deduped(tmp_path), out, trigger_word="sks")
    got = dict(zip(written["item_id"], written["caption"]))
    assert got == {"src:a.png": "sks, long hair, smile", "src:b.png": "sks", "src:c.png": "sks, hat"}
    on_disk = manifest.read(out, schemas.CAPTIONED)
    assert dict(zip(on_disk["item_id"], on_disk["caption"])) == got
    # tags themselves are untouched
    assert list(H.by_id(on_disk)["src:a.png"]["tags"]) == ["long_hair", "smile", "long hair"]


def test_stage_options(tmp_path):
    out = tmp_path / "captioned.parquet"
    written = caption_stage.run(_deduped(tmp_path), out, underscores_to_spaces=False, separator=" ")
    got = dict(zip(written["item_id"], written["caption"]))
    assert got == {"src:a.png": "long_hair smile long hair", "src:b.png": "", "src:c.png": "sks hat"}


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
        "src:a.png": "tok, space suit, 1girl",
        "src:b.png": "tok, coffee cup, table",
    }


def test_stage_uses_caption_override(tmp_path):
    rows = [
        H.item_row("src:a.png", tags=["long_hair", "smile"], caption_override="a portrait, by hand"),
        H.item_row("src:b.png", tags=["hat"]),
    ]
    path = tmp_path / "deduped.parquet"
    H.write_manifest(rows, path, schemas.DEDUPED)
    written = caption_stage.run(path, tmp_path / "captioned.parquet", trigger_word="sks")
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
