"""Processes seen from the host through /proc: liveness without pid-reuse
mistakes, signals through pidfds, and a workspace's main process.

Finding the main process. A workspace's first process (PID 1 of its PID
namespace, the entrypoint) keeps its pid through every ``exec`` of the
chain (``sh entrypoint -> gosu -> sh entrypoint -> agent``): that pid *is*
the main process once the chain is done, as in Docker. When a link of the
chain forked instead of exec'ing (``gosu agent agent-runtime`` without
``exec``, an init such as tini), we descend: while the candidate is a
shell or a known wrapper with exactly one child, take the child. The result
is "settled" when it is not a shell/wrapper and stays the same across two
looks; until then callers may wait.
"""

from __future__ import annotations

import os
import select
import signal
import time
from pathlib import Path

#: Programs that start the real program rather than being it.
WRAPPERS = frozenset({
    "sh", "dash", "bash", "ash", "busybox", "mksh", "posh", "yash", "zsh", "ksh", "ksh93",
    "gosu", "su-exec", "setpriv", "runuser", "su", "sudo", "env", "tini", "dumb-init",
    "catatonit", "timeout", "nohup", "stdbuf", "nice", "setsid", "s6-envdir", "chpst",
    "bwrap",  # PID 1 is still bwrap while it sets the sandbox up
})


def start_time(pid: int) -> int | None:
    """Kernel start time (clock ticks since boot) of a live, non-zombie pid."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def alive(pid: int | None, started: int | None) -> bool:
    return bool(pid) and started is not None and start_time(pid) == started  # type: ignore[arg-type]


def ppid(pid: int) -> int | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return int(data[data.rindex(b")") + 2 :].split()[1])


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and ppid(int(entry)) == pid and start_time(int(entry)) is not None:
            out.append(int(entry))
    return sorted(out)


def exe_name(pid: int) -> str | None:
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe")).removesuffix(" (deleted)")
    except OSError:
        return None


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode("utf-8", "replace") for a in raw.split(b"\0")[:-1]]


def main_candidate(pid: int) -> int:
    for _ in range(16):
        if exe_name(pid) not in WRAPPERS:
            break
        kids = children(pid)
        if len(kids) != 1:
            break
        pid = kids[0]
    return pid


def settle_main(pid: int, timeout: float) -> int:
    """The main process under ``pid``, waiting up to ``timeout`` seconds
    for the entrypoint chain to reach a non-wrapper that stays put."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        cand = main_candidate(pid)
        key = (cand, start_time(cand), exe_name(cand))
        if key == last and key[2] not in WRAPPERS and key[1] is not None:
            return cand
        if time.monotonic() >= deadline:
            return cand
        last = key
        time.sleep(0.1)


def environ(pid: int) -> dict[str, bytes]:
    """The environment a process was exec'd with. Names are str (surrogate
    escaped if not UTF-8), values raw bytes."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    out: dict[str, bytes] = {}
    for entry in raw.split(b"\0"):
        if not entry:
            continue
        name, sep, value = entry.partition(b"=")
        if sep:
            out[name.decode("utf-8", "surrogateescape")] = value
    return out


def terminate(pid: int, started: int, grace: float) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; returns once gone.
    A pidfd pins the process so a recycled pid is never signalled."""
    try:
        fd = os.pidfd_open(pid)
    except (ProcessLookupError, OSError):
        return
    try:
        if start_time(pid) != started:
            return  # the pid was reused before we pinned it
        try:
            signal.pidfd_send_signal(fd, signal.SIGTERM)
        except ProcessLookupError:
            return
        if _wait_term(fd, pid, grace):
            return
        try:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
        except ProcessLookupError:
            return
        _wait_pidfd(fd, pid, 10.0)
    finally:
        os.close(fd)


#: How long a workspace init without a SIGTERM handler gets to install one
#: (an entrypoint chain about to exec its agent) before SIGKILL.
NO_HANDLER_WINDOW = 1.0


def catches(pid: int, sig: int) -> bool | None:
    """Whether ``pid`` has a handler for ``sig`` (SigCgt in /proc/PID/status); None if gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    except (OSError, ValueError):
        return None
    return None


def _wait_term(fd: int, pid: int, grace: float) -> bool:
    """Wait up to ``grace`` for the process to act on SIGTERM. The init of a
    PID namespace never receives a signal it has no handler for (a shell
    still running the entrypoint chain, say): then waiting is pointless and
    we give up after a short window instead of the whole grace. A handler
    installed after our SIGTERM was dropped (the chain exec'd into the
    agent, which set one up) gets the signal again."""
    start = time.monotonic()
    deadline = start + grace
    window = min(grace, NO_HANDLER_WINDOW)
    caught = catches(pid, signal.SIGTERM)
    while True:
        if _wait_pidfd(fd, pid, 0.1):
            return True
        now = catches(pid, signal.SIGTERM)
        if not now and time.monotonic() - start >= window:
            return False  # still no handler: the kernel discards SIGTERM, SIGKILL is all that works
        if now and not caught:
            try:
                signal.pidfd_send_signal(fd, signal.SIGTERM)
            except ProcessLookupError:
                return True
        caught = now
        if time.monotonic() >= deadline:
            return False


def _wait_pidfd(fd: int, pid: int, timeout: float) -> bool:
    """True once the process has exited (a pidfd polls readable) — or is a
    zombie, which counts as gone: its namespace is already torn down."""
    deadline = time.monotonic() + timeout
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while True:
        if poller.poll(50) or start_time(pid) is None:
            return True
        if time.monotonic() >= deadline:
            return False
