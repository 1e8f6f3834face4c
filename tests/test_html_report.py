"""The HTML report: charts, distributions (DVC plots data), thumbnails cached by content hash, the
page built from a real chain of stages, rendered in headless Chromium; no thumbnail ever exists
for an item the minors or NSFW-exclude rules excluded."""

from __future__ import annotations

import contextlib
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

import stage_helpers as H
from chromium import Chromium
from conftest import REPO, copy_workflow, set_params, snakemake
from trainset import charts, distributions, manifest, schemas, thumbnails
from trainset.stages import html_report

SVG = "{http://www.w3.org/2000/svg}"


# --------------------------------------------------------------------------- charts


def test_bars_draw_one_bar_per_category_and_series_scaled_to_the_largest():
    svg = charts.bars("sizes", ["a", "b", "c"], {"audited": [4, 2, 0], "kept": [2, 1, 0]})
    root = ET.fromstring(svg)
    bars = [r for r in root.iter(f"{SVG}rect") if r.find(f"{SVG}title") is not None]
    assert len(bars) == 6
    heights = {r.find(f"{SVG}title").text: float(r.get("height")) for r in bars}
    assert heights["a, audited: 4"] == pytest.approx(2 * heights["b, audited: 2"]) == pytest.approx(4 * heights["b, kept: 1"])
    assert heights["c, kept: 0"] == 0
    assert root.find(f"{SVG}title").text == "sizes"


def test_hbars_and_heatmap_are_valid_svg_with_escaped_text():
    svg = charts.hbars("tags <top>", ["a&b", "c"], {"items": [3, 1]})
    root = ET.fromstring(svg)
    assert [t.text for t in root.iter(f"{SVG}text")][:2] == ["tags <top>", "a&b"]
    cells = {("hero", "joy"): ("1 / 5", "under_min"), ("hero", "sad"): ("5 / 5", "on_target")}
    heat = ET.fromstring(charts.heatmap("balance", ["hero"], ["joy", "sad", "calm"], cells))
    fills = [r.get("fill") for r in heat.iter(f"{SVG}rect") if r.find(f"{SVG}title") is not None]
    assert fills == [charts.STATUS_COLOURS["under_min"], charts.STATUS_COLOURS["on_target"], charts.STATUS_COLOURS[""]]


# --------------------------------------------------------------------------- distributions


def _images(sizes: list[tuple[int, int]], decoded: list[bool] | None = None) -> pd.DataFrame:
    decoded = decoded or [True] * len(sizes)
    return pd.DataFrame({"width": [w for w, _ in sizes], "height": [h for _, h in sizes], "decoded": decoded})


def test_short_side_and_aspect_ratio_bins():
    audit = _images([(100, 300), (512, 512), (1024, 768), (3000, 2100), (0, 0)], decoded=[True, True, True, True, False])
    kept = audit.iloc[1:3]
    side = distributions.short_side(audit, kept).set_index("bin")
    assert side.loc["0-255", "audited"] == 1 and side.loc["512-767", "audited"] == side.loc["768-1023", "audited"] == 1 and side.loc["2048+", "audited"] == 1
    assert side["audited"].sum() == 4 and side["kept"].sum() == 2  # the undecoded item is in no bin
    aspect = distributions.aspect_ratio(audit, kept).set_index("bin")
    assert aspect.loc["0.00-0.50", "audited"] == 1      # 1:3
    assert aspect.loc["0.95-1.05", "kept"] == 1         # square
    assert aspect.loc["1.25-1.50", "kept"] == 1         # 4:3
    assert aspect.loc["1.25-1.50", "audited"] == 2      # 4:3 and 1.43


def test_caption_token_bins_end_with_the_items_over_the_window():
    kept = pd.DataFrame({"caption_tokens": [0, 14, 15, 75, 76, 200]})
    table = distributions.caption_tokens(kept, 75)
    assert table["bin"].tolist() == ["0-14", "15-29", "30-44", "45-59", "60-75", "over 75"]
    assert table["kept"].tolist() == [2, 1, 0, 0, 1, 2]


def test_tags_top_counts_items_not_repeats_and_breaks_ties_by_name():
    kept = pd.DataFrame({"tags": [["b", "a", "a"], ["a", "c"], ["c", "b"], ["d"]]})
    top = distributions.tags_top(kept, 3)
    assert top.values.tolist() == [["a", 2], ["b", 2], ["c", 2]]
    assert distributions.tags_per_item(kept).set_index("bin").loc["2-4", "kept"] == 3


def test_plots_declared_in_dvc_yaml_match_the_tables_written(tmp_path):
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["report"]
    declared = {}
    for entry in stage["plots"]:
        (path, props), = entry.items()
        declared[path] = (props["x"], props["y"], props["template"])
        assert props["persist"] is True
    assert declared == {f"data/report/plots/{name}.csv": spec for name, spec in distributions.PLOTS.items()}
    with pytest.raises(ValueError, match="no plot declared for nope"):
        distributions.write({"nope": pd.DataFrame()}, tmp_path)


# --------------------------------------------------------------------------- thumbnails


@pytest.fixture
def photo(tmp_path) -> tuple[Path, str]:
    path = H.save(H.sample("astronaut.png", (400, 300)), tmp_path / "photo.png")
    return path, H.sha256(path)


def _sharpness(data: bytes) -> float:
    a = np.asarray(Image.open(__import__("io").BytesIO(data)).convert("L"), dtype=np.float64)
    return float(np.abs(np.diff(a, axis=0)).mean() + np.abs(np.diff(a, axis=1)).mean())


def test_thumbnail_is_made_once_per_content_and_drawing(photo, tmp_path):
    path, sha = photo
    cache = tmp_path / "thumbs"
    first, made = thumbnails.ensure(cache, sha, path, 160)
    assert made and first == cache / sha[:2] / f"{sha}-160.webp"
    with Image.open(first) as im:
        assert im.format == "WEBP" and max(im.size) == 160 and im.size == (160, 120)
    stamp = first.stat().st_mtime_ns
    again, made_again = thumbnails.ensure(cache, sha, path, 160)
    assert again == first and not made_again and first.stat().st_mtime_ns == stamp
    other, made_other = thumbnails.ensure(cache, sha, path, 96)
    assert made_other and other != first


def test_blurred_thumbnail_keeps_no_detail(photo, tmp_path):
    path, _ = photo
    plain, blurred = thumbnails.render(path, 160), thumbnails.render(path, 160, blur=True)
    assert _sharpness(blurred) < _sharpness(plain) / 4


def test_thumbnail_is_upright_by_exif_orientation(tmp_path):
    im = H.sample("astronaut.png", (300, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    path = tmp_path / "rotated.jpg"
    im.save(path, exif=exif.tobytes())
    with Image.open(__import__("io").BytesIO(thumbnails.render(path, 120))) as thumb:
        assert thumb.size == (80, 120)


def test_prune_deletes_every_drawing_of_hidden_contents(photo, tmp_path):
    path, sha = photo
    cache = tmp_path / "thumbs"
    plain, _ = thumbnails.ensure(cache, sha, path, 160)
    blurred, _ = thumbnails.ensure(cache, sha, path, 160, blur=True)
    assert thumbnails.prune(cache, {sha}, plain_only=True) == 1
    assert not plain.exists() and blurred.exists()
    assert thumbnails.prune(cache, {sha, "f" * 64}) == 1 and not blurred.exists()


# --------------------------------------------------------------------------- the page, from a real chain


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Kept photos (one near copy, one NSFW-flagged), a minors exclusion with its untagged copy, a
    tiny image, a truncated JPEG; an empty conversation side."""
    root = tmp_path_factory.mktemp("html-report")
    raw = root / "raw"
    size = (220, 180)
    minor = H.save(H.sample("astronaut.png", size), raw / "minor.png")
    H.sidecar(minor, ["loli"], rating="q")
    H.write_bytes(raw / "minor_copy.png", minor.read_bytes())
    H.sidecar(H.save(H.sample("chelsea.png", size), raw / "cat.png"), ["cat", "whiskers"], rating="g")
    H.save(H.sample("chelsea.png", size).resize((200, 164), Image.Resampling.LANCZOS), raw / "cat_small.png")
    H.sidecar(H.save(H.sample("rocket.jpg", size), raw / "rocket.png"), ["rocket", "sky"], rating="g")
    H.sidecar(H.save(H.sample("coffee.png", size), raw / "coffee.png"), ["cup"], rating="explicit")  # kept, NSFW flag
    H.sidecar(H.save(H.sample("grass.png", size), raw / "grass.png"), ["grass"], rating="g")
    H.save(H.sample("moon.png", (40, 30)), raw / "tiny.png")
    H.truncated_jpeg(raw / "broken.jpg")
    c = H.Chain(root, [H.source(raw)])
    c.through_dedup(max_distance=10)
    c.caption()
    c.split()
    c.rejected()
    c.export()
    c.report()
    conv = root / "data" / "conversations"
    manifest.write(manifest.empty(schemas.CONVERSATION_STAGES), conv / "stages.parquet", schemas.CONVERSATION_STAGES)
    (root / "data" / "report" / "conversations-metrics.json").write_text(json.dumps({"go": None}))
    return c


def _page(c, tmp_path, **html) -> tuple[Path, dict]:
    paths = {k: c.p[k] for k in ("ingest", "audit", "rejected", "split", "clusters", "metrics")}
    paths["conversation_metrics"] = c.root / "data" / "report" / "conversations-metrics.json"
    paths["conversation_stages"] = c.root / "data" / "conversations" / "stages.parquet"
    out = tmp_path / "html"
    with contextlib.chdir(c.root):  # the manifests' paths are relative to the repository, as in the workflow
        result = html_report.run(paths, out, tmp_path / "plots", tmp_path / "cache", html_params=html,
                                 thresholds={"min_kept": 1, "max_rejected_share": 0.9}, balance_params={"columns": []})
    return out, result


def test_page_has_every_section_and_no_thumbnail_of_a_policy_exclusion(chain, tmp_path):
    out, result = _page(chain, tmp_path)
    html = (out / "index.html").read_text()
    for sid, _ in html_report.SECTIONS:
        assert f'<section id="{sid}">' in html
    rejected = chain.read("rejected", schemas.REJECTED)
    excluded = rejected[rejected["stage"] == "policy"]
    assert set(excluded["item_id"]) == {"src:minor.png", "src:minor_copy.png"}
    for item_id, sha in zip(excluded["item_id"], excluded["sha256"]):
        assert item_id not in html and sha not in html
    made = {p.name for p in (out / "thumbs").iterdir()} | {p.name for p in (tmp_path / "cache").rglob("*.webp")}
    assert not any(name.startswith(tuple(excluded["sha256"])) for name in made)
    assert result["hidden"] == 1  # one content, two items
    for src in re.findall(r'<img src="([^"]+)"', html):
        assert (out / src).is_file()
    assert "not decodable: truncated" in html
    assert html.count('class="tile keeper"') >= 1  # the cat's cluster marks the kept one
    assert "| minors" not in html and "<td>minors</td><td>minor_sexual</td><td>2</td>" in html


def test_nsfw_flagged_items_are_blurred_or_hidden_as_params_say(chain, tmp_path):
    kept = chain.read("split", schemas.SPLIT)
    coffee = kept.loc[kept["item_id"] == "src:coffee.png", "sha256"].item()
    assert kept.loc[kept["item_id"] == "src:coffee.png", "nsfw_flag"].item()
    out, _ = _page(chain, tmp_path / "blur")
    assert (out / "thumbs" / f"{coffee}-160-blur.webp").is_file() and not (out / "thumbs" / f"{coffee}-160.webp").exists()
    out, _ = _page(chain, tmp_path / "blur", nsfw_thumbnails="hide")  # same cache: the blurred file is pruned
    assert not any(p.name.startswith(coffee) for p in (tmp_path / "blur" / "cache").rglob("*"))
    html = (out / "index.html").read_text()
    assert coffee not in html and re.search(r'not shown \(policy or NSFW\)</div><figcaption><code>src:coffee.png</code>', html)
    with pytest.raises(ValueError, match="nsfw_thumbnails"):
        _page(chain, tmp_path / "bad", nsfw_thumbnails="maybe")


def test_second_page_reuses_every_thumbnail_and_is_byte_identical(chain, tmp_path):
    out, first = _page(chain, tmp_path)
    html = (out / "index.html").read_bytes()
    out, second = _page(chain, tmp_path)
    assert first["made"] > 0 and second["made"] == 0 and second["reused"] == first["made"]
    assert (out / "index.html").read_bytes() == html
    plots = {p.name: p.read_bytes() for p in (tmp_path / "plots").iterdir()}
    assert set(plots) == {f"{n}.csv" for n in distributions.PLOTS}


# --------------------------------------------------------------------------- the workflow, and Chromium


def test_demo_report_renders_in_headless_chromium(built_demo, tmp_path):
    index = built_demo / "data" / "report" / "html" / "index.html"
    with Chromium() as browser:
        browser.open(index.as_uri())
        ids = browser.evaluate("[...document.querySelectorAll('section[id]')].map(s => s.id)")
        images = browser.evaluate("[...document.images].map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])")
        keepers = browser.evaluate("document.querySelectorAll('#duplicates figure.keeper img').length")
        heading = browser.evaluate("document.querySelector('h1').textContent")
        shot = browser.screenshot(tmp_path / "report.png")
    assert ids == [sid for sid, _ in html_report.SECTIONS]
    assert len(images) >= 10
    broken = [src for src, complete, width in images if not (complete and width > 0)]
    assert not broken, f"thumbnails that did not load: {broken}"
    assert keepers >= 3
    assert heading == "Dataset report: GO"
    with Image.open(shot) as im:
        assert im.format == "PNG" and im.width >= 1000 and im.height > 2000
        assert np.asarray(im.convert("L")).std() > 20  # a page, not a blank


def test_workflow_makes_no_thumbnail_of_minors_or_nsfw_excluded_items(tmp_path):
    project = copy_workflow(tmp_path / "project")
    folder = tmp_path / "art"
    size = (320, 280)
    minor = H.save(H.sample("astronaut.png", size), folder / "minor.png")
    H.sidecar(minor, ["loli", "smile"], rating="e")
    H.save(H.sample("astronaut.png", size).resize((300, 262), Image.Resampling.LANCZOS), folder / "minor_near.png")  # untagged near copy
    explicit = H.save(H.sample("coffee.png", size), folder / "explicit.png")
    H.sidecar(explicit, ["nude"], rating="e")
    H.write_bytes(folder / "explicit_copy.png", explicit.read_bytes())
    H.save(H.sample("coffee.png", size).resize((300, 262), Image.Resampling.LANCZOS), folder / "explicit_near.png")
    H.sidecar(H.save(H.sample("coffee.png", (40, 30)), folder / "explicit_tiny.png"), ["nude"], rating="e")
    for k, name in enumerate(("chelsea.png", "rocket.jpg", "grass.png", "moon.png")):
        H.sidecar(H.save(H.sample(name, size), folder / f"ok{k}.png"), [name.split(".")[0]], rating="g")
    set_params(project, demo=False, sources=[{"name": "art", "kind": "image_folder", "path": str(folder), "license": "CC0-1.0"}],
               policy__nsfw__action="exclude", conversations__demo=False, report__min_kept=1)
    minor_sha = H.sha256(minor)
    stale = project / "data" / "cache" / "thumbs" / minor_sha[:2] / f"{minor_sha}-160.webp"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(thumbnails.render(minor, 160))  # as if an earlier build, before the tags, had drawn it
    snakemake(project, "data/report/html")

    rejected = manifest.read(project / "data/manifests/rejected.parquet", schemas.REJECTED).set_index("item_id")
    minors = {i for i in rejected.index if rejected.at[i, "rule"] == "minors"}
    nsfw = {i for i in rejected.index if rejected.at[i, "nsfw_flag"] or rejected.at[i, "rule"] == "nsfw"}
    assert {"art:minor.png", "art:minor_near.png"} <= minors
    assert {"art:explicit.png", "art:explicit_copy.png", "art:explicit_tiny.png"} <= nsfw
    excluded_shas = {rejected.at[i, "sha256"] for i in minors | nsfw}
    thumbs = list((project / "data/report/html/thumbs").iterdir()) + list((project / "data/cache/thumbs").rglob("*.webp"))
    assert thumbs, "the kept items have thumbnails"
    assert not [p for p in thumbs if p.name[:64] in excluded_shas]
    assert not stale.exists()
    html = (project / "data/report/html/index.html").read_text()
    assert not [i for i in minors | nsfw if i in html]
    with Chromium() as browser:
        browser.open((project / "data/report/html/index.html").as_uri())
        assert browser.evaluate("[...document.images].every(i => i.naturalWidth > 0)")
        assert browser.evaluate("document.querySelector('#policy table') !== null")
