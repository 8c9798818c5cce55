"""Notebook 07: every model side by side, measured in one run; the results files, the verdict and the shipping.

    python -m helpers.evaluate --run-dir runs/tiny        # what notebook 07 runs, without the notebook

The evaluation notebook asks one question: was it worth it? :func:`run_phase` answers it for every model of the
run (:data:`helpers.files.STAGES`) and every test set: accuracy with 95 % intervals and paired verdicts, speed
(median of interleaved rounds, with their range), size and peak memory (``whisper.measure.evaluate_models`` and
``report.add_comparisons``); the speculative-decoding check; the student chosen on validation, exported to
CTranslate2 and measured beside the teacher (``export.ship``). Everything lands in ``run_dir/eval``.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from transformers import WhisperConfig

from . import cli, export, report, speculative
from .config import REPO, repo_path
from .files import STAGES, STUDENTS, RunDir, atomic_write, best_student, read_json, shown, write_json
from .speech.manifest import check_rows, read_csv
from .whisper.decode import default_device
from .whisper.measure import evaluate_models
from .whisper.models import load_feature_extractor, window_seconds
from .whisper.short_window import RULE_FILE


# ---------------------------------------------------------------------------------------------
# What to evaluate
# ---------------------------------------------------------------------------------------------
def find_models(run_dir: str | Path, models: dict | None = None) -> dict[str, str]:
    """``name -> folder or hub id`` of the models to evaluate, in course order.

    ``models`` given (a dict name -> path) is used as it is. Otherwise every stage of ``files.STAGES``
    that exists in ``run_dir`` (its folder holds a ``config.json``), with the base teacher taken from
    the fine-tuned teacher's ``metrics.json``. Raises ``FileNotFoundError`` when nothing is found.
    """
    if models:
        if not isinstance(models, dict):
            raise TypeError(f"models must map a name to a model folder or hub id, got {type(models).__name__}")
        return {str(k): str(v) for k, v in models.items()}
    run = RunDir(run_dir)
    found = {}
    for stage in STAGES:
        if stage.folder is None:
            base = (read_json(run.metrics("teacher")) or {}).get("base_model")
            if base:
                found[stage.name] = str(base)
        elif (getattr(run, stage.folder) / "config.json").exists():
            found[stage.name] = str(getattr(run, stage.folder))
    if not found:
        raise FileNotFoundError(f"no model found in {run_dir}: run notebooks 02 to 06 with this run_dir first, "
                                "or give `models` as {name: folder or hub id}")
    return found


def short_windows(run_dir: str | Path, model_paths: dict[str, str]) -> tuple[dict[str, str], dict]:
    """The short-window rows of the evaluation: ``(model_paths, windows)``. When the short-window student (notebook
    06, part 2) is among ``model_paths``, it reads its windows (its ``window_rule.json``), and the student it was
    tuned from is added once more, reading the same short windows untuned, so that the table shows why tuning is
    needed. Other models read full windows."""
    run = RunDir(run_dir)
    rule = export.read_window_rule(run.student_short) if "short-window student" in model_paths else None
    if rule is None:
        return dict(model_paths), {}
    found = read_json(run.student_short / RULE_FILE)  # where the rule came from: source, source_folder
    paths, windows = dict(model_paths), {"short-window student": rule}
    if (run.root / found["source_folder"] / "config.json").exists():
        untuned = f"{found['source']}, short window untuned"
        paths[untuned], windows[untuned] = str(run.root / found["source_folder"]), rule
    return paths, windows


def describe_models(model_paths: dict[str, str]) -> pd.DataFrame:
    """What will be evaluated, read from each model's config (nothing is loaded): folder (relative to the
    repository when inside it) or hub id, layers, width and vocabulary. A model whose config cannot be
    read shows why in ``note``."""
    rows = []
    for name, path in model_paths.items():
        where = Path(path)
        shown = where.relative_to(REPO).as_posix() if where.is_absolute() and where.is_relative_to(REPO) else str(path)
        try:
            cfg = WhisperConfig.from_pretrained(path)
            rows.append({"model": name, "from": shown, "encoder layers": cfg.encoder_layers,
                         "decoder layers": cfg.decoder_layers, "width": cfg.d_model, "vocabulary": cfg.vocab_size,
                         "note": ""})
        except (OSError, ValueError) as err:
            rows.append({"model": name, "from": shown, "note": f"cannot read its config: {str(err).splitlines()[0]}"})
    return pd.DataFrame(rows).set_index("model")


def load_test_sets(test_sets: dict | None, run_dir: str | Path, max_duration_s: float | None = None
                   ) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """``({name: rows}, skipped)``: the test sets named in ``test_sets`` (name -> ``.jsonl`` manifest or CSV),
    by default notebook 01's ``run_dir/data/test.jsonl`` as ``test``. Skipped rows of all sets are returned
    together, with a ``test_set`` column."""
    if test_sets is None:
        test_sets = {"test": RunDir(run_dir).manifest("test")}
    if not isinstance(test_sets, dict) or not test_sets:
        raise ValueError(f"test_sets must map a name to a manifest (.jsonl) or CSV file, got {test_sets!r}")
    loaded, skipped = {}, []
    for name, path in test_sets.items():
        rows, bad = load_test_set(repo_path(path), max_duration_s)
        loaded[str(name)] = rows
        skipped.append(bad.assign(test_set=str(name)))
    return loaded, pd.concat(skipped, ignore_index=True)


def load_test_set(path: str | Path, max_duration_s: float | None = None, audio_column: str = "file",
                  text_column: str = "中文意譯") -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(rows, skipped)`` of a test set: a manifest written by notebook 01 (``.jsonl``) or a CSV in the
    reference layout (``file`` and ``中文意譯`` columns). Rows whose audio is missing, unreadable, empty,
    untranscribed or longer than ``max_duration_s`` (the model's window) are skipped and returned, not
    dropped silently. Raises ``ValueError`` when no row is left."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"test set {path} does not exist")
    if path.suffix == ".jsonl":
        rows = pd.read_json(path, lines=True, dtype={"text": str})
        if not {"audio", "text"} <= set(rows.columns):
            raise ValueError(f"{path}: a manifest needs 'audio' and 'text' columns, it has {list(rows.columns)}")
        for column, value in (("split", "test"), ("source", "manifest"), ("row", None)):
            if column not in rows:
                rows[column] = range(1, len(rows) + 1) if column == "row" else value
    else:
        rows = read_csv(path, audio_column, text_column, split="test")
    kept, skipped = check_rows(rows, max_duration_s)
    if kept.empty:
        reasons = skipped["reason"].value_counts().to_dict() if len(skipped) else {}
        raise ValueError(f"test set {path} has no usable rows ({len(rows)} rows; skipped: {reasons})")
    return kept.reset_index(drop=True), skipped


def save_results(out_dir: str | Path, results: pd.DataFrame, predictions: pd.DataFrame,
                 extra: dict | None = None) -> Path:
    """Write ``results.csv``, ``results.json`` (the table, the reference model and ``extra``, e.g. the
    speculative-decoding check) and ``predictions.csv`` into ``out_dir``, each atomically."""
    out_dir = Path(out_dir)
    atomic_write(out_dir / "results.csv", results.to_csv(index=False))
    atomic_write(out_dir / "predictions.csv", predictions.to_csv(index=False))
    records = results.astype(object).where(results.notna(), None).to_dict("records")
    write_json(out_dir / "results.json", {"reference": results.attrs.get("reference"), "results": records,
                                          **(extra or {})})
    return out_dir


# ---------------------------------------------------------------------------------------------
# The phase
# ---------------------------------------------------------------------------------------------
@dataclass
class Evaluation:
    """What notebook 07 measured (:func:`run_phase`): the models and test sets, the rows skipped, ``results`` (one
    row per test set and model, with intervals and verdicts) and ``predictions`` (one row per utterance), the
    speculative check (``speculative`` summary and ``speculative_speed`` table, or None), the student chosen on
    validation (``best_student``), its ``exports`` (quantisation -> folder) and the ``shipping`` table that measures
    them beside the teacher, the folder the results were written to, and the short ``windows`` (model -> rule)."""
    model_paths: dict[str, str]
    test_sets: dict[str, pd.DataFrame]
    skipped: pd.DataFrame
    results: pd.DataFrame
    predictions: pd.DataFrame
    speculative: dict | None = None
    speculative_speed: pd.DataFrame | None = None
    best_student: str | None = None
    exports: dict[str, Path] = field(default_factory=dict)
    shipping: pd.DataFrame | None = None
    out_dir: Path | None = None
    windows: dict = field(default_factory=dict)

    @property
    def evaluated(self) -> list[str]:
        """The models of ``model_paths`` that ran without error on every test set, in course order (the exports'
        rows, added by :func:`add_exports`, are not among them)."""
        ok = self.results["status"] == "ok"
        failed = set(self.results.loc[~ok, "model"])
        return [m for m in dict.fromkeys(self.results.loc[ok, "model"]) if m not in failed and m in self.model_paths]


def measure(p) -> Evaluation:
    """The models of ``p`` (``p.models``, else every stage of ``p.run_dir``) on the test sets, side by side, with
    intervals and verdicts (:func:`whisper.measure.evaluate_models`, :func:`report.add_comparisons`)."""
    model_paths, windows = short_windows(p.run_dir, find_models(p.run_dir, p.models))
    window = window_seconds(load_feature_extractor(next(iter(model_paths.values()))))
    test_sets, skipped = load_test_sets(p.test_sets, p.run_dir, max_duration_s=window)
    print(f"{len(model_paths)} models, {len(test_sets)} test set(s): "
          + ", ".join(f"{name} ({len(rows)} utterances, {rows['duration'].sum() / 60:.1f} min)"
                      for name, rows in test_sets.items()) + f"; {len(skipped)} rows skipped")
    results, predictions = evaluate_models(model_paths, test_sets, p.batch_size, fold=p.fold, rounds=p.speed_rounds,
                                           progress=p.live_plot, windows=windows)
    results = report.add_comparisons(results, predictions, seed=p.seed)
    for _, row in results[results["status"] != "ok"].iterrows():
        print(f"{row['model']} on {row['test_set']}: {row['status']}")
    print(f"{(results['status'] == 'ok').sum()} of {len(results)} evaluations done on {default_device()[0]}; "
          f"comparisons with the {results.attrs['reference']}")
    return Evaluation(model_paths, test_sets, skipped, results, predictions, windows=windows)


def add_exports(done: Evaluation, test_set: str, p) -> None:
    """The exports of ``done.shipping`` join ``done.results`` and ``done.predictions`` as rows of their own (CER
    with its interval, paired difference from the teacher, speed-up from the shipping run), so ``results.csv``
    holds them beside the transformers models."""
    rows, utterances = report.export_rows(done.shipping, test_set, done.test_sets[test_set], p.fold)
    reference = done.results.attrs["reference"]
    main = done.results.assign(runtime="transformers", quantization=str(default_device()[1]).removeprefix("torch."))
    results = pd.concat([main, rows], ignore_index=True)
    results.attrs.update(done.results.attrs)
    done.predictions = pd.concat([done.predictions, utterances], ignore_index=True)
    done.results = report.ship_speed(report.add_comparisons(results, done.predictions, reference, seed=p.seed),
                                     done.shipping)


def run_phase(p) -> Evaluation:
    """Notebook 07 for its parameters ``p``: :func:`measure`; the speculative check (``p.speculative``) on the
    first ``p.speculative_limit`` test utterances; the student with the lowest validation CER (never chosen on
    test), exported with ``p.export_quantization`` (and float32) and measured beside the teacher, the exports then
    rows of the results (:func:`add_exports`); then ``results.csv``, ``results.json`` and ``predictions.csv`` in
    ``run_dir/eval``. Returns an :class:`Evaluation`."""
    done = measure(p)
    done.speculative, done.speculative_speed = speculative.run_check(
        done.model_paths, done.results, done.test_sets, p.speculative, p.speculative_limit, fold=p.fold)
    print(speculative.describe(done.speculative))
    full = [m for m in STUDENTS if m in done.evaluated and m != "short-window student"]  # shipped beside it
    done.best_student = best_student(p.run_dir, full)
    if p.export_quantization != "off" and done.best_student is not None:
        quantizations = list(dict.fromkeys([p.export_quantization, "float32"]))
        first_set = next(iter(done.test_sets))
        done.exports, done.shipping = export.ship(p.run_dir, done.best_student, done.test_sets[first_set],
                                                  quantizations, p.batch_size, p.speed_rounds, fold=p.fold)
        print("exports:", ", ".join(f"{q}: {shown(folder)}" for q, folder in done.exports.items()))
        add_exports(done, first_set, p)
    shipping = None if done.shipping is None else done.shipping.drop(columns="predictions").reset_index(
        names="model").to_dict("records")
    done.out_dir = save_results(RunDir(p.run_dir).eval, done.results, done.predictions,
                                {"speculative": done.speculative, "skipped_rows": len(done.skipped),
                                 "best_student": done.best_student, "shipping": shipping})
    print("written:", ", ".join(sorted(f.name for f in done.out_dir.iterdir() if f.is_file())))
    return done


if __name__ == "__main__":
    sys.exit(cli.phase_main("evaluate", run_phase))
