"""Branch naming shared by models, losses and engines.

The deployed branch is called ``main`` everywhere (model outputs, loss terms, metrics
tables, checkpoints); it is defined here once so that no layer restates it.
"""

MAIN = "main"

__all__ = ["MAIN"]
