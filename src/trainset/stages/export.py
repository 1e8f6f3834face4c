"""split -> export: a Kohya-ready folder tree, its dataset_config.toml, a manifest with
checksums, and an attribution summary of sources and licenses.

Original bytes are copied unless a conversion is needed (format or mode outside the
configured sets, or an EXIF orientation to apply); the manifest says which and why.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pandas as pd
import tomli_w
from PIL import Image, ImageOps

from .. import atomic, hashing, manifest, schemas

EXTENSIONS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def conversion_reason(row, keep_formats: list[str], keep_modes: list[str], convert_to: str, out_mode: str | None = None) -> str | None:
    """Why ``row`` is converted (None: keep its bytes). ``out_mode``, the mode of the converted
    file once known, replaces the predicted one: a palette image without transparency, or
    any image saved as JPEG, ends up RGB rather than RGBA."""
    reasons = []
    if row.format not in keep_formats:
        reasons.append(f"format {row.format} -> {convert_to}")
    if row.mode not in keep_modes or (out_mode is not None and out_mode != row.mode):
        reasons.append(f"mode {row.mode} -> {out_mode or target_mode(row.mode, keep_modes)}")
    if row.exif_orientation != 1:
        reasons.append(f"EXIF orientation {row.exif_orientation} applied")
    return "; ".join(reasons) or None


def target_mode(mode: str, keep_modes: list[str]) -> str:
    if mode in keep_modes:
        return mode
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or mode == "P"
    return "RGBA" if has_alpha and "RGBA" in keep_modes else "RGB"


def convert(data: bytes, keep_modes: list[str], convert_to: str) -> tuple[bytes, str]:
    """Re-encode ``data`` upright in ``convert_to``; returns the new bytes and their mode."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        im = ImageOps.exif_transpose(im)
        mode = target_mode(im.mode, keep_modes)
        if mode == "RGBA" and im.mode == "P" and "transparency" not in im.info:
            mode = "RGB"
        if im.mode != mode:
            im = im.convert(mode)
        if convert_to == "JPEG" and im.mode == "RGBA":
            im = im.convert("RGB")
        buf = io.BytesIO()
        im.save(buf, format=convert_to, **({"quality": 95} if convert_to == "JPEG" else {}))
    return buf.getvalue(), im.mode


def file_name(row, ext: str) -> str:
    stem = _UNSAFE.sub("_", Path(row.original_name).stem).strip("._")[:80] or "image"
    return f"{stem}_{row.sha256[:8]}{ext}"


def kohya_folder(row) -> str:
    repeats = max(1, round(row.repeats * row.weight))
    return f"{repeats}_{row.subset}"


def run(split_path: str | Path, out_dir: str | Path, params: dict) -> pd.DataFrame:
    items = manifest.read(split_path, schemas.SPLIT)
    out_dir = Path(out_dir)
    keep_formats = [f.upper() for f in params.get("keep_formats", ["PNG", "JPEG", "WEBP"])]
    keep_modes = list(params.get("keep_modes", ["RGB", "RGBA", "L"]))
    convert_to = str(params.get("convert_to", "PNG")).upper()
    kohya = params.get("kohya", {})
    caption_ext = kohya.get("caption_extension", ".txt")
    rows = []
    with atomic.atomic_dir(out_dir) as tmp:
        for row in items.itertuples(index=False):
            data, fmt = Path(row.path).read_bytes(), row.format
            if hashing.sha256_bytes(data) != row.sha256:
                raise RuntimeError(f"{row.item_id}: {row.path} changed since ingest; rerun the workflow")
            reason = conversion_reason(row, keep_formats, keep_modes, convert_to)
            if reason:
                data, out_mode = convert(data, keep_modes, convert_to)
                fmt = convert_to
                reason = conversion_reason(row, keep_formats, keep_modes, convert_to, out_mode)
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
            })
        df = pd.DataFrame(rows, columns=[c for c in schemas.EXPORT.columns if c != "schema_version"])
        df = manifest.with_version(df) if rows else manifest.empty(schemas.EXPORT)
        if rows:
            df[["repeats", "width", "height"]] = df[["repeats", "width", "height"]].astype("int64")
        written = manifest.write(df, tmp / "manifest.parquet", schemas.EXPORT)
        atomic.write_text(tmp / "dataset_config.toml", kohya_toml(written, out_dir, kohya, params.get("trigger_word", "")))
        atomic.write_text(tmp / "ATTRIBUTION.md", attribution(written))
    return written


def kohya_toml(export: pd.DataFrame, out_dir: Path, kohya: dict, trigger_word: str = "") -> str:
    """A dataset config in the form kohya's sd-scripts reads (``--dataset_config``)."""
    train = export[export["split"] == "train"]
    subsets = []
    for folder, group in sorted(train.groupby(train["export_path"].str.split("/").str[1])):
        subsets.append({
            "image_dir": (out_dir / "kohya" / folder).as_posix(),
            "num_repeats": int(group["repeats"].iloc[0]),
            "class_tokens": trigger_word or folder.split("_", 1)[1],
        })
    doc = {
        "general": {
            "caption_extension": kohya.get("caption_extension", ".txt"),
            "keep_tokens": int(kohya.get("keep_tokens", 0)),
            "shuffle_caption": bool(kohya.get("shuffle_caption", False)),
        },
        "datasets": [{
            "resolution": kohya.get("resolution", 1024),
            "batch_size": int(kohya.get("batch_size", 1)),
            "enable_bucket": bool(kohya.get("enable_bucket", True)),
            "subsets": subsets,
        }],
    }
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
