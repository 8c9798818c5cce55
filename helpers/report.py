"""Notebook 07's reading of the results: intervals, speed-ups with their spread, verdicts, the table to read.

:func:`add_comparisons` turns what :func:`evaluate.evaluate_models` measured into comparisons one can trust:
each model's test CER with a 95 % bootstrap interval (utterances resampled 1000 times, fixed seed), its paired
difference from the reference teacher on the same utterances with a verdict, and its speed-up over the
teacher as the ratio of median timing rounds with the range the rounds allow.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .figures import stats
from .files import TEACHERS, read_json
from .speech import text
from .whisper.short_window import RULE_FILE


def add_comparisons(results: pd.DataFrame, predictions: pd.DataFrame, reference: str | None = None,
                    resamples: int = stats.RESAMPLES, seed: int = stats.SEED) -> pd.DataFrame:
    """``results`` with, per (test set, model): ``cer_low``/``cer_high`` (95 % bootstrap interval of the test
    CER), ``cer_diff`` with ``cer_diff_low``/``cer_diff_high`` and ``cer_verdict`` (paired difference from the
    ``reference`` model in points: "better", "worse" or "within noise"), ``rtfx_low``/``rtfx_high`` (over the
    timing rounds), ``speed_up`` (median compute time of the reference over the model's) with
    ``speed_up_low``/``speed_up_high`` and ``speed_verdict`` ("faster", "slower", "within timing noise" when the
    two models' round times overlap). ``reference`` defaults to ``results.attrs["reference"]``."""
    table = results.copy()
    reference = reference or results.attrs.get("reference")
    table.attrs.update(results.attrs, reference=reference)
    for column in ("cer_low", "cer_high", "cer_diff", "cer_diff_low", "cer_diff_high", "rtfx_low", "rtfx_high",
                   "speed_up", "speed_up_low", "speed_up_high"):
        table[column] = float("nan")
    table["cer_verdict"], table["speed_verdict"] = None, None
    for i, row in table[table["status"] == "ok"].iterrows():
        utt = predictions[(predictions["model"] == row["model"]) & (predictions["test_set"] == row["test_set"])]
        interval = stats.bootstrap_rate(utt["errors"], utt["n_ref"], resamples, seed)
        table.loc[i, ["cer_low", "cer_high"]] = interval["low"], interval["high"]
        table.loc[i, ["rtfx_low", "rtfx_high"]] = (row["audio_s"] / row["compute_s_max"],
                                                   row["audio_s"] / row["compute_s_min"])
        ref = table[(table["model"] == reference) & (table["test_set"] == row["test_set"]) & (table["status"] == "ok")]
        if ref.empty or row["model"] == reference:
            continue
        ref, ref_utt = ref.iloc[0], predictions[(predictions["model"] == reference) &
                                                (predictions["test_set"] == row["test_set"])]
        diff = stats.paired_difference(utt["errors"].to_numpy(), ref_utt["errors"].to_numpy(), utt["n_ref"], resamples,
                                       seed)
        table.loc[i, ["cer_diff", "cer_diff_low", "cer_diff_high"]] = diff["difference"], diff["low"], diff["high"]
        table.loc[i, "cer_verdict"] = stats.verdict(diff)
        mine = {"min": row["compute_s_min"], "max": row["compute_s_max"]}
        theirs = {"min": ref["compute_s_min"], "max": ref["compute_s_max"]}
        table.loc[i, ["speed_up", "speed_up_low", "speed_up_high"]] = (
            ref["compute_s"] / row["compute_s"], ref["compute_s_min"] / row["compute_s_max"],
            ref["compute_s_max"] / row["compute_s_min"])
        table.loc[i, "speed_verdict"] = ("within timing noise" if stats.overlap(mine, theirs) else
                                         "faster" if row["compute_s"] < ref["compute_s"] else "slower")
    ref_rows = (table["model"] == reference) & (table["status"] == "ok")
    table.loc[ref_rows, ["speed_up", "speed_up_low", "speed_up_high", "cer_diff"]] = 1.0, 1.0, 1.0, 0.0
    return table


def export_rows(shipping: pd.DataFrame, test_set: str, rows: pd.DataFrame, fold: str | None
                ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The CTranslate2 rows of notebook 07's shipping table (``export.ship``: index = model name, its
    ``predictions``) in the shape of the results and predictions tables (``whisper.measure``), so that the exports
    sit in ``results.csv`` beside the transformers models; ``rows``: the ``test_set`` utterances (audio, duration,
    text). :func:`add_comparisons` then adds the CER interval and the paired difference; the speed-up over the
    teacher is the shipping table's own (the exports and the transformers teacher took turns in one timing run),
    with its range and verdict."""
    ship = shipping[shipping["runtime"] != "transformers"]
    teacher = shipping[shipping["runtime"] == "transformers"].iloc[0]
    results, predictions = [], []
    refs = rows["text"].tolist()
    for name, row in ship.iterrows():
        results.append({"test_set": test_set, "model": name, "path": row["path"],
                        "status": "ok", "runtime": row["runtime"], "quantization": row["quantization"],
                        "size_MB": row["size_mb"] * 1e6 / 2**20, "window": row["window"], "utterances": len(rows),
                        "cer": row["cer"], "wer": row["wer"], "mer": row["mer"], "exact_match": row["exact_match"],
                        "audio_s": row["audio_s"], "compute_s": row["compute_s"],
                        "compute_s_min": row["compute_s_min"], "compute_s_max": row["compute_s_max"],
                        "rtfx": row["rtfx"], "encoder_s": row["encoder_s"], "decoder_s": row["decoder_s"],
                        "outputs": row["outputs"], "looped": row["looped"],
                        "timed_against": f"{teacher.name}, same timing run"})
        utt = pd.DataFrame(text.utterance_scores(refs, list(row["predictions"]), fold=fold))
        predictions.append(pd.DataFrame({"test_set": test_set, "model": name, "audio": rows["audio"].to_numpy(),
                                         "duration": rows["duration"].to_numpy(), "reference": refs,
                                         "prediction": list(row["predictions"]), "cer": utt["cer"],
                                         "wer": utt["wer"], "mer": utt["mer"],
                                         "errors": utt["char_sub"] + utt["char_del"] + utt["char_ins"],
                                         "n_ref": utt["char_n_ref"]}))
    return pd.DataFrame(results), (pd.concat(predictions, ignore_index=True) if predictions else pd.DataFrame())


def ship_speed(results: pd.DataFrame, shipping: pd.DataFrame) -> pd.DataFrame:
    """``results`` with the export rows' speed-up over the teacher taken from the shipping table's own timing run
    (median ratio, the range the rounds allow, the verdict), not from the other run's teacher."""
    table = results.copy()
    teacher = shipping[shipping["runtime"] == "transformers"].iloc[0]
    for name, row in shipping[shipping["runtime"] != "transformers"].iterrows():
        i = table.index[table["model"] == name]
        mine = {"min": row["compute_s_min"], "max": row["compute_s_max"]}
        theirs = {"min": teacher["compute_s_min"], "max": teacher["compute_s_max"]}
        table.loc[i, ["speed_up", "speed_up_low", "speed_up_high"]] = (
            teacher["compute_s"] / row["compute_s"], teacher["compute_s_min"] / row["compute_s_max"],
            teacher["compute_s_max"] / row["compute_s_min"])
        table.loc[i, "speed_verdict"] = ("within timing noise" if stats.overlap(mine, theirs) else
                                         "faster" if row["compute_s"] < teacher["compute_s"] else "slower")
    return table


def comparison_table(results: pd.DataFrame, test_set: str | None = None) -> pd.DataFrame:
    """The table to read first, one row per model: size; test CER with its 95 % interval, the paired difference
    from the teacher and its verdict; WER and MER; RTFx and the speed-up with the range of the timing rounds and
    its verdict; peak memory; the window each model read and how many of its outputs looped (stopped by the decoding
    budget or the repetition guard). Rounded for reading."""
    rows = results if test_set is None else results[results["test_set"] == test_set]
    rows = rows.assign(
        cer_ci=[f"{lo:.1f}-{hi:.1f}" if pd.notna(lo) else "" for lo, hi in zip(rows.get("cer_low", []),
                                                                             rows.get("cer_high", []))],
        diff_ci=[f"{lo:+.1f} to {hi:+.1f}" if pd.notna(lo) else "" for lo, hi in zip(rows.get("cer_diff_low", []),
                                                                                   rows.get("cer_diff_high", []))],
        speed_range=[f"{lo:.2f}-{hi:.2f}" if pd.notna(lo) else "" for lo, hi in zip(rows.get("speed_up_low", []),
                                                                                  rows.get("speed_up_high", []))],
        loops=[f"{int(k)} of {int(n)}" if pd.notna(k) else "" for k, n in zip(rows.get("looped", []),
                                                                              rows.get("outputs", []))])
    columns = {"params_M": "params (M)", "decoder_layers": "dec", "size_MB": "size (MB)", "cer": "CER %",
               "cer_ci": "95% CI", "cer_diff": "vs teacher (pts)", "diff_ci": "95% CI of diff",
               "cer_verdict": "accuracy", "wer": "WER %", "mer": "MER %", "rtfx": "RTFx", "speed_up": "speed-up",
               "speed_range": "range", "speed_verdict": "speed", "peak_memory_MB": "peak mem (MB)",
               "window": "window", "loops": "looped", "status": "status"}
    present = [c for c in columns if c in rows]
    table = rows.set_index(["test_set", "model"] if test_set is None else "model")[present].rename(columns=columns)
    return table.round({"params (M)": 2, "size (MB)": 1, "CER %": 1, "vs teacher (pts)": 1, "WER %": 1, "MER %": 1,
                        "RTFx": 0, "speed-up": 2, "peak mem (MB)": 0}).fillna("")


def worst_utterances(predictions: pd.DataFrame, model: str, n: int = 5, test_set: str | None = None) -> pd.DataFrame:
    """The ``n`` utterances with the highest CER for ``model`` (ties: the longest reference first)."""
    rows = predictions[predictions["model"] == model]
    if test_set is not None:
        rows = rows[rows["test_set"] == test_set]
    if rows.empty:
        raise ValueError(f"no predictions for model {model!r}; models: {sorted(predictions['model'].unique())}")
    return rows.assign(_len=rows["reference"].str.len()).sort_values(["cer", "_len"], ascending=False).drop(
        columns="_len").head(n)


def reference_teacher(results: pd.DataFrame, test_set: str) -> str | None:
    """The teacher the students are compared with: the fine-tuned teacher, else the base teacher."""
    ok = results[(results["status"] == "ok") & (results["test_set"] == test_set)]
    return next((m for m in TEACHERS if m in set(ok["model"])), None)


def conclusion(results: pd.DataFrame, test_set: str, student: str, teacher: str | None = None) -> str:
    """A few sentences computed from :func:`add_comparisons`' results: how much smaller and faster ``student`` is
    than the teacher, and whether its CER differs beyond the noise of the test set."""
    ok = results[(results["status"] == "ok") & (results["test_set"] == test_set)].set_index("model")
    teacher = teacher or reference_teacher(results, test_set)
    if teacher is None or student not in ok.index:
        return f"On {test_set}: not enough stages to compare (found {list(ok.index)})."
    t, s = ok.loc[teacher], ok.loc[student]
    share = 100 * s["params_M"] / t["params_M"]
    accuracy = {"better": "more accurate than", "worse": "less accurate than",
                "within noise": "as accurate as, within the noise of this test set,"}.get(s.get("cer_verdict"),
                                                                                       "compared with")
    speed = {"faster": f"a {s['speed_up']:.2f}x speed-up end to end",
             "slower": f"{s['speed_up']:.2f}x the teacher's speed, slower end to end",
             "within timing noise": f"{s['speed_up']:.2f}x the teacher's speed, within timing noise"}.get(
        s.get("speed_verdict"), f"{s['speed_up']:.2f}x")
    return (f"On {test_set}, the {student} has {s['params_M']:.1f}M parameters, {share:.0f}% of the {teacher}'s "
            f"{t['params_M']:.1f}M ({s['decoder_layers']} decoder layers instead of {t['decoder_layers']}). It is "
            f"{accuracy} the {teacher}: CER {s['cer']:.1f}% (95% CI {s['cer_low']:.1f}-{s['cer_high']:.1f}) "
            f"against {t['cer']:.1f}% ({t['cer_low']:.1f}-{t['cer_high']:.1f}), a paired difference of "
            f"{s['cer_diff']:+.1f} points (95% CI {s['cer_diff_low']:+.1f} to {s['cer_diff_high']:+.1f}). It "
            f"transcribes at {s['rtfx']:.0f}x real time against {t['rtfx']:.0f}x: {speed} (median of "
            f"{int(s['rounds'])} interleaved rounds; range {s['speed_up_low']:.2f}-{s['speed_up_high']:.2f}x). The "
            f"encoder, which both run in full, takes {100 * t['encoder_s'] / t['compute_s']:.0f}% of the "
            f"{teacher}'s compute here: a shorter decoder can only save on the rest.")


def window_verdicts(results: pd.DataFrame, predictions: pd.DataFrame, windows: dict, resamples: int = stats.RESAMPLES,
                    seed: int = stats.SEED) -> pd.DataFrame:
    """Each short-window row against the same student at its full window, on the same utterances: test CER of both,
    the paired difference (points) with its 95 % bootstrap interval and verdict, and the speed-up of the median
    rounds. ``windows``: model -> rule, as notebook 07 evaluated them; the full-window student is the one whose
    folder the row's model was read from. Empty when there is no short-window row."""
    ok = results[results["status"] == "ok"]
    rows = []
    for name in windows:
        for _, mine in ok[ok["model"] == name].iterrows():
            same = ok[(ok["path"] == mine["path"]) & (ok["window"] == "full") & (ok["test_set"] == mine["test_set"])]
            source = read_json(Path(mine["path"]) / RULE_FILE, {}).get("source") if same.empty else None
            full = same if source is None else ok[(ok["model"] == source) & (ok["test_set"] == mine["test_set"])]
            if full.empty:
                continue
            full = full.iloc[0]
            utt = {m: predictions[(predictions["model"] == m) & (predictions["test_set"] == mine["test_set"])]
                   for m in (name, full["model"])}
            diff = stats.paired_difference(utt[name]["errors"].to_numpy(), utt[full["model"]]["errors"].to_numpy(),
                                           utt[name]["n_ref"], resamples, seed)
            rows.append({"test_set": mine["test_set"], "model": name, "against": f"{full['model']} (full window)",
                         "CER %": mine["cer"], "its CER %": full["cer"], "difference (pts)": diff["difference"],
                         "95% CI": f"{diff['low']:+.1f} to {diff['high']:+.1f}", "accuracy": stats.verdict(diff),
                         "speed-up": full["compute_s"] / mine["compute_s"]})
    return pd.DataFrame(rows).round(2)


BENCH_RUNTIMES = {"hf_student_full": "transformers student, full window",
                  "hf_student_short": "transformers student, short window",
                  "ct2_student_full": "CTranslate2 student, full window",
                  "ct2_student_short": "CTranslate2 student, short window"}


def short_window_benchmark(results_dir: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """The real-shape speed-ups ``bench/short_window_speed.py`` measured, read from its results files in
    ``results_dir`` (``short_window_speed_<cpu|gpu>_<shape>.json``): one row per device, shape, batch size and clip
    length, one column per runtime (speed-up over the transformers teacher at the full window in the same dtype,
    median of the rounds), and one line per file naming the machine, the dtypes and the note. Empty when no results
    file is there."""
    rows, machines = [], []
    for path in sorted(Path(results_dir).glob("short_window_speed_*.json")):
        if path.stem.endswith("_quick"):
            continue
        found = json.loads(path.read_text("utf-8"))
        m, args = found["machine"], found["args"]
        device = m.get("device") if m.get("device") not in (None, "cpu") else f"CPU {m.get('cpu')}"
        ct2 = f"CTranslate2 {m.get('ctranslate2')} {args.get('ct2_compute_type')}" if m.get("ctranslate2") else \
            "no CTranslate2"
        machines.append(f"{path.name}: {device}, {m.get('threads')} threads, torch {m.get('torch')} "
                        f"{args.get('dtype')}, {ct2}, batch {args['batch_sizes']}, {args['new_tokens']} tokens; "
                        f"{m.get('note') or ''}".strip())
        for shape in found["results"]:
            for row in shape["rows"]:
                ups = row["speed_up_vs_teacher"]
                rows.append({"device": device, "shape": shape["shape"], "batch": shape["batch"],
                             "clip (s)": row["clip_s"], "transformers dtype": args.get("dtype"),
                             **{label: round(ups[key]["median"], 2) for key, label in BENCH_RUNTIMES.items()
                                if key in ups}})
    table = pd.DataFrame(rows)
    return (table.set_index(["device", "shape", "batch", "clip (s)"]) if len(table) else table), machines
