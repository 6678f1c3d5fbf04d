#!/usr/bin/env bash
# Runs a local capkv cluster of real processes: start, stop, kill, status, logs.
# Run with --help for the commands and the environment variables.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Bounds on the waits, in seconds; each can be raised from the environment on
# a slow machine.
START_TIMEOUT_SECONDS=${CAPKV_START_TIMEOUT:-30}
STOP_TIMEOUT_SECONDS=${CAPKV_STOP_TIMEOUT:-10}
POLL_SECONDS=0.2
# Per request, so a call to a hung node cannot stall a wait loop.
CLIENT_TIMEOUT_MS=2000

usage() {
    cat <<EOF
Usage: scripts/cluster.sh <command> [args]

Commands:
  start [i...]     start the nodes (default: all) in the background, form the
                   cluster (cluster init) and wait until it has a leader
  stop [i...]      SIGTERM the nodes this script started (default: all), SIGKILL
                   after ${STOP_TIMEOUT_SECONDS} s, remove their pid files
  kill <i...>      SIGKILL node i (crash test); 'start i' restarts it on its data
  status           per node: running or stopped, pid, address, data dir; then
                   'capkv cluster status'
  logs [i] [-f]    the last 40 lines of each node's log (or node i's); -f follows
  clean            stop, then remove the data directory
  help             this text

Node i (1..N) listens on 127.0.0.1i:(CAPKV_BASE_PORT + i - 1) on Linux
(127.0.0.1 elsewhere) and keeps data in \$CAPKV_DATA_DIR/node<i>/, its log in
\$CAPKV_DATA_DIR/node<i>.log and its pid in \$CAPKV_DATA_DIR/node<i>.pid.

Environment:
  CAPKV_DATA_DIR       data, logs and pid files (default: <repo>/.capkv)
  CAPKV_BASE_PORT      port of node 1 (default: 7001)
  CAPKV_NODES          number of nodes (default: 3)
  CAPKV_BIN_DIR        directory with capkv-node and capkv (default: run
                       'cargo build --release --bins', use <repo>/target/release)
  CAPKV_NODE_ARGS      extra flags for every capkv-node, e.g.
                       "--heartbeat-interval-ms 100 --election-timeout-min-ms 400"
  CAPKV_START_TIMEOUT  seconds to wait for the nodes and a leader (default: 30)
  CAPKV_STOP_TIMEOUT   seconds between SIGTERM and SIGKILL (default: 10)
  RUST_LOG             node log filter (default: the node's own)

Two clusters with different CAPKV_DATA_DIR and CAPKV_BASE_PORT run side by side.
EOF
}

# A wrong command prints the whole usage; a wrong argument only a pointer to it.
usage_error() {
    printf 'cluster.sh: %s\n' "$1" >&2
    if [[ ${2:-} == full ]]; then
        printf '\n' >&2
        usage >&2
    else
        printf "run 'scripts/cluster.sh help' for usage\n" >&2
    fi
    exit 2
}

# Validates node ids given on the command line into the array NODE_ARGS; no
# ids means all nodes.
parse_node_ids() {
    NODE_ARGS=()
    local id
    for id in "$@"; do
        if ! [[ $id =~ ^[1-9][0-9]*$ ]] || ((id < 1 || id > CAPKV_NODES)); then
            usage_error "not a node id (1 to $CAPKV_NODES): $id"
        fi
        NODE_ARGS+=("$id")
    done
    if ((${#NODE_ARGS[@]} == 0)); then
        mapfile -t NODE_ARGS < <(capkv_node_ids)
    fi
}

client() {
    "$CAPKV_BIN_DIR/capkv" --timeout-ms "$CLIENT_TIMEOUT_MS" "$@"
}

# How to call a script in the help text: relative when run from the repo root.
script_path() {
    if [[ $PWD == "$CAPKV_REPO" ]]; then
        printf 'scripts/%s\n' "$1"
    else
        printf '%s/scripts/%s\n' "$CAPKV_REPO" "$1"
    fi
}

print_log_tail() {
    local log
    log=$(capkv_node_log "$1")
    printf -- '--- last %s lines of %s ---\n' "${2:-30}" "$log" >&2
    if [[ -f $log ]]; then
        tail -n "${2:-30}" "$log" >&2
    else
        printf '(no log)\n' >&2
    fi
    printf -- '---\n' >&2
}

# Starts node $1 in its own session (so it outlives this script and ignores the
# terminal's signals) and writes its pid file.
launch_node() {
    local id=$1 dir log pidfile extra=() launcher=()
    dir=$(capkv_node_dir "$id")
    log=$(capkv_node_log "$id")
    pidfile=$(capkv_node_pidfile "$id")
    mkdir -p "$dir"
    read -r -a extra <<<"${CAPKV_NODE_ARGS:-}"
    local cmd=("$CAPKV_BIN_DIR/capkv-node" --id "$id" --listen "$(capkv_node_addr "$id")"
        --data-dir "$dir" --peers "$(capkv_peers)" "${extra[@]}")
    printf '==== %s cluster.sh: starting node %s: %s\n' \
        "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$id" "${cmd[*]}" >>"$log"

    rm -f "$pidfile" "$pidfile.tmp"
    if command -v setsid >/dev/null 2>&1; then
        launcher=(setsid)
    else
        launcher=(nohup)
    fi
    # setsid may fork, so $! is not necessarily the node: the inner shell writes
    # its own pid (atomically, through a rename) and then becomes the node.
    # NO_COLOR: plain text in the log file (tracing-subscriber honours it).
    # shellcheck disable=SC2016
    NO_COLOR=${NO_COLOR:-1} "${launcher[@]}" bash -c \
        'echo "$$" >"$0.tmp" && mv "$0.tmp" "$0" && exec "$@"' "$pidfile" "${cmd[@]}" \
        </dev/null >>"$log" 2>&1 &

    local waited=0
    until [[ -s $pidfile ]]; do
        ((waited < 50)) || capkv_die "node $id: no pid file after 5 s (see $log)"
        sleep 0.1
        waited=$((waited + 1))
    done
    printf 'node %s started (pid %s) on %s, log %s\n' "$id" "$(<"$pidfile")" "$(capkv_node_addr "$id")" "$log"
}

# Sends SIGTERM to the given running nodes, waits, SIGKILLs what is left and
# removes the pid files. Prints one line per node.
stop_nodes() {
    local id pid pidfile stopping=() pids=()
    for id in "$@"; do
        pidfile=$(capkv_node_pidfile "$id")
        if pid=$(capkv_node_pid "$id"); then
            kill -TERM "$pid" 2>/dev/null || true
            stopping+=("$id")
            pids+=("$pid")
        elif [[ -f $pidfile ]]; then
            rm -f "$pidfile"
            printf 'node %s not running (removed stale pid file)\n' "$id"
        else
            printf 'node %s not running\n' "$id"
        fi
    done
    ((${#stopping[@]} > 0)) || return 0

    local deadline=$((SECONDS + STOP_TIMEOUT_SECONDS)) k left
    while :; do
        left=0
        for k in "${!stopping[@]}"; do
            capkv_pid_is_node "${pids[k]}" "${stopping[k]}" && left=$((left + 1))
        done
        ((left > 0 && SECONDS < deadline)) || break
        sleep 0.1
    done
    for k in "${!stopping[@]}"; do
        id=${stopping[k]}
        pid=${pids[k]}
        if capkv_pid_is_node "$pid" "$id"; then
            kill -KILL "$pid" 2>/dev/null || true
            printf 'node %s did not stop within %s s after SIGTERM; sent SIGKILL (pid %s)\n' "$id" "$STOP_TIMEOUT_SECONDS" "$pid"
        else
            printf 'node %s stopped (pid %s)\n' "$id" "$pid"
        fi
        rm -f "$(capkv_node_pidfile "$id")"
    done
}

# Prints the cluster status as JSON from the given endpoints, or fails.
status_json() {
    client --endpoints "$1" --output json cluster status 2>/dev/null
}

# Waits until a leader is known and each of the given nodes is reachable and
# has joined (leader, follower or learner). Prints "<leader> <term>".
wait_for_leader() {
    local deadline json answer running endpoints
    deadline=$((SECONDS + START_TIMEOUT_SECONDS))
    while ((SECONDS < deadline)); do
        mapfile -t running < <(capkv_running_nodes)
        endpoints=$(capkv_endpoints "${running[@]}")
        if json=$(status_json "$endpoints") &&
            answer=$(python3 -c '
import json, sys
d = json.load(sys.stdin)
nodes = {n.get("id"): n for n in d.get("nodes") or []}
def joined(i):
    n = nodes.get(i)
    return (n is not None and n.get("reachable", True)
            and n.get("role", "follower") in ("leader", "follower", "learner"))
if d.get("leader") is not None and all(joined(int(i)) for i in sys.argv[1:]):
    print(d["leader"], d.get("term", "?"))
' "$@" <<<"$json" 2>/dev/null) && [[ -n $answer ]]; then
            printf '%s\n' "$answer"
            return 0
        fi
        sleep "$POLL_SECONDS"
    done
    printf 'cluster.sh: no leader (with nodes %s joined) after %s s; capkv --endpoints %s cluster status:\n' \
        "$*" "$START_TIMEOUT_SECONDS" "$endpoints" >&2
    client --endpoints "$endpoints" cluster status >&2 2>&1 || true
    return 1
}

# The nodes the current 'start' launched; a failed start stops them again.
STARTED=()

# Undoes a failed start: stops the nodes this invocation started, keeps their
# logs.
abort_start() {
    printf 'cluster.sh: start failed; stopping the nodes this command started: %s\n' "${STARTED[*]}" >&2
    stop_nodes "${STARTED[@]}" >&2
    exit 1
}

# Fails the start when a node it launched has exited (bad flag, port taken,
# unreadable data), showing the end of that node's log.
require_started_alive() {
    local id
    for id in "${STARTED[@]}"; do
        if ! capkv_node_pid "$id" >/dev/null; then
            printf 'cluster.sh: node %s exited during start\n' "$id" >&2
            print_log_tail "$id"
            abort_start
        fi
    done
}

cmd_start() {
    parse_node_ids "$@"
    capkv_ensure_bins
    mkdir -p "$CAPKV_DATA_DIR"

    local id pid to_start=()
    for id in "${NODE_ARGS[@]}"; do
        if pid=$(capkv_node_pid "$id"); then
            printf 'node %s already running (pid %s)\n' "$id" "$pid"
        else
            to_start+=("$id")
        fi
    done
    if ((${#to_start[@]} == 0)); then
        if (($# == 0)); then
            printf 'cluster already running (endpoints %s)\n' "$(capkv_endpoints)"
        else
            printf 'nothing to start\n'
        fi
        return 0
    fi
    # Another process on a node's port (often a cluster on another data dir
    # with the same ports) would answer in our node's place.
    for id in "${to_start[@]}"; do
        if capkv_port_open "$(capkv_node_host "$id")" "$(capkv_node_port "$id")"; then
            capkv_die "node $id: $(capkv_node_addr "$id") is already in use by another process (another cluster? set CAPKV_BASE_PORT)"
        fi
    done
    for id in "${to_start[@]}"; do
        launch_node "$id"
        STARTED+=("$id")
    done

    # Wait until every started node accepts connections.
    local deadline=$((SECONDS + START_TIMEOUT_SECONDS)) pending=("${STARTED[@]}") still
    while :; do
        require_started_alive
        still=()
        for id in "${pending[@]}"; do
            capkv_port_open "$(capkv_node_host "$id")" "$(capkv_node_port "$id")" || still+=("$id")
        done
        ((${#still[@]} > 0)) || break
        pending=("${still[@]}")
        if ((SECONDS >= deadline)); then
            printf 'cluster.sh: node(s) %s not accepting connections after %s s\n' "${pending[*]}" "$START_TIMEOUT_SECONDS" >&2
            for id in "${pending[@]}"; do print_log_tail "$id"; done
            abort_start
        fi
        sleep "$POLL_SECONDS"
    done

    # Form the cluster. Init is idempotent, so it is sent after every start,
    # to node 1 when it runs (the node uses its own --peers).
    local running init_node out=""
    mapfile -t running < <(capkv_running_nodes)
    ((${#running[@]} > 0)) || require_started_alive
    init_node=${running[0]}
    [[ " ${running[*]} " == *" 1 "* ]] && init_node=1
    deadline=$((SECONDS + START_TIMEOUT_SECONDS))
    until out=$(client --endpoints "$(capkv_node_addr "$init_node")" cluster init 2>&1); do
        if ((SECONDS >= deadline)); then
            printf 'cluster.sh: cluster init through node %s failed for %s s:\n%s\n' "$init_node" "$START_TIMEOUT_SECONDS" "$out" >&2
            print_log_tail "$init_node"
            abort_start
        fi
        sleep "$POLL_SECONDS"
    done
    printf 'cluster init (through node %s): %s\n' "$init_node" "$out"

    if ((${#running[@]} * 2 <= CAPKV_NODES)); then
        printf 'only %s of %s nodes running: no quorum, so not waiting for a leader\n' "${#running[@]}" "$CAPKV_NODES"
        return 0
    fi
    local leader_term
    if ! leader_term=$(wait_for_leader "${STARTED[@]}"); then
        for id in "${STARTED[@]}"; do print_log_tail "$id"; done
        abort_start
    fi
    require_started_alive
    print_howto "${leader_term% *}" "${leader_term#* }"
}

print_howto() {
    local endpoints capkv cluster
    endpoints=$(capkv_endpoints)
    capkv=$(script_path capkv)
    cluster=$(script_path cluster.sh)
    cat <<EOF

capkv cluster is up: leader node $1, term $2, data in $CAPKV_DATA_DIR
  endpoints: $endpoints

Talk to it:
  export CAPKV_ENDPOINTS=$endpoints
  $capkv reading put boiler-7 81.5
  $capkv reading latest boiler-7
  $capkv reading range boiler-7 --limit 10
  $capkv put greeting hello
  $capkv get greeting
  $capkv cluster status
Crash a node and bring it back:  $cluster kill 2; $cluster start 2
Logs:  $cluster logs [i] [-f]      Stop:  $cluster stop
EOF
}

cmd_stop() {
    parse_node_ids "$@"
    if [[ ! -d $CAPKV_DATA_DIR ]]; then
        printf 'no cluster in %s\n' "$CAPKV_DATA_DIR"
        return 0
    fi
    stop_nodes "${NODE_ARGS[@]}"
}

cmd_kill() {
    (($# > 0)) || usage_error "kill needs a node id"
    parse_node_ids "$@"
    local id pid status=0 waited
    for id in "${NODE_ARGS[@]}"; do
        if ! pid=$(capkv_node_pid "$id"); then
            printf 'cluster.sh: node %s is not running\n' "$id" >&2
            status=1
            continue
        fi
        kill -KILL "$pid" 2>/dev/null || true
        waited=0
        while capkv_pid_is_node "$pid" "$id" && ((waited < 50)); do
            sleep 0.1
            waited=$((waited + 1))
        done
        rm -f "$(capkv_node_pidfile "$id")"
        printf 'node %s killed (SIGKILL, pid %s)\n' "$id" "$pid"
    done
    return "$status"
}

cmd_status() {
    (($# == 0)) || usage_error "status takes no arguments"
    local id pid any=0
    printf '%-6s %-8s %-8s %-22s %s\n' NODE STATE PID ADDRESS "DATA DIR"
    for id in $(capkv_node_ids); do
        if pid=$(capkv_node_pid "$id"); then
            any=1
            printf '%-6s %-8s %-8s %-22s %s\n' "$id" running "$pid" "$(capkv_node_addr "$id")" "$(capkv_node_dir "$id")"
        else
            printf '%-6s %-8s %-8s %-22s %s\n' "$id" stopped - "$(capkv_node_addr "$id")" "$(capkv_node_dir "$id")"
        fi
    done
    ((any)) || return 0
    # No build here: the binaries exist if this script started the nodes.
    CAPKV_BIN_DIR=${CAPKV_BIN_DIR:-$CAPKV_REPO/target/release}
    if [[ ! -x $CAPKV_BIN_DIR/capkv ]]; then
        printf '\n(no %s/capkv, so no cluster status)\n' "$CAPKV_BIN_DIR"
        return 0
    fi
    printf '\n$ capkv --endpoints %s cluster status\n' "$(capkv_endpoints)"
    client --endpoints "$(capkv_endpoints)" cluster status || printf '(cluster status failed)\n'
}

cmd_logs() {
    local follow=0 arg ids=() logs=() id log
    for arg in "$@"; do
        case $arg in
        -f | --follow) follow=1 ;;
        *) ids+=("$arg") ;;
        esac
    done
    ((${#ids[@]} <= 1)) || usage_error "logs takes at most one node id"
    parse_node_ids "${ids[@]+"${ids[@]}"}"
    for id in "${NODE_ARGS[@]}"; do
        log=$(capkv_node_log "$id")
        if [[ -f $log ]]; then
            logs+=("$log")
        else
            printf '(node %s has no log at %s)\n' "$id" "$log"
        fi
    done
    ((${#logs[@]} > 0)) || return 0
    if ((follow)); then
        exec tail -n 40 -F "${logs[@]}"
    fi
    for log in "${logs[@]}"; do
        printf '==> %s <==\n' "$log"
        tail -n 40 "$log"
    done
}

cmd_clean() {
    (($# == 0)) || usage_error "clean takes no arguments"
    local dir=$CAPKV_DATA_DIR resolved
    if [[ ! -e $dir ]]; then
        printf 'nothing to clean: %s does not exist\n' "$dir"
        return 0
    fi
    resolved=$(cd "$dir" && pwd -P)
    case $resolved in
    "" | / | "$(cd "$CAPKV_REPO" && pwd -P)" | "$(cd ~ 2>/dev/null && pwd -P)")
        capkv_die "refusing to remove $dir (resolves to '${resolved:-}')"
        ;;
    esac
    local all
    mapfile -t all < <(capkv_node_ids)
    stop_nodes "${all[@]}"
    rm -rf -- "$dir"
    printf 'removed %s\n' "$dir"
}

main() {
    (($# > 0)) || usage_error "missing command" full
    local command=$1
    shift
    case $command in
    -h | --help | help)
        usage
        return 0
        ;;
    esac
    capkv_load_config
    case $command in
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    kill) cmd_kill "$@" ;;
    status) cmd_status "$@" ;;
    logs) cmd_logs "$@" ;;
    clean) cmd_clean "$@" ;;
    *) usage_error "unknown command: $command" full ;;
    esac
}

main "$@"
