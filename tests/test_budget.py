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


def test_the_guard_stops_looping_rows_only_and_remembers_them():
    guard = budget.RepetitionGuard()
    ids = torch.tensor([[1] * 30, list(range(30))])
    assert guard(ids).tolist() == [True, False]
    assert guard.fired.tolist() == [True, False]
    # counted: the looping row, and a row whose text tokens (ids below end-of-text 50) filled the budget of 30
    assert budget.looped(ids, eos_token_id=50, budget=30, guard=guard).tolist() == [True, True]
    assert budget.looped(ids, eos_token_id=50, budget=31).tolist() == [False, False]


def test_a_broken_model_stops_within_its_budget_and_its_loops_are_counted(tmp_path):
    loaded = load_whisper(TINY_TEACHER)
    with torch.no_grad():  # a broken decoder: it repeats itself instead of ending
        torch.manual_seed(0)
        for param in loaded.model.model.decoder.parameters():
            param.add_(torch.randn_like(param) * 0.5)
    rng = np.random.default_rng(0)
    for i in range(3):
        sf.write(tmp_path / f"{i}.wav", (0.1 * rng.standard_normal(32_000)).astype(np.float32), 16_000)
    rows = pd.DataFrame({"audio": [str(tmp_path / f"{i}.wav") for i in range(3)], "duration": 2.0, "text": "你好"})
    predictions, stats = decode.transcribe(loaded.model, loaded.processor, rows, 2, progress=False)
    assert stats["outputs"] == 3 and stats["looped"] == 3
    # each batch of 2 s clips may run 66 new tokens (the prompt on top), not the model's limit
    assert stats["decoder_steps"] <= 2 * (66 + 4)
    metrics, _ = decode.transcribe_and_score(loaded.model, loaded.processor, rows, 2, progress=False)
    assert metrics["looped"] == 3
