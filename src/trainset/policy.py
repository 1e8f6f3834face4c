"""Content policy: the one place that decides what may be trained on.

Rules, in the order they are checked:
1. minors: a minor-indicating tag together with a sexual rating (questionable/explicit) or an
   explicit tag at any rating is always excluded. Params can extend the tag lists and widen the
   rule (``minors.exclude_at_any_rating``); nothing can narrow or switch it off, and no
   override re-admits an item it excluded.
2. license allowlist, excluded artists, NSFW (``allow`` / ``flag`` / ``exclude``, from rating,
   tags and an optional model score), annotation harmony score, a generic quality threshold,
   and untagged items (``allow`` / ``flag`` / ``quarantine``).
3. manual overrides keyed by sha256 (keep / exclude), applied last.

Decisions are made on tags and ratings merged across each exact-duplicate group and
near-duplicate cluster, so an untagged copy of an excluded image never survives.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import yaml

from .config import ConfigError
from .tags import TagDictionary, list_array

SEXUAL_RATINGS = frozenset({"questionable", "explicit"})
RATING_ORDER = ("unknown", "general", "sensitive", "questionable", "explicit")
ACTIONS_NSFW = ("allow", "flag", "exclude")
ACTIONS_UNTAGGED = ("allow", "flag", "quarantine")


@functools.lru_cache(maxsize=1)
def shipped_lists() -> dict[str, frozenset[str]]:
    """The minor-indicating and explicit tag lists shipped with the package (canonical names)."""
    text = resources.files("trainset").joinpath("data/tags/policy.yaml").read_text(encoding="utf-8")
    doc = yaml.safe_load(text)
    return {key: frozenset(doc[key]) for key in ("minor_tags", "explicit_tags")}


def most_severe(ratings: Iterable[str]) -> str:
    """The most restrictive rating among copies ("unknown" only when all are unknown)."""
    ranked = [RATING_ORDER.index(r) for r in ratings if r in RATING_ORDER]
    return RATING_ORDER[max(ranked)] if ranked else "unknown"


@dataclass(frozen=True)
class Exclusion:
    rule: str
    reason: str
    detail: str
    triggered: tuple[str, ...] = ()


@dataclass(frozen=True)
class Decision:
    exclusion: Exclusion | None
    flags: tuple[str, ...]
    nsfw: bool
    override: str | None


@dataclass(frozen=True)
class Policy:
    minor_tags: frozenset[str]
    explicit_tags: frozenset[str]
    minors_any_rating: bool = False
    nsfw_action: str = "flag"
    nsfw_ratings: frozenset[str] = SEXUAL_RATINGS
    nsfw_score_threshold: float | None = None
    excluded_artists: frozenset[str] = frozenset()
    license_allowlist: frozenset[str] | None = None
    min_harmony: float | None = 2.0
    quality_column: str | None = None
    quality_min: float | None = None
    untagged: str = "allow"
    digest_source: dict = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def from_params(cls, params: dict[str, Any] | None, tags: TagDictionary) -> "Policy":
        p = params or {}
        shipped = shipped_lists()
        minors = p.get("minors") or {}
        nsfw = p.get("nsfw") or {}
        quality = p.get("quality") or {}
        where = "params.yaml: policy"
        if minors.get("enabled", True) is not True:
            raise ConfigError(f"{where}.minors cannot be switched off")
        action = str(nsfw.get("action", "flag"))
        if action not in ACTIONS_NSFW:
            raise ConfigError(f"{where}.nsfw.action must be one of {', '.join(ACTIONS_NSFW)}, got {action!r}")
        untagged = str(p.get("untagged", "allow"))
        if untagged not in ACTIONS_UNTAGGED:
            raise ConfigError(f"{where}.untagged must be one of {', '.join(ACTIONS_UNTAGGED)}, got {untagged!r}")
        ratings = frozenset(nsfw.get("ratings", sorted(SEXUAL_RATINGS)))
        bad = ratings - set(RATING_ORDER)
        if bad:
            raise ConfigError(f"{where}.nsfw.ratings: unknown rating(s) {', '.join(sorted(bad))}")
        allow = p.get("license_allowlist")
        threshold = nsfw.get("score_threshold")
        return cls(
            minor_tags=shipped["minor_tags"] | frozenset(tags.canonicalize(minors.get("extra_tags", []))),
            explicit_tags=shipped["explicit_tags"] | frozenset(tags.canonicalize(p.get("explicit_tags_extra", []))),
            minors_any_rating=bool(minors.get("exclude_at_any_rating", False)),
            nsfw_action=action,
            nsfw_ratings=ratings,
            nsfw_score_threshold=None if threshold is None else float(threshold),
            excluded_artists=frozenset(tags.canonicalize(p.get("excluded_artists", []))),
            license_allowlist=None if allow is None else frozenset(str(x) for x in allow),
            min_harmony=None if p.get("min_harmony", 2) is None else float(p.get("min_harmony", 2)),
            quality_column=quality.get("column"),
            quality_min=None if quality.get("min") is None else float(quality["min"]),
            untagged=untagged,
        )

    # -- the rules ---------------------------------------------------------------------

    def minors(self, tags: set[str], rating: str) -> Exclusion | None:
        minor = sorted(tags & self.minor_tags)
        if not minor:
            return None
        explicit = sorted(tags & self.explicit_tags)
        if rating in SEXUAL_RATINGS or explicit:
            why = f"rating {rating}" if rating in SEXUAL_RATINGS else f"explicit tags {', '.join(explicit)}"
            return Exclusion("minors", "minor_sexual", f"minor-indicating tags {', '.join(minor)} with {why}", tuple(minor + explicit))
        if self.minors_any_rating:
            return Exclusion("minors", "minor_any_rating", f"minor-indicating tags {', '.join(minor)} (excluded at every rating)", tuple(minor))
        return None

    def is_nsfw(self, tags: set[str], rating: str, score: float | None) -> tuple[bool, tuple[str, ...], str]:
        explicit = tuple(sorted(tags & self.explicit_tags))
        reasons = []
        if rating in self.nsfw_ratings:
            reasons.append(f"rating {rating}")
        if explicit:
            reasons.append(f"explicit tags {', '.join(explicit)}")
        if self.nsfw_score_threshold is not None and score is not None and not math.isnan(score) and score >= self.nsfw_score_threshold:
            reasons.append(f"model score {score:.3f} >= {self.nsfw_score_threshold}")
        return bool(reasons), explicit, "; ".join(reasons)

    def decide(self, item: dict, override: dict | None = None) -> Decision:
        """Decide for one item (tags already canonical and merged across its copies)."""
        tags = set(item["tags"])
        rating = item["rating"]
        flags: list[str] = []
        minors = self.minors(tags, rating)
        if minors:
            return Decision(minors, (), True, _describe_override(override, "ignored: minors rule"))
        nsfw, explicit, why = self.is_nsfw(tags, rating, item.get("nsfw_score"))
        exclusion = None
        if self.license_allowlist is not None and item["license"] not in self.license_allowlist:
            exclusion = Exclusion("license", "license_not_allowed", f"license {item['license']!r} is not in the allowlist")
        artists = sorted((set(item.get("artists") or ()) | tags) & self.excluded_artists)
        if exclusion is None and artists:
            exclusion = Exclusion("artists", "excluded_artist", f"artist {', '.join(artists)} is excluded", tuple(artists))
        if exclusion is None and nsfw:
            if self.nsfw_action == "exclude":
                exclusion = Exclusion("nsfw", "nsfw", why, explicit)
            elif self.nsfw_action == "flag":
                flags.append("nsfw")
        harmony = item.get("harmony_score")
        if exclusion is None and self.min_harmony is not None and _present(harmony) and harmony < self.min_harmony:
            exclusion = Exclusion("annotations", "low_harmony", f"harmony score {harmony:g} < {self.min_harmony:g}")
        if exclusion is None and self.quality_column and self.quality_min is not None:
            value = item.get(self.quality_column)
            if _present(value) and value < self.quality_min:
                exclusion = Exclusion("quality", "low_quality", f"{self.quality_column} {value:g} < {self.quality_min:g}")
        if exclusion is None and not tags and rating == "unknown":
            if self.untagged == "quarantine":
                exclusion = Exclusion("untagged", "untagged_quarantined", "no tags and no rating: held out until tagged")
            elif self.untagged == "flag":
                flags.append("untagged")
        applied = None
        if override:
            action = override.get("action")
            if action == "exclude":
                exclusion = Exclusion("override", "manual_exclude", override.get("note") or "excluded by the overrides file")
            elif action == "keep" and exclusion is not None:
                flags.append(f"override_kept:{exclusion.reason}")
                exclusion = None
            applied = _describe_override(override, None)
        return Decision(exclusion, tuple(flags), nsfw, applied)

    def decide_all(self, items: pd.DataFrame, overrides: dict[str, dict] | None = None) -> tuple[np.ndarray, list[Decision]]:
        """:meth:`decide` for every row of ``items`` (overrides keyed by the ``sha256`` column),
        as one index per row into a list of distinct decisions.

        decide() reads tags only through the policy's tag lists (and whether there are any
        tags), so rows that agree on those and on every other input it reads share one call:
        a million items need a few thousand."""
        overrides = overrides or {}
        codes = _combined_codes(self._input_keys(items, overrides), len(items))
        _, first = np.unique(codes, return_index=True)
        decisions = [
            self.decide(row._asdict(), overrides.get(row.sha256) if overrides else None)
            for row in items.iloc[first].itertuples(index=False)
        ]
        return codes, decisions

    def _input_keys(self, items: pd.DataFrame, overrides: dict[str, dict]) -> list[np.ndarray]:
        """Per-row codes of what decide() reads; rows equal on all of them decide alike."""
        tags = list_array(items["tags"])
        has_tags = pc.fill_null(pc.list_value_length(tags), 0).to_numpy() > 0
        keys = [has_tags, _subset_keys(tags, self.minor_tags | self.explicit_tags | self.excluded_artists), _value_codes(items["rating"])]
        if self.excluded_artists and "artists" in items:
            keys.append(_subset_keys(list_array(items["artists"]), self.excluded_artists))
        if self.license_allowlist is not None:
            keys.append(_value_codes(items["license"]))
        read_if_set = {"nsfw_score": self.nsfw_score_threshold, "harmony_score": self.min_harmony}
        if self.quality_column and self.quality_min is not None:
            read_if_set[self.quality_column] = self.quality_min
        keys += [_value_codes(items[column]) for column, setting in read_if_set.items() if setting is not None and column in items]
        if overrides:
            overridden = items["sha256"].isin(list(overrides)).to_numpy(dtype=bool)
            keys.append(np.where(overridden, np.arange(1, len(items) + 1), 0))  # each decided on its own
        return keys


def _subset_keys(lists: pa.ListArray, relevant: frozenset[str]) -> np.ndarray:
    """Per row: which of ``relevant`` the list holds, as a code (0: none, as for most rows).
    Only the few values in ``relevant`` become Python objects."""
    flat = lists.flatten()
    hit = pc.is_in(flat, value_set=pa.array(sorted(relevant), type=pa.string())).to_numpy(zero_copy_only=False)
    rows = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False)[hit]
    found: dict[int, set[str]] = {}
    for row, value in zip(rows.tolist(), flat.filter(pa.array(hit)).to_pylist()):
        found.setdefault(row, set()).add(value)
    ids: dict = {}
    codes = np.zeros(len(lists), dtype=np.int64)
    for row, values in found.items():
        codes[row] = 1 + ids.setdefault(tuple(sorted(values)), len(ids))
    return codes


def _value_codes(values: pd.Series) -> np.ndarray:
    """Equal codes for equal values: floats by bit pattern (so -0.0 and 0.0, which print
    differently, stay apart), text and integers by value, anything else one code per row."""
    kind = values.dtype
    if isinstance(kind, np.dtype) and kind.kind == "f":
        return pd.factorize(values.to_numpy(dtype=np.float64).view(np.int64))[0]
    if isinstance(kind, np.dtype) and kind.kind in "biu" or isinstance(kind, pd.StringDtype):
        return pd.factorize(values)[0]
    return np.arange(len(values))


def _combined_codes(keys: list[np.ndarray], n: int) -> np.ndarray:
    """One code per row, equal exactly where every key is equal."""
    codes = np.zeros(n, dtype=np.int64)
    for key in keys:
        key = np.asarray(key, dtype=np.int64) + 1  # factorize's -1 (missing) becomes 0
        codes = pd.factorize(codes * (int(key.max(initial=0)) + 1) + key)[0]
    return codes


def _present(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _describe_override(override: dict | None, note: str | None) -> str | None:
    if not override:
        return None
    parts = [f"{k}={v}" for k, v in override.items() if k != "sha256" and v not in (None, "", [], ())]
    text = ", ".join(parts) or "present"
    return f"{text} ({note})" if note else text
