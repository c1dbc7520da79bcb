"""train.amp=auto, train.compile and channels_last (reid_dhm.engines.accel / amp)."""

import pytest
import torch

from reid_dhm import build_model
from reid_dhm.config import resolve_config
from reid_dhm.config.loading import ConfigError
from reid_dhm.engines.accel import COMPILE_MODES, check_compile, is_convolutional, prepare_model
from reid_dhm.engines.amp import AMP_MODES, autocast, check_amp, resolve_amp


def test_amp_auto():
    assert AMP_MODES[0] == "auto"
    cpu = torch.device("cpu")
    assert resolve_amp("auto", cpu) == "none" and check_amp("auto", cpu) == "none"
    for mode in ("none", "bf16", "fp16"):  # explicit values are unchanged
        assert resolve_amp(mode, torch.device("cuda")) == mode
    with autocast("auto", cpu):
        assert not torch.is_autocast_enabled("cpu")
    if torch.cuda.is_available():
        want = "bf16" if torch.cuda.is_bf16_supported() else "none"
        assert resolve_amp("auto", torch.device("cuda")) == want
    cfg = resolve_config("synthreid", None, [])
    assert cfg["train"]["amp"] == "auto" and cfg["train"]["compile"] == "none"
    assert cfg["data"]["augment"] == "auto"


def test_config_choices():
    assert COMPILE_MODES == ("none", "default", "reduce-overhead")
    ok = resolve_config("synthreid", None, ["train.compile=reduce-overhead", "data.augment=tensor"])
    assert ok["train"]["compile"] == "reduce-overhead" and ok["data"]["augment"] == "tensor"
    with pytest.raises(ConfigError, match="'train.compile' must be one of"):
        resolve_config("synthreid", None, ["train.compile=max"])
    with pytest.raises(ConfigError, match="'data.augment' must be one of"):
        resolve_config("synthreid", None, ["data.augment=gpu"])
    with pytest.raises(ValueError, match="unknown compile mode 'max'"):
        check_compile("max")


def test_prepare_model_on_cpu_changes_nothing():
    model = build_model("dhm_resnet18", 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert is_convolutional(model)
    prepare_model(model, torch.device("cpu"))
    # channels_last is for CUDA only (benchmarks/gpu_check.py checks it there); on CPU
    # the parameters keep their layout.
    assert model.conv1.weight.is_contiguous()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_compile_in_place_keeps_names_and_outputs():
    torch.manual_seed(0)
    model = build_model("resnet18", 10).eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        eager = model(x)
    keys = list(model.state_dict())
    assert prepare_model(model, torch.device("cpu"), "default") is model
    assert list(model.state_dict()) == keys  # checkpoints and deploy() are unchanged
    with torch.no_grad():
        compiled = model(x)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)
