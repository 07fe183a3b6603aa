"""The tree's structure rules, checked on the source (fast, no model, no native code):

- no file over 600 lines in ``src/mtpstream`` or ``native/``;
- no Python function over 60 lines (``def`` to its last line, its docstring not counted);
- no C++ function body over 60 lines in ``native/*.cpp`` (a rough brace count);
- no module reads another module's private name (``obj._name`` where ``_name`` is
  not defined in the reading module).

Each rule has an explicit allow-list; an entry says why it must stay, and an entry
that no longer matches anything fails the test (so the list never goes stale).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "mtpstream"
NATIVE = ROOT / "native"

MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 60

# "relative path": why it must be longer than MAX_FILE_LINES
LONG_FILES: dict[str, str] = {}

# "relative path:function": why it must be longer than MAX_FUNCTION_LINES
LONG_FUNCTIONS: dict[str, str] = {
    # nanobind's module table: one .def per binding, nothing to split but the list itself
    "native/bindings.cpp:NB_MODULE(_native, m)": "the module table of every binding",
    # argparse tables: one add_argument per option, read top to bottom like --help
    "src/mtpstream/bench/runner.py:_parser": "argparse table of mtpstream bench's options",
}

# "relative path:name": a private name another module may read, and why
PRIVATE_READS: dict[str, str] = {}


def _python_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _native_files() -> list[Path]:
    return sorted(p for p in NATIVE.iterdir() if p.suffix in (".cpp", ".hpp", ".h"))


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _n_lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def long_files() -> dict[str, int]:
    """Every source file over MAX_FILE_LINES, with its length."""
    files = [*_python_files(), *sorted(PACKAGE.rglob("*.pyi")), *_native_files()]
    return {_rel(p): n for p in files if (n := _n_lines(p)) > MAX_FILE_LINES}


def python_functions(source: str) -> Iterator[tuple[str, int]]:
    """(name, lines from ``def`` to the last line, less the docstring's) of every
    function, nested ones too: documentation does not count against the limit."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            assert node.end_lineno is not None
            n = node.end_lineno - node.lineno + 1
            first = node.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                assert first.end_lineno is not None
                n -= first.end_lineno - first.lineno + 1
            yield node.name, n


_CPP_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'')
_CPP_CONTROL = re.compile(r"\s*(?:if|for|while|switch|else|do|catch|try)\b")
# a line that opens a function body: "...) [const] [noexcept] [override] [-> T] {"
_CPP_FUNCTION_OPEN = re.compile(
    r"\)\s*(?:const\s*)?(?:noexcept\s*)?(?:override\s*)?(?:->\s*[\w:<>*& ]+)?\{\s*$"
)


def cpp_functions(source: str) -> Iterator[tuple[str, int]]:
    """(signature line, lines from it to the closing brace) of every outermost function
    body in C++ ``source``: a rough brace count (comments and string literals dropped),
    good enough for this tree's formatting; lambdas inside a function count with it."""
    depth = 0
    start: tuple[int, int, str] | None = None  # (line index, depth before, signature)
    in_block_comment = False
    for i, raw in enumerate(source.splitlines()):
        line = raw
        if in_block_comment:
            if "*/" not in line:
                continue
            line = line.split("*/", 1)[1]
            in_block_comment = False
        line = _CPP_STRING.sub('""', re.sub(r"/\*.*?\*/", "", line.split("//", 1)[0]))
        if "/*" in line:
            line, in_block_comment = line.split("/*", 1)[0], True
        opens, closes = line.count("{"), line.count("}")
        if (
            start is None
            and opens > closes
            and _CPP_FUNCTION_OPEN.search(line)
            and not _CPP_CONTROL.match(line)
        ):
            start = (i, depth, raw.strip().rstrip("{").strip())
        depth += opens - closes
        if start is not None and depth <= start[1]:
            yield start[2], i - start[0] + 1
            start = None


def long_functions() -> dict[str, int]:
    """Every Python or C++ function over MAX_FUNCTION_LINES, keyed "path:name"."""
    out: dict[str, int] = {}
    for path in _python_files():
        for name, n in python_functions(path.read_text(encoding="utf-8")):
            if n > MAX_FUNCTION_LINES:
                out[f"{_rel(path)}:{name}"] = n
    for path in sorted(NATIVE.glob("*.cpp")):
        for signature, n in cpp_functions(path.read_text(encoding="utf-8")):
            if n > MAX_FUNCTION_LINES:
                name = signature.split("(", 1)[0].split()[-1] if "NB_MODULE" not in signature else signature
                out[f"{_rel(path)}:{name}"] = n
    return out


def _defined_names(tree: ast.Module) -> set[str]:
    """Every private name a module defines: functions, classes, assigned names and
    attributes (``self._x = ...``), class-body fields, imported aliases."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                names.add(node.attr)
        elif isinstance(node, ast.alias):
            names.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return {n for n in names if n.startswith("_")}


def private_reads(source: str) -> set[str]:
    """Private names (``_x``, not dunders) read or written on an object other than
    ``self``/``cls`` that the module itself does not define: another module's private name."""
    tree = ast.parse(source)
    own = _defined_names(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not node.attr.startswith("_") or node.attr.startswith("__"):
            continue
        if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
            continue
        if node.attr not in own:
            found.add(node.attr)
    return found


# --------------------------------------------------------------------- the rules
def test_no_file_over_the_limit() -> None:
    found = long_files()
    assert set(found) - set(LONG_FILES) == set(), f"files over {MAX_FILE_LINES} lines: {found}"
    assert set(LONG_FILES) - set(found) == set(), "stale LONG_FILES entries"


def test_no_function_over_the_limit() -> None:
    found = long_functions()
    too_long = {k: v for k, v in found.items() if k not in LONG_FUNCTIONS}
    assert too_long == {}, f"functions over {MAX_FUNCTION_LINES} lines (split them): {too_long}"
    assert set(LONG_FUNCTIONS) - set(found) == set(), "stale LONG_FUNCTIONS entries"


def test_no_module_reads_another_modules_private_name() -> None:
    found = {
        f"{_rel(path)}:{name}"
        for path in _python_files()
        for name in private_reads(path.read_text(encoding="utf-8"))
    }
    assert found - set(PRIVATE_READS) == set(), f"cross-module private reads (add a seam): {sorted(found)}"
    assert set(PRIVATE_READS) - found == set(), "stale PRIVATE_READS entries"


# --------------------------------------------------------------------- the checkers themselves
def test_the_checkers_see_what_they_must() -> None:
    long_py = "def f():\n" + "    x = 1\n" * MAX_FUNCTION_LINES
    assert dict(python_functions(long_py)) == {"f": MAX_FUNCTION_LINES + 1}
    documented = 'async def g():\n    """One.\n\n    Two.\n    """\n    return 1\n'
    assert dict(python_functions(documented)) == {"g": 2}
    cpp = (
        "// a comment with { braces\n"
        "int Engine::step(Job & job) const {\n"
        '    const char * s = "}}}";\n'
        "    if (x) {\n        y();\n    }\n"
        "    auto f = [&]() {\n        return 1;\n    };\n"
        "    /* } */\n"
        "}\n"
        "struct S {\n    int a;\n};\n"
    )
    assert list(cpp_functions(cpp)) == [("int Engine::step(Job & job) const", 10)]
    assert private_reads("import m\nm._hidden()\nself._ok = 1\n") == {"_hidden"}
    assert private_reads("def f(o):\n    o._field = 1\n") == {"_field"}
    assert private_reads("class A:\n    def f(self, o):\n        return o._x\n    _x = 1\n") == set()
