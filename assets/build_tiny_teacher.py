"""Build the tiny offline teacher shipped in assets/tiny-whisper-zh (the stand-in for Breeze-ASR-25).

It plays the *pretrained base*: a Whisper-architecture model trained from scratch on a generic
synthetic corpus (clean speech, 7 espeak voices). Notebook 02 then fine-tunes it on the course data,
whose speakers and noise it has never heard, exactly as one fine-tunes Breeze-ASR-25 on one's own
recordings.

    python assets/build_tiny_teacher.py            # ~30 minutes on a 2-core CPU
    python assets/build_tiny_teacher.py --max-steps 200 --out /tmp/t   # a quick smoke build

Settings, seed, time taken and the CER reached are written to ``<out>/build_report.json``.
The model is saved in fp16 (a few MB); ``load_whisper`` loads it back in fp32 for training.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from helpers.speech import grammar, synth, text  # noqa: E402
from helpers.speech.collate import WhisperCollator, read_audio  # noqa: E402
from helpers.whisper.models import TINY_TEACHER, build_tokenizer, new_tiny_whisper, save_whisper  # noqa: E402

PRETRAIN_VOICES = ["cmn+f1", "cmn+f2", "cmn+f3", "cmn+m1", "cmn+m2", "cmn+m3", "cmn+m8"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(TINY_TEACHER), help="where to save the model")
    ap.add_argument("--corpus", default="build/pretrain_corpus", help="where to write the synthetic corpus")
    ap.add_argument("--num-train", type=int, default=4000)
    ap.add_argument("--num-test", type=int, default=200)
    ap.add_argument("--vocab-size", type=int, default=1000, help="BPE tokens below Whisper's 10 special tokens")
    ap.add_argument("--max-steps", type=int, default=6000)
    ap.add_argument("--max-minutes", type=float, default=35.0,
                    help="time budget: the learning rate decays to zero by then even if max-steps is not reached")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.time()

    rng = random.Random(args.seed)
    speakers = synth.make_speakers(PRETRAIN_VOICES, 4, rng, "pt")
    splits = [synth.SplitSpec("train", args.num_train, speakers), synth.SplitSpec("test", args.num_test, speakers)]
    manifest = synth.write_corpus(args.corpus, splits, seed=args.seed)
    rows = [json.loads(l) for l in manifest.read_text("utf-8").splitlines()]
    print(f"corpus: {len(rows)} clips in {time.time() - started:.0f} s")

    tok_rng = random.Random(args.seed + 1)  # the tokenizer sees grammar text, like a multilingual BPE would
    tokenizer = build_tokenizer([grammar.make_sentence(tok_rng) for _ in range(20_000)], args.vocab_size)
    model, processor = new_tiny_whisper(tokenizer, seed=args.seed)
    fe = processor.feature_extractor

    def featurise(split):
        part = [r for r in rows if r["split"] == split]
        audio = [read_audio(Path(args.corpus) / r["audio"]) for r in part]
        mels = np.concatenate([fe(audio[i:i + 256], sampling_rate=16_000, return_tensors="np").input_features
                               for i in range(0, len(audio), 256)]).astype(np.float16)
        return part, torch.from_numpy(mels), [tokenizer(r["text"]).input_ids for r in part]

    train_rows, train_mels, train_labels = featurise("train")
    test_rows, test_mels, _ = featurise("test")
    print(f"features: {tuple(train_mels.shape)} in {time.time() - started:.0f} s; "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")

    collate = WhisperCollator(processor, model.config.decoder_start_token_id)
    optim = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    train_start = time.time()
    budget_s = args.max_minutes * 60 - (train_start - started)

    def progress(step):  # cosine decay over whichever ends first: the steps or the time budget
        return min(1.0, max(step / args.max_steps, (time.time() - train_start) / budget_s))

    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: min(1.0, (s + 1) / args.warmup) * 0.5 * (
        1 + math.cos(math.pi * progress(s))))
    gen = torch.Generator().manual_seed(args.seed)
    model.train()
    step, losses = 0, []
    while step < args.max_steps and progress(step) < 1.0:
        for idx in torch.randperm(len(train_rows), generator=gen).split(args.batch_size):
            batch = collate([{"input_features": train_mels[i].float(), "labels": train_labels[i]}
                             for i in idx.tolist()])
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optim.step()
            sched.step()
            optim.zero_grad(set_to_none=True)
            losses.append(loss.item())
            step += 1
            if step % 100 == 0:
                print(f"step {step} loss {np.mean(losses[-100:]):.3f} lr {sched.get_last_lr()[0]:.2e} "
                      f"{(time.time() - train_start) / step:.3f} s/step", flush=True)
            if progress(step) >= 1.0:
                break
    train_s = time.time() - train_start

    model.eval()
    preds = []
    with torch.no_grad():
        for i in range(0, len(test_rows), 64):
            out = model.generate(test_mels[i:i + 64].float(), language="zh", task="transcribe", max_new_tokens=60)
            preds += tokenizer.batch_decode(out, skip_special_tokens=True)
    refs = [r["text"] for r in test_rows]
    report = {
        "what": "tiny offline teacher: Whisper architecture trained from scratch on generic synthetic Mandarin",
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "corpus")},
        "voices": PRETRAIN_VOICES, "noise": "none (clean speech)", "window_s": fe.chunk_length,
        "parameters_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
        "vocab_size": len(tokenizer), "steps": step, "train_seconds": round(train_s, 1),
        "seconds_per_step": round(train_s / max(step, 1), 3),
        "final_train_loss": round(float(np.mean(losses[-100:])), 4),
        "pretrain_test_cer": round(text.cer(refs, preds), 2),
        "pretrain_test_exact_match": round(
            100 * np.mean([text.normalize(a) == text.normalize(b) for a, b in zip(refs, preds)]), 1),
        "examples": [{"reference": r, "prediction": p} for r, p in list(zip(refs, preds))[:5]],
        "torch": torch.__version__, "total_seconds": round(time.time() - started, 1),
    }
    save_whisper(model, processor, args.out, dtype=torch.float16)
    Path(args.out, "build_report.json").write_text(json.dumps(report, ensure_ascii=False, indent=2), "utf-8")
    print(json.dumps(report, ensure_ascii=False, indent=2))


if __name__ == "__main__":
    main()
