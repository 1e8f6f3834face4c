"""A single-node SLURM cluster on localhost for the tests, from Debian's `slurm-wlm` and `munge` (`.ci/run`
installs them when missing): the daemons started directly (no systemd) as children of this process, their
configuration, key, state, spool, logs and PIDs in one folder, no accounting database. Finished jobs, with
their final state, are listed by `JobCompType=jobcomp/filetxt` and, for `MinJobAge` seconds, by `squeue`
(which the executor plugin polls).

slurmd runs configless (it fetches slurm.conf from slurmctld and links it at /run/slurm/conf): the job
steps Snakemake's SLURM plugin starts inside each job drop every `SLURM_*` variable, `SLURM_CONF` too, so
`srun` there finds the configuration only where a cluster node keeps it. slurmd authenticates that fetch
before it has any configuration, so through munge's default socket: munged listens on
/run/munge/munge.socket.2. Those two are the only paths outside the folder; `down` removes what `up` made
there. Needs root (slurmd does).

    python tests/slurm_cluster.py up DIR     # prints `export SLURM_CONF=DIR/slurm.conf`
    python tests/slurm_cluster.py down DIR   # cancels the jobs, stops the daemons DIR/pids lists
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PACKAGES = "slurm-wlm munge"
TOOLS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scancel", "scontrol", "sinfo")
MUNGE_RUN = Path("/run/munge")    # munged's default socket folder: slurmd fetches its configuration through it
SLURM_RUN = Path("/run/slurm")    # slurmd links its cached configuration at conf/ here; srun in a job reads it
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")


def problems() -> list[str]:
    """Why a cluster cannot start here (empty when it can)."""
    found = []
    missing = [tool for tool in TOOLS if not shutil.which(tool)]
    if missing:
        found.append(f"SLURM is not installed (missing {', '.join(missing)}): apt-get install {PACKAGES} (.ci/run installs them when missing)")
    if os.geteuid() != 0:
        found.append("the SLURM daemons must run as root (slurmd starts every job as its user)")
    if SYSTEM_CONF.exists():
        found.append(f"{SYSTEM_CONF} exists: this machine has a SLURM configuration of its own, which srun inside the jobs would read")
    link = SLURM_RUN / "conf"
    if link.is_symlink() and not _running("slurmd"):
        link.unlink()  # left by a cluster whose slurmd was killed: nothing reads it
    if link.exists():
        found.append(f"{link} exists: another configless slurmd runs here")
    if _answers(MUNGE_RUN / "munge.socket.2"):
        found.append(f"a munged already listens on {MUNGE_RUN / 'munge.socket.2'}")
    return found


def _running(name: str) -> bool:
    """Some process of this machine runs ``name``."""
    return any(_alive(int(entry.name), name) for entry in Path("/proc").iterdir() if entry.name.isdigit())


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_hardware() -> dict[str, int]:
    """The CPU count and memory `slurmd -C` measures: the node offers exactly these."""
    line = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    fields = dict(re.findall(r"(\w+)=(\S+)", line))
    return {"cpus": int(fields["CPUs"]), "memory_mb": int(fields["RealMemory"])}


def slurm_conf(root: Path, port: int, cpus: int, memory_mb: int) -> str:
    # CPUs= without sockets/cores/threads: every CPU is a core that CR_Core_Memory can hand out alone.
    return f"""\
ClusterName=trainset-test
SlurmctldHost=localhost
SlurmctldPort={port}
SlurmdPort={free_port()}
SlurmctldParameters=enable_configless
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU={max(100, memory_mb // cpus // 2)}
MailProg=/bin/true
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/jobcomp.txt
MinJobAge=3600
ReturnToService=2
MpiDefault=none
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class Cluster:
    root: Path
    cpus: int
    memory_mb: int

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def jobcomp(self) -> Path:
        return self.root / "jobcomp.txt"

    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *cmd: str) -> str:
        return subprocess.run(cmd, env=self.env(), capture_output=True, text=True, check=True, timeout=60).stdout

    def completed_log(self) -> list[dict[str, str]]:
        """One record per finished job (JobId, Name, JobState, ExitCode, ...), from the job completion log."""
        if not self.jobcomp.exists():
            return []
        return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in self.jobcomp.read_text().splitlines() if line.strip()]

    def jobs(self) -> list[dict[str, str]]:
        """Every job slurmctld still holds (finished ones for MinJobAge seconds): id, state, name, the memory
        it asked for (``--mem``, e.g. ``1001M``), comment."""
        keys = ("JobId", "JobState", "Name", "MinMemory", "Comment")
        rows = self.run("squeue", "--noheader", "--states=all", "--format=%i|%T|%j|%m|%k").splitlines()
        return [dict(zip(keys, row.split("|", 4))) for row in rows if row.strip()]


def _log_tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


def _wait(what: str, ready, timeout: float, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.25)
    raise RuntimeError(f"{what} not ready after {timeout:.0f} s\n" + "\n".join(f"--- {p}\n{_log_tail(p)}" for p in logs))


def _start(root: Path, cmd: list[str], env: dict[str, str]) -> None:
    name = Path(cmd[0]).name
    with open(root / f"{name}.err", "ab") as err:
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    with open(root / "pids", "a") as f:
        f.write(f"{proc.pid} {name}\n")


def _made(root: Path, path: Path) -> None:
    """Create ``path`` (a folder under /run) and note it, so ``down`` removes it again."""
    if not path.exists():
        path.mkdir(mode=0o755)
        with open(root / "made", "a") as f:
            f.write(f"{path}\n")


def _quiet(cmd: list[str], env: dict[str, str]) -> str:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=10).stdout.strip()


def up(root: Path, timeout: float = 60.0) -> Cluster:
    """Start munged, slurmctld and slurmd (in that order) with their files under ``root``; wait until the
    node is idle. On any failure the daemons already started are stopped before the error is raised."""
    found = problems()
    if found:
        raise RuntimeError("cannot start a SLURM cluster here: " + "; ".join(found))
    root = Path(root).resolve()
    for sub in ("munge", "state", "spool"):
        (root / sub).mkdir(mode=0o755, parents=True, exist_ok=True)
    cluster = Cluster(root, **node_hardware())
    port = free_port()
    cluster.conf.write_text(slurm_conf(root, port, cluster.cpus, cluster.memory_mb))
    env = cluster.env()
    try:
        _made(root, MUNGE_RUN)
        _made(root, SLURM_RUN)
        key = root / "munge" / "munge.key"
        subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True, capture_output=True)
        _start(root, ["munged", "--foreground", "--force", f"--key-file={key}", f"--pid-file={root}/munge/munged.pid",
                      f"--log-file={root}/munged.log", f"--seed-file={root}/munge/munged.seed"], env)
        _wait("munged", lambda: _answers(MUNGE_RUN / "munge.socket.2"), timeout, [root / "munged.log", root / "munged.err"])
        _start(root, ["slurmctld", "-D", "-f", str(cluster.conf)], env)
        _wait("slurmctld", lambda: "UP" in _quiet(["scontrol", "ping"], env), timeout, [root / "slurmctld.log", root / "slurmctld.err"])
        slurmd_env = {k: v for k, v in env.items() if k != "SLURM_CONF"}  # configless: the configuration comes from slurmctld
        _start(root, ["slurmd", "-D", "-N", "localhost", f"--conf-server=localhost:{port}"], slurmd_env)
        _wait("slurmd (node localhost idle)", lambda: _quiet(["sinfo", "--noheader", "--format=%t"], env) == "idle",
              timeout, [root / "slurmd.log", root / "slurmd.err", root / "slurmctld.log"])
    except BaseException:
        down(root)
        raise
    return cluster


def _alive(pid: int, name: str) -> bool:
    """``pid`` still runs ``name`` (not a zombie, not a new process that reused the number)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    comm, state = re.match(r"\d+ \((.*)\) (\S)", stat).groups()
    return comm == name[:15] and state != "Z"


def _stop(pid: int, name: str, timeout: float) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` s; reaped when it is our child."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not _alive(pid, name):
            break
        os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            if not _alive(pid, name):
                break
            time.sleep(0.1)


def down(root: Path, timeout: float = 30.0) -> None:
    """Cancel every job still queued or running, stop exactly the daemons ``up`` recorded in ``root/pids``
    (slurmd, slurmctld, munged: reverse start order), and remove what ``up`` made under /run."""
    root = Path(root).resolve()
    env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf")}
    pids = root / "pids"
    started = [line.split() for line in pids.read_text().splitlines() if line.strip()] if pids.exists() else []
    if any(name == "slurmctld" for _, name in started):
        try:
            active = ["squeue", "--noheader", "--states=PD,R,CG,S", "--format=%i"]
            if _quiet(active, env):
                subprocess.run(["scancel", *_quiet(active, env).split()], env=env, capture_output=True, timeout=10)
                deadline = time.monotonic() + timeout
                while _quiet(active, env) and time.monotonic() < deadline:
                    time.sleep(0.5)
        except (OSError, subprocess.SubprocessError):
            pass  # slurmctld does not answer: stop the daemons anyway
    for pid, name in reversed(started):
        _stop(int(pid), name, timeout)
    pids.unlink(missing_ok=True)
    link = SLURM_RUN / "conf"
    if link.is_symlink() and os.readlink(link).startswith(str(root)):
        link.unlink()
    made = root / "made"
    for path in reversed(made.read_text().split() if made.exists() else []):
        if Path(path).is_dir() and not any(Path(path).iterdir()):
            Path(path).rmdir()
    made.unlink(missing_ok=True)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("up", "down"):
        sys.exit(f"usage: {sys.argv[0]} up|down DIR")
    if sys.argv[1] == "up":
        print(f"export SLURM_CONF={up(Path(sys.argv[2])).conf}")
    else:
        down(Path(sys.argv[2]))
