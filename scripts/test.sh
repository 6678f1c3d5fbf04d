#!/usr/bin/env bash
# The one test command: every test stage, in order. A failing stage does not
# stop the later ones; the exit status is non-zero when any stage failed.
#
#   scripts/test.sh            run all stages
#   scripts/test.sh e2e ...    run only the named stages
#   scripts/test.sh --list     list the stages
#
# Lint (cargo fmt, cargo clippy) is not a stage: .ci/run does it.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

# A stage is a function stage_<name>. It returns 0 when it passed, 77 when it
# was skipped (say why on stdout), anything else when it failed.
SKIPPED=77

stage_cargo_test() {
    cargo test --workspace
}

stage_e2e() {
    bash "$REPO/scripts/e2e.sh"
}

# scripts/cap-demo.sh on a cluster of its own (debug binaries, a temporary
# data dir, ports 18001-18003), with a real partition made by
# scripts/partition.sh. Root only (iptables). The partition rules are IP-only,
# so they cut every cluster on 127.0.0.11-13 while the stage runs; stages run
# one after another, so that is only ever this stage's own cluster.
# Environment: CAPKV_BIN_DIR (default: 'cargo build --bins', target/debug),
# CAPKV_CAP_DEMO_NODE_ARGS (node flags; default: none, the node's defaults).
stage_cap_demo() {
    if ((EUID != 0)); then
        echo "cap_demo needs root: it partitions the nodes with iptables (run test.sh as root)"
        return "$SKIPPED"
    fi
    if [[ $(uname -s) != Linux ]]; then
        echo "cap_demo needs Linux (one loopback address per node, iptables)"
        return "$SKIPPED"
    fi
    if [[ -z ${CAPKV_BIN_DIR:-} ]]; then
        cargo build --bins
        CAPKV_BIN_DIR=$REPO/target/debug
    fi
    CAP_DEMO_DIR=$(mktemp -d "${TMPDIR:-/tmp}/capkv-cap-demo.XXXXXX")
    export CAPKV_BIN_DIR CAPKV_DATA_DIR=$CAP_DEMO_DIR CAPKV_BASE_PORT=18001 CAPKV_NODES=3
    export CAPKV_NODE_ARGS=${CAPKV_CAP_DEMO_NODE_ARGS:-}
    unset CAPKV_ENDPOINTS
    # The stage runs in a subshell of its own, so these traps end with it.
    # The EXIT trap heals even when the demo was killed (its own trap then
    # never ran), and INT/TERM go through it too.
    trap cap_demo_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    bash "$REPO/scripts/cluster.sh" start
    bash "$REPO/scripts/cap-demo.sh"
}

cap_demo_cleanup() {
    local status=$? id
    set +e
    trap - EXIT INT TERM
    printf '# cap_demo cleanup: scripts/partition.sh heal, scripts/cluster.sh stop\n'
    bash "$REPO/scripts/partition.sh" heal
    bash "$REPO/scripts/cluster.sh" stop
    if ((status != 0)); then
        for id in 1 2 3; do
            [[ -f $CAP_DEMO_DIR/node$id.log ]] || continue
            printf '# --- last 30 lines of %s ---\n' "$CAP_DEMO_DIR/node$id.log"
            tail -n 30 "$CAP_DEMO_DIR/node$id.log" | sed 's/^/#   /'
        done
        printf '# cap_demo failed (exit %s): kept the data and logs in %s\n' "$status" "$CAP_DEMO_DIR"
    else
        rm -rf -- "$CAP_DEMO_DIR"
    fi
    exit "$status"
}

# The quick Jepsen suite (scripts/jepsen.sh --quick): six runs of about 20 s,
# each on a fresh cluster of its own (debug binaries, ports 20001-20003),
# with real partitions, kill -9 and SIGSTOP. Root only (iptables), like
# cap_demo, and for the same reason the rules are IP-only: stages run one
# after another, so they only ever cut this stage's own cluster. Results go
# to jepsen-results/ (node logs and data kept for failed runs only).
# Environment: CAPKV_BIN_DIR (default: 'cargo build --bins', target/debug).
stage_jepsen_quick() {
    if ((EUID != 0)); then
        echo "jepsen_quick needs root: it partitions the nodes with iptables (run test.sh as root)"
        return "$SKIPPED"
    fi
    if [[ $(uname -s) != Linux ]]; then
        echo "jepsen_quick needs Linux (one loopback address per node, iptables)"
        return "$SKIPPED"
    fi
    bash "$REPO/scripts/jepsen.sh" --quick
}

# ---- Add later stages here, and name them in STAGES below. -----------------
STAGES=(
    cargo_test
    e2e
    jepsen_quick
    cap_demo
)
# -----------------------------------------------------------------------------

usage() {
    sed -n '2,9s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

selected=()
for arg in "$@"; do
    case $arg in
    -h | --help)
        usage
        exit 0
        ;;
    --list)
        printf '%s\n' "${STAGES[@]}"
        exit 0
        ;;
    -*)
        printf 'test.sh: unknown option %s\n' "$arg" >&2
        usage >&2
        exit 2
        ;;
    *)
        if [[ " ${STAGES[*]} " != *" ${arg//-/_} "* ]]; then
            printf 'test.sh: unknown stage %s (stages: %s)\n' "$arg" "${STAGES[*]}" >&2
            exit 2
        fi
        selected+=("${arg//-/_}")
        ;;
    esac
done
((${#selected[@]} > 0)) || selected=("${STAGES[@]}")

summary=()
failed=0
for stage in "${selected[@]}"; do
    printf '\n========== test.sh: stage %s ==========\n' "$stage"
    started=$SECONDS
    # In a subshell with errexit on, so a stage made of several commands stops
    # at its first failure ('|| status=$?' here would turn errexit off in it).
    set +e
    (
        set -e
        "stage_$stage"
    )
    status=$?
    set -e
    took=$((SECONDS - started))
    case $status in
    0) result=PASS ;;
    "$SKIPPED") result=SKIP ;;
    *)
        result="FAIL (exit $status)"
        failed=$((failed + 1))
        ;;
    esac
    printf '========== test.sh: stage %s: %s in %s s ==========\n' "$stage" "$result" "$took"
    summary+=("$(printf '  %-14s %-16s %4s s' "$stage" "$result" "$took")")
done

printf '\n========== test.sh summary ==========\n'
printf '%s\n' "${summary[@]}"
if ((failed > 0)); then
    printf 'test.sh: %s of %s stages failed\n' "$failed" "${#selected[@]}"
    exit 1
fi
printf 'test.sh: all %s stages passed\n' "${#selected[@]}"
