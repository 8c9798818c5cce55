"""Specification of helpers.course's pure parts: parameter merging, notebook selection, and the refusal
of unknown parameters before any notebook runs. (Running notebooks is not tested here.)
"""
from pathlib import Path

import pytest

from helpers import cli, config, course
from helpers.files import write_json

NOTEBOOKS = [Path(f"/nb/{n}.ipynb") for n in ("01_data", "02_breeze_finetune", "03_distill", "04_evaluate")]


def stems(paths):
    return [p.stem for p in paths]


# ---------------------------------------------------------------- parse_params (cli.parse_params)


def yaml_file(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, "utf-8")
    return str(path)


def test_parse_params_merges_yaml_files_in_order_later_files_winning(tmp_path):
    first = yaml_file(tmp_path, "a.yaml", "max_steps: 100\nsource: csv\n")
    second = yaml_file(tmp_path, "b.yaml", "max_steps: 200\ntrain_csv: data/train.csv\n")
    expected = {"max_steps": 200, "source": "csv", "train_csv": "data/train.csv"}
    assert cli.parse_params([first, second], []) == expected


def test_parse_params_pairs_override_the_yaml_files(tmp_path):
    params_file = yaml_file(tmp_path, "a.yaml", "max_steps: 100\n")
    assert cli.parse_params([params_file], [["max_steps", "300"]]) == {"max_steps": 300}


@pytest.mark.parametrize("name, value, expected", [
    ("max_steps", "300", 300),              # int
    ("cer_threshold", "0.5", 0.5),          # float
    ("fp16", "true", True),                 # bool
    ("fp16", "false", False),
    ("max_steps", "null", None),            # None: the profile's default
    ("run_dir", "runs/x", "runs/x"),        # anything else stays a string
    ("text_column", "台北", "台北"),
    ("learning_rate", "5e-4", 5e-4),        # e notation is a float (YAML 1.1 alone would read a string)
])
def test_parse_params_reads_pair_values_as_yaml(name, value, expected):
    parsed = cli.parse_params([], [[name, value]])[name]
    assert parsed == expected and type(parsed) is type(expected)


def test_parse_params_profile_and_run_dir_options_beat_the_files(tmp_path):
    params_file = yaml_file(tmp_path, "a.yaml", "profile: tiny\nrun_dir: runs/a\n")
    assert cli.parse_params([params_file], [], "full", "runs/mine") == {"profile": "full", "run_dir": "runs/mine"}


def test_a_profile_alone_runs_into_its_own_run_dir():
    params = cli.parse_params([], [], "gpu-8gb")
    assert course.check_all(course.notebooks()[:1], params) == config.REPO / "runs" / "gpu-8gb"


def test_parse_params_without_anything_is_empty_and_runs_into_runs_tiny():
    assert cli.parse_params([], []) == {}
    assert course.check_all(course.notebooks(), {}) == config.REPO / "runs" / "tiny"


def test_parse_params_accepts_an_empty_yaml_file(tmp_path):
    assert cli.parse_params([yaml_file(tmp_path, "empty.yaml", "")], []) == {}


def test_parse_params_refuses_a_yaml_file_that_is_not_a_mapping(tmp_path):
    params_file = yaml_file(tmp_path, "list.yaml", "- max_steps\n- 3\n")
    with pytest.raises(ValueError, match="expected a mapping"):
        cli.parse_params([params_file], [])


def test_parse_params_refuses_a_missing_yaml_file(tmp_path):
    with pytest.raises(ValueError, match="parameters file .*nope.yaml does not exist"):
        cli.parse_params([str(tmp_path / "nope.yaml")], [])


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
    with pytest.raises(ValueError, match="no notebook matches '07'.*01_data"):
        course.select(NOTEBOOKS, "07", None)


def test_course_notebooks_are_found_in_order():
    found = stems(course.notebooks())
    assert found[0] == "01_data" and found == sorted(found)


# ---------------------------------------------------------------- main checks everything before running


@pytest.fixture
def nothing_runs(monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise AssertionError("a notebook was run")

    monkeypatch.setattr(course, "run", refuse)
    monkeypatch.chdir(tmp_path)


def test_main_refuses_an_unknown_parameter_with_status_2_listing_the_valid_ones(nothing_runs, capsys):
    assert course.main(["-p", "no_such_param", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: parameters: unknown parameter(s) no_such_param; valid names:")
    assert all(name in err for name in ("num_train", "source", "run_dir", "profile"))


def test_main_refuses_a_misspelt_parameter_from_a_yaml_file(nothing_runs, tmp_path, capsys):
    params_file = yaml_file(tmp_path, "p.yaml", "max_steps: 1\nmax_stpes: 2\n")
    assert course.main(["-f", params_file]) == 2
    assert "max_stpes" in capsys.readouterr().err


def test_main_refuses_a_value_of_the_wrong_type_in_one_line_before_any_notebook(nothing_runs, capsys):
    assert course.main(["-p", "max_steps", "abc"]) == 2
    assert capsys.readouterr().err == "error: parameter max_steps must be an integer >= 1, got 'abc' (str)\n"


def test_main_refuses_an_unknown_profile_without_making_its_run_dir(nothing_runs, capsys):
    assert course.main(["--profile", "nope"]) == 2
    assert "profile must be one of 'tiny', 'gpu-8gb', 'full', got 'nope'" in capsys.readouterr().err
    assert not (config.REPO / "runs" / "nope").exists()


def test_main_refuses_contradicting_values_of_a_later_notebook_before_the_first_runs(nothing_runs, capsys):
    assert course.main(["-p", "eval_steps", "100", "-p", "save_steps", "150"]) == 2
    assert "save_steps (150) must be a multiple of eval_steps (100)" in capsys.readouterr().err


def test_the_course_kernel_runs_this_python(monkeypatch, tmp_path):
    import sys

    monkeypatch.setenv("JUPYTER_PATH", "")
    name = course.current_kernel()
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec(name)
    assert spec.argv[:3] == [sys.executable, "-m", "ipykernel_launcher"]


# ---------------------------------------------------------------- key figures


def test_key_figures_read_the_evaluation_results(tmp_path):
    write_json(tmp_path / "eval" / "results.json", {
        "reference": "fine-tuned teacher",
        "results": [{"test_set": "test", "model": "distilled student", "status": "ok", "cer": 41.04, "params_M": 3.38,
                     "rtfx": 251.3, "speed_up": 1.54},
                    {"test_set": "test", "model": "distilled student (CTranslate2 int8)", "status": "ok", "cer": 42.0,
                     "params_M": None, "size_MB": 3.63, "runtime": "ctranslate2", "quantization": "int8",
                     "rtfx": 280.0, "speed_up": 1.6},
                    {"test_set": "test", "model": "broken", "status": "FileNotFoundError: gone", "cer": None}],
        "speculative": {"teacher": "fine-tuned teacher", "assistant_model": "distilled student", "differ": 0,
                        "utterances": 50, "speed_up": 0.7}})
    assert course.key_figures(tmp_path) == [
        "eval test: distilled student CER 41.0%, 3.38M params, RTFx 251 (1.54x the fine-tuned teacher)",
        "eval test: distilled student (CTranslate2 int8) CER 42.0%, 3.6 MB (ctranslate2 int8), RTFx 280 (1.60x the "
        "fine-tuned teacher)",
        "eval test: broken failed (FileNotFoundError: gone)",
        "speculative decoding (fine-tuned teacher + distilled student): 0 of 50 transcripts differ from the "
        "teacher's, 0.70x its speed"]
