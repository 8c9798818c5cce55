"""Files the course writes: JSON and text written atomically, and the layout of a run folder.

Every phase writes inside one ``run_dir``; :class:`RunDir` names each folder and file there, so no other
module spells ``"student_kd"`` or ``"metrics.json"`` itself. Writes go to a temporary file first and are then
renamed over the target: a reader (or a resumed run) never sees half a file, even after a crash.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

from .config import REPO


def atomic_write(path: str | Path, content: str) -> Path:
    """Write ``content`` (UTF-8 text) to ``path`` through a temporary file and a rename; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(content, "utf-8")
    tmp.replace(path)
    return path


def write_json(path: str | Path, obj) -> Path:
    """Write ``obj`` as indented UTF-8 JSON atomically (numpy numbers are written as floats)."""
    return atomic_write(path, json.dumps(obj, ensure_ascii=False, indent=2, default=float))


def read_json(path: str | Path, default=None):
    """The JSON in ``path``, or ``default`` when the file does not exist."""
    path = Path(path)
    return json.loads(path.read_text("utf-8")) if path.exists() else default


def shown(path: str | Path) -> str:
    """``path`` as a message shows it: relative to the repository when inside it (``runs/tiny/teacher``), so
    that what a notebook prints does not depend on where the repository lives."""
    path = Path(path)
    try:
        return path.resolve().relative_to(REPO).as_posix()
    except ValueError:
        return str(path)


class Stage(NamedTuple):
    """A model the course makes: its ``name`` as tables show it, its ``folder`` in the run (a :class:`RunDir`
    attribute; ``None`` for the base teacher, a hub id or folder that notebook 02 records), its ``role``
    (``teacher`` or ``student``) and the ``notebook`` that makes it."""
    name: str
    folder: str | None
    role: str
    notebook: str


# The one stage table: every model of a run, in course order. Evaluation, export, reports and widgets read it.
STAGES = (Stage("base teacher", None, "teacher", "02"), Stage("fine-tuned teacher", "teacher", "teacher", "02"),
          Stage("student before KD", "student_init", "student", "04"),
          Stage("distilled student", "student_kd", "student", "05"),
          Stage("AdaLoRA student", "student_adalora", "student", "06"),
          Stage("short-window student", "student_short", "student", "06"))
STAGE_OF = {stage.name: stage for stage in STAGES}
TEACHERS = ("fine-tuned teacher", "base teacher")  # the teacher students are compared with, in order of preference
STUDENTS = ("distilled student", "AdaLoRA student", "short-window student", "student before KD")  # in order


class RunDir:
    """The folders and files of one course run, all inside ``root`` (a notebook's ``run_dir``).

    ========================  =====================================================  ========
    attribute                 what is there                                          written by
    ========================  =====================================================  ========
    ``data``                  manifests ``<split>.jsonl``, ``skipped.csv``, report   01
    ``teacher``               fine-tuned teacher, ``metrics.json``, ``history.json``  02
    ``pseudo``                pseudo-label manifests, ``report.json``                03
    ``encoder_cache``         the teacher's encoder outputs (inside ``pseudo``)      03
    ``student_init``          the student before distillation, ``layer_map.json``    04
    ``student_kd``            the distilled student                                  05
    ``student_adalora``       the AdaLoRA student (merged), ``adapter/``             06
    ``student_short``         the student tuned to short windows, ``window_rule.json`` 06
    ``eval``                  ``results.json``, ``results.csv``, ``predictions.csv``  07
    ``export``                CTranslate2 exports                                    07
    ``notebooks``             executed notebooks of ``python -m helpers.course``     course
    ========================  =====================================================  ========
    """

    MODEL_FOLDERS = tuple(stage.folder for stage in STAGES if stage.folder)  # folders that hold a model
    # what each phase writes its results to: a file, or the metrics of a stage's folder
    PHASE_RESULTS = {"data": "data_report", "finetune": "teacher", "pseudo": "pseudo_report",
                     "student": "student_init", "distill": "student_kd", "adalora": "student_adalora",
                     "audio_context": "student_short", "evaluate": "results"}

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    def __fspath__(self) -> str:
        return str(self.root)

    data = property(lambda self: self.root / "data")
    teacher = property(lambda self: self.root / "teacher")
    pseudo = property(lambda self: self.root / "pseudo")
    encoder_cache = property(lambda self: self.root / "pseudo" / "encoder_cache")
    student_init = property(lambda self: self.root / "student_init")
    student_kd = property(lambda self: self.root / "student_kd")
    student_adalora = property(lambda self: self.root / "student_adalora")
    student_short = property(lambda self: self.root / "student_short")
    eval = property(lambda self: self.root / "eval")
    export = property(lambda self: self.root / "export")
    notebooks = property(lambda self: self.root / "notebooks")

    def manifest(self, split: str) -> Path:
        """Notebook 01's manifest of ``split`` (train, valid, test, unlabelled)."""
        return self.data / f"{split}.jsonl"

    def pseudo_manifest(self, name: str = "train") -> Path:
        """Notebook 03's manifests: ``train`` (kept pseudo-labels) or ``all`` (every row with its status)."""
        return self.pseudo / f"{name}.jsonl"

    def teacher_targets(self, method: str) -> Path:
        """Notebook 03's stored teacher targets of ``method`` (``topk`` or ``sampled``), beside the encoder cache."""
        return self.pseudo / f"targets_{method}"

    def stage(self, name: str) -> Path:
        """The folder of the stage called ``name`` in :data:`STAGES` (``"distilled student"`` -> ``student_kd``).
        Raises ``ValueError`` for the base teacher (it has no folder in the run) or an unknown name."""
        stage = STAGE_OF.get(name)
        if stage is None or stage.folder is None:
            raise ValueError(f"{name!r} is not a stage with a folder in the run; stages: "
                             f"{', '.join(s.name for s in STAGES if s.folder)}")
        return getattr(self, stage.folder)

    def phase_results(self, phase: str) -> Path:
        """The file the ``phase`` (``data``, ``finetune``... ``evaluate``) writes its results to."""
        if phase not in self.PHASE_RESULTS:
            raise ValueError(f"unknown phase {phase!r}; phases: {', '.join(self.PHASE_RESULTS)}")
        where = self.PHASE_RESULTS[phase]
        return self.metrics(where) if where in self.MODEL_FOLDERS else getattr(self, where)

    def metrics(self, stage: str) -> Path:
        """``metrics.json`` of a stage folder (``teacher``, ``student_kd``...)."""
        return getattr(self, stage) / "metrics.json"

    def history(self, stage: str) -> Path:
        """``history.json`` (the training curve) of a stage folder."""
        return getattr(self, stage) / "history.json"

    @property
    def data_report(self) -> Path:
        return self.data / "report.json"

    @property
    def pseudo_report(self) -> Path:
        return self.pseudo / "report.json"

    @property
    def results(self) -> Path:
        """Notebook 07's ``results.json``."""
        return self.eval / "results.json"


def validation_cer(run_dir: str | Path) -> dict[str, float]:
    """The validation CER (percent) each trained student reached, from the metrics notebooks 05 and 06 wrote:
    ``{"distilled student": ..., "AdaLoRA student": ..., "short-window student": ...}`` for the stages that exist
    (the short-window student at its short window)."""
    run, found = RunDir(run_dir), {}
    if (m := read_json(run.metrics("student_kd"))) and "valid" in m.get("student after KD", {}):
        found["distilled student"] = m["student after KD"]["valid"]["cer"]
    if (m := read_json(run.metrics("student_adalora"))) and "valid_cer_merged" in m:
        found["AdaLoRA student"] = m["valid_cer_merged"]
    if (m := read_json(run.metrics("student_short"))) and "short window, tuned" in m.get("valid", {}):
        found["short-window student"] = m["valid"]["short window, tuned"]["cer"]
    return found


def best_student(run_dir: str | Path, available=STUDENTS) -> str | None:
    """The student to show and ship, chosen on the validation set (never on test): of the trained students in
    ``available``, the one with the lowest validation CER in the metrics of notebooks 05 and 06; the distilled
    student when no validation figure exists; the student before KD when no trained one is available."""
    valid = {m: cer for m, cer in validation_cer(run_dir).items() if m in available}
    if valid:
        return min(valid, key=valid.get)
    return next((m for m in STUDENTS if m in available), None)
