"""Parquet image sources unpacked into the image_folder layout (image files plus ``.json``
sidecars), so every later stage reads a folder.

Two shapes are understood, detected from the schema unless params name the columns:

- Hugging Face ``datasets``: the image column is a struct ``{bytes: binary, path: string}``;
- img2dataset: a binary column named after the encode format (``jpg``, ``png``, ``webp``)
  beside ``key``, ``caption``, ``url``, ``width``, ``height`` and status columns.

Files are named by the ``key`` (or ``id``) column, made safe, else ``{parquet stem}-{row}``;
the extension comes from the bytes' magic number. A ``path`` inside the data never decides
where anything is written. Every other column goes into the sidecar (``tags`` as a list,
``rating``, ``caption`` from ``caption`` or ``text``). A row without image bytes, or with bytes
that are no known image, is reported and skipped. Files are read a batch of rows at a time,
so memory stays bounded by the row group. Limits, atomicity and idempotence are those of
:mod:`trainset.sources.archive`.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from .. import progress
from .archive import Budget, Limits, MemberRefused, Report, input_digests, materialize, sniff_extension, write_new, write_sidecar

IMAGE_COLUMNS = ("image", "jpg", "jpeg", "png", "webp", "img", "bytes")
KEY_COLUMNS = ("key", "id")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _is_binary(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t)


def _is_image_struct(t: pa.DataType) -> bool:
    """The Hugging Face Image feature as stored: a struct with a binary ``bytes`` field."""
    return pa.types.is_struct(t) and t.get_field_index("bytes") >= 0 and _is_binary(t.field("bytes").type)


def image_column(schema: pa.Schema, wanted: str | None = None) -> str:
    """The column holding image bytes: ``wanted`` if given, else the first likely one."""
    usable = [f.name for f in schema if _is_binary(f.type) or _is_image_struct(f.type)]
    if wanted is not None:
        if wanted not in usable:
            raise MemberRefused(f"column {wanted!r} is missing or holds no image bytes")
        return wanted
    for name in IMAGE_COLUMNS:
        if name in usable:
            return name
    structs = [f.name for f in schema if _is_image_struct(f.type)]
    if structs:
        return structs[0]
    raise MemberRefused("no image column (a {bytes, path} struct or a jpg/png/webp binary column); name it in params")


def key_column(schema: pa.Schema, wanted: str | None = None) -> str | None:
    if wanted is not None:
        return wanted if wanted in schema.names else None
    return next((name for name in KEY_COLUMNS if name in schema.names), None)


def safe_stem(value) -> str | None:
    """A key as a file stem: letters, digits, ``. _ -`` only, never hidden or empty."""
    if value is None:
        return None
    stem = _UNSAFE.sub("_", str(value)).strip("._")[:120]
    return stem or None


def _image_bytes(value) -> tuple[bytes | None, dict]:
    """(bytes, extra sidecar fields) from a struct or binary cell."""
    if isinstance(value, dict):
        extra = {"image_path": value.get("path")} if value.get("path") else {}
        return value.get("bytes"), extra
    return value, {}


def _row(root: Path, row: dict, stem: str, budget: Budget, report: Report, image_col: str) -> None:
    data, extra = _image_bytes(row.pop(image_col))
    if not data:
        raise MemberRefused("no image bytes")
    ext = sniff_extension(data)
    if ext is None:
        raise MemberRefused("the bytes are not a PNG, JPEG, WebP, GIF, BMP or TIFF image")
    budget.admit(len(data))
    budget.claim(stem)
    meta = {k: v for k, v in row.items() if not isinstance(v, (bytes, bytearray))}
    written = write_new(root, stem + ext, data)
    written += write_sidecar(root, stem, {**meta, **extra})
    budget.total += written
    report.bytes += written
    report.extracted.append(stem + ext)


def _file(path: Path, root: Path, budget: Budget, report: Report, image_col: str | None, key_col: str | None, batch_rows: int) -> None:
    try:
        pf = pq.ParquetFile(path)
        col = image_column(pf.schema_arrow, image_col)
    except (OSError, pa.ArrowException, MemberRefused) as exc:
        report.errors.append(f"{path.name}: {exc}")
        return
    key = key_column(pf.schema_arrow, key_col)
    index = 0
    try:
        with progress.bar(total=pf.metadata.num_rows, desc=f"unpack {path.name}", unit="row") as shown:
            for batch in pf.iter_batches(batch_size=batch_rows):
                for row in batch.to_pylist():
                    if not budget.next_member():
                        report.errors.append(f"more than max_members {budget.limits.max_members} rows; the rest was not read")
                        return
                    stem = safe_stem(row.get(key)) if key else None
                    ref = f"{path.name}#{index}"
                    try:
                        _row(root, row, stem or f"{path.stem}-{index:06d}", budget, report, col)
                    except MemberRefused as exc:
                        report.refuse(ref, str(exc))
                    index += 1
                shown.update(batch.num_rows)
    except (OSError, pa.ArrowException) as exc:
        report.errors.append(f"{path.name}: row {index}: {exc}")


def extract(
    paths: Iterable,
    dest,
    image_column: str | None = None,
    key_column: str | None = None,
    limits: Limits | None = None,
    batch_rows: int = 256,
) -> Report:
    """Unpack Parquet file(s) into ``dest`` as images plus ``.json`` sidecars, atomically, once."""
    files = [Path(p) for p in (paths if not isinstance(paths, (str, Path)) else [paths])]
    limits = limits or Limits()
    inputs = input_digests(files)
    options = {"kind": "parquet", "image_column": image_column, "key_column": key_column, "limits": dataclasses.asdict(limits)}

    def fill(root: Path, report: Report) -> None:
        budget = Budget(limits)
        for path in files:
            _file(path, root, budget, report, image_column, key_column, batch_rows)

    return materialize(dest, inputs, options, fill)
