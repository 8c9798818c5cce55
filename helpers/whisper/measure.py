"""Every model on every test set, measured in one run: accuracy, speed, size and peak memory.

:func:`evaluate_models` is what notebook 07 measures, in four steps a reader can follow: load each model and warm
it up on one batch (:func:`load_and_warm_up`, its peak memory measured meanwhile), let the models take turns over
timed rounds (:func:`timed_rounds`, the workbook's one timing routine), then put the figures in two tables
(:func:`results_table`, :func:`predictions_table`). A model that fails to load or decode is reported with its error;
the others still get their results.
"""
from __future__ import annotations

import gc
from pathlib import Path

import pandas as pd
import torch

from ..figures.memory import PeakMemory
from ..figures.timing import Timed, take_turns
from ..files import TEACHERS
from ..speech import text
from .decode import default_device, transcribe
from .models import count_parameters, load_whisper

PREDICTION_COLUMNS = ["test_set", "model", "audio", "duration", "reference", "prediction", "cer", "wer", "mer",
                      "errors", "n_ref"]


def model_facts(loaded) -> dict:
    """Size of a loaded model: parameters (millions), layers, width and bytes on disk (local folders, MiB)."""
    cfg = loaded.model.config
    files = list(Path(loaded.source).glob("*.safetensors")) if Path(loaded.source).is_dir() else []
    return {"params_M": count_parameters(loaded.model)["total"], "encoder_layers": cfg.encoder_layers,
            "decoder_layers": cfg.decoder_layers, "d_model": cfg.d_model,
            "size_MB": sum(f.stat().st_size for f in files) / 2**20 if files else float("nan")}


def _park(loaded, device: torch.device):
    """Between its timing turns a model waits on the CPU when the decoding happens on a GPU (so models that do
    not fit on the card together can still take turns)."""
    if device.type == "cuda":
        loaded.model.to("cpu")
        torch.cuda.empty_cache()
    return loaded


def load_and_warm_up(model_paths: dict[str, str], test_sets: dict[str, pd.DataFrame], batch_size: int,
                     device: torch.device, dtype: torch.dtype, max_new_tokens: int | None, on_model=None,
                     windows: dict | None = None) -> tuple[dict, dict, dict]:
    """Load every model and decode one full batch of every test set with it, untimed (the first calls pay for
    memory allocation and kernel selection; the peak memory of a real pass is measured meanwhile). Returns
    ``(loaded, facts, failed)``: name -> LoadedWhisper (parked on the CPU when decoding on a GPU), name ->
    :func:`model_facts` with ``peak_memory_MB``, name -> the one-line error of a model that failed."""
    loaded, facts, failed = {}, {}, {}
    for name, path in model_paths.items():
        try:
            with PeakMemory(device) as mem:
                model = load_whisper(path, dtype=dtype, device=device)
                for rows in test_sets.values():
                    transcribe(model.model, model.processor, rows.head(batch_size), batch_size,
                               max_new_tokens=max_new_tokens, progress=False, shard=False,
                               window=(windows or {}).get(name))
            facts[name] = {**model_facts(model), "peak_memory_MB": mem.peak_mb}
            loaded[name] = _park(model, device)
        except Exception as err:  # noqa: BLE001 (one failing model must not lose the others' results)
            failed[name] = f"{type(err).__name__}: {err}".splitlines()[0]
        if on_model:
            on_model(name, failed.get(name))
    return loaded, facts, failed


def timed_rounds(loaded: dict, test_sets: dict[str, pd.DataFrame], batch_size: int, rounds: int,
                 device: torch.device, max_new_tokens: int | None, on_round=None, windows: dict | None = None
                 ) -> dict[tuple[str, str], Timed]:
    """Every (model, test set) pair transcribes the whole set ``rounds`` times, the pairs taking turns
    (:func:`helpers.figures.timing.take_turns`, no further warm-up), each round counting the compute seconds
    ``decode.transcribe`` measured, each model over its window in ``windows`` (name -> WindowRule; full windows
    otherwise). Returns (model, test set) -> :class:`Timed` whose outputs are ``(predictions, stats)``."""
    def run(model, rows, window):
        return lambda: transcribe(model.model, model.processor, rows, batch_size, max_new_tokens=max_new_tokens,
                                  progress=False, shard=False, window=window)

    pairs = {(name, set_name): run(model, rows, (windows or {}).get(name)) for name, model in loaded.items()
             for set_name, rows in test_sets.items()}
    return take_turns(pairs, rounds, warmup={}, seconds=lambda out: out[1]["compute_s"],
                      before=lambda pair: loaded[pair[0]].model.to(device),
                      after=lambda pair: _park(loaded[pair[0]], device), on_round=on_round)


def results_table(model_paths: dict, test_sets: dict, timed: dict, facts: dict, failed: dict, fold: str | None,
                  reference: str | None = None, windows: dict | None = None) -> pd.DataFrame:
    """One row per (test set, model): status (``ok`` or the error), size, CER/WER/MER/exact match in percent, the
    stats of the median round (``compute_s``, ``rtfx``, encoder and decoder seconds, decoder steps per second)
    with ``compute_s_min``/``compute_s_max`` and ``rounds``, peak memory, and the ``window`` it read ("full", or the
    short-window rule). ``attrs["reference"]``: the model
    comparisons are made against (``reference``, else the fine-tuned teacher, else the base teacher, else the
    first model that ran)."""
    rows = []
    for name, path in model_paths.items():
        for set_name, clips in test_sets.items():
            if name in failed:
                rows.append({"test_set": set_name, "model": name, "path": str(path), "status": failed[name]})
                continue
            t = timed[(name, set_name)]
            predictions, median = t.median_output
            window = (windows or {}).get(name)
            rows.append({"test_set": set_name, "model": name, "path": str(path), "status": "ok", **facts[name],
                         "window": "full" if window is None else window.describe(),
                         "utterances": len(clips), **text.score(clips["text"].tolist(), predictions, fold),
                         **median, "compute_s_min": t.min, "compute_s_max": t.max, "rounds": len(t.seconds)})
    table = pd.DataFrame(rows)
    ran = table.loc[table["status"] == "ok", "model"]
    table.attrs["reference"] = reference or next((m for m in TEACHERS if m in set(ran)),
                                                 ran.iloc[0] if len(ran) else None)
    return table


def predictions_table(test_sets: dict, timed: dict, fold: str | None) -> pd.DataFrame:
    """One row per (test set, model, utterance): reference, prediction, the utterance's CER/WER/MER, its character
    ``errors`` and reference length ``n_ref`` (for bootstrap intervals)."""
    parts = []
    for (name, set_name), t in timed.items():
        rows, predictions = test_sets[set_name], t.outputs[0][0]  # greedy: every round gives the same text
        refs = rows["text"].tolist()
        utt = pd.DataFrame(text.utterance_scores(refs, predictions, fold=fold))
        utt["errors"] = utt["char_sub"] + utt["char_del"] + utt["char_ins"]
        parts.append(pd.concat([pd.DataFrame({
            "test_set": set_name, "model": name, "audio": rows["audio"].to_numpy(),
            "duration": rows["duration"].to_numpy(), "reference": refs, "prediction": predictions}),
            utt[["cer", "wer", "mer", "errors"]].assign(n_ref=utt["char_n_ref"])], axis=1))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=PREDICTION_COLUMNS)


def evaluate_models(model_paths: dict[str, str], test_sets: dict[str, pd.DataFrame], batch_size: int = 16,
                    fold: str | None = "t2s", rounds: int = 3, max_new_tokens: int | None = None,
                    device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                    reference: str | None = None, progress: bool = True, windows: dict | None = None
                    ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Accuracy, speed, size and memory of every model on every test set, measured in one run.

    All models decode with the same ``batch_size`` on the same ``device`` (default: ``decode.default_device``; on
    a GPU a model waits on the CPU between its turns) over ``rounds`` interleaved rounds, which spreads whatever
    else the machine does over all models alike; a model named in ``windows`` (name -> ``WindowRule``) reads short
    windows. Returns ``(results, predictions)``: :func:`results_table` and
    :func:`predictions_table`; :mod:`helpers.report` adds intervals and speed-ups. A model that fails (missing
    folder, broken checkpoint, out of memory) gets a row with its error and the others go on.
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
    bar = tqdm(total=len(model_paths) * (1 + rounds * len(test_sets)), desc="evaluating", unit="pass",
               disable=not progress)

    def loaded_one(name, error):
        if error and progress:
            print(f"{name}: failed ({error})")
        bar.update(1)

    loaded, facts, failed = load_and_warm_up(model_paths, test_sets, batch_size, device, dtype, max_new_tokens,
                                             on_model=loaded_one, windows=windows)
    bar.total = len(model_paths) + len(loaded) * rounds * len(test_sets)
    timed = timed_rounds(loaded, test_sets, batch_size, rounds, device, max_new_tokens,
                         on_round=lambda pair: (bar.set_postfix_str(f"{pair[0]} on {pair[1]}"), bar.update(1)),
                         windows=windows)
    bar.close()
    del loaded
    gc.collect()
    return (results_table(model_paths, test_sets, timed, facts, failed, fold, reference, windows),
            predictions_table(test_sets, timed, fold))
