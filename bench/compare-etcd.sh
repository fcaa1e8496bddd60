#!/usr/bin/env bash
# distraft and etcd side by side, on this machine, with the same load generator
# (`distraft bench`, which speaks etcd's v2 HTTP API and its v3 gRPC API too), over
# both kinds of API: distraft's HTTP gateway against etcd's v2 HTTP API, and distraft's
# gRPC Kv service against etcd's v3 gRPC KV service.
#
#   bench/compare-etcd.sh            # the full run (about 30 minutes)
#   DURATION=3 RUNS=1 TRIALS=2 bench/compare-etcd.sh   # a quick look
#   APIS=http bench/compare-etcd.sh  # HTTP only, as before gRPC was compared
#
# It installs etcd from Debian's packages if missing (etcd-server, etcd-client), builds
# distraft (release), starts a 3-node etcd 3.4 cluster (--enable-v2, fsync on, as
# always) and a 3-node distraft cluster (fsync on, always) on 127.0.0.1, and for each
# setting and each API runs both clusters one after the other, RUNS times:
#   writes (16-byte values, distinct keys) with 1, 8, 32 and 128 connections;
#   linearizable reads with 8 and 64 connections;
#   the "ceiling": stale reads (the same API stack, no replication) with 32 and 128
#   (etcd v3: serializable ranges);
# then peak RSS per node (VmHWM), then failover (kill -9 of the leader under light
# write load, until a survivor acknowledges a write; TRIALS times each, over each API).
# Every client talks to the leader. It prints each figure (median of the runs, min–max)
# and the ratio distraft/etcd, and writes a Markdown table and every raw JSON result
# to $OUT. Everything it starts, it stops (by PID).
#
# Settings (environment): DURATION (s per run, 10), RUNS (3), TRIALS (5; 0 skips
# failover), APIS ("http grpc": which pairs to compare, in this order within each run),
# WRITE_CLIENTS ("1 8 32 128"), READ_CLIENTS ("8 64"), CEILING_CLIENTS ("32 128"; each
# list may be empty to skip its loads),
# BASE_PORT (22000; uses BASE_PORT+1..3, +11..13, +101..103, +111..113),
# OUT (results directory; default a new temporary one).
set -euo pipefail

DURATION=${DURATION:-10}
RUNS=${RUNS:-3}
TRIALS=${TRIALS:-5}
APIS=${APIS:-"http grpc"}
# Without the colon: an empty list is a choice (skip those loads), not a default.
WRITE_CLIENTS=${WRITE_CLIENTS-"1 8 32 128"}
READ_CLIENTS=${READ_CLIENTS-"8 64"}
CEILING_CLIENTS=${CEILING_CLIENTS-"32 128"}
BASE_PORT=${BASE_PORT:-22000}
VALUE_SIZE=16
for api in $APIS; do
    [[ $api == http || $api == grpc ]] || { echo "APIS: $api is neither http nor grpc" >&2; exit 2; }
done

cd "$(dirname "$0")/.."
REPO=$PWD
WORK=$(mktemp -d -t distraft-vs-etcd.XXXXXX)
OUT=${OUT:-$WORK/results}
mkdir -p "$OUT"
DISTRAFT=$REPO/target/release/distraft
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- processes: every PID we start, by node ----------------------------------------
declare -A PID=()

stop_pid() { # pid: SIGTERM, then SIGKILL after 10 s
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for i in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
    local node
    for node in "${!PID[@]}"; do
        stop_pid "${PID[$node]}"
    done
    wait 2>/dev/null || true
    if [[ $OUT == "$WORK"/* ]]; then
        # Keep the results, drop the clusters' data.
        rm -rf "$WORK/etcd" "$WORK/distraft"
        log "results kept in $OUT"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# --- prerequisites -------------------------------------------------------------------
if ! command -v etcd >/dev/null; then
    log "installing etcd from Debian's packages"
    SUDO=""
    [[ $(id -u) -eq 0 ]] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq etcd-server etcd-client >/dev/null
fi
log "building distraft (release)"
cargo build --release --quiet
for offset in 1 2 3 11 12 13 101 102 103 111 112 113; do
    port_taken $((BASE_PORT + offset)) && die "port $((BASE_PORT + offset)) is taken (set BASE_PORT)"
done

# --- the clusters ---------------------------------------------------------------------
# Each system's URLs for each API: etcd serves v2 HTTP and v3 gRPC on its client port;
# distraft serves its gateway on its client port and its gRPC Kv service on the raft
# port.
ETCD_URLS=() DISTRAFT_URLS=() DISTRAFT_GRPC_URLS=()
ETCD_CLUSTER="" DISTRAFT_CLUSTER=""
for i in 1 2 3; do
    ETCD_URLS+=("http://127.0.0.1:$((BASE_PORT + i))")
    DISTRAFT_URLS+=("http://127.0.0.1:$((BASE_PORT + 100 + i))")
    DISTRAFT_GRPC_URLS+=("http://127.0.0.1:$((BASE_PORT + 110 + i))")
    ETCD_CLUSTER+="${ETCD_CLUSTER:+,}e$i=http://127.0.0.1:$((BASE_PORT + 10 + i))"
    DISTRAFT_CLUSTER+="${DISTRAFT_CLUSTER:+,}d$i=127.0.0.1:$((BASE_PORT + 110 + i)):127.0.0.1:$((BASE_PORT + 100 + i))"
done
ETCD_HTTP_URLS=("${ETCD_URLS[@]}") ETCD_GRPC_URLS=("${ETCD_URLS[@]}")
DISTRAFT_HTTP_URLS=("${DISTRAFT_URLS[@]}")
mkdir -p "$WORK/etcd" "$WORK/distraft"

start_etcd() { # i
    local i=$1
    etcd --name "e$i" --data-dir "$WORK/etcd/e$i" \
        --listen-client-urls "${ETCD_URLS[i - 1]}" --advertise-client-urls "${ETCD_URLS[i - 1]}" \
        --listen-peer-urls "http://127.0.0.1:$((BASE_PORT + 10 + i))" \
        --initial-advertise-peer-urls "http://127.0.0.1:$((BASE_PORT + 10 + i))" \
        --initial-cluster "$ETCD_CLUSTER" --initial-cluster-token distraft-bench \
        --initial-cluster-state new --enable-v2 --logger zap --log-level warn \
        >>"$WORK/etcd/e$i.out" 2>&1 &
    PID[etcd$i]=$!
    disown # no "Killed" notice from bash when a failover trial kills it
}

start_distraft() { # i
    local i=$1
    DISTRAFT_NAME="d$i" DISTRAFT_HOST=127.0.0.1 DISTRAFT_UDP_PORT=$((BASE_PORT + 110 + i)) \
        DISTRAFT_CLIENT_HOST=127.0.0.1 DISTRAFT_TCP_PORT=$((BASE_PORT + 100 + i)) \
        DISTRAFT_CLUSTER="$DISTRAFT_CLUSTER" DISTRAFT_LOG_PATH="$WORK/distraft/log" \
        DISTRAFT_DATA_PATH="$WORK/distraft/state" DISTRAFT_LOG_LEVEL=WARNING \
        "$DISTRAFT" >>"$WORK/distraft/d$i.out" 2>&1 &
    PID[distraft$i]=$!
    disown
}

# target_of system api -> the bench's --target; urls_of system api -> comma-separated
# URLs (api: http, the default, or grpc)
target_of() {
    case $1-${2:-http} in
        etcd-http) echo etcd-v2 ;;
        etcd-grpc) echo etcd-v3 ;;
        distraft-http) echo distraft-http ;;
        distraft-grpc) echo distraft-grpc ;;
        *) die "no bench target for $1 over ${2:-http}" ;;
    esac
}
urls_of() {
    local api=${2:-http}
    local -n urls="${1^^}_${api^^}_URLS"
    (IFS=,; echo "${urls[*]}")
}
api_label() { [[ $1 == grpc ]] && echo "gRPC (etcd v3)" || echo "HTTP (etcd v2)"; }

leader_of() { # system api -> the leader's URL (among the api's URLs)
    "$DISTRAFT" bench leader --target "$(target_of "$1" "$2")" --urls "$(urls_of "$1" "$2")"
}

# Waits (bounded) until a write through node i of the system is acknowledged.
wait_writable() { # system i
    local system=$1 i=$2 _attempt
    local -n urls="${system^^}_URLS"
    for _attempt in $(seq 60); do
        if "$DISTRAFT" bench --target "$(target_of "$system")" --urls "${urls[i - 1]}" \
            --clients 1 --ops 1 --key-prefix ready- --request-timeout 1 >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.5
    done
    die "$system node $i accepts no write after 30 s; see $WORK/$system/*.out"
}

log "starting 3 etcd nodes ($(etcd --version | head -1)) and 3 distraft nodes"
for i in 1 2 3; do start_etcd "$i"; start_distraft "$i"; done
for system in etcd distraft; do
    for i in 1 2 3; do wait_writable "$system" "$i"; done
done

# --- load runs ---------------------------------------------------------------------
json_number() { # file key -> the first "key": number in the file
    sed -n "s/.*\"$2\": \([-0-9.e+]*\).*/\1/p" "$1" | head -1
}

# median and range of numbers on stdin: "median min max"
summarize() {
    sort -g | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "n/a n/a n/a"; exit }
        m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        print m, v[1], v[NR] }'
}

TABLE=$OUT/results.md
{
    echo "| API | load | etcd ops/s (min–max) | etcd p50 / p99 ms | distraft ops/s (min–max) | distraft p50 / p99 ms | distraft/etcd |"
    echo "|---|---|---|---|---|---|---|"
} >"$TABLE"

# One setting: RUNS runs, each against each API's pair of systems in turn (etcd, then
# distraft), so that the two systems and the two APIs alternate; then one table row per
# API. A key prefix may hold {api}, replaced by the API's name, so that the two APIs'
# writes do not overwrite each other's keys.
measure() { # name label bench-args...
    local name=$1 label=$2 run system api
    shift 2
    for run in $(seq "$RUNS"); do
        for api in $APIS; do
            for system in etcd distraft; do
                "$DISTRAFT" bench --target "$(target_of "$system" "$api")" --urls "$(urls_of "$system" "$api")" \
                    --leader --duration "$DURATION" --value-size "$VALUE_SIZE" \
                    --json "$OUT/$name-$api-$system-$run.json" "${@//\{api\}/$api}" |
                    sed "s/^/[$api $system run $run] /" >&2
            done
        done
    done
    for api in $APIS; do
        row "$name-$api" "$(api_label "$api")" "$label"
    done
}

row() { # results-prefix api-label label: a table row from $OUT/<prefix>-<system>-*.json
    local prefix=$1 api=$2 label=$3 system
    local -A ops p50 p99
    for system in etcd distraft; do
        ops[$system]=$(for f in "$OUT/$prefix-$system"-*.json; do json_number "$f" throughput; done | summarize)
        p50[$system]=$(for f in "$OUT/$prefix-$system"-*.json; do json_number "$f" p50; done | summarize)
        p99[$system]=$(for f in "$OUT/$prefix-$system"-*.json; do json_number "$f" p99; done | summarize)
    done
    local row
    row=$(awk -v api="$api" -v label="$label" -v e="${ops[etcd]}" -v d="${ops[distraft]}" \
        -v ep50="${p50[etcd]}" -v ep99="${p99[etcd]}" -v dp50="${p50[distraft]}" -v dp99="${p99[distraft]}" '
        BEGIN {
            split(e, E, " "); split(d, D, " "); split(ep50, E50, " "); split(ep99, E99, " ")
            split(dp50, D50, " "); split(dp99, D99, " ")
            printf "| %s | %s | %.0f (%.0f–%.0f) | %.2f / %.1f | %.0f (%.0f–%.0f) | %.2f / %.1f | %.2f× |\n",
                api, label, E[1], E[2], E[3], E50[1], E99[1], D[1], D[2], D[3], D50[1], D99[1],
                (E[1] > 0 ? D[1] / E[1] : 0) }')
    echo "$row" >>"$TABLE"
    log "$row"
}

for c in $WRITE_CLIENTS; do
    measure "write-c$c" "writes, $c conn" --clients "$c" --keys 1000000 --key-prefix "w$c-{api}-"
done
for c in $READ_CLIENTS; do
    measure "read-c$c" "linearizable reads, $c conn" --clients "$c" --read-percent 100 --keys 1000 --key-prefix r-
done
for c in $CEILING_CLIENTS; do
    measure "stale-c$c" "ceiling: stale reads, $c conn" --clients "$c" --read-percent 100 --reads stale --keys 1000 --key-prefix r-
done

# --- peak memory -------------------------------------------------------------------
rss_line() { # system -> "a / b / c MiB"
    local system=$1 i kib out=""
    for i in 1 2 3; do
        kib=$(awk '/^VmHWM:/ { print $2 }' "/proc/${PID[$system$i]}/status")
        out+="${out:+ / }$((kib / 1024))"
    done
    echo "$out MiB"
}
RSS_ETCD=$(rss_line etcd)
RSS_DISTRAFT=$(rss_line distraft)

# --- failover ----------------------------------------------------------------------
# Runs in this shell (not a subshell), so that PID keeps the restarted nodes.
failover() { # system api -> one time per trial, in $OUT/failover-<api>-<system>.txt
    local system=$1 api=$2 trial leader i survivors killed
    local -n urls="${system^^}_${api^^}_URLS"
    for trial in $(seq "$TRIALS"); do
        leader=$(leader_of "$system" "$api")
        survivors="" killed=""
        for i in 1 2 3; do
            if [[ ${urls[i - 1]} == "$leader" ]]; then killed=$i; else survivors+="${survivors:+,}${urls[i - 1]}"; fi
        done
        "$DISTRAFT" bench failover --target "$(target_of "$system" "$api")" --urls "$survivors" \
            --kill-pid "${PID[$system$killed]}" --request-timeout 5 \
            --json "$OUT/failover-$api-$system-$trial.json" | sed "s/^/[$api $system trial $trial] /" >&2
        # Gone (bash reaps it) before its ports are reused.
        for _ in $(seq 50); do kill -0 "${PID[$system$killed]}" 2>/dev/null || break; sleep 0.1; done
        json_number "$OUT/failover-$api-$system-$trial.json" failover_ms >>"$OUT/failover-$api-$system.txt"
        "start_$system" "$killed"
        wait_writable "$system" "$killed"
    done
}
if ((TRIALS > 0)); then
    for api in $APIS; do
        failover etcd "$api"
        failover distraft "$api"
        awk -v api="$(api_label "$api")" -v e="$(summarize <"$OUT/failover-$api-etcd.txt")" \
            -v d="$(summarize <"$OUT/failover-$api-distraft.txt")" '
            BEGIN {
                split(e, E, " "); split(d, D, " ")
                printf "| %s | failover, kill -9 leader → first ack (ms) | %.0f (%.0f–%.0f) | | %.0f (%.0f–%.0f) | | %.2f× |\n",
                    api, E[1], E[2], E[3], D[1], D[2], D[3], (E[1] > 0 ? D[1] / E[1] : 0)
            }' >>"$TABLE"
    done
fi
echo "| | peak RSS per node (VmHWM) | $RSS_ETCD | | $RSS_DISTRAFT | | |" >>"$TABLE"

{
    echo
    echo "$(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) CPUs, load average before / after: $LOAD_BEFORE / $(cut -d' ' -f1-3 /proc/loadavg)," \
        "$(etcd --version | head -1), distraft $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')," \
        "$DURATION s per run, median of $RUNS runs (min–max), failover median of $TRIALS trials," \
        "APIs: $APIS (each run alternates etcd and distraft over each)."
} >>"$TABLE"
echo
cat "$TABLE"
