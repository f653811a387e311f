"""doctor --json names the key of a per-key finding and never emits
"key": null; repair counts each change it made (it said "1 change(s)" after
fixing the folder mode, load.sh and several files). Real console script,
real folder, real chmod/chown damage."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SECRETSD = [str(Path(sys.executable).parent / "secretsd")]


def run(args: list[str], folder: Path, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECRETSD_")}
    return subprocess.run([*SECRETSD, *args, "--dir", str(folder)], input=stdin, capture_output=True, env=env,
                          timeout=60)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "secrets.d"
    for key in ("A", "B", "C"):
        assert run(["set", key, "-"], d, key.lower().encode()).returncode == 0
    return d


def _repair(folder: Path) -> tuple[list[str], int]:
    res = run(["repair"], folder)
    assert res.returncode == 0 and b"Traceback" not in res.stderr, res.stderr
    lines = res.stderr.decode().splitlines()
    m = re.fullmatch(rf"repaired {re.escape(str(folder))}: (\d+) change\(s\)", lines[-1])
    assert m, lines
    return lines[:-1], int(m.group(1))


def test_doctor_json_names_the_key_of_drift_and_never_says_null(folder: Path) -> None:
    os.chmod(folder, 0o755)
    os.chmod(folder / "..data" / "A", 0o644)
    os.chmod(folder / "..data" / "B", 0o640)
    res = run(["doctor", "--json"], folder)
    assert res.returncode == 1
    findings = json.loads(res.stdout)
    drift = [f for f in findings if f["code"] == "DRIFT"]
    assert sorted(f["key"] for f in drift if "key" in f) == ["A", "B"]
    folder_drift = [f for f in drift if f["message"].startswith(f"{folder}:")]
    assert len(folder_drift) == 1 and "key" not in folder_drift[0]  # not a key: no field rather than null
    assert all(f.get("key", "absent") is not None for f in findings)
    assert b": null" not in res.stdout


def test_repair_counts_every_change(folder: Path) -> None:
    os.chmod(folder, 0o777)                          # 1: folder mode
    with open(folder / "load.sh", "ab") as fh:       # 2: tampered loader
        fh.write(b"\n# tampered\n")
    os.chmod(folder / "..data" / "A", 0o666)         # 3: A mode
    os.chmod(folder / "..data" / "B", 0o644)         # 4: B mode
    (folder / "HAND").write_bytes(b"h")              # 5: a hand-made file to adopt
    os.unlink(folder / "C")                          # 6: a missing link
    expected = 6
    if os.geteuid() == 0:
        os.lchown(folder / "..data" / "B", 0, 0)     # 7: B owner (root only)
        expected += 1
    lines, count = _repair(folder)
    assert count == len(lines), lines
    changes = [c for c in lines if not c.startswith("collected ..gen-")]  # timing-dependent housekeeping
    assert len(changes) == expected, changes
    text = "\n".join(changes)
    for needle in ("folder mode 0777 -> 0700", "reinstalled load.sh", "A mode 0666 -> 0600",
                   "B mode 0644 -> 0600", "adopted hand-made file HAND", "restored link C"):
        assert needle in text, changes
    # It really was repaired, and a second repair has nothing left to do.
    assert run(["doctor"], folder).returncode == 0
    _nothing_but_collection(*_repair(folder))


def _nothing_but_collection(changes: list[str], count: int) -> None:
    # Generations superseded more than 5 s ago are collected by any repair
    # (a slow run may get there): that is a change too, counted as one each.
    assert count == len(changes)
    assert all(c.startswith("collected ..gen-") for c in changes), changes


def test_repair_of_a_healthy_folder_reports_zero(folder: Path) -> None:
    _nothing_but_collection(*_repair(folder))
