"""The conversation stages as the Snakemake scripts call them: read, filter, dedup, split, ledger, export.

Each stage reads manifests, does one job through the modules beside it and writes manifests that
the pandera schemas check (``trainset.schemas``: CONVERSATIONS, CONVERSATIONS_KEPT,
CONVERSATIONS_SPLIT, CONVERSATIONS_REJECTED). Every conversation read ends in exactly one of
the export or the rejected manifest, with its stage and reason (:func:`ledger`); records that
never became a conversation are rejected at stage ``read`` under ids ``source:file#line``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from pathlib import Path

import pandas as pd

from .. import atomic, manifest, schemas
from ..ledger import ConservationError
from . import readers, sources

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- read


def read(source: dict, out: str | Path, rejected_out: str | Path) -> dict:
    """One source's conversations and unreadable records, each to its manifest."""
    src = sources.from_dict(source)
    got, bad = readers.read(src)
    kept = pd.DataFrame(got, columns=list(schemas.CONVERSATIONS.columns))
    manifest.write(kept, out, schemas.CONVERSATIONS, sort_by="id")
    manifest.write(read_rejections(src, bad), rejected_out, schemas.CONVERSATIONS_REJECTED, sort_by="id")
    log.info("%s: %d conversations, %d records rejected", src.name, len(kept), len(bad))
    return {"source": src.name, "read": len(kept), "rejected": len(bad)}


def read_rejections(source: readers.ConversationSource, bad: list[readers.Rejection]) -> pd.DataFrame:
    """Rejected rows for records that never became a conversation."""
    base = source.path if source.path.is_dir() else source.path.parent
    rows = []
    for r in bad:
        try:
            where = Path(r.file).relative_to(base).as_posix()
        except ValueError:
            where = Path(r.file).name
        rows.append({"id": f"{source.name}:{where}#{r.line}", "sha256": None, "source": source.name, "stage": "read",
                     "rule": "unreadable", "reason": r.reason, "duplicate_of": None, "file": r.file, "line": r.line})
    out = pd.DataFrame(rows, columns=list(schemas.CONVERSATIONS_REJECTED.columns))
    out["line"] = out["line"].astype("Int64")
    return out


def rejections(rows: pd.DataFrame, stage: str, rule, reason, duplicate_of=None) -> pd.DataFrame:
    """Rejected-manifest rows for conversations ``rows`` (each field: a value or an array in row order)."""
    rows = rows.reset_index(drop=True)
    out = pd.DataFrame({
        "id": rows["id"].astype(str), "sha256": rows["sha256"].astype(str), "source": rows["source"].astype(str),
        "stage": stage, "rule": rule, "reason": reason,
    }, index=rows.index)
    out["duplicate_of"] = pd.Series(duplicate_of, index=out.index, dtype=object)
    out["file"] = None
    out["line"] = pd.Series([pd.NA] * len(out), index=out.index, dtype="Int64")
    return out


def load(paths: list[str | Path], schema=schemas.CONVERSATIONS) -> pd.DataFrame:
    frames = [manifest.read(p, schema) for p in paths]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else manifest.empty(schema)


# --------------------------------------------------------------------------- ledger


def merge_rejected(parts: list[str | Path], out: str | Path) -> pd.DataFrame:
    frames = [manifest.read(p, schemas.CONVERSATIONS_REJECTED) for p in parts]
    frames = [f for f in frames if len(f)]
    merged = pd.concat(frames, ignore_index=True) if frames else manifest.empty(schemas.CONVERSATIONS_REJECTED)
    dupes = merged["id"][merged["id"].duplicated()].tolist()
    if dupes:
        raise ConservationError(f"conversations rejected by more than one stage: {', '.join(dupes[:10])}")
    merged["line"] = merged["line"].astype("Int64")
    return manifest.write(merged, out, schemas.CONVERSATIONS_REJECTED, sort_by="id")


def ledger(read_ids: set[str], read_rejected: int, kept: pd.DataFrame, rejected: pd.DataFrame) -> dict:
    """Every conversation read is exported or rejected, never both, never neither; raises otherwise."""
    rejected_ids = set(rejected.loc[rejected["stage"] != "read", "id"])
    kept_ids = set(kept["id"])
    problems = []
    for name, ids in (("both kept and rejected", kept_ids & rejected_ids), ("neither kept nor rejected (lost)", read_ids - kept_ids - rejected_ids),
                      ("not read from any source", (kept_ids | rejected_ids) - read_ids)):
        if ids:
            problems.append(f"{name}: {', '.join(sorted(ids)[:10])}")
    if problems:
        raise ConservationError("conversation ledger does not balance:\n  " + "\n  ".join(problems))
    return {"read": len(read_ids), "unreadable_records": read_rejected, "kept": len(kept_ids), "rejected": len(rejected_ids)}


def write_json(path: str | Path, data: dict) -> None:
    atomic.write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


# --------------------------------------------------------------------------- split and curriculum


def split_and_stage(kept_path: str | Path, out: str | Path, stages_out: str | Path, rejected_out: str | Path,
                    split_params: dict, curriculum_params: dict, seed: int) -> dict:
    """Train/eval by group, train items that repeat an eval item dropped, then the curriculum."""
    from . import curriculum, split

    df = manifest.read(kept_path, schemas.CONVERSATIONS_KEPT).reset_index(drop=True)
    side, found = split.run(df, split_params, seed)
    leaks = split.leakage(df, side.where(side != split.CONTAMINATED, split.TRAIN))
    if leaks:
        raise ConservationError(f"groups on both sides of the split: {', '.join(leaks[:10])}")
    staged, table = curriculum.assign(df, side, curriculum_params, seed)
    contaminated = df.index[side == split.CONTAMINATED]
    matched = found.drop_duplicates("id").set_index("id") if len(found) else None
    gone = []
    if len(contaminated):
        rows = df.loc[contaminated]
        gone.append(rejections(rows, "decontaminate", "eval_overlap",
                               [f"repeats eval item {matched.at[i, 'matched_id']}: {matched.at[i, 'reason']}" for i in rows["id"]],
                               duplicate_of=[matched.at[i, "matched_id"] for i in rows["id"]]))
    unselected = df.index[(staged["stage"] == curriculum.UNSELECTED) & (side != split.CONTAMINATED)]
    if len(unselected):
        gone.append(rejections(df.loc[unselected], "curriculum", "unselected", staged.loc[unselected, "reason"].astype(str).to_numpy()))
    rejected = pd.concat(gone) if gone else manifest.empty(schemas.CONVERSATIONS_REJECTED)
    rejected["line"] = rejected["line"].astype("Int64")
    manifest.write(rejected, rejected_out, schemas.CONVERSATIONS_REJECTED, sort_by="id")
    chosen = df.drop(index=list(contaminated) + list(unselected)).copy()
    chosen["split"] = side.loc[chosen.index]
    chosen["stage"] = staged.loc[chosen.index, "stage"]
    manifest.write(chosen, out, schemas.CONVERSATIONS_SPLIT, sort_by="id")
    manifest.write(table, stages_out, schemas.CONVERSATION_STAGES, sort_by=None)  # in the curriculum's order
    for note in curriculum.shortfalls(table):
        log.warning("%s", note)
    return {"train": int((chosen["split"] == split.TRAIN).sum()), "eval": int((chosen["split"] == split.EVAL).sum()),
            "contaminated": len(contaminated), "unselected": len(unselected)}


# --------------------------------------------------------------------------- export


def export(split_path: str | Path, stages_path: str | Path, scores_path: str | Path, out_dir: str | Path,
           curriculum_params: dict, seed: int, params_digest: str) -> dict:
    """Per-stage JSONL and Parquet files and their manifest (checksums, counts, commit, seed, params hash)."""
    from . import curriculum, export as exporter, report

    df = manifest.read(split_path, schemas.CONVERSATIONS_SPLIT)
    table = manifest.read(stages_path, schemas.CONVERSATION_STAGES)
    summary = report.quality_summary(manifest.read(scores_path, schemas.CONVERSATION_SCORES), df)
    return exporter.write(df, out_dir, curriculum.formats(curriculum_params), seed, params_digest,
                          quality=summary, stages_table=table)


# --------------------------------------------------------------------------- dedup


def deduplicate(kept_path: str | Path, eval_paths: list[str | Path], out: str | Path, rejected_out: str | Path,
                dedup_params: dict, index_dir: str | Path, cache_dir: str | Path, stats_out: str | Path | None = None,
                signature_paths: list[str | Path] = ()) -> dict:
    """Drop conversations that repeat an evaluation item, then exact, near and semantic duplicates of
    anything the persisted index has seen (the earliest seen is kept). ``signature_paths``: the
    shards' MinHash signatures (:func:`sign_shard`); what they lack is computed here."""
    from . import dedup
    from .embed import TextEncoder

    settings = dedup.DedupSettings.from_params(dedup_params)
    made = dedup.read_signatures(signature_paths, settings) if settings.near.enabled else None
    df = manifest.read(kept_path, schemas.CONVERSATIONS_KEPT)
    records = to_records(df)
    eval_sets = {}
    for path in eval_paths:
        frame = manifest.read(path, schemas.CONVERSATIONS)
        if len(frame):
            eval_sets[str(frame["source"].iloc[0])] = to_records(frame)
    clean = dedup.decontaminate(records, eval_sets, settings, signatures=made) if eval_sets else None
    survivors = clean.kept if clean else records
    encoder = TextEncoder(Path(cache_dir) / "embeddings") if settings.semantic.enabled else None
    result = dedup.dedup(survivors, index_dir, settings, encoder=encoder, signatures=made)
    by_id = df.set_index("id", drop=False)
    gone = []
    for part, stage in ((clean.rejected if clean else None, "decontaminate"), (result.rejected, "dedup")):
        if part is not None and len(part):
            rows = by_id.loc[part["id"]]
            gone.append(rejections(rows, stage, part["rule"].to_numpy(), part["reason"].to_numpy(), part["duplicate_of"].to_numpy()))
    rejected = pd.concat(gone) if gone else manifest.empty(schemas.CONVERSATIONS_REJECTED)
    rejected["line"] = rejected["line"].astype("Int64")
    manifest.write(rejected, rejected_out, schemas.CONVERSATIONS_REJECTED, sort_by="id")
    kept_ids = [c["id"] for c in result.kept]
    manifest.write(by_id.loc[kept_ids].reset_index(drop=True), out, schemas.CONVERSATIONS_KEPT, sort_by="id")
    stats = {**result.stats, **({"decontaminate": clean.stats} if clean else {})}
    if stats_out:
        write_json(stats_out, stats)
    log.info("dedup: %s", stats)
    return stats


def deal_shards(kept_path: str | Path, out_dir: str | Path, index_path: str | Path, map_path: str | Path, size: int) -> dict:
    """The filtered conversations in stable shards, one manifest each, and their index (see
    :mod:`trainset.conversations.shards`)."""
    from . import shards

    df = manifest.read(kept_path, schemas.CONVERSATIONS_KEPT)
    return shards.deal(df, out_dir, index_path, map_path, size,
                       write=lambda rows, path: manifest.write(rows, path, schemas.CONVERSATIONS_KEPT, sort_by="id"))


def sign_shard(shard_path: str | Path, out: str | Path, dedup_params: dict, threads: int | None = None) -> int:
    """One shard's MinHash signatures, as dedup would compute them, for dedup to look up."""
    from . import dedup

    settings = dedup.DedupSettings.from_params(dedup_params)
    records = to_records(manifest.read(shard_path, schemas.CONVERSATIONS_KEPT))
    signatures = dedup.sign(records, settings, threads=threads) if settings.near.enabled else dedup.Signatures.empty(settings)
    dedup.write_signatures(signatures, out)
    log.info("%s: %d signatures", shard_path, len(signatures.ids))
    return len(signatures.ids)


def to_records(df: pd.DataFrame) -> list[dict]:
    """Manifest rows as reader-shaped dicts (messages as plain lists of {role, content})."""
    records = df.astype(object).where(df.notna(), None).to_dict("records")
    for r in records:
        r["messages"] = [{"role": str(m["role"]), "content": str(m["content"])} for m in r["messages"]]
        if "flags" in r:
            r["flags"] = [str(f) for f in r["flags"]]
    return records


# --------------------------------------------------------------------------- filter


_SCORING_MODULES = ("conversations.quality", "conversations.pii", "conversations.safety", "conversations.empathy",
                    "conversations.language", "conversations.tokens", "conversations.toxicity", "conversations.structure", "conversations.coherence")


def score_keys(records: list[dict], settings) -> list[str]:
    """Per conversation, what its scores depend on: its exact messages, the settings that change a
    score (not the gate's thresholds; resolved once per tier and category) and the scoring code
    and lexicons."""
    prefixes: dict[tuple[str, str], hashlib._Hash] = {}
    keys = []
    for r in records:
        group = (r["tier"], r["category"])
        if group not in prefixes:
            s = settings.resolve(*group)
            knobs = (s.tokenizer, tuple(s.language_candidates), s.drop_trailing_user,
                     tuple(k for k, a in sorted(s.pii_actions.items()) if a != "off"), repr(s.pii_detector), s.toxicity_model)
            prefixes[group] = hashlib.sha256((_scoring_digest() + repr(knobs)).encode())
        h = prefixes[group].copy()
        h.update(json.dumps(r["messages"], ensure_ascii=False, sort_keys=True).encode())
        keys.append(h.hexdigest())
    return keys


@functools.lru_cache(maxsize=1)
def _scoring_digest() -> str:
    """The scoring modules' code and the lexicons, read once per process."""
    from .. import provenance

    h = hashlib.sha256(provenance.code_digest(*_SCORING_MODULES).encode())
    for path in sorted((Path(provenance.PACKAGE_DIR) / "data" / "lexicons").glob("*.txt")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


class ScoreCache:
    """Quality scores by :func:`score_keys`, one Parquet part per computed batch (written atomically),
    so a rerun or a new batch scores only conversations it has never seen with these settings."""

    def __init__(self, root: str | Path):
        self.dir = Path(root)

    def get(self, keys: list[str]) -> pd.DataFrame:
        import pyarrow.parquet as pq

        parts = sorted(self.dir.glob("part-*.parquet"))
        frames = []
        wanted = set(keys)
        for part in parts:
            try:
                frame = pq.read_table(part).to_pandas()
            except (OSError, ValueError) as exc:
                log.warning("%s: unreadable score part skipped (%s)", part, exc)
                continue
            frames.append(frame[frame["key"].isin(wanted)])
        if not frames:
            from .quality import SCORE_COLUMNS

            return pd.DataFrame(columns=[c for c in SCORE_COLUMNS if c != "id"], index=pd.Index([], name="key"))
        return pd.concat(frames, ignore_index=True).drop_duplicates("key").set_index("key")

    def put(self, frame: pd.DataFrame) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not len(frame):
            return
        digest = hashlib.sha256("\n".join(sorted(frame["key"])).encode()).hexdigest()[:24]
        with atomic.atomic_file(self.dir / f"part-{digest}.parquet") as tmp:
            pq.write_table(pa.Table.from_pandas(frame.reset_index(drop=True), preserve_index=False), tmp)


def filter_conversations(read_paths: list[str | Path], out: str | Path, scores_out: str | Path, rejected_out: str | Path,
                         quality_params: dict, cache_dir: str | Path, casefold: bool = True,
                         stats_out: str | Path | None = None, takedown: set[str] | None = None) -> dict:
    """Score every conversation (cached by content and settings), then gate: structure, length,
    tokens, language, personal data, safety (bypassed by training edge cases, flagged), coherence."""
    from . import quality
    from .canonical import content_sha256
    from .embed import TextEncoder

    settings = quality.Settings.from_params(quality_params)
    df = load(read_paths)
    taken = df[df["sha256"].isin(takedown or set())]  # trainset purge: nothing overrides it
    df = df.drop(index=taken.index)
    records = to_records(df)
    keys = score_keys(records, settings)
    cache = ScoreCache(Path(cache_dir) / "scores")
    known = cache.get(keys)
    todo = {k: r for k, r in zip(keys, records) if k not in known.index}  # each content once
    if todo:
        fresh = quality.score(list(todo.values()), settings, TextEncoder(Path(cache_dir) / "embeddings"))
        fresh.insert(0, "key", list(todo))
        cache.put(fresh.drop(columns=["id"]))
        fresh = fresh.drop(columns=["id"]).set_index("key")
        known = pd.concat([known, fresh]) if len(known) else fresh  # an empty cache frame has no dtypes to keep
    scores = known.loc[keys].reset_index(drop=True)
    scores.insert(0, "id", [r["id"] for r in records])
    scores.insert(1, "sha256", [r["sha256"] for r in records])
    result = quality.gate(records, scores, settings)
    flags: dict[str, list[str]] = {}
    pii_found = dict(zip(scores["id"], scores["pii"]))
    edge = dict(zip(df["id"], df["is_training_edge_case"]))
    for f in result.flags.itertuples():
        if f.flag == "pii_redacted":
            name = f"pii_redacted:{pii_found.get(f.id) or 'text'}"
        elif edge.get(f.id) and f.flag not in ("dropped_trailing_user",):
            name = f"edge_case:{f.flag}" + (f":{f.role}" if f.role else "")
        else:
            name = f.flag + (f":{f.role}" if f.role else "")
        flags.setdefault(f.id, [])
        if name not in flags[f.id]:
            flags[f.id].append(name)
    kept = pd.DataFrame(result.kept, columns=list(schemas.CONVERSATIONS.columns))
    kept["sha256"] = [content_sha256(list(m), casefold) for m in kept["messages"]]  # redaction changes the content
    kept["flags"] = [sorted(flags.get(i, [])) for i in kept["id"]]
    by_id = df.set_index("id", drop=False)
    rejected = result.rejected
    parts = [rejections(by_id.loc[rejected["id"]], "filter", rejected["rule"].to_numpy(), rejected["reason"].to_numpy())] if len(rejected) else []
    if len(taken):
        parts.append(rejections(taken, "filter", "takedown", "content taken down (listed in takedown.txt)"))
    out_rejected = pd.concat(parts) if parts else manifest.empty(schemas.CONVERSATIONS_REJECTED)
    out_rejected["line"] = out_rejected["line"].astype("Int64")
    manifest.write(out_rejected, rejected_out, schemas.CONVERSATIONS_REJECTED, sort_by="id")
    manifest.write(kept, out, schemas.CONVERSATIONS_KEPT, sort_by="id")
    manifest.write(scores, scores_out, schemas.CONVERSATION_SCORES, sort_by="id")
    stats = {"read": len(df) + len(taken), "taken_down": len(taken), "scored": len(todo), "scores_reused": len(records) - len(todo), "kept": len(kept), "rejected": len(rejected)}
    if stats_out:
        write_json(stats_out, stats)
    log.info("filter: %s", stats)
    return stats
