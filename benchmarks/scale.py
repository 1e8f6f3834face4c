"""The image pipeline's global path at scale: synthetic feature rows (no image decode), 100k and 1M items.

    python benchmarks/scale.py            # N = 100k and 1M, then the incremental step at 1M (about an hour on 2 cores)
    python benchmarks/scale.py --quick    # N = 10k and 100k, incremental at 100k (~5 min)
    python benchmarks/scale.py --sizes 100000,1000000 --shard-size 5000 --out benchmarks/RESULTS.md

For each N the script builds a temporary repository laid out like ``data/manifests`` and runs the
workflow's stage functions in the workflow's order, called as ``scripts/*.py`` call them. Every
step runs in a fresh process (this script again, with an internal ``--step`` flag), as a Snakemake
job does: its wall time is the stage call's, its peak RSS the process's own high-water mark
(``ru_maxrss``), so neither a smaller N nor an earlier step inflates it.

1. synthetic data, shard by shard: per-shard ingest and audit manifests (``schemas.INGEST`` /
   ``schemas.AUDIT``, audit rows as ``stages.audit.run`` writes them, every view of a content one
   64-bit hash) and the audit stats, then the gathered ingest manifest. Planted: exact copies (same
   SHA-256, another item id: same source or a mirror source), near copies (1-4 bits of an earlier
   content's hash flipped, in the same shard or an earlier one), minor-indicating tags rated
   explicit, questionable / explicit ratings (the NSFW flag), untagged items, undecodable rows and
   too-small images. Fixed seeds; not counted in the pipeline's wall time.
2. the pipeline, each step timed: ``shards.split_ingest`` (the ``shard`` checkpoint),
   ``audit.gather``, one ``pairs.run`` per shard (the tile of shard k against itself and every
   earlier shard; all tiles in one process), ``group.run`` (gathering the tiles), ``nsfw.run``
   (``nsfw_model: {backend: none}``), ``filter.run``, ``dedup.run``, ``shards.deal`` and one
   ``caption.run`` per shard (gathered),
   ``split.run`` and ``rejected.run``.
3. checks: every raw item is in exactly one of split and rejected; the planted copies, near
   copies, policy hits and undecodable rows were caught.
4. at the largest N, two incremental rounds: 1 % new items (new contents; in the second round none
   a near copy of an earlier content), ``shards.split_ingest`` with the previous shard map, and what
   Snakemake would rerun: the audit gather, the pair tiles of the changed and new shards, group,
   nsfw, filter, dedup and split (each copying the shards whose inputs did not change from its last
   output), the caption jobs of the shards whose kept rows changed, and every gather after them.

The near-duplicate rule is params.yaml's without the clauses that need embeddings (feature rows
have none): its distance-only clauses (``max_distance: 6`` as shipped); the other params are
params.yaml's, except ``caption.background.check: false`` (the background check decodes
each kept image). Targets (reported, not enforced): 1M items in under 10 minutes with peak RSS
under 4 GB; the incremental step at most 3 % of the full build's wall time.

Writes its tables into ``benchmarks/RESULTS.md`` between its own markers (``--out ''``: nowhere).
"""

from __future__ import annotations

import _results  # benchmarks/_results.py (the script's folder is on sys.path)
import argparse
import contextlib
import hashlib
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BEGIN = "<!-- benchmarks/scale.py: begin -->"
END = "<!-- benchmarks/scale.py: end -->"

TARGET_N = 1_000_000
TARGET_WALL_S = 600.0
TARGET_RSS = 4e9  # bytes (4 GB)
TARGET_INCREMENTAL = 0.03
NEW_SHARE = 0.01
THREADS = 2

# planted shares
COPY_SHARE = 0.02      # contents with a second item (half the same source, right after; half a mirror source)
NEAR_SHARE = 0.03      # contents that are near copies of an earlier content
NEAR_SAME_SHARD = 0.5  # of those: the original in the same shard (else anywhere earlier)
UNDECODABLE_SHARE = 0.005
SMALL_SHARE = 0.01     # short side under audit.min_side
MINORS_SHARE = 0.003   # items: a minor-indicating tag, rated explicit
NSFW_SHARE = 0.05      # items: rated questionable or explicit
UNTAGGED_SHARE = 0.02  # items: no tags, rating unknown

SOURCES = (  # name, generated, license, extension; main items are dealt out in these blocks
    ("a_booru", False, "CC-BY-4.0", ".jpg"),
    ("b_photos", False, "CC0-1.0", ".jpg"),
    ("c_renders", True, "CC-BY-4.0", ".png"),
)
BLOCKS = (0.5, 0.3, 0.2)
MIRROR = "z_mirror"  # exact copies from another source: sorts after every other source
VOCAB = ("1girl", "1boy", "solo", "smile", "long_hair", "short_hair", "blue_eyes", "brown_hair", "blonde_hair",
         "looking_at_viewer", "open_mouth", "outdoors", "sky", "dress", "shirt", "upper_body", "portrait",
         "tree", "flower", "hat", "jacket", "glasses", "closed_eyes", "standing", "sitting", "holding", "cloud",
         "water", "night", "red_eyes", "green_eyes", "black_hair")
MINOR_TAG = "loli"

STEPS = ("shard", "audit gather", "pair tiles", "group", "nsfw", "filter", "dedup", "caption", "split", "rejected")
TEMP_PREFIX = "scalebench-"  # temporary folders (kept free of the package's name)


def max_rss() -> int:
    """This process's peak resident set so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --- synthetic data --------------------------------------------------------------------------------

_M1, _M2, _M3 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def mix(x, salt: int = 0) -> np.ndarray:
    """splitmix64 of each value (deterministic per-row pseudo-random bits without a generator per row)."""
    with np.errstate(over="ignore"):
        x = np.asarray(x, dtype=np.uint64) ^ np.uint64(salt * 0x632BE59BD9B4E019 & 0xFFFFFFFFFFFFFFFF)
        x = x + _M1
        x = (x ^ (x >> np.uint64(30))) * _M2
        x = (x ^ (x >> np.uint64(27))) * _M3
        return x ^ (x >> np.uint64(31))


def unit(bits: np.ndarray) -> np.ndarray:
    return (bits >> np.uint64(11)).astype(np.float64) / float(1 << 53)


class Plan:
    """Every item and content as NumPy arrays (no Python object per row): item ``i`` is numbered ``i``
    (its id ``source:{i:08d}.ext``); contents are numbered in order of first appearance in the
    ingest order (item id order), so with no previous map content ``c`` is in shard ``c // size``."""

    def __init__(self, seed: int):
        self.seed = seed
        self.item_content = np.zeros(0, np.int64)
        self.item_source = np.zeros(0, np.int8)   # index into SOURCES, len(SOURCES) = MIRROR
        self.item_kind = np.zeros(0, np.int8)     # 0 plain, 1 minors, 2 nsfw, 3 untagged
        self.hash = np.zeros(0, np.uint64)
        self.near_of = np.zeros(0, np.int64)      # -1, or the earlier content it is a near copy of
        self.undecodable = np.zeros(0, bool)
        self.small = np.zeros(0, bool)
        self.content_source = np.zeros(0, np.int8)
        self.batches = 0

    ARRAYS = ("item_content", "item_source", "item_kind", "hash", "near_of", "undecodable", "small", "content_source")

    def save(self, path: Path) -> None:
        np.savez(path, seed=self.seed, batches=self.batches, **{k: getattr(self, k) for k in self.ARRAYS})

    @classmethod
    def load(cls, path: Path) -> "Plan":
        with np.load(path) as data:
            plan = cls(int(data["seed"]))
            plan.batches = int(data["batches"])
            for k in cls.ARRAYS:
                setattr(plan, k, data[k])
        return plan

    @property
    def n_items(self) -> int:
        return len(self.item_content)

    @property
    def n_contents(self) -> int:
        return len(self.hash)

    def add(self, n: int, size: int, distinct: bool = False) -> np.ndarray:
        """``n`` new items (new contents, their copies among themselves); returns their item numbers.
        ``distinct``: their near copies too are of new contents only (no earlier item's cluster grows)."""
        rng = np.random.default_rng([self.seed, self.batches])
        self.batches += 1
        c0, i0 = self.n_contents, self.n_items
        contents = int(round(n / (1 + COPY_SHARE)))
        same = rng.random(contents) < COPY_SHARE / 2
        n_mirror = n - contents - int(same.sum())
        if n_mirror < 0:
            same[np.flatnonzero(same)[:(-n_mirror)]] = False
            n_mirror = n - contents - int(same.sum())
        # main items: each content once, a same-source copy right after it where ``same``
        main_content = np.repeat(np.arange(c0, c0 + contents), 1 + same.astype(np.int64))
        edges = np.floor(np.cumsum((0,) + BLOCKS) * contents).astype(np.int64)
        content_source = np.searchsorted(edges[1:], np.arange(contents), side="right").astype(np.int8)
        main_source = content_source[main_content - c0]
        mirror_content = np.sort(rng.choice(contents, size=n_mirror, replace=False)) + c0
        self.item_content = np.concatenate([self.item_content, main_content, mirror_content])
        self.item_source = np.concatenate([self.item_source, main_source, np.full(n_mirror, len(SOURCES), np.int8)])
        kind = np.zeros(n, np.int8)
        draw = rng.random(n)
        kind[draw < MINORS_SHARE + NSFW_SHARE + UNTAGGED_SHARE] = 3
        kind[draw < MINORS_SHARE + NSFW_SHARE] = 2
        kind[draw < MINORS_SHARE] = 1
        self.item_kind = np.concatenate([self.item_kind, kind])
        self.content_source = np.concatenate([self.content_source, content_source])
        # contents: random 64-bit hashes; near copies flip 1-4 bits of an earlier (decodable) content's
        hashes = rng.integers(0, 2**63, size=contents, dtype=np.int64).astype(np.uint64) * np.uint64(2) + rng.integers(0, 2, contents).astype(np.uint64)
        undecodable = rng.random(contents) < UNDECODABLE_SHARE
        small = rng.random(contents) < SMALL_SHARE
        near_of = np.full(contents, -1, np.int64)
        self.hash = np.concatenate([self.hash, hashes])
        self.undecodable = np.concatenate([self.undecodable, undecodable])
        self.small = np.concatenate([self.small, small])
        self.near_of = np.concatenate([self.near_of, near_of])
        for c in np.flatnonzero(rng.random(contents) < NEAR_SHARE) + c0:
            if c == 0:
                continue
            start = (c // size) * size if rng.random() < NEAR_SAME_SHARD else 0
            start = start if start < c else 0
            if distinct:
                start = max(start, c0)
                if start >= c:
                    continue
            orig = int(rng.integers(start, c))
            if self.undecodable[orig]:
                continue
            flips = rng.choice(64, size=int(rng.integers(1, 5)), replace=False)
            mask = np.uint64(0)
            for bit in flips:
                mask |= np.uint64(1) << np.uint64(int(bit))
            self.hash[c] = self.hash[orig] ^ mask
            self.near_of[c] = orig
            self.undecodable[c] = False
        return np.arange(i0, i0 + n)

    # -- rows --------------------------------------------------------------------------------------

    def sha(self, contents: np.ndarray) -> list[str]:
        return [hashlib.sha256(f"scale:{self.seed}:{c}".encode()).hexdigest() for c in contents.tolist()]

    def item_ids(self, items: np.ndarray) -> list[str]:
        names = [*(s[0] for s in SOURCES), MIRROR]
        ext = [s[3] for s in SOURCES]
        src, csrc = self.item_source[items], self.content_source[self.item_content[items]]
        return [f"{names[s]}:{i:08d}{ext[c]}" for i, s, c in zip(items.tolist(), src.tolist(), csrc.tolist())]

    def ingest_rows(self, items: np.ndarray):
        import pandas as pd

        from trainset import manifest

        names = [*(s[0] for s in SOURCES), MIRROR]
        contents = self.item_content[items]
        src = self.item_source[items].tolist()
        ids = self.item_ids(items)
        bits = mix(items, 1)
        ratings_plain = np.where(unit(mix(items, 2)) < 0.7, "general", "sensitive")
        nsfw_rating = np.where(unit(mix(items, 3)) < 0.5, "questionable", "explicit")
        tags, ratings = [], []
        for k, (b, kind) in enumerate(zip(bits.tolist(), self.item_kind[items].tolist())):
            if kind == 3:
                tags.append([])
                ratings.append("unknown")
                continue
            count = 3 + b % 6
            picked = list(dict.fromkeys(VOCAB[(b >> (5 * j + 3)) % len(VOCAB)] for j in range(count)))
            if kind == 1:
                picked.append(MINOR_TAG)
            tags.append(picked)
            ratings.append("explicit" if kind == 1 else str(nsfw_rating[k]) if kind == 2 else str(ratings_plain[k]))
        n = len(items)
        source_names = [names[s] for s in src]
        csrc = self.content_source[contents]
        df = pd.DataFrame({
            "item_id": ids,
            "sha256": self.sha(contents),
            "source": source_names,
            "rel_path": [i.split(":", 1)[1] for i in ids],
            "path": [f"/synthetic/{s}/{i.split(':', 1)[1]}" for s, i in zip(source_names, ids)],
            "size": (mix(contents, 4) % np.uint64(3_000_000) + np.uint64(20_000)).astype(np.int64),
            "license": [SOURCES[c][2] for c in csrc.tolist()] if n else [],
            "original_name": [i.split(":", 1)[1] for i in ids],
            "tags": tags,
            "rating": ratings,
            "generated": np.array([SOURCES[c][1] for c in csrc.tolist()], dtype=bool) if n else np.zeros(0, bool),
            "weight": 1.0,
            "repeats": np.ones(n, np.int64),
            "subset": source_names,
            "sidecar": None,
            "sidecar_error": None,
            "artists": [[] for _ in range(n)],
            "score": np.nan,
            "source_url": None,
            "post_id": None,
            "ingest_reason": None,
            "ingest_detail": None,
        })
        return manifest.with_version(df)

    def audit_rows(self, ingest):
        """Audit rows for ingest rows, as ``stages.audit.run`` writes them (features per content)."""
        import pandas as pd

        from trainset import manifest, views

        items = np.array([int(i.split(":", 1)[1][:8]) for i in ingest["item_id"]], dtype=np.int64)
        contents = self.item_content[items]
        ok = ~self.undecodable[contents]
        png = self.content_source[contents] == len(SOURCES) - 1
        b = mix(contents, 5)
        side = (512 + (b % np.uint64(1024))).astype(np.int64)
        other = (side * (0.6 + 0.8 * unit(mix(contents, 6)))).astype(np.int64)
        small = self.small[contents]
        side = np.where(small, 64 + side % 150, side)
        other = np.where(small, 64 + other % 150, other)
        width, height = np.where(b & np.uint64(1), side, other), np.where(b & np.uint64(1), other, side)
        phash = [f"{h:016x}" for h in self.hash[contents].tolist()]
        dhash = [f"{h:016x}" for h in mix(contents, 7).tolist()]
        v = len(views.VIEW_NAMES)
        n = len(items)
        u = [unit(mix(contents, s)) for s in (8, 9, 10, 11, 12)]
        nan = np.full(n, np.nan)
        df = pd.DataFrame({
            "item_id": ingest["item_id"].to_numpy(),
            "sha256": ingest["sha256"].to_numpy(),
            "decoded": ok,
            "reason": np.where(ok, None, "corrupt"),
            "detail": np.where(ok, None, "cannot open: broken data stream when reading image file"),
            "format": np.where(ok, np.where(png, "PNG", "JPEG"), None),
            "mode": np.where(ok, "RGB", None),
            "width": np.where(ok, width, 0).astype(np.int64),
            "height": np.where(ok, height, 0).astype(np.int64),
            "exif_orientation": np.ones(n, np.int64),
            "phash": [p if good else None for p, good in zip(phash, ok.tolist())],
            "dhash": [d if good else None for d, good in zip(dhash, ok.tolist())],
            "phash_views": [[p] * v if good else [] for p, good in zip(phash, ok.tolist())],
            "n_frames": np.ones(n, np.int64),
            "animated": np.zeros(n, bool),
            "has_alpha": np.zeros(n, bool),
            "alpha_min": np.full(n, 255, np.int64),
            "bit_depth": np.where(ok, 8, 0).astype(np.int64),
            "luma_mean": np.where(ok, 60 + 120 * u[0], nan),
            "luma_std": np.where(ok, 30 + 40 * u[1], nan),
            "entropy": np.where(ok, 5.5 + 2.4 * u[2], nan),
            "laplacian_var": np.where(ok, 120 + 3000 * u[3], nan),
            "border_fraction": np.where(ok, 0.05 * u[4], nan),
        })
        for col in ("reason", "detail", "format", "mode"):
            df[col] = df[col].astype(object).where(df[col].notna(), None)
        return manifest.with_version(df)


# --- the repository --------------------------------------------------------------------------------


class Repo:
    """Paths as rules/common.smk lays them out, under a temporary folder."""

    def __init__(self, root: Path):
        self.root = root
        m = root / "data" / "manifests"
        self.m = m
        self.ingest, self.audit, self.groups, self.nsfw = m / "ingest.parquet", m / "audit.parquet", m / "groups.parquet", m / "nsfw_scores.parquet"
        self.filtered, self.deduped, self.pairs, self.reference = m / "filtered.parquet", m / "deduped.parquet", m / "pairs.parquet", m / "reference_pairs.parquet"
        self.clusters, self.captioned, self.split, self.moves = m / "clusters.parquet", m / "captioned.parquet", m / "split.parquet", m / "split_moves.parquet"
        self.rejected = m / "rejected.parquet"
        self.rejected_parts = [m / "rejected" / "filter.parquet", m / "rejected" / "dedup.parquet"]
        self.shards = m / "shards"
        self.index, self.map = self.shards / "index.json", m / "shard-map.parquet"
        self.cache, self.run = root / "data" / "cache", root / "data" / "run"
        self.shard_run = self.run / "shards"
        self.bench = root / "bench"  # this benchmark's own notes: the plan, the shards that changed
        for d in (m / "rejected", self.shards / "ingest", self.shards / "audit", self.shards / "hashes", self.shards / "pairs", self.shards / "reference",
                  self.shard_run / "audit", self.shard_run / "pairs", self.cache, self.bench):
            d.mkdir(parents=True, exist_ok=True)
        self.plan = self.bench / "plan.npz"

    def shard_file(self, kind: str, name: str) -> Path:
        return self.shards / kind / f"{name}.parquet"

    def shard_hashes(self, name: str) -> Path:
        return self.shards / "hashes" / f"{name}.npz"

    def shard_stats(self, kind: str, name: str) -> Path:
        return self.shard_run / kind / f"{name}.json"

    def names(self) -> list[str]:
        return sorted(json.loads(self.index.read_text()))


def write_audit_shard(repo: Repo, name: str, audit_rows) -> None:
    """One shard's audit manifest, hashes file and stats, as the ``audit_shard`` job leaves them."""
    from trainset import manifest, schemas, shards

    manifest.write(audit_rows, repo.shard_file("audit", name), schemas.AUDIT)
    shards.write_hashes(repo.shard_file("audit", name), repo.shard_hashes(name))
    contents = int(audit_rows["sha256"].nunique())
    stats = {"items": len(audit_rows), "contents": contents, "decoded": contents, "cache_hits": 0, "backend": "numpy"}
    repo.shard_stats("audit", name).write_text(json.dumps(stats, indent=2) + "\n")


def distance_clauses(params: dict) -> list[dict]:
    """params.yaml's near-duplicate clauses that judge on the hash distance alone."""
    clauses = [c for c in params["near_dup"]["rule"] if "min_cosine" not in c]
    if not clauses:
        raise SystemExit("params.yaml: near_dup.rule has no distance-only clause for feature rows without embeddings")
    return clauses


def max_distance() -> int:
    import yaml

    return max(int(c["max_distance"]) for c in distance_clauses(yaml.safe_load((ROOT / "params.yaml").read_text())))


def load_params() -> dict:
    import yaml

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    near_dup = {**params["near_dup"], "rule": distance_clauses(params)}
    caption = {**params["caption"], "background": {**params["caption"].get("background", {}), "check": False}}
    return {**params, "near_dup": near_dup, "caption": caption, "nsfw_model": {"backend": "none"}}


# --- steps: each runs in its own process -------------------------------------------------------------


def step_generate(repo: Repo, params: dict, opts, save) -> dict:
    """The full build's per-shard ingest and audit manifests and the gathered ingest manifest."""
    from trainset import manifest, schemas, shards

    size = opts.shard_size
    plan = Plan(opts.seed)
    plan.add(opts.n, size)
    n_shards = (plan.n_contents + size - 1) // size
    shard_of_item = plan.item_content // size
    order = np.argsort(shard_of_item, kind="stable")
    bounds = np.searchsorted(shard_of_item[order], np.arange(n_shards + 1))
    for k in range(n_shards):
        items = order[bounds[k]:bounds[k + 1]]
        ingest = plan.ingest_rows(items)
        manifest.write(ingest, repo.shard_file("ingest", shards.name(k)), schemas.INGEST)
        write_audit_shard(repo, shards.name(k), plan.audit_rows(ingest))
    paths = [repo.shard_file("ingest", shards.name(k)) for k in range(n_shards)]
    manifest.write(shards.concat(paths, schemas.INGEST), repo.ingest, schemas.INGEST)
    plan.save(repo.plan)
    expected = {shards.name(k): int(c) for k, c in enumerate(np.bincount(np.arange(plan.n_contents) // size))}
    (repo.bench / "expected.json").write_text(json.dumps(expected))
    return {"contents": plan.n_contents, "shards": n_shards}


def step_shard(repo: Repo, params: dict, opts, save) -> dict:
    from trainset import shards

    index = shards.split_ingest(repo.ingest, repo.shards / "ingest", repo.index, repo.map, opts.shard_size, repo.cache / "parts" / "ingest")
    expected = repo.bench / "expected.json"
    if expected.exists():  # the full build: the generator must have dealt contents out as the checkpoint does
        want = json.loads(expected.read_text())
        if {k: v["contents"] for k, v in index.items()} != want:
            raise RuntimeError(f"shards.split_ingest dealt contents out differently than the generator ({len(index)} vs {len(want)} shards)")
        expected.unlink()
    return {"shards": len(index)}


def step_audit_gather(repo: Repo, params: dict, opts, save) -> dict:
    from trainset.stages import audit

    names = repo.names()
    audit.gather([repo.shard_file("audit", s) for s in names], [repo.shard_stats("audit", s) for s in names],
                 repo.audit, repo.run / "audit-stats.json", repo.cache / "kept" / "audit.parquet")
    return {}


def step_pair_tiles(repo: Repo, params: dict, opts, save) -> dict:
    """``pairs.run`` for every shard, or (``--tiles changed``) for each shard whose tile compares a
    changed shard: its params hold every digest up to it."""
    from trainset import shards
    from trainset.stages import pairs

    index = shards.read_index(repo.index)
    names = sorted(index)
    if opts.tiles == "changed":
        changed = set(json.loads((repo.bench / "changed.json").read_text()))
        names = [s for s in names if any(t in changed for t in shards.upto(index, s))]
    info = {"tiles": len(names), "tile_s": [], "upto_pairs": sum(len(shards.upto(index, s)) for s in names)}
    for name in names:
        start = time.perf_counter()
        upto = shards.upto(index, name)
        pairs.run([repo.shard_hashes(s) for s in upto], None, repo.shard_file("pairs", name),
                  repo.shard_file("reference", name), repo.shard_stats("pairs", name), dict(params["near_dup"]), repo.cache,
                  seed=params["seed"], threads=THREADS, extensions=params["ingest"]["extensions"],
                  max_pixels=params["audit"]["max_pixels"])
        info["tile_s"].append(time.perf_counter() - start)
        if len(info["tile_s"]) % 10 == 0:
            save(info)
    return info


def step_group(repo: Repo, params: dict, opts, save) -> dict:
    from trainset.stages import group

    names = repo.names()
    group.run(repo.ingest, repo.audit, repo.groups, repo.pairs, repo.reference, dict(params["near_dup"]), repo.cache,
              repo.run / "group-stats.json", seed=params["seed"],
              tiles={"pairs": [repo.shard_file("pairs", s) for s in names],
                     "reference": [repo.shard_file("reference", s) for s in names],
                     "stats": [repo.shard_stats("pairs", s) for s in names]}, kept=repo.cache / "kept")
    return {}


def step_nsfw(repo: Repo, params: dict, opts, save) -> dict:
    from trainset.stages import nsfw

    nsfw.run(repo.ingest, repo.audit, repo.nsfw, dict(params["nsfw_model"]), repo.cache / "nsfw", threads=THREADS, kept=repo.cache / "kept")
    return {}


def kept_keys(repo: Repo, name: str) -> dict:
    """shard -> key of a stage's kept output (``data/cache/kept/<name>.parquet``)."""
    from trainset import manifest

    return {shard: key for shard, (_, key) in manifest.Kept(repo.cache / "kept" / f"{name}.parquet").groups.items()}


def reuse_info(repo: Repo, name: str, before: dict) -> dict:
    """How many of a stage's shards came from its last output (their keys unchanged)."""
    after = kept_keys(repo, name)
    return {"reused": sum(before.get(s) == k for s, k in after.items()), "shards": len(after)}


def step_filter(repo: Repo, params: dict, opts, save) -> dict:
    from trainset import versions
    from trainset.stages import filter as filter_stage

    filter_stage.run({"ingest": repo.ingest, "ingest_shards": [repo.shard_file("ingest", s) for s in repo.names()], "audit": repo.audit, "groups": repo.groups,
                      "nsfw": repo.nsfw},
                     repo.filtered, repo.rejected_parts[0], audit_params=dict(params["audit"]),
                     policy_params=dict(params["policy"]), tag_dictionaries=list(params["tags"]["dictionaries"]),
                     annotation_files=list(params["annotations"]), overrides_file=None,
                     takedown=versions.takedown_set(repo.root), kept=repo.cache / "kept")
    return {}


def _with_reuse(name: str, step):
    """``step`` reporting how many shards its stage reused (``name``: its kept file)."""
    def run(repo: Repo, params: dict, opts, save) -> dict:
        before = kept_keys(repo, name)
        return {**(step(repo, params, opts, save) or {}), **reuse_info(repo, name, before)}
    return run


def step_dedup(repo: Repo, params: dict, opts, save) -> dict:
    from trainset.stages import dedup

    dedup.run(repo.filtered, repo.pairs, repo.reference, repo.deduped, repo.clusters, repo.rejected_parts[1], dict(params["near_dup"]),
              kept=repo.cache / "kept")
    return {}


def step_caption(repo: Repo, params: dict, opts, save) -> dict:
    """The ``deal_deduped`` checkpoint, a ``caption_shard`` job for each shard whose kept rows changed
    (the digest in ``deduped-index.json``: the workflow's rule reruns on that param alone) or that has
    none yet, the ``caption`` gather."""
    import pyarrow

    from trainset import parquet_splice, provenance, schemas, shards
    from trainset.stages import caption

    names = repo.names()
    dealt, index_path = repo.shards / "deduped", repo.shards / "deduped-index.json"
    before = json.loads(index_path.read_text()) if index_path.exists() else {}
    shards.deal(repo.deduped, repo.map, names, dealt, schemas.DEDUPED, index_path, repo.cache / "parts" / "deduped",
                parquet_splice.saved_footer(repo.cache / "kept" / "deduped.parquet", "output-footer"))
    pyarrow.default_memory_pool().release_unused()  # the deal is a job of its own in the workflow: its memory goes with it
    now = json.loads(index_path.read_text())
    code = provenance.code_digest()
    triggers = {s[0]: "" for s in SOURCES} | {MIRROR: ""}
    dictionaries = list(params["tags"]["dictionaries"])
    changed = [s for s in names if before.get(s, {}).get("digest") != now[s]["digest"] or not repo.shard_file("captioned", s).exists()]
    for name in changed:
        kept = caption.kept_as(repo.cache / "parts" / "captioned", name, now[name]["digest"], dict(params["caption"]), dictionaries,
                               triggers, code)
        caption.run(dealt / f"{name}.parquet", repo.shard_file("captioned", name), dict(params["caption"]),
                    dictionaries, repo.cache / "background", triggers, kept)
    shards.gather([repo.shard_file("captioned", s) for s in names], repo.captioned, schemas.CAPTIONED, repo.cache / "kept" / "captioned.parquet")
    return {"captioned_shards": len(changed), "changed_shards": sum(before.get(s, {}).get("digest") != now[s]["digest"] for s in names)}


def step_split(repo: Repo, params: dict, opts, save) -> dict:
    from trainset.stages import split

    split.run(repo.captioned, repo.split, repo.moves, repo.cache / "split-history.parquet", params["seed"], dict(params["split"]),
              kept=repo.cache / "kept")
    return {}


def step_rejected(repo: Repo, params: dict, opts, save) -> dict:
    from trainset.stages import rejected

    rejected.run([str(p) for p in repo.rejected_parts], repo.rejected)
    return {}


def step_grow(repo: Repo, params: dict, opts, save, distinct: bool = False) -> dict:
    """1 % new items (new contents) added to the ingest manifest, as a rescan of the sources would;
    which shards they land in by ``shards.assign`` with the previous map, noted for the check after
    the shard checkpoint. ``distinct``: no near copy of an earlier content among them."""
    import pandas as pd

    from trainset import manifest, schemas, shards

    plan = Plan.load(repo.plan)
    shutil.copy(repo.index, repo.bench / "index-before.json")
    previous = shards.read_map(repo.map, opts.shard_size)
    new_items = plan.add(max(1, int(round(NEW_SHARE * plan.n_items))), opts.shard_size, distinct=distinct)
    new_rows = plan.ingest_rows(new_items)
    old = pd.read_parquet(repo.ingest)
    manifest.write(pd.concat([old, new_rows], ignore_index=True), repo.ingest, schemas.INGEST)
    del old
    ordered = pd.read_parquet(repo.ingest, columns=["sha256"])["sha256"]  # item-id order, as the checkpoint reads it
    mapping = shards.assign(ordered, previous, opts.shard_size)
    landed = mapping.loc[mapping["sha256"].isin(set(new_rows["sha256"])), "shard"].unique()
    (repo.bench / "changed-by-map.json").write_text(json.dumps(sorted(shards.name(int(k)) for k in landed)))
    plan.save(repo.plan)
    return {"new_items": len(new_items)}


def step_grow_audit(repo: Repo, params: dict, opts, save) -> dict:
    """After the shard checkpoint: the shards whose digest changed (must be those ``shards.assign``
    named) get new audit manifests, as their ``audit_shard`` jobs (a decode, not measured) would."""
    from trainset import manifest, schemas, shards

    plan = Plan.load(repo.plan)
    before = json.loads((repo.bench / "index-before.json").read_text())
    index = shards.read_index(repo.index)
    changed = sorted(s for s, v in index.items() if before.get(s, {}).get("digest") != v["digest"])
    by_map = json.loads((repo.bench / "changed-by-map.json").read_text())
    if changed != by_map:
        raise RuntimeError(f"changed shards: the digests say {changed}, shards.assign says {by_map}")
    for s in changed:
        write_audit_shard(repo, s, plan.audit_rows(manifest.read(repo.shard_file("ingest", s), schemas.INGEST)))
    (repo.bench / "changed.json").write_text(json.dumps(changed))
    return {"changed": changed, "new_shards": sorted(set(index) - set(before))}


def step_check(repo: Repo, params: dict, opts, save) -> dict:
    return {**check(repo, Plan.load(repo.plan)), "disk_bytes": sum(p.stat().st_size for p in repo.root.rglob("*") if p.is_file())}


def step_noop(repo, params, opts, save) -> dict:
    """What a fresh job process costs before it works: the imports of a pair-tile job."""
    from trainset.stages import pairs  # noqa: F401

    return {}


STEP_FUNCTIONS = {
    "generate": step_generate, "shard": step_shard, "audit gather": step_audit_gather, "pair tiles": step_pair_tiles,
    "group": _with_reuse("groups", step_group), "nsfw": _with_reuse("nsfw_scores", step_nsfw), "filter": _with_reuse("filtered", step_filter), "dedup": _with_reuse("deduped", step_dedup),
    "caption": step_caption, "split": _with_reuse("split", step_split), "rejected": step_rejected, "grow": step_grow, "grow audit": step_grow_audit, "check": step_check,
    "grow distinct": lambda repo, params, opts, save: step_grow(repo, params, opts, save, distinct=True),
    "noop": step_noop,
}


def _plain(o):
    return o.tolist() if hasattr(o, "tolist") else str(o)


def _stopped(signum, frame):
    raise SystemExit(128 + signum)


def run_step_here(opts) -> int:
    """The ``--step`` process: run one step, write its wall time, peak RSS and what it found."""
    signal.signal(signal.SIGTERM, _stopped)
    out = Path(opts.json)

    def save(info, partial=True):
        out.write_text(json.dumps({"partial": partial, "info": info, "rss": max_rss()}, default=_plain))

    repo = Repo(Path(opts.repo)) if opts.repo else None
    params = load_params()
    fn = STEP_FUNCTIONS[opts.step]
    if opts.step != "noop":  # imports before the clock: a job's process start is noted apart
        import pandas  # noqa: F401

        from trainset import manifest, schemas, shards, versions  # noqa: F401
        from trainset.stages import audit, caption, dedup, group, nsfw, pairs, rejected, split  # noqa: F401
        from trainset.stages import filter as filter_stage  # noqa: F401
    start = time.perf_counter()
    info = fn(repo, params, opts, save)
    wall = time.perf_counter() - start
    out.write_text(json.dumps({"s": wall, "rss": max_rss(), "info": info}, default=_plain))
    return 0


# --- checks ----------------------------------------------------------------------------------------


def check(repo: Repo, plan: Plan) -> dict:
    """Partition of the raw items, and what was caught of what was planted."""
    import pandas as pd

    ingest = pd.read_parquet(repo.ingest, columns=["item_id"])
    kept = pd.read_parquet(repo.split, columns=["item_id", "sha256", "nsfw_flag"])
    rej = pd.read_parquet(repo.rejected, columns=["item_id", "stage", "rule", "reason", "nsfw_flag"])
    number = lambda ids: np.array([int(i.split(":", 1)[1][:8]) for i in ids], dtype=np.int64)  # noqa: E731
    n = plan.n_items
    raw, k_ids, r_ids = number(ingest["item_id"]), number(kept["item_id"]), number(rej["item_id"])
    where = np.zeros(n, np.int64)  # times each item appears in kept + rejected
    np.add.at(where, k_ids, 1)
    np.add.at(where, r_ids, 1)
    out = {"items": len(raw), "kept": len(kept), "rejected": len(rej),
           "partition": bool(len(raw) == n and len(set(raw.tolist())) == n and (where == 1).all())}
    rule = np.full(n, "", dtype=object)
    rule[r_ids] = rej["rule"].to_numpy(dtype=object)
    reason = np.full(n, "", dtype=object)
    reason[r_ids] = rej["reason"].to_numpy(dtype=object)
    flagged = np.zeros(n, bool)
    flagged[k_ids] = kept["nsfw_flag"].to_numpy(bool)
    flagged[r_ids] = rej["nsfw_flag"].to_numpy(bool)
    is_kept = np.zeros(n, bool)
    is_kept[k_ids] = True
    minors_rule = rule == "minors"

    # exact copies: no content kept twice; every extra copy rejected
    copies = n - len(np.unique(plan.item_content))
    kept_per_content = np.bincount(plan.item_content[is_kept], minlength=plan.n_contents)
    out["copies"] = (int(copies - (kept_per_content > 1).sum()), int(copies), bool((kept_per_content <= 1).all()))
    # near copies: the planted pair found (both hashed), and never both kept
    near = np.flatnonzero(plan.near_of >= 0)
    pairs = pd.read_parquet(repo.pairs, columns=["a", "b"])
    found_set = set(zip(pairs["a"], pairs["b"]))
    sa, sb = plan.sha(near), plan.sha(plan.near_of[near])
    found = sum((min(x, y), max(x, y)) in found_set for x, y in zip(sa, sb))
    content_kept = kept_per_content > 0
    both = int((content_kept[near] & content_kept[plan.near_of[near]]).sum())
    out["near"] = (int(found), len(near), both == 0 and found == len(near))
    out["pairs"] = len(pairs)
    # policy
    minors = np.flatnonzero(plan.item_kind == 1)
    out["minors"] = (int(minors_rule[minors].sum()), len(minors), bool(minors_rule[minors].all()))
    nsfw = np.flatnonzero(plan.item_kind == 2)
    out["nsfw"] = (int(flagged[nsfw].sum()), len(nsfw), bool(flagged[nsfw].all()))
    bad = np.flatnonzero(plan.undecodable[plan.item_content])
    caught = (rule[bad] == "decode") | minors_rule[bad]
    out["undecodable"] = (int(caught.sum()), len(bad), bool(caught.all()))
    small = np.flatnonzero(plan.small[plan.item_content] & ~plan.undecodable[plan.item_content])
    caught = (reason[small] == "too_small") | minors_rule[small]
    out["small"] = (int(caught.sum()), len(small), bool(caught.all()))
    out["untagged"] = int((plan.item_kind == 3).sum())
    out["ok"] = bool(out["partition"] and all(out[k][2] for k in ("copies", "near", "minors", "nsfw", "undecodable", "small")))
    return out


# --- one N (the parent runs each step in a fresh process) ---------------------------------------------


class StepFailed(RuntimeError):
    def __init__(self, message: str, partial: dict | None = None):
        super().__init__(message)
        self.partial = partial or {}


def run_step(name: str, repo: Path | None, args, n: int = 0, tiles: str = "all") -> dict:
    with tempfile.TemporaryDirectory(prefix=TEMP_PREFIX + "step-") as tmp:
        out = Path(tmp) / "step.json"
        cmd = [sys.executable, "benchmarks/scale.py", "--step", name, "--repo", str(repo or ""), "--shard-size", str(args.shard_size),
               "--seed", str(args.seed), "--n", str(n), "--tiles", tiles, "--json", str(out)]
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
               "NUMBA_NUM_THREADS": str(THREADS), "TRAINSET_PROGRESS": "0"}
        proc = subprocess.run(cmd, env=env, cwd=ROOT)
        got = json.loads(out.read_text()) if out.exists() else {}
    if proc.returncode:
        code = -proc.returncode if proc.returncode < 0 else proc.returncode - 128 if proc.returncode > 128 else 0
        why = (f"stopped by signal {code} ({signal.Signals(code).name}) from outside" if code in set(signal.Signals)
               else f"failed (exit status {proc.returncode}; see the traceback above)")
        raise StepFailed(f"step {name!r} {why}", got.get("info"))
    if name != "noop":
        print(f"  {name}: {got['s']:.1f} s, peak RSS {got['rss'] / 2**30:.2f} GiB", file=sys.stderr, flush=True)
    return got


def pipeline(repo: Path, args, steps: dict, tiles: str) -> dict:
    """The workflow's steps after the per-shard audit, each in its own process; returns the tiles' info."""
    tile_info: dict = {}
    for step in STEPS:
        try:
            got = run_step(step, repo, args, tiles=tiles)
        except StepFailed as exc:
            if step == "pair tiles":
                tile_info.update(exc.partial)
            raise
        steps[step] = {"s": got["s"], "rss": got["rss"]}
        if step == "pair tiles":
            tile_info = got["info"]
    return tile_info


def build(n: int, args, incremental: bool) -> dict:
    result: dict = {"n": n, "shard_size": args.shard_size, "steps": {}, "load_start": os.getloadavg()}
    repo = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))
    print(f"== N = {n:,} ({repo})", file=sys.stderr, flush=True)
    try:
        got = run_step("generate", repo, args, n=n)
        result.update(synthetic_s=got["s"], gen_rss=got["rss"], contents=got["info"]["contents"])
        tiles = pipeline(repo, args, result["steps"], "all")
        result.update(tiles=tiles["tiles"], tile_s=tiles["tile_s"], upto_pairs=tiles["upto_pairs"])
        result["wall"] = sum(v["s"] for v in result["steps"].values())
        result["peak_rss"] = max(v["rss"] for v in result["steps"].values())
        result["shards"] = len(json.loads((repo / "data/manifests/shards/index.json").read_text()))
        got = run_step("check", repo, args)
        result["check"], result["disk_bytes"] = got["info"], got["info"]["disk_bytes"]
        if incremental:
            for key, grow_step in (("incremental", "grow"), ("distinct", "grow distinct")):
                print(f"== N = {n:,}: {key}", file=sys.stderr, flush=True)
                result[key] = incremental_round(repo, args, grow_step, result["wall"])
    except StepFailed as exc:
        where = (result.get("distinct") or result.get("incremental")) if "wall" in result else result
        where["failed"] = str(exc)
        if exc.partial.get("tile_s"):
            where["tile_s"], where["tiles_todo"] = exc.partial["tile_s"], exc.partial.get("tiles")
    finally:
        shutil.rmtree(repo, ignore_errors=True)
    return result


def file_states(root: Path) -> dict[str, tuple[int, int, int]]:
    """path -> (size, modification time, inode) of every file under ``root``."""
    return {str(p): (st.st_size, st.st_mtime_ns, st.st_ino) for p in root.rglob("*") if p.is_file() and not p.is_symlink() for st in [p.stat()]}


def written_bytes(root: Path, before: dict, after: dict) -> dict[str, int]:
    """Bytes of the files written between two :func:`file_states` (new, or changed in size or time),
    by kind: whole manifests (``data/manifests/*.parquet`` and ``rejected/``), the stages' kept copies
    (``data/cache/kept``: a kept file appended to in place, the same file grown, counts what it
    grew by), and the rest (per-shard files, part caches, stats)."""
    out = {"manifests": 0, "kept": 0, "other": 0}
    m, kept = root / "data" / "manifests", root / "data" / "cache" / "kept"
    for path, state in after.items():
        was = before.get(path)
        if was == state:
            continue
        p = Path(path)
        kind = "kept" if kept in p.parents else "manifests" if p.parent in (m, m / "rejected") and p.suffix == ".parquet" else "other"
        appended = kind == "kept" and was is not None and was[2] == state[2] and state[0] >= was[0]
        out[kind] += state[0] - was[0] if appended else state[0]
    return out


def copy_rate(path: Path) -> float:
    """Bytes per second of one file copy (the kernel's, as the stages' byte copies) of ``path``."""
    with tempfile.TemporaryDirectory(prefix=TEMP_PREFIX + "copy-", dir=path.parent) as tmp:
        start = time.perf_counter()
        shutil.copyfile(path, Path(tmp) / "copy")
        return path.stat().st_size / max(time.perf_counter() - start, 1e-9)


def incremental_round(repo: Path, args, grow_step: str, full_wall: float) -> dict:
    """1 % new items added (``grow_step``), then what Snakemake would rerun, timed; and the bytes it wrote."""
    inc: dict = {"steps": {}}
    grow = run_step(grow_step, repo, args)
    inc["new_items"], inc["synthetic_s"] = grow["info"]["new_items"], grow["s"]
    before = file_states(repo)
    got = run_step("shard", repo, args)
    inc["steps"]["shard"] = {"s": got["s"], "rss": got["rss"]}
    audit = run_step("grow audit", repo, args)
    inc["synthetic_s"] += audit["s"]
    inc.update(changed=audit["info"]["changed"], new_shards=audit["info"]["new_shards"])
    rest: dict = {}
    try:
        tiles = pipeline_after_shard(repo, args, rest)
    finally:
        inc["steps"].update(rest)
    inc.update(tiles=tiles["tiles"], tile_s=tiles["tile_s"], changed_shards=tiles.get("changed_shards"),
               reused=tiles.get("reused", {}))
    inc["wall"] = sum(v["s"] for v in inc["steps"].values())
    inc["peak_rss"] = max(v["rss"] for v in inc["steps"].values())
    inc["ratio"] = inc["wall"] / full_wall
    inc["written"] = written_bytes(repo, before, file_states(repo))
    inc["copy_rate"] = copy_rate(repo / "data" / "manifests" / "split.parquet")
    inc["check"] = run_step("check", repo, args)["info"]
    return inc


def pipeline_after_shard(repo: Path, args, steps: dict) -> dict:
    """The incremental run's steps after the shard checkpoint (and the changed shards' audit)."""
    tile_info: dict = {}
    for step in STEPS[1:]:
        got = run_step(step, repo, args, tiles="changed")
        steps[step] = {"s": got["s"], "rss": got["rss"]}
        if step == "pair tiles":
            tile_info = got["info"]
        if step == "caption":
            tile_info["changed_shards"] = got["info"]["changed_shards"]
        if "reused" in got.get("info", {}):
            tile_info.setdefault("reused", {})[step] = (got["info"]["reused"], got["info"]["shards"])
    return tile_info


# --- report ----------------------------------------------------------------------------------------


def gib(b: float | None) -> str:
    return "—" if not b else f"{b / 2**30:.2f} GiB"


def secs(s: float | None) -> str:
    if s is None:
        return "—"
    return f"{s:,.1f} s" if s < 600 else f"{s:,.0f} s ({s / 60:.1f} min)"


def frac(t) -> str:
    return f"{t[0]:,} / {t[1]:,}"


def machine_lines(argv: list[str]) -> list[str]:
    cpu, mem = _results.cpu_name(), f"{_results.total_memory() / 2**30:.1f} GiB"
    import pandas as pd
    import pyarrow

    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    return [
        _results.run_line("benchmarks/scale.py", argv),
        "",
        f"- Machine: {cpu}, {os.cpu_count()} logical CPU(s), {mem} RAM, load average at the end {load} "
        "(1 / 5 / 15 min; a shared VM: other jobs ran at the same time, see below)",
        f"- Python {platform.python_version()}, NumPy {np.__version__}, pandas {pd.__version__}, pyarrow {pyarrow.__version__}; "
        f"`threads={THREADS}` where a stage takes it, `NUMBA_NUM_THREADS={THREADS}`",
    ]


def report(results: list[dict], argv: list[str], started: float, noop: dict | None) -> list[str]:
    lines = ["# Image pipeline at scale (`benchmarks/scale.py`)", ""]
    lines += machine_lines(argv)
    lines.append("")
    good = [r for r in results if "wall" in r]
    lines += [
        "Synthetic feature rows, no image decode: per-shard ingest and audit manifests as the audit stage writes them "
        f"(every view of a content one 64-bit hash), shard size {results[0]['shard_size']:,}; near-duplicate rule "
        f"params.yaml's distance-only clauses (`max_distance: {max_distance()}`; the cosine clauses need embeddings, which feature rows lack); other params from params.yaml, except "
        "`caption.background.check: false` and `nsfw_model: {backend: none}`. Each step runs in a fresh process, as a "
        "Snakemake job does (all pair tiles of a build in one): its time is the stage call's wall time, its RSS the "
        "process's own peak (`ru_maxrss`, imports included"
        + (f": a process that only imports a pair-tile job's modules peaks at {gib(noop['rss'])}" if noop else "")
        + "). The pipeline's wall time is the sum of its steps (generating the data is not counted); its peak RSS the "
        "largest step's.",
        "",
        "## Full build",
        "",
        "| N items | contents | shards | pair tiles (shard pairs compared) | pipeline wall | peak RSS | target (1M) | wall met | RSS met | checks |",
        "|---:|---:|---:|---:|---:|---:|---|:---:|:---:|:---:|",
    ]
    for r in results:
        if "wall" not in r:
            done = sum(v["s"] for v in r.get("steps", {}).values())
            where = f"; {secs(done)} measured over {len(r['steps'])} step(s)" if r.get("steps") else ""
            lines.append(f"| {r['n']:,} | {r.get('contents', 0):,} | | | not finished: {r.get('failed', 'no result')}{where} | | | | | |")
            continue
        at = r["n"] == TARGET_N
        wall_ok = "yes" if r["wall"] < TARGET_WALL_S else "**no**"
        rss_ok = "yes" if r["peak_rss"] < TARGET_RSS else "**no**"
        lines.append(f"| {r['n']:,} | {r['contents']:,} | {r['shards']} | {r['tiles']:,} ({r['upto_pairs']:,}) | {secs(r['wall'])} "
                     f"| {gib(r['peak_rss'])} | {'< 600 s, < 4 GB' if at else '—'} | {wall_ok if at else '—'} "
                     f"| {rss_ok if at else '—'} | {'yes' if r['check']['ok'] else '**no**'} |")
    lines.append("")
    shown = [r for r in results if r.get("steps")]
    if shown:
        lines += ["## Steps (wall time, peak RSS of the step's process)", "",
                  "| step | " + " | ".join(f"N = {r['n']:,}" + ("" if "wall" in r else " (not finished)") for r in shown) + " |",
                  "|---|" + "---:|" * len(shown)]
        for step in STEPS:
            cells = []
            for r in shown:
                row = r["steps"].get(step)
                if row is None and step == "pair tiles" and r.get("tile_s"):
                    cells.append(f"stopped after {len(r['tile_s'])} of {r.get('tiles_todo')} tiles, {secs(sum(r['tile_s']))}")
                else:
                    cells.append("—" if row is None else f"{secs(row['s'])}, {gib(row['rss'])}")
            lines.append(f"| {step} | " + " | ".join(cells) + " |")
        lines.append("| **pipeline** | " + " | ".join(f"**{secs(r['wall'])}**, {gib(r['peak_rss'])}" if "wall" in r else "—" for r in shown) + " |")
        lines.append("| (synthetic data, not counted) | " + " | ".join(
            f"{secs(r.get('synthetic_s'))}, {gib(r.get('gen_rss'))}" for r in shown) + " |")
        lines.append("")
        for r in shown:
            if "wall" not in r:
                lines.append(f"- N = {r['n']:,} did not finish ({r['failed']}): the steps above are what it measured before.")
                continue
            ranked = sorted(r["steps"], key=lambda k: -r["steps"][k]["s"])[:3]
            top = ", ".join(f"{k} {r['steps'][k]['s'] / r['wall']:.0%}" for k in ranked)
            big = sorted(r["steps"], key=lambda k: -r["steps"][k]["rss"])[:2]
            t = np.array(r["tile_s"])
            lines.append(f"- N = {r['n']:,}: most time in {top}; highest RSS in "
                         + " and ".join(f"{k} ({gib(r['steps'][k]['rss'])})" for k in big)
                         + f". {len(t)} pair tiles (shard k against shards 0..k): {t.mean():.2f} s each on average, "
                         f"first {t[0]:.2f} s, last {t[-1]:.2f} s. Repository on disk {r['disk_bytes'] / 2**20:,.0f} MiB.")
        lines.append("")
    if good:
        lines += ["## Checks", "",
                  "| N | kept | rejected | each raw item in exactly one of split / rejected | exact copies removed | "
                  "planted near pairs found | minors excluded | NSFW flagged | undecodable rejected | too small rejected | all |",
                  "|---:|---:|---:|:---:|---:|---:|---:|---:|---:|---:|:---:|"]
        rows = [(f"{r['n']:,}", r["check"]) for r in good]
        for key, label in ROUNDS:
            rows += [(f"{r['n']:,} + 1 %{label}", r[key]["check"]) for r in good if "check" in r.get(key, {})]
        for n, c in rows:
            lines.append(f"| {n} | {c['kept']:,} | {c['rejected']:,} | {'yes' if c['partition'] else '**no**'} | {frac(c['copies'])} "
                         f"| {frac(c['near'])} ({c['pairs']:,} pairs in all) | {frac(c['minors'])} | {frac(c['nsfw'])} "
                         f"| {frac(c['undecodable'])} | {frac(c['small'])} | {'yes' if c['ok'] else '**no**'} |")
        lines += ["", "Near pairs beyond the planted ones are random hashes that happen to lie within "
                  f"{max_distance()} bits of each other (and pairs between two near copies of one original). "
                  "The planted near pairs are also never both kept (else the column says no).", ""]
    for r in good:
        for key, label in ROUNDS:
            if key in r:
                lines += incremental_lines(r, key)
    lines += ["## Targets", "", "| target | measured | met |", "|---|---:|:---:|"]
    at = [r for r in results if r["n"] == TARGET_N]
    if at and "wall" in at[0]:
        r = at[0]
        lines.append(f"| 1M items: pipeline wall < 10 min | {secs(r['wall'])} | {'yes' if r['wall'] < TARGET_WALL_S else '**no**'} |")
        lines.append(f"| 1M items: peak RSS < 4 GB | {r['peak_rss'] / 1e9:.2f} GB | {'yes' if r['peak_rss'] < TARGET_RSS else '**no**'} |")
    elif at:
        lines.append(f"| 1M items | not finished ({at[0].get('failed')}) | **no** |")
    else:
        sizes = ", ".join(f"{r['n']:,}" for r in results)
        lines.append(f"| 1M items | not run (sizes {sizes}) | — |")
    for r in good:
        for key, label in ROUNDS:
            ratio = r.get(key, {}).get("ratio")
            if ratio is not None:
                lines.append(f"| N = {r['n']:,} + 1 %{label}: incremental wall <= {TARGET_INCREMENTAL:.0%} of the full build's | {ratio:.1%} "
                             f"| {'yes' if ratio <= TARGET_INCREMENTAL else '**no**'} |")
    lines.append("")
    notes = []
    if noop and good:
        big = good[-1]
        runs = len(STEPS)  # one job for each step but the tiles (counted per shard), and the deal
        jobs = 3 * big["shards"] + runs  # an audit job, a pair tile and a caption job per shard
        note = (f"Not counted: Snakemake starts one Python process per job; a fresh process importing a pair-tile job's "
                f"modules takes {noop['wall']:.1f} s here, so the {jobs} jobs of the N = {big['n']:,} build (an audit job, "
                f"a pair tile and a caption job per shard, {runs} others) would add about {noop['wall'] * jobs:,.0f} s of process starts")
        inc = big.get("incremental") or {}
        if "ratio" in inc:
            rerun = len(inc["changed"]) + inc["tiles"] + (inc.get("changed_shards") or 0) + runs
            note += (f", and the {rerun} jobs of its incremental run (the changed shards' audit jobs, pair tiles and caption jobs, "
                     f"the {runs} others) about {noop['wall'] * rerun:,.0f} s")
        notes.append(note + ".")
    loads = ", ".join(f"N = {r['n']:,}: {r['load_start'][0]:.1f}" for r in results)
    notes.append(f"Load average (1 min) when each N started: {loads}. Whole run {time.perf_counter() - started:,.0f} s.")
    lines += notes
    return lines


ROUNDS = (("incremental", ""), ("distinct", " distinct"))
"""The incremental rounds at the largest N, in order: 1 % new items as planted (some near copies of
earlier contents), then 1 % more with no near copy of an earlier content."""


def incremental_lines(r: dict, key: str) -> list[str]:
    """The section of one incremental round (``key``: ``incremental`` or ``distinct``)."""
    i = r[key]
    title = ("1% new items" if key == "incremental" else "1% more new items, none a near copy of an earlier content")
    lines = [f"## Incremental: {title}, on the built N = {r['n']:,} repository", ""]
    if "ratio" not in i:
        return lines + [f"Not finished: {i.get('failed', 'no result')}.", ""]
    what = ("planted as in the full build, so some are near copies of earlier contents: their clusters grow and "
            "their tags merge, and rows of earlier items change" if key == "incremental" else
            "none a near copy of an earlier content, as a new folder of new images: no earlier item's row changes")
    lines += [
        f"{i['new_items']:,} new items (new contents; {what}) were added to the ingest manifest; `shards.split_ingest` with the "
        f"previous shard map put them in shard(s) {', '.join(i['changed'])} (new: {', '.join(i['new_shards']) or 'none'}; "
        "the same set `shards.assign` gives with the previous map). Rerun, as Snakemake would: the shard checkpoint, the "
        f"audit gather, the {i['tiles']} pair tiles that compare a changed shard, group, nsfw, filter, dedup, the deal "
        f"(a checkpoint), the caption jobs of the {i.get('changed_shards', '?')} shard(s) whose kept rows changed (by the "
        "digests in `deduped-index.json`; items whose caption inputs did not change take their captions from the shard's "
        "last ones), and every gather. Group, nsfw, filter, dedup and split copy each shard whose key (what its rows depend on) did not "
        "change from their last output: "
        + ", ".join(f"{step} {a} of {b}" for step, (a, b) in (i.get("reused") or {}).items())
        + f" shards. The changed shards' audit jobs (a decode) and the ingest scan are not measured (synthetic rows: {secs(i['synthetic_s'])}).",
        "",
        "| step | full build | incremental | share of the full build's wall |",
        "|---|---:|---:|---:|",
    ]
    for step in STEPS:
        a, b = r["steps"].get(step), i["steps"].get(step)
        if a and b:
            lines.append(f"| {step} | {secs(a['s'])} | {secs(b['s'])} | {b['s'] / r['wall']:.1%} |")
    lines.append(f"| **total** | **{secs(r['wall'])}** | **{secs(i['wall'])}** | **{i['ratio']:.1%}** |")
    if i.get("written"):
        w, rate = i["written"], i["copy_rate"]
        whole = w["manifests"] + w["kept"]
        lines += ["", f"The rerun wrote {sum(w.values()) / 1e9:.2f} GB: {w['manifests'] / 1e9:.2f} GB of whole manifests, "
                  f"{w['kept'] / 1e9:.2f} GB to the stages' kept copies, {w['other'] / 1e9:.2f} GB of per-shard files, part "
                  f"caches and stats. At this machine's rate for one file copy ({rate / 1e9:.2f} GB/s, the split manifest "
                  f"copied once), the whole manifests and kept copies alone take {whole / rate:.1f} s, "
                  f"{whole / rate / r['wall']:.1%} of the full build (each global step rewrites its whole output, "
                  "however few shards changed; its kept copy takes the shards written, appended in place, or the whole "
                  "output once the shards it no longer names are as large as the live ones)."]
    return lines + [""]


def write_section(out: Path, lines: list[str]) -> None:
    """Replace this benchmark's section of ``out`` (between its markers), or append it."""
    _results.write_section(out, BEGIN, END, lines)


def parse_sizes(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        part = part.strip().lower().replace("_", "")
        if not part:
            continue
        scale = 1_000_000 if part.endswith("m") else 1_000 if part.endswith("k") else 1
        out.append(int(float(part.rstrip("mk")) * scale))
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 10k and 100k (incremental at 100k)")
    parser.add_argument("--sizes", default="", help="comma-separated N (default 100000,1000000; 10k / 1M suffixes work)")
    parser.add_argument("--shard-size", type=int, default=0, help="contents per shard (default: params.yaml shards.size)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(HERE / "RESULTS.md"), help="file whose scale section is rewritten ('': none)")
    for hidden in ("--step", "--repo", "--json"):
        parser.add_argument(hidden, default="", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--tiles", default="all", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.shard_size:
        import yaml

        args.shard_size = int((yaml.safe_load((ROOT / "params.yaml").read_text()).get("shards") or {}).get("size", 5000))
    if args.step:
        sys.path.insert(0, str(ROOT / "src"))
        return run_step_here(args)

    sizes = parse_sizes(args.sizes) if args.sizes else ([10_000, 100_000] if args.quick else [100_000, 1_000_000])
    started = time.perf_counter()
    noop = None
    with contextlib.suppress(StepFailed, KeyError):
        t = time.perf_counter()
        got = run_step("noop", None, args)
        noop = {"wall": time.perf_counter() - t, "rss": got["rss"]}
    results = [build(n, args, incremental=(k == len(sizes) - 1)) for k, n in enumerate(sizes)]
    lines = report(results, argv, started, noop)
    print("\n".join(lines))
    if args.out:
        write_section(Path(args.out), lines)
        print(f"\nwrote the scale section of {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
