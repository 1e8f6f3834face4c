"""Near-duplicate engine vs its peers: hashing throughput, pair search, quality on real images.

    python benchmarks/dedup.py --quick   # ~5 min on a 2-core CPU: N = 10k, 100k; a few hundred images
    python benchmarks/dedup.py           # adds N = 1M and larger image sets (an hour or more on 2 cores)

One command measures everything in the same run, prints Markdown tables of ratios and writes the
tables of this run into ``benchmarks/RESULTS.md`` (only between its own markers; ``--out ''``
writes nothing). Install and peers: ``benchmarks/README.md``.

1. Hashing throughput, one process each, on the same 512 px JPEGs (made here in a temp dir from the
   real face corpora): trainset's per-item features (``features.extract_many`` +
   its SHA-256 from the same read), ``imagehash.phash(Image.open(p))``, and two decode floors (open +
   ``draft('L', ...)`` + 32x32 Lanczos, no hash): at the DCT scale trainset decodes
   (``features.ANALYSIS_SIDE``), and at 1/8 scale; then ``features.compute`` on ``--threads``
   processes.
2. Pair search on planted 64-bit hashes (random, plus copies of 10 % of them with 0..t bits
   flipped): ``kernels.near_pairs`` vs FAISS ``IndexBinaryFlat`` range search (same thread count)
   vs imagededup ``PHash().find_duplicates(encoding_map=...)`` (N = 10k only). Pair sets (and
   distances) must be identical; exits 1 if not.
3. Quality on near-duplicates made here from a few hundred real originals (seeded transforms):
   pair precision / recall of pHash alone (``near_dup.max_distance`` from params.yaml) and of
   ``trainset.neardup.detect`` with the shipped ``near_dup`` params, without and with ``mirror``.
4. Pixel art: the Pokémon box sprites of ``pokesprite-pixelart`` (small, mostly
   transparent): pairs pHash alone and the shipped rule find among them, and the share of those
   within one species (forms and recolours of one creature; across species, every pair is a false one).

Corpora: ``$TRAINSET_CORPORA`` (default ``/work/shared/corpora``), read only; everything generated
goes to a temp dir that is removed at the end.
"""

from __future__ import annotations

import _results  # benchmarks/_results.py (the script's folder is on sys.path)
import argparse
import contextlib
import functools
import importlib
import inspect
import logging
import multiprocessing
import os
import platform
import re
import signal
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHIM = HERE / "_imagededup_shim"
CORPORA = Path(os.environ.get("TRAINSET_CORPORA", "/work/shared/corpora"))
ANIME = CORPORA / "anime-faces-moeimouto-jonathonyan"
FACES = CORPORA / "facial-expressions-muxspace" / "images"
SPRITES = CORPORA / "pokesprite-pixelart" / "pokemon-gen8" / "regular"
BEGIN = "<!-- benchmarks/dedup.py: begin (this section is rewritten by every run) -->"
END = "<!-- benchmarks/dedup.py: end -->"

TRANSFORMS = ("resize50", "jpeg40", "crop", "pad", "brightness", "watermark", "mirror")
MIRROR = TRANSFORMS.index("mirror") + 1  # kind 0 is the original
PER_GROUP = len(TRANSFORMS) + 1
MIN_SIDE = 96  # originals smaller than this are skipped (a 50 % copy would be tiny)


@dataclass
class Report:
    """Markdown lines printed as they come, the targets checked, and whether every pair set agreed."""

    lines: list[str] = field(default_factory=list)
    targets: list[tuple[str, str, str, bool | None]] = field(default_factory=list)
    identical: bool = True
    failed: list[str] = field(default_factory=list)

    def __call__(self, line: str = "") -> None:
        self.lines.append(line)
        print(line, flush=True)

    def target(self, what: str, measured: str, goal: str, met: bool | None) -> None:
        self.targets.append((what, measured, goal, met))


def ratio(x: float | None, y: float | None) -> str:
    if not x or not y:
        return "—"
    r = x / y
    return f"{r:.2f}x" if r < 10 else f"{r:.1f}x" if r < 100 else f"{r:,.0f}x"


def with_threads(fn, threads: int):
    """``fn`` given ``threads=`` when it takes that keyword (trainset's API may or may not)."""
    try:
        takes = "threads" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        takes = False
    return functools.partial(fn, threads=threads) if takes else fn


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


# --- machine ---------------------------------------------------------------------------------


cpu_name, total_memory = _results.cpu_name, _results.total_memory


def version(module: str) -> str:
    try:
        return getattr(importlib.import_module(module), "__version__", "?")
    except Exception as exc:  # noqa: BLE001 - a peer that does not import is reported, not fatal
        return f"not importable ({type(exc).__name__})"


def machine_lines(argv: list[str]) -> list[str]:
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    return [
        _results.run_line("benchmarks/dedup.py", argv),
        "",
        f"- Machine: {cpu_name()}, {os.cpu_count()} logical CPU(s), load average at start {load} "
        "(1 / 5 / 15 min; a shared VM: other jobs may run at the same time)",
        f"- Python {platform.python_version()}, NumPy {np.__version__}, Pillow {Image.__version__}, "
        f"imagehash {version('imagehash')}, faiss-cpu {version('faiss')}, imagededup {version('imagededup')}, "
        f"torchvision {version('torchvision')}",
    ]


# --- corpora ---------------------------------------------------------------------------------


def corpus(min_side: int = MIN_SIDE) -> list[tuple[Path, str]]:
    """Real face images as ``(path, character)``: the anime faces (character from the folder name)
    and the facial-expressions photos (person from the file name), smallest side >= ``min_side``."""
    anime = sorted(ANIME.glob("datasets/recognition/*/*/*.png")) + sorted(ANIME.glob("label_data/**/*.png"))
    out = [(p, "anime:" + re.sub(r"^\d+_", "", p.parent.name)) for p in anime]
    out += [(p, "photo:" + re.sub(r"_?\d+k?$", "", p.stem)) for p in sorted(FACES.glob("*.jpg"))]
    if not out:
        raise SystemExit(f"no images under {ANIME} or {FACES} (set TRAINSET_CORPORA)")
    keep = []
    for path, char in out:
        with Image.open(path) as im:
            if min(im.size) >= min_side:
                keep.append((path, char))
    return keep


def imagehash_phash(path: str) -> str:
    """The peer: ``imagehash.phash`` of the file as Pillow opens it."""
    import imagehash

    with Image.open(path) as im:
        return str(imagehash.phash(im))


def rgb(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


# --- 1. hashing throughput -------------------------------------------------------------------


def make_jpegs(folder: Path, count: int, sources: list[Path], rng: np.random.Generator) -> list[str]:
    """``count`` distinct 512x512 JPEGs (quality 90): random crops of the sources, upscaled, jittered."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, s in enumerate(rng.choice(len(sources), size=count, replace=count > len(sources))):
        im = rgb(sources[s])
        w, h = im.size
        f = rng.uniform(0.7, 1.0)
        cw, ch = max(8, int(w * f)), max(8, int(h * f))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        im = im.crop((x0, y0, x0 + cw, y0 + ch)).resize((512, 512), Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            im = ImageOps.mirror(im)
        im = ImageEnhance.Contrast(ImageEnhance.Color(im).enhance(rng.uniform(0.6, 1.4))).enhance(rng.uniform(0.8, 1.2))
        path = folder / f"{k:05d}.jpg"
        im.save(path, quality=90)
        paths.append(str(path))
    return paths


def section_hashing(report: Report, args, work: Path, sources: list[Path]) -> None:
    import imagehash

    from trainset import features, hashing, views

    count = args.images or (300 if args.quick else 1200)
    repeats = 2 if args.quick else 3
    paths = make_jpegs(work / "jpeg512", count, sources, np.random.default_rng(args.seed))
    mb = sum(os.path.getsize(p) for p in paths) / 1e6
    side = features.ANALYSIS_SIDE

    def ours(batch):  # one read per file: SHA-256 and decode from the same bytes
        return [(f["phash"], f["sha256"]) for f in features.extract_many(batch)]

    def floor_at(draft_side):
        def floor(p):
            with Image.open(p) as im:
                im.draft("L", (draft_side, draft_side))
                return im.convert("L").resize((32, 32), Image.Resampling.LANCZOS)
        return floor

    # passes interleaved (ours, peer, floors, ours, ...): a slow spell of a shared VM hits all alike
    runs = {"ours": (lambda: ours(paths)), "ours_procs": (lambda: list(features.extract_many(paths, threads=args.threads))),
            "peer": (lambda: [imagehash_phash(p) for p in paths]),
            "floor": (lambda: [floor_at(side)(p) for p in paths]), "floor8": (lambda: [floor_at(32)(p) for p in paths])}
    rates, outs = interleaved_rates(runs, len(paths), repeats)
    ours_rate, peer_rate, floor_rate, floor8_rate = rates["ours"], rates["peer"], rates["floor"], rates["floor8"]
    ours_out, peer_out = outs["ours"], outs["peer"]
    procs_rate = 0.0
    for r in range(repeats):  # a fresh cache each pass: every file is decoded
        cache = features.FeatureCache(work / f"cache{r}", features.feature_key())
        start = time.perf_counter()
        features.compute([(hashing.sha256_file(p), p) for p in paths], cache, threads=args.threads)
        procs_rate = max(procs_rate, count / (time.perf_counter() - start))
    ceiling = independent_rate(paths, args.threads)
    same_input = sum(ph == str(imagehash.phash(hash_input_of(p))) for (ph, _), p in zip(ours_out, paths))
    bits = np.array([bin(int(ph, 16) ^ int(theirs, 16)).count("1") for (ph, _), theirs in zip(ours_out, peer_out)])

    report(f"## 1. Hashing throughput ({count:,} JPEGs, 512x512, quality 90, {mb:.0f} MB; best of {repeats} interleaved passes after a warm-up pass)")
    report()
    report(f"| method | processes | images/s | vs imagehash | vs decode floor at {side} px | vs decode floor at 1/8 | target |")
    report("|---|---:|---:|---:|---:|---:|---|")
    report(f"| trainset `features.extract_many` (SHA-256, pHash, dHash, {len(views.VIEW_NAMES)} view pHashes, audit measures) | 1 | {ours_rate:,.0f} "
           f"| {ratio(ours_rate, peer_rate)} | {ratio(ours_rate, floor_rate)} | {ratio(ours_rate, floor8_rate)} "
           f"| >= 2.5x imagehash, >= 0.8x floor |")
    report(f"| `imagehash.phash(Image.open(p))` (full decode) | 1 | {peer_rate:,.0f} | 1.00x | {ratio(peer_rate, floor_rate)} "
           f"| {ratio(peer_rate, floor8_rate)} | |")
    report(f"| decode floor: open + `draft('L', ({side}, {side}))` + 32x32 Lanczos, no hash (the scale trainset decodes at) "
           f"| 1 | {floor_rate:,.0f} | {ratio(floor_rate, peer_rate)} | 1.00x | {ratio(floor_rate, floor8_rate)} | |")
    report(f"| decode floor: open + `draft('L', (32, 32))` + 32x32 Lanczos, no hash (1/8 scale) | 1 | {floor8_rate:,.0f} "
           f"| {ratio(floor8_rate, peer_rate)} | {ratio(floor8_rate, floor_rate)} | 1.00x | |")
    many = rates["ours_procs"]
    report(f"| trainset `features.extract_many` | {args.threads} | {many:,.0f} | {ratio(many, peer_rate)} "
           f"| {ratio(many, floor_rate)} | {ratio(many, floor8_rate)} | |")
    report(f"| trainset `features.compute` (sha256 + features + cache writes, fresh cache) | {args.threads} | {procs_rate:,.0f} "
           f"| {ratio(procs_rate, peer_rate)} | {ratio(procs_rate, floor_rate)} | {ratio(procs_rate, floor8_rate)} | |")
    report()
    report(f"trainset's stored pHash equals `imagehash.phash` of its hash input (the decode reduced by "
           f"`hashing.hash_input`) on {same_input:,} of {count:,} files; against `imagehash.phash` of the full-scale "
           f"RGB decode it differs by {bits.mean():.2f} bits on average (at most {bits.max()}, "
           f"{(bits == 0).mean():.0%} identical): the DCT-scaled grayscale decode and the reduction, the same for every JPEG.")
    report()
    report(f"The measures need the {side} px decode: the blur measure (Laplacian variance) separates "
           f"blurred copies from sharp photos at {side} px but not at 1/8 scale (64 px here), "
           f"see `trainset.audit_checks`, and JPEG draft decoding is not used where a measure needs more. The "
           f"floor that decodes what the measures need ({side} px) is the one the target is set against; the "
           f"1/8-scale floor, what a hash-only tool could reach, is shown for reference. The machine's own ceiling "
           f"for {args.threads} processes: {args.threads} independent processes, each running `extract_many` on its "
           f"share of the files at the same time, reach {ceiling:,.0f} images/s together ({ratio(ceiling, ours_rate)} "
           f"one process).")
    report()
    report.target(f"hashing: trainset (1 process) vs decode floor at {side} px", ratio(ours_rate, floor_rate), ">= 0.8x",
                  ours_rate >= 0.8 * floor_rate)
    report.target("hashing: trainset (1 process) vs imagehash", ratio(ours_rate, peer_rate), ">= 2.5x",
                  ours_rate >= 2.5 * peer_rate)


def _share_worker(barrier, paths: list[str], send) -> None:
    from trainset import features

    list(features.extract_many(paths[:3]))  # warm
    barrier.wait()
    start = time.time()
    list(features.extract_many(paths))
    send.send((start, time.time()))


def independent_rate(paths: list[str], processes: int) -> float:
    """Images per second of ``processes`` separate processes, started together, each extracting its
    share of ``paths``: what the machine gives to parallel work, with no pool or parent in the way."""
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(processes)
    pipes, workers = [], []
    for k in range(processes):
        recv, send = ctx.Pipe(duplex=False)
        workers.append(ctx.Process(target=_share_worker, args=(barrier, paths[k::processes], send)))
        pipes.append(recv)
        workers[-1].start()
    spans = [pipe.recv() for pipe in pipes]
    for worker in workers:
        worker.join()
    return len(paths) / (max(end for _, end in spans) - min(start for start, _ in spans))


def interleaved_rates(runs: dict, count: int, repeats: int) -> tuple[dict[str, float], dict[str, list]]:
    """Items per second of each run, best of ``repeats`` rounds that take every run in turn (after
    an untimed warm-up round), and each run's first output."""
    outs = {name: fn() for name, fn in runs.items()}
    best = dict.fromkeys(runs, 0.0)
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            best[name] = max(best[name], count / (time.perf_counter() - start))
    return best, outs


def hash_input_of(path: str) -> Image.Image:
    """The grayscale image trainset hashes, rebuilt from its documented steps (JPEG draft to gray,
    EXIF upright, whole-factor box reduction)."""
    from trainset import features, hashing

    with Image.open(path) as im:
        features.draft(im)
        im.load()
        return hashing.hash_input(features.gray8(ImageOps.exif_transpose(im)))


# --- 2. pair search --------------------------------------------------------------------------


def planted(n: int, t: int, seed: int) -> np.ndarray:
    """``n`` random 64-bit hashes; 10 % of them overwritten by copies of other ones with 0..t
    distinct random bits flipped (sources and copies are disjoint)."""
    rng = np.random.default_rng(seed)
    h = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    m = n // 10
    perm = rng.permutation(n)
    src, dst = perm[:m], perm[m : 2 * m]
    flips_wanted = rng.integers(0, t + 1, size=m)
    bit_order = np.argsort(rng.random((m, 64)), axis=1)[:, :t].astype(np.uint64)  # t distinct bits per copy
    bits = np.uint64(1) << bit_order
    bits[np.arange(t)[None, :] >= flips_wanted[:, None]] = 0
    h[dst] = h[src] ^ np.bitwise_or.reduce(bits, axis=1)
    return h


def pair_keys(n: int, i, j, d=None):
    """Pairs as sorted int64 keys ``i * n + j`` (and their distances in the same order)."""
    keys = np.asarray(i, dtype=np.int64) * n + np.asarray(j, dtype=np.int64)
    order = np.argsort(keys, kind="stable")
    return keys[order], (None if d is None else np.asarray(d, dtype=np.int64)[order])


def faiss_pairs(h: np.ndarray, t: int, threads: int):
    """Pairs within ``t`` bits by exhaustive FAISS range search (``IndexBinaryFlat``)."""
    import faiss

    faiss.omp_set_num_threads(threads)
    # Big-endian bytes: byte 0 is the hash's first two hex digits, as imagehash writes it.
    x = np.ascontiguousarray(h.astype(">u8").view(np.uint8).reshape(len(h), 8))
    index = faiss.IndexBinaryFlat(64)
    index.add(x)
    lims, dist, ids = index.range_search(x, t + 1)  # FAISS keeps distances strictly below the radius
    q = np.repeat(np.arange(len(h), dtype=np.int64), np.diff(lims).astype(np.int64))
    keep = ids > q
    return q[keep], ids[keep], dist[keep]


def load_imagededup():
    """imagededup's PHash; its import needs torchvision, replaced by the placeholder when missing."""
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - absent, or a CUDA build that fails to load
        sys.modules.pop("torchvision", None)
        sys.path.insert(0, str(SHIM))
    warnings.filterwarnings("ignore", message="Parameter num_enc_workers has no effect")
    from imagededup.methods import PHash

    for name in list(logging.root.manager.loggerDict):
        if name.startswith("imagededup"):
            logging.getLogger(name).setLevel(logging.WARNING)
    return PHash


def imagededup_pairs(h: np.ndarray, t: int, threads: int, phash_cls):
    """Pairs from ``find_duplicates`` on hex encodings (untimed: building the map)."""
    encodings = {str(k): f"{int(v):016x}" for k, v in enumerate(h.tolist())}
    found, seconds = timed(phash_cls(verbose=False).find_duplicates, encoding_map=encodings,
                           max_distance_threshold=t, num_dist_workers=threads)
    pairs = np.array([(int(a), int(b)) for a, dups in found.items() for b in dups if int(a) < int(b)],
                     dtype=np.int64).reshape(-1, 2)
    return pairs[:, 0], pairs[:, 1], seconds


def section_pairs(report: Report, args) -> None:
    from trainset import kernels

    sizes = [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]
    budget = args.peer_budget or (300 if args.quick else 1800)
    try:
        phash_cls, idd_error = load_imagededup(), None
    except Exception as exc:  # noqa: BLE001 - reported in the table
        phash_cls, idd_error = None, f"{type(exc).__name__}: {exc}"
    placeholder = getattr(sys.modules.get("torchvision"), "PLACEHOLDER", False)
    report(f"## 2. Pair search on planted 64-bit hashes ({args.threads} threads for FAISS; peer runs "
           f"estimated over {budget:,} s are skipped)")
    report()
    report("| N | t | pairs | trainset s | kernel | FAISS s | FAISS / trainset | same as FAISS "
           "| imagededup s | imagededup / trainset | same as imagededup |")
    report("|---:|---:|---:|---:|:---:|---:|---:|:---:|---:|---:|:---:|")
    near = with_threads(kernels.near_pairs, args.threads)
    for t in (4, 10):  # warm-up, untimed: numba compilation (or loading its cache), FAISS's first call
        near(planted(6_000, t, args.seed), t)
        near(planted(500, t, args.seed), t)
        faiss_pairs(planted(500, t, args.seed), t, args.threads)
    faiss_seconds: dict[int, tuple[int, float]] = {}  # t -> (n, seconds) of the last FAISS run
    for n in sizes:
        for t in (4, 10):
            h = planted(n, t, args.seed + n + t)
            (i, j, d), ours_s = timed(near, h, t)
            ours, ours_d = pair_keys(n, i, j, d)
            method = kernels.pair_method(h, t) if hasattr(kernels, "pair_method") else "?"
            cells = []
            last = faiss_seconds.get(t)
            estimate = last[1] * (n / last[0]) ** 2 if last else 0.0
            goal = 20.0 if (t == 4 and n == 1_000_000) else 1.0 if t == 10 else None
            what = f"pairs: trainset vs FAISS, N = {n:,}, t = {t}"
            if estimate > budget:
                cells += [f"not run (~{estimate:,.0f} s est.)", "—", "—"]
                if goal:
                    report.target(what, "not run", f">= {goal:g}x", None)
            else:
                (fi, fj, fd), faiss_s = timed(faiss_pairs, h, t, args.threads)
                faiss_seconds[t] = (n, faiss_s)
                keys, dist = pair_keys(n, fi, fj, fd)
                same = np.array_equal(keys, ours) and np.array_equal(dist, ours_d)
                report.identical &= same
                cells += [f"{faiss_s:.2f}", ratio(faiss_s, ours_s), "yes" if same else "NO"]
                if goal:
                    report.target(what, ratio(faiss_s, ours_s), f">= {goal:g}x", faiss_s >= goal * ours_s)
            what = f"pairs: trainset vs imagededup, N = {n:,}, t = {t}"
            if n > args.imagededup_max_n:
                cells += [f"not run (N > {args.imagededup_max_n:,}: O(N²) Python search)", "—", "—"]
            elif phash_cls is None:
                cells += [f"not run ({idd_error})", "—", "—"]
                report.target(what, "not run", ">= 20x", None)
            else:
                ii, ij, idd_s = imagededup_pairs(h, t, args.threads, phash_cls)
                same = np.array_equal(pair_keys(n, ii, ij)[0], ours)
                report.identical &= same
                cells += [f"{idd_s:.2f}", ratio(idd_s, ours_s), "yes" if same else "NO"]
                report.target(what, ratio(idd_s, ours_s), ">= 20x", idd_s >= 20 * ours_s)
            report(f"| {n:,} | {t} | {len(ours):,} | {ours_s:.2f} | {method} | " + " | ".join(cells) + " |")
    report()
    ours_threads = f"`near_pairs(threads={args.threads})`" if isinstance(near, functools.partial) else \
        "`near_pairs` (takes no thread count)"
    report(f"Identical = the same (i, j) pairs and, for FAISS, the same distances. trainset: {ours_threads}; "
           f"FAISS: {args.threads} OpenMP threads; imagededup: {args.threads} processes"
           f"{' (imported with the placeholder torchvision)' if placeholder else ''}. One timed run each, after "
           "an untimed warm-up of trainset's kernels (numba compilation) and of FAISS. Targets: trainset no slower "
           "than FAISS at t = 10, >= 20x faster than FAISS at t = 4 and N = 1M, >= 20x faster than imagededup.")
    report()


# --- 3. quality ------------------------------------------------------------------------------


def watermark(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A semi-transparent text + logo mark (~8 % of the height) in a random corner."""
    w, h = im.size
    size = max(10, int(h * rng.uniform(0.07, 0.10)))
    text = ["© studio", "@artist_", "sample", "preview"][int(rng.integers(4))] + str(int(rng.integers(10, 99)))
    font = ImageFont.load_default(size=size)
    layer = Image.new("RGBA", im.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    tw = int(draw.textlength(text, font=font)) + size + 4
    x = 4 if rng.random() < 0.5 else max(0, w - tw - 4)
    y = 4 if rng.random() < 0.5 else max(0, h - size - 8)
    shade = 255 if rng.random() < 0.5 else 0
    alpha = int(rng.integers(150, 230))
    draw.ellipse((x, y, x + size, y + size), fill=(shade, 255 - shade, 255 - shade, alpha))
    draw.text((x + size + 4, y), text, font=font, fill=(shade, shade, shade, alpha))
    return Image.alpha_composite(im.convert("RGBA"), layer).convert("RGB")


def transformed(im: Image.Image, name: str, rng: np.random.Generator) -> tuple[Image.Image, dict]:
    """One seeded near-duplicate of ``im`` (RGB) and the save options it needs."""
    w, h = im.size
    if name == "resize50":
        return im.resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.LANCZOS), {}
    if name == "jpeg40":
        return im, {"format": "JPEG", "quality": 40}
    if name == "crop":  # 5-12 % off each of 1-4 random sides
        sides = rng.random(4) < 0.5
        sides[int(rng.integers(4))] = True
        cut = np.where(sides, rng.uniform(0.05, 0.12, 4), 0.0) * np.array([w, h, w, h])
        return im.crop((int(cut[0]), int(cut[1]), w - int(cut[2]), h - int(cut[3]))), {}
    if name == "pad":  # a uniform border 5-15 % of the longer side, random colour
        border = max(1, int(max(w, h) * rng.uniform(0.05, 0.15)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        return ImageOps.expand(im, border=border, fill=colour), {}
    if name == "brightness":  # 15-25 % brighter or darker
        return ImageEnhance.Brightness(im).enhance(1 + rng.choice([-1, 1]) * rng.uniform(0.15, 0.25)), {}
    if name == "watermark":
        return watermark(im, rng), {}
    if name == "mirror":
        return ImageOps.mirror(im), {}
    raise ValueError(name)


def pick_originals(items: list[tuple[Path, str]], count: int, rng: np.random.Generator) -> list[tuple[Path, str]]:
    """Distinct contents (SHA-256), half anime and half photos, spread over characters (at least 4
    each where there are enough) so that other originals of the same character are there as hard
    negatives."""
    from trainset import hashing

    seen, chosen = set(), []
    for prefix, want in (("anime:", count // 2), ("photo:", count - count // 2)):
        by_char: dict[str, list[Path]] = {}
        for path, char in items:
            if char.startswith(prefix):
                by_char.setdefault(char, []).append(path)
        names = sorted(by_char)
        cap, picked = max(4, -(-want // max(1, len(names)))), 0
        for c in rng.permutation(len(names)):
            paths = by_char[names[c]]
            for k in rng.permutation(len(paths))[:cap]:
                sha = hashing.sha256_file(paths[k])
                if sha not in seen and picked < want:
                    seen.add(sha)
                    chosen.append((paths[k], names[c]))
                    picked += 1
    return chosen


def make_copies(folder: Path, originals: list[tuple[Path, str]], seed: int) -> list[str]:
    """Per original: the original's own path, then one file per transform (``PER_GROUP`` files)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for g, (path, _) in enumerate(originals):
        rng = np.random.default_rng([seed, g])
        im = rgb(path)
        paths.append(str(path))
        for name in TRANSFORMS:
            copy, opts = transformed(im, name, rng)
            out = folder / f"{g:04d}_{name}.{'jpg' if opts.get('format') == 'JPEG' else 'png'}"
            copy.save(out, **opts)
            paths.append(str(out))
    return paths


def row_masks(ka: np.ndarray, kb: np.ndarray) -> dict[str, np.ndarray]:
    """Which pairs (by the transform kind of each side; 0 = original) each table row counts."""
    plain = (ka != MIRROR) & (kb != MIRROR)
    rows = {name: plain & ((ka == k) | (kb == k)) for k, name in enumerate(TRANSFORMS[:-1], start=1)}
    rows["all non-mirrored"] = plain
    rows["mirrored (pairs with a mirror copy)"] = ~plain
    return rows


def metrics(a: np.ndarray, b: np.ndarray, n_groups: int) -> dict[str, tuple[int, int, int, int, int]]:
    """Per row: (positives, true positives found, pairs found, original-copy positives, of them found)."""
    iu, iv = np.triu_indices(PER_GROUP, 1)
    with_orig = iu == 0
    positives = {k: (int(m.sum()) * n_groups, int((m & with_orig).sum()) * n_groups)
                 for k, m in row_masks(iu, iv).items()}
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    ka, kb = a % PER_GROUP, b % PER_GROUP
    hit = a // PER_GROUP == b // PER_GROUP
    hit_orig = hit & ((ka == 0) | (kb == 0))
    return {k: (positives[k][0], int((m & hit).sum()), int(m.sum()), positives[k][1], int((m & hit_orig).sum()))
            for k, m in row_masks(ka, kb).items()}


def pr_cells(m: tuple[int, int, int, int, int] | None) -> list[str]:
    if m is None:
        return ["—", "—", "—"]
    pos, tp, found, pos_orig, tp_orig = m
    return [f"{tp / found:.3f}" if found else "—", f"{tp / pos:.3f}" if pos else "—",
            f"{tp_orig / pos_orig:.3f}" if pos_orig else "—"]


def pr_table(report: Report, title: str, table: dict, labels: list[str]) -> None:
    """One row per transform: precision, recall and original-copy recall of each run."""
    report(f"| {title} | positives | " + " | ".join(f"{lab} P | {lab} R | {lab} R orig" for lab in labels) + " |")
    report("|---|---:|" + "---:|---:|---:|" * len(labels))
    for row, (pos, *_) in table["pHash only"].items():
        cells = [c for lab in labels for c in pr_cells(table.get(lab, {}).get(row))]
        report(f"| {row} | {pos:,} | " + " | ".join(cells) + " |")
    report()


def false_positives(a, b, chars: np.ndarray) -> str:
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    wrong = a // PER_GROUP != b // PER_GROUP
    same = int((chars[a[wrong] // PER_GROUP] == chars[b[wrong] // PER_GROUP]).sum())
    orig = int(((a[wrong] % PER_GROUP == 0) & (b[wrong] % PER_GROUP == 0)).sum())
    return f"{int(wrong.sum()):,} false-positive pairs ({same:,} within one character or person; {orig:,} original-original)"


def _detect(paths: list[str], params: dict, cache_dir: Path, threads: int):
    """``trainset.neardup.detect`` -> ((a, b), rule counts, seconds), or the reason it could not run."""
    try:
        from trainset import neardup

        detect = neardup.detect
    except (ImportError, AttributeError) as exc:
        return f"trainset.neardup not available ({type(exc).__name__}: {exc})"
    try:
        df, seconds = timed(with_threads(detect, threads), paths, params, str(cache_dir))
    except Exception as exc:  # noqa: BLE001 - report a failing rule, keep measuring the rest
        return f"trainset.neardup.detect failed ({type(exc).__name__}: {exc})"
    a, b = df["a"].to_numpy(np.int64), df["b"].to_numpy(np.int64)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    rules = df["rule"].astype(str).value_counts().to_dict() if "rule" in df.columns else {}
    return (lo, hi), rules, seconds


def _tree_rss(root: int) -> tuple[int, list[int]]:
    """Resident bytes of ``root`` and all its descendants, and their pids (``/proc``, Linux)."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    tree, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, ppid in parent.items() if ppid in frontier]
        tree += frontier
    total = 0
    for pid in tree:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except (OSError, ValueError):
            continue
    return total, tree


def _child(send, fn, args: tuple) -> None:
    try:
        send.send(fn(*args))
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent as a message
        send.send(f"{type(exc).__name__}: {exc}")


def guarded(fn, args: tuple, limit: int):
    """``fn(*args)`` (module-level, picklable) in a fresh child process whose process tree is killed
    above ``limit`` resident bytes, so an engine that runs out of memory is reported instead of
    taking this benchmark down with it. Spawned, not forked: this process has OpenMP / numba thread
    pools by then. Returns ``(result or message, peak resident bytes)``."""
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, fn, args))
    proc.start()
    peak = 0
    try:
        while not receive.poll(0.5):
            rss, tree = _tree_rss(proc.pid)
            peak = max(peak, rss)
            if rss > limit:
                for pid in reversed(tree):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                return f"stopped: {rss / 2**30:.1f} GiB resident, over the {limit / 2**30:.1f} GiB limit (--memory-limit)", peak
            if not proc.is_alive() and not receive.poll(0.5):
                return f"exited with status {proc.exitcode} and no result", peak
        return receive.recv(), peak
    finally:
        proc.join(timeout=60)


def run_detect(paths: list[str], params: dict, cache_dir: Path, threads: int, limit: int):
    """:func:`_detect` under :func:`guarded`; messages say ``trainset.neardup.detect`` failed."""
    got, peak = guarded(_detect, (paths, params, cache_dir, threads), limit)
    if isinstance(got, str) and not got.startswith("trainset.neardup"):
        got = f"trainset.neardup.detect failed ({got})"
    return got, peak


def phash_threshold(near_dup: dict) -> tuple[int, str]:
    """pHash-only radius: ``near_dup.max_distance``, or else the largest clause of ``near_dup.rule``
    on distance alone (no ``min_cosine``); and where it came from."""
    if near_dup.get("max_distance") is not None:
        return int(near_dup["max_distance"]), "`near_dup.max_distance`"
    alone = [c["max_distance"] for c in near_dup.get("rule") or [] if c.get("max_distance") is not None
             and c.get("min_cosine") is None]
    if not alone:
        raise SystemExit("params.yaml: near_dup has neither max_distance nor a rule clause on distance alone")
    return int(max(alone)), "the `near_dup.rule` clause on distance alone"


def rule_text(near_dup: dict) -> str:
    """The configured clauses, e.g. ``d <= 6 or (d <= 10 and cos >= 0.83)``."""
    clauses = near_dup.get("rule") or [{"max_distance": near_dup.get("max_distance")}]
    parts = [" and ".join(([f"d <= {c['max_distance']}"] if c.get("max_distance") is not None else [])
                          + ([f"cos >= {c['min_cosine']}"] if c.get("min_cosine") is not None else []))
             for c in clauses]
    return " or ".join(f"({x})" if " and " in x else x for x in parts)


def section_quality(report: Report, args, work: Path, items: list[tuple[Path, str]]) -> None:
    from trainset import hashing, kernels

    params = yaml.safe_load((ROOT / "params.yaml").read_text())["near_dup"]
    t, t_from = phash_threshold(params)
    originals = pick_originals(items, args.originals or (100 if args.quick else 300), np.random.default_rng(args.seed))
    originals, dropped = distinct_pictures(originals)
    paths, make_s = timed(make_copies, work / "copies", originals, args.seed)
    chars = np.array([c for _, c in originals])
    n_groups = len(originals)

    hashes, phash_s = timed(lambda: hashing.from_hex([imagehash_phash(p) for p in paths]))
    (pa, pb, _), pair_s = timed(kernels.near_pairs, hashes, t)
    runs = {"pHash only": ((pa, pb), {}, phash_s + pair_s)}
    notes, peaks = [], {}
    limit = int(args.memory_limit * 2**30)
    for label, extra in (("default rule", {}), ("mirror on", {"mirror": True})):
        got, peak = run_detect(paths, {**params, **extra}, work / "neardup-cache", args.threads, limit)
        peaks[label] = f"; peak {peak / 2**30:.1f} GiB resident (sampled)"
        if isinstance(got, str):
            notes.append(f"{label}: {got}{peaks[label]}")
        else:
            runs[label] = got
    results = {label: metrics(*run[0], n_groups) for label, run in runs.items()}
    order = keep_order(paths, params)
    clustered = {label: metrics(*cluster_pairs(len(paths), *run[0], order), n_groups) for label, run in runs.items()}

    n_anime = int(sum(c.startswith("anime:") for c in chars))
    report(f"## 3. Quality on real images ({n_groups} originals: {n_anime} anime faces, {n_groups - n_anime} photos; "
           f"{len(set(chars))} characters / people; {len(paths):,} files)")
    report()
    report(f"Each original (distinct SHA-256, several per character or person) gets one seeded copy per transform "
           f"(made in {make_s:.0f} s): {', '.join(TRANSFORMS)}. Positives: every pair of files from the same original "
           f"(original-copy and copy-copy); every other pair is a negative. pHash only: `imagehash.phash` within "
           f"{t} bits ({t_from} in params.yaml). Default rule: `trainset.neardup.detect` with params.yaml's "
           f"`near_dup` (rule: {rule_text(params)}; mirror: {params.get('mirror', False)}); mirror on: the same with `mirror: true`. "
           f"{dropped} picked originals were left out first because their plain pHash is within {SAME_PICTURE_BITS} bits of "
           f"another original's (the same picture saved twice, which would make true duplicates count as false positives).")
    report()
    labels = ["pHash only", "default rule", "mirror on"]
    pr_table(report, "pairs", results, labels)
    report("Clusters: the pairs each run's clusters imply, clusters grown as the dedup stage grows them (around the "
           "copy it would keep, by `near_dup.keep`: unpadded first, then most pixels; every member a pair of its representative), i.e. which copies "
           "the dedup stage would drop together.")
    report()
    pr_table(report, "clusters", clustered, labels)
    for label, (pairs, rules, seconds) in runs.items():
        by_rule = ", ".join(f"{k}: {v:,}" for k, v in sorted(rules.items())) or "—"
        report(f"- {label}: {len(pairs[0]):,} pairs in {seconds:.1f} s{peaks.get(label, '')} (by rule: {by_rule}); "
               f"{false_positives(*pairs, chars)}")
    for note in notes:
        report(f"- {note}")
    report()
    report("P = precision, R = recall of the pairs in that row (a row per transform: pairs of that copy with the "
           "original or another non-mirrored copy); R orig = recall of the original-copy pairs alone. The mirror-on "
           "run reuses the feature cache of the default run. Targets: default rule R >= 0.95 at P >= 0.99 on "
           "all non-mirrored pairs; with mirror on, the mirrored pairs caught at the same bar.")
    report()
    plain, mirrored = "all non-mirrored", "mirrored (pairs with a mirror copy)"
    for table, label, row, what in (
        (results, "default rule", plain, "default rule, non-mirrored copies, pairs"),
        (clustered, "default rule", plain, "default rule, non-mirrored copies, clusters"),
        (results, "mirror on", mirrored, "mirror on, mirrored copies, pairs"),
        (clustered, "mirror on", mirrored, "mirror on, mirrored copies, clusters"),
    ):
        m = table.get(label, {}).get(row)
        if m is None:
            report.target(f"quality: {what}", "not run", "R >= 0.95 at P >= 0.99", None)
            continue
        p, r = (m[1] / m[2] if m[2] else 0.0), (m[1] / m[0] if m[0] else 0.0)  # all pairs of the row
        report.target(f"quality: {what}", f"P {p:.3f}, R {r:.3f}", "R >= 0.95 at P >= 0.99", p >= 0.99 and r >= 0.95)


SAME_PICTURE_BITS = 4
"""Originals whose plain pHashes are this close are one picture saved twice (the anime set holds
some faces in two folders): only the first is used, so the ground truth has no hidden duplicates."""


def distinct_pictures(originals: list[tuple[Path, str]]) -> tuple[list[tuple[Path, str]], int]:
    from trainset import hashing, kernels

    hashes = hashing.from_hex([imagehash_phash(str(p)) for p, _ in originals])
    i, j, _ = kernels.near_pairs(hashes, SAME_PICTURE_BITS)
    drop = set()
    for a, b in zip(i.tolist(), j.tolist()):
        if a not in drop:
            drop.add(b)
    return [o for k, o in enumerate(originals) if k not in drop], len(drop)


def keep_order(paths: list[str], near_dup: dict) -> np.ndarray:
    """The dedup stage's preference among the files (``neardup.preference_order`` with the params'
    ``near_dup.keep``), from their features: all originals, no sidecars or tags, one source."""
    import pandas as pd

    from trainset import features, neardup

    feats = list(features.extract_many(paths))
    items = pd.DataFrame({
        "item_id": [f"bench:{k:06d}" for k in range(len(paths))],
        "generated": False, "source": "bench", "sidecar": None,
        "width": [f["width"] for f in feats], "height": [f["height"] for f in feats],
        "border_fraction": [f["border_fraction"] for f in feats],
        "size": [os.path.getsize(p) for p in paths], "tags": [[] for _ in paths],
    })
    ranked = neardup.preference_order(items, near_dup)
    return ranked["item_id"].str[6:].astype(int).to_numpy()


def cluster_pairs(n: int, a: np.ndarray, b: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every pair inside the clusters ``trainset.neardup.grow_clusters`` makes of these pairs."""
    from trainset import neardup

    rep = neardup.grow_clusters(n, np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64), order)
    out_a, out_b = [], []
    for members in pd.Series(np.arange(n)).groupby(rep).indices.values():
        if len(members) > 1:
            x, y = np.triu_indices(len(members), 1)
            out_a.append(members[x])
            out_b.append(members[y])
    if not out_a:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(out_a), np.concatenate(out_b)


# --- output ----------------------------------------------------------------------------------


def section_sprites(report: Report, args, work: Path) -> None:
    from trainset import hashing, kernels

    paths = sorted(str(p) for p in SPRITES.glob("*.png"))
    if not paths:
        raise FileNotFoundError(f"no sprites under {SPRITES}")
    near_dup = yaml.safe_load((ROOT / "params.yaml").read_text())["near_dup"]
    distance, clause = phash_threshold(near_dup)
    species = np.array([Path(p).stem.split("-")[0] for p in paths])
    hashes, phash_s = timed(lambda: hashing.from_hex([imagehash_phash(p) for p in paths]))
    (i, j, _), pair_s = timed(kernels.near_pairs, hashes, distance)
    got, _ = run_detect(paths, near_dup, work / "sprite-cache", args.threads, int(args.memory_limit * 2**30))
    if isinstance(got, str):
        raise RuntimeError(got)
    (a, b), rules, detect_s = got
    report(f"## 4. Pixel art ({len(paths):,} Pokémon box sprites, 68x56, transparent background; "
           f"{len(set(species)):,} species)")
    report()
    report("| method | pairs | within one species | across species | across species per sprite |")
    report("|---|---:|---:|---:|---:|")
    across = {}
    for label, x, y, secs in ((f"pHash only (`imagehash.phash` within {distance} bits: {clause})", i, j, phash_s + pair_s),
                              ("default rule (`neardup.detect`, params.yaml)", a, b, detect_s)):
        x, y = np.asarray(x, dtype=np.int64), np.asarray(y, dtype=np.int64)
        same = int((species[x] == species[y]).sum())
        across[label] = len(x) - same
        report(f"| {label}, {secs:.1f} s | {len(x):,} | {same:,} | {len(x) - same:,} | {(len(x) - same) / len(paths):.3f} |")
    report()
    report(f"Default rule by clause: {', '.join(f'{k}: {v:,}' for k, v in sorted(rules.items()))}. Within one species: "
           "forms and recolours of one creature (pikachu-original-cap and pikachu-partner-cap), which a grayscale "
           "hash cannot tell apart and a curator may well want as near-duplicates. Across species, every pair is a "
           "false one; trainset trims a transparent image to its visible pixels and knows a picture whose border "
           "covers half its area or more by its trimmed view alone (`trainset.views`).")
    report()
    rule_across = across["default rule (`neardup.detect`, params.yaml)"] / len(paths)
    report.target("pixel art: default rule, pairs across species per sprite", f"{rule_across:.3f}", "<= 0.05",
                  rule_across <= 0.05)


def write_section(out: Path, lines: list[str]) -> None:
    """Replace this benchmark's section of ``out`` (between its markers), or append it."""
    _results.write_section(out, BEGIN, END, lines)


SECTIONS = ("hashing", "pairs", "quality", "sprites")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 10k, 100k; 300 JPEGs; 100 originals (~5 min)")
    parser.add_argument("--out", default=str(HERE / "RESULTS.md"), help="file whose dedup section is rewritten ('' : none)")
    parser.add_argument("--only", default="hashing,pairs,quality,sprites", help="comma-separated sections (not written unless all)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads / processes for the parallel runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=int, default=0, help="JPEGs for section 1 (default 300 quick, 1200 full)")
    parser.add_argument("--originals", type=int, default=0, help="originals for section 3 (default 100 quick, 300 full)")
    parser.add_argument("--peer-budget", type=int, default=0, help="skip a FAISS run estimated over this (s)")
    parser.add_argument("--imagededup-max-n", type=int, default=10_000)
    parser.add_argument("--memory-limit", type=float, default=round(0.7 * total_memory() / 2**30, 1),
                        help="GiB: a neardup.detect run (a child process tree) above this is stopped (default 70%% of RAM)")
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    if not sections or set(sections) - set(SECTIONS):
        parser.error(f"--only: sections are {', '.join(SECTIONS)}; got {args.only!r}")
    os.environ.setdefault("NUMBA_NUM_THREADS", str(args.threads))

    report = Report()
    report("# Near-duplicate engine vs peers (`benchmarks/dedup.py`)")
    report()
    for line in machine_lines(argv):
        report(line)
    report()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="trainset-bench-") as tmp:
        work = Path(tmp)
        items = corpus() if {"hashing", "quality"} & set(sections) else []
        runs = {"hashing": lambda: section_hashing(report, args, work, [p for p, _ in items]),
                "pairs": lambda: section_pairs(report, args),
                "quality": lambda: section_quality(report, args, work, items),
                "sprites": lambda: section_sprites(report, args, work)}
        for name in sections:
            try:
                runs[name]()
            except Exception as exc:  # noqa: BLE001 - code under test may be mid-change: report, go on
                report(f"## {name}: failed ({type(exc).__name__}: {exc})")
                report()
                report.failed.append(name)
    report("## Targets")
    report()
    report("| target | measured | goal | met |")
    report("|---|---:|---:|:---:|")
    for what, measured, goal, met in report.targets:
        report(f"| {what} | {measured} | {goal} | {'—' if met is None else 'yes' if met else '**missed**'} |")
    report()
    report(f"Whole run: {time.perf_counter() - started:.0f} s. Single runs on a shared VM: read ratios as "
           "orders of magnitude; the pair sets, not the timings, are exact.")
    if args.out and set(sections) >= set(SECTIONS):
        write_section(Path(args.out), report.lines)
        print(f"\nwrote the dedup section of {args.out}", file=sys.stderr)
    if not report.identical:
        print("pair sets differ between trainset and a peer (see 'same as' columns)", file=sys.stderr)
    if report.failed:
        print(f"sections failed: {', '.join(report.failed)}", file=sys.stderr)
    return 0 if report.identical and not report.failed else 1


if __name__ == "__main__":
    sys.exit(main())
