#!/usr/bin/env bash
# Stops the SLURM that start_local_cluster.sh started under DIR: cancels every job, waits for the queue to
# empty, stops the daemons by their pidfiles, then kills leftover job processes (slurmstepd and whatever a job
# left behind) that belong to this cluster, recognised by SLURM_CONF=<DIR>/etc/slurm.conf in their environment.
#
#   cluster/slurm/stop_local_cluster.sh [--state DIR] [--purge]    (--purge also deletes DIR)
set -uo pipefail

STATE="${LNR_SLURM_STATE:-/tmp/lnr-slurm}"
KEEP=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --state) STATE="$2"; shift 2 ;;
    --purge) KEEP=0; shift ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    *) echo "stop_local_cluster.sh: unknown argument '$1' (use --state DIR, --purge)" >&2; exit 2 ;;
  esac
done
[[ -d "$STATE" ]] || { echo "[local-slurm] nothing under $STATE"; exit 0; }
STATE="$(cd "$STATE" && pwd)"
RUN="$STATE/run"
export SLURM_CONF="$STATE/etc/slurm.conf" PATH="/usr/sbin:$PATH"
say() { echo "[local-slurm] $*"; }
alive() { [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

if alive "$RUN/slurmctld.pid"; then
  jobs="$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')"
  if [[ -n "${jobs// /}" ]]; then
    say "cancelling jobs $jobs"
    # shellcheck disable=SC2086
    scancel $jobs 2>/dev/null
    for ((t = 0; t < 150; t++)); do
      [[ -z "$(squeue -h -o %i 2>/dev/null)" ]] && break
      sleep 0.2
    done
  fi
fi

stop_pidfile() {  # TERM, wait up to 10 s, then KILL
  local file="$1" pid
  alive "$file" || { rm -f "$file"; return 0; }
  pid="$(cat "$file")"
  kill -TERM "$pid" 2>/dev/null
  for ((t = 0; t < 50; t++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -KILL "$pid" 2>/dev/null
  rm -f "$file"
  say "stopped $(basename "$file" .pid) ($pid)"
}
for file in "$RUN"/slurmd-*.pid; do [[ -e "$file" ]] && stop_pidfile "$file"; done
stop_pidfile "$RUN/slurmctld.pid"
stop_pidfile "$RUN/slurmdbd.pid"
stop_pidfile "$RUN/mariadbd.pid"
stop_pidfile "$RUN/munged.pid"

# slurmstepd can survive SIGTERM, and with proctrack/linuxproc a job's child that re-parented to PID 1 escapes
# the job: kill every process that carries this cluster's SLURM_CONF and a job id (never the caller).
ours() {
  local pid environ vars
  for environ in /proc/[0-9]*/environ; do
    pid="${environ#/proc/}"; pid="${pid%/environ}"
    [[ "$pid" == "$$" ]] && continue
    vars="$(tr '\0' '\n' 2>/dev/null <"$environ")" || continue
    grep -qx "SLURM_CONF=$SLURM_CONF" <<<"$vars" || continue
    if grep -q '^SLURM_JOB_ID=' <<<"$vars" || [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == slurmstepd ]]; then
      echo "$pid"
    fi
  done
}
left="$(ours | tr '\n' ' ')"
if [[ -n "${left// /}" ]]; then
  say "killing leftover job processes: $left"
  # shellcheck disable=SC2086
  kill -KILL $left 2>/dev/null
fi
for pid in $(pgrep -x slurmstepd 2>/dev/null); do
  # a slurmstepd of ours has its job's spool folder open; others are left alone
  if ls -l "/proc/$pid/cwd" 2>/dev/null | grep -q "$STATE"; then kill -KILL "$pid" 2>/dev/null; fi
done
[[ $KEEP -eq 0 ]] && rm -rf "$STATE" && say "removed $STATE"
say "stopped"
