"""The one timing routine: warm-up, turns over rounds, the median round, every round kept."""
import pytest

from helpers.figures import stats
from helpers.figures.timing import Timed, median_index, ratio, take_turns
from helpers.files import STAGES, STUDENTS, TEACHERS, RunDir


def test_contenders_take_turns_after_their_warm_up():
    calls = []
    contenders = {name: (lambda name=name: calls.append(name) or name) for name in ("a", "b")}
    timed = take_turns(contenders, rounds=2, warmup={"a": lambda: calls.append("warm a")})
    assert calls == ["warm a", "a", "b", "a", "b"]  # b has no warm-up given: none
    assert timed["a"].outputs == ["a", "a"] and len(timed["b"].seconds) == 2


def test_by_default_every_contender_warms_up_with_its_own_call():
    calls = []
    take_turns({"a": lambda: calls.append("a")}, rounds=1)
    assert calls == ["a", "a"]


def test_the_seconds_a_round_counts_can_come_from_its_output():
    values = iter([3.0, 1.0, 2.0])
    timed = take_turns({"m": lambda: next(values)}, rounds=3, warmup={}, seconds=lambda out: out)
    assert timed["m"].seconds == [3.0, 1.0, 2.0]
    assert (timed["m"].median, timed["m"].min, timed["m"].max) == (2.0, 1.0, 3.0)
    assert timed["m"].median_output == 2.0  # the round that was the median, not an average


def test_the_median_round_of_an_even_count_is_the_lower_middle_one():
    # sorted: 1, 2, 5, 9 -> position (4 - 1) // 2 = 1 -> 2, which was the round at index 3
    assert median_index([9.0, 5.0, 1.0, 2.0]) == 3
    assert stats.spread([9.0, 5.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 9.0}  # the same statistic


def test_hooks_run_around_every_turn_and_progress_after_it():
    seen = []
    take_turns({"a": lambda: None}, rounds=2, warmup={}, before=lambda n: seen.append(f"in {n}"),
               after=lambda n: seen.append(f"out {n}"), on_round=lambda n: seen.append("tick"))
    assert seen == ["in a", "out a", "tick", "in a", "out a", "tick"]


def test_a_ratio_comes_with_the_range_the_rounds_allow():
    teacher, student = Timed([4.0, 6.0, 5.0]), Timed([1.0, 2.0, 1.25])
    # medians 5 / 1.25 = 4x; slowest student against fastest teacher 4 / 2 = 2x; the reverse 6 / 1 = 6x
    assert ratio(teacher, student) == {"speed_up": 4.0, "low": 2.0, "high": 6.0}


def test_nothing_to_time_or_no_round_is_refused():
    with pytest.raises(ValueError, match="nothing to time"):
        take_turns({})
    with pytest.raises(ValueError, match="rounds must be at least 1"):
        take_turns({"a": lambda: None}, rounds=0)


# ---------------------------------------------------------------------------------------------
# The one stage table
# ---------------------------------------------------------------------------------------------
def test_the_stage_table_names_every_model_folder_once(tmp_path):
    run = RunDir(tmp_path)
    assert RunDir.MODEL_FOLDERS == ("teacher", "student_init", "student_kd", "student_adalora", "student_short")
    assert run.stage("distilled student") == tmp_path / "student_kd"
    assert set(TEACHERS) | set(STUDENTS) == {s.name for s in STAGES}
    with pytest.raises(ValueError, match="not a stage with a folder"):
        run.stage("base teacher")


def test_every_phase_has_a_results_file(tmp_path):
    run = RunDir(tmp_path)
    assert run.phase_results("distill") == tmp_path / "student_kd" / "metrics.json"
    assert run.phase_results("evaluate") == tmp_path / "eval" / "results.json"
    assert run.phase_results("data") == tmp_path / "data" / "report.json"
    with pytest.raises(ValueError, match="unknown phase"):
        run.phase_results("nope")
