"""How much faster does a 2-layer-decoder student decode than its teacher? Measured side by side.

For random-initialised models of real shapes (teacher whisper-small 12+12 -> student 12+2; teacher
Breeze-ASR-25 / Whisper-large-v2 32+32 -> student 32+2, cut by ``student.init_student``), on the same
random 30 s inputs, the same device and the same number of generated tokens (EOS is suppressed, so both
models decode exactly ``--new-tokens`` tokens after the 4-token prompt):

* **greedy**, at batch 1 and a larger batch: the encoder pass and the generation loop timed apart,
  reporting the end-to-end speed-up and the decoder-only speed-up;
* **speculative** (batch 1): the teacher generates with the student's decoder as assistant, reading the
  teacher's encoder outputs (no second encoder pass). Random weights make the acceptance rate
  meaningless, so two bounds are measured: *worst case*, a random teacher that accepts almost nothing
  the student drafts, and *best case*, a teacher whose decoder layers outside the student's are zeroed
  out (their residual branches add nothing, so teacher and student agree on every token). A trained
  student lies in between (Distil-Whisper reports about 2x at equal output).

Each measurement runs once untimed, then ``--repeats`` times with the models taking turns
(``helpers.figures.timing.take_turns``, the workbook's one timing routine); the fastest round counts, the least
disturbed by whatever else the machine does. Inference runs under ``torch.inference_mode()`` and each batch
size's tensors are freed before the next (on a GPU the cache is emptied). The published figure for
whisper-small 12+12 -> 12+2 is 2.89x end to end (GPU, batch 64).

    python bench/decode_speed.py                          # whisper-small, batches 1 and 8 (CPU) / 1 and 64 (GPU)
    python bench/decode_speed.py --shapes whisper-small breeze-asr-25 --batch-sizes 1 64 --new-tokens 128

Results go to bench/results/decode_speed_<device>_<shapes>.json.
"""
from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
from pathlib import Path

import torch
from transformers import GenerationConfig, GenerationMixin, WhisperForConditionalGeneration
from transformers.utils import logging as hf_logging

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from helpers import student  # noqa: E402
from helpers.figures.timing import take_turns  # noqa: E402
from helpers.whisper import models  # noqa: E402

PROMPT = [50258, 50260, 50359, 50363]  # <|startoftranscript|><|zh|><|transcribe|><|notimestamps|>
EOT = 50257


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fastest(fn, repeats: int, device) -> float:
    """Seconds of the fastest of ``repeats`` timed calls, after one untimed call (``take_turns`` with one
    contender; the device is synchronised so that a GPU's queued work is counted)."""
    return take_turns({"call": lambda: (fn(), sync(device))}, repeats)["call"].min


def fastest_in_turns(calls: dict, repeats: int, device) -> dict[str, float]:
    """The fastest of ``repeats`` rounds of each call, the calls taking turns after one untimed call each."""
    timed = take_turns({name: (lambda fn=fn: (fn(), sync(device))) for name, fn in calls.items()}, repeats)
    return {name: t.min for name, t in timed.items()}


def generation_config(new_tokens: int) -> GenerationConfig:
    return GenerationConfig(decoder_start_token_id=PROMPT[0], eos_token_id=EOT, pad_token_id=EOT, do_sample=False,
                            num_beams=1, max_new_tokens=new_tokens, min_new_tokens=new_tokens)


def build_pair(shape: str, device, dtype):
    """A random teacher of ``shape`` and the 2-decoder-layer student cut from it (same encoder)."""
    torch.manual_seed(0)
    teacher = WhisperForConditionalGeneration(models.real_config(shape)).to(device, dtype).eval()
    small, _ = student.init_student(teacher, decoder_layers=2)
    return teacher, small.to(device, dtype).eval()


def zero_unmapped_layers(teacher, kept: list[int]) -> None:
    """Make the teacher's decoder layers outside ``kept`` pass the residual stream through unchanged."""
    with torch.no_grad():
        for i, layer in enumerate(teacher.model.decoder.layers):
            if i in kept:
                continue
            for proj in (layer.self_attn.out_proj, layer.encoder_attn.out_proj, layer.fc2):
                proj.weight.zero_()
                if proj.bias is not None:
                    proj.bias.zero_()


@torch.no_grad()
def greedy(model, encoded, batch: int, new_tokens: int):
    prompt = torch.tensor([PROMPT] * batch, device=encoded.last_hidden_state.device)
    return GenerationMixin.generate(model, encoder_outputs=encoded, decoder_input_ids=prompt,
                                    generation_config=generation_config(new_tokens))


@torch.no_grad()
def speculative(teacher, assistant, encoded, new_tokens: int):
    prompt = torch.tensor([PROMPT], device=encoded.last_hidden_state.device)
    assistant.generation_config = generation_config(new_tokens)
    # Random weights give flat next-token distributions: the default confidence stop (0.4) would end every
    # draft after one token, so drafts run to num_assistant_tokens (20) here.
    assistant.generation_config.assistant_confidence_threshold = 0.0
    return GenerationMixin.generate(teacher, encoder_outputs=encoded, decoder_input_ids=prompt,
                                    assistant_model=assistant, generation_config=generation_config(new_tokens))


@torch.inference_mode()
def measure(shape: str, batch_sizes: list[int], new_tokens: int, repeats: int, device, dtype) -> list[dict]:
    from transformers.modeling_outputs import BaseModelOutput

    teacher, small = build_pair(shape, device, dtype)
    cfg = teacher.config
    rows = []
    for batch in batch_sizes:
        torch.manual_seed(1)
        feats = torch.randn(batch, cfg.num_mel_bins, 2 * cfg.max_source_positions, device=device, dtype=dtype)
        with torch.no_grad():
            encoded = BaseModelOutput(last_hidden_state=teacher.model.encoder(feats).last_hidden_state)
        enc_s = fastest(lambda f=feats: teacher.model.encoder(f), repeats, device)  # the same encoder in both models
        dec = fastest_in_turns({name: (lambda m=m, e=encoded, b=batch: greedy(m, e, b, new_tokens))
                                for name, m in (("teacher", teacher), ("student", small))}, repeats, device)
        row = {"shape": shape, "batch": batch, "new_tokens": new_tokens, "encoder_s": enc_s,
               "teacher_decoder_s": dec["teacher"], "student_decoder_s": dec["student"],
               "teacher_total_s": enc_s + dec["teacher"], "student_total_s": enc_s + dec["student"]}
        row["speed_up_end_to_end"] = row["teacher_total_s"] / row["student_total_s"]
        row["speed_up_decoder"] = dec["teacher"] / dec["student"]
        row["encoder_share_teacher"] = enc_s / row["teacher_total_s"]
        rows.append(row)
        del feats, encoded  # free this batch size's tensors before the next
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        print(f"{shape} batch {batch}: encoder {enc_s:.3f} s, decoder teacher {dec['teacher']:.3f} s / student "
              f"{dec['student']:.3f} s -> {row['speed_up_end_to_end']:.2f}x end to end, "
              f"{row['speed_up_decoder']:.2f}x decoder only", flush=True)
    if 1 in batch_sizes:  # speculative decoding: batch 1 only (transformers' assisted generation)
        torch.manual_seed(1)
        feats = torch.randn(1, cfg.num_mel_bins, 2 * cfg.max_source_positions, device=device, dtype=dtype)
        with torch.no_grad():
            encoded = BaseModelOutput(last_hidden_state=teacher.model.encoder(feats).last_hidden_state)
        assistant = models.decoder_only(small)  # reads the teacher's encoder outputs
        alone = next(r for r in rows if r["batch"] == 1)
        spec = {}
        for case in ("worst case (random teacher)", "best case (teacher agrees on every token)"):
            if case.startswith("best"):
                zero_unmapped_layers(teacher, student.layer_map(cfg.decoder_layers, 2))
                alone_dec = fastest(lambda: greedy(teacher, encoded, 1, new_tokens), repeats, device)
            else:
                alone_dec = alone["teacher_decoder_s"]
            out_spec = speculative(teacher, assistant, encoded, new_tokens)
            out_greedy = greedy(teacher, encoded, 1, new_tokens)
            spec_s = fastest(lambda: speculative(teacher, assistant, encoded, new_tokens), repeats, device)
            spec[case] = {"teacher_total_s": alone["encoder_s"] + alone_dec,
                          "speculative_total_s": alone["encoder_s"] + spec_s,
                          "same_tokens": bool(torch.equal(out_spec, out_greedy))}
            spec[case]["speed_up_end_to_end"] = spec[case]["teacher_total_s"] / spec[case]["speculative_total_s"]
            print(f"{shape} speculative, {case}: {spec[case]['speed_up_end_to_end']:.2f}x end to end, "
                  f"same tokens as the teacher alone: {spec[case]['same_tokens']}", flush=True)
        rows.append({"shape": shape, "batch": 1, "new_tokens": new_tokens, "speculative": spec})
    return rows  # the models are freed here, before the next shape is built


def main(argv=None) -> int:
    on_gpu = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", nargs="+", default=["whisper-small"], choices=sorted(models.REAL_SHAPES))
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 64] if on_gpu else [1, 8])
    ap.add_argument("--new-tokens", type=int, default=64, help="tokens generated after the prompt")
    ap.add_argument("--repeats", type=int, default=3 if on_gpu else 2)
    ap.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float16" if on_gpu else "float32")
    args = ap.parse_args(argv)
    hf_logging.set_verbosity_error()
    device, dtype = torch.device("cuda:0" if on_gpu else "cpu"), getattr(torch, args.dtype)
    name = torch.cuda.get_device_name(0) if on_gpu else f"CPU ({platform.processor() or platform.machine()}, " \
                                                        f"{torch.get_num_threads()} threads)"
    print(f"device: {name}, {args.dtype}; {args.new_tokens} new tokens; fastest of {args.repeats}")
    rows = []
    for shape in args.shapes:
        rows += measure(shape, args.batch_sizes, args.new_tokens, args.repeats, device, dtype)
    out = Path(__file__).parent / "results" / f"decode_speed_{'gpu' if on_gpu else 'cpu'}_{'_'.join(args.shapes)}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"device": name, "dtype": args.dtype, "torch": torch.__version__, "rows": rows},
                              indent=2))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
