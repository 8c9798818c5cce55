"""Offline synthetic Taiwanese-Mandarin speech: a template grammar, espeak-ng voices, noise.

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

# ---------------------------------------------------------------------------------------------
# The grammar. Slot fillers are lists of (text, syllables); English words count as 2 syllables.
# ---------------------------------------------------------------------------------------------
DIGITS = "零一二三四五六七八九"
PEOPLE = ["我", "你", "他", "她", "我們", "老師", "媽媽", "爸爸", "阿嬤", "同事", "經理", "小陳", "小林", "王先生",
          "李小姐"]
PLACES = ["台北車站", "基隆", "台中", "台南", "新竹", "花蓮", "淡水", "板橋", "士林夜市", "台大醫院",
          "市政府", "公司", "學校", "圖書館", "便利商店", "機場", "捷運站", "公園", "餐廳", "銀行"]
ACTIONS = ["買票", "吃飯", "看電影", "上課", "開會", "等公車", "買咖啡", "看醫生", "散步", "領錢",
           "搭捷運", "寄包裹", "喝茶", "買早餐", "打球", "逛街"]
ITEMS = ["便當", "雨傘", "咖啡", "車票", "手機", "電腦", "書包", "蛋糕", "外套", "水果"]
WEATHER = ["很熱", "很冷", "會下雨", "天氣很好", "有颱風", "比較涼", "很悶熱"]
DAY_PARTS = ["早上", "中午", "下午", "晚上"]
WEEKDAYS = ["一", "二", "三", "四", "五", "六", "天"]
OFFICE_WORDS = ["meeting", "email", "deadline", "project", "demo", "report", "schedule", "budget"]
OFFICE_VERBS = ["update", "check", "review", "confirm", "cancel"]

GENERIC_TEMPLATES = [
    "{person}{time}要去{place}{action}",
    "{date}{place}{weather}",
    "請在{time}以前到{place}",
    "這個{item}一共{price}元",
    "{person}每天{day_part}都會{action}",
    "從{place}到{place}大概要{minutes}分鐘",
    "我的電話是{phone}",
    "{date}是{person}的生日",
    "{person}{day_part}在{place}{action}",
    "{place}的{item}賣{price}元",
]
OFFICE_TEMPLATES = [
    "{time}的{office}改到{place}",
    "記得在{time}以前寄email給{person}",
    "這個project的deadline是{date}",
    "{person}說{date}要demo",
    "{person}{day_part}要跟經理開meeting",
    "{office}的時間我{time}再{verb}",
    "請幫我{verb}一下這個{office}",
    "{date}的{office}要{verb}",
]
REGISTERS = {"generic": GENERIC_TEMPLATES, "office": OFFICE_TEMPLATES, "mixed": GENERIC_TEMPLATES + OFFICE_TEMPLATES}


def chinese_number(n: int, *, liang: bool = False) -> str:
    """Read an integer 0..99999 in Mandarin characters: 305 -> 三百零五, 12 -> 十二, 2 -> 二 (兩 if liang)."""
    if not 0 <= n <= 99_999:
        raise ValueError(f"chinese_number handles 0..99999, got {n}")
    if n == 0:
        return "零"
    units = [(10_000, "萬"), (1000, "千"), (100, "百"), (10, "十"), (1, "")]
    out, zero_pending, started = [], False, False
    for value, unit in units:
        digit = (n // value) % 10
        if digit == 0:
            zero_pending = started
            continue
        if zero_pending:
            out.append("零")
            zero_pending = False
        if not (digit == 1 and value == 10 and not started):  # 十二, not 一十二
            use_liang = liang and digit == 2 and (value >= 100 or n == 2)  # 兩百, 兩千; but 二十, 十二
            out.append("兩" if use_liang else DIGITS[digit])
        out.append(unit)
        started = True
    return "".join(out)


def _time(rng: random.Random) -> str:
    hour = rng.randint(1, 12)
    minute = rng.choice([0, 0, 15, 30, 30, 45, 10, 20])
    hour_text = "兩" if hour == 2 else chinese_number(hour)
    tail = {0: "點", 30: "點半"}.get(minute, f"點{chinese_number(minute)}分")
    return rng.choice(DAY_PARTS) + hour_text + tail


def _date(rng: random.Random) -> str:
    if rng.random() < 0.4:
        day = ["今天", "明天", "後天", "下禮拜"][rng.randrange(4)]
        return day + ("" if rng.random() < 0.5 else "星期" + rng.choice(WEEKDAYS))
    return f"{chinese_number(rng.randint(1, 12))}月{chinese_number(rng.randint(1, 30))}號"


SLOTS = {
    "person": lambda r: r.choice(PEOPLE),
    "place": lambda r: r.choice(PLACES),
    "action": lambda r: r.choice(ACTIONS),
    "item": lambda r: r.choice(ITEMS),
    "weather": lambda r: r.choice(WEATHER),
    "day_part": lambda r: r.choice(DAY_PARTS),
    "time": _time,
    "date": _date,
    "price": lambda r: chinese_number(r.choice([r.randint(20, 99), r.randint(1, 19) * 50, r.randint(100, 2000)]),
                                      liang=True),
    "minutes": lambda r: chinese_number(r.choice([5, 10, 15, 20, 25, 30, 40, 45, 50])),
    "phone": lambda r: "零九" + "".join(r.choice(DIGITS) for _ in range(8)),
    "office": lambda r: r.choice(OFFICE_WORDS),
    "verb": lambda r: r.choice(OFFICE_VERBS),
}


def syllables(text: str) -> int:
    """Rough spoken length: one per CJK character, two per English word."""
    latin = sum(1 for w in "".join(c if c.isascii() and c.isalpha() else " " for c in text).split())
    return sum(1 for c in text if not c.isascii()) + 2 * latin


def make_sentence(rng: random.Random, register: str = "mixed", max_syllables: int = 14) -> str:
    """Draw one sentence of the grammar; redraws until it has at most ``max_syllables`` syllables."""
    if register not in REGISTERS:
        raise ValueError(f"register must be one of {sorted(REGISTERS)}, got {register!r}")
    for _ in range(1000):
        template = rng.choice(REGISTERS[register])
        text = template.format_map(_SlotFiller(rng))
        if syllables(text) <= max_syllables:
            return text
    raise ValueError(f"the grammar makes no sentence of at most {max_syllables} syllables; allow more (10 or above)")


class _SlotFiller(dict):
    def __init__(self, rng):
        super().__init__()
        self.rng = rng

    def __missing__(self, key):  # each {slot} occurrence draws afresh ("從{place}到{place}")
        return SLOTS[key](self.rng)


def grammar_characters() -> set[str]:
    """Every CJK character the grammar can produce (to check they are all readable by espeak)."""
    pieces = PEOPLE + PLACES + ACTIONS + ITEMS + WEATHER + DAY_PARTS + WEEKDAYS
    pieces += [DIGITS, "十百千萬兩點半分月號星期今明後天下禮拜"]
    pieces += GENERIC_TEMPLATES + OFFICE_TEMPLATES
    return {c for p in pieces for c in p if "\u4e00" <= c <= "\u9fff"}


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
