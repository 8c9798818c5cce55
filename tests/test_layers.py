"""The helpers package in layers: a module imports only from its own layer or the layers below, never in a circle.

The folders are the layers a newcomer sees (README, "How the code is built"):

    run-wide base     config.py cli.py files.py                what every layer may read
    speech/           audio, text, manifest, sources, synth, collate    speech data, no model
    figures/          memory, stats, timing, plots             measuring and drawing
    whisper/          models, decode, runtime, longform, ...   the model machinery
    phases 01-06      data.py finetune.py ... adalora.py       one module per notebook
    what 07 uses      report, speculative, export, widgets     also for explorers
    on top            evaluate.py (phase 07), launch, course, lab

Every import is read from the source (inside functions too), so an import tucked into a function to dodge a
cycle fails here as well. A new module gets its layer from its folder; a new top-level module must be named in
TOP_LAYERS.
"""
import ast
import sys
from pathlib import Path

import pytest

HELPERS = Path(__file__).resolve().parent.parent / "helpers"

FOLDER_LAYERS = {"speech": 1, "figures": 2, "whisper": 3}  # a module in a folder takes the folder's layer
TOP_LAYERS = {
    0: {"config", "cli", "files"},                                                # run-wide base
    4: {"data", "finetune", "pseudo", "student", "distill", "adalora", "audio_context"},  # phases 01-06
    5: {"report", "speculative", "export", "widgets"},                             # what 07 and explorers use
    6: {"evaluate", "launch", "course", "lab"},                                    # phase 07, entry points
}
LAYER_OF_TOP = {module: layer for layer, modules in TOP_LAYERS.items() for module in modules}
MAX_LINES = 400
MAX_FUNCTION_LINES = 60


def modules() -> list[str]:
    """Every helpers module as a dotted name below ``helpers`` (``config``, ``speech.audio``...)."""
    found = []
    for path in sorted(HELPERS.rglob("*.py")):
        if path.stem == "__init__":
            continue
        found.append(".".join(path.relative_to(HELPERS).with_suffix("").parts))
    return found


def layer(module: str) -> int:
    folder, _, name = module.rpartition(".")
    return FOLDER_LAYERS[folder] if folder else LAYER_OF_TOP[name]


def source(module: str) -> str:
    return (HELPERS / (module.replace(".", "/") + ".py")).read_text("utf-8")


def helpers_imports(module: str) -> set[str]:
    """The helpers modules ``module`` imports anywhere in its source (relative or absolute, inside functions too),
    as dotted names below ``helpers``."""
    package = module.rpartition(".")[0].split(".") if "." in module else []
    known = set(modules())
    found = set()
    for node in ast.walk(ast.parse(source(module))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            elif (node.module or "") == "helpers" or (node.module or "").startswith("helpers."):
                target = node.module.removeprefix("helpers").lstrip(".")
            else:
                continue
            for alias in node.names:  # `from .speech import audio` names a module, `from .files import X` does not
                candidate = f"{target}.{alias.name}" if target else alias.name
                found.add(candidate if candidate in known else target)
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("helpers.") for a in node.names if a.name.startswith("helpers.")}
    return {m for m in found if m in known}


def test_every_module_has_a_layer():
    unplaced = [m for m in modules() if "." not in m and m not in LAYER_OF_TOP]
    assert unplaced == [], f"give these top-level modules a layer in TOP_LAYERS: {unplaced}"
    assert [m for m in modules() if "." in m and m.split(".")[0] not in FOLDER_LAYERS] == []


@pytest.mark.parametrize("module", modules())
def test_a_module_imports_only_from_its_layer_or_below(module):
    upward = {other: layer(other) for other in helpers_imports(module) if layer(other) > layer(module)}
    assert upward == {}, f"{module} (layer {layer(module)}) imports from higher layers: {upward}"


def test_the_low_folders_never_import_a_phase():
    phases = TOP_LAYERS[4] | TOP_LAYERS[5] | TOP_LAYERS[6]  # and what stands on them
    low = [m for m in modules() if "." in m]
    assert {m: helpers_imports(m) & phases for m in low if helpers_imports(m) & phases} == {}


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
    lines = len(source(module).splitlines())
    assert lines <= MAX_LINES, f"{module}.py has {lines} lines: split it by concept"


@pytest.mark.parametrize("module", modules())
def test_no_function_grows_past_the_line_budget(module):
    long = {node.name: node.end_lineno - node.lineno + 1 for node in ast.walk(ast.parse(source(module)))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES}
    assert long == {}, f"{module}: functions over {MAX_FUNCTION_LINES} lines (split them into steps): {long}"


def test_the_import_reader_sees_imports_inside_functions(tmp_path, monkeypatch):
    (tmp_path / "speech").mkdir()
    (tmp_path / "a.py").write_text("def f():\n    from .b import x\n    from .speech import c\n", "utf-8")
    (tmp_path / "speech" / "d.py").write_text("from ..a import f\nfrom . import c\n", "utf-8")
    for name in ("b.py", "speech/c.py"):
        (tmp_path / name).write_text("", "utf-8")
    monkeypatch.setattr(sys.modules[__name__], "HELPERS", tmp_path)
    assert helpers_imports("a") == {"b", "speech.c"}
    assert helpers_imports("speech.d") == {"a", "speech.c"}
