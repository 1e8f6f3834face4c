"""Shared fixtures: a throw-away copy of the workflow, and a way to run Snakemake in it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from filelock import FileLock

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ("Snakefile", "params.yaml", "dvc.yaml", "takedown.txt", "rules", "scripts", "src")


@contextlib.contextmanager
def moto_s3(bucket: str, key_id: str, secret: str):
    """moto's S3 server (a real HTTP server) on a free loopback port with one empty bucket:
    ``(endpoint, boto3 client)``; stopped on exit."""
    import boto3  # noqa: PLC0415
    import moto.server as moto_server  # noqa: PLC0415

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per S3 request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id=key_id, aws_secret_access_key=secret)
        client.create_bucket(Bucket=bucket)
        yield endpoint, client
    finally:
        server.stop()


def copy_workflow(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, dest / name)
    return dest


def tool_env() -> dict[str, str]:
    """Environment for child tools: the venv's bin first, DVC quiet and offline."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    env.setdefault("GIT_AUTHOR_NAME", "trainset tests")
    env.setdefault("GIT_AUTHOR_EMAIL", "tests@trainset.invalid")
    env.setdefault("GIT_COMMITTER_NAME", "trainset tests")
    env.setdefault("GIT_COMMITTER_EMAIL", "tests@trainset.invalid")
    return env


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=tool_env(), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc


def snakemake(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "snakemake", "--cores", "2", *args], cwd, check=check)


IMAGE_TARGETS = ("data/export", "data/report/dataset-report.md", "data/report/metrics.json")
"""The image half of the workflow: tests about images need not build the conversations too."""


def snakemake_images(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return snakemake(cwd, *args, *IMAGE_TARGETS, check=check)


# The outputs DVC tracks: what two builds of the same workflow must agree on byte for byte.
TRACKED = ("data/raw/demo", "data/manifests", "data/export", "data/report",
           "data/raw/demo_conversations", "data/conversations", "data/export-conversations")


def digests(project: Path) -> dict[str, str]:
    """SHA-256 of every tracked output file, by path (a manifest.json without its git commit)."""
    out = {}
    for top in TRACKED:
        for path in sorted((project / top).rglob("*")):
            if path.is_file() and path.name != ".snakemake_timestamp":
                data = path.read_bytes()
                if path.name == "manifest.json":  # names the git commit, which differs between repos
                    data = json.dumps({k: v for k, v in json.loads(data).items() if k != "git_commit"}, sort_keys=True).encode()
                out[path.relative_to(project).as_posix()] = hashlib.sha256(data).hexdigest()
    return out


def built_once(tmp_path_factory, name: str, build) -> Path:
    """``build(project)`` run once per test session, even across pytest-xdist workers: the first to come
    builds under a file lock in the session's shared temporary folder, the others wait and reuse it."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # every worker's basetemp sits in the one folder of this run
    root = base / f"shared-{name}"
    with FileLock(f"{root}.lock"):
        done = root / "built"
        if not done.exists():
            shutil.rmtree(root, ignore_errors=True)
            project = copy_workflow(root / "project")
            build(project)
            done.touch()
    return root / "project"


@pytest.fixture(scope="session")
def built_demo(tmp_path_factory) -> Path:
    """The whole workflow (images and conversations) built once on the demo data, shared by the end-to-end
    tests. Read-only: a test that changes it works on a copy, and a Snakemake run there takes no lock
    (--nolock), so that a copy made meanwhile is not locked."""
    return built_once(tmp_path_factory, "demo", snakemake)


def init_repo(project: Path) -> None:
    """Make ``project`` a git + DVC repository with the workflow committed."""
    (project / ".gitignore").write_text("/data/*\n.snakemake/\n")
    run(["git", "init", "-q"], project)
    run(["dvc", "init", "-q"], project)
    run(["dvc", "config", "core.analytics", "false"], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "workflow"], project)


def _dvc_repro(project: Path) -> None:
    init_repo(project)
    run(["dvc", "repro"], project)
    shutil.copytree(project, project.parent / "for-remote", symlinks=True)


@pytest.fixture(scope="session")
def dvc_first(tmp_path_factory) -> Path:
    """The demo built once by `dvc repro` in a git + DVC repository (the DVC tests')."""
    return built_once(tmp_path_factory, "dvc_first", _dvc_repro)


@pytest.fixture(scope="session")
def dvc_first_copy(tmp_path_factory) -> Path:
    """A copy of `dvc_first`, made before any test ran there (the S3 remote tests', run meanwhile on
    another pytest-xdist worker)."""
    return built_once(tmp_path_factory, "dvc_first", _dvc_repro).parent / "for-remote"


def set_params(project: Path, **changes) -> dict:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for dotted, value in changes.items():
        node = params
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node[key]
        node[leaf] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return params


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return copy_workflow(tmp_path / "project")


def pytest_collection_modifyitems(items):
    """Modules with long builds first (the end-to-end ones, then those of the shared builds), so that
    the pytest-xdist workers (`--dist loadfile`: a module's tests on one) finish together."""
    cost = {}
    for item in items:
        rank = 0 if item.get_closest_marker("e2e") else 1 if {"built_demo", "dvc_first", "dvc_first_copy"} & set(item.fixturenames) else 2
        cost[item.path] = min(cost.get(item.path, 2), rank)
    items.sort(key=lambda item: cost[item.path])


def pytest_sessionfinish(session, exitstatus):
    """Under CI=true a skipped test is a failure: CI installs everything the suite needs."""
    if os.environ.get("CI", "").lower() != "true":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if skipped and session.exitstatus == 0:
        reporter.write_line(f"CI=true: {len(skipped)} test(s) skipped; every test must run in CI", red=True)
        session.exitstatus = 1
