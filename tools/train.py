"""`python tools/train.py` = `reid-dhm train` (the code lives in reid_dhm/cli/train.py)."""

from reid_dhm.cli.train import main

raise SystemExit(main(prog="tools/train.py"))
