"""Running the command-line tools the workflow sits on (git, DVC, Snakemake) as child processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def dvc(*args: str) -> list[str]:
    """A DVC command line for this interpreter's DVC (a dependency of trainset, so always there)."""
    return [sys.executable, "-m", "dvc", *args]


def snakemake(*args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", *args]


def run(cmd: list[str], cwd: str | Path, env: dict[str, str] | None = None,
        timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run ``cmd`` in ``cwd`` and capture its output; ``env`` adds to (not replaces) the environment.

    A tool that cannot start, or runs past ``timeout``, comes back as a failed process (returncode
    127 or 124) with the reason in stderr, so callers handle one kind of failure.
    """
    full_env = {**os.environ, **(env or {})}
    try:
        return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as exc:
        return subprocess.CompletedProcess(cmd, 127, "", f"{cmd[0]}: not found ({exc.strerror})")
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(cmd, 124, "", f"{' '.join(cmd)}: no answer within {timeout:g} s")


def last_line(proc: subprocess.CompletedProcess) -> str:
    """The last non-empty line a failed tool printed (its error, usually)."""
    lines = [line.strip() for line in (proc.stderr or proc.stdout or "").splitlines() if line.strip()]
    return lines[-1] if lines else f"exit status {proc.returncode}"
