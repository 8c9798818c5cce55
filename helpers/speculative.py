"""Speculative decoding: the teacher's exact transcripts, with the student drafting the tokens.

:func:`speculative_check` runs the teacher with the student as assistant model: the teacher verifies every
token the student drafts, so its transcripts stay the teacher's greedy ones while most tokens come from the
cheap decoder. When the student's encoder is the teacher's own, the assistant is the student's decoder alone,
fed the teacher's encoder outputs, so no second encoder pass runs.
"""
from __future__ import annotations

import pandas as pd

from .figures.stats import overlap
from .figures.timing import take_turns
from .files import STUDENTS, TEACHERS
from .speech.text import score
from .whisper.decode import transcribe
from .whisper.models import check_compatible, decoder_only, load_whisper, same_encoder


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


def speculative_check(teacher, student, manifest: pd.DataFrame, rounds: int = 3, warmup: int = 2,
                      max_new_tokens: int | None = None, fold: str | None = "t2s") -> tuple[dict, pd.DataFrame]:
    """Speculative decoding against the teacher alone and the student alone, one utterance at a time.

    The three ways of decoding take turns for ``rounds`` timed passes over the same clips (after ``warmup``
    untimed utterances each); the median round counts and the range of the rounds is kept. Returns ``(summary,
    speed)``: ``summary`` has the assistant's kind, the number of utterances, how many speculative transcripts
    differ from the teacher's greedy ones (expected 0) and which, the speed-up of the median rounds, its range and
    a verdict ("faster", "slower" or "within timing noise" when the rounds of the two overlap); ``speed`` is one
    row per way of decoding with RTFx, median seconds, the seconds' range, CER and speed-up.
    """
    assistant, how = make_assistant(teacher, student)
    refs = manifest["text"].tolist()
    ways = {"teacher alone": (teacher.model, teacher.processor, None),
            "teacher + student (speculative)": (teacher.model, teacher.processor, assistant),
            "student alone": (student.model, student.processor, None)}
    kwargs = dict(max_new_tokens=max_new_tokens, progress=False, shard=False)

    def way(model, processor, helper, clips):
        return lambda: transcribe(model, processor, clips, 1, assistant_model=helper, **kwargs)

    timed = take_turns({name: way(*w, manifest) for name, w in ways.items()}, max(1, rounds),
                       warmup={name: way(*w, manifest.head(warmup)) for name, w in ways.items()} if warmup else {},
                       seconds=lambda out: out[1]["compute_s"])
    texts = {name: t.outputs[0][0] for name, t in timed.items()}  # greedy: every round gives the same text
    spreads = {name: t.spread() for name, t in timed.items()}
    audio_s = float(manifest["duration"].sum())
    speed = pd.DataFrame({name: {"RTFx": audio_s / spreads[name]["median"], "seconds": spreads[name]["median"],
                                 "seconds min": spreads[name]["min"], "seconds max": spreads[name]["max"],
                                 "CER %": score(refs, texts[name], fold)["cer"]} for name in ways}).T
    speed["speed-up"] = speed.loc["teacher alone", "seconds"] / speed["seconds"]
    greedy, spec = texts["teacher alone"], texts["teacher + student (speculative)"]
    differ = [i for i, (a, b) in enumerate(zip(greedy, spec)) if a != b]
    alone, both = spreads["teacher alone"], spreads["teacher + student (speculative)"]
    summary = {"assistant": how, "utterances": len(manifest), "differ": len(differ),
               "differing_rows": [int(i) for i in differ], "rounds": max(1, rounds),
               "speed_up": float(speed.loc["teacher + student (speculative)", "speed-up"]),
               "speed_up_low": alone["min"] / both["max"], "speed_up_high": alone["max"] / both["min"],
               "speed_verdict": "within timing noise" if overlap(alone, both) else
               "faster" if both["median"] < alone["median"] else "slower",
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


def describe(summary: dict | None) -> str:
    """One sentence on :func:`run_check`'s summary (or that the check did not run)."""
    if summary is None:
        return "speculative decoding skipped (turned off, or no teacher and student both evaluated)"
    s = summary
    return (f"{s['teacher']} with the {s['assistant_model']} as assistant ({s['assistant']}), {s['utterances']} "
            f"utterances of {s['test_set']}: {s['differ']} transcripts differ from the teacher's greedy ones; "
            f"speed-up {s['speed_up']:.2f}x (rounds' range {s['speed_up_low']:.2f}-{s['speed_up_high']:.2f}x): "
            f"{s['speed_verdict']}")
