"""One table of folder layouts and what any loader must export from them.

Both loaders (load.sh in every shell, and secretsd.loader) run every case,
so they can never disagree.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from secretsd.format.rules import LOADER_RESERVED


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


def written(values: dict[str, bytes]) -> Callable[[Path], None]:
    """The writer's own layout, with its loader cache (the fast path)."""
    def build(d: Path) -> None:
        from secretsd.format.writer import SecretsDir
        SecretsDir(d).replace_all(values)
    return build


def in_generation(edit: Callable[[Path], None]) -> Callable[[Path], None]:
    """Apply ``edit`` to the current generation folder (what ``..data`` names)."""
    def build(d: Path) -> None:
        edit(d / os.readlink(d / "..data"))
    return build


def _rename_back_in_time(g: Path) -> None:
    """Put a different value in place by rename, keeping an old file time:
    only the generation folder's time shows the change."""
    st = os.stat(g / "A")
    (g / "A.new").write_bytes(b"renamed")
    os.utime(g / "A.new", ns=(st.st_atime_ns, st.st_mtime_ns))
    os.rename(g / "A.new", g / "A")


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

def _concrete(pattern: str) -> str:
    """One real name a reserved glob covers (LD_* -> LD_PRELOAD)."""
    examples = {"LD_*": "LD_PRELOAD", "SECRETSD_*": "SECRETSD_DIR", "BASH_*": "BASH_XTRACEFD",
                "KSH_*": "KSH_VERSION", "__secretsd_*": "__secretsd_dir", "YASH_*": "YASH_AFTER_CD", "ZSH_*": "ZSH_SUBSHELL", "POSH_*": "POSH_VERSION"}
    return examples.get(pattern, pattern)


#: Every reserved name on disk, each with its own canary value: the shells
#: manage several of these themselves (exporting RANDOM or OPTIND aborts a
#: `set -e` caller in some; bash echoes a bad LC_ALL in its warning).
RESERVED_ON_DISK = {_concrete(p): f"cAnArY-{_concrete(p)}".encode() for p in LOADER_RESERVED}

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
        "every-reserved-name-skipped",
        files(**RESERVED_ON_DISK, FINE=b"ok"),
        {"FINE": b"ok"},
        warns=[n for n in RESERVED_ON_DISK if n != "_"] + ["skipping _: reserved name"],
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
    Case("written-tricky-values", written(TRICKY), dict(TRICKY)),
    Case(
        "refused-hand-file-shadows-the-written-key",
        combine(written({"A": b"gen", "B": b"b"}),
                lambda d: ((d / "A").unlink(), (d / "A").write_bytes(b"x" * 131072))),
        {"B": b"b"},
        warns=["A"],
        absent=["A"],
    ),
    Case(
        "rename-into-the-generation-is-seen",
        combine(written({"A": b"gen", "B": b"b"}), in_generation(_rename_back_in_time)),
        {"A": b"renamed", "B": b"b"},
    ),
    Case(
        "odd-name-in-the-generation-is-not-mistaken-for-two",
        combine(written({"A": b"a", "B": b"b"}),
                in_generation(lambda g: (os.rename(g / "A", g / "A B"), os.unlink(g / "B")))),
        {},
        warns=["A B"],
        absent=["A", "B"],
    ),
    Case(
        "a-kubelet-dotfile-is-never-run",
        k8s({"K": b"k", ".load-cache.sh": b"__secretsd_apply() { export K=POISON; }\n__secretsd_cn=' K '\n"}),
        {"K": b"k"},
    ),
    Case(
        "hand-file-beside-generation",
        combine(k8s({"A": b"gen"}), files(HAND=b"hand")),
        {"A": b"gen", "HAND": b"hand"},
    ),
]
