"""The loader cache (docs/format.md, "The loader cache"): fast shells take a
generation's values from ``..gen-N/.load-cache.sh``, all or nothing, and only
while it names exactly the generation's files and none is newer; the files
stay the truth for every other case."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secretsd.format import loadcache
from secretsd.format.doctor import diagnose
from secretsd.format.rules import LOADER_RESERVED, Rules
from secretsd.format.writer import STALE_CACHE_USED, SecretsDir, loader_source

from .shells import available_shells, loaded, source_in

SHELLS = available_shells()
#: Shells that use the cache; mksh, posh, yash and zsh always read the files.
FAST = {"dash", "bash", "bash-posix", "busybox-ash"}


def shell_id(shell: list[str]) -> str:
    return next(p.id for p in SHELLS if list(p.values[0]) == list(shell))


def gen_dir(sd: SecretsDir) -> Path:
    return sd.path / os.readlink(sd.path / "..data")


def poison(sd: SecretsDir, names: list[str]) -> None:
    """Change files' bytes but keep their (old) modification time: only the
    cache still holds the written values."""
    g = gen_dir(sd)
    for n in names:
        st = os.stat(g / n)
        (g / n).write_bytes(b"POISON")
        os.utime(g / n, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.fixture
def sd(tmp_path: Path) -> SecretsDir:
    d = SecretsDir(tmp_path / "secrets.d")
    d.replace_all({"A": b"alpha", "B": b"it's \"b\"\n", "C": b""})
    return d


# ------------------------------------------------------------------ shells

@pytest.mark.parametrize("shell", SHELLS)
def test_fast_shells_read_the_cache_others_the_files(shell, sd):
    poison(sd, ["A", "B", "C"])
    got, err = loaded(shell, sd.path)
    want = {b"A": b"alpha", b"B": b"it's \"b\"\n", b"C": b""}
    if shell_id(shell) not in FAST:
        want = dict.fromkeys(want, b"POISON")
    assert {k: got.get(k) for k in want} == want
    assert err == b""


names = st.from_regex(r"[A-Z][A-Z0-9_]{0,20}", fullmatch=True).filter(
    lambda n: loadcache.loader_exports(n, b"") and n not in ("IFS", "LANG", "LC_ALL"))
values = st.one_of(
    st.binary(max_size=200).map(lambda b: b.replace(b"\0", b"")),
    st.sampled_from([b"'", b"''", b"'\\''", b"a'b", b"\n'\n", b"$(id)`id`", b"\\'", b"}\n}", b"'; exit 1; '"]),
)


@pytest.mark.parametrize("shell", [p for p in SHELLS if p.id in FAST])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(env=st.dictionaries(names, values, max_size=6))
def test_cache_roundtrip_is_byte_exact(shell, env):
    """Only the cache holds the values (files poisoned): its quoting is exact."""
    with tempfile.TemporaryDirectory() as tmp:
        sd = SecretsDir(Path(tmp) / "secrets.d")
        sd.replace_all(env)
        poison(sd, list(env))
        got, _ = loaded(shell, sd.path)
        for k, v in env.items():
            assert got.get(k.encode()) == v, f"{k} differs"


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("how", ["through-link", "in-generation", "replaced-top-level"])
def test_a_hand_edit_wins_at_once(shell, sd, how):
    """Within the same second as the write, even where `test -nt` compares seconds."""
    if how == "through-link":
        with open(sd.path / "A", "wb") as fh:  # follows A -> ..data/A, as `echo > A` does
            fh.write(b"edited")
    elif how == "in-generation":
        (gen_dir(sd) / "A").write_bytes(b"edited")
    else:  # `sed -i`: a new regular file renamed over the link
        tmp = sd.path / "A.tmp"
        tmp.write_bytes(b"edited")
        os.rename(tmp, sd.path / "A")
    got, _ = loaded(shell, sd.path)
    assert got[b"A"] == b"edited"
    assert got[b"B"] == b"it's \"b\"\n" and got[b"C"] == b""


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("damage", ["truncated", "cut-before-the-names", "syntax", "empty", "unreadable-dir-entry"])
def test_a_damaged_cache_never_fails_the_caller(shell, sd, damage):
    cache = gen_dir(sd) / loadcache.CACHE_NAME
    st = os.stat(cache)
    data = cache.read_bytes()
    if damage == "truncated":
        cache.write_bytes(data[: data.index(b"alpha") + 2])  # inside a quote
    elif damage == "cut-before-the-names":
        cache.write_bytes(data[: data.index(b"__secretsd_cn")])  # sources fine, defines no name list
    elif damage == "syntax":
        cache.write_bytes(data.replace(b"__secretsd_apply() {", b"__secretsd_apply() { ( ;;"))
    elif damage == "empty":
        cache.write_bytes(b"")
    else:
        cache.unlink()
        cache.mkdir()
    if damage != "unreadable-dir-entry":
        os.utime(cache, ns=(st.st_atime_ns, st.st_mtime_ns))
    proc = source_in(shell, sd.path, prelude="set -eu", after="echo \"A=$A C=${C-unset}\"; echo REACHED")
    assert proc.returncode == 0, proc.stderr
    assert b"A=alpha C=\nREACHED" in proc.stdout, proc.stdout


@pytest.mark.parametrize("shell", [p for p in SHELLS if p.id in FAST])
def test_names_must_match_exactly(shell, sd):
    g = gen_dir(sd)
    old = os.stat(g / "A").st_mtime_ns
    (g / "NEW").write_bytes(b"new")  # added by hand, dated like the rest
    os.utime(g / "NEW", ns=(old, old))
    poison(sd, ["A"])
    got, _ = loaded(shell, sd.path)
    assert got[b"NEW"] == b"new" and got[b"A"] == b"POISON"  # read from the files
    (g / "NEW").unlink()
    (g / "B").unlink()  # gone by hand: the cache still has it, but it is not exported
    got, _ = loaded(shell, sd.path, env={"B": "before"})
    assert got[b"B"] == b"before" and got[b"A"] == b"POISON"


@pytest.mark.parametrize("shell", [p for p in SHELLS if p.id in FAST])
def test_a_name_load_sh_refuses_is_not_cached(shell, tmp_path):
    """A writer allowed to write PATH: load.sh still refuses it, with a warning."""
    sd = SecretsDir(tmp_path / "secrets.d", rules=Rules(reserved=()))
    sd.replace_all({"PATH": b"/evil", "A": b"a"})
    assert b"PATH" not in (gen_dir(sd) / loadcache.CACHE_NAME).read_bytes()
    got, err = loaded(shell, sd.path)
    assert got[b"PATH"] == b"/usr/bin:/bin" and got[b"A"] == b"a"
    assert b"skipping PATH: reserved name" in err


@pytest.mark.parametrize("shell", SHELLS)
def test_no_helper_left_behind(shell, sd):
    proc = source_in(shell, sd.path, after="""
for v in __secretsd_cn __secretsd_names __secretsd_k __secretsd_rest __secretsd_fast __secretsd_vb; do
  eval "[ -z \\"\\${$v+x}\\" ]" || echo "LEFTOVER $v"
done
if command -v __secretsd_apply >/dev/null 2>&1; then echo LEFTOVER-FN; fi
if command -v __secretsd_cached >/dev/null 2>&1; then echo LEFTOVER-FN; fi
echo "DONE $A"
""")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == b"DONE alpha"


# ------------------------------------------------------------------ writer

def test_cache_and_written_files_share_a_backdated_time(sd):
    g = gen_dir(sd)
    cache = os.stat(g / loadcache.CACHE_NAME)
    assert cache.st_mtime_ns % 1_000_000_000 == 0
    import time
    assert cache.st_mtime <= time.time() - loadcache.BACKDATE + 0.001
    for n in ("A", "B", "C"):
        assert os.stat(g / n).st_mtime_ns <= cache.st_mtime_ns
    assert oct(cache.st_mode & 0o777) == ("0o640" if os.geteuid() == 0 else "0o600")
    assert cache.st_uid == (0 if os.geteuid() == 0 else os.stat(g / "A").st_uid)


def test_deleting_a_key_scrubs_it_from_old_caches(tmp_path):
    sd = SecretsDir(tmp_path / "secrets.d", grace=60)
    sd.replace_all({"KEEP": b"k", "GONE": b"canary-3e1d"})
    sd.set("KEEP", b"k2")  # the old generation (with GONE in its cache) stays for the grace
    sd.delete("GONE")
    hits = [p for p in sd.path.rglob("*") if p.is_file() and b"canary-3e1d" in p.read_bytes()]
    assert hits == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the check is about a root shell and a cache it does not own")
@pytest.mark.parametrize("shell", [p for p in SHELLS if p.id in FAST])
def test_a_root_shell_never_sources_a_cache_it_does_not_own(shell, sd, tmp_path):
    """The folder's owner could write a cache; a root shell whose load.sh
    lives elsewhere must not run it (nor take values from it)."""
    cache = gen_dir(sd) / loadcache.CACHE_NAME
    assert cache.stat().st_uid == 0
    st = cache.stat()
    marker = tmp_path / "ran"
    cache.write_bytes(cache.read_bytes() + f"touch '{marker}'\n".encode())
    os.chown(cache, 1000, 1000)
    os.utime(cache, ns=(st.st_atime_ns, st.st_mtime_ns))
    poison(sd, ["A"])
    got, err = loaded(shell, sd.path)
    assert got[b"A"] == b"POISON" and not marker.exists()


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("gosu"), reason="needs root and gosu to run as uid 1000")
@pytest.mark.parametrize("shell", [p for p in SHELLS if p.id in FAST])
def test_the_workspace_user_reads_the_root_owned_cache_through_its_group(shell):
    """The entrypoint's second pass, as uid 1000: the cache is root's but group-readable."""
    top = Path(tempfile.mkdtemp(prefix="secretsd-u1000-", dir="/tmp"))  # pytest's tmp is root-only
    try:
        top.chmod(0o755)
        sd = SecretsDir(top / "secrets.d")
        sd.replace_all({"A": b"alpha"})
        poison(sd, ["A"])  # only the cache still says alpha
        proc = source_in([shutil.which("gosu") or "gosu", "1000:1000", *shell], sd.path, after='echo "A=$A"')
        assert proc.returncode == 0, proc.stderr
        assert b"A=alpha" in proc.stdout
    finally:
        shutil.rmtree(top)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("gosu"), reason="needs root and gosu to run as uid 1000")
@pytest.mark.parametrize("shell", [p for p in SHELLS if p.id in FAST])
def test_a_value_the_user_cannot_read_is_not_taken_from_the_cache(shell):
    """The cache (group-readable) must not hand out a value its file keeps from the reader."""
    top = Path(tempfile.mkdtemp(prefix="secretsd-u1000-", dir="/tmp"))
    try:
        top.chmod(0o755)
        sd = SecretsDir(top / "secrets.d")
        sd.replace_all({"A": b"alpha", "B": b"b"})
        os.chmod(gen_dir(sd) / "A", 0)  # a chmod changes only the ctime
        proc = source_in([shutil.which("gosu") or "gosu", "1000:1000", *shell], sd.path,
                         after='echo "A=${A-unset} B=$B"')
        assert proc.returncode == 0, proc.stderr
        assert b"A=unset B=b" in proc.stdout and b"skipping A: cannot read" in proc.stderr
    finally:
        shutil.rmtree(top)


@pytest.mark.parametrize("shell", [p for p in SHELLS if p.id in FAST])
def test_a_linked_cache_is_never_sourced(shell, sd, tmp_path):
    """A link passes -f, -r and -O for its target (any root-owned file): links are refused."""
    g = gen_dir(sd)
    cache = g / loadcache.CACHE_NAME
    target = tmp_path / "root-owned"
    marker = tmp_path / "ran"
    target.write_bytes(cache.read_bytes() + f"touch '{marker}'\n".encode())
    st = os.stat(cache)
    cache.unlink()
    os.symlink(target, cache)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.utime(g, ns=(st.st_atime_ns, st.st_mtime_ns))
    poison(sd, ["A"])
    got, _ = loaded(shell, sd.path)
    assert got[b"A"] == b"POISON" and not marker.exists()


@pytest.mark.parametrize("setup", ["set -T", "shopt -s extdebug"])
def test_bash_reads_the_files_when_a_debug_trap_reaches_functions(sd, setup):
    """A DEBUG trap that runs in functions would see the cache's export lines."""
    poison(sd, ["A"])
    proc = source_in(["bash"], sd.path, prelude=f"{setup}; trap 'printf \"%s\\n\" \"$BASH_COMMAND\" >&2' DEBUG",
                     after='echo "A=$A"')
    assert proc.returncode == 0 and b"A=POISON" in proc.stdout
    assert b"alpha" not in proc.stderr


def test_doctor_says_error_when_load_sh_would_use_a_stale_cache(sd):
    poison(sd, ["A"])  # new bytes, old time: load.sh would export the cached value
    assert sd.cache_problem() == STALE_CACHE_USED
    (finding,) = [f for f in diagnose(sd) if f.code == "CACHE_STALE"]
    assert finding.severity == "error" and "repair" in finding.message
    sd.repair()
    assert sd.cache_problem() is None


def test_a_stale_cache_is_reported_and_rewritten(sd):
    (gen_dir(sd) / "A").write_bytes(b"edited")
    codes = {f.code for f in diagnose(sd)}
    assert "CACHE_STALE" in codes
    assert sd.cache_problem() is not None
    sd.apply(set={"A": b"edited"})  # the same value: still rewrites the generation
    assert sd.cache_problem() is None
    assert "CACHE_STALE" not in {f.code for f in diagnose(sd)}
    assert b"edited" in (gen_dir(sd) / loadcache.CACHE_NAME).read_bytes()


def test_repair_rewrites_a_missing_cache(sd):
    (gen_dir(sd) / loadcache.CACHE_NAME).unlink()
    assert sd.cache_problem() == "missing"
    assert any("loader cache" in line for line in sd.repair())
    assert sd.cache_problem() is None


def test_loader_refusals_match_load_sh():
    """load.sh's `reserved name` case list is rules.LOADER_RESERVED, word for word."""
    text = loader_source().decode()
    m = re.search(r"\n\s*(IFS \| PS1[^)]*)\)\s*\n\s*__secretsd_warn \"\$__secretsd_n\" 'reserved name'", text)
    assert m, "reserved-name case not found in load.sh"
    words = [w.strip() for w in m.group(1).replace("\\\n", " ").split("|")]
    assert sorted(words) == sorted(LOADER_RESERVED)


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("opts", ["-x", "-v", "-xv"])
def test_trace_and_verbose_never_print_a_value(shell, tmp_path, opts):
    """`set -v` echoes what the shell reads: the cache must not be echoed."""
    sd = SecretsDir(tmp_path / "secrets.d")
    sd.replace_all({"CANARY": b"canary-91be\nline2", "OTHER": b"o"})
    proc = source_in(shell, sd.path, prelude=f"set {opts}",
                     after=f'case $- in *{opts[-1]}*) echo STILL-ON;; esac; echo "$OTHER"')
    assert proc.returncode == 0, proc.stderr
    assert b"canary-91be" not in proc.stdout + proc.stderr
    assert b"STILL-ON\no" in proc.stdout
