#!/usr/bin/env bash
# Long runs of the property tests of what ferry parses from outside (job files, connections
# files, channel messages, table names, authentication keys): arbitrary text and mutations
# of valid documents must give an error or a value, never a panic.
#
#   scripts/fuzz.sh [CASES]   cases per property (default 1,000,000; the test command runs 256)
set -euo pipefail
cd "$(dirname "$0")/.."
FERRY_FUZZ_CASES="${1:-1000000}" cargo test -p ferry-connectors --lib fuzz_tests -- --nocapture
