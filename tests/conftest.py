import os

import pytest
import torch

# Tests must never reach the network or a real user's caches.
os.environ.setdefault("TORCH_HOME", "/nonexistent-torch-home-for-tests")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def randomize_bn(model: torch.nn.Module) -> None:
    """Give every BatchNorm non-trivial affine params and running stats."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(1 + 0.5 * torch.rand(m.running_var.shape, generator=g))


@pytest.fixture(scope="session")
def tiny_reid(tmp_path_factory):
    """A tiny synthreid build in the real Market-1501 layout (seconds to generate)."""
    from reid_dhm.data.synthreid import SynthReIDSpec, generate_synthreid

    spec = SynthReIDSpec(
        num_train_ids=6,
        num_test_ids=5,
        num_cameras=3,
        images_per_camera=(2, 3),
        cameras_per_id=(2, 3),
        num_distractors=3,
        num_junk=2,
        height=64,
        width=32,
    )
    return generate_synthreid(tmp_path_factory.mktemp("reid"), spec)
