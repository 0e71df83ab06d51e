#!/usr/bin/env bash
# A real SLURM on this machine, from Debian's packages: munged, mariadbd + slurmdbd (so that sacct works),
# slurmctld and one slurmd per "node" (two nodes on loopback with --nodes 2). Installs what is missing.
#
#   cluster/slurm/start_local_cluster.sh [--nodes N] [--state DIR]
#   source DIR/env.sh            # exports SLURM_CONF for sbatch/squeue/sacct and submitit
#
# Idempotent: daemons already running (by pidfile) are left alone; everything lives under DIR
# (default $LNR_SLURM_STATE or /tmp/lnr-slurm). Stop with stop_local_cluster.sh --state DIR.
# Ports: LNR_SLURM_CTLD_PORT (6817), LNR_SLURM_DBD_PORT (6819), LNR_SLURM_DB_PORT (13306, mariadb on loopback),
# LNR_SLURM_SLURMD_PORT (6818, then one per further node), so that a second cluster (the tests') can run beside.
# Runs as root without systemd (as in a container); see ../../../shared/FACTS.md for why each setting is there.
set -euo pipefail

NODES=1
STATE="${LNR_SLURM_STATE:-/tmp/lnr-slurm}"
CTLD_PORT="${LNR_SLURM_CTLD_PORT:-6817}"
DBD_PORT="${LNR_SLURM_DBD_PORT:-6819}"
DB_PORT="${LNR_SLURM_DB_PORT:-13306}"
SLURMD_PORT="${LNR_SLURM_SLURMD_PORT:-6818}"  # first slurmd; the others follow, skipping the two ports above
while [[ $# -gt 0 ]]; do
  case "$1" in
    --nodes) NODES="$2"; shift 2 ;;
    --state) STATE="$2"; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "start_local_cluster.sh: unknown argument '$1' (use --nodes N, --state DIR)" >&2; exit 2 ;;
  esac
done
if ! [[ "$NODES" =~ ^[1-8]$ ]]; then
  echo "start_local_cluster.sh: --nodes must be 1..8, got '$NODES'" >&2; exit 2
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "start_local_cluster.sh: needs root (daemons run as root here; no systemd)" >&2; exit 2
fi
mkdir -p "$STATE"
STATE="$(cd "$STATE" && pwd)"
say() { echo "[local-slurm] $*"; }
trap 'echo "start_local_cluster.sh: failed at line $LINENO: $BASH_COMMAND (logs under $STATE/log)" >&2' ERR

# ---- packages -------------------------------------------------------------------------------------------------
need=()
for package in munge slurmctld slurmd slurm-client slurmdbd mariadb-server; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || need+=("$package")
done
if [[ ${#need[@]} -gt 0 ]]; then
  say "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # a temporary policy-rc.d stops the packages from starting their own daemons (we start ours under $STATE)
  policy=""
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy"
  fi
  installed=0
  apt-get install -y -q "${need[@]}" >"$STATE/apt.log" 2>&1 \
    || { apt-get update -q >>"$STATE/apt.log" 2>&1 && apt-get install -y -q "${need[@]}" >>"$STATE/apt.log" 2>&1; } \
    || installed=$?
  [[ -n "$policy" ]] && rm -f "$policy"
  if [[ $installed -ne 0 ]]; then
    echo "start_local_cluster.sh: apt-get install ${need[*]} failed, see $STATE/apt.log" >&2; exit 1
  fi
fi
export PATH="/usr/sbin:$PATH"

# ---- layout and configuration --------------------------------------------------------------------------------
ETC="$STATE/etc"; RUN="$STATE/run"; LOG="$STATE/log"; SPOOL="$STATE/spool"; MUNGE="$STATE/munge"; DB="$STATE/mysql"
mkdir -p "$ETC" "$RUN" "$LOG" "$SPOOL/ctld" "$MUNGE" "$DB"
chmod 755 "$MUNGE"  # the munge socket folder must be world-readable (slurm checks it)
SOCKET="$MUNGE/munge.socket"
HOST="$(hostname -s)"
CPUS="$(nproc)"
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / NODES * 9 / 10 ))

node_names=(); SLURMD_PORTS=()
port=$SLURMD_PORT
for ((i = 1; i <= NODES; i++)); do
  node_names+=("lnr$i"); mkdir -p "$SPOOL/lnr$i"
  while [[ $port -eq $DBD_PORT || $port -eq $CTLD_PORT ]]; do port=$((port + 1)); done
  SLURMD_PORTS+=("$port"); port=$((port + 1))
done

{
  echo "# written by start_local_cluster.sh; $NODES node(s) on loopback"
  echo "ClusterName=lnr"
  echo "SlurmctldHost=$HOST(127.0.0.1)"
  echo "SlurmctldPort=$CTLD_PORT"
  echo "SlurmUser=root"
  echo "SlurmdUser=root"
  echo "AuthType=auth/munge"
  echo "AuthInfo=socket=$SOCKET"
  echo "CredType=cred/munge"
  echo "StateSaveLocation=$SPOOL/ctld"
  echo "SlurmdSpoolDir=$SPOOL/%n"
  echo "SlurmctldPidFile=$RUN/slurmctld.pid"
  echo "SlurmdPidFile=$RUN/slurmd-%n.pid"
  echo "SlurmctldLogFile=$LOG/slurmctld.log"
  echo "SlurmdLogFile=$LOG/slurmd-%n.log"
  echo "ProctrackType=proctrack/linuxproc"
  echo "TaskPlugin=task/none"
  echo "SelectType=select/cons_tres"
  echo "SelectTypeParameters=CR_Core"
  echo "SlurmdParameters=config_overrides"
  echo "SchedulerType=sched/backfill"
  echo "SchedulerParameters=sched_interval=2,bf_interval=2"
  echo "ReturnToService=2"
  echo "KillWait=5"
  echo "MailProg=/bin/true"
  echo "MinJobAge=600"
  echo "JobRequeue=1"
  echo "JobAcctGatherType=jobacct_gather/none"
  echo "AccountingStorageType=accounting_storage/slurmdbd"
  echo "AccountingStorageHost=localhost"
  echo "AccountingStoragePort=$DBD_PORT"
  echo "AccountingStoragePass=$SOCKET"
  echo "JobCompType=jobcomp/none"
  for ((i = 0; i < NODES; i++)); do
    echo "NodeName=${node_names[$i]} NodeAddr=127.0.0.1 NodeHostname=$HOST Port=${SLURMD_PORTS[$i]}" \
         "CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN"
  done
  echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO"
} > "$ETC/slurm.conf.new"

cat > "$ETC/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$SOCKET
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
chmod 600 "$ETC/slurmdbd.conf"  # slurmdbd refuses a readable config holding a password

cat > "$STATE/env.sh" <<EOF
# source this to use the local SLURM (sbatch, squeue, sacct, submitit)
export SLURM_CONF="$ETC/slurm.conf"
export PATH="/usr/sbin:\$PATH"
EOF
export SLURM_CONF="$ETC/slurm.conf"

alive() { [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
wait_for() {  # wait_for SECONDS WHAT COMMAND...
  local seconds="$1" what="$2"; shift 2
  for ((t = 0; t < seconds * 5; t++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "start_local_cluster.sh: $what did not come up in ${seconds}s; logs under $LOG" >&2; return 1
}

if [[ -f "$ETC/slurm.conf" ]] && ! cmp -s "$ETC/slurm.conf" "$ETC/slurm.conf.new" && alive "$RUN/slurmctld.pid"; then
  echo "start_local_cluster.sh: a cluster with another configuration runs under $STATE;" \
       "stop it first (stop_local_cluster.sh --state $STATE)" >&2
  rm -f "$ETC/slurm.conf.new"; exit 1
fi
mv "$ETC/slurm.conf.new" "$ETC/slurm.conf"

# ---- munge ---------------------------------------------------------------------------------------------------
if ! alive "$RUN/munged.pid"; then
  [[ -s "$MUNGE/munge.key" ]] || { dd if=/dev/urandom of="$MUNGE/munge.key" bs=1024 count=1 status=none; }
  chmod 400 "$MUNGE/munge.key"
  munged --force --key-file="$MUNGE/munge.key" --socket="$SOCKET" --pid-file="$RUN/munged.pid" \
         --log-file="$LOG/munged.log" --seed-file="$MUNGE/munge.seed"
  wait_for 10 munged munge --socket="$SOCKET" -n
  say "munged up"
fi

# ---- mariadb + slurmdbd (accounting: sacct, and submitit's job states) ------------------------------------------
if ! alive "$RUN/mariadbd.pid"; then
  if [[ ! -d "$DB/data/mysql" ]]; then
    mariadb-install-db --datadir="$DB/data" --user=root --skip-test-db >"$LOG/mariadb-install.log" 2>&1
  fi
  setsid mariadbd --datadir="$DB/data" --user=root --socket="$DB/mysqld.sock" --pid-file="$RUN/mariadbd.pid" \
         --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve --log-error="$LOG/mariadbd.log" \
         </dev/null >/dev/null 2>&1 &
  wait_for 30 mariadbd mariadb --socket="$DB/mysqld.sock" -e "SELECT 1"
  mariadb --socket="$DB/mysqld.sock" -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"
  say "mariadbd up (port $DB_PORT)"
fi
if ! alive "$RUN/slurmdbd.pid"; then
  SLURM_CONF="$ETC/slurm.conf" slurmdbd
  wait_for 30 slurmdbd bash -c "exec 3<>/dev/tcp/127.0.0.1/$DBD_PORT"
  say "slurmdbd up (port $DBD_PORT)"
fi

# ---- controller and nodes ------------------------------------------------------------------------------------
if ! alive "$RUN/slurmctld.pid"; then
  slurmctld -f "$SLURM_CONF"
  wait_for 30 slurmctld scontrol ping
  say "slurmctld up (port $CTLD_PORT)"
fi
for ((i = 0; i < NODES; i++)); do
  name="${node_names[$i]}"
  if ! alive "$RUN/slurmd-$name.pid"; then
    slurmd -f "$SLURM_CONF" -N "$name"
  fi
done
idle() { [[ "$(sinfo -h -o '%D %t' | awk '$2 ~ /^(idle|mix|alloc)/ {n += $1} END {print n + 0}')" -ge "$NODES" ]]; }
wait_for 60 "$NODES slurmd node(s)" idle
wait_for 30 "sacct (accounting)" sacct -n -X -S now
say "ready: $NODES node(s) (${node_names[*]}), state under $STATE"
say "use it with: source $STATE/env.sh"
