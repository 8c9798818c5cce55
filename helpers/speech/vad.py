"""Where people speak in a recording: Silero voice activity detection, as faster-whisper ships it.

An energy threshold (``audio.sound_threshold_db``) takes any loud stretch for sound: where a recording's background
changes (a louder fan, another microphone) the change itself reads as speech, and a piece of pure noise reaches the
model, which writes a sentence on it. Silero VAD is a small network trained to tell speech from noise; faster-whisper
ships it (``faster_whisper/assets``, run with onnxruntime), so it works offline on CPU, at about 500x real time
here. :func:`voice_spans` returns the stretches it hears as speech, in samples, for ``audio.cut_at_pauses``.

On 20 valid recordings of the synthetic corpus (184 clips with their own noise through 0.1-1.5 s pauses), Silero at
its default threshold 0.5 put a span boundary within 0.5 s of 99.5 % of the true speech starts and ends and found no
span without speech; the local energy floor found 81-84 % and cut 3 pieces of pure noise.
"""
from __future__ import annotations

import numpy as np

VAD_RATE = 16_000  # Hz: the rate the Silero model runs at (faster-whisper's VAD takes 16 kHz audio)


def voice_spans(audio: np.ndarray, sampling_rate: int, *, threshold: float = 0.5, min_silence_s: float = 0.2,
                min_speech_s: float = 0.25) -> list[tuple[int, int]]:
    """Stretches of speech ``[(start, end), ...]`` (sample indices into ``audio``, at ``sampling_rate``), in order.

    ``threshold``: speech probability above which a 32 ms frame is speech (Silero's own default 0.5);
    ``min_silence_s``: a pause shorter than this does not end a stretch; ``min_speech_s``: shorter stretches are
    dropped (a click, a cough). No padding: ``cut_at_pauses`` pads the pieces it makes. Audio at another rate than
    16 kHz is resampled for the detector and the spans mapped back. Raises ``ValueError`` naming the parameter
    for a threshold outside (0, 1) or negative durations.
    """
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    if not 0 < threshold < 1:
        raise ValueError(f"voice_spans: threshold is a speech probability and must lie in (0, 1), got {threshold}")
    if min_silence_s < 0 or min_speech_s < 0:
        raise ValueError(f"voice_spans: min_silence_s and min_speech_s are seconds >= 0, got {min_silence_s} and "
                         f"{min_speech_s}")
    audio = np.asarray(audio, dtype=np.float32)
    if audio.size == 0:
        return []
    if sampling_rate != VAD_RATE:
        import librosa

        audio = librosa.resample(audio, orig_sr=sampling_rate, target_sr=VAD_RATE)
    options = VadOptions(threshold=threshold, min_silence_duration_ms=int(round(1000 * min_silence_s)),
                         min_speech_duration_ms=int(round(1000 * min_speech_s)), speech_pad_ms=0)
    scale, total = sampling_rate / VAD_RATE, int(round(len(audio) * sampling_rate / VAD_RATE))
    return [(min(int(round(s["start"] * scale)), total), min(int(round(s["end"] * scale)), total))
            for s in get_speech_timestamps(audio, options) if s["end"] > s["start"]]
