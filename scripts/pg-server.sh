#!/usr/bin/env bash
# A private PostgreSQL cluster for tests and benchmarks: no system service, loopback only.
#
#   scripts/pg-server.sh install          install PostgreSQL if it is missing (apt)
#   scripts/pg-server.sh start DIR PORT   create the cluster in DIR (first time) and start it
#   scripts/pg-server.sh stop DIR         stop it (fast shutdown)
#   scripts/pg-server.sh bindir           print the directory of the PostgreSQL programs
#
# Extra server settings go in PG_SERVER_OPTS ("-c shared_buffers=512MB ...").
# initdb refuses to run as root: as root, the cluster runs as the `postgres` user.
set -euo pipefail

bindir() {
    if command -v pg_config >/dev/null && [ -x "$(pg_config --bindir)/initdb" ]; then
        pg_config --bindir
        return
    fi
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1
}

as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

case "${1:-}" in
install)
    if [ -n "$(bindir)" ] && [ -x "$(bindir)/initdb" ]; then
        exit 0
    fi
    echo "installing PostgreSQL..." >&2
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >/dev/null
    ;;
start)
    dir="$2"
    port="$3"
    bin="$(bindir)"
    if [ -z "$bin" ]; then
        echo "PostgreSQL is not installed: run scripts/pg-server.sh install" >&2
        exit 1
    fi
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres "$dir"
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        as_owner "$bin/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 --locale=C >"$dir/initdb.log" 2>&1
        cat >"$dir/data/pg_hba.conf" <<HBA
local all all trust
host all all 127.0.0.1/32 trust
host all all ::1/128 trust
HBA
        [ "$(id -u)" = 0 ] && chown postgres "$dir/data/pg_hba.conf"
    fi
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 ${PG_SERVER_OPTS:-}" start >/dev/null
    ;;
bindir)
    bindir
    ;;
stop)
    dir="$2"
    bin="$(bindir)"
    as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    ;;
*)
    echo "usage: $0 install | start DIR PORT | stop DIR" >&2
    exit 2
    ;;
esac
