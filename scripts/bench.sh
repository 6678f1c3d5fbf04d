#!/usr/bin/env bash
# capkv vs etcd on this machine: fresh 3-node clusters of each on loopback
# (never both at once), the same closed-loop workloads through capkv-bench,
# capkv and etcd runs alternating, then results.json, results.md and
# chart.png in bench-results/<date>/. Run with --help for the options.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<'EOF'
Usage: scripts/bench.sh [--quick] [options]

Runs the benchmark matrix (issue 5) against a fresh 3-node capkv cluster and a
fresh 3-node etcd cluster per run, alternating capkv and etcd runs, and writes
bench-results/<date>/{runs.jsonl,results.json,results.md,chart.png}.

  --quick              put (strong, strong-coalesced, local, local-coalesced;
                       etcd put) at 16 and
                       64 clients, get
                       (linearizable, eventual; etcd linearizable, serializable)
                       at 64 clients; 1 s warm-up, 5 s windows (under 3 minutes)
  --clients LIST       client counts, comma-separated (default 1,16,64,256)
  --workloads LIST     of put,ingest,get,range (default all four)
  --batches LIST       ingest batch sizes (default 1,10,100)
  --warmup-s S         warm-up per run (default 2; quick 1)
  --duration-s S       measured window per run (default 10; quick 5)
  --repeat N           run the whole matrix N times (A B A B ...); the tables
                       show medians (default 1)
  --get-keys N         keys preloaded for get (default 10000)
  --out DIR            output directory (default bench-results/<UTC date>)
  --skip-build         use the binaries in target/release as they are
  --bin-dir DIR        use capkv-node, capkv and capkv-bench from DIR (no build),
                       e.g. a build of another commit
  --list               print the runs it would make, and exit
  --resume DIR         continue an interrupted run in DIR (a bench-results/<date>
                       directory): runs already in DIR/runs.jsonl are skipped
  -h, --help           this text

Needs root only to install etcd-server (apt-get) when etcd is missing. The
nodes listen on 127.0.0.11-13 (capkv on ports CAPKV_BENCH_PORT.. , default
27001; etcd clients on ETCD_BENCH_CLIENT_PORT.., default 22379, peers on
ETCD_BENCH_PEER_PORT.., default 22479). Data lives under
bench-results/tmp/ (a real disk: fsync must cost what it costs) and is removed
after each run. Before each run the script waits (at most 30 min) while a
cargo or rustc process runs on the machine (a compile makes fsync ~30x
slower) or other processes use more than BENCH_FOREIGN_LOAD_MAX_PERCENT
(default 15) percent of a CPU; each run records the CPU that other
processes used during its window ("other CPU s" in results.md).
EOF
}

QUICK=0
CLIENTS=1,16,64,256
WORKLOADS=put,ingest,get,range
BATCHES=1,10,100
WARMUP_S=""
DURATION_S=""
REPEAT=1
GET_KEYS=10000
OUT=""
SKIP_BUILD=0
BIN_SOURCE=""
LIST=0
RESUME=""
ORIGINAL_ARGS="$*"

while (($# > 0)); do
    case $1 in
    --quick) QUICK=1 ;;
    --clients) CLIENTS=${2:?--clients needs a list}; shift ;;
    --workloads) WORKLOADS=${2:?--workloads needs a list}; shift ;;
    --batches) BATCHES=${2:?--batches needs a list}; shift ;;
    --warmup-s) WARMUP_S=${2:?}; shift ;;
    --duration-s) DURATION_S=${2:?}; shift ;;
    --repeat) REPEAT=${2:?}; shift ;;
    --get-keys) GET_KEYS=${2:?}; shift ;;
    --out) OUT=${2:?}; shift ;;
    --skip-build) SKIP_BUILD=1 ;;
    --bin-dir) BIN_SOURCE=${2:?--bin-dir needs a directory}; SKIP_BUILD=1; shift ;;
    --list) LIST=1 ;;
    --resume) RESUME=${2:?--resume needs a directory}; OUT=$RESUME; shift ;;
    -h | --help) usage; exit 0 ;;
    *) printf 'bench.sh: unknown option %s\n' "$1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
# LAG_TIMEOUT_S: how long a run waits for its last LOCAL writes to become
# visible through a LINEARIZABLE read before it reports "not visible in time".
if ((QUICK)); then
    WARMUP_S=${WARMUP_S:-1}
    DURATION_S=${DURATION_S:-5}
    LAG_TIMEOUT_S=15
else
    WARMUP_S=${WARMUP_S:-2}
    DURATION_S=${DURATION_S:-10}
    LAG_TIMEOUT_S=30
fi
[[ $REPEAT =~ ^[1-9][0-9]?$ ]] || capkv_die "--repeat must be 1 to 99"
[[ $GET_KEYS =~ ^[1-9][0-9]*$ ]] || capkv_die "--get-keys must be a positive number"
[[ $(uname -s) == Linux ]] || capkv_die "needs Linux (nodes on 127.0.0.11-13, /proc)"

CAPKV_PORT=${CAPKV_BENCH_PORT:-27001}
ETCD_CLIENT_PORT=${ETCD_BENCH_CLIENT_PORT:-22379}
ETCD_PEER_PORT=${ETCD_BENCH_PEER_PORT:-22479}
NODES=3
# SIGTERM, then SIGKILL after this long (the data is thrown away anyway; a node
# that needs the SIGKILL is reported in bench.log).
STOP_TIMEOUT_SECONDS=5
START_TIMEOUT_SECONDS=30
# The longest wait for someone else's build or load before measuring anyway,
# and the load (percent of one CPU, ours stopped) that counts as busy.
QUIET_WAIT_MAX_SECONDS=1800
FOREIGN_LOAD_MAX_PERCENT=${BENCH_FOREIGN_LOAD_MAX_PERCENT:-15}
CLK_TCK=$(getconf CLK_TCK 2>/dev/null || printf 100)

STARTED_AT=$SECONDS
WORK=""
LOG=/dev/null

say() { printf '%s\n' "$*" | tee -a "$LOG"; }

# ----- the clusters this script started, and the trap that stops them -------

CAPKV_UP=""     # CAPKV_DATA_DIR of the running capkv cluster
ETCD_PIDS=()    # pids of the running etcd members
ETCD_DIR=""

stop_capkv() {
    [[ -n $CAPKV_UP ]] || return 0
    local out
    out=$(CAPKV_DATA_DIR=$CAPKV_UP CAPKV_BASE_PORT=$CAPKV_PORT CAPKV_BIN_DIR=$BIN \
        CAPKV_STOP_TIMEOUT=$STOP_TIMEOUT_SECONDS \
        "$CAPKV_REPO/scripts/cluster.sh" stop 2>&1) || true
    printf '%s\n' "$out" >>"$LOG"
    if [[ $out == *"did not stop"* ]]; then
        printf '%s\n' "$out" | grep 'did not stop' | sed 's/^/  note: capkv /' | tee -a "$LOG"
    fi
    CAPKV_UP=""
}

# Succeeds when $1 is one of our etcd members (command line names our dir).
is_our_etcd() {
    local cmdline
    [[ -r /proc/$1/cmdline ]] || return 1
    cmdline=$(tr '\0' ' ' 2>/dev/null <"/proc/$1/cmdline") || return 1
    [[ $cmdline == *etcd* && $cmdline == *"$ETCD_DIR"* ]]
}

stop_etcd() {
    ((${#ETCD_PIDS[@]} > 0)) || return 0
    local pid deadline=$((SECONDS + STOP_TIMEOUT_SECONDS)) left
    for pid in "${ETCD_PIDS[@]}"; do
        if is_our_etcd "$pid"; then kill -TERM "$pid" 2>/dev/null || true; fi
    done
    while :; do
        left=0
        for pid in "${ETCD_PIDS[@]}"; do is_our_etcd "$pid" && left=1; done
        ((left && SECONDS < deadline)) || break
        sleep 0.1
    done
    for pid in "${ETCD_PIDS[@]}"; do
        if is_our_etcd "$pid"; then
            kill -KILL "$pid" 2>/dev/null || true
            say "  note: etcd pid $pid did not stop within ${STOP_TIMEOUT_SECONDS} s after SIGTERM; sent SIGKILL"
        fi
    done
    ETCD_PIDS=()
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    stop_capkv
    stop_etcd
    [[ -z $WORK ]] || rm -rf -- "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ----- prerequisites ---------------------------------------------------------

ensure_etcd() {
    if command -v etcd >/dev/null 2>&1; then
        return 0
    fi
    ((EUID == 0)) || capkv_die "etcd is not installed; run as root (installs etcd-server with apt-get) or install it yourself"
    command -v apt-get >/dev/null 2>&1 || capkv_die "etcd is not installed and there is no apt-get"
    say "installing etcd-server (apt-get)"
    if ! apt-get update -qq >>"$LOG" 2>&1 ||
        ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >>"$LOG" 2>&1; then
        capkv_die "apt-get install etcd-server failed (see $LOG)"
    fi
    command -v etcd >/dev/null 2>&1 || capkv_die "etcd-server installed but no etcd on PATH"
    # Debian may start a system etcd on 127.0.0.1:2379; ours use other
    # addresses and ports, so it is left alone.
}

# etcd-client's build script needs protoc: PROTOC, protoc on PATH, the
# vendored one capkv already downloads, or Debian's protobuf-compiler.
ensure_protoc() {
    [[ -n ${PROTOC:-} && -x ${PROTOC:-} ]] && return 0
    command -v protoc >/dev/null 2>&1 && return 0
    local registry=${CARGO_HOME:-$HOME/.cargo}/registry/src arch candidate
    case $(uname -m) in
    x86_64) arch=linux-x86_64 ;;
    aarch64) arch=linux-aarch_64 ;;
    *) arch=unknown ;;
    esac
    (cd "$CAPKV_REPO" && cargo fetch >>"$LOG" 2>&1) || true
    for candidate in "$registry"/*/protoc-bin-vendored-"$arch"-*/bin/protoc; do
        if [[ -x $candidate ]]; then
            export PROTOC=$candidate
            return 0
        fi
    done
    if ((EUID != 0)) || ! command -v apt-get >/dev/null 2>&1; then
        capkv_die "no protoc for etcd-client's build: set PROTOC or install protobuf-compiler"
    fi
    say "installing protobuf-compiler (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler >>"$LOG" 2>&1 ||
        capkv_die "apt-get install protobuf-compiler failed (see $LOG)"
}

# Busy CPU ticks of the whole machine (user nice system irq softirq steal).
busy_ticks() {
    awk '/^cpu /{ print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat
}

# The machine's busy CPU over one second, in percent of one CPU. Called while
# none of our clusters runs, so it is load from someone else.
foreign_load_percent() {
    local a b
    a=$(busy_ticks)
    sleep 1
    b=$(busy_ticks)
    printf '%s\n' $(((b - a) * 100 / CLK_TCK))
}

# Waits while a compiler runs, another capkv or etcd cluster runs (say a test
# suite; our own clusters are stopped between runs), partition rules of
# partition.sh or the Jepsen harness are in place (they cut 127.0.0.11-13, our
# addresses too), or other processes keep the CPUs busy: a build next to a
# benchmark makes fsync an order of magnitude slower, and any load steals the
# 2 cores from the servers. Gives up after QUIET_WAIT_MAX_SECONDS
# and measures anyway (each run records the CPU others used in its window).
wait_for_quiet_machine() {
    local waited=0 busy others rules load reason=""
    while :; do
        busy=$(pgrep -x 'cargo|rustc|cc1|cc1plus|ld' 2>/dev/null | head -n 3 | tr '\n' ' ') || true
        load=$(foreign_load_percent)
        # Live ones only: a zombie left by someone else's kill holds nothing.
        others=$(ps -eo pid=,stat=,comm= | awk '$2 !~ /^Z/ && ($3 == "capkv-node" || $3 == "etcd") { print $1 }' |
            head -n 3 | tr '\n' ' ') || true
        rules=""
        if ((EUID == 0)) && command -v iptables >/dev/null 2>&1; then
            rules=$(iptables -S 2>/dev/null | grep -o -m 1 'CAPKV-[A-Z]*') || true
        fi
        if [[ -n $busy ]]; then
            reason="a build (pids $busy)"
        elif [[ -n $others ]]; then
            reason="another capkv or etcd cluster (pids $others)"
        elif [[ -n $rules ]]; then
            reason="partition rules (iptables chain $rules) on the loopback addresses"
        elif ((load > FOREIGN_LOAD_MAX_PERCENT)); then
            reason="other processes using ${load}% of a CPU"
        else
            return 0
        fi
        if ((waited == 0)); then
            say "  waiting: $reason; measuring once the machine is quiet"
        fi
        if ((waited >= QUIET_WAIT_MAX_SECONDS)); then
            say "  WARNING: still $reason after ${QUIET_WAIT_MAX_SECONDS} s; measuring anyway"
            return 0
        fi
        sleep 4
        waited=$((waited + 5))
    done
}

# ----- capkv -----------------------------------------------------------------

CAPKV_ENDPOINTS=""
for ((i = 1; i <= NODES; i++)); do
    CAPKV_ENDPOINTS+="${CAPKV_ENDPOINTS:+,}127.0.0.1$i:$((CAPKV_PORT + i - 1))"
done

# Starts a fresh capkv cluster in $1; sets PIDS and DIRS.
start_capkv() {
    local dir=$1 i
    rm -rf -- "$dir"
    CAPKV_UP=$dir
    CAPKV_DATA_DIR=$dir CAPKV_BASE_PORT=$CAPKV_PORT CAPKV_BIN_DIR=$BIN \
        CAPKV_START_TIMEOUT=$START_TIMEOUT_SECONDS \
        "$CAPKV_REPO/scripts/cluster.sh" start >>"$LOG" 2>&1 || return 1
    PIDS="" DIRS=""
    for ((i = 1; i <= NODES; i++)); do
        PIDS+="${PIDS:+,}$(<"$dir/node$i.pid")"
        DIRS+="${DIRS:+,}$dir/node$i"
    done
}

# ----- etcd ------------------------------------------------------------------

ETCD_ENDPOINTS=""
ETCD_CLUSTER=""
for ((i = 1; i <= NODES; i++)); do
    ETCD_ENDPOINTS+="${ETCD_ENDPOINTS:+,}127.0.0.1$i:$((ETCD_CLIENT_PORT + i - 1))"
    ETCD_CLUSTER+="${ETCD_CLUSTER:+,}e$i=http://127.0.0.1$i:$((ETCD_PEER_PORT + i - 1))"
done

etcd_healthy() {
    curl -fsS --max-time 2 "http://$1/health" 2>/dev/null | grep -q '"health":"true"'
}

# Starts a fresh 3-member etcd cluster in $1; sets PIDS and DIRS.
start_etcd() {
    local dir=$1 i host client peer pidfile token
    rm -rf -- "$dir"
    mkdir -p "$dir"
    ETCD_DIR=$dir
    token=capkv-bench-$RANDOM$RANDOM
    for ((i = 1; i <= NODES; i++)); do
        host=127.0.0.1$i
        client=http://$host:$((ETCD_CLIENT_PORT + i - 1))
        peer=http://$host:$((ETCD_PEER_PORT + i - 1))
        if capkv_port_open "$host" $((ETCD_CLIENT_PORT + i - 1)) || capkv_port_open "$host" $((ETCD_PEER_PORT + i - 1)); then
            say "etcd member $i: $host port in use"
            return 1
        fi
        pidfile=$dir/e$i.pid
        # The inner shell writes its own pid, then becomes etcd.
        # shellcheck disable=SC2016
        setsid bash -c 'echo "$$" >"$0" && exec "$@"' "$pidfile" \
            etcd --name "e$i" --data-dir "$dir/e$i" \
            --listen-client-urls "$client" --advertise-client-urls "$client" \
            --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
            --initial-cluster "$ETCD_CLUSTER" --initial-cluster-state new \
            --initial-cluster-token "$token" --logger zap --log-outputs stderr \
            </dev/null >>"$dir/e$i.log" 2>&1 &
        # Not a job of this shell: no "Killed" message when it is stopped.
        disown
        local waited=0
        until [[ -s $pidfile ]]; do
            ((waited < 50)) || { say "etcd member $i: no pid file"; return 1; }
            sleep 0.1
            waited=$((waited + 1))
        done
        ETCD_PIDS+=("$(<"$pidfile")")
    done
    local deadline=$((SECONDS + START_TIMEOUT_SECONDS)) ep all
    while :; do
        all=1
        for ep in ${ETCD_ENDPOINTS//,/ }; do etcd_healthy "$ep" || all=0; done
        ((all)) && break
        if ((SECONDS >= deadline)); then
            say "etcd cluster not healthy after ${START_TIMEOUT_SECONDS} s; last log lines:"
            tail -n 5 "$dir"/e*.log | tee -a "$LOG" >&2
            return 1
        fi
        sleep 0.2
    done
    PIDS=$(IFS=,; printf '%s' "${ETCD_PIDS[*]}")
    DIRS="$dir/e1,$dir/e2,$dir/e3"
}

# ----- the matrix ------------------------------------------------------------

has() { [[ ",$1," == *",$2,"* ]]; }

# One entry per run: "system workload level clients batch", capkv and etcd
# alternating within each (workload, batch, clients) group.
PLAN=()
add_group() { # workload clients batch capkv-levels etcd-levels (space-separated)
    local workload=$1 clients=$2 batch=$3 c e i
    read -r -a c <<<"$4"
    read -r -a e <<<"$5"
    for ((i = 0; i < ${#c[@]} || i < ${#e[@]}; i++)); do
        ((i < ${#c[@]})) && PLAN+=("capkv $workload ${c[i]} $clients $batch")
        ((i < ${#e[@]})) && PLAN+=("etcd $workload ${e[i]} $clients $batch")
    done
    return 0
}

if ((QUICK)); then
    for clients in 16 64; do
        add_group put "$clients" 1 "strong strong-coalesced local local-coalesced" "strong"
    done
    add_group get 64 1 "linearizable eventual" "linearizable serializable"
    COMMAND="scripts/bench.sh${ORIGINAL_ARGS:+ $ORIGINAL_ARGS}"
else
    for ((r = 0; r < REPEAT; r++)); do
        for clients in ${CLIENTS//,/ }; do
            if has "$WORKLOADS" put; then
                add_group put "$clients" 1 "strong strong-coalesced local local-coalesced strong-or-local" "strong"
            fi
            if has "$WORKLOADS" ingest; then
                for batch in ${BATCHES//,/ }; do
                    add_group ingest "$clients" "$batch" "strong local" "strong"
                done
            fi
            if has "$WORKLOADS" get; then
                add_group get "$clients" 1 "linearizable eventual bounded:100" "linearizable serializable"
            fi
            if has "$WORKLOADS" range; then
                add_group range "$clients" 1 "linearizable eventual" "linearizable serializable"
            fi
        done
    done
    COMMAND="scripts/bench.sh${ORIGINAL_ARGS:+ $ORIGINAL_ARGS}"
fi
((REPEAT == 1 || QUICK == 0)) || capkv_die "--repeat does not combine with --quick"
((${#PLAN[@]} > 0)) || capkv_die "nothing to run (check --workloads and --clients)"

if ((LIST)); then
    printf '%s\n' "${PLAN[@]}"
    printf '%s runs\n' "${#PLAN[@]}"
    exit 0
fi

# ----- output and scratch directories ------------------------------------------

STAMP=$(date -u +%Y-%m-%dT%H-%M-%SZ)
if [[ -z $OUT ]]; then
    OUT=$CAPKV_REPO/bench-results/$STAMP
    ((QUICK == 0)) || OUT+=-quick
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
RUNS=$OUT/runs.jsonl
LOG=$OUT/bench.log
if [[ -n $RESUME ]]; then
    [[ -f $RUNS ]] || capkv_die "--resume: no $RUNS"
else
    : >"$RUNS"
fi
# Data on the repository's disk (not a tmpfs: fsync must cost what it costs),
# in the git-ignored bench-results/tmp/.
mkdir -p "$CAPKV_REPO/bench-results/tmp"
WORK=$(mktemp -d "$CAPKV_REPO/bench-results/tmp/run.XXXXXX")


# ----- build -----------------------------------------------------------------

ensure_etcd
say "capkv-bench: ${#PLAN[@]} runs, warm-up ${WARMUP_S} s, window ${DURATION_S} s; results in $OUT"
if ((SKIP_BUILD == 0)); then
    ensure_protoc
    say "building release binaries (capkv-node, capkv, capkv-bench with the etcd target)"
    (cd "$CAPKV_REPO" && cargo build --release -p capkv-node -p capkv-client -p capkv-bench \
        --features capkv-bench/etcd) >>"$LOG" 2>&1 || capkv_die "cargo build failed (see $LOG)"
fi
# Private copies: another build replacing target/release mid-run changes nothing.
BIN=$WORK/bin
mkdir -p "$BIN"
BIN_SOURCE=${BIN_SOURCE:-$CAPKV_REPO/target/release}
for bin in capkv-node capkv capkv-bench; do
    [[ -x $BIN_SOURCE/$bin ]] || capkv_die "no $BIN_SOURCE/$bin"
    cp "$BIN_SOURCE/$bin" "$BIN/"
done
# With --skip-build or --bin-dir, a capkv-bench built without the etcd target
# would fail every etcd run: refuse before the first run instead.
if printf '%s\n' "${PLAN[@]}" | grep -q '^etcd ' \
    && ! "$BIN/capkv-bench" targets | grep -qx etcd; then
    capkv_die "$BIN_SOURCE/capkv-bench was built without the etcd target; run without --skip-build, or build it with: cargo build --release -p capkv-bench --features etcd"
fi
BUILD_DONE_AT=$SECONDS
# The tree the binaries were built from (edits made during the runs do not count).
commit=$(cd "$CAPKV_REPO" && git rev-parse --short HEAD 2>/dev/null || printf unknown)
dirty=$(cd "$CAPKV_REPO" && git status --porcelain -- node client proto 2>/dev/null | head -n 1)

# ----- run -------------------------------------------------------------------

# The CPU seconds other processes used in the window of the last record of
# runs.jsonl (machine busy time minus our servers and capkv-bench).
last_run_other_cpu() {
    python3 - "$RUNS" <<'PY'
import json, sys
lines = [line for line in open(sys.argv[1]) if line.strip()]
run = json.loads(lines[-1]) if lines else {}
machine = run.get("machine_cpu_s")
if machine is None:
    print(0)
else:
    print(max(0.0, machine - sum(run.get("server_cpu_s") or []) - (run.get("client_cpu_s") or 0.0)))
PY
}

# Moves the last record of runs.jsonl to disturbed.jsonl.
set_aside_last_run() {
    python3 - "$RUNS" "$OUT/disturbed.jsonl" <<'PY'
import sys
lines = [line for line in open(sys.argv[1]) if line.strip()]
if lines:
    with open(sys.argv[2], "a") as aside:
        aside.write(lines[-1])
    with open(sys.argv[1], "w") as runs:
        runs.writelines(lines[:-1])
PY
}

# A run counts as disturbed when other processes used more than a tenth of
# the machine's CPU during its window; it is then repeated (at most
# DISTURBED_RETRIES times) and the disturbed record kept in disturbed.jsonl.
DISTURBED_RETRIES=2
CPUS=$(getconf _NPROCESSORS_ONLN 2>/dev/null || printf 2)
DISTURBED_CPU_S=$(awk -v d="$DURATION_S" -v c="$CPUS" 'BEGIN { printf "%.2f", d * c * 0.1 }')

# One run of $1 (system) $2 (workload) $3 (level) $4 (clients) $5 (batch),
# on a fresh cluster; fails when the cluster does not start or the run fails.
run_once() {
    local system=$1 workload=$2 level=$3 clients=$4 batch=$5 dir started endpoints status=0
    dir=$WORK/$system
    if [[ $system == capkv ]]; then
        started=start_capkv
        endpoints=$CAPKV_ENDPOINTS
    else
        started=start_etcd
        endpoints=$ETCD_ENDPOINTS
    fi
    if ! $started "$dir"; then
        say "  FAILED to start $system"
        stop_capkv
        stop_etcd
        return 1
    fi
    local args=(--target "$system" --endpoints "$endpoints" --workload "$workload" --level "$level"
        --clients "$clients" --warmup-s "$WARMUP_S" --duration-s "$DURATION_S"
        --pids "$PIDS" --data-dirs "$DIRS" --lag-timeout-s "$LAG_TIMEOUT_S" --json-out "$RUNS")
    [[ $workload != ingest ]] || args+=(--batch "$batch")
    [[ $workload != get ]] || args+=(--keys "$GET_KEYS")
    # Bounded: the window, the preload and the lag check each have their own
    # limits inside capkv-bench; this is the outer guard.
    if ! timeout 900 "$BIN/capkv-bench" "${args[@]}" 2>&1 | sed 's/^/  /' | tee -a "$LOG"; then
        say "  run failed"
        mkdir -p "$OUT/failed-logs/$n"
        cp "$dir"/*.log "$OUT/failed-logs/$n/" 2>/dev/null || true
        status=1
    fi
    if [[ $system == capkv ]]; then stop_capkv; else stop_etcd; fi
    rm -rf -- "$dir"
    return "$status"
}

# With --resume: how many runs of each entry runs.jsonl already holds.
declare -A ALREADY=()
if [[ -n $RESUME ]]; then
    while read -r done_entry; do
        if [[ -n $done_entry ]]; then
            ALREADY[$done_entry]=$((${ALREADY[$done_entry]:-0} + 1))
        fi
    done < <(python3 - "$RUNS" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    if line.strip():
        r = json.loads(line)
        print(r["system"], r["workload"], r["level"], r["clients"], r["batch"])
PY
    )
fi

n=0
failed=0
repeated=0
skipped=0
total=${#PLAN[@]}
for entry in "${PLAN[@]}"; do
    read -r system workload level clients batch <<<"$entry"
    n=$((n + 1))
    if ((${ALREADY[$entry]:-0} > 0)); then
        ALREADY[$entry]=$((ALREADY[$entry] - 1))
        skipped=$((skipped + 1))
        continue
    fi
    elapsed=$((SECONDS - BUILD_DONE_AT))
    eta="?"
    if ((n - skipped > 1)); then
        remaining=$((elapsed * (total - n + 1) / (n - skipped - 1)))
        eta=$(printf '%d:%02d' $((remaining / 60)) $((remaining % 60)))
    fi
    label="$system $workload $level c=$clients"
    [[ $workload != ingest ]] || label+=" batch=$batch"
    say "[$n/$total] $label  (elapsed $(printf '%d:%02d' $((elapsed / 60)) $((elapsed % 60))), ETA $eta)"
    for ((attempt = 0; attempt <= DISTURBED_RETRIES; attempt++)); do
        wait_for_quiet_machine
        before=$(grep -c . "$RUNS" || true)
        if ! run_once "$system" "$workload" "$level" "$clients" "$batch"; then
            failed=$((failed + 1))
            break
        fi
        (($(grep -c . "$RUNS" || true) > before)) || break
        other=$(last_run_other_cpu)
        if awk -v o="$other" -v t="$DISTURBED_CPU_S" 'BEGIN { exit !(o > t) }'; then
            if ((attempt < DISTURBED_RETRIES)); then
                say "  disturbed: other processes used ${other} CPU s in the window (limit ${DISTURBED_CPU_S}); repeating the run"
                set_aside_last_run
                repeated=$((repeated + 1))
                continue
            fi
            say "  disturbed again (${other} CPU s of other processes); keeping this run"
        fi
        break
    done
done

total_s=$((SECONDS - STARTED_AT))
run_s=$((SECONDS - BUILD_DONE_AT))
if [[ $BIN_SOURCE == "$CAPKV_REPO/target/release" ]]; then
    capkv_build="commit $commit${dirty:+ with uncommitted changes in node/client/proto}"
else
    capkv_build="binaries from $BIN_SOURCE (${CAPKV_BENCH_BUILD_NOTE:-set CAPKV_BENCH_BUILD_NOTE to say which build})"
fi
notes=(--note "etcd: $(etcd --version 2>/dev/null | head -n 1 | sed 's/^etcd Version: //') (Debian etcd-server), 3 members on 127.0.0.11-13, default flags"
    --note "capkv: $capkv_build, 3 nodes on 127.0.0.11-13, default flags"
    --note "each run: a fresh cluster, ${WARMUP_S} s warm-up, ${DURATION_S} s measured window; get preloads $GET_KEYS keys, range 16 sensors x 2,000 readings; LOCAL runs wait up to ${LAG_TIMEOUT_S} s for the reconciliation lag"
    --note "runs: $total ($failed failed, $repeated repeated because other processes disturbed them), $((run_s / 60)) min $((run_s % 60)) s of runs, $((total_s / 60)) min $((total_s % 60)) s in all")
"$BIN/capkv-bench" report --runs "$RUNS" --out-dir "$OUT" --command "$COMMAND" "${notes[@]}" 2>&1 | tee -a "$LOG"
say "done in $((total_s / 60)) min $((total_s % 60)) s ($failed failed runs): $OUT/results.md"
((failed == 0))
