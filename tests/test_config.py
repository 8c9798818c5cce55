"""Specification of helpers.config: the profile table and how a notebook's parameters are resolved.

A parameters cell holds literals, ``None`` meaning "the profile's default"; resolve() fills those in,
refuses names the notebook does not know, and makes run_dir an absolute path under the repository.
"""
import platform
import re
from pathlib import Path

import pytest

from helpers import cli, config

REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- defaults


def test_tiny_profile_is_the_offline_cpu_default():
    d = config.defaults("01_data")
    assert (d["profile"], d["run_dir"], d["source"], d["num_train"], d["num_valid"], d["num_test"]) == (
        "tiny", "runs/tiny", "synthetic", 600, 200, 200)
    assert d["max_duration_s"] == 5.0


def test_tiny_profile_fine_tunes_the_local_tiny_teacher():
    d = config.defaults("02_breeze_finetune", "tiny")
    assert d["base_model"] == str(REPO / "assets" / "tiny-whisper-zh")
    assert (d["fp16"], d["bf16"], d["use_lora"]) == (False, False, False)


def test_gpu_8gb_profile_uses_common_voice_and_lora_on_breeze_in_fp16():
    data = config.defaults("01_data", "gpu-8gb")
    assert (data["source"], data["hub_dataset"], data["hub_config"]) == (
        "hub", "mozilla-foundation/common_voice_17_0", "zh-TW")
    assert (data["num_train"], data["max_duration_s"], data["run_dir"]) == (None, 30.0, "runs/gpu-8gb")
    tune = config.defaults("02_breeze_finetune", "gpu-8gb")
    assert (tune["base_model"], tune["use_lora"], tune["fp16"], tune["bf16"]) == (config.BREEZE, True, True, False)
    # an effective batch of 2 x 8 = 16, the same as the full profile's 16 x 1
    assert tune["per_device_train_batch_size"] * tune["gradient_accumulation_steps"] == 16


def test_full_profile_fine_tunes_all_of_breeze_in_bf16():
    tune = config.defaults("02_breeze_finetune", "full")
    assert (tune["use_lora"], tune["bf16"], tune["fp16"], tune["learning_rate"]) == (False, True, False, 1e-5)
    assert tune["run_dir"] == "runs/full" and tune["profile"] == "full"


def test_defaults_hold_only_the_notebooks_own_parameters_and_the_common_ones():
    # a profile value for another notebook's parameter (cer_threshold) does not leak into 01_data
    d = config.defaults("01_data", "full")
    assert "cer_threshold" not in d
    assert set(d) == set(config.COMMON) | set(config.NOTEBOOK_PARAMS["01_data"])


def test_one_teacher_everywhere_the_teachers_features_are_needed():
    # notebook 01's clip browser shows the features of the teacher notebook 02 trains: the same name, the same chain
    for profile in config.PROFILES:
        assert config.defaults("01_data", profile)["base_model"] == config.defaults("02_breeze_finetune",
                                                                                    profile)["base_model"]
    given = cli.parse_params([], [["base_model", "/models/breeze"]], "gpu-8gb")
    assert {nb: config.resolve(nb, config.own_params(nb, given)).base_model
            for nb in ("01_data", "02_breeze_finetune")} == {"01_data": "/models/breeze",
                                                             "02_breeze_finetune": "/models/breeze"}


def test_every_profile_names_only_known_parameters():
    known = set(config.COMMON).union(*config.NOTEBOOK_PARAMS.values())
    for name, table in config.PROFILES.items():
        shared = {k for k in table if k not in config.NOTEBOOK_PARAMS}
        assert shared <= known, name
        for notebook in set(table) & set(config.NOTEBOOK_PARAMS):  # a notebook's own sub-table
            assert set(table[notebook]) <= set(config.NOTEBOOK_PARAMS[notebook]), (name, notebook)


def test_a_notebooks_own_profile_table_wins_over_the_shared_names():
    # gpu-8gb: lr 1e-4 for LoRA fine-tuning (shared), batch 8 x 2 for distillation (05's own table)
    assert config.defaults("02_breeze_finetune", "gpu-8gb")["per_device_train_batch_size"] == 2
    assert config.defaults("05_distill", "gpu-8gb")["per_device_train_batch_size"] == 8


def test_defaults_refuse_an_unknown_profile_naming_the_known_ones():
    with pytest.raises(ValueError, match=re.escape("profile must be one of 'tiny', 'gpu-8gb', 'full', got 'huge'")):
        config.defaults("01_data", "huge")


def test_defaults_refuse_an_unknown_notebook():
    with pytest.raises(KeyError, match="unknown notebook '09_nothing'"):
        config.defaults("09_nothing")


# ---------------------------------------------------------------- resolve


def test_resolve_fills_none_from_the_profile():
    p = config.resolve("01_data", {"profile": "gpu-8gb", "source": None, "max_duration_s": None})
    assert (p.source, p.max_duration_s) == ("hub", 30.0)


def test_resolve_keeps_explicit_values_over_the_profile():
    p = config.resolve("01_data", {"profile": "gpu-8gb", "source": "csv", "max_duration_s": 12.0})
    assert (p.source, p.max_duration_s) == ("csv", 12.0)


def test_resolve_fills_parameters_left_out_entirely():
    p = config.resolve("02_breeze_finetune", {"profile": "full"})
    assert (p.max_steps, p.bf16, p.language) == (5000, True, "zh")


def test_resolve_without_a_profile_uses_tiny():
    p = config.resolve("01_data", {})
    assert (p.profile, p.source, p.num_train) == ("tiny", "synthetic", 600)


def test_resolve_keeps_false_and_zero_which_are_not_none():
    p = config.resolve("02_breeze_finetune", {"profile": "gpu-8gb", "fp16": False, "warmup_steps": 0})
    assert (p.fp16, p.warmup_steps) == (False, 0)


def test_resolve_refuses_unknown_names_and_names_them():
    with pytest.raises(ValueError, match=re.escape("unknown parameter(s) max_step, sorce;")):
        config.resolve("01_data", {"sorce": "csv", "max_step": 3})


def test_resolve_refuses_another_notebooks_parameter():
    with pytest.raises(ValueError, match=re.escape("01_data: unknown parameter(s) max_steps;")):
        config.resolve("01_data", {"max_steps": 3})


def test_resolve_lists_the_known_names_when_refusing():
    with pytest.raises(ValueError, match=r"valid names: .*\bnum_train\b"):
        config.resolve("01_data", {"nmu_train": 3})


def test_run_dir_left_at_none_follows_the_profile():
    p = config.resolve("01_data", {"profile": "gpu-8gb", "run_dir": None})
    assert p.run_dir == REPO / "runs" / "gpu-8gb"


def test_run_dir_of_the_tiny_profile_is_runs_tiny_under_the_repo():
    assert config.resolve("01_data", {"profile": "tiny", "run_dir": "runs/tiny"}).run_dir == REPO / "runs" / "tiny"


def test_an_explicit_run_dir_other_than_the_tiny_literal_is_kept():
    p = config.resolve("01_data", {"profile": "gpu-8gb", "run_dir": "runs/my_experiment"})
    assert p.run_dir == REPO / "runs" / "my_experiment"


def test_a_relative_run_dir_is_resolved_against_the_repo_root_not_the_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # notebooks run with the notebooks/ folder as cwd
    p = config.resolve("01_data", {"run_dir": "runs/here"})
    assert p.run_dir == REPO / "runs" / "here" and p.run_dir.is_absolute()


def test_an_absolute_run_dir_is_kept(tmp_path):
    assert config.resolve("01_data", {"run_dir": str(tmp_path)}).run_dir == tmp_path


def test_repo_path_expands_the_home_folder():
    assert config.repo_path("~/x") == Path.home() / "x"


def test_notebook_params_picks_the_notebooks_parameters_out_of_a_namespace():
    namespace = {"profile": "tiny", "source": "csv", "num_train": None, "np": object(), "_": 1}
    p = config.notebook_params("01_data", namespace)
    assert (p.source, p.num_train) == ("csv", 600)


def test_dataloader_workers_is_zero_on_spawn_platforms_and_at_most_two_elsewhere(monkeypatch):
    for system in ("Windows", "Darwin"):
        monkeypatch.setattr(platform, "system", lambda s=system: s)
        assert config.dataloader_workers() == 0
    monkeypatch.setattr(platform, "system", lambda: "Linux")
    assert 1 <= config.dataloader_workers() <= 2


# ---------------------------------------------------------------- types and ranges


@pytest.mark.parametrize("name, value, message", [
    ("max_steps", "abc", "parameter max_steps must be an integer >= 1, got 'abc' (str)"),
    ("max_steps", 0, "parameter max_steps must be an integer >= 1, got 0 (int)"),
    ("max_steps", 2.5, "an integer >= 1, got 2.5 (float)"),
    ("max_steps", True, "an integer >= 1, got True (bool)"),          # a bool is not a count
    ("learning_rate", 0, "a number > 0, got 0 (int)"),
    ("test_fraction", 1.0, "a number > 0 and <= 0.5, got 1.0"),
    ("fp16", "yes", "True or False, got 'yes' (str)"),
    ("source", "youtube", "one of 'synthetic', 'csv', 'hub', got 'youtube'"),
    ("models", ["a"], "a mapping {name: value} (or None), got ['a'] (list)"),
])
def test_check_value_refuses_a_wrong_type_or_range_naming_the_parameter(name, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        config.check_value(name, value)


@pytest.mark.parametrize("name, value", [("max_steps", 1), ("learning_rate", 5e-4), ("learning_rate", 1),
                                         ("fold", None), ("speculative", "AdaLoRA student"), ("train_csv", None),
                                         ("num_train", None), ("max_duration_s", 30)])
def test_check_value_accepts_sound_values(name, value):
    config.check_value(name, value)


def test_resolve_checks_values_before_returning():
    with pytest.raises(ValueError, match="parameter max_steps must be an integer"):
        config.resolve("05_distill", {"max_steps": "abc"})


@pytest.mark.parametrize("overrides, message", [
    (dict(eval_steps=100, save_steps=150), "must be a multiple of eval_steps"),
    (dict(fp16=True, bf16=True), "choose one"),
    (dict(load_in_8bit=True, use_lora=False), "needs use_lora"),
])
def test_contradicting_training_parameters_are_refused_when_resolved(overrides, message):
    with pytest.raises(ValueError, match=message):
        config.resolve("02_breeze_finetune", overrides)


def test_every_profile_gives_every_notebook_valid_values():
    for profile in config.PROFILES:
        for notebook in config.NOTEBOOK_PARAMS:
            config.resolve(notebook, {"profile": profile})


def test_every_parameter_has_a_type_and_every_type_a_parameter():
    assert set(config.SPECS) == config.all_parameters()


def test_parse_params_refuses_an_unknown_name_listing_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) max_stepz; valid names: .*max_steps"):
        cli.parse_params([], [["max_stepz", "3"]])


def test_parse_params_refuses_a_bad_value_before_anything_runs():
    with pytest.raises(ValueError, match="parameter max_steps must be an integer >= 1, got 'abc'"):
        cli.parse_params([], [["max_steps", "abc"]])


def test_parse_params_refuses_an_unknown_profile():
    with pytest.raises(ValueError, match="profile must be one of"):
        cli.parse_params([], [], profile="nope")


# ---------------------------------------------------------------- the notebooks' parameters cells


NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_a_parameters_cell_declares_exactly_the_notebooks_parameters_in_the_profile_table(notebook):
    import papermill

    declared = papermill.inspect_notebook(str(notebook))
    assert set(declared) == set(config.defaults(notebook.stem))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_a_parameters_cell_leaves_every_default_to_the_profile_table(notebook):
    # a literal here would silently beat the profile in notebook runs but not in command-line runs
    import papermill

    declared = papermill.inspect_notebook(str(notebook))
    literals = {name: spec["default"] for name, spec in declared.items() if spec["default"] != "None"}
    assert literals == {"profile": '"tiny"'}


def test_the_notebooks_together_declare_every_parameter_the_command_line_accepts():
    import papermill

    declared = set().union(*(papermill.inspect_notebook(str(nb)) for nb in NOTEBOOKS))
    assert declared == config.all_parameters() == set(config.SPECS)
    assert {nb.stem for nb in NOTEBOOKS} == set(config.NOTEBOOK_PARAMS)


# ---------------------------------------------------------------- params/*.yaml


PARAMS_FILES = sorted((REPO / "params").glob("*.yaml"))


@pytest.mark.parametrize("path", PARAMS_FILES, ids=lambda p: p.name)
def test_a_parameters_file_holds_only_valid_names_that_differ_from_its_profile(path):
    params = cli.parse_params([str(path)], [])  # names and values checked
    profile = params.get("profile", "tiny")
    table = {k: v for nb in config.NOTEBOOK_PARAMS for k, v in config.defaults(nb, profile).items()}
    same = {k: v for k, v in params.items() if k != "profile" and table.get(k) == v}
    assert same == {}, f"{path.name} repeats its profile's defaults: {same}"


def test_parse_params_reads_yaml_boolean_words_as_the_choice_they_spell(tmp_path):
    # YAML 1.1 reads `off` as False; for a choice parameter the word is meant
    assert cli.parse_params([], [["store_teacher_targets", "off"], ["export_quantization", "off"]]) == {
        "store_teacher_targets": "off", "export_quantization": "off"}
    (tmp_path / "p.yaml").write_text("store_teacher_targets: off\n", "utf-8")
    assert cli.parse_params([str(tmp_path / "p.yaml")], []) == {"store_teacher_targets": "off"}
    assert cli.parse_params([], [["confidence_filter", "off"]]) == {"confidence_filter": False}  # a bool stays one
    with pytest.raises(ValueError, match="teacher_targets must be one of"):
        cli.parse_params([], [["teacher_targets", "off"]])  # no such choice: still refused, by name
