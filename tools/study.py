"""`python tools/study.py` = `reid-dhm study` (the code lives in reid_dhm/cli/study.py)."""

from reid_dhm.cli.study import main

raise SystemExit(main(prog="tools/study.py"))
