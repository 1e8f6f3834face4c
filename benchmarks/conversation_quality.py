"""Conversation quality scores against real labels: AnnoMI's high- vs low-quality MI sessions.

    python benchmarks/conversation_quality.py                     # ../shared/corpora/annomi-mi-counselling
    python benchmarks/conversation_quality.py --csv PATH/AnnoMI-simple.csv --toxicity-model

AnnoMI (Wu et al., ICASSP 2022) holds 133 transcribed motivational-interviewing demonstrations,
each labelled by experts as high (110) or low (23) quality MI. Each transcript becomes one
conversation (therapist -> assistant, client -> user; a speaker's consecutive utterances one
turn), gets every score of ``trainset.conversations.quality.score`` with default settings, and
each score's ROC AUC for "high quality" is printed (0.5: no signal; under 0.5: the score is
higher in the low-quality sessions). The empathy heuristic's inputs are listed on their own, and
two fixed variants of it (documented in the table) beside the default; nothing is fitted to the
labels. The scores are not meant to reproduce the label: a quality filter should at least not
prefer the low-quality sessions.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from trainset.conversations import empathy, quality, safety
from trainset.conversations.embed import TextEncoder

DEFAULT_CSV = Path(__file__).resolve().parents[1].parent / "shared" / "corpora" / "annomi-mi-counselling" / "AnnoMI-simple.csv"
ROLES = {"therapist": "assistant", "client": "user"}


def transcripts(csv: Path) -> tuple[list[dict], dict[str, int]]:
    """AnnoMI rows as conversations, and each transcript's label (1: high-quality MI)."""
    table = pd.read_csv(csv).sort_values(["transcript_id", "utterance_id"])
    conversations, labels = [], {}
    for key, rows in table.groupby("transcript_id", sort=True):
        messages: list[dict] = []
        for speaker, text in zip(rows["interlocutor"], rows["utterance_text"].fillna("")):
            role = ROLES[speaker]
            if messages and messages[-1]["role"] == role:
                messages[-1]["content"] += " " + str(text)
            else:
                messages.append({"role": role, "content": str(text)})
        cid = f"annomi-{key}"
        conversations.append({"id": cid, "messages": messages, "tier": "default", "category": "counselling", "is_training_edge_case": False})
        labels[cid] = int(rows["mi_quality"].iloc[0] == "high")
    return conversations, labels


def empathy_variants(messages: list[dict]) -> dict[str, float]:
    """The default heuristic and two fixed alternatives (no weights learned from the labels)."""
    f = empathy.features(messages)
    s = lambda x: x / (1 + x)  # noqa: E731
    return {
        "empathy: validating + open questions only": 0.5 * s(f["validating"]) + 0.5 * s(f["open_questions"]),
        "empathy: validating - dismissive": s(f["validating"]) - s(f["dismissive"]),
        "empathy input: validating / turn": f["validating"],
        "empathy input: open questions / turn": f["open_questions"],
        "empathy input: dismissive / turn": f["dismissive"],
        "empathy input: you-focus": f["you_focus"],
    }


def safety_counts(messages: list[dict]) -> dict[str, float]:
    hits = safety.scan(messages)
    return {f"{flag} hits ({role})": sum(1 for h in hits if h.flag == flag and h.role == role)
            for flag in safety.FLAGS for role in ("assistant", "user")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV, help="AnnoMI-simple.csv")
    parser.add_argument("--toxicity-model", action="store_true", help="also score with the optional toxicity model")
    args = parser.parse_args(argv)
    if not args.csv.is_file():
        print(f"AnnoMI not found at {args.csv} (pass --csv)", file=sys.stderr)
        return 2
    started = time.perf_counter()
    conversations, labels = transcripts(args.csv)
    params = {"toxicity_model": {"enabled": args.toxicity_model}}
    scores = quality.score(conversations, quality.Settings.from_params(params), TextEncoder()).set_index("id")
    extra = pd.DataFrame({c["id"]: {**empathy_variants(c["messages"]), **safety_counts(c["messages"])} for c in conversations}).T
    table = scores.join(extra)
    table["assistant share of words"] = [
        sum(len(m["content"].split()) for m in c["messages"] if m["role"] == "assistant")
        / max(1, sum(len(m["content"].split()) for m in c["messages"])) for c in conversations
    ]
    table["mean assistant turn words"] = [
        np.mean([len(m["content"].split()) for m in c["messages"] if m["role"] == "assistant"]) for c in conversations
    ]
    y = np.array([labels[i] for i in table.index])
    columns = [
        "empathy", "empathy: validating + open questions only", "empathy: validating - dismissive",
        "empathy input: validating / turn", "empathy input: open questions / turn", "empathy input: dismissive / turn",
        "empathy input: you-focus", "coherence_mean", "coherence_min", "turns", "tokens_total", "tokens_max_message",
        "max_message_chars", "mean assistant turn words", "assistant share of words", "language_confidence",
        *[f"{flag} hits ({role})" for flag in safety.FLAGS for role in ("assistant", "user")],
    ]
    if args.toxicity_model:
        columns.append("toxicity_model")
    print(f"AnnoMI: {len(y)} transcripts, {int(y.sum())} high-quality, {int((1 - y).sum())} low-quality MI\n")
    print("| score | ROC AUC (high vs low) | mean, high | mean, low |")
    print("|---|---|---|---|")
    for column in columns:
        x = table[column].astype(float).to_numpy()
        ok = ~np.isnan(x)
        auc = roc_auc_score(y[ok], x[ok]) if len(set(x[ok])) > 1 else math.nan
        print(f"| {column} | {auc:.3f} | {x[ok & (y == 1)].mean():.3f} | {x[ok & (y == 0)].mean():.3f} |")
    gate = quality.gate(conversations, scores.reset_index(), quality.Settings.from_params(params))
    kept = {c["id"] for c in gate.kept}
    print(f"\nDefault gate: kept {sum(labels[i] for i in kept)}/{int(y.sum())} high and "
          f"{sum(1 - labels[i] for i in kept)}/{int((1 - y).sum())} low; rejections by rule: "
          f"{gate.rejected['rule'].value_counts().to_dict()}")
    print(f"({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
