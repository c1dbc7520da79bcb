"""Issue 18, config part: every bad value refused in one line before any data loads.

Each case runs the real command (``reid_dhm.cli`` main functions) on real files written
here. The data root of the training cases does not exist, so an error about it (or
any mention of it) would mean the data was reached before the value was checked.
"""

import math

import pytest
import torch

from reid_dhm.cli import export as export_tool
from reid_dhm.cli import test as test_tool
from reid_dhm.cli import train as train_tool
from reid_dhm.config import ConfigError, read_yaml, resolve_config
from reid_dhm.engines.optim import build_optimizer
from reid_dhm.utils.options import TRANSFORMS

TINY = [
    "model.name=dhm_mobilenetv2", "model.pretrained=false", "data.height=64", "data.width=32",
    "data.batch_size=4", "data.workers=0", "train.fixbase_epoch=0", "test.vis_queries=0",
]  # fmt: skip


def refused(tmp_path, capsys, *argv, tool=train_tool) -> str:
    """Run ``tool`` with ``argv`` on a missing data root; assert one line, exit 2, no data.

    Returns the line (without ``error: ``).
    """
    root, out = tmp_path / "no-data-here", tmp_path / "out"
    full = ["--dataset", "folder", "--root", str(root), "--output-dir", str(out), *TINY, *argv]
    assert tool.main(full) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    assert "no-data-here" not in err and not out.exists()
    return err.removeprefix("error: ")


# ----------------------------------------------------------- 1. ranks without 1
def test_training_ranks_must_include_rank1(tmp_path, capsys):
    line = refused(tmp_path, capsys, "test.ranks=[5,10]")
    assert "test.ranks must include 1" in line and "[1, 5, 10]" in line
    assert "override 'test.ranks=[5,10]'" in line  # the layer that set it


def test_a_checkpoint_without_rank1_can_be_fixed_by_an_override():
    # The rule runs once, after every layer: an override on top repairs a stored config.
    stored = resolve_config("synthreid")
    stored["test"]["ranks"] = [5, 10]
    with pytest.raises(ConfigError, match="must include 1"):
        resolve_config(resumed=stored, training=False)
    fixed = resolve_config(resumed=stored, overrides=["test.ranks=[1,5,10]"], training=False)
    assert fixed["test"]["ranks"] == [1, 5, 10]


# ------------------------------------------------------------ 2. transforms
def test_unknown_transforms_name_the_valid_ones(tmp_path, capsys):
    line = refused(tmp_path, capsys, "data.transforms=[random_flip,bogus_aug]")
    assert "'data.transforms' must be one of" in line and "got 'bogus_aug'" in line
    assert all(name in line for name in TRANSFORMS)
    assert resolve_config("synthreid", overrides=["data.transforms=[random_erase]"])


def test_the_data_manager_refuses_them_too(tmp_path):
    from reid_dhm.data.reid_manager import build_reid_datamanager

    # Checked before the data set is even looked for (the root does not exist).
    with pytest.raises(ValueError, match="unknown transform 'bogus_aug'; valid transforms"):
        build_reid_datamanager("folder", tmp_path / "nothing", transforms=["bogus_aug"])


# ------------------------------------------------------- 3. duplicate YAML keys
def test_duplicate_sections_and_keys_name_file_line_and_key(tmp_path, capsys):
    twice = tmp_path / "twice.yaml"
    twice.write_text("optim:\n  lr: 0.01\nloss:\n  mode: dsl\noptim:\n  name: sgd\n")
    line = refused(tmp_path, capsys, "--config", str(twice))
    assert f"{twice}, line 5: duplicate key 'optim' (first at line 1)" in line
    nested = tmp_path / "nested.yaml"
    nested.write_text("optim:\n  lr: 0.01\n  betas: [0.9, 0.99]\n  lr: 0.1\n")
    assert "line 4: duplicate key 'lr' (first at line 2)" in refused(
        tmp_path, capsys, "--config", str(nested)
    )
    flow = tmp_path / "flow.yaml"
    flow.write_text("loss: {mode: dsl, mode: dhm}\n")
    assert "duplicate key 'mode'" in refused(tmp_path, capsys, "--config", str(flow))


def test_duplicates_in_a_base_name_the_base_and_merge_keys_still_work(tmp_path):
    (tmp_path / "base.yaml").write_text("train:\n  seed: 1\n  seed: 2\n")
    child = tmp_path / "child.yaml"
    child.write_text("_base_: base.yaml\n")
    with pytest.raises(ConfigError, match=r"base.yaml, line 3: duplicate key 'seed'"):
        resolve_config("synthreid", child)
    # A key brought in by a YAML merge (<<) may be overridden: that is what it is for.
    merged = tmp_path / "merged.yaml"
    merged.write_text("shared: &s {lr: 0.5, name: sgd}\noptim:\n  <<: *s\n  lr: 0.01\n")
    assert read_yaml(merged)["optim"] == {"lr": 0.01, "name": "sgd"}


# ------------------------------------------------------ 4. inf / nan floats
@pytest.mark.parametrize(
    "override, key",
    [
        ("optim.lr=.inf", "optim.lr"),
        ("optim.lr=.nan", "optim.lr"),
        ("optim.lr=1e400", "optim.lr"),
        ("loss.temperature=-.inf", "loss.temperature"),
        ("optim.betas=[0.9,.nan]", "optim.betas"),
        ("scheduler.gamma=.inf", "scheduler.gamma"),
        ("data.norm_mean=[.nan,0.4,0.4]", "data.norm_mean"),
    ],
)
def test_infinite_and_nan_floats_are_refused(tmp_path, capsys, override, key):
    line = refused(tmp_path, capsys, override)
    assert f"'{key}' must be a finite number" in line


def test_a_yaml_inf_is_refused_and_the_library_agrees(tmp_path, capsys):
    recipe = tmp_path / "inf.yaml"
    recipe.write_text("optim:\n  lr: .inf\n")
    assert f"{recipe}: 'optim.lr' must be a finite number, got inf" in refused(
        tmp_path, capsys, "--config", str(recipe)
    )
    # The constructor checks the same range (stated once in utils/options.py).
    with pytest.raises(ValueError, match="lr must be a finite number > 0, got nan"):
        build_optimizer(torch.nn.Linear(2, 2), lr=math.nan)


# ------------------------------------ 5. branches, ce_weights, pretrained paths
@pytest.mark.parametrize(
    "overrides, words",
    [
        (["model.branches=[aux9]"], ["'model.branches' is ['aux9']", "unknown branch 'aux9'"]),
        (["model.branches=[aux1]", "loss.ce_weights={aux2: 0.5}"],
         ["'loss.ce_weights' names branch 'aux2'", "['main', 'aux1']"]),
        (["loss.ce_weights={aux1: -1}"], ["'loss.ce_weights.aux1' must be >= 0, got -1"]),
        (["loss.ce_weights=[1, 2]"], ["'loss.ce_weights' must be a mapping"]),
        (["model.kwargs={width_mul: 2}"], ["'model.kwargs'", "no keyword 'width_mul'"]),
    ],
)  # fmt: skip
def test_branches_and_ce_weights_are_checked_before_data(tmp_path, capsys, overrides, words):
    line = refused(tmp_path, capsys, *overrides)
    assert all(w in line for w in words), line


def test_a_missing_pretrained_file_is_named_before_data(tmp_path, capsys):
    missing = tmp_path / "imagenet.pth"
    line = refused(tmp_path, capsys, f"model.pretrained={missing}")
    assert f"'model.pretrained' '{missing}': file not found" in line
    assert "model.pretrained=false" in line
    line = refused(tmp_path, capsys, f"model.pretrained={tmp_path}")
    assert "is a directory, not a weight file" in line


# ---------------------------------------------- 6. non-UTF-8 file, a folder
def test_a_non_utf8_config_and_a_folder_are_named(tmp_path, capsys):
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes("# réglages\noptim:\n  lr: 0.01\n".encode("latin-1"))
    line = refused(tmp_path, capsys, "--config", str(latin))
    assert f"{latin}: not UTF-8 text (byte 0xe9" in line and "save the file as UTF-8" in line
    folder = tmp_path / "configs"
    folder.mkdir()
    line = refused(tmp_path, capsys, "--config", str(folder))
    assert f"{folder} is a directory, not a config file" in line and "not found" not in line


# ------------------------------------------------------------------ 7. export
@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    """An untrained DHM-MobileNetV2 checkpoint at 64x32, written in a second."""
    from reid_dhm import build_model
    from reid_dhm.models.checkpoint import save_checkpoint

    cfg = resolve_config("synthreid", overrides=["data.height=64", "data.width=32"])
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pth"
    return save_checkpoint(path, build_model("dhm_mobilenetv2", 4), "dhm_mobilenetv2", 1, cfg)


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--opset", "11"], ["opset 11 cannot be exported", "opsets 18 to"]),
        (["--atol", "-1"], ["--atol must be >= 0, got -1.0"]),
        (["--height", "-8"], ["'height' is -8", "down-samples its input by 32"]),
        (["--height", "0"], ["'height' is 0"]),
        (["--height", "1", "--width", "1"], ["'height' is 1", ">= 32"]),
    ],
)
def test_export_refuses_opsets_tolerances_and_sizes_in_one_line(
    small_checkpoint, tmp_path, capsys, extra, words
):
    out = tmp_path / "m.onnx"
    argv = ["--checkpoint", str(small_checkpoint), "--output", str(out), *extra]
    assert export_tool.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert all(w in err for w in words), err
    assert "\n" not in err and "Traceback" not in err and not out.exists()


def test_training_and_export_share_the_size_rule(small_checkpoint):
    from reid_dhm import build_model
    from reid_dhm.export import export_onnx

    with pytest.raises(ValueError, match="'height' is 16, but DHMMobileNetV2 down-samples"):
        export_onnx(build_model("dhm_mobilenetv2", 3), "x.onnx", (16, 64))
    with pytest.raises(ConfigError, match="'data.height' is 16, but dhm_mobilenetv2 down-samples"):
        resolve_config("synthreid", overrides=["data.height=16"])


@pytest.mark.slow  # a real ONNX export and its check: over 20 s on 2 busy CPU cores
def test_export_writes_the_opset_it_reports(small_checkpoint, tmp_path, capsys):
    import json

    import onnx

    out = tmp_path / "m.onnx"
    argv = ["--checkpoint", str(small_checkpoint.parent), "--output", str(out), "--opset", "20"]
    assert export_tool.main(argv + ["--json"]) == 0  # a run folder, like train --resume takes
    report = json.loads(capsys.readouterr().out)
    declared = {o.domain: o.version for o in onnx.load(str(out)).opset_import}
    assert report["opset"] == declared[""] == 20 and report["input"][3:] == [64, 32]


# ------------------------------ 8. run folders, deployed files, FeatureExtractor
def test_test_takes_a_run_folder_like_train_resume(tiny_reid, tiny_checkpoint, capsys):
    argv = ["--checkpoint", str(tiny_checkpoint.parent), "--dataset", "folder"]
    argv += ["--root", str(tiny_reid), "--workers", "0", "--device", "cpu", "--ranks", "5", "10"]
    assert test_tool.main(argv) == 0
    captured = capsys.readouterr()
    assert f"using {tiny_checkpoint}" in captured.err and "mAP" in captured.out
    # Evaluating a checkpoint reports any ranks (only a training run needs Rank-1).
    header = next(line for line in captured.out.splitlines() if line.startswith("branch"))
    assert header.split()[-2:] == ["R5", "R10"]


def test_a_folder_without_checkpoint_is_one_line(tmp_path, capsys):
    argv = ["--checkpoint", str(tmp_path), "--dataset", "folder", "--root", str(tmp_path)]
    assert test_tool.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert f"--checkpoint {tmp_path}: that folder holds no readable checkpoint" in err
    assert "not found" not in err and "\n" not in err


def test_resuming_a_deployed_file_says_what_to_pass(small_checkpoint, tmp_path, capsys):
    from reid_dhm.models.checkpoint import model_from_checkpoint

    deployed = tmp_path / "deployed.pth"
    torch.save(model_from_checkpoint(small_checkpoint).deploy().state_dict(), deployed)
    line = refused(tmp_path, capsys, "--resume", str(deployed))
    assert f"{deployed} holds the main branch's weights only (a deployed model file" in line
    assert "checkpoint.pth, or the run folder" in line


def test_feature_extractor_of_none_says_what_it_takes():
    from reid_dhm import FeatureExtractor

    with pytest.raises(TypeError, match=r"a reid_dhm model or a checkpoint's path .* got None$"):
        FeatureExtractor(None)
