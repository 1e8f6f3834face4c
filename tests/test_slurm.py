"""The demo workflow through a real SLURM cluster: one node on localhost (tests/slurm_cluster.py, Debian's
slurm-wlm and munge), driven by `snakemake --profile profiles/slurm`. Every job Snakemake runs (all but the
`all` target) is an sbatch job that SLURM records as COMPLETED, and the outputs equal a local build's byte
for byte."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

import slurm_cluster
from conftest import REPO, copy_workflow, digests, snakemake

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def slurm(tmp_path_factory, request) -> slurm_cluster.Cluster:
    """The cluster, up for this module; stopped afterwards (by the PIDs it recorded) whatever happened."""
    found = slurm_cluster.problems()
    if found:
        pytest.fail("cannot start the test SLURM cluster: " + "; ".join(found), pytrace=False)
    root = tmp_path_factory.mktemp("slurm")
    request.addfinalizer(lambda: slurm_cluster.down(root))
    cluster = slurm_cluster.up(root)
    patch = pytest.MonkeyPatch()
    request.addfinalizer(patch.undo)
    patch.setenv("SLURM_CONF", str(cluster.conf))  # for Snakemake and the sbatch/squeue it calls
    return cluster


def finished_jobs(log: str) -> Counter:
    """Jobs per rule that Snakemake saw finish (the plan grows after the shard checkpoint, so the
    first job stats table is not the whole plan)."""
    return Counter(re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", log))


def submitted(log: str) -> dict[str, str]:
    """SLURM job id -> rule, from Snakemake's submission lines (the log path names the rule)."""
    return dict(re.findall(r"submitted with SLURM jobid (\d+) \(log: \S*/slurm_logs/rule_(\w+)/", log))


def test_demo_through_slurm_equals_the_local_build(slurm, built_demo: Path, tmp_path: Path) -> None:
    project = copy_workflow(tmp_path / "project")
    proc = snakemake(
        project,
        "--profile", str(REPO / "profiles" / "slurm"),
        # test-only overrides. Memory: one job per CPU fits the node (--cores 2: the multi-threaded rules
        # take two). Twice as many jobs submitted as run: SLURM holds the rest PENDING and starts one the
        # moment a CPU frees, while the plugin only notices a job ended at its next status query.
        "--default-resources", f"mem_mb={slurm.memory_mb // slurm.cpus}", "runtime=30",
        "--jobs", str(2 * slurm.cpus),
        # no accounting database: squeue, not sacct, answers the status queries; the plugin queries 2 s
        # after a job ended (default 40), then 10 s later each time nothing ended
        "--slurm-status-command", "squeue",
        "--slurm-init-seconds-before-status-checks", "2",
    )
    log = proc.stdout + proc.stderr
    run_id = re.search(r"SLURM run ID: (\S+)", log).group(1)

    expected = finished_jobs(log)
    assert expected.pop("all") == 1  # the target: no job of its own
    assert {"shard", "audit_shard", "embed_shard", "pairs_shard", "group"} <= set(expected)
    by_job = submitted(log)
    assert Counter(by_job.values()) == expected, "every job that ran was submitted to SLURM, none ran locally"

    # slurmctld's record: the run's jobs, each named with the run id and its rule in the comment, COMPLETED
    held = {job["JobId"]: job for job in slurm.jobs() if job["Name"] == run_id}
    assert held.keys() == by_job.keys()
    for job_id, job in held.items():
        assert job["JobState"] == "COMPLETED", job
        assert re.fullmatch(rf"rule_{by_job[job_id]}(_wildcards_.+)?", job["Comment"]), job
    # the job completion log, one line per finished job: the same jobs, exit code 0
    finished = [job for job in slurm.completed_log() if job["Name"] == run_id]
    assert sorted(job["JobId"] for job in finished) == sorted(by_job), "one completion record per job"
    assert {(job["JobState"], job["ExitCode"]) for job in finished} == {("COMPLETED", "0:0")}

    local = digests(built_demo)
    assert len(local) > 50
    assert digests(project) == local
