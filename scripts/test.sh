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

# ---- Add later stages here, and name them in STAGES below. -----------------
# stage_jepsen_quick() { ...the quick jepsen suite... }
# stage_cap_demo() {
#     if ((EUID != 0)); then echo "needs root (network namespaces)"; return "$SKIPPED"; fi
#     ...
# }
STAGES=(
    cargo_test
    e2e
    # jepsen_quick
    # cap_demo
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
