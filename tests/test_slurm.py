"""The demo workflow through a real SLURM cluster: one node on localhost (tests/slurm_cluster.py, Debian's
slurm-wlm and munge), driven by `snakemake --profile profiles/slurm`, in small shards (14 contents). Every
job Snakemake runs (all but the `all` target) is an sbatch job that SLURM records as COMPLETED; the
outputs equal a local build's in the same shards byte for byte, and hold the unsharded build's rows; and
a new image reruns only the shard it lands in."""

from __future__ import annotations

import re
import shutil
import signal
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

import slurm_cluster
from conftest import REPO, copy_workflow, digests, run, set_params, snakemake
from trainset import manifest, schemas, shards

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def slurm(tmp_path_factory, request) -> slurm_cluster.Cluster:
    """The cluster, up for this module; stopped afterwards (by the PIDs it recorded) whatever happened."""
    found = slurm_cluster.problems()
    if found:
        pytest.fail("cannot start the test SLURM cluster: " + "; ".join(found), pytrace=False)
    root = tmp_path_factory.mktemp("slurm")
    request.addfinalizer(lambda: slurm_cluster.down(root))
    # SIGTERM (a CI timeout, `timeout`) would end pytest without teardown and leave the daemons running:
    # turned into an interrupt, it runs the finalizers above like Ctrl-C does
    previous = signal.signal(signal.SIGTERM, _interrupt)
    request.addfinalizer(lambda: signal.signal(signal.SIGTERM, previous))
    cluster = slurm_cluster.up(root)
    patch = pytest.MonkeyPatch()
    request.addfinalizer(patch.undo)
    patch.setenv("SLURM_CONF", str(cluster.conf))  # for Snakemake and the sbatch/squeue it calls
    return cluster


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def finished_jobs(log: str) -> Counter:
    """Jobs per rule that Snakemake saw finish (the plan grows after the shard checkpoint, so the
    first job stats table is not the whole plan)."""
    return Counter(re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", log))


def submitted(log: str) -> dict[str, str]:
    """SLURM job id -> rule, from Snakemake's submission lines (the log path names the rule)."""
    return dict(re.findall(r"submitted with SLURM jobid (\d+) \(log: \S*/slurm_logs/rule_(\w+)/", log))


SHARD_SIZE = 14  # the demo's 26 distinct contents in two shards, the last with room to spare
SHARDING = ("data/manifests/shards/", "data/manifests/shard-map.parquet",  # how the contents were dealt out
            "data/conversations/shards/", "data/conversations/shard-map.parquet")
MAIN_MANIFESTS = ("ingest", "audit", "pairs", "groups", "reference_pairs", "filtered", "deduped", "clusters",
                  "captioned", "split", "rejected")


# The plugin waits 10 s longer before each status query that finds no job ended (up to 180 s), and no
# setting changes that: in a stretch of the DAG where one job runs alone, a 15 s job is seen to end
# after about 33 s, and the test's build spent most of its time waiting. Test-only: this Snakemake
# process keeps Snakemake's own --seconds-between-status-checks (below, 2 s) throughout. The jobs, their
# submission and their status queries are the plugin's own.
STEADY_STATUS_CHECKS = """
import sys
import snakemake_executor_plugin_slurm as plugin
from snakemake.cli import main

def steady(self):
    return self.workflow.remote_execution_settings.seconds_between_status_checks

assert isinstance(getattr(plugin.Executor, "next_seconds_between_status_checks", None), property)
plugin.Executor.next_seconds_between_status_checks = property(steady, lambda self, value: None)
sys.exit(main())
"""


@pytest.fixture(scope="module")
def slurm_build(slurm, tmp_path_factory) -> tuple[Path, str]:
    """The whole demo built through the cluster in small shards: (project, Snakemake's output)."""
    project = copy_workflow(tmp_path_factory.mktemp("slurm_build") / "project")
    set_params(project, shards__size=SHARD_SIZE)
    proc = run([
        sys.executable, "-c", STEADY_STATUS_CHECKS, "--cores", "2",
        "--profile", str(REPO / "profiles" / "slurm"),
        # test-only overrides (memory and runtime: every rule says its own, see params.yaml shards and
        # resources). Twice as many jobs submitted as run: SLURM holds the rest PENDING and starts one the
        # moment a CPU frees, while the plugin only notices a job ended at its next status query.
        "--jobs", str(2 * slurm.cpus),
        # no accounting database: squeue, not sacct, answers the status queries, every 2 s (STEADY_STATUS_CHECKS)
        "--slurm-status-command", "squeue",
        "--slurm-init-seconds-before-status-checks", "1",
        "--seconds-between-status-checks", "2",
    ], project)
    return project, proc.stdout + proc.stderr


def test_every_job_ran_as_a_completed_slurm_job(slurm, slurm_build) -> None:
    _, log = slurm_build
    run_id = re.search(r"SLURM run ID: (\S+)", log).group(1)

    expected = finished_jobs(log)
    assert expected.pop("all") == 1  # the target: no job of its own
    assert {"shard", "audit_shard", "embed_shard", "pairs_shard", "group"} <= set(expected)
    assert expected["audit_shard"] == expected["embed_shard"] == expected["pairs_shard"] == expected["caption_shard"] == 2  # one per shard
    assert expected["conversations_sign"] >= 2  # the demo conversations in shards of 14
    by_job = submitted(log)
    assert Counter(by_job.values()) == expected, "every job that ran was submitted to SLURM, none ran locally"

    # slurmctld's record: the run's jobs, each named with the run id and its rule in the comment, COMPLETED
    held = {job["JobId"]: job for job in slurm.jobs() if job["Name"] == run_id}
    assert held.keys() == by_job.keys()
    for job_id, job in held.items():
        assert job["JobState"] == "COMPLETED", job
        assert re.fullmatch(rf"rule_{by_job[job_id]}(_wildcards_.+)?", job["Comment"]), job
    # the memory each job asked for: a shard job shards.mem_mb, every other job what params.yaml resources make
    # of its inputs' size (the demo's are a few MB); none fell back on the profile's default-resources
    shard_rules = {"audit_shard", "embed_shard", "pairs_shard", "caption_shard", "conversations_sign"}
    asked = {job_id: int(job["MinMemory"].removesuffix("M")) for job_id, job in held.items()}
    assert {asked[j] for j in asked if by_job[j] in shard_rules} == {4000}
    assert all(1000 <= asked[j] < 1100 for j in asked if by_job[j] not in shard_rules), asked
    # the job completion log, one line per finished job: the same jobs, exit code 0
    finished = [job for job in slurm.completed_log() if job["Name"] == run_id]
    assert sorted(job["JobId"] for job in finished) == sorted(by_job), "one completion record per job"
    assert {(job["JobState"], job["ExitCode"]) for job in finished} == {("COMPLETED", "0:0")}


@pytest.fixture(scope="module")
def local_sharded(tmp_path_factory) -> Path:
    """The demo in the same small shards, built locally (no executor)."""
    project = copy_workflow(tmp_path_factory.mktemp("local_sharded") / "project")
    set_params(project, shards__size=SHARD_SIZE)
    snakemake(project)
    return project


def test_small_shards_through_slurm_equal_the_same_shards_built_locally(slurm_build, local_sharded: Path) -> None:
    project, _ = slurm_build
    local = digests(local_sharded)
    assert len(local) > 50
    assert {f"data/manifests/{name}.parquet" for name in MAIN_MANIFESTS} <= local.keys()
    assert any(k.startswith("data/export/") for k in local) and any(k.startswith("data/export-conversations/") for k in local)
    assert digests(project) == local


def _rows(path: Path) -> pd.DataFrame:
    """A manifest's rows in one order, whatever shards wrote them (lists as tuples, to sort and compare)."""
    df = pd.read_parquet(path)
    for column in df.columns:
        if df[column].map(lambda v: hasattr(v, "__len__") and not isinstance(v, str)).any():
            df[column] = df[column].map(lambda v: tuple(v) if v is not None else None)
    keys = ["item_id"] if "item_id" in df.columns else [c for c in df.columns if df[c].dtype != object or c in ("a", "b", "sha256")]
    return df.sort_values(keys, ignore_index=True)


def test_small_shards_hold_the_rows_of_the_unsharded_build(local_sharded: Path, built_demo: Path) -> None:
    """Written by shard, a manifest's rows come shard by shard: the same rows as one shard gives,
    and the same exported files."""
    index = shards.read_index(local_sharded / "data/manifests/shards/index.json")
    assert len(index) == 2 and [v["contents"] for v in index.values()] == [SHARD_SIZE, 26 - SHARD_SIZE]
    assert len(shards.read_index(built_demo / "data/manifests/shards/index.json")) == 1
    for name in MAIN_MANIFESTS:
        ours, whole = _rows(local_sharded / f"data/manifests/{name}.parquet"), _rows(built_demo / f"data/manifests/{name}.parquet")
        assert len(ours) == len(whole) and (len(whole) or name == "reference_pairs"), name  # no reference set in the demo
        pd.testing.assert_frame_equal(ours, whole, obj=name)
    assert manifest.shard_groups(local_sharded / "data/manifests/split.parquet") == sorted(index)
    exported = {k: v for k, v in digests(local_sharded).items() if k.startswith("data/export/")}
    unsharded = {k: v for k, v in digests(built_demo).items() if k.startswith("data/export/")}
    assert exported.keys() == unsharded.keys()
    per_item = [k for k in exported if k.endswith((".png", ".jpg", ".jpeg", ".webp", ".txt"))]
    assert len(per_item) > 10 and all(exported[k] == unsharded[k] for k in per_item)


def _jobs(log: str, rule: str) -> list[str]:
    """The shards a per-shard rule ran for, from Snakemake's log."""
    return sorted(re.findall(rf"rule {rule}:\n(?:    .*\n)*?    wildcards: shard=(\d+)", log))


def test_a_new_image_reruns_only_the_shard_it_lands_in(slurm_build, tmp_path: Path) -> None:
    """On a copy of the sharded build, locally: only the last shard, which had room, is audited,
    embedded and searched again."""
    project = shutil.copytree(slurm_build[0], tmp_path / "project", symlinks=True)
    # a shrunk copy of a kept demo image, from a new source: it lands in the last shard, which had room
    kept = manifest.read(project / "data/manifests/split.parquet", schemas.SPLIT)
    original = kept[kept["source"] == "demo"].iloc[0]
    extra = tmp_path / "extra"
    extra.mkdir()
    with Image.open(original["path"] if Path(original["path"]).is_absolute() else project / original["path"]) as im:
        im.convert("RGB").resize((im.width * 9 // 10, im.height * 9 // 10)).save(extra / "copy.png")
    params = set_params(project, shards__size=SHARD_SIZE)
    params["sources"] = [{"name": "extra", "kind": "image_folder", "path": str(extra), "license": "CC0-1.0"}]
    set_params(project, sources=params["sources"])
    proc = snakemake(project, "data/export", "data/manifests/rejected.parquet")
    log = proc.stdout + proc.stderr
    assert _jobs(log, "audit_shard") == ["00001"]
    assert _jobs(log, "embed_shard") == ["00001"]
    assert _jobs(log, "pairs_shard") == ["00001"], "only the tile of the shard that changed"

    ingest = manifest.read(project / "data/manifests/ingest.parquet", schemas.INGEST)
    new_sha = ingest.loc[ingest["source"] == "extra", "sha256"].iloc[0]
    found = manifest.read(project / "data/manifests/pairs.parquet", schemas.PAIRS)
    assert {new_sha, original["sha256"]} in [{a, b} for a, b in zip(found["a"], found["b"])]
    split = manifest.read(project / "data/manifests/split.parquet", schemas.SPLIT)
    rejected = manifest.read(project / "data/manifests/rejected.parquet", schemas.REJECTED)
    assert sorted([*split["item_id"], *rejected["item_id"]]) == sorted(ingest["item_id"]), "every item kept or rejected, once"
