#!/usr/bin/env bash
# Builds the Debian package of ferry: the binary of the `dist` profile (link-time optimised,
# one codegen unit, stripped; Cargo.toml), its man pages and shell
# completions (generated from the command-line definition), the systemd unit and an example
# configuration. Needs cargo-deb (`cargo install cargo-deb`). Prints the package's path.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null || {
    echo "cargo-deb is missing: cargo install cargo-deb" >&2
    exit 2
}
cargo build --profile dist --bin ferry
out=target/package
rm -rf "$out"
mkdir -p "$out/completions"
./target/dist/ferry manpages "$out/man" >/dev/null
gzip -9n "$out"/man/*.1
./target/dist/ferry completions bash >"$out/completions/ferry.bash"
./target/dist/ferry completions zsh >"$out/completions/_ferry"
./target/dist/ferry completions fish >"$out/completions/ferry.fish"
cargo deb --no-build --strip --output target/debian/ 2>&1 | tail -1
