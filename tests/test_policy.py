"""The content policy: minors always excluded, NSFW allow/flag/exclude, artists, licenses,
annotations, quality, untagged and overrides."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainset.config import ConfigError
from trainset.policy import Policy, most_severe, shipped_lists
from trainset.tags import TagDictionary

TAGS = TagDictionary.load()


def item(tags=(), rating="general", **over) -> dict:
    base = {"tags": list(tags), "rating": rating, "license": "CC0-1.0", "artists": [], "nsfw_score": math.nan,
            "harmony_score": math.nan}
    base.update(over)
    return base


def policy(**params) -> Policy:
    return Policy.from_params(params, TAGS)


@pytest.mark.parametrize("rating", ["questionable", "explicit"])
def test_minor_tag_with_sexual_rating_is_excluded(rating):
    d = policy().decide(item(["loli", "smile"], rating))
    assert d.exclusion.rule == "minors" and d.exclusion.reason == "minor_sexual"
    assert "loli" in d.exclusion.triggered


def test_minor_tag_with_explicit_tag_at_general_rating_is_excluded():
    d = policy().decide(item(["child", "nude"], "general"))
    assert d.exclusion.rule == "minors" and set(d.exclusion.triggered) == {"child", "nude"}


def test_minor_tag_at_safe_rating_kept_unless_configured():
    assert policy().decide(item(["child", "smile"], "general")).exclusion is None
    d = policy(minors={"exclude_at_any_rating": True}).decide(item(["child"], "general"))
    assert d.exclusion.reason == "minor_any_rating"


def test_minors_rule_cannot_be_switched_off():
    with pytest.raises(ConfigError, match="cannot be switched off"):
        policy(minors={"enabled": False})


def test_extra_minor_tags_from_params_canonicalized():
    p = policy(minors={"extra_tags": ["Young Looking"]})
    assert p.decide(item(["young_looking"], "explicit")).exclusion.rule == "minors"


def test_override_cannot_readmit_minors():
    d = policy().decide(item(["shota"], "explicit"), {"action": "keep"})
    assert d.exclusion.rule == "minors"
    assert "ignored" in d.override


@pytest.mark.parametrize("action,excluded,flagged", [("allow", False, False), ("flag", False, True), ("exclude", True, False)])
def test_nsfw_actions(action, excluded, flagged):
    d = policy(nsfw={"action": action}).decide(item(["1girl"], "explicit"))
    assert d.nsfw is True
    assert (d.exclusion is not None) is excluded
    assert ("nsfw" in d.flags) is flagged


def test_nsfw_from_explicit_tags_and_model_score():
    p = policy(nsfw={"action": "exclude", "score_threshold": 0.8})
    assert p.decide(item(["nude"], "general")).exclusion.rule == "nsfw"
    assert p.decide(item(["tree"], "general", nsfw_score=0.9)).exclusion.rule == "nsfw"
    assert p.decide(item(["tree"], "general", nsfw_score=0.1)).exclusion is None
    assert p.decide(item(["tree"], "general")).exclusion is None  # no score: nothing pretends to classify


def test_license_artists_harmony_quality_untagged():
    p = policy(license_allowlist=["CC0-1.0"], excluded_artists=["Some Artist"], min_harmony=2,
               quality={"column": "score", "min": 8}, untagged="quarantine")
    assert p.decide(item(["a"], license="CC-BY-NC-4.0")).exclusion.rule == "license"
    assert p.decide(item(["a"], artists=["some_artist"])).exclusion.rule == "artists"
    assert p.decide(item(["a"], harmony_score=1.0)).exclusion.reason == "low_harmony"
    assert p.decide(item(["a"], harmony_score=2.0)).exclusion is None
    assert p.decide(item(["a"], score=7.5)).exclusion.reason == "low_quality"
    assert p.decide(item([], "unknown")).exclusion.reason == "untagged_quarantined"
    assert "untagged" in policy(untagged="flag").decide(item([], "unknown")).flags


def test_overrides_keep_and_exclude():
    p = policy(nsfw={"action": "exclude"})
    kept = p.decide(item(["a"], "explicit"), {"action": "keep", "note": "reviewed"})
    assert kept.exclusion is None and any(f.startswith("override_kept") for f in kept.flags)
    assert p.decide(item(["a"]), {"action": "exclude"}).exclusion.rule == "override"


def test_bad_params_name_the_key():
    with pytest.raises(ConfigError, match="nsfw.action"):
        policy(nsfw={"action": "maybe"})
    with pytest.raises(ConfigError, match="untagged"):
        policy(untagged="hide")


def test_most_severe():
    assert most_severe(["general", "explicit", "unknown"]) == "explicit"
    assert most_severe(["unknown"]) == "unknown"
    assert most_severe([]) == "unknown"


def _spellings(tag: str):
    forms = sorted({tag, *TAGS.aliases_of(tag)})
    return st.sampled_from(forms).flatmap(
        lambda f: st.tuples(st.lists(st.booleans(), min_size=len(f), max_size=len(f)), st.booleans()).map(
            lambda spec: "".join(c.upper() if up else c for c, up in zip(f, spec[0])).replace("_", " " if spec[1] else "_")
        )
    )


MINOR_SPELLINGS = st.sampled_from(sorted(shipped_lists()["minor_tags"])).flatmap(_spellings)


@settings(max_examples=300, deadline=None)
@given(spelling=MINOR_SPELLINGS, rating=st.sampled_from(["questionable", "explicit"]), other=st.lists(st.sampled_from(["smile", "1girl", "outdoors"]), max_size=3))
def test_any_spelling_of_a_minor_tag_with_sexual_rating_is_excluded(spelling, rating, other):
    tags = TAGS.canonicalize([*other, spelling])
    assert policy(nsfw={"action": "allow"}).decide(item(tags, rating)).exclusion.rule == "minors"


# -- through the real stages: no spelling of a minor tag with a sexual rating reaches an export --

import contextlib  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import skimage.data  # noqa: E402
from PIL import Image  # noqa: E402

from trainset import manifest, schemas  # noqa: E402
from trainset.config import Source  # noqa: E402
from trainset.stages import audit, caption, dedup, export, group, ingest, nsfw, split  # noqa: E402
from trainset.stages import filter as filter_stage  # noqa: E402

COPIES = ("a.png", "copy_of_a.png", "a_small.png")


def _photo(name: str, size: int) -> Image.Image:
    with Image.open(Path(skimage.data.__file__).parent / name) as im:
        return im.convert("RGB").resize((size, size))


def _build_folder(root: Path) -> Path:
    folder = root / "src"
    folder.mkdir(parents=True)
    _photo("astronaut.png", 320).save(folder / "a.png")
    shutil.copy(folder / "a.png", folder / "copy_of_a.png")
    _photo("astronaut.png", 260).save(folder / "a_small.png")
    _photo("coffee.png", 300).save(folder / "b.png")
    return folder


def _chain(root: Path, folder: Path, cache: Path) -> "pd.DataFrame":  # noqa: F821
    m = root / "m"
    src = Source(name="s", kind="image_folder", path=folder, license="CC0-1.0")
    ingest.run([src], m / "ingest.parquet", cache / "stat", [".png"], root=root)
    audit.run(m / "ingest.parquet", m / "audit.parquet", cache / "features", m / "stats.json", params={})
    nsfw.run(m / "ingest.parquet", m / "audit.parquet", m / "nsfw.parquet", None, cache / "nsfw")
    near_dup = {"rule": [{"max_distance": 10}]}
    group.run(m / "ingest.parquet", m / "audit.parquet", m / "groups.parquet", m / "pairs.parquet", m / "reference_pairs.parquet",
              near_dup, cache, m / "group-stats.json")
    paths = {"ingest": m / "ingest.parquet", "audit": m / "audit.parquet", "groups": m / "groups.parquet", "nsfw": m / "nsfw.parquet"}
    filter_stage.run(paths, m / "filtered.parquet", m / "rej_filter.parquet", {"min_side": 64}, {"nsfw": {"action": "allow"}})
    dedup.run(m / "filtered.parquet", m / "pairs.parquet", m / "reference_pairs.parquet", m / "deduped.parquet",
              m / "clusters.parquet", m / "rej_dedup.parquet", near_dup)
    caption.run(m / "deduped.parquet", m / "captioned.parquet")
    split.run(m / "captioned.parquet", m / "split.parquet", m / "moves.parquet", cache / "history.parquet", 1, {"train": 0.8, "val": 0.1, "test": 0.1})
    export.run(m / "split.parquet", root / "export", {})
    return manifest.read(root / "export" / "manifest.parquet", schemas.EXPORT)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("minors")
    return root, _build_folder(root), root / "cache"


@settings(max_examples=15, deadline=None)
@given(
    spelling=MINOR_SPELLINGS,
    carrier=st.sampled_from(COPIES),
    sexual=st.sampled_from([("e", []), ("q", []), ("g", ["Nude"]), ("safe", ["Cum"])]),
)
def test_minor_tag_on_any_copy_never_reaches_the_export(workspace, spelling, carrier, sexual):
    root, folder, cache = workspace
    for car in folder.glob("*.json"):
        car.unlink()
    rating, extra = sexual
    (folder / Path(carrier).with_suffix(".json")).write_text(json.dumps({"tags": [spelling, "smile", *extra], "rating": rating}))
    shutil.rmtree(root / "m", ignore_errors=True)
    shutil.rmtree(root / "export", ignore_errors=True)
    with contextlib.chdir(root):  # manifests store paths relative to the project root
        exported = _chain(root, folder, cache)
    assert set(exported["item_id"]) == {"s:b.png"}, (spelling, carrier, sexual)
    rejected = manifest.read(root / "m" / "rej_filter.parquet", schemas.REJECTED).set_index("item_id")
    assert all(rejected.loc[f"s:{c}", "rule"] == "minors" for c in COPIES)


# --------------------------------------------------------------------------- a whole frame at once

_TAG_POOL = ["loli", "child", "nude", "sex", "smile", "1girl", "tree", "some_artist", "other_artist", "beach"]


def _items(seed: int, n: int = 400):
    """Rows that vary every input decide() reads, with the values that tell rows apart only in
    their details (-0.0 and 0.0, NaN, artists as tags or as artists, None artists)."""
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(n):
        tags = list(dict.fromkeys(rng.choice(_TAG_POOL, size=rng.integers(0, 4)).tolist()))
        rows.append({
            "item_id": f"s:{k:04d}",
            "sha256": f"{k:064x}",
            "tags": tags,
            "rating": str(rng.choice(["general", "sensitive", "questionable", "explicit", "unknown"])),
            "license": str(rng.choice(["CC0-1.0", "proprietary"])),
            "artists": None if k % 50 == 7 else rng.choice(["some_artist", "painter"], size=rng.integers(0, 2)).tolist(),
            "nsfw_score": float(rng.choice([math.nan, 0.0, -0.0, 0.2, 0.7, 0.7000001])),
            "harmony_score": float(rng.choice([math.nan, 0.0, -0.0, 1.5, 3.0])),
            "laplacian_var": float(rng.choice([math.nan, 10.0, 500.0])),
        })
    return pd.DataFrame(rows)


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"nsfw": {"action": "exclude", "score_threshold": 0.0}, "min_harmony": 0.5, "untagged": "quarantine"},
        {"nsfw": {"action": "flag", "score_threshold": 0.7, "ratings": ["explicit"]}, "excluded_artists": ["Some Artist"],
         "license_allowlist": ["CC0-1.0"], "minors": {"exclude_at_any_rating": True}, "untagged": "flag",
         "quality": {"column": "laplacian_var", "min": 100}},
        {"min_harmony": None, "quality": {"column": "quality_text", "min": 1}, "explicit_tags_extra": ["beach"]},
    ],
)
@pytest.mark.parametrize("seed", [1, 2])
def test_decide_all_agrees_with_decide_row_by_row(params, seed):
    df = _items(seed)
    if params.get("quality", {}).get("column") == "quality_text":
        df["quality_text"] = pd.Series([3.0, -0.0] * (len(df) // 2), dtype=object)  # every row decided on its own
    overrides = {df["sha256"][k]: {"sha256": df["sha256"][k], "action": action, "note": None}
                 for k, action in [(3, "keep"), (4, "exclude"), (5, None), (11, "keep")]}
    p = policy(**params)
    codes, decisions = p.decide_all(df, overrides)
    assert len(codes) == len(df)
    for code, row in zip(codes, df.itertuples(index=False)):
        assert decisions[code] == p.decide(row._asdict(), overrides.get(row.sha256)), row


def test_rows_differing_only_in_what_the_policy_ignores_share_a_decision():
    df = _items(3)
    df["tags"] = [["smile", "tree"][: k % 3] for k in range(len(df))]
    df["harmony_score"] = math.nan
    codes, decisions = policy().decide_all(df)
    assert len(decisions) == 2 * 5  # tagged or not, times the ratings
    assert len(set(codes.tolist())) == len(decisions)


def test_decide_all_on_no_rows():
    codes, decisions = policy().decide_all(_items(0).iloc[:0])
    assert len(codes) == 0 and decisions == []
