"""The export in two streaming formats beside the Kohya layout: WebDataset tar shards and
Hugging Face Parquet with images as bytes.

Both are built from the export manifest (``schemas.EXPORT``) and the exported files, so they
hold exactly the bytes the Kohya layout holds. Output is deterministic (sorted rows, fixed
tar headers), so the same export gives byte-identical files and DVC sees no change. Each
format's folder is written whole or not at all, with an ``index.json`` listing every file's
split, sample count, size and SHA-256; :func:`verify` re-reads the files against it.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from . import atomic, features, hashing, progress, schemas

WEBDATASET_DIR = "webdataset"
HF_DIR = "hf"
INDEX = "index.json"
HF_CARD = "README.md"

WEBDATASET_DEFAULTS = {"enabled": False, "shard_max_count": 1000, "shard_max_bytes": 1 << 30}
HF_PARQUET_DEFAULTS = {"enabled": False, "max_rows_per_file": 5000, "max_bytes_per_file": 500 << 20,
                       "row_group_rows": 100, "row_group_max_bytes": 64 << 20}

TAR_FORMAT = tarfile.PAX_FORMAT
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_KEY_MAX = 150

# what datasets' Features.to_dict() gives for these columns; "Sequence" is read by every
# datasets release (>= 4 reads it as List), "List" only by >= 4
_HF_FEATURES = {
    "id": {"dtype": "string", "_type": "Value"},
    "image": {"_type": "Image"},
    "caption": {"dtype": "string", "_type": "Value"},
    "tags": {"feature": {"dtype": "string", "_type": "Value"}, "_type": "Sequence"},
    "rating": {"dtype": "string", "_type": "Value"},
    "source": {"dtype": "string", "_type": "Value"},
    "license": {"dtype": "string", "_type": "Value"},
    "subset": {"dtype": "string", "_type": "Value"},
    "generated": {"dtype": "bool", "_type": "Value"},
    "width": {"dtype": "int64", "_type": "Value"},
    "height": {"dtype": "int64", "_type": "Value"},
    "sha256": {"dtype": "string", "_type": "Value"},
    "export_sha256": {"dtype": "string", "_type": "Value"},
}
HF_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("image", pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])),
        pa.field("caption", pa.string()),
        pa.field("tags", pa.list_(pa.string())),
        pa.field("rating", pa.string()),
        pa.field("source", pa.string()),
        pa.field("license", pa.string()),
        pa.field("subset", pa.string()),
        pa.field("generated", pa.bool_()),
        pa.field("width", pa.int64()),
        pa.field("height", pa.int64()),
        pa.field("sha256", pa.string()),
        pa.field("export_sha256", pa.string()),
    ],
    metadata={"huggingface": json.dumps({"info": {"features": _HF_FEATURES}})},
)


class FormatError(RuntimeError):
    """An exported file changed since the export, or a written format does not check out."""


# --------------------------------------------------------------------------- shared


@dataclass(frozen=True)
class Item:
    """One exported item as both formats store it (the image read only when written)."""

    key: str
    split: str
    image_path: Path
    export_path: str
    image_size: int
    meta: dict
    caption: str

    @property
    def ext(self) -> str:
        return Path(self.export_path).suffix.lower().lstrip(".") or "bin"


def sample_key(item_id: str) -> str:
    """A WebDataset key for ``item_id``: WebDataset cuts a member name at its first dot and
    treats slashes as folders, so only letters, digits, ``_`` and ``-`` are kept."""
    key = _KEY_UNSAFE.sub("_", item_id)
    return key if len(key) <= _KEY_MAX else f"{key[:_KEY_MAX]}-{_short_hash(item_id)}"


def sample_keys(item_ids: Iterable[str]) -> list[str]:
    """:func:`sample_key` of each id, made unique: ids that map to one key (``a:b`` and ``a_b``)
    get a short hash of their own id, so a key never depends on which other items exist."""
    ids = list(item_ids)
    keys = [sample_key(i) for i in ids]
    counts = pd.Series(keys, dtype=object).value_counts()
    return [f"{k}-{_short_hash(i)}" if counts[k] > 1 else k for i, k in zip(ids, keys)]


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:10]


def items(export: pd.DataFrame, export_dir: str | Path) -> list[Item]:
    """The manifest's rows in a fixed order (split, then item id), with the exported image's
    real size: a kept original and a converted file both have their own pixels' dimensions."""
    export_dir = Path(export_dir)
    order = export.assign(_split=export["split"].map(schemas.SPLITS.index)).sort_values(["_split", "item_id"], kind="stable")
    keys = sample_keys(order["item_id"])
    out = []
    for key, row in zip(keys, order.to_dict("records")):
        path = export_dir / row["export_path"]
        width, height = _dimensions(path, row)
        meta = {
            "id": row["item_id"], "sha256": row["sha256"], "export_sha256": row["export_sha256"],
            "source": row["source"], "license": row["license"], "subset": row["subset"],
            "tags": [str(t) for t in row["tags"]], "rating": row["rating"], "generated": bool(row["generated"]),
            "width": width, "height": height, "export_path": row["export_path"],
        }
        out.append(Item(key, row["split"], path, row["export_path"], path.stat().st_size, meta, row["caption"]))
    return out


def _dimensions(path: Path, row: dict) -> tuple[int, int]:
    """The image's stored width and height (header only); the manifest's when unreadable."""
    try:
        with features.no_pillow_pixel_limit(), Image.open(path) as im:
            return int(im.width), int(im.height)
    except (OSError, ValueError, Image.DecompressionBombError):
        return int(row["width"]), int(row["height"])


def read_image(item: Item) -> bytes:
    """The exported bytes, refused if they no longer match the manifest's checksum."""
    data = item.image_path.read_bytes()
    if hashing.sha256_bytes(data) != item.meta["export_sha256"]:
        raise FormatError(f"{item.meta['id']}: {item.export_path} changed since the export; rerun it")
    return data


def chunks(sizes: list[int], max_count: int | None, max_bytes: int | None) -> list[range]:
    """Consecutive runs of at most ``max_count`` entries and ``max_bytes`` bytes; an entry
    larger than ``max_bytes`` on its own still gets a run (it cannot be split)."""
    runs, start, total = [], 0, 0
    for i, size in enumerate(sizes):
        full_count = max_count is not None and i - start >= max_count
        full_bytes = max_bytes is not None and i > start and total + size > max_bytes
        if full_count or full_bytes:
            runs.append(range(start, i))
            start, total = i, 0
        total += size
    if start < len(sizes):
        runs.append(range(start, len(sizes)))
    return runs


def _by_split(all_items: list[Item]) -> Iterator[tuple[str, list[Item]]]:
    for split in schemas.SPLITS:
        chosen = [it for it in all_items if it.split == split]
        if chosen:
            yield split, chosen


def _entry(path: Path, split: str, samples: int) -> dict:
    return {"path": path.name, "split": split, "samples": samples, "bytes": path.stat().st_size,
            "sha256": hashing.sha256_file(path)}


def _index(fmt: str, files: list[dict], settings: dict) -> dict:
    splits = {}
    for f in files:
        s = splits.setdefault(f["split"], {"files": 0, "samples": 0, "bytes": 0})
        s["files"] += 1
        s["samples"] += f["samples"]
        s["bytes"] += f["bytes"]
    return {"format": fmt, "settings": settings, "splits": splits, "files": files}


def _write_index(folder: Path, index: dict) -> None:
    atomic.write_text(folder / INDEX, json.dumps(index, indent=2, sort_keys=True) + "\n")


def _positive(value, name: str) -> int | None:
    if value is None:
        return None
    if int(value) < 1:
        raise ValueError(f"{name} must be at least 1 (or left out), not {value}")
    return int(value)


# --------------------------------------------------------------------------- WebDataset


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    """A member header with nothing taken from the machine: same bytes on every run."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def _members(item: Item) -> list[tuple[str, int]]:
    """(name, size) of a sample's members: image, metadata, caption."""
    return [(f"{item.key}.{item.ext}", item.image_size), (f"{item.key}.json", len(_meta_bytes(item))),
            (f"{item.key}.txt", len(item.caption.encode("utf-8")))]


def _meta_bytes(item: Item) -> bytes:
    return json.dumps(item.meta, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def sample_tar_bytes(item: Item) -> int:
    """The bytes a sample takes in a shard (headers and padded data), for sizing shards."""
    total = 0
    for name, size in _members(item):
        total += len(_tar_info(name, size).tobuf(TAR_FORMAT, "utf-8", "surrogateescape"))
        total += -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    return total


def _write_shard(path: Path, shard: list[Item]) -> None:
    with tarfile.open(path, "w", format=TAR_FORMAT, encoding="utf-8") as tar:
        for item in shard:
            payloads = [read_image(item), _meta_bytes(item), item.caption.encode("utf-8")]
            for (name, _), data in zip(_members(item), payloads):
                tar.addfile(_tar_info(name, len(data)), io.BytesIO(data))


def write_webdataset(
    export: pd.DataFrame, export_dir: str | Path, out_dir: str | Path | None = None,
    shard_max_count: int | None = 1000, shard_max_bytes: int | None = 1 << 30,
) -> dict:
    """``{split}-{shard:06d}.tar`` shards of ``key.{ext}`` (exported bytes), ``key.json`` and
    ``key.txt`` (caption), at most ``shard_max_count`` samples and ``shard_max_bytes`` of
    members each (the tar's end blocks come on top); returns the index it writes."""
    max_count, max_bytes = _positive(shard_max_count, "shard_max_count"), _positive(shard_max_bytes, "shard_max_bytes")
    out_dir = Path(out_dir) if out_dir is not None else Path(export_dir) / WEBDATASET_DIR
    all_items = items(export, export_dir)
    files = []
    with atomic.atomic_dir(out_dir) as tmp, progress.bar(total=len(all_items), desc="export webdataset", unit="image") as shown:
        for split, chosen in _by_split(all_items):
            for n, run in enumerate(chunks([sample_tar_bytes(it) for it in chosen], max_count, max_bytes)):
                path = tmp / f"{split}-{n:06d}.tar"
                _write_shard(path, [chosen[i] for i in run])
                files.append(_entry(path, split, len(run)))
                shown.update(len(run))
        index = _index("webdataset", files, {"shard_max_count": max_count, "shard_max_bytes": max_bytes})
        _write_index(tmp, index)
    return index


def read_shard(path: str | Path) -> list[dict[str, bytes]]:
    """A shard's samples grouped as WebDataset groups them: consecutive members sharing the
    name up to the first dot of the file name; each sample maps extension -> bytes plus
    ``__key__``."""
    samples: list[dict] = []
    with tarfile.open(path, "r") as tar:
        for member in tar:
            if not member.isfile():
                continue
            folder, _, base = member.name.rpartition("/")
            stem, _, ext = base.partition(".")
            key = f"{folder}/{stem}" if folder else stem
            if not samples or samples[-1]["__key__"] != key:
                samples.append({"__key__": key})
            samples[-1][ext] = tar.extractfile(member).read()
    return samples


# --------------------------------------------------------------------------- Hugging Face Parquet


def _hf_table(batch: list[Item]) -> pa.Table:
    rows = {name: [] for name in HF_SCHEMA.names}
    for item in batch:
        meta = item.meta
        rows["id"].append(meta["id"])
        rows["image"].append({"bytes": read_image(item), "path": Path(item.export_path).name})
        rows["caption"].append(item.caption)
        for name in ("tags", "rating", "source", "license", "subset", "generated", "width", "height", "sha256", "export_sha256"):
            rows[name].append(meta[name])
    return pa.Table.from_pydict(rows, schema=HF_SCHEMA)


def _write_part(path: Path, part: list[Item], row_group_rows: int, row_group_max_bytes: int | None) -> None:
    """One Parquet file, a row group at a time: memory holds one row group's images."""
    with pq.ParquetWriter(path, HF_SCHEMA) as writer:
        for group in chunks([it.image_size for it in part], row_group_rows, row_group_max_bytes):
            table = _hf_table([part[i] for i in group])
            writer.write_table(table, row_group_size=len(group))


def write_hf_parquet(
    export: pd.DataFrame, export_dir: str | Path, out_dir: str | Path | None = None,
    max_rows_per_file: int | None = 5000, max_bytes_per_file: int | None = 500 << 20,
    row_group_rows: int = 100, row_group_max_bytes: int | None = 64 << 20,
) -> dict:
    """``{split}-{part:05d}-of-{n:05d}.parquet`` files that ``datasets`` reads as an Image column
    (``{bytes, path}`` plus the ``huggingface`` features metadata) with caption, tags and
    provenance; files bounded by rows and image bytes, row groups likewise; returns the index."""
    max_rows, max_bytes = _positive(max_rows_per_file, "max_rows_per_file"), _positive(max_bytes_per_file, "max_bytes_per_file")
    group_rows, group_bytes = _positive(row_group_rows, "row_group_rows"), _positive(row_group_max_bytes, "row_group_max_bytes")
    out_dir = Path(out_dir) if out_dir is not None else Path(export_dir) / HF_DIR
    all_items = items(export, export_dir)
    files = []
    with atomic.atomic_dir(out_dir) as tmp, progress.bar(total=len(all_items), desc="export parquet", unit="image") as shown:
        for split, chosen in _by_split(all_items):
            parts = chunks([it.image_size for it in chosen], max_rows, max_bytes)
            for n, run in enumerate(parts):
                path = tmp / f"{split}-{n:05d}-of-{len(parts):05d}.parquet"
                _write_part(path, [chosen[i] for i in run], group_rows, group_bytes)
                files.append(_entry(path, split, len(run)))
                shown.update(len(run))
        settings = {"max_rows_per_file": max_rows, "max_bytes_per_file": max_bytes,
                    "row_group_rows": group_rows, "row_group_max_bytes": group_bytes}
        index = _index("hf_parquet", files, settings)
        _write_index(tmp, index)
        atomic.write_text(tmp / HF_CARD, hf_card(index))
    return index


def hf_card(index: dict) -> str:
    """A dataset card whose ``configs`` name the splits: without it ``datasets`` (and the Hub)
    guess splits from file names and rename ``val`` to ``validation``."""
    if not index["splits"]:
        return "Empty: the export kept no items.\n"
    lines = ["---", "configs:", "- config_name: default", "  data_files:"]
    for split in index["splits"]:
        lines += [f"  - split: {split}", f"    path: {split}-*.parquet"]
    return "\n".join(lines + ["---", "", "Images with captions and provenance; see index.json for files and checksums.", ""])


def hf_data_files(folder: str | Path) -> dict[str, list[str]]:
    """Split -> Parquet paths, as ``datasets.load_dataset("parquet", data_files=...)`` takes them."""
    folder = Path(folder)
    index = json.loads((folder / INDEX).read_text(encoding="utf-8"))
    out: dict[str, list[str]] = {}
    for f in index["files"]:
        out.setdefault(f["split"], []).append(str(folder / f["path"]))
    return out


# --------------------------------------------------------------------------- both, from params


def write(export: pd.DataFrame, export_dir: str | Path, params: dict) -> dict[str, dict]:
    """The formats enabled in the ``export`` params block (``webdataset``, ``hf_parquet``);
    returns each written format's index by folder name."""
    written = {}
    wds = {**WEBDATASET_DEFAULTS, **(params.get("webdataset") or {})}
    if wds["enabled"]:
        written[WEBDATASET_DIR] = write_webdataset(
            export, export_dir, shard_max_count=wds["shard_max_count"], shard_max_bytes=wds["shard_max_bytes"])
    hf = {**HF_PARQUET_DEFAULTS, **(params.get("hf_parquet") or {})}
    if hf["enabled"]:
        written[HF_DIR] = write_hf_parquet(
            export, export_dir, max_rows_per_file=hf["max_rows_per_file"], max_bytes_per_file=hf["max_bytes_per_file"],
            row_group_rows=hf["row_group_rows"], row_group_max_bytes=hf["row_group_max_bytes"])
    return written


# --------------------------------------------------------------------------- verification


def _check_files(folder: Path, index: dict) -> list[str]:
    """Every listed file present with its size and checksum, and nothing unlisted."""
    problems = []
    listed = {f["path"] for f in index["files"]}
    for f in index["files"]:
        path = folder / f["path"]
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.stat().st_size != f["bytes"] or hashing.sha256_file(path) != f["sha256"]:
            problems.append(f"{path}: size or sha256 differs from {INDEX}")
    stray = sorted(p.name for p in folder.iterdir() if p.name not in (INDEX, HF_CARD) and p.name not in listed)
    problems += [f"{folder / name}: not listed in {INDEX}" for name in stray]
    return problems


def _load_index(folder: Path) -> dict | None:
    path = folder / INDEX
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _check_against_export(found: dict[str, dict], export: pd.DataFrame | None, where: Path) -> list[str]:
    """The samples read back (id -> split, export_sha256, caption) are the manifest's rows."""
    if export is None:
        return []
    problems = []
    expected = {r["item_id"]: r for r in export.to_dict("records")}
    missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing:
        problems.append(f"{where}: {len(missing)} exported item(s) missing, e.g. {missing[:3]}")
    if extra:
        problems.append(f"{where}: {len(extra)} item(s) not in the export manifest, e.g. {extra[:3]}")
    for item_id in sorted(set(found) & set(expected)):
        got, row = found[item_id], expected[item_id]
        for col in ("split", "export_sha256", "caption"):
            if got[col] != row[col]:
                problems.append(f"{where}: {item_id}: {col} differs from the export manifest")
    return problems


def verify_webdataset(folder: str | Path, export: pd.DataFrame | None = None) -> list[str]:
    """Problems found re-reading the shards (empty: all good): files against the index, every
    sample complete with its image matching its checksum, counts, and the manifest if given."""
    folder = Path(folder)
    index = _load_index(folder)
    if index is None:
        return [f"{folder}: no {INDEX}"]
    problems = _check_files(folder, index)
    found: dict[str, dict] = {}
    for f in index["files"]:
        path = folder / f["path"]
        if not path.is_file():
            continue
        samples = read_shard(path)
        if len(samples) != f["samples"]:
            problems.append(f"{path}: {len(samples)} samples, {INDEX} says {f['samples']}")
        for sample in samples:
            problems += _check_sample(path, sample, f["split"], found)
    return problems + _check_against_export(found, export, folder)


def _check_sample(path: Path, sample: dict, split: str, found: dict) -> list[str]:
    key = sample["__key__"]
    images = [ext for ext in sample if ext not in ("__key__", "json", "txt")]
    if len(images) != 1 or "json" not in sample or "txt" not in sample:
        return [f"{path}: sample {key} is incomplete or has extra members: {sorted(sample)}"]
    meta = json.loads(sample["json"])
    problems = []
    if hashlib.sha256(sample[images[0]]).hexdigest() != meta.get("export_sha256"):
        problems.append(f"{path}: sample {key}: image bytes do not match its export_sha256")
    if meta.get("id") in found:
        problems.append(f"{path}: sample {key}: item {meta.get('id')} appears twice")
    found[meta.get("id")] = {"split": split, "export_sha256": meta.get("export_sha256"), "caption": sample["txt"].decode("utf-8")}
    return problems


def verify_hf_parquet(folder: str | Path, export: pd.DataFrame | None = None) -> list[str]:
    """Problems found re-reading the Parquet files (empty: all good): files against the index,
    the features metadata, row counts, each image's bytes against its checksum, the manifest."""
    folder = Path(folder)
    index = _load_index(folder)
    if index is None:
        return [f"{folder}: no {INDEX}"]
    problems = _check_files(folder, index)
    found: dict[str, dict] = {}
    for f in index["files"]:
        path = folder / f["path"]
        if not path.is_file():
            continue
        pf = pq.ParquetFile(path)
        if b"huggingface" not in (pf.schema_arrow.metadata or {}):
            problems.append(f"{path}: no huggingface features metadata")
        if pf.metadata.num_rows != f["samples"]:
            problems.append(f"{path}: {pf.metadata.num_rows} rows, {INDEX} says {f['samples']}")
        for g in range(pf.num_row_groups):
            for row in pf.read_row_group(g, columns=["id", "image", "caption", "export_sha256"]).to_pylist():
                if hashlib.sha256(row["image"]["bytes"] or b"").hexdigest() != row["export_sha256"]:
                    problems.append(f"{path}: {row['id']}: image bytes do not match its export_sha256")
                if row["id"] in found:
                    problems.append(f"{path}: item {row['id']} appears twice")
                found[row["id"]] = {"split": f["split"], "export_sha256": row["export_sha256"], "caption": row["caption"]}
    return problems + _check_against_export(found, export, folder)


def verify(export_dir: str | Path, export: pd.DataFrame | None = None) -> list[str]:
    """Problems in whichever formats the export folder holds (empty: all good)."""
    export_dir = Path(export_dir)
    problems = []
    if (export_dir / WEBDATASET_DIR).is_dir():
        problems += verify_webdataset(export_dir / WEBDATASET_DIR, export)
    if (export_dir / HF_DIR).is_dir():
        problems += verify_hf_parquet(export_dir / HF_DIR, export)
    return problems
