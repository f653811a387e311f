#!/bin/bash
set -euo pipefail
. /usr/local/lib/agent/common.sh

# secretsd: export pushed secrets (one file per variable in /configs/secrets.d).
if [ -f /configs/secrets.d/load.sh ]; then
    # shellcheck disable=SC1091
    . /configs/secrets.d/load.sh
fi

if [ "${ENTRYPOINT_TRACE:-0}" = 1 ]; then set -x; fi

# Run as the agent when started as root; as-is when already non-root (Kubernetes).
if [ "$(id -u)" = 0 ]; then AS_AGENT="gosu agent"; else AS_AGENT=""; fi

boot_log OPENAI_API_KEY ANTHROPIC_API_KEY GIT_TOKEN GCP_CREDENTIALS_JSON

# Smoke mode: report once and exit (used by the template's CI).
if [ "${SMOKE:-0}" = 1 ]; then
    # shellcheck disable=SC2086 # AS_AGENT is a command prefix or empty
    exec $AS_AGENT agent-runtime --once
fi

# A JSON credential arrives in an env var; SDKs want it in a 0600 file.
if [ -n "${GCP_CREDENTIALS_JSON:+set}" ]; then
    { set +x; } 2>/dev/null # never trace a credential
    # shellcheck disable=SC2086
    $AS_AGENT mkdir -p "$(dirname "$AGENT_CREDENTIALS_FILE")"
    # shellcheck disable=SC2086,SC2016 # $1 expands in the inner sh
    printf '%s' "$GCP_CREDENTIALS_JSON" | $AS_AGENT sh -c 'umask 077; cat > "$1"' sh "$AGENT_CREDENTIALS_FILE"
    export GOOGLE_APPLICATION_CREDENTIALS="$AGENT_CREDENTIALS_FILE"
    log "credentials file written"
fi

# shellcheck disable=SC2086
exec $AS_AGENT agent-runtime --serve
