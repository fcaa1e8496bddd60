#!/usr/bin/env bash
# Soaks the Raft simulator far beyond CI's seeds: SEEDS seeds per configuration (three
# and five nodes, and three with leadership transfers), in release mode, on every core, in chunks so that progress shows.
# Prints seeds/s after each chunk and every failing seed with the command that replays
# it; exits non-zero if any seed failed. Bounded: SEEDS seeds, then it stops.
#   ./scripts/soak.sh              100000 seeds per configuration, from seed 0
#   ./scripts/soak.sh 20000        fewer
#   SOAK_START=100000 ./scripts/soak.sh   seeds 100000.. (a range not soaked yet)
# SOAK_CHUNK (default 5000) seeds per run; SOAK_DIR (default target/soak) keeps each
# run's log, with the full report of every failure; SOAK_CONFIGS picks configurations
# (default: all three tests of tests/simulation.rs).
set -euo pipefail
cd "$(dirname "$0")/.."

number() {
  [[ $2 =~ ^[0-9]+$ ]] || { echo "soak.sh: $1 must be a number, not '$2'" >&2; exit 2; }
}
seeds=${1:-100000}
start=${SOAK_START:-0}
chunk=${SOAK_CHUNK:-5000}
dir=${SOAK_DIR:-target/soak}
number SEEDS "$seeds"
number SOAK_START "$start"
number SOAK_CHUNK "$chunk"
[[ $chunk -gt 0 ]] || { echo "soak.sh: SOAK_CHUNK must be positive" >&2; exit 2; }
mkdir -p "$dir"

echo "soak.sh: building the simulation (release)" >&2
# Built once; the chunks run that binary, so edits made while it soaks change nothing.
build_log=$(mktemp)
cargo test --release --test simulation --no-run >"$build_log" 2>&1 \
  || { cat "$build_log"; rm -f "$build_log"; exit 1; }
binary=$(sed -n 's/.*Executable tests\/simulation.rs (\(.*\))$/\1/p' "$build_log" | tail -1)
rm -f "$build_log"
[[ -x $binary ]] || { echo "soak.sh: cannot find the simulation binary" >&2; exit 1; }

failures=()
ran=0
began=$SECONDS
configs=${SOAK_CONFIGS:-three_nodes_under_faults five_nodes_under_faults three_nodes_with_leadership_transfers}
for test in $configs; do
  [[ $test =~ ^[a-z_]+$ ]] || { echo "soak.sh: SOAK_CONFIGS holds '$test', not a test name" >&2; exit 2; }
  for ((from = start; from < start + seeds; from += chunk)); do
    n=$((start + seeds - from < chunk ? start + seeds - from : chunk))
    log="$dir/$test-$from.log"
    # One process per chunk; the simulation spreads its seeds over every core.
    if DISTRAFT_SIM_SEEDS=$n DISTRAFT_SIM_SEED_START=$from \
        "$binary" --exact "$test" --nocapture >"$log" 2>&1; then
      result=ok
    else
      mapfile -t failed < <(grep -E '^FAILED seed' "$log" || true)
      if [[ ${#failed[@]} -eq 0 ]]; then
        failed=("FAILED $test seeds $from..$((from + n - 1)): the run itself failed, see $log")
      fi
      failures+=("${failed[@]}")
      result="${#failed[@]} failed"
    fi
    ran=$((ran + n))
    elapsed=$((SECONDS - began))
    rate=$(awk -v r="$ran" -v e="$elapsed" 'BEGIN { printf "%.1f", (e > 0 ? r / e : 0) }')
    echo "soak: $test seeds $from..$((from + n - 1)): $result ($ran seeds in ${elapsed} s, $rate seeds/s)"
  done
done

if [[ ${#failures[@]} -gt 0 ]]; then
  echo "soak: ${#failures[@]} failing seed(s); replay each in release mode:"
  for f in "${failures[@]}"; do
    echo "  ${f/cargo test --test/cargo test --release --test}"
  done
  exit 1
fi
echo "soak: all $ran seeds passed in $((SECONDS - began)) s"
