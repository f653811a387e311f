# shellcheck shell=sh
# secretsd-load-version: 3
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

# xtrace and verbose off first, so no line below (nor the generation's
# cache) is echoed. `$-` holds the options.
case $- in *x*) set +x; __secretsd_x=1 ;; *) __secretsd_x= ;; esac
case $- in *v*) set +v; __secretsd_vb=1 ;; *) __secretsd_vb= ;; esac
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

# The generation's cache (docs/format.md, "The loader cache") needs
# `test -nt` and a shell that survives a damaged file under `command .`:
# mksh, posh and yash exit instead, so they always read the files. zsh, and
# bash with functrace or extdebug, run a DEBUG trap inside functions, where
# it would see the cache's `export NAME='value'` lines: they read the files.
__secretsd_fast=
if [ -z "${KSH_VERSION-}${POSH_VERSION-}${YASH_VERSION-}${ZSH_VERSION-}" ]; then
    # shellcheck disable=SC3028
    case $-:${BASHOPTS-} in *T*:* | *:*extdebug*) ;; *)
        # `[ / -nt / ]` is false (1) where -nt works and an error (2) where not.
        # shellcheck disable=SC3013,SC2319
        if { [ / -nt / ] || [ $? -eq 1 ]; } 2>/dev/null; then __secretsd_fast=1; fi ;;
    esac
fi
# The effective uid, without a fork: the `Uid:` line of /proc/self/status
# (real, effective, ...; not $EUID: bash keeps one it finds in the environment).
# Empty when unknown: then only a cache we own is used (__secretsd_cached).
__secretsd_euid=
if [ -n "$__secretsd_fast" ]; then
    if [ -r /proc/self/status ]; then
        while IFS=' 	' read -r __secretsd_l __secretsd_v __secretsd_e __secretsd_rest; do
            case $__secretsd_l in Uid:) __secretsd_euid=$__secretsd_e; break ;; esac
        done </proc/self/status
        case $__secretsd_euid in *[!0123456789]*) __secretsd_euid= ;; esac
    fi
fi

# __secretsd_warn NAME REASON
__secretsd_warn() {
    printf 'secretsd: skipping %s: %s\n' "$1" "$2" >&2
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

# __secretsd_cached: export the generation's values from its cache, all or
# nothing, only if it is exact (docs/format.md, "The loader cache"): a
# generation the writer made (`..gen-N`: a kubelet's folders hold any key a
# Secret has, dotfiles too), with no hand-made file at the top level (those
# win, and may be unreadable), a regular file (not a link), our own unless we
# are known not to be root (else whoever owns the folder could run code in a
# root shell whose load.sh lives elsewhere), neither it nor any file newer
# than the cache (a hand edit, rename or link makes one newer), every file
# readable by us, and naming exactly the generation's files.
# The cache defines the function __secretsd_apply (one `export NAME='value'`
# per name) and, last, __secretsd_cn (' NAME NAME '). "$@": the top level.
__secretsd_cached() {
    case ${__secretsd_gen##*/} in ..gen-*) ;; *) return 1 ;; esac
    for __secretsd_f in "$@"; do
        case ${__secretsd_f##*/} in .* | load.sh) continue ;; esac
        if [ -f "$__secretsd_f" ] && [ ! -h "$__secretsd_f" ]; then return 1; fi
    done
    __secretsd_k=$__secretsd_gen/.load-cache.sh
    # shellcheck disable=SC3013
    if [ -h "$__secretsd_k" ] || [ ! -f "$__secretsd_k" ] || [ ! -r "$__secretsd_k" ] ||
        [ "$__secretsd_gen" -nt "$__secretsd_k" ]; then
        return 1
    fi
    # Only our own cache, unless we are known not to be root.
    if [ ! -O "$__secretsd_k" ]; then
        case $__secretsd_euid in '' | 0) return 1 ;; esac
    fi
    __secretsd_names=
    # shellcheck source=/dev/null
    if command . "$__secretsd_k" 2>/dev/null; then
        __secretsd_names=' '
        for __secretsd_f in "$__secretsd_gen"/*; do
            # shellcheck disable=SC3013
            if [ "$__secretsd_f" -nt "$__secretsd_k" ] || [ ! -r "$__secretsd_f" ]; then __secretsd_names=; break; fi
            case ${__secretsd_f##*/} in
                '' | [!ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_]* | \
                *[!ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_0123456789]*)
                    __secretsd_names=; break ;;  # a name the files path warns about
            esac
            __secretsd_names="$__secretsd_names${__secretsd_f##*/} "
        done
    fi
    if [ -n "$__secretsd_names" ] && [ "$__secretsd_names" = "${__secretsd_cn-}" ]; then
        __secretsd_apply
        __secretsd_done=$__secretsd_names
    else
        __secretsd_names=
    fi
    unset -f __secretsd_apply 2>/dev/null || :
    unset __secretsd_cn
    [ -n "$__secretsd_names" ]
}

# One pass. The top level is listed before `..data` is resolved: hand-made
# regular files there win over the generation (docs/format.md explains the
# order). The per-key work is inline, not in functions: it is the hot path.
__secretsd_pass() {
    __secretsd_vanished=
    __secretsd_hand=' '
    __secretsd_prev=$__secretsd_done
    __secretsd_done=' '
    set -- "$__secretsd_dir"/*
    __secretsd_generation || __secretsd_gen=
    # The generation's files still to read: none when its cache was used.
    __secretsd_rest=$__secretsd_gen
    if [ -n "$__secretsd_fast" ] && [ -n "$__secretsd_gen" ] && __secretsd_cached "$@"; then __secretsd_rest=; fi
    IFS=' '  # posh joins "$@" into one word when IFS is empty
    for __secretsd_f in "$@" ${__secretsd_rest:+"$__secretsd_rest"/*}; do
        __secretsd_n=${__secretsd_f##*/}
        case $__secretsd_f in
            "$__secretsd_gen"/*)
                case $__secretsd_hand in
                    *" $__secretsd_n "*) [ -h "$__secretsd_dir/$__secretsd_n" ] || continue ;;
                esac ;;
            *)
                if [ -h "$__secretsd_f" ] || [ ! -f "$__secretsd_f" ]; then continue; fi
                __secretsd_hand="$__secretsd_hand$__secretsd_n " ;;
        esac
        case $__secretsd_n in
            .* | load.sh) continue ;;
            '*') [ -e "$__secretsd_f" ] || continue ;;  # an empty folder's glob
        esac
        case $__secretsd_n in
            '' | [!ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_]* | \
            *[!ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_0123456789]*)
                __secretsd_warn "$__secretsd_n" 'not a valid variable name'
                continue ;;
            # Reserved (docs/format.md): they change how the shell, this file
            # or the linker behave, or the shell manages them itself.
            IFS | PS1 | PS2 | PS4 | ENV | BASH_ENV | SHELLOPTS | BASHOPTS | CDPATH | GLOBIGNORE | \
            PATH | HOME | SHELL | PWD | OLDPWD | LD_* | SECRETSD_* | __secretsd_* | LC_ALL | \
            _ | SHLVL | RANDOM | SRANDOM | SECONDS | LINENO | OPTIND | OPTARG | OPTERR | PPID | \
            UID | EUID | GID | EGID | USERNAME | GROUPS | FUNCNAME | DIRSTACK | PIPESTATUS | \
            HISTCMD | HISTSIZE | SAVEHIST | HISTCHARS | histchars | COLUMNS | LINES | TMOUT | \
            EPOCHREALTIME | EPOCHSECONDS | BASH | BASH_* | BASHPID | KSH_* | KSHUID | KSHGID | \
            KSHEGID | USER_ID | PGRP | YASH_* | ZSH_* | KEYBOARD_HACK | TTYIDLE | FUNCNEST | \
            TRY_BLOCK_ERROR | TRY_BLOCK_INTERRUPT | ERRNO | signals | POSH_* | FPATH | \
            path | cdpath | fpath | manpath | module_path | mailpath | psvar | \
            EXECIGNORE | GLIBC_TUNABLES | GCONV_PATH | HOSTALIASES | NLSPATH | \
            POSIXLY_CORRECT | PROMPT_COMMAND | COMMAND_NOT_FOUND_HANDLER | ECHO_STYLE)
                __secretsd_warn "$__secretsd_n" 'reserved name'
                continue ;;
        esac
        case ${#__secretsd_n} in
            ???*) if [ "${#__secretsd_n}" -gt 255 ]; then
                      __secretsd_warn "$__secretsd_n" 'name longer than 255 bytes'
                      continue
                  fi ;;
        esac
        # The file's exact bytes: `read` strips the newline it stops at, so
        # add it back; the last read fails and holds what followed the final
        # newline (maybe nothing). A failed open is not fatal in any shell
        # when the compound command is the left side of `||`.
        __secretsd_v=
        __secretsd_big=
        __secretsd_c=
        IFS=
        { while :; do
            if read -r __secretsd_l; then
                __secretsd_v=$__secretsd_v$__secretsd_l'
'
                # Bound memory on a huge file, but measure the value only every
                # 32 lines: ${#var} costs its length, so once per line is
                # quadratic in the file size.
                case $__secretsd_c in
                    ................................)
                        __secretsd_c=
                        case ${#__secretsd_v} in
                            ??????*) if [ "${#__secretsd_v}" -gt "$__secretsd_max" ]; then __secretsd_big=1; break; fi ;;
                        esac ;;
                    *) __secretsd_c=.$__secretsd_c ;;
                esac
            else
                __secretsd_v=$__secretsd_v$__secretsd_l
                break
            fi
        done; } 2>/dev/null <"$__secretsd_f" || {
            if [ -e "$__secretsd_f" ]; then
                __secretsd_warn "$__secretsd_n" 'cannot read'
            else
                __secretsd_vanished=1  # a generation collected mid-read
            fi
            continue
        }
        case $__secretsd_big${#__secretsd_v} in
            1* | ??????*)
                if [ -n "$__secretsd_big" ] || [ $((${#__secretsd_n} + ${#__secretsd_v} + 2)) -gt "$__secretsd_max" ]; then
                    __secretsd_warn "$__secretsd_n" "value larger than $__secretsd_max bytes"
                    continue
                fi ;;
        esac
        export "$__secretsd_n=$__secretsd_v"
        __secretsd_done="$__secretsd_done$__secretsd_n "
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
        # Consistent only if `..data` still names the generation we read:
        # a writer changes old generations (collects, scrubs) only after
        # swapping `..data` away from them.
        __secretsd_used=$__secretsd_gen
        __secretsd_generation || __secretsd_gen=
        if [ -z "$__secretsd_vanished" ] && [ "$__secretsd_gen" = "$__secretsd_used" ]; then break; fi
    done
elif [ -e "$__secretsd_dir" ]; then
    printf 'secretsd: cannot read %s\n' "$__secretsd_dir" >&2
fi

# Restore everything the caller had, in reverse order.
if [ -n "$__secretsd_lc_set" ]; then LC_ALL=$__secretsd_lc; else unset LC_ALL; fi
if [ -n "$__secretsd_ifs_set" ]; then IFS=$__secretsd_ifs; else unset IFS; fi
[ -z "$__secretsd_a" ] || set -a
[ -z "$__secretsd_nf" ] || set -f
unset -f __secretsd_warn __secretsd_generation __secretsd_cached __secretsd_pass
unset __secretsd_ifs_set __secretsd_ifs __secretsd_lc_set __secretsd_lc __secretsd_dir \
    __secretsd_max __secretsd_rc __secretsd_nf __secretsd_done __secretsd_prev __secretsd_hand __secretsd_big __secretsd_c __secretsd_v __secretsd_l __secretsd_gen \
    __secretsd_g __secretsd_f __secretsd_n __secretsd_vanished __secretsd_try __secretsd_a __secretsd_used \
    __secretsd_fast __secretsd_k __secretsd_names __secretsd_rest __secretsd_euid __secretsd_e
[ -z "$__secretsd_vb" ] || set -v
unset __secretsd_vb
if [ -n "$__secretsd_x" ]; then unset __secretsd_x; set -x; else unset __secretsd_x; fi
