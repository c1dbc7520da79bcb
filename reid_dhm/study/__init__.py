"""Multi-seed studies: settings x variants x seeds, each trial a normal training run.

``reid-dhm study FILE.yaml`` reads the study (``reid_dhm.config.study.load_study``),
runs what is unfinished on a local process pool or on Ray (:mod:`.executors`), keeps
``study.json`` up to date after every trial (:mod:`.run`), and writes ``study.md`` and
``study.html`` with the statistics that say which differences are real
(:mod:`.stats`, :mod:`.summary`).
"""

from .executors import EXECUTORS, Plan, plan_slots
from .run import STUDY_FILE, read_study, refresh_prose, run_study, write_reports
from .stats import decide, describe, paired, verdict
from .summary import summarize

__all__ = [
    "EXECUTORS",
    "STUDY_FILE",
    "Plan",
    "decide",
    "describe",
    "paired",
    "plan_slots",
    "read_study",
    "refresh_prose",
    "run_study",
    "summarize",
    "verdict",
    "write_reports",
]
