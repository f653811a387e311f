"""Waiting helpers shared by the suites that start real servers and sandboxes."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30.0) -> None:
    """Until ``url``/healthz answers 200; kill the server and raise with its log if it dies or hangs."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise RuntimeError("server did not start:\n" + log.read_text(errors="replace")[-4000:])
        time.sleep(0.05)


def wait_text(read: Callable[[], str], text: str, count: int, timeout: float, label: str) -> str:
    """Until ``read()`` holds ``text`` at least ``count`` times; the text read."""
    deadline = time.monotonic() + timeout
    while True:
        log = read()
        if log.count(text) >= count:
            return log
        if time.monotonic() > deadline:
            raise AssertionError(f"{label}: {text!r} x{count} not in its log:\n{log[-2000:]}")
        time.sleep(0.05)
