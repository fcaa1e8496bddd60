#!/usr/bin/env bash
# Listing 100,000 keys page by page, distraft against etcd, in one run on this machine
# (issue #20's target): a 3-node etcd 3.4 and a 3-node distraft cluster on 127.0.0.1
# (fsync on, as always), then bench/list_keys.py against their leaders. Installs etcd
# from Debian's packages if missing and builds distraft (release). Everything it
# starts, it stops (by PID). BASE_PORT (26000) moves the ports (+1..3, +11..13,
# +101..103, +111..113). About 4 minutes, most of it loading the keys.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE_PORT=${BASE_PORT:-26000}
WORK=$(mktemp -d -t distraft-list.XXXXXX)
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
trap 'exit 130' INT TERM

if ! command -v etcd >/dev/null; then
    SUDO=""
    [[ $(id -u) -eq 0 ]] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq etcd-server etcd-client >/dev/null
fi
python3 -c 'import requests' 2>/dev/null || python3 -m pip install --quiet requests
cargo build --release --quiet
DISTRAFT=$PWD/target/release/distraft

ETCD_CLUSTER="" DISTRAFT_CLUSTER="" ETCD_ENDPOINTS=""
for i in 1 2 3; do
    ETCD_CLUSTER+="${ETCD_CLUSTER:+,}e$i=http://127.0.0.1:$((BASE_PORT + 10 + i))"
    ETCD_ENDPOINTS+="${ETCD_ENDPOINTS:+,}http://127.0.0.1:$((BASE_PORT + i))"
    DISTRAFT_CLUSTER+="${DISTRAFT_CLUSTER:+,}d$i=127.0.0.1:$((BASE_PORT + 110 + i)):127.0.0.1:$((BASE_PORT + 100 + i))"
done
for i in 1 2 3; do
    etcd --name "e$i" --data-dir "$WORK/e$i" \
        --listen-client-urls "http://127.0.0.1:$((BASE_PORT + i))" \
        --advertise-client-urls "http://127.0.0.1:$((BASE_PORT + i))" \
        --listen-peer-urls "http://127.0.0.1:$((BASE_PORT + 10 + i))" \
        --initial-advertise-peer-urls "http://127.0.0.1:$((BASE_PORT + 10 + i))" \
        --initial-cluster "$ETCD_CLUSTER" --initial-cluster-token distraft-list \
        --initial-cluster-state new --logger zap --log-level warn >>"$WORK/e$i.out" 2>&1 &
    PIDS+=($!)
    DISTRAFT_NAME="d$i" DISTRAFT_HOST=127.0.0.1 DISTRAFT_UDP_PORT=$((BASE_PORT + 110 + i)) \
        DISTRAFT_CLIENT_HOST=127.0.0.1 DISTRAFT_TCP_PORT=$((BASE_PORT + 100 + i)) \
        DISTRAFT_CLUSTER="$DISTRAFT_CLUSTER" DISTRAFT_LOG_PATH="$WORK/log" \
        DISTRAFT_DATA_PATH="$WORK/state" DISTRAFT_LOG_LEVEL=WARNING \
        "$DISTRAFT" >>"$WORK/d$i.out" 2>&1 &
    PIDS+=($!)
done

# The leaders, once both clusters have one (bounded wait).
leaders() {
    ETCD_LEADER=$(ETCDCTL_API=3 etcdctl --endpoints "$ETCD_ENDPOINTS" endpoint status -w json 2>/dev/null |
        python3 -c 'import json,sys; s=json.load(sys.stdin); print([e["Endpoint"] for e in s if e["Status"]["leader"]==e["Status"]["header"]["member_id"]][0])' 2>/dev/null) &&
        DISTRAFT_LEADER=$(curl -sf "http://127.0.0.1:$((BASE_PORT + 101))/" |
            python3 -c 'import json,sys; s=json.load(sys.stdin)["status"]; m=s["members"][s["leader"]]; print(f"http://{m[2]}:{m[3]}")' 2>/dev/null)
}
for _ in $(seq 60); do leaders && break; sleep 0.5; done
leaders || { echo "$0: no leader in both clusters within 30 s" >&2; exit 1; }
echo "etcd leader $ETCD_LEADER, distraft leader $DISTRAFT_LEADER"
python3 bench/list_keys.py "$ETCD_LEADER" "$DISTRAFT_LEADER"
