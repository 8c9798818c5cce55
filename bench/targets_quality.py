"""Does a student distilled from stored teacher targets transcribe as well as one distilled with the teacher live?

For each seed, notebook 05's phase (``python -m helpers.distill``) is run three times on the same run folder (its
data, teacher, pseudo-labels, stored targets and initial student, linked, not copied), once per
``teacher_targets`` mode: ``live`` (the teacher's decoder every step), ``topk`` and ``sampled`` (its stored
distributions, the teacher never run). Every student is then scored on the valid split (what a choice between the
modes would look at) and on the test split, where ``topk`` and ``sampled`` are compared with ``live`` of the same
seed on the same utterances: the paired CER difference with its 95 % bootstrap interval (``helpers.figures.stats``).

    python -m helpers.course --to 04                   # a run folder with stored targets (notebook 03's default)
    python bench/targets_quality.py --run-dir runs/tiny --seeds 0 1

Training wall times are printed too; they are comparable only when nothing else runs on the machine.
Results go to bench/results/targets_quality_<run folder name>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from helpers import evaluate  # noqa: E402
from helpers.figures import stats  # noqa: E402
from helpers.files import RunDir  # noqa: E402
from helpers.speech.manifest import load_manifest  # noqa: E402

MODES = ("live", "topk", "sampled")
SHARED = ("data", "teacher", "pseudo", "student_init")  # what every distillation reads, linked into its folder


def distil(run_dir: Path, work: Path, mode: str, seed: int, extra: list[str]) -> tuple[Path, float]:
    """Run notebook 05's phase with ``teacher_targets = mode`` and ``seed`` in a folder of its own linking
    ``run_dir``'s inputs; returns the folder and the wall time in seconds."""
    folder = work / f"{mode}-seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    for name in SHARED:
        link = folder / name
        if not link.exists():
            link.symlink_to((run_dir / name).resolve(), target_is_directory=True)
    started = time.time()
    subprocess.run([sys.executable, "-m", "helpers.distill", "--run-dir", str(folder), "-p", "teacher_targets", mode,
                    "-p", "seed", str(seed), *extra], check=True, cwd=REPO)
    return folder, time.time() - started


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run-dir", default="runs/tiny", help="a run folder after notebook 04, with stored targets")
    ap.add_argument("--work", default=None, help="where the students go (default: <run-dir>/targets_quality)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="another parameter of notebook 05 for every run")
    args = ap.parse_args(argv)
    run_dir = Path(args.run_dir)
    work = Path(args.work) if args.work else run_dir / "targets_quality"
    extra = [x for pair in args.p for x in ("-p", *pair)]
    missing = [m for m in args.modes if m != "live" and not RunDir(run_dir).teacher_targets(m).exists()]
    if missing:
        raise SystemExit(f"{run_dir} holds no stored {' or '.join(missing)} targets: run notebook 03 with "
                         "store_teacher_targets both")

    sets = {name: load_manifest(RunDir(run_dir).data, name) for name in ("valid", "test")}
    runs, seconds = {}, {}
    for seed in args.seeds:
        for mode in args.modes:
            folder, took = distil(run_dir, work, mode, seed, extra)
            runs[(mode, seed)], seconds[(mode, seed)] = folder / "student_kd", took
            print(f"{mode} seed {seed}: trained in {took:.0f} s", flush=True)

    model_paths = {f"{mode} seed {seed}": str(path) for (mode, seed), path in runs.items()}
    results, predictions = evaluate.evaluate_models(model_paths, sets, batch_size=32, rounds=1)
    cer = results.set_index(["test_set", "model"])["cer"]
    rows = []
    for (mode, seed) in runs:
        name = f"{mode} seed {seed}"
        row = {"mode": mode, "seed": seed, "train_s": round(seconds[(mode, seed)], 1),
               "valid_cer": round(float(cer[("valid", name)]), 2), "test_cer": round(float(cer[("test", name)]), 2)}
        if mode != "live" and ("live", seed) in runs:
            utt = predictions[predictions["test_set"] == "test"]
            mine, live = utt[utt["model"] == name], utt[utt["model"] == f"live seed {seed}"]
            diff = stats.paired_difference(mine["errors"].to_numpy(), live["errors"].to_numpy(), mine["n_ref"])
            row.update(test_diff_vs_live=round(diff["difference"], 2), diff_low=round(diff["low"], 2),
                       diff_high=round(diff["high"], 2), verdict=stats.verdict(diff))
        rows.append(row)
        print(json.dumps(row, ensure_ascii=False), flush=True)

    out = REPO / "bench" / "results" / f"targets_quality_{run_dir.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": "python bench/targets_quality.py " + " ".join(argv or sys.argv[1:]),
                               "machine": f"{os.cpu_count()} CPU threads", "rows": rows,
                               "note": "train_s comparable only on an otherwise idle machine"},
                              indent=1, ensure_ascii=False), "utf-8")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
