"""URL-list sources: a list of image URLs, downloaded into a folder once and checked.

Lists (:func:`read_list`):

- ``.txt`` / ``.lst`` / ``.urls``: one URL a line; blank lines and ``#`` comments are skipped;
- ``.csv`` / ``.tsv``: a header with a ``url`` column; optional ``sha256``, ``md5`` and
  ``filename``; every other non-empty column is kept as the entry's metadata;
- ``.jsonl`` / ``.ndjson``: one object a line with the same keys (metadata may be any JSON).

A bad line becomes a :class:`Problem` (file, line, reason) and the rest are still read.

Downloads (:func:`download`) never leave a half-written image: bytes go to a hidden
``.NAME.part`` file beside the target, which is renamed into place only once it is complete
and verified. A killed run leaves the ``.part``; the next run continues it with a ``Range``
request (``If-Range`` when the first response gave an ETag or Last-Modified) and starts over
when the server answers with the whole file instead. A finished file is not fetched again: it
is ``skipped_existing`` when it matches the listed checksum, or when the list gives none
(a finished file only exists once it was complete). A short body is caught from
Content-Length or Content-Range; a body that gives neither is only as sure as its checksum.

File names: the entry's ``filename`` when it is a plain, safe name, else ``sha1(url)`` plus an
extension from the Content-Type (``.jpg``, ``.png``...).

Opt-out: ``X-Robots-Tag`` carrying ``noai`` or ``noimageai`` means the file is not kept
(``opted_out``), whether or not the directive is scoped to a named bot: a site that opts out
any AI crawler has said what it wants for its images. ``none`` and ``noindex`` are about search
indexing, not training, so they are not honoured unless added to ``optout_directives``.
"""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import json
import mimetypes
import os
import random
import re
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator

from .. import progress
from ..atomic import write_text
from ..config import ConfigError, as_flag
from . import fetch
from .fetch import Allowlist, NetworkDisabled, RateLimiter, Timeouts

STATUSES = ("ok", "skipped_existing", "refused", "failed", "opted_out", "checksum_mismatch", "too_large", "wrong_type")
LIST_FORMATS = {
    ".txt": "txt", ".lst": "txt", ".urls": "txt",
    ".csv": "csv", ".tsv": "tsv",
    ".jsonl": "jsonl", ".ndjson": "jsonl",
}
KNOWN_KEYS = ("url", "sha256", "md5", "filename")
# Content-Type to file extension; fixed so that names do not depend on the host's mime tables
EXTENSIONS = {
    "image/jpeg": ".jpg", "image/pjpeg": ".jpg", "image/png": ".png", "image/gif": ".gif",
    "image/webp": ".webp", "image/bmp": ".bmp", "image/x-ms-bmp": ".bmp", "image/tiff": ".tiff",
    "image/avif": ".avif", "image/heic": ".heic", "image/heif": ".heif", "image/jxl": ".jxl",
    "image/svg+xml": ".svg", "image/x-icon": ".ico", "image/vnd.microsoft.icon": ".ico",
}
RETRY_STATUSES = frozenset({408, 425, 429})
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
HEX = re.compile(r"^[0-9a-f]+$")
CHUNK = 64 * 1024
SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


class ListError(ValueError):
    """A list file that cannot be read at all (unknown format, no ``url`` column)."""


@dataclass(frozen=True)
class Problem:
    """One line of a list that was not used, and why."""

    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass(frozen=True)
class Entry:
    """One URL to fetch, with what the list says about it."""

    url: str
    sha256: str | None = None
    md5: str | None = None
    filename: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    file: str | None = None
    line: int | None = None

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.file else self.url


# ---------------------------------------------------------------- reading lists


def _checksum(value: Any, name: str, length: int) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string of {length} hex digits")
    digest = value.strip().lower()
    if len(digest) != length or not HEX.match(digest):
        raise ValueError(f"{name} {value!r} is not {length} hex digits")
    return digest


def make_entry(fields: dict[str, Any], file: str | None = None, line: int | None = None) -> Entry:
    """An :class:`Entry` from one record's fields; ValueError names what is wrong."""
    url = fields.get("url")
    if not isinstance(url, str) or not url.strip():
        raise ValueError("no url")
    url = url.strip()
    if any(ch.isspace() for ch in url):
        raise ValueError(f"url {url!r} contains whitespace")
    filename = fields.get("filename")
    if filename is not None and not isinstance(filename, str):
        raise ValueError("filename must be a string")
    metadata = {k: v for k, v in fields.items() if k not in KNOWN_KEYS and v not in (None, "")}
    return Entry(
        url=url,
        sha256=_checksum(fields.get("sha256"), "sha256", 64),
        md5=_checksum(fields.get("md5"), "md5", 32),
        filename=(filename.strip() or None) if filename else None,
        metadata=metadata,
        file=file,
        line=line,
    )


def _read_txt(path: Path) -> Iterator[tuple[int, dict | str]]:
    with open(path, encoding="utf-8-sig") as fh:
        for number, text in enumerate(fh, 1):
            text = text.strip()
            if text and not text.startswith("#"):
                yield number, {"url": text}


def _read_csv(path: Path, delimiter: str) -> Iterator[tuple[int, dict | str]]:
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        header = next(reader, None)
        names = [h.strip().lower() for h in header or []]
        if "url" not in names:
            raise ListError(f"{path}: the header has no 'url' column")
        try:
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) > len(names):
                    yield reader.line_num, f"{len(row)} fields but the header has {len(names)}"
                    continue
                yield reader.line_num, {n: c.strip() for n, c in zip(names, row) if n}
        except csv.Error as exc:
            yield reader.line_num, f"unreadable CSV, the rest of the file is skipped: {exc}"


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict | str]]:
    with open(path, encoding="utf-8-sig") as fh:
        for number, text in enumerate(fh, 1):
            if not text.strip():
                continue
            try:
                doc = json.loads(text)
            except json.JSONDecodeError as exc:
                yield number, f"invalid JSON: {exc.msg}"
                continue
            yield number, doc if isinstance(doc, dict) else "expected a JSON object with a url"


def _records(path: Path) -> Iterator[tuple[int, dict | str]]:
    kind = LIST_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ListError(f"{path}: unknown list format {path.suffix!r}; use one of {', '.join(LIST_FORMATS)}")
    if kind == "txt":
        return _read_txt(path)
    if kind in ("csv", "tsv"):
        return _read_csv(path, "," if kind == "csv" else "\t")
    return _read_jsonl(path)


def read_list(path: str | Path) -> tuple[list[Entry], list[Problem]]:
    """Entries of a URL list and the lines that could not be used (the rest still count)."""
    path = Path(path)
    entries: list[Entry] = []
    problems: list[Problem] = []
    for number, record in _records(path):
        if isinstance(record, str):
            problems.append(Problem(str(path), number, record))
            continue
        try:
            entries.append(make_entry(record, str(path), number))
        except ValueError as exc:
            problems.append(Problem(str(path), number, str(exc)))
    return entries, problems


# ---------------------------------------------------------------- settings


def parse_size(value: Any, where: str) -> int:
    """A byte count as an integer or a string such as ``50MB`` or ``2 MiB``."""
    if isinstance(value, bool):
        raise ConfigError(f"{where} must be a size, got {value!r}")
    if isinstance(value, int) and value > 0:
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", str(value).lower())
    if not match or match.group(2) not in SIZE_UNITS or float(match.group(1)) <= 0:
        raise ConfigError(f"{where} must be a positive size such as 50000000 or '50MB', got {value!r}")
    return int(float(match.group(1)) * SIZE_UNITS[match.group(2)])


def _number(params: dict, key: str, default: float, *, minimum: float = 0.0, integer: bool = False) -> Any:
    value = params.get(key, default)
    if value is None:
        return default
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= minimum
    if integer:
        ok = ok and float(value).is_integer()
    if not ok:
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"network: {key!r} must be {kind} >= {minimum}, got {value!r}")
    return int(value) if integer else float(value)


def _strings(params: dict, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    value = params.get(key, list(default))
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(f"network: {key!r} must be a list of strings, got {value!r}")
    return tuple(v.strip() for v in value)


def _timeouts(value: Any) -> Timeouts:
    """One number for both, or ``{connect: s, read: s}``; unset gives 10 s to connect and 30 s per read."""
    if value is None:
        return Timeouts()
    if isinstance(value, dict):
        unknown = set(value) - {"connect", "read"}
        if unknown:
            raise ConfigError(f"network: 'timeout' takes connect and read, not {', '.join(sorted(unknown))}")
        return Timeouts(_number(value, "connect", 10.0, minimum=0.001), _number(value, "read", 30.0, minimum=0.001))
    seconds = _number({"timeout": value}, "timeout", 30.0, minimum=0.001)
    return Timeouts(seconds, seconds)


@dataclass(frozen=True)
class Settings:
    """How downloads behave; networking is off unless ``enabled`` is set.

    ``per_host_rate`` is requests per second per host name (0: no limit); ``retries`` counts
    tries after the first; ``deadline`` bounds one try in seconds, however slowly bytes arrive.
    """

    enabled: bool = False
    workers: int = 8
    retries: int = 3
    backoff: float = 1.0
    backoff_max: float = 30.0
    timeouts: Timeouts = Timeouts()
    deadline: float = 600.0
    max_bytes: int = 50 * 10**6
    content_types: tuple[str, ...] = ("image/*",)
    per_host_rate: float = 2.0
    allow: Allowlist = Allowlist()
    user_agent: str = "trainset-url-list/1"
    respect_noai: bool = True
    optout_directives: tuple[str, ...] = ("noai", "noimageai")
    max_redirects: int = 5
    ca_file: str | None = None
    seed: int = 0

    KEYS = (
        "enabled", "workers", "retries", "backoff", "backoff_max", "timeout", "deadline", "max_bytes",
        "content_types", "per_host_rate", "allow", "user_agent", "respect_noai", "optout_directives",
        "max_redirects", "ca_file", "seed",
    )

    @classmethod
    def from_params(cls, params: dict[str, Any] | None) -> "Settings":
        """Settings from the params block; unknown keys fail so a typo cannot go unnoticed."""
        params = dict(params or {})
        unknown = sorted(set(params) - set(cls.KEYS))
        if unknown:
            raise ConfigError(f"network: unknown key(s) {', '.join(unknown)}; expected {', '.join(cls.KEYS)}")
        try:
            allow = Allowlist.parse(_strings(params, "allow", ()))
        except ValueError as exc:
            raise ConfigError(f"network: 'allow': {exc}") from None
        ca_file = params.get("ca_file")
        if ca_file is not None and not isinstance(ca_file, str):
            raise ConfigError(f"network: 'ca_file' must be a path, got {ca_file!r}")
        user_agent = params.get("user_agent", cls.user_agent)
        if not isinstance(user_agent, str) or not user_agent.strip():
            raise ConfigError("network: 'user_agent' must be a non-empty string")
        return cls(
            enabled=as_flag(params.get("enabled", False), "network: 'enabled'"),
            workers=_number(params, "workers", 8, minimum=1, integer=True),
            retries=_number(params, "retries", 3, integer=True),
            backoff=_number(params, "backoff", 1.0),
            backoff_max=_number(params, "backoff_max", 30.0),
            timeouts=_timeouts(params.get("timeout")),
            deadline=_number(params, "deadline", 600.0, minimum=0.001),
            max_bytes=parse_size(params.get("max_bytes", cls.max_bytes), "network: 'max_bytes'"),
            content_types=tuple(t.lower() for t in _strings(params, "content_types", ("image/*",))),
            per_host_rate=_number(params, "per_host_rate", 2.0),
            allow=allow,
            user_agent=user_agent.strip(),
            respect_noai=as_flag(params.get("respect_noai", True), "network: 'respect_noai'"),
            optout_directives=tuple(d.lower() for d in _strings(params, "optout_directives", ("noai", "noimageai"))),
            max_redirects=_number(params, "max_redirects", 5, integer=True),
            ca_file=ca_file,
            seed=_number(params, "seed", 0, integer=True),
        )


# ---------------------------------------------------------------- results


@dataclass
class Result:
    """What happened to one entry: exactly one per entry, whatever went wrong."""

    url: str
    status: str
    reason: str
    path: str | None = None
    sha256: str | None = None
    bytes: int | None = None
    content_type: str | None = None
    http_status: int | None = None
    attempts: int = 0
    entry: Entry | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        """A flat record for a manifest or report (the entry's list position and metadata included)."""
        out = {k: v for k, v in asdict(self).items() if k != "entry"}
        entry = self.entry
        out.update(
            list_file=entry.file if entry else None,
            list_line=entry.line if entry else None,
            filename=entry.filename if entry else None,
            metadata=dict(entry.metadata) if entry else {},
        )
        return out


class _Retry(Exception):
    """This try failed in a way another try may fix; ``restart`` drops the partial file first."""

    def __init__(self, reason: str, http_status: int | None = None, retry_after: float | None = None,
                 restart: bool = False):
        super().__init__(reason)
        self.reason, self.http_status, self.retry_after, self.restart = reason, http_status, retry_after, restart


# ---------------------------------------------------------------- where files go


def safe_filename(name: str | None) -> bool:
    """A plain file name that cannot escape the folder, hide itself or clash with ``.part`` files."""
    return bool(name) and bool(SAFE_NAME.match(name)) and ".." not in name and not name.lower().endswith(".part")


def extension_for(content_type: str | None) -> str:
    if not content_type:
        return ".bin"
    return EXTENSIONS.get(content_type) or mimetypes.guess_extension(content_type, strict=False) or ".bin"


def _type_for(path: Path) -> str | None:
    suffix = path.suffix.lower()
    return next((t for t, ext in EXTENSIONS.items() if ext == suffix), None) or mimetypes.guess_type(path.name)[0]


@dataclass(frozen=True)
class Target:
    """Where one entry's file goes: a fixed name, or a stem that gets its extension later."""

    dest: Path
    stem: str
    fixed: bool

    @classmethod
    def for_entry(cls, entry: Entry, dest: Path) -> "Target":
        if safe_filename(entry.filename):
            return cls(dest, entry.filename, True)
        return cls(dest, hashlib.sha1(entry.url.encode("utf-8")).hexdigest(), False)

    @property
    def key(self) -> str:
        return self.stem.lower()

    @property
    def part(self) -> Path:
        return self.dest / f".{self.stem}.part"

    @property
    def meta(self) -> Path:
        return self.dest / f".{self.stem}.part.json"

    def final(self, content_type: str | None) -> Path:
        return self.dest / (self.stem if self.fixed else self.stem + extension_for(content_type))

    def existing(self) -> Path | None:
        if self.fixed:
            path = self.dest / self.stem
            return path if path.is_file() else None
        found = sorted(p for p in self.dest.glob(f"{self.stem}.*") if p.is_file())
        return found[0] if found else None

    def drop_part(self) -> None:
        self.part.unlink(missing_ok=True)
        self.meta.unlink(missing_ok=True)

    def resume_point(self, url: str) -> tuple[int, str | None]:
        """(bytes already on disk, validator for If-Range); (0, None) when there is nothing to continue."""
        try:
            size = self.part.stat().st_size
        except FileNotFoundError:
            return 0, None
        meta = self._read_meta()
        if meta.get("url", url) != url:
            self.drop_part()
            return 0, None
        return size, meta.get("validator")

    def _read_meta(self) -> dict:
        try:
            doc = json.loads(self.meta.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def write_meta(self, url: str, validator: str | None) -> None:
        write_text(self.meta, json.dumps({"url": url, "validator": validator}))


# ---------------------------------------------------------------- one download


class _Hashes:
    """SHA-256 always, MD5 only when the list gives one to check."""

    def __init__(self, want_md5: bool):
        self.sha256 = hashlib.sha256()
        self.md5 = hashlib.md5(usedforsecurity=False) if want_md5 else None

    def update(self, data: bytes) -> None:
        self.sha256.update(data)
        if self.md5 is not None:
            self.md5.update(data)

    def update_file(self, path: Path, limit: int | None = None) -> int:
        done = 0
        with open(path, "rb") as fh:
            while limit is None or done < limit:
                data = fh.read(CHUNK if limit is None else min(CHUNK, limit - done))
                if not data:
                    break
                self.update(data)
                done += len(data)
        return done

    def mismatch(self, entry: Entry) -> str | None:
        """Which listed checksum the bytes fail, in words, or None."""
        got = self.sha256.hexdigest()
        if entry.sha256 and got != entry.sha256:
            return f"sha256 is {got}, the list says {entry.sha256}"
        if entry.md5 and self.md5 is not None and self.md5.hexdigest() != entry.md5:
            return f"md5 is {self.md5.hexdigest()}, the list says {entry.md5}"
        return None


def media_type(headers) -> str | None:
    value = headers.get("Content-Type")
    if not value:
        return None
    return value.split(";", 1)[0].strip().lower() or None


def type_allowed(content_type: str | None, patterns: Iterable[str]) -> bool:
    patterns = list(patterns)
    if "*" in patterns or "*/*" in patterns:
        return True
    return content_type is not None and any(fnmatch.fnmatchcase(content_type, p) for p in patterns)


def opt_out(headers, directives: Iterable[str]) -> str | None:
    """The opt-out directive an ``X-Robots-Tag`` header carries (bot-scoped or not), or None."""
    wanted = set(directives)
    for value in headers.get_all("X-Robots-Tag") or []:
        for token in re.split(r"[,\s]+", value.lower()):
            token = token.rsplit(":", 1)[-1].strip()
            if token in wanted:
                return token
    return None


def _int_header(headers, name: str) -> int | None:
    try:
        value = int(headers.get(name, ""))
    except ValueError:
        return None
    return value if value >= 0 else None


def _retry_after(headers) -> float | None:
    value = _int_header(headers, "Retry-After")
    return float(value) if value is not None else None


def _span(status: int, headers, offset: int) -> tuple[int, int | None]:
    """(where this body starts in the file, the file's total size if known)."""
    length = _int_header(headers, "Content-Length")
    if status != 206:
        return 0, length
    match = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", headers.get("Content-Range", ""))
    if not match or int(match.group(1)) != offset:
        raise _Retry("the server sent a range that does not continue the partial file", 206, restart=True)
    if match.group(3) != "*":
        return offset, int(match.group(3))
    return offset, offset + length if length is not None else None


def _validator(headers) -> str | None:
    etag = headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return headers.get("Last-Modified")


def _result(entry: Entry, status: str, reason: str, **fields) -> Result:
    return Result(url=entry.url, status=status, reason=reason, entry=entry, **fields)


def _stream(fetched: fetch.Fetched, out, start: int, hashes: _Hashes, s: Settings, began: float) -> int | None:
    """Copy the body to ``out``; the bytes copied, or None once the file passes ``max_bytes``."""
    received = 0
    while True:
        try:
            data = fetched.read(CHUNK)
        except Exception as exc:
            raise _Retry(f"download interrupted: {fetch.describe(exc)}", fetched.status) from None
        if not data:
            return received
        received += len(data)
        if start + received > s.max_bytes:
            return None
        out.write(data)
        hashes.update(data)
        if time.monotonic() - began > s.deadline:
            raise _Retry(f"download took longer than {s.deadline:g} s", fetched.status)


def _receive(entry: Entry, target: Target, s: Settings, fetched: fetch.Fetched, offset: int, began: float) -> Result:
    """Check the response, then write, verify and publish the body."""
    status, headers = fetched.status, fetched.headers
    if offset and status == 416:
        raise _Retry("the server refused to continue the partial file", status, restart=True)
    if status in RETRY_STATUSES or status >= 500:
        raise _Retry(f"HTTP {status} {fetched.response.reason}".strip(), status, _retry_after(headers))
    if status not in (200, 206):
        return _result(entry, "failed", f"HTTP {status} {fetched.response.reason}".strip(), http_status=status)
    ctype = media_type(headers)
    directive = opt_out(headers, s.optout_directives) if s.respect_noai else None
    if directive:
        target.drop_part()
        return _result(entry, "opted_out", f"X-Robots-Tag: {directive}", http_status=status, content_type=ctype)
    if not type_allowed(ctype, s.content_types):
        target.drop_part()
        shown = ctype or "none given"
        return _result(entry, "wrong_type", f"Content-Type {shown} is not one of {', '.join(s.content_types)}",
                       http_status=status, content_type=ctype)
    start, total = _span(status, headers, offset)
    if total is not None and total > s.max_bytes:
        target.drop_part()
        return _result(entry, "too_large", f"{total} bytes is over the {s.max_bytes}-byte limit",
                       http_status=status, content_type=ctype, bytes=total)
    hashes = _Hashes(bool(entry.md5))
    if start:
        hashes.update_file(target.part, start)
    else:
        target.write_meta(entry.url, _validator(headers))
    with open(target.part, "ab" if start else "wb") as out:
        received = _stream(fetched, out, start, hashes, s, began)
        out.flush()
        os.fsync(out.fileno())
    if received is None:
        target.drop_part()
        return _result(entry, "too_large", f"the body passed the {s.max_bytes}-byte limit",
                       http_status=status, content_type=ctype)
    size = start + received
    if total is not None and size < total:
        raise _Retry(f"body cut short: {size} of {total} bytes", status)
    problem = hashes.mismatch(entry)
    if problem and start:
        raise _Retry(f"after resuming, {problem}", status, restart=True)
    if problem:
        target.drop_part()
        return _result(entry, "checksum_mismatch", problem, http_status=status, content_type=ctype, bytes=size)
    return _publish(entry, target, ctype, status, size, hashes.sha256.hexdigest())


def _publish(entry: Entry, target: Target, ctype: str | None, status: int, size: int, sha256: str) -> Result:
    """Move the verified ``.part`` into place; the rename is atomic, so the name never shows half a file."""
    stale = target.existing()
    final = target.final(ctype)
    os.replace(target.part, final)
    target.meta.unlink(missing_ok=True)
    if stale is not None and stale != final:
        stale.unlink(missing_ok=True)
    return _result(entry, "ok", "downloaded", path=str(final), sha256=sha256, bytes=size,
                   content_type=ctype, http_status=status)


def _attempt(entry: Entry, target: Target, s: Settings, limiter: RateLimiter, context) -> Result:
    """One try: request (continuing a partial file when there is one) and receive."""
    offset, validator = target.resume_point(entry.url)
    headers = {"User-Agent": s.user_agent, "Accept": ", ".join(s.content_types)}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if validator:
            headers["If-Range"] = validator
    began = time.monotonic()
    try:
        fetched = fetch.open_url(entry.url, headers=headers, allow=s.allow, timeouts=s.timeouts,
                                 limiter=limiter, max_redirects=s.max_redirects, context=context)
    except fetch.Refused as exc:
        return _result(entry, "refused", str(exc))
    except fetch.FetchError as exc:
        if exc.retryable:
            raise _Retry(str(exc)) from None
        return _result(entry, "failed", str(exc))
    with fetched:
        return _receive(entry, target, s, fetched, offset, began)


def _existing(entry: Entry, target: Target) -> Result | None:
    """A finished file that needs no download: it matches the listed checksum, or none is listed."""
    path = target.existing()
    if path is None:
        return None
    hashes = _Hashes(bool(entry.md5))
    size = hashes.update_file(path)
    if hashes.mismatch(entry):
        return None
    return _result(entry, "skipped_existing", "already downloaded", path=str(path),
                   sha256=hashes.sha256.hexdigest(), bytes=size, content_type=_type_for(path))


def backoff_delay(attempt: int, rng: random.Random, s: Settings, retry_after: float | None = None) -> float:
    """Exponential backoff with jitter (0.5x to 1.5x), capped; a server's Retry-After wins when longer."""
    delay = min(s.backoff_max, s.backoff * 2 ** (attempt - 1)) * (0.5 + rng.random())
    if retry_after is not None:
        delay = max(delay, min(retry_after, s.backoff_max))
    return delay


def _rng(seed: int, url: str) -> random.Random:
    """Jitter that differs between URLs (so retries spread out) yet repeats run to run."""
    return random.Random(seed ^ int.from_bytes(hashlib.sha1(url.encode("utf-8")).digest()[:8], "big"))


def fetch_one(entry: Entry, target: Target, s: Settings, limiter: RateLimiter, context=None) -> Result:
    """Download one entry with retries; a partial file that cannot be continued is restarted once for free."""
    done = _existing(entry, target)
    if done is not None:
        return done
    rng = _rng(s.seed, entry.url)
    attempts, free_restart, last = 0, True, None
    while attempts <= s.retries:
        if last is not None:
            time.sleep(backoff_delay(attempts, rng, s, last.retry_after))
        attempts += 1
        try:
            return replace(_attempt(entry, target, s, limiter, context), attempts=attempts)
        except _Retry as exc:
            last = exc
            if exc.restart:
                target.drop_part()
                if free_restart:
                    free_restart, attempts, last = False, attempts - 1, None
    return _result(entry, "failed", f"{last.reason} (gave up after {attempts} attempts)",
                   http_status=last.http_status, attempts=attempts)


def _guarded(entry: Entry, target: Target, s: Settings, limiter: RateLimiter, context) -> Result:
    """:func:`fetch_one`, with anything unexpected turned into this entry's ``failed`` result."""
    try:
        return fetch_one(entry, target, s, limiter, context)
    except Exception as exc:
        return _result(entry, "failed", f"unexpected error: {type(exc).__name__}: {exc}")


def _duplicate(entry: Entry, first: Entry, result: Result) -> Result:
    if entry.url == first.url:
        return replace(result, entry=entry, reason=f"same URL as {first.where}: {result.reason}")
    return _result(entry, "failed", f"file name {entry.filename!r} is already used by {first.where}")


def require_network(settings: Settings) -> None:
    if not settings.enabled:
        raise NetworkDisabled(
            "networking is off: set 'enabled: true' in the network settings of params.yaml to download URL lists"
        )


def download(entries: Iterable[Entry], dest_dir: str | Path, settings: Settings) -> list[Result]:
    """Fetch every entry into ``dest_dir`` in parallel; one :class:`Result` per entry, in order.

    Entries that would write the same file are fetched once: the same URL shares the first
    entry's result, a different URL with the same ``filename`` fails.
    """
    require_network(settings)
    entries = list(entries)
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    targets = [Target.for_entry(e, dest) for e in entries]
    first: dict[str, int] = {}
    for i, target in enumerate(targets):
        first.setdefault(target.key, i)
    limiter = RateLimiter(settings.per_host_rate)
    context = fetch.tls_context(settings.ca_file)
    results: list[Result | None] = [None] * len(entries)
    with ThreadPoolExecutor(max_workers=settings.workers) as pool:
        jobs = {i: pool.submit(_guarded, entries[i], targets[i], settings, limiter, context)
                for i in sorted(set(first.values()))}
        for _ in progress.bar(as_completed(jobs.values()), total=len(jobs), desc="download", unit="url"):
            pass  # the bar counts finished downloads; results are taken in list order below
        for i, job in jobs.items():
            results[i] = job.result()
    for i, target in enumerate(targets):
        j = first[target.key]
        if j != i:
            results[i] = _duplicate(entries[i], entries[j], results[j])
    return results  # type: ignore[return-value]
