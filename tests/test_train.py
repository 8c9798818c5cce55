"""Fine-tuning: the history callback, a few real training steps, and resuming."""
import copy
import json
from types import SimpleNamespace

import pytest
import torch
from transformers import TrainerCallback

from helpers import config
from helpers.figures import memory
from helpers.speech import collate
from helpers.whisper import train
from helpers.whisper.models import LoadedWhisper
from tests.fixtures import build_tiny_whisper


def params(**overrides):
    base = config.defaults("02_breeze_finetune", "tiny")
    base.update(per_device_train_batch_size=2, per_device_eval_batch_size=4, max_steps=4, eval_steps=2, save_steps=2,
                warmup_steps=0, generation_max_length=12, learning_rate=1e-3)
    base.update(overrides)
    return SimpleNamespace(**base)


def fresh_model():
    model, processor = build_tiny_whisper()
    return LoadedWhisper(copy.deepcopy(model), processor, "tiny-test")


def test_live_history_writes_every_log_to_history_json_without_drawing_when_not_live(tmp_path):
    history = train.LiveHistory(tmp_path / "history.json", live=False)
    state = SimpleNamespace(global_step=3)
    history.on_log(None, state, None, logs={"loss": 1.5, "learning_rate": 1e-3, "note": "text is not a number"})
    written = json.loads((tmp_path / "history.json").read_text())
    assert written[0]["step"] == 3 and written[0]["loss"] == 1.5
    assert "note" not in written[0]
    assert "rss_mb" in written[0] or "gpu_peak_mb" in written[0]  # memory is recorded with every log
    assert history._handle is None  # nothing was displayed


def test_last_checkpoint_is_the_highest_step_not_the_last_in_name_order(tmp_path):
    for step in (2, 10, 4):
        (tmp_path / f"checkpoint-{step}").mkdir()
    assert train.last_checkpoint(tmp_path).endswith("checkpoint-10")
    assert train.last_checkpoint(tmp_path / "checkpoint-2") is None


def test_memory_budget_of_full_fine_tuning_is_16_bytes_per_parameter():
    table = memory.memory_budget(n_params=1_000_000_000, n_lora=0)
    assert table.loc["full fine-tuning, AdamW, mixed precision", "total (GB)"] == 16.0
    assert table.loc["LoRA on a frozen fp16 base", "total (GB)"] == 2.0  # fp16 weights only


def _datasets(synthetic_run, processor):
    _, result = synthetic_run
    return collate.to_dataset(result["train"], processor), collate.to_dataset(result["test"], processor)


def test_a_few_training_steps_change_the_weights_and_evaluate_cer(tmp_path, synthetic_run):
    loaded = fresh_model()
    before = loaded.model.model.decoder.layers[0].fc1.weight.detach().clone()
    train_ds, test_ds = _datasets(synthetic_run, loaded.processor)
    trainer, records = train.finetune(params(), loaded, train_ds, test_ds, tmp_path, live=False)
    assert trainer.state.global_step == 4
    assert any("eval_cer" in r for r in records)
    assert not torch.equal(before, trainer.model.model.decoder.layers[0].fc1.weight.detach())
    assert (tmp_path / "runs").is_dir()  # TensorBoard logs


class _Interrupt(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if state.global_step == 2:
            raise KeyboardInterrupt


def test_resume_continues_from_the_last_checkpoint_and_ends_at_the_same_step(tmp_path, synthetic_run):
    loaded = fresh_model()
    train_ds, test_ds = _datasets(synthetic_run, loaded.processor)
    trainer = train.build_trainer(params(), loaded, train_ds, test_ds, tmp_path, [_Interrupt()])
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert train.last_checkpoint(tmp_path).endswith("checkpoint-2")

    resumed, records = train.finetune(params(resume=True), fresh_model(), train_ds, test_ds, tmp_path, live=False)
    assert resumed.state.global_step == 4
    assert records[-1]["step"] == 4


def test_lora_trains_only_the_adapters_and_saves_a_merged_plain_whisper(tmp_path, synthetic_run):
    from helpers.whisper.models import load_whisper

    p = params(use_lora=True, lora_r=4, max_steps=2)
    loaded = train.prepare_model(fresh_model(), p)
    counts = loaded.model.get_nb_trainable_parameters()
    assert 0 < counts[0] < counts[1] / 5
    train_ds, test_ds = _datasets(synthetic_run, loaded.processor)
    train.finetune(p, loaded, train_ds, test_ds, tmp_path, live=False)
    train.save_finetuned(loaded, p, tmp_path / "out", {"cer_after": 1.0})
    assert (tmp_path / "out" / "adapter" / "adapter_config.json").exists()
    reloaded = load_whisper(tmp_path / "out")
    assert not any("lora" in name for name, _ in reloaded.model.named_parameters())
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["cer_after"] == 1.0
