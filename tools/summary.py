"""`python tools/summary.py` = `reid-dhm summary` (the code lives in reid_dhm/cli/summary.py)."""

from reid_dhm.cli.summary import main

raise SystemExit(main(prog="tools/summary.py"))
