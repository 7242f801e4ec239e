#!/usr/bin/env bash
# Runs ferry's whole test suite on a fresh machine: formatting, lints, and every test.
# Servers that tests need are installed here if missing, and started by the tests' own
# support code (a private PostgreSQL cluster on a free loopback port).
set -euo pipefail
cd "$(dirname "$0")/.."
# A cold run takes about 4.5 GB for the build (target/; 3.7 GB without incremental caches, as
# .ci/run builds), 1.5 GB for the servers and clients it installs, and up to 1 GB in the
# temporary directory while tests run. Say so up front when the disk is short: tests that run
# out of it fail far from the cause.
free_mib() { df -Pm "$1" 2>/dev/null | awk 'NR == 2 { print $4 }'; }
for need in "${CARGO_TARGET_DIR:-$(pwd)}:7000" "${TMPDIR:-/tmp}:1500"; do
    dir=${need%:*} want=${need##*:} have=$(free_mib "${need%:*}")
    if [ -n "$have" ] && [ "$have" -lt "$want" ]; then
        echo "warning: only ${have} MiB free for $dir; the test suite needs about ${want} MiB there (free some space, or set CARGO_TARGET_DIR/TMPDIR to a larger disk)" >&2
    fi
done
./scripts/pg-server.sh install
./scripts/azurite.sh install
./scripts/tds-clients.sh install
# Headless Chromium renders the worker's status page in the tests: the browser alone, without
# the recommended extras (printing, avahi, fonts beyond the defaults).
if ! command -v chromium >/dev/null; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    echo "installing chromium..." >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --all-targets
