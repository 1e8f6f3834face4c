"""S3 as Snakemake's default storage, the mode profiles/kubernetes uses where pods share no filesystem:
the demo (images and conversations) built with `--default-storage-provider s3` against a real
S3-compatible server (moto's server mode on loopback), with the local executor. Every rule output is
an object in the bucket (each job fetches its inputs from it and uploads its outputs to it), the
objects hold the same bytes as a plain local build (`built_demo`), and a second run finds everything
up to date from the bucket alone.

What stays on the local disk: the raw sources (data/raw/demo, data/raw/demo_conversations,
data/materialized: local() in rules/raw.smk and rules/conversations.smk, since the stages read images
and conversation files by the paths the sources and manifests record), takedown.txt (a file of the
repository), and the side files rules name in params (caches under data/cache, stats under data/run,
data/manifests/shard-map.parquet, the conversation dedup index, data/run/run-info.json)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from conftest import copy_workflow, digests, moto_s3, snakemake

pytestmark = pytest.mark.e2e

BUCKET = "trainset-storage"
PREFIX = "trainset"
KEY_ID, SECRET = "testing-key-id", "testing-secret"  # moto accepts any credentials
# on the local disk even with S3 storage: the raw sources (local()), and state the rules keep across runs
# under paths given as params (the shard map, the conversation dedup index)
LOCAL_ONLY = ("data/raw/demo/", "data/raw/demo_conversations/", "data/manifests/shard-map.parquet",
              "data/conversations/shard-map.parquet", "data/conversations/dedup-index/")
MANIFESTS = ("ingest", "unmatched_records", "audit", "groups", "pairs", "reference_pairs", "nsfw_scores",
             "filtered", "deduped", "clusters", "captioned", "split", "split_moves", "rejected")


def output(proc) -> str:
    return proc.stdout + proc.stderr


def keys(client) -> dict[str, int]:
    """Every object under the prefix: its path in the workflow -> size."""
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{PREFIX}/"):
        found.update({obj["Key"].removeprefix(f"{PREFIX}/"): obj["Size"] for obj in page.get("Contents", [])})
    return found


def fetch(client, path: str) -> bytes:
    return client.get_object(Bucket=BUCKET, Key=f"{PREFIX}/{path}")["Body"].read()


def bucket_digests(client) -> dict[str, str]:
    """conftest.digests() of the bucket: SHA-256 of every object but directory outputs' timestamps."""
    found = {}
    for path in keys(client):
        if path.endswith(".snakemake_timestamp"):
            continue
        data = fetch(client, path)
        if path.endswith("/manifest.json"):  # as conftest.digests: without the git commit
            data = json.dumps({k: v for k, v in json.loads(data).items() if k != "git_commit"}, sort_keys=True).encode()
        found[path] = hashlib.sha256(data).hexdigest()
    return found


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server with one empty bucket, and the Snakemake options that use it."""
    with moto_s3(BUCKET, KEY_ID, SECRET) as (endpoint, client):
        # after any targets: each --storage-s3-* option takes one or more values
        options = ("--default-storage-provider", "s3", "--default-storage-prefix", f"s3://{BUCKET}/{PREFIX}",
                   "--storage-s3-endpoint-url", endpoint, "--storage-s3-access-key", KEY_ID,
                   "--storage-s3-secret-key", SECRET)
        yield client, options


@pytest.fixture(scope="module")
def s3_build(s3, tmp_path_factory):
    """The whole demo built with S3 as the default storage: (project, S3 client, Snakemake's output)."""
    client, options = s3
    project = copy_workflow(tmp_path_factory.mktemp("s3_storage") / "project")
    proc = snakemake(project, *options)
    return project, client, output(proc)


def test_outputs_are_objects_in_the_bucket(s3_build) -> None:
    project, client, log = s3_build
    stored = keys(client)
    assert "Storing in storage: s3://" in log and "(retrieve from storage)" in log
    for name in MANIFESTS:
        assert f"data/manifests/{name}.parquet" in stored, name
    assert "data/manifests/shards/index.json" in stored  # the checkpoint's outputs too
    assert any(k.startswith("data/manifests/shards/ingest/") and k.endswith(".parquet") for k in stored)
    assert any(k.startswith("data/manifests/shards/pairs/") for k in stored)
    assert {"data/export/manifest.parquet", "data/export/dataset_config.toml", "data/export/ATTRIBUTION.md",
            "data/report/dataset-report.md", "data/report/metrics.json", "data/report/html/index.html",
            "data/report/plots/balance.csv", "data/conversations/split.parquet",
            "data/export-conversations/manifest.json", "data/report/conversations-report.md"} <= set(stored)
    assert all(size > 0 for k, size in stored.items() if k.endswith(".parquet"))
    assert not any(k.startswith(LOCAL_ONLY) for k in stored)
    # the outputs went to the bucket, not to the working directory
    for out in ("data/manifests/split.parquet", "data/export", "data/report", "data/conversations/split.parquet",
                "data/export-conversations"):
        assert not (project / out).exists(), out
    assert (project / "data" / "raw" / "demo").is_dir()  # local(): the stages read images by path
    assert (project / "data" / "run" / "run-info.json").is_file()  # onsuccess: local


def test_bucket_holds_the_bytes_of_a_local_build(s3_build, built_demo: Path) -> None:
    project, client, _ = s3_build
    stored = bucket_digests(client)
    expected = digests(built_demo)
    local = {k: v for k, v in expected.items() if not k.startswith(LOCAL_ONLY)}
    assert len(local) > 100
    # what stays on the local disk is the local build's too
    assert {k: v for k, v in digests(project).items() if k.startswith(LOCAL_ONLY)} == \
        {k: v for k, v in expected.items() if k.startswith(LOCAL_ONLY)}
    # every tracked output of the local build is an object with the same bytes ...
    assert {k: stored.get(k) for k in local} == local
    # ... and every other object too (per-shard stats under data/run)
    extra = set(stored) - set(local)
    assert extra and all(k.startswith("data/run/shards/") for k in extra), sorted(extra)
    assert all(stored[k] == hashlib.sha256((built_demo / k).read_bytes()).hexdigest() for k in extra)
    # the Kohya config names the export by its path in the workflow, not by the job's local copy
    assert b".snakemake" not in fetch(client, "data/export/dataset_config.toml")


def test_second_run_is_up_to_date_from_the_bucket(s3_build, s3) -> None:
    project, client, _ = s3_build
    _, options = s3
    before = bucket_digests(client)
    log = output(snakemake(project, *options))
    assert "Nothing to be done" in log, log[-3000:]
    assert bucket_digests(client) == before
