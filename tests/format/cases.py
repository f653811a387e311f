"""One table of folder layouts and what any loader must export from them.

Both loaders (load.sh in every shell, and secretsd.loader) run every case,
so they can never disagree.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Case:
    id: str
    build: Callable[[Path], None]
    exports: dict[str, bytes]
    warns: list[str] = field(default_factory=list)  # names the warnings must mention
    absent: list[str] = field(default_factory=list)  # names that must not be exported


def files(**values: bytes) -> Callable[[Path], None]:
    def build(d: Path) -> None:
        for k, v in values.items():
            (d / k).write_bytes(v)
    return build


def k8s(values: dict[str, bytes]) -> Callable[[Path], None]:
    """The Kubernetes Secret-volume layout: KEY -> ..data/KEY -> ..<ts>/KEY."""
    def build(d: Path) -> None:
        ts = d / "..2026_12_03_10_00_00.000000001"
        ts.mkdir()
        for k, v in values.items():
            (ts / k).write_bytes(v)
            os.symlink(f"..data/{k}", d / k)
        os.symlink(ts.name, d / "..data")
    return build


def combine(*builders: Callable[[Path], None]) -> Callable[[Path], None]:
    def build(d: Path) -> None:
        for b in builders:
            b(d)
    return build


TRICKY = {
    "JSON": b'{\n  "token": "a b",\n  "nested": {"x": [1, 2]}\n}\n',
    "PEM": b"-----BEGIN KEY-----\nMIIB\nabc=\n-----END KEY-----\n",
    "TRAILING_NL": b"value\n\n\n",
    "CRLF": b"line1\r\nline2\r\n",
    "BLANKS": b"  \t surrounded \t  ",
    "DOLLAR": b"$HOME ${PATH} $(id) `id`",
    "QUOTES": b"'single' \"double\" \\backslash\\ \\n",
    "DASH_N": b"-n",
    "EQUALS": b"a=b=c",
    "UTF8": "héllo wörld ☃ 𝄞".encode(),
    "ONLY_NL": b"\n",
    "GLOB": b"* ? [a-z]",
    "EMPTY": b"",
}

CASES: list[Case] = [
    Case("tricky-values", files(**TRICKY), dict(TRICKY)),
    Case("empty-folder", files(), {}),
    Case(
        "bad-names-skipped",
        files(**{"GOOD": b"1", "bad-name": b"x", "1LEADING": b"x", "with.dot": b"x"}),
        {"GOOD": b"1"},
        warns=["bad-name", "1LEADING", "with.dot"],
    ),
    Case(
        "dotfiles-and-loader-ignored",
        files(**{".hidden": b"x", "OK": b"y"}),
        {"OK": b"y"},
        absent=[".hidden"],
    ),
    Case(
        "reserved-names-skipped",
        files(PATH=b"/evil", LD_PRELOAD=b"/evil.so", IFS=b"x", SECRETSD_DIR=b"/x", FINE=b"ok"),
        {"FINE": b"ok"},
        warns=["PATH", "LD_PRELOAD", "IFS", "SECRETSD_DIR"],
    ),
    Case(
        "too-large-skipped",
        files(BIG=b"x" * 131072, JUST_FITS=b"y" * (131072 - len("JUST_FITS") - 2)),
        {"JUST_FITS": b"y" * (131072 - len("JUST_FITS") - 2)},
        warns=["BIG"],
    ),
    Case("kubernetes-layout", k8s({"API_KEY": b"k8s\n", "OTHER": b"o"}), {"API_KEY": b"k8s\n", "OTHER": b"o"},
         absent=["..data"]),
    Case(
        "hand-replaced-link-wins",
        combine(k8s({"A": b"gen", "B": b"b"}), lambda d: ((d / "A").unlink(), (d / "A").write_bytes(b"hand"))),
        {"A": b"hand", "B": b"b"},
    ),
    Case(
        "hand-file-beside-generation",
        combine(k8s({"A": b"gen"}), files(HAND=b"hand")),
        {"A": b"gen", "HAND": b"hand"},
    ),
]
