"""Conversation dedup (exact, near, semantic) with its incremental index, and decontamination.

The semantic stage runs the real all-MiniLM-L6-v2 (offline; loaded once for the module).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from trainset import atomic
from trainset.conversations import dedup as dd
from trainset.conversations.embed import TextEncoder

QUESTIONS = {
    "sleep": "I have been feeling really anxious at work lately and I cannot sleep at night. What should I do?",
    "money": "My partner and I keep arguing about money. How do we stop fighting all the time?",
    "coming-out": "How do I tell my parents that I am gay? I am scared of how they will react.",
    "grief": "My father died six months ago and I still cry every day. Is something wrong with me?",
    "friends": "I moved to a new city for work and I have no friends here. How do people make friends as adults?",
}
ANSWERS = {
    "sleep": "It sounds like work stress is keeping your mind busy at night. Anxiety often follows us home, and "
             "lying awake going over the day is one of the most common ways it shows up. Try a short wind-down "
             "routine before bed and write your worries down an hour before you turn off the light, then close "
             "the notebook: the point is to tell your mind that the list is safe until the morning. If this keeps "
             "happening for several weeks, a counselor can help you find out what is underneath it.",
    "money": "Couples often fight about money because money stands for safety, fairness and control. Pick a calm "
             "moment, not the middle of an argument, and take turns saying what money meant in the homes you grew "
             "up in. Then set a regular time each week, twenty minutes is enough, to go through the budget "
             "together, and agree to listen before you answer. Many couples find that the weekly talk takes the "
             "heat out of the rest of the week.",
    "coming-out": "There is no single right way to come out, and you get to choose the time and the place. Many "
                  "people start with the parent they trust the most, or write a letter so they can say everything "
                  "without being interrupted. Make sure you have a friend you can call afterwards and, if you live "
                  "with your parents, think about where you could stay for a few days if things go badly. Their "
                  "first reaction is often not their last one.",
    "grief": "Nothing is wrong with you. Grief has no timetable, and six months is not a long time after losing a "
             "parent. Crying every day is a sign of how much he mattered to you. It can help to set aside a "
             "little time each day to remember him on purpose, to look at photographs or to write to him, so "
             "that the grief has a place to go. If you stop being able to work, eat or sleep, please talk to "
             "your doctor or a grief counselor.",
    "friends": "Making friends as an adult takes longer than it did at school, because we no longer see the same "
               "people every day by default. Choose one or two activities that meet every week, a climbing gym, "
               "a choir, a volunteer group, and keep going even when the first evenings feel awkward. Friendship "
               "grows from repeated contact. After a few weeks, suggest a coffee with one person you liked.",
}
PARAPHRASED_SLEEP = (
    "Lately I feel very anxious at my job and I can't sleep at night. What can I do?",
    "It seems stress from your job keeps your mind busy at night. Anxiety tends to follow us home, and lying "
    "awake replaying the day is one of the most common ways it appears. Try a brief wind-down routine before "
    "going to bed and jot down your worries an hour before you switch off the light, then shut the notebook: "
    "the idea is to tell your mind the list is safe until morning. If it keeps going on for a few weeks, a "
    "counselor can help you discover what lies beneath it.",
)


def conv(cid: str, question: str, answer: str) -> dict:
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"id": cid, "messages": messages, "source": "test"}


def base(topic: str, cid: str | None = None) -> dict:
    return conv(cid or topic, QUESTIONS[topic], ANSWERS[topic])


def exact_copy(topic: str, cid: str) -> dict:
    """Differs only in case and whitespace: the same canonical SHA-256 once case is folded."""
    return conv(cid, "  " + QUESTIONS[topic].upper(), ANSWERS[topic].replace(". ", ".\n\n"))


def near_copy(topic: str, cid: str) -> dict:
    answer = ANSWERS[topic].replace("often", "usually", 1).replace(",", "", 1)
    return conv(cid, QUESTIONS[topic], answer)


class CountingEncoder:
    """The real encoder, counting the texts it is asked to embed."""

    def __init__(self):
        self.inner = TextEncoder()
        self.texts: list[str] = []

    def encode(self, texts):
        self.texts.extend(texts)
        return self.inner.encode(texts)


@pytest.fixture(scope="module")
def warm_model():
    TextEncoder().encode(["warm up"])  # loads the model once for the module


@pytest.fixture
def encoder(warm_model):
    return CountingEncoder()


SETTINGS = dd.DedupSettings.from_params({
    "casefold": True, "near": {"enabled": True, "shingle": 5, "num_perm": 128, "threshold": 0.8, "seed": 1},
    "semantic": {"enabled": True, "threshold": 0.95},
})


def rejected_map(result) -> dict[str, tuple[str, str]]:
    return {row.id: (row.rule, row.duplicate_of) for row in result.rejected.itertuples()}


def test_settings_from_params():
    assert dd.DedupSettings.from_params(None) == dd.DedupSettings()
    assert SETTINGS == dd.DedupSettings()
    custom = dd.DedupSettings.from_params({"near": {"threshold": 0.7, "num_perm": 64}, "semantic": {"enabled": False}})
    assert custom.near.threshold == 0.7 and custom.near.num_perm == 64 and custom.near.shingle == 5
    assert not custom.semantic.enabled and custom.signature_key()["num_perm"] == 64
    with pytest.raises(ValueError, match="unknown keys"):
        dd.DedupSettings.from_params({"near": {"treshold": 0.7}})
    with pytest.raises(ValueError, match="threshold"):
        dd.DedupSettings.from_params({"semantic": {"threshold": 1.5}})


def test_one_batch_exact_then_near_then_semantic(tmp_path, encoder):
    batch = [base(t) for t in QUESTIONS] + [
        exact_copy("money", "money-copy"), near_copy("grief", "grief-edit"), conv("sleep-paraphrase", *PARAPHRASED_SLEEP)]
    result = dd.dedup(batch, tmp_path / "index", SETTINGS, encoder=encoder)
    assert [c["id"] for c in result.kept] == list(QUESTIONS)
    assert rejected_map(result) == {"money-copy": ("exact", "money"), "grief-edit": ("near", "grief"),
                                    "sleep-paraphrase": ("semantic", "sleep")}
    assert list(result.rejected.columns) == ["id", "stage", "rule", "reason", "duplicate_of"]
    assert set(result.rejected["stage"]) == {"dedup"}
    reasons = dict(zip(result.rejected["id"], result.rejected["reason"]))
    assert re.fullmatch(r"near duplicate of grief: estimated Jaccard 0\.(8|9)\d\d >= 0\.8", reasons["grief-edit"])
    assert re.fullmatch(r"semantic duplicate of sleep: cosine 0\.9[5-9]\d >= 0\.95", reasons["sleep-paraphrase"])
    stats = result.stats
    assert (stats["exact"], stats["near"], stats["semantic"], stats["kept"]) == (1, 1, 1, 5)
    assert stats["signatures_computed"] == 8 and stats["embeddings_computed"] == 8


def test_second_batch_is_checked_against_the_first_without_recomputing_it(tmp_path, encoder):
    index = tmp_path / "index"
    first = dd.dedup([base("sleep"), base("money"), base("grief")], index, SETTINGS, encoder=encoder)
    assert first.stats["new"] == 3 and len(encoder.texts) == 3
    encoder.texts.clear()
    second_batch = [near_copy("money", "money-edit"), base("friends"), conv("sleep-paraphrase", *PARAPHRASED_SLEEP),
                    exact_copy("grief", "grief-copy"), exact_copy("friends", "friends-copy")]
    second = dd.dedup(second_batch, index, SETTINGS, encoder=encoder)
    assert rejected_map(second) == {"money-edit": ("near", "money"), "sleep-paraphrase": ("semantic", "sleep"),
                                    "grief-copy": ("exact", "grief"), "friends-copy": ("exact", "friends")}
    assert [c["id"] for c in second.kept] == ["friends"]
    stats = second.stats
    assert (stats["new"], stats["known"], stats["index_size"]) == (5, 0, 8)
    assert (stats["signatures_computed"], stats["signatures_reused"]) == (5, 0)
    assert stats["embeddings_computed"] == 5 and len(encoder.texts) == 5  # the old three were not embedded again
    stored = dd.DedupIndex.load(index)
    assert stored.items["id"].tolist()[:3] == ["sleep", "money", "grief"]
    assert stored.items["order"].tolist() == list(range(8))
    assert stored.signatures.shape == (8, 128) and stored.embeddings.shape == (8, 384)


def test_earliest_seen_wins_and_old_items_stay_kept(tmp_path, encoder):
    index = tmp_path / "index"
    dd.dedup([base("money")], index, SETTINGS, encoder=encoder)
    # the old item comes last in the new batch, its copy first: the old one is still the kept copy
    result = dd.dedup([exact_copy("money", "money-copy"), base("grief"), base("money")], index, SETTINGS, encoder=encoder)
    assert [c["id"] for c in result.kept] == ["grief", "money"]
    assert rejected_map(result) == {"money-copy": ("exact", "money")}
    # within one batch, input order decides
    within = dd.dedup([near_copy("sleep", "sleep-edit"), base("sleep")], None, SETTINGS, encoder=encoder)
    assert rejected_map(within) == {"sleep": ("near", "sleep-edit")}


def test_rerun_is_idempotent_and_computes_nothing(tmp_path, encoder):
    index = tmp_path / "index"
    batch = [base("sleep"), exact_copy("sleep", "sleep-copy"), base("money"), near_copy("money", "money-edit")]
    first = dd.dedup(batch, index, SETTINGS, encoder=encoder)
    stamp = (index / "items.parquet").stat().st_mtime_ns
    encoder.texts.clear()
    again = dd.dedup(batch, index, SETTINGS, encoder=encoder)
    assert [c["id"] for c in again.kept] == [c["id"] for c in first.kept] == ["sleep", "money"]
    assert again.rejected.equals(first.rejected)
    assert (again.stats["known"], again.stats["signatures_computed"], again.stats["embeddings_computed"]) == (4, 0, 0)
    assert again.stats["signatures_reused"] == 4 and again.stats["embeddings_reused"] == 4 and not encoder.texts
    assert (index / "items.parquet").stat().st_mtime_ns == stamp  # not rewritten


def test_changed_content_is_resigned_and_its_duplicates_decided_again(tmp_path, encoder):
    index = tmp_path / "index"
    dd.dedup([base("grief"), near_copy("grief", "grief-edit"), base("money")], index, SETTINGS, encoder=encoder)
    changed = base("friends", cid="grief")  # same id, new content
    result = dd.dedup([changed, near_copy("grief", "grief-edit"), base("money")], index, SETTINGS, encoder=encoder)
    assert result.stats["changed"] == 1 and result.stats["signatures_computed"] == 1
    assert result.stats["embeddings_computed"] == 1
    assert [c["id"] for c in result.kept] == ["grief", "grief-edit", "money"]  # its old near copy is now the only one


def test_new_signature_settings_resign_the_whole_index_from_its_text(tmp_path, encoder):
    index = tmp_path / "index"
    dd.dedup([base(t) for t in QUESTIONS], index, SETTINGS, encoder=encoder)
    other = dd.DedupSettings.from_params({"near": {"num_perm": 64}})
    result = dd.dedup([near_copy("money", "money-edit")], index, other, encoder=encoder)
    assert result.stats["signatures_computed"] == 6 and result.stats["embeddings_computed"] == 1
    assert rejected_map(result) == {"money-edit": ("near", "money")}
    assert dd.DedupIndex.load(index).signatures.shape == (6, 64)


def test_semantic_off_needs_no_encoder(tmp_path):
    class Refuses:
        def encode(self, texts):
            raise AssertionError("semantic dedup is off")

    settings = dd.DedupSettings.from_params({"semantic": {"enabled": False}})
    result = dd.dedup([base("sleep"), conv("sleep-paraphrase", *PARAPHRASED_SLEEP)], tmp_path / "i", settings,
                      encoder=Refuses())
    assert len(result.kept) == 2 and "embeddings_computed" not in result.stats


def test_repeated_ids_in_a_batch_are_refused():
    with pytest.raises(ValueError, match="unique"):
        dd.dedup([base("sleep"), base("money", cid="sleep")], None, dd.DedupSettings.from_params({"semantic": {"enabled": False}}))


NEAR_ONLY = dd.DedupSettings.from_params({"semantic": {"enabled": False}})


def _write_first_index(index: Path) -> dd.DedupIndex:
    dd.dedup([base("sleep"), base("money")], index, NEAR_ONLY)
    return dd.DedupIndex.load(index)


def test_a_run_killed_mid_write_leaves_the_previous_index(tmp_path):
    index = tmp_path / "index"
    before = _write_first_index(index)
    script = textwrap.dedent(f"""
        import os, signal
        import numpy as np
        from trainset.conversations import dedup as dd

        real_save = np.save
        def dying_save(path, array):
            with open(path, "wb") as f:
                f.write(b"\\x93NUMPY partial")
            os.kill(os.getpid(), signal.SIGKILL)
        np.save = dying_save
        conv = {{"id": "new", "messages": [{{"role": "user", "content": "a brand new question about work"}}]}}
        dd.dedup([conv], {str(index)!r}, dd.DedupSettings.from_params({{"semantic": {{"enabled": False}}}}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, env={**os.environ, "PYTHONPATH": "src"})
    assert proc.returncode == -9, proc.stderr.decode()
    after = dd.DedupIndex.load(index)
    assert after.items["id"].tolist() == before.items["id"].tolist() == ["sleep", "money"]
    assert np.array_equal(after.signatures, before.signatures)
    result = dd.dedup([near_copy("money", "money-edit")], index, NEAR_ONLY)
    assert rejected_map(result) == {"money-edit": ("near", "money")}
    assert not list(tmp_path.glob(".index.*.tmp"))  # the next write cleared what the killed one left


def test_a_write_interrupted_between_the_renames_is_recovered(tmp_path, monkeypatch):
    index = tmp_path / "index"
    _write_first_index(index)
    real_replace, calls = atomic.os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the old index moved aside, the new one not yet in place
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        dd.dedup([base("grief")], index, NEAR_ONLY)
    monkeypatch.undo()
    assert not index.exists()
    assert dd.DedupIndex.load(index).items["id"].tolist() == ["sleep", "money"]
    result = dd.dedup([base("grief"), exact_copy("sleep", "sleep-copy")], index, NEAR_ONLY)
    assert rejected_map(result) == {"sleep-copy": ("exact", "sleep")}
    assert dd.DedupIndex.load(index).items["id"].tolist() == ["sleep", "money", "grief", "sleep-copy"]


def test_decontamination_rejects_copies_of_eval_items():
    evals = {"counsel-eval": [base("grief", cid="eval-grief")], "held-out": [base("friends", cid="eval-friends"),
                                                                             base("money", cid="eval-money")]}
    batch = [base("sleep"), exact_copy("grief", "grief-copy"), near_copy("money", "money-edit"), base("coming-out")]
    result = dd.decontaminate(batch, evals, NEAR_ONLY)
    assert [c["id"] for c in result.kept] == ["sleep", "coming-out"]
    rows = {r.id: r for r in result.rejected.itertuples()}
    assert set(rows) == {"grief-copy", "money-edit"} and set(result.rejected["rule"]) == {"contaminates"}
    assert rows["grief-copy"].duplicate_of == "eval-grief" and "counsel-eval" in rows["grief-copy"].reason
    assert rows["money-edit"].duplicate_of == "eval-money" and "held-out" in rows["money-edit"].reason
    assert "Jaccard" in rows["money-edit"].reason
    assert result.stats["by_eval_set"] == {"counsel-eval": 1, "held-out": 1}


def _signed_ahead(tmp_path, parts, settings=SETTINGS) -> dd.Signatures:
    """Each part signed as one shard job signs it, written and read back as dedup reads them."""
    paths = []
    for k, part in enumerate(parts):
        paths.append(tmp_path / f"shard-{k}.npz")
        dd.write_signatures(dd.sign(part, settings), paths[-1])
    return dd.read_signatures(paths, settings)


MIXED = [base(t) for t in QUESTIONS] + [
    exact_copy("money", "money-copy"), near_copy("grief", "grief-edit"), conv("sleep-paraphrase", *PARAPHRASED_SLEEP)]


def test_signatures_made_per_shard_equal_the_ones_dedup_computes(tmp_path, encoder):
    made = _signed_ahead(tmp_path, [MIXED[:3], MIXED[3:]])
    assert made.ids.tolist() == [c["id"] for c in MIXED] and made.values.dtype == np.uint32
    dd.dedup(MIXED, tmp_path / "own", SETTINGS, encoder=encoder)
    own = dd.DedupIndex.load(tmp_path / "own")
    at = made.rows(own.items["exact"].tolist())
    assert (at >= 0).all()
    np.testing.assert_array_equal(made.values[at], own.signatures)


def test_dedup_with_signatures_made_ahead_decides_and_counts_as_without(tmp_path, encoder):
    without = dd.dedup(MIXED, tmp_path / "without", SETTINGS, encoder=encoder)
    for name, parts in (("all", [MIXED[:4], MIXED[4:]]), ("some", [MIXED[:2]])):  # "some": the rest computed here
        made = _signed_ahead(tmp_path / name, parts)
        ahead = dd.dedup(MIXED, tmp_path / name / "index", SETTINGS, encoder=encoder, signatures=made)
        assert [c["id"] for c in ahead.kept] == [c["id"] for c in without.kept]
        assert ahead.rejected.equals(without.rejected) and ahead.stats == without.stats
        np.testing.assert_array_equal(dd.DedupIndex.load(tmp_path / name / "index").signatures,
                                      dd.DedupIndex.load(tmp_path / "without").signatures)


def test_signatures_made_under_other_settings_are_not_used(tmp_path, monkeypatch):
    other = dd.DedupSettings.from_params({"near": {"num_perm": 64}})
    dd.write_signatures(dd.sign(MIXED, other), tmp_path / "other.npz")
    assert len(dd.read_signatures([tmp_path / "other.npz"], SETTINGS).ids) == 0
    made = _signed_ahead(tmp_path, [MIXED])
    calls = []
    real = dd._sign
    monkeypatch.setattr(dd, "_sign", lambda texts, *a, **k: calls.append(len(texts)) or real(texts, *a, **k))
    dd.dedup(MIXED, None, dd.DedupSettings.from_params({"semantic": {"enabled": False}}), signatures=made)
    assert calls == []  # every signature looked up, none computed


def test_decontamination_with_signatures_made_ahead_matches_without():
    evals = {"heldout": [base("grief", "h-grief")]}
    batch = [near_copy("grief", "grief-edit"), base("money"), exact_copy("grief", "grief-copy")]
    without = dd.decontaminate(batch, evals, SETTINGS)
    ahead = dd.decontaminate(batch, evals, SETTINGS, signatures=dd.sign(batch, SETTINGS))
    assert set(without.rejected["id"]) == {"grief-edit", "grief-copy"}
    assert ahead.rejected.equals(without.rejected) and ahead.stats == without.stats
