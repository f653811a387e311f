#!/usr/bin/env python3
"""Benchmark: sourcing load.sh against a naive ``$(cat)`` loop, per shell.

    .venv/bin/python bench/loader_bench.py            # full run (a few minutes)
    .venv/bin/python bench/loader_bench.py --quick    # fewer repetitions
    .venv/bin/python bench/loader_bench.py --loader /tmp/variant.sh   # measure a variant

What it does (docs/loader-benchmark.md explains the method):

* writes two folders with the real writer (``SecretsDir.apply``): 50 keys
  (49 tokens of ~40 bytes + one 4 KiB JSON) and 500 keys (499 tokens + the
  JSON), in a temporary directory;
* per shell, measures in the same run, interleaved round by round:
  ``SH -c :`` (startup baseline), ``SH -c '. DIR/load.sh'`` with
  ``SECRETSD_DIR=DIR``, and the naive loop
  ``for f in DIR/*; do k=${f##*/}; export "$k=$(cat "$f")"; done``
  (which skips ``load.sh``: dash and ash abort on ``export load.sh=…``);
* reports the median wall time, the time net of the startup baseline, the
  ratio naive/load.sh (net, and gross in brackets), and the number of
  forks, execs and read(2) calls of one run under ``strace -f -c``;
* adds ``s6-envdir -fnL DIR dash -c :`` as a reference row when installed.

Targets (printed as PASS/FAIL, never an error exit): 0 forks per key for
load.sh; naive/load.sh >= 10x in dash and bash, >= 3x in busybox ash (on net
times). Exit status is 0 unless the benchmark itself could not run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from secretsd.format.writer import SecretsDir, loader_source  # noqa: E402

# (label, argv prefix, target ratio or None, core?)
SHELLS: list[tuple[str, list[str], float | None, bool]] = [
    ("dash", ["dash"], 10.0, True),
    ("bash", ["bash"], 10.0, True),
    ("busybox ash", ["busybox", "ash"], 3.0, True),
    ("mksh", ["mksh"], None, False),
    ("posh", ["posh"], None, False),
    ("yash", ["yash"], None, False),
    ("zsh (sh emulation)", ["zsh", "--emulate", "sh"], None, False),
]

NAIVE = (
    'for f in "$D"/*; do k=${f##*/}; case $k in load.sh) continue ;; esac; '
    'export "$k=$(cat "$f")"; done'
)
PROCESS_CALLS_FORK = {"fork", "vfork", "clone", "clone3"}
PROCESS_CALLS_EXEC = {"execve", "execveat"}


# --------------------------------------------------------------- data set

def make_values(n: int, seed: int = 1234) -> dict[str, bytes]:
    rnd = random.Random(seed + n)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    values = {f"TOKEN_{i:03d}": ("ghp_" + "".join(rnd.choice(alphabet) for _ in range(36))).encode()
              for i in range(n - 1)}
    # One 4 KiB pretty-printed JSON credential (multi-line, as service-account files are).
    doc = {
        "type": "service_account",
        "project_id": "bench-project",
        "private_key_id": "".join(rnd.choice("0123456789abcdef") for _ in range(40)),
        "private_key": "-----BEGIN PRIVATE KEY-----\n"
        + "\n".join("".join(rnd.choice(alphabet) for _ in range(64)) for _ in range(40))
        + "\n-----END PRIVATE KEY-----\n",
        "client_email": "bench@bench-project.iam.example.com",
    }
    doc["pad"] = ""
    pad = 4096 - len(json.dumps(doc, indent=2))
    assert pad > 0, pad
    doc["pad"] = "x" * pad
    blob = json.dumps(doc, indent=2).encode()
    assert len(blob) == 4096, len(blob)
    values["GOOGLE_CREDENTIALS_JSON"] = blob
    return values


def write_folder(parent: Path, n: int) -> tuple[Path, dict[str, bytes]]:
    values = make_values(n)
    folder = parent / f"k{n}" / "secrets.d"
    folder.parent.mkdir(parents=True)
    SecretsDir(folder, uid=os.getuid(), gid=os.getgid(), grace=0).apply(values)
    return folder, values


# ------------------------------------------------------------- measuring

@dataclass
class Cmd:
    key: str
    argv: list[str]
    env: dict[str, str]
    samples: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def median(self) -> float:
        return statistics.median(self.samples)


def run_once(cmd: Cmd) -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        fa = [(os.POSIX_SPAWN_DUP2, devnull, 0), (os.POSIX_SPAWN_DUP2, devnull, 1),
              (os.POSIX_SPAWN_DUP2, devnull, 2)]
        t0 = time.perf_counter()
        pid = os.posix_spawnp(cmd.argv[0], cmd.argv, cmd.env, file_actions=fa)
        _, status, ru = os.wait4(pid, 0)
        t1 = time.perf_counter()
    finally:
        os.close(devnull)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd.key}: exit status {os.waitstatus_to_exitcode(status)}: {cmd.argv}")
    cmd.samples.append((t1 - t0) * 1000.0)
    cmd.cpu.append((ru.ru_utime + ru.ru_stime) * 1000.0)


def strace_counts(argv: list[str], env: dict[str, str]) -> dict[str, int] | None:
    if not shutil.which("strace"):
        return None
    with tempfile.NamedTemporaryFile("r", suffix=".strace") as out:
        proc = subprocess.run(
            ["strace", "-f", "-c", "-o", out.name, "-e", "trace=process,read", *argv],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        if proc.returncode != 0:
            return None
        counts: dict[str, int] = {}
        for line in out.read().splitlines():
            # % time, seconds, usecs/call, calls, [errors], syscall; count successful calls only
            # (execvp's PATH search makes failing execve attempts).
            m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:(\d+)\s+)?(\w+)\s*$", line)
            if m and m.group(3) != "total":
                counts[m.group(3)] = int(m.group(1)) - int(m.group(2) or 0)
    forks = sum(counts.get(c, 0) for c in PROCESS_CALLS_FORK)
    # The traced program's own execve is counted by strace; report the extra ones.
    execs = sum(counts.get(c, 0) for c in PROCESS_CALLS_EXEC) - 1
    return {"forks": forks, "execs": execs, "reads": counts.get("read", 0)}


def verify(prefix: list[str], loader: Path, folder: Path, values: dict[str, bytes], env: dict[str, str]) -> str:
    """Source the loader once and compare the child's environment byte for byte."""
    script = f'. "{loader}"; exec env -0'
    proc = subprocess.run([*prefix, "-c", script], env={**env, "SECRETSD_DIR": str(folder)},
                          capture_output=True)
    if proc.returncode != 0:
        return f"exit {proc.returncode}"
    got = dict(item.split(b"=", 1) for item in proc.stdout.split(b"\0") if b"=" in item)
    bad = [k for k, v in values.items() if got.get(k.encode()) != v]
    return "ok" if not bad else f"{len(bad)} wrong, e.g. {bad[0]}"


# ------------------------------------------------------------- reporting

def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("PASS" if ok else "FAIL")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", default="50,500", help="comma-separated scenario sizes (default 50,500)")
    ap.add_argument("--reps", type=int, default=41, help="rounds for baseline and load.sh (default 41)")
    ap.add_argument("--naive-reps", type=int, default=15,
                    help="rounds for the slow naive loop, at 500 keys (default 15; 50 keys use --reps)")
    ap.add_argument("--quick", action="store_true", help="--reps 11 --naive-reps 5")
    ap.add_argument("--shells", default="", help="comma-separated labels to keep (default: all installed)")
    ap.add_argument("--core-only", action="store_true", help="only dash, bash and busybox ash")
    ap.add_argument("--loader", type=Path, help="measure this file instead of the installed load.sh")
    ap.add_argument("--no-strace", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    ap.add_argument("--markdown", type=Path, help="also write the result table as Markdown here")
    args = ap.parse_args(argv)
    if args.quick:
        args.reps, args.naive_reps = 11, 5
    sizes = [int(s) for s in args.keys.split(",") if s]

    keep = {s.strip() for s in args.shells.split(",") if s.strip()}
    shells = []
    missing = []
    for label, prefix, target, core in SHELLS:
        if keep and label not in keep and prefix[0] not in keep:
            continue
        if args.core_only and not core:
            continue
        (shells if shutil.which(prefix[0]) else missing).append((label, prefix, target, core))
    s6 = shutil.which("s6-envdir")

    base_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "HOME": "/nonexistent"}
    results: list[dict] = []
    print(f"# load.sh benchmark  host={platform.node()}  cpus={os.cpu_count()}  "
          f"kernel={platform.release()}  reps={args.reps} (naive@500: {args.naive_reps})")
    if missing:
        print("# not installed, skipped: " + ", ".join(m[0] for m in missing))
    if not s6:
        print("# s6-envdir: not installed (Debian: apt-get install s6); reference row skipped")

    with tempfile.TemporaryDirectory(prefix="secretsd-bench-") as tmp:
        for n in sizes:
            folder, values = write_folder(Path(tmp), n)
            installed = folder / "load.sh"
            if args.loader:
                loader = args.loader.resolve()
            else:
                loader = installed
                if installed.read_bytes() != loader_source():
                    print("# warning: installed load.sh differs from the packaged one")
            total = sum(len(v) for v in values.values())
            print(f"\n## {n} keys ({total} bytes of values), loader={loader if args.loader else 'DIR/load.sh'}")
            env = {**base_env, "SECRETSD_DIR": str(folder), "D": str(folder)}

            cmds: dict[str, Cmd] = {}
            rows = []
            for label, prefix, target, _core in shells:
                check = verify(prefix, loader, folder, values, base_env)
                c_base = Cmd(f"{label}/base", [*prefix, "-c", ":"], env)
                c_load = Cmd(f"{label}/load", [*prefix, "-c", f'. "{loader}"'], env)
                c_naive = Cmd(f"{label}/naive", [*prefix, "-c", NAIVE], env)
                for c in (c_base, c_load, c_naive):
                    cmds[c.key] = c
                rows.append((label, prefix, target, check, c_base, c_load, c_naive))
            if s6:
                s6_base = Cmd("s6/base", ["dash", "-c", ":"], env)
                s6_cmd = Cmd("s6/envdir", [s6, "-fnL", str(folder), "dash", "-c", ":"], env)
                cmds.setdefault("dash/base", s6_base)
                cmds[s6_cmd.key] = s6_cmd

            naive_reps = args.reps if n <= 50 else args.naive_reps
            order = list(cmds.values())
            for c in order:  # warm-up: page cache, dentry cache, shell binaries
                run_once(c)
                c.samples.clear(), c.cpu.clear()
            rnd = random.Random(n)
            for i in range(args.reps):
                rnd.shuffle(order)
                for c in order:
                    if c.key.endswith("/naive") and i >= naive_reps:
                        continue
                    run_once(c)

            hdr = (f"{'shell':<20} {'sh -c :':>8} {'load.sh':>8} {'naive':>9} {'load net':>9} "
                   f"{'naive net':>10} {'ratio':>14} {'target':>7} {'forks/execs/reads load':>23} "
                   f"{'forks/execs naive':>18} {'env ok':>6}")
            print(hdr)
            for label, prefix, target, check, c_base, c_load, c_naive in rows:
                b, ld, nv = c_base.median(), c_load.median(), c_naive.median()
                ld_net, nv_net = max(ld - b, 1e-3), nv - b
                ratio, gross = nv_net / ld_net, nv / ld
                sl = None if args.no_strace else strace_counts(c_load.argv, env)
                sn = None if args.no_strace else strace_counts(c_naive.argv, env)
                no_fork = None if sl is None else (sl["forks"] == 0 and sl["execs"] == 0)
                speed_ok = None if target is None else ratio >= target
                ok = None if target is None else (speed_ok and no_fork is not False)
                fl = "n/a" if sl is None else f"{sl['forks']}/{sl['execs']}/{sl['reads']}"
                fn = "n/a" if sn is None else f"{sn['forks']}/{sn['execs']}"
                tgt = f">={target:g}x" if target else "-"
                print(f"{label:<20} {b:>8.2f} {ld:>8.2f} {nv:>9.2f} {ld_net:>9.2f} {nv_net:>10.2f} "
                      f"{ratio:>6.1f}x ({gross:>4.1f}x) {tgt:>7} {fl:>23} {fn:>18} {check:>6}  "
                      f"{verdict(ok) if target else ''}")
                results.append({
                    "keys": n, "shell": label, "baseline_ms": b, "load_ms": ld, "naive_ms": nv,
                    "load_net_ms": ld_net, "naive_net_ms": nv_net, "ratio_net": ratio, "ratio_gross": gross,
                    "target": target, "load_forks": sl and sl["forks"], "load_execs": sl and sl["execs"],
                    "load_reads": sl and sl["reads"], "naive_forks": sn and sn["forks"],
                    "naive_execs": sn and sn["execs"], "env_check": check,
                    "load_cpu_ms": statistics.median(c_load.cpu), "naive_cpu_ms": statistics.median(c_naive.cpu),
                    "no_fork_per_key": no_fork, "speed_ok": speed_ok, "pass": ok,
                    "samples": {"base": len(c_base.samples), "load": len(c_load.samples),
                                "naive": len(c_naive.samples)},
                })
            if s6:
                c = cmds["s6/envdir"]
                b = cmds["dash/base"].median()
                ss = None if args.no_strace else strace_counts(c.argv, env)
                fs = "n/a" if ss is None else f"{ss['forks']}/{ss['execs']}/{ss['reads']}"
                print(f"{'s6-envdir -fnL+dash':<20} {b:>8.2f} {c.median():>8.2f} {'':>9} "
                      f"{c.median() - b:>9.2f} {'':>10} {'(reference)':>14} {'':>7} {fs:>23}")
                results.append({"keys": n, "shell": "s6-envdir -fnL + dash", "baseline_ms": b,
                                "load_ms": c.median(), "load_net_ms": c.median() - b,
                                "load_forks": ss and ss["forks"], "load_execs": ss and ss["execs"],
                                "load_reads": ss and ss["reads"], "reference": True})

    print("\nms = median wall time of one `SH -c ...` process; net = minus the `SH -c :` baseline;")
    print("ratio = naive net / load.sh net (gross ratio in brackets). forks/execs from strace -f -c of one")
    print("run (the shell's own execve not counted); reads = read(2) calls. env ok = every value byte-exact.")
    core = [r for r in results if r.get("target")]
    if core:
        print("\nTargets: " + "; ".join(
            f"{r['shell']}@{r['keys']}: {verdict(r['pass'])} ({r['ratio_net']:.1f}x vs >={r['target']:g}x"
            f"{', forks ' + str(r['load_forks']) if r['load_forks'] is not None else ''})" for r in core))
    if args.json:
        args.json.write_text(json.dumps({"host": platform.node(), "cpus": os.cpu_count(),
                                         "reps": args.reps, "naive_reps": args.naive_reps,
                                         "loader": str(args.loader or "DIR/load.sh"),
                                         "results": results}, indent=2))
    if args.markdown:
        args.markdown.write_text(markdown(results))
    return 0


def markdown(results: list[dict]) -> str:
    lines = ["| keys | shell | `sh -c :` ms | load.sh ms | naive ms | load.sh net ms | naive net ms "
             "| naive/load.sh net (gross) | forks/execs load.sh | forks/execs naive | read(2) load.sh | target |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        if r.get("reference"):
            lines.append(f"| {r['keys']} | {r['shell']} (reference) | {r['baseline_ms']:.2f} | "
                         f"{r['load_ms']:.2f} | | {r['load_net_ms']:.2f} | | | "
                         f"{r['load_forks']}/{r['load_execs']} | | {r['load_reads']} | |")
            continue
        tgt = f"≥{r['target']:g}×: **{verdict(r['pass'])}**" if r.get("target") else "—"
        lines.append(
            f"| {r['keys']} | {r['shell']} | {r['baseline_ms']:.2f} | {r['load_ms']:.2f} | {r['naive_ms']:.1f} | "
            f"{r['load_net_ms']:.2f} | {r['naive_net_ms']:.1f} | {r['ratio_net']:.1f}× ({r['ratio_gross']:.1f}×) | "
            f"{r['load_forks']}/{r['load_execs']} | {r['naive_forks']}/{r['naive_execs']} | "
            f"{r['load_reads']} | {tgt} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
