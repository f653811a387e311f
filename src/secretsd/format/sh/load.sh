# shellcheck shell=sh
# secretsd-load-version: 1
#
# Export every secret in secrets.d as an environment variable.
# Source it, don't run it:
#   if [ -f /configs/secrets.d/load.sh ]; then . /configs/secrets.d/load.sh; fi
#
# Contract (docs/format.md): file name = variable name, content = the value,
# byte for byte. Values override variables already in the environment.
# This file never prints a value, never fails its caller (it returns 0 even
# under `set -eu`), forks nothing, and leaves no variable, function, option,
# IFS, locale or working directory behind. Every helper name starts with
# __secretsd_ and is unset at the end.

# xtrace off first, so no assignment below is traced. `$-` holds the options.
case $- in *x*) set +x; __secretsd_x=1 ;; *) __secretsd_x= ;; esac
case $- in *f*) __secretsd_nf=1; set +f ;; *) __secretsd_nf= ;; esac
case $- in *a*) __secretsd_a=1; set +a ;; *) __secretsd_a= ;; esac

# IFS: set, empty or unset must all come back as they were.
__secretsd_ifs_set=${IFS+1}
__secretsd_ifs=${IFS-}
# Byte semantics for read and ${#var}; yash only reads non-ASCII in UTF-8.
__secretsd_lc_set=${LC_ALL+1}
__secretsd_lc=${LC_ALL-}
if [ -n "${YASH_VERSION-}" ]; then LC_ALL=C.UTF-8; else LC_ALL=C; fi

__secretsd_dir=${SECRETSD_DIR:-/configs/secrets.d}
# One NAME=value plus NUL must fit the kernel's per-string limit (131072).
__secretsd_max=131072
__secretsd_skip=' '

# __secretsd_read FILE: the file's exact bytes into __secretsd_v.
# `read` strips the newline it stops at, so add it back; the last read fails
# and holds whatever followed the final newline (maybe nothing).
# Returns 1 when the file cannot be opened or exceeds the limit.
__secretsd_read() {
    __secretsd_v=
    IFS=
    { while :; do
        if read -r __secretsd_l; then
            __secretsd_v=$__secretsd_v$__secretsd_l'
'
            [ "${#__secretsd_v}" -le "$__secretsd_max" ] || return 2
        else
            __secretsd_v=$__secretsd_v$__secretsd_l
            break
        fi
    done; } 2>/dev/null <"$1" || return 1
    [ "${#__secretsd_v}" -le "$__secretsd_max" ] || return 2
    return 0
}

# __secretsd_export NAME FILE: validate the name, read, export.
# Returns 3 for a file that vanished (a generation was collected mid-read).
__secretsd_export() {
    case $1 in
        .* | load.sh) return 0 ;;
        '' | [!ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_]* | \
        *[!ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_0123456789]*)
            printf 'secretsd: skipping %s: not a valid variable name\n' "$1" >&2
            return 0 ;;
        IFS | PS1 | PS2 | PS4 | ENV | BASH_ENV | SHELLOPTS | BASHOPTS | CDPATH | GLOBIGNORE | \
        PATH | HOME | SHELL | PWD | OLDPWD | LD_* | SECRETSD_*)
            printf 'secretsd: skipping %s: reserved name\n' "$1" >&2
            return 0 ;;
    esac
    if [ "${#1}" -gt 255 ]; then
        printf 'secretsd: skipping %s: name longer than 255 bytes\n' "$1" >&2
        return 0
    fi
    if [ ! -e "$2" ]; then
        return 3
    fi
    if [ ! -r "$2" ]; then
        printf 'secretsd: skipping %s: not readable\n' "$1" >&2
        return 0
    fi
    __secretsd_rc=0
    __secretsd_read "$2" || __secretsd_rc=$?
    case $__secretsd_rc in
        0) ;;
        2) printf 'secretsd: skipping %s: value larger than %s bytes\n' "$1" "$__secretsd_max" >&2
           return 0 ;;
        *) [ -e "$2" ] || return 3
           printf 'secretsd: skipping %s: cannot read\n' "$1" >&2
           return 0 ;;
    esac
    if [ $((${#1} + ${#__secretsd_v} + 2)) -gt "$__secretsd_max" ]; then
        printf 'secretsd: skipping %s: value larger than %s bytes\n' "$1" "$__secretsd_max" >&2
        return 0
    fi
    export "$1=$__secretsd_v"
    return 0
}

# __secretsd_generation: the generation folder `..data` points at, resolved
# once so every key comes from one consistent set (see docs/format.md).
__secretsd_generation() {
    __secretsd_gen=
    [ -d "$__secretsd_dir/..data" ] || return 1
    # `test -ef` is not POSIX but dash, bash, ash, mksh, yash and zsh have it;
    # probe once, quietly.
    # shellcheck disable=SC3013
    if { [ / -ef / ]; } 2>/dev/null; then
        for __secretsd_g in "$__secretsd_dir"/..?*; do
            case ${__secretsd_g##*/} in ..data | ..data_tmp) continue ;; esac
            # shellcheck disable=SC3013
            if [ -d "$__secretsd_g" ] && [ "$__secretsd_g" -ef "$__secretsd_dir/..data" ]; then
                __secretsd_gen=$__secretsd_g
                return 0
            fi
        done
    fi
    # No `test -ef` (posh) or no match: read through the link itself.
    __secretsd_gen=$__secretsd_dir/..data
    return 0
}

# One pass: hand-made regular files first (they win over the generation,
# see docs/format.md), then the generation's keys.
__secretsd_pass() {
    __secretsd_vanished=
    __secretsd_skip=' '
    __secretsd_prev=$__secretsd_done
    __secretsd_done=' '
    for __secretsd_f in "$__secretsd_dir"/*; do
        if [ -h "$__secretsd_f" ] || [ ! -f "$__secretsd_f" ]; then continue; fi
        __secretsd_n=${__secretsd_f##*/}
        __secretsd_export "$__secretsd_n" "$__secretsd_f" || continue
        __secretsd_skip="$__secretsd_skip$__secretsd_n "
        __secretsd_done="$__secretsd_done$__secretsd_n "
    done
    __secretsd_generation || return 0
    for __secretsd_f in "$__secretsd_gen"/*; do
        [ -e "$__secretsd_f" ] || [ -h "$__secretsd_f" ] || continue
        __secretsd_n=${__secretsd_f##*/}
        case $__secretsd_skip in
            *" $__secretsd_n "*)
                # Still a regular file at the top: the hand edit wins.
                [ -h "$__secretsd_dir/$__secretsd_n" ] || continue ;;
        esac
        if __secretsd_export "$__secretsd_n" "$__secretsd_f"; then
            __secretsd_done="$__secretsd_done$__secretsd_n "
        else
            __secretsd_vanished=1
        fi
    done
    # A retry must not keep keys only the abandoned generation had.
    IFS=' '
    for __secretsd_n in $__secretsd_prev; do
        case $__secretsd_done in *" $__secretsd_n "*) ;; *) unset "$__secretsd_n" ;; esac
    done
}

if [ -d "$__secretsd_dir" ] && [ -x "$__secretsd_dir" ]; then
    # A writer may collect an old generation while we read it: try again
    # (bounded), a later generation is complete.
    __secretsd_done=
    for __secretsd_try in 1 2 3; do
        __secretsd_pass
        [ -n "$__secretsd_vanished" ] || break
    done
elif [ -e "$__secretsd_dir" ]; then
    printf 'secretsd: cannot read %s\n' "$__secretsd_dir" >&2
fi

# Restore everything the caller had, in reverse order.
if [ -n "$__secretsd_lc_set" ]; then LC_ALL=$__secretsd_lc; else unset LC_ALL; fi
if [ -n "$__secretsd_ifs_set" ]; then IFS=$__secretsd_ifs; else unset IFS; fi
[ -z "$__secretsd_a" ] || set -a
[ -z "$__secretsd_nf" ] || set -f
unset -f __secretsd_read __secretsd_export __secretsd_generation __secretsd_pass
unset __secretsd_ifs_set __secretsd_ifs __secretsd_lc_set __secretsd_lc __secretsd_dir \
    __secretsd_max __secretsd_skip __secretsd_rc __secretsd_nf __secretsd_done __secretsd_prev __secretsd_v __secretsd_l __secretsd_gen \
    __secretsd_g __secretsd_f __secretsd_n __secretsd_vanished __secretsd_try __secretsd_a
if [ -n "$__secretsd_x" ]; then unset __secretsd_x; set -x; else unset __secretsd_x; fi
