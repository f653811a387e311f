"""Superseded generations leave the folder by rename into a trash, emptied off the lock (SecretsDir(trash=), empty_trash)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from secretsd.format import writer
from secretsd.format.writer import MAX_OLD_GENERATIONS, SecretsDir, empty_trash


def _gens(sd: SecretsDir) -> list[str]:
    return sorted(p.name for p in sd.path.iterdir() if p.name.startswith("..gen-"))


def _folder(tmp_path: Path, trash: Path | None, **kw: object) -> SecretsDir:
    if trash is not None:
        trash.mkdir(mode=0o700, exist_ok=True)
    return SecretsDir(tmp_path / "ws" / "secrets.d", trash=trash, collect_on_write=False, **kw)  # type: ignore[arg-type]


def test_generations_over_the_cap_are_moved_to_the_trash_not_removed_in_place(tmp_path: Path) -> None:
    trash = tmp_path / "trash"
    sd = _folder(tmp_path, trash)
    n = MAX_OLD_GENERATIONS + 6
    for i in range(n):
        sd.set("K", f"v{i}".encode())
    assert len(_gens(sd)) == MAX_OLD_GENERATIONS + 1
    moved = sorted(os.listdir(trash))
    assert len(moved) == n - (MAX_OLD_GENERATIONS + 1) == sd.trashed
    # The oldest went, whole: each still holds its value and its loader cache.
    assert [m.split(".")[2] for m in moved] == [f"gen-{i:08d}" for i in range(1, len(moved) + 1)]
    assert (trash / moved[0] / "K").read_bytes() == b"v0"
    assert sd.read_all() == {"K": f"v{n - 1}".encode()}
    assert empty_trash(trash) == {}
    assert os.listdir(trash) == []
    assert sd.read_all() == {"K": f"v{n - 1}".encode()}


def test_collect_moves_what_passed_the_grace(tmp_path: Path) -> None:
    trash = tmp_path / "trash"
    sd = _folder(tmp_path, trash, grace=0.0)
    for i in range(4):
        sd.set("K", str(i).encode())
    time.sleep(0.01)
    assert len(sd.collect()) == 3
    assert _gens(sd) == [os.readlink(sd.path / "..data")] and len(os.listdir(trash)) == 3


def test_without_a_usable_trash_generations_are_removed_in_place(tmp_path: Path) -> None:
    for trash in (tmp_path / "absent", tmp_path / "a-file"):
        if trash.name == "a-file":
            trash.write_bytes(b"")
        sd = SecretsDir(tmp_path / f"ws-{trash.name}" / "secrets.d", trash=trash, collect_on_write=False)
        for i in range(MAX_OLD_GENERATIONS + 3):
            sd.set("K", str(i).encode())
        assert len(_gens(sd)) == MAX_OLD_GENERATIONS + 1 and sd.trashed == 0 and sd.warnings == []


@pytest.mark.skipif(os.stat("/dev/shm").st_dev == os.stat(Path(__file__)).st_dev, reason="needs /dev/shm on another filesystem")
def test_a_trash_on_another_filesystem_falls_back_to_removal_in_place(tmp_path: Path) -> None:
    trash = Path(os.environ.get("TMPDIR_SHM", "/dev/shm")) / f"secretsd-test-trash-{os.getpid()}"
    trash.mkdir(mode=0o700)
    try:
        sd = SecretsDir(tmp_path / "ws" / "secrets.d", trash=trash, collect_on_write=False)
        if os.stat(trash).st_dev == os.stat(tmp_path).st_dev:
            pytest.skip("tmp_path is on /dev/shm's filesystem")
        for i in range(MAX_OLD_GENERATIONS + 3):
            sd.set("K", str(i).encode())  # rename gives EXDEV
        assert len(_gens(sd)) == MAX_OLD_GENERATIONS + 1 and sd.trashed == 0 and os.listdir(trash) == []
    finally:
        trash.rmdir()


def test_emptying_never_follows_a_link_planted_in_a_generation(tmp_path: Path) -> None:
    """The workspace owns its generations: a link inside one, to a folder or a file outside, is removed, not followed."""
    trash = tmp_path / "trash"
    sd = _folder(tmp_path, trash)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_bytes(b"keep me")
    sd.set("K", b"0")
    first = os.readlink(sd.path / "..data")
    (sd.path / first / "to-dir").symlink_to(outside)
    (sd.path / first / "to-file").symlink_to(outside / "precious")
    for i in range(MAX_OLD_GENERATIONS + 1):
        sd.set("K", str(i + 1).encode())
    assert first not in _gens(sd) and len(os.listdir(trash)) == 1
    assert empty_trash(trash) == {}
    assert os.listdir(trash) == [] and (outside / "precious").read_bytes() == b"keep me"


def test_without_rm_the_trash_is_emptied_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trash = tmp_path / "trash"
    sd = _folder(tmp_path, trash)
    outside = tmp_path / "outside"
    outside.mkdir()
    sd.set("K", b"0")
    (sd.path / os.readlink(sd.path / "..data") / "to-dir").symlink_to(outside)
    for i in range(MAX_OLD_GENERATIONS + 4):
        sd.set("K", str(i + 1).encode())
    (trash / "a-stray-file").write_bytes(b"x")

    def no_rm(*_a: object, **_k: object) -> None:
        raise FileNotFoundError(2, "No such file or directory", "rm")

    monkeypatch.setattr(writer.subprocess, "run", no_rm)
    assert empty_trash(trash) == {}
    assert os.listdir(trash) == [] and outside.is_dir()


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mount, chattr)")


@needs_root
@pytest.mark.parametrize("kind", ["bind mount from the same filesystem", "tmpfs"])
def test_an_entry_holding_a_mount_point_is_left_alone_and_named(tmp_path: Path, kind: str) -> None:
    """rm's --one-file-system would not stop at a bind mount of the same filesystem: the mount table does."""
    trash = tmp_path / "trash"
    trash.mkdir(mode=0o700)
    gen = trash / "..gen-00000001.0123456789abcdef"
    (gen / "mnt").mkdir(parents=True)
    (gen / "K").write_bytes(b"cAnArY-trash-value")
    (trash / "..gen-00000002.0123456789abcdef").mkdir()
    source = tmp_path / "precious"
    source.mkdir()
    (source / "keep").write_bytes(b"keep me")
    argv = ["mount", "--bind", str(source), str(gen / "mnt")] if kind.startswith("bind") else \
        ["mount", "-t", "tmpfs", "none", str(gen / "mnt")]
    if subprocess.run(argv, capture_output=True).returncode != 0:
        pytest.skip(f"cannot mount here ({kind})")
    try:
        stayed = empty_trash(trash)
        assert stayed == {gen.name: "a mount point inside it: unmount it"}
        assert "cAnArY" not in repr(stayed)
        assert sorted(os.listdir(trash)) == [gen.name]  # the other entry went
        if kind.startswith("bind"):
            assert (source / "keep").read_bytes() == b"keep me"
    finally:
        subprocess.run(["umount", str(gen / "mnt")], check=True)
    assert empty_trash(trash) == {} and os.listdir(trash) == []
    assert (source / "keep").read_bytes() == b"keep me"


@needs_root
def test_what_rm_cannot_remove_is_named_with_its_reason(tmp_path: Path) -> None:
    trash = tmp_path / "trash"
    trash.mkdir(mode=0o700)
    gen = trash / "..gen-00000001.0123456789abcdef"
    gen.mkdir()
    (gen / "K").write_bytes(b"cAnArY-immutable")
    if subprocess.run(["chattr", "+i", str(gen / "K")], capture_output=True).returncode != 0:
        pytest.skip("chattr +i not supported here")
    try:
        stayed = empty_trash(trash)
        assert stayed == {gen.name: os.strerror(1)} and "cAnArY" not in repr(stayed)  # EPERM
    finally:
        subprocess.run(["chattr", "-i", str(gen / "K")], check=True)
    assert empty_trash(trash) == {}


def test_a_non_gnu_rm_empties_the_trash_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """busybox rm (Alpine-like hosts) takes no GNU long options: none are used."""
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox not installed")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "rm").symlink_to(busybox)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    assert shutil.which("rm") == str(bin_dir / "rm")
    trash = tmp_path / "trash"
    sd = _folder(tmp_path, trash)
    for i in range(MAX_OLD_GENERATIONS + 5):
        sd.set("K", str(i).encode())
    assert len(os.listdir(trash)) == 4
    monkeypatch.setattr(writer, "_remove_here", lambda *_a: pytest.fail("rm should have removed everything"))
    assert empty_trash(trash) == {} and os.listdir(trash) == []


def test_the_trash_is_never_followed_through_a_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "important.txt").write_bytes(b"keep")
    link = tmp_path / "trash"
    link.symlink_to(victim)
    with pytest.raises(OSError):
        empty_trash(link)
    sd = SecretsDir(tmp_path / "ws" / "secrets.d", trash=link, collect_on_write=False)
    for i in range(MAX_OLD_GENERATIONS + 3):
        sd.set("K", str(i).encode())
    assert sd.trashed == 0 and len(_gens(sd)) == MAX_OLD_GENERATIONS + 1  # removed in place
    assert sorted(os.listdir(victim)) == ["important.txt", "sub"]


def test_a_generation_number_given_twice_is_never_a_crash(tmp_path: Path) -> None:
    """The workspace user makes "..gen-1" beside "..gen-00000001", or "..gen-٣" (not ASCII digits)."""
    sd = SecretsDir(tmp_path / "ws" / "secrets.d", grace=0.0)
    sd.set("K", b"0")
    sd.set("K", b"1")
    (sd.path / "..gen-1").mkdir()  # same number as an old one
    (sd.path / "..gen-2").mkdir()  # same number as the current one: never ours
    (sd.path / "..gen-\u0663").mkdir()  # Arabic-Indic three: not a generation at all
    time.sleep(0.01)
    for i in range(3):
        sd.set("K", f"v{i}".encode())  # recovers, collects: no TypeError from comparing two entries
    assert sd.read_all() == {"K": b"v2"}
    assert sorted(p.name for p in sd.path.iterdir() if p.name.startswith("..gen-")) == [
        "..gen-00000005", "..gen-\u0663"]


def test_an_absent_trash_is_empty() -> None:
    assert empty_trash("/nonexistent/secretsd-trash") == {}
