"""Control-plane benchmark: durable pushes/s and latency, against the writer alone (the floor).

Starts a real ``secretsd serve`` (uvicorn) on loopback with a fresh data
folder, drives it with a small keep-alive HTTP/1.1 client (asyncio, so the
load generator stays light on this 2-core machine), and prints one table:

    scenario                      ops/s    p50 ms   p99 ms
    writer alone, 1 key           ...
    ...

Every push is durable when answered (SQLite commit + secrets.d generation
fsynced). Run: ``.venv/bin/python bench/controlplane_bench.py [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

TOKEN = "bench-" + uuid.uuid4().hex


@dataclass
class Row:
    name: str
    ops: float
    p50: float
    p99: float
    n: int
    errors: int = 0
    cpu_ms: float | None = None  # server CPU (user+sys) per request
    usr_ms: float | None = None  # of which user (Python); sys grows with the disk's contention (fsync, journal)
    client_ms: float | None = None  # the load generator's own CPU per request (it shares the two cores)


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, sys) CPU seconds of a process (Linux /proc), threads included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def cpu_seconds(pid: int) -> float:
    """user+sys CPU of a process (Linux /proc), threads included."""
    return sum(cpu_times(pid))


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] * 1000


# -- the floor: the writer alone --------------------------------------------

def writer_floor(root: Path, keys: int, n: int) -> Row:
    from secretsd.format.writer import SecretsDir

    base = root / "floor"
    base.mkdir(parents=True, exist_ok=True)
    sd = SecretsDir(base / f"k{keys}" / "configs" / "secrets.d", base=base)
    sd.init()
    lat = []
    t0 = time.perf_counter()
    for i in range(n):
        batch = {f"KEY_{j}": f"value-{i}-{j}".encode() for j in range(keys)}
        s = time.perf_counter()
        sd.apply(set=batch)
        lat.append(time.perf_counter() - s)
    dt = time.perf_counter() - t0
    return Row(f"writer alone, {keys} key{'s' if keys > 1 else ''}", n / dt, pct(lat, 50), pct(lat, 99), n)


def writer_batch_floor(root: Path, folders: int, n: int) -> Row:
    """The floor of the 32-workspace rows: 32 folders written together (format.batch, one syncfs per
    barrier where the filesystem allows), as the control plane's group commit does. Latency: one batch."""
    from secretsd.controlplane.hosts import LocalHost

    host = LocalHost(root / "batch-floor")  # as the server has it: a block group per folder, collection in the background
    names = [f"b{i}" for i in range(folders)]
    for ws in names:
        host.replace_all(ws, {"KEY_0": b"0"})
    lat = []
    rounds = max(1, n // folders)
    t0 = time.perf_counter()
    for i in range(rounds):
        s = time.perf_counter()
        res = host.apply_many([(ws, {"KEY_0": f"value-{i}".encode()}, ()) for ws in names])
        lat.append(time.perf_counter() - s)
        assert res == [None] * folders, res
    dt = time.perf_counter() - t0
    return Row(f"writer alone, {folders} folders/batch", rounds * folders / dt, pct(lat, 50), pct(lat, 99),
               rounds * folders)


# -- a tiny keep-alive HTTP/1.1 client ---------------------------------------

class Conn:
    def __init__(self, port: int) -> None:
        self.port = port
        self.r: asyncio.StreamReader
        self.w: asyncio.StreamWriter

    async def open(self) -> Conn:
        self.r, self.w = await asyncio.open_connection("127.0.0.1", self.port)
        return self

    async def request(self, method: str, path: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, bytes]:
        data = json.dumps(body).encode() if body is not None else b""
        head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Authorization: Bearer {TOKEN}",
                f"Content-Length: {len(data)}", "Content-Type: application/json"]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.w.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
        status_line = await self.r.readline()
        status = int(status_line.split()[1])
        length = 0
        while True:
            line = await self.r.readline()
            if line in (b"\r\n", b""):
                break
            k, _, v = line.decode().partition(":")
            if k.lower() == "content-length":
                length = int(v)
        return status, await self.r.readexactly(length)

    def close(self) -> None:
        self.w.close()


async def run_clients(port: int, clients: int, per_client: int, keys: int, *, same_ws: bool,
                      rate: float | None = None) -> tuple[list[float], int, float]:
    conns = [await Conn(port).open() for _ in range(clients)]
    for i, c in enumerate(conns):
        if not same_ws or i == 0:
            await c.request("POST", "/cp/admin/workspaces", {"id": f"b{clients}-{keys}-{i}-{rate or 0}"})
    lat: list[float] = []
    errors = 0

    async def worker(i: int, c: Conn) -> None:
        nonlocal errors
        ws = f"b{clients}-{keys}-{0 if same_ws else i}-{rate or 0}"
        start = time.perf_counter()
        for k in range(per_client):
            if rate:  # open loop: send on schedule, whatever the latency
                due = start + (k * clients + i) / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            env = {f"KEY_{j}": f"v-{i}-{k}-{j}-{uuid.uuid4().hex[:8]}" for j in range(keys)}
            s = time.perf_counter()
            status, _ = await c.request("POST", f"/cp/admin/workspaces/{ws}/env", {"env": env})
            lat.append(time.perf_counter() - s)
            if status != 200:
                errors += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(i, c) for i, c in enumerate(conns)))
    dt = time.perf_counter() - t0
    for c in conns:
        c.close()
    return lat, errors, dt


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(data: Path, db: str | None, extra: list[str] | None = None) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECRETSD_")}
    env["SECRETSD_ADMIN_TOKEN"] = TOKEN
    argv = [sys.executable, "-m", "secretsd.cli", "serve", "--data", str(data), "--port", str(port),
            "--log-level", "warning"]
    if db:
        argv += ["--db", db]
    argv += extra or []
    from secretsd.controlplane.commands import serve

    if "runtime_name" in {p.name for p in serve.params}:
        argv += ["--runtime", "none"]  # pushes only: no sandbox per bench workspace
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, port
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(proc.stderr.read().decode() if proc.stderr else "server died")
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start")


def _uvicorn_stack() -> str:
    """What uvicorn's "auto" picks: httptools+uvloop when installed (uvicorn[standard]), else h11+asyncio."""
    import importlib.util

    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    return f"{http}+{loop}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    ap.add_argument("--db", default=None, help="SQLAlchemy URL (default: SQLite in the temp data folder)")
    ap.add_argument("--data", default=None, help="parent folder for the temp data (default: the repo's var/)")
    ap.add_argument("--serve-arg", action="append", default=[], metavar="ARG",
                    help="extra argument for `secretsd serve` (repeat), e.g. --serve-arg=--threads=4")
    ap.add_argument("--only", default=None, metavar="TEXT",
                    help="run only the API scenarios whose name contains TEXT (e.g. '32 clients, 1 key')")
    ap.add_argument("--n", type=int, default=None, metavar="N",
                    help="requests per scenario unit (default 400, --quick 100; the 32-client rows send 4N)")
    args = ap.parse_args()
    n = args.n or (100 if args.quick else 400)
    parent = Path(args.data or Path(__file__).resolve().parents[1] / "var")
    parent.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="bench-", dir=parent))
    rows: list[Row] = [writer_floor(root, 1, n), writer_floor(root, 10, n), writer_batch_floor(root, 32, n * 4)]
    proc, port = start_server(root / "data", args.db, args.serve_arg)
    try:
        def scenario(name: str, clients: int, keys: int, total: int, *, same_ws: bool = False,
                     rate: float | None = None) -> Row | None:
            if args.only and args.only not in name:
                return None
            u0, s0 = cpu_times(proc.pid)
            c0 = time.process_time()
            lat, errors, dt = asyncio.run(
                run_clients(port, clients, max(1, total // clients), keys, same_ws=same_ws, rate=rate))
            c1 = time.process_time()
            u1, s1 = cpu_times(proc.pid)
            n_ok = max(1, len(lat))
            return Row(name, len(lat) / dt, pct(lat, 50), pct(lat, 99), len(lat), errors,
                       (u1 - u0 + s1 - s0) * 1000 / n_ok, (u1 - u0) * 1000 / n_ok, (c1 - c0) * 1000 / n_ok)

        api = [
            scenario("API, 1 client, 1 key", 1, 1, n),
            scenario("API, 1 client, 10 keys", 1, 10, n),
            # Open loop over 4 connections: a slow answer does not delay the next send.
            scenario("API, paced 100 req/s, 1 key", 4, 1, 300 if args.quick else 1000, rate=100.0),
            scenario("API, 32 clients, 1 key", 32, 1, n * 4),
            scenario("API, 32 clients, 10 keys", 32, 10, n * 4),
            scenario("API, 32 clients, 1 workspace", 32, 1, n * 2, same_ws=True),
        ]
        rows += [r for r in api if r is not None]
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"\n{'scenario':34s} {'ops/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'n':>6s} {'errors':>6s} {'cpu ms/op':>9s}"
          f" {'usr ms/op':>9s} {'client ms':>9s}")
    for r in rows:
        cpu = f"{r.cpu_ms:9.2f}" if r.cpu_ms is not None else f"{'-':>9s}"
        usr = f"{r.usr_ms:9.2f}" if r.usr_ms is not None else f"{'-':>9s}"
        client = f"{r.client_ms:9.2f}" if r.client_ms is not None else f"{'-':>9s}"
        print(f"{r.name:34s} {r.ops:8.0f} {r.p50:8.2f} {r.p99:8.2f} {r.n:6d} {r.errors:6d} {cpu} {usr} {client}")
    paced = next((r for r in rows if "paced" in r.name), None)
    c32 = next((r for r in rows if r.name == "API, 32 clients, 1 key"), None)
    if paced:
        print(f"\ntarget p99 <= 15 ms single-key at 100 req/s: {paced.p99:.2f} ms -> {'PASS' if paced.p99 <= 15 else 'FAIL'}")
    if c32:
        print(f"target >= 500 durable pushes/s with 32 clients: {c32.ops:.0f}/s -> {'PASS' if c32.ops >= 500 else 'FAIL'}")
    print(f"(load average during the run: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; "
          f"uvicorn HTTP/loop: {_uvicorn_stack()})")
    import shutil

    shutil.rmtree(root, ignore_errors=True)
    return 0 if all(r.errors == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
