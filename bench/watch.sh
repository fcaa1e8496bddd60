#!/usr/bin/env bash
# Watch benchmarks (issue #20): on a 3-node cluster on 127.0.0.1 (fsync on),
#  1. latency: a watcher on a follower follows a prefix while WRITES writes go, one at a
#     time, to the leader; for each, the time from its acknowledgement to its event
#     (p50/p90/p99/max; target p99 <= 10 ms);
#  2. idle watchers: WATCHERS (10,000) watches of distinct keys held open on one
#     follower; the node's resident memory (VmRSS) before and with them (target: under
#     100 MiB for 10,000), then a write to one of them must still reach it.
#
#   cargo build --release --examples && bench/watch.sh
#
# Settings (environment): WRITES (2000), WATCHERS (10000), BASE_PORT (24000; uses
# BASE_PORT+1..3 and +11..13), BIN (target/release/distraft), EXAMPLE
# (target/release/examples/watch_bench). Everything it starts, it stops (by PID).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/distraft}
EXAMPLE=${EXAMPLE:-target/release/examples/watch_bench}
WRITES=${WRITES:-2000}
WATCHERS=${WATCHERS:-10000}
BASE_PORT=${BASE_PORT:-24000}
for exe in "$BIN" "$EXAMPLE"; do
    [[ -x $exe ]] || { echo "$0: $exe missing: cargo build --release --examples" >&2; exit 2; }
done
WORK=$(mktemp -d -t distraft-watch.XXXXXX)
log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

cluster=""
for i in 1 2 3; do
    cluster+="${cluster:+,}n$i=127.0.0.1:$((BASE_PORT + 10 + i)):127.0.0.1:$((BASE_PORT + i))"
done
declare -A NODE_PID
for i in 1 2 3; do
    DISTRAFT_NAME="n$i" DISTRAFT_UDP_PORT=$((BASE_PORT + 10 + i)) DISTRAFT_TCP_PORT=$((BASE_PORT + i)) \
        DISTRAFT_CLUSTER="$cluster" DISTRAFT_LOG_PATH="$WORK/log" DISTRAFT_DATA_PATH="$WORK/state" \
        DISTRAFT_LOG_LEVEL=WARNING "$BIN" >>"$WORK/n$i.out" 2>&1 &
    PIDS+=($!)
    NODE_PID[$i]=$!
done

# The leader, once there is one (bounded).
leader=""
for _ in $(seq 60); do
    for i in 1 2 3; do
        if curl -s "http://127.0.0.1:$((BASE_PORT + i))/" | grep -q '"is_leader": *true'; then
            leader=$i
        fi
    done
    [[ -n $leader ]] && break
    sleep 0.5
done
[[ -n $leader ]] || { log "no leader after 30 s"; exit 1; }
follower=$(( leader % 3 + 1 ))
grpc() { echo "http://127.0.0.1:$((BASE_PORT + 10 + $1))"; }
log "leader n$leader, watching on n$follower"

log "latency: $WRITES writes to n$leader, watched on n$follower"
"$EXAMPLE" latency "$(grpc "$leader")" "$(grpc "$follower")" "$WRITES"

rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
pid=${NODE_PID[$follower]}
before=$(rss "$pid")
log "idle: $WATCHERS watchers on n$follower (VmRSS before: $((before / 1024)) MiB)"
mkfifo "$WORK/hold"
"$EXAMPLE" idle "$(grpc "$follower")" "$WATCHERS" <"$WORK/hold" >"$WORK/idle.out" 2>&1 &
idle_pid=$!
PIDS+=("$idle_pid")
exec 3>"$WORK/hold"
for _ in $(seq 240); do
    grep -q '^registered' "$WORK/idle.out" && break
    kill -0 "$idle_pid" 2>/dev/null || break
    sleep 0.5
done
cat "$WORK/idle.out"
sleep 2
with=$(rss "$pid")
echo "idle: n$follower VmRSS $((before / 1024)) MiB before, $((with / 1024)) MiB with $WATCHERS watchers: $(((with - before) / 1024)) MiB for them ($(((with - before) * 1024 / WATCHERS)) bytes each)"
exec 3>&-
wait "$idle_pid"
cat "$WORK/idle.out" | tail -n +2
