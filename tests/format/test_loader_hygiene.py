"""load.sh must never hurt its caller: options, IFS, cwd, exit status, leaks."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from .shells import available_shells, install_loader, loaded, parse_env0

CANARY = b"canary-7f3a9c\nsecond line $x"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "secrets.d"
    install_loader(d)
    (d / "CANARY").write_bytes(CANARY)
    (d / "OTHER").write_bytes(b"o")
    return d


def run_script(shell: list[str], folder: Path, body: str, tmp_path: Path, user: str | None = None):
    script = tmp_path / "script.sh"
    script.write_text(body)
    script.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "SECRETSD_DIR": str(folder), "LANG": "C.UTF-8", "HOME": "/tmp"}
    argv = [*shell, str(script)]
    if user:
        argv = ["setpriv", "--reuid", user, "--regid", user, "--clear-groups", *argv]
    # cwd /tmp: the checkout may sit in a folder the unprivileged user cannot enter (posh then crashes)
    return subprocess.run(argv, capture_output=True, env=env, timeout=30, cwd="/tmp")


SHELLS = available_shells()


@pytest.mark.parametrize("shell", SHELLS)
def test_xtrace_never_prints_a_value_and_is_restored(shell, folder, tmp_path):
    proc = run_script(shell, folder, f"""
set -x
. '{folder}/load.sh'
case $- in *x*) echo XTRACE_ON;; esac
""", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert b"canary-7f3a9c" not in proc.stderr + proc.stdout
    assert b"XTRACE_ON" in proc.stdout


@pytest.mark.parametrize("shell", SHELLS)
def test_options_ifs_cwd_and_names_untouched(shell, folder, tmp_path):
    proc = run_script(shell, folder, f"""
set -eu
set -f
set -a 2>/dev/null || :
cd /tmp
before=$-
IFS=':'
. '{folder}/load.sh'
. '{folder}/load.sh'
[ "$-" = "$before" ] || echo "OPTIONS-CHANGED $before $-"
[ "$IFS" = ':' ] || echo IFS-CHANGED
[ "$PWD" = /tmp ] || echo CWD-CHANGED
for v in __secretsd_v __secretsd_dir __secretsd_x __secretsd_ifs __secretsd_skip __secretsd_gen __secretsd_nf __secretsd_a; do
  eval "[ -z \\"\\${{$v+x}}\\" ]" || echo "LEFTOVER $v"
done
for f in __secretsd_read __secretsd_export __secretsd_generation __secretsd_pass; do
  if command -v "$f" >/dev/null 2>&1; then echo "LEFTOVER-FN $f"; fi
done
[ -n "${{LC_ALL+x}}" ] && echo LC_ALL-SET
echo "REACHED $OTHER"
""", tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.decode()
    assert "REACHED o" in out
    for bad in ("OPTIONS-CHANGED", "IFS-CHANGED", "CWD-CHANGED", "LEFTOVER", "LC_ALL-SET"):
        assert bad not in out, out


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("ifs", ["unset IFS", "IFS="])
def test_ifs_unset_or_empty_restored(shell, folder, tmp_path, ifs):
    check = '[ -z "${IFS+x}" ] && echo OK' if ifs == "unset IFS" else '[ -n "${IFS+x}" ] && [ -z "$IFS" ] && echo OK'
    proc = run_script(shell, folder, f"{ifs}\n. '{folder}/load.sh'\n{check}\n", tmp_path)
    assert proc.stdout.strip() == b"OK", proc.stderr


@pytest.mark.skipif(not shutil.which("bash"), reason="bash not installed")
def test_bash_strict_mode(folder, tmp_path):
    proc = run_script(["bash"], folder, f"""
set -euo pipefail
. '{folder}/load.sh'
[[ -o pipefail ]] && [[ -o nounset ]] && [[ -o errexit ]] && echo "STRICT $OTHER"
""", tmp_path)
    assert proc.stdout.strip() == b"STRICT o", proc.stderr


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("state", ["missing", "empty", "unreadable-folder", "unreadable-file", "folder-is-file"])
def test_never_fails_its_caller(shell, tmp_path, state):
    # pytest's tmp root is 0700; an unprivileged shell needs a path it can walk.
    tmp_path = Path(tempfile.mkdtemp(prefix="secretsd-test-"))
    os.chmod(tmp_path, 0o755)
    d = tmp_path / "secrets.d"
    loader = tmp_path / "loader" / "load.sh"
    install_loader(loader.parent)
    user = None
    if state != "missing":
        d.mkdir()
    if state == "folder-is-file":
        d.rmdir()
        d.write_text("x")
    if state.startswith("unreadable"):
        if os.geteuid() != 0 or not shutil.which("setpriv"):
            pytest.skip("needs root and setpriv to run the shell as an unprivileged user")
        (d / "OK").write_bytes(b"fine")
        (d / "SECRET").write_bytes(b"s")
        os.chmod(d / "SECRET", 0o600)  # owned by root: unreadable for uid 1000
        for p in (loader.parent, loader, d / "OK"):
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        os.chmod(d, 0o711 if state == "unreadable-file" else 0o700)
        if state == "unreadable-file":
            os.chmod(d, 0o755)
        user = "1000"
    proc = run_script(shell, d, f"set -eu\n. '{loader}'\necho SURVIVED\n", tmp_path, user=user)
    assert proc.returncode == 0, proc.stderr
    assert b"SURVIVED" in proc.stdout
    if state == "unreadable-file":
        assert b"SECRET" in proc.stderr  # warned by name
    assert b"fine" not in proc.stderr
    shutil.rmtree(tmp_path)


@pytest.mark.parametrize("shell", SHELLS)
def test_overrides_stale_environment(shell, folder):
    env, _ = loaded(shell, folder, env={"CANARY": "stale-snapshot"})
    assert env[b"CANARY"] == CANARY


@pytest.mark.parametrize("shell", SHELLS)
def test_idempotent_when_sourced_twice(shell, folder):
    env, err = loaded(shell, folder, prelude=f". '{folder}/load.sh'")
    assert env[b"CANARY"] == CANARY
    assert err == b""


def test_shellcheck_clean():
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck not installed")
    here = Path(__file__).resolve().parents[2] / "src" / "secretsd" / "format" / "sh"
    for f in sorted(here.iterdir()):
        proc = subprocess.run(["shellcheck", "-s", "sh", str(f)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{f.name}:\n{proc.stdout}"


@pytest.mark.parametrize("shell", SHELLS)
def test_with_secrets_shim(shell, folder):
    shim = Path(__file__).resolve().parents[2] / "src" / "secretsd" / "format" / "sh" / "with-secrets"
    proc = subprocess.run(
        [*shell, str(shim), "/usr/bin/env", "-0"],
        capture_output=True,
        env={"PATH": "/usr/bin:/bin", "SECRETSD_DIR": str(folder), "LANG": "C.UTF-8"},
    )
    assert proc.returncode == 0
    env = parse_env0(proc.stdout)
    assert env[b"CANARY"] == CANARY
    assert not any(k.startswith(b"__secretsd") for k in env)
