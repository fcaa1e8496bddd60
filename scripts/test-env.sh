# Sourced by scripts/test.sh, plants.sh and compose-test.sh: the one build they share.
#
# The tests are built for the host's target with glibc linked statically, so that the
# very `distraft` binary the integration tests run also goes into the compose tests'
# FROM-scratch image (an image needs a static binary; a separate static build compiled
# every dependency again, minutes on 2 cores). Naming the target (CARGO_BUILD_TARGET)
# keeps crt-static away from build scripts and proc macros, which must stay dynamic;
# the build lands in target/<host triple>/debug/. A RUSTFLAGS of your own overrides this
# (cargo prefers it), and the compose tests then refuse the dynamic binary, saying so.
test_target=$(rustc -vV | sed -n 's/^host: //p')
export CARGO_BUILD_TARGET=$test_target
export "CARGO_TARGET_$(tr 'a-z.-' 'A-Z__' <<<"$test_target")_RUSTFLAGS=-C target-feature=+crt-static"
test_build_dir=target/$test_target/debug
# CI builds once, from a clean clone: incremental compilation data would only cost time.
if [[ -n "${CI:-}" && "${CI:-}" != false ]]; then
    export CARGO_INCREMENTAL=0
fi
