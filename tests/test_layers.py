"""The package's imports point one way: a lower layer never imports a higher one, nothing
imports in a circle, and private names cross modules only from ``autoenc._utils``.

The imports are read from the source (every ``import`` statement, also inside functions), so a
function-local import cannot hide an upward dependency.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "autoenc"

# Lower numbers are lower layers. data and recipes stand beside the layers: data may import only
# the helpers, recipes anything below it.
LAYERS = {
    "autoenc._utils": 0,
    "autoenc.data": 0,
    "autoenc.functional": 1,
    "autoenc.likelihoods": 1,
    "autoenc.networks": 2,
    "autoenc.models": 3,
    "autoenc.evaluation": 4,
    "autoenc.files": 4,
    "autoenc.training": 5,
    "autoenc.pictures": 6,
    "autoenc.recipes": 7,
    "autoenc": 8,
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str:
    """The layer a module belongs to: the longest key of LAYERS that prefixes it."""
    matches = [k for k in LAYERS if module == k or module.startswith(k + ".")]
    return max(matches, key=len)


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """``(module, names, line)`` of every autoenc import in a file, resolved to full names."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("autoenc")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("autoenc"):
            found.append((node.module, [a.name for a in node.names], node.lineno))
    return found


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def test_the_layer_table_covers_every_module() -> None:
    assert all(_layer(m) for m in MODULES)
    assert {_layer(m) for m in MODULES} == set(LAYERS)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_a_higher_layer(module: str) -> None:
    own = _layer(module)
    for target, _, line in _imports(MODULES[module]):
        other = _layer(target)
        if other == own:
            continue
        assert LAYERS[other] <= LAYERS[own] or own == "autoenc.data", (
            f"{module} (line {line}) imports {target}: layer {other} is above {own}"
        )
        if own == "autoenc.data":
            assert other == "autoenc._utils", f"{module} (line {line}) imports {target}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_private_names_cross_modules_only_from_utils(module: str) -> None:
    for target, names, line in _imports(MODULES[module]):
        private = [n for n in names if n.startswith("_") and n != "__version__"]
        assert not private or target == "autoenc._utils", (
            f"{module} (line {line}) imports the private {private} from {target}; shared "
            "helpers live in autoenc._utils"
        )
        assert not target.rpartition(".")[2].startswith("_") or target == "autoenc._utils", (
            f"{module} (line {line}) imports the private module {target}"
        )


def test_no_import_cycle() -> None:
    graph = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for target, names, _ in _imports(path):
            for name in [f"{target}.{n}" for n in names] + [target]:
                if name in MODULES and name != module:
                    graph[module].add(name)
                    break
    # A package imports its submodules to re-export them: that edge is not a cycle.
    for module in graph:
        graph[module] = {t for t in graph[module] if not t.startswith(module + ".")}
    visiting, done, cycle = set(), set(), []

    def visit(node: str, path: list[str]) -> None:
        if node in done or cycle:
            return
        if node in visiting:
            cycle.extend(path[path.index(node) :] + [node])
            return
        visiting.add(node)
        for nxt in sorted(graph[node]):
            visit(nxt, [*path, node])
        visiting.discard(node)
        done.add(node)

    for module in sorted(graph):
        visit(module, [])
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_import_autoenc_imports_nothing_heavy_and_every_layer_alone() -> None:
    """Each layer imports on its own in a fresh interpreter (no hidden reliance on another)."""
    code = (
        "import sys, importlib\n"
        f"for name in {sorted(LAYERS)!r}:\n"
        "    importlib.import_module(name)\n"
        "heavy = [m for m in ('visdom', 'tensorboard', 'matplotlib', 'torchvision') "
        "if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
