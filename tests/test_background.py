"""Background colour from the border, named, and checked against X_background tags (trainset.background)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageOps

import stage_helpers as H
from trainset import background
from trainset.background import Background, Settings, check, estimate


@pytest.mark.parametrize(("rgb", "name"), [
    ((255, 255, 255), "white"), ((250, 250, 246), "white"), ((0, 0, 0), "black"), ((20, 24, 30), "black"),
    ((128, 128, 128), "grey"), ((200, 30, 30), "red"), ((240, 140, 20), "orange"), ((240, 220, 40), "yellow"),
    ((40, 180, 60), "green"), ((60, 200, 200), "aqua"), ((40, 80, 220), "blue"), ((130, 50, 200), "purple"),
    ((250, 160, 190), "pink"), ((120, 70, 30), "brown"), ((240, 225, 195), "beige"),
])
def test_colour_names(rgb, name):
    assert background.name(rgb) == name


def _framed(fill, size=(200, 160), picture=(120, 90), name="astronaut.png") -> Image.Image:
    canvas = Image.new("RGB", size, fill)
    canvas.paste(H.sample(name, picture), ((size[0] - picture[0]) // 2, (size[1] - picture[1]) // 2))
    return canvas


def test_a_uniform_border_is_named_and_a_scene_has_no_opinion():
    found = estimate(_framed((130, 50, 200)))
    assert found.name == "purple" and found.uniformity >= 0.99
    assert np.allclose(found.rgb, (130, 50, 200), atol=1)
    scene = estimate(H.sample("astronaut.png", (200, 160)))
    assert scene.name is None and scene.uniformity < 0.8


def test_jpeg_noise_and_a_transparent_canvas(tmp_path):
    path = H.save(_framed((40, 180, 60)), tmp_path / "g.jpg", quality=70)
    assert estimate(background.open_small(str(path))).name == "green"
    sprite = Image.new("RGBA", (68, 56), (0, 0, 0, 0))
    sprite.paste(H.sample("coffee.png", (30, 30)).convert("RGBA"), (20, 14))
    assert estimate(sprite).name == "transparent"


def test_the_uniformity_bar_is_a_param():
    half = Image.new("RGB", (100, 100), (255, 255, 255))
    half.paste(H.sample("coffee.png", (100, 40)), (0, 60))  # the bottom edge and part of the sides are a photo
    found = estimate(half)
    assert 0.4 < found.uniformity < 0.8 and found.name is None
    assert estimate(half, min_uniformity=0.4).name == "white"


def test_check_agrees_flags_or_fixes():
    purple = Background((130, 50, 200), 0.97, "purple")
    tags = ["1girl", "green_background", "smile"]
    flagged = check(tags, purple, "flag")
    assert (flagged.agrees, flagged.action, flagged.tags) == (False, "flagged", tuple(tags))
    fixed = check(tags, purple, "fix")
    assert (fixed.action, fixed.tags) == ("fixed", ("1girl", "purple_background", "smile"))
    assert check(["purple_background"], purple).agrees is True
    assert check(["gray_background"], Background((128, 128, 128), 1.0, "grey")).agrees is True
    assert check(["smile"], purple).agrees is None  # no tag to compare
    assert check(tags, Background((0, 0, 0), 0.3, None)).agrees is None  # no opinion


@pytest.mark.parametrize(("block", "message"), [
    ({"on_mismatch": "repair"}, "on_mismatch"), ({"min_uniformity": 0}, "min_uniformity"),
    ({"min_uniformity": True}, "min_uniformity"), ({"check": "yes"}, "check"), ({"colour": 1}, "unknown keys"),
])
def test_bad_settings_fail_naming_the_key(block, message):
    with pytest.raises(ValueError, match=message):
        Settings.from_params(block)


def _chain(tmp_path):
    raw = tmp_path / "raw"
    H.sidecar(H.save(_framed((130, 50, 200)), raw / "purple.png"), ["1girl", "green_background", "smile"])
    H.sidecar(H.save(_framed((255, 255, 255), name="camera.png"), raw / "white.png"), ["1girl", "white_background"])
    H.sidecar(H.save(H.sample("coffee.png", (200, 160)), raw / "scene.png"), ["cup", "blue_background"])
    c = H.Chain(tmp_path, [H.source(raw)])
    c.through_dedup(min_side=64)
    return c


def test_stage_fixes_the_tag_and_says_so(tmp_path):
    c = _chain(tmp_path)
    written = H.by_id(c.caption(background={"on_mismatch": "fix"}, tag_dictionaries=None))
    purple = written["src:purple.png"]
    assert purple["caption"] == "1girl, purple background, smile"
    assert (purple["background"], purple["background_check"]) == ("purple", "fixed")
    assert written["src:white.png"]["background_check"] == "agrees"
    scene = written["src:scene.png"]
    assert pd.isna(scene["background"]) and pd.isna(scene["background_check"])  # no opinion: the tag stays
    assert "blue background" in scene["caption"]
    assert list(purple["tags"]) == ["1girl", "green_background", "smile"]  # the tags themselves are untouched


def test_stage_flags_and_caches_by_content(tmp_path, monkeypatch):
    c = _chain(tmp_path)
    cache = tmp_path / "cache"
    monkeypatch.chdir(c.root)  # manifest paths are relative to the repository root, as in the workflow
    from trainset.stages import caption as caption_stage

    first = H.by_id(caption_stage.run(c.p["deduped"], c.p["captioned"], {"background": {"on_mismatch": "flag"}}, None, cache))
    assert first["src:purple.png"]["caption"] == "1girl, green background, smile"
    assert first["src:purple.png"]["background_check"] == "flagged"

    def no_decode(path):
        raise AssertionError(f"decoded {path} again")

    monkeypatch.setattr(background, "open_small", no_decode)
    again = H.by_id(caption_stage.run(c.p["deduped"], c.p["captioned"], {"trigger_word": "t", "background": {"on_mismatch": "fix"}}, None, cache))
    assert again["src:purple.png"]["caption"] == "t, 1girl, purple background, smile"


def test_a_file_gone_since_the_audit_fails_naming_it(tmp_path):
    c = _chain(tmp_path)
    (tmp_path / "raw" / "white.png").unlink()
    with pytest.raises(RuntimeError, match=r"white\.png: cannot be read for the background check"):
        c.caption()
