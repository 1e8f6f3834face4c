"""Shared helpers for the stage tests: real image files, real sources and a small stage chain.

Imported by the stage test files as ``import stage_helpers`` (pytest puts ``tests/`` on
``sys.path`` because the folder has no ``__init__.py``). Nothing here touches anything
outside the ``tmp_path`` it is given.

The workflow runs every stage from the repository root (ingest stores paths relative to
it, and later stages open them from the current directory), so :class:`Chain` runs each
stage from its own root folder.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import io
import json
from pathlib import Path

import pandas as pd
import skimage.data
from PIL import Image

from trainset import manifest, schemas
from trainset.config import Source
from trainset.stages import audit, caption, dedup, export, filter as filter_stage, group, ingest, nsfw, rejected, report, split

EXTENSIONS = [".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"]
SAMPLES = Path(skimage.data.__file__).parent
DEFAULT_EXPORT = {
    "keep_formats": ["PNG", "JPEG", "WEBP"],
    "keep_modes": ["RGB", "RGBA", "L"],
    "convert_to": "PNG",
    "kohya": {"resolution": 1024, "batch_size": 1, "enable_bucket": True, "caption_extension": ".txt", "keep_tokens": 0},
}


# --------------------------------------------------------------------------- images


def sample(name: str, size: tuple[int, int] | None = None, mode: str = "RGB") -> Image.Image:
    """One of scikit-image's bundled photos (read from the package folder, no download)."""
    with Image.open(SAMPLES / name) as im:
        im.load()
        im = im.convert(mode)
    if size is not None:
        im = im.resize(size, Image.Resampling.LANCZOS)
    return im


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def save(im: Image.Image, path: Path, fmt: str | None = None, **kw) -> Path:
    """Write ``im`` to ``path`` (format from the suffix unless given); returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = fmt or {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".gif": "GIF", ".webp": "WEBP"}[path.suffix.lower()]
    path.write_bytes(encode(im, fmt, **kw))
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def truncated_jpeg(path: Path) -> Path:
    """A valid JPEG cut to half its bytes: opens, then fails to decode."""
    data = encode(sample("astronaut.png", (300, 300)), "JPEG", quality=90)
    return write_bytes(path, data[: len(data) // 2])


def sidecar(image: Path, tags: list[str] | None = None, **fields) -> Path:
    """A ``.json`` sidecar next to ``image`` (``tags`` plus any extra fields, e.g. generated)."""
    doc = dict(fields)
    if tags is not None:
        doc["tags"] = tags
    car = image.with_suffix(".json")
    car.write_text(json.dumps(doc), encoding="utf-8")
    return car


def hash_input(path) -> Image.Image:
    """The grayscale image trainset hashes, rebuilt here from its documented decode: JPEG draft
    (to gray, at the measures' DCT scale), EXIF upright, 8-bit gray (Pillow's clipping
    ``convert`` for 16/32-bit, as imagehash), then the whole-factor box reduction to about
    ``hashing.HASH_SIDE`` px. ``imagehash.phash`` of it is the stored pHash."""
    from PIL import ImageOps

    from trainset import features, hashing

    with Image.open(path) as im:
        features.draft(im)
        im.load()
        upright = ImageOps.exif_transpose(im)
        gray = upright.convert("L") if upright.mode.startswith("I") or upright.mode == "F" else features.gray8(upright)
    factor = min(gray.size) // hashing.HASH_SIDE
    return gray.reduce(factor) if factor > 1 else gray


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def fake_sha(seed: str) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()


# --------------------------------------------------------------------------- sources and the chain


def source(path: Path, name: str = "src", license: str = "CC0-1.0", **kw) -> Source:
    return Source(name=name, kind="image_folder", path=Path(path), license=license, **kw)


def _at_root(method):
    """Run a Chain method with the chain's root as the current directory."""

    @functools.wraps(method)
    def wrapper(self, *args, **kw):
        with contextlib.chdir(self.root):
            return method(self, *args, **kw)

    return wrapper


class Chain:
    """The stages in workflow order, writing manifests under ``root/data``.

    ingest -> audit (+ nsfw) -> group -> filter -> dedup -> caption -> split -> rejected ->
    export -> report. Each method runs one real stage function (from ``root``, like the
    workflow) and returns what it wrote; ``p`` holds the (absolute) paths.
    """

    def __init__(self, root: Path, sources: list[Source]):
        self.root = Path(root).resolve()
        self.sources = sources
        m = self.root / "data" / "manifests"
        self.p = {
            "ingest": m / "ingest.parquet",
            "unmatched": m / "unmatched_records.parquet",
            "audit": m / "audit.parquet",
            "nsfw": m / "nsfw_scores.parquet",
            "groups": m / "groups.parquet",
            "pairs": m / "pairs.parquet",
            "reference_pairs": m / "reference_pairs.parquet",
            "filtered": m / "filtered.parquet",
            "deduped": m / "deduped.parquet",
            "clusters": m / "clusters.parquet",
            "captioned": m / "captioned.parquet",
            "split": m / "split.parquet",
            "moves": m / "split_moves.parquet",
            "rejected": m / "rejected.parquet",
            "rej_filter": m / "rejected" / "filter.parquet",
            "rej_dedup": m / "rejected" / "dedup.parquet",
            "export": self.root / "data" / "export",
            "report": self.root / "data" / "report" / "dataset-report.md",
            "metrics": self.root / "data" / "report" / "metrics.json",
            "history": self.root / "data" / "cache" / "split-history.parquet",
            "cache": self.root / "data" / "cache",
        }

    @_at_root
    def ingest(self) -> pd.DataFrame:
        return ingest.run(
            self.sources, self.p["ingest"], self.p["cache"] / "stat", EXTENSIONS, root=self.root, unmatched_out=self.p["unmatched"]
        )

    @_at_root
    def audit(self, params: dict | None = None) -> pd.DataFrame:
        return audit.run(
            self.p["ingest"], self.p["audit"], self.p["cache"] / "features", self.root / "data" / "run" / "audit-stats.json",
            params=params or {},
        )

    @_at_root
    def nsfw(self, model: dict | None = None) -> pd.DataFrame:
        """NSFW scores; with no model (the default) every score is NaN and nothing is decoded."""
        nsfw.run(self.p["ingest"], self.p["audit"], self.p["nsfw"], model or {"backend": "none"}, self.p["cache"] / "nsfw")
        return self.read("nsfw", schemas.NSFW_SCORES)

    @_at_root
    def group(self, max_distance: int = 10, near_dup: dict | None = None) -> pd.DataFrame:
        """The group stage; ``near_dup`` params (default: the hash-only rule ``distance <= max_distance``)."""
        self.near_dup = near_dup if near_dup is not None else {"rule": [{"max_distance": max_distance}]}
        group.run(
            self.p["ingest"], self.p["audit"], self.p["groups"], self.p["pairs"], self.p["reference_pairs"],
            self.near_dup, self.p["cache"], self.root / "data" / "run" / "group-stats.json",
        )
        return self.read("groups", schemas.GROUPS)

    @_at_root
    def filter(
        self,
        min_side: int = 64,
        policy: dict | None = None,
        annotations: list[str | Path] | None = None,
        overrides: str | Path | None = None,
        dictionaries: list[str | Path] | None = None,
        audit_params: dict | None = None,
        takedown: set[str] | None = None,
    ) -> pd.DataFrame:
        """The filter stage; ``audit_params`` (thresholds, ``actions``) win over ``min_side``."""
        filter_stage.run(
            {"ingest": self.p["ingest"], "audit": self.p["audit"], "groups": self.p["groups"], "nsfw": self.p["nsfw"]},
            self.p["filtered"],
            self.p["rej_filter"],
            audit_params={"min_side": min_side, **(audit_params or {})},
            policy_params=policy or {},
            tag_dictionaries=[str(d) for d in dictionaries or []],
            annotation_files=[str(a) for a in annotations or []],
            overrides_file=str(overrides) if overrides else None,
            takedown=takedown,
        )
        return manifest.read(self.p["filtered"], schemas.FILTERED)

    @_at_root
    def dedup(self, near_dup: dict | None = None) -> pd.DataFrame:
        """The dedup stage, with the group stage's ``near_dup`` params unless others are given."""
        near_dup = near_dup if near_dup is not None else getattr(self, "near_dup", {})
        dedup.run(
            self.p["filtered"], self.p["pairs"], self.p["reference_pairs"], self.p["deduped"], self.p["clusters"],
            self.p["rej_dedup"], near_dup,
        )
        return manifest.read(self.p["deduped"], schemas.DEDUPED)

    @_at_root
    def caption(self, tag_dictionaries: list[str] | None = None, **caption_params) -> pd.DataFrame:
        """The caption stage with ``caption_params`` as params.yaml's ``caption`` block."""
        return caption.run(self.p["deduped"], self.p["captioned"], caption_params, tag_dictionaries)

    @_at_root
    def split(self, seed: int = 1337, fractions: dict | None = None) -> pd.DataFrame:
        fractions = fractions or {"train": 0.8, "val": 0.1, "test": 0.1}
        split.run(self.p["captioned"], self.p["split"], self.p["moves"], self.p["history"], seed, fractions)
        return manifest.read(self.p["split"], schemas.SPLIT)

    @_at_root
    def rejected(self) -> pd.DataFrame:
        return rejected.run([self.p["rej_filter"], self.p["rej_dedup"]], self.p["rejected"])

    @_at_root
    def export(self, params: dict | None = None, out_dir: Path | str | None = None) -> pd.DataFrame:
        return export.run(self.p["split"], out_dir if out_dir is not None else self.p["export"], params or DEFAULT_EXPORT)

    def report_paths(self, **over) -> dict:
        """The inputs the report stage reads (as the workflow passes them), ``over`` replacing any."""
        keys = ("ingest", "unmatched", "audit", "filtered", "groups", "pairs", "reference_pairs", "deduped", "captioned", "split", "moves", "rejected")
        return {**{k: self.p[k] for k in keys}, "export": self.p["export"] / "manifest.parquet", **over}

    @_at_root
    def report(
        self, thresholds: dict | None = None, balance_params: dict | None = None,
        audit_params: dict | None = None, out_md: Path | None = None, out_metrics: Path | None = None, **paths,
    ) -> dict:
        thresholds = thresholds if thresholds is not None else {"min_kept": 1, "max_rejected_share": 1.0, "max_split_leakage": 0}
        return report.run(
            self.report_paths(**paths), out_md or self.p["report"], out_metrics or self.p["metrics"], thresholds,
            balance_params=balance_params, audit_params=audit_params,
        )

    @_at_root
    def through_dedup(self, min_side: int = 64, max_distance: int = 10, near_dup: dict | None = None, **filter_kw) -> pd.DataFrame:
        """ingest, audit, nsfw, group (hash-only ``distance <= max_distance`` unless ``near_dup``
        is given), filter (``filter_kw``: policy, annotations, ...) and dedup."""
        self.ingest()
        self.audit()
        self.nsfw()
        self.group(max_distance, near_dup)
        self.filter(min_side, **filter_kw)
        return self.dedup()

    def read(self, name: str, schema) -> pd.DataFrame:
        return manifest.read(self.p[name], schema)


def by_id(df: pd.DataFrame) -> dict[str, dict]:
    return {r["item_id"]: r for r in df.to_dict("records")}


# --------------------------------------------------------------------------- hand-built manifests


def item_row(item_id: str, sha: str | None = None, **over) -> dict:
    """One row with every column a SPLIT manifest holds (take the subset a schema needs): ingest,
    image, cluster and policy columns (no flags, not NSFW, NaN scores, no annotation or override)."""
    sha = sha or fake_sha(item_id)
    row = {
        "item_id": item_id,
        "sha256": sha,
        "source": "src",
        "rel_path": item_id.split(":", 1)[-1],
        "path": f"/nowhere/{item_id.split(':', 1)[-1]}",
        "size": 1000,
        "license": "CC0-1.0",
        "original_name": item_id.split("/")[-1],
        "tags": [],
        "rating": "unknown",
        "generated": False,
        "weight": 1.0,
        "repeats": 1,
        "subset": "src",
        "sidecar": None,
        "sidecar_error": None,
        **{k: (list(v) if isinstance(v, list) else v) for k, v in schemas.INGEST_DEFAULTS.items()},
        "format": "PNG",
        "mode": "RGB",
        "width": 512,
        "height": 512,
        "exif_orientation": 1,
        "phash": "0" * 16,
        "dhash": "0" * 16,
        "phash_views": ["0" * 16] * 8,
        "n_frames": 1,
        "animated": False,
        "has_alpha": False,
        "alpha_min": 255,
        "bit_depth": 8,
        "luma_mean": 120.0,
        "luma_std": 50.0,
        "entropy": 7.0,
        "laplacian_var": 500.0,
        "border_fraction": 0.0,
        "cluster_key": sha,
        "cluster_id": sha[:16],
        "cluster_size": 1,
        "component_key": sha,
        "flags": [],
        "nsfw_flag": False,
        "nsfw_score": float("nan"),
        "archetype": None,
        "emotion": None,
        "harmony_score": float("nan"),
        "annotation_notes": None,
        "override": None,
        "caption_override": None,
        "caption": "",
        "caption_tokens": 0,
        "caption_over_limit": False,
        "caption_trimmed": [],
        "background": None,
        "background_uniformity": float("nan"),
        "background_check": None,
        "split": "train",
        "schema_version": schemas.SCHEMA_VERSION,
    }
    row.update(over)
    return row


def frame(rows: list[dict], schema) -> pd.DataFrame:
    """Rows as a frame with the schema's columns and dtypes (validated by manifest.write)."""
    df = pd.DataFrame(rows)
    if not len(df):
        return manifest.empty(schema)
    df = df[[c for c in schema.columns]]
    for name, col in schema.columns.items():
        dtype = str(col.dtype)
        if dtype in ("int64", "float64", "bool"):
            df[name] = df[name].astype(dtype)
    return df


def write_manifest(rows: list[dict], path: Path, schema) -> pd.DataFrame:
    return manifest.write(frame(rows, schema), path, schema)


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    """A small CSV file (annotations, overrides), quoting as needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path
