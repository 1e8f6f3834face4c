"""Curriculum stages: crossover and hard rules, tier-weighted seeded sampling, shortfall report."""

from __future__ import annotations

import pandas as pd
import pytest

from trainset.conversations import curriculum


def _item(cid: str, category: str = "general", tier: str = "default", edge: bool = False, rejected: str | None = None,
          source: str = "src") -> dict:
    return {"id": cid, "source": source, "category": category, "tier": tier, "is_training_edge_case": edge,
            "rejected_reply": rejected, "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}


def _items(n: int, prefix: str, **kw) -> list[dict]:
    return [_item(f"{prefix}:{k}", **kw) for k in range(n)]


def _train(df: pd.DataFrame) -> pd.Series:
    return pd.Series(["train"] * len(df), index=df.index)


def _mixed() -> pd.DataFrame:
    return pd.DataFrame(
        _items(120, "gen") + _items(60, "why", category="reasoning") + _items(60, "talk", category="counseling")
        + _items(40, "edge", category="edge_case", edge=True) + _items(30, "odd", category="general", edge=True)
        + _items(30, "safe", category="safety", rejected="A harmful reply.")
    )


def test_hard_rules_hold_whatever_the_crossover_says():
    df = _mixed()
    stage, table = curriculum.assign(df, _train(df), {"size": 200}, seed=1)
    flagged = df["is_training_edge_case"]
    dpo = df["rejected_reply"].notna()
    taken = stage["stage"] != curriculum.UNSELECTED
    assert set(stage.loc[flagged & taken, "stage"]) == {"edge_cases"}  # "odd" is general but flagged
    assert (stage.loc[flagged, "stage"].isin(["edge_cases", curriculum.UNSELECTED])).all()
    assert set(stage.loc[~flagged & taken, "stage"]) <= {"foundation", "reasoning", "voice", "safety_dpo"}
    assert set(stage.loc[dpo & taken, "stage"]) == {"safety_dpo"}
    assert set(df.loc[stage["stage"] == "safety_dpo", "id"].str.split(":").str[0]) == {"safe"}
    crossover = curriculum.DEFAULT_CROSSOVER
    for row, st in zip(df.itertuples(), stage["stage"]):
        if st != curriculum.UNSELECTED and not row.is_training_edge_case:
            assert st in crossover[row.category]
    assert table["selected"].sum() == taken.sum()


def test_a_dpo_pair_in_a_category_without_a_dpo_stage_is_unselected_with_the_reason():
    df = pd.DataFrame([_item("gen:pair", rejected="worse"), _item("edge:pair", category="edge_case", edge=True, rejected="worse"),
                       _item("safe:plain", category="safety")])
    stage, _ = curriculum.assign(df, _train(df), {}, seed=0)
    assert (stage["stage"] == curriculum.UNSELECTED).all()
    reasons = stage["reason"].tolist()
    assert reasons[0] == "category 'general' enters ['foundation', 'reasoning', 'voice'], none of which takes a DPO pair"
    assert "edge case" in reasons[1] and "DPO pair" in reasons[1]
    assert reasons[2].endswith("none of which takes a conversation without a rejected reply")


def test_a_category_without_a_rule_is_an_error_naming_it_unless_a_default_is_set():
    df = pd.DataFrame(_items(5, "gen") + _items(3, "poem", category="poetry") + _items(2, "x", category="poetry", edge=True))
    with pytest.raises(curriculum.CurriculumError, match=r"no rule for categories \['poetry'\]"):
        curriculum.assign(df, _train(df), {}, seed=0)
    stage, _ = curriculum.assign(df, _train(df), {"default_stages": ["voice"], "size": 100}, seed=0)
    assert stage.loc[df["category"] == "poetry", "stage"].tolist() == ["voice"] * 3 + ["edge_cases"] * 2


@pytest.mark.parametrize("params, words", [
    ({"stages": [{"name": "a", "share": 0.5}, {"name": "b", "share": 0.4}]}, "sum to 1"),
    ({"stages": [{"name": "a", "share": 1.0}], "crossover": {"general": ["b"]}}, "unknown stages \\['b'\\]"),
    ({"stages": [{"name": "a", "share": 1.0, "format": "kto"}]}, "format"),
    ({"stages": [{"name": "a", "share": 1.0}], "crossover": {"general": ["a"]}, "tier_weights": {"gold": 1}}, "no weight for tiers \\['default'\\]"),
    ({"size": -3}, "size"),
])
def test_bad_params_are_named(params, words):
    df = pd.DataFrame(_items(3, "gen"))
    with pytest.raises(curriculum.CurriculumError, match=words):
        curriculum.assign(df, _train(df), params, seed=0)


def test_the_same_seed_gives_the_same_sample_and_another_seed_another():
    df = _mixed()
    one, _ = curriculum.assign(df, _train(df), {"size": 150}, seed=4)
    again, _ = curriculum.assign(df.iloc[::-1], _train(df.iloc[::-1]), {"size": 150}, seed=4)
    other, _ = curriculum.assign(df, _train(df), {"size": 150}, seed=5)
    assert one["stage"].tolist() == again.loc[one.index, "stage"].tolist()  # row order plays no part
    assert one["stage"].tolist() != other["stage"].tolist()
    assert one["stage"].value_counts().to_dict() == other["stage"].value_counts().to_dict()


def test_higher_tiers_are_picked_more_often():
    df = pd.DataFrame(_items(300, "g", tier="gold") + _items(300, "b", tier="bronze"))
    params = {"stages": [{"name": "a", "share": 1.0}], "crossover": {"general": ["a"]}, "size": 150}
    stage, _ = curriculum.assign(df, _train(df), params, seed=2)
    picked = df.loc[stage["stage"] == "a", "tier"].value_counts()
    assert picked.sum() == 150
    assert picked["gold"] > 2.5 * picked["bronze"]  # weights 3 vs 0.5: about 123 vs 27
    even, _ = curriculum.assign(df, _train(df), {**params, "tier_weights": {"gold": 1, "bronze": 1}}, seed=2)
    assert abs(df.loc[even["stage"] == "a", "tier"].value_counts()["gold"] - 75) < 25


def test_a_tier_weighted_zero_is_never_sampled():
    df = pd.DataFrame(_items(20, "g", tier="gold") + _items(20, "b", tier="bronze"))
    params = {"stages": [{"name": "a", "share": 1.0}], "crossover": {"general": ["a"]}, "tier_weights": {"gold": 1, "bronze": 0}}
    stage, table = curriculum.assign(df, _train(df), params, seed=0)
    assert set(df.loc[stage["stage"] == "a", "tier"]) == {"gold"}
    assert set(stage.loc[df["tier"] == "bronze", "reason"]) == {"tier 'bronze' has weight 0"}
    assert table.loc[0, "target_count"] == 20  # size null: the items some stage can take


def test_targets_follow_the_shares_and_add_up_to_size():
    p = curriculum.plan({})
    assert curriculum.targets(p, 1000) == {"foundation": 400, "reasoning": 200, "edge_cases": 200, "voice": 150, "safety_dpo": 50}
    assert sum(curriculum.targets(p, 333).values()) == 333
    assert curriculum.formats({}) == {"foundation": "messages", "reasoning": "messages", "edge_cases": "messages",
                                      "voice": "messages", "safety_dpo": "dpo"}


def test_a_stage_with_too_few_items_says_by_how_much():
    df = pd.DataFrame(_items(400, "gen") + _items(100, "why", category="reasoning") + _items(200, "edge", category="edge_case", edge=True)
                      + _items(60, "talk", category="counseling") + _items(50, "safe", category="safety", rejected="no"))
    params = {"crossover": {**curriculum.DEFAULT_CROSSOVER, "general": ["foundation", "reasoning"], "counseling": ["voice"]}, "size": 1000}
    stage, table = curriculum.assign(df, _train(df), params, seed=3)
    voice = table.set_index("stage").loc["voice"]
    assert (voice["target_count"], voice["available"], voice["selected"], voice["shortfall"]) == (150, 60, 60, 90)
    total = table["selected"].sum()
    assert voice["achieved_share"] == pytest.approx(60 / total)
    assert voice["shortfall_points"] == pytest.approx((0.15 - 60 / total) * 100)
    notes = curriculum.shortfalls(table)
    assert any(n.startswith("stage voice cannot reach its share: 60 of 150 items (90 short)") for n in notes)
    full = table.set_index("stage").loc["edge_cases"]
    assert (full["selected"], full["shortfall"]) == (200, 0) and pd.isna(full["note"])


def test_a_scarce_stage_borrows_second_choices_once_first_choices_run_out():
    df = pd.DataFrame(_items(300, "gen") + _items(20, "why", category="reasoning"))
    params = {"stages": [{"name": "foundation", "share": 0.5}, {"name": "reasoning", "share": 0.5}],
              "crossover": {"general": ["foundation", "reasoning"], "reasoning": ["reasoning", "foundation"]}, "size": 200}
    stage, table = curriculum.assign(df, _train(df), params, seed=0)
    got = stage["stage"]
    assert (got[df["category"] == "reasoning"] == "reasoning").all()  # first choices first
    assert table.set_index("stage")["selected"].to_dict() == {"foundation": 100, "reasoning": 100}
    left = stage.loc[got == curriculum.UNSELECTED, "reason"]
    assert set(left) == {"stages foundation, reasoning reached their targets (100, 100)"}


def test_eval_items_get_their_first_stage_without_sampling():
    df = pd.DataFrame(_items(50, "gen") + _items(10, "talk", category="counseling") + _items(5, "safe", category="safety", rejected="no")
                      + [_item("gen:gone")])
    side = pd.Series(["train"] * 40 + ["eval"] * 10 + ["eval"] * 10 + ["eval"] * 5 + ["contaminated"])
    stage, table = curriculum.assign(df, side, {"size": 10}, seed=0)
    assert stage["stage"][40:50].eq("foundation").all() and stage["stage"][50:60].eq("voice").all()
    assert stage["stage"][60:65].eq("safety_dpo").all()
    assert (stage.iloc[-1]["stage"], stage.iloc[-1]["reason"]) == (curriculum.UNSELECTED, "split is contaminated")
    assert table.set_index("stage")["eval"].to_dict() == {"foundation": 10, "reasoning": 0, "edge_cases": 0, "voice": 10, "safety_dpo": 5}
    # targets 4/2/2/2/0 of 10; the 40 general train items cannot fill edge_cases
    assert table.set_index("stage")["selected"].to_dict() == {"foundation": 4, "reasoning": 2, "edge_cases": 0, "voice": 2, "safety_dpo": 0}


def test_overflow_keep_puts_leftovers_in_their_first_stage_and_loses_nothing():
    df = pd.DataFrame(_items(300, "gen") + _items(20, "why", category="reasoning") + _items(5, "edge", category="edge_case", edge=True))
    params = {"stages": [{"name": "foundation", "share": 0.5}, {"name": "reasoning", "share": 0.3}, {"name": "edge_cases", "share": 0.2}],
              "crossover": {"general": ["foundation", "reasoning"], "reasoning": ["reasoning"], "edge_case": ["edge_cases"]}}
    dropped, _ = curriculum.assign(df, _train(df), params, seed=0)
    assert (dropped["stage"] == curriculum.UNSELECTED).sum() > 0
    kept, table = curriculum.assign(df, _train(df), {**params, "overflow": "keep"}, seed=0)
    assert not (kept["stage"] == curriculum.UNSELECTED).any()
    # what the shares had taken is unchanged; the rest went to each item's first choice
    taken = dropped["stage"] != curriculum.UNSELECTED
    assert (kept.loc[taken, "stage"] == dropped.loc[taken, "stage"]).all()
    assert (kept.loc[~taken, "stage"] == "foundation").all()
    rows = table.set_index("stage")
    assert rows.at["foundation", "achieved_share"] > 0.5 and rows.at["edge_cases", "shortfall"] > 0
    with pytest.raises(curriculum.CurriculumError, match="overflow"):
        curriculum.plan({"overflow": "spill"})
