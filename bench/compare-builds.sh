#!/usr/bin/env bash
# Two builds of distraft side by side: did a change cost throughput? Starts a 3-node
# cluster of each binary on 127.0.0.1 (fsync on, as always) and runs the same write
# load against each in turn, RUNS times, alternating, so that the machine's noise
# falls on both alike; prints each build's median writes/s (min–max) and p50/p99, and
# the ratio AFTER/BEFORE.
#
#   git worktree add /tmp/before <rev> && (cd /tmp/before && cargo build --release)
#   cargo build --release
#   bench/compare-builds.sh /tmp/before/target/release/distraft target/release/distraft
#
# Settings (environment): CLIENTS (32), DURATION (s per run, 10), RUNS (5),
# VALUE_SIZE (16), LOADGEN (the binary whose `distraft bench` drives both; default
# AFTER: since issue #20 it sends an Idempotency-Key with every write, which a build
# before then ignores; give BEFORE to measure writes without keys), BASE_PORT (23000; uses BASE_PORT+1..3, +11..13, +101..103,
# +111..113), OUT (results directory; default a new temporary one). Everything it
# starts, it stops (by PID).
set -euo pipefail
[[ $# -eq 2 ]] || { echo "usage: $0 BEFORE_BINARY AFTER_BINARY" >&2; exit 2; }
declare -A BIN=([before]=$(realpath "$1") [after]=$(realpath "$2"))
for build in before after; do
    [[ -x ${BIN[$build]} ]] || { echo "$0: ${BIN[$build]} is not an executable" >&2; exit 2; }
done
CLIENTS=${CLIENTS:-32}
LOADGEN=$(realpath "${LOADGEN:-${BIN[after]}}")
DURATION=${DURATION:-10}
RUNS=${RUNS:-5}
VALUE_SIZE=${VALUE_SIZE:-16}
BASE_PORT=${BASE_PORT:-23000}
WORK=$(mktemp -d -t distraft-builds.XXXXXX)
OUT=${OUT:-$WORK/results}
mkdir -p "$OUT"
log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK/before" "$WORK/after"
}
trap cleanup EXIT

# Build b's nodes listen on ports offset by 100 (client) and 110 (peer) from build a's.
declare -A OFFSET=([before]=0 [after]=100) URLS=()
for build in before after; do
    cluster="" urls=""
    for i in 1 2 3; do
        o=$((BASE_PORT + OFFSET[$build]))
        cluster+="${cluster:+,}n$i=127.0.0.1:$((o + 10 + i)):127.0.0.1:$((o + i))"
        urls+="${urls:+,}http://127.0.0.1:$((o + i))"
    done
    URLS[$build]=$urls
    mkdir -p "$WORK/$build"
    for i in 1 2 3; do
        o=$((BASE_PORT + OFFSET[$build]))
        DISTRAFT_NAME="n$i" DISTRAFT_UDP_PORT=$((o + 10 + i)) DISTRAFT_TCP_PORT=$((o + i)) \
            DISTRAFT_CLUSTER="$cluster" DISTRAFT_LOG_PATH="$WORK/$build/log" \
            DISTRAFT_DATA_PATH="$WORK/$build/state" DISTRAFT_LOG_LEVEL=WARNING \
            "${BIN[$build]}" >>"$WORK/$build/n$i.out" 2>&1 &
        PIDS+=($!)
    done
done

# Waits (bounded) until every node of every build acknowledges a write.
for build in before after; do
    IFS=, read -ra urls <<<"${URLS[$build]}"
    for url in "${urls[@]}"; do
        for attempt in $(seq 61); do
            [[ $attempt -le 60 ]] || { log "$build: $url accepts no write after 30 s"; exit 1; }
            "${BIN[$build]}" bench --urls "$url" --clients 1 --ops 1 --key-prefix ready- \
                --request-timeout 1 >/dev/null 2>&1 && break
            sleep 0.5
        done
    done
done
log "both clusters take writes; $RUNS runs of $DURATION s, $CLIENTS connections, alternating"

json_number() { sed -n "s/.*\"$2\": \([-0-9.e+]*\).*/\1/p" "$1" | head -1; }
summarize() { # numbers on stdin -> "median min max"
    sort -g | awk '{ v[NR] = $1 } END {
        m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        print m, v[1], v[NR] }'
}
for run in $(seq "$RUNS"); do
    for build in before after; do
        # The same client binary (after's) drives both, so that only the servers differ.
        "$LOADGEN" bench --urls "${URLS[$build]}" --leader --clients "$CLIENTS" \
            --duration "$DURATION" --value-size "$VALUE_SIZE" --key-prefix "r$run-" \
            --json "$OUT/$build-$run.json" | sed "s/^/[$build run $run] /" >&2
    done
done
declare -A OPS
for build in before after; do
    read -r ops lo hi < <(for f in "$OUT/$build"-*.json; do json_number "$f" throughput; done | summarize)
    read -r p50 _ _ < <(for f in "$OUT/$build"-*.json; do json_number "$f" p50; done | summarize)
    read -r p99 _ _ < <(for f in "$OUT/$build"-*.json; do json_number "$f" p99; done | summarize)
    OPS[$build]=$ops
    printf '%-6s %s: %.0f writes/s (%.0f–%.0f), p50 %s ms, p99 %s ms\n' \
        "$build" "${BIN[$build]}" "$ops" "$lo" "$hi" "$p50" "$p99"
done
awk -v a="${OPS[after]}" -v b="${OPS[before]}" 'BEGIN { printf "after/before: %.3f\n", a / b }'
log "raw results in $OUT"
