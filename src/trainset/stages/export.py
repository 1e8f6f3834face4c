"""split -> export: a Kohya-ready folder tree, its dataset_config.toml, a manifest with
checksums, and an attribution summary of sources and licenses.

Original bytes are copied unless a conversion is needed (format or mode outside the
configured sets, an animation, transparency to flatten, or an EXIF orientation to apply);
the manifest says which and why.
"""

from __future__ import annotations

import io
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import tomli_w
from PIL import Image, ImageColor, ImageOps

from .. import atomic, captions, export_formats, features, hashing, kohya_config, manifest, progress, schemas

EXTENSIONS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


ALPHA_FORMATS = ("PNG", "WEBP", "TIFF")
"""Output formats that hold an RGBA image; a kept alpha goes to PNG when ``convert_to`` cannot."""


def alpha_used(row) -> bool:
    """Whether the row's image really uses transparency (audit's ``has_alpha`` and
    ``alpha_min`` < 255); a row without those measures is judged by its mode."""
    has, lowest = getattr(row, "has_alpha", None), getattr(row, "alpha_min", None)
    if has is None or lowest is None or pd.isna(lowest):
        return row.mode in features.ALPHA_MODES
    return bool(has) and int(lowest) < 255


def output_format(convert_to: str, mode: str) -> str:
    """The format a converted image is written in: ``convert_to``, or PNG for an image that
    keeps its alpha when ``convert_to`` cannot hold one (JPEG, BMP, GIF)."""
    return "PNG" if mode in features.ALPHA_MODES and convert_to not in ALPHA_FORMATS else convert_to


def conversion_reason(
    row, keep_formats: list[str], keep_modes: list[str], convert_to: str, out_mode: str | None = None,
    keep_alpha: bool = False, background: str = "#ffffff",
) -> str | None:
    """Why ``row`` is converted (None: keep its bytes). ``out_mode``, the mode of the converted
    file once known, replaces the predicted one: e.g. any image saved as JPEG ends up RGB
    rather than RGBA.

    Converted: a format outside ``keep_formats``; an animated image (its first frame is
    exported as a still); a mode outside ``keep_modes`` (to RGB); transparency that is
    really used, flattened onto ``background`` unless ``keep_alpha`` (then RGBA, in PNG
    when ``convert_to`` holds no alpha); an EXIF orientation to apply."""
    used = alpha_used(row)
    mode = out_mode or target_mode(row.mode, keep_modes, used, keep_alpha)
    fmt = output_format(convert_to, mode)
    animated = bool(getattr(row, "animated", False))
    reasons = []
    if (row.format not in keep_formats or animated) and row.format != fmt:
        reasons.append(f"format {row.format} -> {fmt}")
    if animated:
        reasons.append(f"first frame of {int(getattr(row, 'n_frames', 0) or 0) or 'several'}")
    if mode != row.mode:
        reasons.append(f"mode {row.mode} -> {mode}")
    if used and not keep_alpha:
        reasons.append(f"alpha flattened onto {background}")
    if row.exif_orientation != 1:
        reasons.append(f"EXIF orientation {row.exif_orientation} applied")
    return "; ".join(reasons) or None


def target_mode(mode: str, keep_modes: list[str], alpha_used: bool = False, keep_alpha: bool = False) -> str:
    """The mode an image is exported in: RGBA when its alpha is used and kept, RGB when it
    is used and flattened; otherwise its own mode when in ``keep_modes``, else RGB (CMYK, P,
    LA, I;16, I, F, 1 ...; 16- and 32-bit scaled to 8 bits, see :func:`convert`)."""
    if alpha_used:
        return "RGBA" if keep_alpha else "RGB"
    return mode if mode in keep_modes else "RGB"


def flatten(image: Image.Image, background: str = "#ffffff") -> Image.Image:
    """``image`` alpha-composited onto an opaque ``background`` (any PIL.ImageColor string): RGB."""
    rgba = _to_mode(image, "RGBA")
    canvas = Image.new("RGBA", rgba.size, (*ImageColor.getrgb(background)[:3], 255))
    return Image.alpha_composite(canvas, rgba).convert("RGB")


def _to_mode(image: Image.Image, mode: str) -> Image.Image:
    """``image.convert(mode)``, except that 16/32-bit images are scaled to 8 bits first
    (Pillow's own conversion clips every value above 255 to white)."""
    if image.mode == mode:
        return image
    if features.bit_depth(image.mode) > 8:
        gray = features.gray8(image)
        if mode == "RGBA" and "transparency" in image.info:
            key = np.asarray(image) == np.asarray(image.info["transparency"])
            out = gray.convert("RGBA")
            out.putalpha(Image.fromarray(np.where(key, 0, 255).astype(np.uint8)))
            return out
        return gray if mode == "L" else gray.convert(mode)
    return image.convert(mode)


def convert(data: bytes, keep_modes: list[str], convert_to: str, keep_alpha: bool = False, background: str = "#ffffff") -> tuple[bytes, str]:
    """Re-encode ``data`` upright (first frame only) in :func:`output_format`; returns the new
    bytes and their mode. Used transparency is flattened onto ``background`` unless
    ``keep_alpha``."""
    with features.no_pillow_pixel_limit(), Image.open(io.BytesIO(data)) as im:
        im.seek(0)
        im.load()
        im = ImageOps.exif_transpose(im)  # a single-frame copy, upright
        has_alpha, lowest = features.alpha_info(im)
        used = has_alpha and lowest < 255
        mode = target_mode(im.mode, keep_modes, used, keep_alpha)
        if used and not keep_alpha:
            im = flatten(im, background)
        else:
            if not used and mode in features.ALPHA_MODES and convert_to not in ALPHA_FORMATS:
                mode = "RGB"  # an unused alpha is dropped rather than forcing a PNG
            im = _to_mode(im, mode)
        fmt = output_format(convert_to, im.mode)
        if fmt == "JPEG" and im.mode not in ("L", "RGB", "CMYK"):
            im = _to_mode(im, "RGB")
        buf = io.BytesIO()
        im.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue(), im.mode


def file_name(row, ext: str) -> str:
    stem = _UNSAFE.sub("_", Path(row.original_name).stem).strip("._")[:80] or "image"
    return f"{stem}_{row.sha256[:8]}{ext}"


def kohya_folder(row) -> str:
    repeats = max(1, round(row.repeats * row.weight))
    return f"{repeats}_{row.subset}"


def run(split_path: str | Path, out_dir: str | Path, params: dict, named_as: str | Path | None = None) -> pd.DataFrame:
    """``named_as``: the export's path in the workflow when ``out_dir`` is a copy of it elsewhere (a
    default storage provider's local copy): the Kohya configs name it by that path."""
    items = manifest.read(split_path, schemas.SPLIT)
    out_dir = Path(out_dir)
    config_dir = Path(named_as) if named_as is not None else out_dir
    keep_formats = [f.upper() for f in params.get("keep_formats", ["PNG", "JPEG", "WEBP"])]
    keep_modes = list(params.get("keep_modes", ["RGB", "RGBA", "L"]))
    convert_to = str(params.get("convert_to", "PNG")).upper()
    alpha = {"keep_alpha": bool(params.get("keep_alpha", False)), "background": str(params.get("background", "#ffffff"))}
    kohya = params.get("kohya", {})
    caption_ext = kohya.get("caption_extension", ".txt")
    rows = []
    with atomic.atomic_dir(out_dir) as tmp:
        for row in progress.bar(items.itertuples(index=False), total=len(items), desc="export", unit="image"):
            data, fmt = Path(row.path).read_bytes(), row.format
            if hashing.sha256_bytes(data) != row.sha256:
                raise RuntimeError(f"{row.item_id}: {row.path} changed since ingest; rerun the workflow")
            reason = conversion_reason(row, keep_formats, keep_modes, convert_to, **alpha)
            if reason:
                data, out_mode = convert(data, keep_modes, convert_to, **alpha)
                fmt = output_format(convert_to, out_mode)
                reason = conversion_reason(row, keep_formats, keep_modes, convert_to, out_mode, **alpha)
            repeats = max(1, round(row.repeats * row.weight))
            if row.split == "train":
                rel_dir = Path("kohya") / kohya_folder(row)
            else:
                rel_dir = Path(row.split) / row.subset
            rel = rel_dir / file_name(row, EXTENSIONS.get(fmt, f".{fmt.lower()}"))
            (tmp / rel_dir).mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(data)
            (tmp / rel).with_suffix(caption_ext).write_text(row.caption + "\n", encoding="utf-8")
            rows.append({
                "item_id": row.item_id, "sha256": row.sha256, "source": row.source, "license": row.license,
                "split": row.split, "subset": row.subset, "repeats": repeats, "export_path": rel.as_posix(),
                "export_sha256": hashing.sha256_bytes(data), "export_format": fmt, "conversion": reason,
                "caption": row.caption, "width": row.width, "height": row.height, "rating": row.rating,
                "tags": list(row.tags), "generated": bool(row.generated), "cluster_id": row.cluster_id,
                "nsfw_flag": bool(row.nsfw_flag), "flags": list(row.flags),
            })
        df = pd.DataFrame(rows, columns=[c for c in schemas.EXPORT.columns if c != "schema_version"])
        df = manifest.with_version(df) if rows else manifest.empty(schemas.EXPORT)
        if rows:
            df[["repeats", "width", "height"]] = df[["repeats", "width", "height"]].astype("int64")
        written = manifest.write(df, tmp / "manifest.parquet", schemas.EXPORT)
        spec, triggers = caption_spec(params), dict(params.get("source_triggers") or {})
        atomic.write_text(tmp / "dataset_config.toml", kohya_toml(written, config_dir, kohya, spec, triggers))
        if params.get("originals_only"):
            originals_only(written, tmp, config_dir, kohya, spec, triggers, caption_ext)
        atomic.write_text(tmp / "ATTRIBUTION.md", attribution(written))
        export_formats.write(written, tmp, params)  # WebDataset shards, Hugging Face Parquet: when enabled
    return written


def originals_only(written: pd.DataFrame, tmp: Path, out_dir: Path, kohya: dict, spec, triggers: dict, caption_ext: str) -> None:
    """The sequential option: ``originals/kohya/`` holds the train split's original (not generated)
    images and captions, with its own ``originals/dataset_config.toml``, for a first training pass
    on originals before the combined set. Files are hard links to the combined export's where the
    file system allows."""
    originals = written[(written["split"] == "train") & ~written["generated"]]
    for rel in originals["export_path"]:
        for suffix in (None, caption_ext):
            source = tmp / rel if suffix is None else (tmp / rel).with_suffix(suffix)
            target = tmp / "originals" / (rel if suffix is None else Path(rel).with_suffix(suffix))
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source, target)
            except OSError:
                shutil.copyfile(source, target)
    atomic.write_text(tmp / "originals" / "dataset_config.toml",
                      kohya_toml(originals, out_dir, kohya, spec, triggers, root="originals/kohya"))


def caption_spec(params: dict) -> captions.CaptionSpec:
    """The captions' spec (params' ``caption`` block; a bare ``trigger_word`` also works)."""
    caption = params.get("caption")
    if caption is None:
        caption = {"trigger_word": params.get("trigger_word", "")}
    return captions.CaptionSpec.from_params(caption)


def keep_tokens(kohya: dict, spec: captions.CaptionSpec) -> int:
    """Kohya's ``keep_tokens``: the caption's fixed start (trigger word and prefix). A value set in
    ``export.kohya`` must agree, or shuffling would move the trigger word or split the prefix."""
    given = kohya.get("keep_tokens")
    if given is not None and int(given) != spec.keep_tokens:
        raise ValueError(
            f"export.kohya.keep_tokens is {given}, but captions start with {spec.keep_tokens} fixed token(s) "
            f"(trigger word {spec.trigger_word!r} and prefix {list(spec.prefix)}): leave keep_tokens out, or make them agree"
        )
    return spec.keep_tokens


KOHYA_KEYS_MADE_HERE = frozenset({"image_dir", "num_repeats", "class_tokens", "keep_tokens", "metadata_file", "conditioning_data_dir", "is_reg"})
"""Subset options the export writes itself (from the folders, repeats, trigger word and caption spec)."""


def kohya_toml(
    export: pd.DataFrame, out_dir: Path, kohya: dict, spec: captions.CaptionSpec | None = None,
    source_triggers: dict[str, str] | None = None, root: str = "kohya",
) -> str:
    """A dataset config in the form kohya's sd-scripts reads (``--dataset_config``): dataset options
    (resolution, batch size, bucketing) and subset options (caption extension, shuffling, ...) from
    ``export.kohya`` in params, one DreamBooth subset per train folder; checked against sd-scripts'
    schema (``trainset.kohya_config``) before it is written."""
    spec = spec or captions.CaptionSpec()
    made = sorted(set(kohya) & (KOHYA_KEYS_MADE_HERE - {"keep_tokens"}))
    if made:
        raise ValueError(f"export.kohya: {made} are written by the export itself")
    unknown = sorted(set(kohya) - set(kohya_config.DATASET_OPTIONS) - set(kohya_config.SUBSET_OPTIONS))
    if unknown:
        raise ValueError(f"export.kohya: unknown options {unknown} (sd-scripts would refuse them)")
    train = export[export["split"] == "train"]
    general_keep = keep_tokens(kohya, spec)
    subsets = []
    for folder, group in sorted(train.groupby(train["export_path"].str.split("/").str[-2])):
        # the spec its captions were made with (caption stage: a source's own trigger word)
        specs = {spec.for_source((source_triggers or {}).get(source, "")) for source in group["source"]}
        if len(specs) > 1:
            raise ValueError(f"Kohya folder {folder} holds items of sources with different trigger words "
                             f"{sorted(s.trigger_word for s in specs)}: give those sources different subset names")
        own = specs.pop() if specs else spec
        subset = {
            "image_dir": (out_dir / root / folder).as_posix(),
            "num_repeats": int(group["repeats"].iloc[0]),
            "class_tokens": own.trigger_word or folder.split("_", 1)[1],
        }
        if own.keep_tokens != general_keep:  # its captions start with a trigger word the others lack
            subset["keep_tokens"] = own.keep_tokens
        subsets.append(subset)
    general = {"caption_extension": ".txt", "shuffle_caption": False}
    general.update({k: v for k, v in kohya.items() if k in kohya_config.SUBSET_OPTIONS})
    general["keep_tokens"] = general_keep
    dataset = {"resolution": 1024, "batch_size": 1, "enable_bucket": True}
    dataset.update({k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in kohya.items() if k in kohya_config.DATASET_OPTIONS})
    doc = {"general": general, "datasets": [{**dataset, "subsets": subsets}]}
    kohya_config.validate(doc, "export.kohya -> dataset_config.toml")
    header = (
        "# Kohya sd-scripts dataset config (train split). image_dir paths are relative to the\n"
        "# repository root: run training from there, or pass absolute paths.\n"
    )
    return header + tomli_w.dumps(doc)


def attribution(export: pd.DataFrame) -> str:
    lines = ["# Sources and licenses", "", "| source | license | generated | kept | train | val | test |", "|---|---|---|---|---|---|---|"]
    for source, group in export.groupby("source"):
        counts = group["split"].value_counts()
        generated = int(group["generated"].sum())
        lines.append(
            f"| {source} | {group['license'].iloc[0]} | {generated} | {len(group)} | "
            f"{counts.get('train', 0)} | {counts.get('val', 0)} | {counts.get('test', 0)} |"
        )
    lines += ["", "Every exported file is listed in `manifest.parquet` with its item id, source sha256 and exported sha256.", ""]
    return "\n".join(lines)
