"""Per-stage training files: JSONL and Parquet that ``datasets`` and TRL load as they are, and a
manifest with every file's checksum.

``<out>/<stage>/train.jsonl|parquet`` and ``eval.jsonl|parquet`` (a split with no rows has no
files; the manifest says 0). Two forms:

- ``messages`` stages: OpenAI chat form ``{"messages": [{"role", "content"}, ...], "id", "source"}``
  (TRL's conversational language-modeling type, SFTTrainer's input);
- ``dpo`` stages: TRL's conversational preference type with an explicit prompt,
  ``{"prompt": [messages before the last assistant turn], "chosen": [that turn],
  "rejected": [{"role": "assistant", "content": rejected_reply}], "id", "source"}``. Message lists
  rather than strings because the prompt may carry a system message and several turns, which a
  string would flatten into one model's template; DPOTrainer applies the chat template itself.

The whole folder is written through :func:`trainset.atomic.atomic_dir`, so a killed run leaves the
old export or the new one. Same input, same bytes: rows sorted by id, keys in fixed order, no
timestamps, Parquet from a fixed Arrow schema with fixed writer options.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .. import atomic, provenance
from .split import EVAL, TRAIN

_MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
_MESSAGES = pa.list_(_MESSAGE)
SCHEMAS = {
    "messages": pa.schema([("messages", _MESSAGES), ("id", pa.string()), ("source", pa.string())]),
    "dpo": pa.schema([("prompt", _MESSAGES), ("chosen", _MESSAGES), ("rejected", _MESSAGES),
                      ("id", pa.string()), ("source", pa.string())]),
}
PARQUET_OPTIONS = {"compression": "zstd", "compression_level": 3, "version": "2.6", "use_dictionary": False,
                   "write_statistics": True, "row_group_size": 10_000, "data_page_size": 1 << 20}
MANIFEST = "manifest.json"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ExportError(ValueError):
    pass


def _message(m: dict) -> dict:
    return {"role": str(m["role"]), "content": str(m["content"])}


def messages_record(row: dict) -> dict:
    return {"messages": [_message(m) for m in row["messages"]], "id": str(row["id"]), "source": str(row["source"])}


def dpo_record(row: dict) -> dict:
    """Prompt: everything before the last assistant turn; chosen: that turn; rejected: the rejected reply."""
    messages = [_message(m) for m in row["messages"]]
    last = max((k for k, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    rejected = row.get("rejected_reply")
    if last is None or not isinstance(rejected, str) or not rejected.strip():
        raise ExportError(f"{row['id']}: a DPO item needs an assistant turn and a rejected reply")
    return {"prompt": messages[:last], "chosen": [messages[last]], "rejected": [{"role": "assistant", "content": rejected}],
            "id": str(row["id"]), "source": str(row["source"])}


RECORDS = {"messages": messages_record, "dpo": dpo_record}


def jsonl_bytes(records: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in records).encode("utf-8")


def parquet_bytes(records: list[dict], form: str) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(records, schema=SCHEMAS[form]), buf, **PARQUET_OPTIONS)
    return buf.getvalue()


def write(
    df: pd.DataFrame, out_dir: str | Path, formats: dict[str, str], seed: int, params: dict | str,
    quality: dict | None = None, stages_table: pd.DataFrame | None = None, cwd: str | Path = ".",
) -> dict:
    """Export every row whose ``stage`` is in ``formats`` (stage -> ``messages`` | ``dpo``) and
    whose ``split`` is train or eval; returns the manifest written beside the files.

    ``params``: what the export depends on (its digest goes into the manifest; a string is
    taken as that digest already computed, as a rule's params give it); ``quality``:
    the caller's quality-metric summaries; ``stages_table``: the curriculum table, kept whole."""
    for name, form in formats.items():
        if not _SAFE_NAME.match(name) or form not in SCHEMAS:
            raise ExportError(f"stage {name!r}: a stage needs a plain folder name and a format in {sorted(SCHEMAS)}")
    rows = df[df["stage"].isin(list(formats)) & df["split"].isin([TRAIN, EVAL])]
    files: dict[str, dict] = {}
    with atomic.atomic_dir(out_dir) as tmp:
        for stage in sorted(formats):
            for side in (TRAIN, EVAL):
                part = rows[(rows["stage"] == stage) & (rows["split"] == side)]
                files.update(_write_part(tmp, stage, side, part, formats[stage]))
        manifest = _manifest(rows, formats, files, seed, params, quality, stages_table, cwd)
        (tmp / MANIFEST).write_bytes(_json_bytes(manifest))
    return manifest


def _write_part(folder: Path, stage: str, side: str, part: pd.DataFrame, form: str) -> dict[str, dict]:
    if part.empty:
        return {}
    records = [RECORDS[form](r) for r in sorted(part.to_dict("records"), key=lambda r: str(r["id"]))]
    out = {}
    for name, data in ((f"{stage}/{side}.jsonl", jsonl_bytes(records)), (f"{stage}/{side}.parquet", parquet_bytes(records, form))):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        out[name] = {"sha256": hashlib.sha256(data).hexdigest(), "rows": len(records), "bytes": len(data)}
    return out


def _manifest(rows, formats, files, seed, params, quality, stages_table, cwd) -> dict:
    return {
        "git_commit": provenance.git_commit(cwd),
        "seed": int(seed),
        "params_digest": params if isinstance(params, str) else provenance.params_digest(params),
        "code_digest": provenance.code_digest("conversations.split", "conversations.curriculum", "conversations.export"),
        "versions": {**provenance.versions(), "pyarrow": pa.__version__},
        "stages": {s: {"format": formats[s], **_counts(rows[rows["stage"] == s])} for s in sorted(formats)},
        "sources": {s: _counts(rows[rows["source"] == s]) for s in sorted(rows["source"].unique())},
        "by_stage_and_source": {s: {side: _by(rows[(rows["stage"] == s) & (rows["split"] == side)], "source")
                                    for side in (TRAIN, EVAL)} for s in sorted(formats)},
        "files": dict(sorted(files.items())),
        "quality": _plain(quality or {}),
        "curriculum": _plain(stages_table.to_dict("records")) if stages_table is not None else None,
    }


def _counts(part: pd.DataFrame) -> dict[str, int]:
    return {side: int((part["split"] == side).sum()) for side in (TRAIN, EVAL)}


def _by(part: pd.DataFrame, column: str) -> dict[str, int]:
    return {str(k): int(v) for k, v in sorted(part[column].value_counts().items())}


def _plain(value):
    """JSON-safe: numpy scalars to Python, NaN to null, keys to text."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _json_bytes(obj: dict) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False, default=str) + "\n").encode("utf-8")


SNAKEMAKE_MARKER = ".snakemake_timestamp"
"""Snakemake's mark on a directory output: not part of the export."""


def verify(out_dir: str | Path) -> list[str]:
    """Files whose bytes no longer match the manifest, or that it lists but are missing; empty when whole."""
    out_dir = Path(out_dir)
    manifest = json.loads((out_dir / MANIFEST).read_text(encoding="utf-8"))
    problems = []
    for name, entry in manifest["files"].items():
        path = out_dir / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif hashlib.sha256(path.read_bytes()).hexdigest() != entry["sha256"]:
            problems.append(f"{name}: checksum differs from the manifest")
    listed = set(manifest["files"]) | {MANIFEST, SNAKEMAKE_MARKER}
    problems += [f"{p.relative_to(out_dir).as_posix()}: not in the manifest"
                 for p in sorted(out_dir.rglob("*")) if p.is_file() and p.relative_to(out_dir).as_posix() not in listed]
    return problems
