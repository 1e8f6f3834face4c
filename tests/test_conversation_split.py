"""Grouped train/eval split of conversations: groups kept whole, stable under new batches,
eval-only sources, per-source shares, and decontamination against eval items."""

from __future__ import annotations

import hashlib

import pandas as pd
import pytest

from trainset.conversations import split


def _conv(cid: str, source: str, group: str | None = None, prompt: str | None = None, answer: str = "An answer.") -> dict:
    prompt = prompt or f"A question that belongs to {cid} and nobody else."
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    return {"id": cid, "source": source, "group": group, "messages": messages,
            "sha256": hashlib.sha256(f"{prompt}\0{answer}".encode()).hexdigest()}


def _threads(source: str, n_groups: int, start: int = 0, sizes=(1, 2, 3, 5)) -> list[dict]:
    rows = []
    for g in range(start, start + n_groups):
        for k in range(sizes[g % len(sizes)]):
            rows.append(_conv(f"{source}:{g}-{k}", source, group=f"{source}/thread-{g}"))
    return rows


def test_a_group_never_straddles_the_split():
    df = pd.DataFrame(_threads("forum", 300) + _threads("annomi", 120))
    side = split.assign(df, 0.2, seed=7)
    assert set(side) == {"train", "eval"}
    assert side.groupby(df["group"]).nunique().max() == 1
    assert split.leakage(df, side) == []


def test_leakage_names_the_groups_on_both_sides():
    df = pd.DataFrame(_threads("forum", 4, sizes=(2,)))
    side = pd.Series(["train", "eval", "train", "train", "eval", "eval", "train", "train"])
    assert split.leakage(df, side) == ["forum/thread-0"]
    assert split.leakage(df.assign(split=side)) == ["forum/thread-0"]


def test_rows_without_a_group_are_their_own_group():
    df = pd.DataFrame([_conv("a:1", "a"), _conv("a:2", "a", group="")])
    assert list(split.groups_of(df)) == ["a:1", "a:2"]


def test_a_new_batch_moves_no_old_item():
    old = pd.DataFrame(_threads("forum", 200))
    before = split.assign(old, 0.15, seed=3, min_eval_groups=0)
    batch = _threads("forum", 150, start=200) + _threads("qa", 80)
    batch += [_conv("forum:late-reply", "forum", group="forum/thread-5")]  # a reply to an old thread
    grown = pd.concat([old, pd.DataFrame(batch)], ignore_index=True)
    after = split.assign(grown, 0.15, seed=3)
    assert after.iloc[: len(old)].tolist() == before.tolist()
    joined = grown.index[grown["id"] == "forum:late-reply"][0]
    assert after[joined] == before[old.index[old["group"] == "forum/thread-5"][0]]


def test_each_large_source_gets_eval_near_its_share():
    df = pd.DataFrame(_threads("a", 400) + _threads("b", 400) + _threads("c", 400, sizes=(1,)))
    side = split.assign(df, 0.15, seed=11)
    shares = split.source_shares(df, side, 0.15)
    assert shares["groups"].tolist() == [400, 400, 400]
    assert (shares["eval_share"] - 0.15).abs().max() < 0.06
    assert not shares["off_share"].any()
    assert shares["eval_items"].sum() == (side == "eval").sum()


def test_source_shares_flags_a_source_far_off_its_share():
    df = pd.DataFrame(_threads("a", 100, sizes=(1,)))
    all_train = pd.Series(["train"] * len(df))
    assert split.source_shares(df, all_train, 0.3)["off_share"].tolist() == [True]


def test_eval_only_source_goes_whole_to_eval_with_the_groups_it_touches():
    rows = _threads("forum", 100) + _threads("bench", 30)
    rows.append(_conv("forum:quoted", "forum", group="bench/thread-2"))  # a forum post in a benchmark's group
    df = pd.DataFrame(rows)
    side = split.assign(df, 0.1, seed=5, eval_only=["bench"])
    assert (side[df["source"] == "bench"] == "eval").all()
    assert side[df.index[df["id"] == "forum:quoted"][0]] == "eval"
    assert 0 < (side[df["source"] == "forum"] == "eval").mean() < 0.3
    assert split.source_shares(df, side, 0.1, eval_only=["bench"]).set_index("source").loc["bench", "eval_share"] == 1.0


def test_the_seed_changes_the_split_and_the_same_seed_repeats_it():
    df = pd.DataFrame(_threads("forum", 200))
    assert split.assign(df, 0.2, seed=1).tolist() == split.assign(df, 0.2, seed=1).tolist()
    assert split.assign(df, 0.2, seed=1).tolist() != split.assign(df, 0.2, seed=2).tolist()


def test_min_eval_groups_tops_up_small_sources_with_their_lowest_hash_groups():
    df = pd.DataFrame(_threads("tiny", 6) + _threads("one", 1))
    assert (split.assign(df, 0.0, seed=9) == "train").all()
    side = split.assign(df, 0.0, seed=9, min_eval_groups=2)
    tiny = df["source"] == "tiny"
    lowest = sorted({g for g in df.loc[tiny, "group"]}, key=lambda g: split.position(g, 9))[:2]
    assert sorted(set(df.loc[tiny & (side == "eval"), "group"])) == sorted(lowest)
    assert (side[df["source"] == "one"] == "train").all()  # too few groups to give any away


@pytest.mark.parametrize("share", [-0.1, 1.5, "lots", None])
def test_a_bad_eval_share_is_an_error(share):
    with pytest.raises(split.SplitError, match="eval_share"):
        split.assign(pd.DataFrame(_threads("a", 3)), share, seed=0)


def _bench_and_train() -> pd.DataFrame:
    question = "What are three grounding techniques for a panic attack on a train?"
    return pd.DataFrame([
        _conv("bench:1", "bench", prompt=question, answer="Breathe, name five things, hold something cold."),
        _conv("bench:2", "bench", prompt="Hi", answer="Hello."),
        _conv("bench:3", "bench", prompt="How do I tell my manager I am burnt out without sounding weak?"),
        _conv("forum:copy", "forum", prompt=question, answer="Breathe, name five things, hold something cold."),
        _conv("forum:same-q", "forum", prompt="  what are three grounding techniques for a PANIC attack on a train? ",
              answer="Another answer entirely."),
        _conv("forum:hi", "forum", prompt="Hi", answer="Hey there."),
        _conv("forum:clean", "forum", prompt="How long should a CBT homework sheet take?"),
    ])


def test_training_items_repeating_an_eval_item_are_found_and_dropped():
    df = _bench_and_train()
    side, found = split.run(df, {"eval_share": 0.0, "eval_only": ["bench"]}, seed=1)
    assert found.to_dict("records") == [
        {"id": "forum:copy", "matched_id": "bench:1", "reason": "same content as an eval item"},
        {"id": "forum:same-q", "matched_id": "bench:1", "reason": "same prompt as an eval item"},
    ]
    assert dict(zip(df["id"], side)) == {
        "bench:1": "eval", "bench:2": "eval", "bench:3": "eval", "forum:copy": "contaminated",
        "forum:same-q": "contaminated", "forum:hi": "train", "forum:clean": "train"}


def test_decontamination_hooks_add_findings_and_report_only_mode_keeps_items():
    df = _bench_and_train()

    def near_duplicates(train: pd.DataFrame, held: pd.DataFrame) -> pd.DataFrame:
        assert set(held["source"]) == {"bench"} and "forum:clean" in set(train["id"])
        return pd.DataFrame([{"id": "forum:clean", "matched_id": "bench:3", "reason": "embedding near-duplicate"}])

    side, found = split.run(df, {"eval_share": 0.0, "eval_only": ["bench"], "drop_contaminated": False}, seed=1, hooks=[near_duplicates])
    assert found.set_index("id")["reason"].to_dict() == {
        "forum:clean": "embedding near-duplicate", "forum:copy": "same content as an eval item",
        "forum:same-q": "same prompt as an eval item"}
    assert (side[df["source"] == "forum"] == "train").all()


def test_prompt_text_ignores_system_and_the_final_reply():
    messages = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "I  feel\nLOW"},
                {"role": "assistant", "content": "Why?"}, {"role": "user", "content": "Work."},
                {"role": "assistant", "content": "Tell me more."}]
    assert split.prompt_text(messages) == "i feel low why? work."
