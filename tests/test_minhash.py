"""MinHash signatures and LSH banding: value for value what datasketch 2.0 computes."""

from __future__ import annotations

import types

import numpy as np
import pytest
from datasketch import MinHash, MinHashLSH
from datasketch.hashfunc import sha1_hash32
from datasketch.lsh import _optimal_param

from trainset import kernels
from trainset.conversations import minhash as mh
from trainset.kernels import HOST, Backend

ANSWERS = [
    "It sounds like you are carrying a lot right now. Anxiety at work often follows us home, and "
    "lying awake going over the day is one of the most common ways it shows up. Try writing your "
    "worries down an hour before bed, then close the notebook: the point is to tell your mind the "
    "list is safe until morning. If it keeps happening for weeks, a counselor can help you find "
    "what is underneath it.",
    "Arguments about money are rarely only about money. They are about safety, fairness and "
    "control. Pick a calm moment, not the middle of a fight, and each say what money means to "
    "you. A weekly budget talk of twenty minutes can take the heat out of the rest of the week.",
    "Thank you for reaching out.",
    "Grief has no timetable.",
    "",
    "Ｆｕｌｌｗｉｄｔｈ   TEXT\twith   odd\n\nspacing ﬁ ligature",
]


def _conversation(text: str, prompt: str = "I need some advice.") -> dict:
    return {"id": "x", "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": text}]}


def _datasketch(shingle_lists, num_perm=128, seed=1, scheme="affine32") -> np.ndarray:
    out = []
    for shingles in shingle_lists:
        m = MinHash(num_perm=num_perm, seed=seed, scheme=scheme)
        m.update_batch(shingles)
        out.append(m.hashvalues.astype(np.uint64))
    return np.array(out)


def test_text_is_canonical_content_one_message_a_line():
    conv = _conversation(ANSWERS[5], prompt="  Hello\u00a0THERE  ")
    assert mh.conversation_text(conv) == "hello there\nfullwidth text with odd spacing fi ligature"
    assert mh.conversation_text(conv, casefold=False).startswith("Hello THERE\nFullwidth TEXT")
    dpo = {**_conversation("the chosen reply"), "rejected_reply": "the rejected reply"}
    assert "rejected" not in mh.conversation_text(dpo)


def test_shingles_are_word_ngrams_short_texts_one_empty_none():
    assert mh.shingles("a b c d e f", 5) == [b"a b c d e", b"b c d e f"]
    assert mh.shingles("grief has no timetable.", 5) == [b"grief has no timetable."]
    assert mh.shingles("one two\nthree", 2) == [b"one two", b"two three"]
    assert mh.shingles("", 5) == [] and mh.shingles("   ", 3) == []
    assert mh.shingles("caf\u00e9 ok", 1) == ["café".encode(), b"ok"]


@pytest.mark.parametrize("num_perm,seed,scheme", [(128, 1, "affine32"), (64, 42, "affine32"), (128, 7, "legacy")])
def test_signatures_equal_datasketch_value_for_value(num_perm, seed, scheme):
    texts = [mh.conversation_text(_conversation(a)) for a in ANSWERS] + ["", "word"]
    lists = [mh.shingles(t, 5) for t in texts]
    got = mh.signatures(texts, 5, num_perm, seed, scheme, be=HOST)
    assert got.dtype == np.uint32 and got.shape == (len(texts), num_perm)
    assert np.array_equal(got.astype(np.uint64), _datasketch(lists, num_perm, seed, scheme))
    assert mh.is_empty(got).tolist() == [t == "" for t in texts]


def test_permutations_are_datasketchs():
    for scheme in ("affine32", "legacy"):
        a, b = kernels.minhash_permutations(16, 3, scheme)
        want = MinHash(num_perm=16, seed=3, scheme=scheme).permutations
        assert np.array_equal(a, want[0]) and np.array_equal(b, want[1])


def test_compiled_sha1_equals_hashlib_at_every_padding_boundary():
    rng = np.random.default_rng(0)
    strings = [rng.bytes(n) for n in [*range(0, 130), 183, 1000, 4097]] + ["naïve café".encode()]
    ends = np.concatenate([[0], np.cumsum([len(s) for s in strings])])
    got = kernels.sha1_hash32_batch(b"".join(strings), ends)
    assert got.tolist() == [sha1_hash32(s) for s in strings]
    lists = [strings[:40], [], strings[40:]]
    for method in ("numba", "hashlib"):
        hashes, offsets = mh.shingle_hashes(lists, method=method)
        assert hashes.tolist() == got.tolist() and offsets.tolist() == [0, 40, 40, len(strings)]


def _random_documents(seed: int = 3, docs: int = 60):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 90, size=docs)
    lengths[:3] = (0, 1, 0)
    hashes = rng.integers(0, 2**32, size=int(lengths.sum()), dtype=np.uint64).astype(np.uint32)
    return hashes, np.concatenate([[0], np.cumsum(lengths)])


@pytest.mark.parametrize("scheme", ["affine32", "legacy"])
def test_compiled_and_blockwise_kernels_agree(scheme):
    hashes, offsets = _random_documents()
    compiled = kernels.minhash_signatures(hashes, offsets, 96, 5, scheme, be=HOST)
    for block in (1, 5_000, 1 << 22):
        assert np.array_equal(kernels.minhash_blockwise(hashes, offsets, 96, 5, scheme, be=HOST, block_elements=block), compiled)
    assert np.all(compiled[[0, 2]] == kernels.MINHASH_EMPTY)


class _DeviceArray(np.ndarray):
    def get(self):
        return np.asarray(self)


def _device_backend() -> Backend:
    """A CuPy-shaped namespace whose arrays must be fetched with ``.get()``."""
    xp = types.ModuleType("cupy")
    xp.uint32, xp.uint64 = np.uint32, np.uint64
    xp.asarray = lambda a, dtype=None: np.asarray(a, dtype=dtype).view(_DeviceArray)
    return Backend(xp, "cupy", "stand-in")


@pytest.mark.parametrize("scheme", ["affine32", "legacy"])
def test_cupy_path_on_a_stand_in_equals_the_host(scheme):
    hashes, offsets = _random_documents(seed=9)
    got = kernels.minhash_signatures(hashes, offsets, 64, 2, scheme, be=_device_backend())
    assert type(got) is np.ndarray and got.dtype == np.uint32
    assert np.array_equal(got, kernels.minhash_signatures(hashes, offsets, 64, 2, scheme, be=HOST))


def test_offsets_must_cover_the_hashes():
    with pytest.raises(ValueError, match="offsets"):
        kernels.minhash_signatures(np.zeros(3, np.uint32), [0, 2], be=HOST)
    with pytest.raises(ValueError, match="scheme"):
        kernels.minhash_signatures(np.zeros(3, np.uint32), [0, 3], scheme="affine64", be=HOST)


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.8, 0.9])
def test_bands_are_chosen_as_datasketch_chooses_them(threshold):
    for num_perm in (64, 128):
        assert mh.optimal_bands(threshold, num_perm) == _optimal_param(threshold, num_perm, 0.5, 0.5)


def _edited_corpus(seed: int = 1):
    """Texts and copies with a few words replaced: pairs across the whole Jaccard range."""
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(400)]
    texts = []
    for _ in range(70):
        words = list(rng.choice(vocab, 80))
        texts.append(" ".join(words))
        for _ in range(int(rng.integers(0, 12))):
            words[int(rng.integers(0, 80))] = "edit"
        texts.append(" ".join(words))
    return mh.signatures(texts, be=HOST)


def _lsh(sigs, threshold, keys):
    lsh = MinHashLSH(threshold=threshold, num_perm=sigs.shape[1])
    sketches = [MinHash(num_perm=sigs.shape[1], hashvalues=s, scheme="affine32") for s in sigs]
    for k in keys:
        lsh.insert(int(k), sketches[k])
    return lsh, sketches


@pytest.mark.parametrize("threshold", [0.5, 0.8])
def test_candidates_equal_datasketch_lsh_queries(threshold):
    sigs = _edited_corpus()
    bands, rows = mh.optimal_bands(threshold, 128)
    lsh, sketches = _lsh(sigs, threshold, range(len(sigs)))
    want = {(min(k, o), max(k, o)) for k, m in enumerate(sketches) for o in lsh.query(m) if o != k}
    i, j = mh.lsh_candidates(sigs, bands, rows)
    assert set(zip(i.tolist(), j.tolist())) == want and len(want) > 10
    base = _lsh(sigs, threshold, range(60))[0]
    qi, bj = mh.lsh_candidates(sigs[50:], bands, rows, base=sigs[:60])
    assert set(zip(qi.tolist(), bj.tolist())) == {(q, o) for q, m in enumerate(sketches[50:]) for o in base.query(m)}


def test_near_pairs_keep_candidates_at_the_threshold():
    sigs = _edited_corpus(seed=2)
    i, j, score = mh.near_pairs(sigs, 0.8)
    sketches = [MinHash(num_perm=128, hashvalues=s, scheme="affine32") for s in sigs]
    assert len(i) > 5 and np.all(score >= 0.8)
    assert score.tolist() == [sketches[a].jaccard(sketches[b]) for a, b in zip(i, j)]
    bands, rows = mh.optimal_bands(0.8, 128)
    ci, cj = mh.lsh_candidates(sigs, bands, rows)
    want = {(a, b) for a, b in zip(ci.tolist(), cj.tolist()) if sketches[a].jaccard(sketches[b]) >= 0.8}
    assert set(zip(i.tolist(), j.tolist())) == want
    empty = np.full((2, 128), kernels.MINHASH_EMPTY, dtype=np.uint32)
    assert len(mh.near_pairs(empty, 0.8)[0]) == 0
