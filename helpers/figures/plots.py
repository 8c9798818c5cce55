"""Pictures and tables the notebooks show: data statistics, audio players, training curves.

Plots carry no Chinese text (a CJK font is not on every machine); characters go into tables.
"""
from __future__ import annotations

from collections import Counter
from html import escape

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.patches import Rectangle

from ..speech.audio import SAMPLING_RATE, read_row
from ..speech.text import align, mixed_tokens


def split_counts(splits: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Utterances, hours and mean duration per split and source."""
    rows = []
    for name, part in splits.items():
        for source, grp in part.groupby("source"):
            rows.append({"split": name, "source": source, "utterances": len(grp),
                         "hours": round(grp["duration"].sum() / 3600, 3),
                         "mean duration (s)": round(grp["duration"].mean(), 2)})
    return pd.DataFrame(rows).set_index(["split", "source"])


def duration_histogram(splits: dict[str, pd.DataFrame], max_duration_s: float | None = None):
    """Histogram of clip durations per split (seconds), with the model's window as a dashed line."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    for name, part in splits.items():
        axes[0].hist(part["duration"], bins=30, alpha=0.6, label=f"{name} ({len(part)})")
        lengths = part["text"].str.len()
        axes[1].hist(lengths, bins=range(0, int(lengths.max()) + 3), alpha=0.6, label=name)
    if max_duration_s:
        axes[0].axvline(max_duration_s, color="k", ls="--", lw=1, label=f"window {max_duration_s:g} s")
    axes[0].set(xlabel="duration (s)", ylabel="utterances", title="Audio length")
    axes[1].set(xlabel="characters per transcript", ylabel="utterances", title="Transcript length")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def cut_points(audio, sampling_rate: int, pieces: list[tuple[float, float]], clips: pd.DataFrame | None = None):
    """Left: the waveform of a long recording with the pieces ``audio.cut_at_pauses`` made shaded (alternating
    colours) and, when ``clips`` (``start``, ``end`` in seconds) are known, where each spoken clip lies. Right: how
    long the pieces are."""
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(13, 3.0), gridspec_kw={"width_ratios": [4, 1]})
    t = np.arange(len(audio)) / sampling_rate
    step = max(1, len(audio) // 20_000)  # a readable envelope, not every sample
    axes[0].plot(t[::step], audio[::step], color="0.35", lw=0.5)
    for k, (start, end) in enumerate(pieces):
        axes[0].axvspan(start, end, color=f"C{k % 2}", alpha=0.25)
    if clips is not None:
        for _, clip in clips.iterrows():
            axes[0].plot([clip["start"], clip["end"]], [-1.02, -1.02], color="k", lw=2, solid_capstyle="butt")
    axes[0].set(xlabel="seconds", ylim=(-1.08, 1.0), xlim=(0, len(audio) / sampling_rate),
                title="pieces (shaded) cut at pauses" + ("; black: the spoken clips" if clips is not None else ""))
    axes[1].hist([end - start for start, end in pieces], bins=10, color="C0")
    axes[1].set(xlabel="piece length (s)", ylabel="pieces", title="piece lengths")
    fig.tight_layout()
    return fig


def character_table(texts, top: int = 15) -> pd.DataFrame:
    """The ``top`` most frequent characters (Latin letters grouped as words) with counts and share (%)."""
    counts = Counter(tok for t in texts for tok in mixed_tokens(t, fold=None))
    total = sum(counts.values())
    return pd.DataFrame([{"token": tok, "count": n, "share %": round(100 * n / total, 2)}
                         for tok, n in counts.most_common(top)])


def audio_examples(rows: pd.DataFrame, n: int = 3, columns: tuple[str, ...] = ("text",)):
    """Audio players for the first ``n`` rows, each with the ``columns`` given (transcripts, CER, status...)
    and, where the manifest has them, speaker and noise. Returns an HTML block for the notebook."""
    from IPython.display import HTML, Audio

    blocks = []
    for rec in rows.head(n).to_dict("records"):
        fields = "<br>".join(f"<b>{escape(c)}</b>: {escape(_fmt(rec[c]))}" for c in columns if c in rec)
        extra = ", ".join(f"{k} {rec[k]}" for k in ("speaker", "noise", "snr_db") if k in rec and pd.notna(rec[k]))
        blocks.append(f"<p>{fields} <small>({rec['duration']:.2f} s{', ' + extra if extra else ''})</small></p>"
                      + Audio(read_row(rec), rate=SAMPLING_RATE)._repr_html_())
    return HTML("".join(blocks))


def _fmt(value) -> str:
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def cer_histogram(rows: pd.DataFrame, threshold: float):
    """Per-utterance CER of the teacher against the reference (%), with the filter threshold; a bar per status."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.2), gridspec_kw={"width_ratios": [3, 2]})
    cer = rows["cer"].dropna().clip(upper=100)
    axes[0].hist(cer, bins=[0, 1e-9, *range(5, 105, 5)], color="C0")
    axes[0].axvline(threshold, color="C3", ls="--", label=f"threshold {threshold:g}%")
    axes[0].set(xlabel="teacher CER against the reference (%, clipped at 100)", ylabel="utterances",
                title="How far is the teacher from the reference?")
    axes[0].legend()
    counts = rows["status"].value_counts()
    colors = ["C2" if s.startswith("kept") else "C3" for s in counts.index[::-1]]
    axes[1].barh(counts.index[::-1], counts.values[::-1], color=colors)
    axes[1].set(xlabel="utterances", title="kept or filtered")
    fig.tight_layout()
    return fig


def confidence_vs_cer(labelled: pd.DataFrame, cer_threshold: float, logprob_threshold: float | None,
                      unlabelled: pd.DataFrame | None = None):
    """Left: the teacher's mean token log-probability against its CER on clips with a reference (``labelled``:
    rows of ``pseudo.label_rows``, e.g. the validation clips), with the CER threshold and the confidence threshold:
    why confidence can stand in for a missing reference. Right: the confidence of the clips without one
    (``unlabelled``), with the threshold that filters them."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.4), gridspec_kw={"width_ratios": [3, 2]})
    good = labelled["cer"] <= cer_threshold
    axes[0].scatter(labelled.loc[good, "avg_logprob"], labelled.loc[good, "cer"].clip(upper=150), s=10, color="C2",
                    label=f"CER <= {cer_threshold:g}%")
    axes[0].scatter(labelled.loc[~good, "avg_logprob"], labelled.loc[~good, "cer"].clip(upper=150), s=10, color="C3",
                    label=f"CER > {cer_threshold:g}%")
    axes[0].axhline(cer_threshold, color="grey", ls=":", lw=1)
    for ax in axes:
        if logprob_threshold is not None:
            ax.axvline(logprob_threshold, color="k", ls="--", lw=1, label=f"keep >= {logprob_threshold:.2f}")
    axes[0].set(xlabel="mean token log-probability (teacher's confidence)", ylabel="CER (%, clipped at 150)",
                title="clips with a reference")
    axes[0].legend(fontsize=8)
    if unlabelled is not None and len(unlabelled):
        axes[1].hist(unlabelled["avg_logprob"], bins=30, color="C0")
    axes[1].set(xlabel="mean token log-probability", ylabel="clips", title="clips without a reference")
    fig.tight_layout()
    return fig


def training_curves(records: list[dict], title: str = "training"):
    """Loss (train and eval), eval CER and memory against the optimizer step, from ``LiveHistory`` records."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))

    def series(key):
        pts = [(r["step"], r[key]) for r in records if key in r]
        return ([s for s, _ in pts], [v for _, v in pts]) if pts else None

    for key, label in (("loss", "train"), ("eval_loss", "eval"), ("ce", "train CE"), ("kl", "train KL")):
        if (xy := series(key)):
            axes[0].plot(*xy, marker="." if key == "eval_loss" else None, label=label)
    axes[0].set(xlabel="step", ylabel="loss", title=f"{title}: loss")
    if (xy := series("eval_cer")):
        axes[1].plot(*xy, marker="o", color="C3")
        for x, y in zip(*xy):
            axes[1].annotate(f"{y:.1f}", (x, y), textcoords="offset points", xytext=(0, 5), ha="center", fontsize=8)
    axes[1].set(xlabel="step", ylabel="CER (%)", title="eval CER (lower is better)")
    memory = (("gpu_allocated_mb", "GPU allocated"), ("gpu_peak_mb", "GPU peak"), ("rss_mb", "process RSS (CPU)"))
    for key, label in memory:
        if (xy := series(key)):
            axes[2].plot(*xy, label=label)
    axes[2].set(xlabel="step", ylabel="MB", title="memory")
    for ax in (axes[0], axes[2]):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def budget_plan(planned: pd.DataFrame, tinit: int, final_start: int, title: str):
    """The planned total rank per step (from ``adalora.planned_budget``) with the phase boundaries."""
    fig, ax = plt.subplots(figsize=(7, 2.8))
    ax.plot(planned["step"], planned["budget"], label="planned total rank")
    for x, name in ((tinit, "tinit"), (final_start, "max_steps - tfinal")):
        ax.axvline(x, color="grey", ls=":", lw=1)
        ax.annotate(name, (x, planned["budget"].max()), fontsize=8, ha="center", va="bottom")
    ax.set(xlabel="optimizer step", ylabel="total rank", title=title)
    fig.tight_layout()
    return fig


def rank_heatmap(ranks: pd.DataFrame, init_r: int, title: str = "final rank per matrix", ax=None):
    """Heat map of the rank of every adapted matrix (rows: encoder/decoder layer, columns: matrix such as ``self q``
    or ``fc1``) from ``adalora.ranks_table``; colours from 0 to ``init_r``. Returns the figure."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 3.4))
    else:
        fig = ax.figure
    heat = ranks.assign(row=ranks["part"].str[:3] + "." + ranks["layer"].astype(str)).pivot(
        index="row", columns="matrix", values="rank")
    image = ax.imshow(heat.values, cmap="viridis", vmin=0, vmax=init_r, aspect="auto")
    ax.set(xticks=range(heat.shape[1]), yticks=range(heat.shape[0]), title=title)
    ax.set_xticklabels(heat.columns, rotation=45, ha="right", fontsize=8)
    ax.set_yticklabels(heat.index, fontsize=8)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    return fig


def adalora_ranks(planned: pd.DataFrame, budget: list[dict], ranks: pd.DataFrame, init_r: int):
    """Left: planned against actual total rank per step. Right: heat map of the final rank of every adapted
    matrix (:func:`rank_heatmap`)."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.4))
    axes[0].plot(planned["step"], planned["budget"], ls="--", label="planned")
    if budget:
        done = pd.DataFrame(budget)
        axes[0].plot(done["step"], done["total_rank"], marker=".", ls="", label="after each allocation")
    axes[0].set(xlabel="optimizer step", ylabel="total rank", title="rank budget")
    axes[0].legend(fontsize=8)
    return rank_heatmap(ranks, init_r, ax=axes[1])


def model_comparison(results: pd.DataFrame, test_set: str):
    """Left: test CER per model with its 95 % bootstrap interval. Middle: speed-up over the reference model, the
    whisker spanning what the timing rounds allow. Right: accuracy against speed, one point per model (lower
    right is better). From ``report.add_comparisons``; an export (no parameter count) is labelled with its size."""
    rows = results[(results["test_set"] == test_set) & (results["status"] == "ok")]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    names = rows["model"].tolist()
    colors = [f"C{i}" for i in range(len(names))]
    x = range(len(names))

    def whiskers(low, high, mid):
        return [(mid - rows[low]).clip(lower=0).to_numpy(), (rows[high] - mid).clip(lower=0).to_numpy()]

    bars = axes[0].bar(x, rows["cer"], color=colors, yerr=whiskers("cer_low", "cer_high", rows["cer"]), capsize=4)
    axes[0].bar_label(bars, fmt="%.1f", fontsize=8, padding=2)
    axes[0].set(title="test CER (%) with 95% interval, lower is better")
    bars = axes[1].bar(x, rows["speed_up"], color=colors, capsize=4,
                       yerr=whiskers("speed_up_low", "speed_up_high", rows["speed_up"]))
    axes[1].bar_label(bars, fmt="%.2fx", fontsize=8, padding=2)
    axes[1].axhline(1, color="grey", lw=1, ls=":")
    axes[1].set(title=f"speed-up over the {results.attrs.get('reference', 'reference')} (rounds' range)")
    for ax in axes[:2]:
        ax.set_xticks(list(x))
        ax.set_xticklabels(names, rotation=25, ha="right", fontsize=8)
    for (_, r), color in zip(rows.iterrows(), colors):
        axes[2].errorbar(r["rtfx"], r["cer"], yerr=[[r["cer"] - r["cer_low"]], [r["cer_high"] - r["cer"]]],
                         xerr=[[r["rtfx"] - r["rtfx_low"]], [r["rtfx_high"] - r["rtfx"]]], fmt="o", color=color,
                         capsize=3, label=f"{r['model']} ({r['params_M']:.1f}M)" if pd.notna(r.get("params_M"))
                         else f"{r['model']} ({r['size_MB']:.1f} MB)")
    axes[2].set(xlabel="RTFx (audio s per compute s), higher is faster", ylabel="CER (%)",
                title="accuracy against speed")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    return fig


def alignment_html(pairs: list[tuple[str, str | None, str | None]]) -> str:
    """An aligned reference/prediction (``text.align`` output) as two HTML rows: substitutions in orange,
    deletions struck out in red on the reference row, insertions in green on the prediction row."""
    style = {"equal": "", "substitute": "background:#fd8", "delete": "background:#f99;text-decoration:line-through",
             "insert": "background:#9e9"}
    ref, pred = [], []
    for op, r, p in pairs:
        cell = f'style="{style[op]}"'
        ref.append(f"<td {cell}>{escape(r) if r is not None else '·'}</td>")
        pred.append(f"<td {cell}>{escape(p) if p is not None else '·'}</td>")
    return ('<table style="border-collapse:collapse;font-size:90%"><tr><th>ref</th>' + "".join(ref)
            + "</tr><tr><th>pred</th>" + "".join(pred) + "</tr></table>")


def worst_examples(worst: pd.DataFrame, fold: str | None = "t2s"):
    """Audio players for the worst utterances, each with its CER and the aligned reference and prediction."""
    from IPython.display import HTML, Audio

    blocks = []
    for rec in worst.to_dict("records"):
        blocks.append(f"<p><b>CER {rec['cer']:.0f}%</b> "
                      f"<small>({rec['duration']:.2f} s, {escape(rec['model'])})</small>"
                      f"<br>reference: {escape(rec['reference'])}<br>prediction: {escape(str(rec['prediction']))}</p>"
                      + alignment_html(align(rec["reference"], str(rec["prediction"]), fold=fold))
                      + Audio(read_row(rec), rate=SAMPLING_RATE)._repr_html_())
    return HTML("".join(blocks))


def plot_layer_map(n_teacher_dec: int, decoder_map: list[int], n_teacher_enc: int | None = None,
                   encoder_map: list[int] | None = None):
    """Teacher layers as a column of boxes, lines to the student layers they initialise; one panel per part.

    The encoder panel is drawn when ``n_teacher_enc`` and ``encoder_map`` are given. Returns the figure.
    """
    parts = [("decoder", n_teacher_dec, decoder_map)]
    if n_teacher_enc is not None and encoder_map is not None:
        parts.insert(0, ("encoder", n_teacher_enc, encoder_map))
    tallest = max(n for _, n, _ in parts)
    fig, axes = plt.subplots(1, len(parts), figsize=(4.2 * len(parts), min(12.0, 1.5 + 0.3 * tallest)), squeeze=False)
    for ax, (name, n_teacher, mapping) in zip(axes[0], parts):
        box_h = 0.8
        student_y = [n_teacher / 2] if len(mapping) == 1 else [
            j * (n_teacher - 1) / (len(mapping) - 1) for j in range(len(mapping))]
        font = 8 if n_teacher <= 16 else 6
        for i in range(n_teacher):  # layer 0 (next to the input) at the bottom
            used = i in mapping
            ax.add_patch(Rectangle((0, i - box_h / 2), 1, box_h, facecolor="C0" if used else "0.9", edgecolor="0.4"))
            ax.text(0.5, i, str(i), ha="center", va="center", fontsize=font, color="white" if used else "0.3")
        for j, (t, y) in enumerate(zip(mapping, student_y)):
            ax.add_patch(Rectangle((2.5, y - box_h / 2), 1, box_h, facecolor="C1", edgecolor="0.4"))
            ax.text(3.0, y, str(j), ha="center", va="center", fontsize=font, color="white")
            ax.annotate("", xy=(2.5, y), xytext=(1, t), arrowprops=dict(arrowstyle="->", color="0.3"))
        ax.text(0.5, n_teacher - 0.2, f"teacher\n{n_teacher} layers", ha="center", va="bottom", fontsize=9)
        ax.text(3.0, n_teacher - 0.2, f"student\n{len(mapping)} layers", ha="center", va="bottom", fontsize=9)
        ax.set(xlim=(-0.3, 3.8), ylim=(-1, n_teacher + 1.2), title=f"{name}: which layer starts which")
        ax.axis("off")
    fig.tight_layout()
    return fig
