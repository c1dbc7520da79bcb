"""Which timm families DHM builds for: build, a training step, deploy into a fresh timm model.

    python benchmarks/probe_timm_families.py [--names a,b,...] [--size 64x32]

For each timm name: ``build_model('timm/<name>')`` with the default forks at a re-ID input,
a DHM training step (every parameter gets a gradient), ``deployed.pth`` rebuilt by
``load_deployed`` (strictly, into ``timm.create_model``) with the same embedding. Prints
one row per name: OK or the first line of the error. No weights are downloaded
(pretrained=False). Used for issue 19's "families that work and those that do not".
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

# One or two small members per family, the re-ID-relevant ones first.
NAMES = [
    "resnet18", "resnext26ts", "regnety_002", "efficientnet_b0", "tf_efficientnetv2_b0",
    "mobilenetv3_small_100", "mobilenetv4_conv_small", "lcnet_050", "ghostnet_100",
    "repvit_m0_9", "convnext_atto", "convnextv2_atto", "edgenext_xx_small", "fastvit_t8",
    "densenet121", "dla34", "cspresnet50", "hgnetv2_b0", "ese_vovnet19b_slim_dw",
    "inception_v3", "dla46_c", "hrnet_w18_small", "vit_tiny_patch16_224", "deit_tiny_patch16_224",
    "eva02_tiny_patch14_224", "swin_tiny_patch4_window7_224", "swinv2_tiny_window8_256",
    "tiny_vit_5m_224", "maxvit_nano_rw_256", "mobilevit_xxs", "levit_128s", "efficientformer_l1",
    "poolformer_s12", "coatnet_nano_rw_224", "pvt_v2_b0", "caformer_s18",
]  # fmt: skip


def probe(name: str, size: tuple[int, int]) -> str:
    from reid_dhm import DHMLoss, build_model
    from reid_dhm.models.backbones.timm_models import load_deployed, timm_embedding

    torch.manual_seed(0)
    model = build_model(f"timm/{name}", 4, img_size=size).train()
    out = model(torch.randn(4, 3, *size))
    DHMLoss(mode="dhm")(out, torch.tensor([0, 1, 2, 3]))["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    if missing:
        return f"no gradient for {len(missing)} parameters, e.g. {missing[0]}"
    model.eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        expected = model(x)
        record = model.deployed_file()
        deployed = load_deployed(record)
        got = timm_embedding(deployed, x)
    err = (got - expected).abs().max().item()
    if err > 1e-4:
        return f"deployed embedding differs by {err:.2e}"
    kind = "plain timm model" if record["head"] == "timm" else "timm model + linear classifier"
    return f"OK, forks {model.init_kwargs['forks']}, deploys as the {kind}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--names", default=",".join(NAMES))
    p.add_argument("--size", default="64x32", help="HxW re-ID input")
    args = p.parse_args(argv)
    size = tuple(int(v) for v in args.size.split("x"))
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    print(f"| timm name | result ({args.size}) | s |\n| --- | --- | --- |")
    for name in args.names.split(","):
        start = time.time()
        try:
            result = probe(name, size)
        except Exception as e:  # noqa: BLE001 - the probe reports every failure as a row
            result = f"{type(e).__name__}: {str(e).splitlines()[0][:150] if str(e) else ''}"
        print(f"| `{name}` | {result} | {time.time() - start:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
