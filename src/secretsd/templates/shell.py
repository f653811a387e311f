"""Shell analysis of one script with tree-sitter (bash grammar).

The audit needs to know, in execution order, where a script sources the
secrets loader, where it ``exec``s, drops privileges or reads the environment,
and which other scripts it sources or runs. Everything is derived from the
syntax tree; no regular expressions over shell text.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from functools import lru_cache

import tree_sitter_bash
from tree_sitter import Language, Node, Parser

from secretsd.format.rules import DEFAULT_RESERVED

GUARD_PATH = "/configs/secrets.d/load.sh"
LOADER_TAIL = "secrets.d/load.sh"

#: Commands that switch to another user (issue 5's list).
PRIVDROP = frozenset({"gosu", "su-exec", "setpriv", "runuser", "su", "sudo"})
SHELLS = {"sh": "sh", "dash": "sh", "ash": "sh", "busybox": "sh", "posh": "sh",
          "bash": "bash", "zsh": "bash", "ksh": "bash", "mksh": "bash"}

#: Set by the shell, the kernel or docker itself, never a pushed secret.
_SHELL_VARS = frozenset(
    "HOME PATH PWD OLDPWD IFS PS1 PS2 PS4 SHELL USER LOGNAME HOSTNAME UID EUID PPID "
    "RANDOM SECONDS LINENO OPTIND OPTARG BASH BASH_SOURCE BASH_VERSION BASH_VERSINFO "
    "BASH_REMATCH BASHPID FUNCNAME PIPESTATUS HOSTTYPE OSTYPE MACHTYPE TERM LANG LC_ALL "
    "REPLY GROUPS SHLVL EPOCHSECONDS EPOCHREALTIME TMPDIR".split()
)


def _exempt(name: str) -> bool:
    if name in _SHELL_VARS or name.isdigit():
        return True
    return any(fnmatch.fnmatchcase(name, pat) for pat in DEFAULT_RESERVED)


@lru_cache(maxsize=1)
def _parser() -> Parser:
    return Parser(Language(tree_sitter_bash.language()))


@dataclass
class Event:
    """Something the script does that matters for the guard, in order."""

    kind: str  # guard | exec | privdrop | env | source | run | xtrace | wipe
    line: int
    order: tuple[int, ...]
    top_level: bool  # runs unconditionally in the script's own shell
    stmt_start: int  # first line of the enclosing top-level statement
    detail: str = ""
    target: str | None = None  # literal path sourced / run / exec'd
    self_exec: bool = False  # exec/privdrop that re-runs this very script
    guarded: bool = False  # guard: protected by [ -f|-r ... ]
    relative: bool = False  # guard: relative load.sh path
    uses_source: bool = False  # `source` rather than `.`
    is_exec: bool = False  # run/privdrop/wipe reached through `exec`
    final: bool = False  # inside the script's last top-level statement
    pure: bool = False  # guard: its top-level statement holds nothing else


@dataclass
class Script:
    path: str
    text: str  # LF-normalised
    crlf: bool
    shebang: str | None
    dialect: str  # "sh" or "bash"
    events: list[Event] = field(default_factory=list)
    mentions: list[int] = field(default_factory=list)  # comment lines naming load.sh
    statements: list[tuple[int, int]] = field(default_factory=list)  # top-level (start, end)
    header_end: int = 0  # last line of shebang + contiguous leading comments
    set_e_end: int | None = None  # end line of a top-level `set -e...`
    has_error: bool = False  # tree-sitter found a syntax error


def dialect_of(shebang: str | None) -> str:
    if not shebang:
        return "sh"
    words = shebang[2:].split()
    if words and words[0].endswith("/env") and len(words) > 1:
        words = words[1:]
    prog = words[0].rsplit("/", 1)[-1] if words else "sh"
    return SHELLS.get(prog, "sh")


def is_shell_text(text: str) -> bool:
    """A file the audit can treat as a shell script (by its #! line)."""
    first = text.split("\n", 1)[0]
    if not first.startswith("#!"):
        return True  # no shebang: /bin/sh runs it when sourced or via sh
    words = first[2:].split()
    if words and words[0].endswith("/env") and len(words) > 1:
        words = words[1:]
    return bool(words) and words[0].rsplit("/", 1)[-1] in SHELLS


def analyze(
    raw: str, path: str, *, dialect: str | None = None, known_env: frozenset[str] = frozenset()
) -> Script:
    crlf = "\r\n" in raw
    text = raw.replace("\r\n", "\n")
    first = text.split("\n", 1)[0]
    shebang = first if first.startswith("#!") else None
    script = Script(path, text, crlf, shebang, dialect or dialect_of(shebang))
    tree = _parser().parse(text.encode())
    root = tree.root_node
    script.has_error = root.has_error
    _Walker(script, known_env).run(root)
    script.events.sort(key=lambda e: e.order)
    return script


def _header_end(lines: list[str]) -> int:
    n = 0
    if lines and lines[0].startswith("#!"):
        n = 1
    while n < len(lines) and lines[n].lstrip().startswith("#") and not lines[n].startswith("#!"):
        n += 1
    return n


def literal(node: Node | None, consts: dict[str, str] | None = None) -> str | None:
    """The word's value when it is fixed text (or a known constant), else None."""
    if node is None:
        return None
    t = node.type
    text = node.text.decode(errors="replace") if node.text is not None else ""
    if t in ("word", "number", "command_name") and node.named_child_count == 0:
        return text.replace("\\", "") if "\\" in text else text
    if t == "command_name":
        return literal(node.named_children[0], consts)
    if t == "raw_string":
        return text[1:-1]
    if t in ("string", "concatenation"):
        parts = []
        for ch in node.named_children:
            if ch.type == "string_content":
                parts.append(ch.text.decode(errors="replace"))
            else:
                v = literal(ch, consts)
                if v is None:
                    return None
                parts.append(v)
        if t == "concatenation" and not node.named_children:
            return text
        return "".join(parts)
    if t in ("simple_expansion", "expansion") and consts is not None:
        names = [c for c in node.named_children if c.type == "variable_name"]
        if len(names) == 1 and node.named_child_count == 1:
            return consts.get(names[0].text.decode())
    return None


def _is_dollar0(node: Node) -> bool:
    for n in _iter(node):
        if n.type in ("special_variable_name", "variable_name") and n.text == b"0":
            return True
    return False


def _iter(node: Node):
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        stack.extend(reversed(n.children))


def _strip_privdrop(name: str, words: list[str | None]) -> tuple[list[int], bool]:
    """Indexes of the dropped command's argv within words, and whether the drop
    wipes the environment (``su -``, ``su -l``, ``runuser -l``, ``sudo`` without -E)."""
    flags = [w for w in words if w and w.startswith("-")]
    if name == "sudo":
        keep = any(
            w == "-E" or w.startswith("--preserve-env") or (not w.startswith("--") and "E" in w[1:])
            for w in flags
        )
        wipe = not keep
    elif name == "su":
        wipe = any(w in ("-", "--login") or (not w.startswith("--") and "l" in w[1:]) for w in flags)
    elif name == "runuser":
        wipe = any(w in ("-", "--login") or (not w.startswith("--") and "l" in w[1:]) for w in flags)
    else:
        wipe = False
    # Where the command starts: gosu/su-exec USER CMD; others after options.
    i = 0
    if name in ("gosu", "su-exec"):
        i = 1
    else:
        takes_value = {"-u", "-g", "-c", "--user", "--group", "-s", "--shell", "-C", "-h", "-p"}
        while i < len(words):
            w = words[i]
            if w == "--":
                i += 1
                break
            if w is None or not w.startswith("-"):
                if name in ("su", "runuser") and i == 0 or (name in ("su", "runuser") and _prev_user(words, i)):
                    i += 1  # the user name
                    continue
                break
            i += 2 if w in takes_value else 1
    return list(range(i, len(words))), wipe


def _prev_user(words: list[str | None], i: int) -> bool:
    # su/runuser: the first non-option word is the user (unless after -u).
    return all(w is not None and w.startswith("-") for w in words[:i]) and not (
        i > 0 and words[i - 1] in ("-u", "--user")
    )


class _Walker:
    def __init__(self, script: Script, known_env: frozenset[str]) -> None:
        self.s = script
        self.known_env = known_env
        self.assigned: set[str] = set()
        self.consts: dict[str, str] = {}
        self.first_words: dict[str, set[str]] = {}  # var -> first words of its values
        self.functions: dict[str, Node] = {}
        self.calls: list[str] = []
        self.good_guards: set[int] = set()  # start bytes of guarded top-level sources
        self.pure_guards: set[int] = set()  # ... whose statement is only the guard
        self.call_site: int | None = None
        self.stmt_start = 1
        self.final = False
        self.seen_env: set[str] = set()

    # -- entry -------------------------------------------------------------
    def run(self, root: Node) -> None:
        lines = self.s.text.split("\n")
        self.s.header_end = _header_end(lines)
        stmts = [c for c in root.named_children if c.type != "comment"]
        for c in root.children:
            if c.type == "comment":
                self._comment(c)
        for i, st in enumerate(stmts):
            self.stmt_start = st.start_point.row + 1
            self.s.statements.append((self.stmt_start, st.end_point.row + 1))
            self.final = i == len(stmts) - 1
            self._top_statement(st)

    def _top_statement(self, st: Node) -> None:
        self._mark_guard(st)
        if st.type == "command" and literal(st.child_by_field_name("name")) == "set":
            words = [literal(a) or "" for a in st.children_by_field_name("argument")]
            if any(w.startswith("-") and not w.startswith("--") and "e" in w[1:] for w in words) or (
                "errexit" in words
            ):
                if self.s.set_e_end is None:
                    self.s.set_e_end = st.end_point.row + 1
        self._visit(st, True)

    def _mark_guard(self, st: Node, nested: bool = False) -> None:
        """Remember the source command of a guard statement (`if [ -f L ]; then . L; fi`
        or `[ -f L ] && . L`) so that it counts as guarded and top level."""
        if st.type == "redirected_statement":
            st = st.child_by_field_name("body") or st
        if st.type == "compound_statement":
            for c in st.named_children:
                self._mark_guard(c, True)
            return
        conds: list[Node] = []
        bodies: list[Node] = []
        pure = not nested
        if st.type == "if_statement":
            conds = list(st.children_by_field_name("condition"))
            after_then = False
            for c in st.children:
                if c.type == "then":
                    after_then = True
                elif c.type in ("elif_clause", "else_clause", "fi"):
                    pure = pure and c.type == "fi"
                    break
                elif after_then and c.is_named and c.type != "comment":
                    bodies.append(c)
        elif st.type == "list" and st.child_count == 3 and st.children[1].type == "&&":
            conds, bodies = [st.children[0]], [st.children[2]]
        tested = {p for c in conds for p in self._tested_paths(c)}
        for b in bodies:
            if b.type == "redirected_statement":
                b = b.child_by_field_name("body") or b
            if b.type == "command" and literal(b.child_by_field_name("name")) in (".", "source"):
                args = b.children_by_field_name("argument")
                target = literal(args[0], self.consts) if args else None
                if target and target in tested:
                    self.good_guards.add(b.start_byte)
                    if pure and len(bodies) == 1:
                        self.pure_guards.add(b.start_byte)

    def _tested_paths(self, cond: Node) -> list[str]:
        """Paths tested with -f or -r by `[ ]`, `[[ ]]` or `test`."""
        out: list[str] = []
        if cond.type == "test_command":
            for u in cond.named_children:
                if u.type == "unary_expression":
                    op = u.child_by_field_name("operator") or u.children[0]
                    if op.text in (b"-f", b"-r") and u.named_child_count >= 2:
                        v = literal(u.named_children[-1], self.consts)
                        if v:
                            out.append(v)
        elif cond.type == "command" and literal(cond.child_by_field_name("name")) == "test":
            args = [literal(a, self.consts) for a in cond.children_by_field_name("argument")]
            if len(args) == 2 and args[0] in ("-f", "-r") and args[1]:
                out.append(args[1])
        return out

    # -- events ------------------------------------------------------------
    def _order(self, node: Node) -> tuple[int, ...]:
        if self.call_site is not None:
            return (self.call_site, node.start_byte)
        return (node.start_byte,)

    def _event(self, kind: str, node: Node, top: bool, **kw: object) -> Event:
        ev = Event(kind, node.start_point.row + 1, self._order(node), top, self.stmt_start,
                   final=self.final, **kw)  # type: ignore[arg-type]
        self.s.events.append(ev)
        return ev

    def _comment(self, node: Node) -> None:
        if b"load.sh" in (node.text or b"") and b"secrets" in (node.text or b""):
            self.s.mentions.append(node.start_point.row + 1)

    # -- traversal ---------------------------------------------------------
    def _visit(self, node: Node, top: bool) -> None:
        t = node.type
        if t == "comment":
            if node.parent is not None and node.parent.type != "program":
                self._comment(node)
            return
        if t == "function_definition":
            name = node.child_by_field_name("name")
            body = node.child_by_field_name("body")
            if name is not None and body is not None:
                self.functions[name.text.decode()] = body
            for c in node.children:  # comments inside count as mentions
                if c.type != "compound_statement":
                    continue
                for n in _iter(c):
                    if n.type == "comment":
                        self._comment(n)
            return
        if t == "command":
            self._command(node, top)
            return
        if t == "variable_assignment":
            self._assignment(node, top)
            return
        if t == "declaration_command":
            for c in node.named_children:
                if c.type == "variable_assignment":
                    self._assignment(c, top)
                elif c.type == "variable_name":
                    self.assigned.add(c.text.decode())
            return
        if t in ("simple_expansion", "expansion"):
            self._expansion(node, top)
            for c in node.named_children:
                if c.type not in ("variable_name",):
                    self._visit(c, False)
            return
        if t == "heredoc_redirect":
            start = next((c for c in node.children if c.type == "heredoc_start"), None)
            if start is not None and any(q in start.text for q in (b"'", b'"', b"\\")):
                return  # quoted delimiter: the body is literal
        if t == "for_statement":
            var = node.child_by_field_name("variable")
            for c in node.children_by_field_name("value"):
                self._visit(c, False)
            if var is not None:
                self.assigned.add(var.text.decode())
            body = node.child_by_field_name("body")
            if body is not None:
                self._visit(body, False)
            return
        if t == "arithmetic_expansion":
            return
        keep_top = top and t in ("program", "compound_statement", "redirected_statement")
        if t == "list":
            for i, c in enumerate(node.children):
                self._visit(c, top and i == 0)
            return
        for c in node.children:
            self._visit(c, keep_top)

    def _assignment(self, node: Node, top: bool) -> None:
        value = node.child_by_field_name("value")
        if value is not None:
            self._visit(value, False)
        name = node.child_by_field_name("name")
        if name is None:
            return
        var = name.text.decode()
        self.assigned.add(var)
        lit = literal(value, self.consts) if value is not None else ""
        if lit is not None:
            self.consts[var] = lit
            self.first_words.setdefault(var, set()).add(lit.split()[0] if lit.split() else "")
        else:
            self.consts.pop(var, None)

    def _expansion(self, node: Node, top: bool) -> None:
        names = [c for c in node.named_children if c.type == "variable_name"]
        if not names:
            return
        var = names[0].text.decode()
        if var in self.assigned or var in self.known_env or _exempt(var):
            return
        self._event("env", node, top, detail=var)

    def _command(self, node: Node, top: bool) -> None:
        name_node = node.child_by_field_name("name")
        args = list(node.children_by_field_name("argument"))
        for c in node.children:
            if c.type == "variable_assignment":
                self._assignment(c, False)
        if name_node is not None and name_node.named_children and name_node.named_children[0].type != "word":
            self._visit(name_node, False)
        for a in args:
            self._visit(a, False)
        for c in node.children:  # redirects inside the command (herestrings, >file)
            if c.is_named and c.type not in ("command_name", "variable_assignment") and c not in args:
                self._visit(c, False)
        name = literal(name_node, self.consts)
        words = [literal(a, self.consts) for a in args]
        if name in (".", "source"):
            self._source(node, top, name, args, words)
            return
        if name == "exec":
            i = 0
            while i < len(words) and (words[i] or "").startswith("-"):
                i += 2 if words[i] == "-a" else 1
            if i < len(args):
                self._run_argv(node, top, args[i:], words[i:], via_exec=True)
            return
        if name == "set":
            self._set(node, top, words)
            return
        if name in ("read", "getopts", "mapfile", "readarray", "printf"):
            self._read_targets(name, words)
        if name in self.functions and name not in self.calls:
            self._call(node, name)
            return
        if name_node is not None:
            self._run_argv(node, top, [name_node, *args], [name, *words], via_exec=False)

    def _run_argv(self, node: Node, top: bool, nodes: list[Node], words: list[str | None],
                  *, via_exec: bool) -> None:
        name = words[0]
        first = name.rsplit("/", 1)[-1] if name else None
        var_drop = False
        if nodes[0].type in ("command_name", "simple_expansion", "expansion", "string"):
            # `$AS_AGENT cmd`: a variable that holds "gosu agent" on some path.
            for n in _iter(nodes[0]):
                if n.type == "variable_name":
                    fw = self.first_words.get(n.text.decode(), set())
                    drops = fw & PRIVDROP
                    if drops:
                        first, var_drop = sorted(drops)[0], True
                    break
        if first in PRIVDROP:
            if var_drop:
                rest_idx = list(range(1, len(words)))
                wipe = False
            else:
                rest_idx, wipe = _strip_privdrop(first, words[1:])
                rest_idx = [i + 1 for i in rest_idx]
            self_exec = any(_is_dollar0(nodes[i]) for i in rest_idx[:1]) or (
                self.s.path and any(words[i] == self.s.path for i in rest_idx[:1])
            )
            self._event("privdrop", node, top, detail=first, self_exec=bool(self_exec and via_exec),
                        is_exec=via_exec)
            if wipe:
                self._event("wipe", node, top, detail=node.text.decode(errors="replace").split("\n")[0],
                            is_exec=via_exec)
            if rest_idx:
                tgt = words[rest_idx[0]]
                if tgt and "/" in tgt:
                    self._event("run", node, top, target=tgt, is_exec=via_exec)
            return
        if via_exec:
            detail = node.text.decode(errors="replace").split("\n")[0][:80]
            self_exec = _is_dollar0(nodes[0]) or bool(name and name == self.s.path)
            if name and first in SHELLS and self._shell_run(node, top, words, via_exec, detail):
                return
            if name and "/" in name and not self_exec:
                self._event("run", node, top, target=name, is_exec=True, detail=detail)
            else:
                self._event("exec", node, top, detail=detail, self_exec=self_exec, is_exec=True)
            return
        if name and first in SHELLS:
            self._shell_run(node, top, words, via_exec)
        elif name and "/" in name:
            self._event("run", node, top, target=name, self_exec=name == self.s.path,
                        detail=node.text.decode(errors="replace").split("\n")[0][:80])
        elif name in ("tini", "dumb-init") and len(words) > 1:
            rest = [i for i, w in enumerate(words[1:], 1) if w != "--" and not (w or "-").startswith("-")]
            if rest:
                self._run_argv(node, top, nodes[rest[0]:], words[rest[0]:], via_exec=via_exec)

    def _shell_run(self, node: Node, top: bool, words: list[str | None], via_exec: bool,
                   detail: str = "") -> bool:
        """`sh path ...`: a run event for path. False when there is no script."""
        for w in words[1:]:
            if w is None or w == "-c":
                return False
            if not w.startswith("-"):
                self._event("run", node, top, target=w, is_exec=via_exec, detail=detail,
                            self_exec=w == self.s.path)
                return True
        return False

    def _source(self, node: Node, top: bool, name: str, args: list[Node], words: list[str | None]) -> None:
        target = words[0] if words else None
        raw = args[0].text.decode(errors="replace") if args else ""
        is_loader = (target or raw).endswith(LOADER_TAIL) or (
            target is None and raw.rstrip("\"'}").endswith("load.sh")
        )
        if is_loader:
            good = node.start_byte in self.good_guards
            parent = node.parent
            if parent is not None and parent.type == "redirected_statement":
                parent = parent.parent
            bare = parent is not None and parent.type == "program"
            self._event(
                "guard", node, top or good, detail=node.text.decode(errors="replace"),
                target=target, guarded=good, relative=bool(target) and not target.startswith("/"),
                uses_source=name == "source", pure=bare or node.start_byte in self.pure_guards,
            )
        else:
            self._event("source", node, top, target=target, uses_source=name == "source",
                        detail=node.text.decode(errors="replace")[:80])

    def _set(self, node: Node, top: bool, words: list[str | None]) -> None:
        on = None
        for i, w in enumerate(words):
            if not w:
                continue
            if w[0] in "-+" and not w.startswith("--") and "x" in w[1:]:
                on = w[0] == "-"
            elif w == "xtrace" and i > 0 and words[i - 1] in ("-o", "+o"):
                on = words[i - 1] == "-o"
        if on is not None:
            self._event("xtrace", node, top, detail="on" if on else "off")

    def _read_targets(self, name: str, words: list[str | None]) -> None:
        if name == "printf":
            if len(words) >= 2 and words[0] == "-v" and words[1]:
                self.assigned.add(words[1])
            return
        if name == "getopts":
            if len(words) >= 2 and words[1]:
                self.assigned.add(words[1])
            return
        skip = False
        for w in words:
            if skip:
                skip = False
                continue
            if w is None:
                continue
            if w.startswith("-"):
                skip = w in ("-p", "-d", "-n", "-N", "-t", "-u", "-a", "-C", "-c", "-O", "-s")
                if w == "-a":
                    skip = False  # -a NAME: NAME is the target, keep it
                continue
            self.assigned.add(w)

    def _call(self, node: Node, name: str) -> None:
        body = self.functions[name]
        outer = self.call_site
        self.calls.append(name)
        if outer is None:
            self.call_site = node.start_byte
        try:
            self._visit(body, False)
        finally:
            self.calls.pop()
            self.call_site = outer
