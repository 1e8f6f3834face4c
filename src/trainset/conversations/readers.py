"""Conversation sources in the shapes people hold them, read into one form.

Shapes (``shape`` of a conversation source in params):

- ``openai``: ``messages`` = [{role, content}, ...];
- ``sharegpt``: ``conversations`` = [{from, value}, ...] (any of the four names remapped by
  ``columns``: ESConv, for one, is ``dialog`` = [{speaker, content}, ...]);
- ``alpaca``: ``instruction``, ``input`` (optional), ``output`` (and an optional ``system``);
- ``qa``: a table with a question and an answer column (``question``, ``answer``; e.g.
  counsel-chat's ``questionText`` / ``answerText``) and an optional ``id`` column;
- ``transcript``: one utterance a row, grouped into conversations by ``key`` and ordered by
  ``order`` (e.g. AnnoMI: ``transcript_id``, ``utterance_id``, ``interlocutor``,
  ``utterance_text``); consecutive utterances of one speaker become one message;
- ``dpo``: ``prompt``, ``chosen``, ``rejected``: the prompt and the chosen reply as the
  conversation, the rejected reply kept beside it.

Every conversation carries a ``group``: the thread it belongs to, so a split never puts one
thread on both sides. A transcript is its own group; other shapes take the ``group`` column when
``columns`` names one (counsel-chat: ``questionID``, several therapists answering one question),
else each conversation is its own group.

``is_training_edge_case`` comes from the source's entry in params (``edge_case: true``), never
from what a row says, unless that entry names an ``edge_case_column``: a trusted source whose rows
carry the flag themselves (true/false, yes/no, 1/0; anything else rejects the row).

In every shape, a speaker's consecutive messages become one turn.

Files: JSON (an array of records), JSONL, CSV (quoted fields may hold newlines and be very large)
and Parquet. A record that cannot be read becomes a rejection naming the file, its line (JSONL,
CSV: the line the record starts on) or record number (JSON, Parquet), and the reason; the others
go on. A file that cannot be read past some point (not UTF-8, not JSON, not Parquet) keeps the
records before it and is one rejection from there (line 0: nothing could be read).
"""

from __future__ import annotations

import csv
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .. import progress
from .canonical import Roles, UnknownRole, content_sha256

_UNDECODABLE = re.compile("[\udc80-\udcff]")
"""Bytes that were not UTF-8, as ``errors="surrogateescape"`` keeps them: the record is rejected, not the file."""

SHAPES = ("openai", "sharegpt", "alpaca", "qa", "transcript", "dpo")
FILE_TYPES = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}


class BadRecord(ValueError):
    """One record that cannot become a conversation; the message says why."""


@dataclass(frozen=True)
class ConversationSource:
    """A conversation source from params (``conversations.sources``)."""

    name: str
    path: Path
    shape: str
    license: str
    tier: str = "default"
    category: str = "general"
    edge_case: bool = False
    # a trusted source may let its rows carry the edge-case flag: the column holding it (params only)
    edge_case_column: str | None = None
    columns: dict[str, str] = field(default_factory=dict)  # shape fields -> the source's column names
    roles: Roles = field(default_factory=Roles.from_params)
    casefold: bool = False

    def column(self, name: str) -> str:
        return self.columns.get(name, name)


@dataclass(frozen=True)
class Rejection:
    source: str
    file: str
    line: int
    reason: str


def read(source: ConversationSource) -> tuple[list[dict], list[Rejection]]:
    """Every conversation of ``source`` (files in name order when ``path`` is a folder) and every
    record that could not be read."""
    if source.shape not in SHAPES:
        raise ValueError(f"conversation source {source.name!r}: unknown shape {source.shape!r} ({', '.join(SHAPES)})")
    conversations, rejected = [], []
    for path in files(source):
        rows: list[tuple[int, dict | Exception]] = []
        try:
            for item in progress.bar(records(path), desc=f"read {path.name}", unit="record"):
                rows.append(item)
        except (OSError, ValueError) as exc:  # not UTF-8, not JSON, not Parquet: the rest of the file is lost, said so
            rows.append((rows[-1][0] + 1 if rows else 0, BadRecord(f"unreadable from here on ({type(exc).__name__}: {exc})")))
        good = [(line, row) for line, row in rows if not isinstance(row, Exception)]
        rejected += [Rejection(source.name, str(path), line, str(row)) for line, row in rows if isinstance(row, Exception)]
        # a folder source's positions name their file, so two files' line 1 are two ids
        where = path.relative_to(source.path).as_posix() + ":" if source.path.is_dir() else ""
        if source.shape == "transcript":
            made, bad = _transcripts(good, source, path, where)
        else:
            made, bad = [], []
            for line, row in good:
                try:
                    made.append(_one(row, source, line, where))
                except (BadRecord, UnknownRole) as exc:
                    bad.append(Rejection(source.name, str(path), line, str(exc)))
        conversations += made
        rejected += bad
    return conversations, rejected


def files(source: ConversationSource) -> list[Path]:
    """The source's file, or its folder's conversation files in name order."""
    if source.path.is_dir():
        return sorted(p for p in source.path.rglob("*") if p.is_file() and p.suffix.lower() in FILE_TYPES)
    return [source.path]


def records(path: Path) -> Iterator[tuple[int, dict | Exception]]:
    """``(line or record number, record)`` of one file; a record that cannot be parsed comes as an exception."""
    kind = FILE_TYPES.get(path.suffix.lower())
    if kind == "jsonl":
        with open(path, encoding="utf-8", errors="surrogateescape") as fh:
            for number, text in enumerate(fh, start=1):
                if not text.strip():
                    continue
                if _UNDECODABLE.search(text):
                    yield number, BadRecord("not UTF-8 text")
                    continue
                try:
                    row = json.loads(text)
                except json.JSONDecodeError as exc:
                    yield number, BadRecord(f"bad JSON ({exc.msg.removesuffix(' at').lower()} at column {exc.colno})")
                    continue
                yield number, row if isinstance(row, dict) else BadRecord(f"a JSON {type(row).__name__}, not an object")
    elif kind == "json":
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
            data = next(iter(data.values()))  # {"data": [...]}
        if not isinstance(data, list):
            raise BadRecord(f"{path}: a JSON source must hold an array of records")
        for number, row in enumerate(data, start=1):
            yield number, row if isinstance(row, dict) else BadRecord(f"record {number} is a {type(row).__name__}, not an object")
    elif kind == "csv":
        csv.field_size_limit(sys.maxsize)
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                return
            start = reader.line_num + 1
            for row in reader:
                if any(_UNDECODABLE.search(value) for value in row):
                    yield start, BadRecord("not UTF-8 text")
                elif len(row) != len(header):
                    yield start, BadRecord(f"{len(row)} fields where the header has {len(header)}")
                else:
                    yield start, dict(zip(header, row))
                start = reader.line_num + 1
    elif kind == "parquet":
        import pyarrow.parquet as pq

        for number, row in enumerate(pq.read_table(path).to_pylist(), start=1):
            yield number, row
    else:
        raise ValueError(f"{path}: not a conversation file ({', '.join(FILE_TYPES)})")


def _text(row: dict, key: str, required: bool = True) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, float) and value != value):
        if required:
            raise BadRecord(f"no {key!r} field")
        return ""
    if not isinstance(value, str):
        raise BadRecord(f"{key!r} is a {type(value).__name__}, not text")
    if required and not value.strip():
        raise BadRecord(f"{key!r} is empty")
    return value


def _messages(items, role_key: str, content_key: str, roles: Roles) -> list[dict]:
    if not isinstance(items, list) or not items:
        raise BadRecord("no messages")
    out: list[dict] = []
    for k, item in enumerate(items):
        if not isinstance(item, dict):
            raise BadRecord(f"message {k} is not an object")
        _add_turn(out, roles(item.get(role_key, "")), _text(item, content_key))
    return out


def _add_turn(messages: list[dict], role: str, text: str) -> None:
    """Append a message; a speaker's consecutive messages become one turn (joined by a newline)."""
    if messages and messages[-1]["role"] == role:
        messages[-1]["content"] = messages[-1]["content"].rstrip("\n") + "\n" + text
    else:
        messages.append({"role": role, "content": text})


def _one(row: dict, source: ConversationSource, position: int, where: str) -> dict:
    shape, col = source.shape, source.column
    rejected = None
    if shape == "openai":
        messages = _messages(row.get(col("messages")), col("role"), col("content"), source.roles)
    elif shape == "sharegpt":
        messages = _messages(row.get(col("conversations")), col("from"), col("value"), source.roles)
    elif shape == "alpaca":
        prompt = _text(row, col("instruction"))
        extra = _text(row, col("input"), required=False).strip()
        system = _text(row, col("system"), required=False).strip()
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": f"{prompt}\n\n{extra}" if extra else prompt},
            {"role": "assistant", "content": _text(row, col("output"))},
        ]
    elif shape == "qa":
        messages = [{"role": "user", "content": _text(row, col("question"))},
                    {"role": "assistant", "content": _text(row, col("answer"))}]
    else:  # dpo
        messages = [{"role": "user", "content": _text(row, col("prompt"))},
                    {"role": "assistant", "content": _text(row, col("chosen"))}]
        rejected = _text(row, col("rejected"))
    original = row.get(col("id"))
    group = row.get(col("group")) if "group" in source.columns else None
    return _conversation(source, messages, None if original in (None, "") else str(original), position, where, rejected,
                         group=None if group in (None, "") else str(group), edge_case=_edge_case(row, source))


_TRUE = {"true", "yes", "1", "y", "t"}
_FALSE = {"false", "no", "0", "n", "f", ""}


def _edge_case(row: dict, source: ConversationSource) -> bool:
    """The source's flag, or (a trusted source only) the row's own ``edge_case_column``."""
    if not source.edge_case_column:
        return bool(source.edge_case)
    value = row.get(source.edge_case_column)
    if value is None or isinstance(value, bool):
        return bool(value) or bool(source.edge_case)
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE or bool(source.edge_case)
    raise BadRecord(f"{source.edge_case_column!r} is {value!r}, not true or false")


def _conversation(
    source: ConversationSource, messages: list[dict], original: str | None, position: int, where: str, rejected: str | None = None,
    group: str | None = None, edge_case: bool | None = None,
) -> dict:
    """``where``: the file within a folder source (``"part-1.jsonl:"``), so ids stay unique across its files."""
    conversation_id = f"{source.name}:{where}{original if original is not None else position}"
    return {
        "id": conversation_id,
        "sha256": content_sha256(messages, source.casefold),
        "source": source.name,
        "group": f"{source.name}:{where}{group}" if group is not None else conversation_id,
        "messages": messages,
        "tier": source.tier,
        "category": source.category,
        "is_training_edge_case": bool(source.edge_case) if edge_case is None else edge_case,
        "license": source.license,
        "original_id": original,
        "rejected_reply": rejected,
    }


def _transcripts(rows: list[tuple[int, dict]], source: ConversationSource, path: Path, where: str) -> tuple[list[dict], list[Rejection]]:
    col = source.column
    groups: dict[str, list[tuple[object, int, dict]]] = {}
    bad = []
    for line, row in rows:
        key = row.get(col("key"))
        if key in (None, ""):
            bad.append(Rejection(source.name, str(path), line, f"no {col('key')!r} value"))
            continue
        order = row.get(col("order"))
        try:
            order = float(order)
        except (TypeError, ValueError):
            bad.append(Rejection(source.name, str(path), line, f"{col('order')!r} is not a number: {order!r}"))
            continue
        groups.setdefault(str(key), []).append((order, line, row))
    made = []
    for key, utterances in groups.items():
        utterances.sort(key=lambda u: (u[0], u[1]))
        try:
            messages: list[dict] = []
            for _, line, row in utterances:
                _add_turn(messages, source.roles(row.get(col("role"), "")), _text(row, col("text")))
        except (BadRecord, UnknownRole) as exc:
            bad.append(Rejection(source.name, str(path), line, f"transcript {key}: {exc}"))
            continue
        try:
            edge_case = _edge_case(utterances[0][2], source)
        except BadRecord as exc:
            bad.append(Rejection(source.name, str(path), utterances[0][1], f"transcript {key}: {exc}"))
            continue
        made.append(_conversation(source, messages, key, utterances[0][1], where, edge_case=edge_case))
    return made, bad
