#!/usr/bin/env bash
# Routehub's test command: installs what the tests need, then runs the
# format check, clippy and the whole test suite. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
# Tests that need Chromium, Pebble or a Docker Engine skip when they are
# missing, except under CI=true, where they fail. This script installs
# Chromium and Pebble (the engine is the machine's), so a missing one is a
# failure here too, locally as in CI; a plain `cargo test` keeps skipping.
export CI=true

# Debian packages the tests use. Installed only when missing.
packages=()
# Pebble, the ACME test server, and its fake DNS (tests/src/pebble.rs).
command -v pebble >/dev/null || packages+=(pebble)
# Headless Chromium for the dashboard test (tests/src/browser.rs).
command -v chromium >/dev/null || packages+=(chromium)
# curl, a third-party HTTP/2 client, for tests of what real clients see.
command -v curl >/dev/null || packages+=(curl)
# A static busybox, the only thing in the test containers' image
# (tests/src/docker.rs builds it; nothing is pulled).
dpkg -s busybox-static >/dev/null 2>&1 || packages+=(busybox-static)
# A compose CLI for the deployment tests: the v2 plugin where it is, else v1.
docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null || packages+=(docker-compose)
apt_install() {
    [ ${#packages[@]} -eq 0 ] && return 0
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "== installing: ${packages[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${packages[@]}" >/dev/null
}
apt_install

echo "== crypto guard: ring only (no aws-lc, no OpenSSL)"
if cargo tree --workspace --target all -e all --prefix none --locked | grep -qE '^(aws-lc-(rs|sys)|openssl-sys|native-tls) '; then
    echo "a forbidden crypto crate is in the dependency tree:" >&2
    cargo tree --workspace --target all -e all --prefix none --locked | grep -E '^(aws-lc-(rs|sys)|openssl-sys|native-tls) ' >&2
    exit 1
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo test"
cargo test --workspace --locked

# --- fuzz: short pass ---------------------------------------------------------
# A few seconds per fuzz target from the saved corpus (cargo test above
# already replayed it on stable). Needs a nightly toolchain and cargo-fuzz
# (installed if missing); prints one line saying why when it skips.
scripts/fuzz.sh --short
# --- end fuzz -----------------------------------------------------------------
