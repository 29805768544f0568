"""The package's layout: one-way dependencies, checked over the source's imports.

Every ``import`` and ``from ... import`` in ``src/bioplausible`` counts, including those inside
functions (a deferred import hides a cycle from Python's import machinery, not from the design).
Only the optional third-party imports are out of scope: they never name a bioplausible module.
"""

from __future__ import annotations

import ast
import pkgutil
import re
from pathlib import Path

import pytest

import bioplausible

ROOT = Path(bioplausible.__file__).resolve().parent
PKG = "bioplausible"

#: lower layers first; a module may import from its own layer or a lower one only
LAYERS = {
    "errors": 0, "imports": 0, "_registry": 0, "_io": 0, "_version": 0,
    "core": 1,
    "nn": 2, "models": 2, "data": 2,
    "rules": 3,
    "engine": 4,
    "experiments": 5,
    "cli": 6,
    "__main__": 7, "": 7,  # the package's lazy facade (importlib, not an import statement)
}


def modules(root: Path = ROOT, package: str = PKG) -> dict[str, tuple[Path, bool]]:
    """``{dotted name: (file, is_package)}`` for every module under ``root``."""
    found = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        found[".".join(parts)] = (path, is_pkg)
    return found


def import_graph(root: Path = ROOT, package: str = PKG) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (anywhere in its source)."""
    mods = modules(root, package)

    def resolve(name: str) -> str:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name

    graph: dict[str, set[str]] = {}
    for name, (path, is_pkg) in mods.items():
        base = name if is_pkg else name.rpartition(".")[0]
        out: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = base.split(".")
                    parts = parts[:len(parts) - (node.level - 1)]
                    module = ".".join(parts + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                for alias in node.names:  # `from pkg import submodule` names the submodule
                    full = f"{module}.{alias.name}"
                    targets.append(full if full in mods else module)
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            for target in targets:
                if target == package or target.startswith(package + "."):
                    hit = resolve(target)
                    if hit and hit != name:
                        out.add(hit)
        graph[name] = out
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    return LAYERS[top]


def test_the_package_has_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles (imports inside functions count): " + "; ".join(" <-> ".join(c) for c in found)


def test_the_cycle_finder_sees_imports_inside_functions(tmp_path):
    """The check can fail: a deferred import that closes a circle is found."""
    pkg = tmp_path / "toy_cycle"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..a import g\n")
    (pkg / "c.py").write_text("from . import a\n")
    graph = import_graph(pkg, "toy_cycle")
    assert graph["toy_cycle.sub.b"] == {"toy_cycle.a"}
    assert cycles(graph) == [["toy_cycle.a", "toy_cycle.sub.b"]]


def test_every_top_level_module_has_a_layer():
    tops = {name.split(".")[1] for name in modules() if "." in name}
    assert tops <= set(LAYERS), f"give these a layer in LAYERS: {sorted(tops - set(LAYERS))}"


def test_dependencies_point_down_the_layers():
    """core <- nn, models, data <- rules <- engine <- experiments <- cli, and no sideways imports
    between nn, models and data."""
    wrong = []
    for a, targets in import_graph().items():
        for b in targets:
            side = layer(a) == layer(b) == 2 and a.split(".")[1] != b.split(".")[1]
            if layer(b) > layer(a) or side:
                wrong.append(f"{a} -> {b}")
    assert not wrong, "imports against the layer order: " + ", ".join(sorted(wrong))


def test_the_cli_imports_no_rule_family():
    """Families add their subcommands themselves; the CLI only discovers them."""
    named = sorted(f"{a} -> {b}" for a, targets in import_graph().items() if a.startswith(f"{PKG}.cli")
                   for b in targets if b.startswith(f"{PKG}.rules."))
    assert named == [f"{PKG}.cli.app -> {PKG}.rules.registry"], named
    text = "\n".join(p.read_text() for p in (ROOT / "cli").rglob("*.py"))
    families = [i.name for i in pkgutil.iter_modules([str(ROOT / "rules")]) if i.ispkg]
    assert families, "no family packages found"
    for family in families:
        assert not re.search(rf"rules\.{family}\b", text), f"cli names the family {family!r}"


def test_no_two_flat_modules_in_rules_share_a_family_prefix():
    """A family with several modules is a subpackage, not ``rules/<family>_*.py`` files."""
    flat = [i.name for i in pkgutil.iter_modules([str(ROOT / "rules")]) if not i.ispkg]
    packages = {i.name for i in pkgutil.iter_modules([str(ROOT / "rules")]) if i.ispkg}
    prefixes: dict[str, list[str]] = {}
    for name in flat:
        prefixes.setdefault(name.split("_")[0], []).append(name)
    shared = {p: names for p, names in prefixes.items() if len(names) > 1}
    assert not shared, f"put these in a family subpackage: {shared}"
    beside = [n for n in flat if n.split("_")[0] in packages]
    assert not beside, f"modules beside their family's package: {beside}"


@pytest.mark.parametrize("name", sorted(bioplausible._EXPORTS))
def test_the_flat_api_resolves(name):
    assert getattr(bioplausible, name) is not None


def _readme_layout() -> str:
    readme = (ROOT.parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Layout", 1)[1]
    return section.split("```", 2)[1]


def test_every_folder_of_the_package_is_a_package():
    for folder in [ROOT, *(p for p in ROOT.rglob("*") if p.is_dir() and p.name != "__pycache__")]:
        if any(folder.glob("*.py")):
            assert (folder / "__init__.py").is_file(), f"{folder} has modules but no __init__.py"


def test_the_readme_layout_names_every_package_and_top_level_module():
    block = _readme_layout()
    named = set(re.findall(r"^\s*([\w.]+/|[\w]+\.py)\s", block, re.MULTILINE))
    packages = {str(p.parent.relative_to(ROOT)) for p in ROOT.rglob("__init__.py") if p.parent != ROOT}
    for package in packages:
        assert f"{package.rsplit('/', 1)[-1]}/" in named, f"README Layout does not name {package}/"
    for module in ROOT.glob("*.py"):
        if module.name != "__main__.py":
            assert module.name in named, f"README Layout does not name {module.name}"
    assert "rules/" in named and "rule.py" not in named  # entries only, not the prose after them
    repo = ROOT.parents[1]
    for name in named:
        hits = list(ROOT.rglob(name.rstrip("/"))) or [repo / name] * (repo / name).exists()
        assert hits, f"README Layout names {name}, which is neither in the package nor the repository"
