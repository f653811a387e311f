#!/bin/sh
# Test fixture: traces every command from the first line, guard included.
# load.sh must print no value under set -x.
set -x

if [ -f /configs/secrets.d/load.sh ]; then . /configs/secrets.d/load.sh; fi

if [ "$(id -u)" = 0 ]; then
    mkdir -p /workspace
    chown -R agent:agent /configs /workspace /home/agent
    exec gosu agent "$0" "$@"
fi

if [ -n "${GIT_TOKEN:+set}" ]; then
    { set +x; } 2>/dev/null # never trace a token
    umask 077
    printf 'machine %s\nlogin x-access-token\npassword %s\n' \
        "${GIT_HOST:-github.com}" "$GIT_TOKEN" > "$HOME/.netrc"
fi

exec "$@"
