"""``python -m reid_dhm ...`` is the ``reid-dhm`` command."""

from .cli import main

raise SystemExit(main())
