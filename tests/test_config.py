"""Config resolution: defaults < preset < YAML < overrides; unknown keys are errors."""

import pytest

from reid_dhm.config import (
    ConfigError,
    config_changes,
    dump_config,
    parse_override,
    resolve_config,
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
