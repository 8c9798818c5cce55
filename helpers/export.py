"""Ship the student: a model of a run (or any Whisper folder) converted to CTranslate2, and compared with it.

    python -m helpers.export --run-dir runs/tiny --model student_adalora --quantization int8

:func:`export_model` converts with ``ctranslate2.converters.TransformersConverter`` into
``run_dir/export/<model>-ct2-<quantization>/``, with the files the runtime needs (``tokenizer.json``,
``preprocessor_config.json``) and ``export.json`` (source, its SHA-256, sizes, versions, and the window rule of a
short-window student, which the runtime then applies to clips). :func:`compare_exports` puts exports beside the
transformers model for notebook 07; :func:`ship` is notebook 07's shipping step. Running an export (``load_export``,
``transcribe_export``) lives in :mod:`helpers.whisper.runtime`, recordings of any length in
:mod:`helpers.whisper.longform`.

Two runtimes (``runtime.runtime_for``): the standard Whisper layout (51865 tokens with timestamps, 30 s window:
Breeze-ASR-25) goes through faster-whisper's ``WhisperModel``; the tiny models (own 1010-token vocabulary without
timestamp tokens, 5 s window), whose layout faster-whisper's tokenizer logic does not expect, through
``ctranslate2.models.Whisper`` with the prompt ``<|startoftranscript|><|zh|><|transcribe|><|notimestamps|>`` read
from their own tokenizer.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from .figures.timing import take_turns
from .files import RunDir, read_json, shown, write_json
from .speech.text import score
from .whisper.decode import transcribe
from .whisper.models import LoadedWhisper, load_whisper, no_transformers_bars
from .whisper.runtime import MANIFEST, Export, load_export, runtime_for, transcribe_export, window_to_use
from .whisper.short_window import RULE_FILE, WindowRule

QUANTIZATIONS = ("int8", "int8_float32", "float16", "float32")
RUNTIME_FILES = ("tokenizer.json", "preprocessor_config.json")  # copied into every export


def supported_quantizations(device: str = "cpu") -> list[str]:
    """The quantisations of :data:`QUANTIZATIONS` that CTranslate2 can run on ``device`` here (``cpu``/``cuda``)."""
    import ctranslate2

    return sorted(set(QUANTIZATIONS) & set(ctranslate2.get_supported_compute_types(device)))


def check_quantization(quantization: str, device: str = "cpu") -> None:
    """Raise ``ValueError`` when ``quantization`` is not one of :data:`QUANTIZATIONS` or ``device`` cannot run it."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"unsupported quantization {quantization!r}: choose one of {', '.join(QUANTIZATIONS)}")
    can = supported_quantizations(device)
    if quantization not in can:
        raise ValueError(f"quantization {quantization!r} cannot run on this {device}; it can run {', '.join(can)}")


def resolve_source(model: str | Path, run_dir: str | Path | None = None) -> tuple[Path, str]:
    """The folder and export name of ``model``: a stage folder of ``run_dir`` (one of ``RunDir.MODEL_FOLDERS``) or a
    model folder. Raises ``FileNotFoundError`` / ``ValueError`` naming the folder when it holds no Whisper saved in
    safetensors with its ``tokenizer.json``, and saying what to do."""
    if run_dir is not None and str(model) in RunDir.MODEL_FOLDERS:
        folder, name = getattr(RunDir(run_dir), str(model)), str(model)
        if not folder.is_dir():
            raise FileNotFoundError(f"{shown(folder)} does not exist: the run has no {name} model yet (run its "
                                    "notebook first), or give a model folder")
    else:
        folder, name = Path(model), Path(model).name
        if not folder.is_dir():
            stages = f" or one of {', '.join(RunDir.MODEL_FOLDERS)} with --run-dir" if run_dir is None else ""
            raise FileNotFoundError(f"model folder {shown(folder)} does not exist; give a saved Whisper folder{stages}")
    config = read_json(folder / "config.json")
    if config is None:
        raise ValueError(f"{shown(folder)} holds no config.json: it is not a saved model (give the folder "
                         "save_pretrained wrote)")
    if config.get("model_type") != "whisper":
        raise ValueError(f"{shown(folder)} holds a {config.get('model_type')!r} model, not Whisper: only Whisper "
                         "models are exported")
    for pattern, what in (("*.safetensors", "safetensors weights"), ("tokenizer.json", "tokenizer.json")):
        if not list(folder.glob(pattern)):
            raise ValueError(f"{shown(folder)} has no {what}: save the model with models.save_whisper")
    return folder, name


def read_window_rule(folder: Path) -> WindowRule | None:
    """The window rule of a short-window student (``folder``'s ``window_rule.json``, notebook 06 part 2), or None.
    Raises ``ValueError`` naming the file and the parameter when the rule would cut speech or exceeds the model's
    full window (``WindowRule``)."""
    found = read_json(folder / RULE_FILE)
    if found is None:
        return None
    try:
        rule = WindowRule(found["margin_s"], found["floor_s"], found["round_to_s"])
        rule.frames_for(0.0, 2 * read_json(folder / "config.json")["max_source_positions"])  # floor vs the window
    except (KeyError, TypeError) as err:
        raise ValueError(f"{shown(folder / RULE_FILE)} lacks {err}: it needs margin_s, floor_s and round_to_s "
                         "(seconds), as audio_context writes it") from None
    except ValueError as err:
        raise ValueError(f"{shown(folder / RULE_FILE)}: {err}") from None
    return rule


def fingerprint(folder: Path) -> str:
    """SHA-256 (hex) of the safetensors weights of ``folder``, file by file in name order."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")):
        with open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()


def folder_bytes(folder: Path) -> int:
    """Bytes on disk of the files directly in ``folder`` (checkpoints and other subfolders not counted)."""
    return sum(p.stat().st_size for p in Path(folder).iterdir() if p.is_file())


def fix_alignment_heads(generation: dict, decoder_layers: int, layer_map: dict | None) -> str:
    """Make ``generation["alignment_heads"]`` ([[decoder layer, head], ...], used by CTranslate2 for word
    timestamps) point at layers the model has; returns what was done, for the manifest.

    A student cut from a teacher keeps the teacher's generation config, whose heads point at decoder layers the
    student no longer has (layer 31 of a 2-layer decoder); CTranslate2 would read past the last layer (word
    timestamps crash the process). When a head points past ``decoder_layers``: with a ``layer_map``
    (``layer_map.json`` of ``student.save_student``, whose ``decoder`` list has ``decoder_layers`` entries) the
    heads of the copied teacher layers are renamed to their student layers and the others dropped; without one
    all are dropped, and CTranslate2 falls back to all heads of the last half of the decoder layers. Heads that
    all point at existing layers are kept.
    """
    heads = generation.get("alignment_heads")
    if not heads:
        return "none given: CTranslate2's default (all heads of the last half of the decoder layers)"
    if all(layer < decoder_layers for layer, _ in heads):
        return "kept"
    copied = (layer_map or {}).get("decoder", [])
    index = {teacher: student for student, teacher in enumerate(copied)} if len(copied) == decoder_layers else {}
    kept = [[index[layer], head] for layer, head in heads if layer in index]
    if kept:
        generation["alignment_heads"] = kept
        return f"remapped through layer_map.json: {len(kept)} of {len(heads)} heads kept"
    generation.pop("alignment_heads")
    return (f"dropped: the {len(heads)} heads point at decoder layers the model lacks; CTranslate2's default "
            "(all heads of the last half of the decoder layers)")


def _stage(folder: Path, stage: Path, quantization: str, layer_map: dict | None) -> dict:
    """A folder the converter reads: links to ``folder``'s files, plus what a runtime needs and the source lacks
    (``preprocessor_config.json``), a generation config with usable alignment heads, and a config whose ``dtype``
    is the one the quantisation computes in (float16 for ``float16``, else float32: a float16 checkpoint converted
    to int8 would otherwise be saved as int8_float16, which a CPU converts again at every load)."""
    from transformers import WhisperFeatureExtractor

    stage.mkdir()
    for path in folder.iterdir():
        if path.is_file() and path.name not in ("generation_config.json", "config.json"):
            try:
                (stage / path.name).symlink_to(path.resolve())
            except OSError:  # no symlinks (Windows without developer mode): copy
                shutil.copy2(path, stage / path.name)
    if not (folder / "preprocessor_config.json").exists():  # transformers 5 saves only processor_config.json
        WhisperFeatureExtractor.from_pretrained(str(folder)).save_pretrained(str(stage))
    config = read_json(folder / "config.json")
    write_json(stage / "config.json", {**config, "dtype": "float16" if quantization == "float16" else "float32"})
    generation = read_json(folder / "generation_config.json", {})
    heads = fix_alignment_heads(generation, config["decoder_layers"], layer_map)
    if generation:
        write_json(stage / "generation_config.json", generation)
    return {"alignment_heads": heads, "language": generation.get("language"), "task": generation.get("task"),
            "source_dtype": config.get("dtype") or config.get("torch_dtype"),
            "max_target_positions": config["max_target_positions"], "decoder_layers": config["decoder_layers"]}


def export_model(model: str | Path, run_dir: str | Path | None = None, *, quantization: str = "int8",
                 out_root: str | Path | None = None, device: str = "cpu") -> Path:
    """Convert ``model`` (a stage of ``run_dir`` or a model folder) to CTranslate2 with ``quantization`` and return
    the export folder ``<out_root>/<name>-ct2-<quantization>`` (``out_root`` defaults to ``run_dir/export``, or
    ``export`` beside a model folder).

    The conversion runs into a temporary folder beside the target, is loaded once to check it, and only then
    replaces an earlier export of the same name: a failing export leaves the earlier one as it was. The export
    holds ``model.bin``, ``vocabulary.json``, ``config.json``, :data:`RUNTIME_FILES` and ``export.json``: source
    folder, source SHA-256 (:func:`fingerprint`), quantisation, bytes on disk of source and export, alignment heads
    (:func:`fix_alignment_heads`), runtime (:func:`runtime_for`), language, versions, and ``window_rule``: the
    ``{margin_s, floor_s, round_to_s}`` of the source's ``window_rule.json`` (a short-window student; the file is
    copied too, for plain CTranslate2 users), else None. ``runtime.transcribe_export`` applies it to clips. Errors:
    see :func:`check_quantization`, :func:`resolve_source` and :func:`read_window_rule`.
    """
    import ctranslate2
    import faster_whisper
    import torch
    import transformers
    from ctranslate2.converters import TransformersConverter

    check_quantization(quantization, device)
    folder, name = resolve_source(model, run_dir)
    rule = read_window_rule(folder)
    root = Path(out_root) if out_root else (RunDir(run_dir).export if run_dir is not None else folder.parent / "export")
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"{name}-ct2-{quantization}"
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
    try:
        # a distilled student's folder has no layer_map.json; the run's student_init (which it was trained from) has
        layer_map = read_json(folder / "layer_map.json") or (
            read_json(RunDir(run_dir).student_init / "layer_map.json") if run_dir is not None else None)
        info = _stage(folder, work / "source", quantization, layer_map)
        converter = TransformersConverter(str(work / "source"),
                                          copy_files=list(RUNTIME_FILES) + ([RULE_FILE] if rule else []))
        with no_transformers_bars():
            converter.convert(str(work / "ct2"), quantization=quantization)
        ctranslate2.models.Whisper(str(work / "ct2"), device=device)  # loads: a broken export goes no further
        vocabulary = json.loads((work / "ct2" / "vocabulary.json").read_text("utf-8"))
        window_s = read_json(work / "ct2" / "preprocessor_config.json")["chunk_length"]
        manifest = {"source": str(folder.resolve()), "name": name, "source_sha256": fingerprint(folder),
                    "quantization": quantization, "source_bytes": folder_bytes(folder),
                    "runtime": runtime_for(vocabulary, window_s), "window_s": window_s,
                    "vocabulary_size": len(vocabulary), **info, "window_rule": rule.to_dict() if rule else None,
                    "versions": {"ctranslate2": ctranslate2.__version__, "faster_whisper": faster_whisper.__version__,
                                 "transformers": transformers.__version__, "torch": torch.__version__},
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        write_json(work / "ct2" / MANIFEST, manifest)
        manifest["export_bytes"] = folder_bytes(work / "ct2")
        write_json(work / "ct2" / MANIFEST, manifest)
        if target.exists():
            target.rename(work / "previous")
        (work / "ct2").rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


# ---------------------------------------------------------------------------------------------
# Side by side with the transformers model (notebook 07), and the command line
# ---------------------------------------------------------------------------------------------
def window_text(rule: WindowRule | None) -> str:
    """A window rule for a table, in the words of the evaluation's rows (``WindowRule.describe``), or ``"full"`` for
    the model's full window."""
    return "full" if rule is None else rule.describe()


def _contenders(models: dict, threads: int) -> dict[str, tuple[LoadedWhisper | Export, WindowRule | None]]:
    """name -> ``(model, window rule or None)`` of :func:`compare_exports`' ``models``: exports loaded with
    ``threads``, and the window each runs with (an export's own rule unless one is given; transformers: full
    unless one is given)."""
    out = {}
    for name, given in models.items():
        m, window = given if isinstance(given, tuple) else (given, "auto")
        if isinstance(m, Export) and m.threads != threads:
            raise ValueError(f"export {name!r} was loaded with {m.threads} threads, the comparison runs with "
                             f"{threads}: load it with threads={threads} or pass its folder")
        m = m if isinstance(m, (LoadedWhisper, Export)) else load_export(m, threads=threads)
        if isinstance(m, LoadedWhisper):
            out[name] = (m, None if isinstance(window, str) and window == "auto" else window)
        else:
            out[name] = (m, window_to_use(m, window))
    return out


def compare_exports(models: dict, rows: pd.DataFrame, *, reference: str | None = None, batch_size: int = 16,
                    rounds: int = 3, warmup: int = 2, threads: int | None = None,
                    fold: str | None = "t2s") -> pd.DataFrame:
    """Accuracy, speed and size of transformers models and exports on the same clips ``rows``, side by side.

    ``models`` maps a name to a ``LoadedWhisper``, an :class:`Export` or an export folder, or to a tuple
    ``(model, window)`` with ``window`` a ``short_window.WindowRule`` (short windows) or None (full windows). An
    export whose ``export.json`` carries a window rule (a short-window student's) runs it unless a window is given;
    a transformers model runs full windows unless one is given. All run with the same ``threads`` (default:
    torch's current count; torch is set to it for the duration, exports are loaded with it), take turns for
    ``rounds`` timing rounds after ``warmup`` untimed clips each, on the same batches. Returns one row per model:
    ``runtime``, ``quantization``, ``window`` (:func:`window_text`), ``size_mb`` (MB: a transformers model's
    weights in the dtype it runs in, i.e. its safetensors saved so; an export's folder on disk),
    ``cer``/``wer``/``mer``/``exact_match`` against ``rows["text"]`` (``text.score`` with ``fold``),
    ``cer_vs_reference`` (against the ``reference`` model's transcripts), ``audio_s`` (the seconds it read),
    ``rtfx`` and ``compute_s`` (median of the rounds) with their ``_min``/``_max``, ``encoder_s`` and
    ``decoder_s`` (median), ``outputs`` and ``looped`` (transcripts that ran into the token budget or repeat
    themselves at the end), ``speed_up`` (median RTFx over the reference's; ``reference`` defaults to the first
    model) and ``predictions``. Raises ``ValueError`` for an unknown ``reference`` or an export loaded with other
    threads.
    """
    import torch

    reference = reference or next(iter(models))
    if reference not in models:
        raise ValueError(f"reference {reference!r} is not one of the models: {', '.join(models)}")
    threads = threads or torch.get_num_threads()
    loaded = _contenders(models, threads)

    def run(m, rule, clips):
        if isinstance(m, LoadedWhisper):
            return lambda: transcribe(m.model, m.processor, clips, batch_size, progress=False, shard=False,
                                      window=rule)
        return lambda: transcribe_export(m, clips, batch_size=batch_size, window=rule)

    was = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:  # the models take turns: a disturbance on the machine hits them alike
        timed = take_turns({name: run(*mr, rows) for name, mr in loaded.items()}, max(1, rounds),
                           warmup={name: run(*mr, rows.head(warmup)) for name, mr in loaded.items()},
                           seconds=lambda out: out[1]["compute_s"])
    finally:
        torch.set_num_threads(was)
    table = {name: _table_row(m, rule, timed[name], timed[reference], rows["text"].tolist(), fold)
             for name, (m, rule) in loaded.items()}
    out = pd.DataFrame.from_dict(table, orient="index")
    out["speed_up"] = out["rtfx"] / out.loc[reference, "rtfx"]
    return out


def _table_row(m: LoadedWhisper | Export, rule: WindowRule | None, timed, reference, refs: list[str],
               fold: str | None) -> dict:
    """One row of :func:`compare_exports`: the model ``m`` run with ``rule``, its rounds ``timed`` (a
    ``figures.timing.Timed`` of ``(texts, stats)``), the ``reference``'s rounds, the reference texts ``refs``."""
    preds, median = timed.median_output  # greedy: every round gives the same text
    hf = isinstance(m, LoadedWhisper)
    size = sum(p.numel() * p.element_size() for p in m.model.parameters()) if hf else folder_bytes(m.path)
    return {"path": str(m.source if hf else m.path), "runtime": "transformers" if hf else m.manifest["runtime"],
            "quantization": str(m.model.dtype).removeprefix("torch.") if hf else m.manifest["quantization"],
            "window": window_text(rule), "size_mb": size / 1e6, **score(refs, preds, fold=fold),
            "cer_vs_reference": score(reference.outputs[0][0], preds, fold=fold)["cer"],
            "audio_s": median["audio_s"], "rtfx": median["audio_s"] / timed.median,
            "rtfx_min": median["audio_s"] / timed.max, "rtfx_max": median["audio_s"] / timed.min,
            "compute_s": timed.median,
            "compute_s_min": timed.min, "compute_s_max": timed.max,
            "encoder_s": median["encoder_s"], "decoder_s": median["decoder_s"], "outputs": median["outputs"],
            "looped": median["looped"], "predictions": preds}


def ship(run_dir: str | Path, student: str, rows: pd.DataFrame, quantizations=("int8", "float32"),
         batch_size: int = 16, rounds: int = 3, fold: str | None = "t2s") -> tuple[dict[str, Path], pd.DataFrame]:
    """Notebook 07's shipping step: export the ``student`` stage of ``run_dir`` (a stage name of ``files.STAGES``)
    with each of ``quantizations``, then measure the transformers teacher, the transformers student and the
    exports side by side on ``rows`` (:func:`compare_exports`, the teacher as reference).

    When the run has a short-window student (``run_dir/student_short``, notebook 06 part 2), it is exported too,
    with the first of ``quantizations``, and two more rows join: ``"short-window student (CTranslate2 <q>, short
    window)"`` (its export runs the window rule it carries) and ``"<student> (CTranslate2 <q>, short window,
    untuned)"``: ``student``'s own export run over the same short windows, so that a learner sees why tuning is
    needed (notebook 06 tunes the student chosen on validation, ``files.best_student``, which notebook 07 ships: the
    untuned row is then the tuned student's own starting point). Returns ``({quantization: export folder, plus
    "short-window <q>" for the short-window student}, table)``."""
    run = RunDir(run_dir)
    source = run.stage(student)
    exports = {q: export_model(source.name, run.root, quantization=q) for q in quantizations}
    contenders = {"fine-tuned teacher (transformers fp32)": load_whisper(run.teacher),
                  f"{student} (transformers fp32)": load_whisper(source),
                  **{f"{student} (CTranslate2 {q})": folder for q, folder in exports.items()}}
    if (run.student_short / "config.json").exists():
        q = next(iter(quantizations))
        short = exports[f"short-window {q}"] = export_model(run.student_short.name, run.root, quantization=q)
        contenders[f"short-window student (CTranslate2 {q}, short window)"] = short
        rule = read_window_rule(run.student_short)
        if rule is not None:
            contenders[f"{student} (CTranslate2 {q}, short window, untuned)"] = (exports[q], rule)
    table = compare_exports(contenders, rows, reference=next(iter(contenders)), batch_size=batch_size,
                            rounds=rounds, fold=fold)
    return exports, table


def main(argv: list[str] | None = None) -> int:
    """``python -m helpers.export``: export one model of a run (or a folder); errors end in one line, exit 2."""
    ap = argparse.ArgumentParser(prog="python -m helpers.export", description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", help="the course's output folder (runs/<profile>)")
    ap.add_argument("--model", default="student_adalora",
                    help=f"a stage of the run ({', '.join(RunDir.MODEL_FOLDERS)}) or a model folder "
                         "(default student_adalora)")
    ap.add_argument("--quantization", default="int8", help=" | ".join(QUANTIZATIONS) + " (default int8)")
    ap.add_argument("--out", help="folder for the export (default: run_dir/export)")
    args = ap.parse_args(argv)
    try:
        path = export_model(args.model, args.run_dir, quantization=args.quantization, out_root=args.out)
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as err:
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    m = read_json(path / MANIFEST)
    print(f"exported {shown(m['source'])} -> {shown(path)} ({m['quantization']}, {m['export_bytes'] / 1e6:.1f} MB "
          f"from {m['source_bytes'] / 1e6:.1f} MB; runtime {m['runtime']}; alignment heads {m['alignment_heads']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
