#!/usr/bin/env bash
# Azurite, Microsoft's Azure Storage emulator, for tests and benchmarks: installed with npm
# under target/tools (not system-wide), started on loopback ports with a private location.
#
#   scripts/azurite.sh install                       install it if missing
#   scripts/azurite.sh start DIR BLOB_PORT QUEUE_PORT start it in the background (pid in DIR/pid)
#   scripts/azurite.sh stop DIR                      stop it
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
prefix="$root/target/tools"
bin="$prefix/node_modules/.bin/azurite"

case "${1:-}" in
install)
    if [ -x "$bin" ]; then
        exit 0
    fi
    echo "installing Azurite (npm)..." >&2
    mkdir -p "$prefix"
    [ -f "$prefix/package.json" ] || echo '{"name":"ferry-test-tools","private":true}' >"$prefix/package.json"
    npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error azurite >/dev/null
    ;;
start)
    dir="$2"
    mkdir -p "$dir"
    "$bin" --blobHost 127.0.0.1 --blobPort "$3" --queueHost 127.0.0.1 --queuePort "$4" \
        --tableHost 127.0.0.1 --tablePort 0 --location "$dir" --silent --skipApiVersionCheck \
        --loose --disableTelemetry >"$dir/azurite.log" 2>&1 &
    echo $! >"$dir/pid"
    for _ in $(seq 1 100); do
        if (exec 3<>/dev/tcp/127.0.0.1/"$3") 2>/dev/null; then
            exit 0
        fi
        sleep 0.1
    done
    echo "Azurite did not start; see $dir/azurite.log" >&2
    exit 1
    ;;
stop)
    dir="$2"
    [ -f "$dir/pid" ] && kill "$(cat "$dir/pid")" 2>/dev/null || true
    ;;
*)
    echo "usage: $0 install | start DIR BLOB_PORT QUEUE_PORT | stop DIR" >&2
    exit 2
    ;;
esac
