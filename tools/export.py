"""`python tools/export.py` = `reid-dhm export` (the code lives in reid_dhm/cli/export.py)."""

from reid_dhm.cli.export import main

raise SystemExit(main(prog="tools/export.py"))
