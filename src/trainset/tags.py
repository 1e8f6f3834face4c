"""Tag dictionary: turn booru tags into one canonical spelling before any policy looks at them.

Tags come in many spellings (``Long Hair``, ``long__hair``, ``LONG_HAIR``) and many
names for the same thing (``naked`` for ``nude``, ``lolicon`` for ``loli``).  A policy
that matches tag names must see one form, so everything goes through
:meth:`TagDictionary.canonicalize` first.

Dictionaries are Danbooru-style CSV files without a header, one tag a row::

    name,category,post_count,"alias1,alias2"

The alias field may be empty or missing.  Categories are the Danbooru integers
(0 general, 1 artist, 3 copyright, 4 character, 5 meta).  A small default
dictionary ships in ``trainset/data/tags/default.csv``; it covers the tags the
content policy uses, so the policy works offline.

Resolution rules, in order of precedence:

* Every name and alias is passed through :func:`normalize`.
* A tag that is a canonical name (the first column of any loaded row) is its own
  canonical form.  An alias never hijacks a canonical name, whichever file or row
  claims it.
* Otherwise, if the tag is an alias, it maps to the name of the *last* row that lists
  it (rows are read in order, files in the order given, the default dictionary first),
  so later files override earlier ones.
* A later row for a name already seen replaces that name's category; its aliases are
  added to the aliases the name already has.
* Any other tag comes back normalized and unchanged.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import re
import unicodedata
from collections.abc import Iterable
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["CATEGORIES", "TagDictionary", "list_array", "normalize"]

#: Danbooru category codes and the names :meth:`TagDictionary.category` returns.
CATEGORIES: dict[int, str] = {0: "general", 1: "artist", 3: "copyright", 4: "character", 5: "meta"}

# Bump when normalize() or the resolution rules change, so digests (and caches keyed on
# them) change with them.
_FORMAT_VERSION = "trainset-tags/1"

_SEPARATORS = re.compile(r"[\s_]+")


def normalize(tag: str) -> str:
    """The normal form of one tag: NFKC, lower case, trimmed, runs of spaces/underscores -> one ``_``.

    Only case and the space/underscore separator change; punctuation is kept, so
    emoticon tags such as ``:)``, ``^_^``, ``>_<`` and ``:3`` survive as they are.
    """
    if tag.isascii():  # NFKC leaves ASCII alone; skip it on the common path
        text = tag.lower()
    else:
        # NFKC again after lower-casing, which can (rarely) produce text that is not in NFKC.
        text = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", tag).lower())
    return _SEPARATORS.sub("_", text.strip())


def _default_csv() -> Traversable:
    return resources.files("trainset").joinpath("data", "tags", "default.csv")


class TagDictionary:
    """Canonical tag names, their categories and their aliases.  Build one with :meth:`load`."""

    #: Hex SHA-256 of the resolved content (names, categories, alias targets, format version):
    #: equal for dictionaries that canonicalize identically, so caches can key on it.
    digest: str

    def __init__(self, categories: dict[str, str], aliases: dict[str, str]) -> None:
        # name -> category; alias -> name.  Both keyed by normalized tags; no alias is a name.
        self._categories = dict(categories)
        self._aliases = {alias: name for alias, name in aliases.items() if alias not in self._categories}
        self._aliases_of: dict[str, set[str]] = {}
        for alias, name in self._aliases.items():
            self._aliases_of.setdefault(name, set()).add(alias)
        self.digest = self._compute_digest()

    # -- building --------------------------------------------------------------------

    @classmethod
    def load(cls, paths: Iterable[str | Path] | None = None, include_default: bool = True) -> TagDictionary:
        """Read the shipped default dictionary (unless ``include_default`` is false), then ``paths`` in order.

        Later rows override earlier ones (see the module docstring).  Raises
        ``ValueError`` naming the file and line of a malformed row, and ``OSError`` for a
        file that cannot be read.
        """
        categories: dict[str, str] = {}
        aliases: dict[str, str] = {}
        sources: list[tuple[str, str]] = []
        if include_default:
            default = _default_csv()
            sources.append((f"trainset/data/tags/{default.name}", default.read_text(encoding="utf-8-sig")))
        if isinstance(paths, (str, Path)):
            paths = [paths]
        for path in paths or ():
            path = Path(path)
            sources.append((str(path), path.read_text(encoding="utf-8-sig")))
        for source, text in sources:
            for name, category, row_aliases in _parse_csv(text, source):
                categories[name] = category
                for alias in row_aliases:
                    aliases[alias] = name
        return cls(categories, aliases)

    # -- lookups ---------------------------------------------------------------------

    def canonical(self, tag: str) -> str:
        """The canonical name of ``tag``; an unknown tag comes back normalized."""
        norm = normalize(tag)
        if norm in self._categories:
            return norm
        return self._aliases.get(norm, norm)

    def category(self, tag: str) -> str | None:
        """``"general"``, ``"artist"``, ``"copyright"``, ``"character"`` or ``"meta"``; ``None`` if unknown."""
        return self._categories.get(self.canonical(tag))

    def canonicalize(self, tags: Iterable[str]) -> list[str]:
        """Canonical names of ``tags`` in their first-seen order, without duplicates or empty tags."""
        if isinstance(tags, str):
            raise TypeError("canonicalize() takes an iterable of tags, not one string; use canonical()")
        seen: dict[str, None] = {}
        for tag in tags:
            name = self.canonical(tag)
            if name:
                seen.setdefault(name, None)
        return list(seen)

    def canonicalize_all(self, tag_lists: Iterable[Iterable[str]]) -> list[list[str]]:
        """:meth:`canonicalize` for each of ``tag_lists`` (see :meth:`canonicalize_lists`)."""
        lists = tag_lists if isinstance(tag_lists, list) else list(tag_lists)
        if any(map(isinstance, lists, itertools.repeat(str))):
            raise TypeError("canonicalize_all() takes iterables of tags, not strings")
        return self.canonicalize_lists(pa.array([list(tags) for tags in lists], type=_LIST)).to_pylist()

    def canonicalize_lists(self, lists: pa.ListArray) -> pa.ListArray:
        """:meth:`canonicalize` for each list of an Arrow list column, without a Python object per
        tag: a column of tag lists repeats a few thousand tags millions of times, so each distinct
        tag is resolved once and the lists are rebuilt from positions."""
        lists = lists.cast(_LIST)
        flat = pc.dictionary_encode(lists.flatten())
        index: dict[str, int] = {}
        name_of = np.array([index.setdefault(self.canonical(tag), len(index)) for tag in flat.dictionary.to_pylist()], dtype=np.int64)
        names = pa.array(list(index), type=pa.string())
        name = name_of[flat.indices.to_numpy(zero_copy_only=False)] if len(flat) else np.zeros(0, dtype=np.int64)
        row = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False).astype(np.int64)
        keep = _first_of_each(row * max(len(index), 1) + name)  # first spelling of a name in its list
        keep &= (pc.utf8_length(names).to_numpy(zero_copy_only=False) > 0)[name]  # a tag that is all separators: dropped
        offsets = np.concatenate([[0], np.cumsum(np.bincount(row[keep], minlength=len(lists)))]).astype(np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), names.take(pa.array(name[keep])))

    def aliases_of(self, canonical: str) -> set[str]:
        """The (normalized) aliases that resolve to ``canonical``'s canonical name; empty if none."""
        return set(self._aliases_of.get(self.canonical(canonical), ()))

    def __contains__(self, tag: object) -> bool:
        """Whether ``tag`` is a known name or alias."""
        if not isinstance(tag, str):
            return False
        norm = normalize(tag)
        return norm in self._categories or norm in self._aliases

    def __len__(self) -> int:
        """Number of canonical names."""
        return len(self._categories)

    def __repr__(self) -> str:
        return f"<TagDictionary {len(self._categories)} tags, {len(self._aliases)} aliases, digest {self.digest[:12]}>"

    def _compute_digest(self) -> str:
        # NUL cannot occur inside a tag that came out of a CSV row, so it separates fields safely.
        cats, aliases = self._categories, self._aliases
        lines = [_FORMAT_VERSION]
        lines += [f"n\0{name}\0{cats[name]}" for name in sorted(cats)]
        lines += [f"a\0{alias}\0{aliases[alias]}" for alias in sorted(aliases)]
        return hashlib.sha256("\n".join(lines).encode()).hexdigest()


_LIST = pa.list_(pa.string())


def _first_of_each(keys: np.ndarray) -> np.ndarray:
    """Where each value of ``keys`` occurs first (a stable sort: ``keys`` come nearly sorted)."""
    order = np.argsort(keys, kind="stable")
    ranked = keys[order]
    first = np.ones(len(keys), dtype=bool)
    first[order[1:]] = ranked[1:] != ranked[:-1]
    return first


def list_array(values: pd.Series) -> pa.ListArray:
    """A column of lists of text as one Arrow ``list<string>`` array, whether a stage holds it as
    Arrow (``manifest.read(..., arrow_lists=...)``) or as Python lists (missing lists stay missing)."""
    if isinstance(values.dtype, pd.ArrowDtype):
        held = pa.array(values.array)  # one chunk comes back as an array, several as a chunked array
        return (held.combine_chunks() if isinstance(held, pa.ChunkedArray) else held).cast(_LIST)
    return pa.array([None if v is None else list(v) for v in values], type=_LIST)


def _parse_csv(text: str, source: str) -> Iterable[tuple[str, str, list[str]]]:
    """Yield ``(name, category, aliases)`` for each row of a tag CSV, all normalized."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    line = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise ValueError(f"{source}:{line}: malformed CSV: {exc}") from None
        start, line = line, reader.line_num + 1
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line
        if len(row) not in (3, 4):
            raise ValueError(
                f"{source}:{start}: expected 3 or 4 columns (name,category,post_count[,aliases]), got {len(row)}"
            )
        name = normalize(row[0])
        if not name:
            raise ValueError(f"{source}:{start}: empty tag name")
        try:
            code = int(row[1].strip())
        except ValueError:
            raise ValueError(f"{source}:{start}: category {row[1]!r} is not an integer") from None
        if code not in CATEGORIES:
            known = ", ".join(f"{k} {v}" for k, v in CATEGORIES.items())
            raise ValueError(f"{source}:{start}: unknown category {code} (known: {known})")
        count = row[2].strip()
        if count and not (count.isascii() and count.isdigit()):
            raise ValueError(f"{source}:{start}: post count {row[2]!r} is not a non-negative integer")
        aliases = []
        if len(row) == 4:
            for alias in row[3].split(","):
                alias = normalize(alias)
                if alias and alias != name:
                    aliases.append(alias)
        yield name, CATEGORIES[code], aliases
