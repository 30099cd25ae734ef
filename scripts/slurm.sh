#!/usr/bin/env bash
# scripts/slurm.sh start|stop|status|restart - a single-node Slurm cluster on 127.0.0.1 for tests and CI.
#
# Debian 12 packages (slurmctld slurmd slurm-client munge, Slurm 22.05). No systemd needed: the daemons
# run in the foreground, detached with setsid; their PIDs are recorded in $MPVG_SLURM_RUN_DIR (default
# /run/mpvgbench-slurm) and `stop` kills exactly those PIDs. Idempotent: `start` on a healthy cluster
# does nothing, `stop` on a stopped one does nothing. Must run as root.
#
# Environment:
#   MPVG_SLURM_CPUS           CPUs advertised (default 8; more than exist => config_overrides, several small
#                             tasks run at once)
#   MPVG_SLURM_MEM_MB         RealMemory advertised (default: real value from `slurmd -C`)
#   MPVG_SLURM_CRED_EXPIRE    AuthInfo cred_expire (default 10: a requeued job restarts after ~11 s, not 121 s)
#   MPVG_SLURM_MAX_ARRAY      MaxArraySize (default 1001 => array indices 0..1000)
#   MPVG_SLURM_KEEP_STATE=1   keep slurmctld state (job ids) across restarts (default: wipe; ids restart at 1)
#   MPVG_SLURM_WAIT_S         bounded wait for the node to become idle (default 60)
set -euo pipefail

RUN_DIR=${MPVG_SLURM_RUN_DIR:-/run/mpvgbench-slurm}
LOG_DIR=/var/log/slurm
CTLD_SPOOL=/var/spool/slurmctld
SLURMD_SPOOL=/var/spool/slurmd
CONF=/etc/slurm/slurm.conf
NODE=localhost
WAIT_S=${MPVG_SLURM_WAIT_S:-60}

now_ms() { date +%s%3N; }
T0=$(now_ms)
log() { printf '[slurm.sh +%ss] %s\n' "$(( ($(now_ms) - T0) / 1000 ))" "$*"; }
die() { echo "[slurm.sh] error: $*" >&2; exit 1; }

pid_of() { [ -s "$RUN_DIR/$1.pid" ] && cat "$RUN_DIR/$1.pid" || true; }
# alive PID EXE: process exists, is not a zombie and runs the expected binary (guards against PID reuse)
alive() { [ -n "$1" ] && readlink "/proc/$1/exe" 2>/dev/null | grep -q "$2"; }

node_state() { timeout 5 sinfo -h -N -n "$NODE" -o %t 2>/dev/null | head -1 || true; }

healthy() {
    alive "$(pid_of munged)" munged && alive "$(pid_of slurmctld)" slurmctld \
        && alive "$(pid_of slurmd)" slurmd && [ -n "$(node_state)" ]
}

install_packages() {
    local missing=0 b
    for b in slurmctld slurmd sinfo sbatch squeue scancel munged munge; do
        command -v "$b" >/dev/null 2>&1 || missing=1
    done
    [ "$missing" -eq 0 ] && return 0
    log "installing slurmctld slurmd slurm-client munge (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null 2>&1; then
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
    fi
    # where systemd is PID 1 the packages may have started their own units: we run our own daemons
    if [ -d /run/systemd/system ]; then systemctl stop slurmd slurmctld munge 2>/dev/null || true; fi
    log "installed $(slurmd -V)"
}

setup_munge() {
    id munge >/dev/null 2>&1 || die "user 'munge' missing (munge package broken?)"
    install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
    install -d -o munge -g munge -m 0755 /run/munge
    [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
}

write_conf() {
    local hw real_mem mem cpus def_mem
    hw="$(slurmd -C | head -1)"
    real_mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
    cpus=${MPVG_SLURM_CPUS:-8}
    mem=${MPVG_SLURM_MEM_MB:-$real_mem}
    def_mem=$(( mem / cpus / 2 ))      # jobs without --mem get this per CPU (else one job takes the node)
    [ "$def_mem" -ge 100 ] || def_mem=100
    mkdir -p /etc/slurm "$LOG_DIR"
    cat > "$CONF" <<EOF
# Written by mpvgbench scripts/slurm.sh: single-node cluster on 127.0.0.1, no accounting database.
ClusterName=mpvgbench
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
# bind to 127.0.0.1 (SlurmctldHost / NodeAddr), never 0.0.0.0
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
SlurmctldPort=6817
SlurmdPort=6818
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$def_mem
SchedulerType=sched/backfill
# jobs start ~1 s after sbatch; requeued jobs are reconsidered every 1-2 s
SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=1
# a requeued job may restart cred_expire+1 s after the requeue (Slurm default 120)
AuthInfo=cred_expire=${MPVG_SLURM_CRED_EXPIRE:-10}
MaxArraySize=${MPVG_SLURM_MAX_ARRAY:-1001}
ReturnToService=2
KillWait=5
MinJobAge=600
# more CPUs advertised than exist: do not check the hardware
SlurmdParameters=config_overrides
StateSaveLocation=$CTLD_SPOOL
SlurmdSpoolDir=$SLURMD_SPOOL
SlurmctldPidFile=$RUN_DIR/slurmctld.daemon.pid
SlurmdPidFile=$RUN_DIR/slurmd.daemon.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus Boards=1 SocketsPerBoard=1 CoresPerSocket=$cpus ThreadsPerCore=1 RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    chmod 0644 "$CONF"
}

start_daemon() {  # NAME LOGFILE CMD...
    local name=$1 out=$2; shift 2
    setsid "$@" >>"$out" 2>&1 </dev/null &
    echo $! >"$RUN_DIR/$name.pid"
}

cmd_stop() {
    local ctld slurmd p stepd=""
    ctld=$(pid_of slurmctld); slurmd=$(pid_of slurmd)
    if alive "$ctld" slurmctld && alive "$slurmd" slurmd; then
        local jobs
        jobs=$(timeout 5 squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ' || true)
        if [ -n "${jobs// /}" ]; then
            log "cancelling jobs: $jobs"
            # shellcheck disable=SC2086
            timeout 10 scancel $jobs 2>/dev/null || true
            for _ in $(seq 1 150); do
                [ -z "$(timeout 5 squeue -h -o %A 2>/dev/null || true)" ] && break
                sleep 0.1
            done
        fi
    fi
    # slurmstepd processes forked by our slurmd re-parent to PID 1: note them before stopping slurmd
    if alive "$slurmd" slurmd; then
        for p in /proc/[0-9]*; do
            p=${p#/proc/}
            if readlink "/proc/$p/exe" 2>/dev/null | grep -q slurmstepd; then stepd="$stepd $p"; fi
        done
    fi
    local name pid
    for name in slurmd slurmctld munged; do
        pid=$(pid_of "$name")
        if alive "$pid" "$name"; then
            kill -TERM "$pid"
            for _ in $(seq 1 100); do alive "$pid" "$name" || break; sleep 0.1; done
            if alive "$pid" "$name"; then kill -KILL "$pid" 2>/dev/null || true; fi
            log "stopped $name (pid $pid)"
        fi
        rm -f "$RUN_DIR/$name.pid"
    done
    for p in $stepd; do
        if alive "$p" slurmstepd; then kill -KILL "$p" 2>/dev/null || true; fi
    done
    rm -f "$RUN_DIR"/*.daemon.pid /run/munge/munged.pid
    log "stopped"
}

cmd_start() {
    [ "$(id -u)" -eq 0 ] || die "must run as root (installs packages, writes /etc/slurm)"
    mkdir -p "$RUN_DIR"
    if healthy; then
        log "already running (node state: $(node_state))"
        return 0
    fi
    # a partial instance (some daemon died): stop what is left, then start clean
    if compgen -G "$RUN_DIR/*.pid" >/dev/null; then cmd_stop; fi
    install_packages
    setup_munge
    write_conf
    if [ "${MPVG_SLURM_KEEP_STATE:-0}" != 1 ]; then
        rm -rf "$CTLD_SPOOL" "$SLURMD_SPOOL"
    fi
    mkdir -p "$CTLD_SPOOL" "$SLURMD_SPOOL"
    local port
    for port in 6817 6818; do
        if ss -Hltn "sport = :$port" 2>/dev/null | grep -q .; then
            die "port $port already in use (another Slurm running? see: ss -ltnp 'sport = :$port')"
        fi
    done
    start_daemon munged /var/log/munge/munged.out \
        setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged --foreground
    for _ in $(seq 1 100); do munge -n </dev/null >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n </dev/null | unmunge >/dev/null 2>&1 || { tail -n 20 /var/log/munge/munged.out >&2; die "munged not working"; }
    start_daemon slurmctld "$LOG_DIR/slurmctld.out" /usr/sbin/slurmctld -D
    start_daemon slurmd "$LOG_DIR/slurmd.out" /usr/sbin/slurmd -D -N "$NODE"
    local state="" d deadline=$(( $(now_ms) + WAIT_S * 1000 ))
    while [ "$(now_ms)" -lt "$deadline" ]; do
        state=$(node_state)
        [ "$state" = idle ] && break
        for d in slurmctld slurmd; do
            if ! alive "$(pid_of "$d")" "$d"; then
                tail -n 30 "$LOG_DIR/$d.out" "$LOG_DIR/$d.log" >&2 2>/dev/null || true
                cmd_stop >/dev/null 2>&1 || true
                die "$d died during startup (logs above)"
            fi
        done
        sleep 0.2
    done
    if [ "$state" != idle ]; then
        tail -n 30 "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" >&2 2>/dev/null || true
        die "node not idle after ${WAIT_S}s (state '$state')"
    fi
    log "cluster ready: $(timeout 5 sinfo -h -o '%P %a %D %t %c' | head -1)"
}

cmd_status() {
    local name pid rc=0
    for name in munged slurmctld slurmd; do
        pid=$(pid_of "$name")
        if alive "$pid" "$name"; then echo "$name: running (pid $pid)"; else echo "$name: stopped"; rc=1; fi
    done
    if [ "$rc" -eq 0 ]; then
        timeout 5 sinfo || rc=1
        timeout 5 squeue || true
    fi
    return "$rc"
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    restart) cmd_stop; cmd_start ;;
    status) cmd_status ;;
    *) echo "usage: $0 start|stop|status|restart" >&2; exit 2 ;;
esac
