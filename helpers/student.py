"""Notebook 04: the student, a Whisper cut down from a larger one by copying chosen layers.

    python -m helpers.student --run-dir runs/tiny -p decoder_layers 3

A student keeps the source's embeddings, layer norms, convolutions and whole encoder (unless asked to
shrink it), and takes evenly spaced decoder layers, always including the source's last one. Works for any
Whisper size; nothing here assumes the tiny model's shapes.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path

import torch
from transformers import WhisperForConditionalGeneration

from . import cli
from .files import RunDir, shown, write_json
from .speech.audio import log_mel, read_row
from .speech.manifest import load_manifest
from .whisper import models
from .whisper.decode import compare_speed

_LAYER_KEY = re.compile(r"^model\.(encoder|decoder)\.layers\.(\d+)\.(.*)$")


def layer_map(n_teacher: int, n_student: int) -> list[int]:
    """Teacher layer indices that initialise student layers 0 .. n_student-1 (strictly increasing).

    Evenly spaced from 0 to ``n_teacher - 1`` (the last is always the teacher's last), position
    ``j * (n_teacher - 1) / (n_student - 1)`` rounded half up: 12 -> 2 gives [0, 11], 12 -> 3 gives
    [0, 6, 11] (5.5 rounds to 6), 12 -> 4 gives [0, 4, 7, 11]. One student layer takes the teacher's last.
    Raises ``ValueError`` when ``n_student < 1`` or ``n_student > n_teacher``.
    """
    if n_student < 1 or n_student > n_teacher:
        raise ValueError(f"a student needs 1 to {n_teacher} layers to copy from a {n_teacher}-layer teacher, "
                         f"got {n_student} student layers")
    if n_student == 1:
        return [n_teacher - 1]
    span, gaps = n_teacher - 1, n_student - 1
    # round half up in integers: floor(j * span / gaps + 1/2); steps are >= 1, so indices never repeat
    return [(2 * j * span + gaps) // (2 * gaps) for j in range(n_student)]


def init_student(source_model, decoder_layers: int = 2,
                 encoder_layers: int | None = None) -> tuple[WhisperForConditionalGeneration, dict]:
    """A new Whisper of ``decoder_layers`` (and ``encoder_layers``; None keeps all) copied from ``source_model``.

    Layer j of the student is a copy of source layer ``map[j]`` (see :func:`layer_map`); all other
    weights (embeddings, positional embeddings, convolutions, layer norms) are copied as they are. The
    weights are new tensors of the source's dtype and device (training the student leaves the source
    alone), loaded with ``strict=True``; the output projection stays tied to the token embedding when
    the source's is. Returns ``(student, {"decoder": [...], "encoder": [...]})``.
    """
    cfg = source_model.config
    maps = {"decoder": layer_map(cfg.decoder_layers, decoder_layers),
            "encoder": layer_map(cfg.encoder_layers, cfg.encoder_layers if encoder_layers is None else encoder_layers)}
    new_index = {part: {t: s for s, t in enumerate(m)} for part, m in maps.items()}
    state, copies = {}, {}
    for key, tensor in source_model.state_dict(keep_vars=True).items():
        if (match := _LAYER_KEY.match(key)):
            part, index, rest = match.groups()
            if int(index) not in new_index[part]:
                continue
            key = f"model.{part}.layers.{new_index[part][int(index)]}.{rest}"
        if id(tensor) not in copies:  # a tied parameter (proj_out = embed_tokens) is copied once
            copies[id(tensor)] = tensor.detach().clone()
        state[key] = copies[id(tensor)]

    config = copy.deepcopy(cfg)
    config.decoder_layers, config.encoder_layers = len(maps["decoder"]), len(maps["encoder"])
    with torch.device("meta"):  # no random init: every weight comes from the source
        student = WhisperForConditionalGeneration(config)
    student.load_state_dict(state, strict=True, assign=True)
    tied = source_model.proj_out.weight.data_ptr() == source_model.model.decoder.embed_tokens.weight.data_ptr()
    if tied:
        student.proj_out.weight = student.model.decoder.embed_tokens.weight
    student.generation_config = copy.deepcopy(source_model.generation_config)
    student.train(source_model.training)
    return student, maps


def make_student(teacher: models.LoadedWhisper, student_source: str = "teacher", decoder_layers: int = 2,
                 encoder_layers: int | None = None) -> tuple[models.LoadedWhisper, dict]:
    """Cut a student from the teacher (``student_source="teacher"``) or from another checkpoint (hub id or folder).

    Another checkpoint is loaded with ``models.load_whisper`` in the teacher's dtype and on its device and
    must share the teacher's tokenizer (``models.check_compatible``). The student keeps the processor (feature
    extractor, tokenizer) of the model it was cut from and the teacher's language/task prompt. Returns
    ``(LoadedWhisper whose source names that model, layer maps)``.
    """
    gen = teacher.model.generation_config
    language, task = getattr(gen, "language", None) or "zh", getattr(gen, "task", None) or "transcribe"
    if student_source == "teacher":
        source_model, processor, source = teacher.model, copy.deepcopy(teacher.processor), teacher.source
    else:
        loaded = models.load_whisper(student_source, language=language, task=task, dtype=teacher.model.dtype,
                                     device=teacher.model.device)
        models.check_compatible(teacher.tokenizer, loaded.tokenizer)
        source_model, processor, source = loaded.model, loaded.processor, loaded.source
    student, maps = init_student(source_model, decoder_layers, encoder_layers)
    models.set_prompt(student, processor, language=language, task=task)
    return models.LoadedWhisper(student, processor, source), maps


def save_student(loaded: models.LoadedWhisper, out_dir: str | Path, layer_maps: dict) -> Path:
    """Save the student with ``models.save_whisper`` and write ``layer_map.json`` next to it.

    The json holds the maps, the source's layer counts (a map's last entry + 1: the last source layer
    is always copied) and the source. Returns the folder.
    """
    out_dir = models.save_whisper(loaded.model, loaded.processor, out_dir)
    info = {"decoder": list(layer_maps["decoder"]), "encoder": list(layer_maps["encoder"]),
            "teacher_decoder_layers": layer_maps["decoder"][-1] + 1,
            "teacher_encoder_layers": layer_maps["encoder"][-1] + 1, "source": loaded.source}
    write_json(out_dir / "layer_map.json", info)
    return out_dir


def encoder_outputs_equal(teacher_model, student_model, input_features: torch.Tensor, atol: float = 0.0) -> bool:
    """Whether both encoders give the same output for ``input_features`` (batch x mel bins x frames).

    Runs in eval mode without gradients (each model's mode is restored afterwards). ``atol=0`` asks for
    bit-identical outputs; otherwise every element must be within ``atol``.
    """
    outputs = []
    for model in (teacher_model, student_model):
        was_training = model.training
        model.eval()
        try:
            param = next(model.parameters())
            with torch.no_grad():
                out = model.get_encoder()(input_features.to(param.device, param.dtype)).last_hidden_state
        finally:
            model.train(was_training)
        outputs.append(out.float().cpu())
    a, b = outputs
    if a.shape != b.shape:
        return False
    return torch.equal(a, b) if atol == 0 else bool(torch.allclose(a, b, rtol=0.0, atol=atol))


def run_phase(p) -> dict:
    """Notebook 04 for its parameters ``p``: cut the student from ``p.teacher`` (default ``run_dir/teacher``) or
    ``p.student_source``, check on real clips that its encoder gives the teacher's outputs bit for bit, compare
    both models' accuracy and speed on the same validation clips side by side, and save the student to
    ``run_dir/student_init`` with ``layer_map.json`` and ``metrics.json``. Returns the metrics:
    ``layer_map``, ``encoder_equal``, ``sizes`` (millions of parameters per part, per model) and ``comparison``
    (per model: CER, WER, MER, exact match, RTFx, decoder steps, ms per step, speed-ups).
    """
    run = RunDir(p.run_dir)
    teacher = models.load_whisper(p.teacher or run.teacher)
    student, maps = make_student(teacher, p.student_source, p.decoder_layers, p.encoder_layers)
    rows = load_manifest(run.data, "valid")  # the test set is kept for the end (notebook 07)
    fe = teacher.feature_extractor
    features = log_mel(fe, [read_row(r, fe.sampling_rate) for r in rows.head(4).to_dict("records")])
    same = encoder_outputs_equal(teacher.model, student.model, features)
    speed = compare_speed({"teacher": teacher, "student (before KD)": student}, rows, batch_size=p.batch_size)
    refs = rows["text"].tolist()
    table = speed[["cer", "wer", "mer", "exact_match", "rtfx", "decoder_steps", "ms_per_step"]].rename(
        columns={"rtfx": "RTFx", "decoder_steps": "decoder steps", "ms_per_step": "ms per step"})
    table["speed-up (RTFx)"] = table["RTFx"] / table.loc["teacher", "RTFx"]
    table["speed-up per step"] = table.loc["teacher", "ms per step"] / table["ms per step"]
    save_student(student, run.student_init, maps)
    metrics = {"layer_map": maps, "encoder_equal": same, "clips": len(rows),
               "sizes": {"teacher": models.count_parameters(teacher.model),
                         "student": models.count_parameters(student.model)},
               "comparison": table.astype(float).to_dict("index"),
               "predictions": {"reference": refs, **{name: row["predictions"] for name, row in speed.iterrows()}}}
    write_json(run.metrics("student_init"), metrics)
    print(f"student: decoder layers {maps['decoder']} of the teacher's {teacher.model.config.decoder_layers}, "
          f"encoder equal to the teacher's bit for bit: {same} -> {shown(run.student_init)}")
    return metrics


if __name__ == "__main__":
    import sys

    sys.exit(cli.phase_main("student", run_phase))
