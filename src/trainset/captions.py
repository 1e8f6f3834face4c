"""Captions from tags: the one place a tag list becomes caption text.

A LoRA trainer's captions decide what the model learns, so the tag list is cleaned and ordered
the same way for every item (:class:`CaptionSpec`, from ``caption`` in params.yaml):

1. every tag is canonicalized through the tag dictionary (``trainset.tags``: aliases, categories);
2. dropped: tags of the dropped categories (meta by default), the well-known meta tags
   (:data:`DEFAULT_DROP`: highres, absurdres, commentary, ...), rating tags (``rating:*``,
   ``rating_*``, general / sensitive / questionable / explicit) and the user's blacklist;
3. ordered: the trigger word, the prefix (quality or score tags, e.g. Pony's ``score_9``), the
   people-count tags (``1girl``, ``2boys``, ``solo``, ``no_humans``), then the categories in
   ``category_order``; within a category the source order is kept;
4. written: underscores to spaces except in emoticon tags (``^_^``, ``>_<``, ``o_o``), and
   parentheses escaped (``\\(``, ``\\)``) as prompt syntax needs;
5. measured with the real CLIP BPE tokenizer (:mod:`trainset.clip_tokens`) against the 75-token
   window, and flagged or trimmed (tags dropped from the end, never the kept ones).

``keep_tokens`` (the leading comma-separated tokens Kohya keeps in place when it shuffles a
caption) is the trigger word plus the prefix: :attr:`CaptionSpec.keep_tokens`, the number the
Kohya config is written with.

Formats: ``booru`` (comma-separated tags, for Pony/SDXL), ``natural`` (a sentence made from the
tags by templates, :mod:`trainset.caption_templates`, for Flux/T5; no language model) and ``both``
(the sentence, then the tags).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from .tags import CATEGORIES, TagDictionary, normalize

FORMATS = ("booru", "natural", "both")
OVER_LIMIT = ("flag", "trim")
CLIP_WINDOW = 75
"""CLIP's context is 77 tokens: 75 for the caption between its start and end markers."""

DEFAULT_DROP = (
    "highres", "absurdres", "incredibly_absurdres", "lowres", "huge_filesize", "commentary",
    "commentary_request", "english_commentary", "symbol-only_commentary", "translated",
    "translation_request", "partially_translated", "check_translation", "bad_id", "bad_pixiv_id",
    "bad_twitter_id", "md5_mismatch", "duplicate", "tagme", "artist_request", "character_request",
    "copyright_request", "source_request", "third-party_edit", "revision", "image_sample",
)
"""Meta tags that say something about the post, not the picture (dropped unless kept in params)."""

PEOPLE_COUNT = re.compile(r"^(?:\d+\+?(?:girl|boy|other)s?|multiple_(?:girls|boys|others)|solo|solo_focus|no_humans)$")
"""Tags that count the people in the picture; they come right after the trigger word and prefix."""

RATING_TAG = re.compile(r"^(?:rating[:_].*|general|sensitive|questionable|explicit|safe|nsfw|sfw)$")
"""Rating tags: the rating is a column of its own (``trainset.rating``), not a caption word."""

_EMOTICON_PART = re.compile(r"^.$")


@dataclass(frozen=True)
class CaptionSpec:
    """How tags become a caption (``caption`` in params.yaml); :meth:`from_params` checks it."""

    format: str = "booru"
    trigger_word: str = ""
    prefix: tuple[str, ...] = ()
    drop_categories: tuple[str, ...] = ("meta",)
    drop_tags: tuple[str, ...] = DEFAULT_DROP
    drop_rating_tags: bool = True
    blacklist: tuple[str, ...] = ()
    category_order: tuple[str, ...] = ("character", "copyright", "artist", "general", "meta")
    people_first: bool = True
    underscores_to_spaces: bool = True
    escape_parentheses: bool = True
    separator: str = ", "
    max_tokens: int = CLIP_WINDOW
    over_limit: str = "flag"
    _dropped: frozenset[str] = field(default=frozenset(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_dropped", frozenset(normalize(t) for t in (*self.drop_tags, *self.blacklist)))

    @property
    def keep_tokens(self) -> int:
        """Leading comma-separated tokens that stay in place when Kohya shuffles the caption:
        the trigger word and the prefix."""
        return int(bool(self.trigger_word.strip())) + len(self.prefix)

    @classmethod
    def from_params(cls, caption: dict | None) -> CaptionSpec:
        """The spec from params.yaml's ``caption`` block; a bad value raises ``ValueError`` naming the key."""
        caption = dict(caption or {})
        caption.pop("background", None)  # the background check's own block (trainset.background.Settings)
        known = {f for f in cls.__dataclass_fields__ if not f.startswith("_")}
        unknown = sorted(set(caption) - known)
        if unknown:
            raise ValueError(f"caption: unknown keys {unknown} (known: {sorted(known)})")
        out = {}
        for key, value in caption.items():
            default = getattr(cls, key)
            if isinstance(default, tuple):
                if isinstance(value, str):
                    value = [v.strip() for v in value.split(",") if v.strip()]
                if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                    raise ValueError(f"caption.{key}: a list of strings, got {value!r}")
                value = tuple(value)
            elif isinstance(default, bool):
                if not isinstance(value, bool):
                    raise ValueError(f"caption.{key}: true or false, got {value!r}")
            elif isinstance(default, int):
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise ValueError(f"caption.{key}: a positive whole number, got {value!r}")
            elif value is None:
                value = ""
            elif not isinstance(value, str):
                raise ValueError(f"caption.{key}: text, got {value!r}")
            out[key] = value
        spec = cls(**out)
        if spec.format not in FORMATS:
            raise ValueError(f"caption.format: one of {', '.join(FORMATS)}, got {spec.format!r}")
        if spec.over_limit not in OVER_LIMIT:
            raise ValueError(f"caption.over_limit: one of {', '.join(OVER_LIMIT)}, got {spec.over_limit!r}")
        bad = sorted(set(spec.category_order + spec.drop_categories) - set(CATEGORIES.values()))
        if bad:
            raise ValueError(f"caption: unknown tag categories {bad} (known: {sorted(CATEGORIES.values())})")
        return spec

    def for_source(self, trigger_word: str) -> CaptionSpec:
        """This spec for a source with its own trigger word (``sources[].trigger_word``; empty: this one)."""
        return dataclasses.replace(self, trigger_word=trigger_word.strip()) if trigger_word.strip() else self

    def drops(self, tag: str, category: str | None) -> bool:
        """Is the canonical ``tag`` (of ``category``) left out of captions?"""
        return (
            tag in self._dropped
            or (category is not None and category in self.drop_categories)
            or (self.drop_rating_tags and RATING_TAG.match(tag) is not None)
        )


def is_emoticon(tag: str) -> bool:
    """Emoticon-style tags keep their underscores: every part between underscores is one
    character (``^_^``, ``>_<``, ``o_o``, ``u_u``) or the tag has no letter or digit at all."""
    parts = tag.split("_")
    return (len(parts) > 1 and all(_EMOTICON_PART.match(p) for p in parts)) or not any(c.isalnum() for c in tag)


def write_tag(tag: str, spec: CaptionSpec) -> str:
    """One canonical tag as caption text: spaces for underscores (not in emoticons), parentheses escaped."""
    text = tag if not spec.underscores_to_spaces or is_emoticon(tag) else tag.replace("_", " ")
    if spec.escape_parentheses:
        text = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    return text.strip()


def ordered_tags(tags: Iterable[str], spec: CaptionSpec, dictionary: TagDictionary) -> list[str]:
    """The canonical tags a caption holds, in caption order, without the trigger word and prefix."""
    return Captioner(spec, dictionary).ordered_tags(tags)


def leading(spec: CaptionSpec) -> list[str]:
    """The caption's fixed start: the trigger word and the prefix tags, as params write them
    (Pony's ``score_9`` keeps its underscore)."""
    return [t.strip() for t in (spec.trigger_word, *spec.prefix) if t.strip()]


@dataclass(frozen=True)
class Caption:
    """A caption, its CLIP token count, and whether it exceeded the window (and was trimmed)."""

    text: str
    tokens: int
    over_limit: bool
    trimmed_tags: tuple[str, ...] = ()


_PLAIN_ASCII = re.compile(r"[\x20-\x25\x27-\x7e]*")
"""Printable ASCII without ``&``: text CLIP's cleaning (ftfy, HTML unescaping) leaves as it is."""


def count_tokens(text: str) -> int:
    """CLIP BPE tokens of ``text`` (:func:`trainset.clip_tokens.count`). CLIP's tokens never span
    whitespace, so plain text is counted word by word: captions share their words, and each
    word's count is cached."""
    from .clip_tokens import count

    if _PLAIN_ASCII.fullmatch(text):
        return sum(count(word) for word in text.split(" ") if word)
    return count(text)


def build(tags: Iterable[str], spec: CaptionSpec, dictionary: TagDictionary, count_tokens=count_tokens) -> Caption:
    """The caption of one item's tags; ``count_tokens`` (text -> int) is CLIP's BPE tokenizer."""
    return Captioner(spec, dictionary, count_tokens).build(tags)


class Captioner:
    """Captions of many items by one spec and dictionary: each distinct tag is resolved, judged
    and written once."""

    def __init__(self, spec: CaptionSpec, dictionary: TagDictionary, count_tokens=count_tokens) -> None:
        self.spec, self.dictionary, self.count_tokens = spec, dictionary, count_tokens
        self._head = leading(spec)
        self._fixed = {normalize(t) for t in (spec.trigger_word, *spec.prefix) if t.strip()}
        self._rank = {name: k for k, name in enumerate(spec.category_order)}
        self._judged: dict[str, tuple[str, bool, bool, int]] = {}
        self._written: dict[str, str] = {}

    def _judge(self, tag: str) -> tuple[str, bool, bool, int]:
        """(canonical name, kept in captions, a people-count tag, category rank) of a raw tag."""
        name = self.dictionary.canonical(tag)
        if not name:
            return name, False, False, 0
        category = self.dictionary.category(name)
        kept = name not in self._fixed and not self.spec.drops(name, category)
        people = bool(self.spec.people_first and PEOPLE_COUNT.match(name))
        # unknown tags (not in any dictionary) read as general
        return name, kept, people, self._rank.get(category or "general", len(self._rank))

    def ordered_tags(self, tags: Iterable[str]) -> list[str]:
        """The canonical tags a caption holds, in caption order, without the trigger word and prefix."""
        if isinstance(tags, str):
            raise TypeError("ordered_tags() takes an iterable of tags, not one string")
        seen: dict[str, tuple[str, bool, bool, int]] = {}
        for tag in tags:
            judged = self._judged.get(tag)
            if judged is None:
                judged = self._judged[tag] = self._judge(tag)
            if judged[0]:
                seen.setdefault(judged[0], judged)
        kept = [j for j in seen.values() if j[1]]
        rest = sorted((j for j in kept if not j[2]), key=lambda j: j[3])
        return [j[0] for j in kept if j[2]] + [j[0] for j in rest]

    def build(self, tags: Iterable[str]) -> Caption:
        """The caption of one item's tags."""
        spec = self.spec
        body = self.ordered_tags(tags)
        text = self._render(body)
        tokens = self.count_tokens(text)
        if tokens <= spec.max_tokens:
            return Caption(text, tokens, False)
        if spec.over_limit == "flag":
            return Caption(text, tokens, True)
        trimmed = []
        while body and tokens > spec.max_tokens:  # drop from the end: the least ordered tags go first
            trimmed.append(body.pop())
            text = self._render(body)
            tokens = self.count_tokens(text)
        return Caption(text, tokens, tokens > spec.max_tokens, tuple(reversed(trimmed)))

    def _write(self, tag: str) -> str:
        written = self._written.get(tag)
        if written is None:
            written = self._written[tag] = write_tag(tag, self.spec)
        return written

    def _render(self, body: list[str]) -> str:
        return _render(self._head, body, self.spec, self.dictionary, [self._write(t) for t in body])


def _render(head: list[str], body: list[str], spec: CaptionSpec, dictionary: TagDictionary, written: list[str] | None = None) -> str:
    """The caption text: the fixed start, then the tags (``booru``), the sentence (``natural``) or
    the sentence followed by the tags (``both``). ``written``: the body's tags as :func:`write_tag` writes them."""
    tags = [write_tag(t, spec) for t in body] if written is None else written
    if spec.format == "booru":
        return spec.separator.join([*head, *tags])
    from .caption_templates import sentence

    text = sentence(body, dictionary)
    if spec.format == "both" and tags:
        text += " " + spec.separator.join(tags)
    return spec.separator.join([*head, text])


def caption(tags: Iterable[str], trigger_word: str = "", underscores_to_spaces: bool = True, separator: str = ", ") -> str:
    """Trigger word first, then the tags in order, each once (no dictionary, no dropping): the
    plain form, for callers that already hold a clean, ordered tag list."""
    parts: list[str] = []
    if trigger_word.strip():
        parts.append(trigger_word.strip())
    for tag in tags:
        text = tag.replace("_", " ") if underscores_to_spaces else tag
        text = text.strip()
        if text and text not in parts:
            parts.append(text)
    return separator.join(parts)
