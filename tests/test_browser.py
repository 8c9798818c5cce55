"""The slow browser test: notebook 07 in a real JupyterLab, driven by a real Chromium, as a learner would use it.

It starts ``jupyter lab`` on loopback (a free port, no token, a throw-away configuration), opens a copy of notebook
07 prepared (papermill parameters) for a small run folder built here, runs every cell, uploads a wav through the
"Try it yourself" box's FileUpload, clicks Transcribe and checks that every stage's transcript appears, the same
transcripts as the widget's own function gives in this process. Screenshots go to the test's tmp folder
(``jupyterlab.png``, ``transcription_box.png``; ``jupyterlab-failure.png`` when it fails).

Needs Debian's Chromium (``apt-get install chromium fonts-noto-cjk``: the CJK font, or the screenshots show boxes
for the transcripts) and the ``playwright`` package (its own browsers are not used). Skipped without them.
Takes 1-1.5 minutes on two busy CPU cores; it gives up after :data:`DEADLINE_S` (and the fixtures' minute).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from helpers.config import REPO, TINY_TEACHER

CHROMIUM = Path("/usr/bin/chromium")
NOTEBOOK = REPO / "notebooks" / "07_eval.ipynb"
DEADLINE_S = 450             # the test's body, the notebook opened to the last transcript (fixtures: < 1 min)
NOTEBOOK_TIMEOUT_S = 6 * 60  # run-all of notebook 07 (40 s to 1.5 minutes on two cores)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
# the stages the run folder below holds, in notebook 07's order (helpers.files.STAGES)
STAGES = ["base teacher", "fine-tuned teacher", "student before KD", "distilled student"]

try:
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover (the skip below says why)
    sync_playwright = None

pytestmark = [
    pytest.mark.skipif(sync_playwright is None, reason="slow browser test: the playwright package is not installed "
                                                       "(pip install playwright; its browsers are not needed)"),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"slow browser test: no Chromium at {CHROMIUM} "
                                                     "(apt-get install chromium fonts-noto-cjk)"),
    pytest.mark.skipif(not (TINY_TEACHER / "model.safetensors").exists(),
                       reason="the tiny teacher asset is missing (python assets/build_tiny_teacher.py)"),
]


# ---------------------------------------------------------------------------------------------
# A small run folder and notebook 07 prepared for it
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def run_folder(tmp_path, synthetic_run):
    """A run folder with every stage notebook 07 looks for, untrained but real: the synthetic data of notebook 01,
    the tiny teacher as fine-tuned teacher (and as base teacher, named in its metrics), and a 2-decoder-layer
    student cut from it as the student before KD and as the distilled student (chosen on its validation CER)."""
    from helpers import student
    from helpers.whisper import models

    params, _ = synthetic_run
    run = tmp_path / "run"
    shutil.copytree(params.run_dir / "data", run / "data")
    shutil.copytree(TINY_TEACHER, run / "teacher")
    (run / "teacher" / "metrics.json").write_text(json.dumps({"base_model": str(TINY_TEACHER)}), "utf-8")
    small, maps = student.make_student(models.load_whisper(TINY_TEACHER), decoder_layers=2)
    student.save_student(small, run / "student_init", maps)
    student.save_student(small, run / "student_kd", maps)
    (run / "student_kd" / "metrics.json").write_text(json.dumps({"student after KD": {"valid": {"cer": 50.0}}}),
                                                     "utf-8")
    return run


@pytest.fixture
def lab_root(tmp_path, run_folder):
    """JupyterLab's root folder, holding notebook 07 with its parameters injected (papermill, not executed) and
    without outputs."""
    import papermill

    root = tmp_path / "lab"
    root.mkdir()
    path = root / NOTEBOOK.name
    papermill.execute_notebook(str(NOTEBOOK), str(path), prepare_only=True, progress_bar=False,
                               parameters={"run_dir": str(run_folder), "speed_rounds": 1, "speculative_limit": 2,
                                           "batch_size": 4, "export_quantization": "int8"})
    notebook = json.loads(path.read_text("utf-8"))  # the committed outputs stay behind: a learner's fresh copy
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    path.write_text(json.dumps(notebook, ensure_ascii=False, indent=1), "utf-8")
    return root


# ---------------------------------------------------------------------------------------------
# JupyterLab
# ---------------------------------------------------------------------------------------------
def _quiet_settings(settings_dir: Path) -> None:
    """User settings of the throw-away JupyterLab: no news or update toast over the notebook, and every cell in the
    page (no windowing), so that the widgets are there to find."""
    files = {"@jupyterlab/apputils-extension/notification.jupyterlab-settings":
             {"fetchNews": "false", "checkForUpdates": False, "doNotDisturbMode": True},
             "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"}}
    for name, settings in files.items():
        (settings_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (settings_dir / name).write_text(json.dumps(settings), "utf-8")


def _stop(process: subprocess.Popen) -> None:
    """Stop JupyterLab and the kernels it started (they run in sessions of their own): ask the server to shut down,
    then terminate its process group, then kill whatever of its children is left, each by its id."""
    import psutil

    try:
        children = psutil.Process(process.pid).children(recursive=True)
    except psutil.Error:
        children = []
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)  # the server shuts its kernels down on SIGTERM
            process.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=10)
    _, alive = psutil.wait_procs(children, timeout=10)
    for child in alive:
        try:
            child.kill()
        except psutil.Error:
            pass


@contextmanager
def serve_lab(tmp_path: Path, root: Path):
    """``(url, log file)`` of a JupyterLab serving ``root`` on a free loopback port, without token or browser, with a
    throw-away configuration under ``tmp_path``, its kernel ``python3`` running this Python; stopped on exit,
    whatever happened."""
    from helpers.course import current_kernel
    from helpers.whisper.processes import free_port

    current_kernel()  # JUPYTER_PATH: the notebook's python3 kernel is this Python
    home = tmp_path / "jupyter"
    for folder in ("config", "data", "runtime", "settings", "workspaces", "ipython"):
        (home / folder).mkdir(parents=True)
    _quiet_settings(home / "settings")
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_DATA_DIR": str(home / "data"),
           "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
           "IPYTHONDIR": str(home / "ipython"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    port = free_port()
    log = tmp_path / "jupyterlab.log"
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={port}", "--ServerApp.port_retries=0", "--IdentityProvider.token=",
               "--ServerApp.password=", "--ServerApp.disable_check_xsrf=True", f"--ServerApp.root_dir={root}",
               "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # a CI container runs as root
        command.append("--ServerApp.allow_root=True")
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_lab(process, url, log)
        yield url, log
    finally:
        _stop(process)


def _wait_for_lab(process: subprocess.Popen, url: str, log: Path, limit_s: float = 120) -> None:
    started = time.monotonic()
    while True:
        if process.poll() is not None:
            pytest.fail(f"jupyter lab exited with {process.returncode}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(f"{url}/api/status", timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() - started > limit_s:
            pytest.fail(f"jupyter lab did not answer on {url} within {limit_s:g} s:\n{_tail(log)}")
        time.sleep(0.5)


@pytest.fixture
def jupyterlab(tmp_path, lab_root):
    """:func:`serve_lab` on the prepared notebook 07."""
    with serve_lab(tmp_path, lab_root) as served:
        yield served


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text("utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# ---------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------
# The notebook as JupyterLab holds it (window.jupyterapp, exposed by --LabApp.expose_app_in_browser): the kernel's
# status, each code cell's execution count, and every error output.
NOTEBOOK_STATE = """(path) => {
  const app = window.jupyterapp;
  if (!app || !app.shell) return null;
  const panel = Array.from(app.shell.widgets('main')).find(w => w.context && w.context.path === path);
  if (!panel || !panel.content || !panel.content.model) return null;
  const session = panel.sessionContext;
  const kernel = session && session.session && session.session.kernel;
  const counts = [], errors = [], running = [];
  const cells = panel.content.model.cells;
  for (let i = 0; i < cells.length; i++) {
    const cell = cells.get(i);
    if (cell.type !== 'code') continue;
    counts.push(cell.executionCount);
    if (cell.executionState === 'running') running.push(i);
    for (const output of cell.outputs.toJSON()) {
      if (output.output_type === 'error')
        errors.push({cell: i, ename: output.ename, evalue: output.evalue, traceback: output.traceback || []});
    }
  }
  return {ready: !!(session && session.isReady), kernel: kernel ? kernel.status : null, counts, errors, running,
          pending: session ? session.pendingInput : false};
}"""

SAVE = """(path) => {
  const panel = Array.from(window.jupyterapp.shell.widgets('main')).find(w => w.context && w.context.path === path);
  if (panel) panel.context.save();  // not awaited: the test waits for the model to be clean, a while at most
}"""

SHOW_CELL = """([path, index]) => {
  const panel = Array.from(window.jupyterapp.shell.widgets('main')).find(w => w.context && w.context.path === path);
  panel.content.activeCellIndex = index;
  return panel.content.scrollToItem(index, 'start');
}"""

CELL_WITH = """([path, text]) => {
  const panel = Array.from(window.jupyterapp.shell.widgets('main')).find(w => w.context && w.context.path === path);
  const cells = panel.content.model.cells;
  for (let i = 0; i < cells.length; i++) if (cells.get(i).sharedModel.getSource().includes(text)) return i;
  return -1;
}"""

# What a cell's outputs hold (output types and mime types) and what its output area shows, for a failure message.
CELL_OUTPUTS = """([path, index]) => {
  const panel = Array.from(window.jupyterapp.shell.widgets('main')).find(w => w.context && w.context.path === path);
  const outputs = panel.content.model.cells.get(index).outputs.toJSON().map(
    o => o.output_type + (o.data ? ' ' + Object.keys(o.data).join(',') : '') + (o.text ? ' ' + o.text : ''));
  const node = panel.content.widgets[index].node.querySelector('.jp-OutputArea');
  return JSON.stringify({outputs, shown: node ? node.innerText.slice(0, 500) : '(no output area)'});
}"""

RUN_ALL = """(path) => {
  const app = window.jupyterapp;
  const panel = Array.from(app.shell.widgets('main')).find(w => w.context && w.context.path === path);
  app.shell.activateById(panel.id);
  app.commands.execute('notebook:run-all-cells');  // not awaited: the test polls the notebook's state
}"""

# Each stage's block in the box's output (helpers.widgets.try_clip_html): <div><b>name</b> <small>(time)</small>
# <p>transcript</p></div>, after a title <p><b>your recording ...</b></p>.
TRANSCRIPTS = """(out) => Array.from(out.querySelectorAll('div')).filter(
  d => d.firstElementChild && d.firstElementChild.tagName === 'B' && d.querySelector(':scope > small')
).map(d => ({model: d.firstElementChild.textContent, time: d.querySelector(':scope > small').textContent,
             transcript: (d.querySelector(':scope > p') || {textContent: null}).textContent}))"""

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _describe(state: dict | None) -> str:
    """What went wrong in the notebook, in words: the kernel, the cells run, and the last error's traceback."""
    if state is None:
        return "the notebook never opened in JupyterLab"
    lines = [f"kernel {state['kernel']}, {sum(c is not None for c in state['counts'])} of {len(state['counts'])} "
             f"code cells run, cells still running: {state['running']}"]
    for error in state["errors"][-1:]:
        traceback = ANSI.sub("", "\n".join(error["traceback"]))
        lines.append(f"error in cell {error['cell']}: {error['ename']}: {error['evalue']}\n{traceback[-3000:]}")
    return "\n".join(lines)


def test_slow_browser_notebook_07_in_jupyterlab_transcribes_an_upload_with_every_stage(
        jupyterlab, tmp_path, synthetic_run):
    from helpers import evaluate, widgets

    deadline = time.monotonic() + DEADLINE_S

    def left(limit_s: float) -> float:
        """Milliseconds to wait: ``limit_s``, or what is left of the deadline if that is less."""
        return max(1.0, min(limit_s, deadline - time.monotonic())) * 1000

    url, log = jupyterlab
    _, result = synthetic_run
    upload = tmp_path / "my recording.wav"  # a synthetic test clip: Chinese speech
    shutil.copy(result["test"]["audio"].iloc[0], upload)
    name = NOTEBOOK.name

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1500}, locale="zh-TW")
            state = None

            def save():
                """Save the notebook as it is now into the tmp folder, to read after the test (best effort)."""
                try:
                    page.evaluate(SAVE, name)
                    page.wait_for_function(f"""() => !Array.from(window.jupyterapp.shell.widgets('main')).find(
                        w => w.context && w.context.path === {json.dumps(name)}).context.model.dirty""",
                                           timeout=20_000, polling=500)
                except PlaywrightError:
                    pass

            def fail(message: str):
                __tracebackhide__ = True
                nonlocal state
                try:
                    state = page.evaluate(NOTEBOOK_STATE, name)
                    save()
                    if state and state["errors"]:  # the screenshot shows the cell that failed
                        page.evaluate(SHOW_CELL, [name, state["errors"][-1]["cell"]])
                    page.screenshot(path=tmp_path / "jupyterlab-failure.png", full_page=True)
                    box = page.locator(".widget-output").last
                    shown = box.inner_text(timeout=2000) if box.count() else "(no widget output on the page)"
                except PlaywrightError as err:
                    shown = f"(the page could not be read: {err})"
                pytest.fail(f"{message}\n{_describe(state)}\nthe box's output: {shown}\nscreenshot: "
                            f"{tmp_path / 'jupyterlab-failure.png'}\njupyter lab's log:\n{_tail(log, 20)}")

            # open the notebook; wait for its kernel (python3: this Python)
            page.goto(f"{url}/lab/tree/{name}", timeout=left(120))
            try:
                page.wait_for_function(f"""() => {{ const s = ({NOTEBOOK_STATE})({json.dumps(name)});
                                                   return s && s.ready && s.kernel === 'idle'; }}""",
                                       timeout=left(120), polling=500)
            except PlaywrightError:
                fail("the notebook's kernel did not start")
            page.evaluate("() => window.jupyterapp.shell.collapseLeft()")

            # run all cells; wait for every code cell to have run, or for an error to stop the run
            page.evaluate(RUN_ALL, name)
            waited = time.monotonic()
            give_up = waited + min(NOTEBOOK_TIMEOUT_S, deadline - waited - 60)  # a minute kept for the box
            while True:
                state = page.evaluate(NOTEBOOK_STATE, name)
                done = all(c is not None for c in state["counts"]) and not state["running"]
                if state["kernel"] in ("dead", "unknown") or state["errors"]:
                    fail("notebook 07 failed in JupyterLab")
                if done and state["kernel"] == "idle":
                    break
                if time.monotonic() > give_up:
                    fail(f"notebook 07 did not finish within {time.monotonic() - waited:.0f} s")
                page.wait_for_timeout(2000)
            notebook_s = time.monotonic() - waited

            # the "Try it yourself" box: shown (its cell scrolled to), upload the recording, press Transcribe
            box_cell = page.evaluate(CELL_WITH, [name, "widgets.transcription_box("])
            if box_cell < 0:
                fail("no cell of notebook 07 calls widgets.transcription_box")
            page.evaluate(SHOW_CELL, [name, box_cell])
            box = page.locator(".widget-vbox", has=page.locator("button", has_text="Transcribe")).last
            try:
                box.wait_for(timeout=left(60))
            except PlaywrightError:
                fail(f"the transcription box (cell {box_cell}) is not on the page; its outputs: "
                     f"{page.evaluate(CELL_OUTPUTS, [name, box_cell])}")
            try:
                box.scroll_into_view_if_needed(timeout=left(30))
                with page.expect_file_chooser(timeout=left(30)) as chooser:
                    box.locator("button.widget-upload").click()
                chooser.value.set_files(upload)
                # the file was read into the widget's model: its button counts it, "or upload (1)"
                box.locator("button.widget-upload", has_text="(1)").wait_for(timeout=left(30))
                assert box.locator(".widget-dropdown select option").count() == len(result["test"])
                box.locator("button", has_text="Transcribe").click()
                out = box.locator(".widget-output")
                # every stage's block, or the widget's message about a bad file ("cannot transcribe: ...")
                page.wait_for_function(
                    f"""(out) => out.innerText.includes('cannot transcribe')
                                 || ({TRANSCRIPTS})(out).length >= {len(STAGES)}""",
                    arg=out.element_handle(), timeout=left(180), polling=500)
                assert "cannot transcribe" not in out.inner_text(), "the widget refused the upload"
                out.locator("b", has_text="your recording my recording.wav").wait_for(timeout=left(10))
            except (PlaywrightError, AssertionError) as err:
                fail(f"the transcription box did not show every stage's transcript: {err}")
            out.scroll_into_view_if_needed()
            page.screenshot(path=tmp_path / "jupyterlab.png", full_page=True)
            box.screenshot(path=tmp_path / "transcription_box.png")
            shown = out.evaluate(TRANSCRIPTS)
            save()  # the notebook as it ran, with the box's output, in the tmp folder
        finally:
            browser.close()

    # every stage, in the notebook's order, with its time and its transcript: the ones the widget's own function
    # gives here on the same file
    assert [s["model"] for s in shown] == STAGES, shown
    assert all(re.fullmatch(r"\(\d+\.\d\d s\)", s["time"]) for s in shown), shown
    shelf = widgets.ModelShelf(evaluate.find_models(tmp_path / "run"))
    audio, _ = widgets.read_upload(({"name": upload.name, "content": memoryview(upload.read_bytes())},))
    expected = widgets.try_clip(shelf, audio)["transcript"]
    assert {s["model"]: s["transcript"].strip() for s in shown} == {m: t.strip() for m, t in expected.items()}
    assert any(re.search(r"[\u4e00-\u9fff]", s["transcript"]) for s in shown), "no Chinese transcript"  # for the eyes
    print(f"notebook 07 ran in {notebook_s:.0f} s in JupyterLab; screenshot {tmp_path / 'jupyterlab.png'}")


def test_browser_jupyterlab_speaks_traditional_chinese_when_chosen(tmp_path):
    """Workshops in Taiwan: Settings -> Language -> Chinese (Traditional, Taiwan) turns JupyterLab into Traditional
    Chinese (the jupyterlab-language-pack-zh-tw package the workbook installs): the launcher, the file browser and
    the menus' commands. The pack (4.5.post3) has no text for the top-level menu titles of JupyterLab 4.6 (File,
    Edit...), which stay in English; what it translates is checked here."""
    root = tmp_path / "lab"
    root.mkdir()
    with serve_lab(tmp_path, root) as (url, log), sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{url}/lab", timeout=120_000)
            titles = page.locator(".lm-MenuBar-itemLabel")
            titles.filter(has_text="Settings").click(timeout=120_000)
            page.locator(".lm-Menu-itemLabel", has_text="Language").first.hover()
            page.locator(".lm-Menu-itemLabel", has_text="(Traditional, Taiwan)").click(timeout=20_000)
            page.locator(".jp-Dialog button", has_text="Change and reload").click(timeout=20_000)
            page.locator(".lm-TabBar-tabLabel", has_text="啟動").wait_for(timeout=120_000)  # the Launcher tab
            titles.first.click(timeout=20_000)  # the File menu
            commands = page.locator(".lm-Menu-itemLabel").all_inner_texts()
            page.screenshot(path=tmp_path / "jupyterlab-zh-tw.png")
        except PlaywrightError as err:
            page.screenshot(path=tmp_path / "jupyterlab-zh-tw-failure.png")
            pytest.fail(f"the interface language could not be switched: {err}\njupyter lab's log:\n{_tail(log, 20)}")
        finally:
            browser.close()
    assert {"全部儲存", "關閉所有分頁"} <= set(commands), commands  # Save All, Close All Tabs
