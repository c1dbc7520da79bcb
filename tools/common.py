"""Shared pieces of the command-line tools: config sections -> explicit library arguments."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python tools/x.py` from a checkout
    sys.path.insert(0, str(ROOT))

from reid_dhm.config import ConfigError, dump_config  # noqa: E402
from reid_dhm.utils.io import atomic_write_text  # noqa: E402


class UsageError(Exception):
    """A user mistake: printed as one line, exit status 2."""


def fail(message: str, status: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return status


def reid_data_kwargs(cfg: dict) -> dict:
    """``data`` section -> ``build_reid_datamanager`` keyword arguments."""
    d = cfg["data"]
    return dict(
        dataset=d["dataset"],
        root=d["root"],
        height=d["height"],
        width=d["width"],
        transforms=d["transforms"],
        norm_mean=d["norm_mean"],
        norm_std=d["norm_std"],
        batch_size=d["batch_size"],
        test_batch_size=d["test_batch_size"],
        workers=d["workers"],
        sampler=d["sampler"],
        num_instances=d["num_instances"],
        combineall=d["combineall"],
    )


def model_kwargs(cfg: dict) -> dict:
    m = cfg["model"]
    kwargs = dict(m["kwargs"])
    if m["branches"] is not None:
        kwargs["branches"] = m["branches"]
    return kwargs


def default_output_dir(cfg: dict) -> Path:
    return Path("log") / cfg["data"]["dataset"] / f"{cfg['model']['name']}-{cfg['loss']['mode']}"


def write_config(cfg: dict, out_dir: Path) -> Path:
    path = out_dir / "config.yaml"
    atomic_write_text(path, dump_config(cfg))
    return path


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


__all__ = [
    "ConfigError",
    "UsageError",
    "default_output_dir",
    "fail",
    "is_main_process",
    "model_kwargs",
    "reid_data_kwargs",
    "write_config",
]
