"""Long recordings made from clips: what a person's minutes of audio look like, with every clip's place known.

A real recording does not fall silent between sentences: the room, the fan, the mains hum go on. The clips of the
synthetic corpus each carry their own background noise (``synth.add_noise``: a kind at an SNR), so
:func:`make_recordings` joins 6-12 clips of a split with pauses of 0.1-1.5 s (sometimes none) and fills each pause
with the noise of the clips on either side, at their levels, fading from the one before to the one after. The clips'
places (start and end seconds) and texts come with each recording, so that a long-form transcript can be scored
against them (``whisper.long_measure``).

:func:`make_long_recording` is the older, simpler join: clips in the given order with digital silence between them.
Both write the audio through a temporary file and a rename, so a reader never sees half a recording.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from ..files import atomic_write, shown
from .audio import SAMPLING_RATE, read_recording, read_row, sound_threshold_db
from .synth import NOISE_KINDS, make_noise

PAUSE_S = (0.1, 1.5)           # seconds between two clips, drawn uniformly...
NO_PAUSE_SHARE = 0.15          # ...except this share of the joins, where the next clip follows at once (0 s)
CLIPS_PER_RECORDING = (6, 12)  # clips in one recording, drawn uniformly (both ends included)
CROSSFADE_S = 0.01             # the pause's noise fades in and out over this much of the clip beside it
QUIET_SHARE = 0.1              # noise level of a clip without an SNR: the RMS of its quietest 10 % of frames


class LongRecording(NamedTuple):
    """A recording made of clips: its ``path``, the ``reference`` transcript (the clips' texts joined by spaces)
    and ``clips``, one row per clip: ``start`` and ``end`` (seconds into the recording), ``text``, ``audio`` (the
    clip it came from), and from :func:`make_recordings` also ``noise`` (kind), ``noise_rms`` (its level, full
    scale 1) and ``pause_before_s``."""
    path: Path
    reference: str
    clips: pd.DataFrame


def noise_level(audio: np.ndarray, snr_db: float | None = None, *, sampling_rate: int = SAMPLING_RATE,
                frame_s: float = 0.025) -> float:
    """The RMS (full scale 1) of the background noise in a clip ``audio``.

    With ``snr_db`` (how the corpus mixed it: speech RMS over noise RMS, ``synth.add_noise``) the level follows from
    the noisy clip alone: its power is speech power + noise power, so noise RMS = clip RMS / sqrt(1 + 10^(snr/10)).
    Without it (a clip whose clean speech and SNR are unknown), the RMS of the quietest :data:`QUIET_SHARE` of its
    ``frame_s``-second frames: the stretches where nobody speaks.
    """
    audio = np.asarray(audio, dtype=np.float64)
    if audio.size == 0:
        return 0.0
    if snr_db is not None and np.isfinite(snr_db):
        return float(np.sqrt(np.mean(audio ** 2) / (1 + 10 ** (snr_db / 10))))
    frame = max(1, int(round(frame_s * sampling_rate)))
    power = np.sort(np.mean(audio[: len(audio) // frame * frame].reshape(-1, frame) ** 2, axis=1)
                    if len(audio) >= frame else np.array([np.mean(audio ** 2)]))
    return float(np.sqrt(np.mean(power[: max(1, int(round(QUIET_SHARE * len(power))))])))


def _background(row: dict, audio: np.ndarray, sampling_rate: int) -> tuple[str, float]:
    """``(noise kind, RMS)`` of a clip: its manifest's ``noise`` and ``snr_db`` when it has them (white noise at the
    level of its quietest frames otherwise, also for a clip recorded clean)."""
    kind = row.get("noise")
    snr = row.get("snr_db")
    snr = None if snr is None or (isinstance(snr, float) and np.isnan(snr)) else float(snr)
    if kind not in NOISE_KINDS:
        kind, snr = "white", None
    return kind, noise_level(audio, snr, sampling_rate=sampling_rate)


def pause_noise(before: tuple[str, float], after: tuple[str, float], n: int, rng: np.random.Generator,
                sampling_rate: int = SAMPLING_RATE) -> np.ndarray:
    """``n`` samples of background for a pause between two clips: ``before`` and ``after`` are ``(noise kind, RMS)``
    of the clips either side; the first clip's noise fades out as the second's fades in (equal power, so the level
    stays put when both are alike)."""
    if n <= 0:
        return np.zeros(0, np.float32)
    fade = np.linspace(0.0, np.pi / 2, n)
    first = make_noise(before[0], n, rng, sampling_rate) * before[1]
    second = make_noise(after[0], n, rng, sampling_rate) * after[1]
    return (first * np.cos(fade) + second * np.sin(fade)).astype(np.float32)


def write_audio(path: str | Path, samples: np.ndarray, sampling_rate: int = SAMPLING_RATE) -> Path:
    """Write ``samples`` (float, clipped to [-1, 1]) to ``path`` as 16-bit PCM (format from the suffix) through a
    temporary file and a rename; returns the path."""
    import soundfile as sf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.part{path.suffix}")
    sf.write(tmp, np.clip(samples, -1.0, 1.0), sampling_rate, subtype="PCM_16")
    tmp.replace(path)
    return path


def _join(records: list[dict], gaps: list[int], out_path: Path, sampling_rate: int,
          rng: np.random.Generator | None) -> LongRecording:
    """Clips ``records`` joined with ``gaps`` (samples before each clip but the first), filled with their
    background (``rng``; None: digital silence) and written to ``out_path``."""
    waves = [read_row(rec, sampling_rate) for rec in records]
    backgrounds = [_background(rec, wave, sampling_rate) for rec, wave in zip(records, waves)]
    fade = int(round(CROSSFADE_S * sampling_rate))
    parts, clips, at = [], [], 0
    for i, (rec, wave) in enumerate(zip(records, waves)):
        gap = gaps[i - 1] if i else 0
        if gap and rng is not None:
            fill = pause_noise(backgrounds[i - 1], backgrounds[i], gap + 2 * fade, rng, sampling_rate)
            ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)  # clips are longer than the fade
            parts[-1] = parts[-1].copy()
            parts[-1][-fade:] = parts[-1][-fade:] * (1 - ramp) + fill[:fade] * ramp
            wave = wave.copy()
            wave[:fade] = wave[:fade] * ramp + fill[-fade:] * (1 - ramp)
            parts.append(fill[fade: fade + gap])
        elif gap:
            parts.append(np.zeros(gap, np.float32))
        at += gap
        parts.append(wave)
        clips.append({"start": at / sampling_rate, "end": (at + len(wave)) / sampling_rate,
                      "text": rec["text"] if isinstance(rec.get("text"), str) else "", "audio": rec["audio"],
                      "noise": backgrounds[i][0], "noise_rms": backgrounds[i][1],
                      "pause_before_s": gap / sampling_rate})
        at += len(wave)
    write_audio(out_path, np.concatenate(parts), sampling_rate)
    table = pd.DataFrame(clips)
    return LongRecording(Path(out_path), " ".join(t for t in table["text"] if t), table)


def make_long_recording(rows: pd.DataFrame, pause_s: float | tuple[float, float], out_path: str | Path, *,
                        sampling_rate: int = SAMPLING_RATE, seed: int = 0) -> LongRecording:
    """Concatenate the clips of the manifest ``rows`` (in order) into one recording with digital silence between
    them, and write it to ``out_path`` (16-bit PCM, ``sampling_rate`` Hz; format from the suffix, e.g. ``.wav``).

    ``pause_s``: the seconds of silence between two clips, or ``(low, high)`` for pauses drawn uniformly from that
    range with ``seed``. Returns a :class:`LongRecording`. Raises ``ValueError`` for no rows or a negative pause.
    For recordings that sound real (background through the pauses), see :func:`make_recordings`.
    """
    if len(rows) == 0:
        raise ValueError("make_long_recording: the manifest has no rows")
    low, high = (pause_s, pause_s) if np.isscalar(pause_s) else pause_s
    if not 0 <= low <= high:
        raise ValueError(f"make_long_recording: pause_s must be >= 0 seconds (or a range low <= high), got {pause_s}")
    rng = random.Random(seed)
    gaps = [int(round(rng.uniform(low, high) * sampling_rate)) for _ in range(len(rows) - 1)]
    return _join(rows.to_dict("records"), gaps, Path(out_path), sampling_rate, None)


def _plan(n_rows: int, n: int, clips: tuple[int, int], pause_s: tuple[float, float], no_pause_share: float,
          rng: random.Random) -> list[tuple[list[int], list[float]]]:
    """Which rows each of ``n`` recordings takes and the pauses between them (seconds). Rows are dealt from a
    shuffled deck, reshuffled when it runs out, so every clip is used about equally and none twice in a recording."""
    deck: list[int] = []
    plan = []
    for _ in range(n):
        count = min(rng.randint(*clips), n_rows)
        if len(deck) < count:
            deck += rng.sample([i for i in range(n_rows) if i not in deck], n_rows - len(deck))
        chosen, deck = deck[:count], deck[count:]
        plan.append((chosen, [0.0 if rng.random() < no_pause_share else rng.uniform(*pause_s)
                              for _ in range(count - 1)]))
    return plan


def make_recordings(rows: pd.DataFrame, n: int, out_dir: str | Path, seed: int = 0, *,
                    clips: tuple[int, int] = CLIPS_PER_RECORDING, pause_s: tuple[float, float] = PAUSE_S,
                    no_pause_share: float = NO_PAUSE_SHARE, sampling_rate: int = SAMPLING_RATE) -> list[LongRecording]:
    """``n`` recordings of ``clips`` (low, high) clips each drawn from the manifest ``rows`` (one split), written
    to ``out_dir/recording_NNN.wav`` with their clips in ``out_dir/recordings.jsonl`` (one row per clip, with
    ``recording``); the same ``seed`` gives the same recordings, sample for sample.

    Between two clips a pause of ``pause_s`` seconds (uniform), or none with probability ``no_pause_share``; the
    pause holds the background of the clips either side (:func:`pause_noise`: the kind of their ``noise`` column at
    the level its ``snr_db`` implies, else white noise at the level of their quietest frames). Returns one
    :class:`LongRecording` per recording. Raises ``ValueError`` naming the parameter for no rows, ``n`` < 1, a clip
    range outside 1 <= low <= high or a pause range outside 0 <= low <= high.
    """
    if len(rows) == 0:
        raise ValueError("make_recordings: the manifest has no rows")
    if n < 1:
        raise ValueError(f"make_recordings: n must be 1 or more recordings, got {n}")
    if not 1 <= clips[0] <= clips[1]:
        raise ValueError(f"make_recordings: clips must be (low, high) with 1 <= low <= high, got {clips}")
    if not 0 <= pause_s[0] <= pause_s[1]:
        raise ValueError(f"make_recordings: pause_s must be (low, high) seconds with 0 <= low <= high, got {pause_s}")
    out_dir = Path(out_dir)
    records = rows.reset_index(drop=True).to_dict("records")
    made = []
    for i, (chosen, pauses) in enumerate(_plan(len(records), n, clips, pause_s, no_pause_share,
                                               random.Random(f"recordings-{seed}"))):
        gaps = [int(round(p * sampling_rate)) for p in pauses]
        made.append(_join([records[j] for j in chosen], gaps, out_dir / f"recording_{i:03d}.wav", sampling_rate,
                          np.random.default_rng([seed, i])))
    table = pd.concat([r.clips.assign(recording=r.path.name) for r in made], ignore_index=True)
    atomic_write(out_dir / "recordings.jsonl", table.to_json(orient="records", lines=True, force_ascii=False))
    return made


def check_recording(path: str | Path, window_s: float | None = None, sampling_rate: int = SAMPLING_RATE,
                    silence_dbfs: float = -60.0) -> np.ndarray:
    """The samples of the recording ``path`` when it can be transcribed as a long recording; else ``ValueError``
    naming the file and saying what is wrong: not audio (or missing: ``FileNotFoundError``), NaN or infinite
    samples, silent (no frame louder than ``silence_dbfs``), or shorter than one window of ``window_s`` seconds
    (transcribe such a clip as a clip)."""
    audio = read_recording(path, sampling_rate)
    if sound_threshold_db(audio, sampling_rate, silence_dbfs=silence_dbfs) is None:
        raise ValueError(f"{shown(path)}: the recording is silent (no sound above {silence_dbfs:g} dBFS); "
                         "nothing to transcribe")
    seconds = len(audio) / sampling_rate
    if window_s is not None and seconds < window_s:
        raise ValueError(f"{shown(path)}: the recording is {seconds:.1f} s, shorter than one window ({window_s:g} s); "
                         "transcribe it as a clip")
    return audio
