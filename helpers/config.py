"""Parameters: one table of defaults per profile, their types and ranges, and how every entry point resolves them.

This module is the single source of defaults. A notebook's parameters cell holds ``None`` for everything
(``profile`` aside): :func:`notebook_params` fills the ``None`` values from the profile's table below, checks
every value against its declared type and range (:data:`SPECS`) and refuses unknown names. ``python -m
helpers.course`` and the phase commands read the same table (:mod:`helpers.cli` parses their options and
parameters files, then calls :func:`resolve`), so a value is checked before any notebook starts, with one line
naming the parameter.

Override chain: the ``tiny`` defaults (:data:`NOTEBOOK_PARAMS`) -> the profile (:data:`PROFILES`) ->
parameters files (``-f params.yaml``) -> ``-p name value`` or a papermill parameter or a value typed in the
parameters cell.
"""
from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parent.parent
TINY_TEACHER = REPO / "assets" / "tiny-whisper-zh"
BREEZE = "MediaTek-Research/Breeze-ASR-25"

COMMON = {"profile": "tiny", "run_dir": "runs/tiny", "seed": 0, "live_plot": True}

# Parameters each notebook owns (besides COMMON). Values are the `tiny` profile's defaults. The tiny learning
# rates were chosen on the valid split (best validation CER after training, seed 0, synthetic corpus):
# teacher 2.5e-4 / 5e-4 / 1e-3 / 2e-3 -> 47.4 / 46.1 / 40.0 / 47.0 %; distillation 1e-3 / 2e-3 -> 42.8 / 45.0 %;
# AdaLoRA on a student at 47.1 %: 2.5e-4 / 5e-4 / 1e-3 / 2e-3 -> 46.8 / 48.3 / 46.8 / 47.0 % (within noise).
# Short window (06, part 2; distilled student at 45.2 % full window, 55.0 % short untuned, margin 0.5 s): 1e-4 ->
# 52.3 % (early-stopped at 240 steps), 3e-4 -> 51.5 % (300 steps); 150 steps keep the course within 15 minutes.
NOTEBOOK_PARAMS: dict[str, dict] = {
    "01_data": dict(source="synthetic", train_csv=None, valid_csv=None, test_csv=None, audio_column="file",
                    text_column="中文意譯", speaker_column=None, hub_dataset=None, hub_config=None,
                    hub_train_split="train", hub_valid_split=None, hub_test_split="test", hub_audio_column="audio",
                    hub_text_column="sentence", unlabelled_dir=None, unlabelled_csv=None,
                    hub_unlabelled_split=None, num_train=600, num_valid=200, num_test=200, num_unlabelled=2400,
                    valid_fraction=0.1, test_fraction=0.1, max_duration_s=5.0, csv_encoding=None, csv_delimiter=None,
                    base_model=str(TINY_TEACHER), min_duration_s=0.1, min_peak_dbfs=-60.0, min_rms_dbfs=-70.0,
                    max_chars_per_s=15.0),
    "02_breeze_finetune": dict(base_model=str(TINY_TEACHER), max_steps=300, per_device_train_batch_size=16,
                               gradient_accumulation_steps=1, learning_rate=1e-3, warmup_steps=30, eval_steps=100,
                               save_steps=100, early_stopping_patience=3, fp16=False, bf16=False,
                               gradient_checkpointing=False, use_lora=False, lora_r=32, load_in_8bit=False,
                               generation_max_length=96, per_device_eval_batch_size=32, resume=False,
                               language="zh", task="transcribe", num_processes=1),
    "03_pseudo_label": dict(teacher=None, cer_threshold=20.0, batch_size=32, cache_encoder_outputs=True,
                            include_unlabelled=True, confidence_filter=True, min_avg_logprob=None,
                            max_no_speech_prob=None, store_teacher_targets="both", targets_k=32,
                            targets_temperature=2.0, num_processes=1),
    "04_student_init": dict(teacher=None, student_source="teacher", decoder_layers=2, encoder_layers=None,
                            batch_size=32),
    "05_distill": dict(teacher=None, student=None, ce_weight=0.8, kl_weight=1.0, temperature=2.0, freeze_encoder=True,
                       use_encoder_cache=True, teacher_targets="live", max_steps=1000, learning_rate=1e-3,
                       warmup_steps=100,
                       per_device_train_batch_size=16, gradient_accumulation_steps=1, eval_steps=200, save_steps=200,
                       early_stopping_patience=3, per_device_eval_batch_size=32, generation_max_length=96,
                       fp16=False, bf16=False, resume=False, num_processes=1),
    "06_adalora": dict(student=None, adapt="decoder", init_r=12, target_r=4, tinit=20, tfinal=30, deltaT=10,
                       lora_alpha=32, lora_dropout=0.05, max_steps=150, learning_rate=2.5e-4, warmup_steps=20,
                       per_device_train_batch_size=16, gradient_accumulation_steps=1, eval_steps=50, save_steps=50,
                       per_device_eval_batch_size=32, generation_max_length=96, fp16=False, bf16=False, resume=False,
                       num_processes=1, short_window=True, window_steps=150, window_learning_rate=3e-4,
                       window_margin_s=0.5, window_floor_s=1.0, window_round_s=0.5, window_train_margin_s=1.5,
                       window_margins_s=[0.5, 1.0], window_cer_tolerance=2.0),
    "07_eval": dict(models=None, test_sets=None, batch_size=32, speed_rounds=3, speculative=True,
                    speculative_limit=30, fold="t2s", num_worst=5, export_quantization="int8"),
}

# What the two GPU profiles share: Breeze-ASR-25 on Common Voice zh-TW, 30 s clips, 448-token transcripts, the
# stricter CER filter, Whisper's own no-speech threshold, and no encoder cache (2.3-3.8 MB per clip at these sizes).
REAL = dict(source="hub", hub_dataset="mozilla-foundation/common_voice_17_0", hub_config="zh-TW",
            hub_valid_split="validation", num_train=None, num_valid=500, num_test=None, max_duration_s=30.0,
            base_model=BREEZE, max_steps=5000, eval_steps=500, save_steps=500, gradient_checkpointing=True,
            generation_max_length=448, cache_encoder_outputs=False, cer_threshold=10.0, max_no_speech_prob=0.6,
            use_encoder_cache=False, store_teacher_targets="off")

# What each profile changes; everything not named here keeps the tiny default above. A name applies to
# every notebook that has it; a notebook's own sub-table (e.g. "05_distill": {...}) wins over that.
PROFILES: dict[str, dict] = {
    "tiny": {},
    "gpu-8gb": dict(
        REAL, run_dir="runs/gpu-8gb", per_device_train_batch_size=2, gradient_accumulation_steps=8,
        learning_rate=1e-4, warmup_steps=100, fp16=True, use_lora=True, per_device_eval_batch_size=8, batch_size=8,
        **{"05_distill": dict(learning_rate=1e-4, per_device_train_batch_size=8, gradient_accumulation_steps=2,
                              fp16=True, generation_max_length=448)}),
    "full": dict(
        REAL, run_dir="runs/full", per_device_train_batch_size=16, gradient_accumulation_steps=1, learning_rate=1e-5,
        warmup_steps=500, bf16=True, per_device_eval_batch_size=32, batch_size=32, speculative_limit=200,
        **{"05_distill": dict(learning_rate=1e-4, warmup_steps=500)}),
}

# The heavy phases that run as commands (python -m helpers.<phase>): phase -> notebook whose parameters it reads.
PHASES = {"data": "01_data", "finetune": "02_breeze_finetune", "pseudo": "03_pseudo_label",
          "student": "04_student_init", "distill": "05_distill", "adalora": "06_adalora",
          "audio_context": "06_adalora", "evaluate": "07_eval"}


# ---------------------------------------------------------------------------------------------
# Types and ranges
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Spec:
    """What values a parameter takes: ``kind`` (int, float, bool, str, choice, dict, bool_or_str, floats: a list of
    numbers, each within the range), an
    inclusive ``low``/``high`` (``open_low``: strictly above ``low``), ``choices``, and whether ``None`` is a
    valid final value (``optional``: e.g. "no test CSV", "all rows")."""
    kind: str
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    choices: tuple = ()
    optional: bool = False

    def describe(self) -> str:
        if self.kind == "choice":
            return "one of " + ", ".join(repr(c) for c in self.choices)
        words = {"int": "an integer", "float": "a number", "bool": "True or False", "str": "a text (path or name)",
                 "dict": "a mapping {name: value}", "bool_or_str": "True, False or a model name",
                 "floats": "a list of numbers, each"}[self.kind]
        if self.low is not None:
            words += f" {'>' if self.open_low else '>='} {self.low:g}"
        if self.high is not None:
            words += f"{' and' if self.low is not None else ''} <= {self.high:g}"
        return words + (" (or None)" if self.optional else "")

    def accepts(self, value) -> bool:
        if value is None:
            return self.optional or (self.kind == "choice" and None in self.choices)
        if self.kind == "choice":
            return value in self.choices
        if self.kind == "bool_or_str":
            return isinstance(value, (bool, str))
        if self.kind == "floats":
            return isinstance(value, (list, tuple)) and all(Spec("float", self.low, self.high, self.open_low)
                                                            .accepts(v) for v in value)
        types = {"int": int, "float": (int, float), "bool": bool, "str": (str, Path), "dict": dict}[self.kind]
        if not isinstance(value, types) or (self.kind in ("int", "float") and isinstance(value, bool)):
            return False
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return False
        return self.high is None or value <= self.high


def _int(low=None, optional=False):
    return Spec("int", low=low, optional=optional)


def _num(low=None, high=None, open_low=False):
    return Spec("float", low=low, high=high, open_low=open_low)


BOOL, TEXT, MAYBE_TEXT = Spec("bool"), Spec("str"), Spec("str", optional=True)
POSITIVE, COUNT = _int(1), _int(0)

SPECS: dict[str, Spec] = {
    "profile": Spec("choice", choices=tuple(PROFILES)), "run_dir": TEXT, "seed": COUNT, "live_plot": BOOL,
    # 01
    "source": Spec("choice", choices=("synthetic", "csv", "hub")), "train_csv": MAYBE_TEXT, "valid_csv": MAYBE_TEXT,
    "test_csv": MAYBE_TEXT, "audio_column": TEXT, "text_column": TEXT, "speaker_column": MAYBE_TEXT,
    "hub_dataset": MAYBE_TEXT, "hub_config": MAYBE_TEXT, "hub_train_split": TEXT, "hub_valid_split": MAYBE_TEXT,
    "hub_test_split": MAYBE_TEXT, "hub_audio_column": TEXT, "hub_text_column": TEXT, "unlabelled_dir": MAYBE_TEXT,
    "unlabelled_csv": MAYBE_TEXT, "hub_unlabelled_split": MAYBE_TEXT,
    "num_train": _int(1, optional=True), "num_valid": _int(1, optional=True), "num_test": _int(1, optional=True),
    "num_unlabelled": _int(0, optional=True), "valid_fraction": Spec("float", low=0, high=0.5, open_low=True),
    "test_fraction": Spec("float", low=0, high=0.5, open_low=True),
    "max_duration_s": Spec("float", low=0, open_low=True, optional=True), "csv_encoding": MAYBE_TEXT,
    "csv_delimiter": Spec("choice", choices=(None, ",", ";", "\t", "tab", "|")), "min_duration_s": _num(0),
    "min_peak_dbfs": _num(high=0), "min_rms_dbfs": _num(high=0),
    "max_chars_per_s": Spec("float", low=0, open_low=True, optional=True),
    # 02, 05, 06: training
    "base_model": TEXT, "max_steps": POSITIVE, "per_device_train_batch_size": POSITIVE,
    "gradient_accumulation_steps": POSITIVE, "learning_rate": _num(0, open_low=True), "warmup_steps": COUNT,
    "eval_steps": POSITIVE, "save_steps": POSITIVE, "early_stopping_patience": POSITIVE, "fp16": BOOL, "bf16": BOOL,
    "gradient_checkpointing": BOOL, "use_lora": BOOL, "lora_r": POSITIVE, "load_in_8bit": BOOL,
    "generation_max_length": POSITIVE, "per_device_eval_batch_size": POSITIVE, "resume": BOOL, "language": TEXT,
    "task": Spec("choice", choices=("transcribe", "translate")), "num_processes": POSITIVE,
    # 03
    "teacher": MAYBE_TEXT, "cer_threshold": _num(0), "batch_size": POSITIVE, "cache_encoder_outputs": BOOL,
    "include_unlabelled": BOOL, "confidence_filter": BOOL, "min_avg_logprob": Spec("float", high=0, optional=True),
    "max_no_speech_prob": Spec("float", low=0, high=1, optional=True),
    "store_teacher_targets": Spec("choice", choices=("off", "topk", "sampled", "both")), "targets_k": POSITIVE,
    "targets_temperature": _num(0, open_low=True),
    # 04
    "student_source": TEXT, "decoder_layers": POSITIVE, "encoder_layers": _int(1, optional=True),
    # 05
    "student": MAYBE_TEXT, "ce_weight": _num(0), "kl_weight": _num(0), "temperature": _num(0, open_low=True),
    "freeze_encoder": BOOL, "use_encoder_cache": BOOL,
    "teacher_targets": Spec("choice", choices=("live", "topk", "sampled")),
    # 06
    "adapt": Spec("choice", choices=("decoder", "encoder", "all")), "init_r": POSITIVE, "target_r": POSITIVE,
    "tinit": COUNT, "tfinal": COUNT, "deltaT": POSITIVE, "lora_alpha": _num(0, open_low=True),
    "lora_dropout": _num(0, 0.9), "short_window": BOOL, "window_steps": POSITIVE,
    "window_learning_rate": _num(0, open_low=True), "window_margin_s": _num(0), "window_floor_s": _num(0),
    "window_round_s": _num(0, open_low=True), "window_train_margin_s": _num(0),
    "window_margins_s": Spec("floats", low=0, optional=True), "window_cer_tolerance": _num(0),
    # 07
    "models": Spec("dict", optional=True), "test_sets": Spec("dict", optional=True), "speed_rounds": POSITIVE,
    "speculative": Spec("bool_or_str"), "speculative_limit": POSITIVE,
    "fold": Spec("choice", choices=("t2s", "s2t", None)), "num_worst": COUNT,
    "export_quantization": Spec("choice", choices=("int8", "int8_float32", "float16", "float32", "off")),
}


def all_parameters() -> set[str]:
    """Every parameter name some notebook declares."""
    return set(COMMON).union(*NOTEBOOK_PARAMS.values())


def check_value(name: str, value) -> None:
    """Raise ``ValueError`` naming ``name`` when ``value`` is not of its declared type and range."""
    if name not in SPECS:
        raise ValueError(f"unknown parameter {name!r}; known parameters: {', '.join(sorted(all_parameters()))}")
    spec = SPECS[name]
    if not spec.accepts(value):
        raise ValueError(f"parameter {name} must be {spec.describe()}, got {value!r} ({type(value).__name__})")


def check_names(names, allowed, where: str) -> None:
    """Raise ``ValueError`` listing the valid names when ``names`` holds one outside ``allowed``."""
    unknown = sorted(set(names) - set(allowed))
    if unknown:
        raise ValueError(f"{where}: unknown parameter(s) {', '.join(unknown)}; valid names: "
                         f"{', '.join(sorted(allowed))}")


def _cross_checks(notebook: str, v: dict) -> list[str]:
    """Values that are each valid but contradict each other."""
    problems = []
    if "save_steps" in v and v["save_steps"] % v["eval_steps"]:
        problems.append(f"save_steps ({v['save_steps']}) must be a multiple of eval_steps ({v['eval_steps']}): the "
                        "best model is chosen at evaluations, and only saved checkpoints can be restored")
    if v.get("fp16") and v.get("bf16"):
        problems.append("fp16 and bf16 are both True: choose one")
    if v.get("load_in_8bit") and not v.get("use_lora"):
        problems.append("load_in_8bit needs use_lora = True (an 8-bit base cannot be trained itself)")
    if notebook == "06_adalora":
        problems += adalora_schedule_problems(v["init_r"], v["target_r"], v["tinit"], v["tfinal"], v["deltaT"],
                                              v["max_steps"])
    return problems


def adalora_schedule_problems(init_r: int, target_r: int, tinit: int, tfinal: int, deltaT: int,
                              total_step: int) -> list[str]:
    """Why an AdaLoRA rank schedule cannot work (empty list: it can)."""
    problems = []
    if target_r > init_r:
        problems.append(f"target_r ({target_r}) must not exceed init_r ({init_r}): AdaLoRA only removes rank")
    if tinit + tfinal >= total_step:
        problems.append(f"tinit + tfinal ({tinit} + {tfinal}) must be below the optimizer steps ({total_step}), "
                        "leaving steps in which ranks are reallocated")
    elif deltaT >= total_step - tinit - tfinal:
        problems.append(f"deltaT ({deltaT}) is not shorter than the reallocation phase "
                        f"({total_step - tinit - tfinal} steps): ranks would never be reallocated")
    return problems


# ---------------------------------------------------------------------------------------------
# Resolution
# ---------------------------------------------------------------------------------------------
def defaults(notebook: str, profile: str = "tiny") -> dict:
    """Every parameter of ``notebook`` with the value ``profile`` gives it."""
    if notebook not in NOTEBOOK_PARAMS:
        raise KeyError(f"unknown notebook {notebook!r}; known: {sorted(NOTEBOOK_PARAMS)}")
    check_value("profile", profile)
    base = {**COMMON, **NOTEBOOK_PARAMS[notebook]}
    shared = {k: v for k, v in PROFILES[profile].items() if k in base}  # names several notebooks share
    return {**base, **shared, **PROFILES[profile].get(notebook, {}), "profile": profile}


def resolve(notebook: str, params: dict) -> SimpleNamespace:
    """The parameters of ``notebook`` as attributes: ``params`` (``None`` = the profile's default) over the
    profile's table, every value checked against :data:`SPECS` and against the others. ``run_dir`` becomes an
    absolute ``Path``. Raises ``ValueError`` naming the parameter at fault."""
    check_names(params, defaults(notebook), notebook)
    profile = params.get("profile") or "tiny"
    table = defaults(notebook, profile)
    values = {k: (params[k] if params.get(k) is not None else v) for k, v in table.items()}
    for name, value in values.items():
        check_value(name, value)
    problems = _cross_checks(notebook, values)
    if problems:
        raise ValueError(f"{notebook} parameters:\n  - " + "\n  - ".join(problems))
    values["run_dir"] = repo_path(values["run_dir"])
    return SimpleNamespace(**values)


def notebook_params(notebook: str, namespace: dict) -> SimpleNamespace:
    """:func:`resolve` for a notebook: picks the notebook's parameters out of its global ``namespace``."""
    return resolve(notebook, {k: namespace[k] for k in defaults(notebook) if k in namespace})


def own_params(notebook: str, params: dict) -> dict:
    """The entries of ``params`` that ``notebook`` declares (a parameters file may serve the whole course)."""
    return {k: v for k, v in params.items() if k in defaults(notebook)}


def repo_path(path: str | Path) -> Path:
    """Relative paths in parameters are relative to the repository root, wherever the kernel runs."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else REPO / path


def dataloader_workers() -> int:
    """0 on Windows and macOS (spawn start method: workers re-import the notebook), else up to 2."""
    if platform.system() in ("Windows", "Darwin"):
        return 0
    return min(2, os.cpu_count() or 1)
