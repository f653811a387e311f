"""Benchmark: `secretsd audit` over 1000 local templates vs. a naive grep.

Generates 1000 templates (a mix of the field-notes shapes, taken from the
test fixture corpus and varied so that no two files are equal) in a temp
folder, then times, in the same run:

* the real CLI: `secretsd audit --format json DIR...` (one process, all dirs),
* the naive baseline: `grep -rl secrets.d/load.sh DIR...`, which is what
  people do first; it is fast and wrong (comments, late guards, functions).

Run: .venv/bin/python bench/audit_bench.py [--count N]   (target: <= 10 s for 1000)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "templates" / "fixtures"
SECRETSD = Path(sys.executable).with_name("secretsd")


def generate(dest: Path, count: int, seed: int = 5) -> list[Path]:
    rng = random.Random(seed)
    shapes = sorted(p / "template" for p in FIXTURES.iterdir() if (p / "template").is_dir())
    out = []
    for i in range(count):
        src = shapes[i % len(shapes)]
        d = dest / f"t{i:04d}-{src.parent.name}"
        shutil.copytree(src, d)
        # Vary the scripts so nothing is cached by content: an extra harmless
        # top-level line after the shebang block of every shell script.
        for f in d.rglob("*"):
            if f.is_file() and f.name != "Dockerfile" and not f.name.startswith("Dockerfile"):
                text = f.read_bytes()
                if text.startswith(b"#!/bin/") or text.startswith(b"#!/usr/bin/env"):
                    nl = b"\r\n" if b"\r\n" in text else b"\n"
                    head, _, rest = text.partition(nl)
                    f.write_bytes(head + nl + f"# build {i} {rng.getrandbits(32):08x}".encode() + nl + rest)
        out.append(d)
    return out


def timed(cmd: list[str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return time.perf_counter() - t0, proc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each; the best is reported")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="secretsd-bench-") as tmp:
        dirs = generate(Path(tmp), args.count)
        paths = [str(d) for d in dirs]
        audit_times, grep_times = [], []
        for _ in range(args.repeat):
            t, proc = timed([str(SECRETSD), "audit", "--format", "json", *paths])
            if proc.returncode != 0:
                print(proc.stderr, file=sys.stderr)
                return 1
            audit_times.append(t)
            t, g = timed(["grep", "-rl", "--include=*", "secrets.d/load.sh", *paths])
            grep_times.append(t)
        doc = json.loads(proc.stdout)
        grep_hit = {Path(line).relative_to(tmp).parts[0] for line in g.stdout.splitlines()}
        audited = {Path(t["path"]).name: t["compliant"] for t in doc["templates"]}
        fooled = sorted(n for n in grep_hit if not audited[n])  # grep says yes, audit says no
        missed = sorted(n for n, ok in audited.items() if ok and n not in grep_hit)
        best_a, best_g = min(audit_times), min(grep_times)
        shapes = {d.name.split("-", 1)[1] for d in dirs}
        print(f"templates            {args.count} (temp, {len(shapes)} shapes)")
        print(f"machine              {os.cpu_count()} CPUs, python {sys.version.split()[0]}")
        print(f"secretsd audit       {best_a:6.2f} s best of {args.repeat} "
              f"({best_a / args.count * 1000:.2f} ms/template, whole CLI incl. start-up) "
              f"target <= 10 s: {'OK' if best_a <= 10 else 'MISSED'}")
        print(f"grep -rl baseline    {best_g:6.2f} s best of {args.repeat} "
              f"({best_a / best_g:.0f}x faster than the audit)")
        print(f"compliant (audit)    {doc['summary']['compliant']}/{args.count}")
        print(f"grep says 'has it'  {len(grep_hit)}/{args.count}; of those the audit rejects "
              f"{len(fooled)} (comments, late/unguarded/nested guards); grep misses {len(missed)} "
              "compliant ones (e.g. with-secrets wrappers)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
