"""One recording, one row: duplicates dropped and no audio in two splits, every dropped row reported.

A recording that is both trained on and scored makes the score a memory test. :func:`drop_repeats` keeps one row
per recording, known by the hash of its samples (the same audio under another name or copied into another folder
is the same recording) or, for files too long to be read by the checks, by its resolved path. The row kept is the
one in the most protected split: test, then valid, then train, then the untranscribed split; within a split, the
first in reading order. Every other row is reported with the line it repeats.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .checks import SKIPPED_COLUMNS

PROTECTED_FIRST = ("test", "valid", "train")  # a recording in two splits stays in the first of these; others last


def drop_repeats(rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split checked ``rows`` (with ``content``, see ``checks.check_rows(..., content_keys=True)``) into one row per
    recording and the rows that repeat one (:data:`SKIPPED_COLUMNS`, ``reason`` one of "duplicate row", "same
    audio, another transcript", "same audio as a <split> row"). The kept rows keep their order and index labels
    (none dropped: the table itself)."""
    if rows.empty:
        return rows, pd.DataFrame(columns=SKIPPED_COLUMNS)
    contents = rows["content"] if "content" in rows else [None] * len(rows)
    keys = [c if isinstance(c, str) and c else f"path:{a}" for c, a in zip(contents, rows["audio"])]
    rank = [PROTECTED_FIRST.index(s) if s in PROTECTED_FIRST else len(PROTECTED_FIRST) for s in rows["split"]]
    records = rows.to_dict("records")
    first: dict[str, int] = {}
    repeats = []
    for i in sorted(range(len(rows)), key=lambda i: (rank[i], i)):
        if keys[i] not in first:
            first[keys[i]] = i
            continue
        rec, original = records[i], records[first[keys[i]]]
        reason, detail = repeat_problem(rec, original)
        repeats.append((i, {"audio": rec["audio"], "row": rec.get("row"), "split": rec["split"],
                            "source": rec["source"], "reason": reason, "csv": rec.get("csv") or "",
                            "detail": detail}))
    if not repeats:
        return rows, pd.DataFrame(columns=SKIPPED_COLUMNS)
    dropped = {i for i, _ in repeats}
    kept = rows.iloc[[i for i in range(len(rows)) if i not in dropped]]
    return kept, pd.DataFrame([r for _, r in sorted(repeats)], columns=SKIPPED_COLUMNS)


def where(rec: dict) -> str:
    """Where a row was read: ``line 7 of train.csv``, or ``row 7 (hub)`` for sources without a CSV."""
    if isinstance(rec.get("csv"), str) and rec["csv"]:
        return f"line {rec.get('row')} of {Path(rec['csv']).name}"
    return f"row {rec.get('row')} ({rec.get('source')})"


def repeat_problem(rec: dict, original: dict) -> tuple[str, str]:
    """``(reason, detail)`` for ``rec``, a row whose recording ``original`` (kept) already holds."""
    name = "" if rec["audio"] == original["audio"] else f" ({Path(original['audio']).name}: the same samples)"
    if rec["split"] != original["split"]:
        return (f"same audio as a {original['split']} row",
                f"{where(original)}{name} holds the same recording in {original['split']}: one recording in two "
                f"splits would score the model on what it trained on, so it is left out of {rec['split']}")
    if rec.get("text") == original.get("text"):
        return "duplicate row", f"repeats {where(original)}{name}, which is kept: delete one of the two lines"
    return ("same audio, another transcript",
            f"{where(original)}{name} has the same recording with the transcript {original.get('text')!r}, which is "
            "kept: keep the right transcript and delete the other line")
