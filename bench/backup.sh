#!/usr/bin/env bash
# Backup and restore of a large state, distraft against etcd 3.4 (issue #21), on this
# machine, one system at a time:
#
#   bench/backup.sh                      # the full run (about 16 minutes)
#   STATE_MIB=64 RUNS=1 WRITE_RUNS=1 DURATION=5 bench/backup.sh   # a quick look
#
# For each system it starts a 3-node cluster on 127.0.0.1 (fsync on, as always), loads
# STATE_MIB MiB of VALUE_SIZE-byte values (distinct keys) through the leader with
# `distraft bench`, then:
#   backups:  RUNS times `distraft backup --url LEADER FILE` twice (the first after a
#             one-key write, so the node takes a snapshot first; the second streams the
#             snapshot already on disk), and RUNS times `etcdctl snapshot save`, both
#             from the leader, each under `/usr/bin/time -v`; MiB/s = file bytes / wall
#             time; the serving node's memory: VmRSS before, VmHWM during (reset with
#             /proc/<pid>/clear_refs first), the peak of RssAnon (sampled every 50 ms);
#             its CPU time (/proc/<pid>/stat); the client's maximum RSS and CPU time;
#   restores: RUNS times `distraft restore FILE ...` / `etcdctl snapshot restore FILE
#             ...` of one member of a new cluster into an empty directory (wall time,
#             maximum RSS, CPU time);
#   writes:   WRITE_RUNS rounds of `distraft bench` writes (16-byte values, 100,000
#             keys written once before, WRITE_CLIENTS connections to the leader,
#             DURATION s), one run per kind in turn: no backup; backups back to back
#             from the leader for the whole run with the backup command into a file;
#             and for distraft also with `curl -o /dev/null` of GET /v1/backup (the
#             node's side alone), of GET /v1/backup?stale=true (no snapshot taken for
#             it) and with `curl --limit-rate LIMIT_RATE` (a throttled reader). Per run:
#             writes/s, p99, the backups completed and their MiB/s, the leader's VmHWM
#             and CPU time, the machine's busy and iowait share.
# etcd gets the same load generator through its v2 API, served from its v3 store
# (`--experimental-enable-v2v3`), so that what is written is what `etcdctl snapshot
# save` saves; its quota is raised to 8 GiB (the default 2 GiB would be reached by a
# 1 GiB state's revisions plus the write runs). It prints Markdown tables and writes
# them, with every raw figure, to $OUT. Everything it starts, it stops (by PID); the
# clusters' data and the backup files are deleted as each system is done (peak disk
# use at 1 GiB: about 6.5 GiB for etcd's cluster, 4 GiB for distraft's, plus a backup
# and a restored member).
#
# Settings (environment): STATE_MIB (1024), VALUE_SIZE (524288), RUNS (3), WRITE_RUNS
# (3), DURATION (s per write run, 30), WRITE_CLIENTS (32), LIMIT_RATE (100M, curl's
# --limit-rate), BACKUP_RATE (the nodes' DISTRAFT_BACKUP_RATE, MiB/s: 50, the
# default; 0 for backups at full speed), MODES (distraft's extra write-run kinds:
# "discard stale limited"; empty for only none and back-to-back backups), SYSTEMS
# ("distraft etcd"), BASE_PORT (27000; uses +1..3, +11..13 for
# etcd, +101..103, +111..113 for distraft), OUT (results directory, with the nodes'
# logs; default a new temporary one, kept).
set -euo pipefail

STATE_MIB=${STATE_MIB:-1024}
VALUE_SIZE=${VALUE_SIZE:-524288}
RUNS=${RUNS:-3}
WRITE_RUNS=${WRITE_RUNS:-3}
DURATION=${DURATION:-30}
WRITE_CLIENTS=${WRITE_CLIENTS:-32}
SYSTEMS=${SYSTEMS:-"distraft etcd"}
BASE_PORT=${BASE_PORT:-27000}
LIMIT_RATE=${LIMIT_RATE:-100M}
BACKUP_RATE=${BACKUP_RATE:-50}
MODES=${MODES-"discard stale limited"}
# Bounds: backups in one write run's loop, seconds to wait for a loop to end.
MAX_LOOP_BACKUPS=200
LOOP_END_WAIT=300

cd "$(dirname "$0")/.."
REPO=$PWD
WORK=$(mktemp -d -t distraft-backup.XXXXXX)
OUT=${OUT:-$WORK/results}
mkdir -p "$OUT"
DISTRAFT=$REPO/target/release/distraft
KEYS=$((STATE_MIB * 1048576 / VALUE_SIZE))
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
export ETCDCTL_API=3

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- processes: every PID we start -----------------------------------------------------
declare -A PID=() # node -> pid
BG=()             # samplers and backup loops

stop_pid() { # pid: SIGTERM, then SIGKILL after 10 s
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
    local node pid
    for pid in "${BG[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    [[ -s $WORK/loop.pid ]] && kill -TERM "$(cat "$WORK/loop.pid")" 2>/dev/null || true
    for node in "${!PID[@]}"; do stop_pid "${PID[$node]}"; done
    wait 2>/dev/null || true
    cp "$WORK"/{etcd,distraft}/*.out "$OUT/" 2>/dev/null || true # the nodes' logs
    rm -rf "$WORK/etcd" "$WORK/distraft" "$WORK/restore" "$WORK/backups"
    if [[ $OUT == "$WORK"/* ]]; then
        log "results kept in $OUT"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# --- prerequisites -----------------------------------------------------------------------
if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
    log "installing etcd from Debian's packages"
    SUDO=""
    [[ $(id -u) -eq 0 ]] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq etcd-server etcd-client >/dev/null
fi
[[ -x /usr/bin/time ]] || die "/usr/bin/time is missing (Debian package time)"
log "building distraft (release)"
cargo build --release --quiet
for offset in 1 2 3 11 12 13 101 102 103 111 112 113; do
    port_taken $((BASE_PORT + offset)) && die "port $((BASE_PORT + offset)) is taken (set BASE_PORT)"
done
mkdir -p "$WORK/backups"

# --- the clusters --------------------------------------------------------------------------
ETCD_URLS=() DISTRAFT_URLS=()
ETCD_CLUSTER="" DISTRAFT_CLUSTER=""
for i in 1 2 3; do
    ETCD_URLS+=("http://127.0.0.1:$((BASE_PORT + i))")
    DISTRAFT_URLS+=("http://127.0.0.1:$((BASE_PORT + 100 + i))")
    ETCD_CLUSTER+="${ETCD_CLUSTER:+,}e$i=http://127.0.0.1:$((BASE_PORT + 10 + i))"
    DISTRAFT_CLUSTER+="${DISTRAFT_CLUSTER:+,}d$i=127.0.0.1:$((BASE_PORT + 110 + i)):127.0.0.1:$((BASE_PORT + 100 + i))"
done

start_etcd() { # i
    local i=$1
    mkdir -p "$WORK/etcd"
    etcd --name "e$i" --data-dir "$WORK/etcd/e$i" \
        --listen-client-urls "${ETCD_URLS[i - 1]}" --advertise-client-urls "${ETCD_URLS[i - 1]}" \
        --listen-peer-urls "http://127.0.0.1:$((BASE_PORT + 10 + i))" \
        --initial-advertise-peer-urls "http://127.0.0.1:$((BASE_PORT + 10 + i))" \
        --initial-cluster "$ETCD_CLUSTER" --initial-cluster-token distraft-backup \
        --initial-cluster-state new --enable-v2 --experimental-enable-v2v3 /v2/ \
        --quota-backend-bytes $((8 << 30)) --logger zap --log-level warn \
        >>"$WORK/etcd/e$i.out" 2>&1 &
    PID[etcd$i]=$!
}

start_distraft() { # i
    local i=$1
    mkdir -p "$WORK/distraft"
    DISTRAFT_NAME="d$i" DISTRAFT_HOST=127.0.0.1 DISTRAFT_UDP_PORT=$((BASE_PORT + 110 + i)) \
        DISTRAFT_CLIENT_HOST=127.0.0.1 DISTRAFT_TCP_PORT=$((BASE_PORT + 100 + i)) \
        DISTRAFT_CLUSTER="$DISTRAFT_CLUSTER" DISTRAFT_LOG_PATH="$WORK/distraft/log" \
        DISTRAFT_DATA_PATH="$WORK/distraft/state" DISTRAFT_LOG_LEVEL=INFO \
        DISTRAFT_BACKUP_RATE="$BACKUP_RATE" "$DISTRAFT" >>"$WORK/distraft/d$i.out" 2>&1 &
    PID[distraft$i]=$!
}

target_of() { [[ $1 == etcd ]] && echo etcd-v2 || echo distraft-http; }
urls_of() {
    local -n urls="${1^^}_URLS"
    (IFS=,; echo "${urls[*]}")
}

# Waits (bounded) until a write through node i of the system is acknowledged.
wait_writable() { # system i
    local system=$1 i=$2
    local -n urls="${system^^}_URLS"
    for _ in $(seq 60); do
        if "$DISTRAFT" bench --target "$(target_of "$system")" --urls "${urls[i - 1]}" \
            --clients 1 --ops 1 --key-prefix ready- --request-timeout 1 >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.5
    done
    die "$system node $i accepts no write after 30 s; see its log in $OUT"
}

stop_cluster() { # system: stops its nodes, deletes its data
    local system=$1 i
    for i in 1 2 3; do
        stop_pid "${PID[$system$i]}"
        unset "PID[$system$i]"
    done
    wait 2>/dev/null || true
    cp "$WORK/$system"/*.out "$OUT/" 2>/dev/null || true # the nodes' logs
    rm -rf "${WORK:?}/$system"
}

# Sets LEADER (URL) and LEADER_PID.
find_leader() { # system
    local system=$1 i
    local -n urls="${system^^}_URLS"
    LEADER=
    case $system in
    distraft) LEADER=$("$DISTRAFT" bench leader --urls "$(urls_of distraft)") ;;
    etcd) # (its v2 stats, which `distraft bench leader` asks, are off with v2v3)
        for _ in $(seq 30); do
            LEADER=$(etcdctl --endpoints "$(urls_of etcd)" endpoint status -w json 2>/dev/null |
                python3 -c 'import json, sys
s = json.load(sys.stdin)
print([e["Endpoint"] for e in s if e["Status"]["leader"] == e["Status"]["header"]["member_id"]][0])' \
                    2>/dev/null) && break
            sleep 0.5
        done
        ;;
    esac
    LEADER_PID=
    for i in 1 2 3; do
        if [[ ${urls[i - 1]} == "$LEADER" ]]; then LEADER_PID=${PID[$system$i]}; fi
    done
    [[ -n $LEADER_PID ]] || die "$system's leader $LEADER is none of our nodes"
}

# --- measuring -----------------------------------------------------------------------------
proc_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
mib() { awk -v k="$1" 'BEGIN { printf "%.0f", k / 1024 }'; }

# The peak RssAnon of pid, every 50 ms, into file, until stopfile exists (bounded).
sample_anon() { # pid file stopfile
    local pid=$1 file=$2 stop=$3 peak=0 now
    for _ in $(seq 100000); do
        [[ -e $stop ]] && break
        now=$(proc_kib "$pid" RssAnon 2>/dev/null) || break
        ((now > peak)) && peak=$now
        echo "$peak" >"$file"
        sleep 0.05
    done
}

# CPU time of pid so far (clock ticks: utime + stime).
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
TICKS=$(getconf CLK_TCK)
# The machine's CPU counters: "busy iowait total" (ticks, all CPUs).
machine_ticks() { awk '$1 == "cpu" { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, $6, t }' /proc/stat; }

# Starts watching pid's memory (VmHWM reset, RssAnon sampled) and CPU time. Sets WATCH_*
# for end_watch.
begin_watch() { # pid name
    WATCH_PID=$1 WATCH_NAME=$2
    WATCH_CPU0=$(cpu_ticks "$WATCH_PID")
    WATCH_MACHINE0=$(machine_ticks)
    WATCH_RSS0=$(proc_kib "$WATCH_PID" VmRSS)
    WATCH_ANON0=$(proc_kib "$WATCH_PID" RssAnon)
    echo 5 >"/proc/$WATCH_PID/clear_refs" # VmHWM := VmRSS
    rm -f "$WORK/$WATCH_NAME.stop"
    sample_anon "$WATCH_PID" "$OUT/$WATCH_NAME.anon" "$WORK/$WATCH_NAME.stop" &
    WATCH_SAMPLER=$!
    BG+=("$WATCH_SAMPLER")
}

# Sets WATCH_HWM and WATCH_ANON_PEAK (KiB), WATCH_CPU (the process's CPU seconds),
# WATCH_BUSY and WATCH_IOWAIT (the machine's, % of all CPUs' time).
end_watch() {
    touch "$WORK/$WATCH_NAME.stop"
    wait "$WATCH_SAMPLER" 2>/dev/null || true
    WATCH_CPU=$(awk -v a="$WATCH_CPU0" -v b="$(cpu_ticks "$WATCH_PID")" -v hz="$TICKS" \
        'BEGIN { printf "%.2f", (b - a) / hz }')
    read -r WATCH_BUSY WATCH_IOWAIT < <(echo "$WATCH_MACHINE0 $(machine_ticks)" |
        awk '{ t = $6 - $3; printf "%.0f %.0f\n", 100 * ($4 - $1) / t, 100 * ($5 - $2) / t }')
    WATCH_HWM=$(proc_kib "$WATCH_PID" VmHWM)
    WATCH_ANON_PEAK=$(cat "$OUT/$WATCH_NAME.anon" 2>/dev/null || echo "$WATCH_ANON0")
    ((WATCH_ANON_PEAK >= WATCH_ANON0)) || WATCH_ANON_PEAK=$WATCH_ANON0
}

# Runs a command under /usr/bin/time -v: sets T_WALL (s) and T_RSS (KiB).
timed() { # name command...
    local name=$1 t0 t1
    shift
    t0=$(date +%s.%N)
    /usr/bin/time -v -o "$OUT/$name.time" "$@" >"$OUT/$name.out" 2>"$OUT/$name.err" ||
        die "$name failed: $* ($(tail -3 "$OUT/$name.err"))"
    t1=$(date +%s.%N)
    T_WALL=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
    T_RSS=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$OUT/$name.time")
    T_CPU=$(awk -F': ' '/(User|System) time \(seconds\)/ { s += $2 } END { printf "%.2f", s }' "$OUT/$name.time")
}

backup_cmd() { # system url file
    case $1 in
    distraft) echo "$DISTRAFT" backup --url "$2" "$3" ;;
    etcd) echo etcdctl --endpoints "$2" --command-timeout 3600s snapshot save "$3" ;;
    esac
}

# One backup from the leader, measured; appends a row to $OUT/<system>-<kind>.tsv:
# wall_s bytes MiB/s client_rss_kib node_rss0_kib node_hwm_kib node_anon0_kib
# node_anon_peak_kib node_cpu_s client_cpu_s
measure_backup() { # system kind run
    local system=$1 kind=$2 run=$3 file=$WORK/backups/$1.backup bytes
    rm -f "$file"
    begin_watch "$LEADER_PID" "backup-$system-$kind-$run-node"
    # shellcheck disable=SC2046 # the command's words
    timed "backup-$system-$kind-$run" $(backup_cmd "$system" "$LEADER" "$file")
    end_watch
    bytes=$(stat -c %s "$file")
    printf '%s %s %s %s %s %s %s %s %s %s\n' "$T_WALL" "$bytes" \
        "$(awk -v b="$bytes" -v t="$T_WALL" 'BEGIN { printf "%.1f", b / 1048576 / t }')" \
        "$T_RSS" "$WATCH_RSS0" "$WATCH_HWM" "$WATCH_ANON0" "$WATCH_ANON_PEAK" \
        "$WATCH_CPU" "$T_CPU" >>"$OUT/$system-$kind.tsv"
    log "$system backup ($kind) $run: $bytes bytes in $T_WALL s," \
        "$(awk -v b="$bytes" -v t="$T_WALL" 'BEGIN { printf "%.1f", b / 1048576 / t }') MiB/s;" \
        "client max RSS $(mib "$T_RSS") MiB; node RSS $(mib "$WATCH_RSS0") → peak $(mib "$WATCH_HWM") MiB," \
        "anon $(mib "$WATCH_ANON0") → $(mib "$WATCH_ANON_PEAK") MiB; CPU s: node $WATCH_CPU, client $T_CPU"
}

# One member of a new cluster restored from the last backup; a row in <system>-restore.tsv:
# wall_s bytes MiB/s rss_kib cpu_s
measure_restore() { # system run
    local system=$1 run=$2 file=$WORK/backups/$1.backup bytes
    rm -rf "$WORK/restore"
    mkdir -p "$WORK/restore"
    case $system in
    distraft)
        timed "restore-$system-$run" "$DISTRAFT" restore "$file" --name d1 \
            --cluster "$DISTRAFT_CLUSTER" --data-path "$WORK/restore/state" \
            --log-path "$WORK/restore/log"
        ;;
    etcd)
        timed "restore-$system-$run" etcdctl snapshot restore "$file" --name e1 \
            --initial-cluster "$ETCD_CLUSTER" --initial-cluster-token restored \
            --initial-advertise-peer-urls "http://127.0.0.1:$((BASE_PORT + 11))" \
            --data-dir "$WORK/restore/e1"
        ;;
    esac
    bytes=$(stat -c %s "$file")
    printf '%s %s %s %s %s\n' "$T_WALL" "$bytes" \
        "$(awk -v b="$bytes" -v t="$T_WALL" 'BEGIN { printf "%.1f", b / 1048576 / t }')" \
        "$T_RSS" "$T_CPU" >>"$OUT/$system-restore.tsv"
    log "$system restore $run: $bytes bytes in $T_WALL s, max RSS $(mib "$T_RSS") MiB, CPU $T_CPU s," \
        "restored $(du -sm "$WORK/restore" | cut -f1) MiB"
    rm -rf "$WORK/restore"
}

curl_options() { # mode -> curl's options and URL for a backup
    case $1 in
    discard) echo "$LEADER/v1/backup" ;;
    stale) echo "$LEADER/v1/backup?stale=true" ;;
    limited) echo "--limit-rate $LIMIT_RATE $LEADER/v1/backup" ;;
    esac
}

# Backups back to back from the leader until stopfile exists (at most MAX_LOOP_BACKUPS);
# one line per completed backup in file: seconds bytes. Mode backups: the backup
# command, into a file on this disk; discard: `curl -o /dev/null` of GET /v1/backup
# (distraft only: the node's side alone); stale: the same with ?stale=true (distraft
# only: the newest snapshot streamed, none taken for it); limited: as discard, read at
# most LIMIT_RATE per second (curl --limit-rate).
backup_loop() { # system mode file stopfile
    local system=$1 mode=$2 file=$3 stop=$4 out=$WORK/backups/$1-loop.backup t0 t1 pid bytes
    for _ in $(seq "$MAX_LOOP_BACKUPS"); do
        [[ -e $stop ]] && break
        t0=$(date +%s.%N)
        rm -f "$out"
        if [[ $mode != backups ]]; then
            # shellcheck disable=SC2046 # the options of the mode
            curl -sf -o /dev/null -w '%{size_download}' $(curl_options "$mode") \
                >"$out.size" 2>>"$file.err" &
        else
            # shellcheck disable=SC2046 # the command's words
            $(backup_cmd "$system" "$LEADER" "$out") >/dev/null 2>>"$file.err" &
        fi
        pid=$!
        echo "$pid" >"$WORK/loop.pid"
        if wait "$pid"; then
            t1=$(date +%s.%N)
            if [[ $mode == backups ]]; then bytes=$(stat -c %s "$out"); else bytes=$(cat "$out.size"); fi
            echo "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }') $bytes" >>"$file"
        else
            echo "failed" >>"$file"
            sleep 1
        fi
    done
    : >"$WORK/loop.pid"
}

json_number() { sed -n "s/.*\"$2\": \([-0-9.e+]*\).*/\1/p" "$1" | head -1; }

# One write run; a row in <system>-writes-<mode>.tsv: ops/s p99_ms leader_hwm_kib
# backups backup_MiB/s(median, or n/a) leader_cpu_s machine_busy_% machine_iowait_%
write_run() { # system mode(plain|backups|discard|stale|limited) run
    local system=$1 mode=$2 run=$3 name=writes-$1-$2-$3 loop= backups=0 speed=n/a ops p99
    begin_watch "$LEADER_PID" "$name-node"
    if [[ $mode != plain ]]; then
        rm -f "$WORK/loop.stop" "$OUT/$name.loop"
        : >"$OUT/$name.loop"
        backup_loop "$system" "$mode" "$OUT/$name.loop" "$WORK/loop.stop" &
        loop=$!
        BG+=("$loop")
        sleep 1
    fi
    "$DISTRAFT" bench --target "$(target_of "$system")" --urls "$LEADER" \
        --clients "$WRITE_CLIENTS" --duration "$DURATION" --keys 100000 --key-prefix w- \
        --json "$OUT/$name.json" | sed "s/^/[$name] /" >&2
    if [[ -n $loop ]]; then
        touch "$WORK/loop.stop"
        # The backup under way finishes (bounded), so that the next run starts quiet.
        for _ in $(seq $((LOOP_END_WAIT * 10))); do kill -0 "$loop" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$loop" 2>/dev/null; then
            log "the backup loop did not end within $LOOP_END_WAIT s: stopping it"
            [[ -s $WORK/loop.pid ]] && kill -TERM "$(cat "$WORK/loop.pid")" 2>/dev/null || true
            kill -TERM "$loop" 2>/dev/null || true
        fi
        wait "$loop" 2>/dev/null || true
        backups=$(grep -vc failed "$OUT/$name.loop" || true)
        if grep -q failed "$OUT/$name.loop"; then
            log "some backups failed: $(head -3 "$OUT/$name.loop.err")"
        fi
        if ((backups > 0)); then
            speed=$(grep -v failed "$OUT/$name.loop" | awk '{ print $2 / 1048576 / $1 }' | sort -g |
                awk '{ v[NR] = $1 } END { printf "%.1f", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
        fi
    fi
    end_watch
    ops=$(json_number "$OUT/$name.json" throughput | awk '{ printf "%.0f", $1 }')
    p99=$(json_number "$OUT/$name.json" p99 | awk '{ printf "%.1f", $1 }')
    printf '%s %s %s %s %s %s %s %s\n' "$ops" "$p99" "$WATCH_HWM" "$backups" "$speed" \
        "$WATCH_CPU" "$WATCH_BUSY" "$WATCH_IOWAIT" >>"$OUT/$system-writes-$mode.tsv"
    log "$name: $ops writes/s, p99 $p99 ms, $backups backups ($speed MiB/s)," \
        "leader RSS peak $(mib "$WATCH_HWM") MiB, leader CPU $WATCH_CPU s," \
        "machine busy $WATCH_BUSY % + iowait $WATCH_IOWAIT %"
    sleep 3
}

load_state() { # system
    local system=$1
    log "$system: loading $KEYS values of $VALUE_SIZE bytes ($STATE_MIB MiB)"
    "$DISTRAFT" bench --target "$(target_of "$system")" --urls "$LEADER" --clients 4 \
        --ops "$KEYS" --keys "$KEYS" --value-size "$VALUE_SIZE" --key-prefix big- \
        --request-timeout 60 --json "$OUT/load-$system.json" | sed "s/^/[load $system] /" >&2
    # Let the followers apply it and any snapshot it triggered finish.
    sleep 20
    case $system in
    distraft) curl -sf "$LEADER/" | python3 -c 'import json,sys; s=json.load(sys.stdin)["status"]; print("distraft leader:", s["keys"], "keys,", s["state_bytes"], "state bytes, snapshot at", s["snapshot_index"], "applied", s["last_applied"])' >&2 ;;
    etcd) etcdctl --endpoints "$(urls_of etcd)" endpoint status -w table >&2 ;;
    esac
}

# --- the runs ------------------------------------------------------------------------------
for system in $SYSTEMS; do
    log "starting 3 $system nodes"
    for i in 1 2 3; do "start_$system" "$i"; done
    for i in 1 2 3; do wait_writable "$system" "$i"; done
    find_leader "$system"
    log "$system leader: $LEADER (pid $LEADER_PID)"
    load_state "$system"
    du -sm "$WORK/$system" >&2

    for run in $(seq "$RUNS"); do
        if [[ $system == distraft ]]; then
            # A write after the newest snapshot: the backup takes a snapshot first.
            "$DISTRAFT" bench --urls "$LEADER" --clients 1 --ops 1 --key-prefix mark- >/dev/null
            measure_backup distraft with-snapshot "$run"
            measure_backup distraft existing-snapshot "$run"
        else
            measure_backup etcd snapshot-save "$run"
        fi
    done
    for run in $(seq "$RUNS"); do measure_restore "$system" "$run"; done

    # The write runs' keys exist before the first run, as in every later one.
    "$DISTRAFT" bench --target "$(target_of "$system")" --urls "$LEADER" --clients "$WRITE_CLIENTS" \
        --ops 100000 --keys 100000 --key-prefix w- >/dev/null
    sleep 3
    for run in $(seq "$WRITE_RUNS"); do
        write_run "$system" plain "$run"
        write_run "$system" backups "$run"
        if [[ $system == distraft ]]; then
            for mode in $MODES; do write_run "$system" "$mode" "$run"; done
        fi
    done
    du -sm "$WORK/$system" >&2
    log "stopping $system"
    stop_cluster "$system"
    rm -f "$WORK/backups/"*
done

# --- the table -----------------------------------------------------------------------------
rows() { # files... -> their lines (missing files: none)
    local f
    for f; do [[ -f $f ]] && cat "$f"; done
    return 0
}
# "median (min–max)" of column col of the files' rows ("n/a" if none)
stat_of() { # col files...
    local col=$1
    shift
    rows "$@" | awk -v c="$col" '$c ~ /^-?[0-9.]+$/ { print $c }' | sort -g | awk '
        { v[NR] = $1 } END {
            if (NR == 0) { print "n/a"; exit }
            m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            f = (m >= 100) ? "%.0f" : "%.1f"
            if (NR == 1) printf f "\n", m; else printf f " (%s–%s)\n", m, v[1], v[NR] }'
}
median_of() { stat_of "$@" | cut -d' ' -f1; }
max_of() { # col files... -> the maximum ("n/a" if none)
    local col=$1
    shift
    rows "$@" | awk -v c="$col" 'NR == 1 || $c + 0 > m + 0 { m = $c } END { print (NR ? m : "n/a") }'
}
kib_mib() { [[ $1 == n/a ]] && echo n/a || mib "$1"; }
bytes_mib() { [[ $1 == n/a ]] && echo n/a || awk -v b="$1" 'BEGIN { printf "%.0f", b / 1048576 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.2f", a / b; else print "—" }'; }
# The serving node's memory over a system's backups: "rss0 → peak MiB (+largest growth)"
node_mem() { # files...
    rows "$@" | awk 'BEGIN { g = -1; r = 0; p = 0 }
        { if ($6 - $5 > g) g = $6 - $5; if ($5 > r) r = $5; if ($6 > p) p = $6 }
        END { if (NR) printf "%.0f → %.0f MiB (+%.0f)", r / 1024, p / 1024, g / 1024; else print "n/a" }'
}
anon_growth() { # files...
    rows "$@" | awk 'BEGIN { g = 0 } { if ($8 - $7 > g) g = $8 - $7 }
        END { if (NR) printf "+%.0f MiB", g / 1024; else print "n/a" }'
}
D=$OUT/distraft E=$OUT/etcd
D_SAVE=$(median_of 3 "$D-existing-snapshot.tsv") D_SNAP=$(median_of 3 "$D-with-snapshot.tsv")
E_SAVE=$(median_of 3 "$E-snapshot-save.tsv")
D_RESTORE=$(median_of 3 "$D-restore.tsv") E_RESTORE=$(median_of 3 "$E-restore.tsv")
D_PLAIN=$(median_of 1 "$D-writes-plain.tsv") E_PLAIN=$(median_of 1 "$E-writes-plain.tsv")
E_BUSY=$(median_of 1 "$E-writes-backups.tsv")
# CPU seconds per GiB of backup: column col of the rows over their bytes (column 2)
cpu_per_gib() { # col files...
    local col=$1
    shift
    rows "$@" | awk -v c="$col" '{ print $c / ($2 / 1073741824) }' | sort -g |
        awk '{ v[NR] = $1 } END { if (NR) printf "%.1f", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; else print "n/a" }'
}
# One write-run row per mode: writes/s, kept, p99, backups per run, backup MiB/s, leader
# peak RSS, leader CPU s, machine busy / iowait % (medians; writes/s with min–max).
write_row() { # label system mode
    local label=$1 f=$OUT/$2-writes-$3.tsv plain
    [[ -f $f ]] || return 0
    plain=$(median_of 1 "$OUT/$2-writes-plain.tsv")
    local backups="$(median_of 4 "$f") | $(median_of 5 "$f")"
    [[ $3 == plain ]] && backups="— | —"
    echo "| $2 | $label | $(stat_of 1 "$f") | $(ratio "$(median_of 1 "$f")" "$plain") | $(median_of 2 "$f") |" \
        "$backups | $(kib_mib "$(median_of 3 "$f")") MiB | $(median_of 6 "$f") |" \
        "$(median_of 7 "$f" | awk '{ printf "%.0f", $1 }') / $(median_of 8 "$f" | awk '{ printf "%.0f", $1 }') |"
}
TABLE=$OUT/results.md
{
    echo "| $STATE_MIB MiB state ($KEYS values of $((VALUE_SIZE / 1024)) KiB), 3 nodes | distraft | etcd 3.4 | distraft/etcd |"
    echo "|---|---|---|---|"
    echo "| backup file | $(bytes_mib "$(median_of 2 "$D-existing-snapshot.tsv")") MiB | $(bytes_mib "$(median_of 2 "$E-snapshot-save.tsv")") MiB | |"
    echo "| backup, MiB/s: \`distraft backup\` (snapshot on disk) / \`etcdctl snapshot save\` | $(stat_of 3 "$D-existing-snapshot.tsv") | $(stat_of 3 "$E-snapshot-save.tsv") | $(ratio "$D_SAVE" "$E_SAVE") |"
    echo "| backup, MiB/s: \`distraft backup\` after a write (snapshot taken first) | $(stat_of 3 "$D-with-snapshot.tsv") | | $(ratio "$D_SNAP" "$E_SAVE") |"
    echo "| restore of one member, MiB/s | $(stat_of 3 "$D-restore.tsv") | $(stat_of 3 "$E-restore.tsv") | $(ratio "$D_RESTORE" "$E_RESTORE") |"
    echo "| serving node (leader) RSS: before → peak during a backup (VmHWM), growth | $(node_mem "$D"-*-snapshot.tsv) | $(node_mem "$E-snapshot-save.tsv") | |"
    echo "| serving node's anonymous memory (RssAnon), largest growth during a backup | $(anon_growth "$D"-*-snapshot.tsv) | $(anon_growth "$E-snapshot-save.tsv") | |"
    echo "| backup client, max RSS | $(kib_mib "$(max_of 4 "$D"-*-snapshot.tsv)") MiB | $(kib_mib "$(max_of 4 "$E-snapshot-save.tsv")") MiB | |"
    echo "| restore, max RSS | $(kib_mib "$(max_of 4 "$D-restore.tsv")") MiB | $(kib_mib "$(max_of 4 "$E-restore.tsv")") MiB | |"
    echo "| CPU s per GiB: serving node, backup (snapshot on disk / taken first) | $(cpu_per_gib 9 "$D-existing-snapshot.tsv") / $(cpu_per_gib 9 "$D-with-snapshot.tsv") | $(cpu_per_gib 9 "$E-snapshot-save.tsv") | |"
    echo "| CPU s per GiB: backup client / restore | $(cpu_per_gib 10 "$D"-*-snapshot.tsv) / $(cpu_per_gib 5 "$D-restore.tsv") | $(cpu_per_gib 10 "$E-snapshot-save.tsv") / $(cpu_per_gib 5 "$E-restore.tsv") | |"
    echo
    echo "Writes, $WRITE_CLIENTS connections to the leader, 16-byte values, $DURATION s per run, backups back to back from the leader during the whole run:"
    echo
    echo "| system | backups during the run | writes/s (min–max) | kept | p99 ms | backups per run | backup MiB/s | leader's peak RSS | leader CPU s | machine busy / iowait % |"
    echo "|---|---|---|---|---|---|---|---|---|---|"
    write_row "none" distraft plain
    write_row "\`distraft backup\` into a file" distraft backups
    write_row "\`curl -o /dev/null\` of \`GET /v1/backup\` (the node's side alone)" distraft discard
    write_row "\`curl -o /dev/null\` of \`GET /v1/backup?stale=true\` (no snapshot taken)" distraft stale
    write_row "\`curl --limit-rate $LIMIT_RATE -o /dev/null\` of \`GET /v1/backup\`" distraft limited
    write_row "none" etcd plain
    write_row "\`etcdctl snapshot save\` into a file" etcd backups
    echo
    echo "Writes/s, distraft/etcd: $(ratio "$D_PLAIN" "$E_PLAIN") without backups (etcd's v2 API through its v3 store: \`--experimental-enable-v2v3\`)."
    echo
    echo "$(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) CPUs, load average before / after: $LOAD_BEFORE / $(cut -d' ' -f1-3 /proc/loadavg)," \
        "$(etcd --version | head -1), distraft $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?');" \
        "MiB/s: median of $RUNS (min–max); writes: median of $WRITE_RUNS runs of $DURATION s per kind (min–max)," \
        "runs alternating; CPU s per GiB: median; distraft's DISTRAFT_BACKUP_RATE: $BACKUP_RATE MiB/s."
} >"$TABLE"
echo
cat "$TABLE"
