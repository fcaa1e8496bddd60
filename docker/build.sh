#!/usr/bin/env bash
# Builds the distraft Docker image without any registry: compiles a statically linked
# binary on this host and copies it into an image FROM scratch (see docker/Dockerfile).
#
# Usage: docker/build.sh [TAG]     TAG defaults to $DISTRAFT_IMAGE, else distraft:latest
#        DISTRAFT_IMAGE_BINARY=PATH   stage this statically linked binary, compile none
#
# Needs: cargo (Rust 1.88+) for x86_64-unknown-linux-gnu with the glibc static libraries
# (Debian/Ubuntu: libc6-dev), and a Docker engine. The static build has its own target
# directory (target/static by default, DISTRAFT_STATIC_TARGET_DIR to change it), so it
# never invalidates the ordinary debug/release builds.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tag=${1:-${DISTRAFT_IMAGE:-distraft:latest}}
target=x86_64-unknown-linux-gnu
target_dir=${DISTRAFT_STATIC_TARGET_DIR:-$repo/target/static}

if [[ -n "${DISTRAFT_IMAGE_BINARY:-}" ]]; then
    # A static binary built elsewhere (scripts/compose-test.sh stages its test build's).
    binary=$DISTRAFT_IMAGE_BINARY
    echo "==> using the static binary $binary"
else
    echo "==> building a static distraft binary in $target_dir"
    # crt-static links glibc in; no debug info and stripped symbols keep the image small.
    # --target keeps RUSTFLAGS away from build scripts and proc macros (they stay dynamic).
    (
        cd "$repo"
        RUSTFLAGS='-C target-feature=+crt-static' \
            CARGO_PROFILE_RELEASE_DEBUG=0 \
            CARGO_PROFILE_RELEASE_STRIP=symbols \
            cargo build --release --locked --bin distraft --target "$target" --target-dir "$target_dir"
    )
    binary=$target_dir/$target/release/distraft
fi

# A dynamically linked binary would die in the empty image with a baffling
# "no such file or directory" (its loader is missing): refuse it here instead.
if ldd "$binary" >/dev/null 2>&1 && ! ldd "$binary" 2>&1 | grep -q 'statically linked'; then
    echo "error: $binary is dynamically linked:" >&2
    ldd "$binary" >&2
    exit 1
fi

# A build context with exactly what the image holds (a few MB instead of the repository).
context=$target_dir/docker-context
rm -rf "$context"
mkdir -p "$context/rootfs/usr/local/bin" "$context/data"
cp -R "$repo/docker/rootfs/." "$context/rootfs/"
cp "$binary" "$context/rootfs/usr/local/bin/distraft"

echo "==> building image $tag"
docker build --tag "$tag" --file "$repo/docker/Dockerfile" "$context"
echo "==> $tag: $(docker image inspect --format '{{.Size}}' "$tag") bytes"
