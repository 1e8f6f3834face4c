"""Brute-force vs multi-index-hashing Hamming pair search on random 64-bit hashes.

    python benchmarks/pairs.py --quick   # N = 10k, 100k   (~5 min on a 2-core CPU, NumPy)
    python benchmarks/pairs.py           # N = 10k, 100k, 1M  (brute force at 1M takes hours on a CPU)

For each N and t (4 and 10): draw N random hashes, overwrite 5 % of them with near copies of others
(0-12 random bits flipped) and 0.1 % with exact copies, then time in this process

* brute: ``kernels.hamming_pairs`` on the active array backend (``TRAINSET_BACKEND`` picks it), with
  the block size ``near_pairs`` uses for that backend;
* MIH:   ``kernels.mih_pairs`` (host, NumPy),

check that both return identical ``(i, j, distance)`` arrays, and print a Markdown table. The last
column says which kernel ``near_pairs`` would pick for that input. Exits 1 if any result differs.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time

import numpy as np

from trainset import kernels


def planted_hashes(n: int, seed: int, near: float = 0.05, exact: float = 0.001, max_flip: int = 12) -> np.ndarray:
    rng = np.random.default_rng(seed)
    h = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    n_near, n_exact = int(n * near), int(n * exact)
    src = rng.integers(0, n, size=n_near + n_exact)
    dst = rng.integers(0, n, size=n_near + n_exact)
    flips = np.zeros(n_near + n_exact, dtype=np.uint64)
    for k in range(n_near):  # near copies: k random distinct bits
        for bit in rng.choice(64, size=int(rng.integers(0, max_flip + 1)), replace=False):
            flips[k] |= np.uint64(1) << np.uint64(bit)
    h[dst] = h[src] ^ flips
    return h


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 10k and 100k only (no 1M)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    sizes = [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]
    thresholds = [4, 10]

    be = kernels.backend()
    print(f"# {cpu_model()}, {os.cpu_count()} CPU(s); Python {platform.python_version()}, "
          f"NumPy {np.__version__}; brute-force backend: {be.name} ({be.why})", flush=True)
    print()
    print("| N | t | pairs | brute s | MIH s | speed-up | identical | near_pairs picks |")
    print("|---:|---:|---:|---:|---:|---:|:---:|:---:|", flush=True)
    ok = True
    for n in sizes:
        hashes = planted_hashes(n, args.seed + n)
        block = max(1, min(2048, kernels.BRUTE_BLOCK_ELEMENTS.get(be.name, 1 << 20) // n))
        for t in thresholds:
            start = time.perf_counter()
            brute = kernels.hamming_pairs(hashes, t, block=block, be=be)
            brute_s = time.perf_counter() - start
            start = time.perf_counter()
            mih = kernels.mih_pairs(hashes, t)
            mih_s = time.perf_counter() - start
            same = all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(brute, mih))
            ok &= same
            picks = kernels.pair_method(hashes, t)
            print(f"| {n:,} | {t} | {len(brute[0]):,} | {brute_s:.2f} | {mih_s:.2f} | {brute_s / mih_s:.1f}x "
                  f"| {'yes' if same else 'NO'} | {picks} |", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
