"""Speculative decoding: the teacher's exact transcripts, with the student drafting the tokens.

:func:`speculative_check` runs the teacher with the student as assistant model: the teacher verifies every
token the student drafts, so its transcripts stay the teacher's greedy ones while most tokens come from the
cheap decoder. When the student's encoder is the teacher's own, the assistant is the student's decoder alone,
fed the teacher's encoder outputs, so no second encoder pass runs.
"""
from __future__ import annotations

import pandas as pd

from .decode import timed_transcribe
from .evaluate import STUDENTS, TEACHERS
from .models import check_compatible, decoder_only, load_whisper, same_encoder
from .text import score


def make_assistant(teacher, student) -> tuple[object, str]:
    """The assistant model for speculative decoding and how it runs, in words.

    Both models must share the tokenizer (the teacher verifies the student's tokens by id): ``ValueError``
    otherwise. When the student's encoder equals the teacher's, the assistant is the student's decoder as
    a ``WhisperForCausalLM`` that reads the teacher's encoder outputs (no second encoder pass); otherwise
    the whole student runs, its own encoder included.
    """
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


def run_check(model_paths: dict[str, str], results: pd.DataFrame, test_sets: dict[str, pd.DataFrame], speculative,
              limit: int, fold: str | None = "t2s") -> tuple[dict | None, pd.DataFrame | None]:
    """Notebook 07's speculative check: the pair :func:`pick_speculative_pair` chooses among the models that were
    evaluated without error, on the first ``limit`` utterances of the first test set. Returns ``(summary, speed)``
    as :func:`speculative_check`, the summary naming the teacher, the assistant and the test set (the keys the
    course summary reads), or ``(None, None)`` when the check is off or there is no pair to run."""
    ok = results["status"] == "ok"
    evaluated = set(results.loc[ok, "model"]) - set(results.loc[~ok, "model"])  # ok on every test set
    pair = pick_speculative_pair({m: q for m, q in model_paths.items() if m in evaluated}, speculative)
    if pair is None:
        return None, None
    teacher_name, assistant_name = pair
    first_set = next(iter(test_sets))
    clips = test_sets[first_set].head(limit)
    teacher, assistant = load_whisper(model_paths[teacher_name]), load_whisper(model_paths[assistant_name])
    summary, speed = speculative_check(teacher, assistant, clips, fold=fold)
    summary.update(teacher=teacher_name, assistant_model=assistant_name, test_set=first_set)
    return summary, speed
