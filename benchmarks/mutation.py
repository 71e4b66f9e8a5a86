"""Mutation testing: do the tests notice when the maths is changed?

Each mutant is one small textual change to one source line (an operator swapped, a constant
nudged, a condition forced, a call dropped), generated mechanically from the code tokens and the
syntax tree of a file, so docstrings, comments and strings are never touched. Every mutant is
applied to a temporary copy of ``src/`` (the real files are never edited), which goes first on
``PYTHONPATH`` while the mirroring test files run with ``pytest -x -q``. A mutant the tests fail
on is *killed*; one they pass on *survived* and is printed with its diff: either an equivalent
change, or a behaviour no test pins.

Run::

    python benchmarks/mutation.py --files src/autoenc/functional.py src/autoenc/likelihoods.py
    python benchmarks/mutation.py --files src/autoenc/models/vae.py --within GaussianVAE.loss
    python benchmarks/mutation.py --files src/autoenc/functional.py --list
    python benchmarks/mutation.py --files src/autoenc/likelihoods.py --limit 40 --json out.json

The tests for ``src/<pkg>/a/b.py`` default to the first of ``tests/test_b.py``,
``tests/a/test_b.py`` and ``tests/test_a.py`` that exists; ``--tests`` overrides. Set
``OMP_NUM_THREADS=1`` on a shared machine (the default when it is unset).

Mutation operators:

* binary operators ``+ - * / // ** %`` swapped (``+``/``-``, ``*``/``/``, ``**``/``*``, ...),
  unary ``-`` dropped, ``not`` dropped, ``and``/``or`` swapped;
* comparisons: ``<`` to ``<=`` and ``>=``, ``==`` to ``!=``, and so on;
* the names ``exp``/``log``, ``expm1``/``exp``, ``log1p``/``log``, ``sum``/``mean``,
  ``min``/``max``, ``amin``/``amax``, ``sigmoid``/``tanh`` swapped where called or looked up as
  an attribute, ``True``/``False`` swapped;
* numbers: an int ``n`` becomes ``n + 1`` (so ``x[0]`` becomes ``x[1]``), a float ``x`` becomes
  ``1.01 * x`` (``0.0`` becomes ``1.0``);
* the test of an ``if``, ``elif``, ``while`` or conditional expression forced to ``True`` and
  to ``False``;
* calls dropped: ``t.detach()``, ``t.clamp(...)``, ``t.pow(2)``, ``t.abs()``, ``t.to(...)`` and
  friends become ``t``; ``torch.abs(t)``, ``torch.exp(t)`` and friends become ``t``.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import io
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tokenize
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_BINARY_SWAPS = {
    "+": ["-"],
    "-": ["+"],
    "*": ["/"],
    "/": ["*"],
    "//": ["/"],
    "**": ["*"],
    "%": ["*"],
    "+=": ["-="],
    "-=": ["+="],
    "*=": ["/="],
    "/=": ["*="],
}
_COMPARE_SWAPS = {
    "<": ["<=", ">="],
    "<=": ["<", ">"],
    ">": [">=", "<="],
    ">=": [">", "<"],
    "==": ["!="],
    "!=": ["=="],
}
_NAME_SWAPS = {
    "exp": "log",
    "log": "exp",
    "expm1": "exp",
    "log1p": "log",
    "sum": "mean",
    "mean": "sum",
    "min": "max",
    "max": "min",
    "amin": "amax",
    "amax": "amin",
    "sigmoid": "tanh",
    "tanh": "sigmoid",
}
# Methods whose call ``t.name(...)`` is replaced by ``t``.
_DROPPED_METHODS = {
    "detach",
    "clamp",
    "clamp_min",
    "clamp_max",
    "pow",
    "abs",
    "to",
    "float",
    "double",
    "contiguous",
}
_BRACKETS = {"(", ")", "[", "]", "{", "}", ","}
# Functions ``torch.name(t)`` (or ``F.name(t)``) replaced by their argument.
_DROPPED_FUNCTIONS = {"abs", "exp", "log", "sigmoid", "tanh", "sqrt", "expm1", "log1p"}


@dataclass
class Mutant:
    """One change: the source between ``start`` and ``end`` (``(line, col)``, 1-based lines)
    replaced by ``new``."""

    path: str
    start: tuple[int, int]
    end: tuple[int, int]
    old: str
    new: str
    kind: str

    @property
    def line(self) -> int:
        return self.start[0]

    def describe(self) -> str:
        return f"{self.path}:{self.line}: {self.kind}: {self.old!r} -> {self.new!r}"


@dataclass
class Result:
    mutant: Mutant
    status: str  # "killed", "survived", "timeout"
    seconds: float
    diff: str


# --- generating mutants


def _offsets(source: str) -> list[int]:
    """Character offset of the start of every line (index 0 is line 1)."""
    starts, total = [], 0
    for line in source.splitlines(keepends=True):
        starts.append(total)
        total += len(line)
    starts.append(total)
    return starts


def _segment(source: str, starts: list[int], start: tuple[int, int], end: tuple[int, int]) -> str:
    return source[starts[start[0] - 1] + start[1] : starts[end[0] - 1] + end[1]]


def _splice(source: str, mutant: Mutant) -> str:
    starts = _offsets(source)
    a = starts[mutant.start[0] - 1] + mutant.start[1]
    b = starts[mutant.end[0] - 1] + mutant.end[1]
    return source[:a] + mutant.new + source[b:]


def _span(node: ast.AST) -> tuple[tuple[int, int], tuple[int, int]]:
    return (node.lineno, node.col_offset), (node.end_lineno, node.end_col_offset)


def _qualnames(tree: ast.Module) -> list[tuple[int, int, str]]:
    """``(first line, last line, qualified name)`` of every function and class."""
    out: list[tuple[int, int, str]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                first = min([child.lineno] + [d.lineno for d in child.decorator_list])
                out.append((first, child.end_lineno, name))
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return out


def _annotation_spans(tree: ast.Module) -> set[tuple[int, int]]:
    """Token positions inside annotations, which no mutant should touch."""
    spans = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            for arg in args.posonlyargs + args.args + args.kwonlyargs:
                if arg.annotation is not None:
                    spans.append(_span(arg.annotation))
            for arg in (args.vararg, args.kwarg):
                if arg is not None and arg.annotation is not None:
                    spans.append(_span(arg.annotation))
            if node.returns is not None:
                spans.append(_span(node.returns))
        elif isinstance(node, ast.AnnAssign):
            spans.append(_span(node.annotation))
    return spans


def _inside(pos: tuple[int, int], spans: list) -> bool:
    return any(a <= pos < b for a, b in spans)


def _operator_tokens(tree: ast.Module, tokens: list[tokenize.TokenInfo]) -> dict:
    """Map the position of every operator token that the syntax tree says is an operator (not
    the ``*`` of ``*args`` or of a keyword-only marker) to its kind."""
    ops = [t for t in tokens if t.type == tokenize.OP or t.string in ("and", "or", "not", "is")]
    kinds: dict[tuple[int, int], str] = {}

    def between(a: tuple[int, int], b: tuple[int, int], kind: str, only: set | None = None):
        for t in ops:
            inside = a <= t.start and t.end <= b and t.string not in _BRACKETS
            if inside and (only is None or t.string in only):
                kinds[t.start] = kind

    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp):
            between(_span(node.left)[1], _span(node.right)[0], "binary")
        elif isinstance(node, ast.AugAssign):
            between(_span(node.target)[1], _span(node.value)[0], "binary")
        elif isinstance(node, ast.Compare):
            parts = [node.left, *node.comparators]
            for left, right in itertools.pairwise(parts):
                between(_span(left)[1], _span(right)[0], "compare", set(_COMPARE_SWAPS))
        elif isinstance(node, ast.BoolOp):
            for left, right in itertools.pairwise(node.values):
                between(_span(left)[1], _span(right)[0], "boolean", {"and", "or"})
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            kinds[(node.lineno, node.col_offset)] = "unary"
    return kinds


def generate(path: Path, *, within: list[str] | None = None) -> list[Mutant]:
    """Every mutant of one file, in source order, each of which still compiles."""
    source = path.read_text()
    rel = _relative(path)
    tree = ast.parse(source)
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    starts = _offsets(source)
    annotations = _annotation_spans(tree)
    docstrings = _docstring_spans(tree)
    op_kinds = _operator_tokens(tree, tokens)
    mutants: list[Mutant] = []

    def add(start, end, new: str, kind: str) -> None:
        old = _segment(source, starts, start, end)
        if old != new:
            mutants.append(Mutant(rel, start, end, old, new, kind))

    # Token mutants. Python 3.12 tokenizes f-strings; their insides are messages, not maths.
    fstring_start = getattr(tokenize, "FSTRING_START", None)
    fstring_end = getattr(tokenize, "FSTRING_END", None)
    depth = 0
    previous = None
    for i, tok in enumerate(tokens):
        if fstring_start is not None and tok.type == fstring_start:
            depth += 1
        elif fstring_end is not None and tok.type == fstring_end:
            depth -= 1
        if depth or _inside(tok.start, annotations) or _inside(tok.start, docstrings):
            previous = tok
            continue
        following = tokens[i + 1] if i + 1 < len(tokens) else None
        kind = op_kinds.get(tok.start)
        if kind == "binary":
            for new in _BINARY_SWAPS.get(tok.string, []):
                add(tok.start, tok.end, new, "operator")
        elif kind == "compare":
            for new in _COMPARE_SWAPS[tok.string]:
                add(tok.start, tok.end, new, "comparison")
        elif kind == "boolean":
            add(tok.start, tok.end, "or" if tok.string == "and" else "and", "boolean")
        elif kind == "unary":
            add(tok.start, tok.end, "", "unary minus dropped")
        elif tok.type == tokenize.NUMBER:
            new = _nudge(tok.string)
            if new is not None:
                add(tok.start, tok.end, new, "number")
        elif tok.type == tokenize.NAME and tok.string in ("True", "False"):
            add(tok.start, tok.end, "False" if tok.string == "True" else "True", "boolean")
        elif (
            tok.type == tokenize.NAME
            and tok.string in _NAME_SWAPS
            and previous is not None
            and previous.string not in ("def", "class")
            and (previous.string == "." or (following is not None and following.string == "("))
        ):
            add(tok.start, tok.end, _NAME_SWAPS[tok.string], "name")
        previous = tok

    # Syntax-tree mutants.
    for node in ast.walk(tree):
        if isinstance(node, (ast.If, ast.While, ast.IfExp)):
            start, end = _span(node.test)
            for forced in ("True", "False"):
                add(start, end, forced, f"condition forced {forced}")
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            start, end = _span(node)
            add(start, end, _segment(source, starts, *_span(node.operand)), "not dropped")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            start, end = _span(node)
            func = node.func
            receiver = _segment(source, starts, *_span(func.value))
            is_module = isinstance(func.value, ast.Name) and func.value.id in ("torch", "F")
            if is_module and func.attr in _DROPPED_FUNCTIONS and len(node.args) == 1:
                add(start, end, _segment(source, starts, *_span(node.args[0])), "call dropped")
            elif not is_module and func.attr in _DROPPED_METHODS and "\n" not in receiver:
                add(start, end, receiver, f".{func.attr}() dropped")

    if within:
        ranges = [(a, b) for a, b, name in _qualnames(tree) if any(w == name for w in within)]
        if not ranges:
            names = sorted({name for _, _, name in _qualnames(tree)})
            raise SystemExit(f"--within matched nothing in {rel}; names there: {names}")
        mutants = [m for m in mutants if any(a <= m.line <= b for a, b in ranges)]

    seen, unique = set(), []
    for m in sorted(mutants, key=lambda m: (m.start, m.kind, m.new)):
        key = (m.start, m.end, m.new)
        if key in seen:
            continue
        seen.add(key)
        try:
            compile(_splice(source, m), rel, "exec")
        except SyntaxError:
            continue
        unique.append(m)
    return unique


def _docstring_spans(tree: ast.Module) -> list:
    spans = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                spans.append(_span(body[0]))
    return spans


def _nudge(text: str) -> str | None:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None
    if isinstance(value, complex):
        return None
    if isinstance(value, int):
        return str(value + 1)
    if value == 0.0:
        return "1.0"
    return repr(value * 1.01)


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


# --- running


def _default_tests(path: Path) -> list[str]:
    """The mirroring test file(s) of a source file under ``src/<package>/``."""
    parts = path.resolve().relative_to(ROOT / "src").parts[1:]  # below the package
    stem = Path(parts[-1]).stem
    folders = parts[:-1]
    candidates = [ROOT / "tests" / f"test_{stem}.py"]
    if folders:
        candidates.append(ROOT / "tests" / Path(*folders) / f"test_{stem}.py")
        candidates.append(ROOT / "tests" / f"test_{folders[-1]}.py")
    for candidate in candidates:
        if candidate.exists():
            return [str(candidate.relative_to(ROOT))]
    raise SystemExit(f"no test file mirrors {path}; tried {candidates}; pass --tests")


class _Sandbox:
    """A private copy of ``src/`` that one mutant at a time is written into."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="mutation-"))
        shutil.copytree(
            ROOT / "src", self.dir / "src", ignore=shutil.ignore_patterns("__pycache__")
        )
        (self.dir / "hypothesis").mkdir()

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(self.dir / "src")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        )
        env["PYTHONDONTWRITEBYTECODE"] = "1"  # a stale .pyc must never stand in for a mutant
        env["HYPOTHESIS_STORAGE_DIRECTORY"] = str(self.dir / "hypothesis")
        env.setdefault("OMP_NUM_THREADS", "1")
        return env

    def check_import(self, package: str) -> None:
        """Fail unless ``import package`` finds the copy (an installed one could shadow it)."""
        code = f"import {package}; print({package}.__file__)"
        found = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, env=self.env(), capture_output=True, text=True
        ).stdout.strip()
        if not found.startswith(str(self.dir)):
            raise SystemExit(f"import {package} finds {found or 'nothing'}, not the mutated copy")

    def run(self, mutant: Mutant | None, tests: list[str], timeout: float) -> tuple[str, float]:
        target = self.dir / mutant.path if mutant is not None else None
        original = target.read_text() if target is not None else None
        if target is not None:
            target.write_text(_splice(original, mutant))
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
        began = time.perf_counter()
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=self.env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, so a timeout ends its children too
        )
        try:
            code = proc.wait(timeout=timeout)
            status = "survived" if code == 0 else "killed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code, status = None, "timeout"
        finally:
            if target is not None:
                target.write_text(original)
        if mutant is None:
            status = "passed" if code == 0 else "failed"
        return status, time.perf_counter() - began

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _diff(mutant: Mutant) -> str:
    source = (ROOT / mutant.path).read_text()
    lines = difflib.unified_diff(
        source.splitlines(keepends=True),
        _splice(source, mutant).splitlines(keepends=True),
        fromfile=mutant.path,
        tofile=mutant.path + " (mutant)",
        n=0,
    )
    return "".join(list(lines)[2:])  # drop the --- / +++ header; the line is printed above


def _sample(items: list, limit: int | None) -> list:
    """At most ``limit`` items spread evenly over the list (so a sample covers every part)."""
    if limit is None or limit >= len(items):
        return items
    step = len(items) / limit
    return [items[int(i * step)] for i in range(limit)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", nargs="+", required=True, help="source files to mutate")
    parser.add_argument("--tests", nargs="+", help="test files (default: the mirroring ones)")
    parser.add_argument(
        "--within", nargs="+", help="only mutate inside these functions or classes (qualnames)"
    )
    parser.add_argument("--limit", type=int, help="run at most N mutants, spread over the file")
    parser.add_argument("--jobs", type=int, default=1, help="mutants run in parallel (default 1)")
    parser.add_argument("--timeout", type=float, help="seconds per mutant (default: from a run)")
    parser.add_argument("--list", action="store_true", help="print the mutants and stop")
    parser.add_argument("--json", type=Path, help="write every result to this file")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be a positive int, got {args.jobs}")

    plan: list[tuple[Mutant, list[str]]] = []
    for name in args.files:
        path = Path(name)
        if not path.is_absolute():
            path = (Path.cwd() / path).resolve()
        if not path.is_relative_to(ROOT / "src"):
            parser.error(f"--files must lie under {ROOT / 'src'}, got {name}")
        tests = args.tests or _default_tests(path)
        mutants = generate(path, within=args.within)
        print(f"{_relative(path)}: {len(mutants)} mutants, tests {' '.join(tests)}")
        plan.extend((m, tests) for m in mutants)
    plan = _sample(plan, args.limit)
    if args.list:
        for mutant, _ in plan:
            print(mutant.describe())
        return 0

    sandboxes = [_Sandbox() for _ in range(args.jobs)]
    try:
        for package in sorted({Path(m.path).parts[1] for m, _ in plan}):
            sandboxes[0].check_import(package)
        timeout = args.timeout
        for tests in dict.fromkeys(tuple(t) for _, t in plan):
            status, seconds = sandboxes[0].run(None, list(tests), timeout=3600)
            print(f"unmutated run of {' '.join(tests)}: {status} in {seconds:.1f} s")
            if status != "passed":
                print("the tests fail without any mutant; fix them first", file=sys.stderr)
                return 2
            if args.timeout is None:
                timeout = max(timeout or 0.0, 3 * seconds + 30)
        print(f"{len(plan)} mutants, {args.jobs} job(s), {timeout:.0f} s timeout each")

        free = list(sandboxes)

        def work(item: tuple[Mutant, list[str]]) -> Result:
            sandbox = free.pop()
            try:
                status, seconds = sandbox.run(item[0], item[1], timeout)
            finally:
                free.append(sandbox)
            return Result(item[0], status, seconds, _diff(item[0]))

        results = []
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            for i, result in enumerate(pool.map(work, plan), 1):
                results.append(result)
                mark = {"killed": ".", "survived": "S", "timeout": "T"}[result.status]
                print(f"[{i}/{len(plan)}] {mark} {result.mutant.describe()}", flush=True)
    finally:
        for sandbox in sandboxes:
            sandbox.close()

    counts = {s: sum(r.status == s for r in results) for s in ("killed", "survived", "timeout")}
    total = len(results)
    score = (counts["killed"] + counts["timeout"]) / total if total else float("nan")
    print(
        f"\n{total} mutants: {counts['killed']} killed, {counts['survived']} survived, "
        f"{counts['timeout']} timed out; score {score:.1%}"
    )
    for r in results:
        if r.status == "survived":
            print(f"\nSURVIVED {r.mutant.describe()}\n{r.diff}", end="")
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "counts": counts,
                    "score": score,
                    "results": [
                        {**asdict(r.mutant), "status": r.status, "seconds": r.seconds}
                        for r in results
                    ],
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
