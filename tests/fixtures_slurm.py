"""A real single-node Slurm on 127.0.0.1 (Debian's slurm-wlm and munge) for the tests of the runner under
Slurm: the fixture installs the packages when they are missing, starts munged, slurmctld and slurmd with a
private config, state and ports, and stops them by pid. No mock: the jobs run under the real daemons.

Import the fixture into a test module with ``from tests.fixtures_slurm import slurm``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests.apt_packages import ensure_installed
from tests.fixtures_rclone import free_port

PACKAGES = ("slurm-wlm", "munge")


def _install() -> None:
    ensure_installed(PACKAGES, ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol"),
                     "the Slurm tests need the real daemons")


@dataclass
class Slurm:
    root: Path
    env: dict[str, str]  # for sbatch, squeue, scontrol: SLURM_CONF names this cluster's config

    def run(self, *args: str) -> str:
        proc = subprocess.run(list(args), capture_output=True, text=True, env=self.env, timeout=60)
        assert proc.returncode == 0, f"{' '.join(args)} exited {proc.returncode}: {proc.stderr}"
        return proc.stdout

    def submit(self, script: Path, *options: str, args: tuple[str, ...] = (), env: dict[str, str] | None = None) -> str:
        """``sbatch`` from the repository (the job starts in the submit directory); the job id."""
        proc = subprocess.run(["sbatch", "--parsable", *options, str(script), *args], capture_output=True, text=True,
                              env={**self.env, **(env or {})}, cwd=Path(__file__).resolve().parents[1], timeout=60)
        assert proc.returncode == 0, f"sbatch exited {proc.returncode}: {proc.stderr}"
        return proc.stdout.strip().split(";")[0]

    def job_field(self, job_id: str, field: str) -> str:
        out = self.run("scontrol", "show", "job", "--oneliner", job_id)
        return next(w.split("=", 1)[1] for w in out.split() if w.startswith(field + "="))

    def wait_done(self, job_id: str, timeout: float = 180) -> str:
        """Wait until the job has ended; its JobState (COMPLETED, FAILED, ...)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.job_field(job_id, "JobState")
            if state not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "SUSPENDED"):
                return state
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} still {state} after {timeout} s; slurmctld log:\n"
                             f"{(self.root / 'slurmctld.log').read_text()[-3000:]}")


def _config(root: Path, host: str) -> str:
    return f"""ClusterName=linnaeus-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge.socket
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
KillWait=5
MinJobAge=600
NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count() or 1} RealMemory=1000 State=UNKNOWN
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def _stop(pidfile: Path) -> None:
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        end = time.monotonic() + wait_s
        while time.monotonic() < end:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slurm]:
    _install()
    root = tmp_path_factory.mktemp("slurm")
    for d in ("state", "spool"):
        (root / d).mkdir()
    host = socket.gethostname().split(".")[0]
    conf = root / "slurm.conf"
    conf.write_text(_config(root, host))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    started: list[Path] = []
    try:
        subprocess.run(["munged", f"--socket={root}/munge.socket", f"--pid-file={root}/munged.pid",
                        f"--log-file={root}/munged.log", f"--seed-file={root}/munge.seed", "--force"],
                       check=True, capture_output=True, timeout=30)
        started.append(root / "munged.pid")
        for daemon, pidfile in (("slurmctld", "slurmctld.pid"), ("slurmd", "slurmd.pid")):
            subprocess.run([daemon, "-f", str(conf)] + (["-c"] if daemon == "slurmctld" else []), check=True,
                           capture_output=True, env=env, timeout=30)
            started.append(root / pidfile)
        cluster = Slurm(root, env)
        deadline = time.monotonic() + 60
        while cluster.run("sinfo", "--noheader", "--format", "%t").strip() not in ("idle", "mix", "alloc"):
            assert time.monotonic() < deadline, f"the Slurm node never came up:\n{(root / 'slurmd.log').read_text()}"
            time.sleep(0.3)
        yield cluster
    finally:
        if (root / "slurmctld.pid").exists():
            subprocess.run(["scancel", "--full", "--partition", "test"], capture_output=True, env=env, timeout=30)
        for pidfile in reversed(started):
            _stop(pidfile)
