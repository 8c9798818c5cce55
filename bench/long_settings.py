"""Which long-form settings to use: tried on VALID recordings, never on test.

Builds ``--recordings`` realistic recordings from the valid split of a run (``helpers.speech.recordings``: the
clips' own background noise through the pauses, 0.1-1.5 s pauses, sometimes none, 6-12 clips each, from the seed),
transcribes them with a model of the run under every candidate of ``helpers.whisper.long_measure.CANDIDATES`` (the
clips themselves once) and prints long-form CER with its 95 % interval, the paired difference from clip-by-clip CER
and the share of clip boundaries found within 0.5 s. ``long_measure.CHOSEN`` records the pick and these figures.

    python bench/long_settings.py --run-dir runs/tiny --model student_kd --recordings 20
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from helpers.files import RunDir  # noqa: E402
from helpers.speech import recordings  # noqa: E402
from helpers.speech.manifest import load_manifest  # noqa: E402
from helpers.whisper import long_measure  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", default="runs/tiny")
    ap.add_argument("--model", default="student_kd", help="a stage folder of the run, e.g. student_kd")
    ap.add_argument("--recordings", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    run = RunDir(args.run_dir)
    work = run.root / "long_settings"
    made = recordings.make_recordings(load_manifest(run.data, "valid"), args.recordings, work / "recordings",
                                      seed=args.seed)
    started = time.perf_counter()
    table = long_measure.try_settings(str(getattr(run, args.model)), made, work / "out", long_measure.CANDIDATES)
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        print(table.drop(columns=["model"]).round(1).to_string())
    seconds = time.perf_counter() - started
    print(f"{len(made)} valid recordings, {len(long_measure.CANDIDATES)} settings, {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
