"""Config resolution: defaults < preset < YAML < overrides; unknown keys are errors."""

import pytest

from reid_dhm.config import ConfigError, dump_config, parse_override, resolve_config


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
