"""The ``booru`` source kind: a folder of images plus the post records of the booru they came from.

The items are the IMAGE FILES under ``source.path`` (any depth, Kohya ``{repeats}_{name}``
folders honoured as for ``image_folder``). Post records are read from ``source.metadata``: one
file, or a folder (any depth) of ``.json`` / ``.jsonl`` / ``.ndjson`` files. A JSON file may hold
an array of posts, an object with a ``post`` or ``posts`` list (Gelbooru's answer), or one post
object; a JSONL file one post per line. Shapes understood, by their real field names:

- Danbooru v2 (and safebooru.donmai.us): ``id``, ``md5``, ``file_ext``, ``rating`` g/s/q/e,
  ``score``, ``source``, ``tag_string`` plus ``tag_string_general/character/copyright/artist/meta``
  (space-separated strings, or JSON arrays as in re-exported dumps that also rename ``id`` to
  ``_id``); tags given as ``[{"name": ..., "category": ...}]`` (Danbooru20xx dumps) also work;
- Danbooru v1, Moebooru (yande.re, konachan): ``id``, ``md5``, space-separated ``tags``,
  ``rating`` s/q/e, ``score``, ``source``, ``file_url``;
- Gelbooru (and v0.2): ``id``, ``md5`` or ``hash``, ``image`` (file name), space-separated
  ``tags`` (HTML entities such as ``&#039;`` decoded), ``rating`` as words or letters.

``source.site`` sets how a bare ``s`` rating reads (Danbooru: sensitive; the others: safe).

A record is joined to an image (``source.join``):

- ``md5``: the file's MD5 equals the record's ``md5``;
- ``filename``: the file name is the record's ``file_name``/``filename``/``image`` field,
  ``{md5}.{ext}`` or ``{id}.{ext}``; then the stem is the md5 or the id (any extension); then
  the stem holds the md5 (``danbooru_123_<md5>.jpg``);
- ``auto``: md5 first, then file name.

The MD5 of a file is computed only when some record gives an md5. When the joined record's md5
differs from the file's, the item is kept with ``ingest_reason = "md5_mismatch"`` so the filter
rejects it. An image with no record is kept with no tags and rating ``unknown``. A record that
matched but cannot be read (a rating no scheme knows, tags of the wrong type...) leaves the
image without metadata and puts the reason in ``sidecar_error``.

Nothing here raises on bad records: malformed JSON (file and line), records that match no image
and records shadowed by another for the same image are logged and returned by
:func:`unmatched_records`. Only a missing image folder or metadata path raises
:class:`~trainset.sources.image_folder.SourceError`.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Iterator
from urllib.parse import unquote, urlsplit

from .. import progress
from ..config import Source
from ..rating import RatingError, normalize_rating
from .image_folder import SourceError, file_row, normalize_extensions, walk

log = logging.getLogger(__name__)

METADATA_SUFFIXES = (".json", ".jsonl", ".ndjson")
# what params.yaml's ingest.extensions lists; used when unmatched_records() must read afresh
DEFAULT_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")
CATEGORIES = ("general", "character", "copyright", "artist", "meta")
NAME_FIELDS = ("file_name", "filename", "image")
_POST_KEYS = frozenset({"id", "_id", "md5", "hash", "tags", "tag_string", "file_url", "image", "file_name", "rating"})
_MD5 = re.compile(r"^[0-9a-f]{32}$")
_MD5_IN_NAME = re.compile(r"(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])")
_ENTITY = re.compile(r"&(?:#[0-9]+|#x[0-9a-fA-F]+|[A-Za-z]+);")
_ARTIST_CATEGORY = "1"  # Danbooru's category number for artist tags

# join ranks: lower wins for an image
_BY_MD5, _BY_NAME, _BY_STEM, _BY_MD5_IN_NAME = 0, 1, 2, 3
_HOW = {_BY_MD5: "md5", _BY_NAME: "file name", _BY_STEM: "file stem", _BY_MD5_IN_NAME: "md5 in file name"}


def _where(file: str, line: int | None, index: int | None) -> str:
    """``file:line[index]``: where in the metadata a post or a problem sits."""
    out = file
    if line is not None:
        out += f":{line}"
    if index is not None:
        out += f"[{index}]"
    return out


@dataclass
class Post:
    """One post record, read leniently: identity always, content unless ``error`` says why not."""

    file: str  # the metadata file, relative to the metadata folder (or its name)
    line: int | None = None  # 1-based line in a JSONL file
    index: int | None = None  # position in a JSON array
    post_id: str | None = None
    md5: str | None = None  # 32 lowercase hex digits, or None
    ext: str | None = None
    names: tuple[str, ...] = ()  # lowercased file names the record claims
    tags: list[str] = field(default_factory=list)
    artists: list[str] = field(default_factory=list)
    rating: str = "unknown"
    score: float | None = None
    source_url: str | None = None
    error: str | None = None

    @property
    def where(self) -> str:
        return _where(self.file, self.line, self.index)

    @property
    def stems(self) -> tuple[str, ...]:
        return tuple(s for s in (self.md5, self.post_id.lower() if self.post_id else None) if s)


@dataclass
class Problem:
    """A metadata file, line or array element that holds no readable post."""

    file: str
    line: int | None
    index: int | None
    note: str

    @property
    def where(self) -> str:
        return _where(self.file, self.line, self.index)


# --- reading records --------------------------------------------------------------------


def metadata_files(path: Path) -> list[tuple[Path, str]]:
    """(full path, display name) of the record files: the file itself, or a folder's files."""
    path = Path(path)
    if path.is_file():
        return [(path, path.name)]
    if path.is_dir():
        return [(path / rel, rel) for rel, _ in walk(path, METADATA_SUFFIXES)]
    raise SourceError(f"booru metadata {path} does not exist")


def iter_metadata(paths: Path | str | Iterable[Path | str], site: str = "danbooru") -> Iterator[Post | Problem]:
    """Every post record (as :class:`Post`) and every unreadable part (as :class:`Problem`)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    for path in paths:
        for full, name in metadata_files(Path(path)):
            yield from _read_file(full, name, site)


def read_metadata(paths: Path | str | Iterable[Path | str], site: str = "danbooru") -> tuple[list[Post], list[Problem]]:
    """All records and all problems of a metadata file or folder (or several), in file order."""
    posts: list[Post] = []
    problems: list[Problem] = []
    for item in iter_metadata(paths, site):
        (posts if isinstance(item, Post) else problems).append(item)
    return posts, problems


def _read_file(full: Path, name: str, site: str) -> Iterator[Post | Problem]:
    if full.suffix.lower() == ".json":
        try:
            text = full.read_bytes().decode("utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            yield Problem(name, None, None, f"cannot read: {exc}")
            return
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            if exc.msg == "Extra data":  # several JSON values, one per line: JSONL named .json
                yield from _read_lines(text.encode("utf-8").splitlines(), name, site)
            else:
                yield Problem(name, None, None, f"invalid JSON: {exc}")
            return
        yield from _read_doc(doc, name, None, site)
        return
    try:
        with open(full, "rb") as fh:
            yield from _read_lines(fh, name, site)
    except OSError as exc:
        yield Problem(name, None, None, f"cannot read: {exc}")


def _read_lines(lines: Iterable[bytes], name: str, site: str) -> Iterator[Post | Problem]:
    for number, raw in enumerate(lines, 1):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        if not raw.strip():
            continue
        try:
            doc = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            yield Problem(name, number, None, f"not UTF-8: {exc}")
            continue
        except json.JSONDecodeError as exc:
            yield Problem(name, number, None, f"invalid JSON: {exc}")
            continue
        yield from _read_doc(doc, name, number, site)


def _read_doc(doc: object, name: str, line: int | None, site: str) -> Iterator[Post | Problem]:
    try:
        items = _posts_in(doc)
    except ValueError as exc:
        yield Problem(name, line, None, str(exc))
        return
    for index, item in items:
        if isinstance(item, dict):
            yield parse_post(item, site, name, line, index)
        else:
            yield Problem(name, line, index, f"expected a post object, got {type(item).__name__}")


def _posts_in(doc: object) -> list[tuple[int | None, object]]:
    """The posts of one JSON value: an array, a {"post"/"posts": [...]} wrapper or one post."""
    if isinstance(doc, list):
        return list(enumerate(doc))
    if isinstance(doc, dict):
        for key in ("posts", "post"):
            if key in doc:
                inner = doc[key]
                if isinstance(inner, list):
                    return list(enumerate(inner))
                if isinstance(inner, dict):
                    return [(None, inner)]
                raise ValueError(f"{key!r} must be a list of posts, got {type(inner).__name__}")
        if _POST_KEYS & doc.keys():
            return [(None, doc)]
        if set(doc) <= {"@attributes"}:  # Gelbooru's answer when a search finds nothing
            return []
        raise ValueError(f"not a post record (keys: {', '.join(sorted(map(str, doc))[:8])})")
    raise ValueError(f"expected a post object or a list of posts, got {type(doc).__name__}")


def parse_post(doc: dict, site: str, file: str, line: int | None = None, index: int | None = None) -> Post:
    """One record. Identity (id, md5, names) is read leniently so a bad record can still match."""
    post = Post(file=file, line=line, index=index)
    errors: list[str] = []
    raw_id = doc.get("id", doc.get("_id"))
    if isinstance(raw_id, float) and raw_id.is_integer():
        raw_id = int(raw_id)
    if isinstance(raw_id, (int, str)) and not isinstance(raw_id, bool) and str(raw_id).strip():
        post.post_id = str(raw_id).strip()
    raw_md5 = doc.get("md5", doc.get("hash"))
    if isinstance(raw_md5, str) and _MD5.match(raw_md5.strip().lower()):
        post.md5 = raw_md5.strip().lower()
    elif raw_md5 not in (None, ""):
        errors.append(f"md5 {raw_md5!r} is not 32 hex digits")
    post.ext = _extension(doc)
    names = [_basename(doc[k]) for k in NAME_FIELDS if isinstance(doc.get(k), str) and doc[k].strip()]
    if post.ext:
        names += [f"{stem}.{post.ext}" for stem in post.stems]
    post.names = tuple(dict.fromkeys(n.lower() for n in names if n))
    try:
        post.tags, post.artists = _tags(doc)
        post.rating = normalize_rating(doc.get("rating"), site)
        post.score = _score(doc.get("score"))
        post.source_url = _text(doc.get("source"), "source")
    except (RatingError, TypeError, ValueError) as exc:
        errors.append(str(exc))
    if errors:
        post.tags, post.artists, post.rating, post.score, post.source_url = [], [], "unknown", None, None
        post.error = "; ".join(errors)
    return post


def _basename(value: str) -> str:
    return PurePosixPath(value.strip().replace("\\", "/")).name


def _extension(doc: dict) -> str | None:
    ext = doc.get("file_ext")
    if isinstance(ext, str) and ext.strip():
        return ext.strip().lstrip(".").lower()
    for key in ("image", "file_name", "filename", "file_url"):
        value = doc.get(key)
        if isinstance(value, str) and value.strip():
            path = unquote(urlsplit(value.strip()).path) if key == "file_url" else value
            suffix = PurePosixPath(_basename(path)).suffix
            if suffix:
                return suffix[1:].lower()
    return None


def _tag_list(value: object, key: str) -> tuple[list[str], list[str]]:
    """(tags, artist tags) of one field: a space-separated string, or a list of names or tag objects."""
    if value is None:
        return [], []
    names: list[str] = []
    artists: list[str] = []
    if isinstance(value, str):
        names = value.split()
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, str):
                tag = item.strip()  # one element is one tag, never split further
            elif isinstance(item, dict) and isinstance(item.get("name"), str):
                tag = item["name"].strip()
                if str(item.get("category", "")).strip() == _ARTIST_CATEGORY and tag:
                    artists.append(_unescape(tag))
            else:
                raise ValueError(f"{key!r} holds a {type(item).__name__}; expected tag names")
            if tag:
                names.append(tag)
    else:
        raise ValueError(f"{key!r} must be a space-separated string or a list of tags, got {type(value).__name__}")
    return [_unescape(t) for t in names], artists


def _unescape(tag: str) -> str:
    """Gelbooru sends HTML entities in tags (``&gt;_&lt;``); only whole entities are decoded."""
    return _ENTITY.sub(lambda m: html.unescape(m.group(0)), tag) if "&" in tag else tag


def _tags(doc: dict) -> tuple[list[str], list[str]]:
    key = "tag_string" if doc.get("tag_string") is not None else "tags"
    tags, artists = _tag_list(doc.get(key), key)
    for category in CATEGORIES:
        cat_key = f"tag_string_{category}"
        more, _ = _tag_list(doc.get(cat_key), cat_key)
        tags += more
        if category == "artist":
            artists += more
    return list(dict.fromkeys(tags)), list(dict.fromkeys(artists))


def _score(value: object) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"score must be a number, got {value!r}")
    try:
        score = float(value)
    except ValueError:
        raise ValueError(f"score must be a number, got {value!r}") from None
    if not math.isfinite(score):
        raise ValueError(f"score must be finite, got {value!r}")
    return score


def _text(value: object, key: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{key!r} must be a string, got {type(value).__name__}")
    return value.strip() or None


# --- joining records to images ----------------------------------------------------------


@dataclass
class Match:
    post: Post
    how: str
    file_md5: str | None = None  # computed only when the record gives an md5


@dataclass
class Joined:
    listing: list[tuple[str, os.stat_result]]
    matches: dict[str, Match]  # rel path -> the record used for it
    unmatched: list[dict]  # {source, record_id, md5, note}


_LAST: dict[str, list[dict]] = {}


class _Images:
    """Name and (lazily) md5 indexes of the image files."""

    def __init__(self, root: Path, listing: list[tuple[str, os.stat_result]]):
        self.root = root
        self.by_name: dict[str, list[str]] = {}
        self.by_stem: dict[str, list[str]] = {}
        self.by_md5_in_name: dict[str, list[str]] = {}
        for rel, _ in listing:
            path = PurePosixPath(rel.lower())
            self.by_name.setdefault(path.name, []).append(rel)
            self.by_stem.setdefault(path.stem, []).append(rel)
            for token in dict.fromkeys(_MD5_IN_NAME.findall(path.stem)):
                self.by_md5_in_name.setdefault(token, []).append(rel)
        self.rels = [rel for rel, _ in listing]
        self.md5: dict[str, str] = {}
        self._by_md5: dict[str, list[str]] | None = None

    def md5_of(self, rel: str) -> str:
        if rel not in self.md5:
            from .. import hashing  # noqa: PLC0415 (numba and scipy: not imported when the Snakefile lists sources)

            self.md5[rel] = hashing.md5_file(self.root / rel)
        return self.md5[rel]

    def by_md5(self) -> dict[str, list[str]]:
        if self._by_md5 is None:
            log.info("hashing %d image(s) under %s to join post records by md5", len(self.rels), self.root)
            self._by_md5 = {}
            for rel in progress.bar(self.rels, desc=f"md5 {self.root.name}", unit="file"):
                self._by_md5.setdefault(self.md5_of(rel), []).append(rel)
        return self._by_md5

    def hits(self, post: Post, join: str) -> Iterator[tuple[int, str]]:
        if join in ("md5", "auto") and post.md5:
            for rel in self.by_md5().get(post.md5, ()):
                yield _BY_MD5, rel
        if join in ("filename", "auto"):
            for name in post.names:
                for rel in self.by_name.get(name, ()):
                    yield _BY_NAME, rel
            for stem in post.stems:
                for rel in self.by_stem.get(stem, ()):
                    yield _BY_STEM, rel
            if post.md5:
                for rel in self.by_md5_in_name.get(post.md5, ()):
                    yield _BY_MD5_IN_NAME, rel


def join_records(source: Source, extensions: tuple[str, ...]) -> Joined:
    """The images of ``source``, the record joined to each, and the records joined to none."""
    if source.metadata is None:
        raise SourceError(f"source {source.name!r}: kind 'booru' needs a metadata path")
    site = source.site or source.rating_scheme
    join = source.join
    listing = walk(source.path, extensions)
    images = _Images(source.path, listing)
    best: dict[str, tuple[int, int, Post]] = {}  # rel -> (rank, record order, post)
    candidates: list[Post] = []
    unmatched: list[dict] = []
    seen: set[tuple[str, str | None]] = set()

    def note(record_id, md5, text):
        unmatched.append({"source": source.name, "record_id": record_id, "md5": md5, "note": text})

    for order, item in enumerate(iter_metadata(source.metadata, site)):
        if isinstance(item, Problem):
            log.warning("source %s: %s: %s", source.name, item.where, item.note)
            note(None, None, f"malformed record at {item.where}: {item.note}")
            continue
        post = item
        if post.post_id is not None:
            key = (post.post_id, post.md5)
            if key in seen:  # the same post listed twice (e.g. a single-post file beside a page)
                log.debug("source %s: %s repeats post %s; skipped", source.name, post.where, post.post_id)
                continue
            seen.add(key)
        hit = False
        for rank, rel in images.hits(post, join):
            hit = True
            if rel not in best or (rank, order) < best[rel][:2]:
                best[rel] = (rank, order, post)
        if hit:
            candidates.append(post)
        else:
            note(post.post_id, post.md5, f"no matching image ({post.where})")

    used = {id(post) for _, _, post in best.values()}
    for post in candidates:
        if id(post) not in used:  # every image it could join went to a better or earlier record
            rel = min(rel for _, rel in images.hits(post, join))
            winner = best[rel][2]
            note(post.post_id, post.md5, f"not used ({post.where}): {rel} was joined to post {winner.post_id} ({winner.where}) instead")

    matches: dict[str, Match] = {}
    for rel, (rank, _, post) in best.items():
        match = Match(post=post, how=_HOW[rank])
        if post.md5:
            match.file_md5 = images.md5_of(rel)
        matches[rel] = match

    for entry in unmatched:
        log.debug("source %s: record %s: %s", source.name, entry["record_id"], entry["note"])
    if unmatched:
        log.warning(
            "source %s: %d post record(s) or metadata problem(s) joined no image; see unmatched_records()",
            source.name,
            len(unmatched),
        )
    _LAST[source.name] = unmatched
    return Joined(listing=listing, matches=matches, unmatched=unmatched)


def unmatched_records(source: Source, extensions: Iterable[str] | None = None) -> list[dict]:
    """Records of ``source`` that joined no image, and metadata that could not be read, as
    ``{source, record_id, md5, note}`` dicts: from the last :func:`read` of this source in this
    process, or read afresh (images with ``extensions``, default :data:`DEFAULT_EXTENSIONS`)."""
    if source.name in _LAST:
        return [dict(entry) for entry in _LAST[source.name]]
    exts = normalize_extensions(extensions or DEFAULT_EXTENSIONS)
    return [dict(entry) for entry in join_records(source, exts).unmatched]


def read(
    source: Source,
    extensions: tuple[str, ...],
    digest: Callable[[Path, os.stat_result, str], str],
    display_path: Callable[[Path], str],
) -> Iterator[dict]:
    """Yield one ingest row per image file, with the metadata of the post record joined to it."""
    joined = join_records(source, extensions)
    for rel, st in progress.bar(joined.listing, desc=f"hash {source.name}", unit="file"):
        match = joined.matches.get(rel)
        post = match.post if match else None
        row = {
            **file_row(source, rel, st, digest, display_path),
            "tags": list(post.tags) if post else [],
            "rating": post.rating if post else "unknown",
            "generated": source.generated,
            "sidecar": post.file if post else None,
            "sidecar_error": f"{post.where}: {post.error}" if post and post.error else None,
            "artists": list(post.artists) if post else [],
            "score": post.score if post else None,
            "source_url": post.source_url if post else None,
            "post_id": post.post_id if post else None,
            "ingest_reason": None,
            "ingest_detail": None,
        }
        if post and post.md5 and match.file_md5 != post.md5:
            row["ingest_reason"] = "md5_mismatch"
            row["ingest_detail"] = (
                f"post {post.post_id} ({post.where}, joined by {match.how}) gives md5 {post.md5}; "
                f"the file's md5 is {match.file_md5}"
            )
        yield row


def source_fingerprint(source: Source, extensions: list[str]) -> str:
    """Digest of the image listing and the metadata files (paths, sizes, mtimes): changes when
    an image or a record file is added, removed or rewritten."""
    exts = normalize_extensions(extensions)
    h = hashlib.sha256()
    try:
        listing = walk(source.path, exts)
        meta = [(name, full.stat()) for full, name in metadata_files(source.metadata)] if source.metadata else []
    except (SourceError, OSError) as exc:
        return f"unreadable: {exc}"
    for tag, entries in (("image", listing), ("metadata", meta)):
        for rel, st in entries:
            h.update(f"{tag}\0{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]
