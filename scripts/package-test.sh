#!/usr/bin/env bash
# Tries the Debian package as an operator would, in a clean Debian root: installs it (with
# apt, so its dependencies come along), runs `ferry --version` and `ferry validate`, checks
# the service account, files and modes, loads the node configuration as the service account,
# checks the systemd unit, then purges the package. Needs root, debootstrap and network
# access to the Debian archive; build the package first (scripts/package-deb.sh).
#
#   scripts/package-test.sh [SUITE]      default: this machine's Debian release
set -euo pipefail
cd "$(dirname "$0")/.."
deb=$(ls -t target/debian/ferry_*.deb 2>/dev/null | head -1)
[ -n "$deb" ] || { echo "no package: run scripts/package-deb.sh first" >&2; exit 2; }
suite=${1:-$(. /etc/os-release && echo "$VERSION_CODENAME")}
root=target/debroot-$suite
if [ ! -x "$root/usr/bin/apt-get" ]; then
    echo "debootstrap $suite into $root..." >&2
    debootstrap --variant=minbase "$suite" "$root" >/dev/null
fi
in_root() { chroot "$root" "$@"; }
step() { echo "== $*"; }

step "install $(basename "$deb")"
cp "$deb" "$root/tmp/ferry.deb"
in_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq /tmp/ferry.deb >/dev/null
step "ferry --version"
in_root ferry --version
step "ferry validate"
cat >"$root/tmp/job.json" <<'JOB'
{"name": "nation", "source": {"type": "tpch", "table": "nation", "scale_factor": 0.01},
 "sink": {"type": "file", "path": "/var/lib/ferry/data/nation.parquet", "format": {"type": "parquet"}}}
JOB
in_root ferry validate /tmp/job.json
step "service account, files and modes"
in_root id ferry
test "$(in_root stat -c '%U %a' /var/lib/ferry)" = "ferry 700"
test "$(in_root stat -c '%U:%G %a' /etc/ferry/ferry.toml)" = "root:ferry 640"
for f in /usr/share/man/man1/ferry.1.gz /usr/share/man/man1/ferry-worker.1.gz \
    /usr/share/bash-completion/completions/ferry /lib/systemd/system/ferry.service \
    /usr/share/doc/ferry/security.md; do
    in_root test -s "$f" || { echo "missing $f" >&2; exit 1; }
done
step "the node configuration loads as the service account"
in_root runuser -u ferry -- ferry nodes --config /etc/ferry/ferry.toml
step "a job runs as the service account, inside the policy's root"
in_root runuser -u ferry -- ferry copy /tmp/job.json --policy /dev/null 2>/dev/null && {
    echo "a policy file without local_roots must be refused" >&2
    exit 1
}
in_root runuser -u ferry -- sh -c 'mkdir -p /var/lib/ferry/data && ferry copy /tmp/job.json --report json >/dev/null'
test "$(in_root stat -c '%a' /var/lib/ferry/data/nation.parquet)" = "640"
if command -v systemd-analyze >/dev/null; then
    # The root has no systemd of its own: verify the installed unit with this machine's,
    # its binary and man pages taken from the root.
    step "systemd-analyze verify"
    unit=$(mktemp -d)
    sed "s#/usr/bin/ferry#$PWD/$root/usr/bin/ferry#" "$root/lib/systemd/system/ferry.service" \
        >"$unit/ferry.service"
    MANPATH="$PWD/$root/usr/share/man" systemd-analyze verify "$unit/ferry.service"
    rm -rf "$unit"
fi
step "purge"
in_root env DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq ferry >/dev/null
in_root test ! -e /var/lib/ferry
in_root test ! -e /usr/bin/ferry
echo "package test passed"
