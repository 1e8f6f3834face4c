"""Deduplication of conversations (exact, near, semantic) with a persisted incremental index, and
decontamination against evaluation sets.

Stages run in order, each on what the previous one kept:

- **exact**: the same canonical SHA-256 (:func:`~trainset.conversations.canonical.content_sha256`
  with the settings' ``casefold``);
- **near**: MinHash LSH over word shingles (:mod:`trainset.conversations.minhash`, datasketch's
  ``affine32`` scheme and ``MinHashLSH`` banding), estimated Jaccard ``>= near.threshold``;
- **semantic**: cosine of all-MiniLM-L6-v2 embeddings (:class:`~trainset.conversations.embed.TextEncoder`)
  ``>= semantic.threshold``, searched by :mod:`trainset.similarity`.

The index (a folder, replaced whole by :func:`trainset.atomic.atomic_dir`, so a killed run leaves the
previous one readable) keeps every conversation ever seen, kept or not: id, sha256, first-seen
order, its canonical text (so changed signature settings or a new embedding model can re-sign
old items that are not in the batch), MinHash signature, embedding when semantic dedup is on, and
the decision taken. A conversation is decided once: the earliest seen wins (index order; within a
batch, input order), each item is compared only with items kept before it, and a new batch never
un-keeps an old item. Rerunning on the same input returns the same result and computes nothing.
An item whose content changed (same id, new sha256) is re-signed and decided again, and so are
the items that had been rejected as duplicates of its old content.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from .. import kernels, similarity
from ..atomic import atomic_dir, atomic_file
from ..kernels import Backend
from . import minhash
from .canonical import canonical_text

log = logging.getLogger(__name__)

STAGE = "dedup"
RULES = ("exact", "near", "semantic")
CONTAMINATES = "contaminates"
REJECTED_COLUMNS = ["id", "stage", "rule", "reason", "duplicate_of"]
INDEX_FORMAT = 1


# --- settings --------------------------------------------------------------------------------


@dataclass(frozen=True)
class NearSettings:
    enabled: bool = True
    shingle: int = 5
    num_perm: int = 128
    threshold: float = 0.8
    seed: int = 1
    scheme: str = "affine32"


@dataclass(frozen=True)
class SemanticSettings:
    enabled: bool = True
    threshold: float = 0.95


@dataclass(frozen=True)
class DedupSettings:
    """``conversations.dedup`` in params; every key optional."""

    casefold: bool = True
    near: NearSettings = field(default_factory=NearSettings)
    semantic: SemanticSettings = field(default_factory=SemanticSettings)

    @classmethod
    def from_params(cls, params: dict | None) -> DedupSettings:
        params = dict(params or {})
        near = _section(NearSettings, params.pop("near", None), "near")
        semantic = _section(SemanticSettings, params.pop("semantic", None), "semantic")
        unknown = set(params) - {"casefold"}
        if unknown:
            raise ValueError(f"dedup settings: unknown keys {sorted(unknown)} (known: casefold, near, semantic)")
        settings = cls(bool(params.get("casefold", True)), near, semantic)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.near.scheme not in kernels.MINHASH_SCHEMES:
            raise ValueError(f"near.scheme must be one of {kernels.MINHASH_SCHEMES}, got {self.near.scheme!r}")
        if self.near.shingle < 1 or self.near.num_perm < 2:
            raise ValueError("near.shingle must be >= 1 and near.num_perm >= 2")
        for name, value in (("near", self.near.threshold), ("semantic", self.semantic.threshold)):
            if not 0.0 < value <= 1.0:
                raise ValueError(f"{name}.threshold must be in (0, 1], got {value}")

    def signature_key(self) -> dict:
        """What a stored signature depends on: changing any of it re-signs the index."""
        near = self.near
        return {"casefold": self.casefold, "shingle": near.shingle, "num_perm": near.num_perm,
                "seed": near.seed, "scheme": near.scheme}


def _section(kind, values: dict | None, name: str):
    values = dict(values or {})
    known = {f for f in kind.__dataclass_fields__}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"dedup settings: unknown keys {sorted(unknown)} under {name} (known: {', '.join(sorted(known))})")
    defaults = asdict(kind())
    return kind(**{k: type(defaults[k])(values.get(k, defaults[k])) for k in defaults})


# --- prepared conversations ------------------------------------------------------------------


class _Prepared(NamedTuple):
    ids: list[str]
    sha256: list[str]
    exact: list[str]
    texts: list[str]


def _prepare(conversations: list[dict], casefold: bool) -> _Prepared:
    """Id, identity sha256, exact key and text of each conversation (one canonical pass each)."""
    ids, shas, exact, texts = [], [], [], []
    for conv in conversations:
        canon = canonical_text(conv["messages"], casefold)
        key = hashlib.sha256(canon.encode("utf-8")).hexdigest()
        ids.append(str(conv["id"]))
        shas.append(str(conv.get("sha256") or key))
        exact.append(key)
        texts.append("\n".join(text for _, text in json.loads(canon)))
    return _Prepared(ids, shas, exact, texts)


def _sign(texts: list[str], settings: DedupSettings, be: Backend | None, threads: int | None = None) -> np.ndarray:
    near = settings.near
    return minhash.signatures(texts, near.shingle, near.num_perm, near.seed, near.scheme, be=be, threads=threads)


# --- signatures made ahead (one Snakemake job per shard) -------------------------------------


class Signatures(NamedTuple):
    """MinHash signatures by exact key (canonical SHA-256): a conversation's signature depends only on
    its canonical text and :meth:`DedupSettings.signature_key`, so signatures made ahead, per shard,
    stand in for the ones dedup would compute."""

    ids: np.ndarray    # str: the conversation each row was made for
    exact: np.ndarray  # str: the canonical SHA-256 it is looked up by
    values: np.ndarray  # (n, num_perm) uint32
    key: dict

    @classmethod
    def empty(cls, settings: DedupSettings) -> Signatures:
        return cls(np.zeros(0, dtype=str), np.zeros(0, dtype=str), np.zeros((0, settings.near.num_perm), np.uint32),
                   settings.signature_key())

    def rows(self, exact_keys: list[str]) -> np.ndarray:
        """Each key's row here, -1 where there is none."""
        at = {key: k for k, key in enumerate(self.exact.tolist())}
        return np.fromiter((at.get(key, -1) for key in exact_keys), dtype=np.int64, count=len(exact_keys))


def sign(conversations: list[dict], settings: DedupSettings, be: Backend | None = None,
         threads: int | None = None) -> Signatures:
    """The signatures dedup and decontamination would compute for ``conversations``."""
    batch = _prepare(conversations, settings.casefold)
    values = _sign(batch.texts, settings, be, threads) if batch.texts else Signatures.empty(settings).values
    return Signatures(np.array(batch.ids, dtype=str), np.array(batch.exact, dtype=str), values, settings.signature_key())


def write_signatures(signatures: Signatures, out: str | Path) -> None:
    """An ``.npz`` of :class:`Signatures` (no pickled objects: it loads anywhere)."""
    with atomic_file(out) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, ids=signatures.ids.astype(str), exact=signatures.exact.astype(str), values=signatures.values,
                 key=np.array(json.dumps(signatures.key, sort_keys=True)))


def read_signatures(paths: Iterable[str | Path], settings: DedupSettings) -> Signatures:
    """The signatures of :func:`write_signatures` files made under ``settings``' signature key, in one
    table; a file made under other settings is skipped (what it held is computed again)."""
    key = json.dumps(settings.signature_key(), sort_keys=True)
    parts = [Signatures.empty(settings)]
    for path in paths:
        with np.load(path) as saved:
            if str(saved["key"]) != key:
                log.warning("%s: signatures made under %s, not %s: not used", path, saved["key"], key)
                continue
            parts.append(Signatures(saved["ids"], saved["exact"], saved["values"], settings.signature_key()))
    return Signatures(*(np.concatenate([getattr(p, name) for p in parts]) for name in ("ids", "exact", "values")),
                      settings.signature_key())


def _signatures_of(exact_keys: list[str], texts: list[str], settings: DedupSettings, be: Backend | None,
                   made: Signatures | None) -> tuple[np.ndarray, int]:
    """Signatures of the texts, taken from ``made`` where it has them and computed for the rest;
    also how many were taken."""
    out = np.zeros((len(texts), settings.near.num_perm), dtype=np.uint32)
    at = made.rows(exact_keys) if made is not None else np.full(len(texts), -1, dtype=np.int64)
    found = at >= 0
    if found.any():
        out[found] = made.values[at[found]]
    missing = np.flatnonzero(~found)
    if len(missing):
        out[missing] = _sign([texts[k] for k in missing], settings, be)
    return out, int(found.sum())


# --- the index -------------------------------------------------------------------------------

_ITEM_COLUMNS = {
    "id": str, "sha256": str, "exact": str, "order": np.int64, "text": str, "decided": bool, "kept": bool,
    "rule": str, "duplicate_of": str, "score": np.float64, "reason": str, "signed": bool, "embedded": bool,
}


@dataclass
class DedupIndex:
    """Every conversation seen, in first-seen order (row = order), with its signature and embedding."""

    items: pd.DataFrame
    signatures: np.ndarray
    embeddings: np.ndarray
    signature_key: dict | None = None
    embedding_key: str | None = None

    @classmethod
    def empty(cls, num_perm: int = 0) -> DedupIndex:
        items = pd.DataFrame({name: pd.Series(dtype=object if kind is str else kind) for name, kind in _ITEM_COLUMNS.items()})
        return cls(items, np.zeros((0, num_perm), dtype=np.uint32), np.zeros((0, 0), dtype=np.float32))

    @classmethod
    def load(cls, path: str | Path) -> DedupIndex:
        """The index at ``path``; empty when there is none. A run killed between the two renames of
        :func:`~trainset.atomic.atomic_dir` leaves only the previous index, under ``.NAME.old``: read that."""
        folder = _readable(Path(path))
        if folder is None:
            return cls.empty()
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("format") != INDEX_FORMAT:
            raise ValueError(f"{folder}: dedup index format {meta.get('format')!r}, this trainset reads {INDEX_FORMAT}")
        items = pd.read_parquet(folder / "items.parquet")
        return cls(items.reset_index(drop=True), np.load(folder / "signatures.npy"), np.load(folder / "embeddings.npy"),
                   meta.get("signature_key"), meta.get("embedding_key"))

    def save(self, path: str | Path) -> None:
        path = Path(path)
        for stale in path.parent.glob(f".{path.name}.*.tmp"):  # what a killed write left
            shutil.rmtree(stale, ignore_errors=True)
        with atomic_dir(path) as tmp:
            self.items.to_parquet(tmp / "items.parquet", index=False)
            np.save(tmp / "signatures.npy", self.signatures)
            np.save(tmp / "embeddings.npy", self.embeddings)
            meta = {"format": INDEX_FORMAT, "items": len(self.items), "signature_key": self.signature_key,
                    "embedding_key": self.embedding_key}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")

    def __len__(self) -> int:
        return len(self.items)


def _readable(path: Path) -> Path | None:
    if (path / "meta.json").exists():
        return path
    old = path.with_name(f".{path.name}.old")
    if not path.exists() and (old / "meta.json").exists():
        log.warning("dedup index %s: reading %s left by an interrupted write", path, old)
        return old
    return None


def _merge_batch(index: DedupIndex, batch: _Prepared, stats: dict) -> np.ndarray:
    """Add new conversations, refresh changed ones; returns each batch item's row in the index."""
    items = index.items
    known = dict(zip(items["id"], zip(range(len(items)), items["sha256"])))
    rows, new = np.empty(len(batch.ids), dtype=np.int64), []
    for k, (cid, sha) in enumerate(zip(batch.ids, batch.sha256)):
        row, old_sha = known.get(cid, (None, None))
        if row is None:
            rows[k] = len(items) + len(new)
            new.append(k)
            continue
        rows[k] = row
        if old_sha == sha:
            stats["known"] += 1
        else:
            _refresh(items, row, sha, batch.exact[k], batch.texts[k])
            stats["changed"] += 1
    stats["new"] = len(new)
    if new:
        fresh = pd.DataFrame({
            "id": [batch.ids[k] for k in new], "sha256": [batch.sha256[k] for k in new],
            "exact": [batch.exact[k] for k in new], "order": np.arange(len(items), len(items) + len(new)),
            "text": [batch.texts[k] for k in new], "decided": False, "kept": False, "rule": "", "duplicate_of": "",
            "score": np.nan, "reason": "", "signed": False, "embedded": False,
        })
        index.items = pd.concat([items, fresh], ignore_index=True) if len(items) else fresh
        index.signatures = np.concatenate([index.signatures, np.zeros((len(new), index.signatures.shape[1]), np.uint32)])
        index.embeddings = np.concatenate([index.embeddings, np.zeros((len(new), index.embeddings.shape[1]), np.float32)])
    return rows


def _refresh(items: pd.DataFrame, row: int, sha: str, exact: str, text: str) -> None:
    """New content under a known id: re-sign, re-embed, decide again, and so do its duplicates."""
    cid = items.at[row, "id"]
    items.loc[row, ["sha256", "exact", "text"]] = [sha, exact, text]
    items.loc[row, ["decided", "signed", "embedded"]] = False
    items.loc[items["duplicate_of"] == cid, "decided"] = False


def _apply_keys(index: DedupIndex, settings: DedupSettings, embedding_key: str | None) -> None:
    """Forget signatures (embeddings) made under other settings (another model)."""
    key = settings.signature_key()
    if index.signature_key != key or index.signatures.shape[1] != settings.near.num_perm:
        if len(index) and index.signature_key is not None:
            log.info("dedup index: signature settings changed (%s -> %s): re-signing", index.signature_key, key)
        index.signatures = np.zeros((len(index), settings.near.num_perm), dtype=np.uint32)
        index.items["signed"] = False
        index.signature_key = key
    if embedding_key is not None and index.embedding_key != embedding_key:
        index.embeddings = np.zeros((len(index), 0), dtype=np.float32)
        index.items["embedded"] = False
        index.embedding_key = embedding_key


def _fill_signatures(index: DedupIndex, settings: DedupSettings, be: Backend | None, made: Signatures | None) -> int:
    """Sign the index's unsigned rows (from ``made`` where it has them); returns how many."""
    todo = np.flatnonzero(~index.items["signed"].to_numpy(dtype=bool))
    if len(todo):
        items = index.items.iloc[todo]
        index.signatures[todo], taken = _signatures_of(items["exact"].tolist(), items["text"].tolist(), settings, be, made)
        index.items.loc[todo, "signed"] = True
        log.info("dedup: %d signatures made ahead, %d computed here", taken, len(todo) - taken)
    return len(todo)


def _fill_embeddings(index: DedupIndex, encoder) -> int:
    todo = np.flatnonzero(~index.items["embedded"].to_numpy(dtype=bool))
    if len(todo):
        vectors = encoder.encode(index.items["text"].iloc[todo].tolist())
        if index.embeddings.shape[1] != vectors.shape[1]:
            index.embeddings = np.zeros((len(index), vectors.shape[1]), dtype=np.float32)
        index.embeddings[todo] = vectors
        index.items.loc[todo, "embedded"] = True
    return len(todo)


# --- deciding --------------------------------------------------------------------------------


class _Match(NamedTuple):
    rule: str
    duplicate_of: int  # row in the index
    score: float
    reason: str


def _first_kept(rows: np.ndarray, base: np.ndarray, pairs_base, pairs_within) -> dict[int, tuple[int, float]]:
    """Greedy over ``rows`` (ascending order): each row's earliest matching kept item, the kept items
    being ``base`` and the rows before it that nothing matched. Pairs index ``rows`` (and ``base``)."""
    partners: dict[int, list[tuple[int, float]]] = {}
    for qi, bj, s in zip(*pairs_base):
        partners.setdefault(int(qi), []).append((int(base[bj]), float(s)))
    earlier: dict[int, list[tuple[int, float]]] = {}
    for i, j, s in zip(*pairs_within):
        earlier.setdefault(int(j), []).append((int(i), float(s)))
    found, survivors = {}, np.ones(len(rows), dtype=bool)
    for k in range(len(rows)):
        options = partners.get(k, []) + [(int(rows[i]), s) for i, s in earlier.get(k, []) if survivors[i]]
        if options:
            found[k] = min(options)
            survivors[k] = False
    return found


def _decide(index: DedupIndex, settings: DedupSettings, be: Backend | None) -> int:
    """Decide the undecided rows, stage by stage; returns how many."""
    items = index.items
    undecided = np.flatnonzero(~items["decided"].to_numpy(dtype=bool))
    kept = np.flatnonzero(items["decided"].to_numpy(dtype=bool) & items["kept"].to_numpy(dtype=bool))
    ids = items["id"].to_numpy()
    decisions: dict[int, _Match] = {}
    first: dict[str, int] = {}
    for row in kept:
        first.setdefault(items.at[row, "exact"], int(row))
    alive = []
    for row in undecided:
        key = items.at[row, "exact"]
        if key in first:
            dup = first[key]
            decisions[int(row)] = _Match("exact", dup, 1.0, f"exact copy of {ids[dup]} (same canonical SHA-256)")
        else:
            first[key] = int(row)
            alive.append(int(row))
    alive = np.array(alive, dtype=np.int64)
    if settings.near.enabled and len(alive):
        t = settings.near.threshold
        sigs = index.signatures
        found = _first_kept(alive, kept, minhash.near_pairs(sigs[alive], t, base=sigs[kept]),
                            minhash.near_pairs(sigs[alive], t))
        for k, (dup, s) in found.items():
            decisions[int(alive[k])] = _Match("near", dup, s, f"near duplicate of {ids[dup]}: estimated Jaccard {s:.3f} >= {t}")
        alive = np.array([r for k, r in enumerate(alive) if k not in found], dtype=np.int64)
    if settings.semantic.enabled and len(alive):
        t = settings.semantic.threshold
        emb = index.embeddings
        found = _first_kept(alive, kept, similarity.cosine_pairs_between(emb[alive], emb[kept], t, be=be),
                            similarity.cosine_pairs(emb[alive], t, be=be))
        for k, (dup, s) in found.items():
            decisions[int(alive[k])] = _Match("semantic", dup, s, f"semantic duplicate of {ids[dup]}: cosine {s:.3f} >= {t}")
    _record(items, undecided, decisions)
    return len(undecided)


def _record(items: pd.DataFrame, undecided: np.ndarray, decisions: dict[int, _Match]) -> None:
    """Write the decisions of ``undecided`` rows (column by column: one assignment each)."""
    ids = items["id"].to_numpy()
    matches = [decisions.get(int(row)) for row in undecided]
    items.loc[undecided, "decided"] = True
    items.loc[undecided, "kept"] = [m is None for m in matches]
    items.loc[undecided, "rule"] = ["" if m is None else m.rule for m in matches]
    items.loc[undecided, "duplicate_of"] = ["" if m is None else ids[m.duplicate_of] for m in matches]
    items.loc[undecided, "score"] = [np.nan if m is None else m.score for m in matches]
    items.loc[undecided, "reason"] = ["" if m is None else m.reason for m in matches]


# --- the entry points ------------------------------------------------------------------------


class DedupResult(NamedTuple):
    kept: list[dict]
    rejected: pd.DataFrame
    stats: dict


def dedup(conversations: list[dict], index_dir: str | Path | None, settings: DedupSettings | None = None,
          encoder=None, be: Backend | None = None, signatures: Signatures | None = None) -> DedupResult:
    """Keep the first copy of each conversation, checked against every conversation in the index at
    ``index_dir`` (None: no index, this batch alone) and earlier ones in the batch; the index is
    updated (written only when something changed).

    ``encoder``: anything with ``encode(texts) -> (n, d) unit float32 rows`` (default: a
    :class:`~trainset.conversations.embed.TextEncoder`), used only for conversations never embedded.
    ``signatures``: MinHash signatures made ahead (:func:`sign`, per shard), used for the
    conversations the index has no signature of; the others are computed here.
    Returns the kept conversations (input order), the rejected table (:data:`REJECTED_COLUMNS`) and
    stats: counts per rule, new / known / changed conversations, signatures (made ahead or here) and
    embeddings computed versus reused from the index.
    """
    settings = settings or DedupSettings()
    batch = _prepare(conversations, settings.casefold)
    _check_unique(batch.ids)
    index = DedupIndex.load(index_dir) if index_dir is not None else DedupIndex.empty()
    stats = {"conversations": len(batch.ids), "new": 0, "known": 0, "changed": 0}
    rows = _merge_batch(index, batch, stats)
    _apply_keys(index, settings, _embedding_key(encoder) if settings.semantic.enabled else None)
    work = {"signatures": 0, "embeddings": 0}
    if settings.near.enabled:
        stats["signatures_reused"] = int(index.items["signed"].to_numpy(dtype=bool)[rows].sum())
        work["signatures"] = stats["signatures_computed"] = _fill_signatures(index, settings, be, signatures)
    if settings.semantic.enabled:
        stats["embeddings_reused"] = int(index.items["embedded"].to_numpy(dtype=bool)[rows].sum())
        encoder = encoder if encoder is not None else _default_encoder()
        work["embeddings"] = stats["embeddings_computed"] = _fill_embeddings(index, encoder)
    work["decided"] = _decide(index, settings, be)
    stats["index_size"] = len(index)
    if index_dir is not None and (any(work.values()) or _readable(Path(index_dir)) != Path(index_dir)):
        index.save(index_dir)
    kept, rejected = _split(conversations, index, rows)
    for rule in RULES:
        stats[rule] = int((rejected["rule"] == rule).sum())
    stats["kept"] = len(kept)
    return DedupResult(kept, rejected, stats)


def _check_unique(ids: list[str]) -> None:
    seen = set()
    repeated = sorted({cid for cid in ids if cid in seen or seen.add(cid)})
    if repeated:
        raise ValueError(f"conversation ids must be unique within a batch; repeated: {', '.join(repeated[:5])}")


def _embedding_key(encoder) -> str:
    key = getattr(encoder, "model_key", None)
    if callable(key):
        return key()
    if isinstance(key, str):
        return key
    from .embed import model_key  # noqa: PLC0415

    return model_key()


def _default_encoder():
    from .embed import TextEncoder  # noqa: PLC0415

    return TextEncoder()


def _split(conversations: list[dict], index: DedupIndex, rows: np.ndarray) -> tuple[list[dict], pd.DataFrame]:
    items = index.items
    kept_flags = items["kept"].to_numpy(dtype=bool)[rows]
    kept = [conv for conv, flag in zip(conversations, kept_flags) if flag]
    lost = rows[~kept_flags]
    rejected = pd.DataFrame({
        "id": items["id"].to_numpy()[lost].astype(object), "stage": STAGE,
        "rule": items["rule"].to_numpy()[lost].astype(object), "reason": items["reason"].to_numpy()[lost].astype(object),
        "duplicate_of": items["duplicate_of"].to_numpy()[lost].astype(object),
    }, columns=REJECTED_COLUMNS)
    return kept, rejected


# --- decontamination -------------------------------------------------------------------------


def decontaminate(conversations: list[dict], eval_sets: dict[str, Iterable[dict]], settings: DedupSettings | None = None,
                  be: Backend | None = None, signatures: Signatures | None = None) -> DedupResult:
    """Reject conversations equal (canonical SHA-256) or near-duplicate (MinHash, ``near.threshold``)
    to any item of any evaluation set, so no evaluation item leaks into training. Rule
    ``contaminates``; the reason names the set and the item (the first set, then the first item,
    that matches; exact matches before near ones). ``signatures``: as for :func:`dedup`."""
    settings = settings or DedupSettings()
    batch = _prepare(conversations, settings.casefold)
    names, items = [], []
    for name, convs in eval_sets.items():
        for conv in convs:
            names.append(name)
            items.append(conv)
    evals = _prepare(items, settings.casefold)
    found: dict[int, tuple[int, str]] = {}
    first_eval: dict[str, int] = {}
    for e, key in enumerate(evals.exact):
        first_eval.setdefault(key, e)
    for k, key in enumerate(batch.exact):
        if key in first_eval:
            e = first_eval[key]
            found[k] = (e, f"equals {evals.ids[e]} of eval set {names[e]} (same canonical SHA-256)")
    if settings.near.enabled and items and conversations:
        t = settings.near.threshold
        signed, _ = _signatures_of(batch.exact, batch.texts, settings, be, signatures)
        qi, ej, score = minhash.near_pairs(signed, t, base=_sign(evals.texts, settings, be))
        for k, e, s in sorted(zip(qi.tolist(), ej.tolist(), score.tolist())):
            if k not in found:
                found[k] = (e, f"near duplicate of {evals.ids[e]} of eval set {names[e]}: estimated Jaccard {s:.3f} >= {t}")
    kept = [conv for k, conv in enumerate(conversations) if k not in found]
    lost = sorted(found)
    rejected = pd.DataFrame({
        "id": [batch.ids[k] for k in lost], "stage": STAGE, "rule": CONTAMINATES,
        "reason": [found[k][1] for k in lost], "duplicate_of": [evals.ids[found[k][0]] for k in lost],
    }, columns=REJECTED_COLUMNS)
    by_set = {name: 0 for name in eval_sets}
    for k in lost:
        by_set[names[found[k][0]]] += 1
    stats = {"conversations": len(conversations), "kept": len(kept), CONTAMINATES: len(lost), "by_eval_set": by_set,
             "eval_items": len(items)}
    return DedupResult(kept, rejected, stats)


def clear(index_dir: str | Path) -> None:
    """Remove an index (and what an interrupted write left beside it)."""
    path = Path(index_dir)
    for folder in (path, path.with_name(f".{path.name}.old")):
        shutil.rmtree(folder, ignore_errors=True)
