"""Conversation readers (trainset.conversations): every shape and file type, bad records named, one schema."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trainset import manifest, schemas
from trainset.conversations.canonical import Roles, UnknownRole, canonical_text, content_sha256
from trainset.conversations.readers import ConversationSource, read


def _source(path: Path, shape: str, **kw) -> ConversationSource:
    return ConversationSource(name=kw.pop("name", "src"), path=path, shape=shape, license="CC-BY-4.0", **kw)


def _jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines), encoding="utf-8")
    return path


def test_openai_jsonl_with_bad_lines_named_and_the_rest_kept(tmp_path):
    path = _jsonl(tmp_path / "chat.jsonl", [
        {"id": "a1", "messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "I feel low."},
                                  {"role": "assistant", "content": "I'm sorry to hear that. What happened?"}]},
        '{"messages": [{"role": "user", "content": "cut off',  # a truncated line
        {"messages": [{"role": "narrator", "content": "Once upon a time"}]},
        {"messages": [{"role": "user", "content": "   "}, {"role": "assistant", "content": "ok"}]},
        "",
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]},
    ])
    got, bad = read(_source(path, "openai"))
    assert [c["id"] for c in got] == ["src:a1", "src:6"]  # the original id, else the line
    assert got[0]["messages"][0] == {"role": "system", "content": "Be kind."}
    assert [(r.line, r.reason.split(" (")[0]) for r in bad] == [
        (2, "bad JSON"), (3, "unknown speaker 'narrator'"), (4, "'content' is empty")]
    assert all(r.file == str(path) and r.source == "src" for r in bad)


def test_sharegpt_json_roles_normalized(tmp_path):
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps([
        {"id": "x", "conversations": [{"from": "human", "value": "What is CBT?"}, {"from": "gpt", "value": "A talking therapy."}]},
        {"id": "y", "conversations": [{"from": "patient", "value": "I can't sleep."}, {"from": "counselor", "value": "Tell me more."}]},
    ]))
    got, bad = read(_source(path, "sharegpt"))
    assert not bad
    assert [[m["role"] for m in c["messages"]] for c in got] == [["user", "assistant"], ["user", "assistant"]]


def test_alpaca_with_and_without_input(tmp_path):
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps({"data": [
        {"instruction": "Summarize the note.", "input": "Client slept 4 hours.", "output": "Poor sleep."},
        {"instruction": "Name a coping skill.", "input": "", "output": "Box breathing."},
        {"instruction": "No answer here."},
    ]}))
    got, bad = read(_source(path, "alpaca"))
    assert got[0]["messages"][0]["content"] == "Summarize the note.\n\nClient slept 4 hours."
    assert got[1]["messages"] == [{"role": "user", "content": "Name a coping skill."}, {"role": "assistant", "content": "Box breathing."}]
    assert [(r.line, r.reason) for r in bad] == [(3, "no 'output' field")]


def test_qa_csv_shaped_like_counsel_chat_with_newlines_large_fields_and_a_broken_row(tmp_path):
    path = tmp_path / "counsel.csv"
    big = "I keep worrying. " * 20_000  # ~340 kB in one field
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["questionID", "questionTitle", "questionText", "answerText", "upvotes"])
        writer.writerow(["0", "Sleep", "How do I sleep better?\nI wake at 3am.", "Keep a regular schedule.\n\nAvoid screens.", "3"])
        writer.writerow(["1", "Worry", big, "Try scheduled worry time.", "1"])
        fh.write('2,"Broken","only three fields"\n')
        writer.writerow(["3", "Empty", "Is anyone there?", "", "0"])
    source = _source(path, "qa", columns={"question": "questionText", "answer": "answerText", "id": "questionID"})
    got, bad = read(source)
    assert [c["id"] for c in got] == ["src:0", "src:1"]
    assert got[0]["messages"][0]["content"] == "How do I sleep better?\nI wake at 3am."
    assert got[1]["messages"][0]["content"] == big
    # the line each record starts on: the first spans lines 2-5, the big one is line 6
    assert [(r.line, r.reason) for r in bad] == [(7, "3 fields where the header has 5"), (8, "'answerText' is empty")]


def test_transcripts_shaped_like_annomi_grouped_ordered_and_merged(tmp_path):
    path = tmp_path / "annomi.csv"
    rows = [  # out of order on purpose; the client speaks twice in a row
        ("0", "2", "client", "I drink on weekends."),
        ("0", "0", "therapist", "Thanks for coming in."),
        ("0", "1", "client", "Sure."),
        ("0", "3", "therapist", "How much on a typical weekend?"),
        ("1", "0", "therapist", "What brings you here?"),
        ("1", "1", "client", "My doctor sent me."),
        ("2", "x", "client", "no order"),
    ]
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["transcript_id", "utterance_id", "interlocutor", "utterance_text"])
        writer.writerows(rows)
    source = _source(path, "transcript", columns={"key": "transcript_id", "order": "utterance_id", "role": "interlocutor", "text": "utterance_text"})
    got, bad = read(source)
    first = next(c for c in got if c["id"] == "src:0")
    assert first["messages"] == [
        {"role": "assistant", "content": "Thanks for coming in."},
        {"role": "user", "content": "Sure.\nI drink on weekends."},
        {"role": "assistant", "content": "How much on a typical weekend?"},
    ]
    assert {c["id"] for c in got} == {"src:0", "src:1"}
    assert [(r.line, r.reason) for r in bad] == [(8, "'utterance_id' is not a number: 'x'")]


def test_dpo_parquet(tmp_path):
    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"prompt": ["I failed my exam.", "Hi"], "chosen": ["That sounds hard. Want to talk?", "Hello!"],
                             "rejected": ["Study harder.", None]}), path)
    got, bad = read(_source(path, "dpo"))
    assert got[0]["messages"][1]["content"] == "That sounds hard. Want to talk?" and got[0]["rejected_reply"] == "Study harder."
    assert [(r.line, r.reason) for r in bad] == [(2, "no 'rejected' field")]


def test_conversations_pass_the_schema_and_round_trip(tmp_path):
    path = _jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}])
    got, _ = read(_source(path, "openai", tier="gold", category="counseling", edge_case=True))
    out = tmp_path / "conversations.parquet"
    manifest.write(pd.DataFrame(got), out, schemas.CONVERSATIONS, sort_by="id")
    back = manifest.read(out, schemas.CONVERSATIONS)
    row = back.iloc[0]
    assert row["tier"] == "gold" and row["is_training_edge_case"] and list(row["messages"])[1]["content"] == "Hello"
    bad = pd.DataFrame(got)
    bad.at[0, "messages"] = [{"role": "robot", "content": "x"}]
    with pytest.raises(manifest.ManifestError, match="messages"):
        manifest.write(bad, tmp_path / "bad.parquet", schemas.CONVERSATIONS, sort_by="id")


def test_canonical_form_ignores_roles_names_unicode_and_whitespace_but_not_case_unless_asked():
    roles = Roles.from_params()
    a = [{"role": roles("Human"), "content": "I\u00a0feel   ﬁne.\n"}, {"role": roles("GPT"), "content": "Good."}]
    b = [{"role": "user", "content": "I feel fine."}, {"role": "assistant", "content": " Good. "}]
    assert canonical_text(a) == canonical_text(b) == '[["user","I feel fine."],["assistant","Good."]]'
    upper = [{"role": "user", "content": "I FEEL FINE."}, {"role": "assistant", "content": "GOOD."}]
    assert content_sha256(upper) != content_sha256(b)
    assert content_sha256(upper, casefold=True) == content_sha256(b, casefold=True)


def test_roles_are_configurable():
    roles = Roles.from_params({"user": ["seeker_2"], "assistant": "coach"})
    assert roles("Seeker_2") == "user" and roles("coach") == "assistant" and roles("client") == "user"
    with pytest.raises(UnknownRole, match="conversations.roles"):
        roles("narrator")
    with pytest.raises(ValueError, match="unknown role 'moderator'"):
        Roles.from_params({"moderator": ["mod"]})


def test_sharegpt_keys_remapped_for_an_esconv_shaped_dialog(tmp_path):
    path = tmp_path / "esconv.json"
    path.write_text(json.dumps([{"emotion_type": "anxiety", "dialog": [
        {"speaker": "seeker", "annotation": {}, "content": "I can't focus at work.\n"},
        {"speaker": "supporter", "annotation": {"strategy": "Question"}, "content": "What's on your mind?"},
    ]}]))
    source = _source(path, "sharegpt", columns={"conversations": "dialog", "from": "speaker", "value": "content"}, edge_case=True)
    got, bad = read(source)
    assert not bad and got[0]["is_training_edge_case"]
    assert [m["role"] for m in got[0]["messages"]] == ["user", "assistant"]


def test_a_speakers_consecutive_messages_are_one_turn(tmp_path):
    path = _jsonl(tmp_path / "chat.jsonl", [{"messages": [
        {"role": "user", "content": "Hey there\n"}, {"role": "user", "content": "How are you?"},
        {"role": "assistant", "content": "hi"}]}])
    got, _ = read(_source(path, "openai"))
    assert got[0]["messages"] == [{"role": "user", "content": "Hey there\nHow are you?"}, {"role": "assistant", "content": "hi"}]


def test_unreadable_files_are_rejected_by_name_and_the_other_files_go_on(tmp_path):
    folder = tmp_path / "chats"
    folder.mkdir()
    _jsonl(folder / "a_good.jsonl", [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}])
    (folder / "b_broken.json").write_text('[{"messages": [')
    (folder / "c_latin1.jsonl").write_bytes(
        json.dumps({"messages": [{"role": "user", "content": "ok"}, {"role": "assistant", "content": "fine"}]}).encode() + b"\n"
        + '{"messages": "caf\xe9"}\n'.encode("latin-1"))
    (folder / "d_not.parquet").write_bytes(b"not parquet at all")
    got, bad = read(_source(folder, "openai"))
    # a folder's positions name their file: a_good line 1, and c's first line
    assert sorted(c["id"] for c in got) == ["src:a_good.jsonl:1", "src:c_latin1.jsonl:1"]
    by_file = {Path(r.file).name: (r.line, r.reason) for r in bad}
    assert set(by_file) == {"b_broken.json", "c_latin1.jsonl", "d_not.parquet"}
    assert by_file["b_broken.json"][0] == 0 and "JSONDecodeError" in by_file["b_broken.json"][1]
    assert by_file["c_latin1.jsonl"] == (2, "not UTF-8 text")  # that line only
    assert by_file["d_not.parquet"][0] == 0 and by_file["d_not.parquet"][1].startswith("unreadable from here on")


def test_a_csv_row_that_is_not_utf8_is_rejected_alone(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_bytes(b"q,a\nHow do I rest?,Sleep early.\n" + "Caf\xe9?,Yes.\n".encode("latin-1") + b"Why?,Because.\n")
    got, bad = read(_source(path, "qa", columns={"question": "q", "answer": "a"}))
    assert [c["id"] for c in got] == ["src:2", "src:4"]
    assert [(r.line, r.reason) for r in bad] == [(3, "not UTF-8 text")]


def test_groups_come_from_the_group_column_a_transcript_or_the_item_itself(tmp_path):
    path = tmp_path / "counsel.csv"
    pd.DataFrame({
        "questionID": ["q1", "q1", "q2"], "answerID": ["a", "b", "c"],
        "questionText": ["I can't sleep.", "I can't sleep.", "My partner ignores me."],
        "answerText": ["Sleep is hard when worried.", "What keeps you up?", "That sounds lonely."],
    }).to_csv(path, index=False)
    grouped, _ = read(_source(path, "qa", columns={"question": "questionText", "answer": "answerText", "id": "answerID", "group": "questionID"}))
    assert [(c["id"], c["group"]) for c in grouped] == [("src:a", "src:q1"), ("src:b", "src:q1"), ("src:c", "src:q2")]
    alone, _ = read(_source(path, "qa", columns={"question": "questionText", "answer": "answerText", "id": "answerID"}))
    assert [c["group"] for c in alone] == ["src:a", "src:b", "src:c"]


def test_edge_case_flag_comes_from_params_and_rows_only_where_the_source_trusts_them(tmp_path):
    path = _jsonl(tmp_path / "edge.jsonl", [
        {"messages": [{"role": "user", "content": "I want to end it all."}, {"role": "assistant", "content": "I'm here. Are you safe?"}],
         "edge": True},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}], "edge": "no"},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}], "edge": "maybe"},
    ])
    untrusted, _ = read(_source(path, "openai"))  # a row saying edge: true changes nothing
    assert [c["is_training_edge_case"] for c in untrusted] == [False, False, False]
    trusted, bad = read(_source(path, "openai", edge_case_column="edge"))
    assert [c["is_training_edge_case"] for c in trusted] == [True, False]
    assert [(r.line, r.reason) for r in bad] == [(3, "'edge' is 'maybe', not true or false")]
    whole, _ = read(_source(path, "openai", edge_case=True))
    assert all(c["is_training_edge_case"] for c in whole)
