#!/usr/bin/env python3
"""Run every bench/*_bench.py in turn (what `make bench` calls).

Each benchmark prints its own table and PASS/FAIL lines against its targets;
a missed target is a finding, not an error. The exit status is non-zero only
when a benchmark could not run (crashed or exited non-zero).

    .venv/bin/python bench/run.py                 # all of them
    .venv/bin/python bench/run.py loader audit    # only those whose name contains a word
    .venv/bin/python bench/run.py -- --quick      # pass arguments to every benchmark
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    benches = sorted(HERE.glob("*_bench.py"))
    if argv:
        benches = [b for b in benches if any(w in b.stem for w in argv)]
    if not benches:
        print("bench/run.py: no benchmark matched", file=sys.stderr)
        return 2
    failed = []
    for bench in benches:
        print(f"\n==== {bench.name} " + "=" * max(0, 60 - len(bench.name)), flush=True)
        t0 = time.monotonic()
        rc = subprocess.run([sys.executable, str(bench), *extra], cwd=HERE.parent).returncode
        print(f"==== {bench.name}: exit {rc}, {time.monotonic() - t0:.1f} s", flush=True)
        if rc != 0:
            failed.append(bench.name)
    if failed:
        print("\nbenchmarks that could not run: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
