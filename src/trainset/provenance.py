"""What a result depends on: package code, library versions, git commit, host and time."""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import platform
import subprocess
from pathlib import Path

import PIL

from . import __version__

PACKAGE_DIR = Path(__file__).resolve().parent


@functools.lru_cache(maxsize=None)
def code_digest(*modules: str) -> str:
    """SHA-256 over the package's own source (all of it, or the named modules).

    Snakemake's code trigger sees only the scripts, not the library they call; rules pass
    this digest as a param so a change inside ``src/trainset`` reruns what it affects.
    """
    if modules:
        files = [PACKAGE_DIR / f"{m.replace('.', '/')}.py" for m in modules]
    else:
        files = sorted(p for p in PACKAGE_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    h = hashlib.sha256()
    for f in files:
        h.update(f.relative_to(PACKAGE_DIR).as_posix().encode())
        h.update(b"\0")
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def versions() -> dict[str, str]:
    return {"trainset": __version__, "pillow": PIL.__version__}


def params_digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_digests(paths) -> list[str]:
    """SHA-256 of each file's bytes (``missing:<path>`` for one that is not there): the files a
    result depends on besides its params (tag dictionaries, annotations, overrides)."""
    return [hashlib.sha256(Path(p).read_bytes()).hexdigest() if Path(p).is_file() else f"missing:{p}" for p in paths]


def git_commit(cwd: str | Path = ".") -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def git_dirty(cwd: str | Path = ".") -> bool | None:
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--", "params.yaml", "Snakefile", "rules", "scripts", "src", "dvc.yaml"],
            cwd=cwd, capture_output=True, text=True, check=True, timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(out.stdout.strip())


def run_info(seed: int, params: dict, cwd: str | Path = ".") -> dict:
    """Run metadata kept apart from the deterministic outputs."""
    return {
        "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "git_commit": git_commit(cwd),
        "git_dirty": git_dirty(cwd),
        "seed": seed,
        "params_digest": params_digest(params),
        "code_digest": code_digest(),
        "versions": versions(),
    }


def write_run_info(path: str | Path, params: dict) -> None:
    from . import atomic

    info = run_info(int(params.get("seed", 0)), params)
    atomic.write_text(path, json.dumps(info, indent=2) + "\n")
