"""The package's shape: no import circle in mindspeed_llm, the layers import only downwards (inference/ never
reaches training/; ops/, models/ and data/ never reach training/, runtime/ or config/), and the argument
modules and each entry script's ``--help`` load neither torch, megatron-core nor transformers.

The import graph is read from the source (ast), not from an interpreter: every ``import`` statement counts,
at module level and inside functions alike (a function-level import is a circle that only waits for its
call), and ``from package import name`` imports the submodule ``package.name`` when there is one.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

from tests.helpers.paths import REPO_ROOT

PACKAGE = "mindspeed_llm"

# The modules a command line is parsed and checked with, before torch is imported: `--help` and a bad flag
# answer in a fraction of a second (docs/architecture.md). One list: when a module moves, change it here.
ARGUMENT_MODULES = (
    "mindspeed_llm.config.flags",
    "mindspeed_llm.config.validate",
    "mindspeed_llm.config.paths",
    "mindspeed_llm.config.groups",
    "mindspeed_llm.config.plan",
    "mindspeed_llm.config.namespace",
    "mindspeed_llm.lora.config",
    "mindspeed_llm.from_hf.config",
    "mindspeed_llm.from_hf.cache",
    "mindspeed_llm.convert.cli",
    "mindspeed_llm.data.arguments",
    "mindspeed_llm.models.names",
    "mindspeed_llm.evaluation.config",
)
ENTRY_SCRIPTS = (
    "pretrain_gpt.py", "posttrain_gpt.py", "inference.py", "convert_ckpt.py", "preprocess_data.py",
    "evaluation.py",
)
HEAVY_PACKAGES = ("torch", "megatron", "transformers")

# Layers and what each may not reach, directly or through other modules of the package.
FORBIDDEN = {
    "inference": ("training",),
    "evaluation": ("training",),
    "ops": ("training", "runtime", "config"),
    "models": ("training", "runtime", "config"),
    "data": ("training", "runtime", "config"),
}

Graph = dict[str, dict[str, int]]  # module -> {imported module: line of its first import}


# ---- the import graph --------------------------------------------------------------------------------------


def package_modules(root: Path, package: str) -> dict[str, tuple[Path, bool]]:
    """Every module of ``package`` under ``root``: dotted name -> (file, whether it is an ``__init__``)."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


def _imported_names(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """The dotted names an import statement names (``from a import b``: ``a``, then ``a.b``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:  # relative: from the module's package, one level up per extra dot
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        origin = ".".join(base + ([node.module] if node.module else []))
    else:
        origin = node.module or ""
    return [origin] + [f"{origin}.{alias.name}" for alias in node.names]


def import_graph(root: Path, package: str) -> Graph:
    """Which modules of ``package`` each module of it imports (module level and inside functions)."""
    modules = package_modules(root, package)
    graph: Graph = {name: {} for name in modules}
    for name, (path, is_package) in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            names = _imported_names(node, name, is_package)
            if isinstance(node, ast.ImportFrom):
                # `from a import b` imports the submodule a.b when b is one, else the name b of module a
                # (as with `import a.b`, the packages above a module are not counted).
                origin, *subs = names
                names = [sub for sub in subs if sub in modules]
                names += [origin] if len(names) < len(subs) else []
            for target in names:
                while target not in modules and "." in target:  # `import a.b.c` of a name below a module
                    target = target.rsplit(".", 1)[0]
                if target in modules and target != name:
                    graph[name][target] = min(node.lineno, graph[name].get(target, node.lineno))
    return graph


def import_cycles(graph: Graph) -> list[list[str]]:
    """One circle through each group of modules that import one another (strongly connected), as a module list
    that starts and ends with the same module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(start: str) -> None:  # Tarjan's algorithm, iteratively
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return [_circle_through(graph, group) for group in sorted(groups)]


def _circle_through(graph: Graph, group: list[str]) -> list[str]:
    """The shortest import path from the group's first module back to itself, inside the group."""
    first, members = group[0], set(group)
    came_from: dict[str, str] = {}
    frontier = [first]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node]):
                if child not in members:
                    continue
                if child == first:
                    path = [node]
                    while path[-1] != first:
                        path.append(came_from[path[-1]])
                    return [first, *reversed(path[:-1]), first]
                if child not in came_from:
                    came_from[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"no circle through {group}")


def reachable(graph: Graph, start: str) -> dict[str, str | None]:
    """Every module ``start`` loads through the graph, each with the module that imports it on one path."""
    seen: dict[str, str | None] = {start: None}
    todo = [start]
    while todo:
        node = todo.pop()
        for child in sorted(graph[node]):
            if child not in seen:
                seen[child] = node
                todo.append(child)
    return seen


def _path(seen: dict[str, str | None], end: str) -> list[str]:
    path = [end]
    while seen[path[-1]] is not None:
        path.append(seen[path[-1]])
    return path[::-1]


def describe(graph: Graph, path: Iterable[str]) -> str:
    """``a (line 3) -> b (line 9) -> c``: each step with the line of the importing module."""
    path = list(path)
    steps = [f"{a} (line {graph[a][b]})" for a, b in zip(path, path[1:])]
    return " -> ".join([*steps, path[-1]])


# ---- the rules, on the package -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph() -> Graph:
    return import_graph(REPO_ROOT, PACKAGE)


def test_no_import_cycle_in_the_package(graph):
    circles = import_cycles(graph)
    assert not circles, "import circles (a circle means two modules are one, or a shared piece wants its " \
                        "own home):\n" + "\n".join(describe(graph, circle) for circle in circles)


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layers_import_only_downwards(graph, layer):
    """inference/ reaches nothing in training/; ops/, models/, data/ nothing in training/, runtime/,
    config/."""
    forbidden = tuple(f"{PACKAGE}.{name}" for name in FORBIDDEN[layer])
    found = []
    top = f"{PACKAGE}.{layer}"
    for module in sorted(m for m in graph if m == top or m.startswith(f"{top}.")):
        seen = reachable(graph, module)
        for target in sorted(seen):
            if target in forbidden or target.startswith(tuple(f"{f}." for f in forbidden)):
                found.append(describe(graph, _path(seen, target)))
                break  # one path per module is enough to read
    assert not found, f"{PACKAGE}/{layer}/ reaches {', '.join(FORBIDDEN[layer])}:\n" + "\n".join(found)


# ---- the checker itself, on a package with known circles ---------------------------------------------------


def test_cycle_finder_sees_function_level_and_submodule_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "def f():\n    from pkg import b  # a submodule, inside a function\n",
        "b.py": "from pkg.c import VALUE\n",
        "c.py": "import os\nVALUE = 1\n\n\ndef g():\n    import pkg.a.f\n",  # a name below module pkg.a
        "d.py": "from pkg import VALUE_IN_INIT, b\n",  # a name of pkg/__init__ (imports pkg) and a submodule
        "sub/__init__.py": "from . import e\n",
        "sub/e.py": "from .. import d\nfrom ..sub import __name__ as n\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    found = import_graph(tmp_path, "pkg")
    assert found["pkg.a"] == {"pkg.b": 2} and found["pkg.b"] == {"pkg.c": 1}
    assert found["pkg.c"] == {"pkg.a": 6}
    assert found["pkg.d"] == {"pkg": 1, "pkg.b": 1} and found["pkg.sub"] == {"pkg.sub.e": 1}
    assert found["pkg.sub.e"] == {"pkg.d": 1, "pkg.sub": 2}
    assert import_cycles(found) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"], ["pkg.sub", "pkg.sub.e", "pkg.sub"]]
    assert describe(found, ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]) == \
        "pkg.a (line 2) -> pkg.b (line 1) -> pkg.c (line 6) -> pkg.a"


# ---- what loads before torch -------------------------------------------------------------------------------

_LOADED_HEAVY = f"""
import sys
heavy = {HEAVY_PACKAGES!r}
print(sorted({{m.split(".")[0] for m in sys.modules if m.split(".")[0] in heavy}}))
"""


def _heavy_loaded(code: str) -> list[str]:
    """Run ``code`` in a fresh interpreter, then say which of torch / megatron / transformers it loaded."""
    proc = subprocess.run([sys.executable, "-c", code + _LOADED_HEAVY], capture_output=True, text=True,
                          timeout=120, cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return eval(proc.stdout.strip().splitlines()[-1])  # noqa: S307 (a list literal this test printed)


@pytest.mark.parametrize("module", ARGUMENT_MODULES)
def test_argument_modules_import_no_torch(module):
    # As the entry scripts import them: the package told not to apply its patches at import.
    code = f"import __main__\n__main__.MINDSPEED_LLM_LATE_PATCHES = True\nimport {module}\n"
    assert _heavy_loaded(code) == []


def _imported_by(stderr: str) -> set[str]:
    """The top-level packages a ``python -X importtime`` run imported (its report on stderr)."""
    found = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name and name != "imported package":
                found.add(name.split(".")[0])
    return found


@pytest.mark.parametrize("script", ENTRY_SCRIPTS)
def test_entry_script_help_loads_no_torch(script):
    """``python -X importtime SCRIPT --help`` (the script itself as __main__) imports no heavy package."""
    proc = subprocess.run([sys.executable, "-X", "importtime", script, "--help"], capture_output=True,
                          text=True, timeout=120, cwd=REPO_ROOT,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "usage:" in proc.stdout
    imported = _imported_by(proc.stderr)
    assert PACKAGE in imported  # the report is read right: the script imported the package
    heavy = sorted(imported & set(HEAVY_PACKAGES))
    assert not heavy, f"{script} --help imported {heavy}"


# ---- packaging ---------------------------------------------------------------------------------------------


def _setup_keyword(name: str) -> ast.expr:
    """The expression setup.py passes to ``setup()`` as ``name``."""
    tree = ast.parse((REPO_ROOT / "setup.py").read_text(encoding="utf-8"))
    call = next(node for node in ast.walk(tree)
                if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setup")
    return next(kw.value for kw in call.keywords if kw.arg == name)


def test_setup_installs_every_entry_script():
    scripts = {path.stem for path in REPO_ROOT.glob("*.py")} - {"setup"}
    assert scripts == {Path(script).stem for script in ENTRY_SCRIPTS}  # the list above names them all
    assert set(ast.literal_eval(_setup_keyword("py_modules"))) == scripts


def test_every_package_folder_is_found_by_setup():
    """find_packages installs only folders with an ``__init__.py``: a folder of modules without one is
    left out of the installed package."""
    from setuptools import find_packages

    folders = {path.parent for path in (REPO_ROOT / PACKAGE).rglob("*.py") if "__pycache__" not in path.parts}
    expected = {".".join(folder.relative_to(REPO_ROOT).parts) for folder in folders}
    assert ast.literal_eval(_setup_keyword("packages").keywords[0].value) == [PACKAGE, f"{PACKAGE}.*"]
    assert set(find_packages(where=str(REPO_ROOT), include=[PACKAGE, f"{PACKAGE}.*"])) == expected
