"""The decoding budget: tokens per second of audio plus a constant, a repetition guard, and loops counted."""
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from helpers.config import TINY_TEACHER
from helpers.whisper import budget, decode
from helpers.whisper.models import load_whisper


def test_the_budget_grows_with_the_audio_and_stops_at_the_models_limit():
    # 2 s: ceil(25 x 2) + 16 = 66; 30 s: 766, capped at Whisper's 448; 0 s: the constant alone
    assert budget.token_budget(2.0, 448) == 66
    assert budget.token_budget(30.0, 448) == 448
    assert budget.token_budget(0.0, 448) == 16
    with pytest.raises(ValueError, match="duration"):
        budget.token_budget(float("nan"), 448)


def test_the_fastest_mandarin_talker_fits_the_budget():
    # ~8 characters a second is very fast Mandarin; Whisper's byte-level tokenizer spends at most 3 tokens a character
    assert budget.TOKENS_PER_SECOND >= 8 * 3


def test_no_reference_of_the_synthetic_corpus_is_cut(synthetic_run):
    _, result = synthetic_run
    tokenizer = load_whisper(TINY_TEACHER).tokenizer
    rows = pd.concat([result["train"], result["test"]])
    for text, seconds in zip(rows["text"], rows["duration"]):
        tokens = len(tokenizer(text, add_special_tokens=False).input_ids) + 1  # and the end-of-text
        assert tokens <= budget.token_budget(seconds, 10_000), (text, seconds)


@pytest.mark.parametrize("tokens, loop", [
    ([5] * 24, True),              # one token 24 times
    ([5] * 23 + [6], False),       # the tail is not repeating
    ([1, 2] * 12, True),           # a 2-gram 12 times
    ([1, 2, 3, 4, 5, 6, 7] * 4, True),  # a 7-gram 4 times (28 tokens)
    ([1, 2, 3, 4, 5, 6, 7] * 3, False),  # only 3 times
    ([8, 8, 8, 9, 9, 9], False),   # a laugh or a stutter is speech
    ([], False)])
def test_a_loop_is_a_repeated_tail(tokens, loop):
    assert budget.repeats_at_end(tokens) is loop


def guard_stop(tokens: list[int]) -> list[int]:
    """Where greedy decoding with the guard would stop: the first prefix on which it fires (or all the tokens)."""
    for end in range(1, len(tokens) + 1):
        if budget.RepetitionGuard()(torch.tensor([tokens[:end]])).item():
            return tokens[:end]
    return tokens


def transcripts(seed: int) -> list[list[int]]:
    """Token sequences of many kinds: plain text, loops of every period up to past MAX_PERIOD, loops that start
    late, that stop short of counting, that end and go on with text, stutters."""
    rng = np.random.default_rng(seed)
    out = []
    for period in range(1, budget.MAX_PERIOD + 3):
        gram = rng.integers(0, 50, period).tolist()
        for repeats in (2, 3, 4, 6, 30):
            head, tail = rng.integers(0, 50, int(rng.integers(0, 20))).tolist(), rng.integers(0, 50, 5).tolist()
            out.append(head + gram * repeats + tail)
    out += [rng.integers(0, 50, n).tolist() for n in (0, 5, 40, 120)] + [[7, 7, 7, 8, 8, 8] * 3]
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_transcript_is_cut_where_the_guard_would_have_stopped_decoding(seed):
    """CTranslate2 cannot stop a sequence on a loop: its transcript is cut afterwards, to the same text."""
    for tokens in transcripts(seed):
        cut, stopped = budget.cut_loop(tokens)
        assert cut == guard_stop(tokens) and stopped is (len(cut) < len(tokens) or budget.repeats_at_end(cut))


def test_the_guard_stops_looping_rows_only_and_remembers_them():
    guard = budget.RepetitionGuard()
    ids = torch.tensor([[1] * 30, list(range(30))])
    assert guard(ids).tolist() == [True, False]
    assert guard.fired.tolist() == [True, False]
    # counted: the looping row, and a row whose text tokens (ids below end-of-text 50) filled the budget of 30
    assert budget.looped(ids, eos_token_id=50, budget=30, guard=guard).tolist() == [True, True]
    assert budget.looped(ids, eos_token_id=50, budget=31).tolist() == [False, False]


@pytest.fixture
def broken(tmp_path):
    """``(loaded, rows)``: the tiny teacher with a broken decoder (it repeats itself instead of ending) and three 2 s
    clips of noise."""
    loaded = load_whisper(TINY_TEACHER)
    with torch.no_grad():
        torch.manual_seed(0)
        for param in loaded.model.model.decoder.parameters():
            param.add_(torch.randn_like(param) * 0.5)
    rng = np.random.default_rng(0)
    for i in range(3):
        sf.write(tmp_path / f"{i}.wav", (0.1 * rng.standard_normal(32_000)).astype(np.float32), 16_000)
    return loaded, pd.DataFrame({"audio": [str(tmp_path / f"{i}.wav") for i in range(3)], "duration": 2.0,
                                 "text": "你好"})


def test_a_broken_model_stops_within_its_budget_and_its_loops_are_counted(broken):
    loaded, rows = broken
    predictions, stats = decode.transcribe(loaded.model, loaded.processor, rows, 2, progress=False)
    assert stats["outputs"] == 3 and stats["looped"] == 3
    # each batch of 2 s clips may run 66 new tokens (the prompt on top), not the model's limit
    assert stats["decoder_steps"] <= 2 * (66 + 4)
    metrics, _ = decode.transcribe_and_score(loaded.model, loaded.processor, rows, 2, progress=False)
    assert metrics["looped"] == 3


def test_a_broken_models_export_stops_its_loops_where_transformers_does(broken, tmp_path):
    """The same broken model through transformers (guard while decoding) and its CTranslate2 float32 export (cut
    afterwards): the same transcripts, every one counted as looped."""
    from helpers import export
    from helpers.whisper import runtime

    loaded, rows = broken
    loaded.model.save_pretrained(tmp_path / "broken")
    loaded.processor.save_pretrained(tmp_path / "broken")
    predictions, stats = decode.transcribe(loaded.model, loaded.processor, rows, 2, progress=False)
    ct2 = runtime.load_export(export.export_model(tmp_path / "broken", quantization="float32"), threads=2)
    texts, ct2_stats = runtime.transcribe_export(ct2, rows, batch_size=2)
    assert ct2_stats["looped"] == stats["looped"] == 3
    assert texts == predictions
