"""How much faster is a short audio window? Teacher, student at full and at short windows, measured side by side.

For random-initialised models of real shapes (teacher whisper-small 12+12 -> student 12+2; teacher Breeze-ASR-25 /
Whisper-large-v2 32+32 -> student 32+2, cut by ``student.init_student``; the student keeps the teacher's encoder),
clips of ``--clip-seconds`` (2, 5, 10, 20 s) get a window from a ``WindowRule`` (``--margin-s``, ``--floor-s``,
``--round-to-s``; e.g. margin 2 s in whole seconds: 2 s -> 4 s, 5 s -> 7 s, 10 s -> 12 s, 20 s -> 22 s), and these
contenders run on the same random log-mel features with the same thread count (transformers in ``--dtype``: fp32 on
a CPU, fp16 on CUDA; CTranslate2 in ``--ct2-compute-type``, int8 by default; both recorded in the results file):

* ``hf_teacher_full``   transformers teacher, full 30 s window (``WhisperEncoder.forward``, the stock path)
* ``hf_student_full``   transformers student, full window
* ``hf_student_short``  transformers student, the clip's window (``short_window.encode_short``)
* ``ct2_student_full``  CTranslate2 student, full window
* ``ct2_student_short`` CTranslate2 student, the clip's window (``short_window_ct2.encode``)
* ``hf_encoder_clip`` / ``ct2_encoder_clip``: each runtime's encoder alone on the clip's own length (no margin):
  the physical floor of a short window.

Every model decodes exactly ``--new-tokens`` tokens after the 4-token prompt (greedy; transformers with
``min_new_tokens`` = ``max_new_tokens``, CTranslate2 with ``<|endoftext|>`` suppressed; lengths checked), as
bench/decode_speed.py does: random models do not stop. A full-window contender costs the same whatever the clip's
length (the clip is padded to 30 s and the token count is fixed), so it runs once per round and counts for every
clip length. All contenders take turns in ``--rounds`` rounds after one untimed round
(``helpers.figures.timing.take_turns``, the workbook's one timing routine); the median round counts (lower middle
for an even count) with min and max kept. Each call is timed whole and its encoder part apart.

Reported per clip length: seconds end to end (median, min, max) and the encoder's; speed-up over the teacher;
short over full window in the same runtime; end to end over the runtime's own encoder on the clip's own length.

    python bench/short_window_speed.py                                   # whisper-small, CPU, batch 1
    python bench/short_window_speed.py --shapes breeze-asr-25            # ~9 GB RAM
    python bench/short_window_speed.py --quick                           # smoke run: small layers, 2 clip lengths
    python bench/short_window_speed.py --device cuda --batch-sizes 1 16  # a lent GPU (CTranslate2 if installed)

Results go to bench/results/short_window_speed_<cpu|gpu>_<shape>.json (``_quick`` for smoke runs) with the
machine, its load, the versions and ``--note``.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import GenerationConfig, GenerationMixin, WhisperForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput
from transformers.utils import logging as hf_logging

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from helpers import student  # noqa: E402
from helpers.figures.machine import describe_machine  # noqa: E402
from helpers.figures.timing import Timed, take_turns  # noqa: E402
from helpers.whisper import models, short_window, short_window_ct2  # noqa: E402

PROMPT = [50258, 50260, 50359, 50363]  # <|startoftranscript|><|zh|><|transcribe|><|notimestamps|>
EOT = 50257
QUICK_LAYERS = dict(encoder_layers=2, decoder_layers=4)  # --quick: the shape's widths, few layers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_pair(shape: str, device: torch.device, dtype: torch.dtype, quick: bool):
    """A random teacher of ``shape`` and the 2-decoder-layer student cut from it, sharing the teacher's encoder
    module (identical weights; one copy in memory), both in eval mode on ``device`` in ``dtype``."""
    torch.manual_seed(0)
    teacher = WhisperForConditionalGeneration(models.real_config(shape, **(QUICK_LAYERS if quick else {})))
    small, _ = student.init_student(teacher, decoder_layers=2)
    small.model.encoder = teacher.model.encoder
    return teacher.to(device, dtype).eval(), small.to(device, dtype).eval()


def ct2_student(small, work: Path, device: str, compute_type: str, threads: int):
    """The student converted to CTranslate2 in memory (bench/export_speed.py's converter: no weights written
    first) and loaded with ``threads`` threads; ``None`` when ctranslate2 is not installed."""
    try:
        import ctranslate2
        from export_speed import InMemoryConverter  # bench/ is on the path when this runs as a script
    except ImportError:
        return None
    out = work / f"ct2-{compute_type}"
    InMemoryConverter(small.to("cpu"), work / "config").convert(str(out), quantization=compute_type, force=True)
    return ctranslate2.models.Whisper(str(out), device=device, compute_type="default", intra_threads=threads)


def hf_decode(model, encoded: BaseModelOutput, new_tokens: int):
    """transformers' greedy decoding loop on encoder outputs: exactly ``new_tokens`` tokens per row (checked)."""
    batch = encoded.last_hidden_state.shape[0]
    config = GenerationConfig(decoder_start_token_id=PROMPT[0], eos_token_id=EOT, pad_token_id=EOT, do_sample=False,
                              num_beams=1, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    prompt = torch.tensor([PROMPT] * batch, device=encoded.last_hidden_state.device)
    out = GenerationMixin.generate(model, encoder_outputs=encoded, decoder_input_ids=prompt, generation_config=config)
    assert out.shape == (batch, len(PROMPT) + new_tokens), out.shape


def ct2_decode(model, encoded, new_tokens: int) -> None:
    """CTranslate2's greedy decoding loop on encoder outputs: exactly ``new_tokens`` tokens per row (checked)."""
    ids = short_window_ct2.generate(model, encoded, PROMPT, EOT, new_tokens, suppress_tokens=[EOT],
                                    suppress_blank=False)
    assert {len(i) for i in ids} == {new_tokens}, {len(i) for i in ids}


def timed_call(encode, decode, device: torch.device):
    """A call without arguments: ``decode(encode())``, returning ``{"total_s", "encoder_s"}`` (wall seconds)."""
    def call():
        sync(device)
        t0 = time.perf_counter()
        encoded = encode()
        sync(device)
        t1 = time.perf_counter()
        if decode is not None:
            decode(encoded)
        sync(device)
        return {"total_s": time.perf_counter() - t0, "encoder_s": t1 - t0}
    return call


def contenders(teacher, small, ct2, features: torch.Tensor, windows: dict, new_tokens: int, device) -> dict:
    """Name -> timed call. ``features``: batch x mel bins x full-window frames; ``windows``: clip seconds ->
    ``(clip frames, window frames)``. Full-window contenders once, short ones per clip length (``..@<s>s``)."""
    full = features.shape[-1]
    calls = {"hf_teacher_full": timed_call(lambda: teacher.get_encoder()(features),
                                                lambda e: hf_decode(teacher, e, new_tokens), device),
             "hf_student_full": timed_call(lambda: small.get_encoder()(features),
                                                lambda e: hf_decode(small, e, new_tokens), device)}
    cpu = features.float().cpu().numpy() if ct2 is not None else None
    if ct2 is not None:
        calls["ct2_student_full"] = timed_call(lambda: short_window_ct2.encode(ct2, cpu),
                                                    lambda e: ct2_decode(ct2, e, new_tokens), device)
    for seconds, (clip, window) in windows.items():
        assert window <= full
        calls[f"hf_student_short@{seconds:g}s"] = timed_call(
            lambda w=window: short_window.encode_short(small, features, w), lambda e: hf_decode(small, e, new_tokens),
            device)
        calls[f"hf_encoder_clip@{seconds:g}s"] = timed_call(
            lambda c=clip: short_window.encode_short(small, features, c), None, device)
        if ct2 is not None:
            calls[f"ct2_student_short@{seconds:g}s"] = timed_call(
                lambda w=window: short_window_ct2.encode(ct2, cpu[..., :w]), lambda e: ct2_decode(ct2, e, new_tokens),
                device)
            calls[f"ct2_encoder_clip@{seconds:g}s"] = timed_call(
                lambda c=clip: short_window_ct2.encode(ct2, cpu[..., :c]), None, device)
    return calls


def in_turns(calls: dict, rounds: int) -> dict:
    """Every call once untimed, then ``rounds`` rounds in turns (A, B, C, A, B, C...) with the workbook's one timing
    routine (``helpers.figures.timing.take_turns``), each round counting the end-to-end seconds the call measured
    itself: name -> :class:`Timed` (every round's ``{"total_s", "encoder_s"}`` kept in ``outputs``)."""
    turns = iter(range(1, rounds * len(calls) + 1))

    def done(name):
        turn = next(turns)
        if turn % len(calls) == 0:
            print(f"  round {turn // len(calls)}/{rounds} done", flush=True)
    return take_turns(calls, rounds, seconds=lambda out: out["total_s"], on_round=done)


def median_round(timed: Timed) -> dict:
    """The median round by end-to-end seconds (``Timed.median``: the lower middle for an even count) with its
    encoder seconds, and min and max of the end-to-end seconds."""
    middle = timed.median_output
    return {"total_s": middle["total_s"], "encoder_s": middle["encoder_s"], "min_s": timed.min, "max_s": timed.max}


def summarise(timed: dict, windows: dict) -> list[dict]:
    """One row per clip length: each contender's median round, the speed-ups and the ratios (see module doc)."""
    rows = []
    for seconds, (clip, window) in windows.items():
        at = {name.split("@")[0]: median_round(r) for name, r in timed.items()
              if "@" not in name or name.endswith(f"@{seconds:g}s")}
        teacher = at["hf_teacher_full"]
        row = {"clip_s": seconds, "clip_frames": clip, "window_frames": window, "seconds": at,
               "speed_up_vs_teacher": {}, "short_vs_full": {}, "end_to_end_over_encoder_on_clip": {}}
        for name, t in at.items():
            if "encoder_clip" in name:
                continue
            row["speed_up_vs_teacher"][name] = {"median": teacher["total_s"] / t["total_s"],
                                                "low": teacher["min_s"] / t["max_s"],
                                                "high": teacher["max_s"] / t["min_s"]}
            floor = at["hf_encoder_clip" if name.startswith("hf") else "ct2_encoder_clip"]["total_s"]
            row["end_to_end_over_encoder_on_clip"][name] = t["total_s"] / floor
        for runtime in ("hf_student", "ct2_student"):
            if f"{runtime}_short" in at:
                row["short_vs_full"][runtime] = at[f"{runtime}_full"]["total_s"] / at[f"{runtime}_short"]["total_s"]
        rows.append(row)
    return rows


GOALS = {"whisper-small": 10.0, "breeze-asr-25": 8.0}  # issue 27: CT2 int8 short-window student vs teacher, 5 s
SHORT_OVER_FULL_GOAL = 2.5  # issue 27: short window vs the same runtime at the full window, 5 s clips


def goals(shape: str, batch: int, rows: list[dict]) -> dict:
    """Issue 27's goals on 5 s clips at batch 1 (CPU): the CTranslate2 int8 short-window student >= 10x (whisper-small)
    or >= 8x (Breeze) the transformers fp32 teacher, and >= 2.5x its own full window. ``{}`` for other cases."""
    row = next((r for r in rows if r["clip_s"] == 5), None)
    name = "ct2_student_short"
    if batch != 1 or row is None or name not in row["speed_up_vs_teacher"]:
        return {}
    vs_teacher, vs_full = row["speed_up_vs_teacher"][name]["median"], row["short_vs_full"]["ct2_student"]
    return {"vs_teacher": vs_teacher, "vs_teacher_goal": GOALS[shape], "vs_teacher_met": vs_teacher >= GOALS[shape],
            "short_vs_full": vs_full, "short_vs_full_goal": SHORT_OVER_FULL_GOAL,
            "short_vs_full_met": vs_full >= SHORT_OVER_FULL_GOAL}


def report(shape: str, batch: int, rows: list[dict], met: dict) -> None:
    """Print one table per clip length: seconds (median [min-max]), encoder seconds, speed-ups and ratios; then the
    goals ``met`` (:func:`goals`; nothing when empty)."""
    for row in rows:
        print(f"\n{shape}, batch {batch}, {row['clip_s']:g} s clip ({row['clip_frames']} frames), window "
              f"{row['window_frames']} frames:")
        for name, t in row["seconds"].items():
            extra = ""
            if name in row["speed_up_vs_teacher"]:
                extra = (f"  {row['speed_up_vs_teacher'][name]['median']:6.2f}x teacher, "
                         f"e2e/encoder on clip {row['end_to_end_over_encoder_on_clip'][name]:5.2f}")
            print(f"  {name:24s} {t['total_s']:8.3f} s [{t['min_s']:.3f}-{t['max_s']:.3f}] encoder "
                  f"{t['encoder_s']:7.3f} s{extra}")
        for runtime, ratio in row["short_vs_full"].items():
            print(f"  {runtime}: short window {ratio:.2f}x its full window")
    if met:
        verdict = {True: "met", False: "NOT met"}
        print(f"\ngoals, 5 s clip, batch 1: CT2 int8 short-window student {met['vs_teacher']:.2f}x the teacher "
              f"(goal >= {met['vs_teacher_goal']:g}x: {verdict[met['vs_teacher_met']]}); {met['short_vs_full']:.2f}x "
              f"its full window (goal >= {SHORT_OVER_FULL_GOAL:g}x: {verdict[met['short_vs_full_met']]})")


def measure(args, shape: str, device: torch.device, dtype: torch.dtype, rule) -> list[dict]:
    """Build, convert and time one shape at each batch size; one result per batch size (printed as it comes)."""
    teacher, small = build_pair(shape, device, dtype, args.quick)
    full = short_window.full_window_frames(teacher)
    own_length = short_window.WindowRule(margin_s=0.0, floor_s=0.0, round_to_s=0.01)  # the clip itself, even frames
    windows = {s: (own_length.frames_for(s, full), rule.frames_for(s, full)) for s in args.clip_seconds}
    results = []
    with tempfile.TemporaryDirectory(prefix="short_window_speed-") as tmp:
        ct2 = None if args.no_ct2 else ct2_student(small, Path(tmp), device.type, args.ct2_compute_type, args.threads)
        small.to(device)
        gc.collect()
        for batch in args.batch_sizes:
            with torch.inference_mode():
                features = torch.randn(batch, teacher.config.num_mel_bins, full,
                                       generator=torch.Generator().manual_seed(1)).to(device, dtype)
                timed = in_turns(contenders(teacher, small, ct2, features, windows, args.new_tokens, device),
                                 args.rounds)
            rows = summarise(timed, windows)
            met = {} if args.quick else goals(shape, batch, rows)  # a smoke run's shapes are not the real ones
            report(shape, batch, rows, met)
            results.append({"shape": shape, "batch": batch, "rows": rows, "goals": met,
                            "rounds": {name: t.outputs for name, t in timed.items()},
                            "ct2": None if ct2 is None else args.ct2_compute_type})
            del features, timed  # free this batch size's tensors before the next
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return results


def machine(args, device: torch.device) -> dict:
    """What ran the bench (``helpers.figures.machine``), with the note."""
    return {**describe_machine(args.threads, device.type), "note": args.note}


def parse(argv=None):
    on_gpu = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", nargs="+", default=["whisper-small"], choices=sorted(models.REAL_SHAPES))
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[1])
    ap.add_argument("--clip-seconds", nargs="+", type=float, default=[2, 5, 10, 20], help="clip lengths (s)")
    ap.add_argument("--new-tokens", type=int, default=32, help="tokens decoded after the prompt (~a 5 s sentence)")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds (after one untimed round)")
    ap.add_argument("--margin-s", type=float, default=2.0, help="window rule: seconds after the clip's end")
    ap.add_argument("--floor-s", type=float, default=0.0, help="window rule: shortest window (s)")
    ap.add_argument("--round-to-s", type=float, default=1.0, help="window rule: windows are multiples of this (s)")
    ap.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                    help="transformers dtype (default float32 on CPU, float16 on CUDA)")
    ap.add_argument("--ct2-compute-type", default="int8", help="CTranslate2 quantisation of the student")
    ap.add_argument("--no-ct2", action="store_true", help="skip CTranslate2 (e.g. not installed on a GPU machine)")
    ap.add_argument("--threads", type=int, default=2, help="threads of both runtimes (torch and CTranslate2)")
    ap.add_argument("--note", default=None, help="recorded with the machine, e.g. 'another job ran meanwhile'")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2+4 layers, clips 2 and 5 s, 1 round, 4 tokens")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not on_gpu:
        ap.error("--device cuda: no CUDA GPU here")
    if args.quick:
        args.clip_seconds, args.rounds, args.new_tokens = args.clip_seconds[:2], 1, 4
    if args.new_tokens < 1 or args.rounds < 1:
        ap.error("--new-tokens and --rounds must be at least 1")
    args.dtype = args.dtype or ("float16" if args.device == "cuda" else "float32")
    return args


def main(argv=None) -> int:
    args = parse(argv)
    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda:0" if args.device == "cuda" else "cpu")
    rule = short_window.WindowRule(args.margin_s, args.floor_s, args.round_to_s)
    info = machine(args, device)
    print(f"{info['device']} / CPU {info['cpu']}, {info['cores']} cores, {info['memory_gb']} GB; {args.threads} "
          f"threads; load average {info['load_average_start'][0]:.2f}; {args.dtype}; {args.new_tokens} new tokens; "
          f"median of {args.rounds} rounds; window rule {rule.to_dict()}")
    for shape in args.shapes:
        results = measure(args, shape, device, getattr(torch, args.dtype), rule)
        info["load_average_end"] = os.getloadavg()
        name = f"short_window_speed_{'gpu' if device.type == 'cuda' else 'cpu'}_{shape}{'_quick' if args.quick else ''}"
        out = Path(__file__).parent / "results" / f"{name}.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps({"machine": info, "args": vars(args), "window_rule": rule.to_dict(),
                                   "results": results}, indent=2))
        print(f"\nwritten: {out}")
        gc.collect()
    return 0


if __name__ == "__main__":
    sys.exit(main())
