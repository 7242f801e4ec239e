#!/usr/bin/env bash
# Long runs of the property tests of what ferry parses from outside: job files, connections
# files, channel messages, table names and authentication keys (an error or a value, never a
# panic; connectors/src/fuzz_tests.rs), and the data it decodes: CSV against the `csv` crate,
# binary COPY round trips, damaged Parquet and Arrow IPC files (connectors/src/fuzz_formats.rs).
#
#   scripts/fuzz.sh [CASES] [FILTER]   cases per property (default 1,000,000; the test command
#                                      runs 256), properties whose name contains FILTER
set -euo pipefail
cd "$(dirname "$0")/.."
FERRY_FUZZ_CASES="${1:-1000000}" cargo test -p ferry-connectors --lib "${2:-fuzz_}" -- --nocapture
