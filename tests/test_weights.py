"""Loading ImageNet weights into the main branch; never a download."""

import argparse
import io

import numpy as np
import pytest
import torch
import torchvision
from conftest import randomize_bn

from reid_dhm.models import build_model, read_state_dict
from reid_dhm.utils.checkpoint import load_checkpoint


def _aux_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if k.startswith("aux_branches")}


def test_torchvision_resnet_weights_load_into_main_branch(tmp_path):
    tv = torchvision.models.resnet18()
    randomize_bn(tv)
    path = tmp_path / "resnet18.pth"
    torch.save(tv.state_dict(), path)
    model = build_model("dhm_resnet18", 5, pretrained=path)
    ours = model.state_dict()
    for k, v in tv.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(ours[k], v), k
    # The backbone now computes torchvision's features.
    tv.fc = torch.nn.Identity()
    with torch.no_grad():
        x = torch.randn(2, 3, 64, 64)
        torch.testing.assert_close(model.eval()(x), tv.eval()(x))


def test_wrapped_and_prefixed_checkpoints_load(tmp_path):
    tv = torchvision.models.resnet18()
    wrapped = {"state_dict": {"module." + k: v for k, v in tv.state_dict().items()}, "epoch": 3}
    path = tmp_path / "ckpt.pth.tar"
    torch.save(wrapped, path)
    state = read_state_dict(path)
    assert "conv1.weight" in state and not any(k.startswith("module.") for k in state)
    model = build_model("dhm_resnet18", 5)
    before = _aux_state(model)
    model = build_model("dhm_resnet18", 5, pretrained=str(path))
    assert torch.equal(model.conv1.weight, tv.conv1.weight)
    assert set(_aux_state(model)) == set(before)


def test_missing_file_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_model("dhm_resnet50", 5, pretrained=missing)


def test_pretrained_true_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        build_model("dhm_resnet50", 5, pretrained=True)
    # A file in the hub cache is used.
    hub = tmp_path / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    tv = torchvision.models.resnet18()
    torch.save(tv.state_dict(), hub / "resnet18-f37072fd.pth")
    model = build_model("dhm_resnet18", 5, pretrained=True)
    assert torch.equal(model.layer4[1].conv2.weight, tv.layer4[1].conv2.weight)


def test_wrong_architecture_and_damaged_file(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(ValueError, match="does not fit DHMResNet"):
        build_model("dhm_resnet50", 5, pretrained=path)
    bad = tmp_path / "damaged.pth"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="damaged.pth"):
        build_model("dhm_resnet18", 5, pretrained=bad)


def test_torchvision_mobilenetv2_converts_exactly(tmp_path):
    tv = torchvision.models.mobilenet_v2()
    randomize_bn(tv)
    path = tmp_path / "mobilenet_v2.pth"
    torch.save(tv.state_dict(), path)
    model = build_model("dhm_mobilenetv2", 5, pretrained=path).eval()
    x = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        ref = torch.nn.functional.adaptive_avg_pool2d(tv.eval().features(x), 1).flatten(1)
        torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "name, source, first_extra",
    [
        ("dhm_resnet18", torchvision.models.resnet34, "layer1.2.conv1.weight"),
        ("resnet50", torchvision.models.resnet101, "layer3.6.conv1.weight"),
    ],
)
def test_weights_of_a_deeper_resnet_are_refused(tmp_path, name, source, first_extra):
    path = tmp_path / "deeper.pth"
    torch.save(source().state_dict(), path)
    with pytest.raises(ValueError, match=f"deeper.pth does not fit .*unexpected '{first_extra}'"):
        build_model(name, 5, pretrained=path)


def test_extra_keys_outside_the_backbone_are_ignored():
    tv = torchvision.models.resnet18()
    state = dict(tv.state_dict())
    state["classifier.weight"] = torch.zeros(3, 512)  # a re-ID model's own classifier
    state["aux_branches.aux1.classifier.bias"] = torch.zeros(3)
    model = build_model("dhm_resnet18", 5, pretrained=state)
    assert torch.equal(model.layer4[1].conv2.weight, tv.layer4[1].conv2.weight)


def test_torchreid_checkpoint_with_numpy_metrics_is_a_pretrained_source(tmp_path):
    # torchreid's save_checkpoint: DataParallel prefixes, numpy scalars among the metrics.
    tv = torchvision.models.resnet18()
    ckpt = {
        "state_dict": {"module." + k: v for k, v in tv.state_dict().items()},
        "epoch": 60,
        "rank1": np.float64(0.875),
        "mAP": np.float32(0.71),
        "num_ids": np.int64(751),
        "cmc": np.arange(5, dtype=np.float32),
        "optimizer": torch.optim.SGD(tv.parameters(), lr=0.1).state_dict(),
    }
    path = tmp_path / "model.pth.tar-60"
    torch.save(ckpt, path)
    model = build_model("dhm_resnet18", 5, pretrained=path)
    assert torch.equal(model.conv1.weight, tv.conv1.weight)
    assert load_checkpoint(path)["rank1"] == 0.875


def test_prefixed_state_dict_loads_in_memory_as_from_a_file(tmp_path):
    tv = torchvision.models.resnet18()
    for prefix in ("module.", "_orig_mod.", "module._orig_mod."):
        state = {prefix + k: v for k, v in tv.state_dict().items()}
        model = build_model("dhm_resnet18", 5, pretrained=state)
        assert torch.equal(model.layer1[0].conv1.weight, tv.layer1[0].conv1.weight), prefix
        path = tmp_path / "prefixed.pth"
        torch.save(state, path)
        assert set(read_state_dict(path)) == set(tv.state_dict()), prefix
        assert set(load_checkpoint(path)["state_dict"]) == set(tv.state_dict()), prefix


def _truncated_zip() -> bytes:
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(100)}, buffer)
    return buffer.getvalue()[:300]


def _truncated_legacy() -> bytes:
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(100)}, buffer, _use_new_zipfile_serialization=False)
    return buffer.getvalue()[:200]


@pytest.mark.parametrize(
    "content",
    [b"hello", b"abc", b"", b"not a checkpoint at all", _truncated_zip(), _truncated_legacy()],
    ids=["hello", "abc", "empty", "text", "truncated-zip", "truncated-legacy"],
)
def test_damaged_files_give_one_line_errors_naming_the_file(tmp_path, content):
    path = tmp_path / "broken.pth"
    path.write_bytes(content)
    for read in (
        lambda: build_model("dhm_resnet18", 5, pretrained=path),
        lambda: load_checkpoint(path),
    ):
        with pytest.raises(ValueError) as info:
            read()
        message = str(info.value)
        assert "not a PyTorch file or damaged" in message and str(path) in message
        assert "\n" not in message and "\x1b" not in message
        assert "weights_only" not in message


def test_files_with_python_objects_are_refused_for_safety(tmp_path):
    path = tmp_path / "objects.pth"
    tv = torchvision.models.resnet18()
    torch.save({"state_dict": tv.state_dict(), "args": argparse.Namespace(lr=0.1)}, path)
    for read in (
        lambda: build_model("dhm_resnet18", 5, pretrained=path),
        lambda: load_checkpoint(path),
    ):
        with pytest.raises(ValueError, match="refused for safety") as info:
            read()
        message = str(info.value)
        assert str(path) in message and "argparse.Namespace" in message
        assert "\n" not in message and "\x1b" not in message
        assert "weights_only" not in message


@pytest.mark.parametrize("pretrained", [0, 1, 1.0, ["w.pth"]])
def test_pretrained_of_another_type_is_a_clear_error(pretrained):
    with pytest.raises(ValueError, match="pretrained must be True, False, a path .* state dict"):
        build_model("dhm_resnet18", 5, pretrained=pretrained)


def test_pretrained_accepts_none_and_a_mapping():
    tv = torchvision.models.resnet18()
    assert build_model("resnet18", 5, pretrained=None).num_classes == 5
    model = build_model("resnet18", 5, pretrained=tv.state_dict())
    assert torch.equal(model.bn1.running_var, tv.bn1.running_var)
