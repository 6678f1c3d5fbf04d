#!/usr/bin/env bash
# Runs the capkv-jepsen suite: every workload with its nemeses, one fresh
# cluster per run, and prints a table of verdicts. Linux and root only
# (partitions are iptables rules). Run with --help for the options.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<EOF
Usage: scripts/jepsen.sh [options] [-- extra capkv-jepsen flags]

Runs capkv-jepsen (jepsen-tests/) once per (workload, nemesis) of the suite
and prints a table of the verdicts. Exits non-zero if any run did not pass.

Standard suite (--time-limit 60 each, about 20 minutes):
  register x partition-one partition-leader majority bridge one-way kill pause mixed
  set      x partition-one majority kill mixed
  session  x partition-one kill
  stale    x partition-one          (passes when the checker finds the violation)

Options:
  --quick             the CI suite: register x partition-leader, kill, pause;
                      set, session and stale x partition-one; 20 s each
                      (a few minutes in all)
  --release           build and use release binaries (default: debug)
  --seed S            base seed; run i uses S + i (default: random, printed)
  --time-limit N      seconds per run (default: 60, or 20 with --quick)
  --nodes N           cluster size (default: 3)
  --results-root DIR  where the runs' directories go (default: jepsen-results)
  -h, --help          this text

Each run writes <results-root>/<UTC time>-<workload>-<nemesis>-seed<S>/
with history.edn, history.jsonl, verdicts.json, summary.json and the
harness's log (harness.log); node logs and data only when it failed.

Needs root: the partitions are iptables rules on the loopback addresses
127.0.0.11-19 (IP-only: do not run it while another cluster on those
addresses must stay connected). Environment: CAPKV_BIN_DIR (use existing
binaries instead of building), CAPKV_JEPSEN_BASE_PORT (default 20001),
RUST_LOG (the harness's log filter).
EOF
}

QUICK=0
PROFILE=debug
SEED=""
TIME_LIMIT=""
NODES=3
RESULTS_ROOT=$CAPKV_REPO/jepsen-results
EXTRA=()
while (($# > 0)); do
    case $1 in
    --quick) QUICK=1 ;;
    --release) PROFILE=release ;;
    --seed)
        SEED=${2:?--seed needs a value}
        shift
        ;;
    --time-limit)
        TIME_LIMIT=${2:?--time-limit needs a value}
        shift
        ;;
    --nodes)
        NODES=${2:?--nodes needs a value}
        shift
        ;;
    --results-root)
        RESULTS_ROOT=${2:?--results-root needs a value}
        shift
        ;;
    -h | --help)
        usage
        exit 0
        ;;
    --)
        shift
        EXTRA=("$@")
        break
        ;;
    *)
        printf 'jepsen.sh: unknown option %s\n' "$1" >&2
        printf "run 'scripts/jepsen.sh --help' for usage\n" >&2
        exit 2
        ;;
    esac
    shift
done
[[ -z $SEED || $SEED =~ ^[0-9]+$ ]] || capkv_die "--seed must be a number, not: $SEED"
[[ -z $TIME_LIMIT || $TIME_LIMIT =~ ^[0-9]+$ ]] || capkv_die "--time-limit must be a number of seconds, not: $TIME_LIMIT"
[[ $NODES =~ ^[1-9]$ ]] || capkv_die "--nodes must be 1 to 9, not: $NODES"

[[ $CAPKV_OS == Linux ]] ||
    capkv_die "needs Linux: every node has its own loopback address (127.0.0.1i) only there"
((EUID == 0)) ||
    capkv_die "needs root: the partitions are iptables rules (run it as root, e.g. sudo scripts/jepsen.sh)"
command -v python3 >/dev/null 2>&1 || capkv_die "needs python3 (for the verdict table)"

if ((QUICK)); then
    TIME_LIMIT=${TIME_LIMIT:-20}
    SUITE=(
        "register partition-leader"
        "register kill"
        "register pause"
        "set partition-one"
        "session partition-one"
        "stale partition-one"
    )
else
    TIME_LIMIT=${TIME_LIMIT:-60}
    SUITE=()
    for nemesis in partition-one partition-leader majority bridge one-way kill pause mixed; do
        SUITE+=("register $nemesis")
    done
    for nemesis in partition-one majority kill mixed; do
        SUITE+=("set $nemesis")
    done
    SUITE+=("session partition-one" "session kill" "stale partition-one")
fi
SEED=${SEED:-$((RANDOM * 32768 + RANDOM))}

if [[ -z ${CAPKV_BIN_DIR:-} ]]; then
    if [[ $PROFILE == release ]]; then
        printf 'jepsen.sh: building (cargo build --release --bins)\n'
        (cd "$CAPKV_REPO" && cargo build --release --bins)
    else
        printf 'jepsen.sh: building (cargo build --bins)\n'
        (cd "$CAPKV_REPO" && cargo build --bins)
    fi
    CAPKV_BIN_DIR=$CAPKV_REPO/target/$PROFILE
fi
for bin in capkv-node capkv-jepsen; do
    [[ -x $CAPKV_BIN_DIR/$bin ]] || capkv_die "no executable $bin in $CAPKV_BIN_DIR"
done
mkdir -p "$RESULTS_ROOT"
RESULTS_ROOT=$(cd "$RESULTS_ROOT" && pwd)

printf 'jepsen.sh: %s runs of %s s, %s nodes, base seed %s (repeat with --seed %s), results in %s\n' \
    "${#SUITE[@]}" "$TIME_LIMIT" "$NODES" "$SEED" "$SEED" "$RESULTS_ROOT"

DIRS=()
STATUSES=()
started_all=$SECONDS
i=0
for entry in "${SUITE[@]}"; do
    read -r workload nemesis <<<"$entry"
    seed=$((SEED + i))
    i=$((i + 1))
    dir=$RESULTS_ROOT/$(date -u +%Y%m%dT%H%M%SZ)-$workload-$nemesis-seed$seed
    mkdir -p "$dir"
    printf '\n==== jepsen.sh: run %s/%s: %s x %s, seed %s\n' "$i" "${#SUITE[@]}" "$workload" "$nemesis" "$seed"
    started=$SECONDS
    status=0
    "$CAPKV_BIN_DIR/capkv-jepsen" --workload "$workload" --nemesis "$nemesis" \
        --time-limit "$TIME_LIMIT" --nodes "$NODES" --seed "$seed" \
        --bin-dir "$CAPKV_BIN_DIR" --base-port "${CAPKV_JEPSEN_BASE_PORT:-20001}" \
        --results-dir "$dir" ${EXTRA[@]+"${EXTRA[@]}"} \
        2>"$dir/harness.log" || status=$?
    printf '(%s s; harness log %s)\n' "$((SECONDS - started))" "$dir/harness.log"
    if ((status != 0)); then
        printf -- '--- last 15 lines of %s ---\n' "$dir/harness.log"
        tail -n 15 "$dir/harness.log" | sed 's/^/  /'
    fi
    DIRS+=("$dir")
    STATUSES+=("$status")
done

printf '\n==== jepsen.sh: verdicts (%s s in all)\n' "$((SECONDS - started_all))"
python3 - "${#DIRS[@]}" "${DIRS[@]}" "${STATUSES[@]}" <<'EOF'
import json, os, sys

n = int(sys.argv[1])
dirs = sys.argv[2:2 + n]
statuses = sys.argv[2 + n:2 + 2 * n]
cwd = os.getcwd()
rows = []
passed = failed = 0
for directory, status in zip(dirs, statuses):
    rel = os.path.relpath(directory, cwd)
    try:
        with open(os.path.join(directory, "summary.json")) as f:
            s = json.load(f)
        verdicts = s.get("verdicts") or []
        valid_n = sum(1 for v in verdicts if v.get("valid") is True)
        if s.get("undecided"):
            valid = "unknown"
        else:
            valid = "yes" if s.get("valid") else "no"
        valid = f"{valid} ({valid_n}/{len(verdicts)})"
        ok = bool(s.get("passed")) and status == "0"
        rows.append([s["workload"], s["nemesis"], str(s["seed"]), str(s["ops_total"]),
                     f'{s["ok"]}/{s["fail"]}/{s["info"]}', valid,
                     "PASS" if ok else "FAIL", rel])
    except (OSError, ValueError, KeyError):
        ok = False
        rows.append(["?", "?", "?", "-", "-", "-", f"FAIL (exit {status}, no summary)", rel])
    if ok:
        passed += 1
    else:
        failed += 1
header = ["workload", "nemesis", "seed", "ops", "ok/fail/info", "valid", "passed", "results"]
widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
fmt = "  ".join("{:<%d}" % w for w in widths[:-1]) + "  {}"
print(fmt.format(*header))
for row in rows:
    print(fmt.format(*row))
print(f"jepsen: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
EOF
