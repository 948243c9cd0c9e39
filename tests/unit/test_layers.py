"""services/runtime is split by layer; a module's folder says what it may import (see its __init__)."""

import ast
import pathlib

import pytest

RUNTIME = pathlib.Path(__file__).resolve().parents[2] / "services" / "runtime"
ALLOWED = {
    "core": {"core"},
    "codecs": {"core", "codecs"},
    "edge": {"core", "codecs", "edge"},
    "serving": {"core", "codecs", "serving", "edge.remote"},
}

# serving.sources builds the tiny checkpoints on demand (QWEN_SOURCE=tiny: `make demo`, the CPU Bento).
EXCEPTIONS = {"serving/sources": ("services",)}


def _imports(path: pathlib.Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):  # function-level imports count too
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level:
            names.append("<relative>")
        elif isinstance(node, ast.Import):
            names.extend(a.name for a in node.names)
    return [n for n in names if n.startswith("services") or n == "<relative>"]


MODULES = sorted(p for p in RUNTIME.glob("*/*.py") if p.name != "__init__.py")


def test_every_runtime_module_sits_in_a_layer():
    assert len(MODULES) >= 20
    assert sorted(p.name for p in RUNTIME.glob("*.py")) == ["__init__.py"]
    assert {p.parent.name for p in MODULES} == set(ALLOWED)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_layer_imports(path):
    layer = path.parent.name
    bad = []
    for name in _imports(path):
        if name == "<relative>":
            bad.append("relative import (write the layer out)")
            continue
        parts = name.split(".")
        if name in EXCEPTIONS.get(f"{layer}/{path.stem}", ()):
            continue
        if parts[:2] != ["services", "runtime"]:
            bad.append(name)  # a model package, the gateway, the tiny builders
            continue
        target = ".".join(parts[2:4])
        if not (parts[2] in ALLOWED[layer] or target in ALLOWED[layer]):
            bad.append(name)
    assert not bad, f"{layer}/{path.name} imports {bad}"
