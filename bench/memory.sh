#!/usr/bin/env bash
# Peak memory and snapshot write amplification under a sustained large-value write
# load (issue #12): writes TOTAL_MIB MiB of VALUE_SIZE-byte values through a 3-node
# cluster (`distraft cluster`, release build) with `distraft bench`, over KEYS keys (so
# the state stays KEYS x VALUE_SIZE while the log written is TOTAL_MIB), then prints
# per node the peak RSS (VmHWM from /proc/<pid>/status), the snapshots taken and the
# bytes they wrote (from the nodes' "took a snapshot" log lines), the log bytes
# applied, and the data directory's size. Everything it starts, it stops (by PID).
#
#   cargo build --release && bench/memory.sh
#   DISTRAFT=/path/to/other/distraft bench/memory.sh     # e.g. an older build
#
# Settings (environment): TOTAL_MIB (1024), VALUE_SIZE (1048576), KEYS (64),
# CLIENTS (4), BASE_PORT (23000; uses +1..3 and +11..13), EXTRA_ENV (more
# `export DISTRAFT_...=...` lines for the nodes), KEEP (1: keep the data directory).
set -euo pipefail

TOTAL_MIB=${TOTAL_MIB:-1024}
VALUE_SIZE=${VALUE_SIZE:-1048576}
KEYS=${KEYS:-64}
CLIENTS=${CLIENTS:-4}
BASE_PORT=${BASE_PORT:-23000}

cd "$(dirname "$0")/.."
DISTRAFT=${DISTRAFT:-$PWD/target/release/distraft}
WORK=$(mktemp -d -t distraft-memory.XXXXXX)
OPS=$((TOTAL_MIB * 1048576 / VALUE_SIZE))

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

CLUSTER_PID=
cleanup() {
    if [ -n "$CLUSTER_PID" ]; then
        kill -INT "$CLUSTER_PID" 2>/dev/null || true
        wait "$CLUSTER_PID" 2>/dev/null || true
    fi
    if [ "${KEEP:-0}" != 1 ]; then rm -rf "$WORK"; else log "kept $WORK"; fi
}
trap cleanup EXIT

members=""
for i in 1 2 3; do
    members+="${members:+,}server$i=127.0.0.1:$((BASE_PORT + i)):127.0.0.1:$((BASE_PORT + 10 + i))"
done
cat >"$WORK/cluster.env" <<EOF
export DISTRAFT_NAME='server1'
export DISTRAFT_HOST='127.0.0.1'
export DISTRAFT_UDP_PORT='$((BASE_PORT + 1))'
export DISTRAFT_CLIENT_HOST='127.0.0.1'
export DISTRAFT_TCP_PORT='$((BASE_PORT + 11))'
export DISTRAFT_CLUSTER='$members'
export DISTRAFT_LOG_PATH='$WORK/data/log/'
export DISTRAFT_DATA_PATH='$WORK/data/state/'
export DISTRAFT_MAX_VALUE_BYTES='$VALUE_SIZE'
${EXTRA_ENV:-}
EOF

log "starting the cluster in $WORK ($DISTRAFT)"
"$DISTRAFT" cluster --config "$WORK/cluster.env" --data-dir "$WORK/data" >"$WORK/cluster.out" 2>&1 &
CLUSTER_PID=$!
URLS="http://127.0.0.1:$((BASE_PORT + 11)),http://127.0.0.1:$((BASE_PORT + 12)),http://127.0.0.1:$((BASE_PORT + 13))"
URL=$("$DISTRAFT" bench leader --urls "$URLS") || { cat "$WORK/cluster.out" >&2; exit 1; }

log "writing $OPS values of $VALUE_SIZE bytes over $KEYS keys with $CLIENTS clients"
"$DISTRAFT" bench --urls "$URL" --leader --clients "$CLIENTS" --ops "$OPS" \
    --value-size "$VALUE_SIZE" --keys "$KEYS" --request-timeout 60 | tail -n 12

# Let the followers apply and the last snapshots finish.
sleep 3
printf '\n%-8s %12s %12s %10s %16s %16s %12s\n' node peak_rss_mib rss_mib snapshots \
    snapshot_bytes log_bytes data_mib
for pid in $(ps -o pid= --ppid "$CLUSTER_PID"); do
    name=$(tr '\0' '\n' <"/proc/$pid/environ" | sed -n 's/^DISTRAFT_NAME=//p')
    hwm=$(awk '/VmHWM/ {print int($2 / 1024)}' "/proc/$pid/status")
    rss=$(awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$pid/status")
    out="$WORK/data/$name.out"
    snapshots=$(grep -c 'took a snapshot' "$out" || true)
    snapshot_bytes=$({ grep -o 'took a snapshot.* bytes=[0-9]*' "$out" || true; } |
        sed 's/.*bytes=//' | awk '{s += $1} END {print s + 0}')
    log_bytes=$({ grep -o 'took a snapshot.* log_bytes=[0-9]*' "$out" || true; } |
        sed 's/.*log_bytes=//' | awk '{s += $1} END {print s + 0}')
    data=$(du -sm "$WORK/data/log/$name" "$WORK/data/state/$name" | awk '{s += $1} END {print s}')
    printf '%-8s %12s %12s %10s %16s %16s %12s\n' "$name" "$hwm" "$rss" "$snapshots" \
        "$snapshot_bytes" "$log_bytes" "$data"
done
