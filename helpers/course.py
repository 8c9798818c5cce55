"""Run the whole course: every notebook in order with papermill, offline by default.

    python -m helpers.course                        # the tiny profile, into runs/tiny
    python -m helpers.course --profile gpu-8gb -f params/my_data.yaml -p max_steps 2000
    python -m helpers.course --from 03 --to 05      # a slice, reusing earlier outputs in run_dir

Executed copies land in ``<run_dir>/notebooks/``. Every parameter is checked (name, type, range, and against
the others) for every selected notebook before anything runs or any folder is made; each notebook receives
the parameters it declares. A failing notebook stops the run with its name, the cell number and the error,
and a non-zero exit status.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import weakref
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager

from . import cli, config
from .files import RunDir, read_json, shown

NOTEBOOKS_DIR = config.REPO / "notebooks"


class LocalKernelManager(AsyncKernelManager):
    """The kernel manager of the course's papermill runs: on POSIX the kernel talks to papermill over Unix sockets
    in a private temporary folder (IPC transport), not over unencrypted loopback TCP, which ipykernel warns about;
    elsewhere, TCP as usual. The folder goes with the manager (or at exit)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if os.name == "posix":
            folder = tempfile.mkdtemp(prefix="workbook-kernel-")
            weakref.finalize(self, shutil.rmtree, folder, True)
            self.transport, self.ip = "ipc", os.path.join(folder, "kernel")


def notebooks() -> list[Path]:
    """The course notebooks in order (``NN_name.ipynb``)."""
    return sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))


def select(all_notebooks: list[Path], start: str | None, stop: str | None) -> list[Path]:
    """The notebooks from ``start`` to ``stop`` inclusive, named by number ("03") or name prefix."""
    def index(key, default):
        if key is None:
            return default
        for i, nb in enumerate(all_notebooks):
            if nb.stem.startswith(key) or nb.stem.split("_", 1)[0] == key.zfill(2):
                return i
        raise ValueError(f"no notebook matches {key!r}; notebooks: {[nb.stem for nb in all_notebooks]}")
    return all_notebooks[index(start, 0): index(stop, len(all_notebooks) - 1) + 1]


def check_all(selected: list[Path], params: dict) -> Path:
    """Resolve the parameters of every selected notebook (raises ``ValueError`` naming the first bad one) and
    return the run folder they share."""
    run_dir = None
    for nb in selected:
        run_dir = config.resolve(nb.stem, config.own_params(nb.stem, params)).run_dir
    return run_dir


def current_kernel() -> str:
    """Make the notebooks' kernel, ``python3``, run this very Python, and return that name.

    The kernel spec is written to a temporary folder put first on ``JUPYTER_PATH`` (for this process and the
    ones it starts): papermill and JupyterLab then run the notebooks with the packages of the environment the
    course was started from, whatever kernels the user has installed elsewhere. In a virtual environment that sees
    its base Python's packages (``workbook.py`` makes one when that Python has PyTorch), the base's
    ``share/jupyter`` follows the environment's own on ``JUPYTER_PATH``: the JupyterLab extensions of packages
    installed there (ipywidgets' widget manager) are found, or JupyterLab shows widgets as plain text.
    """
    tag = hashlib.sha1(sys.executable.encode()).hexdigest()[:10]
    folder = Path(tempfile.gettempdir()) / f"breeze-workbook-kernels-{tag}"
    spec = folder / "kernels" / "python3"
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (ipykernel)", "language": "python"}), "utf-8")
    paths = [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p]
    wanted = [str(folder)]
    if Path(sys.prefix).resolve() != Path(sys.base_prefix).resolve():
        wanted += [str(Path(prefix, "share", "jupyter")) for prefix in (sys.prefix, sys.base_prefix)]
    os.environ["JUPYTER_PATH"] = os.pathsep.join(wanted + [p for p in paths if p not in wanted])
    return "python3"


def key_figures(run_dir: Path) -> list[str]:
    """One line per result file the notebooks wrote, with the figures worth reading first."""
    run = RunDir(run_dir)
    lines = []
    if (r := read_json(run.data_report)):
        s = r["splits"]
        lines.append("data: " + ", ".join(f"{n} {v['utterances']}" for n, v in s.items()) + " utterances "
                     f"({sum(v['hours'] for v in s.values()):.2f} h), {r['skipped']['total']} rows skipped")
    if (m := read_json(run.metrics("teacher"))):
        lines.append(f"teacher: validation CER {m['valid_cer_before']:.1f}% before fine-tuning -> "
                     f"{m['valid_cer_after']:.1f}% after; test CER {m['test_cer']:.1f}%")
    if (m := read_json(run.pseudo_report)):
        rule = f"CER <= {m['cer_threshold']:g}% where there is a reference"
        if m.get("min_avg_logprob") is not None:
            rule += f", mean token log-probability >= {m['min_avg_logprob']:.2f} where there is none"
        statuses = ", ".join(f"{n} {status}" for status, n in m.get("by_status", {}).items())
        lines.append(f"pseudo-labels: {m['kept']} of {m['utterances']} utterances kept ({rule})"
                     + (f": {statuses}" if statuses else ""))
    if (m := read_json(run.metrics("student_init"))):
        lines.append(f"student: decoder layers {m['layer_map']['decoder']} of the teacher's "
                     f"{m['layer_map']['decoder'][-1] + 1}")
    if (m := read_json(run.metrics("student_kd"))):
        kd, teacher = m["student after KD"], m["teacher"]
        lines.append(f"distilled student ({m['mode']} encoder): test CER {kd['test']['cer']:.1f}% "
                     f"(teacher {teacher['test']['cer']:.1f}%)")
    if (m := read_json(run.metrics("student_adalora"))):
        lines.append(f"AdaLoRA student: test CER {m['test_cer_before']:.1f}% -> {m['test_cer_merged']:.1f}% (merged)")
    if (m := read_json(run.metrics("student_short"))):
        v = m["valid"]
        lines.append(f"short-window student ({m['source']}): validation CER {v['full window']['cer']:.1f}% at the "
                     f"full window, {v['short window, untuned']['cer']:.1f}% short untuned, "
                     f"{v['short window, tuned']['cer']:.1f}% short tuned")
    if (m := read_json(run.results)):
        for r in m["results"]:
            if r.get("status") == "ok" and r.get("rtfx") is not None:
                size = (f"{r['params_M']:.2f}M params" if r.get("params_M") is not None
                        else f"{r['size_MB']:.1f} MB ({r.get('runtime')} {r.get('quantization')})")
                lines.append(f"eval {r['test_set']}: {r['model']} CER {r['cer']:.1f}%, {size}, "
                             f"RTFx {r['rtfx']:.0f} ({r['speed_up']:.2f}x the {m['reference']})"
                             + (f", window {r['window']}" if r.get("window", "full") != "full" else ""))
            elif r.get("status") != "ok":
                lines.append(f"eval {r['test_set']}: {r['model']} failed ({r['status']})")
        if (spec := m.get("speculative")):
            lines.append(f"speculative decoding ({spec['teacher']} + {spec['assistant_model']}): "
                         f"{spec['differ']} of {spec['utterances']} transcripts differ from the teacher's, "
                         f"{spec['speed_up']:.2f}x its speed")
    return lines


def run(selected: list[Path], params: dict, out_dir: Path, kernel: str | None = None) -> list[tuple[str, float]]:
    """Execute ``selected`` notebooks in order with papermill; returns (name, seconds) per notebook."""
    import papermill
    from tqdm.auto import tqdm

    kernel = kernel or current_kernel()
    out_dir.mkdir(parents=True, exist_ok=True)
    timings = []
    overall = tqdm(selected, desc="course", unit="notebook")
    for nb in overall:
        overall.set_postfix_str(nb.stem)
        started = time.time()
        try:
            papermill.execute_notebook(str(nb), str(out_dir / nb.name), parameters=config.own_params(nb.stem, params),
                                       cwd=str(NOTEBOOKS_DIR), kernel_name=kernel, progress_bar=True,
                                       request_save_on_cell_execute=True, kernel_manager_class=LocalKernelManager)
        except papermill.PapermillExecutionError as err:
            overall.close()
            cell = f"[{err.exec_count}]" if err.exec_count else "not run"
            raise SystemExit(f"\n{nb.name} failed in cell {err.cell_index} ({cell}): {err.ename}: {err.evalue}\n"
                             f"The executed notebook with the traceback: {out_dir / nb.name}") from None
        timings.append((nb.stem, time.time() - started))
    return timings


def save_outputs(executed: list[Path], into: Path = NOTEBOOKS_DIR) -> list[Path]:
    """Write executed notebooks back as the course's notebooks (the outputs nbval compares against): the cell
    papermill injected with the run's parameters is left out, so the saved notebook is the original with its
    outputs, the execution counts are renumbered from 1, and widget views (whose state is not saved) are dropped:
    a widget comes alive when the cell runs in JupyterLab."""
    import nbformat

    saved = []
    for path in executed:
        nb = nbformat.read(path, as_version=4)
        nb.cells = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
        count = 0
        for cell in nb.cells:
            if cell.cell_type == "code":
                count += 1
                cell.execution_count = count
                for output in cell.outputs:
                    if "execution_count" in output:
                        output["execution_count"] = count
        for key in ("papermill", "widgets"):
            nb.metadata.pop(key, None)
        for cell in nb.cells:
            cell.metadata.pop("papermill", None)
            cell.metadata.pop("execution", None)
            if cell.cell_type == "code":  # a widget's state is not saved: its view would show an error when reopened
                cell.outputs = [o for o in cell.outputs
                                if "application/vnd.jupyter.widget-view+json" not in o.get("data", {})]
        nbformat.write(nb, into / path.name)
        saved.append(into / path.name)
    return saved


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m helpers.course", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", help=" | ".join(config.PROFILES) + " (default tiny)")
    ap.add_argument("--run-dir", help="output folder (default runs/<profile>)")
    ap.add_argument("-f", "--parameters-file", action="append", default=[], help="YAML file of parameters (repeatable)")
    ap.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="one parameter (repeatable); the value is read as YAML")
    ap.add_argument("--from", dest="start", help="first notebook to run, e.g. 03")
    ap.add_argument("--to", dest="stop", help="last notebook to run, e.g. 05")
    ap.add_argument("--kernel", help="Jupyter kernel name (default: one that runs this Python)")
    ap.add_argument("--save-outputs", action="store_true",
                    help="write the executed notebooks back into notebooks/ (the outputs nbval compares against)")
    args = ap.parse_args(argv)
    try:
        selected = select(notebooks(), args.start, args.stop)
        params = cli.parse_params(args.parameters_file, args.parameter, args.profile, args.run_dir)
        params.setdefault("live_plot", False)  # nobody watches a batch run: draw the final figures only
        run_dir = check_all(selected, params)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"Running {len(selected)} notebook(s) into {RunDir(run_dir).notebooks} with {params}")
    timings = run(selected, params, RunDir(run_dir).notebooks, args.kernel)
    print("\nSummary")
    for name, seconds in timings:
        print(f"  {name:<24} {seconds:7.1f} s")
    print(f"  {'total':<24} {sum(s for _, s in timings):7.1f} s")
    for line in key_figures(run_dir):
        print("  " + line)
    if args.save_outputs:
        saved = save_outputs([RunDir(run_dir).notebooks / nb.name for nb in selected])
        print(f"  outputs saved into {', '.join(shown(p) for p in saved)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
