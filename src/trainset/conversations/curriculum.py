"""Curriculum stages: which training conversations go to which stage, and how far each stage
falls short of its share.

Each stage has a target share of the set and a format (``messages`` for supervised chat,
``dpo`` for preference pairs). A source's ``category`` enters only the stages its crossover rule
lists, preferred first. Hard rules over the crossover: an edge-case item
(``is_training_edge_case``) enters the edge-case stage (``edge_case_stage``) and nothing else,
whatever its category, and none at all when there is no such stage;
a ``dpo`` stage takes only items with a rejected reply, and such items enter only ``dpo``
stages. A category missing from the crossover is an error naming it, unless ``default_stages``
gives the stages such categories may enter: a silent default would put a new source in
foundation without anyone choosing that.

Sampling: ``size`` (null: every train item some stage can take) times a stage's share is its
target. Stages take items in passes over preference rank: first from items whose first choice
they are, then second choices, and so on; within a pass the stage with the fewest candidates
per missing item picks first, so a scarce stage is not starved by a greedy one. A stage takes
the candidates with the largest Efraimidis-Spirakis keys ``log(u) / tier_weight``, ``u`` from a
hash of (seed, id): a weighted sample without replacement that favours gold over bronze, the
same for the same seed, and in which an item's chance does not hinge on row order.

Eval items get their first allowed stage without sampling, so each stage has its eval file.

``overflow``: train items left over once their stages reached their targets are dropped
(``drop``, the default: the shares hold) or kept in their first-choice stage (``keep``: nothing
is lost, the shares drift and the table says by how much).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .split import EVAL, TRAIN

UNSELECTED = "unselected"
FORMATS = ("messages", "dpo")
OVERFLOW = ("drop", "keep")
"""What happens to train items once their stages are full: dropped (unselected, so the shares hold),
or kept in their first-choice stage (no data lost; the shares drift, and the table shows by how much)."""

DEFAULT_STAGES = (
    {"name": "foundation", "share": 0.40, "format": "messages"},
    {"name": "reasoning", "share": 0.20, "format": "messages"},
    {"name": "edge_cases", "share": 0.20, "format": "messages"},
    {"name": "voice", "share": 0.15, "format": "messages"},
    {"name": "safety_dpo", "share": 0.05, "format": "dpo"},
)
DEFAULT_CROSSOVER = {
    "general": ["foundation", "reasoning", "voice"],
    "reasoning": ["reasoning", "foundation"],
    "counseling": ["voice", "foundation"],
    "edge_case": ["edge_cases"],
    "safety": ["safety_dpo"],
}
DEFAULT_TIER_WEIGHTS = {"gold": 3.0, "silver": 2.0, "default": 1.0, "bronze": 0.5}

TABLE_COLUMNS = ["stage", "format", "target_share", "target_count", "available", "selected", "achieved_share",
                 "shortfall", "shortfall_points", "eval", "note"]


class CurriculumError(ValueError):
    pass


@dataclass(frozen=True)
class Stage:
    name: str
    share: float
    format: str = "messages"


@dataclass(frozen=True)
class Plan:
    """The curriculum params, checked."""

    stages: tuple[Stage, ...]
    crossover: dict[str, tuple[str, ...]]
    tier_weights: dict[str, float]
    size: int | None = None
    edge_case_stage: str | None = "edge_cases"
    default_stages: tuple[str, ...] | None = None
    overflow: str = "drop"

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.stages]

    def stage(self, name: str) -> Stage:
        return self.stages[self.names.index(name)]


def plan(params: dict) -> Plan:
    """Params (``conversations.curriculum``) -> :class:`Plan`; every mistake is named."""
    stages = tuple(_stage(s) for s in params.get("stages") or DEFAULT_STAGES)
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise CurriculumError(f"params.yaml: curriculum stage names repeat: {names}")
    total = sum(s.share for s in stages)
    if abs(total - 1.0) > 1e-6:
        raise CurriculumError(f"params.yaml: curriculum stage shares must sum to 1, got {total:g}")
    crossover = {str(c): tuple(v) for c, v in (params.get("crossover") or DEFAULT_CROSSOVER).items()}
    default = params.get("default_stages")
    default = tuple(default) if default else None
    edge = params.get("edge_case_stage", "edge_cases" if "edge_cases" in names else None)
    edge = None if edge is None else str(edge)
    checks = [*((f"crossover {c!r}", v) for c, v in crossover.items()), ("default_stages", default or ()), ("edge_case_stage", (edge,) if edge else ())]
    for where, listed in checks:
        unknown = [s for s in listed if s not in names]
        if unknown:
            raise CurriculumError(f"params.yaml: curriculum {where} names unknown stages {unknown} (stages: {names})")
    weights = {str(t): float(w) for t, w in (params.get("tier_weights") or DEFAULT_TIER_WEIGHTS).items()}
    if any(w < 0 or math.isnan(w) for w in weights.values()):
        raise CurriculumError(f"params.yaml: curriculum tier_weights must be >= 0, got {weights}")
    size = params.get("size")
    if size is not None and (int(size) != size or size < 0):
        raise CurriculumError(f"params.yaml: curriculum size must be a whole number >= 0 or null, got {size!r}")
    overflow = str(params.get("overflow", "drop"))
    if overflow not in OVERFLOW:
        raise CurriculumError(f"params.yaml: curriculum overflow must be one of {OVERFLOW}, got {overflow!r}")
    return Plan(stages, crossover, weights, None if size is None else int(size), edge, default, overflow)


def formats(params: dict) -> dict[str, str]:
    """Stage -> format, what the export needs."""
    return {s.name: s.format for s in plan(params).stages}


def _stage(spec: dict) -> Stage:
    try:
        stage = Stage(str(spec["name"]), float(spec["share"]), str(spec.get("format", "messages")))
    except (KeyError, TypeError, ValueError):
        raise CurriculumError(f"params.yaml: a curriculum stage needs a name and a share, got {spec!r}") from None
    if stage.format not in FORMATS or not 0.0 <= stage.share <= 1.0:
        raise CurriculumError(f"params.yaml: curriculum stage {stage.name!r}: format must be one of {FORMATS} and share in [0, 1]")
    return stage


def has_rejected(value) -> bool:
    return isinstance(value, str) and bool(value.strip())


def is_edge_case(value) -> bool:
    """Only a true flag counts: a missing one (NaN, None) is not an edge case."""
    return isinstance(value, (bool, np.bool_)) and bool(value)


def allowed(row, p: Plan) -> tuple[list[str], str | None]:
    """The stages one item may enter, preferred first, and why there are none (None when some)."""
    dpo = has_rejected(getattr(row, "rejected_reply", None))
    kind = "a DPO pair" if dpo else "a conversation without a rejected reply"
    if is_edge_case(getattr(row, "is_training_edge_case", False)):
        listed, who = [p.edge_case_stage] if p.edge_case_stage else [], "an edge case, which enters only the edge-case stage"
    else:
        listed = list(p.crossover.get(row.category, p.default_stages or ()))
        who = f"category {row.category!r} enters"
    fit = [s for s in listed if (p.stage(s).format == "dpo") == dpo]
    return fit, None if fit else f"{who} {listed}, none of which takes {kind}"


def check_categories(df: pd.DataFrame, p: Plan) -> None:
    """A category without a crossover rule (and no ``default_stages``) is an error that names it."""
    if p.default_stages is not None:
        return
    flagged = df["is_training_edge_case"].map(is_edge_case).astype(bool) if "is_training_edge_case" in df else False
    missing = sorted(set(df.loc[~flagged, "category"].astype(str)) - set(p.crossover))
    if missing:
        raise CurriculumError(
            f"params.yaml: curriculum crossover has no rule for categories {missing} "
            f"(rules: {sorted(p.crossover)}); add them or set default_stages")


def sample_keys(ids: pd.Series, weights: np.ndarray, seed: int) -> np.ndarray:
    """Efraimidis-Spirakis keys ``log(u) / w`` (largest first wins); ``u`` from a hash of (seed, id)."""
    u = np.array([(int.from_bytes(hashlib.sha256(f"{seed}:{i}".encode()).digest()[:8], "big") + 0.5) / 2**64 for i in ids])
    with np.errstate(divide="ignore"):
        return np.where(weights > 0, np.log(u) / np.where(weights > 0, weights, 1.0), -np.inf)


def targets(p: Plan, size: int) -> dict[str, int]:
    """share x size per stage, rounded by largest remainder so the targets add up to ``size``."""
    raw = {s.name: s.share * size for s in p.stages}
    counts = {n: math.floor(v) for n, v in raw.items()}
    order = sorted(raw, key=lambda n: (-(raw[n] - counts[n]), p.names.index(n)))
    for n in order[: max(0, round(sum(raw.values())) - sum(counts.values()))]:
        counts[n] += 1
    return counts


def assign(df: pd.DataFrame, split: pd.Series, params: dict, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per item (same index): ``stage`` (a stage name or ``unselected``) and ``reason`` (why
    unselected); and the per-stage table (:data:`TABLE_COLUMNS`)."""
    p = plan(params)
    check_categories(df, p)
    rows = list(df.itertuples(index=False))
    choices = [allowed(r, p) for r in rows]
    side = split.to_numpy()
    stage = np.full(len(df), UNSELECTED, dtype=object)
    reason = np.full(len(df), None, dtype=object)
    for k, (fit, why) in enumerate(choices):
        if side[k] == EVAL:
            stage[k], reason[k] = (fit[0], None) if fit else (UNSELECTED, why)
        elif side[k] != TRAIN:
            reason[k] = f"split is {side[k]}"
        elif not fit:
            reason[k] = why
    weights = _weights(df, p)
    train = (side == TRAIN) & np.array([bool(f) for f, _ in choices], dtype=bool) & (weights > 0)
    for k in np.flatnonzero((side == TRAIN) & (weights <= 0)):
        reason[k] = reason[k] or f"tier {rows[k].tier!r} has weight 0"
    rank = _ranks(choices, p, train)
    size = int(train.sum()) if p.size is None else p.size
    goal = targets(p, size)
    _draw(stage, rank, sample_keys(df["id"].astype(str), weights, seed), goal, p)
    if p.overflow == "keep":
        for k in np.flatnonzero(train & (stage == UNSELECTED)):
            stage[k] = choices[k][0][0]
    for k in np.flatnonzero(train & (stage == UNSELECTED)):
        reason[k] = _full(choices[k][0], goal)
    result = pd.DataFrame({"stage": stage, "reason": reason}, index=df.index)
    return result, table(p, goal, rank, stage, side)


def _weights(df: pd.DataFrame, p: Plan) -> np.ndarray:
    unknown = sorted(set(df["tier"].astype(str)) - set(p.tier_weights))
    if unknown:
        raise CurriculumError(f"params.yaml: curriculum tier_weights has no weight for tiers {unknown} (weights: {p.tier_weights})")
    return df["tier"].astype(str).map(p.tier_weights).to_numpy(dtype=float)


def _ranks(choices: list, p: Plan, train: np.ndarray) -> np.ndarray:
    """``rank[item, stage]``: the stage's place in the item's preferences (large: not allowed or not sampled)."""
    rank = np.full((len(choices), len(p.stages)), np.iinfo(np.int32).max, dtype=np.int64)
    for k in np.flatnonzero(train):
        for place, name in enumerate(choices[k][0]):
            rank[k, p.names.index(name)] = place
    return rank


def _draw(stage: np.ndarray, rank: np.ndarray, keys: np.ndarray, goal: dict[str, int], p: Plan) -> None:
    """Fill ``stage`` for the train items: passes over preference rank, scarcest stage first."""
    need = np.array([goal[n] for n in p.names])
    passes = int(rank[rank < np.iinfo(np.int32).max].max(initial=-1)) + 1
    for depth in range(passes):
        done: set[int] = set()
        while True:
            free = stage == UNSELECTED
            pick = _scarcest(rank, free, need, depth, done)
            if pick is None:
                break
            done.add(pick)
            candidates = np.flatnonzero(free & (rank[:, pick] <= depth))
            chosen = candidates[np.lexsort((candidates, -keys[candidates]))[: need[pick]]]
            stage[chosen] = p.names[pick]
            need[pick] -= len(chosen)


def _scarcest(rank: np.ndarray, free: np.ndarray, need: np.ndarray, depth: int, done: set[int]) -> int | None:
    best, best_ratio = None, math.inf
    for s in range(rank.shape[1]):
        if s in done or need[s] <= 0:
            continue
        available = int((free & (rank[:, s] <= depth)).sum())
        if available and available / need[s] < best_ratio:
            best, best_ratio = s, available / need[s]
    return best


def _full(fit: list[str], goal: dict[str, int]) -> str:
    if len(fit) == 1:
        return f"stage {fit[0]} reached its target of {goal[fit[0]]}"
    return f"stages {', '.join(fit)} reached their targets ({', '.join(str(goal[s]) for s in fit)})"


def table(p: Plan, goal: dict[str, int], rank: np.ndarray, stage: np.ndarray, side: np.ndarray) -> pd.DataFrame:
    """Target, availability and what each stage got; a ``note`` says when a stage falls short and by how much."""
    taken = (side == TRAIN) & (stage != UNSELECTED)
    total = int(taken.sum())
    rows = []
    for s, st in enumerate(p.stages):
        selected = int((taken & (stage == st.name)).sum())
        achieved = selected / total if total else 0.0
        short, points = max(0, goal[st.name] - selected), max(0.0, (st.share - achieved) * 100)
        note = None
        if short:
            note = (f"stage {st.name} cannot reach its share: {selected} of {goal[st.name]} items ({short} short), "
                    f"{achieved:.1%} of the set instead of {st.share:.1%} ({points:.1f} share points short)")
        rows.append({
            "stage": st.name, "format": st.format, "target_share": st.share, "target_count": goal[st.name],
            "available": int((rank[:, s] < np.iinfo(np.int32).max).sum()), "selected": selected,
            "achieved_share": achieved, "shortfall": short, "shortfall_points": points,
            "eval": int(((side == EVAL) & (stage == st.name)).sum()), "note": note,
        })
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def shortfalls(stages_table: pd.DataFrame) -> list[str]:
    """The notes of the stages that fall short, for a report or a log."""
    return [n for n in stages_table["note"] if isinstance(n, str)]
