#!/usr/bin/env bash
# Runs ferry's whole test suite on a fresh machine: formatting, lints, and every test.
# Servers that tests need are installed here if missing, and started by the tests' own
# support code (a private PostgreSQL cluster on a free loopback port).
set -euo pipefail
cd "$(dirname "$0")/.."
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
