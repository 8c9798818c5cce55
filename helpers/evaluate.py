"""Transcribing, scoring and timing models side by side; speculative decoding with the student as assistant.

The evaluation notebook (07) asks one question: was it worth it? :func:`evaluate_models` answers it for
every model and test set in one run: accuracy (CER, WER, MER on normalised text, corpus level and per
utterance), speed (RTFx with a warm-up, the same batch size and device for all models, the encoder
and the decoder timed apart), size (parameters, layers, bytes on disk) and peak memory. A model that
fails to load or decode is reported with its error; the others still get their results.

:func:`speculative_check` runs the teacher with the student as assistant model: the teacher verifies
every token the student drafts, so its transcripts stay the teacher's greedy ones while most tokens
come from the cheap decoder. When the student's encoder is the teacher's own, the assistant is the
student's decoder alone, fed the teacher's encoder outputs, so no second encoder pass runs.
"""
from __future__ import annotations

import copy
import gc
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import text
from .collate import read_audio

# The stages the course writes into run_dir, in order: (name, folder). The base teacher's folder or hub
# id is read from the fine-tuned teacher's metrics (notebook 02 records it).
STAGES = (("base teacher", None), ("fine-tuned teacher", "teacher"), ("student before KD", "student_init"),
          ("distilled student", "student_kd"), ("AdaLoRA student", "student_adalora"))
TEACHERS = ("fine-tuned teacher", "base teacher")
STUDENTS = ("distilled student", "AdaLoRA student", "student before KD")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def _quiet_generation():
    """Silence transformers' per-call notes (assisted generation repeats one for every drafted chunk)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


@torch.no_grad()
def transcribe(model, processor, manifest: pd.DataFrame, batch_size: int = 16, max_new_tokens: int | None = None,
               progress: bool = True, desc: str = "transcribing", assistant_model=None) -> tuple[list[str], dict]:
    """Greedy transcripts of every row of ``manifest`` (in manifest order), batched by similar length.

    Returns ``(predictions, stats)``. ``stats`` hold ``audio_s`` (seconds of audio), ``compute_s`` (wall
    seconds), ``rtfx`` (audio seconds per compute second), ``encoder_s`` and ``decoder_s`` (the encoder
    pass and the generation loop timed apart), ``decoder_steps`` (generation steps the batches ran: a batch
    runs until its longest transcript ends), ``decoder_steps_per_s`` (steps per second of the generation
    loop alone) and ``ms_per_step`` (wall ms per step, encoder included, which makes models comparable
    when their transcripts differ in length).

    With ``assistant_model`` the model decodes speculatively (one utterance at a time, ``batch_size``
    must be 1); the assistant's drafts are verified, so the transcripts are the model's own. The
    encoder then runs inside ``generate`` and ``encoder_s`` is not separated (NaN).
    """
    from tqdm.auto import tqdm

    if len(manifest) == 0:
        raise ValueError("the manifest to transcribe has no rows")
    if assistant_model is not None and batch_size != 1:
        raise ValueError(f"speculative decoding runs one utterance at a time: batch_size must be 1, got {batch_size}")
    fe = processor.feature_extractor
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    max_new_tokens = max_new_tokens or model.config.max_target_positions - 8
    order = np.argsort(manifest["duration"].to_numpy(), kind="stable")[::-1]  # longest first: memory peaks early
    predictions: list[str | None] = [None] * len(manifest)
    steps, encoder_s, decoder_s = 0, 0.0, 0.0
    audio_s = float(manifest["duration"].sum())
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(manifest), desc=desc, unit="utt", disable=not progress)
    with _quiet_generation():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            audio = [read_audio(manifest["audio"].iloc[i], fe.sampling_rate) for i in idx]
            feats = fe(audio, sampling_rate=fe.sampling_rate, return_tensors="pt").input_features.to(device, dtype)
            _sync(device)
            t0 = time.perf_counter()
            if assistant_model is None:
                encoded = model.get_encoder()(feats)
                _sync(device)
                t1 = time.perf_counter()
                out = model.generate(encoder_outputs=encoded, max_new_tokens=max_new_tokens)
            else:
                t1 = t0
                out = model.generate(feats, assistant_model=assistant_model, max_new_tokens=max_new_tokens)
            _sync(device)
            t2 = time.perf_counter()
            encoder_s, decoder_s = encoder_s + (t1 - t0), decoder_s + (t2 - t1)
            steps += out.shape[1]
            for i, pred in zip(idx, processor.tokenizer.batch_decode(out, skip_special_tokens=True)):
                predictions[i] = pred.strip()
            bar.update(len(idx))
            done = manifest["duration"].iloc[order[:start + len(idx)]].sum()
            bar.set_postfix(audio_s_per_s=f"{done / max(encoder_s + decoder_s, 1e-9):.1f}")
    bar.close()
    model.train(was_training)
    compute_s = encoder_s + decoder_s
    return predictions, {"audio_s": audio_s, "compute_s": compute_s, "rtfx": rtfx(audio_s, max(compute_s, 1e-9)),
                         "encoder_s": encoder_s if assistant_model is None else float("nan"),
                         "decoder_s": decoder_s, "decoder_steps": steps,
                         "decoder_steps_per_s": steps / max(decoder_s, 1e-9),
                         "ms_per_step": 1000 * compute_s / max(steps, 1)}


def score(references: list[str], predictions: list[str], fold: str | None = "t2s") -> dict:
    """Corpus CER, WER and MER in percent, and the share of exactly right utterances."""
    exact = np.mean([text.normalize(r, fold=fold) == text.normalize(p, fold=fold) for r, p in zip(references, predictions)])
    return {"cer": text.cer(references, predictions, fold=fold), "wer": text.wer(references, predictions, fold=fold),
            "mer": text.mer(references, predictions, fold=fold), "exact_match": 100.0 * float(exact)}


def rtfx(audio_seconds: float, compute_seconds: float) -> float:
    """Inverse real-time factor: seconds of audio transcribed per second of compute (higher is faster)."""
    if compute_seconds <= 0:
        raise ValueError(f"compute time must be positive, got {compute_seconds}")
    return audio_seconds / compute_seconds


def timed_transcribe(model, processor, manifest: pd.DataFrame, batch_size: int, rounds: int = 2, warmup: int = 4,
                     max_new_tokens: int | None = None, assistant_model=None) -> tuple[list[str], dict]:
    """:func:`transcribe` after ``warmup`` untimed utterances, ``rounds`` times; the fastest round counts
    (the least disturbed by other work on the machine). Greedy decoding is deterministic, so every round
    gives the same transcripts."""
    if warmup:
        transcribe(model, processor, manifest.head(warmup), batch_size, max_new_tokens, progress=False,
                   assistant_model=assistant_model)
    best = None
    for _ in range(max(1, rounds)):
        preds, stats = transcribe(model, processor, manifest, batch_size, max_new_tokens, progress=False,
                                  assistant_model=assistant_model)
        if best is None or stats["compute_s"] < best[1]["compute_s"]:
            best = (preds, stats)
    return best


def compare_speed(models: dict, manifest: pd.DataFrame, batch_size: int = 16, rounds: int = 2,
                  warmup: int = 4) -> pd.DataFrame:
    """Decoding speed of several loaded models on the same clips, same batch size, same device, side by side.

    The models take turns for ``rounds`` rounds over all clips, after ``warmup`` untimed clips each, and the
    fastest round of each counts. ``models`` maps a name to a LoadedWhisper. Returns one row per model with
    the stats of :func:`transcribe` and the transcripts of its fastest round (for scoring).
    """
    for loaded in models.values():
        transcribe(loaded.model, loaded.processor, manifest.head(warmup), batch_size, progress=False)
    best: dict[str, dict] = {}
    for _ in range(rounds):
        for name, loaded in models.items():
            preds, stats = transcribe(loaded.model, loaded.processor, manifest, batch_size, progress=False)
            if name not in best or stats["compute_s"] < best[name]["compute_s"]:
                best[name] = {**stats, "predictions": preds}
    return pd.DataFrame.from_dict(best, orient="index")


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
    from .data import read_json

    run_dir = Path(run_dir)
    found = {}
    for name, folder in STAGES:
        if folder is None:
            base = (read_json(run_dir / "teacher" / "metrics.json") or {}).get("base_model")
            if base:
                found[name] = str(base)
        elif (run_dir / folder / "config.json").exists():
            found[name] = str(run_dir / folder)
    if not found:
        raise FileNotFoundError(f"no model found in {run_dir}: run notebooks 02 to 06 with this run_dir first, "
                                "or give `models` as {name: folder or hub id}")
    return found


def describe_models(model_paths: dict[str, str]) -> pd.DataFrame:
    """What will be evaluated, read from each model's config (nothing is loaded): folder (relative to the
    repository when inside it) or hub id, layers, width and vocabulary. A model whose config cannot be
    read shows why in ``note``."""
    from transformers import WhisperConfig

    from .config import REPO

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
        test_sets = {"test": Path(run_dir) / "data" / "test.jsonl"}
    if not isinstance(test_sets, dict) or not test_sets:
        raise ValueError(f"test_sets must map a name to a manifest (.jsonl) or CSV file, got {test_sets!r}")
    from .config import repo_path

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
    from . import data

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
        rows = data.read_csv(path, audio_column, text_column, split="test")
    kept, skipped = data.check_rows(rows, max_duration_s)
    if kept.empty:
        reasons = skipped["reason"].value_counts().to_dict() if len(skipped) else {}
        raise ValueError(f"test set {path} has no usable rows ({len(rows)} rows; skipped: {reasons})")
    return kept.reset_index(drop=True), skipped


def model_facts(loaded) -> dict:
    """Size of a loaded model: parameters (millions), layers, width and bytes on disk (local folders)."""
    from .models import count_parameters

    cfg = loaded.model.config
    files = list(Path(loaded.source).glob("*.safetensors")) if Path(loaded.source).is_dir() else []
    return {"params_M": count_parameters(loaded.model)["total"], "encoder_layers": cfg.encoder_layers,
            "decoder_layers": cfg.decoder_layers, "d_model": cfg.d_model,
            "size_MB": sum(f.stat().st_size for f in files) / 2**20 if files else float("nan")}


class PeakMemory:
    """Peak memory taken while the block runs, above what was in use when it started, in MiB.

    GPU: torch's peak allocated memory on the device. CPU: the process's resident set size, sampled
    every ``interval`` seconds by a background thread (short spikes between samples can be missed).
    """

    def __init__(self, device: str | torch.device = "cpu", interval: float = 0.005):
        self.device, self.interval, self.peak_mb = torch.device(device), interval, float("nan")

    def __enter__(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        import psutil

        proc = psutil.Process()
        self._base = self._peak = proc.memory_info().rss
        self._stop = threading.Event()

        def sample():
            while not self._stop.is_set():
                self._peak = max(self._peak, proc.memory_info().rss)
                self._stop.wait(self.interval)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            peak = self._peak
        self.peak_mb = (peak - self._base) / 2**20
        return False


# ---------------------------------------------------------------------------------------------
# Every model on every test set
# ---------------------------------------------------------------------------------------------
def default_device() -> tuple[torch.device, torch.dtype]:
    """Where to evaluate: the first CUDA GPU in fp16 (how a student is deployed), else the CPU in fp32."""
    if torch.cuda.is_available():
        return torch.device("cuda:0"), torch.float16
    return torch.device("cpu"), torch.float32


def evaluate_models(model_paths: dict[str, str], test_sets: dict[str, pd.DataFrame], batch_size: int = 16,
                    fold: str | None = "t2s", rounds: int = 2, warmup: int = 4, max_new_tokens: int | None = None,
                    device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                    reference: str | None = None, progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Accuracy, speed, size and memory of every model on every test set, measured in one run.

    Models are loaded one at a time (so large ones need not fit together), each decodes every test set
    with the same ``batch_size`` on the same ``device`` (default: :func:`default_device`): ``warmup`` untimed utterances, then ``rounds``
    timed passes, the fastest of which counts. Returns ``(results, predictions)``:

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

    from .models import load_whisper

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
                                "utterances": len(rows), **score(refs, preds, fold), **stats,
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
    from .data import _atomic_write, write_json

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(out_dir / "results.csv", results.to_csv(index=False))
    _atomic_write(out_dir / "predictions.csv", predictions.to_csv(index=False))
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


def conclusion(results: pd.DataFrame, test_set: str, teacher: str | None = None, student: str | None = None) -> str:
    """A few sentences computed from the results: how much smaller and faster the best student is than the
    teacher, and at what cost in CER."""
    ok = results[(results["status"] == "ok") & (results["test_set"] == test_set)].set_index("model")
    teacher = teacher or next((m for m in TEACHERS if m in ok.index), None)
    students = [m for m in STUDENTS if m in ok.index and m != "student before KD"] or \
               [m for m in STUDENTS if m in ok.index]
    if teacher is None or not students:
        return f"On {test_set}: not enough stages to compare (found {list(ok.index)})."
    student = student or min(students, key=lambda m: ok.loc[m, "cer"])
    t, s = ok.loc[teacher], ok.loc[student]
    gap = s["cer"] - t["cer"]
    verdict = ("as accurate as" if abs(gap) < 0.5 else
               f"{gap:.1f} points less accurate than" if gap > 0 else f"{-gap:.1f} points more accurate than")
    return (f"On {test_set}, the {student} has {s['params_M']:.1f}M parameters, {100 * s['params_M'] / t['params_M']:.0f}% "
            f"of the {teacher}'s {t['params_M']:.1f}M ({s['decoder_layers']} decoder layers instead of "
            f"{t['decoder_layers']}). It transcribes at {s['rtfx']:.0f}x real time against {t['rtfx']:.0f}x, a "
            f"{s['rtfx'] / t['rtfx']:.2f}x speed-up end to end ({s['decoder_steps_per_s'] / t['decoder_steps_per_s']:.2f}x "
            f"per decoder step), and it is {verdict} the {teacher} (CER {s['cer']:.1f}% vs {t['cer']:.1f}%). "
            f"The encoder, which both run in full, takes {100 * t['encoder_s'] / t['compute_s']:.0f}% of the "
            f"{teacher}'s compute here: a shorter decoder can only save on the rest.")


# ---------------------------------------------------------------------------------------------
# Speculative decoding
# ---------------------------------------------------------------------------------------------
def make_assistant(teacher, student) -> tuple[object, str]:
    """The assistant model for speculative decoding and how it runs, in words.

    Both models must share the tokenizer (the teacher verifies the student's tokens by id): ``ValueError``
    otherwise. When the student's encoder equals the teacher's, the assistant is the student's decoder as
    a ``WhisperForCausalLM`` that reads the teacher's encoder outputs (no second encoder pass); otherwise
    the whole student runs, its own encoder included.
    """
    from .distill import same_encoder
    from .student import check_compatible

    try:
        check_compatible(teacher.tokenizer, student.tokenizer)
    except ValueError as err:
        raise ValueError("speculative decoding needs the teacher's tokenizer in the assistant: " + str(err)) from err
    t_param = next(teacher.model.parameters())
    if same_encoder(teacher.model, student.model):
        return decoder_only(student.model).to(t_param.device, t_param.dtype), \
            "decoder only: reads the teacher's encoder outputs (the encoders are identical)"
    return student.model.to(t_param.device).eval(), \
        "whole student: its encoder differs from the teacher's, so it runs its own"


def decoder_only(model):
    """The decoder (and output projection) of a Whisper ``model`` as a ``WhisperForCausalLM`` in eval mode: an
    assistant that reads the encoder outputs the main model computed. ``model`` is left as it is."""
    from transformers import WhisperForCausalLM

    decoder = WhisperForCausalLM(copy.deepcopy(model.config))  # its __init__ edits the config
    decoder.load_state_dict({k: v for k, v in model.state_dict().items()
                             if k.startswith("model.decoder.") or k == "proj_out.weight"}, strict=True)
    decoder.generation_config = copy.deepcopy(model.generation_config)  # generate() edits the assistant's
    param = next(model.parameters())
    return decoder.to(param.device, param.dtype).eval()


def pick_speculative_pair(model_paths: dict[str, str], speculative) -> tuple[str, str] | None:
    """``(teacher name, assistant name)`` for the speculative check, or None when it is off or impossible.

    ``speculative`` is False (off), True (the fine-tuned teacher, else the base teacher, with the distilled
    student, else the AdaLoRA student, else the student before KD), or the name of the assistant model.
    """
    if speculative is False or speculative is None:
        return None
    teacher = next((m for m in TEACHERS if m in model_paths), None)
    if speculative is True:
        assistant = next((m for m in STUDENTS if m in model_paths), None)
    else:
        if speculative not in model_paths:
            raise ValueError(f"speculative = {speculative!r} names no model; models: {list(model_paths)}")
        assistant = speculative
    if teacher is None or assistant is None:
        return None
    return teacher, assistant


def speculative_check(teacher, student, manifest: pd.DataFrame, rounds: int = 1, warmup: int = 2,
                      max_new_tokens: int | None = None, fold: str | None = "t2s") -> tuple[dict, pd.DataFrame]:
    """Speculative decoding against the teacher alone and the student alone, one utterance at a time.

    Returns ``(summary, speed)``: ``summary`` has the assistant's kind, the number of utterances, how many
    speculative transcripts differ from the teacher's greedy ones (expected 0), the indices of those, and
    the speed-up; ``speed`` is one row per way of decoding (teacher greedy, speculative, student greedy)
    with RTFx, wall seconds and CER, all at batch size 1 on the same clips.
    """
    assistant, how = make_assistant(teacher, student)
    refs = manifest["text"].tolist()
    runs = {}
    for name, model, processor, helper in (("teacher alone", teacher.model, teacher.processor, None),
                                           ("teacher + student (speculative)", teacher.model, teacher.processor,
                                            assistant),
                                           ("student alone", student.model, student.processor, None)):
        preds, stats = timed_transcribe(model, processor, manifest, 1, rounds, warmup, max_new_tokens, helper)
        runs[name] = (preds, stats)
    greedy, spec = runs["teacher alone"][0], runs["teacher + student (speculative)"][0]
    differ = [i for i, (a, b) in enumerate(zip(greedy, spec)) if a != b]
    speed = pd.DataFrame({name: {"RTFx": s["rtfx"], "seconds": s["compute_s"], "CER %": score(refs, p, fold)["cer"]}
                          for name, (p, s) in runs.items()}).T
    speed["speed-up"] = speed["RTFx"] / speed.loc["teacher alone", "RTFx"]
    summary = {"assistant": how, "utterances": len(manifest), "differ": len(differ),
               "differing_rows": [int(i) for i in differ],
               "speed_up": float(speed.loc["teacher + student (speculative)", "speed-up"]),
               "speed": speed.round(4).to_dict("index")}
    return summary, speed
