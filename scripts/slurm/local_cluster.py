"""A throw-away single-node Slurm cluster in a temp folder (for tests/workflow/test_slurm.py).

    python scripts/slurm/local_cluster.py start DIR   # prints the cluster facts as JSON
    python scripts/slurm/local_cluster.py stop DIR

Everything lives under DIR: its own munged (key, socket), slurm.conf, state, spool, logs
and pid files, and free TCP ports, so it leaves a system munged alone. Clients find it
through ``SLURM_CONF=DIR/slurm.conf`` (in the facts' ``env``) and through a symlink
/etc/slurm/slurm.conf -> DIR/slurm.conf, made only where no slurm.conf exists and removed by
``stop``: snakemake-executor-plugin-slurm-jobstep (0.6.1) drops every ``SLURM_*`` variable,
SLURM_CONF included, before its ``srun`` inside the job, so srun there only finds the default
location. Two partitions share the one node: ``cpu`` (default) and ``gpu``, the names
profiles/slurm uses; the node has no GPU, so GPU requests must be dropped (the test adjusts
the profile).

Job accounting is real, so ``sacct`` answers (and snakemake-executor-plugin-slurm can use its
default status command): a private MariaDB server (data folder, socket and a free TCP port under
DIR) behind ``slurmdbd``. Completed jobs are also logged by ``jobcomp/filetxt`` in
``DIR/log/jobcomp.txt``. Needs root (slurmd runs jobs as their owner) and the packages of
scripts/slurm/install.sh.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

DAEMONS = ("slurmd", "slurmctld", "slurmdbd", "mariadbd", "munged")  # stop order
CLUSTER = "facesets-test"
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")


class ClusterError(RuntimeError):
    """The cluster could not be started; the message says which step and why."""


@dataclass(frozen=True)
class ClusterFacts:
    root: str
    conf: str
    node: str
    cpus: int
    mem_mb: int
    partitions: tuple[str, ...]
    jobcomp: str
    env: dict[str, str] = field(default_factory=dict)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _find(binary: str) -> str:
    path = shutil.which(binary) or (f"/usr/sbin/{binary}" if os.access(f"/usr/sbin/{binary}", os.X_OK) else None)
    if not path:
        raise ClusterError(f"{binary} not found (run scripts/slurm/install.sh as root)")
    return path


def _mem_mb() -> int:
    with open("/proc/meminfo") as fh:
        kb = next(int(ln.split()[1]) for ln in fh if ln.startswith("MemTotal:"))
    return max(1000, int(kb / 1024 * 0.8))


def slurm_conf(root: Path, node: str, cpus: int, mem_mb: int, ports: tuple[int, int, int]) -> str:
    """A minimal slurm.conf: one node, partitions cpu (default) and gpu, state under root."""
    return "\n".join(
        [
            f"ClusterName={CLUSTER}",
            f"SlurmctldHost={node}(127.0.0.1)",
            f"SlurmctldPort={ports[0]}",
            f"SlurmdPort={ports[1]}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={root}/munge/munge.socket",
            "SlurmUser=root",
            "SlurmdUser=root",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "MpiDefault=none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "ReturnToService=2",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/slurmdbd",
            "AccountingStorageHost=127.0.0.1",
            f"AccountingStoragePort={ports[2]}",
            f"AccountingStoragePass={root}/munge/munge.socket",  # the munge socket used towards slurmdbd
            "AccountingStoreFlags=job_comment",  # sacct shows the plugin's --comment (the rule)
            "JobCompType=jobcomp/filetxt",
            f"JobCompLoc={root}/log/jobcomp.txt",
            "MinJobAge=600",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=30",
            f"StateSaveLocation={root}/state",
            f"SlurmdSpoolDir={root}/spool",
            f"SlurmctldPidFile={root}/run/slurmctld.pid",
            f"SlurmdPidFile={root}/run/slurmd.pid",
            f"SlurmctldLogFile={root}/log/slurmctld.log",
            f"SlurmdLogFile={root}/log/slurmd.log",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            f"NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN",
            f"PartitionName=cpu Nodes={node} Default=YES MaxTime=INFINITE State=UP",
            f"PartitionName=gpu Nodes={node} MaxTime=INFINITE State=UP",
            "",
        ]
    )


def slurmdbd_conf(root: Path, dbd_port: int, db_port: int) -> str:
    """slurmdbd.conf: the accounting daemon on dbd_port, storing into the private MariaDB."""
    return "\n".join(
        [
            "AuthType=auth/munge",
            f"AuthInfo=socket={root}/munge/munge.socket",
            "DbdHost=localhost",
            "DbdAddr=127.0.0.1",
            f"DbdPort={dbd_port}",
            "SlurmUser=root",
            "StorageType=accounting_storage/mysql",
            "StorageHost=127.0.0.1",
            f"StoragePort={db_port}",
            "StorageUser=root",
            "StorageLoc=slurm_acct_db",
            f"PidFile={root}/run/slurmdbd.pid",
            f"LogFile={root}/log/slurmdbd.log",
            "DebugLevel=info",
            "",
        ]
    )


def _run(cmd: list[str], env: dict[str, str], what: str, timeout: float = 30) -> str:
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ClusterError(f"{what}: `{' '.join(cmd)}` timed out after {timeout:.0f} s") from None
    if proc.returncode != 0:
        raise ClusterError(
            f"{what}: `{' '.join(cmd)}` exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()}"
        )
    return proc.stdout


def _log_tail(path: Path, n: int = 15) -> str:
    try:
        return "".join(path.read_text(errors="replace").splitlines(keepends=True)[-n:])
    except OSError:
        return "(no log)"


def _wait(check, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    raise ClusterError(f"{what} not ready after {timeout:.0f} s" + (f"; {log}:\n{_log_tail(log)}" if log else ""))


def _pid(root: Path, daemon: str) -> int | None:
    try:
        return int((root / "run" / f"{daemon}.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False  # a zombie has exited
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _start_munge(root: Path, env: dict[str, str]) -> Path:
    key = root / "munge" / "munge.key"
    if not key.exists():
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o600)
    sock = root / "munge" / "munge.socket"
    _run(
        [
            _find("munged"),
            "--force",
            f"--socket={sock}",
            f"--key-file={key}",
            f"--pid-file={root / 'run' / 'munged.pid'}",
            f"--log-file={root / 'log' / 'munged.log'}",
            f"--seed-file={root / 'munge' / 'munged.seed'}",
        ],
        env,
        "munged",
    )
    check = f"{_find('munge')} -n -S {sock} | {_find('unmunge')} -S {sock}"
    _wait(lambda: subprocess.run(check, shell=True, capture_output=True).returncode == 0, 15, "munge")
    return sock


def _start_mariadb(root: Path, port: int, env: dict[str, str]) -> None:
    data = root / "db" / "data"
    if not data.exists():
        _run(
            [
                _find("mariadb-install-db"),
                "--no-defaults",
                f"--datadir={data}",
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            env,
            "mariadb-install-db",
            timeout=120,
        )
    sock = root / "db" / "mysql.sock"
    log = root / "log" / "mariadb.log"
    cmd = [
        _find("mariadbd"),
        "--no-defaults",
        f"--datadir={data}",
        "--user=root",
        f"--socket={sock}",
        f"--port={port}",
        "--bind-address=127.0.0.1",
        f"--pid-file={root / 'run' / 'mariadbd.pid'}",
        f"--log-error={log}",
        "--innodb-buffer-pool-size=64M",
    ]
    with open(os.devnull, "rb") as devnull:
        subprocess.Popen(
            cmd, env=env, stdin=devnull, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
    ping = [_find("mariadb"), "--no-defaults", "-S", str(sock), "-uroot", "-e", "select 1"]
    _wait(lambda: subprocess.run(ping, capture_output=True).returncode == 0, 60, "mariadb", log)


def _link_system_conf(conf: Path) -> None:
    """/etc/slurm/slurm.conf -> conf, unless a real (non-link) slurm.conf is there."""
    if SYSTEM_CONF.is_symlink():
        target = Path(os.readlink(SYSTEM_CONF))
        if target.exists() and target != conf and (target.parent / "run" / "slurmctld.pid").exists():
            pid = _pid(target.parent, "slurmctld")
            if _alive(pid):
                raise ClusterError(f"{SYSTEM_CONF} points at another running test cluster ({target})")
        SYSTEM_CONF.unlink()
    elif SYSTEM_CONF.exists():
        raise ClusterError(f"{SYSTEM_CONF} exists (a configured Slurm); the test cluster does not replace it")
    SYSTEM_CONF.parent.mkdir(parents=True, exist_ok=True)
    SYSTEM_CONF.symlink_to(conf)


def start(root: Path) -> ClusterFacts:
    """Start munged, MariaDB + slurmdbd, slurmctld and slurmd under ``root``; wait for an idle node."""
    if os.geteuid() != 0:
        raise ClusterError("needs root (slurmd runs jobs as their owner)")
    root = root.resolve()
    for sub in ("munge", "state", "spool", "run", "log", "db"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "munge", 0o700)
    node = socket.gethostname().split(".")[0]
    cpus = os.cpu_count() or 1
    mem_mb = _mem_mb()
    ctld_port, slurmd_port, dbd_port, db_port = (_free_port() for _ in range(4))
    conf = root / "slurm.conf"
    conf.write_text(slurm_conf(root, node, cpus, mem_mb, (ctld_port, slurmd_port, dbd_port)))
    dbd_conf = root / "slurmdbd.conf"  # found beside slurm.conf; must be private to SlurmUser
    dbd_conf.write_text(slurmdbd_conf(root, dbd_port, db_port))
    os.chmod(dbd_conf, 0o600)
    env = dict(os.environ, SLURM_CONF=str(conf))
    _link_system_conf(conf)

    _start_munge(root, env)
    _start_mariadb(root, db_port, env)
    _run([_find("slurmdbd")], env, "slurmdbd")
    _wait(
        lambda: (
            subprocess.run([_find("sacctmgr"), "-n", "list", "cluster"], env=env, capture_output=True).returncode == 0
        ),
        60,
        "slurmdbd",
        root / "log" / "slurmdbd.log",
    )
    _run([_find("sacctmgr"), "-i", "add", "cluster", CLUSTER], env, "sacctmgr add cluster")
    _run([_find("slurmctld"), "-f", str(conf)], env, "slurmctld")
    ping = [_find("scontrol"), "ping"]
    _wait(
        lambda: "UP" in subprocess.run(ping, env=env, capture_output=True, text=True).stdout,
        30,
        "slurmctld",
        root / "log" / "slurmctld.log",
    )
    _run([_find("slurmd"), "-f", str(conf)], env, "slurmd")
    sinfo = [_find("sinfo"), "-h", "-N", "-o", "%t"]

    def idle() -> bool:
        out = subprocess.run(sinfo, env=env, capture_output=True, text=True).stdout.split()
        return bool(out) and all(s.startswith("idle") for s in out)

    _wait(idle, 60, "slurmd (node idle)", root / "log" / "slurmd.log")
    return ClusterFacts(
        root=str(root),
        conf=str(conf),
        node=node,
        cpus=cpus,
        mem_mb=mem_mb,
        partitions=("cpu", "gpu"),
        jobcomp=str(root / "log" / "jobcomp.txt"),
        env={"SLURM_CONF": str(conf)},
    )


def stop(root: Path, timeout: float = 20) -> list[str]:
    """Stop the daemons of the cluster under ``root`` by the pids in its pid files."""
    root = root.resolve()
    stopped = []
    for daemon in DAEMONS:
        pid = _pid(root, daemon)
        if not _alive(pid):
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        stopped.append(f"{daemon}[{pid}]")
    if SYSTEM_CONF.is_symlink() and Path(os.readlink(SYSTEM_CONF)) == root / "slurm.conf":
        SYSTEM_CONF.unlink()
    return stopped


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print("usage: local_cluster.py start|stop DIR", file=sys.stderr)
        return 2
    root = Path(argv[1])
    if argv[0] == "stop":
        print(json.dumps({"stopped": stop(root)}))
        return 0
    try:
        facts = start(root)
    except ClusterError as exc:
        stop(root)
        print(f"local slurm: {exc}", file=sys.stderr)
        return 3
    print(json.dumps(asdict(facts)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
