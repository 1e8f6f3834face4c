"""Share the built data through an S3 remote: `dvc push` to an S3-compatible server (moto's
server mode on loopback), then a fresh `git clone` + `dvc pull` gets the same bytes back,
`dvc repro` has nothing to do, and after `snakemake --touch` Snakemake agrees."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from conftest import moto_s3, run, snakemake

CLEAN = "Data and pipelines are up to date."
BUCKET = "trainset-remote"
PREFIX = "trainset"
# moto accepts any credentials; they go to .dvc/config.local, never into git
KEY_ID, SECRET = "testing-key-id", "testing-secret"


def set_credentials(project: Path) -> None:
    run(["dvc", "remote", "modify", "--local", "store", "access_key_id", KEY_ID], project)
    run(["dvc", "remote", "modify", "--local", "store", "secret_access_key", SECRET], project)


def tracked_outs(project: Path) -> list[str]:
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return sorted(out["path"] for stage in lock["stages"].values() for out in stage.get("outs", []))


def digests(project: Path, outs: list[str]) -> dict[str, str]:
    found = {}
    for top in outs:
        root = project / top
        paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in paths:
            found[path.relative_to(project).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def output(proc) -> str:
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def s3_endpoint():
    with moto_s3(BUCKET, KEY_ID, SECRET) as found:
        yield found


@pytest.fixture(scope="module")
def pushed(dvc_first_copy: Path, s3_endpoint) -> Path:
    """The demo built with `dvc repro` (a copy of the DVC tests' build), the remote configured and committed, and pushed."""
    endpoint, _ = s3_endpoint
    project = dvc_first_copy
    run(["dvc", "remote", "add", "-d", "store", f"s3://{BUCKET}/{PREFIX}"], project)
    run(["dvc", "remote", "modify", "store", "endpointurl", endpoint], project)
    set_credentials(project)
    run(["git", "add", "dvc.lock", ".dvc/config"], project)
    run(["git", "commit", "-qm", "built data, S3 remote"], project)
    run(["dvc", "push"], project)
    return project


@pytest.fixture(scope="module")
def clone(pushed: Path, tmp_path_factory) -> Path:
    """A fresh clone of the project repo: no data, no DVC cache, no .snakemake/ metadata."""
    dest = tmp_path_factory.mktemp("s3_clone") / "project"
    run(["git", "clone", "-q", str(pushed), str(dest)], pushed.parent)
    assert not (dest / "data").exists() and not (dest / ".snakemake").exists()
    set_credentials(dest)  # .dvc/config.local is not in git
    run(["dvc", "pull"], dest)
    return dest


def test_config_in_git_has_no_credentials(pushed: Path) -> None:
    committed = run(["git", "show", "HEAD:.dvc/config"], pushed).stdout
    assert f"s3://{BUCKET}/{PREFIX}" in committed and "endpointurl" in committed
    assert SECRET not in committed and KEY_ID not in committed
    assert run(["git", "status", "--porcelain"], pushed).stdout.strip() == ""


def test_push_stores_every_cached_object_in_the_bucket(pushed: Path, s3_endpoint) -> None:
    _, client = s3_endpoint
    keys = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{PREFIX}/"):
        keys.update(obj["Key"] for obj in page.get("Contents", []))
    cache = pushed / ".dvc" / "cache"
    cached = {f"{PREFIX}/{p.relative_to(cache).as_posix()}" for p in cache.rglob("*")
              if p.is_file() and p.parent.parent.name == "md5"}
    assert cached, "dvc repro cached nothing"
    assert cached <= keys, f"missing from the bucket: {sorted(cached - keys)[:5]}"
    # one object per tracked out at least (directory outs add a .dir listing)
    assert any(k.endswith(".dir") for k in keys)
    assert run(["dvc", "status", "--cloud"], pushed).stdout.strip() == "Cache and remote 'store' are in sync."


def test_pull_into_fresh_clone_is_byte_identical(pushed: Path, clone: Path) -> None:
    outs = tracked_outs(pushed)
    assert {"data/raw/demo", "data/manifests", "data/materialized", "data/export", "data/raw/demo_conversations",
            "data/conversations", "data/export-conversations"} <= set(outs)
    assert any(o.startswith("data/report/") for o in outs)
    original, pulled = digests(pushed, outs), digests(clone, outs)
    assert original and pulled == original
    assert "data/export-conversations/manifest.json" in pulled  # holds the git commit: same build, same bytes


def test_pulled_clone_needs_no_dvc_repro(clone: Path) -> None:
    assert run(["dvc", "status"], clone).stdout.strip() == CLEAN
    assert "Running stage" not in output(run(["dvc", "repro"], clone))
    assert run(["dvc", "status"], clone).stdout.strip() == CLEAN


def test_snakemake_accepts_pulled_outputs_after_touch(clone: Path) -> None:
    # A fresh clone has no .snakemake/ metadata and the pulled files' mtimes follow the order DVC
    # wrote them, so a plain `snakemake -n` plans to rebuild most jobs ("updated input files").
    # `snakemake --touch` marks the pulled outputs current, in dependency order, without running anything.
    before = digests(clone, tracked_outs(clone))
    snakemake(clone, "--touch")
    assert "Nothing to be done" in output(snakemake(clone, "-n"))
    assert "Nothing to be done" in output(snakemake(clone))
    assert digests(clone, tracked_outs(clone)) == before  # touching changed no bytes
    assert run(["dvc", "status"], clone).stdout.strip() == CLEAN
    assert "Running stage" not in output(run(["dvc", "repro"], clone))
