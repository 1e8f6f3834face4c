"""WebDataset sources: tar shards unpacked into the image_folder layout.

Members sharing a key (the member path up to the first dot of its file name) and standing
together in the tar form one sample: an image (``key.jpg``, ``.jpeg``, ``.png``, ``.webp``,
``.gif``, ``.bmp``, ``.tif``, ``.tiff``) plus ``key.json``, ``key.txt`` and ``key.cls``, as
img2dataset and the ``webdataset`` library write them. Each sample becomes the image (keeping
its member path) and one ``key.json`` sidecar merging:

- the ``.json`` object's fields;
- the ``.txt`` text as ``caption`` (WebDataset and img2dataset store captions there, not tags;
  a ``caption`` in the json wins);
- the ``.cls`` label as ``cls`` (an integer when it reads as one).

No ``.txt`` is written, so the ingest never mistakes a caption for tags. Other members
(``.npy``, ``.seg.png``...) are listed as ignored. A sample without an image, a second image for
one key, and a key seen again later in the shards are reported, not written. Member safety and
limits are exactly those of :mod:`trainset.sources.archive` (same checks, same code).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path, PurePosixPath
from typing import Iterable

from .. import progress
from .archive import READ_ERRORS, Budget, Limits, MemberRefused, Report, input_digests, materialize, read_member, tar_entries, write_new, write_sidecar

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
META_EXTENSIONS = ("json", "txt", "cls")


def split_key(rel: str) -> tuple[str, str]:
    """(key, extension) of a member: ``dir/0001.seg.png`` -> (``dir/0001``, ``seg.png``)."""
    path = PurePosixPath(rel)
    base, _, ext = path.name.partition(".")
    return (path.parent / base).as_posix() if str(path.parent) != "." else base, ext.lower()


def _meta(files: dict[str, bytes], key: str, report: Report) -> dict:
    """The sidecar fields of one sample from its json, txt and cls members."""
    meta: dict = {}
    if "json" in files:
        try:
            doc = json.loads(files["json"].decode("utf-8-sig"))
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            meta.update(doc)
        except (UnicodeDecodeError, ValueError) as exc:
            report.refuse(f"{key}.json", f"unreadable metadata: {exc}")
    if "txt" in files:
        meta.setdefault("caption", files["txt"].decode("utf-8", "replace").strip())
    if "cls" in files:
        text = files["cls"].decode("utf-8", "replace").strip()
        meta["cls"] = int(text) if text.lstrip("-").isdigit() else text
    return meta


def _write_sample(root: Path, key: str, members: list[tuple[str, bytes]], budget: Budget, keys: set[str], report: Report) -> None:
    images = [(ext, data) for ext, data in members if ext in IMAGE_EXTENSIONS]
    files = {ext: data for ext, data in members if ext in META_EXTENSIONS}
    report.ignored += [f"{key}.{ext}" for ext, _ in members if ext not in IMAGE_EXTENSIONS and ext not in META_EXTENSIONS]
    for ext, _ in images[1:]:
        report.refuse(f"{key}.{ext}", "a second image for the same key")
    if not images:
        report.refuse(key, "sample without an image")
        return
    ext, data = images[0]
    if key in keys:
        report.refuse(f"{key}.{ext}", f"key {key!r} seen again: samples must not repeat")
        return
    keys.add(key)
    try:
        written = write_new(root, f"{key}.{ext}", data) + write_sidecar(root, key, _meta(files, key, report))
    except MemberRefused as exc:
        report.refuse(f"{key}.{ext}", str(exc))
        return
    budget.total += written
    report.bytes += written
    report.extracted.append(f"{key}.{ext}")


def _shard(path: Path, root: Path, budget: Budget, keys: set[str], report: Report) -> None:
    key, members = None, []
    for rel, src, compressed in progress.bar(tar_entries(path, budget, report), desc=f"unpack {path.name}", unit="file"):
        this, ext = split_key(rel)
        if this != key and key is not None:
            _write_sample(root, key, members, budget, keys, report)
            members = []
        key = this
        try:
            members.append((ext, read_member(src, budget, compressed)))
        except MemberRefused as exc:
            report.refuse(rel, str(exc))
        except READ_ERRORS as exc:
            report.refuse(rel, f"unreadable: {exc or type(exc).__name__}")
    if key is not None:
        _write_sample(root, key, members, budget, keys, report)


def extract(shards: Iterable, dest, limits: Limits | None = None) -> Report:
    """Unpack WebDataset tar shard(s) into ``dest`` as images plus ``.json`` sidecars, atomically, once."""
    files = [Path(p) for p in (shards if not isinstance(shards, (str, Path)) else [shards])]
    limits = limits or Limits()
    inputs = input_digests(files)
    options = {"kind": "webdataset", "limits": dataclasses.asdict(limits)}

    def fill(root: Path, report: Report) -> None:
        budget, keys = Budget(limits), set()
        for path in files:
            _shard(path, root, budget, keys, report)

    return materialize(dest, inputs, options, fill)
