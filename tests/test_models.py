"""DHM models: structure, gradients, deployment parity and interoperability."""

import numpy as np
import pytest
import torch
import torchvision
from conftest import randomize_bn
from torchreid.reid import models as trmodels

import reid_dhm
from reid_dhm.models import (
    BranchOutputs,
    build_model,
    count_parameters,
    list_models,
    register_torchreid_models,
    to_torchvision_state_dict,
)

X = torch.randn(2, 3, 64, 32)


def test_registry_lists_required_models():
    required = {
        "dhm_resnet18",
        "dhm_resnet34",
        "dhm_resnet50",
        "dhm_resnet101",
        "dhm_resnet152",
        "dhm_mobilenetv2",
        "resnet50",
        "mobilenetv2",
    }
    assert required <= set(list_models())
    assert reid_dhm.list_models() == list_models()


def test_training_output_is_typed_and_ordered():
    model = build_model("dhm_resnet50", 7).train()
    out = model(X)
    assert isinstance(out, BranchOutputs)
    assert out.branches == ("main", "aux1", "aux2")
    assert list(out.features) == ["main", "aux1", "aux2"]
    assert {k: tuple(v.shape) for k, v in out.logits.items()} == {
        "main": (2, 7),
        "aux1": (2, 7),
        "aux2": (2, 7),
    }
    assert {k: v.shape[1] for k, v in out.features.items()} == {
        "main": 2048,
        "aux1": 4096,
        "aux2": 2048,
    }


def test_eval_returns_main_embedding_only():
    model = build_model("dhm_resnet50", 7).eval()
    with torch.no_grad():
        emb = model(X)
    assert isinstance(emb, torch.Tensor) and emb.shape == (2, 2048)


def test_mobilenet_outputs():
    model = build_model("dhm_mobilenetv2", 5).train()
    out = model(X)
    assert out.branches == ("main", "aux1", "aux2")
    assert out.features["main"].shape == (2, 1280)
    assert model.eval()(X).shape == (2, 1280)


@pytest.mark.parametrize(
    "branches, expected",
    [
        ((), ("main",)),
        (("aux1",), ("main", "aux1")),
        (("aux2",), ("main", "aux2")),
        (("aux1", "aux2"), ("main", "aux1", "aux2")),
        (("aux3", "aux1", "aux2"), ("main", "aux1", "aux2", "aux3")),
        ("aux1+aux3", ("main", "aux1", "aux3")),
    ],
)
def test_branch_sets(branches, expected):
    model = build_model("dhm_resnet18", 3, branches=branches).train()
    assert model.branch_names == expected
    assert model(X).branches == expected


def test_active_branches_skip_inactive_work():
    model = build_model("dhm_resnet18", 3).train()
    model.set_active_branches(["aux2"])
    assert model(X).branches == ("main", "aux2")
    model.set_active_branches(None)
    assert model(X).branches == ("main", "aux1", "aux2")


def test_per_branch_embedding_matches_training_features():
    model = build_model("dhm_resnet18", 3).eval()
    with torch.no_grad():
        out = model.forward_branches(X)
        for name in model.branch_names:
            torch.testing.assert_close(model.embed(X, name), out.features[name])


@pytest.mark.parametrize("name", ["dhm_resnet18", "dhm_mobilenetv2"])
def test_every_parameter_gets_a_gradient_in_dhm_mode(name):
    model = build_model(name, 4, branches=("aux1", "aux2", "aux3")).train()
    out = model(torch.randn(4, 3, 64, 32))
    loss = reid_dhm.DHMLoss("dhm")(out, torch.tensor([0, 1, 2, 3]))["loss"]
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert missing == []


@pytest.mark.parametrize("name", ["dhm_resnet50", "dhm_mobilenetv2"])
def test_deploy_drops_aux_and_keeps_outputs(name):
    model = build_model(name, 11)
    randomize_bn(model)
    model.eval()
    plain = model.deploy()
    assert not any(k.startswith("aux_branches") for k in plain.state_dict())
    main_params = count_parameters(model) - count_parameters(model.aux_branches)
    assert count_parameters(plain) == main_params
    assert not plain.training and plain.branch_names == ("main",)
    with torch.no_grad():
        torch.testing.assert_close(plain(X), model(X), atol=1e-5, rtol=0)


def test_deployed_resnet50_loads_into_torchreid_and_torchvision():
    model = build_model("dhm_resnet50", 11)
    randomize_bn(model)
    state = model.eval().deploy().state_dict()
    with torch.no_grad():
        ours = model(X)

        tr = trmodels.build_model("resnet50", 11, pretrained=False)
        tr.load_state_dict(state, strict=True)
        torch.testing.assert_close(tr.eval()(X), ours, atol=1e-5, rtol=0)

        tv = torchvision.models.resnet50(num_classes=11)
        tv.load_state_dict(to_torchvision_state_dict(state), strict=True)
        tv.fc = torch.nn.Identity()
        torch.testing.assert_close(tv.eval()(X), ours, atol=1e-5, rtol=0)

        # Minus the classifier, straight into torchvision's 1000-class model.
        backbone = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        tv1000 = torchvision.models.resnet50()
        result = tv1000.load_state_dict(backbone, strict=False)
        assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"]
        assert result.unexpected_keys == []


def test_deployed_mobilenet_loads_into_torchreid():
    model = build_model("dhm_mobilenetv2", 9)
    randomize_bn(model)
    model.eval()
    tr = trmodels.build_model("mobilenetv2_x1_0", 9, pretrained=False)
    tr.load_state_dict(model.deploy().state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(tr.eval()(X), model(X), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("dhm_resnet50", {"main": 25.56e6, "aux2": 16.30e6, "aux1": 58.67e6}),
        ("dhm_resnet18", {"main": 11.69e6, "aux2": 9.83e6, "aux1": 31.97e6}),
    ],
)
def test_parameter_counts_match_reference(name, expected):
    model = build_model(name, 1000)
    counts = {n: count_parameters(b) for n, b in model.aux_branches.items()}
    counts["main"] = count_parameters(model) - count_parameters(model.aux_branches)
    for branch, ref in expected.items():
        assert abs(counts[branch] - ref) / ref < 0.01, (branch, counts[branch], ref)
    # The main branch is exactly torchvision's architecture.
    tv = {"dhm_resnet50": torchvision.models.resnet50, "dhm_resnet18": torchvision.models.resnet18}
    assert counts["main"] == count_parameters(tv[name]())


def test_torchreid_factory_registration():
    names = register_torchreid_models()
    assert "dhm_resnet50" in names and "resnet50" not in names
    assert register_torchreid_models() == names  # idempotent
    model = trmodels.build_model("dhm_resnet18", 5, pretrained=False)
    assert isinstance(model, reid_dhm.models.DHMResNet)
    assert model.branch_names == ("main", "aux1", "aux2")
    with pytest.raises(ValueError, match="softmax"):
        trmodels.build_model("dhm_resnet18", 5, loss="triplet", pretrained=False)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(name="resnet9000", num_classes=3), "valid models are .*dhm_resnet50"),
        (dict(name="dhm_resnet18", num_classes=0), "num_classes must be an integer >= 1"),
        (dict(name="dhm_resnet18", num_classes=2.5), "num_classes"),
        (dict(name="dhm_resnet18", num_classes=5.0), "num_classes must be an integer"),
        (dict(name="dhm_resnet18", num_classes=True), "num_classes must be an integer"),
        (dict(name="dhm_resnet18", num_classes="5"), "num_classes must be an integer"),
        (dict(name="dhm_resnet18", num_classes=np.int64(0)), "num_classes must be an integer"),
        (dict(name="dhm_resnet18", num_classes=3, branches=("aux9",)), "valid branches are"),
        (dict(name="dhm_mobilenetv2", num_classes=3, branches="aux1,auxx"), "'auxx'"),
        (dict(name="dhm_resnet18", num_classes=3, last_stride=3), "last_stride"),
    ],
)
def test_bad_arguments_raise_clear_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_model(**kwargs)


def test_numpy_integer_class_count_is_accepted():
    model = build_model("dhm_resnet18", np.int64(5))
    assert model.num_classes == 5 and type(model.init_kwargs["num_classes"]) is int
    assert model.deploy().num_classes == 5


@pytest.mark.parametrize(
    "name, kwargs, match",
    [
        ("dhm_resnet18", dict(last_strde=1), r"'dhm_resnet18' takes no keyword 'last_strde'"),
        ("resnet50", dict(depth=101), r"'resnet50' takes no keyword 'depth'"),
        (
            "dhm_mobilenetv2",
            dict(last_stride=1),
            r"'last_stride'.*\['branches', 'width_mult', 'branch_style', 'neck', 'eval_feature'\]",
        ),
    ],
)
def test_unknown_model_keyword_is_a_value_error_listing_accepted_ones(name, kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        build_model(name, 3, **kwargs)
    if name == "dhm_resnet18":
        assert "['branches', 'last_stride', 'branch_style', 'neck', 'eval_feature']" in str(
            info.value
        )


def test_a_single_branch_name_string_is_refused():
    model = build_model("dhm_resnet18", 3).train()
    with pytest.raises(ValueError, match="not the string 'aux1'"):
        model.set_active_branches("aux1")
    with pytest.raises(ValueError, match="not the string 'main'"):
        model.forward_branches(X, "main")


def test_unknown_branch_at_runtime():
    model = build_model("dhm_resnet18", 3)
    with pytest.raises(ValueError, match="this model has branches"):
        model.set_active_branches(["aux3"])
    with pytest.raises(ValueError, match="aux7"):
        model.embed(X, "aux7")


def test_new_and_pretrained_modules():
    model = build_model("dhm_resnet18", 3)
    assert model.pretrained_module_names() == (
        "conv1",
        "bn1",
        "layer1",
        "layer2",
        "layer3",
        "layer4",
    )
    assert set(model.new_module_names()) == {"classifier", "aux_branches"}


# ----------------------------------------------- registry entries beside their backbone
TINY_BACKBONE = '''
from torch import nn

from reid_dhm.models.dhm import AuxBranch, DHMNet, resolve_branches
from reid_dhm.models.registry import model_pair


class TinyNet(DHMNet):
    """No init_kwargs preamble: the base records the constructor's arguments."""

    input_stride = 4
    stage_names = ("stem", "layer1", "layer2")

    def __init__(self, num_classes=10, branches=("aux1",), width=8, neck="none",
                 eval_feature="pre_bn"):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, 1, 1)
        self.layer1 = nn.Sequential(nn.Conv2d(width, width, 3, 2, 1), nn.BatchNorm2d(width))
        self.layer2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, 2, 1), nn.ReLU())
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = 2 * width
        self._set_head(num_classes, neck, eval_feature)
        branches = resolve_branches(branches, ("aux1",), ("aux1",))
        body = nn.Conv2d(width, 12, 3, 2, 1)
        aux = {"aux1": AuxBranch("layer1", body, 12, num_classes, neck=neck)}
        self._set_branches({k: v for k, v in aux.items() if k in branches})


class ScaledTinyNet(TinyNet):
    def __init__(self, num_classes=10, branches=("aux1",), scale=2):
        super().__init__(num_classes, branches, width=4 * scale)


MODELS = model_pair(
    "tinynet", TinyNet, "TinyNet with aux1", "plain TinyNet",
    options=frozenset({"neck", "eval_feature"}),
)
'''


@pytest.fixture
def tiny_backbone(tmp_path, monkeypatch):
    """A new backbone as one file, found by the registry as if it were in backbones/."""
    import sys

    from reid_dhm.models import backbones, registry

    (tmp_path / "tinynet_for_tests.py").write_text(TINY_BACKBONE)
    monkeypatch.setattr(backbones, "__path__", [*backbones.__path__, str(tmp_path)])
    monkeypatch.setattr(registry, "_REGISTRY", {})
    monkeypatch.setattr(registry, "_DISCOVERED", False)
    list_models()  # discovery imports the new file
    yield sys.modules["reid_dhm.models.backbones.tinynet_for_tests"]
    sys.modules.pop("reid_dhm.models.backbones.tinynet_for_tests", None)


def test_a_new_backbone_is_one_file(tiny_backbone):
    from reid_dhm.models import get_entry

    assert {"dhm_tinynet", "tinynet", "dhm_resnet50", "wrn16_8"} <= set(list_models())
    entry = get_entry("dhm_tinynet")
    assert entry.options == {"neck", "eval_feature"} and entry.input_stride == 4
    assert get_entry("tinynet").description == "plain TinyNet"
    model = build_model("dhm_tinynet", 5, neck="bnneck")
    assert model.branch_names == ("main", "aux1")
    assert build_model("tinynet", 5).branch_names == ("main",)


def test_model_options_drive_the_config_error(tiny_backbone):
    from reid_dhm.config import ConfigError, resolve_config
    from reid_dhm.models.registry import models_with_option

    assert "dhm_tinynet" in models_with_option("neck")
    assert "dhm_tinynet" not in models_with_option("last_stride")
    assert "dhm_resnet50" in models_with_option("last_stride")
    with pytest.raises(ConfigError, match="dhm_tinynet has no last_stride option") as info:
        resolve_config("synthreid", overrides=["model.name=dhm_tinynet", "model.last_stride=1"])
    owners = str(info.value).split("models with it:")[1]
    assert "dhm_resnet18" in owners and "tinynet" not in owners and "mobilenetv2" not in owners
    with pytest.raises(ConfigError, match="dhm_wrn16_8 has no neck option") as info:
        resolve_config("synthreid", overrides=["model.name=dhm_wrn16_8", "model.neck=bnneck"])
    assert "dhm_tinynet" in str(info.value) and "dhm_osnet_x0_25" in str(info.value)
    cfg = resolve_config("synthreid", overrides=["model.name=dhm_tinynet", "model.neck=bnneck"])
    assert cfg["model"]["neck"] == "bnneck"


def test_declared_options_and_strides_match_the_builders():
    from reid_dhm.models import backbones, get_entry
    from reid_dhm.models.registry import OPTIONS, _builder_class_stride, _signature_options

    for name in list_models():
        entry = get_entry(name)
        # What a backbone declares is what its builder takes (config relies on it).
        assert entry.options == _signature_options(entry.builder), name
        assert entry.options <= set(OPTIONS)
        assert entry.input_stride == _builder_class_stride(entry.builder) > 1, name
        cls = entry.builder.func if hasattr(entry.builder, "func") else entry.builder
        assert cls.__module__.startswith(backbones.__name__ + "."), name


def test_dhmnet_records_its_constructor_arguments(tiny_backbone):
    TinyNet, ScaledTinyNet = tiny_backbone.TinyNet, tiny_backbone.ScaledTinyNet
    model = TinyNet(5, branches="aux1")
    # Defaults filled in, branches as built, in signature order.
    assert model.init_kwargs == {
        "num_classes": 5,
        "branches": ("aux1",),
        "width": 8,
        "neck": "none",
        "eval_feature": "pre_bn",
    }
    assert list(model.init_kwargs) == ["num_classes", "branches", "width", "neck", "eval_feature"]
    # The outermost class records, not the parent whose constructor it called.
    scaled = ScaledTinyNet(3, scale=1)
    assert scaled.init_kwargs == {"num_classes": 3, "branches": ("aux1",), "scale": 1}
    assert scaled.deploy().init_kwargs == {"num_classes": 3, "branches": (), "scale": 1}
    # set_eval_feature keeps the record (what deploy() and checkpoints rebuild) current.
    bn = TinyNet(4, neck="bnneck")
    bn.set_eval_feature("post_bn")
    assert bn.init_kwargs["eval_feature"] == "post_bn"
    assert bn.deploy().eval_feature == "post_bn"


def test_recorded_arguments_deploy_to_the_plain_model(tiny_backbone):
    model = tiny_backbone.TinyNet(6, neck="bnneck", eval_feature="post_bn")
    randomize_bn(model)
    for m in model.modules():  # randomize_bn covers 2-d BN only
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_var.fill_(2.0)
    model.eval()
    plain = model.deploy()
    assert type(plain) is type(model) and plain.branch_names == ("main",)
    assert plain.init_kwargs == {**model.init_kwargs, "branches": ()}
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), model(x))


def test_constructor_normalised_arguments_are_recorded():
    # CIFAR models fill branch_blocks from the authors' table; checkpoints hold that value.
    assert build_model("dhm_cifar_resnet20", 3).init_kwargs["branch_blocks"] == ((3, 2), (3,))
    assert build_model("cifar_resnet20", 3).init_kwargs["branch_blocks"] is None
    model = build_model("dhm_resnet18", 3, branches="aux2,aux1", last_stride=1)
    assert model.init_kwargs == {
        "depth": 18,
        "num_classes": 3,
        "branches": ("aux1", "aux2"),
        "last_stride": 1,
        "branch_style": "paper",
        "neck": "none",
        "eval_feature": "pre_bn",
    }


def test_main_branch_name_is_defined_once():
    from reid_dhm.losses import branch_sampler, dhm_loss
    from reid_dhm.models import MAIN, dhm
    from reid_dhm.utils import branches

    assert MAIN == branches.MAIN == "main"
    assert dhm.MAIN is branches.MAIN and dhm_loss.MAIN is branches.MAIN
    assert branch_sampler.MAIN is branches.MAIN
