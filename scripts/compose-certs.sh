#!/usr/bin/env bash
# Makes a development CA and certificates for docker-compose.tls.yml:
#   scripts/compose-certs.sh [DIR]     (default: ./certs; --force to replace them)
# The node certificate names the compose hosts server1..server5 and the local names
# (127.0.0.1, localhost, ::1) that the published ports and the healthcheck use.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=${1:-$repo/certs}
shift || true
hosts=127.0.0.1,localhost,::1,server1,server2,server3,server4,server5

# DISTRAFT_BINARY, else the binary docker/build.sh made, else a build of this checkout.
static=${DISTRAFT_STATIC_TARGET_DIR:-$repo/target/static}/x86_64-unknown-linux-gnu/release/distraft
if [[ -n "${DISTRAFT_BINARY:-}" ]]; then
    distraft=("$DISTRAFT_BINARY")
elif [[ -x $static ]]; then
    distraft=("$static")
else
    distraft=(cargo run --quiet --manifest-path "$repo/Cargo.toml" --bin distraft --)
fi
"${distraft[@]}" certs --dir "$dir" --hosts "$hosts" "$@"

# The containers run as the image's unprivileged user (uid 10001), not as the owner of
# these files: the node key must be readable by others. These are development keys on
# the developer's machine; the CA key (ca-key.pem) stays private and is not needed by
# the nodes.
chmod 0644 "$dir/node-key.pem"
