"""Conversation stage functions on real manifests: takedown at the filter, scores cached by content."""

from __future__ import annotations

import json

from trainset import manifest, schemas
from trainset.conversations import readers, sources, stages


def _read(tmp_path):
    path = tmp_path / "chat.jsonl"
    rows = [
        {"id": "a", "messages": [{"role": "user", "content": "How do I keep basil alive on a windowsill?"},
                                 {"role": "assistant", "content": "Give basil six hours of sun and water it when the top of the soil is dry."}]},
        {"id": "b", "messages": [{"role": "user", "content": "What is a good first houseplant for a dark flat?"},
                                 {"role": "assistant", "content": "A snake plant or a ZZ plant copes with low light and needs little water."}]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    source = sources.as_dict(readers.ConversationSource(name="chat", path=path, shape="openai", license="CC0-1.0"))
    out, rejected = tmp_path / "read.parquet", tmp_path / "read.rejected.parquet"
    stages.read(source, out, rejected)
    return out


def test_taken_down_conversations_are_rejected_and_scores_are_reused(tmp_path):
    read = _read(tmp_path)
    shas = dict(zip(*manifest.read(read, schemas.CONVERSATIONS)[["id", "sha256"]].T.values))
    paths = {k: tmp_path / f"{k}.parquet" for k in ("kept", "scores", "rejected")}
    first = stages.filter_conversations([read], paths["kept"], paths["scores"], paths["rejected"], {}, tmp_path / "cache",
                                        takedown={shas["chat:a"]})
    assert (first["taken_down"], first["scored"], first["kept"]) == (1, 1, 1)
    rejected = manifest.read(paths["rejected"], schemas.CONVERSATIONS_REJECTED).set_index("id")
    assert (rejected.at["chat:a", "stage"], rejected.at["chat:a", "rule"]) == ("filter", "takedown")
    again = stages.filter_conversations([read], paths["kept"], paths["scores"], paths["rejected"], {}, tmp_path / "cache")
    assert (again["taken_down"], again["scored"], again["scores_reused"], again["kept"]) == (0, 1, 1, 2)


def _conversations(ids):
    return manifest.empty(schemas.CONVERSATIONS_KEPT).reindex(range(len(ids))).assign(id=ids, sha256=[f"sha-{i}" for i in ids])


def _deal(tmp_path, ids, size=2):
    from trainset.conversations import shards

    written = {}
    index = shards.deal(_conversations(ids), tmp_path / "filtered", tmp_path / "index.json", tmp_path / "map.parquet", size,
                        write=lambda rows, path: written.setdefault(path.stem, sorted(rows["id"])))
    return index, written


def test_conversation_shards_are_stable_and_new_ones_fill_the_last(tmp_path):
    first, dealt = _deal(tmp_path, ["a", "b", "c"])
    assert dealt == {"00000": ["a", "b"], "00001": ["c"]}
    second, dealt = _deal(tmp_path, ["0-new", "a", "b", "c", "d", "e"])  # sorts first, still dealt last
    assert dealt == {"00000": ["a", "b"], "00001": ["0-new", "c"], "00002": ["d", "e"]}
    assert second["00000"] == first["00000"] and second["00001"] != first["00001"]
    _, dealt = _deal(tmp_path, ["a", "b", "c"], size=3)  # another size deals everything out again
    assert dealt == {"00000": ["a", "b", "c"]}
