"""Run the whole course: every notebook in order with papermill, offline by default.

    python -m helpers.course                        # the tiny profile, into runs/tiny
    python -m helpers.course --profile gpu-8gb -f params/my_data.yaml -p max_steps 2000
    python -m helpers.course --from 03 --to 05      # a slice, reusing earlier outputs in run_dir

Executed copies land in ``<run_dir>/notebooks/``. Parameters are checked against the notebooks'
parameters cells before anything runs (papermill itself only warns about unknown names); each
notebook receives the parameters it declares. A failing notebook stops the run with its name, the
cell number and the error, and a non-zero exit status.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import yaml

from .config import REPO, repo_path

NOTEBOOKS_DIR = REPO / "notebooks"


def notebooks() -> list[Path]:
    """The course notebooks in order (``NN_name.ipynb``)."""
    return sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))


def declared_parameters(notebook: Path) -> set[str]:
    """Names assigned in the notebook's cell tagged ``parameters``."""
    import papermill

    return set(papermill.inspect_notebook(str(notebook)).keys())


def select(all_notebooks: list[Path], start: str | None, stop: str | None) -> list[Path]:
    """The notebooks from ``start`` to ``stop`` inclusive, named by number ("03") or name prefix."""
    def index(key, default):
        if key is None:
            return default
        for i, nb in enumerate(all_notebooks):
            if nb.stem.startswith(key) or nb.stem.split("_", 1)[0] == key.zfill(2):
                return i
        raise SystemExit(f"no notebook matches {key!r}; notebooks: {[nb.stem for nb in all_notebooks]}")
    return all_notebooks[index(start, 0): index(stop, len(all_notebooks) - 1) + 1]


class _Loader(yaml.SafeLoader):
    """YAML with 1e-5 read as a number (YAML 1.1, PyYAML's default, wants 1.0e-5)."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", __import__("re").compile(
    r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^[-+]?\d*\.\d+$"), list("-+0123456789."))


def read_yaml(text: str):
    """Parse YAML text as parameters are written: ``300`` int, ``5e-4`` float, ``true`` bool, ``null`` None."""
    return yaml.load(text, Loader=_Loader)


def parse_params(files: list[str], pairs: list[list[str]], profile: str | None, run_dir: str | None) -> dict:
    """Merge parameters: YAML files in order, then ``-p name value`` pairs (values parsed as YAML:
    ``300`` is an int, ``true`` a bool, ``null`` None), then ``--profile`` / ``--run-dir``."""
    params: dict = {}
    for f in files:
        loaded = read_yaml(Path(f).read_text("utf-8")) or {}
        if not isinstance(loaded, dict):
            raise SystemExit(f"{f}: expected a mapping of parameter names to values")
        params.update(loaded)
    for name, value in pairs:
        params[name] = read_yaml(value)
    if profile:
        params["profile"] = profile
    if run_dir:
        params["run_dir"] = run_dir
    if params.get("profile") and "run_dir" not in params:
        params["run_dir"] = f"runs/{params['profile']}"
    return params


def key_figures(run_dir: Path) -> list[str]:
    """One line per result file the notebooks wrote, with the figures worth reading first."""
    from .data import read_json

    lines = []
    if (r := read_json(run_dir / "data" / "report.json")):
        s = r["splits"]
        lines.append(f"data: {s['train']['utterances']} train / {s['test']['utterances']} test utterances "
                     f"({s['train']['hours'] + s['test']['hours']:.2f} h), {r['skipped']['total']} rows skipped")
    def read(*parts):
        return read_json(run_dir.joinpath(*parts))

    if (m := read("teacher", "metrics.json")):
        lines.append(f"teacher: test CER {m['cer_before']:.1f}% before fine-tuning -> {m['cer_after']:.1f}% after")
    if (m := read("pseudo", "report.json")):
        lines.append(f"pseudo-labels: {m['kept']} of {m['utterances']} utterances kept (CER <= {m['cer_threshold']:g}%)")
    if (m := read("student_init", "layer_map.json")):
        lines.append(f"student: decoder layers {m['decoder']} of the teacher's {m['teacher_decoder_layers']}")
    if (m := read("student_kd", "metrics.json")):
        kd, teacher = m.get("student after KD", {}), m.get("teacher", {})
        lines.append(f"distilled student ({m['mode']} encoder): test CER {kd.get('cer', float('nan')):.1f}% "
                     f"(teacher {teacher.get('cer', float('nan')):.1f}%)")
    if (m := read("student_adalora", "metrics.json")):
        lines.append(f"AdaLoRA student: test CER {m['cer_before']:.1f}% -> {m['cer_merged']:.1f}% (merged)")
    if (m := read("eval", "results.json")):
        for r in m["results"]:
            if r.get("status") == "ok" and r.get("rtfx") is not None:
                lines.append(f"eval {r['test_set']}: {r['model']} CER {r['cer']:.1f}%, {r['params_M']:.2f}M params, "
                             f"RTFx {r['rtfx']:.0f} ({r['speed_up']:.2f}x the {m['reference']})")
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

    out_dir.mkdir(parents=True, exist_ok=True)
    timings = []
    overall = tqdm(selected, desc="course", unit="notebook")
    for nb in overall:
        overall.set_postfix_str(nb.stem)
        own = {k: v for k, v in params.items() if k in declared_parameters(nb)}
        started = time.time()
        try:
            papermill.execute_notebook(str(nb), str(out_dir / nb.name), parameters=own, cwd=str(NOTEBOOKS_DIR),
                                       kernel_name=kernel, progress_bar=True, request_save_on_cell_execute=True)
        except papermill.PapermillExecutionError as err:
            overall.close()
            raise SystemExit(f"\n{nb.name} failed in cell {err.cell_index} ({err.exec_count and f'[{err.exec_count}]'}): "
                             f"{err.ename}: {err.evalue}\nThe executed notebook with the traceback: {out_dir / nb.name}")
        timings.append((nb.stem, time.time() - started))
    return timings


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m helpers.course", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", help="tiny (default) | gpu-8gb | full")
    ap.add_argument("--run-dir", help="output folder (default runs/<profile>)")
    ap.add_argument("-f", "--parameters-file", action="append", default=[], help="YAML file of parameters (repeatable)")
    ap.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="one parameter (repeatable); the value is read as YAML")
    ap.add_argument("--from", dest="start", help="first notebook to run, e.g. 03")
    ap.add_argument("--to", dest="stop", help="last notebook to run, e.g. 05")
    ap.add_argument("--kernel", help="Jupyter kernel name (default: the notebooks' own)")
    args = ap.parse_args(argv)

    all_notebooks = notebooks()
    selected = select(all_notebooks, args.start, args.stop)
    params = parse_params(args.parameters_file, args.parameter, args.profile, args.run_dir)
    known = set().union(*(declared_parameters(nb) for nb in all_notebooks))
    unknown = sorted(set(params) - known)
    if unknown:
        print(f"error: unknown parameter(s) {unknown}. Known parameters: {', '.join(sorted(known))}", file=sys.stderr)
        return 2
    params.setdefault("live_plot", False)  # nobody watches a batch run: draw the final figures only
    run_dir = repo_path(params.get("run_dir", "runs/tiny"))
    print(f"Running {len(selected)} notebook(s) into {run_dir / 'notebooks'} with {params or 'the default parameters'}")
    timings = run(selected, params, run_dir / "notebooks", args.kernel)
    print("\nSummary")
    for name, seconds in timings:
        print(f"  {name:<24} {seconds:7.1f} s")
    print(f"  {'total':<24} {sum(s for _, s in timings):7.1f} s")
    for line in key_figures(run_dir):
        print("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
