#!/usr/bin/env bash
# Independent TDS clients that cross-check the SQL Server test peer: pytds (python-tds, pure
# Python) and pymssql (FreeTDS), in a virtual environment under target/tools (not
# system-wide).
#
#   scripts/tds-clients.sh install   install them if missing
#   scripts/tds-clients.sh python    print the environment's python
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/target/tools/tds-clients"

case "${1:-}" in
install)
    if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import pytds, pymssql, OpenSSL" 2>/dev/null; then
        exit 0
    fi
    echo "installing python-tds and pymssql (pip)..." >&2
    if ! python3 -m venv "$venv" 2>/dev/null; then
        # Debian ships venv apart from python3.
        sudo=""
        [ "$(id -u)" = 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
        rm -rf "$venv"
        python3 -m venv "$venv"
    fi
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        "python-tds==1.17.1" "pymssql==2.4.6" "pyOpenSSL==26.4.0"
    ;;
python)
    echo "$venv/bin/python"
    ;;
*)
    echo "usage: $0 install|python" >&2
    exit 2
    ;;
esac
