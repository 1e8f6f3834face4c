"""``trainset init DIR``: a new data repository with the workflow, git and DVC set up.

The workflow files come from :func:`trainset.workflow.root` (the copy inside an installed package, or
the source checkout). params.yaml is edited as text, line by line, so its comments survive; the
result is loaded back and checked before anything is written.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import yaml

from . import config, tools, workflow

GITIGNORE = (
    ".snakemake/",
    ".venv/",
    "dvc_plots/",
    "__pycache__/",
    # made by the workflow but not versioned (the outputs are DVC's: dvc.yaml)
    "/data/cache/",
    "/data/run/",
)

DVC_HEADER = """\
# trainset init: the workflow's code is the installed trainset package, not a folder of this
# repository, so no stage lists src/trainset as a dependency. Snakemake still sees a new trainset
# (every rule takes provenance.code_digest() as a param) but DVC does not: after upgrading trainset,
# `trainset status` shows what the new code reruns, and `dvc repro -f` rebuilds it (Snakemake inside
# each stage redoes only the jobs whose code digest changed).
"""

DEFAULT_LICENSE = "unknown"


class InitError(Exception):
    """The repository cannot be made as asked; nothing (or, for a failed commit, no more) was done."""


@dataclass
class InitResult:
    root: Path
    written: list[str] = field(default_factory=list)      # files written, relative to root
    unchanged: list[str] = field(default_factory=list)    # already there with the same content (--force)
    gitignore_added: list[str] = field(default_factory=list)
    committed: bool = False
    notes: list[str] = field(default_factory=list)


# --- params.yaml as text ----------------------------------------------------------------------

def _yaml_scalar(value: Any) -> str:
    """``value`` as a YAML flow scalar: plain where that reads back the same, else JSON-quoted."""
    if isinstance(value, str):
        if re.fullmatch(r"[A-Za-z0-9_./~-][A-Za-z0-9_./~ -]*", value) and not value.endswith(" ") \
                and yaml.safe_load(value) == value:
            return value
        return json.dumps(value)
    return json.dumps(value)


def _set_value(text: str, key: str, value: str, start: int = 0, end: int | None = None, indent: str = "") -> str:
    """Replace the value of the one line ``{indent}{key}: VALUE`` in ``text[start:end]``, keeping
    the line's comment in its column."""
    end = len(text) if end is None else end
    line = re.compile(rf"^{re.escape(indent)}{re.escape(key)}:([ \t]+)([^\s#][^\s]*)([ \t]*)(?=#|$)", re.M)
    hits = list(line.finditer(text, start, end))
    if len(hits) != 1:
        raise InitError(f"params.yaml: expected one line '{indent}{key}: ...', found {len(hits)}")
    m = hits[0]
    pad = m.group(3)
    if pad:  # keep a trailing comment where it was
        pad = " " * max(1, len(pad) - (len(value) - len(m.group(2))))
    return text[:m.start()] + f"{indent}{key}:{m.group(1)}{value}{pad}" + text[m.end():]


def _block(text: str, key: str) -> tuple[int, int]:
    """Where the top-level mapping ``key:`` starts and ends (the next top-level key, or the end)."""
    m = re.search(rf"^{re.escape(key)}:[ \t]*(#.*)?$", text, re.M)
    if not m:
        raise InitError(f"params.yaml: no top-level '{key}:' block")
    nxt = re.compile(r"^[A-Za-z_][^\n]*:", re.M).search(text, m.end())
    return m.end(), nxt.start() if nxt else len(text)


def _source_lines(entries: list[dict[str, Any]]) -> str:
    lines = []
    for entry in entries:
        first = True
        for key, value in entry.items():
            lines.append(f"  {'- ' if first else '  '}{key}: {_yaml_scalar(value)}")
            first = False
    return "\n".join(lines)


def edit_params(text: str, *, demo: bool, sources: list[dict[str, Any]]) -> str:
    """The shipped params.yaml with the demo switched on or off and ``sources`` listed; every other
    line (comments included) as it was. Checked by loading it back."""
    flag = "true" if demo else "false"
    out = _set_value(text, "demo", flag)
    start, end = _block(out, "conversations")
    out = _set_value(out, "demo", flag, start, end, indent="  ")
    if sources:
        m = re.search(r"^sources:[ \t]*\[\][ \t]*(#[^\n]*)?$", out, re.M)
        if not m:
            raise InitError("params.yaml: expected the line 'sources: []' to fill in")
        comment = f"  {m.group(1)}" if m.group(1) else ""
        out = out[:m.start()] + f"sources:{comment}\n{_source_lines(sources)}" + out[m.end():]
    check = yaml.safe_load(out)
    got = (check.get("demo"), (check.get("conversations") or {}).get("demo"), check.get("sources") or [])
    if got != (demo, demo, sources):
        raise InitError(f"params.yaml: the edit did not read back as intended (demo, conversations.demo, sources = {got})")
    return out


def source_entry(spec: str, root: Path, license: str = DEFAULT_LICENSE) -> dict[str, Any]:
    """``NAME=PATH`` -> an ``image_folder`` source. A relative PATH is taken from the current folder;
    it is written relative to ``root`` when inside it, else absolute."""
    name, sep, raw = spec.partition("=")
    if not sep or not name or not raw:
        raise InitError(f"--source {spec!r}: expected NAME=PATH")
    path = Path(os.path.abspath(Path(raw).expanduser()))
    root = Path(os.path.abspath(root))
    written = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
    return {"name": name, "kind": "image_folder", "path": written, "license": license,
            "generated": False, "weight": 1.0, "rating_scheme": "danbooru"}


# --- dvc.yaml as text -------------------------------------------------------------------------

def edit_dvc_yaml(text: str) -> str:
    """dvc.yaml without the ``src/...`` dependencies (an initialized repository has no src/: DVC fails
    on a missing dependency), a ``deps:`` left empty dropped, and a header saying what that means."""
    lines = [line for line in text.splitlines(keepends=True) if not re.match(r"\s*-\s*src/", line)]
    kept = []
    for i, line in enumerate(lines):
        if line.strip() == "deps:":
            indent = len(line) - len(line.lstrip())
            following = next((nxt for nxt in lines[i + 1:] if nxt.strip()), "")
            if len(following) - len(following.lstrip()) <= indent:
                continue
        kept.append(line)
    out = DVC_HEADER + "".join(kept)
    stages = (yaml.safe_load(out) or {}).get("stages") or {}
    left = [d for s in stages.values() for d in s.get("deps") or [] if str(d).startswith("src/")]
    if left or any("deps" in s and not s["deps"] for s in stages.values()):
        raise InitError(f"dvc.yaml: the src/ dependencies could not be dropped cleanly ({left})")
    return out


# --- the repository ---------------------------------------------------------------------------

def _workflow_files(src_root: Path) -> list[str]:
    """Every file ``init`` writes from the workflow, relative paths."""
    out = []
    for name in workflow.FILES:
        src = src_root / name
        if src.is_dir():
            out += sorted(p.relative_to(src_root).as_posix() for p in src.rglob("*")
                          if p.is_file() and not any(fnmatch(part, pat) for part in p.relative_to(src).parts
                                                     for pat in workflow.IGNORE))
        else:
            out.append(name)
    return out


def _contents(src_root: Path, demo: bool, sources: list[dict[str, Any]]) -> dict[str, bytes]:
    files = {rel: (src_root / rel).read_bytes() for rel in _workflow_files(src_root)}
    files["params.yaml"] = edit_params(files["params.yaml"].decode(), demo=demo, sources=sources).encode()
    files["dvc.yaml"] = edit_dvc_yaml(files["dvc.yaml"].decode()).encode()
    return files


def _git(root: Path, *args: str) -> None:
    proc = tools.run(["git", *args], root)
    if proc.returncode:
        raise InitError(f"git {' '.join(args)}: {tools.last_line(proc)}")


def _dvc(root: Path, *args: str) -> None:
    proc = tools.run(tools.dvc(*args), root, env={"DVC_NO_ANALYTICS": "1"})  # quiet before the config says so
    if proc.returncode:
        raise InitError(f"dvc {' '.join(args)}: {tools.last_line(proc)}")


def init(dest: str | Path, *, demo: bool = False, sources: list[str] | tuple[str, ...] = (),
         license: str = DEFAULT_LICENSE, force: bool = False, commit: bool = False) -> InitResult:
    """Write the workflow into ``dest`` and make it a git + DVC repository (files staged, committed
    only with ``commit``). ``sources`` are ``NAME=PATH`` image folders."""
    root = Path(dest)
    if root.exists() and not root.is_dir():
        raise InitError(f"{root}: exists and is not a folder")
    if root.is_dir() and any(root.iterdir()) and not force:
        raise InitError(f"{root}: not empty; pass --force to write the workflow into it (existing files are never overwritten)")
    entries = [source_entry(spec, root, license) for spec in sources]
    files = _contents(workflow.root(), demo, entries)
    try:
        effective = config.sources_from_params(yaml.safe_load(files["params.yaml"]), root)
    except config.ConfigError as exc:
        raise InitError(str(exc)) from exc
    result = InitResult(root=root)
    conflicts = []
    for rel, data in files.items():
        target = root / rel
        if target.exists() or target.is_symlink():
            if target.is_file() and target.read_bytes() == data:
                result.unchanged.append(rel)
            else:
                conflicts.append(rel)
    if conflicts:
        raise InitError(f"{root}: would overwrite {', '.join(conflicts[:10])}"
                        f"{f' and {len(conflicts) - 10} more' if len(conflicts) > 10 else ''}; move them away first")

    for rel, data in files.items():
        if rel in result.unchanged:
            continue
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        result.written.append(rel)
    result.gitignore_added = _merge_gitignore(root / ".gitignore")
    for source in effective:
        if not source.built_by_workflow and not source.path.exists():
            result.notes.append(f"source {source.name!r}: {source.path} does not exist yet")
    if not effective:
        result.notes.append("no sources: add your folders under 'sources' in params.yaml (or use --source NAME=PATH)")

    _git(root, "init", "-q")
    if not (root / ".dvc").is_dir():
        _dvc(root, "init", "-q")
    _dvc(root, "config", "core.analytics", "false")
    staged = sorted(files) + [".gitignore"] + [p for p in (".dvcignore", ".dvc/config", ".dvc/.gitignore") if (root / p).exists()]
    _git(root, "add", "--", *staged)
    if commit:
        try:
            _git(root, "commit", "-q", "-m", "trainset init")
        except InitError as exc:
            raise InitError(f"{exc} (the files are written and staged; commit them once git can)") from exc
        result.committed = True
    return result


def _merge_gitignore(path: Path) -> list[str]:
    """Add the lines of :data:`GITIGNORE` that ``path`` lacks; its own lines stay."""
    existing = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    missing = [line for line in GITIGNORE if line not in existing]
    if missing:
        text = "\n".join(existing)
        head = f"{text}\n" if text else ""
        path.write_text(f"{head}# trainset\n" + "\n".join(missing) + "\n", encoding="utf-8")
    return missing


def format_result(result: InitResult) -> str:
    lines = [f"{result.root}: trainset data repository ({len(result.written)} files written"
             + (f", {len(result.unchanged)} already there" if result.unchanged else "") + ")"]
    lines.append("git: files staged and committed" if result.committed else
                 "git: files staged; commit them with: git commit -m 'trainset init'")
    lines += [f"note: {note}" for note in result.notes]
    lines.append(f"next: cd {result.root} && snakemake --cores all   (or: dvc repro)")
    return "\n".join(lines)
