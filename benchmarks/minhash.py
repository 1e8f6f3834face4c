"""MinHash signatures of counsel-chat answers: datasketch 2.0 against trainset, same shingles.

    python benchmarks/minhash.py                  # NumPy backend (numba kernel), 5 interleaved passes
    python benchmarks/minhash.py --backend cupy   # adds a row for the CuPy kernel when a GPU works

Reads the ``answerText`` column of counsel-chat (``20200325_counsel_chat.csv`` under
``$TRAINSET_CORPORA/counsel-chat``, default ``/work/shared/corpora``), turns every answer into its
canonical text and word 5-gram shingles (``trainset.conversations.minhash``) once, then times, in
the same process and interleaved pass by pass (best and median of ``--passes``):

* datasketch: ``MinHash(num_perm=128, seed=1)`` per answer, ``update_batch(shingles)``, as its docs do;
* datasketch, shared permutations: the same, built with ``permutations=`` of one MinHash
  (no per-answer RandomState), its fastest use;
* trainset: ``signatures_of_shingles`` over all answers (the compiled SHA-1,
  ``kernels.sha1_hash32_batch``, then ``kernels.minhash_signatures``, the numba kernel, on all
  threads), on one thread, and with one ``hashlib.sha1`` call per shingle instead;
* trainset from text: ``signatures`` of the canonical texts (shingling included);
* trainset blockwise (NumPy): ``kernels.minhash_blockwise``, the CuPy path's code on the CPU;
* trainset CuPy (``--backend cupy`` on a GPU): ``minhash_signatures`` on the device.

Every trainset signature is checked against datasketch's, value for value. Prints a Markdown
table (docs/s and the speed-up over plain datasketch); exits 1 if any signature differs.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numba
import numpy as np
from datasketch import MinHash

from trainset import kernels
from trainset.conversations import minhash as mh

CSV_NAME = "20200325_counsel_chat.csv"


def corpus_path() -> Path:
    root = Path(os.environ.get("TRAINSET_CORPORA", "/work/shared/corpora"))
    return root / "counsel-chat" / CSV_NAME


def answers(path: Path) -> list[str]:
    csv.field_size_limit(sys.maxsize)
    with path.open(newline="", encoding="utf-8") as f:
        rows = [row["answerText"] for row in csv.DictReader(f)]
    return [mh.conversation_text({"messages": [{"role": "assistant", "content": text or ""}]}) for text in rows]


def datasketch_plain(shingle_lists, num_perm: int, seed: int) -> np.ndarray:
    out = []
    for shingles in shingle_lists:
        m = MinHash(num_perm=num_perm, seed=seed)
        m.update_batch(shingles)
        out.append(m.hashvalues)
    return np.array(out)


def datasketch_shared(shingle_lists, num_perm: int, seed: int) -> np.ndarray:
    perms = MinHash(num_perm=num_perm, seed=seed).permutations
    out = []
    for shingles in shingle_lists:
        m = MinHash(num_perm=num_perm, seed=seed, permutations=perms, scheme="affine32")
        m.update_batch(shingles)
        out.append(m.hashvalues)
    return np.array(out)


def runners(texts, shingle_lists, args, be):
    p, s = args.num_perm, args.seed

    def ours(threads=None, backend=kernels.HOST, blockwise=False, method="numba"):
        def run():
            hashes, offsets = mh.shingle_hashes(shingle_lists, method=method)
            if blockwise:
                return kernels.minhash_blockwise(hashes, offsets, p, s, be=backend)
            return kernels.minhash_signatures(hashes, offsets, p, s, be=backend, threads=threads)
        return run

    rows = {
        "datasketch": lambda: datasketch_plain(shingle_lists, p, s),
        "datasketch, shared permutations": lambda: datasketch_shared(shingle_lists, p, s),
        f"trainset ({numba.get_num_threads()} threads)": ours(),
        "trainset (1 thread)": ours(threads=1),
        "trainset, hashlib SHA-1": ours(method="hashlib"),
        "trainset from text": lambda: mh.signatures(texts, args.shingle, p, s, be=kernels.HOST),
        "trainset blockwise (NumPy)": ours(blockwise=True),
    }
    if be is not None:
        rows["trainset CuPy"] = ours(backend=be)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("numpy", "cupy"), default="numpy")
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--num-perm", type=int, default=128)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--shingle", type=int, default=5)
    parser.add_argument("--csv", type=Path, default=None, help=f"counsel-chat CSV (default: {corpus_path()})")
    args = parser.parse_args()

    be = None
    if args.backend == "cupy":
        found = kernels.backend()
        if found.name == "cupy":
            be = found
        else:
            print(f"no CuPy row: {found.why}", file=sys.stderr)
    texts = answers(args.csv or corpus_path())
    shingle_lists = [mh.shingles(t, args.shingle) for t in texts]
    n, total = len(texts), sum(map(len, shingle_lists))
    want = datasketch_plain(shingle_lists, args.num_perm, args.seed)
    times: dict[str, list[float]] = {}
    bad = []
    rows = runners(texts, shingle_lists, args, be)
    for name, run in rows.items():  # warm-up: numba compile / cache load, and the parity check
        got = run()
        if not np.array_equal(np.asarray(got, dtype=np.uint64), want.astype(np.uint64)):
            bad.append(name)
    for _ in range(args.passes):
        for name, run in rows.items():
            start = time.perf_counter()
            run()
            times.setdefault(name, []).append(time.perf_counter() - start)

    print(f"counsel-chat answers: {n:,} docs, {total:,} shingles ({args.shingle}-word), num_perm={args.num_perm}, "
          f"seed={args.seed}, scheme affine32")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"NumPy {np.__version__}, numba {numba.__version__}, load average {os.getloadavg()[0]:.1f}; "
          f"best and median of {args.passes} interleaved passes\n")
    base = min(times["datasketch"])
    print("| implementation | best s | median s | docs/s (best) | vs datasketch | identical |")
    print("|:---|---:|---:|---:|---:|:---:|")
    for name, ts in times.items():
        best = min(ts)
        print(f"| {name} | {best:.3f} | {statistics.median(ts):.3f} | {n / best:,.0f} | {base / best:.2f}x | "
              f"{'no' if name in bad else 'yes'} |")
    if bad:
        print(f"\nsignatures differ from datasketch: {', '.join(bad)}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
