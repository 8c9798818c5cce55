"""Specification of helpers.speech.synth: the offline synthetic Mandarin speech corpus.

Number reading, the sentence grammar, the espeak-ng Mandarin voice, the seed-determined corpus plan,
the speaker/noise separation of the test split, rendering, noise mixing and the on-disk corpus.
Only a handful of clips are synthesised (each takes ~0.5 s of CPU).
"""
import json
import random

import numpy as np
import pytest
import soundfile as sf

from helpers.speech import grammar, synth

SR = synth.SAMPLING_RATE  # 16 kHz


def rms(x):
    return float(np.sqrt(np.mean(np.asarray(x, np.float64) ** 2)))


# ---------------------------------------------------------------- chinese_number


@pytest.mark.parametrize("n, expected", [
    (0, "零"),
    (7, "七"),
    (10, "十"),            # not 一十
    (12, "十二"),          # not 一十二
    (20, "二十"),
    (100, "一百"),
    (105, "一百零五"),     # the empty tens place is read as 零
    (110, "一百一十"),     # inside a larger number the 一 of 一十 is spoken
    (1010, "一千零一十"),  # one 零 for the empty hundreds place
    (10005, "一萬零五"),   # one 零 for a run of empty places (千, 百, 十)
    (99_999, "九萬九千九百九十九"),
])
def test_chinese_number_reads_integers_as_spoken_mandarin(n, expected):
    assert grammar.chinese_number(n) == expected


def test_chinese_number_without_liang_reads_two_as_er():
    assert grammar.chinese_number(2000) == "二千"


def test_chinese_number_with_liang_reads_two_thousand_as_liang_qian():
    assert grammar.chinese_number(2000, liang=True) == "兩千"


@pytest.mark.parametrize("n, expected", [
    (2, "兩"),          # a bare 2 (a count) is 兩
    (20, "二十"),       # the tens digit stays 二
    (12, "十二"),       # so does the units digit of a larger number
    (222, "兩百二十二"),  # only the hundreds and above take 兩
])
def test_chinese_number_liang_applies_to_hundreds_and_above_and_to_bare_two(n, expected):
    assert grammar.chinese_number(n, liang=True) == expected


@pytest.mark.parametrize("n", [-1, 100_000])
def test_chinese_number_outside_0_to_99999_raises(n):
    with pytest.raises(ValueError, match="0..99999"):
        grammar.chinese_number(n)


# ---------------------------------------------------------------- grammar


def test_syllables_counts_one_per_cjk_character_and_two_per_english_word():
    # 記 得 寄 給 他 = 5 characters, "email" = 2 -> 7
    assert grammar.syllables("記得寄email給他") == 7


def test_make_sentence_never_exceeds_max_syllables():
    rng = random.Random(0)
    sentences = [grammar.make_sentence(rng, max_syllables=10) for _ in range(100)]
    assert max(grammar.syllables(s) for s in sentences) <= 10


def test_make_sentence_refuses_a_syllable_limit_no_sentence_can_meet():
    # the shortest sentences have 6 syllables (今天 + 基隆 + 很熱)
    with pytest.raises(ValueError, match="no sentence of at most 3 syllables"):
        grammar.make_sentence(random.Random(0), max_syllables=3)


def test_make_sentence_is_determined_by_the_rng_state():
    assert grammar.make_sentence(random.Random(5)) == grammar.make_sentence(random.Random(5))


def test_make_sentence_rejects_an_unknown_register_naming_the_known_ones():
    with pytest.raises(ValueError, match="generic.*mixed.*office"):
        grammar.make_sentence(random.Random(0), register="poetry")


def test_office_register_always_code_switches_and_generic_register_never_does():
    # every office template has an English word; no generic template or slot does
    rng = random.Random(1)
    office = [grammar.make_sentence(rng, "office", max_syllables=30) for _ in range(30)]
    generic = [grammar.make_sentence(rng, "generic", max_syllables=30) for _ in range(30)]
    assert all(any(c.isascii() and c.isalpha() for c in s) for s in office)
    assert not any(c.isascii() and c.isalpha() for s in generic for c in s)


def test_every_grammar_character_is_read_by_the_mandarin_voice():
    # espeak marks a character it cannot read in Mandarin by switching to English: "(en)...(cmn)"
    engine = synth.Espeak.get()
    unread = sorted(c for c in grammar.grammar_characters() if "(en)" in engine.phonemes(c))
    assert unread == []


def test_grammar_characters_are_all_cjk_and_include_the_number_words():
    chars = grammar.grammar_characters()
    assert all("\u4e00" <= c <= "\u9fff" for c in chars)
    assert set("零一二三四五六七八九十百千萬兩") <= chars


# ---------------------------------------------------------------- plan and splits


def test_plan_corpus_is_identical_for_the_same_seed():
    first = synth.plan_corpus(synth.default_splits(8, 4, seed=0), seed=0)
    second = synth.plan_corpus(synth.default_splits(8, 4, seed=0), seed=0)
    assert first == second  # texts, speakers, noise kinds, SNRs, noise seeds and splits


def test_plan_corpus_differs_for_another_seed():
    first = synth.plan_corpus(synth.default_splits(8, 4, seed=0), seed=0)
    other = synth.plan_corpus(synth.default_splits(8, 4, seed=1), seed=1)
    assert [r["text"] for r in first] != [r["text"] for r in other]
    assert [(r["rate"], r["pitch"]) for r in first] != [(r["rate"], r["pitch"]) for r in other]


def test_plan_corpus_has_the_requested_split_sizes_and_ids():
    plan = synth.plan_corpus(synth.default_splits(8, 4), seed=0)
    assert [r["split"] for r in plan] == ["train"] * 8 + ["test"] * 4
    assert plan[0]["id"] == "train-00000" and plan[-1]["id"] == "test-00003"


def test_plan_corpus_gives_an_snr_exactly_to_the_noisy_clips():
    plan = synth.plan_corpus(synth.default_splits(40, 20), seed=0)
    assert all((r["noise"] == "none") == (r["snr_db"] is None) for r in plan)
    assert all(10.0 <= r["snr_db"] <= 25.0 for r in plan if r["snr_db"] is not None)


def test_plan_corpus_respects_max_syllables():
    plan = synth.plan_corpus(synth.default_splits(20, 5), seed=0, max_syllables=9)
    assert max(grammar.syllables(r["text"]) for r in plan) <= 9


def test_default_splits_keep_test_voices_and_noise_kinds_out_of_train():
    train, test = synth.default_splits(10, 5)
    assert (train.name, test.name) == ("train", "test")
    assert not {s.voice for s in train.speakers} & {s.voice for s in test.speakers}
    assert not set(train.noises) & set(test.noises)
    assert not {s.speaker_id for s in train.speakers} & {s.speaker_id for s in test.speakers}


def test_planned_test_clips_use_only_unseen_voices_and_noises():
    plan = synth.plan_corpus(synth.default_splits(60, 30), seed=0)
    train_voices = {r["voice"] for r in plan if r["split"] == "train"}
    train_noises = {r["noise"] for r in plan if r["split"] == "train"} - {"none"}
    test_voices = {r["voice"] for r in plan if r["split"] == "test"}
    test_noises = {r["noise"] for r in plan if r["split"] == "test"} - {"none"}
    assert test_voices and test_noises  # with 30 clips both kinds of mismatch really occur
    assert not test_voices & train_voices
    assert not test_noises & train_noises


def test_default_splits_add_an_unlabelled_split_only_when_asked():
    assert [s.name for s in synth.default_splits(10, 5)] == ["train", "test"]
    assert [s.name for s in synth.default_splits(10, 5, num_unlabelled=7)] == ["train", "test", "unlabelled"]


def test_unlabelled_split_uses_the_training_speakers_and_noises_never_the_test_ones():
    train, test, unlabelled = synth.default_splits(10, 5, num_unlabelled=7)
    assert unlabelled.size == 7
    assert unlabelled.speakers == train.speakers and unlabelled.noises == train.noises
    plan = synth.plan_corpus([train, test, unlabelled], seed=0)
    test_voices = {r["voice"] for r in plan if r["split"] == "test"}
    assert not {r["voice"] for r in plan if r["split"] == "unlabelled"} & test_voices


def test_adding_unlabelled_clips_leaves_the_train_and_test_plans_unchanged():
    without = synth.plan_corpus(synth.default_splits(8, 4), seed=0)
    with_unlabelled = synth.plan_corpus(synth.default_splits(8, 4, num_unlabelled=5), seed=0)
    assert with_unlabelled[:12] == without  # each split draws from its own seed
    assert [r["split"] for r in with_unlabelled[12:]] == ["unlabelled"] * 5


def test_default_splits_refuse_a_negative_number_of_unlabelled_clips():
    with pytest.raises(ValueError, match="num_unlabelled must be 0 or more, got -1"):
        synth.default_splits(8, 4, num_unlabelled=-1)


def test_make_speakers_draws_per_voice_speakers_within_the_documented_ranges():
    speakers = synth.make_speakers(["cmn+f1", "cmn+m1"], 3, random.Random(0), "sp")
    assert [s.speaker_id for s in speakers] == ["sp00", "sp01", "sp02", "sp03", "sp04", "sp05"]
    assert [s.voice for s in speakers] == ["cmn+f1"] * 3 + ["cmn+m1"] * 3
    assert all(150 <= s.rate <= 220 and 25 <= s.pitch <= 75 and 30 <= s.pitch_range <= 90 for s in speakers)


# ---------------------------------------------------------------- noise


@pytest.mark.parametrize("kind", synth.NOISE_KINDS)
def test_make_noise_has_unit_rms(kind):
    noise = synth.make_noise(kind, 8000, np.random.default_rng(0))
    assert noise.dtype == np.float32 and noise.shape == (8000,)
    assert rms(noise) == pytest.approx(1.0, rel=1e-3)


def test_make_noise_rejects_an_unknown_kind():
    with pytest.raises(ValueError, match="noise kind"):
        synth.make_noise("purple", 100, np.random.default_rng(0))


@pytest.mark.parametrize("kind", synth.NOISE_KINDS)
@pytest.mark.parametrize("snr_db", [5.0, 20.0])
def test_add_noise_reaches_the_requested_snr(kind, snr_db):
    # a 0.1-amplitude tone: peaks stay below 1, so nothing is rescaled and noise = noisy - clean
    t = np.arange(SR) / SR
    clean = (0.1 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    noisy = synth.add_noise(clean, kind, snr_db, np.random.default_rng(0))
    measured = 20 * np.log10(rms(clean) / rms(noisy.astype(np.float64) - clean))
    assert abs(measured - snr_db) < 0.5


def test_add_noise_rescales_clipping_mixtures_to_a_097_peak_keeping_the_snr():
    t = np.arange(SR) / SR
    clean = (0.99 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    noisy = synth.add_noise(clean, "white", 5.0, np.random.default_rng(0))
    assert np.max(np.abs(noisy)) == pytest.approx(0.97, abs=1e-6)
    # undo the common gain g (peak_before / 0.97): the speech-to-noise ratio is unchanged
    gain = float(np.dot(noisy, clean) / np.dot(clean, clean))  # noise is uncorrelated with the tone
    noise = noisy / gain - clean
    assert abs(20 * np.log10(rms(clean) / rms(noise)) - 5.0) < 0.5


# ---------------------------------------------------------------- render


def _row(text="我們明天早上八點去台北車站", noise="none", snr_db=None):
    return {"text": text, "voice": "cmn+f3", "rate": 175, "pitch": 50, "pitch_range": 50,
            "noise": noise, "snr_db": snr_db, "noise_seed": 1}


@pytest.fixture(scope="module")
def clean_clip():
    return synth.render(_row())


def test_render_gives_a_plausibly_long_float32_clip(clean_clip):
    # 13 syllables at 175 wpm is ~2-3 s of speech, plus 2 x 0.2 s of padding
    assert clean_clip.dtype == np.float32 and clean_clip.ndim == 1
    assert 1.0 < len(clean_clip) / SR < 6.0


def test_render_is_not_silent_and_stays_within_full_scale(clean_clip):
    assert rms(clean_clip) > 0.01
    assert np.max(np.abs(clean_clip)) <= 1.0


def test_render_pads_a_clean_clip_with_exactly_0_2_s_of_silence_at_16_khz(clean_clip):
    # 0.2 s at 16 kHz = 3200 zero samples at each end; speech right after them
    pad = int(0.2 * SR)
    assert not clean_clip[:pad].any() and not clean_clip[-pad:].any()
    assert clean_clip[pad:-pad].any()


def test_render_pads_with_the_rows_own_lead_and_tail():
    row = {**_row(), "lead_s": 0.05, "tail_s": 0.5}
    clip = synth.render(row)
    lead, tail = int(0.05 * SR), int(0.5 * SR)
    assert not clip[:lead].any() and clip[lead:lead + SR // 10].any()  # speech right after its lead-in
    assert not clip[-tail:].any()
    assert len(clip) == pytest.approx(len(synth.render(_row())) - 2 * int(0.2 * SR) + lead + tail, abs=2)


def test_render_shrinks_the_pads_of_a_clip_that_would_outgrow_the_window():
    speech = len(synth.render({**_row(), "lead_s": 0.0, "tail_s": 0.0})) / SR
    long_pads = synth.render({**_row(), "lead_s": 5.0, "tail_s": 5.0})
    assert len(long_pads) / SR == pytest.approx(max(synth.MAX_CLIP_S, speech), abs=0.01)


def test_plan_corpus_draws_each_clips_lead_and_tail_apart_from_its_text():
    splits = synth.default_splits(40, 10, seed=0)
    plan = synth.plan_corpus(splits, seed=0)
    leads, tails = [r["lead_s"] for r in plan], [r["tail_s"] for r in plan]
    low, high = synth.PAD_S
    assert all(low <= v <= high for v in leads + tails)
    assert len(set(leads)) > len(plan) // 2 and leads != tails  # varied: no fixed lead-in to learn
    assert synth.plan_corpus(splits, seed=0) == plan


def test_render_adds_noise_to_noisy_rows_even_in_the_padding():
    noisy = synth.render(_row(text="你好", noise="white", snr_db=10.0))
    assert np.abs(noisy[: int(0.2 * SR)]).max() > 0


def test_espeak_rejects_an_unknown_voice():
    with pytest.raises(ValueError, match="no voice"):
        synth.Espeak.get().synthesize("你好", voice="no-such-voice")


# ---------------------------------------------------------------- write_corpus


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    """A written corpus of 2 train + 1 test clips and the mtimes of its files right after writing."""
    out = tmp_path_factory.mktemp("corpus")
    splits = synth.default_splits(2, 1, seed=0)
    manifest = synth.write_corpus(out, splits, seed=0, progress=False)
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    return out, splits, manifest, mtimes


def test_write_corpus_writes_one_16_khz_pcm16_wav_per_planned_clip(small_corpus):
    out, splits, manifest, _ = small_corpus
    wavs = sorted(p.name for p in (out / "wav").glob("*.wav"))
    assert wavs == ["test-00000.wav", "train-00000.wav", "train-00001.wav"]
    info = sf.info(out / "wav" / "train-00000.wav")
    assert (info.samplerate, info.channels, info.subtype) == (SR, 1, "PCM_16")


def test_write_corpus_manifest_lists_every_clip_with_its_plan(small_corpus):
    out, splits, manifest, _ = small_corpus
    assert manifest == out / "manifest.jsonl"
    rows = [json.loads(line) for line in manifest.read_text("utf-8").splitlines()]
    plan = synth.plan_corpus(splits, seed=0)
    assert [r["text"] for r in rows] == [p["text"] for p in plan]
    assert [r["split"] for r in rows] == ["train", "train", "test"]
    assert {r["source"] for r in rows} == {"synthetic"}
    assert [r["audio"] for r in rows] == ["wav/train-00000.wav", "wav/train-00001.wav", "wav/test-00000.wav"]


def test_write_corpus_manifest_durations_match_the_files(small_corpus):
    out, _, manifest, _ = small_corpus
    for line in manifest.read_text("utf-8").splitlines():
        row = json.loads(line)
        assert row["duration"] == pytest.approx(sf.info(out / row["audio"]).duration, abs=1e-3)


def test_write_corpus_reuses_a_finished_corpus_without_rewriting_it(small_corpus):
    out, splits, manifest, mtimes = small_corpus
    again = synth.write_corpus(out, splits, seed=0, progress=False)
    assert again == manifest
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == mtimes


def test_train_valid_and_test_share_no_voice_and_no_noise():
    splits = {s.name: s for s in synth.default_splits(30, 30, seed=0, num_valid=30, num_unlabelled=10)}
    voices = {name: {spk.voice for spk in s.speakers} for name, s in splits.items()}
    noises = {name: set(s.noises) for name, s in splits.items()}
    for a, b in (("train", "valid"), ("train", "test"), ("valid", "test")):
        assert voices[a].isdisjoint(voices[b]) and noises[a].isdisjoint(noises[b]), (a, b)
    assert voices["unlabelled"] == voices["train"] and noises["unlabelled"] == noises["train"]


def test_the_planned_corpus_keeps_each_splits_speakers_and_noises_apart():
    plan = synth.plan_corpus(synth.default_splits(40, 40, seed=1, num_valid=40))
    by_split = {}
    for row in plan:
        by_split.setdefault(row["split"], (set(), set()))
        by_split[row["split"]][0].add(row["speaker_id"])
        by_split[row["split"]][1].add(row["noise"])
    speakers = {k: v[0] for k, v in by_split.items()}
    noises = {k: v[1] - {"none"} for k, v in by_split.items()}
    assert speakers["train"].isdisjoint(speakers["valid"]) and speakers["valid"].isdisjoint(speakers["test"])
    assert noises["valid"] == {"blue", "crackle"} and noises["test"] == {"pink", "hum"}


def test_adding_a_valid_split_leaves_train_and_test_unchanged():
    without = [r for r in synth.plan_corpus(synth.default_splits(20, 20)) if r["split"] in ("train", "test")]
    with_valid = [r for r in synth.plan_corpus(synth.default_splits(20, 20, num_valid=10))
                  if r["split"] in ("train", "test")]
    assert without == with_valid
