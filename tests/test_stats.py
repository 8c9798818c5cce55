"""Bootstrap intervals and timing spreads on data whose answer is known."""
import numpy as np
import pytest

from helpers.figures import stats


def test_the_rate_is_the_corpus_rate_of_the_whole_set():
    # 1 + 3 errors over 10 + 10 reference characters: 20 %, not the mean of the utterance rates
    assert stats.bootstrap_rate([1, 3], [10, 10])["rate"] == pytest.approx(20.0)


def test_identical_utterances_give_an_interval_of_zero_width():
    out = stats.bootstrap_rate([2] * 50, [10] * 50)
    assert out["low"] == out["rate"] == out["high"] == pytest.approx(20.0)


def test_the_interval_holds_the_rate_and_narrows_with_more_utterances():
    rng = np.random.default_rng(1)
    def width(n):
        errors = rng.binomial(10, 0.2, size=n)  # each utterance: 10 characters, each wrong with p = 0.2
        out = stats.bootstrap_rate(errors, np.full(n, 10))
        assert out["low"] <= out["rate"] <= out["high"]
        return out["high"] - out["low"]
    # the binomial standard error at n utterances is sqrt(0.2 * 0.8 / (10 n)): a 95 % interval of about
    # 2 * 1.96 * that, 5.0 points at n = 100 and 1.6 points at n = 1000
    assert width(100) == pytest.approx(5.0, abs=1.2)
    assert width(1000) == pytest.approx(1.6, abs=0.4)


def test_the_interval_covers_the_true_rate_about_95_times_in_100():
    rng = np.random.default_rng(7)
    covered = 0
    for seed in range(200):
        errors = rng.binomial(20, 0.3, size=60)
        out = stats.bootstrap_rate(errors, np.full(60, 20), resamples=400, seed=seed)
        covered += out["low"] <= 30.0 <= out["high"]
    assert 0.90 <= covered / 200 <= 0.99


def test_the_same_seed_gives_the_same_interval():
    errors, n_ref = [0, 3, 5, 1, 2], [8, 9, 10, 7, 6]
    assert stats.bootstrap_rate(errors, n_ref, seed=3) == stats.bootstrap_rate(errors, n_ref, seed=3)


def test_a_paired_difference_of_a_system_with_itself_is_zero():
    errors = [1, 0, 4, 2]
    assert stats.paired_difference(errors, errors, [10, 10, 10, 10]) == {"difference": 0.0, "low": 0.0, "high": 0.0}


def test_a_consistently_better_system_is_better_and_a_mixed_one_within_noise():
    n_ref = [10] * 40
    teacher = [3] * 40
    better = stats.paired_difference([2] * 40, teacher, n_ref)  # one error fewer on every utterance: -10 points
    assert better["difference"] == pytest.approx(-10.0) and stats.verdict(better) == "better"
    assert stats.verdict(stats.paired_difference(teacher, [2] * 40, n_ref)) == "worse"
    mixed = [2, 4] * 20  # one fewer on half, one more on the other half: 0 on average
    assert stats.verdict(stats.paired_difference(mixed, teacher, n_ref)) == "within noise"


def test_pairing_sees_a_small_consistent_gain_that_separate_intervals_would_miss():
    rng = np.random.default_rng(2)
    hard = rng.integers(0, 10, size=100)  # utterance difficulty varies a lot...
    student, teacher = hard, hard + (rng.random(100) < 0.3)  # ...the student makes slightly fewer errors
    a, b = stats.bootstrap_rate(student, [10] * 100), stats.bootstrap_rate(teacher, [10] * 100)
    assert a["high"] > b["low"]  # separate intervals overlap
    assert stats.verdict(stats.paired_difference(student, teacher, [10] * 100)) == "better"


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="same, non-zero number of utterances"):
        stats.bootstrap_rate([1, 2], [10])
    with pytest.raises(ValueError, match="same, non-zero"):
        stats.bootstrap_rate([], [])


def test_spread_and_overlap():
    a, b = stats.spread([1.0, 1.2, 1.1]), stats.spread([1.15, 1.3, 1.4])
    assert a == {"median": 1.1, "min": 1.0, "max": 1.2}
    assert stats.overlap(a, b) and not stats.overlap(a, stats.spread([1.3, 1.5]))
