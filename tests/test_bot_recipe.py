"""Issue 12: triplet per branch, BNNeck, BoT recipe parts, DHM-OSNet and the new presets."""

import itertools
import json
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from conftest import run_training
from torchreid.reid import models as torchreid_models

from reid_dhm import DHMLoss, build_model
from reid_dhm.config import ConfigError, resolve_config
from reid_dhm.engines.optim import build_optimizer, build_scheduler
from reid_dhm.losses import batch_hard_triplet
from reid_dhm.models import BranchOutputs, count_parameters

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "market1501"


# ------------------------------------------------------------------ triplet
def _brute_force_triplet(f, y, margin, soft):
    """The batch-hard triplet loss by plain loops over anchors and candidates."""
    losses = []
    for a in range(len(y)):
        pos = [torch.dist(f[a], f[p]) for p in range(len(y)) if p != a and y[p] == y[a]]
        neg = [torch.dist(f[a], f[n]) for n in range(len(y)) if y[n] != y[a]]
        if not pos or not neg:
            continue
        gap = max(pos) - min(neg)
        losses.append(torch.log1p(torch.exp(gap)) if soft else torch.clamp(gap + margin, min=0))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("soft", [False, True])
def test_triplet_equals_brute_force(soft):
    g = torch.Generator().manual_seed(0)
    y = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3])  # id 3 has no positive: left out
    f = torch.randn(10, 16, generator=g, dtype=torch.float64)
    got = batch_hard_triplet(f, y, margin=0.3, soft=soft)
    torch.testing.assert_close(got, _brute_force_triplet(f, y, 0.3, soft))
    # No anchor with both a positive and a negative: zero, still differentiable.
    f.requires_grad_(True)
    zero = batch_hard_triplet(f[:3], y[:3])
    assert zero.item() == 0.0 and zero.requires_grad


def test_triplet_terms_per_branch_and_off_by_default():
    g = torch.Generator().manual_seed(1)
    branches = ("main", "aux1", "aux2")
    out = BranchOutputs(
        logits=OrderedDict((b, torch.randn(8, 4, generator=g)) for b in branches),
        features=OrderedDict((b, torch.randn(8, 6, generator=g)) for b in branches),
    )
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    plain = DHMLoss("dhm")(out, y)
    assert not [k for k in plain if k.startswith("tri/")]
    crit = DHMLoss("dhm", triplet_weight=0.5, triplet_margin=0.2)
    losses = crit(out, y)
    assert [k for k in losses if k.startswith("tri/")] == ["tri/main", "tri/aux1", "tri/aux2"]
    expected = plain["loss"] + 0.5 * sum(
        batch_hard_triplet(out.features[b], y, 0.2) for b in branches
    )
    torch.testing.assert_close(losses["loss"], expected)
    assert set(DHMLoss("baseline", triplet_weight=1.0)(out, y)) == {"loss", "ce/main", "tri/main"}
    parts = crit.branch_losses(out, y)
    torch.testing.assert_close(sum(parts.values()), losses["loss"])
    with pytest.raises(ValueError, match="needs every branch's embedding"):
        crit(out.logits, y)


# ------------------------------------------------------------------ BNNeck
def test_bnneck_head_pre_and_post_bn():
    torch.manual_seed(0)
    model = build_model("dhm_resnet18", 5, neck="bnneck", last_stride=1)
    assert model.classifier.bias is None and not model.bnneck.bias.requires_grad
    assert all(model.aux_branches[b].bnneck is not None for b in ("aux1", "aux2"))
    x = torch.randn(4, 3, 64, 32)
    out = model.train()(x)
    # CE sees the BN'd feature, triplet the raw one.
    torch.testing.assert_close(
        out.logits["main"], model.classifier(model.bnneck(out.features["main"]))
    )
    model.eval()
    pre = model(x)
    model.set_eval_feature("post_bn")
    post = model(x)
    torch.testing.assert_close(post, model.bnneck(pre))
    deployed = model.deploy()
    torch.testing.assert_close(deployed(x), post)  # the neck travels with the deployed model
    assert "bnneck.weight" in deployed.state_dict() and deployed.torchreid_name is None
    feats = model.branch_embeddings(x, ("main", "aux1"))
    torch.testing.assert_close(feats["main"], post)
    with pytest.raises(ValueError, match="needs neck='bnneck'"):
        build_model("dhm_resnet18", 5, eval_feature="post_bn")


def test_neck_none_still_loads_strictly_into_torchreid():
    model = build_model("dhm_resnet18", 7, last_stride=2)
    ref = torchreid_models.build_model("resnet18", 7, pretrained=False)
    ref.load_state_dict(model.deploy().state_dict(), strict=True)


def test_bnneck_models_export_to_onnx_and_boxmot_onnx_only(tmp_path):
    pytest.importorskip("onnxruntime")
    from reid_dhm.export import export_boxmot

    model = build_model("dhm_mobilenetv2", 4, neck="bnneck", eval_feature="post_bn")
    report = export_boxmot(model, tmp_path / "m", (64, 32))
    assert report["pt"] is None and "no backbone" in report["notes"][0]
    assert report["onnx_check"]["max_abs_diff"] < 1e-3


# ------------------------------------------------------------------ OSNet
@pytest.mark.parametrize("tag, width", [("x1_0", 1.0), ("x0_25", 0.25)])
def test_dhm_osnet_deploys_into_torchreid_osnet(tag, width):
    torch.manual_seed(0)
    model = build_model(f"dhm_osnet_{tag}", 11).eval()
    ref = torchreid_models.build_model(f"osnet_{tag}", 11, pretrained=False).eval()
    ref.load_state_dict(model.deploy().state_dict(), strict=True)
    x = torch.randn(2, 3, 128, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x))
    plain = build_model(f"osnet_{tag}", 11)
    assert count_parameters(plain) == count_parameters(ref) == count_parameters(model.deploy())
    assert model.torchreid_name == f"osnet_{tag}"
    out = model.train()(x)
    assert set(out.features) == {"main", "aux1", "aux2"}
    assert all(f.shape == (2, 512) for f in out.features.values())
    assert model.aux_branches["aux1"].fork == "conv3" and model.aux_branches["aux2"].fork == "conv2"


def test_osnet_imagenet_weights_from_a_path(tmp_path):
    ref = torchreid_models.build_model("osnet_x0_25", 1000, pretrained=False)
    path = tmp_path / "osnet_x0_25_imagenet.pth"
    torch.save(ref.state_dict(), path)
    model = build_model("dhm_osnet_x0_25", 5, pretrained=str(path))
    assert torch.equal(model.conv1.conv.weight, ref.conv1.conv.weight)
    assert torch.equal(model.conv4[0].gate.fc1.weight, ref.conv4[0].gate.fc1.weight)


def test_osnet_summary_rows(capsys):
    from reid_dhm.cli import summary

    assert summary.main(["--model", "dhm_osnet_x0_25", "--input", "256x128"]) == 0
    text = capsys.readouterr().out
    assert "aux1" in text and "aux2" in text and "train/deploy ratio" in text


# ------------------------------------------------------------------ recipe parts
def test_linear_warmup_from_one_percent_with_every_optimizer():
    model = torch.nn.Linear(2, 2)
    for name in ("adam", "amsgrad", "sgd"):
        opt = build_optimizer(model, name, lr=0.1)
        sched = build_scheduler(opt, "multi_step", [4], 0.1, max_epoch=6, warmup_epochs=3,
                                warmup_start=0.01)  # fmt: skip
        lrs = []
        for _ in range(6):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        expected = [0.001, 0.001 + 0.099 / 3, 0.001 + 2 * 0.099 / 3, 0.1, 0.01, 0.01]
        assert lrs == pytest.approx(expected), name
    # Without warmup_start, today's rule: (e + 1) / (W + 1).
    opt = build_optimizer(model, "sgd", lr=1.0)
    sched = build_scheduler(opt, "constant", max_epoch=5, warmup_epochs=3)
    assert [sched.lr_lambdas[0](e) for e in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.name=dhm_cifar_resnet20", "model.neck=bnneck", "data.height=32",
          "data.width=32"], "'model.neck' is 'bnneck', but dhm_cifar_resnet20 has no neck"),
        (["model.name=dhm_mobilenetv2", "model.last_stride=1"],
         "dhm_mobilenetv2 has no last_stride option"),
        (["loss.triplet_weight=1"], "set data.sampler=identity"),
        (["data.sampler=identity", "data.batch_size=30", "data.num_instances=4"],
         "'data.batch_size' 30 is not P identities x K=4 images"),
        (["test.feature=post_bn"], "needs model.neck=bnneck"),
        (["scheduler.warmup_start=2"], "'scheduler.warmup_start' must be null or in (0, 1]"),
    ],
)  # fmt: skip
def test_recipe_bad_input_is_one_line_before_training(overrides, message):
    with pytest.raises(ConfigError) as info:
        resolve_config("synthreid", overrides=overrides)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_identities_with_fewer_than_k_images_are_named(tiny_reid):
    from reid_dhm.data.reid_manager import build_reid_datamanager
    from reid_dhm.engines.reid_loaders import reid_train_loader

    manager = build_reid_datamanager("folder", tiny_reid, 64, 32, batch_size=8, workers=0,
                                     sampler="identity", num_instances=8)  # fmt: skip
    with pytest.warns(UserWarning, match=r"fewer than data.num_instances=8 images .*replacement"):
        reid_train_loader(manager, 8, "identity", 8, seed=0)


# ------------------------------------------------------------------ presets
PRESETS = [f"bot_r50_{m}" for m in ("baseline", "dsl", "dhm")]
PRESETS += [f"osnet_{m}" for m in ("baseline", "dsl", "dhm")]


@pytest.mark.parametrize("name", PRESETS)
def test_presets_state_their_recipe(name):
    cfg = resolve_config(None, CONFIGS / f"{name}.yaml")
    mode = name.rsplit("_", 1)[1]
    assert cfg["loss"]["mode"] == mode
    if name.startswith("bot"):
        assert cfg["model"]["name"] == ("resnet50" if mode == "baseline" else "dhm_resnet50")
        assert (cfg["model"]["neck"], cfg["model"]["last_stride"]) == ("bnneck", 1)
        assert (cfg["optim"]["name"], cfg["optim"]["lr"]) == ("adam", 0.00035)
        assert cfg["loss"]["triplet_weight"] == 1.0 and cfg["loss"]["triplet_margin"] == 0.3
        assert cfg["data"]["sampler"] == "identity" and cfg["data"]["batch_size"] == 64
        assert "random_erase" in cfg["data"]["transforms"]
        assert cfg["scheduler"]["warmup_epochs"] == 10 and cfg["scheduler"]["warmup_start"] == 0.01
        assert cfg["scheduler"]["milestones"] == [40, 70] and cfg["train"]["max_epoch"] == 120
        assert cfg["test"]["feature"] == "post_bn"
    else:
        assert cfg["model"]["name"] == ("osnet_x1_0" if mode == "baseline" else "dhm_osnet_x1_0")
        assert cfg["optim"]["lr"] == 0.0015 and cfg["train"]["max_epoch"] == 250


@pytest.mark.slow
@pytest.mark.parametrize("name", PRESETS)
def test_every_new_preset_trains_one_epoch(name, tiny_reid, tmp_path):
    out = tmp_path / name
    overrides = [
        "data.dataset=folder", f"data.root={tiny_reid}", "model.pretrained=false",
        "data.height=64", "data.width=32", "data.batch_size=8", "data.workers=0",
        "data.test_batch_size=16", "train.max_epoch=1", "train.fixbase_epoch=0",
        "scheduler.warmup_epochs=0", "test.vis_queries=0",
    ]  # fmt: skip
    result = run_training(None, overrides, out, config=CONFIGS / f"{name}.yaml")
    history = torch.load(out / "checkpoint.pth", weights_only=True)["history"]
    assert result.history == history
    if name.startswith("bot"):
        assert "tri/main" in history[0]
        assert ("tri/aux1" in history[0]) == (not name.endswith("baseline"))
    results = json.loads((out / "results.json").read_text())
    assert 0 <= results["folder"]["main"]["mAP"] <= 1 and result.results == results


def test_all_pairs_of_switches_build():  # neck x branch style x last stride, ResNet-18
    for neck, style, stride in itertools.product(("none", "bnneck"), ("paper", "mirror"), (1, 2)):
        model = build_model("dhm_resnet18", 3, neck=neck, branch_style=style, last_stride=stride)
        out = model.train()(torch.randn(2, 3, 64, 32))
        assert all(v.shape == (2, 3) for v in out.logits.values())
