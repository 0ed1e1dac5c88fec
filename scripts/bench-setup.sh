#!/usr/bin/env bash
# Installs what `cargo run --release -p benches` compares Routehub against:
# rathole and bore (peer tunnels), oha and wrk (load generators), plus the
# system libraries rathole's build needs. Idempotent: skips what is present.
#
#   scripts/bench-setup.sh        # then: cargo run --release -p benches -- --quick
#
# Binaries go to $PEERS_ROOT/bin (default ~/.cache/peers/bin), which the
# benchmark tool looks in.
set -euo pipefail

PEERS_ROOT="${PEERS_ROOT:-$HOME/.cache/peers}"
SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi

need_apt=()
command -v wrk >/dev/null || need_apt+=(wrk)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
dpkg -s libssl-dev >/dev/null 2>&1 || need_apt+=(libssl-dev)
command -v nginx >/dev/null || need_apt+=(nginx-light)
if [ ${#need_apt[@]} -gt 0 ]; then
    if command -v apt-get >/dev/null; then
        $SUDO apt-get update
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y "${need_apt[@]}"
    else
        echo "please install: ${need_apt[*]}" >&2
    fi
fi

mkdir -p "$PEERS_ROOT"
# rathole 0.5.0 builds with native-tls, hence libssl-dev above.
[ -x "$PEERS_ROOT/bin/rathole" ] || cargo install --root "$PEERS_ROOT" rathole
[ -x "$PEERS_ROOT/bin/bore" ] || cargo install --root "$PEERS_ROOT" bore-cli
# Without --locked a dependency asks for a newer rustc.
[ -x "$PEERS_ROOT/bin/oha" ] || cargo install --root "$PEERS_ROOT" oha --locked

echo "peers installed in $PEERS_ROOT/bin:"
ls "$PEERS_ROOT/bin"

# The benchmark runs the release `routehub` binary as separate processes.
cd "$(dirname "$0")/.."
cargo build --release --locked -p routehub -p benches
