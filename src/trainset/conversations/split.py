"""Train/eval split of conversations by group, and the decontamination check after it.

A conversation's ``group`` (its thread, transcript or question) decides its side, so no thread
is half in training and half in evaluation. Each group's side comes from a seeded hash of its
key alone: ``u = sha256(seed:group)`` read as a number in [0, 1), eval when ``u < eval_share``.

Why a threshold per group and not a per-source ranking: ranking the groups of a source by hash
and sending the lowest ``round(share * n)`` to eval hits every source's share almost exactly,
but the cut moves whenever a batch adds groups, and old groups cross sides (an eval thread the
last model was scored on becomes training data). The threshold never moves anything: a group
keeps its side whatever else is added. The price is binomial noise in each source's eval share
(standard deviation ``sqrt(share * (1 - share) / n_groups)``, e.g. 0.1 +- 0.03 at 100 groups),
so a small source may get no eval group. :func:`source_shares` reports every source's share
and flags the ones outside the expected range; ``min_eval_groups`` tops a source up with its
lowest-hash groups, the one rule that can move a group back (a top-up group returns to
training once the threshold alone gives the source enough eval groups), so it is off by default.

Eval-only sources (a held-out benchmark) send every group they touch to eval.

Decontamination: thread grouping does not catch the same text under two groups (a benchmark
question copied into a training source). :func:`contaminated` lists training items whose content
or prompt equals an eval item's, plus whatever the caller's hooks find (e.g. an embedding
near-duplicate search); :func:`run` drops them from training.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Iterable

import pandas as pd

TRAIN, EVAL, CONTAMINATED = "train", "eval", "contaminated"
SIDES = (TRAIN, EVAL)

Hook = Callable[[pd.DataFrame, pd.DataFrame], pd.DataFrame]
"""``hook(train, eval) -> DataFrame[id, matched_id, reason]``: training items that leak an eval item."""

_CONTAMINATION_COLUMNS = ["id", "matched_id", "reason"]
_SPACE = re.compile(r"\s+")


class SplitError(ValueError):
    pass


def position(group: str, seed: int) -> float:
    """A uniform draw in [0, 1) from the seeded hash of a group key (as the image split draws)."""
    digest = hashlib.sha256(f"{seed}:{group}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def groups_of(df: pd.DataFrame) -> pd.Series:
    """Each row's group; a row without one is its own group (its id)."""
    if "group" not in df:
        return df["id"].astype(str)
    return df["group"].where(df["group"].notna() & (df["group"].astype(str) != ""), df["id"]).astype(str)


def check_share(eval_share) -> float:
    try:
        share = float(eval_share)
    except (TypeError, ValueError):
        raise SplitError(f"params.yaml: eval_share must be a number in [0, 1], got {eval_share!r}") from None
    if not 0.0 <= share <= 1.0:
        raise SplitError(f"params.yaml: eval_share must be a number in [0, 1], got {eval_share!r}")
    return share


def assign(
    conversations: pd.DataFrame, eval_share: float, seed: int, eval_only: Iterable[str] = (), min_eval_groups: int = 0,
) -> pd.Series:
    """``"train"`` or ``"eval"`` for every row (same index), decided per group.

    ``eval_only``: sources whose groups all go to eval. ``min_eval_groups``: a source with fewer
    eval groups than this (and more groups than this) gets its lowest-hash groups added."""
    share = check_share(eval_share)
    groups = groups_of(conversations)
    u = {g: position(g, seed) for g in groups.unique()}
    to_eval = {g for g, x in u.items() if x < share}
    held_out = set(eval_only)
    to_eval |= set(groups[conversations["source"].isin(held_out)])
    if min_eval_groups > 0:
        to_eval |= _top_up(groups, conversations["source"], u, to_eval, int(min_eval_groups), held_out)
    return groups.map(lambda g: EVAL if g in to_eval else TRAIN).rename("split")


def _top_up(groups: pd.Series, sources: pd.Series, u: dict, to_eval: set, minimum: int, held_out: set) -> set:
    """The lowest-hash groups of each source short of ``minimum`` eval groups."""
    extra: set = set()
    for source, members in groups.groupby(sources, sort=True):
        if source in held_out:
            continue
        keys = sorted(set(members), key=lambda g: (u[g], g))
        if len(keys) <= minimum:
            continue
        have = sum(g in to_eval for g in keys)
        for g in keys:
            if have >= minimum:
                break
            if g not in to_eval:
                extra.add(g)
                have += 1
    return extra


def leakage(df: pd.DataFrame, split: pd.Series | None = None) -> list[str]:
    """Groups with items on both sides (sorted); must be empty."""
    side = _aligned(df, df["split"] if split is None else split)
    mask = side.isin(SIDES)
    sides = side[mask].groupby(groups_of(df)[mask]).nunique()
    return sorted(sides.index[sides > 1])


def _aligned(df: pd.DataFrame, split) -> pd.Series:
    """``split`` by position, on ``df``'s index."""
    return pd.Series(list(split), index=df.index, dtype=object)


def source_shares(df: pd.DataFrame, split: pd.Series, eval_share: float, eval_only: Iterable[str] = ()) -> pd.DataFrame:
    """Per source: groups, eval groups, items on each side, eval share of groups, and whether it
    lies outside the binomial 3-sigma range the threshold rule expects (eval-only sources: 1.0)."""
    share, held_out = check_share(eval_share), set(eval_only)
    frame = pd.DataFrame({"source": df["source"].to_numpy(), "group": groups_of(df).to_numpy(), "split": split.to_numpy()})
    rows = []
    for source, part in frame.groupby("source", sort=True):
        per_group = part.drop_duplicates("group")
        n, k = len(per_group), int((per_group["split"] == EVAL).sum())
        expected = 1.0 if source in held_out else share
        tolerance = 3 * math.sqrt(expected * (1 - expected) / n) + 1e-9
        rows.append({
            "source": source, "groups": n, "eval_groups": k,
            "train_items": int((part["split"] == TRAIN).sum()), "eval_items": int((part["split"] == EVAL).sum()),
            "target_share": expected, "eval_share": k / n, "off_share": abs(k / n - expected) > tolerance,
        })
    return pd.DataFrame(rows, columns=["source", "groups", "eval_groups", "train_items", "eval_items",
                                       "target_share", "eval_share", "off_share"])


def prompt_text(messages) -> str:
    """The conversation before its last assistant turn, without system text, normalized for matching."""
    turns = [m for m in messages if m["role"] != "system"]
    last = max((k for k, m in enumerate(turns) if m["role"] == "assistant"), default=len(turns))
    return _normal(" ".join(m["content"] for m in turns[:last]))


def _normal(text: str) -> str:
    return _SPACE.sub(" ", text.casefold()).strip()


def contaminated(df: pd.DataFrame, split: pd.Series, hooks: Iterable[Hook] = (), min_prompt_chars: int = 32) -> pd.DataFrame:
    """Training items that repeat an eval item: the same content (``sha256``), the same prompt
    (at least ``min_prompt_chars`` long, so "Hi" matches nothing), or a hook's finding.
    One row per training item (its first reason), sorted by id."""
    side = _aligned(df, split)
    train, held = df[side == TRAIN], df[side == EVAL]
    found = [_same_content(train, held), _same_prompt(train, held, min_prompt_chars)]
    for hook in hooks:
        found.append(pd.DataFrame(hook(train, held), columns=_CONTAMINATION_COLUMNS))
    out = pd.concat([f for f in found if len(f)] or [pd.DataFrame(columns=_CONTAMINATION_COLUMNS)], ignore_index=True)
    return out.drop_duplicates("id").sort_values("id", kind="stable").reset_index(drop=True)


def _same_content(train: pd.DataFrame, held: pd.DataFrame) -> pd.DataFrame:
    first = held.sort_values("id").drop_duplicates("sha256").set_index("sha256")["id"]
    hit = train[train["sha256"].isin(first.index)]
    return pd.DataFrame({"id": hit["id"], "matched_id": hit["sha256"].map(first), "reason": "same content as an eval item"})


def _same_prompt(train: pd.DataFrame, held: pd.DataFrame, min_chars: int) -> pd.DataFrame:
    if held.empty or train.empty:
        return pd.DataFrame(columns=_CONTAMINATION_COLUMNS)
    prompts = held.assign(_p=held["messages"].map(prompt_text)).sort_values("id")
    prompts = prompts[prompts["_p"].str.len() >= min_chars].drop_duplicates("_p").set_index("_p")["id"]
    mine = train["messages"].map(prompt_text)
    hit = mine.isin(prompts.index)
    return pd.DataFrame({"id": train["id"][hit], "matched_id": mine[hit].map(prompts), "reason": "same prompt as an eval item"})


def run(df: pd.DataFrame, params: dict, seed: int, hooks: Iterable[Hook] = ()) -> tuple[pd.Series, pd.DataFrame]:
    """The split column (``train`` / ``eval`` / ``contaminated``) and the contamination list.

    Params (``conversations.split``): ``eval_share``, ``eval_only``, ``min_eval_groups``,
    ``drop_contaminated`` (false: report only), ``min_prompt_chars``."""
    eval_only = list(params.get("eval_only") or [])
    side = assign(df, params.get("eval_share", 0.05), seed, eval_only, int(params.get("min_eval_groups", 0)))
    found = contaminated(df, side, hooks, int(params.get("min_prompt_chars", 32)))
    if params.get("drop_contaminated", True):
        side = side.mask(df["id"].isin(found["id"]), CONTAMINATED)
    return side, found
