"""Hamming pair search kernels on random 64-bit hashes: compiled brute force, blockwise brute force,
multi-index hashing; identical pairs from all of them.

    python benchmarks/pairs.py --quick        # N = 10k, 100k   (~6 min on a 2-core CPU, most of it SWAR)
    python benchmarks/pairs.py                # N = 10k, 100k, 1M (blockwise rows only up to 100k)
    python benchmarks/pairs.py --crossover    # where multi-index hashing beats the compiled brute force
    python benchmarks/pairs.py --backend cupy # on a GPU: RawKernel and CuPy blockwise vs the host kernel

For each N and t (4 and 10): draw N random hashes, overwrite 5 % of them with near copies of others
(0-12 random bits flipped) and 0.1 % with exact copies, then time in this process (best of 3 up to
N = 10k, once above),

* numba:    ``kernels.hamming_pairs`` on the host (compiled kernel, numba's thread count or ``--threads``);
* MIH:      ``kernels.mih_pairs`` (host);
* bitwise_count: blockwise brute force with ``np.bitwise_count``, block of ~2^20 distances;
* SWAR:     ``kernels.blockwise_pairs`` on NumPy (the CuPy path's code), same blocks;

check that all return identical ``(i, j, distance)`` arrays, and print a Markdown table; the
last column marks the kernel ``near_pairs`` would pick. ``--crossover`` sweeps N and t (and a cross
search, ``near_pairs_between``) for the dispatch thresholds. ``--backend cupy`` times ``cuda_pairs``
(the RawKernel) and ``blockwise_pairs`` on CuPy, checks them and the matrix-DCT pHash on the device
against the host, and prints the parity table. Exits 1 if any result differs.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time

import numba
import numpy as np

from trainset import kernels
from trainset.kernels import HOST

BLOCK_ELEMENTS = 1 << 20


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


def bitwise_count_pairs(hashes: np.ndarray, t: int, block: int):
    """Blockwise brute force with NumPy's popcount ufunc (upper triangle)."""
    out_i, out_j, out_d = [], [], []
    for start in range(0, len(hashes), block):
        stop = min(start + block, len(hashes))
        dist = np.bitwise_count(hashes[start:stop, None] ^ hashes[None, start:])
        rr, cc = np.nonzero((dist <= t) & (np.arange(len(hashes) - start)[None, :] > np.arange(stop - start)[:, None]))
        out_i.append(rr + start)
        out_j.append(cc + start)
        out_d.append(dist[rr, cc])
    i, j, d = (np.concatenate(a).astype(np.int64) for a in (out_i, out_j, out_d))
    order = np.lexsort((j, i))
    return i[order], j[order], d[order]


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown CPU"


def timed(fn, *args, repeat: int = 1, **kwargs):
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        best = min(best, time.perf_counter() - start)
    return result, best


def same(a, b) -> bool:
    return all(np.array_equal(x, y) and x.dtype == y.dtype for x, y in zip(a, b))


def header(threads: int) -> None:
    be = kernels.backend()
    print(f"# {cpu_model()}, {os.cpu_count()} CPU(s), numba threads {threads}; Python {platform.python_version()}, "
          f"NumPy {np.__version__}, numba {numba.__version__}; array backend: {be.name} ({be.why})", flush=True)
    print()


def warm_up(threads: int) -> None:
    """Compile the numba kernels before anything is timed."""
    h = planted_hashes(64, 0)
    kernels.hamming_pairs(h, 4, be=HOST, threads=threads)
    kernels.hamming_pairs(h[:8], 4, be=HOST, threads=threads, base=h)


def table(sizes: list[int], threads: int, seed: int, blockwise_max: int) -> bool:
    print("| N | t | pairs | kernel | s | vs numba | identical | near_pairs |")
    print("|---:|---:|---:|:---|---:|---:|:---:|:---:|", flush=True)
    ok = True
    for n in sizes:
        hashes = planted_hashes(n, seed + n)
        block = max(1, min(2048, BLOCK_ELEMENTS // n))
        for t in (4, 10):
            runs = {"numba": lambda: kernels.hamming_pairs(hashes, t, be=HOST, threads=threads),
                    "MIH": lambda: kernels.mih_pairs(hashes, t, threads=threads)}
            if n <= blockwise_max:
                runs["bitwise_count"] = lambda: bitwise_count_pairs(hashes, t, block)
                runs["SWAR"] = lambda: kernels.blockwise_pairs(hashes, t, block=block, be=HOST)
            picks = {"mih": "MIH", "brute": "numba"}[kernels.pair_method(hashes, t)]
            results = {name: timed(fn, repeat=3 if n <= 10_000 else 1) for name, fn in runs.items()}
            (want, base_s) = results["numba"]
            for name, (got, seconds) in results.items():
                match = same(got, want)
                ok &= match
                print(f"| {n:,} | {t} | {len(want[0]):,} | {name} | {seconds:.3f} | {seconds / base_s:.2f}x "
                      f"| {'yes' if match else 'NO'} | {'picked' if name == picks else ''} |", flush=True)
    return ok


def crossover(threads: int, seed: int) -> bool:
    print("| N query | N base | t | MIH candidates / brute distances | numba s | MIH s | faster | near_pairs |")
    print("|---:|---:|---:|---:|---:|---:|:---:|:---:|", flush=True)
    ok = True
    cases = [(n, None) for n in (2_000, 5_000, 10_000, 20_000, 50_000, 100_000)]
    cases += [(1_000, 100_000), (5_000, 100_000), (20_000, 100_000), (100_000, 5_000)]
    for n_query, n_base in cases:
        hashes = planted_hashes(n_query, seed + n_query)
        base = None if n_base is None else planted_hashes(n_base, seed + 7 * n_base)
        comparisons = n_query * (n_query - 1) / 2 if base is None else n_query * n_base
        for t in range(0, 13, 2):
            repeat = 5 if comparisons < 1e9 else 3
            brute, brute_s = timed(kernels.hamming_pairs, hashes, t, be=HOST, threads=threads, base=base, repeat=repeat)
            mih, mih_s = timed(kernels.mih_pairs, hashes, t, base=base, threads=threads, repeat=repeat)
            ok &= same(brute, mih)
            ratio = kernels.mih_candidates(hashes, t, base) / comparisons
            picks = kernels.pair_method(hashes, t, base)
            faster = "MIH" if mih_s < brute_s else "brute"
            print(f"| {n_query:,} | {'' if n_base is None else f'{n_base:,}'} | {t} | {ratio:.4f} | {brute_s:.3f} "
                  f"| {mih_s:.3f} | {faster} | {picks}{'' if picks == faster.lower() else ' (slower)'} |", flush=True)
    return ok


def gpu_parity(sizes: list[int], threads: int, seed: int) -> bool:
    import cupy  # noqa: PLC0415

    gpu = kernels.Backend(cupy, "cupy", "benchmark")
    print(f"GPU: {cupy.cuda.runtime.getDeviceProperties(0)['name'].decode()}, CuPy {cupy.__version__}")
    print()
    print("| N query | N base | t | pairs | kernel | s | identical to host numba |")
    print("|---:|---:|---:|---:|:---|---:|:---:|", flush=True)
    kernels.cuda_pairs(planted_hashes(64, 0), 4)  # compile the RawKernel before timing
    ok = True
    cases = [(n, t) for n in sizes for t in (0, 4, 10)] + [(2_000, 64)]  # t = 64: every pair
    for n, t in cases:
        hashes = planted_hashes(n, seed + n)
        block = max(1, min(2048, kernels.BRUTE_BLOCK_ELEMENTS["cupy"] // n))
        for query, base in ((hashes, None), (hashes[: max(1, n // 10)], hashes)):  # within one set; cross
            want, host_s = timed(kernels.hamming_pairs, query, t, be=HOST, threads=threads, base=base)
            runs = {"numba (host)": (want, host_s),
                    "cuda_pairs": timed(kernels.cuda_pairs, query, t, base=base, capacity=1 << 10),
                    "blockwise_pairs (CuPy)": timed(kernels.blockwise_pairs, query, t, block=block, be=gpu, base=base)}
            for name, (got, seconds) in runs.items():
                match = same(got, want)
                ok &= match
                print(f"| {len(query):,} | {'' if base is None else f'{len(base):,}'} | {t} | {len(want[0]):,} "
                      f"| {name} | {seconds:.3f} | {'yes' if match else 'NO'} |", flush=True)
    rng = np.random.default_rng(seed)
    thumbs = rng.integers(0, 256, size=(20_000, 32, 32), dtype=np.uint8)
    thumbs[:500] = rng.integers(0, 256, size=(500, 1, 1), dtype=np.uint8)  # flat: every AC coefficient ties
    thumbs[500:1000] = rng.integers(0, 256, size=(500, 1, 1), dtype=np.uint8)
    thumbs[500:1000, :, 16:] = 0  # split: two flat halves
    thumbs[1000:1500] = np.kron(rng.integers(0, 256, size=(500, 8, 8), dtype=np.uint8), np.ones((4, 4), np.uint8))
    want, host_s = timed(kernels.phash_batch, thumbs, be=HOST, method="scipy")
    got, gpu_s = timed(kernels.phash_batch, thumbs, be=gpu, method="matrix")
    match = np.array_equal(got, want)
    ok &= match
    print()
    print(f"pHash of {len(thumbs):,} thumbnails (1,500 flat, split or pixel art): scipy on the host {host_s:.3f} s, "
          f"matrix DCT on the GPU with host tie fallback {gpu_s:.3f} s, identical: {'yes' if match else 'NO'}")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 10k and 100k only (no 1M)")
    parser.add_argument("--crossover", action="store_true", help="sweep N and t: compiled brute force vs MIH")
    parser.add_argument("--backend", choices=["numpy", "cupy"], default="numpy",
                        help="cupy: GPU parity and timings of the device kernels against the host")
    parser.add_argument("--threads", type=int, default=numba.get_num_threads(), help="numba threads")
    parser.add_argument("--blockwise-max", type=int, default=100_000, help="largest N for the blockwise rows")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    sizes = [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]
    header(args.threads)
    warm_up(args.threads)
    if args.backend == "cupy":
        ok = gpu_parity(sizes, args.threads, args.seed)
    elif args.crossover:
        ok = crossover(args.threads, args.seed)
    else:
        ok = table(sizes, args.threads, args.seed, args.blockwise_max)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
