#!/usr/bin/env bash
# Runs ferry's whole test suite on a fresh machine: formatting, lints, and every test.
# Servers that tests need are installed and started by the tests' own support code.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --all-targets
