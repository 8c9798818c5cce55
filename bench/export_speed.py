"""How fast is the exported student? CTranslate2 int8 / float32 against transformers fp32, measured side by side.

For random-initialised models of real shapes (teacher whisper-small 12+12 -> student 12+2; teacher Breeze-ASR-25 /
Whisper-large-v2 32+32 -> student 32+2, cut by ``student.init_student``), converted to CTranslate2 with
``TransformersConverter`` at each ``--quantizations``, on the same random 30 s inputs with the same thread count:

* transformers fp32 teacher and student: the encoder pass and the decoding loop (``GenerationMixin.generate`` on
  the encoder outputs) timed apart, as bench/decode_speed.py does;
* CTranslate2 teacher and student at each quantisation: ``Whisper.encode`` and ``Whisper.generate`` on its output,
  timed apart.

Every model decodes exactly ``--new-tokens`` tokens after the 4-token prompt
``<|startoftranscript|><|zh|><|transcribe|><|notimestamps|>``: transformers with ``min_new_tokens`` =
``max_new_tokens``, CTranslate2 with ``<|endoftext|>`` suppressed and ``max_length`` = 2 x new tokens (it generates
at most half of ``max_length``); the lengths are checked. The student's encoder is the teacher's (same weights, same
runtime), so each runtime's encoder is timed once, with the student, and counts for both. All measurements take
turns in ``--repeats`` rounds after one untimed round; the fastest round of each counts (the least disturbed by
other work), and every round is kept in the results.

Printed ratios (goals on a 2-core CPU, whisper-small, batch 1): the CTranslate2 int8 student end to end against the
transformers fp32 teacher (>= 2x); its decoding loop against the transformers fp32 student's (>= 4x); its end-to-end
time over its own encoder time (<= 1.25: decoding no longer matters).

    python bench/export_speed.py                                     # whisper-small, batches 1 and 8
    python bench/export_speed.py --shapes whisper-small --batch-sizes 1 --repeats 1 --new-tokens 16   # a check
    python bench/export_speed.py --shapes breeze-asr-25 --batch-sizes 1 --new-tokens 4 --repeats 1   # ~20 GB RAM

Results go to bench/results/export_speed_cpu_<shapes>.json with the machine description and its load.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
from pathlib import Path

import ctranslate2
import numpy as np
import torch
from ctranslate2.converters import TransformersConverter
from transformers import GenerationConfig, GenerationMixin
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.whisper.tokenization_whisper import LANGUAGES
from transformers.utils import logging as hf_logging

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from helpers import student  # noqa: E402
from helpers.figures.machine import describe_machine  # noqa: E402
from helpers.figures.timing import take_turns  # noqa: E402
from helpers.whisper import models  # noqa: E402

PROMPT = [50258, 50260, 50359, 50363]  # <|startoftranscript|><|zh|><|transcribe|><|notimestamps|>
EOT = 50257


class StandardVocabulary:
    """What the converter reads of a tokenizer: Whisper's 51865-token vocabulary with its special tokens at
    Whisper's ids (large-v2's 99 languages, 1501 timestamps) and placeholders for the text tokens (random weights
    have no text to spell)."""
    additional_special_tokens: list[str] = []

    def get_vocab(self) -> dict[str, int]:
        specials = ["<|endoftext|>", "<|startoftranscript|>", *[f"<|{c}|>" for c in list(LANGUAGES)[:99]],
                    "<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>",
                    "<|notimestamps|>", *[f"<|{i * 0.02:.2f}|>" for i in range(1501)]]
        tokens = [f"<text{i}>" for i in range(EOT)] + specials
        assert len(tokens) == 51865 and tokens[PROMPT[-1]] == "<|notimestamps|>"
        return {t: i for i, t in enumerate(tokens)}


class InMemoryConverter(TransformersConverter):
    """``TransformersConverter`` for a model already in memory (no 6 GB safetensors written for Breeze): the config
    is read from ``folder``, the model and the vocabulary are the ones given."""

    def __init__(self, model, folder: Path):
        model.config.save_pretrained(folder)
        super().__init__(str(folder))
        self.model = model

    def load_model(self, *args, **kwargs):
        return self.model

    def load_tokenizer(self, *args, **kwargs):
        return StandardVocabulary()


def build_pair(shape: str):
    """A random fp32 teacher of ``shape`` and the 2-decoder-layer student cut from it; the student's encoder is the
    teacher's own module (identical weights; one copy in memory)."""
    torch.manual_seed(0)
    from transformers import WhisperForConditionalGeneration

    teacher = WhisperForConditionalGeneration(models.real_config(shape)).eval()
    small, _ = student.init_student(teacher, decoder_layers=2)
    small.model.encoder = teacher.model.encoder
    for m in (teacher, small):
        m.eval()
        m.generation_config = GenerationConfig(decoder_start_token_id=PROMPT[0], eos_token_id=EOT, pad_token_id=EOT,
                                               suppress_tokens=[], begin_suppress_tokens=[],
                                               lang_to_id={"<|zh|>": PROMPT[1]})
    return teacher, small


def convert(model, quantization: str, work: Path, threads: int):
    """``model`` converted with ``quantization`` into ``work`` and loaded with ``threads`` threads."""
    out = work / f"ct2-{quantization}"
    InMemoryConverter(model, work / "config").convert(str(out), quantization=quantization, force=True)
    return ctranslate2.models.Whisper(str(out), device="cpu", compute_type="default", intra_threads=threads), \
        sum(p.stat().st_size for p in out.iterdir())


@torch.no_grad()
def hf_decode(model, encoded, batch: int, new_tokens: int):
    """transformers' greedy decoding loop on encoder outputs: exactly ``new_tokens`` tokens per row (checked)."""
    config = GenerationConfig(decoder_start_token_id=PROMPT[0], eos_token_id=EOT, pad_token_id=EOT, do_sample=False,
                              num_beams=1, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    out = GenerationMixin.generate(model, encoder_outputs=encoded, decoder_input_ids=torch.tensor([PROMPT] * batch),
                                   generation_config=config)
    assert out.shape == (batch, len(PROMPT) + new_tokens), out.shape
    return out


def ct2_decode(model, encoded, batch: int, new_tokens: int):
    """CTranslate2's greedy decoding loop on encoder outputs: exactly ``new_tokens`` tokens per row (checked)."""
    results = model.generate(encoded, [PROMPT] * batch, beam_size=1, max_length=2 * new_tokens, suppress_tokens=[EOT],
                             suppress_blank=False)
    lengths = {len(r.sequences_ids[0]) for r in results}
    assert lengths == {new_tokens}, lengths
    return results


def machine(threads: int) -> dict:
    """What ran the bench (``helpers.figures.machine``), with the compute types CTranslate2 offers on this CPU."""
    return {**describe_machine(threads), "compute_types": sorted(ctranslate2.get_supported_compute_types("cpu"))}


def workloads(teacher, small, ct2: dict, features: np.ndarray, new_tokens: int, quantizations: list[str]) -> dict:
    """The timed calls on one batch of ``features`` (batch x mel bins x frames), by name: each runtime's encoder,
    and each model's decoding loop on encoder outputs computed beforehand."""
    batch = len(features)
    torch_features = torch.from_numpy(features)
    view = ctranslate2.StorageView.from_array(features)
    with torch.no_grad():
        hf_encoded = BaseModelOutput(last_hidden_state=teacher.model.encoder(torch_features).last_hidden_state)
    ct2_encoded = {q: ct2[("student", q)].encode(view) for q in quantizations}
    work = {"hf_fp32_encoder": lambda: teacher.model.encoder(torch_features),
            "hf_fp32_teacher_decoder": lambda: hf_decode(teacher, hf_encoded, batch, new_tokens),
            "hf_fp32_student_decoder": lambda: hf_decode(small, hf_encoded, batch, new_tokens)}
    for q in quantizations:
        work[f"ct2_{q}_encoder"] = lambda q=q: ct2[("student", q)].encode(view)
        for role in ("teacher", "student"):
            work[f"ct2_{q}_{role}_decoder"] = lambda q=q, r=role: ct2_decode(ct2[(r, q)], ct2_encoded[q], batch,
                                                                             new_tokens)
    return work


def measure(shape: str, batch_sizes: list[int], new_tokens: int, repeats: int, quantizations: list[str],
            threads: int) -> list[dict]:
    """Build, convert and time one shape at each batch size; one result row per batch size (printed as it comes)."""
    teacher, small = build_pair(shape)
    cfg = teacher.config
    with tempfile.TemporaryDirectory(prefix="export_speed-") as tmp:
        ct2, sizes = {}, {}
        for role, model in (("teacher", teacher), ("student", small)):
            for q in quantizations:
                ct2[(role, q)], sizes[f"ct2_{q}_{role}_bytes"] = convert(model, q, Path(tmp) / role, threads)
                gc.collect()
        rows = []
        for batch in batch_sizes:
            features = np.random.default_rng(1).standard_normal(
                (batch, cfg.num_mel_bins, 2 * cfg.max_source_positions)).astype(np.float32)
            work = workloads(teacher, small, ct2, features, new_tokens, quantizations)
            with torch.inference_mode():  # one untimed call each, then the workloads take turns
                timed = take_turns(work, repeats)
            rounds = {name: t.seconds for name, t in timed.items()}
            best = {name: t.min for name, t in timed.items()}
            row = {"shape": shape, "batch": batch, "new_tokens": new_tokens, "repeats": repeats, "fastest_s": best,
                   "rounds_s": rounds, **sizes}
            totals = {"hf_fp32_teacher": best["hf_fp32_encoder"] + best["hf_fp32_teacher_decoder"],
                      "hf_fp32_student": best["hf_fp32_encoder"] + best["hf_fp32_student_decoder"]}
            for q in quantizations:
                for role in ("teacher", "student"):
                    totals[f"ct2_{q}_{role}"] = best[f"ct2_{q}_encoder"] + best[f"ct2_{q}_{role}_decoder"]
            row["end_to_end_s"] = totals
            if "int8" in quantizations:
                row["ratios"] = {
                    "ct2_int8_student_vs_hf_fp32_teacher_end_to_end": totals["hf_fp32_teacher"] / totals[
                        "ct2_int8_student"],
                    "ct2_int8_student_vs_hf_fp32_student_decoder": best["hf_fp32_student_decoder"] / best[
                        "ct2_int8_student_decoder"],
                    "ct2_int8_student_end_to_end_over_its_encoder": totals["ct2_int8_student"] / best[
                        "ct2_int8_encoder"]}
            rows.append(row)
            report(row)
    return rows


def report(row: dict) -> None:
    """Print one result row: each model's end-to-end time split into encoder and decoding, and the ratios."""
    best, totals = row["fastest_s"], row["end_to_end_s"]
    print(f"\n{row['shape']}, batch {row['batch']}, {row['new_tokens']} new tokens, fastest of {row['repeats']}:")
    for name in sorted(totals, key=totals.get):
        encoder = "hf_fp32_encoder" if name.startswith("hf") else f"ct2_{name.split('_')[1]}_encoder"
        print(f"  {name:22s} {totals[name]:8.3f} s end to end = encoder {best[encoder]:7.3f} s + decoding "
              f"{best[name + '_decoder']:7.3f} s")
    goals = row["shape"] == "whisper-small" and row["batch"] == 1  # the goals are set for this case
    for key, words, goal, better in (
            ("ct2_int8_student_vs_hf_fp32_teacher_end_to_end", "CT2 int8 student vs HF fp32 teacher, end to end", 2.0,
             max),
            ("ct2_int8_student_vs_hf_fp32_student_decoder", "CT2 int8 student decoding loop vs HF fp32 student's", 4.0,
             max),
            ("ct2_int8_student_end_to_end_over_its_encoder", "CT2 int8 student end to end / its own encoder", 1.25,
             min)):
        if key in row.get("ratios", {}):
            value = row["ratios"][key]
            verdict = "met" if better(value, goal) == value else "NOT met"
            sign = ">=" if better is max else "<="
            print(f"  {words}: {value:.2f}x" + (f" (goal {sign} {goal:g}x: {verdict})" if goals else ""), flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", nargs="+", default=["whisper-small"], choices=sorted(models.REAL_SHAPES))
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--new-tokens", type=int, default=64, help="tokens generated after the prompt")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds (after one untimed round)")
    ap.add_argument("--quantizations", nargs="+", default=["int8", "float32"],
                    choices=["int8", "int8_float32", "float32"])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="threads of both runtimes")
    args = ap.parse_args(argv)
    if args.new_tokens < 3:
        ap.error("--new-tokens must be 3 or more (CTranslate2 counts the prompt in max_length)")
    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    info = machine(args.threads)
    print(f"CPU: {info['cpu']}, {info['cores']} cores, {info['memory_gb']} GB; {args.threads} threads; "
          f"load average {info['load_average_start'][0]:.2f}; {args.new_tokens} new tokens; "
          f"fastest of {args.repeats} rounds")
    rows = []
    for shape in args.shapes:
        rows += measure(shape, args.batch_sizes, args.new_tokens, args.repeats, args.quantizations, args.threads)
        gc.collect()
    info["load_average_end"] = os.getloadavg()
    out = Path(__file__).parent / "results" / f"export_speed_cpu_{'_'.join(args.shapes)}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"machine": info, "args": vars(args), "rows": rows}, indent=2))
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
