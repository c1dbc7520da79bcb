"""`python tools/retrieve.py` = `reid-dhm retrieve` (the code lives in reid_dhm/cli/retrieve.py)."""

from reid_dhm.cli.retrieve import main

raise SystemExit(main(prog="tools/retrieve.py"))
