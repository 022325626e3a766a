"""Mutation testing for snsd: change one thing in a module, run its tests, see whether they notice.

    python scripts/mutate.py MODULE=TEST[,TEST...] [MODULE=TEST[,TEST...] ...]
    python scripts/mutate.py snsd/spool.py=tests/test_spool.py --list      # the mutants, not run

Each MODULE is mutated on its own, one mutant at a time, and only its TEST files run against each
mutant (with ``-x``: the first failing test kills it), so a run stays bounded.  The mutants come
from the module's AST:

* comparisons flipped or moved off their boundary (``<`` -> ``>=`` and ``<=``, ``==`` -> ``!=``,
  ``in`` -> ``not in``, ``is`` -> ``is not``), ``not`` dropped, ``and``/``or`` swapped;
* statements deleted (replaced by ``pass``), arithmetic swapped (``+``/``-``, ``*``/``/``),
  ``min``/``max`` swapped;
* number constants changed (n -> n + 1) and booleans flipped;
* regex edits in every pattern handed to ``re``: an escaped ``\\.`` unescaped, ``+`` -> ``*``,
  ``?`` dropped, ``{m,n}`` widened, ``.`` added to a character class, an alternative dropped,
  anchors dropped.

A mutant is *killed* when a test fails (or the run exceeds its time limit: an endless loop), and
*survives* when every test passes.  Mutants that no test could kill because they do not change
behaviour (equivalent mutants) are listed with the reason in ``scripts/mutation-equivalents.txt``
and left out of the score.  Docstrings and annotations are never mutated.

The mutated module is never written to disk: a fork server imports pytest and the third-party
libraries once, and each child installs an import hook that serves the mutant's source for
the module's name, then runs pytest in-process.  Children run one at a time: the machine is shared.
"""

from __future__ import annotations

import argparse
import ast
import importlib.abc
import importlib.util
import os
import re
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EQUIVALENTS = ROOT / "scripts" / "mutation-equivalents.txt"

# Imported once by the fork server so each child starts fast.  Never the reactor: an epoll
# object made before fork() would be shared by every child.  Never snsd: each child imports it
# afresh, mutant included.
PRELOAD = (
    "pytest",
    "_pytest.python",
    "cryptography.x509",
    "cryptography.hazmat.primitives.asymmetric.rsa",
    "twisted.internet.defer",
    "twisted.internet.task",
    "twisted.web.server",
    "twisted.web.resource",
    "twisted.logger",
    "twisted.application.service",
    # not klein: importing it installs the reactor
    "treq.testing",
    "prometheus_client",
    "orjson",
    "attrs",
)

_FLIPS: dict[type, tuple[type, ...]] = {
    ast.Lt: (ast.GtE, ast.LtE),
    ast.LtE: (ast.Gt, ast.Lt),
    ast.Gt: (ast.LtE, ast.GtE),
    ast.GtE: (ast.Lt, ast.Gt),
    ast.Eq: (ast.NotEq,),
    ast.NotEq: (ast.Eq,),
    ast.In: (ast.NotIn,),
    ast.NotIn: (ast.In,),
    ast.Is: (ast.IsNot,),
    ast.IsNot: (ast.Is,),
}
_ARITHMETIC = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult}
_OP_TEXT = {
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.In: "in",
    ast.NotIn: "not in",
    ast.Is: "is",
    ast.IsNot: "is not",
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
}
_DELETABLE = (
    ast.Expr,
    ast.Assign,
    ast.AugAssign,
    ast.AnnAssign,
    ast.Raise,
    ast.Return,
    ast.If,
    ast.For,
    ast.While,
    ast.Delete,
    ast.Assert,
)
_RE_FUNCTIONS = {"compile", "fullmatch", "match", "search", "sub", "subn", "split", "findall", "finditer"}


@dataclass(frozen=True)
class Mutant:
    index: int
    line: int
    kind: str  # the operator family, for the summary
    key: str  # stable across unrelated edits: where, what, and an ordinal


# -- regex edits ----------------------------------------------------------------------------------


def regex_edits(pattern: str) -> list[tuple[str, str]]:
    """(description, edited pattern) for each regex edit of ``pattern``; edits that do not compile
    (when the original does) are left out: they test nothing."""
    edits: list[tuple[str, str]] = []

    def at(i: int, remove: int, insert: str, what: str) -> None:
        edits.append((what, pattern[:i] + insert + pattern[i + remove :]))

    i = 0
    depth_class = False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            if pattern[i + 1] == "." and not depth_class:
                at(i, 2, ".", "unescape \\.")
            i += 2
            continue
        if c == "[" and not depth_class:
            depth_class = True
            end = _class_end(pattern, i)
            body = pattern[i + 1 : end]
            if end > 0 and not body.startswith("^") and "." not in body:
                at(i + 1, 0, ".", f"add . to [{body}]")
            if end > 0 and len(body) > 1:
                at(i, end - i + 1, f"[{_drop_last_member(body)}]", f"drop last member of [{body}]")
        elif c == "]" and depth_class:
            depth_class = False
        elif not depth_class:
            if c == "+":
                at(i, 1, "*", "+ -> *")
            elif c == "?" and i > 0 and pattern[i - 1] not in "(*+?}":
                at(i, 1, "", "drop ?")
            elif c == "{":
                m = re.match(r"\{(\d+),(\d+)\}", pattern[i:])
                if m:
                    at(i, m.end(), f"{{{m.group(1)},{int(m.group(2)) + 1}}}", f"{m.group(0)} widened")
            elif c in "^$":
                at(i, 1, "", f"drop {c}")
        i += 1
    alternatives = _top_level_split(pattern)
    if len(alternatives) > 1:
        for n in range(len(alternatives)):
            rest = "|".join(a for k, a in enumerate(alternatives) if k != n)
            edits.append((f"drop alternative {alternatives[n][:30]!r}", rest))
    try:
        re.compile(pattern)
    except re.error:
        return edits  # a fragment (joined into a pattern elsewhere): keep every edit
    valid = []
    for what, edited in edits:
        try:
            re.compile(edited)
        except re.error:
            continue
        valid.append((what, edited))
    return valid


def _class_end(pattern: str, start: int) -> int:
    i = start + 1
    if i < len(pattern) and pattern[i] == "^":
        i += 1
    if i < len(pattern) and pattern[i] == "]":
        i += 1
    while i < len(pattern):
        if pattern[i] == "\\":
            i += 2
            continue
        if pattern[i] == "]":
            return i
        i += 1
    return -1


def _drop_last_member(body: str) -> str:
    if len(body) >= 3 and body[-2] == "-":
        return body[:-3]
    if body.endswith("-"):
        return body[:-1]
    return body[:-1]


def _top_level_split(pattern: str) -> list[str]:
    parts, depth, current, i = [], 0, "", 0
    in_class = False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            current += pattern[i : i + 2]
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "|" and depth == 0:
            parts.append(current)
            current = ""
            i += 1
            continue
        current += c
        i += 1
    parts.append(current)
    return parts


# -- the AST mutator ------------------------------------------------------------------------------


class _Mutator(ast.NodeTransformer):
    """Walks the module in a fixed order, numbering every possible mutation; applies number
    ``target`` (None: applies nothing, only counts)."""

    def __init__(self, source: str, target: int | None):
        self.lines = source.splitlines()
        self.target = target
        self.count = 0
        self.found: list[tuple[int, str, str, str]] = []  # (line, kind, where, what)
        self.scope: list[str] = []
        self.regex_depth = 0

    # numbering

    def _site(self, node: ast.AST, kind: str, what: str) -> bool:
        """Count one mutation; True when it is the one to apply."""
        index = self.count
        self.count += 1
        where = ".".join(self.scope) or "<module>"
        if self.target is None:
            self.found.append((getattr(node, "lineno", 0), kind, where, what))
        return index == self.target

    def _text(self, node: ast.AST) -> str:
        """The node's source on one line, for the mutant's key (only while counting: slow)."""
        if self.target is not None:
            return ""
        first, last = node.lineno - 1, node.end_lineno - 1
        if first == last:
            text = self.lines[first][node.col_offset : node.end_col_offset]
        else:
            text = " ".join(
                [
                    self.lines[first][node.col_offset :],
                    *self.lines[first + 1 : last],
                    self.lines[last][: node.end_col_offset],
                ]
            )
        return " ".join(text.split())[:80]

    # scopes, and what is never mutated

    def visit_FunctionDef(self, node):
        self.scope.append(node.name)
        node.decorator_list = [self.visit(d) for d in node.decorator_list]
        node.args = self._visit_arguments(node.args)
        node.body = self._visit_body(node.body)
        self.scope.pop()
        return node

    visit_AsyncFunctionDef = visit_FunctionDef

    def _visit_arguments(self, args: ast.arguments) -> ast.arguments:
        args.defaults = [self.visit(d) for d in args.defaults]
        args.kw_defaults = [self.visit(d) if d is not None else None for d in args.kw_defaults]
        return args

    def visit_ClassDef(self, node):
        self.scope.append(node.name)
        node.bases = [self.visit(b) for b in node.bases]
        node.body = self._visit_body(node.body)
        self.scope.pop()
        return node

    def visit_Module(self, node):
        node.body = self._visit_body(node.body)
        return node

    def visit_AnnAssign(self, node):
        if node.value is not None:
            node.value = self.visit(node.value)
        return node

    def visit_ImportFrom(self, node):
        return node

    def visit_Import(self, node):
        return node

    def _visit_body(self, body: list[ast.stmt]) -> list[ast.stmt]:
        new: list[ast.stmt] = []
        for position, statement in enumerate(body):
            if position == 0 and _is_docstring(statement):
                new.append(statement)
                continue
            if self._deletable(statement):
                if isinstance(statement, (ast.If, ast.While)):
                    what = f"delete {type(statement).__name__.lower()} {self._text(statement.test)}"
                elif isinstance(statement, ast.For):
                    what = f"delete for {self._text(statement.target)} in {self._text(statement.iter)}"
                else:
                    what = f"delete {self._text(statement)}"
                if self._site(statement, "delete statement", what):
                    new.append(ast.copy_location(ast.Pass(), statement))
                    continue
            new.append(self.visit(statement))
        return new or [ast.Pass()]

    def _deletable(self, statement: ast.stmt) -> bool:
        if not isinstance(statement, _DELETABLE) or _is_main_guard(statement):
            return False
        if isinstance(statement, ast.AnnAssign) and statement.value is None:
            return False  # a dataclass field's declaration
        # A module-level name deleted only raises NameError on first use: it tests nothing.
        return self.scope or not isinstance(statement, (ast.Assign, ast.AnnAssign))

    def generic_visit(self, node):
        for field, old_value in ast.iter_fields(node):
            if isinstance(old_value, list) and old_value and isinstance(old_value[0], ast.stmt):
                setattr(node, field, self._visit_body(old_value))
            elif isinstance(old_value, list):
                setattr(node, field, [self.visit(v) if isinstance(v, ast.AST) else v for v in old_value])
            elif isinstance(old_value, ast.AST):
                setattr(node, field, self.visit(old_value))
        return node

    # the mutations

    def visit_Compare(self, node):
        text = self._text(node)
        for position, op in enumerate(node.ops):
            for replacement in _FLIPS.get(type(op), ()):
                what = f"{text}: {_OP_TEXT[type(op)]} -> {_OP_TEXT[replacement]}"
                if self._site(node, "comparison", what):
                    node.ops = list(node.ops)
                    node.ops[position] = replacement()
        return self.generic_visit(node)

    def visit_BoolOp(self, node):
        swapped = ast.Or if isinstance(node.op, ast.And) else ast.And
        what = f"{self._text(node)}: {'and -> or' if swapped is ast.Or else 'or -> and'}"
        if self._site(node, "and/or", what):
            node.op = swapped()
        return self.generic_visit(node)

    def visit_UnaryOp(self, node):
        if isinstance(node.op, ast.Not):
            if self._site(node, "not", f"drop not: {self._text(node)}"):
                return self.visit(node.operand)
        return self.generic_visit(node)

    def visit_BinOp(self, node):
        replacement = _ARITHMETIC.get(type(node.op))
        if replacement is not None and not _is_string_format(node):
            what = f"{self._text(node)}: {_OP_TEXT[type(node.op)]} -> {_OP_TEXT[replacement]}"
            if self._site(node, "arithmetic", what):
                node.op = replacement()
        return self.generic_visit(node)

    def visit_Call(self, node):
        func = node.func
        if isinstance(func, ast.Name) and func.id in ("min", "max"):
            other = "max" if func.id == "min" else "min"
            if self._site(node, "min/max", f"{self._text(node)}: {func.id} -> {other}"):
                node.func = ast.copy_location(ast.Name(id=other, ctx=ast.Load()), func)
        if _is_log_call(node):
            return node  # wording of a log line: its deletion is a statement mutant already
        is_regex = (
            isinstance(func, ast.Attribute)
            and isinstance(func.value, ast.Name)
            and func.value.id == "re"
            and func.attr in _RE_FUNCTIONS
        )
        if is_regex and node.args:
            self.regex_depth += 1
            node.args[0] = self.visit(node.args[0])
            self.regex_depth -= 1
            node.args[1:] = [self.visit(a) for a in node.args[1:]]
            node.keywords = [self.visit(k) for k in node.keywords]
            node.func = self.visit(node.func)
            return node
        return self.generic_visit(node)

    def visit_Constant(self, node):
        value = node.value
        if isinstance(value, bool):
            if self._site(node, "constant", f"{value} -> {not value}"):
                return ast.copy_location(ast.Constant(not value), node)
        elif isinstance(value, (int, float)):
            if self._site(node, "constant", f"{self._text(node)} -> {value + 1!r}"):
                return ast.copy_location(ast.Constant(value + 1), node)
        elif isinstance(value, str) and self.regex_depth:
            for what, edited in regex_edits(value):
                if self._site(node, "regex", f"{value[:60]!r}: {what}"):
                    return ast.copy_location(ast.Constant(edited), node)
        return node


def _is_docstring(statement: ast.stmt) -> bool:
    return (
        isinstance(statement, ast.Expr)
        and isinstance(statement.value, ast.Constant)
        and isinstance(statement.value.value, str)
    )


def _is_main_guard(statement: ast.stmt) -> bool:
    return isinstance(statement, ast.If) and "__main__" in ast.dump(statement.test)


def _is_log_call(node: ast.Call) -> bool:
    func = node.func
    return (
        isinstance(func, ast.Attribute)
        and isinstance(func.value, ast.Name)
        and func.value.id == "log"
        and func.attr in ("debug", "info", "warn", "error", "critical", "failure")
    )


def _is_string_format(node: ast.BinOp) -> bool:
    return isinstance(node.left, ast.Constant) and isinstance(node.left.value, str)


def mutants_of(source: str) -> list[Mutant]:
    counter = _Mutator(source, None)
    counter.visit(ast.parse(source))
    seen: Counter[str] = Counter()
    mutants = []
    for index, (line, kind, where, what) in enumerate(counter.found):
        base = f"{where}: {what}"
        seen[base] += 1
        key = base if seen[base] == 1 else f"{base} #{seen[base]}"
        mutants.append(Mutant(index, line, kind, key))
    return mutants


def mutated_source(source: str, index: int) -> str | None:
    """The source of mutant ``index``; None when it does not compile (e.g. a deleted assignment a
    ``nonlocal`` needs): such a mutant tests nothing and is not counted."""
    tree = _Mutator(source, index).visit(ast.parse(source))
    text = ast.unparse(ast.fix_missing_locations(tree))
    try:
        compile(text, "<mutant>", "exec")
    except SyntaxError:
        return None
    return text


# -- running tests against a mutant -------------------------------------------------------------


class _MutantFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves ``source`` for ``module_name``; every other import goes the usual way."""

    def __init__(self, module_name: str, path: Path, source: str):
        self.module_name, self.path, self.source = module_name, path, source

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.module_name:
            return None
        is_package = self.path.name == "__init__.py"
        return importlib.util.spec_from_file_location(
            fullname,
            self.path,
            loader=self,
            submodule_search_locations=[str(self.path.parent)] if is_package else None,
        )

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        exec(compile(self.source, str(self.path), "exec"), module.__dict__)


def _module_name(path: Path) -> str:
    relative = path.resolve().relative_to(ROOT).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def run_tests(tests: list[str], module: Path | None, source: str | None, timeout: float, log_path: Path) -> str:
    """Fork; in the child, serve ``source`` as ``module`` and run ``tests``.  'killed', 'survived',
    'timeout' (killed too) or 'error' (the tests could not run: collection failed)."""
    pid = os.fork()
    if pid == 0:  # the child
        try:
            os.setsid()
            fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            if module is not None:
                sys.meta_path.insert(0, _MutantFinder(_module_name(module), module, source))
            import pytest

            code = pytest.main(["-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", *tests])
            os._exit(int(code))
        except BaseException:
            import traceback

            traceback.print_exc()
            os._exit(99)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "timeout"
        time.sleep(0.02)
    code = os.waitstatus_to_exitcode(status)
    if code == 0:
        return "survived"
    if code == 1:
        return "killed"
    # 2: interrupted, 3: internal error, 4: usage error, 5: no tests; 99: our own failure.  A
    # mutant that breaks the import of its module fails collection (2): that kills it too.
    return "killed" if code == 2 else "error"


# -- the command ----------------------------------------------------------------------------------


def load_equivalents(path: Path = EQUIVALENTS) -> dict[tuple[str, str], str]:
    """``file :: key :: reason`` lines -> {(file, key): reason}."""
    table: dict[tuple[str, str], str] = {}
    if not path.exists():
        return table
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split(" :: ")]
        if len(parts) != 3 or not all(parts):
            raise SystemExit(f"{path}:{number}: expected 'file :: mutant :: reason'")
        table[(parts[0], parts[1])] = parts[2]
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="+", metavar="MODULE=TEST[,TEST...]")
    parser.add_argument("--list", action="store_true", help="list the mutants without running them")
    parser.add_argument("--only", help="run only mutants whose key contains this text")
    parser.add_argument("--show-killed", action="store_true")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    targets = []
    for spec in args.targets:
        module, sep, tests = spec.partition("=")
        if not sep or not tests:
            parser.error(f"{spec!r}: expected MODULE=TEST[,TEST...]")
        targets.append((Path(module), [t for t in tests.split(",") if t]))
    equivalents = load_equivalents()
    existing: set[tuple[str, str]] = set()  # every mutant of the modules run, --only or not

    if args.list:
        for module, _ in targets:
            source = module.read_text()
            for m in mutants_of(source):
                mark = " [equivalent]" if (str(module), m.key) in equivalents else ""
                print(f"{module}:{m.line}: [{m.kind}] {m.key}{mark}")
        return 0

    for name in PRELOAD:
        try:
            __import__(name)
        except ImportError:
            pass
    assert "twisted.internet.reactor" not in sys.modules, "a preloaded module installed the reactor"
    assert not any(n == "snsd" or n.startswith("snsd.") for n in sys.modules), "snsd must not be preloaded"
    log_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"snsd-mutate-{os.getpid()}"
    log_dir.mkdir(parents=True, exist_ok=True)
    # The tests' RSA keys, made once for the whole run instead of once per mutant.
    os.environ["SNSD_TEST_KEY_DIR"] = str(log_dir)

    summary = []
    by_kind: Counter[tuple[str, str]] = Counter()
    for module, tests in targets:
        source = module.read_text()
        started = time.monotonic()
        baseline = run_tests(tests, None, None, 600, log_dir / "baseline.log")
        took = time.monotonic() - started
        if baseline != "survived":
            print(f"{module}: the tests fail without any mutant ({baseline}); see {log_dir / 'baseline.log'}")
            return 2
        timeout = 3 * took + 10
        mutants = mutants_of(source)
        existing.update((str(module), m.key) for m in mutants)
        if args.only:
            mutants = [m for m in mutants if args.only in m.key]
        killed = survived = errors = excluded = invalid = 0
        print(f"== {module}: {len(mutants)} mutants, tests {' '.join(tests)} (baseline {took:.1f} s)", flush=True)
        results: list[tuple[Mutant, str]] = []
        for m in mutants:
            if (str(module), m.key) in equivalents:
                results.append((m, "equivalent"))
                continue
            mutant_source = mutated_source(source, m.index)
            if mutant_source is None:
                results.append((m, "invalid"))
                continue
            outcome = run_tests(tests, module, mutant_source, timeout, log_dir / "mutant.log")
            results.append((m, outcome))
            _report(module, m, outcome, args.show_killed)
        for m, outcome in results:
            by_kind[(m.kind, outcome)] += 1
            if outcome == "invalid":
                invalid += 1
                continue
            if outcome == "equivalent":
                excluded += 1
            elif outcome in ("killed", "timeout"):
                killed += 1
            elif outcome == "survived":
                survived += 1
            else:
                errors += 1
        scored = killed + survived
        score = 100.0 * killed / scored if scored else 100.0
        summary.append((str(module), score, killed, survived, excluded, errors))
        print(
            f"   {module}: {score:.1f} % ({killed} killed, {survived} survived, "
            f"{excluded} equivalent excluded, {errors} errors, {invalid} not compilable, not counted)",
            flush=True,
        )

    print("\n== score per file (killed / (killed + survived); equivalents excluded)")
    for name, score, killed, survived, excluded, errors in summary:
        print(f"{score:6.1f} %  {name}  killed {killed}, survived {survived}, excluded {excluded}, errors {errors}")
    groups: dict[str, list[int]] = {}
    for name, _, killed, survived, _, _ in summary:
        folder = str(Path(name).parent) + "/"
        groups.setdefault(folder, [0, 0])
        groups[folder][0] += killed
        groups[folder][1] += survived
    for folder, (killed, survived) in sorted(groups.items()):
        if killed + survived:
            print(f"{100.0 * killed / (killed + survived):6.1f} %  {folder}* (the files above in that folder)")
    regex_killed = by_kind[("regex", "killed")] + by_kind[("regex", "timeout")]
    regex_total = regex_killed + by_kind[("regex", "survived")]
    if regex_total:
        print(f"{100.0 * regex_killed / regex_total:6.1f} %  regex edits ({regex_killed} of {regex_total})")
    listed = {k for k in equivalents if k[0] in {str(m) for m, _ in targets}}
    if listed:
        print("\n== excluded as equivalent (scripts/mutation-equivalents.txt)")
        for file, key in sorted(listed):
            state = "" if (file, key) in existing else "  [STALE: no such mutant any more]"
            print(f"{file} :: {key}\n    why: {equivalents[(file, key)]}{state}")
    return 0


def _report(module: Path, m: Mutant, outcome: str, show_killed: bool) -> None:
    if outcome == "survived" or outcome == "error" or show_killed:
        print(f"   {outcome.upper():8} {module}:{m.line} [{m.kind}] {m.key}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
