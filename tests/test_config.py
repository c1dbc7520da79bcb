"""Config resolution: defaults < preset < YAML < overrides; unknown keys are errors."""

import pytest

from reid_dhm.config import (
    DEFAULTS,
    ConfigError,
    config_changes,
    dump_config,
    parse_override,
    read_recipe,
    resolve_config,
    task_only_keys,
)


def test_presets_and_overrides(tmp_path):
    cfg = resolve_config("market1501")
    assert cfg["model"]["name"] == "dhm_resnet50"
    assert cfg["optim"] == {
        "name": "amsgrad",
        "lr": 0.0003,
        "weight_decay": 0.0005,
        "betas": [0.9, 0.999],
        "momentum": 0.9,
        "nesterov": False,
    }
    assert cfg["train"]["fixbase_epoch"] == 10 and cfg["train"]["max_epoch"] == 60
    quick = resolve_config("synthreid")
    assert quick["model"]["name"] == "dhm_mobilenetv2" and quick["model"]["pretrained"] is False

    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("loss:\n  mode: dsl\noptim:\n  lr: 0.01\n")
    cfg = resolve_config("market1501", yaml_file, ["optim.lr=0.001", "model.branches=[aux1]"])
    assert cfg["loss"]["mode"] == "dsl"
    assert cfg["optim"]["lr"] == 0.001  # the command line wins over the file
    assert cfg["model"]["branches"] == ["aux1"]
    assert "mode: dsl" in dump_config(cfg)


def test_int_is_accepted_for_float_and_converted():
    cfg = resolve_config("market1501", overrides=["optim.lr=1"])
    assert cfg["optim"]["lr"] == 1.0 and isinstance(cfg["optim"]["lr"], float)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["optim.lrr=0.1"], "unknown config key 'optim.lrr'"),
        (["nonsense=1"], "unknown config key 'nonsense'"),
        (["optim.lr=fast"], "'optim.lr' must be float"),
        (["train.max_epoch=2.5"], "'train.max_epoch' must be int"),
        (["data.combineall=3"], "'data.combineall' must be bool"),
        (["optim.lr"], "KEY=VALUE"),
    ],
)
def test_bad_overrides_name_the_key(overrides, match):
    with pytest.raises(ConfigError, match=match):
        resolve_config("market1501", overrides=overrides)


def test_bad_files_and_datasets(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  momentun: 0.9\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'optim.momentun'"):
        resolve_config("market1501", bad)
    with pytest.raises(ConfigError, match="config file not found"):
        resolve_config("market1501", tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="unknown dataset 'market'"):
        resolve_config("market")
    with pytest.raises(ConfigError, match="no dataset given"):
        resolve_config(None)
    other = tmp_path / "duke.yaml"
    other.write_text("data:\n  dataset: dukemtmcreid\n")
    assert resolve_config(None, other)["data"]["dataset"] == "dukemtmcreid"
    with pytest.raises(ConfigError, match="conflicts"):
        resolve_config("market1501", other)


def test_parse_override_types():
    assert parse_override("a.b=[1, 2]") == {"a": {"b": [1, 2]}}
    assert parse_override("x=true") == {"x": True}
    assert parse_override("x=null") == {"x": None}


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["train.max_epoch=0"], "'train.max_epoch' must be >= 1 when training"),
        (["train.fixbase_epoch=-1"], "'train.fixbase_epoch' must be >= 0"),
        (["data.batch_size=0"], "'data.batch_size' must be >= 1"),
        (["data.test_batch_size=0"], "'data.test_batch_size' must be >= 1"),
        (["data.workers=-1"], "'data.workers' must be >= 0"),
        (["test.ranks=[1, 0]"], "'test.ranks' must be a non-empty list of integers >= 1"),
        (["test.ranks=[]"], "'test.ranks'"),
    ],
)
def test_out_of_range_values_name_the_key(overrides, match):
    with pytest.raises(ConfigError, match=match):
        resolve_config("market1501", overrides=overrides)


def test_evaluation_may_leave_max_epoch_at_zero():
    assert resolve_config("market1501", overrides=["train.max_epoch=0"], training=False)


@pytest.mark.parametrize(
    "dataset, override, owner",
    [
        ("cifar10", "data.norm_mean=[0.5, 0.5, 0.5]", "re-ID"),
        ("cifar100", "data.sampler=identity", "re-ID"),
        ("imagenet", "data.combineall=true", "re-ID"),
        ("cifar10", "test.metric=cosine", "re-ID"),
        ("fashion-mnist", "test.rerank=true", "re-ID"),
        ("cifar10", "test.ranks=[1, 5]", "re-ID"),
        ("market1501", "data.limit=100", "classification"),
        ("synthreid", "data.test_limit=10", "classification"),
        ("market1501", "train.sync_bn=true", "classification"),
    ],
)
def test_keys_the_task_does_not_read_are_refused(dataset, override, owner):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"'{key}' is only read by {owner} runs"):
        resolve_config(dataset, overrides=[override])


def test_default_values_of_other_tasks_keys_are_fine():
    # Setting a key to its default changes nothing, so it is not refused.
    assert resolve_config("cifar10", overrides=["test.metric=euclidean", "data.workers=0"])


def _stored(dataset="synthreid", overrides=()):
    """A resolved config as a checkpoint stores it."""
    cfg = resolve_config(dataset, overrides=list(overrides))
    cfg["output_dir"] = "log/old-run"
    return cfg


def test_resume_starts_from_the_checkpoint_config():
    stored = _stored(overrides=["loss.mode=dsl", "optim.lr=0.01", "train.max_epoch=1"])
    cfg = resolve_config(None, overrides=["train.max_epoch=3"], resumed=stored)
    assert cfg["loss"]["mode"] == "dsl" and cfg["optim"]["lr"] == 0.01  # not the preset's
    assert cfg["train"]["max_epoch"] == 3 and cfg["output_dir"] is None
    assert config_changes(resolve_config(resumed=stored, training=False), cfg) == [
        "train.max_epoch: 1 -> 3"
    ]
    # Naming the same data set again is fine; another one only for an evaluation.
    assert resolve_config("synthreid", resumed=stored)["loss"]["mode"] == "dsl"
    with pytest.raises(ConfigError, match="resuming continues on 'synthreid', not 'folder'"):
        resolve_config("folder", resumed=stored, resumed_from="ckpt.pth")
    other = resolve_config("folder", resumed=stored, training=False)
    assert other["data"]["dataset"] == "folder" and other["data"]["height"] == 128
    with pytest.raises(ConfigError, match="cannot be evaluated on the classification dataset"):
        resolve_config("cifar10", resumed=stored, training=False)
    # The stored config is checked like any other: unknown keys are errors.
    stored["optim"]["lrr"] = 1
    with pytest.raises(ConfigError, match="ckpt.pth's config: unknown config key 'optim.lrr'"):
        resolve_config(resumed=stored, resumed_from="ckpt.pth")


# ------------------------------------------------------------------ numbers, sources
@pytest.mark.parametrize(
    "text, value",
    [("3e-4", 0.0003), ("1E-3", 0.001), ("1e+6", 1e6), (".5", 0.5), ("2", 2.0)],
)
def test_numbers_in_every_spelling(tmp_path, text, value):
    path = tmp_path / "n.yaml"
    path.write_text(f"optim:\n  lr: {text}\n")
    for cfg in (
        resolve_config("market1501", path),
        resolve_config("market1501", overrides=[f"optim.lr={text}"]),
    ):
        assert cfg["optim"]["lr"] == value and isinstance(cfg["optim"]["lr"], float)
    # Integral floats are counts for int keys.
    cfg = resolve_config("market1501", overrides=["train.max_epoch=1e2", "data.batch_size=64.0"])
    assert (cfg["train"]["max_epoch"], cfg["data"]["batch_size"]) == (100, 64)


def test_range_errors_name_the_layer_at_fault(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("loss:\n  label_smooth: 1.5\n")
    with pytest.raises(ConfigError) as info:
        resolve_config("market1501", path)
    assert str(info.value) == f"{path}: 'loss.label_smooth' must be in [0, 1), got 1.5"
    with pytest.raises(ConfigError, match=r"^override 'optim.momentum=1': 'optim.momentum'"):
        resolve_config("market1501", overrides=["optim.momentum=1"])
    with pytest.raises(
        ConfigError, match=r"'loss.mode' must be one of \['baseline', 'dsl', 'dhm'\]"
    ):
        resolve_config("market1501", overrides=["loss.mode=dmh"])


# ------------------------------------------------------------------ _base_ inheritance
def _write(folder, name, text):
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_base_is_inherited_and_the_child_wins(tmp_path):
    _write(
        tmp_path, "parts/common.yaml", "data: {dataset: synthreid}\noptim: {lr: 0.01, name: sgd}\n"
    )
    _write(tmp_path, "parts/short.yaml", "_base_: common.yaml\ntrain: {max_epoch: 3}\n")
    _write(tmp_path, "parts/dsl.yaml", "loss: {mode: dsl}\n")
    child = _write(
        tmp_path, "run.yaml", "_base_: [parts/short.yaml, parts/dsl.yaml]\noptim: {lr: 0.02}\n"
    )
    cfg = resolve_config(None, child, ["train.max_epoch=4"])
    assert cfg["data"]["dataset"] == "synthreid" and cfg["optim"]["name"] == "sgd"
    assert cfg["optim"]["lr"] == 0.02  # the child over its base
    assert cfg["loss"]["mode"] == "dsl" and cfg["train"]["max_epoch"] == 4  # overrides win
    assert "_base_" not in dump_config(cfg)
    assert read_recipe(child)["optim"] == {"lr": 0.02, "name": "sgd"}
    # A bad key is named with the base file that wrote it.
    _write(tmp_path, "parts/dsl.yaml", "loss: {mdoe: dsl}\n")
    with pytest.raises(ConfigError, match=r"parts/dsl.yaml: unknown config key 'loss.mdoe'"):
        resolve_config(None, child)


def test_base_cycles_and_missing_bases_are_one_line_errors(tmp_path):
    a = _write(tmp_path, "a.yaml", "_base_: b.yaml\n")
    _write(tmp_path, "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(
        ConfigError, match=r"b.yaml: _base_ 'a.yaml' makes a cycle \(a.yaml -> b.yaml -> a.yaml\)"
    ):
        resolve_config("synthreid", a)
    own = _write(tmp_path, "self.yaml", "_base_: self.yaml\n")
    with pytest.raises(ConfigError, match="makes a cycle"):
        resolve_config("synthreid", own)
    lost = _write(tmp_path, "lost.yaml", "_base_: [a.yaml, nowhere/c.yaml]\n")
    _write(tmp_path, "b.yaml", "train: {max_epoch: 2}\n")
    with pytest.raises(ConfigError) as info:
        resolve_config("synthreid", lost)
    assert str(info.value).startswith(f"{lost}: _base_ 'nowhere/c.yaml' not found")
    assert "\n" not in str(info.value)
    _write(tmp_path, "bad.yaml", "_base_: {a: 1}\n")
    with pytest.raises(ConfigError, match="_base_ must be a file name or a list"):
        resolve_config("synthreid", tmp_path / "bad.yaml")


# ------------------------------------------------------------------ one rule, two users
@pytest.mark.parametrize("value", [-0.1, 0.0, 0.5, 0.999, 1.0, 2.0])
def test_label_smooth_range_is_the_same_in_config_and_loss(value):
    from reid_dhm.losses import DHMLoss

    def accepted(check):
        try:
            check()
        except ValueError:  # ConfigError is a ValueError
            return False
        return True

    by_config = accepted(
        lambda: resolve_config("market1501", overrides=[f"loss.label_smooth={value}"])
    )
    by_loss = accepted(lambda: DHMLoss("dhm", label_smooth=value))
    assert by_config == by_loss == (0 <= value < 1)


@pytest.mark.parametrize("value", [-1.0, 0.0, 1e-4])
def test_lr_range_is_the_same_in_config_and_optimizer(value):
    import torch

    from reid_dhm.engines.optim import build_optimizer

    def accepted(check):
        try:
            check()
        except ValueError:
            return False
        return True

    by_config = accepted(lambda: resolve_config("market1501", overrides=[f"optim.lr={value}"]))
    by_optim = accepted(lambda: build_optimizer(torch.nn.Linear(1, 1), "sgd", lr=value))
    assert by_config == by_optim == (value > 0)


def test_schedule_rules_are_checked_when_training():
    with pytest.raises(ConfigError, match="scheduler.warmup_epochs=5 must be < train.max_epoch=5"):
        resolve_config("synthreid", overrides=["scheduler.warmup_epochs=5", "train.max_epoch=5"])
    assert resolve_config(
        "synthreid", overrides=["scheduler.warmup_epochs=5", "train.max_epoch=5"], training=False
    )


def test_reading_and_resolving_a_config_loads_no_heavy_module():
    import subprocess
    import sys

    heavy = "('torchreid', 'tensorboard', 'torchvision', 'faiss', 'cv2', 'matplotlib')"
    code = (
        "import sys; from reid_dhm.config import resolve_config; "
        "resolve_config(None, 'configs/market1501/bot_r50_dhm.yaml'); "
        f"print(sorted(m for m in {heavy} if m in sys.modules))"
    )
    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
    )
    assert out.stdout.strip() == "[]"


def test_schema_defaults_and_task_only_keys():
    assert DEFAULTS["optim"]["lr"] == 0.0003 and DEFAULTS["task"] == "reid"
    keys = task_only_keys()
    assert "loss.triplet_weight" in keys["reid"] and "train.sync_bn" in keys["classification"]
