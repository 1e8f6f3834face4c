"""End to end: the whole workflow on the built-in demo and on a user folder."""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from trainset import demo, manifest, schemas

from conftest import copy_workflow, set_params, snakemake, snakemake_images

NOTHING = "Nothing to be done"


@pytest.fixture(scope="module")
def built(built_demo) -> Path:
    return built_demo


def _read(project: Path, rel: str, schema) -> pd.DataFrame:
    return manifest.read(project / rel, schema)


def test_demo_duplicates_and_broken_files(built: Path) -> None:
    truth = demo.truth()
    rejected = _read(built, "data/manifests/rejected.parquet", schemas.REJECTED).set_index("item_id")
    kept = _read(built, "data/export/manifest.parquet", schemas.EXPORT).set_index("item_id")
    rid = lambda rel: f"demo:{rel}"  # noqa: E731

    for original, copy in truth["exact_duplicates"]:
        pair = {rid(original), rid(copy)}
        assert len(pair & set(kept.index)) == 1, pair
        (loser,) = pair & set(rejected.index)
        assert rejected.loc[loser, "reason"] == "exact_duplicate"
        winner = rejected.loc[loser, "duplicate_of"]
        assert winner == (pair - {loser}).pop() and winner in kept.index
        assert rejected.loc[loser, "detail"] == f"same bytes as {winner} (kept)"

    for original, variant, kind in truth["near_duplicates"]:
        assert rid(variant) in rejected.index, (variant, kind)
        assert rejected.loc[rid(variant), "reason"] == "near_duplicate"
        winner = rejected.loc[rid(variant), "duplicate_of"]
        assert rejected.loc[rid(variant), "detail"].startswith(f"near-duplicate of {winner} (kept): pHash distance "), variant
        assert winner in kept.index
        if kind == "upscaled_generated":  # original kept over a larger generated copy
            assert winner == rid(original)

    for a, b in truth["distinct_lookalikes"]:
        assert rid(a) in kept.index and rid(b) in kept.index, (a, b)

    for rel, reason in truth["broken"].items():
        assert rejected.loc[rid(rel), "reason"] == reason
        assert rejected.loc[rid(rel), "stage"] == "filter"
    for rel in truth["too_small"]:
        assert rejected.loc[rid(rel), "reason"] == "too_small"


def test_demo_counts_conserved_and_report(built: Path) -> None:
    raw = _read(built, "data/manifests/ingest.parquet", schemas.INGEST)
    kept = _read(built, "data/export/manifest.parquet", schemas.EXPORT)
    rejected = _read(built, "data/manifests/rejected.parquet", schemas.REJECTED)
    assert len(raw) == len(demo.truth()["images"])
    assert set(raw["item_id"]) == set(kept["item_id"]) | set(rejected["item_id"])
    assert len(raw) == len(kept) + len(rejected)
    metrics = json.loads((built / "data/report/metrics.json").read_text())
    assert metrics["raw"] == len(raw) and metrics["kept"] == len(kept) and metrics["split_leakage"] == 0
    report = (built / "data/report/dataset-report.md").read_text()
    assert report.startswith("# Dataset report: GO")
    for reason in ("exact_duplicate", "near_duplicate", "truncated", "zero_byte", "not_image", "too_small"):
        assert reason in report


def test_demo_export_is_kohya_ready(built: Path) -> None:
    export = built / "data/export"
    config = tomllib.loads((export / "dataset_config.toml").read_text())
    subsets = config["datasets"][0]["subsets"]
    kept = _read(built, "data/export/manifest.parquet", schemas.EXPORT)
    assert subsets
    listed = 0
    for subset in subsets:
        folder = built / subset["image_dir"]
        assert folder.is_dir(), subset
        assert folder.name.split("_", 1)[0] == str(subset["num_repeats"])
        images = [p for p in folder.iterdir() if p.suffix != ".txt"]
        assert images and all(p.with_suffix(".txt").is_file() for p in images)
        listed += len(images)
    assert listed == int((kept["split"] == "train").sum())
    for row in kept.itertuples():
        data = (export / row.export_path).read_bytes()
        assert manifest_sha(data) == row.export_sha256
        assert (export / row.export_path).with_suffix(".txt").read_text().strip() == row.caption
    assert "demo" in (export / "ATTRIBUTION.md").read_text()
    from trainset import export_formats  # WebDataset shards and Hugging Face Parquet beside the Kohya layout

    assert export_formats.verify(export, kept) == []
    assert any((export / "webdataset").glob("train-*.tar")) and any((export / "hf").glob("train-*.parquet"))


def manifest_sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_rerun_does_nothing(built: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in (built / "data/manifests").rglob("*.parquet")}
    proc = snakemake(built, "--nolock")  # the shared build: other tests may be copying it meanwhile
    assert NOTHING in proc.stdout + proc.stderr
    assert before == {p: p.stat().st_mtime_ns for p in (built / "data/manifests").rglob("*.parquet")}


def _stats(project: Path) -> dict:
    return json.loads((project / "data/run/audit-stats.json").read_text())


def _photo(name: str, size: tuple[int, int], seed: int) -> Image.Image:
    """A distinct, natural-looking image: a sample photo crop, shifted by seed."""
    import skimage.data

    with Image.open(Path(skimage.data.__file__).parent / name) as im:
        im = im.convert("RGB")
        left = (seed * 37) % max(1, im.width - size[0])
        top = (seed * 53) % max(1, im.height - size[1])
        return im.crop((left, top, left + size[0], top + size[1]))


def test_user_folder_incremental(project: Path, tmp_path: Path) -> None:
    folder = tmp_path / "my_art"
    (folder / "3_char").mkdir(parents=True)
    names = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png"]
    for i, name in enumerate(names):
        _photo(name, (300, 280), i).save(folder / "3_char" / f"img{i}.png")
        (folder / "3_char" / f"img{i}.txt").write_text("1girl, solo, smile")
    set_params(project, demo=True, sources=[{
        "name": "my_art", "kind": "image_folder", "path": str(folder), "license": "CC-BY-4.0", "weight": 1.0,
    }])
    snakemake_images(project)
    first = _stats(project)
    assert first["decoded"] == first["contents"] > 0
    split_before = _read(project, "data/manifests/split.parquet", schemas.SPLIT).set_index("item_id")["split"]

    proc = snakemake_images(project)
    assert NOTHING in proc.stdout + proc.stderr

    _photo("coins.png", (300, 280), 9).save(folder / "new.png")
    snakemake_images(project)
    second = _stats(project)
    assert second["decoded"] == 1
    assert second["cache_hits"] == first["contents"]
    split_after = _read(project, "data/manifests/split.parquet", schemas.SPLIT).set_index("item_id")["split"]
    assert "my_art:new.png" in split_after.index
    common = split_before.index.intersection(split_after.index)
    assert (split_before[common] == split_after[common]).all()
    kept = _read(project, "data/export/manifest.parquet", schemas.EXPORT)
    mine = kept[(kept["source"] == "my_art") & (kept["subset"] == "char")]
    assert set(mine["repeats"]) == {3}

    audit_mtime = (project / "data/manifests/audit.parquet").stat().st_mtime_ns
    set_params(project, audit__min_side=290)
    snakemake_images(project)
    # a threshold change re-filters from stored measures: the audit (decode) step does not run
    assert (project / "data/manifests/audit.parquet").stat().st_mtime_ns == audit_mtime
    assert _stats(project) == second
    rejected = _read(project, "data/manifests/rejected.parquet", schemas.REJECTED)
    assert "my_art:3_char/img0.png" in set(rejected.loc[rejected["reason"] == "too_small", "item_id"])


def test_only_the_shards_whose_kept_rows_changed_are_captioned_again(project: Path, tmp_path: Path) -> None:
    """The deal after the global dedup is a checkpoint: a caption job reruns when its shard's kept
    rows changed (their digest is its param), and the other shards' captions are left as they are."""
    import re

    folder = tmp_path / "art"
    folder.mkdir()
    names = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "retina.jpg", "ihc.png", "hubble_deep_field.jpg"]
    for i, name in enumerate(names):
        _photo(name, (300, 280), i).save(folder / f"img{i}.png")
    set_params(project, demo=False, shards={"size": 2}, report__min_kept=1,
               sources=[{"name": "art", "kind": "image_folder", "path": str(folder), "license": "CC0-1.0"}])
    snakemake_images(project)
    index_path = project / "data/manifests/shards/deduped-index.json"
    before = json.loads(index_path.read_text())
    parts = project / "data/manifests/shards/captioned"
    stamps = {p.stem: p.stat().st_mtime_ns for p in parts.glob("*.parquet")}
    assert len(before) >= 4 and set(stamps) == set(before)

    _photo("coins.png", (300, 280), 9).save(folder / "new.png")
    proc = snakemake_images(project)
    after = json.loads(index_path.read_text())
    changed = sorted(s for s in after if before.get(s, {}).get("digest") != after[s]["digest"])
    ran = sorted(re.findall(r"rule caption_shard:.*?wildcards: shard=(\d+)", proc.stdout + proc.stderr, flags=re.S))
    assert changed and ran == changed and len(ran) < len(after)
    # the global steps copy the shards whose keys did not change from their kept outputs (which
    # Snakemake's touch of each output after its job leaves alone)
    copied = dict(re.findall(r"data/manifests/(\S+)\.parquet: (\d+) of \d+ shard\(s\) copied", proc.stderr))
    assert {"groups", "nsfw_scores", "filtered", "deduped", "split"} <= set(copied), proc.stderr[-3000:]
    assert all(int(n) > 0 for name, n in copied.items() if name in {"groups", "nsfw_scores", "filtered", "deduped", "split"}), copied
    for shard in set(before) - set(changed):
        assert (parts / f"{shard}.parquet").stat().st_mtime_ns == stamps[shard]
    captioned = _read(project, "data/manifests/captioned.parquet", schemas.CAPTIONED)
    assert "art:new.png" in set(captioned["item_id"])

    set_params(project, caption__trigger_word="zzz_trigger")  # what every caption depends on: all rerun
    proc = snakemake_images(project)
    ran = sorted(re.findall(r"rule caption_shard:.*?wildcards: shard=(\d+)", proc.stdout + proc.stderr, flags=re.S))
    assert ran == sorted(after)
    captioned = _read(project, "data/manifests/captioned.parquet", schemas.CAPTIONED)
    assert captioned["caption"].str.startswith("zzz_trigger").all()


def test_demo_off_drops_demo(project: Path, tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    for i, name in enumerate(["astronaut.png", "coffee.png", "chelsea.png"]):
        _photo(name, (300, 300), i).save(folder / f"{i}.png")
    set_params(project, demo=False, sources=[{"name": "mine", "kind": "image_folder", "path": str(folder), "license": "CC0-1.0"}])
    set_params(project, report__min_kept=1)
    snakemake_images(project)
    raw = _read(project, "data/manifests/ingest.parquet", schemas.INGEST)
    assert set(raw["source"]) == {"mine"} and len(raw) == 3
    assert not (project / "data/raw/demo").exists()


def test_bad_source_fails_with_its_name(project: Path, tmp_path: Path) -> None:
    set_params(project, sources=[{"name": "gone", "kind": "image_folder", "path": str(tmp_path / "nope"), "license": "x"}])
    proc = snakemake_images(project, check=False)
    assert proc.returncode != 0
    assert "nope" in proc.stdout + proc.stderr


def test_policy_end_to_end(project: Path, tmp_path: Path) -> None:
    """Minors excluded with every copy, NSFW flagged, annotations and overrides honoured,
    booru records joined, and none of it reaching the export."""
    import hashlib

    folder = tmp_path / "art"
    folder.mkdir()
    photos = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "coins.png"]
    for i, name in enumerate(photos):
        _photo(name, (320, 300), i).save(folder / f"p{i}.png")
    (folder / "p0.json").write_text(json.dumps({"tags": ["Lolicon", "smile"], "rating": "e"}))
    shutil.copy(folder / "p0.png", folder / "copy_of_p0.png")  # untagged exact copy
    (folder / "p1.json").write_text(json.dumps({"tags": ["1girl", "nude"], "rating": "q"}))
    (folder / "p2.txt").write_text("cat, whiskers")
    (folder / "p3.txt").write_text("rocket, sky")
    (folder / "p4.txt").write_text("motorcycle")
    (folder / "p5.txt").write_text("coin")
    notes = tmp_path / "notes.csv"
    notes.write_text("filename,archetype,emotion,harmony_score,notes\np2.png,pet,calm,3,fine\np3.png,vehicle,calm,1,off-model\n")
    sha5 = hashlib.sha256((folder / "p5.png").read_bytes()).hexdigest()
    sha4 = hashlib.sha256((folder / "p4.png").read_bytes()).hexdigest()
    sha0 = hashlib.sha256((folder / "p0.png").read_bytes()).hexdigest()
    overrides = tmp_path / "overrides.csv"
    overrides.write_text(
        "sha256,action,add_tags,remove_tags,caption,note\n"
        f"{sha5},exclude,,,,not ours\n{sha4},,red_motorcycle,,a red motorcycle,\n{sha0},keep,,,,trying to re-admit\n"
    )
    booru = tmp_path / "booru"
    booru.mkdir()
    _photo("moon.png", (300, 300), 1).save(booru / "m.png")
    md5 = hashlib.md5((booru / "m.png").read_bytes()).hexdigest()
    (tmp_path / "posts.json").write_text(json.dumps([
        {"id": 7, "md5": md5, "rating": "s", "tag_string": "moon night_sky", "tag_string_artist": "", "score": 12,
         "image_width": 300, "image_height": 300, "file_ext": "png", "source": "https://example.invalid/7"},
        {"id": 8, "md5": "0" * 32, "rating": "g", "tag_string": "ghost", "file_ext": "png"},
    ]))
    set_params(project, demo=False, sources=[
        {"name": "art", "kind": "image_folder", "path": str(folder), "license": "CC0-1.0"},
        {"name": "dump", "kind": "booru", "path": str(booru), "metadata": str(tmp_path / "posts.json"), "site": "danbooru", "license": "CC-BY-4.0"},
    ])
    set_params(project, annotations=[str(notes)], overrides=str(overrides), report__min_kept=1,
               balance={"columns": ["archetype", "emotion"], "default": {"min": 2, "target": 3, "ideal": 4}, "cells": []})
    snakemake_images(project)

    rejected = _read(project, "data/manifests/rejected.parquet", schemas.REJECTED).set_index("item_id")
    kept = _read(project, "data/export/manifest.parquet", schemas.EXPORT).set_index("item_id")
    for minor in ("art:p0.png", "art:copy_of_p0.png"):
        assert rejected.loc[minor, "rule"] == "minors", minor
        assert "loli" in rejected.loc[minor, "triggered_tags"]
    assert rejected.loc["art:p3.png", "reason"] == "low_harmony"
    assert rejected.loc["art:p5.png", "rule"] == "override"
    assert kept.loc["art:p1.png", "nsfw_flag"] and "nsfw" in kept.loc["art:p1.png", "flags"]
    assert kept.loc["art:p4.png", "caption"] == "a red motorcycle"
    assert "red_motorcycle" in kept.loc["art:p4.png", "tags"]
    assert kept.loc["dump:m.png", "rating"] == "sensitive" and "moon" in kept.loc["dump:m.png", "tags"]
    exported = {p.name for p in (project / "data/export").rglob("*") if p.is_file()}
    assert not any(name.startswith(("p0_", "copy_of_p0_")) for name in exported)

    report = (project / "data/report/dataset-report.md").read_text()
    assert "| minors | 2 |" in report
    assert "## Balance" in report and "under_min" in report
    assert "## Metadata records with no image" in report and f"| dump | 8 | {'0' * 32} |" in report
    metrics = json.loads((project / "data/report/metrics.json").read_text())
    assert metrics["excluded_by_rule"]["minors"] == 2 and metrics["unmatched_records"] == 1
