"""timm backbones with DHM branches (``model.name=timm/<name>``): structure, deployment
into a freshly built timm model, ONNX, gradients, costs, weights and config rules."""

import copy
import json
import math

import pytest
import torch
from conftest import randomize_bn

from reid_dhm import DHMLoss, build_model
from reid_dhm.config import ConfigError, resolve_config
from reid_dhm.models.backbones.timm_models import (
    DEPLOYED_FORMAT,
    TimmWithNeck,
    load_deployed,
    mirror_body,
    timm_embedding,
    timm_facts,
)
from reid_dhm.models.checkpoint import model_from_checkpoint
from reid_dhm.models.complexity import branch_costs

timm = pytest.importorskip("timm")

SIZE = (64, 32)  # re-ID's 2:1 aspect; every family's stride (32) allows it
N = 5
# (timm name, expected default forks, slow): one or two small members per family.
FAMILIES = [
    ("convnext_atto", (2, 1), False),
    ("mobilenetv3_small_100", (3, 2), False),
    ("efficientnet_b0", (3, 2), False),
    ("regnety_002", (3, 2), False),
    ("resnet18", (3, 2), False),
    ("vit_tiny_patch16_224", (10, 8), False),  # block counts: 5d/6 and 2d/3 of d = 12
    ("eva02_tiny_patch14_224", (10, 8), False),  # rotary embeddings the blocks consult
    ("swin_tiny_patch4_window7_224", (2, 1), True),  # 28 M parameters x 3 copies
]
PARAMS = [
    pytest.param(name, forks, marks=[pytest.mark.slow] if slow else [], id=name)
    for name, forks, slow in FAMILIES
]
# The families that take img_size:
SIZED = {"vit_tiny_patch16_224", "eva02_tiny_patch14_224", "swin_tiny_patch4_window7_224"}


def _model(name: str, **kwargs):
    torch.manual_seed(0)
    model = build_model(f"timm/{name}", N, img_size=SIZE, **kwargs)
    randomize_bn(model)  # non-trivial BN statistics, so eval mode means something
    return model


def _x(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, *SIZE, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("name,forks", PARAMS)
def test_deploy_loads_strictly_into_a_fresh_timm_model_with_the_same_embedding(name, forks):
    model = _model(name).eval()
    assert model.init_kwargs["forks"] == list(forks)
    assert model.branch_names == ("main", "aux1", "aux2")
    # img_size reaches timm only for the models that take it (position embeddings, windows).
    assert model.timm_kwargs == ({"img_size": SIZE} if name in SIZED else {})
    x = _x()
    with torch.no_grad():
        expected = model(x)
        deployed = model.deploy()
        fresh = timm.create_model(name, pretrained=False, num_classes=N, **model.timm_kwargs)
        fresh.load_state_dict(deployed.state_dict(), strict=True)
        fresh.eval()
        got = fresh.forward_head(fresh.forward_features(x), pre_logits=True)
        logits = fresh(x)
    assert type(deployed) is type(fresh)
    assert got.shape == (2, model.feature_dim)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits, model.classifier(expected), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name,forks", PARAMS)
def test_each_branch_mirrors_the_main_path_after_its_fork(name, forks):
    """Given the main path's weights, a branch's cut model computes the main embedding
    from the fork's output: the cut keeps exactly the stages after the fork."""
    model = _model(name).eval()
    x = _x()
    with torch.no_grad():
        expected = model(x)
        for branch in model.aux_branches.values():
            body = mirror_body(copy.deepcopy(model.backbone), branch.fork[len("backbone.") :])
            tap = model._run_main(x, {branch.fork})[branch.fork]
            torch.testing.assert_close(timm_embedding(body, tap), expected, atol=1e-5, rtol=0)
            # The branch itself is a fresh copy: same structure, its own weights.
            assert body.state_dict().keys() == branch.body.state_dict().keys()


@pytest.mark.parametrize("name,forks", PARAMS)
def test_a_training_step_reaches_every_branch_and_costs_add_up(name, forks):
    model = _model(name).train()
    out = model(_x(4))
    assert list(out.logits) == ["main", "aux1", "aux2"]
    loss = DHMLoss(mode="dhm")(out, torch.tensor([0, 1, 2, 3]))["loss"]
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing[:5]
    for branch in model.aux_branches.values():
        assert any(p.grad.abs().sum() > 0 for p in branch.body.parameters())
    rows = branch_costs(model, SIZE)
    assert rows["deploy"] == rows["main"]
    assert rows["train"]["flops"] == pytest.approx(
        sum(rows[b]["flops"] for b in model.branch_names), rel=1e-6
    )
    assert rows["train"]["flops"] > rows["deploy"]["flops"]


@pytest.mark.parametrize("name,forks", PARAMS)  # the dynamo exporter: 5-25 s per model
def test_onnx_export_matches_pytorch(name, forks, tmp_path):
    from reid_dhm.export import export_onnx

    model = _model(name)
    report = export_onnx(model, tmp_path / "m.onnx", SIZE, atol=1e-4, rtol=0)
    assert report["max_abs_diff"] <= 1e-4
    assert report["output"] == ["embeddings", "batch", model.feature_dim]


@pytest.mark.parametrize(
    "name,head",
    [("dla46_c", "timm"), ("repvit_m0_9", "toolkit")],
    ids=["conv1x1-classifier", "bn-linear-distilled-classifier"],
)
def test_a_timm_classifier_that_is_not_one_linear_layer(name, head, tmp_path):
    """DLA's classifier is a 1x1 convolution: the trained weights fit it, the deployed
    network is the plain timm model. RepViT's is BN + Linear beside a distillation head:
    no linear map fits it, so the file holds the timm model without a classifier plus the
    trained one, and says so."""
    model = _model(name).eval()
    x = _x()
    record = model.deployed_file()
    assert record["head"] == head and record["neck"] == "none"
    torch.save(record, tmp_path / "deployed.pth")
    net = load_deployed(tmp_path / "deployed.pth")
    with torch.no_grad():
        expected = model(x)
        got, logits = timm_embedding(net, x), net(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits, model.classifier(expected), atol=1e-5, rtol=1e-5)
    if head == "timm":
        assert type(net) is type(timm.create_model(name, pretrained=False, num_classes=N))
    else:
        assert isinstance(net, TimmWithNeck) and isinstance(net.bnneck, torch.nn.Identity)
        assert "not one linear layer" in record["holds"]
        plain = timm.create_model(name, pretrained=False, num_classes=0)
        plain.load_state_dict(net.model.state_dict(), strict=True)


def test_a_distilled_pair_of_linear_heads_takes_the_trained_classifier_in_both():
    """EfficientFormer's eval logits are the mean of ``head`` and ``head_dist``: both get
    the trained weights, so the deployed network is the plain timm model with the same
    logits (its attention biases fix the input to 224x224)."""
    torch.manual_seed(0)
    model = build_model("timm/efficientformer_l1", N).eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    record = model.deployed_file()
    assert record["head"] == "timm"
    assert {"head.weight", "head_dist.weight"} <= set(record["state_dict"])
    net = load_deployed(record)
    assert type(net) is type(timm.create_model("efficientformer_l1", num_classes=N))
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(timm_embedding(net, x), expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(net(x), model.classifier(expected), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "name,why",
    [
        ("hrnet_w18_small", "lists of multi-resolution maps"),
        ("levit_128s", "levit_conv_\\* models work"),
        ("deit_tiny_distilled_patch16_224", "distillation token"),
    ],
)
def test_families_that_cannot_take_branches_are_refused_in_one_line(name, why):
    with pytest.raises(ValueError, match=f"{name}' cannot take DHM branches: .*{why}"):
        build_model(f"timm/{name}", N)
    with pytest.raises(ConfigError, match="cannot take DHM branches"):
        resolve_config("synthreid", overrides=[f"model.name=timm/{name}", "model.pretrained=false"])


def test_bnneck_deploys_the_timm_model_plus_the_neck_and_says_so(tmp_path):
    model = _model("resnet18", neck="bnneck", eval_feature="post_bn")
    with torch.no_grad():
        model.bnneck.running_mean.normal_()
        model.bnneck.weight.uniform_(0.5, 2)
    model.eval()
    x = _x()
    record = model.deployed_file()
    assert record["format"] == DEPLOYED_FORMAT and record["neck"] == "bnneck"
    assert "BNNeck" in record["holds"]
    torch.save(record, tmp_path / "deployed.pth")
    net = load_deployed(tmp_path / "deployed.pth")
    assert isinstance(net, TimmWithNeck)
    # The timm part alone loads strictly into a timm model with no classifier.
    plain = timm.create_model("resnet18", pretrained=False, num_classes=0)
    plain.load_state_dict(net.model.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(
            net.forward_head(net.forward_features(x), pre_logits=True), model(x), atol=1e-5, rtol=0
        )
        assert net(x).shape == (2, N)


def test_deployed_file_records_how_to_rebuild_the_plain_model():
    model = _model("vit_tiny_patch16_224").eval()
    record = model.deployed_file()
    assert record["timm_name"] == "vit_tiny_patch16_224"
    assert record["timm_kwargs"] == {"img_size": list(SIZE)}
    assert record["num_classes"] == N and record["neck"] == "none"
    net = load_deployed(record)
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(timm_embedding(net, x), model(x), atol=1e-5, rtol=0)


def test_forks_choose_the_fork_points():
    model = build_model("timm/resnet18", N, forks=[1])
    assert model.branch_names == ("main", "aux1")
    assert model.aux_branches["aux1"].fork == "backbone.layer1"
    vit = build_model("timm/vit_tiny_patch16_224", N, img_size=SIZE, forks=[4, 11], branches="aux2")
    assert vit.aux_branches["aux2"].fork == "backbone.blocks.3"  # after 4 blocks
    assert vit.init_kwargs["forks"] == [11, 4]
    with pytest.raises(ValueError, match=r"forks are feature_info indices 0\.\.3, got 4"):
        build_model("timm/resnet18", N, forks=[4])
    with pytest.raises(ValueError, match=r"forks are block counts 1\.\.11, got 12"):
        build_model("timm/vit_tiny_patch16_224", N, forks=[12])
    with pytest.raises(ValueError, match="mirror branches only"):
        build_model("timm/resnet18", N, branch_style="paper")
    with pytest.raises(ValueError, match="unknown timm model"):
        build_model("timm/no_such_net", N)


def test_plain_timm_model_is_the_baseline():
    model = build_model("timm/resnet18", N, branches=())
    assert model.branch_names == ("main",)
    fresh = timm.create_model("resnet18", pretrained=False, num_classes=0)
    assert sum(p.numel() for p in model.backbone.parameters()) == sum(
        p.numel() for p in fresh.parameters()
    )


def test_pretrained_weights_come_from_a_local_timm_or_torchvision_file(tmp_path):
    import torchvision

    source = timm.create_model("resnet18", pretrained=False, num_classes=10)
    torch.save(source.state_dict(), tmp_path / "timm.pth")
    model = build_model("timm/resnet18", N, pretrained=tmp_path / "timm.pth")
    torch.testing.assert_close(model.backbone.layer3[0].conv1.weight, source.layer3[0].conv1.weight)
    # A branch keeps its own (fresh) weights.
    aux = model.aux_branches["aux1"].body.layer4[0].conv1.weight
    assert not torch.equal(aux, source.layer4[0].conv1.weight)
    tv = torchvision.models.resnet18(weights=None)
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    model = build_model("timm/resnet18", N, pretrained=tmp_path / "tv.pth")
    torch.testing.assert_close(model.backbone.conv1.weight, tv.conv1.weight)
    torch.save(timm.create_model("resnet34", num_classes=0).state_dict(), tmp_path / "r34.pth")
    with pytest.raises(ValueError, match="unexpected"):
        build_model("timm/resnet18", N, pretrained=tmp_path / "r34.pth")


@pytest.mark.parametrize(
    "name",
    ["vit_tiny_patch16_224", pytest.param("swin_tiny_patch4_window7_224", marks=pytest.mark.slow)],
)
def test_weights_made_at_224_are_resampled_to_the_re_id_input_size(name):
    from timm.layers import resample_abs_pos_embed

    torch.manual_seed(1)
    source = timm.create_model(name, num_classes=10)  # ImageNet's 224x224
    model = build_model(f"timm/{name}", N, pretrained=source.state_dict(), img_size=SIZE)
    own, theirs = model.backbone.state_dict(), source.state_dict()
    resized = [k for k in own if k in theirs and own[k].shape != theirs[k].shape]
    assert resized, "nothing depended on the input size?"
    if name.startswith("vit"):
        assert resized == ["pos_embed"]
        grid = (SIZE[0] // 16, SIZE[1] // 16)
        want = resample_abs_pos_embed(theirs["pos_embed"], grid, num_prefix_tokens=1)
        torch.testing.assert_close(own["pos_embed"], want)
    else:  # Swin: relative position tables of the windows that shrank
        assert all("relative_position" in k for k in resized)
    same = [k for k in own if k in theirs and own[k].shape == theirs[k].shape]
    assert all(torch.equal(own[k], theirs[k]) for k in same)
    assert torch.isfinite(model.eval()(_x())).all()


def _resolve(*overrides):
    return resolve_config("synthreid", overrides=["model.name=timm/resnet18", *overrides])


def test_config_takes_timm_models_and_checks_their_keys():
    cfg = _resolve("model.pretrained=false", "model.forks=[1,2]")
    assert cfg["model"]["forks"] == [1, 2]
    with pytest.raises(ConfigError, match=r"'model\.pretrained' is true, but timm/resnet18"):
        _resolve("model.pretrained=true")
    with pytest.raises(ConfigError, match=r"'model\.forks' is \[7\]: .*0\.\.3"):
        _resolve("model.pretrained=false", "model.forks=[7]")
    with pytest.raises(ConfigError, match=r"'model\.branch_style' is 'paper'"):
        _resolve("model.pretrained=false", "model.branch_style=paper")
    with pytest.raises(ConfigError, match=r"'model\.forks' is only read by timm"):
        resolve_config("synthreid", overrides=["model.forks=[1]"])
    with pytest.raises(ConfigError, match="unknown timm model"):
        resolve_config("synthreid", overrides=["model.name=timm/nope", "model.pretrained=false"])


def test_train_command_runs_a_timm_model_end_to_end(tiny_reid, tmp_path):
    from reid_dhm.cli import train as train_tool

    out = tmp_path / "run"
    argv = ["--dataset", "folder", "--root", str(tiny_reid), "--output-dir", str(out)]
    argv += [
        "model.name=timm/mobilenetv3_small_100", "model.pretrained=false", "train.max_epoch=1",
        "data.height=64", "data.width=32", "data.batch_size=8", "data.test_batch_size=16",
        "data.workers=0", "train.fixbase_epoch=0", "test.vis_queries=0",
    ]  # fmt: skip
    assert train_tool.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["model"] == "timm/mobilenetv3_small_100"
    record = torch.load(out / "deployed.pth", weights_only=True)
    assert record["format"] == DEPLOYED_FORMAT
    net = timm.create_model(
        record["timm_name"], num_classes=record["num_classes"], **record["timm_kwargs"]
    )
    net.load_state_dict(record["state_dict"], strict=True)
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert ckpt["branches"] == ["main", "aux1", "aux2"]
    # The checkpoint rebuilds the model (resume, evaluation) from what it recorded.
    model = model_from_checkpoint(out / "checkpoint.pth").eval()
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(timm_embedding(net.eval(), x), model(x), atol=1e-5, rtol=0)


TINY_RUN = [
    "model.pretrained=false", "data.height=64", "data.width=32", "data.batch_size=8",
    "data.test_batch_size=16", "data.workers=0", "train.fixbase_epoch=0", "test.vis_queries=0",
]  # fmt: skip


@pytest.mark.slow  # two short runs of a three-copy ConvNeXt: over 20 s on 2 cores
def test_bnneck_triplet_per_branch_monitor_and_resume_work_for_timm_models(tiny_reid, tmp_path):
    from reid_dhm.cli import train as train_tool

    out = tmp_path / "run"
    argv = ["--dataset", "folder", "--root", str(tiny_reid), "--output-dir", str(out)]
    argv += [
        "model.name=timm/convnext_atto", "model.neck=bnneck", "loss.triplet_weight=1",
        "data.sampler=identity", "data.num_instances=2", "test.per_branch=true",
        "train.grad_monitor_every=1", "train.max_epoch=1", *TINY_RUN,
    ]  # fmt: skip
    assert train_tool.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    tables = results["folder"]
    assert set(tables) == {"main", "aux1", "aux2"}  # every branch evaluated on its own
    assert all(0 <= t["mAP"] <= 100 for t in tables.values())
    monitored = results["grad_monitor"][0]
    # gradients of every branch reach the timm stem stages the branches share
    assert any(k.startswith("grad/cos/backbone.stages.0/") for k in monitored), monitored
    assert all(math.isfinite(v) for k, v in monitored.items() if k != "epoch")
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert ckpt["epoch"] == 1 and "tri/main" in ckpt["history"][0]
    # resume from the folder to a longer schedule: epoch 2 continues, not restarts
    assert train_tool.main(["--resume", str(out), "train.max_epoch=2"]) == 0
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert ckpt["epoch"] == 2 and [h["epoch"] for h in ckpt["history"]] == [1, 2]
    deployed = load_deployed(out / "deployed.pth")
    assert isinstance(deployed, TimmWithNeck)


@pytest.mark.slow  # a 2-process torchrun launch: over 20 s on 2 CPU cores
def test_torchrun_trains_a_timm_model(tiny_reid, tmp_path):
    from test_distributed import TORCHRUN, _run

    out = tmp_path / "ddp"
    cmd = [
        *TORCHRUN, "2", "tools/train.py", "--dataset", "folder", "--root", str(tiny_reid),
        "--output-dir", str(out), "model.name=timm/convnext_atto", "train.max_epoch=1",
        *TINY_RUN,
    ]  # fmt: skip
    proc = _run(cmd)
    assert "2 process(es)" in proc.stdout
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert ckpt["epoch"] == 1 and not any(k.startswith("module.") for k in ckpt["state_dict"])
    record = torch.load(out / "deployed.pth", weights_only=True)
    net = timm.create_model(
        record["timm_name"], num_classes=record["num_classes"], **record["timm_kwargs"]
    )
    net.load_state_dict(record["state_dict"], strict=True)


def test_facts_are_read_off_timm_structure():
    facts = timm_facts("efficientnet_b0")
    assert facts.hierarchical and facts.stride == 32
    assert facts.classifier == ("classifier",)
    assert not timm_facts("vit_tiny_patch16_224").hierarchical


# ------------------------------------------------------------------ Market-1501 presets
PRESET_DIR = __import__("pathlib").Path(__file__).resolve().parents[1] / "configs" / "market1501"
TIMM_PRESETS = [f"{arch}_{mode}" for arch in ("convnext_t", "vit_s")
                for mode in ("baseline", "dsl", "dhm")]  # fmt: skip


@pytest.mark.parametrize("name", TIMM_PRESETS)
def test_timm_presets_state_their_recipe(name):
    cfg = resolve_config(None, PRESET_DIR / f"{name}.yaml", ["model.pretrained=false"])
    arch, mode = name.rsplit("_", 1)
    assert cfg["loss"]["mode"] == mode and cfg["data"]["dataset"] == "market1501"
    assert (cfg["data"]["height"], cfg["data"]["width"]) == (256, 128)
    assert cfg["model"]["neck"] == "bnneck" and cfg["loss"]["triplet_weight"] == 1.0
    if arch == "convnext_t":  # BoT's recipe on ConvNeXt-T
        assert cfg["model"]["name"] == "timm/convnext_tiny" and cfg["model"]["last_stride"] == 2
        assert (cfg["optim"]["name"], cfg["optim"]["lr"]) == ("adam", 0.00035)
        assert cfg["test"]["feature"] == "post_bn"
    else:  # TransReID's ViT baseline recipe on ViT-S
        assert cfg["model"]["name"] == "timm/vit_small_patch16_224"
        assert (cfg["optim"]["name"], cfg["optim"]["lr"]) == ("sgd", 0.008)
        assert cfg["loss"]["triplet_soft"] and cfg["data"]["norm_mean"] == [0.5, 0.5, 0.5]
        assert cfg["scheduler"]["name"] == "cosine" and cfg["train"]["max_epoch"] == 120
        assert cfg["test"]["feature"] == "pre_bn"


@pytest.mark.slow
@pytest.mark.parametrize("name", TIMM_PRESETS)
def test_every_timm_preset_trains_one_epoch(name, tiny_reid, tmp_path):
    """Each preset for one epoch on a (tiny) synthreid build at 128x64, batch 16, from
    scratch: the recipe, the timm model and its branches run end to end."""
    from conftest import run_training

    out = tmp_path / name
    overrides = [
        "data.dataset=folder", f"data.root={tiny_reid}", "model.pretrained=false",
        "data.height=128", "data.width=64", "data.batch_size=16", "data.workers=0",
        "data.test_batch_size=16", "train.max_epoch=1", "scheduler.warmup_epochs=0",
        "test.vis_queries=0",
    ]  # fmt: skip
    result = run_training(None, overrides, out, config=PRESET_DIR / f"{name}.yaml")
    history = torch.load(out / "checkpoint.pth", weights_only=True)["history"]
    assert "tri/main" in history[0]
    assert ("ce/aux1" in history[0]) == (not name.endswith("baseline"))
    assert ("kl/aux1->main" in history[0]) == name.endswith("dhm")
    results = json.loads((out / "results.json").read_text())
    assert 0 <= results["folder"]["main"]["mAP"] <= 1 and result.results == results
