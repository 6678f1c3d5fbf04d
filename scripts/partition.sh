#!/usr/bin/env bash
# Makes network partitions between the nodes of the local capkv cluster with
# iptables rules on their loopback addresses (127.0.0.11, .12, ...). Linux and
# root only. Run with --help for the commands.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Every rule of this script lives in this chain, jumped to from INPUT, so
# that 'heal' removes exactly what the script added and nothing else.
CHAIN=CAPKV-PARTITION

usage() {
    cat <<EOF
Usage: scripts/partition.sh <command> [args]

Cuts links between the nodes of the local cluster (node i on 127.0.0.1i) by
dropping their packets with iptables. Clients, which connect from 127.0.0.1,
still reach every node, so you can watch both sides of a partition.

Commands:
  isolate N        cut node N off from every other node, both directions
  cut A B          cut the link between nodes A and B, both directions
  cut-oneway A B   drop only the packets from A to B: B's packets still
                   reach A, but no TCP connection between them completes
                   (A's answers are dropped), so both sides see a stall
  bridge           cut 1 <-> 3 both ways; node 2 still sees both of them
                   (needs 3 or more nodes)
  heal             remove every rule this script added
  status           print the packets dropped now, or "no partition"
  -h, --help       this text

Commands add to the rules already in place: 'cut 1 2' then 'isolate 3'
leaves all three nodes apart. Only 'heal' removes rules, and it removes all
of them.

The rules are IP-only (source and destination address, any port) and live
in their own iptables chain, $CHAIN, jumped to from INPUT; 'heal' flushes
and deletes that chain and touches no other rule. Being IP-only, they cut
every cluster on these addresses, whatever its CAPKV_BASE_PORT.

Needs Linux and root. Installs iptables with apt-get when it is missing.

Environment:
  CAPKV_NODES      number of nodes (default: 3)
EOF
}

# A wrong command prints the whole usage; a wrong argument only a pointer to it.
usage_error() {
    printf 'partition.sh: %s\n' "$1" >&2
    if [[ ${2:-} == full ]]; then
        printf '\n' >&2
        usage >&2
    else
        printf "run 'scripts/partition.sh --help' for usage\n" >&2
    fi
    exit 2
}

# Validates a node id argument.
node_arg() {
    if ! [[ $1 =~ ^[1-9]$ ]] || (($1 > CAPKV_NODES)); then
        usage_error "not a node id (1 to $CAPKV_NODES): $1"
    fi
}

need_args() { # command wanted given
    (($3 == $2)) || usage_error "$1 takes $2 argument(s), got $3"
}

# Runs iptables for a change; on failure prints its error and exits 1. Its
# output on success (at most warnings) is not shown.
ipt() {
    local out
    if ! out=$(iptables -w "$@" 2>&1); then
        capkv_die "iptables -w $* failed: ${out:-no message}"
    fi
}

# Makes sure iptables is installed and works (the kernel supports it).
ensure_iptables() {
    if ! command -v iptables >/dev/null 2>&1; then
        command -v apt-get >/dev/null 2>&1 ||
            capkv_die "iptables is not installed and there is no apt-get to install it"
        printf 'partition.sh: iptables is missing; installing it (apt-get update && apt-get install -y iptables)\n' >&2
        local log
        log=$(mktemp "${TMPDIR:-/tmp}/capkv-partition-apt.XXXXXX")
        if ! { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y iptables; } >"$log" 2>&1; then
            tail -n 20 "$log" >&2
            rm -f "$log"
            capkv_die "installing iptables failed"
        fi
        rm -f "$log"
        hash -r
        command -v iptables >/dev/null 2>&1 || capkv_die "iptables is still missing after apt-get install"
    fi
    # A read that fails here (no kernel support, no permission) is reported
    # as it is, rather than as a missing chain later.
    ipt -S INPUT >/dev/null
}

chain_exists() {
    iptables -w -S "$CHAIN" >/dev/null 2>&1
}

jump_exists() {
    iptables -w -C INPUT -j "$CHAIN" >/dev/null 2>&1
}

# Creates the chain and the jump from INPUT when missing. The jump goes
# first in INPUT, so that an earlier "accept everything on lo" rule does not
# bypass it.
ensure_chain() {
    chain_exists || ipt -N "$CHAIN"
    jump_exists || ipt -I INPUT 1 -j "$CHAIN"
}

node_of_host() { # 127.0.0.1i -> i
    local host=${1%/32}
    if [[ $host =~ ^127\.0\.0\.1([1-9])$ ]]; then
        printf '%s\n' "${BASH_REMATCH[1]}"
    else
        printf '?\n'
    fi
}

# Adds the rule dropping packets from node $1 to node $2 (once).
drop() {
    local from to
    from=$(capkv_node_host "$1")
    to=$(capkv_node_host "$2")
    if iptables -w -C "$CHAIN" -s "$from" -d "$to" -j DROP >/dev/null 2>&1; then
        printf '  %s -> %s already dropped (node %s -> node %s)\n' "$from" "$to" "$1" "$2"
    else
        ipt -A "$CHAIN" -s "$from" -d "$to" -j DROP
        printf '  %s -> %s dropped (node %s -> node %s)\n' "$from" "$to" "$1" "$2"
    fi
}

cut_both() {
    drop "$1" "$2"
    drop "$2" "$1"
}

# The chain's rules as "-s X -d Y" lines, one per rule.
rules() {
    chain_exists || return 0
    # stderr: iptables-nft warns there when legacy tables exist too.
    iptables -w -S "$CHAIN" 2>/dev/null | sed -n "s/^-A $CHAIN //p"
}

cmd_status() {
    if ! chain_exists; then
        printf 'no partition\n'
        return 0
    fi
    local lines line src dst count=0
    mapfile -t lines < <(rules)
    for line in "${lines[@]}"; do
        if [[ $line =~ ^-s\ ([0-9.]+)(/32)?\ -d\ ([0-9.]+)(/32)?\ -j\ DROP$ ]]; then
            src=${BASH_REMATCH[1]}
            dst=${BASH_REMATCH[3]}
            printf '%s -> %s dropped (node %s -> node %s)\n' "$src" "$dst" "$(node_of_host "$src")" "$(node_of_host "$dst")"
        else
            printf 'rule in %s: %s\n' "$CHAIN" "$line"
        fi
        count=$((count + 1))
    done
    if ((count == 0)); then
        printf 'no partition\n'
    elif ! jump_exists; then
        printf "(inactive: INPUT does not jump to %s; 'heal' removes these rules)\n" "$CHAIN"
    fi
}

cmd_heal() {
    if ! chain_exists; then
        # A jump cannot exist without its chain, so there is nothing to do.
        printf 'no partition to heal\n'
        return 0
    fi
    local count
    count=$(rules | wc -l)
    ipt -F "$CHAIN"
    while jump_exists; do
        ipt -D INPUT -j "$CHAIN"
    done
    ipt -X "$CHAIN"
    printf 'healed: removed %s rule(s) and the %s chain; every node reaches every other node\n' "$((count))" "$CHAIN"
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
    isolate | cut | cut-oneway | bridge | heal | status) ;;
    *) usage_error "unknown command: $command" full ;;
    esac

    capkv_load_config
    case $command in
    isolate)
        need_args "$command" 1 $#
        node_arg "$1"
        ((CAPKV_NODES >= 2)) || usage_error "isolate needs 2 or more nodes (CAPKV_NODES=$CAPKV_NODES)"
        ;;
    cut | cut-oneway)
        need_args "$command" 2 $#
        node_arg "$1"
        node_arg "$2"
        [[ $1 != "$2" ]] || usage_error "$command needs two different nodes, got $1 and $2"
        ;;
    bridge)
        need_args "$command" 0 $#
        ((CAPKV_NODES >= 3)) || usage_error "bridge needs 3 or more nodes (CAPKV_NODES=$CAPKV_NODES)"
        ;;
    heal | status)
        need_args "$command" 0 $#
        ;;
    esac

    [[ $CAPKV_OS == Linux ]] ||
        capkv_die "needs Linux: the nodes have their own loopback addresses (127.0.0.1i) only there"
    ((EUID == 0)) ||
        capkv_die "needs root to change iptables rules; run it as root (e.g. sudo scripts/partition.sh $command${*:+ $*})"
    ensure_iptables

    local other
    case $command in
    isolate)
        ensure_chain
        printf 'isolate: node %s (%s) cut off from every other node, both directions\n' "$1" "$(capkv_node_host "$1")"
        for other in $(capkv_node_ids); do
            ((other == $1)) || cut_both "$1" "$other"
        done
        ;;
    cut)
        ensure_chain
        printf 'cut: node %s <-> node %s, both directions\n' "$1" "$2"
        cut_both "$1" "$2"
        ;;
    cut-oneway)
        ensure_chain
        printf 'cut-oneway: packets from node %s to node %s dropped; packets from node %s to node %s still pass\n' "$1" "$2" "$2" "$1"
        drop "$1" "$2"
        ;;
    bridge)
        ensure_chain
        printf 'bridge: node 1 <-> node 3 cut, both directions\n'
        cut_both 1 3
        printf 'node 2 still sees both node 1 and node 3 (it is the bridge)\n'
        ;;
    heal) cmd_heal ;;
    status) cmd_status ;;
    esac
}

main "$@"
