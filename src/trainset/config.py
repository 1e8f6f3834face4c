"""params.yaml, read once and checked, so a typo fails before any work starts."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .rating import SCHEMES

SOURCE_KINDS = ("image_folder", "booru", "archive", "parquet", "webdataset", "url_list")
# kinds whose items are unpacked (or downloaded) by the workflow into MATERIALIZED_DIR/<name>, an
# image folder every later stage reads like any other
MATERIALIZED_KINDS = ("archive", "parquet", "webdataset", "url_list")
MATERIALIZED_DIR = "data/materialized"
_PARQUET_KEYS = ("image_column", "key_column")
# booru sources: which site the post records come from (it sets how a bare "s" rating reads)
BOORU_SITES = ("danbooru", "gelbooru", "safebooru", "moebooru")
# how a booru record finds its image: by the file's md5, by file name, or md5 first then file name
BOORU_JOINS = ("md5", "filename", "auto")
_BOORU_KEYS = ("metadata", "site", "join")
DEMO_SOURCE_NAME = "demo"
DEMO_PATH = "data/raw/demo"
DEMO_LICENSE = "scikit-image sample data (public domain, CC0 or BSD-3-Clause per image; see skimage/data/README.txt)"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ConfigError(ValueError):
    """params.yaml is missing a key or holds a value that cannot work."""


@dataclass(frozen=True)
class Source:
    """One raw collection named in params.yaml."""

    name: str
    kind: str
    path: Path
    license: str
    generated: bool = False
    weight: float = 1.0
    repeats: int = 1
    rating_scheme: str = "danbooru"
    built_by_workflow: bool = False  # True for the demo: its folder is a rule's output
    # kind "booru" only: the post records (a file, or a folder of .json/.jsonl files), the site
    # they come from, and how a record is joined to its image file
    metadata: Path | None = None
    site: str | None = None
    join: str = "auto"
    # this source's captions start with it instead of caption.trigger_word ("" : the global one)
    trigger_word: str = ""
    # archive / parquet / webdataset / url_list: the folder the workflow unpacks or downloads into
    materialized: Path | None = None
    image_column: str | None = None  # parquet: the image column (None: detected)
    key_column: str | None = None    # parquet: the column naming each file (None: key or id, else the row)

    @property
    def folder(self) -> Path:
        """Where this source's image files are: its path, or the folder it is materialized into."""
        return self.materialized if self.materialized is not None else self.path

    def as_dict(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "kind": self.kind,
            "path": str(self.path),
            "license": self.license,
            "generated": self.generated,
            "weight": self.weight,
            "repeats": self.repeats,
            "rating_scheme": self.rating_scheme,
            "trigger_word": self.trigger_word,
        }
        if self.kind == "booru":
            out.update(metadata=str(self.metadata), site=self.site, join=self.join)
        if self.kind == "parquet":
            out.update(image_column=self.image_column, key_column=self.key_column)
        return out


def as_flag(value: Any, where: str) -> bool:
    """A yes/no value: a YAML/JSON boolean, or the words true/false (so "false" is not True)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ConfigError(f"{where} must be true or false, got {value!r}")


def _choice(value: str, allowed, key: str, where: str) -> None:
    if value not in allowed:
        raise ConfigError(f"{where}: unknown {key} {value!r}; expected one of {', '.join(allowed)}")


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        params = yaml.safe_load(fh) or {}
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return params


def demo_source(root: Path) -> Source:
    return Source(
        name=DEMO_SOURCE_NAME,
        kind="image_folder",
        path=root / DEMO_PATH,
        license=DEMO_LICENSE,
        repeats=1,
        built_by_workflow=True,
    )


def sources_from_params(params: dict[str, Any], root: str | Path = ".") -> list[Source]:
    """The effective source list: the demo first when ``demo: true``, then the user's sources."""
    root = Path(root)
    out: list[Source] = [demo_source(root)] if params.get("demo", False) else []
    raw = params.get("sources") or []
    if not isinstance(raw, list):
        raise ConfigError("params.yaml: 'sources' must be a list")
    for i, entry in enumerate(raw):
        out.append(_parse_source(entry, i, root))
    names = [s.name for s in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"params.yaml: source names must be unique; repeated: {', '.join(dupes)}")
    return out


def _parse_source(entry: Any, index: int, root: Path) -> Source:
    where = f"params.yaml: sources[{index}]"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a mapping with name, kind, path, license")
    missing = [k for k in ("name", "kind", "path", "license") if not entry.get(k)]
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(missing)}")
    name = str(entry["name"])
    where = f"params.yaml: source {name!r}"
    if not _NAME.match(name):
        raise ConfigError(f"{where}: name may hold only letters, digits, '_', '-', '.'")
    if name == DEMO_SOURCE_NAME:
        raise ConfigError(f"{where}: the name 'demo' is reserved for the built-in demo")
    kind = str(entry["kind"])
    if kind not in SOURCE_KINDS:
        raise ConfigError(f"{where}: unknown kind {kind!r}; known kinds: {', '.join(SOURCE_KINDS)}")
    scheme = str(entry.get("rating_scheme", "danbooru"))
    _choice(scheme, SCHEMES, "rating_scheme", where)
    try:
        weight = float(entry.get("weight", 1.0))
        raw_repeats = entry.get("repeats", 1)
        if isinstance(raw_repeats, bool) or not float(raw_repeats).is_integer():
            raise ValueError(f"repeats {raw_repeats!r} is not a whole number")
        repeats = int(raw_repeats)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: weight must be a number and repeats an integer ({exc})") from None
    if not math.isfinite(weight) or weight <= 0 or repeats < 1:
        raise ConfigError(f"{where}: weight must be > 0 (and finite) and repeats >= 1")
    path = _resolve(entry["path"], root)
    booru = _parse_booru(entry, kind, scheme, where, root)
    if booru:
        scheme = booru["site"]
    trigger_word = entry.get("trigger_word") or ""
    if not isinstance(trigger_word, str):
        raise ConfigError(f"{where}: trigger_word must be text, got {trigger_word!r}")
    stray = [k for k in _PARQUET_KEYS if entry.get(k) is not None and kind != "parquet"]
    if stray:
        raise ConfigError(f"{where}: {', '.join(stray)} only apply to kind 'parquet' (this source is {kind!r})")
    materialized = {}
    if kind in MATERIALIZED_KINDS:
        materialized = {"materialized": root / MATERIALIZED_DIR / name, "built_by_workflow": True,
                        **{k: (str(entry[k]) if entry.get(k) is not None else None) for k in _PARQUET_KEYS}}
    return Source(
        name=name,
        kind=kind,
        path=path,
        license=str(entry["license"]),
        generated=as_flag(entry.get("generated", False), f"{where}: generated"),
        weight=weight,
        repeats=repeats,
        rating_scheme=scheme,
        trigger_word=trigger_word.strip(),
        **booru,
        **materialized,
    )


def _resolve(value: Any, root: Path) -> Path:
    """A path from params.yaml: ``~`` expanded, relative paths taken from the repo root."""
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() else root / path


def _parse_booru(entry: dict, kind: str, scheme: str, where: str, root: Path) -> dict[str, Any]:
    """metadata, site and join for a ``booru`` source ({} for other kinds, which must not set them)."""
    if kind != "booru":
        stray = [k for k in _BOORU_KEYS if k in entry]
        if stray:
            raise ConfigError(f"{where}: {', '.join(stray)} only apply to kind 'booru' (this source is {kind!r})")
        return {}
    if not entry.get("metadata"):
        raise ConfigError(f"{where}: kind 'booru' needs 'metadata' (a post-record file, or a folder of .json/.jsonl files)")
    if not entry.get("site"):
        raise ConfigError(f"{where}: kind 'booru' needs 'site', one of {', '.join(BOORU_SITES)}")
    site = str(entry["site"])
    _choice(site, BOORU_SITES, "site", where)
    join = str(entry.get("join", "auto"))
    _choice(join, BOORU_JOINS, "join", where)
    if "rating_scheme" in entry and scheme != site:
        raise ConfigError(f"{where}: rating_scheme {scheme!r} contradicts site {site!r}; for booru sources the site sets the rating scheme, so leave rating_scheme out")
    return {"metadata": _resolve(entry["metadata"], root), "site": site, "join": join}
