#!/usr/bin/env bash
# A private, real Slurm cluster on 127.0.0.1 for the tests marked `slurm`.
#
#   bash .ci/slurm-cluster.sh install      # apt-get the daemons when missing (CI runs this)
#   bash .ci/slurm-cluster.sh start [DIR]  # write configs into DIR (default: a new temp dir),
#                                          # start munged, slurmctld, two slurmd and slurmrestd;
#                                          # the LAST line of stdout is DIR
#   bash .ci/slurm-cluster.sh stop DIR     # stop every daemon started in DIR, by PID
#
# What runs (Debian bookworm's Slurm 22.05), all on loopback, all configs and state in DIR:
#   * munged on its own socket (DIR/munge.sock) with its own key;
#   * slurmctld (cluster `aictest`), jobs as root, no accounting database;
#   * two slurmd (`node1`, `node2`, both 127.0.0.1 on their own ports), each advertising
#     16 CPUs, 32000 MB and four fake GPUs `gpu:h100:4` (gres.conf names four empty files:
#     with count-only lines Slurm 22.05 reports 0 GPUs and drains the node);
#   * slurmrestd on 127.0.0.1:PORT with JWT auth (AuthAltTypes=auth/jwt, DIR/jwt.key),
#     run as the `slurm` user (it refuses root);
#   * partitions `gpu` (default, both nodes), `one` (node1 only, MaxTime 10 minutes) and
#     `urgent` (node1 only, higher PriorityTier: preempts the others' jobs there,
#     PreemptMode=CANCEL), so preemption can be tested without slurmdbd;
#   * ReturnToService=1: a node an operator sets DOWN stays down (with its reason).
#
# DIR/env holds what clients need: SLURM_CONF, SLURMRESTD_URL, SLURM_JWT (for root).
# Requirements: root, Debian bookworm (or compatible) packages; python3 (to pick free ports).
set -euo pipefail

log() { printf '[slurm-cluster] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

PACKAGES=(munge slurmctld slurmd slurmrestd slurm-client)

install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    ((${#missing[@]})) || { log "packages present: ${PACKAGES[*]}"; return 0; }
    [[ "$(id -u)" == 0 ]] || die "need root to install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    log "apt-get install ${missing[*]}"
    apt-get update -q >&2
    apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
    # The packages may start system daemons; the tests run their own on free ports.
    local svc
    for svc in munge slurmctld slurmd slurmrestd; do
        if [[ -d /run/systemd/system ]]; then systemctl stop "$svc" >/dev/null 2>&1 || true; fi
        if [[ -x /etc/init.d/$svc ]]; then "/etc/init.d/$svc" stop >/dev/null 2>&1 || true; fi
    done
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Wait until "$@" succeeds, at most $1 seconds.
wait_for() {
    local timeout=$1 what=$2
    shift 2
    local end=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < end)) || return 1
        sleep 0.2
    done
    log "$what is up"
}

stop_cluster() {
    local dir=$1 name pid
    [[ -d "$dir" ]] || return 0
    # Jobs first, while the controller is up: their steps (slurmstepd) would outlive slurmd.
    if [[ -f "$dir/slurmctld.pid" ]] && kill -0 "$(cat "$dir/slurmctld.pid")" 2>/dev/null; then
        local jobs
        jobs=$(SLURM_CONF="$dir/slurm.conf" squeue -h -o %i 2>/dev/null || true)
        if [[ -n "$jobs" ]]; then
            # shellcheck disable=SC2086  # one id per word
            SLURM_CONF="$dir/slurm.conf" scancel $jobs 2>/dev/null || true
            for _ in $(seq 50); do
                [[ -z "$(SLURM_CONF="$dir/slurm.conf" squeue -h -o %i 2>/dev/null)" ]] && break
                sleep 0.1
            done
        fi
    fi
    # Reverse order of start; each daemon is stopped by the PID it wrote (or we recorded).
    for name in slurmrestd slurmd-node2 slurmd-node1 slurmctld munged; do
        [[ -f "$dir/$name.pid" ]] || continue
        pid=$(cat "$dir/$name.pid")
        [[ "$pid" =~ ^[0-9]+$ ]] || continue
        kill -TERM "$pid" 2>/dev/null || continue
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    rm -f "$dir"/*.pid
    log "stopped the daemons of $dir"
}

start_cluster() {
    local dir=${1:-}
    [[ "$(id -u)" == 0 ]] || die "the test cluster runs its daemons as root (uid $(id -u))"
    local bin
    for bin in munged slurmctld slurmd slurmrestd scontrol; do
        command -v "$bin" >/dev/null 2>&1 || die "$bin is not installed (run: $0 install)"
    done
    id slurm >/dev/null 2>&1 || die "no 'slurm' user to run slurmrestd as"
    if [[ -z "$dir" ]]; then dir=$(mktemp -d /tmp/aicontract-slurm.XXXXXX); fi
    mkdir -p "$dir"/{state,spool-node1,spool-node2,dev,log}
    dir=$(cd "$dir" && pwd)
    # slurmrestd runs as `slurm` and must read slurm.conf: the dir is world-readable,
    # the keys in it are not.
    chmod 755 "$dir"
    local host
    host=$(hostname -s)
    local ctld_port node1_port node2_port rest_port
    ctld_port=$(free_port)
    node1_port=$(free_port)
    node2_port=$(free_port)
    rest_port=$(free_port)

    local g
    # Device files must be character devices: links to /dev/null stand in for GPUs.
    for g in 0 1 2 3; do
        ln -sf /dev/null "$dir/dev/gpu-node1-$g"
        ln -sf /dev/null "$dir/dev/gpu-node2-$g"
    done
    dd if=/dev/urandom of="$dir/munge.key" bs=1024 count=1 status=none
    chmod 600 "$dir/munge.key"
    dd if=/dev/urandom of="$dir/jwt.key" bs=32 count=1 status=none
    chmod 600 "$dir/jwt.key"

    cat >"$dir/slurm.conf" <<EOF
ClusterName=aictest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge.sock
AuthAltTypes=auth/jwt
AuthAltParameters=jwt_key=$dir/jwt.key
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool-%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd-%n.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=256
GresTypes=gpu
MailProg=/bin/true
SlurmdParameters=config_overrides
ReturnToService=1
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
PreemptType=preempt/partition_prio
PreemptMode=CANCEL
KillWait=2
MinJobAge=120
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
MessageTimeout=10
TmpFS=$dir
NodeName=node1 NodeHostname=$host NodeAddr=127.0.0.1 Port=$node1_port CPUs=16 RealMemory=32000 Gres=gpu:h100:4 State=UNKNOWN
NodeName=node2 NodeHostname=$host NodeAddr=127.0.0.1 Port=$node2_port CPUs=16 RealMemory=32000 Gres=gpu:h100:4 State=UNKNOWN
PartitionName=gpu Nodes=node1,node2 Default=YES MaxTime=1-00:00:00 State=UP PriorityTier=1 OverSubscribe=NO
PartitionName=urgent Nodes=node1 Default=NO MaxTime=1-00:00:00 State=UP PriorityTier=10 OverSubscribe=NO
PartitionName=one Nodes=node1 Default=NO MaxTime=00:10:00 State=UP PriorityTier=1 OverSubscribe=NO
EOF
    cat >"$dir/gres.conf" <<EOF
AutoDetect=off
NodeName=node1 Name=gpu Type=h100 File=$dir/dev/gpu-node1-[0-3]
NodeName=node2 Name=gpu Type=h100 File=$dir/dev/gpu-node2-[0-3]
EOF
    export SLURM_CONF="$dir/slurm.conf"
    # Whatever fails from here on, nothing started is left running.
    # shellcheck disable=SC2064
    trap "stop_cluster '$dir'" EXIT

    log "starting munged"
    munged --socket="$dir/munge.sock" --key-file="$dir/munge.key" --pid-file="$dir/munged.pid" \
        --log-file="$dir/log/munged.log" --seed-file="$dir/munged.seed" --force
    wait_for 10 munged test -S "$dir/munge.sock" || die "munged did not start: $(tail -5 "$dir/log/munged.log")"

    log "starting slurmctld on 127.0.0.1:$ctld_port"
    slurmctld -f "$dir/slurm.conf" -i
    wait_for 20 slurmctld scontrol ping || die "slurmctld did not answer: $(tail -20 "$dir/log/slurmctld.log")"

    log "starting slurmd node1 and node2"
    slurmd -f "$dir/slurm.conf" -N node1
    slurmd -f "$dir/slurm.conf" -N node2
    wait_for 30 "nodes" bash -c "[[ \$(sinfo -h -N -p gpu -t idle -o %N | sort -u | wc -l) == 2 ]]" ||
        die "the nodes did not become idle: $(scontrol show node 2>&1 | grep -E 'NodeName|State|Reason') $(tail -20 "$dir/log/slurmd-node1.log")"

    log "starting slurmrestd on 127.0.0.1:$rest_port (as slurm, JWT)"
    (
        # slurmrestd logs to stderr; keep it in a file and record its PID ourselves.
        SLURM_JWT=daemon slurmrestd -f "$dir/slurm.conf" -a rest_auth/jwt \
            -s openapi/v0.0.37,openapi/v0.0.38 -u slurm -g slurm "127.0.0.1:$rest_port" \
            >"$dir/log/slurmrestd.log" 2>&1 &
        echo $! >"$dir/slurmrestd.pid"
    )
    local token
    token=$(scontrol token username=root lifespan=86400 | sed -n 's/^SLURM_JWT=//p')
    [[ -n "$token" ]] || die "scontrol token gave no token"
    wait_for 20 slurmrestd curl -sf -H "X-SLURM-USER-NAME: root" -H "X-SLURM-USER-TOKEN: $token" \
        "http://127.0.0.1:$rest_port/slurm/v0.0.38/ping" ||
        die "slurmrestd did not answer: $(tail -20 "$dir/log/slurmrestd.log")"
    cat >"$dir/env" <<EOF
SLURM_CONF=$dir/slurm.conf
SLURMRESTD_URL=http://127.0.0.1:$rest_port
SLURM_JWT=$token
EOF
    trap - EXIT
    log "cluster ready in $dir"
    echo "$dir"
}

case "${1:-}" in
install) install_packages ;;
start)
    dir_arg=${2:-}
    if ! start_cluster "$dir_arg"; then exit 1; fi
    ;;
stop)
    [[ -n "${2:-}" ]] || die "usage: $0 stop DIR"
    stop_cluster "$2"
    ;;
*) die "usage: $0 install | start [DIR] | stop DIR" ;;
esac
