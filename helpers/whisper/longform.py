"""Transcribing beyond a model's window, and with CTranslate2 exports: segments with times, ``.srt`` and ``.txt``.

:func:`transcribe_long` takes a recording of any length and a transformers Whisper (``LoadedWhisper``) or a
CTranslate2 export (:class:`Export`, made by ``export.export_model``), and goes one of these ways:

* **timestamps** - a transformers Whisper whose vocabulary has timestamp tokens (Breeze-ASR-25, whisper-*):
  transformers' sequential long-form generation predicts where each segment ends and moves its window on.
* **vad** - an export of the standard layout: faster-whisper's long-form path behind Silero voice activity
  detection.
* **pauses** - a model without timestamp tokens (the tiny teacher and its students: 5 s window, 1010 tokens)
  cannot say where it is in its window: the recording is cut at pauses into pieces that fit
  (``audio.cut_at_pauses``), each piece is transcribed on its own and its place gives its segment's times.

:mod:`helpers.whisper.runtime` loads and runs the exports; :mod:`helpers.speech.recordings` builds recordings from
clips (``make_long_recording``, ``make_recordings``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import StoppingCriteriaList

from ..files import atomic_write, shown
from ..speech.audio import SAMPLING_RATE, cut_at_pauses, read_recording
from .budget import RepetitionGuard, token_budget
from .decode import transcribe
from .models import LoadedWhisper, quiet_generation, window_seconds
from .runtime import WHISPER_TIMESTAMPS, Export, load_export, transcribe_export

# How the "pauses" method cuts a recording, chosen on valid recordings, never on test (bench/long_settings.py; the
# figures are in long_measure.CHOSEN's note): speech found by Silero voice activity detection at threshold 0.3, every
# pause of 0.3 s or more ends a piece, and each piece keeps up to 0.3 s of the audio around it.
PAD_S = 0.3
CUT = {"detector": "silero", "cut_pause_s": 0.3, "vad": {"threshold": 0.3}}


@dataclass(frozen=True)
class Segment:
    """A stretch of a recording and what was said in it: ``start`` and ``end`` in seconds from its beginning."""
    start: float
    end: float
    text: str


@dataclass
class LongTranscript:
    """What :func:`transcribe_long` made of one recording.

    ``segments`` in time order; ``srt`` and ``txt`` the files written; ``method`` ``"timestamps"``,
    ``"pauses"`` or ``"vad"`` (faster-whisper's voice activity detection); ``audio_s`` seconds of audio,
    ``compute_s`` wall seconds of transcription (reading the file and writing the outputs excluded).
    """
    segments: list[Segment]
    srt: Path
    txt: Path
    method: str
    audio_s: float
    compute_s: float
    stats: dict = field(default_factory=dict)

    @property
    def text(self) -> str:
        """The transcript of the whole recording: the segments' texts joined by spaces."""
        return " ".join(s.text for s in self.segments if s.text)


def count_timestamp_tokens(vocabulary_size: int, no_timestamps_id: int | None) -> int:
    """How many timestamp tokens a Whisper vocabulary of ``vocabulary_size`` ids has: the ids after
    ``<|notimestamps|>`` (``no_timestamps_id``; ``None`` when the vocabulary lacks it: 0)."""
    return 0 if no_timestamps_id is None else max(0, vocabulary_size - no_timestamps_id - 1)


def has_timestamp_tokens(loaded: LoadedWhisper) -> bool:
    """Whether the model can predict times: its vocabulary has Whisper's 1501 timestamp tokens after
    ``<|notimestamps|>`` (51865-token Whispers do; the tiny teacher's 1010-token vocabulary ends at it)."""
    no_ts = loaded.tokenizer.convert_tokens_to_ids("<|notimestamps|>")
    no_ts = None if no_ts == loaded.tokenizer.unk_token_id else no_ts
    return count_timestamp_tokens(loaded.model.config.vocab_size, no_ts) >= WHISPER_TIMESTAMPS


def pieces(path: str | Path, window_s: float, *, sampling_rate: int = SAMPLING_RATE, overlap_s: float = 0.5,
           pad_s: float = PAD_S, audio: np.ndarray | None = None, cut: dict | None = None) -> pd.DataFrame:
    """The recording ``path`` cut at pauses into pieces of at most ``window_s`` seconds (``audio.cut_at_pauses``
    with ``overlap_s`` and ``pad_s``), as manifest rows: ``audio`` (the path), ``offset`` and ``duration``
    (seconds), ``text`` (empty), ``split`` ``"unlabelled"``. ``audio``: the recording's samples at
    ``sampling_rate`` when already read; ``cut``: more keyword arguments of ``cut_at_pauses`` (``detector``,
    ``cut_pause_s``, ``vad``...; default :data:`CUT`). An empty table when the recording holds no speech."""
    samples = read_recording(path, sampling_rate) if audio is None else audio
    spans = cut_at_pauses(samples, sampling_rate, window_s, overlap_s=overlap_s, pad_s=pad_s,
                          **(CUT if cut is None else cut))
    return pd.DataFrame({"audio": str(path), "offset": [s for s, _ in spans], "duration": [e - s for s, e in spans],
                         "text": "", "split": "unlabelled"}, columns=["audio", "offset", "duration", "text", "split"])


def segments_of(rows: pd.DataFrame, texts: list[str]) -> list[Segment]:
    """One :class:`Segment` per piece (rows of :func:`pieces`) with its transcript, times from the pieces' offsets."""
    return [Segment(round(float(o), 3), round(float(o + d), 3), t.strip())
            for o, d, t in zip(rows["offset"], rows["duration"], texts)]


def srt_time(seconds: float) -> str:
    """``seconds`` as an SRT time stamp, ``HH:MM:SS,mmm``."""
    ms = int(round(max(seconds, 0.0) * 1000))
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def write_transcript(segments: list[Segment], audio_path: str | Path,
                     out_dir: str | Path | None = None) -> tuple[Path, Path]:
    """Write ``<name>.srt`` (numbered cues with times) and ``<name>.txt`` (one segment's text a line) for the
    recording ``audio_path``, beside it or into ``out_dir``; returns both paths. Segments without text get no
    cue and no line (the returned segments keep them)."""
    audio_path = Path(audio_path)
    folder = Path(out_dir) if out_dir is not None else audio_path.parent
    spoken = [s for s in segments if s.text]
    cues = [f"{i}\n{srt_time(s.start)} --> {srt_time(s.end)}\n{s.text}\n" for i, s in enumerate(spoken, 1)]
    srt = atomic_write(folder / f"{audio_path.stem}.srt", "\n".join(cues))
    txt = atomic_write(folder / f"{audio_path.stem}.txt", "".join(f"{s.text}\n" for s in spoken))
    return srt, txt


def transcribe_long(model: LoadedWhisper | Export | str | Path, path: str | Path, *, out_dir: str | Path | None = None,
                    method: str = "auto", batch_size: int = 8, max_new_tokens: int | None = None,
                    condition_on_previous_text: bool = False, overlap_s: float = 0.5, pad_s: float = PAD_S,
                    threads: int = 0, cut: dict | None = None) -> LongTranscript:
    """Transcribe the recording ``path`` (any length) with ``model`` (a ``LoadedWhisper``, an :class:`Export` or an
    export folder, loaded with ``threads``); write ``.srt`` and ``.txt`` beside it (or into ``out_dir``) and return
    a :class:`LongTranscript`.

    ``method``: ``"timestamps"`` (transformers only; the vocabulary must have timestamp tokens), ``"vad"``
    (standard-layout exports only), ``"pauses"`` (any model; ``overlap_s``, ``pad_s``: see ``audio.cut_at_pauses``,
    and ``cut`` its other keyword arguments, default :data:`CUT`: speech found by Silero voice activity detection;
    pieces go in batches of ``batch_size``), or ``"auto"``: the first of
    these the model can do. ``max_new_tokens`` caps each window's or piece's transcript.
    ``condition_on_previous_text`` (timestamps only; vad never does) feeds each window the text of the one before.
    It is off because distilled students, with their 2-layer decoders, take that text as something to continue and
    hallucinate after the first window (Distil-Whisper's README advises against it); a teacher may turn it on. Every
    window and piece is encoded over the model's full window, also with a short-window student's export (its window
    rule is for clips people record: short windows in long-form decoding have cost one language's WER 4 % -> 85 % in
    a public report). Raises ``ValueError`` for a method the model cannot do, and the errors of
    :func:`read_recording`.
    """
    export = model if isinstance(model, (LoadedWhisper, Export)) else load_export(model, threads=threads)
    hf = isinstance(export, LoadedWhisper)
    can = (["timestamps"] if hf and has_timestamp_tokens(export) else []) + (
        ["vad"] if not hf and export.whisper is not None else []) + ["pauses"]
    method = can[0] if method == "auto" else method
    if method not in can:
        raise ValueError(f"method {method!r} is not possible with {export.source if hf else shown(export.path)}: it "
                         f"can do {', '.join(can)} ('timestamps' needs a transformers Whisper with timestamp tokens, "
                         "'vad' an export of the standard Whisper layout)")
    fe = export.feature_extractor if hf else export.features
    audio = read_recording(path, fe.sampling_rate)
    t0 = time.perf_counter()
    stats: dict = {}
    if method == "timestamps":
        segments = _timestamp_segments(export, audio, max_new_tokens, condition_on_previous_text)
    elif method == "vad":
        found, _ = export.whisper.transcribe(audio, language=export.language, task=export.task, beam_size=1,
                                             temperature=0.0, vad_filter=True, condition_on_previous_text=False,
                                             max_new_tokens=max_new_tokens)
        segments = [Segment(round(s.start, 3), round(s.end, 3), s.text.strip()) for s in found]
    else:
        rows = pieces(path, window_seconds(fe), sampling_rate=fe.sampling_rate, overlap_s=overlap_s, pad_s=pad_s,
                      audio=audio, cut=cut)
        if len(rows) and hf:
            texts, stats = transcribe(export.model, export.processor, rows, batch_size, max_new_tokens=max_new_tokens,
                                      progress=False, shard=False)
        elif len(rows):
            texts, stats = transcribe_export(export, rows, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                             window=None)  # full windows: a short-window export's rule is for clips
        else:
            texts = []
        segments = segments_of(rows, texts)
    compute_s = time.perf_counter() - t0
    srt, txt = write_transcript(segments, path, out_dir)
    return LongTranscript(segments, srt, txt, method, len(audio) / fe.sampling_rate, compute_s, stats)


@torch.no_grad()
def _timestamp_segments(loaded: LoadedWhisper, audio: np.ndarray, max_new_tokens: int | None,
                        condition: bool) -> list[Segment]:
    """transformers' long-form generation over the whole recording: features of all of it (``truncation=False``,
    padded to the window only when shorter), ``return_timestamps=True``, ``return_segments=True``."""
    fe, model = loaded.feature_extractor, loaded.model
    param = next(model.parameters())
    longer = len(audio) > fe.n_samples
    inputs = fe(audio, sampling_rate=fe.sampling_rate, return_tensors="pt", return_attention_mask=True,
                **({"truncation": False, "padding": "longest"} if longer else {}))
    limit = max_new_tokens or model.config.max_target_positions // 2  # Whisper's own cap per window
    window_s = min(len(audio) / fe.sampling_rate, fe.chunk_length)
    kwargs = {"max_new_tokens": token_budget(window_s, limit),  # per window, with a guard against loops
              "stopping_criteria": StoppingCriteriaList([RepetitionGuard()])}
    was_training = model.training
    model.eval()
    try:
        with quiet_generation():
            out = model.generate(inputs.input_features.to(param.device, param.dtype),
                                 attention_mask=inputs.attention_mask.to(param.device), return_timestamps=True,
                                 return_segments=True, condition_on_prev_tokens=condition, **kwargs)
    finally:
        model.train(was_training)
    eot = loaded.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    return [Segment(round(float(s["start"]), 3), round(float(s["end"]), 3),
                    loaded.tokenizer.decode([t for t in s["tokens"].tolist() if t < eot]).strip())
            for s in out["segments"][0]]
