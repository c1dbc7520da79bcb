"""Every YAML under configs/ resolves; the classification presets hold the paper's recipes."""

from pathlib import Path

import pytest

from reid_dhm.config import ConfigError, resolve_config
from reid_dhm.models import build_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# Recipes; the files under _base_/ folders are the parts they inherit (see test_config.py);
# configs/studies/ holds study files, not recipes (test_study.py resolves every one).
ALL_YAML = [
    p
    for p in sorted(CONFIGS.rglob("*.yaml")) + sorted(CONFIGS.rglob("*.yml"))
    if not {"_base_", "studies"} & set(p.relative_to(CONFIGS).parts)
]
BASES = sorted(p for p in CONFIGS.rglob("*.yaml") if "_base_" in p.relative_to(CONFIGS).parts)


def test_there_are_configs():
    assert len(ALL_YAML) >= 33 + 9


def test_every_base_is_inherited():
    used = set()
    for path in ALL_YAML + BASES:
        used |= {p.resolve() for p in map(Path, _bases(path))}
    assert [b.relative_to(CONFIGS) for b in BASES if b.resolve() not in used] == []


def _bases(path):
    from reid_dhm.config import recipe_layers

    return [source for source, _ in recipe_layers(path)[:-1]]


@pytest.mark.parametrize("path", ALL_YAML, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_config_resolves(path):
    if _names_a_timm_model(path):
        # timm presets ask for ImageNet weights that are never downloaded: alone they
        # are a one-line error naming model.pretrained; with a path (here: none) they resolve
        with pytest.raises(ConfigError, match="model.pretrained=<path"):
            resolve_config(None, path)
        cfg = resolve_config(None, path, ["model.pretrained=false"])
    else:
        cfg = resolve_config(None, path)  # the file names its own data set
    assert cfg["data"]["dataset"]


def _names_a_timm_model(path):
    from reid_dhm.config import recipe_layers

    return any(
        str(layer.get("model", {}).get("name", "")).startswith("timm/")
        for _, layer in recipe_layers(path)
    )


CIFAR_ARCHS = {
    "resnet32": ("dhm_cifar_resnet32", 164, [81, 122], 0.1, 0.0001),
    "resnet110": ("dhm_cifar_resnet110", 164, [81, 122], 0.1, 0.0001),
    "resnet1202": ("dhm_cifar_resnet1202", 164, [81, 122], 0.1, 0.0001),
    "densenet40_12": ("dhm_cifar_densenet40_12", 300, [150, 225], 0.1, 0.0001),
    "densenet_bc100_12": ("dhm_cifar_densenet_bc100_12", 300, [150, 225], 0.1, 0.0001),
    "wrn16_8": ("dhm_wrn16_8", 200, [60, 120, 160], 0.2, 0.0005),
    "wrn28_10": ("dhm_wrn28_10", 200, [60, 120, 160], 0.2, 0.0005),
}


def _check_mode(cfg, mode):
    assert cfg["loss"]["mode"] == mode
    if mode == "baseline":
        assert cfg["model"]["branches"] == []
    else:
        assert cfg["model"]["branches"] is None  # the model's aux1 + aux2


@pytest.mark.parametrize("mode", ["baseline", "dsl", "dhm"])
@pytest.mark.parametrize("arch", sorted(CIFAR_ARCHS))
def test_table1_cifar100_configs(arch, mode):
    cfg = resolve_config(None, CONFIGS / "cifar100" / f"{arch}_{mode}.yaml")
    name, epochs, milestones, gamma, wd = CIFAR_ARCHS[arch]
    assert cfg["task"] == "classification" and cfg["data"]["dataset"] == "cifar100"
    assert cfg["model"]["name"] == name
    assert cfg["optim"]["name"] == "sgd" and cfg["optim"]["lr"] == 0.1
    assert cfg["optim"]["momentum"] == 0.9 and cfg["optim"]["weight_decay"] == wd
    assert cfg["data"]["batch_size"] == 128
    assert cfg["scheduler"]["name"] == "multi_step"
    assert cfg["scheduler"]["milestones"] == milestones and cfg["scheduler"]["gamma"] == gamma
    assert cfg["train"]["max_epoch"] == epochs
    _check_mode(cfg, mode)


@pytest.mark.parametrize("mode", ["baseline", "dsl", "dhm"])
@pytest.mark.parametrize("depth", [18, 50, 101, 152])
def test_table2_imagenet_configs(depth, mode):
    cfg = resolve_config(None, CONFIGS / "imagenet" / f"resnet{depth}_{mode}.yaml")
    assert cfg["task"] == "classification" and cfg["model"]["name"] == f"dhm_resnet{depth}"
    assert cfg["model"]["pretrained"] is False
    assert (cfg["data"]["height"], cfg["data"]["batch_size"]) == (224, 256)
    assert cfg["optim"]["lr"] == 0.1 and cfg["optim"]["weight_decay"] == 0.0001
    assert cfg["scheduler"]["name"] == "step" and cfg["scheduler"]["step_size"] == 30
    assert cfg["train"]["max_epoch"] == 90
    _check_mode(cfg, mode)


def test_table4_and_5_ablations_build_the_right_models():
    abl = CONFIGS / "imagenet" / "ablation"
    expect = {
        "resnet18_b1": ("dhm", ["aux1"], "bidirectional"),
        "resnet18_b2": ("dhm", ["aux2"], "bidirectional"),
        "resnet18_b1_b2": ("dhm", ["aux1", "aux2"], "bidirectional"),
        "resnet18_b1_b2_b3": ("dhm", ["aux1", "aux2", "aux3"], "bidirectional"),
        "resnet18_independent_b1": ("dsl", ["aux1"], "bidirectional"),
        "resnet18_independent_b2": ("dsl", ["aux2"], "bidirectional"),
        "resnet18_mimicking_per_branch": ("dhm", None, "bidirectional"),
        "resnet18_top_down": ("dhm", None, "top-down"),
        "resnet18_bottom_up": ("dhm", None, "bottom-up"),
    }
    for name, (mode, branches, direction) in expect.items():
        cfg = resolve_config(None, abl / f"{name}.yaml")
        assert (cfg["loss"]["mode"], cfg["model"]["branches"]) == (mode, branches), name
        assert cfg["loss"]["direction"] == direction, name
        model = build_model(cfg["model"]["name"], 10, branches=branches)
        assert model.branch_names == ("main", *(branches or ["aux1", "aux2"])), name
    for b in ("b1", "b2"):
        cfg = resolve_config(None, abl / f"resnet18_independent_{b}.yaml")
        assert cfg["loss"]["ce_weights"] == {"main": 0.0} and cfg["test"]["per_branch"]


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "imagenet", "fashion-mnist"])
def test_classification_presets(dataset):
    cfg = resolve_config(dataset)
    assert cfg["task"] == "classification" and cfg["data"]["dataset"] == dataset
    assert cfg["optim"]["name"] == "sgd" and cfg["optim"]["momentum"] == 0.9
    assert cfg["train"]["fixbase_epoch"] == 0 and cfg["model"]["pretrained"] is False
    assert cfg["loss"]["label_smooth"] == 0.0
    if dataset.startswith("cifar"):
        assert cfg["model"]["name"] == "dhm_cifar_resnet32" and cfg["train"]["max_epoch"] == 164
        assert cfg["scheduler"]["milestones"] == [81, 122] and cfg["optim"]["lr"] == 0.1
        assert cfg["optim"]["weight_decay"] == 0.0001 and cfg["data"]["batch_size"] == 128
    if dataset == "imagenet":
        assert cfg["data"]["height"] == 224 and cfg["data"]["batch_size"] == 256
        assert cfg["scheduler"]["name"] == "step" and cfg["train"]["max_epoch"] == 90
    # The re-ID recipe is untouched by the classification presets.
    assert resolve_config("market1501")["optim"]["name"] == "amsgrad"


def test_model_flag_is_model_name(tmp_path):
    from reid_dhm.cli import train as train_tool

    args = train_tool.build_parser().parse_args(
        ["--dataset", "cifar10", "--model", "dhm_cifar_resnet110", "--output-dir", str(tmp_path)]
    )
    assert train_tool.resolve(args)["model"]["name"] == "dhm_cifar_resnet110"
    args = train_tool.build_parser().parse_args(
        ["--dataset", "cifar10", "--model", "dhm_cifar_resnet110", "model.name=cifar_resnet20"]
    )
    assert train_tool.resolve(args)["model"]["name"] == "cifar_resnet20"  # explicit key wins
