"""The import rules of docs/ARCHITECTURE.md, checked on the source: imports point inward.

Every ``import`` and ``from ... import`` in ``reid_dhm/`` (module level and inside
functions, absolute and relative) is read with ``ast``; a module may import only
packages of a lower layer. Packages of one layer do not import each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "reid_dhm"

# Top to bottom, as drawn in docs/ARCHITECTURE.md. The package's __init__ (the public
# API, re-exports only) sits above all of them; __main__ is the command itself.
LAYERS = (
    ("__main__",),
    ("cli",),
    ("study",),
    ("config",),
    ("runs",),
    ("viz",),
    ("engines",),
    ("inference", "export"),
    ("models", "losses", "retrieval", "data"),
    ("utils", "__version__"),
)
RANK = {unit: len(LAYERS) - i for i, layer in enumerate(LAYERS) for unit in layer}
# Third-party packages only one place may import (what each would cost the rest).
CONFINED = {"matplotlib": {"viz"}, "ray": {"study"}}


def _unit(path: Path) -> str:
    """reid_dhm/<unit>/... or reid_dhm/<unit>.py -> unit; the package __init__ -> ''."""
    parts = path.relative_to(PACKAGE).parts
    return "" if parts == ("__init__.py",) else parts[0].removesuffix(".py")


def _imports(path: Path, root: Path = PACKAGE) -> list[tuple[int, str, str | None]]:
    """(line, top-level module, reid_dhm unit or None) for every import in a file."""
    package = path.relative_to(root.parent).with_suffix("").parts[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name.split(".") for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level:
            base = list(package[: len(package) - node.level + 1])
            module = node.module.split(".") if node.module else []
            names = [base + module] if module else [base + [a.name] for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module.split(".")]
        else:
            continue
        for name in names:
            unit = name[1] if name[0] == "reid_dhm" and len(name) > 1 else None
            found.append((node.lineno, name[0], unit))
    return found


def _files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_unit_of_the_package_has_a_layer():
    units = {_unit(p) for p in _files()} - {""}
    assert units <= set(RANK), f"add {sorted(units - set(RANK))} to LAYERS (and the diagram)"


@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_inward(path):
    src = _unit(path)
    if not src:
        return  # the public API re-exports from every layer
    wrong = [
        f"line {line}: {src} imports {dst}"
        for line, _, dst in _imports(path)
        if dst is not None and dst != src and RANK[dst] >= RANK[src]
    ]
    assert not wrong, f"{path.relative_to(PACKAGE)}: " + "; ".join(wrong)


@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_heavy_third_party_packages_stay_where_they_belong(path):
    src = _unit(path)
    wrong = [
        f"line {line}: {top} (only in {sorted(CONFINED[top])})"
        for line, top, _ in _imports(path)
        if top in CONFINED and src not in CONFINED[top]
    ]
    assert not wrong, f"{path.relative_to(PACKAGE)}: " + "; ".join(wrong)


def test_the_checker_sees_relative_and_function_level_imports(tmp_path):
    """The reader itself: a relative import inside a function names its unit."""
    root = tmp_path / "reid_dhm"
    (root / "utils").mkdir(parents=True)
    probe = root / "utils" / "probe.py"
    probe.write_text(
        "import os\nimport reid_dhm.viz\n"
        "def f():\n    from ..models import build_model\n    from . import io\n"
    )
    assert _imports(probe, root) == [
        (1, "os", None), (2, "reid_dhm", "viz"), (4, "reid_dhm", "models"), (5, "reid_dhm", "utils")
    ]  # fmt: skip
