"""Specification of helpers.course's pure parts: parameter merging, notebook selection, and the refusal
of unknown parameters before any notebook runs. (Running notebooks is not tested here.)
"""
from pathlib import Path

import nbformat
import pytest

from helpers import course

NOTEBOOKS = [Path(f"/nb/{n}.ipynb") for n in ("01_data", "02_breeze_finetune", "03_distill", "04_evaluate")]


def stems(paths):
    return [p.stem for p in paths]


# ---------------------------------------------------------------- parse_params


def yaml_file(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, "utf-8")
    return str(path)


def test_parse_params_merges_yaml_files_in_order_later_files_winning(tmp_path):
    first = yaml_file(tmp_path, "a.yaml", "max_steps: 100\nsource: csv\n")
    second = yaml_file(tmp_path, "b.yaml", "max_steps: 200\ntrain_csv: data/train.csv\n")
    assert course.parse_params([first, second], [], None, None) == {
        "max_steps": 200, "source": "csv", "train_csv": "data/train.csv"}


def test_parse_params_pairs_override_the_yaml_files(tmp_path):
    params_file = yaml_file(tmp_path, "a.yaml", "max_steps: 100\n")
    assert course.parse_params([params_file], [["max_steps", "300"]], None, None) == {"max_steps": 300}


@pytest.mark.parametrize("value, expected", [
    ("300", 300),                # int
    ("0.5", 0.5),                # float
    ("true", True),              # bool
    ("false", False),
    ("null", None),              # None: the profile's default
    ("runs/x", "runs/x"),        # anything else stays a string
    ("台北", "台北"),
])
def test_parse_params_reads_pair_values_as_yaml(value, expected):
    parsed = course.parse_params([], [["name", value]], None, None)["name"]
    assert parsed == expected and type(parsed) is type(expected)


def test_parse_params_reads_a_learning_rate_in_e_notation_as_a_float():
    assert course.parse_params([], [["learning_rate", "5e-4"]], None, None)["learning_rate"] == 5e-4


def test_parse_params_profile_sets_run_dir_to_runs_profile():
    assert course.parse_params([], [], "gpu-8gb", None) == {"profile": "gpu-8gb", "run_dir": "runs/gpu-8gb"}


def test_parse_params_profile_from_a_yaml_file_also_sets_run_dir(tmp_path):
    params_file = yaml_file(tmp_path, "a.yaml", "profile: full\n")
    assert course.parse_params([params_file], [], None, None)["run_dir"] == "runs/full"


def test_parse_params_keeps_a_run_dir_given_with_the_profile():
    assert course.parse_params([], [], "full", "runs/mine") == {"profile": "full", "run_dir": "runs/mine"}


def test_parse_params_keeps_a_run_dir_given_as_a_pair():
    params = course.parse_params([], [["run_dir", "runs/pair"]], "full", None)
    assert params["run_dir"] == "runs/pair"


def test_parse_params_profile_option_beats_the_files_profile(tmp_path):
    params_file = yaml_file(tmp_path, "a.yaml", "profile: tiny\n")
    assert course.parse_params([params_file], [], "full", None)["profile"] == "full"


def test_parse_params_without_anything_is_empty():
    # no run_dir either: the course then runs into runs/tiny, the notebooks' own default
    assert course.parse_params([], [], None, None) == {}


def test_parse_params_accepts_an_empty_yaml_file(tmp_path):
    assert course.parse_params([yaml_file(tmp_path, "empty.yaml", "")], [], None, None) == {}


def test_parse_params_refuses_a_yaml_file_that_is_not_a_mapping(tmp_path):
    params_file = yaml_file(tmp_path, "list.yaml", "- max_steps\n- 3\n")
    with pytest.raises(SystemExit, match="expected a mapping"):
        course.parse_params([params_file], [], None, None)


# ---------------------------------------------------------------- select


def test_select_without_bounds_gives_every_notebook():
    assert course.select(NOTEBOOKS, None, None) == NOTEBOOKS


def test_select_from_02_to_03_is_inclusive():
    assert stems(course.select(NOTEBOOKS, "02", "03")) == ["02_breeze_finetune", "03_distill"]


def test_select_from_alone_runs_to_the_end():
    assert stems(course.select(NOTEBOOKS, "03", None)) == ["03_distill", "04_evaluate"]


def test_select_to_alone_starts_at_the_beginning():
    assert stems(course.select(NOTEBOOKS, None, "01")) == ["01_data"]


def test_select_accepts_unpadded_numbers_and_name_prefixes():
    assert stems(course.select(NOTEBOOKS, "2", "03_dist")) == ["02_breeze_finetune", "03_distill"]


def test_select_of_an_unknown_notebook_names_the_notebooks():
    with pytest.raises(SystemExit, match="no notebook matches '07'.*01_data"):
        course.select(NOTEBOOKS, "07", None)


def test_course_notebooks_are_found_in_order():
    found = stems(course.notebooks())
    assert found[0] == "01_data" and found == sorted(found)


# ---------------------------------------------------------------- main refuses unknown parameters


@pytest.fixture
def nothing_runs(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a notebook was run")

    monkeypatch.setattr(course, "run", refuse)


@pytest.fixture
def fake_notebooks(tmp_path, monkeypatch):
    """A notebooks folder of two notebooks declaring (alpha, beta) and (beta, gamma)."""
    for name, source in (("01_first", "alpha = 1\nbeta = None"), ("02_second", "beta = 2\ngamma = 'x'")):
        cell = nbformat.v4.new_code_cell(source)
        cell.metadata["tags"] = ["parameters"]
        nb = nbformat.v4.new_notebook(cells=[cell])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, tmp_path / f"{name}.ipynb")
    monkeypatch.setattr(course, "NOTEBOOKS_DIR", tmp_path)
    return tmp_path


def test_main_refuses_an_unknown_parameter_with_status_2_listing_the_known_ones(fake_notebooks, nothing_runs, capsys):
    assert course.main(["-p", "no_such_param", "1"]) == 2
    err = capsys.readouterr().err
    assert "unknown parameter(s) ['no_such_param']" in err
    assert "Known parameters: alpha, beta, gamma" in err


def test_main_refuses_a_misspelt_parameter_from_a_yaml_file(fake_notebooks, nothing_runs, tmp_path, capsys):
    params_file = yaml_file(tmp_path, "p.yaml", "alpha: 1\ngama: 2\n")
    assert course.main(["-f", params_file]) == 2
    assert "['gama']" in capsys.readouterr().err


def test_main_refuses_unknown_parameters_of_the_real_notebooks_before_running(nothing_runs, capsys):
    assert course.main(["-p", "no_such_param", "1"]) == 2
    err = capsys.readouterr().err
    assert "no_such_param" in err
    assert all(name in err for name in ("num_train", "source", "run_dir", "profile"))


# ---------------------------------------------------------------- key figures


def test_key_figures_read_the_evaluation_results(tmp_path):
    from helpers.data import write_json

    write_json(tmp_path / "eval" / "results.json", {
        "reference": "fine-tuned teacher",
        "results": [{"test_set": "test", "model": "distilled student", "status": "ok", "cer": 41.04, "params_M": 3.38,
                     "rtfx": 251.3, "speed_up": 1.54},
                    {"test_set": "test", "model": "broken", "status": "FileNotFoundError: gone", "cer": None}],
        "speculative": {"teacher": "fine-tuned teacher", "assistant_model": "distilled student", "differ": 0,
                        "utterances": 50, "speed_up": 0.7}})
    assert course.key_figures(tmp_path) == [
        "eval test: distilled student CER 41.0%, 3.38M params, RTFx 251 (1.54x the fine-tuned teacher)",
        "eval test: broken failed (FileNotFoundError: gone)",
        "speculative decoding (fine-tuned teacher + distilled student): 0 of 50 transcripts differ from the "
        "teacher's, 0.70x its speed"]
