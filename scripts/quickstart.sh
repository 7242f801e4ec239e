#!/usr/bin/env bash
# The embedded default: generates TPC-H lineitem (scale 0.1, 600k rows) as CSV with ferry's
# built-in generator, then converts it to Parquet, all on local files, no servers needed.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin ferry
./target/release/ferry copy examples/tpch-lineitem-to-csv.json
./target/release/ferry copy examples/lineitem-csv-to-parquet.json
