# shellcheck shell=bash
# Shared helpers for the capkv scripts. Source it; it defines functions and
# variables and runs nothing else.
#
# Environment (all optional):
#   CAPKV_DATA_DIR   where node data, logs and pid files live (default <repo>/.capkv)
#   CAPKV_BASE_PORT  port of node 1; node i listens on CAPKV_BASE_PORT + i - 1 (default 7001)
#   CAPKV_NODES      number of nodes, 1 to 9 (default 3)
#   CAPKV_BIN_DIR    directory holding capkv-node and capkv (default: build
#                    <repo>/target/release with cargo)

CAPKV_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CAPKV_OS=$(uname -s)

capkv_die() {
    printf '%s: %s\n' "${0##*/}" "$*" >&2
    exit 1
}

capkv_warn() {
    printf '%s: %s\n' "${0##*/}" "$*" >&2
}

# Resolves and validates the settings above into CAPKV_DATA_DIR (absolute),
# CAPKV_BASE_PORT and CAPKV_NODES. Call once before the other functions.
capkv_load_config() {
    CAPKV_DATA_DIR=${CAPKV_DATA_DIR:-$CAPKV_REPO/.capkv}
    [[ -n $CAPKV_DATA_DIR ]] || capkv_die "CAPKV_DATA_DIR is empty"
    # Absolute, so that pid checks and node command lines do not depend on the
    # directory the script was started from.
    [[ $CAPKV_DATA_DIR == /* ]] || CAPKV_DATA_DIR=$PWD/$CAPKV_DATA_DIR
    CAPKV_DATA_DIR=${CAPKV_DATA_DIR%/}
    [[ -n $CAPKV_DATA_DIR ]] || capkv_die "CAPKV_DATA_DIR must not be /"

    CAPKV_BASE_PORT=${CAPKV_BASE_PORT:-7001}
    [[ $CAPKV_BASE_PORT =~ ^[0-9]+$ ]] || capkv_die "CAPKV_BASE_PORT is not a number: $CAPKV_BASE_PORT"
    CAPKV_NODES=${CAPKV_NODES:-3}
    [[ $CAPKV_NODES =~ ^[1-9]$ ]] || capkv_die "CAPKV_NODES must be 1 to 9, not: $CAPKV_NODES"
    ((CAPKV_BASE_PORT >= 1 && CAPKV_BASE_PORT + CAPKV_NODES - 1 <= 65535)) ||
        capkv_die "CAPKV_BASE_PORT out of range: $CAPKV_BASE_PORT"
    export CAPKV_DATA_DIR CAPKV_BASE_PORT CAPKV_NODES
}

capkv_node_ids() {
    seq 1 "$CAPKV_NODES"
}

# On Linux every node gets its own loopback address (127.0.0.11, .12, ...), so
# that a partition can later be made per address; elsewhere only 127.0.0.1 is
# configured, and the ports alone tell the nodes apart.
capkv_node_host() {
    if [[ $CAPKV_OS == Linux ]]; then
        printf '127.0.0.1%s\n' "$1"
    else
        printf '127.0.0.1\n'
    fi
}

capkv_node_port() {
    printf '%s\n' $((CAPKV_BASE_PORT + $1 - 1))
}

capkv_node_addr() {
    printf '%s:%s\n' "$(capkv_node_host "$1")" "$(capkv_node_port "$1")"
}

# The value of --peers: 1=addr1,2=addr2,...
capkv_peers() {
    local i out=""
    for i in $(capkv_node_ids); do
        out+="${out:+,}$i=$(capkv_node_addr "$i")"
    done
    printf '%s\n' "$out"
}

# Comma-separated addresses of the given node ids (all nodes when none given).
capkv_endpoints() {
    local i out="" ids
    if (($# == 0)); then
        mapfile -t ids < <(capkv_node_ids)
        set -- "${ids[@]}"
    fi
    for i in "$@"; do
        out+="${out:+,}$(capkv_node_addr "$i")"
    done
    printf '%s\n' "$out"
}

capkv_node_dir() { printf '%s/node%s\n' "$CAPKV_DATA_DIR" "$1"; }
capkv_node_log() { printf '%s/node%s.log\n' "$CAPKV_DATA_DIR" "$1"; }
capkv_node_pidfile() { printf '%s/node%s.pid\n' "$CAPKV_DATA_DIR" "$1"; }

# Succeeds when process $1 is a capkv-node serving node $2 of this data dir.
# A reused pid, a zombie (empty command line) or a node of another cluster
# does not count.
capkv_pid_is_node() {
    local pid=$1 id=$2 cmdline
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    if [[ -r /proc/$pid/cmdline ]]; then
        cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    else
        cmdline=$(ps -p "$pid" -o command= 2>/dev/null) || return 1
    fi
    [[ $cmdline == *capkv-node* && $cmdline == *"$(capkv_node_dir "$id")"* ]]
}

# Prints the pid of node $1 and succeeds when it is running (per its pid file).
capkv_node_pid() {
    local pidfile pid
    pidfile=$(capkv_node_pidfile "$1")
    [[ -f $pidfile ]] || return 1
    pid=$(<"$pidfile") || return 1
    capkv_pid_is_node "$pid" "$1" || return 1
    printf '%s\n' "$pid"
}

# Ids of the running nodes, one per line.
capkv_running_nodes() {
    local i
    for i in $(capkv_node_ids); do
        if capkv_node_pid "$i" >/dev/null; then
            printf '%s\n' "$i"
        fi
    done
}

# Succeeds when something accepts TCP connections on host $1 port $2.
capkv_port_open() {
    # shellcheck disable=SC2016 # $0 and $1 expand in the inner shell
    if command -v timeout >/dev/null 2>&1; then
        timeout 2 bash -c ': <>"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null
    else
        bash -c ': <>"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null
    fi
}

# Sets CAPKV_BIN_DIR to a directory holding capkv-node and capkv. When it is
# unset, builds the release binaries first (a no-op when they are fresh).
capkv_ensure_bins() {
    if [[ -z ${CAPKV_BIN_DIR:-} ]]; then
        CAPKV_BIN_DIR=$CAPKV_REPO/target/release
        if command -v cargo >/dev/null 2>&1; then
            printf 'building release binaries (cargo build --release --bins)\n' >&2
            (cd "$CAPKV_REPO" && cargo build --release --bins) ||
                capkv_die "cargo build --release --bins failed"
        elif [[ -x $CAPKV_BIN_DIR/capkv-node && -x $CAPKV_BIN_DIR/capkv ]]; then
            capkv_warn "cargo not found; using the existing binaries in $CAPKV_BIN_DIR"
        else
            capkv_die "cargo not found and no binaries in $CAPKV_BIN_DIR; set CAPKV_BIN_DIR"
        fi
    fi
    local bin
    for bin in capkv-node capkv; do
        [[ -x $CAPKV_BIN_DIR/$bin ]] || capkv_die "no executable $bin in CAPKV_BIN_DIR=$CAPKV_BIN_DIR"
    done
    export CAPKV_BIN_DIR
}

# Evaluates the Python expression $1 on the JSON document read from stdin
# (bound to d) and prints the result: nothing for None, true/false for
# booleans, JSON for lists and objects, the plain value otherwise. Fails when
# the input is not JSON or the expression raises.
capkv_json() {
    python3 -c '
import json, sys
d = json.load(sys.stdin)
v = eval(sys.argv[1], {"d": d})
if v is None:
    pass
elif isinstance(v, (bool, list, dict)):
    print(json.dumps(v))
else:
    print(v)
' "$1"
}

# Test reporting for the scripts that check expectations (e2e.sh,
# cap-demo.sh): one `ok - NAME` or `not ok - NAME: expected X got Y` line per
# check, counted in the caller's PASSED and FAILED.
verdict() { # name ok(0|1) expected got
    if (($2 == 0)); then
        PASSED=$((PASSED + 1))
        printf 'ok - %s\n' "$1"
    else
        FAILED=$((FAILED + 1))
        printf 'not ok - %s: expected %s got %s\n' "$1" "$3" "$4"
    fi
}

check() { # name expected got
    local ok=1
    [[ $3 == "$2" ]] && ok=0
    verdict "$1" "$ok" "$2" "$3"
}
