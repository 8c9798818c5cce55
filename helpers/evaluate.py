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

from .config import REPO, repo_path
from .figures.memory import PeakMemory
from .files import RunDir, atomic_write, read_json, write_json
from .speech import text
from .speech.manifest import check_rows, read_csv
from .whisper.decode import default_device, transcribe
from .whisper.models import count_parameters, load_whisper

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
def _park(loaded, device: torch.device):
    """Between its timing turns a model waits on the CPU when the decoding happens on a GPU (so models that do
    not fit on the card together can still take turns)."""
    if device.type == "cuda":
        loaded.model.to("cpu")
        torch.cuda.empty_cache()
    return loaded


def evaluate_models(model_paths: dict[str, str], test_sets: dict[str, pd.DataFrame], batch_size: int = 16,
                    fold: str | None = "t2s", rounds: int = 3, max_new_tokens: int | None = None,
                    device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                    reference: str | None = None, progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Accuracy, speed, size and memory of every model on every test set, measured in one run.

    Every model is loaded and warmed up on one batch (its peak memory measured meanwhile), then the models take
    turns for ``rounds`` timed passes over every test set, all with the same ``batch_size`` on the same
    ``device`` (default: ``decode.default_device``; on a GPU a model waits on the CPU between its turns).
    Interleaving spreads whatever else the machine does over all models alike. Returns ``(results,
    predictions)``:

    * ``results``: one row per (test set, model): status (``ok`` or the error), params, layers, size,
      CER/WER/MER/exact match in percent, the timing of the median round (``compute_s``, ``rtfx``, encoder and
      decoder seconds, decoder steps per second) with ``compute_s_min``/``compute_s_max`` over the rounds, and
      peak memory; :mod:`helpers.report` adds intervals and speed-ups;
    * ``predictions``: one row per (test set, model, utterance): reference, prediction, the utterance's
      CER/WER/MER and its character ``errors`` and reference length ``n_ref`` (for bootstrap intervals).

    A model that fails (missing folder, broken checkpoint, out of memory) gets a row with its error and the
    others go on.
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
    kwargs = dict(max_new_tokens=max_new_tokens, progress=False, shard=False)
    loaded, failed, facts, memory = {}, {}, {}, {}
    bar = tqdm(total=len(model_paths) * (1 + rounds), desc="evaluating", unit="pass", disable=not progress)
    for name, path in model_paths.items():
        try:
            with PeakMemory(device) as mem:
                model = load_whisper(path, dtype=dtype, device=device)
                for rows in test_sets.values():  # warm-up: one full batch (the peak of a real pass)
                    transcribe(model.model, model.processor, rows.head(batch_size), batch_size, **kwargs)
            facts[name], memory[name], loaded[name] = model_facts(model), mem.peak_mb, _park(model, device)
        except Exception as err:  # noqa: BLE001 (one failing model must not lose the others' results)
            failed[name] = f"{type(err).__name__}: {err}".splitlines()[0]
            if progress:
                print(f"{name}: failed ({failed[name]})")
        bar.update(1)
    timings = {(name, s): [] for name in loaded for s in test_sets}
    predictions = {}
    for _ in range(rounds):
        for name, model in loaded.items():
            model.model.to(device)
            for set_name, rows in test_sets.items():
                bar.set_postfix_str(f"{name} on {set_name}")
                preds, stats = transcribe(model.model, model.processor, rows, batch_size, **kwargs)
                predictions.setdefault((name, set_name), preds)  # greedy: every round gives the same text
                timings[(name, set_name)].append(stats)
            _park(model, device)
            bar.update(1)
    bar.close()
    results, utterances = [], []
    for name, path in model_paths.items():
        for set_name, rows in test_sets.items():
            if name in failed:
                results.append({"test_set": set_name, "model": name, "path": str(path), "status": failed[name]})
                continue
            preds, refs = predictions[(name, set_name)], rows["text"].tolist()
            rounds_s = [t["compute_s"] for t in timings[(name, set_name)]]
            median = sorted(timings[(name, set_name)], key=lambda t: t["compute_s"])[(len(rounds_s) - 1) // 2]
            results.append({"test_set": set_name, "model": name, "path": str(path), "status": "ok", **facts[name],
                            "utterances": len(rows), **text.score(refs, preds, fold), **median,
                            "compute_s_min": min(rounds_s), "compute_s_max": max(rounds_s), "rounds": len(rounds_s),
                            "peak_memory_MB": memory[name]})
            utt = pd.DataFrame(text.utterance_scores(refs, preds, fold=fold))
            utt["errors"] = utt["char_sub"] + utt["char_del"] + utt["char_ins"]
            utterances.append(pd.concat([pd.DataFrame({
                "test_set": set_name, "model": name, "audio": rows["audio"].to_numpy(),
                "duration": rows["duration"].to_numpy(), "reference": refs, "prediction": preds}),
                utt[["cer", "wer", "mer", "errors"]].assign(n_ref=utt["char_n_ref"])], axis=1))
    del loaded
    gc.collect()
    table = pd.DataFrame(results)
    ok = table["status"] == "ok"
    table.attrs["reference"] = reference or next((m for m in TEACHERS if m in set(table.loc[ok, "model"])),
                                                 table.loc[ok, "model"].iloc[0] if ok.any() else None)
    preds = pd.concat(utterances, ignore_index=True) if utterances else pd.DataFrame(
        columns=["test_set", "model", "audio", "duration", "reference", "prediction", "cer", "wer", "mer",
                 "errors", "n_ref"])
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
