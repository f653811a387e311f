#!/bin/sh
# Entrypoint of the sh-reexec template: a root pass that fixes ownership,
# then the same script again as the agent (so the guard below runs twice).

# secretsd: export pushed secrets (one file per variable in /configs/secrets.d).
if [ -f /configs/secrets.d/load.sh ]; then . /configs/secrets.d/load.sh; fi

# Trace the boot when asked (prints every command: never set it in production).
if [ "${ENTRYPOINT_TRACE:-0}" = 1 ]; then set -x; fi

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
