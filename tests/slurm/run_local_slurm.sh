#!/usr/bin/env bash
# The smoke benchmark (one seed, a method of each kind) through a real SLURM: a one-node cluster on this machine
# (loopback), driven by snakemake-executor-plugin-slurm with tests/slurm/profile. Needs root on a Debian-like
# machine (it installs the slurm and munge packages when missing and writes /etc/slurm/slurm.conf) and an
# environment with ev3[cluster] active. Outputs go to results/slurm_smoke/ (rewritten on every run).
# Mid-run, the teacher's training job is stopped twice: first requeued (`scontrol requeue`, SLURM's preemption
# path: SIGTERM, then SIGKILL after KillWait; the job goes back to the queue under its id), then, once the requeued
# job has checkpointed past that point, cancelled (`scancel`, as at a time limit). Each time it must checkpoint the
# step it is at and exit; SLURM's requeue and then Snakemake's retry must resume there, and the teacher must equal
# an uninterrupted run of the same run.json (metrics but timing, predictions).
#   bash tests/slurm/run_local_slurm.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

BENCHMARK=slurm_smoke
CONFIG=config/smoke.yaml
SEEDS="[0]"  # one seed of the smoke benchmark: every rule through SLURM, in about a third of the time
# The smoke benchmark's methods that run here: one of each kind of training job (no teacher, a frozen teacher, a
# population, a learning teacher, EV3's rounds); every method trains in the smoke DAG of tests/test_workflow.py.
METHODS="scratch kd kd-tuned metadistil ev3"
MARKER="# Written by ev3 tests/slurm/run_local_slurm.sh"
start=$(date +%s)

die() { echo "run_local_slurm: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (installs packages, writes /etc/slurm/slurm.conf, starts the daemons)"
python -c "import snakemake_executor_plugin_slurm" 2>/dev/null \
    || die "snakemake-executor-plugin-slurm is not installed in this environment: pip install -e '.[cluster]'"

if ! command -v slurmctld >/dev/null; then
    echo "run_local_slurm: installing slurm and munge"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        slurmctld slurmd slurm-client munge >/dev/null
fi

if [ -e /etc/slurm/slurm.conf ] && ! grep -qxF "$MARKER" /etc/slurm/slurm.conf; then
    die "/etc/slurm/slurm.conf exists and was not written by this script; not touching a real cluster's configuration"
fi
for daemon in slurmctld slurmd; do
    if grep -qxF "$daemon" /proc/[0-9]*/comm 2>/dev/null; then die "$daemon is already running; stop it first"; fi
done

HOST=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(awk '/^MemTotal:/ {print int($2 / 1024) - 1024}' /proc/meminfo)
[ "$MEM_MB" -gt 1024 ] || die "too little memory for the test cluster (${MEM_MB} MiB after 1 GiB reserve)"
# Daemon state, spool, pid and log files live in a fresh directory, so no job of an earlier run survives.
STATE=$(mktemp -d /tmp/ev3-slurm.XXXXXX)
mkdir -p "$STATE/ctld" "$STATE/spool"

PIDS=()
CANCELLER=""
cleanup() {
    local rc=$?
    if [ -n "$CANCELLER" ]; then kill "$CANCELLER" 2>/dev/null || true; fi
    if [ "${#PIDS[@]}" -gt 0 ]; then
        scancel --quiet --user "$(id -un)" 2>/dev/null || true  # jobs of this private cluster only
        kill "${PIDS[@]}" 2>/dev/null || true
        wait "${PIDS[@]}" 2>/dev/null || true
    fi
    # With slurm.conf naming a controller that is gone, every `scontrol show config` waits 10 s, and the plugin
    # runs one whenever Snakemake loads it, so any later snakemake command here would start 10 s slower.
    if grep -qxF "$MARKER" /etc/slurm/slurm.conf 2>/dev/null; then rm -f /etc/slurm/slurm.conf; fi
    if [ "$rc" -ne 0 ] && [ -n "${STATE:-}" ]; then
        echo "run_local_slurm: failed; daemon logs in $STATE" >&2
        tail -n 20 "$STATE"/*.log 2>/dev/null >&2 || true
    else
        rm -rf "$STATE"
    fi
    exit "$rc"
}
trap cleanup EXIT

# The configuration must be /etc/slurm/slurm.conf: the plugin's job step drops SLURM_CONF before its srun.
mkdir -p /etc/slurm
cat >/etc/slurm/slurm.conf <<EOF
$MARKER
ClusterName=ev3test
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MinJobAge=300
ReturnToService=2
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF

# munge: reuse a running munged, else start one (as user munge, with a key created if missing).
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    if [ ! -s /etc/munge/munge.key ]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge
    setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged --foreground >"$STATE/munged.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.2; done
    munge -n | unmunge >/dev/null || die "munged did not start"
fi

slurmctld -D -c >"$STATE/slurmctld.out" 2>&1 &
PIDS+=($!)
slurmd -D >"$STATE/slurmd.out" 2>&1 &
PIDS+=($!)

state=""
for _ in $(seq 60); do
    state=$(sinfo -h -N -n "$HOST" -o %t 2>/dev/null || true)
    [ "$state" = idle ] && break
    sleep 1
done
[ "$state" = idle ] || die "node $HOST not idle after 60 s (sinfo says '${state:-nothing}')"
echo "run_local_slurm: SLURM up on $HOST ($CPUS CPUs, $MEM_MB MiB) after $(( $(date +%s) - start )) s"

R="results/$BENCHMARK"
rm -rf "$R"
mkdir -p "$R"
python - "$CONFIG" "$STATE/smoke.yaml" $METHODS <<'EOF'
import sys, yaml
config = yaml.safe_load(open(sys.argv[1]))
config["methods"] = {name: m for name, m in config["methods"].items() if name in sys.argv[3:]}
yaml.safe_dump(config, open(sys.argv[2], "w"), sort_keys=False)
EOF
CONFIG="$STATE/smoke.yaml"
LOG="$R/snakemake-slurm.log"
# Merged over $CONFIG (--config would pass the values as strings): one seed, and a teacher long enough (800 steps,
# a checkpoint every 200) to be cancelled mid-run.
printf 'seeds: %s\nteacher: {train: {steps: 800, eval_every: 200}}\n' "$SEEDS" >"$STATE/overlay.yaml"
TEACHER_STATE="$R/state/teacher/mnist1d/cnn/seed0"
TEACHER_LOG="$R/logs/teacher/mnist1d/cnn.log"

checkpoints() { ls "$TEACHER_STATE" 2>/dev/null | grep -x '[0-9][0-9]*' | sort -n | tr '\n' ' '; }

# The teacher's SLURM job id, and the step its stop request was checkpointed at in the log (empty before).
teacher_job() { squeue -h -o '%i %k' | awk '$2 ~ /^rule_train_teacher/ {print $1; exit}'; }
stopped_at() { grep -o "stopped by SIGTERM at step [0-9]*" "$1" 2>/dev/null | grep -o '[0-9]*$' | tail -n 1; }
# Waits until the teacher state has a checkpoint past step $1 while its job runs; prints the job id.
await_checkpoint() {
    local job="" end=$(( $(date +%s) + 600 ))
    while :; do
        [ "$(date +%s)" -lt "$end" ] || { echo "no teacher checkpoint past step $1 within 600 s" >"$STATE/cancel.err"; return 1; }
        job=$(teacher_job)
        if [ -n "$job" ] && [ "$(squeue -h -j "$job" -o %T 2>/dev/null)" = RUNNING ] \
                && [ "$(checkpoints | awk '{print $NF}')" -gt "$1" ] 2>/dev/null; then
            echo "$job"; return 0
        fi
        sleep 0.1
    done
}
# Requeues the teacher's job once it has a checkpoint, then cancels the requeued job once it has checkpointed past
# the step it stopped at; keeps each stopped attempt's log (the next attempt rewrites it).
stop_teacher() {
    local job stopped
    job=$(await_checkpoint 0) || return
    echo "$job $(checkpoints)" >"$STATE/requeued"
    scontrol requeue "$job"
    local end=$(( $(date +%s) + 120 ))
    until stopped=$(stopped_at "$TEACHER_LOG") && [ -n "$stopped" ]; do
        [ "$(date +%s)" -lt "$end" ] || { echo "the requeued job $job did not checkpoint on SIGTERM" >"$STATE/cancel.err"; return; }
        sleep 0.1
    done
    cp "$TEACHER_LOG" "$STATE/teacher-requeued.log"
    # SLURM holds a requeued job back before it may start again (152 s here); once it is pending, make it
    # eligible at once, as a cluster with free nodes would run it after that hold.
    local state=""
    end=$(( $(date +%s) + 120 ))
    until state=$(squeue -h -j "$job" -o %T 2>/dev/null) && [[ "$state" =~ ^(PENDING|RUNNING)$ ]]; do
        [ "$(date +%s)" -lt "$end" ] || { echo "the requeued job $job is not back in the queue: '$state'" >"$STATE/cancel.err"; return; }
        sleep 0.1
    done
    if [ "$state" = PENDING ]; then
        scontrol show job "$job" | grep -oE '(Reason|EligibleTime)=[^ ]*' | tr '\n' ' ' >"$STATE/requeue-hold"
        scontrol update JobId="$job" StartTime=now
    fi
    job=$(await_checkpoint "$stopped") || return
    scancel "$job"
    echo "$job $(checkpoints)" >"$STATE/cancelled"
    while squeue -h -j "$job" -o %T 2>/dev/null | grep -qE 'RUNNING|COMPLETING|CONFIGURING|SUSPENDED'; do
        sleep 0.1
    done
    cp "$TEACHER_LOG" "$STATE/teacher-cancelled.log"
}

run_start=$(date +%s)
stop_teacher &
CANCELLER=$!
# Jobs inherit this shell's environment (sbatch --export=ALL), so they find this environment's python.
if ! python -m snakemake --profile tests/slurm/profile --configfile "$CONFIG" "$STATE/overlay.yaml" \
        --config "benchmark=$BENCHMARK" >"$LOG" 2>&1; then
    tail -n 60 "$LOG" >&2
    die "snakemake through SLURM failed (full log: $LOG)"
fi
wait "$CANCELLER"
CANCELLER=""
run_wall=$(( $(date +%s) - run_start ))

# Every run's metrics, the summary table, and every cluster job submitted through SLURM.
read -r expected_runs expected_jobs < <(python - "$CONFIG" "$SEEDS" <<'EOF'
import sys, yaml
from ev3.config import student_runs, validate
c = validate({**yaml.safe_load(open(sys.argv[1])), "seeds": yaml.safe_load(sys.argv[2])})
runs = len(student_runs(c))  # each method on its students (a method's `students`)
print(runs, len(c["datasets"]) * 2 + runs)  # prepare_data and train_teacher per dataset, train_student per run
EOF
)
[ -s "$R/tables/summary.csv" ] || die "missing $R/tables/summary.csv"
runs=$(find "$R/runs" -name metrics.json | wc -l)
[ "$runs" -eq "$expected_runs" ] || die "$runs student metrics.json in $R/runs, expected $expected_runs"
submitted=$(grep -c "has been submitted with SLURM jobid" "$LOG" || true)
[ "$submitted" -eq "$((expected_jobs + 1))" ] \
    || die "$submitted jobs submitted through SLURM (see $LOG), expected $expected_jobs + the cancelled one's retry"
# The controller's own record: every job it ran, and its exit status (squeue forgets jobs after MinJobAge).
completed=$(grep -c "_job_complete: JobId=[0-9]* WEXITSTATUS 0$" "$STATE/slurmctld.log" || true)
[ "$completed" -eq "$expected_jobs" ] || die "slurmctld saw $completed jobs exit 0, expected $expected_jobs"

# The stopped teacher: each SIGTERM made it checkpoint the step it was at (at or after the checkpoints there when it
# was stopped) and exit; the requeued job resumed from the first stop, the retry from the second, and the run ends
# as an uninterrupted run of its run.json.
[ ! -s "$STATE/cancel.err" ] || die "$(cat "$STATE/cancel.err")"
check_stop() {  # $1: requeued | cancelled; prints the step the attempt stopped at
    [ -s "$STATE/$1" ] || die "the teacher's job was not $1"
    local job seen step stopped
    read -r job seen <"$STATE/$1"
    stopped=$(stopped_at "$STATE/teacher-$1.log")
    if [ -z "$stopped" ]; then
        cat "$STATE/teacher-$1.log" >&2
        die "the $1 teacher job $job did not checkpoint on SIGTERM"
    fi
    for step in $seen; do
        [ "$stopped" -ge "$step" ] || die "the $1 job stopped at step $stopped, before its checkpoint $step"
    done
    echo "$job $stopped"
}
stop=$(check_stop requeued)  # a failing check (die in the subshell) stops the script here (set -e)
read -r requeued_job requeue_stop <<<"$stop"
stop=$(check_stop cancelled)
read -r cancelled_job stopped <<<"$stop"
[ "$requeued_job" = "$cancelled_job" ] || die "the requeued job $requeued_job came back as job $cancelled_job"
grep -q "resumed from step $requeue_stop " "$STATE/teacher-cancelled.log" \
    || { cat "$STATE/teacher-cancelled.log" >&2; die "the requeued job did not resume from step $requeue_stop"; }
if ! grep -q "resumed from step $stopped " "$TEACHER_LOG"; then
    cat "$TEACHER_LOG" >&2
    die "the retry did not resume from step $stopped"
fi
ref_start=$(date +%s)
python -m ev3 train "$R/teacher/mnist1d/cnn/seed0/run.json" --out "$STATE/teacher-uninterrupted" --threads 1 \
    --compile-cache "$R/compile_cache" >"$STATE/teacher-uninterrupted.log" 2>&1 \
    || { cat "$STATE/teacher-uninterrupted.log" >&2; die "the uninterrupted teacher run failed"; }
python - "$R/teacher/mnist1d/cnn/seed0" "$STATE/teacher-uninterrupted" <<'PY' \
    || die "the resumed teacher differs from an uninterrupted run"
import json, sys
import numpy as np
def metrics(run_dir):  # metrics.json minus the fields that measure time
    m = json.load(open(f"{run_dir}/metrics.json"))
    for k in ("wall_s", "compile_s", "steps_per_s"):
        m["compute"].pop(k)
    for h in m["history"]:
        h.pop("wall_s")
    return m
resumed, uninterrupted = sys.argv[1:]
assert metrics(resumed) == metrics(uninterrupted), "metrics.json differs"
a, b = np.load(f"{resumed}/predictions.npz"), np.load(f"{uninterrupted}/predictions.npz")
assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a), "predictions.npz differs"
PY
ref_wall=$(( $(date +%s) - ref_start ))

echo "run_local_slurm: OK: $submitted SLURM jobs, $runs runs, $R/tables/summary.csv; teacher job $cancelled_job" \
    "requeued at step $requeue_stop and resumed, cancelled at step $stopped and resumed by its retry, equal to an" \
    "uninterrupted run (${ref_wall} s; the requeued job pending with $(cat "$STATE/requeue-hold" 2>/dev/null ||
    echo 'no hold')); snakemake ${run_wall} s, total $(( $(date +%s) - start )) s"
