"""Property: any value within the contract survives writer -> load.sh (in
every shell) -> the child's environment, byte for byte; and the Python loader."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secretsd.format.loader import read_dir
from secretsd.format.writer import SecretsDir

from .shells import available_shells, loaded

names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,30}", fullmatch=True).filter(
    lambda n: n not in ("IFS", "PS1", "PS2", "PS4", "ENV", "PATH", "HOME", "SHELL", "PWD", "OLDPWD", "CDPATH",
                        "BASH_ENV", "SHELLOPTS", "BASHOPTS", "GLOBIGNORE", "LANG", "LC_ALL")
    and not n.startswith(("LD_", "SECRETSD_", "_"))  # `_` is rewritten by some shells
)
# API values: well-formed UTF-8 without NUL. Raw files: any bytes but NUL.
text_values = st.text(st.characters(exclude_characters="\0", exclude_categories=("Cs",)), max_size=300).map(str.encode)
byte_values = st.binary(max_size=300).map(lambda b: b.replace(b"\0", b""))
special = st.sampled_from([b"", b"\n", b"\r\n", b"a\n\n", b"  x  ", b"-n", b"\\", b"'\"`$(id)", b"\xff\xfe", b"x" * 4096 + b"\n"])


def _check(shell: list[str], env: dict[str, bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        sd = SecretsDir(Path(tmp) / "secrets.d")
        sd.replace_all(env)
        got, _ = loaded(shell, sd.path)
        for k, v in env.items():
            assert got.get(k.encode()) == v, f"{k} differs"
        assert read_dir(sd.path).values == env


def _shell_params(skip_yash_bytes: bool) -> list:
    out = []
    for p in available_shells():
        if skip_yash_bytes and p.id == "yash":
            p = pytest.param(*p.values, id=p.id, marks=pytest.mark.skip(
                reason="yash's read builtin cannot read bytes that are not UTF-8 (documented limit)"))
        out.append(p)
    return out


SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("shell", _shell_params(skip_yash_bytes=False))
@SETTINGS
@given(env=st.dictionaries(names, st.one_of(text_values, special.filter(lambda v: v != b"\xff\xfe")), max_size=6))
def test_utf8_values_roundtrip(shell: list[str], env: dict[str, bytes]) -> None:
    _check(shell, env)


@pytest.mark.parametrize("shell", _shell_params(skip_yash_bytes=True))
@SETTINGS
@given(env=st.dictionaries(names, st.one_of(byte_values, special), max_size=6))
def test_any_bytes_roundtrip(shell: list[str], env: dict[str, bytes]) -> None:
    _check(shell, env)
