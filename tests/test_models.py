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
