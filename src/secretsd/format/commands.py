"""Core CLI commands over one secrets.d folder: init, set, rm, ls, get,
doctor, repair, exec. Messages name keys, never values."""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, NoReturn

import click

from secretsd.format.doctor import diagnose
from secretsd.format.loader import load_into
from secretsd.format.rules import DEFAULT_DIR, LOADER_NAME, FormatError, Rules, encode_value
from secretsd.format.writer import DATA, ConflictError, NotFound, SecretsDir, SecretsDirError

EXIT_FAILURE = 1
EXIT_USAGE = 2


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the writer's errors into one line and an exit code."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FormatError as exc:
            fail(str(exc), EXIT_USAGE)
        except (NotFound, ConflictError) as exc:
            fail(str(exc))
        except SecretsDirError as exc:
            fail(str(exc))
        except ValueError as exc:
            fail(str(exc), EXIT_USAGE)

    return wrapper


def _dir_option(help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option(
        "--dir",
        "folder",
        envvar="SECRETSD_DIR",
        default=DEFAULT_DIR,
        show_default=True,
        type=click.Path(file_okay=False),
        help=help,
    )


dir_option = _dir_option(
    "The secrets.d folder (env SECRETSD_DIR). A non-empty folder without load.sh or ..data is refused "
    "(run `secretsd init` on it first)."
)
owner_options = [
    click.option("--uid", type=int, envvar="SECRETSD_UID", help="Owner uid (default 1000 as root)."),
    click.option("--gid", type=int, envvar="SECRETSD_GID", help="Owner gid (default 1000 as root)."),
]


def with_owner(fn: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed(owner_options):
        fn = opt(fn)
    return fn


def open_dir(folder: str, uid: int | None = None, gid: int | None = None) -> SecretsDir:
    return SecretsDir(folder, uid=uid, gid=gid)


def guard_folder(folder: str, *, may_create: bool = False, must_exist: bool = True) -> None:
    """Refuse, before the writer touches anything, a folder that is not a
    secrets.d folder: one that exists, is not empty and holds neither
    ``load.sh`` nor ``..data`` (say ``/etc`` or a home folder: the writer
    would chmod it 0700, chown it and adopt its files). Only ``init`` takes
    over such a folder, on purpose.

    A missing folder is an error (exit 1, naming the folder given), except
    with ``may_create`` (``set``) when its parent exists; missing parents are
    only ever created by ``init``. This lives in the CLI, not in the writer:
    the control plane's LocalHost writes its own folders with the writer.
    """
    path = os.path.abspath(folder)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        parent = os.path.dirname(path)
        if may_create and os.path.isdir(parent):
            return  # the writer creates the folder itself (0700), nothing above it
        if not must_exist:
            return
        if may_create:
            fail(f"no such folder: {parent} (the parent of {path}); "
                 f"create it, or run `secretsd init --dir {folder}`, which creates missing parents")
        fail(f"no such folder: {path} (run `secretsd init --dir {folder}`)")
    except OSError:
        return  # unreadable parent and the like: the writer reports it
    if not stat.S_ISDIR(st.st_mode):
        return  # a link or a file: the writer refuses it with its own message
    try:
        names = os.listdir(path)
    except OSError:
        return  # cannot look inside: the writer reports it (permission denied)
    if names and LOADER_NAME not in names and DATA not in names:
        fail(
            f"{path} does not look like a secrets.d folder: it is not empty and has no {LOADER_NAME} or {DATA}; "
            f"refusing to touch it. Point --dir at a secrets.d folder, or make a new one with "
            f"`secretsd init --dir NEW_FOLDER` (init takes a folder over: mode 0700, the workspace owner)",
            EXIT_USAGE,
        )


#: What --expect takes: a sha256 hex prefix (as `ls` shows) or 'absent'.
_HEX = frozenset("0123456789abcdefABCDEF")


def _check_expect(expect: str) -> str | None:
    """The writer's ``expected`` for --expect, or a usage error (exit 2): a
    value that is not hex can never match, so it is not a conflict."""
    if expect == "absent":
        return None
    if not expect or len(expect) > 64 or not set(expect) <= _HEX:
        fail(f"--expect {expect[:80]!r}: want a sha256 hex prefix (1 to 64 hex digits, as `secretsd ls` shows) "
             "or 'absent'", EXIT_USAGE)
    return expect


def check_names(names: tuple[str, ...] | list[str]) -> None:
    """Exit 2 naming every invalid or reserved name: such a name can never be
    a secret, so "no such secret" (exit 1) would be misleading."""
    problems = []
    rules = Rules()
    for name in names:
        try:
            rules.check_name(name)
        except FormatError as exc:
            problems.append(exc)
    if problems:
        for p in problems:
            click.echo(f"error: {p}", err=True)
        sys.exit(EXIT_USAGE)


def _read_source(path: str) -> bytes:
    """Bytes from a file or '-' (stdin), exactly as they are."""
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}", EXIT_USAGE)


@click.command("init")
@_dir_option("The secrets.d folder (env SECRETSD_DIR).")
@with_owner
@handle_errors
def init_cmd(folder: str, uid: int | None, gid: int | None) -> None:
    """Create the folder (0700, and any missing parents) and install or upgrade
    load.sh in it. The one command that takes over an existing folder."""
    open_dir(folder, uid, gid).init()
    click.echo(f"initialised {folder}", err=True)


@click.command("set")
@click.argument("key", required=False)
@click.argument("value", required=False)
@click.option("--from-file", "from_file", type=click.Path(dir_okay=False), help="Read the value from a file, byte-exact.")
@click.option("--from-json", "from_json", help="Set a batch from a JSON object {NAME: value} in FILE or - (stdin), all or nothing.")
@click.option("--expect", help="sha256 hex prefix of the value this write replaces ('absent' for a new key); refuse on mismatch.")
@dir_option
@with_owner
@handle_errors
def set_cmd(
    key: str | None,
    value: str | None,
    from_file: str | None,
    from_json: str | None,
    expect: str | None,
    folder: str,
    uid: int | None,
    gid: int | None,
) -> None:
    """Set KEY to VALUE, to a file's bytes (--from-file), to stdin (VALUE '-'),
    or set a batch with --from-json.

    VALUE on the command line is visible in the process list: prefer '-' or
    --from-file for real secrets.
    """
    if from_json is not None and (key or value or from_file):
        fail("--from-json takes no KEY, VALUE or --from-file", EXIT_USAGE)
    if from_json is not None and expect is not None:
        fail("--expect applies to one KEY, not to --from-json", EXIT_USAGE)
    expected = _check_expect(expect) if expect is not None else None
    guard_folder(folder, may_create=True)
    sd = open_dir(folder, uid, gid)
    if from_json is not None:
        raw = _read_source(from_json)
        try:
            doc = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            fail(f"{from_json}: not valid JSON ({exc.msg if hasattr(exc, 'msg') else 'bad encoding'})", EXIT_USAGE)
        if not isinstance(doc, dict) or not all(isinstance(v, str) for v in doc.values()):
            fail(f"{from_json}: expected a JSON object of names to string values", EXIT_USAGE)
        batch = {k: encode_value(k, v) for k, v in doc.items()}
        problems = sd.rules.problems(batch)
        if problems:
            for p in problems:
                click.echo(f"error: {p}", err=True)
            sys.exit(EXIT_USAGE)
        sd.apply(batch)
        click.echo(f"set {len(batch)} keys: {', '.join(sorted(batch))}", err=True)
        return
    if not key:
        fail("missing KEY (or use --from-json)", EXIT_USAGE)
    if from_file is not None:
        if value is not None:
            fail("give VALUE or --from-file, not both", EXIT_USAGE)
        data = _read_source(from_file)
    elif value == "-":
        data = sys.stdin.buffer.read()
    elif value is not None:
        data = os.fsencode(value)
    else:
        fail(f"{key}: missing VALUE (use '-' for stdin or --from-file)", EXIT_USAGE)
    if expect is None:
        sd.set(key, data)
    else:
        sd.set(key, data, expected=expected)
    click.echo(f"set {key}", err=True)


@click.command("rm")
@click.argument("keys", nargs=-1, required=True)
@dir_option
@with_owner
@handle_errors
def rm_cmd(keys: tuple[str, ...], folder: str, uid: int | None, gid: int | None) -> None:
    """Delete KEYS, all or nothing (fails if any is absent)."""
    check_names(keys)
    guard_folder(folder)
    open_dir(folder, uid, gid).delete(*keys)
    click.echo(f"removed {', '.join(keys)}", err=True)


@click.command("ls")
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
@dir_option
@handle_errors
def ls_cmd(as_json: bool, folder: str) -> None:
    """List secrets: name, size, sha256 prefix, mtime, mode, owner. Never values."""
    guard_folder(folder)
    entries = open_dir(folder).list()
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "name": e.name,
                        "size": e.size,
                        "sha256": e.sha8,
                        "mtime": e.mtime,
                        "mode": f"{e.mode:04o}",
                        "uid": e.uid,
                        "gid": e.gid,
                        "source": e.source,
                    }
                    for e in entries
                ],
                indent=2,
            )
        )
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for col in ("NAME", "SIZE", "SHA256", "MODIFIED", "MODE", "OWNER"):
        table.add_column(col, justify="right" if col == "SIZE" else "left")
    import datetime as _dt

    for e in entries:
        when = _dt.datetime.fromtimestamp(e.mtime).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(e.name, str(e.size), e.sha8, when, f"{e.mode:04o}", f"{e.uid}:{e.gid}")
    Console().print(table)


@click.command("get")
@click.argument("key")
@dir_option
@handle_errors
def get_cmd(key: str, folder: str) -> None:
    """Print KEY's value, byte-exact, to stdout (for the owner on the host)."""
    check_names([key])
    guard_folder(folder)
    data = open_dir(folder).get(key)
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
@dir_option
@with_owner
@handle_errors
def doctor_cmd(as_json: bool, folder: str, uid: int | None, gid: int | None) -> None:
    """Check the folder: modes, owners, load.sh, names, sizes, leftovers.

    Exit 1 when an error is found, 0 when only warnings (or nothing).
    """
    guard_folder(folder, must_exist=False)  # a missing folder is doctor's MISSING finding
    findings = diagnose(open_dir(folder, uid, gid))
    if as_json:
        click.echo(json.dumps([f.as_dict() for f in findings], indent=2))
    else:
        for f in findings:
            click.echo(f"{f.severity}: {f.message}", err=f.severity != "ok")
        if not findings:
            click.echo(f"ok: {folder} is healthy")
    if any(f.severity == "error" for f in findings):
        sys.exit(EXIT_FAILURE)


@click.command("repair")
@dir_option
@with_owner
@handle_errors
def repair_cmd(folder: str, uid: int | None, gid: int | None) -> None:
    """Finish or undo a killed write, fix mode/owner drift, reinstall load.sh."""
    guard_folder(folder)
    sd = open_dir(folder, uid, gid)
    before = _repair_state(sd)
    done = sd.repair()
    changes = _repair_changes(sd, before, _repair_state(sd), done)
    for line in changes:
        click.echo(line, err=True)
    click.echo(f"repaired {folder}: {len(changes)} change(s)", err=True)


def _attrs_of(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


def _repair_state(sd: SecretsDir) -> dict[str, Any]:
    """What the writer's repair fixes without itemising it: the mode and owner
    of the folder, load.sh, the current generation and each of its files;
    load.sh's bytes; the generation's load cache."""
    root = str(sd.path)
    state: dict[str, Any] = {"folder": _attrs_of(root), "loader": _attrs_of(os.path.join(root, LOADER_NAME))}
    try:
        with open(os.path.join(root, LOADER_NAME), "rb") as fh:
            state["loader_bytes"] = fh.read()
    except OSError:
        state["loader_bytes"] = None
    gen = os.path.join(root, DATA)
    state["gen"] = _attrs_of(os.path.realpath(gen)) if os.path.islink(gen) else None
    files: dict[str, tuple[int, int, int] | None] = {}
    if state["gen"] is not None:
        try:
            for name in os.listdir(gen):
                if not name.startswith("."):
                    files[name] = _attrs_of(os.path.join(gen, name))
        except OSError:
            pass
    state["files"] = files
    try:
        state["cache"] = sd.cache_problem()
    except SecretsDirError:
        state["cache"] = None
    return state


def _attr_fixes(what: str, b: tuple[int, int, int] | None, a: tuple[int, int, int] | None,
                want: tuple[int, int, int]) -> list[str]:
    """Lines for the mode/owner drift of ``what`` that went away."""
    if b is None or a is None or b == want or a != want:
        return []
    out = []
    if b[0] != a[0]:
        out.append(f"fixed {what} mode {b[0]:04o} -> {a[0]:04o}")
    if b[1:] != a[1:]:
        out.append(f"fixed {what} owner {b[1]}:{b[2]} -> {a[1]}:{a[2]}")
    return out


def _repair_changes(sd: SecretsDir, before: dict[str, Any], after: dict[str, Any], done: list[str]) -> list[str]:
    """One line per change repair made. The writer says some of them in one
    line ("rewrote generation ..."), and the folder's mode/owner and load.sh
    not at all."""
    from secretsd.format.rules import DIR_MODE, FILE_MODE
    from secretsd.format.writer import LOADER_MODE

    dir_want, file_want = (DIR_MODE, sd.uid, sd.gid), (FILE_MODE, sd.uid, sd.gid)
    changes = _attr_fixes("folder", before["folder"], after["folder"], dir_want)
    if before["loader_bytes"] is None and after["loader_bytes"] is not None:
        changes.append(f"installed {LOADER_NAME}")
    elif before["loader_bytes"] != after["loader_bytes"]:
        changes.append(f"reinstalled {LOADER_NAME} (it differed from the one this secretsd ships)")
    else:
        changes += _attr_fixes(LOADER_NAME, before["loader"], after["loader"], (LOADER_MODE, sd.uid, sd.gid))
    itemised = _attr_fixes(f"{DATA} generation", before["gen"], after["gen"], dir_want)
    for name in sorted(before["files"]):
        itemised += _attr_fixes(name, before["files"][name], after["files"].get(name), file_want)
    if before["cache"] is not None and after["cache"] is None:
        itemised.append(f"rewrote the load cache (it was {before['cache']})")
    for line in done:
        if line.startswith("adopted hand-made files: "):
            changes += [f"adopted hand-made file {n}" for n in line.split(": ", 1)[1].split(", ")]
        elif line.startswith("rewrote generation"):
            if not itemised:
                changes.append(line)  # something else was fixed: say what the writer said
        else:
            changes.append(line)
    return changes + itemised


@click.command("exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@_dir_option("The secrets.d folder (env SECRETSD_DIR).")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_cmd(folder: str, command: tuple[str, ...]) -> None:
    """Load the folder into the environment, then exec COMMAND.

    secretsd exec -- agent-runtime --serve

    \b
    Exit status, as env(1) and the shells: COMMAND's own once it runs;
    126 when COMMAND is found but cannot be executed (not executable, bad format);
    127 when COMMAND is not found.
    """
    load_into(None, folder)
    try:
        os.execvp(command[0], list(command))
    except OSError as exc:
        fail(f"cannot exec {command[0]}: {exc.strerror}", 127 if exc.errno == 2 else 126)


core_commands = [init_cmd, set_cmd, rm_cmd, ls_cmd, get_cmd, doctor_cmd, repair_cmd, exec_cmd]
