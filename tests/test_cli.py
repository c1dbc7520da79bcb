"""The ``reid-dhm`` console command, from a real (non-editable) wheel install."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from reid_dhm.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]


def test_dispatcher_help_and_errors(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert all(name in text for name in ("train", "test", "retrieve", "export", "summary"))
    assert main([]) == 2  # no command: the usage, and a non-zero status
    assert main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0
        assert f"usage: reid-dhm {name}" in capsys.readouterr().out


def test_tools_are_thin_wrappers_without_path_edits():
    for name in COMMANDS:
        text = (ROOT / "tools" / f"{name}.py").read_text()
        code = [line for line in text.splitlines() if line and not line.startswith('"""')]
        assert code == [
            f"from reid_dhm.cli.{name} import main",
            f'raise SystemExit(main(prog="tools/{name}.py"))',
        ]
    for path in (ROOT / "reid_dhm").rglob("*.py"):
        text = path.read_text()
        assert "sys.path.insert" not in text and "sys.path.append" not in text, path
        if "cli" not in path.parts and path.name != "__main__.py":
            # Nothing in the library imports the command line.
            assert "reid_dhm.cli" not in text and "from .cli" not in text, path
            assert "from ..cli" not in text, path


def test_installed_wheel_runs_the_console_command(tmp_path):
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(ROOT)],
        check=True, capture_output=True,
    )  # fmt: skip
    wheel = next(wheels.glob("reid_dhm-*.whl"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
         str(wheel)],
        check=True, capture_output=True,
    )  # fmt: skip
    script = site / "bin" / "reid-dhm"
    assert script.is_file()
    env = {**os.environ, "PYTHONPATH": str(site)}
    run = dict(cwd=tmp_path, env=env, capture_output=True, text=True)
    where = subprocess.run(
        [sys.executable, "-c", "import reid_dhm; print(reid_dhm.__file__)"], **run
    )
    assert where.stdout.strip().startswith(str(site))  # the wheel's copy, not the checkout
    out = subprocess.run([sys.executable, str(script), "--help"], **run)
    assert out.returncode == 0 and "summary" in out.stdout
    out = subprocess.run(
        [sys.executable, str(script), "summary", "--model", "mobilenetv2", "--input", "64x32"],
        **run,
    )
    assert out.returncode == 0, out.stderr
    assert "train/deploy ratio" in out.stdout and "1.00x" in out.stdout
