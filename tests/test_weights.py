"""Loading ImageNet weights into the main branch; never a download."""

import pytest
import torch
import torchvision
from conftest import randomize_bn

from reid_dhm.models import build_model, read_state_dict


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
