"""Backbones with DHM branches, the model registry and deployment."""

from ..utils.branches import MAIN
from .backbones.mobilenetv2 import DHMMobileNetV2, convert_torchvision_mobilenetv2
from .backbones.osnet import DHMOSNet
from .backbones.resnet import DHMResNet, to_torchvision_state_dict
from .dhm import BRANCH_STYLES, AuxBranch, DHMNet, count_parameters
from .outputs import BranchOutputs
from .registry import ModelEntry, build_model, get_entry, list_models, register_model
from .torchreid_compat import register_torchreid_models
from .weights import load_backbone_weights, read_state_dict

__all__ = [
    "BRANCH_STYLES",
    "MAIN",
    "AuxBranch",
    "BranchOutputs",
    "DHMMobileNetV2",
    "DHMNet",
    "DHMOSNet",
    "DHMResNet",
    "ModelEntry",
    "build_model",
    "convert_torchvision_mobilenetv2",
    "count_parameters",
    "get_entry",
    "list_models",
    "load_backbone_weights",
    "read_state_dict",
    "register_model",
    "register_torchreid_models",
    "to_torchvision_state_dict",
]
