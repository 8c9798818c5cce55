"""Specification of helpers.speech.text: scoring normalisation and CER / WER / MER.

Every expected number is worked out by hand in the comment above the assert.
Rates are percentages: 100 * (substitutions + deletions + insertions) / N_ref.
"""
import pytest

from helpers.speech.text import (
    align,
    cer,
    char_tokens,
    error_counts,
    mer,
    mixed_tokens,
    normalize,
    utterance_scores,
    wer,
    word_tokens,
)

# ---------------------------------------------------------------- normalize


def test_nfkc_folds_full_width_letters_and_digits_then_lowercases():
    # NFKC: ＡＢＣ１２３ -> ABC123; lowercase -> abc123
    assert normalize("ＡＢＣ１２３") == "abc123"


def test_lowercase_can_be_switched_off():
    assert normalize("Hello World", lowercase=False) == "Hello World"


def test_cjk_punctuation_is_removed():
    # ，。！？「」 are all Unicode P* categories -> gone, and the spaces they
    # leave next to CJK characters are dropped too.
    assert normalize("「你好，世界。」真的嗎？對！", fold=None) == "你好世界真的嗎對"


def test_ascii_punctuation_is_removed_and_separates_latin_words():
    # "," becomes a space so "hello,world" does not glue into one word.
    assert normalize('Hello,world! "OK"... (yes)?') == "hello world ok yes"


def test_symbols_such_as_wave_dash_are_removed():
    # ～ (full-width tilde, NFKC -> "~", category Sm) is a symbol, not a sound.
    assert normalize("好啊～", fold=None) == "好啊"


def test_apostrophe_inside_a_latin_word_is_kept_stray_ones_are_not():
    # ’ is read as '; the quotes around 'quoted' are punctuation.
    assert normalize("Don’t say 'quoted'") == "don't say quoted"


def test_whitespace_collapses_between_latin_words_and_vanishes_next_to_cjk():
    # full-width space U+3000 -> space by NFKC; spaces touching CJK mean nothing.
    assert normalize("  今天　下午  the   ppt 很好 ", fold=None) == "今天下午the ppt很好"


def test_t2s_fold_maps_traditional_to_simplified():
    # OpenCC t2s: 臺->台 灣->湾 會->会 議->议 (checked by hand with opencc 1.4.2)
    assert normalize("臺灣的會議") == "台湾的会议"


def test_s2t_fold_maps_simplified_to_traditional():
    # OpenCC s2t: 台湾的会议 -> 臺灣的會議
    assert normalize("台湾的会议", fold="s2t") == "臺灣的會議"


def test_fold_none_keeps_the_script():
    assert normalize("臺灣的會議", fold=None) == "臺灣的會議"


def test_unknown_fold_is_a_value_error_naming_value_and_choices():
    with pytest.raises(ValueError) as excinfo:
        normalize("x", fold="tw2s")
    message = str(excinfo.value)
    assert all(word in message for word in ("'tw2s'", "'t2s'", "'s2t'", "None"))


# ---------------------------------------------------------------- tokens


def test_char_tokens_are_characters_without_whitespace():
    assert char_tokens("今天 下午 ok", fold=None) == ["今", "天", "下", "午", "o", "k"]


def test_word_tokens_split_on_whitespace_after_normalisation():
    assert word_tokens("The cat, the MAT.") == ["the", "cat", "the", "mat"]


def test_mixed_tokens_split_cjk_by_character_and_keep_latin_words_whole():
    assert mixed_tokens("明天的meeting改到十點", fold=None) == [
        "明", "天", "的", "meeting", "改", "到", "十", "點"]


def test_mixed_tokens_keep_apostrophes_and_digits_inside_latin_runs():
    assert mixed_tokens("Don't 用 PPT2，email我") == ["don't", "用", "ppt2", "email", "我"]


# ---------------------------------------------------------------- known rates


def test_known_cer_one_substitution_one_insertion():
    # 今天下午三點 vs 今天上午三點半: 下->上 (S), +半 (I); N = 6 chars
    # 100 * 2 / 6 = 33.33...
    assert cer(["今天下午三點"], ["今天上午三點半"]) == pytest.approx(100 * 2 / 6)


def test_cer_ignores_traditional_vs_simplified_with_t2s_fold():
    # both sides become 台湾的会议 -> 0 edits
    assert cer(["臺灣的會議"], ["台湾的会议"], fold="t2s") == 0.0


def test_cer_counts_script_differences_without_fold():
    # 臺/台 灣/湾 的/的 會/会 議/议: 4 substitutions over 5 chars = 80%
    assert cer(["臺灣的會議"], ["台湾的会议"], fold=None) == pytest.approx(80.0)


def test_cer_ignores_punctuation_and_spaces():
    # after normalisation both are 今天下午开会 -> 0
    assert cer(["今天，下午開會。"], ["今天 下午 開會"]) == 0.0


def test_known_wer_on_english():
    # the cat sat on the mat  vs  the cat sit on mat
    # sat->sit (S), second "the" deleted (D); N = 6 words -> 100 * 2 / 6
    assert wer(["The cat sat on the mat."], ["the cat sit on mat"]) == pytest.approx(100 * 2 / 6)


def test_known_mer_insertion_in_code_switched_sentence():
    # ref tokens: 明 天 的 meeting 改 到 十 點 (8); pred adds 一 -> 1 I / 8 = 12.5%
    assert mer(["明天的meeting改到十點"], ["明天的meeting改到十一點"]) == pytest.approx(12.5)


def test_known_mer_misspelt_english_word_is_one_substitution():
    # meeting -> meting is one token substituted: 1 S / 8 = 12.5%
    assert mer(["明天的meeting改到十點"], ["明天的meting改到十點"]) == pytest.approx(12.5)
    # while CER sees one deleted letter out of 14 chars (7 CJK + 7 letters)
    assert cer(["明天的meeting改到十點"], ["明天的meting改到十點"]) == pytest.approx(100 / 14)


def test_single_string_pair_is_accepted():
    # 今天 vs 今夫: 1 S / 2 = 50%
    assert cer("今天", "今夫") == pytest.approx(50.0)


# ---------------------------------------------------------------- aggregation


def test_corpus_rate_is_total_edits_over_total_reference_tokens():
    # utterance 1: 今天 vs 今夫 -> 1 S / 2 chars = 50%
    # utterance 2: 我們明天開會 exact -> 0 / 6 = 0%
    # mean of utterance rates would be 25%; corpus rate is 1 / 8 = 12.5%
    refs, preds = ["今天", "我們明天開會"], ["今夫", "我們明天開會"]
    assert cer(refs, preds) == pytest.approx(12.5)
    rates = [row["cer"] for row in utterance_scores(refs, preds)]
    assert rates == pytest.approx([50.0, 0.0])


def test_error_counts_reports_totals_per_unit():
    # mixed tokens: meeting->meting (S), +一 (I); 7 hits of 8 reference tokens
    counts = error_counts(["明天的meeting改到十點"], ["明天的meting改到十一點"], unit="mixed")
    assert counts == {"substitutions": 1, "deletions": 0, "insertions": 1,
                      "hits": 7, "n_ref": 8}


def test_error_counts_rejects_unknown_unit():
    with pytest.raises(ValueError, match="syllable"):
        error_counts(["a"], ["a"], unit="syllable")


def test_utterance_scores_give_rates_and_counts_per_utterance():
    # 今天下午三點 vs 今天上午三點半: chars 1 S + 1 I over 6; one "word" each
    # (no spaces in Chinese) so WER = 1 S / 1 = 100%; mixed = chars here.
    [row] = utterance_scores(["今天下午三點"], ["今天上午三點半"])
    assert row["ref_norm"] == "今天下午三点" and row["pred_norm"] == "今天上午三点半"
    assert row["cer"] == pytest.approx(100 * 2 / 6)
    assert row["wer"] == pytest.approx(100.0)
    assert row["mer"] == pytest.approx(100 * 2 / 6)
    assert (row["char_sub"], row["char_del"], row["char_ins"], row["char_n_ref"]) == (1, 0, 1, 6)
    assert (row["word_sub"], row["word_del"], row["word_ins"], row["word_n_ref"]) == (1, 0, 0, 1)


# ---------------------------------------------------------------- edge cases


def test_empty_reference_and_empty_prediction_score_zero():
    # "，。" is empty after normalisation; nothing predicted -> 0 edits / max(0, 1)
    assert cer([""], [""]) == 0.0
    assert cer(["，。"], [""]) == 0.0


def test_empty_reference_counts_every_predicted_token_as_an_insertion():
    # ref empty, pred 好 -> 1 I, N = 0; rate = 100 * 1 / max(0, 1) = 100%
    assert cer(["，。"], ["好"]) == pytest.approx(100.0)
    assert error_counts([""], ["好的"]) == {"substitutions": 0, "deletions": 0,
                                          "insertions": 2, "hits": 0, "n_ref": 0}


def test_empty_reference_inside_a_corpus_adds_insertions_but_no_reference_tokens():
    # utt 1: ""  vs 好   -> 1 I, N = 0;  utt 2: 今天 vs 今天 -> 0, N = 2
    # corpus: 1 / 2 = 50%
    assert cer(["", "今天"], ["好", "今天"]) == pytest.approx(50.0)


def test_per_utterance_rate_with_empty_reference_is_finite():
    # 2 insertions, N = 0 -> 100 * 2 / max(0, 1) = 200%, not inf
    [row] = utterance_scores([""], ["好的"])
    assert row["cer"] == pytest.approx(200.0) and row["char_ins"] == 2


def test_empty_prediction_is_all_deletions():
    # 今天 vs "" -> 2 D / 2 = 100%
    assert cer(["今天"], [""]) == pytest.approx(100.0)


def test_mismatched_lengths_raise_naming_both_lengths():
    with pytest.raises(ValueError, match=r"2 references vs 1 predictions"):
        cer(["a", "b"], ["a"])


def test_empty_corpus_scores_zero():
    assert cer([], []) == 0.0


# ---------------------------------------------------------------- align


def test_align_characters():
    # 下->上 substituted, 半 inserted at the end
    assert align("今天下午三點", "今天上午三點半", fold=None) == [
        ("equal", "今", "今"), ("equal", "天", "天"), ("substitute", "下", "上"),
        ("equal", "午", "午"), ("equal", "三", "三"), ("equal", "點", "點"),
        ("insert", None, "半")]


def test_align_shows_normalised_tokens():
    # default t2s fold: 點 is shown as 点 on both sides
    assert align("點", "點") == [("equal", "点", "点")]


def test_align_mixed_units_with_deletion():
    # 明天的meeting取消 vs 明天meeting取消: 的 deleted
    assert align("明天的meeting取消", "明天meeting取消", unit="mixed", fold=None) == [
        ("equal", "明", "明"), ("equal", "天", "天"), ("delete", "的", None),
        ("equal", "meeting", "meeting"), ("equal", "取", "取"), ("equal", "消", "消")]


def test_align_empty_reference_is_all_insertions():
    assert align("", "好的", fold=None) == [("insert", None, "好"), ("insert", None, "的")]
