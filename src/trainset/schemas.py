"""Every manifest's columns, defined once, and checked with pandera at every stage boundary."""

from __future__ import annotations

import re
from collections.abc import Callable
from itertools import chain
from operator import attrgetter

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow as pyarrow
import pyarrow.compute as pc

from . import column_checks
from .background import COLOURS as BACKGROUND_COLOURS
from .rating import RATINGS

SCHEMA_VERSION = 1
SPLITS = ("train", "val", "test")
DECODE_REASONS = ("zero_byte", "not_image", "truncated", "corrupt", "decompression_bomb")
_HEX64 = r"^[0-9a-f]{64}$"
_HEX16 = r"^[0-9a-f]{16}$"
_HEX16_RE = re.compile(_HEX16)
_NOT_LOWER_HEX = str.maketrans("", "", "0123456789abcdef")  # deletes hex digits: what is left is not one


def _is_str_list(value: object) -> bool:
    return isinstance(value, (list, tuple, np.ndarray)) and all(isinstance(v, str) and v for v in value)


def _is_hex16_list(value: object) -> bool:
    return isinstance(value, (list, tuple, np.ndarray)) and all(isinstance(v, str) and _HEX16_RE.match(v) for v in value)


def _is_list_of_str(value: object) -> bool:
    return isinstance(value, (list, tuple, np.ndarray)) and all(isinstance(t, str) for t in value)


def _elements(rows: np.ndarray) -> list | None:
    """The elements of every row, in order: rows of lists, or of one-dimensional object arrays
    (as pandas reads list columns); None for anything else."""
    kinds = set(map(type, rows))
    if kinds <= {list}:
        return list(chain.from_iterable(rows))
    if kinds == {np.ndarray} and set(map(attrgetter("dtype"), rows)) == {np.dtype(object)} \
            and set(map(attrgetter("ndim"), rows)) == {1}:
        return np.concatenate(rows).tolist()
    return None


def _arrow_elements_pass(values: pd.Series, arrow_ok: Callable[[pyarrow.ChunkedArray], bool] | None) -> bool:
    """:func:`_all_elements_pass` for a list column held as Arrow: lists of text without missing
    elements, all passing ``arrow_ok``."""
    lists = values.array.__arrow_array__()
    if not pyarrow.types.is_list(lists.type):
        return False
    flat = pc.list_flatten(lists)
    if len(flat) == 0:
        return True
    text = pyarrow.types.is_string(flat.type) or pyarrow.types.is_large_string(flat.type)
    return text and flat.null_count == 0 and (arrow_ok is None or arrow_ok(flat))


def _all_elements_pass(values: pd.Series, element_ok: Callable[[list[str], str], bool] | None) -> bool:
    """Is every value a list (or object array) of ``str`` whose elements all pass ``element_ok``
    (given the elements and their concatenation)? Decided over the whole column at once."""
    flat = _elements(values.to_numpy(dtype=object))
    if flat is None:
        return False
    try:
        joined = "".join(flat)  # fails on any element that is not a str
    except TypeError:
        return False
    return element_ok is None or element_ok(flat, joined)


def _non_empty(flat: list[str], joined: str) -> bool:
    return "" not in flat


def _hex16(flat: list[str], joined: str) -> bool:
    return set(map(len, flat)) <= {16} and not joined.translate(_NOT_LOWER_HEX)


def _non_empty_arrow(flat: pyarrow.ChunkedArray) -> bool:
    return pc.min(pc.binary_length(flat)).as_py() > 0


def _hex16_arrow(flat: pyarrow.ChunkedArray) -> bool:
    """Every element 16 lowercase hex digits, checked on Arrow's text buffers in one pass (a regex
    per element costs several seconds a million rows of 25 views)."""
    return flat.null_count == 0 and column_checks.all_lower_hex(flat, 16)


_ELEMENT_CHECKS_ON_ARROW = {_non_empty: _non_empty_arrow, _hex16: _hex16_arrow}


def _list_check(is_valid: Callable[[object], bool], error: str, element_ok: Callable[[list[str], str], bool] | None = None) -> pa.Check:
    """``is_valid`` for every row, run over the whole column: a column whose elements all pass
    at once is valid; otherwise each row is judged by ``is_valid``, so the verdict is always its."""
    arrow_ok = _ELEMENT_CHECKS_ON_ARROW.get(element_ok)

    def passes_at_once(values: pd.Series) -> bool:
        if not isinstance(values.dtype, pd.ArrowDtype):
            return _all_elements_pass(values, element_ok)
        return (element_ok is None or arrow_ok is not None) and _arrow_elements_pass(values, arrow_ok)

    def check(values: pd.Series) -> pd.Series:
        if passes_at_once(values):
            return pd.Series(True, index=values.index)
        return pd.Series([bool(is_valid(v)) for v in values.to_numpy(dtype=object)], index=values.index, dtype=bool)

    return pa.Check(check, error=error)


def _text(nullable: bool = False, **kw) -> pa.Column:
    return pa.Column(str, nullable=nullable, **kw)


def _str_list(error: str) -> pa.Column:
    return pa.Column(object, _list_check(_is_str_list, error, _non_empty))


def _tags() -> pa.Column:
    return _str_list("tags must be a list of non-empty strings")


INGEST_DEFAULTS = {"artists": [], "score": float("nan"), "source_url": None, "post_id": None, "ingest_reason": None, "ingest_detail": None}


_VERSION = {"schema_version": pa.Column("int64", pa.Check.eq(SCHEMA_VERSION))}

_ITEM = {
    "item_id": _text(unique=True),
    "sha256": _text(checks=pa.Check.str_matches(_HEX64)),
}

INGEST_COLUMNS = {
    **_ITEM,
    "source": _text(),
    "rel_path": _text(),
    "path": _text(),
    "size": pa.Column("int64", pa.Check.ge(0)),
    "license": _text(),
    "original_name": _text(),
    "tags": _tags(),
    "rating": _text(checks=pa.Check.isin(RATINGS)),
    "generated": pa.Column(bool),
    "weight": pa.Column("float64", pa.Check.gt(0)),
    "repeats": pa.Column("int64", pa.Check.ge(1)),
    "subset": _text(),
    "sidecar": _text(nullable=True),
    "sidecar_error": _text(nullable=True),
    # metadata some source kinds carry (booru posts); empty or missing elsewhere
    "artists": pa.Column(object, _list_check(lambda v: _is_str_list(v) or len(v) == 0, "artists must be a list of strings", _non_empty)),
    "score": pa.Column("float64", nullable=True),
    "source_url": _text(nullable=True),
    "post_id": _text(nullable=True),
    # a problem found at ingest that rejects the item at the filter (e.g. md5_mismatch)
    "ingest_reason": _text(nullable=True),
    "ingest_detail": _text(nullable=True),
    **_VERSION,
}

IMAGE_COLUMNS = {
    "format": _text(nullable=True),
    "mode": _text(nullable=True),
    "width": pa.Column("int64", pa.Check.ge(0)),
    "height": pa.Column("int64", pa.Check.ge(0)),
    "exif_orientation": pa.Column("int64", pa.Check.in_range(1, 8)),
    "phash": _text(nullable=True, checks=pa.Check.str_matches(_HEX16)),
    "dhash": _text(nullable=True, checks=pa.Check.str_matches(_HEX16)),
    # pHashes of the views in trainset.views.VIEW_NAMES order (query, search, mirrored); [] if undecoded
    "phash_views": pa.Column(object, _list_check(_is_hex16_list, "phash_views must be a list of 16-digit hex strings", _hex16)),
    # measures from the same decode (trainset.features), judged by trainset.audit_checks;
    # a failed decode has n_frames 1, no alpha (alpha_min 255), bit_depth 0 and NaN floats
    "n_frames": pa.Column("int64", pa.Check.ge(1)),
    "animated": pa.Column(bool),
    "has_alpha": pa.Column(bool),
    "alpha_min": pa.Column("int64", pa.Check.in_range(0, 255)),
    "bit_depth": pa.Column("int64", pa.Check.isin([0, 1, 8, 16, 32])),
    "luma_mean": pa.Column("float64", pa.Check.in_range(0, 255), nullable=True),
    "luma_std": pa.Column("float64", pa.Check.in_range(0, 255), nullable=True),
    "entropy": pa.Column("float64", pa.Check.in_range(0, 8), nullable=True),
    "laplacian_var": pa.Column("float64", pa.Check.ge(0), nullable=True),
    "border_fraction": pa.Column("float64", pa.Check.in_range(0, 1), nullable=True),
}

AUDIT_COLUMNS = {
    **_ITEM,
    "decoded": pa.Column(bool),
    "reason": _text(nullable=True, checks=pa.Check.isin(DECODE_REASONS)),
    "detail": _text(nullable=True),
    **IMAGE_COLUMNS,
    **_VERSION,
}

CLUSTER_COLUMNS = {
    # the cluster grown around its representative (key: the representative's SHA-256)
    "cluster_id": _text(checks=pa.Check.str_matches(_HEX16)),
    "cluster_key": _text(checks=pa.Check.str_matches(_HEX64)),
    "cluster_size": pa.Column("int64", pa.Check.ge(1)),
    # the connected component over all near-duplicate pairs (key: its smallest SHA-256), kept on one split side
    "component_key": _text(checks=pa.Check.str_matches(_HEX64)),
}
# exact-duplicate groups and near-duplicate clusters over every raw item, before any filter
GROUP_COLUMNS = {**_ITEM, **CLUSTER_COLUMNS}
# what the policy decided, on tags and ratings merged across each item's copies
POLICY_COLUMNS = {
    "flags": _str_list("flags must be a list of strings"),
    "nsfw_flag": pa.Column(bool),
    "nsfw_score": pa.Column("float64", nullable=True),
    "archetype": _text(nullable=True),
    "emotion": _text(nullable=True),
    "harmony_score": pa.Column("float64", nullable=True),
    "annotation_notes": _text(nullable=True),
    "override": _text(nullable=True),
    "caption_override": _text(nullable=True),
}
# the pHash views stay in the audit manifest: only the pair search reads them, and carrying 25 hex
# strings an item through every stage after it would be most of their bytes
FILTERED_COLUMNS = {**INGEST_COLUMNS, **{k: v for k, v in IMAGE_COLUMNS.items() if k != "phash_views"}, **CLUSTER_COLUMNS,
                    **POLICY_COLUMNS}
DEDUPED_COLUMNS = FILTERED_COLUMNS
CAPTIONED_COLUMNS = {
    **DEDUPED_COLUMNS,
    "caption": _text(),
    # CLIP BPE tokens of the caption; over the window (caption.max_tokens) after any trimming;
    # the tags trimmed from its end to fit (caption.over_limit: trim)
    "caption_tokens": pa.Column("int64", pa.Check.ge(0)),
    "caption_over_limit": pa.Column(bool),
    "caption_trimmed": pa.Column(object, _list_check(_is_list_of_str, "caption_trimmed must be a list of strings")),
    # the background colour the border shows (None: not checked, or no opinion: not uniform), the
    # share of the border ring it covers, and how it compared with an X_background tag
    "background": _text(nullable=True, checks=pa.Check.isin(list(BACKGROUND_COLOURS))),
    "background_uniformity": pa.Column("float64", pa.Check.in_range(0, 1), nullable=True),
    "background_check": _text(nullable=True, checks=pa.Check.isin(["agrees", "fixed", "flagged"])),
}
SPLIT_COLUMNS = {**CAPTIONED_COLUMNS, "split": _text(checks=pa.Check.isin(SPLITS))}

REJECTED_COLUMNS = {
    **_ITEM,
    "source": _text(),
    "path": _text(),
    "stage": _text(),
    "rule": _text(),
    "reason": _text(),
    "detail": _text(),
    "triggered_tags": _str_list("triggered_tags must be a list of strings"),
    # a dropped duplicate: the item (or reference file) it was dropped in favour of
    "duplicate_of": _text(nullable=True),
    # the policy judged the item sexual content, whatever it was rejected for: the HTML report
    # never shows such an item plainly (trainset.stages.html_report)
    "nsfw_flag": pa.Column(bool),
    **_VERSION,
}

# near-duplicate pairs of distinct contents (SHA-256, a < b) and the rule clause that matched
PAIR_COLUMNS = {
    "a": _text(checks=pa.Check.str_matches(_HEX64)),
    "b": _text(checks=pa.Check.str_matches(_HEX64)),
    "distance": pa.Column("int64", pa.Check.in_range(0, 64)),
    "cosine": pa.Column("float64", nullable=True),
    "rule": _text(),
}

# contents that duplicate an image of an external reference set (near_dup.reference)
REFERENCE_PAIR_COLUMNS = {
    "sha256": _text(checks=pa.Check.str_matches(_HEX64)),
    "reference": _text(),
    "reference_path": _text(),
    "distance": pa.Column("int64", pa.Check.in_range(0, 64)),
    "cosine": pa.Column("float64", nullable=True),
    "rule": _text(),
}

MEMBERSHIP_COLUMNS = {
    "item_id": _text(unique=True),
    "cluster_id": _text(checks=pa.Check.str_matches(_HEX16)),
    "cluster_key": _text(checks=pa.Check.str_matches(_HEX64)),
    "keeper": pa.Column(bool),
    "keeper_id": _text(),
    "distance_to_keeper": pa.Column("int64", pa.Check.in_range(0, 64)),
    "cosine_to_keeper": pa.Column("float64", nullable=True),
    "rule": _text(nullable=True),
}

MOVE_COLUMNS = {
    "item_id": _text(unique=True),
    "previous_split": _text(checks=pa.Check.isin(SPLITS)),
    "split": _text(checks=pa.Check.isin(SPLITS)),
    "previous_component_key": _text(),
    "component_key": _text(),
}

EXPORT_COLUMNS = {
    **_ITEM,
    "source": _text(),
    "license": _text(),
    "split": _text(checks=pa.Check.isin(SPLITS)),
    "subset": _text(),
    "repeats": pa.Column("int64", pa.Check.ge(1)),
    "export_path": _text(unique=True),
    "export_sha256": _text(checks=pa.Check.str_matches(_HEX64)),
    "export_format": _text(),
    "conversion": _text(nullable=True),
    "caption": _text(),
    "width": pa.Column("int64", pa.Check.gt(0)),
    "height": pa.Column("int64", pa.Check.gt(0)),
    "rating": _text(checks=pa.Check.isin(RATINGS)),
    "tags": _tags(),
    "generated": pa.Column(bool),
    "cluster_id": _text(checks=pa.Check.str_matches(_HEX16)),
    "nsfw_flag": pa.Column(bool),
    "flags": _str_list("flags must be a list of strings"),
    **_VERSION,
}


def _is_messages(value: object) -> bool:
    """A non-empty list of {role, content}: role system/user/assistant, content non-empty text."""
    return (
        isinstance(value, (list, tuple, np.ndarray)) and len(value) > 0
        and all(isinstance(m, dict) and set(m) == {"role", "content"} and m["role"] in ("system", "user", "assistant")
                and isinstance(m["content"], str) and m["content"].strip() for m in value)
    )


# one conversation (trainset.conversations): a stable id (source + original id or position), the
# SHA-256 of its canonical form, its messages and where it comes from
CONVERSATION_COLUMNS = {
    "id": _text(unique=True),
    "sha256": _text(checks=pa.Check.str_matches(_HEX64)),
    "source": _text(),
    "group": _text(),  # the thread: a split never puts one group on both sides
    "messages": pa.Column(object, pa.Check(_is_messages, element_wise=True,
                                           error="messages must be a non-empty list of {role: system|user|assistant, content: text}")),
    "tier": _text(),
    "category": _text(),
    "is_training_edge_case": pa.Column(bool),
    "license": _text(),
    "original_id": _text(nullable=True),
    "rejected_reply": _text(nullable=True),  # a DPO pair's rejected reply
}

# a conversation (or an unreadable record: id "source:file#line") that was dropped, where and why
CONVERSATION_REJECTED_COLUMNS = {
    "id": _text(unique=True),
    "sha256": _text(nullable=True),  # none for a record that never became a conversation
    "source": _text(),
    "stage": pa.Column(str, pa.Check.isin(["read", "filter", "dedup", "decontaminate", "curriculum"])),
    "rule": _text(),
    "reason": _text(),
    "duplicate_of": _text(nullable=True),  # the kept conversation (or eval item) a duplicate lost to
    "file": _text(nullable=True),
    "line": pa.Column("Int64", pa.Check.ge(0), nullable=True),
}

# after the quality gate: what the gate saw, changed (PII redacted) and flagged (never silently)
CONVERSATION_KEPT_COLUMNS = {
    **CONVERSATION_COLUMNS,
    "flags": _str_list("flags must be a list of strings"),
}

# split and curriculum: train/eval (by group) and the stage each kept conversation feeds
CONVERSATION_SPLIT_COLUMNS = {
    **CONVERSATION_KEPT_COLUMNS,
    "split": pa.Column(str, pa.Check.isin(["train", "eval"])),
    "stage": _text(),
}

# quality scores of every conversation read (trainset.conversations.quality.score); the gate reads them
_COUNT = pa.Column("int64", pa.Check.ge(0))
CONVERSATION_SCORE_COLUMNS = {
    "id": _text(unique=True),
    "sha256": _text(checks=pa.Check.str_matches(_HEX64)),
    "turns": _COUNT,
    "min_message_chars": _COUNT,
    "max_message_chars": _COUNT,
    "tokenizer": _text(),
    "tokens_max_message": _COUNT,
    "tokens_longest_turn": _COUNT,
    "tokens_total": _COUNT,
    "language": _text(),
    "language_confidence": pa.Column(float, pa.Check.in_range(0.0, 1.0)),
    "pii": pa.Column(str),  # kinds found, comma-separated ("" none)
    # safety: the roles whose turns hit each lexicon, comma-separated ("" none)
    "crisis": pa.Column(str),
    "violence": pa.Column(str),
    "abuse": pa.Column(str),
    "toxicity": pa.Column(str),
    "toxicity_model": pa.Column(float, pa.Check.in_range(0.0, 1.0), nullable=True),  # NaN: model off
    "toxicity_model_turn": _COUNT,
    "exchanges": _COUNT,
    "coherence_mean": pa.Column(float, nullable=True),  # NaN: no user turn answered
    "coherence_min": pa.Column(float, nullable=True),
    "coherence_min_turn": _COUNT,
    "empathy": pa.Column(float, pa.Check.in_range(0.0, 1.0), nullable=True),  # NaN: no assistant turn
    "structure": pa.Column(str),  # structure problems, comma-separated ("" well-formed)
}

# the curriculum: each stage's target, what it could take and what it got (trainset.conversations.curriculum)
CONVERSATION_STAGE_COLUMNS = {
    "stage": _text(unique=True),
    "format": pa.Column(str, pa.Check.isin(["messages", "dpo"])),
    "target_share": pa.Column(float, pa.Check.in_range(0.0, 1.0)),
    "target_count": pa.Column("int64", pa.Check.ge(0)),
    "available": pa.Column("int64", pa.Check.ge(0)),
    "selected": pa.Column("int64", pa.Check.ge(0)),
    "achieved_share": pa.Column(float, pa.Check.in_range(0.0, 1.0)),
    "shortfall": pa.Column("int64", pa.Check.ge(0)),
    "shortfall_points": pa.Column(float, pa.Check.ge(0.0)),
    "eval": pa.Column("int64", pa.Check.ge(0)),
    "note": _text(nullable=True),
}


# columns added after a manifest kind first shipped, with the value older manifests read as
# (manifest.read fills them, so older versions stay readable by trainset diff)
ADDED_LATER = {"rejected": {"nsfw_flag": False}}


def _schema(name: str, columns: dict, unique: list[str] | None = None) -> pa.DataFrameSchema:
    return pa.DataFrameSchema(columns, name=name, strict=True, unique=unique)


INGEST = _schema("ingest", INGEST_COLUMNS)
AUDIT = _schema("audit", AUDIT_COLUMNS)
GROUPS = _schema("groups", GROUP_COLUMNS)
FILTERED = _schema("filtered", FILTERED_COLUMNS)
DEDUPED = _schema("deduped", DEDUPED_COLUMNS)
CAPTIONED = _schema("captioned", CAPTIONED_COLUMNS)
SPLIT = _schema("split", SPLIT_COLUMNS)
REJECTED = _schema("rejected", REJECTED_COLUMNS)
PAIRS = _schema("pairs", PAIR_COLUMNS, unique=["a", "b"])
REFERENCE_PAIRS = _schema("reference_pairs", REFERENCE_PAIR_COLUMNS, unique=["sha256", "reference", "reference_path"])
MEMBERSHIP = _schema("clusters", MEMBERSHIP_COLUMNS)
MOVES = _schema("split_moves", MOVE_COLUMNS)
EXPORT = _schema("export", EXPORT_COLUMNS)
CONVERSATIONS = _schema("conversations", CONVERSATION_COLUMNS)
CONVERSATIONS_REJECTED = _schema("conversations_rejected", CONVERSATION_REJECTED_COLUMNS)
CONVERSATIONS_KEPT = _schema("conversations_kept", CONVERSATION_KEPT_COLUMNS)
CONVERSATIONS_SPLIT = _schema("conversations_split", CONVERSATION_SPLIT_COLUMNS)
CONVERSATION_SCORES = _schema("conversation_scores", CONVERSATION_SCORE_COLUMNS)
CONVERSATION_STAGES = _schema("conversation_stages", CONVERSATION_STAGE_COLUMNS)

# optional NSFW classifier score per item (trainset.stages.nsfw); NaN: undecodable, or no model configured
NSFW_SCORES_COLUMNS = {
    **_ITEM,
    "nsfw_score": pa.Column("float64", pa.Check.in_range(0.0, 1.0), nullable=True),
}
NSFW_SCORES = _schema("nsfw_scores", NSFW_SCORES_COLUMNS)


# metadata records (booru posts) that joined no image, or could not be read; not items
UNMATCHED_COLUMNS = {
    "source": _text(),
    "record_id": _text(nullable=True),
    "md5": _text(nullable=True),
    "note": _text(),
}
UNMATCHED = _schema("unmatched", UNMATCHED_COLUMNS)
