"""Conversation sources and evaluation sets from params (``conversations`` block), checked once.

A typo fails here, naming the entry, before any file is read. The demo's sources (when
``conversations.demo`` is true) come first, then the user's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import _NAME, ConfigError, _resolve, as_flag
from . import demo
from .canonical import Roles
from .readers import SHAPES, ConversationSource

_KEYS = {"name", "path", "shape", "license", "tier", "category", "edge_case", "edge_case_column", "columns"}


def block(params: dict[str, Any]) -> dict[str, Any]:
    """The ``conversations`` block ({} when absent)."""
    value = params.get("conversations") or {}
    if not isinstance(value, dict):
        raise ConfigError("params.yaml: 'conversations' must be a mapping")
    return value


def roles(params: dict[str, Any]) -> Roles:
    try:
        return Roles.from_params(block(params).get("roles") or {})
    except ValueError as exc:
        raise ConfigError(f"params.yaml: {exc}") from None


def sources_from_params(params: dict[str, Any], root: str | Path = ".") -> list[ConversationSource]:
    """Every conversation source: the demo's first when ``conversations.demo`` is true."""
    return _entries(params, Path(root), "sources", demo.SOURCES)


def eval_sets_from_params(params: dict[str, Any], root: str | Path = ".") -> list[ConversationSource]:
    """The evaluation sets training data is decontaminated against (``conversations.decontaminate``)."""
    found = _entries(params, Path(root), "decontaminate", demo.EVAL_SETS, defaults={"license": "evaluation set"})
    clash = sorted({s.name for s in found} & {s.name for s in sources_from_params(params, root)})
    if clash:
        raise ConfigError(f"params.yaml: an evaluation set and a source share a name: {', '.join(clash)}")
    return found


def _entries(params: dict[str, Any], root: Path, key: str, demo_entries: list[dict], defaults: dict | None = None) -> list[ConversationSource]:
    """The demo's entries (when on), then ``conversations.<key>``, parsed and checked for unique names."""
    conv = block(params)
    entries = []
    if as_flag(conv.get("demo", False), "params.yaml: conversations.demo"):
        entries += [{**e, "path": f"{demo.DEMO_PATH}/{e['path']}", "license": demo.DEMO_LICENSE} for e in demo_entries]
    raw = conv.get(key) or []
    if not isinstance(raw, list):
        raise ConfigError(f"params.yaml: conversations.{key} must be a list")
    entries += [{**(defaults or {}), **e} if isinstance(e, dict) else e for e in raw]
    casefold = as_flag(conv.get("casefold", True), "params.yaml: conversations.casefold")
    found = [_parse(e, i, root, roles(params), casefold, f"conversations.{key}") for i, e in enumerate(entries)]
    _unique(found, f"conversations.{key}")
    return found


def _parse(entry: Any, index: int, root: Path, role_names: Roles, casefold: bool, key: str) -> ConversationSource:
    where = f"params.yaml: {key}[{index}]"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a mapping with name, path, shape, license")
    missing = [k for k in ("name", "path", "shape", "license") if not entry.get(k)]
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(missing)}")
    name = str(entry["name"])
    where = f"params.yaml: {key} {name!r}"
    if not _NAME.match(name):
        raise ConfigError(f"{where}: name may hold only letters, digits, '_', '-', '.'")
    unknown = sorted(set(entry) - _KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(_KEYS))})")
    shape = str(entry["shape"])
    if shape not in SHAPES:
        raise ConfigError(f"{where}: unknown shape {shape!r}; known shapes: {', '.join(SHAPES)}")
    columns = entry.get("columns") or {}
    if not isinstance(columns, dict) or not all(isinstance(v, str) for v in columns.values()):
        raise ConfigError(f"{where}: columns must map shape fields to column names")
    column = entry.get("edge_case_column")
    if column is not None and not isinstance(column, str):
        raise ConfigError(f"{where}: edge_case_column must be a column name")
    return ConversationSource(
        name=name, path=_resolve(entry["path"], root), shape=shape, license=str(entry["license"]),
        tier=str(entry.get("tier", "default")), category=str(entry.get("category", "general")),
        edge_case=as_flag(entry.get("edge_case", False), f"{where}: edge_case"), edge_case_column=column or None,
        columns={str(k): v for k, v in columns.items()}, roles=role_names, casefold=casefold,
    )


def _unique(found: list[ConversationSource], key: str) -> None:
    names = [s.name for s in found]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"params.yaml: {key} names must be unique; repeated: {', '.join(dupes)}")


def as_dict(source: ConversationSource) -> dict[str, Any]:
    """A source as plain data (Snakemake params: a change to any of it reruns the rules that read it)."""
    return {
        "name": source.name, "path": str(source.path), "shape": source.shape, "license": source.license,
        "tier": source.tier, "category": source.category, "edge_case": source.edge_case,
        "edge_case_column": source.edge_case_column, "columns": dict(source.columns), "casefold": source.casefold,
        "roles": dict(sorted(source.roles.names.items())),
    }


def from_dict(data: dict[str, Any]) -> ConversationSource:
    """The inverse of :func:`as_dict`."""
    return ConversationSource(
        name=data["name"], path=Path(data["path"]), shape=data["shape"], license=data["license"], tier=data["tier"],
        category=data["category"], edge_case=bool(data["edge_case"]), edge_case_column=data.get("edge_case_column"),
        columns=dict(data.get("columns") or {}), roles=Roles(dict(data["roles"])), casefold=bool(data["casefold"]),
    )
