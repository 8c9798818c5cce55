"""Offline synthetic Taiwanese-Mandarin speech: sentences of the grammar (``grammar``), espeak-ng voices, noise.

The corpus stands in for real recordings when no data or network is at hand. Sentences are written
in Traditional characters from a grammar made for this workbook (times, dates, numbers, places,
everyday actions, and Mandarin-English code-switching at work). Speech comes from the espeak-ng
library shipped in the ``espeakng-loader`` wheel, driven through ctypes (the Debian command line
reads Chinese as English pinyin and is not used). Speakers are voice variants with their own rate,
pitch and pitch range; noise of a chosen colour is mixed at a chosen SNR.

Determinism: given a seed, texts, speakers, noise settings and split assignment are exactly
reproducible; audio is reproducible to espeak's own precision (its lengths vary by ~0.5 %).
"""
from __future__ import annotations

import ctypes
import json
import random
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .audio import SAMPLING_RATE
from .grammar import make_sentence

# ---------------------------------------------------------------------------------------------
# espeak-ng through ctypes
# ---------------------------------------------------------------------------------------------
_AUDIO_OUTPUT_SYNCHRONOUS, _POS_CHARACTER, _CHARS_UTF8 = 2, 1, 1
_RATE, _PITCH, _RANGE = 1, 3, 4
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class Espeak:
    """One process-wide espeak-ng engine (the C library is not thread-safe: calls hold a lock)."""

    _instance: Espeak | None = None
    _lock = threading.Lock()

    def __init__(self):
        import espeakng_loader

        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        data_parent = str(Path(espeakng_loader.get_data_path()).parent).encode()
        self.sample_rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_parent, 0)
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak-ng failed to initialise with data in {data_parent.decode()}")
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)  # keep a reference, or ctypes frees it
        self.lib.espeak_SetSynthCallback(self._callback)
        self.lib.espeak_TextToPhonemes.restype = ctypes.c_char_p

    @classmethod
    def get(cls) -> Espeak:
        """The engine of this process, created on first use (so worker processes make their own)."""
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def _collect(self, wav, n, _events):
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    def synthesize(self, text: str, voice: str = "cmn", rate: int = 175, pitch: int = 50,
                   pitch_range: int = 50) -> np.ndarray:
        """Speak ``text``; returns float32 samples in [-1, 1] at ``self.sample_rate`` (22050 Hz)."""
        with self._lock:
            if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise ValueError(f"espeak-ng has no voice {voice!r} (try 'cmn' or 'cmn+f1'..'cmn+m7')")
            for param, value in ((_RATE, rate), (_PITCH, pitch), (_RANGE, pitch_range)):
                self.lib.espeak_SetParameter(param, int(value), 0)
            self._chunks = []
            data = text.encode("utf-8")
            self.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            self.lib.espeak_Synchronize()
            samples = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        return samples.astype(np.float32) / 32768.0

    def phonemes(self, text: str, voice: str = "cmn") -> str:
        """espeak's phonemes for ``text``; a '(en)' inside means it fell back to the English voice."""
        with self._lock:
            self.lib.espeak_SetVoiceByName(voice.encode())
            buf = ctypes.c_char_p(text.encode("utf-8"))
            ptr = ctypes.pointer(buf)
            out = []
            while ptr.contents.value:
                res = self.lib.espeak_TextToPhonemes(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_void_p)), _CHARS_UTF8, 0)
                out.append((res or b"").decode("utf-8", "replace"))
        return " ".join(out)


# ---------------------------------------------------------------------------------------------
# Speakers, noise, corpus
# ---------------------------------------------------------------------------------------------
NOISE_KINDS = ("white", "pink", "brown", "hum", "blue", "crackle")

# Who speaks in which split, and in what noise: each split's voices and noise kinds are its own, so validation
# and test both measure generalisation to unheard voices and noises. (The tiny teacher was pretrained on clean
# speech of f1-f3, m1-m3 and m8: the validation voices are new to the course, not to that teacher.)
SPLIT_VOICES = {"train": ("cmn+f3", "cmn+f4", "cmn+m3", "cmn+m4", "cmn+m5"),
                "valid": ("cmn+f2", "cmn+m2", "cmn+m8"),
                "test": ("cmn+f5", "cmn+m6", "cmn+m7")}
SPLIT_NOISES = {"train": ("white", "brown"), "valid": ("blue", "crackle"), "test": ("pink", "hum")}

# Silence before and after each clip's speech, seconds, drawn apart (uniform) for every clip: people start talking
# at any moment after pressing record. With a fixed 0.2 s either side the models learnt where speech starts in their
# window: the true clips cut out of a long recording with 0.2 s more context rose from 44 % to 72 % CER.
PAD_S = (0.05, 0.6)
MAX_CLIP_S = 4.9  # the pads shrink so that no clip outgrows the tiny model's 5 s window


@dataclass(frozen=True)
class Speaker:
    """A synthetic speaker: an espeak voice variant with its own speaking rate (wpm), pitch and range (0-100)."""
    speaker_id: str
    voice: str
    rate: int
    pitch: int
    pitch_range: int


def make_speakers(voices: list[str], per_voice: int, rng: random.Random, prefix: str) -> list[Speaker]:
    """``per_voice`` speakers for each voice, rate 150-220 wpm, pitch 25-75, range 30-90."""
    return [Speaker(f"{prefix}{i:02d}", v, rng.randint(150, 220), rng.randint(25, 75), rng.randint(30, 90))
            for i, (v, _) in enumerate((v, k) for v in voices for k in range(per_voice))]


def make_noise(kind: str, n: int, rng: np.random.Generator, sample_rate: int = SAMPLING_RATE) -> np.ndarray:
    """Unit-RMS noise of ``n`` samples: white, pink (power 1/f), brown (1/f^2), blue (rising as f), mains hum
    (60 Hz + harmonics) or crackle (sparse clicks over a faint hiss, like a loose cable)."""
    if kind == "crackle":
        sig = 0.2 * rng.standard_normal(n)
        clicks = rng.random(n) < 150 / sample_rate  # about 150 clicks a second, like static on a line
        sig[clicks] += rng.choice([-1.0, 1.0], clicks.sum()) * rng.uniform(0.5, 1.0, clicks.sum()) * 8
    elif kind == "hum":
        t = np.arange(n) / sample_rate
        sig = sum(np.sin(2 * np.pi * 60 * h * t + rng.uniform(0, 2 * np.pi)) / h for h in (1, 2, 3, 5))
        sig = sig + 0.1 * rng.standard_normal(n)
    elif kind in ("white", "pink", "brown", "blue"):
        spectrum = np.fft.rfft(rng.standard_normal(n))
        freqs = np.maximum(np.fft.rfftfreq(n), 1.0 / n)
        spectrum *= {"white": 1.0, "pink": freqs ** -0.5, "brown": freqs ** -1.0, "blue": freqs ** 0.5}[kind]
        sig = np.fft.irfft(spectrum, n)
    else:
        raise ValueError(f"noise kind must be one of {NOISE_KINDS}, got {kind!r}")
    return (sig / (np.sqrt(np.mean(sig ** 2)) + 1e-12)).astype(np.float32)


def add_noise(audio: np.ndarray, kind: str, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Mix noise of ``kind`` into ``audio`` at ``snr_db`` decibels (speech RMS over noise RMS)."""
    rms = float(np.sqrt(np.mean(audio ** 2))) or 1e-4
    noisy = audio + make_noise(kind, len(audio), rng) * rms / (10 ** (snr_db / 20))
    peak = float(np.max(np.abs(noisy))) or 1.0
    return (noisy / max(peak, 1.0) * 0.97 if peak > 1.0 else noisy).astype(np.float32)


@dataclass
class SplitSpec:
    """How one split is drawn: how many clips, which speakers, which noises at which SNRs."""
    name: str
    size: int
    speakers: list[Speaker]
    noises: tuple[str, ...] = ()       # empty: clean speech
    snr_db: tuple[float, float] = (10.0, 25.0)
    noise_prob: float = 0.7            # share of clips that get noise when noises are given
    register: str = "mixed"


def default_splits(num_train: int, num_test: int, seed: int = 0, num_unlabelled: int = 0,
                   num_valid: int = 0) -> list[SplitSpec]:
    """The course corpus: train, valid and test each have their own voices and noise kinds
    (:data:`SPLIT_VOICES`, :data:`SPLIT_NOISES`), so no speaker or noise is shared between them.

    ``num_valid`` > 0 adds the ``valid`` split, on which every training decision is taken. ``num_unlabelled`` > 0
    adds an ``unlabelled`` split: other sentences from the *training* speakers and noises (the untranscribed
    recordings a user has in plenty), never the valid or test ones. Each split draws from its own seed, so adding
    one does not change the others.
    """
    for name, n in (("num_train", num_train), ("num_test", num_test), ("num_valid", num_valid),
                    ("num_unlabelled", num_unlabelled)):
        if n < 0:
            raise ValueError(f"{name} must be 0 or more, got {n}")
    rng = random.Random(f"speakers-{seed}")
    train_speakers = make_speakers(list(SPLIT_VOICES["train"]), 3, rng, "tr")
    test_speakers = make_speakers(list(SPLIT_VOICES["test"]), 2, rng, "te")
    splits = [SplitSpec("train", num_train, train_speakers, SPLIT_NOISES["train"]),
              SplitSpec("test", num_test, test_speakers, SPLIT_NOISES["test"])]
    if num_valid:
        valid_speakers = make_speakers(list(SPLIT_VOICES["valid"]), 2, random.Random(f"valid-speakers-{seed}"), "va")
        splits.append(SplitSpec("valid", num_valid, valid_speakers, SPLIT_NOISES["valid"]))
    if num_unlabelled:
        splits.append(SplitSpec("unlabelled", num_unlabelled, train_speakers, SPLIT_NOISES["train"]))
    return splits


def plan_corpus(splits: list[SplitSpec], seed: int = 0, max_syllables: int = 14) -> list[dict]:
    """The exact list of utterances to synthesise (text, speaker, noise, SNR, split), from the seed alone."""
    rows = []
    for spec in splits:
        rng = random.Random(f"{seed}-{spec.name}")
        pads = random.Random(f"{seed}-{spec.name}-pads")  # its own stream: the texts stay those of the seed
        for i in range(spec.size):
            spk = spec.speakers[i % len(spec.speakers)] if i < len(spec.speakers) else rng.choice(spec.speakers)
            noisy = bool(spec.noises) and rng.random() < spec.noise_prob
            rows.append({
                "id": f"{spec.name}-{i:05d}", "split": spec.name,
                "text": make_sentence(rng, spec.register, max_syllables),
                **{k: v for k, v in asdict(spk).items()},
                "noise": rng.choice(spec.noises) if noisy else "none",
                "snr_db": round(rng.uniform(*spec.snr_db), 1) if noisy else None,
                "noise_seed": rng.randrange(2 ** 31),
                "lead_s": round(pads.uniform(*PAD_S), 3), "tail_s": round(pads.uniform(*PAD_S), 3),
            })
    return rows


def render(row: dict, sample_rate: int = SAMPLING_RATE, with_pads: bool = False):
    """Synthesise one planned utterance at ``sample_rate`` Hz, with its noise, and ``lead_s`` / ``tail_s`` seconds
    of padding before and after the speech (0.2 s when the row has none), both shrunk alike when the clip would
    outgrow :data:`MAX_CLIP_S`. Returns the samples, or with ``with_pads`` ``(samples, (lead_s, tail_s))`` with the
    padding it got (where the speech starts and ends)."""
    import librosa

    engine = Espeak.get()
    audio = engine.synthesize(row["text"], row["voice"], row["rate"], row["pitch"], row["pitch_range"])
    audio = librosa.resample(audio, orig_sr=engine.sample_rate, target_sr=sample_rate)
    lead, tail = row.get("lead_s", 0.2), row.get("tail_s", 0.2)
    room = MAX_CLIP_S - len(audio) / sample_rate
    if lead + tail > room:
        lead, tail = (max(room, 0.0) * s / (lead + tail) for s in (lead, tail))
    lead_n, tail_n = int(lead * sample_rate), int(tail * sample_rate)
    audio = np.concatenate([np.zeros(lead_n, np.float32), audio, np.zeros(tail_n, np.float32)])
    if row["noise"] != "none":
        audio = add_noise(audio, row["noise"], row["snr_db"], np.random.default_rng(row["noise_seed"]))
    audio = audio.astype(np.float32)
    return (audio, (lead_n / sample_rate, tail_n / sample_rate)) if with_pads else audio


def write_corpus(out_dir: str | Path, splits: list[SplitSpec], seed: int = 0, progress: bool = True,
                 max_syllables: int = 14) -> Path:
    """Synthesise every planned utterance to ``out_dir/wav/<id>.wav`` (16 kHz, 16-bit) and write
    ``out_dir/manifest.jsonl`` (one row per clip: audio path relative to ``out_dir``, text, duration in
    seconds, split, source, speaker, noise, and ``lead_s`` / ``tail_s``: the silence before and after the speech).
    Returns the manifest path. Reuses a finished corpus that was made with the same plan."""
    import soundfile as sf
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    plan = plan_corpus(splits, seed, max_syllables)
    manifest = out_dir / "manifest.jsonl"
    plan_file = out_dir / "plan.json"
    if manifest.exists() and plan_file.exists() and json.loads(plan_file.read_text("utf-8")) == plan:
        return manifest
    (out_dir / "wav").mkdir(parents=True, exist_ok=True)
    rows = []
    for row in tqdm(plan, desc="synthesising speech", unit="clip", disable=not progress):
        audio, (lead, tail) = render(row, with_pads=True)
        rel = Path("wav") / f"{row['id']}.wav"
        sf.write(out_dir / rel, audio, SAMPLING_RATE, subtype="PCM_16")
        rows.append({"audio": rel.as_posix(), "text": row["text"], "duration": round(len(audio) / SAMPLING_RATE, 3),
                     "split": row["split"], "source": "synthetic", "speaker": row["speaker_id"],
                     "voice": row["voice"], "noise": row["noise"], "snr_db": row["snr_db"],
                     "lead_s": round(lead, 4), "tail_s": round(tail, 4)})
    tmp = manifest.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    tmp.replace(manifest)
    plan_file.write_text(json.dumps(plan, ensure_ascii=False), "utf-8")
    return manifest
