#!/bin/sh
# Print "probe KEY VALUE" lines about the sandbox; PROBE_PATHS lists paths
# that must not exist inside; PROBE_EXIT=N exits instead of staying up.
# shellcheck disable=SC2012
for p in ${PROBE_PATHS:-}; do
    if [ -e "$p" ] || [ -L "$p" ]; then echo "probe visible $p"; else echo "probe hidden $p"; fi
done
echo "probe hostname $(cat /proc/sys/kernel/hostname)"
echo "probe pid $$"
echo "probe uid $(id -u)"
echo "probe cwd $(pwd)"
echo "probe procs $(ls -d /proc/[0-9]* | wc -l)"
echo "probe rootls $(ls -A /root | wc -l)"
if touch /usr/bin/probe-write 2>/dev/null; then echo "probe usr writable"; else echo "probe usr readonly"; fi
if touch /configs/probe-write 2>/dev/null; then echo "probe configs writable"; rm -f /configs/probe-write; fi
if mknod /tmp/probe-dev c 1 3 2>/dev/null; then echo "probe mknod allowed"; else echo "probe mknod denied"; fi
if mount -t tmpfs none /tmp 2>/dev/null; then echo "probe mount allowed"; else echo "probe mount denied"; fi
echo "probe layer $(cat /probe-layer 2>/dev/null || echo none)"
date +%s%N > /probe-layer
if [ -n "${PROBE_EXIT:-}" ]; then exit "$PROBE_EXIT"; fi
# A detached grandchild: it must die with the workspace all the same.
setsid sleep 1000 &
# As PID 1, SIGTERM only works with a handler (PROBE_IGNORE_TERM=1: none).
if [ -z "${PROBE_IGNORE_TERM:-}" ]; then trap 'exit 0' TERM; fi
echo "probe ready"
while :; do sleep 0.2; done
