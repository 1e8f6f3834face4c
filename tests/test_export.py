"""export stage: Kohya layout, original bytes where possible, conversions said, config and attribution."""

from __future__ import annotations

import io
import contextlib
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageOps

import stage_helpers as H
from trainset import manifest, schemas
from trainset.stages import export

ART = "CC-BY-4.0 (Example Artist)"
GEN = "CC0-1.0"
SPLITS = {
    "art:2_portraits/cat.jpg": "val",
    "art:cmyk.jpg": "test",
    "gen:y.png": "val",
    "gen:z.png": "test",
}


def _palette_with_transparency() -> Image.Image:
    """A 16-colour palette image; saved with ``transparency=0`` its index 0 is transparent."""
    return H.sample("horse.png", (240, 200)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)


def _exif_rotated(path: Path) -> Path:
    """Pixels stored landscape (320x240) with EXIF orientation 6: upright it is 240x320."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return H.save(H.sample("camera.png", (320, 240)), path, quality=92, exif=exif.tobytes())


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    art, gen = root / "raw" / "art", root / "raw" / "gen"
    H.save(H.sample("astronaut.png", (256, 256)), art / "2_portraits" / "astro.png")
    (art / "2_portraits" / "astro.txt").write_text("1girl, blue_sky, space_suit\n")
    H.save(H.sample("chelsea.png", (300, 200)), art / "2_portraits" / "cat.jpg", quality=90)
    H.save(H.sample("camera.png", (200, 200), mode="L"), art / "gray.png")
    H.save(H.sample("coffee.png", (300, 200)).convert("CMYK"), art / "cmyk.jpg", quality=90)
    H.save(H.sample("rocket.jpg", (300, 200)).convert("P"), art / "anim.gif")
    H.save(_palette_with_transparency(), art / "pal.png", transparency=0)
    _exif_rotated(art / "rot.jpg")
    H.save(H.sample("brick.png", (220, 220)), art / "lie.jpg", fmt="PNG")
    H.save(H.sample("grass.png", (220, 220)), art / "my photo (1).png")
    for name, photo in (("x", "coins.png"), ("y", "motorcycle_left.png"), ("z", "hubble_deep_field.jpg")):
        H.save(H.sample(photo, (300, 220)), gen / f"{name}.png")
    sources = [
        H.source(art, name="art", license=ART, weight=1.6),
        H.source(gen, name="gen", license=GEN, generated=True, weight=0.2),
    ]
    c = H.Chain(root, sources)
    c.through_dedup(min_side=64, max_distance=10)
    captioned = c.caption()
    assert len(captioned) == 12, "every fixture image is distinct and kept"
    rows = captioned.copy()
    rows["split"] = [SPLITS.get(i, "train") for i in rows["item_id"]]
    manifest.write(rows, c.p["split"], schemas.SPLIT)
    written = c.export(out_dir="data/export")
    return c, written


def _row(written, item_id):
    return H.by_id(written)[item_id]


def _out(c, row) -> Path:
    return c.p["export"] / row["export_path"]


def test_manifest_validates_and_matches_return(built):
    c, written = built
    on_disk = manifest.read(c.p["export"] / "manifest.parquet", schemas.EXPORT)
    assert on_disk["item_id"].tolist() == written["item_id"].tolist()
    assert len(on_disk) == 12
    assert on_disk["export_path"].is_unique
    split = H.by_id(c.read("split", schemas.SPLIT))
    for row in on_disk.to_dict("records"):
        src = split[row["item_id"]]
        for col in ("sha256", "source", "license", "split", "subset", "caption", "width", "height", "rating", "cluster_id"):
            assert row[col] == src[col], col
        assert list(row["tags"]) == list(src["tags"])
        assert H.sha256(_out(c, row)) == row["export_sha256"]


def test_train_items_in_kohya_repeat_folders(built):
    c, written = built
    split = H.by_id(c.read("split", schemas.SPLIT))
    train = written[written["split"] == "train"]
    assert len(train) == 8
    for row in train.to_dict("records"):
        src = split[row["item_id"]]
        repeats = max(1, round(src["repeats"] * src["weight"]))
        assert row["repeats"] == repeats
        parts = Path(row["export_path"]).parts
        assert parts[:2] == ("kohya", f"{repeats}_{src['subset']}")
        assert len(parts) == 3
        assert _out(c, row).is_file()
    folders = {Path(p).parts[1] for p in train["export_path"]}
    # 2 x 1.6 = 3.2 -> 3; 1 x 1.6 -> 2; 1 x 0.2 rounds to 0, raised to 1
    assert folders == {"3_portraits", "2_art", "1_gen"}


def test_val_and_test_items_under_split_folders(built):
    c, written = built
    for item_id, split in SPLITS.items():
        row = _row(written, item_id)
        subset = "portraits" if "portraits" in item_id else item_id.split(":")[0]
        parts = Path(row["export_path"]).parts
        assert parts[:2] == (split, subset)
        assert _out(c, row).is_file()
    assert not any(p.startswith("kohya/") for p in written.loc[written["split"] != "train", "export_path"])


def test_caption_files_beside_every_image(built):
    c, written = built
    for row in written.to_dict("records"):
        txt = _out(c, row).with_suffix(".txt")
        assert txt.read_text(encoding="utf-8") == row["caption"] + "\n"
    assert _row(written, "art:2_portraits/astro.png")["caption"] == "1girl, blue sky, space suit"


def test_no_stray_files(built):
    c, written = built
    files = {p.relative_to(c.p["export"]).as_posix() for p in c.p["export"].rglob("*") if p.is_file()}
    expected = set(written["export_path"]) | {str(Path(p).with_suffix(".txt").as_posix()) for p in written["export_path"]}
    expected |= {"manifest.parquet", "dataset_config.toml", "ATTRIBUTION.md"}
    assert files == expected
    assert not [p for p in c.p["export"].parent.iterdir() if p.name.startswith(".")], "no temporary folders left"


@pytest.mark.parametrize("item_id", ["art:2_portraits/astro.png", "art:2_portraits/cat.jpg", "art:gray.png", "gen:x.png"])
def test_original_bytes_kept(built, item_id):
    c, written = built
    row = _row(written, item_id)
    raw = c.root / "raw" / item_id.split(":")[0] / item_id.split(":", 1)[1]
    assert _out(c, row).read_bytes() == raw.read_bytes()
    assert row["export_sha256"] == row["sha256"]
    assert pd.isna(row["conversion"])
    assert Path(row["export_path"]).suffix == {"PNG": ".png", "JPEG": ".jpg"}[row["export_format"]]


def test_cmyk_jpeg_converted_to_rgb(built):
    c, written = built
    row = _row(written, "art:cmyk.jpg")
    assert row["conversion"] == "mode CMYK -> RGB"
    assert row["export_format"] == "PNG"
    assert row["export_path"].endswith(".png")
    assert row["export_sha256"] != row["sha256"]
    with Image.open(_out(c, row)) as im:
        assert (im.format, im.mode, im.size) == ("PNG", "RGB", (300, 200))
    with Image.open(c.root / "raw" / "art" / "cmyk.jpg") as orig:
        expected = np.asarray(orig.convert("RGB"))
    with Image.open(_out(c, row)) as im:
        assert np.array_equal(np.asarray(im), expected)


def test_gif_converted_to_png(built):
    c, written = built
    row = _row(written, "art:anim.gif")
    assert row["conversion"].startswith("format GIF -> PNG")
    assert row["export_format"] == "PNG"
    assert row["export_path"].endswith(".png")
    with Image.open(_out(c, row)) as im:
        im.load()
        assert im.format == "PNG"
        out_mode = im.mode
        out = np.asarray(im.convert("RGB"))
    # the conversion text names the mode the file really has
    assert row["conversion"] == f"format GIF -> PNG; mode P -> {out_mode}"
    assert out_mode == "RGB"  # no transparency in the GIF: nothing to keep an alpha channel for
    with Image.open(c.root / "raw" / "art" / "anim.gif") as orig:
        assert np.array_equal(out, np.asarray(orig.convert("RGB")))


def test_palette_png_with_transparency_is_flattened_by_default(built):
    c, written = built
    row = _row(written, "art:pal.png")
    assert row["conversion"] == "mode P -> RGB; alpha flattened onto #ffffff"
    assert row["export_format"] == "PNG"
    with Image.open(c.root / "raw" / "art" / "pal.png") as orig:
        transparent = np.asarray(orig) == 0
        colours = np.asarray(orig.convert("RGB"))
    assert transparent.any()
    with Image.open(_out(c, row)) as im:
        assert im.mode == "RGB"
        out = np.asarray(im)
    assert (out[transparent] == 255).all()  # the default background, white
    assert np.array_equal(out[~transparent], colours[~transparent])


def test_palette_png_with_transparency_stays_rgba_with_keep_alpha(built, tmp_path):
    c, _ = built
    out = tmp_path / "export"
    row = H.by_id(c.export({**H.DEFAULT_EXPORT, "keep_alpha": True}, out_dir=out))["art:pal.png"]
    assert row["conversion"] == "mode P -> RGBA"
    assert row["export_format"] == "PNG"
    with Image.open(out / row["export_path"]) as im:
        assert im.mode == "RGBA"
        alpha = np.asarray(im)[..., 3]
    with Image.open(c.root / "raw" / "art" / "pal.png") as orig:
        transparent = np.asarray(orig) == 0
        expected = np.asarray(orig.convert("RGBA"))
    assert transparent.any()
    assert (alpha[transparent] == 0).all() and (alpha[~transparent] == 255).all()
    with Image.open(out / row["export_path"]) as im:
        assert np.array_equal(np.asarray(im), expected)


def test_exif_rotation_applied(built):
    c, written = built
    row = _row(written, "art:rot.jpg")
    assert row["conversion"] == "EXIF orientation 6 applied"
    assert row["export_format"] == "PNG"
    assert (row["width"], row["height"]) == (240, 320)
    with Image.open(c.root / "raw" / "art" / "rot.jpg") as orig:
        assert orig.size == (320, 240)
        upright = np.asarray(ImageOps.exif_transpose(orig))
    with Image.open(_out(c, row)) as im:
        assert im.size == (240, 320)
        assert im.getexif().get(0x0112, 1) == 1
        assert np.array_equal(np.asarray(im), upright)


def test_lying_extension_gets_the_real_one(built):
    c, written = built
    row = _row(written, "art:lie.jpg")
    assert row["export_format"] == "PNG"
    assert row["export_path"].endswith(".png")
    assert Path(row["export_path"]).name == f"lie_{row['sha256'][:8]}.png"
    assert pd.isna(row["conversion"])
    assert _out(c, row).read_bytes() == (c.root / "raw" / "art" / "lie.jpg").read_bytes()
    assert row["export_sha256"] == row["sha256"]


def test_file_names_are_safe(built):
    _, written = built
    row = _row(written, "art:my photo (1).png")
    assert Path(row["export_path"]).name == f"my_photo_1_{row['sha256'][:8]}.png"
    for path in written["export_path"]:
        assert " " not in path and "(" not in path


def test_dataset_config_toml(built):
    c, written = built
    doc = tomllib.loads((c.p["export"] / "dataset_config.toml").read_text())
    assert doc["general"] == {"caption_extension": ".txt", "keep_tokens": 0, "shuffle_caption": False}
    (dataset,) = doc["datasets"]
    assert (dataset["resolution"], dataset["batch_size"], dataset["enable_bucket"]) == (1024, 1, True)
    train = written[written["split"] == "train"]
    seen = set()
    for subset in dataset["subsets"]:
        image_dir = Path(subset["image_dir"])
        # export ran with out_dir "data/export" from the project root: paths are relative to it
        assert not image_dir.is_absolute()
        assert image_dir.parts[:3] == ("data", "export", "kohya")
        folder = c.root / image_dir
        assert folder.is_dir()
        prefix, name = image_dir.name.split("_", 1)
        assert subset["num_repeats"] == int(prefix)
        assert subset["class_tokens"] == name
        images = {p.name for p in folder.iterdir() if p.suffix != ".txt"}
        expected = {Path(p).name for p in train["export_path"] if Path(p).parts[1] == image_dir.name}
        assert images == expected
        seen.add(image_dir.name)
    assert seen == {Path(p).parts[1] for p in train["export_path"]}


def test_attribution_names_sources_and_licenses(built):
    c, _ = built
    text = (c.p["export"] / "ATTRIBUTION.md").read_text()
    assert text.startswith("# Sources and licenses")
    # | source | license | generated | kept | train | val | test |
    assert f"| art | {ART} | 0 | 9 | 7 | 1 | 1 |" in text
    assert f"| gen | {GEN} | 3 | 3 | 1 | 1 | 1 |" in text
    assert "manifest.parquet" in text


def test_export_is_deterministic_and_replaces_the_folder(built):
    c, written = built
    (c.p["export"] / "stale.png").write_bytes(b"left over from an old build")
    before = {p: (c.p["export"] / p).read_bytes() for p in written["export_path"]}
    again = c.export(out_dir="data/export")
    assert not (c.p["export"] / "stale.png").exists()
    assert again["export_path"].tolist() == written["export_path"].tolist()
    assert {p: (c.p["export"] / p).read_bytes() for p in again["export_path"]} == before


def test_absolute_out_dir_gives_absolute_image_dirs(built, tmp_path):
    c, _ = built
    out = tmp_path / "elsewhere" / "export"
    c.export(out_dir=out)
    doc = tomllib.loads((out / "dataset_config.toml").read_text())
    for subset in doc["datasets"][0]["subsets"]:
        assert Path(subset["image_dir"]).is_absolute()
        assert Path(subset["image_dir"]).is_dir()


def test_trigger_word_and_kohya_options(built, tmp_path):
    c, _ = built
    params = {**H.DEFAULT_EXPORT, "trigger_word": "sks", "kohya": {"caption_extension": ".caption", "keep_tokens": 1, "resolution": 768, "batch_size": 4}}
    out = tmp_path / "export"
    written = c.export(params, out_dir=out)
    doc = tomllib.loads((out / "dataset_config.toml").read_text())
    assert {s["class_tokens"] for s in doc["datasets"][0]["subsets"]} == {"sks"}
    assert doc["general"]["caption_extension"] == ".caption"
    assert doc["general"]["keep_tokens"] == 1
    assert (doc["datasets"][0]["resolution"], doc["datasets"][0]["batch_size"]) == (768, 4)
    for path in written["export_path"]:
        assert (out / path).with_suffix(".caption").is_file()
        assert not (out / path).with_suffix(".txt").exists()


def test_keep_tokens_follow_the_captions_fixed_start(built, tmp_path):
    """Kohya keeps the trigger word and the prefix in place when it shuffles; a disagreeing value fails."""
    c, _ = built
    kohya = {k: v for k, v in H.DEFAULT_EXPORT["kohya"].items() if k != "keep_tokens"}
    caption = {"trigger_word": "sks", "prefix": ["score_9", "score_8_up"]}
    out = tmp_path / "export"
    c.export({**H.DEFAULT_EXPORT, "kohya": kohya, "caption": caption}, out_dir=out)
    assert tomllib.loads((out / "dataset_config.toml").read_text())["general"]["keep_tokens"] == 3
    with pytest.raises(ValueError, match=r"keep_tokens is 1, but captions start with 3 fixed token"):
        c.export({**H.DEFAULT_EXPORT, "kohya": {**kohya, "keep_tokens": 1}, "caption": caption}, out_dir=tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_exported_kohya_config_passes_the_sd_scripts_schema_with_bucketing_from_params(built, tmp_path):
    from trainset import kohya_config

    c, _ = built
    kohya = {**{k: v for k, v in H.DEFAULT_EXPORT["kohya"].items() if k != "keep_tokens"}, "resolution": [768, 512],
             "min_bucket_reso": 256, "max_bucket_reso": 1024, "bucket_reso_steps": 64, "bucket_no_upscale": True,
             "shuffle_caption": True, "flip_aug": False}
    out = tmp_path / "export"
    c.export({**H.DEFAULT_EXPORT, "kohya": kohya, "caption": {"trigger_word": "sks"}}, out_dir=out)
    doc = kohya_config.validate_file(out / "dataset_config.toml")
    assert doc["general"] == {"caption_extension": ".txt", "shuffle_caption": True, "flip_aug": False, "keep_tokens": 1}
    dataset = doc["datasets"][0]
    assert dataset["resolution"] == [768, 512] and dataset["min_bucket_reso"] == 256 and dataset["bucket_no_upscale"] is True


@pytest.mark.parametrize(("kohya", "message"), [
    ({"num_repeat": 2}, r"unknown options \['num_repeat'\]"),
    ({"image_dir": "x"}, "written by the export itself"),
    ({"min_bucket_reso": 300}, "not divisible by bucket_reso_steps"),
    ({"resolution": "1024"}, r"datasets\[0\]\.resolution"),
])
def test_kohya_options_sd_scripts_would_refuse_fail_before_anything_is_written(built, tmp_path, kohya, message):
    c, _ = built
    with pytest.raises(ValueError, match=message):
        c.export({**H.DEFAULT_EXPORT, "kohya": {"caption_extension": ".txt", **kohya}}, out_dir=tmp_path / "export")
    assert not (tmp_path / "export").exists()


def test_originals_only_beside_the_combined_export(built, tmp_path):
    """The sequential option: originals/ holds the train split without generated images, with its own config."""
    from trainset import kohya_config

    c, _ = built
    out = tmp_path / "export"
    written = c.export({**H.DEFAULT_EXPORT, "originals_only": True}, out_dir=out)
    train = written[written["split"] == "train"]
    originals = train[~train["generated"]]
    assert len(originals) and train["generated"].any()
    for rel in train["export_path"]:
        copy = out / "originals" / rel
        if rel in set(originals["export_path"]):
            assert copy.read_bytes() == (out / rel).read_bytes()
            assert copy.with_suffix(".txt").read_text() == (out / rel).with_suffix(".txt").read_text()
        else:
            assert not copy.exists()
    doc = kohya_config.validate_file(out / "originals" / "dataset_config.toml")
    dirs = {Path(s["image_dir"]) for s in doc["datasets"][0]["subsets"]}
    assert dirs == {out / "originals" / Path(rel).parent for rel in originals["export_path"]}
    assert not (tmp_path / "plain").exists()
    c.export(out_dir=tmp_path / "plain")
    assert not (tmp_path / "plain" / "originals").exists()  # off by default


def test_a_source_trigger_word_leads_its_captions_and_names_its_kohya_subset(built, tmp_path):
    from trainset.stages import caption as caption_stage

    c, _ = built
    with contextlib.chdir(c.root):
        written = caption_stage.run(c.p["deduped"], tmp_path / "captioned.parquet", {"background": {"check": False}},
                                    source_triggers={"gen": "genstyle"})
    by_source = {s: set(g["caption"].str.split(", ").str[0]) for s, g in written.groupby("source")}
    assert by_source["gen"] == {"genstyle"} and "genstyle" not in by_source["art"]
    rows = written.copy()
    rows["split"] = "train"
    split_path = tmp_path / "split.parquet"
    manifest.write(rows, split_path, schemas.SPLIT)
    out = tmp_path / "export"
    with contextlib.chdir(c.root):
        export.run(split_path, out, {**H.DEFAULT_EXPORT, "source_triggers": {"gen": "genstyle"}})
    subsets = tomllib.loads((out / "dataset_config.toml").read_text())["datasets"][0]["subsets"]
    gen = [s for s in subsets if s["class_tokens"] == "genstyle"]
    assert len(gen) == 1 and gen[0]["keep_tokens"] == 1  # its captions start with a fixed word the others lack
    assert all("keep_tokens" not in s for s in subsets if s["class_tokens"] != "genstyle")


def test_convert_to_jpeg(built, tmp_path):
    c, _ = built
    params = {**H.DEFAULT_EXPORT, "keep_formats": ["JPEG"], "convert_to": "JPEG"}
    out = tmp_path / "export"
    written = H.by_id(c.export(params, out_dir=out))
    cat = written["art:2_portraits/cat.jpg"]
    assert cat["export_sha256"] == cat["sha256"]
    pal = written["art:pal.png"]
    assert pal["export_format"] == "JPEG" and pal["export_path"].endswith(".jpg")
    with Image.open(out / pal["export_path"]) as im:
        assert (im.format, im.mode) == ("JPEG", "RGB")
    # JPEG holds no alpha: the used transparency is flattened, and the text says so
    assert pal["conversion"] == "format PNG -> JPEG; mode P -> RGB; alpha flattened onto #ffffff"
    astro = written["art:2_portraits/astro.png"]
    assert astro["conversion"] == "format PNG -> JPEG"


def test_source_changed_since_ingest_fails_and_keeps_old_export(built, tmp_path):
    c, written = built
    before = (c.p["export"] / "manifest.parquet").read_bytes()
    raw = c.root / "raw" / "art" / "gray.png"
    original = raw.read_bytes()
    try:
        H.save(H.sample("camera.png", (200, 200), mode="L").rotate(90), raw)
        with pytest.raises(RuntimeError, match="changed since ingest"):
            c.export(out_dir="data/export")
    finally:
        raw.write_bytes(original)
    assert (c.p["export"] / "manifest.parquet").read_bytes() == before
    assert not [p for p in c.p["export"].parent.iterdir() if p.name.startswith(".")]


def test_empty_split_exports_empty_manifest(tmp_path):
    split_path = tmp_path / "split.parquet"
    H.write_manifest([], split_path, schemas.SPLIT)
    out = tmp_path / "export"
    written = export.run(split_path, out, H.DEFAULT_EXPORT)
    assert len(written) == 0
    assert len(manifest.read(out / "manifest.parquet", schemas.EXPORT)) == 0
    doc = tomllib.loads((out / "dataset_config.toml").read_text())
    assert doc["datasets"][0]["subsets"] == []
    assert (out / "ATTRIBUTION.md").read_text().startswith("# Sources and licenses")


def test_conversion_reason_and_target_mode_units():
    class Row:
        format, mode, exif_orientation = "PNG", "RGB", 1

    keep_f, keep_m = ["PNG", "JPEG"], ["RGB", "RGBA", "L"]
    assert export.conversion_reason(Row, keep_f, keep_m, "PNG") is None
    Row.format, Row.mode, Row.exif_orientation = "BMP", "LA", 3
    # no audit measures on the row: an alpha mode is taken to use its alpha
    assert export.conversion_reason(Row, keep_f, keep_m, "PNG") == "format BMP -> PNG; mode LA -> RGB; alpha flattened onto #ffffff; EXIF orientation 3 applied"
    assert export.conversion_reason(Row, keep_f, keep_m, "PNG", keep_alpha=True) == "format BMP -> PNG; mode LA -> RGBA; EXIF orientation 3 applied"
    Row.has_alpha, Row.alpha_min = True, 255  # an alpha channel, all opaque
    assert export.conversion_reason(Row, keep_f, keep_m, "PNG") == "format BMP -> PNG; mode LA -> RGB; EXIF orientation 3 applied"
    assert export.target_mode("CMYK", keep_m) == "RGB"
    assert export.target_mode("RGBA", keep_m) == "RGBA"
    assert export.target_mode("LA", ["RGB"]) == "RGB"
    assert export.target_mode("I;16", keep_m) == "RGB"
    for mode in ("CMYK", "P", "LA", "I;16", "I", "F", "1"):
        assert export.target_mode(mode, keep_m) == "RGB"
    assert export.target_mode("RGBA", keep_m, alpha_used=True) == "RGB"
    assert export.target_mode("P", keep_m, alpha_used=True, keep_alpha=True) == "RGBA"
    assert export.output_format("JPEG", "RGBA") == "PNG" and export.output_format("WEBP", "RGBA") == "WEBP"
    assert export.output_format("JPEG", "RGB") == "JPEG"


# --- conversions driven by the audit measures --------------------------------------------

KEEP = dict(keep_formats=["PNG", "JPEG", "WEBP"], keep_modes=["RGB", "RGBA", "L"])


def _audited_row(path: Path):
    """The row the export sees for ``path``: its audit features (as the split manifest holds them)."""
    from types import SimpleNamespace

    from trainset import features

    return SimpleNamespace(**features.extract(str(path)), original_name=path.name)


def _decode(data: bytes):
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return im.format, im.mode, getattr(im, "n_frames", 1), np.asarray(im).copy()


def _gradient16(path: Path) -> tuple[Path, np.ndarray]:
    values = np.tile(np.linspace(0, 65535, 256).round().astype(np.uint16), (40, 1))
    Image.fromarray(values).save(path)
    return path, values


def _cutout(path: Path) -> tuple[Path, np.ndarray]:
    """An RGBA photo whose left quarter is transparent and next quarter half transparent."""
    im = H.sample("coffee.png", (200, 100)).convert("RGBA")
    alpha = np.full((100, 200), 255, np.uint8)
    alpha[:, :50], alpha[:, 50:100] = 0, 128
    im.putalpha(Image.fromarray(alpha))
    im.save(path)
    return path, np.asarray(im)


def test_16_bit_to_rgb_scales_instead_of_clipping(tmp_path):
    path, values = _gradient16(tmp_path / "deep.png")
    row = _audited_row(path)
    assert (row.mode, row.bit_depth) == ("I;16", 16)
    assert export.conversion_reason(row, convert_to="PNG", **KEEP) == "mode I;16 -> RGB"
    data, mode = export.convert(path.read_bytes(), KEEP["keep_modes"], "PNG")
    fmt, out_mode, _, out = _decode(data)
    assert (fmt, mode, out_mode) == ("PNG", "RGB", "RGB")
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    expected = np.rint(values.astype(np.float64) * 255 / 65535)
    assert np.abs(out[..., 0].astype(int) - expected).max() <= 1
    row0 = out[0, :, 0].astype(int)
    assert (np.diff(row0) >= 0).all() and row0[0] == 0 and row0[-1] == 255
    assert (row0 == 255).sum() <= 2  # not clipped: Pillow's own I;16 -> RGB makes almost all of it white
    with Image.open(path) as im:
        assert (np.asarray(im.convert("RGB"))[0, :, 0] == 255).sum() > 200


@pytest.mark.parametrize(("background", "rgb"), [("#ffffff", (255, 255, 255)), ("#ff0000", (255, 0, 0)), ("navy", (0, 0, 128))])
def test_used_alpha_is_flattened_onto_the_background(tmp_path, background, rgb):
    path, rgba = _cutout(tmp_path / "cutout.png")
    row = _audited_row(path)
    assert (row.has_alpha, row.alpha_min) == (True, 0)
    assert export.conversion_reason(row, convert_to="PNG", background=background, **KEEP) == f"mode RGBA -> RGB; alpha flattened onto {background}"
    data, mode = export.convert(path.read_bytes(), KEEP["keep_modes"], "PNG", background=background)
    _, out_mode, _, out = _decode(data)
    assert mode == out_mode == "RGB"
    assert (out[:, :50] == rgb).all()  # fully transparent: the background
    assert np.array_equal(out[:, 100:], rgba[:, 100:, :3])  # opaque: untouched
    half = rgba[:, 50:100, :3].astype(float) * 128 / 255 + np.array(rgb, dtype=float) * 127 / 255
    assert np.abs(out[:, 50:100].astype(float) - half).max() <= 1.01  # half transparent: blended


def test_keep_alpha_keeps_rgba_and_png(tmp_path):
    path, rgba = _cutout(tmp_path / "cutout.png")
    row = _audited_row(path)
    assert export.conversion_reason(row, convert_to="PNG", keep_alpha=True, **KEEP) is None  # original bytes kept
    # even where everything else becomes JPEG, a kept alpha stays an RGBA PNG
    jpeg = dict(keep_formats=["JPEG"], keep_modes=KEEP["keep_modes"])
    assert export.conversion_reason(row, convert_to="JPEG", keep_alpha=True, **jpeg) is None
    data, mode = export.convert(path.read_bytes(), KEEP["keep_modes"], "JPEG", keep_alpha=True)
    fmt, out_mode, _, out = _decode(data)
    assert (mode, export.output_format("JPEG", mode), fmt, out_mode) == ("RGBA", "PNG", "PNG", "RGBA")
    assert np.array_equal(out, rgba)


def test_opaque_alpha_is_not_flattened(tmp_path):
    path = tmp_path / "opaque.png"
    H.sample("coffee.png", (200, 100)).convert("RGBA").save(path)
    row = _audited_row(path)
    assert (row.has_alpha, row.alpha_min) == (True, 255)
    assert export.conversion_reason(row, convert_to="PNG", **KEEP) is None
    data, mode = export.convert(path.read_bytes(), KEEP["keep_modes"], "JPEG")
    assert _decode(data)[:2] == ("JPEG", "RGB")


@pytest.mark.parametrize(("fmt", "suffix", "convert_to"), [("GIF", "gif", "PNG"), ("PNG", "png", "PNG"), ("WEBP", "webp", "PNG"), ("GIF", "gif", "JPEG")])
def test_animated_exports_its_first_frame_as_a_still(tmp_path, fmt, suffix, convert_to):
    frames = [H.sample(n, (120, 80)) for n in ("astronaut.png", "coffee.png", "chelsea.png")]
    path = tmp_path / f"anim.{suffix}"
    frames[0].save(path, format=fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    row = _audited_row(path)
    assert (row.n_frames, row.animated) == (3, True)
    reason = export.conversion_reason(row, convert_to=convert_to, **KEEP)
    assert "first frame of 3" in reason
    if fmt != convert_to:
        assert reason.startswith(f"format {fmt} -> {convert_to}; first frame of 3")
    data, mode = export.convert(path.read_bytes(), KEEP["keep_modes"], convert_to)
    out_fmt, out_mode, n_frames, out = _decode(data)
    assert (out_fmt, n_frames, out_mode) == (convert_to, 1, "RGB")
    with Image.open(path) as im:
        first = np.asarray(im.convert("RGB")).astype(int)
    tolerance = 12 if convert_to == "JPEG" else 0
    assert np.abs(out.astype(int) - first).mean() <= tolerance


def _split_manifest(tmp_path: Path, paths: list[Path]) -> Path:
    """A split manifest holding ``paths`` with their real audit features (other columns: defaults)."""
    from trainset import features

    rows = []
    for p in paths:
        feats = features.extract(str(p))
        row = H.item_row(f"src:{p.name}", H.sha256(p), path=str(p), original_name=p.name, **{k: v for k, v in feats.items() if k in schemas.IMAGE_COLUMNS})
        for name, col in schemas.SPLIT.columns.items():  # any column this test does not care about
            if name not in row:
                dtype = str(col.dtype)
                row[name] = ([] if dtype == "object" else False if dtype == "bool" else float("nan") if dtype == "float64"
                             else 1 if dtype == "int64" else None if col.nullable else "")
        rows.append(row)
    out = tmp_path / "split.parquet"
    H.write_manifest(rows, out, schemas.SPLIT)
    return out


def test_run_applies_background_keep_alpha_16_bit_and_animation(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    cutout, _ = _cutout(raw / "cutout.png")
    deep, _ = _gradient16(raw / "deep.png")
    anim = raw / "anim.gif"
    frames = [H.sample(n, (120, 80)).convert("P") for n in ("astronaut.png", "coffee.png")]
    frames[0].save(anim, save_all=True, append_images=frames[1:], duration=100)
    split = _split_manifest(tmp_path, [cutout, deep, anim])

    flat = H.by_id(export.run(split, tmp_path / "flat", {**H.DEFAULT_EXPORT, "background": "#00ff00", "convert_to": "JPEG"}))
    row = flat["src:cutout.png"]
    # PNG is a kept format: the re-encode to convert_to is implied, as for every conversion
    assert (row["export_format"], row["conversion"]) == ("JPEG", "mode RGBA -> RGB; alpha flattened onto #00ff00")
    with Image.open(tmp_path / "flat" / row["export_path"]) as im:
        assert im.mode == "RGB"
        corner = np.asarray(im)[:40, :40].astype(int)
    assert np.abs(corner - [0, 255, 0]).max() <= 8  # green, give or take JPEG
    assert flat["src:deep.png"]["conversion"] == "mode I;16 -> RGB"
    assert flat["src:anim.gif"]["conversion"] == "format GIF -> JPEG; first frame of 2; mode P -> RGB"
    with Image.open(tmp_path / "flat" / flat["src:anim.gif"]["export_path"]) as im:
        assert (im.format, getattr(im, "n_frames", 1)) == ("JPEG", 1)

    kept = H.by_id(export.run(split, tmp_path / "kept", {**H.DEFAULT_EXPORT, "keep_alpha": True, "convert_to": "JPEG", "keep_formats": ["JPEG"]}))
    row = kept["src:cutout.png"]
    assert (row["export_format"], row["export_path"][-4:]) == ("PNG", ".png")
    assert pd.isna(row["conversion"]) and row["export_sha256"] == row["sha256"]  # an RGBA PNG stays as it is
    with Image.open(tmp_path / "kept" / row["export_path"]) as im:
        assert im.mode == "RGBA"


def test_webdataset_and_hf_parquet_written_beside_the_kohya_layout_when_enabled(built, tmp_path):
    from datasets import load_dataset

    from trainset import export_formats

    c, _ = built
    params = {**H.DEFAULT_EXPORT, "webdataset": {"enabled": True, "shard_max_count": 5}, "hf_parquet": {"enabled": True}}
    out = tmp_path / "export"
    written = c.export(params, out_dir=out)
    assert export_formats.verify(out, written) == []
    shards = sorted((out / "webdataset").glob("*.tar"))
    assert [s.name for s in shards if s.name.startswith("train")] == ["train-000000.tar", "train-000001.tar"]
    train = load_dataset("parquet", data_files=export_formats.hf_data_files(out / "hf")["train"], split="train")
    assert train.num_rows == int((written["split"] == "train").sum())
    assert train[0]["image"].size[0] > 0 and isinstance(train[0]["tags"], list)
    # the Kohya layout beside them is the same files
    def files(root, skip=()):
        return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.relative_to(root).parts[0] not in skip}
    assert files(out, skip=("webdataset", "hf")) == files(c.p["export"])
