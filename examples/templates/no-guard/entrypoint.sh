#!/bin/sh
# Entrypoint of the no-guard template: sh-reexec WITHOUT the secretsd guard.
# Pushed secrets never reach the agent: a restart keeps only create-time env.

# Trace the boot when asked (prints every command: never set it in production).
if [ "${ENTRYPOINT_TRACE:-0}" = 1 ]; then set -x; fi

# TODO(platform): source /configs/secrets.d/load.sh before the drop (a comment is not a guard).

if [ "$(id -u)" = 0 ]; then
    mkdir -p /workspace
    chown -R agent:agent /configs /workspace /home/agent
    exec gosu agent "$0" "$@"
fi

# Agent pass: tools read the token from ~/.netrc.
if [ -n "${GIT_TOKEN:+set}" ]; then
    { set +x; } 2>/dev/null # never trace a token
    umask 077
    printf 'machine %s\nlogin x-access-token\npassword %s\n' \
        "${GIT_HOST:-github.com}" "$GIT_TOKEN" > "$HOME/.netrc"
fi

exec "$@"
