"""The import rules of docs/architecture.md, checked on the source: a layer imports only from
itself and the layers below it, and no project module imports another in a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from support import REPO

PACKAGES = ("rasa_hred", "alexa_connector")

# What each layer may import from this project (besides itself). Third-party rules follow.
ALLOWED = {
    "rasa_hred.core": {"rasa_hred.errors"},
    "rasa_hred.corpora": {"rasa_hred.core.vocab", "rasa_hred.core.fields", "rasa_hred.errors"},
    "rasa_hred.serving": {"rasa_hred.core", "rasa_hred.errors"},
    "rasa_hred.jobs": {
        "rasa_hred.core",
        "rasa_hred.corpora",
        "rasa_hred.serving",
        "rasa_hred.errors",
    },
}
# Third-party packages a layer must never import (even lazily, inside a function).
FORBIDDEN_THIRD_PARTY = {
    "rasa_hred.core": {"rasa", "sanic", "tensorflow"},
    "rasa_hred.corpora": {"rasa", "sanic", "torch"},
    "rasa_hred.serving": {"rasa", "sanic"},
}
# Nothing in the library imports the layers on top.
TOP_LAYERS = ("rasa_hred.cli", "rasa_hred.bench")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(node: ast.ImportFrom, package: str) -> str:
    base = node.module or ""
    if not node.level:
        return base
    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
    return ".".join([*anchor, base] if base else anchor)


def imports_of(path: Path, *, top_level_only: bool = False) -> set[str]:
    """The modules ``path`` imports: at any depth (lazy imports inside functions included), or
    only those run when the module is imported (``top_level_only``: not inside a function or
    an ``if TYPE_CHECKING:`` block)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    if top_level_only:
        nodes = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    else:
        nodes = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        else:
            base = _resolve(node, package)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def project_files() -> dict[str, Path]:
    return {
        module_name(path): path
        for package in PACKAGES
        for path in sorted((REPO / package).rglob("*.py"))
    }


FILES = project_files()
MODULES = {module: imports_of(path) for module, path in FILES.items()}


def layer_of(module: str) -> str | None:
    for layer in (*ALLOWED, *TOP_LAYERS):
        if module == layer or module.startswith(layer + "."):
            return layer
    return None


def within(module: str, prefixes: set[str] | tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_package_tree_is_found():
    assert "rasa_hred.core.model" in MODULES
    assert "alexa_connector.channel" in MODULES


@pytest.mark.parametrize("module", sorted(m for m in MODULES if layer_of(m) in ALLOWED))
def test_layer_imports_only_what_it_may(module):
    layer = layer_of(module)
    assert layer is not None
    allowed = ALLOWED[layer] | {layer}
    project = {i for i in MODULES[module] if i.split(".")[0] in PACKAGES}
    # `from rasa_hred.core import model` names the package too; the package itself is empty.
    wrong = sorted(i for i in project if i not in PACKAGES and not within(i, allowed))
    assert not wrong, f"{module} imports {wrong}; {layer} may import only {sorted(allowed)}"
    third_party = {i.split(".")[0] for i in MODULES[module]}
    banned = sorted(third_party & FORBIDDEN_THIRD_PARTY.get(layer, set()))
    assert not banned, f"{module} imports {banned}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if layer_of(m) not in TOP_LAYERS))
def test_the_library_never_imports_cli_or_bench(module):
    wrong = sorted(i for i in MODULES[module] if within(i, TOP_LAYERS))
    assert not wrong, f"{module} imports {wrong}"


def test_no_import_cycles():
    """Over the imports that run at import time (lazy imports inside functions, such as
    ``rasa_hred.HREDPolicy``'s, are how the layers stay light and are checked above)."""
    graph = {
        module: {i for i in imports_of(path, top_level_only=True) if i in FILES and i != module}
        for module, path in FILES.items()
    }
    visiting: list[str] = []
    done: set[str] = set()

    def visit(module: str) -> None:
        if module in done:
            return
        if module in visiting:
            cycle = [*visiting[visiting.index(module) :], module]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        visiting.append(module)
        for target in sorted(graph[module]):
            visit(target)
        visiting.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)
