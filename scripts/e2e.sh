#!/usr/bin/env bash
# End-to-end test with real processes: a 3-node cluster started by
# scripts/cluster.sh in a temporary directory on ports 17001-17003, writes and
# reads through different nodes, the leader killed with SIGKILL and restarted,
# then every write checked again on the restarted node.
#
# Environment (all optional):
#   CAPKV_BIN_DIR          binaries to test (default: 'cargo build --bins',
#                          then <repo>/target/debug)
#   CAPKV_E2E_BASE_PORT    port of node 1 (default 17001; never a user's 7001)
#   CAPKV_E2E_NODE_ARGS    node flags (default: short election timeouts; empty: none)
#   CAPKV_E2E_KEEP=1       keep the temporary directory even when all passed
#
# Prints "ok - <name>" / "not ok - <name>: expected X got Y" per check; the
# last line is "e2e: N passed, M failed"; exits non-zero when M > 0.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CLUSTER=$CAPKV_REPO/scripts/cluster.sh
# Per client call, so no step can hang on a dead node.
CLIENT_TIMEOUT_MS=5000
# How long writes may fail while a new leader is elected.
FAILOVER_SECONDS=15
# How long the restarted node may take to catch up.
CATCH_UP_SECONDS=30

PASSED=0
FAILED=0
# Set when the script ends early on purpose (after a failed check that the
# rest depends on), so the exit trap does not report it as a crash.
ENDED_EARLY=0
E2E_DIR=""

# ---------------------------------------------------------------- reporting

# verdict and check come from lib.sh.

step() {
    printf '# %s\n' "$*"
}

# Ends the run now: the remaining steps depend on what just failed.
end_early() {
    printf '# stopping early: %s\n' "$*"
    ENDED_EARLY=1
    exit 1
}

cleanup() {
    local status=$?
    set +e
    trap - EXIT INT TERM
    if ((status != 0 && !ENDED_EARLY)); then
        verdict "e2e.sh ran to the end" 1 "exit status 0" \
            "${INTERRUPTED:-exit status $status after a failed command at line ${ERROR_LINE:-?}}"
    fi
    if [[ -n $E2E_DIR && -d $E2E_DIR ]]; then
        if [[ -n $(capkv_running_nodes) ]]; then
            bash "$CLUSTER" stop 2>&1 | sed 's/^/    /'
        fi
        if ((FAILED > 0)); then
            local id
            for id in $(capkv_node_ids); do
                [[ -f $(capkv_node_log "$id") ]] || continue
                printf '# --- last 30 lines of %s ---\n' "$(capkv_node_log "$id")"
                tail -n 30 "$(capkv_node_log "$id")" | sed 's/^/#   /'
            done
            printf '# kept the data, logs and client transcript in %s\n' "$E2E_DIR"
        elif [[ ${CAPKV_E2E_KEEP:-0} == 1 ]]; then
            printf '# kept %s (CAPKV_E2E_KEEP=1)\n' "$E2E_DIR"
        else
            rm -rf -- "$E2E_DIR"
        fi
    fi
    printf 'e2e: %s passed, %s failed\n' "$PASSED" "$FAILED"
    ((FAILED == 0)) || exit 1
    exit "$status"
}
trap cleanup EXIT
trap 'INTERRUPTED="interrupted by SIGINT"; exit 130' INT
trap 'INTERRUPTED="interrupted by SIGTERM"; exit 143' TERM
trap 'ERROR_LINE=$LINENO' ERR

# ---------------------------------------------------------------- setup

E2E_DIR=$(mktemp -d "${TMPDIR:-/tmp}/capkv-e2e.XXXXXX")
export CAPKV_DATA_DIR=$E2E_DIR
export CAPKV_BASE_PORT=${CAPKV_E2E_BASE_PORT:-17001}
export CAPKV_NODES=3
export CAPKV_NODE_ARGS=${CAPKV_E2E_NODE_ARGS---heartbeat-interval-ms 100 --election-timeout-min-ms 400 --election-timeout-max-ms 800}
# Every call below names its endpoints; a user's setting must not leak in.
unset CAPKV_ENDPOINTS
capkv_load_config
TRANSCRIPT=$E2E_DIR/client-transcript.log
ERR_FILE=$E2E_DIR/last-stderr

if [[ -z ${CAPKV_BIN_DIR:-} ]]; then
    step "cargo build --bins"
    if ! (cd "$CAPKV_REPO" && cargo build --bins); then
        verdict "cargo build --bins" 1 "exit 0" "a build failure"
        end_early "nothing to test"
    fi
    CAPKV_BIN_DIR=$CAPKV_REPO/target/debug
fi
export CAPKV_BIN_DIR
step "binaries: $CAPKV_BIN_DIR, data: $E2E_DIR, endpoints: $(capkv_endpoints)"

# ---------------------------------------------------------------- helpers

addr() { capkv_node_addr "$1"; }

# Runs the CLI; sets OUT (stdout), ERR (stderr) and RC, and records the call
# in the transcript.
run() {
    RC=0
    OUT=$("$CAPKV_BIN_DIR/capkv" --timeout-ms "$CLIENT_TIMEOUT_MS" "$@" 2>"$ERR_FILE") || RC=$?
    ERR=$(<"$ERR_FILE")
    printf '$ capkv %s\n  exit %s\n  stdout: %s\n  stderr: %s\n' "$*" "$RC" "$OUT" "$ERR" >>"$TRANSCRIPT"
}

# Like run, but repeats a failing call (exit code not 0) for up to $1 seconds:
# a call may fail while a leader is being elected. A wrong answer is not
# retried; the check reports it.
run_retry() {
    local deadline=$((SECONDS + $1))
    shift
    while :; do
        run "$@"
        ((RC != 0 && SECONDS < deadline)) || return 0
        sleep 0.3
    done
}

# What a failed call printed, for a check's "got".
failure() {
    printf 'exit %s: %s' "$RC" "${ERR:-$OUT}" | tr '\n' ' '
}

# "exit 0", or the failure of the last call.
outcome() {
    if ((RC == 0)); then
        printf 'exit 0'
    else
        failure
    fi
}

# Prints the Python expression $1 evaluated on OUT (as d), or the failure.
from_out() {
    if ((RC != 0)); then
        failure
        return 0
    fi
    capkv_json "$1" <<<"$OUT" 2>/dev/null || printf 'unparseable output: %s' "$OUT"
}

# The value of key $2 read through node(s) $1: the value, "(not found)", or
# the failure.
get_value() {
    run_retry 10 --endpoints "$1" --output json get "$2"
    from_out 'd["value"] if d["found"] else "(not found)"'
}

# Readings are written with fixed timestamps (epoch milliseconds) so that the
# range checks are exact.
READING_T0_MS=1700000000000
ts_ms() { printf '%s\n' $((READING_T0_MS + $1 * 1000)); }

# Python helpers for the JSON of 'reading latest' and 'reading range':
# tolerant about where the reading(s) sit in the document.
PY_READINGS='(d if isinstance(d, list) else d["readings"] if isinstance(d.get("readings"), list) else next((v for v in d.values() if isinstance(v, list)), []))'
PY_LATEST='(d.get("reading") if isinstance(d.get("reading"), dict) else d)'

latest_value() { # endpoints sensor
    run_retry 10 --endpoints "$1" --output json reading latest "$2"
    from_out "'%g' % float(${PY_LATEST}['value']) if ${PY_LATEST} and ${PY_LATEST}.get('value') is not None else '(none)'"
}

range_values() { # endpoints sensor [range flags]
    local endpoints=$1 sensor=$2
    shift 2
    run_retry 10 --endpoints "$endpoints" --output json reading range "$sensor" "$@"
    from_out "' '.join('%g' % float(r['value']) for r in $PY_READINGS)"
}

cluster_status() { # endpoints
    run_retry 10 --endpoints "$1" --output json cluster status
}

# ---------------------------------------------------------------- the test

ALL=$(capkv_endpoints)
SENSOR=e2e-boiler-7

step "scripts/cluster.sh start"
rc=0
bash "$CLUSTER" start 2>&1 | sed 's/^/    /' || rc=$?
check "cluster.sh start" "exit 0" "exit $rc"
((rc == 0)) || end_early "the cluster did not start"
# Nodes turn transparent huge pages off (node/src/main.rs); kernels before
# 6.x have no THP_enabled line, and then there is nothing to check.
thp=$(grep -s '^THP_enabled:' "/proc/$(cat "$(capkv_node_pidfile 1)")/status" | awk '{print $2}' || true)
[[ -z $thp ]] || check "node 1 runs without transparent huge pages" 0 "$thp"

step "writes through node 1, reads through nodes 2 and 3"
run_retry 10 --endpoints "$(addr 1)" put e2e-key-1 value-1
check "put e2e-key-1 through node 1" "exit 0" "$(outcome)"
check "get e2e-key-1 through node 2" value-1 "$(get_value "$(addr 2)" e2e-key-1)"
check "get e2e-key-1 through node 3" value-1 "$(get_value "$(addr 3)" e2e-key-1)"
check "get of a missing key through node 2" "(not found)" "$(get_value "$(addr 2)" e2e-no-such-key)"

run_retry 10 --endpoints "$(addr 1)" put e2e-deleted doomed
check "put e2e-deleted through node 1" "exit 0" "$(outcome)"
run_retry 10 --endpoints "$(addr 2)" delete e2e-deleted
check "delete e2e-deleted through node 2" "exit 0" "$(outcome)"
check "get e2e-deleted through node 3" "(not found)" "$(get_value "$(addr 3)" e2e-deleted)"

step "readings through node 3, queries through node 1"
VALUES_BEFORE=(20.5 21 21.5 22 22.5)
ok_puts=0
for k in "${!VALUES_BEFORE[@]}"; do
    run_retry 10 --endpoints "$(addr 3)" reading put "$SENSOR" "${VALUES_BEFORE[k]}" --ts "$(ts_ms "$k")"
    if ((RC == 0)); then ok_puts=$((ok_puts + 1)); else last_failure=$(failure); fi
done
check "reading put x5 through node 3" "5 succeeded" "$ok_puts succeeded${last_failure:+ (last error: $last_failure)}"
check "reading latest through node 1" 22.5 "$(latest_value "$(addr 1)" "$SENSOR")"
check "reading range through node 1" "${VALUES_BEFORE[*]}" "$(range_values "$(addr 1)" "$SENSOR")"
check "reading range --from --to through node 1" "21 21.5 22" \
    "$(range_values "$(addr 1)" "$SENSOR" --from "$(ts_ms 1)" --to "$(ts_ms 3)")"
check "reading range --limit 2 through node 1" "20.5 21" "$(range_values "$(addr 1)" "$SENSOR" --limit 2)"
check "reading latest of an unknown sensor" "(none)" "$(latest_value "$(addr 1)" e2e-no-such-sensor)"

step "kill the leader"
cluster_status "$ALL"
OLD_LEADER=$(from_out 'd["leader"]')
if ! [[ $OLD_LEADER =~ ^[123]$ ]]; then
    verdict "cluster status names a leader" 1 "a node id" "$OLD_LEADER"
    end_early "no leader to kill"
fi
verdict "cluster status names a leader" 0 "" ""
SURVIVORS=()
for id in 1 2 3; do
    ((id == OLD_LEADER)) || SURVIVORS+=("$id")
done
SURVIVOR_ENDPOINTS=$(capkv_endpoints "${SURVIVORS[@]}")
rc=0
bash "$CLUSTER" kill "$OLD_LEADER" 2>&1 | sed 's/^/    /' || rc=$?
check "cluster.sh kill $OLD_LEADER (the leader)" "exit 0" "exit $rc"

step "writes through the survivors ($SURVIVOR_ENDPOINTS)"
run_retry "$FAILOVER_SECONDS" --endpoints "$SURVIVOR_ENDPOINTS" put e2e-key-2 value-2
check "put e2e-key-2 after the leader died (within ${FAILOVER_SECONDS} s)" "exit 0" "$(outcome)"
run_retry "$FAILOVER_SECONDS" --endpoints "$(addr "${SURVIVORS[1]}")" reading put "$SENSOR" 23 --ts "$(ts_ms 5)"
check "reading put after the leader died" "exit 0" "$(outcome)"
check "get e2e-key-1 through a survivor" value-1 "$(get_value "$(addr "${SURVIVORS[0]}")" e2e-key-1)"

NEW_LEADER=""
deadline=$((SECONDS + FAILOVER_SECONDS))
while ((SECONDS < deadline)); do
    cluster_status "$SURVIVOR_ENDPOINTS"
    NEW_LEADER=$(from_out 'd["leader"]')
    [[ $NEW_LEADER =~ ^[123]$ && $NEW_LEADER != "$OLD_LEADER" ]] && break
    sleep 0.3
done
ok=1
[[ $NEW_LEADER =~ ^[123]$ && $NEW_LEADER != "$OLD_LEADER" ]] && ok=0
verdict "a new leader other than node $OLD_LEADER" "$ok" "a leader other than $OLD_LEADER" "${NEW_LEADER:-none}"

step "restart node $OLD_LEADER on its data"
rc=0
bash "$CLUSTER" start "$OLD_LEADER" 2>&1 | sed 's/^/    /' || rc=$?
check "cluster.sh start $OLD_LEADER" "exit 0" "exit $rc"

# The restarted node has caught up when its applied index (as it reports
# itself) reaches the highest applied index of the other nodes.
caught_up=""
deadline=$((SECONDS + CATCH_UP_SECONDS))
while ((SECONDS < deadline)); do
    cluster_status "$(addr "$OLD_LEADER")"
    mine=$(from_out "next(n['applied_index'] for n in d['nodes'] if n['id'] == $OLD_LEADER)")
    cluster_status "$SURVIVOR_ENDPOINTS"
    theirs=$(from_out "max(n['applied_index'] for n in d['nodes'] if n['id'] != $OLD_LEADER and n.get('reachable', True))")
    caught_up="node $OLD_LEADER applied $mine, others $theirs"
    if [[ $mine =~ ^[0-9]+$ && $theirs =~ ^[0-9]+$ ]] && ((mine >= theirs)); then
        break
    fi
    sleep 0.3
done
ok=1
[[ $mine =~ ^[0-9]+$ && $theirs =~ ^[0-9]+$ ]] && ((mine >= theirs)) && ok=0
verdict "restarted node $OLD_LEADER catches up within ${CATCH_UP_SECONDS} s" "$ok" "its applied_index >= the others'" "$caught_up"

step "every write, before and after the kill, read through the restarted node $OLD_LEADER"
RESTARTED=$(addr "$OLD_LEADER")
check "get e2e-key-1 through node $OLD_LEADER" value-1 "$(get_value "$RESTARTED" e2e-key-1)"
check "get e2e-key-2 through node $OLD_LEADER" value-2 "$(get_value "$RESTARTED" e2e-key-2)"
check "get e2e-deleted through node $OLD_LEADER" "(not found)" "$(get_value "$RESTARTED" e2e-deleted)"
check "reading latest through node $OLD_LEADER" 23 "$(latest_value "$RESTARTED" "$SENSOR")"
check "reading range through node $OLD_LEADER" "${VALUES_BEFORE[*]} 23" "$(range_values "$RESTARTED" "$SENSOR")"

step "bad input"
run --endpoints "$ALL" put "" v
check "put with an empty key exits 1" "exit 1" "exit $RC"
ok=1
[[ ${ERR,,} == *key* ]] && ok=0
verdict "put with an empty key: stderr mentions the key" "$ok" "stderr mentioning 'key'" "stderr '$ERR'"

step "scripts/cluster.sh stop"
rc=0
bash "$CLUSTER" stop 2>&1 | sed 's/^/    /' || rc=$?
check "cluster.sh stop" "exit 0" "exit $rc"
check "no node left running" "" "$(capkv_running_nodes | tr '\n' ' ')"
check "no pid file left" "" "$(find "$E2E_DIR" -maxdepth 1 -name '*.pid' -printf '%f ')"
