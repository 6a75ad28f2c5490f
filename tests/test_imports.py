"""The package's shape: no import cycle inside csba/, the command line imported only by its
entry points, no module over 800 lines, every third-party import declared."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "csba"
MAX_LINES = 800


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[str]:
    """Absolute names of every module ``path`` imports (at any depth: lazy imports count)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    mod = _module_name(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base)
                name = f"{prefix}.{node.module}" if node.module else prefix
            else:
                name = node.module or ""
            out.append(name)
            # `from . import x` / `from .pkg import mod` may import submodules
            out += [f"{name}.{a.name}" for a in node.names]
    return out


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph = {}
    for mod, path in files.items():
        deps = set()
        for name in _imports(path):
            # the longest prefix that is one of our modules
            parts = name.split(".")
            for k in range(len(parts), 0, -1):
                cand = ".".join(parts[:k])
                if cand in files:
                    if cand != mod:
                        deps.add(cand)
                    break
        graph[mod] = deps
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle as a list of modules, or None (edges into a package's own __init__ are kept:
    importing csba.x imports csba first, but that is not a cycle unless csba imports back)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            # a submodule importing its own parent package's __init__ is how Python works
            if m.startswith(d + "."):
                continue
            if state.get(d) == 1:
                return [*stack[stack.index(d) :], d]
            if d not in state and (c := visit(d)):
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_find_cycle_known_answers():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"p": set(), "p.x": {"p"}}) is None  # a submodule and its package


def test_no_import_cycle_inside_the_package():
    graph = _graph()
    assert "csba.cli" in graph and "csba.runs" in graph["csba.cli"]  # the walk sees lazy imports
    cycle = _find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_only_the_entry_points_import_the_command_line():
    allowed = {PKG / "__main__.py", PKG / "cli.py"}
    files = [*PKG.rglob("*.py"), *(REPO / "pages").rglob("*.py"), REPO / "app.py"]
    files += list((REPO / "benchmarks").rglob("*.py"))
    offenders = [
        str(p.relative_to(REPO))
        for p in files
        if p not in allowed
        and any(n == "csba.cli" or n.startswith("csba.cli.") for n in _imports(p))
    ]
    assert offenders == []


def test_no_module_is_over_800_lines():
    long = {
        str(p.relative_to(REPO)): n
        for p in PKG.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


# import name -> distribution name, where they differ
DIST = {
    "PIL": "pillow",
    "sklearn": "scikit-learn",
    "yaml": "pyyaml",
    "elpv_dataset": "elpv-dataset",
}


def _declared(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            names.add(re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0].lower())
    return names


# optional dependencies: distribution -> the modules of csba/ allowed to import it (lazily)
OPTIONAL = {"ray": {"csba/cluster.py"}}


def _third_party(path: Path) -> set[str]:
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    used = set()
    for name in _imports(path):
        top = name.split(".")[0]
        if top and top not in stdlib and top not in ("csba", "pages"):
            used.add(DIST.get(top, top).lower())
    return used


def test_every_third_party_import_is_declared():
    req = _declared((REPO / "requirements.txt").read_text())
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    proj = _declared("\n".join(meta["dependencies"]))
    files = [*PKG.rglob("*.py"), *(REPO / "pages").rglob("*.py"), REPO / "app.py"]
    used = set().union(*(_third_party(p) for p in files)) - set(OPTIONAL)
    missing_req = sorted(used - req)
    missing_proj = sorted(used - proj)
    assert missing_req == [] and missing_proj == [], (missing_req, missing_proj)
    assert {"scipy", "matplotlib", "tqdm"} <= used  # once only dependencies of dependencies


def test_optional_dependencies_are_declared_apart_and_imported_lazily():
    """ray: in requirements-scale.txt (which the dev requirements, so CI, install) and the
    pyproject's "scale" extra, not in requirements.txt (the dashboard's install); imported only
    inside functions of the modules listed, so csba imports without it."""
    scale = _declared((REPO / "requirements-scale.txt").read_text())
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = extras["optional-dependencies"]
    assert set(OPTIONAL) <= scale and set(OPTIONAL) <= _declared("\n".join(extras["scale"]))
    assert not set(OPTIONAL) & _declared((REPO / "requirements.txt").read_text())
    assert "-r requirements-scale.txt" in (REPO / "requirements-dev.txt").read_text()
    for path in PKG.rglob("*.py"):
        rel = str(path.relative_to(REPO))
        for dist, allowed in OPTIONAL.items():
            if dist in _third_party(path):
                assert rel in allowed, f"{rel} imports {dist}"
                top = ast.parse(path.read_text()).body  # module level: not allowed
                names = [a.name for n in top if isinstance(n, ast.Import) for a in n.names]
                names += [n.module for n in top if isinstance(n, ast.ImportFrom) and n.module]
                assert dist not in {n.split(".")[0] for n in names if n}, rel
    code = "import sys; sys.modules['ray'] = None; import csba.protocol, csba.cluster, csba.cli"
    import subprocess

    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["csba.runs", "csba.protocol", "csba.options", "csba.cluster", "csba.distributed"]
)
def test_library_modules_import_without_the_cli(name):
    import subprocess

    code = f"import sys, {name}; assert 'csba.cli' not in sys.modules, 'cli imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
