"""Every command's --help: each option has help text and shows its default."""

import argparse
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from reid_dhm.cli import COMMANDS
from reid_dhm.cli.common import show_default

ROOT = Path(__file__).resolve().parents[1]


def parser_of(name: str) -> argparse.ArgumentParser:
    return importlib.import_module(f"reid_dhm.cli.{COMMANDS[name][0]}").build_parser(name)


def flat(text: str) -> str:
    """Help text with its line wrapping undone."""
    return re.sub(r"\s+", " ", text)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_option_has_help_and_shows_its_default(name, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    parser = parser_of(name)
    text = flat(parser.format_help())
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        label = action.option_strings[0] if action.option_strings else action.dest
        assert action.help and action.help.strip(), f"{name} {label}: no help text"
        shown = show_default(action.default)
        if shown is not None:
            # The help of this very option ends with its default, wherever it wraps.
            assert f"(default: {shown})" in text, f"{name} {label}: default {shown!r} not shown"
    assert "(default: None)" not in text and "(default: False)" not in text


def test_defaults_the_issue_named(monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    expected = {
        "test": ["--root ROOT", "(default: reid-data)", "--workers", "(default: 2)"],
        "retrieve": ["(default: 10)", "(default: 64)", "(default: auto)", "test.metric"],
        "export": ["(default: 18)", "(default: 0.0001)", "(default: onnx)"],
        "summary": ["(default: dhm_resnet50", "256x128"],
    }
    for name, needles in expected.items():
        text = flat(parser_of(name).format_help())
        for needle in needles:
            assert needle in text, (name, needle)


def test_a_hyphenated_default_is_not_split_across_lines(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    text = parser_of("test").format_help()
    assert "reid-data" in text  # textwrap would otherwise break it after "reid-"


def test_the_tools_wrapper_prints_the_same_help():
    out = subprocess.run(
        [sys.executable, "tools/export.py", "--help"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={"COLUMNS": "120", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "usage: tools/export.py" in out.stdout and "(default: 18)" in flat(out.stdout)
