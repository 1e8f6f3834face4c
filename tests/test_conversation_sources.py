"""Conversation sources and evaluation sets from params: checked once, the demo's first, typos named."""

from __future__ import annotations

import pytest

from trainset.config import ConfigError
from trainset.conversations import demo, readers, sources, structure


def test_demo_sources_come_first_and_user_sources_resolve_from_the_repo(tmp_path):
    params = {"conversations": {"demo": True, "roles": {"user": ["caller"]}, "sources": [
        {"name": "calls", "path": "raw/calls.jsonl", "shape": "openai", "license": "CC-BY-4.0", "tier": "gold",
         "category": "counseling", "edge_case": "true"}]}}
    found = sources.sources_from_params(params, tmp_path)
    assert [s.name for s in found][:len(demo.SOURCES)] == [e["name"] for e in demo.SOURCES]
    calls = found[-1]
    assert calls.path == tmp_path / "raw/calls.jsonl" and calls.edge_case is True and calls.tier == "gold"
    assert calls.roles("Caller") == "user" and calls.casefold is True
    assert sources.from_dict(sources.as_dict(calls)) == calls
    assert [s.name for s in sources.eval_sets_from_params(params, tmp_path)] == ["demo_heldout"]


@pytest.mark.parametrize("entry, message", [
    ({"name": "x", "path": "a.csv", "shape": "qa"}, "missing license"),
    ({"name": "x", "path": "a.csv", "shape": "tsv", "license": "MIT"}, "unknown shape 'tsv'"),
    ({"name": "x y", "path": "a.csv", "shape": "qa", "license": "MIT"}, "name may hold only"),
    ({"name": "x", "path": "a.csv", "shape": "qa", "license": "MIT", "edge": True}, "unknown key"),
    ({"name": "x", "path": "a.csv", "shape": "qa", "license": "MIT", "edge_case": "sometimes"}, "edge_case must be true or false"),
    ({"name": "x", "path": "a.csv", "shape": "qa", "license": "MIT", "columns": ["q", "a"]}, "columns must map"),
])
def test_bad_entries_fail_naming_the_entry(entry, message):
    with pytest.raises(ConfigError, match=message):
        sources.sources_from_params({"conversations": {"sources": [entry]}})


def test_source_names_are_unique_and_roles_checked():
    entry = {"name": "demo_general", "path": "a.jsonl", "shape": "openai", "license": "MIT"}
    with pytest.raises(ConfigError, match="repeated: demo_general"):
        sources.sources_from_params({"conversations": {"demo": True, "sources": [entry]}})
    with pytest.raises(ConfigError, match="share a name: mine"):
        sources.eval_sets_from_params({"conversations": {"sources": [{**entry, "name": "mine"}],
                                                         "decontaminate": [{**entry, "name": "mine"}]}})
    with pytest.raises(ConfigError, match="unknown role 'moderator'"):
        sources.sources_from_params({"conversations": {"roles": {"moderator": ["mod"]}, "sources": [entry]}})


def test_demo_files_read_with_exactly_the_planted_problems(tmp_path):
    demo.materialize(tmp_path / demo.DEMO_PATH)
    params = {"conversations": {"demo": True}}
    found = {s.name: readers.read(s) for s in sources.sources_from_params(params, tmp_path) + sources.eval_sets_from_params(params, tmp_path)}
    counts = {name: (len(got), len(bad)) for name, (got, bad) in found.items()}
    assert counts == {"demo_general": (22, 2), "demo_voice": (8, 0), "demo_reasoning": (14, 1), "demo_counseling": (10, 1),
                      "demo_sessions": (3, 0), "demo_safety": (6, 0), "demo_edge_cases": (6, 0), "demo_heldout": (3, 0)}
    general, bad = found["demo_general"]
    assert [r.line for r in bad] == [4, 8] and "unknown speaker 'narrator'" in bad[1].reason
    sessions = {c["id"]: structure.problems(c["messages"]) for c in found["demo_sessions"][0]}
    assert sessions == {"demo_sessions:s1": [], "demo_sessions:s2": [], "demo_sessions:s3": ["ends_with_user"]}
    counseling = found["demo_counseling"][0]
    assert sum(c["group"] == "demo_counseling:q1" for c in counseling) == 2
    # the ShareGPT copy of a general item has the same canonical hash
    by_id = {c["id"]: c["sha256"] for got, _ in found.values() for c in got}
    assert by_id["demo_voice:v08"] == by_id["demo_general:g03"]
    assert by_id["demo_heldout:h01"] == by_id["demo_general:g20"]
    assert all(c["is_training_edge_case"] for c in found["demo_edge_cases"][0])
    assert not any(c["is_training_edge_case"] for c in general)
    # two materializations are byte-identical
    again = tmp_path / "again"
    demo.materialize(again)
    for path in (tmp_path / demo.DEMO_PATH).rglob("*"):
        if path.is_file():
            assert (again / path.relative_to(tmp_path / demo.DEMO_PATH)).read_bytes() == path.read_bytes(), path.name
