"""Widgets for exploring in JupyterLab: thin views over plain functions that the notebooks also call directly.

A widget's callback never fires under papermill or nbval, so each notebook calls the plain function on a fixed input
(the result is what a batch run shows) and offers the widget beside it for a learner to play with. A widget shows
bad input (a file that is not audio, a recording too long) as a message, never a traceback.

* notebook 01: :func:`clip_view` / :func:`clip_browser` (slider over a manifest: audio, transcript, speaker and noise,
  log-mel image);
* notebook 03: :func:`threshold_effect` / :func:`threshold_explorer` (how many clips a CER threshold keeps, and the
  ones near it);
* notebook 06: :func:`rank_snapshot` / :func:`rank_player` (AdaLoRA's ranks at each re-allocation);
* notebook 07: :func:`try_clip` / :func:`transcription_box` (a test clip or your own recording through every model).
"""
from __future__ import annotations

import io
import tempfile
import time
from html import escape
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from .figures import plots
from .speech import text
from .speech.audio import AUDIO_SUFFIXES, SAMPLING_RATE, log_mel, read_row
from .whisper import longform
from .whisper.decode import transcribe_audio
from .whisper.models import load_whisper, window_seconds


# ---------------------------------------------------------------------------------------------
# Notebook 01: one clip of a manifest
# ---------------------------------------------------------------------------------------------
def clip_view(row: dict, feature_extractor=None):
    """One manifest row as a learner meets it: an audio player, the transcript, where it comes from (split, speaker,
    voice, noise and SNR where known) and, with a ``feature_extractor``, the log-mel image the model sees.
    Returns ``(html, figure or None)``."""
    from IPython.display import HTML, Audio

    audio = read_row(row, SAMPLING_RATE)
    facts = ", ".join(f"{k} {row[k]}" for k in ("split", "speaker", "voice", "noise", "snr_db")
                      if k in row and pd.notna(row[k]) and row[k] != "")
    heading = escape(str(row.get("text") or "(no transcript)"))
    html = HTML(f"<p><b>{heading}</b><br><small>{len(audio) / SAMPLING_RATE:.2f} s"
                f"{', ' + escape(facts) if facts else ''}</small></p>" + Audio(audio, rate=SAMPLING_RATE)._repr_html_())
    figure = None
    if feature_extractor is not None:
        mel = log_mel(feature_extractor, [audio])[0].numpy()
        figure, ax = plt.subplots(figsize=(8, 2.2))
        ax.imshow(mel, origin="lower", aspect="auto", cmap="magma")
        ax.axvline(len(audio) / feature_extractor.hop_length, color="w", ls="--", lw=1)
        ax.set(xlabel="frame (10 ms); dashed: end of the audio, then padding", ylabel="mel bin",
               title="log-mel features: what the encoder reads")
        figure.tight_layout()
        plt.close(figure)
    return html, figure


def clip_browser(rows: pd.DataFrame, feature_extractor=None):
    """A slider over ``rows`` that shows :func:`clip_view` of the chosen clip."""
    import ipywidgets as w

    slider = w.IntSlider(value=0, min=0, max=max(len(rows) - 1, 0), description="clip", continuous_update=False)
    out = w.Output()

    def show(_=None):
        out.outputs = ()
        try:
            html, figure = clip_view(rows.iloc[slider.value].to_dict(), feature_extractor)
            out.append_display_data(html)
            if figure is not None:
                out.append_display_data(figure)
        except Exception as err:  # noqa: BLE001 (a widget shows a message, never a traceback)
            out.append_stdout(f"cannot show clip {slider.value}: {err}\n")

    slider.observe(show, names="value")
    show()
    return w.VBox([slider, out])


# ---------------------------------------------------------------------------------------------
# Notebook 03: what a CER threshold keeps
# ---------------------------------------------------------------------------------------------
def threshold_effect(rows: pd.DataFrame, threshold: float, near: int = 3) -> tuple[dict, pd.DataFrame]:
    """What the pseudo-label filter would do at ``threshold`` (percent) to the rows that have a reference:
    ``({"kept", "dropped", "threshold"}, examples)``, the examples being the ``near`` kept and ``near`` dropped
    clips closest to the threshold. Degenerate outputs are dropped whatever their CER, as in the filter."""
    scored = rows[rows["cer"].notna()]
    degenerate = scored["status"].str.contains("empty output|repetition loop")
    kept = scored[(scored["cer"] <= threshold) & ~degenerate]
    dropped = scored.drop(kept.index)
    examples = pd.concat([kept.assign(side="kept").nlargest(near, "cer"),
                          dropped.assign(side="dropped").nsmallest(near, "cer")])
    return ({"threshold": threshold, "kept": len(kept), "dropped": len(dropped)},
            examples[["side", "cer", "reference", "teacher_text"]].reset_index(drop=True))


def threshold_explorer(rows: pd.DataFrame, threshold: float):
    """A slider over the CER threshold showing :func:`threshold_effect`; the notebook's parameter still decides."""
    import ipywidgets as w

    slider = w.FloatSlider(value=threshold, min=0.0, max=100.0, step=1.0, description="CER %",
                           continuous_update=False)
    out = w.Output()

    def show(_=None):
        out.outputs = ()
        counts, examples = threshold_effect(rows, slider.value)
        out.append_stdout(f"at {counts['threshold']:g}%: {counts['kept']} kept, {counts['dropped']} dropped "
                          f"(the parameter says {threshold:g}%)\n")
        out.append_display_data(examples.round(1))

    slider.observe(show, names="value")
    show()
    return w.VBox([slider, out])


# ---------------------------------------------------------------------------------------------
# Notebook 06: AdaLoRA's ranks as training moves
# ---------------------------------------------------------------------------------------------
def rank_snapshot(budget: list[dict], index: int, init_r: int):
    """The heat map of every adapted matrix's rank right after re-allocation number ``index`` (from
    ``rank_budget.json``, whose entries hold ``step``, ``total_rank`` and ``ranks``)."""
    from .adalora import ranks_table

    entry = budget[index]
    figure = plots.rank_heatmap(ranks_table(entry["ranks"]), init_r,
                                f"ranks after step {entry['step']} (total {entry['total_rank']})")
    plt.close(figure)
    return figure


def rank_player(budget: list[dict], init_r: int):
    """A slider over the re-allocations that redraws :func:`rank_snapshot`: watch AdaLoRA move rank around."""
    import ipywidgets as w

    slider = w.IntSlider(value=len(budget) - 1, min=0, max=max(len(budget) - 1, 0), description="allocation",
                         continuous_update=False)
    out = w.Output()

    def show(_=None):
        out.outputs = ()
        out.append_display_data(rank_snapshot(budget, slider.value, init_r))

    slider.observe(show, names="value")
    show()
    return w.VBox([slider, out])


# ---------------------------------------------------------------------------------------------
# Notebook 07: try it yourself
# ---------------------------------------------------------------------------------------------
def read_upload(value, sampling_rate: int = SAMPLING_RATE) -> tuple[np.ndarray, str]:
    """The audio of an ``ipywidgets.FileUpload`` value (ipywidgets 8: a tuple of dicts with ``name`` and
    ``content``), mono at ``sampling_rate``: ``(samples, file name)``. Any sample rate and channel count; wav,
    flac, ogg or mp3. Raises ``ValueError`` saying what is wrong (no file, several, another format, not audio,
    empty)."""
    import librosa
    import soundfile as sf

    files = list(value or ())
    if len(files) != 1:
        raise ValueError("choose one audio file (wav, flac, ogg or mp3)" if not files else
                         f"choose one file at a time, got {len(files)}")
    name = str(files[0]["name"])
    if Path(name).suffix.lower() not in AUDIO_SUFFIXES:
        raise ValueError(f"{name}: not one of the formats read here ({', '.join(AUDIO_SUFFIXES)})")
    try:
        audio, rate = sf.read(io.BytesIO(bytes(files[0]["content"])), dtype="float32", always_2d=True)
    except Exception as err:  # noqa: BLE001 (libsndfile's own words say why)
        raise ValueError(f"{name} cannot be read as audio ({str(err).splitlines()[0]})") from None
    audio = audio.mean(axis=1)
    if audio.size == 0:
        raise ValueError(f"{name} holds no samples")
    if rate != sampling_rate:
        audio = librosa.resample(audio, orig_sr=rate, target_sr=sampling_rate)
    return np.ascontiguousarray(audio, dtype=np.float32), name


class ModelShelf:
    """The models to try, loaded on first use and kept (small models) or loaded for each try and let go (models of
    more than ``keep_below`` parameters, so that five Breeze-sized stages never sit in memory together)."""

    def __init__(self, model_paths: dict[str, str], keep_below: float = 1e9, windows: dict | None = None):
        self.model_paths, self.keep_below, self._kept = dict(model_paths), keep_below, {}
        self.windows = dict(windows or {})  # name -> the WindowRule a short-window model runs with

    def get(self, name: str):
        if name in self._kept:
            return self._kept[name]
        loaded = load_whisper(self.model_paths[name])
        if sum(p.numel() for p in loaded.model.parameters()) < self.keep_below:
            self._kept[name] = loaded
        return loaded


@torch.no_grad()
def try_clip(shelf: ModelShelf, audio: np.ndarray, reference: str | None = None, fold: str | None = "t2s"
             ) -> pd.DataFrame:
    """Every model of ``shelf`` transcribes ``audio`` (16 kHz samples): one row per model with its transcript, the
    seconds it took and, with a ``reference``, the CER (percent). A clip runs within the decoding budget, over the
    model's short window when the shelf has one for it; audio longer than a model's window is transcribed piece by
    piece, cut at pauses, with full windows (``longform.transcribe_long``)."""
    rows = []
    for name in shelf.model_paths:
        loaded = shelf.get(name)
        started = time.perf_counter()
        if len(audio) / SAMPLING_RATE <= window_seconds(loaded.feature_extractor):
            said, _ = transcribe_audio(loaded.model, loaded.processor, audio, shelf.windows.get(name))
        else:
            with tempfile.TemporaryDirectory() as tmp:
                import soundfile as sf

                path = Path(tmp) / "recording.wav"
                sf.write(path, audio, SAMPLING_RATE)
                said = longform.transcribe_long(loaded, path, out_dir=tmp, method="pauses").text
        seconds = time.perf_counter() - started
        rows.append({"model": name, "transcript": said, "seconds": round(seconds, 3),
                     **({"CER %": round(text.cer([reference], [said], fold=fold), 1)} if reference else {})})
    return pd.DataFrame(rows).set_index("model")


def try_clip_html(table: pd.DataFrame, reference: str | None = None, fold: str | None = "t2s") -> str:
    """:func:`try_clip`'s table as HTML: each model's transcript and time, aligned with the reference when there is
    one (orange: substituted, red: deleted, green: inserted)."""
    blocks = []
    for name, row in table.iterrows():
        head = f"<b>{escape(name)}</b> <small>({row['seconds']:.2f} s"
        head += f", CER {row['CER %']:.1f}%)</small>" if reference else ")</small>"
        body = (plots.alignment_html(text.align(reference, row["transcript"], fold=fold)) if reference
                else f"<p>{escape(row['transcript'])}</p>")
        blocks.append(f"<div style='margin-bottom:8px'>{head}{body}</div>")
    return "".join(blocks)


def transcription_box(shelf: ModelShelf, rows: pd.DataFrame, fold: str | None = "t2s"):
    """Choose a clip of ``rows`` (its reference shown) or upload a recording, press Transcribe, and see every
    model's transcript side by side (:func:`try_clip`). An upload wins over the chosen clip; bad files get a
    message."""
    import ipywidgets as w
    from IPython.display import HTML, Audio

    options = [(f"{i}: {t}", i) for i, t in enumerate(rows["text"])]
    choose = w.Dropdown(options=options, description="test clip", layout=w.Layout(width="60%"))
    upload = w.FileUpload(accept=",".join(AUDIO_SUFFIXES), multiple=False, description="or upload")
    button = w.Button(description="Transcribe", button_style="primary", icon="play")
    out = w.Output()

    def run(_=None):
        out.outputs = ()
        try:
            if upload.value:
                audio, name = read_upload(upload.value)
                reference, title = None, f"your recording {name} ({len(audio) / SAMPLING_RATE:.1f} s)"
            else:
                row = rows.iloc[choose.value].to_dict()
                audio, reference, title = read_row(row, SAMPLING_RATE), row["text"], f"test clip {choose.value}"
            out.append_stdout(f"transcribing {title} with {len(shelf.model_paths)} models...\n")
            table = try_clip(shelf, audio, reference, fold)
            out.outputs = ()
            player = Audio(audio, rate=SAMPLING_RATE)._repr_html_()
            heard = f"<p>reference: {escape(reference)}</p>" if reference else ""
            out.append_display_data(HTML(f"<p><b>{escape(title)}</b></p>{player}{heard}"
                                         + try_clip_html(table, reference, fold)))
        except Exception as err:  # noqa: BLE001 (a widget shows a message, never a traceback)
            out.outputs = ()
            out.append_stdout(f"cannot transcribe: {err}\n")

    button.on_click(run)
    return w.VBox([w.HBox([choose, upload, button]), out])
