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


def write_cifar10_folder(root, per_batch: int = 8, n_test: int = 20, seed: int = 0):
    """A small CIFAR-10 folder in the real python-pickle layout (``cifar-10-batches-py/``).

    Five training batches of ``per_batch`` images and a test batch of ``n_test``, as
    protocol-2 pickles with bytes keys (like the Python 2 originals). Each class has its
    own mean colour, so a model can learn something in a few steps.
    """
    import pickle
    from pathlib import Path

    import numpy as np

    rng = np.random.default_rng(seed)
    palette = rng.integers(30, 225, (10, 3))
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def batch(n, label_offset):
        labels = [(label_offset + j) % 10 for j in range(n)]
        planes = palette[labels][:, :, None] + rng.integers(-30, 31, (n, 3, 1024))
        data = np.clip(planes, 0, 255).astype(np.uint8).reshape(n, 3072)  # channel-major rows
        return {
            b"batch_label": b"generated",
            b"labels": labels,
            b"data": data,
            b"filenames": [f"{label_offset}_{j}.png".encode() for j in range(n)],
        }

    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch(per_batch, i), f, protocol=2)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch(n_test, 0), f, protocol=2)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer"]
    names += [b"dog", b"frog", b"horse", b"ship", b"truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"num_cases_per_batch": per_batch, b"label_names": names}, f, protocol=2)
    return Path(root)


@pytest.fixture(scope="session")
def tiny_cifar10(tmp_path_factory):
    """Root folder holding a generated ``cifar-10-batches-py/`` (40 train, 20 test images)."""
    return write_cifar10_folder(tmp_path_factory.mktemp("cifar"))


@pytest.fixture(scope="session")
def make_cifar10_folder():
    """The generator behind ``tiny_cifar10``, for tests that need their own variant."""
    return write_cifar10_folder


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_reid, tmp_path_factory):
    """A 1-epoch DHM-MobileNetV2 checkpoint trained on ``tiny_reid`` (``reid_dhm.runs.train``)."""
    out = tmp_path_factory.mktemp("tiny-run")
    overrides = [
        f"data.root={tiny_reid}", "model.name=dhm_mobilenetv2", "model.pretrained=false",
        "data.height=64", "data.width=32", "data.batch_size=8", "data.workers=0",
        "train.max_epoch=1", "train.fixbase_epoch=0", "test.vis_queries=0",
    ]  # fmt: skip
    run_training("folder", overrides, out)
    return out / "checkpoint.pth"


def run_config(
    dataset, overrides=(), output_dir=None, *, config=None, resume=None, eval_only=False
):
    """The resolved config ``reid-dhm train`` would run, without the command line.

    Args:
        dataset: the data set (``--dataset``); None when ``config`` or ``resume`` names it.
        overrides: ``KEY=VALUE`` strings (the data root is ``data.root=...``).
        output_dir: the run folder; by default, with ``resume``, the checkpoint's folder
            (its ``eval/`` folder when ``eval_only``), as the command line chooses.
        config: a recipe file (``--config``).
        resume: a checkpoint file whose stored config replaces defaults and preset.
        eval_only: the run only evaluates (``resume``'s weights).

    Returns:
        (the config with ``output_dir`` set, the loaded checkpoint or None).
    """
    from pathlib import Path

    from reid_dhm.config import resolve_config
    from reid_dhm.utils.checkpoint import load_checkpoint

    ckpt = load_checkpoint(resume) if resume is not None else None
    cfg = resolve_config(
        dataset,
        config,
        list(overrides),
        resumed=ckpt.get("config") if ckpt is not None else None,
        resumed_from=str(resume),
        training=not eval_only,
    )
    if output_dir is None:
        if resume is None:
            raise ValueError("run_config needs an output_dir (or resume)")
        output_dir = Path(resume).parent / ("eval" if eval_only else "")
    cfg["output_dir"] = str(output_dir)
    return cfg, ckpt


def run_training(
    dataset, overrides=(), output_dir=None, *, config=None, resume=None, eval_only=False
):
    """A training (or evaluation-only) run as a library call: ``reid_dhm.runs.train``.

    For tests whose point is the run, not the command line: no argument parsing, no
    ``--resume auto`` discovery, no earlier-run folder kept aside, no exit status (a stop
    or a user mistake is the exception itself). Arguments as :func:`run_config`.

    Returns:
        The ``RunResult`` (output folder, results.json content, history, evaluation, model).
    """
    from reid_dhm.runs import train

    cfg, ckpt = run_config(
        dataset, overrides, output_dir, config=config, resume=resume, eval_only=eval_only
    )
    return train(cfg, checkpoint=ckpt, eval_only=eval_only)


def require_system(path, package: str) -> None:
    """Skip (on a developer machine) or fail (in CI) when a Debian package's file is missing.

    CI installs every such package and sets ``REID_DHM_REQUIRE_SYSTEM=1``, so these tests
    always run there; elsewhere the skip reason says what to install.
    """
    from pathlib import Path

    if Path(path).exists():
        return
    message = f"{path} is missing: apt-get install {package}"
    if os.environ.get("REID_DHM_REQUIRE_SYSTEM"):
        pytest.fail(message)
    pytest.skip(message)
