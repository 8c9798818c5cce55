"""The committed notebooks are clean: what a learner reads in them is the lesson, not library noise.

No Python warning, no traceback, no library progress bar, no path of the machine they were executed on (nbval
compares outputs: a path of another Python fails the README's test command elsewhere), every code cell run,
and nbval markers as cell tags rather than comments a learner has to read past.
"""
import json
import re
import sys
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))
WARNING = re.compile(r"\b\w*Warning\b|warnings\.warn|Traceback \(most recent call last\)|^\[transformers\]", re.M)
MACHINE_PATHS = re.compile(r"site-packages|/root/|/home/\w+|/tmp/|[A-Z]:\\\\Users|" + re.escape(sys.prefix))


def outputs(notebook: Path):
    """(cell index, output) of every output of every code cell."""
    cells = json.loads(notebook.read_text("utf-8"))["cells"]
    return [(i, out) for i, cell in enumerate(cells) if cell["cell_type"] == "code" for out in cell.get("outputs", [])]


EMBEDDED = re.compile(r"data:[\w/+.-]+;base64,[A-Za-z0-9+/=\s]+")  # audio players carry their sound inline


def text_of(output: dict) -> str:
    """Everything an output shows as text: stream text, plain and HTML renderings (embedded media left out)."""
    if output["output_type"] == "stream":
        return "".join(output["text"])
    data = output.get("data", {})
    shown = "".join("".join(data.get(kind, "")) for kind in ("text/plain", "text/html", "text/markdown"))
    return EMBEDDED.sub("", shown)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_committed_output_holds_an_error_or_a_warning(notebook):
    found = [(i, o.get("ename") or WARNING.search(text_of(o)).group(0)) for i, o in outputs(notebook)
             if o["output_type"] == "error" or WARNING.search(text_of(o))]
    assert found == [], f"{notebook.name}: (cell, what) {found}"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_committed_output_is_a_progress_bar(notebook):
    widgets = [i for i, o in outputs(notebook) if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    bars = [i for i, o in outputs(notebook) if o["output_type"] == "stream" and "it/s]" in text_of(o)]
    assert widgets == [] and bars == [], f"{notebook.name}: widget outputs in cells {widgets}, text bars in {bars}"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_committed_output_names_a_path_of_the_machine_it_ran_on(notebook):
    found = [(i, MACHINE_PATHS.search(text_of(o)).group(0)) for i, o in outputs(notebook)
             if MACHINE_PATHS.search(text_of(o))]
    assert found == [], f"{notebook.name}: (cell, path) {found}"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_code_cell_was_run_and_nbval_markers_are_tags(notebook):
    cells = json.loads(notebook.read_text("utf-8"))["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert all(c.get("execution_count") for c in code), "a committed code cell was not run"
    assert not [c for c in code if "NBVAL" in "".join(c["source"])], "use the nbval-ignore-output / nbval-skip tags"
