"""Archive sources: a zip or tar (``.tar``, ``.tar.gz``/``.tgz``, ``.tar.bz2``, ``.tar.xz``)
unpacked into a folder in the ``image_folder`` layout, so every later stage reads a folder.

An archive is untrusted input. Every member passes :func:`member_path` and the type checks
here before one byte is written, and nothing is ever written outside the target folder:

- absolute names (``/x``, ``C:\\x``, ``\\\\server\\x``), names that climb out with ``..`` once
  normalised (backslashes count as separators, as Windows zip tools write them), empty names
  and names holding NUL are refused;
- links are refused, all of them: a symlink or hard link that points outside the target could
  make a later write land anywhere, and one that points inside only duplicates a member.
  The reason says when the link would have escaped;
- device, FIFO and socket members, and member types tar does not know, are refused;
- a second member with a name already written is refused (no member overwrites another);
- zip bombs: a member whose declared or streamed size passes ``max_member_bytes``, whose
  compression ratio passes ``max_ratio`` (checked once it has produced ``ratio_floor_bytes``),
  that would take the archive past ``max_total_bytes``, or a zip entry whose data overlaps
  another's is refused. Sizes are counted while streaming too, since headers can lie. Past
  ``max_members`` entries the rest of the archive is not read.

A refused member never stops the others. A corrupt or truncated archive keeps what was read
before the damage, and the error is in the report (a zip whose central directory is lost is
read from its local headers, up to the damage).

Extraction is atomic per archive (a temporary folder beside the target, renamed over it) and
idempotent: the target keeps a hidden marker with the archive's SHA-256 and the limits, and an
unchanged archive is not unpacked again. A target folder that trainset did not make is never
replaced.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import lzma
import math
import os
import re
import stat
import struct
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Iterator, Mapping

from .. import progress
from ..atomic import atomic_dir, write_text
from ..config import ConfigError, as_flag
from ..rating import RatingError, normalize_rating
from .image_folder import SourceError

MARKER = ".trainset-source.json"
CHUNK = 1 << 20
_DRIVE = re.compile(r"^[A-Za-z]:")
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")


class MemberRefused(ValueError):
    """One member that is not written; the message is the reason given in the report."""


@dataclass(frozen=True)
class Limits:
    """Bounds on what one archive (or one materialized source) may produce."""

    max_total_bytes: int = 16 * 2**30
    max_member_bytes: int = 512 * 2**20
    max_ratio: float = 200.0
    ratio_floor_bytes: int = 2**20
    max_members: int = 1_000_000

    @classmethod
    def from_params(cls, params: Mapping | None) -> "Limits":
        """Limits from params (missing keys keep their defaults; unknown keys are an error)."""
        params = dict(params or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(params) - names)
        if unknown:
            raise ConfigError(f"unknown archive limit(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        for key, value in params.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"archive limit {key} must be a positive number, got {value!r}")
        return cls(**params)


@dataclass
class Report:
    """What one materialization did: written members, refused ones with reasons, and errors."""

    inputs: list[dict] = field(default_factory=list)
    extracted: list[str] = field(default_factory=list)
    refused: list[dict] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    bytes: int = 0
    errors: list[str] = field(default_factory=list)
    unchanged: bool = False

    def refuse(self, member: str, reason: str) -> None:
        self.refused.append({"member": member, "reason": reason})

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, doc: Mapping) -> "Report":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in names})


# --- member safety (one code path for archives and WebDataset shards) ---------------------


def member_path(name: str) -> str:
    """The member's name as a safe relative POSIX path inside the target, or MemberRefused."""
    if not name or "\x00" in name:
        raise MemberRefused("empty name or a NUL byte in the name")
    text = name.replace("\\", "/")
    if text.startswith("/"):
        raise MemberRefused("absolute path")
    if _DRIVE.match(text):
        raise MemberRefused("absolute path (drive letter)")
    parts: list[str] = []
    for part in text.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise MemberRefused("'..' climbs out of the target folder")
            parts.pop()
        else:
            parts.append(part)
    if not parts:
        raise MemberRefused("the name points at the target folder itself")
    return "/".join(parts)


def _link_reason(kind: str, rel: str, target: str, hard: bool) -> str:
    """Why a link is refused; says whether it would have escaped the target."""
    base = "" if hard else rel.rpartition("/")[0]
    try:
        member_path(f"{base}/{target}" if base and not target.startswith(("/", "\\")) else target)
        where = "inside the target"
    except MemberRefused:
        where = "outside the target"
    return f"{kind} to {target!r} ({where}); links are never extracted"


def check_tar_member(info: tarfile.TarInfo) -> str:
    """Safe relative path of a tar member that may be written (a file or a folder)."""
    rel = member_path(info.name)
    if info.issym():
        raise MemberRefused(_link_reason("symlink", rel, info.linkname, hard=False))
    if info.islnk():
        raise MemberRefused(_link_reason("hard link", rel, info.linkname, hard=True))
    if info.ischr() or info.isblk() or info.isfifo():
        raise MemberRefused("device or FIFO member")
    if not (info.isreg() or info.isdir()):
        raise MemberRefused(f"member type {info.type!r} is not a regular file or folder")
    return rel


def check_zip_member(info: zipfile.ZipInfo, read_target: Callable[[], str]) -> str:
    """Safe relative path of a zip entry; Unix mode bits mark links and special files."""
    rel = member_path(info.filename)
    mode = info.external_attr >> 16 if info.create_system == 3 else 0  # Unix-made entries only
    if stat.S_IFMT(mode) == 0:
        return rel
    if stat.S_ISLNK(mode):
        raise MemberRefused(_link_reason("symlink", rel, read_target(), hard=False))
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise MemberRefused("device, FIFO or socket member")
    return rel


class Budget:
    """Running counts of one materialization, checked against the limits."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.total = 0
        self.members = 0
        self.names: set[str] = set()

    def next_member(self) -> bool:
        """Count one more entry; False once past ``max_members`` (stop reading)."""
        self.members += 1
        return self.members <= self.limits.max_members

    def claim(self, name: str) -> None:
        if name in self.names:
            raise MemberRefused(f"duplicate name {name!r}: it would overwrite an earlier member")
        self.names.add(name)

    def admit(self, declared: int, compressed: int | None = None) -> None:
        """Refuse on the sizes the header declares, before reading."""
        lim = self.limits
        if declared > lim.max_member_bytes:
            raise MemberRefused(f"declares {declared} bytes, over max_member_bytes {lim.max_member_bytes}")
        if self.total + declared > lim.max_total_bytes:
            raise MemberRefused(f"would take the archive past max_total_bytes {lim.max_total_bytes}")
        if compressed is not None:
            self._check_ratio(declared, compressed, "declared")

    def check_stream(self, produced: int, compressed: int) -> None:
        """Refuse while streaming, on the bytes actually produced."""
        lim = self.limits
        if produced > lim.max_member_bytes:
            raise MemberRefused(f"produced more than max_member_bytes {lim.max_member_bytes} (its header lied)")
        if self.total + produced > lim.max_total_bytes:
            raise MemberRefused(f"took the archive past max_total_bytes {lim.max_total_bytes}")
        self._check_ratio(produced, compressed, "streamed")

    def _check_ratio(self, size: int, compressed: int, how: str) -> None:
        if size < self.limits.ratio_floor_bytes:
            return
        ratio = size / max(compressed, 1)
        if ratio > self.limits.max_ratio:
            raise MemberRefused(f"{how} compression ratio {ratio:.0f} over max_ratio {self.limits.max_ratio:g} (zip bomb)")


def stream_chunks(src: IO[bytes], budget: Budget, compressed: Callable[[], int]) -> Iterator[bytes]:
    """Chunks of a member, each checked against the budget before it is used."""
    produced = 0
    while chunk := src.read(CHUNK):
        produced += len(chunk)
        budget.check_stream(produced, compressed())
        yield chunk


def read_member(src: IO[bytes], budget: Budget, compressed: Callable[[], int]) -> bytes:
    """A whole member in memory (bounded by ``max_member_bytes``)."""
    return b"".join(stream_chunks(src, budget, compressed))


def write_new(root: Path, rel: str, chunks) -> int:
    """Write ``chunks`` to a NEW file ``root/rel`` (never through a link); removed on failure."""
    target = root / rel
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        raise MemberRefused(f"cannot be created ({exc.strerror}): it clashes with another member") from None
    written = 0
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in [chunks] if isinstance(chunks, bytes) else chunks:
                out.write(chunk)
                written += len(chunk)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return written


# --- tar ------------------------------------------------------------------------------------


class _Counting:
    """A read-only file that counts the raw (still compressed) bytes read from it."""

    def __init__(self, fh: IO[bytes]):
        self.fh = fh
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self.fh.read(size)
        self.count += len(data)
        return data


_TAR_ERRORS = (tarfile.TarError, EOFError, OSError, ValueError, zlib.error, lzma.LZMAError)
READ_ERRORS = _TAR_ERRORS + (zipfile.BadZipFile, RuntimeError, NotImplementedError)


def tar_entries(path: Path, budget: Budget, report: Report) -> Iterator[tuple[str, IO[bytes], Callable[[], int]]]:
    """Safe regular-file members of a tar as (relative path, reader, compressed bytes used so far).

    The tar is read front to back (any compression), so memory stays bounded. Refusals go to
    ``report``; damage ends the walk with an error in ``report.errors``."""
    with open(path, "rb") as fh:
        raw = _Counting(fh)
        try:
            with tarfile.open(fileobj=raw, mode="r|*") as tf:
                yield from _walk_tar(tf, raw, budget, report)
                if _truncated(tf):
                    report.errors.append(f"{path.name}: truncated (no end-of-archive marker)")
        except _TAR_ERRORS as exc:
            report.errors.append(f"{path.name}: {exc or type(exc).__name__}")


def _walk_tar(tf: tarfile.TarFile, raw: _Counting, budget: Budget, report: Report):
    for info in tf:
        if not budget.next_member():
            report.errors.append(f"more than max_members {budget.limits.max_members} entries; the rest was not read")
            return
        tf.members.clear()  # stream mode keeps every header otherwise
        try:
            rel = check_tar_member(info)
            if info.isdir():
                continue
            budget.admit(info.size)
            budget.claim(rel)
        except MemberRefused as exc:
            report.refuse(info.name, str(exc))
            if info.offset_data + info.size > budget.limits.max_total_bytes:
                report.errors.append(f"{info.name}: skipping it would read past max_total_bytes; the rest was not read")
                return
            continue
        start = raw.count
        src = tf.extractfile(info)
        yield rel, src, lambda: raw.count - start
        # whatever the consumer left unread is skipped by the tar reader itself


def _truncated(tf: tarfile.TarFile) -> bool:
    """True when the stream ended without the zero block that closes a tar."""
    return tf.fileobj.tell() - tf.offset < tarfile.BLOCKSIZE


def _extract_tar(path: Path, root: Path, budget: Budget, report: Report) -> None:
    for rel, src, compressed in progress.bar(tar_entries(path, budget, report), desc=f"unpack {path.name}", unit="file"):
        _write_entry(root, rel, rel, src, budget, compressed, report)


def _write_entry(root, rel, name, src, budget, compressed, report) -> None:
    try:
        written = write_new(root, rel, stream_chunks(src, budget, compressed))
    except MemberRefused as exc:
        report.refuse(name, str(exc))
        return
    except READ_ERRORS as exc:
        # a damaged tar also ends the walk: the tar reader reports it at the next header
        report.refuse(name, f"unreadable: {exc or type(exc).__name__}")
        return
    budget.total += written
    report.bytes += written
    report.extracted.append(rel)


# --- zip ------------------------------------------------------------------------------------


def _extract_zip(path: Path, root: Path, budget: Budget, report: Report) -> None:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        report.errors.append(f"{path.name}: {exc} (damaged or truncated zip: members read from their local headers)")
        _recover_zip(path, root, budget, report)
        return
    offsets: set[int] = set()
    with zf, progress.bar(zf.infolist(), desc=f"unpack {path.name}", unit="file") as members:
        for info in members:
            if not budget.next_member():
                report.errors.append(f"more than max_members {budget.limits.max_members} entries; the rest was not read")
                return
            _zip_member(zf, info, root, budget, offsets, report)


def _zip_member(zf, info, root, budget, offsets, report) -> None:
    try:
        rel = check_zip_member(info, lambda: _link_target(zf, info))
        if info.is_dir():
            return
        if info.header_offset in offsets:
            raise MemberRefused("its data overlaps another member (overlapping-entry zip bomb)")
        offsets.add(info.header_offset)
        budget.admit(info.file_size, info.compress_size)
        budget.claim(rel)
        with zf.open(info) as src:
            _write_entry(root, rel, info.filename, src, budget, lambda: info.compress_size, report)
    except MemberRefused as exc:
        report.refuse(info.filename, str(exc))
    except READ_ERRORS as exc:
        report.refuse(info.filename, f"unreadable: {exc}")


_LOCAL = struct.Struct("<4s5H3I2H")


def _local_entries(fh: IO[bytes]) -> Iterator[tuple[zipfile.ZipInfo, int]]:
    """Entries of a zip without its central directory, walking the local headers in order.
    The walk stops at an entry whose sizes are not in its header (streamed zips, zip64)."""
    offset = 0
    while True:
        fh.seek(offset)
        head = fh.read(_LOCAL.size)
        if len(head) < _LOCAL.size or head[:4] != b"PK\x03\x04":
            return
        _, _, flags, method, _, _, crc, csize, usize, nlen, xlen = _LOCAL.unpack(head)
        if flags & 0x08 or 0xFFFFFFFF in (csize, usize):
            return
        info = zipfile.ZipInfo(fh.read(nlen).decode("utf-8" if flags & 0x800 else "cp437"))
        info.flag_bits, info.compress_type, info.CRC = flags, method, crc
        info.compress_size, info.file_size, info.header_offset = csize, usize, offset
        data_at = offset + _LOCAL.size + nlen + xlen
        yield info, data_at
        offset = data_at + csize


def _recover_zip(path: Path, root: Path, budget: Budget, report: Report) -> None:
    with open(path, "rb") as fh:
        for info, data_at in _local_entries(fh):
            if not budget.next_member():
                return
            try:
                rel = check_zip_member(info, lambda: "<unknown>")
                if info.is_dir():
                    continue
                if info.flag_bits & 0x01:
                    raise MemberRefused("encrypted")
                budget.admit(info.file_size, info.compress_size)
                budget.claim(rel)
                fh.seek(data_at)
                src = zipfile.ZipExtFile(fh, "r", info)
                _write_entry(root, rel, info.filename, src, budget, lambda: info.compress_size, report)
            except MemberRefused as exc:
                report.refuse(info.filename, str(exc))
            except READ_ERRORS as exc:
                report.refuse(info.filename, f"unreadable: {exc}")


def _link_target(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> str:
    """A zip symlink's target (its data), read only for the refusal message."""
    if info.file_size > 4096:
        return "<long target>"
    try:
        return zf.read(info).decode("utf-8", "replace")
    except (zipfile.BadZipFile, RuntimeError, NotImplementedError, OSError):
        return "<unreadable target>"


# --- materializing: atomic, idempotent --------------------------------------------------------


def input_digests(paths) -> list[dict]:
    """Each input's path and SHA-256: what decides whether a materialization is unchanged."""
    from .. import hashing  # noqa: PLC0415 (numba and scipy: not imported when the Snakefile lists sources)

    out = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise SourceError(f"source file {path} does not exist or is not a file")
        out.append({"path": str(path), "sha256": hashing.sha256_file(path)})
    return out


def materialize(dest, inputs: list[dict], options: Mapping, fill: Callable[[Path, Report], None]) -> Report:
    """Run ``fill`` into a temporary folder that then replaces ``dest``; skipped when the
    inputs (by SHA-256) and options are those ``dest`` was made from."""
    dest = Path(dest)
    key = hashlib.sha256(json.dumps([inputs, dict(options)], sort_keys=True, default=str).encode()).hexdigest()
    stored = _marker(dest)
    if stored is not None and stored.get("key") == key:
        return dataclasses.replace(Report.from_dict(stored.get("report", {})), unchanged=True)
    if dest.exists() and stored is None and (not dest.is_dir() or any(dest.iterdir())):
        raise SourceError(f"refusing to replace {dest}: it is not a folder trainset materialized")
    report = Report(inputs=inputs)
    with atomic_dir(dest) as tmp:
        fill(tmp, report)
        write_text(tmp / MARKER, json.dumps({"key": key, "options": dict(options), "report": report.as_dict()}, indent=1, default=str))
    return report


def _marker(dest: Path) -> dict | None:
    try:
        doc = json.loads((dest / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def archive_format(path: Path) -> str:
    """``zip`` or ``tar`` from the file's first bytes (names can lie), else from its suffix."""
    with open(path, "rb") as fh:
        head = fh.read(512)
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    if head.startswith(_COMPRESSED_MAGIC) or head[257:262] == b"ustar":
        return "tar"
    name = path.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".tar", ".tgz", ".tar.gz", ".tbz2", ".tar.bz2", ".txz", ".tar.xz")):
        return "tar"
    raise SourceError(f"{path} is not a zip or tar archive")


def extract(archive_path, dest, limits: Limits | None = None) -> Report:
    """Unpack one archive into ``dest`` (image_folder layout), safely, atomically, once."""
    path = Path(archive_path)
    limits = limits or Limits()
    inputs = input_digests([path])
    kind = archive_format(path)
    options = {"kind": "archive", "limits": dataclasses.asdict(limits)}

    def fill(root: Path, report: Report) -> None:
        budget = Budget(limits)
        (_extract_zip if kind == "zip" else _extract_tar)(path, root, budget, report)

    return materialize(dest, inputs, options, fill)


# --- sidecars (shared by the Parquet and WebDataset materializers) -----------------------------


IMAGE_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", ".png"),
    (b"\xff\xd8\xff", ".jpg"),
    (b"GIF87a", ".gif"),
    (b"GIF89a", ".gif"),
    (b"II*\x00", ".tif"),
    (b"MM\x00*", ".tif"),
    (b"BM", ".bmp"),
)


def sniff_extension(data: bytes) -> str | None:
    """The image extension the bytes' magic number says, or None when not a known image."""
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    for magic, ext in IMAGE_MAGIC:
        if data.startswith(magic):
            return ext
    return None


def json_safe(value):
    """``value`` as JSON can hold it: bytes dropped, NaN to null, dates as ISO text."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items() if not isinstance(v, (bytes, bytearray, memoryview))}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def sidecar_doc(meta: Mapping) -> dict:
    """Metadata as an image_folder ``.json`` sidecar: ``tags`` a list, ``rating`` one the
    ingest understands (else kept as ``rating_raw``), ``caption`` from ``caption`` or ``text``."""
    doc = {k: v for k, v in json_safe(dict(meta)).items() if v is not None}
    if "tags" in doc:
        raw = doc.pop("tags")
        tags = _tag_list(raw)
        doc["tags" if tags is not None else "tags_raw"] = raw if tags is None else tags
    if "rating" in doc:
        try:
            normalize_rating(doc["rating"])
        except RatingError:
            doc["rating_raw"] = doc.pop("rating")
    if "generated" in doc:
        try:
            as_flag(doc["generated"], "'generated'")
        except ConfigError:
            doc["generated_raw"] = doc.pop("generated")
    if "caption" not in doc and isinstance(doc.get("text"), str):
        doc["caption"] = doc.pop("text")
    return json_safe(doc)


def _tag_list(tags) -> list[str] | None:
    if isinstance(tags, str):
        return [t.strip() for t in tags.split(",") if t.strip()]
    if isinstance(tags, list) and all(isinstance(t, str) for t in tags):
        return [t for t in tags if t.strip()]
    return None


def write_sidecar(root: Path, rel_stem: str, meta: Mapping) -> int:
    """Write ``rel_stem.json``; the size written."""
    text = json.dumps(sidecar_doc(meta), ensure_ascii=False, sort_keys=True, allow_nan=False)
    return write_new(root, f"{rel_stem}.json", text.encode("utf-8"))
