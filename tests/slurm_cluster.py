"""A real single-node SLURM cluster for the tests, started from the Debian packages.

Everything the cluster writes lives in one temporary folder: its own munge key and socket,
``slurm.conf`` and ``gres.conf`` (found by the clients through ``SLURM_CONF``), state, spool, logs
and PID files, on free ports. An existing ``/etc/slurm`` or munge set-up is never touched. The
node has the machine's CPUs and memory and two fake GPUs (GRES backed by /dev/null and
/dev/zero, which slurmd accepts as devices). ``stop`` kills the daemons by the PIDs they wrote.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
BINARIES = ("slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "munged", "mungekey")
FAKE_GPUS = ("/dev/null", "/dev/zero")


class ClusterError(RuntimeError):
    pass


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]


def install_packages(timeout: int = 300) -> None:
    """apt-get the cluster's packages (root only; about 15 s)."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"],
                ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        if out.returncode != 0:
            raise ClusterError(f"{' '.join(cmd)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _sbin(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


class LocalSlurm:
    def __init__(self, root: Path, min_job_age: int = 3600):
        self.root = Path(root)
        self.node = socket.gethostname().split(".")[0]
        self.cpus = os.cpu_count() or 1
        self.memory_mb = int(Path("/proc/meminfo").read_text().split()[1]) // 1024 - 1024
        self.min_job_age = min_job_age
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.pid_files = [self.root / "slurmd.pid", self.root / "slurmctld.pid", self.root / "munge" / "munged.pid"]

    @property
    def env(self) -> dict[str, str]:
        """What a client (sbatch, squeue, Snakemake's SLURM executor) needs to find this cluster.

        ``SLURM_CONF`` reaches the jobs (sbatch --export=ALL), but the jobstep plugin (0.6.1) drops
        every SLURM_* variable but a few before its in-job ``srun``, so that ``srun`` would look for
        /etc/slurm/slurm.conf. A one-line ``srun`` in front on PATH puts SLURM_CONF back for it."""
        return {**os.environ, "SLURM_CONF": str(self.conf), "PATH": f"{self.root / 'bin'}:{os.environ['PATH']}"}

    def _write_srun_shim(self) -> None:
        real = shutil.which("srun")
        if real is None:
            raise ClusterError("srun is not installed (package slurm-client)")
        shim = self.root / "bin" / "srun"
        shim.parent.mkdir(parents=True, exist_ok=True)
        shim.write_text(f'#!/bin/sh\nSLURM_CONF="{self.conf}" exec {real} "$@"\n')
        shim.chmod(0o755)

    # ------------------------------------------------------------------------------- config
    def _write_config(self) -> None:
        ctld_port, d_port = _free_ports(2)
        for sub in ("state", "spool", "log", "munge"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o700)
        lines = [
            "ClusterName=kdflowtest",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={d_port}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "MpiDefault=none",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "ReturnToService=2",
            f"SlurmctldPidFile={self.root / 'slurmctld.pid'}",
            f"SlurmdPidFile={self.root / 'slurmd.pid'}",
            f"SlurmdSpoolDir={self.root / 'spool'}",
            f"StateSaveLocation={self.root / 'state'}",
            f"SlurmctldLogFile={self.root / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={self.root / 'log' / 'slurmd.log'}",
            "SchedulerType=sched/backfill",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
            "MailProg=/bin/true",
            f"MinJobAge={self.min_job_age}",  # finished jobs stay visible to squeue / scontrol
            "DefMemPerCPU=1000",  # without it a job with no --mem takes the whole node
            "KillWait=10",
            "GresTypes=gpu",
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} "
            f"Gres=gpu:{len(FAKE_GPUS)} State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")
        gres = [f"NodeName={self.node} Name=gpu File={dev}" for dev in FAKE_GPUS]
        (self.root / "gres.conf").write_text("\n".join(gres) + "\n")

    # ------------------------------------------------------------------------------- start/stop
    def start(self, timeout: float = 60) -> "LocalSlurm":
        self._write_config()
        self._write_srun_shim()
        munge = self.root / "munge"
        key = munge / "munge.key"
        self._run([_sbin("mungekey"), "--create", f"--keyfile={key}"])
        os.chmod(key, 0o400)
        self._run([_sbin("munged"), "--force", f"--socket={self.munge_socket}", f"--key-file={key}",
                   f"--pid-file={munge / 'munged.pid'}", f"--log-file={munge / 'munged.log'}",
                   f"--seed-file={munge / 'munged.seed'}"])
        self._run([_sbin("slurmctld"), "-c", "-f", str(self.conf)])
        self._run([_sbin("slurmd"), "-f", str(self.conf)])
        deadline = time.time() + timeout
        while time.time() < deadline:
            out = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True, env=self.env)
            if out.stdout.strip() == "idle":
                return self
            time.sleep(0.5)
        raise ClusterError(f"the node did not become idle in {timeout} s\n{self.log_tails()}")

    def _run(self, cmd: list[str]) -> None:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=self.env)
        if out.returncode != 0:
            raise ClusterError(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr}\n{self.log_tails()}")

    def stop(self) -> None:
        """Cancel every job, then stop each daemon by its PID (SIGKILL after 10 s)."""
        subprocess.run(["scancel", "--user", str(os.getuid())], capture_output=True, env=self.env, timeout=30)
        for pid_file in self.pid_files:
            try:
                pid = int(pid_file.read_text().strip())
            except (OSError, ValueError):
                continue
            _terminate(pid)

    def log_tails(self, lines: int = 30) -> str:
        parts = []
        for log in sorted(self.root.glob("log/*.log")) + [self.root / "munge" / "munged.log"]:
            if log.exists():
                parts.append(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(parts)

    # ------------------------------------------------------------------------------- records
    def jobs(self) -> list[dict[str, str]]:
        """SLURM's own record of every job it knows (``scontrol show job``), one dict per job."""
        out = subprocess.run(["scontrol", "show", "job", "-o"], capture_output=True, text=True, env=self.env,
                             timeout=30)
        if out.returncode != 0:
            raise ClusterError(out.stderr)
        return [_fields(line) for line in out.stdout.splitlines() if line.startswith("JobId=")]


def _fields(line: str) -> dict[str, str]:
    """``Key=value Key2=value two ...`` -> dict; a value may hold spaces (Command, WorkDir do)."""
    fields: dict[str, str] = {}
    key = None
    for token in line.split(" "):
        if _KEY.match(token):
            key, value = token.split("=", 1)
            fields[key] = value
        elif key is not None:
            fields[key] += " " + token
    return fields


_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_/:]*=")


def _terminate(pid: int, grace: float = 10) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + grace
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
