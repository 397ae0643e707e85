#!/usr/bin/env bash
# Install Debian's Slurm (slurmctld + slurmd + slurmdbd + client tools), munge and MariaDB
# (the accounting database behind slurmdbd, so sacct works) for the local single-node test
# cluster (scripts/slurm/local_cluster.py, tests/workflow/test_slurm.py). Idempotent: does nothing when
# the binaries are there. Needs root and apt-get; exits 3 (and says why) otherwise, so callers
# can skip instead of failing.
set -euo pipefail

need=(slurmctld slurmd slurmdbd sbatch squeue sinfo scontrol sacct sacctmgr munged munge unmunge mariadbd mariadb-install-db mariadb)
missing=()
for b in "${need[@]}"; do
    command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || missing+=("$b")
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "slurm install: not root; cannot install ${missing[*]} (the slurm test will skip)" >&2
    exit 3
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "slurm install: apt-get not found; cannot install ${missing[*]} (the slurm test will skip)" >&2
    exit 3
fi
pkgs=(slurm-wlm slurmdbd munge mariadb-server mariadb-client)
echo "slurm install: apt-get install ${pkgs[*]} (missing: ${missing[*]})"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# The packages' postinst may try to start services (no systemd here); that is harmless.
apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
echo "slurm install: $(dpkg-query -W -f '${Package} ${Version}\n' slurm-wlm slurmdbd munge mariadb-server | tr '\n' ' ')"
