"""Whisper checkpoints: load any (hub id or local folder), and build the tiny offline one.

A model given by path works exactly like one given by hub id: the feature extractor, tokenizer and
generation config always come from the checkpoint itself, never from a profile. Only safetensors
weights are read and no remote code is ever run.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AddedToken,
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizer,
)

from ..speech.audio import SAMPLING_RATE

# Whisper's special tokens in Whisper's order, cut down to the two languages the workbook needs.
# Whisper's code relies on this order: language id = start-of-transcript id + 1 + index in its
# language list (en first, zh second), no-speech = no-timestamps - 1, and ids above no-timestamps
# are timestamps, so no-timestamps must be the last id of the vocabulary.
WHISPER_SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|zh|>", "<|translate|>",
                    "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>"]


class _WhisperOwnGenerateNote(logging.Filter):
    """Drops one log record: transformers' Whisper ``generate`` itself passes its generation config together with
    ``suppress_tokens`` / ``begin_suppress_tokens`` to the generic ``generate``, which then notes (once per process)
    that passing both is deprecated. The call is inside transformers (5.x), so no caller can avoid it; any other
    record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("Passing `generation_config` together with generation-related" in message
                    and "suppress_tokens" in message)


logging.getLogger("transformers.generation.utils").addFilter(_WhisperOwnGenerateNote())


@contextmanager
def no_transformers_bars():
    """Silence transformers' own loading and saving bars while the block runs (they would land in notebook
    outputs as widgets)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


@dataclass
class LoadedWhisper:
    """A Whisper model with what belongs to it: processor (features + tokenizer) and generation config."""
    model: WhisperForConditionalGeneration
    processor: WhisperProcessor
    source: str

    @property
    def tokenizer(self) -> WhisperTokenizer:
        return self.processor.tokenizer

    @property
    def feature_extractor(self) -> WhisperFeatureExtractor:
        return self.processor.feature_extractor


@contextmanager
def quiet_generation():
    """Silence transformers' per-call notes (assisted generation repeats one for every drafted chunk)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


@contextmanager
def hub_hint(source: str):
    """Turn the hub's "cannot load" error for ``source`` (a hub id, not a local folder) into one that says what to
    do on a machine without hub access: download the model once and pass its folder."""
    try:
        yield
    except OSError as err:
        if Path(source).exists():
            raise
        raise OSError(f"cannot load {source!r} from the model hub ({str(err).splitlines()[0][:160]}). Without hub "
                      f"access, download it once where there is access (huggingface-cli download {source} "
                      f"--local-dir DIR), copy DIR here and pass the folder: -p base_model DIR (or base_model = DIR "
                      "in a parameters file); every notebook then uses it.") from err


def load_feature_extractor(name_or_path: str | Path):
    """The ``WhisperFeatureExtractor`` of a model (hub id or folder), with :func:`hub_hint`'s message offline."""
    with hub_hint(str(name_or_path)), no_transformers_bars():
        return WhisperFeatureExtractor.from_pretrained(str(name_or_path))


def load_whisper(name_or_path: str | Path, *, language: str = "zh", task: str = "transcribe",
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                 load_in_8bit: bool = False) -> LoadedWhisper:
    """Load a Whisper checkpoint (hub id such as ``MediaTek-Research/Breeze-ASR-25`` or a local folder).

    Sets the language/task prompt on the tokenizer and the generation config, so that labels and
    ``generate`` agree. Raises ``ValueError`` with what to do when the path holds no Whisper model.
    """
    source = str(name_or_path)
    path = Path(source)
    if path.exists():
        config_file = path / "config.json"
        if not config_file.exists():
            raise ValueError(f"{path} holds no config.json: it is not a saved model. Give the folder that "
                             "save_pretrained wrote, or a hub id such as 'MediaTek-Research/Breeze-ASR-25'.")
        model_type = json.loads(config_file.read_text("utf-8")).get("model_type")
        if model_type != "whisper":
            raise ValueError(f"{path} holds a {model_type!r} model, not a Whisper model; this workbook "
                             "distils Whisper-architecture recognisers (Breeze-ASR-25, whisper-*).")
    elif path.is_absolute() or source.startswith((".", "~")) or source.count("/") > 1:
        raise FileNotFoundError(f"model folder {source} does not exist (check run_dir and the earlier notebooks)")
    with hub_hint(source):
        processor = WhisperProcessor.from_pretrained(source)
    extra = {}
    if load_in_8bit:  # LoRA on an 8-bit base: bitsandbytes and a CUDA GPU are needed
        try:
            import bitsandbytes  # noqa: F401
            from transformers import BitsAndBytesConfig
        except ImportError as err:
            raise ImportError("load_in_8bit needs bitsandbytes: pip install bitsandbytes (CUDA GPUs only)") from err
        if not torch.cuda.is_available():
            raise RuntimeError("load_in_8bit needs a CUDA GPU; set load_in_8bit = False on this machine")
        extra = {"quantization_config": BitsAndBytesConfig(load_in_8bit=True), "device_map": {"": 0}}
    with no_transformers_bars():
        model = WhisperForConditionalGeneration.from_pretrained(source, dtype=dtype, use_safetensors=True, **extra)
    if model.config.model_type != "whisper":
        raise ValueError(f"{source} is a {model.config.model_type!r} model, not Whisper")
    set_prompt(model, processor, language=language, task=task)
    return LoadedWhisper(model if load_in_8bit else model.to(device), processor, source)


def set_prompt(model, processor, *, language: str = "zh", task: str = "transcribe") -> None:
    """Make labels and generation use the same ``<|lang|><|task|><|notimestamps|>`` prefix."""
    processor.tokenizer.set_prefix_tokens(language=language, task=task, predict_timestamps=False)
    gen = model.generation_config
    gen.language, gen.task = language, task
    gen.forced_decoder_ids = None
    model.config.forced_decoder_ids = None


def save_whisper(model, processor, out_dir: str | Path, *, dtype: torch.dtype | None = None) -> Path:
    """Save model (safetensors), processor and generation config in the standard layout."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if dtype is not None and dtype != model.dtype:
        model = copy.deepcopy(model).to(dtype)  # the caller's model keeps its dtype
    with no_transformers_bars():
        model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    # transformers 5 writes the processor as processor_config.json only; CTranslate2's converter and faster-whisper
    # read the feature settings from preprocessor_config.json
    processor.feature_extractor.save_pretrained(out_dir)
    return out_dir


def same_encoder(teacher_model, student_model) -> bool:
    """True when the two encoders have identical parameters (a student copied from this teacher)."""
    t, s = teacher_model.model.encoder.state_dict(), student_model.model.encoder.state_dict()
    return t.keys() == s.keys() and all(t[k].shape == s[k].shape and torch.equal(t[k], s[k].to(t[k].dtype)) for k in t)


def encoder_fingerprint(model) -> str:
    """SHA-256 over the encoder's parameter names, shapes and fp16 values (16 hex digits): which teacher made
    a cache of encoder outputs."""
    digest = hashlib.sha256()
    for name, param in model.model.encoder.state_dict().items():
        digest.update(f"{name}{tuple(param.shape)}".encode())
        digest.update(param.detach().to("cpu", torch.float16).numpy().tobytes())
    return digest.hexdigest()[:16]


def check_compatible(teacher_tokenizer, student_tokenizer) -> None:
    """Raise ``ValueError`` unless both tokenizers have the same vocabulary (token -> id, all of it)."""
    a, b = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    differ = [t for t in a.keys() | b.keys() if a.get(t) != b.get(t)]
    if differ:
        raise ValueError(
            f"the student's tokenizer differs from the teacher's in {len(differ)} tokens (teacher {len(a)}, "
            f"student {len(b)} tokens): distillation compares both models' predictions token by token, so it "
            "needs a shared tokenizer. Use a student checkpoint with the teacher's tokenizer, or "
            "student_source='teacher' to cut the student from the teacher itself.")


def decoder_only(model):
    """The decoder (and output projection) of a Whisper ``model`` as a ``WhisperForCausalLM`` in eval mode, on
    the model's device and dtype: it reads encoder outputs that another model computed (an assistant for
    speculative decoding). ``model`` is left as it is."""
    from transformers import WhisperForCausalLM

    decoder = WhisperForCausalLM(copy.deepcopy(model.config))  # its __init__ edits the config
    decoder.load_state_dict({k: v for k, v in model.state_dict().items()
                             if k.startswith("model.decoder.") or k == "proj_out.weight"}, strict=True)
    decoder.generation_config = copy.deepcopy(model.generation_config)  # generate() edits the assistant's
    param = next(model.parameters())
    return decoder.to(param.device, param.dtype).eval()


def count_parameters(model) -> dict[str, float]:
    """Parameter counts in millions (1e6): total, encoder, decoder (without embeddings), embeddings, trainable."""
    base = model.model if hasattr(model, "model") else model
    enc = sum(p.numel() for p in base.encoder.parameters())
    emb = sum(p.numel() for p in base.decoder.embed_tokens.parameters()) + sum(
        p.numel() for p in base.decoder.embed_positions.parameters())
    dec = sum(p.numel() for p in base.decoder.parameters()) - emb
    total = sum(p.numel() for p in model.parameters())  # the output projection is tied: counted once
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    counts = dict(total=total, encoder=enc, decoder=dec, embeddings=emb, trainable=trainable)
    return {k: v / 1e6 for k, v in counts.items()}


# ---------------------------------------------------------------------------------------------
# The tiny offline teacher: its tokenizer, feature extractor, config and generation config
# ---------------------------------------------------------------------------------------------
def build_tokenizer(texts, vocab_size: int = 1000) -> WhisperTokenizer:
    """Train a byte-level BPE of ``vocab_size`` tokens on ``texts`` and put Whisper's special tokens
    on top (ids vocab_size .. vocab_size + 9), so it saves and loads as a ``WhisperTokenizer``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    bpe.train_from_iterator(texts, trainer)
    spec = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in spec["merges"]]
    tokenizer = WhisperTokenizer(vocab=spec["vocab"], merges=merges)
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in WHISPER_SPECIALS], special_tokens=True)
    ids = tokenizer.convert_tokens_to_ids(WHISPER_SPECIALS)
    assert ids == list(range(len(spec["vocab"]), len(spec["vocab"]) + len(WHISPER_SPECIALS))), ids
    return tokenizer


def tiny_feature_extractor(window_s: int = 5, num_mel_bins: int = 80) -> WhisperFeatureExtractor:
    """Whisper's log-mel features over a ``window_s``-second window (Whisper itself uses 30 s)."""
    return WhisperFeatureExtractor(feature_size=num_mel_bins, sampling_rate=SAMPLING_RATE, chunk_length=window_s)


def tiny_config(tokenizer: WhisperTokenizer, *, window_s: int = 5, d_model: int = 192, layers: int = 4,
                heads: int = 4, ffn: int = 768, num_mel_bins: int = 80,
                max_target_positions: int = 96) -> WhisperConfig:
    """A Whisper-architecture config a CPU can train: 4+4 layers of width 192 is ~3.7M parameters."""
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    return WhisperConfig(
        vocab_size=len(tokenizer), num_mel_bins=num_mel_bins, d_model=d_model,
        encoder_layers=layers, decoder_layers=layers, encoder_attention_heads=heads, decoder_attention_heads=heads,
        encoder_ffn_dim=ffn, decoder_ffn_dim=ffn, max_source_positions=window_s * 50,
        max_target_positions=max_target_positions, pad_token_id=eot, bos_token_id=eot, eos_token_id=eot,
        decoder_start_token_id=tokenizer.convert_tokens_to_ids("<|startoftranscript|>"),
        suppress_tokens=[], begin_suppress_tokens=[], dropout=0.0)


def whisper_generation_config(tokenizer: WhisperTokenizer, max_length: int = 96) -> GenerationConfig:
    """The generation config Whisper's ``generate`` needs, with ids read from ``tokenizer``.

    Whisper's shipped defaults point into the 51865-token vocabulary, so a small vocabulary needs its own.
    """
    tid = tokenizer.convert_tokens_to_ids
    eot = tid("<|endoftext|>")
    return GenerationConfig(
        decoder_start_token_id=tid("<|startoftranscript|>"), bos_token_id=eot, eos_token_id=eot, pad_token_id=eot,
        lang_to_id={"<|en|>": tid("<|en|>"), "<|zh|>": tid("<|zh|>")},
        task_to_id={"translate": tid("<|translate|>"), "transcribe": tid("<|transcribe|>")},
        no_timestamps_token_id=tid("<|notimestamps|>"), prev_sot_token_id=tid("<|startofprev|>"),
        is_multilingual=True, suppress_tokens=[], begin_suppress_tokens=[], max_length=max_length,
        max_initial_timestamp_index=50)


def new_tiny_whisper(tokenizer: WhisperTokenizer, *, window_s: int = 5, seed: int = 0, **config_kw):
    """A random-initialised tiny Whisper with its processor, ready for training (see assets/build_tiny_teacher.py)."""
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(tiny_config(tokenizer, window_s=window_s, **config_kw))
    model.generation_config = whisper_generation_config(tokenizer, model.config.max_target_positions)
    processor = WhisperProcessor(feature_extractor=tiny_feature_extractor(window_s, model.config.num_mel_bins),
                                 tokenizer=tokenizer)
    set_prompt(model, processor)
    return model, processor


def window_seconds(feature_extractor: WhisperFeatureExtractor) -> float:
    """Longest audio the model can take, in seconds (30 for Whisper, 5 for the tiny teacher)."""
    return feature_extractor.n_samples / feature_extractor.sampling_rate


# Shapes of the real checkpoints (from their config.json files), for benchmarks and memory arithmetic
# without downloading them. Breeze-ASR-25 is Whisper-large-v2 shaped.
REAL_SHAPES = {
    "whisper-small": dict(d_model=768, encoder_layers=12, decoder_layers=12, encoder_attention_heads=12,
                          decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072),
    "breeze-asr-25": dict(d_model=1280, encoder_layers=32, decoder_layers=32, encoder_attention_heads=20,
                          decoder_attention_heads=20, encoder_ffn_dim=5120, decoder_ffn_dim=5120),
}


def real_config(shape: str, **overrides) -> WhisperConfig:
    """The WhisperConfig of a real checkpoint shape ("whisper-small" or "breeze-asr-25"): 51865 tokens, 80 mel
    bins, 30 s."""
    return WhisperConfig(vocab_size=51865, num_mel_bins=80, max_source_positions=1500, max_target_positions=448,
                         **{**REAL_SHAPES[shape], **overrides})


def meta_model(config: WhisperConfig) -> WhisperForConditionalGeneration:
    """A model of ``config`` on the meta device: exact shapes and parameter counts, no memory, no download."""
    with torch.device("meta"):
        return WhisperForConditionalGeneration(config)
