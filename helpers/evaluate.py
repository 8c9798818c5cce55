"""Notebook 07: every model side by side, measured in one run; the results files and the verdict.

The evaluation notebook asks one question: was it worth it? :func:`evaluate_models` answers it for
every model and test set in one run: accuracy (CER, WER, MER on normalised text, corpus level and per
utterance), speed (RTFx with a warm-up, the same batch size and device for all models, the encoder
and the decoder timed apart), size (parameters, layers, bytes on disk) and peak memory. A model that
fails to load or decode is reported with its error; the others still get their results.
"""
from __future__ import annotations

import gc
from pathlib import Path

import pandas as pd
import torch
from transformers import WhisperConfig

from . import text
from .config import REPO, repo_path
from .decode import default_device, timed_transcribe
from .files import RunDir, atomic_write, read_json, write_json
from .manifest import check_rows, read_csv
from .memory import PeakMemory
from .models import count_parameters, load_whisper

# The stages the course writes into run_dir, in order: (name, RunDir folder). The base teacher's folder or hub
# id is read from the fine-tuned teacher's metrics (notebook 02 records it).
STAGES = (("base teacher", None), ("fine-tuned teacher", "teacher"), ("student before KD", "student_init"),
          ("distilled student", "student_kd"), ("AdaLoRA student", "student_adalora"))
TEACHERS = ("fine-tuned teacher", "base teacher")
STUDENTS = ("distilled student", "AdaLoRA student", "student before KD")


# ---------------------------------------------------------------------------------------------
# What to evaluate
# ---------------------------------------------------------------------------------------------
def find_models(run_dir: str | Path, models: dict | None = None) -> dict[str, str]:
    """``name -> folder or hub id`` of the models to evaluate, in course order.

    ``models`` given (a dict name -> path) is used as it is. Otherwise every stage of :data:`STAGES`
    that exists in ``run_dir`` (its folder holds a ``config.json``), with the base teacher taken from
    the fine-tuned teacher's ``metrics.json``. Raises ``FileNotFoundError`` when nothing is found.
    """
    if models:
        if not isinstance(models, dict):
            raise TypeError(f"models must map a name to a model folder or hub id, got {type(models).__name__}")
        return {str(k): str(v) for k, v in models.items()}
    run = RunDir(run_dir)
    found = {}
    for name, folder in STAGES:
        if folder is None:
            base = (read_json(run.metrics("teacher")) or {}).get("base_model")
            if base:
                found[name] = str(base)
        elif (getattr(run, folder) / "config.json").exists():
            found[name] = str(getattr(run, folder))
    if not found:
        raise FileNotFoundError(f"no model found in {run_dir}: run notebooks 02 to 06 with this run_dir first, "
                                "or give `models` as {name: folder or hub id}")
    return found


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


def model_facts(loaded) -> dict:
    """Size of a loaded model: parameters (millions), layers, width and bytes on disk (local folders)."""
    cfg = loaded.model.config
    files = list(Path(loaded.source).glob("*.safetensors")) if Path(loaded.source).is_dir() else []
    return {"params_M": count_parameters(loaded.model)["total"], "encoder_layers": cfg.encoder_layers,
            "decoder_layers": cfg.decoder_layers, "d_model": cfg.d_model,
            "size_MB": sum(f.stat().st_size for f in files) / 2**20 if files else float("nan")}


# ---------------------------------------------------------------------------------------------
# Every model on every test set
# ---------------------------------------------------------------------------------------------
def evaluate_models(model_paths: dict[str, str], test_sets: dict[str, pd.DataFrame], batch_size: int = 16,
                    fold: str | None = "t2s", rounds: int = 2, warmup: int = 4, max_new_tokens: int | None = None,
                    device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                    reference: str | None = None, progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Accuracy, speed, size and memory of every model on every test set, measured in one run.

    Models are loaded one at a time (so large ones need not fit together), each decodes every test set
    with the same ``batch_size`` on the same ``device`` (default: ``decode.default_device``): ``warmup`` untimed
    utterances, then ``rounds`` timed passes, the fastest of which counts. Returns ``(results, predictions)``:

    * ``results``: one row per (test set, model): status (``ok`` or the error), params, layers, size,
      CER/WER/MER/exact match in percent, RTFx, ``speed_up`` (RTFx over the ``reference`` model's, by
      default the fine-tuned teacher, else the first model), encoder and decoder seconds, decoder steps
      per second, peak memory;
    * ``predictions``: one row per (test set, model, utterance) with the reference, the prediction and
      the utterance's CER/WER/MER.

    A model that fails (missing folder, broken checkpoint, out of memory) gets a row with its error and
    the loop goes on.
    """
    from tqdm.auto import tqdm

    if not model_paths:
        raise ValueError("no model to evaluate")
    if not test_sets:
        raise ValueError("no test set to evaluate on")
    for name, rows in test_sets.items():
        if len(rows) == 0:
            raise ValueError(f"test set {name!r} has no rows")
    auto_device, auto_dtype = default_device()
    device, dtype = torch.device(device or auto_device), dtype or auto_dtype
    results, predictions = [], []
    bar = tqdm(total=len(model_paths) * len(test_sets), desc="evaluating", unit="run", disable=not progress)
    for name, path in model_paths.items():
        loaded, facts, done = None, {}, 0
        try:
            with PeakMemory(device) as mem:
                loaded = load_whisper(path, dtype=dtype, device=device)
                facts = model_facts(loaded)
                runs = []
                for set_name, rows in test_sets.items():
                    bar.set_postfix_str(f"{name} on {set_name}")
                    runs.append((set_name, rows, *timed_transcribe(loaded.model, loaded.processor, rows, batch_size,
                                                                   rounds, warmup, max_new_tokens)))
                    bar.update(1)
                    done += 1
            for set_name, rows, preds, stats in runs:
                refs = rows["text"].tolist()
                results.append({"test_set": set_name, "model": name, "path": str(path), "status": "ok", **facts,
                                "utterances": len(rows), **text.score(refs, preds, fold), **stats,
                                "peak_memory_MB": mem.peak_mb})
                utt = pd.DataFrame(text.utterance_scores(refs, preds, fold=fold))[["cer", "wer", "mer"]]
                predictions.append(pd.concat([pd.DataFrame({
                    "test_set": set_name, "model": name, "audio": rows["audio"].to_numpy(),
                    "duration": rows["duration"].to_numpy(), "reference": refs, "prediction": preds}), utt], axis=1))
        except Exception as err:  # noqa: BLE001 (one failing model must not lose the others' results)
            message = f"{type(err).__name__}: {err}".splitlines()[0]
            results += [{"test_set": set_name, "model": name, "path": str(path), "status": message, **facts}
                        for set_name in test_sets]
            bar.update(len(test_sets) - done)
            if progress:
                print(f"{name}: failed ({message})")
        finally:
            del loaded
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    bar.close()
    table = pd.DataFrame(results)
    table["speed_up"] = float("nan")
    ok = table["status"] == "ok"
    reference = reference or next((m for m in TEACHERS if m in set(table.loc[ok, "model"])),
                                  table.loc[ok, "model"].iloc[0] if ok.any() else None)
    for set_name in test_sets:
        ref = table[ok & (table["test_set"] == set_name) & (table["model"] == reference)]
        if len(ref):
            rows = ok & (table["test_set"] == set_name)
            table.loc[rows, "speed_up"] = table.loc[rows, "rtfx"] / float(ref["rtfx"].iloc[0])
    table.attrs["reference"] = reference
    preds = pd.concat(predictions, ignore_index=True) if predictions else pd.DataFrame(
        columns=["test_set", "model", "audio", "duration", "reference", "prediction", "cer", "wer", "mer"])
    return table, preds


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


def comparison_table(results: pd.DataFrame, test_set: str | None = None) -> pd.DataFrame:
    """The table to read first, one row per model: size, accuracy, speed and speed-up, rounded."""
    rows = results if test_set is None else results[results["test_set"] == test_set]
    columns = {"params_M": "params (M)", "encoder_layers": "enc", "decoder_layers": "dec", "size_MB": "size (MB)",
               "cer": "CER %", "wer": "WER %", "mer": "MER %", "rtfx": "RTFx", "speed_up": "speed-up",
               "decoder_steps_per_s": "dec steps/s", "peak_memory_MB": "peak mem (MB)", "status": "status"}
    present = [c for c in columns if c in rows]
    table = rows.set_index(["test_set", "model"] if test_set is None else "model")[present].rename(columns=columns)
    return table.round({"params (M)": 2, "size (MB)": 1, "CER %": 1, "WER %": 1, "MER %": 1, "RTFx": 1,
                        "speed-up": 2, "dec steps/s": 0, "peak mem (MB)": 0})


def worst_utterances(predictions: pd.DataFrame, model: str, n: int = 5, test_set: str | None = None) -> pd.DataFrame:
    """The ``n`` utterances with the highest CER for ``model`` (ties: the longest reference first)."""
    rows = predictions[predictions["model"] == model]
    if test_set is not None:
        rows = rows[rows["test_set"] == test_set]
    if rows.empty:
        raise ValueError(f"no predictions for model {model!r}; models: {sorted(predictions['model'].unique())}")
    return rows.assign(_len=rows["reference"].str.len()).sort_values(["cer", "_len"], ascending=False).drop(
        columns="_len").head(n)


def best_student(results: pd.DataFrame, test_set: str) -> str | None:
    """The student to show and ship: of the trained students (distilled, AdaLoRA) that ran on ``test_set``, the
    one with the lowest CER; the student before KD only when no trained one ran; None when no student ran."""
    ok = results[(results["status"] == "ok") & (results["test_set"] == test_set)].set_index("model")
    students = [m for m in STUDENTS if m in ok.index and m != "student before KD"] or \
               [m for m in STUDENTS if m in ok.index]
    return min(students, key=lambda m: ok.loc[m, "cer"]) if students else None


def reference_teacher(results: pd.DataFrame, test_set: str) -> str | None:
    """The teacher the students are compared with: the fine-tuned teacher, else the base teacher."""
    ok = results[(results["status"] == "ok") & (results["test_set"] == test_set)]
    return next((m for m in TEACHERS if m in set(ok["model"])), None)


def conclusion(results: pd.DataFrame, test_set: str, teacher: str | None = None, student: str | None = None) -> str:
    """A few sentences computed from the results: how much smaller and faster the best student
    (:func:`best_student`) is than the teacher, and at what cost in CER."""
    ok = results[(results["status"] == "ok") & (results["test_set"] == test_set)].set_index("model")
    teacher = teacher or reference_teacher(results, test_set)
    student = student or best_student(results, test_set)
    if teacher is None or student is None:
        return f"On {test_set}: not enough stages to compare (found {list(ok.index)})."
    t, s = ok.loc[teacher], ok.loc[student]
    gap = s["cer"] - t["cer"]
    verdict = ("as accurate as" if abs(gap) < 0.5 else
               f"{gap:.1f} points less accurate than" if gap > 0 else f"{-gap:.1f} points more accurate than")
    share, step_ratio = 100 * s["params_M"] / t["params_M"], s["decoder_steps_per_s"] / t["decoder_steps_per_s"]
    return (f"On {test_set}, the {student} has {s['params_M']:.1f}M parameters, {share:.0f}% "
            f"of the {teacher}'s {t['params_M']:.1f}M ({s['decoder_layers']} decoder layers instead of "
            f"{t['decoder_layers']}). It transcribes at {s['rtfx']:.0f}x real time against {t['rtfx']:.0f}x, a "
            f"{s['rtfx'] / t['rtfx']:.2f}x speed-up end to end ({step_ratio:.2f}x "
            f"per decoder step), and it is {verdict} the {teacher} (CER {s['cer']:.1f}% vs {t['cer']:.1f}%). "
            f"The encoder, which both run in full, takes {100 * t['encoder_s'] / t['compute_s']:.0f}% of the "
            f"{teacher}'s compute here: a shorter decoder can only save on the rest.")
