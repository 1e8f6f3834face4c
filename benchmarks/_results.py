"""benchmarks/RESULTS.md: each benchmark rewrites its own section, between its markers."""

from __future__ import annotations

import contextlib
import datetime
import platform
import shlex
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def total_memory() -> int:
    """Physical memory in bytes (``/proc/meminfo``; 16 GiB when unknown)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 16 * 2**30


def run_line(script: str, argv: list[str]) -> str:
    """The command as run, when, and at which commit: the first line of a benchmark's section."""
    commit = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                            capture_output=True, text=True).stdout.strip() or "?"
    return (f"`{shlex.join(['python', script, *argv])}` — "
            f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, trainset `{commit}`")


def write_section(out: Path, begin: str, end: str, lines: list[str]) -> None:
    """Replace the section of ``out`` between ``begin`` and ``end``, or append it."""
    text = out.read_text() if out.exists() else ""
    block = "\n".join([begin, *lines, end]) + "\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        text = head + block + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + block
    out.write_text(text)
