"""The helpers package in layers: a module imports only from its own layer or the layers below, never in a circle.

Every import is read from the source (inside functions too), so an import tucked into a function to dodge a
cycle fails here as well. A new module must be given a layer in LAYERS.
"""
import ast
import sys
from pathlib import Path

import pytest

HELPERS = Path(__file__).resolve().parent.parent / "helpers"

LAYERS = {
    0: {"config", "files", "audio", "text", "processes", "stats"},            # no helpers imports but these
    1: {"models", "collate", "manifest", "memory", "plots", "synth"},          # building blocks
    2: {"decode", "encoder_cache", "teacher_targets", "train", "sources", "longform"},  # shared machinery
    3: {"data", "finetune", "pseudo", "student", "distill", "adalora", "export"},  # one module per phase
    4: {"evaluate", "report", "speculative", "launch", "course", "lab", "widgets"},  # reports, entry points
}
LAYER_OF = {module: layer for layer, modules in LAYERS.items() for module in modules}
MAX_LINES = 400


def modules() -> list[str]:
    return sorted(p.stem for p in HELPERS.glob("*.py") if p.stem != "__init__")


def helpers_imports(module: str) -> set[str]:
    """The helpers modules ``module`` imports anywhere in its source (``from . import x``, ``from .x import y``,
    ``from helpers import x``, ``import helpers.x``)."""
    found = set()
    for node in ast.walk(ast.parse((HELPERS / f"{module}.py").read_text("utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 or node.module == "helpers" or (node.module or "").startswith("helpers."):
                base = (node.module or "").removeprefix("helpers").lstrip(".")
                found |= {base.split(".")[0]} if base else {alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("helpers.")}
    return found & set(modules())


def test_every_module_has_a_layer():
    assert [m for m in modules() if m not in LAYER_OF] == []


@pytest.mark.parametrize("module", modules())
def test_a_module_imports_only_from_its_layer_or_below(module):
    upward = {other: LAYER_OF[other] for other in helpers_imports(module) if LAYER_OF[other] > LAYER_OF[module]}
    assert upward == {}, f"{module} (layer {LAYER_OF[module]}) imports from higher layers: {upward}"


def test_the_imports_have_no_cycle():
    graph = {m: helpers_imports(m) - {m} for m in modules()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module, path):
        state[module] = 1
        for other in sorted(graph[module]):
            if state.get(other) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(other):] + [other]))
            if other not in state:
                visit(other, path + [other])
        state[module] = 2

    for module in modules():
        if module not in state:
            visit(module, [module])


@pytest.mark.parametrize("module", modules())
def test_no_module_grows_past_the_line_budget(module):
    lines = len((HELPERS / f"{module}.py").read_text("utf-8").splitlines())
    assert lines <= MAX_LINES, f"{module}.py has {lines} lines: split it by concept"


def test_the_import_reader_sees_imports_inside_functions(tmp_path, monkeypatch):
    (tmp_path / "a.py").write_text("def f():\n    from .b import x\n    from . import c\n", "utf-8")
    for name in ("b", "c"):
        (tmp_path / f"{name}.py").write_text("", "utf-8")
    monkeypatch.setattr(sys.modules[__name__], "HELPERS", tmp_path)
    assert helpers_imports("a") == {"b", "c"}
