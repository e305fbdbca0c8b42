"""The library's layout: small files, small folders, rooms in layers, no hidden imports (issue 43).

Reads the code as text and syntax trees (``ast``): nothing of the library is imported, so
these checks take well under a second.

- **File size:** no library file (``dynamicdet/**/*.py``) over :data:`MAX_LINES` lines, except
  under ``dynamicdet/data/`` (the synthetic generator and the COCO reader are long tables of
  cases, read once).
- **Folder size:** no folder of the library holds more than :data:`MAX_MODULES` modules
  (``.py`` files directly in it, ``__init__.py`` included).
- **Layers:** every room sits on a level of :data:`LAYERS` (bottom first). A room is a
  sub-package of ``dynamicdet`` (``dynamicdet/engine/``) or a top-level module
  (``dynamicdet/paths.py`` is the room ``paths``). Every import of the library
  (``import dynamicdet.X``, ``from dynamicdet.X import ...``, ``from dynamicdet import X``;
  relative imports are resolved first) points to the same room or a lower one; importing the
  package itself (``import dynamicdet``, ``from dynamicdet import __version__``) counts as the
  top. ``dynamicdet/__init__.py`` is exempt: it re-exports the public API. A new room must be
  given a level here before it can import or be imported.
- **Studies apart:** nothing under ``dynamicdet/`` imports ``studies`` or ``bench`` (they
  import the library, never the reverse).
- **Imports inside functions say why.** Every ``import`` inside a function carries a comment
  on its own line (``import x  # ...``) or on the line right above it (a comment above a run of
  consecutive imports covers the run) with one of the words of :data:`REASONS`:

  - ``cycle``: the import would close an import cycle at module level;
  - ``heavy``: it defers a heavy or optional dependency (import time, an extra);
  - ``deferred``: followed by what is deferred and why, e.g.
    ``# deferred: scipy.stats takes 1.5 s to import and only the seed tables need it``.

Each check lists every violation, with ``file:line``, in its failure message.
"""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIB = ROOT / "dynamicdet"
MAX_LINES = 400
MAX_MODULES = 10
LONG_FILES_ALLOWED_UNDER = ("data",)  # rooms whose files may be longer than MAX_LINES

# bottom to top: a room may import its own level and the levels below it
LAYERS = [
    {"paths", "files", "metrics", "offline"},
    {"data"},
    {"modeling"},
    {"config"},
    {"evaluation"},  # the COCO metric, cost, speed, claims: measuring needs no trainer
    {"engine"},  # the factory, checkpoints, run folders, steps 1-2 (validation during step 1 uses evaluation/)
    {"deploy"},
    {"experiments"},
    {"pipeline", "cli"},
]
LEVEL = {room: i for i, rooms in enumerate(LAYERS) for room in rooms}
TOP = len(LAYERS)  # the package itself (its __init__ imports every room)
EXEMPT = {LIB / "__init__.py"}  # re-exports the public API
FORBIDDEN = ("studies", "bench")  # top-level packages the library must not import
REASONS = ("cycle", "heavy", "deferred")


def _files() -> list[Path]:
    return sorted(p for p in LIB.rglob("*.py") if "__pycache__" not in p.parts)


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _room(path: Path) -> str:
    """``dynamicdet/engine/step1.py`` -> ``engine``; ``dynamicdet/paths.py`` -> ``paths``."""
    parts = path.relative_to(LIB).parts
    return parts[0] if len(parts) > 1 else path.stem


def _package(path: Path) -> list[str]:
    """The dotted package a file sits in, as parts (``["dynamicdet", "engine"]``)."""
    return ["dynamicdet", *path.relative_to(LIB).parts[:-1]]


def _imported_modules(node: ast.Import | ast.ImportFrom, path: Path) -> list[str]:
    """The absolute module names an import statement reads (one per name for ``from pkg import a, b``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:  # relative: resolve against the file's package
        base = _package(path)[: len(_package(path)) - node.level + 1]
        module = ".".join([*base, *([node.module] if node.module else [])])
    else:
        module = node.module or ""
    if module == "dynamicdet":  # from dynamicdet import paths, __version__: a room each, or the package
        return [f"dynamicdet.{alias.name}" for alias in node.names]
    return [module]


def _target_level(module: str) -> tuple[str, int]:
    """The room a ``dynamicdet...`` module belongs to and its level (unknown rooms: -1)."""
    parts = module.split(".")
    if len(parts) == 1:
        return "dynamicdet (the package)", TOP
    room = parts[1]
    if room in LEVEL:
        return room, LEVEL[room]
    if (LIB / room).is_dir() or (LIB / f"{room}.py").is_file():
        return room, -1
    return f"dynamicdet (the package's {room})", TOP  # a name of dynamicdet/__init__.py


def _in_function_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found = {}
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    found[id(node)] = node
    return sorted(found.values(), key=lambda n: n.lineno)


def _comments(text: str) -> dict[int, str]:
    """Line number -> the comment on that line."""
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = tok.string
    return out


def _silent_imports(text: str) -> list[int]:
    """Lines of the imports inside functions whose comment (own line or above) gives none of the REASONS."""
    comments, lines = _comments(text), text.splitlines()
    imports = _in_function_imports(ast.parse(text))
    import_lines = {line for node in imports for line in range(node.lineno, node.end_lineno + 1)}
    silent = []
    for node in imports:
        said = [comments.get(line, "") for line in range(node.lineno, node.end_lineno + 1)]
        above = node.lineno - 1
        while above in import_lines:  # a comment above a run of imports covers the run
            above -= 1
        while above >= 1 and lines[above - 1].lstrip().startswith("#"):  # the comment block above, every line
            said.append(lines[above - 1])
            above -= 1
        if not any(word in c.lower() for c in said for word in REASONS):
            silent.append(node.lineno)
    return silent


def test_no_library_file_is_over_the_line_limit():
    long = []
    for path in _files():
        n = len(path.read_text().splitlines())
        if n > MAX_LINES and _room(path) not in LONG_FILES_ALLOWED_UNDER:
            long.append(f"{_rel(path)}: {n} lines")
    assert not long, f"library files over {MAX_LINES} lines (split them by role):\n" + "\n".join(long)


def test_no_library_folder_holds_more_than_the_module_limit():
    crowded = []
    for folder in sorted({p.parent for p in _files()}):
        modules = sorted(p.name for p in folder.glob("*.py"))
        if len(modules) > MAX_MODULES:
            crowded.append(f"{_rel(folder)}/: {len(modules)} modules ({', '.join(modules)})")
    assert not crowded, f"folders with more than {MAX_MODULES} modules:\n" + "\n".join(crowded)


def test_every_room_has_a_level():
    rooms = {_room(p) for p in _files() if p not in EXEMPT}
    assert not rooms - set(LEVEL), f"rooms without a level in LAYERS: {sorted(rooms - set(LEVEL))}"


def test_no_import_runs_upward():
    upward = []
    for path in _files():
        if path in EXEMPT:
            continue
        here = _room(path)
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for module in _imported_modules(node, path):
                if module != "dynamicdet" and not module.startswith("dynamicdet."):
                    continue
                room, level = _target_level(module)
                if level == -1:
                    upward.append(f"{_rel(path)}:{node.lineno}: imports {module}, room {room!r} has no level in LAYERS")
                elif level > LEVEL.get(here, TOP):
                    upward.append(
                        f"{_rel(path)}:{node.lineno}: {here} (level {LEVEL.get(here)}) imports {module} "
                        f"({room}, level {level})"
                    )
    order = " < ".join("[" + ", ".join(sorted(rooms)) + "]" for rooms in LAYERS)
    assert not upward, f"imports that run upward (order: {order}):\n" + "\n".join(upward)


def test_the_library_does_not_import_studies_or_benchmarks():
    found = []
    for path in _files():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for module in _imported_modules(node, path):
                    if module.split(".")[0] in FORBIDDEN:
                        found.append(f"{_rel(path)}:{node.lineno}: imports {module}")
    assert not found, "the library imports studies or benchmarks:\n" + "\n".join(found)


def test_imports_inside_functions_say_why():
    silent = []
    for path in _files():
        text = path.read_text()
        lines = text.splitlines()
        silent += [f"{_rel(path)}:{n}: {lines[n - 1].strip()}" for n in _silent_imports(text)]
    assert not silent, (
        f"imports inside functions without a comment saying why (one of {REASONS}, on the line or above it):\n"
        + "\n".join(silent)
    )


@pytest.mark.parametrize(
    ("source", "silent"),
    [
        ("def f():\n    import os  # heavy: 2 s to import\n", []),
        ("def f():\n    # breaks the import cycle a -> b -> a\n    import os\n    import sys\n", []),
        ("def f():\n    from os import (\n        path,  # deferred: only f needs it\n    )\n", []),
        ("def f():\n    import os\n", [2]),
        ("def f():\n    x = 1  # heavy\n    import os\n", [3]),
        ("def f():\n    import os  # heavy\n    import sys\n", [3]),
        ("def f():\n    # a cycle: this module is imported by b,\n    # which we import here\n    import b\n", []),
        ("import os\n\n\ndef f():\n    return os\n", []),
        ("class A:\n    def f(self):\n        def g():\n            import os\n", [4]),
    ],
    ids=[
        "inline",
        "comment-above-a-run",
        "multi-line",
        "silent",
        "not-a-comment-above",
        "inline-covers-its-line-only",
        "comment-block-above",
        "module-level",
        "nested",
    ],
)
def test_the_in_function_check_reads_comments_as_documented(source, silent):
    assert _silent_imports(source) == silent
