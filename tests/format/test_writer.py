"""The writer: atomic batches, crash safety, concurrency, symlink safety,
resource faults, permissions and stale writes. Real files, real processes."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from secretsd.format.loader import read_dir
from secretsd.format.rules import FormatError, fingerprint
from secretsd.format.writer import (
    MAX_OLD_GENERATIONS,
    loader_source,
    DEFAULT_GRACE,
    ConflictError,
    NotFound,
    SecretsDir,
    WriteError,
)

from .shells import parse_env0

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs root (chown, mount)")


def batch(i: int) -> dict[str, bytes]:
    """Batch i: ten fixed keys plus one that rotates, all tagged with i."""
    keys = [f"K{n}" for n in range(10)] + [f"EXTRA_{i % 3}"]
    return {k: f"v{i}-{k}\n".encode() for k in keys}


def tag_of(values: dict[str, bytes]) -> int:
    tags = {v.split(b"-", 1)[0] for v in values.values()}
    assert len(tags) == 1, f"mixed set: {sorted(tags)}"
    i = int(tags.pop()[1:])
    assert values == batch(i), f"key set of batch {i} differs: {sorted(values)}"
    return i


def leftovers(d: Path) -> list[str]:
    return [p.name for p in d.iterdir() if p.name.startswith("..tmp-") or p.name == "..data_tmp"]


@pytest.fixture
def sd(tmp_path: Path) -> SecretsDir:
    s = SecretsDir(tmp_path / "configs" / "secrets.d", grace=0.0)
    s.init()
    return s


# ------------------------------------------------------------- basics


def test_set_get_list_delete(sd: SecretsDir) -> None:
    sd.set("A", b"1\n")
    sd.apply({"B": b"2", "C": b""})
    assert sd.read_all() == {"A": b"1\n", "B": b"2", "C": b""}
    assert sd.get("A") == b"1\n"
    entries = {e.name: e for e in sd.list()}
    assert entries["A"].sha8 == fingerprint(b"1\n") and entries["A"].size == 2
    assert all(e.mode == 0o600 for e in entries.values())
    sd.delete("B")
    assert set(sd.read_all()) == {"A", "C"}
    with pytest.raises(NotFound):
        sd.delete("B", "A")
    assert set(sd.read_all()) == {"A", "C"}  # all or nothing
    with pytest.raises(NotFound):
        sd.get("B")
    # The files a user sees keep working for cat.
    assert (sd.path / "A").read_bytes() == b"1\n"


def test_modes_hold_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o000)
    try:
        s = SecretsDir(tmp_path / "secrets.d")
        s.set("A", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(s.path).st_mode) == 0o700
    gen = os.path.realpath(s.path / "..data")
    assert stat.S_IMODE(os.stat(gen).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(s.path / "A").st_mode) == 0o600
    if ROOT:
        assert (os.stat(s.path / "A").st_uid, os.stat(s.path / "A").st_gid) == (1000, 1000)
        assert os.stat(s.path).st_uid == 1000


def test_validation_refuses_before_writing(sd: SecretsDir) -> None:
    sd.set("KEEP", b"old")
    for bad in ({"bad-name": b"x"}, {"PATH": b"x"}, {"LD_PRELOAD": b"x"}, {"SECRETSD_X": b"x"},
                {"NUL": b"a\0b"}, {"BIG": b"x" * 131072}, {"A" * 256: b"x"}):
        with pytest.raises(FormatError) as exc:
            sd.apply({"GOOD": b"y", **bad})
        assert next(iter(bad)) in str(exc.value) or "'" in str(exc.value)
    assert sd.read_all() == {"KEEP": b"old"}


def test_total_budget(tmp_path: Path) -> None:
    from secretsd.format.rules import Rules

    s = SecretsDir(tmp_path / "secrets.d", rules=Rules(total_budget=1000))
    s.set("A", b"x" * 500)
    with pytest.raises(FormatError) as exc:
        s.set("B", b"y" * 500)
    assert exc.value.too_large
    assert s.read_all() == {"A": b"x" * 500}


def test_stale_write_refused(sd: SecretsDir) -> None:
    sd.set("T", b"v1", expected=None)
    fp1 = fingerprint(b"v1")
    sd.set("T", b"v2", expected=fp1)
    with pytest.raises(ConflictError) as exc:
        sd.set("T", b"v3", expected=fp1)  # someone else wrote v2 meanwhile
    assert "T" in str(exc.value) and "v2" not in str(exc.value)
    assert sd.get("T") == b"v2"
    with pytest.raises(ConflictError):
        sd.set("T", b"v4", expected=None)  # expected absent, but present
    with pytest.raises(ConflictError):
        sd.apply({"A": b"1", "T": b"x"}, expected={"T": "00000000"})
    assert sd.read_all() == {"T": b"v2"}


def test_replace_all_removes_other_keys_and_heals(sd: SecretsDir) -> None:
    sd.apply({"A": b"1", "B": b"2"})
    (sd.path / "HAND").write_bytes(b"h")
    sd.replace_all({"B": b"3", "C": b"4"})
    assert sd.read_all() == {"B": b"3", "C": b"4"}
    assert not (sd.path / "A").exists() and not (sd.path / "HAND").exists()
    assert not leftovers(sd.path)


def test_hand_edits_are_kept(sd: SecretsDir) -> None:
    sd.apply({"A": b"1", "B": b"2"})
    (sd.path / "A").write_bytes(b"edited through the link")
    tmp = sd.path / "B.new"
    tmp.write_bytes(b"replaced by rename")
    os.rename(tmp, sd.path / "B")  # like sed -i
    (sd.path / "NEW").write_bytes(b"made by hand")
    assert read_dir(sd.path).values == {"A": b"edited through the link", "B": b"replaced by rename", "NEW": b"made by hand"}
    sd.set("C", b"3")  # adopts the hand edits
    assert sd.read_all() == {"A": b"edited through the link", "B": b"replaced by rename", "NEW": b"made by hand", "C": b"3"}
    assert all(os.path.islink(sd.path / k) for k in "ABC")


def test_loader_installed_and_upgraded(sd: SecretsDir) -> None:
    loader = sd.path / "load.sh"
    assert b"secretsd-load-version" in loader.read_bytes()
    loader.write_bytes(b"# secretsd-load-version: 0\n")
    sd.set("X", b"1")
    assert loader.read_bytes() == loader_source()
    assert stat.S_IMODE(loader.stat().st_mode) == 0o644


def test_tampered_loader_is_replaced_at_the_next_write(sd: SecretsDir) -> None:
    # The workspace user owns the folder; the entrypoint's root pass sources
    # load.sh: a planted loader (even one claiming a newer version) must go.
    loader = sd.path / "load.sh"
    loader.write_bytes(b"# secretsd-load-version: 999\nid > /tmp/pwned\n")
    sd.replace_all({"X": b"1"})
    assert loader.read_bytes() == loader_source()


@pytest.mark.parametrize("how", ["same-size-in-place", "chmod", "renamed-over"])
def test_a_loader_remembered_as_good_is_still_checked(sd: SecretsDir, how: str) -> None:
    """Writes skip re-reading a load.sh whose stat signature they verified;
    any change to it (same size, in place; mode; a new inode) is still caught."""
    loader = sd.path / "load.sh"
    time.sleep(1.1)  # signatures are remembered once ctime is a second old
    sd.set("X", b"1")  # verifies and remembers the loader
    sd.set("X", b"2")  # skips the read
    evil = b"#" + loader_source()[1:].replace(b"secretsd", b"pwnedxyz")
    assert len(evil) == len(loader_source())
    if how == "same-size-in-place":
        with open(loader, "r+b") as fh:
            fh.write(evil)
    elif how == "chmod":
        loader.chmod(0o777)
    else:
        tmp = sd.path / "x"
        tmp.write_bytes(evil)
        os.chmod(tmp, 0o644)
        os.rename(tmp, loader)
    sd.set("X", b"3")
    assert loader.read_bytes() == loader_source()
    assert stat.S_IMODE(loader.stat().st_mode) == 0o644


# ------------------------------------------------------------- crash safety


def kill_9_after(delay: float, work: Callable[[], None]) -> None:
    """Run ``work`` in a forked child and SIGKILL it after ``delay`` seconds."""
    pid = os.fork()
    if pid == 0:  # child: works until killed
        try:
            work()
        finally:
            os._exit(1)
    time.sleep(delay)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def _writer_loop(path: Path, start: int, grace: float = 0.0) -> None:
    s = SecretsDir(path, grace=grace)
    i = start
    while True:
        i += 1
        s.replace_all(batch(i))


@pytest.mark.parametrize("iterations", [int(os.environ.get("SECRETSD_CRASH_ITERATIONS", "200"))])
def test_kill_9_at_any_instant_leaves_old_or_new(tmp_path: Path, iterations: int) -> None:
    path = tmp_path / "secrets.d"
    s = SecretsDir(path, grace=0.0)
    s.replace_all(batch(0))
    rng = random.Random(1234)
    # Kill within a few batch-times, so kills land at every step of a batch
    # however busy the machine is.
    t0 = time.monotonic()
    for i in range(1, 4):
        s.replace_all(batch(i))
    # Twice the time of three batches: the forked writer also pays its start, and on a busy
    # machine it is descheduled; kills still land at every step of a batch.
    window = 2 * (time.monotonic() - t0)
    last = 3
    seen_progress = 0
    for it in range(iterations):
        kill_9_after(rng.uniform(0, window), lambda: _writer_loop(path, last))
        before_recovery = read_dir(path).values  # what a loader sees right now
        now = tag_of(before_recovery)
        assert now >= last
        s.repair()
        assert tag_of(s.read_all()) == now  # recovery never changes the set
        assert not leftovers(path), leftovers(path)
        gens = [p for p in path.iterdir() if p.name.startswith("..gen-")]
        assert len(gens) <= 40
        seen_progress += now > last
        last = now
    # Meaningful only if many kills landed after some batches completed
    # (and, by the uniform window, many landed mid-batch).
    assert seen_progress > iterations // 10, "the writer was mostly killed before it wrote anything"


# ------------------------------------------------------------- concurrency


def test_reader_never_sees_a_mix(tmp_path: Path) -> None:
    path = tmp_path / "secrets.d"
    s = SecretsDir(path)
    s.replace_all(batch(0))
    pid = os.fork()
    if pid == 0:
        try:
            _writer_loop(path, 0, grace=DEFAULT_GRACE)
        finally:
            os._exit(1)
    try:
        shells = [sh for sh in (["dash"], ["bash"], ["busybox", "ash"]) if subprocess.run(["which", sh[0]], capture_output=True).returncode == 0]
        tags = set()
        for n in range(150):
            sh = shells[n % len(shells)]
            proc = subprocess.run(
                [*sh, "-c", f". '{path}/load.sh'; exec /usr/bin/env -0"],
                capture_output=True, env={"PATH": "/usr/bin:/bin", "SECRETSD_DIR": str(path)}, timeout=30,
            )
            assert proc.returncode == 0
            env = parse_env0(proc.stdout)
            values = {k.decode(): v for k, v in env.items() if k.startswith((b"K", b"EXTRA_"))}
            tags.add(tag_of(values))
            tags.add(tag_of(read_dir(path).values))
        assert len(tags) > 10, "the writer made too little progress for the test to mean anything"
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "secrets.d"
    SecretsDir(path).init()
    n_proc, n_threads, n_keys = 3, 4, 15

    def thread_work(p: int, t: int) -> None:
        s = SecretsDir(path, grace=0.0)
        for k in range(n_keys):
            s.set(f"P{p}_T{t}_K{k}", f"{p}.{t}.{k}".encode())

    pids = []
    for p in range(n_proc):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                threads = [threading.Thread(target=thread_work, args=(p, t)) for t in range(n_threads)]
                for th in threads:
                    th.start()
                for th in threads:
                    th.join()
            except BaseException:
                code = 1
            os._exit(code)
        pids.append(pid)
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    values = SecretsDir(path).read_all()
    assert len(values) == n_proc * n_threads * n_keys
    for name, v in values.items():
        p, t, k = name[1:].replace("_T", " ").replace("_K", " ").split()
        assert v == f"{p}.{t}.{k}".encode()
    assert not leftovers(path)


# ------------------------------------------------------------- symlink attacks


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    o = tmp_path / "outside"
    o.mkdir()
    (o / "victim").write_bytes(b"precious")
    os.chmod(o / "victim", 0o644)
    return o


def _untouched(o: Path) -> None:
    assert sorted(p.name for p in o.iterdir()) == ["victim"]
    assert (o / "victim").read_bytes() == b"precious"
    st = (o / "victim").stat()
    assert stat.S_IMODE(st.st_mode) == 0o644 and st.st_uid == os.geteuid()


LINK_TMP = "..tmp-link-" + hashlib.sha256(b"KEY").hexdigest()[:16]  # the writer's temp name for KEY's link


@pytest.mark.parametrize("planted", ["KEY", "..data", "..data_tmp", LINK_TMP, "..tmp-load.sh", "load.sh", "..gen-00000099"])
def test_planted_links_are_never_followed(sd: SecretsDir, outside: Path, planted: str) -> None:
    sd.set("OTHER", b"o")
    target = outside / "victim" if planted not in ("..data", "..gen-00000099") else outside
    p = sd.path / planted
    if p.is_symlink() or p.exists():
        os.unlink(p)
    os.symlink(target, p)
    sd.set("KEY", b"new")
    sd.set("KEY2", b"new2")
    sd.delete("KEY2")
    sd.repair()
    _untouched(outside)
    assert sd.read_all()["KEY"] == b"new"


def test_folder_replaced_by_link_is_refused(tmp_path: Path, outside: Path) -> None:
    os.symlink(outside, tmp_path / "secrets.d")
    s = SecretsDir(tmp_path / "secrets.d")
    with pytest.raises(WriteError) as exc:
        s.set("A", b"x")
    assert "not a real folder" in str(exc.value)
    _untouched(outside)


def test_parent_below_base_replaced_by_link_is_refused(tmp_path: Path, outside: Path) -> None:
    (tmp_path / "workspaces").mkdir()
    os.symlink(outside, tmp_path / "workspaces" / "w1")
    s = SecretsDir(tmp_path / "workspaces" / "w1" / "configs" / "secrets.d", base=tmp_path / "workspaces")
    with pytest.raises(WriteError):
        s.set("A", b"x")
    _untouched(outside)


def test_folder_swapped_mid_operation(sd: SecretsDir, outside: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sd.set("A", b"1")
    real_commit = SecretsDir._commit
    moved = sd.path.parent / "moved-away"

    def swap_then_commit(self, fd, *args, **kwargs):
        os.rename(sd.path, moved)
        os.symlink(outside, sd.path)
        return real_commit(self, fd, *args, **kwargs)

    monkeypatch.setattr(SecretsDir, "_commit", swap_then_commit)
    sd.set("B", b"2")
    _untouched(outside)
    assert (moved / "B").read_bytes() == b"2"  # the write went to the folder we opened


def test_hard_link_and_fifo_in_generation(sd: SecretsDir, outside: Path) -> None:
    sd.apply({"A": b"1", "B": b"2"})
    gen = Path(os.path.realpath(sd.path / "..data"))
    os.unlink(gen / "A")
    os.link(outside / "victim", gen / "A")
    os.unlink(gen / "B")
    os.mkfifo(gen / "B")
    sd.repair()  # must not hang on the fifo, must not chmod the hard link
    _untouched(outside)
    assert stat.S_IMODE(os.stat(outside / "victim").st_mode) == 0o644


# ------------------------------------------------------------- permissions


@needs_root
def test_hostile_chmod_chown_is_corrected(sd: SecretsDir) -> None:
    sd.apply({"A": b"1"})
    subprocess.run(["chmod", "-R", "777", str(sd.path)], check=True)
    subprocess.run(["chown", "-R", "-h", "0:0", str(sd.path)], check=True)
    sd.set("B", b"2")
    for p in (sd.path, Path(os.path.realpath(sd.path / "..data"))):
        st = os.stat(p)
        assert stat.S_IMODE(st.st_mode) == 0o700 and (st.st_uid, st.st_gid) == (1000, 1000)
    for k in "AB":
        st = os.stat(sd.path / k)
        assert stat.S_IMODE(st.st_mode) == 0o600 and (st.st_uid, st.st_gid) == (1000, 1000)
    subprocess.run(["chmod", "-R", "777", str(sd.path)], check=True)
    sd.repair()
    assert stat.S_IMODE(os.stat(sd.path / "A").st_mode) == 0o600


# ------------------------------------------------------------- resource faults


def _mount(args: list[str]) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if not ROOT or not _mount(["-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)]):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)])


def test_full_disk_keeps_old_value(small_tmpfs: Path) -> None:
    s = SecretsDir(small_tmpfs / "secrets.d")
    s.apply({"A": b"old", "B": b"old"})
    (small_tmpfs / "filler").write_bytes(b"\0" * 200 * 1024)
    with pytest.raises(WriteError) as exc:
        s.apply({"A": b"new", "BIG": b"x" * 100_000})
    assert exc.value.errno == errno.ENOSPC
    assert "x" * 20 not in str(exc.value)
    assert s.read_all() == {"A": b"old", "B": b"old"}
    assert not leftovers(s.path)
    assert len([p for p in s.path.iterdir() if p.name.startswith("..gen-")]) == 1
    os.unlink(small_tmpfs / "filler")
    s.apply({"A": b"new", "BIG": b"x" * 100_000})  # recovers when space returns
    assert s.get("A") == b"new"


def test_read_only_filesystem(small_tmpfs: Path) -> None:
    s = SecretsDir(small_tmpfs / "secrets.d")
    s.set("A", b"old")
    assert _mount(["-o", "remount,ro", str(small_tmpfs)])
    with pytest.raises(WriteError) as exc:
        s.set("A", b"new")
    assert exc.value.errno == errno.EROFS
    assert s.read_all() == {"A": b"old"}


@needs_root
def test_ebusy_bind_mount_over_target(sd: SecretsDir, tmp_path: Path) -> None:
    (sd.path / "HAND").write_bytes(b"hand")
    src = tmp_path / "src"
    src.write_bytes(b"mounted")
    if not _mount(["--bind", str(src), str(sd.path / "HAND")]):
        pytest.skip("cannot bind-mount here")
    try:
        with pytest.raises(WriteError) as exc:
            sd.set("A", b"1")
        assert "HAND" in str(exc.value) and exc.value.errno == errno.EBUSY
        assert read_dir(sd.path).values == {"HAND": b"mounted"}
        assert not leftovers(sd.path)
    finally:
        subprocess.run(["umount", str(sd.path / "HAND")])


def test_permission_denied_is_clear(tmp_path: Path) -> None:
    if ROOT:
        pytest.skip("root ignores permission bits; covered by the EROFS and ENOSPC cases")
    (tmp_path / "ro").mkdir(mode=0o500)
    with pytest.raises(WriteError):
        SecretsDir(tmp_path / "ro" / "secrets.d").set("A", b"1")


def test_deleted_value_leaves_no_copy_behind(sd: SecretsDir) -> None:
    canary = b"revoked-canary-31f9"
    sd.apply({"LEAKED": canary, "KEEP": b"k"})
    sd.set("KEEP", b"k2")  # LEAKED is now also in an older generation
    sd.delete("LEAKED")
    hits = [p for p in sd.path.rglob("*") if p.is_file() and not p.is_symlink() and canary in p.read_bytes()]
    assert hits == []
    assert sd.read_all() == {"KEEP": b"k2"}


def test_collect_and_repair_tidy_up(tmp_path: Path) -> None:
    s = SecretsDir(tmp_path / "secrets.d", grace=0.0)
    s.set("A", b"1")
    s.set("A", b"2")
    (s.path / "HAND").write_bytes(b"h")
    os.chmod(s.path / "HAND", 0o644)
    done = s.repair()
    assert any("adopted" in d for d in done)
    assert os.path.islink(s.path / "HAND") and stat.S_IMODE(os.stat(s.path / "HAND").st_mode) == 0o600
    time.sleep(0.01)
    s.collect()
    assert len([p for p in s.path.iterdir() if p.name.startswith("..gen-")]) == 1


def test_collection_can_be_left_to_the_caller(tmp_path: Path) -> None:
    """collect_on_write=False: writes remove only generations over the cap;
    collect() removes the rest once the grace is over (the control plane
    does this off its request path)."""
    sd = SecretsDir(tmp_path / "secrets.d", grace=0.0, collect_on_write=False)

    def gens() -> list[str]:
        return sorted(p.name for p in sd.path.iterdir() if p.name.startswith("..gen-"))

    for i in range(5):
        sd.set("K", str(i).encode())
    assert len(gens()) == 5
    for i in range(MAX_OLD_GENERATIONS + 5):
        sd.set("K", f"x{i}".encode())
    assert len(gens()) == MAX_OLD_GENERATIONS + 1
    time.sleep(0.01)
    assert sd.collect()
    assert gens() == [os.readlink(sd.path / "..data")]
    assert sd.get("K") == f"x{MAX_OLD_GENERATIONS + 4}".encode()


def test_a_hand_made_file_the_rules_refuse_is_never_adopted(sd: SecretsDir) -> None:
    sd.set("A", b"a")
    (sd.path / "BAD").write_bytes(b"x\0y")  # no loader can export it the same way
    with pytest.raises(FormatError) as exc:
        sd.set("B", b"b")
    assert exc.value.key == "BAD" and "NUL" in exc.value.reason
    assert (sd.path / "BAD").read_bytes() == b"x\0y" and not os.path.islink(sd.path / "BAD")
    assert any("left hand-made file BAD" in line for line in sd.repair())
    assert b"x\0y" not in (sd.path / "..data" / ".load-cache.sh").read_bytes()
    sd.replace_all({"A": b"a2"})  # materialisation: the folder becomes exactly this
    assert not os.path.lexists(sd.path / "BAD") and sd.read_all() == {"A": b"a2"}


def test_a_hijacked_key_link_is_replaced_by_its_own(sd: SecretsDir, tmp_path: Path) -> None:
    """KEY -> /outside planted over the key's link: the next write points KEY back at ..data/KEY."""
    outside = tmp_path / "victim"
    outside.write_bytes(b"precious")
    sd.set("KEY", b"v1")
    os.unlink(sd.path / "KEY")
    os.symlink(outside, sd.path / "KEY")
    sd.set("KEY", b"v2")
    assert os.readlink(sd.path / "KEY") == "..data/KEY"
    assert (sd.path / "KEY").read_bytes() == b"v2" and outside.read_bytes() == b"precious"


def test_doctor_and_materialisation_see_hand_files_the_rules_refuse(sd: SecretsDir) -> None:
    from secretsd.format.doctor import diagnose

    sd.set("A", b"a")
    (sd.path / "HUGE").write_bytes(b"x" * 200_000)  # over one variable's limit: no loader exports it
    (sd.path / "NUL").write_bytes(b"x\0y")
    codes = {(f.code, f.key, f.severity) for f in diagnose(sd)}
    assert ("TOO_LARGE", "HUGE", "error") in codes and ("HAND_FILE_REFUSED", "NUL", "error") in codes
    sd.replace_all({"A": b"a2"})  # materialisation: exactly the store's set
    assert sorted(p.name for p in sd.path.iterdir() if not p.name.startswith(".")) == ["A", "load.sh"]


def test_a_value_near_the_limit_keeps_a_valid_cache(sd: SecretsDir) -> None:
    """The cache holds the whole folder: it may be larger than one variable."""
    sd.replace_all({"BIG": b"'" * 100_000, "B": b"b"})  # each ' is 4 bytes quoted
    assert sd.cache_problem() is None


def test_the_python_loader_result_never_shows_values(tmp_path: Path) -> None:
    d = tmp_path / "s"
    d.mkdir()
    (d / "API_KEY").write_bytes(b"canary-repr-5d1")
    result = read_dir(d)
    assert result.values == {"API_KEY": b"canary-repr-5d1"} and "canary-repr-5d1" not in repr(result)
