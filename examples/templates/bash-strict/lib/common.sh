# shellcheck shell=bash
# Helpers sourced by start.sh before anything else.

log() { printf '[boot] %s\n' "$*" >&2; }

# boot_log NAME...: which variables are set, by name only (never values).
boot_log() {
    local name set_names="" unset_names=""
    for name in "$@"; do
        if [ -n "${!name+x}" ]; then set_names+=" $name"; else unset_names+=" $name"; fi
    done
    log "set:${set_names:- (none)}"
    log "unset:${unset_names:- (none)}"
}
