"""CIFAR DHM models: shapes, published parameter counts, gradients, deployment."""

from functools import cache

import pytest
import torch
from conftest import randomize_bn

import reid_dhm
from reid_dhm.models import BranchOutputs, build_model, count_parameters
from reid_dhm.models.backbones.cifar_resnet import DHMCifarResNet
from reid_dhm.models.backbones.densenet import DHMCifarDenseNet
from reid_dhm.models.backbones.wrn import DHMWideResNet

X = torch.randn(2, 3, 32, 32)

# name -> (main embedding, aux1 embedding, aux2 embedding)
DIMS = {
    "dhm_cifar_resnet20": (64, 128, 64),
    "dhm_cifar_resnet32": (64, 128, 64),
    "dhm_cifar_resnet110": (64, 128, 64),
    "dhm_cifar_resnet1202": (64, 128, 64),
    "dhm_cifar_densenet40_12": (448, 736, 376),
    "dhm_cifar_densenet_bc100_12": (342, 1302, 342),
    "dhm_wrn16_8": (512, 1024, 512),
    "dhm_wrn28_10": (640, 1280, 640),
}

# Exact counts with 100 classes (main = deployed model), and the size the architecture
# papers publish for CIFAR-10, in millions (He et al. 2016; Huang et al. 2017;
# Zagoruyko & Komodakis 2016).
COUNTS = {
    "dhm_cifar_resnet32": (470_004, 1_379_428, 298_212, 0.46),
    "dhm_cifar_resnet110": (1_733_812, 5_219_940, 816_356, 1.7),
    "dhm_cifar_resnet1202": (19_427_124, 58_987_108, 9_237_860, 19.4),
    "dhm_cifar_densenet40_12": (1_060_132, 2_038_996, 650_236, 1.0),
    "dhm_cifar_densenet_bc100_12": (800_032, 4_942_888, 599_944, 0.8),
    "dhm_wrn16_8": (11_007_540, 31_044_196, 5_822_820, 11.0),
    "dhm_wrn28_10": (36_536_884, 107_464_420, 20_145_060, 36.5),
}


# The largest models take most of this file's time on 2 CPU cores (ResNet-1202 alone
# about 40 s); `pytest -m "not slow"` leaves them out.
BIG = {"dhm_cifar_resnet1202", "dhm_wrn28_10"}


def _cases(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in BIG else n for n in names]


@cache
def _model(name: str, num_classes: int = 100):
    # Built once per test session: WRN-28-10 with branches has 164M parameters.
    return build_model(name, num_classes)


def test_registry_has_cifar_models_and_baselines():
    names = set(reid_dhm.list_models())
    for name in DIMS:
        assert name in names
        assert name[len("dhm_") :] in names


@pytest.mark.parametrize("name", _cases(DIMS))
def test_train_and_eval_outputs(name):
    model = _model(name)
    main, aux1, aux2 = DIMS[name]
    model.train()
    out = model(X)
    assert isinstance(out, BranchOutputs)
    assert out.branches == ("main", "aux1", "aux2")
    assert {k: tuple(v.shape) for k, v in out.logits.items()} == {
        "main": (2, 100),
        "aux1": (2, 100),
        "aux2": (2, 100),
    }
    assert {k: v.shape[1] for k, v in out.features.items()} == {
        "main": main,
        "aux1": aux1,
        "aux2": aux2,
    }
    model.eval()
    with torch.no_grad():
        emb = model(X)
    assert isinstance(emb, torch.Tensor) and emb.shape == (2, main)


@pytest.mark.parametrize("name", _cases(COUNTS))
def test_parameter_counts_match_published(name):
    main, aux1, aux2, published_m = COUNTS[name]
    model = _model(name)
    counts = {n: count_parameters(b) for n, b in model.aux_branches.items()}
    deployed = model.deploy()
    assert count_parameters(deployed) == main
    assert counts == {"aux1": aux1, "aux2": aux2}
    # The papers quote CIFAR-10 models: 90 fewer classifier rows than CIFAR-100.
    main_cifar10 = main - 90 * (model.feature_dim + 1)
    decimals = 2 if published_m < 0.5 else 1
    assert round(main_cifar10 / 1e6, decimals) == published_m
    # The plain baseline is the deployed architecture.
    baseline = build_model(name[len("dhm_") :], 100)
    assert baseline.branch_names == ("main",)
    assert count_parameters(baseline) == main
    assert list(baseline.state_dict()) == list(deployed.state_dict())


# One of each block type and branch layout; the larger depths/widths reuse the same code.
@pytest.mark.parametrize(
    "name",
    ["dhm_cifar_resnet20", "dhm_cifar_densenet40_12", "dhm_cifar_densenet_bc100_12", "dhm_wrn16_8"],
)
def test_every_parameter_gets_a_gradient_in_dhm_mode(name):
    model = build_model(name, 4).train()
    out = model(torch.randn(4, 3, 32, 32))
    loss = reid_dhm.DHMLoss("dhm")(out, torch.tensor([0, 1, 2, 3]))["loss"]
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert missing == []


@pytest.mark.parametrize(
    "name", ["dhm_cifar_resnet32", "dhm_cifar_densenet_bc100_12", "dhm_wrn16_8"]
)
def test_deploy_keeps_main_outputs(name):
    model = build_model(name, 10, dropout=0.3) if "wrn" in name else build_model(name, 10)
    randomize_bn(model)
    model.eval()
    plain = model.deploy()
    assert not plain.training and plain.branch_names == ("main",)
    assert not any(k.startswith("aux_branches") for k in plain.state_dict())
    assert plain.init_kwargs == {**model.init_kwargs, "branches": ()}
    with torch.no_grad():
        torch.testing.assert_close(plain(X), model(X), atol=1e-5, rtol=0)
        out = model.forward_branches(X)
        for branch in model.branch_names:
            torch.testing.assert_close(model.embed(X, branch), out.features[branch])


def test_resnet_uses_parameter_free_option_a_shortcuts():
    model = DHMCifarResNet(20, 10, branches=())
    # Only 3x3 convs besides the stem: no 1x1 projection anywhere.
    kernels = {m.kernel_size for m in model.modules() if isinstance(m, torch.nn.Conv2d)}
    assert kernels == {(3, 3)}
    block = model.layer2[0]
    x = torch.randn(1, 16, 8, 8)
    skip = block.shortcut(x)
    assert skip.shape == (1, 32, 4, 4)
    torch.testing.assert_close(skip[:, :16], torch.nn.functional.avg_pool2d(x, 2))
    assert not skip[:, 16:].any()


def test_branch_layouts_follow_design():
    r = DHMCifarResNet(32, 10)
    assert (r.aux_branches["aux1"].fork, r.aux_branches["aux2"].fork) == ("layer2", "layer1")
    assert [len(s) for s in r.aux_branches["aux2"].body] == [5, 3]
    assert len(r.aux_branches["aux1"].body) == 5

    w = DHMWideResNet(16, 8, 10)
    assert (w.aux_branches["aux1"].fork, w.aux_branches["aux2"].fork) == ("layer2", "layer1")
    body2 = w.aux_branches["aux2"].body
    assert [len(body2[0]), len(body2[1])] == [2, 1]
    # Pre-activation: every branch ends in BN-ReLU before pooling.
    for branch in w.aux_branches.values():
        assert isinstance(branch.body[-2], torch.nn.BatchNorm2d)
        assert isinstance(branch.body[-1], torch.nn.ReLU)

    d = DHMCifarDenseNet(40, 12, 10)
    assert d.aux_branches["aux2"].fork == "transition1"
    assert d.aux_branches["aux1"].fork == "transition2"
    block1, _, block2, bn, _ = d.aux_branches["aux2"].body
    assert (len(block1), len(block2)) == (12, 6)
    aux1_block = d.aux_branches["aux1"].body[0]
    assert len(aux1_block) == 12 and aux1_block[0].conv.out_channels == 36  # growth 3k
    assert isinstance(bn, torch.nn.BatchNorm2d)


def test_28x28_inputs_work():
    model = build_model("dhm_cifar_resnet20", 10).train()
    out = model(torch.randn(2, 3, 28, 28))
    assert out.logits["aux2"].shape == (2, 10)


def test_custom_depths_and_branch_blocks():
    model = DHMCifarResNet(56, 10, branch_blocks=((2, 1), (2,)))
    assert [len(s) for s in model.aux_branches["aux2"].body] == [2, 1]
    assert DHMCifarResNet(44, 10, branches=()).branch_names == ("main",)
    plain = DHMWideResNet(40, 2, 10, branches=())
    assert plain.feature_dim == 128
    bc = DHMCifarDenseNet(250, 24, 10, branches=("aux1",), bottleneck=True, compression=0.5)
    assert bc.branch_names == ("main", "aux1")


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: DHMCifarResNet(33), "6n \\+ 2"),
        (lambda: DHMCifarResNet(56), "no default branch_blocks for ResNet depth 56"),
        (lambda: DHMCifarResNet(32, branch_blocks=((1,), (1,))), "branch_blocks must look like"),
        (lambda: DHMCifarResNet(32, branch_blocks=((0, 1), (1,))), "integers >= 1"),
        (lambda: DHMCifarResNet(32, branches=("aux3",)), "valid branches are"),
        (lambda: DHMCifarResNet(32, num_classes=0), "num_classes"),
        (lambda: DHMWideResNet(27, 10), "6n \\+ 4"),
        (lambda: DHMWideResNet(28, 0), "widen"),
        (lambda: DHMWideResNet(28, 10, dropout=1.0), "dropout"),
        (lambda: DHMCifarDenseNet(41, 12), "DenseNet depth must be 3n \\+ 4"),
        (lambda: DHMCifarDenseNet(43, 12, bottleneck=True), "DenseNet-BC depth must be 6n"),
        (lambda: DHMCifarDenseNet(40, 12, compression=0), "compression"),
        (lambda: DHMCifarDenseNet(40, 0), "growth"),
    ],
)
def test_bad_arguments_raise_value_errors(build, match):
    with pytest.raises(ValueError, match=match):
        build()
