"""`secretsd serve` with a bad or unreachable database: one line, the right
exit code (2 for a URL that cannot work, 1 for a database that cannot be
reached), no traceback, and never the password from the URL. Real
subprocesses of the console script."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

SECRETSD = [str(Path(sys.executable).parent / "secretsd")]
PASSWORD = "SECRETPW"


def serve(*args: str, data: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("SECRETSD_")}
    e.update(env or {})
    return subprocess.run([*SECRETSD, "serve", "--data", str(data), "--runtime", "none", "--port", "0", *args],
                          capture_output=True, text=True, env=e, timeout=60)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens on it once closed


def _one_clean_line(res: subprocess.CompletedProcess[str]) -> str:
    out = res.stdout + res.stderr
    assert "Traceback" not in out and PASSWORD not in out, out
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, res.stderr
    return errors[0]


@pytest.mark.parametrize("url", [
    "bogus://x",
    f"bogus://u:{PASSWORD}@h/db",
    "not a url",
    f"postgresql://u:{PASSWORD}@h:notaport/db",
    f"postgresql+nosuchdriver://u:{PASSWORD}@h/db",
    f"mysql://u:{PASSWORD}@h/db",  # a dialect SQLAlchemy knows, a driver not installed here
], ids=["bogus", "bogus-with-password", "not-a-url", "bad-port", "unknown-driver", "driver-missing"])
def test_a_url_that_cannot_work_is_a_usage_error(url: str, tmp_path: Path) -> None:
    data = tmp_path / "var"
    res = serve("--db", url, data=data)
    assert res.returncode == 2, res.stderr
    line = _one_clean_line(res)
    assert "--db" in line
    assert not data.exists()  # refused before anything was created


def test_the_url_from_the_environment_is_checked_too(tmp_path: Path) -> None:
    res = serve(data=tmp_path / "var", env={"SECRETSD_DB": f"bogus://u:{PASSWORD}@h/db"})
    assert res.returncode == 2
    assert "$SECRETSD_DB" in _one_clean_line(res)


def test_an_unreachable_postgresql_is_a_runtime_failure_with_the_password_masked(tmp_path: Path) -> None:
    url = f"postgresql://u:{PASSWORD}@127.0.0.1:{closed_port()}/db"
    res = serve("--db", url, data=tmp_path / "var")
    assert res.returncode == 1, res.stderr
    line = _one_clean_line(res)
    assert "postgresql://u:***@127.0.0.1" in line and "cannot open the database" in line
    assert "control plane on" not in res.stderr  # it never announced itself as ready


def test_an_unusable_sqlite_path_is_a_runtime_failure(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where the database's folder should be
    res = serve("--db", f"sqlite:///{blocker}/sub/secretsd.db", data=tmp_path / "var")
    assert res.returncode == 1, res.stderr
    assert "cannot open the database" in _one_clean_line(res)


def test_serve_still_starts_with_a_good_url(tmp_path: Path) -> None:
    # Positive control: the same invocation with a working SQLite URL serves.
    data = tmp_path / "var"
    e = {k: v for k, v in os.environ.items() if not k.startswith("SECRETSD_")}
    proc = subprocess.Popen([*SECRETSD, "serve", "--data", str(data), "--runtime", "none", "--port", "0",
                             "--db", f"sqlite:///{tmp_path / 'x.db'}"],
                            stderr=subprocess.PIPE, text=True, env=e)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "control plane on" in line or "error" in line or "Traceback" in line:
                break
        assert "control plane on" in line, line
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert (tmp_path / "x.db").is_file()


def test_a_wrong_encryption_key_refuses_to_start(tmp_path: Path) -> None:
    """Rows written under one key, the server started with another: it must not serve
    (it would store new values under the wrong key next to rows nothing can read)."""
    import base64

    from secretsd.store.crypto import KeyRing
    from secretsd.store.engine import default_url
    from secretsd.store.store import Store

    data = tmp_path / "var"
    data.mkdir()
    store = Store.open(default_url(data), KeyRing.load(data))  # generates the key file
    store.create_workspace("w1", None, {}, actor="test")
    store.put("w1", {"A": b"canary-key-7e2"}, actor="test")
    store.close()
    wrong = "1:" + base64.b64encode(os.urandom(32)).decode()
    res = serve(data=data, env={"SECRETSD_ENCRYPTION_KEY": wrong})
    assert res.returncode == 1, res.stderr
    line = _one_clean_line(res)
    assert "encryption key" in line and "wrong encryption key" in line
    assert "canary-key-7e2" not in res.stdout + res.stderr


def test_a_damaged_ciphertext_row_refuses_to_start_in_one_line(tmp_path: Path) -> None:
    """A row too short to be a ciphertext (a damaged database) printed a traceback at start."""
    import sqlite3

    from secretsd.store.crypto import KeyRing
    from secretsd.store.engine import default_url
    from secretsd.store.store import Store

    data = tmp_path / "var"
    data.mkdir()
    store = Store.open(default_url(data), KeyRing.load(data))
    store.create_workspace("w1", None, {}, actor="test")
    store.put("w1", {"A": b"canary-dmg-51c"}, actor="test")
    store.close()
    with sqlite3.connect(data / "secretsd.db") as c:
        c.execute("UPDATE secret_versions SET blob = x'00112233'")
    res = serve(data=data)
    assert res.returncode == 1, res.stderr
    line = _one_clean_line(res)
    assert "damaged" in line and "Traceback" not in res.stderr
    assert "canary-dmg-51c" not in res.stdout + res.stderr


@pytest.mark.parametrize(("host", "needle"), [
    ("256.1.1.1", "does not resolve to an address (choose another --host)"),
    ("192.0.2.1", "is not an address of this machine (choose another --host)"),  # TEST-NET-1: never local
])
def test_a_host_this_machine_cannot_listen_on_names_the_host(tmp_path: Path, host: str, needle: str) -> None:
    """It said 'Unknown error -2 (choose another --port)'."""
    res = serve("--host", host, data=tmp_path / "var")
    assert res.returncode == 1, res.stderr
    assert needle in _one_clean_line(res)
