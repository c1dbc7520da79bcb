"""`python tools/test.py` = `reid-dhm test` (the code lives in reid_dhm/cli/test.py)."""

from reid_dhm.cli.test import main

raise SystemExit(main(prog="tools/test.py"))
