"""Audio in, features out: reading any file (or a piece of one), resampling, and Whisper's log-mel features.

Files are read with soundfile (wav, flac, ogg, mp3 through libsndfile), averaged to mono and resampled with
librosa; ``datasets``' own decoder is not used (it needs torchcodec, which fails on CPU-only machines).
:func:`log_mel` is the one place the course turns waveforms into model input.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

SAMPLING_RATE = 16_000  # Hz: what Whisper's feature extractors expect and what the corpus files are written at
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")  # what soundfile reads here (libsndfile)


def read_audio(path: str | Path, sampling_rate: int = SAMPLING_RATE, offset: float | None = None,
               duration: float | None = None) -> np.ndarray:
    """Read ``path`` (or ``duration`` seconds of it from ``offset`` seconds on), average to mono and
    resample to ``sampling_rate`` Hz. Returns float32 samples.

    Raises ``ValueError`` naming the file when it (or the piece asked for) holds no samples; soundfile's
    own error (``soundfile.LibsndfileError``) when it is not audio.
    """
    import librosa
    import soundfile as sf

    offset = None if offset is None or (isinstance(offset, float) and math.isnan(offset)) else float(offset)
    with sf.SoundFile(str(path)) as f:
        rate = f.samplerate
        if offset is not None:
            f.seek(min(int(round(offset * rate)), f.frames))
            frames = -1 if duration is None else int(round(float(duration) * rate))
        else:
            frames = -1
        audio = f.read(frames, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if audio.size == 0:
        where = f" from {offset:g} s" if offset is not None else ""
        raise ValueError(f"{path}: the audio file holds no samples{where}")
    if rate != sampling_rate:
        audio = librosa.resample(audio, orig_sr=rate, target_sr=sampling_rate)
    return np.ascontiguousarray(audio, dtype=np.float32)


def read_recording(path: str | Path, sampling_rate: int = SAMPLING_RATE) -> np.ndarray:
    """The samples of the recording ``path`` (mono, ``sampling_rate`` Hz); ``FileNotFoundError`` or ``ValueError``
    naming the file when it is missing, not audio, or holds NaN or infinite samples."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file {path} does not exist")
    try:
        audio = read_audio(path, sampling_rate)
    except Exception as err:  # soundfile says why; keep its words, name the file
        raise ValueError(f"{path}: cannot read the audio file ({str(err).splitlines()[0][:120]}); give a wav, flac, "
                         "ogg or mp3 file") from err
    if not np.isfinite(audio).all():
        raise ValueError(f"{path}: the audio holds {int((~np.isfinite(audio)).sum())} NaN or infinite samples (a "
                         "float file written from a failed computation?); write it again, e.g. as 16-bit PCM")
    return audio


def read_row(row: dict, sampling_rate: int = SAMPLING_RATE) -> np.ndarray:
    """The audio of one manifest row: the whole file, or the piece ``offset`` .. ``offset + duration`` when the
    row has an ``offset`` (a piece of a long recording, see ``audio.cut_at_pauses``)."""
    offset = row.get("offset")
    if offset is None or (isinstance(offset, float) and math.isnan(offset)):
        return read_audio(row["audio"], sampling_rate)
    return read_audio(row["audio"], sampling_rate, offset, row["duration"])


def log_mel(feature_extractor, audio: list[np.ndarray], device: str | torch.device = "cpu",
            dtype: torch.dtype = torch.float32, with_mask: bool = False):
    """Whisper's log-mel features of a batch of waveforms (at the extractor's rate), padded or cut to its
    window: a tensor of ``batch x mel bins x frames`` on ``device`` in ``dtype``. With ``with_mask``, returns
    ``(features, attention_mask)``, the mask (``batch x frames``, 1 where there is audio, 0 on padding) for
    ``generate``; Whisper's encoder reads the padded window whatever the mask says."""
    fe = feature_extractor
    out = fe(audio, sampling_rate=fe.sampling_rate, return_tensors="pt", return_attention_mask=with_mask)
    features = out.input_features.to(device, dtype)
    return (features, out.attention_mask.to(device)) if with_mask else features


def duration_of(path: str | Path) -> float:
    """Length of an audio file in seconds, from its header (nothing is decoded)."""
    import soundfile as sf

    info = sf.info(str(path))
    return info.frames / info.samplerate if info.samplerate else 0.0


# ---------------------------------------------------------------------------------------------
# Long recordings: pieces that fit the model's window, cut where the speaker pauses
# ---------------------------------------------------------------------------------------------
MIN_CONTRAST_DB = 15.0  # a pause is at least this far below the recording's loudness, however loud its noise


def sound_threshold_db(audio: np.ndarray, sampling_rate: int, *, top_db: float = 35.0, noise_margin_db: float = 10.0,
                       silence_dbfs: float = -60.0, frame_s: float = 0.032, hop_s: float = 0.008) -> float | None:
    """The level (dB re full scale, of the RMS of ``frame_s``-second frames every ``hop_s`` seconds) above which
    :func:`cut_at_pauses` counts a frame of ``audio`` as sound, or ``None`` when no frame reaches ``silence_dbfs``
    (a silent recording).

    The threshold follows the recording, not a fixed level: ``loudness - top_db``, where loudness is the 95th
    percentile of the frames louder than ``silence_dbfs`` (a few clicks do not set it); raised to ``noise_margin_db``
    above the noise floor (the 5th percentile of all frames) when the background is loud, yet never closer than
    15 dB (:data:`MIN_CONTRAST_DB`) to the loudness, and never below ``silence_dbfs``.
    """
    import librosa

    db = 20 * np.log10(np.maximum(_frame_rms(audio, sampling_rate, frame_s, hop_s, librosa), 1e-10))
    sounding = db > silence_dbfs
    if not sounding.any():
        return None
    loudness, floor = float(np.percentile(db[sounding], 95)), float(np.percentile(db, 5))
    threshold = max(loudness - top_db, min(floor + noise_margin_db, loudness - MIN_CONTRAST_DB))
    return max(threshold, silence_dbfs)


def _frame_rms(audio, sampling_rate, frame_s, hop_s, librosa):
    frame, hop = _frame_sizes(sampling_rate, frame_s, hop_s)
    return librosa.feature.rms(y=audio, frame_length=frame, hop_length=hop)[0]


def _frame_sizes(sampling_rate: int, frame_s: float, hop_s: float) -> tuple[int, int]:
    return max(16, int(round(frame_s * sampling_rate))), max(1, int(round(hop_s * sampling_rate)))


def local_sound_spans(audio: np.ndarray, sampling_rate: int, floor_window_s: float, *, top_db: float = 35.0,
                      noise_margin_db: float = 10.0, silence_dbfs: float = -60.0, frame_s: float = 0.032,
                      hop_s: float = 0.008) -> list[tuple[int, int]]:
    """Stretches of sound ``[(start, end), ...]`` (sample indices) when the background changes along the recording:
    as :func:`sound_threshold_db`, but each frame's noise floor is the 5th percentile of the frames within
    ``floor_window_s`` seconds around it, so a pause in loud noise is a pause even where another stretch of the
    recording is quiet. ``[]`` when no frame is louder than ``silence_dbfs``."""
    import librosa
    from scipy.ndimage import percentile_filter

    frame, hop = _frame_sizes(sampling_rate, frame_s, hop_s)
    db = 20 * np.log10(np.maximum(_frame_rms(audio, sampling_rate, frame_s, hop_s, librosa), 1e-10))
    sounding = db > silence_dbfs
    if not sounding.any():
        return []
    loudness = float(np.percentile(db[sounding], 95))
    floor = percentile_filter(db, 5, size=max(1, int(round(floor_window_s / hop_s))), mode="nearest")
    threshold = np.maximum(np.maximum(loudness - top_db, np.minimum(floor + noise_margin_db,
                                                                    loudness - MIN_CONTRAST_DB)), silence_dbfs)
    edges = np.flatnonzero(np.diff(np.r_[0, (db > threshold).astype(np.int8), 0]))
    return [(min(s * hop, len(audio)), min(e * hop + frame - hop, len(audio))) for s, e in edges.reshape(-1, 2)]


def cut_at_pauses(audio: np.ndarray, sampling_rate: int, max_s: float, *, overlap_s: float = 0.5, pad_s: float = 0.2,
                  top_db: float = 35.0, noise_margin_db: float = 10.0, silence_dbfs: float = -60.0,
                  frame_s: float = 0.032, hop_s: float = 0.008, floor_window_s: float | None = None,
                  cut_pause_s: float | None = None, detector: str = "energy",
                  vad: dict | None = None) -> list[tuple[float, float]]:
    """Cut a long mono recording into pieces of at most ``max_s`` seconds, at pauses; returns ``[(start, end), ...]``
    in seconds from the start of ``audio`` (``sampling_rate`` Hz samples), in order.

    1. Sound and silence: frames louder than :func:`sound_threshold_db` (relative to the recording's own loudness
       and noise floor; ``top_db``, ``noise_margin_db``, ``silence_dbfs``, ``frame_s``, ``hop_s`` go there) are
       sound, found with ``librosa.effects.split``. A recording without a frame above ``silence_dbfs`` gives ``[]``.
    2. Cuts: a stretch of sound (with its inner pauses) longer than ``max_s`` is cut at its longest pause, and the
       halves likewise, until every piece fits; so the pieces end where the speaker pauses longest.
       With ``floor_window_s`` the noise floor is local (:func:`local_sound_spans`): for recordings whose
       background changes (another room, another microphone). With ``detector="silero"`` the stretches are speech
       as Silero voice activity detection hears it (``vad.voice_spans``, ``vad`` its keyword arguments): noise,
       however loud or changing, is then a pause.
    3. Merging: neighbouring pieces are joined while the joined piece still fits in ``max_s`` (fewer, longer
       pieces: more context for the model, fewer calls); with ``cut_pause_s``, never across a pause of at least
       that many seconds (every such pause ends a piece: for models that learnt from one sentence at a time).
    4. A stretch with no pause at all that is longer than ``max_s`` is split hard into equal pieces of at most
       ``max_s`` that overlap by ``overlap_s`` seconds (a word on the cut is then heard whole in one of them; its
       text may come out twice).
    5. Each piece is widened by up to ``pad_s`` seconds of the silence around it (never past the middle of a
       pause, the ends of the recording or ``max_s``), so that soft word onsets and endings are kept.

    The pieces cover every stretch of sound; silence between pieces is left out. Read a piece back with
    ``read_audio(path, sampling_rate, offset=start, duration=end - start)``. Raises ``ValueError`` naming the
    parameter when ``audio`` is not 1-D, ``max_s`` is not positive, ``overlap_s`` is not in [0, max_s / 2) or
    ``detector`` is neither ``"energy"`` nor ``"silero"``.
    """
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"cut_at_pauses: audio must be mono (1-D), got shape {audio.shape}; average the channels "
                         "first (read_audio does)")
    if not max_s > 0:
        raise ValueError(f"cut_at_pauses: max_s must be positive (seconds), got {max_s}")
    if not 0 <= overlap_s < max_s / 2:
        raise ValueError(f"cut_at_pauses: overlap_s must be >= 0 and below max_s / 2 ({max_s / 2:g} s), "
                         f"got {overlap_s}")
    if detector not in ("energy", "silero"):
        raise ValueError(f"cut_at_pauses: detector must be 'energy' (loudness over the noise floor) or 'silero' (voice "
                         f"activity detection), got {detector!r}")
    levels = {"top_db": top_db, "noise_margin_db": noise_margin_db, "silence_dbfs": silence_dbfs, "frame_s": frame_s,
              "hop_s": hop_s}
    spans = _sound_spans(audio, sampling_rate, floor_window_s, levels, (vad or {}) if detector == "silero" else None)
    if not spans:
        return []
    max_n = int(np.floor(max_s * sampling_rate))
    pieces = [piece for run in _runs(spans, cut_pause_s * sampling_rate if cut_pause_s else np.inf)
              for piece in _merge(_cut_longest_pause(run, max_n), max_n)]
    out = []
    for (start, end), hard in pieces:
        if hard:
            out += _hard_split(start, end, max_n, int(round(overlap_s * sampling_rate)))
        else:
            out.append((start, end))
    return [(s / sampling_rate, e / sampling_rate) for s, e in _pad(out, max_n, int(round(pad_s * sampling_rate)),
                                                                   len(audio))]


def _sound_spans(audio: np.ndarray, sampling_rate: int, floor_window_s: float | None, levels: dict,
                 vad: dict | None) -> list[tuple[int, int]]:
    """Stretches of sound (sample indices): speech as Silero hears it when ``vad`` is given (a dict, maybe empty, of
    ``vad.voice_spans``' keyword arguments); else over :func:`sound_threshold_db` (with ``librosa.effects.split``),
    or over a local floor with ``floor_window_s`` (:func:`local_sound_spans`)."""
    import librosa

    if not audio.size:
        return []
    if vad is not None:
        from .vad import voice_spans

        return voice_spans(audio, sampling_rate, **vad)
    if floor_window_s:
        return [(s, e) for s, e in local_sound_spans(audio, sampling_rate, floor_window_s, **levels) if e > s]
    threshold = sound_threshold_db(audio, sampling_rate, **levels)
    if threshold is None:
        return []
    frame, hop = _frame_sizes(sampling_rate, levels["frame_s"], levels["hop_s"])
    peak = max(float(_frame_rms(audio, sampling_rate, levels["frame_s"], levels["hop_s"], librosa).max()), 1e-10)
    return [(int(s), int(e)) for s, e in librosa.effects.split(  # peak: split's reference level
        audio, top_db=20 * np.log10(peak) - threshold, ref=peak, frame_length=frame, hop_length=hop) if e > s]


def _runs(spans: list[tuple[int, int]], gap_n: float) -> list[list[tuple[int, int]]]:
    """The spans grouped into runs of sound between pauses of at least ``gap_n`` samples (each such pause always
    ends a piece)."""
    runs = [[spans[0]]]
    for span in spans[1:]:
        if span[0] - runs[-1][-1][1] >= gap_n:
            runs.append([span])
        else:
            runs[-1].append(span)
    return runs


def _cut_longest_pause(spans: list[tuple[int, int]], max_n: int) -> list[tuple[tuple[int, int], bool]]:
    """Groups of consecutive sound spans (sample indices) that fit ``max_n``, cut at the longest pause first;
    ``((start, end), hard)`` with ``hard`` True for a single span that is too long and has no pause to cut at."""
    done, todo = [], [(0, len(spans))]  # half-open ranges of span indices, split depth first, left first
    while todo:
        lo, hi = todo.pop()
        start, end = spans[lo][0], spans[hi - 1][1]
        if end - start <= max_n or hi - lo == 1:
            done.append(((start, end), end - start > max_n))
            continue
        gaps = [(spans[i + 1][0] - spans[i][1], -abs((spans[i][1] + spans[i + 1][0]) / 2 - (start + end) / 2), i)
                for i in range(lo, hi - 1)]
        cut = max(gaps)[2]  # the longest pause; of equal ones, the nearest the middle
        todo += [(cut + 1, hi), (lo, cut + 1)]
    return done


def _merge(pieces, max_n):
    """Join neighbouring pieces while the joined piece fits ``max_n`` samples (hard-split stretches stay alone)."""
    merged = []
    for (start, end), hard in pieces:
        if merged and not hard and not merged[-1][1] and end - merged[-1][0][0] <= max_n:
            merged[-1] = ((merged[-1][0][0], end), False)
        else:
            merged.append(((start, end), hard))
    return merged


def _hard_split(start: int, end: int, max_n: int, overlap_n: int) -> list[tuple[int, int]]:
    """``start .. end`` as the fewest equal pieces of at most ``max_n`` samples overlapping by ``overlap_n``."""
    count = int(np.ceil((end - start - overlap_n) / (max_n - overlap_n)))
    length = int(np.ceil((end - start + (count - 1) * overlap_n) / count))
    step = length - overlap_n
    return [(start + i * step, min(start + i * step + length, end)) if i < count - 1 else (end - length, end)
            for i in range(count)]


def _pad(pieces: list[tuple[int, int]], max_n: int, pad_n: int, total: int) -> list[tuple[int, int]]:
    """Widen each piece into the silence around it by up to ``pad_n`` samples a side (not past the middle of the
    pause to its neighbour, the recording's ends, or ``max_n`` in all)."""
    out = []
    for i, (start, end) in enumerate(pieces):
        room = max(0, max_n - (end - start)) // 2
        before = start if i == 0 else max(0, (start - pieces[i - 1][1]) // 2)
        after = total - end if i == len(pieces) - 1 else max(0, (pieces[i + 1][0] - end) // 2)
        out.append((start - min(pad_n, room, before), end + min(pad_n, room, after)))
    return out
