"""Parameters from files and the command line: what ``python -m helpers.course`` and every phase command read.

The defaults and their checks live in :mod:`helpers.config`; this module only turns ``-f params.yaml`` files and
``-p name value`` pairs into a checked ``{name: value}`` and runs a phase command with them (:func:`phase_main`).
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

from .config import PHASES, PROFILES, SPECS, all_parameters, check_names, check_value, own_params, resolve


# ---------------------------------------------------------------------------------------------
class _Loader(yaml.SafeLoader):
    """YAML with 1e-5 read as a number (YAML 1.1, PyYAML's default, wants 1.0e-5)."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(
    r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^[-+]?\d*\.\d+$"), list("-+0123456789."))


def read_yaml(text: str):
    """Parse YAML text as parameters are written: ``300`` int, ``5e-4`` float, ``true`` bool, ``null`` None."""
    return yaml.load(text, Loader=_Loader)


def _choice_word(name: str, value):
    """A choice parameter's own word for ``value`` when YAML 1.1 read that word as a boolean (``off``, ``on``, ``yes``,
    ``no``): ``-p store_teacher_targets off`` means the choice ``"off"``, not ``False``."""
    spec = SPECS.get(name)
    if spec is not None and spec.kind == "choice" and isinstance(value, bool):
        words = [c for c in spec.choices if isinstance(c, str) and read_yaml(c) is value]
        if len(words) == 1:
            return words[0]
    return value


def parse_params(files: list[str], pairs: list[list[str]], profile: str | None = None,
                 run_dir: str | None = None) -> dict:
    """Merge parameters: YAML files in order, then ``-p name value`` pairs (values parsed as YAML), then
    ``--profile`` / ``--run-dir``. Every name and value is checked (:func:`check_value`); raises ``ValueError``."""
    params: dict = {}
    for f in files:
        if not Path(f).is_file():
            raise ValueError(f"parameters file {f} does not exist")
        loaded = read_yaml(Path(f).read_text("utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{f}: expected a mapping of parameter names to values")
        params.update(loaded)
    for name, value in pairs:
        params[name] = read_yaml(value)
    if profile:
        params["profile"] = profile
    if run_dir:
        params["run_dir"] = run_dir
    check_names(params, all_parameters(), "parameters")
    params = {name: _choice_word(name, value) for name, value in params.items()}
    for name, value in params.items():
        if value is not None:
            check_value(name, value)
    return params


def command_line(prog: str, description: str, argv: list[str] | None = None) -> dict:
    """The options every course command takes (``--profile``, ``--run-dir``, ``-f``, ``-p``), parsed and checked."""
    ap = argparse.ArgumentParser(prog=prog, description=description,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", help=" | ".join(PROFILES) + " (default tiny)")
    ap.add_argument("--run-dir", help="the course's output folder (default runs/<profile>)")
    ap.add_argument("-f", "--parameters-file", action="append", default=[], help="YAML file of parameters (repeatable)")
    ap.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="one parameter (repeatable); the value is read as YAML")
    args = ap.parse_args(argv)
    return parse_params(args.parameters_file, args.parameter, args.profile, args.run_dir)


def phase_main(phase: str, run_phase, argv: list[str] | None = None, input_errors: tuple = ()) -> int:
    """``python -m helpers.<phase>``: the notebook's parameters from the command line, checked, then
    ``run_phase(p)``. Bad parameters, missing inputs and the phase's own bad-input errors (``input_errors``, e.g.
    ``DataError``: their messages say what to do) end in one line on stderr (exit status 2), not a traceback."""
    notebook = PHASES[phase]
    description = (f"The {phase} phase of notebook {notebook}, with that notebook's parameters. Alone it runs in "
                   f"one process; under `accelerate launch ... -m helpers.{phase}` on all the launched processes.")
    try:
        params = command_line(f"python -m helpers.{phase}", description, argv)
        params.setdefault("live_plot", False)  # no notebook to draw in
        p = resolve(notebook, own_params(notebook, params))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        run_phase(p)
    except (FileNotFoundError, *input_errors) as err:  # an earlier phase has not run, or the input is bad
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
