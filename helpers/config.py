"""Profiles: one table of coherent defaults per notebook parameter, and how notebooks resolve them.

A notebook's parameters cell holds plain literals; ``None`` means "the profile's default". The cell
after it calls :func:`resolve`, which fills the ``None`` values from :data:`PROFILES` and refuses
unknown names, so a papermill run with ``-p profile gpu-8gb`` changes every default at once while
any parameter given explicitly still wins.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parent.parent
TINY_TEACHER = REPO / "assets" / "tiny-whisper-zh"
BREEZE = "MediaTek-Research/Breeze-ASR-25"

COMMON = {"profile": "tiny", "run_dir": "runs/tiny", "seed": 0, "live_plot": True}

# Parameters each notebook owns (besides COMMON). Values are the `tiny` profile's defaults.
NOTEBOOK_PARAMS: dict[str, dict] = {
    "01_data": dict(source="synthetic", train_csv=None, test_csv=None, audio_column="file", text_column="中文意譯",
                    hub_dataset=None, hub_config=None, hub_train_split="train", hub_test_split="test",
                    hub_audio_column="audio", hub_text_column="sentence", num_train=600, num_test=100,
                    num_unlabelled=2400, test_fraction=0.1, max_duration_s=5.0),
    "02_breeze_finetune": dict(base_model=str(TINY_TEACHER), max_steps=300, per_device_train_batch_size=16,
                               gradient_accumulation_steps=1, learning_rate=5e-4, warmup_steps=30, eval_steps=100,
                               save_steps=100, early_stopping_patience=3, fp16=False, bf16=False,
                               gradient_checkpointing=False, use_lora=False, lora_r=32, load_in_8bit=False,
                               generation_max_length=96, per_device_eval_batch_size=32, resume=False,
                               language="zh", task="transcribe", num_processes=1),
    "03_pseudo_label": dict(teacher=None, cer_threshold=20.0, batch_size=32, cache_encoder_outputs=True,
                            include_unlabelled=True, num_processes=1),
    "04_student_init": dict(teacher=None, student_source="teacher", decoder_layers=2, encoder_layers=None,
                            batch_size=32),
    "05_distill": dict(teacher=None, student=None, ce_weight=0.8, kl_weight=1.0, temperature=2.0, freeze_encoder=True,
                       use_encoder_cache=True, max_steps=1000, learning_rate=2e-3, warmup_steps=100,
                       per_device_train_batch_size=16, gradient_accumulation_steps=1, eval_steps=200, save_steps=200,
                       early_stopping_patience=3, per_device_eval_batch_size=32, generation_max_length=96,
                       fp16=False, bf16=False, resume=False, num_processes=1),
    "06_adalora": dict(student=None, adapt="decoder", init_r=12, target_r=4, tinit=20, tfinal=30, deltaT=10,
                       lora_alpha=32, lora_dropout=0.05, max_steps=150, learning_rate=5e-4, warmup_steps=20,
                       per_device_train_batch_size=16, gradient_accumulation_steps=1, eval_steps=50, save_steps=50,
                       per_device_eval_batch_size=32, generation_max_length=96, fp16=False, bf16=False, resume=False,
                       num_processes=1),
    "07_eval": dict(models=None, test_sets=None, batch_size=32, speed_rounds=2, speculative=True,
                    speculative_limit=50, fold="t2s", num_worst=5),
}

# What each profile changes; everything not named here keeps the tiny default above. A name applies to
# every notebook that has it; a notebook's own sub-table (e.g. "05_distill": {...}) wins over that.
PROFILES: dict[str, dict] = {
    "tiny": {},
    "gpu-8gb": dict(
        run_dir="runs/gpu-8gb", source="hub", hub_dataset="mozilla-foundation/common_voice_17_0", hub_config="zh-TW",
        num_train=None, num_test=None, max_duration_s=30.0, base_model=BREEZE, max_steps=5000,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=8, learning_rate=1e-4, warmup_steps=100, eval_steps=500, save_steps=500,
        fp16=True, gradient_checkpointing=True, use_lora=True, generation_max_length=448,
        per_device_eval_batch_size=8, batch_size=8, cache_encoder_outputs=False, cer_threshold=10.0,
        use_encoder_cache=False,
        **{"05_distill": dict(learning_rate=1e-4, per_device_train_batch_size=8, gradient_accumulation_steps=2,
                              fp16=True, generation_max_length=448)}),
    "full": dict(
        run_dir="runs/full", source="hub", hub_dataset="mozilla-foundation/common_voice_17_0", hub_config="zh-TW",
        num_train=None, num_test=None, max_duration_s=30.0, base_model=BREEZE, max_steps=5000,
        per_device_train_batch_size=16,
        gradient_accumulation_steps=1, learning_rate=1e-5, warmup_steps=500, eval_steps=500, save_steps=500,
        bf16=True, gradient_checkpointing=True, generation_max_length=448, per_device_eval_batch_size=32,
        batch_size=32, cache_encoder_outputs=False, cer_threshold=10.0, use_encoder_cache=False,
        speculative_limit=200,
        **{"05_distill": dict(learning_rate=1e-4, warmup_steps=500)}),
}


def defaults(notebook: str, profile: str = "tiny") -> dict:
    """Every parameter of ``notebook`` with the value ``profile`` gives it."""
    if notebook not in NOTEBOOK_PARAMS:
        raise KeyError(f"unknown notebook {notebook!r}; known: {sorted(NOTEBOOK_PARAMS)}")
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {sorted(PROFILES)}, got {profile!r}")
    base = {**COMMON, **NOTEBOOK_PARAMS[notebook]}
    shared = {k: v for k, v in PROFILES[profile].items() if k in base}  # names several notebooks share
    return {**base, **shared, **PROFILES[profile].get(notebook, {}), "profile": profile}


def resolve(notebook: str, params: dict) -> SimpleNamespace:
    """Fill the ``None`` values of a notebook's parameters from its profile; returns them as attributes.

    ``params`` is the notebook's parameter cell as a dict (``profile`` included). A name the notebook
    does not know is an error, as is a ``run_dir`` left at another profile's default.
    """
    profile = params.get("profile") or "tiny"
    table = defaults(notebook, profile)
    unknown = sorted(set(params) - set(table))
    if unknown:
        raise ValueError(f"{notebook}: unknown parameter(s) {unknown}; known: {sorted(table)}")
    values = {k: (params[k] if params.get(k) is not None else v) for k, v in table.items()}
    if params.get("run_dir") == COMMON["run_dir"] and profile != "tiny":
        values["run_dir"] = table["run_dir"]  # the notebook's literal is the tiny default: follow the profile
    values["run_dir"] = repo_path(values["run_dir"])
    return SimpleNamespace(**values)


def notebook_params(notebook: str, namespace: dict) -> SimpleNamespace:
    """:func:`resolve` for a notebook: picks the notebook's parameters out of its global ``namespace``."""
    return resolve(notebook, {k: namespace[k] for k in defaults(notebook) if k in namespace})


def repo_path(path: str | Path) -> Path:
    """Relative paths in parameters are relative to the repository root, wherever the kernel runs."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else REPO / path


def dataloader_workers() -> int:
    """0 on Windows and macOS (spawn start method: workers re-import the notebook), else up to 2."""
    if platform.system() in ("Windows", "Darwin"):
        return 0
    return min(2, os.cpu_count() or 1)
