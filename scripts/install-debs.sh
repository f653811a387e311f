#!/bin/sh
# Install the Debian packages given as arguments when they are missing.
# Runs apt-get only as root; otherwise says what is missing and goes on
# (tests that need a missing tool skip with that reason).
set -eu
missing=
for pkg in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing="$missing $pkg"
    fi
done
[ -n "$missing" ] || exit 0
if [ "$(id -u)" != 0 ]; then
    echo "note: missing Debian packages (install as root):$missing" >&2
    exit 0
fi
echo "installing Debian packages:$missing" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086 # word splitting of the package list is intended
apt-get install -y -qq --no-install-recommends $missing >/dev/null
